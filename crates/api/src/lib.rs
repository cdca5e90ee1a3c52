//! Ember's HTTP surface: the AWS Lambda REST API (control plane and Invoke), SigV4
//! authentication, and Ember's own `/ember/v1` endpoints. The only crate that knows HTTP and the
//! Lambda JSON shapes; everything below it is called through typed functions.

#![forbid(unsafe_code)]

mod account;
mod aliases;
mod auth;
mod code_url;
pub mod console;
pub mod error;
mod event_config;
mod eventstream;
mod fleet;
mod front;
mod function_config;
mod function_urls;
mod functions;
mod health;
mod invoke;
mod invoke_async;
mod layers;
mod logs;
mod metrics;
mod network;
mod paging;
mod policy;
pub mod provisioned;
pub mod provisioned_hosts;
pub mod shapes;
mod sizing;
pub mod snap_start;
mod streaming;
pub mod tags;
#[cfg(test)]
mod test_fixtures;
pub mod validate;
mod versions;

use std::sync::Arc;

use axum::http::{Method, Uri};
use axum::routing::{delete, get, post, put};
use axum::Router;
use ember_store::Store;

pub use auth::{Caller, RequestId, MAX_BODY_BYTES};
pub use code_url::Clock;
pub use error::ApiError;
pub use front::{HYPER_MAX_HEADERS, HYPER_MAX_HEAD_BYTES, MAX_HEADERS, MAX_HEAD_BYTES};
pub use metrics::{metrics_router, serve_metrics, RenderMetrics};

/// Settings of the API server.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The region written into ARNs.
    pub region: String,
    /// An account's concurrency limit, from which reserved concurrency is carved.
    pub account_concurrency: u32,
    /// How long a client may take to send a request's head, or each piece of its body.
    pub read_timeout: std::time::Duration,
    /// The domain function URLs' host names end in (`--url-domain`).
    pub url_domain: String,
}

/// The default [`ApiConfig::read_timeout`].
pub const DEFAULT_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            region: "us-east-1".into(),
            account_concurrency: 1000,
            read_timeout: DEFAULT_READ_TIMEOUT,
            url_domain: "localhost".into(),
        }
    }
}

/// Shared state of every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    store: Store,
    region: Arc<str>,
    account_concurrency: u32,
    read_timeout: std::time::Duration,
    code_url_key: Arc<[u8]>,
    code_url_clock: Clock,
    executor: Option<ember_executor::Executor>,
    metrics: Option<metrics::MetricsSource>,
    urls: UrlEndpoint,
    /// Whether `router` serves the web console's pages (`/console/`).
    console: bool,
    /// The fleet's last minutes, sampled while the console is served with an executor.
    fleet_history: Option<Arc<console::history::History>>,
    /// Wakes the provisioned concurrency sync of a shared store (`provisioned_hosts.rs`).
    provisioned_sync: provisioned_hosts::Wake,
}

/// Where function URLs are answered: `<url-id>.lambda-url.<region>.<domain>[:port]`.
#[derive(Debug, Clone)]
struct UrlEndpoint {
    domain: Arc<str>,
    /// The port `FunctionUrl` names; none before the server knows it.
    port: Option<u16>,
}

impl AppState {
    /// Builds the state, loading (or creating, once) the key that signs code download URLs.
    pub async fn new(store: Store, config: &ApiConfig) -> Result<Self, ember_store::StoreError> {
        let key = store
            .setting_or_init("code_url_key", code_url::new_key)
            .await?;
        Ok(Self {
            store,
            region: config.region.as_str().into(),
            account_concurrency: config.account_concurrency,
            read_timeout: config.read_timeout,
            code_url_key: key.into_bytes().into(),
            code_url_clock: Clock::system(),
            executor: None,
            metrics: None,
            urls: UrlEndpoint {
                domain: config.url_domain.as_str().into(),
                port: None,
            },
            console: false,
            fleet_history: None,
            provisioned_sync: provisioned_hosts::Wake::default(),
        })
    }

    /// Dates and checks code download URLs (GetFunction's `Code.Location`) by `clock` instead of
    /// the system's: a test moves it to see a URL expire. Requests are still verified against
    /// the system's clock.
    pub fn with_code_url_clock(mut self, clock: Clock) -> Self {
        self.code_url_clock = clock;
        self
    }

    /// Runs invocations with `executor`. Without one, Invoke answers that nothing can run.
    pub fn with_executor(mut self, executor: ember_executor::Executor) -> Self {
        self.executor = Some(executor);
        self
    }

    /// Serves `GET /metrics` (the text `render` returns) without authentication, in front of
    /// the Lambda routes. Without it, `/metrics` is an unknown path like any other.
    pub fn with_metrics(mut self, render: RenderMetrics) -> Self {
        self.metrics = Some(metrics::MetricsSource(render));
        self
    }

    /// Names `port` in function URLs' `FunctionUrl` (the port of the listener that serves
    /// them: `--url-listen`'s, else the API's).
    pub fn with_url_port(mut self, port: u16) -> Self {
        self.urls.port = Some(port);
        self
    }

    /// Serves the web console's pages at `/console/` (`console::routes`) beside the API, and
    /// (with an executor, so call it after [`AppState::with_executor`]) starts sampling the
    /// fleet for its plots, until the state is dropped.
    pub fn with_console(mut self, console: bool) -> Self {
        self.console = console;
        if console && self.fleet_history.is_none() {
            self.fleet_history = self.executor.clone().map(console::history::start);
        }
        self
    }

    fn executor(&self) -> Result<&ember_executor::Executor, ApiError> {
        self.executor.as_ref().ok_or_else(|| {
            ApiError::ServiceUnavailable(
                "This Ember server runs no functions (it was started without an executor)".into(),
            )
        })
    }
}

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    let lambda = Router::new()
        .route(
            "/2015-03-31/functions",
            post(functions::create).get(functions::list),
        )
        .route(
            "/2015-03-31/functions/",
            post(functions::create).get(functions::list),
        )
        .route(
            "/2015-03-31/functions/{name}",
            get(functions::get).delete(functions::delete),
        )
        .route(
            "/2015-03-31/functions/{name}/configuration",
            get(functions::get_configuration).put(functions::update_configuration),
        )
        .route(
            "/2015-03-31/functions/{name}/code",
            put(functions::update_code),
        )
        .route(
            "/2015-03-31/functions/{name}/invocations",
            post(invoke::invoke),
        )
        .route(
            "/2017-10-31/functions/{name}/concurrency",
            put(functions::put_concurrency).delete(functions::delete_concurrency),
        )
        .route(
            "/2019-09-30/functions/{name}/concurrency",
            get(functions::get_concurrency),
        )
        // function_urls
        .route(
            "/2021-10-31/functions/{name}/url",
            post(function_urls::create)
                .get(function_urls::get)
                .put(function_urls::update)
                .delete(function_urls::delete),
        )
        .route(
            "/2021-10-31/functions/{name}/urls",
            get(function_urls::list),
        )
        // provisioned
        .route(
            "/2019-09-30/functions/{name}/provisioned-concurrency",
            put(provisioned::put)
                .get(provisioned::get)
                .delete(provisioned::delete),
        )
        // event_config
        .route(
            "/2019-09-25/functions/{name}/event-invoke-config",
            put(event_config::put)
                .post(event_config::update)
                .get(event_config::get)
                .delete(event_config::delete),
        )
        .route(
            "/2019-09-25/functions/{name}/event-invoke-config/list",
            get(event_config::list),
        )
        // versions and aliases
        .route(
            "/2015-03-31/functions/{name}/versions",
            post(versions::publish).get(versions::list),
        )
        .route(
            "/2015-03-31/functions/{name}/aliases",
            post(aliases::create).get(aliases::list),
        )
        .route(
            "/2015-03-31/functions/{name}/aliases/{alias}",
            get(aliases::get)
                .put(aliases::update)
                .delete(aliases::delete),
        )
        // layers
        .route("/2018-10-31/layers", get(layers::list_or_find))
        .route(
            "/2018-10-31/layers/{layer}/versions",
            post(layers::publish).get(layers::list_versions),
        )
        .route(
            "/2018-10-31/layers/{layer}/versions/{version}",
            get(layers::get_version).delete(layers::delete_version),
        )
        .route(
            "/2018-10-31/layers/{layer}/versions/{version}/policy",
            get(layers::get_policy).post(layers::add_permission),
        )
        .route(
            "/2018-10-31/layers/{layer}/versions/{version}/policy/{statement}",
            axum::routing::delete(layers::remove_permission),
        )
        // policy
        .route(
            "/2015-03-31/functions/{name}/policy",
            post(policy::add_permission).get(policy::get_policy),
        )
        .route(
            "/2015-03-31/functions/{name}/policy/{statement_id}",
            delete(policy::remove_permission),
        )
        // tags, account settings, code signing, runtime management, recursion, InvokeAsync
        .route(
            "/2017-03-31/tags/{resource}",
            get(tags::list_tags)
                .post(tags::tag_resource)
                .delete(tags::untag_resource),
        )
        .route(
            "/2016-08-19/account-settings",
            get(account::get_account_settings),
        )
        .route(
            "/2016-08-19/account-settings/",
            get(account::get_account_settings),
        )
        .route(
            "/2020-06-30/functions/{name}/code-signing-config",
            get(function_config::get_function_code_signing_config)
                .put(function_config::put_function_code_signing_config)
                .delete(function_config::delete_function_code_signing_config),
        )
        .route(
            "/2020-04-22/code-signing-configs",
            post(function_config::create_code_signing_config)
                .get(function_config::list_code_signing_configs),
        )
        .route(
            "/2020-04-22/code-signing-configs/",
            post(function_config::create_code_signing_config)
                .get(function_config::list_code_signing_configs),
        )
        .route(
            "/2020-04-22/code-signing-configs/{arn}",
            get(function_config::get_code_signing_config)
                .put(function_config::update_code_signing_config)
                .delete(function_config::delete_code_signing_config),
        )
        .route(
            "/2020-04-22/code-signing-configs/{arn}/functions",
            get(function_config::list_functions_by_code_signing_config),
        )
        .route(
            "/2021-07-20/functions/{name}/runtime-management-config",
            get(function_config::get_runtime_management_config)
                .put(function_config::put_runtime_management_config),
        )
        .route(
            "/2024-08-31/functions/{name}/recursion-config",
            get(function_config::get_function_recursion_config)
                .put(function_config::put_function_recursion_config),
        )
        .route(
            "/2014-11-13/functions/{name}/invoke-async",
            post(invoke_async::invoke_async),
        )
        .route(
            "/2014-11-13/functions/{name}/invoke-async/",
            post(invoke_async::invoke_async),
        )
        // end of tags' block
        // streaming
        .route(
            "/2021-11-15/functions/{name}/response-streaming-invocations",
            post(streaming::invoke_with_response_stream),
        )
        // end of streaming's block
        .route("/ember/v1/functions/{name}/logs", get(logs::get_logs))
        .route(
            "/ember/v1/functions/{name}/sizing",
            get(sizing::get_sizing).put(sizing::put_sizing),
        )
        .route(
            "/ember/v1/functions/{name}/network",
            get(network::get_network).put(network::put_network),
        )
        .route("/ember/v1/fleet", get(fleet::get_fleet))
        .route("/ember/v1/console/whoami", get(console::whoami))
        .route("/ember/v1/console/activity", get(console::activity))
        .route(
            "/ember/v1/console/fleet-history",
            get(console::fleet_history),
        )
        .route(
            "/ember/v1/console/functions/{name}/executions",
            get(console::executions),
        )
        .fallback(unknown_operation)
        // `authenticate` has already read the body under this same cap.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    let open = match &state.metrics {
        Some(source) => metrics::routes(source.0.clone()),
        None => Router::new(),
    };
    let open = match state.console {
        true => open.merge(console::routes()),
        false => open,
    };
    Router::new()
        .route("/ember/v1/code/{account}/{sha}", get(code_url::download))
        .route("/ember/v1/health", get(health::health))
        .merge(open)
        .merge(lambda)
        .layer(axum::middleware::from_fn(front::shape_errors))
        .layer(axum::middleware::from_fn(auth::request_id))
        // Function URLs, by host or by path, before everything else: not Lambda API calls.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            function_urls::serve::front,
        ))
        .with_state(state)
}

/// Serves only function URLs (`--url-listen`) on `listener` until `shutdown` resolves.
pub async fn serve_urls(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let read_timeout = state.read_timeout;
    let app = Router::new()
        .fallback(function_urls::serve::only)
        .with_state(state);
    front::serve(listener, app, read_timeout, shutdown).await
}

async fn unknown_operation(method: Method, uri: Uri) -> ApiError {
    ApiError::UnknownOperation {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let read_timeout = state.read_timeout;
    front::serve(listener, router(state), read_timeout, shutdown).await
}
