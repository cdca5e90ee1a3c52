//! The head of a `RESPONSE_STREAM` URL's streamed response, as Lambda reads it: a runtime that
//! streams with the content type [`HTTP_INTEGRATION_RESPONSE`] (Node.js's
//! `awslambda.HttpResponseStream.from`, `lambda_runtime`'s `StreamResponse` with metadata)
//! first writes a JSON prelude (`statusCode`, `headers`, `cookies`, mapped as `response.rs` maps
//! a buffered response's), then 8 NUL bytes, then the body; any other streamed response is a 200
//! with the runtime's content type (`application/octet-stream` without one) and every byte is
//! body. [`PreludeReader`] finds the prelude across chunks, as pure code, table-tested below.
//!
//!
//! [`respond`] answers a streamed response over any [`ChunkSource`]: it waits for the first
//! chunk (a function that fails before writing anything is the URL's 502), reads the head, then
//! forwards every chunk to the client as it comes, through a channel of two chunks (a slow
//! client slows the function, nothing is buffered whole); a function that fails after the
//! response began has its connection cut, since its status is gone. A runtime that did not
//! stream (awslambdaric) is answered as a buffered result (`response.rs`).
//!
//! `serve.rs` calls it for `RESPONSE_STREAM` URLs, with the executor's
//! [`ember_executor::ResponseStream`] as the [`ChunkSource`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{HeaderName, HeaderValue};
use serde_json::Value;
use tokio::sync::mpsc;

use super::response::{self, head, BadResponse};
use crate::error::UrlError;

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

/// A response being streamed by a running invocation.
pub(crate) trait ChunkSource: Send + 'static {
    /// The next chunk, as soon as the function wrote it; `None` at the end.
    fn next_chunk(&mut self) -> impl Future<Output = Option<Bytes>> + Send;
    /// Whether the runtime streamed (else its whole result is one chunk).
    fn streamed(&self) -> bool;
    /// The content type the runtime streamed with.
    fn content_type(&self) -> Option<&str>;
    /// Whether the invocation ended well (no function error, no failure of its environment),
    /// once its chunks are read.
    fn finish(self) -> impl Future<Output = bool> + Send;
}

impl ChunkSource for ember_executor::ResponseStream {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        ember_executor::ResponseStream::next_chunk(self).await
    }
    fn streamed(&self) -> bool {
        self.streamed
    }
    fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }
    async fn finish(self) -> bool {
        match ember_executor::ResponseStream::finish(self).await {
            Ok(response) if response.verdict == ember_executor::report::Verdict::Ok => true,
            Ok(response) => {
                tracing::debug!(verdict = ?response.verdict, "function URL: the function failed");
                false
            }
            Err(e) => {
                tracing::debug!(error = %e, "function URL: the invocation failed");
                false
            }
        }
    }
}

/// Chunks handed from the invocation to the client at most this far ahead.
const CHUNKS_AHEAD: usize = 2;

/// The HTTP response of a streamed invocation: its head at once, its body as it comes.
pub(crate) async fn respond<S: ChunkSource>(mut source: S) -> Result<(StreamHead, Body), UrlError> {
    let bad = |e: BadResponse| {
        tracing::debug!(error = %e, "function URL: streamed response not mappable");
        UrlError::BadGateway
    };
    if !source.streamed() {
        let mut payload = Vec::new();
        while let Some(chunk) = source.next_chunk().await {
            payload.extend_from_slice(&chunk);
        }
        if !source.finish().await {
            return Err(UrlError::BadGateway);
        }
        let mapped = response::map(&Bytes::from(payload)).map_err(bad)?;
        let head = StreamHead {
            status: mapped.status,
            headers: mapped.headers,
            rest: Bytes::new(),
        };
        return Ok((head, Body::from(mapped.body)));
    }
    let head = match begin(source.content_type()) {
        Begin::Plain(mut head) => match source.next_chunk().await {
            Some(first) => {
                head.rest = first;
                head
            }
            // Ended without writing anything.
            None => {
                return match source.finish().await {
                    true => Ok((head, Body::empty())),
                    false => Err(UrlError::BadGateway),
                }
            }
        },
        Begin::Prelude(mut reader) => loop {
            match source.next_chunk().await {
                Some(chunk) => {
                    if let Some(head) = reader.push(&chunk).map_err(bad)? {
                        break head;
                    }
                }
                None => {
                    let ended_well = source.finish().await;
                    return Err(if ended_well {
                        bad(PreludeReader::incomplete())
                    } else {
                        UrlError::BadGateway
                    });
                }
            }
        },
    };
    let (tx, rx) = mpsc::channel(CHUNKS_AHEAD);
    tokio::spawn(async move {
        while let Some(chunk) = source.next_chunk().await {
            if tx.send(Ok(chunk)).await.is_err() {
                // The client went away: the invocation runs on, its chunks discarded.
                return;
            }
        }
        if !source.finish().await {
            let _ = tx
                .send(Err(std::io::Error::other(
                    "the function failed after its response began",
                )))
                .await;
        }
    });
    let rest = head.rest.clone();
    Ok((
        head,
        Body::new(ChannelBody {
            first: Some(rest).filter(|r| !r.is_empty()),
            rx,
            failed: None,
        }),
    ))
}

/// A body fed by a channel: an error ends the response abruptly (the connection is cut).
struct ChannelBody {
    first: Option<Bytes>,
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    /// An error received and held back one poll, so that the chunks before it are flushed to
    /// the client before the connection is cut (hyper drops what it has not written yet).
    failed: Option<std::io::Error>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(hyper::body::Frame::data(first))));
        }
        if let Some(error) = self.failed.take() {
            return Poll::Ready(Some(Err(error)));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Err(error))) => {
                // Pending once: hyper flushes what it holds, then polls again for the error.
                self.failed = Some(error);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            other => other.map(|next| next.map(|r| r.map(hyper::body::Frame::data))),
        }
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

    /// A scripted invocation: its chunks, whether it streamed, how it ends.
    struct Fake {
        chunks: std::collections::VecDeque<Bytes>,
        streamed: bool,
        content_type: Option<&'static str>,
        ends_well: bool,
    }

    impl ChunkSource for Fake {
        async fn next_chunk(&mut self) -> Option<Bytes> {
            self.chunks.pop_front()
        }
        fn streamed(&self) -> bool {
            self.streamed
        }
        fn content_type(&self) -> Option<&str> {
            self.content_type
        }
        async fn finish(self) -> bool {
            self.ends_well
        }
    }

    fn fake(chunks: &[&[u8]], content_type: Option<&'static str>, ends_well: bool) -> Fake {
        Fake {
            chunks: chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect(),
            streamed: true,
            content_type,
            ends_well,
        }
    }

    async fn collect(body: Body) -> Result<Vec<u8>, String> {
        axum::body::to_bytes(body, usize::MAX)
            .await
            .map(|b| b.to_vec())
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn streamed_responses_become_http_as_lambda_answers_them() {
        // With a prelude split across chunks: its status and headers, then the rest.
        let (head, body) = respond(fake(
            &[
                b"{\"statusCode\":202,\"cookies\":[\"a=1\"]}\0\0\0",
                b"\0\0\0\0\0he",
                b"llo",
            ],
            Some(HTTP_INTEGRATION_RESPONSE),
            true,
        ))
        .await
        .unwrap();
        assert_eq!(head.status, 202);
        assert_eq!(
            pairs(&head),
            ["content-type: application/octet-stream", "set-cookie: a=1"]
        );
        assert_eq!(collect(body).await.unwrap(), b"hello");

        // Without one: 200, the runtime's type, every byte.
        let (head, body) = respond(fake(
            &[b"data: 1\n\n", b"data: 2\n\n"],
            Some("text/event-stream"),
            true,
        ))
        .await
        .unwrap();
        assert_eq!(
            (head.status, pairs(&head)),
            (200, vec!["content-type: text/event-stream".to_owned()])
        );
        assert_eq!(collect(body).await.unwrap(), b"data: 1\n\ndata: 2\n\n");

        // A runtime that did not stream: its result mapped as a buffered one.
        let mut buffered = fake(&[b"{\"statusCode\":201,\"body\":\"x\"}"], None, true);
        buffered.streamed = false;
        let (head, body) = respond(buffered).await.unwrap();
        assert_eq!(head.status, 201);
        assert_eq!(collect(body).await.unwrap(), b"x");
    }

    #[tokio::test]
    async fn failures_are_502s_before_the_head_and_cut_bodies_after() {
        let table: Vec<Fake> = vec![
            fake(&[], None, false),
            fake(
                &[b"{\"statusCode\":200}"],
                Some(HTTP_INTEGRATION_RESPONSE),
                false,
            ),
            fake(
                &[b"{\"statusCode\":200}"],
                Some(HTTP_INTEGRATION_RESPONSE),
                true,
            ),
            fake(
                &[b"{\"statusCode\":999}\0\0\0\0\0\0\0\0"],
                Some(HTTP_INTEGRATION_RESPONSE),
                true,
            ),
            Fake {
                streamed: false,
                ..fake(&[b"{}"], None, false)
            },
        ];
        for source in table {
            let what = format!("{:?} {}", source.chunks, source.ends_well);
            assert!(
                matches!(respond(source).await, Err(UrlError::BadGateway)),
                "{what}"
            );
        }
        // Failing after the first bytes: the head went out, the body is cut.
        let (head, body) = respond(fake(&[b"partial", b" more"], None, false))
            .await
            .unwrap();
        assert_eq!(head.status, 200);
        assert!(
            collect(body).await.is_err(),
            "a cut body must not look complete"
        );
        // Every chunk written before the failure is still handed out, then the error.
        let (_, body) = respond(fake(&[b"partial", b" more"], None, false))
            .await
            .unwrap();
        let mut frames = body.into_data_stream();
        let mut got = Vec::new();
        let mut cut = false;
        while let Some(frame) = futures_util::StreamExt::next(&mut frames).await {
            match frame {
                Ok(data) => got.extend_from_slice(&data),
                Err(_) => {
                    cut = true;
                    break;
                }
            }
        }
        assert_eq!((got.as_slice(), cut), (&b"partial more"[..], true));
    }
}
