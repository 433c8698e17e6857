-- A projection that cannot apply an event stops at it (its checkpoint stays just before it) and says
-- so here, where `projector status`, the projector's /readyz and /metrics, and query-api's consistency
-- waits look. The runner sets these after a failed attempt and clears them with the next batch it
-- applies (see projector::worker).
ALTER TABLE projection_checkpoints
    ADD COLUMN failing_since   timestamptz,
    -- Consecutive failed attempts at the same place.
    ADD COLUMN failed_attempts integer NOT NULL DEFAULT 0,
    -- The global position of the event it could not apply, when the runner has isolated it.
    ADD COLUMN failed_position bigint,
    ADD COLUMN last_error      text;
