//! `GET /ember/v1/health`: readiness for load balancers, unauthenticated. 200 when the store's
//! database answers within 2 s and holds the schema this server was built for; 503 otherwise
//! (`ServiceUnavailable`, AWS-shaped like every error, its message saying why), so that a load
//! balancer sends requests to other hosts until this one can serve them.

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::error::ApiError;
use crate::AppState;

/// How long the store may take to answer before the server counts as not ready.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /ember/v1/health`: `{"Status":"ok","Store":"postgres","SchemaVersion":18}` with 200,
/// or a 503 whose message says why.
pub(crate) async fn health(State(state): State<AppState>) -> Response {
    let backend = state.store.url().backend();
    match state.store.health(STORE_TIMEOUT).await {
        Ok(status) if status.is_current() => Json(serde_json::json!({
            "Status": "ok",
            "Store": backend,
            "SchemaVersion": status.applied,
        }))
        .into_response(),
        Ok(status) => unavailable(
            backend,
            format!(
                "the database's schema is at migration {:?}, this server's at {} \
                 (pending {:?}, unknown {:?}, changed {:?}): run `ember store migrate` with \
                 the newest Ember",
                status.applied, status.latest, status.pending, status.unknown, status.mismatched
            ),
        ),
        Err(err) => {
            let reason = error_chain(&err);
            tracing::warn!(error = %reason, "health check: the store does not answer");
            unavailable(backend, format!("the store does not answer: {reason}"))
        }
    }
}

fn unavailable(backend: &str, reason: String) -> Response {
    ApiError::ServiceUnavailable(format!("{backend} store: {reason}")).into_response()
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
