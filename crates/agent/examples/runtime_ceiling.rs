//! How fast can an unmodified runtime client go, with nothing of Ember's around it but the
//! Runtime API?
//!
//! Starts `--clients` runtime processes on this machine (no VM, no container, no cgroup), each
//! with a Runtime API of its own on 127.0.0.1, and drives them with invocations directly, from this
//! process, for `--seconds`: no HTTP client, no API server, no host-to-agent hop. The rate it
//! reports is the ceiling for warm invokes of that runtime on this machine; everything Ember adds
//! on the request path (`ember bench invoke`) comes out of what is left.
//!
//! ```text
//! cargo run --release -p ember-agent --example runtime_ceiling -- \
//!     --runtime-dir target/bench-runtimes/python3.11 --clients 16 --seconds 8
//! ```
//!
//! `--runtime-dir` is a directory Ember provisioned (`ember-runtime.json` names its Python), or
//! `--bootstrap PATH` runs any executable instead (a `provided` function's `bootstrap`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use ember_agent::runtime_api::{RuntimeApi, RuntimeApiServer};
use ember_protocol::{Invocation, InvokeOutcome};
use tokio::process::{Child, Command};

const PY_NOOP: &str = "def handler(event, context):\n    return {}\n";

/// What runs in each runtime process.
enum Runtime {
    /// A runtime directory Ember provisioned: awslambdaric under its Python, serving a no-op.
    Provisioned(PathBuf),
    /// Any executable, such as a `provided` function's `bootstrap`.
    Bootstrap(PathBuf),
}

struct Args {
    runtime: Runtime,
    clients: usize,
    seconds: f64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut runtime = None;
    let mut clients = 16;
    let mut seconds = 8.0;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--runtime-dir" if runtime.is_none() => {
                runtime = Some(Runtime::Provisioned(value.into()));
            }
            "--bootstrap" if runtime.is_none() => runtime = Some(Runtime::Bootstrap(value.into())),
            "--clients" => clients = value.parse().context("--clients")?,
            "--seconds" => seconds = value.parse().context("--seconds")?,
            _ => bail!("unexpected flag {flag}"),
        }
    }
    let Some(runtime) = runtime else {
        bail!("give one of --runtime-dir DIR or --bootstrap PATH");
    };
    Ok(Args {
        runtime,
        clients,
        seconds,
    })
}

/// How to start one runtime client: read (and the no-op function written) once, for all.
enum Launch {
    Bootstrap(PathBuf),
    /// awslambdaric under `python`, with `pythonpath` finding the function and the client.
    Python {
        python: String,
        pythonpath: String,
    },
}

impl Launch {
    fn prepare(runtime: &Runtime, task: &std::path::Path) -> anyhow::Result<Self> {
        let dir = match runtime {
            Runtime::Bootstrap(bootstrap) => return Ok(Self::Bootstrap(bootstrap.clone())),
            Runtime::Provisioned(dir) => dir,
        };
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join("ember-runtime.json")).context("reading ember-runtime.json")?,
        )?;
        let python = manifest["python"]
            .as_str()
            .context("ember-runtime.json names no python")?;
        std::fs::write(task.join("app.py"), PY_NOOP)?;
        Ok(Self::Python {
            python: python.to_owned(),
            pythonpath: format!("{}:{}", task.display(), dir.display()),
        })
    }

    fn command(&self) -> Command {
        match self {
            Self::Bootstrap(bootstrap) => Command::new(bootstrap),
            Self::Python { python, pythonpath } => {
                let mut command = Command::new(python);
                command
                    .args(["-m", "awslambdaric", "app.handler"])
                    .env("PYTHONPATH", pythonpath)
                    .env("_HANDLER", "app.handler");
                command
            }
        }
    }
}

fn invocation(n: u64) -> Invocation {
    let deadline_ms = SystemTime::now()
        .checked_add(Duration::from_secs(30))
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    Invocation {
        request_id: format!("ceiling-{n}"),
        payload: Bytes::from_static(b"{}"),
        deadline_ms,
        invoked_function_arn: "arn:aws:lambda:us-east-1:000000000000:function:ceiling".into(),
        trace_id: Some("Root=1-00000000-000000000000000000000000;Sampled=0".into()),
        client_context: None,
        cognito_identity: None,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let task = tempfile::tempdir()?;
    let launch = Launch::prepare(&args.runtime, task.path())?;
    let mut servers = Vec::new();
    let mut children: Vec<Child> = Vec::new();
    for i in 0..args.clients {
        let server = RuntimeApiServer::bind(RuntimeApi::new(format!("ceiling-{i}"))).await?;
        let mut command = launch.command();
        command
            .env("AWS_LAMBDA_RUNTIME_API", server.runtime_api_address())
            .env("LAMBDA_TASK_ROOT", task.path())
            .env("AWS_LAMBDA_FUNCTION_NAME", "ceiling")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_REGION", "us-east-1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        children.push(command.spawn().context("starting the runtime client")?);
        servers.push(server);
    }

    // One invocation each first: every runtime is initialized before the clock starts.
    for (i, server) in servers.iter().enumerate() {
        let outcome = server.api().invoke(invocation(i as u64)).await;
        if !matches!(outcome, InvokeOutcome::Ok { .. }) {
            bail!("runtime {i} did not answer its first invocation: {outcome:?}");
        }
    }

    let length = Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let loops = servers.iter().enumerate().map(|(i, server)| {
        let api = server.api().clone();
        async move {
            let mut done = 0u64;
            while started.elapsed() < length {
                let n = (i as u64) << 32 | done;
                match api.invoke(invocation(n)).await {
                    InvokeOutcome::Ok { .. } => done += 1,
                    other => anyhow::bail!("runtime {i} failed: {other:?}"),
                }
            }
            Ok(done)
        }
    });
    let counts = futures_util::future::try_join_all(loops).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let total: u64 = counts.iter().sum();
    println!(
        "{} runtime clients, {:.1} s: {} invocations, {:.0} invokes/s",
        args.clients,
        elapsed,
        total,
        total as f64 / elapsed
    );
    for server in servers {
        server.shutdown().await;
    }
    drop(children);
    Ok(())
}
