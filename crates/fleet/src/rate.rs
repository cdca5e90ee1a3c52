//! The measured rate of incoming execution requests: an exponentially weighted moving average
//! of events per second, for the fleet and per runtime.
//!
//! Each event adds `1/τ` to the estimate, which decays as `e^(-Δt/τ)`. For a steady rate `r`
//! the estimate converges to `r`; after a step it has covered `1 - e^(-t/τ)` of the step at
//! time `t`. `τ` (the window) trades reaction time against noise.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One event rate.
#[derive(Debug, Clone)]
pub struct Ewma {
    tau: f64,
    rate: f64,
    at: Option<Instant>,
}

impl Ewma {
    /// A rate averaged over about `window` (the time constant τ; must not be zero).
    pub fn new(window: Duration) -> Self {
        Self {
            tau: window.as_secs_f64().max(1e-3),
            rate: 0.0,
            at: None,
        }
    }

    fn decay_to(&mut self, now: Instant) {
        if let Some(at) = self.at {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            self.rate *= (-dt / self.tau).exp();
        }
        match self.at {
            Some(at) if at >= now => {}
            _ => self.at = Some(now),
        }
    }

    /// Counts one event at `now`.
    pub fn record(&mut self, now: Instant) {
        self.decay_to(now);
        self.rate += 1.0 / self.tau;
    }

    /// Events per second, as of `now`.
    pub fn rate(&self, now: Instant) -> f64 {
        match self.at {
            Some(at) => {
                let dt = now.saturating_duration_since(at).as_secs_f64();
                self.rate * (-dt / self.tau).exp()
            }
            None => 0.0,
        }
    }
}

/// The request rate of the fleet and of each runtime.
#[derive(Debug, Clone)]
pub struct Rates {
    window: Duration,
    fleet: Ewma,
    runtimes: BTreeMap<String, Ewma>,
}

impl Rates {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            fleet: Ewma::new(window),
            runtimes: BTreeMap::new(),
        }
    }

    /// Counts one request for `runtime` at `now`.
    pub fn record(&mut self, runtime: &str, now: Instant) {
        self.fleet.record(now);
        match self.runtimes.get_mut(runtime) {
            Some(rate) => rate.record(now),
            None => {
                let mut rate = Ewma::new(self.window);
                rate.record(now);
                self.runtimes.insert(runtime.to_owned(), rate);
            }
        }
    }

    /// Requests per second to the whole fleet.
    pub fn fleet(&self, now: Instant) -> f64 {
        self.fleet.rate(now)
    }

    /// Requests per second by runtime, leaving out runtimes whose rate has decayed to nothing.
    pub fn by_runtime(&self, now: Instant) -> BTreeMap<String, f64> {
        self.runtimes
            .iter()
            .map(|(runtime, rate)| (runtime.clone(), rate.rate(now)))
            .filter(|(_, rate)| *rate >= 1e-3)
            .collect()
    }

    /// Forgets runtimes with no recent requests, so the map stays as small as the live set.
    pub fn prune(&mut self, now: Instant) {
        self.runtimes.retain(|_, rate| rate.rate(now) >= 1e-3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steady(rate: &mut Ewma, start: Instant, per_second: u32, seconds: u32) -> Instant {
        let gap = Duration::from_secs(1) / per_second;
        let mut t = start;
        for _ in 0..per_second * seconds {
            t += gap;
            rate.record(t);
        }
        t
    }

    #[test]
    fn a_steady_rate_is_measured() {
        let t0 = Instant::now();
        let mut rate = Ewma::new(Duration::from_secs(2));
        let t = steady(&mut rate, t0, 50, 20);
        let measured = rate.rate(t);
        assert!((measured - 50.0).abs() < 1.5, "{measured}");
    }

    #[test]
    fn a_step_shows_within_a_fraction_of_the_window_and_decays_after() {
        let t0 = Instant::now();
        let mut rate = Ewma::new(Duration::from_secs(2));
        let t = steady(&mut rate, t0, 10, 20);
        let t = steady(&mut rate, t, 200, 1);
        let after_step = rate.rate(t);
        // 1 - e^(-1/2) of the way from 10 to 200.
        assert!(after_step > 80.0 && after_step < 100.0, "{after_step}");
        let quiet = rate.rate(t + Duration::from_secs(10));
        assert!(quiet < 1.0, "{quiet}");
    }

    #[test]
    fn runtimes_are_measured_apart_and_forgotten_when_quiet() {
        let t0 = Instant::now();
        let mut rates = Rates::new(Duration::from_secs(1));
        for i in 0..100 {
            let t = t0 + Duration::from_millis(10 * i);
            rates.record("python3.11", t);
            if i % 4 == 0 {
                rates.record("provided.al2023", t);
            }
        }
        let t = t0 + Duration::from_secs(1);
        let by = rates.by_runtime(t);
        assert!(by["python3.11"] > 3.0 * by["provided.al2023"]);
        assert!((rates.fleet(t) - by.values().sum::<f64>()).abs() < 1e-6);
        rates.prune(t + Duration::from_secs(60));
        assert!(rates.by_runtime(t + Duration::from_secs(60)).is_empty());
    }
}
