//! Streamed responses (`Lambda-Runtime-Function-Response-Mode: streaming`): the body read as it
//! arrives, forwarded to the host through a [`ResponseSink`] paced by the host's credits, and
//! the invocation answered from the error trailers
//! (`Lambda-Runtime-Function-Error-Type`, `Lambda-Runtime-Function-Error-Body`, base64) at its
//! end.
//!
//! An invocation the host did not ask to stream (a plain `Invoke`) gets a streaming runtime's
//! response buffered, within the buffered limit ([`MAX_RESPONSE_BYTES`]), as Lambda does.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use ember_protocol::{AgentMessage, StreamPart, MAX_STREAM_CHUNK, STREAM_WINDOW};
use futures_util::FutureExt as _;
use http_body_util::BodyExt as _;
use tokio::sync::{mpsc, Semaphore};

use super::{RuntimeApi, RuntimeApiError, MAX_RESPONSE_BYTES};

/// The header that makes a `/response` a streamed one, and its value.
pub(super) const RESPONSE_MODE: HeaderName =
    HeaderName::from_static("lambda-runtime-function-response-mode");
const STREAMING: &str = "streaming";
const ERROR_TYPE: HeaderName = HeaderName::from_static("lambda-runtime-function-error-type");
const ERROR_BODY: HeaderName = HeaderName::from_static("lambda-runtime-function-error-body");

/// The most a streamed response may carry: Lambda's (soft) limit of 20 MiB. Past it, the
/// invocation fails at once with `Function.ResponseSizeTooLarge` (what was streamed stays
/// streamed), the rest of the body is read and dropped, and the runtime is answered 413, as for
/// a buffered response over its limit.
pub const MAX_STREAMED_RESPONSE_BYTES: usize = 20 * 1024 * 1024;

/// Whether a `/response` request is in streaming mode.
pub(super) fn is_streaming(headers: &HeaderMap) -> bool {
    headers
        .get(&RESPONSE_MODE)
        .is_some_and(|mode| mode.as_bytes().eq_ignore_ascii_case(STREAMING.as_bytes()))
}

/// Where a streamed invocation's response goes: the agent's messages to the host, as
/// [`AgentMessage::Stream`] parts of the request `id`, at most [`STREAM_WINDOW`] chunk bytes
/// ahead of the host's credits.
#[derive(Debug)]
pub struct ResponseSink {
    id: u64,
    outbound: mpsc::UnboundedSender<AgentMessage>,
    credit: Arc<Semaphore>,
}

/// The sink's invocation is over (answered, aborted, or the host is gone).
#[derive(Debug)]
pub struct SinkClosed;

impl ResponseSink {
    /// A sink for the streamed invocation `id`. `credit` starts with [`STREAM_WINDOW`] permits
    /// (see [`Credit`]); closing it ends the sink.
    pub fn new(id: u64, outbound: mpsc::UnboundedSender<AgentMessage>, credit: &Credit) -> Self {
        Self {
            id,
            outbound,
            credit: credit.0.clone(),
        }
    }

    async fn send(&self, part: StreamPart) -> Result<(), SinkClosed> {
        if let StreamPart::Chunk { data } = &part {
            // At most MAX_STREAM_CHUNK (128 KiB): fits a u32.
            let n = u32::try_from(data.len()).map_err(|_| SinkClosed)?;
            self.credit
                .acquire_many(n)
                .await
                .map_err(|_| SinkClosed)?
                .forget();
        }
        self.outbound
            .send(AgentMessage::Stream { id: self.id, part })
            .map_err(|_| SinkClosed)
    }
}

/// A streamed invocation's credit: the chunk bytes the agent may still send before the host
/// credits more.
#[derive(Debug, Clone)]
pub struct Credit(Arc<Semaphore>);

impl Credit {
    /// The window's worth: [`STREAM_WINDOW`] bytes.
    pub fn new() -> Self {
        Self(Arc::new(Semaphore::new(STREAM_WINDOW)))
    }

    /// The host consumed `bytes` more (never more than the window at once: a host cannot make
    /// the agent buffer more than it).
    pub fn add(&self, bytes: u64) {
        let bytes = usize::try_from(bytes).unwrap_or(STREAM_WINDOW);
        self.0.add_permits(bytes.min(STREAM_WINDOW));
    }

    /// Ends the stream: a sink waiting for credit, or sending later, gives up.
    pub fn close(&self) {
        self.0.close();
    }
}

impl Default for Credit {
    fn default() -> Self {
        Self::new()
    }
}

/// `POST /invocation/{id}/response` in streaming mode.
pub(super) async fn respond(
    api: &RuntimeApi,
    request_id: &str,
    request: Request,
) -> Result<(), RuntimeApiError> {
    let (parts, body) = request.into_parts();
    let sink = api.begin_stream(request_id)?;
    let closed = |_| RuntimeApiError::InvalidRequestId(request_id.to_owned());
    if let Some(sink) = &sink {
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        sink.send(StreamPart::Head { content_type })
            .await
            .map_err(closed)?;
    }
    let limit = if sink.is_some() {
        MAX_STREAMED_RESPONSE_BYTES
    } else {
        MAX_RESPONSE_BYTES
    };
    let mut reader = Reader::new(body);
    let mut buffered = BytesMut::new();
    while let Some(data) = reader.next(MAX_STREAM_CHUNK).await? {
        if reader.size > limit {
            // The invocation fails now; the rest of the body is read without being kept, so
            // that the runtime gets its 413 rather than a connection cut mid-request (as for a
            // buffered response over its limit).
            let refused = api.reject_oversize_of(request_id, reader.size, limit);
            while reader.next(MAX_STREAM_CHUNK).await?.is_some() {}
            return Err(refused);
        }
        match &sink {
            Some(sink) => sink
                .send(StreamPart::Chunk { data })
                .await
                .map_err(closed)?,
            None => buffered.extend_from_slice(&data),
        }
    }
    match error_trailers(reader.trailers.as_ref()) {
        Some((error_type, body)) => api.fail(request_id, Some(&error_type), body),
        None => api.respond(request_id, buffered.freeze()),
    }
}

/// The error a runtime reported in its trailers: the type, and the body decoded from base64
/// (kept as sent when it is not base64).
fn error_trailers(trailers: Option<&HeaderMap>) -> Option<(String, Bytes)> {
    let trailers = trailers?;
    let error_type = trailers
        .get(&ERROR_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())?;
    let body = trailers
        .get(&ERROR_BODY)
        .map(|v| {
            STANDARD
                .decode(v.as_bytes())
                .map(Bytes::from)
                .unwrap_or_else(|_| Bytes::copy_from_slice(v.as_bytes()))
        })
        .unwrap_or_default();
    Some((error_type.to_owned(), body))
}

/// Reads a body's data as it comes, in pieces of at most a given size, coalescing what has
/// already arrived; keeps the trailers.
struct Reader {
    body: Body,
    /// Data read and not handed out yet.
    held: Bytes,
    /// Data bytes read so far.
    size: usize,
    trailers: Option<HeaderMap>,
    done: bool,
}

impl Reader {
    fn new(body: Body) -> Self {
        Self {
            body,
            held: Bytes::new(),
            size: 0,
            trailers: None,
            done: false,
        }
    }

    /// The next piece of at most `max` bytes: waits for data if none is held, then adds what
    /// has already arrived (without waiting) up to `max`. `None` at the body's end.
    async fn next(&mut self, max: usize) -> Result<Option<Bytes>, RuntimeApiError> {
        if self.held.is_empty() && !self.done {
            match self.body.frame().await {
                Some(frame) => self.take(frame.map_err(RuntimeApiError::Body)?),
                None => self.done = true,
            }
        }
        if self.held.is_empty() {
            return Ok(None);
        }
        if self.held.len() >= max {
            return Ok(Some(self.held.split_to(max)));
        }
        let mut piece = BytesMut::from(std::mem::take(&mut self.held));
        while piece.len() < max && !self.done {
            match self.body.frame().now_or_never() {
                Some(Some(frame)) => self.take(frame.map_err(RuntimeApiError::Body)?),
                Some(None) => self.done = true,
                None => break,
            }
            let room = max - piece.len();
            let n = room.min(self.held.len());
            piece.extend_from_slice(&self.held.split_to(n));
        }
        Ok(Some(piece.freeze()))
    }

    fn take(&mut self, frame: http_body::Frame<Bytes>) {
        match frame.into_data() {
            Ok(data) => {
                self.size = self.size.saturating_add(data.len());
                self.held = data;
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    self.trailers = Some(trailers);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_trailers_give_the_type_and_the_decoded_body() {
        let mut trailers = HeaderMap::new();
        assert_eq!(error_trailers(Some(&trailers)), None);
        trailers.insert(ERROR_TYPE, "Runtime.StreamError".parse().unwrap());
        assert_eq!(
            error_trailers(Some(&trailers)),
            Some(("Runtime.StreamError".into(), Bytes::new()))
        );
        let body = STANDARD.encode(r#"{"errorMessage":"boom"}"#);
        trailers.insert(ERROR_BODY, body.parse().unwrap());
        assert_eq!(
            error_trailers(Some(&trailers)),
            Some((
                "Runtime.StreamError".into(),
                Bytes::from_static(br#"{"errorMessage":"boom"}"#)
            ))
        );
        trailers.insert(ERROR_BODY, "not base64!".parse().unwrap());
        assert_eq!(
            error_trailers(Some(&trailers)).unwrap().1,
            Bytes::from_static(b"not base64!")
        );
        trailers.insert(ERROR_TYPE, "".parse().unwrap());
        assert_eq!(
            error_trailers(Some(&trailers)),
            None,
            "an empty type is none"
        );
    }

    #[test]
    fn streaming_mode_is_the_header_case_insensitively() {
        let mut headers = HeaderMap::new();
        assert!(!is_streaming(&headers));
        headers.insert(RESPONSE_MODE, "Streaming".parse().unwrap());
        assert!(is_streaming(&headers));
        headers.insert(RESPONSE_MODE, "buffered".parse().unwrap());
        assert!(!is_streaming(&headers));
    }
}
