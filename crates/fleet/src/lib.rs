//! Ember's fleet policy: the warming pool of booted VMs assigned to no one, the active pool of
//! VMs each assigned to one account, placement of executions on them ([`pool`]), the measured
//! request rate ([`rate`]) and the replenishment of the warming pool that follows it
//! ([`replenish`]), the sharing of the host among accounts under overload ([`fair`]), and the
//! environments kept initialized for provisioned concurrency ([`provisioned`]).
//!
//! Pure logic: no I/O, no threads, no clock of its own. Every method takes `now`, so the live
//! server (the executor, which does the booting and stopping) and the deterministic simulation
//! ([`sim`]) run the very same decisions.

#![forbid(unsafe_code)]

pub mod fair;
pub mod pool;
pub mod provisioned;
pub mod rate;
pub mod replenish;
pub mod sim;
pub mod sizing;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub use fair::{FairConfig, WaitTicket};
pub use pool::{AccountView, ContainerView, Expired, FnKey, Placement, Pool, PoolKind, VmView};
pub use provisioned::{ProvisionConfig, Provisioner, Status as ProvisionedStatus, TargetView};
pub use rate::Rates;
pub use replenish::{ReplenishConfig, Replenisher};

/// How the fleet is shaped and kept.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Memory all VMs together may take, in MB.
    pub capacity_mb: u64,
    /// The host's vCPUs, for reporting.
    pub host_vcpus: u32,
    /// Memory of a VM, in MB (a function needing more gets a VM of its own size).
    pub vm_memory_mb: u64,
    pub vm_vcpus: u32,
    /// An idle container is destroyed after this long.
    pub container_keep_alive: Duration,
    /// An active VM without containers is destroyed after this long.
    pub vm_keep_alive: Duration,
    /// A warming VM idle this long is retired, while the warming pool holds more than N.
    pub warm_ttl: Duration,
    /// The time constant of the measured request rate.
    pub rate_window: Duration,
    /// The time a VM boot is assumed to take until one is measured.
    pub boot_estimate: Duration,
    pub replenish: ReplenishConfig,
    /// How accounts share the host under overload: weights and the per-account ceiling.
    pub fairness: FairConfig,
    /// How many executions may wait for capacity at once (`--max-waiting`); more are refused
    /// ([`Pool::try_begin_wait`]).
    pub max_waiting: usize,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            capacity_mb: 16 * 1024,
            host_vcpus: 2,
            vm_memory_mb: 2048,
            vm_vcpus: 2,
            container_keep_alive: Duration::from_secs(300),
            vm_keep_alive: Duration::from_secs(60),
            warm_ttl: Duration::from_secs(30),
            rate_window: Duration::from_secs(2),
            boot_estimate: Duration::from_millis(50),
            replenish: ReplenishConfig::default(),
            fairness: FairConfig::default(),
            max_waiting: 1024,
        }
    }
}

/// A VM the caller should boot for the warming pool (already registered as booting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmingBoot {
    pub vm_id: String,
    pub memory_mb: u64,
    /// The runtime to ready it for, if requests have shown one.
    pub runtime: Option<String>,
}

/// A snapshot of the fleet, for observability.
#[derive(Debug, Clone)]
pub struct FleetView {
    pub vms: Vec<VmView>,
    /// Requests per second, measured.
    pub request_rate: f64,
    pub runtime_rates: BTreeMap<String, f64>,
    pub replenish_count: u32,
    pub replenish_reason: String,
    pub capacity_mb: u64,
    pub host_vcpus: u32,
    pub reserved_mb: u64,
    pub vm_vcpus: u32,
    /// The boot time N is computed with.
    pub boot_seconds: f64,
    /// Seconds VMs have sat idle so far (warming, or active without containers).
    pub idle_vm_seconds: f64,
    /// Each account holding memory or waiting for it: weight, held memory, fair share.
    pub accounts: Vec<AccountView>,
    /// The ceiling on one account's memory, if any.
    pub account_memory_mb: Option<u64>,
    /// Provisioned-concurrency targets, by pin.
    pub provisioned: Vec<TargetView>,
}

/// What provisioned concurrency calls for now ([`Fleet::provision_plan`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ProvisionPlan {
    /// Environments to create: the target's pin, once per environment.
    pub create: Vec<String>,
    /// Environments beyond their target's request, let go: the caller destroys them.
    pub release: Expired,
}

/// The pools, the request rate and the replenishment policy, together.
#[derive(Debug)]
pub struct Fleet {
    config: FleetConfig,
    pool: Pool,
    rates: Rates,
    replenisher: Replenisher,
    /// Measured boot time, an exponentially weighted average.
    boot_seconds: f64,
    boots_measured: bool,
    /// VMs to add to the warming pool for removals since the last [`Fleet::warming_boots`].
    owed: u32,
    provisioner: Provisioner,
}

impl Fleet {
    /// A fleet with no VMs yet. VM ids end in `tag`.
    pub fn new(config: FleetConfig, tag: &str) -> Self {
        Self {
            pool: Pool::new(config.capacity_mb, config.vm_memory_mb, tag)
                .with_fairness(config.fairness.clone())
                .with_max_waiting(config.max_waiting),
            rates: Rates::new(config.rate_window),
            replenisher: Replenisher::new(config.replenish.clone()),
            boot_seconds: config.boot_estimate.as_secs_f64(),
            boots_measured: false,
            owed: 0,
            provisioner: Provisioner::new(ProvisionConfig::default()),
            config,
        }
    }

    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// The pool, for the container bookkeeping that needs no policy.
    pub fn pool(&mut self) -> &mut Pool {
        &mut self.pool
    }

    /// Counts an execution request for `runtime`, and lets N follow the new rate. Returns the
    /// new N if it changed.
    pub fn request(&mut self, runtime: &str, now: Instant) -> Option<u32> {
        self.rates.record(runtime, now);
        self.evaluate(now)
    }

    /// Lets N follow the rate as it decays without requests. Returns the new N if it changed.
    pub fn tick(&mut self, now: Instant) -> Option<u32> {
        self.rates.prune(now);
        self.evaluate(now)
    }

    /// Computes N again if the rate calls for it. When N rises, the warming pool is topped up
    /// to the new N at once, ahead of the removals the higher rate will bring.
    fn evaluate(&mut self, now: Instant) -> Option<u32> {
        let old = self.replenisher.count();
        let changed = self
            .replenisher
            .evaluate(self.rates.fleet(now), self.boot_seconds);
        if let Some(n) = changed.filter(|&n| n > old) {
            let short = (n as usize).saturating_sub(self.pool.warming_count());
            self.owed = self.owed.max(u32::try_from(short).unwrap_or(u32::MAX));
        }
        changed
    }

    /// The current N.
    pub fn replenish_count(&self) -> u32 {
        self.replenisher.count()
    }

    /// The measured request rate, per second.
    pub fn request_rate(&self, now: Instant) -> f64 {
        self.rates.fleet(now)
    }

    /// Decides where an execution goes (see [`pool`]). A VM taken from the warming pool owes
    /// the pool N new ones, started by the next [`Fleet::warming_boots`].
    pub fn place(&mut self, key: &FnKey, memory_mb: u64, runtime: &str, now: Instant) -> Placement {
        let placement = self.pool.place(key, memory_mb, runtime, now);
        if matches!(placement, Placement::TakeWarming { .. }) {
            self.owed = self.owed.saturating_add(self.replenisher.count());
        }
        placement
    }

    /// Decides where a new provisioned container goes ([`Pool::place_new`]); like
    /// [`Fleet::place`], a VM taken from the warming pool owes the pool N new ones.
    pub fn place_new(
        &mut self,
        key: &FnKey,
        memory_mb: u64,
        runtime: &str,
        now: Instant,
    ) -> Placement {
        let placement = self.pool.place_new(key, memory_mb, runtime, now);
        if matches!(placement, Placement::TakeWarming { .. }) {
            self.owed = self.owed.saturating_add(self.replenisher.count());
        }
        placement
    }

    /// Sets a provisioned-concurrency target: `pin` wants `requested` environments.
    pub fn provision(&mut self, pin: &str, requested: u32) {
        self.provisioner.set(pin, requested);
    }

    /// Drops a target; its idle environments are let go (the caller destroys them), busy ones
    /// end as on-demand containers.
    pub fn unprovision(&mut self, pin: &str, now: Instant) -> Expired {
        self.provisioner.remove(pin);
        self.pool.unpin(pin, 0, now)
    }

    /// The provisioner, to report creations to.
    pub fn provisioner(&mut self) -> &mut Provisioner {
        &mut self.provisioner
    }

    /// What provisioned concurrency calls for now: environments to create (those missing, not
    /// being created, and not held back by a failure's delay), and those beyond a lowered
    /// request, let go.
    pub fn provision_plan(&mut self, now: Instant) -> ProvisionPlan {
        let mut plan = ProvisionPlan::default();
        let pins: Vec<String> = self.provisioner.pins().map(str::to_owned).collect();
        for pin in pins {
            let requested = self.provisioner.requested(&pin).unwrap_or(0) as usize;
            let mut live = self.pool.pinned(&pin);
            if live > requested {
                let gone = self.pool.unpin(&pin, requested, now);
                plan.release.containers.extend(gone.containers);
                live = self.pool.pinned(&pin);
            }
            let n = self.provisioner.plan(&pin, live, now);
            plan.create.extend(std::iter::repeat_n(pin, n as usize));
        }
        plan
    }

    /// A target's view, if it exists.
    pub fn provisioned(&self, pin: &str) -> Option<TargetView> {
        self.provisioner.view(pin, self.pool.pinned(pin))
    }

    /// The VMs to boot for the warming pool now, already registered as booting: N for every VM
    /// taken since the last call (and the shortfall when N rose), and enough to keep the
    /// policy's minimum, without taking the pool past the larger of N and the policy's maximum,
    /// nor the host past its capacity.
    pub fn warming_boots(&mut self, now: Instant) -> Vec<WarmingBoot> {
        let n = self.replenisher.count() as usize;
        let floor = self.warm_floor();
        let warming = self.pool.warming_count();
        let wanted = (self.owed as usize).max(floor.saturating_sub(warming));
        self.owed = 0;
        let ceiling = n.max(self.config.replenish.max as usize);
        let wanted = wanted.min(ceiling.saturating_sub(warming));
        let mut boots = Vec::with_capacity(wanted);
        for _ in 0..wanted {
            let runtime = self.runtime_most_short(now);
            match self.pool.begin_warming(runtime.as_deref(), now) {
                Some((vm_id, memory_mb)) => boots.push(WarmingBoot {
                    vm_id,
                    memory_mb,
                    runtime,
                }),
                None => break,
            }
        }
        boots
    }

    /// The runtime whose share of the warming pool falls furthest short of its share of the
    /// request rate; `None` (any) before any request.
    fn runtime_most_short(&self, now: Instant) -> Option<String> {
        let rates = self.rates.by_runtime(now);
        let total: f64 = rates.values().sum();
        if total <= 0.0 {
            return None;
        }
        let have = self.pool.warming_runtimes();
        let pool = (have.values().sum::<usize>() + 1) as f64;
        rates
            .iter()
            .map(|(runtime, rate)| {
                let held = have.get(&Some(runtime.clone())).copied().unwrap_or(0) as f64;
                (rate / total * pool - held, runtime)
            })
            .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.cmp(a.1)))
            .map(|(_, runtime)| runtime.clone())
    }

    /// A booting VM is up after `took`; the boot time estimate follows.
    pub fn vm_booted(&mut self, vm_id: &str, took: Duration, now: Instant) {
        let secs = took.as_secs_f64();
        self.boot_seconds = if self.boots_measured {
            0.7 * self.boot_seconds + 0.3 * secs
        } else {
            secs
        };
        self.boots_measured = true;
        self.pool.vm_booted(vm_id, now);
    }

    /// The warming pool's floor: the policy's minimum N (for a fixed policy, N).
    fn warm_floor(&self) -> usize {
        let config = &self.config.replenish;
        let floor = if config.adaptive {
            config.min
        } else {
            self.replenisher.count()
        };
        floor as usize
    }

    /// Retires what has idled too long (see [`Pool::expired`]). Warming VMs unused for the TTL
    /// retire down to the pool's floor: N covers removals, and VMs that saw none were not
    /// needed.
    pub fn expired(&mut self, now: Instant) -> Expired {
        let keep = self.warm_floor();
        self.pool.expired(
            now,
            self.config.container_keep_alive,
            self.config.vm_keep_alive,
            self.config.warm_ttl,
            keep,
        )
    }

    /// A snapshot for observability.
    pub fn view(&self, now: Instant) -> FleetView {
        FleetView {
            vms: self.pool.vms(),
            request_rate: self.rates.fleet(now),
            runtime_rates: self.rates.by_runtime(now),
            replenish_count: self.replenisher.count(),
            replenish_reason: self.replenisher.reason().to_owned(),
            capacity_mb: self.config.capacity_mb,
            host_vcpus: self.config.host_vcpus,
            reserved_mb: self.pool.reserved_mb(),
            vm_vcpus: self.config.vm_vcpus,
            boot_seconds: self.boot_seconds,
            idle_vm_seconds: self.pool.idle_vm_seconds(now),
            accounts: self.pool.accounts(),
            account_memory_mb: self.pool.account_memory_mb(),
            provisioned: self
                .provisioner
                .pins()
                .filter_map(|pin| self.provisioner.view(pin, self.pool.pinned(pin)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
