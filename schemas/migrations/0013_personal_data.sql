-- Personal data sealed per user, so that erasing a user is destroying one key (events::personal).
--
-- personal_data_keys holds one key per user stream. A user event's subject, email and name are sealed
-- under it before they enter the log; every read of the log selects the key with the row and opens them.
-- Erasing the user deletes the key in the transaction that appends `user.erased`, and from then on every
-- copy in the log reads as "[erased]". A subject that signs in again after erasure gets a new key (a new
-- key_id), under which the old values still do not open.
CREATE TABLE personal_data_keys (
    stream_id text PRIMARY KEY,
    key_id    uuid NOT NULL UNIQUE,
    key       bytea NOT NULL CHECK (length(key) = 32)
);

-- The access lookups are no longer kept by a trigger reading raw event JSON (which could not open
-- sealed values, and read every version of an event as if it were the current one): each write derives
-- them in Rust from its events read as their current version (events::lookups) and append_write
-- applies them, in the same transaction as before.
DROP TRIGGER access_lookups ON events;
DROP FUNCTION keep_access_lookups();

-- User aggregates are no longer snapshotted (a snapshot would hold opened personal data outside the
-- log's keys); the ones kept before go.
DELETE FROM snapshots WHERE stream_id LIKE 'user-%';

-- What a write's events imply outside the log (w->'lookups', derived by events::lookups), applied in
-- the append's transaction in place of the trigger and of 0009's destroy_data_key. A function of its
-- own, so that a later change to what events imply restates this one and not append_write:
--   registered, profiles, system_roles: access_users rows (a user's subject, email and name in
--     plaintext, absent profile fields keeping their value);
--   memberships, memberships_removed: access_memberships rows;
--   organization_deleted: its memberships and its data key go;
--   user_erased: the key of its personal data, its access lookups, its sessions and the responses kept
--     for retries that it made or that mention it go.
CREATE FUNCTION apply_lookups(l jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    erased      uuid := (l->>'user_erased')::uuid;
    deleted_org uuid := (l->>'organization_deleted')::uuid;
BEGIN
    INSERT INTO access_users AS u (user_id, subject, email, name)
    SELECT r.user_id, r.subject, r.email, r.name
    FROM jsonb_to_recordset(l->'registered') AS r(user_id uuid, subject text, email text, name text)
    ON CONFLICT (user_id) DO UPDATE SET subject = EXCLUDED.subject, email = EXCLUDED.email, name = EXCLUDED.name;
    UPDATE access_users u SET email = coalesce(r.email, u.email), name = coalesce(r.name, u.name)
    FROM jsonb_to_recordset(l->'profiles') AS r(user_id uuid, email text, name text)
    WHERE u.user_id = r.user_id;
    UPDATE access_users u SET system_role = r.granted
    FROM jsonb_to_recordset(l->'system_roles') AS r(user_id uuid, granted boolean)
    WHERE u.user_id = r.user_id;
    INSERT INTO access_memberships (user_id, organization_id, role)
    SELECT r.user_id, r.organization_id, r.role
    FROM jsonb_to_recordset(l->'memberships') AS r(user_id uuid, organization_id uuid, role text)
    ON CONFLICT (user_id, organization_id) DO UPDATE SET role = EXCLUDED.role;
    DELETE FROM access_memberships m
    USING jsonb_to_recordset(l->'memberships_removed') AS r(user_id uuid, organization_id uuid)
    WHERE m.user_id = r.user_id AND m.organization_id = r.organization_id;

    -- A deleted organization's write-only values go with it (events::secrets).
    IF deleted_org IS NOT NULL THEN
        DELETE FROM access_memberships WHERE organization_id = deleted_org;
        DELETE FROM data_keys WHERE owner = deleted_org;
    END IF;

    -- Erasure (events::personal): the key that opens the user's personal data, and everything outside
    -- the log that holds it in plaintext or lets the user act.
    IF erased IS NOT NULL THEN
        -- Waits for in-flight writes that depend on the user (adding it to an organization takes a
        -- shared lock on its stream first thing in append_write), then refuses while a membership is left: the command
        -- removes memberships first, and runs again when one was added meanwhile.
        PERFORM pg_advisory_xact_lock(hashtextextended('user-' || erased, 0));
        IF EXISTS (SELECT 1 FROM access_memberships WHERE user_id = erased) THEN
            RAISE EXCEPTION 'stream_conflict' USING ERRCODE = 'ES001', DETAIL = 'user-' || erased;
        END IF;
        DELETE FROM personal_data_keys WHERE stream_id = 'user-' || erased;
        DELETE FROM access_users WHERE user_id = erased;
        DELETE FROM sessions WHERE user_id = erased;
        DELETE FROM idempotency_keys WHERE caller = erased::text OR strpos(body, erased::text) > 0;
    END IF;
END;
$$;

-- append_write as in 0009, with apply_lookups in place of its destroy_data_key section.
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

    -- What the events imply outside the log, in this transaction.
    PERFORM apply_lookups(w->'lookups');

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
