//! Reading, writing and walking cgroupfs files, shared by the v1 and v2 drivers.

use std::fmt::Display;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::trace;

use super::{CgroupError, KILL_TIMEOUT};

pub(super) const PROCS: &str = "cgroup.procs";

pub(super) fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

pub(super) fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    parse_u64(path, read(path)?)
}

/// A single-value interface file's `content` (read from `path`) as a number.
pub(super) fn parse_u64(path: &Path, content: String) -> Result<u64, CgroupError> {
    content.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        content,
    })
}

/// The trimmed content of an interface file, or `None` when the file does not exist.
pub(super) fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match fs::read_to_string(path) {
        Ok(content) => Ok(Some(content.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Parses a limit: `None` for `max` (and for `unlimited`, a value of at least `unlimited`).
pub(super) fn parse_limit(
    path: &Path,
    content: &str,
    unlimited: u64,
) -> Result<Option<u64>, CgroupError> {
    if content == "max" {
        return Ok(None);
    }
    let value: u64 = content.parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        content: content.to_owned(),
    })?;
    Ok((value < unlimited).then_some(value))
}

/// The value of `key` in a flat-keyed file (`key value` per line: cpu.stat, memory.events,
/// memory.oom_control).
pub(super) fn keyed(content: &str, key: &str) -> Option<u64> {
    content.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Writes `value` in a single write(2), as cgroupfs expects. Never creates the file: a missing
/// interface file means a missing controller or feature, which callers check for.
pub(super) fn write(path: &Path, value: impl Display) -> Result<(), CgroupError> {
    let value = value.to_string();
    trace!(path = %path.display(), %value, "cgroup write");
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut file| file.write_all(value.as_bytes()))
        .map_err(|source| CgroupError::Write {
            path: path.to_path_buf(),
            value,
            source,
        })
}

/// Interface files read or written on every invocation, kept open. A read is then one pread(2)
/// at offset 0 (cgroupfs renders a file afresh for a read from its start) instead of a path walk
/// through kernfs, an open, a stat, two reads and a close; a write is one pwrite(2). A descriptor
/// that fails is reopened once, in case the group was removed and made again under its path.
#[derive(Debug, Default)]
pub(super) struct OpenFiles {
    files: Mutex<Vec<(PathBuf, Access, Arc<Open>)>>,
}

#[derive(Debug)]
struct Open {
    file: File,
    /// cgroupfs files have no size. One that has a size is a plain file standing in for one (a
    /// fixture), which a write must cut where O_TRUNC would have.
    sized: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

impl OpenFiles {
    pub(super) fn read(&self, path: &Path) -> Result<String, CgroupError> {
        self.with(path, Access::Read, |open| read_whole(&open.file))
            .map_err(|source| CgroupError::Read {
                path: path.to_path_buf(),
                source,
            })
    }

    pub(super) fn read_u64(&self, path: &Path) -> Result<u64, CgroupError> {
        parse_u64(path, self.read(path)?)
    }

    /// Writes `value` in a single pwrite(2) at offset 0, as cgroupfs expects.
    pub(super) fn write(&self, path: &Path, value: impl Display) -> Result<(), CgroupError> {
        let value = value.to_string();
        trace!(path = %path.display(), %value, "cgroup write");
        self.with(path, Access::Write, |open| {
            let n = open.file.write_at(value.as_bytes(), 0)?;
            if n != value.len() {
                return Err(io::ErrorKind::WriteZero.into());
            }
            if open.sized {
                open.file.set_len(n as u64)?;
            }
            Ok(())
        })
        .map_err(|source| CgroupError::Write {
            path: path.to_path_buf(),
            value,
            source,
        })
    }

    /// Runs `op` on the open descriptor of `path`, opening it if need be, and once more on a
    /// fresh descriptor if it fails on a cached one.
    fn with<T>(
        &self,
        path: &Path,
        access: Access,
        op: impl Fn(&Open) -> io::Result<T>,
    ) -> io::Result<T> {
        let cached = self
            .lock()
            .iter()
            .find(|(p, a, _)| *a == access && p == path)
            .map(|(_, _, file)| file.clone());
        if let Some(file) = cached {
            match op(&file) {
                Ok(value) => return Ok(value),
                Err(err) => {
                    trace!(path = %path.display(), error = %err, "reopening a cgroup file");
                    self.lock()
                        .retain(|(p, a, f)| !(*a == access && p == path && Arc::ptr_eq(f, &file)));
                }
            }
        }
        let file = match access {
            Access::Read => File::open(path)?,
            Access::Write => OpenOptions::new().write(true).open(path)?,
        };
        let sized = file.metadata()?.len() > 0;
        let file = Arc::new(Open { file, sized });
        let value = op(&file)?;
        self.lock().push((path.to_path_buf(), access, file));
        Ok(value)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(PathBuf, Access, Arc<Open>)>> {
        // A plain cache: whatever a panicking holder left is still valid.
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The whole content of a small file, read from offset 0 with pread(2): one call when it fits
/// the buffer, as every counter file does.
fn read_whole(file: &File) -> io::Result<String> {
    let mut buf = vec![0u8; 512];
    let mut len = 0;
    loop {
        let n = file.read_at(&mut buf[len..], len as u64)?;
        len += n;
        if n == 0 || len < buf.len() {
            break;
        }
        buf.resize(buf.len() * 2, 0);
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub(super) fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(CgroupError::Create {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// The processes listed in `dir/cgroup.procs` and in every descendant's. A directory that does
/// not exist holds none.
pub(super) fn procs(dir: &Path, out: &mut Vec<Pid>) -> Result<(), CgroupError> {
    let file = dir.join(PROCS);
    match fs::read_to_string(&file) {
        Ok(content) => {
            for line in content.lines() {
                let pid = line.trim().parse().map_err(|_| CgroupError::Parse {
                    path: file.clone(),
                    content: line.to_owned(),
                })?;
                out.push(Pid::from_raw(pid));
            }
        }
        // A group being removed right now (by its owner, or a VM's agent tearing down) is gone
        // (ENOENT) or dying (ENODEV): it holds no processes either way.
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV) => {
        }
        Err(source) => return Err(CgroupError::Read { path: file, source }),
    }
    for child in subdirs(dir)? {
        procs(&child, out)?;
    }
    Ok(())
}

/// Removes `dir` and the cgroups below it, deepest first. On cgroupfs, rmdir takes the interface
/// files with it; a directory that is already gone is fine.
pub(super) fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    for child in subdirs(dir)? {
        remove_tree(&child)?;
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(CgroupError::Remove {
            path: dir.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Writes `THAWED` to the `freezer.state` of `dir` and of every group below it (v1 freezer).
pub(super) fn thaw_tree(dir: &Path) -> Result<(), CgroupError> {
    let state = dir.join("freezer.state");
    if state.is_file() {
        write(&state, "THAWED")?;
    }
    for child in subdirs(dir)? {
        thaw_tree(&child)?;
    }
    Ok(())
}

fn subdirs(dir: &Path) -> Result<Vec<std::path::PathBuf>, CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CgroupError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

pub(super) fn sigkill(pids: &[Pid]) -> Result<(), CgroupError> {
    for &pid in pids {
        match kill(pid, Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(source) => return Err(CgroupError::Kill { pid, source }),
        }
    }
    Ok(())
}

/// SIGKILLs whatever `list` returns until it returns nothing, for at most [`KILL_TIMEOUT`].
/// Killing again each round catches processes forked while the previous round ran.
pub(super) fn kill_until_empty(
    path: &Path,
    list: impl Fn() -> Result<Vec<Pid>, CgroupError>,
) -> Result<(), CgroupError> {
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        let pids = list()?;
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CgroupError::StillPopulated {
                path: path.to_path_buf(),
                count: pids.len(),
            });
        }
        sigkill(&pids)?;
        thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_flat_keyed_files() {
        let v1_oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        let v1_oom_old = "oom_kill_disable 0\nunder_oom 1\n";
        let v2_events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        let v2_cpu = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 10\n\
                      nr_throttled 4\nthrottled_usec 9000\nnr_bursts 0\nburst_usec 0\n";
        let v1_cpu = "nr_periods 10\nnr_throttled 4\nthrottled_time 9000000\n";
        let cases: &[(&str, &str, Option<u64>)] = &[
            (v1_oom, "oom_kill", Some(3)),
            (v1_oom, "oom_kill_disable", Some(0)),
            (v1_oom_old, "oom_kill", None),
            (v2_events, "oom_kill", Some(1)),
            (v2_events, "oom", Some(2)),
            (v2_cpu, "usage_usec", Some(1500)),
            (v2_cpu, "throttled_usec", Some(9000)),
            (v2_cpu, "nr_throttled", Some(4)),
            (v1_cpu, "throttled_time", Some(9_000_000)),
            (v1_cpu, "throttled", None),
            ("", "oom_kill", None),
            ("oom_kill x\n", "oom_kill", None),
        ];
        for (content, key, want) in cases {
            assert_eq!(keyed(content, key), *want, "{key} in {content:?}");
        }
    }

    #[test]
    fn open_files_read_what_is_there_now_and_write_whole_values() {
        let dir = tempfile::tempdir().unwrap();
        let stat = dir.path().join("cpu.stat");
        let peak = dir.path().join("memory.max_usage_in_bytes");
        fs::write(&stat, "nr_periods 1\nthrottled_time 5\n").unwrap();
        fs::write(&peak, "8552448\n").unwrap();
        let files = OpenFiles::default();
        assert_eq!(
            keyed(&files.read(&stat).unwrap(), "throttled_time"),
            Some(5)
        );
        // The kernel renders the file afresh for every read; so does the kept descriptor.
        fs::write(&stat, "nr_periods 2\nthrottled_time 7\n").unwrap();
        assert_eq!(
            keyed(&files.read(&stat).unwrap(), "throttled_time"),
            Some(7)
        );
        let long = format!("{}\n", "x".repeat(3000));
        fs::write(&stat, &long).unwrap();
        assert_eq!(
            files.read(&stat).unwrap(),
            long,
            "content past the first buffer"
        );

        files.write(&peak, 0).unwrap();
        assert_eq!(fs::read_to_string(&peak).unwrap(), "0");
        assert_eq!(files.read_u64(&peak).unwrap(), 0);
        files.write(&peak, 12).unwrap();
        assert_eq!(files.read_u64(&peak).unwrap(), 12);

        let missing = dir.path().join("memory.peak");
        let err = files.read(&missing).unwrap_err();
        assert!(
            matches!(&err, CgroupError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
        assert!(!missing.exists(), "a write never creates a file");
        assert!(files.write(&missing, 1).is_err());
        assert!(!missing.exists());
    }

    #[test]
    fn write_replaces_and_never_creates() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.max");
        fs::write(&file, "max\n").unwrap();
        write(&file, 67108864).unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "67108864");

        let missing = dir.path().join("memory.swap.max");
        assert!(matches!(write(&missing, 0), Err(CgroupError::Write { .. })));
        assert!(!missing.exists());
    }

    #[test]
    fn walks_and_removes_subtrees_deepest_first() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ember");
        fs::create_dir_all(root.join("vm-1/c-1")).unwrap();
        fs::create_dir_all(root.join("vm-2")).unwrap();
        fs::write(root.join(PROCS), "").unwrap();
        fs::write(root.join("vm-1").join(PROCS), "10\n11\n").unwrap();
        fs::write(root.join("vm-1/c-1").join(PROCS), "12\n").unwrap();

        let mut pids = Vec::new();
        procs(&root, &mut pids).unwrap();
        pids.sort();
        assert_eq!(pids, [10, 11, 12].map(Pid::from_raw));

        // Fixture directories hold regular files, which rmdir refuses; cgroupfs ones do not.
        for d in ["", "vm-1", "vm-1/c-1"] {
            fs::remove_file(root.join(d).join(PROCS)).unwrap();
        }
        remove_tree(&root).unwrap();
        assert!(!root.exists());
        remove_tree(&root).unwrap();
    }

    proptest! {
        #[test]
        fn keyed_finds_every_written_key(values in proptest::collection::btree_map(
            "[a-z_]{1,12}", any::<u64>(), 0..8,
        )) {
            let content: String = values.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
            for (k, v) in &values {
                prop_assert_eq!(keyed(&content, k), Some(*v));
            }
        }

        #[test]
        fn keyed_never_panics(content in ".*", key in "[a-z_]{0,8}") {
            let _ = keyed(&content, &key);
        }
    }
}
