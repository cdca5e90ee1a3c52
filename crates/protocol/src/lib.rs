//! The host <-> agent protocol: message types, the frame codec, the versioned handshake and the
//! host's client. It is the one thing the host (`ember-vm`, `ember-executor`) and the guest
//! (`ember-agent`) share, and the boundary a VM backend implements against: whatever carries the
//! bytes, a host speaks to an agent in these frames.
//!
//! # Wire format
//!
//! The agent is the first process of a VM and talks to the host over one byte stream: a unix socket
//! today, a vsock later. Nothing here depends on which: the codec works over any
//! `AsyncRead + AsyncWrite`.
//!
//! Each frame is a `u32` big-endian length followed by that many bytes of JSON (serde). A frame is
//! at most [`MAX_FRAME_LEN`] bytes; a longer length prefix is an error and the connection is dropped.
//! Binary payloads (invocation events, responses, inline code) travel base64-encoded inside the JSON,
//! so a message stays one self-describing frame; a 6 MB payload takes 8 MB on the wire, hence
//! the 16 MiB frame limit.
//!
//! # Conversation
//!
//! 1. The agent sends [`AgentMessage::Hello`] as soon as it can serve requests: Hello doubles as
//!    "ready". The host answers [`HostMessage::HelloAck`], or [`HostMessage::Refused`] and closes the
//!    connection when the major versions differ.
//! 2. The host sends [`HostMessage::Request`]s, each with a fresh correlation id; the agent answers
//!    each with an [`AgentMessage::Reply`] carrying the same id, in any order, so many calls
//!    (invocations on different containers) multiplex on one connection.
//! 3. The agent may send an [`AgentMessage::Event`] at any time (a container died on its own).
//!
//! # Units
//!
//! Field names carry their unit: `_ms` milliseconds (`deadline_ms` is a Unix epoch time, the
//! others durations), `_mb` megabytes of 2^20 bytes, `cpu_millis` thousandths of a vCPU. Ids
//! (`container_id`, `request_id`) are chosen by the host.
#![warn(missing_docs)]

pub mod bootstrap;
mod codec;
mod connection;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use codec::{write_waiting, AgentCodec, Codec, HostCodec, MAX_FRAME_LEN};
pub use connection::{agent_handshake, AgentInfo, Connection, InvokeStream};

/// The file descriptor on which the agent finds its end of the connection to the host, open and
/// without close-on-exec, when the Linux backend (`ember-vm`) starts it as a VM's first process.
pub const HOST_FD: i32 = 3;

/// Errors of the agent protocol, on either side.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Reading or writing the stream failed.
    #[error("i/o error on the agent connection")]
    Io(#[from] std::io::Error),
    /// A frame's length prefix (decoding) or encoded body (encoding) is over the codec's limit;
    /// the connection cannot be trusted past it.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The frame body's length, in bytes.
        len: usize,
        /// The codec's limit, in bytes ([`MAX_FRAME_LEN`] unless set otherwise).
        max: usize,
    },
    /// A whole frame arrived but its body is not a message of the expected side.
    #[error("malformed frame")]
    Malformed(#[source] serde_json::Error),
    /// A message could not be serialized.
    #[error("cannot encode message")]
    Encode(#[source] serde_json::Error),
    /// The peer's major version differs from ours: the handshake fails.
    #[error("protocol version {theirs} is incompatible with ours ({ours}): major versions differ")]
    VersionMismatch {
        /// The version this side speaks ([`ProtocolVersion::CURRENT`]).
        ours: ProtocolVersion,
        /// The version the peer announced.
        theirs: ProtocolVersion,
    },
    /// The host answered the agent's Hello with [`HostMessage::Refused`]; its reason.
    #[error("handshake refused by the host: {0}")]
    Refused(String),
    /// The first frame of a side was not the handshake frame it must be.
    #[error("unexpected message during handshake")]
    UnexpectedHandshake,
    /// The stream ended, or the connection was closed, before the answer came.
    #[error("connection closed")]
    Closed,
    /// The agent answered [`Reply::Error`]: it refused or failed the request; its message.
    #[error("agent failed the request: {0}")]
    Agent(String),
    /// The agent answered a request with a reply of another kind; names the request.
    #[error("unexpected reply to {0}")]
    UnexpectedReply(&'static str),
}

/// A protocol version. Peers with the same major version understand each other; a minor bump only
/// adds optional fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolVersion {
    /// Bumped by a change an older peer cannot read; peers of different majors refuse each other.
    pub major: u16,
    /// Bumped by a compatible change (an optional field a peer of the same major may ignore).
    pub minor: u16,
}

impl ProtocolVersion {
    /// The version this build speaks.
    /// 1.1 added [`CreateContainer::freeze_idle`]; 1.2 [`FunctionSpec::layers`]; 1.3
    /// [`Request::AwaitInit`] (an older agent refuses it as a frame it cannot read); 1.4
    /// [`Request::PrepareTemplate`] (likewise); 1.5 [`Request::InvokeStream`],
    /// [`AgentMessage::Stream`] and [`HostMessage::StreamCredit`] (streamed responses); 1.6
    /// [`CreateContainer::snap_start`], [`InvokeResult::restored`] and
    /// [`Request::DropSnapTemplates`] (SnapStart; an older agent refuses the request as a frame
    /// it cannot read); 1.7 [`CreateContainer::egress`] and the agent's [`VmNetwork`] (issue
    /// 19's network).
    pub const CURRENT: Self = Self { major: 1, minor: 7 };

    /// Whether a peer speaking `other` understands this version: the same major.
    pub fn is_compatible_with(self, other: Self) -> bool {
        self.major == other.major
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Every frame the host sends.
// Handshake frames are two per connection; boxing requests to shrink them would cost every call.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostMessage {
    /// Accepts the agent's [`AgentMessage::Hello`].
    HelloAck {
        /// The version the host speaks.
        protocol_version: ProtocolVersion,
    },
    /// Refuses the agent's Hello; the host closes the connection after it.
    Refused {
        /// Why, for the agent's log (both versions, as text).
        reason: String,
    },
    /// A request, sent after the handshake.
    Request {
        /// The correlation id, fresh per request on this connection; the reply carries it back.
        id: u64,
        /// What the host asks.
        request: Request,
    },
    /// Lets the agent send `bytes` more of the streamed response of the
    /// [`Request::InvokeStream`] with this correlation id: the host has handed that much on.
    StreamCredit {
        /// The streamed invocation's correlation id.
        id: u64,
        /// How many chunk bytes the host has consumed since its last credit.
        bytes: u64,
    },
}

/// Every frame the agent sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentMessage {
    /// The agent's first frame, sent once it can serve requests.
    Hello {
        /// The version the agent speaks.
        protocol_version: ProtocolVersion,
        /// The agent build's version (its crate version), for the host's logs.
        agent_version: String,
    },
    /// The answer to the [`HostMessage::Request`] with the same `id`.
    Reply {
        /// The request's correlation id.
        id: u64,
        /// The answer.
        reply: Reply,
    },
    /// Something the host did not ask about.
    Event(Event),
    /// A part of the streamed response of the [`Request::InvokeStream`] with this correlation
    /// id, sent before its [`Reply::InvokeResult`], in order.
    Stream {
        /// The streamed invocation's correlation id.
        id: u64,
        /// The part.
        part: StreamPart,
    },
}

/// A part of a streamed response ([`AgentMessage::Stream`]).
///
/// A runtime that streams (`Lambda-Runtime-Function-Response-Mode: streaming`) produces one
/// [`StreamPart::Head`], then its body as [`StreamPart::Chunk`]s of at most
/// [`MAX_STREAM_CHUNK`] bytes, as they arrive. The agent never has more than
/// [`STREAM_WINDOW`] chunk bytes sent and not yet credited by the host
/// ([`HostMessage::StreamCredit`]): that bounds what either side holds, whatever the response's
/// size. A runtime that answers with a buffered response sends no part: its payload is in the
/// [`InvokeOutcome::Ok`] of the [`Reply::InvokeResult`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamPart {
    /// The runtime began its streamed response.
    Head {
        /// The response's `Content-Type`, as the runtime posted it.
        content_type: Option<String>,
    },
    /// The next bytes of the response (base64 on the wire).
    Chunk {
        /// The bytes, at most [`MAX_STREAM_CHUNK`].
        #[serde(with = "base64_bytes")]
        data: Bytes,
    },
}

/// The largest [`StreamPart::Chunk`]: 128 KiB, so a streamed chunk's frame stays small.
pub const MAX_STREAM_CHUNK: usize = 128 * 1024;

/// The most chunk bytes of one streamed response the agent sends ahead of the host's credits
/// (512 KiB).
pub const STREAM_WINDOW: usize = 512 * 1024;

/// What the host asks of the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Store one chunk of a code package in the VM. Answered by [`Reply::CodeStored`].
    PutCode(PutCode),
    /// Create a container and start its runtime. Answered by [`Reply::ContainerCreated`] once
    /// the runtime is executed, without waiting for its init (the first [`Request::Invoke`] does).
    /// A runtime that cannot be executed (no `bootstrap`) still answers `ContainerCreated`; the
    /// first invocation then reports `InitError` `Runtime.InvalidEntrypoint`.
    CreateContainer(CreateContainer),
    /// Wait until a container's runtime has finished its init (its first poll of `/next`), for
    /// an execution environment made ready ahead of its invocations (provisioned concurrency).
    /// Answered by [`Reply::Initialized`]. An init that fails (`/init/error`, the runtime's
    /// death) or outlasts `timeout_ms` is answered by [`Reply::Error`] naming why, and the
    /// container is destroyed. Once answered, the container is warm: its first invocation
    /// reports no `init_duration_ms`, and its death while idle is announced
    /// ([`Event::ContainerGone`]) as any invoked container's.
    AwaitInit {
        /// The container, created by [`Request::CreateContainer`].
        container_id: String,
        /// How long the init may take, in milliseconds.
        timeout_ms: u64,
    },
    /// Run one invocation in a container. Answered by [`Reply::InvokeResult`]. A container runs
    /// one invocation at a time; a second one waits for its turn. An invocation on a container
    /// whose runtime ended before it (during its init) reports how it ended.
    Invoke(Invoke),
    /// Run one invocation whose response may be streamed: as [`Request::Invoke`], but a runtime
    /// that streams its response has it forwarded as it comes, in [`AgentMessage::Stream`]
    /// parts carrying this request's id, paced by the host's [`HostMessage::StreamCredit`]s,
    /// before the [`Reply::InvokeResult`] (whose `Ok` payload is then empty). A streamed
    /// response may reach 20 MiB; a plain [`Request::Invoke`] buffers a streaming runtime's
    /// response within the 6 MB limit instead.
    InvokeStream(Invoke),
    /// Kill a container and free its resources. Answered by [`Reply::ContainerGone`] with
    /// [`GoneReason::Destroyed`], or, for a container that had already ended, with how it ended.
    DestroyContainer {
        /// The container to destroy.
        container_id: String,
    },
    /// Start (or keep) the VM's runtime template for `runtime`: a process with the runtime's
    /// interpreter started and its runtime client imported, from which later containers of that
    /// runtime are forked instead of started afresh. Answered by [`Reply::TemplateReady`] with
    /// its resident memory, which the host counts as taken from the VM's memory for containers;
    /// a runtime that has no template (not a Python runtime, or the VM lacks it) is answered by
    /// [`Reply::Error`], and its containers start the ordinary way.
    PrepareTemplate {
        /// The Lambda runtime, `python3.12`.
        runtime: String,
    },
    /// Drop the VM's SnapStart templates ([`CreateContainer::snap_start`]) of a function's
    /// `version`, or of every version when `None` (the function was deleted). A template whose
    /// environments still run (they are in its PID namespace) goes when the last of them ends.
    /// Answered by [`Reply::SnapTemplatesDropped`]. (1.6)
    DropSnapTemplates {
        /// The function's unqualified ARN, as in its containers' [`FunctionSpec::arn`].
        function_arn: String,
        /// The version (`3`), or `None` for all of them.
        version: Option<String>,
    },
    /// Ask for the VM's current usage. Answered by [`Reply::Stats`].
    Stats,
    /// Destroy every container and exit. Answered by [`Reply::ShuttingDown`].
    Shutdown,
}

/// What the agent answers. Any request may instead be answered by [`Reply::Error`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// Answers [`Request::PutCode`]: the chunk is stored.
    CodeStored {
        /// The package's hex sha256, as in the request.
        sha256: String,
        /// Whether the package is now whole, verified and extracted, ready for containers.
        complete: bool,
    },
    /// Answers [`Request::CreateContainer`]: the container exists and its runtime was started.
    ContainerCreated(ContainerCreated),
    /// Answers [`Request::AwaitInit`]: the runtime finished its init.
    Initialized {
        /// The container, as in the request.
        container_id: String,
        /// From the runtime's start to its first poll of `/next`, in ms.
        init_duration_ms: f64,
    },
    /// Answers [`Request::Invoke`]: how the invocation ended.
    InvokeResult(InvokeResult),
    /// Answers [`Request::DestroyContainer`]: the container no longer exists.
    ContainerGone {
        /// The container that was destroyed.
        container_id: String,
        /// [`GoneReason::Destroyed`], or how the container had already ended.
        reason: GoneReason,
    },
    /// Answers [`Request::PrepareTemplate`]: the template runs.
    TemplateReady {
        /// The runtime, as in the request.
        runtime: String,
        /// The template's resident memory, in MB (rounded up).
        rss_mb: u64,
    },
    /// Answers [`Request::DropSnapTemplates`].
    SnapTemplatesDropped {
        /// Templates torn down now: their memory is free.
        dropped: u32,
        /// Templates that go when their last environment ends.
        pending: u32,
    },
    /// Answers [`Request::Stats`].
    Stats(AgentStats),
    /// Answers [`Request::Shutdown`], once every container is destroyed; the agent then exits.
    ShuttingDown,
    /// The request could not be carried out (unknown container, no resources, ...).
    Error {
        /// What went wrong, with its chain of causes, for the host's logs.
        message: String,
    },
}

/// Unsolicited news from the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A container ended without being asked to while idle, after at least one invocation (its
    /// runtime exited, or was OOM-killed). A container that ends before its first invocation is
    /// not announced: that invocation reports how it ended, as Lambda reports a failed init to
    /// the invocation that caused it.
    ContainerGone {
        /// The container that ended.
        container_id: String,
        /// How it ended (never [`GoneReason::Destroyed`]: nobody asked).
        reason: GoneReason,
    },
}

/// One chunk of a code package on its way into a VM.
///
/// The host sends a package as consecutive chunks (`offset` 0, then each next offset), each at most
/// [`MAX_CODE_CHUNK`] bytes. With the last chunk (`offset + chunk.len() == total_len`) the agent
/// checks the whole package against `sha256`, extracts it (with the same limits as the store) and
/// keeps it until the VM ends; containers then name it by [`CodeSource::Stored`]. Sending a
/// package the agent already holds is answered `complete: true` at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PutCode {
    /// Hex sha256 of the whole zip.
    pub sha256: String,
    /// Where `chunk` starts in the zip, in bytes.
    pub offset: u64,
    /// The whole zip's length, in bytes.
    pub total_len: u64,
    /// The chunk's bytes (base64 on the wire).
    #[serde(with = "base64_bytes")]
    pub chunk: Bytes,
}

/// The largest chunk a [`PutCode`] carries: 4 MiB, so a frame stays well inside [`MAX_FRAME_LEN`].
pub const MAX_CODE_CHUNK: usize = 4 * 1024 * 1024;

/// Lambda's ratio of memory to CPU: 1769 MB buys one vCPU.
pub const MB_PER_VCPU: u64 = 1769;

/// The [`CreateContainer::cpu_millis`] of a container of `memory_mb` in a VM of `vcpus`: memory
/// / [`MB_PER_VCPU`] in thousandths of a vCPU, at least 1, at most the VM's `vcpus` (at least
/// one).
pub fn cpu_millis(memory_mb: u64, vcpus: u32) -> u32 {
    let most = u64::from(vcpus.max(1)) * 1000;
    let millis = (memory_mb.saturating_mul(1000) / MB_PER_VCPU).clamp(1, most);
    // Over u32::MAX only for a VM of more than 4 million vCPUs.
    u32::try_from(millis).unwrap_or(u32::MAX)
}

/// A container to create: its id, the function it runs, its user and its resource limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateContainer {
    /// Unique in the VM: 1 to 128 characters of `[A-Za-z0-9._-]`, not starting with a dot.
    pub container_id: String,
    /// `memory_mb` is the container's hard memory limit (swap off), capped at the VM's; the
    /// runtime sees the limit in force as `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`.
    pub function: FunctionSpec,
    /// The unprivileged user the runtime runs as.
    pub uid: u32,
    /// The runtime's group.
    pub gid: u32,
    /// The container's CPU share in thousandths of a vCPU (Lambda's 1769 MB = 1 vCPU, capped at
    /// the VM's capacity by the host: [`cpu_millis`]). The agent also caps it at the VM's quota, and raises it
    /// to the kernel's minimum (1 ms per 100 ms period). It applies from the runtime's first poll
    /// of `/next` on: the runtime's init runs with the VM's whole quota.
    pub cpu_millis: u32,
    /// The most processes and threads the container may hold at once; at least 3 (the
    /// container's init, its reaper and the runtime).
    pub pids_max: u32,
    /// Freeze the container's processes (its cgroup's freezer) whenever no invocation runs in
    /// it, from the end of its first invocation on, as Lambda freezes an idle execution
    /// environment: a thread the function left running uses no CPU between invocations. Absent
    /// (a 1.0 host): false.
    #[serde(default)]
    pub freeze_idle: bool,
    /// SnapStart (a published version whose function has `SnapStart.ApplyOn:
    /// PublishedVersions`): the agent forks the container's runtime from the VM's template of
    /// this function version, taken after the function's init, preparing the template first if
    /// the VM has none (its memory is the VM's, not the container's); the runtime sees
    /// `AWS_LAMBDA_INITIALIZATION_TYPE=snap-start`. Anything that keeps the fork from working
    /// starts the container the ordinary way. Only Python runtimes have templates; for others it
    /// is the ordinary start. Absent (a host before 1.6): false.
    #[serde(default)]
    pub snap_start: bool,
    /// The environment's own temporary credentials, which its runtime sees as
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` (however it starts:
    /// executed, or forked from a runtime template). Absent (an older host): none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SessionCredentials>,
    /// Whether the container's outbound connections may leave the VM (the function's own
    /// `egress` over the server's `--egress`). Meaningless in a VM without a [`VmNetwork`]: its
    /// containers see only their loopback. Absent (a host before 1.7): allow.
    #[serde(default)]
    pub egress: Egress,
}

/// The environment variable through which a VM's agent receives its [`VmNetwork`] at boot, as
/// JSON. Absent: the VM has no network (its containers see only their own loopback).
pub const VM_NETWORK_ENV: &str = "EMBER_VM_NETWORK";

/// A VM's link to the world, as the host made it: the VM's end of one point-to-point link whose
/// other end is the host (a veth pair for the namespace backend, a tap for a microVM). The agent
/// brings the interface up with these addresses and routes everything through `gateway`; its
/// containers reach the world through it, NATed to `address`. The host enforces the operator's
/// egress policy on its end; nothing inside the VM can widen it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNetwork {
    /// The VM's end of the link, as the VM names it (`eth0`).
    pub interface: String,
    /// The VM's IPv4 address on the link (a /32: the link is point to point).
    pub address: std::net::Ipv4Addr,
    /// The host's end: the VM's default route, where Ember's API and its DNS forwarder listen
    /// for this VM's containers.
    pub gateway: std::net::Ipv4Addr,
    /// The VM's IPv6 address on the link (a /128), when the host routes IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_v6: Option<std::net::Ipv6Addr>,
    /// The host's IPv6 end, with `address_v6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_v6: Option<std::net::Ipv6Addr>,
    /// Ember's API port on `gateway`: containers get
    /// `AWS_ENDPOINT_URL_LAMBDA=http://{gateway}:{api_port}`.
    pub api_port: u16,
}

/// Whether a container's outbound connections may leave its VM (the function's own `egress`
/// setting over the server's default). Either way the host's policy applies on top, and a
/// container always reaches Ember's API and DNS forwarder on its VM's gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Egress {
    /// Outbound connections follow the host's policy.
    #[default]
    Allow,
    /// Only the VM's gateway (Ember's API, DNS) is reachable.
    Deny,
}

/// An execution environment's temporary credentials, as Lambda gives a function its execution
/// role's. `Debug` shows the key id only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCredentials {
    /// `AWS_ACCESS_KEY_ID`: `ASIA` and 16 characters.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN`.
    pub session_token: String,
}

impl fmt::Debug for SessionCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &"<redacted>")
            .finish()
    }
}

/// The function version a container runs: everything the agent needs to set up its environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionSpec {
    /// The function's name (`AWS_LAMBDA_FUNCTION_NAME`).
    pub name: String,
    /// The function's unqualified ARN.
    pub arn: String,
    /// `$LATEST` or a published version number.
    pub version: String,
    /// The function's handler (`_HANDLER`), e.g. `app.handler`.
    pub handler: String,
    /// A Lambda runtime identifier, e.g. `python3.12` or `provided.al2023`.
    pub runtime: String,
    /// The AWS region the function lives in (`AWS_REGION`).
    pub region: String,
    /// The function's own environment variables.
    pub environment: BTreeMap<String, String>,
    /// The function's configured memory, in MB.
    pub memory_mb: u32,
    /// The function's timeout, in milliseconds.
    pub timeout_ms: u64,
    /// The size of the container's `/tmp` (a tmpfs), in MB.
    pub ephemeral_storage_mb: u32,
    /// Where the function's code is.
    pub code: CodeSource,
    /// The function's layers: packages sent with [`Request::PutCode`], by hex sha256, in the
    /// function's order. The container sees them merged, read-only, at `/opt`, a later layer's
    /// files over an earlier one's. Absent (a 1.1 host): none.
    #[serde(default)]
    pub layers: Vec<String>,
}

/// Where the function code comes from; it is mounted read-only at `/var/task`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeSource {
    /// An extracted directory already visible inside the VM (bind mount, virtio-fs).
    Directory {
        /// The directory's path inside the VM.
        path: PathBuf,
    },
    /// A package previously sent with [`Request::PutCode`], by its hex sha256.
    Stored {
        /// The package's hex sha256.
        sha256: String,
    },
}

/// A container the agent created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerCreated {
    /// The container's id, as in the request.
    pub container_id: String,
    /// The container's `AWS_LAMBDA_RUNTIME_API` (`host:port`).
    pub runtime_api: String,
}

/// One invocation, for one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invoke {
    /// The container that runs it.
    pub container_id: String,
    /// The event and its context.
    pub invocation: Invocation,
}

/// How long a runtime's init may take without counting toward its first invocation's timeout,
/// as Lambda bounds its Init phase (10 s). Init time beyond it counts toward the timeout.
pub const INIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long the agent waits for a SnapStart template's init ([`CreateContainer::snap_start`]):
/// [`INIT_TIMEOUT`] and 5 s to start. A SnapStart container's creation may include it (the
/// first of its version in the VM), so the host waits that much longer for the answer.
pub const SNAP_TEMPLATE_TIMEOUT: std::time::Duration =
    std::time::Duration::from_secs(INIT_TIMEOUT.as_secs() + 5);

/// One event for a runtime, as the Lambda Runtime API hands it out on `/invocation/next`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    /// The invocation's request id (`Lambda-Runtime-Aws-Request-Id`).
    pub request_id: String,
    /// The event, as the caller sent it (base64 on the wire).
    #[serde(with = "base64_bytes")]
    pub payload: Bytes,
    /// When the invocation times out: Unix epoch milliseconds (`Lambda-Runtime-Deadline-Ms`).
    /// A runtime still in its init when the invocation arrives does not spend the function's
    /// time on it: the agent moves the deadline on by the time the init then takes, up to
    /// [`INIT_TIMEOUT`].
    pub deadline_ms: u64,
    /// The function's ARN, handed to the runtime as `Lambda-Runtime-Invoked-Function-Arn`.
    pub invoked_function_arn: String,
    /// The X-Ray tracing header. AWS always sends one; the host should too.
    pub trace_id: Option<String>,
    /// The client context (already decoded from `X-Amz-Client-Context`'s base64).
    pub client_context: Option<serde_json::Value>,
    /// The caller's Cognito identity, when there is one.
    pub cognito_identity: Option<serde_json::Value>,
}

/// How an invocation ended, with what the agent measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvokeResult {
    /// The invocation's request id, as in the request.
    pub request_id: String,
    /// How it ended.
    pub outcome: InvokeOutcome,
    /// Set on a container's first invocation (its cold start): from the runtime's start to its
    /// first poll of `/next`, or to its failure.
    pub init_duration_ms: Option<f64>,
    /// The container was forked from a SnapStart template ([`CreateContainer::snap_start`]):
    /// `init_duration_ms` is its restore (the fork, the after-restore hooks, up to the first
    /// poll of `/next`), which REPORT shows as `Restore Duration`. Absent (an agent before 1.6):
    /// false.
    #[serde(default)]
    pub restored: bool,
    /// From the event's delivery (for a cold start: the end of the init) to the runtime's answer
    /// or the invocation's end.
    pub duration_ms: f64,
    /// The container's memory limit, in MB.
    pub memory_limit_mb: u32,
    /// Peak memory of the container during this invocation (from its cgroup), in MB; for a
    /// container's first invocation, since the container started (init included).
    pub max_memory_used_mb: u64,
    /// CPU time the container used during this invocation, in ms (first invocation: init
    /// included).
    pub cpu_time_ms: f64,
    /// Time the container was throttled by its CPU quota during this invocation, in ms.
    pub cpu_throttled_ms: f64,
    /// The runtime's stdout and stderr (interleaved as written) during the invocation, the
    /// init's output included on the first one: the last 64 KiB, as text. The host adds the
    /// START, END and REPORT lines.
    pub logs: String,
}

/// How an invocation ended. After `InitError`, `Timeout`, `OutOfMemory` and `ExitError` the agent
/// has destroyed the container: the host must not use it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvokeOutcome {
    /// The runtime posted a response.
    Ok {
        /// The response, as the runtime posted it (base64 on the wire).
        #[serde(with = "base64_bytes")]
        payload: Bytes,
    },
    /// The runtime posted an error for the invocation; `payload` is its error document.
    FunctionError {
        /// The runtime's `Lambda-Runtime-Function-Error-Type`, or `Unhandled`.
        error_type: String,
        /// The error document, as the runtime posted it (base64 on the wire).
        #[serde(with = "base64_bytes")]
        payload: Bytes,
    },
    /// The runtime failed its initialisation (`/runtime/init/error`).
    InitError {
        /// The runtime's error type, or the agent's (`Runtime.InvalidEntrypoint`, ...).
        error_type: String,
        /// The error document (base64 on the wire); may be empty.
        #[serde(with = "base64_bytes")]
        payload: Bytes,
    },
    /// The deadline passed; the environment was killed.
    Timeout,
    /// The container hit its memory limit.
    OutOfMemory,
    /// The runtime exited before responding.
    ExitError(ExitStatus),
}

/// How a process ended: an exit code, or the signal that killed it. Both unknown when the process
/// was already reaped by someone else.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code, when the process exited.
    pub code: Option<i32>,
    /// The signal number, when a signal killed the process.
    pub signal: Option<i32>,
}

/// Why a container no longer exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoneReason {
    /// The host asked for it.
    Destroyed,
    /// Its runtime exited, as the status says.
    Exited(ExitStatus),
    /// It hit its memory limit.
    OutOfMemory,
    /// An invocation passed its deadline and the container was killed.
    Timeout,
}

/// What a VM's agent is using now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStats {
    /// Containers that exist in the VM.
    pub containers: u32,
    /// Invocations running now (not those waiting for their container's turn).
    pub invocations_in_flight: u32,
    /// Memory charged to the VM's cgroup (agent, containers and their tmpfs), in MB.
    pub memory_used_mb: u64,
}

/// Serde for [`Bytes`] as a base64 string (standard alphabet, padded).
mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use bytes::Bytes;
    use serde::{de, Deserializer, Serializer};
    use std::fmt;

    pub(super) fn serialize<S: Serializer>(
        bytes: &Bytes,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Bytes, D::Error> {
        struct Base64;

        impl de::Visitor<'_> for Base64 {
            type Value = Bytes;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base64 string")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Bytes, E> {
                STANDARD.decode(s).map(Bytes::from).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(Base64)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_follows_memory_at_1769_mb_per_vcpu_capped_at_the_vm() {
        // (memory_mb, the VM's vcpus, cpu_millis)
        let cases = [
            (128, 2, 72),
            (1024, 2, 578),
            (1769, 2, 1000),
            (3538, 2, 2000),
            (3539, 2, 2000),
            (10_240, 2, 2000),
            (2048, 1, 1000),
            (0, 2, 1),
            (1, 2, 1),
            (10_240, 0, 1000),
        ];
        for (memory_mb, vcpus, want) in cases {
            assert_eq!(
                super::cpu_millis(memory_mb, vcpus),
                want,
                "{memory_mb} MB, {vcpus} vCPUs"
            );
        }
    }
}
