//! Both ends of the handshake, and the host's typed client that multiplexes calls on one connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::{Framed, FramedRead, FramedWrite};
use tracing::{debug, warn};

use bytes::Bytes;

use crate::write_waiting;
use crate::{
    AgentCodec, AgentMessage, AgentStats, ContainerCreated, CreateContainer, Event, GoneReason,
    HostCodec, HostMessage, Invoke, InvokeResult, ProtocolError, ProtocolVersion, PutCode, Reply,
    Request, StreamPart, MAX_CODE_CHUNK,
};

/// Requests queued for the writer task before `call` waits for room.
const OUTBOUND_QUEUE: usize = 64;

/// What the agent said about itself in its Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    /// The protocol version the agent speaks (compatible with ours, or the handshake failed).
    pub protocol_version: ProtocolVersion,
    /// The agent build's version.
    pub agent_version: String,
}

/// Replies awaited, by correlation id; `None` once the connection is closed.
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Reply>>>>>;

/// The streamed invocations' parts, by correlation id (kept apart from `Pending`, so that a plain
/// call's path does not change).
type Streams = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<StreamPart>>>>;

/// The host's end of an agent connection.
///
/// Calls may run concurrently from many tasks; each gets the reply carrying its correlation id.
/// A reader task routes replies and events and a writer task owns the write half, so a call that
/// is cancelled never leaves half a frame on the wire.
#[derive(Debug)]
pub struct Connection {
    agent: AgentInfo,
    next_id: AtomicU64,
    outbound: mpsc::Sender<HostMessage>,
    pending: Pending,
    streams: Streams,
    reader: JoinHandle<()>,
}

impl Connection {
    /// Performs the host's side of the handshake on a fresh stream, then starts serving calls.
    ///
    /// Returns the connection and the agent's unsolicited [`Event`]s. An agent whose major protocol
    /// version differs from ours is sent [`HostMessage::Refused`] and the call fails with
    /// [`ProtocolError::VersionMismatch`].
    pub async fn handshake<T>(
        io: T,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Event>), ProtocolError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut framed = Framed::new(io, HostCodec::new());
        let (protocol_version, agent_version) = match framed.next().await {
            Some(Ok(AgentMessage::Hello {
                protocol_version,
                agent_version,
            })) => (protocol_version, agent_version),
            Some(Ok(_)) => return Err(ProtocolError::UnexpectedHandshake),
            Some(Err(err)) => return Err(err),
            None => return Err(ProtocolError::Closed),
        };
        let ours = ProtocolVersion::CURRENT;
        if !ours.is_compatible_with(protocol_version) {
            let reason = format!(
                "agent {agent_version} speaks protocol {protocol_version}, the host speaks {ours}"
            );
            warn!(%reason, "refusing agent");
            // Best effort: the agent learns why, but the mismatch is the error that matters.
            let _ = framed.send(HostMessage::Refused { reason }).await;
            return Err(ProtocolError::VersionMismatch {
                ours,
                theirs: protocol_version,
            });
        }
        framed
            .send(HostMessage::HelloAck {
                protocol_version: ours,
            })
            .await?;
        debug!(%agent_version, %protocol_version, "agent connected");

        let parts = framed.into_parts();
        let (read_half, write_half) = tokio::io::split(parts.io);
        let mut reader = FramedRead::new(read_half, HostCodec::new());
        reader.read_buffer_mut().extend_from_slice(&parts.read_buf);
        let writer = FramedWrite::new(write_half, HostCodec::new());

        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let (events, events_rx) = mpsc::unbounded_channel();
        let streams = Streams::default();
        tokio::spawn(write_loop(writer, outbound_rx, pending.clone()));
        let reader = tokio::spawn(read_loop(reader, pending.clone(), streams.clone(), events));

        let connection = Self {
            agent: AgentInfo {
                protocol_version,
                agent_version,
            },
            next_id: AtomicU64::new(1),
            outbound,
            pending,
            streams,
            reader,
        };
        Ok((connection, events_rx))
    }

    /// What the agent said about itself in its Hello.
    pub fn agent(&self) -> &AgentInfo {
        &self.agent
    }

    /// Sends a request and waits for its reply. [`Reply::Error`] becomes [`ProtocolError::Agent`].
    pub async fn call(&self, request: Request) -> Result<Reply, ProtocolError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending)
            .as_mut()
            .ok_or(ProtocolError::Closed)?
            .insert(id, tx);
        let _forget = ForgetOnDrop {
            pending: &self.pending,
            id,
        };
        self.outbound
            .send(HostMessage::Request { id, request })
            .await
            .map_err(|_| ProtocolError::Closed)?;
        match rx.await.map_err(|_| ProtocolError::Closed)? {
            Reply::Error { message } => Err(ProtocolError::Agent(message)),
            reply => Ok(reply),
        }
    }

    /// Sends a whole code package to the agent as [`PutCode`] chunks, unless the agent says it
    /// already holds it. Returns once the agent has verified and extracted it.
    pub async fn put_code(&self, sha256: &str, package: &Bytes) -> Result<(), ProtocolError> {
        let total_len = package.len() as u64;
        let mut offset = 0;
        loop {
            let end = (offset + MAX_CODE_CHUNK).min(package.len());
            let request = Request::PutCode(PutCode {
                sha256: sha256.to_owned(),
                offset: offset as u64,
                total_len,
                chunk: package.slice(offset..end),
            });
            match self.call(request).await? {
                Reply::CodeStored { complete: true, .. } => return Ok(()),
                Reply::CodeStored {
                    complete: false, ..
                } if end < package.len() => offset = end,
                _ => return Err(ProtocolError::UnexpectedReply("PutCode")),
            }
        }
    }

    /// Creates a container ([`Request::CreateContainer`]) and returns what the agent created.
    pub async fn create_container(
        &self,
        request: CreateContainer,
    ) -> Result<ContainerCreated, ProtocolError> {
        match self.call(Request::CreateContainer(request)).await? {
            Reply::ContainerCreated(created) => Ok(created),
            _ => Err(ProtocolError::UnexpectedReply("CreateContainer")),
        }
    }

    /// Waits for a container's init ([`Request::AwaitInit`]); returns its duration in ms.
    pub async fn await_init(
        &self,
        container_id: &str,
        timeout_ms: u64,
    ) -> Result<f64, ProtocolError> {
        let request = Request::AwaitInit {
            container_id: container_id.to_owned(),
            timeout_ms,
        };
        match self.call(request).await? {
            Reply::Initialized {
                init_duration_ms, ..
            } => Ok(init_duration_ms),
            _ => Err(ProtocolError::UnexpectedReply("AwaitInit")),
        }
    }

    /// Starts (or keeps) the VM's template for `runtime` ([`Request::PrepareTemplate`]); returns
    /// its resident memory in MB.
    pub async fn prepare_template(&self, runtime: &str) -> Result<u64, ProtocolError> {
        let request = Request::PrepareTemplate {
            runtime: runtime.to_owned(),
        };
        match self.call(request).await? {
            Reply::TemplateReady { rss_mb, .. } => Ok(rss_mb),
            _ => Err(ProtocolError::UnexpectedReply("PrepareTemplate")),
        }
    }

    /// Drops the VM's SnapStart templates of `function_arn`'s `version` (every version when
    /// `None`) ([`Request::DropSnapTemplates`]); returns how many were torn down now and how
    /// many go when their last environment ends.
    pub async fn drop_snap_templates(
        &self,
        function_arn: &str,
        version: Option<&str>,
    ) -> Result<(u32, u32), ProtocolError> {
        let request = Request::DropSnapTemplates {
            function_arn: function_arn.to_owned(),
            version: version.map(str::to_owned),
        };
        match self.call(request).await? {
            Reply::SnapTemplatesDropped { dropped, pending } => Ok((dropped, pending)),
            _ => Err(ProtocolError::UnexpectedReply("DropSnapTemplates")),
        }
    }

    /// Runs an invocation ([`Request::Invoke`]) and returns how it ended.
    pub async fn invoke(&self, request: Invoke) -> Result<InvokeResult, ProtocolError> {
        match self.call(Request::Invoke(request)).await? {
            Reply::InvokeResult(result) => Ok(result),
            _ => Err(ProtocolError::UnexpectedReply("Invoke")),
        }
    }

    /// Starts an invocation whose response may be streamed ([`Request::InvokeStream`]) and
    /// returns at once: the [`InvokeStream`] yields the response's parts as the agent sends them,
    /// then the invocation's result.
    pub async fn invoke_stream(&self, request: Invoke) -> Result<InvokeStream, ProtocolError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, reply) = oneshot::channel();
        let (parts_tx, parts) = mpsc::unbounded_channel();
        lock(&self.pending)
            .as_mut()
            .ok_or(ProtocolError::Closed)?
            .insert(id, tx);
        lock_streams(&self.streams).insert(id, parts_tx);
        let stream = InvokeStream {
            id,
            parts,
            reply: Some(reply),
            ended: None,
            uncredited: 0,
            outbound: self.outbound.clone(),
            pending: self.pending.clone(),
            streams: self.streams.clone(),
        };
        self.outbound
            .send(HostMessage::Request {
                id,
                request: Request::InvokeStream(request),
            })
            .await
            .map_err(|_| ProtocolError::Closed)?;
        Ok(stream)
    }

    /// Destroys a container ([`Request::DestroyContainer`]) and returns how it ended.
    pub async fn destroy_container(&self, container_id: &str) -> Result<GoneReason, ProtocolError> {
        let request = Request::DestroyContainer {
            container_id: container_id.to_owned(),
        };
        match self.call(request).await? {
            Reply::ContainerGone { reason, .. } => Ok(reason),
            _ => Err(ProtocolError::UnexpectedReply("DestroyContainer")),
        }
    }

    /// Asks for the VM's usage ([`Request::Stats`]).
    pub async fn stats(&self) -> Result<AgentStats, ProtocolError> {
        match self.call(Request::Stats).await? {
            Reply::Stats(stats) => Ok(stats),
            _ => Err(ProtocolError::UnexpectedReply("Stats")),
        }
    }

    /// Asks the agent to destroy every container and exit ([`Request::Shutdown`]).
    pub async fn shutdown(&self) -> Result<(), ProtocolError> {
        match self.call(Request::Shutdown).await? {
            Reply::ShuttingDown => Ok(()),
            _ => Err(ProtocolError::UnexpectedReply("Shutdown")),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The writer ends by itself once `outbound` is dropped, after flushing what was queued.
        self.reader.abort();
    }
}

/// A streamed invocation in flight ([`Connection::invoke_stream`]).
///
/// [`InvokeStream::next`] yields the response's parts in order; each call first credits the
/// agent with the chunk bytes the previous calls handed out, so the agent runs at most
/// [`STREAM_WINDOW`](crate::STREAM_WINDOW) bytes ahead of the caller. Once it yields `None`,
/// [`InvokeStream::result`] answers how the invocation ended. Dropping it forgets the call: later
/// parts and the reply are discarded.
#[derive(Debug)]
pub struct InvokeStream {
    id: u64,
    parts: mpsc::UnboundedReceiver<StreamPart>,
    reply: Option<oneshot::Receiver<Reply>>,
    ended: Option<Result<Reply, ProtocolError>>,
    uncredited: u64,
    outbound: mpsc::Sender<HostMessage>,
    pending: Pending,
    streams: Streams,
}

impl InvokeStream {
    /// The next part of the response, or `None` once the invocation has ended (every part sent
    /// before its reply has been yielded).
    pub async fn next(&mut self) -> Option<StreamPart> {
        if self.uncredited > 0 {
            let credit = HostMessage::StreamCredit {
                id: self.id,
                bytes: std::mem::take(&mut self.uncredited),
            };
            // A closed connection ends the stream below, through the reply.
            let _ = self.outbound.send(credit).await;
        }
        let part = match &mut self.reply {
            Some(reply) => tokio::select! {
                biased;
                part = self.parts.recv() => part,
                answer = reply => {
                    self.ended = Some(answer.map_err(|_| ProtocolError::Closed));
                    self.reply = None;
                    // Parts precede their reply on the wire and are routed first: what is left
                    // is already queued.
                    self.parts.try_recv().ok()
                }
            },
            None => self.parts.try_recv().ok(),
        };
        if let Some(StreamPart::Chunk { data }) = &part {
            self.uncredited += data.len() as u64;
        }
        part
    }

    /// How the invocation ended: waits for the reply if [`InvokeStream::next`] has not seen it
    /// (parts not yet read are then discarded).
    pub async fn result(mut self) -> Result<InvokeResult, ProtocolError> {
        let reply = match (self.ended.take(), self.reply.take()) {
            (Some(ended), _) => ended?,
            (None, Some(reply)) => reply.await.map_err(|_| ProtocolError::Closed)?,
            (None, None) => return Err(ProtocolError::Closed),
        };
        match reply {
            Reply::InvokeResult(result) => Ok(result),
            Reply::Error { message } => Err(ProtocolError::Agent(message)),
            _ => Err(ProtocolError::UnexpectedReply("InvokeStream")),
        }
    }
}

impl Drop for InvokeStream {
    fn drop(&mut self) {
        lock_streams(&self.streams).remove(&self.id);
        if let Some(map) = lock(&self.pending).as_mut() {
            map.remove(&self.id);
        }
    }
}

/// Performs the agent's side of the handshake: sends Hello, then waits for the host's answer.
/// Returns the host's protocol version.
pub async fn agent_handshake<T>(
    framed: &mut Framed<T, AgentCodec>,
    agent_version: &str,
) -> Result<ProtocolVersion, ProtocolError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let ours = ProtocolVersion::CURRENT;
    framed
        .send(AgentMessage::Hello {
            protocol_version: ours,
            agent_version: agent_version.to_owned(),
        })
        .await?;
    match framed.next().await {
        Some(Ok(HostMessage::HelloAck { protocol_version })) => {
            if ours.is_compatible_with(protocol_version) {
                Ok(protocol_version)
            } else {
                Err(ProtocolError::VersionMismatch {
                    ours,
                    theirs: protocol_version,
                })
            }
        }
        Some(Ok(HostMessage::Refused { reason })) => Err(ProtocolError::Refused(reason)),
        Some(Ok(HostMessage::Request { .. } | HostMessage::StreamCredit { .. })) => {
            Err(ProtocolError::UnexpectedHandshake)
        }
        Some(Err(err)) => Err(err),
        None => Err(ProtocolError::Closed),
    }
}

async fn write_loop<W>(
    mut writer: FramedWrite<W, HostCodec>,
    mut outbound: mpsc::Receiver<HostMessage>,
    pending: Pending,
) where
    W: AsyncWrite + Unpin,
{
    while let Some(message) = outbound.recv().await {
        // Whatever else is queued goes out with it.
        let written = write_waiting(&mut writer, message, || outbound.try_recv().ok(), |_| false);
        if let Err(err) = written.await {
            warn!(
                error = &err as &dyn std::error::Error,
                "agent connection write failed"
            );
            break;
        }
    }
    close(&pending);
}

async fn read_loop<R>(
    mut reader: FramedRead<R, HostCodec>,
    pending: Pending,
    streams: Streams,
    events: mpsc::UnboundedSender<Event>,
) where
    R: AsyncRead + Unpin,
{
    while let Some(frame) = reader.next().await {
        match frame {
            Ok(AgentMessage::Reply { id, reply }) => {
                let waiter = lock(&pending).as_mut().and_then(|map| map.remove(&id));
                match waiter {
                    // The caller may have given up waiting; that is its business.
                    Some(waiter) => {
                        let _ = waiter.send(reply);
                    }
                    None => debug!(id, "reply to a call nobody awaits"),
                }
            }
            Ok(AgentMessage::Stream { id, part }) => {
                // A stream nobody reads any more (its caller gave up) drops its parts.
                if let Some(parts) = lock_streams(&streams).get(&id) {
                    let _ = parts.send(part);
                }
            }
            Ok(AgentMessage::Event(event)) => {
                // Nobody listening for events is allowed; they are then dropped.
                let _ = events.send(event);
            }
            Ok(AgentMessage::Hello { .. }) => {
                warn!("agent sent a second Hello; closing the connection");
                break;
            }
            Err(err) => {
                warn!(
                    error = &err as &dyn std::error::Error,
                    "agent connection read failed"
                );
                break;
            }
        }
    }
    close(&pending);
}

/// Fails every call in flight and every later one.
fn close(pending: &Pending) {
    lock(pending).take();
}

fn lock(pending: &Pending) -> MutexGuard<'_, Option<HashMap<u64, oneshot::Sender<Reply>>>> {
    // The map stays consistent whatever a panicking holder was doing: take the data as it is.
    pending.lock().unwrap_or_else(PoisonError::into_inner)
}

fn lock_streams(
    streams: &Streams,
) -> MutexGuard<'_, HashMap<u64, mpsc::UnboundedSender<StreamPart>>> {
    // A map of senders: consistent whatever a panicking holder was doing.
    streams.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes a call's entry when the call ends, however it ends (including cancellation).
struct ForgetOnDrop<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(map) = lock(self.pending).as_mut() {
            map.remove(&self.id);
        }
    }
}
