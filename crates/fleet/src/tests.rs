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
        revision_id: "r1".into(),
        memory_mb: 128,
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
    for _ in 0..50 {
        t += Duration::from_millis(200); // 5/s
        fleet.request("python3.11", t);
    }
    assert_eq!(fleet.replenish_count(), 1);
    for _ in 0..400 {
        t += Duration::from_millis(5); // 200/s
        fleet.request("python3.11", t);
    }
    assert!(
        fleet.replenish_count() >= 6,
        "{}",
        fleet.view(t).replenish_reason
    );
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
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever happens, no two accounts ever share a VM (a VM's owner never changes, and every
    /// container in it is its owner's), no VM holds more than its memory, and the VMs never
    /// take more than the host's capacity.
    #[test]
    fn accounts_never_share_a_vm_and_capacity_is_never_exceeded(
        adaptive in any::<bool>(),
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let replenish = if adaptive { ReplenishConfig::default() } else { ReplenishConfig::fixed(1) };
        let mut fleet = Fleet::new(FleetConfig {
            capacity_mb: 5 * 2048,
            warm_ttl: Duration::from_secs(5),
            replenish,
            ..FleetConfig::default()
        }, "p");
        let mut now = Instant::now();
        let mut owners: HashMap<String, String> = HashMap::new();
        let mut booting: Vec<(String, Option<(FnKey, u64)>)> = Vec::new();
        let mut busy: Vec<String> = Vec::new();
        let mut retiring: Vec<String> = Vec::new();
        let mut next = 0u64;
        for op in ops {
            match op {
                Op::Request { account, function, memory } => {
                    let key = key(&format!("a{account}"), &format!("f{function}"));
                    fleet.request("p", now);
                    match fleet.place(&key, memory, "p", now) {
                        Placement::Warm { container_id, .. } => busy.push(container_id),
                        Placement::NewContainer { vm_id } | Placement::TakeWarming { vm_id } => {
                            next += 1;
                            let id = format!("c{next}");
                            fleet.pool().container_created(&id, &key, &vm_id, memory);
                            busy.push(id);
                        }
                        Placement::BootVm { vm_id, .. } => booting.push((vm_id, Some((key, memory)))),
                        Placement::Wait => {
                            if let Some(evicted) = fleet.pool().evict_for(&key, memory, now) {
                                retiring.extend(evicted.vms);
                            }
                        }
                    }
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
            let vms = fleet.pool().vms();
            let mut total = 0;
            for vm in &vms {
                total += vm.memory_mb;
                prop_assert!(vm.memory_mb >= vm.memory_mb - vm.free_memory_mb);
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
            // Every container in a VM is its owner's.
            for vm in &vms {
                for c in &vm.containers {
                    prop_assert_eq!(Some(&c.account_id), vm.account_id.as_ref());
                }
            }
        }
    }
}
