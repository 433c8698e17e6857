-- The event log and the small tables the write side keeps in the same transaction as its appends.
-- The log is the only source of truth; everything under the read_models schema is rebuilt from it.

CREATE TABLE events (
    -- CACHE 1: a cached sequence hands out positions out of commit order per backend, which makes lag
    -- figures and gap reasoning harder for no gain.
    global_position bigint GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY,
    -- The writing transaction's id. Readers take only rows whose writer is older than every transaction
    -- still in flight, so a position handed out before a slow commit is never skipped (see events::store).
    transaction_id  bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    stream_id       text NOT NULL,
    stream_version  bigint NOT NULL CHECK (stream_version > 0),
    event_id        uuid NOT NULL,
    event_type      text NOT NULL,
    schema_version  integer NOT NULL,
    data            jsonb NOT NULL,
    metadata        jsonb NOT NULL,
    recorded_at     timestamptz NOT NULL,
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version),
    CONSTRAINT events_event_id_key UNIQUE (event_id)
);

CREATE INDEX events_log_order ON events (transaction_id, global_position);

-- One row per stream: its current version. Appends update it under a row lock, which serialises writers
-- of one stream; other commands lock it FOR SHARE to depend on a stream they do not write.
CREATE TABLE streams (
    stream_id text PRIMARY KEY,
    version   bigint NOT NULL
);

-- A cache of folded aggregate state, so that loading a long stream costs a bounded number of events.
CREATE TABLE snapshots (
    stream_id      text PRIMARY KEY,
    version        bigint NOT NULL,
    schema_version integer NOT NULL,
    state          jsonb NOT NULL
);

-- Names that must be unique within a scope (case-insensitively: `name` is stored lower-cased).
CREATE TABLE name_claims (
    scope     text NOT NULL,
    name      text NOT NULL,
    stream_id text NOT NULL,
    PRIMARY KEY (scope, name)
);

-- Which streams refer to which, so that deleting a referenced resource can be refused atomically.
CREATE TABLE stream_references (
    target text NOT NULL,
    source text NOT NULL,
    PRIMARY KEY (target, source)
);

-- Responses of write requests sent with an Idempotency-Key, stored in the append transaction.
CREATE TABLE idempotency_keys (
    caller       text NOT NULL,
    key          text NOT NULL,
    request_hash text NOT NULL,
    status       smallint NOT NULL,
    headers      jsonb NOT NULL,
    body         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, key)
);

CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

-- How far each projection has got, as the (transaction_id, global_position) pair of its last event.
-- Updated in the same transaction as the projection's tables.
CREATE TABLE projection_checkpoints (
    name            text PRIMARY KEY,
    transaction_id  bigint NOT NULL DEFAULT 0,
    global_position bigint NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
