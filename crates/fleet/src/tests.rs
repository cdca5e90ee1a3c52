//! Tests of the fleet as a whole: warming pool scenarios, property tests of its invariants
//! under random operations, and the burst simulation held to the benchmark's target.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::sim::{BurstPattern, SimConfig};

fn key(account: &str, function: &str) -> FnKey {
    FnKey {
        account_id: account.into(),
        function_name: function.into(),
        version: "$LATEST".into(),
        revision_id: "r1".into(),
        memory_mb: 128,
        egress_denied: false,
    }
}

fn config(replenish: ReplenishConfig) -> FleetConfig {
    FleetConfig {
        capacity_mb: 8 * 2048,
        replenish,
        ..FleetConfig::default()
    }
}

/// Boots what the fleet asks for, at once.
fn boot_warming(fleet: &mut Fleet, now: Instant) -> Vec<WarmingBoot> {
    let boots = fleet.warming_boots(now);
    for b in &boots {
        fleet.vm_booted(&b.vm_id, Duration::from_millis(20), now);
    }
    boots
}

fn pools(fleet: &mut Fleet) -> (usize, usize) {
    let vms = fleet.pool().vms();
    let count = |kind| vms.iter().filter(|v| v.pool == kind).count();
    (count(PoolKind::Warming), count(PoolKind::Active))
}

#[test]
fn a_vm_taken_from_the_warming_pool_is_replaced_by_n() {
    let t0 = Instant::now();
    let mut fleet = Fleet::new(config(ReplenishConfig::fixed(2)), "t");
    let boots = boot_warming(&mut fleet, t0);
    assert_eq!(boots.len(), 2, "the pool starts at N");
    assert_eq!(pools(&mut fleet), (2, 0));

    let placement = fleet.place(&key("a", "f"), 512, "python3.11", t0);
    let Placement::TakeWarming { vm_id } = placement else {
        panic!("{placement:?}")
    };
    assert_eq!(fleet.pool().owner(&vm_id), Some("a"));
    assert_eq!(pools(&mut fleet), (1, 1));
    assert_eq!(
        boot_warming(&mut fleet, t0).len(),
        1,
        "up to the ceiling, max(N, max) = 2"
    );

    // Another account never gets a's VM: it takes a warming one.
    let placement = fleet.place(&key("b", "g"), 512, "python3.11", t0);
    assert!(matches!(placement, Placement::TakeWarming { vm_id: ref v } if *v != vm_id));
    // a's next container goes into a's VM (best fit), not the warming pool.
    assert_eq!(
        fleet.place(&key("a", "f2"), 512, "python3.11", t0),
        Placement::NewContainer { vm_id }
    );
}

#[test]
fn without_a_warming_pool_every_new_vm_is_a_cold_boot() {
    let t0 = Instant::now();
    let mut fleet = Fleet::new(config(ReplenishConfig::fixed(0)), "t");
    assert!(boot_warming(&mut fleet, t0).is_empty());
    assert!(matches!(
        fleet.place(&key("a", "f"), 512, "python3.11", t0),
        Placement::BootVm { .. }
    ));
    assert!(boot_warming(&mut fleet, t0).is_empty());
}

#[test]
fn warming_vms_are_readied_for_the_runtimes_in_demand_and_matched_to_them() {
    let t0 = Instant::now();
    let mut fleet = Fleet::new(config(ReplenishConfig::fixed(4)), "t");
    for i in 0..30 {
        let t = t0 + Duration::from_millis(i * 10);
        fleet.request("python3.11", t);
        if i % 3 == 0 {
            fleet.request("provided.al2023", t);
        }
    }
    let now = t0 + Duration::from_millis(300);
    let boots = boot_warming(&mut fleet, now);
    let python = boots
        .iter()
        .filter(|b| b.runtime.as_deref() == Some("python3.11"))
        .count();
    assert_eq!((boots.len(), python), (4, 3), "{boots:?}");
    let provided = boots
        .iter()
        .find(|b| b.runtime.as_deref() == Some("provided.al2023"))
        .map(|b| b.vm_id.clone());
    assert_eq!(
        fleet.place(&key("a", "native"), 128, "provided.al2023", now),
        Placement::TakeWarming {
            vm_id: provided.unwrap()
        }
    );
}

/// A pool of one is readied for the runtime most in demand, whichever sorts first.
#[test]
fn a_single_warming_vm_is_readied_for_the_runtime_most_in_demand() {
    for (busy, quiet) in [
        ("python3.11", "provided.al2023"),
        ("provided.al2023", "python3.11"),
    ] {
        let t0 = Instant::now();
        let mut fleet = Fleet::new(config(ReplenishConfig::fixed(1)), "t");
        for i in 0..30 {
            let t = t0 + Duration::from_millis(i * 10);
            fleet.request(busy, t);
            if i % 3 == 0 {
                fleet.request(quiet, t);
            }
        }
        let boots = boot_warming(&mut fleet, t0 + Duration::from_millis(300));
        let runtimes: Vec<_> = boots.iter().map(|b| b.runtime.as_deref()).collect();
        assert_eq!(runtimes, vec![Some(busy)]);
    }
}

#[test]
fn n_rises_with_a_burst_and_falls_back_after_it() {
    let t0 = Instant::now();
    let mut fleet = Fleet::new(
        FleetConfig {
            boot_estimate: Duration::from_millis(50),
            ..config(ReplenishConfig::default())
        },
        "t",
    );
    let mut t = t0;
    // Boots what the fleet asks for, in the 50 ms it estimates.
    let boot = |fleet: &mut Fleet, t| {
        let boots = fleet.warming_boots(t);
        for b in &boots {
            fleet.vm_booted(&b.vm_id, Duration::from_millis(50), t);
        }
        boots.len()
    };
    assert_eq!(boot(&mut fleet, t), 1);
    for _ in 0..50 {
        t += Duration::from_millis(200); // 5/s
        fleet.request("python3.11", t);
    }
    assert_eq!(fleet.replenish_count(), 1);
    let rate = fleet.request_rate(t);
    assert!((4.0..=6.0).contains(&rate), "measured {rate}/s of 5/s");
    assert_eq!(boot(&mut fleet, t), 0, "N = 1 is warm");
    for _ in 0..400 {
        t += Duration::from_millis(5); // 200/s
        fleet.request("python3.11", t);
    }
    let rate = fleet.request_rate(t);
    // After one time constant (2 s), well on its way from 5/s to 200/s.
    assert!(
        (100.0..=200.0).contains(&rate),
        "measured {rate}/s of 200/s"
    );
    let n = fleet.replenish_count();
    assert!(n >= 6, "{}", fleet.view(t).replenish_reason);
    // The pool is topped up to the new N at once, before any VM is taken from it.
    assert_eq!(boot(&mut fleet, t), n as usize - 1);
    assert_eq!(pools(&mut fleet), (n as usize, 0));
    // Quiet: the rate decays and N returns to the minimum.
    for _ in 0..100 {
        t += Duration::from_millis(100);
        fleet.tick(t);
    }
    assert_eq!(
        fleet.replenish_count(),
        1,
        "{}",
        fleet.view(t).replenish_reason
    );
}

#[test]
fn surplus_warming_vms_retire_after_their_ttl_but_n_stay() {
    let t0 = Instant::now();
    let mut fleet = Fleet::new(config(ReplenishConfig::fixed(1)), "t");
    boot_warming(&mut fleet, t0);
    // Pretend a burst left three more in the pool.
    for _ in 0..3 {
        let (id, _) = fleet.pool().begin_warming(None, t0).unwrap();
        fleet.vm_booted(&id, Duration::from_millis(5), t0);
    }
    let ttl = fleet.config().warm_ttl;
    assert!(fleet.expired(t0 + ttl / 2).is_empty());
    let expired = fleet.expired(t0 + ttl);
    assert_eq!(expired.vms.len(), 3);
    assert_eq!(pools(&mut fleet), (1, 0));
    let reserved = fleet.pool().reserved_mb();
    assert_eq!(
        reserved,
        4 * 2048,
        "retiring VMs keep their memory until stopped"
    );
    for vm in expired.vms {
        fleet.pool().vm_stopped(&vm, t0 + ttl);
    }
    assert_eq!(fleet.pool().reserved_mb(), 2048);
}

#[test]
fn an_empty_active_vm_is_destroyed_never_reassigned_and_the_pool_refills() {
    let t0 = Instant::now();
    let mut fleet = Fleet::new(config(ReplenishConfig::fixed(1)), "t");
    boot_warming(&mut fleet, t0);
    let Placement::TakeWarming { vm_id } = fleet.place(&key("a", "f"), 512, "p", t0) else {
        panic!()
    };
    fleet
        .pool()
        .container_created("c1", &key("a", "f"), &vm_id, 512);
    fleet.pool().release("c1", false, t0);
    boot_warming(&mut fleet, t0);
    let keep = fleet.config().vm_keep_alive;
    let expired = fleet.expired(t0 + keep);
    assert_eq!(expired.vms, vec![vm_id.clone()]);
    let view = fleet.pool().vms();
    let retiring = view.iter().find(|v| v.vm_id == vm_id).unwrap();
    assert_eq!(retiring.pool, PoolKind::Retiring);
    assert_eq!(retiring.account_id, None);
    // Account b takes the warming VM, not a's retiring one.
    let placement = fleet.place(&key("b", "g"), 512, "p", t0 + keep);
    assert!(matches!(placement, Placement::TakeWarming { vm_id: ref v } if *v != vm_id));
}

#[test]
fn idle_vm_seconds_count_warming_and_empty_active_vms() {
    let t0 = Instant::now();
    let mut fleet = Fleet::new(config(ReplenishConfig::fixed(1)), "t");
    boot_warming(&mut fleet, t0);
    let t1 = t0 + Duration::from_secs(10);
    assert!((fleet.view(t1).idle_vm_seconds - 10.0).abs() < 1e-9);
    let Placement::TakeWarming { vm_id } = fleet.place(&key("a", "f"), 512, "p", t1) else {
        panic!()
    };
    fleet
        .pool()
        .container_created("c1", &key("a", "f"), &vm_id, 512);
    let t2 = t1 + Duration::from_secs(5);
    assert!(
        (fleet.view(t2).idle_vm_seconds - 10.0).abs() < 1e-9,
        "busy is not idle"
    );
    fleet.pool().release("c1", false, t2);
    let t3 = t2 + Duration::from_secs(2);
    assert!((fleet.view(t3).idle_vm_seconds - 12.0).abs() < 1e-9);
}

/// The benchmark's pattern and settings (see `ember bench burst`), in simulation, over eight
/// seeds: the adaptive pool makes at least 5× fewer cold-VM starts on the step than a fixed
/// N = 1, with at most 1.5× its idle VM-seconds.
#[test]
fn the_burst_simulation_meets_the_benchmark_target() {
    for seed in 1..=8 {
        let pattern = BurstPattern {
            seed,
            ..BurstPattern::default()
        };
        let arrivals = pattern.arrivals();
        let (from, to) = pattern.step_window();
        let sim = |replenish: ReplenishConfig| {
            sim::run(
                &SimConfig {
                    fleet: FleetConfig {
                        capacity_mb: 64 * 2048,
                        container_keep_alive: Duration::from_secs(600),
                        vm_keep_alive: Duration::from_secs(600),
                        warm_ttl: Duration::from_millis(750),
                        rate_window: Duration::from_millis(250),
                        replenish,
                        ..FleetConfig::default()
                    },
                    boot_time: Duration::from_millis(40),
                    container_start: Duration::from_millis(5),
                    stop_time: Duration::from_millis(5),
                    placement_wait: Duration::from_secs(5),
                    tail: Duration::from_secs(10),
                },
                &arrivals,
            )
        };
        let none = sim(ReplenishConfig::fixed(0));
        let fixed = sim(ReplenishConfig::fixed(1));
        let adaptive = sim(ReplenishConfig {
            max: 6,
            ..ReplenishConfig::default()
        });
        let cold = |r: &sim::SimReport| r.cold_vm_starts(from, to);
        let summary = format!(
            "seed {seed}: cold VMs on the step: none {}, fixed {}, adaptive {}; idle VM-s: \
             fixed {:.1}, adaptive {:.1}; N max {}",
            cold(&none),
            cold(&fixed),
            cold(&adaptive),
            fixed.idle_vm_seconds,
            adaptive.idle_vm_seconds,
            adaptive.max_replenish_count
        );
        assert!(cold(&none) > cold(&fixed), "{summary}");
        // "At least 5× fewer": adaptive ≤ fixed / 5, with fixed making some to begin with.
        assert!(
            cold(&fixed) > 0 && 5 * cold(&adaptive) <= cold(&fixed),
            "{summary}"
        );
        assert!(
            adaptive.idle_vm_seconds <= 1.5 * fixed.idle_vm_seconds,
            "{summary}"
        );
        assert!(adaptive.max_replenish_count > 1, "{summary}");
        assert_eq!(adaptive.final_replenish_count, 1, "N falls back: {summary}");
        assert_eq!(adaptive.throttled(), 0, "{summary}");
    }
}

#[test]
fn the_simulation_is_deterministic() {
    let pattern = BurstPattern {
        before: Duration::from_secs(2),
        step: Duration::from_secs(1),
        after: Duration::from_secs(2),
        ..BurstPattern::default()
    };
    assert_eq!(pattern.arrivals(), pattern.arrivals());
    let config = SimConfig {
        fleet: FleetConfig::default(),
        boot_time: Duration::from_millis(30),
        container_start: Duration::from_millis(5),
        stop_time: Duration::from_millis(5),
        placement_wait: Duration::from_secs(5),
        tail: Duration::from_secs(1),
    };
    let a = sim::run(&config, &pattern.arrivals());
    let b = sim::run(&config, &pattern.arrivals());
    assert_eq!(a.starts, b.starts);
    assert_eq!(a.idle_vm_seconds, b.idle_vm_seconds);
}

/// One random step of a fleet's life.
#[derive(Debug, Clone)]
enum Op {
    Request {
        account: u8,
        function: u8,
        memory: u64,
    },
    Finish {
        nth: usize,
        reusable: bool,
    },
    Boot {
        nth: usize,
    },
    Replenish,
    Advance {
        ms: u64,
    },
    Stop {
        nth: usize,
    },
    VmDies {
        nth: usize,
    },
    /// A waiting execution tries again (capacity may have been freed).
    Retry {
        nth: usize,
    },
    /// A waiting execution gives up.
    GiveUp {
        nth: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4, 0u8..3, prop::sample::select(vec![128u64, 512, 1024, 2048, 3072]))
            .prop_map(|(account, function, memory)| Op::Request { account, function, memory }),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(nth, reusable)| Op::Finish { nth, reusable }),
        2 => any::<usize>().prop_map(|nth| Op::Boot { nth }),
        1 => Just(Op::Replenish),
        2 => (0u64..40_000).prop_map(|ms| Op::Advance { ms }),
        1 => any::<usize>().prop_map(|nth| Op::Stop { nth }),
        1 => any::<usize>().prop_map(|nth| Op::VmDies { nth }),
        2 => any::<usize>().prop_map(|nth| Op::Retry { nth }),
        1 => any::<usize>().prop_map(|nth| Op::GiveUp { nth }),
    ]
}

/// What the property test knows of the fleet's accounts, computed from the VMs it sees, not
/// from the pool's own bookkeeping.
struct Shares<'a> {
    capacity_mb: u64,
    fair: &'a FairConfig,
    /// Memory of each account's active VMs.
    held: HashMap<String, u64>,
    /// Accounts with executions waiting.
    waiting: Vec<String>,
}

impl Shares<'_> {
    fn held(&self, account: &str) -> u64 {
        self.held.get(account).copied().unwrap_or(0)
    }

    /// `capacity × w(a) / Σ w` over the accounts holding memory or waiting, and `a`.
    fn share(&self, account: &str) -> u64 {
        let mut wanting: Vec<&str> = self.held.keys().map(String::as_str).collect();
        wanting.extend(self.waiting.iter().map(String::as_str));
        wanting.push(account);
        wanting.sort_unstable();
        wanting.dedup();
        let total: u64 = wanting.iter().map(|a| self.fair.weight(a)).sum();
        self.capacity_mb * self.fair.weight(account) / total
    }

    fn within_share(&self, account: &str, memory: u64) -> bool {
        let room = self
            .fair
            .account_memory_mb
            .map_or(u64::MAX, |c| c.saturating_sub(self.held(account)));
        room >= memory && self.held(account) + memory <= self.share(account)
    }
}

fn shares<'a>(
    fleet: &mut Fleet,
    fair: &'a FairConfig,
    waiting: &[(FnKey, u64, WaitTicket)],
) -> Shares<'a> {
    let mut held = HashMap::new();
    for vm in fleet.pool().vms() {
        if let Some(account) = vm.account_id {
            *held.entry(account).or_default() += vm.memory_mb;
        }
    }
    Shares {
        capacity_mb: fleet.config().capacity_mb,
        fair,
        held,
        waiting: waiting
            .iter()
            .map(|(k, _, _)| k.account_id.clone())
            .collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever happens, no two accounts ever share a VM (a VM's owner never changes, and every
    /// container in it is its owner's), no VM holds more than its memory, and the VMs never
    /// take more than the host's capacity.
    ///
    /// And the host is shared fairly: an account whose request is not within its fair share
    /// (one at or above its share in particular) never causes another account's idle VM to be
    /// evicted, no account's VMs ever take more than the ceiling, and while an execution of an
    /// account within its share waits, no account holding more per unit of weight is placed.
    ///
    /// And a VM's free memory is its memory less what its containers (made or being made)
    /// take; a warm placement hands out an idle container of the same function, never a busy
    /// one, and marks it busy; no more than `max_waiting` executions wait, and one is refused
    /// only when that many do.
    #[test]
    fn accounts_never_share_a_vm_and_capacity_is_never_exceeded(
        adaptive in any::<bool>(),
        // A small queue, or one no run fills (the fairness checks see as many waiters as before).
        max_waiting in prop_oneof![1usize..6, Just(usize::MAX)],
        ceiling in prop::option::of(prop::sample::select(vec![2048u64, 3072, 4096, 6144])),
        weights in prop::collection::vec(1u32..4, 4),
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let replenish = if adaptive { ReplenishConfig::default() } else { ReplenishConfig::fixed(1) };
        let fair = FairConfig {
            weights: weights.iter().enumerate().map(|(i, w)| (format!("a{i}"), *w)).collect(),
            account_memory_mb: ceiling,
        };
        let mut fleet = Fleet::new(FleetConfig {
            capacity_mb: 5 * 2048,
            warm_ttl: Duration::from_secs(5),
            replenish,
            fairness: fair.clone(),
            max_waiting,
            ..FleetConfig::default()
        }, "p");
        let mut waiting: Vec<(FnKey, u64, WaitTicket)> = Vec::new();
        let mut now = Instant::now();
        let mut owners: HashMap<String, String> = HashMap::new();
        let mut booting: Vec<(String, Option<(FnKey, u64)>)> = Vec::new();
        let mut busy: Vec<String> = Vec::new();
        let mut retiring: Vec<String> = Vec::new();
        let mut next = 0u64;
        for op in ops {
            // A request, or a waiting execution trying again.
            let attempt = match op {
                Op::Request { account, function, memory } => {
                    let key = key(&format!("a{account}"), &format!("f{function}"));
                    fleet.request("p", now);
                    Some((key, memory, None))
                }
                Op::Retry { nth } if !waiting.is_empty() => {
                    let (key, memory, ticket) = waiting.remove(nth % waiting.len());
                    Some((key, memory, Some(ticket)))
                }
                _ => None,
            };
            if let Some((key, memory, ticket)) = attempt {
                let account = key.account_id.clone();
                let before = shares(&mut fleet, &fair, &waiting);
                let vms_before = fleet.pool().vms();
                let placement = fleet.place(&key, memory, "p", now);
                if placement != Placement::Wait {
                    // Fair waiting: no waiter of an account within its share and holding less
                    // per unit of weight was passed over.
                    for (other, m, _) in &waiting {
                        let b = other.account_id.as_str();
                        prop_assert!(
                            b == account
                                || !before.within_share(b, *m)
                                || !fair::holds_less(
                                    before.held(b), fair.weight(b),
                                    before.held(&account), fair.weight(&account),
                                ),
                            "{} was placed while {} (within its share, holding {} of {}) waited",
                            account, b, before.held(b), before.share(b)
                        );
                    }
                }
                match placement {
                    Placement::Warm { container_id, vm_id } => {
                        // Idle before, in that VM, of this function (the test's own record
                        // and the pool's view agree), and busy now.
                        prop_assert!(!busy.contains(&container_id), "busy {} handed out", container_id);
                        let was = vms_before
                            .iter()
                            .filter(|v| v.vm_id == vm_id)
                            .flat_map(|v| &v.containers)
                            .find(|c| c.container_id == container_id);
                        prop_assert!(
                            was.is_some_and(|c| !c.busy
                                && c.account_id == key.account_id
                                && c.function_name == key.function_name),
                            "warm placement of {:?} got {} in {}: {:?}", key, container_id, vm_id, was
                        );
                        let now_busy = fleet.pool().vms().into_iter()
                            .flat_map(|v| v.containers)
                            .find(|c| c.container_id == container_id)
                            .is_some_and(|c| c.busy);
                        prop_assert!(now_busy, "{} is not marked busy once handed out", container_id);
                        busy.push(container_id);
                    }
                    Placement::NewContainer { vm_id } | Placement::TakeWarming { vm_id } => {
                        next += 1;
                        let id = format!("c{next}");
                        fleet.pool().container_created(&id, &key, &vm_id, memory);
                        busy.push(id);
                    }
                    Placement::BootVm { vm_id, .. } => {
                        booting.push((vm_id, Some((key.clone(), memory))));
                    }
                    Placement::Wait => {
                        if let Some(evicted) = fleet.pool().evict_for(&key, memory, now) {
                            let owner = |vm_id: &str| {
                                vms_before
                                    .iter()
                                    .find(|v| v.vm_id == vm_id)
                                    .and_then(|v| v.account_id.clone())
                            };
                            for vm_id in &evicted.vms {
                                if let Some(owner) = owner(vm_id).filter(|o| *o != account) {
                                    prop_assert!(
                                        before.held(&account) < before.share(&account)
                                            && before.within_share(&account, memory),
                                        "{} (holding {} of its share {}) evicted {}'s idle VM {}",
                                        account, before.held(&account), before.share(&account),
                                        owner, vm_id
                                    );
                                }
                            }
                            for (vm_id, _) in &evicted.containers {
                                prop_assert!(
                                    owner(vm_id).as_deref() == Some(account.as_str())
                                        || evicted.vms.contains(vm_id),
                                    "{} evicted a container of another account's VM {}",
                                    account, vm_id
                                );
                            }
                            retiring.extend(evicted.vms);
                        }
                        match ticket.or_else(|| fleet.pool().try_begin_wait(&account, memory)) {
                            Some(ticket) => waiting.push((key, memory, ticket)),
                            // Refused at once (a 429): only when the queue is full.
                            None => prop_assert_eq!(waiting.len(), max_waiting, "refused a waiter below the bound"),
                        }
                    }
                }
                if let Some(ticket) = ticket.filter(|t| !waiting.iter().any(|(_, _, w)| w == t)) {
                    fleet.pool().end_wait(ticket);
                }
            }
            match op {
                Op::Request { .. } | Op::Retry { .. } => {}
                Op::GiveUp { nth } if !waiting.is_empty() => {
                    let (_, _, ticket) = waiting.remove(nth % waiting.len());
                    fleet.pool().end_wait(ticket);
                }
                Op::Finish { nth, reusable } if !busy.is_empty() => {
                    let id = busy.remove(nth % busy.len());
                    fleet.pool().release(&id, reusable, now);
                }
                Op::Boot { nth } if !booting.is_empty() => {
                    let (vm_id, pending) = booting.remove(nth % booting.len());
                    fleet.vm_booted(&vm_id, Duration::from_millis(30), now);
                    if let Some((key, memory)) = pending {
                        next += 1;
                        let id = format!("c{next}");
                        fleet.pool().container_created(&id, &key, &vm_id, memory);
                        busy.push(id);
                    }
                }
                Op::Replenish => {
                    for boot in fleet.warming_boots(now) {
                        booting.push((boot.vm_id, None));
                    }
                }
                Op::Advance { ms } => {
                    now += Duration::from_millis(ms);
                    fleet.tick(now);
                    retiring.extend(fleet.expired(now).vms);
                }
                Op::Stop { nth } if !retiring.is_empty() => {
                    let vm_id = retiring.remove(nth % retiring.len());
                    fleet.pool().vm_stopped(&vm_id, now);
                }
                Op::VmDies { nth } => {
                    let vms = fleet.pool().vms();
                    if !vms.is_empty() {
                        let vm = &vms[nth % vms.len()];
                        fleet.pool().remove_vm(&vm.vm_id, now);
                        booting.retain(|(id, _)| *id != vm.vm_id);
                        retiring.retain(|id| *id != vm.vm_id);
                    }
                }
                _ => {}
            }
            prop_assert!(waiting.len() <= max_waiting, "{} wait, past {}", waiting.len(), max_waiting);
            prop_assert_eq!(fleet.pool().waiting(), waiting.len());
            let vms = fleet.pool().vms();
            let mut total = 0;
            for vm in &vms {
                total += vm.memory_mb;
                // Free is what the containers leave: those made, and the one a VM booted for an
                // execution reserves until it is made.
                let made: u64 = vm.containers.iter().map(|c| c.memory_mb).sum();
                let pending: Vec<u64> = booting
                    .iter()
                    .filter(|(id, _)| *id == vm.vm_id)
                    .filter_map(|(_, p)| p.as_ref().map(|(_, m)| *m))
                    .collect();
                prop_assert_eq!(vm.reserved, pending.len(), "VM {}", vm.vm_id);
                prop_assert_eq!(
                    vm.free_memory_mb + made + pending.iter().sum::<u64>(),
                    vm.memory_mb,
                    "VM {}: free {}, containers {}, being made {:?}",
                    vm.vm_id, vm.free_memory_mb, made, pending
                );
                if let Some(account) = &vm.account_id {
                    let first = owners.entry(vm.vm_id.clone()).or_insert_with(|| account.clone());
                    prop_assert_eq!(&*first, account, "VM {} changed hands", vm.vm_id);
                }
                if vm.pool == PoolKind::Warming {
                    prop_assert!(!owners.contains_key(&vm.vm_id), "an assigned VM went back to warming");
                    prop_assert!(vm.containers.is_empty() && vm.reserved == 0);
                }
                let used: u64 = vm.containers.iter().map(|c| c.memory_mb).sum();
                prop_assert!(used <= vm.memory_mb);
            }
            prop_assert_eq!(total, fleet.pool().reserved_mb());
            prop_assert!(total <= 5 * 2048, "capacity exceeded: {}", total);
            // No account's VMs take more than the ceiling.
            if let Some(ceiling) = ceiling {
                let now_held = shares(&mut fleet, &fair, &waiting).held;
                for (account, held) in now_held {
                    prop_assert!(
                        held <= ceiling,
                        "{} holds {} MB, past the ceiling {}", account, held, ceiling
                    );
                }
            }
            // Every container in a VM is its owner's.
            for vm in &vms {
                for c in &vm.containers {
                    prop_assert_eq!(Some(&c.account_id), vm.account_id.as_ref());
                }
            }
        }
    }
}

fn arrival(at_ms: u64, account: &str, function: &str, memory_mb: u64, run_ms: u64) -> sim::Arrival {
    sim::Arrival {
        at: Duration::from_millis(at_ms),
        account: account.into(),
        function: function.into(),
        runtime: "p".into(),
        memory_mb,
        duration: Duration::from_millis(run_ms),
    }
}

fn overload_config() -> SimConfig {
    SimConfig {
        fleet: FleetConfig {
            capacity_mb: 11 * 2048,
            replenish: ReplenishConfig::fixed(0),
            ..FleetConfig::default()
        },
        boot_time: Duration::from_millis(40),
        container_start: Duration::from_millis(5),
        stop_time: Duration::from_millis(5),
        placement_wait: Duration::from_secs(5),
        tail: Duration::from_secs(10),
    }
}

/// Starts of one account's arrivals, in order.
fn starts_of(report: &sim::SimReport, arrivals: &[sim::Arrival], account: &str) -> Vec<sim::Start> {
    report
        .starts
        .iter()
        .zip(arrivals)
        .filter(|(_, a)| a.account == account)
        .map(|((_, start, _), _)| *start)
        .collect()
}

/// The case, simulated: A sends 60 concurrent 8-second invocations of 1024 MB to a
/// host that holds 22 of them, while B's warm 128 MB function is invoked every half second.
/// B's VM is never evicted for A, so every invocation of B after the first is warm; A's
/// excess is throttled after the wait.
#[test]
fn a_flood_of_one_account_does_not_evict_another_accounts_warm_function() {
    let mut arrivals = vec![arrival(0, "b", "small", 128, 10)];
    arrivals.extend((0..60).map(|i| arrival(1000 + i, "a", "flood", 1024, 8000)));
    arrivals.extend((1..24).map(|i| arrival(1000 + i * 500, "b", "small", 128, 10)));
    arrivals.sort_by_key(|a| a.at);
    let report = sim::run(&overload_config(), &arrivals);
    let b = starts_of(&report, &arrivals, "b");
    assert_eq!(b[0], sim::Start::ColdVm);
    assert!(b[1..].iter().all(|s| *s == sim::Start::Warm), "{b:?}");
    let a = starts_of(&report, &arrivals, "a");
    let throttled = a.iter().filter(|s| **s == sim::Start::Throttled).count();
    assert_eq!(throttled, 40, "B's VM holds 2048 MB: 20 of A's ran");
}

/// B needs a new VM while A's flood keeps the host busy and A's waiters queue: B goes before
/// them, taking a VM of A's as soon as one is idle, and is not throttled.
#[test]
fn a_waiting_account_within_its_share_goes_before_a_flood() {
    // A: 22 at once, then one more every 50 ms, each running 3 s.
    let mut arrivals: Vec<_> = (0..22)
        .map(|i| arrival(i, "a", "flood", 1024, 3000))
        .collect();
    arrivals.extend((0..200).map(|i| arrival(100 + i * 50, "a", "flood", 1024, 3000)));
    arrivals.push(arrival(4000, "b", "small", 128, 10));
    arrivals.push(arrival(9500, "b", "small", 128, 10));
    arrivals.sort_by_key(|a| a.at);
    let report = sim::run(&overload_config(), &arrivals);
    let b = starts_of(&report, &arrivals, "b");
    assert_eq!(b, vec![sim::Start::ColdVm, sim::Start::Warm]);
    let a = starts_of(&report, &arrivals, "a");
    assert!(
        a.iter().filter(|s| **s == sim::Start::Warm).count() > 50,
        "A keeps reusing its containers: {a:?}"
    );
}
