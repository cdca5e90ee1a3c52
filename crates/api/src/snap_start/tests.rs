//! Tests of SnapStart's API side: the JSON of its shapes, byte for byte; the request member's
//! parsing and Lambda's answers to a bad value; the rules for runtimes, ephemeral storage and
//! provisioned concurrency, as tables.

use axum::response::IntoResponse;
use ember_store::{Function, FunctionSpec, SnapStartApplyOn, LATEST};
use serde_json::json;

use super::*;
use crate::shapes::{CreateFunctionRequest, UpdateFunctionConfigurationRequest};

fn spec(runtime: &str, snap_start: SnapStartApplyOn) -> FunctionSpec {
    FunctionSpec {
        runtime: Some(runtime.into()),
        snap_start,
        ..crate::test_fixtures::spec()
    }
}

fn function(version: &str, snap_start: SnapStartApplyOn) -> Function {
    Function {
        account_id: "123456789012".into(),
        name: "f".into(),
        version: version.into(),
        spec: spec("python3.12", snap_start),
        code_sha256: "00".repeat(32),
        code_size: 1,
        revision_id: "r".into(),
        last_modified: time::OffsetDateTime::UNIX_EPOCH,
        reserved_concurrency: None,
        egress: None,
    }
}

fn json_of(f: &Function) -> String {
    serde_json::to_string(&SnapStartResponse::of(f)).unwrap()
}

#[test]
fn the_response_is_on_only_for_a_published_version_that_applies_it() {
    use SnapStartApplyOn::{None as Off, PublishedVersions as On};
    assert_eq!(
        json_of(&function(LATEST, On)),
        r#"{"ApplyOn":"PublishedVersions","OptimizationStatus":"Off"}"#
    );
    assert_eq!(
        json_of(&function("1", On)),
        r#"{"ApplyOn":"PublishedVersions","OptimizationStatus":"On"}"#
    );
    assert_eq!(
        json_of(&function(LATEST, Off)),
        r#"{"ApplyOn":"None","OptimizationStatus":"Off"}"#
    );
    assert_eq!(
        json_of(&function("7", Off)),
        r#"{"ApplyOn":"None","OptimizationStatus":"Off"}"#
    );
}

#[test]
fn requests_carry_snap_start_and_refuse_members_it_does_not_have() {
    let body = json!({
        "FunctionName": "f",
        "Runtime": "python3.12",
        "Role": "arn:aws:iam::123456789012:role/r",
        "Handler": "app.handler",
        "SnapStart": {"ApplyOn": "PublishedVersions"},
    });
    let create: CreateFunctionRequest = serde_json::from_value(body).unwrap();
    assert_eq!(
        apply_on(create.snap_start.as_ref().unwrap()).unwrap(),
        SnapStartApplyOn::PublishedVersions
    );
    assert!(create.unknown.is_empty());
    let update: UpdateFunctionConfigurationRequest =
        serde_json::from_value(json!({"SnapStart": {"ApplyOn": "None"}})).unwrap();
    assert_eq!(
        apply_on(update.snap_start.as_ref().unwrap()).unwrap(),
        SnapStartApplyOn::None
    );
    // `SnapStart: {}`: ApplyOn absent is Lambda's default, None.
    let empty: UpdateFunctionConfigurationRequest =
        serde_json::from_value(json!({"SnapStart": {}})).unwrap();
    assert_eq!(
        apply_on(empty.snap_start.as_ref().unwrap()).unwrap(),
        SnapStartApplyOn::None
    );
    let misspelt = serde_json::from_value::<UpdateFunctionConfigurationRequest>(
        json!({"SnapStart": {"Applyon": "None"}}),
    );
    assert!(misspelt.is_err(), "a member SnapStart does not have");
}

#[tokio::test]
async fn a_value_outside_the_enum_is_lambdas_validation_exception() {
    for bad in ["Always", "publishedversions", "", "NONE"] {
        let err = apply_on(&SnapStart {
            apply_on: Some(bad.into()),
        })
        .unwrap_err();
        assert_eq!(err.error_type(), "ValidationException");
        assert_eq!(
            err.to_string(),
            format!(
                "1 validation error detected: Value '{bad}' at 'snapStart.applyOn' failed to \
                 satisfy constraint: Member must satisfy enum value set: [PublishedVersions, None]"
            )
        );
        let response = err.into_response();
        assert_eq!(response.status(), 400);
        assert_eq!(
            response.headers()["x-amzn-ErrorType"],
            "ValidationException"
        );
    }
}

#[test]
fn snap_start_needs_a_python_runtime() {
    let cases = [
        ("python3.9", true),
        ("python3.10", true),
        ("python3.11", true),
        ("python3.12", true),
        ("python3.13", true),
        ("provided", false),
        ("provided.al2", false),
        ("provided.al2023", false),
        ("nodejs18.x", false),
        ("nodejs20.x", false),
        ("nodejs22.x", false),
    ];
    for (runtime, supported) in cases {
        let on = check(&spec(runtime, SnapStartApplyOn::PublishedVersions));
        match (supported, on) {
            (true, Ok(())) => {}
            (false, Err(ApiError::InvalidParameter(message))) => {
                assert!(
                    message.starts_with(&format!(
                        "{runtime} is not supported for SnapStart enabled functions."
                    )),
                    "{message}"
                );
                assert!(message.contains("Python"), "{message}");
            }
            (_, other) => panic!("{runtime}: {other:?}"),
        }
        // Off is allowed with any runtime.
        assert!(
            check(&spec(runtime, SnapStartApplyOn::None)).is_ok(),
            "{runtime}"
        );
    }
}

#[test]
fn snap_start_allows_at_most_512_mb_of_ephemeral_storage() {
    for (ephemeral_mb, allowed) in [(512, true), (513, false), (10_240, false)] {
        let on = FunctionSpec {
            ephemeral_mb,
            ..spec("python3.12", SnapStartApplyOn::PublishedVersions)
        };
        match check(&on) {
            Ok(()) => assert!(allowed, "{ephemeral_mb}"),
            Err(ApiError::InvalidParameter(message)) => {
                assert!(!allowed, "{ephemeral_mb}");
                assert!(
                    message.starts_with("Ephemeral storage greater than 512 MB is not supported"),
                    "{message}"
                );
            }
            Err(other) => panic!("{other:?}"),
        }
        let off = FunctionSpec {
            ephemeral_mb,
            ..spec("python3.12", SnapStartApplyOn::None)
        };
        assert!(check(&off).is_ok());
    }
}

#[test]
fn provisioned_concurrency_is_refused_only_where_snap_start_applies() {
    use SnapStartApplyOn::{None as Off, PublishedVersions as On};
    let refused = check_provisioned(&function("1", On)).unwrap_err();
    assert_eq!(refused.error_type(), "InvalidParameterValueException");
    assert_eq!(refused.to_string(), PROVISIONED);
    assert!(check_provisioned(&function("1", Off)).is_ok());
    // $LATEST never applies it (provisioned concurrency refuses $LATEST for its own reason).
    assert!(check_provisioned(&function(LATEST, On)).is_ok());
}

#[test]
fn the_snap_start_errors_are_the_models() {
    // Status and type of each SnapStart exception botocore's model defines, for the mechanism.
    for (err, kind, status) in [
        (ApiError::SnapStart("x".into()), "SnapStartException", 400),
        (
            ApiError::SnapStartNotReady("x".into()),
            "SnapStartNotReadyException",
            409,
        ),
        (
            ApiError::SnapStartTimeout("x".into()),
            "SnapStartTimeoutException",
            408,
        ),
    ] {
        assert_eq!(err.error_type(), kind);
        assert_eq!(err.status(), status);
    }
}
