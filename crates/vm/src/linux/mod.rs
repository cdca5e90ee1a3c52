//! The Linux-primitives backend: a VM is a process tree in its own namespaces and cgroup.
//!
//! [`LinuxDriver::boot`] clones the VM's first process into new PID, mount, IPC, UTS and network
//! namespaces (network: `lo` only, up; no route out), puts it in the cgroup `<prefix>/<id>` with
//! the spec's memory (swap off), CPU quota and pids limits, and lets it build its root filesystem
//! (see `child.rs`): a tmpfs holding read-only bind mounts of the host's `/usr` (and `/bin`,
//! `/sbin`, `/lib*`, as directories or as the symlinks they are), an allow-list of `/etc`, a
//! minimal `/dev`, a fresh `/proc`, writable tmpfs `/tmp` and `/run`, the configured
//! [`read_only_binds`](LinuxConfig::read_only_binds) (language runtimes under `/opt/ember`), and
//! the VM's own cgroup at `/sys/fs/cgroup`; then it pivots into it, detaches the old root, makes
//! `/` read-only and execs `ember-agent` as PID 1, with its socket at fd 3.
//!
//! # Cgroup delegation
//!
//! The agent makes one sub-cgroup per container inside the VM's cgroup, so the VM's cgroup is
//! bind-mounted read-write at `/sys/fs/cgroup` in a layout [`Hierarchy::detect`] understands
//! there (see [`Hierarchy::delegation`]): on v2 the VM's directory is the root; on v1 the VM's
//! directory in each controller Ember uses is bound under the controller's name, on a small tmpfs
//! that keeps the host's `cpu -> cpu,cpuacct` links. The agent finds "its" cgroupfs there as a
//! microVM's agent would find a real one, and never learns where the VM sits on the host. On v2
//! the agent runs in a leaf of the VM's group, [`AGENT_CGROUP`], because a v2 group with processes
//! of its own cannot hand controllers to children.
//!
//! Every mount lives in the VM's own mount namespace and dies with it; the host only ever holds
//! an empty directory per VM under the state dir (`<state_dir>/vms/<id>`, the root's mount point).

mod child;

use std::collections::BTreeSet;
use std::ffi::{CString, OsString};
use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ember_net::host::{HostNetwork, VmLink};
use ember_protocol::{Connection, VmNetwork, VM_NETWORK_ENV};
use ember_sandbox::cgroup::{Cgroup, CgroupVersion, CpuQuota, Delegation, Hierarchy, Limits};
pub use ember_sandbox::sched::Policy;
use nix::fcntl::OFlag;
use nix::mount::{umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use crate::{BoxFuture, Vm, VmDriver, VmError, VmInstance, VmSpec};

use child::{Plan, Step};

/// The cgroup every VM of a default driver lives under.
pub const DEFAULT_CGROUP_PREFIX: &str = "ember/vms";

/// How long to wait for a SIGKILLed VM to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Host directories bind-mounted read-only at the same place (or recreated as symlinks when they
/// are symlinks on the host, as `/bin -> usr/bin` is on merged-/usr systems).
const SYSTEM_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// The `/etc` entries a VM sees: what the dynamic loader, libc's name service, TLS and time zones
/// need. Not `shadow`, `gshadow`, `sudoers`, `ssh` or anything else holding secrets.
const ETC_ALLOWED: &[&str] = &[
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "gai.conf",
    "group",
    "host.conf",
    "hosts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "passwd",
    "pki",
    "protocols",
    "services",
    "ssl",
    "timezone",
];

/// On cgroup v2, the leaf of a VM's cgroup that holds the agent (and so every process of the VM
/// that is not in a container).
pub const AGENT_CGROUP: &str = "agent";

/// Where a VM finds its own cgroup.
const VM_CGROUP_DIR: &str = "sys/fs/cgroup";

/// Top-level directories of a VM's root that [`ReadOnlyBind`] targets may not go under: the
/// driver builds them itself.
const RESERVED_TOP: &[&str] = &[
    "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "tmp", "run", "proc", "dev",
    "sys",
];

/// The agent's log filter, in its environment (see [`LinuxConfig::agent_log`]).
pub const AGENT_LOG_ENV: &str = "EMBER_AGENT_LOG";

/// Device nodes bind-mounted from the host's `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// How a [`LinuxDriver`] is set up.
#[derive(Debug, Clone)]
pub struct LinuxConfig {
    /// The `ember-agent` binary on the host.
    pub agent_path: PathBuf,
    /// Where the driver keeps per-VM state (`vms/<id>`). Must not be shared with anything else.
    pub state_dir: PathBuf,
    /// The cgroup hierarchy; `None` finds the host's.
    pub cgroup_root: Option<PathBuf>,
    /// VM cgroups are `<cgroup_prefix>/<id>`, relative to the hierarchy root.
    pub cgroup_prefix: PathBuf,
    /// How long the agent has to say hello.
    pub boot_timeout: Duration,
    /// Host directories (or files) every VM sees read-only (and `nosuid`, `nodev`) at a path of
    /// its own, e.g. language runtimes under `/opt/ember`. A source missing at boot is skipped
    /// with a warning.
    pub read_only_binds: Vec<ReadOnlyBind>,
    /// The scheduling policy of the VM's processes: the agent's, inherited by every container
    /// and function in it. [`Policy::Batch`] by default (see [`ember_sandbox::sched`] for why).
    pub scheduling: Policy,
    /// What the agent logs to its stderr, which is the server's (an `EnvFilter` directive, e.g.
    /// `warn` or `ember_agent=debug`), given to it as `EMBER_AGENT_LOG`; `None`: the agent's
    /// default, warnings and errors.
    pub agent_log: Option<String>,
    /// The host side of the VMs' network: with it, each VM gets a link (`eth0`, configured by
    /// its agent from `EMBER_VM_NETWORK`) and its own `/etc/resolv.conf` and `/etc/hosts`;
    /// without it, VMs have loopback only.
    pub network: Option<Arc<HostNetwork>>,
    /// More variables of the agent's environment, for every VM of this driver (a test acting as
    /// the host's network itself, without [`LinuxConfig::network`], passes `EMBER_VM_NETWORK`
    /// here).
    pub agent_env: Vec<(String, String)>,
    /// Called with a VM's id and first process's pid once its namespaces exist and before the
    /// agent starts (a test acting as the host's network makes the VM's link here); an error
    /// fails the boot.
    pub before_start: Option<BeforeStart>,
    /// The user functions run as (`CreateContainer::uid`/`gid`): named in the VM's own
    /// `/etc/passwd` and `/etc/group` (the host's, plus this entry when the host has none for
    /// its ids), as Lambda names its `sbx_user1051`, so that a runtime asking for its user's
    /// name or home (Node.js's `os.homedir()`, which the AWS SDK for JavaScript calls) gets an
    /// answer. `None`: the host's files as they are.
    pub function_user: Option<FunctionUser>,
}

/// See [`LinuxConfig::function_user`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionUser {
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
}

/// The name and home Lambda gives its function user.
const FUNCTION_USER_NAME: &str = "sbx_user1051";

/// `host` (an `/etc/passwd` or `/etc/group`), with `entry` appended unless a line already has
/// the id `id` in its third field.
fn with_entry(host: &str, id: u32, entry: &str) -> String {
    let has = host
        .lines()
        .any(|line| line.split(':').nth(2) == Some(id.to_string().as_str()));
    let mut out = host.to_owned();
    if !has {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(entry);
        out.push('\n');
    }
    out
}

/// The VM's `/etc/passwd` and `/etc/group` for `user`, from the host's.
fn function_user_files(user: FunctionUser, passwd: &str, group: &str) -> (String, String) {
    let name = FUNCTION_USER_NAME;
    (
        with_entry(
            passwd,
            user.uid,
            &format!(
                "{name}:x:{}:{}::/home/{name}:/sbin/nologin",
                user.uid, user.gid
            ),
        ),
        with_entry(group, user.gid, &format!("{name}:x:{}:", user.gid)),
    )
}

/// See [`LinuxConfig::before_start`]: called with the VM's id and its first process's pid.
pub type BeforeStartFn = dyn Fn(&str, u32) -> std::io::Result<()> + Send + Sync;

/// See [`LinuxConfig::before_start`].
#[derive(Clone)]
pub struct BeforeStart(pub std::sync::Arc<BeforeStartFn>);

impl std::fmt::Debug for BeforeStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeforeStart(..)")
    }
}

/// A host path shown read-only inside every VM; see [`LinuxConfig::read_only_binds`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOnlyBind {
    /// On the host.
    pub source: PathBuf,
    /// Absolute, inside the VM. Not under a directory the driver builds itself (`/usr`, `/etc`,
    /// `/proc`, `/dev`, `/sys`, `/tmp`, `/run`, ...); its missing parents are created.
    pub target: PathBuf,
}

impl ReadOnlyBind {
    /// The target relative to the VM's root, if it is acceptable.
    fn relative_target(&self) -> Result<&Path, VmError> {
        let relative = self
            .target
            .strip_prefix("/")
            .map_err(|_| VmError::InvalidSpec("a read-only bind's target must be absolute"))?;
        let plain = relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        let top = relative.components().next();
        match top {
            None => Err(VmError::InvalidSpec("a read-only bind cannot replace /")),
            Some(_) if !plain => Err(VmError::InvalidSpec(
                "a read-only bind's target must be a plain path (no `.` or `..`)",
            )),
            Some(top) if RESERVED_TOP.iter().any(|r| top.as_os_str() == *r) => {
                Err(VmError::InvalidSpec(
                    "a read-only bind's target may not be under a directory the driver builds \
                     (/usr, /bin, /lib*, /etc, /tmp, /run, /proc, /dev, /sys)",
                ))
            }
            Some(_) => Ok(relative),
        }
    }
}

impl LinuxConfig {
    /// The defaults for a given agent binary (see [`default_agent_path`]): the host's cgroups
    /// under [`DEFAULT_CGROUP_PREFIX`], a 10 s boot timeout.
    pub fn new(state_dir: impl Into<PathBuf>, agent_path: impl Into<PathBuf>) -> Self {
        Self {
            agent_path: agent_path.into(),
            state_dir: state_dir.into(),
            cgroup_root: None,
            cgroup_prefix: DEFAULT_CGROUP_PREFIX.into(),
            boot_timeout: Duration::from_secs(10),
            read_only_binds: Vec::new(),
            scheduling: Policy::Batch,
            agent_log: None,
            network: None,
            agent_env: Vec::new(),
            before_start: None,
            function_user: None,
        }
    }
}

/// `ember-agent` next to the current executable, or one directory up (where Cargo puts binaries
/// relative to test executables in `deps/`).
pub fn default_agent_path() -> Result<PathBuf, VmError> {
    let exe = std::env::current_exe().map_err(|e| VmError::io("cannot find this executable", e))?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let candidates = [
        dir.join("ember-agent"),
        dir.parent().unwrap_or(dir).join("ember-agent"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| VmError::AgentNotFound(candidates[0].clone()))
}

/// What [`LinuxDriver::cleanup_stale`] found and removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Whether a cgroup tree (with whatever ran in it) was under the prefix.
    pub cgroups: bool,
    /// Host mounts under the state dir (there should never be any).
    pub mounts: usize,
    /// Leftover VM directories under the state dir.
    pub dirs: usize,
}

/// Boots VMs from Linux namespaces and cgroups. See the module docs.
#[derive(Debug)]
pub struct LinuxDriver {
    config: LinuxConfig,
    hierarchy: Hierarchy,
}

impl LinuxDriver {
    /// A driver for `config`, ready to boot. Checks what every boot would need, so that a
    /// misconfigured server fails at start rather than at its first invocation: the agent binary
    /// exists ([`VmError::AgentNotFound`]), every read-only bind's target is acceptable
    /// ([`VmError::InvalidSpec`]), a cgroup hierarchy is mounted ([`VmError::Cgroup`]); and it
    /// creates `<state_dir>/vms`, mode 0700. Boots nothing; call
    /// [`LinuxDriver::cleanup_stale`] before the first boot.
    pub fn new(config: LinuxConfig) -> Result<Self, VmError> {
        if !config.agent_path.is_file() {
            return Err(VmError::AgentNotFound(config.agent_path));
        }
        for bind in &config.read_only_binds {
            bind.relative_target()?;
        }
        let hierarchy = match &config.cgroup_root {
            Some(root) => Hierarchy::detect(root)?,
            None => Hierarchy::host()?,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(config.state_dir.join("vms"))
            .map_err(|e| VmError::io("cannot create the VM state dir", e))?;
        Ok(Self { config, hierarchy })
    }

    fn vms_dir(&self) -> PathBuf {
        self.config.state_dir.join("vms")
    }

    /// Removes what VMs of a previous run left: every process and cgroup under the prefix (the
    /// VMs' mounts die with their mount namespaces), any host mount under the state dir (there
    /// should be none) and the VMs' directories. Run it at startup, before booting anything.
    pub fn cleanup_stale(&self) -> Result<CleanupReport, VmError> {
        let mut report = CleanupReport {
            cgroups: self.hierarchy.cleanup_stale(&self.config.cgroup_prefix)?,
            ..CleanupReport::default()
        };
        let vms = self.vms_dir();
        let table = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| VmError::io("cannot read /proc/self/mountinfo", e))?;
        let mut stale: Vec<PathBuf> = mount_points(&table)
            .into_iter()
            .filter(|m| m.starts_with(&vms))
            .collect();
        // Deepest first, so a parent is never unmounted out from under its children.
        stale.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for mount in stale {
            warn!(path = %mount.display(), "unmounting a stale VM mount on the host");
            umount2(&mount, MntFlags::MNT_DETACH).map_err(|source| VmError::Setup {
                stage: format!("unmount {}", mount.display()),
                source,
            })?;
            report.mounts += 1;
        }
        let entries = fs::read_dir(&vms).map_err(|e| VmError::io("cannot list VM dirs", e))?;
        for entry in entries {
            let path = entry
                .map_err(|e| VmError::io("cannot list VM dirs", e))?
                .path();
            // Never recursive: these are empty mount points, and a recursive removal through a
            // mount that should not be there could reach the host's files.
            fs::remove_dir(&path)
                .map_err(|e| VmError::io(format!("cannot remove {}", path.display()), e))?;
            report.dirs += 1;
        }
        if report != CleanupReport::default() {
            info!(?report, "removed what earlier VMs left behind");
        }
        Ok(report)
    }
}

/// What a boot needs from the driver, owned, for the blocking pool.
#[derive(Debug)]
struct Launcher {
    config: LinuxConfig,
    hierarchy: Hierarchy,
}

impl Launcher {
    fn vms_dir(&self) -> PathBuf {
        self.config.state_dir.join("vms")
    }

    /// The blocking part of a boot: state dir, cgroup, clone, wait for exec.
    fn launch(&self, spec: &VmSpec) -> Result<(LinuxVm, UnixStream), VmError> {
        let dir = self.vms_dir().join(&spec.id);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| VmError::io(format!("cannot create {}", dir.display()), e))?;
        let mut vm = LinuxVm {
            id: spec.id.clone(),
            pidfd: None,
            resources: Some(Resources {
                pid: None,
                cgroup: None,
                dir: Some(dir.clone()),
                link: None,
            }),
        };
        let resources = vm.resources.as_mut().ok_or(VmError::Stop("gone".into()))?;

        let cgroup = self
            .hierarchy
            .create(self.config.cgroup_prefix.join(&spec.id))?;
        let cgroup = resources.cgroup.insert(cgroup);
        cgroup.apply(&Limits {
            memory_bytes: Some(spec.memory_mb.saturating_mul(1 << 20)),
            cpu: Some(CpuQuota {
                quota_us: u64::from(spec.vcpus) * 100_000,
                period_us: 100_000,
            }),
            pids_max: Some(spec.pids_max),
        })?;
        let vm_cgroup = self.config.cgroup_prefix.join(&spec.id);
        let delegation = self.hierarchy.delegation(&vm_cgroup)?;
        // v2: a group with processes cannot give controllers to children, so the agent (and
        // every VM process outside containers) lives in a leaf. Created before anything runs.
        let agent_cgroup = match self.hierarchy.version() {
            CgroupVersion::V1 => None,
            CgroupVersion::V2 => Some(self.hierarchy.create(vm_cgroup.join(AGENT_CGROUP))?),
        };

        let io = |what: &str| {
            let what = what.to_owned();
            move |e: std::io::Error| VmError::io(what, e)
        };
        let (host_end, agent_end) =
            UnixStream::pair().map_err(io("cannot create a socket pair"))?;
        let agent_end = child::above_host_fd(agent_end.into()).map_err(io("cannot move a fd"))?;
        let pipe = || {
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| io("cannot create a pipe")(e.into()))
        };
        let (go_read, go_write) = pipe()?;
        let (status_read, status_write) = pipe()?;
        let go_read = child::above_host_fd(go_read).map_err(io("cannot move a fd"))?;
        let status_write = child::above_host_fd(status_write).map_err(io("cannot move a fd"))?;
        let exe: OwnedFd = fs::File::open(&self.config.agent_path)
            .map_err(io("cannot open the agent binary"))?
            .into();
        let exe = child::above_host_fd(exe).map_err(io("cannot move a fd"))?;
        // The VM's address, taken now: the agent's environment and `/etc` name it.
        let lease = match &self.config.network {
            Some(network) => Some(network.lease().map_err(network_error)?),
            None => None,
        };
        let vm_network = lease.as_ref().map(|l| l.vm_network());

        let plan = self.plan(
            spec,
            vm_network.as_ref(),
            &dir,
            &delegation,
            &agent_end,
            &go_read,
            &status_write,
            &exe,
            [
                host_end.as_raw_fd(),
                go_write.as_raw_fd(),
                status_read.as_raw_fd(),
            ],
        )?;
        let pid = child::spawn(&plan)?;
        resources.pid = Some(pid);
        drop((agent_end, go_read, status_write, exe));
        // The link, before the agent starts: its `eth0` is there when it looks.
        if let Some(lease) = lease {
            let pid = u32::try_from(pid.as_raw()).map_err(|_| VmError::Stop("bad pid".into()))?;
            resources.link = Some(lease.attach(pid).map_err(network_error)?);
        }

        vm.pidfd = Some(child::pidfd_open(pid).map_err(io("cannot open a pidfd"))?);
        // The child may only start once it is inside its cgroup.
        match &agent_cgroup {
            Some(leaf) => leaf.add_task(pid)?,
            None => cgroup.add_task(pid)?,
        }
        if let Some(BeforeStart(hook)) = &self.config.before_start {
            hook(&spec.id, pid.as_raw() as u32).map_err(io("the before-start hook failed"))?;
        }
        nix::unistd::write(&go_write, b"g").map_err(|e| io("cannot start the VM")(e.into()))?;
        drop(go_write);

        let mut report = Vec::with_capacity(8);
        fs::File::from(status_read)
            .read_to_end(&mut report)
            .map_err(io("cannot read the VM's setup status"))?;
        if let Ok(report) = <[u8; 8]>::try_from(report.as_slice()) {
            let [s0, s1, s2, s3, e0, e1, e2, e3] = report;
            let stage = u32::from_ne_bytes([s0, s1, s2, s3]);
            let errno = i32::from_ne_bytes([e0, e1, e2, e3]);
            return Err(child::setup_error(&plan, stage, errno));
        } else if !report.is_empty() {
            return Err(VmError::Stop(format!("garbled setup status {report:?}")));
        }
        Ok((vm, host_end))
    }

    /// Computes the child's plan: what to mount where, and how to exec the agent.
    #[allow(clippy::too_many_arguments)]
    fn plan(
        &self,
        spec: &VmSpec,
        network: Option<&VmNetwork>,
        root: &Path,
        delegation: &[Delegation],
        socket: &OwnedFd,
        go: &OwnedFd,
        status: &OwnedFd,
        exe: &OwnedFd,
        close: [i32; 3],
    ) -> Result<Plan, VmError> {
        let mut steps = Vec::new();
        let at = |rel: &str| cstring(root.join(rel));
        let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        let bind_ro =
            |steps: &mut Vec<Step>, source: &Path, target: CString| -> Result<(), VmError> {
                bind_then_remount(steps, cstring(source)?, target, MsFlags::MS_BIND, ro);
                Ok(())
            };
        let tmpfs = |target: CString, flags: MsFlags, data: &str| Step::Mount {
            source: Some(c"tmpfs".into()),
            target,
            fstype: Some(c"tmpfs".into()),
            flags,
            data: CString::new(data).ok(),
        };
        let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;

        steps.push(tmpfs(cstring(root)?, nosuid_nodev, "mode=0755,size=1m"));
        // Host entries reproduced as they are: symlinks as symlinks, directories and files as
        // read-only bind mounts. Missing ones are skipped.
        let mirror = |steps: &mut Vec<Step>, host: &Path, rel: &str| -> Result<(), VmError> {
            let Ok(meta) = fs::symlink_metadata(host) else {
                return Ok(());
            };
            let target = at(rel)?;
            if meta.file_type().is_symlink() {
                let link = fs::read_link(host)
                    .map_err(|e| VmError::io(format!("cannot read {}", host.display()), e))?;
                steps.push(Step::Symlink {
                    target: cstring(link)?,
                    link: target,
                });
            } else if meta.is_dir() {
                steps.push(Step::Mkdir(target.clone()));
                bind_ro(steps, host, target)?;
            } else {
                steps.push(Step::Touch(target.clone()));
                bind_ro(steps, host, target)?;
            }
            Ok(())
        };
        for dir in SYSTEM_DIRS {
            mirror(&mut steps, &Path::new("/").join(dir), dir)?;
        }
        steps.push(Step::Mkdir(at("etc")?));
        let user_files = match self.config.function_user {
            Some(user) => {
                let read = |path: &str| {
                    fs::read_to_string(path)
                        .map_err(|e| VmError::io(format!("cannot read {path}"), e))
                };
                Some(function_user_files(
                    user,
                    &read("/etc/passwd")?,
                    &read("/etc/group")?,
                ))
            }
            None => None,
        };
        for name in ETC_ALLOWED {
            if network.is_some() && *name == "hosts" {
                continue;
            }
            if user_files.is_some() && matches!(*name, "passwd" | "group") {
                continue;
            }
            mirror(
                &mut steps,
                &Path::new("/etc").join(name),
                &format!("etc/{name}"),
            )?;
        }
        // A VM with a network resolves through its gateway and knows no host name but
        // localhost: its own files, on its own root (never the host's /etc).
        if let Some(network) = network {
            steps.push(Step::Write {
                path: at("etc/resolv.conf")?,
                contents: ember_net::host::vm_resolv_conf(network).into_bytes(),
            });
            steps.push(Step::Write {
                path: at("etc/hosts")?,
                contents: ember_net::host::VM_HOSTS.as_bytes().to_vec(),
            });
        }
        if let Some((passwd, group)) = user_files {
            steps.push(Step::Write {
                path: at("etc/passwd")?,
                contents: passwd.into_bytes(),
            });
            steps.push(Step::Write {
                path: at("etc/group")?,
                contents: group.into_bytes(),
            });
        }
        for (dir, data) in [("tmp", "mode=1777"), ("run", "mode=0755")] {
            steps.push(Step::Mkdir(at(dir)?));
            steps.push(tmpfs(at(dir)?, nosuid_nodev, data));
        }
        steps.push(Step::Mkdir(at("proc")?));
        steps.push(Step::Mount {
            source: Some(c"proc".into()),
            target: at("proc")?,
            fstype: Some(c"proc".into()),
            flags: nosuid_nodev | MsFlags::MS_NOEXEC,
            data: None,
        });
        steps.push(Step::Mkdir(at("dev")?));
        steps.push(tmpfs(
            at("dev")?,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            "mode=0755,size=64k",
        ));
        for device in DEVICES {
            let target = at(&format!("dev/{device}"))?;
            steps.push(Step::Touch(target.clone()));
            steps.push(Step::Mount {
                source: Some(cstring(Path::new("/dev").join(device))?),
                target,
                fstype: None,
                flags: MsFlags::MS_BIND,
                data: None,
            });
        }
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            steps.push(Step::Symlink {
                target: cstring(target)?,
                link: at(&format!("dev/{link}"))?,
            });
        }
        steps.push(Step::Mkdir(at("dev/shm")?));
        steps.push(tmpfs(
            at("dev/shm")?,
            nosuid_nodev | MsFlags::MS_NOEXEC,
            "mode=1777",
        ));

        let mut made = BTreeSet::new();
        let mut mkdir_all = |steps: &mut Vec<Step>, rel: &Path| -> Result<(), VmError> {
            let mut dir = PathBuf::new();
            for component in rel.components() {
                dir.push(component);
                if made.insert(dir.clone()) {
                    steps.push(Step::Mkdir(cstring(root.join(&dir))?));
                }
            }
            Ok(())
        };
        self.delegate_cgroup(&mut steps, root, delegation, &mut mkdir_all)?;
        for bind in &self.config.read_only_binds {
            let rel = bind.relative_target()?;
            let Ok(meta) = fs::metadata(&bind.source) else {
                warn!(
                    source = %bind.source.display(),
                    target = %bind.target.display(),
                    "read-only bind source is missing; the VM boots without it"
                );
                continue;
            };
            let target = cstring(root.join(rel))?;
            if meta.is_dir() {
                mkdir_all(&mut steps, rel)?;
            } else {
                if let Some(parent) = rel.parent() {
                    mkdir_all(&mut steps, parent)?;
                }
                steps.push(Step::Touch(target.clone()));
            }
            bind_then_remount(
                &mut steps,
                cstring(&bind.source)?,
                target,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                ro,
            );
        }

        Ok(Plan {
            hostname: cstring(&spec.id)?,
            root: cstring(root)?,
            steps,
            close: close.to_vec(),
            go: go.as_raw_fd(),
            status: status.as_raw_fd(),
            socket: socket.as_raw_fd(),
            exe: exe.as_raw_fd(),
            policy: self.config.scheduling,
            argv: vec![c"ember-agent".into()],
            envp: {
                let mut envp = vec![
                    c"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                    cstring(format!("EMBER_VM_ID={}", spec.id))?,
                ];
                if let Some(filter) = &self.config.agent_log {
                    envp.push(cstring(format!("{AGENT_LOG_ENV}={filter}"))?);
                }
                if let Some(network) = network {
                    let json = serde_json::to_string(network)
                        .map_err(|_| VmError::InvalidSpec("the VM network does not serialize"))?;
                    envp.push(cstring(format!("{VM_NETWORK_ENV}={json}"))?);
                }
                for (key, value) in &self.config.agent_env {
                    envp.push(cstring(format!("{key}={value}"))?);
                }
                envp
            },
        })
    }
}

impl Launcher {
    /// The steps that show the VM its own cgroup at [`VM_CGROUP_DIR`]; see the module docs.
    fn delegate_cgroup(
        &self,
        steps: &mut Vec<Step>,
        root: &Path,
        delegation: &[Delegation],
        mkdir_all: &mut impl FnMut(&mut Vec<Step>, &Path) -> Result<(), VmError>,
    ) -> Result<(), VmError> {
        let base = Path::new(VM_CGROUP_DIR);
        mkdir_all(steps, base)?;
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        // v1: the controllers' directories and links sit on a tmpfs of their own, read-only
        // once they are in place. v2: the one directory is the root itself.
        let holder = delegation.iter().any(
            |d| !matches!(d, Delegation::Bind { target, .. } if target.as_os_str().is_empty()),
        );
        if holder {
            steps.push(Step::Mount {
                source: Some(c"tmpfs".into()),
                target: cstring(root.join(base))?,
                fstype: Some(c"tmpfs".into()),
                flags,
                data: Some(c"mode=0755,size=64k".into()),
            });
        }
        for entry in delegation {
            match entry {
                Delegation::Bind { source, target } => {
                    let at = cstring(root.join(base).join(target))?;
                    if !target.as_os_str().is_empty() {
                        steps.push(Step::Mkdir(at.clone()));
                    }
                    bind_then_remount(steps, cstring(source)?, at, MsFlags::MS_BIND, flags);
                }
                Delegation::Symlink { link, target } => steps.push(Step::Symlink {
                    target: cstring(target)?,
                    link: cstring(root.join(base).join(link))?,
                }),
            }
        }
        if holder {
            steps.push(Step::Mount {
                source: None,
                target: cstring(root.join(base))?,
                fstype: None,
                flags: MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | flags,
                data: None,
            });
        }
        Ok(())
    }
}

impl VmDriver for LinuxDriver {
    fn boot(&self, spec: VmSpec) -> BoxFuture<'_, Result<Vm, VmError>> {
        Box::pin(async move {
            spec.validate()?;
            let launcher = Launcher {
                config: self.config.clone(),
                hierarchy: self.hierarchy.clone(),
            };
            let launch_spec = spec.clone();
            let (mut instance, stream) =
                tokio::task::spawn_blocking(move || launcher.launch(&launch_spec))
                    .await
                    .map_err(|e| VmError::Stop(format!("boot task failed: {e}")))??;
            let handshake = async {
                stream
                    .set_nonblocking(true)
                    .map_err(|e| VmError::io("cannot use the agent socket", e))?;
                let stream = tokio::net::UnixStream::from_std(stream)
                    .map_err(|e| VmError::io("cannot use the agent socket", e))?;
                Connection::handshake(stream)
                    .await
                    .map_err(VmError::Handshake)
            };
            let timeout = self.config.boot_timeout;
            let result = match tokio::time::timeout(timeout, handshake).await {
                Ok(result) => result,
                Err(_) => Err(VmError::BootTimeout(timeout)),
            };
            match result {
                Ok((connection, events)) => {
                    debug!(vm_id = %spec.id, pid = ?instance.host_pid(), "VM booted");
                    Ok(Vm::new(spec.id, connection, events, Box::new(instance)))
                }
                Err(err) => {
                    instance.kill();
                    Err(err)
                }
            }
        })
    }
}

/// What a Linux VM holds on the host, released by [`Resources::release`].
#[derive(Debug)]
struct Resources {
    /// The agent, our child; `None` once reaped (after which its pid may be reused).
    pid: Option<Pid>,
    cgroup: Option<Box<dyn Cgroup>>,
    dir: Option<PathBuf>,
    /// The VM's network link, removed once the VM is gone.
    link: Option<VmLink>,
}

impl Resources {
    /// Kills and reaps the agent (the PID namespace, and with it the mount and network namespaces,
    /// goes with it), removes the cgroup and the state dir. Blocks (briefly) on the kernel.
    ///
    /// The agent's end waits for every process of its PID namespace to go, and on v1 a frozen
    /// process (an idle container) takes no SIGKILL until thawed: the VM's cgroup is thawed and
    /// killed before the agent is reaped.
    fn release(mut self) -> Result<(), VmError> {
        let mut failures = Vec::new();
        if let Some(pid) = self.pid.take() {
            let _ = kill(pid, Signal::SIGKILL);
            if let Some(cgroup) = &self.cgroup {
                if let Err(err) = cgroup.kill_all() {
                    failures.push(format!("killing cgroup {}: {err}", cgroup.path().display()));
                }
            }
            if let Err(err) = waitpid(pid, None) {
                failures.push(format!("reaping pid {pid}: {err}"));
            }
        }
        // After the agent is reaped: the VM's namespace (and with it the VM's end of the link)
        // is gone, and no new flow can start.
        if let Some(link) = self.link.take() {
            if let Err(err) = link.release() {
                failures.push(format!("removing the VM's link: {err}"));
            }
        }
        if let Some(cgroup) = self.cgroup.take() {
            if let Err(err) = cgroup.destroy() {
                failures.push(format!(
                    "removing cgroup {}: {err}",
                    cgroup.path().display()
                ));
            }
        }
        if let Some(dir) = self.dir.take() {
            // Not recursive, on purpose: see `cleanup_stale`.
            if let Err(err) = fs::remove_dir(&dir) {
                failures.push(format!("removing {}: {err}", dir.display()));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(VmError::Stop(failures.join("; ")))
        }
    }
}

/// A VM of the Linux backend.
#[derive(Debug)]
struct LinuxVm {
    id: String,
    /// Readable once the agent (and so every process of the VM) has exited.
    pidfd: Option<OwnedFd>,
    resources: Option<Resources>,
}

impl VmInstance for LinuxVm {
    fn host_pid(&self) -> Option<u32> {
        let pid = self.resources.as_ref()?.pid?;
        u32::try_from(pid.as_raw()).ok()
    }

    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, Result<(), VmError>> {
        Box::pin(async move {
            let Some(resources) = self.resources.take() else {
                return Ok(());
            };
            if let (Some(pid), Some(pidfd)) = (resources.pid, self.pidfd.take()) {
                let exited = child::watch_exit(pidfd)
                    .map_err(|e| VmError::io("cannot watch the agent", e))?;
                if tokio::time::timeout(grace, exited.readable())
                    .await
                    .is_err()
                {
                    warn!(vm_id = %self.id, "VM did not stop in time; killing it");
                    let _ = kill(pid, Signal::SIGKILL);
                    let _ = tokio::time::timeout(KILL_WAIT, exited.readable()).await;
                }
            }
            let result = tokio::task::spawn_blocking(move || resources.release())
                .await
                .map_err(|e| VmError::Stop(format!("teardown task failed: {e}")))?;
            debug!(vm_id = %self.id, "VM stopped");
            result
        })
    }

    fn kill(&mut self) {
        self.pidfd = None;
        if let Some(resources) = self.resources.take() {
            if let Err(err) = resources.release() {
                warn!(vm_id = %self.id, error = %err, "VM teardown incomplete");
            }
        }
    }
}

fn network_error(err: ember_net::host::HostError) -> VmError {
    VmError::Network(ember_stdx::error_chain(&err))
}

/// The mount points of a `/proc/<pid>/mountinfo` table, with its octal escapes undone.
fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(OsString::from_vec(unescape(field))))
        .collect()
}

/// Undoes mountinfo's `\NNN` octal escapes (space, tab, newline, backslash).
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// Bind-mounts `source` at `target` (with `bind`, e.g. `MS_BIND | MS_REC`), then remounts the
/// bind with `remount` (e.g. `MS_RDONLY`): a bind mount takes its flags only on a remount.
fn bind_then_remount(
    steps: &mut Vec<Step>,
    source: CString,
    target: CString,
    bind: MsFlags,
    remount: MsFlags,
) {
    steps.push(Step::Mount {
        source: Some(source),
        target: target.clone(),
        fstype: None,
        flags: bind,
        data: None,
    });
    steps.push(Step::Mount {
        source: None,
        target,
        fstype: None,
        flags: MsFlags::MS_BIND | MsFlags::MS_REMOUNT | remount,
        data: None,
    });
}

fn cstring(value: impl AsRef<std::ffi::OsStr>) -> Result<CString, VmError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(value.as_ref().as_bytes())
        .map_err(|_| VmError::InvalidSpec("a path holds a NUL byte"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_function_user_is_named_once_in_the_vms_passwd_and_group() {
        let user = FunctionUser { uid: 993, gid: 990 };
        let (passwd, group) = function_user_files(
            user,
            "root:x:0:0:root:/root:/bin/bash\n",
            "root:x:0:\nusers:x:100:",
        );
        assert_eq!(
            passwd,
            "root:x:0:0:root:/root:/bin/bash\n\
             sbx_user1051:x:993:990::/home/sbx_user1051:/sbin/nologin\n"
        );
        assert_eq!(group, "root:x:0:\nusers:x:100:\nsbx_user1051:x:990:\n");
        // A host that already has the ids keeps its own entries, unchanged.
        let host = "svc:x:993:990::/var/lib/svc:/usr/sbin/nologin\n";
        let (passwd, _) = function_user_files(user, host, "");
        assert_eq!(passwd, host);
        // A uid that is only some entry's gid is not taken for a user.
        let (passwd, _) = function_user_files(user, "a:x:5:993::/:/bin/sh\n", "");
        assert!(passwd.ends_with("sbx_user1051:x:993:990::/home/sbx_user1051:/sbin/nologin\n"));
    }

    #[test]
    fn reads_mount_points_from_mountinfo() {
        let table = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
35 22 0:30 / /var/lib/ember\\040data/vms/a rw - tmpfs tmpfs rw
36 22 0:31 / /weird\\134name rw - tmpfs tmpfs rw";
        assert_eq!(
            mount_points(table),
            [
                PathBuf::from("/"),
                PathBuf::from("/var/lib/ember data/vms/a"),
                PathBuf::from("/weird\\name"),
            ]
        );
    }

    #[test]
    fn read_only_bind_targets_must_be_plain_and_outside_the_drivers_dirs() {
        let bind = |target: &str| ReadOnlyBind {
            source: "/srv/runtimes".into(),
            target: target.into(),
        };
        let good = [
            ("/opt/ember/runtimes", "opt/ember/runtimes"),
            ("/opt/ember/lang/python3.12", "opt/ember/lang/python3.12"),
            ("/opt", "opt"),
            ("/var/lib/x", "var/lib/x"),
        ];
        for (target, relative) in good {
            assert_eq!(
                bind(target).relative_target().unwrap(),
                Path::new(relative),
                "{target}"
            );
        }
        let bad = [
            "",
            "/",
            "opt/relative",
            "/opt/../etc",
            "/usr/local",
            "/etc/ember",
            "/proc/x",
            "/dev/x",
            "/sys/fs/cgroup",
            "/tmp/x",
            "/run/ember",
            "/lib64/x",
        ];
        for target in bad {
            assert!(
                matches!(bind(target).relative_target(), Err(VmError::InvalidSpec(_))),
                "{target:?} accepted"
            );
        }
    }

    #[test]
    fn unescape_leaves_plain_text_and_short_escapes() {
        assert_eq!(unescape("a\\040b"), b"a b");
        assert_eq!(unescape("trailing\\04"), b"trailing\\04");
        assert_eq!(unescape("x\\999"), b"x\\999");
    }
}
