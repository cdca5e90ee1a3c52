//! Concurrency limits counted across the servers sharing one PostgreSQL store (issue 20 part
//! 2): a function's reserved concurrency and the account's concurrency limit hold however many
//! servers run the function.
//!
//! Each server holds blocks of slots leased in the store ([`ember_store::LeaseScope`]; the
//! store takes them under its write lock, so the slots of all servers never exceed the limit)
//! and counts its running executions against them here, in memory. An execution that finds a
//! free slot of its scope on this server starts without a word to the database: the warm path
//! in steady state. Only when this server's slots of the scope are all in use does it go to the
//! database, synchronously, for more:
//!
//! - the account's pool (functions without reserved concurrency) in blocks of up to
//!   [`POOL_BLOCK`] slots, kept while the server is busy (at most one block spare) and returned
//!   after [`POOL_LINGER`] without use: the limit is large (1000 by default) and a few spare
//!   slots per server cost the others little;
//! - a function's reserved concurrency one slot at a time, returned after
//!   [`RESERVED_LINGER`] without use: reservations are small (often 1), and a slot held spare
//!   here would throttle the function on the others.
//!
//! A background task returns spare slots and renews this server's rows every [`RENEW_EVERY`]
//! for [`LEASE_TTL`]: the slots of a server that dies (or loses the database) count for
//! nothing once [`LEASE_TTL`] has passed since its last renewal. A server's start releases
//! what its data dir's previous run held; its shutdown releases the rest.
//!
//! The embedded SQLite default has one server: the executor's in-memory counting is the whole
//! story there and none of this runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ember_store::{LeaseScope, Store, StoreError};
use tracing::warn;

use crate::{epoch_ms, lock};

/// How long a lease row lasts past its last renewal: a dead server's slots are free within
/// this (plus [`RENEW_EVERY`] for a row renewed just before the death, which the TTL covers).
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often a server renews its rows.
pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How often spare slots are looked at.
const TRIM_EVERY: Duration = Duration::from_millis(100);
/// The account pool's slots are taken in blocks of up to this many.
pub(crate) const POOL_BLOCK: u32 = 8;
/// Spare slots of the account's pool go back after this long without an execution starting
/// or ending in the scope.
pub(crate) const POOL_LINGER: Duration = Duration::from_secs(5);
/// Spare slots of a reserved concurrency go back after this long without use.
pub(crate) const RESERVED_LINGER: Duration = Duration::from_millis(500);
/// How long a shutdown waits for the store to take this server's leases back.
const RELEASE_WAIT: Duration = Duration::from_secs(2);
/// A take whose fresh slots other executions of this server used first is tried this many
/// times before the execution is throttled.
const TAKE_ATTEMPTS: usize = 3;

/// The slots this server holds, by scope.
#[derive(Debug)]
pub(crate) struct HostSlots {
    store: Store,
    scopes: Mutex<HashMap<LeaseScope, Slots>>,
}

#[derive(Debug)]
struct Slots {
    /// Leased in the store.
    held: u32,
    /// Running executions.
    used: u32,
    /// When an execution last started or ended in the scope.
    last_change: Instant,
}

/// One running execution's slot, given back to this server's spare slots when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    slots: Arc<HostSlots>,
    scope: LeaseScope,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut scopes = lock(&self.slots.scopes);
        if let Some(s) = scopes.get_mut(&self.scope) {
            s.used = s.used.saturating_sub(1);
            s.last_change = Instant::now();
        }
    }
}

impl HostSlots {
    /// Releases what this data dir's previous run held, then starts the task that returns
    /// spare slots and renews the rest.
    pub(crate) async fn start(store: Store) -> Result<Arc<Self>, StoreError> {
        let released = store.release_concurrency_leases().await?;
        if released > 0 {
            tracing::info!(
                released,
                "released concurrency leases a previous server left"
            );
        }
        let slots = Arc::new(Self {
            store,
            scopes: Mutex::new(HashMap::new()),
        });
        tokio::spawn(maintain(Arc::downgrade(&slots)));
        Ok(slots)
    }

    /// A slot of `scope`, whose limit across every server is `limit`: one of this server's
    /// spare slots, or else fresh ones from the store. `None`: the limit is reached.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        scope: &LeaseScope,
        limit: u32,
    ) -> Result<Option<Slot>, StoreError> {
        for _ in 0..TAKE_ATTEMPTS {
            if self.use_spare(scope) {
                return Ok(Some(Slot {
                    slots: Arc::clone(self),
                    scope: scope.clone(),
                }));
            }
            let want = if scope.function_name.is_some() {
                1
            } else {
                POOL_BLOCK.min(limit)
            };
            metrics::counter!(
                "ember_concurrency_lease_takes_total",
                "scope" => if scope.function_name.is_some() { "reserved" } else { "account" }
            )
            .increment(1);
            // In a task of its own: if this execution's future is dropped mid-take, the slots
            // the store granted are still counted here (and returned as spare), never leaked.
            let this = Arc::clone(self);
            let taken_scope = scope.clone();
            let granted = tokio::spawn(async move {
                let granted = this
                    .store
                    .take_concurrency(
                        &taken_scope,
                        want,
                        limit,
                        epoch_ms(),
                        LEASE_TTL.as_millis() as i64,
                    )
                    .await?;
                if granted > 0 {
                    let mut scopes = lock(&this.scopes);
                    let s = scopes.entry(taken_scope).or_insert_with(Slots::new);
                    s.held += granted;
                    s.last_change = Instant::now();
                }
                Ok::<u32, StoreError>(granted)
            })
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
            if granted == 0 {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Takes one of this server's spare slots of `scope`, if it has one.
    fn use_spare(&self, scope: &LeaseScope) -> bool {
        let mut scopes = lock(&self.scopes);
        match scopes.get_mut(scope) {
            Some(s) if s.used < s.held => {
                s.used += 1;
                s.last_change = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// Gives back every slot this server holds (at shutdown, once no execution runs), waiting
    /// for the store at most [`RELEASE_WAIT`]: a store that does not answer must not hold the
    /// shutdown up, and the slots expire after [`LEASE_TTL`] anyway.
    pub(crate) async fn release_all(&self) {
        let held = {
            let mut scopes = lock(&self.scopes);
            let held = scopes.values().any(|s| s.held > 0);
            scopes.clear();
            held
        };
        if !held {
            return;
        }
        match tokio::time::timeout(RELEASE_WAIT, self.store.release_concurrency_leases()).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                warn!(error = %err, "cannot release this server's concurrency leases; they expire")
            }
            Err(_) => warn!("the store did not answer; this server's concurrency leases expire"),
        }
    }

    /// Returns the spare slots due back (see the module's doc), and answers what went back.
    async fn trim(&self, now: Instant) -> Vec<(LeaseScope, u32)> {
        let returns: Vec<(LeaseScope, u32)> = {
            let mut scopes = lock(&self.scopes);
            let returns = scopes
                .iter_mut()
                .filter_map(|(scope, s)| {
                    let give = spare_due(scope, s, now);
                    s.held -= give;
                    (give > 0).then(|| (scope.clone(), give))
                })
                .collect();
            scopes.retain(|_, s| s.held > 0 || s.used > 0);
            returns
        };
        let mut returned = Vec::with_capacity(returns.len());
        for (scope, give) in returns {
            match self.store.return_concurrency(&scope, give).await {
                Ok(()) => returned.push((scope, give)),
                Err(err) => {
                    // Still held in the store: count them here again, to return later.
                    warn!(error = %err, "cannot return spare concurrency slots; will try again");
                    let mut scopes = lock(&self.scopes);
                    let s = scopes.entry(scope).or_insert_with(Slots::new);
                    s.held += give;
                }
            }
        }
        returned
    }

    /// Whether this server holds any slot (and so has rows to renew).
    fn holds_any(&self) -> bool {
        lock(&self.scopes).values().any(|s| s.held > 0)
    }
}

impl Slots {
    fn new() -> Self {
        Self {
            held: 0,
            used: 0,
            last_change: Instant::now(),
        }
    }
}

/// How many of `s`'s spare slots go back at `now`: all of them once the scope has been still
/// for its linger; while it is busy, the account pool's beyond one spare block.
fn spare_due(scope: &LeaseScope, s: &Slots, now: Instant) -> u32 {
    let spare = s.held.saturating_sub(s.used);
    let linger = if scope.function_name.is_some() {
        RESERVED_LINGER
    } else {
        POOL_LINGER
    };
    if now.saturating_duration_since(s.last_change) >= linger {
        spare
    } else if scope.function_name.is_none() {
        spare.saturating_sub(POOL_BLOCK)
    } else {
        0
    }
}

/// Returns spare slots every [`TRIM_EVERY`] and renews this server's rows every
/// [`RENEW_EVERY`], until the executor is gone.
async fn maintain(slots: Weak<HostSlots>) {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewed = Instant::now();
    loop {
        tick.tick().await;
        let Some(slots) = slots.upgrade() else { return };
        let now = Instant::now();
        slots.trim(now).await;
        if now.saturating_duration_since(renewed) >= RENEW_EVERY && slots.holds_any() {
            match slots
                .store
                .renew_concurrency_leases(epoch_ms(), LEASE_TTL.as_millis() as i64)
                .await
            {
                Ok(_) => renewed = now,
                Err(err) => warn!(
                    error = %err,
                    "cannot renew this server's concurrency leases; other servers may take \
                     their slots once they expire"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(function: Option<&str>) -> LeaseScope {
        LeaseScope {
            account_id: "a".into(),
            function_name: function.map(Into::into),
        }
    }

    #[test]
    fn spare_slots_go_back_after_their_linger() {
        let start = Instant::now();
        let s = |held, used| Slots {
            held,
            used,
            last_change: start,
        };
        let reserved = scope(Some("f"));
        let pool = scope(None);
        // (scope, held, used, time since the last change, returned)
        let cases = [
            (&reserved, 1, 1, Duration::from_secs(60), 0),
            (&reserved, 1, 0, Duration::ZERO, 0),
            (&reserved, 1, 0, RESERVED_LINGER, 1),
            (&reserved, 3, 1, RESERVED_LINGER, 2),
            (&pool, 8, 0, RESERVED_LINGER, 0),
            (&pool, 8, 0, POOL_LINGER, 8),
            (&pool, 30, 10, Duration::ZERO, 30 - 10 - POOL_BLOCK),
            (&pool, 12, 10, Duration::ZERO, 0),
            (&pool, 12, 10, POOL_LINGER, 2),
        ];
        for (scope, held, used, after, returned) in cases {
            assert_eq!(
                spare_due(scope, &s(held, used), start + after),
                returned,
                "{scope:?} held {held} used {used} after {after:?}"
            );
        }
    }
}
