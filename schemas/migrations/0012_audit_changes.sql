-- The audit trail served from its read model alone: every row of GET /api/audit-events, `changes`
-- included, is stored by the `audit` projection when it indexes the event, so that a page or an export
-- batch reads its own rows instead of folding the whole history of every stream it touches.
--
-- audit_index gains what a row shows besides the filters: the event's id and type, the actor's role,
-- the request's id, address and user agent (from the event's metadata), and `changes`, computed by
-- folding the event into its stream's state with the aggregates' own `apply` (events::history).
-- Write-only values show there as "[redacted]", exactly as the trail answers: no secret and no
-- ciphertext is stored.
--
-- Storage. A change holds the field's value before and after, and a long text changed often (a prompt
-- template's 100 KB text, 10,000 times) would be stored twice per event if kept inline. So a value
-- whose JSON text is longer than 1 KiB is stored once in audit_values, under the SHA-256 (hex) of its
-- JSON text with keys sorted, and the row's `changes` holds null in its place while `large_values`
-- names it: {field: {"from": hash, "to": hash}}, listing only the sides stored apart. An event's "to"
-- is the next change's "from", and a value set again is the same hash, so each distinct long value is
-- stored once however many rows show it: 10,000 versions of a 100 KB text cost about 1 GB here (as
-- much as the log holds), not 2.
--
-- audit_counts also counts each resource's rows ('<scope>:<resource type>:<resource id>', after the
-- scopes of 0007), so that the total of one resource's trail is read rather than counted over its
-- history.
--
-- audit_states holds, per stream, the state the projection folds the next event into (the aggregate's
-- own serialised state; for a document, which write-only fields are set but never their values), so
-- that indexing an event reads one row, not the stream's history. A members stream is kept per
-- membership (`members-<organization>/<user>`): its events change only the membership they name.
--
-- Existing trails: the index is emptied and the projection's checkpoint set back to the start of the
-- log, so the running projector refills every row, with its changes, from the log (no manual step).
-- Until it has caught up, reads that wait for the audit trail wait (at most 5 s, then 503) and reads
-- that do not see a shorter trail.
TRUNCATE read_models.audit_index, read_models.audit_counts;

ALTER TABLE read_models.audit_index
    ADD COLUMN event_id     uuid NOT NULL,
    ADD COLUMN event_type   text NOT NULL,
    ADD COLUMN actor_role   text,
    ADD COLUMN request_id   text NOT NULL,
    ADD COLUMN client_ip    text,
    ADD COLUMN user_agent   text,
    ADD COLUMN changes      jsonb NOT NULL,
    ADD COLUMN large_values jsonb NOT NULL;

CREATE TABLE read_models.audit_values (
    hash  text PRIMARY KEY,
    value jsonb NOT NULL
);

CREATE TABLE read_models.audit_states (
    key   text PRIMARY KEY,
    state jsonb NOT NULL
);

UPDATE projection_checkpoints
SET transaction_id = 0, global_position = 0, updated_at = now(),
    failing_since = NULL, failed_attempts = 0, failed_position = NULL, last_error = NULL
WHERE name = 'audit';
