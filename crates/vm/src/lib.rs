//! VM instances, the isolation boundary between accounts: the [`VmDriver`] trait and its backends.
//!
//! A driver boots a [`Vm`] from a [`VmSpec`] and hands back the one thing the rest of Ember may
//! use to reach inside it: the agent's protocol [`Connection`]. Nothing above this crate knows how a
//! VM is made (namespaces and cgroups for [`linux::LinuxDriver`] today; a microVM over vsock
//! later); a backend plugs in by implementing [`VmDriver`] and [`VmInstance`].
//!
//! # Object safety
//!
//! [`VmDriver::boot`] returns a boxed future ([`BoxFuture`]) rather than being an `async fn`, so
//! the trait is object-safe: the fleet holds an `Arc<dyn VmDriver>` and tests can substitute a
//! fake. One allocation per boot is nothing next to the boot itself.
//!
//! # Lifecycle
//!
//! [`Vm::shutdown`] asks the agent to shut down, waits up to [`SHUTDOWN_GRACE`] for the VM to stop,
//! then forces it and releases everything the backend holds. It is idempotent, and a [`Vm`] that
//! is dropped without it is torn down the same way, forcibly and synchronously (best effort).

#![warn(missing_docs)]

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use ember_protocol::{Connection, Event, ProtocolError};
use ember_sandbox::cgroup::CgroupError;
use tokio::sync::mpsc;
use tracing::debug;

pub mod linux;

/// How long [`Vm::shutdown`] waits for the agent to answer and the VM to stop before forcing it.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A future a trait object can return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The fixed capacity of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Unique among running VMs: 1 to 64 characters of `[A-Za-z0-9_-]`.
    pub id: String,
    /// Hard memory limit, swap off.
    pub memory_mb: u64,
    /// CPU bandwidth, in whole CPUs.
    pub vcpus: u32,
    /// Maximum number of processes and threads in the VM, the agent's included.
    pub pids_max: u64,
}

impl VmSpec {
    /// Rejects a spec no backend could honour: an id that is not 1 to 64 characters of
    /// `[A-Za-z0-9_-]` (it names host paths and cgroups), or a zero memory, CPU or pids limit.
    /// Answers [`VmError::InvalidSpec`] with what is wrong. Every backend's
    /// [`VmDriver::boot`] calls it first; nothing is created for a spec it refuses.
    pub fn validate(&self) -> Result<(), VmError> {
        let id_ok = (1..=64).contains(&self.id.len())
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let problem = if !id_ok {
            "the id must be 1 to 64 characters of [A-Za-z0-9_-]"
        } else if self.memory_mb == 0 {
            "memory_mb must be positive"
        } else if self.vcpus == 0 {
            "vcpus must be positive"
        } else if self.pids_max == 0 {
            "pids_max must be positive"
        } else {
            return Ok(());
        };
        Err(VmError::InvalidSpec(problem))
    }
}

/// Boots VMs: the seam between Ember and whatever a VM is made of. **API boundary**: the
/// executor holds an `Arc<dyn VmDriver>` and knows VMs only through it and the [`Vm`] it hands
/// back, so a microVM backend (a VMM whose guest runs `ember-agent` behind vsock) plugs in here
/// without a change above this crate. Implemented by [`linux::LinuxDriver`] and by the
/// executor's test fake; see the crate docs for why `boot` is boxed.
///
/// A driver is shared: `boot` may run for several VMs at once.
pub trait VmDriver: Send + Sync + fmt::Debug {
    /// Boots a VM with `spec`'s fixed capacity, starts `ember-agent` as its first process and
    /// completes the protocol handshake with it: the [`Vm`] returned is ready for requests.
    ///
    /// On error nothing of the VM is left on the host (the backend kills what it started), and
    /// the error says how far the boot got: [`VmError::InvalidSpec`] before anything was made,
    /// [`VmError::Cgroup`], [`VmError::Setup`] or [`VmError::Io`] while building it,
    /// [`VmError::Handshake`] or [`VmError::BootTimeout`] when the agent started but did not
    /// greet in time. Called by the executor when placement decides a new VM is needed.
    fn boot(&self, spec: VmSpec) -> BoxFuture<'_, Result<Vm, VmError>>;
}

/// A backend's handle on one running VM: what it takes to stop it and free its resources. The
/// backend half of a [`Vm`], given to [`Vm::new`]; nothing outside the backend and [`Vm`] calls
/// it. Once [`VmInstance::stop`] or [`VmInstance::kill`] has run, the VM's processes are gone
/// and its host resources (cgroup, state directory; a VMM process and its sockets for a
/// microVM) are released, or the error says which were not.
pub trait VmInstance: Send + Sync + fmt::Debug {
    /// The host process that embodies the VM (the agent for the Linux backend, the VMM for a
    /// microVM), for diagnostics. `None` once it is gone.
    fn host_pid(&self) -> Option<u32>;
    /// Waits up to `grace` for the VM to stop on its own, forces it if it has not, and frees
    /// everything. Idempotent: a second call finds nothing left and succeeds.
    /// [`VmError::Stop`] lists what could not be released (a cgroup still populated, a
    /// directory that would not go); the VM's processes are gone either way.
    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, Result<(), VmError>>;
    /// Forces the VM off and frees everything, synchronously and best effort (for `Drop`).
    /// Idempotent.
    fn kill(&mut self);
}

/// A running VM: its agent connection and its backend handle. **API boundary**: all the
/// executor ever holds of a VM; the [`Connection`] is the only way in.
///
/// Owning a `Vm` means owning the VM: [`Vm::shutdown`] stops it gracefully, and dropping it
/// kills it synchronously (see the crate docs), so a VM never outlives its handle.
#[derive(Debug)]
pub struct Vm {
    id: String,
    connection: Connection,
    events: mpsc::UnboundedReceiver<Event>,
    instance: Box<dyn VmInstance>,
}

impl Vm {
    /// Assembles a VM from a completed handshake; for backends, from [`VmDriver::boot`].
    /// `id` is the [`VmSpec::id`] it was booted with; `connection` and `events` are the two
    /// halves [`Connection::handshake`] returned; `instance` is dropped with the `Vm`, after
    /// its [`VmInstance::kill`].
    pub fn new(
        id: String,
        connection: Connection,
        events: mpsc::UnboundedReceiver<Event>,
        instance: Box<dyn VmInstance>,
    ) -> Self {
        Self {
            id,
            connection,
            events,
            instance,
        }
    }

    /// The [`VmSpec::id`] the VM was booted with: unique among running VMs, and the `vm_id`
    /// of every log line and metric about it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The agent's protocol connection: the only way into the VM.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// The agent's unsolicited events. `recv` answering `None` means the connection is closed:
    /// the agent is gone (or broke the protocol), and the VM should be shut down.
    pub fn events(&mut self) -> &mut mpsc::UnboundedReceiver<Event> {
        &mut self.events
    }

    /// Takes the agent's event stream, leaving an empty one: for an owner that shares the VM
    /// between tasks and watches its events from one of them.
    pub fn take_events(&mut self) -> mpsc::UnboundedReceiver<Event> {
        let (_closed, empty) = mpsc::unbounded_channel();
        std::mem::replace(&mut self.events, empty)
    }

    /// See [`VmInstance::host_pid`].
    pub fn host_pid(&self) -> Option<u32> {
        self.instance.host_pid()
    }

    /// Asks the agent to shut down, waits for the VM to stop, forces what remains and frees
    /// everything (processes, cgroup, mounts, state). Succeeds also when the agent is already gone.
    pub async fn shutdown(mut self) -> Result<(), VmError> {
        match tokio::time::timeout(SHUTDOWN_GRACE, self.connection.shutdown()).await {
            Ok(Ok(())) => debug!(vm_id = %self.id, "agent is shutting down"),
            Ok(Err(err)) => {
                debug!(vm_id = %self.id, error = %err, "agent did not take the shutdown")
            }
            Err(_) => debug!(vm_id = %self.id, "agent did not answer the shutdown in time"),
        }
        self.instance.stop(SHUTDOWN_GRACE).await
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.instance.kill();
    }
}

/// Errors of the VM layer: booting, configuring a driver, stopping. Each is a failure of one
/// VM (or of the driver's setup), never of a request running in it; the executor reports a
/// boot failure as `ExecError::Boot` and the caller's invocation fails with it.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A [`VmSpec`] or driver configuration no backend could honour; the text says which rule
    /// it broke. Nothing was created.
    #[error("invalid VM spec: {0}")]
    InvalidSpec(&'static str),
    /// The `ember-agent` binary is not at the configured path (or, from
    /// [`linux::default_agent_path`], next to this executable), so no VM can boot: fix the
    /// installation.
    #[error("the agent binary {} is missing", .0.display())]
    AgentNotFound(PathBuf),
    /// Creating, limiting, joining or removing the VM's cgroup failed.
    #[error("cgroup of the VM")]
    Cgroup(#[from] CgroupError),
    /// A host file-system or socket operation failed.
    #[error("{what}")]
    Io {
        /// What was being done, e.g. `cannot create the VM state dir`.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed while building the VM: cloning into new namespaces, one of the
    /// VM's first process's setup steps (a mount, the pivot, loopback, the exec of the agent),
    /// or unmounting a stale mount in [`linux::LinuxDriver::cleanup_stale`].
    #[error("setting up the VM failed at: {stage}")]
    Setup {
        /// The step that failed, in words, e.g. `pivoting into the new root`.
        stage: String,
        /// The errno it failed with.
        #[source]
        source: nix::Error,
    },
    /// The agent started but the handshake failed: it speaks a protocol version the host does
    /// not, its first message was not `Hello`, or the socket closed before it (the agent died
    /// at start). The VM was killed.
    #[error("handshake with the VM's agent")]
    Handshake(#[source] ProtocolError),
    /// The agent did not complete the handshake within the driver's boot timeout (the
    /// duration given); the VM was killed.
    #[error("the VM's agent did not say hello within {0:?}")]
    BootTimeout(Duration),
    /// Releasing the VM's host resources failed, or the backend lost track of the VM (a task
    /// that died, a garbled setup report from its first process): the text lists each failure.
    /// After a stop it means something may be left on the host for
    /// [`linux::LinuxDriver::cleanup_stale`] to remove at the next start.
    #[error("the VM could not be stopped: {0}")]
    Stop(String),
    /// The VM's network link could not be made: no free address in the instance's block, or
    /// a netlink request failed (the text says which). Nothing of the VM was left.
    #[error("the VM's network: {0}")]
    Network(String),
}

impl VmError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_specs() {
        let good = VmSpec {
            id: "vm-1_a".into(),
            memory_mb: 128,
            vcpus: 1,
            pids_max: 64,
        };
        assert!(good.validate().is_ok());
        let long = "a".repeat(65);
        let bad: [(&str, VmSpec); 6] = [
            (
                "empty id",
                VmSpec {
                    id: String::new(),
                    ..good.clone()
                },
            ),
            (
                "path id",
                VmSpec {
                    id: "../x".into(),
                    ..good.clone()
                },
            ),
            (
                "long id",
                VmSpec {
                    id: long,
                    ..good.clone()
                },
            ),
            (
                "no memory",
                VmSpec {
                    memory_mb: 0,
                    ..good.clone()
                },
            ),
            (
                "no cpu",
                VmSpec {
                    vcpus: 0,
                    ..good.clone()
                },
            ),
            (
                "no pids",
                VmSpec {
                    pids_max: 0,
                    ..good.clone()
                },
            ),
        ];
        for (name, spec) in bad {
            assert!(
                matches!(spec.validate(), Err(VmError::InvalidSpec(_))),
                "{name}"
            );
        }
    }
}
