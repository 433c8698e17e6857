-- Operator jobs (rebuild, verify, replay, reconcile, usage export), model probes, and the files usage
-- exports write.
--
-- `read_models.jobs` is the `jobs` projection's view of the `job-<id>` streams: what the admin API
-- lists and what the projector's job runner picks pending jobs from. Progress is not in the log: the
-- runner writes it into `job_progress` as it goes (one row per job, replaced). A usage export's file
-- is written into `export_files` in parts of about a mebibyte, in order, as the export pages through
-- the executions, and served back part by part; housekeeping deletes files a while after they were
-- written.
CREATE TABLE read_models.jobs (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL,
    args             jsonb NOT NULL,
    source           text NOT NULL,
    state            text NOT NULL,
    requested_by     text NOT NULL,
    requested_at     timestamptz NOT NULL,
    runner           text,
    started_at       timestamptz,
    finished_at      timestamptz,
    cancel_requested boolean NOT NULL,
    result           jsonb,
    error            text,
    version          bigint NOT NULL
);

-- GET /api/v1/admin/jobs: newest first, optionally of one kind or state.
CREATE INDEX jobs_recent ON read_models.jobs (requested_at DESC, id DESC);
CREATE INDEX jobs_by_kind ON read_models.jobs (kind, requested_at DESC, id DESC);
-- The runner's queue, and the runtime view's depth and oldest item.
CREATE INDEX jobs_waiting ON read_models.jobs (requested_at, id) WHERE state IN ('pending', 'running');

CREATE TABLE job_progress (
    job_id     uuid PRIMARY KEY,
    progress   jsonb NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE export_files (
    job_id     uuid NOT NULL,
    part       integer NOT NULL,
    data       bytea NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, part)
);

-- The latest on-demand probe of each model (`model_probe-<model id>` streams), kept by the
-- `executions` projection beside the model's executions.
CREATE TABLE read_models.model_probes (
    model_id        uuid PRIMARY KEY,
    organization_id uuid,
    probed_at       timestamptz NOT NULL,
    ok              boolean NOT NULL,
    latency_ms      bigint NOT NULL,
    provider_status integer,
    error           text,
    probed_by       text NOT NULL
);
