//! The Invoke operation: parses and checks the request, then hands it to the executor:
//! `RequestResponse` runs it and answers what the function returned, `Event` queues it durably
//! and answers 202, `DryRun` only checks it (204).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ember_executor::report::{self, Verdict};
use ember_executor::{ExecError, InvokeRequest};
use ember_stdx::error_chain;

use crate::auth::{Caller, RequestId};
use crate::error::ApiError;
use crate::functions::QualifierQuery;
use crate::AppState;

/// Synchronous payloads up to 6 MB, asynchronous up to 256 KB, as in Lambda.
const MAX_SYNC_PAYLOAD: usize = 6 * 1024 * 1024;
const MAX_ASYNC_PAYLOAD: usize = 256 * 1024;
/// `X-Amz-Client-Context` carries at most 3583 bytes of base64, as in Lambda.
const MAX_CLIENT_CONTEXT: usize = 3583;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InvocationType {
    RequestResponse,
    Event,
    DryRun,
}

pub async fn invoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<Response, ApiError> {
    let invocation_type = match header(&headers, "x-amz-invocation-type")? {
        None | Some("RequestResponse") => InvocationType::RequestResponse,
        Some("Event") => InvocationType::Event,
        Some("DryRun") => InvocationType::DryRun,
        Some(other) => {
            return Err(ApiError::InvalidParameter(format!(
                "1 validation error detected: Value '{other}' at 'invocationType' failed to \
                 satisfy constraint: Member must satisfy enum value set: [Event, \
                 RequestResponse, DryRun]"
            )))
        }
    };
    let tail = match header(&headers, "x-amz-log-type")? {
        None | Some("None") => false,
        Some("Tail") => true,
        Some(other) => {
            return Err(ApiError::InvalidParameter(format!(
                "1 validation error detected: Value '{other}' at 'logType' failed to satisfy \
                 constraint: Member must satisfy enum value set: [Tail, None]"
            )))
        }
    };
    let client_context = client_context(header(&headers, "x-amz-client-context")?)?;
    let limit = match invocation_type {
        InvocationType::Event => MAX_ASYNC_PAYLOAD,
        InvocationType::RequestResponse | InvocationType::DryRun => MAX_SYNC_PAYLOAD,
    };
    if payload.len() > limit {
        return Err(ApiError::TooLarge(format!(
            "{} byte payload is too large for the {invocation_type:?} invocation type (limit \
             {limit} bytes)",
            payload.len()
        )));
    }
    let payload = if payload.iter().all(u8::is_ascii_whitespace) {
        Bytes::from_static(b"{}")
    } else if serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_err() {
        return Err(ApiError::InvalidRequestContent(
            "Could not parse request body into json: the payload is not valid JSON".into(),
        ));
    } else {
        payload
    };
    let function = state
        .function(&caller, &name, q.qualifier.as_deref())
        .await?;
    if invocation_type == InvocationType::DryRun {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let executor = state.executor()?;
    if invocation_type == InvocationType::Event {
        executor
            .enqueue(&function, &request_id, &payload)
            .await
            .map_err(ApiError::from)?;
        return Ok(StatusCode::ACCEPTED.into_response());
    }

    let response = executor
        .invoke(InvokeRequest {
            function,
            request_id,
            payload,
            client_context,
            cognito_identity: None,
        })
        .await
        .map_err(exec_error)?;
    let mut http = (StatusCode::OK, response.payload).into_response();
    let out = http.headers_mut();
    out.insert("content-type", HeaderValue::from_static("application/json"));
    if let Ok(version) = HeaderValue::from_str(&response.executed_version) {
        out.insert("x-amz-executed-version", version);
    }
    out.insert(
        "x-ember-start",
        HeaderValue::from_static(response.start.as_str()),
    );
    if let Verdict::Unhandled { .. } = response.verdict {
        out.insert(
            "x-amz-function-error",
            HeaderValue::from_static("Unhandled"),
        );
    }
    if tail {
        let encoded = STANDARD.encode(report::tail(&response.log));
        if let Ok(value) = HeaderValue::from_str(&encoded) {
            out.insert("x-amz-log-result", value);
        }
    }
    Ok(http)
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::InvalidParameter(format!("header {name} is not ASCII")))
        })
        .transpose()
}

/// Decodes `X-Amz-Client-Context`: base64 of a JSON object.
fn client_context(value: Option<&str>) -> Result<Option<serde_json::Value>, ApiError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::InvalidParameter(
            "Client context must be a valid Base64-encoded JSON object.".into(),
        )
    };
    if value.len() > MAX_CLIENT_CONTEXT {
        return Err(ApiError::InvalidParameter(format!(
            "Client context must be at most {MAX_CLIENT_CONTEXT} bytes of base64"
        )));
    }
    let bytes = STANDARD.decode(value).map_err(|_| invalid())?;
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(json @ serde_json::Value::Object(_)) => Ok(Some(json)),
        _ => Err(invalid()),
    }
}

/// The one place an execution's failure becomes an API error.
fn exec_error(err: ExecError) -> ApiError {
    match err {
        ExecError::Throttled { reason } => ApiError::TooManyRequests {
            retry_after_s: 1,
            reason: reason.as_str(),
            message: reason.message(),
        },
        ExecError::RuntimeUnavailable(message) => ApiError::InvalidRuntime(message),
        ExecError::NoRuntime(_) => ApiError::InvalidRuntime(err.to_string()),
        ExecError::ShuttingDown => ApiError::ServiceUnavailable(err.to_string()),
        other => {
            tracing::error!(error = %error_chain(&other), "invocation failed");
            ApiError::Service(error_chain(&other))
        }
    }
}
