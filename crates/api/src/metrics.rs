//! `GET /metrics`: the server's metrics in the Prometheus text exposition format, unauthenticated.
//!
//! The API does not know which metrics exist or how they are recorded: it is given a function
//! that renders them (the binary's Prometheus recorder) and serves its output, either on the main
//! listener (`AppState::with_metrics`, merged in front of the authenticated routes) or on a
//! listener of its own (`serve_metrics`).

use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

/// Renders the current metrics as Prometheus text.
pub type RenderMetrics = Arc<dyn Fn() -> String + Send + Sync>;

/// The content type of Prometheus' text exposition format, version 0.0.4.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`, answered with `render()`'s text, without authentication.
pub fn metrics_router(render: RenderMetrics) -> Router {
    routes(render)
}

/// The `/metrics` route, for a router of any state (the main API's, or none).
pub(crate) fn routes<S>(render: RenderMetrics) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new().route(
        "/metrics",
        get(move || {
            let render = render.clone();
            async move { ([(CONTENT_TYPE, CONTENT_TYPE_TEXT)], render()).into_response() }
        }),
    )
}

/// Serves only `/metrics` on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    render: RenderMetrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = metrics_router(render)
        .layer(axum::middleware::from_fn(crate::front::shape_errors))
        .layer(axum::middleware::from_fn(crate::auth::request_id));
    crate::front::serve(listener, app, crate::DEFAULT_READ_TIMEOUT, shutdown).await
}

/// The renderer held by `AppState`, printable for its `Debug`.
#[derive(Clone)]
pub(crate) struct MetricsSource(pub(crate) RenderMetrics);

impl std::fmt::Debug for MetricsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsSource(..)")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn render() -> RenderMetrics {
        Arc::new(|| "# TYPE ember_test counter\nember_test 1\n".to_owned())
    }

    async fn spawn(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}")
    }

    async fn state() -> (crate::AppState, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = ember_store::Store::open(dir.path()).await.unwrap();
        let state = crate::AppState::new(store, &crate::ApiConfig::default())
            .await
            .unwrap();
        (state, dir)
    }

    #[tokio::test]
    async fn metrics_router_serves_the_rendered_text() {
        let base = spawn(metrics_router(render())).await;
        let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[CONTENT_TYPE], CONTENT_TYPE_TEXT);
        assert_eq!(
            r.text().await.unwrap(),
            "# TYPE ember_test counter\nember_test 1\n"
        );
        let other = reqwest::get(format!("{base}/2015-03-31/functions"))
            .await
            .unwrap();
        assert_eq!(other.status(), 404);
    }

    #[tokio::test]
    async fn main_router_serves_metrics_without_authentication_when_given_them() {
        let (state, _dir) = state().await;
        let base = spawn(crate::router(state.with_metrics(render()))).await;
        let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().contains_key("x-amzn-RequestId"));
        assert!(r.text().await.unwrap().contains("ember_test 1"));
        // The Lambda routes still require a signature.
        let lambda = reqwest::get(format!("{base}/2015-03-31/functions"))
            .await
            .unwrap();
        assert_eq!(lambda.status(), 403);
    }

    #[tokio::test]
    async fn main_router_without_metrics_treats_the_path_as_unknown() {
        let (state, _dir) = state().await;
        let base = spawn(crate::router(state)).await;
        let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
        assert_ne!(r.status(), 200);
        assert!(r.headers().contains_key("x-amzn-ErrorType"));
        assert!(!r.text().await.unwrap().contains("ember_"));
    }
}
