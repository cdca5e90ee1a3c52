//! The web console (`/console/`): its embedded assets (`ember-console`), served with long-cache
//! or no-cache headers, precompressed forms picked by `Accept-Encoding`, and a Content Security
//! Policy that lets a page run only the bundle's own script; plus the few signed routes only the
//! console needs (`/ember/v1/console/…`).
//!
//! Sign-in is the browser's: it signs every API call with SigV4 itself (ARCHITECTURE.md, "The
//! web console"), so these routes go through `auth::authenticate` like any other and the
//! assets need no authentication (they hold nothing but code).
//!
//! - `GET /ember/v1/console/whoami`: `{"AccountId", "Admin"}`, the signing account.
//! - `GET /ember/v1/console/activity`: `{"WindowSeconds": 3600, "Functions": [{"FunctionName",
//!   "Invocations", "Errors"}], "Starts": {"Warm", "ColdContainer", "ColdVm"} | null}`: the
//!   caller's functions' invocations and errors over the last hour on this server, and (for the
//!   admin only) this server's executions by start kind since it started.
//! - `GET /ember/v1/console/fleet-history` (admin only): `{"IntervalSeconds": 2, "Samples":
//!   [{"Time" (epoch ms), "RequestRatePerSecond", "ReplenishCount", "WarmingVms", "ActiveVms",
//!   "RetiringVms", "HostMemoryMB", "ReservedMemoryMB", "Starts": {"Warm", "ColdContainer",
//!   "ColdVm"}}]}`: the fleet sampled every 2 s over the last 10 minutes (`history.rs`), oldest
//!   first; empty where the console is not served.
//! - `GET /ember/v1/console/functions/{name}/executions`: `{"FunctionName",
//!   "ConfiguredMemoryMB", "Executions": [{"Time", "PeakMemoryMB", "MemoryMB", "DurationMs",
//!   "Outcome"}]}`, the current version's recent executions at its configured memory (those
//!   automatic sizing judges), oldest first.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Serialize;

pub(crate) mod history;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;

/// What a console page may load and run: the bundle's own script and style, API calls to this
/// origin, nothing inline, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; font-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Executions the sizing plot shows at most.
const EXECUTIONS_SHOWN: u32 = 200;

/// The console's unauthenticated routes: its assets and its settings.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route(
            "/console/",
            get(|headers: HeaderMap| async move { file("", &headers) }),
        )
        .route("/console/config.json", get(config))
        .route(
            "/console/{file}",
            get(
                |Path(name): Path<String>, headers: HeaderMap| async move { file(&name, &headers) },
            ),
        )
}

/// The encodings a request accepts, as `Accept-Encoding` says (`q=0` refuses one).
fn accepts(headers: &HeaderMap, encoding: &str) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            name.eq_ignore_ascii_case(encoding) && !refused
        })
}

/// The security headers of every console response.
fn secure(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// One file of the bundle, in the best encoding the client accepts.
fn file(name: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = ember_console::asset(name) else {
        let mut response = (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, "no-cache")],
            format!("The console has no file {name:?}\n"),
        )
            .into_response();
        secure(&mut response);
        return response;
    };
    let (body, encoding) = match (asset.brotli, asset.gzip) {
        (Some(br), _) if accepts(headers, "br") => (br, Some("br")),
        (_, Some(gz)) if accepts(headers, "gzip") => (gz, Some("gzip")),
        _ => (asset.body, None),
    };
    let cache = if asset.immutable {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut response = (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, cache),
            (header::VARY, "Accept-Encoding"),
        ],
        body,
    )
        .into_response();
    if let Some(encoding) = encoding {
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
    }
    secure(&mut response);
    response
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ConsoleConfig {
    /// The region requests are signed for.
    region: String,
}

/// What the sign-in page needs before it can sign: the server's region.
async fn config(State(state): State<AppState>) -> Response {
    let mut response = (
        [(header::CACHE_CONTROL, "no-cache")],
        Json(ConsoleConfig {
            region: state.region.to_string(),
        }),
    )
        .into_response();
    secure(&mut response);
    response
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct WhoAmI {
    account_id: String,
    admin: bool,
}

pub async fn whoami(Extension(caller): Extension<Caller>) -> Json<WhoAmI> {
    Json(WhoAmI {
        account_id: caller.account_id,
        admin: caller.is_admin,
    })
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ActivityResponse {
    window_seconds: u32,
    functions: Vec<FunctionActivity>,
    starts: Option<Starts>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
struct FunctionActivity {
    function_name: String,
    invocations: u64,
    errors: u64,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
struct Starts {
    warm: u64,
    cold_container: u64,
    cold_vm: u64,
}

pub async fn activity(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ActivityResponse>, ApiError> {
    let executor = state.executor()?;
    let functions = executor
        .activity(&caller.account_id)
        .into_iter()
        .map(|a| FunctionActivity {
            function_name: a.function_name,
            invocations: a.invocations,
            errors: a.errors,
        })
        .collect();
    let starts = caller.is_admin.then(|| {
        let s = executor.start_counts();
        Starts {
            warm: s.warm,
            cold_container: s.cold_container,
            cold_vm: s.cold_vm,
        }
    });
    Ok(Json(ActivityResponse {
        window_seconds: (ember_executor::activity::WINDOW_MINUTES * 60) as u32,
        functions,
        starts,
    }))
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct FleetHistoryResponse {
    interval_seconds: u64,
    samples: Vec<FleetSample>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
struct FleetSample {
    /// Epoch milliseconds.
    time: i64,
    request_rate_per_second: f64,
    replenish_count: u32,
    warming_vms: u32,
    active_vms: u32,
    retiring_vms: u32,
    #[serde(rename = "HostMemoryMB")]
    host_memory_mb: u64,
    #[serde(rename = "ReservedMemoryMB")]
    reserved_memory_mb: u64,
    starts: Starts,
}

impl From<history::Sample> for FleetSample {
    fn from(s: history::Sample) -> Self {
        Self {
            time: s.at_ms,
            request_rate_per_second: s.request_rate,
            replenish_count: s.replenish_count,
            warming_vms: s.warming,
            active_vms: s.active,
            retiring_vms: s.retiring,
            host_memory_mb: s.capacity_mb,
            reserved_memory_mb: s.reserved_mb,
            starts: Starts {
                warm: s.starts.warm,
                cold_container: s.starts.cold_container,
                cold_vm: s.starts.cold_vm,
            },
        }
    }
}

pub async fn fleet_history(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<FleetHistoryResponse>, ApiError> {
    if !caller.is_admin {
        return Err(ApiError::AccessDenied(
            "Only the administrator account may view the fleet".into(),
        ));
    }
    let samples = state
        .fleet_history
        .as_ref()
        .map(|h| h.samples())
        .unwrap_or_default();
    Ok(Json(FleetHistoryResponse {
        interval_seconds: history::INTERVAL.as_secs(),
        samples: samples.into_iter().map(FleetSample::from).collect(),
    }))
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ExecutionsResponse {
    function_name: String,
    #[serde(rename = "ConfiguredMemoryMB")]
    configured_memory_mb: u32,
    executions: Vec<Execution>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
struct Execution {
    time: String,
    #[serde(rename = "PeakMemoryMB")]
    peak_memory_mb: u64,
    /// The container's memory (the effective amount).
    #[serde(rename = "MemoryMB")]
    memory_mb: u32,
    duration_ms: f64,
    outcome: &'static str,
}

pub async fn executions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<ExecutionsResponse>, ApiError> {
    let function = state.function(&caller, &name, None).await?;
    let records = state
        .store
        .recent_executions(
            &function.account_id,
            &function.name,
            &function.revision_id,
            function.spec.memory_mb,
            EXECUTIONS_SHOWN,
        )
        .await?;
    Ok(Json(ExecutionsResponse {
        function_name: function.name.clone(),
        configured_memory_mb: function.spec.memory_mb,
        executions: records
            .into_iter()
            .map(|r| Execution {
                time: crate::fleet::rfc3339_ms(
                    time::OffsetDateTime::from_unix_timestamp_nanos(
                        i128::from(r.started_at_ms) * 1_000_000,
                    )
                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
                ),
                peak_memory_mb: r.peak_mb,
                memory_mb: r.memory_mb,
                duration_ms: crate::fleet::finite(r.duration_ms),
                outcome: r.outcome.as_str(),
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(accept: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, accept.parse().unwrap());
        h
    }

    #[test]
    fn accept_encoding_is_read_with_its_refusals() {
        assert!(accepts(&with("gzip, deflate, br"), "br"));
        assert!(accepts(&with("gzip, deflate, br"), "gzip"));
        assert!(accepts(&with("BR;q=0.5"), "br"));
        assert!(!accepts(&with("br;q=0, gzip"), "br"));
        assert!(!accepts(&with("gzip;q=0.0"), "gzip"));
        assert!(!accepts(&with("identity"), "gzip"));
        assert!(!accepts(&with("brotli"), "br"));
        assert!(!accepts(&HeaderMap::new(), "gzip"));
    }

    #[test]
    fn files_come_in_the_best_accepted_encoding_with_their_cache_rules() {
        let index = file("", &with("gzip, br"));
        assert_eq!(index.headers()[header::CONTENT_ENCODING], "br");
        assert_eq!(index.headers()[header::CACHE_CONTROL], "no-cache");
        assert_eq!(
            index.headers()[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
        let gz = file("index.html", &with("gzip"));
        assert_eq!(gz.headers()[header::CONTENT_ENCODING], "gzip");
        let plain = file("index.html", &HeaderMap::new());
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
        let script = ember_console::assets()
            .find(|a| a.name.ends_with(".js"))
            .unwrap();
        let js = file(script.name, &with("br"));
        assert_eq!(
            js.headers()[header::CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
        assert_eq!(js.headers()[header::VARY], "Accept-Encoding");
        assert_eq!(file("nothing.js", &HeaderMap::new()).status(), 404);
        assert_eq!(file("index.html.br", &with("br")).status(), 404);
    }

    #[test]
    fn the_policy_forbids_inline_code_and_other_origins() {
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(CONTENT_SECURITY_POLICY.contains(directive), "{directive}");
        }
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }
}
