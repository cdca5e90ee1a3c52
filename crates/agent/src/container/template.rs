//! Runtime templates: per Python runtime, one process of this VM with the interpreter started
//! and awslambdaric imported, from which new containers' runtimes are forked instead of started
//! afresh (SOCK's zygotes; see ARCHITECTURE.md, "Runtime templates", for the security argument).
//! Node.js runtimes have templates too, through the same machinery: what differs is
//! [`super::node_template`]'s.
//!
//! # The template
//!
//! [`Templates::prepare`] (the host's `PrepareTemplate`) starts it: this binary in its
//! `runtime-template` mode ([`init::template_main`](super::init::template_main)) lays out a
//! private mount namespace like a container's runtime view (`/var/lang`, `/var/runtime`, an
//! empty `/var/task`, the system directories: [`plan::mounts`]) so that every module path and
//! `sys.path` entry is the one a container has, then executes the runtime's interpreter as root
//! on [`SCRIPT`] with the startup environment of a fresh start ([`template_env`]). The script
//! imports awslambdaric and waits on its control socket. It runs no function code, ever, and
//! holds no function's data: it reads only a request's header (which descriptors come with it);
//! the launch spec, with the function's environment, is read by its forked child.
//!
//! # A container from the template
//!
//! The container is built as ever (`container-init`, its PID 1 builds the root and pivots);
//! then, instead of forking and executing the bootstrap, PID 1 waits while the agent sends the
//! template the container's namespaces, its cgroup's `cgroup.procs` files, its log pipe and a
//! [`LaunchSpec`]. The template forks; the child joins the cgroup, reads the spec, enters the
//! namespaces and forks twice, so that the runtime's parent exits inside the container's PID
//! namespace and the runtime is re-parented to PID 1, which reaps and reports it as an exec'd
//! runtime. The runtime then becomes what the ordinary start's exec would have made (session,
//! descriptors, limits, cwd, `/proc/self/{cmdline,environ}`, uid/gid without capabilities,
//! `no_new_privs`, the seccomp filter last) and runs awslambdaric's main under the function's
//! environment.
//!
//! # When not
//!
//! A container starts the ordinary way, logged, when: no template was prepared for its runtime
//! (or the runtime has none: only `python3.N` runtimes under Ember's own bootstrap do); the
//! template died (it is restarted); the function's environment sets a variable the interpreter
//! reads at its start to a value the template did not start with ([`affects_startup`]); its code
//! or layers hold a module the template has imported (a fresh start would import theirs); or
//! any step fails.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, BufRead, BufReader, IoSlice, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use ember_protocol::ExitStatus;
use nix::unistd::Pid;
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::node_template::Family;
use super::plan::{self, Layout, Mount, TemplatePlan};
use crate::reaper::Reaper;

/// The template's program, run by the runtime's interpreter with `-c`: embedded here, not
/// written into the runtime directory, so that it is always the version this agent speaks
/// to, and no file of it shows in a function's `/var/runtime`. `enter.py` (the steps of
/// entering a container, shared with the SnapStart template's [`super::snap::SCRIPT`]) comes
/// first, in the same program.
pub const SCRIPT: &str = concat!(include_str!("enter.py"), include_str!("template.py"));

/// How long a template may take to start (its imports).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long forking a runtime into a container may take before the template is given up.
const FORK_TIMEOUT: Duration = Duration::from_secs(5);
/// The most descriptors one request carries: six namespaces, a `cgroup.procs` file per v1
/// controller, the log pipe.
const MAX_FDS: usize = 32;
/// A template that dies sooner than this after its start is started again only once this long
/// has passed since its start.
const QUICK_DEATH: Duration = Duration::from_secs(5);
/// How many starts in a row may fail (the process killed while it imports, say) before a
/// runtime's template is left alone until the host prepares it again; each retry waits
/// [`QUICK_DEATH`].
const START_RETRIES: u32 = 3;
/// The namespaces a forked runtime enters, by their `/proc/<pid>/ns` names.
pub const NAMESPACES: &[&str] = &["cgroup", "ipc", "uts", "net", "pid", "mnt"];

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{0} has no runtime template (only python3.N and nodejsN.x runtimes do)")]
    Unsupported(String),
    #[error("the VM has no {0}")]
    Missing(String),
    #[error("{0}'s bootstrap is not the one runtime templates are made for")]
    OtherBootstrap(String),
    #[error("no template was prepared for {0}")]
    NotPrepared(String),
    #[error("the template of {0} is not running (it is restarted)")]
    Dead(String),
    #[error("{0}")]
    Ineligible(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the template did not start: {0}")]
    Start(String),
    #[error("the template failed: {0}")]
    Failed(String),
    #[error("a blocking task failed: {0}")]
    Task(String),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> TemplateError {
    let what = what.into();
    move |source| TemplateError::Io { what, source }
}

/// What the forked runtime becomes, sent to the template's child (never to the template).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub uid: u32,
    pub gid: u32,
    pub cwd: String,
    /// What a fresh start's `/proc/self/cmdline` shows ([`fresh_argv`]); `sys.argv` follows.
    pub argv: Vec<String>,
    /// The environment the ordinary start's exec of the interpreter gets ([`python_env`]).
    pub env: BTreeMap<String, String>,
    /// `resource` module names to (soft, hard).
    pub rlimits: BTreeMap<String, (u64, u64)>,
    /// The container's seccomp programs, hex of their `sock_filter`s, installed in order.
    pub seccomp: Vec<String>,
}

/// The Python minor version of a `python3.N` runtime.
pub fn python_minor(runtime: &str) -> Option<u32> {
    runtime.strip_prefix("python3.")?.parse().ok()
}

/// The bootstrap a Python runtime's start is modelled on: the one `ember-runtimes` provisions
/// ([`ember_protocol::bootstrap::python`]). A runtime directory with another bootstrap gets no
/// template, as what its exec would do is not known.
pub fn expected_bootstrap(minor: u32) -> String {
    ember_protocol::bootstrap::python(minor)
}

/// The environment the interpreter gets when [`expected_bootstrap`] is executed with `env` in
/// `cwd`: what the script exports, and the `PWD` the shell (dash) exports.
pub fn python_env(
    env: &BTreeMap<String, String>,
    minor: u32,
    cwd: &str,
) -> BTreeMap<String, String> {
    let mut out = env.clone();
    let nonempty = |key: &str| env.get(key).filter(|v| !v.is_empty()).cloned();
    let ld = nonempty("LD_LIBRARY_PATH");
    let has_lang = ld
        .as_deref()
        .is_some_and(|ld| ld.split(':').any(|p| p == "/var/lang/lib"));
    if !has_lang {
        let value = match &ld {
            Some(ld) => format!("/var/lang/lib:{ld}"),
            None => "/var/lang/lib".to_owned(),
        };
        out.insert("LD_LIBRARY_PATH".into(), value);
    }
    let task = nonempty("LAMBDA_TASK_ROOT").unwrap_or_else(|| "/var/task".into());
    let runtime = nonempty("LAMBDA_RUNTIME_DIR").unwrap_or_else(|| "/var/runtime".into());
    let mut path =
        format!("{task}:/opt/python/lib/python3.{minor}/site-packages:/opt/python:{runtime}");
    if let Some(own) = nonempty("PYTHONPATH") {
        path = format!("{path}:{own}");
    }
    out.insert("PYTHONPATH".into(), path);
    let execution =
        nonempty("AWS_EXECUTION_ENV").unwrap_or_else(|| format!("AWS_Lambda_python3.{minor}"));
    out.insert("AWS_EXECUTION_ENV".into(), execution);
    out.insert("PWD".into(), cwd.to_owned());
    out
}

/// Whether a variable can change what the interpreter (or the dynamic loader, or libc) does
/// at its start, before any function code runs: a container whose value differs from the
/// template's cannot be forked from it.
pub fn affects_startup(name: &str) -> bool {
    const PREFIXES: &[&str] = &["PYTHON", "LD_", "LC_", "MALLOC_", "GLIBC_"];
    const NAMES: &[&str] = &["LANG", "LANGUAGE", "TZ", "HOME", "TMPDIR", "SSL_CERT_FILE"];
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name)
}

/// The variables of `env` that [`affect the start`](affects_startup).
pub fn startup_env(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    vars_where(env, affects_startup)
}

/// The variables of `env` whose names `keep` accepts (a runtime's startup variables).
pub(crate) fn vars_where(
    env: &BTreeMap<String, String>,
    keep: fn(&str) -> bool,
) -> BTreeMap<String, String> {
    env.iter()
        .filter(|(k, _)| keep(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The environment a template of python3.`minor` starts with: the startup variables of a fresh
/// start of a function that sets none of its own.
pub fn template_env(minor: u32) -> BTreeMap<String, String> {
    let env = fresh_container_env(format!("python3.{minor}"), 0);
    startup_env(&python_env(&env, minor, crate::env::TASK_ROOT))
}

/// The environment the agent gives a container of `runtime` and `memory_mb` whose function sets
/// no variables of its own: what a runtime template's start is measured against (Python's and
/// Node.js's [`template_env`], `node_template::template_env`).
pub(crate) fn fresh_container_env(runtime: String, memory_mb: u32) -> BTreeMap<String, String> {
    let function = ember_protocol::FunctionSpec {
        name: "template".into(),
        arn: String::new(),
        version: "$LATEST".into(),
        handler: String::new(),
        runtime,
        region: String::new(),
        environment: BTreeMap::new(),
        memory_mb,
        timeout_ms: 0,
        ephemeral_storage_mb: 0,
        code: ember_protocol::CodeSource::Directory { path: "/".into() },
        layers: Vec::new(),
    };
    crate::env::container_env(&function, "", "")
}

/// Why a container whose interpreter would get `env` cannot be forked from a template that
/// started with `template`: the first startup variable that differs.
pub fn startup_mismatch(
    env: &BTreeMap<String, String>,
    template: &BTreeMap<String, String>,
) -> Option<String> {
    first_difference(&startup_env(env), template, "the interpreter")
}

/// The first startup variable in which a container's `own` startup variables and a template's
/// differ, as the reason it cannot be forked from it (`reader`: the program that reads them).
pub(crate) fn first_difference(
    own: &BTreeMap<String, String>,
    template: &BTreeMap<String, String>,
    reader: &str,
) -> Option<String> {
    own.keys()
        .chain(template.keys())
        .find(|k| own.get(*k) != template.get(*k))
        .map(|k| format!("the function's environment sets {k}, which {reader} reads at its start"))
}

/// A fresh start's command line: what the bootstrap executes.
pub fn fresh_argv(minor: u32, handler: &str) -> Vec<String> {
    vec![
        format!("/var/lang/bin/python3.{minor}"),
        "-m".into(),
        "awslambdaric".into(),
        handler.into(),
    ]
}

/// The module name an entry of a `sys.path` directory would be imported as: `app.py`,
/// `native.cpython-312-x86_64-linux-gnu.so` and a directory `pkg` name `app`, `native`, `pkg`.
fn module_name(entry: &str) -> &str {
    entry.split('.').next().unwrap_or(entry)
}

/// The first module the template has imported (`modules`, top-level names) that an entry of
/// one of `dirs` (the function's `sys.path` directories ahead of the runtime's) would shadow
/// in a fresh start.
pub fn shadowed(modules: &[String], dirs: &[PathBuf]) -> Option<String> {
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let module = module_name(name);
            if !module.is_empty() && modules.iter().any(|m| m == module) {
                return Some(format!(
                    "{} holds {name}, which shadows the module {module} the template has imported",
                    dir.display()
                ));
            }
        }
    }
    None
}

/// The directories of a container's `sys.path` that come before the runtime's own (its code,
/// and its layers' `python` directories), as VM paths.
pub fn function_path_dirs(code: &Path, layers: &[PathBuf], minor: u32) -> Vec<PathBuf> {
    let mut dirs = vec![code.to_path_buf()];
    for layer in layers {
        dirs.push(layer.join(format!("python/lib/python3.{minor}/site-packages")));
        dirs.push(layer.join("python"));
    }
    dirs
}

/// Where templates come from in the VM.
#[derive(Debug, Clone)]
pub struct TemplateConfig {
    pub layout: Layout,
    /// Writable state; templates' mount points go under `templates/`.
    pub state_dir: PathBuf,
    /// This binary, run in its `runtime-template` mode.
    pub exe: PathBuf,
}

/// The VM's runtime templates, one per runtime at most.
#[derive(Debug)]
pub struct Templates {
    config: TemplateConfig,
    reaper: Arc<Reaper>,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    /// Runtimes whose template runs: only their containers try it (a container never waits
    /// for a template to start).
    ready: Mutex<HashSet<String>>,
    seccomp: OnceLock<Result<Vec<String>, String>>,
    /// Per Node.js runtime, the memory size its template is for (its heap limits).
    node_memory: Mutex<HashMap<String, u32>>,
}

#[derive(Debug, Default)]
struct Slot {
    live: Option<Live>,
    /// Starts that failed since the last one that succeeded.
    failed_starts: u32,
}

#[derive(Debug)]
struct Live {
    pid: Pid,
    /// `None` while a request is being exchanged on it.
    control: Option<StdUnixStream>,
    /// Set when the process has exited (the watcher of [`Templates::watch`] sees it first).
    exited: Arc<AtomicBool>,
    /// Its exit status, until [`Templates::watch`] takes it.
    exit: Option<oneshot::Receiver<ExitStatus>>,
    started: Instant,
    env: BTreeMap<String, String>,
    modules: Vec<String>,
    rss_mb: u64,
}

impl Live {
    fn alive(&mut self) -> bool {
        if self.exited.load(Ordering::Acquire) {
            return false;
        }
        match self.exit.as_mut().map(oneshot::Receiver::try_recv) {
            Some(Ok(_) | Err(oneshot::error::TryRecvError::Closed)) => {
                self.exited.store(true, Ordering::Release);
                false
            }
            Some(Err(oneshot::error::TryRecvError::Empty)) | None => true,
        }
    }

    fn kill(&self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// What the template answers, one JSON line.
#[derive(Debug, Deserialize)]
struct Answer {
    #[serde(default)]
    ready: bool,
    #[serde(default)]
    modules: Vec<String>,
    pid: Option<i32>,
    error: Option<String>,
}

/// The descriptors of one fork, each with the role the template knows it by.
pub type Fds = Vec<(&'static str, OwnedFd)>;

impl Templates {
    pub fn new(config: TemplateConfig, reaper: Arc<Reaper>) -> Self {
        Self {
            config,
            reaper,
            slots: Mutex::default(),
            ready: Mutex::default(),
            seccomp: OnceLock::new(),
            node_memory: Mutex::default(),
        }
    }

    fn slot(&self, runtime: &str, create: bool) -> Option<Arc<tokio::sync::Mutex<Slot>>> {
        // Inserts and lookups only: a panicking holder cannot tear the map.
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if create {
            return Some(slots.entry(runtime.to_owned()).or_default().clone());
        }
        slots.get(runtime).cloned()
    }

    /// Whether `runtime`'s template runs (containers of it then try it).
    pub fn prepared(&self, runtime: &str) -> bool {
        self.lock_ready().contains(runtime)
    }

    fn set_ready(&self, runtime: &str, ready: bool) {
        let mut set = self.lock_ready();
        if ready {
            set.insert(runtime.to_owned());
        } else {
            set.remove(runtime);
        }
    }

    fn lock_ready(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // Inserts and removals only: a panicking holder cannot tear the set.
        self.ready.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The container seccomp filter's programs, as [`LaunchSpec::seccomp`] carries them.
    pub fn seccomp(&self) -> Result<Vec<String>, TemplateError> {
        self.seccomp
            .get_or_init(|| {
                ember_sandbox::seccomp::container_filter()
                    .map(|f| f.programs().iter().map(hex::encode).collect())
                    .map_err(|e| ember_stdx::error_chain(&e))
            })
            .clone()
            .map_err(TemplateError::Failed)
    }

    /// The memory size `runtime`'s (Node.js) template is for.
    fn node_memory(&self, runtime: &str) -> u32 {
        // Inserts and reads only: a panicking holder cannot tear the map.
        let map = self
            .node_memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(runtime)
            .copied()
            .unwrap_or(super::node_template::DEFAULT_MEMORY_MB)
    }

    /// Has `runtime`'s (Node.js) template serve `memory_mb` from its next start.
    pub fn set_node_memory(&self, runtime: &str, memory_mb: u32) {
        let mut map = self
            .node_memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.insert(runtime.to_owned(), memory_mb);
    }

    /// Starts `runtime`'s template unless it runs; returns its resident memory in MB.
    pub async fn prepare(self: &Arc<Self>, runtime: &str) -> Result<u64, TemplateError> {
        let family =
            Family::of(runtime).ok_or_else(|| TemplateError::Unsupported(runtime.into()))?;
        let layout = &self.config.layout;
        for dir in [&layout.lang_dir, &layout.runtimes_dir] {
            if !layout.resolve(dir).join(runtime).is_dir() {
                return Err(TemplateError::Missing(format!(
                    "{}",
                    dir.join(runtime).display()
                )));
            }
        }
        let bootstrap = layout
            .resolve(&layout.runtimes_dir)
            .join(runtime)
            .join("bootstrap");
        let expected = match family {
            Family::Python(minor) => expected_bootstrap(minor),
            Family::Node(major) => super::node_template::expected_bootstrap(major),
        };
        if std::fs::read_to_string(&bootstrap).ok() != Some(expected) {
            return Err(TemplateError::OtherBootstrap(runtime.into()));
        }
        if let Family::Node(_) = family {
            let addon = bootstrap.with_file_name(super::node_template::ADDON);
            if !addon.is_file() {
                return Err(TemplateError::Missing(format!("{}", addon.display())));
            }
        }
        let slot = self
            .slot(runtime, true)
            .ok_or_else(|| TemplateError::NotPrepared(runtime.into()))?;
        let mut slot = slot.lock().await;
        if let Some(live) = slot.live.as_mut() {
            if live.alive() && live.control.is_some() {
                return Ok(live.rss_mb);
            }
            live.kill();
        }
        slot.live = None;
        self.set_ready(runtime, false);
        let mut live = match self.start(runtime, family).await {
            Ok(live) => live,
            Err(err) => {
                // A start that fails is tried again in the background a few times, so that a
                // template killed while it imports comes back as one killed later does.
                slot.failed_starts += 1;
                if slot.failed_starts <= START_RETRIES {
                    self.retry_later(runtime);
                }
                return Err(err);
            }
        };
        slot.failed_starts = 0;
        let rss_mb = live.rss_mb;
        info!(
            runtime,
            pid = live.pid.as_raw(),
            rss_mb,
            "runtime template ready"
        );
        let pid = live.pid;
        let exit = live.exit.take();
        let exited = live.exited.clone();
        let started = live.started;
        slot.live = Some(live);
        self.set_ready(runtime, true);
        if let Some(exit) = exit {
            self.watch(runtime, pid, started, exit, exited);
        }
        Ok(rss_mb)
    }

    /// Restarts `runtime`'s template `pid` as soon as it dies unbidden (killed, out of memory, a
    /// crash), so that a VM's containers find it running again without one of them falling
    /// back first. A template that dies within [`QUICK_DEATH`] of its start is started again
    /// only after that long, so a template that cannot live does not spin.
    fn watch(
        self: &Arc<Self>,
        runtime: &str,
        pid: Pid,
        started: Instant,
        exit: oneshot::Receiver<ExitStatus>,
        exited: Arc<AtomicBool>,
    ) {
        let this = Arc::downgrade(self);
        let runtime = runtime.to_owned();
        tokio::spawn(async move {
            let status = exit.await.ok();
            exited.store(true, Ordering::Release);
            let Some(this) = this.upgrade() else { return };
            let Some(slot) = this.slot(&runtime, false) else {
                return;
            };
            {
                let mut slot = slot.lock().await;
                // Taken out (or replaced) on purpose by whoever holds the slot: not ours to
                // restart.
                if slot.live.as_ref().map(|live| live.pid) != Some(pid) {
                    return;
                }
                slot.live = None;
            }
            this.set_ready(&runtime, false);
            warn!(%runtime, pid = pid.as_raw(), ?status, "the runtime template died");
            let lived = started.elapsed();
            if lived < QUICK_DEATH {
                tokio::time::sleep(QUICK_DEATH - lived).await;
            }
            this.restart(&runtime);
        });
    }

    async fn start(&self, runtime: &str, family: Family) -> Result<Live, TemplateError> {
        let base = self.config.state_dir.join("templates");
        let root = base.join(runtime);
        // A Node.js template's /var/task holds its program (a module file, as a fresh start's
        // entry is); a Python template's is empty.
        let task = match family {
            Family::Python(_) => base.join("empty-task"),
            Family::Node(_) => base.join("node-task"),
        };
        for dir in [&root, &task] {
            std::fs::create_dir_all(dir)
                .map_err(io_error(format!("cannot create {}", dir.display())))?;
        }
        if let Family::Node(_) = family {
            let script = task.join(super::node_template::SCRIPT_NAME);
            std::fs::write(&script, super::node_template::SCRIPT)
                .map_err(io_error(format!("cannot write {}", script.display())))?;
        }
        let layout = &self.config.layout;
        let empty = layout.resolve(&layout.empty_dir);
        std::fs::create_dir_all(&empty)
            .map_err(io_error(format!("cannot create {}", empty.display())))?;
        // A container's runtime view without the function and no cgroup view. A Python
        // template has no /proc (it is in the VM's PID namespace); a Node.js template's addon
        // reads its own /proc/self (threads, maps, descriptors) before each fork: it sees the
        // VM's processes, and a forked runtime leaves its mount namespace before it runs.
        let keep_proc = matches!(family, Family::Node(_));
        let mounts: Vec<Mount> = plan::mounts(layout, runtime, &task, &[], 1, &[])
            .into_iter()
            .filter(|m| keep_proc || !matches!(m, Mount::Proc { .. }))
            .collect();
        let (env, exe, argv) = match family {
            Family::Python(minor) => {
                let env = template_env(minor);
                let names: Vec<&String> = env.keys().collect();
                let names = serde_json::to_string(&names)
                    .map_err(|e| TemplateError::Start(e.to_string()))?;
                let exe = PathBuf::from(format!("/var/lang/bin/python3.{minor}"));
                let argv = vec![exe.display().to_string(), "-c".into(), SCRIPT.into(), names];
                (env, exe, argv)
            }
            Family::Node(major) => {
                let env = super::node_template::template_env(major, self.node_memory(runtime));
                let argv = super::node_template::template_argv(&env)
                    .ok_or_else(|| TemplateError::Start("no heap flags".into()))?;
                (env, PathBuf::from(&argv[0]), argv)
            }
        };
        let plan = TemplatePlan {
            root,
            mounts,
            argv,
            exe,
            env: env.clone().into_iter().collect(),
        };
        let plan = serde_json::to_vec(&plan).map_err(|e| TemplateError::Start(e.to_string()))?;
        let (control, child) =
            StdUnixStream::pair().map_err(io_error("cannot create a socket pair"))?;
        let mut command = Command::new(&self.config.exe);
        command
            .arg(super::init::TEMPLATE_ARG)
            .arg0("ember-runtime-template")
            .env_clear()
            .stdin(Stdio::from(OwnedFd::from(child)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // Spawned from this task's thread, which lives as long as the agent: the template's
        // parent-death signal fires when the agent ends, not when a worker thread does.
        let (process, exit) = self
            .reaper
            .spawn(&mut command)
            .map_err(io_error("cannot spawn the template"))?;
        drop(command);
        let pid = Pid::from_raw(process.id() as i32);
        drop(process);
        let waited = tokio::task::spawn_blocking(move || -> Result<_, TemplateError> {
            let len = u32::try_from(plan.len())
                .map_err(|_| TemplateError::Start("plan too large".into()))?;
            let mut writer = &control;
            writer
                .write_all(&len.to_be_bytes())
                .and_then(|()| writer.write_all(&plan))
                .map_err(io_error("cannot send the template's plan"))?;
            control
                .set_read_timeout(Some(READY_TIMEOUT))
                .map_err(io_error("cannot use the template's socket"))?;
            let answer = read_answer(&control)?;
            if !answer.ready {
                return Err(TemplateError::Start(format!("{answer:?}")));
            }
            Ok((control, answer.modules))
        })
        .await
        .map_err(|e| TemplateError::Task(e.to_string()));
        let (control, modules) = match waited {
            Ok(Ok(done)) => done,
            Ok(Err(err)) | Err(err) => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                return Err(err);
            }
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss_mb = rss_kb(&status).unwrap_or(0).div_ceil(1024);
        Ok(Live {
            pid,
            control: Some(control),
            exited: Arc::new(AtomicBool::new(false)),
            exit: Some(exit),
            started: Instant::now(),
            env,
            modules,
            rss_mb,
        })
    }

    /// Forks `runtime`'s template into a container: `fds` its namespaces, `cgroup.procs` files
    /// and log pipe, `spec` what the runtime becomes, `path_dirs` the function's directories
    /// ahead of the runtime's on `sys.path` ([`function_path_dirs`]). Returns the runtime's pid
    /// in the container's PID namespace. A dead or broken template is restarted in the
    /// background; the caller starts this container the ordinary way.
    pub async fn fork(
        self: &Arc<Self>,
        runtime: &str,
        fds: Fds,
        spec: LaunchSpec,
        path_dirs: Vec<PathBuf>,
    ) -> Result<i32, TemplateError> {
        let slot = self
            .slot(runtime, false)
            .ok_or_else(|| TemplateError::NotPrepared(runtime.into()))?;
        let mut guard = slot.lock().await;
        let alive = guard
            .live
            .as_mut()
            .is_some_and(|live| live.alive() && live.control.is_some());
        if !alive {
            if let Some(live) = guard.live.take() {
                live.kill();
            }
            drop(guard);
            self.restart(runtime);
            return Err(TemplateError::Dead(runtime.into()));
        }
        let Some(live) = guard.live.as_mut() else {
            return Err(TemplateError::Dead(runtime.into()));
        };
        let mismatch = match Family::of(runtime) {
            Some(Family::Node(_)) => {
                // A container of another memory size: the template is started again for it
                // (one per runtime, so the VM's accounting holds), this one starts afresh.
                if let Some(memory_mb) = super::node_template::other_memory(&spec.env, &live.env) {
                    self.set_node_memory(runtime, memory_mb);
                    live.kill();
                    guard.live = None;
                    drop(guard);
                    self.restart(runtime);
                    return Err(TemplateError::Ineligible(format!(
                        "the template is for another memory size; started again for {memory_mb} MB"
                    )));
                }
                super::node_template::startup_mismatch(&spec.env, &live.env)
            }
            _ => startup_mismatch(&spec.env, &live.env),
        };
        if let Some(why) = mismatch {
            return Err(TemplateError::Ineligible(why));
        }
        // The function's top-level directories only: a few entries, read inline.
        if let Some(why) = shadowed(&live.modules, &path_dirs) {
            return Err(TemplateError::Ineligible(why));
        }
        let Some(control) = live.control.take() else {
            return Err(TemplateError::Dead(runtime.into()));
        };
        let exchanged = tokio::task::spawn_blocking(move || {
            let result = exchange(&control, fds, &spec);
            (control, result)
        })
        .await;
        let (control, result) = match exchanged {
            Ok(done) => done,
            Err(e) => {
                live.kill();
                guard.live = None;
                drop(guard);
                self.restart(runtime);
                return Err(TemplateError::Task(e.to_string()));
            }
        };
        match result {
            Ok(Answer { pid: Some(pid), .. }) => {
                live.control = Some(control);
                Ok(pid)
            }
            Ok(Answer {
                error: Some(error), ..
            }) => {
                // A clean refusal: the template goes on, unless it left the stream out of step
                // (then it exits, and the next fork restarts it).
                live.control = Some(control);
                Err(TemplateError::Failed(error))
            }
            other => {
                live.kill();
                guard.live = None;
                drop(guard);
                self.restart(runtime);
                match other {
                    Err(err) => Err(err),
                    Ok(answer) => Err(TemplateError::Failed(format!(
                        "unexpected answer {answer:?}"
                    ))),
                }
            }
        }
    }

    /// Starts `runtime`'s template again in the background, [`QUICK_DEATH`] from now.
    fn retry_later(self: &Arc<Self>, runtime: &str) {
        let this = Arc::downgrade(self);
        let runtime = runtime.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(QUICK_DEATH).await;
            if let Some(this) = this.upgrade() {
                this.restart(&runtime);
            }
        });
    }

    /// Starts `runtime`'s template again, in the background.
    fn restart(self: &Arc<Self>, runtime: &str) {
        self.set_ready(runtime, false);
        let this = self.clone();
        let runtime = runtime.to_owned();
        warn!(%runtime, "the runtime template is gone; starting it again");
        tokio::spawn(async move {
            match this.prepare(&runtime).await {
                Ok(rss_mb) => debug!(%runtime, rss_mb, "runtime template restarted"),
                Err(err) => {
                    warn!(%runtime, error = %ember_stdx::error_chain(&err), "cannot restart the runtime template")
                }
            }
        });
    }
}

/// Sends one fork request (the header with `fds`, then the spec) and reads the answer.
fn exchange(control: &StdUnixStream, fds: Fds, spec: &LaunchSpec) -> Result<Answer, TemplateError> {
    if fds.len() > MAX_FDS {
        return Err(TemplateError::Failed(format!("{} descriptors", fds.len())));
    }
    let roles: Vec<&str> = fds.iter().map(|(role, _)| *role).collect();
    let header = serde_json::to_vec(&serde_json::json!({ "fds": roles }))
        .map_err(|e| TemplateError::Failed(e.to_string()))?;
    let spec = serde_json::to_vec(spec).map_err(|e| TemplateError::Failed(e.to_string()))?;
    let frame = |body: &[u8]| -> Result<Vec<u8>, TemplateError> {
        let len =
            u32::try_from(body.len()).map_err(|_| TemplateError::Failed("too large".into()))?;
        let mut out = len.to_be_bytes().to_vec();
        out.extend_from_slice(body);
        Ok(out)
    };
    let header = frame(&header)?;
    let spec = frame(&spec)?;
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|(_, fd)| fd.as_fd()).collect();
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if !ancillary.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(TemplateError::Failed(
            "cannot attach the descriptors".into(),
        ));
    }
    control
        .set_write_timeout(Some(FORK_TIMEOUT))
        .and_then(|()| control.set_read_timeout(Some(FORK_TIMEOUT)))
        .map_err(io_error("cannot use the template's socket"))?;
    // The descriptors ride on the header's first bytes; the template reads the first four with
    // them.
    let sent = rustix::net::sendmsg(
        control,
        &[IoSlice::new(&header)],
        &mut ancillary,
        SendFlags::empty(),
    )
    .map_err(|e| io_error("cannot send to the template")(e.into()))?;
    let mut writer = control;
    writer
        .write_all(&header[sent..])
        .and_then(|()| writer.write_all(&spec))
        .map_err(io_error("cannot send to the template"))?;
    drop(fds);
    read_answer(control)
}

/// Reads one answer line. Byte by byte: nothing past the line may be taken from the socket.
fn read_answer(control: &StdUnixStream) -> Result<Answer, TemplateError> {
    let mut line = Vec::new();
    let mut reader = BufReader::with_capacity(1, control);
    reader
        .read_until(b'\n', &mut line)
        .map_err(io_error("cannot read the template's answer"))?;
    if line.is_empty() {
        return Err(TemplateError::Failed("the template ended".into()));
    }
    serde_json::from_slice(&line).map_err(|_| {
        TemplateError::Failed(format!(
            "unexpected answer: {}",
            String::from_utf8_lossy(&line).trim_end()
        ))
    })
}

fn rss_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An environment of `pairs` (the node_template tests' too).
    pub(crate) fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn python_runtimes_have_a_minor() {
        assert_eq!(python_minor("python3.12"), Some(12));
        assert_eq!(python_minor("python3.9"), Some(9));
        assert_eq!(python_minor("nodejs20.x"), None);
        assert_eq!(python_minor("provided.al2023"), None);
        assert_eq!(python_minor("python3.x"), None);
    }

    #[test]
    fn the_interpreters_environment_is_what_the_bootstrap_exports() {
        let base = env(&[
            ("LD_LIBRARY_PATH", "/lib64:/usr/lib64"),
            ("LAMBDA_TASK_ROOT", "/var/task"),
            ("LAMBDA_RUNTIME_DIR", "/var/runtime"),
            ("GREETING", "hi"),
        ]);
        let out = python_env(&base, 12, "/var/task");
        assert_eq!(out["LD_LIBRARY_PATH"], "/var/lang/lib:/lib64:/usr/lib64");
        assert_eq!(
            out["PYTHONPATH"],
            "/var/task:/opt/python/lib/python3.12/site-packages:/opt/python:/var/runtime"
        );
        assert_eq!(out["AWS_EXECUTION_ENV"], "AWS_Lambda_python3.12");
        assert_eq!(out["PWD"], "/var/task");
        assert_eq!(out["GREETING"], "hi");

        // /var/lang/lib already there: kept as is; a function's PYTHONPATH goes last.
        let own = env(&[
            ("LD_LIBRARY_PATH", "/x:/var/lang/lib"),
            ("PYTHONPATH", "/mine"),
            ("AWS_EXECUTION_ENV", "custom"),
        ]);
        let out = python_env(&own, 9, "/var/task");
        assert_eq!(out["LD_LIBRARY_PATH"], "/x:/var/lang/lib");
        assert_eq!(
            out["PYTHONPATH"],
            "/var/task:/opt/python/lib/python3.9/site-packages:/opt/python:/var/runtime:/mine"
        );
        assert_eq!(out["AWS_EXECUTION_ENV"], "custom");
        // Empty counts as unset, as `${X:-}` and `${X:+}` read it.
        let out = python_env(&env(&[("LD_LIBRARY_PATH", "")]), 11, "/var/task");
        assert_eq!(out["LD_LIBRARY_PATH"], "/var/lang/lib");
    }

    #[test]
    fn the_template_starts_with_a_plain_functions_startup_variables() {
        let template = template_env(12);
        assert_eq!(
            template.keys().map(String::as_str).collect::<Vec<_>>(),
            ["LD_LIBRARY_PATH", "PYTHONPATH", "TZ"]
        );
        assert_eq!(template["TZ"], ":UTC");
        assert!(!template.contains_key("AWS_LAMBDA_FUNCTION_NAME"));
    }

    #[test]
    fn a_networked_vms_endpoint_does_not_keep_a_container_from_its_template() {
        // The agent adds AWS_ENDPOINT_URL_LAMBDA to every container of a VM with a network;
        // neither interpreter reads it at its start, so forked and fresh starts stay alike.
        let endpoint = "http://10.213.0.1:9001";
        let python =
            crate::env::with_endpoint(fresh_container_env("python3.12".into(), 0), endpoint);
        let python = python_env(&python, 12, "/var/task");
        assert_eq!(python["AWS_ENDPOINT_URL_LAMBDA"], endpoint);
        assert_eq!(startup_mismatch(&python, &template_env(12)), None);
        let node =
            crate::env::with_endpoint(fresh_container_env("nodejs20.x".into(), 128), endpoint);
        let node = super::super::node_template::node_env(&node, 20, "/var/task");
        assert_eq!(
            super::super::node_template::startup_mismatch(
                &node,
                &super::super::node_template::template_env(20, 128)
            ),
            None
        );
    }

    #[test]
    fn a_function_that_changes_the_interpreters_start_is_not_forked() {
        let template = template_env(12);
        let function = |own: &[(&str, &str)]| {
            let mut spec = ember_protocol::FunctionSpec {
                name: "f".into(),
                arn: "arn".into(),
                version: "1".into(),
                handler: "app.handler".into(),
                runtime: "python3.12".into(),
                region: "eu-west-1".into(),
                environment: env(own),
                memory_mb: 128,
                timeout_ms: 3000,
                ephemeral_storage_mb: 512,
                code: ember_protocol::CodeSource::Directory { path: "/c".into() },
                layers: Vec::new(),
            };
            spec.environment.extend(env(own));
            let base = crate::env::container_env(&spec, "127.0.0.1:9001", "stream");
            python_env(&base, 12, "/var/task")
        };
        // Secrets and settings the interpreter does not read at its start: forked.
        assert_eq!(
            startup_mismatch(
                &function(&[("DB_PASSWORD", "s3cret"), ("PATH", "/x")]),
                &template
            ),
            None
        );
        for (name, value) in [
            ("PYTHONPATH", "/extra"),
            ("PYTHONUNBUFFERED", "1"),
            ("LD_PRELOAD", "/var/task/lib.so"),
            ("LANG", "fr_FR.UTF-8"),
            ("PYTHONHASHSEED", "0"),
        ] {
            let why = startup_mismatch(&function(&[(name, value)]), &template);
            assert!(
                why.as_deref().is_some_and(|w| w.contains(name)),
                "{name}: {why:?}"
            );
        }
    }

    #[test]
    fn code_that_shadows_an_imported_module_is_not_forked() {
        let dir = tempfile::tempdir().unwrap();
        let code = dir.path().join("code");
        std::fs::create_dir_all(code.join("app")).unwrap();
        std::fs::write(code.join("handler.py"), "").unwrap();
        let modules = vec![
            "json".to_owned(),
            "awslambdaric".to_owned(),
            "simplejson".to_owned(),
        ];
        assert_eq!(shadowed(&modules, std::slice::from_ref(&code)), None);
        std::fs::write(code.join("json.py"), "").unwrap();
        assert!(shadowed(&modules, std::slice::from_ref(&code)).is_some_and(|w| w.contains("json")));

        let layer = dir.path().join("layer");
        let site = layer.join("python/lib/python3.12/site-packages");
        std::fs::create_dir_all(site.join("simplejson")).unwrap();
        let other = dir.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        let dirs = function_path_dirs(&other, std::slice::from_ref(&layer), 12);
        assert_eq!(dirs[1], site);
        assert!(shadowed(&modules, &dirs).is_some_and(|w| w.contains("simplejson")));
        // A native extension counts by its module name.
        std::fs::remove_dir(site.join("simplejson")).unwrap();
        std::fs::write(
            site.join("awslambdaric.cpython-312-x86_64-linux-gnu.so"),
            "",
        )
        .unwrap();
        assert!(shadowed(&modules, &dirs).is_some_and(|w| w.contains("awslambdaric")));
    }

    #[test]
    fn a_fresh_start_runs_the_runtime_client_on_the_handler() {
        assert_eq!(
            fresh_argv(11, "app.handler"),
            [
                "/var/lang/bin/python3.11",
                "-m",
                "awslambdaric",
                "app.handler"
            ]
        );
    }

    #[test]
    fn reads_resident_memory() {
        assert_eq!(rss_kb("Name:\tpython\nVmRSS:\t  20480 kB\n"), Some(20480));
        assert_eq!(rss_kb("Name:\tpython\n"), None);
    }

    #[tokio::test]
    async fn forking_without_a_template_says_so() {
        let reaper = Reaper::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let templates = Arc::new(Templates::new(
            TemplateConfig {
                layout: Layout {
                    vm_root: dir.path().into(),
                    lang_dir: "/lang".into(),
                    runtimes_dir: "/runtimes".into(),
                    empty_dir: "/empty".into(),
                },
                state_dir: dir.path().join("state"),
                exe: "/proc/self/exe".into(),
            },
            reaper,
        ));
        let spec = LaunchSpec {
            uid: 990,
            gid: 990,
            cwd: "/var/task".into(),
            argv: fresh_argv(12, "app.handler"),
            env: BTreeMap::new(),
            rlimits: BTreeMap::new(),
            seccomp: Vec::new(),
        };
        assert!(!templates.prepared("python3.12"));
        let err = templates
            .fork("python3.12", Vec::new(), spec, Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, TemplateError::NotPrepared(_)), "{err:?}");
        // Not a runtime with templates; a Python or Node.js runtime the VM lacks; another
        // bootstrap; a Node.js runtime directory without the template's addon.
        let err = templates.prepare("provided.al2023").await.unwrap_err();
        assert!(matches!(err, TemplateError::Unsupported(_)), "{err:?}");
        let err = templates.prepare("nodejs20.x").await.unwrap_err();
        assert!(matches!(err, TemplateError::Missing(_)), "{err:?}");
        for d in ["lang/nodejs20.x", "runtimes/nodejs20.x"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::fs::write(
            dir.path().join("runtimes/nodejs20.x/bootstrap"),
            crate::container::node_template::expected_bootstrap(20),
        )
        .unwrap();
        let err = templates.prepare("nodejs20.x").await.unwrap_err();
        assert!(
            matches!(&err, TemplateError::Missing(what) if what.ends_with(crate::container::node_template::ADDON)),
            "{err:?}"
        );
        let err = templates.prepare("python3.12").await.unwrap_err();
        assert!(matches!(err, TemplateError::Missing(_)), "{err:?}");
        for d in ["lang/python3.12", "runtimes/python3.12"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::fs::write(
            dir.path().join("runtimes/python3.12/bootstrap"),
            "#!/bin/sh\nexec x\n",
        )
        .unwrap();
        let err = templates.prepare("python3.12").await.unwrap_err();
        assert!(matches!(err, TemplateError::OtherBootstrap(_)), "{err:?}");
        assert!(!templates.prepared("python3.12"));
        // The seccomp programs the forked runtime installs are the agent's.
        let programs = templates.seccomp().unwrap();
        assert_eq!(programs.len(), 2);
        assert!(programs.iter().all(|p| !p.is_empty() && p.len() % 16 == 0));
    }
}
