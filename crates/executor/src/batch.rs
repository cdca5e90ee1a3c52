//! A channel to a background writer that stores items in batches, and can be asked to flush:
//! what the executor logs and measures reaches the store off the invocation's path, and nothing
//! accepted is lost when the server stops.

use std::future::Future;
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
