//! The floors a cold start is measured against, in the same run as the cold starts: what a new
//! container cannot avoid whatever Ember does.
//!
//! - **The interpreter**: the process start of the bare interpreter importing the runtime client,
//!   outside any container (`python3.N -c 'import awslambdaric.bootstrap'` with the provisioned
//!   runtime dir on its path; `node -e "require('aws-lambda-ric')"` for Node.js).
//! - **The namespaces**: a fork, `unshare` of the namespaces a container gets (mount, IPC, UTS,
//!   PID, cgroup and network, as `container-init` does), and the fork of the new PID
//!   namespace's first process, until that process runs; measured here with the system calls
//!   themselves, as root. The only `unsafe` of the crate: the forks.

// The forks of `namespaces_once`; see "Where unsafe lives" in ARCHITECTURE.md.
#![allow(unsafe_code)]

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use serde_json::{json, Value};

use crate::invoke::percentile;

/// The namespaces a container gets (`crates/agent/src/container/init.rs`).
const CONTAINER_NAMESPACES: CloneFlags = CloneFlags::CLONE_NEWNS
    .union(CloneFlags::CLONE_NEWIPC)
    .union(CloneFlags::CLONE_NEWUTS)
    .union(CloneFlags::CLONE_NEWPID)
    .union(CloneFlags::CLONE_NEWCGROUP)
    .union(CloneFlags::CLONE_NEWNET);

/// One floor: its samples' p50, p90 and max in ms, or why it could not be measured.
#[derive(Debug, Clone)]
pub(crate) enum Floor {
    Measured(Spread),
    Unavailable(String),
}

/// p50, p90 and max of some samples, in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Spread {
    pub(crate) samples: usize,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) max: f64,
}

impl Spread {
    /// The spread of `values` (ms); `None` if there are none.
    pub(crate) fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        Some(Self {
            samples: values.len(),
            p50: percentile(values, 0.50),
            p90: percentile(values, 0.90),
            max: values.iter().copied().fold(f64::MIN, f64::max),
        })
    }

    pub(crate) fn text(&self) -> String {
        format!("{:.2} / {:.2} / {:.2} ms", self.p50, self.p90, self.max)
    }

    pub(crate) fn to_json(self) -> Value {
        json!({"samples": self.samples, "p50_ms": self.p50, "p90_ms": self.p90, "max_ms": self.max})
    }
}

impl Floor {
    pub(crate) fn text(&self) -> String {
        match self {
            Floor::Measured(spread) => spread.text(),
            Floor::Unavailable(why) => format!("not available ({why})"),
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        match self {
            Floor::Measured(spread) => spread.to_json(),
            Floor::Unavailable(why) => json!({"available": false, "reason": why}),
        }
    }

    /// Runs `once` `samples` times (after one unmeasured run, which warms the page cache);
    /// the first failure makes the floor unavailable, with its reason.
    fn measure(samples: usize, mut once: impl FnMut() -> anyhow::Result<Duration>) -> Self {
        if let Err(err) = once() {
            return Floor::Unavailable(format!("{err:#}"));
        }
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            match once() {
                Ok(time) => times.push(time.as_secs_f64() * 1e3),
                Err(err) => return Floor::Unavailable(format!("{err:#}")),
            }
        }
        match Spread::of(&times) {
            Some(spread) => Floor::Measured(spread),
            None => Floor::Unavailable("no samples".into()),
        }
    }
}

/// The namespaces floor: `samples` runs of [`namespaces_once`]; unavailable without root.
pub(crate) fn namespaces(samples: usize) -> Floor {
    if !nix::unistd::geteuid().is_root() {
        return Floor::Unavailable("needs root".into());
    }
    Floor::measure(samples, namespaces_once)
}

/// Forks; the child unshares [`CONTAINER_NAMESPACES`] and forks the new PID namespace's first
/// process, which writes one byte to a pipe. Returns the time from before the first fork to
/// that byte's arrival (the namespaces' teardown, after, is not counted).
fn namespaces_once() -> anyhow::Result<Duration> {
    let (read_end, write_end) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).context("cannot create a pipe")?;
    let started = Instant::now();
    // SAFETY: this process has other threads, so the child may only make async-signal-safe
    // calls until it exits: it makes system calls only (unshare, fork, write, waitpid, _exit),
    // allocates nothing, takes no lock, and never returns into Rust code that could.
    match unsafe { fork() }.context("cannot fork")? {
        ForkResult::Child => {
            let code = match nix::sched::unshare(CONTAINER_NAMESPACES) {
                // SAFETY: as above; the grandchild is the new PID namespace's first process.
                Ok(()) => match unsafe { fork() } {
                    Ok(ForkResult::Child) => {
                        let written = nix::unistd::write(write_end.as_fd(), b"x");
                        i32::from(written != Ok(1))
                    }
                    Ok(ForkResult::Parent { child }) => match waitpid(child, None) {
                        Ok(WaitStatus::Exited(_, 0)) => 0,
                        _ => 3,
                    },
                    Err(_) => 4,
                },
                Err(_) => 2,
            };
            // SAFETY: `_exit` ends the process at once, running no handler of this one.
            unsafe { nix::libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            let mut byte = [0u8; 1];
            let read = nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&read_end), &mut byte);
            let elapsed = started.elapsed();
            let status = waitpid(child, None).context("cannot wait for the child")?;
            match (read, status) {
                (Ok(1), WaitStatus::Exited(_, 0)) => Ok(elapsed),
                (_, WaitStatus::Exited(_, 2)) => anyhow::bail!("unshare of the namespaces failed"),
                (_, status) => anyhow::bail!("the namespaces' process ended with {status:?}"),
            }
        }
    }
}

/// The Python floor: the runtime's interpreter (from the runtime's marker) importing
/// `awslambdaric.bootstrap` from `runtime_dir/<runtime>`.
pub(crate) fn python(runtime_dir: &Path, runtime: &str, samples: usize) -> Floor {
    let dir = runtime_dir.join(runtime);
    let marker = dir.join(ember_runtimes::MARKER);
    let python = std::fs::read(&marker)
        .ok()
        .and_then(|m| serde_json::from_slice::<Value>(&m).ok())
        .and_then(|m| m.get("python")?.as_str().map(PathBuf::from));
    let Some(python) = python else {
        return Floor::Unavailable(format!("{runtime} is not provisioned in {}", dir.display()));
    };
    let mut command = Command::new(&python);
    command
        .args(["-c", "import awslambdaric.bootstrap"])
        .env_clear()
        .env("PYTHONPATH", &dir)
        .current_dir(&dir);
    Floor::measure(samples, || run(&mut command))
}

/// The Node.js floor: `node -e "require('aws-lambda-ric')"` with the runtime's provisioned
/// packages on `NODE_PATH`: the Node.js its marker names (else the one on `PATH`), and the first
/// of `<dir>/node_modules`, `<dir>/lib/node_modules` and `<dir>` that holds `aws-lambda-ric`.
pub(crate) fn node(runtime_dir: &Path, runtime: &str, samples: usize) -> Floor {
    let dir = runtime_dir.join(runtime);
    let modules = [
        dir.join("node_modules"),
        dir.join("lib/node_modules"),
        dir.clone(),
    ]
    .into_iter()
    .find(|m| m.join("aws-lambda-ric").is_dir());
    let Some(modules) = modules else {
        return Floor::Unavailable(format!(
            "no aws-lambda-ric provisioned under {}",
            dir.display()
        ));
    };
    let node = std::fs::read(dir.join(ember_runtimes::MARKER))
        .ok()
        .and_then(|m| serde_json::from_slice::<Value>(&m).ok())
        .and_then(|m| m.get("node")?.as_str().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("node"));
    let mut command = Command::new(&node);
    command
        .args(["-e", "require('aws-lambda-ric')"])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("NODE_PATH", &modules)
        .current_dir(&dir);
    Floor::measure(samples, || run(&mut command))
}

/// Runs `command` to its end, its output discarded; its time, if it succeeded.
fn run(command: &mut Command) -> anyhow::Result<Duration> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let output = command
        .output()
        .with_context(|| format!("cannot run {:?}", command.get_program()))?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        output.status.success(),
        "{:?} failed ({}): {}",
        command.get_program(),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_are_p50_p90_and_max() {
        let values: Vec<f64> = (1..=10).map(f64::from).collect();
        let spread = Spread::of(&values).unwrap();
        assert_eq!((spread.samples, spread.p90, spread.max), (10, 9.0, 10.0));
        assert!((5.0..=6.0).contains(&spread.p50), "{spread:?}");
        assert_eq!(Spread::of(&[]), None);
    }

    #[test]
    fn a_floor_that_cannot_run_says_why() {
        let floor = python(Path::new("/nonexistent"), "python3.11", 3);
        assert!(
            matches!(&floor, Floor::Unavailable(why) if why.contains("not provisioned")),
            "{floor:?}"
        );
        let floor = node(Path::new("/nonexistent"), "nodejs20.x", 3);
        assert!(
            matches!(&floor, Floor::Unavailable(why) if why.contains("aws-lambda-ric")),
            "{floor:?}"
        );
        let mut fails = Command::new("false");
        assert!(matches!(
            Floor::measure(3, || run(&mut fails)),
            Floor::Unavailable(_)
        ));
        // A provisioned layout, with a stand-in client: Node.js requires it from NODE_PATH.
        let dir = tempfile::tempdir().unwrap();
        let ric = dir.path().join("nodejs20.x/node_modules/aws-lambda-ric");
        std::fs::create_dir_all(&ric).unwrap();
        std::fs::write(ric.join("index.js"), "module.exports = {};\n").unwrap();
        match node(dir.path(), "nodejs20.x", 2) {
            Floor::Measured(spread) => assert_eq!(spread.samples, 2),
            other => panic!("{other:?}"),
        }
        std::fs::write(ric.join("index.js"), "throw new Error('broken');\n").unwrap();
        assert!(
            matches!(node(dir.path(), "nodejs20.x", 2), Floor::Unavailable(why) if why.contains("broken"))
        );
        let mut works = Command::new("true");
        match Floor::measure(3, || run(&mut works)) {
            Floor::Measured(spread) => assert_eq!(spread.samples, 3),
            other => panic!("{other:?}"),
        }
    }
}
