//! What the benchmarks that start their own servers share (`ember bench burst`, `sizing`,
//! `provisioned`, `streaming`, and `invoke` and `load` with `--serve`): a child `ember serve` on
//! a temporary data dir and its admin's client, the provisioning of a Python runtime into a
//! runtime dir the servers share, the description of the machine, and report helpers.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use tokio::time::Instant;

use ember_client::{credentials, Client};

/// The region the servers run in (their default) and the benchmarks sign for.
pub(crate) const REGION: &str = "us-east-1";

/// How long a server may take to start answering, and to stop after SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// `dir` (a command-line path) made absolute, for a server whose working directory is not ours
/// to rely on.
pub(crate) fn absolute(dir: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(dir).with_context(|| format!("cannot resolve {}", dir.display()))
}

/// An HTTP client for one benchmark's requests: Nagle off, each request given up after
/// `timeout`.
pub(crate) fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(timeout)
        .build()
        .context("cannot build the HTTP client")
}

/// Finds the Python runtime to use (`wanted`, else python3.11 if the host has it, else its newest
/// python3.N) and provisions awslambdaric for it, and for every other Python the servers will
/// find, into the shared runtime dir now: each server provisions them all in the background at
/// start, and pip must not compete with a measurement for the CPU. `label` prefixes the progress
/// lines on stderr.
pub(crate) async fn provision(
    runtime_dir: &Path,
    wanted: Option<&str>,
    label: &str,
) -> anyhow::Result<ember_runtimes::Python> {
    let runtimes =
        ember_runtimes::Runtimes::discover(ember_runtimes::RuntimesConfig::new(runtime_dir))
            .await
            .context("cannot look for runtimes")?;
    let pythons = runtimes.python_versions();
    let chosen = match wanted {
        Some(runtime) => runtimes
            .python(runtime)
            .with_context(|| format!("this host has no {runtime}"))?,
        None => match runtimes.python("python3.11") {
            Some(python) => python,
            None => pythons
                .last()
                .context("this host has no CPython 3.9 or newer")?,
        },
    }
    .clone();
    eprintln!(
        "{label}: provisioning {} in {} (once)",
        chosen.runtime,
        runtime_dir.display()
    );
    runtimes
        .ensure(&chosen.runtime)
        .await
        .with_context(|| format!("cannot provision {}", chosen.runtime))?;
    for other in pythons.iter().filter(|p| p.runtime != chosen.runtime) {
        if let Err(err) = runtimes.ensure(&other.runtime).await {
            eprintln!("{label}: warning: {err}");
        }
    }
    Ok(chosen)
}

/// One `ember serve` child process on a temporary data dir, its output in a log file.
#[derive(Debug)]
pub(crate) struct Server {
    child: tokio::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) endpoint: String,
    data_dir: tempfile::TempDir,
    log: PathBuf,
}

impl Server {
    /// Starts `exe serve` with `args` on a free port, a fresh data dir and `runtime_dir`, its
    /// output going to `log`; returns once it answers.
    pub(crate) async fn start(
        exe: &Path,
        args: &[&str],
        runtime_dir: &Path,
        log: &Path,
    ) -> anyhow::Result<Server> {
        Server::start_with_env(exe, args, &[], runtime_dir, log).await
    }

    /// [`Server::start`], with `env` added to the server's environment (an object store's
    /// credentials).
    pub(crate) async fn start_with_env(
        exe: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        runtime_dir: &Path,
        log: &Path,
    ) -> anyhow::Result<Server> {
        let data_dir = tempfile::Builder::new()
            .prefix("ember-bench-")
            .tempdir()
            .context("cannot create a data dir")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("cannot find a free port")?
            .port();
        let listen = format!("127.0.0.1:{port}");
        let out = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = tokio::process::Command::new(exe);
        command
            .arg("serve")
            .args(["--listen", &listen])
            .arg("--data-dir")
            .arg(data_dir.path())
            .arg("--runtime-dir")
            .arg(runtime_dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // A last resort, if the benchmark itself fails before `stop`.
            .kill_on_drop(true);
        // Only the flags set up the server: no EMBER_* setting leaks in from the environment
        // but the log filters (the server's and its agents') and the agent's location.
        for (key, _) in std::env::vars_os() {
            if let Some(name) = key.to_str() {
                let kept = ["EMBER_LOG", "EMBER_AGENT_LOG", "EMBER_AGENT"];
                if name.starts_with("EMBER_") && !kept.contains(&name) {
                    command.env_remove(name);
                }
            }
        }
        command.envs(env.iter().copied());
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {} serve", exe.display()))?;
        let mut server = Server {
            child,
            endpoint: format!("http://{listen}"),
            data_dir,
            log: log.to_owned(),
        };
        match server.wait_ready(&listen).await {
            Ok(()) => Ok(server),
            Err(err) => {
                let _ = server.stop().await;
                Err(err)
            }
        }
    }

    /// Starts this executable's `serve`, as [`Server::start`], first creating `log`'s folder.
    pub(crate) async fn start_this(
        args: &[&str],
        runtime_dir: &Path,
        log: &Path,
    ) -> anyhow::Result<Server> {
        Server::start_this_with_env(args, &[], runtime_dir, log).await
    }

    /// [`Server::start_this`], with `env` added to the server's environment.
    pub(crate) async fn start_this_with_env(
        args: &[&str],
        env: &[(&str, &str)],
        runtime_dir: &Path,
        log: &Path,
    ) -> anyhow::Result<Server> {
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let exe = std::env::current_exe().context("cannot find this executable")?;
        Server::start_with_env(&exe, args, env, runtime_dir, log).await
    }

    /// A client of this server over `http`, signed with the admin's keys that it wrote at start.
    pub(crate) fn admin_client(&self, http: reqwest::Client) -> anyhow::Result<Client> {
        let keys = credentials::read(&credentials::path_in(self.data_dir()), "default")?;
        Ok(Client::with_keys(http, &self.endpoint, keys, REGION)?)
    }

    pub(crate) fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The server's process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits until the admin credentials are written and the port accepts connections.
    async fn wait_ready(&mut self, listen: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let credentials = credentials::path_in(self.data_dir());
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "the server exited ({status}) before serving; see {}",
                    self.log.display()
                );
            }
            if credentials.exists() && tokio::net::TcpStream::connect(listen).await.is_ok() {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the server did not answer within {} s; see {}",
                START_TIMEOUT.as_secs(),
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server with SIGTERM (it stops its VMs) and waits for it.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        if let Some(pid) = self.child.id() {
            let pid = i32::try_from(pid).context("pid out of range")?;
            kill(Pid::from_raw(pid), Signal::SIGTERM).context("cannot signal the server")?;
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status.context("cannot wait for the server")?;
                anyhow::ensure!(
                    status.success(),
                    "the server exited with {status}; see {}",
                    self.log.display()
                );
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                anyhow::bail!(
                    "the server did not stop within {} s of SIGTERM and was killed; see {}",
                    STOP_TIMEOUT.as_secs(),
                    self.log.display()
                )
            }
        }
    }
}

// ---- the machine ------------------------------------------------------------------------------

/// The host's 1-minute load average.
pub(crate) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The machine the benchmark runs on, as BENCHMARKS.md describes it.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    cpu: String,
    cores: usize,
    memory_gib: f64,
    kernel: String,
    cgroup: &'static str,
}

pub(crate) fn machine() -> Machine {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown CPU".to_owned(), |(_, v)| v.trim().to_owned());
    let memory_kb = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    let cgroup = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2"
    } else if Path::new("/sys/fs/cgroup/unified").exists() {
        "v1 (hybrid)"
    } else {
        "v1"
    };
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        memory_gib: memory_kb as f64 / (1024.0 * 1024.0),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        cgroup,
    }
}

impl Machine {
    pub(crate) fn describe(&self) -> String {
        format!(
            "{}, {} cores, {:.1} GiB, Linux {}, cgroup {}",
            self.cpu, self.cores, self.memory_gib, self.kernel, self.cgroup
        )
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({"cpu": self.cpu, "cores": self.cores, "memory_gib": self.memory_gib,
               "kernel": self.kernel, "cgroup": self.cgroup})
    }
}

// ---- reports ----------------------------------------------------------------------------------

/// A number for JSON: `null` when it is NaN or infinite (no samples).
pub(crate) fn nan_null(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

pub(crate) fn pass_fail(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}
