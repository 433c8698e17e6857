-- Refused requests, recorded as security signals by both APIs (http_layer::security): aggregated per
-- minute, kind, source address ('' unknown, '*' for the sources over a process's per-minute cap)
-- and caller ('' unknown), with the count and the first request's sample (method, route, status,
-- reason, user agent, attack classes, a redacted excerpt). Not part of the event log: these are
-- observations of requests that changed nothing. The projector's probe intake turns `probe` rows
-- into triage reports and marks them `reported`.
CREATE TABLE security_refusals (
    minute   timestamptz NOT NULL,
    kind     text NOT NULL,
    source   text NOT NULL,
    actor_id text NOT NULL,
    count    bigint NOT NULL,
    first_at timestamptz NOT NULL,
    last_at  timestamptz NOT NULL,
    sample   jsonb NOT NULL,
    reported boolean NOT NULL DEFAULT false,
    PRIMARY KEY (minute, kind, source, actor_id)
);

CREATE INDEX security_refusals_newest ON security_refusals (first_at DESC);
CREATE INDEX security_refusals_to_report ON security_refusals (first_at) WHERE kind = 'probe' AND NOT reported;

-- The security events the event log holds, kept by the `security` projection: sign-ins and sign-outs,
-- System role grants and revokes, and changes of write-only values (which fields, set or cleared;
-- never the value). `details` is what the event adds (the session, the resource and its fields).
CREATE TABLE read_models.security_events (
    id              uuid PRIMARY KEY,
    kind            text NOT NULL,
    occurred_at     timestamptz NOT NULL,
    actor_id        text NOT NULL,
    organization_id uuid,
    ip              text,
    user_agent      text,
    details         jsonb NOT NULL
);

CREATE INDEX security_events_newest ON read_models.security_events (occurred_at DESC, id DESC);
CREATE INDEX security_events_by_kind ON read_models.security_events (kind, occurred_at DESC, id DESC);

-- A time as the API renders it (RFC 3339, milliseconds, `Z`), for reads that build their JSON rows in
-- SQL.
CREATE FUNCTION api_time(at timestamptz) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;
