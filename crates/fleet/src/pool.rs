//! The bookkeeping of VMs and containers: which pool each VM is in, which account an active VM
//! belongs to, how much of each is taken, which containers are warm, and where the next
//! execution goes. Pure logic: no I/O, the clock is passed in, so every decision is unit-tested.
//!
//! # VM states
//!
//! Every VM is in exactly one state:
//! - **warming**: booting or booted, assigned to no account, readied for a runtime;
//! - **active**: assigned to one account for the rest of its life;
//! - **retiring**: being stopped. Its memory stays reserved until [`Pool::vm_stopped`], so the
//!   host's capacity is never exceeded while a VM winds down.
//!
//! # Placement
//!
//! For an execution of a function version ([`FnKey`]) needing `memory_mb`:
//! 1. an idle warm container of that version: a provisioned one first (see below), else the
//!    most recently used (it is the likeliest to have its caches hot, and it lets the others
//!    age out);
//! 2. else a new container in an active VM of the same account with room, **best fit**: the VM
//!    with the least free memory that still fits, so large gaps stay whole for large functions;
//! 3. else a booted VM from the warming pool with room, which is assigned to the account: one
//!    readied for the function's runtime first, then the smallest that fits, then the oldest;
//! 4. else a new VM for the account if the host's capacity allows (a cold VM start);
//! 5. else idle containers make way ([`Pool::evict_for`]);
//! 6. else the caller waits for capacity to be freed (and gives up after a while).
//!
//! Every decision that takes memory reserves it at once, so concurrent placements never
//! oversubscribe a VM or the host, and two accounts never share a VM: a VM is assigned to one
//! account once, never unassigned, and only ever matched against that account.
//!
//! # Fairness (see [`crate::fair`] for the definitions)
//!
//! - **No eviction for an account above its share.** Another account's idle VM is evicted only
//!   for a request within its share (`held + request ≤ share`); an account at or above its
//!   share evicts only its own idle containers and VMs, and warming VMs (which belong to no
//!   one).
//! - **Fair waiting.** An execution yields (is told to [`Placement::Wait`], even when a warm
//!   container of its own is idle) while an execution of another account waits whose request
//!   is within its share and whose account holds less per unit of weight (on a tie: has waited
//!   longer). Waiters of accounts above their share are not waited for: they could not take
//!   what others hold, so yielding to them would only leave capacity unused.
//! - **The ceiling.** No placement takes an account's held memory past
//!   `--account-memory-mb`; a VM booted for an account near it is made smaller to fit (never
//!   smaller than the request).
//!
//! Each check looks at the accounts holding memory or waiting, not at every VM: the held
//! memory of each account is kept up to date as VMs are assigned and retired.
//!
//! # Provisioned (pinned) containers
//!
//! A container [pinned](Pool::pin) to a provisioned-concurrency target is never reclaimed for
//! idling ([`Pool::expired`]) nor evicted ([`Pool::evict_for`]), and its VM is not evicted
//! either; it serves only its version, before that version's other idle containers. It leaves
//! the pool when it dies, or when [`Pool::unpin`] lets it go.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::fair::{self, FairConfig, WaitTicket, Waiters};

/// One version of one function: containers are reused only for the same key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FnKey {
    pub account_id: String,
    pub function_name: String,
    /// `$LATEST` or a published version's number: a warm container serves one version.
    pub version: String,
    /// Changes with every code or configuration change (of `$LATEST`; a published version's
    /// is fixed).
    pub revision_id: String,
    /// The amount its containers get (sizing may change it for the same revision).
    pub memory_mb: u32,
    /// Whether its containers' outbound connections are denied (the function's own egress over
    /// the server's default): a container made under one setting never serves an execution
    /// under the other, so a change takes effect with the next new environment.
    pub egress_denied: bool,
}

/// Where an execution goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Reuse this idle container, now marked busy.
    Warm { container_id: String, vm_id: String },
    /// Create a container in this active VM of the account; its memory is reserved.
    NewContainer { vm_id: String },
    /// This VM left the warming pool for the account's active pool: create the container in
    /// it; its memory is reserved.
    TakeWarming { vm_id: String },
    /// Boot this VM (already registered as booting, for this account) and create the container
    /// in it; the VM's and the container's memory are reserved.
    BootVm { vm_id: String, memory_mb: u64 },
    /// Nothing fits now.
    Wait,
}

/// Which pool a VM is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmState {
    /// Assigned to no account; readied for `runtime` (any, when `None`).
    Warming { runtime: Option<String> },
    /// Assigned to this account.
    Active { account_id: String },
    /// Being stopped.
    Retiring,
}

#[derive(Debug)]
struct VmSlot {
    state: VmState,
    memory_mb: u64,
    /// Memory of the containers in it, and of those being created.
    used_mb: u64,
    /// Memory the VM's own processes hold for its containers' sake (runtime templates), not
    /// available to containers.
    overhead_mb: u64,
    /// Containers in it, and those being created.
    containers: usize,
    booting: bool,
    /// Since when the VM has sat idle: booted in the warming pool, or active without
    /// containers. `None` while it boots, holds containers or retires.
    idle_since: Option<Instant>,
    /// When it entered its current state.
    since: Instant,
}

#[derive(Debug)]
struct ContainerSlot {
    key: FnKey,
    vm_id: String,
    memory_mb: u64,
    /// When it last finished an invocation; `None` while one runs.
    idle_since: Option<Instant>,
    /// The provisioned-concurrency target it is pinned to, if any.
    pin: Option<String>,
}

/// What the pool let go: the caller destroys the containers and stops the VMs, then reports
/// each VM with [`Pool::vm_stopped`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expired {
    /// `(vm_id, container_id)` of containers, already removed from the pool.
    pub containers: Vec<(String, String)>,
    /// VMs now retiring.
    pub vms: Vec<String>,
}

impl Expired {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.vms.is_empty()
    }
}

/// Which pool a VM is in, for observability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    Warming,
    Active,
    Retiring,
}

/// A snapshot of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    pub container_id: String,
    pub account_id: String,
    pub function_name: String,
    pub memory_mb: u64,
    /// Running an invocation (or being created), not idle.
    pub busy: bool,
    /// The provisioned-concurrency target it is pinned to, if any.
    pub provisioned: Option<String>,
}

/// A snapshot of one VM, for observability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmView {
    pub vm_id: String,
    pub pool: PoolKind,
    /// The owner of an active VM.
    pub account_id: Option<String>,
    /// The runtime a warming VM was readied for.
    pub runtime: Option<String>,
    pub memory_mb: u64,
    pub free_memory_mb: u64,
    /// Memory taken by the VM's runtime templates ([`Pool::reserve_overhead`]).
    pub template_memory_mb: u64,
    /// Containers that exist; `reserved` more are being created.
    pub containers: Vec<ContainerView>,
    pub reserved: usize,
    pub booting: bool,
    /// When it entered its current state.
    pub since: Instant,
}

/// The VMs and containers of the host.
#[derive(Debug)]
pub struct Pool {
    capacity_mb: u64,
    vm_memory_mb: u64,
    /// Memory of every VM, booting and retiring ones included.
    reserved_mb: u64,
    vms: HashMap<String, VmSlot>,
    containers: HashMap<String, ContainerSlot>,
    /// Idle containers by version, most recently used last.
    idle: HashMap<FnKey, Vec<String>>,
    /// Idle pinned containers by version, used before `idle`.
    idle_pinned: HashMap<FnKey, Vec<String>>,
    next_vm: u64,
    /// Makes VM ids unique across servers sharing a host.
    tag: String,
    /// Seconds VMs have sat idle, up to the last state change of each.
    idle_vm_seconds: f64,
    /// Weights and the ceiling.
    fair: FairConfig,
    /// Memory of each account's active VMs, booting ones included (never 0: removed instead).
    held: HashMap<String, u64>,
    /// Executions waiting for capacity.
    waiters: Waiters,
    /// How many may wait at once (`--max-waiting`), for [`Pool::try_begin_wait`].
    max_waiting: usize,
}

/// One account's part of the host, for observability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountView {
    pub account_id: String,
    pub weight: u64,
    /// Memory of its active VMs.
    pub held_mb: u64,
    /// Its fair share now.
    pub share_mb: u64,
    /// Its executions waiting for capacity.
    pub waiting: usize,
}

impl Pool {
    /// A pool of at most `capacity_mb` of VMs, each normally `vm_memory_mb` (larger when one
    /// function needs more). VM ids are `vm-<n>-<tag>`.
    pub fn new(capacity_mb: u64, vm_memory_mb: u64, tag: &str) -> Self {
        Self {
            capacity_mb,
            vm_memory_mb,
            reserved_mb: 0,
            vms: HashMap::new(),
            containers: HashMap::new(),
            idle: HashMap::new(),
            idle_pinned: HashMap::new(),
            next_vm: 0,
            tag: tag.to_owned(),
            idle_vm_seconds: 0.0,
            fair: FairConfig::default(),
            held: HashMap::new(),
            waiters: Waiters::default(),
            max_waiting: usize::MAX,
        }
    }

    /// The same pool, sharing the host among accounts by `fair`'s weights and ceiling.
    pub fn with_fairness(mut self, fair: FairConfig) -> Self {
        self.fair = fair;
        self
    }

    /// The same pool, letting at most `max_waiting` executions wait for capacity at once.
    pub fn with_max_waiting(mut self, max_waiting: usize) -> Self {
        self.max_waiting = max_waiting;
        self
    }

    /// Memory of an account's active VMs, booting ones included.
    pub fn held_mb(&self, account_id: &str) -> u64 {
        self.held.get(account_id).copied().unwrap_or(0)
    }

    /// The sum of the weights of the accounts that want capacity (holding memory or waiting),
    /// and of `asking`'s.
    fn total_weight(&self, asking: &str) -> u64 {
        let mut total: u64 = self.held.keys().map(|a| self.fair.weight(a)).sum();
        total += self
            .waiters
            .accounts()
            .filter(|a| !self.held.contains_key(*a))
            .map(|a| self.fair.weight(a))
            .sum::<u64>();
        if !self.held.contains_key(asking) && self.waiters.count(asking) == 0 {
            total += self.fair.weight(asking);
        }
        total
    }

    /// An account's fair share of the capacity now, in MB, counting it among the accounts that
    /// want capacity.
    pub fn share_mb(&self, account_id: &str) -> u64 {
        fair::share_of(
            self.capacity_mb,
            self.fair.weight(account_id),
            self.total_weight(account_id),
        )
    }

    /// The memory of the VM an execution of `account_id` needing `memory_mb` would get if one
    /// were booted for it: the standard size (or the request, if larger), made smaller to fit
    /// the account's ceiling; `None` when the ceiling leaves no room for the request.
    pub fn vm_size_for(&self, account_id: &str, memory_mb: u64) -> Option<u64> {
        let size = self.vm_memory_mb.max(memory_mb);
        let Some(ceiling) = self.fair.account_memory_mb else {
            return Some(size);
        };
        let room = ceiling.saturating_sub(self.held_mb(account_id));
        (room >= memory_mb).then_some(size.min(room))
    }

    /// Whether a request of `account_id` needing `memory_mb` is within its fair share:
    /// `held + memory_mb ≤ share`, and the ceiling allows it a new VM.
    pub fn within_share(&self, account_id: &str, memory_mb: u64) -> bool {
        self.vm_size_for(account_id, memory_mb).is_some()
            && self.held_mb(account_id) + memory_mb <= self.share_mb(account_id)
    }

    /// Whether the ceiling keeps an execution of `account_id` needing `memory_mb` from a new
    /// VM (so a wait is the ceiling's doing, not only the host's).
    pub fn over_ceiling(&self, account_id: &str, memory_mb: u64) -> bool {
        self.fair.account_memory_mb.is_some() && self.vm_size_for(account_id, memory_mb).is_none()
    }

    /// Whether an execution of `account_id` must leave what is free to a waiting execution of
    /// another account: one whose request is within its share (the smallest request of each
    /// account is looked at), and whose account holds less per unit of weight (on a tie, one
    /// that has waited longer than `account_id`'s oldest; a new arrival has waited least).
    fn must_yield(&self, account_id: &str) -> bool {
        if self.waiters.is_empty() {
            // The common case, and the warm path's: nothing to look up.
            return false;
        }
        let held = self.held_mb(account_id);
        let weight = self.fair.weight(account_id);
        let own_head = self.waiters.head_of(account_id);
        self.waiters.heads().any(|(other, ticket, memory_mb)| {
            if other == account_id || !self.within_share(other, memory_mb) {
                return false;
            }
            let (other_held, other_weight) = (self.held_mb(other), self.fair.weight(other));
            fair::holds_less(other_held, other_weight, held, weight)
                || (!fair::holds_less(held, weight, other_held, other_weight)
                    && own_head.is_none_or(|own| ticket < own))
        })
    }

    /// An execution of `account_id` needing `memory_mb` starts waiting for capacity; it counts
    /// toward the accounts that want capacity, and others may yield to it. Call
    /// [`Pool::end_wait`] when it is placed or gives up. Not bounded: a caller that keeps its
    /// own bound calls this, others [`Pool::try_begin_wait`].
    pub fn begin_wait(&mut self, account_id: &str, memory_mb: u64) -> WaitTicket {
        self.waiters.add(account_id, memory_mb)
    }

    /// [`Pool::begin_wait`], unless `max_waiting` executions already wait: then `None`, and
    /// the execution is refused at once (a 429) rather than queued.
    pub fn try_begin_wait(&mut self, account_id: &str, memory_mb: u64) -> Option<WaitTicket> {
        (self.waiters.len() < self.max_waiting).then(|| self.waiters.add(account_id, memory_mb))
    }

    /// Executions waiting for capacity now, of every account.
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// A waiting execution was placed or gave up.
    pub fn end_wait(&mut self, ticket: WaitTicket) {
        self.waiters.remove(ticket);
    }

    /// Each account holding memory or waiting, by id.
    pub fn accounts(&self) -> Vec<AccountView> {
        let mut ids: Vec<&str> = self.held.keys().map(String::as_str).collect();
        ids.extend(
            self.waiters
                .accounts()
                .filter(|a| !self.held.contains_key(*a)),
        );
        ids.sort_unstable();
        ids.into_iter()
            .map(|a| AccountView {
                account_id: a.to_owned(),
                weight: self.fair.weight(a),
                held_mb: self.held_mb(a),
                share_mb: self.share_mb(a),
                waiting: self.waiters.count(a),
            })
            .collect()
    }

    /// The ceiling on one account's memory, if any.
    pub fn account_memory_mb(&self) -> Option<u64> {
        self.fair.account_memory_mb
    }

    fn hold(&mut self, account_id: &str, memory_mb: u64) {
        *self.held.entry(account_id.to_owned()).or_default() += memory_mb;
    }

    /// A VM leaves the active pool (retired or removed): its owner holds its memory no more.
    fn unhold(&mut self, state: &VmState, memory_mb: u64) {
        if let VmState::Active { account_id } = state {
            if let Some(held) = self.held.get_mut(account_id) {
                *held = held.saturating_sub(memory_mb);
                if *held == 0 {
                    self.held.remove(account_id);
                }
            }
        }
    }

    fn new_vm_id(&mut self) -> String {
        self.next_vm += 1;
        format!("vm-{}-{}", self.next_vm, self.tag)
    }

    /// Decides where an execution of `key` (a function of `runtime`) needing `memory_mb` runs,
    /// and reserves what it takes.
    pub fn place(&mut self, key: &FnKey, memory_mb: u64, runtime: &str, now: Instant) -> Placement {
        if self.must_yield(&key.account_id) {
            return Placement::Wait;
        }
        let idle = match self.idle_pinned.get_mut(key).and_then(Vec::pop) {
            Some(pinned) => Some(pinned),
            None => self.idle.get_mut(key).and_then(Vec::pop),
        };
        if let Some(container_id) = idle {
            if let Some(slot) = self.containers.get_mut(&container_id) {
                slot.idle_since = None;
                return Placement::Warm {
                    vm_id: slot.vm_id.clone(),
                    container_id,
                };
            }
        }
        self.place_new(key, memory_mb, runtime, now)
    }

    /// Decides where a new container of `key` goes, never reusing an idle one (steps 2 to 4 of
    /// the placement, without yielding to waiters): for a provisioned container, made ahead of
    /// any execution.
    pub fn place_new(
        &mut self,
        key: &FnKey,
        memory_mb: u64,
        runtime: &str,
        now: Instant,
    ) -> Placement {
        let best_fit = self
            .vms
            .iter()
            .filter(|(_, vm)| {
                vm.owned_by(&key.account_id) && !vm.booting && vm.free_mb() >= memory_mb
            })
            .min_by_key(|(id, vm)| (vm.free_mb(), id.as_str()))
            .map(|(id, _)| id.clone());
        if let Some(vm_id) = best_fit {
            self.reserve_container(&vm_id, memory_mb, now);
            return Placement::NewContainer { vm_id };
        }
        let room = match self.fair.account_memory_mb {
            Some(ceiling) => ceiling.saturating_sub(self.held_mb(&key.account_id)),
            None => u64::MAX,
        };
        let warming = self
            .vms
            .iter()
            .filter_map(|(id, vm)| match &vm.state {
                VmState::Warming { runtime: r }
                    if !vm.booting && vm.free_mb() >= memory_mb && vm.memory_mb <= room =>
                {
                    let other_runtime = r.as_deref().is_some_and(|r| r != runtime);
                    Some(((other_runtime, vm.memory_mb, vm.since, id.as_str()), id))
                }
                _ => None,
            })
            .min()
            .map(|(_, id)| id.clone());
        if let Some(vm_id) = warming {
            self.end_idle(&vm_id, now);
            if let Some(vm) = self.vms.get_mut(&vm_id) {
                vm.state = VmState::Active {
                    account_id: key.account_id.clone(),
                };
                vm.since = now;
                let taken = vm.memory_mb;
                self.hold(&key.account_id, taken);
            }
            self.reserve_container(&vm_id, memory_mb, now);
            return Placement::TakeWarming { vm_id };
        }
        let Some(size) = self.vm_size_for(&key.account_id, memory_mb) else {
            return Placement::Wait;
        };
        if self.reserved_mb + size > self.capacity_mb {
            return Placement::Wait;
        }
        let vm_id = self.new_vm_id();
        self.reserved_mb += size;
        self.hold(&key.account_id, size);
        self.vms.insert(
            vm_id.clone(),
            VmSlot {
                state: VmState::Active {
                    account_id: key.account_id.clone(),
                },
                memory_mb: size,
                used_mb: memory_mb,
                overhead_mb: 0,
                containers: 1,
                booting: true,
                idle_since: None,
                since: now,
            },
        );
        Placement::BootVm {
            vm_id,
            memory_mb: size,
        }
    }

    /// Registers a new VM for the warming pool, readied for `runtime`, if the host's capacity
    /// allows one more VM of the standard size. Returns its id and memory; the caller boots it
    /// and reports with [`Pool::vm_booted`] (or [`Pool::remove_vm`] if it failed).
    pub fn begin_warming(&mut self, runtime: Option<&str>, now: Instant) -> Option<(String, u64)> {
        let size = self.vm_memory_mb;
        if self.reserved_mb + size > self.capacity_mb {
            return None;
        }
        let vm_id = self.new_vm_id();
        self.reserved_mb += size;
        self.vms.insert(
            vm_id.clone(),
            VmSlot {
                state: VmState::Warming {
                    runtime: runtime.map(str::to_owned),
                },
                memory_mb: size,
                used_mb: 0,
                overhead_mb: 0,
                containers: 0,
                booting: true,
                idle_since: None,
                since: now,
            },
        );
        Some((vm_id, size))
    }

    fn reserve_container(&mut self, vm_id: &str, memory_mb: u64, now: Instant) {
        self.end_idle(vm_id, now);
        if let Some(vm) = self.vms.get_mut(vm_id) {
            vm.used_mb += memory_mb;
            vm.containers += 1;
        }
    }

    /// Adds a VM's idle time so far to the total, and marks it not idle.
    fn end_idle(&mut self, vm_id: &str, now: Instant) {
        if let Some(since) = self.vms.get_mut(vm_id).and_then(|vm| vm.idle_since.take()) {
            self.idle_vm_seconds += now.saturating_duration_since(since).as_secs_f64();
        }
    }

    /// Takes `memory_mb` of a running VM's memory for the VM's own use (a runtime template), if
    /// its containers leave that much free; it is then not available to containers until
    /// [`Pool::release_overhead`] or the VM's end. Returns whether it was taken.
    pub fn reserve_overhead(&mut self, vm_id: &str, memory_mb: u64) -> bool {
        match self.vms.get_mut(vm_id) {
            Some(vm) if !matches!(vm.state, VmState::Retiring) && vm.free_mb() >= memory_mb => {
                vm.overhead_mb += memory_mb;
                true
            }
            _ => false,
        }
    }

    /// Gives back memory taken by [`Pool::reserve_overhead`].
    pub fn release_overhead(&mut self, vm_id: &str, memory_mb: u64) {
        if let Some(vm) = self.vms.get_mut(vm_id) {
            vm.overhead_mb = vm.overhead_mb.saturating_sub(memory_mb);
        }
    }

    /// A booting VM is up. A warming VM starts to wait for an account.
    pub fn vm_booted(&mut self, vm_id: &str, now: Instant) {
        if let Some(vm) = self.vms.get_mut(vm_id) {
            vm.booting = false;
            if matches!(vm.state, VmState::Warming { .. }) {
                vm.since = now;
                vm.idle_since = Some(now);
            }
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
                pin: None,
            },
        );
    }

    /// Pins a container to a provisioned-concurrency target: see the module docs.
    pub fn pin(&mut self, container_id: &str, pin: &str) {
        if let Some(slot) = self.containers.get_mut(container_id) {
            slot.pin = Some(pin.to_owned());
            if slot.idle_since.is_some() {
                let key = slot.key.clone();
                self.forget_idle(&key, container_id);
                self.idle_pinned
                    .entry(key)
                    .or_default()
                    .push(container_id.to_owned());
            }
        }
    }

    /// The containers pinned to `pin` (idle or busy).
    pub fn pinned(&self, pin: &str) -> usize {
        self.containers
            .values()
            .filter(|c| c.pin.as_deref() == Some(pin))
            .count()
    }

    /// Keeps `keep` containers pinned to `pin` and lets the others go: idle ones are removed
    /// and returned (the caller destroys them), busy ones are unpinned and end as on-demand
    /// containers do.
    pub fn unpin(&mut self, pin: &str, keep: usize, now: Instant) -> Expired {
        let mut pinned: Vec<(bool, String)> = self
            .containers
            .iter()
            .filter(|(_, c)| c.pin.as_deref() == Some(pin))
            // Busy ones first: those are kept, so an idle one goes at once.
            .map(|(id, c)| (c.idle_since.is_some(), id.clone()))
            .collect();
        pinned.sort();
        let mut expired = Expired::default();
        for (idle, id) in pinned.into_iter().skip(keep) {
            if idle {
                if let Some(vm_id) = self.containers.get(&id).map(|c| c.vm_id.clone()) {
                    self.remove_container(&id, now);
                    expired.containers.push((vm_id, id));
                }
            } else if let Some(slot) = self.containers.get_mut(&id) {
                slot.pin = None;
            }
        }
        expired
    }

    /// A container reserved by [`Pool::place`] could not be created: its memory is free again.
    pub fn container_not_created(&mut self, vm_id: &str, memory_mb: u64, now: Instant) {
        self.unreserve_container(vm_id, memory_mb, now);
    }

    fn unreserve_container(&mut self, vm_id: &str, memory_mb: u64, now: Instant) {
        if let Some(vm) = self.vms.get_mut(vm_id) {
            vm.used_mb = vm.used_mb.saturating_sub(memory_mb);
            vm.containers = vm.containers.saturating_sub(1);
            if vm.containers == 0 && matches!(vm.state, VmState::Active { .. }) {
                vm.idle_since = Some(now);
            }
        }
    }

    /// An invocation on a container ended. A container that can serve again becomes idle;
    /// otherwise it is forgotten and its memory freed.
    pub fn release(&mut self, container_id: &str, reusable: bool, now: Instant) {
        if reusable {
            if let Some(slot) = self.containers.get_mut(container_id) {
                slot.idle_since = Some(now);
                let idle = match slot.pin {
                    Some(_) => &mut self.idle_pinned,
                    None => &mut self.idle,
                };
                idle.entry(slot.key.clone())
                    .or_default()
                    .push(container_id.to_owned());
            }
        } else {
            self.remove_container(container_id, now);
        }
    }

    /// Whether an idle container may serve an execution waiting now (so the waiters should try
    /// again): one of its account's waiters may reuse it or evict it, and any waiter may evict
    /// its VM once every container in it is idle.
    pub fn idle_may_serve_a_waiter(&self, container_id: &str) -> bool {
        if self.waiters.is_empty() {
            return false;
        }
        let Some(slot) = self.containers.get(container_id) else {
            return false;
        };
        if self.waiters.count(&slot.key.account_id) > 0 {
            return true;
        }
        let in_vm = self.containers.values().filter(|c| c.vm_id == slot.vm_id);
        let (mut known, mut busy) = (0, false);
        for c in in_vm {
            known += 1;
            busy |= c.idle_since.is_none();
        }
        let reserved = self
            .vms
            .get(&slot.vm_id)
            .is_some_and(|vm| vm.containers > known);
        !busy && !reserved
    }

    /// Whether the pool holds a container (busy, idle or pinned).
    pub fn has_container(&self, container_id: &str) -> bool {
        self.containers.contains_key(container_id)
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
        for lists in [&mut self.idle, &mut self.idle_pinned] {
            if let Some(idle) = lists.get_mut(key) {
                idle.retain(|c| c != container_id);
                if idle.is_empty() {
                    lists.remove(key);
                }
            }
        }
    }

    /// Forgets the containers of a VM; returns them.
    fn drop_containers(&mut self, vm_id: &str) -> Vec<String> {
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

    /// Forgets a VM and everything in it at once (it failed to boot, or it is already gone),
    /// freeing its memory. Returns the containers it held.
    pub fn remove_vm(&mut self, vm_id: &str, now: Instant) -> Vec<String> {
        self.end_idle(vm_id, now);
        let Some(vm) = self.vms.remove(vm_id) else {
            return Vec::new();
        };
        self.reserved_mb = self.reserved_mb.saturating_sub(vm.memory_mb);
        self.unhold(&vm.state, vm.memory_mb);
        self.drop_containers(vm_id)
    }

    /// Takes a VM out of service: it is retiring from now on, its containers are forgotten
    /// (returned), and its memory stays reserved until [`Pool::vm_stopped`].
    pub fn retire(&mut self, vm_id: &str, now: Instant) -> Vec<String> {
        self.end_idle(vm_id, now);
        let Some(vm) = self.vms.get_mut(vm_id) else {
            return Vec::new();
        };
        let (was, memory_mb) = (
            std::mem::replace(&mut vm.state, VmState::Retiring),
            vm.memory_mb,
        );
        vm.booting = false;
        vm.since = now;
        vm.used_mb = 0;
        vm.overhead_mb = 0;
        vm.containers = 0;
        self.unhold(&was, memory_mb);
        self.drop_containers(vm_id)
    }

    /// A retiring VM is gone: its memory is free.
    pub fn vm_stopped(&mut self, vm_id: &str, now: Instant) {
        if self
            .vms
            .get(vm_id)
            .is_some_and(|vm| vm.state == VmState::Retiring)
        {
            self.remove_vm(vm_id, now);
        }
    }

    /// Retires what has sat idle too long, and returns it:
    /// - idle containers older than `container_keep_alive`;
    /// - active VMs without containers for `vm_keep_alive` (they are never reused for another
    ///   account);
    /// - warming VMs idle for `warm_ttl`, oldest first, as long as more than `keep_warming`
    ///   remain in the warming pool.
    pub fn expired(
        &mut self,
        now: Instant,
        container_keep_alive: Duration,
        vm_keep_alive: Duration,
        warm_ttl: Duration,
        keep_warming: usize,
    ) -> Expired {
        let old: Vec<String> = self
            .containers
            .iter()
            .filter(|(_, c)| {
                c.pin.is_none()
                    && c.idle_since
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
        let idle_for = |vm: &VmSlot| {
            vm.idle_since
                .map(|t| now.saturating_duration_since(t))
                .unwrap_or_default()
        };
        let mut empty: Vec<String> = self
            .vms
            .iter()
            .filter(|(_, vm)| {
                matches!(vm.state, VmState::Active { .. })
                    && vm.idle_since.is_some()
                    && idle_for(vm) >= vm_keep_alive
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut old_warming: Vec<(Instant, String)> = self
            .vms
            .iter()
            .filter(|(_, vm)| {
                matches!(vm.state, VmState::Warming { .. })
                    && vm.idle_since.is_some()
                    && idle_for(vm) >= warm_ttl
            })
            .map(|(id, vm)| (vm.since, id.clone()))
            .collect();
        old_warming.sort();
        let surplus = self.warming_count().saturating_sub(keep_warming);
        empty.extend(old_warming.into_iter().take(surplus).map(|(_, id)| id));
        for id in empty {
            self.retire(&id, now);
            expired.vms.push(id);
        }
        expired
    }

    /// Makes room for an execution of `key` that found none, by letting idle things go, the
    /// least recently used first:
    /// 1. idle containers in an active VM of the same account, just enough to fit `memory_mb`;
    /// 2. else a whole idle VM, when stopping it frees enough of the host's capacity for a new
    ///    VM of the needed size (else as few as do together): a warming VM first, else an
    ///    active VM whose containers are all idle: the account's own, or, only when the request
    ///    is within the account's fair share, another account's (of an account above its own
    ///    share first).
    ///
    /// Returns what was let go (the caller destroys it), or `None` when nothing can be, when
    /// VMs already retiring will free enough, when the execution must yield to a waiting one
    /// of another account, or when the ceiling leaves no room for a new VM: the execution must
    /// wait.
    pub fn evict_for(&mut self, key: &FnKey, memory_mb: u64, now: Instant) -> Option<Expired> {
        if self.must_yield(&key.account_id) {
            return None;
        }
        let idle_in = |pool: &Self, vm_id: &str| -> Vec<(Instant, String, u64)> {
            let mut idle: Vec<(Instant, String, u64)> = pool
                .containers
                .iter()
                .filter(|(_, c)| c.vm_id == vm_id && c.pin.is_none())
                .filter_map(|(id, c)| c.idle_since.map(|t| (t, id.clone(), c.memory_mb)))
                .collect();
            idle.sort();
            idle
        };
        // 1. Room in one of the account's own VMs.
        let mut own: Vec<(&String, &VmSlot)> = self
            .vms
            .iter()
            .filter(|(_, vm)| vm.owned_by(&key.account_id) && !vm.booting)
            .filter(|(_, vm)| vm.memory_mb >= memory_mb)
            .collect();
        own.sort_by_key(|(id, vm)| (vm.free_mb(), id.as_str()));
        let own: Vec<String> = own.into_iter().map(|(id, _)| id.clone()).collect();
        for vm_id in own {
            let free = self.vms.get(&vm_id).map_or(0, VmSlot::free_mb);
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
        let size = self.vm_size_for(&key.account_id, memory_mb)?;
        let others_too = self.within_share(&key.account_id, memory_mb);
        let above_share: HashMap<&str, bool> = self
            .held
            .iter()
            .map(|(a, held)| (a.as_str(), *held > self.share_mb(a)))
            .collect();
        let retiring_mb: u64 = self
            .vms
            .values()
            .filter(|vm| vm.state == VmState::Retiring)
            .map(|vm| vm.memory_mb)
            .sum();
        let spare = self.capacity_mb.saturating_sub(self.reserved_mb);
        if spare + retiring_mb >= size {
            return None;
        }
        let mut candidates: Vec<_> = self
            .vms
            .iter()
            .filter(|(_, vm)| !vm.booting && vm.state != VmState::Retiring)
            .filter(|(_, vm)| match &vm.state {
                VmState::Active { account_id } => others_too || *account_id == key.account_id,
                _ => true,
            })
            .filter_map(|(id, vm)| {
                // A provisioned container holds its VM as a busy one does.
                let busy = self
                    .containers
                    .values()
                    .any(|c| &c.vm_id == id && (c.idle_since.is_none() || c.pin.is_some()));
                let reserved =
                    vm.containers > self.containers.values().filter(|c| &c.vm_id == id).count();
                if busy || reserved {
                    return None;
                }
                let (active, within_share) = match &vm.state {
                    VmState::Active { account_id } => (
                        true,
                        !above_share.get(account_id.as_str()).unwrap_or(&false),
                    ),
                    _ => (false, false),
                };
                let last_used = idle_in(self, id).last().map(|(t, _, _)| *t);
                Some(((active, within_share, last_used, id.clone()), vm.memory_mb))
            })
            .collect();
        candidates.sort();
        // One VM that frees enough, the first in that order; else the fewest first ones that
        // do together (a VM larger than the others wants several of theirs).
        let have = spare + retiring_mb;
        let victims: Vec<String> = match candidates.iter().find(|(_, mb)| have + mb >= size) {
            Some(((.., id), _)) => vec![id.clone()],
            None => {
                let mut freed = have;
                let mut victims = Vec::new();
                for ((.., id), mb) in &candidates {
                    if freed >= size {
                        break;
                    }
                    freed += mb;
                    victims.push(id.clone());
                }
                if freed < size {
                    return None;
                }
                victims
            }
        };
        let mut expired = Expired::default();
        for victim in victims {
            let gone = self.retire(&victim, now);
            expired
                .containers
                .extend(gone.into_iter().map(|c| (victim.clone(), c)));
            expired.vms.push(victim);
        }
        Some(expired)
    }

    /// Removes and returns the idle containers of a function (of its `version` only, when
    /// given) whose revision is not `current` (all of them when `None`): after an update or a
    /// delete nothing will ever reuse them.
    pub fn take_stale_idle(
        &mut self,
        account_id: &str,
        function_name: &str,
        version: Option<&str>,
        current: Option<&str>,
        now: Instant,
    ) -> Vec<(String, String)> {
        let stale: Vec<FnKey> = self
            .idle
            .keys()
            .filter(|k| {
                k.account_id == account_id
                    && k.function_name == function_name
                    && version.is_none_or(|v| k.version == v)
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

    /// Every VM, for observability, by id.
    pub fn vms(&self) -> Vec<VmView> {
        let mut containers: HashMap<&str, Vec<ContainerView>> = HashMap::new();
        for (id, c) in &self.containers {
            containers
                .entry(c.vm_id.as_str())
                .or_default()
                .push(ContainerView {
                    container_id: id.clone(),
                    account_id: c.key.account_id.clone(),
                    function_name: c.key.function_name.clone(),
                    memory_mb: c.memory_mb,
                    busy: c.idle_since.is_none(),
                    provisioned: c.pin.clone(),
                });
        }
        let mut views: Vec<VmView> = self
            .vms
            .iter()
            .map(|(id, vm)| {
                let mut list = containers.remove(id.as_str()).unwrap_or_default();
                list.sort_by(|a, b| a.container_id.cmp(&b.container_id));
                let (pool, account_id, runtime) = match &vm.state {
                    VmState::Warming { runtime } => (PoolKind::Warming, None, runtime.clone()),
                    VmState::Active { account_id } => {
                        (PoolKind::Active, Some(account_id.clone()), None)
                    }
                    VmState::Retiring => (PoolKind::Retiring, None, None),
                };
                VmView {
                    vm_id: id.clone(),
                    pool,
                    account_id,
                    runtime,
                    memory_mb: vm.memory_mb,
                    free_memory_mb: vm.free_mb(),
                    template_memory_mb: vm.overhead_mb,
                    reserved: vm.containers.saturating_sub(list.len()),
                    containers: list,
                    booting: vm.booting,
                    since: vm.since,
                }
            })
            .collect();
        views.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
        views
    }

    /// The account a VM belongs to; `None` for a warming or retiring VM.
    pub fn owner(&self, vm_id: &str) -> Option<&str> {
        match &self.vms.get(vm_id)?.state {
            VmState::Active { account_id } => Some(account_id),
            _ => None,
        }
    }

    /// VMs in the warming pool, booting ones included.
    pub fn warming_count(&self) -> usize {
        self.vms
            .values()
            .filter(|vm| matches!(vm.state, VmState::Warming { .. }))
            .count()
    }

    /// Warming VMs readied for each runtime (`None`: any), booting ones included.
    pub fn warming_runtimes(&self) -> HashMap<Option<String>, usize> {
        let mut counts = HashMap::new();
        for vm in self.vms.values() {
            if let VmState::Warming { runtime } = &vm.state {
                *counts.entry(runtime.clone()).or_default() += 1;
            }
        }
        counts
    }

    /// Memory taken by VMs, booting and retiring ones included.
    pub fn reserved_mb(&self) -> u64 {
        self.reserved_mb
    }

    pub fn capacity_mb(&self) -> u64 {
        self.capacity_mb
    }

    /// Seconds VMs have sat idle (warming, or active without containers), up to `now`.
    pub fn idle_vm_seconds(&self, now: Instant) -> f64 {
        self.idle_vm_seconds
            + self
                .vms
                .values()
                .filter_map(|vm| vm.idle_since)
                .map(|t| now.saturating_duration_since(t).as_secs_f64())
                .sum::<f64>()
    }
}

impl VmSlot {
    fn free_mb(&self) -> u64 {
        self.memory_mb
            .saturating_sub(self.used_mb)
            .saturating_sub(self.overhead_mb)
    }

    fn owned_by(&self, account_id: &str) -> bool {
        matches!(&self.state, VmState::Active { account_id: a } if a == account_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One fixed instant, the start of every test's timeline.
    fn start() -> Instant {
        static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *T0.get_or_init(Instant::now)
    }

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

    fn boot(pool: &mut Pool, key: &FnKey, memory: u64) -> String {
        match pool.place(key, memory, "p", start()) {
            Placement::BootVm { vm_id, .. } => {
                pool.vm_booted(&vm_id, start());
                vm_id
            }
            other => panic!("expected a boot, got {other:?}"),
        }
    }

    #[test]
    fn warm_containers_are_reused_most_recent_first() {
        let mut pool = Pool::new(8192, 2048, "t");
        let now = start();
        let f = key("a", "f");
        let vm = boot(&mut pool, &f, 128);
        pool.container_created("c1", &f, &vm, 128);
        assert_eq!(
            pool.place(&f, 128, "p", start()),
            Placement::NewContainer { vm_id: vm.clone() }
        );
        pool.container_created("c2", &f, &vm, 128);
        pool.release("c1", true, now);
        pool.release("c2", true, now + Duration::from_secs(1));
        assert_eq!(
            pool.place(&f, 128, "p", start()),
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
            pool.place(&other_version, 128, "p", start()),
            Placement::NewContainer { vm_id: vm.clone() },
            "a new revision never reuses an old container"
        );
        let denied = FnKey {
            egress_denied: true,
            ..f.clone()
        };
        assert_eq!(
            pool.place(&denied, 128, "p", start()),
            Placement::NewContainer { vm_id: vm },
            "a container made under another egress setting is never reused"
        );
    }

    #[test]
    fn a_runtime_templates_memory_is_not_given_to_containers() {
        let mut pool = Pool::new(8192, 1024, "t");
        let f = key("a", "f");
        let vm = boot(&mut pool, &f, 512);
        pool.container_created("c1", &f, &vm, 512);
        // 512 MB free: a 30 MB template fits, then only 482 MB are left for containers.
        assert!(pool.reserve_overhead(&vm, 30));
        assert!(matches!(
            pool.place(&f, 512, "p", start()),
            Placement::BootVm { .. }
        ));
        assert_eq!(
            pool.place(&f, 482, "p", start()),
            Placement::NewContainer { vm_id: vm.clone() }
        );
        // Full: no room for another template.
        assert!(!pool.reserve_overhead(&vm, 1));
        pool.release_overhead(&vm, 30);
        assert!(pool.reserve_overhead(&vm, 30));
        assert!(!pool.reserve_overhead("no-such-vm", 1));

        // A warming VM holding a template serves only what is left of it.
        let mut pool = Pool::new(8192, 1024, "t");
        let (warm, _) = pool.begin_warming(Some("python3.12"), start()).unwrap();
        pool.vm_booted(&warm, start());
        assert!(pool.reserve_overhead(&warm, 30));
        assert!(matches!(
            pool.place(&f, 1024, "python3.12", start()),
            Placement::BootVm { .. }
        ));
        assert_eq!(
            pool.place(&f, 512, "python3.12", start()),
            Placement::TakeWarming { vm_id: warm }
        );
    }

    #[test]
    fn accounts_never_share_a_vm_and_capacity_is_never_exceeded() {
        let mut pool = Pool::new(4096, 2048, "t");
        let a = key("a", "f");
        let b = key("b", "g");
        let vm_a = boot(&mut pool, &a, 128);
        let vm_b = boot(&mut pool, &b, 128);
        assert_ne!(vm_a, vm_b);
        assert_eq!(pool.owner(&vm_b), Some("b"));
        // Both VMs are full of this host's capacity: a third account must wait.
        assert_eq!(
            pool.place(&key("c", "h"), 128, "p", start()),
            Placement::Wait
        );
        // Account a still fits in its own VM.
        assert_eq!(
            pool.place(&a, 1024, "p", start()),
            Placement::NewContainer {
                vm_id: vm_a.clone()
            }
        );
        assert_eq!(
            pool.place(&a, 1024, "p", start()),
            Placement::Wait,
            "1920 MB of 2048 taken"
        );
        pool.remove_vm(&vm_b, start());
        assert!(matches!(
            pool.place(&key("c", "h"), 128, "p", start()),
            Placement::BootVm { .. }
        ));
        assert_eq!(pool.reserved_mb(), 4096);
    }

    #[test]
    fn best_fit_picks_the_fullest_vm_that_fits() {
        let mut pool = Pool::new(1 << 20, 2048, "t");
        let f = key("a", "f");
        let vm1 = boot(&mut pool, &f, 1024);
        let vm2 = match pool.place(&f, 1536, "p", start()) {
            Placement::BootVm { vm_id, .. } => vm_id,
            other => panic!("{other:?}"),
        };
        pool.vm_booted(&vm2, start());
        // vm1 has 1024 free, vm2 512: a 512 MB container goes to vm2, a 1024 one to vm1.
        assert_eq!(
            pool.place(&f, 512, "p", start()),
            Placement::NewContainer { vm_id: vm2 }
        );
        assert_eq!(
            pool.place(&f, 1024, "p", start()),
            Placement::NewContainer { vm_id: vm1 }
        );
    }

    #[test]
    fn big_functions_get_a_vm_of_their_size() {
        let mut pool = Pool::new(1 << 20, 2048, "t");
        assert!(matches!(
            pool.place(&key("a", "big"), 4096, "p", start()),
            Placement::BootVm {
                memory_mb: 4096,
                ..
            }
        ));
    }

    #[test]
    fn idle_containers_and_empty_vms_expire() {
        let mut pool = Pool::new(8192, 2048, "t");
        let t0 = start();
        let f = key("a", "f");
        let vm = boot(&mut pool, &f, 128);
        pool.container_created("c1", &f, &vm, 128);
        pool.release("c1", true, t0);
        let keep = Duration::from_secs(60);
        assert_eq!(
            pool.expired(t0 + Duration::from_secs(59), keep, keep, keep, 0),
            Expired::default()
        );
        let first = pool.expired(t0 + keep, keep, keep, keep, 0);
        assert_eq!(first.containers, vec![(vm.clone(), "c1".to_owned())]);
        assert!(first.vms.is_empty(), "the VM only just became empty");
        let second = pool.expired(t0 + keep * 2, keep, keep, keep, 0);
        assert_eq!(second.vms, vec![vm.clone()]);
        assert_eq!(
            pool.reserved_mb(),
            2048,
            "a retiring VM's memory is reserved until it stops"
        );
        pool.vm_stopped(&vm, t0 + keep * 2);
        assert_eq!(pool.reserved_mb(), 0);
    }

    #[test]
    fn an_update_retires_the_idle_containers_of_older_versions() {
        let mut pool = Pool::new(8192, 2048, "t");
        let now = start();
        let old = key("a", "f");
        let vm = boot(&mut pool, &old, 128);
        pool.container_created("c-old", &old, &vm, 128);
        pool.release("c-old", true, now);
        let new = FnKey {
            revision_id: "r2".into(),
            ..old.clone()
        };
        assert_eq!(
            pool.place(&new, 128, "p", start()),
            Placement::NewContainer { vm_id: vm.clone() }
        );
        pool.container_created("c-new", &new, &vm, 128);
        pool.release("c-new", true, now);
        // A published version's container stays through updates of $LATEST.
        let v1 = FnKey {
            version: "1".into(),
            revision_id: "r-v1".into(),
            ..old.clone()
        };
        pool.place(&v1, 128, "p", start());
        pool.container_created("c-v1", &v1, &vm, 128);
        pool.release("c-v1", true, now);
        assert_eq!(
            pool.take_stale_idle("a", "f", Some("$LATEST"), Some("r2"), now),
            vec![(vm.clone(), "c-old".to_owned())]
        );
        assert_eq!(pool.vms()[0].free_memory_mb, 2048 - 256);
        // Deleting the version retires its containers only.
        assert_eq!(
            pool.take_stale_idle("a", "f", Some("1"), None, now),
            vec![(vm.clone(), "c-v1".to_owned())]
        );
        assert_eq!(
            pool.take_stale_idle("a", "f", None, None, now),
            vec![(vm, "c-new".to_owned())]
        );
    }

    #[test]
    fn idle_containers_make_way_for_new_work() {
        let mut pool = Pool::new(4096, 2048, "t");
        let t0 = start();
        let a = key("a", "f");
        let a2 = key("a", "g");
        let vm_a = boot(&mut pool, &a, 1024);
        pool.container_created("a1", &a, &vm_a, 1024);
        assert_eq!(
            pool.place(&a, 1024, "p", start()),
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
        assert_eq!(pool.place(&a2, 1024, "p", start()), Placement::Wait);
        let evicted = pool.evict_for(&a2, 1024, t0).unwrap();
        assert_eq!(
            evicted.containers,
            vec![(vm_a.clone(), "a1".to_owned())],
            "the least recently used"
        );
        assert!(evicted.vms.is_empty());
        assert_eq!(
            pool.place(&a2, 1024, "p", start()),
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
        assert_eq!(evicted.containers, vec![(vm_b.clone(), "b1".to_owned())]);
        assert_eq!(pool.place(&c, 128, "p", t0), Placement::Wait);
        assert_eq!(
            pool.evict_for(&c, 128, t0),
            None,
            "b's retiring VM will free enough: nothing more is evicted"
        );
        pool.vm_stopped(&vm_b, t0);
        assert!(matches!(
            pool.place(&c, 128, "p", t0),
            Placement::BootVm { .. }
        ));
    }

    /// Fills `count` VMs of account `account` with busy containers of `f` (two of 1024 MB
    /// each), and returns the VMs.
    fn flood(pool: &mut Pool, account: &str, count: usize) -> Vec<String> {
        let f = key(account, "flood");
        let mut vms = Vec::new();
        for i in 0..count {
            let vm = boot(pool, &f, 1024);
            pool.container_created(&format!("{account}-{i}-1"), &f, &vm, 1024);
            assert_eq!(
                pool.place(&f, 1024, "p", start()),
                Placement::NewContainer { vm_id: vm.clone() }
            );
            pool.container_created(&format!("{account}-{i}-2"), &f, &vm, 1024);
            vms.push(vm);
        }
        vms
    }

    /// The case: A floods the host while B's one small container idles in B's VM.
    #[test]
    fn an_account_above_its_share_never_evicts_another_accounts_idle_vm() {
        let mut pool = Pool::new(6 * 2048, 2048, "t");
        let t0 = start();
        let b = key("b", "small");
        let vm_b = boot(&mut pool, &b, 128);
        pool.container_created("b1", &b, &vm_b, 128);
        pool.release("b1", true, t0);
        let vms_a = flood(&mut pool, "a", 5);
        let a = key("a", "flood");
        // A holds 10240 MB, its share is 6144: it waits, and B's VM stays.
        assert_eq!((pool.held_mb("a"), pool.share_mb("a")), (10_240, 6144));
        assert_eq!(pool.place(&a, 1024, "p", t0), Placement::Wait);
        assert!(!pool.within_share("a", 1024));
        assert_eq!(pool.evict_for(&a, 1024, t0), None);
        let _ticket = pool.begin_wait("a", 1024);
        // B's next invocation finds its warm container.
        assert_eq!(
            pool.place(&b, 128, "p", t0),
            Placement::Warm {
                container_id: "b1".into(),
                vm_id: vm_b.clone()
            }
        );
        pool.release("b1", true, t0);
        // A's own idle containers still make way for A's other functions.
        pool.release("a-0-1", true, t0);
        let other = key("a", "other");
        let evicted = pool.evict_for(&other, 1024, t0).unwrap();
        assert_eq!(
            evicted.containers,
            vec![(vms_a[0].clone(), "a-0-1".to_owned())]
        );
        assert!(evicted.vms.is_empty());
    }

    #[test]
    fn an_account_within_its_share_evicts_an_idle_vm_of_one_above_it() {
        let mut pool = Pool::new(6 * 2048, 2048, "t");
        let t0 = start();
        let vms_a = flood(&mut pool, "a", 5);
        let b = key("b", "small");
        let vm_b = boot(&mut pool, &b, 128);
        pool.container_created("b1", &b, &vm_b, 128);
        pool.release("b1", true, t0);
        // C holds nothing: its share (4096 of 12288) has room for 128 MB.
        let c = key("c", "g");
        assert!(pool.within_share("c", 128));
        assert_eq!(pool.place(&c, 128, "p", t0), Placement::Wait);
        // A's first VM goes idle after B's: it is taken first all the same (A is above its
        // share, B is not).
        pool.release("a-0-1", true, t0);
        pool.release("a-0-2", true, t0 + Duration::from_secs(1));
        let evicted = pool
            .evict_for(&c, 128, t0 + Duration::from_secs(2))
            .unwrap();
        assert_eq!(evicted.vms, vec![vms_a[0].clone()]);
        assert_eq!(pool.owner(&vm_b), Some("b"));
        assert_eq!(pool.held_mb("a"), 8192, "a retiring VM is held by no one");
    }

    /// Memory that VMs already retiring will free counts: only as many more VMs go as make up
    /// the rest.
    #[test]
    fn vms_already_retiring_count_toward_the_room_an_eviction_makes() {
        // (the memory needed, warming VMs evicted besides x's 2048 MB retiring)
        for (memory, victims) in [(4096, 1), (8192, 3)] {
            let mut pool = Pool::new(6 * 2048, 2048, "t");
            let t0 = start();
            let x = key("x", "f");
            let vm_x = boot(&mut pool, &x, 128);
            pool.retire(&vm_x, t0);
            flood(&mut pool, "d", 1);
            for _ in 0..4 {
                let (id, _) = pool.begin_warming(None, t0).unwrap();
                pool.vm_booted(&id, t0);
            }
            let c = key("c", "big");
            assert_eq!(pool.place(&c, memory, "p", t0), Placement::Wait);
            let evicted = pool.evict_for(&c, memory, t0).unwrap();
            assert_eq!(evicted.vms.len(), victims, "{memory} MB: {evicted:?}");
            assert_eq!(pool.warming_count(), 4 - victims);
        }
    }

    /// A VM with a container being made is not evicted, though every container made is idle.
    #[test]
    fn a_vm_with_a_container_being_made_is_not_evicted() {
        let mut pool = Pool::new(2 * 2048, 2048, "t");
        let t0 = start();
        flood(&mut pool, "a", 1);
        let b = key("b", "g");
        let vm_b = boot(&mut pool, &b, 128);
        pool.container_created("b1", &b, &vm_b, 128);
        pool.release("b1", true, t0);
        assert_eq!(
            pool.place(&key("b", "h"), 128, "p", t0),
            Placement::NewContainer {
                vm_id: vm_b.clone()
            }
        );
        let c = key("c", "i");
        assert!(pool.within_share("c", 128));
        assert_eq!(pool.evict_for(&c, 128, t0), None);
        assert_eq!(pool.owner(&vm_b), Some("b"));
    }

    /// A warming VM still booting is not evicted, though warming VMs go first: an idle one is.
    #[test]
    fn a_booting_warming_vm_is_not_evicted() {
        let mut pool = Pool::new(3 * 2048, 2048, "t");
        let t0 = start();
        let a = key("a", "f");
        let vm_a = boot(&mut pool, &a, 128);
        pool.container_created("a1", &a, &vm_a, 128);
        pool.release("a1", true, t0);
        let b = key("b", "g");
        let vm_b = boot(&mut pool, &b, 128);
        pool.container_created("b1", &b, &vm_b, 128);
        pool.release("b1", true, t0 + Duration::from_secs(1));
        let (warming, _) = pool.begin_warming(None, t0).unwrap();
        let c = key("c", "h");
        assert_eq!(pool.place(&c, 128, "p", t0), Placement::Wait);
        let evicted = pool.evict_for(&c, 128, t0).unwrap();
        assert_eq!(evicted.vms, vec![vm_a.clone()]);
        assert_eq!(pool.warming_count(), 1, "{warming} boots on");
        assert_eq!(pool.owner(&vm_b), Some("b"));
    }

    /// "Above its share" is strictly more than the share: an account holding exactly its share
    /// is not made to give way first; between it and one below its share, the least recently
    /// used idle VM goes.
    #[test]
    fn an_account_at_exactly_its_share_is_not_evicted_first() {
        let mut pool = Pool::new(6 * 2048, 2048, "t");
        let t0 = start();
        let vms_a = flood(&mut pool, "a", 2);
        let vms_b = flood(&mut pool, "b", 1);
        flood(&mut pool, "d", 3);
        let c = key("c", "g");
        // A holds exactly its share (12288 / 3), B less, D more (all busy); C's request is
        // within its share (12288 / 4).
        assert_eq!((pool.held_mb("a"), pool.share_mb("a")), (4096, 4096));
        assert!(pool.within_share("c", 128));
        for c in ["b-0-1", "b-0-2"] {
            pool.release(c, true, t0);
        }
        for c in ["a-0-1", "a-0-2", "a-1-1", "a-1-2"] {
            pool.release(c, true, t0 + Duration::from_secs(1));
        }
        assert_eq!(pool.place(&c, 128, "p", t0), Placement::Wait);
        let evicted = pool
            .evict_for(&c, 128, t0 + Duration::from_secs(2))
            .unwrap();
        assert_eq!(evicted.vms, vms_b, "B's VM, the least recently used");
        assert!(vms_a.iter().all(|vm| pool.owner(vm) == Some("a")));
    }

    #[test]
    fn a_waiting_account_within_its_share_goes_before_one_above_it() {
        let mut pool = Pool::new(4 * 2048, 2048, "t");
        let t0 = start();
        let vms_a = flood(&mut pool, "a", 4);
        let a = key("a", "flood");
        let a_waits = pool.begin_wait("a", 1024);
        let b = key("b", "small");
        assert_eq!(pool.place(&b, 128, "p", t0), Placement::Wait);
        let b_waits = pool.begin_wait("b", 128);
        // One of A's containers ends: A's waiter does not take it while B waits.
        pool.release("a-0-1", true, t0);
        assert_eq!(pool.place(&a, 1024, "p", t0), Placement::Wait);
        assert_eq!(pool.evict_for(&a, 1024, t0), None);
        // Nor does a new arrival of A's.
        assert_eq!(pool.place(&key("a", "new"), 128, "p", t0), Placement::Wait);
        // The VM empties: B evicts it and boots a VM of its own.
        pool.release("a-0-2", true, t0);
        assert_eq!(pool.place(&b, 128, "p", t0), Placement::Wait);
        let evicted = pool.evict_for(&b, 128, t0).unwrap();
        assert_eq!(evicted.vms, vec![vms_a[0].clone()]);
        pool.vm_stopped(&vms_a[0], t0);
        assert!(matches!(
            pool.place(&b, 128, "p", t0),
            Placement::BootVm { .. }
        ));
        pool.end_wait(b_waits);
        // B is served: A goes on.
        pool.release("a-1-1", true, t0);
        assert_eq!(
            pool.place(&a, 1024, "p", t0),
            Placement::Warm {
                container_id: "a-1-1".into(),
                vm_id: vms_a[1].clone()
            }
        );
        pool.end_wait(a_waits);
    }

    /// Between accounts holding as much per unit of weight, the one waiting longest goes first,
    /// and a new arrival (which has waited least) yields to a waiter.
    #[test]
    fn on_a_tie_the_longest_waiting_goes_first() {
        let mut pool = Pool::new(8 * 2048, 2048, "t");
        let t0 = start();
        for (account, vms) in [("a", 1), ("b", 1), ("e", 1), ("c", 5)] {
            flood(&mut pool, account, vms);
        }
        // a, b and e hold 2048 each, within their share (16384 / 4 = 4096) for 1024 more.
        let a_waits = pool.begin_wait("a", 1024);
        let b_waits = pool.begin_wait("b", 1024);
        for c in ["a-0-1", "b-0-1", "e-0-1"] {
            pool.release(c, true, t0);
        }
        assert_eq!(
            pool.place(&key("b", "flood"), 1024, "p", t0),
            Placement::Wait,
            "b yields to a, which has waited longer"
        );
        assert_eq!(
            pool.place(&key("e", "flood"), 1024, "p", t0),
            Placement::Wait,
            "a new arrival of e yields to a waiter"
        );
        assert_eq!(
            pool.place(&key("a", "flood"), 1024, "p", t0),
            Placement::Warm {
                container_id: "a-0-1".into(),
                vm_id: pool.vms()[0].vm_id.clone()
            },
            "a yields to no one"
        );
        pool.end_wait(a_waits);
        assert!(matches!(
            pool.place(&key("b", "flood"), 1024, "p", t0),
            Placement::Warm { .. }
        ));
        pool.end_wait(b_waits);
    }

    #[test]
    fn waiters_of_accounts_above_their_share_are_not_waited_for() {
        let mut pool = Pool::new(4 * 2048, 2048, "t");
        let t0 = start();
        flood(&mut pool, "a", 3);
        flood(&mut pool, "b", 1);
        // B holds 2048 of its 4096: a request of 4096 more is above its share.
        let big = pool.begin_wait("b", 4096);
        assert!(!pool.within_share("b", 4096));
        pool.release("a-0-1", true, t0);
        assert_eq!(
            pool.place(&key("a", "flood"), 1024, "p", t0),
            Placement::Warm {
                container_id: "a-0-1".into(),
                vm_id: pool.vms()[0].vm_id.clone()
            },
            "B's waiter could not use it"
        );
        pool.end_wait(big);
    }

    #[test]
    fn a_large_request_within_its_share_evicts_several_idle_vms() {
        let mut pool = Pool::new(4 * 2048, 2048, "t");
        let t0 = start();
        let vms_a = flood(&mut pool, "a", 4);
        for (i, vm) in vms_a.iter().enumerate() {
            for c in 1..=2 {
                pool.release(
                    &format!("a-{i}-{c}"),
                    true,
                    t0 + Duration::from_secs(i as u64),
                );
            }
            assert_eq!(pool.owner(vm), Some("a"));
        }
        let big = key("b", "big");
        assert!(pool.within_share("b", 4096), "0 + 4096 ≤ 8192 / 2");
        assert_eq!(pool.place(&big, 4096, "p", t0), Placement::Wait);
        let evicted = pool.evict_for(&big, 4096, t0).unwrap();
        assert_eq!(
            evicted.vms,
            vms_a[..2].to_vec(),
            "the two least recently used"
        );
        for vm in &evicted.vms {
            pool.vm_stopped(vm, t0);
        }
        assert!(matches!(
            pool.place(&big, 4096, "p", t0),
            Placement::BootVm {
                memory_mb: 4096,
                ..
            }
        ));
        // A, at its share, may do the same only to its own VMs.
        let b_vm = pool
            .vms()
            .into_iter()
            .find(|v| v.account_id.as_deref() == Some("b"))
            .unwrap()
            .vm_id;
        pool.vm_booted(&b_vm, t0);
        pool.container_created("b1", &big, &b_vm, 4096);
        pool.release("b1", true, t0);
        let evicted = pool.evict_for(&key("a", "big"), 4096, t0).unwrap();
        assert_eq!(evicted.vms, vms_a[2..].to_vec());
    }

    #[test]
    fn an_idle_container_wakes_only_the_waiters_it_may_serve() {
        let mut pool = Pool::new(4 * 2048, 2048, "t");
        let t0 = start();
        flood(&mut pool, "a", 3);
        let b = key("b", "g");
        let vm_b = boot(&mut pool, &b, 128);
        pool.container_created("b1", &b, &vm_b, 128);
        pool.release("b1", true, t0);
        assert!(!pool.idle_may_serve_a_waiter("b1"), "no one waits");
        let a_waits = pool.begin_wait("a", 1024);
        pool.release("a-0-1", true, t0);
        assert!(
            pool.idle_may_serve_a_waiter("a-0-1"),
            "A's own waiter may reuse it"
        );
        pool.end_wait(a_waits);
        let c_waits = pool.begin_wait("c", 128);
        assert!(
            !pool.idle_may_serve_a_waiter("a-0-1"),
            "its VM is still busy: of no use to C"
        );
        assert!(
            pool.idle_may_serve_a_waiter("b1"),
            "C may evict B's idle VM"
        );
        pool.end_wait(c_waits);
    }

    /// A VM with a container being created is not idle, though every container made is.
    #[test]
    fn a_container_being_made_keeps_its_vm_from_waking_waiters() {
        let mut pool = Pool::new(4 * 2048, 2048, "t");
        let t0 = start();
        flood(&mut pool, "a", 3);
        let b = key("b", "g");
        let vm_b = boot(&mut pool, &b, 128);
        pool.container_created("b1", &b, &vm_b, 128);
        pool.release("b1", true, t0);
        assert_eq!(
            pool.place(&key("b", "h"), 128, "p", t0),
            Placement::NewContainer { vm_id: vm_b }
        );
        let c_waits = pool.begin_wait("c", 128);
        assert!(!pool.idle_may_serve_a_waiter("b1"));
        pool.end_wait(c_waits);
    }

    #[test]
    fn weights_divide_the_capacity() {
        let mut pool = Pool::new(8 * 2048, 2048, "t").with_fairness(FairConfig {
            weights: [("a".to_owned(), 3)].into(),
            account_memory_mb: None,
        });
        flood(&mut pool, "a", 5);
        let b = key("b", "g");
        let vm_b = boot(&mut pool, &b, 128);
        pool.container_created("b1", &b, &vm_b, 128);
        // 3 : 1 of 16384 MB.
        assert_eq!((pool.share_mb("a"), pool.share_mb("b")), (12_288, 4096));
        assert!(pool.within_share("a", 1024), "10240 + 1024 ≤ 12288");
        assert!(!pool.within_share("a", 4096));
        let views = pool.accounts();
        assert_eq!(
            views
                .iter()
                .map(|v| (v.account_id.as_str(), v.weight, v.held_mb, v.share_mb))
                .collect::<Vec<_>>(),
            vec![("a", 3, 10_240, 12_288), ("b", 1, 2048, 4096)]
        );
        // A third account that wants capacity shrinks both shares.
        let _waits = pool.begin_wait("c", 128);
        assert_eq!(
            (pool.share_mb("a"), pool.share_mb("b"), pool.share_mb("c")),
            (9830, 3276, 3276)
        );
    }

    #[test]
    fn the_ceiling_bounds_what_one_account_holds() {
        let mut pool = Pool::new(8 * 2048, 2048, "t").with_fairness(FairConfig {
            weights: Default::default(),
            account_memory_mb: Some(3072),
        });
        let t0 = start();
        let (_, warm_mb) = pool.begin_warming(None, t0).unwrap();
        let f = key("a", "f");
        assert_eq!(
            pool.place(&f, 1024, "p", t0),
            Placement::BootVm {
                vm_id: "vm-2-t".into(),
                memory_mb: 2048
            },
            "the warming VM is still booting"
        );
        pool.vm_booted("vm-1-t", t0);
        pool.vm_booted("vm-2-t", t0);
        assert_eq!(
            pool.place(&f, 1024, "p", t0),
            Placement::NewContainer {
                vm_id: "vm-2-t".into()
            }
        );
        // 2048 held: a second VM is made 1024 MB to fit the ceiling, not the 2048 MB warming one.
        assert_eq!(warm_mb, 2048);
        assert_eq!(
            pool.place(&f, 1024, "p", t0),
            Placement::BootVm {
                vm_id: "vm-3-t".into(),
                memory_mb: 1024
            }
        );
        assert_eq!(pool.held_mb("a"), 3072);
        assert_eq!(pool.place(&f, 128, "p", t0), Placement::Wait);
        assert!(pool.over_ceiling("a", 128));
        assert_eq!(pool.evict_for(&f, 128, t0), None);
        assert!(!pool.over_ceiling("b", 128));
        assert_eq!(
            pool.place(&key("b", "g"), 128, "p", t0),
            Placement::TakeWarming {
                vm_id: "vm-1-t".into()
            }
        );
        // A function larger than the ceiling never runs.
        assert!(pool.over_ceiling("c", 4096));
        assert_eq!(pool.place(&key("c", "h"), 4096, "p", t0), Placement::Wait);
    }

    /// The host's capacity is a bound VMs may reach, not pass.
    #[test]
    fn warming_vms_may_fill_the_host_exactly() {
        let t0 = start();
        let mut pool = Pool::new(2 * 2048, 2048, "t");
        assert_eq!(pool.begin_warming(None, t0), Some(("vm-1-t".into(), 2048)));
        assert_eq!(pool.begin_warming(None, t0), Some(("vm-2-t".into(), 2048)));
        assert_eq!(pool.reserved_mb(), pool.capacity_mb());
        assert_eq!(pool.begin_warming(None, t0), None);
    }

    #[test]
    fn no_more_than_max_waiting_executions_wait() {
        let mut pool = Pool::new(2048, 2048, "t").with_max_waiting(2);
        let a1 = pool.try_begin_wait("a", 128).unwrap();
        let b1 = pool.try_begin_wait("b", 128).unwrap();
        assert_eq!(pool.waiting(), 2);
        assert_eq!(pool.try_begin_wait("c", 128), None, "the queue is full");
        assert_eq!(pool.waiting(), 2);
        assert!(pool.accounts().iter().all(|a| a.account_id != "c"));
        pool.end_wait(a1);
        let c1 = pool.try_begin_wait("c", 128).expect("a place was freed");
        assert_eq!(pool.waiting(), 2);
        pool.end_wait(b1);
        pool.end_wait(c1);
        assert_eq!(pool.waiting(), 0);
    }

    #[test]
    fn failed_creations_and_dead_containers_free_their_memory() {
        let mut pool = Pool::new(2048, 2048, "t");
        let now = start();
        let f = key("a", "f");
        let vm = boot(&mut pool, &f, 1024);
        pool.container_not_created(&vm, 1024, now);
        assert_eq!(pool.vms()[0].free_memory_mb, 2048);
        assert_eq!(
            pool.place(&f, 2048, "p", start()),
            Placement::NewContainer { vm_id: vm.clone() }
        );
        pool.container_created("c", &f, &vm, 2048);
        pool.release("c", false, now);
        assert_eq!(pool.vms()[0].free_memory_mb, 2048);
        assert!(!pool.remove_container("c", now));
    }
}
