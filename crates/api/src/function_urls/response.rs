//! What a function's result becomes as the URL's HTTP response, as Lambda maps it: a pure
//! function ([`map`]) of the payload, table-tested below.
//!
//! A JSON object with `statusCode` is a response: that status, its `headers` (a value that is
//! not a string is written as its JSON), each of its `cookies` as a `Set-Cookie` header, its
//! `body` (base64-decoded when `isBase64Encoded` is true), `content-type: application/json`
//! unless its headers name one. Any other JSON value (an object without `statusCode` included)
//! is the body of a 200 `application/json` response, as the function returned it. Headers of
//! the connection or the framing (`content-length`, `transfer-encoding`, …) are the server's,
//! and a function's are dropped. A response Lambda cannot map (a status outside 100–599,
//! headers that are not an object of valid header names and values, cookies that are not
//! strings, a body that is not base64 when it says it is) is the URL's 502.

use axum::body::Bytes;
use axum::http::{HeaderName, HeaderValue};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;

/// Headers of the connection or the message's framing, which the server sets itself: a
/// function's are dropped.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "content-length",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
];

/// The HTTP response a function's result maps to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HttpAnswer {
    pub status: u16,
    /// In the order given; `set-cookie` ones last, one per cookie.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// Why a result is not a response Lambda can send (the URL answers 502).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the function's response cannot be mapped to HTTP: {0}")]
pub(crate) struct BadResponse(pub String);

/// Maps a function's result (`payload`, the bytes it returned) to the HTTP response.
pub(crate) fn map(payload: &Bytes) -> Result<HttpAnswer, BadResponse> {
    let json = HeaderValue::from_static("application/json");
    let plain = |body: Bytes| HttpAnswer {
        status: 200,
        headers: vec![(axum::http::header::CONTENT_TYPE, json.clone())],
        body,
    };
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(payload) else {
        // Any other JSON value (or bytes a custom runtime posted that are not JSON) is the
        // body, as it is.
        return Ok(plain(payload.clone()));
    };
    let Some(status) = object.get("statusCode") else {
        return Ok(plain(payload.clone()));
    };
    let (status, headers) = head(&object, status, &json)?;
    let base64 = match object.get("isBase64Encoded") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(BadResponse(format!(
                "isBase64Encoded {other} is not a boolean"
            )))
        }
    };
    let body = match object.get("body") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(text)) if base64 => STANDARD
            .decode(text)
            .map(Bytes::from)
            .map_err(|_| BadResponse("the body is not base64".into()))?,
        Some(Value::String(text)) => Bytes::from(text.clone()),
        Some(other) => Bytes::from(other.to_string()),
    };
    Ok(HttpAnswer {
        status,
        headers,
        body,
    })
}

/// The status and headers (`Set-Cookie` ones last) of a response object whose `statusCode` is
/// `status`, with `default_type` as `content-type` unless its headers name one.
pub(crate) fn head(
    object: &serde_json::Map<String, Value>,
    status: &Value,
    default_type: &HeaderValue,
) -> Result<(u16, Vec<(HeaderName, HeaderValue)>), BadResponse> {
    let status = status
        .as_u64()
        .filter(|s| (100..=599).contains(s))
        .and_then(|s| u16::try_from(s).ok())
        .ok_or_else(|| BadResponse(format!("statusCode {status} is not an HTTP status")))?;
    let mut headers = Vec::new();
    match object.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(given)) => {
            for (name, value) in given {
                let value = match value {
                    Value::Null => continue,
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| BadResponse(format!("{name:?} is not a header name")))?;
                if HOP_BY_HOP.contains(&name.as_str()) {
                    // The server frames the response itself.
                    continue;
                }
                let value = HeaderValue::from_str(&value)
                    .map_err(|_| BadResponse(format!("the value of {name} is not valid")))?;
                headers.push((name, value));
            }
        }
        Some(other) => return Err(BadResponse(format!("headers {other} is not an object"))),
    }
    if !headers
        .iter()
        .any(|(n, _)| n == axum::http::header::CONTENT_TYPE)
    {
        headers.push((axum::http::header::CONTENT_TYPE, default_type.clone()));
    }
    match object.get("cookies") {
        None | Some(Value::Null) => {}
        Some(Value::Array(cookies)) => {
            for cookie in cookies {
                let cookie = cookie
                    .as_str()
                    .and_then(|c| HeaderValue::from_str(c).ok())
                    .ok_or_else(|| BadResponse(format!("cookie {cookie} is not valid")))?;
                headers.push((axum::http::header::SET_COOKIE, cookie));
            }
        }
        Some(other) => return Err(BadResponse(format!("cookies {other} is not a list"))),
    }
    Ok((status, headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(payload: &str) -> Result<HttpAnswer, BadResponse> {
        map(&Bytes::from(payload.to_owned()))
    }

    fn pairs(a: &HttpAnswer) -> Vec<(String, String)> {
        a.headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect()
    }

    /// Results and the responses they become (status, headers, body).
    #[test]
    fn results_map_as_lambda_maps_them() {
        let json = ("content-type".to_owned(), "application/json".to_owned());
        // (payload, status, headers, body)
        type Row<'a> = (&'a str, u16, Vec<(String, String)>, &'a [u8]);
        let table: &[Row<'_>] = &[
            // Any JSON value but an object with statusCode: a 200 JSON body, as returned.
            (
                r#""Hello, world!""#,
                200,
                vec![json.clone()],
                br#""Hello, world!""#,
            ),
            (
                r#"{"message":"hi"}"#,
                200,
                vec![json.clone()],
                br#"{"message":"hi"}"#,
            ),
            ("[1,2]", 200, vec![json.clone()], b"[1,2]"),
            ("42", 200, vec![json.clone()], b"42"),
            ("null", 200, vec![json.clone()], b"null"),
            (
                r#"{"body":"x"}"#,
                200,
                vec![json.clone()],
                br#"{"body":"x"}"#,
            ),
            // A response object.
            (
                r#"{"statusCode":201,"headers":{"Content-Type":"text/html","X-N":5},"body":"<h1>hi</h1>"}"#,
                201,
                vec![
                    ("content-type".into(), "text/html".into()),
                    ("x-n".into(), "5".into()),
                ],
                b"<h1>hi</h1>",
            ),
            (r#"{"statusCode":404}"#, 404, vec![json.clone()], b""),
            (
                r#"{"statusCode":200,"cookies":["a=1; Max-Age=60","b=2"],"body":"ok"}"#,
                200,
                vec![
                    json.clone(),
                    ("set-cookie".into(), "a=1; Max-Age=60".into()),
                    ("set-cookie".into(), "b=2".into()),
                ],
                b"ok",
            ),
            (
                r#"{"statusCode":200,"isBase64Encoded":true,"body":"AAH/","headers":{"content-type":"application/octet-stream"}}"#,
                200,
                vec![("content-type".into(), "application/octet-stream".into())],
                b"\x00\x01\xff",
            ),
            (
                r#"{"statusCode":302,"headers":{"location":"/x","gone":null}}"#,
                302,
                vec![("location".into(), "/x".into()), json.clone()],
                b"",
            ),
            (
                r#"{"statusCode":200,"headers":{"Content-Length":"999","Connection":"close","x":"y"},"body":"ab"}"#,
                200,
                vec![("x".into(), "y".into()), json.clone()],
                b"ab",
            ),
            (
                r#"{"statusCode":200,"body":{"nested":true}}"#,
                200,
                vec![json.clone()],
                br#"{"nested":true}"#,
            ),
        ];
        for (payload, status, headers, body) in table {
            let a = answer(payload).unwrap_or_else(|e| panic!("{payload}: {e}"));
            assert_eq!(a.status, *status, "{payload}");
            assert_eq!(&pairs(&a), headers, "{payload}");
            assert_eq!(&a.body[..], *body, "{payload}");
        }
    }

    /// Results Lambda cannot send: the URL's 502.
    #[test]
    fn unmappable_responses_are_refused() {
        for payload in [
            r#"{"statusCode":"200"}"#,
            r#"{"statusCode":99}"#,
            r#"{"statusCode":600}"#,
            r#"{"statusCode":-1}"#,
            r#"{"statusCode":200,"headers":[1]}"#,
            r#"{"statusCode":200,"headers":{"bad name":"x"}}"#,
            r#"{"statusCode":200,"headers":{"x":"line\nbreak"}}"#,
            r#"{"statusCode":200,"cookies":"a=1"}"#,
            r#"{"statusCode":200,"cookies":[1]}"#,
            r#"{"statusCode":200,"isBase64Encoded":true,"body":"not base64!"}"#,
            r#"{"statusCode":200,"isBase64Encoded":"yes"}"#,
        ] {
            assert!(answer(payload).is_err(), "{payload} was mapped");
        }
    }

    /// Bytes that are not JSON (a custom runtime's) are the body as they are.
    #[test]
    fn bytes_that_are_not_json_are_the_body() {
        let a = answer("plain text").unwrap();
        assert_eq!((a.status, &a.body[..]), (200, &b"plain text"[..]));
    }

    proptest::proptest! {
        /// Whatever a function returns, the mapping answers (a response or a 502), never
        /// panics; a response's body is what the result said.
        #[test]
        fn any_result_maps_or_is_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = map(&Bytes::from(bytes));
        }

        #[test]
        fn a_text_body_comes_back_whole(status in 100u16..600, body in ".*") {
            let payload = serde_json::json!({"statusCode": status, "body": body}).to_string();
            let a = answer(&payload).unwrap();
            proptest::prop_assert_eq!(a.status, status);
            proptest::prop_assert_eq!(&a.body[..], body.as_bytes());
        }
    }
}
