//! `ember bench control`: the latency of control-plane writes, through SigV4-signed HTTP like any
//! client, on each store backend side by side (`backends`): per round, CreateFunction of a small
//! zip, UpdateFunctionConfiguration, PublishVersion, PutFunctionConcurrency, TagResource and
//! DeleteFunction of a function of its own, with GetFunctionConfiguration (a read the server
//! answers from its cache) as the floor: HTTP, SigV4 and a handler, without a store write.
//! Rounds alternate between the backends' servers, so a slow moment of the machine falls on
//! both. Issue 20's target: each write's p50 at most 5 ms on PostgreSQL.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use reqwest::Method;
use serde_json::{json, Value};

use ember_client::Client;

use crate::backends::{Backend, BackendArgs, Ready};
use crate::invoke::{create_function, percentile, zip_of};
use crate::live::{self, machine, nan_null, pass_fail};

/// Issue 20's target for every write on PostgreSQL.
pub(crate) const WRITE_P50_MS: f64 = 5.0;

#[derive(Debug, clap::Args)]
pub struct ControlBenchArgs {
    #[command(flatten)]
    backends: BackendArgs,
    /// Rounds per backend, each one function's life: create, update, publish, put
    /// concurrency, tag, delete.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// The runtime software directory the servers use.
    #[arg(long, default_value = "target/bench-runtimes")]
    runtime_dir: PathBuf,
    /// Where the servers' logs go (`.BACKEND.log` appended).
    #[arg(long, default_value = "target/bench-control.log")]
    server_log: PathBuf,
    /// Print the results as one JSON object.
    #[arg(long)]
    json: bool,
    /// Arguments for `ember serve`.
    #[arg(last = true)]
    serve_args: Vec<String>,
}

/// The operations of a round, in order; the first is the floor (a read).
pub(crate) const OPERATIONS: [&str; 7] = [
    "GetFunctionConfiguration (read, the floor)",
    "CreateFunction",
    "UpdateFunctionConfiguration",
    "PublishVersion",
    "PutFunctionConcurrency",
    "TagResource",
    "DeleteFunction",
];

pub async fn run(args: ControlBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.samples >= 1, "--samples must be at least 1");
    let backends = args
        .backends
        .chosen()?
        .unwrap_or_else(|| vec![Backend::Embedded]);
    let runtime_dir = live::absolute(&args.runtime_dir)?;
    let mut ready = Vec::new();
    for backend in &backends {
        ready.push(Ready::start(*backend, &args.backends).await?);
    }
    let mut servers = Vec::new();
    for r in &ready {
        let log = args
            .server_log
            .with_extension(format!("{}.log", r.backend.name().replace('+', "-")));
        let server = r.serve(&args.serve_args, &runtime_dir, &log).await?;
        servers.push(server);
    }
    let measured = async {
        let clients = servers
            .iter()
            .map(|s| s.admin_client(reqwest::Client::new()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let refs: Vec<&Client> = clients.iter().collect();
        measure(&refs, args.samples).await
    }
    .await;
    let mut stopped = Ok(());
    for server in servers {
        if let Err(e) = server.stop().await {
            stopped = Err(e);
        }
    }
    let tables = measured?;
    stopped?;
    let report = Report {
        backends: ready
            .iter()
            .map(|r| (r.backend, r.described.clone()))
            .collect(),
        tables,
        samples: args.samples,
    };
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

/// Each backend's latencies (ms), per operation of [`OPERATIONS`].
pub(crate) type Table = Vec<Vec<f64>>;

/// Runs `samples` rounds on each server in turn (`clients[i]` signs for server i); returns each
/// one's table.
pub(crate) async fn measure(clients: &[&Client], samples: usize) -> anyhow::Result<Vec<Table>> {
    let zip = zip_of("bootstrap", "#!/bin/sh\nexit 0\n")?;
    let mut tables: Vec<Table> = clients
        .iter()
        .map(|_| vec![Vec::with_capacity(samples); OPERATIONS.len()])
        .collect();
    let run = uuid::Uuid::new_v4().simple().to_string();
    for round in 0..samples {
        for (client, table) in clients.iter().zip(tables.iter_mut()) {
            let name = format!("bench-cp-{}-{round}", &run[..8]);
            let times = one_round(client, &name, &zip, round)
                .await
                .with_context(|| format!("round {round} of {name}"))?;
            for (op, ms) in times.into_iter().enumerate() {
                table[op].push(ms);
            }
        }
    }
    Ok(tables)
}

/// One function's life; each operation's latency in ms, in [`OPERATIONS`]' order.
async fn one_round(
    client: &Client,
    name: &str,
    zip: &[u8],
    round: usize,
) -> anyhow::Result<[f64; 7]> {
    let function = format!("/2015-03-31/functions/{name}");
    let timed = async |method: Method, path: String, body: Option<Value>| {
        let t = Instant::now();
        let reply = client.json(method, &path, body).await;
        (t.elapsed().as_secs_f64() * 1e3, reply)
    };
    let t = Instant::now();
    create_function(client, name, "provided.al2023", "bootstrap", zip, 128, 3).await?;
    let create = t.elapsed().as_secs_f64() * 1e3;
    let (read, reply) = timed(Method::GET, format!("{function}/configuration"), None).await;
    let arn = reply?["FunctionArn"]
        .as_str()
        .context("GetFunctionConfiguration has no FunctionArn")?
        .to_owned();
    let (update, reply) = timed(
        Method::PUT,
        format!("{function}/configuration"),
        Some(json!({"Description": format!("round {round}"),
                    "Environment": {"Variables": {"ROUND": round.to_string()}}})),
    )
    .await;
    reply?;
    let (publish, reply) = timed(
        Method::POST,
        format!("{function}/versions"),
        Some(json!({})),
    )
    .await;
    reply?;
    let (concurrency, reply) = timed(
        Method::PUT,
        format!("/2017-10-31/functions/{name}/concurrency"),
        Some(json!({"ReservedConcurrentExecutions": 1})),
    )
    .await;
    reply?;
    let (tag, reply) = timed(
        Method::POST,
        format!("/2017-03-31/tags/{}", Client::segment(&arn)),
        Some(json!({"Tags": {"bench": round.to_string()}})),
    )
    .await;
    reply?;
    let (delete, reply) = timed(Method::DELETE, function, None).await;
    reply?;
    Ok([read, create, update, publish, concurrency, tag, delete])
}

/// Per-operation statistics of one backend's latencies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Stats {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) mean: f64,
}

impl Stats {
    pub(crate) fn of(values: &[f64]) -> Stats {
        Stats {
            p50: percentile(values, 0.50),
            p99: percentile(values, 0.99),
            mean: if values.is_empty() {
                f64::NAN
            } else {
                values.iter().sum::<f64>() / values.len() as f64
            },
        }
    }
}

/// The target checks: every write's p50 on postgres+s3 against [`WRITE_P50_MS`] (the floor,
/// a read, is not a write); `(operation, p50, pass)`.
pub(crate) fn checks(backends: &[Backend], tables: &[Table]) -> Vec<(String, f64, bool)> {
    let mut out = Vec::new();
    for (backend, table) in backends.iter().zip(tables) {
        if *backend != Backend::PostgresS3 {
            continue;
        }
        for (op, values) in OPERATIONS.iter().zip(table).skip(1) {
            let p50 = Stats::of(values).p50;
            out.push(((*op).to_owned(), p50, p50 <= WRITE_P50_MS));
        }
    }
    out
}

pub(crate) struct Report {
    pub(crate) backends: Vec<(Backend, String)>,
    pub(crate) tables: Vec<Table>,
    pub(crate) samples: usize,
}

impl Report {
    fn kinds(&self) -> Vec<Backend> {
        self.backends.iter().map(|(b, _)| *b).collect()
    }

    pub(crate) fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "control-plane requests, {} rounds per backend (alternating), SigV4 over HTTP: p50 / p99 / mean",
            self.samples
        );
        for (backend, described) in &self.backends {
            let _ = writeln!(out, "  {}: {described}", backend.name());
        }
        let _ = write!(out, "  {:<44}", "");
        for (backend, _) in &self.backends {
            let _ = write!(out, "{:>28}", backend.name());
        }
        out.push('\n');
        for (i, op) in OPERATIONS.iter().enumerate() {
            let _ = write!(out, "  {op:<44}");
            for table in &self.tables {
                let s = Stats::of(&table[i]);
                let _ = write!(
                    out,
                    "{:>28}",
                    format!("{:.2} / {:.2} / {:.2} ms", s.p50, s.p99, s.mean)
                );
            }
            out.push('\n');
        }
        let checks = checks(&self.kinds(), &self.tables);
        if !checks.is_empty() {
            let _ = writeln!(out, "  targets (issue 20):");
            for (op, p50, pass) in checks {
                let _ = writeln!(
                    out,
                    "    {}  {op} p50 on postgres+s3 <= {WRITE_P50_MS} ms: {p50:.2} ms",
                    pass_fail(pass)
                );
            }
        }
        let _ = writeln!(out, "  machine: {}", machine().describe());
        out
    }

    pub(crate) fn to_json(&self) -> Value {
        let backends: Vec<Value> = self
            .backends
            .iter()
            .zip(&self.tables)
            .map(|((backend, described), table)| {
                let ops: serde_json::Map<String, Value> = OPERATIONS
                    .iter()
                    .zip(table)
                    .map(|(op, values)| {
                        let s = Stats::of(values);
                        let key = op.split(' ').next().unwrap_or(op).to_owned();
                        (
                            key,
                            json!({"p50_ms": nan_null(s.p50), "p99_ms": nan_null(s.p99),
                                     "mean_ms": nan_null(s.mean), "samples": values.len()}),
                        )
                    })
                    .collect();
                json!({"backend": backend.name(), "services": described, "operations": ops})
            })
            .collect();
        let checks: Vec<Value> = checks(&self.kinds(), &self.tables)
            .into_iter()
            .map(|(op, p50, pass)| {
                json!({"target": format!("{op} p50 on postgres+s3 <= {WRITE_P50_MS} ms"),
                       "measured_ms": nan_null(p50), "pass": pass})
            })
            .collect();
        json!({"samples": self.samples, "backends": backends, "targets": checks,
               "machine": machine().to_json()})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_take_nearest_rank_quantiles_and_the_mean() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Stats::of(&values);
        assert_eq!((s.p50, s.p99), (51.0, 99.0));
        assert!((s.mean - 50.5).abs() < 1e-9);
        assert!(Stats::of(&[]).p50.is_nan());
        assert!(Stats::of(&[]).mean.is_nan());
    }

    #[test]
    fn only_postgres_writes_are_checked_against_the_target() {
        let fast = vec![vec![1.0; 3]; OPERATIONS.len()];
        let mut slow = fast.clone();
        slow[0] = vec![50.0; 3]; // the read: not a write, never checked
        slow[2] = vec![4.0, 6.0, 7.0]; // UpdateFunctionConfiguration: p50 6 ms
        let found = checks(
            &[Backend::Embedded, Backend::PostgresS3],
            &[vec![vec![99.0; 3]; OPERATIONS.len()], slow],
        );
        assert_eq!(
            found.len(),
            OPERATIONS.len() - 1,
            "one per write, postgres only"
        );
        let failed: Vec<&str> = found
            .iter()
            .filter(|(_, _, pass)| !pass)
            .map(|(op, _, _)| op.as_str())
            .collect();
        assert_eq!(failed, ["UpdateFunctionConfiguration"]);
        assert!(checks(&[Backend::Embedded], &[fast]).is_empty());
    }
}
