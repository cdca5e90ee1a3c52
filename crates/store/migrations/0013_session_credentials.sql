-- Session credentials: the temporary keys each execution environment (container) gets as
-- AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN. Portable SQL only (see 0001).
--
-- A row lives exactly as long as its environment: deleted when the environment ends, and every
-- row is deleted when a server starts (environments do not survive a restart). The secret is
-- kept as the account keys' is (SigV4 needs it to check a signature); the token only as its
-- sha256, since verification only compares it. No foreign keys: a row is written after its
-- environment's credential is already in force (`session_credentials.rs`), and must not fail
-- because its function was deleted meanwhile; deleting the function revokes it.

CREATE TABLE session_credentials (
    -- ASIA and 16 characters of AWS's base-32 alphabet.
    access_key_id         TEXT PRIMARY KEY,
    secret_access_key     TEXT NOT NULL,
    -- Lowercase hex sha256 of the session token.
    session_token_sha256  TEXT NOT NULL,
    account_id            TEXT NOT NULL,
    function_name         TEXT NOT NULL,
    function_version      TEXT NOT NULL,
    vm_id                 TEXT NOT NULL,
    -- The container's id.
    environment_id        TEXT NOT NULL,
    created_at            TEXT NOT NULL,
    expires_at            TEXT NOT NULL
);

CREATE INDEX session_credentials_by_environment ON session_credentials (environment_id);
