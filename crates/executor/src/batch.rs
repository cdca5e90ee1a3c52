//! A channel to a background writer that stores items in batches, and can be asked to flush:
//! what the executor logs and measures reaches the store off the invocation's path, and nothing
//! accepted is lost when the server stops.

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

enum Message<T> {
    Item(T),
    Flush(oneshot::Sender<()>),
}

/// The sending side. Cheap to clone.
#[derive(Debug)]
pub(crate) struct Batcher<T> {
    tx: mpsc::UnboundedSender<Message<T>>,
}

impl<T> Clone for Batcher<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Message<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Item(_) => f.write_str("Item"),
            Self::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl<T: Send + 'static> Batcher<T> {
    /// Starts a writer that calls `write` with batches of at most `max` items, each written at
    /// most `window` after its first item arrived.
    pub(crate) fn start<F, Fut>(window: Duration, max: usize, mut write: F) -> Self
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Message<T>>();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max);
            while let Some(first) = rx.recv().await {
                let mut flushed = Vec::new();
                match first {
                    Message::Item(item) => batch.push(item),
                    Message::Flush(done) => flushed.push(done),
                }
                let deadline = tokio::time::Instant::now() + window;
                while batch.len() < max && flushed.is_empty() {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(Message::Item(item))) => batch.push(item),
                        Ok(Some(Message::Flush(done))) => flushed.push(done),
                        Ok(None) | Err(_) => break,
                    }
                }
                if !batch.is_empty() {
                    write(std::mem::replace(&mut batch, Vec::with_capacity(max))).await;
                }
                for done in flushed {
                    let _ = done.send(());
                }
            }
        });
        Self { tx }
    }

    /// Queues an item for the next batch.
    pub(crate) fn send(&self, item: T) {
        let _ = self.tx.send(Message::Item(item));
    }

    /// Returns once everything queued before the call is written.
    pub(crate) async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).is_ok() {
            let _ = written.await;
        }
    }
}

/// Says that a writer could not store a batch: counts the items dropped in
/// `ember_records_dropped_total{kind}` and warns, at most once every [`WARN_EVERY`] per kind, so
/// a full disk under load does not flood the server's log.
#[derive(Debug)]
pub(crate) struct Dropped {
    kind: &'static str,
    /// Epoch milliseconds of the last warning; 0 before the first.
    last_warned_ms: AtomicI64,
    /// Items dropped since the last warning.
    since_warned: AtomicU64,
}

/// The least time between two warnings of dropped items of one kind.
const WARN_EVERY: Duration = Duration::from_secs(10);

impl Dropped {
    pub(crate) fn new(kind: &'static str) -> Self {
        Self {
            kind,
            last_warned_ms: AtomicI64::new(0),
            since_warned: AtomicU64::new(0),
        }
    }

    pub(crate) fn report(&self, count: usize, err: &ember_store::StoreError) {
        metrics::counter!("ember_records_dropped_total", "kind" => self.kind)
            .increment(count as u64);
        let dropped = self.since_warned.fetch_add(count as u64, Ordering::Relaxed) + count as u64;
        let now = crate::epoch_ms();
        let last = self.last_warned_ms.load(Ordering::Relaxed);
        let every = i64::try_from(WARN_EVERY.as_millis()).unwrap_or(i64::MAX);
        if now.saturating_sub(last) >= every
            && self
                .last_warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.since_warned.fetch_sub(dropped, Ordering::Relaxed);
            tracing::warn!(
                kind = self.kind,
                dropped,
                error = %ember_stdx::error_chain(err),
                "cannot store records; dropped (counted in ember_records_dropped_total)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn batches_and_flushes_everything_queued() {
        let written: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let sink = written.clone();
        let batcher = Batcher::start(Duration::from_secs(3600), 4, move |batch| {
            let sink = sink.clone();
            async move { sink.lock().unwrap().push(batch) }
        });
        for i in 0..6 {
            batcher.send(i);
        }
        batcher.flush().await;
        let batches = written.lock().unwrap().clone();
        assert_eq!(batches, vec![vec![0, 1, 2, 3], vec![4, 5]]);
        // A flush with nothing queued returns at once.
        batcher.flush().await;
        assert_eq!(written.lock().unwrap().len(), 2);
    }
}
