-- Usage and spend control (operator surface): budgets, the spend they are held against, and usage
-- reports per environment; what the ownership overview and the sandbox status read; and service
-- instances' heartbeats.
--
-- `organization_budgets` and `organization_spend` are kept by the write path (commands::lookups, in
-- apply_lookups, in the transaction that appends the events they follow from): an organization's
-- budget as set (`budget-<id>` streams), and what its finished executions cost per UTC month (of the
-- `execution.succeeded` event) and currency. An execution is refused (`402`) while its organization's
-- hard-stopped budget is spent, read from these two tables with no projection lag. The spend of
-- executions recorded before this migration is summed from the log here.
CREATE TABLE organization_budgets (
    organization_id uuid PRIMARY KEY,
    monthly_limit   numeric NOT NULL,
    currency        text NOT NULL,
    alert_at        double precision[] NOT NULL,
    hard_stop       boolean NOT NULL,
    updated_at      timestamptz NOT NULL
);

CREATE TABLE organization_spend (
    organization_id uuid NOT NULL,
    period          date NOT NULL,
    currency        text NOT NULL,
    spent           numeric NOT NULL,
    PRIMARY KEY (organization_id, period, currency)
);

INSERT INTO organization_spend (organization_id, period, currency, spent)
SELECT (metadata->>'organizationId')::uuid,
       date_trunc('month', recorded_at AT TIME ZONE 'UTC')::date,
       data->'cost'->>'currency',
       sum((data->'cost'->>'total')::numeric)
FROM events
WHERE event_type = 'execution.succeeded'
  AND jsonb_typeof(data->'cost') = 'object'
  AND metadata->>'organizationId' IS NOT NULL
GROUP BY 1, 2, 3;

-- apply_lookups as in 0016, with the budget and spend sections, and a deleted organization's budget
-- going with it.
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
        DELETE FROM organization_budgets WHERE organization_id = deleted_org;
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

    -- Budgets and spend (commands::lookups): what the hard stop reads.
    IF l->'budget_set' IS NOT NULL AND l->'budget_set' <> 'null'::jsonb THEN
        INSERT INTO organization_budgets (organization_id, monthly_limit, currency, alert_at, hard_stop, updated_at)
        SELECT r.organization_id, r.monthly_limit, r.currency, r.alert_at, r.hard_stop, r.updated_at
        FROM jsonb_to_record(l->'budget_set')
             AS r(organization_id uuid, monthly_limit numeric, currency text, alert_at double precision[],
                  hard_stop boolean, updated_at timestamptz)
        ON CONFLICT (organization_id) DO UPDATE SET monthly_limit = EXCLUDED.monthly_limit,
            currency = EXCLUDED.currency, alert_at = EXCLUDED.alert_at, hard_stop = EXCLUDED.hard_stop,
            updated_at = EXCLUDED.updated_at;
    END IF;
    IF l->>'budget_removed' IS NOT NULL THEN
        DELETE FROM organization_budgets WHERE organization_id = (l->>'budget_removed')::uuid;
    END IF;
    IF jsonb_array_length(coalesce(l->'spend', '[]')) > 0 THEN
        INSERT INTO organization_spend AS s (organization_id, period, currency, spent)
        SELECT r.organization_id, r.period, r.currency, sum(r.amount)
        FROM jsonb_to_recordset(l->'spend') AS r(organization_id uuid, period date, currency text, amount numeric)
        GROUP BY 1, 2, 3
        ON CONFLICT (organization_id, period, currency) DO UPDATE SET spent = s.spent + EXCLUDED.spent;
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

-- `execution_totals` gains the environment, and counts an execution on the UTC day it finished (the
-- day its cost was incurred, as budgets count it). The table is emptied and the `executions`
-- projection's checkpoint set back to the start of the log, so the running projector refills it (and
-- `executions`, emptied too) from the log with no manual step.
TRUNCATE read_models.executions, read_models.execution_totals;

-- Executions by environment, for the operators' sandbox status: what runs now, what ran in the last hour.
ALTER TABLE read_models.executions ADD COLUMN environment_id uuid NOT NULL;
CREATE INDEX executions_running ON read_models.executions (environment_id) WHERE status = 'running';
CREATE INDEX executions_by_environment ON read_models.executions (environment_id, requested_at DESC);
CREATE INDEX executions_recent ON read_models.executions (requested_at);
-- And by model, for the model catalog's health.
CREATE INDEX executions_by_model ON read_models.executions (model_id, requested_at DESC);
CREATE INDEX catalog_by_model ON read_models.catalog (model_id) WHERE model_id IS NOT NULL;

ALTER TABLE read_models.execution_totals
    ADD COLUMN environment_id uuid NOT NULL,
    DROP CONSTRAINT execution_totals_pkey,
    ADD PRIMARY KEY (organization_id, day, environment_id, model_id, currency);

-- A platform-wide report over a range reads by day.
CREATE INDEX execution_totals_by_day ON read_models.execution_totals (day);

-- The same sums per UTC month (`month` is its first day), kept in the same batches: reports over whole
-- months (or all time) that are not grouped by day or week read these.
CREATE TABLE read_models.execution_totals_monthly (
    organization_id uuid    NOT NULL,
    month           date    NOT NULL,
    environment_id  uuid    NOT NULL,
    model_id        uuid    NOT NULL,
    currency        text    NOT NULL,
    executions      bigint  NOT NULL,
    failures        bigint  NOT NULL,
    input_tokens    bigint  NOT NULL,
    output_tokens   bigint  NOT NULL,
    cost            numeric NOT NULL,
    PRIMARY KEY (organization_id, month, environment_id, model_id, currency)
);

CREATE INDEX execution_totals_monthly_by_month ON read_models.execution_totals_monthly (month);

-- The platform's sums per UTC day and currency, kept in the same batches: reports with no
-- organization, environment or model filter grouped by day, week or month read these.
CREATE TABLE read_models.execution_totals_platform (
    day           date    NOT NULL,
    currency      text    NOT NULL,
    executions    bigint  NOT NULL,
    failures      bigint  NOT NULL,
    input_tokens  bigint  NOT NULL,
    output_tokens bigint  NOT NULL,
    cost          numeric NOT NULL,
    PRIMARY KEY (day, currency)
);

-- The `notifications` projection's own bookkeeping for usage alerts: each organization's budget, and
-- per organization and month its spend in the budget's currency and the thresholds already alerted.
-- The projection is rebuilt from the log the same way, so that this month's spend is counted.
CREATE TABLE read_models.notification_budgets (
    organization_id uuid PRIMARY KEY,
    limits          jsonb NOT NULL
);

CREATE TABLE read_models.notification_spend (
    organization_id uuid NOT NULL,
    period          date NOT NULL,
    currency        text NOT NULL,
    spent           numeric NOT NULL,
    alerted         double precision[] NOT NULL,
    PRIMARY KEY (organization_id, period, currency)
);

TRUNCATE read_models.notifications;

UPDATE projection_checkpoints
SET transaction_id = 0, global_position = 0, updated_at = now(),
    failing_since = NULL, failed_attempts = 0, failed_position = NULL, last_error = NULL
WHERE name IN ('executions', 'notifications');

-- The sandbox status's last change to an environment's resources.
CREATE INDEX catalog_recently_changed ON read_models.catalog (environment_id, updated_at DESC)
    WHERE environment_id IS NOT NULL;

-- The ownership overview's users with their last sign-in (GET /api/v1/admin/users).
CREATE INDEX security_events_sign_ins ON read_models.security_events (actor_id, occurred_at DESC)
    WHERE kind = 'sign_in';

-- Each service instance's heartbeat (http_layer::heartbeat), for GET /api/v1/admin/runtime.
CREATE TABLE service_instances (
    instance_id  uuid PRIMARY KEY,
    service      text NOT NULL,
    version      text NOT NULL,
    started_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL
);
