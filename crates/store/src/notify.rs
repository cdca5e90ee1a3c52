//! Cache invalidation across servers sharing a PostgreSQL store: every write that changes what
//! [`crate::cache`] keeps about a function (its settings, versions, aliases, URLs, policies,
//! reserved concurrency, egress, or the function itself) sends `NOTIFY ember_cache` in the
//! writing transaction, so PostgreSQL delivers it only once the write has committed; each server
//! `LISTEN`s on its own connection and drops exactly the entries of the function named.
//!
//! A listener that loses its connection may have missed notifications: until it has listened
//! again, the cache keeps nothing ([`crate::cache::Cache::set_listening`]), and once it has, it
//! starts empty. A connection that dies silently (a host cut off without a reset) is found by a
//! ping: every [`PING_EVERY`] the listener notifies itself through the store's pool and, if the
//! ping has not come back within [`PING_TIMEOUT`], treats the connection as lost. The cache's
//! time-based expiry ([`crate::SHARED_MAX_AGE`]) stays as a last safety net.
//!
//! On SQLite (one server per data dir) nothing is sent and nothing listens: every write goes
//! through this process's `Store`, which invalidates its own cache.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use sqlx::AnyPool;

use crate::cache::Cache;
use crate::Result;

/// The channel the store's writes notify and every server listens on.
pub(crate) const CHANNEL: &str = "ember_cache";

/// How often the listener checks its connection with a ping to itself.
pub const PING_EVERY: Duration = Duration::from_secs(2);

/// A ping not back within this is a lost connection: the cache is emptied and keeps nothing
/// until the listener is back. A silently dead connection is thus found within
/// `PING_EVERY + PING_TIMEOUT + PING_CHECK` (5.5 s) of the last ping that came back.
pub const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// How often the listener looks at its ping.
const PING_CHECK: Duration = Duration::from_millis(500);

/// How long the listener waits before connecting again after a failure.
const RECONNECT_DELAY: Duration = Duration::from_millis(200);

/// What a notification says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// A function changed: forget it (all its versions, URLs and policies).
    Function {
        host_id: String,
        account_id: String,
        name: String,
    },
    /// A listener's ping to itself.
    Ping { host_id: String, nonce: u64 },
}

impl Message {
    /// The payload: fields separated by tabs (no account id, function name or host id holds
    /// one), well within PostgreSQL's 8000-byte bound on a payload.
    pub(crate) fn payload(&self) -> String {
        match self {
            Self::Function {
                host_id,
                account_id,
                name,
            } => format!("f\t{host_id}\t{account_id}\t{name}"),
            Self::Ping { host_id, nonce } => format!("p\t{host_id}\t{nonce}"),
        }
    }

    pub(crate) fn parse(payload: &str) -> Option<Self> {
        let mut fields = payload.split('\t');
        let message = match (fields.next()?, fields.next()?) {
            ("f", host_id) => Self::Function {
                host_id: host_id.to_owned(),
                account_id: fields.next()?.to_owned(),
                name: fields.next()?.to_owned(),
            },
            ("p", host_id) => Self::Ping {
                host_id: host_id.to_owned(),
                nonce: fields.next()?.parse().ok()?,
            },
            _ => return None,
        };
        fields.next().is_none().then_some(message)
    }
}

/// Notifies the other servers that a function changed, on `conn`: inside the write's
/// transaction (delivered when it commits, never if it rolls back), or right after a
/// single-statement write on the pool. Does nothing on SQLite.
pub(crate) async fn function_changed<'e, E>(
    conn: E,
    postgres: bool,
    host_id: &str,
    account_id: &str,
    name: &str,
) -> Result<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    if !postgres {
        return Ok(());
    }
    let payload = Message::Function {
        host_id: host_id.to_owned(),
        account_id: account_id.to_owned(),
        name: name.to_owned(),
    }
    .payload();
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(())
}

/// Stops the listener when the last `Store` handle holding it goes (or at [`crate::Store::close`]).
#[derive(Debug)]
pub(crate) struct ListenerGuard(tokio::task::AbortHandle);

impl ListenerGuard {
    pub(crate) fn stop(&self) {
        self.0.abort();
    }
}

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts this server's listener for `cache`, on its own connection to `url`; `pool` sends the
/// pings. The cache keeps nothing until the listener is listening.
pub(crate) fn spawn_listener(
    url: String,
    pool: AnyPool,
    cache: &Arc<Cache>,
    host_id: Arc<str>,
) -> ListenerGuard {
    cache.set_listening(false);
    let task = tokio::spawn(listen(url, pool, Arc::downgrade(cache), host_id));
    ListenerGuard(task.abort_handle())
}

async fn listen(url: String, pool: AnyPool, cache: Weak<Cache>, host_id: Arc<str>) {
    let mut nonce = 0_u64;
    let mut failures = 0_u32;
    loop {
        let ended = listen_once(&url, &pool, &cache, &host_id, &mut nonce).await;
        match cache.upgrade() {
            Some(cache) => cache.set_listening(false),
            None => return,
        }
        match ended {
            Ended::StoreGone => return,
            Ended::Lost(reason) => {
                if failures == 0 {
                    tracing::warn!(%reason, "cannot listen for the store's cache notifications; caching nothing until it can");
                }
                failures = failures.saturating_add(1);
            }
            Ended::Listening => failures = 0,
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

enum Ended {
    /// Every `Store` handle is gone.
    StoreGone,
    /// Could not listen (the reason).
    Lost(String),
    /// Was listening, then lost the connection (logged as it happened).
    Listening,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn listen_once(
    url: &str,
    pool: &AnyPool,
    cache: &Weak<Cache>,
    host_id: &Arc<str>,
    nonce: &mut u64,
) -> Ended {
    let mut listener = match PgListener::connect(url).await {
        Ok(listener) => listener,
        Err(err) => return Ended::Lost(err.to_string()),
    };
    if let Err(err) = listener.listen(CHANNEL).await {
        return Ended::Lost(err.to_string());
    }
    // From here on every committed write's notification reaches this connection: what was
    // cached before (while notifications may have been missed) goes, and caching resumes.
    match cache.upgrade() {
        Some(cache) => cache.set_listening(true),
        None => return Ended::StoreGone,
    }
    tracing::debug!("listening for the store's cache notifications");
    // The receiver runs in a task of its own, never cancelled mid-message (`try_recv` is not
    // cancel safe); the last ping nonce it saw come back is in `pong`.
    let (pong_tx, pong) = tokio::sync::watch::channel(0_u64);
    let mut receiver = tokio::spawn(receive(
        listener,
        cache.clone(),
        Arc::clone(host_id),
        pong_tx,
    ));
    let _stop_receiver = AbortOnDrop(receiver.abort_handle());
    let mut tick = tokio::time::interval(PING_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The ping sent and not yet back: its nonce and when it was sent; and when the last was sent.
    let mut awaited: Option<(u64, Instant)> = None;
    let mut last_sent: Option<Instant> = None;
    loop {
        tokio::select! {
            ended = &mut receiver => return ended.unwrap_or(Ended::Listening),
            _ = tick.tick() => {
                if cache.strong_count() == 0 {
                    return Ended::StoreGone;
                }
                if let Some((sent_nonce, sent)) = awaited {
                    if *pong.borrow() >= sent_nonce {
                        awaited = None;
                    } else if sent.elapsed() >= PING_TIMEOUT {
                        tracing::warn!(
                            after = ?sent.elapsed(),
                            "the store's cache notifications went silent; caching nothing until they are back"
                        );
                        return Ended::Listening;
                    }
                }
                if awaited.is_some() || last_sent.is_some_and(|at| at.elapsed() < PING_EVERY) {
                    continue;
                }
                *nonce += 1;
                let payload = Message::Ping { host_id: host_id.to_string(), nonce: *nonce }.payload();
                let sent = tokio::time::timeout(
                    PING_TIMEOUT,
                    sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(payload).execute(pool),
                )
                .await;
                match sent {
                    Ok(Ok(_)) => {
                        let now = Instant::now();
                        awaited = Some((*nonce, now));
                        last_sent = Some(now);
                    }
                    Ok(Err(err)) => {
                        tracing::warn!(error = %err, "cannot ping the store's cache notifications; caching nothing until they are back");
                        return Ended::Listening;
                    }
                    Err(_) => {
                        tracing::warn!("the store did not take a ping of its cache notifications; caching nothing until they are back");
                        return Ended::Listening;
                    }
                }
            }
        }
    }
}

/// Applies notifications to the cache until the connection is lost or the store is gone.
async fn receive(
    mut listener: PgListener,
    cache: Weak<Cache>,
    host_id: Arc<str>,
    pong: tokio::sync::watch::Sender<u64>,
) -> Ended {
    loop {
        let notification = match listener.try_recv().await {
            Ok(Some(notification)) => notification,
            Ok(None) => {
                tracing::warn!("lost the store's cache notifications (connection closed); caching nothing until they are back");
                return Ended::Listening;
            }
            Err(err) => {
                tracing::warn!(error = %err, "lost the store's cache notifications; caching nothing until they are back");
                return Ended::Listening;
            }
        };
        let Some(cache) = cache.upgrade() else {
            return Ended::StoreGone;
        };
        match Message::parse(notification.payload()) {
            Some(Message::Function {
                host_id: from,
                account_id,
                name,
            }) => {
                // This server's own writes invalidated its cache already.
                if *from != *host_id {
                    cache.invalidate_function(&account_id, &name);
                }
            }
            Some(Message::Ping {
                host_id: from,
                nonce,
            }) => {
                if *from == *host_id {
                    pong.send_if_modified(|seen| {
                        let newer = nonce > *seen;
                        if newer {
                            *seen = nonce;
                        }
                        newer
                    });
                }
            }
            None => {
                // From a newer Ember, say: forgetting everything is always correct.
                tracing::debug!(
                    payload = notification.payload(),
                    "unknown cache notification; cache emptied"
                );
                cache.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Message;

    #[test]
    fn payloads_round_trip_and_strangers_are_refused() {
        let cases = [
            Message::Function {
                host_id: "h-1".into(),
                account_id: "123456789012".into(),
                name: "my_fn-2".into(),
            },
            Message::Ping {
                host_id: "h-2".into(),
                nonce: 7,
            },
        ];
        for message in cases {
            assert_eq!(Message::parse(&message.payload()), Some(message));
        }
        for stranger in [
            "",
            "f",
            "f\th",
            "f\th\ta",
            "f\th\ta\tn\textra",
            "p\th\tx",
            "x\th",
        ] {
            assert_eq!(Message::parse(stranger), None, "{stranger:?}");
        }
    }
}
