-- History straight from the log: a hash chain that makes tampering with stored events evident, a
-- guard that keeps events immutable, and the index behind the audit trail.

-- The hash of one event: SHA-256 over its previous event's hash (in the same stream; nothing for the
-- first) and every column of its content, each on its own line. `data` and `metadata` are hashed in
-- jsonb's canonical text form and the time as microseconds since the Unix epoch, so the hash depends on
-- no session setting. `projector verify --log` recomputes it with this same function. PL/pgSQL rather
-- than SQL: its plan is cached for the session, where a SQL function called from a trigger is planned
-- on every call (which made appends several times dearer).
CREATE FUNCTION event_hash(
    previous bytea, global_position bigint, stream_id text, stream_version bigint, event_id uuid,
    event_type text, schema_version integer, data jsonb, metadata jsonb, recorded_at timestamptz
) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN sha256(coalesce(previous, ''::bytea) || convert_to(
        global_position::text || E'\n' || stream_id || E'\n' || stream_version::text || E'\n' ||
        event_id::text || E'\n' || event_type || E'\n' || schema_version::text || E'\n' ||
        (extract(epoch FROM recorded_at) * 1000000)::bigint::text || E'\n' ||
        data::text || E'\n' || metadata::text, 'UTF8'));
END;
$$;

ALTER TABLE events ADD COLUMN hash bytea;

-- Events logged before this migration (the built-in entity types, and anything a deployment holds)
-- are chained in stream order.
DO $$
DECLARE
    e           record;
    previous    bytea;
    last_stream text;
BEGIN
    FOR e IN SELECT * FROM events ORDER BY stream_id, stream_version LOOP
        IF e.stream_id IS DISTINCT FROM last_stream THEN
            previous := NULL;
        END IF;
        previous := event_hash(previous, e.global_position, e.stream_id, e.stream_version, e.event_id,
                               e.event_type, e.schema_version, e.data, e.metadata, e.recorded_at);
        UPDATE events SET hash = previous WHERE global_position = e.global_position;
        last_stream := e.stream_id;
    END LOOP;
END;
$$;

ALTER TABLE events ALTER COLUMN hash SET NOT NULL;

-- Every insert is chained to its stream's previous event. Appends of one stream are serialised by the
-- `streams` row lock (append_write), and the rows of one multi-event insert are inserted in version
-- order, so the previous event is always visible here: committed, or inserted earlier by this statement.
CREATE FUNCTION chain_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    previous bytea;
BEGIN
    IF NEW.stream_version > 1 THEN
        SELECT p.hash INTO previous FROM events p
        WHERE p.stream_id = NEW.stream_id AND p.stream_version = NEW.stream_version - 1;
    END IF;
    NEW.hash := event_hash(previous, NEW.global_position, NEW.stream_id, NEW.stream_version, NEW.event_id,
                           NEW.event_type, NEW.schema_version, NEW.data, NEW.metadata, NEW.recorded_at);
    RETURN NEW;
END;
$$;

CREATE TRIGGER events_chain BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION chain_event();

-- Events are facts: nothing changes or removes one through SQL. (A superuser can still switch triggers
-- off; the hash chain is what shows such a change afterwards.)
CREATE FUNCTION refuse_event_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable: % refused', TG_OP USING ERRCODE = 'ES004';
END;
$$;

CREATE TRIGGER events_immutable BEFORE UPDATE OR DELETE ON events
FOR EACH ROW EXECUTE FUNCTION refuse_event_change();
CREATE TRIGGER events_not_truncated BEFORE TRUNCATE ON events
FOR EACH STATEMENT EXECUTE FUNCTION refuse_event_change();

-- The rows of one multi-event append go in in version order (see chain_event).
CREATE OR REPLACE FUNCTION append_write(w jsonb)
RETURNS TABLE (version bigint, transaction_id bigint, global_position bigint)
LANGUAGE plpgsql AS $$
DECLARE
    dependency jsonb;
    current    bigint;
    previous   bigint;
    referenced text;
    n          bigint := jsonb_array_length(w->'events');
BEGIN
    -- Streams this write depends on without writing them: shared advisory locks, so that many writers
    -- can depend on one stream at once while a deletion of it (below) waits for them all.
    FOR dependency IN SELECT * FROM jsonb_array_elements(w->'requires') LOOP
        PERFORM pg_advisory_xact_lock_shared(hashtextextended(dependency->>'stream', 0));
        SELECT s.version INTO current FROM streams s WHERE s.stream_id = dependency->>'stream';
        IF coalesce(current, 0) <> (dependency->>'version')::bigint THEN
            RAISE EXCEPTION 'stream_conflict' USING ERRCODE = 'ES001', DETAIL = dependency->>'stream';
        END IF;
    END LOOP;

    -- The stream written: its row lock serialises writers until commit.
    INSERT INTO streams AS s (stream_id, version) VALUES (w->>'stream', n)
    ON CONFLICT (stream_id) DO UPDATE SET version = s.version + n
    RETURNING s.version - n INTO previous;
    IF previous <> (w->>'expected')::bigint THEN
        RAISE EXCEPTION 'stream_conflict' USING ERRCODE = 'ES001', DETAIL = w->>'stream';
    END IF;

    DELETE FROM name_claims c USING jsonb_to_recordset(w->'releases') AS r(scope text, name text, stream text)
    WHERE c.scope = r.scope AND c.name = r.name AND c.stream_id = r.stream;
    INSERT INTO name_claims (scope, name, stream_id)
    SELECT r.scope, r.name, r.stream FROM jsonb_to_recordset(w->'claims') AS r(scope text, name text, stream text);

    DELETE FROM stream_references x USING jsonb_to_recordset(w->'references_removed') AS r(target text, source text)
    WHERE x.target = r.target AND x.source = r.source;
    INSERT INTO stream_references (target, source)
    SELECT r.target, r.source FROM jsonb_to_recordset(w->'references_added') AS r(target text, source text)
    ON CONFLICT DO NOTHING;

    -- A deletion waits for every in-flight writer that depends on the stream, then sees their references.
    IF w->>'unreferenced' IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended(w->>'unreferenced', 0));
        SELECT string_agg(x.source, ',') INTO referenced FROM (
            SELECT source FROM stream_references WHERE target = w->>'unreferenced' ORDER BY source LIMIT 10
        ) x;
        IF referenced IS NOT NULL THEN
            RAISE EXCEPTION 'referenced' USING ERRCODE = 'ES002', DETAIL = referenced;
        END IF;
    END IF;

    WITH appended AS (
        INSERT INTO events AS e (stream_id, stream_version, event_id, event_type, schema_version, data, metadata, recorded_at)
        SELECT w->>'stream', previous + x.ord, (x.event->>'event_id')::uuid, x.event->>'event_type',
               (x.event->>'schema_version')::int, x.event->'data', x.event->'metadata', (x.event->>'recorded_at')::timestamptz
        FROM jsonb_array_elements(w->'events') WITH ORDINALITY AS x(event, ord)
        ORDER BY x.ord
        RETURNING e.stream_version, e.transaction_id, e.global_position
    )
    SELECT max(a.stream_version), max(a.transaction_id), max(a.global_position)
    INTO version, transaction_id, global_position FROM appended a;

    IF w->'response' IS NOT NULL AND w->'response' <> 'null'::jsonb THEN
        INSERT INTO idempotency_keys AS k (caller, key, request_hash, status, headers, body, transaction_id, global_position)
        SELECT r.caller, r.key, r.request_hash, r.status, r.headers, r.body, append_write.transaction_id, append_write.global_position
        FROM jsonb_to_record(w->'response') AS r(caller text, key text, request_hash text, status smallint, headers jsonb, body text)
        ON CONFLICT (caller, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, status = EXCLUDED.status,
            headers = EXCLUDED.headers, body = EXCLUDED.body, transaction_id = EXCLUDED.transaction_id,
            global_position = EXCLUDED.global_position, created_at = now()
        WHERE k.created_at < now() - interval '24 hours';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'idempotency_key' USING ERRCODE = 'ES003';
        END IF;
    END IF;
    RETURN NEXT;
END;
$$;

-- What the audit trail filters on, one row per event, kept by the `audit` projection. The rows it
-- answers with are read from the log by position; `changes` are folded from the streams.
CREATE TABLE read_models.audit_index (
    global_position bigint PRIMARY KEY,
    organization_id uuid,
    resource_type   text NOT NULL,
    resource_id     uuid,
    actor_id        text NOT NULL,
    occurred_at     timestamptz NOT NULL
);

CREATE INDEX audit_by_organization ON read_models.audit_index (organization_id, global_position DESC);
CREATE INDEX audit_by_resource ON read_models.audit_index (resource_id, global_position DESC);
CREATE INDEX audit_by_actor ON read_models.audit_index (actor_id, global_position DESC);
CREATE INDEX audit_by_type ON read_models.audit_index (resource_type, global_position DESC);
CREATE INDEX audit_by_time ON read_models.audit_index (occurred_at, global_position DESC);

-- Row counts of the trail per scope, so that `total` is exact without counting a million rows per
-- request. scope: 'all', 'platform' or 'organization:<id>', each optionally followed by ':<resource type>'
-- (events::read_models::audit_count).
CREATE TABLE read_models.audit_counts (
    scope text PRIMARY KEY,
    count bigint NOT NULL
);
