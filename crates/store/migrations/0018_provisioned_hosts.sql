-- Provisioned concurrency across the servers sharing one store (issue 20 part 2). Portable SQL
-- only (see 0001).
--
-- `hosts`: the servers alive now, each renewing its row's `expires_at` (epoch milliseconds)
-- every few seconds; a row past it is a server gone (deleted by the next renewal of any server).
-- A qualifier's provisioned environments are split among the live servers (each makes its share,
-- so the cluster keeps the number asked for, not that number per server).
CREATE TABLE hosts (
    host_id    TEXT NOT NULL PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

-- `provisioned_hosts`: what each live server has of each qualifier's provisioned concurrency:
-- its share of the requested number, how many of them are ready, and its status (`IN_PROGRESS`,
-- `READY`, `FAILED` with `reason`). The API answers the sums over live servers. Rows go with
-- their server (replaced by its every report, deleted when it stops or its `hosts` row expires).
CREATE TABLE provisioned_hosts (
    host_id       TEXT NOT NULL,
    account_id    TEXT NOT NULL,
    function_name TEXT NOT NULL,
    qualifier     TEXT NOT NULL,
    share         BIGINT NOT NULL,
    ready         BIGINT NOT NULL,
    status        TEXT NOT NULL,
    reason        TEXT,
    expires_at    BIGINT NOT NULL,
    PRIMARY KEY (host_id, account_id, function_name, qualifier)
);
CREATE INDEX provisioned_hosts_qualifier ON provisioned_hosts (account_id, function_name, qualifier);
