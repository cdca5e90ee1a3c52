-- Automatic resource sizing: what each execution measured, each function's sizing settings, and
-- the history of sizing decisions. Portable SQL only (see 0001): no AUTOINCREMENT, so rows are
-- numbered by `seq`, one more than the function's largest, assigned by the store inside its
-- write transaction (as `invocation_logs` does); DOUBLE PRECISION is REAL on SQLite.
--
-- Every table references its function with ON DELETE CASCADE: deleting a function removes its
-- measurements, settings and decisions in the same statement, and a row can never outlive (or
-- be written for) a function that does not exist. Functions belong to accounts, so an account's
-- rows go with its functions.

CREATE TABLE executions (
    account_id     TEXT NOT NULL,
    function_name  TEXT NOT NULL,
    -- Increases with every execution recorded for the function; breaks ties of `started_at`.
    seq            BIGINT NOT NULL,
    -- The function version's revision the execution ran.
    revision_id    TEXT NOT NULL,
    -- The memory the request named (the function's MemorySize), and the container's actual one.
    requested_mb   BIGINT NOT NULL,
    memory_mb      BIGINT NOT NULL,
    peak_mb        BIGINT NOT NULL,
    cpu_ms         DOUBLE PRECISION NOT NULL,
    throttled_ms   DOUBLE PRECISION NOT NULL,
    duration_ms    DOUBLE PRECISION NOT NULL,
    -- Set only for the execution that started its container.
    init_ms        DOUBLE PRECISION,
    outcome        TEXT NOT NULL CHECK (outcome IN ('ok', 'error', 'timeout', 'oom')),
    -- Epoch milliseconds when the execution started.
    started_at     BIGINT NOT NULL,
    PRIMARY KEY (account_id, function_name, seq),
    FOREIGN KEY (account_id, function_name) REFERENCES functions (account_id, name)
        ON DELETE CASCADE
);

-- The newest K executions of (account, function, revision, requested amount).
CREATE INDEX executions_newest
    ON executions (account_id, function_name, revision_id, requested_mb, started_at, seq);

CREATE TABLE function_sizing (
    account_id     TEXT NOT NULL,
    function_name  TEXT NOT NULL,
    mode           TEXT NOT NULL CHECK (mode IN ('off', 'recommend', 'auto')),
    -- JSON object of threshold overrides.
    overrides      TEXT NOT NULL,
    -- Epoch milliseconds.
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (account_id, function_name),
    FOREIGN KEY (account_id, function_name) REFERENCES functions (account_id, name)
        ON DELETE CASCADE
);

CREATE TABLE sizing_events (
    account_id     TEXT NOT NULL,
    function_name  TEXT NOT NULL,
    -- Increases with every decision about the function.
    seq            BIGINT NOT NULL,
    revision_id    TEXT NOT NULL,
    requested_mb   BIGINT NOT NULL,
    from_mb        BIGINT NOT NULL,
    to_mb          BIGINT NOT NULL,
    direction      TEXT NOT NULL CHECK (direction IN ('up', 'down')),
    -- Which rule fired.
    condition      TEXT NOT NULL,
    -- JSON: the measurements behind the decision.
    evidence       TEXT NOT NULL,
    -- FALSE when the decision was only recommended.
    applied        BOOLEAN NOT NULL,
    -- Epoch milliseconds.
    at             BIGINT NOT NULL,
    PRIMARY KEY (account_id, function_name, seq),
    FOREIGN KEY (account_id, function_name) REFERENCES functions (account_id, name)
        ON DELETE CASCADE
);
