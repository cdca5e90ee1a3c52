//! The Lambda Runtime API over real HTTP, driven as a runtime client would drive it.
// Helpers outside #[test] fns are test code too (clippy.toml only exempts the fns themselves).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use ember_agent::runtime_api::{Current, RuntimeApi, RuntimeApiServer, MAX_RESPONSE_BYTES};
use ember_protocol::{Invocation, InvokeOutcome};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

const ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:hello";

struct Runtime {
    server: RuntimeApiServer,
    http: reqwest::Client,
}

impl Runtime {
    async fn start() -> Self {
        let server = RuntimeApiServer::bind(RuntimeApi::new("c1")).await.unwrap();
        Self {
            server,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "http://{}/2018-06-01/runtime/{path}",
            self.server.runtime_api_address()
        )
    }

    /// Queues an invocation, as the agent does when the host sends Invoke.
    fn invoke(&self, invocation: Invocation) -> JoinHandle<InvokeOutcome> {
        let api = self.server.api().clone();
        tokio::spawn(async move { api.invoke(invocation).await })
    }

    /// Waits until `holds` is true of the API, for at most five seconds.
    async fn wait_until(&self, what: &str, holds: impl Fn(&RuntimeApi) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !holds(self.server.api()) {
            assert!(Instant::now() < deadline, "never {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Waits until `request_id` is queued for the runtime's next poll.
    async fn wait_queued(&self, request_id: &str) {
        let want = Some(Current::Queued(request_id.into()));
        self.wait_until(&format!("queued {request_id}"), |api| api.current() == want)
            .await;
    }

    async fn next(&self) -> reqwest::Response {
        self.http
            .get(self.url("invocation/next"))
            .send()
            .await
            .unwrap()
    }

    async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn post_error(&self, path: &str, error_type: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("Lambda-Runtime-Function-Error-Type", error_type)
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

fn invocation(request_id: &str) -> Invocation {
    Invocation {
        request_id: request_id.into(),
        payload: Bytes::from_static(br#"{"name":"world"}"#),
        deadline_ms: 1_700_000_003_000,
        invoked_function_arn: ARN.into(),
        trace_id: Some(
            "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=1".into(),
        ),
        client_context: None,
        cognito_identity: None,
    }
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

async fn assert_aws_error(response: reqwest::Response, status: StatusCode, error_type: &str) {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errorType"], error_type, "{body}");
    assert!(body["errorMessage"].is_string(), "{body}");
}

async fn assert_accepted(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": "OK"})
    );
}

#[tokio::test]
async fn next_then_response_carries_every_header() {
    let rt = Runtime::start().await;
    let client_context = json!({"client": {"app_title": "demo"}, "custom": {"k": "v"}, "env": {}});
    let cognito = json!({"cognitoIdentityId": "id-1", "cognitoIdentityPoolId": "pool-1"});
    let invoke = rt.invoke(Invocation {
        client_context: Some(client_context.clone()),
        cognito_identity: Some(cognito.clone()),
        ..invocation("8476a536-e9f4-11e8-9739-2dfe598c3fcd")
    });

    let event = rt.next().await;
    assert_eq!(event.status(), StatusCode::OK);
    assert_eq!(
        header(&event, "Lambda-Runtime-Aws-Request-Id"),
        Some("8476a536-e9f4-11e8-9739-2dfe598c3fcd")
    );
    assert_eq!(
        header(&event, "Lambda-Runtime-Deadline-Ms"),
        Some("1700000003000")
    );
    assert_eq!(
        header(&event, "Lambda-Runtime-Invoked-Function-Arn"),
        Some(ARN)
    );
    assert_eq!(
        header(&event, "Lambda-Runtime-Trace-Id"),
        Some("Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=1")
    );
    assert_eq!(header(&event, "Content-Type"), Some("application/json"));
    let context: Value =
        serde_json::from_str(header(&event, "Lambda-Runtime-Client-Context").unwrap()).unwrap();
    assert_eq!(context, client_context);
    let identity: Value =
        serde_json::from_str(header(&event, "Lambda-Runtime-Cognito-Identity").unwrap()).unwrap();
    assert_eq!(identity, cognito);
    assert_eq!(event.text().await.unwrap(), r#"{"name":"world"}"#);
    assert_eq!(
        rt.server.api().current(),
        Some(Current::Delivered(
            "8476a536-e9f4-11e8-9739-2dfe598c3fcd".into()
        ))
    );

    assert_accepted(
        rt.post(
            "invocation/8476a536-e9f4-11e8-9739-2dfe598c3fcd/response",
            r#""Hello, world""#,
        )
        .await,
    )
    .await;
    assert_eq!(
        invoke.await.unwrap(),
        InvokeOutcome::Ok {
            payload: Bytes::from_static(br#""Hello, world""#)
        }
    );
    assert_eq!(
        rt.server.api().current(),
        None,
        "answered, nothing in flight"
    );
}

#[tokio::test]
async fn optional_headers_are_left_out_when_not_given() {
    let rt = Runtime::start().await;
    let _invoke = rt.invoke(Invocation {
        trace_id: None,
        ..invocation("r1")
    });
    let event = rt.next().await;
    for absent in [
        "Lambda-Runtime-Client-Context",
        "Lambda-Runtime-Cognito-Identity",
        "Lambda-Runtime-Trace-Id",
    ] {
        assert_eq!(header(&event, absent), None, "{absent}");
    }
}

#[tokio::test]
async fn an_error_post_becomes_the_function_error() {
    let rt = Runtime::start().await;
    let invoke = rt.invoke(invocation("r1"));
    rt.next().await;
    let document = json!({
        "errorMessage": "division by zero",
        "errorType": "ZeroDivisionError",
        "stackTrace": ["  File \"/var/task/app.py\", line 2, in handler\n"],
    });
    assert_accepted(
        rt.post_error("invocation/r1/error", "Unhandled", document.clone())
            .await,
    )
    .await;
    let InvokeOutcome::FunctionError {
        error_type,
        payload,
    } = invoke.await.unwrap()
    else {
        panic!("not a function error");
    };
    assert_eq!(error_type, "Unhandled");
    assert_eq!(serde_json::from_slice::<Value>(&payload).unwrap(), document);
}

#[tokio::test]
async fn an_init_error_fails_the_waiting_invocation_and_every_later_one() {
    let rt = Runtime::start().await;
    let waiting = rt.invoke(invocation("r1"));
    // The runtime fails while an invocation waits for it.
    rt.wait_queued("r1").await;
    let document = json!({
        "errorMessage": "Unable to import module 'app': No module named 'app'",
        "errorType": "Runtime.ImportModuleError",
        "stackTrace": [],
    });
    assert_accepted(
        rt.post_error("init/error", "Runtime.ImportModuleError", document.clone())
            .await,
    )
    .await;

    let expected = InvokeOutcome::InitError {
        error_type: "Runtime.ImportModuleError".into(),
        payload: Bytes::from(document.to_string()),
    };
    assert_eq!(waiting.await.unwrap(), expected);
    assert_eq!(rt.invoke(invocation("r2")).await.unwrap(), expected);
    assert_eq!(rt.server.api().initialized_at(), None);
}

#[tokio::test]
async fn an_init_error_after_init_is_refused() {
    let rt = Runtime::start().await;
    let _invoke = rt.invoke(invocation("r1"));
    rt.next().await;
    assert!(rt.server.api().initialized_at().is_some());
    let response = rt
        .post_error("init/error", "Runtime.Unknown", json!({}))
        .await;
    assert_aws_error(response, StatusCode::FORBIDDEN, "InvalidStateTransition").await;
}

#[tokio::test]
async fn a_wrong_request_id_is_refused_and_the_right_one_still_works() {
    let rt = Runtime::start().await;
    let invoke = rt.invoke(invocation("r1"));
    rt.next().await;
    for path in ["invocation/nope/response", "invocation/nope/error"] {
        assert_aws_error(
            rt.post(path, "{}").await,
            StatusCode::BAD_REQUEST,
            "InvalidRequestID",
        )
        .await;
    }
    assert_accepted(rt.post("invocation/r1/response", "1").await).await;
    assert_eq!(
        invoke.await.unwrap(),
        InvokeOutcome::Ok {
            payload: Bytes::from_static(b"1")
        }
    );
    // Answered once: a second answer is for an id that is no longer current.
    assert_aws_error(
        rt.post("invocation/r1/response", "2").await,
        StatusCode::BAD_REQUEST,
        "InvalidRequestID",
    )
    .await;
}

#[tokio::test]
async fn a_request_id_not_yet_delivered_is_refused() {
    let rt = Runtime::start().await;
    let invoke = rt.invoke(invocation("r1"));
    rt.wait_queued("r1").await;
    assert_aws_error(
        rt.post("invocation/r1/response", "1").await,
        StatusCode::BAD_REQUEST,
        "InvalidRequestID",
    )
    .await;
    // Refused without touching it: still queued, then delivered and answered as usual.
    assert_eq!(
        rt.server.api().current(),
        Some(Current::Queued("r1".into()))
    );
    let event = rt.next().await;
    assert_eq!(header(&event, "Lambda-Runtime-Aws-Request-Id"), Some("r1"));
    assert_accepted(rt.post("invocation/r1/response", "2").await).await;
    assert_eq!(
        invoke.await.unwrap(),
        InvokeOutcome::Ok {
            payload: Bytes::from_static(b"2")
        }
    );
}

#[tokio::test]
async fn a_response_over_six_megabytes_is_413_and_a_function_error() {
    let rt = Runtime::start().await;
    let invoke = rt.invoke(invocation("r1"));
    rt.next().await;
    let too_large = vec![b'x'; MAX_RESPONSE_BYTES + 1];
    assert_aws_error(
        rt.post("invocation/r1/response", too_large).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
    )
    .await;

    let InvokeOutcome::FunctionError {
        error_type,
        payload,
    } = invoke.await.unwrap()
    else {
        panic!("not a function error");
    };
    assert_eq!(error_type, "Function.ResponseSizeTooLarge");
    let document: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(document["errorType"], "Function.ResponseSizeTooLarge");
    assert_eq!(
        document["errorMessage"],
        "Response payload size (6291457 bytes) exceeded maximum allowed payload size (6291456 bytes)."
    );
}

#[tokio::test]
async fn a_response_of_exactly_six_megabytes_is_accepted() {
    let rt = Runtime::start().await;
    let invoke = rt.invoke(invocation("r1"));
    rt.next().await;
    let largest = Bytes::from(vec![b'x'; MAX_RESPONSE_BYTES]);
    assert_accepted(rt.post("invocation/r1/response", largest.clone()).await).await;
    assert_eq!(
        invoke.await.unwrap(),
        InvokeOutcome::Ok { payload: largest }
    );
}

#[tokio::test]
async fn next_long_polls_until_an_invocation_arrives() {
    let rt = Runtime::start().await;
    let mut poll = Box::pin(rt.next());
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut poll)
            .await
            .is_err(),
        "/next answered with nothing to deliver"
    );
    let invoke = rt.invoke(invocation("late"));
    let event = poll.await;
    assert_eq!(
        header(&event, "Lambda-Runtime-Aws-Request-Id"),
        Some("late")
    );
    assert_accepted(rt.post("invocation/late/response", "null").await).await;
    assert!(matches!(invoke.await.unwrap(), InvokeOutcome::Ok { .. }));
}

#[tokio::test]
async fn sequential_invocations_reuse_the_runtime() {
    let rt = Runtime::start().await;
    for (i, request_id) in ["first", "second"].into_iter().enumerate() {
        let invoke = rt.invoke(Invocation {
            payload: Bytes::from(i.to_string()),
            ..invocation(request_id)
        });
        let event = rt.next().await;
        assert_eq!(
            header(&event, "Lambda-Runtime-Aws-Request-Id"),
            Some(request_id)
        );
        let payload = event.bytes().await.unwrap();
        assert_eq!(payload, Bytes::from(i.to_string()));
        assert_accepted(
            rt.post(
                &format!("invocation/{request_id}/response"),
                payload.clone(),
            )
            .await,
        )
        .await;
        assert_eq!(invoke.await.unwrap(), InvokeOutcome::Ok { payload });
    }
}

#[tokio::test]
async fn shutdown_ends_a_pending_long_poll() {
    let rt = Runtime::start().await;
    let http = rt.http.clone();
    let url = rt.url("invocation/next");
    let poll = tokio::spawn(async move { http.get(url).send().await.unwrap().status() });
    // A runtime's first poll marks its init done: from then on the poll is pending.
    rt.wait_until("polled", |api| api.initialized_at().is_some())
        .await;
    assert!(
        !poll.is_finished(),
        "/next answered with nothing to deliver"
    );
    tokio::time::timeout(Duration::from_secs(5), rt.server.shutdown())
        .await
        .expect("shutdown waits on the long poll");
    assert_eq!(poll.await.unwrap(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn restore_next_answers_a_restored_environment_waits_in_a_template_and_is_refused_elsewhere()
{
    use ember_agent::runtime_api::Restore;
    // An ordinary container was never snapshotted.
    let rt = Runtime::start().await;
    let url = rt.url("restore/next");
    let response = rt.http.get(&url).send().await.unwrap();
    assert_aws_error(response, StatusCode::FORBIDDEN, "InvalidStateTransition").await;
    assert_aws_error(
        rt.post_error("restore/error", "Runtime.AfterRestoreError", json!({}))
            .await,
        StatusCode::FORBIDDEN,
        "InvalidStateTransition",
    )
    .await;

    // A restored environment goes on at once, with an empty 200.
    rt.server.api().set_restore(Restore::Restored);
    let response = rt.http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().len(), 0);

    // A template's runtime is the snapshot: it is never restored itself.
    rt.server.api().set_restore(Restore::Template);
    let waiting = tokio::spawn(rt.http.get(&url).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished());
    waiting.abort();
}

#[tokio::test]
async fn a_failed_after_restore_hook_fails_the_environments_init() {
    use ember_agent::runtime_api::Restore;
    let rt = Runtime::start().await;
    rt.server.api().set_restore(Restore::Restored);
    let waiting = rt.invoke(invocation("r1"));
    rt.wait_queued("r1").await;
    let document = json!({"errorMessage": "boom", "errorType": "Exception", "stackTrace": []});
    assert_accepted(
        rt.post_error(
            "restore/error",
            "Runtime.AfterRestoreError",
            document.clone(),
        )
        .await,
    )
    .await;
    assert_eq!(
        waiting.await.unwrap(),
        InvokeOutcome::InitError {
            error_type: "Runtime.AfterRestoreError".into(),
            payload: Bytes::from(document.to_string()),
        }
    );
}
