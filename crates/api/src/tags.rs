//! Tags: `TagResource` (`POST /2017-03-31/tags/{ARN}`, 204), `UntagResource` (`DELETE …?tagKeys=K`,
//! 204) and `ListTags` (`GET`, `{"Tags"}`), on a function's unqualified ARN; and [`tags`], the
//! check of a `Tags` map that CreateFunction shares.
//!
//! AWS's limits, as pure functions with table tests: at most [`MAX_TAGS`] per function, a key of
//! 1–128 characters not starting with `aws:` (in any case: reserved for AWS), a value of 0–256,
//! both of letters, digits, white space and `_ . : / = + - @` (the model's pattern,
//! `[\p{L}\p{Z}\p{N}_.:/=+\-@]*`). A refused request changes nothing: the whole request is
//! checked before the one store call, which checks the count against the stored tags in its
//! transaction.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use ember_store::Tags;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::functions::parse_json;
use crate::shapes::Unknown;
use crate::validate;
use crate::AppState;

/// The most tags a function may have, as in Lambda.
pub const MAX_TAGS: usize = 50;
const MAX_KEY_CHARS: usize = 128;
const MAX_VALUE_CHARS: usize = 256;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TagResourceRequest {
    pub tags: Option<Tags>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListTagsResponse {
    pub tags: Tags,
}

pub async fn tag_resource(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(resource): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let req: TagResourceRequest = parse_json(&body)?;
    validate::unknown(&req.unknown, "TagResource")?;
    let name = state.tagged_function(&caller, &resource)?;
    let tags = req
        .tags
        .ok_or_else(|| ApiError::InvalidParameter("Tags is required".into()))?;
    self::tags(&tags)?;
    state
        .store
        .tag_function(&caller.account_id, &name, &tags, MAX_TAGS)
        .await
        .map_err(|e| state.not_found_as_function(e, &caller, &name))?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn untag_resource(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(resource): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, ApiError> {
    let keys = tag_keys(query.as_deref().unwrap_or_default())?;
    let name = state.tagged_function(&caller, &resource)?;
    state
        .store
        .untag_function(&caller.account_id, &name, &keys)
        .await
        .map_err(|e| state.not_found_as_function(e, &caller, &name))?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_tags(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(resource): Path<String>,
) -> Result<Json<ListTagsResponse>, ApiError> {
    let name = state.tagged_function(&caller, &resource)?;
    let tags = state
        .store
        .tags(&caller.account_id, &name)
        .await
        .map_err(|e| state.not_found_as_function(e, &caller, &name))?;
    Ok(Json(ListTagsResponse { tags }))
}

impl AppState {
    /// The name of the caller's function a tagging request's resource ARN names. Only a
    /// function's unqualified ARN can be tagged (as in Lambda: tags belong to the function, not
    /// to a version or alias); another account's, or another region's, is not found.
    fn tagged_function(&self, caller: &Caller, resource: &str) -> Result<String, ApiError> {
        let parts: Vec<&str> = resource.split(':').collect();
        let ["arn", partition, "lambda", region, _account, kind, ..] = parts.as_slice() else {
            return Err(ApiError::InvalidParameter(format!(
                "1 validation error detected: Value '{}' at 'resource' failed to satisfy \
                 constraint: Member must be the ARN of a Lambda function \
                 (arn:aws:lambda:REGION:ACCOUNT:function:NAME)",
                resource.chars().take(200).collect::<String>()
            )));
        };
        if !partition.starts_with("aws") || *kind != "function" {
            return Err(ApiError::InvalidParameter(format!(
                "Ember can tag only functions; {} is not a function's ARN",
                resource.chars().take(200).collect::<String>()
            )));
        }
        let target = self.resolve(caller, resource, None)?;
        if *region != &*self.region {
            return Err(ApiError::function_not_found(resource));
        }
        if target.qualifier.is_some() {
            return Err(ApiError::InvalidParameter(format!(
                "Tags belong to the function, not to a version or alias: tag {} instead of \
                 {resource}",
                self.arn(&caller.account_id, &target.name)
            )));
        }
        Ok(target.name)
    }
}

/// Checks a request's tags (TagResource's, CreateFunction's): their number, and each key and
/// value.
pub fn tags(tags: &Tags) -> Result<(), ApiError> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::InvalidParameter(format!(
            "A function may have at most {MAX_TAGS} tags; the request has {}",
            tags.len()
        )));
    }
    for (key, value) in tags {
        tag_key(key)?;
        text("tag value", value, 0, MAX_VALUE_CHARS)?;
    }
    Ok(())
}

/// Checks a tag key: 1–128 allowed characters, not `aws:` in any case.
pub fn tag_key(key: &str) -> Result<(), ApiError> {
    text("tag key", key, 1, MAX_KEY_CHARS)?;
    if key
        .get(..4)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("aws:"))
    {
        return Err(ApiError::InvalidParameter(format!(
            "Tag key '{key}' uses the prefix 'aws:', which is reserved for AWS"
        )));
    }
    Ok(())
}

fn text(what: &str, s: &str, min: usize, max: usize) -> Result<(), ApiError> {
    let shown = || s.chars().take(100).collect::<String>();
    let n = s.chars().count();
    if n < min || n > max {
        return Err(ApiError::InvalidParameter(format!(
            "The {what} '{}' is {n} characters long; it must be {min} to {max}",
            shown()
        )));
    }
    if let Some(bad) = s.chars().find(|&c| !allowed(c)) {
        return Err(ApiError::InvalidParameter(format!(
            "The {what} '{}' contains {bad:?}; tags may hold letters, digits, spaces and \
             _ . : / = + - @",
            shown()
        )));
    }
    Ok(())
}

/// The model's `[\p{L}\p{Z}\p{N}_.:/=+\-@]`: a letter, a separator (space), a number, or one of
/// the punctuation marks.
fn allowed(c: char) -> bool {
    c.is_alphabetic()
        || c.is_numeric()
        || (c.is_whitespace() && !c.is_control())
        || "_.:/=+-@".contains(c)
}

/// The `tagKeys` of an UntagResource query (`tagKeys=a&tagKeys=b`), each checked as a key.
fn tag_keys(query: &str) -> Result<Vec<String>, ApiError> {
    let mut keys = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(&value.replace('+', " "))
            .decode_utf8()
            .map_err(|_| ApiError::InvalidParameter("tagKeys is not valid UTF-8".into()))?
            .into_owned();
        match name {
            "tagKeys" => {
                tag_key(&value)?;
                keys.push(value);
            }
            other => {
                return Err(ApiError::InvalidParameter(format!(
                    "{} is not a parameter of UntagResource",
                    other.chars().take(100).collect::<String>()
                )))
            }
        }
    }
    if keys.is_empty() {
        return Err(ApiError::InvalidParameter(
            "TagKeys is required: name the tag keys to remove (tagKeys=KEY)".into(),
        ));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(result: Result<(), ApiError>) -> String {
        match result {
            Ok(()) => String::new(),
            Err(ApiError::InvalidParameter(m)) => m,
            Err(other) => panic!("not an InvalidParameterValueException: {other:?}"),
        }
    }

    #[test]
    fn keys_and_values_within_aws_limits_are_accepted_and_others_refused() {
        let long = |n| "k".repeat(n);
        // (key, value, the start of the refusal; "" when accepted)
        let cases: Vec<(String, String, &str)> = vec![
            ("team".into(), "ember".into(), ""),
            ("a".into(), "".into(), ""),
            (long(128), "v".repeat(256), ""),
            ("Ünïcode_ключ 1.2:3/4=5+6-7@8".into(), "värde ٣".into(), ""),
            ("awsome".into(), "aws:value".into(), ""),
            ("".into(), "v".into(), "The tag key '' is 0 characters"),
            (long(129), "v".into(), "The tag key 'kkk"),
            ("k".into(), "v".repeat(257), "The tag value 'vvv"),
            (
                "aws:cloudformation".into(),
                "v".into(),
                "Tag key 'aws:cloudformation' uses",
            ),
            (
                "AWS:x".into(),
                "v".into(),
                "Tag key 'AWS:x' uses the prefix",
            ),
            (
                "aWs:x".into(),
                "v".into(),
                "Tag key 'aWs:x' uses the prefix",
            ),
            ("a*b".into(), "v".into(), "The tag key 'a*b' contains '*'"),
            (
                "k".into(),
                "tab\there".into(),
                "The tag value 'tab\there' contains '\\t'",
            ),
            (
                "k".into(),
                "semi;colon".into(),
                "The tag value 'semi;colon' contains ';'",
            ),
            (
                "k".into(),
                "a\"b".into(),
                "The tag value 'a\"b' contains '\"'",
            ),
        ];
        for (key, value, refusal) in cases {
            let message = refused(tags(&Tags::from([(key.clone(), value.clone())])));
            assert!(
                message.starts_with(refusal),
                "{key:?}={value:?}: {message:?}"
            );
            assert_eq!(
                message.is_empty(),
                refusal.is_empty(),
                "{key:?}={value:?}: {message:?}"
            );
        }
    }

    #[test]
    fn at_most_fifty_tags() {
        let n =
            |count: usize| -> Tags { (0..count).map(|i| (format!("k{i}"), "v".into())).collect() };
        assert_eq!(refused(tags(&n(50))), "");
        assert_eq!(
            refused(tags(&n(51))),
            "A function may have at most 50 tags; the request has 51"
        );
    }

    #[test]
    fn untag_keys_come_from_the_repeated_query_parameter() {
        assert_eq!(
            tag_keys("tagKeys=team&tagKeys=cost%20centre&tagKeys=a%3Ab%2Bc").unwrap(),
            vec!["team", "cost centre", "a:b+c"]
        );
        assert_eq!(tag_keys("tagKeys=two+words").unwrap(), vec!["two words"]);
        for (query, refusal) in [
            ("", "TagKeys is required"),
            ("tagKeys=", "The tag key '' is 0 characters"),
            ("tagKeys=aws%3Aname", "Tag key 'aws:name' uses the prefix"),
            (
                "TagKeys=team",
                "TagKeys is not a parameter of UntagResource",
            ),
            ("tagKeys=%FF", "tagKeys is not valid UTF-8"),
        ] {
            let message = refused(tag_keys(query).map(|_| ()));
            assert!(message.starts_with(refusal), "{query}: {message:?}");
        }
    }

    proptest::proptest! {
        /// Whatever the query, the parse answers keys or a refusal; it never panics.
        #[test]
        fn any_untag_query_is_parsed_or_refused(query in "\\PC{0,120}") {
            let _ = tag_keys(&query);
        }

        /// Keys as botocore sends them (each percent-encoded) come back as they were.
        #[test]
        fn encoded_keys_come_back_as_they_were(
            keys in proptest::collection::vec("[\\p{L}\\p{N} _.:/=+@-]{1,40}", 1..5)
        ) {
            proptest::prop_assume!(keys.iter().all(|k| tag_key(k).is_ok()));
            let query = keys
                .iter()
                .map(|k| {
                    let encoded =
                        percent_encoding::utf8_percent_encode(k, percent_encoding::NON_ALPHANUMERIC);
                    format!("tagKeys={encoded}")
                })
                .collect::<Vec<_>>()
                .join("&");
            proptest::prop_assert_eq!(tag_keys(&query).unwrap(), keys);
        }
    }

    #[test]
    fn list_tags_answers_the_models_shape() {
        let body = ListTagsResponse {
            tags: Tags::from([("b".into(), "2".into()), ("a".into(), "".into())]),
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"Tags":{"a":"","b":"2"}}"#
        );
        let empty = ListTagsResponse { tags: Tags::new() };
        assert_eq!(serde_json::to_string(&empty).unwrap(), r#"{"Tags":{}}"#);
    }

    #[test]
    fn a_tag_request_knows_only_tags() {
        let req: TagResourceRequest =
            serde_json::from_str(r#"{"Tags":{"a":"1"},"Tag":{}}"#).unwrap();
        assert_eq!(
            refused(validate::unknown(&req.unknown, "TagResource")),
            "Tag is not a parameter of TagResource; Ember refuses parameters it does not know \
             rather than ignoring them"
        );
        assert!(serde_json::from_str::<TagResourceRequest>(r#"{"Tags":{"a":1}}"#).is_err());
    }
}
