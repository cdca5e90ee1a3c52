//! Execution environments' temporary credentials at the API, over real HTTP: a request signed
//! with them needs its session token, is refused once they are revoked or expired, and may only
//! invoke.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Server;
use ember_store::{SessionEnvironment, SessionKeys};
use time::OffsetDateTime;

async fn start() -> Server {
    common::start(true, &ember_api::ApiConfig::default(), |state, _| state).await
}

fn mint(server: &Server, environment_id: &str, at: OffsetDateTime) -> SessionKeys {
    server.store.mint_session_at(
        &SessionEnvironment {
            account_id: &server.alice.account_id,
            function_name: "caller",
            version: "$LATEST",
            vm_id: "vm-1",
            environment_id,
        },
        at,
    )
}

/// How a test request is signed.
struct Signer<'a> {
    key: &'a str,
    secret: &'a str,
    /// Sent as `X-Amz-Security-Token`, and signed, as botocore does.
    token: Option<&'a str>,
}

impl<'a> Signer<'a> {
    fn session(keys: &'a SessionKeys) -> Self {
        Self {
            key: &keys.access_key_id,
            secret: &keys.secret_access_key,
            token: Some(&keys.session_token),
        }
    }
}

/// Sends a request; answers its status and `x-amzn-ErrorType`.
async fn send(
    server: &Server,
    method: &str,
    path: &str,
    body: &[u8],
    signer: &Signer<'_>,
) -> (u16, String) {
    let host = server.addr.to_string();
    let mut headers = vec![("host", host.as_str())];
    if let Some(token) = signer.token {
        headers.push(("x-amz-security-token", token));
    }
    let (path_only, query) = path.split_once('?').unwrap_or((path, ""));
    let request = ember_sigv4::Request {
        method,
        path: path_only,
        query,
        headers: &headers,
        body,
    };
    let signed = ember_sigv4::sign(
        &request,
        &ember_sigv4::Credentials {
            access_key_id: signer.key,
            secret_access_key: signer.secret,
        },
        "us-east-1",
        "lambda",
        OffsetDateTime::now_utc(),
    );
    let mut builder = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("http://{host}{path}"))
        .body(body.to_vec());
    for (k, v) in headers
        .iter()
        .skip(1)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(signed)
    {
        builder = builder.header(k, v);
    }
    let response = builder.send().await.unwrap();
    let error = response
        .headers()
        .get("x-amzn-errortype")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (response.status().as_u16(), error)
}

const INVOKE: &str = "/2015-03-31/functions/nothere/invocations";

#[tokio::test]
async fn a_session_invokes_with_its_token_and_is_refused_without_it() {
    let server = start().await;
    let keys = mint(&server, "c-1", OffsetDateTime::now_utc());
    let other = mint(&server, "c-2", OffsetDateTime::now_utc());

    // Authenticated and allowed: the function is looked up (and does not exist).
    let with_token = send(&server, "POST", INVOKE, b"{}", &Signer::session(&keys)).await;
    assert_eq!(with_token, (404, "ResourceNotFoundException".into()));
    for path in [
        "/2021-11-15/functions/nothere/response-streaming-invocations",
        "/2014-11-13/functions/nothere/invoke-async/",
    ] {
        let (status, error) = send(&server, "POST", path, b"{}", &Signer::session(&keys)).await;
        assert_eq!(
            (status, error.as_str()),
            (404, "ResourceNotFoundException"),
            "{path}"
        );
    }

    let refusals = [
        (None, "UnrecognizedClientException"),
        (
            Some(other.session_token.as_str()),
            "UnrecognizedClientException",
        ),
        (Some(""), "UnrecognizedClientException"),
    ];
    for (token, expected) in refusals {
        let signer = Signer {
            token,
            ..Signer::session(&keys)
        };
        let answer = send(&server, "POST", INVOKE, b"{}", &signer).await;
        assert_eq!(answer, (403, expected.into()), "token {token:?}");
    }
    // The right token and a wrong secret: the signature is wrong.
    let wrong_secret = Signer {
        secret: &other.secret_access_key,
        ..Signer::session(&keys)
    };
    let answer = send(&server, "POST", INVOKE, b"{}", &wrong_secret).await;
    assert_eq!(answer, (403, "InvalidSignatureException".into()));
    // An account's own key with a session token: AWS refuses the pair.
    let account_with_token = Signer {
        key: &server.alice.access_key_id,
        secret: &server.alice.secret_access_key,
        token: Some(&keys.session_token),
    };
    let answer = send(&server, "POST", INVOKE, b"{}", &account_with_token).await;
    assert_eq!(answer, (403, "UnrecognizedClientException".into()));
    // A key made up in the temporary form.
    let made_up = Signer {
        key: "ASIAAAAAAAAAAAAAAAAA",
        ..Signer::session(&keys)
    };
    let answer = send(&server, "POST", INVOKE, b"{}", &made_up).await;
    assert_eq!(answer, (403, "UnrecognizedClientException".into()));
}

#[tokio::test]
async fn a_revoked_session_is_refused_at_once() {
    let server = start().await;
    let keys = mint(&server, "c-1", OffsetDateTime::now_utc());
    let signer = Signer::session(&keys);
    assert_eq!(send(&server, "POST", INVOKE, b"{}", &signer).await.0, 404);
    assert_eq!(server.store.revoke_session_environment("c-1"), 1);
    let answer = send(&server, "POST", INVOKE, b"{}", &signer).await;
    assert_eq!(answer, (403, "UnrecognizedClientException".into()));
}

#[tokio::test]
async fn an_expired_session_is_refused_as_aws_does() {
    let server = start().await;
    let minted = OffsetDateTime::now_utc() - time::Duration::hours(13);
    let keys = mint(&server, "c-1", minted);
    let answer = send(&server, "POST", INVOKE, b"{}", &Signer::session(&keys)).await;
    assert_eq!(answer, (403, "ExpiredTokenException".into()));
    // Renewed (the executor does it while the environment lives), it works again.
    assert_eq!(server.store.renew_sessions(OffsetDateTime::now_utc()), 1);
    let answer = send(&server, "POST", INVOKE, b"{}", &Signer::session(&keys)).await;
    assert_eq!(answer.0, 404);
}

#[tokio::test]
async fn a_session_may_change_nothing_even_of_an_admin_account() {
    let server = start().await;
    let keys = mint(&server, "c-1", OffsetDateTime::now_utc());
    let signer = Signer::session(&keys);
    let create = br#"{"FunctionName":"x","Runtime":"python3.12","Role":"arn:aws:iam::123456789012:role/r","Handler":"a.h","Code":{"ZipFile":"UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="}}"#;
    let calls: [(&str, &str, &[u8]); 11] = [
        ("GET", "/2015-03-31/functions/", b""),
        ("POST", "/2015-03-31/functions", create),
        ("DELETE", "/2015-03-31/functions/caller", b""),
        ("PUT", "/2015-03-31/functions/caller/code", b"{}"),
        ("PUT", "/2015-03-31/functions/caller/configuration", b"{}"),
        ("GET", "/2015-03-31/functions/caller", b""),
        ("GET", "/2016-08-19/account-settings/", b""),
        ("GET", "/ember/v1/fleet", b""),
        ("GET", "/ember/v1/functions/caller/network", b""),
        (
            "PUT",
            "/ember/v1/functions/caller/network",
            br#"{"Egress":"Allow"}"#,
        ),
        (
            "POST",
            "/2015-03-31/functions/caller/unknown-operation",
            b"{}",
        ),
    ];
    for (method, path, body) in calls {
        let answer = send(&server, method, path, body, &signer).await;
        assert_eq!(
            answer,
            (403, "AccessDeniedException".into()),
            "{method} {path}"
        );
    }
    // The account's own keys still may (the admin sees its fleet).
    let account = Signer {
        key: &server.alice.access_key_id,
        secret: &server.alice.secret_access_key,
        token: None,
    };
    let (status, _) = send(&server, "GET", "/2015-03-31/functions/", b"", &account).await;
    assert_eq!(status, 200);
}
