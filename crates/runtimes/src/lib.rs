//! The host's Lambda runtime registry: which runtimes this host can run, and their software
//! provisioned once, cached on disk.
//!
//! [`Runtimes::discover`] finds the host's CPython 3.9+ interpreters (one per `python3.N`) and
//! Node.js 18+ (one per `nodejsN.x`, module `node`) at server start. [`Runtimes::ensure`] makes a
//! runtime ready before a function uses it: `provided*` need nothing; `python3.N` needs
//! `<runtime_dir>/python3.N/`, awslambdaric and boto3 installed there by the interpreter's own pip
//! plus a `bootstrap` script (see [`bootstrap_script`]); `nodejsN.x` needs
//! `<runtime_dir>/nodejsN.x/`, aws-lambda-ric and the AWS SDK for JavaScript v3 clients installed
//! by that Node.js's npm plus Lambda's entry and bootstrap ([`node_bootstrap_script`]). Each is
//! written once and reused by every later server.
//!
//! Every VM gets read-only binds of the runtime directory at [`VM_RUNTIMES_DIR`] and of each
//! interpreter's prefix at `/opt/ember/lang/<runtime>` ([`Runtimes::vm_binds`]); the agent binds
//! those at `/var/runtime` and `/var/lang` in a function's container.
//!
//! The runtime directory may be shared by several servers (tests and CI share one to provision
//! once): provisioning a runtime happens under a `flock` on `<runtime_dir>/.<runtime>.lock`, in a
//! temporary directory renamed into place, so two processes never install into one directory
//! and a reader never sees a half-written one.

#![forbid(unsafe_code)]

mod discover;
mod node;
mod provision;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_stdx::error_chain;
use tokio::sync::Mutex;
use tokio::task::JoinSet;

pub use discover::{Python, SearchPaths, MIN_PYTHON_MINOR};
pub use node::{
    default_node_packages, node_bootstrap_script, node_complete, ric_version, sdk_version, Node,
    NodeError, NodeMarker, MIN_NODE_MAJOR, SDK_PACKAGES, TEMPLATE_ADDON, TEMPLATE_ADDON_SOURCE,
};
pub use provision::{bootstrap_script, Marker, ProvisionError, MARKER};

use node::NodeJob;
use provision::Job;

/// Runtimes that run the function's own `/var/task/bootstrap` and need nothing from the host.
pub const PROVIDED_RUNTIMES: &[&str] = &["provided", "provided.al2", "provided.al2023"];

/// Where the runtime directory is bound in every VM.
pub const VM_RUNTIMES_DIR: &str = "/opt/ember/runtimes";

/// Where each interpreter's prefix is bound in every VM: `/opt/ember/lang/<runtime>`.
pub const VM_LANG_DIR: &str = "/opt/ember/lang";

/// The awslambdaric versions installed: 3.x and 4.x keep `python -m awslambdaric <handler>`.
pub const AWSLAMBDARIC_REQUIREMENT: &str = "awslambdaric>=3,<5";

/// The boto3 a `python3.N` runtime ships, as AWS's do: the version the end-to-end tests' botocore
/// has, on Python 3.10 and up; on 3.9, the last boto3 that supports it.
pub fn boto3_version(minor: u32) -> &'static str {
    if minor >= 10 {
        "1.44.18"
    } else {
        "1.42.97"
    }
}

/// What pip installs into a `python3.<minor>` runtime directory: awslambdaric and boto3.
pub fn default_python_requirements(minor: u32) -> Vec<String> {
    vec![
        AWSLAMBDARIC_REQUIREMENT.to_owned(),
        format!("boto3=={}", boto3_version(minor)),
    ]
}

/// The environment variable the server reads the runtime directory from, by convention; a
/// directory shared by many servers (tests, CI) is provisioned once for all of them.
pub const RUNTIME_DIR_ENV: &str = "EMBER_RUNTIME_DIR";

/// How [`Runtimes::discover`] finds interpreters and how runtimes are provisioned.
#[derive(Debug, Clone)]
pub struct RuntimesConfig {
    /// Where provisioned runtimes live (`<runtime_dir>/python3.N/`). Created if missing. May be
    /// shared between servers, even running at once.
    pub runtime_dir: PathBuf,
    /// Interpreters to consider besides those found in [`RuntimesConfig::search`]; before them,
    /// among interpreters whose prefix is not `/usr` or `/usr/local`.
    pub extra_pythons: Vec<PathBuf>,
    /// Node.js executables to consider besides those found in [`RuntimesConfig::search`].
    pub extra_nodes: Vec<PathBuf>,
    /// pip's `--index-url`; `None` for pip's own configuration (PyPI by default).
    pub pip_index_url: Option<String>,
    /// Where to look for `python3.N` and `node` executables.
    pub search: SearchPaths,
    /// The pip requirements installed for a Python minor version.
    pub python_requirements: fn(u32) -> Vec<String>,
    /// The npm packages (name → exact version) installed for a Node.js major version.
    pub node_packages: fn(u32) -> BTreeMap<String, String>,
    /// How long one `pip install` may take.
    pub pip_timeout: Duration,
    /// How long one `npm install` (which builds aws-lambda-ric's native code) may take.
    pub npm_timeout: Duration,
    /// The `PATH` npm and the build tools are looked up in; `None` for the server's.
    pub tool_path: Option<std::ffi::OsString>,
    /// How long a failed provisioning is reported as is, before a call tries again.
    pub retry_after: Duration,
}

impl RuntimesConfig {
    /// The defaults: the host's usual places, PyPI and npm's registry, a 5-minute pip timeout,
    /// a 15-minute npm timeout, retry after 30 s.
    pub fn new(runtime_dir: impl Into<PathBuf>) -> Self {
        Self {
            runtime_dir: runtime_dir.into(),
            extra_pythons: Vec::new(),
            extra_nodes: Vec::new(),
            pip_index_url: None,
            search: SearchPaths::host(),
            python_requirements: default_python_requirements,
            node_packages: default_node_packages,
            pip_timeout: Duration::from_secs(300),
            npm_timeout: Duration::from_secs(900),
            tool_path: None,
            retry_after: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "runtime {runtime} is not available on this host (available: {})",
        available.join(", ")
    )]
    Unavailable {
        runtime: String,
        available: Vec<String>,
    },
    /// `reason` is the whole chain of what failed, e.g. "`pip install awslambdaric` failed: …".
    #[error("cannot provision {runtime}: {reason}")]
    Provision { runtime: String, reason: String },
    #[error("cannot create the runtime directory {}", path.display())]
    RuntimeDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The provisioning state of one runtime in this process. Its mutex is held for a whole
/// attempt, so concurrent callers wait for that attempt and then read its result.
#[derive(Debug, Default)]
struct Slot {
    ready: bool,
    failure: Option<(Instant, String)>,
}

/// The runtimes this host can run. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Runtimes {
    config: RuntimesConfig,
    pythons: Vec<Python>,
    nodes: Vec<Node>,
    slots: BTreeMap<String, Mutex<Slot>>,
}

impl Runtimes {
    /// Finds the host's interpreters (one subprocess each, concurrently), creates the runtime
    /// directory and removes what interrupted provisioning attempts left there.
    pub async fn discover(mut config: RuntimesConfig) -> Result<Runtimes, RuntimeError> {
        let started = Instant::now();
        let dir_error = |path: &Path| {
            let path = path.to_owned();
            move |source| RuntimeError::RuntimeDir { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(&config.runtime_dir)
            .map_err(dir_error(&config.runtime_dir))?;
        // Absolute, for the VM binds.
        config.runtime_dir =
            std::fs::canonicalize(&config.runtime_dir).map_err(dir_error(&config.runtime_dir))?;

        let runtime_dir = config.runtime_dir.clone();
        match tokio::task::spawn_blocking(move || provision::clean_stale(&runtime_dir)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %error_chain(&e), "cannot clean the runtime directory")
            }
            Err(e) => tracing::warn!(error = %e, "cannot clean the runtime directory"),
        }

        let search = config.search.clone();
        let extra = config.extra_pythons.clone();
        let candidates = tokio::task::spawn_blocking(move || discover::candidates(&search, &extra))
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "python search failed");
                Vec::new()
            });
        let (pythons, nodes) = tokio::join!(
            async { discover::choose(discover::probe_all(candidates).await) },
            node::discover(config.search.clone(), config.extra_nodes.clone()),
        );
        let slots = pythons
            .iter()
            .map(|p| p.runtime.clone())
            .chain(nodes.iter().map(|n| n.runtime.clone()))
            .map(|runtime| (runtime, Mutex::default()))
            .collect();
        let runtimes = Runtimes {
            config,
            pythons,
            nodes,
            slots,
        };
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "runtime discovery done"
        );
        Ok(runtimes)
    }

    /// Whether this host can run `runtime_id` (a `provided*` runtime, or a discovered
    /// `python3.N` or `nodejsN.x`). It may still need [`Runtimes::ensure`] before its first use.
    pub fn supports(&self, runtime_id: &str) -> bool {
        PROVIDED_RUNTIMES.contains(&runtime_id) || self.slots.contains_key(runtime_id)
    }

    /// The chosen interpreters, one per `python3.N`, by minor version.
    pub fn python_versions(&self) -> &[Python] {
        &self.pythons
    }

    /// The interpreter of runtime `python3.N`, if discovered.
    pub fn python(&self, runtime_id: &str) -> Option<&Python> {
        self.pythons.iter().find(|p| p.runtime == runtime_id)
    }

    /// The chosen Node.js executables, one per `nodejsN.x`, by major version.
    pub fn node_versions(&self) -> &[Node] {
        &self.nodes
    }

    /// The Node.js of runtime `nodejsN.x`, if discovered.
    pub fn node(&self, runtime_id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.runtime == runtime_id)
    }

    /// Every runtime id this host supports: the `provided*` ones, then `python3.N` and
    /// `nodejsN.x` by version.
    pub fn available(&self) -> Vec<String> {
        PROVIDED_RUNTIMES
            .iter()
            .map(|r| (*r).to_owned())
            .chain(self.pythons.iter().map(|p| p.runtime.clone()))
            .chain(self.nodes.iter().map(|n| n.runtime.clone()))
            .collect()
    }

    /// The (absolute) runtime directory.
    pub fn runtime_dir(&self) -> &Path {
        &self.config.runtime_dir
    }

    /// One line for the server's startup log.
    pub fn describe(&self) -> String {
        let pythons = if self.pythons.is_empty() {
            format!("no CPython 3.{MIN_PYTHON_MINOR}+ found")
        } else {
            self.pythons
                .iter()
                .map(|p| format!("{} ({} at {})", p.runtime, p.version, p.prefix.display()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let nodes = if self.nodes.is_empty() {
            format!("no Node.js {MIN_NODE_MAJOR}+ found")
        } else {
            self.nodes
                .iter()
                .map(|n| format!("{} ({} at {})", n.runtime, n.version, n.prefix.display()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "runtimes: {}; {pythons}; {nodes}; provisioned in {}",
            PROVIDED_RUNTIMES.join(", "),
            self.config.runtime_dir.display()
        )
    }

    /// The read-only binds every VM needs, as (host source, target in the VM):
    /// the runtime directory at [`VM_RUNTIMES_DIR`], and each interpreter's prefix at
    /// `/opt/ember/lang/python3.N` or `/opt/ember/lang/nodejsN.x`.
    pub fn vm_binds(&self) -> Vec<(PathBuf, PathBuf)> {
        let lang = |runtime: &str| Path::new(VM_LANG_DIR).join(runtime);
        std::iter::once((
            self.config.runtime_dir.clone(),
            PathBuf::from(VM_RUNTIMES_DIR),
        ))
        .chain(
            self.pythons
                .iter()
                .map(|p| (p.prefix.clone(), lang(&p.runtime))),
        )
        .chain(
            self.nodes
                .iter()
                .map(|n| (n.prefix.clone(), lang(&n.runtime))),
        )
        .collect()
    }

    fn unavailable(&self, runtime_id: &str) -> RuntimeError {
        RuntimeError::Unavailable {
            runtime: runtime_id.to_owned(),
            available: self.available(),
        }
    }

    /// Makes `runtime_id` ready to run. `provided*`: at once. `python3.N`, `nodejsN.x`: when its
    /// directory is complete; otherwise provisions it, once however many callers ask at the same
    /// time (they all wait for the one attempt). A failure is returned to every caller for
    /// [`RuntimesConfig::retry_after`], then a later call tries again.
    #[tracing::instrument(skip_all, fields(runtime = runtime_id))]
    pub async fn ensure(&self, runtime_id: &str) -> Result<(), RuntimeError> {
        if PROVIDED_RUNTIMES.contains(&runtime_id) {
            return Ok(());
        }
        let Some(slot) = self.slots.get(runtime_id) else {
            return Err(self.unavailable(runtime_id));
        };
        let mut slot = slot.lock().await;
        if slot.ready {
            return Ok(());
        }
        let failed = |reason: String| RuntimeError::Provision {
            runtime: runtime_id.to_owned(),
            reason,
        };
        if let Some((at, reason)) = &slot.failure {
            if at.elapsed() < self.config.retry_after {
                return Err(failed(reason.clone()));
            }
        }
        let started = Instant::now();
        let result = match (self.python(runtime_id), self.node(runtime_id)) {
            (Some(python), _) => self.ensure_python(python).await,
            (None, Some(node)) => self.ensure_node(node).await,
            (None, None) => return Err(self.unavailable(runtime_id)),
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(()) => {
                *slot = Slot {
                    ready: true,
                    failure: None,
                };
                Ok(())
            }
            Err(reason) => {
                tracing::warn!(elapsed_ms, error = %reason, "provisioning failed");
                slot.failure = Some((Instant::now(), reason.clone()));
                Err(failed(reason))
            }
        }
    }

    /// Provisions `python3.N` unless complete; the error is the failure's whole chain.
    async fn ensure_python(&self, python: &Python) -> Result<(), String> {
        let requirements = (self.config.python_requirements)(python.minor);
        let dir = self.config.runtime_dir.join(&python.runtime);
        if provision::complete(&dir, &requirements).is_some() {
            return Ok(());
        }
        let job = Job {
            python: python.clone(),
            runtime_dir: self.config.runtime_dir.clone(),
            requirements,
            index_url: self.config.pip_index_url.clone(),
            pip_timeout: self.config.pip_timeout,
        };
        tracing::info!(
            python = %python.executable.display(),
            "provisioning: pip install {}",
            job.requirements.join(" ")
        );
        let started = Instant::now();
        // Its own task: should this caller stop waiting, the attempt still completes for others.
        let result = match tokio::spawn(job.run()).await {
            Ok(result) => result,
            Err(e) => Err(ProvisionError::Task(e.to_string())),
        };
        let (marker, by) = result.map_err(|e| error_chain(&e))?.into_parts();
        tracing::info!(
            awslambdaric = marker.awslambdaric,
            boto3 = marker.boto3.as_deref().unwrap_or("none"),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "provisioned by {by}"
        );
        Ok(())
    }

    /// Provisions `nodejsN.x` unless complete; the error is the failure's whole chain.
    async fn ensure_node(&self, node: &Node) -> Result<(), String> {
        let packages = (self.config.node_packages)(node.major);
        let dir = self.config.runtime_dir.join(&node.runtime);
        let complete = node_complete(&dir, &packages).is_some();
        if complete && !node::addon_outdated(node, &dir) {
            return Ok(());
        }
        let job = NodeJob {
            node: node.clone(),
            runtime_dir: self.config.runtime_dir.clone(),
            packages,
            npm_timeout: self.config.npm_timeout,
            tool_path: self
                .config
                .tool_path
                .clone()
                .or_else(|| std::env::var_os("PATH"))
                .unwrap_or_default(),
        };
        if complete {
            tracing::info!(addon = TEMPLATE_ADDON, "provisioning: the template's addon");
        } else {
            tracing::info!(
                node = %node.executable.display(),
                "provisioning: npm install {}",
                job.packages
                    .iter()
                    .map(|(name, version)| format!("{name}@{version}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        let started = Instant::now();
        let result = match tokio::spawn(job.run()).await {
            Ok(result) => result,
            Err(e) => Err(ProvisionError::Task(e.to_string()).into()),
        };
        let (_, by) = result.map_err(|e| error_chain(&e))?.into_parts();
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "provisioned by {by}"
        );
        Ok(())
    }

    /// Starts provisioning every discovered Python and Node.js runtime, logging each result; the server calls
    /// it at start so that first invocations find their runtime ready. Must be called within a
    /// Tokio runtime.
    pub fn provision_all_in_background(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut set = JoinSet::new();
            for runtime in self.slots.keys() {
                let runtimes = Arc::clone(&self);
                let runtime = runtime.clone();
                set.spawn(async move {
                    let result = runtimes.ensure(&runtime).await;
                    (runtime, result)
                });
            }
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok((runtime, Ok(()))) => tracing::info!(runtime, "runtime ready"),
                    Ok((runtime, Err(e))) => tracing::warn!(
                        runtime,
                        error = %e,
                        "runtime not ready; invocations that need it will try again"
                    ),
                    Err(e) => tracing::warn!(error = %e, "provisioning task failed"),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests;
