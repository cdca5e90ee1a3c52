//! `ember bench burst`: replays a bursty arrival pattern (`ember_fleet::sim::BurstPattern`: a
//! steady rate, a step to many times it, the steady rate again) against a fresh server per
//! warming-pool configuration (none, a fixed N = 1, adaptive) and reports, for each, the cold-VM
//! starts on the step and overall, latency, idle VM-seconds and the largest replenish count, then
//! checks the target: on the step, the adaptive pool makes at least 5× fewer cold-VM starts than
//! N = 1, with at most 1.5× its idle VM-seconds. `--simulate` runs the same configurations
//! through the fleet simulation (`ember_fleet::sim`) instead, without servers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ember_fleet::sim::{self, BurstPattern, SimConfig, Start};
use ember_fleet::{FleetConfig, ReplenishConfig};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::invoke::{percentile, python_zip, recreate};
use crate::live::{self as bench_live, load_average, machine, nan_null, pass_fail, Server, REGION};
use ember_client::credentials::Keys;
use ember_client::Client;

/// Settings every configuration's server shares, so that only the warming pool differs; the
/// keep-alives outlast the run, so no configuration loses containers or VMs to them.
const COMMON_SERVE_ARGS: &[&str] = &[
    "--capacity-mb",
    "131072",
    "--vm-memory-mb",
    "2048",
    "--container-keep-alive",
    "600",
    "--vm-keep-alive",
    "600",
];
/// The same settings, for the simulation.
const CAPACITY_MB: u64 = 131_072;
const VM_MEMORY_MB: u64 = 2048;
const KEEP_ALIVE: Duration = Duration::from_secs(600);
/// The simulation's other fixed times (the server's `--placement-wait` default is 5 s too).
const SIM_CONTAINER_START: Duration = Duration::from_millis(5);
const SIM_STOP_TIME: Duration = Duration::from_millis(5);
const PLACEMENT_WAIT: Duration = Duration::from_secs(5);

/// How often the fleet endpoint is polled during a live run.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// The benchmark function: sleeps `duration_ms` from the event.
/// The native function's runtime.
const NATIVE_RUNTIME: &str = "provided.al2023";

const PY_SLEEP: &str = "import time\n\n\ndef handler(event, context):\n    \
                        time.sleep(event.get(\"duration_ms\", 0) / 1000)\n    return {}\n";

/// What the benchmark functions are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FunctionKind {
    /// The Rust `lambda_runtime` test function (`provided.al2023`): a new container starts in a
    /// few ms, so the run measures the fleet rather than interpreter start-up.
    Native,
    /// A Python handler run by awslambdaric: each new container costs ~45 ms of CPU (more at
    /// 512 MB, which gets 0.29 vCPU), which on a small host slows the step down by itself.
    Python,
}

/// A warming-pool configuration under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Setup {
    /// No warming pool: every new VM boots on demand.
    #[value(name = "none")]
    NoPool,
    /// A warming pool replenished with a fixed N = 1.
    Fixed,
    /// N follows the measured request rate (at most 6; warm TTL 1 s, rate window 0.5 s).
    Adaptive,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::NoPool => "none",
            Setup::Fixed => "fixed",
            Setup::Adaptive => "adaptive",
        }
    }

    /// `ember serve`'s flags for this configuration (besides [`COMMON_SERVE_ARGS`]).
    fn serve_args(self) -> &'static [&'static str] {
        match self {
            Setup::NoPool => &["--replenish-count", "0", "--replenish-policy", "fixed"],
            Setup::Fixed => &["--replenish-count", "1", "--replenish-policy", "fixed"],
            Setup::Adaptive => &[
                "--replenish-policy",
                "adaptive",
                "--replenish-max",
                "6",
                "--warm-ttl",
                "0.75",
                "--rate-window",
                "0.25",
            ],
        }
    }

    /// The same configuration for the simulation.
    fn fleet(self) -> FleetConfig {
        let common = FleetConfig {
            capacity_mb: CAPACITY_MB,
            vm_memory_mb: VM_MEMORY_MB,
            container_keep_alive: KEEP_ALIVE,
            vm_keep_alive: KEEP_ALIVE,
            ..FleetConfig::default()
        };
        match self {
            Setup::NoPool => FleetConfig {
                replenish: ReplenishConfig::fixed(0),
                ..common
            },
            Setup::Fixed => FleetConfig {
                replenish: ReplenishConfig::fixed(1),
                ..common
            },
            Setup::Adaptive => FleetConfig {
                warm_ttl: Duration::from_millis(750),
                rate_window: Duration::from_millis(250),
                replenish: ReplenishConfig {
                    max: 6,
                    ..ReplenishConfig::default()
                },
                ..common
            },
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct BurstBenchArgs {
    /// Accounts the functions are spread over, one Ember account each [default: 8].
    #[arg(long)]
    accounts: Option<u32>,
    /// Functions in each account [default: 4].
    #[arg(long)]
    functions_per_account: Option<u32>,
    /// Requests per second before and after the step [default: 8].
    #[arg(long)]
    base_rate: Option<f64>,
    /// The step's rate, as a multiple of the base rate [default: 20].
    #[arg(long)]
    factor: Option<f64>,
    /// Seconds at the base rate before the step [default: 20].
    #[arg(long)]
    before: Option<f64>,
    /// Seconds of the step [default: 5].
    #[arg(long)]
    step: Option<f64>,
    /// Seconds at the base rate after the step [default: 20].
    #[arg(long)]
    after: Option<f64>,
    /// Memory of each function, in MB [default: 512].
    #[arg(long)]
    memory_mb: Option<u64>,
    /// How long each invocation runs (the function sleeps), in ms [default: 250].
    #[arg(long)]
    duration_ms: Option<u64>,
    /// The benchmark functions: `native` (the Rust test function, sleeping `--duration-ms`) or
    /// `python` (a Python handler doing the same).
    #[arg(long, value_enum, default_value_t = FunctionKind::Native)]
    function: FunctionKind,
    /// The native function's zip.
    #[arg(long, default_value = "target/functions/rust-hello.zip")]
    rust_zip: PathBuf,
    /// Seed of the arrivals (Poisson): the same seed replays the same arrivals [default: 7].
    #[arg(long)]
    seed: Option<u64>,
    /// The configurations to run, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "none,fixed,adaptive"
    )]
    configs: Vec<Setup>,
    /// Run the configurations through the fleet simulation instead of live servers.
    #[arg(long)]
    simulate: bool,
    /// The simulation's VM boot time, in ms.
    #[arg(long, default_value_t = 40.0)]
    sim_boot_ms: f64,
    /// Seconds the run goes on after the last arrival (so TTLs play out); idle VM-seconds and N
    /// are measured until then.
    #[arg(long, default_value_t = 10.0)]
    tail: f64,
    /// Runtime software directory shared by the servers, so awslambdaric is provisioned once.
    #[arg(long, default_value = "target/bench-runtimes")]
    runtime_dir: PathBuf,
    /// The functions' runtime [default: python3.11 if the host has it, else its newest
    /// python3.N].
    #[arg(long)]
    python_runtime: Option<String>,
    /// Seconds each server is left alone between creating the functions and the replay (its
    /// warming pool fills).
    #[arg(long, default_value_t = 5.0)]
    settle: f64,
    /// Where each server's log goes, as `<config>.log`.
    #[arg(long, default_value = "target/bench-burst")]
    log_dir: PathBuf,
    /// Print the results as one JSON object.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: BurstBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.configs.is_empty(), "--configs names no configuration");
    let tail = seconds(args.tail, "--tail")?;
    let (mode, runtime) = if args.simulate {
        let runtime = match args.function {
            FunctionKind::Native => NATIVE_RUNTIME,
            FunctionKind::Python => args.python_runtime.as_deref().unwrap_or("python3.11"),
        };
        (Mode::Simulated, runtime.to_owned())
    } else if args.function == FunctionKind::Native {
        let runtime_dir = bench_live::absolute(&args.runtime_dir)?;
        (Mode::Live { runtime_dir }, NATIVE_RUNTIME.to_owned())
    } else {
        let runtime_dir = bench_live::absolute(&args.runtime_dir)?;
        let runtime = bench_live::provision(&runtime_dir, args.python_runtime.as_deref(), "burst")
            .await?
            .runtime;
        (Mode::Live { runtime_dir }, runtime)
    };
    let pattern = pattern(&args, &runtime)?;
    let mut rows = Vec::with_capacity(args.configs.len());
    match &mode {
        Mode::Simulated => {
            let boot = Duration::try_from_secs_f64(args.sim_boot_ms / 1e3)
                .map_err(|_| anyhow::anyhow!("--sim-boot-ms must be a non-negative number"))?;
            for &setup in &args.configs {
                rows.push(simulate(setup, &pattern, boot, tail));
            }
        }
        Mode::Live { runtime_dir } => {
            let live = Live {
                exe: std::env::current_exe().context("cannot find this executable")?,
                runtime_dir: runtime_dir.clone(),
                log_dir: args.log_dir.clone(),
                settle: seconds(args.settle, "--settle")?,
                tail,
                zip: match args.function {
                    FunctionKind::Native => std::fs::read(&args.rust_zip).with_context(|| {
                        format!(
                            "cannot read {} (build it with tests/functions/rust-hello/build.sh)",
                            args.rust_zip.display()
                        )
                    })?,
                    FunctionKind::Python => python_zip(PY_SLEEP)?,
                },
                native: args.function == FunctionKind::Native,
            };
            std::fs::create_dir_all(&live.log_dir)
                .with_context(|| format!("cannot create {}", live.log_dir.display()))?;
            for &setup in &args.configs {
                eprintln!("burst: {} ...", setup.name());
                let row = live
                    .run(setup, &pattern)
                    .await
                    .with_context(|| format!("configuration {}", setup.name()))?;
                rows.push(row);
            }
        }
    }
    let verdict = Verdict::of(&rows);
    if args.json {
        let mut out = json!({
            "mode": mode.name(),
            "machine": machine().to_json(),
            "pattern": pattern_json(&pattern),
            "tail_seconds": tail.as_secs_f64(),
            "configs": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            "target": verdict.as_ref().map(Verdict::to_json),
        });
        if mode == Mode::Simulated {
            out["sim_boot_ms"] = json!(args.sim_boot_ms);
        }
        println!("{out}");
    } else {
        print_report(&mode, &args, &pattern, tail, &rows, verdict.as_ref());
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Simulated,
    Live { runtime_dir: PathBuf },
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Mode::Simulated => "simulated",
            Mode::Live { .. } => "live",
        }
    }
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| anyhow::anyhow!("{flag} must be a non-negative number of seconds"))
}

/// The default pattern, with the flags' overrides.
fn pattern(args: &BurstBenchArgs, runtime: &str) -> anyhow::Result<BurstPattern> {
    let d = BurstPattern::default();
    let phase = |value: Option<f64>, default: Duration, flag: &str| match value {
        Some(s) => seconds(s, flag),
        None => Ok(default),
    };
    let pattern = BurstPattern {
        accounts: args.accounts.unwrap_or(d.accounts),
        functions_per_account: args
            .functions_per_account
            .unwrap_or(d.functions_per_account),
        base_rate: args.base_rate.unwrap_or(d.base_rate),
        factor: args.factor.unwrap_or(d.factor),
        before: phase(args.before, d.before, "--before")?,
        step: phase(args.step, d.step, "--step")?,
        after: phase(args.after, d.after, "--after")?,
        memory_mb: args.memory_mb.unwrap_or(d.memory_mb),
        duration: args.duration_ms.map_or(d.duration, Duration::from_millis),
        runtime: runtime.to_owned(),
        seed: args.seed.unwrap_or(d.seed),
    };
    anyhow::ensure!(
        pattern.accounts >= 1 && pattern.functions_per_account >= 1,
        "--accounts and --functions-per-account must be at least 1"
    );
    anyhow::ensure!(
        pattern.base_rate.is_finite() && pattern.base_rate > 0.0,
        "--base-rate must be a positive number"
    );
    anyhow::ensure!(
        pattern.factor.is_finite() && pattern.factor > 0.0,
        "--factor must be a positive number"
    );
    anyhow::ensure!(
        (128..=10_240).contains(&pattern.memory_mb),
        "--memory-mb must be 128-10240"
    );
    // The functions are created with a 10 s timeout.
    anyhow::ensure!(
        pattern.duration < Duration::from_secs(9),
        "--duration-ms must be under 9000"
    );
    Ok(pattern)
}

/// How many of a pattern's arrivals come during its step.
fn on_step(p: &BurstPattern, arrivals: &[ember_fleet::sim::Arrival]) -> usize {
    let (from, to) = p.step_window();
    arrivals
        .iter()
        .filter(|a| a.at >= from && a.at < to)
        .count()
}

fn pattern_json(p: &BurstPattern) -> Value {
    let arrivals = p.arrivals();
    let on_step = on_step(p, &arrivals);
    json!({
        "accounts": p.accounts, "functions_per_account": p.functions_per_account,
        "base_rate": p.base_rate, "factor": p.factor, "before_seconds": p.before.as_secs_f64(),
        "step_seconds": p.step.as_secs_f64(), "after_seconds": p.after.as_secs_f64(),
        "memory_mb": p.memory_mb, "duration_ms": p.duration.as_secs_f64() * 1e3,
        "runtime": p.runtime, "seed": p.seed, "arrivals": arrivals.len(), "arrivals_on_step": on_step,
    })
}

// ---- results ----------------------------------------------------------------------------------

/// How one arrival went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Warm,
    ColdContainer,
    ColdVm,
    Throttled,
    Error,
}

impl Outcome {
    fn ran(self) -> bool {
        matches!(
            self,
            Outcome::Warm | Outcome::ColdContainer | Outcome::ColdVm
        )
    }
}

#[derive(Debug, Clone)]
struct Record {
    /// Scheduled arrival, since the start of the replay.
    at: Duration,
    outcome: Outcome,
    /// From sending the request to its answer.
    latency: Duration,
    /// How late the request was sent, after its scheduled time (0 in the simulation).
    lag: Duration,
    /// What went wrong, for an error.
    error: Option<String>,
}

/// One configuration's results.
#[derive(Debug, Clone, Default)]
struct Row {
    config: String,
    invocations: usize,
    warm: usize,
    cold_container: usize,
    /// Cold-VM starts among the arrivals before, on and after the step.
    cold_vm_before: usize,
    cold_vm_step: usize,
    cold_vm_after: usize,
    p50_ms: f64,
    p99_ms: f64,
    idle_vm_seconds: f64,
    max_replenish_count: u64,
    throttled: usize,
    errors: usize,
    first_error: Option<String>,
    /// Live runs only: the server's measured VM boot time at the end (`VmBootSeconds`), the
    /// largest warming pool seen, the 99th percentile of how late requests were sent, and polls
    /// of the fleet endpoint that failed.
    boot_ms: Option<f64>,
    max_warming: Option<usize>,
    lag_p99_ms: Option<f64>,
    failed_polls: Option<usize>,
    /// Live runs only: the host's 1-minute load average as the replay started and as it ended
    /// (other work on the machine shows here).
    load: Option<(f64, f64)>,
    /// Live runs only: the fleet every [`POLL_EVERY`].
    timeline: Vec<FleetPoint>,
}

impl Row {
    /// Counts `records` of a run of `pattern`; idle VM-seconds and N are the caller's.
    fn summarise(setup: Setup, pattern: &BurstPattern, records: &[Record]) -> Row {
        let (from, to) = pattern.step_window();
        let mut row = Row {
            config: setup.name().to_owned(),
            invocations: records.len(),
            ..Row::default()
        };
        let mut latencies = Vec::with_capacity(records.len());
        for r in records {
            match r.outcome {
                Outcome::Warm => row.warm += 1,
                Outcome::ColdContainer => row.cold_container += 1,
                Outcome::ColdVm if r.at < from => row.cold_vm_before += 1,
                Outcome::ColdVm if r.at < to => row.cold_vm_step += 1,
                Outcome::ColdVm => row.cold_vm_after += 1,
                Outcome::Throttled => row.throttled += 1,
                Outcome::Error => {
                    row.errors += 1;
                    if row.first_error.is_none() {
                        row.first_error.clone_from(&r.error);
                    }
                }
            }
            if r.outcome.ran() {
                latencies.push(r.latency.as_secs_f64() * 1e3);
            }
        }
        row.p50_ms = percentile(&latencies, 0.50);
        row.p99_ms = percentile(&latencies, 0.99);
        row
    }

    fn cold_vm_total(&self) -> usize {
        self.cold_vm_before + self.cold_vm_step + self.cold_vm_after
    }

    fn to_json(&self) -> Value {
        json!({
            "config": self.config, "invocations": self.invocations, "warm": self.warm,
            "cold_container": self.cold_container, "cold_vm_step": self.cold_vm_step,
            "cold_vm_total": self.cold_vm_total(), "cold_vm_before": self.cold_vm_before,
            "cold_vm_after": self.cold_vm_after, "p50_ms": nan_null(self.p50_ms),
            "p99_ms": nan_null(self.p99_ms), "idle_vm_seconds": self.idle_vm_seconds,
            "max_replenish_count": self.max_replenish_count, "throttled": self.throttled,
            "errors": self.errors, "first_error": self.first_error, "vm_boot_ms": self.boot_ms,
            "max_warming_pool": self.max_warming, "send_lag_p99_ms": self.lag_p99_ms,
            "failed_fleet_polls": self.failed_polls,
            "load_average_start": self.load.map(|l| l.0), "load_average_end": self.load.map(|l| l.1),
            "timeline": self.timeline.iter().map(FleetPoint::to_json).collect::<Vec<_>>(),
        })
    }
}

/// The target, judged on the `fixed` and `adaptive` rows.
#[derive(Debug, Clone, PartialEq)]
struct Verdict {
    fixed_cold: usize,
    adaptive_cold: usize,
    fixed_idle: f64,
    adaptive_idle: f64,
}

impl Verdict {
    /// `None` unless both `fixed` and `adaptive` ran.
    fn of(rows: &[Row]) -> Option<Verdict> {
        let find = |name: &str| rows.iter().find(|r| r.config == name);
        let (fixed, adaptive) = (find("fixed")?, find("adaptive")?);
        Some(Verdict {
            fixed_cold: fixed.cold_vm_step,
            adaptive_cold: adaptive.cold_vm_step,
            fixed_idle: fixed.idle_vm_seconds,
            adaptive_idle: adaptive.idle_vm_seconds,
        })
    }

    /// On the step, at least 5× fewer cold-VM starts than fixed N = 1 (none at all counts, if
    /// fixed had any).
    fn cold_ok(&self) -> bool {
        self.fixed_cold >= 5 * self.adaptive_cold.max(1)
            || (self.adaptive_cold == 0 && self.fixed_cold >= 1)
    }

    /// At most 1.5× fixed's idle VM-seconds.
    fn idle_ok(&self) -> bool {
        self.adaptive_idle <= 1.5 * self.fixed_idle
    }

    fn pass(&self) -> bool {
        self.cold_ok() && self.idle_ok()
    }

    fn to_json(&self) -> Value {
        json!({
            "pass": self.pass(), "cold_ok": self.cold_ok(), "idle_ok": self.idle_ok(),
            "fixed_cold_vm_step": self.fixed_cold, "adaptive_cold_vm_step": self.adaptive_cold,
            "fixed_idle_vm_seconds": self.fixed_idle, "adaptive_idle_vm_seconds": self.adaptive_idle,
        })
    }
}

fn print_report(
    mode: &Mode,
    args: &BurstBenchArgs,
    p: &BurstPattern,
    tail: Duration,
    rows: &[Row],
    verdict: Option<&Verdict>,
) {
    println!("Machine: {}", machine().describe());
    let arrivals = p.arrivals();
    let on_step = on_step(p, &arrivals);
    println!(
        "Pattern: {} accounts × {} functions ({}, {} MB, {} ms each); {}/s for {} s, {}/s for {} s, \
         {}/s for {} s; seed {}: {} arrivals, {} on the step; then {} s without arrivals",
        p.accounts,
        p.functions_per_account,
        p.runtime,
        p.memory_mb,
        p.duration.as_millis(),
        p.base_rate,
        p.before.as_secs_f64(),
        p.base_rate * p.factor,
        p.step.as_secs_f64(),
        p.base_rate,
        p.after.as_secs_f64(),
        p.seed,
        arrivals.len(),
        on_step,
        tail.as_secs_f64(),
    );
    match mode {
        Mode::Simulated => println!(
            "Simulated: VM boot {} ms, container start {} ms",
            args.sim_boot_ms,
            SIM_CONTAINER_START.as_millis()
        ),
        Mode::Live { runtime_dir } => println!(
            "Live: a fresh `ember serve` per configuration (runtimes in {}, logs in {})",
            runtime_dir.display(),
            args.log_dir.display()
        ),
    }
    println!();
    println!(
        "| config | cold VMs on step | cold VMs total | p50 ms | p99 ms | idle VM-s | max N | throttled/errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {}/{} |",
            r.config,
            r.cold_vm_step,
            r.cold_vm_total(),
            r.p50_ms,
            r.p99_ms,
            r.idle_vm_seconds,
            r.max_replenish_count,
            r.throttled,
            r.errors
        );
    }
    println!();
    for r in rows {
        let mut line = format!(
            "{}: {} invocations: {} warm, {} new containers, cold VMs {} before / {} on / {} after the step",
            r.config,
            r.invocations,
            r.warm,
            r.cold_container,
            r.cold_vm_before,
            r.cold_vm_step,
            r.cold_vm_after
        );
        if let Some(boot) = r.boot_ms {
            line += &format!("; VM boot {boot:.1} ms (VmBootSeconds)");
        }
        if let Some(warming) = r.max_warming {
            line += &format!("; warming pool at most {warming}");
        }
        if let Some(lag) = r.lag_p99_ms {
            line += &format!("; send lag p99 {lag:.1} ms");
        }
        if let Some((start, end)) = r.load {
            line += &format!("; load average {start:.1} → {end:.1}");
        }
        if let Some(failed) = r.failed_polls.filter(|&f| f > 0) {
            line += &format!("; {failed} failed fleet polls");
        }
        if let Some(error) = &r.first_error {
            line += &format!("; first error: {error}");
        }
        println!("{line}");
    }
    println!();
    match verdict {
        None => {
            println!("Target not checked: it needs both the fixed and adaptive configurations.")
        }
        Some(v) => {
            println!(
                "Target: on the step, adaptive makes ≥ 5× fewer cold-VM starts than fixed N = 1 \
                 (fixed {}, adaptive {}): {}",
                v.fixed_cold,
                v.adaptive_cold,
                pass_fail(v.cold_ok())
            );
            println!(
                "        with idle VM-seconds ≤ 1.5× fixed's (adaptive {:.1}, fixed {:.1}, limit {:.1}): {}",
                v.adaptive_idle,
                v.fixed_idle,
                1.5 * v.fixed_idle,
                pass_fail(v.idle_ok())
            );
            println!("{}", pass_fail(v.pass()));
        }
    }
}

// ---- the simulation ---------------------------------------------------------------------------

/// Runs `pattern` through the fleet simulation set up as `setup`.
fn simulate(setup: Setup, pattern: &BurstPattern, boot: Duration, tail: Duration) -> Row {
    let config = SimConfig {
        fleet: setup.fleet(),
        boot_time: boot,
        container_start: SIM_CONTAINER_START,
        stop_time: SIM_STOP_TIME,
        placement_wait: PLACEMENT_WAIT,
        tail,
    };
    let report = sim::run(&config, &pattern.arrivals());
    let records: Vec<Record> = report
        .starts
        .iter()
        .map(|&(at, start, latency)| Record {
            at,
            outcome: match start {
                Start::Warm => Outcome::Warm,
                Start::ColdContainer => Outcome::ColdContainer,
                Start::ColdVm => Outcome::ColdVm,
                Start::Throttled => Outcome::Throttled,
            },
            latency,
            lag: Duration::ZERO,
            error: None,
        })
        .collect();
    let mut row = Row::summarise(setup, pattern, &records);
    row.idle_vm_seconds = report.idle_vm_seconds;
    row.max_replenish_count = u64::from(report.max_replenish_count);
    row
}

// ---- live runs --------------------------------------------------------------------------------

/// What every live configuration shares.
#[derive(Debug)]
struct Live {
    exe: PathBuf,
    runtime_dir: PathBuf,
    log_dir: PathBuf,
    settle: Duration,
    tail: Duration,
    zip: Vec<u8>,
    /// The native function (its handler name and event differ).
    native: bool,
}

impl Live {
    /// Starts a fresh server set up as `setup`, replays `pattern` against it and stops it.
    async fn run(&self, setup: Setup, pattern: &BurstPattern) -> anyhow::Result<Row> {
        let log = self.log_dir.join(format!("{}.log", setup.name()));
        let args = [COMMON_SERVE_ARGS, setup.serve_args()].concat();
        let server = Server::start(&self.exe, &args, &self.runtime_dir, &log).await?;
        let measured = self.measure(&server, setup, pattern).await;
        let stopped = server.stop().await;
        let row = measured?;
        stopped?;
        Ok(row)
    }

    async fn measure(
        &self,
        server: &Server,
        setup: Setup,
        pattern: &BurstPattern,
    ) -> anyhow::Result<Row> {
        // One connection pool for every account's client; the replay is open-loop, so it may
        // hold many requests in flight.
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(usize::MAX)
            .timeout(Duration::from_secs(60))
            .build()
            .context("cannot build the HTTP client")?;
        let admin = Arc::new(server.admin_client(http.clone())?);
        let clients = self.create_functions(server, &http, pattern).await?;
        let arrivals = pattern.arrivals();
        for a in &arrivals {
            anyhow::ensure!(
                clients.contains_key(&a.account),
                "the pattern names account {} the benchmark did not create",
                a.account
            );
        }
        tokio::time::sleep(self.settle).await;

        let start = fleet(&admin).await?;
        let load_start = load_average();
        let (stop_polling, stop_rx) = tokio::sync::watch::channel(false);
        let t0 = Instant::now() + Duration::from_millis(200);
        let poller = tokio::spawn(poll(admin.clone(), t0, stop_rx));
        let ms = pattern.duration.as_millis();
        let payload = if self.native {
            serde_json::to_vec(&json!({ "sleep_ms": ms }))?
        } else {
            serde_json::to_vec(&json!({ "duration_ms": ms }))?
        };
        let tasks: Vec<_> = arrivals
            .iter()
            .map(|a| {
                // Checked above that every arrival's account has a client.
                let client = clients.get(&a.account).cloned();
                let path = format!(
                    "/2015-03-31/functions/{}/invocations",
                    Client::segment(&a.function)
                );
                let (at, payload) = (a.at, payload.clone());
                tokio::spawn(async move {
                    tokio::time::sleep_until(t0 + at).await;
                    let sent = Instant::now();
                    let (outcome, error) = match client {
                        Some(client) => invoke(&client, &path, payload).await,
                        None => (Outcome::Error, Some("no client".to_owned())),
                    };
                    Record {
                        at,
                        outcome,
                        latency: sent.elapsed(),
                        lag: sent.saturating_duration_since(t0 + at),
                        error,
                    }
                })
            })
            .collect();
        let mut records = Vec::with_capacity(tasks.len());
        for task in tasks {
            records.push(task.await.context("an invocation task failed")?);
        }
        tokio::time::sleep_until(t0 + pattern.total() + self.tail).await;
        let _ = stop_polling.send(true);
        let mut polled = poller.await.context("the fleet poller failed")?;
        let end = fleet(&admin).await?;
        let load_end = load_average();

        let mut row = Row::summarise(setup, pattern, &records);
        row.idle_vm_seconds = end.idle_vm_seconds - start.idle_vm_seconds;
        row.max_replenish_count = polled
            .max_n
            .max(start.replenish_count)
            .max(end.replenish_count);
        row.max_warming = [polled.max_warming, start.warming, end.warming]
            .into_iter()
            .flatten()
            .max();
        row.boot_ms = end.boot_seconds.map(|s| s * 1e3);
        let lags: Vec<f64> = records.iter().map(|r| r.lag.as_secs_f64() * 1e3).collect();
        row.lag_p99_ms = Some(percentile(&lags, 0.99));
        row.failed_polls = Some(polled.failures);
        row.load = load_start.zip(load_end);
        row.timeline = std::mem::take(&mut polled.timeline);
        Ok(row)
    }

    /// Creates one account per account of the pattern (in the store, as `ember accounts create`
    /// does; safe while the server runs) and its functions; returns a client per account.
    async fn create_functions(
        &self,
        server: &Server,
        http: &reqwest::Client,
        pattern: &BurstPattern,
    ) -> anyhow::Result<BTreeMap<String, Arc<Client>>> {
        let store = ember_store::Store::open(server.data_dir())
            .await
            .context("cannot open the server's store")?;
        let mut clients = BTreeMap::new();
        for k in 0..pattern.accounts {
            let name = format!("acct-{k}");
            let keys = store
                .create_account(&name, false)
                .await
                .with_context(|| format!("cannot create account {name}"))?;
            let keys = Keys {
                access_key_id: keys.access_key_id,
                secret_access_key: keys.secret_access_key,
            };
            let client = Client::with_keys(http.clone(), &server.endpoint, keys, REGION)?;
            clients.insert(name, Arc::new(client));
        }
        store.close().await;
        let memory_mb = u32::try_from(pattern.memory_mb).context("--memory-mb")?;
        // Function f belongs to account f / functions_per_account, as in the pattern.
        for f in 0..pattern.accounts * pattern.functions_per_account {
            let account = format!("acct-{}", f / pattern.functions_per_account);
            let client = clients
                .get(&account)
                .with_context(|| format!("no account {account}"))?;
            let name = format!("fn-{f}");
            recreate(
                client,
                &name,
                &pattern.runtime,
                "app.handler",
                &self.zip,
                memory_mb,
            )
            .await?;
        }
        Ok(clients)
    }
}

/// Invokes once; the outcome and, for an error, what it was.
async fn invoke(client: &Client, path: &str, payload: Vec<u8>) -> (Outcome, Option<String>) {
    let headers = [("content-type", "application/json".to_owned())];
    let reply = match client.send(Method::POST, path, &headers, payload).await {
        Ok(reply) => reply,
        Err(err) => return (Outcome::Error, Some(format!("{err:#}"))),
    };
    let describe = |what: &str| {
        let body = String::from_utf8_lossy(&reply.body);
        Some(format!(
            "{what} (HTTP {}): {}",
            reply.status,
            body.chars().take(200).collect::<String>()
        ))
    };
    if reply.status == 429 {
        return (Outcome::Throttled, None);
    }
    if reply.status != 200 {
        return (Outcome::Error, describe("error"));
    }
    if reply.headers.contains_key("x-amz-function-error") {
        return (Outcome::Error, describe("function error"));
    }
    match reply
        .headers
        .get("x-ember-start")
        .and_then(|v| v.to_str().ok())
    {
        Some("warm") => (Outcome::Warm, None),
        Some("cold_container") => (Outcome::ColdContainer, None),
        Some("cold_vm") => (Outcome::ColdVm, None),
        other => (
            Outcome::Error,
            Some(format!(
                "X-Ember-Start is {other:?}, not warm|cold_container|cold_vm"
            )),
        ),
    }
}

/// What the benchmark reads of `GET /ember/v1/fleet`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct FleetSample {
    idle_vm_seconds: f64,
    replenish_count: u64,
    warming: Option<usize>,
    active: Option<usize>,
    boot_seconds: Option<f64>,
}

impl FleetSample {
    fn parse(v: &Value) -> anyhow::Result<FleetSample> {
        Ok(FleetSample {
            idle_vm_seconds: v
                .get("IdleVmSeconds")
                .and_then(Value::as_f64)
                .context("the fleet's answer has no IdleVmSeconds")?,
            replenish_count: v
                .get("ReplenishCount")
                .and_then(Value::as_u64)
                .context("the fleet's answer has no ReplenishCount")?,
            warming: v.get("WarmingPool").and_then(pool_size),
            active: v.get("ActivePool").and_then(pool_size),
            boot_seconds: v.get("VmBootSeconds").and_then(Value::as_f64),
        })
    }
}

/// A pool's size, whether the endpoint gives a count, a list of VMs, or an object with either.
fn pool_size(v: &Value) -> Option<usize> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
        Value::Array(vms) => Some(vms.len()),
        Value::Object(o) => ["Count", "Size", "Vms"]
            .iter()
            .find_map(|k| o.get(*k).and_then(pool_size)),
        _ => None,
    }
}

async fn fleet(admin: &Client) -> anyhow::Result<FleetSample> {
    let v = admin
        .json(Method::GET, "/ember/v1/fleet", None)
        .await
        .context("cannot read GET /ember/v1/fleet")?;
    FleetSample::parse(&v)
}

/// One poll of the fleet, `at` seconds since the start of the replay.
#[derive(Debug, Clone)]
struct FleetPoint {
    at: f64,
    sample: FleetSample,
}

impl FleetPoint {
    fn to_json(&self) -> Value {
        let s = &self.sample;
        json!({"t": (self.at * 1e3).round() / 1e3, "n": s.replenish_count, "warming": s.warming,
               "active": s.active, "idle_vm_seconds": (s.idle_vm_seconds * 1e3).round() / 1e3})
    }
}

#[derive(Debug, Default)]
struct Polled {
    max_n: u64,
    max_warming: Option<usize>,
    failures: usize,
    timeline: Vec<FleetPoint>,
}

/// Reads the fleet every [`POLL_EVERY`] until told to stop; `t0` is the start of the replay.
async fn poll(
    admin: Arc<Client>,
    t0: Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Polled {
    let mut polled = Polled::default();
    let mut every = tokio::time::interval(POLL_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return polled,
        }
        match fleet(&admin).await {
            Ok(sample) => {
                polled.max_n = polled.max_n.max(sample.replenish_count);
                polled.max_warming = polled.max_warming.max(sample.warming);
                let now = Instant::now();
                let at = if now >= t0 {
                    (now - t0).as_secs_f64()
                } else {
                    -(t0 - now).as_secs_f64()
                };
                polled.timeline.push(FleetPoint { at, sample });
            }
            Err(_) => polled.failures += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: BurstBenchArgs,
    }

    fn record(at_ms: u64, outcome: Outcome, latency_ms: u64) -> Record {
        Record {
            at: Duration::from_millis(at_ms),
            outcome,
            latency: Duration::from_millis(latency_ms),
            lag: Duration::ZERO,
            error: (outcome == Outcome::Error).then(|| "boom".to_owned()),
        }
    }

    #[test]
    fn the_target_is_five_times_fewer_cold_vms_on_the_step_at_most_one_and_a_half_the_idle() {
        // (fixed cold, adaptive cold, fixed idle, adaptive idle) -> (cold ok, idle ok)
        let table = [
            ((10, 2, 10.0, 15.0), (true, true)),
            ((10, 3, 10.0, 15.0), (false, true)),
            ((5, 1, 10.0, 15.1), (true, false)),
            ((4, 0, 10.0, 1.0), (true, true)),
            ((1, 0, 10.0, 1.0), (true, true)),
            ((0, 0, 10.0, 1.0), (false, true)),
            ((4, 1, 0.0, 0.0), (false, true)),
        ];
        for ((fixed_cold, adaptive_cold, fixed_idle, adaptive_idle), (cold, idle)) in table {
            let v = Verdict {
                fixed_cold,
                adaptive_cold,
                fixed_idle,
                adaptive_idle,
            };
            assert_eq!((v.cold_ok(), v.idle_ok()), (cold, idle), "{v:?}");
            assert_eq!(v.pass(), cold && idle);
        }
    }

    #[test]
    fn cold_vms_are_counted_by_the_phase_their_request_arrived_in() {
        let pattern = BurstPattern {
            before: Duration::from_secs(1),
            step: Duration::from_secs(1),
            after: Duration::from_secs(1),
            ..BurstPattern::default()
        };
        let records = [
            record(0, Outcome::ColdVm, 100),
            record(999, Outcome::ColdVm, 100),
            record(1000, Outcome::ColdVm, 100),
            record(1999, Outcome::ColdVm, 100),
            record(1500, Outcome::Warm, 10),
            record(1600, Outcome::ColdContainer, 50),
            record(1700, Outcome::Throttled, 0),
            record(2000, Outcome::ColdVm, 100),
            record(2500, Outcome::Error, 0),
        ];
        let row = Row::summarise(Setup::Fixed, &pattern, &records);
        assert_eq!(
            (row.cold_vm_before, row.cold_vm_step, row.cold_vm_after),
            (2, 2, 1)
        );
        assert_eq!(row.cold_vm_total(), 5);
        assert_eq!((row.warm, row.cold_container), (1, 1));
        assert_eq!((row.throttled, row.errors), (1, 1));
        assert_eq!(row.first_error.as_deref(), Some("boom"));
        // Latency covers the 7 invocations that ran, not the throttle or the error.
        assert_eq!(row.p50_ms, 100.0);
        assert_eq!(row.invocations, 9);
    }

    #[test]
    fn the_verdict_needs_fixed_and_adaptive() {
        let row = |config: &str, cold_vm_step, idle_vm_seconds| Row {
            config: config.to_owned(),
            cold_vm_step,
            idle_vm_seconds,
            ..Row::default()
        };
        assert_eq!(
            Verdict::of(&[row("none", 9, 0.0), row("fixed", 5, 1.0)]),
            None
        );
        let v = Verdict::of(&[row("fixed", 5, 1.0), row("adaptive", 1, 1.2)]);
        assert_eq!(
            v,
            Some(Verdict {
                fixed_cold: 5,
                adaptive_cold: 1,
                fixed_idle: 1.0,
                adaptive_idle: 1.2
            })
        );
    }

    #[test]
    fn flags_override_the_default_pattern() {
        let cli = Cli::parse_from([
            "x",
            "--factor",
            "10",
            "--step",
            "2.5",
            "--configs",
            "fixed,adaptive",
        ]);
        assert_eq!(cli.args.configs, [Setup::Fixed, Setup::Adaptive]);
        let p = pattern(&cli.args, "python3.11").unwrap();
        assert_eq!(p.factor, 10.0);
        assert_eq!(p.step, Duration::from_millis(2500));
        assert_eq!(p.accounts, BurstPattern::default().accounts);
        assert_eq!(p.runtime, "python3.11");
        let cli = Cli::parse_from(["x"]);
        assert_eq!(
            cli.args.configs,
            [Setup::NoPool, Setup::Fixed, Setup::Adaptive]
        );
        let cli = Cli::parse_from(["x", "--base-rate", "0"]);
        assert!(pattern(&cli.args, "python3.11").is_err());
    }

    #[test]
    fn the_fleet_endpoint_is_read_for_idle_seconds_n_and_the_warming_pool() {
        let v = json!({"IdleVmSeconds": 12.5, "ReplenishCount": 3, "WarmingPool": [{}, {}],
                       "ActivePool": [], "VmBootSeconds": 0.004});
        let s = FleetSample::parse(&v).unwrap();
        assert_eq!(s.idle_vm_seconds, 12.5);
        assert_eq!(s.replenish_count, 3);
        assert_eq!(s.warming, Some(2));
        assert_eq!(s.active, Some(0));
        assert_eq!(s.boot_seconds, Some(0.004));
        assert_eq!(pool_size(&json!({"Count": 4})), Some(4));
        assert!(FleetSample::parse(&json!({"ReplenishCount": 1})).is_err());
    }

    #[test]
    fn the_simulated_benchmark_reports_what_the_simulation_measured() {
        let pattern = BurstPattern {
            runtime: "python3.11".into(),
            ..BurstPattern::default()
        };
        let tail = Duration::from_secs(10);
        let boot = Duration::from_millis(40);
        let rows: Vec<Row> = [Setup::NoPool, Setup::Fixed, Setup::Adaptive]
            .into_iter()
            .map(|s| simulate(s, &pattern, boot, tail))
            .collect();
        assert_eq!(rows[0].max_replenish_count, 0);
        assert_eq!(rows[1].max_replenish_count, 1);
        assert!(rows[2].max_replenish_count > 1);
        assert!(rows[0].cold_vm_step > rows[1].cold_vm_step);
        let arrivals = pattern.arrivals().len();
        for r in &rows {
            assert_eq!(r.invocations, arrivals);
            assert_eq!(r.errors, 0);
        }
        let v = Verdict::of(&rows).unwrap();
        assert!(v.pass(), "{v:?}");
    }
}
