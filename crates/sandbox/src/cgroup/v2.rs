//! cgroup v2: one directory of the unified hierarchy per group.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use nix::unistd::Pid;
use tracing::debug;

use super::files::{self, PROCS};
use super::{Cgroup, CgroupError, CpuQuota, Limits, Stats};

/// The controllers Ember enables for its groups, when the kernel offers them.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

#[derive(Debug)]
pub(super) struct V2Cgroup {
    dir: PathBuf,
    path: PathBuf,
    peak: Mutex<Peak>,
    /// The counter files [`Cgroup::stats`] reads, kept open.
    counters: files::OpenFiles,
}

/// Where the peak memory figure comes from.
#[derive(Debug)]
enum Peak {
    /// `memory.peak` as the kernel keeps it: since the group was created.
    SinceCreation,
    /// A `memory.peak` descriptor that was written to. Since 6.12 such a write resets the peak
    /// as seen through that descriptor only, so it stays open for the reads that follow.
    Reset(File),
    /// Kernels without a resettable `memory.peak`: the highest `memory.current` seen by
    /// `stats` since the reset.
    Sampled(u64),
}

impl V2Cgroup {
    /// A handle on a group that may or may not exist.
    pub(super) fn open(root: &Path, path: &Path) -> Self {
        Self {
            dir: root.join(path),
            path: path.to_path_buf(),
            peak: Mutex::new(Peak::SinceCreation),
            counters: files::OpenFiles::default(),
        }
    }

    /// Creates `path` level by level, enabling Ember's controllers in each parent first so the
    /// new level gets their interface files.
    pub(super) fn create(root: &Path, path: &Path) -> Result<Self, CgroupError> {
        let available = files::read(&root.join("cgroup.controllers"))?;
        let wanted: Vec<&str> = CONTROLLERS
            .into_iter()
            .filter(|c| available.split_whitespace().any(|a| a == *c))
            .collect();
        let mut dir = root.to_path_buf();
        for component in path {
            enable(&dir, &wanted)?;
            dir.push(component);
            files::mkdir(&dir)?;
        }
        debug!(path = %path.display(), controllers = ?wanted, "created v2 cgroup");
        Ok(Self::open(root, path))
    }

    /// The interface file `name`, which exists only while `controller` is enabled here.
    fn file(&self, controller: &'static str, name: &str) -> Result<PathBuf, CgroupError> {
        let file = self.dir.join(name);
        if file.is_file() {
            Ok(file)
        } else {
            Err(CgroupError::MissingController(controller))
        }
    }

    /// The content of the counter file `name`, through the open descriptors; as with
    /// [`Self::file`], a missing file means a missing controller.
    fn counter(&self, controller: &'static str, name: &str) -> Result<String, CgroupError> {
        match self.counters.read(&self.dir.join(name)) {
            Err(CgroupError::Read { source, .. }) if source.kind() == ErrorKind::NotFound => {
                Err(CgroupError::MissingController(controller))
            }
            other => other,
        }
    }

    fn counter_u64(&self, controller: &'static str, name: &str) -> Result<u64, CgroupError> {
        files::parse_u64(&self.dir.join(name), self.counter(controller, name)?)
    }

    /// Writes `cgroup.freeze` (5.2; a core file of every group but the root) through the open
    /// descriptors.
    fn write_freeze(&self, value: u8) -> Result<(), CgroupError> {
        match self.counters.write(&self.dir.join("cgroup.freeze"), value) {
            Err(CgroupError::Write { source, .. }) if source.kind() == ErrorKind::NotFound => {
                Err(CgroupError::MissingController("freezer"))
            }
            other => other,
        }
    }

    fn memory_current(&self) -> Result<u64, CgroupError> {
        self.counter_u64("memory", "memory.current")
    }

    fn memory_peak(&self) -> Result<u64, CgroupError> {
        let mut peak = self.peak.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut *peak {
            Peak::SinceCreation => match self.counter_u64("memory", "memory.peak") {
                // memory.peak appeared in 5.19.
                Err(CgroupError::MissingController(_)) => self.memory_current(),
                other => other,
            },
            Peak::Reset(file) => {
                let path = self.dir.join("memory.peak");
                let mut buf = [0u8; 32];
                let n = file
                    .read_at(&mut buf, 0)
                    .map_err(|source| CgroupError::Read {
                        path: path.clone(),
                        source,
                    })?;
                files::parse_u64(&path, String::from_utf8_lossy(&buf[..n]).into_owned())
            }
            Peak::Sampled(max) => {
                *max = (*max).max(self.memory_current()?);
                Ok(*max)
            }
        }
    }
}

/// Adds the `wanted` controllers missing from `dir/cgroup.subtree_control`.
fn enable(dir: &Path, wanted: &[&str]) -> Result<(), CgroupError> {
    let control = dir.join("cgroup.subtree_control");
    let enabled = files::read(&control)?;
    let missing: Vec<String> = wanted
        .iter()
        .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    files::write(&control, missing.join(" "))
}

impl Cgroup for V2Cgroup {
    fn path(&self) -> &Path {
        &self.path
    }

    fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        if let Some(bytes) = limits.memory_bytes {
            files::write(&self.file("memory", "memory.max")?, bytes)?;
            // Absent when the kernel does not account swap, in which case there is none to use.
            let swap = self.dir.join("memory.swap.max");
            if swap.is_file() {
                files::write(&swap, 0)?;
            }
        }
        if let Some(cpu) = limits.cpu {
            let value = format!("{} {}", cpu.quota_us, cpu.period_us);
            files::write(&self.file("cpu", "cpu.max")?, value)?;
        }
        if let Some(max) = limits.pids_max {
            files::write(&self.file("pids", "pids.max")?, max)?;
        }
        debug!(path = %self.path.display(), ?limits, "applied v2 limits");
        Ok(())
    }

    fn limits(&self) -> Result<Limits, CgroupError> {
        let read = |name: &str| {
            let path = self.dir.join(name);
            files::read_optional(&path).map(|c| c.map(|c| (path, c)))
        };
        let memory_bytes = match read("memory.max")? {
            Some((path, content)) => files::parse_limit(&path, &content, u64::MAX)?,
            None => None,
        };
        let cpu = match read("cpu.max")? {
            Some((path, content)) => {
                let parse_error = || CgroupError::Parse {
                    path: path.clone(),
                    content: content.clone(),
                };
                let (quota, period) = content.split_once(' ').ok_or_else(parse_error)?;
                let period_us = period.parse().map_err(|_| parse_error())?;
                files::parse_limit(&path, quota, u64::MAX)?.map(|quota_us| CpuQuota {
                    quota_us,
                    period_us,
                })
            }
            None => None,
        };
        let pids_max = match read("pids.max")? {
            Some((path, content)) => files::parse_limit(&path, &content, u64::MAX)?,
            None => None,
        };
        Ok(Limits {
            memory_bytes,
            cpu,
            pids_max,
        })
    }

    fn add_task(&self, pid: Pid) -> Result<(), CgroupError> {
        files::write(&self.dir.join(PROCS), pid)
    }

    fn procs_files(&self) -> Result<Vec<PathBuf>, CgroupError> {
        Ok(vec![self.dir.join(PROCS)])
    }

    fn pids(&self) -> Result<Vec<Pid>, CgroupError> {
        let mut pids = Vec::new();
        files::procs(&self.dir, &mut pids)?;
        Ok(pids)
    }

    fn stats(&self) -> Result<Stats, CgroupError> {
        let events = self.counter("memory", "memory.events")?;
        // cpu.stat always has usage_usec; the throttling lines need the cpu controller.
        let cpu_stat = self.counters.read(&self.dir.join("cpu.stat"))?;
        Ok(Stats {
            memory_current_bytes: self.memory_current()?,
            memory_peak_bytes: self.memory_peak()?,
            oom_kills: files::keyed(&events, "oom_kill").unwrap_or(0),
            cpu_usage_usec: files::keyed(&cpu_stat, "usage_usec").unwrap_or(0),
            cpu_throttled_usec: files::keyed(&cpu_stat, "throttled_usec").unwrap_or(0),
            nr_throttled: files::keyed(&cpu_stat, "nr_throttled").unwrap_or(0),
        })
    }

    fn reset_peak(&self) -> Result<(), CgroupError> {
        let path = self.file("memory", "memory.peak");
        let reset = path.and_then(|path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .and_then(|mut file| file.write_all(b"reset\n").map(|()| file))
                .map_err(|source| CgroupError::Write {
                    path,
                    value: "reset".into(),
                    source,
                })
        });
        let next = match reset {
            Ok(file) => Peak::Reset(file),
            Err(e) => {
                debug!(path = %self.path.display(), error = %e, "memory.peak not resettable; sampling");
                Peak::Sampled(self.memory_current()?)
            }
        };
        *self.peak.lock().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(())
    }

    fn freeze(&self) -> Result<(), CgroupError> {
        self.write_freeze(1)
    }

    fn thaw(&self) -> Result<(), CgroupError> {
        self.write_freeze(0)
    }

    fn frozen(&self) -> Result<bool, CgroupError> {
        let events = self.counter("freezer", "cgroup.events")?;
        Ok(files::keyed(&events, "frozen") == Some(1))
    }

    /// A frozen process still dies of a fatal signal on v2, so nothing is thawed first.
    fn kill_all(&self) -> Result<(), CgroupError> {
        // cgroup.kill (5.14) kills the whole subtree at once, forks in flight included.
        let kill = self.dir.join("cgroup.kill");
        if kill.is_file() {
            files::write(&kill, 1)?;
        }
        files::kill_until_empty(&self.path, || self.pids())
    }

    fn destroy(&self) -> Result<(), CgroupError> {
        self.kill_all()?;
        files::remove_tree(&self.dir)?;
        debug!(path = %self.path.display(), "destroyed v2 cgroup");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::{CgroupVersion, CpuQuota, Hierarchy};
    use super::*;

    /// What the kernel puts in a new v2 group with cpu, memory and pids enabled.
    const GROUP_FILES: &[(&str, &str)] = &[
        (PROCS, ""),
        ("cgroup.controllers", "cpu memory pids\n"),
        ("cgroup.subtree_control", "\n"),
        ("cgroup.events", "populated 0\nfrozen 0\n"),
        ("cgroup.freeze", "0\n"),
        ("cgroup.kill", ""),
        ("memory.max", "max\n"),
        ("memory.swap.max", "max\n"),
        ("memory.current", "0\n"),
        ("memory.peak", "0\n"),
        (
            "memory.events",
            "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
        ),
        ("cpu.max", "max 100000\n"),
        ("cpu.stat", "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"),
        ("pids.max", "max\n"),
    ];

    /// A v2 root offering `controllers`, with each level of `path` populated as mkdir on
    /// cgroupfs would leave it, minus the files in `without`.
    fn fixture(controllers: &str, path: &str, without: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), controllers).unwrap();
        fs::write(dir.path().join("cgroup.subtree_control"), "").unwrap();
        fs::write(dir.path().join(PROCS), "1\n").unwrap();
        let mut level = dir.path().to_path_buf();
        for component in Path::new(path) {
            level.push(component);
            fs::create_dir(&level).unwrap();
            for (name, content) in GROUP_FILES.iter().filter(|(n, _)| !without.contains(n)) {
                fs::write(level.join(name), content).unwrap();
            }
        }
        dir
    }

    fn read(root: &Path, file: &str) -> String {
        fs::read_to_string(root.join(file)).unwrap()
    }

    #[test]
    fn create_enables_controllers_in_every_ancestor() {
        let cases: &[(&str, &str, &str)] = &[
            // (controllers offered by the root, file, content after create)
            (
                "cpuset cpu io memory hugetlb pids rdma misc",
                "cgroup.subtree_control",
                "+cpu +memory +pids",
            ),
            (
                "cpu memory pids",
                "ember/cgroup.subtree_control",
                "+cpu +memory +pids",
            ),
            (
                "cpu memory pids",
                "ember/vm/cgroup.subtree_control",
                "+cpu +memory +pids",
            ),
            ("cpu memory pids", "ember/vm/c/cgroup.subtree_control", "\n"),
            ("memory io", "cgroup.subtree_control", "+memory"),
            ("hugetlb", "cgroup.subtree_control", ""),
        ];
        for (offered, file, want) in cases {
            let dir = fixture(offered, "ember/vm/c", &[]);
            Hierarchy::new(dir.path(), CgroupVersion::V2)
                .create("ember/vm/c")
                .unwrap();
            assert_eq!(read(dir.path(), file), *want, "{file} with {offered:?}");
        }
    }

    #[test]
    fn create_skips_controllers_already_enabled() {
        let dir = fixture("cpu memory pids", "ember", &[]);
        fs::write(dir.path().join("cgroup.subtree_control"), "cpu memory\n").unwrap();
        Hierarchy::new(dir.path(), CgroupVersion::V2)
            .create("ember")
            .unwrap();
        assert_eq!(read(dir.path(), "cgroup.subtree_control"), "+pids");
    }

    #[test]
    fn rename_is_refused_as_the_kernel_refuses_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), "memory pids").unwrap();
        fs::write(dir.path().join("cgroup.subtree_control"), "").unwrap();
        let hierarchy = Hierarchy::new(dir.path(), CgroupVersion::V2);
        hierarchy.create("spare-0").unwrap();
        assert!(matches!(
            hierarchy.rename("spare-0", "c-1"),
            Err(CgroupError::Rename { .. })
        ));
        assert!(dir.path().join("spare-0").is_dir());
    }

    #[test]
    fn apply_writes_exactly_these_files() {
        let limits = Limits {
            memory_bytes: Some(128 << 20),
            cpu: Some(CpuQuota {
                quota_us: 72_000,
                period_us: 100_000,
            }),
            pids_max: Some(64),
        };
        // (files the kernel lacks, file, value after apply)
        let cases: &[(&[&str], &str, &str)] = &[
            (&[], "c/memory.max", "134217728"),
            (&[], "c/memory.swap.max", "0"),
            (&[], "c/cpu.max", "72000 100000"),
            (&[], "c/pids.max", "64"),
            (&[], "c/cgroup.kill", ""),
            (&["memory.swap.max"], "c/memory.max", "134217728"),
        ];
        for (without, file, want) in cases {
            let dir = fixture("cpu memory pids", "c", without);
            let cgroup = Hierarchy::new(dir.path(), CgroupVersion::V2)
                .create("c")
                .unwrap();
            cgroup.apply(&limits).unwrap();
            assert_eq!(read(dir.path(), file), *want, "{file} without {without:?}");
            for missing in *without {
                assert!(
                    !dir.path().join("c").join(missing).exists(),
                    "{missing} created"
                );
            }
        }
    }

    #[test]
    fn apply_names_the_missing_controller() {
        let cases: &[(&str, Limits, &str)] = &[
            (
                "memory.max",
                Limits {
                    memory_bytes: Some(1),
                    ..Limits::default()
                },
                "memory",
            ),
            (
                "cpu.max",
                Limits {
                    cpu: Some(CpuQuota {
                        quota_us: 1000,
                        period_us: 100_000,
                    }),
                    ..Limits::default()
                },
                "cpu",
            ),
            (
                "pids.max",
                Limits {
                    pids_max: Some(1),
                    ..Limits::default()
                },
                "pids",
            ),
        ];
        for (without, limits, controller) in cases {
            let dir = fixture("cpu memory pids", "c", &[without]);
            let err = V2Cgroup::open(dir.path(), Path::new("c"))
                .apply(limits)
                .unwrap_err();
            assert!(
                matches!(err, CgroupError::MissingController(c) if c == *controller),
                "{err}"
            );
        }
    }

    #[test]
    fn stats_come_from_the_v2_files() {
        let dir = fixture("cpu memory pids", "c", &[]);
        let root = dir.path();
        let cases: &[(&str, &str)] = &[
            ("c/memory.current", "4096000\n"),
            ("c/memory.peak", "67108864\n"),
            (
                "c/memory.events",
                "low 0\nhigh 0\nmax 31\noom 2\noom_kill 2\noom_group_kill 0\n",
            ),
            (
                "c/cpu.stat",
                "usage_usec 81234\nuser_usec 60000\nsystem_usec 21234\nnr_periods 12\n\
                 nr_throttled 5\nthrottled_usec 43210\nnr_bursts 0\nburst_usec 0\n",
            ),
        ];
        for (file, content) in cases {
            fs::write(root.join(file), content).unwrap();
        }
        let stats = V2Cgroup::open(root, Path::new("c")).stats().unwrap();
        assert_eq!(
            stats,
            Stats {
                memory_current_bytes: 4_096_000,
                memory_peak_bytes: 67_108_864,
                oom_kills: 2,
                cpu_usage_usec: 81_234,
                cpu_throttled_usec: 43_210,
                nr_throttled: 5,
            }
        );
    }

    #[test]
    fn limits_read_back_what_apply_wrote_and_max_is_none() {
        let dir = fixture("cpu memory pids", "c", &[]);
        let cgroup = V2Cgroup::open(dir.path(), Path::new("c"));
        assert_eq!(cgroup.limits().unwrap(), Limits::default(), "a new group");
        let limits = Limits {
            memory_bytes: Some(128 << 20),
            cpu: Some(CpuQuota {
                quota_us: 72_000,
                period_us: 100_000,
            }),
            pids_max: Some(64),
        };
        cgroup.apply(&limits).unwrap();
        assert_eq!(cgroup.limits().unwrap(), limits);
        // The root group has no limit files at all.
        let root = V2Cgroup::open(dir.path(), Path::new(""));
        assert_eq!(root.limits().unwrap(), Limits::default());
        fs::write(dir.path().join("c/cpu.max"), "lots\n").unwrap();
        assert!(matches!(cgroup.limits(), Err(CgroupError::Parse { .. })));
    }

    #[test]
    fn reset_peak_reads_back_through_the_written_descriptor() {
        let dir = fixture("cpu memory pids", "c", &[]);
        let peak = dir.path().join("c/memory.peak");
        fs::write(&peak, "67108864\n").unwrap();
        let cgroup = V2Cgroup::open(dir.path(), Path::new("c"));
        cgroup.reset_peak().unwrap();
        assert!(read(dir.path(), "c/memory.peak").starts_with("reset\n"));
        // The kernel now reports the new window's peak through the same descriptor.
        fs::write(&peak, "1048576\n").unwrap();
        assert_eq!(cgroup.stats().unwrap().memory_peak_bytes, 1_048_576);
    }

    #[test]
    fn without_memory_peak_the_peak_is_sampled() {
        let dir = fixture("cpu memory pids", "c", &["memory.peak"]);
        let current = dir.path().join("c/memory.current");
        let cgroup = V2Cgroup::open(dir.path(), Path::new("c"));
        fs::write(&current, "300\n").unwrap();
        assert_eq!(cgroup.stats().unwrap().memory_peak_bytes, 300);

        fs::write(&current, "500\n").unwrap();
        cgroup.reset_peak().unwrap();
        let mut peaks = Vec::new();
        for sample in ["700\n", "200\n"] {
            fs::write(&current, sample).unwrap();
            peaks.push(cgroup.stats().unwrap().memory_peak_bytes);
        }
        assert_eq!(peaks, [700, 700]);

        fs::write(&current, "100\n").unwrap();
        cgroup.reset_peak().unwrap();
        assert_eq!(cgroup.stats().unwrap().memory_peak_bytes, 100);
    }

    #[test]
    fn freeze_and_thaw_write_cgroup_freeze_and_frozen_reads_the_events() {
        let dir = fixture("cpu memory pids", "c", &[]);
        let cgroup = V2Cgroup::open(dir.path(), Path::new("c"));
        assert!(!cgroup.frozen().unwrap(), "a new group runs");
        cgroup.freeze().unwrap();
        assert_eq!(read(dir.path(), "c/cgroup.freeze"), "1");
        // The kernel says `frozen 1` once every process has stopped.
        assert!(
            !cgroup.frozen().unwrap(),
            "not frozen until the kernel says so"
        );
        fs::write(
            dir.path().join("c/cgroup.events"),
            "populated 1\nfrozen 1\n",
        )
        .unwrap();
        assert!(cgroup.frozen().unwrap());
        cgroup.thaw().unwrap();
        assert_eq!(read(dir.path(), "c/cgroup.freeze"), "0");

        // Kernels before 5.2 have no freezer.
        let old = fixture("cpu memory pids", "c", &["cgroup.freeze"]);
        let cgroup = V2Cgroup::open(old.path(), Path::new("c"));
        for result in [cgroup.freeze(), cgroup.thaw()] {
            assert!(
                matches!(result, Err(CgroupError::MissingController("freezer"))),
                "{result:?}"
            );
        }
        assert!(!old.path().join("c/cgroup.freeze").exists());
    }

    #[test]
    fn kill_all_uses_cgroup_kill_when_present() {
        let dir = fixture("cpu memory pids", "c", &[]);
        V2Cgroup::open(dir.path(), Path::new("c"))
            .kill_all()
            .unwrap();
        assert_eq!(read(dir.path(), "c/cgroup.kill"), "1");

        let old = fixture("cpu memory pids", "c", &["cgroup.kill"]);
        V2Cgroup::open(old.path(), Path::new("c"))
            .kill_all()
            .unwrap();
        assert!(!old.path().join("c/cgroup.kill").exists());
    }

    #[test]
    fn cleanup_stale_removes_the_prefix_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("cgroup.controllers"), "cpu memory pids").unwrap();
        fs::create_dir_all(root.join("ember/vm-1/c-1")).unwrap();
        fs::create_dir_all(root.join("ember/vm-2")).unwrap();
        fs::create_dir_all(root.join("system.slice")).unwrap();
        assert!(super::super::cleanup_stale(root, Path::new("ember")).unwrap());
        assert!(!root.join("ember").exists());
        assert!(root.join("system.slice").is_dir());
        assert!(!super::super::cleanup_stale(root, Path::new("ember")).unwrap());
    }
}
