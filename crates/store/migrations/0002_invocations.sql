-- Asynchronous invocations waiting to run, and the logs of past invocations.
-- Portable SQL only (see 0001): binary payloads are stored base64 in TEXT.

CREATE TABLE event_invocations (
    event_id         TEXT PRIMARY KEY,
    account_id       TEXT NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    function_name    TEXT NOT NULL,
    payload          TEXT NOT NULL,
    -- Attempts that ended in a function error so far (Lambda retries twice).
    attempts         BIGINT NOT NULL,
    -- Epoch milliseconds before which the event is not run again.
    next_attempt_at  BIGINT NOT NULL,
    -- Set while a worker runs it; cleared at server start, when no worker can be running.
    claimed          BOOLEAN NOT NULL,
    created_at       BIGINT NOT NULL
);

CREATE INDEX event_invocations_due ON event_invocations (claimed, next_attempt_at);

CREATE TABLE invocation_logs (
    account_id     TEXT NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    function_name  TEXT NOT NULL,
    -- Increases with every invocation of the function; the cursor of `ember logs --follow`.
    seq            BIGINT NOT NULL,
    request_id     TEXT NOT NULL,
    -- Epoch milliseconds when the invocation started.
    started_at     BIGINT NOT NULL,
    log            TEXT NOT NULL,
    PRIMARY KEY (account_id, function_name, seq)
);
