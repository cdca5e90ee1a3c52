//! The API's front door: how connections are served (hyper's HTTP/1 knobs: a bounded request
//! head, a header read timeout), the limit on a request's head, and the AWS error shape for the
//! answers made outside a handler (a wrong method, an extractor's rejection).
//!
//! What cannot be shaped: hyper itself answers a head over [`HYPER_MAX_HEAD_BYTES`] bytes or
//! [`HYPER_MAX_HEADERS`] headers with a bare `431`, a request line or header it cannot parse with
//! a bare `400`, and closes, without a response, a connection whose head does not arrive within
//! the read timeout (as it closes an idle keep-alive connection after that time).

use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::ServiceExt as _;

use crate::error::ApiError;

/// The largest request head Ember reads (request line and headers): larger ones get an
/// AWS-shaped 431. botocore's heads are well under 4 KiB.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most headers a request may carry (more: an AWS-shaped 431).
pub const MAX_HEADERS: usize = 100;
/// The largest head hyper parses (its `max_header_size`): above it hyper answers a bare 431
/// itself. Well above [`MAX_HEAD_BYTES`], so that the AWS-shaped answer covers the heads between.
/// (hyper's `max_buf_size`, its read buffer, stays at its default of about 400 KiB, above this.)
pub const HYPER_MAX_HEAD_BYTES: usize = 256 * 1024;
/// The most headers hyper parses (more: its bare 431). Well above [`MAX_HEADERS`].
pub const HYPER_MAX_HEADERS: usize = 500;
/// How much of a plain error body (axum's rejection text) is kept as the AWS message.
const MAX_PLAIN_ERROR: usize = 16 * 1024;

/// The address of a request's TCP peer (a function URL event's `sourceIp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerAddr(pub std::net::SocketAddr);

/// Serves `app` on `listener` until `shutdown` resolves, then finishes in-flight requests.
/// A client has `read_timeout` to send a request's head (see the module docs).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        .max_header_size(HYPER_MAX_HEAD_BYTES)
        .max_headers(HYPER_MAX_HEADERS);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tcp;
        // Small requests and answers: no Nagle delay on either.
        let _ = tcp.set_nodelay(true);
        let service = app.clone().map_request(move |req: Request<Incoming>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(PeerAddr(peer));
            req
        });
        let connection =
            http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A failed `accept`: a connection that died before it was accepted is skipped; anything else
/// (out of descriptors) is waited out, as axum does, rather than spinning.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %e, "cannot accept a connection");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Refuses an oversized head in the AWS shape, and gives the AWS shape to every error answered
/// below without one (axum's 405, its extractors' plain-text rejections): whatever failed, the
/// client gets `x-amzn-ErrorType` and a `{"Type","message"}` body.
pub(crate) async fn shape_errors(req: Request, next: Next) -> Response {
    if let Err(e) = check_head(&req) {
        return e.into_response();
    }
    // Both are cheap to clone (a `Uri` shares its bytes): the warm path pays no allocation.
    let method = req.method().clone();
    let uri = req.uri().clone();
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.headers().contains_key("x-amzn-ErrorType")
    {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_PLAIN_ERROR)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let mut shaped = plain_error(status, text, method, uri.path().to_owned()).into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        shaped.headers_mut().insert(header::ALLOW, allow.clone());
    }
    shaped
}

/// The AWS error for a plain error answer of `status` (its body, `text`, is the message).
fn plain_error(status: StatusCode, text: String, method: Method, path: String) -> ApiError {
    let method = method.to_string();
    match status {
        StatusCode::NOT_FOUND => ApiError::UnknownOperation { method, path },
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed { method, path },
        StatusCode::REQUEST_TIMEOUT => ApiError::RequestTimeout(text),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::RequestEntityTooLarge(text),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => ApiError::HeadersTooLarge(text),
        s if s.is_client_error() => ApiError::InvalidParameter(if text.is_empty() {
            format!("The request was refused ({s})")
        } else {
            text
        }),
        s => {
            tracing::error!(status = %s, message = %text, "plain server error");
            ApiError::Service(format!("Ember failed to answer ({s})"))
        }
    }
}

/// A head (request target and headers) within [`MAX_HEAD_BYTES`] and [`MAX_HEADERS`].
fn check_head(req: &Request) -> Result<(), ApiError> {
    let count = req.headers().len();
    if count > MAX_HEADERS {
        return Err(ApiError::HeadersTooLarge(format!(
            "A request may carry at most {MAX_HEADERS} headers, not {count}"
        )));
    }
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    // Each header line is `name: value\r\n`.
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let size = req.method().as_str().len() + target + headers;
    if size > MAX_HEAD_BYTES {
        return Err(ApiError::HeadersTooLarge(format!(
            "The request line and headers must be smaller than {MAX_HEAD_BYTES} bytes, not \
             {size}"
        )));
    }
    Ok(())
}
