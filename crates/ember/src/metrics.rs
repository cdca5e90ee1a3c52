//! `ember serve`'s Prometheus metrics: installs the recorder behind the `metrics` facade (which
//! the executor's macros write to), describes Ember's metrics, and decides where `/metrics` is
//! served: on the main listener (the default), on a listener of its own (`--metrics-listen`), or
//! nowhere (`--no-metrics`, and then no recorder is installed: the macros cost nothing).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Where the metrics are served.
#[derive(Debug, clap::Args)]
pub struct MetricsArgs {
    /// Serve `GET /metrics` on this address instead of the main listener.
    #[arg(long, env = "EMBER_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Serve no metrics at all (`/metrics` is then an unknown path).
    #[arg(long, env = "EMBER_NO_METRICS", value_parser = clap::builder::BoolishValueParser::new())]
    no_metrics: bool,
}

/// The histogram buckets of `ember_vm_boot_seconds`, in seconds.
const VM_BOOT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// How often the recorder's upkeep runs (it drains histogram samples into their buckets).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The running metrics: what the main listener must serve, and the separate listener, if any.
pub struct Metrics {
    on_main_listener: Option<ember_api::RenderMetrics>,
    separate: Option<Separate>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("on_main_listener", &self.on_main_listener.is_some())
            .field("separate", &self.separate)
            .finish()
    }
}

#[derive(Debug)]
struct Separate {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Installs the recorder (before the executor starts, so that nothing it records is lost) and
/// starts the separate listener if there is one. Must run inside the Tokio runtime.
pub async fn start(args: &MetricsArgs) -> anyhow::Result<Metrics> {
    // Checked here, not by clap: clap would count `EMBER_NO_METRICS=false` as the flag given.
    if args.no_metrics && args.metrics_listen.is_some() {
        anyhow::bail!("--no-metrics and --metrics-listen cannot be used together");
    }
    if args.no_metrics {
        return Ok(Metrics {
            on_main_listener: None,
            separate: None,
        });
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("ember_vm_boot_seconds".into()),
            VM_BOOT_BUCKETS,
        )
        .context("invalid histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    describe();

    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let render: ember_api::RenderMetrics = Arc::new(move || handle.render());

    let Some(addr) = args.metrics_listen else {
        return Ok(Metrics {
            on_main_listener: Some(render),
            separate: None,
        });
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving metrics at /metrics");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ember_api::serve_metrics(listener, render, async move {
        // A dropped sender stops the listener too.
        let _ = stopped.await;
    }));
    Ok(Metrics {
        on_main_listener: None,
        separate: Some(Separate { addr, stop, task }),
    })
}

impl Metrics {
    /// The main listener's state, with `/metrics` if it serves them.
    pub fn attach(&self, state: ember_api::AppState) -> ember_api::AppState {
        match &self.on_main_listener {
            Some(render) => state.with_metrics(render.clone()),
            None => state,
        }
    }

    /// The separate listener's address, if there is one.
    pub fn separate_addr(&self) -> Option<SocketAddr> {
        self.separate.as_ref().map(|s| s.addr)
    }

    /// Stops the separate listener, if any, after its in-flight scrapes.
    pub async fn shutdown(self) {
        let Some(Separate { stop, task, .. }) = self.separate else {
            return;
        };
        let _ = stop.send(());
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "the metrics listener failed"),
            Err(err) => tracing::warn!(error = %err, "the metrics listener panicked"),
        }
    }
}

/// The `# HELP` lines of Ember's metrics, and a zero for each series known in advance, so that a
/// scrape shows them before the first event.
fn describe() {
    metrics::describe_gauge!(
        "ember_pool_vms",
        Unit::Count,
        "VMs in each pool (label pool: warming, active, retiring)"
    );
    metrics::describe_counter!(
        "ember_invocations_total",
        Unit::Count,
        "Invocations by how they started (label start: warm, cold_container, cold_vm)"
    );
    metrics::describe_gauge!(
        "ember_replenish_count",
        Unit::Count,
        "The warming pool's current replenish count N"
    );
    metrics::describe_gauge!(
        "ember_request_rate",
        "Measured execution requests per second"
    );
    metrics::describe_histogram!("ember_vm_boot_seconds", Unit::Seconds, "Time to boot a VM");
    metrics::describe_gauge!(
        "ember_idle_vm_seconds_total",
        Unit::Seconds,
        "Seconds VMs have sat idle, in total"
    );
    metrics::describe_counter!(
        "ember_resize_events_total",
        Unit::Count,
        "Memory amounts automatic sizing applied to later containers (label direction: down, up)"
    );
    metrics::describe_counter!(
        "ember_records_dropped_total",
        Unit::Count,
        "Invocation logs and execution records the store refused, a full disk say (label kind: log, execution)"
    );

    for pool in ["warming", "active"] {
        metrics::gauge!("ember_pool_vms", "pool" => pool).set(0.0);
    }
    for start in ["warm", "cold_container", "cold_vm"] {
        metrics::counter!("ember_invocations_total", "start" => start).increment(0);
    }
    for direction in ["down", "up"] {
        metrics::counter!("ember_resize_events_total", "direction" => direction).increment(0);
    }
    for kind in ["log", "execution"] {
        metrics::counter!("ember_records_dropped_total", "kind" => kind).increment(0);
    }
    metrics::gauge!("ember_replenish_count").set(0.0);
    metrics::gauge!("ember_request_rate").set(0.0);
    metrics::gauge!("ember_idle_vm_seconds_total").set(0.0);
}
