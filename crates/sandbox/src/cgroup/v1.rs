//! cgroup v1: the same relative path under each per-controller hierarchy Ember uses.

use std::path::{Path, PathBuf};

use nix::unistd::Pid;
use tracing::debug;

use super::files::{self, PROCS};
use super::{Cgroup, CgroupError, CpuQuota, Delegation, Limits, Stats};

/// v1 reports "no memory limit" as the largest page-aligned counter (9223372036854771712); any
/// figure this large is no limit.
const MEMORY_UNLIMITED: u64 = 1 << 62;

/// The controllers Ember places a group in. `cpu` and `cpuacct` are often co-mounted, with
/// `root/cpu` and `root/cpuacct` both links to `root/cpu,cpuacct`; each step below tolerates
/// meeting the same directory twice.
pub(super) const CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "freezer"];

/// The freezer's state file: `THAWED`, `FREEZING` or `FROZEN`.
const FREEZER_STATE: &str = "freezer.state";

#[derive(Debug)]
pub(super) struct V1Cgroup {
    root: PathBuf,
    path: PathBuf,
    /// The controllers of [`CONTROLLERS`] mounted when the handle was made: looked up once, not
    /// on every file access (stats are read on every invocation).
    mounted: Vec<&'static str>,
    /// The counter files [`Cgroup::stats`] and [`Cgroup::reset_peak`] use, kept open.
    counters: files::OpenFiles,
}

impl V1Cgroup {
    /// A handle on a group that may or may not exist.
    pub(super) fn open(root: &Path, path: &Path) -> Self {
        let mounted = CONTROLLERS
            .into_iter()
            .filter(|c| root.join(c).join(PROCS).is_file())
            .collect();
        Self {
            root: root.to_path_buf(),
            path: path.to_path_buf(),
            mounted,
            counters: files::OpenFiles::default(),
        }
    }

    pub(super) fn create(root: &Path, path: &Path) -> Result<Self, CgroupError> {
        let cgroup = Self::open(root, path);
        for controller in cgroup.mounted() {
            let mut dir = root.join(controller);
            for component in path {
                dir.push(component);
                files::mkdir(&dir)?;
            }
        }
        debug!(path = %path.display(), "created v1 cgroup");
        Ok(cgroup)
    }

    /// Renames `from` to `to` under every mounted controller (see `Hierarchy::rename`); a
    /// controller whose directory was renamed already (co-mounted, through a link) is skipped.
    pub(super) fn rename(root: &Path, from: &Path, to: &Path) -> Result<Self, CgroupError> {
        let cgroup = Self::open(root, from);
        let mut done: Vec<&str> = Vec::new();
        for controller in cgroup.mounted() {
            let (old, new) = (
                root.join(controller).join(from),
                root.join(controller).join(to),
            );
            if !old.exists() && new.is_dir() {
                continue;
            }
            if let Err(source) = std::fs::rename(&old, &new) {
                for undo in &done {
                    let _ = std::fs::rename(root.join(undo).join(to), root.join(undo).join(from));
                }
                return Err(CgroupError::Rename {
                    from: old,
                    to: new,
                    source,
                });
            }
            done.push(controller);
        }
        debug!(from = %from.display(), to = %to.display(), "renamed v1 cgroup");
        Ok(Self::open(root, to))
    }

    /// The controllers of [`CONTROLLERS`] this host has mounted.
    fn mounted(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.mounted.iter().copied()
    }

    /// How to present this group as a hierarchy of its own: its directory in each mounted
    /// controller, under the controller's name, and the controller links (`cpu -> cpu,cpuacct`)
    /// recreated as they are on the host, each pointing at a bound directory.
    pub(super) fn delegation(&self) -> Result<Vec<Delegation>, CgroupError> {
        let mut binds: Vec<Delegation> = Vec::new();
        let mut links = Vec::new();
        let mut bind = |name: &Path| {
            let target = name.to_path_buf();
            if !binds
                .iter()
                .any(|b| matches!(b, Delegation::Bind { target: t, .. } if *t == target))
            {
                binds.push(Delegation::Bind {
                    source: self.root.join(name).join(&self.path),
                    target,
                });
            }
        };
        for controller in self.mounted() {
            let mount = self.root.join(controller);
            let is_link = std::fs::symlink_metadata(&mount)
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false);
            if !is_link {
                bind(Path::new(controller));
                continue;
            }
            let target = std::fs::read_link(&mount).map_err(|source| CgroupError::Read {
                path: mount.clone(),
                source,
            })?;
            // `cpu,cpuacct` or `/sys/fs/cgroup/cpu,cpuacct`: a sibling of the link either way.
            let Some(name) = target.file_name().map(PathBuf::from) else {
                return Err(CgroupError::Parse {
                    path: mount,
                    content: target.display().to_string(),
                });
            };
            bind(&name);
            links.push(Delegation::Symlink {
                link: PathBuf::from(controller),
                target: name,
            });
        }
        for entry in &binds {
            if let Delegation::Bind { source, .. } = entry {
                if !source.is_dir() {
                    return Err(CgroupError::Read {
                        path: source.clone(),
                        source: std::io::ErrorKind::NotFound.into(),
                    });
                }
            }
        }
        binds.extend(links);
        Ok(binds)
    }

    fn dir(&self, controller: &'static str) -> Result<PathBuf, CgroupError> {
        if self.mounted.contains(&controller) {
            Ok(self.root.join(controller).join(&self.path))
        } else {
            Err(CgroupError::MissingController(controller))
        }
    }

    /// The memory limit with swap off: memory+swap (`memsw`, present when the kernel accounts
    /// swap) equal to memory. The kernel requires memsw >= memory at every step, so memsw goes
    /// first when the limit grows and second when it shrinks.
    fn set_memory(&self, bytes: u64) -> Result<(), CgroupError> {
        let dir = self.dir("memory")?;
        let limit = dir.join("memory.limit_in_bytes");
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        if memsw.is_file() {
            if bytes > files::read_u64(&memsw)? {
                files::write(&memsw, bytes)?;
                files::write(&limit, bytes)?;
            } else {
                files::write(&limit, bytes)?;
                files::write(&memsw, bytes)?;
            }
        } else {
            files::write(&limit, bytes)?;
        }
        files::write(&dir.join("memory.swappiness"), 0)
    }

    /// This group's `freezer.state`.
    fn freezer_state(&self) -> Result<PathBuf, CgroupError> {
        Ok(self.dir("freezer")?.join(FREEZER_STATE))
    }

    /// Thaws the group and every group below it, if the freezer is mounted.
    fn thaw_tree(&self) -> Result<(), CgroupError> {
        match self.dir("freezer") {
            Ok(dir) => files::thaw_tree(&dir),
            Err(_) => Ok(()),
        }
    }
}

impl Cgroup for V1Cgroup {
    fn path(&self) -> &Path {
        &self.path
    }

    fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        if let Some(bytes) = limits.memory_bytes {
            self.set_memory(bytes)?;
        }
        if let Some(cpu) = limits.cpu {
            let dir = self.dir("cpu")?;
            files::write(&dir.join("cpu.cfs_period_us"), cpu.period_us)?;
            files::write(&dir.join("cpu.cfs_quota_us"), cpu.quota_us)?;
        }
        if let Some(max) = limits.pids_max {
            files::write(&self.dir("pids")?.join("pids.max"), max)?;
        }
        debug!(path = %self.path.display(), ?limits, "applied v1 limits");
        Ok(())
    }

    fn limits(&self) -> Result<Limits, CgroupError> {
        let optional = |controller: &'static str, file: &str| match self.dir(controller) {
            Ok(dir) => {
                let path = dir.join(file);
                files::read_optional(&path).map(|c| c.map(|c| (path, c)))
            }
            Err(_) => Ok(None),
        };
        let memory_bytes = match optional("memory", "memory.limit_in_bytes")? {
            Some((path, content)) => files::parse_limit(&path, &content, MEMORY_UNLIMITED)?,
            None => None,
        };
        let cpu = match optional("cpu", "cpu.cfs_quota_us")? {
            // -1: no quota.
            Some((_, quota)) if quota.starts_with('-') => None,
            Some((path, quota)) => {
                let quota_us = files::parse_limit(&path, &quota, u64::MAX)?;
                let period = self.dir("cpu")?.join("cpu.cfs_period_us");
                quota_us
                    .map(|quota_us| {
                        files::read_u64(&period).map(|period_us| CpuQuota {
                            quota_us,
                            period_us,
                        })
                    })
                    .transpose()?
            }
            None => None,
        };
        let pids_max = match optional("pids", "pids.max")? {
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
        for controller in self.mounted() {
            files::write(&self.dir(controller)?.join(PROCS), pid)?;
        }
        Ok(())
    }

    fn procs_files(&self) -> Result<Vec<PathBuf>, CgroupError> {
        self.mounted()
            .map(|controller| Ok(self.dir(controller)?.join(PROCS)))
            .collect()
    }

    fn pids(&self) -> Result<Vec<Pid>, CgroupError> {
        let mut pids = Vec::new();
        for controller in self.mounted() {
            files::procs(&self.dir(controller)?, &mut pids)?;
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    fn stats(&self) -> Result<Stats, CgroupError> {
        let memory = self.dir("memory")?;
        let counters = &self.counters;
        let cpu_stat = counters.read(&self.dir("cpu")?.join("cpu.stat"))?;
        let oom_control = counters.read(&memory.join("memory.oom_control"))?;
        Ok(Stats {
            memory_current_bytes: counters.read_u64(&memory.join("memory.usage_in_bytes"))?,
            memory_peak_bytes: counters.read_u64(&memory.join("memory.max_usage_in_bytes"))?,
            // `oom_kill` appeared in 4.13; older kernels only say `under_oom`.
            oom_kills: files::keyed(&oom_control, "oom_kill").unwrap_or(0),
            cpu_usage_usec: counters.read_u64(&self.dir("cpuacct")?.join("cpuacct.usage"))? / 1000,
            cpu_throttled_usec: files::keyed(&cpu_stat, "throttled_time").unwrap_or(0) / 1000,
            nr_throttled: files::keyed(&cpu_stat, "nr_throttled").unwrap_or(0),
        })
    }

    fn reset_peak(&self) -> Result<(), CgroupError> {
        self.counters
            .write(&self.dir("memory")?.join("memory.max_usage_in_bytes"), 0)
    }

    fn freeze(&self) -> Result<(), CgroupError> {
        self.counters.write(&self.freezer_state()?, "FROZEN")
    }

    fn thaw(&self) -> Result<(), CgroupError> {
        self.counters.write(&self.freezer_state()?, "THAWED")
    }

    fn frozen(&self) -> Result<bool, CgroupError> {
        // The kernel updates the state from FREEZING to FROZEN when it is read.
        Ok(self.counters.read(&self.freezer_state()?)?.trim() == "FROZEN")
    }

    /// SIGKILLs every process in rounds until none is left. The freezer is not used to stop
    /// forks first: a group thrashing at its memory limit can take seconds to freeze, and if
    /// whoever froze it dies before thawing it (a VM's agent killed mid-cleanup), its processes
    /// stay frozen forever, unkillable, and block their PID namespace's teardown. Repeated rounds
    /// catch forks instead (the pids limit bounds them). A group someone left frozen is thawed
    /// first, or the kills would never be delivered.
    fn kill_all(&self) -> Result<(), CgroupError> {
        self.thaw_tree()?;
        files::kill_until_empty(&self.path, || self.pids())
    }

    fn destroy(&self) -> Result<(), CgroupError> {
        self.kill_all()?;
        for controller in self.mounted() {
            files::remove_tree(&self.dir(controller)?)?;
        }
        debug!(path = %self.path.display(), "destroyed v1 cgroup");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::{CpuQuota, Hierarchy};
    use super::*;
    use crate::cgroup::CgroupVersion;

    const UNLIMITED: &str = "9223372036854771712\n";

    /// What the kernel puts in a new v1 group, per controller, trimmed to what Ember touches.
    fn kernel_files(controller: &str, memsw: bool) -> Vec<(&'static str, &'static str)> {
        let mut files = vec![(PROCS, "")];
        match controller {
            "memory" => {
                files.extend([
                    ("memory.limit_in_bytes", UNLIMITED),
                    ("memory.usage_in_bytes", "0\n"),
                    ("memory.max_usage_in_bytes", "0\n"),
                    ("memory.swappiness", "60\n"),
                    (
                        "memory.oom_control",
                        "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
                    ),
                ]);
                if memsw {
                    files.push(("memory.memsw.limit_in_bytes", UNLIMITED));
                }
            }
            "cpu" => files.extend([
                ("cpu.cfs_period_us", "100000\n"),
                ("cpu.cfs_quota_us", "-1\n"),
                (
                    "cpu.stat",
                    "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n",
                ),
            ]),
            "cpuacct" => files.push(("cpuacct.usage", "0\n")),
            "pids" => files.push(("pids.max", "max\n")),
            "freezer" => files.push(("freezer.state", "THAWED\n")),
            _ => {}
        }
        files
    }

    /// A v1 root with `controllers` mounted and the group at `path` already populated, as
    /// mkdir on cgroupfs would leave it.
    fn fixture(controllers: &[&str], path: &str, memsw: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for controller in controllers {
            for base in [
                dir.path().join(controller),
                dir.path().join(controller).join(path),
            ] {
                fs::create_dir_all(&base).unwrap();
                for (name, content) in kernel_files(controller, memsw) {
                    fs::write(base.join(name), content).unwrap();
                }
            }
        }
        dir
    }

    fn read(root: &Path, file: &str) -> String {
        fs::read_to_string(root.join(file)).unwrap()
    }

    #[test]
    fn apply_writes_exactly_these_files() {
        let limits = Limits {
            memory_bytes: Some(64 << 20),
            cpu: Some(CpuQuota {
                quota_us: 50_000,
                period_us: 100_000,
            }),
            pids_max: Some(32),
        };
        // (memsw accounted?, file, value after apply)
        let cases: &[(bool, &str, &str)] = &[
            (true, "memory/ember/vm/memory.limit_in_bytes", "67108864"),
            (
                true,
                "memory/ember/vm/memory.memsw.limit_in_bytes",
                "67108864",
            ),
            (true, "memory/ember/vm/memory.swappiness", "0"),
            (true, "cpu/ember/vm/cpu.cfs_period_us", "100000"),
            (true, "cpu/ember/vm/cpu.cfs_quota_us", "50000"),
            (true, "pids/ember/vm/pids.max", "32"),
            (true, "memory/memory.limit_in_bytes", UNLIMITED),
            (true, "freezer/ember/vm/freezer.state", "THAWED\n"),
            (false, "memory/ember/vm/memory.limit_in_bytes", "67108864"),
            (false, "memory/ember/vm/memory.swappiness", "0"),
        ];
        for &(memsw, file, want) in cases {
            let dir = fixture(&CONTROLLERS, "ember/vm", memsw);
            let hierarchy = Hierarchy::new(dir.path(), CgroupVersion::V1);
            hierarchy
                .create("ember/vm")
                .unwrap()
                .apply(&limits)
                .unwrap();
            assert_eq!(read(dir.path(), file), want, "{file} (memsw: {memsw})");
            let memsw_file = dir
                .path()
                .join("memory/ember/vm/memory.memsw.limit_in_bytes");
            assert_eq!(memsw_file.exists(), memsw, "memsw must never be created");
        }
    }

    #[test]
    fn memory_limit_can_grow_past_the_old_memsw() {
        let dir = fixture(&CONTROLLERS, "c", true);
        let cgroup = V1Cgroup::open(dir.path(), Path::new("c"));
        fs::write(dir.path().join("memory/c/memory.limit_in_bytes"), "1048576").unwrap();
        fs::write(
            dir.path().join("memory/c/memory.memsw.limit_in_bytes"),
            "1048576",
        )
        .unwrap();
        cgroup.set_memory(2 << 20).unwrap();
        for file in ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"] {
            assert_eq!(read(dir.path(), &format!("memory/c/{file}")), "2097152");
        }
    }

    #[test]
    fn none_leaves_files_alone_and_missing_controllers_are_named() {
        let dir = fixture(&["memory", "cpuacct", "freezer"], "c", true);
        let cgroup = Hierarchy::new(dir.path(), CgroupVersion::V1)
            .create("c")
            .unwrap();
        cgroup.apply(&Limits::default()).unwrap();
        assert_eq!(
            read(dir.path(), "memory/c/memory.limit_in_bytes"),
            UNLIMITED
        );

        let pids = Limits {
            pids_max: Some(1),
            ..Limits::default()
        };
        assert!(matches!(
            cgroup.apply(&pids),
            Err(CgroupError::MissingController("pids"))
        ));
    }

    #[test]
    fn create_makes_the_path_under_each_mounted_controller() {
        let dir = tempfile::tempdir().unwrap();
        for controller in ["memory", "cpu", "pids", "blkio"] {
            fs::create_dir(dir.path().join(controller)).unwrap();
            fs::write(dir.path().join(controller).join(PROCS), "").unwrap();
        }
        let hierarchy = Hierarchy::new(dir.path(), CgroupVersion::V1);
        hierarchy.create("ember/vm-1/c-1").unwrap();
        for controller in ["memory", "cpu", "pids"] {
            assert!(dir.path().join(controller).join("ember/vm-1/c-1").is_dir());
        }
        for absent in ["blkio", "cpuacct", "freezer"] {
            assert!(!dir.path().join(absent).join("ember").exists(), "{absent}");
        }
    }

    #[test]
    fn rename_renames_the_group_under_each_mounted_controller_and_undoes_a_half_rename() {
        let dir = tempfile::tempdir().unwrap();
        for controller in ["memory", "cpu", "pids"] {
            fs::create_dir(dir.path().join(controller)).unwrap();
            fs::write(dir.path().join(controller).join(PROCS), "").unwrap();
        }
        let hierarchy = Hierarchy::new(dir.path(), CgroupVersion::V1);
        hierarchy.create("vm/spare-0").unwrap();
        fs::write(dir.path().join("pids/vm/spare-0/pids.max"), "64").unwrap();
        let renamed = hierarchy.rename("vm/spare-0", "vm/c-1").unwrap();
        assert_eq!(renamed.path(), Path::new("vm/c-1"));
        for controller in ["memory", "cpu", "pids"] {
            let parent = dir.path().join(controller).join("vm");
            assert!(parent.join("c-1").is_dir(), "{controller}");
            assert!(!parent.join("spare-0").exists(), "{controller}");
        }
        // What the group held goes with it.
        let pids = fs::read_to_string(dir.path().join("pids/vm/c-1/pids.max")).unwrap();
        assert_eq!(pids, "64");
        // Only within its parent.
        assert!(matches!(
            hierarchy.rename("vm/c-1", "other/c-1"),
            Err(CgroupError::InvalidPath(_))
        ));

        // A name taken in one controller: nothing is renamed.
        hierarchy.create("vm/spare-1").unwrap();
        fs::create_dir(dir.path().join("pids/vm/c-2")).unwrap();
        fs::write(dir.path().join("pids/vm/c-2/taken"), "").unwrap();
        assert!(matches!(
            hierarchy.rename("vm/spare-1", "vm/c-2"),
            Err(CgroupError::Rename { .. })
        ));
        for controller in ["memory", "cpu", "pids"] {
            let parent = dir.path().join(controller).join("vm");
            assert!(parent.join("spare-1").is_dir(), "{controller}");
        }
        assert!(!dir.path().join("memory/vm/c-2").exists());
    }

    #[test]
    fn stats_come_from_the_v1_files() {
        let dir = fixture(&CONTROLLERS, "c", true);
        let root = dir.path();
        let cases: &[(&str, &str)] = &[
            ("memory/c/memory.usage_in_bytes", "5160960\n"),
            ("memory/c/memory.max_usage_in_bytes", "8552448\n"),
            (
                "memory/c/memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            ),
            ("cpuacct/c/cpuacct.usage", "151572789672\n"),
            (
                "cpu/c/cpu.stat",
                "nr_periods 40\nnr_throttled 7\nthrottled_time 350000000\n",
            ),
        ];
        for (file, content) in cases {
            fs::write(root.join(file), content).unwrap();
        }
        let stats = V1Cgroup::open(root, Path::new("c")).stats().unwrap();
        assert_eq!(
            stats,
            Stats {
                memory_current_bytes: 5_160_960,
                memory_peak_bytes: 8_552_448,
                oom_kills: 2,
                cpu_usage_usec: 151_572_789,
                cpu_throttled_usec: 350_000,
                nr_throttled: 7,
            }
        );

        // Kernels before 4.13 have no oom_kill line.
        fs::write(
            root.join("memory/c/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 1\n",
        )
        .unwrap();
        assert_eq!(
            V1Cgroup::open(root, Path::new("c"))
                .stats()
                .unwrap()
                .oom_kills,
            0
        );
    }

    #[test]
    fn limits_read_back_what_apply_wrote_and_unlimited_is_none() {
        let dir = fixture(&CONTROLLERS, "c", true);
        let cgroup = V1Cgroup::open(dir.path(), Path::new("c"));
        assert_eq!(cgroup.limits().unwrap(), Limits::default(), "a new group");
        let limits = Limits {
            memory_bytes: Some(64 << 20),
            cpu: Some(CpuQuota {
                quota_us: 50_000,
                period_us: 100_000,
            }),
            pids_max: Some(32),
        };
        cgroup.apply(&limits).unwrap();
        assert_eq!(cgroup.limits().unwrap(), limits);

        // The root of a hierarchy, as a VM's agent sees its delegated group.
        let root = V1Cgroup::open(dir.path(), Path::new(""));
        assert_eq!(root.limits().unwrap(), Limits::default());
        let missing = fixture(&["memory"], "c", false);
        let only_memory = V1Cgroup::open(missing.path(), Path::new("c"));
        assert_eq!(only_memory.limits().unwrap(), Limits::default());
    }

    #[test]
    fn delegation_binds_each_controller_and_keeps_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // cpu and cpuacct co-mounted behind links, as systemd sets them up.
        for hierarchy in ["memory", "cpu,cpuacct", "pids", "freezer", "blkio"] {
            fs::create_dir_all(root.join(hierarchy).join("ember/vm")).unwrap();
            fs::write(root.join(hierarchy).join(PROCS), "").unwrap();
        }
        std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpu")).unwrap();
        std::os::unix::fs::symlink(root.join("cpu,cpuacct"), root.join("cpuacct")).unwrap();
        let delegation = V1Cgroup::open(root, Path::new("ember/vm"))
            .delegation()
            .unwrap();
        let bind = |name: &str| Delegation::Bind {
            source: root.join(name).join("ember/vm"),
            target: name.into(),
        };
        let link = |name: &str| Delegation::Symlink {
            link: name.into(),
            target: "cpu,cpuacct".into(),
        };
        assert_eq!(
            delegation,
            [
                bind("memory"),
                bind("cpu,cpuacct"),
                bind("pids"),
                // A VM's agent freezes its containers.
                bind("freezer"),
                link("cpu"),
                link("cpuacct"),
            ]
        );

        // The group must exist in every controller.
        let err = V1Cgroup::open(root, Path::new("ember/other")).delegation();
        assert!(matches!(err, Err(CgroupError::Read { .. })), "{err:?}");
    }

    #[test]
    fn reset_peak_writes_zero_to_max_usage() {
        let dir = fixture(&CONTROLLERS, "c", true);
        fs::write(
            dir.path().join("memory/c/memory.max_usage_in_bytes"),
            "8552448\n",
        )
        .unwrap();
        V1Cgroup::open(dir.path(), Path::new("c"))
            .reset_peak()
            .unwrap();
        assert_eq!(read(dir.path(), "memory/c/memory.max_usage_in_bytes"), "0");
    }

    #[test]
    fn pids_are_the_union_over_controllers_and_descendants() {
        let dir = fixture(&CONTROLLERS, "vm", true);
        let root = dir.path();
        fs::write(root.join("memory/vm").join(PROCS), "7\n9\n").unwrap();
        fs::write(root.join("pids/vm").join(PROCS), "9\n7\n").unwrap();
        fs::create_dir(root.join("memory/vm/c")).unwrap();
        fs::write(root.join("memory/vm/c").join(PROCS), "8\n").unwrap();
        let pids = V1Cgroup::open(root, Path::new("vm")).pids().unwrap();
        assert_eq!(pids, [7, 8, 9].map(Pid::from_raw));
    }

    #[test]
    fn add_task_joins_every_mounted_controller() {
        let dir = fixture(&["memory", "cpu", "pids"], "c", true);
        V1Cgroup::open(dir.path(), Path::new("c"))
            .add_task(Pid::from_raw(4242))
            .unwrap();
        for controller in ["memory", "cpu", "pids"] {
            assert_eq!(read(dir.path(), &format!("{controller}/c/{PROCS}")), "4242");
        }
    }

    #[test]
    fn procs_files_are_one_per_mounted_controller() {
        let dir = fixture(&["memory", "cpu", "pids"], "c", true);
        let files = V1Cgroup::open(dir.path(), Path::new("c"))
            .procs_files()
            .unwrap();
        let mut want: Vec<PathBuf> = ["memory", "cpu", "pids"]
            .iter()
            .map(|c| dir.path().join(c).join("c").join(PROCS))
            .collect();
        let mut got = files;
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn freeze_and_thaw_write_the_freezer_state() {
        let dir = fixture(&CONTROLLERS, "c", true);
        let cgroup = V1Cgroup::open(dir.path(), Path::new("c"));
        assert!(!cgroup.frozen().unwrap(), "a new group runs");
        cgroup.freeze().unwrap();
        assert_eq!(read(dir.path(), "freezer/c/freezer.state"), "FROZEN");
        assert!(cgroup.frozen().unwrap());
        // Until every task has stopped, the kernel says FREEZING.
        fs::write(dir.path().join("freezer/c/freezer.state"), "FREEZING\n").unwrap();
        assert!(!cgroup.frozen().unwrap());
        cgroup.thaw().unwrap();
        assert_eq!(read(dir.path(), "freezer/c/freezer.state"), "THAWED");
        assert!(!cgroup.frozen().unwrap());

        let without = fixture(&["memory", "cpu", "cpuacct", "pids"], "c", true);
        let cgroup = V1Cgroup::open(without.path(), Path::new("c"));
        for result in [cgroup.freeze(), cgroup.thaw()] {
            assert!(
                matches!(result, Err(CgroupError::MissingController("freezer"))),
                "{result:?}"
            );
        }
        assert!(matches!(
            cgroup.frozen(),
            Err(CgroupError::MissingController("freezer"))
        ));
    }

    #[test]
    fn kill_all_thaws_a_group_left_frozen() {
        let dir = fixture(&CONTROLLERS, "c", true);
        fs::write(dir.path().join("freezer/c/freezer.state"), "FROZEN\n").unwrap();
        V1Cgroup::open(dir.path(), Path::new("c"))
            .kill_all()
            .unwrap();
        assert_eq!(read(dir.path(), "freezer/c/freezer.state"), "THAWED");
    }

    #[test]
    fn cleanup_stale_removes_only_the_prefix_in_every_controller() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for controller in CONTROLLERS {
            fs::create_dir_all(root.join(controller).join("ember/vm-1/c-1")).unwrap();
            fs::create_dir_all(root.join(controller).join("system.slice")).unwrap();
            fs::write(root.join(controller).join(PROCS), "1\n").unwrap();
        }
        assert!(super::super::cleanup_stale(root, Path::new("ember")).unwrap());
        for controller in CONTROLLERS {
            assert!(
                !root.join(controller).join("ember").exists(),
                "{controller}"
            );
            assert!(root.join(controller).join("system.slice").is_dir());
        }
        assert!(!super::super::cleanup_stale(root, Path::new("ember")).unwrap());
    }
}
