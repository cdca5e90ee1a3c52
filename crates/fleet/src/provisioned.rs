//! Provisioned concurrency's policy: for each target (a function version, named by the user's
//! qualifier), how many initialized execution environments to create now, when to try again
//! after a failure, and what its status is. Pure logic, the clock passed in.
//!
//! The environments themselves are the pool's pinned containers ([`crate::Pool::pin`]): the
//! pool says how many of a target's exist (`live`), this module how many are being created and
//! what went wrong. A target wants `requested` environments; the executor asks for
//! [`Provisioner::plan`] on every tick and after every change, creates what it is told, and
//! reports each creation with [`Provisioner::created`] or [`Provisioner::failed`]. An
//! environment that dies (a timeout, an OOM, an exit) leaves the pool, so the next plan
//! re-creates it. A failure holds the target's creations back for a delay that doubles with
//! each failure in a row ([`ProvisionConfig::retry_base`] up to [`ProvisionConfig::retry_max`]),
//! so a function whose init always fails costs one attempt per delay, not a loop.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How provisioning retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionConfig {
    /// The delay after a first failure.
    pub retry_base: Duration,
    /// The longest delay between attempts.
    pub retry_max: Duration,
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        Self {
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
    }
}

/// A target's status, as Lambda's `ProvisionedConcurrencyStatusEnum` says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Environments are being created.
    InProgress,
    /// Every requested environment is ready.
    Ready,
    /// The last attempt to create one failed, for this reason; attempts go on after a delay.
    Failed(String),
}

/// One target, for observability and the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetView {
    pub pin: String,
    pub requested: u32,
    /// Environments initialized and in the pool.
    pub ready: u32,
    /// Environments being created.
    pub creating: u32,
    pub status: Status,
}

#[derive(Debug, Clone)]
struct Target {
    requested: u32,
    creating: u32,
    failure: Option<Failure>,
}

#[derive(Debug, Clone)]
struct Failure {
    reason: String,
    at: Instant,
    /// Failures in a row.
    count: u32,
}

/// The provisioned-concurrency targets and their creations in flight.
#[derive(Debug, Default)]
pub struct Provisioner {
    config: ProvisionConfig,
    targets: BTreeMap<String, Target>,
}

impl Provisioner {
    pub fn new(config: ProvisionConfig) -> Self {
        Self {
            config,
            targets: BTreeMap::new(),
        }
    }

    /// Sets how many environments `pin` wants. A new request forgets past failures: the next
    /// plan tries at once.
    pub fn set(&mut self, pin: &str, requested: u32) {
        let target = self.targets.entry(pin.to_owned()).or_insert(Target {
            requested,
            creating: 0,
            failure: None,
        });
        target.requested = requested;
        target.failure = None;
    }

    /// Forgets a target. Returns whether it existed.
    pub fn remove(&mut self, pin: &str) -> bool {
        self.targets.remove(pin).is_some()
    }

    pub fn contains(&self, pin: &str) -> bool {
        self.targets.contains_key(pin)
    }

    /// The targets, by pin.
    pub fn pins(&self) -> impl Iterator<Item = &str> {
        self.targets.keys().map(String::as_str)
    }

    /// How many environments `pin` wants.
    pub fn requested(&self, pin: &str) -> Option<u32> {
        self.targets.get(pin).map(|t| t.requested)
    }

    /// How many environments of `pin` to start creating now, given `live` in the pool; they
    /// count as creating from now on. None while a failure's delay runs.
    pub fn plan(&mut self, pin: &str, live: usize, now: Instant) -> u32 {
        let config = self.config.clone();
        let Some(target) = self.targets.get_mut(pin) else {
            return 0;
        };
        if let Some(failure) = &target.failure {
            if now < failure.at + delay(&config, failure.count) {
                return 0;
            }
        }
        let live = u32::try_from(live).unwrap_or(u32::MAX);
        let wanted = target
            .requested
            .saturating_sub(live.saturating_add(target.creating));
        target.creating += wanted;
        wanted
    }

    /// An environment of `pin` is ready: failures in a row end.
    pub fn created(&mut self, pin: &str) {
        if let Some(target) = self.targets.get_mut(pin) {
            target.creating = target.creating.saturating_sub(1);
            target.failure = None;
        }
    }

    /// Creating an environment of `pin` failed, for `reason`.
    pub fn failed(&mut self, pin: &str, reason: &str, now: Instant) {
        if let Some(target) = self.targets.get_mut(pin) {
            target.creating = target.creating.saturating_sub(1);
            let count = target.failure.as_ref().map_or(0, |f| f.count) + 1;
            target.failure = Some(Failure {
                reason: reason.to_owned(),
                at: now,
                count,
            });
        }
    }

    /// A target's view, given `live` environments in the pool.
    pub fn view(&self, pin: &str, live: usize) -> Option<TargetView> {
        let target = self.targets.get(pin)?;
        let ready = u32::try_from(live).unwrap_or(u32::MAX);
        let status = if ready >= target.requested {
            Status::Ready
        } else if let Some(failure) = &target.failure {
            Status::Failed(failure.reason.clone())
        } else {
            Status::InProgress
        };
        Some(TargetView {
            pin: pin.to_owned(),
            requested: target.requested,
            ready: ready.min(target.requested),
            creating: target.creating,
            status,
        })
    }
}

/// The delay after `count` failures in a row.
fn delay(config: &ProvisionConfig, count: u32) -> Duration {
    let doublings = count.saturating_sub(1).min(16);
    config
        .retry_base
        .saturating_mul(1 << doublings)
        .min(config.retry_max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t0() -> Instant {
        static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *T0.get_or_init(Instant::now)
    }

    fn at(ms: u64) -> Instant {
        t0() + Duration::from_millis(ms)
    }

    #[test]
    fn plans_what_is_missing_once() {
        // (requested, live, already creating, planned now)
        let table = [
            (4, 0, 0, 4),
            (4, 1, 0, 3),
            (4, 1, 2, 1),
            (4, 4, 0, 0),
            (4, 6, 0, 0),
            (0, 0, 0, 0),
            (16, 0, 16, 0),
            (2, 0, 3, 0),
        ];
        for (requested, live, creating, planned) in table {
            let mut p = Provisioner::default();
            // `creating` environments under way, then the request.
            p.set("f:1", creating);
            assert_eq!(p.plan("f:1", 0, at(0)), creating);
            p.set("f:1", requested);
            assert_eq!(
                p.plan("f:1", live, at(0)),
                planned,
                "requested {requested}, live {live}, creating {creating}"
            );
        }
    }

    #[test]
    fn a_dead_environment_is_planned_again() {
        let mut p = Provisioner::default();
        p.set("f:1", 2);
        assert_eq!(p.plan("f:1", 0, at(0)), 2);
        p.created("f:1");
        p.created("f:1");
        assert_eq!(p.plan("f:1", 2, at(10)), 0);
        // One died: the pool holds one.
        assert_eq!(p.plan("f:1", 1, at(20)), 1);
    }

    #[test]
    fn status_follows_the_environments() {
        let mut p = Provisioner::default();
        p.set("f:1", 2);
        assert_eq!(p.view("f:1", 0).unwrap().status, Status::InProgress);
        p.plan("f:1", 0, at(0));
        p.created("f:1");
        let view = p.view("f:1", 1).unwrap();
        assert_eq!((view.ready, view.creating), (1, 1));
        assert_eq!(view.status, Status::InProgress);
        p.failed("f:1", "Runtime.ImportModuleError: no module", at(5));
        assert_eq!(
            p.view("f:1", 1).unwrap().status,
            Status::Failed("Runtime.ImportModuleError: no module".into())
        );
        // All ready again: READY, whatever failed before.
        assert_eq!(p.view("f:1", 2).unwrap().status, Status::Ready);
        assert!(p.view("other", 0).is_none());
    }

    #[test]
    fn failures_back_off_doubling_up_to_the_most() {
        let config = ProvisionConfig {
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_millis(350),
        };
        let mut p = Provisioner::new(config);
        p.set("f:1", 1);
        // (time of the failure, first time a retry is planned)
        let table = [(0, 100), (100, 300), (300, 650), (650, 1000)];
        assert_eq!(p.plan("f:1", 0, at(0)), 1);
        for (failed_at, retry_at) in table {
            p.failed("f:1", "no", at(failed_at));
            assert_eq!(
                p.plan("f:1", 0, at(retry_at - 1)),
                0,
                "held until {retry_at}"
            );
            assert_eq!(p.plan("f:1", 0, at(retry_at)), 1, "retried at {retry_at}");
        }
    }

    #[test]
    fn a_new_request_retries_at_once() {
        let mut p = Provisioner::default();
        p.set("f:1", 3);
        assert_eq!(p.plan("f:1", 0, at(0)), 3);
        for _ in 0..3 {
            p.failed("f:1", "no capacity", at(0));
        }
        assert_eq!(p.plan("f:1", 0, at(1)), 0);
        p.set("f:1", 2);
        assert_eq!(p.plan("f:1", 0, at(1)), 2);
        assert!(p.remove("f:1"));
        assert_eq!(p.plan("f:1", 0, at(2)), 0);
        assert!(!p.remove("f:1"));
    }

    // ---- pinned containers in the pool, and the fleet's plan ---------------------------------

    use crate::{Expired, Fleet, FleetConfig, FnKey, Placement, Pool, ReplenishConfig};

    fn key(version: &str) -> FnKey {
        FnKey {
            account_id: "a".into(),
            function_name: "f".into(),
            version: version.into(),
            revision_id: version.into(),
            memory_mb: 128,
            egress_denied: false,
        }
    }

    /// A new container of `key`, created (busy) in the pool; returns its id.
    fn container(pool: &mut Pool, key: &FnKey, id: &str, now: Instant) -> String {
        let vm_id = match pool.place_new(key, 128, "python3.12", now) {
            Placement::BootVm { vm_id, .. } => {
                pool.vm_booted(&vm_id, now);
                vm_id
            }
            Placement::NewContainer { vm_id } | Placement::TakeWarming { vm_id } => vm_id,
            other => panic!("no room: {other:?}"),
        };
        pool.container_created(id, key, &vm_id, 128);
        id.to_owned()
    }

    #[test]
    fn a_pinned_container_serves_its_version_first_and_is_never_reclaimed() {
        let mut pool = Pool::new(4096, 1024, "t");
        let v1 = key("v1");
        let on_demand = container(&mut pool, &v1, "c-demand", at(0));
        let pinned = container(&mut pool, &v1, "c-pinned", at(0));
        pool.pin(&pinned, "a:f:1");
        // Idle, the on-demand one more recently: the pinned one still goes first.
        pool.release(&pinned, true, at(1));
        pool.release(&on_demand, true, at(2));
        assert!(matches!(
            pool.place(&v1, 128, "python3.12", at(3)),
            Placement::Warm { container_id, .. } if container_id == pinned
        ));
        pool.release(&pinned, true, at(4));
        // Another version never gets it.
        assert!(!matches!(
            pool.place(&key("v2"), 128, "python3.12", at(5)),
            Placement::Warm { .. }
        ));
        // Long past every keep-alive: the on-demand container expires, the pinned one stays.
        let expired = pool.expired(
            at(3_600_000),
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(1),
            0,
        );
        assert_eq!(expired.containers.len(), 1, "{expired:?}");
        assert_eq!(expired.containers[0].1, on_demand);
        assert_eq!(pool.pinned("a:f:1"), 1);
        // Nor is it evicted to make room for another function of the account.
        assert!(pool
            .evict_for(&key("other"), 1024, at(3_600_001))
            .is_none_or(|e| e.containers.iter().all(|(_, c)| *c != pinned)));
        assert_eq!(pool.pinned("a:f:1"), 1);
    }

    #[test]
    fn unpinning_removes_idle_ones_and_frees_busy_ones() {
        let mut pool = Pool::new(4096, 1024, "t");
        let v1 = key("v1");
        for id in ["c1", "c2", "c3"] {
            container(&mut pool, &v1, id, at(0));
            pool.pin(id, "a:f:1");
        }
        pool.release("c1", true, at(1));
        pool.release("c2", true, at(1));
        // c3 is busy. Keep two: the busy one stays, one idle one goes.
        let gone = pool.unpin("a:f:1", 2, at(2));
        assert_eq!(gone.containers.len(), 1, "{gone:?}");
        assert_eq!(pool.pinned("a:f:1"), 2);
        // None kept: the idle one goes, the busy one is an on-demand container from now on.
        let gone = pool.unpin("a:f:1", 0, at(3));
        assert_eq!(gone.containers.len(), 1, "{gone:?}");
        assert_eq!(pool.pinned("a:f:1"), 0);
        pool.release("c3", true, at(4));
        let expired = pool.expired(
            at(10_000),
            Duration::from_secs(1),
            Duration::from_secs(3600),
            Duration::from_secs(1),
            0,
        );
        assert_eq!(
            expired,
            Expired {
                containers: vec![(expired.containers[0].0.clone(), "c3".into())],
                vms: vec![]
            }
        );
    }

    #[test]
    fn the_fleet_plans_missing_environments_and_releases_surplus() {
        let config = FleetConfig {
            replenish: ReplenishConfig {
                initial: 0,
                min: 0,
                max: 0,
                adaptive: false,
                ..ReplenishConfig::default()
            },
            ..FleetConfig::default()
        };
        let mut fleet = Fleet::new(config, "t");
        fleet.provision("a:f:1", 3);
        let plan = fleet.provision_plan(at(0));
        assert_eq!(plan.create, vec!["a:f:1"; 3]);
        assert!(plan.release.is_empty());
        // Two are made; one failed. Nothing more until the failure's delay has passed.
        let v1 = key("v1");
        for id in ["c1", "c2"] {
            container(fleet.pool(), &v1, id, at(1));
            fleet.pool().pin(id, "a:f:1");
            fleet.pool().release(id, true, at(1));
            fleet.provisioner().created("a:f:1");
        }
        fleet.provisioner().failed("a:f:1", "no memory", at(2));
        assert!(fleet.provision_plan(at(3)).create.is_empty());
        let view = fleet.provisioned("a:f:1").unwrap();
        assert_eq!((view.ready, view.requested), (2, 3));
        assert_eq!(view.status, Status::Failed("no memory".into()));
        assert_eq!(fleet.provision_plan(at(2_000)).create, vec!["a:f:1"]);
        // Lowered to one: one of the two goes.
        fleet.provision("a:f:1", 1);
        let plan = fleet.provision_plan(at(2_001));
        assert_eq!(plan.release.containers.len(), 1);
        assert_eq!(fleet.view(at(2_001)).provisioned[0].ready, 1);
        // Dropped: the last one goes too.
        let gone = fleet.unprovision("a:f:1", at(2_002));
        assert_eq!(gone.containers.len(), 1);
        assert!(fleet.provisioned("a:f:1").is_none());
        assert!(fleet.view(at(2_003)).provisioned.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Step {
        Set(u32),
        Plan { live: u8, ms: u16 },
        Created,
        Failed { ms: u16 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u32..20).prop_map(Step::Set),
            (0u8..24, 0u16..5000).prop_map(|(live, ms)| Step::Plan { live, ms }),
            Just(Step::Created),
            (0u16..5000).prop_map(|ms| Step::Failed { ms }),
        ]
    }

    proptest! {
        /// Whatever happens, a plan never takes live and creating environments past the
        /// request, and the status is READY exactly when the pool holds the request.
        #[test]
        fn never_more_than_requested(steps in proptest::collection::vec(step(), 1..60)) {
            let mut p = Provisioner::default();
            p.set("f:1", 0);
            let mut live = 0usize;
            for s in steps {
                match s {
                    Step::Set(n) => p.set("f:1", n),
                    Step::Plan { live: l, ms } => {
                        let requested = p.requested("f:1").unwrap();
                        live = usize::from(l).min(requested as usize);
                        let before = p.view("f:1", live).unwrap().creating;
                        let planned = p.plan("f:1", live, at(u64::from(ms)));
                        let after = live as u32 + before + planned;
                        prop_assert!(after <= requested.max(live as u32 + before));
                        prop_assert!(planned == 0 || after == requested);
                    }
                    Step::Created => p.created("f:1"),
                    Step::Failed { ms } => p.failed("f:1", "no", at(u64::from(ms))),
                }
                let view = p.view("f:1", live).unwrap();
                prop_assert_eq!(view.status == Status::Ready, live as u32 >= view.requested);
                prop_assert!(view.ready <= view.requested);
            }
        }
    }
}
