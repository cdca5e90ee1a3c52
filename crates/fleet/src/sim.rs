//! A deterministic simulation of the fleet: replays an arrival pattern against [`Fleet`] on a
//! virtual clock, with fixed boot and container start times, and reports what the live
//! server's benchmark reports (cold-VM starts, latency, idle VM-seconds). It runs the same
//! policy code as the server, so policy changes can be judged in milliseconds, and tests can
//! hold the policy to the benchmark's target.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use crate::{Expired, Fleet, FleetConfig, FnKey, Placement, WaitTicket};

/// One execution request.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    /// Since the start of the run.
    pub at: Duration,
    pub account: String,
    pub function: String,
    pub runtime: String,
    pub memory_mb: u64,
    /// How long the function runs.
    pub duration: Duration,
}

impl Arrival {
    /// The function version it runs (one version per function in a simulation).
    fn key(&self) -> FnKey {
        FnKey {
            account_id: self.account.clone(),
            function_name: self.function.clone(),
            version: "$LATEST".into(),
            revision_id: "1".into(),
            memory_mb: u32::try_from(self.memory_mb).unwrap_or(u32::MAX),
            egress_denied: false,
        }
    }
}

/// A steady low rate, then a step to `factor ×` that rate, then the low rate again, spread
/// uniformly over `accounts × functions_per_account` functions. Arrivals are Poisson, from a
/// seeded generator: the same pattern gives the same arrivals.
#[derive(Debug, Clone)]
pub struct BurstPattern {
    pub accounts: u32,
    pub functions_per_account: u32,
    /// Requests per second before and after the step.
    pub base_rate: f64,
    pub factor: f64,
    /// How long each phase lasts.
    pub before: Duration,
    pub step: Duration,
    pub after: Duration,
    pub memory_mb: u64,
    pub duration: Duration,
    pub runtime: String,
    pub seed: u64,
}

impl Default for BurstPattern {
    fn default() -> Self {
        Self {
            accounts: 8,
            functions_per_account: 4,
            base_rate: 8.0,
            factor: 20.0,
            before: Duration::from_secs(20),
            step: Duration::from_secs(5),
            after: Duration::from_secs(20),
            memory_mb: 512,
            duration: Duration::from_millis(250),
            runtime: "provided.al2023".into(),
            seed: 7,
        }
    }
}

impl BurstPattern {
    /// When the step starts and ends, since the start of the run.
    pub fn step_window(&self) -> (Duration, Duration) {
        (self.before, self.before + self.step)
    }

    pub fn total(&self) -> Duration {
        self.before + self.step + self.after
    }

    /// The arrivals, in time order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        let mut rng = SplitMix(self.seed);
        let functions = u64::from(self.accounts * self.functions_per_account).max(1);
        let (step_start, step_end) = self.step_window();
        let end = self.total();
        let mut arrivals = Vec::new();
        let mut t = 0.0f64;
        loop {
            let now = Duration::from_secs_f64(t);
            let rate = if now >= step_start && now < step_end {
                self.base_rate * self.factor
            } else {
                self.base_rate
            };
            // Exponential gaps; a gap that crosses a phase boundary is cut at it (memoryless).
            let gap = -(1.0 - rng.next_f64()).ln() / rate;
            let next = t + gap;
            let boundary = [step_start, step_end]
                .into_iter()
                .map(|b| b.as_secs_f64())
                .find(|&b| t < b && next > b);
            if let Some(b) = boundary {
                t = b;
                continue;
            }
            t = next;
            if t >= end.as_secs_f64() {
                break;
            }
            let f = rng.next_u64() % functions;
            let account = f / u64::from(self.functions_per_account.max(1));
            arrivals.push(Arrival {
                at: Duration::from_secs_f64(t),
                account: format!("acct-{account}"),
                function: format!("fn-{f}"),
                runtime: self.runtime.clone(),
                memory_mb: self.memory_mb,
                duration: self.duration,
            });
        }
        arrivals
    }
}

/// A small, fast, seeded generator (SplitMix64): deterministic across platforms.
#[derive(Debug, Clone)]
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The simulated machine.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub fleet: FleetConfig,
    /// How long a VM takes to boot.
    pub boot_time: Duration,
    /// How long a new container takes to start.
    pub container_start: Duration,
    /// How long a VM takes to stop.
    pub stop_time: Duration,
    /// How long an execution waits for capacity before it is throttled.
    pub placement_wait: Duration,
    /// How long the run goes on after the last arrival (so keep-alives and TTLs play out).
    pub tail: Duration,
}

/// How an execution found its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Warm,
    ColdContainer,
    ColdVm,
    Throttled,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct SimReport {
    /// Each arrival's start, with its arrival time and latency (wait + start + run).
    pub starts: Vec<(Duration, Start, Duration)>,
    /// Seconds VMs sat idle over the whole run.
    pub idle_vm_seconds: f64,
    /// `(time, idle VM-seconds so far, N, warming VMs)`, sampled every 100 ms.
    pub samples: Vec<(Duration, f64, u32, usize)>,
    /// The highest N during the run.
    pub max_replenish_count: u32,
    /// N at the end of the run.
    pub final_replenish_count: u32,
    /// VMs in the warming pool at the end of the run.
    pub final_warming: usize,
}

impl SimReport {
    /// Executions that started in a newly booted VM, arriving in `[from, to)`.
    pub fn cold_vm_starts(&self, from: Duration, to: Duration) -> usize {
        self.starts
            .iter()
            .filter(|(at, start, _)| *start == Start::ColdVm && *at >= from && *at < to)
            .count()
    }

    pub fn throttled(&self) -> usize {
        self.starts
            .iter()
            .filter(|(_, start, _)| *start == Start::Throttled)
            .count()
    }

    /// The `q` quantile (0–1) of latency of the executions that ran.
    pub fn latency(&self, q: f64) -> Duration {
        let mut ran: Vec<Duration> = self
            .starts
            .iter()
            .filter(|(_, s, _)| *s != Start::Throttled)
            .map(|(_, _, l)| *l)
            .collect();
        ran.sort();
        if ran.is_empty() {
            return Duration::ZERO;
        }
        let i = ((ran.len() - 1) as f64 * q).round() as usize;
        ran[i]
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Tick,
    Booted {
        vm_id: String,
        pending: Option<usize>,
    },
    Done {
        container_id: String,
    },
    Stopped {
        vm_id: String,
    },
    Arrive(usize),
}

struct Sim<'a> {
    config: &'a SimConfig,
    arrivals: &'a [Arrival],
    fleet: Fleet,
    t0: Instant,
    queue: BinaryHeap<Reverse<(Duration, u64, Ev)>>,
    seq: u64,
    /// Arrivals waiting for capacity, registered with the pool as the executor does.
    waiting: VecDeque<(usize, WaitTicket)>,
    starts: Vec<Option<(Start, Duration)>>,
    next_container: u64,
    max_n: u32,
    samples: Vec<(Duration, f64, u32, usize)>,
}

/// Runs `arrivals` through a fleet set up as `config`.
pub fn run(config: &SimConfig, arrivals: &[Arrival]) -> SimReport {
    let mut sim = Sim {
        config,
        arrivals,
        fleet: Fleet::new(config.fleet.clone(), "sim"),
        t0: Instant::now(),
        queue: BinaryHeap::new(),
        seq: 0,
        waiting: VecDeque::new(),
        starts: vec![None; arrivals.len()],
        next_container: 0,
        max_n: 0,
        samples: Vec::new(),
    };
    sim.max_n = sim.fleet.replenish_count();
    for (i, a) in arrivals.iter().enumerate() {
        sim.push(a.at, Ev::Arrive(i));
    }
    let end = arrivals.last().map_or(Duration::ZERO, |a| a.at) + config.tail;
    let tick = Duration::from_millis(100);
    let mut t = Duration::ZERO;
    while t <= end {
        sim.push(t, Ev::Tick);
        t += tick;
    }
    sim.replenish(Duration::ZERO);
    while let Some(Reverse((at, _, ev))) = sim.queue.pop() {
        if at > end {
            break;
        }
        sim.handle(at, ev);
    }
    let now = sim.t0 + end;
    SimReport {
        starts: sim
            .starts
            .iter()
            .zip(arrivals)
            .map(|(s, a)| {
                let (start, latency) = s.unwrap_or((Start::Throttled, Duration::ZERO));
                (a.at, start, latency)
            })
            .collect(),
        idle_vm_seconds: sim.fleet.view(now).idle_vm_seconds,
        max_replenish_count: sim.max_n,
        samples: sim.samples,
        final_replenish_count: sim.fleet.replenish_count(),
        final_warming: sim.fleet.pool().warming_count(),
    }
}

impl Sim<'_> {
    fn push(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, ev)));
    }

    fn handle(&mut self, at: Duration, ev: Ev) {
        let now = self.t0 + at;
        match ev {
            Ev::Arrive(i) => {
                let runtime = self.arrivals[i].runtime.clone();
                self.fleet.request(&runtime, now);
                self.note_n();
                if !self.try_place(i, at) {
                    let a = &self.arrivals[i];
                    match self.fleet.pool().try_begin_wait(&a.account, a.memory_mb) {
                        Some(ticket) => self.waiting.push_back((i, ticket)),
                        // The queue is full: refused at once, as the server's 429.
                        None => self.starts[i] = Some((Start::Throttled, Duration::ZERO)),
                    }
                }
            }
            Ev::Booted { vm_id, pending } => {
                self.fleet.vm_booted(&vm_id, self.config.boot_time, now);
                if let Some(i) = pending {
                    let start_at = at + self.config.container_start;
                    self.start_container(i, &vm_id, start_at, Start::ColdVm);
                }
                self.retry_waiting(at);
            }
            Ev::Done { container_id } => {
                self.fleet.pool().release(&container_id, true, now);
                self.retry_waiting(at);
            }
            Ev::Stopped { vm_id } => {
                self.fleet.pool().vm_stopped(&vm_id, now);
                self.retry_waiting(at);
            }
            Ev::Tick => {
                self.fleet.tick(now);
                self.note_n();
                let idle = self.fleet.view(now).idle_vm_seconds;
                let warming = self.fleet.pool().warming_count();
                self.samples
                    .push((at, idle, self.fleet.replenish_count(), warming));
                let expired = self.fleet.expired(now);
                self.let_go(at, expired);
                self.retry_waiting(at);
            }
        }
        self.replenish(at);
    }

    fn note_n(&mut self) {
        self.max_n = self.max_n.max(self.fleet.replenish_count());
    }

    fn replenish(&mut self, at: Duration) {
        let boots = self.fleet.warming_boots(self.t0 + at);
        for boot in boots {
            self.push(
                at + self.config.boot_time,
                Ev::Booted {
                    vm_id: boot.vm_id,
                    pending: None,
                },
            );
        }
    }

    fn let_go(&mut self, at: Duration, expired: Expired) {
        for vm_id in expired.vms {
            self.push(at + self.config.stop_time, Ev::Stopped { vm_id });
        }
    }

    fn retry_waiting(&mut self, at: Duration) {
        let waiting = std::mem::take(&mut self.waiting);
        for (i, ticket) in waiting {
            if at > self.arrivals[i].at + self.config.placement_wait {
                self.fleet.pool().end_wait(ticket);
                self.starts[i] = Some((Start::Throttled, Duration::ZERO));
            } else if self.try_place(i, at) {
                self.fleet.pool().end_wait(ticket);
            } else {
                self.waiting.push_back((i, ticket));
            }
        }
    }

    /// Places arrival `i` now; false if it must wait.
    fn try_place(&mut self, i: usize, at: Duration) -> bool {
        let now = self.t0 + at;
        let a = &self.arrivals[i];
        let key = a.key();
        let (memory_mb, runtime) = (a.memory_mb, a.runtime.clone());
        loop {
            match self.fleet.place(&key, memory_mb, &runtime, now) {
                Placement::Warm { container_id, .. } => {
                    self.run_on(i, container_id, at, Start::Warm);
                    return true;
                }
                Placement::NewContainer { vm_id } | Placement::TakeWarming { vm_id } => {
                    let start_at = at + self.config.container_start;
                    self.start_container(i, &vm_id, start_at, Start::ColdContainer);
                    return true;
                }
                Placement::BootVm { vm_id, .. } => {
                    self.push(
                        at + self.config.boot_time,
                        Ev::Booted {
                            vm_id,
                            pending: Some(i),
                        },
                    );
                    return true;
                }
                Placement::Wait => match self.fleet.pool().evict_for(&key, memory_mb, now) {
                    Some(evicted) => self.let_go(at, evicted),
                    None => return false,
                },
            }
        }
    }

    fn start_container(&mut self, i: usize, vm_id: &str, at: Duration, start: Start) {
        let a = &self.arrivals[i];
        let key = a.key();
        self.next_container += 1;
        let container_id = format!("c-{}", self.next_container);
        self.fleet
            .pool()
            .container_created(&container_id, &key, vm_id, a.memory_mb);
        self.run_on(i, container_id, at, start);
    }

    fn run_on(&mut self, i: usize, container_id: String, at: Duration, start: Start) {
        let a = &self.arrivals[i];
        let done = at + a.duration;
        self.starts[i] = Some((start, done - a.at));
        self.push(done, Ev::Done { container_id });
    }
}
