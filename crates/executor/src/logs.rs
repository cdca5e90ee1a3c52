//! Writes invocation logs to the store in batches, off the invocation's path, and prunes them to
//! a bounded number per function.

use std::time::{Duration, Instant};

use ember_store::{NewLog, Store};
use tokio::sync::mpsc;
use tracing::warn;

/// Longest a log waits before it is written.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Most logs written in one transaction.
const BATCH: usize = 512;
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Runs until every sender is gone, writing what it receives.
pub(crate) async fn write_logs(store: Store, mut rx: mpsc::UnboundedReceiver<NewLog>, keep: u32) {
    let mut last_prune = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(log)) => batch.push(log),
                Ok(None) | Err(_) => break,
            }
        }
        if let Err(err) = store.append_logs(&batch).await {
            warn!(error = %err, dropped = batch.len(), "cannot store invocation logs");
        }
        batch.clear();
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            if let Err(err) = store.prune_logs(keep).await {
                warn!(error = %err, "cannot prune invocation logs");
            }
        }
    }
}
