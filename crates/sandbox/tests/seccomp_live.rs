//! The container seccomp filter on the real kernel: escape syscalls fail, ordinary work goes on.
//!
//! The filter is installed in a forked child, which reports what it saw through a pipe. It needs
//! no root: seccomp with `no_new_privs` is open to every user.

// The raw syscalls the probes make.
#![allow(unsafe_code)]

mod common;

use std::ffi::c_long;
use std::process::Command;
use std::ptr;

use ember_sandbox::seccomp;
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

/// A syscall to make, by name, and the errno the filter must answer it with.
type Denied = (&'static str, fn() -> c_long, Errno);

/// Makes `call` and fails unless it returned -1 with `want` in errno.
fn expect_errno(name: &str, call: fn() -> c_long, want: Errno) -> Result<(), String> {
    let ret = call();
    let errno = Errno::last();
    match ret {
        -1 if errno == want => Ok(()),
        -1 => Err(format!("{name}: got {errno}, want {want}")),
        _ => Err(format!("{name}: succeeded ({ret}), want {want}")),
    }
}

fn probe(filter: &seccomp::ContainerFilter) -> Result<(), String> {
    seccomp::apply(filter).map_err(|e| format!("apply: {e}"))?;

    // Each call is a raw syscall with its own `SAFETY` note: none is given a pointer to memory
    // Rust owns, only null or static C strings.
    let denied: [Denied; 10] = [
        (
            "unshare(CLONE_NEWUSER)",
            // SAFETY: unshare takes only flags; no memory is passed.
            || unsafe { libc::unshare(libc::CLONE_NEWUSER) }.into(),
            Errno::EPERM,
        ),
        (
            "unshare(CLONE_NEWNET)",
            // SAFETY: unshare takes only flags; no memory is passed.
            || unsafe { libc::unshare(libc::CLONE_NEWNET) }.into(),
            Errno::EPERM,
        ),
        (
            "ptrace(PTRACE_TRACEME)",
            // SAFETY: PTRACE_TRACEME ignores its address and data pointers, which are null.
            || unsafe {
                libc::ptrace(
                    libc::PTRACE_TRACEME,
                    0,
                    ptr::null_mut::<u8>(),
                    ptr::null_mut::<u8>(),
                )
            },
            Errno::EPERM,
        ),
        (
            // Without the filter: ENOENT as root, EPERM otherwise; never a mount.
            "mount(tmpfs)",
            || {
                // SAFETY: the strings are static and NUL-terminated; the data pointer is null.
                unsafe {
                    libc::mount(
                        c"none".as_ptr(),
                        c"/nonexistent/ember-seccomp-probe".as_ptr(),
                        c"tmpfs".as_ptr(),
                        0,
                        ptr::null(),
                    )
                }
                .into()
            },
            Errno::EPERM,
        ),
        (
            "setns(-1, 0)",
            // SAFETY: setns takes a descriptor (an invalid one) and flags; no memory is passed.
            || unsafe { libc::setns(-1, 0) }.into(),
            Errno::EPERM,
        ),
        (
            "bpf(0, NULL, 0)",
            // SAFETY: bpf is given a null attribute pointer and a zero size; nothing is read.
            || unsafe { libc::syscall(libc::SYS_bpf, 0, 0, 0) },
            Errno::EPERM,
        ),
        (
            "keyctl(0)",
            // SAFETY: keyctl is given only zeros: an operation number and no pointer.
            || unsafe { libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) },
            Errno::EPERM,
        ),
        (
            "process_vm_readv",
            // SAFETY: process_vm_readv is given null iovec arrays of length 0; nothing is copied.
            || unsafe { libc::syscall(libc::SYS_process_vm_readv, 1, 0, 0, 0, 0, 0) },
            Errno::EPERM,
        ),
        (
            "io_uring_setup(1, NULL)",
            // SAFETY: io_uring_setup is given a null params pointer; the kernel writes nothing.
            || unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, 0) },
            Errno::EPERM,
        ),
        // ENOSYS, not EPERM, so that libc retries with clone.
        (
            "clone3(NULL, 0)",
            // SAFETY: clone3 is given a null clone_args of size 0: it creates no process.
            || unsafe { libc::syscall(libc::SYS_clone3, 0, 0) },
            Errno::ENOSYS,
        ),
    ];
    for (name, call, want) in denied {
        expect_errno(name, call, want)?;
    }

    // A clone that asks for a new user namespace is refused; one that is let through by mistake
    // gives a child that leaves at once.
    let clone_newuser = || {
        let flags = (libc::CLONE_NEWUSER | libc::SIGCHLD) as c_long;
        // SAFETY: without CLONE_VM the child gets a copy of this stack and exits straight away.
        let ret = unsafe { libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) };
        if ret == 0 {
            // SAFETY: _exit is async-signal-safe and ends only the stray child.
            unsafe { libc::_exit(0) };
        }
        ret
    };
    expect_errno("clone(CLONE_NEWUSER)", clone_newuser, Errno::EPERM)?;

    // Ordinary work: pids, fork, threads (glibc tries clone3, then falls back), exec.
    if nix::unistd::getpid().as_raw() <= 0 {
        return Err("getpid".into());
    }
    // SAFETY: the child only calls _exit.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        // SAFETY: _exit is async-signal-safe and ends the child without running the harness.
        ForkResult::Child => unsafe { libc::_exit(7) },
        ForkResult::Parent { child } => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 7)) => {}
            other => return Err(format!("fork: child ended with {other:?}")),
        },
    }
    let thread = std::thread::spawn(|| 42).join();
    if thread.ok() != Some(42) {
        return Err("thread: did not run".into());
    }
    let status = Command::new("sh").args(["-c", "exit 3"]).status();
    match status.map(|s| s.code()) {
        Ok(Some(3)) => Ok(()),
        other => Err(format!("exec sh: {other:?}")),
    }
}

#[test]
fn filter_denies_escapes_and_allows_ordinary_work() {
    let filter = seccomp::container_filter().unwrap();
    common::in_forked_child(|| probe(&filter));
}
