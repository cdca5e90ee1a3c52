//! Automatic resource sizing: from the measurements of a function's executions, decide when the
//! memory amount its requests name keeps missing the mark, and which amount later containers
//! should get instead. Pure logic: the caller keeps the samples and applies the decisions.
//!
//! # Policy
//!
//! Executions are judged per function version and requested amount, on the *window*: the
//! samples taken since the amount new containers get (the *effective* amount) last changed.
//!
//! - **Out of memory after a shrink.** One OOM kill at an amount below the requested one reverts
//!   at once to at least the requested amount (more if the samples call for it), and no shrink is
//!   tried again for a backoff of `backoff_executions`, doubling with every revert.
//! - **Under-provisioned**, when `threshold` executions of the window were: OOM-killed, or
//!   peaked at ≥ `under_percent` of the amount, or timed out while throttled by the CPU quota.
//!   OOM kills and CPU-starved timeouts double the amount (the real need is unknown); high peaks
//!   get the high percentile of peak memory plus headroom.
//! - **Over-provisioned**, when the last `threshold` executions all ended without an OOM or a
//!   timeout, peaked at ≤ `over_percent` of the amount, and were not CPU-bound (throttled for
//!   less than 5% of their duration). The amount becomes the `percentile` of peak memory plus
//!   `headroom_percent`, never below the largest peak seen, nor below the amount whose CPU share
//!   (CPU follows memory: 1769 MB per vCPU) would stretch the observed CPU use by more than
//!   `max_slowdown_percent`.
//!
//! Every amount is rounded up to a 64 MB step and kept within `min_mb..=max_mb`. A decision that
//! would not change the amount by at least one step is no decision.
//!
//! In `Recommend` mode a recommendation that stands is looked at again every `threshold`
//! executions, not after every one (an OOM is always looked at at once): its figures take
//! percentiles of the window, which would otherwise be worked out on every execution of a function
//! that stays over-provisioned, only to repeat the same advice.

use std::fmt;

/// Memory that buys one vCPU, as in Lambda.
pub const MB_PER_VCPU: f64 = 1769.0;
/// Amounts are multiples of this.
pub const STEP_MB: u32 = 64;
/// An execution throttled for at least this share of its duration was CPU-bound.
const CPU_BOUND_THROTTLE_SHARE: f64 = 0.05;
/// An OOM-driven growth adds at least this much.
const OOM_MIN_GROWTH_MB: u32 = 256;
/// The CFS bandwidth period, in ms: a CPU quota is a budget per period, so a burst shorter than
/// a period runs at full speed as long as it fits the period's budget.
const CFS_PERIOD_MS: f64 = 100.0;

/// What sizing may do for a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Nothing: not even a recommendation.
    Off,
    /// Decide and report, but create containers with the requested amount. The default: a
    /// user opts in to having their functions resized.
    #[default]
    Recommend,
    /// Decide and apply: later containers get the decided amount.
    Auto,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Recommend => "recommend",
            Self::Auto => "auto",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "off" => Some(Self::Off),
            "recommend" => Some(Self::Recommend),
            "auto" => Some(Self::Auto),
            _ => None,
        }
    }
}

/// How an execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The function reported an error, or its runtime exited.
    Error,
    Timeout,
    OutOfMemory,
}

/// What one execution measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The container's amount.
    pub memory_mb: u32,
    pub peak_mb: u64,
    pub cpu_ms: f64,
    pub throttled_ms: f64,
    pub duration_ms: f64,
    pub outcome: Outcome,
    /// On a container's first execution, how long the runtime's init took: the CPU and
    /// throttled times then include the init, the duration does not.
    pub init_ms: Option<f64>,
}

impl Sample {
    /// The vCPUs the execution needs to run at its measured speed: its CPU time over its
    /// duration, or over one CFS period if it was shorter (a quota lets a short burst run at
    /// full speed while it fits the period's budget).
    fn cpu_cores(&self) -> f64 {
        self.cpu_ms / self.duration_ms.max(CFS_PERIOD_MS)
    }

    fn cold(&self) -> bool {
        self.init_ms.is_some()
    }

    /// Throttled for a good share of its duration. A cold start's throttled time includes its
    /// init's, which its duration does not: at most the whole init is discounted.
    fn cpu_bound(&self) -> bool {
        let throttled = self.throttled_ms - self.init_ms.unwrap_or(0.0);
        self.duration_ms > 0.0 && throttled >= CPU_BOUND_THROTTLE_SHARE * self.duration_ms
    }
}

/// The thresholds of the policy; server-wide defaults, each overridable per function.
#[derive(Debug, Clone, PartialEq)]
pub struct SizingConfig {
    /// Executions a condition must hold for.
    pub threshold: u32,
    /// Over-provisioned: peak at or below this percentage of the amount.
    pub over_percent: f64,
    /// Under-provisioned: peak at or above this percentage of the amount.
    pub under_percent: f64,
    /// Memory added above the percentile of peaks, in percent.
    pub headroom_percent: f64,
    /// The percentile of peak memory a new amount is computed from.
    pub percentile: f64,
    /// A shrink may not slow a CPU-hungry function down by more than this, in percent.
    pub max_slowdown_percent: f64,
    /// Executions without a shrink after an OOM revert (doubling with each revert).
    pub backoff_executions: u32,
    pub min_mb: u32,
    pub max_mb: u32,
}

impl Default for SizingConfig {
    fn default() -> Self {
        Self {
            threshold: 5,
            over_percent: 40.0,
            under_percent: 90.0,
            headroom_percent: 30.0,
            percentile: 95.0,
            max_slowdown_percent: 10.0,
            backoff_executions: 20,
            min_mb: 128,
            max_mb: 10240,
        }
    }
}

/// Why an amount changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    OverProvisioned,
    /// OOM kills.
    OutOfMemory,
    /// Peaks close to the amount.
    HighMemory,
    /// Timeouts while throttled by the CPU quota.
    CpuStarved,
    /// An OOM kill below the requested amount.
    OutOfMemoryAfterShrink,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OverProvisioned => "OverProvisioned",
            Self::OutOfMemory => "OutOfMemory",
            Self::HighMemory => "HighMemory",
            Self::CpuStarved => "CpuStarved",
            Self::OutOfMemoryAfterShrink => "OutOfMemoryAfterShrink",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::OverProvisioned,
            Self::OutOfMemory,
            Self::HighMemory,
            Self::CpuStarved,
            Self::OutOfMemoryAfterShrink,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Up or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

/// The numbers a decision rests on.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Evidence {
    /// Executions in the window.
    pub executions: u32,
    /// Of those, the ones that met the condition.
    pub matching: u32,
    pub peak_p50_mb: u64,
    /// At the policy's percentile.
    pub peak_high_mb: u64,
    pub peak_max_mb: u64,
    pub out_of_memory: u32,
    pub timeouts: u32,
    /// vCPUs needed (CPU time over the duration, or over one 100 ms CFS period if shorter), at
    /// the 90th percentile of executions.
    pub cpu_cores_p90: f64,
    pub duration_p50_ms: f64,
}

/// A change of the amount later containers get.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub direction: Direction,
    pub from_mb: u32,
    pub to_mb: u32,
    pub condition: Condition,
    pub evidence: Evidence,
}

/// Sizing of one function version at one requested amount.
#[derive(Debug, Clone, PartialEq)]
pub struct SizingState {
    pub requested_mb: u32,
    /// The amount new containers get.
    pub effective_mb: u32,
    /// Executions to go before a shrink may be tried again.
    pub backoff_remaining: u32,
    /// Reverts so far (each doubles the backoff).
    pub reverts: u32,
    /// The samples since `effective_mb` last changed, newest last: the window is the last
    /// [`WINDOW_MAX`] of them. Older ones are dropped in bulk, not one by one (which would move
    /// the whole window on every execution).
    window: Vec<Sample>,
    /// The latest decision, applied or only recommended.
    pub last: Option<Decision>,
    /// Executions before a standing recommendation is looked at again.
    recheck_in: u32,
}

/// The most samples a window keeps.
const WINDOW_MAX: usize = 200;

impl SizingState {
    pub fn new(requested_mb: u32) -> Self {
        Self {
            requested_mb,
            effective_mb: requested_mb,
            backoff_remaining: 0,
            reverts: 0,
            window: Vec::new(),
            last: None,
            recheck_in: 0,
        }
    }

    /// The samples since the effective amount last changed, newest last, at most
    /// [`WINDOW_MAX`].
    pub fn window(&self) -> &[Sample] {
        &self.window[self.window.len().saturating_sub(WINDOW_MAX)..]
    }

    /// Puts an execution recorded earlier back into the window (after a restart), without
    /// deciding anything.
    pub fn remember(&mut self, sample: Sample) {
        if sample.memory_mb == self.effective_mb {
            if self.window.len() == 2 * WINDOW_MAX {
                self.window.drain(..WINDOW_MAX);
            }
            self.window.push(sample);
        }
    }

    /// Records an execution; in `Auto` mode, applies what the policy decides. Returns a new
    /// decision (applied in `Auto`, a recommendation in `Recommend`), or `None` when nothing
    /// changed. In `Off` mode nothing is recorded.
    pub fn observe(
        &mut self,
        config: &SizingConfig,
        mode: Mode,
        sample: Sample,
    ) -> Option<Decision> {
        if mode == Mode::Off {
            return None;
        }
        // Samples of containers created before the last change (draining) tell about their own
        // amount, not the current one; OOMs among them still count as OOMs below the request.
        self.remember(sample);
        self.backoff_remaining = self.backoff_remaining.saturating_sub(1);
        if mode == Mode::Recommend && sample.outcome != Outcome::OutOfMemory && self.recheck_in > 0
        {
            self.recheck_in -= 1;
            return None;
        }
        let decision = self.decide(config, &sample)?;
        if self
            .last
            .as_ref()
            .is_some_and(|last| same_advice(last, &decision))
            && mode != Mode::Auto
        {
            self.recheck_in = config.threshold.saturating_sub(1);
            return None;
        }
        if mode == Mode::Auto {
            self.apply(config, &decision);
        }
        self.last = Some(decision.clone());
        Some(decision)
    }

    /// Makes `decision` the effective amount.
    pub fn apply(&mut self, config: &SizingConfig, decision: &Decision) {
        if decision.condition == Condition::OutOfMemoryAfterShrink {
            let doubling = 1u32.checked_shl(self.reverts.min(16)).unwrap_or(u32::MAX);
            self.backoff_remaining = config.backoff_executions.saturating_mul(doubling);
            self.reverts += 1;
        }
        self.effective_mb = decision.to_mb;
        self.window.clear();
    }

    fn decide(&self, config: &SizingConfig, latest: &Sample) -> Option<Decision> {
        let amount = self.effective_mb;
        let decision = |direction, to_mb: u32, condition, evidence| {
            let to_mb = clamp(config, to_mb);
            let moves = match direction {
                Direction::Up => to_mb >= amount + STEP_MB,
                Direction::Down => to_mb + STEP_MB <= amount,
            };
            moves.then_some(Decision {
                direction,
                from_mb: amount,
                to_mb,
                condition,
                evidence,
            })
        };
        // The window's percentiles take sorting: only computed when a condition holds, not on
        // every execution.
        let evidence_of = |matching| Evidence {
            matching,
            ..evidence(config, self.window())
        };

        // An OOM below the requested amount: revert at once.
        if latest.outcome == Outcome::OutOfMemory && latest.memory_mb < self.requested_mb {
            let evidence = evidence_of(1);
            let wanted = self
                .requested_mb
                .max(with_headroom(config, evidence.peak_high_mb));
            return decision(
                Direction::Up,
                round_up(wanted),
                Condition::OutOfMemoryAfterShrink,
                evidence,
            );
        }

        // Under-provisioned for `threshold` executions of the window.
        let threshold = config.threshold.max(1);
        let high =
            |s: &Sample| s.peak_mb as f64 >= config.under_percent / 100.0 * f64::from(amount);
        let starved = |s: &Sample| s.outcome == Outcome::Timeout && s.cpu_bound();
        let window = self.window();
        let oom = window
            .iter()
            .filter(|s| s.outcome == Outcome::OutOfMemory)
            .count() as u32;
        let under = window
            .iter()
            .filter(|s| s.outcome == Outcome::OutOfMemory || high(s) || starved(s))
            .count() as u32;
        // An OOM right after OOMs made the amount grow: the threshold was met already, and the
        // growth was not enough. Grow again at once.
        let escalate = latest.outcome == Outcome::OutOfMemory
            && latest.memory_mb == amount
            && self.last.as_ref().is_some_and(|d| {
                d.direction == Direction::Up
                    && d.to_mb == amount
                    && matches!(
                        d.condition,
                        Condition::OutOfMemory | Condition::OutOfMemoryAfterShrink
                    )
            });
        if under >= threshold || escalate {
            let evidence = evidence_of(under);
            let (to, condition) = if oom > 0 {
                // The peak of an OOM-killed execution is the limit: its need is unknown. Double,
                // and by at least OOM_MIN_GROWTH_MB, which small functions need most.
                (
                    amount
                        .saturating_mul(2)
                        .max(amount.saturating_add(OOM_MIN_GROWTH_MB))
                        .max(with_headroom(config, evidence.peak_high_mb)),
                    Condition::OutOfMemory,
                )
            } else if window.iter().any(starved) {
                (amount.saturating_mul(2), Condition::CpuStarved)
            } else {
                (
                    with_headroom(config, evidence.peak_high_mb).max(amount + STEP_MB),
                    Condition::HighMemory,
                )
            };
            return decision(Direction::Up, round_up(to), condition, evidence);
        }

        // Over-provisioned for the last `threshold` executions.
        if self.backoff_remaining > 0 || window.len() < threshold as usize {
            return None;
        }
        let recent = &window[window.len() - threshold as usize..];
        let low = |s: &Sample| {
            matches!(s.outcome, Outcome::Ok | Outcome::Error)
                && s.peak_mb as f64 <= config.over_percent / 100.0 * f64::from(amount)
                && !s.cpu_bound()
        };
        if !recent.iter().all(low) {
            return None;
        }
        // The new amount is at least the largest peak and the smallest amount: when that is no
        // step down, nothing below needs the percentiles (a function already at the floor).
        let peak_max = window.iter().map(|s| s.peak_mb).max().unwrap_or(0);
        decision(
            Direction::Down,
            round_up(clamp_u64(peak_max)),
            Condition::OverProvisioned,
            Evidence::default(),
        )?;
        let evidence = evidence_of(threshold);
        let memory =
            with_headroom(config, evidence.peak_high_mb).max(clamp_u64(evidence.peak_max_mb));
        // At amount A a function gets A / 1769 vCPUs; needing c vCPUs (per CFS period), it slows
        // down by c / (A / 1769) once that is below c. Keep the slowdown within bounds.
        let cpu_floor =
            evidence.cpu_cores_p90 * MB_PER_VCPU / (1.0 + config.max_slowdown_percent / 100.0);
        let to = memory.max(cpu_floor.ceil() as u32);
        decision(
            Direction::Down,
            round_up(to),
            Condition::OverProvisioned,
            evidence,
        )
    }
}

/// Whether two decisions give the same advice (so a recommendation is not repeated).
fn same_advice(a: &Decision, b: &Decision) -> bool {
    a.from_mb == b.from_mb && a.to_mb == b.to_mb && a.condition == b.condition
}

fn evidence(config: &SizingConfig, window: &[Sample]) -> Evidence {
    let mut peaks: Vec<u64> = window.iter().map(|s| s.peak_mb).collect();
    // A cold start's CPU time includes the init, which a smaller amount would not repeat per
    // execution: judge CPU use on warm executions when there are any.
    let any_warm = window.iter().any(|s| !s.cold());
    let mut cores: Vec<f64> = window
        .iter()
        .filter(|s| !any_warm || !s.cold())
        .map(Sample::cpu_cores)
        .collect();
    let mut durations: Vec<f64> = window.iter().map(|s| s.duration_ms).collect();
    Evidence {
        executions: window.len() as u32,
        matching: 0,
        peak_p50_mb: percentile(&mut peaks, 50.0, Ord::cmp).unwrap_or(0),
        peak_high_mb: percentile(&mut peaks, config.percentile, Ord::cmp).unwrap_or(0),
        peak_max_mb: peaks.iter().copied().max().unwrap_or(0),
        out_of_memory: window
            .iter()
            .filter(|s| s.outcome == Outcome::OutOfMemory)
            .count() as u32,
        timeouts: window
            .iter()
            .filter(|s| s.outcome == Outcome::Timeout)
            .count() as u32,
        cpu_cores_p90: percentile(&mut cores, 90.0, f64::total_cmp).unwrap_or(0.0),
        duration_p50_ms: percentile(&mut durations, 50.0, f64::total_cmp).unwrap_or(0.0),
    }
}

/// The nearest-rank percentile of `values`, found by selection (linear time; it reorders
/// `values`), not by sorting.
fn percentile<T: Copy>(
    values: &mut [T],
    p: f64,
    cmp: impl FnMut(&T, &T) -> std::cmp::Ordering,
) -> Option<T> {
    if values.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * values.len() as f64).ceil() as usize;
    let index = rank.clamp(1, values.len()) - 1;
    Some(*values.select_nth_unstable_by(index, cmp).1)
}

fn with_headroom(config: &SizingConfig, mb: u64) -> u32 {
    clamp_u64((mb as f64 * (1.0 + config.headroom_percent / 100.0)).ceil() as u64)
}

fn clamp_u64(mb: u64) -> u32 {
    u32::try_from(mb).unwrap_or(u32::MAX)
}

/// Up to the next multiple of [`STEP_MB`].
pub fn round_up(mb: u32) -> u32 {
    mb.div_ceil(STEP_MB).saturating_mul(STEP_MB)
}

fn clamp(config: &SizingConfig, mb: u32) -> u32 {
    // The bounds themselves need not be multiples of the step; the result is.
    let max = (config.max_mb / STEP_MB * STEP_MB).max(config.min_mb);
    round_up(mb.max(config.min_mb)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(memory_mb: u32, peak_mb: u64, outcome: Outcome) -> Sample {
        Sample {
            memory_mb,
            peak_mb,
            cpu_ms: 1.0,
            throttled_ms: 0.0,
            duration_ms: 50.0,
            outcome,
            init_ms: None,
        }
    }

    #[test]
    fn the_window_keeps_the_newest_samples_and_its_percentiles_are_nearest_rank() {
        let mut state = SizingState::new(1024);
        for peak in 1..=(2 * WINDOW_MAX as u64 + 50) {
            state.remember(sample(1024, peak, Outcome::Ok));
        }
        let window = state.window();
        assert_eq!(window.len(), WINDOW_MAX);
        assert_eq!(window[0].peak_mb, WINDOW_MAX as u64 + 51, "oldest kept");
        assert_eq!(window[WINDOW_MAX - 1].peak_mb, 2 * WINDOW_MAX as u64 + 50);

        let evidence = evidence(&SizingConfig::default(), window);
        // Peaks 251..=450: nearest-rank p50 is the 100th, p95 the 190th.
        assert_eq!(evidence.peak_p50_mb, 350);
        assert_eq!(evidence.peak_high_mb, 440);
        assert_eq!(evidence.peak_max_mb, 450);
        assert_eq!(evidence.executions, WINDOW_MAX as u32);

        let mut values = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&mut values, 50.0, f64::total_cmp), Some(3.0));
        assert_eq!(percentile(&mut values, 0.0, f64::total_cmp), Some(1.0));
        assert_eq!(percentile(&mut values, 100.0, f64::total_cmp), Some(5.0));
        assert_eq!(
            percentile(&mut [] as &mut [f64], 50.0, f64::total_cmp),
            None
        );
    }

    /// CPU-bound: throttled for at least 5% of the duration, a cold start's init discounted;
    /// an execution too short to measure is not.
    #[test]
    fn cpu_bound_is_5_percent_of_the_duration_throttled() {
        // (duration, throttled, init, CPU-bound)
        for (duration_ms, throttled_ms, init_ms, bound) in [
            (1000.0, 49.0, None, false),
            (1000.0, 50.0, None, true),
            (1000.0, 10.0, None, false),
            (0.0, 0.0, None, false),
            (1000.0, 300.0, Some(260.0), false),
            (1000.0, 310.0, Some(260.0), true),
        ] {
            let s = Sample {
                throttled_ms,
                duration_ms,
                init_ms,
                ..sample(1024, 100, Outcome::Ok)
            };
            assert_eq!(s.cpu_bound(), bound, "{s:?}");
        }
    }

    /// CPU use is judged on warm executions when there are any (a cold start's CPU time
    /// includes its init), on the cold ones otherwise; OOMs and timeouts are counted.
    #[test]
    fn evidence_counts_outcomes_and_judges_cpu_on_warm_executions() {
        let config = SizingConfig::default();
        let cold = Sample {
            cpu_ms: 2000.0,
            duration_ms: 1000.0,
            init_ms: Some(500.0),
            ..sample(1024, 100, Outcome::Ok)
        };
        let warm = Sample {
            cpu_ms: 100.0,
            duration_ms: 1000.0,
            ..sample(1024, 100, Outcome::Ok)
        };
        assert_eq!(evidence(&config, &[cold, warm]).cpu_cores_p90, 0.1);
        assert_eq!(evidence(&config, &[cold, cold]).cpu_cores_p90, 2.0);
        let window = [
            sample(1024, 1024, Outcome::OutOfMemory),
            sample(1024, 100, Outcome::Timeout),
            sample(1024, 100, Outcome::Timeout),
            sample(1024, 100, Outcome::Ok),
            sample(1024, 100, Outcome::Error),
        ];
        let evidence = evidence(&config, &window);
        assert_eq!((evidence.out_of_memory, evidence.timeouts), (1, 2));
    }

    /// Between the two bounds (here 49% of the amount: above 40%, below 90%) nothing changes.
    #[test]
    fn peaks_between_the_bounds_are_well_sized() {
        let mut state = SizingState::new(1024);
        let decisions = run(
            &mut state,
            Mode::Auto,
            (0..10).map(|_| sample(1024, 500, Outcome::Ok)),
        );
        assert!(decisions.is_empty(), "{decisions:?}");
    }

    /// Over-provisioned is judged on the last `threshold` executions: a timeout before them
    /// does not hold a shrink back.
    #[test]
    fn only_the_last_threshold_executions_judge_a_shrink() {
        let mut state = SizingState::new(1024);
        let mut samples = vec![sample(1024, 60, Outcome::Ok); 3];
        samples.push(sample(1024, 60, Outcome::Timeout));
        samples.extend([sample(1024, 60, Outcome::Ok); 4]);
        assert!(run(&mut state, Mode::Auto, samples).is_empty());
        let decisions = run(&mut state, Mode::Auto, [sample(1024, 60, Outcome::Ok)]);
        assert_eq!(
            decisions.iter().map(|d| d.direction).collect::<Vec<_>>(),
            vec![Direction::Down],
            "five good executions since the timeout"
        );
    }

    /// Growth for high peaks is at least one step, even with no headroom configured.
    #[test]
    fn high_memory_grows_by_at_least_a_step() {
        let config = SizingConfig {
            headroom_percent: 0.0,
            ..SizingConfig::default()
        };
        let mut state = SizingState::new(128);
        // 116 MB is at least 90% of 128 MB.
        let decisions: Vec<_> = (0..5)
            .filter_map(|_| state.observe(&config, Mode::Auto, sample(128, 116, Outcome::Ok)))
            .collect();
        let last = decisions.last().map(|d| (d.condition, d.to_mb));
        assert_eq!(last, Some((Condition::HighMemory, 192)));
    }

    /// Only OOMs after an OOM-driven growth escalate at once; after a growth for high peaks,
    /// one OOM waits for the threshold like any other.
    #[test]
    fn one_oom_after_a_high_memory_growth_does_not_escalate() {
        let mut state = SizingState::new(256);
        let decisions = run(
            &mut state,
            Mode::Auto,
            (0..5).map(|_| sample(256, 240, Outcome::Ok)),
        );
        let last = decisions.last().map(|d| (d.condition, d.to_mb));
        assert_eq!(last, Some((Condition::HighMemory, 320)));
        let decisions = run(
            &mut state,
            Mode::Auto,
            [sample(320, 320, Outcome::OutOfMemory)],
        );
        assert!(decisions.is_empty(), "{decisions:?}");
        assert_eq!(state.effective_mb, 320);
    }

    fn run(
        state: &mut SizingState,
        mode: Mode,
        samples: impl IntoIterator<Item = Sample>,
    ) -> Vec<Decision> {
        let config = SizingConfig::default();
        samples
            .into_iter()
            .filter_map(|s| state.observe(&config, mode, s))
            .collect()
    }

    #[test]
    fn an_over_provisioned_function_shrinks_after_the_threshold() {
        let mut state = SizingState::new(1024);
        let decisions = run(
            &mut state,
            Mode::Auto,
            (0..4).map(|_| sample(1024, 60, Outcome::Ok)),
        );
        assert!(decisions.is_empty(), "not before the threshold");
        let decisions = run(&mut state, Mode::Auto, [sample(1024, 62, Outcome::Ok)]);
        let d = &decisions[0];
        assert_eq!(
            (d.direction, d.condition),
            (Direction::Down, Condition::OverProvisioned)
        );
        // p95 of peaks 62 MB × 1.3 = 81 → the 128 MB minimum.
        assert_eq!((d.from_mb, d.to_mb), (1024, 128));
        assert_eq!(d.evidence.matching, 5);
        assert_eq!(d.evidence.peak_max_mb, 62);
        assert_eq!(state.effective_mb, 128);
        assert!(state.window().is_empty(), "a new window starts");
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            requested: u32,
            samples: Vec<Sample>,
            /// (direction, from, to, condition) of the last decision, if any.
            last: Option<(Direction, u32, u32, Condition)>,
            effective: u32,
        }
        let cpu_hungry = |memory_mb| Sample {
            memory_mb,
            peak_mb: 40,
            cpu_ms: 290.0,
            throttled_ms: 700.0,
            duration_ms: 1000.0,
            outcome: Outcome::Ok,
            init_ms: None,
        };
        let cases = vec![
            Case {
                name: "well sized: nothing",
                requested: 256,
                samples: (0..20).map(|_| sample(256, 150, Outcome::Ok)).collect(),
                last: None,
                effective: 256,
            },
            Case {
                name: "OOM kills grow the amount after the threshold (doubling, +256 MB at least)",
                requested: 128,
                samples: (0..5)
                    .map(|_| sample(128, 128, Outcome::OutOfMemory))
                    .collect(),
                last: Some((Direction::Up, 128, 384, Condition::OutOfMemory)),
                effective: 384,
            },
            Case {
                name: "an OOM right after an OOM-driven growth grows again at once",
                requested: 128,
                samples: (0..5)
                    .map(|_| sample(128, 128, Outcome::OutOfMemory))
                    .chain([sample(384, 384, Outcome::OutOfMemory)])
                    .collect(),
                last: Some((Direction::Up, 384, 768, Condition::OutOfMemory)),
                effective: 768,
            },
            Case {
                name: "a cold start's init throttling does not make it CPU-bound",
                requested: 1024,
                samples: (0..5)
                    .map(|i| Sample {
                        throttled_ms: if i == 0 { 30.0 } else { 0.0 },
                        init_ms: (i == 0).then_some(60.0),
                        ..sample(1024, 60, Outcome::Ok)
                    })
                    .collect(),
                last: Some((Direction::Down, 1024, 128, Condition::OverProvisioned)),
                effective: 128,
            },
            Case {
                name: "peaks near the amount grow it to the percentile plus headroom",
                requested: 512,
                samples: (0..5).map(|_| sample(512, 480, Outcome::Ok)).collect(),
                // 480 × 1.3 = 624 → 640.
                last: Some((Direction::Up, 512, 640, Condition::HighMemory)),
                effective: 640,
            },
            Case {
                name: "a CPU-bound function is not shrunk",
                requested: 512,
                samples: (0..20).map(|_| cpu_hungry(512)).collect(),
                last: None,
                effective: 512,
            },
            Case {
                name: "timeouts while throttled double the amount (more CPU)",
                requested: 512,
                // A timed-out container is destroyed: every execution is a cold start.
                samples: (0..5)
                    .map(|_| Sample {
                        outcome: Outcome::Timeout,
                        init_ms: Some(100.0),
                        ..cpu_hungry(512)
                    })
                    .collect(),
                last: Some((Direction::Up, 512, 1024, Condition::CpuStarved)),
                effective: 1024,
            },
            Case {
                name: "a shrink never goes below the largest peak",
                requested: 2048,
                samples: [100, 100, 100, 100, 700]
                    .into_iter()
                    .map(|p| sample(2048, p, Outcome::Ok))
                    .collect(),
                // p95 of 5 samples is the max: 700 × 1.3 = 910 → 960.
                last: Some((Direction::Down, 2048, 960, Condition::OverProvisioned)),
                effective: 960,
            },
            Case {
                name: "CPU use sets a floor on a shrink",
                requested: 2048,
                samples: (0..5)
                    .map(|_| Sample {
                        cpu_ms: 500.0,
                        duration_ms: 1000.0,
                        ..sample(2048, 50, Outcome::Ok)
                    })
                    .collect(),
                // 0.5 vCPU × 1769 / 1.1 = 804.1 → 832.
                last: Some((Direction::Down, 2048, 832, Condition::OverProvisioned)),
                effective: 832,
            },
            Case {
                name: "timeouts block a shrink",
                requested: 1024,
                samples: (0..5)
                    .map(|i| {
                        sample(
                            1024,
                            60,
                            if i == 4 {
                                Outcome::Timeout
                            } else {
                                Outcome::Ok
                            },
                        )
                    })
                    .collect(),
                last: None,
                effective: 1024,
            },
            Case {
                name: "the maximum bounds growth",
                requested: 8192,
                samples: (0..5)
                    .map(|_| sample(8192, 8192, Outcome::OutOfMemory))
                    .collect(),
                last: Some((Direction::Up, 8192, 10240, Condition::OutOfMemory)),
                effective: 10240,
            },
        ];
        for case in cases {
            let mut state = SizingState::new(case.requested);
            let decisions = run(&mut state, Mode::Auto, case.samples);
            let last = decisions
                .last()
                .map(|d| (d.direction, d.from_mb, d.to_mb, d.condition));
            assert_eq!(last, case.last, "{}", case.name);
            assert_eq!(state.effective_mb, case.effective, "{}", case.name);
        }
    }

    #[test]
    fn an_oom_after_a_shrink_reverts_at_once_and_backs_off() {
        let mut state = SizingState::new(1024);
        run(
            &mut state,
            Mode::Auto,
            (0..5).map(|_| sample(1024, 60, Outcome::Ok)),
        );
        assert_eq!(state.effective_mb, 128);
        let decisions = run(
            &mut state,
            Mode::Auto,
            [sample(128, 128, Outcome::OutOfMemory)],
        );
        let d = &decisions[0];
        assert_eq!(
            (d.direction, d.from_mb, d.to_mb, d.condition),
            (Direction::Up, 128, 1024, Condition::OutOfMemoryAfterShrink)
        );
        assert_eq!(state.effective_mb, 1024, "at least the requested amount");
        // No shrink during the backoff, however small the peaks.
        let during = run(
            &mut state,
            Mode::Auto,
            (0..19).map(|_| sample(1024, 60, Outcome::Ok)),
        );
        assert!(during.is_empty());
        let after = run(&mut state, Mode::Auto, [sample(1024, 60, Outcome::Ok)]);
        assert_eq!(after.len(), 1, "the backoff is over");
        // A second revert backs off twice as long.
        let shrunk = state.effective_mb;
        assert!(shrunk < 1024);
        run(
            &mut state,
            Mode::Auto,
            [sample(shrunk, 128, Outcome::OutOfMemory)],
        );
        assert_eq!(state.backoff_remaining, 40);
    }

    #[test]
    fn samples_of_draining_containers_do_not_judge_the_new_amount() {
        let mut state = SizingState::new(1024);
        run(
            &mut state,
            Mode::Auto,
            (0..5).map(|_| sample(1024, 60, Outcome::Ok)),
        );
        // Old 1024 MB containers keep serving until they drain.
        run(
            &mut state,
            Mode::Auto,
            (0..10).map(|_| sample(1024, 60, Outcome::Ok)),
        );
        assert!(state.window().is_empty());
        assert_eq!(state.effective_mb, 128);
    }

    #[test]
    fn recommend_mode_reports_once_and_changes_nothing() {
        let mut state = SizingState::new(1024);
        let decisions = run(
            &mut state,
            Mode::Recommend,
            (0..20).map(|_| sample(1024, 60, Outcome::Ok)),
        );
        assert_eq!(decisions.len(), 1, "the same advice is not repeated");
        assert_eq!(decisions[0].to_mb, 128);
        assert_eq!(state.effective_mb, 1024);
        assert_eq!(state.last.as_ref().map(|d| d.to_mb), Some(128));
        let mut off = SizingState::new(1024);
        assert!(run(
            &mut off,
            Mode::Off,
            (0..20).map(|_| sample(1024, 60, Outcome::Ok))
        )
        .is_empty());
        assert!(off.window().is_empty());
    }

    #[test]
    fn a_standing_recommendation_is_refreshed_every_threshold_executions() {
        let config = SizingConfig::default();
        let mut state = SizingState::new(1024);
        let mut observe = |peak_mb, outcome| {
            state.observe(&config, Mode::Recommend, sample(1024, peak_mb, outcome))
        };
        let first: Vec<_> = (0..5).filter_map(|_| observe(60, Outcome::Ok)).collect();
        assert_eq!(first.iter().map(|d| d.to_mb).collect::<Vec<_>>(), [128]);
        // The need grows: the advice follows within `threshold` executions, not at once.
        let later: Vec<(usize, u32)> = (0..2 * config.threshold as usize)
            .filter_map(|i| observe(300, Outcome::Ok).map(|d| (i, d.to_mb)))
            .collect();
        assert_eq!(later.len(), 1, "{later:?}");
        assert!(later[0].0 < config.threshold as usize, "{later:?}");
        assert!(later[0].1 >= 384, "{later:?}");
        // And then stands: the same advice is not repeated.
        assert!((0..20).all(|_| observe(300, Outcome::Ok).is_none()));
    }

    #[test]
    fn at_the_smallest_amount_an_idle_function_gets_no_decision() {
        let mut state = SizingState::new(128);
        let tiny = (0..50).map(|_| sample(128, 4, Outcome::Ok));
        assert!(run(&mut state, Mode::Auto, tiny.clone()).is_empty());
        assert!(run(&mut state, Mode::Recommend, tiny).is_empty());
        assert_eq!(state.effective_mb, 128);
    }

    #[test]
    fn a_short_burst_of_cpu_does_not_hold_a_shrink_back() {
        // Half a millisecond, all of it on the CPU: it fits any quota's budget for a period.
        let mut state = SizingState::new(1024);
        let burst = Sample {
            cpu_ms: 0.5,
            duration_ms: 0.5,
            ..sample(1024, 8, Outcome::Ok)
        };
        run(&mut state, Mode::Auto, (0..5).map(|_| burst));
        assert_eq!(state.effective_mb, 128);
    }

    #[test]
    fn amounts_are_rounded_to_the_step() {
        assert_eq!(round_up(1), 64);
        assert_eq!(round_up(64), 64);
        assert_eq!(round_up(65), 128);
        let config = SizingConfig {
            max_mb: 3000,
            ..SizingConfig::default()
        };
        assert_eq!(clamp(&config, 5000), 2944);
        assert_eq!(clamp(&config, 10), 128);
    }

    proptest::proptest! {
        /// Whatever the executions, the effective amount is a multiple of the step within the
        /// bounds, never below the largest peak of the window it was decided on, and right
        /// after an OOM below the requested amount it is at least the requested amount.
        #[test]
        fn decisions_stay_sane(
            requested in proptest::strategy::Strategy::prop_map(2u32..160, |n| n * 64),
            steps in proptest::collection::vec((0u64..12_000, 0u8..4, 0.0f64..2000.0), 1..80),
        ) {
            let config = SizingConfig::default();
            let mut state = SizingState::new(requested);
            for (peak, outcome, cpu_ms) in steps {
                let memory_mb = state.effective_mb;
                let outcome = [Outcome::Ok, Outcome::Error, Outcome::Timeout, Outcome::OutOfMemory][outcome as usize];
                let peak_mb = peak.min(u64::from(memory_mb));
                let window_max = state.window().iter().map(|s| s.peak_mb).max().unwrap_or(0).max(peak_mb);
                let sample = Sample { memory_mb, peak_mb, cpu_ms, throttled_ms: 0.0, duration_ms: 1000.0, outcome, init_ms: None };
                if let Some(d) = state.observe(&config, Mode::Auto, sample) {
                    proptest::prop_assert_eq!(d.to_mb % STEP_MB, 0);
                    proptest::prop_assert!(d.to_mb >= config.min_mb && d.to_mb <= config.max_mb);
                    proptest::prop_assert_ne!(d.to_mb, d.from_mb);
                    if d.direction == Direction::Down {
                        proptest::prop_assert!(u64::from(d.to_mb) >= window_max);
                    }
                    if outcome == Outcome::OutOfMemory && memory_mb < requested {
                        proptest::prop_assert!(d.to_mb >= requested.min(10240));
                    }
                }
            }
        }
    }
}
