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
    start_with(&ember_api::ApiConfig::default()).await
}

async fn start_with(config: &ember_api::ApiConfig) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let alice = store.create_account("alice", false).await.unwrap();
    let state = ember_api::AppState::new(store.clone(), config)
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

/// An error as botocore reads it: the status, `x-amzn-ErrorType`, and a JSON body with a
/// message.
fn assert_aws_error(reply: &Reply, status: u16, error_type: &str) {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    assert_eq!(
        reply.error_type.as_deref(),
        Some(error_type),
        "{:?}",
        reply.body
    );
    assert!(reply.request_id.is_some());
    assert!(
        reply.body["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{:?}",
        reply.body
    );
    assert!(reply.body["Type"].is_string(), "{:?}", reply.body);
}

#[tokio::test]
async fn a_wrong_method_is_an_aws_shaped_405() {
    let server = start().await;
    let reply = call(&server, "PATCH", "/2015-03-31/functions/f", b"").await;
    assert_aws_error(&reply, 405, "MethodNotAllowedException");
    assert!(reply.body["message"].as_str().unwrap().contains("PATCH"));
}

#[tokio::test]
async fn unparsable_queries_and_paths_are_aws_shaped_400s() {
    let server = start().await;
    let reply = call(&server, "GET", "/ember/v1/functions/f/logs?Limit=abc", b"").await;
    assert_aws_error(&reply, 400, "InvalidParameterValueException");
    assert!(reply.body["message"].as_str().unwrap().contains("Limit"));
    let reply = call(
        &server,
        "GET",
        "/2015-03-31/functions/%FF%FE/configuration",
        b"",
    )
    .await;
    assert_aws_error(&reply, 400, "InvalidParameterValueException");
    let reply = call(
        &server,
        "GET",
        "/2015-03-31/functions/%zz/configuration",
        b"",
    )
    .await;
    assert_aws_error(&reply, 400, "InvalidParameterValueException");
}

#[tokio::test]
async fn a_code_url_without_its_query_is_access_denied() {
    let server = start().await;
    let url = format!(
        "http://{}/ember/v1/code/{}/{}",
        server.addr,
        server.alice.account_id,
        "0".repeat(64)
    );
    for query in ["", "?Expires=abc&Signature=00", "?Signature=00"] {
        let response = reqwest::get(format!("{url}{query}")).await.unwrap();
        assert_eq!(response.status().as_u16(), 403, "{query}");
        assert_eq!(
            response.headers()["x-amzn-errortype"].to_str().unwrap(),
            "AccessDeniedException"
        );
        let body: Value = response.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains("Expires"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn oversized_heads_are_aws_shaped_431s_up_to_hypers_buffer() {
    let server = start().await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/2015-03-31/functions/", server.addr);
    let big = "x".repeat(ember_api::MAX_HEAD_BYTES);
    let response = client.get(&url).header("x-big", &big).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 431);
    assert_eq!(
        response.headers()["x-amzn-errortype"].to_str().unwrap(),
        "RequestHeaderFieldsTooLargeException"
    );
    let body: Value = response.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("bytes"),
        "{body}"
    );
    let mut many = client.get(&url);
    for i in 0..=ember_api::MAX_HEADERS {
        many = many.header(format!("x-h{i}"), "v");
    }
    let response = many.send().await.unwrap();
    assert_eq!(response.status().as_u16(), 431);
    assert!(response.headers().contains_key("x-amzn-errortype"));
}

/// Sends raw bytes on a new connection and reads until the server closes it (or `wait` passes).
async fn raw_exchange(
    server: &Server,
    request: &[u8],
    wait: std::time::Duration,
) -> (String, std::time::Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = std::time::Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(wait, tcp.read_to_end(&mut answer)).await;
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_body_that_never_arrives_is_an_aws_shaped_408_and_a_closed_connection() {
    let config = ember_api::ApiConfig {
        read_timeout: std::time::Duration::from_millis(500),
        ..ember_api::ApiConfig::default()
    };
    let server = start_with(&config).await;
    let request = format!(
        "POST /2015-03-31/functions HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         content-length: 100\r\n\r\n{{\"Func",
        server.addr
    );
    let (answer, took) = raw_exchange(
        &server,
        request.as_bytes(),
        std::time::Duration::from_secs(10),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains("x-amzn-errortype: requesttimeoutexception"),
        "{answer}"
    );
    assert!(lower.contains("connection: close"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let body: Value = serde_json::from_str(body).unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("stopped arriving"),
        "{body}"
    );
    // The server waited about the read timeout, and then closed the connection (read_to_end
    // returned before the test's own 10 s wait).
    assert!(took >= std::time::Duration::from_millis(450), "{took:?}");
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn a_head_that_never_completes_is_closed_after_the_read_timeout() {
    let config = ember_api::ApiConfig {
        read_timeout: std::time::Duration::from_millis(500),
        ..ember_api::ApiConfig::default()
    };
    let server = start_with(&config).await;
    let (answer, took) = raw_exchange(
        &server,
        b"GET /2015-03-31/functions/ HTTP/1.1\r\nhost: x\r\n",
        std::time::Duration::from_secs(10),
    )
    .await;
    // hyper gives no answer here (see the front module's docs): the connection is closed.
    assert_eq!(answer, "");
    assert!(took >= std::time::Duration::from_millis(450), "{took:?}");
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn not_found_functions_are_named_by_their_full_arn_everywhere() {
    let server = start().await;
    let arn = format!(
        "arn:aws:lambda:us-east-1:{}:function:ghost",
        server.alice.account_id
    );
    let update = json!({"Description": "x"}).to_string();
    let code = json!({"ZipFile": zip_b64()}).to_string();
    for (method, path, body) in [
        ("GET", "/2015-03-31/functions/ghost", ""),
        (
            "PUT",
            "/2015-03-31/functions/ghost/configuration",
            update.as_str(),
        ),
        ("PUT", "/2015-03-31/functions/ghost/code", code.as_str()),
        ("DELETE", "/2015-03-31/functions/ghost", ""),
    ] {
        let reply = call(&server, method, path, body.as_bytes()).await;
        assert_aws_error(&reply, 404, "ResourceNotFoundException");
        assert_eq!(
            reply.body["message"].as_str().unwrap(),
            format!("Function not found: {arn}"),
            "{method} {path}"
        );
    }
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
