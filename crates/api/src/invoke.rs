//! The Invoke operation. Its request is parsed and checked here; running code needs an
//! execution backend, which this server does not have yet, so a valid request that would run
//! code is answered with a ServiceException that says so.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Extension;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::functions::QualifierQuery;
use crate::AppState;

/// Synchronous payloads up to 6 MB, asynchronous up to 256 KB, as in Lambda.
const MAX_SYNC_PAYLOAD: usize = 6 * 1024 * 1024;
const MAX_ASYNC_PAYLOAD: usize = 256 * 1024;

pub async fn invoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<StatusCode, ApiError> {
    let invocation_type = headers
        .get("x-amz-invocation-type")
        .map(|v| v.to_str().unwrap_or("?"))
        .unwrap_or("RequestResponse");
    let limit = match invocation_type {
        "RequestResponse" | "DryRun" => MAX_SYNC_PAYLOAD,
        "Event" => MAX_ASYNC_PAYLOAD,
        other => {
            return Err(ApiError::InvalidParameter(format!(
                "1 validation error detected: Value '{other}' at 'invocationType' failed to \
                 satisfy constraint: Member must satisfy enum value set: [Event, \
                 RequestResponse, DryRun]"
            )))
        }
    };
    if payload.len() > limit {
        return Err(ApiError::TooLarge(format!(
            "{} byte payload is too large for the {invocation_type} invocation type (limit {limit} bytes)",
            payload.len()
        )));
    }
    state
        .function(&caller, &name, q.qualifier.as_deref())
        .await?;
    if invocation_type == "DryRun" {
        return Ok(StatusCode::NO_CONTENT);
    }
    Err(ApiError::Service(
        "This Ember server has no execution backend yet, so functions cannot run".into(),
    ))
}
