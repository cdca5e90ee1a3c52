//! The VM's first process between `clone` and `exec`: builds its root filesystem, pivots into it,
//! brings up loopback and becomes the agent.
//!
//! The host is multi-threaded, so the cloned child may only make async-signal-safe calls: no
//! allocation, no locks. Everything it needs (paths, argv, envp, the loopback `ifreq`) is computed
//! by the parent into a [`Plan`] before the clone; the child only walks it. A failure is reported
//! as `(stage, errno)` on the status pipe, which the parent turns into a [`VmError::Setup`].
//!
//! The parent's few syscalls without a safe wrapper (pidfd, descriptor moves) live here too, so
//! this is the backend's one module with `unsafe`.
// clone, execveat, ioctl and pidfd_open have no safe wrapper (that avoids allocating).
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{fcntl, open, FcntlArg, FdFlag, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::unistd::{chdir, close, dup2, mkdir, pivot_root, read, sethostname, symlinkat, Pid};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::VmError;

/// One step of building the root filesystem, run in the child before the pivot.
#[derive(Debug)]
pub(super) enum Step {
    Mkdir(CString),
    /// An empty file, to bind a file over.
    Touch(CString),
    Symlink {
        target: CString,
        link: CString,
    },
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: MsFlags,
        data: Option<CString>,
    },
    /// A new file (mode 0644) holding `contents`, e.g. the VM's own `/etc/resolv.conf`.
    Write {
        path: CString,
        contents: Vec<u8>,
    },
}

impl Step {
    fn run(&self) -> nix::Result<()> {
        match self {
            Step::Mkdir(path) => mkdir(path.as_c_str(), Mode::from_bits_truncate(0o755)),
            Step::Touch(path) => {
                let flags = OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
                let fd = open(path.as_c_str(), flags, Mode::from_bits_truncate(0o644))?;
                close(fd)
            }
            Step::Symlink { target, link } => symlinkat(target.as_c_str(), None, link.as_c_str()),
            Step::Write { path, contents } => {
                let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
                let raw = open(path.as_c_str(), flags, Mode::from_bits_truncate(0o644))?;
                // SAFETY: `open` just returned `raw`; nothing else owns or closes it.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                let mut rest = contents.as_slice();
                let mut result = Ok(());
                while !rest.is_empty() {
                    match nix::unistd::write(&fd, rest) {
                        Ok(n) => rest = &rest[n..],
                        Err(nix::errno::Errno::EINTR) => {}
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                result
            }
            Step::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => mount(
                source.as_deref(),
                target.as_c_str(),
                fstype.as_deref(),
                *flags,
                data.as_deref(),
            ),
        }
    }

    /// What the step does, for error messages (in the parent).
    pub(super) fn describe(&self) -> String {
        let s = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            Step::Mkdir(path) => format!("mkdir {}", s(path)),
            Step::Touch(path) => format!("create {}", s(path)),
            Step::Symlink { target, link } => format!("symlink {} -> {}", s(link), s(target)),
            Step::Write { path, .. } => format!("write {}", s(path)),
            Step::Mount {
                source,
                target,
                fstype,
                flags,
                ..
            } => format!(
                "mount {} on {} ({}, {flags:?})",
                source.as_ref().map_or_else(|| "-".into(), s),
                s(target),
                fstype.as_ref().map_or_else(|| "bind".into(), s),
            ),
        }
    }
}

/// Stages outside [`Plan::steps`], numbered from the top of `u32` so step indexes stay below.
const STAGE_GO: u32 = u32::MAX;
const STAGE_PRIVATE: u32 = u32::MAX - 1;
const STAGE_HOSTNAME: u32 = u32::MAX - 2;
const STAGE_PIVOT: u32 = u32::MAX - 3;
const STAGE_READONLY_ROOT: u32 = u32::MAX - 4;
const STAGE_LOOPBACK: u32 = u32::MAX - 5;
const STAGE_FDS: u32 = u32::MAX - 6;
const STAGE_EXEC: u32 = u32::MAX - 7;
const STAGE_SCHEDULING: u32 = u32::MAX - 8;

/// Everything the child needs, computed before the clone.
#[derive(Debug)]
pub(super) struct Plan {
    pub hostname: CString,
    /// The directory the root tmpfs is mounted on (and the root after the pivot).
    pub root: CString,
    pub steps: Vec<Step>,
    /// The parent's ends, which the child closes first.
    pub close: Vec<RawFd>,
    /// Read end of the pipe on which the parent says "go" once the child is in its cgroup.
    pub go: RawFd,
    /// Write end of the status pipe: `(stage, errno)` on failure, closed by exec on success.
    pub status: RawFd,
    /// The agent's end of the socket pair, which becomes fd [`ember_protocol::HOST_FD`].
    pub socket: RawFd,
    /// The agent binary, opened by the parent (O_PATH is not enough for execveat: O_RDONLY).
    pub exe: RawFd,
    /// The VM's scheduling policy, set whatever the host process's own is.
    pub policy: ember_sandbox::sched::Policy,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
}

/// The plan with its argv/envp as the NULL-terminated pointer arrays `execveat` takes, built in
/// the parent. The pointers borrow the plan's CStrings.
struct Prepared<'a> {
    plan: &'a Plan,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    loopback: libc::ifreq,
}

/// Clones the VM's first process into new PID, mount, IPC, UTS and network namespaces, running
/// `plan`. The child waits for a byte on `plan.go` before doing anything.
pub(super) fn spawn(plan: &Plan) -> Result<Pid, VmError> {
    let pointers = |strings: &[CString]| {
        let mut ptrs: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        ptrs
    };
    // SAFETY: ifreq is plain old data; all zeroes is a valid (empty) value.
    let mut loopback: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in loopback.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    let prepared = Prepared {
        plan,
        argv: pointers(&plan.argv),
        envp: pointers(&plan.envp),
        loopback,
    };
    // The child runs on its own copy of this stack (no CLONE_VM); 256 KiB is far more than
    // `child_main`'s frames need (nix's path buffers are 4 KiB at most).
    let mut stack = vec![0u8; 256 * 1024];
    let flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWNET;
    // SAFETY: without CLONE_VM the child gets a copy-on-write copy of this process's memory, like
    // fork, with only this thread. `child_main` makes only async-signal-safe calls on data
    // prepared above (no allocation, no locks), and never returns into Rust code of the parent:
    // it execs or `_exit`s. SIGCHLD makes it a normal child for waitpid.
    let pid = unsafe {
        nix::sched::clone(
            Box::new(|| child_main(&prepared)),
            &mut stack,
            flags,
            Some(libc::SIGCHLD),
        )
    };
    pid.map_err(|source| VmError::Setup {
        stage: "clone into new namespaces".into(),
        source,
    })
}

/// Turns a `(stage, errno)` report from the status pipe into an error.
pub(super) fn setup_error(plan: &Plan, stage: u32, errno: i32) -> VmError {
    let stage = match stage {
        STAGE_GO => "waiting for the parent".into(),
        STAGE_PRIVATE => "making mounts private".into(),
        STAGE_HOSTNAME => "setting the hostname".into(),
        STAGE_PIVOT => "pivoting into the new root".into(),
        STAGE_READONLY_ROOT => "making the root read-only".into(),
        STAGE_LOOPBACK => "bringing up loopback".into(),
        STAGE_FDS => "arranging file descriptors".into(),
        STAGE_EXEC => "executing the agent".into(),
        STAGE_SCHEDULING => "setting the scheduling policy".into(),
        index => plan
            .steps
            .get(index as usize)
            .map_or_else(|| format!("unknown stage {index}"), Step::describe),
    };
    VmError::Setup {
        stage,
        source: Errno::from_raw(errno),
    }
}

/// The child, between clone and exec. Only async-signal-safe calls; never returns on success.
fn child_main(prepared: &Prepared<'_>) -> isize {
    let plan = prepared.plan;
    for &fd in &plan.close {
        let _ = close(fd);
    }
    let mut byte = [0u8; 1];
    match read(plan.go, &mut byte) {
        Ok(1) => {}
        // The parent gave up (or died): leave quietly.
        _ => exit(1),
    }
    let _ = close(plan.go);

    let fail = |stage: u32, errno: Errno| -> ! {
        let mut report = [0u8; 8];
        report[..4].copy_from_slice(&stage.to_ne_bytes());
        report[4..].copy_from_slice(&(errno as i32).to_ne_bytes());
        // SAFETY: `plan.status` is the open write end of the status pipe, valid until exit.
        let status = unsafe { std::os::fd::BorrowedFd::borrow_raw(plan.status) };
        let _ = nix::unistd::write(status, &report);
        exit(127)
    };
    let none: Option<&CStr> = None;

    // Nothing this process mounts may propagate back to the host.
    if let Err(e) = mount(
        none,
        c"/",
        none,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        none,
    ) {
        fail(STAGE_PRIVATE, e);
    }
    if let Err(e) = sethostname(OsStr::from_bytes(plan.hostname.to_bytes())) {
        fail(STAGE_HOSTNAME, e);
    }
    for (index, step) in plan.steps.iter().enumerate() {
        if let Err(e) = step.run() {
            fail(index as u32, e);
        }
    }
    let pivot = chdir(plan.root.as_c_str())
        .and_then(|()| pivot_root(c".", c"."))
        .and_then(|()| umount2(c".", MntFlags::MNT_DETACH))
        .and_then(|()| chdir(c"/"));
    if let Err(e) = pivot {
        fail(STAGE_PIVOT, e);
    }
    let readonly =
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if let Err(e) = mount(none, c"/", none, readonly, none) {
        fail(STAGE_READONLY_ROOT, e);
    }
    if let Err(e) = loopback_up(prepared.loopback) {
        fail(STAGE_LOOPBACK, e);
    }
    if let Err(e) = arrange_fds(plan) {
        fail(STAGE_FDS, e);
    }
    // Inherited across exec by the agent, and by everything it starts.
    if let Err(e) = ember_sandbox::sched::set_policy(plan.policy) {
        fail(STAGE_SCHEDULING, e);
    }
    // SAFETY: execveat with AT_EMPTY_PATH runs the file open at `plan.exe`; argv and envp are
    // NULL-terminated arrays of pointers to NUL-terminated strings that outlive the call.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            plan.exe,
            c"".as_ptr(),
            prepared.argv.as_ptr(),
            prepared.envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
    fail(STAGE_EXEC, Errno::last())
}

/// Ends the child without running any of the parent's exit handlers.
fn exit(code: i32) -> ! {
    // SAFETY: _exit ends the process at once; it is async-signal-safe and touches no memory.
    unsafe { libc::_exit(code) }
}

/// Sets IFF_UP on `lo`, the only interface of a new network namespace.
fn loopback_up(mut request: libc::ifreq) -> nix::Result<()> {
    // SAFETY: socket(2) has no memory arguments.
    let fd = Errno::result(unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write an ifreq, which `request` is.
    let result = Errno::result(unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut request) })
        .and_then(|_| {
            // SAFETY: the kernel just filled the flags member of the union.
            unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
            // SAFETY: as above.
            Errno::result(unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &request) })
        });
    let _ = close(fd);
    result.map(drop)
}

/// stdin from /dev/null; the agent's socket at [`ember_protocol::HOST_FD`], without CLOEXEC.
fn arrange_fds(plan: &Plan) -> nix::Result<()> {
    let null = open(
        c"/dev/null",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    dup2(null, 0)?;
    close(null)?;
    let host_fd = ember_protocol::HOST_FD;
    if plan.socket == host_fd {
        fcntl(host_fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
    } else {
        // dup2 leaves the new descriptor without CLOEXEC.
        dup2(plan.socket, host_fd)?;
    }
    Ok(())
}

/// Opens a pidfd for `pid`, a child of ours not yet reaped (so the pid cannot have been reused).
pub(super) fn pidfd_open(pid: Pid) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Watches a pidfd: it becomes readable once the process has exited.
pub(super) fn watch_exit(pidfd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open and keeps returning the same descriptor until it is dropped,
    // which only the AsyncFd can do while it owns it.
    unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }.map_err(Into::into)
}

/// Moves `fd` to a number above [`ember_protocol::HOST_FD`] (keeping CLOEXEC), so the child's
/// `dup2` onto that number cannot clobber a descriptor it still needs.
pub(super) fn above_host_fd(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    if fd.as_raw_fd() > ember_protocol::HOST_FD {
        return Ok(fd);
    }
    let raw = fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_DUPFD_CLOEXEC(ember_protocol::HOST_FD + 1),
    )?;
    // SAFETY: fcntl just returned this new descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}
