//! Request identity: every request gets an `x-amzn-RequestId`, and every API request must carry
//! a valid SigV4 signature made with a known access key, which names the calling account.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ember_sigv4::SigV4Error;
use ember_stdx::error_chain;
use http_body_util::BodyExt as _;
use std::time::Duration;
use time::OffsetDateTime;
use tracing::Instrument;

use crate::error::ApiError;
use crate::AppState;

/// The largest request body read: a 50 MB zip, base64-encoded, inside a JSON body (AWS's
/// CreateFunction limit is 70,167,211 bytes).
pub const MAX_BODY_BYTES: usize = 70_167_211;

/// AWS rejects signatures whose time is further than this from the server's clock.
const MAX_SKEW: time::Duration = time::Duration::minutes(15);

/// The authenticated account a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub account_id: String,
    pub is_admin: bool,
}

/// The id of the request being served, as `x-amzn-RequestId` carries it back. For Invoke it is
/// also the invocation's request id, as in Lambda.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// Gives every request an id, available to handlers as a [`RequestId`] extension, and puts it in
/// the response's `x-amzn-RequestId`.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = uuid::Uuid::new_v4().to_string();
    let span = tracing::debug_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(req).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-amzn-RequestId", value);
    }
    response
}

/// Buffers the body, verifies the SigV4 signature and attaches the [`Caller`].
pub async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let body = match read_body(body, MAX_BODY_BYTES, state.read_timeout).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    match verify(&state, &parts, &body).await {
        Ok(caller) => {
            parts.extensions.insert(caller);
            next.run(Request::from_parts(parts, Body::from(body))).await
        }
        Err(e) => e.into_response(),
    }
}

/// Reads a request body of at most `limit` bytes, waiting at most `idle` for each piece of it:
/// a body that stops arriving gets a 408, a larger one a 413 (both close the connection).
pub(crate) async fn read_body(body: Body, limit: usize, idle: Duration) -> Result<Bytes, ApiError> {
    // What a client declares is not trusted for more than a small first allocation.
    const FIRST_ALLOCATION: usize = 1 << 20;
    let mut body = body;
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                return Err(ApiError::RequestTimeout(format!(
                    "The request body stopped arriving: nothing was received for {} seconds",
                    idle.as_secs_f64()
                )))
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::InvalidRequestContent(format!(
                    "The request body could not be read: {}",
                    error_chain(&e)
                )))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let read = first.as_ref().map_or(0, Bytes::len) + rest.len();
        if read + data.len() > limit {
            return Err(ApiError::RequestEntityTooLarge(format!(
                "Request must be smaller than {limit} bytes"
            )));
        }
        // One piece (the usual case for small requests) is kept without a copy.
        match first.take() {
            None if rest.is_empty() => first = Some(data),
            None => rest.extend_from_slice(&data),
            Some(earlier) => {
                rest.reserve((earlier.len() + data.len()).min(FIRST_ALLOCATION));
                rest.extend_from_slice(&earlier);
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(rest)))
}

async fn verify(
    state: &AppState,
    parts: &axum::http::request::Parts,
    body: &Bytes,
) -> Result<Caller, ApiError> {
    verify_signed(state, parts, body)
        .await
        .map(|(caller, _)| caller)
}

/// Verifies a request's SigV4 signature (service `lambda`, the server's region), answering the
/// signing account and its access key id.
pub(crate) async fn verify_signed(
    state: &AppState,
    parts: &axum::http::request::Parts,
    body: &Bytes,
) -> Result<(Caller, String), ApiError> {
    let headers: Vec<(&str, &str)> = parts
        .headers
        .iter()
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
        .collect();
    let request = ember_sigv4::Request {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &headers,
        body,
    };
    let auth = ember_sigv4::authorization_of(&request).map_err(|e| match e {
        SigV4Error::Missing => ApiError::UnrecognizedClient(
            "Missing Authentication Token: sign requests with AWS Signature Version 4".into(),
        ),
        other => ApiError::InvalidSignature(other.to_string()),
    })?;
    // The whole credential scope: service and region here, the date in `verify`, the
    // `aws4_request` terminator when the header was parsed.
    auth.check_scope(&state.region, "lambda")
        .map_err(|e| ApiError::InvalidSignature(e.to_string()))?;
    let Some(credential) = state.store.credential(&auth.access_key_id).await? else {
        return Err(ApiError::UnrecognizedClient(
            "The security token included in the request is invalid.".into(),
        ));
    };
    ember_sigv4::verify(
        &request,
        &auth,
        &credential.secret_access_key,
        OffsetDateTime::now_utc(),
        MAX_SKEW,
    )
    .map_err(|e| ApiError::InvalidSignature(e.to_string()))?;
    Ok((
        Caller {
            account_id: credential.account_id,
            is_admin: credential.is_admin,
        },
        auth.access_key_id.to_string(),
    ))
}
