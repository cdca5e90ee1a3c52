-- Published function versions and aliases. Portable SQL only (see 0001).
--
-- A published version is an immutable snapshot of its function's settings and code, taken from
-- `$LATEST` by PublishVersion: no statement ever updates a row of `function_versions`. Its code
-- package stays in the blob store while a version names it (the collector reads this table
-- too). Versions and aliases reference their function with ON DELETE CASCADE: deleting a
-- function removes them in the same statement.

-- The number the function's next published version gets: one more than every number it has
-- used, so a deleted version's number is never given again (as in Lambda). A function deleted
-- and created again starts at 1.
ALTER TABLE functions ADD COLUMN next_version BIGINT NOT NULL DEFAULT 1;

CREATE TABLE function_versions (
    account_id          TEXT NOT NULL,
    function_name       TEXT NOT NULL,
    version             BIGINT NOT NULL,
    runtime             TEXT,
    role                TEXT NOT NULL,
    handler             TEXT,
    -- The version's own description (PublishVersion's Description, or the function's).
    description         TEXT NOT NULL,
    timeout_s           BIGINT NOT NULL,
    memory_mb           BIGINT NOT NULL,
    ephemeral_mb        BIGINT NOT NULL,
    environment         TEXT NOT NULL,
    architectures       TEXT NOT NULL,
    package_type        TEXT NOT NULL,
    code_sha256         TEXT NOT NULL,
    code_size           BIGINT NOT NULL,
    -- The version's own revision, fixed at publish: the revision its sizing measurements carry.
    revision_id         TEXT NOT NULL,
    -- The revision of `$LATEST` the version was published from: a publish that finds `$LATEST`
    -- still at this revision publishes nothing and answers this version.
    source_revision_id  TEXT NOT NULL,
    last_modified       TEXT NOT NULL,
    PRIMARY KEY (account_id, function_name, version),
    FOREIGN KEY (account_id, function_name) REFERENCES functions (account_id, name)
        ON DELETE CASCADE
);

CREATE INDEX function_versions_by_code ON function_versions (code_sha256);

CREATE TABLE function_aliases (
    account_id        TEXT NOT NULL,
    function_name     TEXT NOT NULL,
    name              TEXT NOT NULL,
    -- `$LATEST` or a published version's number, as text.
    function_version  TEXT NOT NULL,
    description       TEXT NOT NULL,
    -- JSON object: an additional version's number -> the share of invocations it gets.
    routing           TEXT NOT NULL,
    revision_id       TEXT NOT NULL,
    PRIMARY KEY (account_id, function_name, name),
    FOREIGN KEY (account_id, function_name) REFERENCES functions (account_id, name)
        ON DELETE CASCADE
);

-- The version an `Event` invocation runs: `$LATEST`, or the published version it named (or its
-- alias chose when it was queued); NULL: the version its qualifier (0008) names when it runs.
ALTER TABLE event_invocations ADD COLUMN function_version TEXT;
