//! The worker that runs `Event` invocations from the store's durable queue.
//!
//! As in Lambda, an event whose execution ends in a function error (an error the function
//! reported, a timeout, an out-of-memory kill, a crash) is retried up to
//! `MaximumRetryAttempts` times (the event invoke config of the function and qualifier it was
//! invoked with; [`ExecutorConfig::event_retries`](crate::ExecutorConfig), 2, without one),
//! waiting `event_retry_base` and then twice that. An event that cannot start for lack of
//! capacity or concurrency is tried again later without counting as an attempt. An event older
//! than its `MaximumEventAgeInSeconds` (the server's `event_max_age` without one) is given up,
//! and so is one whose next retry would fall past that age. An event whose function was deleted
//! is dropped. [`decide`] is the whole policy, a pure function of the clock's time.
//!
//! When an event leaves the queue and its config names a destination for the outcome
//! (`OnSuccess`; `OnFailure` for `RetriesExhausted` and `EventAgeExceeded`), the destination
//! function is invoked asynchronously with Lambda's invocation record ([`Record`]): an `Event`
//! invocation queued in the transaction that settles the event, so a crash loses neither.
//!
//! A run's log and execution record are stored with the event's settlement (done, or put back
//! for a retry) in one transaction, so an event marked done always has its log in the store. A
//! run cut short by a crash is not settled, and runs again after the restart: delivery is at
//! least once, and the store holds one log per settled run.
//!
//! A claim is a lease ([`ember_store::LEASE_MARGIN_MS`] past the function's timeout); the worker
//! renews the leases of every event it still runs, in one statement, every
//! [`ember_store::LEASE_RENEW_EVERY_MS`], so a live server keeps its claims however long a run
//! waits. A settlement is stored only while the event still holds the claim it ran under
//! ([`ember_store::Settled`]): a server whose lease ran out (cut off from the store) and whose
//! event was claimed again stores no second outcome, log or destination invocation.

use std::time::Duration;

use std::sync::atomic::Ordering;

use ember_stdx::error_chain;
use ember_store::{EventConfigSettings, EventRun, EventSettlement, NewEvent, QueuedEvent};
use tracing::{info, info_span, warn, Instrument};

use crate::report::Verdict;
use crate::sizing::HISTORY;
use crate::{Clock, ExecError, Executor, ExecutorConfig, InvokeRequest, RunRecords};

/// Events run at once, at most.
const PARALLEL: usize = 16;
/// How soon a throttled event is tried again.
const THROTTLED_RETRY: Duration = Duration::from_secs(1);
/// How often the queue is polled when nothing wakes the worker (a safety net).
const POLL: Duration = Duration::from_secs(5);
/// A settlement (or a claim) the store refused is tried again after this, then twice as long
/// each time…
const SETTLE_RETRY_FIRST: Duration = Duration::from_millis(100);
/// …up to this.
const SETTLE_RETRY_MAX: Duration = Duration::from_secs(5);

pub(crate) async fn run_worker(executor: Executor) {
    let running = std::sync::Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let claims = Claims::default();
    let renewer = tokio::spawn(renew_leases(executor.clone(), claims.clone()));
    let _stop_renewer = StopOnDrop(renewer.abort_handle());
    // Claims the store refused in a row (a claim is a write: a full disk refuses it).
    let mut refused = 0_u32;
    loop {
        if executor
            .inner
            .shutting_down
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let free = running.available_permits() as u32;
        let due = if free == 0 {
            Vec::new()
        } else {
            match executor
                .inner
                .store
                .claim_due_events(executor.inner.clock.epoch_ms(), free)
                .await
            {
                Ok(due) => {
                    if refused > 0 {
                        info!(refused, "the event queue can be claimed again");
                        refused = 0;
                    }
                    due
                }
                Err(err) => {
                    // Backing off, rather than asking again at once (the queue's due events
                    // would wake the loop straight away), until the store takes claims again.
                    if refused == 0 {
                        warn!(error = %error_chain(&err), "cannot claim events; trying again until the store takes it");
                    }
                    refused = refused.saturating_add(1);
                    let wait = SETTLE_RETRY_FIRST * 2u32.pow(refused.min(6) - 1);
                    tokio::time::sleep(wait.min(SETTLE_RETRY_MAX)).await;
                    continue;
                }
            }
        };
        let claimed = due.len();
        for event in due {
            let Ok(permit) = running.clone().acquire_owned().await else {
                return;
            };
            let executor = executor.clone();
            let span =
                info_span!("event", function = %event.function_name, request_id = %event.event_id);
            let held = claims.hold(&event.claim);
            tokio::spawn(
                async move {
                    run_event(&executor, event).await;
                    drop(held);
                    drop(permit);
                    executor.inner.events_queued.notify_one();
                }
                .instrument(span),
            );
        }
        if claimed > 0 {
            continue;
        }
        let wait = match executor.inner.store.next_event_due().await {
            Ok(Some(due)) => {
                let now = executor.inner.clock.epoch_ms();
                Duration::from_millis(u64::try_from(due - now).unwrap_or(0)).min(POLL)
            }
            _ => POLL,
        };
        let _ = tokio::time::timeout(wait, executor.inner.events_queued.notified()).await;
    }
}

/// The claims this server's worker is running (their tokens), whose leases it renews.
#[derive(Debug, Clone, Default)]
pub(crate) struct Claims(std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>);

impl Claims {
    /// Holds `claim` until the returned guard drops (the run settled, or gave up).
    fn hold(&self, claim: &str) -> HeldClaim {
        crate::lock(&self.0).insert(claim.to_owned());
        HeldClaim(self.clone(), claim.to_owned())
    }

    fn all(&self) -> Vec<String> {
        crate::lock(&self.0).iter().cloned().collect()
    }
}

struct HeldClaim(Claims, String);

impl Drop for HeldClaim {
    fn drop(&mut self) {
        crate::lock(&(self.0).0).remove(&self.1);
    }
}

/// Aborts a task when dropped: the lease renewer goes with its worker.
struct StopOnDrop(tokio::task::AbortHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews, every [`ember_store::LEASE_RENEW_EVERY_MS`], the leases of the events this server
/// runs (one statement for all of them), so that a run outlasting its claim's lease (waiting
/// for capacity, a slow settlement) is not taken by another server while this one lives.
/// A claim found lost (this server was cut off from the store for longer than the lease, and
/// the event was claimed again) is logged; its run's outcome will not be stored.
async fn renew_leases(executor: Executor, claims: Claims) {
    let every =
        Duration::from_millis(u64::try_from(ember_store::LEASE_RENEW_EVERY_MS).unwrap_or(30_000));
    loop {
        tokio::time::sleep(every).await;
        let held = claims.all();
        if held.is_empty() {
            continue;
        }
        let now = executor.inner.clock.epoch_ms();
        match executor.inner.store.renew_event_leases(&held, now).await {
            Ok(lost) => {
                for claim in lost {
                    warn!(claim, "an event's lease was lost to another claim; this run's outcome will not be stored");
                }
            }
            Err(err) => {
                warn!(error = %error_chain(&err), claims = held.len(), "cannot renew event leases; trying again later")
            }
        }
    }
}

async fn run_event(executor: &Executor, event: QueuedEvent) {
    let store = &executor.inner.store;
    let clock = &*executor.inner.clock;
    let function = match load_function(store, &event).await {
        Ok(Some(function)) => function,
        Ok(None) => {
            info!("function, version or alias deleted; its queued event is dropped");
            settle(executor, &event, EventSettlement::Done, None, None).await;
            return;
        }
        Err(err) => {
            warn!(error = %err, "cannot read the event's function; retrying later");
            let retry = retry_in(clock, event.attempts, THROTTLED_RETRY);
            settle(executor, &event, retry, None, None).await;
            return;
        }
    };
    let settings = match store
        .event_invoke_config(&event.account_id, &event.function_name, &event.qualifier)
        .await
    {
        Ok(config) => config.map(|c| c.settings),
        Err(err) => {
            warn!(error = %err, "cannot read the event's invoke config; retrying later");
            let retry = retry_in(clock, event.attempts, THROTTLED_RETRY);
            settle(executor, &event, retry, None, None).await;
            return;
        }
    };
    let policy = Policy::of(settings.as_ref(), &executor.inner.config);
    let outcome = Outcome {
        executor,
        event: &event,
        function_arn: format!("{}:{}", executor.function_arn(&function), event.qualifier),
        settings: settings.as_ref(),
    };
    if expired(&policy, event.created_at_ms, clock.epoch_ms()) {
        warn!(
            attempts = event.attempts,
            "event older than its maximum age; dropped"
        );
        let finish = Decision::Finish {
            condition: Condition::EventAgeExceeded,
            invocations: event.attempts,
        };
        outcome.settle(finish, None).await;
        return;
    }
    let request = InvokeRequest {
        qualifier: (event.qualifier != ember_store::LATEST).then(|| event.qualifier.clone()),
        function,
        request_id: event.event_id.clone(),
        payload: event.payload.clone().into(),
        client_context: None,
        cognito_identity: None,
    };
    match executor.run(request).await {
        Ok((response, records)) => {
            let attempt = if response.verdict == Verdict::Ok {
                Attempt::Succeeded
            } else {
                Attempt::Failed
            };
            let decision = decide(
                &policy,
                event.attempts,
                event.created_at_ms,
                attempt,
                clock.epoch_ms(),
            );
            match decision {
                Decision::Retry { attempts, .. } => {
                    info!(attempts, verdict = ?response.verdict, "event failed; will retry")
                }
                Decision::Finish {
                    condition: Condition::Success,
                    ..
                } => {}
                Decision::Finish {
                    condition: Condition::RetriesExhausted,
                    invocations,
                } => {
                    warn!(attempts = invocations, verdict = ?response.verdict, "event failed on every attempt; dropped")
                }
                Decision::Finish {
                    condition: Condition::EventAgeExceeded,
                    invocations,
                } => {
                    warn!(attempts = invocations, verdict = ?response.verdict, "event failed, and its next retry would be past its maximum age; dropped")
                }
            }
            outcome.settle(decision, Some((&response, &records))).await;
        }
        Err(ExecError::ShuttingDown) => {
            // Left claimed; the next start releases it.
        }
        Err(err) => {
            let decision = decide(
                &policy,
                event.attempts,
                event.created_at_ms,
                Attempt::NotStarted,
                clock.epoch_ms(),
            );
            if let Decision::Retry { .. } = decision {
                info!(error = %err, "event could not run; will try again");
            } else {
                warn!(error = %err, "event could not run before its maximum age; dropped");
            }
            outcome.settle(decision, None).await;
        }
    }
}

/// The function version an event runs: the one chosen when it was queued (a client's Invoke:
/// the version it named, or its alias's weighted pick), else its qualifier's (`$LATEST`, a
/// published version, or the version an alias points at: a destination's invocation does not
/// take an alias's additional weighted version). `None` when the function, version or alias is
/// gone.
async fn load_function(
    store: &ember_store::Store,
    event: &QueuedEvent,
) -> Result<Option<ember_store::Function>, ember_store::StoreError> {
    let (account, name, qualifier) = (&event.account_id, &event.function_name, &event.qualifier);
    if let Some(version) = &event.function_version {
        return store.function_version(account, name, version).await;
    }
    if qualifier == ember_store::LATEST || qualifier.bytes().all(|b| b.is_ascii_digit()) {
        return store.function_version(account, name, qualifier).await;
    }
    match store.alias(account, name, qualifier).await? {
        Some(alias) => {
            store
                .function_version(account, name, &alias.function_version)
                .await
        }
        None => Ok(None),
    }
}

/// What the settlement of one event needs besides the decision.
struct Outcome<'a> {
    executor: &'a Executor,
    event: &'a QueuedEvent,
    /// The invoked function's ARN with the event's qualifier, as the destination record names it.
    function_arn: String,
    settings: Option<&'a EventConfigSettings>,
}

impl Outcome<'_> {
    /// Settles the event as `decision` says, with what its run left (if it ran), and, when it
    /// is finished and its config names a destination for that outcome, the destination's
    /// invocation with Lambda's invocation record, queued in the same transaction.
    async fn settle(&self, decision: Decision, run: Option<(&crate::InvokeResponse, &RunRecords)>) {
        let (settlement, then) = match decision {
            Decision::Retry { attempts, at_ms } => {
                (EventSettlement::Retry { attempts, at_ms }, None)
            }
            Decision::Finish {
                condition,
                invocations,
            } => {
                let then = self.destination(condition, invocations, run.map(|(r, _)| r));
                (EventSettlement::Done, then)
            }
        };
        settle(
            self.executor,
            self.event,
            settlement,
            run.map(|(_, records)| records),
            then.as_ref(),
        )
        .await;
    }

    /// The invocation of the destination configured for `condition`, if any (and if the chain
    /// of destinations that led here is not at its bound).
    fn destination(
        &self,
        condition: Condition,
        invocations: u32,
        response: Option<&crate::InvokeResponse>,
    ) -> Option<Destination> {
        let settings = self.settings?;
        let arn = match condition {
            Condition::Success => settings.on_success.as_deref(),
            Condition::RetriesExhausted | Condition::EventAgeExceeded => {
                settings.on_failure.as_deref()
            }
        }?;
        let Some(target) = DestinationTarget::parse(arn) else {
            warn!(
                destination = arn,
                "not a Lambda function ARN; no record sent"
            );
            return None;
        };
        if target.account_id != self.event.account_id {
            warn!(
                destination = arn,
                "a destination of another account; no record sent"
            );
            return None;
        }
        let chain_depth = self.event.chain_depth + 1;
        if chain_depth > MAX_CHAIN_DEPTH {
            warn!(
                destination = arn,
                chain_depth, "a chain of destinations at its bound; no record sent"
            );
            return None;
        }
        let now_ms = self.executor.inner.clock.epoch_ms();
        let record = Record {
            timestamp_ms: now_ms,
            request_id: &self.event.event_id,
            function_arn: &self.function_arn,
            condition,
            approximate_invoke_count: invocations,
            request_payload: &self.event.payload,
            response: response.map(|r| RecordResponse {
                executed_version: &r.executed_version,
                function_error: r.verdict != Verdict::Ok,
                payload: &r.payload,
            }),
        };
        let payload = record.to_json().into_bytes();
        if payload.len() > MAX_RECORD_BYTES {
            warn!(
                destination = arn,
                bytes = payload.len(),
                "the event's record is over {MAX_RECORD_BYTES} bytes; not sent"
            );
            return None;
        }
        info!(
            destination = arn,
            condition = condition.as_str(),
            "event's record sent to its destination"
        );
        Some(Destination {
            event_id: uuid::Uuid::new_v4().to_string(),
            account_id: target.account_id,
            function_name: target.function_name,
            qualifier: target.qualifier,
            payload,
            chain_depth,
        })
    }
}

/// Another attempt after `delay`, with `attempts` failed attempts counted.
fn retry_in(clock: &dyn Clock, attempts: u32, delay: Duration) -> EventSettlement {
    EventSettlement::Retry {
        attempts,
        at_ms: clock.epoch_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2),
    }
}

/// Settles a claimed event with what its run left, in one transaction
/// ([`ember_store::Store::settle_event`]). A store that refuses (its disk full, say) is asked
/// again, backing off, until it takes the settlement or the server stops: the event stays
/// claimed meanwhile, and a server that stops first leaves it to the next start, which runs it
/// again. Nothing the run left is dropped.
async fn settle(
    executor: &Executor,
    event: &QueuedEvent,
    settlement: EventSettlement,
    records: Option<&RunRecords>,
    then: Option<&Destination>,
) {
    let mut wait = SETTLE_RETRY_FIRST;
    let mut failures = 0_u32;
    loop {
        let run = records.map(|r| EventRun {
            log: &r.log,
            execution: &r.execution,
            keep_executions: HISTORY,
        });
        let then = then.map(|d| NewEvent {
            event_id: &d.event_id,
            account_id: &d.account_id,
            function_name: &d.function_name,
            qualifier: &d.qualifier,
            function_version: None,
            payload: &d.payload,
            chain_depth: d.chain_depth,
            now_ms: executor.inner.clock.epoch_ms(),
        });
        match executor
            .inner
            .store
            .settle_event_then(&event.claim, settlement, run, then.as_ref())
            .await
        {
            Ok(ember_store::Settled::ClaimLost) => {
                warn!(
                    "the event's lease ran out and it was claimed again; this run's outcome is not stored (the other claim's is)"
                );
                return;
            }
            Ok(ember_store::Settled::Stored) => {
                if failures > 0 {
                    info!(failures, "event settled once the store took it");
                }
                return;
            }
            Err(err) => {
                if failures == 0 {
                    warn!(error = %error_chain(&err), "cannot settle an event; trying again until the store takes it");
                }
                failures += 1;
            }
        }
        if executor.inner.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(SETTLE_RETRY_MAX);
    }
}

// ---- the policy: retries, age, outcome --------------------------------------------------------

/// Destination invocations in a row at most (an event queued for a destination is one more
/// than its source): a loop of destinations (A's OnSuccess is B, B's is A) stops there, as
/// Lambda's recursive loop detection stops a loop after about 16 invocations.
pub(crate) const MAX_CHAIN_DEPTH: u32 = 16;

/// The largest record sent to a destination: an `Event` invocation's payload limit (256 KB, as
/// the API's). A larger record (a large event and response) is not sent, and a warning says so.
pub(crate) const MAX_RECORD_BYTES: usize = 256 * 1024;

/// How the queue treats the events of one function and qualifier: its event invoke config
/// over the server's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    /// Retries after a function error (`MaximumRetryAttempts`; the server's
    /// `event_retries`, 2, without one).
    pub retries: u32,
    /// An event older than this is given up (`MaximumEventAgeInSeconds`; the server's
    /// `event_max_age`, six hours, without one).
    pub max_age_ms: i64,
    /// The first retry waits this long, the second twice as long.
    pub retry_base: Duration,
}

impl Policy {
    pub(crate) fn of(settings: Option<&EventConfigSettings>, server: &ExecutorConfig) -> Self {
        let retries = settings
            .and_then(|s| s.maximum_retry_attempts)
            .unwrap_or(server.event_retries);
        let max_age = settings
            .and_then(|s| s.maximum_event_age_s)
            .map_or(server.event_max_age, |s| Duration::from_secs(u64::from(s)));
        Self {
            retries,
            max_age_ms: i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX),
            retry_base: server.event_retry_base,
        }
    }
}

/// How one try of an event went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The function ran and returned.
    Succeeded,
    /// The function ran and failed (an error, a timeout, an OOM kill, a crash): an attempt.
    Failed,
    /// It could not start (throttled, no capacity, a VM failure): not an attempt.
    NotStarted,
}

/// Why an event left the queue, as the destination record's `condition` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Condition {
    Success,
    RetriesExhausted,
    EventAgeExceeded,
}

impl Condition {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Success => "Success",
            Self::RetriesExhausted => "RetriesExhausted",
            Self::EventAgeExceeded => "EventAgeExceeded",
        }
    }
}

/// What becomes of an event after a try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Tried again at `at_ms`, with `attempts` failed attempts counted.
    Retry { attempts: u32, at_ms: i64 },
    /// It leaves the queue, after `invocations` runs of the function (the record's
    /// `approximateInvokeCount`).
    Finish {
        condition: Condition,
        invocations: u32,
    },
}

/// Whether an event accepted at `created_at_ms` is past its maximum age at `now_ms`: then it is
/// given up before it runs again.
pub(crate) fn expired(policy: &Policy, created_at_ms: i64, now_ms: i64) -> bool {
    now_ms.saturating_sub(created_at_ms) > policy.max_age_ms
}

/// The decision after a try of an event that had failed `attempts` times before, at `now_ms`.
/// A function error is retried `policy.retries` times, waiting `retry_base` and then twice
/// that, unless the retry would fall past the event's maximum age: then it is given up at once
/// (`EventAgeExceeded`, with this run's response). An event that could not start is tried
/// again a second later, without counting an attempt, until it is past its maximum age.
pub(crate) fn decide(
    policy: &Policy,
    attempts: u32,
    created_at_ms: i64,
    attempt: Attempt,
    now_ms: i64,
) -> Decision {
    match attempt {
        Attempt::Succeeded => Decision::Finish {
            condition: Condition::Success,
            invocations: attempts + 1,
        },
        Attempt::Failed => {
            let attempts = attempts + 1;
            if attempts > policy.retries {
                return Decision::Finish {
                    condition: Condition::RetriesExhausted,
                    invocations: attempts,
                };
            }
            let delay = policy.retry_base * 2u32.saturating_pow(attempts - 1);
            let at_ms = now_ms.saturating_add(millis(delay));
            if expired(policy, created_at_ms, at_ms) {
                Decision::Finish {
                    condition: Condition::EventAgeExceeded,
                    invocations: attempts,
                }
            } else {
                Decision::Retry { attempts, at_ms }
            }
        }
        Attempt::NotStarted => {
            if expired(policy, created_at_ms, now_ms) {
                Decision::Finish {
                    condition: Condition::EventAgeExceeded,
                    invocations: attempts,
                }
            } else {
                Decision::Retry {
                    attempts,
                    at_ms: now_ms.saturating_add(millis(THROTTLED_RETRY)),
                }
            }
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

// ---- destinations -------------------------------------------------------------------------

/// A destination's invocation, owned, to be queued with the settlement.
#[derive(Debug)]
struct Destination {
    event_id: String,
    account_id: String,
    function_name: String,
    qualifier: String,
    payload: Vec<u8>,
    chain_depth: u32,
}

/// The function a destination ARN names: `arn:aws:lambda:REGION:ACCOUNT:function:NAME[:Q]`
/// (the API accepts nothing else).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct DestinationTarget {
    pub account_id: String,
    pub function_name: String,
    pub qualifier: String,
}

impl DestinationTarget {
    pub(crate) fn parse(arn: &str) -> Option<Self> {
        let parts: Vec<&str> = arn.split(':').collect();
        match parts.as_slice() {
            ["arn", partition, "lambda", _region, account, "function", name, rest @ ..]
                if partition.starts_with("aws") && !name.is_empty() && rest.len() <= 1 =>
            {
                Some(Self {
                    account_id: (*account).to_owned(),
                    function_name: (*name).to_owned(),
                    qualifier: rest.first().copied().unwrap_or("$LATEST").to_owned(),
                })
            }
            _ => None,
        }
    }
}

/// Lambda's invocation record, the payload a destination function receives.
#[derive(Debug)]
pub(crate) struct Record<'a> {
    pub timestamp_ms: i64,
    /// The event's request id.
    pub request_id: &'a str,
    /// The invoked function's ARN, qualified.
    pub function_arn: &'a str,
    pub condition: Condition,
    pub approximate_invoke_count: u32,
    /// The event's payload, as queued.
    pub request_payload: &'a [u8],
    /// The last run's answer; `None` for an event given up before any run could answer
    /// (Lambda's record then has no `responseContext` nor `responsePayload`).
    pub response: Option<RecordResponse<'a>>,
}

#[derive(Debug)]
pub(crate) struct RecordResponse<'a> {
    pub executed_version: &'a str,
    pub function_error: bool,
    pub payload: &'a [u8],
}

impl Record<'_> {
    /// The record's JSON, members in Lambda's order: `version`, `timestamp`, `requestContext`,
    /// `requestPayload`, `responseContext`, `responsePayload`. The payloads are embedded as
    /// they are when they are JSON (the function's bytes, not a re-serialisation), else as a
    /// JSON string; an empty response is `null`.
    pub(crate) fn to_json(&self) -> String {
        let text = |s: &str| serde_json::Value::from(s).to_string();
        let mut out = format!(
            r#"{{"version":"1.0","timestamp":{},"requestContext":{{"requestId":{},"functionArn":{},"condition":"{}","approximateInvokeCount":{}}},"requestPayload":{}"#,
            text(&timestamp(self.timestamp_ms)),
            text(self.request_id),
            text(self.function_arn),
            self.condition.as_str(),
            self.approximate_invoke_count,
            embedded(self.request_payload),
        );
        if let Some(response) = &self.response {
            out.push_str(&format!(
                r#","responseContext":{{"statusCode":200,"executedVersion":{}{}}},"responsePayload":{}"#,
                text(response.executed_version),
                if response.function_error {
                    r#","functionError":"Unhandled""#
                } else {
                    ""
                },
                embedded(response.payload),
            ));
        }
        out.push('}');
        out
    }
}

/// A payload as a JSON value: itself (trimmed) if it is JSON, else a JSON string of its text.
fn embedded(payload: &[u8]) -> String {
    let trimmed = payload.trim_ascii();
    if trimmed.is_empty() {
        return "null".into();
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(trimmed).is_ok() {
        String::from_utf8_lossy(trimmed).into_owned()
    } else {
        serde_json::Value::from(String::from_utf8_lossy(payload)).to_string()
    }
}

/// `2019-11-14T18:16:05.568Z`, as Lambda's records are dated.
fn timestamp(ms: i64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const T0: i64 = 1_800_000_000_000;

    fn policy(retries: u32, max_age_s: i64) -> Policy {
        Policy {
            retries,
            max_age_ms: max_age_s * 1000,
            retry_base: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_config_overrides_the_servers_defaults_setting_by_setting() {
        let server = ExecutorConfig::default();
        assert_eq!(Policy::of(None, &server), policy(2, 6 * 3600));
        let retries = EventConfigSettings {
            maximum_retry_attempts: Some(0),
            ..Default::default()
        };
        assert_eq!(Policy::of(Some(&retries), &server), policy(0, 6 * 3600));
        let age = EventConfigSettings {
            maximum_event_age_s: Some(60),
            ..Default::default()
        };
        assert_eq!(Policy::of(Some(&age), &server), policy(2, 60));
    }

    #[test]
    fn function_errors_are_retried_as_configured() {
        use Attempt::Failed;
        let finish = |condition, invocations| Decision::Finish {
            condition,
            invocations,
        };
        // (retries, failed attempts before, decision)
        let table = [
            (0, 0, finish(Condition::RetriesExhausted, 1)),
            (
                1,
                0,
                Decision::Retry {
                    attempts: 1,
                    at_ms: T0 + 60_000,
                },
            ),
            (1, 1, finish(Condition::RetriesExhausted, 2)),
            (
                2,
                0,
                Decision::Retry {
                    attempts: 1,
                    at_ms: T0 + 60_000,
                },
            ),
            (
                2,
                1,
                Decision::Retry {
                    attempts: 2,
                    at_ms: T0 + 120_000,
                },
            ),
            (2, 2, finish(Condition::RetriesExhausted, 3)),
        ];
        for (retries, before, expected) in table {
            let got = decide(&policy(retries, 6 * 3600), before, T0, Failed, T0);
            assert_eq!(got, expected, "retries {retries}, {before} failed before");
        }
    }

    #[test]
    fn success_finishes_counting_every_run() {
        let got = decide(&policy(2, 3600), 2, T0, Attempt::Succeeded, T0);
        assert_eq!(
            got,
            Decision::Finish {
                condition: Condition::Success,
                invocations: 3
            }
        );
    }

    #[test]
    fn a_retry_past_the_maximum_age_gives_the_event_up_at_once() {
        // 60 s old at most: a retry a minute after a failure at 10 s would be 70 s old.
        let got = decide(&policy(2, 60), 0, T0, Attempt::Failed, T0 + 10_000);
        assert_eq!(
            got,
            Decision::Finish {
                condition: Condition::EventAgeExceeded,
                invocations: 1
            }
        );
        // A retry at exactly the maximum age is still made.
        let got = decide(&policy(2, 70), 0, T0, Attempt::Failed, T0 + 10_000);
        assert_eq!(
            got,
            Decision::Retry {
                attempts: 1,
                at_ms: T0 + 70_000
            }
        );
    }

    #[test]
    fn an_event_that_cannot_start_waits_until_its_maximum_age() {
        let p = policy(2, 60);
        assert_eq!(
            decide(&p, 1, T0, Attempt::NotStarted, T0 + 60_000),
            Decision::Retry {
                attempts: 1,
                at_ms: T0 + 61_000
            },
            "not an attempt, and still young enough at exactly its maximum age"
        );
        assert_eq!(
            decide(&p, 1, T0, Attempt::NotStarted, T0 + 60_001),
            Decision::Finish {
                condition: Condition::EventAgeExceeded,
                invocations: 1
            }
        );
        assert!(!expired(&p, T0, T0 + 60_000));
        assert!(expired(&p, T0, T0 + 60_001));
    }

    #[test]
    fn destination_arns_name_a_function_and_qualifier() {
        assert_eq!(
            DestinationTarget::parse("arn:aws:lambda:us-east-1:123456789012:function:f"),
            Some(DestinationTarget {
                account_id: "123456789012".into(),
                function_name: "f".into(),
                qualifier: "$LATEST".into(),
            })
        );
        assert_eq!(
            DestinationTarget::parse("arn:aws:lambda:us-east-1:123456789012:function:f:live")
                .unwrap()
                .qualifier,
            "live"
        );
        for bad in [
            "arn:aws:sqs:us-east-1:123456789012:q",
            "arn:aws:lambda:us-east-1:123456789012:layer:l",
            "f",
        ] {
            assert_eq!(DestinationTarget::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_record_has_lambdas_shape() {
        let record = Record {
            timestamp_ms: 1_573_754_165_568,
            request_id: "e4b46cbf",
            function_arn: "arn:aws:lambda:us-east-2:123456789012:function:my-function:$LATEST",
            condition: Condition::RetriesExhausted,
            approximate_invoke_count: 3,
            request_payload: br#"{"ORDER_IDS": ["9e07af03"]}"#,
            response: Some(RecordResponse {
                executed_version: "$LATEST",
                function_error: true,
                payload: br#"{"errorMessage":"no"}"#,
            }),
        };
        assert_eq!(
            record.to_json(),
            concat!(
                r#"{"version":"1.0","timestamp":"2019-11-14T17:56:05.568Z","#,
                r#""requestContext":{"requestId":"e4b46cbf","#,
                r#""functionArn":"arn:aws:lambda:us-east-2:123456789012:function:my-function:$LATEST","#,
                r#""condition":"RetriesExhausted","approximateInvokeCount":3},"#,
                r#""requestPayload":{"ORDER_IDS": ["9e07af03"]},"#,
                r#""responseContext":{"statusCode":200,"executedVersion":"$LATEST","functionError":"Unhandled"},"#,
                r#""responsePayload":{"errorMessage":"no"}}"#
            )
        );
        // Valid JSON, whatever the payloads.
        let parsed: serde_json::Value = serde_json::from_str(&record.to_json()).unwrap();
        assert_eq!(parsed["requestPayload"]["ORDER_IDS"][0], "9e07af03");
    }

    #[test]
    fn a_record_without_a_run_has_no_response_and_odd_payloads_stay_json() {
        let record = Record {
            timestamp_ms: 0,
            request_id: "r",
            function_arn: "arn",
            condition: Condition::EventAgeExceeded,
            approximate_invoke_count: 0,
            request_payload: b"not json \"quoted\"",
            response: None,
        };
        let parsed: serde_json::Value = serde_json::from_str(&record.to_json()).unwrap();
        assert_eq!(parsed["requestPayload"], "not json \"quoted\"");
        assert_eq!(parsed["requestContext"]["condition"], "EventAgeExceeded");
        assert_eq!(parsed["requestContext"]["approximateInvokeCount"], 0);
        assert!(parsed.get("responseContext").is_none());
        assert!(parsed.get("responsePayload").is_none());

        let success = Record {
            response: Some(RecordResponse {
                executed_version: "3",
                function_error: false,
                payload: b"",
            }),
            condition: Condition::Success,
            ..record
        };
        let parsed: serde_json::Value = serde_json::from_str(&success.to_json()).unwrap();
        assert_eq!(
            parsed["responseContext"],
            serde_json::json!({"statusCode": 200, "executedVersion": "3"})
        );
        assert_eq!(parsed["responsePayload"], serde_json::Value::Null);
    }
}
