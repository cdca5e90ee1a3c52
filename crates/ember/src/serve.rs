//! `ember serve`: takes the data dir's lock, opens the store, makes the admin account on first
//! start, cleans up what a killed predecessor left (VMs, cgroups, claims on queued events),
//! sets up the VMs' network (see `network.rs`), starts the executor and serves the API (also on
//! the VMs' gateway) until SIGINT or SIGTERM; then stops every VM and removes the network.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ember_vm::linux::{LinuxConfig, LinuxDriver, Policy, ReadOnlyBind};
use nix::fcntl::{Flock, FlockArg};

use crate::credentials::{self, Keys};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "EMBER_LISTEN", default_value = crate::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Directory for Ember's state: database, code packages, credentials.
    #[arg(long, env = "EMBER_DATA_DIR", default_value = "./.ember")]
    data_dir: PathBuf,
    /// `--store`: where the metadata lives (`crate::store_cmd::StoreArgs`).
    #[command(flatten)]
    store: Box<crate::store_cmd::StoreArgs>,
    /// AWS region written into ARNs, and the one requests must be signed for.
    #[arg(long, env = "EMBER_REGION", default_value = "us-east-1")]
    region: String,
    /// Seconds a client may take to send a request's headers, or each piece of its body: a body
    /// that stops arriving gets a 408, headers that stop arriving close the connection.
    #[arg(long, env = "EMBER_READ_TIMEOUT", default_value_t = 30.0)]
    read_timeout: f64,
    /// Also serve function URLs (and only them) on this address [default: function URLs are
    /// served on `--listen` only].
    #[arg(long, env = "EMBER_URL_LISTEN")]
    url_listen: Option<SocketAddr>,
    /// `--console-listen`, `--no-console` (`crate::console_args`).
    #[command(flatten)]
    console: Box<crate::console_args::ConsoleArgs>,
    /// The domain of function URLs' host names: `<url-id>.lambda-url.<region>.<domain>`.
    #[arg(long, env = "EMBER_URL_DOMAIN", default_value = "localhost")]
    url_domain: String,
    /// Threads serving the API and driving the VMs [default: half the host's CPUs, at least
    /// one: the rest is left to the VMs' agents and the functions, which share the host].
    #[arg(long, env = "EMBER_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// `--blobs`, `--blob-cache-mb`: where code packages live (`crate::blobs`).
    #[command(flatten)]
    blobs: Box<crate::blobs::BlobArgs>,
    #[command(flatten)]
    exec: ExecArgs,
    #[command(flatten)]
    pool: crate::network::PoolArgs,
    #[command(flatten)]
    metrics: crate::metrics::MetricsArgs,
    /// Egress and DNS (`--egress`, `--egress-allow`, `--egress-deny`, `--dns`); see
    /// `crate::net_flags::network_settings`.
    #[command(flatten)]
    network: Box<crate::net_flags::NetworkArgs>,
}

/// How functions are run.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Memory of a VM in MB. A function configured with more gets a VM of its own size.
    #[arg(long, env = "EMBER_VM_MEMORY_MB", default_value_t = 2048)]
    vm_memory_mb: u64,
    /// vCPUs of a VM (its CPU quota).
    #[arg(long, env = "EMBER_VM_VCPUS", default_value_t = 2)]
    vm_vcpus: u32,
    /// The Linux scheduling policy of the server, its VMs and everything in them: `batch`
    /// (SCHED_BATCH: a process that wakes does not preempt the one running; more invocations per
    /// second) or `other` (the kernel's default).
    #[arg(long, env = "EMBER_SCHEDULING", value_enum, default_value_t = SchedulingArg::Batch)]
    scheduling: SchedulingArg,
    /// Memory all VMs together may take, in MB [default: the host's memory less 2 GiB].
    #[arg(long, env = "EMBER_CAPACITY_MB")]
    capacity_mb: Option<u64>,
    /// Seconds an idle container stays warm.
    #[arg(long, env = "EMBER_CONTAINER_KEEP_ALIVE", default_value_t = 300.0)]
    container_keep_alive: f64,
    /// Seconds a VM without containers is kept before it is stopped.
    #[arg(long, env = "EMBER_VM_KEEP_ALIVE", default_value_t = 60.0)]
    vm_keep_alive: f64,
    /// vCPUs of the host, as reported in the fleet's HostCapacity [default: detected].
    #[arg(long, env = "EMBER_CAPACITY_VCPUS")]
    capacity_vcpus: Option<u32>,
    /// Seconds an invocation waits for capacity before it is throttled (429).
    #[arg(long, env = "EMBER_PLACEMENT_WAIT", default_value_t = 5.0)]
    placement_wait: f64,
    /// How many invocations may wait for capacity at once; more are throttled at once.
    #[arg(long, env = "EMBER_MAX_WAITING", default_value_t = 1024)]
    max_waiting: usize,
    /// An account's weight in the fair sharing of the host's capacity, `ACCOUNT_ID=W` (W ≥ 1;
    /// repeatable; comma-separated in the environment). Accounts not named weigh 1.
    #[arg(
        long = "account-weight",
        env = "EMBER_ACCOUNT_WEIGHT",
        value_name = "ACCOUNT_ID=W",
        value_delimiter = ',',
        value_parser = parse_account_weight
    )]
    account_weights: Vec<(String, u32)>,
    /// The most memory one account's VMs may hold, in MB; more of its invocations wait, then
    /// are throttled (429) [default: no ceiling].
    #[arg(
        long,
        env = "EMBER_ACCOUNT_MEMORY_MB",
        value_parser = clap::value_parser!(u64).range(128..)
    )]
    account_memory_mb: Option<u64>,
    #[command(flatten)]
    warming: WarmingArgs,
    #[command(flatten)]
    sizing: SizingArgs,
    /// An account's concurrency limit, from which reserved concurrency is carved.
    #[arg(long, env = "EMBER_ACCOUNT_CONCURRENCY", default_value_t = 1000)]
    account_concurrency: u32,
    /// Seconds before the first retry of a failed Event invocation (the second waits twice as
    /// long).
    #[arg(long, env = "EMBER_EVENT_RETRY_DELAY", default_value_t = 60.0)]
    event_retry_delay: f64,
    /// Where runtime software (awslambdaric and boto3 for each Python, aws-lambda-ric and the AWS
    /// SDK for each Node.js) is provisioned and cached. Servers may share one
    /// [default: <data-dir>/runtimes].
    #[arg(long, env = "EMBER_RUNTIME_DIR")]
    runtime_dir: Option<PathBuf>,
    /// A Python interpreter to offer as a runtime, besides those found on the host (repeatable).
    #[arg(long = "python")]
    pythons: Vec<PathBuf>,
    /// A Node.js (`.../bin/node`) to offer as a runtime, besides those found on the host
    /// (repeatable).
    #[arg(long = "node")]
    nodes: Vec<PathBuf>,
    /// The `ember-agent` binary [default: next to this executable].
    #[arg(long, env = "EMBER_AGENT")]
    agent: Option<PathBuf>,
    /// Freeze a container's processes whenever no invocation runs in it, as Lambda does: a
    /// thread a function leaves running uses no CPU between invocations (`true` or `false`).
    #[arg(long, env = "EMBER_FREEZE_IDLE", default_value_t = true, action = clap::ArgAction::Set)]
    freeze_idle: bool,
    /// Keep, in each VM, a template per Python (and Node.js: `--node-runtime-templates`)
    /// runtime it runs or is readied for (the interpreter started, its runtime client
    /// imported), and fork new containers' runtimes from it
    /// instead of starting them afresh (`true` or `false`).
    #[arg(long, env = "EMBER_RUNTIME_TEMPLATES", default_value_t = true, action = clap::ArgAction::Set)]
    runtime_templates: bool,
    /// Also keep templates of Node.js runtimes (with `--runtime-templates true`); `false`:
    /// Node.js runtimes always start afresh (see README, "Runtime templates") (`true` or
    /// `false`).
    #[arg(long, env = "EMBER_NODE_RUNTIME_TEMPLATES", default_value_t = true, action = clap::ArgAction::Set)]
    node_runtime_templates: bool,
}

/// The warming pool and its replenishment.
#[derive(Debug, clap::Args)]
pub struct WarmingArgs {
    /// N at start: how many VMs join the warming pool each time one leaves it (0 with
    /// `--replenish-policy fixed`: no warming pool).
    #[arg(long, env = "EMBER_REPLENISH_COUNT", default_value_t = 1)]
    replenish_count: u32,
    /// `adaptive`: N follows the measured request rate; `fixed`: N stays `--replenish-count`.
    #[arg(long, env = "EMBER_REPLENISH_POLICY", value_enum, default_value_t = ReplenishPolicy::Adaptive)]
    replenish_policy: ReplenishPolicy,
    /// The smallest N of the adaptive policy, and the warming pool's floor.
    #[arg(long, env = "EMBER_REPLENISH_MIN", default_value_t = 1)]
    replenish_min: u32,
    /// The largest N of the adaptive policy, and the warming pool's ceiling.
    #[arg(long, env = "EMBER_REPLENISH_MAX", default_value_t = 8)]
    replenish_max: u32,
    /// N is computed again when the request rate rises above this many times the rate of the
    /// last computation…
    #[arg(long, env = "EMBER_REPLENISH_RISE", default_value_t = 1.5)]
    replenish_rise: f64,
    /// …or falls below this fraction of it.
    #[arg(long, env = "EMBER_REPLENISH_FALL", default_value_t = 0.5)]
    replenish_fall: f64,
    /// Extra VMs beyond the removals expected during one VM boot, as a fraction of them.
    #[arg(long, env = "EMBER_REPLENISH_MARGIN", default_value_t = 0.5)]
    replenish_margin: f64,
    /// Seconds a warming VM may sit unused before it is retired (down to the pool's floor).
    #[arg(long, env = "EMBER_WARM_TTL", default_value_t = 10.0)]
    warm_ttl: f64,
    /// Seconds over which the request rate is averaged (the time constant of an EWMA).
    #[arg(long, env = "EMBER_RATE_WINDOW", default_value_t = 1.0)]
    rate_window: f64,
}

/// Automatic resource sizing: server-wide defaults, each overridable per function.
#[derive(Debug, clap::Args)]
pub struct SizingArgs {
    /// What sizing does for functions that set no mode of their own: `off`, `recommend`
    /// (report only) or `auto` (later containers get the better amount).
    #[arg(long, env = "EMBER_SIZING_MODE", value_enum, default_value_t = SizingModeArg::Recommend)]
    sizing_mode: SizingModeArg,
    /// Executions a sizing condition must hold for.
    #[arg(long, env = "EMBER_SIZING_THRESHOLD", default_value_t = 5)]
    sizing_threshold: u32,
    /// Over-provisioned: peak memory at or below this percentage of the amount.
    #[arg(long, env = "EMBER_SIZING_OVER_PERCENT", default_value_t = 40.0)]
    sizing_over_percent: f64,
    /// Under-provisioned: peak memory at or above this percentage of the amount.
    #[arg(long, env = "EMBER_SIZING_UNDER_PERCENT", default_value_t = 90.0)]
    sizing_under_percent: f64,
    /// Memory added above the high percentile of peaks, in percent.
    #[arg(long, env = "EMBER_SIZING_HEADROOM_PERCENT", default_value_t = 30.0)]
    sizing_headroom_percent: f64,
    /// A shrink may not slow a CPU-hungry function down by more than this, in percent.
    #[arg(
        long,
        env = "EMBER_SIZING_MAX_SLOWDOWN_PERCENT",
        default_value_t = 10.0
    )]
    sizing_max_slowdown_percent: f64,
    /// Executions without a new shrink after an out-of-memory kill reverted one (doubling
    /// with each revert).
    #[arg(long, env = "EMBER_SIZING_BACKOFF", default_value_t = 20)]
    sizing_backoff: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SchedulingArg {
    Batch,
    Other,
}

impl SchedulingArg {
    fn policy(self) -> Policy {
        match self {
            Self::Batch => Policy::Batch,
            Self::Other => Policy::Other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SizingModeArg {
    Off,
    Recommend,
    Auto,
}

impl SizingArgs {
    fn config(
        &self,
        capacity_mb: u64,
    ) -> anyhow::Result<(ember_executor::SizingConfig, ember_executor::SizingMode)> {
        let overrides = ember_executor::SizingOverrides {
            threshold: Some(self.sizing_threshold),
            over_provisioned_percent: Some(self.sizing_over_percent),
            under_provisioned_percent: Some(self.sizing_under_percent),
            headroom_percent: Some(self.sizing_headroom_percent),
            max_slowdown_percent: Some(self.sizing_max_slowdown_percent),
        };
        overrides
            .validate()
            .map_err(|reason| anyhow::anyhow!("invalid sizing flags: {reason}"))?;
        let defaults = ember_executor::SizingConfig::default();
        let config = ember_executor::SizingConfig {
            backoff_executions: self.sizing_backoff,
            // Within the VM sizes: no container larger than the host's capacity for VMs.
            max_mb: defaults
                .max_mb
                .min(u32::try_from(capacity_mb).unwrap_or(u32::MAX)),
            ..overrides.apply(&defaults)
        };
        let mode = match self.sizing_mode {
            SizingModeArg::Off => ember_executor::SizingMode::Off,
            SizingModeArg::Recommend => ember_executor::SizingMode::Recommend,
            SizingModeArg::Auto => ember_executor::SizingMode::Auto,
        };
        Ok((config, mode))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ReplenishPolicy {
    Adaptive,
    Fixed,
}

impl WarmingArgs {
    fn policy(&self) -> anyhow::Result<ember_fleet::ReplenishConfig> {
        if self.replenish_policy == ReplenishPolicy::Fixed {
            return Ok(ember_fleet::ReplenishConfig::fixed(self.replenish_count));
        }
        anyhow::ensure!(
            self.replenish_min <= self.replenish_max,
            "--replenish-min ({}) must not exceed --replenish-max ({})",
            self.replenish_min,
            self.replenish_max
        );
        anyhow::ensure!(
            self.replenish_rise > 1.0 && self.replenish_fall > 0.0 && self.replenish_fall < 1.0,
            "--replenish-rise must be above 1 and --replenish-fall between 0 and 1"
        );
        anyhow::ensure!(
            self.replenish_margin >= 0.0,
            "--replenish-margin must not be negative"
        );
        Ok(ember_fleet::ReplenishConfig {
            initial: self.replenish_count,
            min: self.replenish_min,
            max: self.replenish_max,
            adaptive: true,
            rise: self.replenish_rise,
            fall: self.replenish_fall,
            margin: self.replenish_margin,
        })
    }
}

impl ServeArgs {
    /// The scheduling policy of the server's threads (set before they start) and of its VMs.
    pub fn scheduling(&self) -> Policy {
        self.exec.scheduling.policy()
    }

    /// The async runtime's worker threads for `serve`.
    pub fn worker_threads(&self) -> usize {
        self.worker_threads.filter(|&n| n > 0).unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        })
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EMBER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours for a terminal only: a log file or journald gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let _lock = lock_data_dir(&args.data_dir)?;
    crate::endpoints::remove_stale(&args.data_dir)?;

    let store_url = args.store.url(&args.data_dir);
    let store = ember_store::Store::open_at(&store_url, &args.data_dir)
        .await
        .with_context(|| format!("cannot open the store at {store_url}"))?;
    let store = crate::blobs::attach(store, &args.blobs, &args.data_dir).await?;
    store
        .recover()
        .await
        .context("cannot clean up after the previous run")?;
    let first_start = ensure_admin_credentials(&store, &args.data_dir, &args.region).await?;
    let blob_collector = crate::blobs::spawn_collector(&store);

    let read_timeout = seconds(args.read_timeout, "--read-timeout")?;
    anyhow::ensure!(
        !read_timeout.is_zero(),
        "--read-timeout must be more than 0 seconds"
    );
    let config = ember_api::ApiConfig {
        region: args.region.clone(),
        account_concurrency: args.exec.account_concurrency,
        read_timeout,
        url_domain: args.url_domain.clone(),
    };
    // Before the executor, so that its first metrics are recorded.
    let metrics = crate::metrics::start(&args.metrics).await?;
    // Before the executor: VMs are told the API's port, and reach it through the network.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let (policy, upstreams) = crate::net_flags::network_settings(&args.network);
    let mut network = crate::network::Network::start(&args.pool, policy, upstreams, addr).await?;
    let (executor, driver) = start_executor(&args, &store, network.host()).await?;
    let state = ember_api::AppState::new(store.clone(), &config)
        .await?
        .with_executor(executor.clone());
    let state = metrics.attach(state);
    // Provisioned concurrency: the environments the store asks for are made again.
    let restored = ember_api::provisioned::restore(&state)
        .await
        .map_err(|e| anyhow::anyhow!("cannot restore provisioned concurrency: {e}"))?;
    if restored > 0 {
        tracing::info!(restored, "provisioned concurrency restored");
    }
    // Function URLs: on their own listener when one is given, else on the API's.
    let url_listener = match args.url_listen {
        Some(url_addr) => Some(
            tokio::net::TcpListener::bind(url_addr)
                .await
                .with_context(|| format!("cannot listen on {url_addr} (--url-listen)"))?,
        ),
        None => None,
    };
    let url_port = match &url_listener {
        Some(l) => l.local_addr()?.port(),
        None => addr.port(),
    };
    let state = state.with_url_port(url_port);
    // Several servers on one store: each keeps its share of provisioned concurrency.
    let provisioned_sync = store
        .is_shared()
        .then(|| tokio::spawn(ember_api::provisioned_hosts::run(state.clone())));
    let sync_state = state.clone();
    let (stop_urls, urls_stopped) = tokio::sync::oneshot::channel::<()>();
    let url_task = match url_listener {
        Some(l) => {
            tracing::info!(addr = %l.local_addr()?, "serving function URLs");
            Some(tokio::spawn(ember_api::serve_urls(
                l,
                state.clone(),
                async move {
                    // A dropped sender stops the listener too.
                    let _ = urls_stopped.await;
                },
            )))
        }
        None => None,
    };
    // The web console: at `/console/` on the API's listener, or on its own (`--console-listen`).
    let console_listener = match args.console.console_listen {
        Some(console_addr) => Some(
            tokio::net::TcpListener::bind(console_addr)
                .await
                .with_context(|| format!("cannot listen on {console_addr} (--console-listen)"))?,
        ),
        None => None,
    };
    let console_url = match &console_listener {
        Some(l) => Some(crate::endpoints::url(l.local_addr()?)),
        None if args.console.no_console => None,
        None => Some(crate::endpoints::url(addr)),
    };
    let (stop_console, console_stopped) = tokio::sync::oneshot::channel::<()>();
    let console_task = console_listener.map(|l| {
        tokio::spawn(ember_api::serve(
            l,
            state.clone().with_console(true),
            async move {
                let _ = console_stopped.await;
            },
        ))
    });
    print_banner(
        &args.data_dir,
        addr,
        metrics.separate_addr(),
        &args.region,
        first_start,
    );
    if let Some(url) = &console_url {
        println!("The web console is at {url}/console/ (sign in with an account's keys)");
    }
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "ember is serving");
    // Before the endpoint files: a SIGTERM as soon as they appear is a graceful stop too.
    let shutdown = shutdown_signal();
    // Ember's API on the VMs' gateway: the same router, stopped with the main listener.
    let (stop_gateway, gateway_stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway_task = network.take_gateway_listener().map(|l| {
        tokio::spawn(ember_api::serve(l, state.clone(), async move {
            let _ = gateway_stopped.await;
        }))
    });
    // Last, so that whoever waits for them finds the banner printed too. Removed (on drop) once
    // both listeners are closed, on every way out of this function.
    let endpoint_files =
        crate::endpoints::EndpointFiles::write(&args.data_dir, addr, metrics.separate_addr())?;

    let on_api = !args.console.no_console && args.console.console_listen.is_none();
    let served = ember_api::serve(listener, state.with_console(on_api), shutdown).await;
    drop(stop_urls);
    drop(stop_gateway);
    drop(stop_console);
    if let Some(task) = console_task {
        match task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "the console listener failed"),
            Err(e) => tracing::warn!(error = %e, "the console listener panicked"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(task) = gateway_task {
        match task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "the gateway's API listener failed"),
            Err(e) => tracing::warn!(error = %e, "the gateway's API listener panicked"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(task) = url_task {
        match task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "the function URL listener failed"),
            Err(e) => tracing::warn!(error = %e, "the function URL listener panicked"),
            Ok(Ok(())) => {}
        }
    }
    metrics.shutdown().await;
    drop(endpoint_files);
    if let Some(task) = provisioned_sync {
        task.abort();
        ember_api::provisioned_hosts::leave(&sync_state).await;
    }
    executor.shutdown().await;
    if let Err(err) = driver.cleanup_stale() {
        tracing::warn!(error = %err, "cannot remove the VMs' cgroups");
    }
    drop(driver);
    network.shutdown();
    served.context("the HTTP server failed")?;
    if let Some(task) = blob_collector {
        task.abort();
    }
    store.close().await;
    tracing::info!("ember stopped");
    Ok(())
}

/// Sets up the VM driver (after removing what a killed predecessor left), the runtimes and the
/// executor.
async fn start_executor(
    args: &ServeArgs,
    store: &ember_store::Store,
    network: Arc<ember_net::host::HostNetwork>,
) -> anyhow::Result<(ember_executor::Executor, Arc<LinuxDriver>)> {
    let exec = &args.exec;
    let data_dir = args
        .data_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", args.data_dir.display()))?;
    let runtime_dir = exec
        .runtime_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("runtimes"));
    let runtimes = Arc::new(
        ember_runtimes::Runtimes::discover(ember_runtimes::RuntimesConfig {
            extra_pythons: exec.pythons.clone(),
            extra_nodes: exec.nodes.clone(),
            ..ember_runtimes::RuntimesConfig::new(runtime_dir)
        })
        .await
        .context("cannot look for runtimes")?,
    );
    tracing::info!(runtimes = %runtimes.describe(), "runtimes found");
    runtimes.clone().provision_all_in_background();

    let agent = match &exec.agent {
        Some(path) => path.clone(),
        None => ember_vm::linux::default_agent_path()?,
    };
    let mut linux = LinuxConfig::new(data_dir.join("vms"), agent);
    linux.cgroup_prefix = cgroup_prefix(&data_dir);
    linux.scheduling = exec.scheduling.policy();
    // The agents log to the server's stderr, filtered as `EMBER_AGENT_LOG` says (the agent's
    // default, warnings, when unset).
    linux.agent_log = std::env::var(ember_vm::linux::AGENT_LOG_ENV).ok();
    linux.network = Some(network);
    let executor_defaults = ember_executor::ExecutorConfig::default();
    linux.function_user = Some(ember_vm::linux::FunctionUser {
        uid: executor_defaults.sandbox_uid,
        gid: executor_defaults.sandbox_gid,
    });
    linux.read_only_binds = runtimes
        .vm_binds()
        .into_iter()
        .map(|(source, target)| ReadOnlyBind { source, target })
        .collect();
    let driver = Arc::new(LinuxDriver::new(linux).context("cannot set up the VM driver")?);
    let report = driver
        .cleanup_stale()
        .context("cannot clean up the VMs of a previous run")?;
    if report.cgroups || report.mounts > 0 || report.dirs > 0 {
        tracing::warn!(?report, "removed what a previous run left behind");
    }

    let rate_window = seconds(exec.warming.rate_window, "--rate-window")?;
    anyhow::ensure!(!rate_window.is_zero(), "--rate-window must be above 0");
    let fleet = ember_fleet::FleetConfig {
        capacity_mb: exec.capacity_mb.unwrap_or_else(default_capacity_mb),
        host_vcpus: exec.capacity_vcpus.unwrap_or_else(host_vcpus),
        vm_memory_mb: exec.vm_memory_mb,
        vm_vcpus: exec.vm_vcpus,
        container_keep_alive: seconds(exec.container_keep_alive, "--container-keep-alive")?,
        vm_keep_alive: seconds(exec.vm_keep_alive, "--vm-keep-alive")?,
        warm_ttl: seconds(exec.warming.warm_ttl, "--warm-ttl")?,
        rate_window,
        replenish: exec.warming.policy()?,
        max_waiting: exec.max_waiting,
        fairness: ember_fleet::FairConfig {
            weights: exec.account_weights.iter().cloned().collect(),
            account_memory_mb: exec.account_memory_mb,
        },
        ..ember_fleet::FleetConfig::default()
    };
    let (sizing, sizing_mode) = exec.sizing.config(fleet.capacity_mb)?;
    let config = ember_executor::ExecutorConfig {
        region: args.region.clone(),
        sizing,
        sizing_mode,
        fleet,
        placement_wait: seconds(exec.placement_wait, "--placement-wait")?,
        account_concurrency: exec.account_concurrency,
        event_retry_base: seconds(exec.event_retry_delay, "--event-retry-delay")?,
        freeze_idle: exec.freeze_idle,
        runtime_templates: exec.runtime_templates,
        node_runtime_templates: exec.node_runtime_templates,
        egress: args.network.default_egress(),
        ..ember_executor::ExecutorConfig::default()
    };
    let executor = ember_executor::Executor::start(
        config,
        driver.clone(),
        store.clone(),
        Arc::new(RuntimeRegistry(runtimes)),
    )
    .await?;
    Ok((executor, driver))
}

/// The executor's view of the host's runtimes.
#[derive(Debug)]
struct RuntimeRegistry(Arc<ember_runtimes::Runtimes>);

impl ember_executor::RuntimeProvider for RuntimeRegistry {
    fn ensure<'a>(&'a self, runtime: &'a str) -> ember_executor::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0
                .ensure(runtime)
                .await
                .map_err(|e| ember_stdx::error_chain(&e))
        })
    }
}

/// Each data dir's VMs live in a cgroup subtree of their own, so that servers sharing a host
/// never clean up each other's VMs.
fn cgroup_prefix(data_dir: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    PathBuf::from(format!("ember/{}", &hex::encode(digest)[..12]))
}

/// The host's CPUs available to this process.
fn host_vcpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

/// `ACCOUNT_ID=W`: a 12-digit account id and a weight of at least 1.
fn parse_account_weight(value: &str) -> Result<(String, u32), String> {
    let (account, weight) = value
        .split_once('=')
        .ok_or_else(|| format!("expected ACCOUNT_ID=W, got {value:?}"))?;
    let account = account.trim();
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{account:?} is not a 12-digit account id"));
    }
    match weight.trim().parse::<u32>() {
        Ok(w) if w >= 1 => Ok((account.to_owned(), w)),
        _ => Err(format!(
            "the weight of {account} must be a whole number of at least 1, got {weight:?}"
        )),
    }
}

/// The host's memory less 2 GiB for everything else, or 4 GiB if it cannot be read.
fn default_capacity_mb() -> u64 {
    let total_kb = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    match total_kb {
        Some(kb) => (kb / 1024).saturating_sub(2048).max(1024),
        None => 4096,
    }
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| anyhow::anyhow!("{flag} must be a non-negative number of seconds"))
}

/// Makes the admin account on first start and writes its keys. If the credentials file is
/// missing later (deleted, or the server died between making the account and writing the
/// file), the admin account gets a fresh key pair and the file is written again. Returns
/// whether the admin account was created now.
async fn ensure_admin_credentials(
    store: &ember_store::Store,
    data_dir: &Path,
    region: &str,
) -> anyhow::Result<bool> {
    let path = credentials::path_in(data_dir);
    let (keys, created) = match store.admin_account_id().await? {
        None => match store.create_account("admin", true).await {
            Ok(keys) => (keys, true),
            // Another host sharing the store made it meanwhile: this one gets a key of it.
            Err(ember_store::StoreError::Conflict(_)) => {
                let admin = store
                    .admin_account_id()
                    .await?
                    .context("the admin account exists but is not an admin")?;
                (store.create_access_key(&admin).await?, false)
            }
            Err(e) => return Err(e.into()),
        },
        Some(_) if path.exists() => return Ok(false),
        Some(admin) => {
            tracing::warn!(path = %path.display(), "admin credentials file missing; issuing new admin keys");
            (store.create_access_key(&admin).await?, false)
        }
    };
    let keys = Keys {
        access_key_id: keys.access_key_id,
        secret_access_key: keys.secret_access_key,
    };
    credentials::write(&path, &keys, region)?;
    Ok(created)
}

/// Holds an exclusive lock on `<data-dir>/ember.lock` for the server's lifetime, so that a
/// second server on the same data dir refuses to start. The kernel drops it if we die.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<Flock<std::fs::File>> {
    let path = data_dir.join("ember.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((file, _)) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            drop(file);
            anyhow::bail!(
                "another ember server (pid {}) is already using data dir {}",
                holder.trim(),
                data_dir.display()
            );
        }
    };
    lock.set_len(0)?;
    writeln!(&mut *lock, "{}", std::process::id())?;
    Ok(lock)
}

/// What a user reads on the terminal. The first `Ember is listening on URL` line is also a
/// contract for scripts (as is `<data-dir>/endpoint`): with `--listen 127.0.0.1:0` it names the
/// port the kernel chose.
fn print_banner(
    data_dir: &Path,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
    region: &str,
    first_start: bool,
) {
    let creds = credentials::path_in(data_dir);
    let creds = creds.canonicalize().unwrap_or(creds);
    if first_start {
        println!(
            "Created the admin account; its keys are in {}",
            creds.display()
        );
    }
    let url = crate::endpoints::url(addr);
    println!(
        "Ember is listening on {url}\n\
         Use it with the AWS CLI or boto3:\n  \
         export AWS_SHARED_CREDENTIALS_FILE={} AWS_DEFAULT_REGION={region}\n  \
         aws lambda list-functions --endpoint-url {url}",
        creds.display()
    );
    if let Some(metrics) = metrics {
        println!(
            "Metrics are served at {}/metrics",
            crate::endpoints::url(metrics)
        );
    }
}

/// Installs the SIGTERM and SIGINT handlers now; the future ends at the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers; stop ember with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_weights_are_an_account_id_and_a_weight_of_at_least_one() {
        assert_eq!(
            parse_account_weight("123456789012=3"),
            Ok(("123456789012".to_owned(), 3))
        );
        for bad in [
            "123456789012",
            "12345=3",
            "12345678901x=3",
            "123456789012=0",
            "123456789012=-1",
            "123456789012=1.5",
            "=2",
        ] {
            assert!(parse_account_weight(bad).is_err(), "{bad}");
        }
    }
}
