-- Lambda layers: per account, by name; each layer's versions are numbered from 1 and never
-- reused (`latest_version` remembers the last number given, even once its version is deleted).
-- A version is immutable: its zip is a content-addressed blob like a function's code, kept while
-- a layer version or a function (its `layers` list) names it. Portable SQL only.

CREATE TABLE layers (
    account_id      TEXT NOT NULL REFERENCES accounts (account_id),
    layer_name      TEXT NOT NULL,
    latest_version  BIGINT NOT NULL,
    PRIMARY KEY (account_id, layer_name)
);

CREATE TABLE layer_versions (
    account_id                TEXT NOT NULL,
    layer_name                TEXT NOT NULL,
    version                   BIGINT NOT NULL,
    description               TEXT NOT NULL,
    -- NULL when none was given.
    license_info              TEXT,
    -- JSON arrays of strings.
    compatible_runtimes       TEXT NOT NULL,
    compatible_architectures  TEXT NOT NULL,
    code_sha256               TEXT NOT NULL,
    code_size                 BIGINT NOT NULL,
    unzipped_size             BIGINT NOT NULL,
    created_date              TEXT NOT NULL,
    -- Changes with every change of the version's permissions (the policy's RevisionId).
    policy_revision_id        TEXT NOT NULL,
    PRIMARY KEY (account_id, layer_name, version),
    FOREIGN KEY (account_id, layer_name) REFERENCES layers (account_id, layer_name)
);

CREATE INDEX layer_versions_by_code ON layer_versions (code_sha256);

-- Statements of a layer version's policy: who else may use it (`lambda:GetLayerVersion`).
CREATE TABLE layer_version_permissions (
    account_id    TEXT NOT NULL,
    layer_name    TEXT NOT NULL,
    version       BIGINT NOT NULL,
    statement_id  TEXT NOT NULL,
    action        TEXT NOT NULL,
    -- An account id, or '*' for every account.
    principal     TEXT NOT NULL,
    PRIMARY KEY (account_id, layer_name, version, statement_id),
    FOREIGN KEY (account_id, layer_name, version)
        REFERENCES layer_versions (account_id, layer_name, version) ON DELETE CASCADE
);

-- A function's layers, in order: a JSON array of {arn, sha256, code_size, unzipped_size}; a
-- published version keeps those it was published with.
ALTER TABLE functions ADD COLUMN layers TEXT NOT NULL DEFAULT '[]';
ALTER TABLE function_versions ADD COLUMN layers TEXT NOT NULL DEFAULT '[]';
