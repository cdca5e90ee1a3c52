//! Serving function URLs: [`front`] takes a request addressed to a URL, by host
//! (`<url-id>.lambda-url.<region>.<domain>[:port]`) or by path (`/ember/v1/urls/<url-id>/…`),
//! before the Lambda API's routes and their SigV4 authentication (a URL request is not a Lambda
//! API call), and answers it as Lambda does:
//!
//! 1. the URL by its id (404 without one); a CORS preflight is answered from `Cors` at once;
//! 2. the body, at most 6 MB (413);
//! 3. who may call: `NONE` needs a statement of the function's (or alias's) resource policy
//!    allowing `lambda:InvokeFunctionUrl` to `*` (with `FunctionUrlAuthType: NONE` if it has
//!    the condition), `AWS_IAM` a SigV4 signature (service `lambda`) of the owner or of an
//!    account the policy grants `lambda:InvokeFunctionUrl`; else 403;
//! 4. the URL's qualifier runs through the executor as a `RequestResponse` invocation, in the
//!    owner's VMs, with the request as Lambda's payload format 2.0 event (`event.rs`);
//! 5. the result becomes the HTTP response (`response.rs`), with `Cors`' headers; a function
//!    error (a timeout and running out of memory included), a result over 6 MB or one that
//!    cannot be mapped is a 502, a throttle a 429.
//!
//! `InvokeMode: RESPONSE_STREAM` runs the invocation with `Executor::invoke_stream` and answers
//! through `stream.rs`: the head once the function's first bytes (or its prelude) arrive, the
//! body chunk by chunk as the function writes it, up to the executor's 20 MiB rather than 6 MB.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ember_executor::report::Verdict;
use ember_executor::InvokeRequest;
use ember_store::{FunctionUrl, InvokeMode, UrlAuthType};
use tracing::Instrument as _;

use super::event::{self, IamCaller, UrlContext, UrlRequest};
use super::{cors, response, stream};
use crate::auth::Caller;
use crate::error::{ApiError, UrlError};
use crate::front::PeerAddr;
use crate::policy::evaluate;
use crate::validate::FunctionRef;
use crate::AppState;

/// Lambda's limit on a function URL's request body and response payload: 6 MB.
pub const MAX_URL_PAYLOAD: usize = 6 * 1024 * 1024;
/// The path form's prefix.
const PATH_PREFIX: &str = "/ember/v1/urls/";
/// What every URL's host name has.
const LABEL: &[u8] = b".lambda-url.";

/// The URL a request is addressed to, and the path the function sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Addressed {
    pub url_id: String,
    /// `/…`, as sent (percent-encoded).
    pub raw_path: String,
}

/// Which URL `host` (a `Host` header) or `path` addresses, if any: the host form
/// `<url-id>.lambda-url.<region>.<domain>[:port]` (any case), or the path form
/// `/ember/v1/urls/<url-id>[/…]`.
pub(crate) fn addressed(
    host: Option<&str>,
    path: &str,
    region: &str,
    domain: &str,
) -> Option<Addressed> {
    let is_id = |id: &str| {
        id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    // Every API request passes here: one that names no URL costs a scan, not an allocation.
    let named = |h: &&str| {
        h.as_bytes()
            .windows(LABEL.len())
            .any(|w| w.eq_ignore_ascii_case(LABEL))
    };
    if let Some(host) = host.filter(named) {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let suffix = format!(".lambda-url.{region}.{}", domain.to_ascii_lowercase());
        if let Some(id) = name.strip_suffix(&suffix) {
            if is_id(id) {
                return Some(Addressed {
                    url_id: id.to_owned(),
                    raw_path: if path.is_empty() {
                        "/".into()
                    } else {
                        path.into()
                    },
                });
            }
        }
    }
    let rest = path.strip_prefix(PATH_PREFIX)?;
    let (id, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    is_id(id).then(|| Addressed {
        url_id: id.to_owned(),
        raw_path: tail.to_owned(),
    })
}

impl AppState {
    fn addressed(&self, req: &Request) -> Option<Addressed> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host());
        addressed(host, req.uri().path(), &self.region, &self.urls.domain)
    }
}

/// Serves a request addressed to a function URL; passes any other on to `next` (the Lambda
/// API).
pub(crate) async fn front(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match state.addressed(&req) {
        Some(target) => serve(&state, target, req).await,
        // The path form with an id that is no URL's: no Lambda route either.
        None if req.uri().path().starts_with(PATH_PREFIX) => UrlError::NotFound.into_response(),
        None => next.run(req).await,
    }
}

/// Serves a request addressed to a function URL; anything else is a 404 (the `--url-listen`
/// listener serves only URLs).
pub(crate) async fn only(State(state): State<AppState>, req: Request) -> Response {
    match state.addressed(&req) {
        Some(target) => serve(&state, target, req).await,
        None => UrlError::NotFound.into_response(),
    }
}

async fn serve(state: &AppState, target: Addressed, req: Request) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let span =
        tracing::debug_span!("function_url", url_id = %target.url_id, request_id = %request_id);
    let mut response = match answer(state, &target, &request_id, req)
        .instrument(span)
        .await
    {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-amzn-RequestId", value);
    }
    response
}

async fn answer(
    state: &AppState,
    target: &Addressed,
    request_id: &str,
    req: Request,
) -> Result<Response, UrlError> {
    let arrived = time::OffsetDateTime::now_utc();
    let url = state
        .store
        .function_url_by_id(&target.url_id)
        .await?
        .ok_or(UrlError::NotFound)?;
    let (parts, body) = req.into_parts();
    let origin = header_str(&parts.headers, header::ORIGIN);
    if let Some(cors) = &url.cors {
        let requested = parts
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if cors::is_preflight(&parts.method, origin, requested) {
            let mut response = StatusCode::OK.into_response();
            for (name, value) in cors::preflight(cors, origin) {
                response.headers_mut().append(name, value);
            }
            return Ok(response);
        }
    }
    let body = crate::auth::read_body(body, MAX_URL_PAYLOAD, state.read_timeout)
        .await
        .map_err(|e| match e {
            ApiError::RequestEntityTooLarge(_) => UrlError::RequestTooLarge(MAX_URL_PAYLOAD),
            ApiError::RequestTimeout(_) => UrlError::RequestTimeout,
            other => UrlError::Service(other.to_string()),
        })?;
    let signer = state.authorize(&url, &parts, &body).await?;
    let owner = Caller {
        account_id: url.account_id.clone(),
        is_admin: false,
        session: None,
    };
    let reference = FunctionRef {
        name: url.function_name.clone(),
        account_id: None,
        qualifier: url.qualifier.clone(),
    };
    let draw = rand::Rng::gen::<f64>(&mut rand::thread_rng());
    let function = state
        .invoked(&owner, &reference, draw)
        .await
        .map_err(|e| match e {
            ApiError::NotFound(_) => UrlError::NotFound,
            other => UrlError::Service(other.to_string()),
        })?;
    let source_ip = parts
        .extensions
        .get::<PeerAddr>()
        .map(|p| p.0.ip().to_string())
        .unwrap_or_default();
    let protocol = format!("{:?}", parts.version);
    let domain_name = state.url_domain_name(&url.url_id);
    let event = event::event(
        &UrlRequest {
            method: parts.method.as_str(),
            raw_path: &target.raw_path,
            raw_query: parts.uri.query().unwrap_or(""),
            headers: &parts.headers,
            body: &body,
            protocol: &protocol,
            source_ip: &source_ip,
        },
        &UrlContext {
            account_id: &url.account_id,
            url_id: &url.url_id,
            domain_name: &domain_name,
            request_id,
            time: arrived,
            iam: signer.as_ref().map(|(caller, key)| IamCaller {
                access_key: key,
                account_id: &caller.account_id,
            }),
        },
    );
    // Structs of strings and maps of strings: serialising them cannot fail.
    let payload = Bytes::from(serde_json::to_vec(&event).unwrap_or_default());
    let executor = state
        .executor()
        .map_err(|e| UrlError::Unavailable(e.to_string()))?;
    let request = InvokeRequest {
        function,
        qualifier: url.qualifier.clone(),
        request_id: request_id.to_owned(),
        payload,
        client_context: None,
        cognito_identity: None,
    };
    let (status, headers, body) = match url.invoke_mode {
        // Streamed as the function writes it; the executor holds it to Lambda's 20 MiB.
        InvokeMode::ResponseStream => {
            let stream = executor.invoke_stream(request).await?;
            let (head, body) = stream::respond(stream).await?;
            (head.status, head.headers, body)
        }
        InvokeMode::Buffered => {
            let result = executor.invoke(request).await?;
            if let Verdict::Unhandled { error_type } = &result.verdict {
                tracing::debug!(error_type = %error_type, "function URL: the function failed");
                return Err(UrlError::BadGateway);
            }
            if result.payload.len() > MAX_URL_PAYLOAD {
                tracing::debug!(
                    bytes = result.payload.len(),
                    "function URL: response over 6 MB"
                );
                return Err(UrlError::BadGateway);
            }
            let mapped = response::map(&result.payload).map_err(|e| {
                tracing::debug!(error = %e, "function URL: response not mappable");
                UrlError::BadGateway
            })?;
            (mapped.status, mapped.headers, Body::from(mapped.body))
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(status).map_err(|_| UrlError::BadGateway)?;
    let out = response.headers_mut();
    for (name, value) in headers {
        // Cors, when the URL has it, answers CORS instead of the function.
        if url.cors.is_some() && name.as_str().starts_with("access-control-") {
            continue;
        }
        out.append(name, value);
    }
    if let Some(cors) = &url.cors {
        for (name, value) in cors::response_headers(cors, origin) {
            out.append(name, value);
        }
    }
    Ok(response)
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl AppState {
    /// Whether the request may call `url`: its signer (account and access key) for an
    /// `AWS_IAM` URL, `None` for a `NONE` one; 403 otherwise.
    async fn authorize(
        &self,
        url: &FunctionUrl,
        parts: &axum::http::request::Parts,
        body: &Bytes,
    ) -> Result<Option<(Caller, String)>, UrlError> {
        let (caller, signer) = match url.auth_type {
            UrlAuthType::None => (String::new(), None),
            UrlAuthType::AwsIam => {
                let signed = crate::auth::verify_signed(self, parts, body)
                    .await
                    .map_err(|e| {
                        tracing::debug!(error = %e, "function URL: signature refused");
                        UrlError::Forbidden
                    })?;
                if signed.0.account_id == url.account_id {
                    return Ok(Some(signed));
                }
                (signed.0.account_id.clone(), Some(signed))
            }
        };
        let policies = self
            .store
            .policies(&url.account_id, &url.function_name)
            .await?;
        let call = evaluate::Call {
            caller_account: &caller,
            action: "lambda:InvokeFunctionUrl",
            qualifier: url.qualifier.as_deref(),
            url_auth: Some(url.auth_type.as_str()),
        };
        if !evaluate::allows(&policies, &call) {
            return Err(UrlError::Forbidden);
        }
        Ok(signer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "abcdefghijklmnopqrstuvwxyz012345";

    #[test]
    fn requests_are_addressed_by_host_or_path() {
        let host = format!("{ID}.lambda-url.us-east-1.localhost");
        // (Host, path, URL id and path addressed)
        type Row<'a> = (Option<String>, &'a str, Option<(&'a str, &'a str)>);
        let table: Vec<Row<'_>> = vec![
            (Some(host.clone()), "/a/b", Some((ID, "/a/b"))),
            (Some(format!("{host}:8900")), "/", Some((ID, "/"))),
            (Some(host.to_uppercase()), "/x", Some((ID, "/x"))),
            (Some(format!("{host}.")), "/x", Some((ID, "/x"))),
            // Another region or domain, or an id that is not one: not a URL.
            (
                Some(format!("{ID}.lambda-url.eu-west-1.localhost")),
                "/",
                None,
            ),
            (
                Some(format!("{ID}.lambda-url.us-east-1.example.com")),
                "/",
                None,
            ),
            (
                Some("short.lambda-url.us-east-1.localhost".into()),
                "/",
                None,
            ),
            (Some("127.0.0.1:8900".into()), "/2015-03-31/functions", None),
            // The path form, whatever the host.
            (
                Some("127.0.0.1:8900".into()),
                "/ember/v1/urls/abcdefghijklmnopqrstuvwxyz012345/p",
                Some((ID, "/p")),
            ),
            (
                None,
                "/ember/v1/urls/abcdefghijklmnopqrstuvwxyz012345",
                Some((ID, "/")),
            ),
            (
                None,
                "/ember/v1/urls/abcdefghijklmnopqrstuvwxyz012345/",
                Some((ID, "/")),
            ),
            (
                None,
                "/ember/v1/urls/UPPERCASEUPPERCASEUPPERCASEUPPERC/",
                None,
            ),
            (None, "/ember/v1/fleet", None),
        ];
        for (host, path, want) in table {
            let got = addressed(host.as_deref(), path, "us-east-1", "localhost");
            let want = want.map(|(id, p)| Addressed {
                url_id: id.into(),
                raw_path: p.into(),
            });
            assert_eq!(got, want, "{host:?} {path}");
        }
    }
}
