//! Containers: one function's execution environment each, inside the VM.
//!
//! [`Containers`] serves the host's container requests: code packages ([`CodeStore`]), creating a
//! container, running invocations in it and destroying it.
//!
//! # Making a container
//!
//! A container is a sub-cgroup `c-<id>` of the VM's own cgroup (found at `/sys/fs/cgroup`,
//! however the VM got it there) with the function's memory (swap off), a CPU quota capped at the
//! VM's (the VM's whole quota until the runtime's init ends: see [`boost`]) and a pids limit; new mount, PID, IPC, UTS, cgroup and network namespaces (the network
//! namespace holds only its loopback, where the runtime reaches its own Runtime API at
//! [`plan::RUNTIME_API`]: a socket `container-init` makes in that namespace and hands over, which
//! the agent serves from outside it, so no container can reach another's); a
//! fresh read-only root (see [`plan::mounts`]) where the container sees its own cgroup, and
//! nothing else of the VM's, read-only at `/sys/fs/cgroup` (see [`plan::cgroup_mounts`]); an
//! unprivileged uid/gid without capabilities,
//! under `no_new_privs` and the seccomp filter. The processes are made by the agent's own binary
//! in its `container-init` mode: see [`init`] for the process model. A Python runtime whose
//! template runs in the VM is forked from it into the built container instead of executed
//! afresh, and anything that keeps that from working falls back to the exec: see [`template`].
//!
//! # Start
//!
//! `CreateContainer` is answered once the container's namespaces, cgroup, network and Runtime API
//! exist and its PID 1 has been told to go (and, from a template, the runtime forked into it),
//! without waiting for PID 1 to build the root and execute the runtime, nor for the runtime's
//! init: the host's first `Invoke` is on its way meanwhile, so the event is queued when the
//! runtime first polls (a cold start no longer waits for PID 1's `Running` report and a host
//! round trip after that poll). The first `Invoke` waits for the init, and reports it in
//! `init_duration_ms`. A runtime that cannot be executed (a missing or non-executable bootstrap)
//! does not fail the creation: the first invocation reports `InitError` with Lambda's
//! `Runtime.InvalidEntrypoint`, as Lambda does. Failing to build the container (mounts,
//! privileges, no `Running` within the start's timeout) kills it, and its first invocation (or
//! `AwaitInit`) is refused with that error, as the creation was before; no function code has run.
//!
//! # Invocations and how they end
//!
//! A container runs one invocation at a time (others wait their turn). An invocation is raced
//! against the runtime's answer on the Runtime API, its deadline, and the death of the runtime:
//!
//! - the runtime's response or error document: `Ok` or `FunctionError`; the container is kept;
//! - an `/init/error`: `InitError` (its type from the `Lambda-Runtime-Function-Error-Type` header,
//!   else the document's `errorType`);
//! - the deadline: the container is killed, `Timeout`. A first invocation that waits for the
//!   runtime's init has its deadline moved on by the init's time, up to
//!   [`INIT_TIMEOUT`](ember_protocol::INIT_TIMEOUT), as Lambda's Init phase has its own limit;
//! - the runtime's exit: `OutOfMemory` when the container's cgroup counted an OOM kill during the
//!   invocation (or the runtime died of SIGKILL with its memory at the limit: v1 counts a kill only
//!   in the group whose limit was hit), else `ExitError` with its status.
//!
//! After any outcome but `Ok` and `FunctionError` the container is destroyed before the reply.
//! Each result carries the invocation's output (see [`LogTail`]), its duration, the peak memory and
//! the CPU time of the cgroup since the end of the container's previous invocation (what its
//! runtime does between invocations counts toward the next; for a first invocation: since the
//! container started, init included), and on the first invocation the init duration. The
//! counters read at the end of one invocation are the baseline of the next, so a warm invocation
//! reads them once, through descriptors kept open.
//!
//! # Frozen between invocations
//!
//! A container created with `freeze_idle` is frozen (its cgroup's freezer) whenever no
//! invocation runs in it, from the end of its first invocation on, as Lambda freezes an idle
//! execution environment: a thread its function left running uses no CPU until the next
//! invocation thaws it, just before the event is handed over. The freeze is off the reply's path
//! and waits for the container to stay idle for [`FREEZE_AFTER`]: a container whose next
//! invocation comes sooner (a busy function's) is not frozen in between, so back-to-back
//! invocations pay no freeze and no thaw (freezing wakes every task of the group into the
//! freezer and thawing wakes them again: on this project's machine, 150 µs or more of a warm
//! invocation when done every time; see BENCHMARKS.md). What a function leaves running gets at
//! most that delay of CPU after an invocation, counted toward the next one's `cpu_time_ms`. The
//! freeze takes the container's turn (it is skipped if an invocation holds it or has run since),
//! so the next invocation's thaw always comes after it. Thawing is one write through a
//! descriptor kept open; on v1 an empty group of the VM stays frozen for the VM's life, so that
//! no freeze or thaw switches the kernel's freezer on or off (see
//! `Hierarchy::freezer_anchor`). A frozen container is destroyed as any other (v1's kill thaws
//! it first; on v2 a frozen process dies of SIGKILL), and the freeze is skipped for a container
//! already being torn down. A runtime that exits just after answering may be frozen before it
//! does: its exit then ends the next invocation (`ExitError`), as in Lambda.
//!
//! # Containers that end on their own
//!
//! A container whose runtime exits while idle is destroyed, and the host is told with
//! `Event::ContainerGone`, unless it had never been invoked: then its end is kept and reported as
//! the outcome of its first invocation (`InitError`, `ExitError` or `OutOfMemory`), as Lambda
//! reports a failed init to the invocation that caused it. Destroying a container kills every
//! process in its cgroup, waits for them, and removes the cgroup; its mounts die with its mount
//! namespace. `DestroyContainer` on a container that already ended answers how it ended.

mod boost;
mod code;
pub mod init;
mod logs;
pub mod node_template;
pub mod plan;
pub mod snap;
mod snap_init;
mod spare;
pub mod template;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, IoSliceMut, Write as _};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ember_protocol::{
    AgentStats, CodeSource, ContainerCreated, CreateContainer, Event, ExitStatus, GoneReason,
    Invoke, InvokeOutcome, InvokeResult, PutCode, INIT_TIMEOUT,
};
use ember_sandbox::cgroup::{Cgroup, CgroupError, Hierarchy, Limits, Stats};
use nix::unistd::Pid;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest, Lines};
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::reaper::Reaper;
use crate::runtime_api::{
    Abort, ResponseSink, Restore, RuntimeApi, RuntimeApiError, RuntimeApiServer,
};

pub use code::{CodeError, CodeStore};
use logs::LogPipe;
pub use logs::{LogTail, MAX_LOG_BYTES};
use plan::{InitPlan, Layout, Report};

/// The error type Lambda reports when the runtime cannot be started.
pub const INVALID_ENTRYPOINT: &str = "Runtime.InvalidEntrypoint";

/// The VM's group that keeps freezes cheap (see [`Hierarchy::freezer_anchor`]); not `c-`
/// prefixed, so no container id can name it.
const FREEZER_ANCHOR: &str = "freezer-anchor";

/// How long a container with `freeze_idle` stays idle before it is frozen (tokio's timer rounds
/// it up to the next millisecond).
pub const FREEZE_AFTER: Duration = Duration::from_millis(1);

/// How many ended containers are remembered, for `DestroyContainer` on one of them.
const ENDED_KEPT: usize = 256;

/// The longest first report read from a container's init (a failure's message is the longest).
const MAX_REPORT: usize = 64 << 10;

/// The signal the OOM killer (and the agent) kills with.
const SIGKILL: i32 = 9;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("no such container: {0}")]
    NotFound(String),
    #[error("code package {0} is not in this VM (send it with PutCode first)")]
    CodeMissing(String),
    #[error("code package")]
    Code(#[from] CodeError),
    #[error("no cgroup hierarchy for containers")]
    NoCgroups(#[source] CgroupError),
    #[error("cgroup of container {0}")]
    Cgroup(String, #[source] CgroupError),
    #[error("cannot start the Runtime API")]
    RuntimeApi(#[source] RuntimeApiError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("container setup failed at {stage}: {error}")]
    Setup { stage: String, error: String },
    #[error("the container's init ended before the container started")]
    InitVanished,
    #[error("the container's init sent no Runtime API socket")]
    NoListener,
    #[error("unexpected report from the container's init: {0}")]
    UnexpectedReport(String),
    #[error("the container did not start within {0:?}")]
    StartTimeout(Duration),
    #[error("a blocking task failed: {0}")]
    Task(String),
    #[error("runtime template")]
    Template(#[source] template::TemplateError),
    #[error("SnapStart")]
    Snap(#[source] snap::SnapError),
    #[error("the container's network")]
    Network(#[source] crate::net::NetError),
    /// The runtime's init failed, or did not end in time (`AwaitInit`); the container is gone.
    #[error("the runtime's init failed: {0}")]
    InitFailed(String),
}

impl ContainerError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// Where a VM keeps what containers are made of. The defaults are the VM's paths.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// The VM's own cgroup, seen as a hierarchy (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// Writable state: `code/` (packages) and `containers/` (root mount points). `/run/ember`.
    pub state_dir: PathBuf,
    pub layout: Layout,
    /// This binary, run in its `container-init` mode. `/proc/self/exe`, which works even though
    /// the file is not in the VM's mount namespace.
    pub init_exe: PathBuf,
    /// How long a container may take from spawn to the exec of its runtime.
    pub start_timeout: Duration,
    /// The VM's network (see [`crate::net`]): each container gets a link of its own and
    /// `AWS_ENDPOINT_URL_LAMBDA`. `None`: containers have only their loopback.
    pub network: Option<Arc<crate::net::VmNet>>,
}

impl Default for ContainerConfig {
    fn default() -> Self {
        Self {
            cgroup_root: ember_sandbox::cgroup::DEFAULT_ROOT.into(),
            state_dir: "/run/ember".into(),
            layout: Layout {
                vm_root: "/".into(),
                lang_dir: "/opt/ember/lang".into(),
                runtimes_dir: "/opt/ember/runtimes".into(),
                empty_dir: "/run/ember/empty".into(),
            },
            init_exe: "/proc/self/exe".into(),
            start_timeout: Duration::from_secs(10),
            network: None,
        }
    }
}

/// The containers of this VM. See the module docs.
#[derive(Debug)]
pub struct Containers {
    config: ContainerConfig,
    hierarchy: OnceLock<Hierarchy>,
    reaper: Arc<Reaper>,
    code: Arc<CodeStore>,
    events: mpsc::UnboundedSender<Event>,
    table: Mutex<Table>,
    in_flight: AtomicU32,
    /// The VM's frozen empty group that keeps v1 freezes cheap, made on the first freeze (see
    /// [`Hierarchy::freezer_anchor`]); `None` inside on v2 or when it cannot be made.
    freezer_anchor: OnceLock<Option<Box<dyn Cgroup>>>,
    /// The VM's kernel has no freezer (v1 without the controller, v2 before 5.2): said once,
    /// not tried again.
    no_freezer: AtomicBool,
    /// The runtime templates new containers are forked from (see [`template`]).
    templates: Arc<template::Templates>,
    /// The SnapStart templates of function versions (see [`snap`]).
    snap: snap::SnapTemplates,
    /// Inits spawned ahead, each in a cgroup of its own, that new containers claim (see
    /// [`spare`]).
    spares: Arc<spare::Spares>,
    /// What the spares pre-build, made on their first refill; `None` inside when it cannot be
    /// made (the spares then build nothing ahead).
    spare_prep: OnceLock<Option<Arc<spare::Prep>>>,
}

#[derive(Debug, Default)]
struct Table {
    live: HashMap<String, Arc<Container>>,
    /// Ids being created, reserved.
    creating: HashSet<String>,
    /// How the last [`ENDED_KEPT`] containers ended.
    ended: VecDeque<(String, GoneReason)>,
}

/// One container, from its creation until its teardown.
#[derive(Debug)]
struct Container {
    id: String,
    memory_limit_mb: u32,
    cgroup: Arc<dyn Cgroup>,
    /// The VM's CPU for its init, until the init ends (`None` when there is nothing to lend).
    cpu_boost: Option<Arc<boost::CpuBoost>>,
    api: RuntimeApi,
    server: Mutex<Option<RuntimeApiServer>>,
    /// When its init process was spawned.
    started: Instant,
    /// Its first process, in the VM's PID namespace.
    first: Pid,
    /// Forked from a SnapStart template: its init is a restore.
    restored: bool,
    /// The SnapStart template it was forked from (the template container's id).
    snap_template: Option<String>,
    logs: Arc<LogPipe>,
    /// Set once, when the container's first process has exited and been reaped.
    death: watch::Receiver<Option<Death>>,
    phase: Mutex<Phase>,
    /// Held for the length of an invocation, and while the container is being frozen.
    turn: Arc<tokio::sync::Mutex<()>>,
    /// Invocations ended so far: a freeze scheduled after one is skipped if another ended since.
    ended_invocations: AtomicU64,
    /// Whether it is frozen between invocations (`CreateContainer::freeze_idle`).
    freeze_idle: bool,
    /// Whether the agent froze it and has not thawed it since.
    frozen: AtomicBool,
    invoked: AtomicBool,
    /// The agent killed it (timeout, destroy): its death is not the runtime's doing.
    killed: AtomicBool,
    /// The cgroup's OOM kills when the current invocation started.
    oom_baseline: AtomicU64,
    /// The cgroup's counters at the end of its last invocation: the next one's baseline.
    last_stats: Mutex<Stats>,
    /// The mount point of its root in the VM.
    root_dir: PathBuf,
    /// Its network link, when the VM has a network (see [`crate::net`]); released at teardown.
    link: Mutex<Option<crate::net::ContainerLink>>,
    /// Whether its resources were released; the lock serialises teardowns.
    torn_down: tokio::sync::Mutex<bool>,
    /// How it ended, once decided: the first decision stands.
    fate: OnceLock<GoneReason>,
    /// Why its start failed after `CreateContainer` was answered (see `await_running`): the
    /// first invocation is refused with it, as the creation was before.
    start_failure: Mutex<Option<ContainerError>>,
}

/// How a container ended.
#[derive(Debug, Clone)]
struct Death {
    abort: Abort,
    /// The cgroup's counters just after the end.
    stats: Option<Stats>,
    at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Busy,
    /// Out of the table: destroyed, or being destroyed.
    Gone,
}

/// What an invocation's race ended with.
enum Verdict {
    Answered(InvokeOutcome),
    Died(Option<Death>),
    TimedOut,
}

impl Containers {
    /// Serves containers per `config`; `events` carries `ContainerGone` for containers that end
    /// on their own.
    pub fn new(
        config: ContainerConfig,
        reaper: Arc<Reaper>,
        events: mpsc::UnboundedSender<Event>,
    ) -> Self {
        let code = Arc::new(CodeStore::new(config.state_dir.join("code")));
        let templates = Arc::new(template::Templates::new(
            template::TemplateConfig {
                layout: config.layout.clone(),
                state_dir: config.state_dir.clone(),
                exe: config.init_exe.clone(),
            },
            reaper.clone(),
        ));
        let spares = Arc::new(spare::Spares::new(
            config.init_exe.clone(),
            reaper.clone(),
            config.network.clone(),
        ));
        Self {
            templates,
            spares,
            config,
            hierarchy: OnceLock::new(),
            reaper,
            code,
            events,
            table: Mutex::default(),
            in_flight: AtomicU32::new(0),
            freezer_anchor: OnceLock::new(),
            no_freezer: AtomicBool::new(false),
            snap: snap::SnapTemplates::default(),
            spare_prep: OnceLock::new(),
        }
    }

    /// Takes one chunk of a code package; see [`CodeStore::put`]. Returns whether the package is
    /// complete.
    pub async fn put_code(&self, chunk: PutCode) -> Result<bool, ContainerError> {
        let code = self.code.clone();
        let span = info_span!("put_code", sha256 = %chunk.sha256, offset = chunk.offset);
        tokio::task::spawn_blocking(move || span.in_scope(|| code.put(&chunk)))
            .await
            .map_err(|e| ContainerError::Task(e.to_string()))?
            .map_err(ContainerError::Code)
    }

    /// Starts (or keeps) the runtime template of `runtime`; returns its resident memory in MB.
    pub async fn prepare_template(&self, runtime: &str) -> Result<u64, ContainerError> {
        let span = info_span!("prepare_template", runtime);
        self.templates
            .prepare(runtime)
            .instrument(span)
            .await
            .map_err(ContainerError::Template)
    }

    /// The containers, invocations and memory of this VM.
    pub fn stats(&self) -> AgentStats {
        let containers = self
            .lock()
            .live
            .values()
            .filter(|c| c.death.borrow().is_none() && *c.lock_phase() != Phase::Gone)
            .count();
        let memory = self
            .hierarchy()
            .ok()
            .and_then(|h| h.root_stats().ok())
            .map(|s| s.memory_current_bytes.div_ceil(1 << 20));
        AgentStats {
            containers: u32::try_from(containers).unwrap_or(u32::MAX),
            invocations_in_flight: self.in_flight.load(Ordering::Relaxed),
            memory_used_mb: memory.unwrap_or_else(|| crate::util::resident_mb(Path::new("/proc"))),
        }
    }

    fn hierarchy(&self) -> Result<&Hierarchy, ContainerError> {
        if let Some(hierarchy) = self.hierarchy.get() {
            return Ok(hierarchy);
        }
        let found =
            Hierarchy::detect(&self.config.cgroup_root).map_err(ContainerError::NoCgroups)?;
        Ok(self.hierarchy.get_or_init(|| found))
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every critical section leaves the table consistent; a panic cannot tear it.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates a container and starts its runtime; see the module docs.
    pub async fn create(
        self: &Arc<Self>,
        request: CreateContainer,
    ) -> Result<ContainerCreated, ContainerError> {
        let id = request.container_id.clone();
        let code = self.check(&request)?;
        {
            let mut table = self.lock();
            if table.live.contains_key(&id) || !table.creating.insert(id.clone()) {
                return Err(ContainerError::Exists(id));
            }
        }
        let span = info_span!("create", container_id = %id, function = %request.function.name);
        let result = self.start(request, code).instrument(span).await;
        let mut table = self.lock();
        table.creating.remove(&id);
        let (container, created) = match result {
            Ok(done) => done,
            Err(err) => {
                drop(table);
                self.refill_spares();
                return Err(err);
            }
        };
        // The spare this creation claimed is replaced once the runtime's init has ended, so that
        // making it (a spawn, an exec, a move into a cgroup) does not compete with that init.
        let api = container.api.clone();
        let mut death = container.death.clone();
        let this = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = api.initialized() => {}
                _ = death.wait_for(Option::is_some) => {}
                () = tokio::time::sleep(INIT_TIMEOUT) => {}
            }
            this.refill_spares();
        });
        table.live.insert(id, container);
        Ok(created)
    }

    /// Makes spare inits (see [`spare`]) until the VM has its [`spare::SPARE_INITS`]: at the
    /// agent's start and after each creation. Without a cgroup hierarchy there are none.
    pub fn refill_spares(self: &Arc<Self>) {
        if let Ok(hierarchy) = self.hierarchy() {
            self.spares.refill(hierarchy, self.spare_prep(hierarchy));
        }
    }

    /// What the VM's spares pre-build (see [`spare`]), made once.
    fn spare_prep(&self, hierarchy: &Hierarchy) -> Option<Arc<spare::Prep>> {
        self.spare_prep
            .get_or_init(|| match self.make_spare_prep(hierarchy) {
                Ok(prep) => Some(Arc::new(prep)),
                Err(err) => {
                    warn!(error = %err, "spares cannot pre-build containers' roots");
                    None
                }
            })
            .clone()
    }

    /// The [`plan::SparePlan`] of this VM: the roots' system part, built on
    /// `<state dir>/spare-root` (each spare in its own mount namespace), and the directories a
    /// function's part takes its layers from: the empty directory, the code store, the runtimes
    /// and each language (each language is a mount of its own in a VM).
    fn make_spare_prep(&self, hierarchy: &Hierarchy) -> io::Result<spare::Prep> {
        let layout = &self.config.layout;
        let cgroup = plan::cgroup_mounts(hierarchy)?;
        let root = self.config.state_dir.join("spare-root");
        let empty = layout.resolve(&layout.empty_dir);
        let code = self.code.dir().to_path_buf();
        for dir in [&root, &empty, &code] {
            std::fs::create_dir_all(dir)?;
        }
        let mut staged = vec![empty, code];
        let runtimes = layout.resolve(&layout.runtimes_dir);
        if runtimes.is_dir() {
            staged.push(runtimes);
        }
        let lang = layout.resolve(&layout.lang_dir);
        if let Ok(entries) = std::fs::read_dir(&lang) {
            let mut langs = Vec::new();
            for entry in entries {
                let path = entry?.path();
                if path.is_dir() {
                    langs.push(path);
                }
            }
            langs.sort();
            staged.extend(langs);
        }
        spare::Prep::new(&plan::SparePlan {
            root,
            mounts: plan::system_mounts(layout, &cgroup),
            staged,
        })
    }

    /// Validates a creation request; returns the code directory.
    fn check(&self, request: &CreateContainer) -> Result<PathBuf, ContainerError> {
        let invalid = |what: &str| Err(ContainerError::Invalid(what.to_owned()));
        let function = &request.function;
        if !plan::valid_name(&request.container_id) {
            return invalid("a container id is 1 to 128 characters of [A-Za-z0-9._-]");
        }
        if !plan::valid_name(&function.runtime) {
            return invalid("the runtime is not a valid runtime name");
        }
        if function.memory_mb == 0 || function.ephemeral_storage_mb == 0 {
            return invalid("memory_mb and ephemeral_storage_mb must be positive");
        }
        if request.uid == plan::INIT_UID {
            return Err(ContainerError::Invalid(format!(
                "uid {} is its container's first process's, not a function's",
                request.uid
            )));
        }
        if request.pids_max < plan::MIN_PIDS {
            return Err(ContainerError::Invalid(format!(
                "pids_max must be at least {}",
                plan::MIN_PIDS
            )));
        }
        match &function.code {
            CodeSource::Stored { sha256 } if self.code.has(sha256) => Ok(self.code.path(sha256)),
            CodeSource::Stored { sha256 } => Err(ContainerError::CodeMissing(sha256.clone())),
            CodeSource::Directory { path } if path.is_absolute() && path.is_dir() => {
                Ok(path.clone())
            }
            CodeSource::Directory { path } => Err(ContainerError::Invalid(format!(
                "code directory {} is not an absolute path to a directory of the VM",
                path.display()
            ))),
        }
    }

    /// The extracted layer packages a container's `/opt` is made of, in order.
    fn layer_dirs(
        &self,
        function: &ember_protocol::FunctionSpec,
    ) -> Result<Vec<PathBuf>, ContainerError> {
        function
            .layers
            .iter()
            .map(|sha| match self.code.has(sha) {
                true => Ok(self.code.path(sha)),
                false => Err(ContainerError::CodeMissing(sha.clone())),
            })
            .collect()
    }

    /// What a runtime forked from the template becomes, with the function's directories ahead
    /// of the runtime's on `sys.path`; `None` when no template was prepared for the runtime.
    fn launch_spec(
        &self,
        request: &CreateContainer,
        function: &ember_protocol::FunctionSpec,
        env: &std::collections::BTreeMap<String, String>,
        code: &Path,
        layers: &[PathBuf],
    ) -> Option<(template::LaunchSpec, Vec<PathBuf>)> {
        let family = node_template::Family::of(&function.runtime)?;
        if !self.templates.prepared(&function.runtime) {
            // The template asked for after this container serves its memory size.
            if let node_template::Family::Node(_) = family {
                self.templates
                    .set_node_memory(&function.runtime, function.memory_mb);
            }
            return None;
        }
        let seccomp = match self.templates.seccomp() {
            Ok(seccomp) => seccomp,
            Err(err) => {
                warn!(error = %err, "no seccomp programs for a forked runtime");
                return None;
            }
        };
        let open_files = (init::CONTAINER_OPEN_FILES, init::CONTAINER_OPEN_FILES);
        let (argv, env, path_dirs) = match family {
            node_template::Family::Python(minor) => (
                template::fresh_argv(minor, &function.handler),
                template::python_env(env, minor, crate::env::TASK_ROOT),
                template::function_path_dirs(code, layers, minor),
            ),
            // A function's code cannot shadow what the template loaded: the entry imports
            // aws-lambda-ric from /var/runtime's own node_modules, and built-ins come first.
            node_template::Family::Node(major) => {
                let env = node_template::node_env(env, major, crate::env::TASK_ROOT);
                (node_template::fresh_argv(&env)?, env, Vec::new())
            }
        };
        let spec = template::LaunchSpec {
            uid: request.uid,
            gid: request.gid,
            cwd: crate::env::TASK_ROOT.into(),
            argv,
            env,
            rlimits: [("RLIMIT_NOFILE".to_owned(), open_files)].into(),
            seccomp,
        };
        Some((spec, path_dirs))
    }

    /// Hands the container whose first process is `first` to the runtime's template, which
    /// forks its runtime into it; returns the runtime's pid in the container.
    async fn fork_from_template(
        &self,
        runtime: &str,
        first: Pid,
        cgroup: &Arc<dyn Cgroup>,
        log: Option<OwnedFd>,
        spec: template::LaunchSpec,
        path_dirs: Vec<PathBuf>,
    ) -> Result<i32, ContainerError> {
        let log =
            log.ok_or_else(|| ContainerError::Invalid("no log pipe for the template".into()))?;
        let mut fds: template::Fds = Vec::new();
        for ns in template::NAMESPACES {
            let path = format!("/proc/{first}/ns/{ns}");
            let file = std::fs::File::open(&path)
                .map_err(ContainerError::io(format!("cannot open {path}")))?;
            fds.push((ns, OwnedFd::from(file)));
        }
        let procs = cgroup
            .procs_files()
            .map_err(|e| ContainerError::Cgroup(cgroup.path().display().to_string(), e))?;
        for file in procs {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .map_err(ContainerError::io(format!(
                    "cannot open {}",
                    file.display()
                )))?;
            fds.push(("procs", OwnedFd::from(file)));
        }
        fds.push(("log", log));
        let templates = self.templates.clone();
        templates
            .fork(runtime, fds, spec, path_dirs)
            .await
            .map_err(ContainerError::Template)
    }

    async fn start(
        self: &Arc<Self>,
        request: CreateContainer,
        code: PathBuf,
    ) -> Result<(Arc<Container>, ContainerCreated), ContainerError> {
        if request.snap_start {
            match self.start_snap(&request, &code).await {
                Ok(done) => return Ok(done),
                Err(err) => info!(
                    reason = %ember_stdx::error_chain(&err),
                    "the environment starts the ordinary way, not from a SnapStart template"
                ),
            }
        }
        let mut partial = Partial::default();
        let err = match self
            .start_parts(
                &request,
                code.clone(),
                &mut partial,
                true,
                snap::Making::Ordinary,
            )
            .await
        {
            Ok(done) => return Ok(done),
            Err(err) => err,
        };
        let spare = partial.spare;
        partial.undo().await;
        // A spare whose init vanished or whose socket failed before the container existed is
        // not the container's fault: the ordinary path gets its turn.
        let err = match (spare, &err) {
            (true, ContainerError::InitVanished | ContainerError::Io { .. }) => {
                info!(
                    error = %ember_stdx::error_chain(&err),
                    "a spare init failed; the container starts the ordinary way"
                );
                let mut partial = Partial::default();
                match self
                    .start_parts(&request, code, &mut partial, false, snap::Making::Ordinary)
                    .await
                {
                    Ok(done) => return Ok(done),
                    Err(err) => {
                        partial.undo().await;
                        err
                    }
                }
            }
            _ => err,
        };
        warn!(error = %ember_stdx::error_chain(&err), "container creation failed");
        Err(err)
    }

    async fn start_parts(
        self: &Arc<Self>,
        request: &CreateContainer,
        code: PathBuf,
        partial: &mut Partial,
        use_spare: bool,
        mut making: snap::Making<'_>,
    ) -> Result<(Arc<Container>, ContainerCreated), ContainerError> {
        let id = &request.container_id;
        let hierarchy = self.hierarchy()?.clone();
        let vm = hierarchy.root_limits().unwrap_or_default();
        let memory_limit_mb = plan::memory_mb(request.function.memory_mb, vm.memory_bytes);
        // Its init runs with the VM's quota, its invocations with its own (see `boost`).
        let own_cpu = plan::cpu_quota(request.cpu_millis, vm.cpu);
        let init_cpu = boost::init_quota(own_cpu, vm.cpu);
        let limits = Limits {
            memory_bytes: Some(u64::from(memory_limit_mb) << 20),
            cpu: Some(init_cpu.unwrap_or(own_cpu)),
            pids_max: Some(u64::from(request.pids_max)),
        };
        // A spare init is in a group of its own already: given the container's limits, both are
        // the container's (see `spare`). Else a group is made here and an init spawned below.
        let claimed_at = Instant::now();
        let cgroup_path = format!("c-{id}");
        // The function's part of its root; a pre-built spare's root takes it alone.
        let layers = self.layer_dirs(&request.function)?;
        let function_mounts = plan::function_mounts(
            &self.config.layout,
            &request.function.runtime,
            &code,
            &layers,
            request.function.ephemeral_storage_mb,
        );
        let claimed = match use_spare {
            true => {
                let prebuilt_ok = self
                    .spare_prep(&hierarchy)
                    .is_some_and(|prep| prep.serves(&function_mounts));
                self.spares
                    .claim(&hierarchy, &cgroup_path, &limits, prebuilt_ok)
            }
            false => None,
        };
        let mut prebuilt = false;
        let (cgroup, spare_init, spare_link) = match claimed {
            Some((cgroup, init, link, built)) => {
                prebuilt = built;
                (cgroup, Some(init), link.map(|link| *link))
            }
            None => {
                let cgroup_id = id.clone();
                let hierarchy = hierarchy.clone();
                let cgroup: Arc<dyn Cgroup> = tokio::task::spawn_blocking(move || {
                    let cgroup = hierarchy.create(&cgroup_path)?;
                    let cgroup: Arc<dyn Cgroup> = Arc::from(cgroup);
                    match cgroup.apply(&limits) {
                        Ok(()) => Ok(cgroup),
                        Err(err) => {
                            let _ = cgroup.destroy();
                            Err(err)
                        }
                    }
                })
                .await
                .map_err(|e| ContainerError::Task(e.to_string()))?
                .map_err(|e| ContainerError::Cgroup(cgroup_id, e))?;
                (cgroup, None, None)
            }
        };
        let from_spare = spare_init.is_some();
        partial.spare = from_spare;
        partial.cgroup = Some(cgroup.clone());
        partial.link = spare_link;
        debug!(?limits, "cgroup ready");

        let root_dir = self.config.state_dir.join("containers").join(id);
        // A pre-built spare's root is on the spare's directory (in its own mount namespace),
        // whose empty directory is made already.
        if !prebuilt {
            std::fs::create_dir_all(&root_dir).map_err(ContainerError::io(format!(
                "cannot create {}",
                root_dir.display()
            )))?;
            partial.root_dir = Some(root_dir.clone());
            let empty = self.config.layout.resolve(&self.config.layout.empty_dir);
            std::fs::create_dir_all(&empty).map_err(ContainerError::io(format!(
                "cannot create {}",
                empty.display()
            )))?;
        }

        let api = RuntimeApi::new(id.clone());
        api.set_restore(match making {
            snap::Making::Ordinary => Restore::None,
            snap::Making::Template(_) => Restore::Template,
            snap::Making::Restored(_) => Restore::Restored,
        });
        // Set before the runtime can run: its init's end (first `/next`, or a failure) gives the
        // container its own quota back, before any event is handed over.
        let cpu_boost = init_cpu.map(|_| {
            let until = tokio::time::Instant::now() + INIT_TIMEOUT;
            let boost = boost::CpuBoost::start(id, cgroup.clone(), own_cpu, until);
            let hook = boost.clone();
            api.on_init_end(move |end| hook.end(&format!("init ended: {end:?}")));
            boost
        });
        partial.cpu_boost = cpu_boost.clone();
        // The same in every container: each has a network namespace of its own.
        let runtime_api = plan::RUNTIME_API.to_string();

        let mut function = request.function.clone();
        function.memory_mb = memory_limit_mb;
        let log_stream = crate::env::new_log_stream_name(&function.version);
        let env = crate::env::container_env(&function, &runtime_api, &log_stream);
        let mut env = crate::env::with_credentials(env, request.credentials.as_ref());
        if let Some(network) = &self.config.network {
            env = crate::env::with_endpoint(env, &network.endpoint_url());
        }
        let mut exe = plan::bootstrap(&function.runtime, &code, &layers);
        let mut argv = vec![exe.display().to_string()];
        let (from_template, snap_role, snap_spec) = match &making {
            snap::Making::Ordinary => (
                self.launch_spec(request, &function, &env, &code, &layers),
                None,
                None,
            ),
            snap::Making::Template(_) => {
                // The runtime is what the bootstrap would execute, on the template's launcher.
                let minor = template::python_minor(&function.runtime).ok_or_else(|| {
                    ContainerError::Invalid("SnapStart templates are Python's".into())
                })?;
                env.insert(INITIALIZATION_TYPE.into(), snap::INITIALIZATION_TYPE.into());
                env = template::python_env(&env, minor, crate::env::TASK_ROOT);
                exe = PathBuf::from(format!("/var/lang/bin/python3.{minor}"));
                argv = vec![
                    exe.display().to_string(),
                    "-c".into(),
                    snap::SCRIPT.into(),
                    function.handler.clone(),
                ];
                (None, Some(plan::SnapRole::Template), None)
            }
            snap::Making::Restored(live) => {
                let minor = template::python_minor(&function.runtime).ok_or_else(|| {
                    ContainerError::Invalid("SnapStart templates are Python's".into())
                })?;
                env.insert(INITIALIZATION_TYPE.into(), snap::INITIALIZATION_TYPE.into());
                let seccomp = self.templates.seccomp().map_err(ContainerError::Template)?;
                let spec = snap::SnapSpec {
                    cwd: crate::env::TASK_ROOT.into(),
                    env: template::python_env(&env, minor, crate::env::TASK_ROOT),
                    seccomp,
                };
                let role = plan::SnapRole::Restored {
                    template_pid: live.first.as_raw(),
                    owner: request.uid,
                };
                (None, Some(role), Some(spec))
            }
        };
        let plan = InitPlan {
            container_id: id.clone(),
            root: root_dir.clone(),
            hostname: "localhost".into(),
            mounts: match prebuilt {
                true => function_mounts,
                false => {
                    let cgroup_view =
                        plan::cgroup_mounts(&hierarchy).map_err(ContainerError::io(format!(
                            "cannot list the VM's cgroup hierarchy at {}",
                            hierarchy.root().display()
                        )))?;
                    let mut mounts = plan::system_mounts(&self.config.layout, &cgroup_view);
                    mounts.extend(function_mounts);
                    mounts
                }
            },
            uid: request.uid,
            gid: request.gid,
            runtime_api: plan::RUNTIME_API,
            cwd: crate::env::TASK_ROOT.into(),
            argv,
            exe,
            env: env.into_iter().collect(),
            snap: snap_role,
        };
        let plan = serde_json::to_vec(&plan).map_err(|e| ContainerError::Invalid(e.to_string()))?;

        let (init, started) = match spare_init {
            Some(init) => (init, claimed_at),
            None => {
                let started = Instant::now();
                let init = spare::spawn_init(&self.config.init_exe, &self.reaper, false)
                    .map_err(ContainerError::io("cannot spawn the container's init"))?;
                // Into the container's cgroup before it reads its plan, so everything it does
                // is charged there.
                if let Err(err) = cgroup.add_task(init.pid) {
                    let _ = nix::sys::signal::kill(init.pid, nix::sys::signal::Signal::SIGKILL);
                    return Err(ContainerError::Cgroup(id.clone(), err));
                }
                (init, started)
            }
        };
        let spare::Spawned {
            control,
            log_read,
            log_write,
            ..
        } = init;
        // The template's copy of the log pipe, sent to it and closed here once the runtime has
        // its own; closed now when there is no template.
        let mut log_for_template =
            (from_template.is_some() || snap_spec.is_some()).then_some(log_write);

        let len = u32::try_from(plan.len())
            .map_err(|_| ContainerError::Invalid("the plan is too large".into()))?;
        if let snap::Making::Template(channel) = &making {
            // The template's fork channel rides on the plan's length (`SCM_RIGHTS`).
            send_with_fd(&control, &len.to_be_bytes(), channel)?;
        } else {
            (&control)
                .write_all(&len.to_be_bytes())
                .map_err(ContainerError::io("cannot send the plan"))?;
        }
        control
            .set_nonblocking(true)
            .map_err(ContainerError::io("cannot use the control socket"))?;
        let control = tokio::net::UnixStream::from_std(control)
            .map_err(ContainerError::io("cannot use the control socket"))?;
        let (read_half, mut write_half) = control.into_split();
        // How long the init took to report its namespaces made and the first process forked.
        let mut namespaced = Duration::ZERO;
        // How long the container's network took on this path (a spare's link is made ahead).
        let mut networked = Duration::ZERO;
        let handshake = async {
            write_half
                .write_all(&plan)
                .await
                .map_err(ContainerError::io("cannot send the plan"))?;
            let (first, listener) = match first_report(read_half.as_ref()).await? {
                (Report::Started { pid }, Some(listener)) => (Pid::from_raw(pid), listener),
                (Report::Started { .. }, None) => return Err(ContainerError::NoListener),
                (other, _) => return Err(unexpected(other)),
            };
            namespaced = started.elapsed();
            // Its link (a spare's is made already) and egress, before anything of it runs.
            if let Some(network) = &self.config.network {
                let at = Instant::now();
                let mut link = match partial.link.take() {
                    Some(link) => link,
                    None => network
                        .link(first.as_raw() as u32)
                        .await
                        .map_err(ContainerError::Network)?,
                };
                let applied = link.apply(request.egress).await;
                partial.link = Some(link);
                applied.map_err(ContainerError::Network)?;
                networked = at.elapsed();
            }
            // Watched before it may run, so its exit cannot go unseen.
            let exit = self.reaper.watch(first);
            // Served before the runtime runs; connections wait in the backlog meanwhile.
            let server = serve_runtime_api(&api, listener)?;
            let go = if from_template.is_some() || snap_spec.is_some() {
                b"t"
            } else {
                b"g"
            };
            write_half
                .write_all(go)
                .await
                .map_err(ContainerError::io("cannot start the container"))?;
            let mut reports = BufReader::new(read_half).lines();
            if let (Some(spec), snap::Making::Restored(live)) = (&snap_spec, &mut making) {
                match next_report(&mut reports).await {
                    Ok(Report::Built) => {}
                    Ok(other) => return Err(unexpected(other)),
                    Err(err) => return Err(err),
                }
                let log = log_for_template.take().ok_or_else(|| {
                    ContainerError::Invalid("no log pipe for the template".into())
                })?;
                let ids = (request.uid, request.gid);
                // Any failure fails this container: the caller starts it the ordinary way.
                let pid = snap::fork_into(live, first, &cgroup, log, spec, ids)
                    .await
                    .map_err(ContainerError::Snap)?;
                let mut how = vec![b'p'];
                how.extend_from_slice(&pid.to_be_bytes());
                write_half
                    .write_all(&how)
                    .await
                    .map_err(ContainerError::io("cannot start the container"))?;
            }
            if let Some((spec, path_dirs)) = from_template {
                match next_report(&mut reports).await {
                    Ok(Report::Built) => {}
                    Ok(other) => return Err(unexpected(other)),
                    Err(err) => return Err(err),
                }
                let log = log_for_template.take();
                let forked = self
                    .fork_from_template(&function.runtime, first, &cgroup, log, spec, path_dirs)
                    .await;
                let how = match forked {
                    Ok(pid) => {
                        debug!(runtime_pid = pid, "runtime forked from the template");
                        let mut how = vec![b'p'];
                        how.extend_from_slice(&pid.to_be_bytes());
                        how
                    }
                    Err(err) => {
                        info!(
                            reason = %ember_stdx::error_chain(&err),
                            "the runtime starts the ordinary way, not from the template"
                        );
                        vec![b'x']
                    }
                };
                write_half
                    .write_all(&how)
                    .await
                    .map_err(ContainerError::io("cannot start the container"))?;
            }
            // The rest of the start (PID 1's root, the runtime's exec: `Running`) is not waited
            // for here: `supervise` reads it, so that the host's `Invoke` is on its way while
            // it happens (see `Start`).
            Ok((first, exit, reports, server))
        };
        let timeout = self.config.start_timeout;
        let (first, first_exit, reports, server) = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| ContainerError::StartTimeout(timeout))??;
        drop(write_half);
        drop(log_for_template);
        let logs = Arc::new(
            LogPipe::new(log_read).map_err(ContainerError::io("cannot read the log pipe"))?,
        );
        tokio::spawn({
            let logs = logs.clone();
            async move { logs.run().await }
        });
        let (death_tx, death) = watch::channel(None);
        let link = partial.link.take();
        *partial = Partial::default();
        let container = Arc::new(Container {
            id: id.clone(),
            memory_limit_mb,
            cgroup,
            cpu_boost,
            api,
            server: Mutex::new(Some(server)),
            started,
            first,
            restored: matches!(making, snap::Making::Restored(_)),
            snap_template: match &making {
                snap::Making::Restored(live) => Some(live.container.id.clone()),
                _ => None,
            },
            logs,
            death,
            phase: Mutex::new(Phase::Idle),
            turn: Arc::new(tokio::sync::Mutex::new(())),
            ended_invocations: AtomicU64::new(0),
            freeze_idle: request.freeze_idle,
            frozen: AtomicBool::new(false),
            invoked: AtomicBool::new(false),
            killed: AtomicBool::new(false),
            oom_baseline: AtomicU64::new(0),
            last_stats: Mutex::new(Stats::default()),
            root_dir,
            link: Mutex::new(link),
            torn_down: tokio::sync::Mutex::new(false),
            fate: OnceLock::new(),
            start_failure: Mutex::new(None),
        });
        tokio::spawn(
            self.clone()
                .supervise(container.clone(), reports, first_exit, death_tx)
                .instrument(tracing::Span::current()),
        );
        info!(
            %runtime_api,
            memory_mb = memory_limit_mb,
            spare = from_spare,
            cgroup = %container.cgroup.path().display(),
            namespaces_ms = namespaced.as_secs_f64() * 1e3,
            network_ms = networked.as_secs_f64() * 1e3,
            start_ms = started.elapsed().as_secs_f64() * 1e3,
            "container started"
        );
        Ok((
            container,
            ContainerCreated {
                container_id: id.clone(),
                runtime_api,
            },
        ))
    }

    /// Follows a container until its first process is reaped, then records how it ended.
    async fn supervise(
        self: Arc<Self>,
        container: Arc<Container>,
        mut reports: Lines<BufReader<OwnedReadHalf>>,
        first_exit: oneshot::Receiver<ExitStatus>,
        death: watch::Sender<Option<Death>>,
    ) {
        self.await_running(&container, &mut reports).await;
        let mut runtime = None;
        // The socket ends when the container's first process does.
        while let Ok(Some(line)) = reports.next_line().await {
            match serde_json::from_str(&line) {
                Ok(Report::RuntimeExited { code, signal }) => {
                    runtime = Some(ExitStatus { code, signal })
                }
                _ => warn!(%line, "unexpected report from a container"),
            }
        }
        let first = first_exit.await.unwrap_or_default();
        let status = runtime.unwrap_or(first);
        let stats = container.cgroup.stats().ok();
        let abort = classify(
            status,
            stats.as_ref(),
            container.memory_limit_mb,
            container.oom_baseline.load(Ordering::Relaxed),
            container.killed.load(Ordering::Relaxed),
        );
        debug!(?status, ?abort, "container ended");
        death.send_replace(Some(Death {
            abort,
            stats,
            at: Instant::now(),
        }));
        self.settle(&container);
    }

    /// The end of a container's start, after `CreateContainer` was answered: PID 1 reports its
    /// runtime running (`Running`), or not executable (`ExecFailed`: the first invocation gets
    /// `Runtime.InvalidEntrypoint`), or its root not built (`SetupFailed`, its end, anything
    /// else, or nothing within the start's timeout: the container is killed, and its first
    /// invocation is refused with that error, as its creation was before; see `Start`).
    async fn await_running(
        &self,
        container: &Container,
        reports: &mut Lines<BufReader<OwnedReadHalf>>,
    ) {
        let timeout = self
            .config
            .start_timeout
            .saturating_sub(container.started.elapsed());
        let failure = match tokio::time::timeout(timeout, next_report(reports)).await {
            Ok(Ok(Report::Running)) => {
                debug!(
                    running_ms = ms(container.started.elapsed()),
                    "container's runtime running"
                );
                return;
            }
            Ok(Ok(Report::ExecFailed { error })) => {
                info!(%error, "the runtime cannot be executed");
                let payload = json!({"errorMessage": error, "errorType": INVALID_ENTRYPOINT});
                container
                    .api
                    .fail_init(INVALID_ENTRYPOINT, Bytes::from(payload.to_string()));
                return;
            }
            Ok(Ok(other)) => unexpected(other),
            Ok(Err(err)) => err,
            Err(_) => ContainerError::StartTimeout(self.config.start_timeout),
        };
        if container.fate.get().is_some() {
            // Destroyed (or shut down) while it started: that is why it ended, not a failure.
            return;
        }
        warn!(error = %ember_stdx::error_chain(&failure), "container creation failed");
        *container
            .start_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(failure);
        // Whatever is left of it goes, so that its death is seen (and its first invocation
        // refused) at once.
        container.killed.store(true, Ordering::Relaxed);
        let cgroup = container.cgroup.clone();
        if let Ok(Err(err)) = tokio::task::spawn_blocking(move || cgroup.kill_all()).await {
            warn!(error = %err, "cannot kill a container that failed to start");
        }
    }

    /// Deals with a container that died while idle; see the module docs.
    fn settle(self: &Arc<Self>, container: &Arc<Container>) {
        let Some(death) = container.death.borrow().clone() else {
            return;
        };
        {
            let mut phase = container.lock_phase();
            if *phase != Phase::Idle {
                return;
            }
            if container.invoked.load(Ordering::Relaxed) {
                *phase = Phase::Gone;
            }
        }
        let container = container.clone();
        if !container.invoked.load(Ordering::Relaxed) {
            // Kept for its first invocation to report; its resources go now.
            tokio::spawn(async move { container.teardown().await });
            return;
        }
        let reason = container.decide(gone_reason(&death.abort));
        info!(container_id = %container.id, ?reason, "container ended while idle");
        let this = self.clone();
        tokio::spawn(async move {
            container.teardown().await;
            this.forget(&container);
            let _ = this.events.send(Event::ContainerGone {
                container_id: container.id.clone(),
                reason,
            });
        });
    }

    /// Removes a torn-down container from the table, remembering how it ended. Containers stay
    /// in the table until their teardown is over, so that their id cannot be reused before.
    fn forget(&self, container: &Arc<Container>) {
        let reason = container.decide(GoneReason::Destroyed);
        let mut table = self.lock();
        if table
            .live
            .get(&container.id)
            .is_some_and(|c| Arc::ptr_eq(c, container))
        {
            table.live.remove(&container.id);
        }
        table.ended.retain(|(ended, _)| *ended != container.id);
        if table.ended.len() >= ENDED_KEPT {
            table.ended.pop_front();
        }
        table.ended.push_back((container.id.clone(), reason));
        if container.snap_template.is_some() {
            drop(table);
            // A retired template goes with its last environment.
            for template in self.snap.sweep(|id| self.has_environments(id)) {
                tokio::spawn(async move { template.teardown().await });
            }
        }
    }

    /// Whether a container forked from the SnapStart template `template` (its container id)
    /// still lives.
    fn has_environments(&self, template: &str) -> bool {
        self.lock()
            .live
            .values()
            .any(|c| c.snap_template.as_deref() == Some(template))
    }

    /// Runs one invocation; see the module docs.
    pub async fn invoke(self: &Arc<Self>, request: Invoke) -> Result<InvokeResult, ContainerError> {
        self.invoke_with(request, None).await
    }

    /// [`Containers::invoke`], with a response the runtime streams forwarded to `sink` as it
    /// comes (`Request::InvokeStream`).
    pub async fn invoke_with(
        self: &Arc<Self>,
        request: Invoke,
        sink: Option<ResponseSink>,
    ) -> Result<InvokeResult, ContainerError> {
        let container = self
            .lock()
            .live
            .get(&request.container_id)
            .cloned()
            .ok_or_else(|| ContainerError::NotFound(request.container_id.clone()))?;
        let turn = container.turn.clone().lock_owned().await;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight(&self.in_flight);
        let invocation = request.invocation;
        let request_id = invocation.request_id.clone();
        let first = !container.invoked.swap(true, Ordering::Relaxed);

        let died = {
            let mut phase = container.lock_phase();
            if *phase == Phase::Gone {
                return Err(ContainerError::NotFound(container.id.clone()));
            }
            let death = container.death.borrow().clone();
            *phase = if death.is_some() {
                Phase::Gone
            } else {
                Phase::Busy
            };
            death
        };
        if let Some(death) = died {
            // It ended before this invocation (during its init): this invocation reports how.
            container.decide(gone_reason(&death.abort));
            // Boxed, as below: the warm path's future need not hold a teardown.
            Box::pin(container.teardown()).await;
            self.forget(&container);
            if let Some(err) = container.take_start_failure() {
                return Err(err);
            }
            let outcome = container
                .api
                .init_error()
                .map(|(error_type, payload)| InvokeOutcome::InitError {
                    error_type,
                    payload,
                })
                .unwrap_or_else(|| death.abort.into());
            let stats = death.stats.unwrap_or_default();
            return Ok(InvokeResult {
                request_id,
                outcome,
                init_duration_ms: first
                    .then(|| ms(death.at.saturating_duration_since(container.started))),
                restored: container.restored,
                duration_ms: 0.0,
                memory_limit_mb: container.memory_limit_mb,
                max_memory_used_mb: stats.memory_peak_bytes.div_ceil(1 << 20),
                cpu_time_ms: stats.cpu_usage_usec as f64 / 1e3,
                cpu_throttled_ms: stats.cpu_throttled_usec as f64 / 1e3,
                logs: container.logs.take(),
            });
        }

        container.thaw();
        let before = if first {
            // A new group: its counters are the container's own, init included.
            Stats::default()
        } else {
            let _ = container.cgroup.reset_peak();
            *container
                .last_stats
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        };
        container
            .oom_baseline
            .store(before.oom_kills, Ordering::Relaxed);
        let start = Instant::now();
        let deadline = deadline(invocation.deadline_ms);
        // A runtime still in its init gets up to INIT_TIMEOUT of it outside the function's time,
        // as Lambda's Init phase does; the Runtime API moves the event's deadline on alike.
        let timer = async {
            let init_spent =
                match tokio::time::timeout(INIT_TIMEOUT, container.api.initialized()).await {
                    Ok(()) => start.elapsed(),
                    Err(_) => INIT_TIMEOUT,
                };
            tokio::time::sleep_until(deadline + init_spent).await;
        };
        let mut death = container.death.clone();
        let verdict = tokio::select! {
            biased;
            outcome = container.api.invoke_with(invocation, sink) => Verdict::Answered(outcome),
            died = async { death.wait_for(Option::is_some).await.ok().and_then(|d| d.clone()) } => {
                Verdict::Died(died)
            }
            () = timer => Verdict::TimedOut,
        };
        let end = Instant::now();
        if matches!(verdict, Verdict::Died(_)) && container.has_start_failure() {
            // Its start failed after its creation was answered: refused, as that creation
            // would have been.
            *container.lock_phase() = Phase::Gone;
            container.decide(GoneReason::Destroyed);
            Box::pin(container.teardown()).await;
            self.forget(&container);
            if let Some(err) = container.take_start_failure() {
                return Err(err);
            }
        }

        let (outcome, after) = match verdict {
            Verdict::Answered(outcome) => (outcome, container.cgroup.stats().ok()),
            Verdict::Died(death) => {
                let outcome = match container.api.init_error() {
                    Some((error_type, payload)) => InvokeOutcome::InitError {
                        error_type,
                        payload,
                    },
                    None => death
                        .as_ref()
                        .map_or(InvokeOutcome::ExitError(ExitStatus::default()), |d| {
                            d.abort.into()
                        }),
                };
                (outcome, death.and_then(|d| d.stats))
            }
            Verdict::TimedOut => {
                info!(request_id, "invocation timed out; killing the container");
                container.killed.store(true, Ordering::Relaxed);
                (InvokeOutcome::Timeout, container.cgroup.stats().ok())
            }
        };
        let reusable = matches!(
            outcome,
            InvokeOutcome::Ok { .. } | InvokeOutcome::FunctionError { .. }
        );
        if !reusable {
            *container.lock_phase() = Phase::Gone;
            container.decide(match &outcome {
                InvokeOutcome::Timeout => GoneReason::Timeout,
                InvokeOutcome::OutOfMemory => GoneReason::OutOfMemory,
                InvokeOutcome::ExitError(status) => GoneReason::Exited(*status),
                _ => GoneReason::Destroyed,
            });
            Box::pin(container.teardown()).await;
            self.forget(&container);
        }
        let logs = container.logs.take();
        let after = after.unwrap_or(before);
        let initialized = container.api.initialized_at();
        let result = InvokeResult {
            request_id,
            outcome,
            init_duration_ms: first.then(|| {
                ms(initialized
                    .unwrap_or(end)
                    .saturating_duration_since(container.started))
            }),
            restored: container.restored,
            duration_ms: ms(
                end.saturating_duration_since(initialized.map_or(start, |i| i.max(start)))
            ),
            memory_limit_mb: container.memory_limit_mb,
            max_memory_used_mb: after.memory_peak_bytes.div_ceil(1 << 20),
            cpu_time_ms: after.cpu_usage_usec.saturating_sub(before.cpu_usage_usec) as f64 / 1e3,
            cpu_throttled_ms: after
                .cpu_throttled_usec
                .saturating_sub(before.cpu_throttled_usec) as f64
                / 1e3,
            logs,
        };
        if reusable {
            *container
                .last_stats
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = after;
            *container.lock_phase() = Phase::Idle;
            // It may have died since it answered.
            self.settle(&container);
            if container.freeze_idle {
                // Frozen off the reply's path, once the container has stayed idle for
                // FREEZE_AFTER. An invocation that holds the turn then, or has ended since,
                // skips this freeze (the latter schedules its own).
                let ended = container.ended_invocations.fetch_add(1, Ordering::Relaxed) + 1;
                drop(turn);
                let this = self.clone();
                let container = container.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(FREEZE_AFTER).await;
                    let Ok(turn) = container.turn.clone().try_lock_owned() else {
                        return;
                    };
                    if container.ended_invocations.load(Ordering::Relaxed) == ended {
                        this.freeze(&container);
                    }
                    drop(turn);
                });
            }
        }
        Ok(result)
    }

    /// Freezes an idle container, unless it is gone or going. Under the phase lock, so that a
    /// teardown (which marks the container gone first) never sees a freeze after its thaw.
    fn freeze(&self, container: &Container) {
        if self.no_freezer.load(Ordering::Relaxed) {
            return;
        }
        self.freezer_anchor.get_or_init(|| {
            let hierarchy = self.hierarchy().ok()?;
            hierarchy
                .freezer_anchor(FREEZER_ANCHOR)
                .inspect_err(|err| debug!(error = %err, "no freezer anchor; freezes stay slow"))
                .ok()
                .flatten()
        });
        let phase = container.lock_phase();
        if *phase != Phase::Idle || container.death.borrow().is_some() {
            return;
        }
        match container.cgroup.freeze() {
            Ok(()) => container.frozen.store(true, Ordering::Relaxed),
            Err(err @ CgroupError::MissingController(_)) => {
                self.no_freezer.store(true, Ordering::Relaxed);
                warn!(error = %err, "containers cannot be frozen between invocations");
            }
            Err(err) => {
                warn!(container_id = %container.id, error = %err, "cannot freeze the container")
            }
        }
        drop(phase);
    }

    /// Waits for a container's runtime to finish its init (`AwaitInit`), at most `timeout`.
    /// Returns the init's duration in ms; the container is then warm, as if invoked once: its
    /// first invocation reports no init, and its death while idle is announced. An init that
    /// fails, dies or outlasts `timeout` destroys the container, and the error says why.
    pub async fn await_init(
        self: &Arc<Self>,
        id: &str,
        timeout: Duration,
    ) -> Result<f64, ContainerError> {
        let container = self
            .lock()
            .live
            .get(id)
            .cloned()
            .ok_or_else(|| ContainerError::NotFound(id.to_owned()))?;
        let turn = container.turn.clone().lock_owned().await;
        if container.invoked.load(Ordering::Relaxed) {
            return Err(ContainerError::Invalid(format!(
                "container {id} has already run its init"
            )));
        }
        // Its init keeps the VM's CPU (see `boost`) for as long as this waits for it; the
        // container's own share is back once the init has ended, however it ended.
        if let Some(boost) = &container.cpu_boost {
            boost.hold_until(tokio::time::Instant::now() + timeout);
        }
        let mut death = container.death.clone();
        let failure = tokio::select! {
            biased;
            () = container.api.initialized() => None,
            died = async { death.wait_for(Option::is_some).await.ok().and_then(|d| d.clone()) } => {
                Some(match died {
                    Some(death) => format!("the runtime ended during its init ({:?})", death.abort),
                    None => "the runtime ended during its init".to_owned(),
                })
            }
            () = tokio::time::sleep(timeout) => {
                container.killed.store(true, Ordering::Relaxed);
                Some(format!("the init did not finish within {timeout:?}"))
            }
        };
        let failure = failure.or_else(|| {
            let (error_type, payload) = container.api.init_error()?;
            let message = serde_json::from_slice::<serde_json::Value>(&payload)
                .ok()
                .and_then(|doc| doc.get("errorMessage")?.as_str().map(str::to_owned));
            Some(match message {
                Some(message) => format!("{error_type}: {message}"),
                None => error_type,
            })
        });
        let failure = failure.or_else(|| {
            container
                .api
                .initialized_at()
                .is_none()
                .then(|| "the runtime ended during its init".to_owned())
        });
        if let Some(failure) = failure {
            info!(container_id = id, %failure, "init failed; destroying the container");
            *container.lock_phase() = Phase::Gone;
            container.decide(GoneReason::Destroyed);
            container.teardown().await;
            self.forget(&container);
            if let Some(err) = container.take_start_failure() {
                return Err(err);
            }
            return Err(ContainerError::InitFailed(failure));
        }
        let initialized = container.api.initialized_at().unwrap_or_else(Instant::now);
        let init_ms = ms(initialized.saturating_duration_since(container.started));
        container.invoked.store(true, Ordering::Relaxed);
        if let Ok(stats) = container.cgroup.stats() {
            *container
                .last_stats
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = stats;
        }
        // It may have died since its init ended: now that it counts as invoked, that is announced.
        self.settle(&container);
        drop(turn);
        debug!(
            container_id = id,
            init_ms, "runtime initialized ahead of invocations"
        );
        Ok(init_ms)
    }

    /// Destroys a container: kills its processes, removes its cgroup. A container that already
    /// ended answers how it ended.
    pub async fn destroy(self: &Arc<Self>, id: &str) -> Result<GoneReason, ContainerError> {
        let container = {
            let table = self.lock();
            match table.live.get(id) {
                Some(container) => container.clone(),
                None => {
                    return table
                        .ended
                        .iter()
                        .rev()
                        .find(|(ended, _)| ended == id)
                        .map(|(_, reason)| reason.clone())
                        .ok_or_else(|| ContainerError::NotFound(id.to_owned()))
                }
            }
        };
        *container.lock_phase() = Phase::Gone;
        let reason = container.decide(GoneReason::Destroyed);
        container.teardown().await;
        self.forget(&container);
        info!(container_id = id, ?reason, "container destroyed");
        Ok(reason)
    }

    /// Destroys every container.
    pub async fn shutdown(&self) {
        self.spares.close().await;
        let all: Vec<Arc<Container>> = {
            let mut table = self.lock();
            table.live.drain().map(|(_, c)| c).collect()
        };
        let teardowns = all.iter().map(|container| {
            *container.lock_phase() = Phase::Gone;
            container.teardown()
        });
        futures_util::future::join_all(teardowns).await;
        // Last: a SnapStart template's PID namespace holds its environments'.
        let templates = self.snap.drain().await;
        futures_util::future::join_all(templates.iter().map(|t| t.teardown())).await;
    }
}

impl Container {
    /// Records how the container ended, unless that was decided already; returns the decision.
    fn decide(&self, reason: GoneReason) -> GoneReason {
        self.fate.get_or_init(|| reason).clone()
    }

    /// Thaws the container if the agent froze it: one write through a descriptor kept open.
    fn thaw(&self) {
        if !self.frozen.swap(false, Ordering::Relaxed) {
            return;
        }
        if let Err(err) = self.cgroup.thaw() {
            // It stays frozen: the invocation times out and the container is destroyed.
            warn!(container_id = %self.id, error = %err, "cannot thaw the container");
        }
    }

    /// Why its start failed after its creation was answered, if it did (taken once).
    fn take_start_failure(&self) -> Option<ContainerError> {
        self.start_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn has_start_failure(&self) -> bool {
        self.start_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    fn lock_phase(&self) -> MutexGuard<'_, Phase> {
        // A plain value: a panicking holder cannot tear it.
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Kills every process of the container, waits for them, and releases the cgroup, the
    /// Runtime API and the root's mount point. Idempotent; concurrent callers all wait for it.
    async fn teardown(&self) {
        let mut done = self.torn_down.lock().await;
        if *done {
            return;
        }
        self.killed.store(true, Ordering::Relaxed);
        if let Some(boost) = &self.cpu_boost {
            boost.cancel();
        }
        self.api.close();
        let cgroup = self.cgroup.clone();
        match tokio::task::spawn_blocking(move || cgroup.kill_all()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                warn!(container_id = %self.id, error = %err, "cannot kill the container")
            }
            Err(err) => warn!(container_id = %self.id, error = %err, "kill task failed"),
        }
        // Its first process was the last to go; once reaped, the cgroup can be removed.
        let mut death = self.death.clone();
        let wait = async { death.wait_for(Option::is_some).await.is_ok() };
        let reaped = tokio::time::timeout(ember_sandbox::cgroup::KILL_TIMEOUT, wait).await;
        if reaped != Ok(true) {
            warn!(container_id = %self.id, "the container's end was not seen");
        }
        let server = self
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(server) = server {
            let _ = tokio::time::timeout(Duration::from_secs(1), server.shutdown()).await;
        }
        let cgroup = self.cgroup.clone();
        match tokio::task::spawn_blocking(move || cgroup.destroy()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                warn!(container_id = %self.id, error = %err, "cannot remove the container's cgroup")
            }
            Err(err) => warn!(container_id = %self.id, error = %err, "cgroup task failed"),
        }
        let _ = std::fs::remove_dir(&self.root_dir);
        let link = self
            .link
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // The link goes with the container's network namespace, now empty (see
        // `net::ContainerLink`'s drop); its addresses are freed here.
        drop(link);
        *done = true;
        debug!(container_id = %self.id, "container torn down");
    }
}

/// What a failed creation has made so far, undone by [`Partial::undo`].
#[derive(Debug, Default)]
struct Partial {
    /// Whether the init is a claimed spare's.
    spare: bool,
    cgroup: Option<Arc<dyn Cgroup>>,
    cpu_boost: Option<Arc<boost::CpuBoost>>,
    root_dir: Option<PathBuf>,
    link: Option<crate::net::ContainerLink>,
}

impl Partial {
    async fn undo(self) {
        // Its link goes with the init's network namespace; its addresses are freed here.
        drop(self.link);
        if let Some(boost) = self.cpu_boost {
            boost.cancel();
        }
        if let Some(cgroup) = self.cgroup {
            let path = cgroup.path().to_path_buf();
            match tokio::task::spawn_blocking(move || cgroup.destroy()).await {
                Ok(Ok(())) => {}
                other => {
                    warn!(path = %path.display(), ?other, "cannot remove a container's cgroup")
                }
            }
        }
        if let Some(dir) = self.root_dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// `AWS_LAMBDA_INITIALIZATION_TYPE`, which a SnapStart container's runtime sees as `snap-start`.
const INITIALIZATION_TYPE: &str = "AWS_LAMBDA_INITIALIZATION_TYPE";

/// Writes `bytes` on the (blocking) control socket with `fd` attached (`SCM_RIGHTS`).
fn send_with_fd(
    control: &std::os::unix::net::UnixStream,
    bytes: &[u8],
    fd: &OwnedFd,
) -> Result<(), ContainerError> {
    use std::os::fd::AsFd;
    let fds = [fd.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut ancillary = rustix::net::SendAncillaryBuffer::new(&mut space);
    ancillary.push(rustix::net::SendAncillaryMessage::ScmRights(&fds));
    let sent = rustix::net::sendmsg(
        control,
        &[std::io::IoSlice::new(bytes)],
        &mut ancillary,
        rustix::net::SendFlags::empty(),
    )
    .map_err(|e| ContainerError::io("cannot send the plan")(e.into()))?;
    (&*control)
        .write_all(&bytes[sent..])
        .map_err(ContainerError::io("cannot send the plan"))
}

/// Decrements the in-flight count when an invocation ends, however it ends.
struct InFlight<'a>(&'a AtomicU32);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn next_report(
    reports: &mut Lines<BufReader<OwnedReadHalf>>,
) -> Result<Report, ContainerError> {
    let line = reports
        .next_line()
        .await
        .map_err(ContainerError::io("cannot read the container's reports"))?
        .ok_or(ContainerError::InitVanished)?;
    let report: Report =
        serde_json::from_str(&line).map_err(|_| ContainerError::UnexpectedReport(line))?;
    match report {
        Report::SetupFailed { stage, error } => Err(ContainerError::Setup { stage, error }),
        report => Ok(report),
    }
}

/// Reads the first report of a container's init, and the descriptor sent with it (the Runtime
/// API's listening socket, with [`Report::Started`]). Reads up to the line's end and no further:
/// the init writes nothing more until the agent's go, so no later report is swallowed here.
async fn first_report(
    control: &tokio::net::UnixStream,
) -> Result<(Report, Option<OwnedFd>), ContainerError> {
    let mut line = Vec::new();
    let mut fd = None;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    while !line.ends_with(b"\n") {
        let mut buf = [0u8; 512];
        let mut ancillary = RecvAncillaryBuffer::new(&mut space);
        let received = control
            .async_io(Interest::READABLE, || {
                rustix::net::recvmsg(
                    control,
                    &mut [IoSliceMut::new(&mut buf)],
                    &mut ancillary,
                    RecvFlags::CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)
            })
            .await
            .map_err(ContainerError::io("cannot read the container's reports"))?;
        for message in ancillary.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                // Any descriptor beyond the first is closed as it drops.
                for received in fds {
                    fd.get_or_insert(received);
                }
            }
        }
        if received.bytes == 0 {
            return Err(ContainerError::InitVanished);
        }
        line.extend_from_slice(&buf[..received.bytes]);
        if line.len() > MAX_REPORT {
            return Err(ContainerError::UnexpectedReport(format!(
                "a report of over {MAX_REPORT} bytes"
            )));
        }
    }
    let text = String::from_utf8_lossy(&line);
    let report: Report = serde_json::from_str(text.trim_end())
        .map_err(|_| ContainerError::UnexpectedReport(text.trim_end().to_owned()))?;
    match report {
        Report::SetupFailed { stage, error } => Err(ContainerError::Setup { stage, error }),
        report => Ok((report, fd)),
    }
}

/// Serves a container's Runtime API on the listening socket its init made in the container's
/// network namespace. The agent is not in that namespace, and needs not be: `accept` works on
/// the socket wherever it is called from.
fn serve_runtime_api(
    api: &RuntimeApi,
    listener: OwnedFd,
) -> Result<RuntimeApiServer, ContainerError> {
    let listener = std::net::TcpListener::from(listener);
    listener
        .set_nonblocking(true)
        .map_err(ContainerError::io("cannot use the Runtime API's socket"))?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(ContainerError::io("cannot use the Runtime API's socket"))?;
    RuntimeApiServer::serve(api.clone(), listener).map_err(ContainerError::RuntimeApi)
}

fn unexpected(report: Report) -> ContainerError {
    ContainerError::UnexpectedReport(format!("{report:?}"))
}

/// How the runtime's end counts: an OOM kill if the cgroup counted one since `oom_baseline`, or
/// if the runtime died of SIGKILL with its memory at the limit (v1 counts a kill only in the
/// group whose limit was hit); else its exit status. A death the agent caused is never an OOM.
fn classify(
    status: ExitStatus,
    stats: Option<&Stats>,
    limit_mb: u32,
    oom_baseline: u64,
    killed_by_agent: bool,
) -> Abort {
    if let (Some(stats), false) = (stats, killed_by_agent) {
        let limit = u64::from(limit_mb) << 20;
        let at_limit = stats.memory_peak_bytes + (1 << 20) >= limit;
        if stats.oom_kills > oom_baseline || (status.signal == Some(SIGKILL) && at_limit) {
            return Abort::OutOfMemory;
        }
    }
    Abort::Exited(status)
}

fn gone_reason(abort: &Abort) -> GoneReason {
    match abort {
        Abort::Timeout => GoneReason::Timeout,
        Abort::OutOfMemory => GoneReason::OutOfMemory,
        Abort::Exited(status) => GoneReason::Exited(*status),
    }
}

/// The instant of an epoch-milliseconds deadline (now, if it has passed).
fn deadline(deadline_ms: u64) -> tokio::time::Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    tokio::time::Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms))
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream as StdUnixStream;

    use super::*;

    fn stats(peak_mb: u64, oom_kills: u64) -> Stats {
        Stats {
            memory_peak_bytes: peak_mb << 20,
            oom_kills,
            ..Stats::default()
        }
    }

    #[test]
    fn outcomes_of_a_dead_runtime() {
        let exited = |code| ExitStatus {
            code: Some(code),
            signal: None,
        };
        let signaled = |signal| ExitStatus {
            code: None,
            signal: Some(signal),
        };
        let oom = Abort::OutOfMemory;
        // (status, stats, oom baseline, killed by the agent, verdict)
        let cases = [
            (
                exited(1),
                Some(stats(10, 0)),
                0,
                false,
                Abort::Exited(exited(1)),
            ),
            (signaled(9), Some(stats(128, 1)), 0, false, oom),
            // The OOM killer took a child; the runtime exited on its own.
            (exited(1), Some(stats(128, 1)), 0, false, oom),
            // An OOM kill of an earlier invocation does not count again.
            (
                exited(1),
                Some(stats(20, 1)),
                1,
                false,
                Abort::Exited(exited(1)),
            ),
            // v1, the VM's limit was hit: no kill counted here, but SIGKILL at the limit.
            (signaled(9), Some(stats(128, 0)), 0, false, oom),
            (signaled(9), Some(stats(127, 0)), 0, false, oom),
            (
                signaled(9),
                Some(stats(64, 0)),
                0,
                false,
                Abort::Exited(signaled(9)),
            ),
            (
                signaled(15),
                Some(stats(128, 0)),
                0,
                false,
                Abort::Exited(signaled(15)),
            ),
            (
                signaled(9),
                Some(stats(128, 1)),
                0,
                true,
                Abort::Exited(signaled(9)),
            ),
            (signaled(9), None, 0, false, Abort::Exited(signaled(9))),
        ];
        for (status, stats, baseline, killed, want) in cases {
            assert_eq!(
                classify(status, stats.as_ref(), 128, baseline, killed),
                want,
                "{status:?} {stats:?} baseline {baseline} killed {killed}"
            );
        }
    }

    /// Sends `report` as `container-init` does, with `fd` attached.
    fn send_report(to: &StdUnixStream, report: &Report, fd: Option<std::os::fd::BorrowedFd<'_>>) {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let mut line = serde_json::to_vec(report).unwrap();
        line.push(b'\n');
        let fds: Vec<_> = fd.into_iter().collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        }
        rustix::net::sendmsg(
            to,
            &[io::IoSlice::new(&line)],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
    }

    fn agent_end(socket: StdUnixStream) -> tokio::net::UnixStream {
        socket.set_nonblocking(true).unwrap();
        tokio::net::UnixStream::from_std(socket).unwrap()
    }

    #[tokio::test]
    async fn the_first_report_brings_the_runtime_apis_socket() {
        use std::os::fd::AsFd as _;
        let (agent, init) = StdUnixStream::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        send_report(&init, &Report::Started { pid: 7 }, Some(listener.as_fd()));
        drop(listener);
        // The next report, sent after the agent's go, is left for the line reader.
        send_report(&init, &Report::Running, None);
        let agent = agent_end(agent);
        let (report, fd) = first_report(&agent).await.unwrap();
        assert_eq!(report, Report::Started { pid: 7 });
        let listener = std::net::TcpListener::from(fd.expect("a descriptor"));
        assert_eq!(listener.local_addr().unwrap(), addr);
        // Still listening, though the sender closed its copy.
        std::net::TcpStream::connect(addr).unwrap();
        let (read_half, _write_half) = agent.into_split();
        let mut rest = BufReader::new(read_half).lines();
        assert_eq!(next_report(&mut rest).await.unwrap(), Report::Running);
    }

    #[tokio::test]
    async fn a_failed_or_vanished_init_is_an_error() {
        let (agent, init) = StdUnixStream::pair().unwrap();
        let failed = Report::SetupFailed {
            stage: "bringing up the container's loopback".into(),
            error: "EPERM".into(),
        };
        send_report(&init, &failed, None);
        let err = first_report(&agent_end(agent)).await.unwrap_err();
        assert!(
            matches!(&err, ContainerError::Setup { stage, .. } if stage.contains("loopback")),
            "{err:?}"
        );

        let (agent, init) = StdUnixStream::pair().unwrap();
        drop(init);
        let err = first_report(&agent_end(agent)).await.unwrap_err();
        assert!(matches!(err, ContainerError::InitVanished), "{err:?}");
    }

    #[test]
    fn deadlines_in_the_past_are_now() {
        let now = tokio::time::Instant::now();
        assert!(deadline(0) <= now + Duration::from_millis(1));
        let epoch_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let later = deadline(epoch_ms + 60_000);
        assert!(later > now + Duration::from_secs(59), "{:?}", later - now);
    }

    #[test]
    fn gone_reasons_follow_the_abort() {
        let status = ExitStatus {
            code: Some(2),
            signal: None,
        };
        assert_eq!(
            gone_reason(&Abort::Exited(status)),
            GoneReason::Exited(status)
        );
        assert_eq!(gone_reason(&Abort::OutOfMemory), GoneReason::OutOfMemory);
        assert_eq!(gone_reason(&Abort::Timeout), GoneReason::Timeout);
    }
}
