//! The web console's routes over real HTTP: its pages only when the state serves them, and its
//! signed routes answering for the signing account only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use serde_json::Value;

async fn get_signed(server: &common::Server, path: &str) -> (u16, Value) {
    let response = common::signed(server, ("us-east-1", "lambda"), "GET", path, b"", &[])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_pages_are_served_only_with_the_console_on() {
    let config = ember_api::ApiConfig::default();
    let on = common::start(false, &config, |state, _| state.with_console(true)).await;
    let page = reqwest::get(format!("http://{}/console/", on.addr))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    assert!(page.text().await.unwrap().contains("<div id=\"app\">"));

    let off = common::start(false, &config, |state, _| state).await;
    let page = reqwest::get(format!("http://{}/console/", off.addr))
        .await
        .unwrap();
    // Then an unknown path of the API, answered to an unsigned request as any other.
    assert_eq!(page.status(), 403);
}

#[tokio::test]
async fn whoami_names_the_signing_account() {
    let config = ember_api::ApiConfig::default();
    for admin in [false, true] {
        let server = common::start(admin, &config, |state, _| state).await;
        let (status, body) = get_signed(&server, "/ember/v1/console/whoami").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["AccountId"], server.alice.account_id.as_str());
        assert_eq!(body["Admin"], admin);
    }
}

#[tokio::test]
async fn executions_of_a_function_the_caller_does_not_have_are_not_found() {
    let server = common::start(false, &ember_api::ApiConfig::default(), |s, _| s).await;
    let (status, body) =
        get_signed(&server, "/ember/v1/console/functions/nothing/executions").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["Type"], "User");
    assert!(body["message"].as_str().unwrap().contains("nothing"));
}
