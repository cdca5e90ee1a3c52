//! Fair sharing of the host's capacity among accounts: weights, fair shares, the optional
//! per-account memory ceiling, and the executions waiting for capacity, per account.
//!
//! # Definitions
//!
//! - An account's **held memory** is the memory of its active VMs, booting ones included: what
//!   it takes of the host's capacity (a VM's memory is reserved whole, whatever runs in it).
//! - The accounts that **want** capacity are those holding memory or with executions waiting
//!   for capacity, and the account asking.
//! - An account's **fair share** is the capacity divided among the accounts that want it, in
//!   proportion to their weights (1 unless `--account-weight` says otherwise):
//!   `share(a) = capacity × w(a) / Σ w(b)`, summed over the accounts that want capacity.
//! - A request of account `a` for `m` MB (the memory of the container it needs) is **within
//!   its share** when `held(a) + m ≤ share(a)` (and the ceiling leaves room for a new VM), and
//!   **above its share** otherwise. An account at or above its share (`held(a) ≥ share(a)`) is
//!   above it for every request. VMs are reserved whole, so an account within its share may
//!   end up a little above it once it has its VM (the request counts, not the VM's size):
//!   otherwise an account holding nothing could never get a VM when the share is less than
//!   one.
//! - The **ceiling** (`--account-memory-mb`), when set, bounds every account's held memory.
//!
//! These are used by [`crate::pool::Pool`]: other accounts' idle VMs are evicted only for a
//! request within its share; a waiting execution whose request is within its share goes before
//! the executions of accounts holding more (per weight); nothing takes an account past the
//! ceiling.

use std::collections::{BTreeMap, HashMap};

/// An account's weight when none is configured.
pub const DEFAULT_WEIGHT: u32 = 1;

/// Weights and the ceiling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FairConfig {
    /// Per-account weights; accounts not named weigh [`DEFAULT_WEIGHT`].
    pub weights: BTreeMap<String, u32>,
    /// The most memory one account may hold, in MB; `None`: no ceiling.
    pub account_memory_mb: Option<u64>,
}

impl FairConfig {
    /// The weight of an account, at least 1.
    pub fn weight(&self, account_id: &str) -> u64 {
        u64::from(
            self.weights
                .get(account_id)
                .copied()
                .unwrap_or(DEFAULT_WEIGHT)
                .max(1),
        )
    }
}

/// One waiting execution, for [`Waiters::remove`]. Tickets are handed out in arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WaitTicket(u64);

/// The executions waiting for capacity, per account, oldest first.
#[derive(Debug, Default)]
pub struct Waiters {
    next: u64,
    by_account: HashMap<String, AccountWaiters>,
    account_of: HashMap<WaitTicket, String>,
}

#[derive(Debug, Default)]
struct AccountWaiters {
    /// Ticket → the memory the execution needs, in MB.
    tickets: BTreeMap<WaitTicket, u64>,
    /// How many wait for each amount, so the smallest is at hand.
    amounts: BTreeMap<u64, usize>,
}

impl Waiters {
    /// Registers an execution of `account_id` needing `memory_mb` as waiting.
    pub fn add(&mut self, account_id: &str, memory_mb: u64) -> WaitTicket {
        self.next += 1;
        let ticket = WaitTicket(self.next);
        let waiting = self.by_account.entry(account_id.to_owned()).or_default();
        waiting.tickets.insert(ticket, memory_mb);
        *waiting.amounts.entry(memory_mb).or_default() += 1;
        self.account_of.insert(ticket, account_id.to_owned());
        ticket
    }

    /// The execution stopped waiting (placed, or given up). Unknown tickets are ignored.
    pub fn remove(&mut self, ticket: WaitTicket) {
        let Some(account) = self.account_of.remove(&ticket) else {
            return;
        };
        if let Some(waiting) = self.by_account.get_mut(&account) {
            if let Some(mb) = waiting.tickets.remove(&ticket) {
                if let Some(n) = waiting.amounts.get_mut(&mb) {
                    *n -= 1;
                    if *n == 0 {
                        waiting.amounts.remove(&mb);
                    }
                }
            }
            if waiting.tickets.is_empty() {
                self.by_account.remove(&account);
            }
        }
    }

    /// Each account with waiting executions: `(account, its oldest ticket, the smallest
    /// amount one of them needs)`.
    pub fn heads(&self) -> impl Iterator<Item = (&str, WaitTicket, u64)> {
        self.by_account.iter().filter_map(|(account, waiting)| {
            let oldest = waiting.tickets.keys().next()?;
            let smallest = waiting.amounts.keys().next()?;
            Some((account.as_str(), *oldest, *smallest))
        })
    }

    /// The oldest waiting execution of an account.
    pub fn head_of(&self, account_id: &str) -> Option<WaitTicket> {
        self.by_account
            .get(account_id)
            .and_then(|w| w.tickets.keys().next().copied())
    }

    /// Executions of an account waiting.
    pub fn count(&self, account_id: &str) -> usize {
        self.by_account
            .get(account_id)
            .map_or(0, |w| w.tickets.len())
    }

    /// Executions waiting, of every account.
    pub fn len(&self) -> usize {
        self.account_of.len()
    }

    /// Whether no execution waits.
    pub fn is_empty(&self) -> bool {
        self.by_account.is_empty()
    }

    /// Accounts with waiting executions.
    pub fn accounts(&self) -> impl Iterator<Item = &str> {
        self.by_account.keys().map(String::as_str)
    }
}

/// `capacity × weight / total_weight`, rounded down; the whole capacity when no one else
/// wants any.
pub fn share_of(capacity_mb: u64, weight: u64, total_weight: u64) -> u64 {
    if total_weight == 0 {
        return capacity_mb;
    }
    let share = u128::from(capacity_mb) * u128::from(weight) / u128::from(total_weight);
    u64::try_from(share).unwrap_or(u64::MAX)
}

/// Whether an account holding `held_a` with weight `w_a` holds less per unit of weight than
/// one holding `held_b` with weight `w_b`: `held_a / w_a < held_b / w_b`, without division.
pub fn holds_less(held_a: u64, w_a: u64, held_b: u64, w_b: u64) -> bool {
    u128::from(held_a) * u128::from(w_b) < u128::from(held_b) * u128::from(w_a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_the_weights() {
        // (capacity, weight, total weight) → share
        let table = [
            (12_288, 1, 2, 6144),
            (12_288, 1, 3, 4096),
            (12_288, 2, 3, 8192),
            (10_000, 1, 3, 3333),
            (10_000, 1, 0, 10_000),
            (u64::MAX, 3, 4, u64::MAX / 4 * 3 + 2),
        ];
        for (capacity, weight, total, share) in table {
            assert_eq!(
                share_of(capacity, weight, total),
                share,
                "{capacity} × {weight} / {total}"
            );
        }
    }

    #[test]
    fn holding_less_is_per_unit_of_weight() {
        assert!(holds_less(2048, 1, 4096, 1));
        assert!(!holds_less(4096, 1, 4096, 1), "equal is not less");
        assert!(
            holds_less(4096, 2, 4096, 1),
            "twice the weight, half the use"
        );
        assert!(!holds_less(8192, 2, 4096, 1));
    }

    #[test]
    fn weights_default_to_one_and_are_at_least_one() {
        let config = FairConfig {
            weights: [("a".to_owned(), 3), ("z".to_owned(), 0)].into(),
            account_memory_mb: None,
        };
        assert_eq!(config.weight("a"), 3);
        assert_eq!(config.weight("b"), 1);
        assert_eq!(config.weight("z"), 1);
    }

    #[test]
    fn waiters_are_kept_per_account_oldest_first() {
        let mut w = Waiters::default();
        let a1 = w.add("a", 1024);
        let b1 = w.add("b", 128);
        let a2 = w.add("a", 512);
        assert_eq!(w.head_of("a"), Some(a1));
        assert_eq!(w.count("a"), 2);
        let mut heads: Vec<_> = w.heads().collect();
        heads.sort();
        assert_eq!(heads, vec![("a", a1, 512), ("b", b1, 128)]);
        w.remove(a2);
        assert_eq!(w.heads().find(|h| h.0 == "a"), Some(("a", a1, 1024)));
        let a2 = w.add("a", 512);
        w.remove(a1);
        assert_eq!(w.head_of("a"), Some(a2));
        w.remove(b1);
        w.remove(b1);
        assert_eq!(w.accounts().collect::<Vec<_>>(), vec!["a"]);
        w.remove(a2);
        assert_eq!(w.heads().count(), 0);
    }
}
