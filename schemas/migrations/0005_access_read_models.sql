-- Read models of users and organization members, kept by the `access` projection. Member rows carry
-- their user's email and name, which a profile update rewrites.

CREATE TABLE read_models.users (
    id          uuid PRIMARY KEY,
    email       text,
    name        text,
    system_role boolean NOT NULL,
    version     bigint NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE INDEX users_newest_first ON read_models.users (created_at DESC, id DESC);

CREATE TABLE read_models.members (
    organization_id uuid NOT NULL,
    user_id         uuid NOT NULL,
    role            text NOT NULL,
    email           text,
    name            text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (organization_id, user_id)
);

CREATE INDEX members_newest_first ON read_models.members (organization_id, created_at DESC, user_id DESC);
CREATE INDEX members_user ON read_models.members (user_id);
