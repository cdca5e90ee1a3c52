//! The fleet over the last minutes, for the console's Fleet plots: a sample of the executor's
//! `FleetView` and start counts every [`INTERVAL`], the last [`KEPT`] of them, so that a page
//! opened now plots the minutes before it (`GET /ember/v1/console/fleet-history`, admin only).
//!
//! Kept only while the console is served (`AppState::with_console`): the sampler task holds a
//! weak reference and ends with the state.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use ember_fleet::{FleetView, PoolKind};

/// How often the fleet is sampled (the Fleet page polls at the same pace).
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Samples kept: ten minutes.
pub const KEPT: usize = 300;

/// One sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Epoch milliseconds.
    pub at_ms: i64,
    pub request_rate: f64,
    pub replenish_count: u32,
    pub warming: u32,
    pub active: u32,
    pub retiring: u32,
    pub capacity_mb: u64,
    pub reserved_mb: u64,
    pub starts: ember_executor::activity::StartCounts,
}

impl Sample {
    /// The sample of `view` and `starts`, taken at `at_ms`.
    pub fn of(view: &FleetView, starts: ember_executor::activity::StartCounts, at_ms: i64) -> Self {
        let count = |kind: PoolKind| {
            u32::try_from(view.vms.iter().filter(|vm| vm.pool == kind).count()).unwrap_or(u32::MAX)
        };
        Self {
            at_ms,
            request_rate: crate::fleet::finite(view.request_rate),
            replenish_count: view.replenish_count,
            warming: count(PoolKind::Warming),
            active: count(PoolKind::Active),
            retiring: count(PoolKind::Retiring),
            capacity_mb: view.capacity_mb,
            reserved_mb: view.reserved_mb,
            starts,
        }
    }
}

/// The last [`KEPT`] samples, oldest first.
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    pub fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    pub fn samples(&self) -> Vec<Sample> {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples.iter().copied().collect()
    }
}

/// Starts sampling `executor`'s fleet into a new history, until the history is dropped.
pub fn start(executor: ember_executor::Executor) -> Arc<History> {
    let history = Arc::new(History::default());
    let weak: Weak<History> = Arc::downgrade(&history);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(history) = weak.upgrade() else {
                return;
            };
            let sample = Sample::of(
                &executor.fleet(),
                executor.start_counts(),
                ember_executor::epoch_ms(),
            );
            history.push(sample);
        }
    });
    history
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: i64) -> Sample {
        Sample {
            at_ms,
            request_rate: 0.0,
            replenish_count: 1,
            warming: 1,
            active: 0,
            retiring: 0,
            capacity_mb: 1024,
            reserved_mb: 0,
            starts: Default::default(),
        }
    }

    #[test]
    fn the_last_ten_minutes_are_kept_oldest_first() {
        let history = History::default();
        for i in 0..(KEPT as i64 + 5) {
            history.push(sample(i));
        }
        let kept = history.samples();
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept.first().unwrap().at_ms, 5);
        assert_eq!(kept.last().unwrap().at_ms, KEPT as i64 + 4);
    }
}
