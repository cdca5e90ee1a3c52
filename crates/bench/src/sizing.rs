//! `ember bench sizing`: automatic resource sizing (issue 6) end to end. Starts a fresh server in
//! `auto` sizing mode, creates three Python functions whose needs are known (`over`: 1024 MB for
//! a ~60 MB, mostly sleeping handler; `under`: 128 MB for a handler that touches ~300 MB; `cpu`:
//! 512 MB and a 3 s timeout for a handler burning about one second of one core, which at
//! 512 / 1769 of a vCPU does not fit), invokes each one after another with Tail logs, and reads
//! every invocation's REPORT line (the container's Memory Size, Duration). It reports, per
//! function, before sizing (the invocations at the configured amount) against after (those at
//! the final amount): reserved GB-seconds per invocation, failures and duration; when the amount
//! changed and why; and checks the targets.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::invoke::{percentile, python_zip, recreate_with_timeout};
use crate::live::{self as bench_live, load_average, machine, nan_null, pass_fail, Server};
use ember_client::Client;

#[derive(Debug, clap::Args)]
pub struct SizingBenchArgs {
    /// Executions a sizing condition must hold for (the server's `--sizing-threshold`).
    #[arg(long, default_value_t = 5)]
    threshold: u32,
    /// Invocations of each function, one after another.
    #[arg(long, default_value_t = 30)]
    invocations: u32,
    /// CPU seconds, on one core of this host, that each invocation of `cpu` burns (the loop is
    /// timed on this host at start).
    #[arg(long, default_value_t = 1.0)]
    cpu_seconds: f64,
    /// Runtime software directory for the server, so awslambdaric is provisioned once (shared
    /// with `ember bench burst`).
    #[arg(long, default_value = "target/bench-runtimes")]
    runtime_dir: PathBuf,
    /// The functions' runtime [default: python3.11 if the host has it, else its newest
    /// python3.N].
    #[arg(long)]
    python_runtime: Option<String>,
    /// Where the server's log goes, as `server.log`.
    #[arg(long, default_value = "target/bench-sizing")]
    log_dir: PathBuf,
    /// Print the results as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Holds ~60 MB: a 55 MB buffer allocated at import with every page touched, plus the
/// interpreter's own; each invocation sleeps 100 ms (almost no CPU).
const PY_OVER: &str = r#""""Holds ~60 MB (a 55 MB buffer, every page touched, and the interpreter); sleeps 100 ms."""
import time

BUFFER = bytearray(55 << 20)
BUFFER[::4096] = b"\x01" * len(range(0, len(BUFFER), 4096))


def handler(event, context):
    time.sleep(0.1)
    return {"held_mb": len(BUFFER) >> 20}
"#;

/// Touches ~300 MB in every invocation.
const PY_UNDER: &str = r#""""Needs ~300 MB in every invocation (every page touched)."""


def handler(event, context):
    buffer = bytearray(300 << 20)
    buffer[::4096] = b"\x01" * len(range(0, len(buffer), 4096))
    return {"touched_mb": len(buffer) >> 20}
"#;

/// The CPU burner shared by the `cpu` function and the calibration on the host.
const PY_BURN: &str = r#"def burn(n):
    x = 0
    for i in range(n):
        x = (x * 31 + i) % 1000003
    return x
"#;

const PY_CPU_HANDLER: &str = r#"

def handler(event, context):
    return {"x": burn(event["iterations"])}
"#;

/// Times [`PY_BURN`] on the host: the CPU seconds of one turn, the fastest of three runs.
const PY_CALIBRATE: &str = r#"
import time

burn(100000)
best = None
for _ in range(3):
    t = time.process_time()
    burn(2000000)
    spent = time.process_time() - t
    best = spent if best is None else min(best, spent)
print(best / 2000000)
"#;

/// The error type of an invocation that timed out.
const TIMEOUT: &str = "Sandbox.Timedout";

/// The server's flags besides `--sizing-threshold`: sizing applies its decisions, and the
/// keep-alives outlast the run, so containers go only because their amount changed or they failed.
const SERVE_ARGS: &[&str] = &[
    "--sizing-mode",
    "auto",
    "--container-keep-alive",
    "600",
    "--vm-keep-alive",
    "600",
];

/// A function under test.
#[derive(Debug, Clone)]
struct Subject {
    name: &'static str,
    memory_mb: u32,
    timeout_s: u32,
    source: String,
    payload: Value,
    /// What it does, for the report.
    what: String,
}

pub async fn run(args: SizingBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=1000).contains(&args.threshold),
        "--threshold must be 1-1000"
    );
    anyhow::ensure!(
        args.invocations >= args.threshold + 5,
        "--invocations must be at least --threshold + 5 (the targets look that far)"
    );
    anyhow::ensure!(
        args.cpu_seconds.is_finite() && args.cpu_seconds > 0.0 && args.cpu_seconds < 60.0,
        "--cpu-seconds must be above 0 and below 60"
    );
    let runtime_dir = bench_live::absolute(&args.runtime_dir)?;
    let python =
        bench_live::provision(&runtime_dir, args.python_runtime.as_deref(), "sizing").await?;
    let turn_seconds = calibrate(&python.executable).await?;
    let iterations = (args.cpu_seconds / turn_seconds).round().max(1.0) as u64;
    eprintln!(
        "sizing: {} turns of the loop take {:.2} s of CPU on one core of this host",
        iterations, args.cpu_seconds
    );
    let subjects = subjects(iterations, args.cpu_seconds);

    let log = args.log_dir.join("server.log");
    let threshold = args.threshold.to_string();
    let mut serve_args = SERVE_ARGS.to_vec();
    serve_args.extend(["--sizing-threshold", threshold.as_str()]);
    let server = Server::start_this(&serve_args, &runtime_dir, &log).await?;
    let measured = measure(&server, &args, &python.runtime, &subjects).await;
    let stopped = server.stop().await;
    let (results, load) = measured?;
    stopped?;

    let targets = Targets::check(&results, args.threshold, args.invocations);
    let command = format!(
        "ember serve {} --sizing-threshold {}",
        SERVE_ARGS.join(" "),
        args.threshold
    );
    if args.json {
        let out = json!({
            "machine": machine().to_json(),
            "server": command,
            "server_log": log.display().to_string(),
            "runtime": python.runtime,
            "threshold": args.threshold,
            "invocations": args.invocations,
            "cpu_seconds": args.cpu_seconds,
            "cpu_iterations": iterations,
            "load_average_start": load.0,
            "load_average_end": load.1,
            "functions": results.iter().map(Measured::to_json).collect::<Vec<_>>(),
            "targets": targets.to_json(),
        });
        println!("{out}");
    } else {
        println!("Machine: {}", machine().describe());
        println!(
            "Server: {command} (log {}); {}; load average {} → {}",
            log.display(),
            python.runtime,
            load.0.map_or("?".to_owned(), |l| format!("{l:.2}")),
            load.1.map_or("?".to_owned(), |l| format!("{l:.2}")),
        );
        for s in &subjects {
            println!("  {}: {}", s.name, s.what);
        }
        println!(
            "Each function invoked {} times, one after another.",
            args.invocations
        );
        println!();
        print_table(&results);
        println!();
        for r in &results {
            print_details(r);
        }
        println!();
        targets.print(args.threshold);
    }
    Ok(())
}

/// The three functions; `cpu` burns `iterations` turns (`cpu_seconds` of one host core).
fn subjects(iterations: u64, cpu_seconds: f64) -> Vec<Subject> {
    vec![
        Subject {
            name: "over",
            memory_mb: 1024,
            timeout_s: 10,
            source: PY_OVER.to_owned(),
            payload: json!({}),
            what: "1024 MB; holds ~60 MB (55 MB buffer at import), sleeps 100 ms".to_owned(),
        },
        Subject {
            name: "under",
            memory_mb: 128,
            timeout_s: 10,
            source: PY_UNDER.to_owned(),
            payload: json!({}),
            what: "128 MB; touches 300 MB per invocation".to_owned(),
        },
        Subject {
            name: "cpu",
            memory_mb: 512,
            timeout_s: 3,
            source: format!("{PY_BURN}{PY_CPU_HANDLER}"),
            payload: json!({"iterations": iterations}),
            what: format!(
                "512 MB, timeout 3 s; burns {cpu_seconds:.2} s of one core per invocation \
                 ({:.1} s at 512/1769 of a vCPU)",
                cpu_seconds * 1769.0 / 512.0
            ),
        },
    ]
}

/// The CPU seconds one turn of [`PY_BURN`] takes on one core of this host.
async fn calibrate(python: &std::path::Path) -> anyhow::Result<f64> {
    let code = format!("{PY_BURN}{PY_CALIBRATE}");
    let out = tokio::process::Command::new(python)
        .args(["-c", &code])
        .output()
        .await
        .with_context(|| format!("cannot run {}", python.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "the calibration failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let seconds: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("the calibration printed no number")?;
    anyhow::ensure!(
        seconds.is_finite() && seconds > 0.0,
        "the calibration measured {seconds} s per turn"
    );
    Ok(seconds)
}

/// Creates the functions and invokes each `--invocations` times; the results, and the host's
/// load average before and after.
async fn measure(
    server: &Server,
    args: &SizingBenchArgs,
    runtime: &str,
    subjects: &[Subject],
) -> anyhow::Result<(Vec<Measured>, (Option<f64>, Option<f64>))> {
    let client = server.admin_client(bench_live::http_client(Duration::from_secs(120))?)?;
    for s in subjects {
        let zip = python_zip(&s.source)?;
        recreate_with_timeout(
            &client,
            s.name,
            runtime,
            "app.handler",
            &zip,
            s.memory_mb,
            s.timeout_s,
        )
        .await?;
    }
    let load_start = load_average();
    let mut runs = Vec::with_capacity(subjects.len());
    for s in subjects {
        eprintln!("sizing: {} ...", s.name);
        let payload = serde_json::to_vec(&s.payload)?;
        let mut invocations = Vec::with_capacity(args.invocations as usize);
        for n in 1..=args.invocations {
            invocations.push(invoke(&client, s.name, n, payload.clone()).await);
        }
        runs.push(invocations);
    }
    let load_end = load_average();
    // Execution records reach the store in 250 ms batches.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let recorded = recorded(server, &client, subjects).await?;
    let mut results = Vec::with_capacity(subjects.len());
    for ((s, invocations), recorded) in subjects.iter().zip(runs).zip(recorded) {
        let endpoint = sizing_endpoint(&client, s.name).await;
        results.push(Measured::of(s, invocations, recorded, endpoint));
    }
    Ok((results, (load_start, load_end)))
}

// ---- one invocation ---------------------------------------------------------------------------

/// What one invocation's answer and REPORT line said.
#[derive(Debug, Clone, Default, PartialEq)]
struct Invocation {
    /// 1-based.
    n: u32,
    /// REPORT's Memory Size: the container's amount.
    memory_mb: Option<u32>,
    max_memory_used_mb: Option<u32>,
    duration_ms: Option<f64>,
    init_ms: Option<f64>,
    /// The error type, if it failed (function error, or an HTTP error).
    error: Option<String>,
    start: Option<String>,
    wall_ms: f64,
    /// From the store's execution record: peak memory, CPU and throttled time.
    peak_mb: Option<u64>,
    cpu_ms: Option<f64>,
    throttled_ms: Option<f64>,
}

impl Invocation {
    fn failed(&self) -> bool {
        self.error.is_some()
    }

    fn timed_out(&self) -> bool {
        self.error.as_deref() == Some(TIMEOUT)
    }

    /// Memory Size / 1024 × Duration / 1000.
    fn gb_seconds(&self) -> Option<f64> {
        Some(f64::from(self.memory_mb?) / 1024.0 * self.duration_ms? / 1e3)
    }

    fn to_json(&self) -> Value {
        json!({"n": self.n, "memory_mb": self.memory_mb, "max_memory_used_mb": self.max_memory_used_mb,
               "duration_ms": self.duration_ms, "init_ms": self.init_ms, "error": self.error,
               "start": self.start, "wall_ms": self.wall_ms, "gb_seconds": self.gb_seconds(),
               "peak_mb": self.peak_mb, "cpu_ms": self.cpu_ms, "throttled_ms": self.throttled_ms})
    }
}

async fn invoke(client: &Client, name: &str, n: u32, payload: Vec<u8>) -> Invocation {
    let path = format!(
        "/2015-03-31/functions/{}/invocations",
        Client::segment(name)
    );
    let headers = [
        ("content-type", "application/json".to_owned()),
        ("x-amz-log-type", "Tail".to_owned()),
    ];
    let t = Instant::now();
    let sent = client.send(Method::POST, &path, &headers, payload).await;
    let mut inv = Invocation {
        n,
        wall_ms: t.elapsed().as_secs_f64() * 1e3,
        ..Invocation::default()
    };
    let reply = match sent {
        Ok(reply) => reply,
        Err(err) => {
            inv.error = Some(format!("{err:#}"));
            return inv;
        }
    };
    let header = |name: &str| {
        reply
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    inv.start = header("x-ember-start");
    if reply.status != 200 {
        let kind = header("x-amzn-errortype").unwrap_or_else(|| "Error".to_owned());
        inv.error = Some(format!("{kind} (HTTP {})", reply.status));
    } else if header("x-amz-function-error").is_some() {
        let error_type = serde_json::from_slice::<Value>(&reply.body)
            .ok()
            .and_then(|v| v.get("errorType")?.as_str().map(str::to_owned));
        inv.error = Some(error_type.unwrap_or_else(|| "Unhandled".to_owned()));
    }
    if let Some(log) = header("x-amz-log-result").and_then(|b64| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(b64).ok()
    }) {
        let report = Report::parse(&String::from_utf8_lossy(&log));
        inv.memory_mb = report.memory_mb;
        inv.max_memory_used_mb = report.max_memory_used_mb;
        inv.duration_ms = report.duration_ms;
        inv.init_ms = report.init_ms;
    }
    inv
}

/// The fields of a REPORT line the benchmark reads.
#[derive(Debug, Clone, Default, PartialEq)]
struct Report {
    duration_ms: Option<f64>,
    memory_mb: Option<u32>,
    max_memory_used_mb: Option<u32>,
    init_ms: Option<f64>,
}

impl Report {
    /// Reads the last REPORT line of `log` (tab-separated `Key: value unit` fields).
    fn parse(log: &str) -> Report {
        let mut report = Report::default();
        let Some(line) = log.lines().rev().find(|l| l.starts_with("REPORT ")) else {
            return report;
        };
        for field in line.split('\t') {
            let Some((key, value)) = field.split_once(": ") else {
                continue;
            };
            let number = value.split(' ').next().unwrap_or("");
            match key.trim() {
                "Duration" => report.duration_ms = number.parse().ok(),
                "Memory Size" => report.memory_mb = number.parse().ok(),
                "Max Memory Used" => report.max_memory_used_mb = number.parse().ok(),
                "Init Duration" => report.init_ms = number.parse().ok(),
                _ => {}
            }
        }
        report
    }
}

// ---- what the server recorded -----------------------------------------------------------------

/// A function's executions and sizing decisions, as the server's store holds them.
#[derive(Debug, Clone, Default)]
struct Recorded {
    executions: Vec<ember_store::ExecutionRecord>,
    decisions: Vec<ember_store::SizingEvent>,
}

/// Reads each subject's executions and decisions from the server's store (safe while it runs).
async fn recorded(
    server: &Server,
    client: &Client,
    subjects: &[Subject],
) -> anyhow::Result<Vec<Recorded>> {
    let store = ember_store::Store::open(server.data_dir())
        .await
        .context("cannot open the server's store")?;
    let mut all = Vec::with_capacity(subjects.len());
    for s in subjects {
        let arn = client
            .json(
                Method::GET,
                &format!(
                    "/2015-03-31/functions/{}/configuration",
                    Client::segment(s.name)
                ),
                None,
            )
            .await?
            .get("FunctionArn")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .context("GetFunctionConfiguration gave no FunctionArn")?;
        // arn:aws:lambda:REGION:ACCOUNT:function:NAME
        let account = arn
            .split(':')
            .nth(4)
            .with_context(|| format!("cannot read the account of {arn}"))?;
        let function = store
            .function(account, s.name)
            .await?
            .with_context(|| format!("the store has no function {}", s.name))?;
        let executions = store
            .recent_executions(
                account,
                s.name,
                &function.revision_id,
                s.memory_mb,
                ember_executor::sizing::HISTORY,
            )
            .await?;
        let decisions = store.sizing_events(account, s.name, 1000).await?;
        all.push(Recorded {
            executions,
            decisions,
        });
    }
    store.close().await;
    Ok(all)
}

/// `GET /ember/v1/functions/{name}/sizing`, if the server has it.
async fn sizing_endpoint(client: &Client, name: &str) -> Option<Value> {
    client
        .json(
            Method::GET,
            &format!("/ember/v1/functions/{}/sizing", Client::segment(name)),
            None,
        )
        .await
        .ok()
        .filter(Value::is_object)
}

// ---- results ----------------------------------------------------------------------------------

/// A run of invocations at one amount.
#[derive(Debug, Clone, PartialEq)]
struct Phase {
    memory_mb: u32,
    invocations: usize,
    failures: usize,
    gb_seconds_per_invocation: f64,
    duration_p50_ms: f64,
}

impl Phase {
    fn of(memory_mb: u32, invocations: &[Invocation]) -> Phase {
        let gb: Vec<f64> = invocations
            .iter()
            .filter_map(Invocation::gb_seconds)
            .collect();
        let durations: Vec<f64> = invocations.iter().filter_map(|i| i.duration_ms).collect();
        Phase {
            memory_mb,
            invocations: invocations.len(),
            failures: invocations.iter().filter(|i| i.failed()).count(),
            gb_seconds_per_invocation: if gb.is_empty() {
                f64::NAN
            } else {
                gb.iter().sum::<f64>() / gb.len() as f64
            },
            duration_p50_ms: percentile(&durations, 0.50),
        }
    }

    fn to_json(&self) -> Value {
        json!({"memory_mb": self.memory_mb, "invocations": self.invocations, "failures": self.failures,
               "gb_seconds_per_invocation": nan_null(self.gb_seconds_per_invocation),
               "duration_p50_ms": nan_null(self.duration_p50_ms)})
    }
}

/// A change of the amount between two invocations.
#[derive(Debug, Clone, PartialEq)]
struct Change {
    /// The first invocation at the new amount.
    at: u32,
    from_mb: u32,
    to_mb: u32,
}

/// One function's results.
#[derive(Debug, Clone)]
struct Measured {
    name: &'static str,
    configured_mb: u32,
    invocations: Vec<Invocation>,
    /// Each invocation's amount: its REPORT's, else the one before's (else the configured one).
    amounts: Vec<u32>,
    changes: Vec<Change>,
    before: Phase,
    after: Phase,
    final_effective_mb: u32,
    /// `sizing endpoint` or `REPORT`.
    effective_from: &'static str,
    decisions: Vec<ember_store::SizingEvent>,
    endpoint: Option<Value>,
}

impl Measured {
    fn of(
        subject: &Subject,
        mut invocations: Vec<Invocation>,
        recorded: Recorded,
        endpoint: Option<Value>,
    ) -> Measured {
        // Invocations ran one after another, so the n-th execution recorded is the n-th
        // invocation, when every invocation ran.
        if recorded.executions.len() == invocations.len() {
            for (inv, rec) in invocations.iter_mut().zip(&recorded.executions) {
                inv.peak_mb = Some(rec.peak_mb);
                inv.cpu_ms = Some(rec.cpu_ms);
                inv.throttled_ms = Some(rec.throttled_ms);
            }
        }
        let mut amounts = Vec::with_capacity(invocations.len());
        let mut last = subject.memory_mb;
        for inv in &invocations {
            last = inv.memory_mb.unwrap_or(last);
            amounts.push(last);
        }
        let changes: Vec<Change> = amounts
            .windows(2)
            .zip(&invocations[1..])
            .filter(|(w, _)| w[0] != w[1])
            .map(|(w, inv)| Change {
                at: inv.n,
                from_mb: w[0],
                to_mb: w[1],
            })
            .collect();
        let first_change = changes
            .first()
            .map_or(invocations.len(), |c| c.at as usize - 1);
        let last_change = changes.last().map_or(0, |c| c.at as usize - 1);
        let final_mb = amounts.last().copied().unwrap_or(subject.memory_mb);
        let before = Phase::of(
            amounts.first().copied().unwrap_or(subject.memory_mb),
            &invocations[..first_change],
        );
        let after = Phase::of(final_mb, &invocations[last_change..]);
        let from_endpoint = endpoint
            .as_ref()
            .and_then(|v| v.get("EffectiveMemoryMB")?.as_u64())
            .and_then(|mb| u32::try_from(mb).ok());
        Measured {
            name: subject.name,
            configured_mb: subject.memory_mb,
            invocations,
            amounts,
            changes,
            before,
            after,
            final_effective_mb: from_endpoint.unwrap_or(final_mb),
            effective_from: if from_endpoint.is_some() {
                "sizing endpoint"
            } else {
                "REPORT"
            },
            decisions: recorded.decisions,
            endpoint,
        }
    }

    /// Failures from the first change of the amount on.
    fn failures_after_first_change(&self) -> usize {
        self.failures_from(self.changes.first().map(|c| c.at))
    }

    /// Failures from the first shrink on (0 without a shrink).
    fn failures_after_first_shrink(&self) -> usize {
        self.failures_from(self.first_shrink())
    }

    fn first_shrink(&self) -> Option<u32> {
        self.changes
            .iter()
            .find(|c| c.to_mb < c.from_mb)
            .map(|c| c.at)
    }

    fn failures_from(&self, at: Option<u32>) -> usize {
        at.map_or(0, |at| {
            self.invocations
                .iter()
                .filter(|i| i.n >= at && i.failed())
                .count()
        })
    }

    /// The amount of invocation `n` (1-based).
    fn amount_at(&self, n: u32) -> Option<u32> {
        self.amounts.get(n.checked_sub(1)? as usize).copied()
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name, "configured_mb": self.configured_mb,
            "final_effective_mb": self.final_effective_mb, "effective_from": self.effective_from,
            "changes": self.changes.iter().map(|c| json!({"at": c.at, "from_mb": c.from_mb, "to_mb": c.to_mb})).collect::<Vec<_>>(),
            "before": self.before.to_json(), "after": self.after.to_json(),
            "failures_after_first_change": self.failures_after_first_change(),
            "failures_after_first_shrink": self.failures_after_first_shrink(),
            "decisions": self.decisions.iter().map(decision_json).collect::<Vec<_>>(),
            "sizing_endpoint": self.endpoint,
            "invocations": self.invocations.iter().map(Invocation::to_json).collect::<Vec<_>>(),
        })
    }
}

fn decision_json(e: &ember_store::SizingEvent) -> Value {
    json!({"from_mb": e.from_mb, "to_mb": e.to_mb, "direction": e.direction,
           "condition": e.condition, "applied": e.applied,
           "evidence": serde_json::from_str::<Value>(&e.evidence_json).unwrap_or(Value::Null)})
}

/// The targets of issue 6.
#[derive(Debug, Clone, PartialEq)]
struct Targets {
    /// `over`'s amount at invocation T + 5, and whether it is ≤ 40% of the configured one.
    over_at: Option<u32>,
    over_limit_mb: f64,
    over_ok: bool,
    /// `under`'s failures among invocations T + 1..R.
    under_late_failures: Option<usize>,
    under_ok: bool,
    /// `cpu`'s smallest amount, and its timeouts among the last 5 invocations.
    cpu_min_mb: Option<u32>,
    cpu_late_timeouts: Option<usize>,
    cpu_ok: bool,
    /// Per function: failures from its first shrink on.
    after_shrink: Vec<(&'static str, usize)>,
    shrink_ok: bool,
}

impl Targets {
    fn check(results: &[Measured], threshold: u32, invocations: u32) -> Targets {
        let find = |name: &str| results.iter().find(|r| r.name == name);
        let over = find("over");
        let over_at = over.and_then(|r| r.amount_at(threshold + 5));
        let over_limit_mb = over.map_or(f64::NAN, |r| 0.4 * f64::from(r.configured_mb));
        let under_late_failures = find("under").map(|r| {
            r.invocations
                .iter()
                .filter(|i| i.n > threshold && i.failed())
                .count()
        });
        let cpu = find("cpu");
        let cpu_min_mb = cpu.and_then(|r| r.amounts.iter().copied().min());
        let cpu_late_timeouts = cpu.map(|r| {
            r.invocations
                .iter()
                .filter(|i| i.n + 5 > invocations && i.timed_out())
                .count()
        });
        let after_shrink: Vec<_> = results
            .iter()
            .map(|r| (r.name, r.failures_after_first_shrink()))
            .collect();
        Targets {
            over_at,
            over_limit_mb,
            over_ok: over_at.is_some_and(|mb| f64::from(mb) <= over_limit_mb),
            under_late_failures,
            under_ok: under_late_failures == Some(0),
            cpu_min_mb,
            cpu_late_timeouts,
            cpu_ok: cpu.is_some_and(|r| cpu_min_mb.is_some_and(|mb| mb >= r.configured_mb))
                && cpu_late_timeouts == Some(0),
            shrink_ok: after_shrink.iter().all(|&(_, f)| f <= 1),
            after_shrink,
        }
    }

    fn pass(&self) -> bool {
        self.over_ok && self.under_ok && self.cpu_ok && self.shrink_ok
    }

    fn to_json(&self) -> Value {
        json!({
            "pass": self.pass(),
            "over": {"pass": self.over_ok, "memory_mb_at_threshold_plus_5": self.over_at,
                     "limit_mb": nan_null(self.over_limit_mb)},
            "under": {"pass": self.under_ok, "failures_after_threshold": self.under_late_failures},
            "cpu": {"pass": self.cpu_ok, "min_memory_mb": self.cpu_min_mb,
                    "timeouts_in_last_5": self.cpu_late_timeouts},
            "shrink": {"pass": self.shrink_ok,
                       "failures_after_first_shrink": self.after_shrink.iter().map(|(n, f)| json!({"function": n, "failures": f})).collect::<Vec<_>>()},
        })
    }

    fn print(&self, threshold: u32) {
        let show = |v: Option<String>| v.unwrap_or_else(|| "?".to_owned());
        println!(
            "Target: over's reserved memory falls by ≥ 60% within T + 5 = {} invocations \
             (Memory Size of invocation {} is {} MB, limit {:.0} MB): {}",
            threshold + 5,
            threshold + 5,
            show(self.over_at.map(|mb| mb.to_string())),
            self.over_limit_mb,
            pass_fail(self.over_ok)
        );
        println!(
            "Target: under stops failing after at most T = {threshold} invocations \
             (failures among invocations {}..: {}): {}",
            threshold + 1,
            show(self.under_late_failures.map(|f| f.to_string())),
            pass_fail(self.under_ok)
        );
        println!(
            "Target: cpu is not shrunk into timeouts (smallest Memory Size {} MB; timeouts in the \
             last 5 invocations: {}): {}",
            show(self.cpu_min_mb.map(|mb| mb.to_string())),
            show(self.cpu_late_timeouts.map(|t| t.to_string())),
            pass_fail(self.cpu_ok)
        );
        let shrinks: Vec<String> = self
            .after_shrink
            .iter()
            .map(|(n, f)| format!("{n} {f}"))
            .collect();
        println!(
            "Target: a shrink costs at most one failure per function (failures from the first \
             shrink on: {}): {}",
            shrinks.join(", "),
            pass_fail(self.shrink_ok)
        );
        println!("{}", pass_fail(self.pass()));
    }
}

fn print_table(results: &[Measured]) {
    println!(
        "| function | configured → final | amount changed at invocation | before: GB-s/inv, failures, p50 | after: GB-s/inv, failures, p50 | failures after 1st change |"
    );
    println!("|---|---|---|---|---|---:|");
    for r in results {
        let changes: Vec<String> = r
            .changes
            .iter()
            .map(|c| format!("#{}: {} → {} MB", c.at, c.from_mb, c.to_mb))
            .collect();
        let phase = |p: &Phase| {
            format!(
                "{} MB × {}: {:.4}, {}, {:.0} ms",
                p.memory_mb,
                p.invocations,
                p.gb_seconds_per_invocation,
                p.failures,
                p.duration_p50_ms
            )
        };
        println!(
            "| {} | {} → {} MB | {} | {} | {} | {} |",
            r.name,
            r.configured_mb,
            r.final_effective_mb,
            if changes.is_empty() {
                "never".to_owned()
            } else {
                changes.join("; ")
            },
            phase(&r.before),
            phase(&r.after),
            r.failures_after_first_change()
        );
    }
}

fn print_details(r: &Measured) {
    let decisions: Vec<String> = r
        .decisions
        .iter()
        .map(|e| {
            format!(
                "{} → {} MB {}{}",
                e.from_mb,
                e.to_mb,
                e.condition,
                if e.applied { "" } else { " (recommended)" }
            )
        })
        .collect();
    let peaks: Vec<String> = r
        .invocations
        .iter()
        .map(|i| {
            let mut s = format!(
                "{}:{}",
                i.n,
                i.memory_mb.map_or("?".to_owned(), |m| m.to_string())
            );
            if let Some(peak) = i.peak_mb.or(i.max_memory_used_mb.map(u64::from)) {
                s += &format!("/{peak}");
            }
            if let Some(d) = i.duration_ms {
                s += &format!("/{d:.0}ms");
            }
            if let Some(t) = i.throttled_ms.filter(|&t| t >= 0.5) {
                s += &format!("/throttled {t:.0}ms");
            }
            if let Some(e) = &i.error {
                s += &format!("/{e}");
            }
            s
        })
        .collect();
    let mut endpoint = String::new();
    if let Some(v) = &r.endpoint {
        if let Some(condition) = v.get("Condition").and_then(Value::as_str) {
            endpoint += &format!("; Condition {condition}");
        }
        if let Some(saved) = v.get("EstimatedGBSecondsSaved").and_then(Value::as_f64) {
            endpoint += &format!("; EstimatedGBSecondsSaved {saved:.3}");
        }
    }
    println!(
        "{}: final EffectiveMemoryMB {} (from the {}){endpoint}; decisions: {}",
        r.name,
        r.final_effective_mb,
        r.effective_from,
        if decisions.is_empty() {
            "none".to_owned()
        } else {
            decisions.join("; ")
        }
    );
    println!(
        "  invocation:MB/peak MB/duration[/CPU throttled][/error]: {}",
        peaks.join(" ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(n: u32, memory_mb: u32, duration_ms: f64, error: Option<&str>) -> Invocation {
        Invocation {
            n,
            memory_mb: Some(memory_mb),
            duration_ms: Some(duration_ms),
            error: error.map(str::to_owned),
            ..Invocation::default()
        }
    }

    fn result(name: &'static str, configured: u32, invocations: Vec<Invocation>) -> Measured {
        let subject = Subject {
            name,
            memory_mb: configured,
            timeout_s: 3,
            source: String::new(),
            payload: json!({}),
            what: String::new(),
        };
        Measured::of(&subject, invocations, Recorded::default(), None)
    }

    #[test]
    fn the_report_line_is_read_field_by_field() {
        let log = "START RequestId: r Version: $LATEST\nhello\nEND RequestId: r\n\
                   REPORT RequestId: r\tDuration: 101.25 ms\tBilled Duration: 102 ms\t\
                   Memory Size: 128 MB\tMax Memory Used: 71 MB\tInit Duration: 312.50 ms\t\n";
        assert_eq!(
            Report::parse(log),
            Report {
                duration_ms: Some(101.25),
                memory_mb: Some(128),
                max_memory_used_mb: Some(71),
                init_ms: Some(312.5),
            }
        );
        assert_eq!(Report::parse("no report here"), Report::default());
    }

    #[test]
    fn reserved_gb_seconds_are_memory_times_duration() {
        let i = inv(1, 512, 2000.0, None);
        assert_eq!(i.gb_seconds(), Some(1.0));
        let missing = Invocation {
            n: 1,
            ..Invocation::default()
        };
        assert_eq!(missing.gb_seconds(), None);
    }

    #[test]
    fn before_and_after_are_the_runs_at_the_first_and_final_amounts() {
        let mut invocations = vec![];
        for n in 1..=5 {
            invocations.push(inv(n, 1024, 100.0, None));
        }
        invocations.push(inv(6, 128, 400.0, Some("Runtime.OutOfMemory")));
        invocations.push(Invocation {
            n: 7,
            error: Some("ServiceException (HTTP 500)".into()),
            ..Invocation::default()
        });
        for n in 8..=10 {
            invocations.push(inv(n, 256, 100.0, None));
        }
        let r = result("over", 1024, invocations);
        assert_eq!(
            r.changes,
            [
                Change {
                    at: 6,
                    from_mb: 1024,
                    to_mb: 128
                },
                Change {
                    at: 8,
                    from_mb: 128,
                    to_mb: 256
                }
            ]
        );
        // Invocation 7 had no REPORT: it counts at the amount before it.
        assert_eq!(r.amount_at(7), Some(128));
        assert_eq!(r.before.invocations, 5);
        assert_eq!(r.before.gb_seconds_per_invocation, 0.1);
        assert_eq!((r.after.memory_mb, r.after.invocations), (256, 3));
        assert_eq!(r.final_effective_mb, 256);
        assert_eq!(r.effective_from, "REPORT");
        assert_eq!(r.failures_after_first_change(), 2);
        assert_eq!(r.failures_after_first_shrink(), 2);
    }

    #[test]
    fn the_targets_follow_the_issue() {
        let t = 2;
        let over = result(
            "over",
            1024,
            (1..=8)
                .map(|n| inv(n, if n <= 2 { 1024 } else { 128 }, 100.0, None))
                .collect(),
        );
        let under = result(
            "under",
            128,
            (1..=8)
                .map(|n| {
                    let oom = (n <= 2).then_some("Runtime.OutOfMemory");
                    inv(n, if n <= 2 { 128 } else { 256 }, 100.0, oom)
                })
                .collect(),
        );
        let cpu = result(
            "cpu",
            512,
            (1..=8)
                .map(|n| {
                    let timeout = (n <= 2).then_some(TIMEOUT);
                    inv(n, if n <= 2 { 512 } else { 1024 }, 1000.0, timeout)
                })
                .collect(),
        );
        let targets = Targets::check(&[over, under, cpu], t, 8);
        assert!(targets.pass(), "{targets:?}");
        assert_eq!(targets.over_at, Some(128));

        // under still failing at T + 1; cpu shrunk below its configured amount; over failing
        // twice after its shrink.
        let under = result(
            "under",
            128,
            (1..=8)
                .map(|n| inv(n, 128, 100.0, (n <= 3).then_some("Runtime.OutOfMemory")))
                .collect(),
        );
        let cpu = result(
            "cpu",
            512,
            (1..=8)
                .map(|n| inv(n, if n <= 2 { 512 } else { 448 }, 1000.0, None))
                .collect(),
        );
        let over_failing = result(
            "over",
            1024,
            (1..=8)
                .map(|n| {
                    let oom = (n == 3 || n == 4).then_some("Runtime.OutOfMemory");
                    inv(n, if n <= 2 { 1024 } else { 128 }, 100.0, oom)
                })
                .collect(),
        );
        let targets = Targets::check(&[over_failing, under, cpu], t, 8);
        assert!(targets.over_ok);
        assert!(!targets.under_ok);
        assert!(!targets.cpu_ok);
        assert!(!targets.shrink_ok);
        assert_eq!(targets.after_shrink[0], ("over", 2));

        // cpu timing out at the end fails too; over never shrinking fails.
        let cpu = result(
            "cpu",
            512,
            (1..=8)
                .map(|n| inv(n, 512, 3000.0, Some(TIMEOUT)))
                .collect(),
        );
        let still = result(
            "over",
            1024,
            (1..=8).map(|n| inv(n, 1024, 100.0, None)).collect(),
        );
        let targets = Targets::check(&[still, cpu], t, 8);
        assert!(!targets.over_ok && !targets.cpu_ok);
        assert_eq!(targets.cpu_late_timeouts, Some(5));
        assert_eq!(targets.under_late_failures, None);
    }
}
