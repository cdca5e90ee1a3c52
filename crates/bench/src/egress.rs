//! `ember bench egress`: what a function's network egress costs (issue 19). On a server of its
//! own (egress on, the default) and a world namespace of its own (`world`: an HTTP server in a
//! network namespace routed from the host, as the end-to-end tests' world), a Python function
//! makes one HTTP request to the world per warm invocation (a new connection, a GET, the page
//! read), timing it itself; invocations arrive at a fixed rate (open loop, each one's latency
//! counted from when it was due), below saturation. Next to it, in the same run:
//!
//! - the floor: the same request, by the same Python code, made from the host at the same rate,
//!   between the invocations (each request three quarters of a period after one), so that both
//!   meet the machine in the same state (the server and its VM up, the same gap since the last
//!   request);
//! - the same request from the VM's and from the container's network namespace, by processes of
//!   the host in those namespaces, in the other quarters ([`hops`]): the cost of each hop of the
//!   data path, apart from the function's process;
//! - the floor as measured before (the host's requests in a loop of their own, after the server
//!   stopped), for comparison with earlier runs;
//! - the same function's warm invocation without the request, at the same rate;
//! - VM creation with the VM's network (its veth pair, addresses, routes and the agent's own
//!   setup) next to VM creation without, with the Linux driver directly (`bench vm`'s way).
//!
//! The targets: the container's request within 0.1 ms of the host's (p50), and VM creation with
//! networking still ≤ 50 ms p50.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::invoke::{percentile, python_zip, recreate};
use crate::live::{self as bench_live, load_average, machine, nan_null, pass_fail, Server};
use crate::world::World;
use ember_client::Client;

mod hops;

#[derive(Debug, clap::Args)]
pub struct EgressBenchArgs {
    /// Invocations (and host requests) per second, a fixed arrival rate.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// How long each series lasts, in seconds.
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
    /// VMs booted one after another, with networking and without (0 skips VM creation).
    #[arg(long, default_value_t = 30)]
    boots: usize,
    /// The function's memory, in MB (1769 MB = one vCPU, as the host's Python has).
    #[arg(long, default_value_t = 1769)]
    memory_mb: u32,
    /// Runtime software directory for the server, so awslambdaric is provisioned once (shared
    /// with the other benchmarks that start their own servers).
    #[arg(long, default_value = "target/bench-runtimes")]
    runtime_dir: PathBuf,
    /// The function's runtime [default: python3.11 if the host has it, else its newest
    /// python3.N].
    #[arg(long)]
    python_runtime: Option<String>,
    /// Where the server's log goes, as `server.log`.
    #[arg(long, default_value = "target/bench-egress")]
    log_dir: PathBuf,
    /// Print the results as one JSON object.
    #[arg(long)]
    json: bool,
}

/// The targets: the container's request at most this much slower than the host's (p50), and
/// VM creation with networking at most this long (p50).
const REQUEST_OVERHEAD_TARGET_MS: f64 = 0.1;
const VM_CREATION_TARGET_MS: f64 = 50.0;

/// Keep-alives that outlast the run: every invocation after the warm-up is warm.
const SERVE_ARGS: &[&str] = &["--container-keep-alive", "600", "--vm-keep-alive", "600"];
const FUNCTION: &str = "egress";
const WARM_UP: usize = 20;

/// The function, and the host's floor when run as a program (`python app.py HOST COUNT RATE`
/// prints each request's time in ns): the very same request code in both.
const APP: &str = r#"import http.client
import json
import os
import sys
import time

PAGE = b"hello from the world\n"


def request(host):
    start = time.perf_counter_ns()
    conn = http.client.HTTPConnection(host, 80, timeout=5)
    conn.request("GET", "/")
    response = conn.getresponse()
    body = response.read()
    conn.close()
    elapsed = time.perf_counter_ns() - start
    if response.status != 200 or body != PAGE:
        raise RuntimeError(f"unexpected answer {response.status} {body!r}")
    return elapsed


def handler(event, context):
    if event.get("skip"):
        return {}
    if event.get("netns"):
        return {"netns": os.stat("/proc/self/ns/net").st_ino}
    return {"request_ns": request(event["host"])}


if __name__ == "__main__" and sys.argv[2:] == ["serve"]:
    # One request per line read, its time printed: the floor between invocations.
    request(sys.argv[1])
    for _ in sys.stdin:
        print(request(sys.argv[1]), flush=True)
elif __name__ == "__main__":
    host, count, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    request(host)
    start = time.monotonic() + 0.05
    times = []
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        times.append(request(host))
    print(json.dumps(times))
"#;

/// p50, p99, min and max of some samples, in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stats {
    samples: usize,
    p50: f64,
    p99: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(values: &[f64]) -> Stats {
        Stats {
            samples: values.len(),
            p50: percentile(values, 0.5),
            p99: percentile(values, 0.99),
            min: percentile(values, 0.0),
            max: percentile(values, 1.0),
        }
    }

    fn to_json(self) -> Value {
        json!({"samples": self.samples, "p50_ms": nan_null(self.p50), "p99_ms": nan_null(self.p99),
               "min_ms": nan_null(self.min), "max_ms": nan_null(self.max)})
    }
}

/// What one run measured.
#[derive(Debug)]
struct Results {
    /// The request, timed by the function in its container.
    container_request: Stats,
    /// The same request from the host between the invocations (the floor).
    host_request: Stats,
    /// The same request from a host process in the VM's network namespace.
    vm_netns_request: Stats,
    /// The same from a host process in the container's network namespace.
    container_netns_request: Stats,
    /// The host's requests in a loop of their own after the server stopped (the floor before).
    host_request_alone: Stats,
    /// Warm invocations making the request, from due time to answer.
    invoke_with_request: Stats,
    /// Warm invocations without it.
    invoke_without: Stats,
    /// Invocations that failed, of both series.
    errors: usize,
    vm_with_network: Option<Stats>,
    vm_without_network: Option<Stats>,
}

impl Results {
    fn overhead_ms(&self) -> f64 {
        self.container_request.p50 - self.host_request.p50
    }

    /// The p50 cost of each hop, from the floors: the VM's namespace over the host's, the
    /// container's namespace over the VM's, the function over its namespace; and in all.
    fn hops(&self) -> (f64, f64, f64, f64) {
        (
            self.vm_netns_request.p50 - self.host_request.p50,
            self.container_netns_request.p50 - self.vm_netns_request.p50,
            self.container_request.p50 - self.container_netns_request.p50,
            self.overhead_ms(),
        )
    }

    fn request_pass(&self) -> bool {
        self.overhead_ms() <= REQUEST_OVERHEAD_TARGET_MS && self.errors == 0
    }

    fn vm_pass(&self) -> Option<bool> {
        self.vm_with_network.map(|s| s.p50 <= VM_CREATION_TARGET_MS)
    }
}

pub async fn run(args: EgressBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate.is_finite() && args.rate > 0.0 && args.rate <= 1000.0,
        "--rate must be more than 0 and at most 1000 per second"
    );
    let count = (args.rate * args.seconds).round();
    anyhow::ensure!(
        (1.0..=1e6).contains(&count),
        "--rate × --seconds must come to between 1 and 10^6 requests"
    );
    let count = count as usize;
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "the egress benchmark needs root (a network namespace, VMs)"
    );
    let runtime_dir = bench_live::absolute(&args.runtime_dir)?;
    let python =
        bench_live::provision(&runtime_dir, args.python_runtime.as_deref(), "egress").await?;

    let world = World::create()?;
    World::serve(world.listen(80)?)?;
    let host = world.slot.ip.to_string();

    let log = args.log_dir.join("server.log");
    let server = Server::start_this(SERVE_ARGS, &runtime_dir, &log).await?;
    let load_start = load_average();
    let measured = measure(&server, &args, &python, &host, count).await;
    let stopped = server.stop().await;
    let (series, errors) = measured?;
    stopped?;
    let host_request_alone = host_floor(&python.executable, &host, count, args.rate).await?;
    let (vm_with_network, vm_without_network) = if args.boots > 0 {
        let (with, without) = boots_with_and_without_network(args.boots).await?;
        (Some(Stats::of(&with)), Some(Stats::of(&without)))
    } else {
        (None, None)
    };
    let load_end = load_average();
    drop(world);

    let results = Results {
        container_request: Stats::of(&series.container_request),
        host_request: Stats::of(&series.host),
        vm_netns_request: Stats::of(&series.vm_netns),
        container_netns_request: Stats::of(&series.container_netns),
        host_request_alone: Stats::of(&host_request_alone),
        invoke_with_request: Stats::of(&series.invoke_with_request),
        invoke_without: Stats::of(&series.invoke_without),
        errors,
        vm_with_network,
        vm_without_network,
    };
    let command = format!("ember serve {}", SERVE_ARGS.join(" "));
    if args.json {
        println!(
            "{}",
            json!({
                "machine": machine().to_json(),
                "server": command,
                "runtime": python.runtime,
                "memory_mb": args.memory_mb,
                "rate_per_second": args.rate,
                "seconds": args.seconds,
                "load_average_start": load_start,
                "load_average_end": load_end,
                "container_request": results.container_request.to_json(),
                "host_request": results.host_request.to_json(),
                "vm_netns_request": results.vm_netns_request.to_json(),
                "container_netns_request": results.container_netns_request.to_json(),
                "host_request_alone": results.host_request_alone.to_json(),
                "invoke_with_request": results.invoke_with_request.to_json(),
                "invoke_without_request": results.invoke_without.to_json(),
                "errors": results.errors,
                "vm_creation_with_network": results.vm_with_network.map(Stats::to_json),
                "vm_creation_without_network": results.vm_without_network.map(Stats::to_json),
                "hops_p50_ms": {
                    "host_link_table_nat": nan_null(results.hops().0),
                    "container_link_vm_table_nat": nan_null(results.hops().1),
                    "function_process": nan_null(results.hops().2),
                },
                "target": {
                    "request_overhead_p50_ms_at_most": REQUEST_OVERHEAD_TARGET_MS,
                    "request_overhead_p50_ms": nan_null(results.overhead_ms()),
                    "request_pass": results.request_pass(),
                    "vm_creation_p50_ms_at_most": VM_CREATION_TARGET_MS,
                    "vm_pass": results.vm_pass(),
                },
            })
        );
    } else {
        print!(
            "{}",
            report(
                &results,
                &format!(
                    "Server: {command} (log {}); {} at {} MB; {} requests at {}/s per series; \
                     load average {} → {}",
                    log.display(),
                    python.runtime,
                    args.memory_mb,
                    count,
                    args.rate,
                    load_start.map_or("?".to_owned(), |l| format!("{l:.2}")),
                    load_end.map_or("?".to_owned(), |l| format!("{l:.2}")),
                )
            )
        );
    }
    Ok(())
}

/// What [`measure`] times, in ms.
#[derive(Debug, Default)]
struct Series {
    /// The function's own request times.
    container_request: Vec<f64>,
    /// The floors between its invocations: the host's, from the VM's namespace, from the
    /// container's namespace.
    host: Vec<f64>,
    vm_netns: Vec<f64>,
    container_netns: Vec<f64>,
    /// Invocation latencies with the request, and without.
    invoke_with_request: Vec<f64>,
    invoke_without: Vec<f64>,
}

/// The function's series on `server`, with the floors between its invocations; and how many
/// invocations failed.
async fn measure(
    server: &Server,
    args: &EgressBenchArgs,
    python: &ember_runtimes::Python,
    host: &str,
    count: usize,
) -> anyhow::Result<(Series, usize)> {
    let client = Arc::new(server.admin_client(bench_live::http_client(Duration::from_secs(60))?)?);
    let zip = python_zip(APP)?;
    recreate(
        &client,
        FUNCTION,
        &python.runtime,
        "app.handler",
        &zip,
        args.memory_mb,
    )
    .await?;
    let with = json!({"host": host});
    let without = json!({"skip": true});
    for _ in 0..WARM_UP {
        let answer = invoke(&client, &with).await?;
        anyhow::ensure!(
            answer["request_ns"].is_u64(),
            "the function's request failed: {answer}"
        );
        invoke(&client, &without).await?;
    }
    // The floors: the function's code run by the same interpreter, on the host and in the
    // namespaces of the container the function runs in (one container: every invocation is
    // sequential and warm).
    let answer = invoke(&client, &json!({"netns": true})).await?;
    let inode = answer["netns"]
        .as_u64()
        .with_context(|| format!("the function did not say its namespace: {answer}"))?;
    let (container_ns, vm_ns) = hops::namespaces_of(inode)?;
    let dir = tempfile::tempdir()?;
    let app = dir.path().join("app.py");
    std::fs::write(&app, APP)?;
    let exe = &python.executable;
    // The host's last, three quarters of a period after the invocation: whatever an
    // invocation leaves running (the agent's freeze, the server's bookkeeping) is over by then,
    // so it cannot slow the floor the target is judged against.
    let mut floors = [
        hops::Requester::start(exe, &app, host, Some(container_ns)).await?,
        hops::Requester::start(exe, &app, host, Some(vm_ns)).await?,
        hops::Requester::start(exe, &app, host, None).await?,
    ];
    let (with_latency, answers, floor_times, with_errors) =
        open_loop(&client, &with, count, args.rate, &mut floors).await?;
    let request: Vec<f64> = answers
        .iter()
        .filter_map(|a| a["request_ns"].as_u64())
        .map(|ns| ns as f64 / 1e6)
        .collect();
    let (without_latency, _, _, without_errors) =
        open_loop(&client, &without, count, args.rate, &mut []).await?;
    let [container_netns, vm_netns, host] = floor_times;
    Ok((
        Series {
            container_request: request,
            host,
            vm_netns,
            container_netns,
            invoke_with_request: with_latency,
            invoke_without: without_latency,
        },
        with_errors + without_errors,
    ))
}

/// One warm invocation of the function with `event`; its answer.
async fn invoke(client: &Client, event: &Value) -> anyhow::Result<Value> {
    let path = format!("/2015-03-31/functions/{FUNCTION}/invocations");
    let reply = client
        .call(Method::POST, &path, &[], serde_json::to_vec(event)?)
        .await?;
    anyhow::ensure!(
        reply.headers.get("x-amz-function-error").is_none(),
        "{FUNCTION} failed: {}",
        String::from_utf8_lossy(&reply.body)
    );
    serde_json::from_slice(&reply.body).context("the function answered no JSON")
}

/// `count` invocations with `event`, invocation `i` due at `i / rate` s from the start, each
/// sent when due whatever the others are doing; between two invocations, one request of each
/// of `floors`, spread evenly (with three, a quarter period apart): (latencies from due time to
/// answer in ms, the answers, each floor's request times in ms, failed invocations).
async fn open_loop<const N: usize>(
    client: &Arc<Client>,
    event: &Value,
    count: usize,
    rate: f64,
    floors: &mut [hops::Requester; N],
) -> anyhow::Result<(Vec<f64>, Vec<Value>, [Vec<f64>; N], usize)> {
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(count);
    let mut floor_times = std::array::from_fn(|_| Vec::with_capacity(count));
    for i in 0..count {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let (client, event) = (client.clone(), event.clone());
        tasks.push(tokio::spawn(async move {
            let answer = invoke(&client, &event).await;
            (due.elapsed().as_secs_f64() * 1e3, answer)
        }));
        for (k, (floor, times)) in floors.iter_mut().zip(&mut floor_times).enumerate() {
            let at = (i as f64 + (k + 1) as f64 / (N + 1) as f64) / rate;
            tokio::time::sleep_until(start + Duration::from_secs_f64(at)).await;
            times.push(floor.request().await?);
        }
    }
    let (mut latencies, mut answers, mut errors) = (Vec::new(), Vec::new(), 0);
    for task in tasks {
        match task.await {
            Ok((ms, Ok(answer))) => {
                latencies.push(ms);
                answers.push(answer);
            }
            Ok((_, Err(err))) => {
                if errors == 0 {
                    eprintln!("egress: an invocation failed: {err:#}");
                }
                errors += 1;
            }
            Err(_) => errors += 1,
        }
    }
    Ok((latencies, answers, floor_times, errors))
}

/// The floor as measured before the floors between invocations: the function's own request
/// code run on the host by the same interpreter, `count` requests at `rate` in a loop of their
/// own, after the server stopped; each one's time in ms.
async fn host_floor(
    python: &std::path::Path,
    host: &str,
    count: usize,
    rate: f64,
) -> anyhow::Result<Vec<f64>> {
    let dir = tempfile::tempdir()?;
    let app = dir.path().join("app.py");
    std::fs::write(&app, APP)?;
    let out = tokio::process::Command::new(python)
        .arg(&app)
        .args([host, &count.to_string(), &rate.to_string()])
        .output()
        .await
        .with_context(|| format!("cannot run {}", python.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "the host's requests failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let times: Vec<u64> =
        serde_json::from_slice(&out.stdout).context("the host's requests printed no times")?;
    Ok(times.into_iter().map(|ns| ns as f64 / 1e6).collect())
}

/// VM creation times (ms), `n` boots with the VM's network and `n` without, alternating (each
/// boot follows the other kind's teardown, so both see the same host), with the Linux driver
/// directly: from spawning the agent to its hello, as `ember bench vm`. The networked driver's
/// host side is an instance of its own (`ember_net::host`, a /24 of the default pool, its
/// nftables table), as `ember serve` sets it up.
async fn boots_with_and_without_network(n: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    use ember_net::host::{HostConfig, HostNetwork};
    use ember_vm::linux::{default_agent_path, LinuxConfig, LinuxDriver};
    use ember_vm::{VmDriver, VmSpec};
    let state = tempfile::tempdir()?;
    let mut config = LinuxConfig::new(state.path(), default_agent_path()?);
    config.cgroup_prefix = format!("ember/bench-egress-{}", std::process::id()).into();
    let driver = LinuxDriver::new(config.clone()).context("VM creation needs root")?;
    // The API port is never called: these VMs run no function.
    let host = HostNetwork::start(HostConfig::new(1))
        .map_err(|e| anyhow::anyhow!(ember_stdx::error_chain(&e)))
        .context("cannot set up the VMs' network")?;
    let host = Arc::new(host);
    config.cgroup_prefix = format!("ember/bench-egress-net-{}", std::process::id()).into();
    config.network = Some(host.clone());
    let networked = LinuxDriver::new(config).context("VM creation needs root")?;
    let spec = |id: String| VmSpec {
        id,
        memory_mb: 2048,
        vcpus: 2,
        pids_max: 16_448,
    };
    let measured = async {
        let (mut with, mut without) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            let t = Instant::now();
            let vm = driver.boot(spec(format!("egress-{i}"))).await?;
            without.push(t.elapsed().as_secs_f64() * 1e3);
            vm.shutdown().await?;
            let t = Instant::now();
            let vm = networked.boot(spec(format!("egress-net-{i}"))).await?;
            with.push(t.elapsed().as_secs_f64() * 1e3);
            vm.shutdown().await?;
        }
        anyhow::Ok((with, without))
    }
    .await;
    driver.cleanup_stale()?;
    networked.cleanup_stale()?;
    drop(networked);
    host.shutdown()
        .map_err(|e| anyhow::anyhow!(ember_stdx::error_chain(&e)))?;
    measured
}

/// The text report.
fn report(r: &Results, server_line: &str) -> String {
    let mut out = String::new();
    let row = |what: &str, s: &Stats| {
        format!(
            "  {what:<52}  {:>7.3}  {:>7.3}  {:>7.3}  {:>7.3}  {:>6}\n",
            s.p50, s.p99, s.min, s.max, s.samples
        )
    };
    out += &format!("Machine: {}\n{server_line}\n\n", machine().describe());
    out += &format!(
        "  {:<52}  {:>7}  {:>7}  {:>7}  {:>7}  {:>6}\n",
        "ms", "p50", "p99", "min", "max", "n"
    );
    out += &row(
        "one HTTP request to the world, from the container",
        &r.container_request,
    );
    out += &row("floor: the same request from the host", &r.host_request);
    out += &row(
        "  the same from the VM's network namespace",
        &r.vm_netns_request,
    );
    out += &row(
        "  the same from the container's network namespace",
        &r.container_netns_request,
    );
    out += &row(
        "  the floor alone, after the server stopped (before)",
        &r.host_request_alone,
    );
    out += &row(
        "warm invocation making that request",
        &r.invoke_with_request,
    );
    out += &row("warm invocation without it", &r.invoke_without);
    if let (Some(with), Some(without)) = (&r.vm_with_network, &r.vm_without_network) {
        out += &row("VM creation with networking", with);
        out += &row("VM creation without networking", without);
    }
    let (host, vm, netns, function) = r.hops();
    out += &format!(
        "\nPer hop (p50): the host's end of the VM's link, table and NAT {host:+.3} ms; the \
         container's link, the VM's table and NAT {vm:+.3} ms; the function's process (cgroup, \
         seccomp, the invocation's wake-up) {netns:+.3} ms; in all {function:+.3} ms\n"
    );
    if r.errors > 0 {
        out += &format!(
            "\n{} invocations failed (the first one's error is above)\n",
            r.errors
        );
    }
    out += &format!(
        "\nTarget: the container's request within {REQUEST_OVERHEAD_TARGET_MS} ms of the \
         host's (p50 {:+.3} ms): {} (against the floor alone, after the server stopped: \
         {:+.3} ms)\n",
        r.overhead_ms(),
        pass_fail(r.request_pass()),
        r.container_request.p50 - r.host_request_alone.p50,
    );
    if let (Some(pass), Some(with)) = (r.vm_pass(), &r.vm_with_network) {
        out += &format!(
            "Target: VM creation with networking ≤ {VM_CREATION_TARGET_MS} ms p50 ({:.1} ms): {}\n",
            with.p50,
            pass_fail(pass)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(p50: f64) -> Stats {
        Stats {
            samples: 10,
            p50,
            p99: p50 * 2.0,
            min: p50 / 2.0,
            max: p50 * 3.0,
        }
    }

    fn results(container: f64, host: f64, errors: usize, vm: Option<f64>) -> Results {
        Results {
            container_request: stats(container),
            host_request: stats(host),
            vm_netns_request: stats(host + 0.02),
            container_netns_request: stats(host + 0.03),
            host_request_alone: stats(host / 2.0),
            invoke_with_request: stats(3.0),
            invoke_without: stats(2.0),
            errors,
            vm_with_network: vm.map(stats),
            vm_without_network: vm.map(|_| stats(20.0)),
        }
    }

    #[test]
    fn the_request_target_is_the_p50_difference_and_no_errors() {
        assert!(results(0.55, 0.50, 0, None).request_pass());
        assert!(results(0.60, 0.50, 0, None).request_pass());
        assert!(!results(0.61, 0.50, 0, None).request_pass());
        assert!(
            !results(0.50, 0.50, 1, None).request_pass(),
            "a failure fails it"
        );
        assert_eq!(results(0.5, 0.5, 0, None).vm_pass(), None);
        assert_eq!(results(0.5, 0.5, 0, Some(50.0)).vm_pass(), Some(true));
        assert_eq!(results(0.5, 0.5, 0, Some(50.1)).vm_pass(), Some(false));
    }

    #[test]
    fn the_report_shows_every_series_and_both_verdicts() {
        let text = report(&results(0.7, 0.5, 0, Some(30.0)), "Server: x");
        for line in [
            "from the container",
            "floor: the same request from the host",
            "the same from the VM's network namespace",
            "the same from the container's network namespace",
            "the floor alone, after the server stopped",
            "warm invocation making that request",
            "VM creation with networking",
            "VM creation without networking",
            "(p50 +0.200 ms): FAIL (against the floor alone, after the server stopped: +0.450 ms)",
            "the host's end of the VM's link, table and NAT +0.020 ms",
            "the container's link, the VM's table and NAT +0.010 ms",
            "(cgroup, seccomp, the invocation's wake-up) +0.170 ms; in all +0.200 ms",
            "(30.0 ms): PASS",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn stats_of_nothing_are_nan_and_null_in_json() {
        let s = Stats::of(&[]);
        assert!(s.p50.is_nan());
        assert_eq!(s.to_json()["p50_ms"], Value::Null);
    }
}
