//! Spare container inits: `container-init` processes spawned ahead of need, each already in a
//! cgroup of its own, waiting for a plan.
//!
//! # Why
//!
//! Moving a process into a cgroup (a write to `cgroup.procs`, v1 or v2) takes the kernel's
//! global `cgroup_threadgroup_rwsem` for writing, and a per-CPU rwsem that has been idle first
//! waits for an RCU grace period. On this project's machine (a nested, paravirtualized guest)
//! that one write took 3 ms on a quiet machine and 8–15 ms on a busy one, the largest single step of
//! a native cold start (see BENCHMARKS.md, "Where a native cold start goes"). Spawning the init
//! (`posix_spawn` and the exec of the agent's own binary, its dynamic loading and Rust's start)
//! is the next, and the namespaces' creation the third (its network namespace's also waits on
//! the kernel's RTNL lock, which the teardown of a previous container's network namespace holds
//! through RCU grace periods). None of them depends on the function: all are done here ahead of
//! time, off the cold start's path, and a new container claims a spare: it gets the function's
//! limits (one write per limit file, no move) and its plan, and goes on exactly as a freshly
//! spawned init would from its namespaces on. When none is ready (a burst of creations), or one
//! cannot be claimed, the container is made the ordinary way: [`spawn_init`], a move into a new
//! cgroup, the plan, the namespaces.
//!
//! # What a spare is, and what it may do
//!
//! A spare is the agent's own `container-init` in its spare mode (`container-init --spare`, see
//! `init::start_spare`), in a group `spare-<n>` of the VM's cgroup (not `c-`-prefixed, so no
//! container id can name it). The agent moves it into that group, then sends it one byte; only
//! then does it unshare the container's namespaces (so its cgroup namespace's root is its own
//! group, never the VM's), bring up the new network namespace's loopback and bind the Runtime
//! API's socket there, say so (one byte, `n`), and block reading its plan. In a VM with a network
//! the agent then gives that namespace its link (see [`crate::net`]: a veth pair, addresses,
//! routes), so that a claim pays nothing for networking but the container's egress (a
//! `Deny` takes the default route away). Until it is claimed it has run nothing but
//! the agent's binary: no function code; when it pre-builds (below), its PID 1 (a fork of it)
//! and the function-blind part of the root, else no mounts and no process in its PID namespace. A claim
//! renames its group `c-<id>`, as an ordinary container's is named (v1 only: v2 cannot rename a
//! group, and there the container keeps `spare-<n>`), and applies the container's limits before
//! the plan is sent, so the invariant "limits before any function code" holds as on the
//! ordinary path. The group has no limits of its own before (the
//! VM's apply above it).
//!
//! # What a spare pre-builds
//!
//! With the agent's word comes a [`SparePlan`] (see [`Prep`]): the spare forks the container's
//! PID 1 at once, which keeps a detached copy of each directory a function's layers come from,
//! builds the root's system part ([`plan::system_mounts`]), pivots into it and detaches the
//! VM's root, all before any claim; the spare says `r` instead of `n`. A claim of such a spare
//! sends a plan of the function's part only ([`plan::function_mounts`]), which PID 1 mounts
//! through the copies. A function whose layers are not all in the copies ([`Prep::serves`])
//! takes no pre-built spare. A spare that fails to pre-build turns it off for the VM
//! (`prebuild_off`). ARCHITECTURE.md, "What a spare pre-builds", has the measurements and why
//! it is safe.
//!
//! # Cleanup
//!
//! A spare that is dropped (discarded, or the pool closed at the agent's shutdown) is destroyed:
//! its cgroup's processes killed and the group removed. Its init would exit by itself anyway: the
//! agent's end of its control socket closes with it, and a plan that never comes is a failed
//! read. A spare found dead at a claim is discarded and the next one (or the ordinary path)
//! serves. Spares live in the VM's cgroup and PID namespace: whatever is left when the VM goes
//! goes with it, as containers do. A spare's link goes with its network namespace, and its
//! addresses are freed when the spare is dropped.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ember_protocol::ExitStatus;
use ember_sandbox::cgroup::{Cgroup, CgroupError, CgroupVersion, Hierarchy, Limits};
use nix::fcntl::OFlag;
use nix::unistd::Pid;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::init;
use super::plan::{self, Mount, SparePlan};
use crate::net::{ContainerLink, VmNet};
use crate::reaper::Reaper;

/// How many spare inits a VM keeps ready: two, so that two creations close together both find
/// one while the first is replaced.
pub const SPARE_INITS: usize = 2;

/// A `container-init` process just spawned, with the agent's ends of its channels.
#[derive(Debug)]
pub(super) struct Spawned {
    pub(super) pid: Pid,
    /// Its exit status, from the reaper.
    pub(super) exit: oneshot::Receiver<ExitStatus>,
    /// The agent's end of the control socket (the init's stdin).
    pub(super) control: StdUnixStream,
    /// The log pipe's read end (the init's stdout and stderr are its write end).
    pub(super) log_read: OwnedFd,
    /// A copy of the log pipe's write end, for a runtime forked from a template (see
    /// [`super::template`]); closed once that is settled, or the pipe would never end.
    pub(super) log_write: OwnedFd,
}

/// Spawns the agent's binary as `container-init` (a spare's with `spare`), with a new control
/// socket as its stdin and a new log pipe as its stdout and stderr; the child's ends are closed
/// here once it has them.
pub(super) fn spawn_init(
    exe: &std::path::Path,
    reaper: &Reaper,
    spare: bool,
) -> io::Result<Spawned> {
    let (control, child_control) = StdUnixStream::pair()?;
    let (log_read, log_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let log_write_too = log_write.try_clone()?;
    let log_for_template = log_write.try_clone()?;
    let mut command = Command::new(exe);
    command
        .arg(init::ARG)
        .args(spare.then_some(init::SPARE_ARG))
        .arg0("ember-container-init")
        .env_clear()
        .stdin(Stdio::from(OwnedFd::from(child_control)))
        .stdout(Stdio::from(log_write))
        .stderr(Stdio::from(log_write_too));
    let (child, exit) = reaper.spawn(&mut command)?;
    // The command holds the child's ends: they must close here, or the pipe never ends.
    drop(command);
    let pid = Pid::from_raw(child.id() as i32);
    drop(child);
    Ok(Spawned {
        pid,
        exit,
        control,
        log_read,
        log_write: log_for_template,
    })
}

/// An init waiting for its plan in a cgroup of its own. Dropping it destroys it.
#[derive(Debug)]
pub(super) struct Spare {
    /// `None` once handed over by [`Spare::into_parts`].
    cgroup: Option<Arc<dyn Cgroup>>,
    init: Option<Spawned>,
    /// Its network namespace's link, in a VM with a network.
    link: Option<Box<ContainerLink>>,
    /// Whether its root's system part is built (see "What a spare pre-builds").
    prebuilt: bool,
}

/// A claimed spare's parts: the container's now. The last says whether its root's system part
/// is built, so that its plan holds the function's part only.
pub(super) type Claimed = (Arc<dyn Cgroup>, Spawned, Option<Box<ContainerLink>>, bool);

impl Spare {
    /// Whether its init is still there to take a plan.
    fn alive(&mut self) -> bool {
        match self.init.as_mut().map(|init| init.exit.try_recv()) {
            Some(Err(oneshot::error::TryRecvError::Empty)) => true,
            // Exited, or nobody will ever say (the reaper is gone).
            _ => false,
        }
    }

    /// Gives the spare the container's group name `name` (v1; v2 cannot rename a group, and
    /// the container keeps the spare's) and its limits; on success it is the container's.
    pub(super) fn claim(
        mut self,
        hierarchy: &Hierarchy,
        name: &str,
        limits: &Limits,
    ) -> Result<Claimed, Self> {
        if !self.alive() {
            return Err(self);
        }
        let Some(cgroup) = self.cgroup.take() else {
            return Err(self);
        };
        let spare_name = cgroup.path().to_path_buf();
        let cgroup: Arc<dyn Cgroup> = match hierarchy.version() {
            CgroupVersion::V1 => match hierarchy.rename(cgroup.path(), name) {
                Ok(renamed) => Arc::from(renamed),
                Err(err) => {
                    warn!(error = %ember_stdx::error_chain(&err), "cannot rename a spare init's cgroup");
                    self.cgroup = Some(cgroup);
                    return Err(self);
                }
            },
            CgroupVersion::V2 => cgroup,
        };
        if let Err(err) = cgroup.apply(limits) {
            warn!(error = %err, "cannot give a spare init the container's limits");
            // Its old name back, so that its destruction (off this path) cannot meet the
            // group the container is then made in by the ordinary way, of the same name.
            match hierarchy.version() {
                CgroupVersion::V1 => match hierarchy.rename(cgroup.path(), &spare_name) {
                    Ok(back) => self.cgroup = Some(Arc::from(back)),
                    Err(_) => {
                        // Destroyed here and now instead (a rare path: a kill and an rmdir).
                        drop(self.init.take());
                        if let Err(err) = cgroup.destroy() {
                            warn!(error = %err, "cannot remove a spare init's cgroup");
                        }
                    }
                },
                CgroupVersion::V2 => self.cgroup = Some(cgroup),
            }
            return Err(self);
        }
        self.cgroup = Some(cgroup.clone());
        match (self.cgroup.take(), self.init.take()) {
            (Some(cgroup), Some(init)) => Ok((cgroup, init, self.link.take(), self.prebuilt)),
            _ => Err(self),
        }
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        // The init ends when its control socket closes; the kill makes sure of it.
        drop(self.init.take());
        if let Some(cgroup) = self.cgroup.take() {
            if let Err(err) = cgroup.destroy() {
                warn!(path = %cgroup.path().display(), error = %err, "cannot remove a spare init's cgroup");
            }
        }
    }
}

/// Why a spare could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SpareError {
    #[error("cannot make the spare's cgroup")]
    Cgroup(#[source] CgroupError),
    #[error("cannot spawn the spare init")]
    Spawn(#[source] io::Error),
    #[error("cannot move the spare init into its cgroup")]
    Move(#[source] CgroupError),
    #[error("cannot tell the spare init it is in its cgroup")]
    Tell(#[source] io::Error),
    #[error("the spare init did not make its namespaces")]
    Namespaces(#[source] io::Error),
    #[error("the spare init did not pre-build its root")]
    Prebuild(#[source] io::Error),
    #[error("cannot give the spare its network link")]
    Link(#[source] crate::net::NetError),
}

/// The VM's spare inits; see the module docs.
#[derive(Debug)]
pub(super) struct Spares {
    exe: PathBuf,
    reaper: Arc<Reaper>,
    network: Option<Arc<VmNet>>,
    ready: Mutex<VecDeque<Spare>>,
    /// Spares being made.
    making: AtomicUsize,
    /// Numbers the spares' cgroups.
    next: AtomicU64,
    /// Set at shutdown: nothing more is made, and what is made meanwhile is destroyed.
    closed: AtomicBool,
    /// Set when a spare failed to pre-build its root: the VM's spares build nothing ahead from
    /// then on (a kernel whose overlayfs takes no detached layer, Linux before 6.15).
    prebuild_off: AtomicBool,
}

impl Spares {
    pub(super) fn new(exe: PathBuf, reaper: Arc<Reaper>, network: Option<Arc<VmNet>>) -> Self {
        Self {
            exe,
            reaper,
            network,
            ready: Mutex::new(VecDeque::new()),
            making: AtomicUsize::new(0),
            next: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            prebuild_off: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Spare>> {
        // Pushes and pops only: a panicking holder cannot tear it.
        self.ready.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A ready spare, its group renamed `name` (see [`Spare::claim`]) with the container's
    /// `limits` applied; `None` when none is ready (or none could be claimed: each such one is
    /// destroyed, off this path). A pre-built one only if `prebuilt_ok` (its root can be
    /// finished with the function's part: [`Prep::serves`]).
    pub(super) fn claim(
        &self,
        hierarchy: &Hierarchy,
        name: &str,
        limits: &Limits,
        prebuilt_ok: bool,
    ) -> Option<Claimed> {
        loop {
            let spare = {
                let mut ready = self.lock();
                let at = ready.iter().position(|s| prebuilt_ok || !s.prebuilt)?;
                ready.remove(at)?
            };
            match spare.claim(hierarchy, name, limits) {
                Ok(claimed) => return Some(claimed),
                Err(spare) => {
                    debug!("a spare init could not be claimed; it is destroyed");
                    discard(spare);
                }
            }
        }
    }

    /// Makes spares, in the background, until [`SPARE_INITS`] are ready or being made; each
    /// pre-builds `prep` when given (and no spare of this VM failed to).
    pub(super) fn refill(self: &Arc<Self>, hierarchy: &Hierarchy, prep: Option<Arc<Prep>>) {
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return;
            }
            let making = self.making.load(Ordering::Relaxed);
            if self.lock().len() + making >= SPARE_INITS {
                return;
            }
            if self
                .making
                .compare_exchange(making, making + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            let this = self.clone();
            let hierarchy = hierarchy.clone();
            let prep = prep
                .clone()
                .filter(|_| !self.prebuild_off.load(Ordering::Relaxed));
            tokio::task::spawn_blocking(move || {
                let prebuilding = prep.is_some();
                let made = this.make(&hierarchy, prep.as_deref());
                this.making.fetch_sub(1, Ordering::Relaxed);
                match made {
                    // Closed meanwhile: dropped here, which destroys it.
                    Ok(spare) if this.closed.load(Ordering::Relaxed) => drop(spare),
                    Ok(spare) => this.lock().push_back(spare),
                    Err(err @ SpareError::Prebuild(_)) if prebuilding => {
                        this.prebuild_off.store(true, Ordering::Relaxed);
                        warn!(
                            error = %ember_stdx::error_chain(&err),
                            "a spare container init could not pre-build its root; \
                             this VM's spares build nothing ahead from now on"
                        );
                    }
                    Err(err) => warn!(
                        error = %ember_stdx::error_chain(&err),
                        "cannot make a spare container init; containers start the ordinary way"
                    ),
                }
            });
        }
    }

    /// One spare: a group, an init spawned and moved into it (which pre-builds `prep`'s root,
    /// when given).
    fn make(&self, hierarchy: &Hierarchy, prep: Option<&Prep>) -> Result<Spare, SpareError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let cgroup: Arc<dyn Cgroup> = Arc::from(
            hierarchy
                .create(format!("spare-{n}"))
                .map_err(SpareError::Cgroup)?,
        );
        let mut spare = Spare {
            cgroup: Some(cgroup.clone()),
            init: None,
            link: None,
            prebuilt: prep.is_some(),
        };
        // From here on, a failure drops `spare`, which removes what was made.
        let mut init = spawn_init(&self.exe, &self.reaper, true).map_err(SpareError::Spawn)?;
        let pid = init.pid;
        let placed = cgroup.add_task(pid).map_err(SpareError::Move);
        // Its word to make the namespaces: it is in its group now (see `init::start_spare`),
        // with what to pre-build.
        let word = match prep {
            Some(prep) => prep.word.as_slice(),
            None => &[init::PLACED],
        };
        let told = placed.and_then(|()| init.control.write_all(word).map_err(SpareError::Tell));
        let made = told.and_then(|()| namespaces_made(&mut init.control, prep.is_some()));
        spare.init = Some(init);
        made?;
        if let Some(network) = &self.network {
            // On a blocking thread of the agent's runtime (see `refill`).
            let link = tokio::runtime::Handle::current()
                .block_on(network.link(pid.as_raw() as u32))
                .map_err(SpareError::Link)?;
            spare.link = Some(Box::new(link));
        }
        debug!(path = %cgroup.path().display(), %pid, "spare container init ready");
        Ok(spare)
    }

    /// Destroys every ready spare and makes no more (the agent's shutdown).
    pub(super) async fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let all: Vec<Spare> = self.lock().drain(..).collect();
        if all.is_empty() {
            return;
        }
        let _ = tokio::task::spawn_blocking(move || drop(all)).await;
    }
}

/// Waits for a spare init's word that its namespaces are made (`n`), or, when it was asked to
/// pre-build, that its root is pre-built too (`r`); anything else is its failure report, or its
/// end.
fn namespaces_made(control: &mut StdUnixStream, prebuild: bool) -> Result<(), SpareError> {
    use std::io::Read;
    let failure = |e: io::Error| match prebuild {
        true => SpareError::Prebuild(e),
        false => SpareError::Namespaces(e),
    };
    control
        .set_read_timeout(Some(NAMESPACES_TIMEOUT))
        .map_err(failure)?;
    let mut word = [0u8; 1];
    let read = control.read_exact(&mut word);
    let failed = match (read, &word) {
        (Ok(()), init::NAMESPACES_MADE) if !prebuild => None,
        (Ok(()), init::ROOT_PREBUILT) if prebuild => None,
        (Ok(()), _) => {
            // Its report, a line of JSON (`SetupFailed`), says why.
            let mut line = word.to_vec();
            let mut rest = [0u8; 1024];
            if let Ok(n) = control.read(&mut rest) {
                line.extend_from_slice(&rest[..n]);
            }
            Some(io::Error::other(format!(
                "the spare init reported a failure: {}",
                String::from_utf8_lossy(&line).trim_end()
            )))
        }
        (Err(e), _) => Some(e),
    };
    control.set_read_timeout(None).map_err(failure)?;
    match failed {
        None => Ok(()),
        Some(e) => Err(failure(e)),
    }
}

/// How long a spare init may take to make its namespaces.
const NAMESPACES_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a VM's spares pre-build (see "What a spare pre-builds"), made once per VM.
#[derive(Debug)]
pub(super) struct Prep {
    /// The agent's word to a spare that it is in its group: [`init::PLACED_PREBUILD`], then
    /// the [`SparePlan`]'s length (big-endian `u32`) and JSON.
    word: Vec<u8>,
    /// The plan's staged directories, each with the id of the VM's mount it is on.
    staged: Vec<(PathBuf, u64)>,
}

impl Prep {
    /// The word for `plan`, and the mounts its staged directories are on.
    pub(super) fn new(plan: &SparePlan) -> io::Result<Self> {
        let json = serde_json::to_vec(plan).map_err(io::Error::other)?;
        let len = u32::try_from(json.len()).map_err(io::Error::other)?;
        let mut word = vec![init::PLACED_PREBUILD];
        word.extend_from_slice(&len.to_be_bytes());
        word.extend_from_slice(&json);
        let staged = plan
            .staged
            .iter()
            .map(|dir| Ok((dir.clone(), mount_id(dir)?)))
            .collect::<io::Result<_>>()?;
        Ok(Self { word, staged })
    }

    /// Whether a pre-built root can take `mounts` (a function's part): every source lies in a
    /// staged directory and on the same mount as it, so that the staged copy of that mount
    /// shows what the source shows in the VM (a mount below a staged directory would not be in
    /// its copy).
    pub(super) fn serves(&self, mounts: &[Mount]) -> bool {
        let dirs: Vec<PathBuf> = self.staged.iter().map(|(dir, _)| dir.clone()).collect();
        plan::sources(mounts).into_iter().all(|source| {
            plan::staged_at(&dirs, source)
                .is_some_and(|(i, _)| mount_id(source).is_ok_and(|id| id == self.staged[i].1))
        })
    }
}

/// The id of the mount `path` is on.
fn mount_id(path: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statx(
        rustix::fs::CWD,
        path,
        rustix::fs::AtFlags::empty(),
        rustix::fs::StatxFlags::MNT_ID,
    )?;
    if stat.stx_mask & rustix::fs::StatxFlags::MNT_ID.bits() == 0 {
        return Err(io::Error::other("statx gave no mount id"));
    }
    Ok(stat.stx_mnt_id)
}

/// Destroys a spare off the caller's path.
fn discard(spare: Spare) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn_blocking(move || drop(spare));
        }
        Err(_) => drop(spare),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::time::Duration;

    use ember_sandbox::cgroup::{CgroupVersion, CpuQuota};

    use super::*;

    /// A v2 hierarchy in a temp dir with the groups `spare-0` and `spare-1` laid out as the
    /// kernel would make them, and an "init" that answers each line on its stdin on its stdout.
    fn fixture() -> (tempfile::TempDir, Hierarchy, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cgroup");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("cgroup.controllers"), "cpu memory pids").unwrap();
        fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        fs::write(root.join("cgroup.procs"), "").unwrap();
        for group in ["spare-0", "spare-1"] {
            fs::create_dir_all(root.join(group)).unwrap();
            for file in ["cgroup.procs", "memory.max", "cpu.max", "pids.max"] {
                fs::write(root.join(group).join(file), "").unwrap();
            }
        }
        let exe = dir.path().join("init");
        // It takes the agent's one-byte word that it is in its group, says its namespaces are
        // made, then answers lines.
        let script = "#!/bin/sh\ndd bs=1 count=1 status=none >/dev/null\nprintf n >&0\n\
                      while read line; do echo \"plan: $line\"; done\n";
        fs::write(&exe, script).unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        let hierarchy = Hierarchy::new(&root, CgroupVersion::V2);
        (dir, hierarchy, exe)
    }

    fn procs(root: &Path, group: &str) -> String {
        fs::read_to_string(root.join(group).join("cgroup.procs")).unwrap()
    }

    #[tokio::test]
    async fn a_claimed_spare_is_in_its_group_with_the_limits_and_talks_over_its_channels() {
        let (_dir, hierarchy, exe) = fixture();
        let reaper = Reaper::start().unwrap();
        let spares = Spares::new(exe, reaper, None);
        let spare = spares.make(&hierarchy, None).unwrap();
        let pid = spare.init.as_ref().unwrap().pid;
        // Moved into its group before anything is asked of it.
        assert_eq!(procs(hierarchy.root(), "spare-0"), pid.to_string());
        spares.lock().push_back(spare);

        let limits = Limits {
            memory_bytes: Some(128 << 20),
            cpu: Some(CpuQuota {
                quota_us: 7_200,
                period_us: 100_000,
            }),
            pids_max: Some(1024),
        };
        let (cgroup, init, _, prebuilt) = spares
            .claim(&hierarchy, "c-1", &limits, true)
            .expect("a ready spare is claimed");
        assert!(!prebuilt, "it was not asked to pre-build");
        // v2 cannot rename a group: the container keeps the spare's.
        assert_eq!(cgroup.path(), Path::new("spare-0"));
        let group = hierarchy.root().join("spare-0");
        assert_eq!(
            fs::read_to_string(group.join("memory.max")).unwrap(),
            "134217728"
        );
        assert_eq!(
            fs::read_to_string(group.join("cpu.max")).unwrap(),
            "7200 100000"
        );
        assert_eq!(fs::read_to_string(group.join("pids.max")).unwrap(), "1024");
        assert!(
            spares.claim(&hierarchy, "c-2", &limits, true).is_none(),
            "there was one spare"
        );

        // The control socket is its stdin, the log pipe its stdout; the pipe ends with it once
        // the agent's own copy of the write end is closed.
        let Spawned {
            mut control,
            log_read,
            log_write,
            exit,
            ..
        } = init;
        control.write_all(b"go\n").unwrap();
        drop(control);
        drop(log_write);
        let mut log = String::new();
        fs::File::from(log_read).read_to_string(&mut log).unwrap();
        assert_eq!(log, "plan: go\n");
        let status = tokio::time::timeout(Duration::from_secs(5), exit).await;
        assert_eq!(status.unwrap().unwrap().code, Some(0));
    }

    #[tokio::test]
    async fn a_dead_spare_is_not_claimed() {
        let (_dir, hierarchy, exe) = fixture();
        let reaper = Reaper::start().unwrap();
        let spares = Spares::new(exe, reaper, None);
        let mut spare = spares.make(&hierarchy, None).unwrap();
        let init = spare.init.as_mut().unwrap();
        nix::sys::signal::kill(init.pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        // The kernel empties a group of its dead; the fixture is told so.
        fs::write(hierarchy.root().join("spare-0/cgroup.procs"), "").unwrap();
        for _ in 0..500 {
            if !spare.alive() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!spare.alive(), "the reaper saw the spare's init die");
        spares.lock().push_back(spare);
        assert!(spares
            .claim(&hierarchy, "c-1", &Limits::default(), true)
            .is_none());
        assert!(spares.lock().is_empty(), "the dead spare was discarded");
    }

    #[tokio::test]
    async fn on_v1_a_claim_renames_the_group_and_a_failed_claim_gives_the_name_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cgroup");
        for controller in ["memory", "pids"] {
            for group in ["", "spare-0", "spare-1"] {
                fs::create_dir_all(root.join(controller).join(group)).unwrap();
                fs::write(root.join(controller).join(group).join("cgroup.procs"), "").unwrap();
            }
            fs::write(
                root.join(controller).join("spare-0/memory.limit_in_bytes"),
                "",
            )
            .unwrap();
            fs::write(root.join(controller).join("spare-0/memory.swappiness"), "").unwrap();
            fs::write(root.join(controller).join("spare-0/pids.max"), "").unwrap();
        }
        let (_fixture, _, exe) = fixture();
        let hierarchy = Hierarchy::new(&root, CgroupVersion::V1);
        let reaper = Reaper::start().unwrap();
        let spares = Spares::new(exe, reaper, None);
        let memory = Limits {
            memory_bytes: Some(128 << 20),
            ..Limits::default()
        };

        // spare-1 has no memory files: its claim fails, and it is spare-1 again.
        spares
            .lock()
            .push_back(spares.make(&hierarchy, None).unwrap());
        let failing = spares.make(&hierarchy, None).unwrap();
        let kept = spares.lock().pop_front().unwrap();
        spares.lock().push_back(failing);
        match spares
            .lock()
            .pop_front()
            .unwrap()
            .claim(&hierarchy, "c-2", &memory)
        {
            Ok(_) => panic!("a group without memory files took a memory limit"),
            Err(spare) => {
                assert!(root.join("memory/spare-1").is_dir());
                assert!(!root.join("memory/c-2").exists());
                // The fixture's kernel empties it as the real one would once it is killed.
                for controller in ["memory", "pids"] {
                    fs::write(root.join(controller).join("spare-1/cgroup.procs"), "").unwrap();
                }
                drop(spare);
            }
        }

        spares.lock().push_back(kept);
        let (cgroup, _init, _, _) = spares.claim(&hierarchy, "c-1", &memory, true).unwrap();
        assert_eq!(cgroup.path(), Path::new("c-1"));
        for controller in ["memory", "pids"] {
            assert!(root.join(controller).join("c-1").is_dir());
            assert!(!root.join(controller).join("spare-0").exists());
        }
        let limit = fs::read_to_string(root.join("memory/c-1/memory.limit_in_bytes")).unwrap();
        assert_eq!(limit, "134217728");
    }

    #[tokio::test]
    async fn closing_makes_no_more() {
        let (_dir, hierarchy, exe) = fixture();
        let reaper = Reaper::start().unwrap();
        let spares = Arc::new(Spares::new(exe, reaper, None));
        spares.close().await;
        spares.refill(&hierarchy, None);
        assert_eq!(spares.making.load(Ordering::Relaxed), 0);
        assert!(spares.lock().is_empty());
    }
}
