//! SnapStart: per function version, a template taken after the function's own init, from which
//! new execution environments are forked (see ARCHITECTURE.md, "SnapStart", for the design and
//! its security argument).
//!
//! # The template
//!
//! The first SnapStart container of a version in this VM ([`CreateContainer::snap_start`])
//! prepares its template: a container of that version like any (its namespaces, the function's
//! uid and gid, a cgroup with the function's memory limit, no capabilities, `no_new_privs`),
//! except that its runtime runs under the container seccomp filter with `setns` allowed
//! ([`ember_sandbox::seccomp::snap_template_filter`]), starts with
//! `AWS_LAMBDA_INITIALIZATION_TYPE=snap-start`, gets its fork channel to the agent as fd 3, and
//! is [`SCRIPT`]: awslambdaric as `python -m awslambdaric` runs it, with one before-snapshot
//! hook registered first, so it runs last, after the function's own. The hook says `ready` on
//! the channel and serves forks. An init that fails (`/init/error`, a before-snapshot hook that
//! raises, an exit) fails the template: the version's containers then start the ordinary way,
//! whose init fails as Lambda reports it. The template is not in the container table: no
//! invocation reaches it, and it goes with the VM.
//!
//! # An environment from the template
//!
//! The environment is built by `container-init` in its SnapStart mode
//! ([`SnapRole::Restored`], see [`super::snap_init`]): its namespaces are owned by a new user
//! namespace whose owner is the function's uid, and its PID namespace is a child of the
//! template's, so that the template's forked child, which has no privilege of its own, can
//! enter them. The agent sends the template the environment's namespaces, its `cgroup.procs`
//! files, its log pipe and a [`SnapSpec`]; the template's child joins the cgroup, enters the
//! namespaces (user first), forks twice so that the runtime is re-parented to the environment's
//! PID 1, drops every capability, installs the full container filter on top of the template's
//! and returns from the hook: awslambdaric asks the environment's own Runtime API for
//! `/restore/next` (answered at once), runs the after-restore hooks and polls `/next`.
//!
//! Everything the template says is untrusted (it has run function code, which may have
//! replaced the hook): its answers are parsed strictly and bounded, and before PID 1 adopts the
//! runtime, the agent checks it from outside ([`verify`]): its parent, namespaces, cgroup, ids,
//! capabilities, `no_new_privs` and seccomp must be the environment's, as a fresh start's are.
//! Anything else is killed, the template is given up, and the environment starts the ordinary
//! way.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ember_protocol::{ContainerCreated, CreateContainer, SNAP_TEMPLATE_TIMEOUT};
use ember_sandbox::cgroup::Cgroup;
use nix::unistd::Pid;
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tracing::{debug, info, warn};

use super::{template, Container, ContainerError, Containers, Partial};

/// The template's launcher and fork server, run by the runtime's interpreter with `-c`:
/// embedded, as the runtime templates' script is, after the same `enter.py` (the steps of
/// entering a container, which both templates share; the runtime template's root-only steps
/// stay in its own script).
pub const SCRIPT: &str = concat!(include_str!("enter.py"), include_str!("snap_template.py"));
/// `AWS_LAMBDA_INITIALIZATION_TYPE` in a template and in the environments forked from it.
pub const INITIALIZATION_TYPE: &str = "snap-start";
/// How long a template may take to get ready: Lambda's init limit, and the time to start.
const READY_TIMEOUT: Duration = SNAP_TEMPLATE_TIMEOUT;
/// How long one fork may take before the template is given up.
const FORK_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest answer line read from a template.
const MAX_LINE: u64 = 4096;
/// The namespaces a forked runtime enters, by their `/proc/<pid>/ns` names: the user namespace
/// first (it gives the capabilities to enter the rest).
pub const NAMESPACES: &[&str] = &["user", "cgroup", "ipc", "uts", "net", "pid", "mnt"];
/// How long dropping a template waits for its environments to go (the host destroys the idle
/// ones as it drops the template) before it leaves the template to go with the last of them.
const ENVIRONMENTS_GRACE: Duration = Duration::from_secs(5);
/// The most descriptors one fork request carries.
const MAX_FDS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SnapError {
    #[error("{0}")]
    Unsupported(String),
    #[error("the template's init failed: {0}")]
    InitFailed(String),
    #[error("the template was given up earlier: {0}")]
    GivenUp(String),
    #[error("the template ended")]
    Gone,
    #[error("the template was not ready within {0:?}")]
    NotReady(Duration),
    #[error("the template did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the template refused: {0}")]
    Refused(String),
    #[error("the template's answer is not one: {0}")]
    Garbled(String),
    #[error("the forked runtime is not what a fresh start makes: {0}")]
    Unverified(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> SnapError {
    let what = what.into();
    move |source| SnapError::Io { what, source }
}

/// What the forked runtime becomes, read by the template's child (never by the template).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapSpec {
    pub cwd: String,
    /// The environment's variables, as its interpreter's `os.environ`.
    pub env: BTreeMap<String, String>,
    /// The container's seccomp programs, hex of their `sock_filter`s, installed in order on top
    /// of the template's.
    pub seccomp: Vec<String>,
}

/// What a template answers, one JSON line: exactly one of the fields.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Answer {
    ready: Option<bool>,
    pid: Option<i32>,
    error: Option<String>,
}

/// Parses one answer line strictly: `{"ready": true}`, `{"pid": n}` (a pid of the
/// environment's PID namespace, past its PID 1) or `{"error": "..."}`.
fn parse_answer(line: &[u8]) -> Result<Answer, SnapError> {
    let garbled = || SnapError::Garbled(String::from_utf8_lossy(line).trim_end().to_owned());
    let answer: Answer = serde_json::from_slice(line).map_err(|_| garbled())?;
    let fields = [
        answer.ready.is_some(),
        answer.pid.is_some(),
        answer.error.is_some(),
    ];
    if fields.iter().filter(|f| **f).count() != 1
        || answer.ready == Some(false)
        || answer.pid.is_some_and(|pid| pid < 2)
    {
        return Err(garbled());
    }
    Ok(answer)
}

/// The key of a version's template: a container can be forked from a template only if it would
/// be the same container (the function version's whole spec, its ids).
pub fn key(request: &CreateContainer) -> String {
    let spec = serde_json::to_string(&request.function).unwrap_or_default();
    format!("{}:{}:{spec}", request.uid, request.gid)
}

/// The VM's SnapStart templates, one per function version at most.
#[derive(Debug, Default)]
pub struct SnapTemplates {
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    /// Templates out of service while environments may still run from them: a template's
    /// PID namespace holds its environments', so it goes only with the last of them (or the
    /// VM). Kept whole: closing its fork channel ends it.
    retired: Mutex<Vec<Live>>,
}

#[derive(Debug, Default)]
enum Slot {
    #[default]
    Empty,
    Ready(Live),
    /// Not to be tried again: the init failed, or the template misbehaved.
    GivenUp(String),
}

#[derive(Debug)]
pub(super) struct Live {
    /// The function's ARN and version it is a template of.
    function: (String, String),
    pub(super) container: Arc<Container>,
    /// The template container's PID 1, in the VM's PID namespace.
    pub(super) first: Pid,
    channel: BufReader<UnixStream>,
}

impl SnapTemplates {
    fn slot(&self, key: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        // Inserts and lookups only: a panicking holder cannot tear the map.
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.entry(key.to_owned()).or_default().clone()
    }

    fn retire(&self, live: Live) {
        self.retired
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(live);
    }

    /// Takes the templates of `arn`'s `version` (every version when `None`) out of service;
    /// returns them.
    async fn take(&self, arn: &str, version: Option<&str>) -> Vec<Live> {
        let slots: Vec<(String, Arc<tokio::sync::Mutex<Slot>>)> = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(key, slot)| (key.clone(), slot.clone()))
            .collect();
        let mut taken = Vec::new();
        for (key, slot) in slots {
            let mut slot = slot.lock().await;
            let Slot::Ready(live) = &*slot else {
                continue;
            };
            let (their_arn, their_version) = &live.function;
            if their_arn != arn || version.is_some_and(|v| v != their_version) {
                continue;
            }
            if let Slot::Ready(live) = std::mem::take(&mut *slot) {
                taken.push(live);
            }
            drop(slot);
            self.slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
        }
        taken
    }

    /// The retired templates none of whose environments lives any more (`has_environments`
    /// says), taken out of the list to be torn down.
    pub(super) fn sweep(&self, has_environments: impl Fn(&str) -> bool) -> Vec<Arc<Container>> {
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        let (done, kept): (Vec<_>, Vec<_>) = retired
            .drain(..)
            .partition(|template| !has_environments(&template.container.id));
        *retired = kept;
        done.into_iter().map(|live| live.container).collect()
    }

    /// Every template, for the VM's shutdown.
    pub(super) async fn drain(&self) -> Vec<Arc<Container>> {
        let slots: Vec<_> = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            slots.drain().map(|(_, slot)| slot).collect()
        };
        let mut all: Vec<Arc<Container>> =
            std::mem::take(&mut *self.retired.lock().unwrap_or_else(PoisonError::into_inner))
                .into_iter()
                .map(|live| live.container)
                .collect();
        for slot in slots {
            if let Slot::Ready(live) = std::mem::take(&mut *slot.lock().await) {
                all.push(live.container);
            }
        }
        all
    }
}

/// Whether `runtime` can have SnapStart templates here: a Python runtime whose bootstrap is
/// the one modelled (the template runs what it would execute).
fn supported(containers: &Containers, runtime: &str) -> Result<u32, SnapError> {
    let unsupported = || SnapError::Unsupported(format!("{runtime} has no SnapStart templates"));
    let minor = template::python_minor(runtime).ok_or_else(unsupported)?;
    let layout = &containers.config.layout;
    let bootstrap = layout
        .resolve(&layout.runtimes_dir)
        .join(runtime)
        .join("bootstrap");
    if std::fs::read_to_string(bootstrap).ok() != Some(template::expected_bootstrap(minor)) {
        return Err(SnapError::Unsupported(format!(
            "{runtime}'s bootstrap is not the one SnapStart templates are made for"
        )));
    }
    Ok(minor)
}

/// How `container-init` is to make a container, for SnapStart.
pub(super) enum Making<'a> {
    /// An ordinary container.
    Ordinary,
    /// A template, with the template's end of its fork channel.
    Template(OwnedFd),
    /// An environment forked from `Live`'s template.
    Restored(&'a mut Live),
}

impl Containers {
    /// Drops the SnapStart templates of `arn`'s `version` (every version when `None`): each is
    /// torn down now if none of its environments lives, else when the last one ends (its PID
    /// namespace holds theirs). Returns how many went now and how many wait.
    pub async fn drop_snap_templates(&self, arn: &str, version: Option<&str>) -> (u32, u32) {
        let (mut dropped, mut pending) = (0, 0);
        for template in self.snap.take(arn, version).await {
            // The host destroys the version's idle environments as it sends this: they are
            // given a moment to go, so that the template's memory is free in the answer.
            let until = tokio::time::Instant::now() + ENVIRONMENTS_GRACE;
            while self.has_environments(&template.container.id)
                && tokio::time::Instant::now() < until
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if self.has_environments(&template.container.id) {
                pending += 1;
                self.snap.retire(template);
            } else {
                dropped += 1;
                template.container.teardown().await;
            }
        }
        info!(
            arn,
            ?version,
            dropped,
            pending,
            "SnapStart templates dropped"
        );
        (dropped, pending)
    }

    /// Starts a SnapStart environment: forked from its version's template, prepared first if
    /// the VM has none. An error means nothing of the environment is left; the caller starts
    /// it the ordinary way.
    pub(super) async fn start_snap(
        self: &Arc<Self>,
        request: &CreateContainer,
        code: &Path,
    ) -> Result<(Arc<Container>, ContainerCreated), ContainerError> {
        supported(self, &request.function.runtime).map_err(ContainerError::Snap)?;
        let slot = self.snap.slot(&key(request));
        let mut slot = slot.lock().await;
        if let Slot::Ready(live) = &*slot {
            if live.container.death.borrow().is_some() {
                warn!("the SnapStart template ended; a new one is prepared");
                *slot = Slot::Empty;
            }
        }
        if let Slot::GivenUp(why) = &*slot {
            return Err(ContainerError::Snap(SnapError::GivenUp(why.clone())));
        }
        if matches!(*slot, Slot::Empty) {
            match self.prepare_snap(request, code).await {
                Ok(live) => *slot = Slot::Ready(live),
                Err(ContainerError::Snap(SnapError::InitFailed(why))) => {
                    *slot = Slot::GivenUp(format!("its init failed: {why}"));
                    return Err(ContainerError::Snap(SnapError::InitFailed(why)));
                }
                Err(err) => return Err(err),
            }
        }
        let Slot::Ready(live) = &mut *slot else {
            return Err(ContainerError::Snap(SnapError::Gone));
        };
        let mut partial = Partial::default();
        let made = self
            .start_parts(
                request,
                code.to_path_buf(),
                &mut partial,
                // A spare init has made an ordinary container's namespaces already.
                false,
                Making::Restored(live),
            )
            .await;
        match made {
            Ok(done) => Ok(done),
            Err(err) => {
                // Whatever the template put in the environment's cgroup goes with it, in the
                // environment's PID namespace (which its PID 1's exit ends) or not.
                if let Some(cgroup) = partial.cgroup.clone() {
                    let _ = tokio::task::spawn_blocking(move || cgroup.kill_all()).await;
                }
                partial.undo().await;
                if let ContainerError::Snap(snap) = &err {
                    // The template failed or lied: no more forks from it. Its environments
                    // run on (they are in its PID namespace); it goes with the VM.
                    let why = ember_stdx::error_chain(snap);
                    if let Slot::Ready(live) = std::mem::replace(&mut *slot, Slot::GivenUp(why)) {
                        self.snap.retire(live);
                    }
                }
                Err(err)
            }
        }
    }

    /// Starts a template of `request`'s version and waits until its init is done.
    async fn prepare_snap(
        self: &Arc<Self>,
        request: &CreateContainer,
        code: &Path,
    ) -> Result<Live, ContainerError> {
        let (agent_end, template_end) =
            StdUnixStream::pair().map_err(ContainerError::io("cannot create the fork channel"))?;
        let mut spec = request.clone();
        spec.container_id = format!("snap-{}", request.container_id);
        spec.container_id.truncate(128);
        let mut partial = Partial::default();
        let made = self
            .start_parts(
                &spec,
                code.to_path_buf(),
                &mut partial,
                // A spare init has made an ordinary container's namespaces already.
                false,
                Making::Template(OwnedFd::from(template_end)),
            )
            .await;
        let (container, _) = match made {
            Ok(done) => done,
            Err(err) => {
                partial.undo().await;
                return Err(err);
            }
        };
        let first = container.first;
        let ready = async {
            agent_end
                .set_nonblocking(true)
                .map_err(io_error("cannot use the fork channel"))?;
            let channel =
                UnixStream::from_std(agent_end).map_err(io_error("cannot use the fork channel"))?;
            let mut channel = BufReader::new(channel);
            let answer = read_line(&mut channel).await?;
            match parse_answer(&answer)? {
                Answer {
                    ready: Some(true), ..
                } => Ok(channel),
                other => Err(SnapError::Garbled(format!("{other:?}"))),
            }
        };
        let api = container.api.clone();
        let mut death = container.death.clone();
        let outcome = tokio::select! {
            ready = tokio::time::timeout(READY_TIMEOUT, ready) => match ready {
                Ok(ready) => ready,
                Err(_) => Err(SnapError::NotReady(READY_TIMEOUT)),
            },
            () = api.initialized() => Err(match api.init_error() {
                Some((error_type, payload)) => SnapError::InitFailed(format!(
                    "{error_type}: {}",
                    String::from_utf8_lossy(&payload)
                )),
                None => SnapError::Garbled("the template polled /next".into()),
            }),
            _ = death.wait_for(Option::is_some) => Err(SnapError::InitFailed(
                "the runtime exited during its init".into(),
            )),
        };
        match outcome {
            Ok(channel) => {
                if let Some(boost) = &container.cpu_boost {
                    boost.end("the SnapStart template is ready");
                }
                info!(
                    template = %container.id,
                    init_ms = container.started.elapsed().as_secs_f64() * 1e3,
                    "SnapStart template ready"
                );
                Ok(Live {
                    function: (
                        request.function.arn.clone(),
                        request.function.version.clone(),
                    ),
                    container,
                    first,
                    channel,
                })
            }
            Err(err) => {
                container.teardown().await;
                let output = container.logs.take();
                warn!(
                    template = %container.id,
                    error = %ember_stdx::error_chain(&err),
                    %output,
                    "the SnapStart template failed"
                );
                Err(ContainerError::Snap(err))
            }
        }
    }
}

/// Reads one answer line, at most [`MAX_LINE`] bytes, within [`FORK_TIMEOUT`] of its wait.
async fn read_line(channel: &mut BufReader<UnixStream>) -> Result<Vec<u8>, SnapError> {
    let mut line = Vec::new();
    let mut limited = (&mut *channel).take(MAX_LINE);
    limited
        .read_until(b'\n', &mut line)
        .await
        .map_err(io_error("cannot read the template's answer"))?;
    if line.is_empty() {
        return Err(SnapError::Gone);
    }
    if !line.ends_with(b"\n") {
        return Err(SnapError::Garbled("an answer line too long".into()));
    }
    Ok(line)
}

/// Has the template fork a runtime into the environment whose PID 1 is `first`: sends its
/// namespaces, `cgroup.procs` files, the log pipe and `spec`; returns the runtime's pid in the
/// environment's PID namespace once [`verify`] has found it to be what a fresh start makes.
pub(super) async fn fork_into(
    live: &mut Live,
    first: Pid,
    cgroup: &Arc<dyn Cgroup>,
    log: OwnedFd,
    spec: &SnapSpec,
    ids: (u32, u32),
) -> Result<i32, SnapError> {
    let mut fds: Vec<(&str, OwnedFd)> = Vec::new();
    for ns in NAMESPACES {
        let path = format!("/proc/{first}/ns/{ns}");
        let file = std::fs::File::open(&path).map_err(io_error(format!("cannot open {path}")))?;
        fds.push((ns, OwnedFd::from(file)));
    }
    let procs = cgroup
        .procs_files()
        .map_err(|e| SnapError::Unverified(format!("the cgroup's procs files: {e}")))?;
    for file in procs {
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .map_err(io_error(format!("cannot open {}", file.display())))?;
        fds.push(("procs", OwnedFd::from(opened)));
    }
    fds.push(("log", log));
    let exchange = async {
        send_request(&mut live.channel, &fds, spec).await?;
        drop(fds);
        let line = read_line(&mut live.channel).await?;
        parse_answer(&line)
    };
    let answer = tokio::time::timeout(FORK_TIMEOUT, exchange)
        .await
        .map_err(|_| SnapError::Timeout(FORK_TIMEOUT))??;
    let pid = match answer {
        Answer { pid: Some(pid), .. } => pid,
        Answer {
            error: Some(error), ..
        } => return Err(SnapError::Refused(error)),
        other => return Err(SnapError::Garbled(format!("{other:?}"))),
    };
    let checked = tokio::task::spawn_blocking(move || verify(first, pid, ids))
        .await
        .map_err(|e| SnapError::Unverified(e.to_string()))?;
    match checked {
        Ok(runtime) => {
            debug!(
                runtime_pid = pid,
                vm_pid = runtime.as_raw(),
                "runtime forked from the SnapStart template"
            );
            Ok(pid)
        }
        Err((runtime, why)) => {
            if let Some(runtime) = runtime {
                let _ = nix::sys::signal::kill(runtime, nix::sys::signal::Signal::SIGKILL);
            }
            Err(SnapError::Unverified(why))
        }
    }
}

/// Sends one fork request: the header with `fds` attached, then the spec.
async fn send_request(
    channel: &mut BufReader<UnixStream>,
    fds: &[(&str, OwnedFd)],
    spec: &SnapSpec,
) -> Result<(), SnapError> {
    if fds.len() > MAX_FDS {
        return Err(SnapError::Garbled(format!("{} descriptors", fds.len())));
    }
    let roles: Vec<&str> = fds.iter().map(|(role, _)| *role).collect();
    let frame = |body: Vec<u8>| -> Vec<u8> {
        // Both bodies are a few KiB: the environment is at most Lambda's 4 KB plus Ember's.
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    };
    let to_json = |e: serde_json::Error| SnapError::Garbled(e.to_string());
    let header = frame(serde_json::to_vec(&serde_json::json!({ "fds": roles })).map_err(to_json)?);
    let body = frame(serde_json::to_vec(spec).map_err(to_json)?);
    let stream = channel.get_mut();
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|(_, fd)| fd.as_fd()).collect();
    let sent = loop {
        stream
            .writable()
            .await
            .map_err(io_error("cannot send to the template"))?;
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut ancillary = SendAncillaryBuffer::new(&mut space);
        if !ancillary.push(SendAncillaryMessage::ScmRights(&borrowed)) {
            return Err(SnapError::Garbled("cannot attach the descriptors".into()));
        }
        // The descriptors ride on the header's first bytes.
        match stream.try_io(tokio::io::Interest::WRITABLE, || {
            rustix::net::sendmsg(
                stream.as_fd(),
                &[io::IoSlice::new(&header)],
                &mut ancillary,
                SendFlags::empty(),
            )
            .map_err(io::Error::from)
        }) {
            Ok(sent) => break sent,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(io_error("cannot send to the template")(e)),
        }
    };
    stream
        .write_all(&header[sent..])
        .await
        .map_err(io_error("cannot send to the template"))?;
    stream
        .write_all(&body)
        .await
        .map_err(io_error("cannot send to the template"))?;
    Ok(())
}

/// Checks from outside that the runtime the template says it forked (`pid`, in the PID
/// namespace of the environment whose PID 1 is `first`) is what a fresh start makes: PID 1's
/// child, in all of PID 1's namespaces and in its cgroup, with the function's `ids` (uid, gid)
/// in every slot, no capability in any set, `no_new_privs`, and seccomp filters on (the
/// template's two and the container's two). Returns its pid in the VM, or (when found) that pid
/// and why not.
fn verify(first: Pid, pid: i32, ids: (u32, u32)) -> Result<Pid, (Option<Pid>, String)> {
    let runtime = find(first, pid).ok_or_else(|| {
        (
            None,
            format!("no process {pid} under the environment's PID 1"),
        )
    })?;
    let fail = |why: String| (Some(runtime), why);
    let status = std::fs::read_to_string(format!("/proc/{runtime}/status"))
        .map_err(|e| fail(format!("its status: {e}")))?;
    check_status(&status, ids).map_err(fail)?;
    for ns in NAMESPACES {
        let theirs = std::fs::read_link(format!("/proc/{runtime}/ns/{ns}"));
        let ours = std::fs::read_link(format!("/proc/{first}/ns/{ns}"));
        match (theirs, ours) {
            (Ok(theirs), Ok(ours)) if theirs == ours => {}
            (theirs, ours) => {
                return Err(fail(format!(
                    "its {ns} namespace is {theirs:?}, the environment's {ours:?}"
                )))
            }
        }
    }
    let theirs = std::fs::read_to_string(format!("/proc/{runtime}/cgroup"));
    let ours = std::fs::read_to_string(format!("/proc/{first}/cgroup"));
    match (theirs, ours) {
        (Ok(theirs), Ok(ours)) if theirs == ours => Ok(runtime),
        (theirs, ours) => Err(fail(format!(
            "its cgroup is {theirs:?}, the environment's {ours:?}"
        ))),
    }
}

/// The VM pid of the process whose pid in its own PID namespace is `pid` and whose parent is
/// `first`.
fn find(first: Pid, pid: i32) -> Option<Pid> {
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let Some(vm_pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // A VM runs few processes: reading each one's status is cheap next to the fork.
        let Ok(status) = std::fs::read_to_string(format!("/proc/{vm_pid}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let parent = field("PPid:").and_then(|p| p.parse::<i32>().ok());
        let inner = field("NSpid:").and_then(|p| p.split_whitespace().last()?.parse::<i32>().ok());
        if parent == Some(first.as_raw()) && inner == Some(pid) {
            return Some(Pid::from_raw(vm_pid));
        }
    }
    None
}

/// The fields of `/proc/<pid>/status` a forked runtime must have: see [`verify`].
pub fn check_status(status: &str, (uid, gid): (u32, u32)) -> Result<(), String> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            .ok_or_else(|| format!("no {name} in its status"))
    };
    let four = |id: u32| format!("{id}\t{id}\t{id}\t{id}");
    let want = [
        ("Uid:", four(uid)),
        ("Gid:", four(gid)),
        ("Groups:", String::new()),
        ("CapInh:", "0000000000000000".to_owned()),
        ("CapPrm:", "0000000000000000".to_owned()),
        ("CapEff:", "0000000000000000".to_owned()),
        ("CapBnd:", "0000000000000000".to_owned()),
        ("CapAmb:", "0000000000000000".to_owned()),
        ("NoNewPrivs:", "1".to_owned()),
        ("Seccomp:", "2".to_owned()),
    ];
    for (name, value) in want {
        let got = field(name)?;
        if got != value {
            return Err(format!("{name} {got:?}, not {value:?}"));
        }
    }
    let filters: u32 = field("Seccomp_filters:")?
        .parse()
        .map_err(|_| "an unreadable Seccomp_filters".to_owned())?;
    if filters < 4 {
        return Err(format!(
            "{filters} seccomp filters: the container's were not installed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH: &str = "Name:\tpython3.11\nUmask:\t0022\nState:\tS (sleeping)\nPid:\t812\n\
        PPid:\t805\nUid:\t993\t993\t993\t993\nGid:\t993\t993\t993\t993\nGroups:\t\n\
        NSpid:\t812\t2\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\n\
        CapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\n\
        NoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t4\n";

    #[test]
    fn a_runtime_like_a_fresh_starts_passes() {
        assert_eq!(check_status(FRESH, (993, 993)), Ok(()));
    }

    #[test]
    fn any_privilege_or_other_identity_fails() {
        let cases = [
            ("Uid:\t993\t993\t993\t993", "Uid:\t993\t0\t993\t993"),
            ("Gid:\t993\t993\t993\t993", "Gid:\t993\t993\t993\t0"),
            ("Groups:\t", "Groups:\t0"),
            ("CapEff:\t0000000000000000", "CapEff:\t000001ffffffffff"),
            ("CapBnd:\t0000000000000000", "CapBnd:\t0000000000200000"),
            ("CapAmb:\t0000000000000000", "CapAmb:\t0000000000000001"),
            ("NoNewPrivs:\t1", "NoNewPrivs:\t0"),
            ("Seccomp:\t2", "Seccomp:\t0"),
            ("Seccomp_filters:\t4", "Seccomp_filters:\t2"),
            ("CapPrm:\t0000000000000000\n", ""),
        ];
        for (fresh, other) in cases {
            let status = FRESH.replace(fresh, other);
            assert!(check_status(&status, (993, 993)).is_err(), "{other}");
        }
        assert!(check_status(FRESH, (1000, 993)).is_err());
    }

    #[test]
    fn answers_are_parsed_strictly() {
        assert_eq!(
            parse_answer(b"{\"ready\": true}\n").unwrap().ready,
            Some(true)
        );
        assert_eq!(parse_answer(b"{\"pid\": 2}\n").unwrap().pid, Some(2));
        assert_eq!(
            parse_answer(b"{\"error\": \"no\"}\n")
                .unwrap()
                .error
                .as_deref(),
            Some("no")
        );
        for bad in [
            &b"{\"ready\": false}"[..],
            b"{\"pid\": 1}",
            b"{\"pid\": -5}",
            b"{\"pid\": 2, \"error\": \"x\"}",
            b"{\"pid\": 2, \"extra\": 1}",
            b"{}",
            b"[2]",
            b"pid 2",
        ] {
            assert!(
                matches!(parse_answer(bad), Err(SnapError::Garbled(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_template_serves_only_the_same_version_with_the_same_ids() {
        let request = |version: &str, uid: u32| CreateContainer {
            container_id: "c1".into(),
            function: ember_protocol::FunctionSpec {
                name: "f".into(),
                arn: "arn".into(),
                version: version.into(),
                handler: "app.handler".into(),
                runtime: "python3.11".into(),
                region: "eu-west-1".into(),
                environment: BTreeMap::new(),
                memory_mb: 128,
                timeout_ms: 3000,
                ephemeral_storage_mb: 512,
                code: ember_protocol::CodeSource::Directory { path: "/c".into() },
                layers: Vec::new(),
            },
            uid,
            gid: 993,
            cpu_millis: 100,
            pids_max: 64,
            freeze_idle: true,
            snap_start: true,
            credentials: None,
            egress: ember_protocol::Egress::Allow,
        };
        let mut other_container = request("1", 993);
        other_container.container_id = "c2".into();
        assert_eq!(key(&request("1", 993)), key(&other_container));
        assert_ne!(key(&request("1", 993)), key(&request("2", 993)));
        assert_ne!(key(&request("1", 993)), key(&request("1", 994)));
    }
}
