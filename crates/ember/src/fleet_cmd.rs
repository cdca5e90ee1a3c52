//! `ember fleet [--watch] [--interval S] [--json]`: shows the server's VM fleet (the warming and
//! active pools, the request rate and the replenish count N) from `GET /ember/v1/fleet`, as a
//! table or as the raw JSON; `--watch` redraws it until interrupted. Needs the admin's keys.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use reqwest::Method;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::client::Client;

/// Moves the cursor home and clears the screen.
const CLEAR: &str = "\x1b[H\x1b[2J";

#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    /// Redraw every --interval seconds until interrupted.
    #[arg(long, short = 'w')]
    watch: bool,
    /// Seconds between redraws with --watch.
    #[arg(long, default_value = "1", value_parser = parse_interval)]
    interval: Duration,
    /// Print the server's JSON as it is.
    #[arg(long)]
    json: bool,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.01..=86_400.0).contains(&secs) {
        return Err("the interval must be between 0.01 and 86400 seconds".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

pub async fn run(client: &Client, args: FleetArgs) -> anyhow::Result<()> {
    if !args.watch {
        print!("{}", frame(client, args.json).await?);
        return Ok(());
    }
    let terminal = std::io::stdout().is_terminal();
    let mut first = true;
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let text = frame(client, args.json).await?;
        let mut out = std::io::stdout().lock();
        if terminal {
            write!(out, "{CLEAR}{text}")?;
        } else {
            // Frames one after another, a blank line between, so the output can be piped.
            write!(out, "{}{text}", if first { "" } else { "\n" })?;
        }
        out.flush()?;
        drop(out);
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = &mut interrupted => return Ok(()),
        }
    }
}

/// One snapshot of the fleet, as the text to print.
async fn frame(client: &Client, json: bool) -> anyhow::Result<String> {
    let reply = client
        .call(Method::GET, "/ember/v1/fleet", &[], vec![])
        .await?;
    if json {
        let mut text = String::from_utf8_lossy(&reply.body).into_owned();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        return Ok(text);
    }
    let fleet: Fleet =
        serde_json::from_slice(&reply.body).context("Ember sent a fleet that does not parse")?;
    Ok(render(&fleet, OffsetDateTime::now_utc()))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Fleet {
    #[serde(default)]
    warming_pool: Vec<Vm>,
    #[serde(default)]
    active_pool: Vec<Vm>,
    #[serde(default)]
    retiring: Vec<Vm>,
    #[serde(default)]
    request_rate_per_second: f64,
    #[serde(default)]
    runtime_request_rates: BTreeMap<String, f64>,
    #[serde(default)]
    replenish_count: u32,
    #[serde(default)]
    replenish_reason: String,
    #[serde(default)]
    vm_boot_seconds: f64,
    host_capacity: HostCapacity,
    #[serde(default)]
    accounts: Vec<Account>,
    #[serde(rename = "AccountMemoryMB", default)]
    account_memory_mb: Option<u64>,
    #[serde(default)]
    provisioned: Vec<Provisioned>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Provisioned {
    account_id: String,
    function_name: String,
    qualifier: String,
    requested: u32,
    ready: u32,
    creating: u32,
    status: String,
    #[serde(default)]
    status_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Account {
    account_id: String,
    weight: u64,
    #[serde(rename = "HeldMemoryMB")]
    held_memory_mb: u64,
    #[serde(rename = "FairShareMB")]
    fair_share_mb: u64,
    waiting: usize,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Vm {
    vm_id: String,
    #[serde(default)]
    account_id: Option<String>,
    #[serde(rename = "MemoryMB")]
    memory_mb: u64,
    #[serde(rename = "FreeMemoryMB", default)]
    free_memory_mb: u64,
    #[serde(default)]
    runtime: Option<String>,
    since: String,
    #[serde(default)]
    booting: bool,
    #[serde(default)]
    pending_containers: usize,
    #[serde(default)]
    containers: Vec<Container>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Container {
    state: String,
    #[serde(default)]
    provisioned: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HostCapacity {
    #[serde(rename = "MemoryMB")]
    memory_mb: u64,
    #[serde(rename = "VCpus")]
    v_cpus: u32,
    #[serde(rename = "ReservedMemoryMB")]
    reserved_memory_mb: u64,
}

/// The fleet as a header line and one table per pool.
fn render(fleet: &Fleet, now: OffsetDateTime) -> String {
    let host = &fleet.host_capacity;
    let mut out = format!(
        "requests {:.1}/s | N = {} ({}) | host memory {} / {} MB used, {} vCPUs | VM boot {:.0} ms\n",
        fleet.request_rate_per_second,
        fleet.replenish_count,
        fleet.replenish_reason,
        host.reserved_memory_mb,
        host.memory_mb,
        host.v_cpus,
        fleet.vm_boot_seconds * 1000.0,
    );
    if !fleet.runtime_request_rates.is_empty() {
        let rates: Vec<String> = fleet
            .runtime_request_rates
            .iter()
            .map(|(runtime, rate)| format!("{runtime} {rate:.1}/s"))
            .collect();
        out.push_str(&format!("by runtime: {}\n", rates.join(", ")));
    }

    out.push_str(&format!("\nWARMING POOL ({})\n", fleet.warming_pool.len()));
    let rows = fleet.warming_pool.iter().map(|vm| {
        vec![
            vm.vm_id.clone(),
            format!("{} MB", vm.memory_mb),
            vm.runtime.clone().unwrap_or_else(|| "any".into()),
            age(vm, now),
        ]
    });
    out.push_str(&table(&["VM", "MEMORY", "RUNTIME", "AGE"], rows));

    out.push_str(&format!("\nACTIVE POOL ({})\n", fleet.active_pool.len()));
    let rows = fleet.active_pool.iter().map(|vm| {
        let busy = vm.containers.iter().filter(|c| c.state == "busy").count();
        let idle = vm.containers.len() - busy;
        let mut containers = format!("{busy} busy / {idle} idle");
        let provisioned = vm
            .containers
            .iter()
            .filter(|c| c.provisioned.is_some())
            .count();
        if provisioned > 0 {
            containers.push_str(&format!(" ({provisioned} provisioned)"));
        }
        if vm.pending_containers > 0 {
            containers.push_str(&format!(" / {} starting", vm.pending_containers));
        }
        vec![
            vm.vm_id.clone(),
            vm.account_id.clone().unwrap_or_default(),
            format!(
                "{} / {} MB",
                vm.memory_mb.saturating_sub(vm.free_memory_mb),
                vm.memory_mb
            ),
            containers,
            age(vm, now),
        ]
    });
    out.push_str(&table(
        &["VM", "ACCOUNT", "MEMORY USED", "CONTAINERS", "AGE"],
        rows,
    ));

    if !fleet.accounts.is_empty() {
        let ceiling = fleet
            .account_memory_mb
            .map(|mb| format!(", at most {mb} MB each"))
            .unwrap_or_default();
        out.push_str(&format!("\nACCOUNTS ({}{ceiling})\n", fleet.accounts.len()));
        let rows = fleet.accounts.iter().map(|a| {
            vec![
                a.account_id.clone(),
                a.weight.to_string(),
                format!("{} MB", a.held_memory_mb),
                format!("{} MB", a.fair_share_mb),
                a.waiting.to_string(),
            ]
        });
        out.push_str(&table(
            &["ACCOUNT", "WEIGHT", "HELD", "FAIR SHARE", "WAITING"],
            rows,
        ));
    }

    if !fleet.provisioned.is_empty() {
        out.push_str(&format!(
            "\nPROVISIONED CONCURRENCY ({})\n",
            fleet.provisioned.len()
        ));
        let rows = fleet.provisioned.iter().map(|p| {
            let mut status = p.status.clone();
            if let Some(reason) = &p.status_reason {
                status.push_str(&format!(": {reason}"));
            }
            vec![
                p.account_id.clone(),
                format!("{}:{}", p.function_name, p.qualifier),
                format!("{} / {}", p.ready, p.requested),
                p.creating.to_string(),
                status,
            ]
        });
        out.push_str(&table(
            &["ACCOUNT", "FUNCTION", "READY", "CREATING", "STATUS"],
            rows,
        ));
    }

    if !fleet.retiring.is_empty() {
        out.push_str(&format!("\nRETIRING ({})\n", fleet.retiring.len()));
        let rows = fleet.retiring.iter().map(|vm| {
            vec![
                vm.vm_id.clone(),
                format!("{} MB", vm.memory_mb),
                age(vm, now),
            ]
        });
        out.push_str(&table(&["VM", "MEMORY", "AGE"], rows));
    }
    out
}

/// Left-aligned columns two spaces apart, or `  (none)` without rows.
fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    if rows.is_empty() {
        return "  (none)\n".into();
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (cell, width) in cells.iter().zip(&widths) {
            text.push_str(&format!("  {cell:<width$}"));
        }
        text.truncate(text.trim_end().len());
        text.push('\n');
        text
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// How long `vm` has been in its pool (`booting` while it boots).
fn age(vm: &Vm, now: OffsetDateTime) -> String {
    let text = match OffsetDateTime::parse(&vm.since, &Rfc3339) {
        Ok(since) => duration((now - since).whole_seconds().max(0)),
        Err(_) => "?".into(),
    };
    if vm.booting {
        format!("{text} (booting)")
    } else {
        text
    }
}

/// `42s`, `5m03s`, `2h05m`.
fn duration(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn renders_a_header_and_both_pools() {
        let fleet: Fleet = serde_json::from_value(serde_json::json!({
            "WarmingPool": [{"VmId": "vm-3-ab", "MemoryMB": 2048, "VCpus": 2, "Runtime": null,
                             "Since": "2024-05-01T12:34:50.000Z", "Booting": true}],
            "ActivePool": [{"VmId": "vm-1-ab", "AccountId": "123456789012", "MemoryMB": 2048,
                            "FreeMemoryMB": 1536, "VCpus": 2, "Booting": false,
                            "Since": "2024-05-01T12:30:00.000Z", "PendingContainers": 0,
                            "Containers": [
                                {"ContainerId": "c1", "FunctionName": "f", "MemoryMB": 256,
                                 "State": "busy"},
                                {"ContainerId": "c2", "FunctionName": "f", "MemoryMB": 256,
                                 "State": "idle", "Provisioned": "1"}]}],
            "Retiring": [],
            "RequestRatePerSecond": 12.5,
            "RuntimeRequestRates": {"python3.11": 12.5},
            "ReplenishCount": 3,
            "ReplenishReason": "rate rose",
            "VmBootSeconds": 0.004,
            "IdleVmSeconds": 1.0,
            "HostCapacity": {"MemoryMB": 22000, "VCpus": 4, "ReservedMemoryMB": 4096,
                             "FreeMemoryMB": 17904},
            "Accounts": [{"AccountId": "123456789012", "Weight": 1, "HeldMemoryMB": 2048,
                          "FairShareMB": 11000, "Waiting": 2}],
            "AccountMemoryMB": 8192,
            "Provisioned": [{"AccountId": "123456789012", "FunctionName": "f", "Qualifier": "1",
                             "Requested": 2, "Ready": 1, "Creating": 1,
                             "Status": "IN_PROGRESS", "StatusReason": null}],
        }))
        .unwrap();
        let now = time::macros::datetime!(2024-05-01 12:35:00 UTC);
        let text = render(&fleet, now);
        assert!(text.starts_with(
            "requests 12.5/s | N = 3 (rate rose) | host memory 4096 / 22000 MB used, 4 vCPUs"
        ));
        assert!(text.contains("by runtime: python3.11 12.5/s\n"), "{text}");
        assert!(text.contains("WARMING POOL (1)\n"), "{text}");
        assert!(
            text.contains("  vm-3-ab  2048 MB  any      10s (booting)\n"),
            "{text}"
        );
        assert!(text.contains("ACTIVE POOL (1)\n"), "{text}");
        assert!(
            text.contains(
                "  vm-1-ab  123456789012  512 / 2048 MB  1 busy / 1 idle (1 provisioned)  5m00s\n"
            ),
            "{text}"
        );
        assert!(!text.contains("RETIRING"), "{text}");
        assert!(
            text.contains(
                "ACCOUNTS (1, at most 8192 MB each)\n  ACCOUNT       WEIGHT  HELD     FAIR SHARE  \
                 WAITING\n  123456789012  1       2048 MB  11000 MB    2\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn renders_provisioned_concurrency() {
        let fleet: Fleet = serde_json::from_value(serde_json::json!({
            "WarmingPool": [], "ActivePool": [], "Retiring": [],
            "RequestRatePerSecond": 0.0, "ReplenishCount": 0,
            "HostCapacity": {"MemoryMB": 22000, "VCpus": 4, "ReservedMemoryMB": 0},
            "Provisioned": [{"AccountId": "123456789012", "FunctionName": "f", "Qualifier": "live",
                             "Requested": 2, "Ready": 0, "Creating": 0, "Status": "FAILED",
                             "StatusReason": "no memory"}],
        }))
        .unwrap();
        let text = render(&fleet, time::macros::datetime!(2024-05-01 12:35:00 UTC));
        assert!(
            text.contains(
                "PROVISIONED CONCURRENCY (1)\n  ACCOUNT       FUNCTION  READY  CREATING  STATUS\n  \
                 123456789012  f:live    0 / 2  0         FAILED: no memory\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn empty_pools_say_none() {
        assert_eq!(table(&["VM"], std::iter::empty()), "  (none)\n");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(61), "1m01s");
        assert_eq!(duration(7500), "2h05m");
    }

    #[test]
    fn intervals_must_be_positive_numbers() {
        assert_eq!(parse_interval("0.2"), Ok(Duration::from_millis(200)));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("-1").is_err());
        assert!(parse_interval("soon").is_err());
        assert!(parse_interval("NaN").is_err());
    }
}
