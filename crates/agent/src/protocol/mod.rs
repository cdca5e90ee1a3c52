//! The host <-> agent protocol: message types, the frame codec and the host's client.
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

mod codec;
mod connection;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use codec::{AgentCodec, Codec, HostCodec, MAX_FRAME_LEN};
pub use connection::{agent_handshake, AgentInfo, Connection};

/// Errors of the agent protocol, on either side.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("i/o error on the agent connection")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("malformed frame")]
    Malformed(#[source] serde_json::Error),
    #[error("cannot encode message")]
    Encode(#[source] serde_json::Error),
    #[error("protocol version {theirs} is incompatible with ours ({ours}): major versions differ")]
    VersionMismatch {
        ours: ProtocolVersion,
        theirs: ProtocolVersion,
    },
    #[error("handshake refused by the host: {0}")]
    Refused(String),
    #[error("unexpected message during handshake")]
    UnexpectedHandshake,
    #[error("connection closed")]
    Closed,
    #[error("agent failed the request: {0}")]
    Agent(String),
    #[error("unexpected reply to {0}")]
    UnexpectedReply(&'static str),
}

/// A protocol version. Peers with the same major version understand each other; a minor bump only
/// adds optional fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolVersion {
    pub major: u16,
    pub minor: u16,
}

impl ProtocolVersion {
    /// The version this build speaks.
    pub const CURRENT: Self = Self { major: 1, minor: 0 };

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
        protocol_version: ProtocolVersion,
    },
    /// Refuses the agent's Hello; the host closes the connection after it.
    Refused {
        reason: String,
    },
    Request {
        id: u64,
        request: Request,
    },
}

/// Every frame the agent sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentMessage {
    /// The agent's first frame, sent once it can serve requests.
    Hello {
        protocol_version: ProtocolVersion,
        agent_version: String,
    },
    /// The answer to the [`HostMessage::Request`] with the same `id`.
    Reply { id: u64, reply: Reply },
    /// Something the host did not ask about.
    Event(Event),
}

/// What the host asks of the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Create a container and start its runtime. Answered by [`Reply::ContainerCreated`].
    CreateContainer(CreateContainer),
    /// Run one invocation in a container. Answered by [`Reply::InvokeResult`].
    Invoke(Invoke),
    /// Kill a container and free its resources. Answered by [`Reply::ContainerGone`].
    DestroyContainer { container_id: String },
    /// Answered by [`Reply::Stats`].
    Stats,
    /// Destroy every container and exit. Answered by [`Reply::ShuttingDown`].
    Shutdown,
}

/// What the agent answers. Any request may instead be answered by [`Reply::Error`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    ContainerCreated(ContainerCreated),
    InvokeResult(InvokeResult),
    ContainerGone {
        container_id: String,
        reason: GoneReason,
    },
    Stats(AgentStats),
    ShuttingDown,
    /// The request could not be carried out (unknown container, no resources, ...).
    Error {
        message: String,
    },
}

/// Unsolicited news from the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A container ended without being asked to (its runtime exited, or it was OOM-killed while idle).
    ContainerGone {
        container_id: String,
        reason: GoneReason,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateContainer {
    pub container_id: String,
    pub function: FunctionSpec,
    /// The unprivileged user the runtime runs as.
    pub uid: u32,
    pub gid: u32,
}

/// The function version a container runs: everything the agent needs to set up its environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionSpec {
    pub name: String,
    pub arn: String,
    /// `$LATEST` or a published version number.
    pub version: String,
    pub handler: String,
    /// A Lambda runtime identifier, e.g. `python3.12` or `provided.al2023`.
    pub runtime: String,
    pub region: String,
    /// The function's own environment variables.
    pub environment: BTreeMap<String, String>,
    pub memory_mb: u32,
    pub timeout_ms: u64,
    pub ephemeral_storage_mb: u32,
    pub code: CodeSource,
}

/// Where the function code comes from; it is mounted read-only at `/var/task`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeSource {
    /// An extracted directory already visible inside the VM (bind mount, virtio-fs).
    Directory { path: PathBuf },
    /// A zip archive carried in the message, for backends that share no filesystem with the host.
    /// Bounded by [`MAX_FRAME_LEN`].
    Zip {
        #[serde(with = "base64_bytes")]
        archive: Bytes,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerCreated {
    pub container_id: String,
    /// The container's `AWS_LAMBDA_RUNTIME_API` (`host:port`).
    pub runtime_api: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invoke {
    pub container_id: String,
    pub invocation: Invocation,
}

/// One event for a runtime, as the Lambda Runtime API hands it out on `/invocation/next`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    pub request_id: String,
    #[serde(with = "base64_bytes")]
    pub payload: Bytes,
    /// Unix epoch milliseconds.
    pub deadline_ms: u64,
    pub invoked_function_arn: String,
    /// The X-Ray tracing header. AWS always sends one; the host should too.
    pub trace_id: Option<String>,
    /// The client context (already decoded from `X-Amz-Client-Context`'s base64).
    pub client_context: Option<serde_json::Value>,
    pub cognito_identity: Option<serde_json::Value>,
}

/// How an invocation ended, with what the agent measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvokeResult {
    pub request_id: String,
    pub outcome: InvokeOutcome,
    /// Set on the invocation that waited for the runtime's init (a cold start).
    pub init_duration_ms: Option<f64>,
    pub duration_ms: f64,
    pub max_memory_used_mb: u64,
    /// The tail of the invocation's log, as text.
    pub logs: String,
}

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvokeOutcome {
    /// The runtime posted a response.
    Ok {
        #[serde(with = "base64_bytes")]
        payload: Bytes,
    },
    /// The runtime posted an error for the invocation; `payload` is its error document.
    FunctionError {
        error_type: String,
        #[serde(with = "base64_bytes")]
        payload: Bytes,
    },
    /// The runtime failed its initialisation (`/runtime/init/error`).
    InitError {
        error_type: String,
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
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// Why a container no longer exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoneReason {
    /// The host asked for it.
    Destroyed,
    Exited(ExitStatus),
    OutOfMemory,
    Timeout,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStats {
    pub containers: u32,
    pub invocations_in_flight: u32,
    /// Memory charged to the VM's containers, in MB.
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
