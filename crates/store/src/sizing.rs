//! What the store keeps for automatic resource sizing: each execution's measurements (a bounded
//! history per function version and requested amount), each function's sizing settings, and the
//! history of sizing decisions.
//!
//! Every row belongs to a function and goes with it (`ON DELETE CASCADE` on the function, see
//! `migrations/0003_sizing.sql`), so [`Store::delete_function`] removes them in its own
//! transaction. Measurements of a function deleted while they were in flight are dropped by
//! [`Store::record_executions`]; settings and decisions for a missing function are refused with
//! [`StoreError::NotFound`].
//!
//! Rows are numbered per function by `seq`, one more than the function's largest, inside a
//! `BEGIN IMMEDIATE` transaction (on PostgreSQL the same reads would need the function's row
//! locked, `SELECT ... FOR UPDATE`, to keep two writers from taking one number).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

use sqlx::Row;

use crate::{Result, Store, StoreError};

/// How an execution ended, as sizing tells endings apart. Stored by name ([`Self::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionOutcome {
    /// The runtime answered with a response.
    Ok,
    /// The function reported an error, its init failed, or its runtime exited.
    Error,
    /// It ran past the function's timeout and was stopped.
    Timeout,
    /// The container hit its memory limit.
    OutOfMemory,
}

impl ExecutionOutcome {
    /// Every outcome, in a fixed order.
    pub const ALL: [Self; 4] = [Self::Ok, Self::Error, Self::Timeout, Self::OutOfMemory];

    /// The stored name: `ok`, `error`, `timeout` or `oom`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::OutOfMemory => "oom",
        }
    }
}

impl fmt::Display for ExecutionOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExecutionOutcome {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| StoreError::Invalid(format!("execution outcome {s:?}")))
    }
}

/// One execution's measurements.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionRecord {
    /// The account that owns the function.
    pub account_id: String,
    /// The function's name.
    pub function_name: String,
    /// The revision of the function version that ran.
    pub revision_id: String,
    /// The memory the request named: the function's configured MemorySize.
    pub requested_mb: u32,
    /// The memory the container actually had, in MB: `requested_mb` unless sizing changed it.
    pub memory_mb: u32,
    /// The container's peak memory during the execution, in MB (from its cgroup); for the
    /// container's first execution, since it started, init included.
    pub peak_mb: u64,
    /// CPU time the container used, in ms, summed over its CPUs (first execution: init
    /// included). Finite, or the record is refused.
    pub cpu_ms: f64,
    /// Time the container was held back by its CPU quota, in ms. Finite.
    pub throttled_ms: f64,
    /// Wall time from the event's delivery to the runtime's answer or the execution's end, in
    /// ms (init excluded). Finite.
    pub duration_ms: f64,
    /// Set for the execution that started its container: the runtime's init, in ms. Finite.
    pub init_ms: Option<f64>,
    /// How it ended.
    pub outcome: ExecutionOutcome,
    /// Epoch milliseconds when the execution started.
    pub started_at_ms: i64,
}

/// A function's sizing settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizingSettings {
    /// `off`, `recommend` or `auto`; `None` follows the server's default mode.
    pub mode: Option<String>,
    /// A JSON object of threshold overrides. The store checks only that it is JSON: its fields
    /// are the executor's to define and validate.
    pub overrides_json: String,
    /// When the settings were last put, in epoch milliseconds (the caller's clock).
    pub updated_at_ms: i64,
}

/// A sizing decision: a recommendation, or a change applied.
#[derive(Debug, Clone, PartialEq)]
pub struct SizingEvent {
    /// Assigned by the store, from 1 per function, increasing; ignored on insert.
    pub seq: i64,
    /// The account that owns the function.
    pub account_id: String,
    /// The function's name.
    pub function_name: String,
    /// The revision whose executions the decision read.
    pub revision_id: String,
    /// The function's configured `MemorySize`, in MB, when the decision was made.
    pub requested_mb: u32,
    /// The container memory before the decision, in MB.
    pub from_mb: u32,
    /// The container memory the decision chose, in MB.
    pub to_mb: u32,
    /// `up` or `down`.
    pub direction: String,
    /// Which rule fired.
    pub condition: String,
    /// JSON: the measurements behind the decision.
    pub evidence_json: String,
    /// False when the decision was only recommended.
    pub applied: bool,
    /// When the execution that triggered the decision started, in epoch milliseconds.
    pub at_ms: i64,
}

/// Sizing decisions kept per function, newest first: a history for people to read, not evidence.
pub const SIZING_EVENTS_KEPT: u32 = 1000;

const SIZING_MODES: [&str; 3] = ["off", "recommend", "auto"];
const DIRECTIONS: [&str; 2] = ["up", "down"];

const EXECUTION_COLUMNS: &str = "account_id, function_name, revision_id, requested_mb, memory_mb, \
     peak_mb, cpu_ms, throttled_ms, duration_ms, init_ms, outcome, started_at";

const EVENT_COLUMNS: &str = "seq, account_id, function_name, revision_id, requested_mb, from_mb, \
     to_mb, direction, condition, evidence, CASE WHEN applied THEN 1 ELSE 0 END AS applied, at";

impl Store {
    /// Records executions in one transaction, then keeps only the newest `keep` per
    /// (account, function, revision, requested_mb) among those just touched (bounded history).
    ///
    /// "Newest" means the latest `started_at_ms`, ties broken by recording order, so a record
    /// that arrives late with an old start may be pruned at once; `keep == 0` empties the keys
    /// touched. Records of a function that does not exist (deleted while they were in flight)
    /// are dropped, and the rest of the batch is stored. A function's executions of other
    /// revisions than its current one go when it changes revision ([`Store::update_function`]);
    /// one of the old revision still in flight then may be recorded after that, and goes at the
    /// next change. A batch holding a measurement that is not a finite number is refused whole
    /// ([`StoreError::Invalid`]).
    pub async fn record_executions(&self, records: &[ExecutionRecord], keep: u32) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        records.iter().try_for_each(check_execution)?;
        let mut tx = self.write_transaction().await?;
        insert_executions(&mut tx, records, keep).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The newest `limit` executions of a function version at a requested amount, oldest first
    /// (by `started_at_ms`, then recording order).
    pub async fn recent_executions(
        &self,
        account_id: &str,
        function_name: &str,
        revision_id: &str,
        requested_mb: u32,
        limit: u32,
    ) -> Result<Vec<ExecutionRecord>> {
        let mut rows = sqlx::query(&format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions \
             WHERE account_id = $1 AND function_name = $2 AND revision_id = $3 \
               AND requested_mb = $4 \
             ORDER BY started_at DESC, seq DESC LIMIT $5"
        ))
        .bind(account_id)
        .bind(function_name)
        .bind(revision_id)
        .bind(i64::from(requested_mb))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.reverse();
        rows.iter().map(execution_from_row).collect()
    }

    /// A function's sizing settings, if ever set (`None` also for an unknown function).
    pub async fn sizing_settings(
        &self,
        account_id: &str,
        function_name: &str,
    ) -> Result<Option<SizingSettings>> {
        let row = sqlx::query(
            "SELECT mode, overrides, updated_at FROM function_sizing \
             WHERE account_id = $1 AND function_name = $2",
        )
        .bind(account_id)
        .bind(function_name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(SizingSettings {
                mode: r.try_get("mode")?,
                overrides_json: r.try_get("overrides")?,
                updated_at_ms: r.try_get("updated_at")?,
            })
        })
        .transpose()
    }

    /// Sets a function's sizing settings, replacing any. Fails with [`StoreError::NotFound`] if
    /// the function does not exist, and with [`StoreError::Invalid`] for an unknown mode or
    /// overrides that are not JSON.
    pub async fn put_sizing_settings(
        &self,
        account_id: &str,
        function_name: &str,
        settings: &SizingSettings,
    ) -> Result<()> {
        if let Some(mode) = settings
            .mode
            .as_deref()
            .filter(|m| !SIZING_MODES.contains(m))
        {
            return Err(StoreError::Invalid(format!("sizing mode {mode:?}")));
        }
        check_json("sizing overrides", &settings.overrides_json)?;
        let mut tx = self.write_transaction().await?;
        if !function_exists(&mut tx, account_id, function_name).await? {
            return Err(StoreError::NotFound(format!("function {function_name}")));
        }
        sqlx::query(
            "INSERT INTO function_sizing (account_id, function_name, mode, overrides, updated_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (account_id, function_name) DO UPDATE SET \
             mode = excluded.mode, overrides = excluded.overrides, \
             updated_at = excluded.updated_at",
        )
        .bind(account_id)
        .bind(function_name)
        .bind(&settings.mode)
        .bind(&settings.overrides_json)
        .bind(settings.updated_at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Appends a sizing decision and returns its `seq` (`event.seq` is ignored). A function
    /// keeps its newest [`SIZING_EVENTS_KEPT`] decisions; older ones go in the same
    /// transaction. Fails with [`StoreError::NotFound`] if the function does not exist, and with
    /// [`StoreError::Invalid`] for an unknown direction or evidence that is not JSON.
    pub async fn add_sizing_event(&self, event: &SizingEvent) -> Result<i64> {
        self.add_sizing_event_keeping(event, SIZING_EVENTS_KEPT)
            .await
    }

    /// [`Self::add_sizing_event`], keeping the newest `keep` decisions (as `record_executions`
    /// takes its `keep`).
    pub(crate) async fn add_sizing_event_keeping(
        &self,
        event: &SizingEvent,
        keep: u32,
    ) -> Result<i64> {
        if !DIRECTIONS.contains(&event.direction.as_str()) {
            return Err(StoreError::Invalid(format!(
                "sizing direction {:?}",
                event.direction
            )));
        }
        check_json("sizing evidence", &event.evidence_json)?;
        let mut tx = self.write_transaction().await?;
        let row = sqlx::query(
            "SELECT (SELECT COALESCE(MAX(seq), 0) FROM sizing_events \
                     WHERE account_id = $1 AND function_name = $2) AS last \
             FROM functions WHERE account_id = $1 AND name = $2",
        )
        .bind(&event.account_id)
        .bind(&event.function_name)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(StoreError::NotFound(format!(
                "function {}",
                event.function_name
            )));
        };
        let seq = row.try_get::<i64, _>("last")? + 1;
        sqlx::query(
            "INSERT INTO sizing_events (account_id, function_name, seq, revision_id, \
             requested_mb, from_mb, to_mb, direction, condition, evidence, applied, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&event.account_id)
        .bind(&event.function_name)
        .bind(seq)
        .bind(&event.revision_id)
        .bind(i64::from(event.requested_mb))
        .bind(i64::from(event.from_mb))
        .bind(i64::from(event.to_mb))
        .bind(&event.direction)
        .bind(&event.condition)
        .bind(&event.evidence_json)
        .bind(event.applied)
        .bind(event.at_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM sizing_events WHERE account_id = $1 AND function_name = $2 AND seq <= $3",
        )
        .bind(&event.account_id)
        .bind(&event.function_name)
        .bind(seq - i64::from(keep))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// The newest `limit` sizing decisions of a function (all versions), oldest first, by
    /// `seq`. Empty for an unknown function.
    pub async fn sizing_events(
        &self,
        account_id: &str,
        function_name: &str,
        limit: u32,
    ) -> Result<Vec<SizingEvent>> {
        let mut rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM sizing_events \
             WHERE account_id = $1 AND function_name = $2 ORDER BY seq DESC LIMIT $3"
        ))
        .bind(account_id)
        .bind(function_name)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.reverse();
        rows.iter().map(event_from_row).collect()
    }
}

async fn function_exists(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    account_id: &str,
    function_name: &str,
) -> Result<bool> {
    let row = sqlx::query("SELECT 1 FROM functions WHERE account_id = $1 AND name = $2")
        .bind(account_id)
        .bind(function_name)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.is_some())
}

/// SQLite stores NaN as NULL, which the NOT NULL columns refuse; infinities are no measurement.
/// Inserts checked execution records in the caller's write transaction and prunes the keys they
/// touched to the newest `keep` (see [`Store::record_executions`]).
pub(crate) async fn insert_executions(
    tx: &mut sqlx::AnyConnection,
    records: &[ExecutionRecord],
    keep: u32,
) -> Result<()> {
    // The last seq of each function in the batch, read once; `None` if it does not exist.
    let mut last: HashMap<(&str, &str), Option<i64>> = HashMap::new();
    let mut touched: BTreeSet<(&str, &str, &str, u32)> = BTreeSet::new();
    let mut dropped = 0_usize;
    let mut rows = Vec::with_capacity(records.len());
    for record in records {
        let function = (record.account_id.as_str(), record.function_name.as_str());
        let last_seq = match last.get(&function) {
            Some(last_seq) => *last_seq,
            None => {
                let row = sqlx::query(
                    "SELECT (SELECT COALESCE(MAX(seq), 0) FROM executions \
                                 WHERE account_id = $1 AND function_name = $2) AS last \
                         FROM functions WHERE account_id = $1 AND name = $2",
                )
                .bind(function.0)
                .bind(function.1)
                .fetch_optional(&mut *tx)
                .await?;
                row.map(|r| r.try_get::<i64, _>("last")).transpose()?
            }
        };
        let Some(last_seq) = last_seq else {
            last.insert(function, None);
            dropped += 1;
            continue;
        };
        let seq = last_seq + 1;
        last.insert(function, Some(seq));
        rows.push((seq, record));
        touched.insert((
            function.0,
            function.1,
            record.revision_id.as_str(),
            record.requested_mb,
        ));
    }
    // Records without an init time go in a statement without `init_ms` (it defaults to NULL):
    // sqlx 0.8's `Any` driver binds a NULL `f64` as PostgreSQL's `real`, and a statement it has
    // prepared (and cached, per connection) with a NULL there then refuses an `f64`
    // ("incorrect binary data format in bind parameter 11"). Each statement's text now binds
    // one type in each place. (launchbadge/sqlx#4284.)
    let (with_init, without_init): (Vec<_>, Vec<_>) =
        rows.into_iter().partition(|(_, r)| r.init_ms.is_some());
    for (rows, init_column) in [(with_init, "init_ms, "), (without_init, "")] {
        let insert = format!(
            "INSERT INTO executions (account_id, function_name, seq, revision_id, requested_mb, \
             memory_mb, peak_mb, cpu_ms, throttled_ms, duration_ms, {init_column}outcome, \
             started_at) "
        );
        let columns = if init_column.is_empty() { 12 } else { 13 };
        crate::insert_rows(&mut *tx, &insert, columns, &rows, |query, (seq, record)| {
            let query = query
                .bind(&record.account_id)
                .bind(&record.function_name)
                .bind(*seq)
                .bind(&record.revision_id)
                .bind(i64::from(record.requested_mb))
                .bind(i64::from(record.memory_mb))
                // No memory is 2^63 MB: saturating only keeps the conversion total.
                .bind(i64::try_from(record.peak_mb).unwrap_or(i64::MAX))
                .bind(record.cpu_ms)
                .bind(record.throttled_ms)
                .bind(record.duration_ms);
            let query = match record.init_ms {
                Some(init_ms) => query.bind(init_ms),
                None => query,
            };
            query
                .bind(record.outcome.as_str())
                .bind(record.started_at_ms)
        })
        .await?;
    }
    for (account_id, function_name, revision_id, requested_mb) in touched {
        sqlx::query(
            "DELETE FROM executions \
                 WHERE account_id = $1 AND function_name = $2 AND revision_id = $3 \
                   AND requested_mb = $4 \
                   AND seq NOT IN ( \
                     SELECT seq FROM executions \
                     WHERE account_id = $1 AND function_name = $2 AND revision_id = $3 \
                       AND requested_mb = $4 \
                     ORDER BY started_at DESC, seq DESC LIMIT $5)",
        )
        .bind(account_id)
        .bind(function_name)
        .bind(revision_id)
        .bind(i64::from(requested_mb))
        .bind(i64::from(keep))
        .execute(&mut *tx)
        .await?;
    }
    if dropped > 0 {
        tracing::debug!(dropped, "dropped executions of deleted functions");
    }
    Ok(())
}

pub(crate) fn check_execution(record: &ExecutionRecord) -> Result<()> {
    let measurements = [
        ("cpu_ms", Some(record.cpu_ms)),
        ("throttled_ms", Some(record.throttled_ms)),
        ("duration_ms", Some(record.duration_ms)),
        ("init_ms", record.init_ms),
    ];
    for (name, value) in measurements {
        if let Some(v) = value.filter(|v| !v.is_finite()) {
            return Err(StoreError::Invalid(format!(
                "{name} = {v} of function {}",
                record.function_name
            )));
        }
    }
    Ok(())
}

fn check_json(what: &str, text: &str) -> Result<()> {
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(|_| ())
        .map_err(|e| StoreError::Invalid(format!("{what} (not JSON: {e})")))
}

fn column_u32(row: &sqlx::any::AnyRow, col: &str) -> Result<u32> {
    let v: i64 = row.try_get(col)?;
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{col} = {v}")))
}

fn execution_from_row(row: &sqlx::any::AnyRow) -> Result<ExecutionRecord> {
    let peak: i64 = row.try_get("peak_mb")?;
    let outcome: String = row.try_get("outcome")?;
    Ok(ExecutionRecord {
        account_id: row.try_get("account_id")?,
        function_name: row.try_get("function_name")?,
        revision_id: row.try_get("revision_id")?,
        requested_mb: column_u32(row, "requested_mb")?,
        memory_mb: column_u32(row, "memory_mb")?,
        peak_mb: u64::try_from(peak)
            .map_err(|_| StoreError::Corrupt(format!("peak_mb = {peak}")))?,
        cpu_ms: row.try_get("cpu_ms")?,
        throttled_ms: row.try_get("throttled_ms")?,
        duration_ms: row.try_get("duration_ms")?,
        init_ms: row.try_get("init_ms")?,
        outcome: outcome
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("outcome = {outcome:?}")))?,
        started_at_ms: row.try_get("started_at")?,
    })
}

fn event_from_row(row: &sqlx::any::AnyRow) -> Result<SizingEvent> {
    Ok(SizingEvent {
        seq: row.try_get("seq")?,
        account_id: row.try_get("account_id")?,
        function_name: row.try_get("function_name")?,
        revision_id: row.try_get("revision_id")?,
        requested_mb: column_u32(row, "requested_mb")?,
        from_mb: column_u32(row, "from_mb")?,
        to_mb: column_u32(row, "to_mb")?,
        direction: row.try_get("direction")?,
        condition: row.try_get("condition")?,
        evidence_json: row.try_get("evidence")?,
        applied: crate::backend::get_bool(row, "applied")?,
        at_ms: row.try_get("at")?,
    })
}

#[cfg(test)]
mod tests;
