//! Event invoke config: `PutFunctionEventInvokeConfig` (replaces), `UpdateFunctionEventInvokeConfig`
//! (merges), `GetFunctionEventInvokeConfig`, `DeleteFunctionEventInvokeConfig` and
//! `ListFunctionEventInvokeConfigs`, under `/2019-09-25/functions/{FunctionName}/event-invoke-config`,
//! with their shapes as botocore's model has them (`LastModified` is a timestamp here, epoch
//! seconds, unlike FunctionConfiguration's string).
//!
//! A config belongs to a function and a qualifier (`$LATEST` without one). Its destinations must
//! be Lambda functions of the caller's account that exist, other than the function itself; SQS,
//! SNS, EventBridge, S3 and Kafka destinations are refused by name. The Event queue honours a
//! config (`ember_executor`'s `events.rs`); the handlers here only validate and store it.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use ember_store::{EventConfigPatch, EventConfigSettings, EventInvokeConfig};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::functions::{parse_json, ListQuery, QualifierQuery};
use crate::paging::{decode_marker, encode_marker, paginate};
use crate::shapes::Unknown;
use crate::validate;
use crate::AppState;

/// `MaximumRetryAttempts`' range.
pub const RETRY_ATTEMPTS: (i64, i64) = (0, 2);
/// `MaximumEventAgeInSeconds`' range.
pub const EVENT_AGE_S: (i64, i64) = (60, 21_600);
/// Configs listed per page at most (`MaxItems`' maximum).
const PAGE_SIZE: u32 = 50;
/// `DestinationArn`'s longest.
const DESTINATION_MAX: usize = 350;

// ---- shapes ---------------------------------------------------------------------------------

/// The body of `PutFunctionEventInvokeConfig` and `UpdateFunctionEventInvokeConfig` (their
/// `FunctionName` and `Qualifier` are in the path and query).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EventInvokeConfigRequest {
    pub maximum_retry_attempts: Option<i64>,
    pub maximum_event_age_in_seconds: Option<i64>,
    pub destination_config: Option<DestinationConfigRequest>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DestinationConfigRequest {
    pub on_success: Option<DestinationRequest>,
    pub on_failure: Option<DestinationRequest>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DestinationRequest {
    pub destination: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// `FunctionEventInvokeConfig`.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionEventInvokeConfig {
    /// Epoch seconds, with milliseconds (botocore's rest-json timestamp).
    pub last_modified: f64,
    /// The function's ARN with the config's qualifier.
    pub function_arn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maximum_retry_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maximum_event_age_in_seconds: Option<u32>,
    pub destination_config: DestinationConfig,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct DestinationConfig {
    pub on_success: Destination,
    pub on_failure: Destination,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Destination {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ListFunctionEventInvokeConfigsResponse {
    pub function_event_invoke_configs: Vec<FunctionEventInvokeConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

impl FunctionEventInvokeConfig {
    /// The shape of a stored config of the function `function_arn` (unqualified).
    fn new(function_arn: &str, config: &EventInvokeConfig) -> Self {
        let s = &config.settings;
        Self {
            last_modified: config.last_modified_ms as f64 / 1000.0,
            function_arn: format!("{function_arn}:{}", config.qualifier),
            maximum_retry_attempts: s.maximum_retry_attempts,
            maximum_event_age_in_seconds: s.maximum_event_age_s,
            destination_config: DestinationConfig {
                on_success: Destination {
                    destination: s.on_success.clone(),
                },
                on_failure: Destination {
                    destination: s.on_failure.clone(),
                },
            },
        }
    }
}

// ---- handlers -------------------------------------------------------------------------------

pub async fn put(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
    body: Bytes,
) -> Result<Json<FunctionEventInvokeConfig>, ApiError> {
    let req: EventInvokeConfigRequest = parse_json(&body)?;
    let request = Request::parse(req, "PutFunctionEventInvokeConfig")?;
    let target = state.config_target(&caller, &name, q.qualifier).await?;
    let destinations = state
        .destinations(&caller, &target, request.destinations)
        .await?;
    let settings = EventConfigSettings {
        maximum_retry_attempts: request.retries,
        maximum_event_age_s: request.max_age_s,
        on_success: destinations.as_ref().and_then(|d| d.0.clone()),
        on_failure: destinations.and_then(|d| d.1),
    };
    let config = state
        .store
        .put_event_invoke_config(
            &caller.account_id,
            &target.name,
            &target.qualifier,
            &settings,
        )
        .await
        .map_err(|e| target.not_found(e, false))?;
    Ok(Json(FunctionEventInvokeConfig::new(&target.arn, &config)))
}

pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
    body: Bytes,
) -> Result<Json<FunctionEventInvokeConfig>, ApiError> {
    let req: EventInvokeConfigRequest = parse_json(&body)?;
    let request = Request::parse(req, "UpdateFunctionEventInvokeConfig")?;
    let target = state.config_target(&caller, &name, q.qualifier).await?;
    let destinations = state
        .destinations(&caller, &target, request.destinations)
        .await?;
    // A DestinationConfig given replaces both destinations, as Lambda's update does.
    let (on_success, on_failure) = match destinations {
        Some((s, f)) => (Some(s), Some(f)),
        None => (None, None),
    };
    let patch = EventConfigPatch {
        maximum_retry_attempts: request.retries.map(Some),
        maximum_event_age_s: request.max_age_s.map(Some),
        on_success,
        on_failure,
    };
    let config = state
        .store
        .update_event_invoke_config(&caller.account_id, &target.name, &target.qualifier, patch)
        .await
        .map_err(|e| target.not_found(e, true))?;
    Ok(Json(FunctionEventInvokeConfig::new(&target.arn, &config)))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<Json<FunctionEventInvokeConfig>, ApiError> {
    let target = state.config_target(&caller, &name, q.qualifier).await?;
    let config = state
        .store
        .event_invoke_config(&caller.account_id, &target.name, &target.qualifier)
        .await?
        .ok_or_else(|| target.no_config())?;
    Ok(Json(FunctionEventInvokeConfig::new(&target.arn, &config)))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<StatusCode, ApiError> {
    let target = state.config_target(&caller, &name, q.qualifier).await?;
    state
        .store
        .delete_event_invoke_config(&caller.account_id, &target.name, &target.qualifier)
        .await
        .map_err(|e| target.not_found(e, true))?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<ListFunctionEventInvokeConfigsResponse>, ApiError> {
    let max_items = validate::max_items(q.max_items.as_deref(), PAGE_SIZE, PAGE_SIZE)?;
    let after = q.marker.as_deref().map(decode_marker).transpose()?;
    let function = state.function(&caller, &name, None).await?;
    // One extra row tells whether another page follows.
    let page = state
        .store
        .list_event_invoke_configs(
            &caller.account_id,
            &function.name,
            after.as_deref(),
            max_items + 1,
        )
        .await?;
    let (page, next_marker) = paginate(page, max_items, |c| encode_marker(&c.qualifier));
    let arn = state.arn(&caller.account_id, &function.name);
    Ok(Json(ListFunctionEventInvokeConfigsResponse {
        function_event_invoke_configs: page
            .iter()
            .map(|c| FunctionEventInvokeConfig::new(&arn, c))
            .collect(),
        next_marker,
    }))
}

// ---- validation -----------------------------------------------------------------------------

/// A Put or Update request, its values checked against the model's ranges; destinations are
/// checked against the store next ([`AppState::destinations`]).
#[derive(Debug, PartialEq)]
struct Request {
    retries: Option<u32>,
    max_age_s: Option<u32>,
    /// `DestinationConfig`, if given: `OnSuccess`'s and `OnFailure`'s ARNs (`None` for an
    /// absent or empty one).
    destinations: Option<(Option<String>, Option<String>)>,
}

impl Request {
    fn parse(req: EventInvokeConfigRequest, operation: &str) -> Result<Self, ApiError> {
        validate::unknown(&req.unknown, operation)?;
        if req.maximum_retry_attempts.is_none()
            && req.maximum_event_age_in_seconds.is_none()
            && req.destination_config.is_none()
        {
            return Err(ApiError::InvalidParameter(
                "You must specify at least one of error handling or destination setting.".into(),
            ));
        }
        let retries = req
            .maximum_retry_attempts
            .map(|n| validate::range("maximumRetryAttempts", n, RETRY_ATTEMPTS))
            .transpose()?;
        let max_age_s = req
            .maximum_event_age_in_seconds
            .map(|n| validate::range("maximumEventAgeInSeconds", n, EVENT_AGE_S))
            .transpose()?;
        let destinations = match req.destination_config {
            None => None,
            Some(config) => {
                validate::unknown(&config.unknown, operation)?;
                let arn = |d: Option<DestinationRequest>, field: &str| {
                    let Some(d) = d else { return Ok(None) };
                    validate::unknown(&d.unknown, operation)?;
                    destination_arn(d.destination, field)
                };
                let on_success = arn(config.on_success, "onSuccess")?;
                let on_failure = arn(config.on_failure, "onFailure")?;
                Some((on_success, on_failure))
            }
        };
        Ok(Self {
            retries,
            max_age_s,
            destinations,
        })
    }
}

/// A destination ARN's form: `None` for none (absent or empty), a Lambda function ARN, or a
/// clear refusal (other services, other forms). Whether the function exists is checked next.
fn destination_arn(arn: Option<String>, field: &str) -> Result<Option<String>, ApiError> {
    let Some(arn) = arn.filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    let invalid = |why: &str| {
        ApiError::InvalidParameter(format!(
            "The destination ARN {} at 'destinationConfig.{field}.destination' is invalid: {why}",
            arn.chars().take(DESTINATION_MAX).collect::<String>()
        ))
    };
    if arn.len() > DESTINATION_MAX {
        return Err(invalid(&format!(
            "it is longer than {DESTINATION_MAX} characters"
        )));
    }
    let unsupported = |what: &str| {
        invalid(&format!(
            "Ember does not support {what} destinations; a destination must be a Lambda \
             function of this account (arn:aws:lambda:REGION:ACCOUNT:function:NAME)"
        ))
    };
    if arn.starts_with("kafka://") {
        return Err(unsupported("Kafka"));
    }
    let parts: Vec<&str> = arn.split(':').collect();
    match parts.as_slice() {
        ["arn", partition, service, ..] if partition.starts_with("aws") => match *service {
            "lambda" => {}
            "sqs" => return Err(unsupported("Amazon SQS")),
            "sns" => return Err(unsupported("Amazon SNS")),
            "events" => return Err(unsupported("Amazon EventBridge")),
            "s3" => return Err(unsupported("Amazon S3")),
            other => return Err(unsupported(other)),
        },
        _ => {
            return Err(invalid(
                "it is not an ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME)",
            ))
        }
    }
    validate::function_ref(&arn).map_err(|_| {
        invalid("it is not a Lambda function ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME)")
    })?;
    Ok(Some(arn))
}

/// The function and qualifier a request's config belongs to.
struct Target {
    name: String,
    qualifier: String,
    /// The function's unqualified ARN.
    arn: String,
}

impl Target {
    /// The 404 of a function without a config for this qualifier, as Lambda words it.
    fn no_config(&self) -> ApiError {
        ApiError::NotFound(format!(
            "The function {}:{} doesn't have an EventInvokeConfig",
            self.arn, self.qualifier
        ))
    }

    /// A store's `NotFound` as the API says it: the config's (`config`) or the function's.
    fn not_found(&self, e: ember_store::StoreError, config: bool) -> ApiError {
        match e {
            ember_store::StoreError::NotFound(_) if config => self.no_config(),
            ember_store::StoreError::NotFound(_) => ApiError::function_not_found(&self.arn),
            other => other.into(),
        }
    }
}

impl AppState {
    /// Resolves the function and qualifier a config request names, answering 404 for a
    /// function (or qualifier) the caller does not have.
    async fn config_target(
        &self,
        caller: &Caller,
        name: &str,
        qualifier: Option<String>,
    ) -> Result<Target, ApiError> {
        let reference = self.resolve(caller, name, qualifier.as_deref())?;
        let function = self.function(caller, name, qualifier.as_deref()).await?;
        Ok(Target {
            qualifier: reference.qualifier.unwrap_or_else(|| "$LATEST".into()),
            arn: self.arn(&caller.account_id, &function.name),
            name: function.name,
        })
    }

    /// Checks that each destination is a function of the caller's account that exists and is
    /// not the config's own function.
    async fn destinations(
        &self,
        caller: &Caller,
        target: &Target,
        destinations: Option<(Option<String>, Option<String>)>,
    ) -> Result<Option<(Option<String>, Option<String>)>, ApiError> {
        let Some((on_success, on_failure)) = destinations else {
            return Ok(None);
        };
        for arn in [&on_success, &on_failure].into_iter().flatten() {
            let reference = validate::function_ref(arn)?;
            let invalid = |why: &str| {
                ApiError::InvalidParameter(format!("The destination ARN {arn} is invalid: {why}"))
            };
            if reference.account_id.as_deref() != Some(caller.account_id.as_str()) {
                return Err(invalid(
                    "Ember sends records only to functions of the same account",
                ));
            }
            if !arn.starts_with(&format!("arn:aws:lambda:{}:", self.region)) {
                return Err(invalid(&format!(
                    "this Ember server's region is {}",
                    self.region
                )));
            }
            if reference.name == target.name {
                return Err(ApiError::InvalidParameter(
                    "You can't specify the function as a destination for itself.".into(),
                ));
            }
            self.function(caller, arn, None)
                .await
                .map_err(|e| match e {
                    ApiError::NotFound(_) => invalid("no such function"),
                    other => other,
                })?;
        }
        Ok(Some((on_success, on_failure)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn request(json: &str) -> Result<Request, ApiError> {
        Request::parse(parse_json(json.as_bytes())?, "PutFunctionEventInvokeConfig")
    }

    fn message(e: ApiError) -> (String, &'static str) {
        (e.to_string(), e.error_type())
    }

    #[test]
    fn the_config_shape_is_pinned() {
        let config = EventInvokeConfig {
            qualifier: "$LATEST".into(),
            settings: EventConfigSettings {
                maximum_retry_attempts: Some(0),
                maximum_event_age_s: Some(3600),
                on_success: None,
                on_failure: Some("arn:aws:lambda:us-east-1:123456789012:function:dlq".into()),
            },
            last_modified_ms: 1_573_686_021_479,
        };
        let shape = FunctionEventInvokeConfig::new(
            "arn:aws:lambda:us-east-1:123456789012:function:f",
            &config,
        );
        assert_eq!(
            serde_json::to_string(&shape).unwrap(),
            concat!(
                r#"{"LastModified":1573686021.479,"#,
                r#""FunctionArn":"arn:aws:lambda:us-east-1:123456789012:function:f:$LATEST","#,
                r#""MaximumRetryAttempts":0,"MaximumEventAgeInSeconds":3600,"#,
                r#""DestinationConfig":{"OnSuccess":{},"#,
                r#""OnFailure":{"Destination":"arn:aws:lambda:us-east-1:123456789012:function:dlq"}}}"#
            )
        );
        // Unset settings are left out, as Lambda leaves them.
        let bare = EventInvokeConfig {
            qualifier: "live".into(),
            settings: EventConfigSettings::default(),
            last_modified_ms: 1_000,
        };
        let list = ListFunctionEventInvokeConfigsResponse {
            function_event_invoke_configs: vec![FunctionEventInvokeConfig::new("arn:f", &bare)],
            next_marker: None,
        };
        assert_eq!(
            serde_json::to_string(&list).unwrap(),
            concat!(
                r#"{"FunctionEventInvokeConfigs":[{"LastModified":1.0,"FunctionArn":"arn:f:live","#,
                r#""DestinationConfig":{"OnSuccess":{},"OnFailure":{}}}]}"#
            )
        );
    }

    #[test]
    fn values_are_checked_against_the_models_ranges() {
        let ok = request(r#"{"MaximumRetryAttempts": 2, "MaximumEventAgeInSeconds": 60}"#).unwrap();
        assert_eq!(ok.retries, Some(2));
        assert_eq!(ok.max_age_s, Some(60));
        assert_eq!(ok.destinations, None);
        assert_eq!(
            request(r#"{"MaximumEventAgeInSeconds": 21600}"#)
                .unwrap()
                .max_age_s,
            Some(21_600)
        );
        for (body, field) in [
            (r#"{"MaximumRetryAttempts": 3}"#, "maximumRetryAttempts"),
            (r#"{"MaximumRetryAttempts": -1}"#, "maximumRetryAttempts"),
            (
                r#"{"MaximumEventAgeInSeconds": 59}"#,
                "maximumEventAgeInSeconds",
            ),
            (
                r#"{"MaximumEventAgeInSeconds": 21601}"#,
                "maximumEventAgeInSeconds",
            ),
        ] {
            let (text, kind) = message(request(body).unwrap_err());
            assert_eq!(kind, "InvalidParameterValueException", "{body}");
            assert!(text.contains(field), "{body}: {text}");
        }
        let (text, kind) = message(request("{}").unwrap_err());
        assert_eq!(kind, "InvalidParameterValueException");
        assert_eq!(
            text,
            "You must specify at least one of error handling or destination setting."
        );
        let (text, _) = message(request(r#"{"MaximumRetryAttempts": 1, "Bogus": 1}"#).unwrap_err());
        assert!(text.contains("Bogus"), "{text}");
    }

    #[test]
    fn destinations_must_be_lambda_function_arns() {
        let arn = "arn:aws:lambda:us-east-1:123456789012:function:dlq";
        let ok = request(&format!(
            r#"{{"DestinationConfig": {{"OnFailure": {{"Destination": "{arn}"}}, "OnSuccess": {{}}}}}}"#
        ))
        .unwrap();
        assert_eq!(ok.destinations, Some((None, Some(arn.to_owned()))));
        // An empty destination is none.
        let empty =
            request(r#"{"DestinationConfig": {"OnSuccess": {"Destination": ""}}}"#).unwrap();
        assert_eq!(empty.destinations, Some((None, None)));
        for (destination, says) in [
            (
                "arn:aws:sqs:us-east-1:123456789012:q",
                "Ember does not support Amazon SQS",
            ),
            (
                "arn:aws:sns:us-east-1:123456789012:t",
                "Ember does not support Amazon SNS",
            ),
            (
                "arn:aws:events:us-east-1:123456789012:event-bus/b",
                "Ember does not support Amazon EventBridge",
            ),
            ("arn:aws:s3:::bucket", "Ember does not support Amazon S3"),
            ("kafka://topic", "Ember does not support Kafka"),
            ("dlq", "not an ARN"),
            (
                "arn:aws:lambda:us-east-1:123456789012:layer:l:1",
                "not a Lambda function ARN",
            ),
        ] {
            let body = format!(
                r#"{{"DestinationConfig": {{"OnSuccess": {{"Destination": "{destination}"}}}}}}"#
            );
            let (text, kind) = message(request(&body).unwrap_err());
            assert_eq!(kind, "InvalidParameterValueException", "{destination}");
            assert!(text.contains(says), "{destination}: {text}");
            assert!(text.contains("onSuccess"), "{destination}: {text}");
        }
    }
}
