//! `InvokeAsync` (`POST /2014-11-13/functions/{name}/invoke-async/`), Lambda's deprecated
//! asynchronous invocation: the body (`InvokeArgs`) is the event, checked and queued durably on
//! the Event queue exactly as an `Invoke` with `X-Amz-Invocation-Type: Event` (the same parse,
//! payload limit and retries), answered 202 with `{"Status": 202}`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use crate::auth::{Caller, RequestId};
use crate::error::ApiError;
use crate::invoke::{parse, Action};
use crate::AppState;

pub async fn invoke_async(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut event = HeaderMap::new();
    event.insert("x-amz-invocation-type", HeaderValue::from_static("Event"));
    let invocation = parse(name, None, &event, body)?;
    let Action::Event { payload } = invocation.action else {
        // `parse` answers the invocation type it was given.
        return Err(ApiError::Service(
            "InvokeAsync parsed as another invocation type".into(),
        ));
    };
    let function = state.function(&caller, &invocation.function, None).await?;
    state
        .executor()?
        .enqueue(&function, &request_id, &payload)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "Status": 202 })),
    )
        .into_response())
}
