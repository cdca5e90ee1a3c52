//! Unit tests of the layer operations' validation and shapes (golden JSON).

use super::*;

#[test]
fn layer_names_and_arns() {
    let own = layer_name("my-layer_1", "us-east-1").unwrap();
    assert_eq!(
        own,
        LayerRef {
            account_id: None,
            name: "my-layer_1".into()
        }
    );
    let arn = layer_name(
        "arn:aws:lambda:us-east-1:123456789012:layer:deps",
        "us-east-1",
    )
    .unwrap();
    assert_eq!(arn.account_id.as_deref(), Some("123456789012"));
    assert_eq!(arn.name, "deps");
    for bad in [
        "",
        "a b",
        "a/b",
        "x:y",
        "arn:aws:lambda:us-east-1:12345:layer:deps",
        &"a".repeat(141),
    ] {
        let err = layer_name(bad, "us-east-1").unwrap_err();
        assert!(
            matches!(err, ApiError::InvalidParameter(_)),
            "{bad}: {err:?}"
        );
    }
    // Another region's layer does not exist here.
    let err = layer_name(
        "arn:aws:lambda:eu-west-1:123456789012:layer:deps",
        "us-east-1",
    )
    .unwrap_err();
    assert!(matches!(err, ApiError::NotFound(_)), "{err:?}");
}

#[test]
fn layer_version_arns() {
    assert_eq!(
        layer_version_arn("arn:aws:lambda:us-east-1:123456789012:layer:deps:3").unwrap(),
        ("us-east-1".into(), "123456789012".into(), "deps".into(), 3)
    );
    for bad in [
        "arn:aws:lambda:us-east-1:123456789012:layer:deps",
        "arn:aws:lambda:us-east-1:123456789012:layer:deps:0",
        "arn:aws:lambda:us-east-1:123456789012:layer:deps:x",
        "arn:aws:lambda:us-east-1:123456789012:function:deps:1",
        "arn:aws:lambda:us-east-1:1234:layer:deps:1",
        "deps:1",
    ] {
        assert!(layer_version_arn(bad).is_err(), "{bad}");
    }
}

#[test]
fn version_numbers_principals_and_statement_ids() {
    assert_eq!(version_number("12").unwrap(), 12);
    for bad in ["0", "-1", "x", ""] {
        assert!(version_number(bad).is_err(), "{bad}");
    }
    assert_eq!(principal("*").unwrap(), "*");
    assert_eq!(principal("210987654321").unwrap(), "210987654321");
    assert_eq!(
        principal("arn:aws:iam::210987654321:root").unwrap(),
        "210987654321"
    );
    for bad in ["", "2109", "arn:aws:iam::210987654321:user/x", "o-abc"] {
        assert!(principal(bad).is_err(), "{bad}");
    }
    assert!(statement_id("share-1_x").is_ok());
    for bad in ["", "a b", &"s".repeat(101)] {
        assert!(statement_id(bad).is_err(), "{bad}");
    }
}

#[test]
fn compatible_lists_follow_the_model() {
    assert_eq!(runtimes(None).unwrap(), Vec::<String>::new());
    let many: Vec<String> = (0..16).map(|_| "python3.12".to_string()).collect();
    assert!(runtimes(Some(&many)).is_err(), "at most 15");
    assert!(runtimes(Some(&["nodejs20.x".into(), "python3.12".into()])).is_ok());
    assert!(runtimes(Some(&["cobol".into()])).is_err());
    assert!(architectures(Some(&["x86_64".into(), "arm64".into()])).is_ok());
    assert!(architectures(Some(&["mips".into()])).is_err());
    assert!(architectures(Some(&["x86_64".into(), "arm64".into(), "x86_64".into()])).is_err());
    assert!(license(Some(&"l".repeat(512))).is_ok());
    assert!(license(Some(&"l".repeat(513))).is_err());
    assert_eq!(max_items(None).unwrap(), 50);
    assert!(max_items(Some("0")).is_err());
    assert!(max_items(Some("51")).is_err());
}

fn layer(unzipped_size: u64) -> FunctionLayer {
    FunctionLayer {
        arn: "arn:aws:lambda:us-east-1:123456789012:layer:deps:1".into(),
        sha256: "0".repeat(64),
        code_size: 10,
        unzipped_size,
    }
}

#[test]
fn code_and_layers_together_are_at_most_250_mb_unzipped() {
    assert!(check_total_size(MAX_UNZIPPED_BYTES, &[]).is_ok());
    assert!(check_total_size(100, &[layer(MAX_UNZIPPED_BYTES - 200), layer(100)]).is_ok());
    let err = check_total_size(101, &[layer(MAX_UNZIPPED_BYTES - 200), layer(100)]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Function code combined with layers exceeds the maximum allowed size of 262144000 \
         bytes. The actual size is 262144001 bytes."
    );
    assert!(
        check_total_size(u64::MAX, &[layer(u64::MAX)]).is_err(),
        "no overflow"
    );
}

#[test]
fn function_layers_shape() {
    assert_eq!(function_layers(&[]), None, "absent when none");
    let json = serde_json::to_value(function_layers(&[layer(5)])).unwrap();
    assert_eq!(
        json,
        serde_json::json!([{"Arn": "arn:aws:lambda:us-east-1:123456789012:layer:deps:1", "CodeSize": 10}])
    );
}

#[test]
fn golden_layer_version_shapes() {
    let answer = LayerVersionResponse {
        content: LayerVersionContentOutput {
            location: "http://h/ember/v1/code/a/b?Expires=1&Signature=s".into(),
            code_sha256: "c2hh".into(),
            code_size: 42,
        },
        layer_arn: "arn:aws:lambda:us-east-1:123456789012:layer:deps".into(),
        layer_version_arn: "arn:aws:lambda:us-east-1:123456789012:layer:deps:1".into(),
        description: "".into(),
        created_date: "2024-05-01T12:34:56.789+0000".into(),
        version: 1,
        compatible_runtimes: vec!["python3.12".into()],
        compatible_architectures: vec![],
        license_info: None,
    };
    assert_eq!(
        serde_json::to_string(&answer).unwrap(),
        r#"{"Content":{"Location":"http://h/ember/v1/code/a/b?Expires=1&Signature=s","CodeSha256":"c2hh","CodeSize":42},"LayerArn":"arn:aws:lambda:us-east-1:123456789012:layer:deps","LayerVersionArn":"arn:aws:lambda:us-east-1:123456789012:layer:deps:1","Description":"","CreatedDate":"2024-05-01T12:34:56.789+0000","Version":1,"CompatibleRuntimes":["python3.12"]}"#
    );
    let item = LayerVersionsListItem {
        layer_version_arn: "arn:aws:lambda:us-east-1:123456789012:layer:deps:2".into(),
        version: 2,
        description: "d".into(),
        created_date: "2024-05-01T12:34:56.789+0000".into(),
        compatible_runtimes: vec![],
        compatible_architectures: vec!["x86_64".into()],
        license_info: Some("MIT".into()),
    };
    let list = ListLayersResponse {
        layers: vec![LayersListItem {
            layer_name: "deps".into(),
            layer_arn: "arn:aws:lambda:us-east-1:123456789012:layer:deps".into(),
            latest_matching_version: item.clone(),
        }],
        next_marker: Some("ZGVwcw".into()),
    };
    assert_eq!(
        serde_json::to_string(&list).unwrap(),
        r#"{"Layers":[{"LayerName":"deps","LayerArn":"arn:aws:lambda:us-east-1:123456789012:layer:deps","LatestMatchingVersion":{"LayerVersionArn":"arn:aws:lambda:us-east-1:123456789012:layer:deps:2","Version":2,"Description":"d","CreatedDate":"2024-05-01T12:34:56.789+0000","CompatibleArchitectures":["x86_64"],"LicenseInfo":"MIT"}}],"NextMarker":"ZGVwcw"}"#
    );
    let versions = ListLayerVersionsResponse {
        layer_versions: vec![],
        next_marker: None,
    };
    assert_eq!(
        serde_json::to_string(&versions).unwrap(),
        r#"{"LayerVersions":[]}"#
    );
}

#[test]
fn golden_policy_statements() {
    let arn = "arn:aws:lambda:us-east-1:123456789012:layer:deps:1";
    let one = LayerGrant {
        statement_id: "bob".into(),
        action: GET_LAYER_VERSION.into(),
        principal: "210987654321".into(),
    };
    assert_eq!(
        statement_json(&one, arn).to_string(),
        r#"{"Action":"lambda:GetLayerVersion","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::210987654321:root"},"Resource":"arn:aws:lambda:us-east-1:123456789012:layer:deps:1","Sid":"bob"}"#
    );
    let all = LayerGrant {
        principal: "*".into(),
        ..one
    };
    assert_eq!(statement_json(&all, arn)["Principal"], "*");
}

#[test]
fn requests_gather_unknown_members() {
    let req: PublishLayerVersionRequest = serde_json::from_str(
        r#"{"Content":{"ZipFile":"UEs=","S3Bucket":"b"},"CompatibleRuntimes":["python3.12"],"Bogus":1}"#,
    )
    .unwrap();
    assert!(req.unknown.contains_key("Bogus"));
    let content = req.content.unwrap();
    assert_eq!(content.s3_bucket.as_deref(), Some("b"));
    assert_eq!(content.zip_file.as_deref(), Some("UEs="));
}
