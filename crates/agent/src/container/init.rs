//! `ember-agent container-init`: the short-lived process that turns an [`InitPlan`] into a
//! running container. The agent's only code that forks, hence the module's `unsafe`.
//!
//! # Process model
//!
//! The agent is a multi-threaded-capable tokio process, which must not fork and then run
//! arbitrary code. So it spawns its own binary (`/proc/self/exe container-init`, a plain
//! `posix_spawn`), a fresh single-threaded process, with the control socket as stdin and the
//! container's log pipe as stdout and stderr. The agent moves it into the container's cgroup
//! before sending the plan, so everything from here on is charged and limited there. Then:
//!
//! 1. **init** reads the plan, `unshare`s mount, IPC, UTS, PID, cgroup and network namespaces,
//!    brings up the new network namespace's loopback and binds the Runtime API's listening socket
//!    there ([`InitPlan::runtime_api`]), forks the container's first process (which closes its
//!    copy of the socket), reports its pid ([`Report::Started`]) with the socket attached
//!    (`SCM_RIGHTS`), and exits. The agent serves the Runtime API on that socket: a socket
//!    belongs to the namespace it was made in, whoever accepts on it, so the runtime reaches it at
//!    `127.0.0.1` in its own namespace while nothing in any other namespace can. Its child is
//!    re-parented to the agent (PID 1 of the VM, or a subreaper), which is what lets the agent's
//!    one reaper collect its exit status.
//! 2. **the container's PID 1** waits for the agent's go (sent once the agent watches for its
//!    exit, so that no exit can go unseen), makes every mount private, builds the root (see
//!    [`plan::mounts`](super::plan::mounts); its cgroupfs mounts are made here, in the
//!    container's group and cgroup namespace, so their root is the container's group), pivots
//!    into it, detaches the old root, makes `/` read-only and sets Lambda's open-file limit
//!    ([`CONTAINER_OPEN_FILES`]). Then it forks the runtime, drops to a uid and gid of its own
//!    ([`INIT_UID`]: not the function's, so the function cannot signal it) with no capabilities
//!    and `no_new_privs`, and stays as the
//!    container's reaper: the runtime is not PID 1, so it gets ordinary signal semantics and its
//!    orphans are reaped. It reports whether the exec worked ([`Report::Running`] or
//!    [`Report::ExecFailed`]) and, when the runtime ends, how ([`Report::RuntimeExited`]); then it
//!    exits, and the kernel kills whatever is left in the PID namespace.
//! 3. **the runtime** drops to the function's uid and gid with no capabilities and
//!    `no_new_privs`, starts a session, takes `/dev/null` as stdin, `chdir`s to `/var/task`,
//!    installs the seccomp filter last, and execs the bootstrap with the Lambda environment.
//!
//! When the agent's go is `t` instead of `g`, PID 1 builds the root, reports
//! [`Report::Built`] and waits: the agent then either has the runtime forked into the container
//! from the VM's runtime template (see [`super::template`]) and sends `p` and its pid, which
//! PID 1 adopts (the runtime is its child by re-parenting) and reaps as in 2., or sends `x`, and
//! PID 1 forks and execs the runtime as above.
//!
//! As `container-init --spare` (see [`super::spare`]) it is spawned before any container needs
//! it: it waits for one byte from the agent (sent once the agent has moved it into the cgroup it
//! was made for), makes the namespaces and the Runtime API's socket of 1., then waits for a plan
//! and goes on from the fork of 1. When that byte comes with a [`SparePlan`], it forks the
//! container's PID 1 at once instead ([`prebuilt_spare`]), which builds the root's system part,
//! pivots into it and detaches the VM's root before any claim ([`prebuild`]); a claim's plan,
//! passed on to it, then holds only the function's part ([`finish_prebuilt`]).
//!
//! The same binary, as `ember-agent runtime-template`, is a template's launcher
//! ([`template_main`]): a private mount namespace laid out like a container's runtime view,
//! then an exec of the runtime's interpreter.
//!
//! Every step before the exec allocates freely: each process here is single-threaded.

// fork(2), resetting SIGPIPE before exec, and the ioctls that bring up the loopback.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ember_sandbox::seccomp::{self, ContainerFilter};
use ember_stdx::error_chain;
use nix::errno::Errno;
use nix::fcntl::{open, FdFlag, OFlag};
use nix::libc;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::stat::{umask, Mode};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{
    chdir, dup2, execve, fork, mkdir, pipe2, pivot_root, read, sethostname, setsid, symlinkat,
    ForkResult, Gid, Pid, Uid,
};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketType,
};

use super::plan::{InitPlan, Mount, Report, SnapRole, SparePlan, TemplatePlan, INIT_GID, INIT_UID};

/// The hidden first argument that runs the `ember-agent` binary in this mode.
pub const ARG: &str = "container-init";

/// The control socket: this process's stdin.
const CONTROL: RawFd = 0;

/// The largest plan accepted (the environment is the bulk of it: Lambda caps it at 4 KB).
const MAX_PLAN: usize = 1 << 20;

/// What went wrong, for [`Report::SetupFailed`].
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) stage: String,
    pub(super) error: String,
}

pub(super) fn failed(stage: impl Into<String>) -> impl FnOnce(Errno) -> Failure {
    let stage = stage.into();
    move |errno| Failure {
        stage,
        error: errno.to_string(),
    }
}

/// A spare's word to the agent that its namespaces are made (see [`super::spare`]).
pub(super) const NAMESPACES_MADE: &[u8; 1] = b"n";

/// A spare's word to the agent that its namespaces are made and its root pre-built (see
/// [`super::spare`]).
pub(super) const ROOT_PREBUILT: &[u8; 1] = b"r";

/// The agent's word to a spare that it is in its group, and that it builds nothing ahead.
pub(super) const PLACED: u8 = b'p';

/// The agent's word to a spare that it is in its group, followed by a [`SparePlan`] (a
/// big-endian `u32` length, then that much JSON): what to build ahead.
pub(super) const PLACED_PREBUILD: u8 = b'b';

/// The second argument that makes `container-init` a spare's (see [`super::spare`]).
pub const SPARE_ARG: &str = "--spare";

/// The `container-init` process; see the module docs.
pub fn main() -> ExitCode {
    let spare = std::env::args_os()
        .nth(2)
        .is_some_and(|arg| arg == SPARE_ARG);
    match if spare { start_spare() } else { start() } {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            send(&Report::SetupFailed {
                stage: failure.stage,
                error: failure.error,
            });
            ExitCode::FAILURE
        }
    }
}

fn start() -> Result<(), Failure> {
    let (plan, mut fds) = read_plan()?;
    let filter = match plan.snap {
        Some(SnapRole::Template) => seccomp::snap_template_filter(),
        _ => seccomp::container_filter(),
    }
    .map_err(|e| Failure {
        stage: "building the seccomp filter".into(),
        error: e.to_string(),
    })?;
    // A SnapStart template's runtime gets its fork channel as fd 3.
    let channel = match plan.snap {
        Some(SnapRole::Template) if fds.len() == 1 => fds.pop(),
        Some(SnapRole::Template) => {
            return Err(Failure {
                stage: "reading the plan".into(),
                error: format!(
                    "a template's plan comes with 1 descriptor, not {}",
                    fds.len()
                ),
            })
        }
        _ => None,
    };
    drop(fds);
    if let Some(SnapRole::Restored {
        template_pid,
        owner,
    }) = plan.snap
    {
        return super::snap_init::start_restored(&plan, &filter, template_pid, owner);
    }
    let listener = namespaces(plan.runtime_api)?;
    fork_first(&plan, &filter, listener, channel)
}

/// A spare's start (see [`super::spare`]): waits for the agent's word that this process is in
/// its own cgroup (a cgroup namespace unshared before would have the VM's group as its root),
/// makes the namespaces and the Runtime API's socket as [`start`] does, and then either waits
/// for its plan, to go on as [`start`] does, or, when the agent's word came with a
/// [`SparePlan`], forks the container's first process at once to pre-build the root
/// ([`prebuilt_spare`]).
fn start_spare() -> Result<(), Failure> {
    let mut placed = [0u8; 1];
    read_exact(&mut placed).map_err(failed("waiting to be placed in a cgroup"))?;
    let prep: Option<SparePlan> = match placed[0] {
        PLACED_PREBUILD => Some(read_json()?),
        _ => None,
    };
    let listener = namespaces(super::plan::RUNTIME_API)?;
    if let Some(prep) = prep {
        return prebuilt_spare(&prep, listener);
    }
    // The agent gives the new network namespace its link now, when the VM has a network.
    write_all(NAMESPACES_MADE).map_err(failed("saying the namespaces are made"))?;
    let filter = seccomp::container_filter().map_err(|e| Failure {
        stage: "building the seccomp filter".into(),
        error: e.to_string(),
    })?;
    let (plan, fds) = read_plan()?;
    if !fds.is_empty() {
        return Err(Failure {
            stage: "reading the plan".into(),
            error: "a spare's plan is an ordinary container's".into(),
        });
    }
    check_spare_plan(&plan)?;
    fork_first(&plan, &filter, listener, None)
}

/// What a spare's plan must be: an ordinary container's, with its Runtime API where the spare
/// bound it.
fn check_spare_plan(plan: &InitPlan) -> Result<(), Failure> {
    if plan.snap.is_some() {
        return Err(Failure {
            stage: "reading the plan".into(),
            error: "a spare's plan is an ordinary container's".into(),
        });
    }
    if plan.runtime_api != super::plan::RUNTIME_API {
        return Err(Failure {
            stage: "reading the plan".into(),
            error: format!(
                "a spare's Runtime API is at {}, not {}",
                super::plan::RUNTIME_API,
                plan.runtime_api
            ),
        });
    }
    Ok(())
}

/// A spare that pre-builds (see [`super::spare`]): forks the container's first process now,
/// which builds `prep` ([`prebuild`]) and says so on a pipe it then holds open for its life;
/// tells the agent ([`ROOT_PREBUILT`]); then waits for the claim's plan or the first process's
/// end, whichever comes first. A plan is passed on, as read, to the first process on a second
/// pipe, and reported as [`start`]'s is ([`Report::Started`] with the Runtime API's socket);
/// then this process exits, as [`start`]'s does. The first process's end (or a failure of the
/// pre-build, reported to the agent) ends this process too, so that the agent sees the spare
/// dead before it claims it.
fn prebuilt_spare(prep: &SparePlan, listener: TcpListener) -> Result<(), Failure> {
    let filter = seccomp::container_filter().map_err(|e| Failure {
        stage: "building the seccomp filter".into(),
        error: e.to_string(),
    })?;
    let (status_read, status_write) =
        pipe2(OFlag::O_CLOEXEC).map_err(failed("creating the spare's pipes"))?;
    let (plan_read, plan_write) =
        pipe2(OFlag::O_CLOEXEC).map_err(failed("creating the spare's pipes"))?;
    // SAFETY: single-threaded, as in `fork_first`.
    match unsafe { fork() }.map_err(failed("fork the container's first process"))? {
        ForkResult::Child => {
            drop(listener);
            drop((status_read, plan_write));
            let staged = match prebuild(prep) {
                Ok(staged) => staged,
                Err(failure) => {
                    let word = format!("{}\n{}", failure.stage, failure.error);
                    let _ = nix::unistd::write(&status_write, word.as_bytes());
                    exit(1)
                }
            };
            if nix::unistd::write(&status_write, ROOT_PREBUILT).is_err() {
                exit(1)
            }
            let plan = match forwarded_plan(plan_read) {
                Ok(plan) => plan,
                // The spare is gone, or was never claimed.
                Err(_) => exit(1),
            };
            if let Err(failure) = check_spare_plan(&plan) {
                send(&Report::SetupFailed {
                    stage: failure.stage,
                    error: failure.error,
                });
                exit(1)
            }
            // Its end would tell the spare, long gone by now, that this process died.
            drop(status_write);
            prebuilt_first_process(&plan, &filter, staged)
        }
        ForkResult::Parent { child } => {
            drop((status_write, plan_read));
            let mut word = [0u8; 1];
            let mut status = File::from(status_read);
            match status.read(&mut word) {
                Ok(1) if &word == ROOT_PREBUILT => {}
                Ok(1) => {
                    let mut rest = Vec::new();
                    let _ = status.read_to_end(&mut rest);
                    let mut text = word.to_vec();
                    text.extend(rest);
                    let text = String::from_utf8_lossy(&text).into_owned();
                    let (stage, error) = text.split_once('\n').unwrap_or(("", &text));
                    return Err(Failure {
                        stage: format!("pre-building the root: {stage}"),
                        error: error.to_owned(),
                    });
                }
                _ => {
                    return Err(Failure {
                        stage: "pre-building the root".into(),
                        error: "the container's first process ended".into(),
                    })
                }
            }
            write_all(ROOT_PREBUILT).map_err(failed("saying the root is pre-built"))?;
            // A plan, or the first process's end (its end of the status pipe closes).
            let stdin = std::io::stdin();
            let mut fds = [
                rustix::event::PollFd::new(&stdin, rustix::event::PollFlags::IN),
                rustix::event::PollFd::new(&status, rustix::event::PollFlags::IN),
            ];
            loop {
                match rustix::event::poll(&mut fds, None) {
                    Ok(_) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => {
                        return Err(failed("waiting for a plan")(Errno::from_raw(
                            e.raw_os_error(),
                        )))
                    }
                }
            }
            if !fds[1].revents().is_empty() {
                // Not a failure to report: nobody asked anything of this spare yet. The agent
                // sees it end, and makes another.
                exit(1)
            }
            let raw = read_raw_plan()?;
            let mut plan_write = File::from(plan_write);
            std::io::Write::write_all(&mut plan_write, &raw).map_err(|e| Failure {
                stage: "passing the plan on".into(),
                error: e.to_string(),
            })?;
            drop(plan_write);
            send_with(
                &Report::Started {
                    pid: child.as_raw(),
                },
                Some(listener.as_fd()),
            );
            Ok(())
        }
    }
}

/// Reads a plan as it came (its length's 4 bytes and its JSON), for the first process of a
/// pre-built spare; refused with descriptors (a spare's plan is an ordinary container's).
fn read_raw_plan() -> Result<Vec<u8>, Failure> {
    let (len, fds) = read_plan_length()?;
    if !fds.is_empty() {
        return Err(Failure {
            stage: "reading the plan".into(),
            error: "a spare's plan is an ordinary container's".into(),
        });
    }
    let body = u32::from_be_bytes(len) as usize;
    if body > MAX_PLAN {
        return Err(Failure {
            stage: "reading the plan".into(),
            error: format!("a plan of {body} bytes is too large"),
        });
    }
    let mut raw = vec![0u8; 4 + body];
    raw[..4].copy_from_slice(&len);
    read_exact(&mut raw[4..]).map_err(failed("reading the plan"))?;
    Ok(raw)
}

/// Reads the plan a pre-built spare passes on ([`read_raw_plan`]'s bytes) from `pipe`.
fn forwarded_plan(pipe: OwnedFd) -> Result<InitPlan, Failure> {
    let mut raw = Vec::new();
    File::from(pipe)
        .read_to_end(&mut raw)
        .map_err(|e| Failure {
            stage: "reading the plan".into(),
            error: e.to_string(),
        })?;
    let Some(json) = raw.get(4..) else {
        return Err(failed("reading the plan")(Errno::EPIPE));
    };
    serde_json::from_slice(json).map_err(|e| Failure {
        stage: "parsing the plan".into(),
        error: e.to_string(),
    })
}

/// Unshares the container's namespaces and binds the Runtime API's socket at `runtime_api` in
/// its network namespace, with the loopback up. A SnapStart environment's `C` calls it too, in
/// its user namespace `U` ([`super::snap_init`]): the namespaces are then `U`'s.
pub(super) fn namespaces(runtime_api: std::net::SocketAddr) -> Result<TcpListener, Failure> {
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWCGROUP
            | CloneFlags::CLONE_NEWNET,
    )
    .map_err(failed("unshare namespaces"))?;
    // This process is in the container's network namespace already (its PID namespace is its
    // children's): the Runtime API's socket is made here (in an ordinary container, as root)
    // and handed to the agent.
    loopback_up().map_err(failed("bringing up the container's loopback"))?;
    TcpListener::bind(runtime_api).map_err(|e| Failure {
        stage: format!("binding the Runtime API on {runtime_api}"),
        error: e.to_string(),
    })
}

/// Forks the container's first process, reports it with the Runtime API's socket, and returns
/// (this process then exits); the child goes on as [`first_process`], with a SnapStart
/// template's fork channel when it has one.
fn fork_first(
    plan: &InitPlan,
    filter: &ContainerFilter,
    listener: TcpListener,
    channel: Option<OwnedFd>,
) -> Result<(), Failure> {
    // SAFETY: this process is single-threaded (this mode of the binary starts no thread), so
    // the child is a complete copy of it and may run any code.
    match unsafe { fork() }.map_err(failed("fork the container's first process"))? {
        ForkResult::Parent { child } => {
            send_with(
                &Report::Started {
                    pid: child.as_raw(),
                },
                Some(listener.as_fd()),
            );
            Ok(())
        }
        ForkResult::Child => {
            // The agent serves the Runtime API; no process of the container holds its socket.
            drop(listener);
            first_process(plan, filter, channel)
        }
    }
}

/// Sets `IFF_UP` on `lo`, the only interface of the new network namespace, which the kernel
/// makes down: with it, 127.0.0.1 is an address of this namespace.
fn loopback_up() -> Result<(), Errno> {
    let socket = rustix::net::socket(AddressFamily::INET, SocketType::DGRAM, None)
        .map_err(|e| Errno::from_raw(e.raw_os_error()))?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid (empty) value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the ifreq it is given, which `request` is, named `lo`.
    Errno::result(unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) })?;
    // SAFETY: the kernel just filled the flags member of the union.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the ifreq it is given, which `request` is.
    Errno::result(unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) })?;
    Ok(())
}

/// Reads the plan: a big-endian `u32` length, then that much JSON; with the descriptors sent
/// along with the length's bytes (`SCM_RIGHTS`: a SnapStart template's fork channel).
fn read_plan() -> Result<(InitPlan, Vec<OwnedFd>), Failure> {
    let (len, fds) = read_plan_length()?;
    let len = u32::from_be_bytes(len) as usize;
    Ok((read_body(len)?, fds))
}

/// Reads a plan's length (a big-endian `u32`) with the descriptors sent along with its bytes.
fn read_plan_length() -> Result<([u8; 4], Vec<OwnedFd>), Failure> {
    let mut len = [0u8; 4];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match rustix::net::recvmsg(
            std::io::stdin().as_fd(),
            &mut [IoSliceMut::new(&mut len)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(msg) => break msg.bytes,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                return Err(failed("reading the plan")(Errno::from_raw(
                    e.raw_os_error(),
                )))
            }
        }
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    if got == 0 {
        return Err(failed("reading the plan")(Errno::EPIPE));
    }
    read_exact(&mut len[got..]).map_err(failed("reading the plan"))?;
    Ok((len, fds))
}

/// Reads a big-endian `u32` length, then that much JSON, from the control socket.
fn read_json<T: serde::de::DeserializeOwned>() -> Result<T, Failure> {
    let mut len = [0u8; 4];
    read_exact(&mut len).map_err(failed("reading the plan"))?;
    read_body(u32::from_be_bytes(len) as usize)
}

/// Reads `len` bytes of JSON from the control socket.
fn read_body<T: serde::de::DeserializeOwned>(len: usize) -> Result<T, Failure> {
    if len > MAX_PLAN {
        return Err(Failure {
            stage: "reading the plan".into(),
            error: format!("a plan of {len} bytes is too large"),
        });
    }
    let mut json = vec![0u8; len];
    read_exact(&mut json).map_err(failed("reading the plan"))?;
    serde_json::from_slice(&json).map_err(|e| Failure {
        stage: "parsing the plan".into(),
        error: e.to_string(),
    })
}

pub(super) fn read_exact(mut buf: &mut [u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        match read(CONTROL, buf) {
            Ok(0) => return Err(Errno::EPIPE),
            Ok(n) => buf = &mut buf[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes `buf` on the control socket.
fn write_all(mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        match rustix::net::send(std::io::stdin().as_fd(), buf, SendFlags::empty()) {
            Ok(0) => return Err(Errno::EPIPE),
            Ok(n) => buf = &buf[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Errno::from_raw(e.raw_os_error())),
        }
    }
    Ok(())
}

/// Writes one report line on the control socket. Best effort: if the agent is gone, so is the VM.
pub(super) fn send(report: &Report) {
    send_with(report, None);
}

/// [`send`], with a descriptor passed along (`SCM_RIGHTS`) when there is one.
pub(super) fn send_with(report: &Report, fd: Option<BorrowedFd<'_>>) {
    let Ok(mut line) = serde_json::to_vec(report) else {
        return;
    };
    line.push(b'\n');
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    let _ = rustix::net::sendmsg(
        std::io::stdin().as_fd(),
        &[IoSlice::new(&line)],
        &mut control,
        SendFlags::empty(),
    );
}

/// Ends this process at once, without unwinding into code that belongs to the parent's path.
pub(super) fn exit(code: i32) -> ! {
    std::process::exit(code)
}

/// PID 1 of the container; see the module docs. `channel` is a SnapStart template's fork
/// channel, which its runtime gets as fd 3. Never returns.
pub(super) fn first_process(
    plan: &InitPlan,
    filter: &ContainerFilter,
    channel: Option<OwnedFd>,
) -> ! {
    let go = read_go();
    let built = match plan.snap {
        // Its root was built and pivoted into before its namespaces were made (see
        // `super::snap_init`): only what belongs to its own namespaces is left.
        Some(SnapRole::Restored { .. }) => super::snap_init::finish_root(plan),
        _ => build(plan),
    };
    start_runtime(go, plan, filter, channel, built, None)
}

/// A pre-built spare's first process once claimed (see [`prebuilt_spare`]): as
/// [`first_process`], but the root is finished in place ([`finish_prebuilt`]).
fn prebuilt_first_process(plan: &InitPlan, filter: &ContainerFilter, staged: Staged) -> ! {
    let go = read_go();
    let built = finish_prebuilt(plan, &staged);
    start_runtime(go, plan, filter, None, built, Some(staged))
}

/// The agent's go (see the module docs); its absence ends this process.
fn read_go() -> u8 {
    let mut go = [0u8; 1];
    if read_exact(&mut go).is_err() {
        // The agent gave up on this container.
        exit(1);
    }
    go[0]
}

/// The rest of PID 1's start once its root is `built` (or not): the runtime forked from a
/// template or executed, as the agent's `go` says. A pre-built root's `staged` copies are let go
/// of once the runtime runs (see [`watch_runtime`]).
fn start_runtime(
    go: u8,
    plan: &InitPlan,
    filter: &ContainerFilter,
    channel: Option<OwnedFd>,
    built: Result<OwnedFd, Failure>,
    staged: Option<Staged>,
) -> ! {
    let null = match built {
        Ok(null) => null,
        Err(failure) => {
            send(&Report::SetupFailed {
                stage: failure.stage,
                error: failure.error,
            });
            exit(1);
        }
    };
    if go == b't' {
        // The agent may fork the runtime from a template into this container (see
        // `super::template`): it says which, once it has tried. The template's go-between
        // process in this PID namespace takes a pid out of the way (after this one) and puts
        // the counter back, so that the runtime gets the pid a fresh start's would (2).
        set_last_pid(TEMPLATE_PIDS_FROM);
        send(&Report::Built);
        let mut how = [0u8; 1];
        if read_exact(&mut how).is_err() {
            exit(1);
        }
        if how[0] != b'p' {
            set_last_pid(1);
        }
        if how[0] == b'p' {
            let mut pid = [0u8; 4];
            if read_exact(&mut pid).is_err() {
                exit(1);
            }
            // The runtime is this process's child already: its parent exited in this PID
            // namespace, which re-parents it here.
            let runtime = Pid::from_raw(i32::from_be_bytes(pid));
            watch_runtime(runtime, None, null, filter, staged);
        }
    }
    let (exec_read, exec_write) = match pipe2(OFlag::O_CLOEXEC) {
        Ok(pipe) => pipe,
        Err(e) => {
            send(&Report::SetupFailed {
                stage: "creating the exec pipe".into(),
                error: e.to_string(),
            });
            exit(1);
        }
    };
    // SAFETY: single-threaded, as in `start`.
    match unsafe { fork() } {
        Err(e) => {
            send(&Report::SetupFailed {
                stage: "forking the runtime".into(),
                error: e.to_string(),
            });
            exit(1)
        }
        Ok(ForkResult::Child) => {
            drop(exec_read);
            if let Err(failure) = drop_privileges(plan.uid, plan.gid) {
                // Reported before the parent reads the pipe's end, which is this exit.
                send(&Report::SetupFailed {
                    stage: failure.stage,
                    error: failure.error,
                });
                exit(1);
            }
            let error = exec_runtime(plan, &null, filter, channel.as_ref());
            // The pipe is close-on-exec: the parent reads nothing when the exec worked.
            let _ = nix::unistd::write(&exec_write, error.as_bytes());
            exit(127)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(exec_write);
            drop(channel);
            watch_runtime(child, Some(exec_read), null, filter, staged)
        }
    }
}

/// Where pids of a template's go-between processes start in a container's PID namespace: past
/// any a fresh start uses.
pub const TEMPLATE_PIDS_FROM: u32 = 1000;

/// Sets the last pid allocated in this process's PID namespace, so that the next fork gets the
/// one after it if free. Best effort: without it (a kernel without checkpoint/restore), a
/// forked runtime's pid is another small number.
fn set_last_pid(pid: u32) {
    let _ = std::fs::write("/proc/sys/kernel/ns_last_pid", pid.to_string());
}

/// The rest of PID 1's life once its runtime exists: drops to its own uid, reports whether the
/// runtime runs (an exec's outcome comes on `exec_read`; a forked runtime runs), lets go of the
/// log pipe and of a pre-built root's `staged` copies, and reaps until the runtime ends.
///
/// The copies are closed only here, off the start's path: the last close of a detached mount
/// dissolves it, which waits for an expedited RCU grace period (0.1–0.8 ms here, for all of
/// them). Until then they are this process's alone: close-on-exec, so the runtime's exec drops
/// its inherited copy, and out of the function's reach (this process runs under its own uid
/// with no capabilities, so its `/proc/1/fd` is closed to the function).
fn watch_runtime(
    runtime: Pid,
    exec_read: Option<OwnedFd>,
    null: OwnedFd,
    filter: &ContainerFilter,
    staged: Option<Staged>,
) -> ! {
    // A uid of its own, not the function's: the function cannot signal it.
    if let Err(failure) = drop_privileges(INIT_UID, INIT_GID) {
        send(&Report::SetupFailed {
            stage: failure.stage,
            error: failure.error,
        });
        // The runtime dies with this PID namespace's first process.
        exit(1);
    }
    let mut error = Vec::new();
    if let Some(exec_read) = exec_read {
        let _ = File::from(exec_read).read_to_end(&mut error);
    }
    if error.is_empty() {
        send(&Report::Running);
    } else {
        send(&Report::ExecFailed {
            error: String::from_utf8_lossy(&error).into_owned(),
        });
    }
    // Let go of the log pipe, so that it ends when the runtime's processes do.
    let _ = dup2(null.as_raw_fd(), 1);
    let _ = dup2(null.as_raw_fd(), 2);
    drop(null);
    drop(staged);
    // Nothing here needs what the filter denies; the runtime already has it.
    let _ = seccomp::apply(filter);
    reap(runtime)
}

/// The hidden first argument that runs the `ember-agent` binary as a runtime template's launcher.
pub const TEMPLATE_ARG: &str = "runtime-template";

/// The runtime template's launcher (see [`super::template`]): reads a [`TemplatePlan`] on its
/// stdin (the template's control socket), lays out a private mount namespace like a
/// container's runtime view, moves the control socket to fd 3, takes `/dev/null` as stdin and
/// stdout (stderr stays the agent's), asks to be killed with the agent, and executes the
/// interpreter as root. A failure is written to stderr; the agent then sees no template start.
pub fn template_main() -> ExitCode {
    match launch_template() {
        Ok(never) => match never {},
        Err(failure) => {
            eprintln!(
                "ember-agent runtime-template: {}: {}",
                failure.stage, failure.error
            );
            ExitCode::FAILURE
        }
    }
}

fn launch_template() -> Result<std::convert::Infallible, Failure> {
    let plan: TemplatePlan = read_json()?;
    // Dies with the agent (its parent), and so with the VM.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(failed("set_pdeathsig"))?;
    unshare(CloneFlags::CLONE_NEWNS).map_err(failed("unshare the mount namespace"))?;
    pivot_into_root(&plan.root, &plan.mounts, "the template's root")?;
    // dup2 leaves the copy without close-on-exec: the interpreter gets it as fd 3.
    dup2(CONTROL, 3).map_err(failed("moving the control socket to fd 3"))?;
    let null = open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(failed("opening /dev/null"))?;
    let null = owned(null);
    dup2(null.as_raw_fd(), 0)
        .and_then(|_| dup2(null.as_raw_fd(), 1))
        .map_err(failed("stdin and stdout"))?;
    // SAFETY: SIG_DFL installs no handler, so no code of ours can run in a signal context.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.map_err(failed("SIGPIPE"))?;
    let cstring = |bytes: &[u8]| {
        CString::new(bytes).map_err(|_| Failure {
            stage: "exec the interpreter".into(),
            error: "a NUL byte in its argv or env".into(),
        })
    };
    let exe = cstring(plan.exe.as_os_str().as_bytes())?;
    let argv = plan
        .argv
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let env = plan
        .env
        .iter()
        .map(|(k, v)| cstring(format!("{k}={v}").as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    execve(&exe, &argv, &env).map_err(failed(format!("exec {}", plan.exe.display())))
}

/// A function's open-file limit, soft and hard, as in Lambda.
pub const CONTAINER_OPEN_FILES: u64 = 1024;

/// Makes every mount private, builds a root at `root` (a tmpfs, then `mounts` on it), pivots
/// into it, detaches the old root and makes `/` read-only: the container's root and the runtime
/// template's alike. `what` names the root in errors.
pub(super) fn pivot_into_root(root: &Path, mounts: &[Mount], what: &str) -> Result<(), Failure> {
    let none: Option<&str> = None;
    umask(Mode::from_bits_truncate(0o022));
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(failed("making mounts private"))?;
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=256k"),
    )
    .map_err(failed(format!(
        "mounting the root tmpfs on {}",
        root.display()
    )))?;
    for step in mounts {
        apply(root, step).map_err(failed(describe(step)))?;
    }
    chdir(root)
        .and_then(|()| pivot_root(".", "."))
        .and_then(|()| umount2(".", MntFlags::MNT_DETACH))
        .and_then(|()| chdir("/"))
        .map_err(failed(format!("pivoting into {what}")))?;
    mount(
        none,
        "/",
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        none,
    )
    .map_err(failed("making the root read-only"))?;
    Ok(())
}

/// Builds the container's root, pivots into it and sets the open-file limit. Returns `/dev/null`.
fn build(plan: &InitPlan) -> Result<OwnedFd, Failure> {
    pivot_into_root(&plan.root, &plan.mounts, "the container's root")?;
    settle(plan)
}

/// The directories of the VM a pre-built spare keeps across its pivot ([`SparePlan::staged`]):
/// each a detached copy of its mount, in the order of the plan.
pub(super) struct Staged {
    dirs: Vec<(PathBuf, OwnedFd)>,
}

impl Staged {
    /// `step` with each source of the VM named through its staged copy: the path
    /// `/proc/self/fd/<fd>/<rest>`, which the container's `/proc` resolves to the copy. A
    /// source in no staged directory is refused (the agent checks before it claims a spare).
    fn translate(&self, step: &Mount) -> Result<Mount, Errno> {
        let dirs: Vec<PathBuf> = self.dirs.iter().map(|(dir, _)| dir.clone()).collect();
        let through = |source: &Path| -> Result<PathBuf, Errno> {
            let (i, rest) = super::plan::staged_at(&dirs, source).ok_or(Errno::EXDEV)?;
            let fd = PathBuf::from(format!("/proc/self/fd/{}", self.dirs[i].1.as_raw_fd()));
            Ok(match rest.as_os_str().is_empty() {
                true => fd,
                false => fd.join(rest),
            })
        };
        Ok(match step {
            Mount::Overlay {
                source,
                empty,
                path,
            } => Mount::Overlay {
                source: through(source)?,
                empty: through(empty)?,
                path: path.clone(),
            },
            Mount::Layers {
                sources,
                empty,
                path,
            } => Mount::Layers {
                sources: sources
                    .iter()
                    .map(|s| through(s))
                    .collect::<Result<_, _>>()?,
                empty: through(empty)?,
                path: path.clone(),
            },
            Mount::BindReadOnly { .. } | Mount::Device { .. } => return Err(Errno::EXDEV),
            other => other.clone(),
        })
    }
}

/// A pre-built spare's first process, before it is claimed (see [`super::spare`]): makes every
/// mount private, keeps a detached copy of each of `prep`'s staged directories
/// (`open_tree(OPEN_TREE_CLONE)`), checks that overlayfs takes such a copy as a layer, builds
/// the root's system part on a tmpfs at `prep.root`, pivots into it and detaches the VM's root.
/// The root stays writable for the claim's mounts ([`finish_prebuilt`]).
fn prebuild(prep: &SparePlan) -> Result<Staged, Failure> {
    let none: Option<&str> = None;
    umask(Mode::from_bits_truncate(0o022));
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(failed("making mounts private"))?;
    let mut dirs = Vec::with_capacity(prep.staged.len());
    for dir in &prep.staged {
        let copy = rustix::mount::open_tree(
            rustix::fs::CWD,
            dir,
            rustix::mount::OpenTreeFlags::OPEN_TREE_CLONE
                | rustix::mount::OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )
        .map_err(|e| Failure {
            stage: format!("keeping a copy of {}", dir.display()),
            error: Errno::from_raw(e.raw_os_error()).to_string(),
        })?;
        dirs.push((dir.clone(), copy));
    }
    let staged = Staged { dirs };
    // The check, under the root's tmpfs (mounted next, on top of it), so that it goes with the
    // VM's root: an overlay of the first two copies, as the claim's overlays will be made.
    if let [(upper, _), (lower, _), ..] = staged.dirs.as_slice() {
        let check = Mount::Overlay {
            source: upper.clone(),
            empty: lower.clone(),
            path: PathBuf::new(),
        };
        let check = staged
            .translate(&check)
            .map_err(failed("checking overlays of detached copies"))?;
        apply(&prep.root, &check).map_err(|e| Failure {
            stage: "checking that overlayfs takes a detached copy as a layer (Linux 6.15+)".into(),
            error: e.to_string(),
        })?;
    }
    mount(
        Some("tmpfs"),
        &prep.root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=256k"),
    )
    .map_err(failed(format!(
        "mounting the root tmpfs on {}",
        prep.root.display()
    )))?;
    for step in &prep.mounts {
        apply(&prep.root, step).map_err(failed(describe(step)))?;
    }
    chdir(&prep.root)
        .and_then(|()| pivot_root(".", "."))
        .and_then(|()| umount2(".", MntFlags::MNT_DETACH))
        .and_then(|()| chdir("/"))
        .map_err(failed("pivoting into the container's root"))?;
    Ok(staged)
}

/// A pre-built spare's root, finished once claimed: the plan's mounts (its function's part,
/// [`super::plan::function_mounts`]) made at `/` with their sources through `staged`, `/` made
/// read-only and the process settled as [`build`] does.
fn finish_prebuilt(plan: &InitPlan, staged: &Staged) -> Result<OwnedFd, Failure> {
    let root = Path::new("/");
    for step in &plan.mounts {
        let made = staged
            .translate(step)
            .and_then(|through| apply(root, &through));
        made.map_err(failed(describe(step)))?;
    }
    let none: Option<&str> = None;
    mount(
        none,
        "/",
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        none,
    )
    .map_err(failed("making the root read-only"))?;
    settle(plan)
}

/// The last of building a container's root, in it (an ordinary container's after the pivot, a
/// SnapStart environment's after its `/proc`, [`super::snap_init::finish_root`]): sets the
/// hostname and the open-file limit. Returns `/dev/null`.
pub(super) fn settle(plan: &InitPlan) -> Result<OwnedFd, Failure> {
    sethostname(&plan.hostname).map_err(failed("setting the hostname"))?;
    let null = open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(failed("opening /dev/null"))?;
    let null = owned(null);
    // The agent raised its own limit for the descriptors it keeps per container; a function gets
    // Lambda's.
    setrlimit(
        Resource::RLIMIT_NOFILE,
        CONTAINER_OPEN_FILES,
        CONTAINER_OPEN_FILES,
    )
    .map_err(failed("limiting open files"))?;
    Ok(null)
}

/// Drops this process to `uid`/`gid` for good (no capabilities, `no_new_privs`).
pub(super) fn drop_privileges(uid: u32, gid: u32) -> Result<(), Failure> {
    ember_sandbox::privileges::drop_to(Uid::from_raw(uid), Gid::from_raw(gid)).map_err(|e| {
        Failure {
            stage: format!("dropping privileges to uid {uid}"),
            error: error_chain(&e),
        }
    })
}

pub(super) fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by open(2) to this process and nothing else refers to it.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
}

/// Carries out one step of the plan under `root`.
///
/// The cgroupfs mounts ([`Mount::Cgroup2`], [`Mount::Cgroup`]) show the cgroup namespace's root
/// as theirs: this process is in the container's group and in the cgroup namespace `start`
/// unshared there, so they show the container's group and nothing above it.
fn apply(root: &Path, step: &Mount) -> nix::Result<()> {
    let none: Option<&str> = None;
    let at = |path: &Path| root.join(path);
    let read_only =
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match step {
        Mount::Dir { path } => mkdir(&at(path), Mode::from_bits_truncate(0o755)),
        Mount::Symlink { path, target } => symlinkat(target, None, &at(path)),
        Mount::BindReadOnly { source, path } => {
            let target = at(path);
            mount(
                Some(source),
                &target,
                none,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                none,
            )?;
            mount(
                none,
                &target,
                none,
                MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV,
                none,
            )
        }
        Mount::Overlay {
            source,
            empty,
            path,
        } => {
            let layers = overlay_layers(source, empty)?;
            mount(
                Some("overlay"),
                &at(path),
                Some("overlay"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(layers.as_str()),
            )
        }
        Mount::Layers {
            sources,
            empty,
            path,
        } => {
            let top_first: Vec<&Path> = sources.iter().rev().map(PathBuf::as_path).collect();
            let layers = overlay_stack(&top_first, empty)?;
            mount(
                Some("overlay"),
                &at(path),
                Some("overlay"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(layers.as_str()),
            )
        }
        Mount::Device { source, path } => {
            let target = at(path);
            let fd = open(
                &target,
                OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )?;
            drop(owned(fd));
            mount(Some(source), &target, none, MsFlags::MS_BIND, none)
        }
        Mount::Tmpfs {
            path,
            options,
            noexec,
        } => {
            let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            if *noexec {
                flags |= MsFlags::MS_NOEXEC;
            }
            mount(
                Some("tmpfs"),
                &at(path),
                Some("tmpfs"),
                flags,
                Some(options.as_str()),
            )
        }
        Mount::Proc { path } => mount(
            Some("proc"),
            &at(path),
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            none,
        ),
        Mount::Cgroup2 { path } => {
            mount(Some("cgroup2"), &at(path), Some("cgroup2"), read_only, none)
        }
        Mount::Cgroup { path, controllers } => mount(
            Some("cgroup"),
            &at(path),
            Some("cgroup"),
            read_only,
            Some(controllers.as_str()),
        ),
        Mount::RemountReadOnly { path } => {
            mount(none, &at(path), none, MsFlags::MS_REMOUNT | read_only, none)
        }
    }
}

/// Overlayfs's `lowerdir` option: `source` on top of `empty`. A path that would need escaping
/// there (`:`, `,`, `\\`, or not UTF-8) is refused: the agent's own paths never do.
fn overlay_layers(source: &Path, empty: &Path) -> nix::Result<String> {
    overlay_stack(&[source], empty)
}

/// Overlayfs's `lowerdir` option for several directories, `top_first` (the first one's files
/// win), on top of `empty`; refused as [`overlay_layers`] refuses.
fn overlay_stack(top_first: &[&Path], empty: &Path) -> nix::Result<String> {
    let plain = |path: &Path| {
        path.to_str()
            .filter(|p| !p.contains([':', ',', '\\']))
            .map(str::to_owned)
            .ok_or(Errno::EINVAL)
    };
    let mut dirs = top_first
        .iter()
        .map(|p| plain(p))
        .collect::<nix::Result<Vec<_>>>()?;
    dirs.push(plain(empty)?);
    Ok(format!("lowerdir={}", dirs.join(":")))
}

/// What a step does, for a [`Report::SetupFailed`].
fn describe(step: &Mount) -> String {
    match step {
        Mount::Dir { path } => format!("mkdir /{}", path.display()),
        Mount::Symlink { path, target } => {
            format!("symlink /{} -> {}", path.display(), target.display())
        }
        Mount::BindReadOnly { source, path } => {
            format!("bind {} on /{} read-only", source.display(), path.display())
        }
        Mount::Overlay { source, path, .. } => {
            format!(
                "mount an overlay of {} on /{} read-only",
                source.display(),
                path.display()
            )
        }
        Mount::Layers { sources, path, .. } => format!(
            "mount an overlay of {} layers on /{} read-only",
            sources.len(),
            path.display()
        ),
        Mount::Device { source, path } => {
            format!("bind {} on /{}", source.display(), path.display())
        }
        Mount::Tmpfs { path, options, .. } => {
            format!("mount tmpfs ({options}) on /{}", path.display())
        }
        Mount::Proc { path } => format!("mount proc on /{}", path.display()),
        Mount::Cgroup2 { path } => format!("mount cgroup2 on /{} read-only", path.display()),
        Mount::Cgroup { path, controllers } => format!(
            "mount the cgroup v1 hierarchy of {controllers} on /{} read-only",
            path.display()
        ),
        Mount::RemountReadOnly { path } => format!("remount /{} read-only", path.display()),
    }
}

/// The runtime, between fork and exec. Returns what failed; never returns if the exec works.
fn exec_runtime(
    plan: &InitPlan,
    null: &OwnedFd,
    filter: &ContainerFilter,
    channel: Option<&OwnedFd>,
) -> String {
    let _ = setsid();
    if let Err(e) = dup2(null.as_raw_fd(), 0) {
        return format!("stdin: {}", e.desc());
    }
    // dup2 leaves the copy without close-on-exec: the runtime gets it as fd 3. (Whatever held
    // fd 3 here is close-on-exec: the exec pipe's end, whose report of a failed exec is then
    // lost, and the exec's failure shows as the runtime's exit.)
    if let Some(channel) = channel {
        // dup2 onto itself keeps close-on-exec: then the flag is cleared instead.
        let moved = match channel.as_raw_fd() {
            3 => nix::fcntl::fcntl(3, nix::fcntl::FcntlArg::F_SETFD(FdFlag::empty())).map(drop),
            fd => dup2(fd, 3).map(drop),
        };
        if let Err(e) = moved {
            return format!("the fork channel: {}", e.desc());
        }
    }
    if let Err(e) = chdir(&plan.cwd) {
        return format!("chdir {}: {}", plan.cwd.display(), e.desc());
    }
    // Rust's runtime ignores SIGPIPE, and an ignored signal stays ignored through exec.
    // SAFETY: SIG_DFL installs no handler, so no code of ours can run in a signal context.
    if let Err(e) = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) } {
        return format!("SIGPIPE: {}", e.desc());
    }
    let cstring = |bytes: &[u8]| CString::new(bytes).map_err(|_| "a NUL byte".to_owned());
    let exe = match cstring(plan.exe.as_os_str().as_bytes()) {
        Ok(exe) => exe,
        Err(e) => return format!("exec {}: {e}", plan.exe.display()),
    };
    let argv: Result<Vec<CString>, _> = plan.argv.iter().map(|a| cstring(a.as_bytes())).collect();
    let env: Result<Vec<CString>, _> = plan
        .env
        .iter()
        .map(|(k, v)| cstring(format!("{k}={v}").as_bytes()))
        .collect();
    let (argv, env) = match (argv, env) {
        (Ok(argv), Ok(env)) => (argv, env),
        _ => return format!("exec {}: a NUL byte in argv or env", plan.exe.display()),
    };
    // Last: from here on the filter holds.
    if let Err(e) = seccomp::apply(filter) {
        return format!("seccomp: {e}");
    }
    match execve(&exe, &argv, &env) {
        Err(e) => format!("exec {}: {}", plan.exe.display(), e.desc()),
        Ok(never) => match never {},
    }
}

/// Reaps every process of the container until the runtime ends, then reports how and exits.
fn reap(runtime: Pid) -> ! {
    loop {
        let (code, signal) = match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == runtime => (Some(code), None),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == runtime => {
                (None, Some(signal as i32))
            }
            Ok(_) | Err(Errno::EINTR) => continue,
            // ECHILD: the runtime is gone without being seen (cannot happen: it is our child).
            Err(_) => (None, None),
        };
        send(&Report::RuntimeExited { code, signal });
        exit(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pre_built_roots_sources_are_named_through_their_staged_copies() {
        let fd = || OwnedFd::from(File::open("/dev/null").unwrap());
        let staged = Staged {
            dirs: vec![
                (PathBuf::from("/run/ember/empty"), fd()),
                (PathBuf::from("/run/ember/code"), fd()),
            ],
        };
        let (empty, code) = (staged.dirs[0].1.as_raw_fd(), staged.dirs[1].1.as_raw_fd());
        let overlay = Mount::Overlay {
            source: "/run/ember/code/abc".into(),
            empty: "/run/ember/empty".into(),
            path: "var/task".into(),
        };
        assert_eq!(
            staged.translate(&overlay),
            Ok(Mount::Overlay {
                source: format!("/proc/self/fd/{code}/abc").into(),
                empty: format!("/proc/self/fd/{empty}").into(),
                path: "var/task".into(),
            })
        );
        let layers = Mount::Layers {
            sources: vec!["/run/ember/code/l1".into(), "/run/ember/code/l2".into()],
            empty: "/run/ember/empty".into(),
            path: "opt".into(),
        };
        assert_eq!(
            staged.translate(&layers),
            Ok(Mount::Layers {
                sources: vec![
                    format!("/proc/self/fd/{code}/l1").into(),
                    format!("/proc/self/fd/{code}/l2").into()
                ],
                empty: format!("/proc/self/fd/{empty}").into(),
                path: "opt".into(),
            })
        );
        // What takes nothing from the VM is as it was.
        let tmp = Mount::Tmpfs {
            path: "tmp".into(),
            options: "mode=1777,size=512m".into(),
            noexec: false,
        };
        assert_eq!(staged.translate(&tmp), Ok(tmp.clone()));
        // A source in no staged directory, or a bind, is refused: it cannot be reached.
        let outside = Mount::Overlay {
            source: "/srv/code".into(),
            empty: "/run/ember/empty".into(),
            path: "var/task".into(),
        };
        assert_eq!(staged.translate(&outside), Err(Errno::EXDEV));
        let bind = Mount::BindReadOnly {
            source: "/run/ember/code/abc".into(),
            path: "x".into(),
        };
        assert_eq!(staged.translate(&bind), Err(Errno::EXDEV));
    }

    #[test]
    fn overlay_layers_are_the_source_over_the_empty_dir() {
        assert_eq!(
            overlay_layers(
                Path::new("/opt/ember/runtimes/python3.12"),
                Path::new("/run/ember/empty")
            ),
            Ok("lowerdir=/opt/ember/runtimes/python3.12:/run/ember/empty".to_owned())
        );
        assert_eq!(
            overlay_stack(
                &[
                    Path::new("/run/ember/code/b"),
                    Path::new("/run/ember/code/a")
                ],
                Path::new("/run/ember/empty")
            ),
            Ok("lowerdir=/run/ember/code/b:/run/ember/code/a:/run/ember/empty".to_owned())
        );
        // What overlayfs would read as a separator or an escape is refused, not escaped.
        for bad in ["/a:b", "/a,upperdir=/x", "/a\\b"] {
            assert_eq!(
                overlay_layers(Path::new(bad), Path::new("/run/ember/empty")),
                Err(Errno::EINVAL),
                "{bad}"
            );
        }
    }
}
