-- The catalog (variables, models, system models, workflows, workflow entities and their types, prompt
-- templates, prompts): the data keys that seal write-only values, the read models the `catalog`
-- projection keeps, and the four workflow entity types every deployment starts with.

-- One data key per owner (an organization; the nil id for platform-wide resources), wrapped by the
-- master key (SECRETS_KEY). Deleting a row makes every value sealed under it unreadable.
CREATE TABLE data_keys (
    owner      uuid PRIMARY KEY,
    wrapped    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Every catalog resource, one row each. `fields` is the resource's normalised field set (never a
-- write-only value); `secrets` is the array of write-only fields that hold a value. The id columns and `name`
-- (the name, or a prompt's title) are copied out of `fields` for filtering and sorting.
CREATE TABLE read_models.catalog (
    id              uuid PRIMARY KEY,
    kind            text NOT NULL,
    organization_id uuid,
    environment_id  uuid,
    model_id        uuid,
    name            text NOT NULL,
    fields          jsonb NOT NULL,
    secrets         jsonb NOT NULL,
    version         bigint NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);

CREATE INDEX catalog_newest_first ON read_models.catalog (kind, created_at DESC, id DESC);
CREATE INDEX catalog_by_organization ON read_models.catalog (kind, organization_id, created_at DESC, id DESC);
CREATE INDEX catalog_by_environment ON read_models.catalog (kind, environment_id, created_at DESC, id DESC)
    WHERE environment_id IS NOT NULL;

-- Row counts per list scope, so that `total` is exact without counting a million rows per request.
-- scope: '<kind>', '<kind>:organization:<id>' (platform rows: '<kind>:platform'), '<kind>:environment:<id>'.
CREATE TABLE read_models.catalog_counts (
    scope text PRIMARY KEY,
    count bigint NOT NULL
);

-- Which workflows use which workflow entities (GET /api/workflow-entities/{id}/usage-count).
CREATE TABLE read_models.workflow_entity_usage (
    entity_id   uuid NOT NULL,
    workflow_id uuid NOT NULL,
    PRIMARY KEY (entity_id, workflow_id)
);

-- The entity types of seed 001, platform-wide, recorded as ordinary events so that the log stays the
-- only source of truth. Their ids are fixed (events::catalog::kinds::BUILT_IN_ENTITY_TYPES).
WITH built_in (id, name, description) AS (
    VALUES ('01930000-0000-7000-8000-000000000101'::uuid, 'Event', 'Starts a workflow when a message matches'),
           ('01930000-0000-7000-8000-000000000102'::uuid, 'Prompt', 'Runs a prompt against a model'),
           ('01930000-0000-7000-8000-000000000103'::uuid, 'Action', 'Does something outside the workflow'),
           ('01930000-0000-7000-8000-000000000104'::uuid, 'Result', 'Ends a workflow with its outcome')
), streams_created AS (
    INSERT INTO streams (stream_id, version)
    SELECT 'workflow_entity_type-' || id, 1 FROM built_in
), names_claimed AS (
    INSERT INTO name_claims (scope, name, stream_id)
    SELECT 'workflow_entity_type:platform', lower(name), 'workflow_entity_type-' || id FROM built_in
)
INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version, data, metadata, recorded_at)
SELECT 'workflow_entity_type-' || id, 1, id, 'workflow_entity_type.created', 1,
       jsonb_build_object('id', id, 'organizationId', NULL, 'name', name, 'description', description),
       jsonb_build_object('actor', jsonb_build_object('id', 'system', 'role', 'system'),
                          'organizationId', NULL, 'requestId', 'migration-0006', 'correlationId', 'migration-0006',
                          'causationId', NULL, 'clientIp', NULL, 'userAgent', NULL),
       date_trunc('milliseconds', now())
FROM built_in;
