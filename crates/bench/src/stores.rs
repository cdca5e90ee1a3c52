//! `ember bench invoke --serve --backends embedded,postgres+s3`: the no-op `provided` function
//! (Rust, `lambda_runtime`) on each store backend (`backends`), side by side in one run, against
//! issue 20's target that a host on PostgreSQL and S3 invokes within 10% of the embedded default
//! (nothing on the warm path waits for PostgreSQL), and its control-plane writes (`control`).
//!
//! - **Warm**, in rounds that alternate the backends' servers (all running at once, idle while
//!   the other is measured), each round: one client back to back (latency), an open-loop load
//!   at each `--rates` (request `i` due at `i / rate`, latency from its due time, as `ember bench
//!   load`), and `--clients` clients back to back (throughput at saturation). The table gives
//!   each figure's median over the rounds and its ratio to the embedded one.
//! - **Cold**, with the code package where each backend keeps it: a freshly created function's
//!   first invocation (a new container in a running VM; its code from the `file://` directory on
//!   the embedded store, from the host's cache, where the upload left it, on PostgreSQL and S3),
//!   the same on a second host on the same store that has never seen the package (its code
//!   downloaded from the bucket: a cache-cold host), and a configuration change's cold start
//!   (`cold`, the package cached).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde_json::{json, Value};

use ember_client::Client;

use crate::backends::{Backend, BackendArgs, Ready};
use crate::floor::Spread;
use crate::invoke::{create_function, recreate, warm_phase, Target, Warm};
use crate::live::{self, load_average, machine, nan_null, pass_fail, Server};
use crate::load::{open_loop, OpenLoop};
use crate::{cold, control};

/// Issue 20's target: a figure on PostgreSQL and S3 within this share of the embedded one.
const WITHIN: f64 = 0.10;
/// The warm function.
const WARM_FUNCTION: &str = "bench-noop-provided";
/// Memory of the spread phases' functions, in MB: many fit a VM.
const SPREAD_MEMORY_MB: u32 = 128;
/// Timeout of the cold-start functions, in seconds.
const COLD_TIMEOUT_S: u32 = 30;

/// What `ember bench invoke --backends` was asked for.
pub(crate) struct Options<'a> {
    pub(crate) backends: Vec<Backend>,
    pub(crate) backend_args: &'a BackendArgs,
    pub(crate) seconds: f64,
    pub(crate) clients: usize,
    pub(crate) rates: Vec<f64>,
    /// Functions of the spread phases (0: none).
    pub(crate) spread_functions: usize,
    /// Each spread phase's interval between two invocations of one function, in ms.
    pub(crate) spread_intervals_ms: Vec<f64>,
    pub(crate) rounds: usize,
    pub(crate) cold_samples: usize,
    pub(crate) cold_memory: Vec<u32>,
    pub(crate) control_samples: usize,
    pub(crate) memory_mb: u32,
    pub(crate) rust_zip: Vec<u8>,
    pub(crate) runtime_dir: PathBuf,
    pub(crate) server_log: PathBuf,
    pub(crate) serve_args: Vec<String>,
    pub(crate) json: bool,
}

/// One round of the warm phases on one backend.
struct Round {
    one: Warm,
    open: Vec<OpenLoop>,
    /// One per spread interval.
    spread: Vec<OpenLoop>,
    saturated: Warm,
}

/// One cold-start row: what was measured, and its spread or why there is none.
struct ColdRow {
    what: String,
    memory_mb: u32,
    result: Result<Spread, String>,
    left_out: usize,
}

/// One backend's servers and results.
struct Measured {
    ready: Ready,
    rounds: Vec<Round>,
    cold: Vec<ColdRow>,
    control: Option<control::Table>,
}

pub(crate) async fn run(opts: Options<'_>) -> anyhow::Result<()> {
    anyhow::ensure!(opts.rounds >= 1, "--rounds must be at least 1");
    for rate in &opts.rates {
        anyhow::ensure!(
            rate.is_finite() && *rate > 0.0,
            "--rates: {rate} is not a positive rate"
        );
    }
    for ms in &opts.spread_intervals_ms {
        anyhow::ensure!(
            ms.is_finite() && *ms > 0.0,
            "--spread-intervals: {ms} is not a positive number of ms"
        );
    }
    // Servers provision every Python in the background at start: done now, not during the
    // measurement (the measured function is `provided`, so a host without Python is fine).
    if let Err(err) = live::provision(&opts.runtime_dir, None, "invoke").await {
        eprintln!("invoke: warning: {err:#}");
    }
    let mut measured = Vec::new();
    for backend in &opts.backends {
        measured.push(Measured {
            ready: Ready::start(*backend, opts.backend_args).await?,
            rounds: Vec::new(),
            cold: Vec::new(),
            control: None,
        });
    }
    let mut servers = Vec::new();
    for m in &measured {
        servers.push(
            m.ready
                .serve(
                    &opts.serve_args,
                    &opts.runtime_dir,
                    &log_of(&opts.server_log, m.ready.backend, ""),
                )
                .await?,
        );
    }
    let result = measure_all(&opts, &mut measured, &servers).await;
    let mut stopped = Ok(());
    for server in servers {
        if let Err(e) = server.stop().await {
            stopped = Err(e);
        }
    }
    result?;
    stopped?;
    let report = Report {
        opts: &opts,
        measured: &measured,
    };
    if opts.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

/// `log` with `.BACKEND[-suffix].log`.
fn log_of(log: &Path, backend: Backend, suffix: &str) -> PathBuf {
    log.with_extension(format!("{}{suffix}.log", backend.name().replace('+', "-")))
}

async fn measure_all(
    opts: &Options<'_>,
    measured: &mut [Measured],
    servers: &[Server],
) -> anyhow::Result<()> {
    let clients: Vec<Arc<Client>> = servers
        .iter()
        .map(|s| {
            let http = reqwest::Client::builder()
                .tcp_nodelay(true)
                .pool_max_idle_per_host(opts.clients.max(1))
                .build()?;
            Ok(Arc::new(s.admin_client(http)?))
        })
        .collect::<anyhow::Result<_>>()?;

    if opts.seconds > 0.0 {
        let target = Target::Invoke(WARM_FUNCTION.to_owned());
        let spread: Vec<String> = (0..opts.spread_functions)
            .map(|i| format!("bench-spread-{i}"))
            .collect();
        for client in &clients {
            for name in &spread {
                recreate(
                    client,
                    name,
                    "provided.al2023",
                    "bootstrap",
                    &opts.rust_zip,
                    SPREAD_MEMORY_MB,
                )
                .await?;
                cold::invoke(client, name).await?;
            }
            recreate(
                client,
                WARM_FUNCTION,
                "provided.al2023",
                "bootstrap",
                &opts.rust_zip,
                opts.memory_mb,
            )
            .await?;
            // A warm container per client, then a second of load: not measured.
            warm_phase(client, &target, opts.clients, 1.0).await?;
        }
        for round in 0..opts.rounds {
            // Alternate the order, so that neither backend always goes first.
            let mut order: Vec<usize> = (0..measured.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                eprintln!(
                    "invoke: round {}/{} on {}",
                    round + 1,
                    opts.rounds,
                    measured[i].ready.backend.name()
                );
                let client = &clients[i];
                let one = warm_phase(client, &target, 1, opts.seconds).await?;
                let mut open = Vec::new();
                for rate in &opts.rates {
                    open.push(
                        open_loop(
                            client.clone(),
                            &[WARM_FUNCTION.to_owned()],
                            *rate,
                            opts.seconds,
                            opts.clients,
                        )
                        .await?,
                    );
                }
                let mut spread_loops = Vec::new();
                if !spread.is_empty() {
                    for ms in &opts.spread_intervals_ms {
                        let rate = spread.len() as f64 * 1e3 / ms;
                        spread_loops.push(
                            open_loop(
                                client.clone(),
                                &spread,
                                rate,
                                opts.seconds * 2.0,
                                opts.clients,
                            )
                            .await?,
                        );
                    }
                }
                let saturated = warm_phase(client, &target, opts.clients, opts.seconds).await?;
                measured[i].rounds.push(Round {
                    one,
                    open,
                    spread: spread_loops,
                    saturated,
                });
            }
        }
        for client in &clients {
            // Their containers go, leaving room in the VMs for the cold starts.
            let _ = cold::delete(client, WARM_FUNCTION).await;
            for name in &spread {
                let _ = cold::delete(client, name).await;
            }
        }
    }

    if opts.cold_samples > 0 {
        for (m, client) in measured.iter_mut().zip(&clients) {
            for &memory_mb in &opts.cold_memory {
                eprintln!(
                    "invoke: cold starts at {memory_mb} MB on {}",
                    m.ready.backend.name()
                );
                let (what, on) = match m.ready.backend {
                    Backend::Embedded => ("new function (code from file:// on this host)", "e"),
                    Backend::PostgresS3 => (
                        "new function (code in this host's cache, from its upload)",
                        "p",
                    ),
                };
                let fresh = fresh_cold(client, client, opts, memory_mb, on).await?;
                m.cold.push(ColdRow::new(what, memory_mb, fresh));
                let subject = cold::Subject::provided(opts.rust_zip.clone());
                let rows =
                    cold::measure(client, &[subject], &[memory_mb], opts.cold_samples).await?;
                for row in rows {
                    m.cold.push(ColdRow {
                        what: "configuration changed (code cached)".into(),
                        memory_mb,
                        left_out: row.result.as_ref().map_or(0, |r| r.left_out),
                        result: row.result.map(|r| r.client),
                    });
                }
            }
            if m.ready.backend == Backend::PostgresS3 {
                // A second host on the same store: it has never seen the packages.
                let log = log_of(&opts.server_log, m.ready.backend, "-second-host");
                let second = m
                    .ready
                    .serve(&opts.serve_args, &opts.runtime_dir, &log)
                    .await?;
                let rows = async {
                    let other = second.admin_client(reqwest::Client::new())?;
                    let mut rows = Vec::new();
                    for &memory_mb in &opts.cold_memory {
                        eprintln!(
                            "invoke: cold starts at {memory_mb} MB on a second postgres+s3 host"
                        );
                        let fresh = fresh_cold(client, &other, opts, memory_mb, "q").await?;
                        rows.push(ColdRow::new(
                            "new function created on another host (code from the bucket)",
                            memory_mb,
                            fresh,
                        ));
                    }
                    anyhow::Ok(rows)
                }
                .await;
                let stopped = second.stop().await;
                m.cold.extend(rows?);
                stopped?;
            }
        }
    }

    if opts.control_samples > 0 {
        eprintln!(
            "invoke: control-plane requests, {} rounds",
            opts.control_samples
        );
        let refs: Vec<&Client> = clients.iter().map(|c| c.as_ref()).collect();
        let tables = control::measure(&refs, opts.control_samples).await?;
        for (m, table) in measured.iter_mut().zip(tables) {
            m.control = Some(table);
        }
    }
    Ok(())
}

impl ColdRow {
    fn new(what: &str, memory_mb: u32, (walls, left_out): (Vec<f64>, usize)) -> Self {
        ColdRow {
            what: what.to_owned(),
            memory_mb,
            result: Spread::of(&walls).ok_or_else(|| {
                format!("none of {left_out} invocations started a new container in a running VM")
            }),
            left_out,
        }
    }
}

/// Cold starts of freshly created functions, each with a package of its own (the no-op one
/// with a nonce file: a sha256 no host has seen), created through `creator` and first invoked
/// through `invoker`; the client's latency of each first invocation that was a new container
/// in a running VM, and how many were not (a VM boot), left out. One more comes first,
/// unmeasured: it may boot the account's VM.
async fn fresh_cold(
    creator: &Client,
    invoker: &Client,
    opts: &Options<'_>,
    memory_mb: u32,
    tag: &str,
) -> anyhow::Result<(Vec<f64>, usize)> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (mut walls, mut left_out) = (Vec::new(), 0);
    for i in 0..=opts.cold_samples.saturating_mul(2) {
        if walls.len() == opts.cold_samples {
            break;
        }
        let name = format!("bench-fresh-{tag}-{memory_mb}-{i}");
        let zip = with_nonce(&opts.rust_zip, &format!("{run}-{i}"))?;
        let _ = cold::delete(creator, &name).await;
        create_function(
            creator,
            &name,
            "provided.al2023",
            "bootstrap",
            &zip,
            memory_mb,
            COLD_TIMEOUT_S,
        )
        .await
        .with_context(|| format!("cannot create {name}"))?;
        let started = Instant::now();
        let invoked = cold::invoke(invoker, &name).await?;
        let wall = started.elapsed().as_secs_f64() * 1e3;
        // Deleted where it ran: that host retires its container at once.
        cold::delete(invoker, &name)
            .await
            .with_context(|| format!("cannot delete {name}"))?;
        if i == 0 {
            continue;
        }
        if invoked.start == "cold_container" {
            walls.push(wall);
        } else {
            left_out += 1;
        }
    }
    Ok((walls, left_out))
}

/// `zip` with one more file, `.ember-bench-nonce`, holding `nonce`: the same function, a
/// package of another sha256. The other entries are copied as they are (modes included).
pub(crate) fn with_nonce(zip: &[u8], nonce: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(zip)).context("the package is not a zip")?;
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for i in 0..archive.len() {
        let file = archive.by_index_raw(i)?;
        out.raw_copy_file(file)?;
    }
    out.start_file(
        ".ember-bench-nonce",
        zip::write::SimpleFileOptions::default(),
    )?;
    out.write_all(nonce.as_bytes())?;
    Ok(out.finish()?.into_inner())
}

// ---- the report ---------------------------------------------------------------------------------

/// The median of `values` (NaN if none).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Whether `value` is within [`WITHIN`] of `base`: at most 10% above it for a latency, at
/// least 90% of it for a throughput.
pub(crate) fn within(value: f64, base: f64, higher_is_better: bool) -> bool {
    if higher_is_better {
        value >= base * (1.0 - WITHIN)
    } else {
        value <= base * (1.0 + WITHIN)
    }
}

/// One figure of the warm table: its label, how to read it off a round, and which way is better.
struct Figure {
    label: String,
    key: String,
    of: Box<dyn Fn(&Round) -> f64>,
    higher_is_better: bool,
}

fn figures(opts: &Options<'_>) -> Vec<Figure> {
    let mut f = vec![
        Figure {
            label: "warm, 1 client: p50 ms".into(),
            key: "warm_1_client_p50_ms".into(),
            of: Box::new(|r| r.one.p50_ms),
            higher_is_better: false,
        },
        Figure {
            label: "warm, 1 client: p99 ms".into(),
            key: "warm_1_client_p99_ms".into(),
            of: Box::new(|r| r.one.p99_ms),
            higher_is_better: false,
        },
    ];
    for (i, rate) in opts.rates.iter().enumerate() {
        f.push(Figure {
            label: format!("open loop {rate}/s: p50 ms"),
            key: format!("open_loop_{rate}_p50_ms"),
            of: Box::new(move |r| r.open[i].p50_ms),
            higher_is_better: false,
        });
        f.push(Figure {
            label: format!("open loop {rate}/s: p99 ms"),
            key: format!("open_loop_{rate}_p99_ms"),
            of: Box::new(move |r| r.open[i].p99_ms),
            higher_is_better: false,
        });
    }
    if opts.spread_functions > 0 {
        let k = opts.spread_functions;
        for (i, ms) in opts.spread_intervals_ms.iter().enumerate() {
            f.push(Figure {
                label: format!("{k} functions, each every {ms} ms: p50 ms"),
                key: format!("spread_{ms}ms_p50_ms"),
                of: Box::new(move |r| r.spread[i].p50_ms),
                higher_is_better: false,
            });
            f.push(Figure {
                label: format!("{k} functions, each every {ms} ms: p99 ms"),
                key: format!("spread_{ms}ms_p99_ms"),
                of: Box::new(move |r| r.spread[i].p99_ms),
                higher_is_better: false,
            });
        }
    }
    let c = opts.clients;
    f.extend([
        Figure {
            label: format!("{c} clients (saturated): invokes/s"),
            key: "saturated_invokes_per_second".into(),
            of: Box::new(|r| r.saturated.per_second),
            higher_is_better: true,
        },
        Figure {
            label: format!("{c} clients (saturated): p50 ms"),
            key: "saturated_p50_ms".into(),
            of: Box::new(|r| r.saturated.p50_ms),
            higher_is_better: false,
        },
        Figure {
            label: format!("{c} clients (saturated): p99 ms"),
            key: "saturated_p99_ms".into(),
            of: Box::new(|r| r.saturated.p99_ms),
            higher_is_better: false,
        },
    ]);
    f
}

struct Report<'a, 'o> {
    opts: &'a Options<'o>,
    measured: &'a [Measured],
}

impl Report<'_, '_> {
    /// The embedded backend's index, when it is measured next to another.
    fn base(&self) -> Option<usize> {
        let i = self
            .measured
            .iter()
            .position(|m| m.ready.backend == Backend::Embedded)?;
        (self.measured.len() > 1).then_some(i)
    }

    /// Each figure's median per backend, and for each non-embedded backend its ratio and check.
    fn warm_table(&self) -> Vec<(Figure, Vec<f64>)> {
        figures(self.opts)
            .into_iter()
            .map(|fig| {
                let medians = self
                    .measured
                    .iter()
                    .map(|m| median(&m.rounds.iter().map(|r| (fig.of)(r)).collect::<Vec<_>>()))
                    .collect();
                (fig, medians)
            })
            .collect()
    }

    fn text(&self) -> String {
        use std::fmt::Write as _;
        let o = self.opts;
        let mut out = String::new();
        let names: Vec<&str> = self
            .measured
            .iter()
            .map(|m| m.ready.backend.name())
            .collect();
        for m in self.measured {
            let _ = writeln!(out, "{}: {}", m.ready.backend.name(), m.ready.described);
        }
        if o.seconds > 0.0 {
            let _ = writeln!(
                out,
                "warm invokes of {WARM_FUNCTION} (provided.al2023, {} MB), {} round(s) of {} s per phase, backends alternating; medians of the rounds",
                o.memory_mb, o.rounds, o.seconds
            );
            let _ = write!(out, "  {:<44}", "");
            for name in &names {
                let _ = write!(out, "{name:>14}");
            }
            if self.base().is_some() {
                let _ = write!(out, "{:>10}", "ratio");
            }
            out.push('\n');
            let base = self.base();
            let mut checks = Vec::new();
            for (fig, medians) in self.warm_table() {
                let _ = write!(out, "  {:<44}", fig.label);
                for v in &medians {
                    let _ = write!(out, "{:>14}", format_value(*v));
                }
                if let Some(b) = base {
                    for (i, v) in medians.iter().enumerate().filter(|(i, _)| *i != b) {
                        let _ = write!(out, "{:>10.3}", v / medians[b]);
                        checks.push((
                            format!("{} {} within 10% of embedded", names[i], fig.label),
                            within(*v, medians[b], fig.higher_is_better),
                        ));
                    }
                }
                out.push('\n');
            }
            let _ = write!(out, "  {:<44}", "errors (all phases, all rounds)");
            for m in self.measured {
                let errors: u64 = m
                    .rounds
                    .iter()
                    .map(|r| {
                        (r.one.errors + r.saturated.errors) as u64
                            + r.open
                                .iter()
                                .chain(&r.spread)
                                .map(|l| l.errors)
                                .sum::<u64>()
                    })
                    .sum();
                let _ = write!(out, "{errors:>14}");
            }
            out.push('\n');
            let _ = writeln!(
                out,
                "  each round, p50 ms (1 client / open loops / saturated) and invokes/s saturated:"
            );
            for m in self.measured {
                let _ = write!(out, "    {:<12}", m.ready.backend.name());
                for r in &m.rounds {
                    let open: Vec<String> =
                        r.open.iter().map(|l| format!("{:.3}", l.p50_ms)).collect();
                    let _ = write!(
                        out,
                        " [{:.3} / {} / {:.3}, {:.0}/s]",
                        r.one.p50_ms,
                        open.join(" / "),
                        r.saturated.p50_ms,
                        r.saturated.per_second
                    );
                }
                out.push('\n');
            }
            if !checks.is_empty() {
                let _ = writeln!(out, "  targets (issue 20):");
                for (what, pass) in checks {
                    let _ = writeln!(out, "    {}  {what}", pass_fail(pass));
                }
            }
        }
        if o.cold_samples > 0 {
            let _ = writeln!(
                out,
                "cold starts of provided.al2023 (a new container in a running VM, end to end), {} samples each: p50 / p90 / max",
                o.cold_samples
            );
            for m in self.measured {
                let _ = writeln!(out, "  {}:", m.ready.backend.name());
                for row in &m.cold {
                    let left = if row.left_out > 0 {
                        format!(
                            "   ({} not a new container in a running VM, left out)",
                            row.left_out
                        )
                    } else {
                        String::new()
                    };
                    let _ = match &row.result {
                        Ok(s) => writeln!(
                            out,
                            "    {:<62} {:>5} MB  {}{left}",
                            row.what,
                            row.memory_mb,
                            s.text()
                        ),
                        Err(why) => writeln!(
                            out,
                            "    {:<62} {:>5} MB  not measured: {why}",
                            row.what, row.memory_mb
                        ),
                    };
                }
            }
        }
        let tables: Vec<control::Table> = self
            .measured
            .iter()
            .filter_map(|m| m.control.clone())
            .collect();
        if tables.len() == self.measured.len() && !tables.is_empty() {
            let report = control::Report {
                backends: self
                    .measured
                    .iter()
                    .map(|m| (m.ready.backend, m.ready.described.clone()))
                    .collect(),
                tables,
                samples: o.control_samples,
            };
            out.push_str(&report.text());
        } else {
            let _ = writeln!(
                out,
                "  machine: {}, load average {}",
                machine().describe(),
                load_average().map_or_else(|| "unknown".to_owned(), |l| format!("{l:.2}"))
            );
        }
        out
    }

    fn to_json(&self) -> Value {
        let o = self.opts;
        let base = self.base();
        let table = self.warm_table();
        let backends: Vec<Value> = self
            .measured
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let warm: serde_json::Map<String, Value> = table
                    .iter()
                    .map(|(fig, medians)| {
                        let ratio = base.filter(|b| *b != i).map(|b| medians[i] / medians[b]);
                        (fig.key.clone(), json!({"median": nan_null(medians[i]),
                            "ratio_to_embedded": ratio.map(nan_null),
                            "within_10pct": base.filter(|b| *b != i).map(|b| within(medians[i], medians[b], fig.higher_is_better))}))
                    })
                    .collect();
                let rounds: Vec<Value> = m.rounds.iter().map(|r| json!({
                    "warm_1_client": r.one.to_json(),
                    "open_loop": r.open.iter().map(|l| json!({"rate": l.rate, "ok": l.ok, "errors": l.errors,
                        "p50_ms": nan_null(l.p50_ms), "p99_ms": nan_null(l.p99_ms), "max_ms": nan_null(l.max_ms),
                        "achieved_per_second": nan_null(l.achieved)})).collect::<Vec<_>>(),
                    "spread": r.spread.iter().map(|l| json!({"rate": l.rate, "ok": l.ok, "errors": l.errors,
                        "p50_ms": nan_null(l.p50_ms), "p99_ms": nan_null(l.p99_ms), "max_ms": nan_null(l.max_ms)})).collect::<Vec<_>>(),
                    "saturated": r.saturated.to_json(),
                })).collect();
                let cold: Vec<Value> = m.cold.iter().map(|row| json!({
                    "what": row.what, "memory_mb": row.memory_mb, "left_out": row.left_out,
                    "client": row.result.as_ref().map_or_else(|why| json!({"error": why}), |s| s.to_json()),
                })).collect();
                json!({"backend": m.ready.backend.name(), "services": m.ready.described,
                       "warm": warm, "rounds": rounds, "cold": cold})
            })
            .collect();
        let control = self
            .measured
            .iter()
            .map(|m| m.control.clone())
            .collect::<Option<Vec<_>>>()
            .map(|tables| {
                control::Report {
                    backends: self
                        .measured
                        .iter()
                        .map(|m| (m.ready.backend, m.ready.described.clone()))
                        .collect(),
                    tables,
                    samples: o.control_samples,
                }
                .to_json()
            });
        json!({"function": WARM_FUNCTION, "memory_mb": o.memory_mb, "rounds": o.rounds,
               "seconds": o.seconds, "clients": o.clients, "rates": o.rates,
               "spread_functions": o.spread_functions, "spread_intervals_ms": o.spread_intervals_ms,
               "cold_samples": o.cold_samples, "backends": backends, "control": control,
               "machine": machine().to_json(), "load_average": load_average()})
    }
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts_skip_nan() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[f64::NAN, 5.0]), 5.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn within_ten_percent_goes_the_right_way_for_latency_and_throughput() {
        assert!(within(1.09, 1.0, false));
        assert!(!within(1.11, 1.0, false));
        assert!(within(0.5, 1.0, false), "faster is within");
        assert!(within(910.0, 1000.0, true));
        assert!(!within(890.0, 1000.0, true));
        assert!(within(2000.0, 1000.0, true), "more is within");
        assert!(!within(f64::NAN, 1.0, false), "no figure is no pass");
    }

    #[test]
    fn a_nonce_gives_the_same_files_in_a_package_of_another_sha() {
        use sha2::Digest as _;
        use std::io::Read as _;
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut zip = zip::ZipWriter::new(&mut buf);
            let exec = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
            zip.start_file("bootstrap", exec).unwrap();
            std::io::Write::write_all(&mut zip, b"#!/bin/sh\n").unwrap();
            zip.finish().unwrap();
        }
        let original = buf.into_inner();
        let a = with_nonce(&original, "a").unwrap();
        let b = with_nonce(&original, "b").unwrap();
        let sha = |z: &[u8]| hex::encode(sha2::Sha256::digest(z));
        assert_ne!(sha(&a), sha(&b));
        assert_ne!(sha(&a), sha(&original));
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(a)).unwrap();
        assert_eq!(archive.len(), 2);
        let mut bootstrap = archive.by_name("bootstrap").unwrap();
        assert_eq!(bootstrap.unix_mode().map(|m| m & 0o777), Some(0o755));
        let mut text = String::new();
        bootstrap.read_to_string(&mut text).unwrap();
        assert_eq!(text, "#!/bin/sh\n");
        drop(bootstrap);
        let mut nonce = String::new();
        archive
            .by_name(".ember-bench-nonce")
            .unwrap()
            .read_to_string(&mut nonce)
            .unwrap();
        assert_eq!(nonce, "a");
        assert!(with_nonce(b"not a zip", "x").is_err());
    }
}
