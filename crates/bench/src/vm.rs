//! `ember bench vm`: the sandbox's own start-up, below HTTP, the executor and the store, with
//! the Linux driver and the agent's protocol directly (root only): VM creation
//! (`LinuxDriver::boot`, from spawning the agent to its hello) and a container's cold start in a
//! running VM (`CreateContainer`, then the first invocation of a native no-op runtime), next to
//! a floor measured in the same run: spawning and reaping `/bin/true`. With `--python`, also a
//! Python container's cold start in a running VM, started afresh and forked from the VM's
//! runtime template (`PrepareTemplate`), next to the start of a bare interpreter importing the
//! runtime client on the host. With `--snap-start-zip` too, that function's containers in the
//! `--python` runtime, started the ordinary way (its init each time) and forked from its
//! SnapStart template (`CreateContainer::snap_start`), in the same VM. With `--network`, VM
//! creation is measured again with each VM given its network link (`ember_net::host`), and the
//! native cold start in such a VM, its containers' egress allowed and denied (the VM side's
//! networking: their links, made ahead for spares; `Deny`'s routes taken away at assignment).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use ember_executor::{ExecutorConfig, CONTAINER_PIDS_MAX};
use ember_protocol::{
    cpu_millis, CodeSource, CreateContainer, Egress, FunctionSpec, Invocation, Invoke,
    InvokeOutcome, InvokeResult,
};
use ember_vm::linux::{default_agent_path, LinuxConfig, LinuxDriver};
use ember_vm::{Vm, VmDriver, VmSpec};

use crate::invoke::percentile;

#[derive(Debug, Clone, clap::Args)]
pub struct VmBenchArgs {
    /// VMs booted one after another, each stopped before the next (0 skips VM creation).
    #[arg(long, default_value_t = 30)]
    boots: usize,
    /// Containers cold-started one after another in one running VM, each destroyed after its
    /// second invocation (0 skips cold starts).
    #[arg(long, default_value_t = 30)]
    cold_starts: usize,
    /// The native no-op runtime, the function's `bootstrap` [default:
    /// target/release/examples/noop_runtime, built by `cargo build --release -p ember-vm
    /// --example noop_runtime`].
    #[arg(long)]
    bootstrap: Option<PathBuf>,
    /// Memory of each container, in MB; CPU follows (1769 MB = 1 vCPU, capped at the VM's).
    #[arg(long, default_value_t = 1024)]
    memory_mb: u32,
    /// Memory of each VM, in MB.
    #[arg(long, default_value_t = 2048)]
    vm_memory_mb: u64,
    /// vCPUs of each VM.
    #[arg(long, default_value_t = 2)]
    vm_vcpus: u32,
    /// A Python runtime (`python3.12`) whose containers' cold start is measured too, with and
    /// without the VM's runtime template; provisioned in `--runtime-dir`.
    #[arg(long)]
    python: Option<String>,
    /// A function's zip (`tests/functions/pandas/build.sh` builds the numpy + pandas one) whose
    /// containers' cold starts in the `--python` runtime are measured started the ordinary way
    /// and forked from the version's SnapStart template (made once, before the series).
    #[arg(long, requires = "python")]
    snap_start_zip: Option<PathBuf>,
    /// The handler of `--snap-start-zip`.
    #[arg(long, default_value = "app.handler")]
    snap_start_handler: String,
    /// Where Python runtimes are provisioned (as `ember serve --runtime-dir`).
    #[arg(long, env = "EMBER_RUNTIME_DIR", default_value = "runtimes")]
    runtime_dir: PathBuf,
    /// Also boot the VMs with the host's network (a link each, as `ember serve` gives them: a
    /// /24 of `--network-cidr`, its nftables table), measured next to the boots without; and
    /// the native cold start in such a VM, with egress allowed and denied.
    #[arg(long)]
    network: bool,
    /// The pool `--network` takes its block from (as `ember serve --network-cidr`).
    #[arg(long, default_value = ember_net::host::DEFAULT_POOL)]
    network_cidr: ipnet::Ipv4Net,
    /// Print the results as one JSON object.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: VmBenchArgs) -> anyhow::Result<()> {
    // Read before anything boots, so that a missing runtime is said at once.
    let package = if args.cold_starts > 0 {
        Some(noop_package(&args)?)
    } else {
        None
    };
    let state = tempfile::tempdir()?;
    let mut config = LinuxConfig::new(state.path(), default_agent_path()?);
    config.cgroup_prefix = format!("ember/bench-vm-{}", std::process::id()).into();
    // What the agent logs (its `container started` lines carry each creation's phases).
    config.agent_log = std::env::var("EMBER_AGENT_LOG").ok();
    let python = match &args.python {
        Some(runtime) => {
            let runtimes = ember_runtimes::Runtimes::discover(ember_runtimes::RuntimesConfig::new(
                args.runtime_dir.clone(),
            ))
            .await?;
            runtimes
                .ensure(runtime)
                .await
                .with_context(|| format!("cannot provision {runtime}"))?;
            config.read_only_binds = runtimes
                .vm_binds()
                .into_iter()
                .map(|(source, target)| ember_vm::linux::ReadOnlyBind { source, target })
                .collect();
            let host = runtimes
                .python(runtime)
                .context("no such Python runtime")?
                .executable
                .clone();
            Some((runtime.clone(), host, runtimes.runtime_dir().join(runtime)))
        }
        None => None,
    };
    // With --network, a second driver over the same settings whose VMs get links.
    let networked = if args.network && (args.boots > 0 || args.cold_starts > 0) {
        let host = ember_net::host::HostNetwork::start(ember_net::host::HostConfig {
            pool: args.network_cidr,
            ..ember_net::host::HostConfig::new(1)
        })
        .map_err(|e| anyhow::anyhow!(ember_stdx::error_chain(&e)))
        .context("cannot set up the VMs' network")?;
        let host = std::sync::Arc::new(host);
        let mut config = config.clone();
        config.cgroup_prefix = format!("ember/bench-vm-net-{}", std::process::id()).into();
        config.network = Some(host.clone());
        Some((
            LinuxDriver::new(config).context("the VM benchmark needs root")?,
            host,
        ))
    } else {
        None
    };
    let driver = LinuxDriver::new(config).context("the VM benchmark needs root")?;
    let spec = |id: String| VmSpec {
        id,
        memory_mb: args.vm_memory_mb,
        vcpus: args.vm_vcpus,
        pids_max: u64::from(CONTAINER_PIDS_MAX) * 16 + 64,
    };

    let mut results = serde_json::Map::new();
    let measured = async {
        // The floor, measured in the same run: starting any process at all on this host
        // (spawn `/bin/true`, wait for it to exit). A VM and a container each start one or more.
        let runs = args.boots.max(args.cold_starts).max(1);
        let mut floor = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            let status = tokio::process::Command::new("/bin/true").status().await?;
            anyhow::ensure!(status.success(), "/bin/true failed: {status}");
            floor.push(ms(started.elapsed()));
        }
        let floor = Summary::of(&floor);
        if !args.json {
            println!(
                "floor: a process spawned and reaped ({runs} runs, /bin/true): {}",
                floor.text()
            );
        }
        results.insert(
            "process_floor".into(),
            json!({"runs": runs, "ms": floor.to_json()}),
        );
        // With --network, the two series alternate (a VM without, one with), so that both
        // see the same host: each boot follows the other kind's teardown.
        let mut net_boots = Vec::with_capacity(args.boots);
        if args.boots > 0 {
            let mut boots = Vec::with_capacity(args.boots);
            for i in 0..args.boots {
                let started = Instant::now();
                let vm = driver.boot(spec(format!("boot-{i}"))).await?;
                boots.push(ms(started.elapsed()));
                vm.shutdown().await?;
                if let Some((driver, _)) = &networked {
                    let started = Instant::now();
                    let vm = driver.boot(spec(format!("net-{i}"))).await?;
                    net_boots.push(ms(started.elapsed()));
                    vm.shutdown().await?;
                }
            }
            let boots = Summary::of(&boots);
            if !args.json {
                println!(
                    "VM creation ({} boots, {} MB, {} vCPUs; spawn to the agent's hello): {}",
                    args.boots,
                    args.vm_memory_mb,
                    args.vm_vcpus,
                    boots.text()
                );
            }
            results.insert(
                "vm_creation".into(),
                json!({"boots": args.boots, "vm_memory_mb": args.vm_memory_mb,
                       "vm_vcpus": args.vm_vcpus, "ms": boots.to_json()}),
            );
        }
        if let Some((_, host)) = &networked {
            let boots = Summary::of(&net_boots);
            if !args.json {
                println!(
                    "VM creation with its network link ({} boots, block {}): {}",
                    args.boots,
                    host.block(),
                    boots.text()
                );
            }
            results.insert(
                "vm_creation_network".into(),
                json!({"boots": args.boots, "vm_memory_mb": args.vm_memory_mb,
                       "vm_vcpus": args.vm_vcpus, "ms": boots.to_json()}),
            );
        }
        if let Some((zip, sha256)) = &package {
            let vm = driver.boot(spec("cold".into())).await?;
            let cold = cold_starts(&vm, &args, zip, sha256).await;
            vm.shutdown().await?;
            let cold = cold?;
            if !args.json {
                println!(
                    "container cold start ({} runs, {} MB = {} vCPU; create + first invoke of a \
                     native no-op runtime): {}",
                    args.cold_starts,
                    args.memory_mb,
                    f64::from(cpu_millis(u64::from(args.memory_mb), args.vm_vcpus)) / 1000.0,
                    cold.total.text()
                );
                println!("  of which create:                 {}", cold.create.text());
                println!("  init duration (to first /next):  {}", cold.init.text());
                println!("warm invoke (the second one):      {}", cold.warm.text());
            }
            results.insert(
                "container_cold_start".into(),
                json!({"runs": args.cold_starts, "memory_mb": args.memory_mb,
                       "total_ms": cold.total.to_json(), "create_ms": cold.create.to_json(),
                       "init_ms": cold.init.to_json(), "warm_invoke_ms": cold.warm.to_json()}),
            );
        }
        if let (Some((zip, sha256)), Some((networked, _))) = (&package, &networked) {
            let vm = networked.boot(spec("cold-net".into())).await?;
            let measured = async {
                vm.connection().put_code(sha256, zip).await?;
                let mut series = Vec::new();
                for (name, egress) in [("allow", Egress::Allow), ("deny", Egress::Deny)] {
                    let cold = cold_start_series(
                        &vm,
                        &args,
                        "provided.al2023",
                        "noop",
                        sha256,
                        name,
                        false,
                        egress,
                    )
                    .await?;
                    series.push((name, cold));
                }
                anyhow::Ok(series)
            }
            .await;
            vm.shutdown().await?;
            let mut out = serde_json::Map::new();
            for (egress, cold) in measured? {
                if !args.json {
                    println!(
                        "container cold start in a VM with a network, egress {egress} ({} runs; \
                         create + first invoke of a native no-op runtime): {}",
                        args.cold_starts,
                        cold.total.text()
                    );
                    println!("  of which create:                 {}", cold.create.text());
                    println!("  init duration (to first /next):  {}", cold.init.text());
                }
                out.insert(
                    egress.into(),
                    json!({"total_ms": cold.total.to_json(), "create_ms": cold.create.to_json(),
                           "init_ms": cold.init.to_json(),
                           "warm_invoke_ms": cold.warm.to_json()}),
                );
            }
            results.insert("container_cold_start_network".into(), Value::Object(out));
        }
        if let Some((runtime, host_python, runtime_dir)) = &python {
            // The floor: the bare interpreter importing the runtime client, on the host.
            let mut floor = Vec::with_capacity(args.cold_starts);
            for _ in 0..args.cold_starts.max(1) {
                let started = Instant::now();
                let status = tokio::process::Command::new(host_python)
                    .arg("-c")
                    .arg("import awslambdaric.bootstrap")
                    .env("PYTHONPATH", runtime_dir)
                    .status()
                    .await?;
                anyhow::ensure!(status.success(), "importing awslambdaric failed: {status}");
                floor.push(ms(started.elapsed()));
            }
            let floor = Summary::of(&floor);
            let vm = driver.boot(spec("python".into())).await?;
            let measured = python_cold_starts(&vm, &args, runtime).await;
            vm.shutdown().await?;
            let (fresh, forked, rss_mb) = measured?;
            if !args.json {
                println!(
                    "floor: {runtime} started on the host, importing awslambdaric: {}",
                    floor.text()
                );
                for (how, cold) in [
                    ("started afresh", &fresh),
                    ("forked from the template", &forked),
                ] {
                    println!(
                        "{runtime} container cold start, {how} ({} runs, {} MB; create + first \
                         invoke): {}",
                        args.cold_starts,
                        args.memory_mb,
                        cold.total.text()
                    );
                    println!("  of which create:                 {}", cold.create.text());
                    println!("  init duration (to first /next):  {}", cold.init.text());
                }
                println!("the template's resident memory: {rss_mb} MB");
            }
            let summary = |cold: &ColdStarts| {
                json!({"total_ms": cold.total.to_json(), "create_ms": cold.create.to_json(),
                       "init_ms": cold.init.to_json(), "warm_invoke_ms": cold.warm.to_json()})
            };
            results.insert(
                "python_cold_start".into(),
                json!({"runtime": runtime, "runs": args.cold_starts, "memory_mb": args.memory_mb,
                       "interpreter_floor_ms": floor.to_json(), "fresh": summary(&fresh),
                       "forked": summary(&forked), "template_rss_mb": rss_mb}),
            );
        }
        if let (Some(zip), Some((runtime, _, _))) = (&args.snap_start_zip, &python) {
            let zip = Bytes::from(
                std::fs::read(zip).with_context(|| format!("cannot read {}", zip.display()))?,
            );
            let vm = driver.boot(spec("snap".into())).await?;
            let measured = snap_start_cold_starts(&vm, &args, runtime, &zip).await;
            vm.shutdown().await?;
            let (ordinary, snap, template_ms) = measured?;
            if !args.json {
                println!(
                    "{} ({} MB zip) SnapStart template: its init, once: {template_ms:.1} ms",
                    args.snap_start_handler,
                    zip.len() >> 20
                );
                for (how, cold) in [
                    ("started the ordinary way", &ordinary),
                    ("forked from its SnapStart template", &snap),
                ] {
                    println!(
                        "{runtime} container cold start of --snap-start-zip, {how} ({} runs, {} \
                         MB; create + first invoke): {}",
                        args.cold_starts,
                        args.memory_mb,
                        cold.total.text()
                    );
                    println!("  of which create:                 {}", cold.create.text());
                    println!("  init (restore) duration:         {}", cold.init.text());
                }
            }
            let summary = |cold: &ColdStarts| {
                json!({"total_ms": cold.total.to_json(), "create_ms": cold.create.to_json(),
                       "init_ms": cold.init.to_json(), "warm_invoke_ms": cold.warm.to_json()})
            };
            results.insert(
                "snap_start_cold_start".into(),
                json!({"runtime": runtime, "runs": args.cold_starts, "memory_mb": args.memory_mb,
                       "zip_bytes": zip.len(), "template_init_ms": template_ms,
                       "ordinary": summary(&ordinary), "snap_start": summary(&snap)}),
            );
        }
        anyhow::Ok(())
    }
    .await;
    driver.cleanup_stale()?;
    if let Some((driver, host)) = networked {
        driver.cleanup_stale()?;
        drop(driver);
        host.shutdown()
            .map_err(|e| anyhow::anyhow!(ember_stdx::error_chain(&e)))?;
    }
    measured?;
    if args.json {
        println!("{}", Value::Object(results));
    }
    Ok(())
}

/// The zip of the no-op runtime as `bootstrap`, and its sha256 (hex).
fn noop_package(args: &VmBenchArgs) -> anyhow::Result<(Bytes, String)> {
    let bootstrap = args
        .bootstrap
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/release/examples/noop_runtime"));
    let dir = tempfile::tempdir()?;
    std::fs::copy(&bootstrap, dir.path().join("bootstrap")).with_context(|| {
        format!(
            "cannot read {} (build it with `cargo build --release -p ember-vm --example \
             noop_runtime`, or pass --bootstrap)",
            bootstrap.display()
        )
    })?;
    let zip = ember_package::zip_dir(dir.path())?;
    let sha256 = hex::encode(Sha256::digest(&zip));
    Ok((Bytes::from(zip), sha256))
}

/// What the cold starts measured, in ms.
struct ColdStarts {
    /// `CreateContainer` sent to the first invocation answered.
    total: Summary,
    create: Summary,
    /// The agent's `init_duration_ms`: the container's start to its runtime's first poll of
    /// `/next`.
    init: Summary,
    /// The container's second invocation.
    warm: Summary,
}

async fn cold_starts(
    vm: &Vm,
    args: &VmBenchArgs,
    zip: &Bytes,
    sha256: &str,
) -> anyhow::Result<ColdStarts> {
    vm.connection().put_code(sha256, zip).await?;
    cold_start_series(
        vm,
        args,
        "provided.al2023",
        "noop",
        sha256,
        "cold",
        false,
        Egress::Allow,
    )
    .await
}

/// `--snap-start-zip`'s cold starts in one VM: started the ordinary way, then forked from its
/// SnapStart template, made by one container created and destroyed before the series (its
/// time, create to first answer, is the third value).
async fn snap_start_cold_starts(
    vm: &Vm,
    args: &VmBenchArgs,
    runtime: &str,
    zip: &Bytes,
) -> anyhow::Result<(ColdStarts, ColdStarts, f64)> {
    let sha256 = hex::encode(Sha256::digest(zip));
    let agent = vm.connection();
    agent.put_code(&sha256, zip).await?;
    let handler = args.snap_start_handler.as_str();
    let ordinary = cold_start_series(
        vm,
        args,
        runtime,
        handler,
        &sha256,
        "ordinary",
        false,
        Egress::Allow,
    )
    .await?;
    let once = VmBenchArgs {
        cold_starts: 1,
        ..args.clone()
    };
    let started = Instant::now();
    cold_start_series(
        vm,
        &once,
        runtime,
        handler,
        &sha256,
        "template",
        true,
        Egress::Allow,
    )
    .await?;
    let template_ms = ms(started.elapsed());
    let snap = cold_start_series(
        vm,
        args,
        runtime,
        handler,
        &sha256,
        "snap",
        true,
        Egress::Allow,
    )
    .await?;
    Ok((ordinary, snap, template_ms))
}

/// `--cold-starts` containers of `runtime` running `handler` from the stored package `sha256`,
/// one after another, each destroyed after its second invocation.
#[allow(clippy::too_many_arguments)]
async fn cold_start_series(
    vm: &Vm,
    args: &VmBenchArgs,
    runtime: &str,
    handler: &str,
    sha256: &str,
    prefix: &str,
    snap_start: bool,
    egress: Egress,
) -> anyhow::Result<ColdStarts> {
    let agent = vm.connection();
    let defaults = ExecutorConfig::default();
    let (mut total, mut create, mut init, mut warm) = (vec![], vec![], vec![], vec![]);
    for i in 0..args.cold_starts {
        let id = format!("{prefix}-{i}");
        let request = CreateContainer {
            container_id: id.clone(),
            function: FunctionSpec {
                name: "bench-noop".into(),
                arn: ARN.into(),
                // SnapStart applies to published versions only.
                version: if snap_start { "1" } else { "$LATEST" }.into(),
                handler: handler.into(),
                runtime: runtime.into(),
                region: "us-east-1".into(),
                environment: Default::default(),
                memory_mb: args.memory_mb,
                timeout_ms: 30_000,
                ephemeral_storage_mb: 512,
                code: CodeSource::Stored {
                    sha256: sha256.to_owned(),
                },
                layers: Vec::new(),
            },
            uid: defaults.sandbox_uid,
            gid: defaults.sandbox_gid,
            cpu_millis: cpu_millis(u64::from(args.memory_mb), args.vm_vcpus),
            pids_max: CONTAINER_PIDS_MAX,
            freeze_idle: defaults.freeze_idle,
            snap_start,
            credentials: None,
            egress,
        };
        let started = Instant::now();
        agent.create_container(request).await?;
        let created = started.elapsed();
        let first = answered(agent.invoke(invocation(&id)?).await?)?;
        total.push(ms(started.elapsed()));
        create.push(ms(created));
        init.push(
            first
                .init_duration_ms
                .context("the first invocation reported no init duration")?,
        );
        let started = Instant::now();
        answered(agent.invoke(invocation(&id)?).await?)?;
        warm.push(ms(started.elapsed()));
        agent.destroy_container(&id).await?;
    }
    Ok(ColdStarts {
        total: Summary::of(&total),
        create: Summary::of(&create),
        init: Summary::of(&init),
        warm: Summary::of(&warm),
    })
}

/// Python containers' cold starts in one VM: first started afresh, then forked from the VM's
/// template of `runtime`. Returns both, and the template's resident memory in MB.
async fn python_cold_starts(
    vm: &Vm,
    args: &VmBenchArgs,
    runtime: &str,
) -> anyhow::Result<(ColdStarts, ColdStarts, u64)> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("app.py"),
        "def handler(event, context):\n    return {}\n",
    )?;
    let zip = ember_package::zip_dir(dir.path())?;
    let sha256 = hex::encode(Sha256::digest(&zip));
    let zip = Bytes::from(zip);
    let agent = vm.connection();
    agent.put_code(&sha256, &zip).await?;
    let fresh = cold_start_series(
        vm,
        args,
        runtime,
        "app.handler",
        &sha256,
        "fresh",
        false,
        Egress::Allow,
    )
    .await?;
    let rss_mb = agent.prepare_template(runtime).await?;
    let forked = cold_start_series(
        vm,
        args,
        runtime,
        "app.handler",
        &sha256,
        "forked",
        false,
        Egress::Allow,
    )
    .await?;
    Ok((fresh, forked, rss_mb))
}

const ARN: &str = "arn:aws:lambda:us-east-1:000000000000:function:bench-noop";

fn invocation(container_id: &str) -> anyhow::Result<Invoke> {
    let deadline = SystemTime::now().duration_since(UNIX_EPOCH)? + Duration::from_secs(30);
    Ok(Invoke {
        container_id: container_id.to_owned(),
        invocation: Invocation {
            request_id: uuid::Uuid::new_v4().to_string(),
            payload: Bytes::from_static(b"{}"),
            deadline_ms: u64::try_from(deadline.as_millis())?,
            invoked_function_arn: ARN.into(),
            trace_id: None,
            client_context: None,
            cognito_identity: None,
        },
    })
}

/// The result of an invocation the runtime answered; anything else fails the benchmark.
fn answered(result: InvokeResult) -> anyhow::Result<InvokeResult> {
    if !matches!(result.outcome, InvokeOutcome::Ok { .. }) {
        bail!(
            "the no-op runtime did not answer: {:?}; logs:\n{}",
            result.outcome,
            result.logs
        );
    }
    Ok(result)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Percentiles of a series of times in ms (nearest rank).
struct Summary {
    min: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Summary {
    fn of(values: &[f64]) -> Self {
        Self {
            min: percentile(values, 0.0),
            p50: percentile(values, 0.50),
            p90: percentile(values, 0.90),
            p99: percentile(values, 0.99),
            max: percentile(values, 1.0),
        }
    }

    fn text(&self) -> String {
        format!(
            "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  (min {:.2} ms, max {:.2} ms)",
            self.p50, self.p90, self.p99, self.min, self.max
        )
    }

    fn to_json(&self) -> Value {
        json!({"min": self.min, "p50": self.p50, "p90": self.p90, "p99": self.p99, "max": self.max})
    }
}
