//! Runs invocations. The [`Executor`] carries out the fleet policy of [`ember_fleet`]: it places
//! each execution on a container in a VM of the calling account, takes VMs from the warming
//! pool or boots them, keeps the warming pool replenished, creates containers, reuses warm
//! ones, enforces concurrency limits, runs `Event` invocations from the store's durable queue
//! (see [`events`]), keeps every invocation's log (see [`logs`]) and emits the fleet's metrics.
//!
//! It talks to VMs only through [`ember_vm::VmDriver`] and the agent protocol: nothing here
//! knows how a VM is made. All decisions are [`ember_fleet::Fleet`]'s; this crate does the I/O
//! they call for and reports back what happened.

#![forbid(unsafe_code)]

pub mod activity;
mod batch;
mod egress;
mod events;
mod hostconc;
mod logs;
pub mod provisioned;
pub mod report;
mod sessions;
pub mod sizing;
mod stream;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ember_fleet::{
    Expired, Fleet, FleetConfig, FleetView, FnKey, Placement, PoolKind, WaitTicket, WarmingBoot,
};
use ember_protocol::{
    CodeSource, Connection, CreateContainer, Event, FunctionSpec, Invocation, Invoke,
    InvokeOutcome, InvokeResult, ProtocolError,
};
use ember_store::{ExecutionRecord, Function, NewLog, Store};
use ember_vm::{Vm, VmDriver, VmSpec};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, debug_span, info, warn, Instrument};

use report::Verdict;
pub use stream::ResponseStream;

pub use ember_fleet::sizing::{Mode as SizingMode, SizingConfig};
/// What [`ExecError::Boot`] carries, so callers can name it without depending on `ember_vm`.
pub use ember_vm::VmError;
pub use provisioned::{ProvisionedStatus, ProvisionedView};
pub use sizing::{Overrides as SizingOverrides, SizingReport};

pub use ember_protocol::{Egress, MB_PER_VCPU};

/// Most processes and threads in one container, as in Lambda.
pub const CONTAINER_PIDS_MAX: u32 = 1024;

/// A code upload may take this many times [`ExecutorConfig::agent_grace`]: the agent answers
/// its last chunk once the whole package is verified and extracted.
pub const CODE_UPLOAD_GRACES: u32 = 6;
/// The memory a runtime template is counted at until it measures its own (the ceiling
/// for one; a Python template measures about 20 MB): taken from its VM's containers' memory.
pub const TEMPLATE_MEMORY_MB: u64 = 30;

/// How the executor is set up.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// The region in function ARNs.
    pub region: String,
    /// The fleet's shape and policies: VM size, capacity, keep-alives, the warming pool.
    pub fleet: FleetConfig,
    /// How long an execution waits for capacity before it is throttled.
    pub placement_wait: Duration,
    /// The most executions of one account at once.
    pub account_concurrency: u32,
    /// The unprivileged user and group function code runs as.
    pub sandbox_uid: u32,
    pub sandbox_gid: u32,
    /// The first retry of a failed `Event` invocation waits this long; the second twice as long.
    pub event_retry_base: Duration,
    /// How many times a failed `Event` invocation is retried.
    pub event_retries: u32,
    /// An `Event` invocation that cannot start (throttled) for this long is dropped.
    pub event_max_age: Duration,
    /// Logs kept per function.
    pub logs_per_function: u32,
    /// Server-wide sizing thresholds (functions may override them) and default mode.
    pub sizing: SizingConfig,
    pub sizing_mode: SizingMode,
    /// Containers are frozen whenever no invocation runs in them (`--freeze-idle`).
    pub freeze_idle: bool,
    /// How long the agent may leave an invocation unanswered past its deadline, or a
    /// container's creation unanswered (a code upload: [`CODE_UPLOAD_GRACES`] times as long),
    /// before the host gives up on the VM: a hung agent's VM is removed from service.
    pub agent_grace: Duration,
    /// Each VM keeps a template per Python runtime it runs or is readied for, and forks new
    /// containers' runtimes from it (`--runtime-templates`).
    pub runtime_templates: bool,
    /// Node.js runtimes get templates too (with [`Self::runtime_templates`]):
    /// `--node-runtime-templates`, on by default.
    pub node_runtime_templates: bool,
    /// The egress of functions without their own (`--egress`; see [`Executor::egress_of`]).
    pub egress: ember_protocol::Egress,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            region: "us-east-1".into(),
            fleet: FleetConfig::default(),
            placement_wait: Duration::from_secs(5),
            account_concurrency: 1000,
            sandbox_uid: 993,
            sandbox_gid: 990,
            event_retry_base: Duration::from_secs(60),
            event_retries: 2,
            event_max_age: Duration::from_secs(6 * 3600),
            logs_per_function: 1000,
            sizing: SizingConfig::default(),
            sizing_mode: SizingMode::default(),
            freeze_idle: true,
            agent_grace: Duration::from_secs(10),
            runtime_templates: true,
            node_runtime_templates: true,
            egress: ember_protocol::Egress::Allow,
        }
    }
}

/// A boxed future, for object-safe async traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Makes a Lambda runtime ready to run on this host (provisioning its software once).
pub trait RuntimeProvider: Send + Sync + fmt::Debug {
    /// Ready, or why the runtime cannot run here.
    fn ensure<'a>(&'a self, runtime: &'a str) -> BoxFuture<'a, Result<(), String>>;
}

/// Where the durable Event queue reads the time: when an event was queued, when it is due, how
/// old it is. The wall clock in the server ([`SystemClock`]); a clock a test sets in tests.
pub(crate) trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn epoch_ms(&self) -> i64;
}

/// The wall clock.
#[derive(Debug)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn epoch_ms(&self) -> i64 {
        epoch_ms()
    }
}

/// Errors of an execution that are not the function's own.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("Rate Exceeded.")]
    Throttled { reason: ThrottleReason },
    #[error("{0}")]
    RuntimeUnavailable(String),
    #[error("function {0} has no runtime; only Zip functions with a runtime can run")]
    NoRuntime(String),
    #[error("cannot read the function's code")]
    Code(#[source] ember_store::StoreError),
    #[error("cannot start a VM")]
    Boot(#[source] ember_vm::VmError),
    /// The VM failed: its agent's connection broke, or the agent did not answer in time. The
    /// VM has been taken out of service.
    #[error("the VM running this invocation failed: {0}")]
    Vm(String),
    /// The VM's agent answered, refusing the request (it could not store the code, create the
    /// container, or find the container to invoke). The request failed; the VM, whose agent
    /// still answers, stays in service.
    #[error("the VM's agent refused the request: {0}")]
    AgentRefused(String),
    #[error("the executor is shutting down")]
    ShuttingDown,
    /// The shared store, where concurrency is counted across servers, did not answer.
    #[error("cannot count the function's concurrency in the shared store")]
    Concurrency(#[source] ember_store::StoreError),
}

/// Why an execution was throttled, as Lambda's `Reason` field says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleReason {
    /// The function's reserved concurrency is all in use.
    ReservedFunctionConcurrentInvocationLimitExceeded,
    /// The account's concurrency is all in use.
    ConcurrentInvocationLimitExceeded,
    /// The host has no room for another execution environment.
    CapacityExhausted,
    /// The account holds the most memory one account may (`--account-memory-mb`).
    AccountMemoryLimitExceeded,
}

impl ThrottleReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReservedFunctionConcurrentInvocationLimitExceeded => {
                "ReservedFunctionConcurrentInvocationLimitExceeded"
            }
            Self::ConcurrentInvocationLimitExceeded => "ConcurrentInvocationLimitExceeded",
            Self::CapacityExhausted => "ServiceCapacityExhausted",
            Self::AccountMemoryLimitExceeded => "AccountMemoryLimitExceeded",
        }
    }

    /// The error's message.
    pub fn message(self) -> &'static str {
        match self {
            Self::AccountMemoryLimitExceeded => {
                "Rate exceeded: the account's execution environments hold all the memory one \
                 account may have on this server (--account-memory-mb); retry when some are \
                 free"
            }
            _ => "Rate exceeded",
        }
    }
}

/// One execution to run.
#[derive(Debug, Clone)]
pub struct InvokeRequest {
    /// The version to run (`function.version`).
    pub function: Function,
    /// The qualifier the caller named (a version number, an alias, `$LATEST`), which the
    /// invoked function ARN the runtime sees carries; `None` for an unqualified name.
    pub qualifier: Option<String>,
    pub request_id: String,
    pub payload: Bytes,
    pub client_context: Option<serde_json::Value>,
    pub cognito_identity: Option<serde_json::Value>,
}

/// How the execution found its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartKind {
    /// A warm container.
    Warm,
    /// A new container in a running VM.
    ColdContainer,
    /// A new container in a newly booted VM.
    ColdVm,
}

impl StartKind {
    /// `warm`, `cold_container` or `cold_vm`: the `X-Ember-Start` header and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warm => "warm",
            Self::ColdContainer => "cold_container",
            Self::ColdVm => "cold_vm",
        }
    }
}

/// What an execution produced.
#[derive(Debug, Clone)]
pub struct InvokeResponse {
    pub verdict: Verdict,
    /// The function's response, or the error document.
    pub payload: Bytes,
    /// The whole log, START to REPORT.
    pub log: String,
    pub executed_version: String,
    pub start: StartKind,
    /// What the agent measured.
    pub result: InvokeResult,
}

/// What an execution leaves to be stored: its log (START to REPORT) and its measurements.
#[derive(Debug)]
struct RunRecords {
    log: NewLog,
    execution: ExecutionRecord,
}

/// Runs invocations. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ExecutorConfig,
    driver: Arc<dyn VmDriver>,
    store: Store,
    runtimes: Arc<dyn RuntimeProvider>,
    fleet: Mutex<Fleet>,
    sizer: sizing::Sizer,
    vms: Mutex<HashMap<String, Arc<VmHandle>>>,
    /// Signalled whenever memory is freed or a VM comes or goes.
    freed: Notify,
    /// VM boots in flight; shutdown waits for them.
    booting: AtomicUsize,
    concurrency: Mutex<Concurrency>,
    /// The slots leased in a shared (PostgreSQL) store, where concurrency is counted across
    /// servers; `None` on the embedded store, where `concurrency` is the whole count.
    host_slots: Option<Arc<hostconc::HostSlots>>,
    logs: batch::Batcher<NewLog>,
    /// Signalled when an event is queued.
    events_queued: Notify,
    /// The Event queue's time.
    clock: Arc<dyn Clock>,
    shutting_down: std::sync::atomic::AtomicBool,
    /// Provisioned concurrency's function versions, by target.
    provisioned: provisioned::Targets,
    /// Invocations and errors per function over the last hour, for the web console.
    activity: activity::Activity,
}

impl Inner {
    /// Destroys containers and stops the VMs the fleet let go (they are retiring), in the
    /// background; each stopped VM's memory returns to the fleet.
    fn destroy(self: &Arc<Self>, gone: Expired) {
        for (vm_id, container_id) in gone.containers {
            self.environment_ended(&container_id);
            let vm = lock(&self.vms).get(&vm_id).cloned();
            if let Some(vm) = vm {
                tokio::spawn(async move {
                    let _ = vm.connection().destroy_container(&container_id).await;
                });
            }
        }
        for vm_id in gone.vms {
            self.vm_ended(&vm_id);
            let vm = lock(&self.vms).remove(&vm_id);
            let inner = Arc::downgrade(self);
            tokio::spawn(async move {
                if let Some(vm) = vm {
                    debug!(vm_id, "stopping a VM");
                    stop_vm(vm).await;
                }
                if let Some(inner) = inner.upgrade() {
                    lock(&inner.fleet).pool().vm_stopped(&vm_id, Instant::now());
                    inner.freed.notify_waiters();
                    inner.replenish();
                }
            });
        }
    }

    /// Takes a VM out of service at once (it failed, or its agent went away) and stops it.
    fn retire_vm(self: &Arc<Self>, vm_id: &str) {
        lock(&self.fleet).pool().retire(vm_id, Instant::now());
        self.freed.notify_waiters();
        self.destroy(Expired {
            containers: Vec::new(),
            vms: vec![vm_id.to_owned()],
        });
    }

    /// Boots the VMs the warming pool is owed, in the background.
    fn replenish(self: &Arc<Self>) {
        if self.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        let boots = lock(&self.fleet).warming_boots(Instant::now());
        for boot in boots {
            tokio::spawn(boot_warming(Arc::downgrade(self), boot));
        }
    }

    /// Boots a VM registered as booting in the fleet, and starts watching its events.
    async fn boot(
        self: &Arc<Self>,
        vm_id: &str,
        memory_mb: u64,
    ) -> Result<Arc<VmHandle>, ExecError> {
        let spec = VmSpec {
            id: vm_id.to_owned(),
            memory_mb,
            vcpus: self.config.fleet.vm_vcpus,
            pids_max: u64::from(CONTAINER_PIDS_MAX) * 16 + 64,
        };
        let started = Instant::now();
        self.booting.fetch_add(1, Ordering::SeqCst);
        let booted = self.driver.boot(spec).await;
        let mut vm = match booted {
            Ok(vm) => vm,
            Err(err) => {
                self.booting.fetch_sub(1, Ordering::SeqCst);
                lock(&self.fleet).pool().remove_vm(vm_id, Instant::now());
                self.freed.notify_waiters();
                return Err(ExecError::Boot(err));
            }
        };
        let took = started.elapsed();
        metrics::histogram!("ember_vm_boot_seconds").record(took.as_secs_f64());
        info!(
            vm_id,
            memory_mb,
            boot_ms = took.as_secs_f64() * 1e3,
            "VM booted"
        );
        let events = vm.take_events();
        let handle = Arc::new(VmHandle {
            id: vm_id.to_owned(),
            vm,
            code: tokio::sync::Mutex::new(HashSet::new()),
            templates: Mutex::new(HashSet::new()),
            snap_templates: Mutex::new(HashMap::new()),
        });
        {
            // Checked under the lock shutdown drains: a VM is either drained and stopped by
            // shutdown, or sees the shutdown here and stops itself.
            let mut vms = lock(&self.vms);
            if self.shutting_down.load(Ordering::SeqCst) {
                drop(vms);
                stop_vm(handle).await;
                self.booting.fetch_sub(1, Ordering::SeqCst);
                return Err(ExecError::ShuttingDown);
            }
            vms.insert(vm_id.to_owned(), handle.clone());
        }
        self.booting.fetch_sub(1, Ordering::SeqCst);
        lock(&self.fleet).vm_booted(vm_id, took, Instant::now());
        self.freed.notify_waiters();
        tokio::spawn(watch_vm(Arc::downgrade(self), vm_id.to_owned(), events));
        Ok(handle)
    }

    /// Has `vm` keep a runtime template of `runtime` (a Python or Node.js runtime) unless it was asked for
    /// one already or templates are off, in the background: [`TEMPLATE_MEMORY_MB`] of the VM
    /// is taken from its containers' memory first (nothing is asked when its containers leave
    /// less), then set to what the template measures. A template that cannot start gives it
    /// back; the VM's containers of that runtime start the ordinary way.
    fn prepare_template(self: &Arc<Self>, vm: &Arc<VmHandle>, runtime: &str) {
        let has_templates = runtime.starts_with("python3.")
            || (self.config.node_runtime_templates && runtime.starts_with("nodejs"));
        if !self.config.runtime_templates || !has_templates {
            return;
        }
        if !lock(&vm.templates).insert(runtime.to_owned()) {
            return;
        }
        if !lock(&self.fleet)
            .pool()
            .reserve_overhead(&vm.id, TEMPLATE_MEMORY_MB)
        {
            debug!(vm_id = %vm.id, runtime, "no memory left for a runtime template");
            lock(&vm.templates).remove(runtime);
            return;
        }
        let inner = Arc::downgrade(self);
        let vm = vm.clone();
        let runtime = runtime.to_owned();
        tokio::spawn(async move {
            let grace = Duration::from_secs(60);
            let prepared =
                tokio::time::timeout(grace, vm.connection().prepare_template(&runtime)).await;
            let Some(inner) = inner.upgrade() else { return };
            let mut fleet = lock(&inner.fleet);
            let pool = fleet.pool();
            match prepared {
                Ok(Ok(rss_mb)) => {
                    // What it measures replaces the estimate, when the VM has room for it.
                    pool.release_overhead(&vm.id, TEMPLATE_MEMORY_MB);
                    if !pool.reserve_overhead(&vm.id, rss_mb) {
                        warn!(vm_id = %vm.id, runtime, rss_mb, "a runtime template outgrew its estimate; counted at the estimate");
                        pool.reserve_overhead(&vm.id, TEMPLATE_MEMORY_MB.min(rss_mb));
                    }
                    metrics::gauge!("ember_runtime_template_rss_mb", "runtime" => runtime.clone())
                        .set(rss_mb as f64);
                    info!(vm_id = %vm.id, runtime, rss_mb, "runtime template ready");
                }
                failed => {
                    pool.release_overhead(&vm.id, TEMPLATE_MEMORY_MB);
                    let reason = match failed {
                        Ok(Err(err)) => ember_stdx::error_chain(&err),
                        _ => format!("no answer within {grace:?}"),
                    };
                    info!(vm_id = %vm.id, runtime, %reason, "no runtime template; containers start the ordinary way");
                }
            }
            drop(fleet);
            inner.freed.notify_waiters();
        });
    }

    /// Publishes the fleet's gauges.
    fn publish_gauges(&self) {
        let view = lock(&self.fleet).view(Instant::now());
        let mut counts = [0usize; 3];
        for vm in &view.vms {
            counts[match vm.pool {
                PoolKind::Warming => 0,
                PoolKind::Active => 1,
                PoolKind::Retiring => 2,
            }] += 1;
        }
        for (pool, n) in ["warming", "active", "retiring"].into_iter().zip(counts) {
            metrics::gauge!("ember_pool_vms", "pool" => pool).set(n as f64);
        }
        metrics::gauge!("ember_replenish_count").set(f64::from(view.replenish_count));
        metrics::gauge!("ember_request_rate").set(view.request_rate);
        metrics::gauge!("ember_idle_vm_seconds_total").set(view.idle_vm_seconds);
    }
}

/// Readies a VM for the warming pool: the runtime's software is provisioned on the host (the VM
/// sees it through its read-only binds), then the VM boots and waits for an account.
async fn boot_warming(inner: std::sync::Weak<Inner>, boot: WarmingBoot) {
    let Some(inner) = inner.upgrade() else { return };
    if let Some(runtime) = &boot.runtime {
        if let Err(reason) = inner.runtimes.ensure(runtime).await {
            debug!(runtime, %reason, "runtime not ready; warming a VM without it");
        }
    }
    match inner.boot(&boot.vm_id, boot.memory_mb).await {
        Ok(vm) => {
            debug!(vm_id = %boot.vm_id, runtime = ?boot.runtime, "VM joined the warming pool");
            if let Some(runtime) = &boot.runtime {
                inner.prepare_template(&vm, runtime);
            }
        }
        Err(err) => {
            warn!(vm_id = %boot.vm_id, error = %err, "cannot boot a VM for the warming pool")
        }
    }
}

/// A running VM, shared by the executions placed on it.
#[derive(Debug)]
struct VmHandle {
    id: String,
    vm: Vm,
    /// Code packages the agent holds, by sha256.
    code: tokio::sync::Mutex<HashSet<String>>,
    /// Runtimes whose template the agent was asked for (and whose memory the pool counts).
    templates: Mutex<HashSet<String>>,
    /// Function versions (`arn:version`) whose SnapStart template the agent was asked for by a
    /// container's creation, with the memory the pool counts for it (the function's), until
    /// the agent says the template is gone (`Executor::version_deleted`) or the VM ends.
    snap_templates: Mutex<HashMap<String, u64>>,
}

impl VmHandle {
    fn connection(&self) -> &Connection {
        self.vm.connection()
    }
}

#[derive(Debug, Default)]
struct Concurrency {
    functions: HashMap<(String, String), u32>,
    accounts: HashMap<String, u32>,
}

/// Holds one unit of concurrency until dropped.
struct Permit<'a> {
    inner: &'a Inner,
    account_id: String,
    function_name: String,
    /// The slot leased across servers, on a shared store.
    shared: Option<hostconc::Slot>,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut c = lock(&self.inner.concurrency);
        let key = (self.account_id.clone(), self.function_name.clone());
        if let Some(n) = c.functions.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                c.functions.remove(&key);
            }
        }
        if let Some(n) = c.accounts.get_mut(&self.account_id) {
            *n -= 1;
            if *n == 0 {
                c.accounts.remove(&self.account_id);
            }
        }
    }
}

/// A container an execution holds.
struct Lease {
    vm: Arc<VmHandle>,
    container_id: String,
    start: StartKind,
}

impl Executor {
    /// Starts an executor: its log writer, its event worker and its reaper of idle containers.
    /// Claims on queued events left by a previous server are released first.
    pub async fn start(
        config: ExecutorConfig,
        driver: Arc<dyn VmDriver>,
        store: Store,
        runtimes: Arc<dyn RuntimeProvider>,
    ) -> Result<Self, ember_store::StoreError> {
        Self::start_with_clock(config, driver, store, runtimes, Arc::new(SystemClock)).await
    }

    /// [`Executor::start`], with the Event queue on `clock`.
    pub(crate) async fn start_with_clock(
        config: ExecutorConfig,
        driver: Arc<dyn VmDriver>,
        store: Store,
        runtimes: Arc<dyn RuntimeProvider>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ember_store::StoreError> {
        let released = store.release_event_claims().await?;
        if released > 0 {
            info!(
                released,
                "re-queued Event invocations a previous server had started"
            );
        }
        // Environments do not survive a restart, nor do their credentials.
        let revoked = store.revoke_all_sessions().await?;
        if revoked > 0 {
            info!(
                revoked,
                "revoked the session credentials a previous server left"
            );
        }
        let host_slots = match store.url() {
            ember_store::StoreUrl::Postgres(_) => {
                Some(hostconc::HostSlots::start(store.clone()).await?)
            }
            ember_store::StoreUrl::Sqlite(_) => None,
        };
        let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let logs = logs::start(store.clone(), config.logs_per_function);
        let inner = Arc::new(Inner {
            fleet: Mutex::new(Fleet::new(config.fleet.clone(), &tag)),
            sizer: sizing::Sizer::start(store.clone(), config.sizing.clone(), config.sizing_mode),
            booting: AtomicUsize::new(0),
            config,
            driver,
            store: store.clone(),
            runtimes,
            vms: Mutex::new(HashMap::new()),
            freed: Notify::new(),
            concurrency: Mutex::new(Concurrency::default()),
            host_slots,
            logs,
            events_queued: Notify::new(),
            clock,
            shutting_down: false.into(),
            provisioned: provisioned::Targets::default(),
            activity: activity::Activity::default(),
        });
        let executor = Self { inner };
        tokio::spawn(events::run_worker(executor.clone()));
        tokio::spawn(reap(Arc::downgrade(&executor.inner)));
        executor.inner.replenish();
        Ok(executor)
    }

    pub fn config(&self) -> &ExecutorConfig {
        &self.inner.config
    }

    /// The ARN of a function.
    pub fn function_arn(&self, function: &Function) -> String {
        format!(
            "arn:aws:lambda:{}:{}:function:{}",
            self.inner.config.region, function.account_id, function.name
        )
    }

    /// Runs one execution synchronously. Its log and execution record reach the store in the
    /// next batches, off the invocation's path (within 50 ms and 250 ms).
    pub async fn invoke(&self, request: InvokeRequest) -> Result<InvokeResponse, ExecError> {
        let (response, records) = self.run(request).await?;
        self.inner.logs.send(records.log);
        self.inner.sizer.record(records.execution);
        Ok(response)
    }

    /// Runs one execution and hands back what it leaves to be stored, for the caller to store:
    /// the event worker stores it with the event's settlement, in one transaction.
    async fn run(&self, request: InvokeRequest) -> Result<(InvokeResponse, RunRecords), ExecError> {
        // Debug, not info: an info span is formatted for the log on every invocation, the
        // warm path's largest tracing cost. What this path logs names the function itself.
        let span = debug_span!(
            "invoke",
            function = %request.function.name,
            request_id = %request.request_id
        );
        self.invoke_inner(request).instrument(span).await
    }

    /// Queues an `Event` invocation of `function`'s version (invoked as that version) durably
    /// and returns at once; it runs in the background.
    pub async fn enqueue(
        &self,
        function: &Function,
        request_id: &str,
        payload: &[u8],
    ) -> Result<(), ember_store::StoreError> {
        self.enqueue_qualified(function, &function.version, request_id, payload)
            .await
    }

    /// [`Executor::enqueue`] of `function`'s version as invoked with `qualifier` (`$LATEST`, a
    /// version or an alias that chose it): the event invoke config of that qualifier applies to
    /// it, and the runtime sees the ARN qualified by it.
    pub async fn enqueue_qualified(
        &self,
        function: &Function,
        qualifier: &str,
        request_id: &str,
        payload: &[u8],
    ) -> Result<(), ember_store::StoreError> {
        self.inner
            .store
            .enqueue(&ember_store::NewEvent {
                event_id: request_id,
                account_id: &function.account_id,
                function_name: &function.name,
                qualifier,
                function_version: Some(&function.version),
                payload,
                chain_depth: 0,
                now_ms: self.inner.clock.epoch_ms(),
            })
            .await?;
        self.inner.events_queued.notify_one();
        Ok(())
    }

    /// A function's `$LATEST` changed (`current` is its new revision) or the function was
    /// deleted (`None`): destroys the idle containers of `$LATEST`'s older revisions (of every
    /// version, when deleted), which nothing will reuse, freeing their memory now.
    pub fn function_changed(&self, account_id: &str, function_name: &str, current: Option<&str>) {
        if current.is_none() {
            // Its environments still running end with their invocations; none may act for it.
            self.inner
                .store
                .revoke_session_function(account_id, function_name, None);
        }
        let version = current.map(|_| ember_store::LATEST);
        self.retire_idle(account_id, function_name, version, current);
        if current.is_none() {
            self.drop_snap_templates(account_id, function_name, None);
        }
    }

    /// A published version was deleted: destroys its idle containers, and its SnapStart
    /// templates.
    pub fn version_deleted(&self, account_id: &str, function_name: &str, version: &str) {
        self.inner
            .store
            .revoke_session_function(account_id, function_name, Some(version));
        self.retire_idle(account_id, function_name, Some(version), None);
        self.drop_snap_templates(account_id, function_name, Some(version));
    }

    /// Has every VM holding a SnapStart template of the function's `version` (every version
    /// when `None`) drop it, in the background; its memory is given back to the VM's
    /// containers once the agent says it is gone (a template whose environments still run goes
    /// with the last of them, and stays counted until the VM ends).
    fn drop_snap_templates(&self, account_id: &str, function_name: &str, version: Option<&str>) {
        let arn = format!(
            "arn:aws:lambda:{}:{account_id}:function:{function_name}",
            self.inner.config.region
        );
        let vms: Vec<Arc<VmHandle>> = lock(&self.inner.vms).values().cloned().collect();
        for vm in vms {
            let keys: Vec<String> = lock(&vm.snap_templates)
                .keys()
                .filter(|key| match version {
                    Some(version) => **key == format!("{arn}:{version}"),
                    None => key.starts_with(&format!("{arn}:")),
                })
                .cloned()
                .collect();
            if keys.is_empty() {
                continue;
            }
            let inner = Arc::downgrade(&self.inner);
            let (arn, version) = (arn.clone(), version.map(str::to_owned));
            tokio::spawn(async move {
                let grace = Duration::from_secs(30);
                let dropped = tokio::time::timeout(
                    grace,
                    vm.connection()
                        .drop_snap_templates(&arn, version.as_deref()),
                )
                .await;
                let Some(inner) = inner.upgrade() else { return };
                match dropped {
                    Ok(Ok((_, 0))) => {
                        let mut templates = lock(&vm.snap_templates);
                        let memory_mb: u64 = keys.iter().filter_map(|k| templates.remove(k)).sum();
                        drop(templates);
                        lock(&inner.fleet)
                            .pool()
                            .release_overhead(&vm.id, memory_mb);
                        inner.freed.notify_waiters();
                        debug!(vm_id = %vm.id, %arn, memory_mb, "SnapStart templates dropped");
                    }
                    Ok(Ok((_, pending))) => {
                        debug!(vm_id = %vm.id, %arn, pending, "SnapStart templates go with their environments")
                    }
                    Ok(Err(err)) => {
                        warn!(vm_id = %vm.id, %arn, error = %ember_stdx::error_chain(&err), "cannot drop SnapStart templates")
                    }
                    Err(_) => {
                        warn!(vm_id = %vm.id, %arn, "the agent did not drop SnapStart templates within {grace:?}")
                    }
                }
            });
        }
    }

    fn retire_idle(
        &self,
        account_id: &str,
        function_name: &str,
        version: Option<&str>,
        current: Option<&str>,
    ) {
        match (version, current) {
            (Some(ember_store::LATEST), Some(current)) => {
                self.inner.sizer.revised(account_id, function_name, current);
            }
            _ => self.inner.sizer.forget(account_id, function_name),
        }
        if version.is_none() && current.is_none() {
            self.unprovision_function(account_id, function_name);
        }
        let stale = lock(&self.inner.fleet).pool().take_stale_idle(
            account_id,
            function_name,
            version,
            current,
            Instant::now(),
        );
        if stale.is_empty() {
            return;
        }
        self.inner.freed.notify_waiters();
        self.inner.destroy(Expired {
            containers: stale,
            vms: Vec::new(),
        });
    }

    /// The sizing of a function's current version: amounts, mode, evidence and history.
    pub async fn sizing(
        &self,
        function: &Function,
    ) -> Result<SizingReport, ember_store::StoreError> {
        self.inner.sizer.report(function).await
    }

    /// Sets a function's sizing mode and threshold overrides (`None` keeps what is set).
    pub async fn set_sizing(
        &self,
        function: &Function,
        mode: Option<SizingMode>,
        overrides: Option<SizingOverrides>,
    ) -> Result<(), ember_store::StoreError> {
        self.inner
            .sizer
            .set(function, mode, overrides, epoch_ms())
            .await
    }

    /// The account's functions' invocations and errors over the last hour on this server, for
    /// the web console.
    pub fn activity(&self, account_id: &str) -> Vec<activity::FunctionActivity> {
        self.inner.activity.of_account(account_id, epoch_ms())
    }

    /// This server's executions by how they found their container, since it started.
    pub fn start_counts(&self) -> activity::StartCounts {
        self.inner.activity.starts()
    }

    /// The fleet as it is now: both pools, the request rate and the replenishment policy.
    pub fn fleet(&self) -> FleetView {
        lock(&self.inner.fleet).view(Instant::now())
    }

    /// Stops every VM (their agents destroy their containers first) and refuses new executions.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner.events_queued.notify_waiters();
        let vms: Vec<Arc<VmHandle>> = lock(&self.inner.vms).drain().map(|(_, vm)| vm).collect();
        let mut stops = tokio::task::JoinSet::new();
        for vm in vms {
            lock(&self.inner.fleet)
                .pool()
                .remove_vm(&vm.id, Instant::now());
            stops.spawn(stop_vm(vm));
        }
        while stops.join_next().await.is_some() {}
        if let Some(slots) = &self.inner.host_slots {
            slots.release_all().await;
        }
        if let Err(err) = self.inner.store.revoke_all_sessions().await {
            warn!(error = %err, "cannot empty the session credentials' table; the next start will");
        }
        // What the stopped invocations logged and measured is still queued: write it while the
        // store is open.
        self.inner.logs.flush().await;
        self.inner.sizer.flush().await;
        // Boots in flight stop their VMs themselves when they see the shutdown.
        let deadline = Instant::now() + ember_vm::SHUTDOWN_GRACE * 5;
        while self.inner.booting.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn invoke_inner(
        &self,
        request: InvokeRequest,
    ) -> Result<(InvokeResponse, RunRecords), ExecError> {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(ExecError::ShuttingDown);
        }
        let function = &request.function;
        let _permit = self.admit(function).await?;
        let sizing = Instant::now();
        let container_mb = self.inner.sizer.effective_mb(function).await;
        let sizer_ms = sizing.elapsed().as_secs_f64() * 1e3;
        let key = FnKey {
            account_id: function.account_id.clone(),
            function_name: function.name.clone(),
            version: function.version.clone(),
            revision_id: function.revision_id.clone(),
            memory_mb: container_mb,
            egress_denied: self.egress_of(function) == ember_protocol::Egress::Deny,
        };
        let memory_mb = u64::from(container_mb);
        let acquiring = Instant::now();
        let lease = self.acquire(&key, function, memory_mb).await?;
        if lease.start != StartKind::Warm {
            // The host's share of a cold start, readable next to the agent's own timings.
            debug!(
                vm_id = %lease.vm.id,
                container_id = %lease.container_id,
                sizer_ms,
                acquire_ms = acquiring.elapsed().as_secs_f64() * 1e3,
                "new container acquired"
            );
        }
        let started_at_ms = epoch_ms();
        let (invoke, guard) = self.invocation(&request, &lease, started_at_ms);
        let outcome = match tokio::time::timeout(guard, lease.vm.connection().invoke(invoke)).await
        {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(err)) => Err(agent_error(&err)),
            Err(_) => Err(self.silent_agent()),
        };
        let result = match outcome {
            Ok(result) => result,
            Err(err) => return Err(self.invoke_failed(&lease, &request, err)),
        };
        Ok(self.conclude(&lease, &request, started_at_ms, result))
    }

    /// The agent's request for an execution on `lease`'s container, and how long the host waits
    /// for its answer (the timeout, a new container's init, the grace).
    fn invocation(
        &self,
        request: &InvokeRequest,
        lease: &Lease,
        started_at_ms: i64,
    ) -> (Invoke, Duration) {
        let function = &request.function;
        let timeout_s = u64::from(function.spec.timeout_s);
        let invoke = Invoke {
            container_id: lease.container_id.clone(),
            invocation: Invocation {
                request_id: request.request_id.clone(),
                payload: request.payload.clone(),
                deadline_ms: started_at_ms as u64 + timeout_s * 1000,
                invoked_function_arn: match &request.qualifier {
                    Some(q) => format!("{}:{q}", self.function_arn(function)),
                    None => self.function_arn(function),
                },
                trace_id: Some(trace_id()),
                client_context: request.client_context.clone(),
                cognito_identity: request.cognito_identity.clone(),
            },
        };
        let grace = self.inner.config.agent_grace;
        // A new container's init may take up to INIT_TIMEOUT outside the function's timeout.
        let init = match lease.start {
            StartKind::Warm => Duration::ZERO,
            StartKind::ColdContainer | StartKind::ColdVm => ember_protocol::INIT_TIMEOUT,
        };
        (invoke, Duration::from_secs(timeout_s) + init + grace)
    }

    /// The error of an agent that did not answer an invocation in time.
    fn silent_agent(&self) -> ExecError {
        let grace = self.inner.config.agent_grace;
        ExecError::Vm(format!(
            "the VM's agent did not answer within {grace:?} of the deadline"
        ))
    }

    /// Deals with an invocation the agent refused (its container is dropped) or its VM failed
    /// (the VM is retired); returns the error.
    fn invoke_failed(&self, lease: &Lease, request: &InvokeRequest, err: ExecError) -> ExecError {
        let function = &request.function;
        if let ExecError::AgentRefused(_) = err {
            // The agent does not run this container (it ended meanwhile): the fleet forgets
            // it, and the agent is asked to destroy it in case it still holds it.
            warn!(
                vm_id = %lease.vm.id,
                function = %function.name,
                request_id = %request.request_id,
                error = %err,
                "the agent refused an invocation; dropping its container"
            );
            lock(&self.inner.fleet)
                .pool()
                .release(&lease.container_id, false, Instant::now());
            self.inner.freed.notify_waiters();
            self.inner.destroy(Expired {
                containers: vec![(lease.vm.id.clone(), lease.container_id.clone())],
                vms: Vec::new(),
            });
        } else {
            warn!(
                vm_id = %lease.vm.id,
                function = %function.name,
                request_id = %request.request_id,
                error = %err,
                "VM failed during an invocation; replacing it"
            );
            self.inner.retire_vm(&lease.vm.id);
        }
        err
    }

    /// Ends an execution the agent answered: the container goes back to the pool (or not), the
    /// sizer observes it, and its log (START to REPORT) and records are made.
    fn conclude(
        &self,
        lease: &Lease,
        request: &InvokeRequest,
        started_at_ms: i64,
        result: InvokeResult,
    ) -> (InvokeResponse, RunRecords) {
        let function = &request.function;
        let timeout_s = u64::from(function.spec.timeout_s);
        let reusable = matches!(
            result.outcome,
            InvokeOutcome::Ok { .. } | InvokeOutcome::FunctionError { .. }
        );
        let wake = {
            let mut fleet = lock(&self.inner.fleet);
            let pool = fleet.pool();
            pool.release(&lease.container_id, reusable, Instant::now());
            if !reusable {
                // The agent destroyed it before answering.
                self.inner.environment_ended(&lease.container_id);
            }
            // Memory was freed, or an idle container may serve a waiter (reused or evicted).
            !reusable || pool.idle_may_serve_a_waiter(&lease.container_id)
        };
        if wake {
            self.inner.freed.notify_waiters();
        }

        self.inner.activity.record(
            &function.account_id,
            &function.name,
            lease.start,
            !matches!(result.outcome, InvokeOutcome::Ok { .. }),
            started_at_ms,
        );
        let execution = self.inner.sizer.observe(
            function,
            sample_of(&result),
            result.init_duration_ms,
            started_at_ms,
        );
        let (verdict, payload) = report::verdict(&result, timeout_s);
        let log = report::log_text(
            &result,
            &function.version,
            timeout_s,
            &verdict,
            &rfc3339(started_at_ms),
        );
        let records = RunRecords {
            log: NewLog {
                account_id: function.account_id.clone(),
                function_name: function.name.clone(),
                request_id: request.request_id.clone(),
                started_at_ms,
                log: log.clone(),
            },
            execution,
        };
        debug!(start = ?lease.start, duration_ms = result.duration_ms, "invocation done");
        let response = InvokeResponse {
            verdict,
            payload,
            log,
            executed_version: function.version.clone(),
            start: lease.start,
            result,
        };
        (response, records)
    }

    /// Takes a unit of the function's and the account's concurrency, or throttles: counted on
    /// this server, and on a shared store across servers too (`hostconc`).
    async fn admit(&self, function: &Function) -> Result<Permit<'_>, ExecError> {
        let mut permit = self.admit_here(function)?;
        if let Some(slots) = &self.inner.host_slots {
            let (scope, limit, reason) = match function.reserved_concurrency {
                Some(reserved) => (
                    Some(function.name.clone()),
                    reserved,
                    ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded,
                ),
                None => (
                    None,
                    self.inner.config.account_concurrency,
                    ThrottleReason::ConcurrentInvocationLimitExceeded,
                ),
            };
            let scope = ember_store::LeaseScope {
                account_id: function.account_id.clone(),
                function_name: scope,
            };
            match slots.acquire(&scope, limit).await {
                Ok(Some(slot)) => permit.shared = Some(slot),
                Ok(None) => return Err(ExecError::Throttled { reason }),
                Err(err) => return Err(ExecError::Concurrency(err)),
            }
        }
        Ok(permit)
    }

    /// [`Executor::admit`]'s count on this server.
    fn admit_here(&self, function: &Function) -> Result<Permit<'_>, ExecError> {
        let mut c = lock(&self.inner.concurrency);
        let key = (function.account_id.clone(), function.name.clone());
        let running = c.functions.get(&key).copied().unwrap_or(0);
        if let Some(reserved) = function.reserved_concurrency {
            if running >= reserved {
                return Err(ExecError::Throttled {
                    reason: ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded,
                });
            }
        }
        let account = c.accounts.get(&function.account_id).copied().unwrap_or(0);
        if function.reserved_concurrency.is_none()
            && account >= self.inner.config.account_concurrency
        {
            return Err(ExecError::Throttled {
                reason: ThrottleReason::ConcurrentInvocationLimitExceeded,
            });
        }
        *c.functions.entry(key).or_default() += 1;
        *c.accounts.entry(function.account_id.clone()).or_default() += 1;
        Ok(Permit {
            inner: &self.inner,
            account_id: function.account_id.clone(),
            function_name: function.name.clone(),
            shared: None,
        })
    }

    /// Finds or makes a container for an execution of `key`, counting the request in the
    /// fleet's rate.
    async fn acquire(
        &self,
        key: &FnKey,
        function: &Function,
        memory_mb: u64,
    ) -> Result<Lease, ExecError> {
        let runtime = function.spec.runtime.as_deref().unwrap_or_default();
        lock(&self.inner.fleet).request(runtime, Instant::now());
        let deadline = tokio::time::Instant::now() + self.inner.config.placement_wait;
        let mut waiting: Option<WaitingSlot<'_>> = None;
        loop {
            // Register interest before deciding, so a release between the decision and the
            // wait is not missed.
            let freed = self.inner.freed.notified();
            let placement = lock(&self.inner.fleet).place(key, memory_mb, runtime, Instant::now());
            if placement != Placement::Wait {
                // Placed: others need not yield to this execution any longer.
                drop(waiting.take());
            }
            let lease = match placement {
                Placement::Warm {
                    container_id,
                    vm_id,
                } => {
                    if let Some(vm) = self.vm(&vm_id) {
                        Ok(Lease {
                            vm,
                            container_id,
                            start: StartKind::Warm,
                        })
                    } else {
                        // The VM went away under us; forget the container and decide again.
                        lock(&self.inner.fleet)
                            .pool()
                            .remove_container(&container_id, Instant::now());
                        continue;
                    }
                }
                Placement::NewContainer { vm_id } | Placement::TakeWarming { vm_id } => {
                    self.inner.replenish();
                    let Some(vm) = self.vm(&vm_id) else {
                        lock(&self.inner.fleet)
                            .pool()
                            .remove_vm(&vm_id, Instant::now());
                        continue;
                    };
                    // The cold paths' futures are large; boxed, they leave the warm path's small,
                    // and cheap to move as it is polled through the layers above.
                    Box::pin(self.new_container(
                        vm,
                        key,
                        function,
                        memory_mb,
                        StartKind::ColdContainer,
                    ))
                    .await
                }
                Placement::BootVm {
                    vm_id,
                    memory_mb: vm_mb,
                } => {
                    Box::pin(async {
                        let vm = self.inner.boot(&vm_id, vm_mb).await?;
                        self.new_container(vm, key, function, memory_mb, StartKind::ColdVm)
                            .await
                    })
                    .await
                }
                Placement::Wait => {
                    let evicted =
                        lock(&self.inner.fleet)
                            .pool()
                            .evict_for(key, memory_mb, Instant::now());
                    if let Some(evicted) = evicted {
                        debug!(?evicted, "evicting idle containers to make room");
                        self.inner.destroy(evicted);
                        continue;
                    }
                    if waiting.is_none() {
                        let ceiling = self.inner.config.fleet.fairness.account_memory_mb;
                        if ceiling.is_some_and(|ceiling| memory_mb > ceiling) {
                            // Larger than any VM the account may have: waiting cannot help.
                            return Err(ExecError::Throttled {
                                reason: ThrottleReason::AccountMemoryLimitExceeded,
                            });
                        }
                        waiting = Some(
                            WaitingSlot::take(&self.inner, &key.account_id, memory_mb).ok_or(
                                ExecError::Throttled {
                                    reason: ThrottleReason::CapacityExhausted,
                                },
                            )?,
                        );
                    }
                    if tokio::time::timeout_at(deadline, freed).await.is_err() {
                        let capped = lock(&self.inner.fleet)
                            .pool()
                            .over_ceiling(&key.account_id, memory_mb);
                        return Err(ExecError::Throttled {
                            reason: if capped {
                                ThrottleReason::AccountMemoryLimitExceeded
                            } else {
                                ThrottleReason::CapacityExhausted
                            },
                        });
                    }
                    continue;
                }
            };
            if let Ok(lease) = &lease {
                metrics::counter!("ember_invocations_total", "start" => lease.start.as_str())
                    .increment(1);
            }
            return lease;
        }
    }

    fn vm(&self, vm_id: &str) -> Option<Arc<VmHandle>> {
        lock(&self.inner.vms).get(vm_id).cloned()
    }

    /// Creates a container whose memory [`Pool::place`] has reserved in `vm`.
    async fn new_container(
        &self,
        vm: Arc<VmHandle>,
        key: &FnKey,
        function: &Function,
        memory_mb: u64,
        start: StartKind,
    ) -> Result<Lease, ExecError> {
        match self.create_container(&vm, function, memory_mb).await {
            Ok(container_id) => {
                // Its next containers of this runtime fork from a template.
                if let Some(runtime) = &function.spec.runtime {
                    self.inner.prepare_template(&vm, runtime);
                }
                lock(&self.inner.fleet).pool().container_created(
                    &container_id,
                    key,
                    &vm.id,
                    memory_mb,
                );
                Ok(Lease {
                    vm,
                    container_id,
                    start,
                })
            }
            Err(err) => {
                lock(&self.inner.fleet).pool().container_not_created(
                    &vm.id,
                    memory_mb,
                    Instant::now(),
                );
                self.inner.freed.notify_waiters();
                if matches!(err, ExecError::Vm(_)) {
                    self.inner.retire_vm(&vm.id);
                }
                Err(err)
            }
        }
    }

    /// Whether a new container of `function` in `vm` is a SnapStart one: the version is one
    /// SnapStart applies to ([`Function::snap_start_applies`]: a published version, never
    /// `$LATEST`, of a function with `SnapStart.ApplyOn: PublishedVersions`), and the VM holds
    /// its template or has the memory for one. A version's template is counted at the
    /// function's memory size (its runtime's init ran under that limit), taken from the VM's
    /// containers' memory the first time, for the VM's life; without the room, the container
    /// starts the ordinary way. `--runtime-templates false` does not turn SnapStart off: it is
    /// the function's own setting.
    fn snap_start(&self, vm: &VmHandle, function: &Function, memory_mb: u64) -> bool {
        if !function.snap_start_applies() {
            return false;
        }
        let key = format!("{}:{}", self.function_arn(function), function.version);
        let mut templates = lock(&vm.snap_templates);
        if templates.contains_key(&key) {
            return true;
        }
        if !lock(&self.inner.fleet)
            .pool()
            .reserve_overhead(&vm.id, memory_mb)
        {
            debug!(vm_id = %vm.id, %key, "no memory left for a SnapStart template");
            return false;
        }
        templates.insert(key, memory_mb);
        true
    }

    async fn create_container(
        &self,
        vm: &VmHandle,
        function: &Function,
        memory_mb: u64,
    ) -> Result<String, ExecError> {
        let runtime = function
            .spec
            .runtime
            .clone()
            .ok_or_else(|| ExecError::NoRuntime(function.name.clone()))?;
        let preparing = Instant::now();
        self.inner
            .runtimes
            .ensure(&runtime)
            .await
            .map_err(ExecError::RuntimeUnavailable)?;
        self.ensure_code(vm, &function.code_sha256).await?;
        for layer in &function.spec.layers {
            self.ensure_code(vm, &layer.sha256).await?;
        }
        let container_id = format!("c-{}", uuid::Uuid::new_v4().simple());
        let cpu_millis = ember_protocol::cpu_millis(memory_mb, self.inner.config.fleet.vm_vcpus);
        let snap_start = self.snap_start(vm, function, memory_mb);
        // The one place a container's environment is decided: every start kind gets these.
        let credentials = self.inner.mint_session(&vm.id, &container_id, function);
        let request = CreateContainer {
            container_id: container_id.clone(),
            function: FunctionSpec {
                name: function.name.clone(),
                arn: self.function_arn(function),
                version: function.version.clone(),
                handler: function.spec.handler.clone().unwrap_or_default(),
                runtime,
                region: self.inner.config.region.clone(),
                environment: function.spec.environment.clone(),
                memory_mb: u32::try_from(memory_mb).unwrap_or(u32::MAX),
                timeout_ms: u64::from(function.spec.timeout_s) * 1000,
                ephemeral_storage_mb: function.spec.ephemeral_mb,
                code: CodeSource::Stored {
                    sha256: function.code_sha256.clone(),
                },
                layers: function
                    .spec
                    .layers
                    .iter()
                    .map(|l| l.sha256.clone())
                    .collect(),
            },
            uid: self.inner.config.sandbox_uid,
            gid: self.inner.config.sandbox_gid,
            cpu_millis,
            pids_max: CONTAINER_PIDS_MAX,
            freeze_idle: self.inner.config.freeze_idle,
            snap_start,
            credentials: Some(credentials),
            egress: self.egress_of(function),
        };
        let prepared_ms = preparing.elapsed().as_secs_f64() * 1e3;
        let creating = Instant::now();
        let grace = self.inner.config.agent_grace;
        // A SnapStart container's creation may include its version's template's init.
        let grace = match snap_start {
            true => grace + ember_protocol::SNAP_TEMPLATE_TIMEOUT,
            false => grace,
        };
        let created =
            match tokio::time::timeout(grace, vm.connection().create_container(request)).await {
                Ok(created) => created.map_err(|e| agent_error(&e)),
                Err(_) => Err(ExecError::Vm(format!(
                    "the VM's agent did not create a container within {grace:?}"
                ))),
            };
        if let Err(err) = created {
            self.inner.environment_ended(&container_id);
            return Err(err);
        }
        debug!(
            vm_id = %vm.id,
            container_id,
            prepare_ms = prepared_ms,
            create_ms = creating.elapsed().as_secs_f64() * 1e3,
            "container created"
        );
        Ok(container_id)
    }

    /// Sends a code package to a VM unless it already has it.
    async fn ensure_code(&self, vm: &VmHandle, sha256: &str) -> Result<(), ExecError> {
        let mut held = vm.code.lock().await;
        if held.contains(sha256) {
            return Ok(());
        }
        let package = self
            .inner
            .store
            .code(sha256)
            .await
            .map_err(ExecError::Code)?;
        let bound = self.inner.config.agent_grace * CODE_UPLOAD_GRACES;
        let package = Bytes::from(package);
        match tokio::time::timeout(bound, vm.connection().put_code(sha256, &package)).await {
            Ok(stored) => stored.map_err(|e| agent_error(&e))?,
            Err(_) => {
                return Err(ExecError::Vm(format!(
                    "the VM's agent did not store a code package within {bound:?}"
                )))
            }
        }
        held.insert(sha256.to_owned());
        Ok(())
    }
}

/// What sizing learns from an execution.
fn sample_of(result: &InvokeResult) -> ember_fleet::sizing::Sample {
    use ember_fleet::sizing::Outcome;
    ember_fleet::sizing::Sample {
        memory_mb: result.memory_limit_mb,
        peak_mb: result.max_memory_used_mb,
        cpu_ms: result.cpu_time_ms,
        throttled_ms: result.cpu_throttled_ms,
        duration_ms: result.duration_ms,
        outcome: match result.outcome {
            InvokeOutcome::Ok { .. } => Outcome::Ok,
            InvokeOutcome::Timeout => Outcome::Timeout,
            InvokeOutcome::OutOfMemory => Outcome::OutOfMemory,
            InvokeOutcome::FunctionError { .. }
            | InvokeOutcome::InitError { .. }
            | InvokeOutcome::ExitError(_) => Outcome::Error,
        },
        init_ms: result.init_duration_ms,
    }
}

/// An agent's refusal is a failed request ([`ExecError::AgentRefused`]: the VM serves on); a
/// dead or garbled connection a failed VM ([`ExecError::Vm`]: the caller retires it).
fn agent_error(err: &ProtocolError) -> ExecError {
    match err {
        ProtocolError::Agent(message) => ExecError::AgentRefused(message.clone()),
        other => ExecError::Vm(other.to_string()),
    }
}

/// Asks a VM's agent to shut down, then stops the VM: gracefully when this was its last user,
/// else the last user's drop tears it down.
async fn stop_vm(vm: Arc<VmHandle>) {
    let _ = tokio::time::timeout(ember_vm::SHUTDOWN_GRACE, vm.connection().shutdown()).await;
    let id = vm.id.clone();
    match Arc::try_unwrap(vm) {
        Ok(handle) => {
            if let Err(err) = handle.vm.shutdown().await {
                warn!(vm_id = %id, error = %err, "VM did not stop cleanly");
            }
        }
        Err(shared) => drop(shared),
    }
    debug!(vm_id = %id, "VM stopped");
}

/// Follows a VM's events until its agent goes away.
async fn watch_vm(
    inner: std::sync::Weak<Inner>,
    vm_id: String,
    mut events: mpsc::UnboundedReceiver<Event>,
) {
    while let Some(event) = events.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        match event {
            Event::ContainerGone {
                container_id,
                reason,
            } => {
                debug!(vm_id, container_id, ?reason, "container ended on its own");
                inner.environment_ended(&container_id);
                lock(&inner.fleet)
                    .pool()
                    .remove_container(&container_id, Instant::now());
                inner.freed.notify_waiters();
            }
        }
    }
    let Some(inner) = inner.upgrade() else { return };
    let known = lock(&inner.vms).contains_key(&vm_id);
    if known {
        warn!(
            vm_id,
            "VM's agent went away; the VM is removed from service"
        );
        inner.retire_vm(&vm_id);
    }
}

/// How often the fleet's clock ticks: keep-alives and TTLs are checked, N follows the decaying
/// request rate, and the gauges are published.
const TICK: Duration = Duration::from_millis(250);

/// Lets the fleet's clock tick: retires idle containers and VMs past their keep-alive or TTL,
/// lets N follow the rate, and keeps the warming pool at its floor.
async fn reap(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        let expired = {
            let mut fleet = lock(&inner.fleet);
            fleet.tick(now);
            fleet.expired(now)
        };
        if !expired.is_empty() {
            debug!(?expired, "reclaiming idle containers and VMs");
            inner.destroy(expired);
            inner.freed.notify_waiters();
        }
        inner.replenish();
        inner.provision();
        inner.sweep_sessions();
        inner.publish_gauges();
    }
}

/// Holds one of the bounded places in the queue of executions waiting for capacity, and the
/// execution's place among the fleet's waiters (executions of other accounts may yield to it).
struct WaitingSlot<'a> {
    inner: &'a Inner,
    ticket: WaitTicket,
}

impl<'a> WaitingSlot<'a> {
    /// A place in the queue, unless `--max-waiting` executions already wait (the fleet keeps
    /// the bound: [`ember_fleet::FleetConfig::max_waiting`]).
    fn take(inner: &'a Inner, account_id: &str, memory_mb: u64) -> Option<Self> {
        let ticket = lock(&inner.fleet)
            .pool()
            .try_begin_wait(account_id, memory_mb)?;
        Some(Self { inner, ticket })
    }
}

impl Drop for WaitingSlot<'_> {
    fn drop(&mut self) {
        lock(&self.inner.fleet).pool().end_wait(self.ticket);
        // Executions that yielded to this one may go now.
        self.inner.freed.notify_waiters();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent-enough bookkeeping; keep going.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Milliseconds since the Unix epoch.
pub fn epoch_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// An X-Ray trace header, as Lambda passes one to every invocation.
fn trace_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let random = uuid::Uuid::new_v4().simple().to_string();
    let parent = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "Root=1-{now:08x}-{};Parent={};Sampled=0",
        &random[..24],
        &parent[..16]
    )
}
