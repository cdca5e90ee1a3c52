-- Event leases renewed and owned (issue 20 part 2). Portable SQL only (see 0001).
--
-- Each claim of an Event invocation gets a token of its own (`claim_token`, a random UUID),
-- which the claiming server keeps with the run: it renews the lease (`lease_expires_at`) of the
-- claims it still runs by their tokens, and settles a run (deletes or puts back the row, with the
-- run's log) only while the row still holds its token. A server whose lease ran out, and whose
-- event another server (or this one, again) claimed since, then neither stores a second outcome
-- nor queues a second destination invocation. NULL: unclaimed, or claimed before this migration
-- (such a claim is released at its server's start, or taken again once its lease runs out).
ALTER TABLE event_invocations ADD COLUMN claim_token TEXT;
CREATE INDEX event_invocations_claim_token ON event_invocations (claim_token);
