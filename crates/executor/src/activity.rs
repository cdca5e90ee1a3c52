//! What the web console lists beside each function: its invocations and errors over the last
//! hour, counted on this server in one-minute buckets (in memory: a restart starts the count
//! anew, and each server of a shared store counts its own), and how this server's executions
//! found their containers (warm, a new container, a new VM) since it started.
//!
//! Pure bookkeeping behind one mutex, taken once per execution for a hash-map update: no I/O,
//! nothing on the warm path but that.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::StartKind;

/// The window counted: 60 one-minute buckets.
pub const WINDOW_MINUTES: usize = 60;
const MINUTE_MS: i64 = 60_000;

/// A function's count over the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionActivity {
    pub function_name: String,
    pub invocations: u64,
    /// Executions that ended in an error, a timeout or running out of memory.
    pub errors: u64,
}

/// Executions by how they found their container, since the server started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StartCounts {
    pub warm: u64,
    pub cold_container: u64,
    pub cold_vm: u64,
}

/// One minute of a function's executions.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// The minute (epoch milliseconds / 60,000) this bucket counts; a stale one counts nothing.
    minute: i64,
    invocations: u64,
    errors: u64,
}

/// The counts (see the module's doc).
#[derive(Debug, Default)]
pub struct Activity {
    /// By (account, function): a ring of buckets indexed by minute.
    functions: Mutex<HashMap<(String, String), [Bucket; WINDOW_MINUTES]>>,
    warm: AtomicU64,
    cold_container: AtomicU64,
    cold_vm: AtomicU64,
}

impl Activity {
    /// Counts an execution of `function_name` that started at `at_ms`.
    pub fn record(
        &self,
        account_id: &str,
        function_name: &str,
        start: StartKind,
        error: bool,
        at_ms: i64,
    ) {
        let counter = match start {
            StartKind::Warm => &self.warm,
            StartKind::ColdContainer => &self.cold_container,
            StartKind::ColdVm => &self.cold_vm,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let minute = at_ms.div_euclid(MINUTE_MS);
        let mut functions = crate::lock(&self.functions);
        let ring = functions
            .entry((account_id.to_owned(), function_name.to_owned()))
            .or_insert([Bucket::default(); WINDOW_MINUTES]);
        let bucket = &mut ring[slot(minute)];
        if bucket.minute != minute {
            *bucket = Bucket {
                minute,
                ..Bucket::default()
            };
        }
        bucket.invocations += 1;
        bucket.errors += u64::from(error);
    }

    /// The account's functions that ran in the hour before `now_ms`, by name. Functions
    /// whose last execution is older are dropped from memory on the way.
    pub fn of_account(&self, account_id: &str, now_ms: i64) -> Vec<FunctionActivity> {
        let now = now_ms.div_euclid(MINUTE_MS);
        let first = now - WINDOW_MINUTES as i64 + 1;
        let mut functions = crate::lock(&self.functions);
        functions.retain(|_, ring| ring.iter().any(|b| b.minute >= first));
        let mut out: Vec<FunctionActivity> = functions
            .iter()
            .filter(|((account, _), _)| account == account_id)
            .map(|((_, name), ring)| {
                let live = ring.iter().filter(|b| (first..=now).contains(&b.minute));
                let (invocations, errors) =
                    live.fold((0, 0), |(i, e), b| (i + b.invocations, e + b.errors));
                FunctionActivity {
                    function_name: name.clone(),
                    invocations,
                    errors,
                }
            })
            .filter(|a| a.invocations > 0)
            .collect();
        out.sort_by(|a, b| a.function_name.cmp(&b.function_name));
        out
    }

    /// Executions by start kind since the server started.
    pub fn starts(&self) -> StartCounts {
        StartCounts {
            warm: self.warm.load(Ordering::Relaxed),
            cold_container: self.cold_container.load(Ordering::Relaxed),
            cold_vm: self.cold_vm.load(Ordering::Relaxed),
        }
    }
}

fn slot(minute: i64) -> usize {
    // rem_euclid of a positive modulus is in [0, WINDOW_MINUTES).
    minute.rem_euclid(WINDOW_MINUTES as i64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn counts(activity: &Activity, account: &str, now: i64) -> Vec<(String, u64, u64)> {
        activity
            .of_account(account, now)
            .into_iter()
            .map(|a| (a.function_name, a.invocations, a.errors))
            .collect()
    }

    #[test]
    fn an_hour_of_invocations_and_errors_per_function_and_account() {
        let a = Activity::default();
        let t0 = 1_000 * HOUR;
        a.record("111", "f", StartKind::ColdVm, false, t0);
        a.record("111", "f", StartKind::Warm, true, t0 + 1_000);
        a.record("111", "g", StartKind::Warm, false, t0 + 30 * 60_000);
        a.record("222", "f", StartKind::ColdContainer, true, t0);
        assert_eq!(
            counts(&a, "111", t0 + 30 * 60_000),
            vec![("f".into(), 2, 1), ("g".into(), 1, 0)]
        );
        assert_eq!(counts(&a, "222", t0), vec![("f".into(), 1, 1)]);
        assert_eq!(counts(&a, "333", t0), vec![]);
        // An hour on, f's minute has left the window; g's has not.
        assert_eq!(counts(&a, "111", t0 + HOUR), vec![("g".into(), 1, 0)]);
        // And then g's too; nothing is kept of either.
        assert_eq!(counts(&a, "111", t0 + 2 * HOUR), vec![]);
        assert!(crate::lock(&a.functions).is_empty());
        assert_eq!(
            a.starts(),
            StartCounts {
                warm: 2,
                cold_container: 1,
                cold_vm: 1
            }
        );
    }

    #[test]
    fn a_bucket_reused_an_hour_later_starts_from_zero() {
        let a = Activity::default();
        let t0 = 7 * HOUR;
        for _ in 0..5 {
            a.record("1", "f", StartKind::Warm, true, t0);
        }
        // Same slot of the ring, one window later.
        a.record("1", "f", StartKind::Warm, false, t0 + HOUR);
        assert_eq!(counts(&a, "1", t0 + HOUR), vec![("f".into(), 1, 0)]);
    }
}
