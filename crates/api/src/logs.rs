//! `GET /ember/v1/functions/{name}/logs`: a function's invocation logs, for `ember logs`.
//!
//! Query: `After` (a `Seq` cursor; only newer logs) and `Limit` (1 to 1000, default 100). Without
//! `After`, the newest `Limit` logs. The answer lists them oldest first, as
//! `{"Events": [{"Seq", "RequestId", "Timestamp", "Message"}], "NextAfter"}`; pass `NextAfter`
//! as `After` to follow.

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LogsQuery {
    after: Option<i64>,
    limit: Option<u32>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LogsResponse {
    events: Vec<LogEvent>,
    /// The cursor to pass as `After` next time.
    next_after: i64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LogEvent {
    seq: i64,
    request_id: String,
    /// Epoch milliseconds when the invocation started.
    timestamp: i64,
    message: String,
}

pub async fn get_logs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Json<LogsResponse>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::InvalidParameter(format!(
            "Limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let function = state.function(&caller, &name, None).await?;
    let records = state
        .store
        .logs(&function.account_id, &function.name, q.after, limit)
        .await?;
    let next_after = records.last().map(|r| r.seq).or(q.after).unwrap_or(0);
    Ok(Json(LogsResponse {
        events: records
            .into_iter()
            .map(|r| LogEvent {
                seq: r.seq,
                request_id: r.request_id,
                timestamp: r.started_at_ms,
                message: r.log,
            })
            .collect(),
        next_after,
    }))
}
