//! The Linux backend on the real kernel, as root: isolation, limits, and that nothing leaks.
//!
//! Each test boots VMs under a cgroup prefix and state dir of its own, and checks what the host
//! can observe from outside (`/proc/<pid>/…`, cgroupfs, its own mount table), never entering a VM.

// Helpers outside #[test] functions fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

mod common;

use common::*;
use ember_protocol::{CodeSource, CreateContainer, FunctionSpec, ProtocolError};
use ember_sandbox::cgroup::CgroupVersion;
use ember_vm::linux::{LinuxDriver, Policy};
use ember_vm::VmDriver;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn create_container_request() -> CreateContainer {
    CreateContainer {
        container_id: "c-1".into(),
        function: FunctionSpec {
            name: "f".into(),
            arn: "arn:aws:lambda:us-east-1:000000000000:function:f".into(),
            version: "$LATEST".into(),
            handler: "index.handler".into(),
            runtime: "provided.al2023".into(),
            region: "us-east-1".into(),
            environment: Default::default(),
            memory_mb: 128,
            timeout_ms: 3000,
            ephemeral_storage_mb: 512,
            code: CodeSource::Directory {
                path: "/nonexistent".into(),
            },
            layers: Vec::new(),
        },
        uid: 1000,
        gid: 1000,
        cpu_millis: 1000,
        pids_max: 64,
        freeze_idle: true,
        snap_start: false,
        credentials: None,
        egress: ember_protocol::Egress::Allow,
    }
}

#[tokio::test]
async fn a_vm_is_isolated_limited_and_leaves_nothing() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new("isolated");
    let mounts_before = host_mounts();
    let vm = scratch.boot("iso").await;
    let pid = vm.host_pid().unwrap();

    // Its own namespaces, every one of them.
    for ns in ["pid", "mnt", "net", "uts", "ipc"] {
        let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let inside = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_ne!(host, inside, "the VM shares the host's {ns} namespace");
    }
    // The agent is PID 1 in the VM: NSpid lists the host pid, then the in-namespace one.
    assert_eq!(status_field(pid, "NSpid").unwrap(), format!("{pid} 1"));

    // Network: loopback only, up (127.0.0.1 is in the local table), and no route anywhere.
    let dev = read(format!("/proc/{pid}/net/dev"));
    let interfaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .map(|l| l.split(':').next().unwrap().trim())
        .collect();
    assert_eq!(interfaces, ["lo"]);
    assert!(
        read(format!("/proc/{pid}/net/fib_trie")).contains("127.0.0.1"),
        "lo is down"
    );
    assert_eq!(
        read(format!("/proc/{pid}/net/route")).lines().count(),
        1,
        "a route exists"
    );

    // Limits from the spec: 128 MB with swap off, one CPU, 64 tasks; the agent inside.
    let mb128 = (128u64 << 20).to_string();
    match scratch.hierarchy.version() {
        CgroupVersion::V1 => {
            let memory = scratch.cgroup_dir("memory", "iso");
            assert_eq!(read(memory.join("memory.limit_in_bytes")), mb128);
            if memory.join("memory.memsw.limit_in_bytes").exists() {
                assert_eq!(read(memory.join("memory.memsw.limit_in_bytes")), mb128);
            }
            assert_eq!(read(memory.join("memory.swappiness")), "0");
            let cpu = scratch.cgroup_dir("cpu", "iso");
            assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "100000");
            assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
            assert_eq!(
                read(scratch.cgroup_dir("pids", "iso").join("pids.max")),
                "64"
            );
            let procs = read(memory.join("cgroup.procs"));
            assert!(
                procs.lines().any(|p| p == pid.to_string()),
                "agent not in the cgroup"
            );
        }
        CgroupVersion::V2 => {
            let dir = scratch.cgroup_dir("", "iso");
            assert_eq!(read(dir.join("memory.max")), mb128);
            assert_eq!(read(dir.join("memory.swap.max")), "0");
            assert_eq!(read(dir.join("cpu.max")), "100000 100000");
            assert_eq!(read(dir.join("pids.max")), "64");
        }
    }

    // Its root: the system directories, but not /root, secrets, the data dir or other VMs.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    assert!(root.join("usr/bin").is_dir(), "the VM has no /usr/bin");
    assert!(
        root.join("etc/passwd").is_file(),
        "the VM has no /etc/passwd"
    );
    for hidden in [
        "root",
        "etc/shadow",
        "etc/gshadow",
        "home",
        "var",
        "sys/kernel",
        "sys/class",
        "sys/fs/cgroup/unified",
    ] {
        assert!(!root.join(hidden).exists(), "the VM can see /{hidden}");
    }
    let state = scratch.state.path().strip_prefix("/").unwrap();
    assert!(
        !root.join(state).exists(),
        "the VM can see the host's state dir"
    );
    // A read-only root; writable /tmp; the VM's own /proc (pid 1 is the agent).
    let vm_mounts = read(format!("/proc/{pid}/mountinfo"));
    let root_mount = vm_mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap();
    assert!(
        root_mount.contains(" ro,") || root_mount.contains(" ro "),
        "{root_mount}"
    );
    assert!(vm_mounts
        .lines()
        .any(|l| l.contains(" /tmp ") && l.contains(" rw,")));
    assert!(root.join("proc/1/status").is_file());
    assert!(root.join("dev/null").exists() && root.join("dev/urandom").exists());
    assert!(!root.join("dev/sda").exists() && !root.join("dev/mem").exists());

    // Its own cgroup, delegated read-write at /sys/fs/cgroup, as a hierarchy of its own: the
    // VM's limits at the root, nothing of the host's tree.
    let cgroupfs = root.join("sys/fs/cgroup");
    match scratch.hierarchy.version() {
        CgroupVersion::V1 => {
            assert_eq!(read(cgroupfs.join("memory/memory.limit_in_bytes")), mb128);
            assert_eq!(read(cgroupfs.join("cpu/cpu.cfs_quota_us")), "100000");
            assert_eq!(read(cgroupfs.join("pids/pids.max")), "64");
            assert!(cgroupfs.join("cpuacct/cpuacct.usage").is_file());
            let procs = read(cgroupfs.join("memory/cgroup.procs"));
            assert_eq!(
                procs,
                pid.to_string(),
                "the VM's group holds the agent only"
            );
            for hidden in ["blkio", "devices", "systemd", "unified"] {
                assert!(!cgroupfs.join(hidden).exists(), "the VM sees {hidden}");
            }
        }
        CgroupVersion::V2 => {
            assert_eq!(read(cgroupfs.join("memory.max")), mb128);
            let procs = read(cgroupfs.join("agent/cgroup.procs"));
            assert_eq!(procs, pid.to_string(), "the agent lives in a leaf");
        }
    }
    assert!(
        !cgroupfs.join(&scratch.prefix).exists(),
        "the VM sees the host's tree"
    );
    let mount_of = |path: &str| {
        vm_mounts
            .lines()
            .rfind(|l| l.split(' ').nth(4) == Some(path))
            .unwrap_or_else(|| panic!("nothing mounted on {path}"))
            .to_owned()
    };
    match scratch.hierarchy.version() {
        CgroupVersion::V1 => {
            assert!(
                mount_of("/sys/fs/cgroup").contains(" ro,"),
                "a read-only holder"
            );
            assert!(mount_of("/sys/fs/cgroup/memory").contains(" rw,"));
        }
        CgroupVersion::V2 => assert!(mount_of("/sys/fs/cgroup").contains(" rw,")),
    }

    // The agent answers: stats from its own view, and container requests.
    let stats = vm.connection().stats().await.unwrap();
    assert_eq!(stats.containers, 0);
    assert!(stats.memory_used_mb > 0, "{stats:?}");
    match vm
        .connection()
        .create_container(create_container_request())
        .await
    {
        Err(ProtocolError::Agent(message)) => {
            assert!(message.contains("/nonexistent"), "{message}")
        }
        other => panic!("a container of missing code should be refused, got {other:?}"),
    }

    // The VM's mounts never reached the host.
    assert_eq!(host_mounts(), mounts_before);
    vm.shutdown().await.unwrap();
    scratch.assert_gone("iso", pid, &mounts_before);
}

#[tokio::test]
async fn two_vms_do_not_see_each_other() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new("two");
    let a = scratch.boot("a").await;
    let b = scratch.boot("b").await;
    let (pa, pb) = (a.host_pid().unwrap(), b.host_pid().unwrap());
    for ns in ["pid", "mnt", "net", "ipc", "uts"] {
        let na = std::fs::read_link(format!("/proc/{pa}/ns/{ns}")).unwrap();
        let nb = std::fs::read_link(format!("/proc/{pb}/ns/{ns}")).unwrap();
        assert_ne!(na, nb, "two VMs share a {ns} namespace");
    }
    // Each VM's /proc holds its own processes only: its agent (PID 1) and the agent's spare
    // container inits (at most two, each with the first process of the container it pre-builds:
    // see the agent's `container::spare`).
    for pid in [pa, pb] {
        let proc = format!("/proc/{pid}/root/proc");
        let mut procs: Vec<String> = std::fs::read_dir(&proc)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            .collect();
        procs.sort();
        assert_eq!(procs.first().map(String::as_str), Some("1"), "{procs:?}");
        assert!(
            procs.len() <= 5,
            "VM of pid {pid} sees other processes: {procs:?}"
        );
        // A spare being spawned shows the agent's command line until its exec.
        let agent = std::fs::read(format!("{proc}/1/cmdline")).unwrap();
        for other in &procs[1..] {
            let cmdline = std::fs::read(format!("{proc}/{other}/cmdline")).unwrap_or_default();
            assert!(
                cmdline.starts_with(b"ember-container-init\0container-init\0--spare\0")
                    || cmdline == agent
                    || cmdline.is_empty(),
                "VM of pid {pid} sees process {other}: {:?}",
                String::from_utf8_lossy(&cmdline)
            );
        }
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_killed_agent_is_detected_and_cleaned_up() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new("killed");
    let mounts_before = host_mounts();
    let mut vm = scratch.boot("k").await;
    let pid = vm.host_pid().unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), vm.events().recv()).await;
    assert!(
        matches!(closed, Ok(None)),
        "the connection did not close: {closed:?}"
    );
    assert!(matches!(
        vm.connection().stats().await,
        Err(ProtocolError::Closed)
    ));
    vm.shutdown().await.unwrap();
    scratch.assert_gone("k", pid, &mounts_before);
}

#[tokio::test]
async fn a_vm_runs_with_the_configured_scheduling_policy() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new("sched");
    let policy_of = |pid: u32| {
        let stat = read(format!("/proc/{pid}/stat"));
        ember_sandbox::sched::policy_in_stat(&stat).unwrap()
    };
    let batch = scratch.boot("batch").await;
    assert_eq!(
        policy_of(batch.host_pid().unwrap()),
        Policy::Batch.as_raw(),
        "the default"
    );

    // A driver configured otherwise sets its own policy, whatever the host process's is.
    let mut config = Scratch::config(&scratch.prefix, scratch.state.path());
    config.scheduling = Policy::Other;
    let driver = LinuxDriver::new(config).unwrap();
    let other = driver.boot(spec("other")).await.unwrap();
    let pid = other.host_pid().unwrap();
    assert_eq!(policy_of(pid), Policy::Other.as_raw());
    other.shutdown().await.unwrap();
    batch.shutdown().await.unwrap();
}

#[tokio::test]
async fn dropping_a_vm_tears_it_down() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new("dropped");
    let mounts_before = host_mounts();
    let vm = scratch.boot("d").await;
    let pid = vm.host_pid().unwrap();
    drop(vm);
    scratch.assert_gone("d", pid, &mounts_before);
}

#[tokio::test]
async fn cleanup_stale_removes_a_leaked_vm() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new("stale");
    let mounts_before = host_mounts();
    let vm = scratch.boot("leaked").await;
    let pid = vm.host_pid().unwrap();
    // As if Ember had been SIGKILLed: the handle never runs its teardown.
    std::mem::forget(vm);
    assert!(scratch.cgroup_dir("pids", "leaked").exists());

    let report = scratch.restarted_driver().cleanup_stale().unwrap();
    assert!(report.cgroups, "{report:?}");
    assert_eq!(report.dirs, 1, "{report:?}");
    assert_eq!(report.mounts, 0, "{report:?}");
    // The agent was our child: reap it to see that cleanup killed it.
    let status = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None).unwrap();
    assert!(
        matches!(
            status,
            nix::sys::wait::WaitStatus::Signaled(_, Signal::SIGKILL, _)
        ),
        "{status:?}"
    );
    scratch.assert_gone("leaked", pid, &mounts_before);
    // A second pass finds nothing.
    let again = scratch.restarted_driver().cleanup_stale().unwrap();
    assert_eq!(again, Default::default());
}

#[tokio::test]
async fn boot_fails_cleanly_with_a_bad_agent() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new("badagent");
    let mounts_before = host_mounts();
    let mut config = Scratch::config(&scratch.prefix, scratch.state.path());
    // An executable that is not an agent: it exits without a Hello.
    config.agent_path = "/usr/bin/true".into();
    let driver = LinuxDriver::new(config).unwrap();
    let err = driver.boot(spec("bad")).await.unwrap_err();
    assert!(matches!(err, ember_vm::VmError::Handshake(_)), "{err:?}");
    for dir in scratch.cgroup_dirs("bad") {
        assert!(!dir.exists(), "{} was left behind", dir.display());
    }
    assert!(!scratch.state.path().join("vms/bad").exists());
    assert_eq!(host_mounts(), mounts_before);
}
