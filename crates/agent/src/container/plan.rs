//! What a container is made of, decided by the agent and carried out by `container-init`: the
//! mounts of its root, its limits and the process it runs; and what `container-init` reports back.
//!
//! Everything here is pure: the agent computes an [`InitPlan`] from a `CreateContainer` request
//! and what the VM holds (checked under an injected root, so tests use fixture directories), and
//! the init process only walks it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use ember_sandbox::cgroup::{CgroupVersion, CpuQuota, Hierarchy};
use serde::{Deserialize, Serialize};

/// The CFS period used when the VM's group has no quota to take one from.
pub const DEFAULT_CPU_PERIOD_US: u64 = 100_000;
/// The smallest CFS quota the kernel accepts.
pub const MIN_CPU_QUOTA_US: u64 = 1_000;
/// The fewest tasks a container can start with: its init, its reaper and the runtime.
pub const MIN_PIDS: u32 = 3;
/// System directories a container sees read-only, as they are in the VM (directories or links).
pub const SYSTEM_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];
/// Device nodes bound from the VM's `/dev`.
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];
/// Size of the container's `/dev/shm`.
pub const SHM_MB: u32 = 16;
/// Where each container's Runtime API listens, in the container's own network namespace: the
/// same address in every container, as in Lambda (`AWS_LAMBDA_RUNTIME_API=127.0.0.1:9001`).
pub const RUNTIME_API: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9001));
/// The uid and gid of a container's first process (its reaper) once the runtime is forked:
/// `nobody`, never a function's (requests for it are refused), so that a function cannot
/// signal its container's PID 1 (`EPERM`), nor read its `/proc` entries.
pub const INIT_UID: u32 = 65534;
/// See [`INIT_UID`].
pub const INIT_GID: u32 = 65534;
/// Where a container sees its own cgroup, relative to its root.
pub const CGROUP_DIR: &str = "sys/fs/cgroup";
/// The cgroup v1 controllers the kernel knows: a directory of the VM's v1 hierarchy is a
/// controller's mount when its name is a comma-separated list of these (`memory`, `cpu,cpuacct`).
const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// Everything `container-init` needs, sent to it as JSON on its control socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitPlan {
    pub container_id: String,
    /// An empty directory of the VM on which the container's root tmpfs is mounted.
    pub root: PathBuf,
    pub hostname: String,
    /// Built in order under `root`, before the pivot.
    pub mounts: Vec<Mount>,
    pub uid: u32,
    pub gid: u32,
    /// Where the Runtime API listens in the container's own network namespace: `container-init`
    /// binds it there and hands the listening socket to the agent (see [`Report::Started`]).
    pub runtime_api: SocketAddr,
    pub cwd: PathBuf,
    /// The runtime's executable, as seen in the container.
    pub exe: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// What part the container plays in SnapStart (see [`super::snap`]); `None` for an ordinary
    /// container.
    #[serde(default)]
    pub snap: Option<SnapRole>,
}

/// A container's part in SnapStart (see [`super::snap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapRole {
    /// A template: built as any container, but its runtime runs under the seccomp filter with
    /// `setns` allowed ([`ember_sandbox::seccomp::snap_template_filter`]) and gets, as fd 3, the
    /// descriptor sent with the plan (`SCM_RIGHTS`): its fork channel to the agent.
    Template,
    /// A new environment to be forked from a template: its namespaces are owned by a new user
    /// namespace whose owner is `owner` (the function's uid, the template's), and its PID
    /// namespace is a child of the template's (the one of the VM's process `template_pid`).
    Restored { template_pid: i32, owner: u32 },
}

/// What `runtime-template` needs to start a runtime template (see [`super::template`]), sent
/// as [`InitPlan`] is: the mount namespace it lays out under `root` (a container's runtime view,
/// without the function's code), and the interpreter it then executes, as root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplatePlan {
    /// An empty directory of the VM on which the template's root tmpfs is mounted.
    pub root: PathBuf,
    /// Built in order under `root`, before the pivot.
    pub mounts: Vec<Mount>,
    /// The interpreter, as seen in the template's root.
    pub exe: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// What a spare pre-builds before it is claimed (see [`super::spare`], "What a spare
/// pre-builds"), sent to it with the agent's word that it is in its group: the function-blind
/// part of every container's root, which its first process builds, pivots into and detaches
/// the VM's root from ahead of time; the claim's plan then holds only [`function_mounts`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SparePlan {
    /// An empty directory of the VM on which the root tmpfs is mounted (in the spare's own
    /// mount namespace: the same directory serves every spare).
    pub root: PathBuf,
    /// [`system_mounts`], built in order under `root` before the pivot.
    pub mounts: Vec<Mount>,
    /// The directories of the VM that a claim's [`function_mounts`] take their layers from
    /// (the empty directory, the code store, the runtimes and languages): each is kept, across
    /// the pivot, as a detached copy of its mount (`open_tree(OPEN_TREE_CLONE)`), which overlayfs
    /// takes as a layer (Linux 6.15 and later; a spare checks it before its pivot). The first two
    /// are the check's layers.
    pub staged: Vec<PathBuf>,
}

/// Every source a list of mounts takes from the VM: binds' and overlays' layers (the empty one
/// too).
pub fn sources(mounts: &[Mount]) -> Vec<&Path> {
    let mut all = Vec::new();
    for step in mounts {
        match step {
            Mount::BindReadOnly { source, .. } | Mount::Device { source, .. } => {
                all.push(source.as_path())
            }
            Mount::Overlay { source, empty, .. } => {
                all.push(source.as_path());
                all.push(empty.as_path());
            }
            Mount::Layers { sources, empty, .. } => {
                all.extend(sources.iter().map(PathBuf::as_path));
                all.push(empty.as_path());
            }
            Mount::Dir { .. }
            | Mount::Symlink { .. }
            | Mount::Tmpfs { .. }
            | Mount::Proc { .. }
            | Mount::Cgroup2 { .. }
            | Mount::Cgroup { .. }
            | Mount::RemountReadOnly { .. } => {}
        }
    }
    all
}

/// Which of the `staged` directories `source` lies in (the deepest one), and its path below
/// it; `None` when in none. Only whole components match (`/a/bc` is not in `/a/b`), and a path
/// with `..` or `.` components is in none.
pub fn staged_at<'a>(staged: &[PathBuf], source: &'a Path) -> Option<(usize, &'a Path)> {
    use std::path::Component;
    if source
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return None;
    }
    staged
        .iter()
        .enumerate()
        .filter_map(|(i, dir)| source.strip_prefix(dir).ok().map(|rest| (i, dir, rest)))
        .max_by_key(|(_, dir, _)| dir.components().count())
        .map(|(i, _, rest)| (i, rest))
}

/// One step of building a container's root. Every `path` is relative to the root; every
/// `source` is a path of the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mount {
    Dir {
        path: PathBuf,
    },
    Symlink {
        path: PathBuf,
        target: PathBuf,
    },
    /// A recursive bind, then made read-only, `nosuid` and `nodev` (submounts keep their own
    /// flags, which in a VM are read-only too).
    BindReadOnly {
        source: PathBuf,
        path: PathBuf,
    },
    /// An overlayfs of `source` over the empty directory `empty`, read-only, `nosuid` and
    /// `nodev`: a filesystem of its own whose root is `source`. A bind would show, in the
    /// container's `/proc/self/mountinfo`, the path of `source` in the filesystem it is on (for a
    /// directory the VM has from the host: the host's path, such as the server's data dir); an
    /// overlay shows `/` as its root and only `source` and `empty`, paths of the VM, in its
    /// options. (Overlayfs wants two lower layers when it has no upper one: hence `empty`.)
    Overlay {
        source: PathBuf,
        empty: PathBuf,
        path: PathBuf,
    },
    /// A function's layers merged by one overlayfs at `path`, read-only, `nosuid` and `nodev`:
    /// `sources` in the function's order, a later one's files over an earlier one's, on top of
    /// the empty directory `empty` (as for [`Mount::Overlay`]).
    Layers {
        sources: Vec<PathBuf>,
        empty: PathBuf,
        path: PathBuf,
    },
    /// A device node bound onto an empty file.
    Device {
        source: PathBuf,
        path: PathBuf,
    },
    Tmpfs {
        path: PathBuf,
        /// Mount data, e.g. `mode=1777,size=512m`.
        options: String,
        noexec: bool,
    },
    /// A `proc` of the container's PID namespace.
    Proc {
        path: PathBuf,
    },
    /// A cgroup v2 tree, read-only, `nosuid`, `nodev` and `noexec`. Mounted from inside the
    /// container's cgroup namespace, whose root is the container's own group: that group is all
    /// it shows.
    Cgroup2 {
        path: PathBuf,
    },
    /// One cgroup v1 hierarchy, read-only, `nosuid`, `nodev` and `noexec`: the one whose
    /// controllers are exactly `controllers` (`memory`, `cpu,cpuacct`; the kernel refuses any
    /// other set). As for [`Mount::Cgroup2`], its root is the container's own group.
    Cgroup {
        path: PathBuf,
        controllers: String,
    },
    /// Makes the filesystem mounted at `path` read-only (and `nosuid`, `nodev`, `noexec`), once
    /// what it holds is in place. Mounts below it keep their own flags.
    RemountReadOnly {
        path: PathBuf,
    },
}

/// What `container-init` and the container's first process tell the agent, one JSON object per
/// line on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    /// The container's first process exists (`pid` as the VM sees it) and waits for the agent's
    /// go, so that the agent can watch for its exit before it can exit. Sent with one descriptor
    /// (`SCM_RIGHTS`): the Runtime API's listening socket, bound in the container's network
    /// namespace. Nothing else is written on the socket until the agent's go.
    Started { pid: i32 },
    /// Setting up failed at `stage`; nothing of the container runs any more.
    SetupFailed { stage: String, error: String },
    /// The container's root is built and its first process waits to be told how its runtime
    /// starts: forked from a template (`p` and the runtime's pid in the container's PID
    /// namespace, 4 bytes big-endian), or the ordinary way (`x`). Sent after the agent's go was
    /// `t` rather than `g`.
    Built,
    /// The runtime was executed (or forked from a template, and entered the container).
    Running,
    /// The runtime could not be executed: `error` is what failed (`exec /var/task/bootstrap: No
    /// such file or directory`).
    ExecFailed { error: String },
    /// The runtime ended; the container ends with it.
    RuntimeExited {
        code: Option<i32>,
        signal: Option<i32>,
    },
}

/// Where a container's pieces come from in the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The VM's root: `/` in a VM, a fixture directory in tests. The paths below are absolute
    /// paths of the VM, looked up under this root.
    pub vm_root: PathBuf,
    /// Holds one directory per language runtime (`python3.12`), shown at `/var/lang`.
    pub lang_dir: PathBuf,
    /// Holds one directory per Lambda runtime (its `bootstrap`), shown at `/var/runtime`.
    pub runtimes_dir: PathBuf,
    /// An empty directory, the bottom layer of every [`Mount::Overlay`].
    pub empty_dir: PathBuf,
}

impl Layout {
    /// `path` (absolute, in the VM) as the agent reaches it.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.vm_root.join(path.strip_prefix("/").unwrap_or(path))
    }
}

/// The mounts of a container's root, in order: [`system_mounts`], then [`function_mounts`].
/// `code` is the function's extracted code (a VM path); `runtime` a validated runtime name
/// ([`valid_name`]); `cgroup` the container's view of its cgroup ([`cgroup_mounts`]).
///
/// The root is a fresh tmpfs, read-only once built: the VM's system directories (as directories
/// or links), its `/etc`; `/var/task` (the code), `/var/lang` and `/var/runtime` when the VM has
/// them for this runtime, all read-only (the last three as [`Mount::Overlay`]s, so that no host
/// path shows in the container's mount table); `/opt`, read-only, holding exactly the function's
/// `layers` (extracted packages, VM paths, in order: [`Mount::Layers`]), empty without any; a
/// `/tmp` of `tmp_mb` MB; a fresh
/// `/proc`; `cgroup` (its own cgroup at `/sys/fs/cgroup`, the only thing under `/sys`); a minimal
/// `/dev` with a small `/dev/shm`. A `nodejs*` runtime also gets `/var/node_modules` and
/// `/node_modules` links, for ES modules' package resolution.
pub fn mounts(
    layout: &Layout,
    runtime: &str,
    code: &Path,
    layers: &[PathBuf],
    tmp_mb: u32,
    cgroup: &[Mount],
) -> Vec<Mount> {
    let mut mounts = system_mounts(layout, cgroup);
    mounts.extend(function_mounts(layout, runtime, code, layers, tmp_mb));
    mounts
}

/// The part of every container's root that does not depend on its function (see [`mounts`]):
/// the VM's system directories and `/etc`, read-only; `/proc`; `cgroup`; `/dev`. A spare
/// builds it before it is claimed (see [`SparePlan`]).
pub fn system_mounts(layout: &Layout, cgroup: &[Mount]) -> Vec<Mount> {
    let mut mounts = Vec::new();
    let rel = |path: &str| PathBuf::from(path);
    for dir in SYSTEM_DIRS {
        let vm_path = layout.vm_root.join(dir);
        let Ok(meta) = std::fs::symlink_metadata(&vm_path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            if let Ok(target) = std::fs::read_link(&vm_path) {
                mounts.push(Mount::Symlink {
                    path: rel(dir),
                    target,
                });
            }
        } else if meta.is_dir() {
            mounts.push(Mount::Dir { path: rel(dir) });
            mounts.push(Mount::BindReadOnly {
                source: vm_path,
                path: rel(dir),
            });
        }
    }
    mounts.push(Mount::Dir { path: rel("etc") });
    mounts.push(Mount::BindReadOnly {
        source: layout.vm_root.join("etc"),
        path: rel("etc"),
    });
    mounts.push(Mount::Dir { path: rel("proc") });
    mounts.push(Mount::Proc { path: rel("proc") });
    mounts.extend_from_slice(cgroup);
    mounts.push(Mount::Dir { path: rel("dev") });
    mounts.push(Mount::Tmpfs {
        path: rel("dev"),
        options: "mode=0755,size=64k".into(),
        noexec: true,
    });
    for device in DEVICES {
        mounts.push(Mount::Device {
            source: layout.vm_root.join("dev").join(device),
            path: rel("dev").join(device),
        });
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        mounts.push(Mount::Symlink {
            path: rel("dev").join(link),
            target: rel(target),
        });
    }
    mounts.push(Mount::Dir {
        path: rel("dev/shm"),
    });
    mounts.push(Mount::Tmpfs {
        path: rel("dev/shm"),
        options: format!("mode=1777,size={SHM_MB}m"),
        noexec: true,
    });
    mounts
}

/// The part of a container's root that is its function's (see [`mounts`]): `/var/task`,
/// `/var/lang`, `/var/runtime`, the Node.js links, `/opt` and `/tmp`. Its only sources are
/// overlays' lower layers (`code`, `layers`, the runtime's directories, the empty directory).
pub fn function_mounts(
    layout: &Layout,
    runtime: &str,
    code: &Path,
    layers: &[PathBuf],
    tmp_mb: u32,
) -> Vec<Mount> {
    let mut mounts = Vec::new();
    let rel = |path: &str| PathBuf::from(path);
    mounts.push(Mount::Dir { path: rel("var") });
    mounts.push(Mount::Dir {
        path: rel("var/task"),
    });
    let empty = layout.resolve(&layout.empty_dir);
    mounts.push(Mount::Overlay {
        source: code.to_path_buf(),
        empty: empty.clone(),
        path: rel("var/task"),
    });
    for (dir, at) in [
        (&layout.lang_dir, "var/lang"),
        (&layout.runtimes_dir, "var/runtime"),
    ] {
        let source = layout.resolve(dir).join(runtime);
        if source.is_dir() {
            mounts.push(Mount::Dir { path: rel(at) });
            mounts.push(Mount::Overlay {
                source,
                empty: empty.clone(),
                path: rel(at),
            });
        }
    }
    if runtime.starts_with("nodejs") {
        // Node.js: ES modules ignore NODE_PATH and look in the `node_modules` of each directory
        // above the importing file. Links there give `import` what `require` finds through
        // NODE_PATH, in its order: the function's own (/var/task/node_modules), the layers'
        // (/var/node_modules -> /opt/nodejs/node_modules), the runtime's SDK (/node_modules).
        mounts.push(Mount::Symlink {
            path: rel("var/node_modules"),
            target: rel("/opt/nodejs/node_modules"),
        });
        mounts.push(Mount::Symlink {
            path: rel("node_modules"),
            target: rel("/var/runtime/node_modules"),
        });
    }
    mounts.push(Mount::Dir { path: rel("opt") });
    if !layers.is_empty() {
        mounts.push(Mount::Layers {
            sources: layers.to_vec(),
            empty: empty.clone(),
            path: rel("opt"),
        });
    }
    mounts.push(Mount::Dir { path: rel("tmp") });
    mounts.push(Mount::Tmpfs {
        path: rel("tmp"),
        options: format!("mode=1777,size={tmp_mb}m"),
        noexec: false,
    });
    mounts
}

/// How a container sees its own cgroup: read-only at `/sys/fs/cgroup`, as Docker shows it to a
/// container with a private cgroup namespace. `vm` is the VM's own hierarchy (its delegated
/// view, see `ember_vm`'s cgroup delegation; a fixture directory in tests).
///
/// The mounts are cgroupfs mounts made from inside the container's cgroup namespace, unshared
/// once `container-init` was in the container's group: their root is that group, and nothing of
/// the VM's group or of the host is reachable through them.
///
/// - v2: `cgroup2` at `/sys/fs/cgroup`.
/// - v1: a small tmpfs at `/sys/fs/cgroup`, holding one `cgroup` mount per hierarchy the VM
///   has, under the name the VM has it (which names its controllers: `memory`, `pids`,
///   `cpu,cpuacct`), and the VM's links between them (`cpu -> cpu,cpuacct`); the tmpfs is made
///   read-only last. Directories of other names, and links to them, are left out.
///
/// Fails only if the VM's v1 hierarchy cannot be listed.
pub fn cgroup_mounts(vm: &Hierarchy) -> std::io::Result<Vec<Mount>> {
    let base = PathBuf::from(CGROUP_DIR);
    let mut mounts = vec![
        Mount::Dir { path: "sys".into() },
        Mount::Dir {
            path: "sys/fs".into(),
        },
        Mount::Dir { path: base.clone() },
    ];
    if vm.version() == CgroupVersion::V2 {
        mounts.push(Mount::Cgroup2 { path: base });
        return Ok(mounts);
    }
    mounts.push(Mount::Tmpfs {
        path: base.clone(),
        options: "mode=0755,size=64k".into(),
        noexec: true,
    });
    let mut names = Vec::new();
    for entry in std::fs::read_dir(vm.root())? {
        if let Some(name) = entry?.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    let mut links = Vec::new();
    for name in names {
        let vm_path = vm.root().join(&name);
        let Ok(meta) = std::fs::symlink_metadata(&vm_path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            // `cpu,cpuacct` or `/sys/fs/cgroup/cpu,cpuacct`: a sibling of the link either way.
            let target = std::fs::read_link(&vm_path)?;
            let Some(target) = target.file_name().and_then(|t| t.to_str()) else {
                continue;
            };
            if controllers(&name) && controllers(target) && mounted(&vm.root().join(target)) {
                links.push(Mount::Symlink {
                    path: base.join(&name),
                    target: target.into(),
                });
            }
        } else if meta.is_dir() && controllers(&name) && mounted(&vm_path) {
            mounts.push(Mount::Dir {
                path: base.join(&name),
            });
            mounts.push(Mount::Cgroup {
                path: base.join(&name),
                controllers: name,
            });
        }
    }
    mounts.extend(links);
    mounts.push(Mount::RemountReadOnly { path: base });
    Ok(mounts)
}

/// Whether `name` is a comma-separated list of v1 controllers.
fn controllers(name: &str) -> bool {
    name.split(',').all(|c| V1_CONTROLLERS.contains(&c))
}

/// Whether `dir` is a cgroup (of a mounted hierarchy).
fn mounted(dir: &Path) -> bool {
    dir.join("cgroup.procs").is_file()
}

/// The runtime's executable: for OS-only runtimes (`provided*`) the function's own `bootstrap`,
/// in its code (`code`, a VM path) or else, as Lambda allows, in one of its `layers`
/// (`/opt/bootstrap`); for others the runtime's, from `/var/runtime`.
pub fn bootstrap(runtime: &str, code: &Path, layers: &[PathBuf]) -> PathBuf {
    let has = |dir: &Path| std::fs::symlink_metadata(dir.join("bootstrap")).is_ok();
    if runtime.starts_with("provided") {
        if !has(code) && layers.iter().any(|l| has(l)) {
            return PathBuf::from("/opt/bootstrap");
        }
        PathBuf::from("/var/task/bootstrap")
    } else {
        PathBuf::from("/var/runtime/bootstrap")
    }
}

/// The container's CFS quota: `cpu_millis` thousandths of a CPU, in the VM's period, at least
/// the kernel's minimum and at most the VM's own quota (v1 refuses a child above its parent).
pub fn cpu_quota(cpu_millis: u32, vm: Option<CpuQuota>) -> CpuQuota {
    let period_us = vm.map_or(DEFAULT_CPU_PERIOD_US, |q| q.period_us);
    let wanted = (u64::from(cpu_millis) * period_us / 1000).max(MIN_CPU_QUOTA_US);
    let quota_us = match vm {
        Some(vm) => wanted.min(vm.quota_us.max(MIN_CPU_QUOTA_US)),
        None => wanted,
    };
    CpuQuota {
        quota_us,
        period_us,
    }
}

/// The container's memory limit in MB: what the function asked for, but no more than the VM has.
pub fn memory_mb(requested: u32, vm_bytes: Option<u64>) -> u32 {
    match vm_bytes {
        Some(bytes) => {
            let vm_mb = u32::try_from(bytes >> 20).unwrap_or(u32::MAX);
            requested.min(vm_mb)
        }
        None => requested,
    }
}

/// Whether `name` can name a directory: `[A-Za-z0-9._-]`, 1 to 128 bytes, not starting with a dot
/// (container ids, runtime names).
pub fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// A VM root with a merged /usr (links for /bin, /lib, /lib64, /sbin), as on this host.
    fn vm_root(langs: &[&str], runtimes: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["usr/bin", "usr/lib", "usr/lib64", "usr/sbin", "etc", "dev"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for (link, target) in [
            ("bin", "usr/bin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
            ("sbin", "usr/sbin"),
        ] {
            std::os::unix::fs::symlink(target, root.join(link)).unwrap();
        }
        for lang in langs {
            fs::create_dir_all(root.join("opt/ember/lang").join(lang)).unwrap();
        }
        for runtime in runtimes {
            fs::create_dir_all(root.join("opt/ember/runtimes").join(runtime)).unwrap();
        }
        dir
    }

    fn layout(root: &Path) -> Layout {
        Layout {
            vm_root: root.to_path_buf(),
            lang_dir: "/opt/ember/lang".into(),
            runtimes_dir: "/opt/ember/runtimes".into(),
            empty_dir: "/run/ember/empty".into(),
        }
    }

    #[test]
    fn a_provided_runtime_gets_the_system_its_code_and_nothing_else() {
        let dir = vm_root(&["python3.12"], &["python3.12"]);
        let root = dir.path();
        let cgroup = [
            Mount::Dir { path: "sys".into() },
            Mount::Cgroup2 {
                path: "sys/fs/cgroup".into(),
            },
        ];
        let mounts = mounts(
            &layout(root),
            "provided.al2023",
            Path::new("/run/ember/code/abc"),
            &[],
            512,
            &cgroup,
        );
        let link = |path: &str, target: &str| Mount::Symlink {
            path: path.into(),
            target: target.into(),
        };
        let bind = |source: PathBuf, path: &str| Mount::BindReadOnly {
            source,
            path: path.into(),
        };
        let dir_ = |path: &str| Mount::Dir { path: path.into() };
        let expected_head = [
            dir_("usr"),
            bind(root.join("usr"), "usr"),
            link("bin", "usr/bin"),
            link("sbin", "usr/sbin"),
            link("lib", "usr/lib"),
            link("lib64", "usr/lib64"),
            dir_("etc"),
            bind(root.join("etc"), "etc"),
            dir_("proc"),
            Mount::Proc {
                path: "proc".into(),
            },
            // The cgroup view, where it was asked for.
            cgroup[0].clone(),
            cgroup[1].clone(),
            dir_("dev"),
        ];
        assert_eq!(mounts[..expected_head.len()], expected_head);
        // Then the function's part.
        let expected_tail = [
            dir_("var"),
            dir_("var/task"),
            Mount::Overlay {
                source: "/run/ember/code/abc".into(),
                empty: root.join("run/ember/empty"),
                path: "var/task".into(),
            },
            dir_("opt"),
            dir_("tmp"),
            Mount::Tmpfs {
                path: "tmp".into(),
                options: "mode=1777,size=512m".into(),
                noexec: false,
            },
        ];
        assert_eq!(mounts[mounts.len() - expected_tail.len()..], expected_tail);
        let rest = &mounts[expected_head.len()..mounts.len() - expected_tail.len()];
        let devices: Vec<&Path> = rest
            .iter()
            .filter_map(|m| match m {
                Mount::Device { path, source } => {
                    assert_eq!(*source, root.join(path));
                    Some(path.as_path())
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            devices,
            [
                "dev/null",
                "dev/zero",
                "dev/full",
                "dev/random",
                "dev/urandom"
            ]
            .map(Path::new)
        );
        assert!(rest.contains(&link("dev/fd", "/proc/self/fd")));
        assert!(rest.contains(&link("dev/stderr", "/proc/self/fd/2")));
        assert_eq!(
            rest.last(),
            Some(&Mount::Tmpfs {
                path: "dev/shm".into(),
                options: "mode=1777,size=16m".into(),
                noexec: true,
            })
        );
        let lang = |m: &Mount| matches!(m, Mount::Overlay { path, .. } if path.starts_with("var/lang") || path.starts_with("var/runtime"));
        assert!(!mounts.iter().any(lang), "no language for provided");
    }

    #[test]
    fn a_managed_runtime_gets_its_language_and_runtime_when_the_vm_has_them() {
        let cases: &[(&[&str], &[&str], &[&str])] = &[
            (
                &["python3.12"],
                &["python3.12"],
                &["var/lang", "var/runtime"],
            ),
            (&["python3.12"], &[], &["var/lang"]),
            (&[], &["python3.12"], &["var/runtime"]),
            (&["python3.11"], &["nodejs20.x"], &[]),
        ];
        for (langs, runtimes, want) in cases {
            let dir = vm_root(langs, runtimes);
            let mounts = mounts(
                &layout(dir.path()),
                "python3.12",
                Path::new("/code"),
                &[],
                64,
                &[],
            );
            let got: Vec<&Path> = mounts
                .iter()
                .filter_map(|m| match m {
                    Mount::Overlay {
                        path,
                        source,
                        empty,
                    } if path.starts_with("var/") && *path != Path::new("var/task") => {
                        assert!(source.ends_with("python3.12"), "{source:?}");
                        assert_eq!(*empty, dir.path().join("run/ember/empty"));
                        Some(path.as_path())
                    }
                    _ => None,
                })
                .collect();
            let want: Vec<&Path> = want.iter().map(Path::new).collect();
            assert_eq!(got, want, "langs {langs:?}, runtimes {runtimes:?}");
        }
    }

    #[test]
    fn a_node_runtime_links_node_modules_for_es_modules_and_no_other_does() {
        let dir = vm_root(&["nodejs20.x"], &["nodejs20.x"]);
        let links = |runtime: &str| -> Vec<(PathBuf, PathBuf)> {
            mounts(
                &layout(dir.path()),
                runtime,
                Path::new("/code"),
                &[],
                64,
                &[],
            )
            .into_iter()
            .filter_map(|m| match m {
                Mount::Symlink { path, target } if path.ends_with("node_modules") => {
                    Some((path, target))
                }
                _ => None,
            })
            .collect()
        };
        assert_eq!(
            links("nodejs20.x"),
            [
                ("var/node_modules".into(), "/opt/nodejs/node_modules".into()),
                ("node_modules".into(), "/var/runtime/node_modules".into()),
            ]
        );
        assert!(links("python3.12").is_empty());
        assert!(links("provided.al2023").is_empty());
    }

    #[test]
    fn directories_of_the_vm_stay_directories() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("usr")).unwrap();
        fs::create_dir_all(dir.path().join("lib64")).unwrap();
        let mounts = mounts(
            &layout(dir.path()),
            "provided",
            Path::new("/c"),
            &[],
            1,
            &[],
        );
        assert_eq!(
            mounts[..4],
            [
                Mount::Dir { path: "usr".into() },
                Mount::BindReadOnly {
                    source: dir.path().join("usr"),
                    path: "usr".into()
                },
                Mount::Dir {
                    path: "lib64".into()
                },
                Mount::BindReadOnly {
                    source: dir.path().join("lib64"),
                    path: "lib64".into()
                },
            ]
        );
    }

    /// A VM's delegated v1 hierarchy: `dirs` are mounted controllers (each with its
    /// `cgroup.procs`), `plain` directories that are not, `links` symlinks as (name, target).
    fn v1_view(dirs: &[&str], plain: &[&str], links: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in dirs {
            fs::create_dir_all(dir.path().join(name)).unwrap();
            fs::write(dir.path().join(name).join("cgroup.procs"), "").unwrap();
        }
        for name in plain {
            fs::create_dir_all(dir.path().join(name)).unwrap();
        }
        for (link, target) in links {
            std::os::unix::fs::symlink(target, dir.path().join(link)).unwrap();
        }
        dir
    }

    fn base_dirs() -> Vec<Mount> {
        ["sys", "sys/fs", "sys/fs/cgroup"]
            .map(|path| Mount::Dir { path: path.into() })
            .to_vec()
    }

    fn holder() -> Mount {
        Mount::Tmpfs {
            path: "sys/fs/cgroup".into(),
            options: "mode=0755,size=64k".into(),
            noexec: true,
        }
    }

    fn controller(name: &str) -> [Mount; 2] {
        let path = Path::new(CGROUP_DIR).join(name);
        [
            Mount::Dir { path: path.clone() },
            Mount::Cgroup {
                path,
                controllers: name.into(),
            },
        ]
    }

    fn cgroup_link(name: &str, target: &str) -> Mount {
        Mount::Symlink {
            path: Path::new(CGROUP_DIR).join(name),
            target: target.into(),
        }
    }

    fn read_only() -> Mount {
        Mount::RemountReadOnly {
            path: "sys/fs/cgroup".into(),
        }
    }

    #[test]
    fn on_v2_the_container_mounts_cgroup2() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        let hierarchy = Hierarchy::new(dir.path(), CgroupVersion::V2);
        let mut want = base_dirs();
        want.push(Mount::Cgroup2 {
            path: "sys/fs/cgroup".into(),
        });
        assert_eq!(cgroup_mounts(&hierarchy).unwrap(), want);
    }

    #[test]
    fn on_v1_each_controller_of_the_vm_is_mounted_under_its_name() {
        // As the VM sees this host: cpu and cpuacct mounted apart.
        let dir = v1_view(&["cpu", "cpuacct", "freezer", "memory", "pids"], &[], &[]);
        let hierarchy = Hierarchy::new(dir.path(), CgroupVersion::V1);
        let mut want = base_dirs();
        want.push(holder());
        for name in ["cpu", "cpuacct", "freezer", "memory", "pids"] {
            want.extend(controller(name));
        }
        want.push(read_only());
        assert_eq!(cgroup_mounts(&hierarchy).unwrap(), want);
    }

    #[test]
    fn on_v1_co_mounted_controllers_keep_their_links() {
        for target in ["cpu,cpuacct", "/sys/fs/cgroup/cpu,cpuacct"] {
            let dir = v1_view(
                &["cpu,cpuacct", "memory", "pids"],
                &[],
                &[("cpu", target), ("cpuacct", target)],
            );
            let hierarchy = Hierarchy::new(dir.path(), CgroupVersion::V1);
            let mut want = base_dirs();
            want.push(holder());
            for name in ["cpu,cpuacct", "memory", "pids"] {
                want.extend(controller(name));
            }
            want.push(cgroup_link("cpu", "cpu,cpuacct"));
            want.push(cgroup_link("cpuacct", "cpu,cpuacct"));
            want.push(read_only());
            assert_eq!(
                cgroup_mounts(&hierarchy).unwrap(),
                want,
                "links to {target}"
            );
        }
    }

    #[test]
    fn on_v1_only_mounted_controllers_are_shown() {
        let dir = v1_view(
            &["memory", "systemd", "unified", "name=systemd"],
            &["pids", "empty"],
            &[("cpu", "cpu,cpuacct"), ("mem", "memory"), ("x", "systemd")],
        );
        fs::write(dir.path().join("cgroup.procs"), "").unwrap();
        let hierarchy = Hierarchy::new(dir.path(), CgroupVersion::V1);
        let mut want = base_dirs();
        want.push(holder());
        want.extend(controller("memory"));
        want.push(read_only());
        assert_eq!(cgroup_mounts(&hierarchy).unwrap(), want);
    }

    #[test]
    fn an_unreadable_v1_hierarchy_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let hierarchy = Hierarchy::new(dir.path().join("gone"), CgroupVersion::V1);
        assert!(cgroup_mounts(&hierarchy).is_err());
    }

    #[test]
    fn the_cgroup_view_comes_after_proc_and_before_dev() {
        let dir = vm_root(&[], &[]);
        let view = v1_view(
            &["memory", "cpu,cpuacct", "pids"],
            &[],
            &[("cpu", "cpu,cpuacct")],
        );
        let cgroup = cgroup_mounts(&Hierarchy::new(view.path(), CgroupVersion::V1)).unwrap();
        let mounts = mounts(
            &layout(dir.path()),
            "provided",
            Path::new("/c"),
            &[],
            1,
            &cgroup,
        );
        let proc = mounts
            .iter()
            .position(|m| matches!(m, Mount::Proc { .. }))
            .unwrap();
        assert_eq!(mounts[proc + 1..proc + 1 + cgroup.len()], cgroup[..]);
        assert_eq!(
            mounts[proc + 1 + cgroup.len()],
            Mount::Dir { path: "dev".into() }
        );
        // Nothing else goes under /sys.
        let under_sys = mounts.iter().filter(|m| match m {
            Mount::Dir { path }
            | Mount::Symlink { path, .. }
            | Mount::Tmpfs { path, .. }
            | Mount::Cgroup { path, .. }
            | Mount::RemountReadOnly { path } => path.starts_with("sys"),
            _ => false,
        });
        assert_eq!(under_sys.count(), cgroup.len());
        // Every cgroupfs mount is under the holder, which is made read-only after them.
        let holder_at = mounts.iter().position(|m| *m == holder()).unwrap();
        let read_only_at = mounts.iter().position(|m| *m == read_only()).unwrap();
        for (i, m) in mounts.iter().enumerate() {
            if let Mount::Cgroup { path, controllers } = m {
                assert!(holder_at < i && i < read_only_at, "{m:?}");
                assert_eq!(path, &Path::new(CGROUP_DIR).join(controllers));
            }
        }
    }

    #[test]
    fn controller_lists() {
        for good in ["memory", "cpu,cpuacct", "net_cls,net_prio", "pids"] {
            assert!(controllers(good), "{good}");
        }
        for bad in [
            "",
            "unified",
            "systemd",
            "name=systemd",
            "cpu,",
            "memory/x",
            "..",
        ] {
            assert!(!controllers(bad), "{bad}");
        }
    }

    #[test]
    fn bootstraps() {
        let cases = [
            ("provided.al2023", "/var/task/bootstrap"),
            ("provided.al2", "/var/task/bootstrap"),
            ("provided", "/var/task/bootstrap"),
            ("python3.12", "/var/runtime/bootstrap"),
            ("nodejs20.x", "/var/runtime/bootstrap"),
        ];
        for (runtime, want) in cases {
            assert_eq!(
                bootstrap(runtime, Path::new("/nowhere"), &[]),
                Path::new(want),
                "{runtime}"
            );
        }
    }

    #[test]
    fn a_provided_function_may_take_its_bootstrap_from_a_layer() {
        let dir = tempfile::tempdir().unwrap();
        let (code, plain, boot) = (
            dir.path().join("code"),
            dir.path().join("l1"),
            dir.path().join("l2"),
        );
        for d in [&code, &plain, &boot] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(boot.join("bootstrap"), "#!/bin/sh\n").unwrap();
        let layers = [plain.clone(), boot.clone()];
        assert_eq!(
            bootstrap("provided.al2023", &code, &layers),
            Path::new("/opt/bootstrap")
        );
        assert_eq!(
            bootstrap("provided.al2023", &code, &[plain]),
            Path::new("/var/task/bootstrap")
        );
        // The function's own comes first, as in Lambda.
        fs::write(code.join("bootstrap"), "#!/bin/sh\n").unwrap();
        assert_eq!(
            bootstrap("provided.al2023", &code, &layers),
            Path::new("/var/task/bootstrap")
        );
        // A managed runtime's bootstrap is its own, whatever the layers hold.
        assert_eq!(
            bootstrap("python3.12", &code, &layers),
            Path::new("/var/runtime/bootstrap")
        );
    }

    #[test]
    fn opt_is_read_only_and_holds_exactly_the_layers_in_order() {
        let dir = vm_root(&[], &[]);
        let layout = layout(dir.path());
        let at_opt = |mounts: &[Mount]| -> Vec<Mount> {
            mounts
                .iter()
                .filter(|m| match m {
                    Mount::Dir { path } | Mount::Layers { path, .. } => path.starts_with("opt"),
                    Mount::Overlay { path, .. }
                    | Mount::BindReadOnly { path, .. }
                    | Mount::Tmpfs { path, .. } => path.starts_with("opt"),
                    _ => false,
                })
                .cloned()
                .collect()
        };
        // Without layers: an empty directory of the root, which is read-only once built.
        let none = mounts(&layout, "python3.12", Path::new("/c"), &[], 64, &[]);
        assert_eq!(at_opt(&none), [Mount::Dir { path: "opt".into() }]);

        let layers = [
            PathBuf::from("/run/ember/code/aaa"),
            PathBuf::from("/run/ember/code/bbb"),
        ];
        let with = mounts(&layout, "python3.12", Path::new("/c"), &layers, 64, &[]);
        assert_eq!(
            at_opt(&with),
            [
                Mount::Dir { path: "opt".into() },
                Mount::Layers {
                    sources: layers.to_vec(),
                    empty: dir.path().join("run/ember/empty"),
                    path: "opt".into(),
                },
            ],
            "one overlay of exactly the layers, in the function's order"
        );
        // Nothing else is mounted under /opt, and it comes before /tmp like the empty one did.
        let opt = with
            .iter()
            .position(|m| matches!(m, Mount::Layers { .. }))
            .unwrap();
        assert_eq!(with[opt + 1], Mount::Dir { path: "tmp".into() });
    }

    #[test]
    fn cpu_quotas() {
        let vm = |quota_us, period_us| {
            Some(CpuQuota {
                quota_us,
                period_us,
            })
        };
        // (cpu_millis, the VM's quota, quota_us, period_us)
        let cases = [
            (1000, vm(200_000, 100_000), 100_000, 100_000),
            (72, vm(200_000, 100_000), 7_200, 100_000),
            (1769, vm(100_000, 100_000), 100_000, 100_000),
            (3000, vm(200_000, 100_000), 200_000, 100_000),
            (1, vm(100_000, 100_000), 1_000, 100_000),
            (0, vm(100_000, 100_000), 1_000, 100_000),
            (500, vm(50_000, 50_000), 25_000, 50_000),
            (2500, None, 250_000, 100_000),
            (5, vm(500, 100_000), 1_000, 100_000),
        ];
        for (millis, vm, quota_us, period_us) in cases {
            assert_eq!(
                cpu_quota(millis, vm),
                CpuQuota {
                    quota_us,
                    period_us
                },
                "{millis} millis in {vm:?}"
            );
        }
    }

    #[test]
    fn memory_is_capped_at_the_vm() {
        assert_eq!(memory_mb(128, Some(512 << 20)), 128);
        assert_eq!(memory_mb(1024, Some(512 << 20)), 512);
        assert_eq!(memory_mb(1024, Some((512 << 20) + 4095)), 512);
        assert_eq!(memory_mb(1024, None), 1024);
    }

    #[test]
    fn names() {
        for good in [
            "c-1",
            "c-0123456789abcdef",
            "python3.12",
            "provided.al2023",
            "A_b",
        ] {
            assert!(valid_name(good), "{good}");
        }
        let long = "a".repeat(129);
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "../x",
            "a b",
            "é",
            long.as_str(),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn reports_and_plans_are_json_lines() {
        let reports = [
            Report::Started { pid: 42 },
            Report::SetupFailed {
                stage: "mount".into(),
                error: "EPERM".into(),
            },
            Report::Running,
            Report::ExecFailed {
                error: "exec /var/task/bootstrap: ENOENT".into(),
            },
            Report::RuntimeExited {
                code: None,
                signal: Some(9),
            },
        ];
        for report in reports {
            let line = serde_json::to_string(&report).unwrap();
            assert!(!line.contains('\n'));
            assert_eq!(serde_json::from_str::<Report>(&line).unwrap(), report);
        }
    }

    #[test]
    fn a_root_is_its_system_part_then_its_functions_part_and_only_the_latter_depends_on_it() {
        let dir = vm_root(&["python3.12"], &["python3.12"]);
        let layout = layout(dir.path());
        let cgroup = [Mount::Cgroup2 {
            path: "sys/fs/cgroup".into(),
        }];
        let layers = [PathBuf::from("/run/ember/code/l1")];
        let all = mounts(&layout, "python3.12", Path::new("/c"), &layers, 64, &cgroup);
        let system = system_mounts(&layout, &cgroup);
        let function = function_mounts(&layout, "python3.12", Path::new("/c"), &layers, 64);
        assert_eq!(all, [system.clone(), function.clone()].concat());
        // The function's part takes nothing from the VM but overlays' layers, and builds
        // nothing where the system part does.
        for step in &function {
            assert!(
                !matches!(
                    step,
                    Mount::BindReadOnly { .. }
                        | Mount::Device { .. }
                        | Mount::Proc { .. }
                        | Mount::Cgroup { .. }
                        | Mount::Cgroup2 { .. }
                ),
                "{step:?}"
            );
        }
        let top = |m: &Mount| match m {
            Mount::Dir { path }
            | Mount::Symlink { path, .. }
            | Mount::Tmpfs { path, .. }
            | Mount::Overlay { path, .. }
            | Mount::Layers { path, .. } => {
                path.components().next().map(|c| c.as_os_str().to_owned())
            }
            _ => None,
        };
        let system_tops: Vec<_> = system.iter().filter_map(top).collect();
        for step in &function {
            if let Some(t) = top(step) {
                assert!(
                    !system_tops.contains(&t),
                    "{step:?} is under the system part"
                );
            }
        }
        let empty = dir.path().join("run/ember/empty");
        let lang = dir.path().join("opt/ember/lang/python3.12");
        let runtime = dir.path().join("opt/ember/runtimes/python3.12");
        assert_eq!(
            sources(&function),
            [
                Path::new("/c"),
                &empty,
                &lang,
                &empty,
                &runtime,
                &empty,
                Path::new("/run/ember/code/l1"),
                &empty
            ]
        );
    }

    #[test]
    fn a_source_is_staged_in_the_deepest_directory_it_lies_in() {
        let staged = [
            PathBuf::from("/run/ember/empty"),
            PathBuf::from("/run/ember/code"),
            PathBuf::from("/opt/ember/lang"),
            PathBuf::from("/opt/ember/lang/python3.12"),
        ];
        let cases: &[(&str, Option<(usize, &str)>)] = &[
            ("/run/ember/code/abc", Some((1, "abc"))),
            ("/run/ember/code", Some((1, ""))),
            ("/run/ember/empty", Some((0, ""))),
            ("/opt/ember/lang/python3.12", Some((3, ""))),
            ("/opt/ember/lang/python3.12/lib", Some((3, "lib"))),
            ("/opt/ember/lang/nodejs20.x", Some((2, "nodejs20.x"))),
            // Whole components only; nothing outside; no way out.
            ("/run/ember/codex/abc", None),
            ("/run/ember", None),
            ("/etc", None),
            ("/run/ember/code/../../../etc", None),
        ];
        for (source, want) in cases {
            let got = staged_at(&staged, Path::new(source));
            let want = want.map(|(i, rest)| (i, Path::new(rest)));
            assert_eq!(got, want, "{source}");
        }
    }

    #[test]
    fn spare_plans_are_json() {
        let plan = SparePlan {
            root: "/run/ember/spare-root".into(),
            mounts: vec![Mount::Proc {
                path: "proc".into(),
            }],
            staged: vec!["/run/ember/empty".into(), "/run/ember/code".into()],
        };
        let json = serde_json::to_string(&plan).unwrap();
        assert_eq!(serde_json::from_str::<SparePlan>(&json).unwrap(), plan);
    }
}
