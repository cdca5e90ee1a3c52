//! The bookkeeping of VMs and containers: which VM belongs to which account, how much of each is
//! taken, which containers are warm, and where the next execution goes. Pure logic: no I/O, the
//! clock is passed in, so every decision is unit-tested.
//!
//! # Placement
//!
//! For an execution of a function version ([`FnKey`]) needing `memory_mb`:
//! 1. an idle warm container of that version, the most recently used first (it is the likeliest
//!    to have its caches hot, and it lets the others age out);
//! 2. else a new container in a VM of the same account with room, **best fit**: the VM with the
//!    least free memory that still fits, so large gaps stay whole for large functions;
//! 3. else a new VM for the account if the host's capacity allows;
//! 4. else idle containers make way ([`Pool::evict_for`]);
//! 5. else the caller waits for capacity to be freed (and gives up after a while).
//!
//! Every decision that takes memory reserves it at once, so concurrent placements never
//! oversubscribe a VM or the host, and two accounts never share a VM: a VM is created for one
//! account and only ever matched against that account.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One version of one function: containers are reused only for the same key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FnKey {
    pub account_id: String,
    pub function_name: String,
    /// Changes with every code or configuration change.
    pub revision_id: String,
}

/// Where an execution goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Reuse this idle container, now marked busy.
    Warm { container_id: String, vm_id: String },
    /// Create a container in this running VM; its memory is reserved.
    NewContainer { vm_id: String },
    /// Boot this VM (already registered as booting, for this account) and create the container
    /// in it; the VM's and the container's memory are reserved.
    BootVm { vm_id: String, memory_mb: u64 },
    /// Nothing fits now.
    Wait,
}

#[derive(Debug)]
struct VmSlot {
    account_id: String,
    memory_mb: u64,
    /// Memory of the containers in it, and of those being created.
    used_mb: u64,
    /// Containers in it, and those being created.
    containers: usize,
    booting: bool,
    /// When the VM last had no containers; `None` while it has some.
    empty_since: Option<Instant>,
}

#[derive(Debug)]
struct ContainerSlot {
    key: FnKey,
    vm_id: String,
    memory_mb: u64,
    /// When it last finished an invocation; `None` while one runs.
    idle_since: Option<Instant>,
}

/// What [`Pool::expired`] found past its keep-alive.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expired {
    /// `(vm_id, container_id)` of idle containers, already removed from the pool.
    pub containers: Vec<(String, String)>,
    /// Empty VMs, already removed from the pool.
    pub vms: Vec<String>,
}

/// A snapshot of one VM, for observability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmView {
    pub vm_id: String,
    pub account_id: String,
    pub memory_mb: u64,
    pub free_memory_mb: u64,
    pub containers: usize,
    pub booting: bool,
}

/// The VMs and containers of the host.
#[derive(Debug)]
pub struct Pool {
    capacity_mb: u64,
    vm_memory_mb: u64,
    /// Memory of every VM, booting ones included.
    reserved_mb: u64,
    vms: HashMap<String, VmSlot>,
    containers: HashMap<String, ContainerSlot>,
    /// Idle containers by version, most recently used last.
    idle: HashMap<FnKey, Vec<String>>,
    next_vm: u64,
}

impl Pool {
    /// A pool of at most `capacity_mb` of VMs, each normally `vm_memory_mb` (larger when one
    /// function needs more).
    pub fn new(capacity_mb: u64, vm_memory_mb: u64) -> Self {
        Self {
            capacity_mb,
            vm_memory_mb,
            reserved_mb: 0,
            vms: HashMap::new(),
            containers: HashMap::new(),
            idle: HashMap::new(),
            next_vm: 0,
        }
    }

    /// Decides where an execution of `key` needing `memory_mb` runs, and reserves what it takes.
    pub fn place(&mut self, key: &FnKey, memory_mb: u64) -> Placement {
        if let Some(container_id) = self.idle.get_mut(key).and_then(Vec::pop) {
            if let Some(slot) = self.containers.get_mut(&container_id) {
                slot.idle_since = None;
                return Placement::Warm {
                    vm_id: slot.vm_id.clone(),
                    container_id,
                };
            }
        }
        let best_fit = self
            .vms
            .iter()
            .filter(|(_, vm)| {
                vm.account_id == key.account_id
                    && !vm.booting
                    && vm.memory_mb - vm.used_mb >= memory_mb
            })
            .min_by_key(|(id, vm)| (vm.memory_mb - vm.used_mb, id.as_str()))
            .map(|(id, _)| id.clone());
        if let Some(vm_id) = best_fit {
            self.reserve_container(&vm_id, memory_mb);
            return Placement::NewContainer { vm_id };
        }
        let size = self.vm_memory_mb.max(memory_mb);
        if self.reserved_mb + size > self.capacity_mb {
            return Placement::Wait;
        }
        self.next_vm += 1;
        let vm_id = format!("vm-{}-{}", self.next_vm, short_random());
        self.reserved_mb += size;
        self.vms.insert(
            vm_id.clone(),
            VmSlot {
                account_id: key.account_id.clone(),
                memory_mb: size,
                used_mb: memory_mb,
                containers: 1,
                booting: true,
                empty_since: None,
            },
        );
        Placement::BootVm {
            vm_id,
            memory_mb: size,
        }
    }

    fn reserve_container(&mut self, vm_id: &str, memory_mb: u64) {
        if let Some(vm) = self.vms.get_mut(vm_id) {
            vm.used_mb += memory_mb;
            vm.containers += 1;
            vm.empty_since = None;
        }
    }

    /// A booting VM is up.
    pub fn vm_booted(&mut self, vm_id: &str) {
        if let Some(vm) = self.vms.get_mut(vm_id) {
            vm.booting = false;
        }
    }

    /// A container reserved by [`Pool::place`] now exists, busy with its first invocation.
    pub fn container_created(
        &mut self,
        container_id: &str,
        key: &FnKey,
        vm_id: &str,
        memory_mb: u64,
    ) {
        self.containers.insert(
            container_id.to_owned(),
            ContainerSlot {
                key: key.clone(),
                vm_id: vm_id.to_owned(),
                memory_mb,
                idle_since: None,
            },
        );
    }

    /// A container reserved by [`Pool::place`] could not be created: its memory is free again.
    pub fn container_not_created(&mut self, vm_id: &str, memory_mb: u64, now: Instant) {
        self.unreserve_container(vm_id, memory_mb, now);
    }

    fn unreserve_container(&mut self, vm_id: &str, memory_mb: u64, now: Instant) {
        if let Some(vm) = self.vms.get_mut(vm_id) {
            vm.used_mb = vm.used_mb.saturating_sub(memory_mb);
            vm.containers = vm.containers.saturating_sub(1);
            if vm.containers == 0 {
                vm.empty_since = Some(now);
            }
        }
    }

    /// An invocation on a container ended. A container that can serve again becomes idle;
    /// otherwise it is forgotten and its memory freed.
    pub fn release(&mut self, container_id: &str, reusable: bool, now: Instant) {
        if reusable {
            if let Some(slot) = self.containers.get_mut(container_id) {
                slot.idle_since = Some(now);
                self.idle
                    .entry(slot.key.clone())
                    .or_default()
                    .push(container_id.to_owned());
            }
        } else {
            self.remove_container(container_id, now);
        }
    }

    /// Forgets a container (gone on its own, or destroyed). Returns whether it was known.
    pub fn remove_container(&mut self, container_id: &str, now: Instant) -> bool {
        let Some(slot) = self.containers.remove(container_id) else {
            return false;
        };
        self.forget_idle(&slot.key, container_id);
        self.unreserve_container(&slot.vm_id, slot.memory_mb, now);
        true
    }

    fn forget_idle(&mut self, key: &FnKey, container_id: &str) {
        if let Some(idle) = self.idle.get_mut(key) {
            idle.retain(|c| c != container_id);
            if idle.is_empty() {
                self.idle.remove(key);
            }
        }
    }

    /// Forgets a VM and everything in it (it failed to boot, died, or was stopped). Returns the
    /// containers it held.
    pub fn remove_vm(&mut self, vm_id: &str) -> Vec<String> {
        let Some(vm) = self.vms.remove(vm_id) else {
            return Vec::new();
        };
        self.reserved_mb = self.reserved_mb.saturating_sub(vm.memory_mb);
        let gone: Vec<String> = self
            .containers
            .iter()
            .filter(|(_, c)| c.vm_id == vm_id)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            if let Some(slot) = self.containers.remove(id) {
                self.forget_idle(&slot.key, id);
            }
        }
        gone
    }

    /// Removes and returns the idle containers older than `container_keep_alive` and the VMs
    /// empty for longer than `vm_keep_alive`.
    pub fn expired(
        &mut self,
        now: Instant,
        container_keep_alive: Duration,
        vm_keep_alive: Duration,
    ) -> Expired {
        let old: Vec<String> = self
            .containers
            .iter()
            .filter(|(_, c)| {
                c.idle_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= container_keep_alive)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut expired = Expired::default();
        for id in old {
            if let Some(vm_id) = self.containers.get(&id).map(|c| c.vm_id.clone()) {
                self.remove_container(&id, now);
                expired.containers.push((vm_id, id));
            }
        }
        let empty: Vec<String> = self
            .vms
            .iter()
            .filter(|(_, vm)| {
                vm.empty_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= vm_keep_alive)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in empty {
            self.remove_vm(&id);
            expired.vms.push(id);
        }
        expired
    }

    /// Makes room for an execution of `key` that found none, by evicting idle containers (warm
    /// but unused: cheap to lose), least recently used first:
    /// 1. in a VM of the same account, just enough of them to fit `memory_mb`;
    /// 2. else a whole VM, of any account, whose containers are all idle, when stopping it frees
    ///    enough of the host's capacity for a new VM of the needed size.
    ///
    /// Returns what was removed from the pool (the caller destroys it), or `None` when nothing
    /// can be evicted and the execution must wait for a running one to end.
    pub fn evict_for(&mut self, key: &FnKey, memory_mb: u64, now: Instant) -> Option<Expired> {
        let idle_in = |pool: &Self, vm_id: &str| -> Vec<(Instant, String, u64)> {
            let mut idle: Vec<(Instant, String, u64)> = pool
                .containers
                .iter()
                .filter(|(_, c)| c.vm_id == vm_id)
                .filter_map(|(id, c)| c.idle_since.map(|t| (t, id.clone(), c.memory_mb)))
                .collect();
            idle.sort();
            idle
        };
        // 1. Room in one of the account's own VMs.
        let mut own: Vec<(&String, &VmSlot)> = self
            .vms
            .iter()
            .filter(|(_, vm)| vm.account_id == key.account_id && !vm.booting)
            .filter(|(_, vm)| vm.memory_mb >= memory_mb)
            .collect();
        own.sort_by_key(|(id, vm)| (vm.memory_mb - vm.used_mb, id.as_str()));
        let own: Vec<String> = own.into_iter().map(|(id, _)| id.clone()).collect();
        for vm_id in own {
            let free = self
                .vms
                .get(&vm_id)
                .map_or(0, |vm| vm.memory_mb - vm.used_mb);
            let idle = idle_in(self, &vm_id);
            if free + idle.iter().map(|(_, _, mb)| mb).sum::<u64>() < memory_mb {
                continue;
            }
            let mut evicted = Expired::default();
            let mut free = free;
            for (_, container_id, mb) in idle {
                if free >= memory_mb {
                    break;
                }
                self.remove_container(&container_id, now);
                free += mb;
                evicted.containers.push((vm_id.clone(), container_id));
            }
            return Some(evicted);
        }
        // 2. A whole idle VM, if stopping it lets a new one fit.
        let size = self.vm_memory_mb.max(memory_mb);
        let spare = self.capacity_mb.saturating_sub(self.reserved_mb);
        let victim = self
            .vms
            .iter()
            .filter(|(_, vm)| !vm.booting && spare + vm.memory_mb >= size)
            .filter_map(|(id, _)| {
                let busy = self
                    .containers
                    .values()
                    .any(|c| &c.vm_id == id && c.idle_since.is_none());
                let reserved = self.vms[id].containers
                    > self.containers.values().filter(|c| &c.vm_id == id).count();
                if busy || reserved {
                    return None;
                }
                let last_used = idle_in(self, id).last().map(|(t, _, _)| *t);
                Some((last_used, id.clone()))
            })
            .min()
            .map(|(_, id)| id)?;
        let containers = self
            .remove_vm(&victim)
            .into_iter()
            .map(|c| (victim.clone(), c))
            .collect();
        Some(Expired {
            containers,
            vms: vec![victim],
        })
    }

    /// Removes and returns the idle containers of a function's versions other than `current`
    /// (all of them when `None`): after an update or a delete nothing will ever reuse them.
    pub fn take_stale_idle(
        &mut self,
        account_id: &str,
        function_name: &str,
        current: Option<&str>,
        now: Instant,
    ) -> Vec<(String, String)> {
        let stale: Vec<FnKey> = self
            .idle
            .keys()
            .filter(|k| {
                k.account_id == account_id
                    && k.function_name == function_name
                    && Some(k.revision_id.as_str()) != current
            })
            .cloned()
            .collect();
        let mut taken = Vec::new();
        for key in stale {
            for id in self.idle.remove(&key).unwrap_or_default() {
                if let Some(vm_id) = self.containers.get(&id).map(|c| c.vm_id.clone()) {
                    self.remove_container(&id, now);
                    taken.push((vm_id, id));
                }
            }
        }
        taken
    }

    /// Every VM, for observability.
    pub fn vms(&self) -> Vec<VmView> {
        let mut views: Vec<VmView> = self
            .vms
            .iter()
            .map(|(id, vm)| VmView {
                vm_id: id.clone(),
                account_id: vm.account_id.clone(),
                memory_mb: vm.memory_mb,
                free_memory_mb: vm.memory_mb - vm.used_mb,
                containers: vm.containers,
                booting: vm.booting,
            })
            .collect();
        views.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
        views
    }

    /// The account a VM belongs to.
    pub fn owner(&self, vm_id: &str) -> Option<&str> {
        self.vms.get(vm_id).map(|vm| vm.account_id.as_str())
    }

    /// Memory taken by VMs, booting ones included.
    pub fn reserved_mb(&self) -> u64 {
        self.reserved_mb
    }
}

fn short_random() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(account: &str, function: &str) -> FnKey {
        FnKey {
            account_id: account.into(),
            function_name: function.into(),
            revision_id: "r1".into(),
        }
    }

    fn boot(pool: &mut Pool, key: &FnKey, memory: u64) -> String {
        match pool.place(key, memory) {
            Placement::BootVm { vm_id, .. } => {
                pool.vm_booted(&vm_id);
                vm_id
            }
            other => panic!("expected a boot, got {other:?}"),
        }
    }

    #[test]
    fn warm_containers_are_reused_most_recent_first() {
        let mut pool = Pool::new(8192, 2048);
        let now = Instant::now();
        let f = key("a", "f");
        let vm = boot(&mut pool, &f, 128);
        pool.container_created("c1", &f, &vm, 128);
        assert_eq!(
            pool.place(&f, 128),
            Placement::NewContainer { vm_id: vm.clone() }
        );
        pool.container_created("c2", &f, &vm, 128);
        pool.release("c1", true, now);
        pool.release("c2", true, now + Duration::from_secs(1));
        assert_eq!(
            pool.place(&f, 128),
            Placement::Warm {
                container_id: "c2".into(),
                vm_id: vm.clone()
            }
        );
        let other_version = FnKey {
            revision_id: "r2".into(),
            ..f.clone()
        };
        assert_eq!(
            pool.place(&other_version, 128),
            Placement::NewContainer { vm_id: vm },
            "a new revision never reuses an old container"
        );
    }

    #[test]
    fn accounts_never_share_a_vm_and_capacity_is_never_exceeded() {
        let mut pool = Pool::new(4096, 2048);
        let a = key("a", "f");
        let b = key("b", "g");
        let vm_a = boot(&mut pool, &a, 128);
        let vm_b = boot(&mut pool, &b, 128);
        assert_ne!(vm_a, vm_b);
        assert_eq!(pool.owner(&vm_b), Some("b"));
        // Both VMs are full of this host's capacity: a third account must wait.
        assert_eq!(pool.place(&key("c", "h"), 128), Placement::Wait);
        // Account a still fits in its own VM.
        assert_eq!(
            pool.place(&a, 1024),
            Placement::NewContainer {
                vm_id: vm_a.clone()
            }
        );
        assert_eq!(
            pool.place(&a, 1024),
            Placement::Wait,
            "1920 MB of 2048 taken"
        );
        pool.remove_vm(&vm_b);
        assert!(matches!(
            pool.place(&key("c", "h"), 128),
            Placement::BootVm { .. }
        ));
        assert_eq!(pool.reserved_mb(), 4096);
    }

    #[test]
    fn best_fit_picks_the_fullest_vm_that_fits() {
        let mut pool = Pool::new(1 << 20, 2048);
        let f = key("a", "f");
        let vm1 = boot(&mut pool, &f, 1024);
        let vm2 = match pool.place(&f, 1536) {
            Placement::BootVm { vm_id, .. } => vm_id,
            other => panic!("{other:?}"),
        };
        pool.vm_booted(&vm2);
        // vm1 has 1024 free, vm2 512: a 512 MB container goes to vm2, a 1024 one to vm1.
        assert_eq!(pool.place(&f, 512), Placement::NewContainer { vm_id: vm2 });
        assert_eq!(pool.place(&f, 1024), Placement::NewContainer { vm_id: vm1 });
    }

    #[test]
    fn big_functions_get_a_vm_of_their_size() {
        let mut pool = Pool::new(1 << 20, 2048);
        assert!(matches!(
            pool.place(&key("a", "big"), 4096),
            Placement::BootVm {
                memory_mb: 4096,
                ..
            }
        ));
    }

    #[test]
    fn idle_containers_and_empty_vms_expire() {
        let mut pool = Pool::new(8192, 2048);
        let t0 = Instant::now();
        let f = key("a", "f");
        let vm = boot(&mut pool, &f, 128);
        pool.container_created("c1", &f, &vm, 128);
        pool.release("c1", true, t0);
        let keep = Duration::from_secs(60);
        assert_eq!(
            pool.expired(t0 + Duration::from_secs(59), keep, keep),
            Expired::default()
        );
        let first = pool.expired(t0 + keep, keep, keep);
        assert_eq!(first.containers, vec![(vm.clone(), "c1".to_owned())]);
        assert!(first.vms.is_empty(), "the VM only just became empty");
        let second = pool.expired(t0 + keep * 2, keep, keep);
        assert_eq!(second.vms, vec![vm]);
        assert_eq!(pool.reserved_mb(), 0);
    }

    #[test]
    fn an_update_retires_the_idle_containers_of_older_versions() {
        let mut pool = Pool::new(8192, 2048);
        let now = Instant::now();
        let old = key("a", "f");
        let vm = boot(&mut pool, &old, 128);
        pool.container_created("c-old", &old, &vm, 128);
        pool.release("c-old", true, now);
        let new = FnKey {
            revision_id: "r2".into(),
            ..old.clone()
        };
        assert_eq!(
            pool.place(&new, 128),
            Placement::NewContainer { vm_id: vm.clone() }
        );
        pool.container_created("c-new", &new, &vm, 128);
        pool.release("c-new", true, now);
        assert_eq!(
            pool.take_stale_idle("a", "f", Some("r2"), now),
            vec![(vm.clone(), "c-old".to_owned())]
        );
        assert_eq!(pool.vms()[0].free_memory_mb, 2048 - 128);
        assert_eq!(
            pool.take_stale_idle("a", "f", None, now),
            vec![(vm, "c-new".to_owned())]
        );
    }

    #[test]
    fn idle_containers_make_way_for_new_work() {
        let mut pool = Pool::new(4096, 2048);
        let t0 = Instant::now();
        let a = key("a", "f");
        let a2 = key("a", "g");
        let vm_a = boot(&mut pool, &a, 1024);
        pool.container_created("a1", &a, &vm_a, 1024);
        assert_eq!(
            pool.place(&a, 1024),
            Placement::NewContainer {
                vm_id: vm_a.clone()
            }
        );
        pool.container_created("a2", &a, &vm_a, 1024);
        pool.release("a1", true, t0);
        pool.release("a2", true, t0 + Duration::from_secs(1));
        // Account a's VM is full of idle containers of f; g needs 1024 MB of it.
        let b = key("b", "h");
        let vm_b = boot(&mut pool, &b, 2048);
        pool.container_created("b1", &b, &vm_b, 2048);
        assert_eq!(pool.place(&a2, 1024), Placement::Wait);
        let evicted = pool.evict_for(&a2, 1024, t0).unwrap();
        assert_eq!(
            evicted.containers,
            vec![(vm_a.clone(), "a1".to_owned())],
            "the least recently used"
        );
        assert!(evicted.vms.is_empty());
        assert_eq!(
            pool.place(&a2, 1024),
            Placement::NewContainer {
                vm_id: vm_a.clone()
            }
        );
        pool.container_created("g1", &a2, &vm_a, 1024);

        // Account c needs a VM: b's VM is busy, a's has a running container: nothing to evict.
        let c = key("c", "i");
        assert_eq!(pool.evict_for(&c, 128, t0), None);
        // Once b's container is idle, b's whole VM makes way.
        pool.release("b1", true, t0);
        let evicted = pool.evict_for(&c, 128, t0).unwrap();
        assert_eq!(evicted.vms, vec![vm_b.clone()]);
        assert_eq!(evicted.containers, vec![(vm_b, "b1".to_owned())]);
        assert!(matches!(pool.place(&c, 128), Placement::BootVm { .. }));
    }

    #[test]
    fn failed_creations_and_dead_containers_free_their_memory() {
        let mut pool = Pool::new(2048, 2048);
        let now = Instant::now();
        let f = key("a", "f");
        let vm = boot(&mut pool, &f, 1024);
        pool.container_not_created(&vm, 1024, now);
        assert_eq!(pool.vms()[0].free_memory_mb, 2048);
        assert_eq!(
            pool.place(&f, 2048),
            Placement::NewContainer { vm_id: vm.clone() }
        );
        pool.container_created("c", &f, &vm, 2048);
        pool.release("c", false, now);
        assert_eq!(pool.vms()[0].free_memory_mb, 2048);
        assert!(!pool.remove_container("c", now));
    }
}
