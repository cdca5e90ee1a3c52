//! Tests of the alias rules, the weighted choice, and the alias shapes' JSON.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::*;

fn alias(primary: &str, routing: &[(&str, f64)]) -> Alias {
    Alias {
        account_id: "123456789012".into(),
        function_name: "f".into(),
        name: "live".into(),
        function_version: primary.into(),
        description: String::new(),
        routing: routing.iter().map(|(v, w)| ((*v).to_owned(), *w)).collect(),
        revision_id: "r-1".into(),
    }
}

/// The share of `n` routed invocations that ran `version`, drawing from a seeded source.
fn share(alias: &Alias, version: &str, n: usize, seed: u64) -> f64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let hits = (0..n)
        .filter(|_| route(alias, rng.gen::<f64>()) == version)
        .count();
    hits as f64 / n as f64
}

#[test]
fn a_weighted_alias_runs_the_additional_version_in_proportion() {
    let n = 100_000;
    for weight in [0.01, 0.1, 0.5, 0.9] {
        let a = alias("1", &[("2", weight)]);
        for seed in [1, 2, 3] {
            let observed = share(&a, "2", n, seed);
            // Binomial: within 4 standard deviations of the weight.
            let sigma = (weight * (1.0 - weight) / n as f64).sqrt();
            assert!(
                (observed - weight).abs() < 4.0 * sigma,
                "weight {weight}, seed {seed}: observed {observed}"
            );
        }
    }
}

#[test]
fn the_choice_is_one_of_the_two_versions_and_the_extremes_are_exact() {
    let a = alias("1", &[("2", 0.25)]);
    assert_eq!(route(&a, 0.0), "2");
    assert_eq!(route(&a, 0.2499), "2");
    assert_eq!(route(&a, 0.25), "1");
    assert_eq!(route(&a, 0.9999), "1");
    assert_eq!(share(&alias("1", &[("2", 0.0)]), "2", 10_000, 4), 0.0);
    assert_eq!(share(&alias("1", &[("2", 1.0)]), "2", 10_000, 5), 1.0);
    assert_eq!(share(&alias("3", &[]), "3", 1_000, 6), 1.0);
}

#[test]
fn alias_rules_follow_lambdas() {
    let routing = |pairs: &[(&str, f64)]| -> BTreeMap<String, f64> {
        pairs.iter().map(|(v, w)| ((*v).to_owned(), *w)).collect()
    };
    /// The alias's version, its routing, and the refusal's words ("" when accepted).
    type Case<'a> = (&'a str, &'a [(&'a str, f64)], &'a str);
    let table: &[Case<'_>] = &[
        ("1", &[], ""),
        ("$LATEST", &[], ""),
        ("1", &[("2", 0.1)], ""),
        ("2", &[("1", 0.0)], ""),
        ("2", &[("1", 1.0)], ""),
        (
            "1",
            &[("2", 0.1), ("3", 0.1)],
            "at most 1 additional version",
        ),
        ("1", &[("2", 1.5)], "less than or equal to 1.0"),
        ("1", &[("2", -0.1)], "greater than or equal to 0.0"),
        ("1", &[("2", f64::NAN)], "less than or equal to 1.0"),
        ("1", &[("$LATEST", 0.1)], "[0-9]+"),
        ("1", &[("live", 0.1)], "[0-9]+"),
        ("1", &[("1", 0.1)], "must be different"),
        ("$LATEST", &[("1", 0.1)], "$LATEST is not supported"),
        ("live", &[], "(\\$LATEST|[0-9]+)"),
        ("$LATEST.PUBLISHED", &[], "(\\$LATEST|[0-9]+)"),
        ("", &[], "(\\$LATEST|[0-9]+)"),
    ];
    for (primary, pairs, refusal) in table {
        let got = check_alias(primary, &routing(pairs));
        match (refusal.is_empty(), got) {
            (true, Ok(())) => {}
            (false, Err(ApiError::InvalidParameter(m))) if m.contains(refusal) => {}
            (_, other) => panic!("{primary} {pairs:?}: {other:?}"),
        }
    }
}

#[test]
fn alias_names_cannot_look_like_versions() {
    for good in ["live", "prod-2", "a_b", "v1", "1a", &"x".repeat(128)] {
        assert!(alias_name(good).is_ok(), "{good}");
    }
    for bad in ["1", "42", "", "$LATEST", "a.b", "a:b", &"x".repeat(129)] {
        let refused = alias_name(bad);
        assert!(
            matches!(refused, Err(ApiError::InvalidParameter(_))),
            "{bad}: {refused:?}"
        );
    }
}

#[test]
fn alias_configuration_has_lambdas_shape() {
    let config = AliasConfiguration {
        alias_arn: "arn:aws:lambda:us-east-1:123456789012:function:f:live".into(),
        name: "live".into(),
        function_version: "1".into(),
        description: "d".into(),
        routing_config: Some(RoutingConfig {
            additional_version_weights: Some(BTreeMap::from([("2".to_owned(), 0.1)])),
        }),
        revision_id: "r-1".into(),
    };
    assert_eq!(
        serde_json::to_value(&config).unwrap(),
        json!({
            "AliasArn": "arn:aws:lambda:us-east-1:123456789012:function:f:live",
            "Name": "live",
            "FunctionVersion": "1",
            "Description": "d",
            "RoutingConfig": {"AdditionalVersionWeights": {"2": 0.1}},
            "RevisionId": "r-1"
        })
    );
    let plain = AliasConfiguration {
        routing_config: None,
        ..config
    };
    let json = serde_json::to_value(&plain).unwrap();
    assert!(json.get("RoutingConfig").is_none(), "{json}");
    let list = ListAliasesResponse {
        aliases: vec![plain],
        next_marker: None,
    };
    let json = serde_json::to_value(&list).unwrap();
    assert_eq!(json["Aliases"][0]["Name"], "live");
    assert!(json.get("NextMarker").is_none());
}

#[test]
fn alias_requests_parse_lambdas_members_and_refuse_others() {
    let req: CreateAliasRequest = serde_json::from_value(json!({
        "Name": "live",
        "FunctionVersion": "1",
        "Description": "d",
        "RoutingConfig": {"AdditionalVersionWeights": {"2": 0.25}}
    }))
    .unwrap();
    assert_eq!(req.name.as_deref(), Some("live"));
    assert_eq!(
        weights(req.routing_config).unwrap(),
        BTreeMap::from([("2".to_owned(), 0.25)])
    );
    assert!(req.unknown.is_empty());
    let req: UpdateAliasRequest =
        serde_json::from_value(json!({"RevisionId": "r", "Weights": 1})).unwrap();
    assert!(validate::unknown(&req.unknown, "UpdateAlias").is_err());
    // An empty routing map clears the routing.
    let req: UpdateAliasRequest =
        serde_json::from_value(json!({"RoutingConfig": {"AdditionalVersionWeights": {}}})).unwrap();
    assert_eq!(
        req.routing_config.map(|r| weights(Some(r)).unwrap()),
        Some(BTreeMap::new())
    );
}
