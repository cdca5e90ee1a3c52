//! Request identity: every request gets an `x-amzn-RequestId`, and every API request must carry
//! a valid SigV4 signature made with a known access key, which names the calling account.
//!
//! A key is an account's (`AKIA…`), or an execution environment's temporary one (`ASIA…`),
//! valid only with its session token (`X-Amz-Security-Token`) while its environment lives. A
//! request made with a temporary key carries its [`Session`] in its [`Caller`], and
//! [`authenticate`] lets it through only to the operations an execution role may call here
//! ([`session_may`]): the one place that rule is enforced, before any handler runs.

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
    /// Set when the request was signed with an execution environment's temporary credentials:
    /// it may only invoke ([`session_may`]), and is never the admin.
    pub session: Option<Session>,
}

/// The execution environment whose temporary credentials signed a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The function the environment runs.
    pub function_name: String,
    /// The environment (container) id.
    pub environment_id: String,
}

/// AWS's answer to a temporary key it does not know, or given without its token or with
/// another's.
const INVALID_TOKEN: &str = "The security token included in the request is invalid.";

/// The routes a request signed with session credentials may take (method, matched path): the
/// invocations, as an execution role that may call `lambda:InvokeFunction`. Function URLs
/// (`AWS_IAM`) are authorized in `function_urls::serve` and are invocations too.
pub(crate) fn session_may(method: &axum::http::Method, route: Option<&str>) -> bool {
    const INVOKE: [&str; 4] = [
        "/2015-03-31/functions/{name}/invocations",
        "/2021-11-15/functions/{name}/response-streaming-invocations",
        "/2014-11-13/functions/{name}/invoke-async",
        "/2014-11-13/functions/{name}/invoke-async/",
    ];
    method == axum::http::Method::POST && route.is_some_and(|route| INVOKE.contains(&route))
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
            if let Some(session) = &caller.session {
                let route = parts
                    .extensions
                    .get::<axum::extract::MatchedPath>()
                    .map(|p| p.as_str());
                if !session_may(&parts.method, route) {
                    return ApiError::AccessDenied(format!(
                        "User: arn:aws:sts::{}:assumed-role/ember-execution/{} is not authorized \
                         to perform {} {}: an execution environment's credentials may only \
                         invoke functions",
                        caller.account_id,
                        session.function_name,
                        parts.method,
                        parts.uri.path()
                    ))
                    .into_response();
                }
            }
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
    let token = security_token(&parts.headers)?;
    let now = OffsetDateTime::now_utc();
    let (secret, caller) = if is_temporary(&auth.access_key_id) {
        // Checked before the signature, as AWS does: a key without its own token is unknown.
        let session = state
            .store
            .session(&auth.access_key_id)
            .filter(|session| token.is_some_and(|token| session.token_matches(token)))
            .ok_or_else(|| ApiError::UnrecognizedClient(INVALID_TOKEN.into()))?;
        if session.expired(now) {
            return Err(ApiError::ExpiredToken(
                "The security token included in the request is expired".into(),
            ));
        }
        let caller = Caller {
            account_id: session.account_id,
            is_admin: false,
            session: Some(Session {
                function_name: session.function_name,
                environment_id: session.environment_id,
            }),
        };
        (session.secret_access_key, caller)
    } else {
        let Some(credential) = state.store.credential(&auth.access_key_id).await? else {
            return Err(ApiError::UnrecognizedClient(INVALID_TOKEN.into()));
        };
        if token.is_some() {
            // A long-term key has no session: AWS refuses the pair.
            return Err(ApiError::UnrecognizedClient(INVALID_TOKEN.into()));
        }
        let caller = Caller {
            account_id: credential.account_id,
            is_admin: credential.is_admin,
            session: None,
        };
        (credential.secret_access_key, caller)
    };
    ember_sigv4::verify(&request, &auth, &secret, now, MAX_SKEW)
        .map_err(|e| ApiError::InvalidSignature(e.to_string()))?;
    Ok((caller, auth.access_key_id.to_string()))
}

/// Whether an access key id is a temporary (session) one: AWS's `ASIA` prefix. Account keys
/// are `AKIA…`.
fn is_temporary(access_key_id: &str) -> bool {
    access_key_id.starts_with("ASIA")
}

/// The request's `X-Amz-Security-Token`, if it has one (more than one is refused).
fn security_token(headers: &axum::http::HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut values = headers.get_all("x-amz-security-token").iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::InvalidSignature(
            "more than one X-Amz-Security-Token header".into(),
        ));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| ApiError::UnrecognizedClient(INVALID_TOKEN.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn a_session_may_invoke_and_nothing_else() {
        let allowed = [
            "/2015-03-31/functions/{name}/invocations",
            "/2021-11-15/functions/{name}/response-streaming-invocations",
            "/2014-11-13/functions/{name}/invoke-async",
            "/2014-11-13/functions/{name}/invoke-async/",
        ];
        for route in allowed {
            assert!(session_may(&Method::POST, Some(route)), "{route}");
            assert!(!session_may(&Method::GET, Some(route)), "GET {route}");
        }
        let refused = [
            (Method::POST, "/2015-03-31/functions"),
            (Method::GET, "/2015-03-31/functions"),
            (Method::GET, "/2015-03-31/functions/{name}"),
            (Method::DELETE, "/2015-03-31/functions/{name}"),
            (Method::PUT, "/2015-03-31/functions/{name}/code"),
            (Method::PUT, "/2015-03-31/functions/{name}/configuration"),
            (Method::GET, "/2015-03-31/functions/{name}/configuration"),
            (Method::POST, "/2015-03-31/functions/{name}/versions"),
            (Method::POST, "/2015-03-31/functions/{name}/policy"),
            (Method::POST, "/2021-10-31/functions/{name}/url"),
            (Method::PUT, "/2017-10-31/functions/{name}/concurrency"),
            (Method::GET, "/2016-08-19/account-settings"),
            (Method::GET, "/ember/v1/fleet"),
            (Method::GET, "/ember/v1/console/whoami"),
            (Method::GET, "/ember/v1/console/activity"),
            (Method::GET, "/ember/v1/console/fleet-history"),
            (Method::GET, "/ember/v1/console/functions/{name}/executions"),
            (Method::GET, "/ember/v1/functions/{name}/logs"),
            (Method::GET, "/ember/v1/functions/{name}/network"),
            (Method::PUT, "/ember/v1/functions/{name}/network"),
            (Method::POST, "/2015-03-31/functions/{name}/invocations/"),
        ];
        for (method, route) in refused {
            assert!(!session_may(&method, Some(route)), "{method} {route}");
        }
        // An unknown path (the fallback has no matched route) is refused too.
        assert!(!session_may(&Method::POST, None));
    }

    #[test]
    fn temporary_keys_are_told_by_their_prefix() {
        assert!(is_temporary("ASIAQWERTYUIOPASDFGH"));
        assert!(!is_temporary("AKIAQWERTYUIOPASDFGH"));
        assert!(!is_temporary("asiaqwertyuiopasdfgh"));
    }

    #[test]
    fn one_security_token_at_most() {
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(security_token(&headers).unwrap(), None);
        headers.append("x-amz-security-token", "a".parse().unwrap());
        assert_eq!(security_token(&headers).unwrap(), Some("a"));
        headers.append("x-amz-security-token", "b".parse().unwrap());
        assert_eq!(
            security_token(&headers).unwrap_err().error_type(),
            "InvalidSignatureException"
        );
    }
}
