-- The operator surface's triage queue (feedback mode), kept by the `feedback` projection.
--
-- One row per submission. `data` is what `GET /api/v1/admin/feedback/{id}` answers
-- (`contracts::views::FeedbackItem`) but for the group, which is the `group_id` column alone, so that
-- moving an item into a burst group rewrites one column. The other columns are what lists filter
-- and sort on: `severity` is the rank (0 low … 3 critical), `origin` the source that bursts are
-- counted per (`user:<id>` for reports, `ip:<address>` for probes).
CREATE TABLE read_models.feedback (
    id              uuid PRIMARY KEY,
    organization_id uuid,
    origin          text NOT NULL,
    source          text NOT NULL,
    severity        smallint NOT NULL,
    state           text NOT NULL,
    quality         text NOT NULL,
    groups          text[] NOT NULL,
    fingerprint     text NOT NULL,
    group_id        uuid NOT NULL,
    message         text NOT NULL,
    created_at      timestamptz NOT NULL,
    data            jsonb NOT NULL
);

-- Newest first, and by highest severity first (the seed's "review new open feedback with highest
-- severity"), over everything or one state.
CREATE INDEX feedback_newest ON read_models.feedback (created_at DESC, id DESC);
CREATE INDEX feedback_by_state ON read_models.feedback (state, created_at DESC, id DESC);
CREATE INDEX feedback_by_severity ON read_models.feedback (severity DESC, created_at DESC, id DESC);
CREATE INDEX feedback_by_state_and_severity ON read_models.feedback (state, severity DESC, created_at DESC, id DESC);
CREATE INDEX feedback_by_organization ON read_models.feedback (organization_id, created_at DESC, id DESC);
CREATE INDEX feedback_by_group ON read_models.feedback (group_id, created_at DESC, id DESC);
-- What grouping looks up for each new submission: its duplicates, and its source's recent ones.
CREATE INDEX feedback_by_fingerprint ON read_models.feedback (fingerprint, created_at DESC);
CREATE INDEX feedback_by_origin ON read_models.feedback (origin, created_at DESC);

-- One row per group of submissions triaged together: `single` (one submission so far), `duplicate`
-- (the same fingerprint), `burst` (one source, many submissions within the burst window). Counts per
-- workflow state; `state` is the least advanced state any item is in, `archived` when all are.
CREATE TABLE read_models.feedback_groups (
    id          uuid PRIMARY KEY,
    kind        text NOT NULL,
    fingerprint text,
    origin      text,
    items       bigint NOT NULL,
    open        bigint NOT NULL,
    triaged     bigint NOT NULL,
    in_progress bigint NOT NULL,
    done        bigint NOT NULL,
    archived    bigint NOT NULL,
    state       text NOT NULL,
    severity    smallint NOT NULL,
    first_at    timestamptz NOT NULL,
    last_at     timestamptz NOT NULL
);

CREATE INDEX feedback_groups_newest ON read_models.feedback_groups (last_at DESC, id DESC);
CREATE INDEX feedback_groups_by_state ON read_models.feedback_groups (state, last_at DESC, id DESC);
CREATE INDEX feedback_groups_bursts ON read_models.feedback_groups (origin, last_at DESC) WHERE kind = 'burst';

-- Exact totals of the lists that filter by at most one of these, kept by the same projection:
-- `all`, `state:<state>`, `quality:<quality>`, `group:<attack class>`, `severity:<rank>`,
-- `source:<user|probe>`, `organization:<id>`. Other lists count their rows.
CREATE TABLE read_models.feedback_counts (
    scope text PRIMARY KEY,
    count bigint NOT NULL
);
