//! The API over real HTTP (axum's TestClient pattern): a router on 127.0.0.1:0, signed requests,
//! and property tests that hostile request bodies and paths are refused without side effects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use base64::Engine;
use ember_store::{AccountKeys, Store};
use proptest::prelude::*;
use serde_json::{json, Value};

struct Server {
    addr: SocketAddr,
    store: Store,
    alice: AccountKeys,
    _dir: tempfile::TempDir,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let alice = store.create_account("alice", false).await.unwrap();
    let state = ember_api::AppState::new(store.clone(), &ember_api::ApiConfig::default())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ember_api::serve(listener, state, std::future::pending()));
    Server {
        addr,
        store,
        alice,
        _dir: dir,
    }
}

struct Reply {
    status: u16,
    error_type: Option<String>,
    request_id: Option<String>,
    body: Value,
}

async fn call(server: &Server, method: &str, path: &str, body: &[u8]) -> Reply {
    call_as(server, ("us-east-1", "lambda"), method, path, body).await
}

/// A request signed for `scope`: (region, service).
async fn call_as(
    server: &Server,
    (region, service): (&str, &str),
    method: &str,
    path: &str,
    body: &[u8],
) -> Reply {
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
    for (k, v) in signed {
        builder = builder.header(k, v);
    }
    let response = builder.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (error_type, request_id) = (header("x-amzn-errortype"), header("x-amzn-requestid"));
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    Reply {
        status,
        error_type,
        request_id,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

fn zip_b64() -> String {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("app.py", zip::write::SimpleFileOptions::default())
        .unwrap();
    zip.write_all(b"def handler(event, context):\n    return event\n")
        .unwrap();
    let bytes = zip.finish().unwrap().into_inner();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn create_body(name: &str) -> Value {
    json!({
        "FunctionName": name,
        "Runtime": "python3.11",
        "Role": "arn:aws:iam::123456789012:role/lambda",
        "Handler": "app.handler",
        "Code": { "ZipFile": zip_b64() },
    })
}

#[tokio::test]
async fn create_then_get_round_trips_the_configuration() {
    let server = start().await;
    let created = call(
        &server,
        "POST",
        "/2015-03-31/functions",
        create_body("echo").to_string().as_bytes(),
    )
    .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert!(created.request_id.is_some());
    let arn = format!(
        "arn:aws:lambda:us-east-1:{}:function:echo",
        server.alice.account_id
    );
    assert_eq!(created.body["FunctionArn"], arn.as_str());
    let encoded = arn.replace(':', "%3A");
    let got = call(
        &server,
        "GET",
        &format!("/2015-03-31/functions/{encoded}/configuration"),
        b"",
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, created.body);
}

#[tokio::test]
async fn errors_carry_the_aws_shape() {
    let server = start().await;
    let missing = call(&server, "GET", "/2015-03-31/functions/nope", b"").await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.error_type.as_deref(),
        Some("ResourceNotFoundException")
    );
    assert_eq!(missing.body["Type"], "User");
    assert!(missing.body["message"]
        .as_str()
        .unwrap()
        .contains("function:nope"));
    assert!(missing.request_id.is_some());

    let mut body = create_body("f");
    body["MemorySize"] = json!(64);
    let bad = call(
        &server,
        "POST",
        "/2015-03-31/functions",
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.error_type.as_deref(),
        Some("InvalidParameterValueException")
    );
    assert!(server
        .store
        .function(&server.alice.account_id, "f")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn unknown_routes_are_named_errors() {
    let server = start().await;
    let reply = call(&server, "GET", "/2015-03-31/nothing-here", b"").await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.error_type.as_deref(),
        Some("UnknownOperationException")
    );
}

#[tokio::test]
async fn signatures_for_another_service_are_refused() {
    let server = start().await;
    let reply = call_as(
        &server,
        ("us-east-1", "s3"),
        "GET",
        "/2015-03-31/functions/",
        b"",
    )
    .await;
    assert_eq!(reply.status, 403);
    assert_eq!(
        reply.error_type.as_deref(),
        Some("InvalidSignatureException")
    );
    let ok = call(&server, "GET", "/2015-03-31/functions/", b"").await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn signatures_for_another_region_are_refused_naming_the_servers() {
    let server = start().await;
    let body = create_body("elsewhere").to_string();
    let reply = call_as(
        &server,
        ("eu-west-1", "lambda"),
        "POST",
        "/2015-03-31/functions",
        body.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 403, "{:?}", reply.body);
    assert_eq!(
        reply.error_type.as_deref(),
        Some("InvalidSignatureException")
    );
    let message = reply.body["message"].as_str().unwrap();
    assert!(
        message.contains("not 'eu-west-1'") && message.contains("'us-east-1'"),
        "{message}"
    );
    assert!(server
        .store
        .function(&server.alice.account_id, "elsewhere")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn only_the_admin_may_view_the_fleet() {
    let server = start().await;
    let reply = call(&server, "GET", "/ember/v1/fleet", b"").await;
    assert_eq!(reply.status, 403, "{:?}", reply.body);
    assert_eq!(reply.error_type.as_deref(), Some("AccessDeniedException"));
    assert!(reply.body["message"]
        .as_str()
        .is_some_and(|m| m.contains("administrator")));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever bytes a client sends as a CreateFunction body, the answer is a 4xx with an AWS
    /// error type, never a 5xx, and no function is created.
    #[test]
    fn arbitrary_create_bodies_are_refused_cleanly(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let rt = runtime();
        rt.block_on(async {
            let server = start().await;
            let reply = call(&server, "POST", "/2015-03-31/functions", &body).await;
            prop_assert!((400..500).contains(&reply.status), "status {}", reply.status);
            prop_assert!(reply.error_type.is_some());
            let listed = server.store.list_functions(&server.alice.account_id, None, 10).await.unwrap();
            prop_assert!(listed.is_empty());
            Ok(())
        })?;
    }

    /// Mutated but well-formed JSON bodies: every field replaced by an arbitrary JSON value.
    /// Either the function is created with exactly the validated values, or nothing is.
    #[test]
    fn mutated_create_fields_validate_or_change_nothing(
        field in prop::sample::select(vec!["FunctionName", "Runtime", "Role", "Handler", "Timeout", "MemorySize", "Environment", "EphemeralStorage", "Architectures", "Code", "Description"]),
        value in prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            ".{0,80}".prop_map(Value::from),
            Just(json!({"Variables": {"AWS_REGION": "x"}})),
            Just(json!({"Size": 100})),
            Just(json!(["arm64", "x86_64"])),
        ],
    ) {
        let rt = runtime();
        rt.block_on(async {
            let server = start().await;
            let mut body = create_body("target");
            body[field] = value;
            let reply = call(&server, "POST", "/2015-03-31/functions", body.to_string().as_bytes()).await;
            prop_assert!(reply.status == 201 || (400..500).contains(&reply.status), "status {} {:?}", reply.status, reply.body);
            let listed = server.store.list_functions(&server.alice.account_id, None, 10).await.unwrap();
            if reply.status == 201 {
                prop_assert_eq!(listed.len(), 1);
                let f = &listed[0];
                prop_assert!((128..=10240).contains(&f.spec.memory_mb));
                prop_assert!((1..=900).contains(&f.spec.timeout_s));
                prop_assert!(!f.spec.environment.contains_key("AWS_REGION"));
            } else {
                prop_assert!(listed.is_empty());
            }
            Ok(())
        })?;
    }
}
