//! The worker that runs `Event` invocations from the store's durable queue.
//!
//! As in Lambda, an event whose execution ends in a function error (an error the function
//! reported, a timeout, an out-of-memory kill, a crash) is retried up to
//! [`ExecutorConfig::event_retries`](crate::ExecutorConfig) times, waiting `event_retry_base`
//! and then twice that. An event that cannot start for lack of capacity or concurrency is tried
//! again later without counting as an attempt, until it is older than `event_max_age`. An event
//! whose function was deleted is dropped.

use std::time::Duration;

use ember_store::QueuedEvent;
use tracing::{info, info_span, warn, Instrument};

use crate::report::Verdict;
use crate::{epoch_ms, ExecError, Executor, InvokeRequest};

/// Events run at once, at most.
const PARALLEL: usize = 16;
/// How soon a throttled event is tried again.
const THROTTLED_RETRY: Duration = Duration::from_secs(1);
/// How often the queue is polled when nothing wakes the worker (a safety net).
const POLL: Duration = Duration::from_secs(5);

pub(crate) async fn run_worker(executor: Executor) {
    let running = std::sync::Arc::new(tokio::sync::Semaphore::new(PARALLEL));
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
                .claim_due_events(epoch_ms(), free)
                .await
            {
                Ok(due) => due,
                Err(err) => {
                    warn!(error = %err, "cannot read the event queue");
                    Vec::new()
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
                Duration::from_millis(u64::try_from(due - epoch_ms()).unwrap_or(0)).min(POLL)
            }
            _ => POLL,
        };
        let _ = tokio::time::timeout(wait, executor.inner.events_queued.notified()).await;
    }
}

async fn run_event(executor: &Executor, event: QueuedEvent) {
    let store = &executor.inner.store;
    let config = &executor.inner.config;
    let function = match store
        .function(&event.account_id, &event.function_name)
        .await
    {
        Ok(Some(function)) => function,
        Ok(None) => {
            info!("function deleted; its queued event is dropped");
            let _ = store.finish_event(&event.event_id).await;
            return;
        }
        Err(err) => {
            warn!(error = %err, "cannot read the event's function; retrying later");
            reschedule(executor, &event, event.attempts, THROTTLED_RETRY).await;
            return;
        }
    };
    let request = InvokeRequest {
        function,
        request_id: event.event_id.clone(),
        payload: event.payload.clone().into(),
        client_context: None,
        cognito_identity: None,
    };
    match executor.invoke(request).await {
        Ok(response) if response.verdict == Verdict::Ok => {
            let _ = store.finish_event(&event.event_id).await;
        }
        Ok(response) => {
            let attempts = event.attempts + 1;
            if attempts > config.event_retries {
                warn!(attempts, verdict = ?response.verdict, "event failed on every attempt; dropped");
                let _ = store.finish_event(&event.event_id).await;
            } else {
                let delay = config.event_retry_base * 2u32.pow(attempts - 1);
                info!(attempts, ?delay, verdict = ?response.verdict, "event failed; will retry");
                reschedule(executor, &event, attempts, delay).await;
            }
        }
        Err(ExecError::ShuttingDown) => {
            // Left claimed; the next start releases it.
        }
        Err(err) => {
            let age =
                Duration::from_millis(u64::try_from(epoch_ms() - event.created_at_ms).unwrap_or(0));
            if age > config.event_max_age {
                warn!(error = %err, "event could not run before its maximum age; dropped");
                let _ = store.finish_event(&event.event_id).await;
            } else {
                info!(error = %err, "event could not run; will try again");
                reschedule(executor, &event, event.attempts, THROTTLED_RETRY).await;
            }
        }
    }
}

async fn reschedule(executor: &Executor, event: &QueuedEvent, attempts: u32, delay: Duration) {
    let at = epoch_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
    if let Err(err) = executor
        .inner
        .store
        .reschedule_event(&event.event_id, attempts, at)
        .await
    {
        warn!(error = %err, "cannot reschedule an event");
    }
}
