-- Concurrency limits counted across the servers sharing one store (issue 20 part 2). Portable
-- SQL only (see 0001).
--
-- A row is a block of concurrency slots one server (`host_id`: its data dir's `host-id`) holds
-- in one scope of an account: a function's reserved concurrency (`function_name` is the
-- function's name) or the account's unreserved pool (`function_name` is ''). The server runs at
-- most `slots` executions of that scope at once, and renews its rows' `expires_at` (epoch
-- milliseconds) while it lives; rows whose `expires_at` has passed (their server died, or lost
-- the store) count for nothing and are deleted by the next take. Slots are taken under the
-- store's write lock, so the slots of all the rows of a scope never exceed its limit.
CREATE TABLE concurrency_leases (
    host_id       TEXT NOT NULL,
    account_id    TEXT NOT NULL,
    function_name TEXT NOT NULL,
    slots         BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    PRIMARY KEY (host_id, account_id, function_name)
);
CREATE INDEX concurrency_leases_scope ON concurrency_leases (account_id, function_name);
