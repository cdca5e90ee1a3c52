//! How many VMs join the warming pool each time one leaves it: the replenish count N, and why
//! it has its current value.
//!
//! # Policy
//!
//! N starts at [`ReplenishConfig::initial`]. With the adaptive policy, N is computed again from
//! the measured request rate `r` whenever `r` leaves the band around the rate of the last
//! computation `r₀`: above `rise × r₀` or below `fall × r₀`. The new N covers the removals from
//! the warming pool that the current rate can cause during one VM boot, plus a margin:
//!
//! ```text
//! N = clamp(⌈r × boot × (1 + margin)⌉, min, max)
//! ```
//!
//! where `boot` is the measured time a VM takes to boot. It counts every request as a possible
//! removal (the worst case: each needs a new VM), so a burst raises N at once; the bounds and
//! the warming pool's TTL keep the cost of that caution in check. With the fixed policy, N
//! never changes.

use std::fmt::Write;

/// Settings of the replenishment policy.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplenishConfig {
    /// N at start.
    pub initial: u32,
    /// Bounds of N (adaptive policy).
    pub min: u32,
    pub max: u32,
    /// Whether N follows the request rate.
    pub adaptive: bool,
    /// N is computed again when the rate rises above `rise ×` the rate of the last computation…
    pub rise: f64,
    /// …or falls below `fall ×` that rate.
    pub fall: f64,
    /// Extra VMs beyond the expected removals, as a fraction of them.
    pub margin: f64,
}

impl Default for ReplenishConfig {
    fn default() -> Self {
        Self {
            initial: 1,
            min: 1,
            max: 8,
            adaptive: true,
            rise: 1.5,
            fall: 0.5,
            margin: 0.5,
        }
    }
}

impl ReplenishConfig {
    /// A fixed policy: N is always `n`.
    pub fn fixed(n: u32) -> Self {
        Self {
            initial: n,
            min: n,
            max: n,
            adaptive: false,
            ..Self::default()
        }
    }
}

/// The replenish count and the reason for it.
#[derive(Debug, Clone)]
pub struct Replenisher {
    config: ReplenishConfig,
    n: u32,
    reason: String,
    /// The rate at the last computation of N; `None` before the first.
    rate_at_change: Option<f64>,
}

impl Replenisher {
    pub fn new(config: ReplenishConfig) -> Self {
        let n = if config.adaptive {
            config.initial.clamp(config.min, config.max.max(config.min))
        } else {
            config.initial
        };
        let reason = if config.adaptive {
            format!("configured start value; no request rate measured yet: N = {n}")
        } else {
            format!("fixed policy: N = {n}")
        };
        Self {
            config,
            n,
            reason,
            rate_at_change: None,
        }
    }

    /// The current N.
    pub fn count(&self) -> u32 {
        self.n
    }

    /// Why N has its current value.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub fn config(&self) -> &ReplenishConfig {
        &self.config
    }

    /// Looks at the current request `rate` (per second) and the time one VM takes to boot, and
    /// computes N again if the rate has left its band. Returns the new N if it changed.
    pub fn evaluate(&mut self, rate: f64, boot_secs: f64) -> Option<u32> {
        if !self.config.adaptive {
            return None;
        }
        let crossed = match self.rate_at_change {
            None => rate > 0.0,
            Some(r0) => rate > r0 * self.config.rise || rate < r0 * self.config.fall,
        };
        if !crossed {
            return None;
        }
        let expected = rate * boot_secs;
        let wanted = (expected * (1.0 + self.config.margin)).ceil();
        let max = self.config.max.max(self.config.min);
        let n = if wanted >= f64::from(max) {
            max
        } else {
            (wanted as u32).max(self.config.min)
        };
        let mut reason = match self.rate_at_change {
            None => format!("first measured request rate, {rate:.1}/s"),
            Some(r0) if rate > r0 => format!(
                "request rate {rate:.1}/s rose above {:.1}× the {r0:.1}/s of the last change",
                self.config.rise
            ),
            Some(r0) => format!(
                "request rate {rate:.1}/s fell below {:.1}× the {r0:.1}/s of the last change",
                self.config.fall
            ),
        };
        let _ = write!(
            reason,
            "; during one {:.0} ms VM boot it can remove up to {expected:.1} VMs, \
             +{:.0}% margin: N = {n}",
            boot_secs * 1e3,
            self.config.margin * 100.0
        );
        if n == max && wanted > f64::from(max) {
            reason.push_str(" (the maximum)");
        } else if n == self.config.min && wanted < f64::from(self.config.min) {
            reason.push_str(" (the minimum)");
        }
        self.rate_at_change = Some(rate);
        self.reason = reason;
        let old = std::mem::replace(&mut self.n, n);
        (old != n).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            /// (rate, boot seconds) evaluated in order.
            steps: &'static [(f64, f64)],
            n: u32,
            changed_last: Option<u32>,
        }
        let cases = [
            Case {
                name: "starts at the configured value",
                steps: &[],
                n: 2,
                changed_last: None,
            },
            Case {
                name: "no requests yet (a rate of 0) keep the configured value",
                steps: &[(0.0, 0.05), (0.0, 0.05)],
                n: 2,
                changed_last: None,
            },
            Case {
                name: "a low first rate brings N to the minimum",
                steps: &[(5.0, 0.05)],
                n: 1,
                changed_last: Some(1),
            },
            Case {
                name: "a burst raises N to cover one boot plus margin",
                steps: &[(5.0, 0.05), (100.0, 0.05)],
                // 100/s × 50 ms = 5, × 1.5 = 7.5 → 8.
                n: 8,
                changed_last: Some(8),
            },
            Case {
                name: "a bigger burst is capped at the maximum",
                steps: &[(5.0, 0.05), (1000.0, 0.05)],
                n: 10,
                changed_last: Some(10),
            },
            Case {
                name: "a rise inside the band changes nothing",
                steps: &[(40.0, 0.05), (55.0, 0.05)],
                // 40 × 0.05 × 1.5 = 3.
                n: 3,
                changed_last: None,
            },
            Case {
                name: "the band's edges are inside it: exactly 1.5× changes nothing",
                steps: &[(40.0, 0.05), (60.0, 0.05)],
                n: 3,
                changed_last: None,
            },
            Case {
                name: "the band's edges are inside it: exactly 0.5× changes nothing",
                steps: &[(40.0, 0.05), (20.0, 0.05)],
                n: 3,
                changed_last: None,
            },
            Case {
                name: "a fall inside the band changes nothing",
                // 25 × 0.05 × 1.5 = 1.9 would give 2, were N computed again.
                steps: &[(40.0, 0.05), (25.0, 0.05)],
                n: 3,
                changed_last: None,
            },
            Case {
                name: "N falls back when the rate falls",
                steps: &[(5.0, 0.05), (100.0, 0.05), (40.0, 0.05)],
                n: 3,
                changed_last: Some(3),
            },
            Case {
                name: "slower boots need more VMs for the same rate",
                steps: &[(20.0, 0.2)],
                n: 6,
                changed_last: Some(6),
            },
        ];
        for case in cases {
            let mut r = Replenisher::new(ReplenishConfig {
                initial: 2,
                min: 1,
                max: 10,
                ..ReplenishConfig::default()
            });
            let mut last = None;
            for &(rate, boot) in case.steps {
                last = r.evaluate(rate, boot);
            }
            assert_eq!(r.count(), case.n, "{}: {}", case.name, r.reason());
            assert_eq!(last, case.changed_last, "{}", case.name);
        }
    }

    #[test]
    fn the_reason_explains_the_number() {
        let mut r = Replenisher::new(ReplenishConfig::default());
        r.evaluate(10.0, 0.05);
        r.evaluate(400.0, 0.03);
        let reason = r.reason();
        assert!(
            reason.contains("400.0/s rose above 1.5× the 10.0/s"),
            "{reason}"
        );
        assert!(reason.contains("30 ms VM boot"), "{reason}");
        assert!(reason.contains("N = 8 (the maximum)"), "{reason}");
    }

    /// "(the minimum)" and "(the maximum)" say that a bound held N back, and only then.
    #[test]
    fn the_reason_names_a_bound_only_when_it_held_n_back() {
        let config = ReplenishConfig {
            min: 2,
            max: 8,
            ..ReplenishConfig::default()
        };
        // (rate, what the formula wants, the reason's end)
        for (rate, wanted, end) in [
            (10.0, "0.75", "N = 2 (the minimum)"),
            (20.0, "1.5", "N = 2"),
            (60.0, "4.5", "N = 5"),
            (100.0, "7.5", "N = 8"),
            (400.0, "30", "N = 8 (the maximum)"),
        ] {
            let mut r = Replenisher::new(config.clone());
            r.evaluate(rate, 0.05);
            assert!(
                r.reason().ends_with(end),
                "{rate}/s wants {wanted}: {}",
                r.reason()
            );
        }
        let mut r = Replenisher::new(config);
        r.evaluate(100.0, 0.05);
        r.evaluate(10.0, 0.05);
        assert!(
            r.reason()
                .starts_with("request rate 10.0/s fell below 0.5× the 100.0/s of the last change"),
            "{}",
            r.reason()
        );
    }

    #[test]
    fn a_fixed_policy_never_changes() {
        let mut r = Replenisher::new(ReplenishConfig::fixed(1));
        assert_eq!(r.evaluate(1000.0, 1.0), None);
        assert_eq!(r.count(), 1);
        assert_eq!(r.reason(), "fixed policy: N = 1");
        let none = Replenisher::new(ReplenishConfig::fixed(0));
        assert_eq!(none.count(), 0);
    }

    proptest::proptest! {
        #[test]
        fn n_stays_within_its_bounds(
            min in 0u32..4,
            extra in 0u32..16,
            steps in proptest::collection::vec((0.0f64..5000.0, 0.0f64..2.0), 0..40),
        ) {
            let mut r = Replenisher::new(ReplenishConfig {
                initial: 3,
                min,
                max: min + extra,
                ..ReplenishConfig::default()
            });
            for (rate, boot) in steps {
                r.evaluate(rate, boot);
                proptest::prop_assert!(r.count() >= min && r.count() <= min + extra);
            }
        }
    }
}
