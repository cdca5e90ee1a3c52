//! SnapStart in a real VM, as root: the host drives the agent over the protocol only, with a
//! `python3.11` function under the provisioned runtime (awslambdaric), published as a version
//! with `snap_start`. Each environment reports what it sees from inside; the agent's
//! verification of a forked runtime is exercised by a template that lies.

// Helpers outside #[test] functions fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use ember_protocol::{
    cpu_millis, CodeSource, CreateContainer, FunctionSpec, Invocation, Invoke, InvokeOutcome,
    InvokeResult,
};
use ember_vm::linux::{LinuxDriver, ReadOnlyBind};
use ember_vm::{Vm, VmDriver, VmSpec};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const RUNTIME: &str = "python3.11";
const SANDBOX_ID: u32 = 1000;

/// A function with a slow init, Lambda's SnapStart hooks, and a handler that reports what its
/// environment is. With `LIE` set, its init replaces Ember's snapshot hook with one that claims
/// forks it never makes.
const APP: &str = r#"
import ctypes, errno, os, random, time
import snapshot_restore_py
from snapshot_restore_py import register_after_restore, register_before_snapshot

time.sleep(1.5)
SHARED = bytearray(b"template")
BEFORE = []
AFTER = []

@register_before_snapshot
def before():
    BEFORE.append(os.getpid())

@register_after_restore
def after():
    AFTER.append(os.getpid())

def fake():
    os.write(3, b'{"ready": true}\n')
    while True:
        if not os.read(3, 1 << 16):
            os._exit(0)
        os.write(3, b'{"pid": 2}\n')

if os.environ.get("LIE"):
    snapshot_restore_py._before_snapshot_registry[0] = (fake, (), {})

if os.environ.get("FAIL"):
    raise RuntimeError("no config")

def handler(event, context):
    time.sleep(event.get("hold", 0))
    if "write" in event:
        SHARED[:] = event["write"].encode()
        with open("/tmp/mine", "w") as f:
            f.write(event["write"])
    status = dict(l.split(":", 1) for l in open("/proc/self/status"))
    keys = ["Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
            "NoNewPrivs", "Seccomp", "Seccomp_filters"]
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    setns = libc.setns(fd, 0)
    setns = errno.errorcode.get(ctypes.get_errno(), "") if setns else "allowed"
    os.close(fd)
    return {
        "status": {k: " ".join(status[k].split()) for k in keys},
        "ns": {n: os.readlink("/proc/self/ns/" + n)
               for n in ["user", "mnt", "net", "pid", "ipc", "uts", "cgroup"]},
        "cgroup": open("/proc/self/cgroup").read(),
        "init_type": os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE"),
        "log_stream": os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME"),
        "random": random.random(),
        "before": len(BEFORE), "after": len(AFTER),
        "shared": SHARED.decode(),
        "mine": open("/tmp/mine").read() if os.path.exists("/tmp/mine") else None,
        "setns": setns,
        "pid": os.getpid(),
        "fds": sorted(os.listdir("/proc/self/fd")),
    }
"#;

struct Fixture {
    _scratch: Scratch,
    vm: Vm,
    sha: String,
}

impl Fixture {
    async fn new(test: &str) -> Self {
        let dir = std::env::var_os("EMBER_E2E_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/e2e-runtimes")
            });
        let runtimes = ember_runtimes::Runtimes::discover(ember_runtimes::RuntimesConfig::new(dir))
            .await
            .unwrap();
        runtimes.ensure(RUNTIME).await.unwrap();
        let scratch = Scratch::new(test);
        let mut config = Scratch::config(&scratch.prefix, scratch.state.path());
        config.read_only_binds = runtimes
            .vm_binds()
            .into_iter()
            .map(|(source, target)| ReadOnlyBind { source, target })
            .collect();
        config.agent_log = std::env::var("EMBER_TEST_AGENT_LOG").ok();
        let driver = LinuxDriver::new(config).unwrap();
        let vm = driver
            .boot(VmSpec {
                id: "vm".into(),
                memory_mb: 2048,
                vcpus: 2,
                pids_max: 512,
            })
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.py"), APP).unwrap();
        let zip = ember_package::zip_dir(dir.path()).unwrap();
        let sha = hex::encode(Sha256::digest(&zip));
        vm.connection()
            .put_code(&sha, &Bytes::from(zip))
            .await
            .unwrap();
        Self {
            _scratch: scratch,
            vm,
            sha,
        }
    }

    fn request(&self, id: &str, snap_start: bool, env: &[(&str, &str)]) -> CreateContainer {
        CreateContainer {
            container_id: id.into(),
            function: FunctionSpec {
                name: "snappy".into(),
                arn: "arn:aws:lambda:us-east-1:000000000000:function:snappy".into(),
                version: "1".into(),
                handler: "app.handler".into(),
                runtime: RUNTIME.into(),
                region: "us-east-1".into(),
                environment: env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
                memory_mb: 256,
                timeout_ms: 10_000,
                ephemeral_storage_mb: 16,
                code: CodeSource::Stored {
                    sha256: self.sha.clone(),
                },
                layers: Vec::new(),
            },
            uid: SANDBOX_ID,
            gid: SANDBOX_ID,
            cpu_millis: cpu_millis(256, 2),
            pids_max: 64,
            freeze_idle: true,
            snap_start,
            credentials: None,
            egress: ember_protocol::Egress::Allow,
        }
    }

    /// Creates container `id` and invokes it once with `event`.
    async fn start(&self, request: CreateContainer, event: Value) -> (InvokeResult, Value) {
        let id = request.container_id.clone();
        self.vm
            .connection()
            .create_container(request)
            .await
            .unwrap();
        let result = self
            .vm
            .connection()
            .invoke(Invoke {
                container_id: id.clone(),
                invocation: Invocation {
                    request_id: format!("r-{id}"),
                    payload: Bytes::from(event.to_string()),
                    deadline_ms: deadline(Duration::from_secs(30)),
                    invoked_function_arn: "arn:aws:lambda:us-east-1:000000000000:function:snappy:1"
                        .into(),
                    trace_id: None,
                    client_context: None,
                    cognito_identity: None,
                },
            })
            .await
            .unwrap();
        let out = match &result.outcome {
            InvokeOutcome::Ok { payload } => serde_json::from_slice(payload).unwrap(),
            other => panic!("{id}: {other:?}; logs:\n{}", result.logs),
        };
        (result, out)
    }
}

/// The host pid of the template's runtime: the interpreter run with `-c` in the cgroup `group`.
fn template_runtime(group: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let python = args.first()?.starts_with(b"/var/lang/bin/python3");
            let template =
                args.get(1) == Some(&&b"-c"[..]) && cgroup.contains(&format!("/{group}\n"));
            (python && template).then_some(pid)
        })
}

fn pythons() -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmdline.starts_with(b"/var/lang") || cmdline.starts_with(b"ember") {
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let first: String = String::from_utf8_lossy(&cmdline[..cmdline.len().min(40)]).into();
            out += &format!(
                "{pid} {first:?} {}\n",
                cgroup
                    .lines()
                    .find(|l| l.contains(":memory:"))
                    .unwrap_or("")
            );
        }
    }
    out
}

fn deadline(after: Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (now + after).as_millis() as u64
}

#[tokio::test]
async fn environments_fork_from_the_versions_template_each_with_its_own_namespaces_and_memory() {
    if !privileged() {
        return;
    }
    let fx = Fixture::new("snapstart").await;
    // The first SnapStart container of the version prepares the template (its 1.5 s init),
    // then forks from it.
    let (a, a_out) = fx
        .start(fx.request("a", true, &[]), json!({"write": "mine-a"}))
        .await;
    assert!(a.restored, "{}", a.logs);
    // The next forks from the same template: no init of its own.
    let (b, b_out) = fx.start(fx.request("b", true, &[]), json!({})).await;
    assert!(b.restored, "{}", b.logs);
    let restore_ms = b.init_duration_ms.unwrap();
    eprintln!("restored in {restore_ms:.1} ms");
    assert!(restore_ms < 1000.0, "restored in {restore_ms} ms");
    // An ordinary start of the same version, for comparison.
    let (c, c_out) = fx.start(fx.request("c", false, &[]), json!({})).await;
    assert!(!c.restored);
    assert!(c.init_duration_ms.unwrap() > 1500.0);

    for out in [&a_out, &b_out] {
        assert_eq!(out["init_type"], "snap-start");
        // The before-snapshot hook ran once, in the template; the after-restore hook once, here.
        assert_eq!(out["before"], 1, "{out}");
        assert_eq!(out["after"], 1, "{out}");
        // setns is denied again, as in any container.
        assert_eq!(out["setns"], "EPERM");
        // Nothing is left of the template's descriptors: none a fresh start lacks (the
        // runtime client's own, opened since, are the same; a fresh start also has what its
        // bootstrap shell left).
        for fd in out["fds"].as_array().unwrap() {
            assert!(
                c_out["fds"].as_array().unwrap().contains(fd),
                "{out} {c_out}"
            );
        }
        // Identity, capabilities, no_new_privs and seccomp are a fresh start's (with the
        // template's filters under the container's).
        let mut status = out["status"].clone();
        let mut fresh = c_out["status"].clone();
        assert_eq!(status["Seccomp_filters"], "4");
        assert_eq!(fresh["Seccomp_filters"], "2");
        status.as_object_mut().unwrap().remove("Seccomp_filters");
        fresh.as_object_mut().unwrap().remove("Seccomp_filters");
        assert_eq!(status, fresh);
        assert_eq!(status["Uid"], "1000 1000 1000 1000");
        assert_eq!(status["CapEff"], "0000000000000000");
        // The container's own cgroup, seen from its own cgroup namespace, as a fresh start sees
        // its own.
        assert_eq!(out["cgroup"], c_out["cgroup"]);
        // PID 1 is the container's reaper; the runtime has the pid a fresh start's has.
        assert_eq!(out["pid"], c_out["pid"]);
    }
    assert_ne!(c_out["init_type"], "snap-start");
    // Every namespace is the environment's own: not the other's, not a fresh start's, not the
    // template's (its runtime, found from the host by its cgroup, the template container's).
    let template = template_runtime("c-snap-a").expect("the template's runtime");
    for ns in ["user", "mnt", "net", "pid", "ipc", "uts", "cgroup"] {
        assert_ne!(a_out["ns"][ns], b_out["ns"][ns], "{ns}");
        assert_ne!(a_out["ns"][ns], c_out["ns"][ns], "{ns}");
        let theirs = std::fs::read_link(format!("/proc/{template}/ns/{ns}")).unwrap();
        assert_ne!(a_out["ns"][ns], theirs.to_str().unwrap(), "{ns}");
        assert_ne!(b_out["ns"][ns], theirs.to_str().unwrap(), "{ns}");
    }
    // Nothing written in one environment shows in another, or came from the template.
    assert_eq!(a_out["shared"], "mine-a");
    assert_eq!(a_out["mine"], "mine-a");
    assert_eq!(b_out["shared"], "template");
    assert_eq!(b_out["mine"], Value::Null);
    assert_ne!(a_out["random"], b_out["random"]);
    assert_ne!(a_out["log_stream"], b_out["log_stream"]);
    // A's memory stays its own on its next invocation.
    let again = fx
        .vm
        .connection()
        .invoke(Invoke {
            container_id: "a".into(),
            invocation: Invocation {
                request_id: "r-a2".into(),
                payload: Bytes::from("{}"),
                deadline_ms: deadline(Duration::from_secs(10)),
                invoked_function_arn: "arn".into(),
                trace_id: None,
                client_context: None,
                cognito_identity: None,
            },
        })
        .await
        .unwrap();
    let again: Value = match &again.outcome {
        InvokeOutcome::Ok { payload } => serde_json::from_slice(payload).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(again["shared"], "mine-a");
    assert_eq!(again["after"], 1);

    // The version is deleted: its template goes once its last environment has (their PID
    // namespaces are under its own).
    let arn = "arn:aws:lambda:us-east-1:000000000000:function:snappy";
    let agent = fx.vm.connection();
    assert_eq!(
        agent.drop_snap_templates(arn, Some("2")).await.unwrap(),
        (0, 0)
    );
    // B is busy for longer than the agent waits for the version's environments to go; A is
    // destroyed as the host does when it drops the template.
    let busy = agent.invoke(Invoke {
        container_id: "b".into(),
        invocation: Invocation {
            request_id: "r-b2".into(),
            payload: Bytes::from(json!({"hold": 7}).to_string()),
            deadline_ms: deadline(Duration::from_secs(20)),
            invoked_function_arn: "arn".into(),
            trace_id: None,
            client_context: None,
            cognito_identity: None,
        },
    });
    let drop_and_destroy = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (dropped, destroyed) = tokio::join!(
            agent.drop_snap_templates(arn, Some("1")),
            agent.destroy_container("a")
        );
        destroyed.unwrap();
        dropped.unwrap()
    };
    let (busy, dropped) = tokio::join!(busy, drop_and_destroy);
    assert_eq!(dropped, (0, 1));
    assert!(matches!(busy.unwrap().outcome, InvokeOutcome::Ok { .. }));
    assert!(
        template_runtime("c-snap-a").is_some(),
        "B still runs from it: {}",
        pythons()
    );
    agent.destroy_container("b").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while template_runtime("c-snap-a").is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the template outlived its environments"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A new environment of the version starts from a new template.
    let (d, _) = fx.start(fx.request("d", true, &[]), json!({})).await;
    assert!(d.restored);
    assert!(template_runtime("c-snap-d").is_some());
    assert_eq!(agent.drop_snap_templates(arn, None).await.unwrap(), (0, 1));
    fx.vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_template_that_lies_on_its_fork_channel_is_refused_and_the_environment_starts_afresh() {
    if !privileged() {
        return;
    }
    let fx = Fixture::new("snaplie").await;
    let (a, a_out) = fx
        .start(fx.request("a", true, &[("LIE", "1")]), json!({}))
        .await;
    // The template claimed a runtime it never forked: the agent found none and started the
    // environment the ordinary way.
    assert!(!a.restored, "{}", a.logs);
    assert!(a.init_duration_ms.unwrap() > 1500.0);
    assert_eq!(a_out["status"]["Seccomp_filters"], "2");
    // The template is given up: the next environment starts the ordinary way at once.
    let (b, _) = fx
        .start(fx.request("b", true, &[("LIE", "1")]), json!({}))
        .await;
    assert!(!b.restored);
    fx.vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failed_init_in_the_template_is_the_init_error_an_ordinary_start_reports() {
    if !privileged() {
        return;
    }
    let fx = Fixture::new("snapfail").await;
    for id in ["a", "b"] {
        let request = fx.request(id, true, &[("FAIL", "1")]);
        fx.vm.connection().create_container(request).await.unwrap();
        let result = fx
            .vm
            .connection()
            .invoke(Invoke {
                container_id: id.into(),
                invocation: Invocation {
                    request_id: format!("r-{id}"),
                    payload: Bytes::from("{}"),
                    deadline_ms: deadline(Duration::from_secs(30)),
                    invoked_function_arn: "arn".into(),
                    trace_id: None,
                    client_context: None,
                    cognito_identity: None,
                },
            })
            .await
            .unwrap();
        // As Lambda reports a failed init: the function's exception, as the init's error. The
        // template is not tried again for the second environment.
        match &result.outcome {
            InvokeOutcome::InitError {
                error_type,
                payload,
            } => {
                assert_eq!(error_type, "RuntimeError", "{id}");
                assert!(String::from_utf8_lossy(payload).contains("no config"));
            }
            other => panic!("{id}: {other:?}; logs:\n{}", result.logs),
        }
        assert!(!result.restored);
    }
    fx.vm.shutdown().await.unwrap();
}
