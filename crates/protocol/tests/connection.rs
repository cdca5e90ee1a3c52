//! The host's `Connection` against a scripted agent, over a real unix socket pair.
// Helpers outside #[test] fns are test code too (clippy.toml only exempts the fns themselves).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use ember_protocol::{
    agent_handshake, AgentCodec, AgentMessage, AgentStats, CodeSource, Connection,
    ContainerCreated, CreateContainer, Event, ExitStatus, FunctionSpec, GoneReason, HostCodec,
    HostMessage, Invocation, Invoke, InvokeOutcome, InvokeResult, ProtocolError, ProtocolVersion,
    Reply, Request, MAX_CODE_CHUNK,
};
use futures_util::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

type Agent = Framed<UnixStream, AgentCodec>;

/// A connected host and a scripted agent that has completed the handshake.
async fn connect() -> (
    Connection,
    tokio::sync::mpsc::UnboundedReceiver<Event>,
    Agent,
) {
    let (host_io, agent_io) = UnixStream::pair().unwrap();
    let agent = tokio::spawn(async move {
        let mut agent = Framed::new(agent_io, AgentCodec::new());
        let version = agent_handshake(&mut agent, "test-agent").await.unwrap();
        assert_eq!(version, ProtocolVersion::CURRENT);
        agent
    });
    let (connection, events) = Connection::handshake(host_io).await.unwrap();
    assert_eq!(connection.agent().agent_version, "test-agent");
    (connection, events, agent.await.unwrap())
}

async fn next_request(agent: &mut Agent) -> (u64, Request) {
    match agent.next().await.unwrap().unwrap() {
        HostMessage::Request { id, request } => (id, request),
        other => panic!("expected a request, got {other:?}"),
    }
}

fn invoke(request_id: &str) -> Invoke {
    Invoke {
        container_id: "c1".into(),
        invocation: Invocation {
            request_id: request_id.into(),
            payload: Bytes::from_static(b"{}"),
            deadline_ms: 1,
            invoked_function_arn: "arn".into(),
            trace_id: None,
            client_context: None,
            cognito_identity: None,
        },
    }
}

fn result(request_id: &str) -> Reply {
    Reply::InvokeResult(InvokeResult {
        request_id: request_id.into(),
        outcome: InvokeOutcome::Ok {
            payload: Bytes::from(request_id.to_owned()),
        },
        init_duration_ms: None,
        restored: false,
        duration_ms: 0.5,
        memory_limit_mb: 128,
        max_memory_used_mb: 10,
        cpu_time_ms: 0.25,
        cpu_throttled_ms: 0.0,
        logs: String::new(),
    })
}

#[tokio::test]
async fn concurrent_calls_get_their_own_replies_in_any_order() {
    let (connection, _events, mut agent) = connect().await;
    let (a, b) = (invoke("a"), invoke("b"));
    let calls = async { tokio::join!(connection.invoke(a), connection.invoke(b)) };
    let agent_side = async {
        let first = next_request(&mut agent).await;
        let second = next_request(&mut agent).await;
        // Answer in reverse order of arrival.
        for (id, request) in [second, first] {
            let Request::Invoke(invoke) = request else {
                panic!("expected an invoke");
            };
            let reply = result(&invoke.invocation.request_id);
            agent.send(AgentMessage::Reply { id, reply }).await.unwrap();
        }
    };
    let ((a, b), ()) = tokio::join!(calls, agent_side);
    assert_eq!(a.unwrap().request_id, "a");
    assert_eq!(b.unwrap().request_id, "b");
}

/// A burst larger than the outbound queue, with payloads that pass the write buffer's flush
/// boundary: the writer batches what is queued into few writes, and every frame still arrives
/// whole, once, and gets its own reply.
#[tokio::test]
async fn a_burst_of_calls_is_batched_without_losing_or_mixing_frames() {
    const CALLS: usize = 300;
    let (connection, _events, mut agent) = connect().await;
    let calls = async {
        futures_util::future::join_all((0..CALLS).map(|i| {
            let mut request = invoke(&format!("r{i}"));
            request.invocation.payload = Bytes::from(format!("[\"{}\"]", "x".repeat(i * 40)));
            connection.invoke(request)
        }))
        .await
    };
    let agent_side = async {
        let mut seen = BTreeMap::new();
        for _ in 0..CALLS {
            let (id, request) = next_request(&mut agent).await;
            let Request::Invoke(invoke) = request else {
                panic!("expected an invoke");
            };
            let i: usize = invoke.invocation.request_id[1..].parse().unwrap();
            assert_eq!(
                invoke.invocation.payload.len(),
                i * 40 + 4,
                "frame {i} whole"
            );
            assert!(seen.insert(i, id).is_none(), "frame {i} twice");
            let reply = result(&invoke.invocation.request_id);
            agent.send(AgentMessage::Reply { id, reply }).await.unwrap();
        }
        seen
    };
    let (results, seen) = tokio::join!(calls, agent_side);
    assert_eq!(seen.len(), CALLS);
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap().request_id, format!("r{i}"));
    }
}

#[tokio::test]
async fn typed_calls_and_events() {
    let (connection, mut events, mut agent) = connect().await;
    let agent_side = tokio::spawn(async move {
        loop {
            let (id, request) = next_request(&mut agent).await;
            let reply = match request {
                Request::CreateContainer(create) => Reply::ContainerCreated(ContainerCreated {
                    container_id: create.container_id,
                    runtime_api: "127.0.0.1:9001".into(),
                }),
                Request::AwaitInit {
                    container_id,
                    timeout_ms,
                } => {
                    assert_eq!(timeout_ms, 10_000);
                    Reply::Initialized {
                        container_id,
                        init_duration_ms: 81.5,
                    }
                }
                Request::PrepareTemplate { runtime } => Reply::TemplateReady {
                    runtime,
                    rss_mb: 17,
                },
                Request::DropSnapTemplates {
                    function_arn,
                    version,
                } => {
                    assert_eq!(function_arn, "arn:f");
                    Reply::SnapTemplatesDropped {
                        dropped: 1,
                        pending: u32::from(version.is_none()),
                    }
                }
                Request::DestroyContainer { container_id } if container_id == "c1" => {
                    Reply::ContainerGone {
                        container_id,
                        reason: GoneReason::Destroyed,
                    }
                }
                Request::DestroyContainer { .. } => Reply::Error {
                    message: "no such container".into(),
                },
                Request::Stats => {
                    let event = Event::ContainerGone {
                        container_id: "c2".into(),
                        reason: GoneReason::Exited(ExitStatus {
                            code: None,
                            signal: Some(9),
                        }),
                    };
                    agent.send(AgentMessage::Event(event)).await.unwrap();
                    Reply::Stats(AgentStats {
                        containers: 1,
                        invocations_in_flight: 0,
                        memory_used_mb: 64,
                    })
                }
                Request::Shutdown => {
                    agent
                        .send(AgentMessage::Reply {
                            id,
                            reply: Reply::ShuttingDown,
                        })
                        .await
                        .unwrap();
                    return;
                }
                Request::Invoke(_) | Request::InvokeStream(_) | Request::PutCode(_) => {
                    unreachable!()
                }
            };
            agent.send(AgentMessage::Reply { id, reply }).await.unwrap();
        }
    });

    let created = connection
        .create_container(CreateContainer {
            container_id: "c1".into(),
            function: FunctionSpec {
                name: "f".into(),
                arn: "arn".into(),
                version: "$LATEST".into(),
                handler: "bootstrap".into(),
                runtime: "provided.al2023".into(),
                region: "us-east-1".into(),
                environment: BTreeMap::new(),
                memory_mb: 128,
                timeout_ms: 3_000,
                ephemeral_storage_mb: 512,
                code: CodeSource::Directory {
                    path: "/code".into(),
                },
                layers: Vec::new(),
            },
            uid: 1000,
            gid: 1000,
            cpu_millis: 72,
            pids_max: 64,
            freeze_idle: true,
            snap_start: false,
            credentials: None,
            egress: ember_protocol::Egress::Allow,
        })
        .await
        .unwrap();
    assert_eq!(created.runtime_api, "127.0.0.1:9001");
    assert_eq!(connection.await_init("c1", 10_000).await.unwrap(), 81.5);
    assert_eq!(connection.prepare_template("python3.12").await.unwrap(), 17);
    assert_eq!(
        connection
            .drop_snap_templates("arn:f", Some("3"))
            .await
            .unwrap(),
        (1, 0)
    );
    assert_eq!(
        connection.drop_snap_templates("arn:f", None).await.unwrap(),
        (1, 1)
    );
    assert_eq!(
        connection.destroy_container("c1").await.unwrap(),
        GoneReason::Destroyed
    );
    let err = connection.destroy_container("zz").await.unwrap_err();
    assert!(matches!(err, ProtocolError::Agent(m) if m == "no such container"));
    assert_eq!(connection.stats().await.unwrap().memory_used_mb, 64);
    let event = events.recv().await.unwrap();
    assert!(matches!(event, Event::ContainerGone { container_id, .. } if container_id == "c2"));
    connection.shutdown().await.unwrap();
    agent_side.await.unwrap();
}

#[tokio::test]
async fn put_code_sends_consecutive_chunks_until_the_agent_has_it_all() {
    let (connection, _events, mut agent) = connect().await;
    let total = 2 * MAX_CODE_CHUNK + 10;
    let package = Bytes::from((0..total).map(|i| i as u8).collect::<Vec<u8>>());
    let agent_side = tokio::spawn(async move {
        let mut received = Vec::new();
        let mut chunks = Vec::new();
        // The second upload of the same package is answered "complete" at once.
        for _ in 0..4 {
            let (id, request) = next_request(&mut agent).await;
            let Request::PutCode(put) = request else {
                panic!("expected PutCode, got {request:?}");
            };
            let complete = if chunks.len() == 3 {
                true
            } else {
                assert_eq!(put.offset, received.len() as u64);
                received.extend_from_slice(&put.chunk);
                received.len() as u64 == put.total_len
            };
            chunks.push((put.offset, put.chunk.len(), put.total_len));
            let reply = Reply::CodeStored {
                sha256: put.sha256,
                complete,
            };
            agent.send(AgentMessage::Reply { id, reply }).await.unwrap();
        }
        (received, chunks)
    });
    connection.put_code("ab", &package).await.unwrap();
    connection.put_code("ab", &package).await.unwrap();
    let (received, chunks) = agent_side.await.unwrap();
    assert_eq!(received, package);
    let total = total as u64;
    let max = MAX_CODE_CHUNK;
    assert_eq!(
        chunks,
        [
            (0, max, total),
            (max as u64, max, total),
            (2 * max as u64, 10, total),
            (0, max, total),
        ]
    );
}

#[tokio::test]
async fn calls_in_flight_fail_when_the_agent_goes_away() {
    let (connection, _events, mut agent) = connect().await;
    let call = connection.stats();
    let agent_side = async {
        next_request(&mut agent).await;
        drop(agent);
    };
    let (result, ()) = tokio::join!(call, agent_side);
    assert!(matches!(result, Err(ProtocolError::Closed)));
    assert!(matches!(
        connection.stats().await,
        Err(ProtocolError::Closed)
    ));
}

#[tokio::test]
async fn a_cancelled_call_leaves_the_connection_usable() {
    let (connection, _events, mut agent) = connect().await;
    let cancelled = tokio::time::timeout(Duration::from_millis(20), connection.stats()).await;
    assert!(cancelled.is_err());
    let (late_id, _) = next_request(&mut agent).await;
    let stats = Reply::Stats(AgentStats {
        containers: 0,
        invocations_in_flight: 0,
        memory_used_mb: 0,
    });
    // A late reply to the abandoned call is dropped; the next call gets its own.
    let agent_side = async {
        agent
            .send(AgentMessage::Reply {
                id: late_id,
                reply: Reply::ShuttingDown,
            })
            .await
            .unwrap();
        let (id, _) = next_request(&mut agent).await;
        agent
            .send(AgentMessage::Reply { id, reply: stats })
            .await
            .unwrap();
    };
    let (result, ()) = tokio::join!(connection.stats(), agent_side);
    assert_eq!(result.unwrap().containers, 0);
}

#[tokio::test]
async fn an_agent_with_another_major_version_is_refused() {
    let (host_io, agent_io) = UnixStream::pair().unwrap();
    let agent = tokio::spawn(async move {
        let mut agent = Framed::new(agent_io, AgentCodec::new());
        agent
            .send(AgentMessage::Hello {
                protocol_version: ProtocolVersion { major: 2, minor: 0 },
                agent_version: "9.9.9".into(),
            })
            .await
            .unwrap();
        let answer = agent.next().await.unwrap().unwrap();
        let closed = agent.next().await.is_none();
        (answer, closed)
    });

    let err = Connection::handshake(host_io).await.unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::VersionMismatch {
            ours: ProtocolVersion::CURRENT,
            theirs: ProtocolVersion { major: 2, minor: 0 },
        }
    ));
    assert_eq!(
        err.to_string(),
        format!(
            "protocol version 2.0 is incompatible with ours ({}): major versions differ",
            ProtocolVersion::CURRENT
        )
    );
    let (answer, closed) = agent.await.unwrap();
    let HostMessage::Refused { reason } = answer else {
        panic!("expected a refusal, got {answer:?}");
    };
    assert!(
        reason.contains("9.9.9") && reason.contains("2.0"),
        "{reason}"
    );
    assert!(closed, "the host closes after refusing");
}

#[tokio::test]
async fn a_newer_minor_version_is_accepted() {
    let (host_io, agent_io) = UnixStream::pair().unwrap();
    let agent = tokio::spawn(async move {
        let mut agent = Framed::new(agent_io, AgentCodec::new());
        let newer = ProtocolVersion {
            minor: ProtocolVersion::CURRENT.minor + 1,
            ..ProtocolVersion::CURRENT
        };
        agent
            .send(AgentMessage::Hello {
                protocol_version: newer,
                agent_version: "0.2.0".into(),
            })
            .await
            .unwrap();
        agent.next().await.unwrap().unwrap()
    });
    let (connection, _events) = Connection::handshake(host_io).await.unwrap();
    assert_eq!(
        connection.agent().protocol_version.minor,
        ProtocolVersion::CURRENT.minor + 1
    );
    assert!(matches!(
        agent.await.unwrap(),
        HostMessage::HelloAck { protocol_version } if protocol_version == ProtocolVersion::CURRENT
    ));
}

#[tokio::test]
async fn the_agent_refuses_a_host_with_another_major_version() {
    let (host_io, agent_io) = UnixStream::pair().unwrap();
    tokio::spawn(async move {
        let mut host = Framed::new(host_io, HostCodec::new());
        host.next().await;
        host.send(HostMessage::HelloAck {
            protocol_version: ProtocolVersion { major: 0, minor: 7 },
        })
        .await
        .unwrap();
    });
    let mut agent = Framed::new(agent_io, AgentCodec::new());
    let err = agent_handshake(&mut agent, "0.1.0").await.unwrap_err();
    assert!(matches!(err, ProtocolError::VersionMismatch { .. }));
}

#[tokio::test]
async fn the_agent_reports_a_refusal() {
    let (host_io, agent_io) = UnixStream::pair().unwrap();
    tokio::spawn(async move {
        let mut host = Framed::new(host_io, HostCodec::new());
        host.next().await;
        host.send(HostMessage::Refused {
            reason: "too old".into(),
        })
        .await
        .unwrap();
    });
    let mut agent = Framed::new(agent_io, AgentCodec::new());
    let err = agent_handshake(&mut agent, "0.1.0").await.unwrap_err();
    assert!(matches!(err, ProtocolError::Refused(reason) if reason == "too old"));
}

#[tokio::test]
async fn garbage_instead_of_hello_is_an_error() {
    use tokio::io::AsyncWriteExt;
    let (host_io, mut agent_io) = UnixStream::pair().unwrap();
    agent_io
        .write_all(b"\xff\xff\xff\xffGET / HTTP/1.1\r\n")
        .await
        .unwrap();
    let err = Connection::handshake(host_io).await.unwrap_err();
    assert!(matches!(err, ProtocolError::FrameTooLarge { .. }), "{err}");
}

#[tokio::test]
async fn a_streamed_invocation_yields_its_parts_then_its_result_and_credits_what_it_read() {
    use ember_protocol::StreamPart;
    let (connection, _events, mut agent) = connect().await;
    let mut stream = connection.invoke_stream(invoke("s")).await.unwrap();
    let (id, request) = next_request(&mut agent).await;
    assert!(matches!(request, Request::InvokeStream(_)), "{request:?}");
    let chunk = |data: &'static [u8]| StreamPart::Chunk {
        data: Bytes::from_static(data),
    };
    let parts = [
        StreamPart::Head {
            content_type: Some("text/plain".into()),
        },
        chunk(b"hello "),
        chunk(b"world"),
    ];
    for part in parts.clone() {
        agent.send(AgentMessage::Stream { id, part }).await.unwrap();
    }
    // A part of another call's stream is not this one's.
    agent
        .send(AgentMessage::Stream {
            id: id + 100,
            part: chunk(b"stray"),
        })
        .await
        .unwrap();
    agent
        .send(AgentMessage::Reply {
            id,
            reply: result("s"),
        })
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(part) = stream.next().await {
        got.push(part);
    }
    assert_eq!(got, parts);
    assert_eq!(stream.result().await.unwrap().request_id, "s");
    // What was handed on was credited (chunks only, the last one on the call after it).
    let mut credited = 0;
    while credited < 11 {
        match tokio::time::timeout(Duration::from_secs(5), agent.next()).await {
            Ok(Some(Ok(HostMessage::StreamCredit {
                id: credit_id,
                bytes,
            }))) => {
                assert_eq!(credit_id, id);
                credited += bytes;
            }
            other => panic!("expected a credit, got {other:?}"),
        }
    }
    assert_eq!(credited, 11);
}

#[tokio::test]
async fn a_streamed_invocation_fails_when_the_agent_goes_away() {
    let (connection, _events, mut agent) = connect().await;
    let mut stream = connection.invoke_stream(invoke("s")).await.unwrap();
    next_request(&mut agent).await;
    drop(agent);
    assert_eq!(stream.next().await, None);
    assert!(matches!(stream.result().await, Err(ProtocolError::Closed)));
}
