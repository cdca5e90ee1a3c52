//! Node.js runtimes, `nodejsN.x`: finding the host's Node.js executables (one per major, 18 and
//! up) and provisioning `<runtime_dir>/nodejsN.x/`: npm's unmodified `aws-lambda-ric` and the AWS
//! SDK for JavaScript v3 clients AWS's Node.js runtimes include, installed by that Node.js's npm
//! (the client builds native code), Lambda's `index.mjs` entry and `bootstrap`, the runtime
//! template's addon ([`TEMPLATE_ADDON`], built from `node_template.c` when Node.js's headers are
//! there), and a marker written last. Locking, the temporary directory and the rename are `crate::provision`'s.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::discover::{self, Found, SearchPaths};
use crate::provision::{self, io, Outcome, ProvisionError};

/// The oldest Node.js major Ember runs (`nodejs18.x`).
pub const MIN_NODE_MAJOR: u32 = 18;

/// The AWS SDK for JavaScript v3 packages every Node.js runtime ships under
/// `/var/runtime/node_modules`, as AWS's Node.js 18+ runtimes do (they ship the whole SDK; Ember
/// ships these clients and their dependencies).
pub const SDK_PACKAGES: &[&str] = &[
    "@aws-sdk/client-dynamodb",
    "@aws-sdk/client-lambda",
    "@aws-sdk/client-s3",
    "@aws-sdk/client-sns",
    "@aws-sdk/client-sqs",
    "@aws-sdk/client-sts",
    "@aws-sdk/lib-dynamodb",
];

/// The `aws-lambda-ric` version for a Node.js major: 4.x needs Node.js 22; 3.3.0 runs on 18 and 20.
pub fn ric_version(major: u32) -> &'static str {
    if major >= 22 {
        "4.0.2"
    } else {
        "3.3.0"
    }
}

/// The AWS SDK for JavaScript v3 version for a Node.js major: 3.967.0 is the last to support
/// Node.js 18.
pub fn sdk_version(major: u32) -> &'static str {
    if major >= 20 {
        "3.1178.0"
    } else {
        "3.967.0"
    }
}

/// Every npm package a `nodejsN.x` runtime directory gets, with its exact version.
pub fn default_node_packages(major: u32) -> BTreeMap<String, String> {
    std::iter::once(("aws-lambda-ric", ric_version(major)))
        .chain(SDK_PACKAGES.iter().map(|p| (*p, sdk_version(major))))
        .map(|(name, version)| (name.to_owned(), version.to_owned()))
        .collect()
}

/// The programs `aws-lambda-ric`'s install script needs to build its native part, each with the
/// Debian package that has it.
const BUILD_TOOLS: &[(&[&str], &str)] = &[
    (&["cmake"], "cmake"),
    (&["autoconf"], "autoconf"),
    (&["automake"], "automake"),
    (&["libtoolize"], "libtool"),
    (&["g++", "c++"], "g++"),
    (&["make"], "make"),
];

/// What a Node.js is asked.
const QUERY: &str = "console.log(process.release.name); console.log(process.versions.node); \
                     console.log(process.execPath)";

/// Bumped whenever a Node.js runtime directory's layout, entry or bootstrap changes.
/// 2: the runtime template's addon, [`TEMPLATE_ADDON`].
const NODE_MARKER_FORMAT: u32 = 2;

/// The runtime template's N-API addon in a `nodejsN.x` directory (`/var/runtime/` in a VM):
/// what lets the agent's Node.js template fork into a container (see the agent's
/// `container/node_template.rs`). Optional: without it (no Node.js headers on the host, or the
/// compiler failed) the runtime's containers start the ordinary way.
///
/// The number is the addon's version, bumped whenever `node_template.c` changes what the
/// agent's template script or a forked runtime relies on (2: V8's platform workers started
/// again in the runtime, so the template runs multithreaded). A directory provisioned by an
/// older Ember has only an older addon, which the agent never loads: [`NodeJob::run`] builds
/// this one into it, and removes the older ones.
pub const TEMPLATE_ADDON: &str = "ember-template-2.node";

/// The addons of older versions, removed when [`TEMPLATE_ADDON`] is built into a directory.
const OLD_TEMPLATE_ADDONS: &[&str] = &["ember-template.node"];

/// The addon's source, compiled at provisioning against the Node.js's own headers.
pub const TEMPLATE_ADDON_SOURCE: &str = include_str!("node_template.c");

/// How long compiling the addon may take.
const ADDON_TIMEOUT: Duration = Duration::from_secs(120);

/// How many of npm's last stderr lines an error quotes.
const STDERR_LINES: usize = 6;

/// One Node.js of the host, usable as Lambda runtime `nodejsN.x`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The Lambda runtime id, `nodejsN.x`.
    pub runtime: String,
    /// `N`.
    pub major: u32,
    /// The full version, e.g. `20.20.2`.
    pub version: String,
    /// The executable on the host (symlinks resolved), `<prefix>/bin/node`.
    pub executable: PathBuf,
    /// The host directory bound into VMs at `/opt/ember/lang/nodejsN.x`, holding `bin/node`.
    pub prefix: PathBuf,
}

impl Found for Node {
    fn key(&self) -> u32 {
        self.major
    }
    fn has_system_prefix(&self) -> bool {
        discover::is_system_prefix(&self.prefix)
    }
}

/// Every candidate `node`, in the order found: `extra`, then `node` in each of `search.dirs`,
/// then each nvm directory's versions (newest first); resolved and deduplicated.
pub(crate) fn candidates(search: &SearchPaths, extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut ordered: Vec<PathBuf> = extra.to_vec();
    ordered.extend(
        search
            .dirs
            .iter()
            .map(|d| d.join("node"))
            .filter(|p| p.is_file()),
    );
    for nvm in &search.nvm_dirs {
        for version in discover::versions_newest_first(&nvm.join("versions/node")) {
            let node = version.join("bin/node");
            if node.is_file() {
                ordered.push(node);
            }
        }
    }
    discover::resolve_unique(ordered)
}

/// Reads a Node.js's answer to [`QUERY`]; the error says why it is not usable.
fn parse_answer(executable: &Path, stdout: &str) -> Result<Node, String> {
    let mut lines = stdout.lines();
    let (Some(release), Some(version)) = (lines.next(), lines.next()) else {
        return Err(format!("unexpected answer {stdout:?}"));
    };
    if release != "node" {
        return Err(format!("release is {release}, not node"));
    }
    let Some(Ok(major)) = version.split('.').next().map(str::parse::<u32>) else {
        return Err(format!("unreadable version {version:?}"));
    };
    if major < MIN_NODE_MAJOR {
        return Err(format!("version {version} is older than {MIN_NODE_MAJOR}"));
    }
    // The container runs `/var/lang/bin/node`, with the prefix bound at /var/lang.
    let prefix = executable
        .parent()
        .filter(|bin| bin.file_name() == Some(OsStr::new("bin")))
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} is not in a bin directory", executable.display()))?;
    if !prefix.join("bin/node").is_file() {
        return Err(format!("{}/bin/node does not exist", prefix.display()));
    }
    Ok(Node {
        runtime: format!("nodejs{major}.x"),
        major,
        version: version.to_owned(),
        executable: executable.to_owned(),
        prefix: prefix.to_owned(),
    })
}

/// Asks one Node.js what it is.
async fn query(executable: PathBuf) -> Result<Node, String> {
    let mut command = Command::new(&executable);
    command.args(["-e", QUERY]).env_remove("NODE_OPTIONS");
    let stdout = discover::ask(&mut command).await?;
    parse_answer(&executable, &stdout)
}

/// The host's Node.js runtimes: one per major, sorted.
pub(crate) async fn discover(search: SearchPaths, extra: Vec<PathBuf>) -> Vec<Node> {
    let found = tokio::task::spawn_blocking(move || candidates(&search, &extra))
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "node search failed");
            Vec::new()
        });
    discover::choose(discover::probe_all_with(found, query).await)
}

/// Why provisioning a Node.js runtime failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "building aws-lambda-ric's native code needs {} (missing on the server's PATH; on Debian: \
         apt-get install cmake autoconf automake libtool g++ make)",
        missing.join(", ")
    )]
    BuildTools { missing: Vec<&'static str> },
    #[error("npm is not installed beside {node} nor on the server's PATH")]
    NpmMissing { node: String },
    #[error("`npm install aws-lambda-ric` failed: {stderr}")]
    NpmFailed { stderr: String },
    #[error("`npm install aws-lambda-ric` did not finish within {0:?}")]
    NpmTimeout(Duration),
    #[error("`npm install` succeeded but {package} {version} is not installed")]
    NotInstalled { package: String, version: String },
    #[error("`npm install` succeeded but aws-lambda-ric's native part was not built")]
    NotBuilt,
    #[error("cannot run {npm}")]
    Spawn {
        npm: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Provision(#[from] ProvisionError),
}

/// What a complete `nodejsN.x` directory records about itself; written last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMarker {
    pub format: u32,
    pub runtime: String,
    /// The packages asked for, name → exact version; these are also what is installed.
    pub packages: BTreeMap<String, String>,
    /// The Node.js that installed them, on the host.
    pub node: PathBuf,
    pub node_version: String,
    /// Seconds since the Unix epoch.
    pub provisioned_at: u64,
}

/// The marker of `dir` if the directory is complete for `packages`.
pub fn node_complete(dir: &Path, packages: &BTreeMap<String, String>) -> Option<NodeMarker> {
    let marker: NodeMarker = provision::read_marker(dir)?;
    (marker.format == NODE_MARKER_FORMAT
        && &marker.packages == packages
        && dir.join("bootstrap").is_file()
        && dir.join("index.mjs").is_file())
    .then_some(marker)
}

/// Whether a complete directory `dir` lacks this version's [`TEMPLATE_ADDON`] that `node` can
/// build (its headers are there): provisioned by an older Ember, so [`NodeJob::run`] builds it.
pub(crate) fn addon_outdated(node: &Node, dir: &Path) -> bool {
    !dir.join(TEMPLATE_ADDON).is_file() && node.prefix.join("include/node/node_api.h").is_file()
}

/// Lambda's Node.js entry point, `/var/runtime/index.mjs`: starts the unmodified aws-lambda-ric
/// on `_HANDLER` in the task root (its own `bin/index.mjs` takes the handler as an argument and
/// logs a line of its own first, which Lambda's runtime does not).
pub const ENTRY: &str = r#"// Written by Ember: Lambda's Node.js entry point. Starts the unmodified aws-lambda-ric
// (node_modules/aws-lambda-ric) on the handler named by _HANDLER, in LAMBDA_TASK_ROOT.
import { run } from "aws-lambda-ric";

const handler = process.env._HANDLER;
if (!handler) {
  throw new Error("No handler specified: _HANDLER is empty");
}
await run(process.env.LAMBDA_TASK_ROOT || process.cwd(), handler);
"#;

/// The `bootstrap` of runtime `nodejs<major>.x`, run by the agent as `/var/runtime/bootstrap`
/// with `/var/task` as its working directory.
///
/// As Lambda's: `NODE_PATH` (unless the function set one) names the layers' `/opt/nodejs`
/// directories, `/var/runtime/node_modules` (the SDK), `/var/runtime` and `/var/task`; Node's
/// own resolution looks in `/var/task/node_modules` before any of them, so a function's own copy
/// of a package wins. V8's heap is sized from the function's memory. `/var/lang/bin` comes first
/// on `PATH` and `/var/lang/lib` on `LD_LIBRARY_PATH`.
///
/// The text is [`ember_protocol::bootstrap::node`], which the agent's Node.js templates model.
pub fn node_bootstrap_script(major: u32) -> String {
    ember_protocol::bootstrap::node(major)
}

/// The `package.json` npm installs from: one dependency a line, exact versions.
fn package_json(runtime: &str, packages: &BTreeMap<String, String>) -> String {
    let deps: Vec<String> = packages
        .iter()
        .map(|(name, version)| format!("    {name:?}: {version:?}"))
        .collect();
    format!(
        "{{\n  \"name\": \"ember-runtime-{runtime}\",\n  \"private\": true,\n  \"dependencies\": {{\n{}\n  }}\n}}\n",
        deps.join(",\n")
    )
}

/// The first of `names` found as an executable file in the directories of `path`.
fn find_program(path: &OsStr, names: &[&str]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Everything one provisioning attempt needs, owned, so it can run as its own task.
#[derive(Debug, Clone)]
pub(crate) struct NodeJob {
    pub node: Node,
    pub runtime_dir: PathBuf,
    pub packages: BTreeMap<String, String>,
    pub npm_timeout: Duration,
    /// The `PATH` build tools and npm are looked up in (the server's by default).
    pub tool_path: OsString,
}

impl NodeJob {
    fn final_dir(&self) -> PathBuf {
        self.runtime_dir.join(&self.node.runtime)
    }

    /// Provisions the runtime directory unless it is already complete.
    pub(crate) async fn run(self) -> Result<Outcome<NodeMarker>, NodeError> {
        let lock = provision::locked(&self.runtime_dir, &self.node.runtime).await?;
        // Under the lock: whoever held it before may have finished the work.
        if let Some(marker) = node_complete(&self.final_dir(), &self.packages) {
            let dir = self.final_dir();
            if addon_outdated(&self.node, &dir) {
                // Provisioned by an older Ember: this version's addon, in place.
                self.build_template_addon(&dir).await;
            }
            return Ok(Outcome::AlreadyComplete(marker));
        }
        let marker = self.install().await?;
        drop(lock);
        Ok(Outcome::Provisioned(marker))
    }

    fn check_build_tools(&self) -> Result<(), NodeError> {
        let missing: Vec<&'static str> = BUILD_TOOLS
            .iter()
            .filter(|(programs, _)| find_program(&self.tool_path, programs).is_none())
            .map(|(_, package)| *package)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(NodeError::BuildTools { missing })
        }
    }

    /// npm beside the Node.js (its own), else the first on the tool path.
    fn npm(&self) -> Result<PathBuf, NodeError> {
        let beside = self.node.prefix.join("bin/npm");
        if beside.is_file() {
            return Ok(beside);
        }
        find_program(&self.tool_path, &["npm"]).ok_or_else(|| NodeError::NpmMissing {
            node: self.node.executable.display().to_string(),
        })
    }

    async fn install(&self) -> Result<NodeMarker, NodeError> {
        self.check_build_tools()?;
        let npm = self.npm()?;
        let runtime = &self.node.runtime;
        let tmp = provision::temp_dir(&self.runtime_dir, runtime)?;
        let manifest = tmp.path().join("package.json");
        std::fs::write(&manifest, package_json(runtime, &self.packages))
            .map_err(|e| io("cannot write", &manifest)(e))?;

        let started = std::time::Instant::now();
        self.npm_install(&npm, tmp.path()).await?;
        tracing::debug!(
            runtime,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "npm done"
        );
        self.verify(tmp.path())?;
        self.build_template_addon(tmp.path()).await;

        let entry = tmp.path().join("index.mjs");
        std::fs::write(&entry, ENTRY).map_err(|e| io("cannot write", &entry)(e))?;
        provision::write_script(
            &tmp.path().join("bootstrap"),
            &node_bootstrap_script(self.node.major),
        )?;
        let marker = NodeMarker {
            format: NODE_MARKER_FORMAT,
            runtime: runtime.clone(),
            packages: self.packages.clone(),
            node: self.node.executable.clone(),
            node_version: self.node.version.clone(),
            provisioned_at: provision::now(),
        };
        provision::commit(tmp, &self.final_dir(), &marker)?;
        Ok(marker)
    }

    async fn npm_install(&self, npm: &Path, dir: &Path) -> Result<(), NodeError> {
        // This Node.js first on PATH: npm's `#!/usr/bin/env node` and node-gyp build for it.
        let mut path = OsString::from(self.node.executable.parent().unwrap_or(Path::new("/")));
        if !self.tool_path.is_empty() {
            path.push(":");
            path.push(&self.tool_path);
        }
        let mut command = Command::new(npm);
        command
            .args([
                "install",
                "--omit=dev",
                "--no-audit",
                "--no-fund",
                "--no-package-lock",
                "--no-update-notifier",
                "--loglevel=error",
            ])
            .current_dir(dir)
            .env("PATH", path)
            .env_remove("NODE_OPTIONS")
            .env_remove("NODE_PATH")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let output = match tokio::time::timeout(self.npm_timeout, command.output()).await {
            Err(_) => return Err(NodeError::NpmTimeout(self.npm_timeout)),
            Ok(Err(source)) => {
                return Err(NodeError::Spawn {
                    npm: npm.display().to_string(),
                    source,
                })
            }
            Ok(Ok(output)) => output,
        };
        if output.status.success() {
            return Ok(());
        }
        let tail = provision::failure_tail("npm", &output, STDERR_LINES);
        Err(NodeError::NpmFailed { stderr: tail })
    }

    /// Compiles [`TEMPLATE_ADDON`] into `dir` with the build tools' C compiler against this
    /// Node.js's headers (`<prefix>/include/node`), then moves it in whole (a directory in use
    /// never shows a half-written addon) and removes older versions'. A failure is logged, not
    /// fatal: the runtime then has no template.
    async fn build_template_addon(&self, dir: &Path) {
        let runtime = &self.node.runtime;
        let include = self.node.prefix.join("include/node");
        if !include.join("node_api.h").is_file() {
            tracing::warn!(runtime, include = %include.display(), "no Node.js headers: the runtime gets no template");
            return;
        }
        let Some(compiler) = find_program(&self.tool_path, &["g++", "c++"]) else {
            tracing::warn!(runtime, "no C compiler: the runtime gets no template");
            return;
        };
        let Ok(work) = tempfile::tempdir_in(&self.runtime_dir) else {
            tracing::warn!(
                runtime,
                "cannot create a directory to build the template's addon in"
            );
            return;
        };
        let source = work.path().join("node_template.c");
        if let Err(err) = std::fs::write(&source, TEMPLATE_ADDON_SOURCE) {
            tracing::warn!(runtime, error = %err, "cannot write the template addon's source");
            return;
        }
        let output = work.path().join(TEMPLATE_ADDON);
        let mut command = Command::new(&compiler);
        command
            .args(addon_compile_args(&include, &source, &output))
            .env("PATH", &self.tool_path)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let result = tokio::time::timeout(ADDON_TIMEOUT, command.output()).await;
        let built = match result {
            Ok(Ok(out)) if out.status.success() => output.is_file(),
            Ok(Ok(out)) => {
                let tail = provision::failure_tail("the compiler", &out, STDERR_LINES);
                tracing::warn!(runtime, error = %tail, "the template's addon did not build: the runtime gets no template");
                false
            }
            Ok(Err(err)) => {
                tracing::warn!(runtime, error = %err, "cannot run the compiler: the runtime gets no template");
                false
            }
            Err(_) => {
                tracing::warn!(
                    runtime,
                    "the template's addon did not build in time: the runtime gets no template"
                );
                false
            }
        };
        if !built {
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        // Readable by the container's uid, like the rest of the directory.
        let _ = std::fs::set_permissions(&output, std::fs::Permissions::from_mode(0o644));
        if let Err(err) = std::fs::rename(&output, dir.join(TEMPLATE_ADDON)) {
            tracing::warn!(runtime, error = %err, "cannot move the template's addon in: the runtime gets no template");
            return;
        }
        for old in OLD_TEMPLATE_ADDONS {
            let _ = std::fs::remove_file(dir.join(old));
        }
    }

    /// Every package at its pinned version, and the client's native part built.
    fn verify(&self, dir: &Path) -> Result<(), NodeError> {
        for (name, version) in &self.packages {
            let manifest = dir.join("node_modules").join(name).join("package.json");
            let installed = std::fs::read(&manifest)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v.get("version")?.as_str().map(str::to_owned));
            if installed.as_deref() != Some(version.as_str()) {
                return Err(NodeError::NotInstalled {
                    package: name.clone(),
                    version: version.clone(),
                });
            }
        }
        let ric = dir.join("node_modules/aws-lambda-ric");
        if self.packages.contains_key("aws-lambda-ric") && !has_native_addon(&ric) {
            return Err(NodeError::NotBuilt);
        }
        Ok(())
    }
}

/// The compiler's arguments for [`TEMPLATE_ADDON`]: C, a shared object, Node.js's headers (its
/// N-API symbols are resolved from the `node` executable when the addon is loaded).
fn addon_compile_args(include: &Path, source: &Path, output: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["-x", "c", "-std=gnu11", "-O2", "-shared", "-fPIC"]
        .iter()
        .map(OsString::from)
        .collect();
    let mut inc = OsString::from("-I");
    inc.push(include);
    args.push(inc);
    args.push("-o".into());
    args.push(output.into());
    args.push(source.into());
    args
}

/// Whether a `.node` file (a built addon) is under `dir`.
fn has_native_addon(dir: &Path) -> bool {
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() && path.extension() == Some(OsStr::new("node")) => {
                    return true
                }
                _ => {}
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn touch_exe(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "#!/bin/sh\nexit 1\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn versions_are_chosen_per_major() {
        let table = [
            (18, "3.3.0", "3.967.0"),
            (20, "3.3.0", "3.1178.0"),
            (22, "4.0.2", "3.1178.0"),
            (24, "4.0.2", "3.1178.0"),
        ];
        for (major, ric, sdk) in table {
            let packages = default_node_packages(major);
            assert_eq!(packages["aws-lambda-ric"], ric, "{major}");
            assert_eq!(packages["@aws-sdk/client-s3"], sdk, "{major}");
            assert_eq!(packages["@aws-sdk/lib-dynamodb"], sdk, "{major}");
            assert_eq!(packages.len(), 1 + SDK_PACKAGES.len());
        }
    }

    #[test]
    fn answers_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let exe = tmp.path().join("bin/node");
        touch_exe(&exe);

        let ok = parse_answer(&exe, "node\n20.20.2\n/x\n").unwrap();
        assert_eq!(ok.runtime, "nodejs20.x");
        assert_eq!(ok.major, 20);
        assert_eq!(ok.version, "20.20.2");
        assert_eq!(ok.prefix, tmp.path());
        assert_eq!(ok.executable, exe);
        assert_eq!(
            parse_answer(&exe, "node\n22.1.0\n").unwrap().runtime,
            "nodejs22.x"
        );

        for bad in [
            "node\n16.20.2\n",
            "io.js\n20.1.0\n",
            "node\nv20\n",
            "node\n",
            "",
        ] {
            assert!(parse_answer(&exe, bad).is_err(), "{bad:?}");
        }
        // Not in a `bin` directory: there would be no /var/lang/bin/node.
        let odd = tmp.path().join("elsewhere/node");
        touch_exe(&odd);
        assert!(parse_answer(&odd, "node\n20.1.0\n").is_err());
    }

    #[test]
    fn candidates_come_from_the_path_then_nvm_newest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let bin = root.join("bin");
        touch_exe(&bin.join("node"));
        touch_exe(&bin.join("nodejs"));
        let links = root.join("links");
        std::fs::create_dir_all(&links).unwrap();
        std::os::unix::fs::symlink(bin.join("node"), links.join("node")).unwrap();
        let nvm = root.join("nvm");
        for version in ["v18.20.4", "v22.11.0", "v20.9.0"] {
            touch_exe(&nvm.join("versions/node").join(version).join("bin/node"));
        }
        let extra = root.join("extra/bin/node");
        touch_exe(&extra);
        let search = SearchPaths {
            dirs: vec![bin.clone(), links, root.join("missing")],
            pyenv_roots: Vec::new(),
            nvm_dirs: vec![nvm.clone(), root.join("no-nvm")],
        };
        assert_eq!(
            candidates(&search, std::slice::from_ref(&extra)),
            vec![
                extra,
                bin.join("node"),
                nvm.join("versions/node/v22.11.0/bin/node"),
                nvm.join("versions/node/v20.9.0/bin/node"),
                nvm.join("versions/node/v18.20.4/bin/node"),
            ]
        );
    }

    #[test]
    fn the_package_json_pins_every_package() {
        let text = package_json("nodejs20.x", &default_node_packages(20));
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["name"], "ember-runtime-nodejs20.x");
        assert_eq!(json["dependencies"]["aws-lambda-ric"], "3.3.0");
        assert_eq!(json["dependencies"]["@aws-sdk/client-sts"], "3.1178.0");
    }

    fn run_bootstrap(major: u32, vars: &[(&str, &str)]) -> (HashMap<String, String>, String) {
        let tmp = tempfile::tempdir().unwrap();
        // Run the script up to its `exec`, printing the environment and the arguments instead.
        let script = node_bootstrap_script(major)
            .replace("exec /var/lang/bin/node", "echo \"ARGS=$*\"; exec env #");
        let path = tmp.path().join("bootstrap");
        std::fs::write(&path, script).unwrap();
        let out = std::process::Command::new("/bin/sh")
            .arg(&path)
            .env_clear()
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let args = text.lines().next().unwrap().to_owned();
        let env = text
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        (env, args)
    }

    #[test]
    fn the_bootstrap_sets_node_path_and_heap_as_lambda_does() {
        let script = node_bootstrap_script(20);
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(
            script.ends_with("exec /var/lang/bin/node --expose-gc \"$@\" /var/runtime/index.mjs\n")
        );

        let (env, args) = run_bootstrap(
            20,
            &[
                ("PATH", "/usr/local/bin:/usr/bin/:/bin:/opt/bin"),
                ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"),
            ],
        );
        assert_eq!(
            env["NODE_PATH"],
            "/opt/nodejs/node20/node_modules:/opt/nodejs/node_modules:\
             /var/runtime/node_modules:/var/runtime:/var/task"
        );
        assert_eq!(
            env["PATH"],
            "/var/lang/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin"
        );
        assert_eq!(env["LD_LIBRARY_PATH"], "/var/lang/lib");
        assert_eq!(env["AWS_EXECUTION_ENV"], "AWS_Lambda_nodejs20.x");
        // 128 MB: 12 MB new space (6 MB semi-space), 116 MB old space.
        assert_eq!(
            args,
            "ARGS=--max-semi-space-size=6 --max-old-space-size=116"
        );

        // A function's own NODE_PATH is kept; no memory size, no heap flags.
        let (env, args) = run_bootstrap(
            22,
            &[("NODE_PATH", "/mine"), ("PATH", "/var/lang/bin:/bin")],
        );
        assert_eq!(env["NODE_PATH"], "/mine");
        assert_eq!(env["AWS_EXECUTION_ENV"], "AWS_Lambda_nodejs22.x");
        assert_eq!(env["PATH"], "/var/lang/bin:/bin", "not added twice");
        assert_eq!(args, "ARGS=");
    }

    #[test]
    fn the_entry_starts_the_ric_on_the_handler() {
        assert!(ENTRY.contains("import { run } from \"aws-lambda-ric\";"));
        assert!(
            ENTRY.contains("await run(process.env.LAMBDA_TASK_ROOT || process.cwd(), handler);")
        );
    }

    #[test]
    fn build_tools_are_found_on_the_given_path() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        for tool in ["cmake", "autoconf", "c++"] {
            touch_exe(&bin.join(tool));
        }
        std::fs::write(bin.join("make"), "not executable").unwrap();
        let job = NodeJob {
            node: Node {
                runtime: "nodejs20.x".into(),
                major: 20,
                version: "20.1.0".into(),
                executable: "/nowhere/bin/node".into(),
                prefix: "/nowhere".into(),
            },
            runtime_dir: tmp.path().into(),
            packages: default_node_packages(20),
            npm_timeout: Duration::from_secs(1),
            tool_path: bin.clone().into_os_string(),
        };
        let err = job.check_build_tools().unwrap_err();
        assert_eq!(
            err.to_string(),
            "building aws-lambda-ric's native code needs automake, libtool, make (missing on \
             the server's PATH; on Debian: apt-get install cmake autoconf automake libtool g++ \
             make)"
        );
        for tool in ["automake", "libtoolize", "make"] {
            touch_exe(&bin.join(tool));
        }
        job.check_build_tools().unwrap();
        assert!(matches!(job.npm(), Err(NodeError::NpmMissing { .. })));
    }
}
