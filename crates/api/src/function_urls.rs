//! Function URLs: the config operations (`CreateFunctionUrlConfig`, `GetFunctionUrlConfig`,
//! `UpdateFunctionUrlConfig`, `DeleteFunctionUrlConfig` on
//! `/2021-10-31/functions/{FunctionName}/url`, `ListFunctionUrlConfigs` on `…/urls`) with
//! botocore's shapes and Lambda's validation, and, in [`serve`], the URLs themselves.
//!
//! A URL belongs to the unqualified function or to an alias (Lambda's `Qualifier` pattern
//! refuses a version number and `$LATEST`); its id is 32 random lowercase letters and digits,
//! and its `FunctionUrl` the host form, `http://<id>.lambda-url.<region>.<domain>[:port]/`.

pub(crate) mod cors;
pub(crate) mod event;
pub(crate) mod response;
pub(crate) mod serve;
pub(crate) mod stream;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ember_store::{
    FunctionUrl, FunctionUrlPatch, InvokeMode, NewFunctionUrl, UrlAuthType, UrlCors,
};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::functions::{parse_json, ListQuery, QualifierQuery};
use crate::paging::{self, paginate};
use crate::shapes::Unknown;
use crate::validate;
use crate::AppState;

/// URLs listed per page at most (`MaxItems`' maximum).
const PAGE_SIZE: u32 = 50;
/// The methods `AllowMethods` may name.
const METHODS: &[&str] = &["GET", "PUT", "HEAD", "POST", "PATCH", "DELETE", "*"];

// ---- shapes ---------------------------------------------------------------------------------

/// The body of `CreateFunctionUrlConfig` and `UpdateFunctionUrlConfig`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionUrlConfigRequest {
    pub auth_type: Option<String>,
    pub cors: Option<CorsRequest>,
    pub invoke_mode: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// `Cors`, as a request carries it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CorsRequest {
    pub allow_credentials: Option<bool>,
    pub allow_headers: Option<Vec<String>>,
    pub allow_methods: Option<Vec<String>>,
    pub allow_origins: Option<Vec<String>>,
    pub expose_headers: Option<Vec<String>>,
    pub max_age: Option<i64>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// `Cors`, as an answer shows it.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Cors {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_headers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_methods: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_origins: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expose_headers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u32>,
}

impl From<&UrlCors> for Cors {
    fn from(c: &UrlCors) -> Self {
        Self {
            allow_credentials: c.allow_credentials,
            allow_headers: c.allow_headers.clone(),
            allow_methods: c.allow_methods.clone(),
            allow_origins: c.allow_origins.clone(),
            expose_headers: c.expose_headers.clone(),
            max_age: c.max_age,
        }
    }
}

/// `CreateFunctionUrlConfigResponse` (without `LastModifiedTime`),
/// `GetFunctionUrlConfigResponse`, `UpdateFunctionUrlConfigResponse` and List's
/// `FunctionUrlConfig`.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionUrlConfig {
    pub function_url: String,
    pub function_arn: String,
    pub auth_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    pub creation_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_modified_time: Option<String>,
    pub invoke_mode: &'static str,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ListFunctionUrlConfigsResponse {
    pub function_url_configs: Vec<FunctionUrlConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

/// A timestamp as Lambda writes a URL's (`2021-10-29T22:37:38.512000Z`).
fn url_time(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    t.format(&format).unwrap_or_default()
}

impl AppState {
    /// A URL's `FunctionUrl`: the host form.
    pub(crate) fn function_url_address(&self, url_id: &str) -> String {
        let port = self.urls.port.map(|p| format!(":{p}")).unwrap_or_default();
        format!("http://{}{port}/", self.url_domain_name(url_id))
    }

    /// `<url-id>.lambda-url.<region>.<domain>`.
    pub(crate) fn url_domain_name(&self, url_id: &str) -> String {
        format!("{url_id}.lambda-url.{}.{}", self.region, self.urls.domain)
    }

    fn url_config(&self, url: &FunctionUrl, last_modified: bool) -> FunctionUrlConfig {
        let arn = self.arn(&url.account_id, &url.function_name);
        FunctionUrlConfig {
            function_url: self.function_url_address(&url.url_id),
            function_arn: match &url.qualifier {
                Some(q) => format!("{arn}:{q}"),
                None => arn,
            },
            auth_type: url.auth_type.as_str(),
            cors: url.cors.as_ref().map(Cors::from),
            creation_time: url_time(url.created_ms),
            last_modified_time: last_modified.then(|| url_time(url.last_modified_ms)),
            invoke_mode: url.invoke_mode.as_str(),
        }
    }
}

// ---- handlers -------------------------------------------------------------------------------

pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: FunctionUrlConfigRequest = parse_json(&body)?;
    let settings = Settings::parse(req, "CreateFunctionUrlConfig")?;
    let auth_type = settings.auth_type.ok_or_else(|| {
        ApiError::InvalidParameter(
            "1 validation error detected: Value null at 'authType' failed to satisfy \
             constraint: Member must not be null"
                .into(),
        )
    })?;
    let target = state.url_target(&caller, &name, q.qualifier).await?;
    let url_id = new_url_id();
    let url = state
        .store
        .create_function_url(
            &caller.account_id,
            &target.name,
            target.qualifier.as_deref(),
            &NewFunctionUrl {
                url_id: &url_id,
                auth_type,
                invoke_mode: settings.invoke_mode.unwrap_or(InvokeMode::Buffered),
                cors: settings.cors.flatten(),
            },
        )
        .await
        .map_err(|e| match e {
            ember_store::StoreError::Conflict(_) => ApiError::Conflict(format!(
                "Failed to create function url config for [functionArn = {}]. Error message:  \
                 FunctionUrlConfig exists for this Lambda function",
                target.arn
            )),
            other => target.not_found(other),
        })?;
    tracing::info!(function = %target.name, qualifier = ?target.qualifier, url_id = %url.url_id,
        "function URL created");
    Ok((StatusCode::CREATED, Json(state.url_config(&url, false))).into_response())
}

pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<Json<FunctionUrlConfig>, ApiError> {
    let target = state.url_target(&caller, &name, q.qualifier).await?;
    let url = state
        .store
        .function_url(
            &caller.account_id,
            &target.name,
            target.qualifier.as_deref(),
        )
        .await?
        .ok_or_else(no_url)?;
    Ok(Json(state.url_config(&url, true)))
}

pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
    body: Bytes,
) -> Result<Json<FunctionUrlConfig>, ApiError> {
    let req: FunctionUrlConfigRequest = parse_json(&body)?;
    let settings = Settings::parse(req, "UpdateFunctionUrlConfig")?;
    let target = state.url_target(&caller, &name, q.qualifier).await?;
    let url = state
        .store
        .update_function_url(
            &caller.account_id,
            &target.name,
            target.qualifier.as_deref(),
            FunctionUrlPatch {
                auth_type: settings.auth_type,
                invoke_mode: settings.invoke_mode,
                cors: settings.cors,
            },
        )
        .await
        .map_err(|e| match e {
            ember_store::StoreError::NotFound(_) => no_url(),
            other => other.into(),
        })?;
    Ok(Json(state.url_config(&url, true)))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<StatusCode, ApiError> {
    let target = state.url_target(&caller, &name, q.qualifier).await?;
    state
        .store
        .delete_function_url(
            &caller.account_id,
            &target.name,
            target.qualifier.as_deref(),
        )
        .await
        .map_err(|e| match e {
            ember_store::StoreError::NotFound(_) => no_url(),
            other => other.into(),
        })?;
    tracing::info!(function = %target.name, qualifier = ?target.qualifier, "function URL deleted");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<ListFunctionUrlConfigsResponse>, ApiError> {
    let max_items = validate::max_items(q.max_items.as_deref(), PAGE_SIZE, PAGE_SIZE)?;
    let after = q.marker.as_deref().map(decode_marker).transpose()?;
    let function = state.function(&caller, &name, None).await?;
    // One extra row tells whether another page follows.
    let page = state
        .store
        .list_function_urls(
            &caller.account_id,
            &function.name,
            after.as_deref(),
            max_items + 1,
        )
        .await?;
    let (page, next_marker) = paginate(page, max_items, |u| {
        encode_marker(u.qualifier.as_deref().unwrap_or(""))
    });
    Ok(Json(ListFunctionUrlConfigsResponse {
        function_url_configs: page.iter().map(|u| state.url_config(u, true)).collect(),
        next_marker,
    }))
}

/// Lambda's 404 for a function or alias without a URL.
fn no_url() -> ApiError {
    ApiError::NotFound("The resource you requested does not exist.".into())
}

/// A URL listing's `Marker`: the qualifier, `q:`-prefixed so that the unqualified function's
/// (`""`) is not an empty marker.
fn encode_marker(qualifier: &str) -> String {
    paging::encode_marker(&format!("q:{qualifier}"))
}

fn decode_marker(marker: &str) -> Result<String, ApiError> {
    paging::decode_marker(marker)?
        .strip_prefix("q:")
        .map(str::to_owned)
        .ok_or_else(|| ApiError::InvalidParameter(format!("Invalid Marker: {marker}")))
}

/// A new URL id: 32 random lowercase letters and digits, as Lambda's.
fn new_url_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..32)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

// ---- validation -----------------------------------------------------------------------------

/// A Create or Update request's settings, checked; `None` for what it does not set (`cors`:
/// `Some(None)` for an empty `Cors`, which clears it).
#[derive(Debug, PartialEq)]
struct Settings {
    auth_type: Option<UrlAuthType>,
    invoke_mode: Option<InvokeMode>,
    cors: Option<Option<UrlCors>>,
}

impl Settings {
    fn parse(req: FunctionUrlConfigRequest, operation: &str) -> Result<Self, ApiError> {
        validate::unknown(&req.unknown, operation)?;
        let auth_type = req
            .auth_type
            .map(|a| {
                UrlAuthType::parse(&a).ok_or_else(|| enum_error(&a, "authType", "[AWS_IAM, NONE]"))
            })
            .transpose()?;
        let invoke_mode = req
            .invoke_mode
            .map(|m| {
                InvokeMode::parse(&m)
                    .ok_or_else(|| enum_error(&m, "invokeMode", "[BUFFERED, RESPONSE_STREAM]"))
            })
            .transpose()?;
        let cors = req.cors.map(|c| check_cors(c, operation)).transpose()?;
        Ok(Self {
            auth_type,
            invoke_mode,
            cors,
        })
    }
}

fn enum_error(value: &str, member: &str, set: &str) -> ApiError {
    ApiError::InvalidParameter(format!(
        "1 validation error detected: Value '{}' at '{member}' failed to satisfy constraint: \
         Member must satisfy enum value set: {set}",
        value.chars().take(256).collect::<String>()
    ))
}

/// `Cors` against the model's limits and Lambda's methods; an empty one is none.
fn check_cors(c: CorsRequest, operation: &str) -> Result<Option<UrlCors>, ApiError> {
    validate::unknown(&c.unknown, operation)?;
    let invalid = |member: &str, constraint: &str| {
        ApiError::InvalidParameter(format!(
            "1 validation error detected: Value at 'cors.{member}' failed to satisfy \
             constraint: {constraint}"
        ))
    };
    let list = |values: &Option<Vec<String>>,
                member: &str,
                most: usize,
                item: (usize, usize)|
     -> Result<(), ApiError> {
        let Some(values) = values else { return Ok(()) };
        if values.len() > most {
            return Err(invalid(
                member,
                &format!("Member must have length less than or equal to {most}"),
            ));
        }
        if let Some(bad) = values.iter().find(|v| v.len() < item.0 || v.len() > item.1) {
            return Err(invalid(
                member,
                &format!(
                    "Member must satisfy constraint: [Member must have length between {} and \
                     {}] ('{}')",
                    item.0,
                    item.1,
                    bad.chars().take(256).collect::<String>()
                ),
            ));
        }
        Ok(())
    };
    list(&c.allow_headers, "allowHeaders", 100, (0, 1024))?;
    list(&c.expose_headers, "exposeHeaders", 100, (0, 1024))?;
    list(&c.allow_origins, "allowOrigins", 100, (1, 253))?;
    list(&c.allow_methods, "allowMethods", 6, (0, 6))?;
    if let Some(bad) = c
        .allow_methods
        .iter()
        .flatten()
        .find(|m| !METHODS.contains(&m.as_str()))
    {
        return Err(ApiError::InvalidParameter(format!(
            "{bad} is not a valid method for AllowMethods; use GET, PUT, HEAD, POST, PATCH, \
             DELETE or *"
        )));
    }
    let max_age = c
        .max_age
        .map(|n| validate::range("cors.maxAge", n, (0, 86_400)))
        .transpose()?;
    let cors = UrlCors {
        allow_credentials: c.allow_credentials,
        allow_headers: c.allow_headers,
        allow_methods: c.allow_methods,
        allow_origins: c.allow_origins,
        expose_headers: c.expose_headers,
        max_age,
    };
    Ok(Some(cors).filter(|c| *c != UrlCors::default()))
}

/// The function (and alias) a config request names.
struct Target {
    name: String,
    /// The alias; `None` for the unqualified function.
    qualifier: Option<String>,
    /// The ARN, qualified with the alias when there is one.
    arn: String,
}

impl Target {
    fn not_found(&self, e: ember_store::StoreError) -> ApiError {
        match e {
            ember_store::StoreError::NotFound(_) => ApiError::function_not_found(&self.arn),
            other => other.into(),
        }
    }
}

/// `Qualifier` of a URL: an alias name (Lambda's pattern refuses a version number and
/// `$LATEST`).
fn check_qualifier(q: &str) -> Result<(), ApiError> {
    let ok = !q.is_empty()
        && q.len() <= 128
        && q.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !q.bytes().all(|b| b.is_ascii_digit());
    if ok {
        return Ok(());
    }
    Err(ApiError::InvalidParameter(format!(
        "1 validation error detected: Value '{}' at 'qualifier' failed to satisfy constraint: \
         Member must satisfy regular expression pattern: ((?!^\\d+$)^[0-9a-zA-Z-_]+$)",
        q.chars().take(256).collect::<String>()
    )))
}

impl AppState {
    /// Resolves the function and alias a config request names: the caller's own (404
    /// otherwise), an alias name or none as qualifier.
    async fn url_target(
        &self,
        caller: &Caller,
        name: &str,
        qualifier: Option<String>,
    ) -> Result<Target, ApiError> {
        let reference = self.resolve(caller, name, qualifier.as_deref())?;
        if let Some(q) = &reference.qualifier {
            check_qualifier(q)?;
        }
        let function = self.function(caller, &reference.name, None).await?;
        let arn = self.arn(&caller.account_id, &function.name);
        Ok(Target {
            arn: match &reference.qualifier {
                Some(q) => format!("{arn}:{q}"),
                None => arn,
            },
            name: function.name,
            qualifier: reference.qualifier,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(value: serde_json::Value) -> FunctionUrlConfigRequest {
        serde_json::from_value(value).unwrap()
    }

    /// The answers' JSON, golden: members as botocore names them, absent ones left out.
    #[test]
    fn config_shapes_are_botocores() {
        let config = FunctionUrlConfig {
            function_url: "http://abc.lambda-url.us-east-1.localhost:8900/".into(),
            function_arn: "arn:aws:lambda:us-east-1:111111111111:function:f:live".into(),
            auth_type: "NONE",
            cors: Some(Cors::from(&UrlCors {
                allow_origins: Some(vec!["*".into()]),
                max_age: Some(60),
                allow_credentials: Some(true),
                ..Default::default()
            })),
            creation_time: url_time(1_700_000_000_123),
            last_modified_time: Some(url_time(1_700_000_001_000)),
            invoke_mode: "BUFFERED",
        };
        assert_eq!(
            serde_json::to_string(&config).unwrap(),
            r#"{"FunctionUrl":"http://abc.lambda-url.us-east-1.localhost:8900/","FunctionArn":"arn:aws:lambda:us-east-1:111111111111:function:f:live","AuthType":"NONE","Cors":{"AllowCredentials":true,"AllowOrigins":["*"],"MaxAge":60},"CreationTime":"2023-11-14T22:13:20.123000Z","LastModifiedTime":"2023-11-14T22:13:21.000000Z","InvokeMode":"BUFFERED"}"#
        );
        let created = FunctionUrlConfig {
            cors: None,
            last_modified_time: None,
            ..config
        };
        let list = ListFunctionUrlConfigsResponse {
            function_url_configs: vec![created],
            next_marker: None,
        };
        assert_eq!(
            serde_json::to_string(&list).unwrap(),
            r#"{"FunctionUrlConfigs":[{"FunctionUrl":"http://abc.lambda-url.us-east-1.localhost:8900/","FunctionArn":"arn:aws:lambda:us-east-1:111111111111:function:f:live","AuthType":"NONE","CreationTime":"2023-11-14T22:13:20.123000Z","InvokeMode":"BUFFERED"}]}"#
        );
    }

    #[test]
    fn settings_parse_lambdas_members() {
        let s = Settings::parse(
            request(json!({
                "AuthType": "AWS_IAM", "InvokeMode": "RESPONSE_STREAM",
                "Cors": {"AllowOrigins": ["https://a.example"], "AllowMethods": ["GET", "*"],
                         "AllowHeaders": ["x"], "ExposeHeaders": [], "MaxAge": 86400,
                         "AllowCredentials": false}
            })),
            "CreateFunctionUrlConfig",
        )
        .unwrap();
        assert_eq!(s.auth_type, Some(UrlAuthType::AwsIam));
        assert_eq!(s.invoke_mode, Some(InvokeMode::ResponseStream));
        let cors = s.cors.unwrap().unwrap();
        assert_eq!(cors.max_age, Some(86_400));
        assert_eq!(cors.allow_methods.unwrap(), ["GET", "*"]);
        // An empty Cors is none (Update's way to clear it).
        let s = Settings::parse(request(json!({"Cors": {}})), "UpdateFunctionUrlConfig").unwrap();
        assert_eq!(s.cors, Some(None));
        let s = Settings::parse(request(json!({})), "UpdateFunctionUrlConfig").unwrap();
        assert_eq!(
            s,
            Settings {
                auth_type: None,
                invoke_mode: None,
                cors: None
            }
        );
    }

    /// What Create and Update refuse, and the member they name.
    #[test]
    fn bad_settings_are_refused_naming_the_member() {
        let many = |n: usize, item: &str| vec![item.to_owned(); n];
        let table: Vec<(serde_json::Value, &str)> = vec![
            (json!({"AuthType": "OPEN"}), "authType"),
            (json!({"InvokeMode": "STREAM"}), "invokeMode"),
            (json!({"Cors": {"MaxAge": 86401}}), "cors.maxAge"),
            (json!({"Cors": {"MaxAge": -1}}), "cors.maxAge"),
            (
                json!({"Cors": {"AllowMethods": many(7, "GET")}}),
                "allowMethods",
            ),
            (
                json!({"Cors": {"AllowMethods": ["OPTIONS"]}}),
                "allowMethods",
            ),
            (json!({"Cors": {"AllowMethods": ["FETCH"]}}), "AllowMethods"),
            (
                json!({"Cors": {"AllowOrigins": many(101, "*")}}),
                "allowOrigins",
            ),
            (json!({"Cors": {"AllowOrigins": [""]}}), "allowOrigins"),
            (
                json!({"Cors": {"AllowOrigins": ["a".repeat(254)]}}),
                "allowOrigins",
            ),
            (
                json!({"Cors": {"AllowHeaders": many(101, "x")}}),
                "allowHeaders",
            ),
            (
                json!({"Cors": {"ExposeHeaders": ["x".repeat(1025)]}}),
                "exposeHeaders",
            ),
            (
                json!({"Cors": {"Origins": ["*"]}}),
                "Origins is not a parameter",
            ),
            (json!({"Qualifier": "x"}), "Qualifier is not a parameter"),
        ];
        for (body, says) in table {
            let err = Settings::parse(request(body.clone()), "UpdateFunctionUrlConfig")
                .expect_err(&body.to_string());
            assert!(
                matches!(err, ApiError::InvalidParameter(_)),
                "{body}: {err:?}"
            );
            assert!(err.to_string().contains(says), "{body}: {err} lacks {says}");
        }
    }

    #[test]
    fn qualifiers_are_aliases_only() {
        for ok in ["live", "v1", "a-b_c", "1a"] {
            assert!(check_qualifier(ok).is_ok(), "{ok}");
        }
        for bad in ["$LATEST", "1", "42", "", "a b", &"a".repeat(129)] {
            assert!(check_qualifier(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn url_ids_are_32_lowercase_alphanumerics_and_markers_round_trip() {
        let a = new_url_id();
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert_ne!(a, new_url_id());
        for q in ["", "live"] {
            assert_eq!(decode_marker(&encode_marker(q)).unwrap(), q);
        }
        assert!(decode_marker("!!").is_err());
    }
}
