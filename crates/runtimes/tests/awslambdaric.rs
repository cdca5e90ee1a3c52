//! The real thing: the host's interpreters, awslambdaric installed from PyPI (needs the network;
//! CI reaches PyPI), and the written bootstrap serving `tests/functions/python` against the
//! agent's own Lambda Runtime API (`ember_agent::runtime_api`), both at host paths and, as root,
//! at `/var/lang`, `/var/runtime` and `/var/task` in a mount namespace where `/root` and `/home`
//! are hidden, as an unprivileged uid.

// Helpers outside #[test] functions fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ember_agent::runtime_api::{RuntimeApi, RuntimeApiServer};
use ember_protocol::{Invocation, InvokeOutcome};
use ember_runtimes::{bootstrap_script, Python, Runtimes, RuntimesConfig, MARKER};
use serde_json::{json, Value};

/// Whether a test that needs root may run. As root: yes. Otherwise the test fails loudly, unless
/// `EMBER_TEST_UNPRIVILEGED=1` says skipping is intended (CI runs as root and never sets it).
fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("EMBER_TEST_UNPRIVILEGED").is_some_and(|v| v == "1") {
        eprintln!("not root and EMBER_TEST_UNPRIVILEGED=1: skipping this privileged test");
        return false;
    }
    panic!("this test needs root (CI runs as root); set EMBER_TEST_UNPRIVILEGED=1 to skip it");
}

fn python_functions() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/functions/python")
        .canonicalize()
        .unwrap()
}

/// The Lambda Runtime API the runtime talks to: the agent's own ([`RuntimeApiServer`]), on a
/// port of 127.0.0.1, driven as the agent drives it when the host sends `Invoke`.
struct Api {
    server: RuntimeApiServer,
}

impl Api {
    async fn start() -> Api {
        let server = RuntimeApiServer::bind(RuntimeApi::new("awslambdaric-test"))
            .await
            .unwrap();
        Api { server }
    }

    /// The value of `AWS_LAMBDA_RUNTIME_API`.
    fn address(&self) -> String {
        self.server.runtime_api_address()
    }

    /// Runs one invocation of `event` as `request_id` and returns how the runtime answered.
    async fn invoke(&self, request_id: &str, event: Value) -> InvokeOutcome {
        let deadline_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            + 60_000;
        let invocation = Invocation {
            request_id: request_id.into(),
            payload: Bytes::from(event.to_string()),
            deadline_ms,
            invoked_function_arn: "arn:aws:lambda:us-east-1:123456789012:function:fn".into(),
            trace_id: Some("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1".into()),
            client_context: None,
            cognito_identity: None,
        };
        tokio::time::timeout(
            Duration::from_secs(30),
            self.server.api().invoke(invocation),
        )
        .await
        .unwrap_or_else(|_| panic!("the runtime did not answer {request_id} within 30 s"))
    }
}

/// The JSON document of a response.
fn response(outcome: &InvokeOutcome) -> Value {
    match outcome {
        InvokeOutcome::Ok { payload } => serde_json::from_slice(payload).unwrap(),
        other => panic!("expected a response, got {other:?}"),
    }
}

/// The agent's environment for a function (see `crates/agent/src/env.rs`).
fn lambda_env(api: &str, handler: &str) -> Vec<(String, String)> {
    [
        ("PATH", "/usr/local/bin:/usr/bin/:/bin:/opt/bin".to_owned()),
        (
            "LD_LIBRARY_PATH",
            "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib".to_owned(),
        ),
        ("_HANDLER", handler.to_owned()),
        ("LAMBDA_TASK_ROOT", "/var/task".to_owned()),
        ("LAMBDA_RUNTIME_DIR", "/var/runtime".to_owned()),
        ("AWS_LAMBDA_FUNCTION_NAME", "fn".to_owned()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".to_owned()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/fn".to_owned()),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "2024/01/01/[$LATEST]0123".to_owned()),
        ("AWS_LAMBDA_RUNTIME_API", api.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
        ("TZ", ":UTC".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Discovers the host's interpreters with a runtime directory in `dir`.
async fn host_runtimes(dir: &Path) -> Runtimes {
    Runtimes::discover(RuntimesConfig::new(dir)).await.unwrap()
}

/// Invokes app.handler three times (echo, fail, print) and checks each answer, then stops the
/// runtime and checks its output.
async fn expect_echo_fail_print(api: &Api, child: tokio::process::Child) {
    let echo = api
        .invoke("req-1", json!({"echo": {"hello": "world"}}))
        .await;
    assert_eq!(
        response(&echo),
        json!({"echo": {"hello": "world"}, "memory": 256, "function": "fn", "request_id": "req-1"})
    );
    let fail = api.invoke("req-2", json!({"fail": "on purpose"})).await;
    let InvokeOutcome::FunctionError {
        error_type,
        payload,
    } = &fail
    else {
        panic!("expected a function error, got {fail:?}");
    };
    let document: Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(error_type, "HelloFailure", "{document}");
    assert_eq!(document["errorType"], "HelloFailure", "{document}");
    assert_eq!(document["errorMessage"], "on purpose", "{document}");
    let print = api
        .invoke("req-3", json!({"print": "log-line-from-app"}))
        .await;
    assert_eq!(response(&print), json!({"printed": "log-line-from-app"}));

    let output = stop(child).await;
    assert!(output.contains("log-line-from-app"), "{output}");
}

/// Kills the runtime (waiting for its next invocation) and returns what it printed.
async fn stop(mut child: tokio::process::Child) -> String {
    child.start_kill().unwrap();
    let output = child.wait_with_output().await.unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

#[tokio::test]
async fn discovery_finds_the_hosts_python3_11_quickly() {
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let runtimes = host_runtimes(tmp.path()).await;
    let elapsed = started.elapsed();
    eprintln!("discovery took {elapsed:?}: {}", runtimes.describe());
    let python = runtimes
        .python("python3.11")
        .expect("every Ember host has python3.11");
    assert!(python.prefix.join("bin/python3.11").is_file());
    for python in runtimes.python_versions() {
        assert!(python.minor >= 9, "{python:?}");
        assert!(
            !python.executable.to_string_lossy().contains("/shims/"),
            "{python:?}"
        );
    }
    assert!(
        elapsed < Duration::from_secs(10),
        "discovery took {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisions_awslambdaric_from_pypi_and_serves_a_python_handler() {
    let tmp = tempfile::tempdir().unwrap();
    let runtime_dir = tmp.path().join("runtimes");
    let runtimes = host_runtimes(&runtime_dir).await;
    let python = runtimes.python("python3.11").expect("python3.11").clone();

    let started = Instant::now();
    runtimes.ensure("python3.11").await.unwrap();
    eprintln!(
        "cold provisioning of python3.11 took {:?}",
        started.elapsed()
    );
    let dir = runtime_dir.join("python3.11");
    let marker: Value = serde_json::from_slice(&std::fs::read(dir.join(MARKER)).unwrap()).unwrap();
    assert!(
        marker["awslambdaric"]
            .as_str()
            .unwrap()
            .starts_with(['3', '4']),
        "{marker}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("bootstrap")).unwrap(),
        bootstrap_script(11)
    );

    // Another server sharing the directory finds it ready.
    let started = Instant::now();
    let again = host_runtimes(&runtime_dir).await;
    again.ensure("python3.11").await.unwrap();
    eprintln!(
        "cached ensure (discovery included) took {:?}",
        started.elapsed()
    );

    // The interpreter imports awslambdaric from the runtime directory.
    let import = tokio::process::Command::new(&python.executable)
        .args([
            "-c",
            "import awslambdaric.bootstrap, awslambdaric.lambda_runtime_client",
        ])
        .env("PYTHONPATH", &dir)
        .output()
        .await
        .unwrap();
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );

    // The bootstrap itself, with the interpreter at its host path instead of /var/lang.
    let bootstrap = tmp.path().join("bootstrap-at-host-paths");
    std::fs::write(
        &bootstrap,
        bootstrap_script(11).replace(
            "exec /var/lang/bin/",
            &format!("exec {}/bin/", python.prefix.display()),
        ),
    )
    .unwrap();
    let run = |api: &str, handler: &str| {
        tokio::process::Command::new("/bin/sh")
            .arg(&bootstrap)
            .current_dir(python_functions())
            .env_clear()
            .envs(lambda_env(api, handler))
            .env("LAMBDA_TASK_ROOT", python_functions())
            .env("LAMBDA_RUNTIME_DIR", &dir)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };

    let api = Api::start().await;
    let child = run(&api.address(), "app.handler");
    expect_echo_fail_print(&api, child).await;

    // A module that cannot be imported is reported as Lambda reports it: an init error, which
    // is every invocation's outcome.
    let api = Api::start().await;
    let mut child = run(&api.address(), "bad_import.handler");
    let outcome = api.invoke("req-1", json!({})).await;
    let InvokeOutcome::InitError {
        error_type,
        payload,
    } = &outcome
    else {
        panic!("expected an init error, got {outcome:?}");
    };
    let body: Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(error_type, "Runtime.ImportModuleError", "{body}");
    assert_eq!(body["errorType"], "Runtime.ImportModuleError", "{body}");
    assert!(
        body["errorMessage"]
            .as_str()
            .unwrap()
            .starts_with("Unable to import module 'bad_import'"),
        "{body}"
    );
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success());
}

/// Runs `/var/runtime/bootstrap` as the agent will, for `python`: its prefix at `/var/lang`, the
/// runtime at `/var/runtime`, the function at `/var/task` (read-only binds in a private mount
/// namespace, under a tmpfs `/var`), `/root` and `/home` hidden, as uid 65534.
async fn run_in_container(python: &Python, runtime_dir: &Path) {
    for source in [
        &python.prefix,
        &runtime_dir.to_path_buf(),
        &python_functions(),
    ] {
        assert!(
            !source.starts_with("/var"),
            "{} would be hidden by the test's /var",
            source.display()
        );
    }
    let script = r#"set -e
mount -t tmpfs -o mode=0755 ember-test /var
mkdir /var/lang /var/runtime /var/task
for pair in "$1:/var/lang" "$2:/var/runtime" "$3:/var/task"; do
  mount --bind "${pair%:*}" "${pair##*:}"
  mount -o remount,bind,ro "${pair##*:}"
done
for dir in /root /home; do
  if [ -d "$dir" ]; then mount -t tmpfs -o mode=0755 ember-test "$dir"; fi
done
cd /var/task
exec setpriv --reuid=65534 --regid=65534 --clear-groups /var/runtime/bootstrap
"#;
    let api = Api::start().await;
    let child = tokio::process::Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&python.prefix)
        .arg(runtime_dir.join(&python.runtime))
        .arg(python_functions())
        .env_clear()
        .envs(lambda_env(&api.address(), "app.handler"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    expect_echo_fail_print(&api, child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_runs_at_var_lang_as_an_unprivileged_uid() {
    if !privileged() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let runtimes = host_runtimes(tmp.path()).await;
    // The host's python3.11, and the newest interpreter outside /usr (pyenv's, on Ember's
    // hosts), whose libpython is found through LD_LIBRARY_PATH rather than its RUNPATH.
    let mut pythons = vec![runtimes.python("python3.11").expect("python3.11").clone()];
    pythons.extend(
        runtimes
            .python_versions()
            .iter()
            .rfind(|p| !p.has_system_prefix())
            .cloned(),
    );
    for python in pythons {
        eprintln!("{} from {}", python.runtime, python.prefix.display());
        runtimes.ensure(&python.runtime).await.unwrap();
        run_in_container(&python, runtimes.runtime_dir()).await;
    }
}
