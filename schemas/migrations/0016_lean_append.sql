-- The write path does only the work a write asks for, commits concurrent writes together, and the
-- access lookups announce their changes.
--
-- append_write as in 0013, with each section guarded by whether the write set has anything for it.
-- The executor leaves out empty lists, a missing `unreferenced`, lookups that imply nothing and a
-- missing response (commands::store), and every statement PL/pgSQL runs costs an executor start even
-- when it touches no row: most writes have no releases, no removed references, no lookups and no kept
-- response, and calling apply_lookups for nothing cost more than the event's own insert. A write set
-- that still carries the empty lists (from an older executor) is applied exactly as before.
--
-- The streams a write depends on are locked in one statement and checked in the next, in a snapshot
-- taken after the locks were granted (so a deletion that committed while we waited is seen), instead
-- of two statements per dependency.
--
-- apply_lookups as in 0013, and it then sends `NOTIFY access_changed` with the id of each user whose
-- lookups changed (`*` when an organization is deleted, which may touch any of its members). A
-- notification is delivered when its transaction commits, never before and never for one that rolls
-- back: the caches of the access lookups (commands::access) drop what they hold of those users.

CREATE OR REPLACE FUNCTION apply_lookups(l jsonb) RETURNS void
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

    -- Who may now do something else: every cache of the lookups drops them (commands::access).
    PERFORM pg_notify('access_changed', u.user_id::text) FROM (
        SELECT r.user_id FROM jsonb_to_recordset(l->'registered') AS r(user_id uuid)
        UNION SELECT r.user_id FROM jsonb_to_recordset(l->'profiles') AS r(user_id uuid)
        UNION SELECT r.user_id FROM jsonb_to_recordset(l->'system_roles') AS r(user_id uuid)
        UNION SELECT r.user_id FROM jsonb_to_recordset(l->'memberships') AS r(user_id uuid)
        UNION SELECT r.user_id FROM jsonb_to_recordset(l->'memberships_removed') AS r(user_id uuid)
        UNION SELECT erased WHERE erased IS NOT NULL
    ) u;
    IF deleted_org IS NOT NULL THEN
        PERFORM pg_notify('access_changed', '*');
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION append_write(w jsonb)
RETURNS TABLE (version bigint, transaction_id bigint, global_position bigint)
LANGUAGE plpgsql AS $$
DECLARE
    previous   bigint;
    conflict   text;
    referenced text;
    n          bigint := jsonb_array_length(w->'events');
BEGIN
    -- Streams this write depends on without writing them: shared advisory locks, so that many writers
    -- can depend on one stream at once while a deletion of it (below) waits for them all.
    IF jsonb_array_length(coalesce(w->'requires', '[]')) > 0 THEN
        PERFORM pg_advisory_xact_lock_shared(hashtextextended(d.stream, 0))
        FROM jsonb_to_recordset(w->'requires') AS d(stream text, version bigint);
        SELECT d.stream INTO conflict
        FROM jsonb_to_recordset(w->'requires') AS d(stream text, version bigint)
        LEFT JOIN streams s ON s.stream_id = d.stream
        WHERE coalesce(s.version, 0) <> d.version
        LIMIT 1;
        IF conflict IS NOT NULL THEN
            RAISE EXCEPTION 'stream_conflict' USING ERRCODE = 'ES001', DETAIL = conflict;
        END IF;
    END IF;

    -- The stream written: its row lock serialises writers until commit.
    INSERT INTO streams AS s (stream_id, version) VALUES (w->>'stream', n)
    ON CONFLICT (stream_id) DO UPDATE SET version = s.version + n
    RETURNING s.version - n INTO previous;
    IF previous <> (w->>'expected')::bigint THEN
        RAISE EXCEPTION 'stream_conflict' USING ERRCODE = 'ES001', DETAIL = w->>'stream';
    END IF;

    IF jsonb_array_length(coalesce(w->'releases', '[]')) > 0 THEN
        DELETE FROM name_claims c USING jsonb_to_recordset(w->'releases') AS r(scope text, name text, stream text)
        WHERE c.scope = r.scope AND c.name = r.name AND c.stream_id = r.stream;
    END IF;
    IF jsonb_array_length(coalesce(w->'claims', '[]')) > 0 THEN
        INSERT INTO name_claims (scope, name, stream_id)
        SELECT r.scope, r.name, r.stream FROM jsonb_to_recordset(w->'claims') AS r(scope text, name text, stream text);
    END IF;

    IF jsonb_array_length(coalesce(w->'references_removed', '[]')) > 0 THEN
        DELETE FROM stream_references x USING jsonb_to_recordset(w->'references_removed') AS r(target text, source text)
        WHERE x.target = r.target AND x.source = r.source;
    END IF;
    IF jsonb_array_length(coalesce(w->'references_added', '[]')) > 0 THEN
        INSERT INTO stream_references (target, source)
        SELECT r.target, r.source FROM jsonb_to_recordset(w->'references_added') AS r(target text, source text)
        ON CONFLICT DO NOTHING;
    END IF;

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
    IF w->'lookups' IS NOT NULL AND w->'lookups' <> 'null'::jsonb THEN
        PERFORM apply_lookups(w->'lookups');
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

-- Group commit (commands::store): the writes of concurrent commands, appended in one transaction. Each
-- runs in a subtransaction of its own, so that one that fails (a lost race, a name already taken, a
-- deletion still referenced) is rolled back alone and answered alone, while the others commit. One row
-- per write, in the order given: where it landed, or the error it raised. An error that is not the
-- write's own (the connection lost, the commit itself failing) fails the whole call, and the executor
-- answers every write of it with that error. The executor never puts two writes in one call when one
-- writes a stream the other writes or depends on.
CREATE FUNCTION append_writes(writes jsonb)
RETURNS TABLE (version bigint, transaction_id bigint, global_position bigint,
               error_code text, error_constraint text, error_detail text, error_message text)
LANGUAGE plpgsql AS $$
DECLARE
    w jsonb;
BEGIN
    FOR w IN SELECT x FROM jsonb_array_elements(writes) AS x LOOP
        error_code := NULL;
        error_constraint := NULL;
        error_detail := NULL;
        error_message := NULL;
        BEGIN
            SELECT a.version, a.transaction_id, a.global_position
            INTO append_writes.version, append_writes.transaction_id, append_writes.global_position
            FROM append_write(w) a;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS error_code = RETURNED_SQLSTATE, error_constraint = CONSTRAINT_NAME,
                                    error_detail = PG_EXCEPTION_DETAIL, error_message = MESSAGE_TEXT;
            version := NULL;
            transaction_id := NULL;
            global_position := NULL;
        END;
        RETURN NEXT;
    END LOOP;
END;
$$;
