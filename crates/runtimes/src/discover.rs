//! Finding the host's CPython 3 interpreters: where to look, asking each for its version and
//! prefix (concurrently, one subprocess each), and keeping one per `python3.N`. The generic
//! steps (resolving candidates, probing them, choosing one per version) serve Node.js too
//! (`crate::node`).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;
use tokio::task::JoinSet;

/// The smallest Python minor version Ember runs: the API accepts `python3.9` and up
/// (`crates/api/src/validate.rs`), so an older interpreter could never be used.
pub const MIN_PYTHON_MINOR: u32 = 9;

/// How long one interpreter may take to say what it is.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// What an interpreter is asked; written to run unchanged on any Python 3 (and to fail on 2).
const QUERY: &str = "import sys; print(sys.implementation.name); \
                     print('%d.%d.%d' % tuple(sys.version_info[:3])); \
                     print(sys.base_prefix); print(sys.executable)";

/// One CPython interpreter of the host, usable as Lambda runtime `python3.N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Python {
    /// The Lambda runtime id, `python3.N`.
    pub runtime: String,
    /// `N` in `3.N`.
    pub minor: u32,
    /// The full version, e.g. `3.11.2`.
    pub version: String,
    /// The interpreter on the host (symlinks resolved).
    pub executable: PathBuf,
    /// Its `sys.base_prefix`: the host directory bound into VMs at `/opt/ember/lang/python3.N`,
    /// holding `bin/python3.N` and `lib/`.
    pub prefix: PathBuf,
}

impl Python {
    /// Whether the prefix is the host's own `/usr` or `/usr/local`, visible without a bind.
    pub fn has_system_prefix(&self) -> bool {
        is_system_prefix(&self.prefix)
    }
}

/// Whether `prefix` is the host's own `/usr` or `/usr/local`.
pub(crate) fn is_system_prefix(prefix: &Path) -> bool {
    prefix == Path::new("/usr") || prefix == Path::new("/usr/local")
}

/// An interpreter found on the host, as [`choose`] sees it.
pub(crate) trait Found {
    /// The version a runtime stands for: Python's minor, Node's major.
    fn key(&self) -> u32;
    fn has_system_prefix(&self) -> bool;
}

impl Found for Python {
    fn key(&self) -> u32 {
        self.minor
    }
    fn has_system_prefix(&self) -> bool {
        Python::has_system_prefix(self)
    }
}

/// Where [`Runtimes::discover`](crate::Runtimes::discover) looks for `python3.N` executables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchPaths {
    /// Directories searched for executables named `python3.N`, in order.
    pub dirs: Vec<PathBuf>,
    /// pyenv roots: each `<root>/versions/*/bin` is searched, newest version first.
    pub pyenv_roots: Vec<PathBuf>,
    /// nvm directories: each `<dir>/versions/node/*/bin` is searched for `node`, newest first.
    pub nvm_dirs: Vec<PathBuf>,
}

impl SearchPaths {
    /// The host's usual places: `PATH`, `/usr/bin`, `/usr/local/bin`, pyenv's versions under
    /// `$PYENV_ROOT` (or `~/.pyenv`), and nvm's under `$NVM_DIR` and `~/.nvm`.
    pub fn host() -> Self {
        let mut search = Self::from_env(
            std::env::var_os("PATH").as_deref(),
            std::env::var_os("PYENV_ROOT").as_deref(),
            std::env::var_os("HOME").as_deref(),
        );
        if let Some(nvm) = std::env::var_os("NVM_DIR").filter(|d| !d.is_empty()) {
            let nvm = PathBuf::from(nvm);
            if !search.nvm_dirs.contains(&nvm) {
                search.nvm_dirs.insert(0, nvm);
            }
        }
        search
    }

    /// Nowhere: only the configured `extra_pythons` are used (for tests).
    pub fn none() -> Self {
        Self::default()
    }

    /// [`SearchPaths::host`] from explicit values of `PATH`, `PYENV_ROOT` and `HOME`.
    ///
    /// Directories named `shims` (pyenv's, asdf's) are left out: they hold shell wrappers that
    /// pick an interpreter by the caller's directory; the real interpreters are found under the
    /// pyenv root instead.
    pub fn from_env(
        path: Option<&OsStr>,
        pyenv_root: Option<&OsStr>,
        home: Option<&OsStr>,
    ) -> Self {
        let mut dirs: Vec<PathBuf> = path
            .map(|p| std::env::split_paths(p).collect())
            .unwrap_or_default();
        dirs.extend(["/usr/bin", "/usr/local/bin"].map(PathBuf::from));
        dirs.retain(|d| d.is_absolute() && d.file_name() != Some(OsStr::new("shims")));
        let pyenv_root = match (pyenv_root, home) {
            (Some(root), _) if !root.is_empty() => Some(PathBuf::from(root)),
            (_, Some(home)) if !home.is_empty() => Some(Path::new(home).join(".pyenv")),
            _ => None,
        };
        let nvm_dirs = home
            .filter(|h| !h.is_empty())
            .map(|h| Path::new(h).join(".nvm"))
            .into_iter()
            .collect();
        Self {
            dirs,
            pyenv_roots: pyenv_root.into_iter().collect(),
            nvm_dirs,
        }
    }
}

/// The minor version `N` if `name` is exactly `python3.N`.
fn python3_minor(name: &OsStr) -> Option<u32> {
    let digits = name.to_str()?.strip_prefix("python3.")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `python3.N` executables in `dir`, highest `N` first (the order within one directory does not
/// matter for the choice, which is per `N`; it only makes logs stable).
fn pythons_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| python3_minor(&e.file_name()).map(|minor| (minor, e.path())))
        .filter(|(_, path)| path.is_file())
        .collect();
    found.sort_by_key(|(minor, _)| std::cmp::Reverse(*minor));
    found.into_iter().map(|(_, path)| path).collect()
}

/// Parses a version directory name like `3.11.7` (or nvm's `v20.11.1`) for sorting
/// (non-numeric parts sort as 0).
pub(crate) fn version_key(name: &OsStr) -> Vec<u64> {
    name.to_string_lossy()
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|part| part.parse().unwrap_or(0))
        .collect()
}

/// Every candidate executable, in the order found: `extra` first, then `search.dirs`, then each
/// pyenv root's versions (newest first). Symlinks are resolved and duplicates dropped, so
/// `/bin/python3.11` and `/usr/bin/python3.11` (one file on a merged-/usr host) run once.
pub(crate) fn candidates(search: &SearchPaths, extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut ordered: Vec<PathBuf> = extra.to_vec();
    for dir in &search.dirs {
        ordered.extend(pythons_in(dir));
    }
    for root in &search.pyenv_roots {
        for version in versions_newest_first(&root.join("versions")) {
            ordered.extend(pythons_in(&version.join("bin")));
        }
    }
    resolve_unique(ordered)
}

/// The subdirectories of `dir` (version directories of pyenv or nvm), newest version first.
pub(crate) fn versions_newest_first(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut versions: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    versions.sort_by_key(|v| std::cmp::Reverse(version_key(v.file_name().unwrap_or_default())));
    versions
}

/// `ordered` with symlinks resolved and duplicates (after resolution) dropped, order kept.
pub(crate) fn resolve_unique(ordered: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    ordered
        .into_iter()
        .filter_map(|path| match std::fs::canonicalize(&path) {
            Ok(real) => Some(real),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "skipping a candidate");
                None
            }
        })
        .filter(|real| seen.insert(real.clone()))
        .collect()
}

/// Reads an interpreter's answer to [`QUERY`]; the error says why it is not usable (logged at
/// debug level: a host has many such binaries).
fn parse_answer(executable: &Path, stdout: &str) -> Result<Python, String> {
    let mut lines = stdout.lines();
    let (Some(implementation), Some(version), Some(prefix)) =
        (lines.next(), lines.next(), lines.next())
    else {
        return Err(format!("unexpected answer {stdout:?}"));
    };
    if implementation != "cpython" {
        return Err(format!("implementation is {implementation}, not cpython"));
    }
    let mut parts = version.split('.').map(str::parse::<u32>);
    let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) else {
        return Err(format!("unreadable version {version:?}"));
    };
    if major != 3 || minor < MIN_PYTHON_MINOR {
        return Err(format!(
            "version {version} is older than 3.{MIN_PYTHON_MINOR}"
        ));
    }
    let prefix = PathBuf::from(prefix);
    if !prefix.is_absolute() {
        return Err(format!("prefix {} is not absolute", prefix.display()));
    }
    // The container runs `/var/lang/bin/python3.N`, with the prefix bound at /var/lang.
    let in_prefix = prefix.join("bin").join(format!("python3.{minor}"));
    if !in_prefix.is_file() {
        return Err(format!("{} does not exist", in_prefix.display()));
    }
    Ok(Python {
        runtime: format!("python3.{minor}"),
        minor,
        version: version.to_owned(),
        executable: executable.to_owned(),
        prefix,
    })
}

/// Asks one interpreter what it is.
async fn query(executable: PathBuf) -> Result<Python, String> {
    let stdout = ask(Command::new(&executable).args(["-I", "-c", QUERY])).await?;
    parse_answer(&executable, &stdout)
}

/// Runs an interpreter's version query and returns what it printed; the error says why it gave
/// no answer.
pub(crate) async fn ask(command: &mut Command) -> Result<String, String> {
    let output = command
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(QUERY_TIMEOUT, output).await {
        Err(_) => return Err(format!("no answer within {}s", QUERY_TIMEOUT.as_secs())),
        Ok(Err(e)) => return Err(format!("cannot run it: {e}")),
        Ok(Ok(output)) => output,
    };
    if !output.status.success() {
        return Err(format!("it exited with {}", output.status));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Asks every candidate Python concurrently; returns the usable ones in candidate order.
pub(crate) async fn probe_all(candidates: Vec<PathBuf>) -> Vec<Python> {
    probe_all_with(candidates, query).await
}

/// Asks every candidate concurrently with `query`; returns the usable ones in candidate order.
pub(crate) async fn probe_all_with<T, F, Fut>(candidates: Vec<PathBuf>, query: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>> + Send + 'static,
{
    let mut set = JoinSet::new();
    for (index, path) in candidates.into_iter().enumerate() {
        let answer = query(path.clone());
        set.spawn(async move { (index, path, answer.await) });
    }
    let mut answers = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((index, _, Ok(python))) => answers.push((index, python)),
            Ok((_, path, Err(why))) => {
                tracing::debug!(path = %path.display(), why, "not a usable interpreter");
            }
            Err(e) => tracing::warn!(error = %e, "probe task failed"),
        }
    }
    answers.sort_by_key(|(index, _)| *index);
    answers.into_iter().map(|(_, python)| python).collect()
}

/// Keeps one interpreter per runtime (`python3.N`, `nodejsN.x`): the first whose prefix is `/usr`
/// or `/usr/local`, else the first found. Sorted by version.
pub(crate) fn choose<T: Found>(found: Vec<T>) -> Vec<T> {
    let mut chosen: Vec<T> = Vec::new();
    for item in found {
        match chosen.iter_mut().find(|c| c.key() == item.key()) {
            None => chosen.push(item),
            Some(current) if !current.has_system_prefix() && item.has_system_prefix() => {
                *current = item;
            }
            Some(_) => {}
        }
    }
    chosen.sort_by_key(Found::key);
    chosen
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn python(minor: u32, prefix: &str, executable: &str) -> Python {
        Python {
            runtime: format!("python3.{minor}"),
            minor,
            version: format!("3.{minor}.0"),
            executable: executable.into(),
            prefix: prefix.into(),
        }
    }

    #[test]
    fn choice_prefers_a_system_prefix_then_the_first_found() {
        // (minor, prefix, executable) in the order found → (minor, executable) chosen.
        type Found<'a> = &'a [(u32, &'a str, &'a str)];
        type Chosen<'a> = &'a [(u32, &'a str)];
        let table: &[(Found<'_>, Chosen<'_>)] = &[
            (&[], &[]),
            (&[(11, "/root/.pyenv/versions/3.11.7", "a")], &[(11, "a")]),
            (
                &[(11, "/root/.pyenv/versions/3.11.7", "a"), (11, "/usr", "b")],
                &[(11, "b")],
            ),
            (&[(11, "/usr/local", "a"), (11, "/usr", "b")], &[(11, "a")]),
            (&[(11, "/opt/py", "a"), (11, "/srv/py", "b")], &[(11, "a")]),
            (
                &[
                    (12, "/opt/a", "a"),
                    (10, "/usr", "b"),
                    (12, "/usr/local", "c"),
                    (10, "/x", "d"),
                ],
                &[(10, "b"), (12, "c")],
            ),
            // `/usr/lib` is not the host's own prefix.
            (&[(13, "/usr/lib/x", "a"), (13, "/opt", "b")], &[(13, "a")]),
        ];
        for (found, expected) in table {
            let pythons = found.iter().map(|(m, p, e)| python(*m, p, e)).collect();
            let chosen: Vec<(u32, String)> = choose(pythons)
                .into_iter()
                .map(|p| (p.minor, p.executable.display().to_string()))
                .collect();
            let expected: Vec<(u32, String)> =
                expected.iter().map(|(m, e)| (*m, e.to_string())).collect();
            assert_eq!(chosen, expected, "found {found:?}");
        }
    }

    #[test]
    fn names_are_exactly_python3_dot_n() {
        let table = [
            ("python3.11", Some(11)),
            ("python3.9", Some(9)),
            ("python3.100", Some(100)),
            ("python3", None),
            ("python3.", None),
            ("python3.11-config", None),
            ("python3.11d", None),
            ("python2.7", None),
            ("pypy3.10", None),
        ];
        for (name, minor) in table {
            assert_eq!(python3_minor(OsStr::new(name)), minor, "{name}");
        }
    }

    #[test]
    fn host_search_paths_skip_shims_and_find_pyenv() {
        let search = SearchPaths::from_env(
            Some(OsStr::new(
                "/root/.pyenv/shims:/usr/local/bin:relative:/opt/asdf/shims:/bin",
            )),
            None,
            Some(OsStr::new("/root")),
        );
        assert_eq!(
            search.dirs,
            ["/usr/local/bin", "/bin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from)
        );
        assert_eq!(search.pyenv_roots, [PathBuf::from("/root/.pyenv")]);
        assert_eq!(search.nvm_dirs, [PathBuf::from("/root/.nvm")]);

        let search = SearchPaths::from_env(
            None,
            Some(OsStr::new("/opt/pyenv")),
            Some(OsStr::new("/root")),
        );
        assert_eq!(search.pyenv_roots, [PathBuf::from("/opt/pyenv")]);
        assert_eq!(
            SearchPaths::from_env(None, None, None).pyenv_roots,
            Vec::<PathBuf>::new()
        );
    }

    fn touch_exe(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "#!/bin/sh\nexit 1\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn candidates_are_ordered_deduplicated_and_resolved() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let bin = root.join("bin");
        for name in [
            "python3.11",
            "python3.12",
            "python3",
            "python3.11-config",
            "python2.7",
        ] {
            touch_exe(&bin.join(name));
        }
        std::fs::create_dir_all(bin.join("python3.99")).unwrap(); // a directory: not a candidate
        let pyenv = root.join("pyenv");
        for version in ["3.11.7", "3.11.10", "3.9.18"] {
            touch_exe(&pyenv.join("versions").join(version).join("bin/python3.11"));
        }
        // A symlink to a file already listed is the same interpreter.
        let links = root.join("links");
        std::fs::create_dir_all(&links).unwrap();
        std::os::unix::fs::symlink(bin.join("python3.12"), links.join("python3.12")).unwrap();
        let extra = root.join("extra/python3.13");
        touch_exe(&extra);

        let search = SearchPaths {
            dirs: vec![bin.clone(), links, root.join("missing")],
            pyenv_roots: vec![pyenv.clone(), root.join("no-pyenv")],
            nvm_dirs: Vec::new(),
        };
        let found = candidates(&search, std::slice::from_ref(&extra));
        assert_eq!(
            found,
            vec![
                extra,
                bin.join("python3.12"),
                bin.join("python3.11"),
                pyenv.join("versions/3.11.10/bin/python3.11"),
                pyenv.join("versions/3.11.7/bin/python3.11"),
                pyenv.join("versions/3.9.18/bin/python3.11"),
            ]
        );
    }

    #[test]
    fn answers_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let prefix = tmp.path();
        touch_exe(&prefix.join("bin/python3.11"));
        let p = prefix.display();
        let exe = Path::new("/x/python3.11");

        let ok = parse_answer(exe, &format!("cpython\n3.11.7\n{p}\n/x/python3.11\n")).unwrap();
        assert_eq!(ok.runtime, "python3.11");
        assert_eq!(ok.version, "3.11.7");
        assert_eq!(ok.prefix, prefix);
        assert_eq!(ok.executable, exe);

        for bad in [
            format!("pypy\n3.11.7\n{p}\n"),
            format!("cpython\n3.8.18\n{p}\n"),
            format!("cpython\n2.7.18\n{p}\n"),
            // The prefix has no bin/python3.12, so /var/lang/bin/python3.12 would not exist.
            format!("cpython\n3.12.1\n{p}\n"),
            "cpython\n3.11.7\nrelative\n".to_owned(),
            "cpython\n3.11.7\n".to_owned(),
            "cpython\nthree\n/usr\n".to_owned(),
        ] {
            assert!(parse_answer(exe, &bad).is_err(), "{bad:?}");
        }
    }
}
