-- A function's sizing mode may be unset (NULL): it then follows the server's default mode, even
-- when its thresholds were set. The CHECK constraint changes, so the table is rebuilt.
CREATE TABLE function_sizing_v4 (
    account_id     TEXT NOT NULL,
    function_name  TEXT NOT NULL,
    -- NULL: the server's default mode.
    mode           TEXT CHECK (mode IS NULL OR mode IN ('off', 'recommend', 'auto')),
    -- JSON object of threshold overrides.
    overrides      TEXT NOT NULL,
    -- Epoch milliseconds.
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (account_id, function_name),
    FOREIGN KEY (account_id, function_name) REFERENCES functions (account_id, name)
        ON DELETE CASCADE
);

INSERT INTO function_sizing_v4 (account_id, function_name, mode, overrides, updated_at)
    SELECT account_id, function_name, mode, overrides, updated_at FROM function_sizing;

DROP TABLE function_sizing;

ALTER TABLE function_sizing_v4 RENAME TO function_sizing;
