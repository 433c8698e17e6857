-- Every version of every prompt template, kept by the `catalog` projection, so that
-- GET /api/prompt-templates/{id}/versions reads the rows of the page it answers instead of folding the
-- template's whole stream on every request.
--
-- One row per `prompt_template.created` or `.updated` event: `version` is the event's stream version,
-- `fields` the template's normalised field set after it (never a write-only value), `secrets` the
-- write-only fields that then held a value, `changed_by` the event's actor, `changed_at` when it was
-- recorded, `changes` the names of the fields it set, `created_at`/`updated_at` the template's after it.
-- A deleted template's rows are deleted with it: it has no versions to show.
--
-- The table starts empty. Templates written before this migration get their versions when the
-- projection is rebuilt (`projector rebuild catalog`), which a deployment runs once after migrating.
CREATE TABLE read_models.prompt_template_versions (
    template_id uuid NOT NULL,
    version     bigint NOT NULL,
    fields      jsonb NOT NULL,
    secrets     jsonb NOT NULL,
    changed_by  jsonb NOT NULL,
    changed_at  timestamptz NOT NULL,
    changes     jsonb NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (template_id, version)
);
