//! The worker that runs `Event` invocations from the store's durable queue.
//!
//! As in Lambda, an event whose execution ends in a function error (an error the function
//! reported, a timeout, an out-of-memory kill, a crash) is retried up to
//! [`ExecutorConfig::event_retries`](crate::ExecutorConfig) times, waiting `event_retry_base`
//! and then twice that. An event that cannot start for lack of capacity or concurrency is tried
//! again later without counting as an attempt, until it is older than `event_max_age`. An event
//! whose function was deleted is dropped.
//!
//! A run's log and execution record are stored with the event's settlement (done, or put back
//! for a retry) in one transaction, so an event marked done always has its log in the store. A
//! run cut short by a crash is not settled, and runs again after the restart: delivery is at
//! least once, and the store holds one log per settled run.

use std::time::Duration;

use std::sync::atomic::Ordering;

use ember_stdx::error_chain;
use ember_store::{EventRun, EventSettlement, QueuedEvent};
use tracing::{info, info_span, warn, Instrument};

use crate::report::Verdict;
use crate::sizing::HISTORY;
use crate::{Clock, ExecError, Executor, InvokeRequest, RunRecords};

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
            tokio::spawn(
                async move {
                    run_event(&executor, event).await;
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

async fn run_event(executor: &Executor, event: QueuedEvent) {
    let store = &executor.inner.store;
    let config = &executor.inner.config;
    let clock = &*executor.inner.clock;
    let function = match store
        .function_version(
            &event.account_id,
            &event.function_name,
            &event.function_version,
        )
        .await
    {
        Ok(Some(function)) => function,
        Ok(None) => {
            info!("function or version deleted; its queued event is dropped");
            settle(executor, &event, EventSettlement::Done, None).await;
            return;
        }
        Err(err) => {
            warn!(error = %err, "cannot read the event's function; retrying later");
            let retry = retry_in(clock, event.attempts, THROTTLED_RETRY);
            settle(executor, &event, retry, None).await;
            return;
        }
    };
    let request = InvokeRequest {
        qualifier: (function.version != ember_store::LATEST).then(|| function.version.clone()),
        function,
        request_id: event.event_id.clone(),
        payload: event.payload.clone().into(),
        client_context: None,
        cognito_identity: None,
    };
    match executor.run(request).await {
        Ok((response, records)) => {
            let settlement = if response.verdict == Verdict::Ok {
                EventSettlement::Done
            } else {
                let attempts = event.attempts + 1;
                if attempts > config.event_retries {
                    warn!(attempts, verdict = ?response.verdict, "event failed on every attempt; dropped");
                    EventSettlement::Done
                } else {
                    let delay = config.event_retry_base * 2u32.pow(attempts - 1);
                    info!(attempts, ?delay, verdict = ?response.verdict, "event failed; will retry");
                    retry_in(clock, attempts, delay)
                }
            };
            settle(executor, &event, settlement, Some(&records)).await;
        }
        Err(ExecError::ShuttingDown) => {
            // Left claimed; the next start releases it.
        }
        Err(err) => {
            let age = Duration::from_millis(
                u64::try_from(clock.epoch_ms() - event.created_at_ms).unwrap_or(0),
            );
            let settlement = if age > config.event_max_age {
                warn!(error = %err, "event could not run before its maximum age; dropped");
                EventSettlement::Done
            } else {
                info!(error = %err, "event could not run; will try again");
                retry_in(clock, event.attempts, THROTTLED_RETRY)
            };
            settle(executor, &event, settlement, None).await;
        }
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
) {
    let mut wait = SETTLE_RETRY_FIRST;
    let mut failures = 0_u32;
    loop {
        let run = records.map(|r| EventRun {
            log: &r.log,
            execution: &r.execution,
            keep_executions: HISTORY,
        });
        match executor
            .inner
            .store
            .settle_event(&event.event_id, settlement, run)
            .await
        {
            Ok(()) => {
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
