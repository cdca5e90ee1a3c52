-- Resource policies (AddPermission, RemovePermission, GetPolicy): one policy per function and
-- qualifier, made of statements. Portable SQL only (see 0001).
--
-- `qualifier` is '' for the unqualified function (whose policy also governs `$LATEST`), else a
-- version number or an alias name. A policy row exists while it has statements: the store
-- deletes it with its last statement, so GetPolicy's "no policy" is simply "no row".
-- `revision_id` is a fresh UUID at every add and remove (the policy's `RevisionId`).
--
-- Both tables reference their function ON DELETE CASCADE: deleting a function deletes its
-- policies. A version's or alias's policy is deleted by the store's `delete_policy`, which the
-- deletion of that version or alias calls in its own transaction.

CREATE TABLE function_policies (
    account_id     TEXT NOT NULL,
    function_name  TEXT NOT NULL,
    qualifier      TEXT NOT NULL,
    revision_id    TEXT NOT NULL,
    -- Numbers the policy's statements in the order they were added.
    next_seq       BIGINT NOT NULL,
    PRIMARY KEY (account_id, function_name, qualifier),
    FOREIGN KEY (account_id, function_name) REFERENCES functions (account_id, name)
        ON DELETE CASCADE
);

CREATE TABLE policy_statements (
    account_id              TEXT NOT NULL,
    function_name           TEXT NOT NULL,
    qualifier               TEXT NOT NULL,
    -- The Sid: unique within its policy.
    statement_id            TEXT NOT NULL,
    seq                     BIGINT NOT NULL,
    action                  TEXT NOT NULL,
    -- As given: an account id, `arn:aws:iam::ACCOUNT:root`, `*` or a service principal.
    principal               TEXT NOT NULL,
    source_arn              TEXT,
    source_account          TEXT,
    principal_org_id        TEXT,
    event_source_token      TEXT,
    function_url_auth_type  TEXT,
    invoked_via_function_url BOOLEAN,
    PRIMARY KEY (account_id, function_name, qualifier, statement_id),
    FOREIGN KEY (account_id, function_name, qualifier)
        REFERENCES function_policies (account_id, function_name, qualifier) ON DELETE CASCADE
);
