-- Who may do what, kept next to the log, and the state of browser sign-in.
--
-- access_users and access_memberships are what every request is authorised against. They are a
-- function of the user and member events and are kept by a trigger on the events table, so they change
-- in the very transaction that appends those events: a membership granted is usable, and one revoked
-- unusable, as soon as the write that did it has answered. They are never written any other way.

CREATE TABLE access_users (
    user_id     uuid PRIMARY KEY,
    subject     text NOT NULL UNIQUE,
    email       text,
    name        text,
    -- Granted through the API; SYSTEM_ADMINS confers the role without a row here saying so.
    system_role boolean NOT NULL DEFAULT false
);

CREATE INDEX access_users_email ON access_users (lower(email));

CREATE TABLE access_memberships (
    user_id         uuid NOT NULL,
    organization_id uuid NOT NULL,
    role            text NOT NULL,
    PRIMARY KEY (user_id, organization_id)
);

CREATE INDEX access_memberships_organization ON access_memberships (organization_id);

-- Streams are named `<aggregate>-<uuid>`: users `user-<user id>`, memberships `members-<organization id>`.
CREATE FUNCTION keep_access_lookups() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    id uuid := substring(NEW.stream_id FROM position('-' IN NEW.stream_id) + 1)::uuid;
BEGIN
    CASE NEW.event_type
    WHEN 'user.registered' THEN
        INSERT INTO access_users (user_id, subject, email, name)
        VALUES (id, NEW.data->>'subject', NEW.data->>'email', NEW.data->>'name');
    WHEN 'user.profile_updated' THEN
        UPDATE access_users SET
            email = CASE WHEN NEW.data ? 'email' THEN NEW.data->>'email' ELSE email END,
            name  = CASE WHEN NEW.data ? 'name' THEN NEW.data->>'name' ELSE name END
        WHERE user_id = id;
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
WHEN (NEW.event_type IN ('user.registered', 'user.profile_updated', 'user.system_role_granted',
                         'user.system_role_revoked', 'member.added', 'member.role_changed',
                         'member.removed', 'organization.deleted'))
EXECUTE FUNCTION keep_access_lookups();

-- Browser sessions. The cookie holds a random token; only its SHA-256 is stored, so a copy of this
-- table signs nobody in. Signing out deletes the row, which ends the session wherever the cookie is.
CREATE TABLE sessions (
    id         uuid PRIMARY KEY,
    token_hash bytea NOT NULL UNIQUE,
    user_id    uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

-- Sign-ins under way: created by /api/auth/login, consumed (deleted) by the first callback that
-- presents the state, so a replayed state finds nothing.
CREATE TABLE sign_in_attempts (
    state_hash    bytea PRIMARY KEY,
    nonce         text NOT NULL,
    code_verifier text NOT NULL,
    return_to     text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX sign_in_attempts_created_at ON sign_in_attempts (created_at);
