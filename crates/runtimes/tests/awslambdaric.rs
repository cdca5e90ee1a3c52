//! The real thing: the host's interpreters, awslambdaric installed from PyPI (needs the network;
//! CI reaches PyPI), and the written bootstrap serving `tests/functions/python` against a fake
//! Lambda Runtime API, both at host paths and, as root, at `/var/lang`, `/var/runtime` and
//! `/var/task` in a mount namespace where `/root` and `/home` are hidden, as an unprivileged uid.

// Helpers outside #[test] functions fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_runtimes::{bootstrap_script, Python, Runtimes, RuntimesConfig, MARKER};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

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

/// A request the runtime posted: (path, JSON body).
type Posted = (String, Value);

/// A minimal Lambda Runtime API: hands out `events` one per `GET …/invocation/next` (request ids
/// `req-1`, `req-2`, …; once they run out, `next` never answers), and reports every POST.
struct FakeApi {
    addr: SocketAddr,
    posted: mpsc::UnboundedReceiver<Posted>,
}

impl FakeApi {
    async fn start(events: Vec<Value>) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, posted) = mpsc::unbounded_channel();
        let queue: EventQueue = Arc::new(Mutex::new(
            events
                .into_iter()
                .enumerate()
                .map(|(i, e)| (i + 1, e))
                .collect(),
        ));
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(serve(stream, Arc::clone(&queue), tx.clone()));
            }
        });
        FakeApi { addr, posted }
    }

    async fn next_post(&mut self) -> Posted {
        tokio::time::timeout(Duration::from_secs(30), self.posted.recv())
            .await
            .expect("the runtime posted nothing within 30 s")
            .expect("the fake API stopped")
    }
}

/// The events not handed out yet, numbered from 1.
type EventQueue = Arc<Mutex<VecDeque<(usize, Value)>>>;

async fn serve(stream: TcpStream, events: EventQueue, posted: mpsc::UnboundedSender<Posted>) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_owned());
        }
        let mut request_line = head[0].split(' ');
        let (method, path) = (
            request_line.next().unwrap().to_owned(),
            request_line.next().unwrap().to_owned(),
        );
        let header = |name: &str| {
            head[1..].iter().find_map(|h| {
                let (k, v) = h.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        if header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            stream
                .get_mut()
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .unwrap();
        }
        let length: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await.unwrap();

        let response = if method == "GET" && path.ends_with("/invocation/next") {
            let next = events.lock().unwrap().pop_front();
            let Some((n, event)) = next else {
                // No more events: hold the runtime here, as Lambda does between invocations.
                std::future::pending::<()>().await;
                return;
            };
            let body = event.to_string();
            let deadline = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
                + 60_000;
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                 Lambda-Runtime-Aws-Request-Id: req-{n}\r\n\
                 Lambda-Runtime-Deadline-Ms: {deadline}\r\n\
                 Lambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:123456789012:function:fn\r\n\
                 Lambda-Runtime-Trace-Id: Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
        } else {
            let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            posted.send((path, value)).unwrap();
            let reply = r#"{"status":"OK"}"#;
            format!(
                "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
                reply.len()
            )
        };
        stream
            .get_mut()
            .write_all(response.as_bytes())
            .await
            .unwrap();
    }
}

/// The agent's environment for a function (see `crates/agent/src/env.rs`).
fn lambda_env(api: SocketAddr, handler: &str) -> Vec<(String, String)> {
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
        ("AWS_LAMBDA_RUNTIME_API", api.to_string()),
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

/// Events for app.handler and what must come back for each.
fn echo_fail_print() -> Vec<Value> {
    vec![
        json!({"echo": {"hello": "world"}}),
        json!({"fail": "on purpose"}),
        json!({"print": "log-line-from-app"}),
    ]
}

/// Checks the three answers to [`echo_fail_print`], then stops the runtime and checks its output.
async fn expect_echo_fail_print(api: &mut FakeApi, child: tokio::process::Child) {
    let (path, body) = api.next_post().await;
    assert_eq!(
        path, "/2018-06-01/runtime/invocation/req-1/response",
        "{body}"
    );
    assert_eq!(
        body,
        json!({"echo": {"hello": "world"}, "memory": 256, "function": "fn", "request_id": "req-1"})
    );
    let (path, body) = api.next_post().await;
    assert_eq!(path, "/2018-06-01/runtime/invocation/req-2/error", "{body}");
    assert_eq!(body["errorType"], "HelloFailure", "{body}");
    assert_eq!(body["errorMessage"], "on purpose", "{body}");
    let (path, body) = api.next_post().await;
    assert_eq!(
        path, "/2018-06-01/runtime/invocation/req-3/response",
        "{body}"
    );
    assert_eq!(body, json!({"printed": "log-line-from-app"}));

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
    let run = |api: SocketAddr, handler: &str| {
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

    let mut api = FakeApi::start(echo_fail_print()).await;
    let child = run(api.addr, "app.handler");
    expect_echo_fail_print(&mut api, child).await;

    // A module that cannot be imported is reported as Lambda reports it.
    let mut api = FakeApi::start(vec![]).await;
    let mut child = run(api.addr, "bad_import.handler");
    let (path, body) = api.next_post().await;
    assert_eq!(path, "/2018-06-01/runtime/init/error", "{body}");
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
    let mut api = FakeApi::start(echo_fail_print()).await;
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
        .envs(lambda_env(api.addr, "app.handler"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    expect_echo_fail_print(&mut api, child).await;
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
