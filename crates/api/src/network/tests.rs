//! The network setting's shapes: the `PUT` body's parsing and refusals, and the answer's JSON,
//! byte for byte.

use super::*;

fn parse(body: &str) -> Result<Option<FunctionEgress>, String> {
    parse_json::<PutNetworkRequest>(body.as_bytes())
        .and_then(|r| r.egress())
        .map_err(|e| e.to_string())
}

#[test]
fn bodies_and_what_they_set() {
    assert_eq!(
        parse(r#"{"Egress":"Allow"}"#),
        Ok(Some(FunctionEgress::Allow))
    );
    assert_eq!(
        parse(r#"{"Egress":"Deny"}"#),
        Ok(Some(FunctionEgress::Deny))
    );
    assert_eq!(parse(r#"{"Egress":null}"#), Ok(None));
}

#[test]
fn bad_bodies_are_refused_with_a_reason() {
    let cases = [
        ("{}", "Egress is required"),
        ("", "Egress is required"),
        (
            r#"{"Egress":"allow"}"#,
            r#"Egress must be "Allow", "Deny" or null (got "allow")"#,
        ),
        (r#"{"Egress":"Default"}"#, "got \"Default\""),
        (r#"{"Egress":""}"#, "got \"\""),
        (r#"{"Egress":true}"#, "Could not parse request body"),
        (
            r#"{"Egress":"Deny","Dns":"1.1.1.1"}"#,
            "unknown field `Dns`",
        ),
        ("[", "Could not parse request body"),
    ];
    for (body, want) in cases {
        let err = parse(body).unwrap_err();
        assert!(err.contains(want), "{body:?}: {err:?} lacks {want:?}");
    }
}

#[test]
fn the_answer_names_the_setting_and_what_it_means() {
    let mut f = Function {
        account_id: "123456789012".into(),
        name: "f".into(),
        version: ember_store::LATEST.into(),
        spec: crate::test_fixtures::spec(),
        code_sha256: "00".repeat(32),
        code_size: 1,
        revision_id: "r".into(),
        last_modified: time::OffsetDateTime::UNIX_EPOCH,
        reserved_concurrency: None,
        egress: None,
    };
    let json = |f: &Function, effective| {
        serde_json::to_string(&NetworkResponse::new(f, effective)).unwrap()
    };
    assert_eq!(
        json(&f, Egress::Allow),
        r#"{"FunctionName":"f","Egress":null,"EffectiveEgress":"Allow"}"#
    );
    f.egress = Some(FunctionEgress::Deny);
    assert_eq!(
        json(&f, Egress::Deny),
        r#"{"FunctionName":"f","Egress":"Deny","EffectiveEgress":"Deny"}"#
    );
    f.egress = Some(FunctionEgress::Allow);
    assert_eq!(
        json(&f, Egress::Allow),
        r#"{"FunctionName":"f","Egress":"Allow","EffectiveEgress":"Allow"}"#
    );
}
