-- The processed queue's index: what the projector's indexer found in the S3 bucket of processed
-- messages (it is built from the bucket, not from the log, so `projector rebuild` does not touch it).
--
-- Keys compare byte by byte (COLLATE "C"), as S3 orders them, so that "after the last key listed"
-- means the same here and there.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- One row per object. `summary` says what its body told the indexer: `pending` (not read yet),
-- `parsed` (the expected shape: `workflow_id`, `received_at`, `processed_at` are from it) or
-- `unparsed` (`unparsed_reason` says why; only the key's facts are known).
CREATE TABLE read_models.processed_messages (
    key             text COLLATE "C" PRIMARY KEY,
    id              uuid        NOT NULL,
    organization_id uuid        NOT NULL,
    environment_id  uuid        NOT NULL,
    status          text        NOT NULL,
    message_id      text        NOT NULL,
    stored_at       timestamptz NOT NULL,
    size            bigint      NOT NULL,
    summary         text        NOT NULL DEFAULT 'pending',
    workflow_id     text,
    received_at     timestamptz,
    processed_at    timestamptz,
    unparsed_reason text,
    indexed_at      timestamptz NOT NULL DEFAULT now()
);

-- Newest first, in an organization, an environment, or a status of an organization. The included
-- columns let the other filters and the boundary counts be answered from the index alone.
CREATE INDEX processed_messages_newest ON read_models.processed_messages
    (organization_id, stored_at DESC, key DESC) INCLUDE (environment_id, status);
CREATE INDEX processed_messages_newest_by_environment ON read_models.processed_messages
    (environment_id, stored_at DESC, key DESC) INCLUDE (organization_id, status);
CREATE INDEX processed_messages_newest_by_status ON read_models.processed_messages
    (organization_id, status, stored_at DESC, key DESC) INCLUDE (environment_id);
-- `search`: a substring of the message id or the workflow id.
CREATE INDEX processed_messages_search ON read_models.processed_messages
    USING gin ((message_id || ' ' || COALESCE(workflow_id, '')) gin_trgm_ops);
-- The bodies still to read.
CREATE INDEX processed_messages_pending ON read_models.processed_messages (key)
    WHERE summary = 'pending';

-- Exact counts without counting: messages per environment, status and UTC day, and per hour, of
-- `stored_at`, changed in the same statement as the rows they count. A count over a time range sums
-- the whole days, then the whole hours at its ends, and counts only the rows of the partial hours;
-- the keys put the time before the environment and status, so that a range is one index range.
CREATE TABLE read_models.processed_message_counts (
    organization_id uuid   NOT NULL,
    environment_id  uuid   NOT NULL,
    status          text   NOT NULL,
    day             date   NOT NULL,
    messages        bigint NOT NULL,
    PRIMARY KEY (organization_id, day, environment_id, status)
);
CREATE TABLE read_models.processed_message_hourly_counts (
    organization_id uuid        NOT NULL,
    environment_id  uuid        NOT NULL,
    status          text        NOT NULL,
    hour            timestamptz NOT NULL,
    messages        bigint      NOT NULL,
    PRIMARY KEY (organization_id, hour, environment_id, status)
);

-- The indexer's place in each prefix it lists (`<organization>/<environment>/<status>/`): the last
-- key it indexed, and when it last listed and last reconciled the prefix.
CREATE TABLE read_models.processed_queue_cursors (
    prefix        text COLLATE "C" PRIMARY KEY,
    last_key      text COLLATE "C",
    listed_at     timestamptz,
    reconciled_at timestamptz
);
