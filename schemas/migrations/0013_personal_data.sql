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

-- The access lookups can no longer take a user's subject, email and name from the event row (they are
-- sealed there): the write that records them passes them in plaintext to append_write instead
-- (`access_user` below). The trigger keeps the rest of what it did.
DROP TRIGGER access_lookups ON events;

CREATE OR REPLACE FUNCTION keep_access_lookups() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    id uuid := substring(NEW.stream_id FROM position('-' IN NEW.stream_id) + 1)::uuid;
BEGIN
    CASE NEW.event_type
    WHEN 'user.system_role_granted' THEN
        UPDATE access_users SET system_role = true WHERE user_id = id;
    WHEN 'user.system_role_revoked' THEN
        UPDATE access_users SET system_role = false WHERE user_id = id;
    WHEN 'member.added', 'member.role_changed' THEN
        INSERT INTO access_memberships (user_id, organization_id, role)
        VALUES ((NEW.data->>'userId')::uuid, id, NEW.data->>'role')
        ON CONFLICT (user_id, organization_id) DO UPDATE SET role = EXCLUDED.role;
    WHEN 'member.removed' THEN
        DELETE FROM access_memberships WHERE user_id = (NEW.data->>'userId')::uuid AND organization_id = id;
    WHEN 'organization.deleted' THEN
        DELETE FROM access_memberships WHERE organization_id = id;
    END CASE;
    RETURN NULL;
END;
$$;

CREATE TRIGGER access_lookups AFTER INSERT ON events FOR EACH ROW
WHEN (NEW.event_type IN ('user.system_role_granted', 'user.system_role_revoked', 'member.added',
                         'member.role_changed', 'member.removed', 'organization.deleted'))
EXECUTE FUNCTION keep_access_lookups();

-- User aggregates are no longer snapshotted (a snapshot would hold opened personal data outside the
-- log's keys); the ones kept before go.
DELETE FROM snapshots WHERE stream_id LIKE 'user-%';

-- append_write as in 0009, plus two sections:
--   access_user: a user's subject, email and name in plaintext for access_users (absent fields keep
--     their value), written with the events that record them;
--   erase_user: a user id whose key, access lookups, sessions and kept responses go with the write
--     that appends `user.erased`.
CREATE OR REPLACE FUNCTION append_write(w jsonb)
RETURNS TABLE (version bigint, transaction_id bigint, global_position bigint)
LANGUAGE plpgsql AS $$
DECLARE
    dependency jsonb;
    current    bigint;
    previous   bigint;
    referenced text;
    erased     uuid := (w->>'erase_user')::uuid;
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

    IF w->'access_user' IS NOT NULL AND w->'access_user' <> 'null'::jsonb THEN
        INSERT INTO access_users AS u (user_id, subject, email, name)
        SELECT r.user_id, r.subject, r.email, r.name
        FROM jsonb_to_record(w->'access_user') AS r(user_id uuid, subject text, email text, name text)
        ON CONFLICT (user_id) DO UPDATE SET
            email = coalesce(EXCLUDED.email, u.email),
            name  = coalesce(EXCLUDED.name, u.name);
    END IF;

    -- Erasure: the key that opens the user's personal data, and everything outside the log that holds
    -- it in plaintext or lets the user act (kept responses may show their email or name).
    IF erased IS NOT NULL THEN
        -- Waits for in-flight writes that depend on the user (adding it to an organization takes a
        -- shared lock on its stream, above), then refuses while a membership is left: the command
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
