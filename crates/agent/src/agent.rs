//! The agent's main loop: the first process of a VM, serving the host's requests over one stream.
//!
//! The host hands the agent its end of the connection as file descriptor [`HOST_FD`] (a unix
//! socket today, a vsock later); the `ember-agent` binary turns it into a stream and calls
//! [`run`]. As PID 1 of the VM the agent also reaps every orphan that the kernel reparents to it
//! (see [`crate::reaper`]).
//!
//! Each request is handled by a task of its own, so invocations on different containers run at
//! the same time; replies and events reach the host through one writer task, in the order they
//! are ready. `Shutdown` is the exception: the loop stops reading, destroys every container,
//! replies and returns once the reply is written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ember_protocol::{
    agent_handshake, write_waiting, AgentCodec, AgentMessage, HostMessage, Invoke, ProtocolError,
    Reply, Request,
};
use ember_stdx::error_chain;
use futures_util::stream::SplitSink;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tracing::{debug, info, warn, Instrument};

use crate::container::{ContainerConfig, Containers};
use crate::reaper::Reaper;
use crate::runtime_api::{Credit, ResponseSink};
use crate::AGENT_VERSION;

/// The file descriptor on which the agent finds its connection to the host (defined by the
/// protocol crate, which the host's VM backend shares).
pub use ember_protocol::HOST_FD;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("handshake with the host failed")]
    Handshake(#[source] ProtocolError),
    #[error("the host connection failed")]
    Connection(#[source] ProtocolError),
    #[error("cannot watch for exited children")]
    Reaper(#[source] std::io::Error),
    #[error("cannot set up the VM's network")]
    Network(#[source] crate::net::NetError),
}

/// Why [`run`] returned without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The host asked the agent to shut down, and was told it would.
    Shutdown,
    /// The host closed the connection: nobody is left to serve.
    HostGone,
}

/// Serves the host on `io` until it asks for a shutdown or goes away, with containers made as a
/// VM makes them ([`ContainerConfig::default`]).
pub async fn run<T>(io: T) -> Result<Exit, AgentError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The VM's network first: a VM is ready once its containers can have theirs.
    let network = crate::net::VmNet::from_env()
        .await
        .map_err(AgentError::Network)?;
    let config = ContainerConfig {
        network,
        ..ContainerConfig::default()
    };
    run_with(io, config).await
}

/// [`run`], with containers made per `config`.
pub async fn run_with<T>(io: T, config: ContainerConfig) -> Result<Exit, AgentError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let reaper = Reaper::start().map_err(AgentError::Reaper)?;
    let mut framed = Framed::new(io, AgentCodec::new());
    let host = agent_handshake(&mut framed, AGENT_VERSION)
        .await
        .map_err(AgentError::Handshake)?;
    info!(host_protocol = %host, "connected to the host");

    let (sink, mut stream) = framed.split();
    let (outbound, outbound_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_loop(sink, outbound_rx));
    let credits = Credits::default();
    let (events, mut events_rx) = mpsc::unbounded_channel();
    let containers = Arc::new(Containers::new(config, reaper, events));
    containers.refill_spares();
    tokio::spawn({
        let outbound = outbound.clone();
        async move {
            while let Some(event) = events_rx.recv().await {
                if outbound.send(AgentMessage::Event(event)).is_err() {
                    break;
                }
            }
        }
    });

    while let Some(frame) = stream.next().await {
        let (id, request) = match frame.map_err(AgentError::Connection)? {
            HostMessage::Request { id, request } => (id, request),
            HostMessage::StreamCredit { id, bytes } => {
                if let Some(credit) = lock(&credits).get(&id) {
                    credit.add(bytes);
                }
                continue;
            }
            HostMessage::HelloAck { .. } | HostMessage::Refused { .. } => {
                warn!("handshake message after the handshake; ignored");
                continue;
            }
        };
        if let Request::Shutdown = request {
            info!("shutting down at the host's request");
            containers.shutdown().await;
            let _ = outbound.send(AgentMessage::Reply {
                id,
                reply: Reply::ShuttingDown,
            });
            // The writer returns once it has written the reply.
            let _ = writer.await;
            return Ok(Exit::Shutdown);
        }
        let containers = containers.clone();
        let outbound = outbound.clone();
        let span = tracing::debug_span!("request", id);
        if let Request::InvokeStream(invoke) = request {
            let stream = invoke_stream(containers, invoke, id, outbound, credits.clone());
            tokio::spawn(stream.instrument(span));
            continue;
        }
        tokio::spawn(
            async move {
                let reply = handle(&containers, request).await;
                let _ = outbound.send(AgentMessage::Reply { id, reply });
            }
            .instrument(span),
        );
    }
    info!("the host closed the connection");
    containers.shutdown().await;
    Ok(Exit::HostGone)
}

/// The credit of each streamed invocation in flight, by correlation id.
type Credits = Arc<Mutex<HashMap<u64, Credit>>>;

fn lock(credits: &Credits) -> MutexGuard<'_, HashMap<u64, Credit>> {
    // A map of semaphores: consistent whatever a panicking holder was doing.
    credits.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs a [`Request::InvokeStream`]: the response's parts go to the host as the runtime streams
/// them, paced by the host's credits, then the reply. The credit is closed once the invocation
/// is over, so a runtime still streaming (its invocation timed out, or was withdrawn) stops.
async fn invoke_stream(
    containers: Arc<Containers>,
    invoke: Invoke,
    id: u64,
    outbound: mpsc::UnboundedSender<AgentMessage>,
    credits: Credits,
) {
    let credit = Credit::new();
    lock(&credits).insert(id, credit.clone());
    let sink = ResponseSink::new(id, outbound.clone(), &credit);
    let reply = match containers.invoke_with(invoke, Some(sink)).await {
        Ok(result) => Reply::InvokeResult(result),
        Err(err) => {
            let message = error_chain(&err);
            debug!(%message, "request failed");
            Reply::Error { message }
        }
    };
    credit.close();
    lock(&credits).remove(&id);
    let _ = outbound.send(AgentMessage::Reply { id, reply });
}

/// Writes every message to the host, in the order they come; returns after writing the reply
/// to a shutdown, or when the connection fails.
async fn write_loop<T>(
    mut sink: SplitSink<Framed<T, AgentCodec>, AgentMessage>,
    mut outbound: mpsc::UnboundedReceiver<AgentMessage>,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(message) = outbound.recv().await {
        // Replies ready together go out together.
        let written = write_waiting(&mut sink, message, || outbound.try_recv().ok(), is_last);
        match written.await {
            Ok(false) => {}
            Ok(true) => return,
            Err(err) => {
                warn!(
                    error = &err as &dyn std::error::Error,
                    "cannot write to the host"
                );
                return;
            }
        }
    }
}

/// The reply to a shutdown: the last message the agent writes.
fn is_last(message: &AgentMessage) -> bool {
    matches!(
        message,
        AgentMessage::Reply {
            reply: Reply::ShuttingDown,
            ..
        }
    )
}

/// Answers one request (all but `Shutdown`).
///
/// Every request is a task of its own, and a task's future is moved into the heap whole when
/// spawned. The rare requests' futures (code upload, container creation and destruction) are
/// boxed, so an invocation's task is only as large as an invocation needs.
async fn handle(containers: &Arc<Containers>, request: Request) -> Reply {
    let result = match request {
        Request::Invoke(invoke) => containers.invoke(invoke).await.map(Reply::InvokeResult),
        // Served by `invoke_stream`, which the loop calls instead; never handed here.
        Request::InvokeStream(invoke) => Box::pin(containers.invoke(invoke))
            .await
            .map(Reply::InvokeResult),
        Request::PutCode(chunk) => {
            let sha256 = chunk.sha256.clone();
            Box::pin(containers.put_code(chunk))
                .await
                .map(|complete| Reply::CodeStored { sha256, complete })
        }
        Request::CreateContainer(create) => Box::pin(containers.create(create))
            .await
            .map(Reply::ContainerCreated),
        Request::AwaitInit {
            container_id,
            timeout_ms,
        } => Box::pin(containers.await_init(&container_id, Duration::from_millis(timeout_ms)))
            .await
            .map(|init_duration_ms| Reply::Initialized {
                container_id,
                init_duration_ms,
            }),
        Request::DestroyContainer { container_id } => Box::pin(containers.destroy(&container_id))
            .await
            .map(|reason| Reply::ContainerGone {
                container_id,
                reason,
            }),
        Request::PrepareTemplate { runtime } => Box::pin(containers.prepare_template(&runtime))
            .await
            .map(|rss_mb| Reply::TemplateReady { runtime, rss_mb }),
        Request::DropSnapTemplates {
            function_arn,
            version,
        } => {
            let (dropped, pending) =
                Box::pin(containers.drop_snap_templates(&function_arn, version.as_deref())).await;
            Ok(Reply::SnapTemplatesDropped { dropped, pending })
        }
        Request::Stats => Ok(Reply::Stats(containers.stats())),
        Request::Shutdown => Ok(Reply::ShuttingDown),
    };
    result.unwrap_or_else(|err| {
        let message = error_chain(&err);
        debug!(%message, "request failed");
        Reply::Error { message }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chains_name_every_cause() {
        let inner = std::io::Error::new(std::io::ErrorKind::NotFound, "no file");
        let err = AgentError::Reaper(inner);
        assert_eq!(
            error_chain(&err),
            "cannot watch for exited children: no file"
        );
    }
}
