//! Control groups: one [`Cgroup`] trait over the v1 and v2 hierarchies, chosen at run time.
//!
//! A [`Hierarchy`] is a root directory (`/sys/fs/cgroup` on a host, a fixture directory in
//! tests) and the version found there. Cgroups are named by paths relative to that root, such as
//! `ember/<vm-id>/<container-id>`: on v1 the same path is created under every controller Ember
//! uses, on v2 it is one directory of the unified tree. A VM's cgroup holds fixed capacity; its
//! containers' cgroups nest inside it and are limited within it.

#![warn(missing_docs)]

mod files;
mod v1;
mod v2;

use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use nix::unistd::Pid;
use tracing::warn;

/// Where the kernel's cgroup hierarchy is mounted on a host.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// How long [`Cgroup::kill_all`] waits for the processes of a group to disappear.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// The cgroup interface a hierarchy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One hierarchy per controller (`root/memory`, `root/cpu`, ...), as on these machines.
    V1,
    /// The unified hierarchy: `root/cgroup.controllers` exists.
    V2,
}

/// Resource limits for one cgroup. `None` leaves the kernel's current value, which is
/// "unlimited" in a new cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Hard memory limit in bytes. Setting it also turns swap off for the group.
    pub memory_bytes: Option<u64>,
    /// CFS bandwidth: the group runs at most `quota_us` in every `period_us`.
    pub cpu: Option<CpuQuota>,
    /// Maximum number of tasks (processes and threads).
    pub pids_max: Option<u64>,
}

/// CPU bandwidth in microseconds of CPU time per period; `quota_us == period_us` is one CPU.
///
/// On v1 a child's quota may not exceed its parent's (the kernel answers `EINVAL`), so container
/// quotas must be capped at the VM's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuQuota {
    /// CPU time, in microseconds, the group may use in each period, summed over its threads:
    /// twice `period_us` is two CPUs. v1 writes it to `cpu.cfs_quota_us`, v2 to `cpu.max`.
    pub quota_us: u64,
    /// Length of the accounting period, in microseconds (the kernel accepts 1 ms to 1 s).
    pub period_us: u64,
}

/// Counters of one cgroup, its descendants included (but see `oom_kills`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Memory charged to the group now, in bytes, page cache included (v1
    /// `memory.usage_in_bytes`, v2 `memory.current`).
    pub memory_current_bytes: u64,
    /// Highest memory use, in bytes, since creation or the last [`Cgroup::reset_peak`] (v1
    /// `memory.max_usage_in_bytes`; v2 `memory.peak`). A v2 kernel older than 5.19 has no
    /// `memory.peak`: the value is then the highest [`Stats::memory_current_bytes`] sampled by
    /// the reads since the reset, a lower bound of the real peak.
    pub memory_peak_bytes: u64,
    /// Processes the OOM killer killed because this group hit its memory limit. v1 counts a kill
    /// only in the group whose limit was hit; v2 counts it in the ancestors too.
    /// Zero on a v1 kernel older than 4.13, which does not count them.
    pub oom_kills: u64,
    /// CPU time used by the group and its descendants since creation, in microseconds (v1
    /// `cpuacct.usage`, kept in nanoseconds and divided here; v2 `cpu.stat` `usage_usec`).
    pub cpu_usage_usec: u64,
    /// Time, in microseconds, the group spent runnable but held back by its [`CpuQuota`] (v1
    /// `cpu.stat` `throttled_time` in nanoseconds, divided; v2 `throttled_usec`). On v2, zero
    /// when the cpu controller is not enabled for the group.
    pub cpu_throttled_usec: u64,
    /// Number of periods in which the group hit its [`CpuQuota`] and was throttled.
    pub nr_throttled: u64,
}

/// One piece of a delegated view of a group: what to mount where so that the group looks like a
/// hierarchy of its own to [`Hierarchy::detect`]. See [`Hierarchy::delegation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delegation {
    /// Bind-mount the directory `source`, read-write, at `target`: relative to the view's root,
    /// empty for the root itself (v2).
    Bind {
        /// Absolute path of the group's directory on the host's hierarchy.
        source: PathBuf,
        /// Where it goes, relative to the view's root.
        target: PathBuf,
    },
    /// A symlink `link` whose content is `target`, both relative to the view's root (v1's
    /// `cpu -> cpu,cpuacct`).
    Symlink {
        /// The link's path, relative to the view's root (a controller's name, `cpu`).
        link: PathBuf,
        /// The link's content: the co-mounted directory's name (`cpu,cpuacct`).
        target: PathBuf,
    },
}

/// One cgroup, whichever the version. Methods that act on processes act on the whole subtree.
pub trait Cgroup: fmt::Debug + Send + Sync {
    /// The path relative to the hierarchy root, e.g. `ember/vm-1/c-1`.
    fn path(&self) -> &Path;
    /// Writes every limit that is `Some`, in the order memory, cpu, pids; the first failure
    /// stops it, leaving the earlier limits written. v1 writes `memory.limit_in_bytes` (and
    /// `memory.memsw.limit_in_bytes` where swap is accounted, and `memory.swappiness` `0`),
    /// `cpu.cfs_period_us` and `cpu.cfs_quota_us`, `pids.max`; v2 writes `memory.max` (and
    /// `memory.swap.max` `0` where it exists), `cpu.max`, `pids.max`. A limit whose controller
    /// is absent is [`CgroupError::MissingController`].
    fn apply(&self, limits: &Limits) -> Result<(), CgroupError>;
    /// Reads the limits in force: `None` where there is none (or the controller is absent).
    fn limits(&self) -> Result<Limits, CgroupError>;
    /// Moves a process (all its threads) into this group: on v1 into the group's directory of
    /// every mounted controller, one write each; on v2 one write to `cgroup.procs`. On v2 the
    /// group must have no child groups with controllers enabled (the no-internal-process rule).
    fn add_task(&self, pid: Pid) -> Result<(), CgroupError>;
    /// The `cgroup.procs` files [`Cgroup::add_task`] writes to: one per mounted controller on
    /// v1, one on v2. A process that writes `0` to each joins the group itself.
    fn procs_files(&self) -> Result<Vec<PathBuf>, CgroupError>;
    /// Every process in this group and its descendants, each once, at the moment of reading
    /// (processes fork and exit meanwhile). On v1 the union over every mounted controller.
    fn pids(&self) -> Result<Vec<Pid>, CgroupError>;
    /// Reads the counters; see [`Stats`].
    fn stats(&self) -> Result<Stats, CgroupError>;
    /// Starts a new peak-memory window, e.g. at the start of an invocation.
    fn reset_peak(&self) -> Result<(), CgroupError>;
    /// Freezes every process of the group (v1: `freezer.state` `FROZEN`; v2: `cgroup.freeze`
    /// `1`). Returns at once: the kernel stops the processes asynchronously, and
    /// [`Cgroup::frozen`] says when all are. One write through a descriptor kept open.
    fn freeze(&self) -> Result<(), CgroupError>;
    /// Lets the group's processes run again (v1: `THAWED`; v2: `0`). One write through a
    /// descriptor kept open, cheap enough for the start of every invocation.
    fn thaw(&self) -> Result<(), CgroupError>;
    /// Whether every process of the group is frozen: v1's `freezer.state` reads `FROZEN` (not
    /// `FREEZING`), v2's `cgroup.events` says `frozen 1`.
    fn frozen(&self) -> Result<bool, CgroupError>;
    /// SIGKILLs every process in the subtree and waits up to [`KILL_TIMEOUT`] for them to go,
    /// frozen ones included (v1 thaws the subtree first: a frozen task takes no signal there).
    fn kill_all(&self) -> Result<(), CgroupError>;
    /// Kills what is left and removes the group and its descendants, deepest first.
    fn destroy(&self) -> Result<(), CgroupError>;
}

/// Why a cgroup operation failed. Paths in it are absolute file-system paths (the hierarchy's
/// root joined with the group's path and, where there is one, the interface file), except
/// [`CgroupError::InvalidPath`]'s and [`CgroupError::StillPopulated`]'s, which are the group's
/// path relative to the root.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Neither a v2 hierarchy nor a v1 controller Ember uses is mounted at this root, or (from
    /// [`Hierarchy::host`]) the mount table names no cgroup mount at all.
    #[error("no cgroup hierarchy at {}", .0.display())]
    NotMounted(PathBuf),
    /// A group path that is absolute, empty, or has `.`/`..` components: refused before any file
    /// is touched, so no group can name a place outside the hierarchy.
    #[error("invalid cgroup path {0:?}: it must be relative and plain")]
    InvalidPath(PathBuf),
    /// The controller is not there for this group: on v1 its hierarchy is not mounted; on v2 it
    /// is not enabled in the parent's `cgroup.subtree_control`, or the kernel is too old for the
    /// file (`cgroup.freeze` needs 5.2). The name is the controller's (`memory`, `freezer`).
    #[error("the {0} controller is not available")]
    MissingController(&'static str),
    /// Making a group's directory failed (permissions, a read-only cgroupfs, a name the kernel
    /// refuses).
    #[error("cannot create {}", .path.display())]
    Create {
        /// The directory that could not be made.
        path: PathBuf,
        /// The `mkdir` error.
        source: io::Error,
    },
    /// Reading an interface file or a directory failed; `NotFound` usually means the group is
    /// gone.
    #[error("cannot read {}", .path.display())]
    Read {
        /// The file or directory that could not be read.
        path: PathBuf,
        /// The read error.
        source: io::Error,
    },
    /// An interface file held something other than the kernel's documented format: a kernel
    /// this code does not know, or a fixture that is wrong.
    #[error("unexpected content in {}: {content:?}", .path.display())]
    Parse {
        /// The file read.
        path: PathBuf,
        /// What it held.
        content: String,
    },
    /// The kernel refused a write: `EINVAL` for a value out of range (on v1, a child's CPU quota
    /// above its parent's), on v1 `EBUSY` for a memory limit below a use the kernel cannot
    /// reclaim (v2 OOM-kills instead), `ESRCH` for a task that died before it could be moved.
    #[error("cannot write {value:?} to {}", .path.display())]
    Write {
        /// The interface file written.
        path: PathBuf,
        /// The value, as written.
        value: String,
        /// The write error.
        source: io::Error,
    },
    /// Renaming a group failed: v2 never renames (the kernel refuses with `EPERM`); on v1 the
    /// new name is taken, or the group is gone.
    #[error("cannot rename {} to {}", .from.display(), .to.display())]
    Rename {
        /// The group's directory, by its old name.
        from: PathBuf,
        /// The new name's directory.
        to: PathBuf,
        /// The `rename` error.
        source: io::Error,
    },
    /// Removing a group's directory failed, usually because it still holds a process
    /// (`EBUSY`).
    #[error("cannot remove {}", .path.display())]
    Remove {
        /// The directory that could not be removed.
        path: PathBuf,
        /// The `rmdir` error.
        source: io::Error,
    },
    /// `kill(2)` failed with something other than `ESRCH` (a process already gone is not an
    /// error): in practice `EPERM`, a process Ember may not signal.
    #[error("cannot kill process {pid}")]
    Kill {
        /// The process signalled.
        pid: Pid,
        /// The `kill` error.
        source: nix::errno::Errno,
    },
    /// [`Cgroup::kill_all`] gave up: processes were still listed in the subtree after
    /// [`KILL_TIMEOUT`] of killing rounds (a task in uninterruptible sleep, or a fork bomb
    /// outrunning the rounds). The group is left in place.
    #[error("{count} processes still in {} after {:?}", .path.display(), KILL_TIMEOUT)]
    StillPopulated {
        /// The group, relative to the hierarchy's root.
        path: PathBuf,
        /// How many processes were still listed.
        count: usize,
    },
}

/// Finds which cgroup version is mounted at `root`.
///
/// v2 when `root/cgroup.controllers` exists; v1 when one of the per-controller hierarchies Ember
/// uses is mounted below `root`. A hybrid host (v1 controllers plus an empty v2 tree at
/// `root/unified`) is v1.
pub fn detect(root: &Path) -> Result<CgroupVersion, CgroupError> {
    if root.join("cgroup.controllers").is_file() {
        Ok(CgroupVersion::V2)
    } else if v1::CONTROLLERS
        .iter()
        .any(|c| root.join(c).join("cgroup.procs").is_file())
    {
        Ok(CgroupVersion::V1)
    } else {
        Err(CgroupError::NotMounted(root.to_path_buf()))
    }
}

/// Finds the cgroup root in a mount table (`/proc/self/mounts`): the directory holding the v1
/// hierarchies when the memory controller is mounted as v1 (hybrid hosts also mount an empty v2
/// tree, which is not the one to use), else the v2 mount point.
pub fn find_root(mounts: &str) -> Option<PathBuf> {
    let mut v2 = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, target, fstype, options, ..] = fields[..] else {
            continue;
        };
        match fstype {
            "cgroup" if options.split(',').any(|o| o == "memory") => {
                return Path::new(target).parent().map(Path::to_path_buf);
            }
            "cgroup2" if v2.is_none() => v2 = Some(PathBuf::from(target)),
            _ => {}
        }
    }
    v2
}

/// Removes the cgroups a crashed Ember left under `root/prefix`, killing their processes first.
/// Returns whether there was anything to remove.
pub fn cleanup_stale(root: &Path, prefix: &Path) -> Result<bool, CgroupError> {
    Hierarchy::detect(root)?.cleanup_stale(prefix)
}

/// A mounted cgroup hierarchy: its root directory and version.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    root: PathBuf,
    version: CgroupVersion,
}

impl Hierarchy {
    /// The hierarchy at `root`, taking the caller's word for its version: nothing is read or
    /// checked (for tests and for a caller that has already run [`detect`]). Prefer
    /// [`Hierarchy::detect`] or [`Hierarchy::host`].
    pub fn new(root: impl Into<PathBuf>, version: CgroupVersion) -> Self {
        Self {
            root: root.into(),
            version,
        }
    }

    /// This host's hierarchy, found from `/proc/self/mounts`.
    pub fn host() -> Result<Self, CgroupError> {
        let mounts = Path::new("/proc/self/mounts");
        let table = std::fs::read_to_string(mounts).map_err(|source| CgroupError::Read {
            path: mounts.to_path_buf(),
            source,
        })?;
        let root = find_root(&table).ok_or_else(|| CgroupError::NotMounted(DEFAULT_ROOT.into()))?;
        Self::detect(root)
    }

    /// The hierarchy at `root`, with its version found by [`detect`].
    pub fn detect(root: impl Into<PathBuf>) -> Result<Self, CgroupError> {
        let root = root.into();
        let version = detect(&root)?;
        Ok(Self { root, version })
    }

    /// The directory the hierarchy is mounted at, as given (on v1, the directory holding one
    /// mount per controller).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The version the hierarchy speaks, which decides every file name and behaviour difference
    /// the [`Cgroup`] methods document.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// Creates the cgroup at `path` and any missing ancestors; an existing one is reused.
    ///
    /// On v2 this enables the memory, cpu and pids controllers in every ancestor's
    /// `cgroup.subtree_control`. The kernel then forbids processes in those ancestors: a VM
    /// cgroup with container cgroups below it keeps its own processes in a leaf of its own.
    pub fn create(&self, path: impl AsRef<Path>) -> Result<Box<dyn Cgroup>, CgroupError> {
        let path = checked(path.as_ref())?;
        Ok(match self.version {
            CgroupVersion::V1 => Box::new(v1::V1Cgroup::create(&self.root, path)?),
            CgroupVersion::V2 => Box::new(v2::V2Cgroup::create(&self.root, path)?),
        })
    }

    /// Renames the group at `from` to `to`, in the same parent, processes and limits included, and
    /// returns a handle on it by its new name. Only v1 can ([`CgroupError::Rename`] on v2): one
    /// `rename(2)` per mounted controller, which moves no process (no RCU wait, unlike
    /// [`Cgroup::add_task`]). A v1 rename that fails half-way is undone.
    pub fn rename(
        &self,
        from: impl AsRef<Path>,
        to: impl AsRef<Path>,
    ) -> Result<Box<dyn Cgroup>, CgroupError> {
        let (from, to) = (checked(from.as_ref())?, checked(to.as_ref())?);
        if from.parent() != to.parent() {
            return Err(CgroupError::InvalidPath(to.to_path_buf()));
        }
        match self.version {
            CgroupVersion::V1 => Ok(Box::new(v1::V1Cgroup::rename(&self.root, from, to)?)),
            CgroupVersion::V2 => Err(CgroupError::Rename {
                from: self.root.join(from),
                to: self.root.join(to),
                source: io::ErrorKind::Unsupported.into(),
            }),
        }
    }

    /// How to show the group at `path` to a VM as a hierarchy of its own, mounted at a root of the
    /// VM's choosing (`/sys/fs/cgroup`): on v2 the group's directory is the root; on v1 the
    /// group's directory of each controller Ember uses is bound under the controller's name, and
    /// co-mounted controllers keep their links. Whoever finds the view (the VM's agent) creates
    /// its own children there, within the group's limits, and needs to know nothing of the host.
    ///
    /// The bind mounts are binds of cgroupfs: the view's owner can write the group's own limits.
    /// Delegate only to a trusted process (the agent), never to a container.
    pub fn delegation(&self, path: impl AsRef<Path>) -> Result<Vec<Delegation>, CgroupError> {
        let path = checked(path.as_ref())?;
        match self.version {
            CgroupVersion::V1 => v1::V1Cgroup::open(&self.root, path).delegation(),
            CgroupVersion::V2 => {
                let source = self.root.join(path);
                if !source.is_dir() {
                    return Err(CgroupError::Read {
                        path: source,
                        source: io::ErrorKind::NotFound.into(),
                    });
                }
                Ok(vec![Delegation::Bind {
                    source,
                    target: PathBuf::new(),
                }])
            }
        }
    }

    /// Keeps freezing and thawing cheap, for a hierarchy whose groups are frozen and thawed
    /// often: on v1, an empty group at `path`, created and frozen; on v2, nothing (`None`).
    ///
    /// The v1 freezer turns a kernel-wide static key on when the first group starts freezing
    /// and off when the last one thaws; each switch patches the kernel's code on every CPU
    /// (about 115 µs on the machine of BENCHMARKS.md, against 10 µs for the write itself). An
    /// empty group that stays frozen keeps the key on, so the others' freezes and thaws never
    /// switch it. Remove the group when done ([`Cgroup::destroy`] thaws it first).
    pub fn freezer_anchor(
        &self,
        path: impl AsRef<Path>,
    ) -> Result<Option<Box<dyn Cgroup>>, CgroupError> {
        if self.version == CgroupVersion::V2 {
            return Ok(None);
        }
        let anchor = self.create(path)?;
        anchor.freeze()?;
        Ok(Some(anchor))
    }

    /// The limits of the hierarchy's root group: none on a host; a VM's own when the hierarchy
    /// is the VM's delegated view of its group (see [`Hierarchy::delegation`]).
    pub fn root_limits(&self) -> Result<Limits, CgroupError> {
        self.root_group().limits()
    }

    /// The counters of the hierarchy's root group (where the kernel keeps them: a v2 host's root
    /// has no memory files), e.g. what a VM's group is charged for.
    pub fn root_stats(&self) -> Result<Stats, CgroupError> {
        self.root_group().stats()
    }

    /// A handle on the root group, for reading only: it is never created, killed or removed.
    fn root_group(&self) -> Box<dyn Cgroup> {
        match self.version {
            CgroupVersion::V1 => Box::new(v1::V1Cgroup::open(&self.root, Path::new(""))),
            CgroupVersion::V2 => Box::new(v2::V2Cgroup::open(&self.root, Path::new(""))),
        }
    }

    /// See [`cleanup_stale`].
    pub fn cleanup_stale(&self, prefix: impl AsRef<Path>) -> Result<bool, CgroupError> {
        let prefix = checked(prefix.as_ref())?;
        let (exists, cgroup): (bool, Box<dyn Cgroup>) = match self.version {
            CgroupVersion::V1 => {
                let exists = v1::CONTROLLERS
                    .iter()
                    .any(|c| self.root.join(c).join(prefix).is_dir());
                (exists, Box::new(v1::V1Cgroup::open(&self.root, prefix)))
            }
            CgroupVersion::V2 => (
                self.root.join(prefix).is_dir(),
                Box::new(v2::V2Cgroup::open(&self.root, prefix)),
            ),
        };
        if !exists {
            return Ok(false);
        }
        let pids = cgroup.pids()?;
        warn!(path = %prefix.display(), processes = pids.len(), "removing stale cgroups");
        cgroup.destroy()?;
        Ok(true)
    }
}

/// Accepts only relative paths made of plain names, so no cgroup can name a place outside the
/// hierarchy.
fn checked(path: &Path) -> Result<&Path, CgroupError> {
    let plain = path.components().all(|c| matches!(c, Component::Normal(_)));
    if plain && path.components().next().is_some() {
        Ok(path)
    } else {
        Err(CgroupError::InvalidPath(path.to_path_buf()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_layout() {
        let cases: &[(&str, &[&str], Option<CgroupVersion>)] = &[
            ("v2", &["cgroup.controllers"], Some(CgroupVersion::V2)),
            (
                "v1",
                &["memory/cgroup.procs", "cpu/cgroup.procs"],
                Some(CgroupVersion::V1),
            ),
            (
                "hybrid",
                &["memory/cgroup.procs", "unified/cgroup.controllers"],
                Some(CgroupVersion::V1),
            ),
            (
                "v1, pids only",
                &["pids/cgroup.procs"],
                Some(CgroupVersion::V1),
            ),
            ("empty", &[], None),
            ("unmounted dirs", &["memory/", "cpu/"], None),
        ];
        for (name, files, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            for file in *files {
                let path = dir.path().join(file);
                if file.ends_with('/') {
                    std::fs::create_dir_all(path).unwrap();
                } else {
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    std::fs::write(path, "").unwrap();
                }
            }
            let got = detect(dir.path());
            match want {
                Some(version) => assert_eq!(got.unwrap(), *version, "{name}"),
                None => assert!(matches!(got, Err(CgroupError::NotMounted(_))), "{name}"),
            }
        }
    }

    #[test]
    fn finds_the_root_in_a_mount_table() {
        let hybrid = "\
            sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
            tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
            cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
            cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
            cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
            cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0";
        let unified = "\
            proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
            cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0";
        let elsewhere =
            "cgroup /cg/memory cgroup rw,memory 0 0\ncgroup /cg/pids cgroup rw,pids 0 0";
        let cases: &[(&str, Option<&str>)] = &[
            (hybrid, Some("/sys/fs/cgroup")),
            (unified, Some("/sys/fs/cgroup")),
            (elsewhere, Some("/cg")),
            ("proc /proc proc rw 0 0\ngarbage\n", None),
            ("", None),
        ];
        for (table, want) in cases {
            assert_eq!(find_root(table).as_deref(), want.map(Path::new), "{table}");
        }
    }

    #[test]
    fn v2_delegation_is_the_group_itself() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        std::fs::create_dir_all(dir.path().join("ember/vm")).unwrap();
        let hierarchy = Hierarchy::detect(dir.path()).unwrap();
        assert_eq!(
            hierarchy.delegation("ember/vm").unwrap(),
            [Delegation::Bind {
                source: dir.path().join("ember/vm"),
                target: PathBuf::new(),
            }]
        );
        assert!(hierarchy.delegation("ember/none").is_err());
        assert!(hierarchy.delegation("../x").is_err());
    }

    #[test]
    fn the_freezer_anchor_is_a_frozen_group_on_v1_only() {
        let v1 = tempfile::tempdir().unwrap();
        for controller in ["memory", "freezer"] {
            std::fs::create_dir_all(v1.path().join(controller).join("vm/anchor")).unwrap();
            std::fs::write(v1.path().join(controller).join("cgroup.procs"), "").unwrap();
        }
        let state = v1.path().join("freezer/vm/anchor/freezer.state");
        std::fs::write(&state, "THAWED\n").unwrap();
        let anchor = Hierarchy::detect(v1.path())
            .unwrap()
            .freezer_anchor("vm/anchor")
            .unwrap()
            .unwrap();
        assert_eq!(anchor.path(), Path::new("vm/anchor"));
        assert_eq!(std::fs::read_to_string(&state).unwrap(), "FROZEN");

        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        let hierarchy = Hierarchy::detect(v2.path()).unwrap();
        assert!(hierarchy.freezer_anchor("anchor").unwrap().is_none());
        assert!(!v2.path().join("anchor").exists());
    }

    #[test]
    fn rejects_paths_that_leave_the_hierarchy() {
        for bad in ["", "/", "/ember", "../ember", "ember/../../etc", "./ember"] {
            assert!(checked(Path::new(bad)).is_err(), "{bad:?}");
        }
        for good in ["ember", "ember/vm-1/c-1"] {
            assert!(checked(Path::new(good)).is_ok(), "{good:?}");
        }
    }
}
