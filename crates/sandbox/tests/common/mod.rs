//! What the live integration tests share: the rule for running without root, and running a
//! probe in a forked child that reports back through a pipe.

// fork(2) and _exit(2).
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{Read, Write};

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

/// Whether a test that needs root may run. As root: yes. Otherwise the test fails loudly, unless
/// `EMBER_TEST_UNPRIVILEGED=1` says skipping is intended (CI runs as root and never sets it).
#[allow(dead_code)] // Each test binary uses what it needs of this module.
pub fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("EMBER_TEST_UNPRIVILEGED").is_some_and(|v| v == "1") {
        eprintln!("not root and EMBER_TEST_UNPRIVILEGED=1: skipping this privileged test");
        return false;
    }
    panic!("this test needs root (CI runs as root); set EMBER_TEST_UNPRIVILEGED=1 to skip it");
}

/// Runs `probe` in a forked child, whose changes to itself (filters, dropped privileges) end
/// with it, and asserts that it exited cleanly and reported success.
#[allow(dead_code)] // Each test binary uses what it needs of this module.
pub fn in_forked_child(probe: impl FnOnce() -> Result<(), String>) {
    let (read, write) = nix::unistd::pipe().unwrap();
    // SAFETY: this test binary's only other thread is the idle harness; glibc's fork leaves the
    // allocator usable in the child, which ends with _exit.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            drop(read);
            let report = match probe() {
                Ok(()) => "ok".to_owned(),
                Err(e) => e,
            };
            let _ = File::from(write).write_all(report.as_bytes());
            // SAFETY: leaves the child without running the harness's exit path.
            unsafe { nix::libc::_exit(0) };
        }
        ForkResult::Parent { child } => {
            drop(write);
            let mut report = String::new();
            File::from(read).read_to_string(&mut report).unwrap();
            assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
            assert_eq!(report, "ok");
        }
    }
}
