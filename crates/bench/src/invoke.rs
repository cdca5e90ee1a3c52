//! `ember bench invoke`: measures Invoke against a live server, over HTTP with SigV4 like any
//! client: warm latency and throughput with many concurrent clients, cold starts (a new
//! container in a running VM), for a no-op `provided` function (Rust, `lambda_runtime`) and a
//! no-op Python one (awslambdaric); and VM creation, by booting VMs with the Linux driver
//! directly (root only).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::Method;
use serde_json::{json, Value};

use ember_client::Client;

#[derive(Debug, clap::Args)]
pub struct InvokeBenchArgs {
    /// Concurrent clients in the warm throughput phase (a one-client phase measures latency
    /// first).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds of each warm phase, per function.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Cold starts measured per function.
    #[arg(long, default_value_t = 10)]
    cold_samples: usize,
    /// VMs booted to measure VM creation (0 skips it; it needs root).
    #[arg(long, default_value_t = 20)]
    vm_boots: usize,
    /// The no-op `provided` function's zip [default: target/functions/rust-hello.zip, built by
    /// tests/functions/rust-hello/build.sh].
    #[arg(long)]
    rust_zip: Option<PathBuf>,
    /// Memory of the benchmark functions, in MB. CPU follows memory (1769 MB = 1 vCPU), so this
    /// sets how much CPU each container's runtime client gets.
    #[arg(long, default_value_t = 1024)]
    memory_mb: u32,
    /// The Python runtime to measure.
    #[arg(long, default_value = "python3.11")]
    python_runtime: String,
    /// Print the results as one JSON object.
    #[arg(long)]
    json: bool,
}

const PY_NOOP: &str = "def handler(event, context):\n    return {}\n";

pub async fn invoke(client: Client, args: InvokeBenchArgs) -> anyhow::Result<()> {
    let client = Arc::new(client);
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
            args.python_runtime.as_str(),
            "app.handler",
            py_zip,
        ),
    ];
    let mut results = serde_json::Map::new();
    for (name, runtime, handler, zip) in &functions {
        recreate(&client, name, runtime, handler, zip, args.memory_mb).await?;
        let latency = warm_phase(&client, name, 1, args.seconds).await?;
        let warm = warm_phase(&client, name, args.clients, args.seconds).await?;
        let cold = cold_phase(&client, name, args.cold_samples).await?;
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
            println!(
                "  cold start (new container, running VM), {} samples: p50 {:.2} ms  p99 {:.2} ms  (runtime init p50 {:.2} ms)",
                cold.samples, cold.p50_ms, cold.p99_ms, cold.init_p50_ms
            );
        }
        results.insert(
            (*name).to_owned(),
            json!({"runtime": runtime, "memory_mb": args.memory_mb, "warm_1_client": latency.to_json(),
                   "warm": warm.to_json(), "clients": args.clients, "cold": cold.to_json()}),
        );
    }
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

/// A zip holding `source` as `app.py` (handler `app.handler`).
pub(crate) fn python_zip(source: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut buf);
    zip.start_file("app.py", zip::write::SimpleFileOptions::default())?;
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
    use base64::Engine as _;
    let path = format!("/2015-03-31/functions/{name}");
    let _ = client.json(Method::DELETE, &path, None).await;
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
        .with_context(|| format!("cannot create {name}"))?;
    Ok(())
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

struct Warm {
    count: usize,
    errors: usize,
    p50_ms: f64,
    p99_ms: f64,
    per_second: f64,
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

    fn to_json(&self) -> Value {
        json!({"invokes": self.count, "errors": self.errors, "p50_ms": self.p50_ms,
               "p99_ms": self.p99_ms, "invokes_per_second": self.per_second,
               "machine_cpu_ms_per_invoke": self.cpu.as_ref().map(|c| c.busy_ms_per_invoke),
               "machine_busy_share": self.cpu.as_ref().map(|c| c.busy_share)})
    }
}

/// `clients` loops invoking `name` for `seconds`, after one warm-up invoke each.
async fn warm_phase(
    client: &Arc<Client>,
    name: &str,
    clients: usize,
    seconds: f64,
) -> anyhow::Result<Warm> {
    // One warm container per client first, so the phase measures warm invokes only.
    let warmups: Vec<_> = (0..clients)
        .map(|_| {
            let client = client.clone();
            let name = name.to_owned();
            tokio::spawn(async move { call(&client, &name, false).await })
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
            let name = name.to_owned();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                while started.elapsed() < length {
                    let t = Instant::now();
                    match call(&client, &name, false).await {
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

struct Cold {
    samples: usize,
    p50_ms: f64,
    p99_ms: f64,
    init_p50_ms: f64,
}

impl Cold {
    fn to_json(&self) -> Value {
        json!({"samples": self.samples, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
               "init_p50_ms": self.init_p50_ms})
    }
}

/// Each sample changes the function's configuration (a new version of it, so no warm container
/// fits) and times the next invoke, which creates a container in the account's running VM.
async fn cold_phase(client: &Client, name: &str, samples: usize) -> anyhow::Result<Cold> {
    let mut walls = Vec::new();
    let mut inits = Vec::new();
    let path = format!("/2015-03-31/functions/{name}/configuration");
    for i in 0..samples {
        let body = json!({"Environment": {"Variables": {"EMBER_BENCH_SAMPLE": i.to_string()}}});
        client.json(Method::PUT, &path, Some(body)).await?;
        let t = Instant::now();
        let headers = call(client, name, true).await?;
        let wall = t.elapsed().as_secs_f64() * 1e3;
        let start = headers
            .get("x-ember-start")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if start != "cold_container" {
            // A VM boot or a warm hit is not what this phase measures.
            continue;
        }
        walls.push(wall);
        if let Some(init) = headers
            .get("x-amz-log-result")
            .and_then(|v| v.to_str().ok())
            .and_then(|b64| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.decode(b64).ok()
            })
            .and_then(|log| init_duration(&String::from_utf8_lossy(&log)))
        {
            inits.push(init);
        }
    }
    Ok(Cold {
        samples: walls.len(),
        p50_ms: percentile(&walls, 0.50),
        p99_ms: percentile(&walls, 0.99),
        init_p50_ms: percentile(&inits, 0.50),
    })
}

fn init_duration(log: &str) -> Option<f64> {
    let rest = log.split("Init Duration: ").nth(1)?;
    rest.split(' ').next()?.parse().ok()
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
