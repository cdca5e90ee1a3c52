-- Several servers sharing one store (issue 20): leases on claimed Event invocations, and which
-- server a session credential's row is of. Portable SQL only (see 0001).
--
-- A claim names the server that made it (`claimed_by`: the id of its data dir, kept in the data
-- dir's `host-id`) and lasts until `lease_expires_at` (epoch milliseconds: the function's
-- timeout and a margin after the claim). A claim whose lease has run out is claimed again by any
-- server, so an event claimed by a server that died runs elsewhere. At start a server releases
-- only its own claims (and those of before this migration, NULL here): another server's are in
-- flight.
ALTER TABLE event_invocations ADD COLUMN claimed_by TEXT;
ALTER TABLE event_invocations ADD COLUMN lease_expires_at BIGINT;

-- The server (its data dir's `host-id`) whose execution environment a session credential's row
-- mirrors: a server's start and stop delete its own rows (and those of before this migration,
-- NULL here), not those of the other servers' environments, which are in force.
ALTER TABLE session_credentials ADD COLUMN host_id TEXT;
