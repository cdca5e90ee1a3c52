//! `ember bench invoke`: measures Invoke against a live server (or, with `--serve`, servers of
//! its own), over HTTP with SigV4 like any client: warm latency and throughput with many
//! concurrent clients, for a no-op `provided` function (Rust, `lambda_runtime`) and a no-op
//! Python one (awslambdaric), and the `provided` one's function URL (plain HTTP, its path form)
//! against issue 18's target, a warm URL request's p50 within 0.2 ms of a warm Invoke's, both
//! measured in the same run; the cold-start table (`cold`: per runtime and memory size, with
//! and without runtime templates) next to its floors measured in the same run (`floor`); and VM
//! creation, by booting VMs with the Linux driver directly (root only).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::Method;
use serde_json::{json, Value};

use ember_client::{Client, ClientArgs, ClientError};

use crate::backends::BackendArgs;
use crate::{cold, floor, live, stores};

#[derive(Debug, clap::Args)]
pub struct InvokeBenchArgs {
    /// Concurrent clients in the warm throughput phase (a one-client phase measures latency
    /// first).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds of each warm phase, per function (0 skips the warm phases).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Cold starts measured per runtime and memory size (and templates setting).
    #[arg(long, default_value_t = 20)]
    cold_samples: usize,
    /// The memory sizes of the cold-start table, in MB (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "128,1024")]
    cold_memory: Vec<u32>,
    /// The runtimes of the cold-start table (comma-separated): provided, python, node (Node.js
    /// is reported "not available" when the server accepts no nodejs* runtime).
    #[arg(long, value_delimiter = ',', default_value = "provided,python,node")]
    runtimes: Vec<String>,
    /// Samples of each floor (the interpreter importing its runtime client; the container's
    /// namespaces), measured in the same run (0 skips them).
    #[arg(long, default_value_t = 20)]
    floor_samples: usize,
    /// VMs booted to measure VM creation (0 skips it; it needs root).
    #[arg(long, default_value_t = 20)]
    vm_boots: usize,
    /// The no-op `provided` function's zip [default: target/functions/rust-hello.zip, built by
    /// tests/functions/rust-hello/build.sh].
    #[arg(long)]
    rust_zip: Option<PathBuf>,
    /// Memory of the warm phases' functions, in MB. CPU follows memory (1769 MB = 1 vCPU), so
    /// this sets how much CPU each container's runtime client gets.
    #[arg(long, default_value_t = 1024)]
    memory_mb: u32,
    /// The Python runtime to measure [default: python3.11; with --serve, python3.11 if the host
    /// has it, else its newest python3.N].
    #[arg(long)]
    python_runtime: Option<String>,
    /// Start servers of its own (a child `ember serve` on a temporary data dir, given the
    /// arguments after `--`) instead of measuring the one at --endpoint: one with
    /// `--runtime-templates false` and one with `true` when `ember serve` has the flag, else one.
    #[arg(long)]
    serve: bool,
    /// The runtime software directory, where the floors find the provisioned runtime clients
    /// [default: with --serve, target/bench-runtimes (provisioned there once); else
    /// $EMBER_RUNTIME_DIR, else <data-dir>/runtimes, as `ember serve` defaults it].
    #[arg(long)]
    runtime_dir: Option<PathBuf>,
    /// With --serve: where the servers' logs go (`.templates-on`/`.templates-off` appended when
    /// there are two).
    #[arg(long, default_value = "target/bench-invoke.log")]
    server_log: PathBuf,
    /// Print the results as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    backends: BackendArgs,
    /// With --backends: the open-loop arrival rates of the warm table, per second
    /// (comma-separated), below the machine's saturation [default: 200,1000].
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// With --backends: functions of the spread phases, each invoked once per
    /// --spread-intervals, open loop: a store that must re-read a function it has not read
    /// for a while shows there (0 skips them) [default: 8].
    #[arg(long)]
    spread_functions: Option<usize>,
    /// With --backends: the spread phases' intervals between two invocations of one function,
    /// in ms (comma-separated) [default: 750,1500].
    #[arg(long, value_delimiter = ',')]
    spread_intervals: Vec<f64>,
    /// With --backends: rounds of the warm phases, the backends alternating [default: 3].
    #[arg(long)]
    rounds: Option<usize>,
    /// With --backends: rounds of control-plane requests per backend, as `ember bench control`
    /// (0 skips them) [default: 100].
    #[arg(long)]
    control_samples: Option<usize>,
    /// With --serve: arguments for `ember serve`.
    #[arg(last = true)]
    serve_args: Vec<String>,
}

const PY_NOOP: &str = "def handler(event, context):\n    return {}\n";

/// The targets of issue 17, checked against the cold-start table.
const PYTHON_TEMPLATES_P50_MS: f64 = 15.0;
const NODE_TEMPLATES_P50_MS: f64 = 25.0;
const NODE_P50_MS: f64 = 80.0;
const PROVIDED_P50_MS: f64 = 5.0;
const SMALL_OVER_LARGE: f64 = 1.5;

pub async fn invoke(client_args: &ClientArgs, args: InvokeBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.serve || args.serve_args.is_empty(),
        "arguments after -- are for the servers that --serve starts"
    );
    if let Some(backends) = args.backends.chosen()? {
        return side_by_side(client_args, args, backends).await;
    }
    anyhow::ensure!(
        args.rates.is_empty()
            && args.rounds.is_none()
            && args.control_samples.is_none()
            && args.spread_functions.is_none()
            && args.spread_intervals.is_empty(),
        "--rates, --spread-functions, --spread-intervals, --rounds and --control-samples are for --backends"
    );
    let kinds: Vec<cold::Kind> = args
        .runtimes
        .iter()
        .map(|k| cold::Kind::parse(k.trim()))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("--runtimes: {e}"))?;
    let rust_zip = match &args.rust_zip {
        Some(path) => path.clone(),
        None => PathBuf::from("target/functions/rust-hello.zip"),
    };
    let rust_zip = std::fs::read(&rust_zip).with_context(|| {
        format!(
            "cannot read {} (build it with tests/functions/rust-hello/build.sh, or pass --rust-zip)",
            rust_zip.display()
        )
    })?;
    let runtime_dir = match (&args.runtime_dir, args.serve) {
        (Some(dir), _) => dir.clone(),
        (None, true) => PathBuf::from("target/bench-runtimes"),
        (None, false) => std::env::var_os(ember_runtimes::RUNTIME_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| client_args.data_dir().join("runtimes")),
    };
    let runtime_dir = live::absolute(&runtime_dir)?;
    let python_runtime = if args.serve {
        // Servers provision every Python in the background at start: done now, not during the
        // measurement.
        live::provision(&runtime_dir, args.python_runtime.as_deref(), "invoke")
            .await?
            .runtime
    } else {
        args.python_runtime
            .clone()
            .unwrap_or_else(|| "python3.11".to_owned())
    };

    // One pass per templates setting: each on a server of its own with --serve.
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let templates_offered = args.serve && serve_has_templates(&exe).await?;
    // A server without the flag has no templates: its pass is one without.
    let passes: Vec<Option<bool>> = match (args.serve, templates_offered) {
        (true, true) => vec![Some(false), Some(true)],
        (true, false) => vec![Some(false)],
        (false, _) => vec![None],
    };
    let mut results = serde_json::Map::new();
    let mut tables = Vec::new();
    let mut node_runtime = None;
    for (i, templates) in passes.iter().enumerate() {
        let (server, client, endpoint) = if args.serve {
            let mut serve_args: Vec<&str> = args.serve_args.iter().map(String::as_str).collect();
            let log = match templates.filter(|_| templates_offered) {
                Some(on) => {
                    serve_args.extend(["--runtime-templates", if on { "true" } else { "false" }]);
                    let suffix = if on { "templates-on" } else { "templates-off" };
                    args.server_log.with_extension(format!("{suffix}.log"))
                }
                None => args.server_log.clone(),
            };
            let server = live::Server::start_this(&serve_args, &runtime_dir, &log).await?;
            let client = server.admin_client(reqwest::Client::new())?;
            let endpoint = server.endpoint.clone();
            (Some(server), client, endpoint)
        } else {
            let endpoint = client_args.endpoint().trim_end_matches('/').to_owned();
            (None, Client::new(client_args)?, endpoint)
        };
        let client = Arc::new(client);
        let measured = async {
            if i == 0 && args.seconds > 0.0 {
                warm_phases(
                    &client,
                    &endpoint,
                    &args,
                    &python_runtime,
                    &rust_zip,
                    &mut results,
                )
                .await?;
            }
            let mut subjects = Vec::new();
            for kind in &kinds {
                subjects.push(match kind {
                    cold::Kind::Provided => cold::Subject::provided(rust_zip.clone()),
                    cold::Kind::Python => cold::Subject::python(&python_runtime)?,
                    cold::Kind::Node => {
                        let node = cold::Subject::node(&client).await?;
                        node_runtime.get_or_insert(node.runtime.clone());
                        node
                    }
                });
            }
            cold::measure(&client, &subjects, &args.cold_memory, args.cold_samples).await
        }
        .await;
        let stopped = match server {
            Some(server) => server.stop().await,
            None => Ok(()),
        };
        // The measurement's failure first: a server that then fails to stop is the lesser news.
        let rows = measured?;
        stopped?;
        tables.push((*templates, rows));
    }

    // The floors, in the same run.
    let mut floors = Vec::new();
    if args.floor_samples > 0 {
        if kinds.contains(&cold::Kind::Python) {
            floors.push((
                format!("{python_runtime}: the interpreter importing awslambdaric"),
                floor::python(&runtime_dir, &python_runtime, args.floor_samples),
            ));
        }
        if kinds.contains(&cold::Kind::Node) {
            let floor = match &node_runtime {
                Some(Ok(runtime)) => floor::node(&runtime_dir, runtime, args.floor_samples),
                Some(Err(_)) | None => floor::Floor::Unavailable("no Node.js runtime".into()),
            };
            let runtime = match &node_runtime {
                Some(Ok(runtime)) => runtime.as_str(),
                _ => "nodejs",
            };
            floors.push((
                format!("{runtime}: the interpreter importing aws-lambda-ric"),
                floor,
            ));
        }
        floors.push((
            "namespaces (mount, IPC, UTS, PID, cgroup, net) + fork".to_owned(),
            floor::namespaces(args.floor_samples),
        ));
    }
    let checks = targets(&tables);

    if !args.json {
        print_cold(
            &args,
            &tables,
            &floors,
            &checks,
            args.serve,
            templates_offered,
        );
    }
    results.insert(
        "cold_starts".into(),
        json!({
            "samples": args.cold_samples,
            "templates_available": if args.serve { json!(templates_offered) } else { Value::Null },
            "passes": tables.iter().map(|(templates, rows)| json!({
                "runtime_templates": templates,
                "rows": rows.iter().map(cold::Row::to_json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "floors": floors.iter().map(|(what, floor)| json!({"floor": what, "result": floor.to_json()})).collect::<Vec<_>>(),
            "targets": checks.iter().map(|c| json!({"target": c.what, "measured": c.measured, "pass": c.pass})).collect::<Vec<_>>(),
        }),
    );
    if args.vm_boots > 0 {
        let boots = vm_boots(args.vm_boots).await?;
        if !args.json {
            println!(
                "VM creation ({} boots): p50 {:.2} ms  p99 {:.2} ms",
                args.vm_boots,
                percentile(&boots, 0.50),
                percentile(&boots, 0.99)
            );
        }
        results.insert(
            "vm_creation".into(),
            json!({"boots": args.vm_boots, "p50_ms": percentile(&boots, 0.50), "p99_ms": percentile(&boots, 0.99)}),
        );
    }
    if args.json {
        println!("{}", Value::Object(results));
    }
    Ok(())
}

/// `--backends`: the `provided` function on each backend side by side (`stores`).
async fn side_by_side(
    client_args: &ClientArgs,
    args: InvokeBenchArgs,
    backends: Vec<crate::backends::Backend>,
) -> anyhow::Result<()> {
    let _ = client_args;
    anyhow::ensure!(
        args.serve,
        "--backends measures servers of its own: add --serve"
    );
    anyhow::ensure!(
        args.python_runtime.is_none(),
        "--python-runtime is not measured with --backends (the `provided` function is)"
    );
    let rust_zip = args
        .rust_zip
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/functions/rust-hello.zip"));
    let rust_zip = std::fs::read(&rust_zip).with_context(|| {
        format!(
            "cannot read {} (build it with tests/functions/rust-hello/build.sh, or pass --rust-zip)",
            rust_zip.display()
        )
    })?;
    let runtime_dir = live::absolute(
        args.runtime_dir
            .as_deref()
            .unwrap_or(std::path::Path::new("target/bench-runtimes")),
    )?;
    if let Some(parent) = args.server_log.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    stores::run(stores::Options {
        backends,
        backend_args: &args.backends,
        seconds: args.seconds,
        clients: args.clients,
        rates: if args.rates.is_empty() {
            vec![200.0, 1000.0]
        } else {
            args.rates.clone()
        },
        spread_functions: args.spread_functions.unwrap_or(8),
        spread_intervals_ms: if args.spread_intervals.is_empty() {
            vec![750.0, 1500.0]
        } else {
            args.spread_intervals.clone()
        },
        rounds: args.rounds.unwrap_or(3),
        cold_samples: args.cold_samples,
        cold_memory: args.cold_memory.clone(),
        control_samples: args.control_samples.unwrap_or(100),
        memory_mb: args.memory_mb,
        rust_zip,
        runtime_dir,
        server_log: args.server_log.clone(),
        serve_args: args.serve_args.clone(),
        json: args.json,
    })
    .await
}

/// Whether `ember serve --help` lists `--runtime-templates`.
async fn serve_has_templates(exe: &std::path::Path) -> anyhow::Result<bool> {
    let help = tokio::process::Command::new(exe)
        .args(["serve", "--help"])
        .output()
        .await
        .with_context(|| format!("cannot run {} serve --help", exe.display()))?;
    Ok(String::from_utf8_lossy(&help.stdout).contains("--runtime-templates"))
}

/// The warm phases of the no-op functions at `--memory-mb`, into `results`; for the `provided`
/// one, its function URL next to its Invoke.
async fn warm_phases(
    client: &Arc<Client>,
    endpoint: &str,
    args: &InvokeBenchArgs,
    python_runtime: &str,
    rust_zip: &[u8],
    results: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<()> {
    let py_zip = python_zip(PY_NOOP)?;
    let functions = [
        (
            "bench-noop-provided",
            "provided.al2023",
            "bootstrap",
            rust_zip,
        ),
        (
            "bench-noop-python",
            python_runtime,
            "app.handler",
            py_zip.as_slice(),
        ),
    ];
    for (name, runtime, handler, zip) in functions {
        recreate(client, name, runtime, handler, zip, args.memory_mb).await?;
        let invoke = Target::Invoke(name.to_owned());
        let latency = warm_phase(client, &invoke, 1, args.seconds).await?;
        let warm = warm_phase(client, &invoke, args.clients, args.seconds).await?;
        if !args.json {
            println!("{name} ({runtime}, {} MB)", args.memory_mb);
            println!(
                "  warm, 1 client:   p50 {:.3} ms  p99 {:.3} ms  {:.0} invokes/s  ({} invokes, {} errors){}",
                latency.p50_ms, latency.p99_ms, latency.per_second, latency.count, latency.errors,
                latency.cpu_text()
            );
            println!(
                "  warm, {} clients: p50 {:.3} ms  p99 {:.3} ms  {:.0} invokes/s  ({} invokes, {} errors){}",
                args.clients, warm.p50_ms, warm.p99_ms, warm.per_second, warm.count, warm.errors,
                warm.cpu_text()
            );
        }
        results.insert(
            name.to_owned(),
            json!({"runtime": runtime, "memory_mb": args.memory_mb, "warm_1_client": latency.to_json(),
                   "warm": warm.to_json(), "clients": args.clients}),
        );
        if runtime == "provided.al2023" {
            let url = public_url(client, endpoint, name).await?;
            let target = Target::Url {
                http: reqwest::Client::new(),
                url,
            };
            let url_latency = warm_phase(client, &target, 1, args.seconds).await?;
            let url_warm = warm_phase(client, &target, args.clients, args.seconds).await?;
            let over = url_latency.p50_ms - latency.p50_ms;
            let pass = over <= URL_OVER_INVOKE_P50_MS;
            if !args.json {
                println!("{name}'s function URL (AuthType NONE, the path form)");
                println!(
                    "  warm, 1 client:   p50 {:.3} ms  p99 {:.3} ms  {:.0} requests/s  ({} requests, {} errors){}",
                    url_latency.p50_ms, url_latency.p99_ms, url_latency.per_second,
                    url_latency.count, url_latency.errors, url_latency.cpu_text()
                );
                println!(
                    "  warm, {} clients: p50 {:.3} ms  p99 {:.3} ms  {:.0} requests/s  ({} requests, {} errors){}",
                    args.clients, url_warm.p50_ms, url_warm.p99_ms, url_warm.per_second,
                    url_warm.count, url_warm.errors, url_warm.cpu_text()
                );
                println!(
                    "  target: a warm URL request's p50 within {URL_OVER_INVOKE_P50_MS} ms of a warm Invoke's: {over:+.3} ms  {}",
                    if pass { "PASS" } else { "FAIL" }
                );
            }
            results.insert(
                "function_url".to_owned(),
                json!({"function": name, "warm_1_client": url_latency.to_json(),
                       "warm": url_warm.to_json(), "clients": args.clients,
                       "invoke_warm_1_client_p50_ms": latency.p50_ms,
                       "target": {"target": format!("p50 within {URL_OVER_INVOKE_P50_MS} ms of Invoke's"),
                                  "measured_ms": over, "pass": pass}}),
            );
        }
    }
    Ok(())
}

/// Issue 18's target: a warm function URL request's p50 at most this much over a warm Invoke's.
const URL_OVER_INVOKE_P50_MS: f64 = 0.2;

/// What a warm phase sends: a signed Invoke of a function, or a plain request to a URL.
#[derive(Clone)]
pub(crate) enum Target {
    Invoke(String),
    Url { http: reqwest::Client, url: String },
}

impl Target {
    async fn hit(&self, client: &Client) -> anyhow::Result<()> {
        match self {
            Target::Invoke(name) => call(client, name, false).await.map(drop),
            Target::Url { http, url } => {
                let response = http
                    .post(url)
                    .header("content-type", "application/json")
                    .body("{}")
                    .send()
                    .await?;
                let status = response.status();
                let body = response.bytes().await?;
                anyhow::ensure!(
                    status.is_success(),
                    "{url} answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
                Ok(())
            }
        }
    }
}

/// Gives function `name` a public function URL (`AuthType: NONE` and the policy statement that
/// opens it) and returns its path form on `endpoint`.
async fn public_url(client: &Client, endpoint: &str, name: &str) -> anyhow::Result<String> {
    let config = client
        .json(
            Method::POST,
            &format!("/2021-10-31/functions/{name}/url"),
            Some(json!({"AuthType": "NONE"})),
        )
        .await
        .with_context(|| format!("cannot create {name}'s function URL"))?;
    client
        .json(
            Method::POST,
            &format!("/2015-03-31/functions/{name}/policy"),
            Some(json!({"StatementId": "FunctionURLAllowPublicAccess",
                        "Action": "lambda:InvokeFunctionUrl", "Principal": "*",
                        "FunctionUrlAuthType": "NONE"})),
        )
        .await
        .with_context(|| format!("cannot open {name}'s function URL"))?;
    let url = config["FunctionUrl"].as_str().unwrap_or_default();
    let id = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.host_str()
                .and_then(|h| h.split('.').next().map(str::to_owned))
        })
        .with_context(|| format!("no URL id in {config}"))?;
    Ok(format!("{endpoint}/ember/v1/urls/{id}/"))
}

/// One target of issue 17 and how the run measured against it.
#[derive(Debug, Clone, PartialEq)]
struct Check {
    what: String,
    measured: String,
    pass: bool,
}

/// The targets the table can be checked against: each runtime's p50 against its target (with
/// templates, without, or whichever, as the target says), and Python at 128 MB within 1.5× of
/// 1024 MB. A pass whose templates setting is unknown (a running server) is checked only against
/// the targets that hold either way.
fn targets(tables: &[(Option<bool>, Vec<cold::Row>)]) -> Vec<Check> {
    let mut checks = Vec::new();
    for (templates, rows) in tables {
        let setting = match templates {
            Some(true) => "with templates",
            Some(false) => "without templates",
            None => "as the server runs",
        };
        for row in rows {
            let Some(p50) = row.p50() else { continue };
            let limit = match (row.kind, templates) {
                (cold::Kind::Provided, _) => Some(PROVIDED_P50_MS),
                (cold::Kind::Python, Some(true)) => Some(PYTHON_TEMPLATES_P50_MS),
                (cold::Kind::Node, Some(true)) => Some(NODE_TEMPLATES_P50_MS),
                (cold::Kind::Node, Some(false)) => Some(NODE_P50_MS),
                _ => None,
            };
            if let Some(limit) = limit {
                checks.push(Check {
                    what: format!(
                        "{} cold start p50 at {} MB {setting} <= {limit} ms",
                        row.kind.name(),
                        row.memory_mb
                    ),
                    measured: format!("{p50:.2} ms"),
                    pass: p50 <= limit,
                });
            }
        }
        let python = |mb| {
            rows.iter()
                .find(|r| r.kind == cold::Kind::Python && r.memory_mb == mb)
                .and_then(cold::Row::p50)
        };
        if let (Some(small), Some(large)) = (python(128), python(1024)) {
            checks.push(Check {
                what: format!(
                    "python cold start p50 at 128 MB within {SMALL_OVER_LARGE}x of 1024 MB {setting}"
                ),
                measured: format!("{:.2}x ({small:.2} / {large:.2} ms)", small / large),
                pass: small <= SMALL_OVER_LARGE * large,
            });
        }
    }
    checks
}

fn print_cold(
    args: &InvokeBenchArgs,
    tables: &[(Option<bool>, Vec<cold::Row>)],
    floors: &[(String, floor::Floor)],
    checks: &[Check],
    serve: bool,
    templates_offered: bool,
) {
    println!(
        "cold starts (a new container in a running VM, end to end over HTTP), {} samples each: p50 / p90 / max",
        args.cold_samples
    );
    if serve && !templates_offered {
        println!("  runtime templates are not available (`ember serve --help` has no --runtime-templates): measured without");
    }
    for (templates, rows) in tables {
        match templates {
            Some(true) => println!("  with runtime templates (--runtime-templates true):"),
            Some(false) if !templates_offered => println!("  without runtime templates:"),
            Some(false) => println!("  without runtime templates (--runtime-templates false):"),
            None if serve => println!("  on a server of its own:"),
            None => println!("  on the running server (its own templates setting):"),
        }
        for row in rows {
            match &row.result {
                Ok(m) => println!(
                    "    {:<16} {:>5} MB  client {}   Init Duration {}{}",
                    m.runtime,
                    row.memory_mb,
                    m.client.text(),
                    m.init.map_or_else(|| "-".to_owned(), |s| s.text()),
                    if m.left_out > 0 {
                        format!("   ({} not cold-container, left out)", m.left_out)
                    } else {
                        String::new()
                    }
                ),
                Err(why) => println!(
                    "    {:<16} {:>5} MB  not available: {why}",
                    row.kind.name(),
                    row.memory_mb
                ),
            }
        }
    }
    if !floors.is_empty() {
        println!(
            "  floors (same run, {} samples each): p50 / p90 / max",
            args.floor_samples
        );
        for (what, floor) in floors {
            println!("    {what}: {}", floor.text());
        }
    }
    if !checks.is_empty() {
        println!("  targets:");
        for check in checks {
            println!(
                "    {}  {}: {}",
                live::pass_fail(check.pass),
                check.what,
                check.measured
            );
        }
    }
}

/// A zip holding `source` as `app.py` (handler `app.handler`).
pub(crate) fn python_zip(source: &str) -> anyhow::Result<Vec<u8>> {
    zip_of("app.py", source)
}

/// A zip holding `source` as `file`.
pub(crate) fn zip_of(file: &str, source: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut buf);
    zip.start_file(file, zip::write::SimpleFileOptions::default())?;
    zip.write_all(source.as_bytes())?;
    zip.finish()?;
    Ok(buf.into_inner())
}

/// Deletes function `name` if it exists and creates it again with `zip` (timeout 10 s).
pub(crate) async fn recreate(
    client: &Client,
    name: &str,
    runtime: &str,
    handler: &str,
    zip: &[u8],
    memory_mb: u32,
) -> anyhow::Result<()> {
    recreate_with_timeout(client, name, runtime, handler, zip, memory_mb, 10).await
}

/// [`recreate`], with a timeout of `timeout_s` seconds.
pub(crate) async fn recreate_with_timeout(
    client: &Client,
    name: &str,
    runtime: &str,
    handler: &str,
    zip: &[u8],
    memory_mb: u32,
    timeout_s: u32,
) -> anyhow::Result<()> {
    let path = format!("/2015-03-31/functions/{name}");
    let _ = client.json(Method::DELETE, &path, None).await;
    create_function(client, name, runtime, handler, zip, memory_mb, timeout_s)
        .await
        .with_context(|| format!("cannot create {name}"))
}

/// CreateFunction of `name` with `zip`, under the benchmarks' role, with a timeout of
/// `timeout_s` seconds.
pub(crate) async fn create_function(
    client: &Client,
    name: &str,
    runtime: &str,
    handler: &str,
    zip: &[u8],
    memory_mb: u32,
    timeout_s: u32,
) -> Result<(), ClientError> {
    use base64::Engine as _;
    let body = json!({
        "FunctionName": name,
        "Runtime": runtime,
        "Role": "arn:aws:iam::123456789012:role/ember-bench",
        "Handler": handler,
        "MemorySize": memory_mb,
        "Timeout": timeout_s,
        "Code": {"ZipFile": base64::engine::general_purpose::STANDARD.encode(zip)},
    });
    client
        .json(Method::POST, "/2015-03-31/functions", Some(body))
        .await
        .map(drop)
}

async fn call(
    client: &Client,
    name: &str,
    tail: bool,
) -> anyhow::Result<reqwest::header::HeaderMap> {
    let path = format!("/2015-03-31/functions/{name}/invocations");
    let mut headers = vec![];
    if tail {
        headers.push(("x-amz-log-type", "Tail".to_owned()));
    }
    let reply = client
        .call(Method::POST, &path, &headers, b"{}".to_vec())
        .await?;
    anyhow::ensure!(
        reply.headers.get("x-amz-function-error").is_none(),
        "{name} failed: {}",
        String::from_utf8_lossy(&reply.body)
    );
    Ok(reply.headers)
}

pub(crate) struct Warm {
    pub(crate) count: usize,
    pub(crate) errors: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) per_second: f64,
    /// The whole machine's busy CPU time per invocation (every process: client, server, agents,
    /// runtimes, kernel), and the share of the machine's CPUs that was busy. `None` where
    /// `/proc/stat` cannot be read.
    cpu: Option<MachineCpu>,
}

impl Warm {
    fn cpu_text(&self) -> String {
        self.cpu.as_ref().map_or_else(String::new, |cpu| {
            format!(
                "\n                    machine CPU {:.3} ms per invoke, {:.0}% busy",
                cpu.busy_ms_per_invoke,
                cpu.busy_share * 100.0
            )
        })
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({"invokes": self.count, "errors": self.errors, "p50_ms": self.p50_ms,
               "p99_ms": self.p99_ms, "invokes_per_second": self.per_second,
               "machine_cpu_ms_per_invoke": self.cpu.as_ref().map(|c| c.busy_ms_per_invoke),
               "machine_busy_share": self.cpu.as_ref().map(|c| c.busy_share)})
    }
}

/// `clients` loops sending `target` for `seconds` (closed loop: each sends its next request when
/// its last is answered), after one warm-up request each.
pub(crate) async fn warm_phase(
    client: &Arc<Client>,
    target: &Target,
    clients: usize,
    seconds: f64,
) -> anyhow::Result<Warm> {
    // One warm container per client first, so the phase measures warm invokes only.
    let target = Arc::new(target.clone());
    let warmups: Vec<_> = (0..clients)
        .map(|_| {
            let client = client.clone();
            let target = target.clone();
            tokio::spawn(async move { target.hit(&client).await })
        })
        .collect();
    for w in warmups {
        w.await??;
    }
    let length = Duration::try_from_secs_f64(seconds).context("--seconds")?;
    let cpu_before = CpuTimes::now();
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let client = client.clone();
            let target = target.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                while started.elapsed() < length {
                    let t = Instant::now();
                    match target.hit(&client).await {
                        Ok(_) => latencies.push(t.elapsed().as_secs_f64() * 1e3),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, e) = task.await?;
        all.extend(latencies);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_before
        .zip(CpuTimes::now())
        .and_then(|(before, after)| MachineCpu::between(&before, &after, all.len()));
    Ok(Warm {
        count: all.len(),
        errors,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
        per_second: all.len() as f64 / elapsed,
        cpu,
    })
}

/// The machine's CPU time so far, from the `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    fn now() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// `cpu  user nice system idle iowait irq softirq steal guest guest_nice`: idle and iowait
    /// are not busy; guest time is already counted in user.
    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let [user, nice, system, idle, iowait, irq, softirq, steal] = ticks[..] else {
            return None;
        };
        let busy = user + nice + system + irq + softirq + steal;
        Some(Self {
            busy,
            total: busy + idle + iowait,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct MachineCpu {
    busy_ms_per_invoke: f64,
    busy_share: f64,
}

impl MachineCpu {
    fn between(before: &CpuTimes, after: &CpuTimes, invokes: usize) -> Option<Self> {
        let busy = after.busy.checked_sub(before.busy)?;
        let total = after.total.checked_sub(before.total)?;
        if invokes == 0 || total == 0 {
            return None;
        }
        let tick_ms = 1e3 / clock_ticks_per_second();
        Some(Self {
            busy_ms_per_invoke: busy as f64 * tick_ms / invokes as f64,
            busy_share: busy as f64 / total as f64,
        })
    }
}

fn clock_ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// Boots and stops `n` VMs one after another with the Linux driver; returns each boot's time.
async fn vm_boots(n: usize) -> anyhow::Result<Vec<f64>> {
    use ember_vm::linux::{default_agent_path, LinuxConfig, LinuxDriver};
    use ember_vm::{VmDriver, VmSpec};
    let state = tempfile::tempdir()?;
    let mut config = LinuxConfig::new(state.path(), default_agent_path()?);
    config.cgroup_prefix = format!("ember/bench-{}", std::process::id()).into();
    let driver = LinuxDriver::new(config).context("VM creation needs root")?;
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let spec = VmSpec {
            id: format!("bench-{i}"),
            memory_mb: 2048,
            vcpus: 2,
            pids_max: 16_448,
        };
        let t = Instant::now();
        let vm = driver.boot(spec).await?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        vm.shutdown().await?;
    }
    driver.cleanup_stale()?;
    Ok(times)
}

/// The `p` quantile (0–1) of `values`, nearest rank; NaN if there are none.
pub(crate) fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_cpu_counts_busy_ticks_not_idle_or_iowait() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let before = CpuTimes::parse("cpu  100 0 50 1000 10 0 5 0 0 0\ncpu0 1 2 3\n").unwrap();
        let after = CpuTimes::parse("cpu  160 0 80 1100 20 0 10 5 0 0\n").unwrap();
        assert_eq!(before.busy, 155);
        assert_eq!(after.busy, 255);
        let cpu = MachineCpu::between(&before, &after, 1000).unwrap();
        let tick_ms = 1e3 / clock_ticks_per_second();
        assert!((cpu.busy_ms_per_invoke - 100.0 * tick_ms / 1000.0).abs() < 1e-9);
        assert!((cpu.busy_share - 100.0 / 210.0).abs() < 1e-9);
    }

    #[test]
    fn machine_cpu_needs_invokes_and_a_proper_cpu_line() {
        let t = CpuTimes::parse("cpu  1 0 1 1 0 0 0 0\n").unwrap();
        assert_eq!(MachineCpu::between(&t, &t, 10), None, "no time passed");
        assert_eq!(MachineCpu::between(&t, &t, 0), None);
        assert_eq!(CpuTimes::parse("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(CpuTimes::parse("cpu  1 2 x 4 5 6 7 8\n"), None);
        assert_eq!(CpuTimes::parse("cpu  1 2 3\n"), None);
    }
}
