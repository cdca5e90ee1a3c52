//! Provisioning one Python runtime directory, `<runtime_dir>/python3.N`: awslambdaric and boto3
//! installed by pip into a temporary directory, the `bootstrap` script, a marker written last, and
//! one atomic rename. A `flock` on `<runtime_dir>/.python3.N.lock` serialises provisioning between
//! processes sharing the directory. The same steps ([`locked`], [`commit`]) serve Node.js runtimes
//! (`crate::node`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::discover::Python;

/// The marker's file name inside a runtime directory.
pub const MARKER: &str = "ember-runtime.json";

/// Bumped whenever the directory's layout or the bootstrap script changes, so that directories
/// written by an older Ember are provisioned again. 2: boto3 is installed beside awslambdaric.
const MARKER_FORMAT: u32 = 2;

/// How many of pip's last stderr lines an error quotes.
const STDERR_LINES: usize = 4;

/// Why provisioning failed. The crate reports it as
/// [`RuntimeError::Provision`](crate::RuntimeError::Provision), with this message chain.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("pip is not installed for {python} ({stderr})")]
    PipMissing { python: String, stderr: String },
    #[error("`pip install awslambdaric` failed: {stderr}")]
    PipFailed { stderr: String },
    #[error("`pip install awslambdaric` did not finish within {0:?}")]
    PipTimeout(Duration),
    #[error("`pip install awslambdaric` succeeded but installed no awslambdaric")]
    NothingInstalled,
    #[error("cannot run {python}")]
    Spawn {
        python: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("the provisioning task stopped: {0}")]
    Task(String),
}

pub(crate) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ProvisionError {
    let path = path.to_owned();
    move |source| ProvisionError::Io { what, path, source }
}

/// What a complete runtime directory records about itself; written last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub format: u32,
    pub runtime: String,
    /// The installed awslambdaric version.
    pub awslambdaric: String,
    /// The installed boto3 version, if the requirements name it.
    #[serde(default)]
    pub boto3: Option<String>,
    /// The pip requirements it was installed from.
    pub requirements: Vec<String>,
    /// The interpreter that installed it, on the host.
    pub python: PathBuf,
    pub python_version: String,
    /// Seconds since the Unix epoch.
    pub provisioned_at: u64,
}

/// The marker of `dir` if the directory is complete for `requirements`.
pub fn complete(dir: &Path, requirements: &[String]) -> Option<Marker> {
    let marker: Marker = read_marker(dir)?;
    (marker.format == MARKER_FORMAT
        && marker.requirements == requirements
        && dir.join("bootstrap").is_file())
    .then_some(marker)
}

/// The marker of `dir`, if it has one that reads as a `T`.
pub(crate) fn read_marker<T: DeserializeOwned>(dir: &Path) -> Option<T> {
    let bytes = std::fs::read(dir.join(MARKER)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The `bootstrap` of runtime `python3.<minor>`, run by the agent as `/var/runtime/bootstrap`
/// with `/var/task` as its working directory.
///
/// It runs `/var/lang/bin/python3.N -m awslambdaric "$_HANDLER"`. awslambdaric imports the
/// handler's module with `importlib.import_module`, so the task root must be on `sys.path`:
/// `-m` puts the working directory there, and `PYTHONPATH` names it explicitly, followed by
/// Lambda layers' `/opt/python` directories and `/var/runtime` (awslambdaric itself), as on
/// Lambda. `/var/lang/lib` is kept first on `LD_LIBRARY_PATH` even if the function set its own:
/// a shared-library interpreter (pyenv's) finds `libpython3.N.so` there, its RUNPATH naming a
/// host path the container cannot see. `AWS_EXECUTION_ENV` is Lambda's, which awslambdaric
/// reads (JSON without ASCII escapes, and thread polling, from 3.12).
///
/// The text is [`ember_protocol::bootstrap::python`], which the agent's Python templates model.
pub fn bootstrap_script(minor: u32) -> String {
    ember_protocol::bootstrap::python(minor)
}

/// Everything one provisioning attempt needs, owned, so it can run as its own task (a caller
/// that stops waiting does not abort an install other callers wait for).
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub python: Python,
    pub runtime_dir: PathBuf,
    pub requirements: Vec<String>,
    pub index_url: Option<String>,
    pub pip_timeout: Duration,
}

/// What a successful attempt found or did, with the directory's marker.
#[derive(Debug)]
pub(crate) enum Outcome<M> {
    /// Another process (or an earlier run) had provisioned it.
    AlreadyComplete(M),
    Provisioned(M),
}

impl<M> Outcome<M> {
    pub(crate) fn into_parts(self) -> (M, &'static str) {
        match self {
            Outcome::Provisioned(marker) => (marker, "this server"),
            Outcome::AlreadyComplete(marker) => (marker, "another process"),
        }
    }
}

/// Takes the provisioning lock of `runtime` in `runtime_dir`, waiting for it on a blocking thread.
pub(crate) async fn locked(
    runtime_dir: &Path,
    runtime: &str,
) -> Result<Flock<File>, ProvisionError> {
    let lock_path = lock_path(runtime_dir, runtime);
    tokio::task::spawn_blocking(move || lock_wait(&lock_path))
        .await
        .map_err(|e| ProvisionError::Task(e.to_string()))?
}

/// A new temporary directory for `runtime` in `runtime_dir`, renamed into place by [`commit`].
pub(crate) fn temp_dir(
    runtime_dir: &Path,
    runtime: &str,
) -> Result<tempfile::TempDir, ProvisionError> {
    tempfile::Builder::new()
        .prefix(&format!(".{runtime}.tmp-"))
        .tempdir_in(runtime_dir)
        .map_err(io("cannot create a temporary directory in", runtime_dir))
}

/// Finishes a provisioned directory: makes it world-readable, writes `marker` last, flushes, and
/// renames `tmp` to `final_dir`, replacing an outdated one.
pub(crate) fn commit<M: Serialize>(
    tmp: tempfile::TempDir,
    final_dir: &Path,
    marker: &M,
) -> Result<(), ProvisionError> {
    // The container runs as an unprivileged uid: everything must be world-readable,
    // whatever the server's umask was.
    make_world_readable(tmp.path())?;
    write_marker(tmp.path(), marker)?;
    // One flush of the whole file system, so that a directory which has its marker after a
    // crash also has the files the marker vouches for.
    let dir = File::open(tmp.path()).map_err(io("cannot open", tmp.path()))?;
    nix::unistd::syncfs(dir.as_raw_fd()).map_err(|e| ProvisionError::Io {
        what: "cannot sync",
        path: tmp.path().to_owned(),
        source: e.into(),
    })?;
    drop(dir);

    let tmp_path = tmp.keep();
    let result = replace_dir(&tmp_path, final_dir);
    if result.is_err() {
        // Best effort: the next start removes what is left anyway.
        let _ = std::fs::remove_dir_all(&tmp_path);
    }
    result
}

/// Writes an executable script (a `bootstrap`).
pub(crate) fn write_script(path: &Path, text: &str) -> Result<(), ProvisionError> {
    std::fs::write(path, text).map_err(io("cannot write", path))?;
    set_mode(path, 0o755)
}

impl Job {
    fn final_dir(&self) -> PathBuf {
        self.runtime_dir.join(&self.python.runtime)
    }

    /// Provisions the runtime directory unless it is already complete.
    pub(crate) async fn run(self) -> Result<Outcome<Marker>, ProvisionError> {
        let lock = locked(&self.runtime_dir, &self.python.runtime).await?;
        // Under the lock: whoever held it before may have finished the work.
        if let Some(marker) = complete(&self.final_dir(), &self.requirements) {
            return Ok(Outcome::AlreadyComplete(marker));
        }
        let marker = self.install().await?;
        drop(lock);
        Ok(Outcome::Provisioned(marker))
    }

    async fn install(&self) -> Result<Marker, ProvisionError> {
        let runtime = &self.python.runtime;
        let tmp = temp_dir(&self.runtime_dir, runtime)?;
        let started = std::time::Instant::now();
        self.pip_install(tmp.path()).await?;
        tracing::debug!(
            runtime,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "pip done"
        );

        let awslambdaric = installed_version(tmp.path(), "awslambdaric")
            .map_err(io("cannot read", tmp.path()))?
            .ok_or(ProvisionError::NothingInstalled)?;

        let boto3 =
            installed_version(tmp.path(), "boto3").map_err(io("cannot read", tmp.path()))?;

        write_script(
            &tmp.path().join("bootstrap"),
            &bootstrap_script(self.python.minor),
        )?;
        let marker = Marker {
            format: MARKER_FORMAT,
            runtime: runtime.clone(),
            awslambdaric,
            boto3,
            requirements: self.requirements.clone(),
            python: self.python.executable.clone(),
            python_version: self.python.version.clone(),
            provisioned_at: now(),
        };
        commit(tmp, &self.final_dir(), &marker)?;
        Ok(marker)
    }

    async fn pip_install(&self, target: &Path) -> Result<(), ProvisionError> {
        let python = self.python.executable.display().to_string();
        let mut command = Command::new(&self.python.executable);
        // -I: the server's PYTHONPATH/PYTHONHOME and the user site do not leak into pip. PIP_*
        // variables (an index, a proxy) still apply, as pip's own configuration files do.
        command
            .args([
                "-I",
                "-m",
                "pip",
                "install",
                "--no-input",
                "--disable-pip-version-check",
            ])
            .args([
                "--no-warn-script-location",
                "--only-binary=:all:",
                "--target",
            ])
            .arg(target);
        if let Some(url) = &self.index_url {
            command.args(["--index-url", url]);
        }
        command
            .args(&self.requirements)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let output = match tokio::time::timeout(self.pip_timeout, command.output()).await {
            Err(_) => return Err(ProvisionError::PipTimeout(self.pip_timeout)),
            Ok(Err(source)) => return Err(ProvisionError::Spawn { python, source }),
            Ok(Ok(output)) => output,
        };
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail = failure_tail("pip", &output, STDERR_LINES);
        if stderr.contains("No module named pip") {
            return Err(ProvisionError::PipMissing {
                python,
                stderr: tail,
            });
        }
        Err(ProvisionError::PipFailed { stderr: tail })
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a failed tool said: the last `n` lines of its stderr, or its exit status if it said
/// nothing.
pub(crate) fn failure_tail(tool: &str, output: &std::process::Output, n: usize) -> String {
    let tail = last_lines(&String::from_utf8_lossy(&output.stderr), n);
    if tail.is_empty() {
        format!("{tool} exited with {} and printed nothing", output.status)
    } else {
        tail
    }
}

/// The last `n` non-empty lines of `text`, joined with " | ", cut to its last 2000 characters.
fn last_lines(text: &str, n: usize) -> String {
    const MAX_CHARS: usize = 2000;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(n)..].join(" | ");
    let count = tail.chars().count();
    if count <= MAX_CHARS {
        return tail;
    }
    let kept: String = tail.chars().skip(count - MAX_CHARS).collect();
    format!("…{kept}")
}

/// The version of `package` installed in `dir`, from its `<name>-<version>.dist-info` directory.
fn installed_version(dir: &Path, package: &str) -> std::io::Result<Option<String>> {
    let prefix = format!("{package}-");
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(version) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".dist-info"))
        {
            return Ok(Some(version.to_owned()));
        }
    }
    Ok(None)
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), ProvisionError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io("cannot set the mode of", path))
}

/// Adds read permission for everyone to every file under `root` (and search permission to
/// directories and to files executable by their owner). Symlinks are left alone.
fn make_world_readable(root: &Path) -> Result<(), ProvisionError> {
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let meta = std::fs::symlink_metadata(&dir).map_err(io("cannot stat", &dir))?;
        set_mode(&dir, (meta.permissions().mode() & 0o7777) | 0o555)?;
        for entry in std::fs::read_dir(&dir).map_err(io("cannot list", &dir))? {
            let entry = entry.map_err(io("cannot list", &dir))?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(io("cannot stat", &path))?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let mode = meta.permissions().mode() & 0o7777;
                let wanted = if mode & 0o100 != 0 {
                    mode | 0o555
                } else {
                    mode | 0o444
                };
                if wanted != mode {
                    set_mode(&path, wanted)?;
                }
            }
        }
    }
    Ok(())
}

fn write_marker<M: Serialize>(dir: &Path, marker: &M) -> Result<(), ProvisionError> {
    let path = dir.join(MARKER);
    let mut json = serde_json::to_vec_pretty(marker).map_err(|e| ProvisionError::Io {
        what: "cannot encode",
        path: path.clone(),
        source: e.into(),
    })?;
    json.push(b'\n');
    let mut file = File::create(&path).map_err(io("cannot create", &path))?;
    file.write_all(&json).map_err(io("cannot write", &path))?;
    set_mode(&path, 0o644)
}

/// Puts `new` at `dest` atomically. An existing (outdated) `dest` is first moved aside, since a
/// directory cannot be renamed over a non-empty one, then removed.
fn replace_dir(new: &Path, dest: &Path) -> Result<(), ProvisionError> {
    let parent = dest.parent().unwrap_or(Path::new("/"));
    if dest.exists() {
        let name = dest.file_name().unwrap_or_default().to_string_lossy();
        let aside = tempfile::Builder::new()
            .prefix(&format!(".{name}.old-"))
            .tempdir_in(parent)
            .map_err(io("cannot create a temporary directory in", parent))?
            .keep();
        // `aside` is an empty directory: rename replaces it.
        std::fs::rename(dest, &aside).map_err(io("cannot move aside", dest))?;
        std::fs::rename(new, dest).map_err(io("cannot rename into place", dest))?;
        if let Err(e) = std::fs::remove_dir_all(&aside) {
            tracing::warn!(
                path = %aside.display(),
                error = %e,
                "cannot remove old runtime directory"
            );
        }
    } else {
        std::fs::rename(new, dest).map_err(io("cannot rename into place", dest))?;
    }
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io("cannot sync", parent))
}

/// `<runtime_dir>/.<runtime>.lock`. Lock files are never removed: removing one while another
/// process waits on it would let two processes hold "the" lock.
pub(crate) fn lock_path(runtime_dir: &Path, runtime: &str) -> PathBuf {
    runtime_dir.join(format!(".{runtime}.lock"))
}

fn open_lock_file(path: &Path) -> Result<File, ProvisionError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io("cannot open", path))
}

/// Takes the exclusive `flock` on `path` (created if missing), waiting for it. Blocking: call
/// from a blocking thread.
pub(crate) fn lock_wait(path: &Path) -> Result<Flock<File>, ProvisionError> {
    Flock::lock(open_lock_file(path)?, FlockArg::LockExclusive).map_err(|(_, source)| {
        ProvisionError::Lock {
            path: path.to_owned(),
            source,
        }
    })
}

/// Takes the exclusive `flock` on `path` if no other open file holds it.
pub(crate) fn try_lock(path: &Path) -> Result<Option<Flock<File>>, ProvisionError> {
    match Flock::lock(open_lock_file(path)?, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::Error::EWOULDBLOCK)) => Ok(None),
        Err((_, source)) => Err(ProvisionError::Lock {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Removes what crashed or killed provisioning attempts left in `runtime_dir`
/// (`.python3.N.tmp-*`, `.nodejsN.x.old-*`), skipping any runtime whose lock another process
/// holds: its attempt is in progress.
pub(crate) fn clean_stale(runtime_dir: &Path) -> Result<(), ProvisionError> {
    let entries = std::fs::read_dir(runtime_dir).map_err(io("cannot list", runtime_dir))?;
    for entry in entries {
        let entry = entry.map_err(io("cannot list", runtime_dir))?;
        let name = entry.file_name();
        let Some(runtime) = name.to_str().and_then(stale_runtime) else {
            continue;
        };
        let lock = try_lock(&lock_path(runtime_dir, runtime))?;
        if lock.is_none() {
            tracing::debug!(
                runtime,
                "provisioning in progress elsewhere; leaving its files"
            );
            continue;
        }
        let path = entry.path();
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed a stale provisioning directory")
            }
            Err(e) => {
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "cannot remove a stale provisioning directory"
                )
            }
        }
    }
    Ok(())
}

/// The runtime a leftover's name belongs to: `.python3.11.tmp-abc` → `python3.11`,
/// `.nodejs20.x.old-x` → `nodejs20.x`.
fn stale_runtime(name: &str) -> Option<&str> {
    let rest = name.strip_prefix('.')?;
    let (runtime, _) = rest
        .split_once(".tmp-")
        .or_else(|| rest.split_once(".old-"))?;
    (runtime.starts_with("python3.") || runtime.starts_with("nodejs")).then_some(runtime)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn leftovers_are_recognised() {
        assert_eq!(stale_runtime(".python3.11.tmp-Ab12"), Some("python3.11"));
        assert_eq!(stale_runtime(".python3.9.old-x"), Some("python3.9"));
        assert_eq!(stale_runtime("python3.11"), None);
        assert_eq!(stale_runtime(".python3.11.lock"), None);
        assert_eq!(stale_runtime(".nodejs20.x.tmp-Ab12"), Some("nodejs20.x"));
        assert_eq!(stale_runtime(".nodejs22.x.old-q"), Some("nodejs22.x"));
        assert_eq!(stale_runtime(".other.tmp-x"), None);
    }

    #[test]
    fn stderr_tails() {
        assert_eq!(last_lines("a\n\nb\nc\n  d  \ne\n", 4), "b | c | d | e");
        assert_eq!(last_lines("only\n", 4), "only");
        assert_eq!(last_lines("", 4), "");
        let long = "x".repeat(5000);
        assert_eq!(last_lines(&long, 4).chars().count(), 2001);
    }

    #[test]
    fn the_bootstrap_runs_awslambdaric_from_var_lang() {
        let script = bootstrap_script(12);
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("exec /var/lang/bin/python3.12 -m awslambdaric \"$_HANDLER\"\n"));
        assert!(script.contains("/opt/python/lib/python3.12/site-packages"));
        assert!(script.contains("AWS_Lambda_python3.12"));
    }

    #[test]
    fn the_bootstrap_sets_paths_as_lambda_does() {
        let tmp = tempfile::tempdir().unwrap();
        // Run the script up to its `exec`, printing the environment instead.
        let script = bootstrap_script(11).replace("exec /var/lang/bin/python3.11", "exec env #");
        let path = tmp.path().join("bootstrap");
        std::fs::write(&path, script).unwrap();
        let run = |vars: &[(&str, &str)]| {
            let out = std::process::Command::new("/bin/sh")
                .arg(&path)
                .env_clear()
                .envs(vars.iter().copied())
                .output()
                .unwrap();
            assert!(out.status.success());
            let text = String::from_utf8(out.stdout).unwrap();
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<std::collections::HashMap<_, _>>()
        };

        let env = run(&[
            ("LD_LIBRARY_PATH", "/var/lang/lib:/lib64"),
            ("LAMBDA_TASK_ROOT", "/var/task"),
            ("LAMBDA_RUNTIME_DIR", "/var/runtime"),
        ]);
        assert_eq!(env["LD_LIBRARY_PATH"], "/var/lang/lib:/lib64");
        assert_eq!(
            env["PYTHONPATH"],
            "/var/task:/opt/python/lib/python3.11/site-packages:/opt/python:/var/runtime"
        );
        assert_eq!(env["AWS_EXECUTION_ENV"], "AWS_Lambda_python3.11");

        // A function's own LD_LIBRARY_PATH and PYTHONPATH are kept, after Lambda's.
        let env = run(&[("LD_LIBRARY_PATH", "/mine"), ("PYTHONPATH", "/extra")]);
        assert_eq!(env["LD_LIBRARY_PATH"], "/var/lang/lib:/mine");
        assert!(env["PYTHONPATH"].ends_with(":/var/runtime:/extra"));
        let env = run(&[]);
        assert_eq!(env["LD_LIBRARY_PATH"], "/var/lang/lib");
    }

    fn reqs(list: &[&str]) -> Vec<String> {
        list.iter().map(|r| (*r).to_owned()).collect()
    }

    #[test]
    fn markers_decide_completeness() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let marker = Marker {
            format: MARKER_FORMAT,
            runtime: "python3.11".into(),
            awslambdaric: "4.2.2".into(),
            boto3: Some("1.44.18".into()),
            requirements: reqs(&["awslambdaric>=3,<5", "boto3==1.44.18"]),
            python: "/usr/bin/python3.11".into(),
            python_version: "3.11.2".into(),
            provisioned_at: 1,
        };
        let wanted = reqs(&["awslambdaric>=3,<5", "boto3==1.44.18"]);
        assert_eq!(complete(dir, &wanted), None, "empty");
        write_marker(dir, &marker).unwrap();
        assert_eq!(complete(dir, &wanted), None, "no bootstrap");
        std::fs::write(dir.join("bootstrap"), "#!/bin/sh\n").unwrap();
        assert_eq!(complete(dir, &wanted), Some(marker.clone()));
        assert_eq!(
            complete(dir, &reqs(&["awslambdaric>=3,<5"])),
            None,
            "another requirement: a directory without boto3 is outdated"
        );
        write_marker(
            dir,
            &Marker {
                format: 0,
                ..marker
            },
        )
        .unwrap();
        assert_eq!(complete(dir, &wanted), None, "older format");
        std::fs::write(dir.join(MARKER), "{not json").unwrap();
        assert_eq!(complete(dir, &wanted), None, "torn");
    }

    #[test]
    fn world_readable() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("r");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/f"), "x").unwrap();
        std::fs::write(root.join("x"), "x").unwrap();
        set_mode(&root.join("sub/f"), 0o600).unwrap();
        set_mode(&root.join("x"), 0o700).unwrap();
        set_mode(&root.join("sub"), 0o700).unwrap();
        set_mode(&root, 0o700).unwrap();
        make_world_readable(&root).unwrap();
        let mode = |p: &str| {
            std::fs::metadata(root.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(""), 0o755);
        assert_eq!(mode("sub"), 0o755);
        assert_eq!(mode("sub/f"), 0o644);
        assert_eq!(mode("x"), 0o755);
    }
}
