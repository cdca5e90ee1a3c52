//! What the API's integration tests share: a server on 127.0.0.1:0 over a fresh store with one
//! account, alice, and requests signed with her keys.

// Each test binary includes this module and uses only part of it.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;

use ember_store::{AccountKeys, Store};

/// A running server: its address, its store, alice's keys and the store's directory (kept for
/// the server's life).
pub struct Server {
    pub addr: SocketAddr,
    pub store: Store,
    pub alice: AccountKeys,
    _dir: tempfile::TempDir,
}

/// A server of `config` whose state `configure` finishes (given the address it listens on: a
/// test's clock, say, or the URL port), with alice an admin account if `admin`.
pub async fn start(
    admin: bool,
    config: &ember_api::ApiConfig,
    configure: impl FnOnce(ember_api::AppState, SocketAddr) -> ember_api::AppState,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let alice = store.create_account("alice", admin).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = ember_api::AppState::new(store.clone(), config)
        .await
        .unwrap();
    let state = configure(state, addr);
    tokio::spawn(ember_api::serve(listener, state, std::future::pending()));
    Server {
        addr,
        store,
        alice,
        _dir: dir,
    }
}

/// A JSON request to `server`, signed by alice for `scope` (region, service), with `extra`
/// headers unsigned (as botocore leaves `X-Amz-Invocation-Type`).
pub fn signed(
    server: &Server,
    (region, service): (&str, &str),
    method: &str,
    path: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    let host = server.addr.to_string();
    let headers = [
        ("host", host.as_str()),
        ("content-type", "application/json"),
    ];
    let (path_only, query) = path.split_once('?').unwrap_or((path, ""));
    let request = ember_sigv4::Request {
        method,
        path: path_only,
        query,
        headers: &headers,
        body,
    };
    let creds = ember_sigv4::Credentials {
        access_key_id: &server.alice.access_key_id,
        secret_access_key: &server.alice.secret_access_key,
    };
    let signed = ember_sigv4::sign(
        &request,
        &creds,
        region,
        service,
        time::OffsetDateTime::now_utc(),
    );
    let mut builder = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("http://{host}{path}"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (k, v) in extra {
        builder = builder.header(*k, *v);
    }
    for (k, v) in signed {
        builder = builder.header(k, v);
    }
    builder
}
