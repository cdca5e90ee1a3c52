//! `ember bench provisioned`: how long provisioned concurrency takes to be READY. On a server of
//! its own, a Python function's published version gets `--count` environments
//! (PutProvisionedConcurrencyConfig), and the time from the Put to the first Get answering
//! `READY` is measured; the config is then deleted and its environments released, and the run
//! repeats (`--runs`). In the same run, next to it, the floor: one environment's cold start
//! (an invocation of the function's `$LATEST` right after a configuration change, so that it
//! needs a new container), measured the same way from the client. The target: `--count` 16
//! READY within 2 s of the Put at the 90th percentile.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::invoke::{percentile, python_zip, recreate};
use crate::live::{self as bench_live, load_average, machine, pass_fail, Server};
use ember_client::Client;

#[derive(Debug, clap::Args)]
pub struct ProvisionedBenchArgs {
    /// Provisioned environments per run.
    #[arg(long, default_value_t = 16)]
    count: u32,
    /// Runs (each: Put, wait for READY, Delete, wait for the release).
    #[arg(long, default_value_t = 20)]
    runs: u32,
    /// The function's memory, in MB.
    #[arg(long, default_value_t = 128)]
    memory_mb: u32,
    /// Runtime software directory for the server, so awslambdaric is provisioned once (shared
    /// with `ember bench burst` and `ember bench sizing`).
    #[arg(long, default_value = "target/bench-runtimes")]
    runtime_dir: PathBuf,
    /// The function's runtime [default: python3.11 if the host has it, else its newest
    /// python3.N].
    #[arg(long)]
    python_runtime: Option<String>,
    /// Where the server's log goes, as `server.log`.
    #[arg(long, default_value = "target/bench-provisioned")]
    log_dir: PathBuf,
    /// Print the results as one JSON object.
    #[arg(long)]
    json: bool,
}

/// The target: this many seconds from the Put to READY, at the 90th percentile.
const TARGET_S: f64 = 2.0;

/// The server's flags: keep-alives that outlast the run, so the VMs made by the first run are
/// there for the next (each run measures creating environments, not booting VMs).
const SERVE_ARGS: &[&str] = &["--container-keep-alive", "600", "--vm-keep-alive", "600"];

/// A handler that imports what a small real function would (json, uuid) and answers at once.
const PY_APP: &str = "import json\nimport uuid\n\nINSTANCE = str(uuid.uuid4())\n\n\n\
                      def handler(event, context):\n    return {\"instance\": INSTANCE}\n";

/// One run's measurements.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// From the Put's send to the first Get that answered READY.
    ready_s: f64,
    /// A cold start's invocation, end to end.
    cold_s: f64,
}

pub async fn run(args: ProvisionedBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.count >= 1, "--count must be at least 1");
    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    let runtime_dir = bench_live::absolute(&args.runtime_dir)?;
    let python =
        bench_live::provision(&runtime_dir, args.python_runtime.as_deref(), "provisioned").await?;
    let log = args.log_dir.join("server.log");
    let server = Server::start_this(SERVE_ARGS, &runtime_dir, &log).await?;
    let load_start = load_average();
    let measured = measure(&server, &args, &python.runtime).await;
    let load_end = load_average();
    let stopped = server.stop().await;
    let runs = measured?;
    stopped?;

    let ready: Vec<f64> = runs.iter().map(|r| r.ready_s).collect();
    let cold: Vec<f64> = runs.iter().map(|r| r.cold_s).collect();
    let p90 = percentile(&ready, 0.9);
    let pass = p90 <= TARGET_S;
    let command = format!("ember serve {}", SERVE_ARGS.join(" "));
    if args.json {
        let stats = |v: &[f64]| {
            json!({"p50": percentile(v, 0.5), "p90": percentile(v, 0.9),
                   "min": percentile(v, 0.0), "max": percentile(v, 1.0)})
        };
        println!(
            "{}",
            json!({
                "machine": machine().to_json(),
                "server": command,
                "runtime": python.runtime,
                "count": args.count,
                "memory_mb": args.memory_mb,
                "runs": args.runs,
                "load_average_start": load_start,
                "load_average_end": load_end,
                "ready_seconds": stats(&ready),
                "cold_start_seconds": stats(&cold),
                "target": {"p90_ready_seconds_at_most": TARGET_S, "pass": pass},
            })
        );
    } else {
        let ms = |v: &[f64], p: f64| format!("{:.0}", percentile(v, p) * 1e3);
        println!("Machine: {}", machine().describe());
        println!(
            "Server: {command} (log {}); {} at {} MB; load average {} → {}",
            log.display(),
            python.runtime,
            args.memory_mb,
            load_start.map_or("?".to_owned(), |l| format!("{l:.2}")),
            load_end.map_or("?".to_owned(), |l| format!("{l:.2}")),
        );
        println!(
            "{} runs: Put {} environments, wait for READY (Get every 10 ms), Delete, wait for \
             the release.",
            args.runs, args.count
        );
        println!();
        println!(
            "  {:<42}  {:>6}  {:>6}  {:>6}  {:>6}",
            "ms", "p50", "p90", "min", "max"
        );
        for (what, v) in [
            (format!("Put → READY, {} environments", args.count), &ready),
            (
                "floor: one cold start (invoke, end to end)".to_owned(),
                &cold,
            ),
        ] {
            println!(
                "  {what:<42}  {:>6}  {:>6}  {:>6}  {:>6}",
                ms(v, 0.5),
                ms(v, 0.9),
                ms(v, 0.0),
                ms(v, 1.0)
            );
        }
        println!();
        println!(
            "Target: {} environments READY within {TARGET_S} s of the Put (p90 {:.0} ms): {}",
            args.count,
            p90 * 1e3,
            pass_fail(pass)
        );
    }
    Ok(())
}

/// Creates the function and its version, then measures `--runs` runs.
async fn measure(
    server: &Server,
    args: &ProvisionedBenchArgs,
    runtime: &str,
) -> anyhow::Result<Vec<Run>> {
    let client = server.admin_client(bench_live::http_client(Duration::from_secs(120))?)?;
    let zip = python_zip(PY_APP)?;
    recreate(&client, "pc", runtime, "app.handler", &zip, args.memory_mb).await?;
    let version = client
        .json(
            Method::POST,
            "/2015-03-31/functions/pc/versions",
            Some(json!({})),
        )
        .await
        .context("cannot publish a version")?;
    let version = version["Version"]
        .as_str()
        .context("PublishVersion answered no Version")?
        .to_owned();
    let path = format!("/2019-09-30/functions/pc/provisioned-concurrency?Qualifier={version}");
    let mut runs = Vec::new();
    for i in 0..args.runs {
        let cold_s = cold_start(&client, i).await?;
        let put = Instant::now();
        client
            .json(
                Method::PUT,
                &path,
                Some(json!({"ProvisionedConcurrentExecutions": args.count})),
            )
            .await
            .context("PutProvisionedConcurrencyConfig failed")?;
        let ready_s = loop {
            let got = client.json(Method::GET, &path, None).await?;
            match got["Status"].as_str() {
                Some("READY") => break put.elapsed().as_secs_f64(),
                Some("FAILED") => anyhow::bail!(
                    "provisioning failed: {}",
                    got["StatusReason"].as_str().unwrap_or("?")
                ),
                _ => {}
            }
            anyhow::ensure!(
                put.elapsed() < Duration::from_secs(120),
                "not READY within 120 s: {got}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        client.json(Method::DELETE, &path, None).await?;
        wait_released(&client).await?;
        eprintln!(
            "provisioned: run {}/{}: READY in {:.0} ms; cold start {:.0} ms",
            i + 1,
            args.runs,
            ready_s * 1e3,
            cold_s * 1e3
        );
        runs.push(Run { ready_s, cold_s });
    }
    Ok(runs)
}

/// One cold start of the function's `$LATEST`: a configuration change (a new revision) makes
/// its next invocation need a new container.
async fn cold_start(client: &Client, run: u32) -> anyhow::Result<f64> {
    client
        .json(
            Method::PUT,
            "/2015-03-31/functions/pc/configuration",
            Some(json!({"Description": format!("run {run}")})),
        )
        .await?;
    let started = Instant::now();
    let reply = client
        .call(
            Method::POST,
            "/2015-03-31/functions/pc/invocations",
            &[],
            b"{}".to_vec(),
        )
        .await?;
    let took = started.elapsed().as_secs_f64();
    let start = reply
        .headers
        .get("x-ember-start")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?");
    anyhow::ensure!(
        start != "warm" && !reply.headers.contains_key("x-amz-function-error"),
        "the floor's invocation was not a successful cold start ({start})"
    );
    Ok(took)
}

/// Waits until the fleet holds no provisioned container.
async fn wait_released(client: &Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let fleet = client.json(Method::GET, "/ember/v1/fleet", None).await?;
        if provisioned_containers(&fleet) == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "provisioned environments still there 30 s after the Delete"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Containers of the fleet's answer kept for provisioned concurrency.
fn provisioned_containers(fleet: &Value) -> usize {
    fleet["ActivePool"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|vm| vm["Containers"].as_array().into_iter().flatten())
        .filter(|c| !c["Provisioned"].is_null())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_provisioned_containers() {
        let fleet = json!({"ActivePool": [
            {"Containers": [{"Provisioned": "1"}, {"Provisioned": null}]},
            {"Containers": [{"Provisioned": "live"}]},
            {"Containers": []}]});
        assert_eq!(provisioned_containers(&fleet), 2);
        assert_eq!(provisioned_containers(&json!({})), 0);
    }
}
