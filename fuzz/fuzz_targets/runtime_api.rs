//! Fuzzes the Lambda Runtime API as the agent serves it (`ember_agent::runtime_api::router`):
//! the input is the byte stream a runtime sends on one connection, served by hyper over an
//! in-memory pipe, with one invocation queued.
//!
//! Invariants: the server answers with well-formed HTTP/1.1 responses; the invocation is handed
//! out at most once, with its own request id, deadline and payload; at most one verdict (a 202
//! for `/response`, `/error` or `/init/error`) is accepted, and the invocation is resolved if and
//! only if one was; every JSON error body names an `errorType` and an `errorMessage`.
#![no_main]

use std::time::Duration;

use bytes::Bytes;
use ember_agent::runtime_api::{router, RuntimeApi};
use ember_protocol::{Invocation, InvokeOutcome};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REQUEST_ID: &str = "8476a536-e9f4-11e8-9739-2dfe598c3fcd";
const PAYLOAD: &[u8] = br#"{"fuzz":true}"#;
const DEADLINE_MS: u64 = 1_767_225_603_000;

fuzz_target!(|data: &[u8]| {
    // A response to HEAD has a Content-Length but no body, so the responses could not be told
    // apart without parsing the requests too: the method is left out.
    if data.windows(4).any(|w| w == b"HEAD") {
        return;
    }
    // A paused clock: a long poll that nothing ends costs no wall time, the runtime skips ahead.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(serve_one_connection(data));
});

async fn serve_one_connection(data: &[u8]) {
    // The wall clock, which the paused runtime does not stop: the Runtime API moves the event's
    // deadline on by the runtime's init (from the invocation's arrival to the first `/next`),
    // measured with it.
    let started = std::time::Instant::now();
    let api = RuntimeApi::new("fuzz");
    let invoke = tokio::spawn({
        let api = api.clone();
        async move {
            api.invoke(Invocation {
                request_id: REQUEST_ID.to_owned(),
                payload: Bytes::from_static(PAYLOAD),
                deadline_ms: DEADLINE_MS,
                invoked_function_arn: "arn:aws:lambda:us-east-1:123456789012:function:fuzz"
                    .to_owned(),
                trace_id: Some("Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700".to_owned()),
                client_context: None,
                cognito_identity: None,
            })
            .await
        }
    });
    // Let the invocation queue before the runtime's first request.
    tokio::task::yield_now().await;

    let (mut client, server) = tokio::io::duplex(1 << 16);
    let service = TowerToHyperService::new(router(api.clone()));
    let connection = tokio::spawn(async move {
        // half_close: the runtime's end of input does not cut off answers still being written.
        let _ = hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .serve_connection(TokioIo::new(server), service)
            .await;
    });
    let (mut reader, mut writer) = tokio::io::split(&mut client);
    let write = async {
        let _ = writer.write_all(data).await;
        let _ = writer.shutdown().await;
    };
    let mut out = Vec::new();
    let read = reader.read_to_end(&mut out);
    let exchange = async { tokio::join!(write, read) };
    if tokio::time::timeout(Duration::from_secs(3600), exchange)
        .await
        .is_err()
    {
        // Only a long poll with no invocation left to hand out waits this long: end it as the
        // agent does when the container goes, then collect what remains.
        api.close();
        let _ = tokio::time::timeout(Duration::from_secs(3600), reader.read_to_end(&mut out)).await;
    }
    connection.abort();

    let responses = parse_responses(&out);
    let mut verdicts = 0;
    let mut deliveries = 0;
    for r in &responses {
        match r.status {
            200 => {
                deliveries += 1;
                assert_eq!(r.header("lambda-runtime-aws-request-id"), Some(REQUEST_ID));
                // The deadline as given, moved on by at most the init's time, which is at most
                // what has elapsed since the invocation was queued.
                let deadline: u64 = r
                    .header("lambda-runtime-deadline-ms")
                    .and_then(|d| d.parse().ok())
                    .expect("a numeric deadline");
                let elapsed_ms = started.elapsed().as_millis() as u64 + 1;
                assert!(
                    (DEADLINE_MS..=DEADLINE_MS + elapsed_ms).contains(&deadline),
                    "deadline {deadline}, given {DEADLINE_MS}, {elapsed_ms} ms elapsed"
                );
                assert_eq!(r.body, PAYLOAD);
            }
            202 => verdicts += 1,
            _ => {}
        }
        if r.status >= 400 && r.header("content-type") == Some("application/json") {
            let body: serde_json::Value =
                serde_json::from_slice(&r.body).expect("a JSON error body parses");
            assert!(body["errorType"].is_string(), "{body}");
            assert!(body["errorMessage"].is_string(), "{body}");
        }
    }
    assert!(
        deliveries <= 1,
        "the invocation was handed out {deliveries} times"
    );
    assert!(
        verdicts <= 1,
        "{verdicts} verdicts accepted for one invocation"
    );
    // Give a resolved invocation its turn to finish.
    tokio::task::yield_now().await;
    if verdicts == 1 {
        assert!(invoke.is_finished(), "a 202 resolves the invocation");
        let outcome = invoke.await.expect("invoke task");
        assert!(
            matches!(
                outcome,
                InvokeOutcome::Ok { .. }
                    | InvokeOutcome::FunctionError { .. }
                    | InvokeOutcome::InitError { .. }
            ),
            "{outcome:?}"
        );
        if let InvokeOutcome::Ok { .. } | InvokeOutcome::FunctionError { .. } = outcome {
            assert_eq!(deliveries, 1, "only a delivered invocation gets an answer");
        }
    } else {
        assert!(
            !invoke.is_finished(),
            "no verdict, yet the invocation ended"
        );
        invoke.abort();
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Splits what the server wrote into responses; anything else is a failure.
fn parse_responses(mut out: &[u8]) -> Vec<Response> {
    let mut responses = Vec::new();
    while !out.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        let head = match parsed.parse(out) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "not an HTTP response ({other:?}): {:?}",
                String::from_utf8_lossy(out)
            ),
        };
        // HTTP/1.1, or 1.0 to a 1.0 request.
        assert!(matches!(parsed.version, Some(0 | 1)));
        let status = parsed.code.expect("status");
        let headers: Vec<(String, String)> = parsed
            .headers
            .iter()
            .map(|h| {
                let value = std::str::from_utf8(h.value).expect("header values are text");
                (h.name.to_owned(), value.to_owned())
            })
            .collect();
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        out = &out[head..];
        let length = match response.header("content-length") {
            Some(len) => len.parse::<usize>().expect("a numeric content-length"),
            None => {
                assert!(
                    response.header("transfer-encoding").is_none(),
                    "bodies are not chunked"
                );
                0
            }
        };
        assert!(length <= out.len(), "a response body is cut short");
        response.body = out[..length].to_vec();
        out = &out[length..];
        responses.push(response);
    }
    responses
}
