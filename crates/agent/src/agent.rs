//! The agent's main loop: the first process of a VM, serving the host's requests over one stream.
//!
//! The host hands the agent its end of the connection as file descriptor [`HOST_FD`] (a unix
//! socket today, a vsock later); the `ember-agent` binary turns it into a stream and calls
//! [`run`]. As PID 1 of the VM the agent also reaps every orphan that the kernel reparents to it.
//!
//! This milestone serves `Stats` and `Shutdown`; container requests are answered with
//! [`Reply::Error`] until the agent learns to make containers.

use std::path::Path;

use futures_util::{SinkExt, StreamExt};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::codec::Framed;
use tracing::{debug, info, warn};

use crate::protocol::{
    agent_handshake, AgentCodec, AgentMessage, AgentStats, HostMessage, ProtocolError, Reply,
    Request,
};
use crate::AGENT_VERSION;

/// The file descriptor on which the agent finds its connection to the host.
pub const HOST_FD: i32 = 3;

/// What [`Reply::Error`] says to a container request while the agent cannot make containers.
pub const CONTAINERS_NOT_IMPLEMENTED: &str =
    "containers are not implemented by this agent yet (ember-agent serves Stats and Shutdown only)";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("handshake with the host failed")]
    Handshake(#[source] ProtocolError),
    #[error("the host connection failed")]
    Connection(#[source] ProtocolError),
    #[error("cannot watch for exited children")]
    Reaper(#[source] std::io::Error),
}

/// Why [`run`] returned without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The host asked the agent to shut down, and was told it would.
    Shutdown,
    /// The host closed the connection: nobody is left to serve.
    HostGone,
}

/// Serves the host on `io` until it asks for a shutdown or goes away.
///
/// When this process is PID 1 (of its PID namespace) it reaps every exited child as it goes, as
/// an init must. Containers started later will be children of the agent too: their exit status
/// will then have to come from this reaper, not from a second `waitpid`.
pub async fn run<T>(io: T) -> Result<Exit, AgentError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    if std::process::id() == 1 {
        let mut children = signal(SignalKind::child()).map_err(AgentError::Reaper)?;
        tokio::spawn(async move {
            loop {
                reap_all();
                if children.recv().await.is_none() {
                    break;
                }
            }
        });
    }

    let mut framed = Framed::new(io, AgentCodec::new());
    let host = agent_handshake(&mut framed, AGENT_VERSION)
        .await
        .map_err(AgentError::Handshake)?;
    info!(host_protocol = %host, "connected to the host");

    while let Some(frame) = framed.next().await {
        let (id, request) = match frame.map_err(AgentError::Connection)? {
            HostMessage::Request { id, request } => (id, request),
            HostMessage::HelloAck { .. } | HostMessage::Refused { .. } => {
                warn!("handshake message after the handshake; ignored");
                continue;
            }
        };
        let shutdown = matches!(request, Request::Shutdown);
        let reply = handle(request);
        framed
            .send(AgentMessage::Reply { id, reply })
            .await
            .map_err(AgentError::Connection)?;
        if shutdown {
            info!("shutting down at the host's request");
            return Ok(Exit::Shutdown);
        }
    }
    info!("the host closed the connection");
    Ok(Exit::HostGone)
}

fn handle(request: Request) -> Reply {
    match request {
        Request::Stats => Reply::Stats(AgentStats {
            containers: 0,
            invocations_in_flight: 0,
            memory_used_mb: resident_mb(Path::new("/proc")),
        }),
        Request::Shutdown => Reply::ShuttingDown,
        Request::CreateContainer(_) | Request::Invoke(_) | Request::DestroyContainer { .. } => {
            Reply::Error {
                message: CONTAINERS_NOT_IMPLEMENTED.to_owned(),
            }
        }
    }
}

/// Resident memory of every process this agent can see under `proc` (in a VM: the VM's own),
/// rounded up to whole MB. Processes that vanish while being read are skipped.
pub fn resident_mb(proc: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(proc) else {
        return 0;
    };
    let kb: u64 = entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter_map(|status| vm_rss_kb(&status))
        .sum();
    kb.div_ceil(1024)
}

/// The `VmRSS` line of a `/proc/<pid>/status`, in kB. Kernel threads have none.
fn vm_rss_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|n| n.trim().parse().ok())
}

/// Collects every child that has exited, without blocking.
fn reap_all() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(status) => debug!(?status, "reaped a child"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tcat\nVmPeak:\t  5000 kB\nVmRSS:\t    1536 kB\nThreads:\t1\n";
        assert_eq!(vm_rss_kb(status), Some(1536));
        assert_eq!(vm_rss_kb("Name:\tkthreadd\nThreads:\t1\n"), None);
        assert_eq!(vm_rss_kb("VmRSS:\tlots kB\n"), None);
    }

    #[test]
    fn sums_resident_memory_of_a_proc_tree() {
        let dir = tempfile::tempdir().unwrap();
        for (pid, rss) in [("1", "VmRSS:\t 1024 kB\n"), ("42", "VmRSS:\t 1 kB\n")] {
            std::fs::create_dir(dir.path().join(pid)).unwrap();
            std::fs::write(dir.path().join(pid).join("status"), rss).unwrap();
        }
        std::fs::create_dir(dir.path().join("self")).unwrap();
        std::fs::write(dir.path().join("self/status"), "VmRSS:\t 9999999 kB\n").unwrap();
        assert_eq!(
            resident_mb(dir.path()),
            2,
            "1025 kB round up to 2 MB; `self` skipped"
        );
    }

    #[test]
    fn container_requests_are_refused_plainly() {
        let reply = handle(Request::DestroyContainer {
            container_id: "c".into(),
        });
        assert_eq!(
            reply,
            Reply::Error {
                message: CONTAINERS_NOT_IMPLEMENTED.to_owned()
            }
        );
        assert!(matches!(handle(Request::Shutdown), Reply::ShuttingDown));
    }
}
