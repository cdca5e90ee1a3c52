//! What the VM integration tests share: the rule for running without root, the agent binary, and
//! a scratch driver (cgroup prefix, state dir) per test that cleans up after itself.

// Helpers fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ember_sandbox::cgroup::{CgroupVersion, Hierarchy};
use ember_vm::linux::{default_agent_path, LinuxConfig, LinuxDriver};
use ember_vm::{Vm, VmDriver, VmSpec};

/// Whether a test that needs root may run. As root: yes. Otherwise the test fails loudly, unless
/// `EMBER_TEST_UNPRIVILEGED=1` says skipping is intended (CI runs as root and never sets it).
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

/// The `ember-agent` binary, built (once per test process) so that it is never stale: Cargo
/// builds the binaries of other packages only for `cargo test --workspace` or `-p ember-agent`.
pub fn agent_path() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            cargo_build(&["-p", "ember-agent", "--bin", "ember-agent"]);
            default_agent_path().unwrap()
        })
        .clone()
}

/// Runs `cargo build` with `args` (in this build's profile), as the tests need binaries that
/// Cargo does not build for them.
pub fn cargo_build(args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build.arg("build").args(args);
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let status = build.status().unwrap();
    assert!(status.success(), "cargo build {args:?} failed");
}

/// A test's own driver: a cgroup prefix and state dir that a guard removes even on failure.
pub struct Scratch {
    pub top: PathBuf,
    pub prefix: PathBuf,
    pub state: tempfile::TempDir,
    pub hierarchy: Hierarchy,
    pub driver: LinuxDriver,
}

impl Scratch {
    pub fn new(test: &str) -> Self {
        let top = PathBuf::from(format!("ember-test-{}-{test}", std::process::id()));
        let prefix = top.join("vms");
        let state = tempfile::tempdir().unwrap();
        let driver = LinuxDriver::new(Self::config(&prefix, state.path())).unwrap();
        Self {
            top,
            prefix,
            state,
            hierarchy: Hierarchy::host().unwrap(),
            driver,
        }
    }

    pub fn config(prefix: &Path, state: &Path) -> LinuxConfig {
        let mut config = LinuxConfig::new(state, agent_path());
        config.cgroup_prefix = prefix.to_path_buf();
        config
    }

    /// A second driver over the same prefix and state, as after a restart.
    pub fn restarted_driver(&self) -> LinuxDriver {
        LinuxDriver::new(Self::config(&self.prefix, self.state.path())).unwrap()
    }

    pub async fn boot(&self, id: &str) -> Vm {
        self.driver.boot(spec(id)).await.unwrap()
    }

    /// The directory of `controller` (ignored on v2) for VM `id`.
    pub fn cgroup_dir(&self, controller: &str, id: &str) -> PathBuf {
        let root = self.hierarchy.root();
        match self.hierarchy.version() {
            CgroupVersion::V1 => root.join(controller).join(&self.prefix).join(id),
            CgroupVersion::V2 => root.join(&self.prefix).join(id),
        }
    }

    pub fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        ["memory", "cpu", "cpuacct", "pids", "freezer"]
            .iter()
            .map(|c| self.cgroup_dir(c, id))
            .collect()
    }

    /// Asserts the host holds nothing of VM `id`: no process, cgroup, state dir or mount.
    pub fn assert_gone(&self, id: &str, pid: u32, mounts_before: &[String]) {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || !status_field(pid, "NSpid").is_some_and(|ns| ns.ends_with(" 1")),
            "the VM's agent (pid {pid}) is still there"
        );
        for dir in self.cgroup_dirs(id) {
            assert!(!dir.exists(), "{} was left behind", dir.display());
        }
        let vm_dir = self.state.path().join("vms").join(id);
        assert!(!vm_dir.exists(), "{} was left behind", vm_dir.display());
        assert_eq!(
            host_mounts(),
            mounts_before,
            "the host's mount table changed"
        );
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.driver.cleanup_stale();
        let _ = self.hierarchy.cleanup_stale(&self.top);
    }
}

pub fn spec(id: &str) -> VmSpec {
    VmSpec {
        id: id.into(),
        memory_mb: 128,
        vcpus: 1,
        pids_max: 64,
    }
}

/// The host's mount points (this test process's mount namespace), sorted.
pub fn host_mounts() -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut mounts: Vec<String> = table
        .lines()
        .map(|l| l.split(' ').nth(4).unwrap().to_owned())
        .collect();
    mounts.sort();
    mounts
}

pub fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
}

pub fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .trim()
        .to_owned()
}
