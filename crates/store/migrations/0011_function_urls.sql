-- Function URLs (Lambda's FunctionUrlConfig): at most one per function and qualifier (the
-- unqualified function, '' here, or an alias), each with its own id, the host name's first label.
-- Portable SQL only (see 0001).
--
-- A URL references its function ON DELETE CASCADE; an alias's goes with the alias in the
-- transaction deleting it (`function_urls::delete_qualifier`).

CREATE TABLE function_urls (
    account_id     TEXT NOT NULL,
    function_name  TEXT NOT NULL,
    -- '' for the unqualified function, else an alias name.
    qualifier      TEXT NOT NULL,
    -- 32 lowercase letters and digits, unique across accounts: the URL's host is
    -- <url_id>.lambda-url.<region>.<domain>.
    url_id         TEXT NOT NULL UNIQUE,
    -- NONE or AWS_IAM.
    auth_type      TEXT NOT NULL CHECK (auth_type IN ('NONE', 'AWS_IAM')),
    -- BUFFERED or RESPONSE_STREAM.
    invoke_mode    TEXT NOT NULL CHECK (invoke_mode IN ('BUFFERED', 'RESPONSE_STREAM')),
    -- The Cors settings as JSON (`function_urls::Cors`), NULL when none.
    cors           TEXT,
    -- Epoch milliseconds.
    created        BIGINT NOT NULL,
    last_modified  BIGINT NOT NULL,
    PRIMARY KEY (account_id, function_name, qualifier),
    FOREIGN KEY (account_id, function_name) REFERENCES functions (account_id, name)
        ON DELETE CASCADE
);
