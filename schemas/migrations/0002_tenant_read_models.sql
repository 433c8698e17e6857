-- Read models of organizations and environments, kept by the `tenants` projection.
-- Live read models sit in their own schema so that a rebuild can build fresh copies elsewhere and swap them in.

CREATE SCHEMA read_models;

CREATE TABLE read_models.organizations (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    description text,
    version     bigint NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE INDEX organizations_newest_first ON read_models.organizations (created_at DESC, id DESC);

CREATE TABLE read_models.environments (
    id                uuid PRIMARY KEY,
    organization_id   uuid NOT NULL,
    organization_name text NOT NULL,
    name              text NOT NULL,
    description       text,
    version           bigint NOT NULL,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL
);

CREATE INDEX environments_newest_first ON read_models.environments (organization_id, created_at DESC, id DESC);

-- Row counts per list scope, so that `total` is exact without counting a million rows per request.
-- scope: 'organizations' or 'environments:<organization id>'.
CREATE TABLE read_models.tenant_counts (
    scope text PRIMARY KEY,
    count bigint NOT NULL
);
