//! Ember's Rust test function: a `provided.al2023` bootstrap built on the real `lambda_runtime`.
//!
//! The event says what to do (the first key that matches wins):
//! `{"echo": X}`, `{"fail": "msg"}`, `{"sleep_ms": N}`, `{"alloc_mb": N}`, `{"exit": code}`,
//! `{"env": true}`, `{"read": "/path"}`, `{"write": "/path"}`, `{"print": "text"}`,
//! `{"noop": true}` or `{}`; and `{"stream": {"chunks": N, "bytes": B, "interval_ms": I}}`, a
//! streamed response (`lambda_runtime::streaming`): N chunks of B bytes (at least their
//! header), I ms apart, each starting with `<index> <epoch µs when written>\n`, with optional
//! `"status"`, `"headers"` and `"cookies"` for its HTTP prelude (what a function URL answers).
//! Through a function URL, the request's JSON body is the event.

use std::time::Duration;

use lambda_runtime::streaming::{channel, Body};
use lambda_runtime::{
    service_fn, Diagnostic, FunctionResponse, LambdaEvent, MetadataPrelude, StreamResponse,
};
use serde_json::{json, Map, Value};

/// The error type reported to Lambda for `{"fail": ...}`.
const FAILURE_TYPE: &str = "HelloFailure";

/// Streams for `{"stream": ...}`, else answers a buffered response.
async fn handle(
    mut event: LambdaEvent<Value>,
) -> Result<FunctionResponse<Value, Body>, Diagnostic> {
    if let Some(inner) = url_body(&event.payload) {
        event.payload = inner;
    }
    let Some(stream) = event.payload.get("stream").cloned() else {
        return buffered(event)
            .await
            .map(FunctionResponse::BufferedResponse);
    };
    let number = |key: &str| stream.get(key).and_then(Value::as_u64).unwrap_or(0);
    let (chunks, bytes, interval) = (number("chunks"), number("bytes"), number("interval_ms"));
    let (mut tx, rx) = channel();
    tokio::spawn(async move {
        for i in 0..chunks {
            if i > 0 && interval > 0 {
                tokio::time::sleep(Duration::from_millis(interval)).await;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros();
            let mut chunk = format!("{i} {now}\n").into_bytes();
            if (chunk.len() as u64) < bytes {
                chunk.resize(bytes as usize, b'.');
            }
            if tx.send_data(chunk.into()).await.is_err() {
                return;
            }
        }
    });
    Ok(FunctionResponse::StreamingResponse(StreamResponse {
        metadata_prelude: prelude(&stream)?,
        stream: rx,
    }))
}

/// The HTTP prelude `{"status": S, "headers": {...}, "cookies": [...]}` asks for (200 and no
/// headers by default).
fn prelude(spec: &Value) -> Result<MetadataPrelude, Diagnostic> {
    let bad = |what: String| Diagnostic {
        error_type: FAILURE_TYPE.into(),
        error_message: what,
    };
    let mut prelude = MetadataPrelude::default();
    if let Some(status) = spec.get("status").and_then(Value::as_u64) {
        prelude.status_code = http::StatusCode::from_u16(status as u16)
            .map_err(|e| bad(format!("status {status}: {e}")))?;
    }
    for (name, value) in spec
        .get("headers")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| bad(format!("header {name}: {e}")))?;
        let value = http::HeaderValue::from_str(value.as_str().unwrap_or_default())
            .map_err(|e| bad(format!("header value: {e}")))?;
        prelude.headers.append(name, value);
    }
    prelude.cookies = spec
        .get("cookies")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect();
    Ok(prelude)
}

/// A function URL's event (it has `requestContext`) is read as its body's JSON, so the same
/// events work through a URL.
fn url_body(payload: &Value) -> Option<Value> {
    payload.get("requestContext")?;
    serde_json::from_str(payload.get("body")?.as_str()?).ok()
}

async fn buffered(event: LambdaEvent<Value>) -> Result<Value, Diagnostic> {
    let (payload, context) = event.into_parts();
    let empty = Map::new();
    let fields = payload.as_object().unwrap_or(&empty);

    if let Some(value) = fields.get("echo") {
        return Ok(json!({
            "echo": value,
            "memory": context.env_config.memory,
            "function": context.env_config.function_name,
            "request_id": context.request_id,
        }));
    }
    if let Some(message) = fields.get("fail") {
        let message = match message {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        return Err(Diagnostic {
            error_type: FAILURE_TYPE.into(),
            error_message: message,
        });
    }
    if let Some(ms) = fields.get("sleep_ms") {
        let ms = ms.as_u64().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(json!({ "slept_ms": ms }));
    }
    if let Some(mb) = fields.get("alloc_mb") {
        let mb = mb.as_u64().unwrap_or(0) as usize;
        let mut block = vec![0u8; mb << 20];
        // Touch every page so the memory is really resident, not just reserved.
        for i in (0..block.len()).step_by(4096) {
            block[i] = 1;
        }
        let touched = block.iter().step_by(4096).filter(|b| **b == 1).count();
        return Ok(json!({ "alloc_mb": mb, "pages": std::hint::black_box(touched) }));
    }
    if let Some(code) = fields.get("exit") {
        std::process::exit(code.as_i64().unwrap_or(1) as i32);
    }
    if fields.get("env").is_some_and(|v| v == &Value::Bool(true)) {
        let env: Map<String, Value> = std::env::vars_os()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    Value::String(v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        return Ok(Value::Object(env));
    }
    if let Some(path) = fields.get("read").and_then(Value::as_str) {
        return Ok(match std::fs::read(path) {
            Ok(bytes) => {
                let head = &bytes[..bytes.len().min(200)];
                json!({ "ok": true, "content": String::from_utf8_lossy(head) })
            }
            Err(e) => json!({ "ok": false, "error": e.to_string() }),
        });
    }
    if let Some(path) = fields.get("write").and_then(Value::as_str) {
        return Ok(match std::fs::write(path, b"written by rust-hello\n") {
            Ok(()) => json!({ "ok": true }),
            Err(e) => json!({ "ok": false, "error": e.to_string() }),
        });
    }
    if let Some(text) = fields.get("print").and_then(Value::as_str) {
        println!("{text}");
        eprintln!("{text}");
        return Ok(json!({ "printed": text }));
    }
    // `{"noop": true}`, `{}` and anything else.
    Ok(json!({}))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(handle)).await
}
