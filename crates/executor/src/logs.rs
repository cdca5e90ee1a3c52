//! Writes invocation logs to the store in batches, off the invocation's path, and prunes them to
//! a bounded number per function. A batch the store refuses (its disk full, say) is dropped and
//! counted: the invocations it logged have been answered already.

use std::time::{Duration, Instant};

use ember_store::{NewLog, Store};

use crate::batch::{Batcher, Dropped};
use tracing::warn;

/// Longest a log waits before it is written.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Most logs written in one transaction.
const BATCH: usize = 512;
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// A writer of invocation logs: batches, and prunes every [`PRUNE_EVERY`].
pub(crate) fn start(store: Store, keep: u32) -> Batcher<NewLog> {
    let mut last_prune = Instant::now();
    let dropped = std::sync::Arc::new(Dropped::new("log"));
    Batcher::start(FLUSH_EVERY, BATCH, move |batch: Vec<NewLog>| {
        let store = store.clone();
        let dropped = dropped.clone();
        let prune = last_prune.elapsed() >= PRUNE_EVERY;
        if prune {
            last_prune = Instant::now();
        }
        async move {
            if let Err(err) = store.append_logs(&batch).await {
                dropped.report(batch.len(), &err);
            }
            if prune {
                if let Err(err) = store.prune_logs(keep).await {
                    warn!(error = %err, "cannot prune invocation logs");
                }
            }
        }
    })
}
