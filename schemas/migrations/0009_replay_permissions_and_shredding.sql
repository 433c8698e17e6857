-- A response kept under an idempotency key records what the write was allowed to do (its organization,
-- or none for a platform-wide write, and the resource and action: events::access::Permission), so that a
-- replay asks the permission table again with the caller's current roles before answering. Rows kept
-- before this migration have none and replay as before; they expire within 24 hours.
--
-- A write may also destroy an owner's data key (`destroy_data_key`: deleting an organization
-- crypto-shreds its write-only values), in the same transaction as its events.
ALTER TABLE idempotency_keys ADD COLUMN permission jsonb;

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

    -- An owner's data key goes with the write that deletes the owner (events::secrets).
    IF w->>'destroy_data_key' IS NOT NULL THEN
        DELETE FROM data_keys WHERE owner = (w->>'destroy_data_key')::uuid;
    END IF;

    IF w->'response' IS NOT NULL AND w->'response' <> 'null'::jsonb THEN
        INSERT INTO idempotency_keys AS k (caller, key, request_hash, status, headers, body, permission, transaction_id, global_position)
        SELECT r.caller, r.key, r.request_hash, r.status, r.headers, r.body, r.permission, append_write.transaction_id, append_write.global_position
        FROM jsonb_to_record(w->'response') AS r(caller text, key text, request_hash text, status smallint, headers jsonb, body text, permission jsonb)
        ON CONFLICT (caller, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, status = EXCLUDED.status,
            headers = EXCLUDED.headers, body = EXCLUDED.body, permission = EXCLUDED.permission,
            transaction_id = EXCLUDED.transaction_id, global_position = EXCLUDED.global_position, created_at = now()
        WHERE k.created_at < now() - interval '24 hours';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'idempotency_key' USING ERRCODE = 'ES003';
        END IF;
    END IF;
    RETURN NEXT;
END;
$$;
