-- Prompt-template executions and sentiment annotations.
--
-- `catalog` gains a template's annotations (its sentiment analyses, set by
-- `prompt_template.sentiment_analyzed` events) and how many annotation events its stream holds: the
-- template's `version` is its stream version minus that count, since an annotation is not a version.
-- Existing rows have none, so nothing needs rebuilding.
ALTER TABLE read_models.catalog
    ADD COLUMN annotations       jsonb  NOT NULL DEFAULT '{}',
    ADD COLUMN annotation_events bigint NOT NULL DEFAULT 0;

-- One row per execution, kept by the `executions` projection: `data` is the execution's state as the
-- domain folds it (`domain::execution::ExecutionData`).
CREATE TABLE read_models.executions (
    id              uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    template_id     uuid NOT NULL,
    model_id        uuid NOT NULL,
    status          text NOT NULL,
    requested_at    timestamptz NOT NULL,
    data            jsonb NOT NULL
);

-- GET /api/prompt-templates/{id}/executions: newest first.
CREATE INDEX executions_by_template ON read_models.executions (template_id, requested_at DESC, id DESC);

-- Totals per organization, model, UTC day of the request and currency ('' for a model without prices),
-- counted when an execution finishes: the ground usage and spend reports are built on.
CREATE TABLE read_models.execution_totals (
    organization_id uuid    NOT NULL,
    model_id        uuid    NOT NULL,
    day             date    NOT NULL,
    currency        text    NOT NULL,
    executions      bigint  NOT NULL,
    failures        bigint  NOT NULL,
    input_tokens    bigint  NOT NULL,
    output_tokens   bigint  NOT NULL,
    cost            numeric NOT NULL,
    PRIMARY KEY (organization_id, model_id, day, currency)
);
