//! The frame codec: a `u32` big-endian length prefix, then a JSON message.

use std::fmt;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use futures_util::{Sink, SinkExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder};

use crate::{AgentMessage, HostMessage, ProtocolError};

/// The largest frame body either side accepts: a 6 MB payload base64-encodes to 8 MB, plus room
/// for the envelope.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

const PREFIX_LEN: usize = 4;

/// Writes `first`, then every message already waiting (`waiting` hands them over without
/// waiting for more), and flushes once: for small messages, one write and one wake-up of the
/// other side per burst (the codec's buffer also flushes on its own past its backpressure
/// boundary). Stops after a message that `ends` the stream, and says whether it wrote one.
///
/// Both ends write with it: the host's [`Connection`](crate::Connection) and the agent's loop.
pub async fn write_waiting<S, M>(
    sink: &mut S,
    first: M,
    mut waiting: impl FnMut() -> Option<M>,
    ends: impl Fn(&M) -> bool,
) -> Result<bool, S::Error>
where
    S: Sink<M> + Unpin,
{
    let mut ended = ends(&first);
    sink.feed(first).await?;
    while !ended {
        let Some(message) = waiting() else { break };
        ended = ends(&message);
        sink.feed(message).await?;
    }
    sink.flush().await?;
    Ok(ended)
}

/// Decodes `In` and encodes `Out`, for use with [`tokio_util::codec::Framed`].
pub struct Codec<In, Out> {
    max_frame_len: usize,
    _messages: PhantomData<fn(Out) -> In>,
}

/// The host's side: reads what the agent sends, writes what the host sends.
pub type HostCodec = Codec<AgentMessage, HostMessage>;
/// The agent's side.
pub type AgentCodec = Codec<HostMessage, AgentMessage>;

impl<In, Out> Codec<In, Out> {
    /// A codec with the protocol's frame limit, [`MAX_FRAME_LEN`].
    pub fn new() -> Self {
        Self::with_max_frame_len(MAX_FRAME_LEN)
    }

    /// A codec with a smaller (or larger) frame limit than [`MAX_FRAME_LEN`]. Lengths above
    /// `u32::MAX` cannot be framed, so the limit is capped there.
    pub fn with_max_frame_len(max_frame_len: usize) -> Self {
        Self {
            max_frame_len: max_frame_len.min(u32::MAX as usize),
            _messages: PhantomData,
        }
    }
}

impl<In, Out> Default for Codec<In, Out> {
    fn default() -> Self {
        Self::new()
    }
}

impl<In, Out> fmt::Debug for Codec<In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codec")
            .field("max_frame_len", &self.max_frame_len)
            .finish()
    }
}

impl<In: DeserializeOwned, Out> Decoder for Codec<In, Out> {
    type Item = In;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, ProtocolError> {
        let Some(prefix) = src.get(..PREFIX_LEN) else {
            return Ok(None);
        };
        let mut len_bytes = [0; PREFIX_LEN];
        len_bytes.copy_from_slice(prefix);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > self.max_frame_len {
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        if src.len() < PREFIX_LEN + len {
            src.reserve(PREFIX_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(PREFIX_LEN);
        let body = src.split_to(len);
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(ProtocolError::Malformed)
    }
}

impl<In, Out: Serialize> Encoder<Out> for Codec<In, Out> {
    type Error = ProtocolError;

    fn encode(&mut self, message: Out, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let start = dst.len();
        dst.put_u32(0);
        if let Err(err) = serde_json::to_writer(dst.writer(), &message) {
            dst.truncate(start);
            return Err(ProtocolError::Encode(err));
        }
        let len = dst.len() - start - PREFIX_LEN;
        if len > self.max_frame_len {
            dst.truncate(start);
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        // Cannot truncate: `len <= max_frame_len <= u32::MAX`.
        let prefix = (len as u32).to_be_bytes();
        dst[start..start + PREFIX_LEN].copy_from_slice(&prefix);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::*;

    fn function() -> FunctionSpec {
        FunctionSpec {
            name: "hello".into(),
            arn: "arn:aws:lambda:us-east-1:123456789012:function:hello".into(),
            version: "$LATEST".into(),
            handler: "app.handler".into(),
            runtime: "python3.12".into(),
            region: "us-east-1".into(),
            environment: BTreeMap::from([("GREETING".into(), "hi".into())]),
            memory_mb: 128,
            timeout_ms: 3_000,
            ephemeral_storage_mb: 512,
            code: CodeSource::Directory {
                path: "/code/abc".into(),
            },
            layers: Vec::new(),
        }
    }

    fn invocation() -> Invocation {
        Invocation {
            request_id: "8476a536-e9f4-11e8-9739-2dfe598c3fcd".into(),
            payload: Bytes::from_static(b"{\"key\":\"value\"}\x00\xff"),
            deadline_ms: 1_700_000_000_000,
            invoked_function_arn: "arn:aws:lambda:us-east-1:123456789012:function:hello".into(),
            trace_id: Some("Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Sampled=1".into()),
            client_context: Some(json!({"custom": {"a": 1}})),
            cognito_identity: None,
        }
    }

    fn result(outcome: InvokeOutcome) -> Reply {
        Reply::InvokeResult(InvokeResult {
            request_id: "r".into(),
            outcome,
            init_duration_ms: Some(12.5),
            restored: false,
            duration_ms: 1.25,
            memory_limit_mb: 128,
            max_memory_used_mb: 42,
            cpu_time_ms: 0.75,
            cpu_throttled_ms: 0.0,
            logs: "START RequestId: r\nhello\n".into(),
        })
    }

    fn host_messages() -> Vec<HostMessage> {
        let requests = [
            Request::CreateContainer(CreateContainer {
                container_id: "c1".into(),
                function: function(),
                uid: 1000,
                gid: 1000,
                cpu_millis: 72,
                pids_max: 64,
                freeze_idle: true,
                snap_start: false,
                credentials: None,
                egress: crate::Egress::Allow,
            }),
            Request::CreateContainer(CreateContainer {
                container_id: "c2".into(),
                function: FunctionSpec {
                    code: CodeSource::Stored {
                        sha256: "ab".repeat(32),
                    },
                    layers: Vec::new(),
                    ..function()
                },
                uid: 1001,
                gid: 1001,
                cpu_millis: 1769,
                pids_max: 1024,
                freeze_idle: false,
                snap_start: false,
                credentials: Some(crate::SessionCredentials {
                    access_key_id: "ASIAEXAMPLEEXAMPLE23".into(),
                    secret_access_key: "secret".into(),
                    session_token: "token".into(),
                }),
                egress: crate::Egress::Deny,
            }),
            Request::PutCode(PutCode {
                sha256: "ab".repeat(32),
                offset: 4 << 20,
                total_len: (4 << 20) + 4,
                chunk: Bytes::from_static(b"PK\x03\x04"),
            }),
            Request::Invoke(Invoke {
                container_id: "c1".into(),
                invocation: invocation(),
            }),
            Request::AwaitInit {
                container_id: "c1".into(),
                timeout_ms: 10_000,
            },
            Request::DestroyContainer {
                container_id: "c1".into(),
            },
            Request::PrepareTemplate {
                runtime: "python3.12".into(),
            },
            Request::DropSnapTemplates {
                function_arn: "arn:aws:lambda:us-east-1:000000000000:function:f".into(),
                version: Some("3".into()),
            },
            Request::Stats,
            Request::Shutdown,
        ];
        let mut messages = vec![
            HostMessage::HelloAck {
                protocol_version: ProtocolVersion::CURRENT,
            },
            HostMessage::Refused {
                reason: "no".into(),
            },
        ];
        messages.extend(requests.into_iter().enumerate().map(|(id, request)| {
            HostMessage::Request {
                id: id as u64,
                request,
            }
        }));
        messages
    }

    fn agent_messages() -> Vec<AgentMessage> {
        let exited = ExitStatus {
            code: Some(1),
            signal: None,
        };
        let replies = [
            Reply::CodeStored {
                sha256: "ab".repeat(32),
                complete: false,
            },
            Reply::ContainerCreated(ContainerCreated {
                container_id: "c1".into(),
                runtime_api: "127.0.0.1:9001".into(),
            }),
            Reply::Initialized {
                container_id: "c1".into(),
                init_duration_ms: 81.5,
            },
            result(InvokeOutcome::Ok {
                payload: Bytes::from_static(b"\"ok\""),
            }),
            result(InvokeOutcome::FunctionError {
                error_type: "Unhandled".into(),
                payload: Bytes::from_static(b"{\"errorMessage\":\"boom\"}"),
            }),
            result(InvokeOutcome::InitError {
                error_type: "Runtime.ImportModuleError".into(),
                payload: Bytes::new(),
            }),
            result(InvokeOutcome::Timeout),
            result(InvokeOutcome::OutOfMemory),
            result(InvokeOutcome::ExitError(exited)),
            Reply::ContainerGone {
                container_id: "c1".into(),
                reason: GoneReason::Destroyed,
            },
            Reply::TemplateReady {
                runtime: "python3.12".into(),
                rss_mb: 19,
            },
            Reply::SnapTemplatesDropped {
                dropped: 1,
                pending: 0,
            },
            Reply::Stats(AgentStats {
                containers: 2,
                invocations_in_flight: 1,
                memory_used_mb: 300,
            }),
            Reply::ShuttingDown,
            Reply::Error {
                message: "no such container".into(),
            },
        ];
        let mut messages = vec![AgentMessage::Hello {
            protocol_version: ProtocolVersion::CURRENT,
            agent_version: "0.1.0".into(),
        }];
        messages.extend(
            replies
                .into_iter()
                .enumerate()
                .map(|(id, reply)| AgentMessage::Reply {
                    id: u64::MAX - id as u64,
                    reply,
                }),
        );
        for reason in [
            GoneReason::Exited(exited),
            GoneReason::OutOfMemory,
            GoneReason::Timeout,
        ] {
            messages.push(AgentMessage::Event(Event::ContainerGone {
                container_id: "c2".into(),
                reason,
            }));
        }
        messages
    }

    /// Encodes every message into one buffer, then decodes them back in order.
    fn round_trip<M>(messages: Vec<M>)
    where
        M: Serialize + DeserializeOwned + PartialEq + fmt::Debug + Clone,
    {
        let mut codec = Codec::<M, M>::new();
        let mut buf = BytesMut::new();
        for message in messages.clone() {
            codec.encode(message, &mut buf).unwrap();
        }
        for expected in messages {
            assert_eq!(codec.decode(&mut buf).unwrap(), Some(expected));
        }
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn every_host_message_round_trips() {
        round_trip(host_messages());
    }

    #[test]
    fn a_container_request_of_a_1_0_host_does_not_freeze() {
        let create = host_messages()
            .into_iter()
            .find_map(|m| match m {
                HostMessage::Request {
                    request: Request::CreateContainer(create),
                    ..
                } if create.freeze_idle => Some(create),
                _ => None,
            })
            .unwrap();
        let mut json = serde_json::to_value(&create).unwrap();
        json.as_object_mut().unwrap().remove("freeze_idle");
        let old: CreateContainer = serde_json::from_value(json).unwrap();
        assert!(!old.freeze_idle);
        assert_eq!(
            old,
            CreateContainer {
                freeze_idle: false,
                snap_start: false,
                ..create
            }
        );
    }

    #[test]
    fn every_agent_message_round_trips() {
        round_trip(agent_messages());
    }

    /// Caught by the `agent_protocol` fuzz target (seed `crash-float-roundtrip`): serde_json's
    /// default float parsing is one unit in the last place off for some values, so a measurement
    /// or a number in a caller's client context changed on its way through a frame.
    #[test]
    fn floats_cross_a_frame_unchanged() {
        let mut reply = result(InvokeOutcome::Timeout);
        if let Reply::InvokeResult(r) = &mut reply {
            r.duration_ms = 1.0715660391465826e-75;
            r.cpu_time_ms = -1.603964615428183e143;
        }
        round_trip(vec![AgentMessage::Reply { id: 1, reply }]);
        let context = json!({"custom": {"x": -1.81996730402717e-179}});
        let invoke = Invoke {
            container_id: "c".into(),
            invocation: Invocation {
                client_context: Some(context),
                ..invocation()
            },
        };
        round_trip(vec![HostMessage::Request {
            id: 1,
            request: Request::Invoke(invoke),
        }]);
    }

    #[test]
    fn payloads_travel_as_base64() {
        let mut buf = BytesMut::new();
        HostCodec::new()
            .encode(
                HostMessage::Request {
                    id: 7,
                    request: Request::Invoke(Invoke {
                        container_id: "c1".into(),
                        invocation: Invocation {
                            payload: Bytes::from_static(b"hi"),
                            ..invocation()
                        },
                    }),
                },
                &mut buf,
            )
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&buf[PREFIX_LEN..]).unwrap();
        assert_eq!(
            json["request"]["request"]["invoke"]["invocation"]["payload"],
            "aGk="
        );
        assert_eq!(json["request"]["id"], 7);
    }

    #[test]
    fn a_frame_split_across_reads_waits_for_its_end() {
        let mut encoded = BytesMut::new();
        let message = AgentMessage::Reply {
            id: 3,
            reply: Reply::ShuttingDown,
        };
        AgentCodec::new()
            .encode(message.clone(), &mut encoded)
            .unwrap();

        let mut codec = HostCodec::new();
        let mut buf = BytesMut::new();
        let (last, init) = encoded.split_last().unwrap();
        for byte in init {
            buf.put_u8(*byte);
            assert_eq!(codec.decode(&mut buf).unwrap(), None);
        }
        buf.put_u8(*last);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(message));
    }

    #[test]
    fn an_oversize_prefix_is_rejected_before_its_body_arrives() {
        let mut buf = BytesMut::from(&((MAX_FRAME_LEN + 1) as u32).to_be_bytes()[..]);
        let err = HostCodec::new().decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::FrameTooLarge { len, max: MAX_FRAME_LEN } if len == MAX_FRAME_LEN + 1
        ));
    }

    #[test]
    fn an_oversize_message_is_not_encoded() {
        let mut codec = AgentCodec::with_max_frame_len(1024);
        let mut buf = BytesMut::from(&b"earlier"[..]);
        let err = codec
            .encode(
                AgentMessage::Reply {
                    id: 1,
                    reply: Reply::Error {
                        message: "x".repeat(2048),
                    },
                },
                &mut buf,
            )
            .unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::FrameTooLarge { max: 1024, .. }
        ));
        assert_eq!(
            &buf[..],
            b"earlier",
            "a failed encode leaves the buffer as it was"
        );
    }

    #[test]
    fn a_six_megabyte_payload_fits_in_a_frame() {
        let mut buf = BytesMut::new();
        let payload = Bytes::from(vec![0xA5; 6 * 1024 * 1024]);
        let message = HostMessage::Request {
            id: 1,
            request: Request::Invoke(Invoke {
                container_id: "c1".into(),
                invocation: Invocation {
                    payload,
                    ..invocation()
                },
            }),
        };
        HostCodec::new().encode(message.clone(), &mut buf).unwrap();
        assert_eq!(AgentCodec::new().decode(&mut buf).unwrap(), Some(message));
    }

    fn frame(body: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_u32(body.len() as u32);
        buf.put_slice(body);
        buf
    }

    #[test]
    fn well_framed_garbage_is_malformed() {
        for body in [
            &b""[..],
            b"{}",
            b"null",
            b"{\"request\":{\"id\":-1,\"request\":\"stats\"}}",
            b"{\"request\":{\"id\":1,\"request\":\"reboot\"}}",
            b"{\"request\":{\"id\":1,\"request\":{\"invoke\":{\"container_id\":\"c\",\"invocation\":{\"request_id\":\"r\",\"payload\":\"not base64!\",\"deadline_ms\":1,\"invoked_function_arn\":\"a\",\"trace_id\":null,\"client_context\":null,\"cognito_identity\":null}}}}}",
        ] {
            let err = AgentCodec::new().decode(&mut frame(body)).unwrap_err();
            assert!(matches!(err, ProtocolError::Malformed(_)), "{body:?}");
        }
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut host = HostCodec::with_max_frame_len(256);
            let mut agent = AgentCodec::with_max_frame_len(256);
            for decode in [
                &mut |buf: &mut BytesMut| host.decode(buf).map(|m| m.is_some()),
                &mut |buf: &mut BytesMut| agent.decode(buf).map(|m| m.is_some()),
            ] as [&mut dyn FnMut(&mut BytesMut) -> Result<bool, ProtocolError>; 2] {
                let mut buf = BytesMut::from(&bytes[..]);
                // Decode until the codec asks for more bytes or fails; it must not panic or loop.
                while let Ok(true) = decode(&mut buf) {}
            }
        }

        #[test]
        fn any_length_over_the_limit_is_rejected(len in (MAX_FRAME_LEN as u32 + 1)..=u32::MAX, tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = BytesMut::new();
            buf.put_u32(len);
            buf.put_slice(&tail);
            let is_too_large = matches!(
                HostCodec::new().decode(&mut buf),
                Err(ProtocolError::FrameTooLarge { .. })
            );
            prop_assert!(is_too_large);
        }

        #[test]
        fn a_frame_that_is_not_json_is_rejected(
            first in any::<u8>().prop_filter("could start JSON", |b| !b" \t\r\n{\"".contains(b)),
            rest in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut body = vec![first];
            body.extend(rest);
            let is_malformed = matches!(
                AgentCodec::new().decode(&mut frame(&body)),
                Err(ProtocolError::Malformed(_))
            );
            prop_assert!(is_malformed);
        }

        #[test]
        fn invocations_round_trip(
            request_id in "[a-z0-9-]{1,40}",
            payload in proptest::collection::vec(any::<u8>(), 0..2048),
            deadline_ms in any::<u64>(),
            trace_id in proptest::option::of(".*"),
        ) {
            let message = HostMessage::Request {
                id: deadline_ms,
                request: Request::Invoke(Invoke {
                    container_id: "c".into(),
                    invocation: Invocation {
                        request_id,
                        payload: Bytes::from(payload),
                        deadline_ms,
                        trace_id,
                        ..invocation()
                    },
                }),
            };
            let mut buf = BytesMut::new();
            HostCodec::new().encode(message.clone(), &mut buf).unwrap();
            prop_assert_eq!(AgentCodec::new().decode(&mut buf).unwrap(), Some(message));
        }
    }
}
