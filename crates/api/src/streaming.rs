//! InvokeWithResponseStream (`POST /2021-11-15/functions/{FunctionName}/response-streaming-invocations`):
//! [`parse`] checks the request (Invoke's rules, with the invocation types this operation
//! knows, `RequestResponse` and `DryRun`); the handler starts the execution through
//! [`Executor::invoke_stream`](ember_executor::Executor::invoke_stream) and answers its
//! response as AWS's event stream ([`crate::eventstream`]): a `PayloadChunk` event for each
//! chunk as the function writes it, then one `InvokeComplete` (`ErrorCode` and `ErrorDetails`
//! for a function error, `LogResult` for `LogType: Tail`).

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ember_executor::report::{self, Verdict};
use ember_executor::{InvokeRequest, InvokeResponse, ResponseStream};
use serde::Serialize;

use crate::auth::{Caller, RequestId};
use crate::error::ApiError;
use crate::eventstream;
use crate::functions::QualifierQuery;
use crate::invoke::{self, Action};
use crate::AppState;

/// An InvokeWithResponseStream request, parsed and checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StreamInvocation {
    pub function: String,
    pub qualifier: Option<String>,
    /// `None` for `DryRun`.
    pub run: Option<Run>,
}

/// A `RequestResponse` streamed invocation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Run {
    pub payload: Bytes,
    pub client_context: Option<serde_json::Value>,
    pub tail: bool,
}

/// Parses an InvokeWithResponseStream request: `X-Amz-Invocation-Type` must be
/// `RequestResponse` (the default) or `DryRun`; `X-Amz-Tenant-Id` is refused by name (Ember has
/// no multi-tenant functions); the rest is Invoke's (log type, client context, a JSON payload of
/// at most 6 MB).
pub(crate) fn parse(
    function: String,
    qualifier: Option<String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<StreamInvocation, ApiError> {
    if let Some(kind) = headers.get("x-amz-invocation-type") {
        let kind = kind.to_str().unwrap_or("");
        if !matches!(kind, "RequestResponse" | "DryRun") {
            return Err(ApiError::InvalidParameter(format!(
                "1 validation error detected: Value '{kind}' at 'invocationType' failed to \
                 satisfy constraint: Member must satisfy enum value set: [RequestResponse, \
                 DryRun]"
            )));
        }
    }
    if headers.contains_key("x-amz-tenant-id") {
        return Err(ApiError::InvalidParameter(
            "TenantId is not supported: Ember has no multi-tenant functions".into(),
        ));
    }
    let parsed = invoke::parse(function, qualifier, headers, body)?;
    let run = match parsed.action {
        Action::RequestResponse {
            payload,
            client_context,
            tail,
        } => Some(Run {
            payload,
            client_context,
            tail,
        }),
        Action::DryRun => None,
        // Refused above: only RequestResponse and DryRun reach Invoke's parse.
        Action::Event { .. } => {
            return Err(ApiError::InvalidParameter(
                "InvokeWithResponseStream does not take the Event invocation type".into(),
            ))
        }
    };
    Ok(StreamInvocation {
        function: parsed.function,
        qualifier: parsed.qualifier,
        run,
    })
}

pub async fn invoke_with_response_stream(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let invocation = parse(name, q.qualifier, &headers, body)?;
    let (target, function) = state
        .invoked_as_granted(
            &caller,
            &invocation.function,
            invocation.qualifier.as_deref(),
        )
        .await?;
    let Some(run) = invocation.run else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let stream = state
        .executor()?
        .invoke_stream(InvokeRequest {
            function,
            qualifier: target.qualifier,
            request_id,
            payload: run.payload,
            client_context: run.client_context,
            cognito_identity: None,
        })
        .await?;
    Ok(respond(stream, run.tail))
}

/// The 200 answer: Lambda's headers, and the event stream as the function writes it.
fn respond(stream: ResponseStream, tail: bool) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static(eventstream::CONTENT_TYPE),
    );
    if let Ok(version) = HeaderValue::from_str(&stream.executed_version) {
        headers.insert("x-amz-executed-version", version);
    }
    headers.insert(
        "x-ember-start",
        HeaderValue::from_static(stream.start.as_str()),
    );
    let events = futures_util::stream::unfold(Some(stream), move |state| async move {
        let mut stream = state?;
        match stream.next_chunk().await {
            Some(chunk) => Some((Ok::<_, Infallible>(payload_chunk(&chunk)), Some(stream))),
            None => Some((Ok(invoke_complete(stream.finish().await, tail)), None)),
        }
    });
    (StatusCode::OK, headers, Body::from_stream(events)).into_response()
}

fn payload_chunk(chunk: &[u8]) -> Bytes {
    eventstream::event("PayloadChunk", "application/octet-stream", chunk)
}

/// `InvokeComplete`'s payload, as botocore's model names its members.
#[derive(Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Complete {
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_details: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_result: Option<String>,
}

/// The `InvokeComplete` event of an invocation that ended as `ended`: a function error's type
/// as `ErrorCode` and its error document as `ErrorDetails`; a failure of Ember's (the VM failed
/// after the response began) as its AWS error type and message.
fn invoke_complete(ended: Result<InvokeResponse, ember_executor::ExecError>, tail: bool) -> Bytes {
    let complete = match ended {
        Ok(response) => complete_of(&response, tail),
        Err(err) => {
            let err = ApiError::from(err);
            Complete {
                error_code: Some(err.error_type().to_owned()),
                error_details: Some(err.to_string()),
                log_result: None,
            }
        }
    };
    // Serializing a struct of strings cannot fail.
    let payload = serde_json::to_vec(&complete).unwrap_or_default();
    eventstream::event("InvokeComplete", "application/json", &payload)
}

fn complete_of(response: &InvokeResponse, tail: bool) -> Complete {
    let (error_code, error_details) = match &response.verdict {
        Verdict::Ok => (None, None),
        Verdict::Unhandled { error_type } => (
            Some(error_type.clone()),
            Some(String::from_utf8_lossy(&response.payload).into_owned()),
        ),
    };
    Complete {
        error_code,
        error_details,
        log_result: tail.then(|| STANDARD.encode(report::tail(&response.log))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::http::HeaderName;

    fn parsed(headers: &[(&str, &str)], body: &[u8]) -> Result<StreamInvocation, ApiError> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        parse("f".into(), None, &map, Bytes::copy_from_slice(body))
    }

    #[test]
    fn invocation_types_are_request_response_and_dry_run_only() {
        let run = parsed(&[], b"{\"a\":1}").unwrap().run.unwrap();
        assert_eq!(run.payload, Bytes::from_static(b"{\"a\":1}"));
        assert!(!run.tail);
        let run = parsed(
            &[
                ("x-amz-invocation-type", "RequestResponse"),
                ("x-amz-log-type", "Tail"),
            ],
            b"",
        )
        .unwrap()
        .run
        .unwrap();
        assert_eq!(run.payload, Bytes::from_static(b"{}"));
        assert!(run.tail);
        assert_eq!(
            parsed(&[("x-amz-invocation-type", "DryRun")], b"")
                .unwrap()
                .run,
            None
        );
        for refused in ["Event", "requestresponse", ""] {
            let err = parsed(&[("x-amz-invocation-type", refused)], b"").unwrap_err();
            assert_eq!(err.error_type(), "InvalidParameterValueException");
            assert!(
                err.to_string().contains("[RequestResponse, DryRun]"),
                "{err}"
            );
        }
    }

    #[test]
    fn invoke_rules_apply_and_tenants_are_refused_by_name() {
        let err = parsed(&[], b"not json").unwrap_err();
        assert_eq!(err.error_type(), "InvalidRequestContentException");
        let err = parsed(&[("x-amz-log-type", "All")], b"").unwrap_err();
        assert_eq!(err.error_type(), "InvalidParameterValueException");
        let err = parsed(&[("x-amz-tenant-id", "t1")], b"").unwrap_err();
        assert!(err.to_string().contains("TenantId"), "{err}");
        let big = vec![b' '; 6 * 1024 * 1024 + 1];
        let err = parsed(&[], &big).unwrap_err();
        assert_eq!(err.error_type(), "RequestTooLargeException");
    }

    #[test]
    fn invoke_complete_carries_botocores_member_names() {
        let complete = Complete {
            error_code: Some("HelloFailure".into()),
            error_details: Some("{\"errorMessage\":\"boom\"}".into()),
            log_result: Some("U1RBUlQ=".into()),
        };
        assert_eq!(
            serde_json::to_string(&complete).unwrap(),
            r#"{"ErrorCode":"HelloFailure","ErrorDetails":"{\"errorMessage\":\"boom\"}","LogResult":"U1RBUlQ="}"#
        );
        assert_eq!(serde_json::to_string(&Complete::default()).unwrap(), "{}");
    }
}
