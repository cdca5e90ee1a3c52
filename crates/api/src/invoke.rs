//! The Invoke operation: [`parse`] turns the request into an [`Invocation`] (a pure function,
//! table-tested below), then the handler hands it to the executor: `RequestResponse` runs it and
//! answers what the function returned, `Event` queues it durably and answers 202, `DryRun` only
//! checks it (204).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ember_executor::report::{self, Verdict};
use ember_executor::{InvokeRequest, InvokeResponse};

use crate::auth::{Caller, RequestId};
use crate::error::ApiError;
use crate::functions::QualifierQuery;
use crate::AppState;

/// Synchronous payloads up to 6 MB, asynchronous up to 256 KB, as in Lambda.
const MAX_SYNC_PAYLOAD: usize = 6 * 1024 * 1024;
const MAX_ASYNC_PAYLOAD: usize = 256 * 1024;
/// `X-Amz-Client-Context` carries at most 3583 bytes of base64, as in Lambda.
const MAX_CLIENT_CONTEXT: usize = 3583;

/// An Invoke request, parsed and checked: all the handler acts on, and nothing of HTTP.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Invocation {
    /// The function as the path names it: a name, `name:qualifier`, or a partial or full ARN.
    pub function: String,
    /// The `Qualifier` query parameter. It is resolved with the name by
    /// [`AppState::invoked`] (a version, or an alias's version, weighted): that needs the
    /// caller's account and the store, so it is no part of the parse.
    pub qualifier: Option<String>,
    pub action: Action,
}

/// What an Invoke asks for, by `X-Amz-Invocation-Type`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Run it and answer what the function returned.
    RequestResponse {
        /// JSON (an empty body is `{}`).
        payload: Bytes,
        /// `X-Amz-Client-Context`, decoded: a JSON object.
        client_context: Option<serde_json::Value>,
        /// `X-Amz-Log-Type: Tail`: answer the log's last 4 KB in `X-Amz-Log-Result`.
        tail: bool,
    },
    /// Queue it durably and answer 202. The log type and client context are checked, and not
    /// kept: nothing waits for the log, and the queue does not carry a client context.
    Event { payload: Bytes },
    /// Only check it (the function must exist) and answer 204.
    DryRun,
}

/// Parses an Invoke request. Checked in this order, the first failure answered: invocation type,
/// log type, client context, payload size (the invocation type's limit), payload JSON.
pub(crate) fn parse(
    function: String,
    qualifier: Option<String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Invocation, ApiError> {
    #[derive(Debug, Clone, Copy)]
    enum Kind {
        RequestResponse,
        Event,
        DryRun,
    }
    let kind = match header(headers, "x-amz-invocation-type")? {
        None | Some("RequestResponse") => Kind::RequestResponse,
        Some("Event") => Kind::Event,
        Some("DryRun") => Kind::DryRun,
        Some(other) => {
            return Err(ApiError::InvalidParameter(format!(
                "1 validation error detected: Value '{other}' at 'invocationType' failed to \
                 satisfy constraint: Member must satisfy enum value set: [Event, \
                 RequestResponse, DryRun]"
            )))
        }
    };
    let tail = match header(headers, "x-amz-log-type")? {
        None | Some("None") => false,
        Some("Tail") => true,
        Some(other) => {
            return Err(ApiError::InvalidParameter(format!(
                "1 validation error detected: Value '{other}' at 'logType' failed to satisfy \
                 constraint: Member must satisfy enum value set: [Tail, None]"
            )))
        }
    };
    let client_context = client_context(header(headers, "x-amz-client-context")?)?;
    let limit = match kind {
        Kind::Event => MAX_ASYNC_PAYLOAD,
        Kind::RequestResponse | Kind::DryRun => MAX_SYNC_PAYLOAD,
    };
    if body.len() > limit {
        return Err(ApiError::TooLarge(format!(
            "{} byte payload is too large for the {kind:?} invocation type (limit {limit} bytes)",
            body.len()
        )));
    }
    let payload = if body.iter().all(u8::is_ascii_whitespace) {
        Bytes::from_static(b"{}")
    } else if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
        return Err(ApiError::InvalidRequestContent(
            "Could not parse request body into json: the payload is not valid JSON".into(),
        ));
    } else {
        body
    };
    let action = match kind {
        Kind::RequestResponse => Action::RequestResponse {
            payload,
            client_context,
            tail,
        },
        Kind::Event => Action::Event { payload },
        Kind::DryRun => Action::DryRun,
    };
    Ok(Invocation {
        function,
        qualifier,
        action,
    })
}

pub async fn invoke(
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
    match invocation.action {
        Action::DryRun => Ok(StatusCode::NO_CONTENT.into_response()),
        Action::Event { payload } => {
            // The version chosen now runs it; the event invoke config of the qualifier invoked
            // (`$LATEST` without one) applies to it.
            let qualifier = target.qualifier.as_deref().unwrap_or(ember_store::LATEST);
            state
                .executor()?
                .enqueue_qualified(&function, qualifier, &request_id, &payload)
                .await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        Action::RequestResponse {
            payload,
            client_context,
            tail,
        } => {
            let response = state
                .executor()?
                .invoke(InvokeRequest {
                    function,
                    qualifier: target.qualifier,
                    request_id,
                    payload,
                    client_context,
                    cognito_identity: None,
                })
                .await?;
            Ok(respond(response, tail))
        }
    }
}

/// The answer to a `RequestResponse` invocation that ran: what the function returned, with
/// Lambda's headers.
fn respond(response: InvokeResponse, tail: bool) -> Response {
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
    http
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

#[cfg(test)]
mod tests {
    use super::*;

    use axum::http::HeaderName;
    use serde_json::json;

    /// Parses a request to function `f` with these headers and body.
    fn parsed(headers: &[(&str, &str)], body: &[u8]) -> Result<Invocation, ApiError> {
        parsed_qualified(None, headers, body)
    }

    fn parsed_qualified(
        qualifier: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Invocation, ApiError> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        parse(
            "f".into(),
            qualifier.map(str::to_owned),
            &map,
            Bytes::copy_from_slice(body),
        )
    }

    fn sync(payload: &[u8], client_context: Option<serde_json::Value>, tail: bool) -> Action {
        Action::RequestResponse {
            payload: Bytes::copy_from_slice(payload),
            client_context,
            tail,
        }
    }

    fn event(payload: &[u8]) -> Action {
        Action::Event {
            payload: Bytes::copy_from_slice(payload),
        }
    }

    /// The AWS error type and message of a refusal.
    fn refusal(result: Result<Invocation, ApiError>) -> (&'static str, String) {
        match result {
            Ok(invocation) => panic!("accepted: {invocation:?}"),
            Err(err) => (err.error_type(), err.to_string()),
        }
    }

    /// A JSON document of exactly `len` bytes: a string of `len - 2` letters.
    fn json_of_len(len: usize) -> Vec<u8> {
        let mut doc = vec![b'a'; len];
        doc[0] = b'"';
        doc[len - 1] = b'"';
        doc
    }

    fn b64(json: &serde_json::Value) -> String {
        STANDARD.encode(json.to_string())
    }

    #[test]
    fn invocation_and_log_types_select_the_action() {
        let table: &[(&[(&str, &str)], Action)] = &[
            (&[], sync(b"1", None, false)),
            (
                &[("x-amz-invocation-type", "RequestResponse")],
                sync(b"1", None, false),
            ),
            (&[("x-amz-invocation-type", "Event")], event(b"1")),
            (&[("x-amz-invocation-type", "DryRun")], Action::DryRun),
            // Header names are case-insensitive (HTTP's rule; botocore sends them capitalised).
            (&[("X-Amz-Invocation-Type", "Event")], event(b"1")),
            (&[("x-amz-log-type", "Tail")], sync(b"1", None, true)),
            (&[("X-Amz-Log-Type", "Tail")], sync(b"1", None, true)),
            (&[("x-amz-log-type", "None")], sync(b"1", None, false)),
            // The log type is checked for every invocation type and kept only where a log is
            // answered.
            (
                &[
                    ("x-amz-invocation-type", "Event"),
                    ("x-amz-log-type", "Tail"),
                ],
                event(b"1"),
            ),
            (
                &[
                    ("x-amz-invocation-type", "DryRun"),
                    ("x-amz-log-type", "Tail"),
                ],
                Action::DryRun,
            ),
        ];
        for (headers, action) in table {
            let invocation = parsed(headers, b"1").unwrap();
            assert_eq!(&invocation.action, action, "{headers:?}");
        }
    }

    #[test]
    fn unknown_invocation_and_log_types_are_refused_naming_the_member() {
        let table: &[(&[(&str, &str)], &str)] = &[
            // Values are case-sensitive, as Lambda's enums are.
            (
                &[("x-amz-invocation-type", "event")],
                "Value 'event' at 'invocationType'",
            ),
            (
                &[("x-amz-invocation-type", "REQUESTRESPONSE")],
                "Value 'REQUESTRESPONSE' at 'invocationType'",
            ),
            (
                &[("x-amz-invocation-type", "")],
                "Value '' at 'invocationType'",
            ),
            (&[("x-amz-log-type", "tail")], "Value 'tail' at 'logType'"),
            (&[("x-amz-log-type", "All")], "Value 'All' at 'logType'"),
            // The invocation type is checked first.
            (
                &[("x-amz-invocation-type", "Async"), ("x-amz-log-type", "x")],
                "Value 'Async' at 'invocationType'",
            ),
        ];
        for (headers, message) in table {
            let (error_type, got) = refusal(parsed(headers, b"{}"));
            assert_eq!(error_type, "InvalidParameterValueException", "{headers:?}");
            assert!(got.contains(message), "{headers:?}: {got}");
        }
    }

    #[test]
    fn a_header_that_is_not_visible_ascii_is_refused_naming_it() {
        for name in [
            "x-amz-invocation-type",
            "x-amz-log-type",
            "x-amz-client-context",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_bytes("Évent".as_bytes()).unwrap(),
            );
            let (error_type, message) =
                refusal(parse("f".into(), None, &headers, Bytes::from_static(b"{}")));
            assert_eq!(error_type, "InvalidParameterValueException");
            assert_eq!(message, format!("header {name} is not ASCII"));
        }
    }

    #[test]
    fn a_client_context_is_base64_of_a_json_object_of_at_most_3583_bytes() {
        let object = json!({"custom": {"k": "v"}, "client": {"app_title": "t"}});
        let accepted = parsed(&[("x-amz-client-context", &b64(&object))], b"{}").unwrap();
        assert_eq!(accepted.action, sync(b"{}", Some(object), false));

        let invalid = "Client context must be a valid Base64-encoded JSON object.";
        let too_large = "Client context must be at most 3583 bytes of base64";
        // An object whose base64 is `len` bytes (a multiple of 4): `{"k":"vv…"}`, `len / 4 * 3`
        // bytes of JSON.
        let of_b64_len = |len: usize| json!({ "k": "v".repeat(len / 4 * 3 - 8) });
        assert_eq!(b64(&of_b64_len(3580)).len(), 3580);
        assert_eq!(b64(&of_b64_len(3584)).len(), 3584);
        let table: Vec<(String, Option<&str>)> = vec![
            // The largest padded base64 within the limit is accepted...
            (b64(&of_b64_len(3580)), None),
            // ...3583 bytes are not whole base64 (not a multiple of 4)...
            (b64(&of_b64_len(3580)) + "e30", Some(invalid)),
            // ...and one byte past the limit is refused as too large, before it is decoded.
            (b64(&of_b64_len(3584)), Some(too_large)),
            ("A".repeat(3584), Some(too_large)),
            ("not base64!".into(), Some(invalid)),
            (STANDARD.encode("[1, 2]"), Some(invalid)),
            (STANDARD.encode("\"s\""), Some(invalid)),
            (STANDARD.encode("null"), Some(invalid)),
            (STANDARD.encode("{not json"), Some(invalid)),
            (String::new(), Some(invalid)),
        ];
        for (value, refused) in table {
            let result = parsed(&[("x-amz-client-context", &value)], b"{}");
            match refused {
                None => assert!(result.is_ok(), "{} bytes: {result:?}", value.len()),
                Some(message) => {
                    let (error_type, got) = refusal(result);
                    assert_eq!(error_type, "InvalidParameterValueException");
                    assert_eq!(got, message, "{value:.40} ({} bytes)", value.len());
                }
            }
        }
        // The client context is checked for every invocation type.
        for kind in ["Event", "DryRun"] {
            let headers = [
                ("x-amz-invocation-type", kind),
                ("x-amz-client-context", "not base64!"),
            ];
            assert_eq!(refusal(parsed(&headers, b"{}")).1, invalid, "{kind}");
        }
    }

    #[test]
    fn payloads_may_be_6_mb_synchronously_and_256_kb_as_events() {
        const SYNC: usize = 6_291_456;
        const EVENT: usize = 262_144;
        let table: &[(&str, usize, bool)] = &[
            ("RequestResponse", SYNC - 1, true),
            ("RequestResponse", SYNC, true),
            ("RequestResponse", SYNC + 1, false),
            ("DryRun", SYNC - 1, true),
            ("DryRun", SYNC, true),
            ("DryRun", SYNC + 1, false),
            ("Event", EVENT - 1, true),
            ("Event", EVENT, true),
            ("Event", EVENT + 1, false),
        ];
        for &(kind, len, accepted) in table {
            let body = json_of_len(len);
            let result = parsed(&[("x-amz-invocation-type", kind)], &body);
            if accepted {
                let invocation = result.unwrap_or_else(|e| panic!("{kind} {len}: {e}"));
                match invocation.action {
                    Action::RequestResponse { payload, .. } | Action::Event { payload } => {
                        assert_eq!(payload.len(), len, "{kind}")
                    }
                    Action::DryRun => {}
                }
            } else {
                let (error_type, message) = refusal(result);
                assert_eq!(error_type, "RequestTooLargeException", "{kind} {len}");
                assert!(
                    message.starts_with(&format!("{len} byte payload is too large for the {kind}")),
                    "{message}"
                );
            }
        }
        // The size is checked before the JSON: an oversized body is too large, whatever it is.
        let (error_type, _) = refusal(parsed(&[], &vec![b'{'; SYNC + 1]));
        assert_eq!(error_type, "RequestTooLargeException");
    }

    #[test]
    fn a_payload_must_be_json_and_an_empty_one_is_an_empty_object() {
        let table: &[(&[u8], Option<&[u8]>)] = &[
            (b"", Some(b"{}")),
            (b" \r\n\t", Some(b"{}")),
            (b"{}", Some(b"{}")),
            // Passed on byte for byte, whitespace and all.
            (
                b" {\"k\": [1, 2.5, null]} \n",
                Some(b" {\"k\": [1, 2.5, null]} \n"),
            ),
            (b"5", Some(b"5")),
            (b"\"text\"", Some(b"\"text\"")),
            (b"null", Some(b"null")),
            (b"{not json", None),
            (b"{}{}", None),
            (b"{} x", None),
            (b"'single'", None),
            (b"\xff\xfe", None),
        ];
        for &(body, passed) in table {
            let result = parsed(&[], body);
            match passed {
                Some(payload) => {
                    assert_eq!(
                        result.unwrap().action,
                        sync(payload, None, false),
                        "{body:?}"
                    )
                }
                None => {
                    let (error_type, message) = refusal(result);
                    assert_eq!(error_type, "InvalidRequestContentException", "{body:?}");
                    assert!(message.starts_with("Could not parse request body into json"));
                }
            }
        }
        // Events and dry runs are held to the same rule.
        assert_eq!(
            parsed(&[("x-amz-invocation-type", "Event")], b"")
                .unwrap()
                .action,
            event(b"{}")
        );
        for kind in ["Event", "DryRun"] {
            let (error_type, _) = refusal(parsed(&[("x-amz-invocation-type", kind)], b"{"));
            assert_eq!(error_type, "InvalidRequestContentException", "{kind}");
        }
    }

    /// The name and qualifier go to the lookup as given ([`AppState::function`] refuses every
    /// qualifier but `$LATEST`: `tests/http.rs`'s
    /// `qualifiers_are_refused_until_versions_exist_and_change_nothing`), and a qualified
    /// request's headers and body are checked first, as any other's.
    #[test]
    fn qualifiers_are_passed_to_the_lookup_as_given_after_the_checks() {
        for qualifier in [None, Some("$LATEST"), Some("1"), Some("prod"), Some("")] {
            let invocation = parsed_qualified(qualifier, &[], b"{}").unwrap();
            assert_eq!(
                invocation,
                Invocation {
                    function: "f".into(),
                    qualifier: qualifier.map(str::to_owned),
                    action: sync(b"{}", None, false),
                }
            );
            let refused = parsed_qualified(qualifier, &[("x-amz-invocation-type", "x")], b"{}");
            assert_eq!(refusal(refused).0, "InvalidParameterValueException");
        }
        let mut headers = HeaderMap::new();
        headers.insert("x-amz-invocation-type", HeaderValue::from_static("DryRun"));
        let named = parse(
            "arn:aws:lambda:us-east-1:123456789012:function:f:1".into(),
            None,
            &headers,
            Bytes::new(),
        )
        .unwrap();
        assert_eq!(
            named.function,
            "arn:aws:lambda:us-east-1:123456789012:function:f:1"
        );
        assert_eq!(named.action, Action::DryRun);
    }
}
