//! Streamed responses on the Runtime API, over real HTTP: a runtime posts
//! `Lambda-Runtime-Function-Response-Mode: streaming` with a chunked body (and, for an error,
//! the error trailers), as lambda_runtime and Lambda's documentation do, written by hand here so
//! that every byte (chunk sizes, trailers) is the test's.
// Helpers outside #[test] fns are test code too (clippy.toml only exempts the fns themselves).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use ember_agent::runtime_api::{
    Credit, ResponseSink, RuntimeApi, RuntimeApiServer, MAX_RESPONSE_BYTES,
    MAX_STREAMED_RESPONSE_BYTES,
};
use ember_protocol::{AgentMessage, Invocation, InvokeOutcome, StreamPart, STREAM_WINDOW};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

fn invocation(request_id: &str) -> Invocation {
    Invocation {
        request_id: request_id.into(),
        payload: Bytes::from_static(b"{}"),
        deadline_ms: u64::MAX / 2,
        invoked_function_arn: "arn:aws:lambda:us-east-1:123456789012:function:s".into(),
        trace_id: None,
        client_context: None,
        cognito_identity: None,
    }
}

struct Setup {
    server: RuntimeApiServer,
    outcome: JoinHandle<InvokeOutcome>,
    parts: mpsc::UnboundedReceiver<AgentMessage>,
    credit: Credit,
}

/// A Runtime API with invocation `r1` queued, streamed to a sink (`streamed`) or not, and
/// already handed to the runtime's `/next`.
async fn setup(streamed: bool) -> Setup {
    let server = RuntimeApiServer::bind(RuntimeApi::new("c1")).await.unwrap();
    let (tx, parts) = mpsc::unbounded_channel();
    let credit = Credit::new();
    let sink = streamed.then(|| ResponseSink::new(7, tx, &credit));
    let api = server.api().clone();
    let outcome = tokio::spawn(async move { api.invoke_with(invocation("r1"), sink).await });
    let next = format!(
        "http://{}/2018-06-01/runtime/invocation/next",
        server.runtime_api_address()
    );
    let event = reqwest::get(next).await.unwrap();
    assert_eq!(event.headers()["lambda-runtime-aws-request-id"], "r1");
    Setup {
        server,
        outcome,
        parts,
        credit,
    }
}

/// Opens a streamed `/response` of `r1`: the head, sent; chunks and the end are the caller's.
async fn open_stream(server: &RuntimeApiServer) -> TcpStream {
    let mut tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let head = "POST /2018-06-01/runtime/invocation/r1/response HTTP/1.1\r\n\
                Host: localhost\r\n\
                Content-Type: text/event-stream\r\n\
                Lambda-Runtime-Function-Response-Mode: streaming\r\n\
                Transfer-Encoding: chunked\r\n\
                Trailer: Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body\r\n\
                \r\n";
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp
}

async fn write_chunk(tcp: &mut TcpStream, data: &[u8]) {
    tcp.write_all(format!("{:x}\r\n", data.len()).as_bytes())
        .await
        .unwrap();
    tcp.write_all(data).await.unwrap();
    tcp.write_all(b"\r\n").await.unwrap();
}

/// Ends the body (with `trailers`, `Name: value` lines) and returns the answer's status line.
async fn finish(tcp: &mut TcpStream, trailers: &str) -> String {
    tcp.write_all(format!("0\r\n{trailers}\r\n").as_bytes())
        .await
        .unwrap();
    status_line(tcp).await
}

async fn status_line(tcp: &mut TcpStream) -> String {
    let mut answer = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut answer))
        .await
        .expect("the Runtime API answers")
        .unwrap();
    String::from_utf8_lossy(&answer[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

async fn next_part(parts: &mut mpsc::UnboundedReceiver<AgentMessage>) -> StreamPart {
    match tokio::time::timeout(Duration::from_secs(5), parts.recv()).await {
        Ok(Some(AgentMessage::Stream { id: 7, part })) => part,
        other => panic!("expected a part of stream 7, got {other:?}"),
    }
}

/// The chunk bytes of the parts queued now.
fn queued_bytes(parts: &mut mpsc::UnboundedReceiver<AgentMessage>) -> usize {
    let mut total = 0;
    while let Ok(message) = parts.try_recv() {
        if let AgentMessage::Stream {
            part: StreamPart::Chunk { data },
            ..
        } = message
        {
            total += data.len();
        }
    }
    total
}

#[tokio::test]
async fn chunks_are_forwarded_as_they_arrive_and_the_end_answers_ok() {
    let mut s = setup(true).await;
    let mut tcp = open_stream(&s.server).await;
    assert_eq!(
        next_part(&mut s.parts).await,
        StreamPart::Head {
            content_type: Some("text/event-stream".into())
        }
    );
    for i in 0..3 {
        let data = format!("data: {i}\n\n");
        write_chunk(&mut tcp, data.as_bytes()).await;
        // Each chunk is forwarded before the next is written: nothing waits for the end.
        assert_eq!(
            next_part(&mut s.parts).await,
            StreamPart::Chunk {
                data: Bytes::from(data)
            }
        );
    }
    assert!(
        !s.outcome.is_finished(),
        "the invocation runs until the body ends"
    );
    assert!(finish(&mut tcp, "").await.contains("202"));
    assert_eq!(
        s.outcome.await.unwrap(),
        InvokeOutcome::Ok {
            payload: Bytes::new()
        }
    );
}

#[tokio::test]
async fn error_trailers_fail_the_invocation_after_its_chunks() {
    let mut s = setup(true).await;
    let mut tcp = open_stream(&s.server).await;
    next_part(&mut s.parts).await;
    write_chunk(&mut tcp, b"partial").await;
    // {"errorMessage":"boom","errorType":"Oops"}
    let body = "eyJlcnJvck1lc3NhZ2UiOiJib29tIiwiZXJyb3JUeXBlIjoiT29wcyJ9";
    let trailers = format!(
        "Lambda-Runtime-Function-Error-Type: Oops\r\nLambda-Runtime-Function-Error-Body: {body}\r\n"
    );
    assert!(finish(&mut tcp, &trailers).await.contains("202"));
    assert_eq!(
        next_part(&mut s.parts).await,
        StreamPart::Chunk {
            data: Bytes::from_static(b"partial")
        }
    );
    assert_eq!(
        s.outcome.await.unwrap(),
        InvokeOutcome::FunctionError {
            error_type: "Oops".into(),
            payload: Bytes::from_static(br#"{"errorMessage":"boom","errorType":"Oops"}"#),
        }
    );
}

#[tokio::test]
async fn the_agent_sends_no_more_than_its_window_ahead_of_the_hosts_credit() {
    let mut s = setup(true).await;
    let mut tcp = open_stream(&s.server).await;
    next_part(&mut s.parts).await;
    let writer = tokio::spawn(async move {
        let block = vec![b'x'; 64 * 1024];
        for _ in 0..32 {
            write_chunk(&mut tcp, &block).await;
        }
        finish(&mut tcp, "").await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut received = queued_bytes(&mut s.parts);
    assert_eq!(
        received, STREAM_WINDOW,
        "a window's worth, no more, without credit"
    );
    while received < 32 * 64 * 1024 {
        s.credit.add(STREAM_WINDOW as u64);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let more = queued_bytes(&mut s.parts);
        assert!(more <= STREAM_WINDOW, "{more} bytes past one credit");
        assert!(more > 0, "a credit lets the stream go on");
        received += more;
    }
    assert!(writer.await.unwrap().contains("202"));
    assert!(matches!(s.outcome.await.unwrap(), InvokeOutcome::Ok { .. }));
}

#[tokio::test]
async fn a_stream_past_its_limit_fails_the_invocation_and_gets_413() {
    let mut s = setup(true).await;
    let mut tcp = open_stream(&s.server).await;
    next_part(&mut s.parts).await;
    let credit = s.credit.clone();
    let drain = tokio::spawn(async move {
        let mut total = 0;
        while let Some(message) = s.parts.recv().await {
            if let AgentMessage::Stream {
                part: StreamPart::Chunk { data },
                ..
            } = message
            {
                total += data.len();
                credit.add(data.len() as u64);
            }
        }
        total
    });
    let block = vec![b'y'; 1 << 20];
    for _ in 0..MAX_STREAMED_RESPONSE_BYTES / block.len() {
        write_chunk(&mut tcp, &block).await;
    }
    // One byte more than the limit: the invocation fails at once...
    tcp.write_all(b"1\r\nz\r\n").await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), s.outcome)
        .await
        .expect("the invocation fails without waiting for the body's end");
    // ...and the runtime, which may write on, gets its 413 at the end of its body.
    write_chunk(&mut tcp, &block).await;
    assert!(finish(&mut tcp, "").await.contains("413"));
    match outcome.unwrap() {
        InvokeOutcome::FunctionError {
            error_type,
            payload,
        } => {
            assert_eq!(error_type, "Function.ResponseSizeTooLarge");
            assert!(String::from_utf8_lossy(&payload).contains("20971520"));
        }
        other => panic!("{other:?}"),
    }
    s.server.shutdown().await;
    drain.abort();
}

#[tokio::test]
async fn without_a_sink_a_streamed_response_is_buffered_within_the_buffered_limit() {
    let mut s = setup(false).await;
    let mut tcp = open_stream(&s.server).await;
    write_chunk(&mut tcp, b"hello ").await;
    write_chunk(&mut tcp, b"world").await;
    assert!(finish(&mut tcp, "").await.contains("202"));
    assert_eq!(
        s.outcome.await.unwrap(),
        InvokeOutcome::Ok {
            payload: Bytes::from_static(b"hello world")
        }
    );
    assert!(s.parts.try_recv().is_err(), "nothing streamed");

    let s = setup(false).await;
    let mut tcp = open_stream(&s.server).await;
    let block = vec![b'x'; 1 << 20];
    for _ in 0..=MAX_RESPONSE_BYTES / block.len() {
        write_chunk(&mut tcp, &block).await;
    }
    assert!(finish(&mut tcp, "").await.contains("413"));
    assert!(matches!(
        s.outcome.await.unwrap(),
        InvokeOutcome::FunctionError { error_type, .. } if error_type == "Function.ResponseSizeTooLarge"
    ));
}

#[tokio::test]
async fn a_second_answer_while_streaming_is_refused() {
    let mut s = setup(true).await;
    let mut tcp = open_stream(&s.server).await;
    next_part(&mut s.parts).await;
    let url = format!(
        "http://{}/2018-06-01/runtime/invocation/r1/response",
        s.server.runtime_api_address()
    );
    let other = reqwest::Client::new()
        .post(url)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 400);
    assert!(finish(&mut tcp, "").await.contains("202"));
    assert!(matches!(s.outcome.await.unwrap(), InvokeOutcome::Ok { .. }));
}
