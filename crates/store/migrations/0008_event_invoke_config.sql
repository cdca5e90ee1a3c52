-- Event invoke config (Lambda's FunctionEventInvokeConfig): per function and qualifier, how the
-- Event queue retries and ages its invocations and where it sends their outcome. Portable SQL
-- only (see 0001).
--
-- A config references its function ON DELETE CASCADE, so deleting a function deletes its
-- configs in the same statement. A config of a published version or an alias is deleted with
-- it by the store's delete of that version or alias (`event_config::delete_qualifier`).

CREATE TABLE event_invoke_configs (
    account_id              TEXT NOT NULL,
    function_name           TEXT NOT NULL,
    -- `$LATEST`, a version number or an alias name.
    qualifier               TEXT NOT NULL,
    -- NULL: not set (the server's default applies: 2 retries, --event-max-age).
    maximum_retry_attempts  BIGINT,
    maximum_event_age_s     BIGINT,
    -- Destination ARNs (Lambda functions of the same account), NULL when none.
    on_success              TEXT,
    on_failure              TEXT,
    -- Epoch milliseconds.
    last_modified           BIGINT NOT NULL,
    PRIMARY KEY (account_id, function_name, qualifier),
    FOREIGN KEY (account_id, function_name) REFERENCES functions (account_id, name)
        ON DELETE CASCADE
);

-- The qualifier an Event invocation named (its config is that qualifier's), and how many
-- destination invocations led to it (a chain of destinations stops at a bound, as Lambda's
-- recursive loop detection stops one).
ALTER TABLE event_invocations ADD COLUMN qualifier TEXT NOT NULL DEFAULT '$LATEST';
ALTER TABLE event_invocations ADD COLUMN chain_depth BIGINT NOT NULL DEFAULT 0;
