//! cgroups on the real kernel: limits are enforced, counted, and nothing is left behind.
//!
//! These run as root against the host's hierarchy (v1 on the CI machines, v2 on most others),
//! each under a prefix of its own that a guard removes even when the test fails.

// Helpers outside #[test] functions fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ember_sandbox::cgroup::{self, Cgroup, CgroupVersion, CpuQuota, Hierarchy, Limits};
use nix::unistd::Pid;

const MB: u64 = 1 << 20;

/// A test's own prefix in one hierarchy, removed (with its processes) on drop.
struct Scratch {
    hierarchy: Hierarchy,
    prefix: PathBuf,
}

impl Scratch {
    fn new(hierarchy: Hierarchy, test: &str) -> Self {
        let prefix = PathBuf::from(format!("ember-test-{}-{test}", std::process::id()));
        Self { hierarchy, prefix }
    }

    fn create(&self, path: &str) -> Box<dyn Cgroup> {
        self.hierarchy.create(self.prefix.join(path)).unwrap()
    }

    /// Every directory the prefix would occupy in this hierarchy.
    fn dirs(&self) -> Vec<PathBuf> {
        let root = self.hierarchy.root();
        match self.hierarchy.version() {
            CgroupVersion::V1 => ["memory", "cpu", "cpuacct", "pids", "freezer"]
                .iter()
                .map(|c| root.join(c).join(&self.prefix))
                .collect(),
            CgroupVersion::V2 => vec![root.join(&self.prefix)],
        }
    }

    fn assert_gone(&self) {
        for dir in self.dirs() {
            assert!(!dir.exists(), "{} was left behind", dir.display());
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.hierarchy.cleanup_stale(&self.prefix);
    }
}

fn host() -> Hierarchy {
    Hierarchy::host().unwrap()
}

/// Starts `sh -c script` held at a `read`, so it can be put in `cgroup` before it does anything.
fn spawn_in(cgroup: &dyn Cgroup, script: &str) -> Child {
    let mut child = Command::new("sh")
        .args(["-c", &format!("read _; {script}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    cgroup.add_task(Pid::from_raw(child.id() as i32)).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    child
}

#[test]
fn memory_limit_oom_kills_inside_a_vm_and_is_counted() {
    if !common::privileged() {
        return;
    }
    let scratch = Scratch::new(host(), "oom");
    let vm = scratch.create("vm");
    vm.apply(&Limits {
        memory_bytes: Some(256 * MB),
        ..Limits::default()
    })
    .unwrap();
    let container = scratch.create("vm/c");
    container
        .apply(&Limits {
            memory_bytes: Some(64 * MB),
            ..Limits::default()
        })
        .unwrap();

    // tail holds everything it reads while looking for a newline that /dev/zero never sends.
    let status = spawn_in(&*container, "head -c 200M /dev/zero | tail")
        .wait()
        .unwrap();
    // sh reports its last command's death by SIGKILL as 128 + 9.
    assert!(
        status.code() == Some(137) || status.signal() == Some(9),
        "expected an OOM kill, got {status}"
    );

    let stats = container.stats().unwrap();
    assert!(stats.oom_kills >= 1, "{stats:?}");
    assert!(
        (32 * MB..=64 * MB).contains(&stats.memory_peak_bytes),
        "peak should approach the 64 MB limit: {stats:?}"
    );
    let vm_stats = vm.stats().unwrap();
    assert!(
        vm_stats.memory_peak_bytes >= stats.memory_peak_bytes,
        "the VM is charged for its containers: {vm_stats:?}"
    );

    container.reset_peak().unwrap();
    let after = container.stats().unwrap();
    assert!(
        after.memory_peak_bytes < 16 * MB,
        "peak not reset: {after:?}"
    );
    assert_eq!(after.oom_kills, stats.oom_kills);

    vm.destroy().unwrap();
    for dir in scratch.dirs() {
        assert!(
            !dir.join("vm").exists(),
            "{} survived",
            dir.join("vm").display()
        );
    }
}

#[test]
fn pids_limit_stops_forks_and_kill_all_empties_the_group() {
    if !common::privileged() {
        return;
    }
    let scratch = Scratch::new(host(), "pids");
    let cgroup = scratch.create("c");
    cgroup
        .apply(&Limits {
            pids_max: Some(4),
            ..Limits::default()
        })
        .unwrap();

    // The sleeps let go of stderr, or reading it to the end would wait for them.
    let script = "for i in 1 2 3 4 5 6 7 8; do sleep 30 2>/dev/null & done; wait";
    let output = spawn_in(&*cgroup, script).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "8 sleeps fit in pids.max=4");
    assert!(stderr.to_lowercase().contains("fork"), "stderr: {stderr}");

    // The shell is gone; the sleeps it managed to start are still in the group.
    let left = cgroup.pids().unwrap();
    assert!((1..=4).contains(&left.len()), "{left:?}");

    cgroup.kill_all().unwrap();
    assert_eq!(cgroup.pids().unwrap(), []);
    cgroup.destroy().unwrap();
    assert!(scratch.hierarchy.cleanup_stale(&scratch.prefix).unwrap());
    scratch.assert_gone();
}

#[test]
fn cpu_quota_throttles() {
    if !common::privileged() {
        return;
    }
    let scratch = Scratch::new(host(), "cpu");
    let cgroup = scratch.create("c");
    cgroup
        .apply(&Limits {
            cpu: Some(CpuQuota {
                quota_us: 10_000,
                period_us: 100_000,
            }),
            ..Limits::default()
        })
        .unwrap();

    spawn_in(&*cgroup, "timeout 0.5 sh -c 'while :; do :; done'")
        .wait()
        .unwrap();

    let stats = cgroup.stats().unwrap();
    assert!(stats.nr_throttled >= 1, "{stats:?}");
    assert!(stats.cpu_throttled_usec > 0, "{stats:?}");
    // Unthrottled, the loop would burn about 500 ms; 10% of it is 50 ms.
    assert!(
        (10_000..200_000).contains(&stats.cpu_usage_usec),
        "{stats:?}"
    );
    cgroup.destroy().unwrap();
}

/// Every hierarchy on this host: the detected one, plus the empty v2 tree of a hybrid host.
fn hierarchies() -> Vec<Hierarchy> {
    let mut found = vec![host()];
    let unified = found[0].root().join("unified");
    if found[0].version() == CgroupVersion::V1 {
        if let Ok(v2) = Hierarchy::detect(&unified) {
            found.push(v2);
        }
    }
    found
}

#[test]
fn kill_all_and_destroy_leave_nothing_in_every_hierarchy() {
    if !common::privileged() {
        return;
    }
    for hierarchy in hierarchies() {
        let version = hierarchy.version();
        let scratch = Scratch::new(hierarchy, "lifecycle");
        let vm = scratch.create("vm");
        let container = scratch.create("vm/c");
        let mut child = spawn_in(&*container, "sleep 30 & sleep 30 & wait");

        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while vm.pids().unwrap().len() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "{version:?}: sleeps never started"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        vm.kill_all().unwrap();
        assert_eq!(vm.pids().unwrap(), [], "{version:?}");
        assert_eq!(child.wait().unwrap().signal(), Some(9), "{version:?}");

        vm.destroy().unwrap();
        assert!(scratch.hierarchy.cleanup_stale(&scratch.prefix).unwrap());
        assert!(!scratch.hierarchy.cleanup_stale(&scratch.prefix).unwrap());
        scratch.assert_gone();
    }
}

#[test]
fn cleanup_stale_kills_and_removes_what_a_crash_left() {
    if !common::privileged() {
        return;
    }
    let scratch = Scratch::new(host(), "stale");
    let leftover = scratch.create("vm-1/c-1");
    let mut child = spawn_in(&*leftover, "sleep 30");
    drop(leftover);

    let root = scratch.hierarchy.root().to_path_buf();
    assert!(cgroup::cleanup_stale(&root, &scratch.prefix).unwrap());
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    scratch.assert_gone();
}

/// CPU time of a process (all its threads), in clock ticks, from `/proc/<pid>/stat`.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name's closing parenthesis: state is field 3, utime and stime 14 and 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Waits until `cgroup.frozen()` is `want`.
fn wait_frozen(cgroup: &dyn Cgroup, want: bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while cgroup.frozen().unwrap() != want {
        assert!(
            std::time::Instant::now() < deadline,
            "frozen never became {want}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_frozen_group_uses_no_cpu_until_thawed_and_dies_of_kill_all() {
    if !common::privileged() {
        return;
    }
    for hierarchy in hierarchies() {
        let version = hierarchy.version();
        let scratch = Scratch::new(hierarchy, "freeze");
        let cgroup = scratch.create("c");
        let mut child = spawn_in(&*cgroup, "while :; do :; done");
        let pid = child.id();
        assert!(!cgroup.frozen().unwrap(), "{version:?}: a new group runs");

        cgroup.freeze().unwrap();
        wait_frozen(&*cgroup, true);
        let frozen_at = cpu_ticks(pid);
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(cpu_ticks(pid), frozen_at, "{version:?}: ran while frozen");

        cgroup.thaw().unwrap();
        wait_frozen(&*cgroup, false);
        let thawed_at = cpu_ticks(pid);
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            cpu_ticks(pid) > thawed_at,
            "{version:?}: still stopped after a thaw"
        );

        // Killed while frozen: v1 thaws first, v2 kills frozen processes as they are.
        cgroup.freeze().unwrap();
        wait_frozen(&*cgroup, true);
        cgroup.kill_all().unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(9), "{version:?}");
        cgroup.destroy().unwrap();
        assert!(scratch.hierarchy.cleanup_stale(&scratch.prefix).unwrap());
        scratch.assert_gone();
    }
}

#[test]
fn a_freezer_anchor_stays_frozen_and_goes_with_its_parent() {
    if !common::privileged() {
        return;
    }
    let scratch = Scratch::new(host(), "anchor");
    let vm = scratch.create("vm");
    match scratch
        .hierarchy
        .freezer_anchor(scratch.prefix.join("vm/anchor"))
        .unwrap()
    {
        Some(anchor) => {
            assert_eq!(scratch.hierarchy.version(), CgroupVersion::V1);
            wait_frozen(&*anchor, true);
            // A sibling freezes and thaws as usual next to it.
            let c = scratch.create("vm/c");
            let mut child = spawn_in(&*c, "while :; do :; done");
            c.freeze().unwrap();
            wait_frozen(&*c, true);
            c.thaw().unwrap();
            wait_frozen(&*c, false);
            assert!(anchor.frozen().unwrap());
            vm.destroy().unwrap();
            assert_eq!(child.wait().unwrap().signal(), Some(9));
        }
        None => assert_eq!(scratch.hierarchy.version(), CgroupVersion::V2),
    }
    vm.destroy().unwrap();
    assert!(scratch.hierarchy.cleanup_stale(&scratch.prefix).unwrap());
    scratch.assert_gone();
}
