//! The head of a `RESPONSE_STREAM` URL's streamed response, as Lambda reads it: a runtime that
//! streams with the content type [`HTTP_INTEGRATION_RESPONSE`] (Node.js's
//! `awslambda.HttpResponseStream.from`, `lambda_runtime`'s `StreamResponse` with metadata)
//! first writes a JSON prelude (`statusCode`, `headers`, `cookies`, mapped as `response.rs` maps
//! a buffered response's), then 8 NUL bytes, then the body; any other streamed response is a 200
//! with the runtime's content type (`application/octet-stream` without one) and every byte is
//! body. [`PreludeReader`] finds the prelude across chunks, as pure code, table-tested below.
//!
//! Not called yet: URLs answer `RESPONSE_STREAM` buffered until the executor streams responses
//! (`Executor::invoke_stream`, issue 18 part 3); serving a streamed URL then reads the first
//! chunks through this and forwards the rest as they come.

#![cfg_attr(not(test), allow(dead_code))]

use axum::body::Bytes;
use axum::http::{HeaderName, HeaderValue};
use serde_json::Value;

use super::response::{head, BadResponse};

/// The content type of a streamed response that begins with an HTTP prelude.
pub(crate) const HTTP_INTEGRATION_RESPONSE: &str =
    "application/vnd.awslambda.http-integration-response";
/// What ends the prelude.
const DELIMITER: [u8; 8] = [0; 8];
/// The longest prelude read before the response is refused (a 502).
const MAX_PRELUDE: usize = 64 * 1024;

/// A streamed response's status and headers, and the body bytes that came with them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StreamHead {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body bytes read with the prelude (to send first).
    pub rest: Bytes,
}

/// Reads an HTTP integration response's prelude from its first chunks.
#[derive(Debug, Default)]
pub(crate) struct PreludeReader {
    buffered: Vec<u8>,
}

impl PreludeReader {
    /// Takes the next chunk: the head once the prelude is complete, `None` while it is not.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<Option<StreamHead>, BadResponse> {
        self.buffered.extend_from_slice(chunk);
        let Some(end) = self
            .buffered
            .windows(DELIMITER.len())
            .position(|w| w == DELIMITER)
        else {
            if self.buffered.len() > MAX_PRELUDE {
                return Err(BadResponse(format!(
                    "no end of the prelude in its first {MAX_PRELUDE} bytes"
                )));
            }
            return Ok(None);
        };
        let prelude: Value = serde_json::from_slice(&self.buffered[..end])
            .map_err(|_| BadResponse("the prelude is not JSON".into()))?;
        let Value::Object(object) = prelude else {
            return Err(BadResponse("the prelude is not a JSON object".into()));
        };
        let status = object
            .get("statusCode")
            .cloned()
            .unwrap_or_else(|| Value::from(200));
        let octets = HeaderValue::from_static("application/octet-stream");
        let (status, headers) = head(&object, &status, &octets)?;
        let rest = Bytes::copy_from_slice(&self.buffered[end + DELIMITER.len()..]);
        Ok(Some(StreamHead {
            status,
            headers,
            rest,
        }))
    }

    /// The head of a response that ended (or is read to its end) without completing its
    /// prelude: a 502.
    pub(crate) fn incomplete() -> BadResponse {
        BadResponse("the response ended inside its prelude".into())
    }
}

/// How a streamed response begins, by the content type the runtime streamed it with.
#[derive(Debug)]
pub(crate) enum Begin {
    /// With a prelude: read it ([`PreludeReader::push`]) before answering.
    Prelude(PreludeReader),
    /// Without: this head, and every byte is body.
    Plain(StreamHead),
}

/// How a response streamed with `content_type` begins.
pub(crate) fn begin(content_type: Option<&str>) -> Begin {
    match content_type {
        Some(c) if c.eq_ignore_ascii_case(HTTP_INTEGRATION_RESPONSE) => {
            Begin::Prelude(PreludeReader::default())
        }
        other => Begin::Plain(plain_head(other)),
    }
}

/// The head of a streamed response without a prelude: 200, the runtime's content type.
fn plain_head(content_type: Option<&str>) -> StreamHead {
    let value = content_type
        .and_then(|c| HeaderValue::from_str(c).ok())
        .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
    StreamHead {
        status: 200,
        headers: vec![(axum::http::header::CONTENT_TYPE, value)],
        rest: Bytes::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(h: &StreamHead) -> Vec<String> {
        h.headers
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect()
    }

    #[test]
    fn the_prelude_is_found_across_chunks() {
        let stream: &[u8] = b"{\"statusCode\":201,\"headers\":{\"content-type\":\"text/plain\"},\
                              \"cookies\":[\"a=1\"]}\0\0\0\0\0\0\0\0hello";
        // Whatever the chunks' sizes, the same head and the body's first bytes.
        for size in [1, 3, 8, 40, stream.len()] {
            let Begin::Prelude(mut reader) = begin(Some(HTTP_INTEGRATION_RESPONSE)) else {
                panic!("no prelude expected");
            };
            let mut got = None;
            let mut after = Vec::new();
            for chunk in stream.chunks(size) {
                match &got {
                    Some(_) => after.extend_from_slice(chunk),
                    None => got = reader.push(chunk).unwrap(),
                }
            }
            let head = got.unwrap_or_else(|| panic!("no head with chunks of {size}"));
            assert_eq!(head.status, 201);
            assert_eq!(
                pairs(&head),
                ["content-type: text/plain", "set-cookie: a=1"]
            );
            let mut body = head.rest.to_vec();
            body.extend_from_slice(&after);
            assert_eq!(body, b"hello", "chunks of {size}");
        }
    }

    #[test]
    fn preludes_lambda_cannot_send_are_refused() {
        let table: &[&[u8]] = &[
            b"not json\0\0\0\0\0\0\0\0",
            b"[1]\0\0\0\0\0\0\0\0",
            b"{\"statusCode\":700}\0\0\0\0\0\0\0\0",
            b"{\"headers\":{\"bad name\":\"x\"}}\0\0\0\0\0\0\0\0",
        ];
        for stream in table {
            assert!(PreludeReader::default().push(stream).is_err(), "{stream:?}");
        }
        // A prelude that never ends is refused past its limit, not buffered forever.
        let mut reader = PreludeReader::default();
        let chunk = vec![b' '; 16 * 1024];
        let refused = (0..8).any(|_| reader.push(&chunk).is_err());
        assert!(refused);
        assert!(PreludeReader::incomplete().0.contains("prelude"));
    }

    #[test]
    fn defaults_and_plain_streams() {
        let head = PreludeReader::default()
            .push(b"{}\0\0\0\0\0\0\0\0")
            .unwrap()
            .unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(pairs(&head), ["content-type: application/octet-stream"]);
        for (content_type, want) in [
            (Some("text/event-stream"), "content-type: text/event-stream"),
            (None, "content-type: application/octet-stream"),
        ] {
            let Begin::Plain(head) = begin(content_type) else {
                panic!("a prelude expected of {content_type:?}");
            };
            assert_eq!((head.status, pairs(&head)), (200, vec![want.to_owned()]));
        }
    }
}
