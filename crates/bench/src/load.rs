//! `ember bench load`: holds an open-loop load on one warm function at a fixed arrival rate for a
//! while, and reports its latency, errors and the resources the server and its VMs' agents hold
//! at the start, middle and end. Request `i` is due at `i / rate` seconds; it is sent then (or as
//! soon as one of the `--clients` in-flight slots frees up), never skipped, and its latency is
//! measured from when it was due, so a stall shows in the latency of every request it delays
//! (no coordinated omission).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::invoke::{python_zip, recreate};
use crate::live::{self as bench_live, load_average, machine, nan_null, pass_fail, Server};
use ember_client::{credentials, Client, ClientArgs};

/// The function under load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadFunction {
    /// The Rust `lambda_runtime` test function (`provided.al2023`), answering `{}` at once.
    Native,
    /// A no-op Python handler run by awslambdaric.
    Python,
}

impl LoadFunction {
    fn name(self) -> &'static str {
        match self {
            LoadFunction::Native => "native",
            LoadFunction::Python => "python",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct LoadBenchArgs {
    /// Requests per second, open loop: request i is due i / R seconds after the start.
    #[arg(long)]
    rate: f64,
    /// Seconds the load lasts.
    #[arg(long)]
    seconds: f64,
    /// The function: `native` (the Rust test function) or `python` (a no-op handler).
    #[arg(long, value_enum, default_value_t = LoadFunction::Native)]
    function: LoadFunction,
    /// Requests in flight at most (each on a connection of its own). A request due while all
    /// are busy waits for one, and the wait counts in its latency.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds of the same load before the measured run, not measured (containers start).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Memory of the function, in MB (CPU follows: 1769 MB = 1 vCPU).
    #[arg(long, default_value_t = 1024)]
    memory_mb: u32,
    /// The native function's zip.
    #[arg(long, default_value = "target/functions/rust-hello.zip")]
    rust_zip: PathBuf,
    /// The Python runtime [default: python3.11; with --serve, python3.11 if the host has it,
    /// else its newest python3.N].
    #[arg(long)]
    python_runtime: Option<String>,
    /// Start a server of its own (a child `ember serve` on a temporary data dir), given the
    /// arguments after `--` (e.g. `-- --scheduling other`), instead of loading the one at
    /// --endpoint.
    #[arg(long)]
    serve: bool,
    /// With --serve: the runtime software directory (awslambdaric is provisioned there once).
    #[arg(long, default_value = "target/bench-runtimes")]
    runtime_dir: PathBuf,
    /// With --serve: where the server's log goes.
    #[arg(long, default_value = "target/bench-load.log")]
    server_log: PathBuf,
    /// The server's process id, whose resources are sampled [default: the pid in the data
    /// dir's `ember.lock`; with --serve, the child's].
    #[arg(long)]
    server_pid: Option<i32>,
    /// Print the results as one JSON object.
    #[arg(long)]
    json: bool,
    /// With --serve: arguments for `ember serve`.
    #[arg(last = true)]
    serve_args: Vec<String>,
}

/// A request that has not been answered after this long counts as an error (`ClientTimeout`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Latencies are kept in µs, from 1 µs to an hour, to 3 significant digits.
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;

const PY_NOOP: &str = "def handler(event, context):\n    return {}\n";

pub async fn run(client_args: &ClientArgs, args: LoadBenchArgs) -> anyhow::Result<()> {
    let schedule = Schedule::new(args.rate, args.seconds).context("--rate and --seconds")?;
    let warmup = if args.warmup == 0.0 {
        None
    } else {
        Some(Schedule::new(args.rate, args.warmup).context("--warmup")?)
    };
    anyhow::ensure!(args.clients >= 1, "--clients must be at least 1");
    anyhow::ensure!(
        args.serve || args.serve_args.is_empty(),
        "arguments after -- are for the server that --serve starts"
    );
    let (zip, runtime, handler) = match args.function {
        LoadFunction::Native => (
            std::fs::read(&args.rust_zip).with_context(|| {
                format!(
                    "cannot read {} (build it with tests/functions/rust-hello/build.sh, or pass --rust-zip)",
                    args.rust_zip.display()
                )
            })?,
            "provided.al2023".to_owned(),
            "bootstrap",
        ),
        LoadFunction::Python => (python_zip(PY_NOOP)?, String::new(), "app.handler"),
    };

    // The server: a child of ours, or the one at --endpoint.
    let (server, client, runtime, pid) = if args.serve {
        let runtime_dir = bench_live::absolute(&args.runtime_dir)?;
        // Servers provision every Python in the background at start: do it now, not during
        // the measurement.
        let provisioned =
            bench_live::provision(&runtime_dir, args.python_runtime.as_deref(), "load").await;
        let runtime = match (args.function, provisioned) {
            (LoadFunction::Python, provisioned) => provisioned?.runtime,
            (LoadFunction::Native, Err(err)) => {
                eprintln!("load: warning: {err:#}");
                runtime
            }
            (LoadFunction::Native, Ok(_)) => runtime,
        };
        let serve_args: Vec<&str> = args.serve_args.iter().map(String::as_str).collect();
        let server = Server::start_this(&serve_args, &runtime_dir, &args.server_log).await?;
        let client = server.admin_client(http_client(args.clients)?)?;
        let pid = match args.server_pid {
            Some(pid) => Some(pid),
            None => server.pid().and_then(|p| i32::try_from(p).ok()),
        };
        (Some(server), client, runtime, pid)
    } else {
        let keys = credentials::find(client_args.data_dir())?;
        let client = Client::with_keys(
            http_client(args.clients)?,
            client_args.endpoint(),
            keys,
            client_args.region(),
        )?;
        let runtime = match args.function {
            LoadFunction::Native => runtime,
            LoadFunction::Python => args
                .python_runtime
                .clone()
                .unwrap_or_else(|| "python3.11".to_owned()),
        };
        let pid = args
            .server_pid
            .or_else(|| server_pid_in(Path::new(PROC), client_args.data_dir()));
        if pid.is_none() {
            eprintln!(
                "load: warning: no server pid in {} (pass --server-pid): its resources are not sampled",
                client_args.data_dir().join("ember.lock").display()
            );
        }
        (None, client, runtime, pid)
    };

    let measured = measure(
        client, &args, &runtime, handler, &zip, schedule, warmup, pid,
    )
    .await;
    let endpoint = match &server {
        Some(s) => s.endpoint.clone(),
        None => client_args.endpoint().to_owned(),
    };
    let stopped = match server {
        Some(server) => server.stop().await,
        None => Ok(()),
    };
    // The measurement's failure first: a server that then fails to stop is the lesser news.
    let report = measured?;
    stopped?;
    let context = RunInfo {
        function: args.function,
        runtime: &runtime,
        memory_mb: args.memory_mb,
        clients: args.clients,
        warmup_seconds: warmup.map_or(0.0, |w| w.length().as_secs_f64()),
        endpoint: &endpoint,
        started_server: args.serve,
        serve_args: &args.serve_args,
        server_pid: pid,
    };
    if args.json {
        println!("{}", report.to_json(&context));
    } else {
        print!("{}", report.to_text(&context));
    }
    Ok(())
}

/// A connection pool that keeps one idle connection per client.
fn http_client(clients: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .context("cannot build the HTTP client")
}

/// Creates the function, warms it up with the same load, then runs and samples the measured load.
#[allow(clippy::too_many_arguments)] // One call site; a struct would only rename them.
async fn measure(
    client: Client,
    args: &LoadBenchArgs,
    runtime: &str,
    handler: &str,
    zip: &[u8],
    schedule: Schedule,
    warmup: Option<Schedule>,
    pid: Option<i32>,
) -> anyhow::Result<Report> {
    let name = format!("bench-load-{}", args.function.name());
    recreate(&client, &name, runtime, handler, zip, args.memory_mb).await?;
    let client = Arc::new(client);
    let path: Arc<str> = format!("/2015-03-31/functions/{name}/invocations").into();
    // One invocation first: a function that cannot run fails the benchmark at once.
    match invoke_once(&client, &path).await {
        Ok(()) => {}
        Err(failure) => anyhow::bail!(
            "{name} does not answer: {}: {}",
            failure.kind,
            failure.detail
        ),
    }
    let request = {
        let client = client.clone();
        let path = path.clone();
        move || {
            let client = client.clone();
            let path = path.clone();
            async move { invoke_once(&client, &path).await }
        }
    };
    if let Some(warmup) = warmup {
        eprintln!(
            "load: warming up for {:.0} s at {}/s",
            warmup.length().as_secs_f64(),
            warmup.rate
        );
        let tally = Arc::new(Mutex::new(Tally::new()?));
        let (clients, request) = (args.clients, request.clone());
        let handle = Handle::current();
        tokio::task::spawn_blocking(move || {
            dispatch(&handle, warmup, Instant::now(), clients, &tally, request)
        })
        .await
        .context("the warm-up's dispatcher failed")?;
    }

    eprintln!(
        "load: {}/s for {:.0} s",
        schedule.rate,
        schedule.length().as_secs_f64()
    );
    let start_sample = pid.map(|pid| sample(Path::new(PROC), pid));
    let tally = Arc::new(Mutex::new(Tally::new()?));
    let start = Instant::now() + Duration::from_millis(10);
    let handle = Handle::current();
    let dispatcher = {
        let (clients, tally) = (args.clients, tally.clone());
        tokio::task::spawn_blocking(move || {
            dispatch(&handle, schedule, start, clients, &tally, request)
        })
    };
    tokio::time::sleep_until((start + schedule.length() / 2).into()).await;
    let middle_sample = pid.map(|pid| sample(Path::new(PROC), pid));
    dispatcher.await.context("the dispatcher failed")?;
    let end_sample = pid.map(|pid| sample(Path::new(PROC), pid));
    let tally = std::mem::replace(
        &mut *tally.lock().unwrap_or_else(PoisonError::into_inner),
        Tally::new()?,
    );
    Ok(Report {
        schedule,
        elapsed: tally
            .last_done
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(start)),
        tally,
        samples: [start_sample, middle_sample, end_sample],
        load_average: load_average(),
    })
}

/// Why a request failed: its kind (the AWS error type, `FunctionError.Unhandled`, `Transport`,
/// `ClientTimeout`) and one example's details.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    kind: String,
    detail: String,
}

/// Invokes the function once with `{}`.
async fn invoke_once(client: &Client, path: &str) -> Result<(), Failure> {
    let sent = client.send(Method::POST, path, &[], b"{}".to_vec());
    match tokio::time::timeout(REQUEST_TIMEOUT, sent).await {
        Err(_) => Err(Failure {
            kind: "ClientTimeout".into(),
            detail: format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
        }),
        Ok(Err(err)) => Err(Failure {
            kind: "Transport".into(),
            detail: format!("{:#}", anyhow::Error::from(err)),
        }),
        Ok(Ok(reply)) => {
            let header = |name: &str| reply.headers.get(name).and_then(|v| v.to_str().ok());
            match error_kind(
                reply.status,
                header("x-amzn-errortype"),
                header("x-amz-function-error"),
            ) {
                None => Ok(()),
                Some(kind) => Err(Failure {
                    kind,
                    detail: String::from_utf8_lossy(&reply.body)
                        .chars()
                        .take(300)
                        .collect(),
                }),
            }
        }
    }
}

/// The kind of error an answer is, if it is one: a non-2xx status by its AWS error type (its
/// status if it has none), a function error by its type.
fn error_kind(
    status: u16,
    error_type: Option<&str>,
    function_error: Option<&str>,
) -> Option<String> {
    if !(200..300).contains(&status) {
        // AWS sends `Type:detail` in some error-type headers; the part before `:` names it.
        return Some(match error_type {
            Some(t) if !t.is_empty() => t.split(':').next().unwrap_or(t).to_owned(),
            _ => format!("HTTP {status}"),
        });
    }
    function_error.map(|f| format!("FunctionError.{f}"))
}

/// What one open-loop run of a function came to, for the backends' side-by-side table (`ember
/// bench invoke --backends`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct OpenLoop {
    /// The arrival rate asked for, per second.
    pub(crate) rate: f64,
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    /// Latency from each request's due time, of the successful ones.
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    /// Answers per second over the run.
    pub(crate) achieved: f64,
}

/// Invokes `functions` with `{}` in turn (request `i` the function `i % len`) at `rate` per
/// second in all for `seconds`, open loop, at most `clients` in flight (as `ember bench load`
/// does, without its warm-up or samples).
pub(crate) async fn open_loop(
    client: Arc<Client>,
    functions: &[String],
    rate: f64,
    seconds: f64,
    clients: usize,
) -> anyhow::Result<OpenLoop> {
    let schedule = Schedule::new(rate, seconds)?;
    anyhow::ensure!(clients >= 1, "at least one client");
    anyhow::ensure!(!functions.is_empty(), "at least one function");
    let paths: Arc<[Arc<str>]> = functions
        .iter()
        .map(|f| format!("/2015-03-31/functions/{f}/invocations").into())
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let request = move || {
        let client = client.clone();
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = paths[i % paths.len()].clone();
        async move { invoke_once(&client, &path).await }
    };
    let tally = Arc::new(Mutex::new(Tally::new()?));
    let start = Instant::now() + Duration::from_millis(10);
    let handle = Handle::current();
    {
        let tally = tally.clone();
        tokio::task::spawn_blocking(move || {
            dispatch(&handle, schedule, start, clients, &tally, request)
        })
        .await
        .context("the dispatcher failed")?;
    }
    let t = tally.lock().unwrap_or_else(PoisonError::into_inner);
    let elapsed = t
        .last_done
        .map_or(Duration::ZERO, |d| d.saturating_duration_since(start))
        .as_secs_f64();
    Ok(OpenLoop {
        rate,
        ok: t.ok,
        errors: t.error_count(),
        p50_ms: quantile_ms(&t.latency, 0.50),
        p99_ms: quantile_ms(&t.latency, 0.99),
        max_ms: quantile_ms(&t.latency, 1.0),
        achieved: if elapsed > 0.0 {
            t.answered() as f64 / elapsed
        } else {
            f64::NAN
        },
    })
}

// ---- the schedule and the dispatcher ----------------------------------------------------------

/// When requests are due: `count` of them, request `i` at `i / rate` seconds from the start.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Schedule {
    rate: f64,
    count: u64,
}

impl Schedule {
    fn new(rate: f64, seconds: f64) -> anyhow::Result<Schedule> {
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "the rate must be a positive number of requests per second"
        );
        anyhow::ensure!(
            seconds.is_finite() && seconds > 0.0,
            "the length must be a positive number of seconds"
        );
        let count = (rate * seconds).round();
        anyhow::ensure!(
            (1.0..=1e9).contains(&count),
            "{rate}/s for {seconds} s is {count} requests: at least 1 and at most 10^9"
        );
        Ok(Schedule {
            rate,
            count: count as u64,
        })
    }

    /// When request `i` is due, after the start.
    fn due(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// The schedule's length: `count` intervals of `1 / rate`.
    fn length(&self) -> Duration {
        Duration::from_secs_f64(self.count as f64 / self.rate)
    }
}

/// What the requests of a run came to.
#[derive(Debug)]
struct Tally {
    /// Successful requests' latencies from when they were due to their answer, in µs.
    latency: Histogram<u64>,
    /// How late each request was sent (the client's own lag, waiting for a slot included), in
    /// µs.
    lag: Histogram<u64>,
    /// Requests that found every client busy when they were due, and waited for one.
    waited: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    /// The first error of each kind, in detail.
    examples: BTreeMap<String, String>,
    last_done: Option<Instant>,
}

impl Tally {
    fn new() -> anyhow::Result<Tally> {
        let histogram = || {
            Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3)
                .context("cannot make a latency histogram")
        };
        Ok(Tally {
            latency: histogram()?,
            lag: histogram()?,
            waited: 0,
            ok: 0,
            errors: BTreeMap::new(),
            examples: BTreeMap::new(),
            last_done: None,
        })
    }

    fn record(&mut self, due: Instant, sent: Instant, done: Instant, outcome: Result<(), Failure>) {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.lag
            .saturating_record(micros(sent.saturating_duration_since(due)));
        match outcome {
            Ok(()) => {
                self.ok += 1;
                self.latency
                    .saturating_record(micros(done.saturating_duration_since(due)));
            }
            Err(failure) => {
                *self.errors.entry(failure.kind.clone()).or_default() += 1;
                self.examples.entry(failure.kind).or_insert(failure.detail);
            }
        }
        self.last_done = Some(self.last_done.map_or(done, |t| t.max(done)));
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn answered(&self) -> u64 {
        self.ok + self.error_count()
    }
}

/// Sends every request of `schedule` once, request `i` at `start + schedule.due(i)` or, when
/// `clients` requests are in flight already, as soon as one is answered (late, and its latency
/// still counts from when it was due); records each outcome in `tally`; returns when every
/// request is answered.
/// It blocks its thread: it sleeps with the kernel's timers, finer than tokio's 1 ms, and runs
/// the requests on `handle`'s runtime.
fn dispatch<F, Fut>(
    handle: &Handle,
    schedule: Schedule,
    start: Instant,
    clients: usize,
    tally: &Arc<Mutex<Tally>>,
    request: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), Failure>> + Send + 'static,
{
    let clients = u32::try_from(clients).unwrap_or(u32::MAX);
    let permits = Arc::new(Semaphore::new(clients as usize));
    for i in 0..schedule.count {
        let due = start + schedule.due(i);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                tally.lock().unwrap_or_else(PoisonError::into_inner).waited += 1;
                // The semaphore is never closed, so this cannot fail; if it were, stop sending.
                let Ok(permit) = handle.block_on(permits.clone().acquire_owned()) else {
                    break;
                };
                permit
            }
        };
        let sent = Instant::now();
        let answer = request();
        let tally = tally.clone();
        handle.spawn(async move {
            let outcome = answer.await;
            let done = Instant::now();
            tally
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(due, sent, done, outcome);
            // Released after the record: holding every permit means every answer is counted.
            drop(permit);
        });
    }
    // Every permit back: every answer is recorded.
    let _ = handle.block_on(permits.acquire_many(clients));
}

// ---- /proc -------------------------------------------------------------------------------------

const PROC: &str = "/proc";
/// The `comm` of a VM's agent process.
const AGENT_COMM: &str = "ember-agent";

/// A process's resident memory and open file descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Usage {
    rss_kb: u64,
    fds: u64,
}

/// The server's and its VMs' agents' resources at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sample {
    /// `None` if the server's process could not be read (gone, or not ours to read).
    server: Option<Usage>,
    /// Every `ember-agent` child of the server: one per VM.
    agents: Vec<Usage>,
}

impl Sample {
    fn agents_total(&self) -> Usage {
        self.agents.iter().fold(Usage::default(), |a, u| Usage {
            rss_kb: a.rss_kb + u.rss_kb,
            fds: a.fds + u.fds,
        })
    }

    fn to_json(&self) -> Value {
        let total = self.agents_total();
        json!({
            "server": self.server.map(|u| json!({"rss_kb": u.rss_kb, "open_fds": u.fds})),
            "agents": {"count": self.agents.len(), "rss_kb": total.rss_kb, "open_fds": total.fds,
                       "max_rss_kb": self.agents.iter().map(|u| u.rss_kb).max()},
        })
    }
}

/// Samples the server `pid` and its agents under `proc_root` (`/proc`).
fn sample(proc_root: &Path, pid: i32) -> Sample {
    let agents = agent_pids(proc_root, pid)
        .into_iter()
        // An agent that exits meanwhile is simply not counted.
        .filter_map(|agent| usage(proc_root, agent))
        .collect();
    Sample {
        server: usage(proc_root, pid),
        agents,
    }
}

/// The server `server`'s agents under `proc_root` (`/proc`). A VM's agent is a child of the
/// server named `ember-agent` (its containers' processes are the agent's children).
pub(crate) fn agent_pids(proc_root: &Path, server: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            (comm_and_parent(&stat) == Some((AGENT_COMM, server))).then_some(pid)
        })
        .collect()
}

/// The resident memory (`VmRSS` of `status`) and open descriptors (entries of `fd/`) of `pid`.
fn usage(proc_root: &Path, pid: i32) -> Option<Usage> {
    let dir = proc_root.join(pid.to_string());
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let fds = std::fs::read_dir(dir.join("fd")).ok()?.count() as u64;
    Some(Usage {
        rss_kb: rss_kb(&status)?,
        fds,
    })
}

/// `VmRSS:   8272 kB` of a `/proc/<pid>/status`.
pub(crate) fn rss_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// The command name and parent pid of a `/proc/<pid>/stat` line: `pid (comm) state ppid ...`,
/// where `comm` may itself hold spaces and parentheses (it ends at the last `)`).
pub(crate) fn comm_and_parent(stat: &str) -> Option<(&str, i32)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let _state = rest.next()?;
    Some((comm, rest.next()?.parse().ok()?))
}

/// The pid a server wrote in its data dir's `ember.lock`, if that process runs `ember`.
fn server_pid_in(proc_root: &Path, data_dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(data_dir.join("ember.lock"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    let (comm, _) = comm_and_parent(&stat)?;
    comm.starts_with("ember").then_some(pid)
}

// ---- the report --------------------------------------------------------------------------------

/// What the report says about the run besides its measurements.
#[derive(Debug)]
struct RunInfo<'a> {
    function: LoadFunction,
    runtime: &'a str,
    memory_mb: u32,
    clients: usize,
    warmup_seconds: f64,
    endpoint: &'a str,
    started_server: bool,
    serve_args: &'a [String],
    server_pid: Option<i32>,
}

#[derive(Debug)]
struct Report {
    schedule: Schedule,
    tally: Tally,
    /// From the start to the last answer.
    elapsed: Duration,
    /// At the start, the middle and the end; `None` without a server pid.
    samples: [Option<Sample>; 3],
    load_average: Option<f64>,
}

const PHASES: [&str; 3] = ["start", "middle", "end"];
/// The targets of BENCHMARKS.md (Load held over time).
const P99_TARGET_MS: f64 = 10.0;
const RSS_GROWTH_TARGET: f64 = 0.10;

impl Report {
    fn achieved_rate(&self) -> f64 {
        self.tally.answered() as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency at quantile `q` in ms (NaN without samples).
    fn latency_ms(&self, q: f64) -> f64 {
        quantile_ms(&self.tally.latency, q)
    }

    /// End over middle, minus one, of a sampled amount.
    fn growth(&self, amount: impl Fn(&Sample) -> Option<u64>) -> Option<f64> {
        let middle = amount(self.samples[1].as_ref()?)?;
        let end = amount(self.samples[2].as_ref()?)?;
        (middle > 0).then(|| end as f64 / middle as f64 - 1.0)
    }

    fn server_rss_growth(&self) -> Option<f64> {
        self.growth(|s| s.server.map(|u| u.rss_kb))
    }

    fn agents_rss_growth(&self) -> Option<f64> {
        self.growth(|s| Some(s.agents_total().rss_kb))
    }

    fn checks(&self) -> Vec<(&'static str, String, Option<bool>)> {
        let p99 = self.latency_ms(0.99);
        let growth =
            |g: Option<f64>| g.map_or("not sampled".to_owned(), |g| format!("{:+.1}%", g * 100.0));
        vec![
            (
                "no_errors",
                format!("{} errors", self.tally.error_count()),
                Some(self.tally.error_count() == 0),
            ),
            (
                "p99_within_10ms",
                format!("p99 {p99:.3} ms"),
                p99.is_finite().then_some(p99 <= P99_TARGET_MS),
            ),
            (
                "server_rss_end_within_10pct_of_middle",
                growth(self.server_rss_growth()),
                self.server_rss_growth()
                    .map(|g| g.abs() <= RSS_GROWTH_TARGET),
            ),
            (
                "agents_rss_end_within_10pct_of_middle",
                growth(self.agents_rss_growth()),
                self.agents_rss_growth()
                    .map(|g| g.abs() <= RSS_GROWTH_TARGET),
            ),
        ]
    }

    fn to_json(&self, c: &RunInfo<'_>) -> Value {
        let t = &self.tally;
        let samples: serde_json::Map<String, Value> = PHASES
            .iter()
            .zip(&self.samples)
            .map(|(phase, s)| {
                (
                    (*phase).to_owned(),
                    s.as_ref().map_or(Value::Null, Sample::to_json),
                )
            })
            .collect();
        let checks: serde_json::Map<String, Value> = self
            .checks()
            .into_iter()
            .map(|(name, _, ok)| (name.to_owned(), json!(ok)))
            .collect();
        json!({
            "function": c.function.name(),
            "runtime": c.runtime,
            "memory_mb": c.memory_mb,
            "rate": self.schedule.rate,
            "seconds": self.schedule.length().as_secs_f64(),
            "clients": c.clients,
            "warmup_seconds": c.warmup_seconds,
            "server": {"endpoint": c.endpoint, "pid": c.server_pid, "started": c.started_server,
                       "args": c.serve_args},
            "scheduled": self.schedule.count,
            "answered": t.answered(),
            "ok": t.ok,
            "errors": t.error_count(),
            "errors_by_kind": t.errors,
            "error_examples": t.examples,
            "elapsed_seconds": self.elapsed.as_secs_f64(),
            "achieved_rate": nan_null(self.achieved_rate()),
            "latency_ms": {
                "p50": nan_null(self.latency_ms(0.50)),
                "p99": nan_null(self.latency_ms(0.99)),
                "p99_9": nan_null(self.latency_ms(0.999)),
                "max": nan_null(self.latency_ms(1.0)),
                "mean": nan_null(if t.latency.is_empty() { f64::NAN } else { t.latency.mean() / 1e3 }),
            },
            "waited_for_client": t.waited,
            "send_lag_ms": {
                "p50": nan_null(quantile_ms(&t.lag, 0.50)),
                "p99": nan_null(quantile_ms(&t.lag, 0.99)),
                "max": nan_null(quantile_ms(&t.lag, 1.0)),
            },
            "samples": samples,
            "checks": checks,
            "machine": machine().to_json(),
            "load_average": self.load_average,
        })
    }

    fn to_text(&self, c: &RunInfo<'_>) -> String {
        use std::fmt::Write as _;
        let t = &self.tally;
        let mut out = String::new();
        let server = match (c.started_server, c.server_pid) {
            (true, Some(pid)) => format!("a server of its own, pid {pid}, args {:?}", c.serve_args),
            (true, None) => format!("a server of its own, args {:?}", c.serve_args),
            (false, Some(pid)) => format!("{}, pid {pid}", c.endpoint),
            (false, None) => c.endpoint.to_owned(),
        };
        let _ = writeln!(
            out,
            "load: {} ({}, {} MB), {}/s for {:.0} s, at most {} in flight, after {:.0} s of warm-up ({server})",
            c.function.name(),
            c.runtime,
            c.memory_mb,
            self.schedule.rate,
            self.schedule.length().as_secs_f64(),
            c.clients,
            c.warmup_seconds
        );
        let _ = writeln!(
            out,
            "  requests: {} scheduled, {} answered ({} ok, {} errors) in {:.2} s: {:.1}/s achieved",
            self.schedule.count,
            t.answered(),
            t.ok,
            t.error_count(),
            self.elapsed.as_secs_f64(),
            self.achieved_rate()
        );
        for (kind, n) in &t.errors {
            let example = t.examples.get(kind).map_or("", String::as_str);
            let _ = writeln!(out, "    {kind}: {n} (first: {example})");
        }
        let _ = writeln!(
            out,
            "  latency from the due time: p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
            self.latency_ms(0.50),
            self.latency_ms(0.99),
            self.latency_ms(0.999),
            self.latency_ms(1.0)
        );
        let _ = writeln!(
            out,
            "  sent late by (the client's own lag): p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms; {} waited for a free client",
            quantile_ms(&t.lag, 0.50),
            quantile_ms(&t.lag, 0.99),
            quantile_ms(&t.lag, 1.0),
            t.waited
        );
        if self.samples.iter().any(Option::is_some) {
            let _ = writeln!(
                out,
                "  {:<24}{:>12}{:>12}{:>12}",
                "", "start", "middle", "end"
            );
            type Row = (&'static str, fn(&Sample) -> Option<String>);
            let rows: [Row; 5] = [
                ("server RSS", |s| {
                    s.server
                        .map(|u| format!("{:.1} MB", u.rss_kb as f64 / 1024.0))
                }),
                ("server open fds", |s| s.server.map(|u| u.fds.to_string())),
                ("agents (VMs)", |s| Some(s.agents.len().to_string())),
                ("agents' RSS", |s| {
                    Some(format!("{:.1} MB", s.agents_total().rss_kb as f64 / 1024.0))
                }),
                ("agents' open fds", |s| {
                    Some(s.agents_total().fds.to_string())
                }),
            ];
            for (label, cell) in rows {
                let _ = write!(out, "  {label:<24}");
                for s in &self.samples {
                    let text = s.as_ref().and_then(cell).unwrap_or_else(|| "-".to_owned());
                    let _ = write!(out, "{text:>12}");
                }
                out.push('\n');
            }
        }
        let checks = self.checks();
        let _ = writeln!(out, "  checks (the soak's targets):");
        for (name, value, ok) in checks {
            let verdict = ok.map_or("n/a", pass_fail);
            let _ = writeln!(out, "    {name}: {value}: {verdict}");
        }
        let _ = writeln!(
            out,
            "  machine: {}, load average {}",
            machine().describe(),
            self.load_average
                .map_or_else(|| "unknown".to_owned(), |l| format!("{l:.2}"))
        );
        out
    }
}

/// The value at quantile `q` of a histogram of µs, in ms (NaN if it is empty).
fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        f64::NAN
    } else {
        h.value_at_quantile(q) as f64 / 1e3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_spaces_requests_evenly_from_zero() {
        let s = Schedule::new(50.0, 3.0).unwrap();
        assert_eq!(s.count, 150);
        assert_eq!(s.due(0), Duration::ZERO);
        assert_eq!(s.due(1), Duration::from_millis(20));
        assert_eq!(s.due(149), Duration::from_millis(2980));
        assert_eq!(s.length(), Duration::from_secs(3));
        // 1.5 requests round to 2.
        assert_eq!(Schedule::new(3.0, 0.5).unwrap().count, 2);
    }

    #[test]
    fn the_schedule_rejects_what_is_not_a_load() {
        for (rate, seconds) in [
            (0.0, 1.0),
            (-5.0, 1.0),
            (f64::NAN, 1.0),
            (f64::INFINITY, 1.0),
            (10.0, 0.0),
            (10.0, -1.0),
            (1.0, 0.1),
            (1e6, 1e6),
        ] {
            assert!(
                Schedule::new(rate, seconds).is_err(),
                "{rate}/s for {seconds} s"
            );
        }
    }

    #[test]
    fn errors_are_kinded_by_aws_type_status_or_function_error() {
        assert_eq!(error_kind(200, None, None), None);
        assert_eq!(
            error_kind(429, Some("TooManyRequestsException"), None).as_deref(),
            Some("TooManyRequestsException")
        );
        assert_eq!(
            error_kind(400, Some("InvalidParameterValueException:http://x/"), None).as_deref(),
            Some("InvalidParameterValueException")
        );
        assert_eq!(error_kind(502, None, None).as_deref(), Some("HTTP 502"));
        assert_eq!(error_kind(500, Some(""), None).as_deref(), Some("HTTP 500"));
        assert_eq!(
            error_kind(200, None, Some("Unhandled")).as_deref(),
            Some("FunctionError.Unhandled")
        );
    }

    #[test]
    fn latency_counts_from_the_due_time_and_errors_by_kind() {
        let mut t = Tally::new().unwrap();
        let due = Instant::now();
        let ms = Duration::from_millis;
        // Sent 40 ms late, answered 2 ms after: 42 ms, not 2.
        t.record(due, due + ms(40), due + ms(42), Ok(()));
        for i in 1..=99 {
            t.record(due, due, due + ms(1) + Duration::from_micros(i), Ok(()));
        }
        let failure = |kind: &str, detail: &str| {
            Err(Failure {
                kind: kind.into(),
                detail: detail.into(),
            })
        };
        t.record(
            due,
            due,
            due + ms(1),
            failure("TooManyRequestsException", "first"),
        );
        t.record(
            due,
            due,
            due + ms(900),
            failure("TooManyRequestsException", "second"),
        );
        t.record(due, due, due + ms(1), failure("Transport", "reset"));
        assert_eq!((t.ok, t.error_count(), t.answered()), (100, 3, 103));
        assert_eq!(t.errors["TooManyRequestsException"], 2);
        assert_eq!(t.examples["TooManyRequestsException"], "first");
        // Errors' latencies are not in the histogram; the late request is its maximum.
        let max = quantile_ms(&t.latency, 1.0);
        assert!((41.9..42.1).contains(&max), "{max}");
        let p50 = quantile_ms(&t.latency, 0.5);
        assert!((1.0..1.1).contains(&p50), "{p50}");
        assert!((39.9..40.1).contains(&quantile_ms(&t.lag, 1.0)));
        assert_eq!(t.last_done, Some(due + ms(900)));
        assert!(quantile_ms(&Tally::new().unwrap().latency, 0.5).is_nan());
    }

    /// Runs `dispatch` of `schedule` with at most `clients` in flight, each request taking
    /// `work`; returns the tally and when each request was sent, after the start.
    fn dispatch_with(schedule: Schedule, clients: usize, work: Duration) -> (Tally, Vec<Duration>) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let tally = Arc::new(Mutex::new(Tally::new().unwrap()));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now() + Duration::from_millis(5);
        let request = {
            let sent = sent.clone();
            move || {
                sent.lock().unwrap().push(Instant::now() - start);
                async move {
                    tokio::time::sleep(work).await;
                    Ok(())
                }
            }
        };
        dispatch(runtime.handle(), schedule, start, clients, &tally, request);
        let tally = std::mem::replace(&mut *tally.lock().unwrap(), Tally::new().unwrap());
        let sent = sent.lock().unwrap().clone();
        (tally, sent)
    }

    #[test]
    fn every_request_is_sent_once_never_before_it_is_due_and_answered_before_dispatch_returns() {
        let schedule = Schedule::new(200.0, 0.5).unwrap();
        let (tally, sent) = dispatch_with(schedule, 64, Duration::from_millis(2));
        assert_eq!(sent.len(), 100);
        assert_eq!(tally.ok, 100, "every request answered and recorded");
        for (i, at) in sent.iter().enumerate() {
            assert!(*at >= schedule.due(i as u64), "request {i} sent at {at:?}");
        }
    }

    #[test]
    fn a_full_client_bound_delays_requests_and_the_delay_shows_in_their_latency() {
        // 50 requests due over 0.5 s, one in flight at a time, each taking 20 ms: they take at
        // least 1 s in all, so the last one is answered at least ~0.5 s after it was due. None
        // is skipped.
        let schedule = Schedule::new(100.0, 0.5).unwrap();
        let (tally, sent) = dispatch_with(schedule, 1, Duration::from_millis(20));
        assert_eq!((sent.len(), tally.ok), (50, 50));
        let max = quantile_ms(&tally.latency, 1.0);
        assert!(max >= 450.0, "the last request's latency is {max} ms");
        assert!(quantile_ms(&tally.lag, 1.0) >= 400.0);
        // Each request but the first is due before its predecessor is answered.
        assert!(tally.waited >= 40, "{} waited", tally.waited);
    }

    #[test]
    fn parses_rss_and_the_stat_line() {
        let status = "Name:\tember\nVmPeak:\t  99999 kB\nVmRSS:\t    8272 kB\nThreads:\t3\n";
        assert_eq!(rss_kb(status), Some(8272));
        assert_eq!(rss_kb("Name:\tkthreadd\n"), None);
        assert_eq!(
            comm_and_parent("801 (ember-agent) S 785 801 785 0 -1 4194560 1 0"),
            Some(("ember-agent", 785))
        );
        // A name may hold spaces and parentheses; it ends at the last `)`.
        assert_eq!(
            comm_and_parent("42 (a) (b c)) R 7 42 42 0"),
            Some(("a) (b c)", 7))
        );
        assert_eq!(comm_and_parent("garbage"), None);
    }

    /// A fake `/proc/<pid>` with `comm`, parent, RSS and `fds` descriptors.
    fn fake_process(root: &Path, pid: i32, comm: &str, parent: i32, rss_kb: u64, fds: u64) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(dir.join("fd")).unwrap();
        std::fs::write(
            dir.join("stat"),
            format!("{pid} ({comm}) S {parent} {pid} {pid} 0 -1 0 0 0"),
        )
        .unwrap();
        std::fs::write(
            dir.join("status"),
            format!("Name:\t{comm}\nVmRSS:\t{rss_kb:>8} kB\n"),
        )
        .unwrap();
        for fd in 0..fds {
            std::fs::write(dir.join("fd").join(fd.to_string()), "").unwrap();
        }
    }

    #[test]
    fn samples_the_server_and_only_its_own_agents() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        fake_process(root, 100, "ember", 1, 50_000, 40);
        fake_process(root, 101, "ember-agent", 100, 8_000, 12);
        fake_process(root, 102, "ember-agent", 100, 9_000, 30);
        // A container's process under an agent, another server's agent, the server's other
        // children: not agents of this server.
        fake_process(root, 103, "ember-agent", 101, 7_000, 5);
        fake_process(root, 200, "ember-agent", 199, 7_000, 5);
        fake_process(root, 104, "pip", 100, 70_000, 5);
        std::fs::create_dir_all(root.join("self")).unwrap();
        let s = sample(root, 100);
        assert_eq!(
            s.server,
            Some(Usage {
                rss_kb: 50_000,
                fds: 40
            })
        );
        assert_eq!(s.agents.len(), 2);
        assert_eq!(
            s.agents_total(),
            Usage {
                rss_kb: 17_000,
                fds: 42
            }
        );
        let j = s.to_json();
        assert_eq!(j["agents"]["max_rss_kb"], 9_000);
        assert_eq!(j["server"]["open_fds"], 40);
        // A server that is gone: nothing to sample.
        assert_eq!(sample(root, 999).server, None);
    }

    #[test]
    fn finds_the_server_pid_in_the_data_dirs_lock_if_it_runs_ember() {
        let root = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        fake_process(root.path(), 100, "ember", 1, 1, 1);
        fake_process(root.path(), 300, "bash", 1, 1, 1);
        assert_eq!(server_pid_in(root.path(), data.path()), None);
        std::fs::write(data.path().join("ember.lock"), "100\n").unwrap();
        assert_eq!(server_pid_in(root.path(), data.path()), Some(100));
        // A stale lock: its pid is gone, or now another program's.
        std::fs::write(data.path().join("ember.lock"), "999\n").unwrap();
        assert_eq!(server_pid_in(root.path(), data.path()), None);
        std::fs::write(data.path().join("ember.lock"), "300\n").unwrap();
        assert_eq!(server_pid_in(root.path(), data.path()), None);
    }

    fn report_with(samples: [Option<Sample>; 3], errors: u64) -> Report {
        let mut tally = Tally::new().unwrap();
        let due = Instant::now();
        for _ in 0..100 {
            tally.record(due, due, due + Duration::from_millis(3), Ok(()));
        }
        for _ in 0..errors {
            tally.record(
                due,
                due,
                due,
                Err(Failure {
                    kind: "Transport".into(),
                    detail: String::new(),
                }),
            );
        }
        Report {
            schedule: Schedule::new(100.0, 1.0).unwrap(),
            tally,
            elapsed: Duration::from_secs(1),
            samples,
            load_average: None,
        }
    }

    fn server_at(rss_kb: u64) -> Option<Sample> {
        Some(Sample {
            server: Some(Usage { rss_kb, fds: 10 }),
            agents: vec![Usage {
                rss_kb: 1000,
                fds: 10,
            }],
        })
    }

    #[test]
    fn checks_the_soak_targets() {
        let verdicts = |r: &Report| -> Vec<Option<bool>> {
            r.checks().into_iter().map(|(_, _, ok)| ok).collect()
        };
        let steady = report_with(
            [server_at(90_000), server_at(100_000), server_at(109_000)],
            0,
        );
        assert_eq!(verdicts(&steady), [Some(true); 4]);
        assert!((steady.achieved_rate() - 100.0).abs() < 1e-9);
        let leaking = report_with(
            [server_at(90_000), server_at(100_000), server_at(111_000)],
            1,
        );
        assert_eq!(
            verdicts(&leaking),
            [Some(false), Some(true), Some(false), Some(true)]
        );
        let unsampled = report_with([None, None, None], 0);
        assert_eq!(verdicts(&unsampled), [Some(true), Some(true), None, None]);
        let j = leaking.to_json(&RunInfo {
            function: LoadFunction::Native,
            runtime: "provided.al2023",
            memory_mb: 128,
            clients: 4,
            warmup_seconds: 0.0,
            endpoint: "http://127.0.0.1:1",
            started_server: false,
            serve_args: &[],
            server_pid: Some(100),
        });
        assert_eq!(j["errors"], 1);
        assert_eq!(j["errors_by_kind"]["Transport"], 1);
        assert_eq!(j["checks"]["server_rss_end_within_10pct_of_middle"], false);
        assert_eq!(j["samples"]["end"]["server"]["rss_kb"], 111_000);
        assert!((j["latency_ms"]["p99"].as_f64().unwrap() - 3.0).abs() < 0.01);
    }
}
