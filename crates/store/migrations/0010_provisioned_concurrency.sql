-- Provisioned concurrency: how many initialized execution environments each qualifier (a
-- published version or an alias) of a function asks for. Portable SQL only (see 0001).
--
-- Only the request is durable; what is ready is the executor's, counted live, and rebuilt from
-- these rows when the server starts. Rows go with their function (ON DELETE CASCADE).

CREATE TABLE provisioned_concurrency (
    account_id     TEXT NOT NULL,
    function_name  TEXT NOT NULL,
    -- A version number or an alias name (never $LATEST).
    qualifier      TEXT NOT NULL,
    requested      BIGINT NOT NULL CHECK (requested > 0),
    -- RFC 3339, UTC, to the millisecond.
    last_modified  TEXT NOT NULL,
    PRIMARY KEY (account_id, function_name, qualifier),
    FOREIGN KEY (account_id, function_name) REFERENCES functions (account_id, name)
        ON DELETE CASCADE
);
