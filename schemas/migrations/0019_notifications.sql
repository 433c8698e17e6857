-- The operator surface's platform alerts (notifications mode), kept by the `notifications`
-- projection: derived from the events they are about, one alert per organization, kind, cause and
-- UTC hour (`id` is the UUID v5 of that key), counting its occurrences; and what operators did about
-- each (`notification-<id>` streams). A new occurrence after the alert was resolved makes it unread
-- again. `severity` is the rank (0 low … 3 critical).
CREATE TABLE read_models.notifications (
    id              uuid PRIMARY KEY,
    kind            text NOT NULL,
    severity        smallint NOT NULL,
    organization_id uuid,
    subject         text NOT NULL,
    summary         text NOT NULL,
    source          jsonb NOT NULL,
    occurrences     bigint NOT NULL,
    occurred_at     timestamptz NOT NULL,
    last_at         timestamptz NOT NULL,
    state           text NOT NULL,
    acknowledged_by text,
    acknowledged_at timestamptz,
    resolved_by     text,
    resolved_at     timestamptz
);

CREATE INDEX notifications_newest ON read_models.notifications (last_at DESC, id DESC);
CREATE INDEX notifications_by_state ON read_models.notifications (state, last_at DESC, id DESC);
CREATE INDEX notifications_unread ON read_models.notifications (severity) WHERE state = 'unread';
