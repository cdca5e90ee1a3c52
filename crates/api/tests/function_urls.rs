//! Function URLs over real HTTP, without root or an executor: the router on 127.0.0.1:0, the
//! config operations signed, and URL requests answered before the Lambda API's authentication
//! (a CORS preflight, NONE's and AWS_IAM's 403s, an unknown URL's 404), as `serve.rs` promises.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use common::Server;
use serde_json::{json, Value};

async fn start() -> Server {
    common::start(false, &ember_api::ApiConfig::default(), |state, addr| {
        state.with_url_port(addr.port())
    })
    .await
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    Reply {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// A Lambda API call signed by alice.
async fn call(server: &Server, method: &str, path: &str, body: Value) -> Reply {
    let body = body.to_string().into_bytes();
    let request = common::signed(server, ("us-east-1", "lambda"), method, path, &body, &[]);
    reply(request.send().await.unwrap()).await
}

/// An unsigned request to a URL's host form, sent to the server with that Host header.
async fn to_url(
    server: &Server,
    function_url: &str,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> Reply {
    let host = function_url
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let mut builder = reqwest::Client::new()
        .request(
            method.parse().unwrap(),
            format!("http://{}{path}", server.addr),
        )
        .header("host", host);
    for (k, v) in extra {
        builder = builder.header(*k, *v);
    }
    reply(builder.send().await.unwrap()).await
}

fn zip_b64() -> String {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("app.py", zip::write::SimpleFileOptions::default())
        .unwrap();
    zip.write_all(b"def handler(event, context):\n    return event\n")
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(zip.finish().unwrap().into_inner())
}

async fn function_with_url(server: &Server, name: &str, config: Value) -> String {
    let created = call(
        server,
        "POST",
        "/2015-03-31/functions",
        json!({
            "FunctionName": name, "Runtime": "python3.11",
            "Role": "arn:aws:iam::123456789012:role/lambda", "Handler": "app.handler",
            "Code": { "ZipFile": zip_b64() },
        }),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let url = call(
        server,
        "POST",
        &format!("/2021-10-31/functions/{name}/url"),
        config,
    )
    .await;
    assert_eq!(url.status, 201, "{}", url.body);
    url.body["FunctionUrl"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn url_requests_are_answered_before_the_apis_authentication() {
    let server = start().await;
    let url = function_with_url(
        &server,
        "f",
        json!({"AuthType": "NONE", "Cors": {"AllowOrigins": ["https://a.example"],
               "AllowMethods": ["POST"], "MaxAge": 10}}),
    )
    .await;
    assert!(
        url.starts_with("http://")
            && url.ends_with(&format!(
                ".lambda-url.us-east-1.localhost:{}/",
                server.addr.port()
            )),
        "{url}"
    );

    // A preflight is answered from Cors: no signature, no policy, no executor needed.
    let preflight = to_url(
        &server,
        &url,
        "OPTIONS",
        "/x",
        &[
            ("origin", "https://a.example"),
            ("access-control-request-method", "POST"),
        ],
    )
    .await;
    assert_eq!(preflight.status, 200);
    assert_eq!(
        preflight.headers["access-control-allow-origin"],
        "https://a.example"
    );
    assert_eq!(preflight.headers["access-control-max-age"], "10");

    // Unsigned, without the public statement: the URL's 403, not the API's auth error.
    let refused = to_url(&server, &url, "GET", "/", &[]).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.body, json!({"Message": "Forbidden"}));
    assert_eq!(refused.headers["x-amzn-errortype"], "AccessDeniedException");
    assert!(refused.headers.contains_key("x-amzn-requestid"));

    // With it, the request passes to the executor, which this server lacks.
    let granted = call(
        &server,
        "POST",
        "/2015-03-31/functions/f/policy",
        json!({"StatementId": "FunctionURLAllowPublicAccess", "Action": "lambda:InvokeFunctionUrl",
               "Principal": "*", "FunctionUrlAuthType": "NONE"}),
    )
    .await;
    assert_eq!(granted.status, 201, "{}", granted.body);
    let ran = to_url(&server, &url, "GET", "/", &[]).await;
    assert_eq!(ran.status, 503, "{}", ran.body);

    // Unknown URLs, in either form, are the URL's 404.
    let id = "0".repeat(32);
    let missing = to_url(
        &server,
        &format!("http://{id}.lambda-url.us-east-1.localhost/"),
        "GET",
        "/",
        &[],
    )
    .await;
    assert_eq!(missing.status, 404);
    let missing = reqwest::get(format!("http://{}/ember/v1/urls/{id}/", server.addr))
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
}

#[tokio::test]
async fn aws_iam_urls_refuse_unsigned_and_foreign_signatures() {
    let server = start().await;
    let url = function_with_url(&server, "g", json!({"AuthType": "AWS_IAM"})).await;
    assert_eq!(to_url(&server, &url, "GET", "/", &[]).await.status, 403);
    let forged = to_url(
        &server,
        &url,
        "GET",
        "/",
        &[(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIANOTAKEY/20240101/us-east-1/lambda/aws4_request, \
             SignedHeaders=host, Signature=00",
        )],
    )
    .await;
    assert_eq!(forged.status, 403);
    // The Lambda API on the same listener is untouched by the URL routing.
    let listed = call(&server, "GET", "/2021-10-31/functions/g/urls", json!({})).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["FunctionUrlConfigs"][0]["AuthType"], "AWS_IAM");
}
