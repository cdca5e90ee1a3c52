//! The Runtime API over HTTP (axum): routes, header rendering, and the one place where
//! [`RuntimeApiError`] becomes a status code and an AWS error type.

use std::net::{Ipv4Addr, SocketAddr};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use ember_protocol::Invocation;
use futures_util::StreamExt;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, warn, Instrument};

use super::{stream, RuntimeApi, RuntimeApiError, MAX_RESPONSE_BYTES};

const REQUEST_ID: HeaderName = HeaderName::from_static("lambda-runtime-aws-request-id");
const DEADLINE_MS: HeaderName = HeaderName::from_static("lambda-runtime-deadline-ms");
const FUNCTION_ARN: HeaderName = HeaderName::from_static("lambda-runtime-invoked-function-arn");
const TRACE_ID: HeaderName = HeaderName::from_static("lambda-runtime-trace-id");
const CLIENT_CONTEXT: HeaderName = HeaderName::from_static("lambda-runtime-client-context");
const COGNITO_IDENTITY: HeaderName = HeaderName::from_static("lambda-runtime-cognito-identity");
const ERROR_TYPE: HeaderName = HeaderName::from_static("lambda-runtime-function-error-type");

/// A Runtime API listening on its own TCP port. Stops serving when shut down or dropped.
#[derive(Debug)]
pub struct RuntimeApiServer {
    api: RuntimeApi,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RuntimeApiServer {
    /// Serves `api` on a fresh port of 127.0.0.1.
    pub async fn bind(api: RuntimeApi) -> Result<Self, RuntimeApiError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(RuntimeApiError::Bind)?;
        Self::serve(api, listener)
    }

    /// Serves `api` on a listener the caller bound (for instance inside a container's network
    /// namespace).
    pub fn serve(api: RuntimeApi, listener: TcpListener) -> Result<Self, RuntimeApiError> {
        let addr = listener.local_addr().map_err(RuntimeApiError::Bind)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let span = tracing::info_span!("runtime_api", container_id = %api.container_id(), %addr);
        // No Nagle delay on the agent's answers; ACKs at once for the runtime's writes.
        let listener = super::quickack::QuickAckListener(listener);
        let server = axum::serve(listener, router(api.clone())).with_graceful_shutdown(async {
            // Either an explicit stop or the server handle being dropped.
            let _ = stopped.await;
        });
        let task = tokio::spawn(
            async move {
                if let Err(err) = server.await {
                    warn!(
                        error = &err as &dyn std::error::Error,
                        "runtime API server failed"
                    );
                }
                debug!("runtime API server stopped");
            }
            .instrument(span),
        );
        Ok(Self {
            api,
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn api(&self) -> &RuntimeApi {
        &self.api
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The value of `AWS_LAMBDA_RUNTIME_API`: `host:port`, no scheme.
    pub fn runtime_api_address(&self) -> String {
        self.addr.to_string()
    }

    /// Closes the API (ending long polls), stops accepting, and waits for open connections to end.
    pub async fn shutdown(mut self) {
        self.stop();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn stop(&mut self) {
        self.api.close();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for RuntimeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The Runtime API routes, served from `api`.
pub fn router(api: RuntimeApi) -> Router {
    Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{request_id}/response",
            post(response),
        )
        .route(
            "/2018-06-01/runtime/invocation/{request_id}/error",
            post(error),
        )
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .route("/2018-06-01/runtime/restore/next", get(restore_next))
        .route("/2018-06-01/runtime/restore/error", post(restore_error))
        .with_state(api)
}

/// SnapStart's `/restore/next`: 200 with an empty body once the environment is restored.
async fn restore_next(State(api): State<RuntimeApi>) -> Result<Response, RuntimeApiError> {
    api.restore_next().await?;
    Ok(StatusCode::OK.into_response())
}

/// SnapStart's `/restore/error`: an after-restore hook failed (awslambdaric then exits 65).
async fn restore_error(
    State(api): State<RuntimeApi>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, RuntimeApiError> {
    match read_limited(body).await? {
        Limited::Complete(body) => api.restore_failed(error_type(&headers), body)?,
        Limited::TooLarge(size) => {
            return Err(RuntimeApiError::PayloadTooLarge {
                size,
                limit: MAX_RESPONSE_BYTES,
            })
        }
    }
    Ok(accepted())
}

async fn next(State(api): State<RuntimeApi>) -> Result<Response, RuntimeApiError> {
    let invocation = api.next_invocation().await?;
    debug!(request_id = %invocation.request_id, "delivered");
    let headers = invocation_headers(&invocation);
    Ok((headers, invocation.payload).into_response())
}

async fn response(
    State(api): State<RuntimeApi>,
    Path(request_id): Path<String>,
    request: Request,
) -> Result<impl IntoResponse, RuntimeApiError> {
    if stream::is_streaming(request.headers()) {
        stream::respond(&api, &request_id, request).await?;
        return Ok(accepted());
    }
    api.check_current(&request_id)?;
    match read_limited(request.into_body()).await? {
        Limited::Complete(payload) => api.respond(&request_id, payload)?,
        Limited::TooLarge(size) => return Err(api.reject_oversize(&request_id, size)),
    }
    Ok(accepted())
}

async fn error(
    State(api): State<RuntimeApi>,
    Path(request_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, RuntimeApiError> {
    api.check_current(&request_id)?;
    match read_limited(body).await? {
        Limited::Complete(body) => api.fail(&request_id, error_type(&headers), body)?,
        Limited::TooLarge(size) => return Err(api.reject_oversize(&request_id, size)),
    }
    Ok(accepted())
}

async fn init_error(
    State(api): State<RuntimeApi>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, RuntimeApiError> {
    match read_limited(body).await? {
        Limited::Complete(body) => api.init_failed(error_type(&headers), body)?,
        Limited::TooLarge(size) => {
            return Err(RuntimeApiError::PayloadTooLarge {
                size,
                limit: MAX_RESPONSE_BYTES,
            })
        }
    }
    Ok(accepted())
}

fn accepted() -> impl IntoResponse {
    (StatusCode::ACCEPTED, Json(json!({"status": "OK"})))
}

fn error_type(headers: &HeaderMap) -> Option<&str> {
    headers.get(ERROR_TYPE).and_then(|v| v.to_str().ok())
}

/// The headers Lambda sends with an event; optional ones only when the invocation has them.
fn invocation_headers(invocation: &Invocation) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(DEADLINE_MS, HeaderValue::from(invocation.deadline_ms));
    let json = |value: &serde_json::Value| value.to_string();
    let values = [
        (REQUEST_ID, Some(invocation.request_id.clone())),
        (FUNCTION_ARN, Some(invocation.invoked_function_arn.clone())),
        (TRACE_ID, invocation.trace_id.clone()),
        (CLIENT_CONTEXT, invocation.client_context.as_ref().map(json)),
        (
            COGNITO_IDENTITY,
            invocation.cognito_identity.as_ref().map(json),
        ),
    ];
    for (name, value) in values {
        let Some(value) = value else { continue };
        match HeaderValue::try_from(value) {
            Ok(value) => {
                headers.insert(name, value);
            }
            // Only a host bug gets here (ids and ARNs are validated upstream; JSON is escaped).
            Err(_) => warn!(header = %name, "value not valid in an HTTP header; left out"),
        }
    }
    headers
}

enum Limited {
    Complete(Bytes),
    /// The body's full size, which is over [`MAX_RESPONSE_BYTES`].
    TooLarge(usize),
}

/// Reads a body of at most [`MAX_RESPONSE_BYTES`]. A larger one is still read to its end, without
/// being kept, so that the runtime sees the 413 instead of a reset connection, and so that the
/// error can say how large it was.
async fn read_limited(body: Body) -> Result<Limited, RuntimeApiError> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    let mut size = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(RuntimeApiError::Body)?;
        size = size.saturating_add(chunk.len());
        if size <= MAX_RESPONSE_BYTES {
            buf.extend_from_slice(&chunk);
        } else if !buf.is_empty() {
            buf = BytesMut::new();
        }
    }
    Ok(if size <= MAX_RESPONSE_BYTES {
        Limited::Complete(buf.freeze())
    } else {
        Limited::TooLarge(size)
    })
}

impl IntoResponse for RuntimeApiError {
    fn into_response(self) -> Response {
        let (status, error_type, message) = match &self {
            Self::InvalidRequestId(_) => (
                StatusCode::BAD_REQUEST,
                "InvalidRequestID",
                "Invalid request ID".to_owned(),
            ),
            Self::PayloadTooLarge { limit, .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!("Exceeded maximum allowed payload size ({limit} bytes)."),
            ),
            Self::InvalidStateTransition(_) => (
                StatusCode::FORBIDDEN,
                "InvalidStateTransition",
                self.to_string(),
            ),
            Self::Body(_) | Self::Closed | Self::Bind(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                self.to_string(),
            ),
        };
        debug!(
            error = &self as &dyn std::error::Error,
            %status,
            "runtime API request refused"
        );
        let body = json!({"errorMessage": message, "errorType": error_type});
        (status, Json(body)).into_response()
    }
}
