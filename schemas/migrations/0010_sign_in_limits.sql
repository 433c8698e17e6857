-- The login cap: each sign-in attempt records the client address it came from, so that
-- /api/auth/login can count the live attempts of one address (and of all) before adding another.

ALTER TABLE sign_in_attempts ADD COLUMN client_ip text;

CREATE INDEX sign_in_attempts_client_ip ON sign_in_attempts (client_ip, created_at);
