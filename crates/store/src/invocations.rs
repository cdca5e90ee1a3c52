//! What the store keeps about invocations: the durable queue of asynchronous (`Event`)
//! invocations, and the log of every invocation.
//!
//! # The event queue
//!
//! An accepted `Event` invocation is a row before the caller hears 202, so a crash or restart
//! never loses it. A worker *claims* due rows (`claimed`), runs them, then *settles* them
//! ([`Store::settle_event`]): deletes them or puts them back with a later `next_attempt_at`, in
//! the same transaction as the run's log and execution record, so a run is settled with its log
//! or not at all. Only one server owns a data dir, so claims left by a server that died are
//! released at start ([`Store::release_event_claims`]): delivery is at least once (a run cut
//! short by the crash leaves no log, and the event runs again).
//!
//! # Logs
//!
//! Each invocation's log (START to REPORT) is one row, numbered per function by `seq`, which
//! readers use as a cursor. The server writes those of `RequestResponse` invocations in batches
//! (a crash may lose the last batch) and those of `Event` invocations with their settlement, and
//! keeps a bounded number per function ([`Store::prune_logs`]).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sqlx::Row;

use crate::{ExecutionRecord, Result, Store, StoreError};

/// How long a claim outlives its function's timeout: the time to place the run (a cold start,
/// a VM's boot) and to settle it. A server that has not settled an event by then is taken for
/// dead, and another one runs the event.
pub const LEASE_MARGIN_MS: i64 = 120_000;

/// How often the server running a claimed event renews its lease (`Store::renew_event_leases`):
/// each renewal makes the lease last at least [`LEASE_MARGIN_MS`] more, so a live server's
/// lease never runs out while it can reach the store, and a dead one's runs out at most
/// [`LEASE_MARGIN_MS`] after its last renewal (or the claim's own lease, if later).
pub const LEASE_RENEW_EVERY_MS: i64 = 30_000;

/// The timeout a lease assumes for an event whose function is gone: Lambda's longest.
const MAX_TIMEOUT_S: i64 = 900;

/// An `Event` invocation waiting in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    /// The invocation's request id, which the caller got with its 202; unique in the queue.
    pub event_id: String,
    /// The account that invoked, and owns, the function.
    pub account_id: String,
    /// The function's name (not its ARN).
    pub function_name: String,
    /// The version it runs, `$LATEST` or a published version's number, when chosen as it was
    /// queued (an alias's weighted pick); `None`: the version [`QueuedEvent::qualifier`] names
    /// when it runs (a destination's invocation).
    pub function_version: Option<String>,
    /// The invocation's payload, byte for byte as the caller sent it.
    pub payload: Vec<u8>,
    /// Attempts that ended in a function error so far.
    pub attempts: u32,
    /// Epoch milliseconds when the event was accepted.
    pub created_at_ms: i64,
    /// The qualifier it was invoked with (`$LATEST`, a version or an alias): its event invoke
    /// config is that qualifier's.
    pub qualifier: String,
    /// How many destination invocations led to it: 0 for an event a client queued, one more
    /// than its source's for an event queued for a destination.
    pub chain_depth: u32,
    /// This claim's token (a fresh UUID per claim): what renews its lease
    /// ([`Store::renew_event_leases`]) and settles it ([`Store::settle_event`]) while it is
    /// still this claim's. Empty for an event read without being claimed.
    pub claim: String,
}

/// What became of a settlement ([`Store::settle_event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Settled {
    /// Stored: the event left the queue or was put back, with what its run left.
    Stored,
    /// Nothing was written: the claim is no longer the event's (its lease ran out and the event
    /// was claimed again, by another server or this one, or settled since): the run's outcome is
    /// the other claim's to store.
    ClaimLost,
}

/// An `Event` invocation to queue (see [`Store::enqueue`]).
#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'a> {
    /// Its request id, unique in the queue.
    pub event_id: &'a str,
    /// The account that owns the function.
    pub account_id: &'a str,
    /// The function's name (not its ARN).
    pub function_name: &'a str,
    /// The qualifier it names: `$LATEST`, a version or an alias.
    pub qualifier: &'a str,
    /// See [`QueuedEvent::function_version`].
    pub function_version: Option<&'a str>,
    /// The payload, byte for byte.
    pub payload: &'a [u8],
    /// See [`QueuedEvent::chain_depth`].
    pub chain_depth: u32,
    /// When it is accepted (and due), in epoch milliseconds.
    pub now_ms: i64,
}

/// What becomes of a claimed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSettlement {
    /// It ran, or is given up on: it leaves the queue.
    Done,
    /// It runs again from `at_ms`, with `attempts` failed attempts counted.
    Retry {
        /// The event's [`QueuedEvent::attempts`] from now on: this run counted if it ended in
        /// a function error, not if it could not start.
        attempts: u32,
        /// When it is due again, in epoch milliseconds.
        at_ms: i64,
    },
}

/// What a run of a claimed event leaves, stored with its settlement.
#[derive(Debug, Clone, Copy)]
pub struct EventRun<'a> {
    /// The run's log, appended to the function's.
    pub log: &'a NewLog,
    /// The run's measurements, for sizing.
    pub execution: &'a ExecutionRecord,
    /// Executions kept per function version and requested amount (see
    /// [`Store::record_executions`]).
    pub keep_executions: u32,
}

/// One invocation's log, to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLog {
    /// The account that owns the function.
    pub account_id: String,
    /// The function's name: logs are kept per function, all versions together.
    pub function_name: String,
    /// The invocation's request id, as its caller saw it.
    pub request_id: String,
    /// Epoch milliseconds when the invocation started.
    pub started_at_ms: i64,
    /// The whole log, START to REPORT lines, as text.
    pub log: String,
}

/// One invocation's log, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Its number in the function's log, from 1, one more than the last stored: the cursor
    /// [`Store::logs`] takes as `after`. A function deleted and created again starts again at 1.
    pub seq: i64,
    /// The invocation's request id.
    pub request_id: String,
    /// Epoch milliseconds when the invocation started.
    pub started_at_ms: i64,
    /// The whole log, START to REPORT lines, as text.
    pub log: String,
}

impl Store {
    // ---- the event queue --------------------------------------------------------------------

    /// Queues an `Event` invocation under `event_id` (the invocation's request id), due at
    /// `now_ms`. Durable when it returns: the API answers 202 only after, so an accepted event
    /// survives a crash. Called by the executor's `enqueue`.
    pub async fn enqueue_event(
        &self,
        event_id: &str,
        account_id: &str,
        function_name: &str,
        payload: &[u8],
        now_ms: i64,
    ) -> Result<()> {
        self.enqueue(&NewEvent {
            event_id,
            account_id,
            function_name,
            qualifier: crate::LATEST,
            function_version: Some(crate::LATEST),
            payload,
            chain_depth: 0,
            now_ms,
        })
        .await
    }

    /// Queues an `Event` invocation of any qualifier and chain depth, due at once. Durable when
    /// it returns, as [`Store::enqueue_event`].
    pub async fn enqueue(&self, event: &NewEvent<'_>) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        insert_event(&mut conn, event).await
    }

    /// Releases this data dir's claims (and claims of no server, made before leases existed),
    /// returning how many there were: called at start, when no worker of this data dir can be
    /// running. The events a crash cut short run again (at least once). Claims of other servers
    /// sharing the store stay: they are in flight, or run out with their lease.
    pub async fn release_event_claims(&self) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE event_invocations SET claimed = FALSE, claimed_by = NULL, \
             lease_expires_at = NULL, claim_token = NULL \
             WHERE claimed AND (claimed_by IS NULL OR claimed_by = $1)",
        )
        .bind(&*self.host_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Claims up to `limit` events due at `now_ms`, oldest first: unclaimed ones, and claimed
    /// ones whose lease has run out (their server died, or lost the store). Reading and marking
    /// are one write transaction (`BEGIN IMMEDIATE`, or the write lock on PostgreSQL): two
    /// workers, on one server or several, never claim one event. A claim lasts until settled,
    /// rescheduled, finished or released at this server's next start, and its lease until the
    /// function's timeout and [`LEASE_MARGIN_MS`] have passed.
    /// Fails with [`StoreError::Corrupt`] for a stored payload that is not base64.
    pub async fn claim_due_events(&self, now_ms: i64, limit: u32) -> Result<Vec<QueuedEvent>> {
        let mut tx = self.write_transaction().await?;
        let rows = sqlx::query(
            "SELECT e.event_id, e.account_id, e.function_name, e.function_version, e.payload, \
             e.attempts, e.created_at, e.qualifier, e.chain_depth, \
             COALESCE(f.timeout_s, $3) AS timeout_s \
             FROM event_invocations e LEFT JOIN functions f \
               ON f.account_id = e.account_id AND f.name = e.function_name \
             WHERE (NOT e.claimed AND e.next_attempt_at <= $1) \
                OR (e.claimed AND e.lease_expires_at <= $1) \
             ORDER BY e.next_attempt_at, e.created_at LIMIT $2",
        )
        .bind(now_ms)
        .bind(i64::from(limit))
        .bind(MAX_TIMEOUT_S)
        .fetch_all(&mut *tx)
        .await?;
        let mut events = Vec::with_capacity(rows.len());
        let mut leases = Vec::with_capacity(rows.len());
        for row in &rows {
            let timeout_s: i64 = row.try_get("timeout_s")?;
            leases.push(
                now_ms.saturating_add(timeout_s.clamp(0, MAX_TIMEOUT_S) * 1000 + LEASE_MARGIN_MS),
            );
            let payload: String = row.try_get("payload")?;
            let attempts: i64 = row.try_get("attempts")?;
            let depth: i64 = row.try_get("chain_depth")?;
            events.push(QueuedEvent {
                event_id: row.try_get("event_id")?,
                account_id: row.try_get("account_id")?,
                function_name: row.try_get("function_name")?,
                function_version: row.try_get("function_version")?,
                payload: STANDARD
                    .decode(payload)
                    .map_err(|e| StoreError::Corrupt(format!("event payload: {e}")))?,
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                created_at_ms: row.try_get("created_at")?,
                qualifier: row.try_get("qualifier")?,
                chain_depth: u32::try_from(depth).unwrap_or(u32::MAX),
                claim: uuid::Uuid::new_v4().to_string(),
            });
        }
        for (event, lease) in events.iter().zip(leases) {
            sqlx::query(
                "UPDATE event_invocations SET claimed = TRUE, claimed_by = $2, \
                 lease_expires_at = $3, claim_token = $4 WHERE event_id = $1",
            )
            .bind(&event.event_id)
            .bind(&*self.host_id)
            .bind(lease)
            .bind(&event.claim)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(events)
    }

    /// Renews the leases of claims this server still runs (`claims`: their
    /// [`QueuedEvent::claim`] tokens), in one statement: each lasts at least until `now_ms` +
    /// [`LEASE_MARGIN_MS`] (a lease already longer is kept). Returns the claims that are no longer
    /// held (their lease ran out and the event was claimed again, or it was settled): their runs'
    /// outcomes will not be stored ([`Settled::ClaimLost`]).
    pub async fn renew_event_leases(&self, claims: &[String], now_ms: i64) -> Result<Vec<String>> {
        let mut lost = Vec::new();
        let lease = now_ms.saturating_add(LEASE_MARGIN_MS);
        for chunk in claims.chunks(crate::ROWS_PER_INSERT) {
            let placeholders: Vec<String> =
                (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            // `RETURNING`: SQLite has it since 3.35 (sqlx bundles a newer one), PostgreSQL always.
            let statement = format!(
                "UPDATE event_invocations SET lease_expires_at = \
                 CASE WHEN lease_expires_at IS NULL OR lease_expires_at < $1 THEN $1 \
                 ELSE lease_expires_at END \
                 WHERE claimed AND claim_token IN ({}) RETURNING claim_token",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&statement).bind(lease);
            for claim in chunk {
                query = query.bind(claim);
            }
            let rows = query.fetch_all(&self.pool).await?;
            let held: std::collections::HashSet<String> = rows
                .iter()
                .map(|r| r.try_get::<String, _>(0))
                .collect::<std::result::Result<_, _>>()?;
            lost.extend(chunk.iter().filter(|c| !held.contains(*c)).cloned());
        }
        Ok(lost)
    }

    /// Puts a claimed event back, to run again at `next_attempt_at_ms` with `attempts` counted.
    /// One statement; an unknown id changes nothing. Prefer [`Store::settle_event`] when the
    /// run left a log.
    pub async fn reschedule_event(
        &self,
        event_id: &str,
        attempts: u32,
        next_attempt_at_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE event_invocations SET claimed = FALSE, attempts = $2, next_attempt_at = $3 \
             WHERE event_id = $1",
        )
        .bind(event_id)
        .bind(i64::from(attempts))
        .bind(next_attempt_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Settles a claimed event, named by its claim (`claim`: [`QueuedEvent::claim`]): it leaves
    /// the queue ([`EventSettlement::Done`]) or is put back ([`EventSettlement::Retry`]), in one
    /// transaction with what its run left (`run`), so an event that ran is never marked done or
    /// retried without its log and execution record. The transaction first checks that the
    /// event still holds this claim; if not ([`Settled::ClaimLost`]: the lease ran out and the
    /// event was claimed again), it writes nothing, so a run is stored once however many
    /// servers ran it. A record with a measurement that is not a finite number is left out (with
    /// a warning) rather than keeping the event from settling.
    pub async fn settle_event(
        &self,
        claim: &str,
        settlement: EventSettlement,
        run: Option<EventRun<'_>>,
    ) -> Result<Settled> {
        self.settle_event_then(claim, settlement, run, None).await
    }

    /// [`Store::settle_event`], queueing `then` (the invocation of a destination, with the
    /// record of the event's outcome) in the same transaction: an event settled with a
    /// destination never leaves the queue without its destination's invocation in it.
    pub async fn settle_event_then(
        &self,
        claim: &str,
        settlement: EventSettlement,
        run: Option<EventRun<'_>>,
        then: Option<&NewEvent<'_>>,
    ) -> Result<Settled> {
        let mut tx = self.write_transaction().await?;
        // Under the write lock: no claim can change between this read and the commit.
        let held = sqlx::query(
            "SELECT event_id FROM event_invocations WHERE claimed AND claim_token = $1",
        )
        .bind(claim)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(held) = held else {
            return Ok(Settled::ClaimLost);
        };
        let event_id: String = held.try_get(0)?;
        let event_id = event_id.as_str();
        if let Some(run) = run {
            insert_logs(&mut tx, std::slice::from_ref(run.log)).await?;
            match crate::sizing::check_execution(run.execution) {
                Ok(()) => {
                    crate::sizing::insert_executions(
                        &mut tx,
                        std::slice::from_ref(run.execution),
                        run.keep_executions,
                    )
                    .await?
                }
                Err(err) => tracing::warn!(error = %err, event_id, "execution record left out"),
            }
        }
        match settlement {
            EventSettlement::Done => {
                sqlx::query("DELETE FROM event_invocations WHERE event_id = $1")
                    .bind(event_id)
                    .execute(&mut *tx)
                    .await?;
            }
            EventSettlement::Retry { attempts, at_ms } => {
                sqlx::query(
                    "UPDATE event_invocations SET claimed = FALSE, attempts = $2, \
                     next_attempt_at = $3, claimed_by = NULL, lease_expires_at = NULL, \
                     claim_token = NULL WHERE event_id = $1",
                )
                .bind(event_id)
                .bind(i64::from(attempts))
                .bind(at_ms)
                .execute(&mut *tx)
                .await?;
            }
        }
        if let Some(then) = then {
            insert_event(&mut tx, then).await?;
        }
        tx.commit().await?;
        Ok(Settled::Stored)
    }

    /// Removes an event that has run (or has been given up on). One statement; an unknown id
    /// changes nothing. Prefer [`Store::settle_event`] when the run left a log.
    pub async fn finish_event(&self, event_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM event_invocations WHERE event_id = $1")
            .bind(event_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// When the earliest unclaimed event is due, or the earliest lease runs out (epoch ms), if
    /// any is queued: how long the event worker may sleep.
    pub async fn next_event_due(&self) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT MIN(CASE WHEN claimed THEN lease_expires_at ELSE next_attempt_at END) AS due \
             FROM event_invocations WHERE NOT claimed OR lease_expires_at IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<Option<i64>, _>("due")?)
    }

    /// Events queued, claimed or not: the queue's depth.
    pub async fn queued_events(&self) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM event_invocations")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0))
    }

    // ---- logs -------------------------------------------------------------------------------

    /// Stores a batch of invocation logs in one transaction, numbering each after the last of
    /// its function: all of the batch is stored, or none. Logs of a function that does not
    /// exist are stored all the same (their account must exist), and go when a function of
    /// that name is deleted.
    pub async fn append_logs(&self, logs: &[NewLog]) -> Result<()> {
        if logs.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_transaction().await?;
        insert_logs(&mut tx, logs).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A function's logs with `seq` greater than `after`, oldest first, at most `limit`. Without
    /// `after`, the last `limit` logs. A reader follows the log by passing the last `seq` it
    /// saw; it misses what [`Store::prune_logs`] removed before it read.
    pub async fn logs(
        &self,
        account_id: &str,
        function_name: &str,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<LogRecord>> {
        let rows = match after {
            Some(after) => {
                sqlx::query(
                    "SELECT seq, request_id, started_at, log FROM invocation_logs \
                     WHERE account_id = $1 AND function_name = $2 AND seq > $3 \
                     ORDER BY seq LIMIT $4",
                )
                .bind(account_id)
                .bind(function_name)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                let mut rows = sqlx::query(
                    "SELECT seq, request_id, started_at, log FROM invocation_logs \
                     WHERE account_id = $1 AND function_name = $2 ORDER BY seq DESC LIMIT $3",
                )
                .bind(account_id)
                .bind(function_name)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.reverse();
                rows
            }
        };
        rows.iter()
            .map(|row| {
                Ok(LogRecord {
                    seq: row.try_get("seq")?,
                    request_id: row.try_get("request_id")?,
                    started_at_ms: row.try_get("started_at")?,
                    log: row.try_get("log")?,
                })
            })
            .collect()
    }

    /// Keeps the newest `keep` logs of every function and deletes the rest, in one statement;
    /// returns how many it deleted. Run periodically by the executor.
    pub async fn prune_logs(&self, keep: u32) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM invocation_logs WHERE seq <= ( \
                 SELECT MAX(newer.seq) - $1 FROM invocation_logs AS newer \
                 WHERE newer.account_id = invocation_logs.account_id \
                   AND newer.function_name = invocation_logs.function_name)",
        )
        .bind(i64::from(keep))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

/// Inserts a queued event in the caller's connection or transaction.
async fn insert_event(conn: &mut sqlx::AnyConnection, event: &NewEvent<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO event_invocations (event_id, account_id, function_name, payload, \
         attempts, next_attempt_at, claimed, created_at, qualifier, chain_depth, \
         function_version) VALUES ($1, $2, $3, $4, 0, $5, FALSE, $5, $6, $7, $8)",
    )
    .bind(event.event_id)
    .bind(event.account_id)
    .bind(event.function_name)
    .bind(STANDARD.encode(event.payload))
    .bind(event.now_ms)
    .bind(event.qualifier)
    .bind(i64::from(event.chain_depth))
    .bind(event.function_version)
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts logs in the caller's write transaction, each numbered after the last of its function.
async fn insert_logs(tx: &mut sqlx::AnyConnection, logs: &[NewLog]) -> Result<()> {
    // The last seq of each function in the batch, read once.
    let mut last: std::collections::HashMap<(&str, &str), i64> = Default::default();
    let mut rows = Vec::with_capacity(logs.len());
    for entry in logs {
        let key = (entry.account_id.as_str(), entry.function_name.as_str());
        let seq = match last.get(&key) {
            Some(seq) => seq + 1,
            None => {
                let row = sqlx::query(
                    "SELECT COALESCE(MAX(seq), 0) AS last FROM invocation_logs \
                         WHERE account_id = $1 AND function_name = $2",
                )
                .bind(key.0)
                .bind(key.1)
                .fetch_one(&mut *tx)
                .await?;
                row.try_get::<i64, _>("last")? + 1
            }
        };
        last.insert(key, seq);
        rows.push((seq, entry));
    }
    crate::insert_rows(
        &mut *tx,
        "INSERT INTO invocation_logs (account_id, function_name, seq, request_id, started_at, \
             log) ",
        6,
        &rows,
        |query, (seq, entry)| {
            query
                .bind(&entry.account_id)
                .bind(&entry.function_name)
                .bind(*seq)
                .bind(&entry.request_id)
                .bind(entry.started_at_ms)
                .bind(&entry.log)
        },
    )
    .await?;
    Ok(())
}
