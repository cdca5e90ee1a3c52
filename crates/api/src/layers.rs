//! Lambda layers: PublishLayerVersion, GetLayerVersion(ByArn), ListLayers, ListLayerVersions,
//! DeleteLayerVersion and the layer version policy operations, with their shapes; and what
//! CreateFunction and UpdateFunctionConfiguration need to take a `Layers` list (each ARN resolved
//! to a version the caller may use, at most [`MAX_LAYERS`], the unzipped total within
//! [`MAX_UNZIPPED_BYTES`]).
//!
//! A layer version of another account is usable (and readable) only when its policy grants the
//! caller's account or `*`; otherwise it does not exist for the caller, as another account's
//! function does not.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use ember_store::package::{self, PackageLimits};
use ember_store::{FunctionLayer, LayerGrant, LayerVersion, NewLayerVersion, StoreError};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::functions::{aws_time, parse_json};
use crate::paging::{decode_marker, encode_marker, paginate};
use crate::shapes::Unknown;
use crate::validate;
use crate::AppState;

/// The most layers a function may use, as in Lambda.
pub const MAX_LAYERS: usize = 5;
/// The largest unzipped size of a function's code and layers together, as in Lambda (250 MB).
pub const MAX_UNZIPPED_BYTES: u64 = 262_144_000;
/// Layers or versions listed per page at most (`MaxItems` is 1 to 50).
const PAGE_SIZE: u32 = 50;
/// The one action a layer version's policy grants.
const GET_LAYER_VERSION: &str = "lambda:GetLayerVersion";

// ---- shapes -------------------------------------------------------------------------------------

/// One of a function's layers, in FunctionConfiguration's `Layers`.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Layer {
    pub arn: String,
    pub code_size: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LayerVersionContentInput {
    #[serde(rename = "S3Bucket")]
    pub s3_bucket: Option<String>,
    #[serde(rename = "S3Key")]
    pub s3_key: Option<String>,
    #[serde(rename = "S3ObjectVersion")]
    pub s3_object_version: Option<String>,
    #[serde(rename = "S3ObjectStorageMode")]
    pub s3_object_storage_mode: Option<String>,
    pub zip_file: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PublishLayerVersionRequest {
    pub description: Option<String>,
    pub content: Option<LayerVersionContentInput>,
    pub compatible_runtimes: Option<Vec<String>>,
    pub compatible_architectures: Option<Vec<String>>,
    pub license_info: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct LayerVersionContentOutput {
    pub location: String,
    pub code_sha256: String,
    pub code_size: u64,
}

/// The answer of PublishLayerVersion, GetLayerVersion and GetLayerVersionByArn.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct LayerVersionResponse {
    pub content: LayerVersionContentOutput,
    pub layer_arn: String,
    pub layer_version_arn: String,
    pub description: String,
    pub created_date: String,
    pub version: u64,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub compatible_runtimes: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub compatible_architectures: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub license_info: Option<String>,
}

/// `LayerVersionsListItem`.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct LayerVersionsListItem {
    pub layer_version_arn: String,
    pub version: u64,
    pub description: String,
    pub created_date: String,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub compatible_runtimes: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub compatible_architectures: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub license_info: Option<String>,
}

/// `LayersListItem`.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct LayersListItem {
    pub layer_name: String,
    pub layer_arn: String,
    pub latest_matching_version: LayerVersionsListItem,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ListLayersResponse {
    pub layers: Vec<LayersListItem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ListLayerVersionsResponse {
    pub layer_versions: Vec<LayerVersionsListItem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AddLayerVersionPermissionRequest {
    pub statement_id: Option<String>,
    pub action: Option<String>,
    pub principal: Option<String>,
    pub organization_id: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct AddLayerVersionPermissionResponse {
    pub statement: String,
    pub revision_id: String,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct GetLayerVersionPolicyResponse {
    pub policy: String,
    pub revision_id: String,
}

/// The query of `GET /2018-10-31/layers`: ListLayers, or GetLayerVersionByArn with
/// `find=LayerVersion`.
#[derive(Debug, Default, Deserialize)]
pub struct LayersQuery {
    pub find: Option<String>,
    #[serde(rename = "Arn")]
    pub arn: Option<String>,
    #[serde(rename = "CompatibleRuntime")]
    pub compatible_runtime: Option<String>,
    #[serde(rename = "CompatibleArchitecture")]
    pub compatible_architecture: Option<String>,
    #[serde(rename = "Marker")]
    pub marker: Option<String>,
    #[serde(rename = "MaxItems")]
    pub max_items: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RevisionQuery {
    pub revision_id: Option<String>,
}

// ---- validation ---------------------------------------------------------------------------------

/// A layer named in a path: its owner (`None`: the caller) and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    pub account_id: Option<String>,
    pub name: String,
}

/// `LayerName` in a path: a name (`[a-zA-Z0-9-_]{1,140}`) or a layer ARN.
pub fn layer_name(input: &str, region: &str) -> Result<LayerRef, ApiError> {
    let invalid = || {
        ApiError::InvalidParameter(format!(
            "1 validation error detected: Value '{}' at 'layerName' failed to satisfy \
             constraint: Member must satisfy regular expression pattern: \
             (arn:[a-zA-Z0-9-]+:lambda:[a-zA-Z0-9-]+:\\d{{12}}:layer:[a-zA-Z0-9-_]+)|[a-zA-Z0-9-_]+",
            input.chars().take(200).collect::<String>()
        ))
    };
    let parts: Vec<&str> = input.split(':').collect();
    let (account_id, name) = match parts.as_slice() {
        [name] => (None, *name),
        ["arn", partition, "lambda", r, account, "layer", name] if partition.starts_with("aws") => {
            if *r != region {
                return Err(ApiError::NotFound(format!(
                    "Layer {input} does not exist: this Ember server's region is {region}"
                )));
            }
            (Some(*account), *name)
        }
        _ => return Err(invalid()),
    };
    if !is_name(name) || name.len() > 140 || account_id.is_some_and(|a| !is_account(a)) {
        return Err(invalid());
    }
    Ok(LayerRef {
        account_id: account_id.map(str::to_owned),
        name: name.to_owned(),
    })
}

/// A layer version ARN (`arn:aws:lambda:REGION:ACCOUNT:layer:NAME:VERSION`): its owner, name
/// and number.
pub fn layer_version_arn(input: &str) -> Result<(String, String, String, u64), ApiError> {
    let invalid = || {
        ApiError::InvalidParameter(format!(
            "1 validation error detected: Value '{}' at 'arn' failed to satisfy constraint: \
             Member must satisfy regular expression pattern: \
             arn:[a-zA-Z0-9-]+:lambda:[a-zA-Z0-9-]+:\\d{{12}}:layer:[a-zA-Z0-9-_]+:[0-9]+",
            input.chars().take(200).collect::<String>()
        ))
    };
    match input.split(':').collect::<Vec<_>>().as_slice() {
        ["arn", partition, "lambda", region, account, "layer", name, version]
            if partition.starts_with("aws")
                && is_account(account)
                && is_name(name)
                && name.len() <= 140 =>
        {
            let version = version
                .parse::<u64>()
                .ok()
                .filter(|v| *v >= 1)
                .ok_or_else(invalid)?;
            Ok((
                region.to_string(),
                account.to_string(),
                name.to_string(),
                version,
            ))
        }
        _ => Err(invalid()),
    }
}

/// `VersionNumber` in a path.
pub fn version_number(input: &str) -> Result<u64, ApiError> {
    input
        .parse::<u64>()
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| {
            ApiError::InvalidParameter(format!(
                "VersionNumber must be a positive integer, not '{}'",
                input.chars().take(40).collect::<String>()
            ))
        })
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_account(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The runtimes botocore's model knows for `CompatibleRuntimes`: a layer may name runtimes Ember
/// does not run (it may serve other platforms too).
const MODEL_RUNTIMES: &[&str] = &[
    "nodejs",
    "nodejs4.3",
    "nodejs6.10",
    "nodejs8.10",
    "nodejs10.x",
    "nodejs12.x",
    "nodejs14.x",
    "nodejs16.x",
    "nodejs18.x",
    "nodejs20.x",
    "nodejs22.x",
    "nodejs24.x",
    "nodejs26.x",
    "java8",
    "java8.al2",
    "java11",
    "java17",
    "java21",
    "java25",
    "java8.al2023",
    "java11.al2023",
    "java17.al2023",
    "python2.7",
    "python3.6",
    "python3.7",
    "python3.8",
    "python3.9",
    "python3.10",
    "python3.11",
    "python3.12",
    "python3.13",
    "python3.14",
    "python3.15",
    "dotnetcore1.0",
    "dotnetcore2.0",
    "dotnetcore2.1",
    "dotnetcore3.1",
    "dotnet6",
    "dotnet8",
    "dotnet10",
    "nodejs4.3-edge",
    "go1.x",
    "ruby2.5",
    "ruby2.7",
    "ruby3.2",
    "ruby3.3",
    "ruby3.4",
    "ruby4.0",
    "provided",
    "provided.al2",
    "provided.al2023",
    "custom",
];

fn enum_member(field: &str, value: &str, allowed: &[&str]) -> Result<String, ApiError> {
    if allowed.contains(&value) {
        return Ok(value.to_owned());
    }
    Err(ApiError::InvalidParameter(format!(
        "1 validation error detected: Value '{}' at '{field}' failed to satisfy constraint: \
         Member must satisfy enum value set: [{}]",
        value.chars().take(100).collect::<String>(),
        allowed.join(", ")
    )))
}

fn runtimes(value: Option<&[String]>) -> Result<Vec<String>, ApiError> {
    let value = value.unwrap_or_default();
    if value.len() > 15 {
        return Err(ApiError::InvalidParameter(
            "1 validation error detected: Value at 'compatibleRuntimes' failed to satisfy \
             constraint: Member must have length less than or equal to 15"
                .into(),
        ));
    }
    value
        .iter()
        .map(|r| enum_member("compatibleRuntimes", r, MODEL_RUNTIMES))
        .collect()
}

fn architectures(value: Option<&[String]>) -> Result<Vec<String>, ApiError> {
    let value = value.unwrap_or_default();
    if value.len() > 2 {
        return Err(ApiError::InvalidParameter(
            "1 validation error detected: Value at 'compatibleArchitectures' failed to satisfy \
             constraint: Member must have length less than or equal to 2"
                .into(),
        ));
    }
    value
        .iter()
        .map(|a| enum_member("compatibleArchitectures", a, &["x86_64", "arm64"]))
        .collect()
}

fn license(value: Option<&str>) -> Result<Option<String>, ApiError> {
    match value {
        Some(l) if l.chars().count() > 512 => Err(ApiError::InvalidParameter(
            "1 validation error detected: Value at 'licenseInfo' failed to satisfy constraint: \
             Member must have length less than or equal to 512"
                .into(),
        )),
        other => Ok(other.map(str::to_owned)),
    }
}

/// `MaxItems`: 1 to 50.
fn max_items(value: Option<&str>) -> Result<u32, ApiError> {
    validate::max_items(value, PAGE_SIZE, PAGE_SIZE)
}

/// A policy principal: an account id, `*`, or `arn:aws:iam::ACCOUNT:root`; answered as an
/// account id or `*`.
pub fn principal(value: &str) -> Result<String, ApiError> {
    if value == "*" || is_account(value) {
        return Ok(value.to_owned());
    }
    if let Some(account) = value
        .strip_prefix("arn:aws:iam::")
        .and_then(|rest| rest.strip_suffix(":root"))
        .filter(|a| is_account(a))
    {
        return Ok(account.to_owned());
    }
    Err(ApiError::InvalidParameter(format!(
        "1 validation error detected: Value '{}' at 'principal' failed to satisfy constraint: \
         Member must satisfy regular expression pattern: \\d{{12}}|\\*|arn:(aws[a-zA-Z-]*):iam::\\d{{12}}:root",
        value.chars().take(100).collect::<String>()
    )))
}

fn statement_id(value: &str) -> Result<String, ApiError> {
    if is_name(value) && value.len() <= 100 {
        Ok(value.to_owned())
    } else {
        Err(ApiError::InvalidParameter(format!(
            "1 validation error detected: Value '{}' at 'statementId' failed to satisfy \
             constraint: Member must satisfy regular expression pattern: ([a-zA-Z0-9-_]+)",
            value.chars().take(100).collect::<String>()
        )))
    }
}

/// Refuses a function whose code and layers unzip to more than [`MAX_UNZIPPED_BYTES`], as
/// Lambda does; sizes as `ember_package::inspect` measures them (the entries' uncompressed
/// sizes).
pub fn check_total_size(code_unzipped: u64, layers: &[FunctionLayer]) -> Result<(), ApiError> {
    let total = layers
        .iter()
        .fold(code_unzipped, |sum, l| sum.saturating_add(l.unzipped_size));
    if total > MAX_UNZIPPED_BYTES {
        return Err(ApiError::InvalidParameter(format!(
            "Function code combined with layers exceeds the maximum allowed size of \
             {MAX_UNZIPPED_BYTES} bytes. The actual size is {total} bytes."
        )));
    }
    Ok(())
}

/// The unzipped size of a function's package, as the package crate measures it.
pub fn unzipped_size(zip: &[u8]) -> Result<u64, ApiError> {
    package::inspect(zip, &PackageLimits::default())
        .map(|info| info.unzipped_bytes)
        .map_err(|e| ApiError::InvalidParameter(e.to_string()))
}

/// FunctionConfiguration's `Layers`: absent when the function has none.
pub fn function_layers(layers: &[FunctionLayer]) -> Option<Vec<Layer>> {
    (!layers.is_empty()).then(|| {
        layers
            .iter()
            .map(|l| Layer {
                arn: l.arn.clone(),
                code_size: l.code_size,
            })
            .collect()
    })
}

// ---- handlers -----------------------------------------------------------------------------------

pub async fn publish(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: PublishLayerVersionRequest = parse_json(&body)?;
    validate::unknown(&req.unknown, "PublishLayerVersion")?;
    let layer = state.own_layer(&caller, &name)?;
    let description = validate::description(req.description.as_deref().unwrap_or_default())?;
    let compatible_runtimes = runtimes(req.compatible_runtimes.as_deref())?;
    let compatible_architectures = architectures(req.compatible_architectures.as_deref())?;
    let license_info = license(req.license_info.as_deref())?;
    let content = req.content.ok_or_else(|| {
        ApiError::InvalidParameter("Content is a required parameter of PublishLayerVersion".into())
    })?;
    validate::unknown(&content.unknown, "PublishLayerVersion's Content")?;
    if content.s3_bucket.is_some()
        || content.s3_key.is_some()
        || content.s3_object_version.is_some()
        || content.s3_object_storage_mode.is_some()
    {
        return Err(ApiError::InvalidParameter(
            "Layer content from S3 (S3Bucket/S3Key) is not supported by Ember; send \
             Content.ZipFile"
                .into(),
        ));
    }
    let b64 = content.zip_file.ok_or_else(|| {
        ApiError::InvalidParameter("Please provide a source for layer content (ZipFile).".into())
    })?;
    let zip = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| ApiError::InvalidParameter("ZipFile is not valid base64".into()))?;
    let info = match package::inspect(&zip, &PackageLimits::default()) {
        Ok(info) => info,
        Err(e) if e.is_too_large() => return Err(ApiError::TooLarge(e.to_string())),
        Err(e) => return Err(ApiError::InvalidParameter(e.to_string())),
    };
    let version = state
        .store
        .publish_layer_version(
            &caller.account_id,
            &layer.name,
            &NewLayerVersion {
                description,
                license_info,
                compatible_runtimes,
                compatible_architectures,
                zip: &zip,
                unzipped_size: info.unzipped_bytes,
            },
        )
        .await?;
    tracing::info!(layer = %version.layer_name, version = version.version, account = %caller.account_id, "layer version published");
    let answer = state.layer_version_response(host(&headers), &version);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

pub async fn get_version(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<LayerVersionResponse>, ApiError> {
    let layer = layer_name(&name, &state.region)?;
    let version = version_number(&version)?;
    let owner = layer.account_id.as_deref().unwrap_or(&caller.account_id);
    let found = state
        .usable(&caller, owner, &layer.name, version)
        .await?
        .ok_or_else(|| state.version_not_found(owner, &layer.name, version))?;
    Ok(Json(state.layer_version_response(host(&headers), &found)))
}

/// `GET /2018-10-31/layers`: GetLayerVersionByArn (`find=LayerVersion&Arn=…`) or ListLayers.
pub async fn list_or_find(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<LayersQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    match q.find.as_deref() {
        Some("LayerVersion") => {
            let arn = q.arn.as_deref().ok_or_else(|| {
                ApiError::InvalidParameter(
                    "Arn is a required parameter of GetLayerVersionByArn".into(),
                )
            })?;
            let (region, owner, name, version) = layer_version_arn(arn)?;
            let found = if region == *state.region {
                state.usable(&caller, &owner, &name, version).await?
            } else {
                None
            };
            let found = found.ok_or_else(|| state.version_not_found(&owner, &name, version))?;
            Ok(Json(state.layer_version_response(host(&headers), &found)).into_response())
        }
        Some(other) => Err(ApiError::InvalidParameter(format!(
            "Unknown find value '{}': GET /2018-10-31/layers answers ListLayers, or \
             GetLayerVersionByArn with find=LayerVersion",
            other.chars().take(40).collect::<String>()
        ))),
        None => Ok(Json(list_layers(&state, &caller, &q).await?).into_response()),
    }
}

async fn list_layers(
    state: &AppState,
    caller: &Caller,
    q: &LayersQuery,
) -> Result<ListLayersResponse, ApiError> {
    let runtime = q
        .compatible_runtime
        .as_deref()
        .map(|r| enum_member("compatibleRuntime", r, MODEL_RUNTIMES))
        .transpose()?;
    let architecture = q
        .compatible_architecture
        .as_deref()
        .map(|a| enum_member("compatibleArchitecture", a, &["x86_64", "arm64"]))
        .transpose()?;
    let max = max_items(q.max_items.as_deref())?;
    let after = q.marker.as_deref().map(decode_marker).transpose()?;
    // One extra tells whether another page follows.
    let page = state
        .store
        .list_layers(
            &caller.account_id,
            runtime.as_deref(),
            architecture.as_deref(),
            after.as_deref(),
            max + 1,
        )
        .await?;
    let (page, next_marker) = paginate(page, max, |l| encode_marker(&l.layer_name));
    Ok(ListLayersResponse {
        layers: page
            .iter()
            .map(|l| LayersListItem {
                layer_name: l.layer_name.clone(),
                layer_arn: state.layer_arn(&l.account_id, &l.layer_name),
                latest_matching_version: state.list_item(l),
            })
            .collect(),
        next_marker,
    })
}

pub async fn list_versions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<LayersQuery>,
) -> Result<Json<ListLayerVersionsResponse>, ApiError> {
    let layer = layer_name(&name, &state.region)?;
    let runtime = q
        .compatible_runtime
        .as_deref()
        .map(|r| enum_member("compatibleRuntime", r, MODEL_RUNTIMES))
        .transpose()?;
    let architecture = q
        .compatible_architecture
        .as_deref()
        .map(|a| enum_member("compatibleArchitecture", a, &["x86_64", "arm64"]))
        .transpose()?;
    let max = max_items(q.max_items.as_deref())?;
    let before = q
        .marker
        .as_deref()
        .map(|m| {
            decode_marker(m)?
                .parse::<u64>()
                .map_err(|_| ApiError::InvalidParameter(format!("Invalid Marker: {m}")))
        })
        .transpose()?;
    // Another account's versions are listed only as far as they are shared with the caller.
    let owner = layer.account_id.as_deref().unwrap_or(&caller.account_id);
    let mut page = state
        .store
        .list_layer_versions(
            owner,
            &layer.name,
            runtime.as_deref(),
            architecture.as_deref(),
            before,
            if owner == caller.account_id {
                max + 1
            } else {
                u32::MAX
            },
        )
        .await?;
    if owner != caller.account_id {
        let mut shared = Vec::new();
        for v in page {
            if state
                .usable(&caller, owner, &v.layer_name, v.version)
                .await?
                .is_some()
            {
                shared.push(v);
            }
        }
        page = shared;
    }
    let (page, next_marker) = paginate(page, max, |l| encode_marker(&l.version.to_string()));
    Ok(Json(ListLayerVersionsResponse {
        layer_versions: page.iter().map(|l| state.list_item(l)).collect(),
        next_marker,
    }))
}

pub async fn delete_version(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let layer = state.own_layer(&caller, &name)?;
    let version = version_number(&version)?;
    state
        .store
        .delete_layer_version(&caller.account_id, &layer.name, version)
        .await?;
    tracing::info!(layer = %layer.name, version, account = %caller.account_id, "layer version deleted");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn add_permission(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, version)): Path<(String, String)>,
    Query(q): Query<RevisionQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: AddLayerVersionPermissionRequest = parse_json(&body)?;
    validate::unknown(&req.unknown, "AddLayerVersionPermission")?;
    let layer = state.own_layer(&caller, &name)?;
    let version = version_number(&version)?;
    let required = |field: Option<String>, name: &str| {
        field.ok_or_else(|| {
            ApiError::InvalidParameter(format!(
                "{name} is a required parameter of AddLayerVersionPermission"
            ))
        })
    };
    let sid = statement_id(&required(req.statement_id, "StatementId")?)?;
    let action = required(req.action, "Action")?;
    if action != GET_LAYER_VERSION {
        return Err(ApiError::InvalidParameter(format!(
            "1 validation error detected: Value '{}' at 'action' failed to satisfy constraint: \
             Member must satisfy regular expression pattern: lambda:GetLayerVersion",
            action.chars().take(40).collect::<String>()
        )));
    }
    let principal = principal(&required(req.principal, "Principal")?)?;
    if req.organization_id.is_some() {
        return Err(ApiError::InvalidParameter(
            "OrganizationId is not supported by Ember (it has no AWS Organizations); grant \
             accounts by id, or every account with Principal '*'"
                .into(),
        ));
    }
    let grant = LayerGrant {
        statement_id: sid,
        action,
        principal,
    };
    let revision_id = state
        .store
        .add_layer_permission(
            &caller.account_id,
            &layer.name,
            version,
            &grant,
            q.revision_id.as_deref(),
        )
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => {
                state.version_not_found(&caller.account_id, &layer.name, version)
            }
            StoreError::Conflict(_) => ApiError::Conflict(format!(
                "The statement id ({}) provided already exists. Please provide a new statement id, or remove the existing statement.",
                grant.statement_id
            )),
            other => other.into(),
        })?;
    let arn = state.layer_version_arn(&caller.account_id, &layer.name, version);
    let statement = statement_json(&grant, &arn).to_string();
    Ok((
        StatusCode::CREATED,
        Json(AddLayerVersionPermissionResponse {
            statement,
            revision_id,
        }),
    )
        .into_response())
}

pub async fn get_policy(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<GetLayerVersionPolicyResponse>, ApiError> {
    let layer = state.own_layer(&caller, &name)?;
    let version = version_number(&version)?;
    let policy = state
        .store
        .layer_policy(&caller.account_id, &layer.name, version)
        .await?
        .ok_or_else(|| state.version_not_found(&caller.account_id, &layer.name, version))?;
    if policy.grants.is_empty() {
        return Err(ApiError::NotFound(
            "No policy is associated with the given resource.".into(),
        ));
    }
    let arn = state.layer_version_arn(&caller.account_id, &layer.name, version);
    let document = serde_json::json!({
        "Version": "2012-10-17",
        "Id": "default",
        "Statement": policy.grants.iter().map(|g| statement_json(g, &arn)).collect::<Vec<_>>(),
    });
    Ok(Json(GetLayerVersionPolicyResponse {
        policy: document.to_string(),
        revision_id: policy.revision_id,
    }))
}

pub async fn remove_permission(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, version, sid)): Path<(String, String, String)>,
    Query(q): Query<RevisionQuery>,
) -> Result<StatusCode, ApiError> {
    let layer = state.own_layer(&caller, &name)?;
    let version = version_number(&version)?;
    let sid = statement_id(&sid)?;
    state
        .store
        .remove_layer_permission(
            &caller.account_id,
            &layer.name,
            version,
            &sid,
            q.revision_id.as_deref(),
        )
        .await
        .map_err(|e| match e {
            StoreError::NotFound(what) if what.starts_with("statement") => {
                ApiError::NotFound(format!("Statement {sid} is not found in resource policy."))
            }
            StoreError::NotFound(_) => {
                state.version_not_found(&caller.account_id, &layer.name, version)
            }
            other => other.into(),
        })?;
    Ok(StatusCode::NO_CONTENT)
}

/// One statement of a layer version's policy, as Lambda writes it.
fn statement_json(grant: &LayerGrant, arn: &str) -> serde_json::Value {
    let principal = if grant.principal == "*" {
        serde_json::json!("*")
    } else {
        serde_json::json!({ "AWS": format!("arn:aws:iam::{}:root", grant.principal) })
    };
    serde_json::json!({
        "Sid": grant.statement_id,
        "Effect": "Allow",
        "Principal": principal,
        "Action": grant.action,
        "Resource": arn,
    })
}

fn host(headers: &HeaderMap) -> &str {
    headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
}

impl AppState {
    /// A layer named in the path of an operation only its owner may do: another account's ARN
    /// names nothing the caller can change.
    fn own_layer(&self, caller: &Caller, name: &str) -> Result<LayerRef, ApiError> {
        let layer = layer_name(name, &self.region)?;
        match layer.account_id.as_deref() {
            Some(owner) if owner != caller.account_id => Err(ApiError::NotFound(format!(
                "Layer {} does not exist.",
                self.layer_arn(owner, &layer.name)
            ))),
            _ => Ok(layer),
        }
    }

    async fn usable(
        &self,
        caller: &Caller,
        owner: &str,
        name: &str,
        version: u64,
    ) -> Result<Option<LayerVersion>, ApiError> {
        Ok(self
            .store
            .usable_layer_version(&caller.account_id, owner, name, version)
            .await?)
    }

    fn version_not_found(&self, owner: &str, name: &str, version: u64) -> ApiError {
        ApiError::NotFound(format!(
            "Layer version {} does not exist.",
            self.layer_version_arn(owner, name, version)
        ))
    }

    pub(crate) fn layer_arn(&self, account_id: &str, name: &str) -> String {
        format!("arn:aws:lambda:{}:{account_id}:layer:{name}", self.region)
    }

    pub(crate) fn layer_version_arn(&self, account_id: &str, name: &str, version: u64) -> String {
        format!("{}:{version}", self.layer_arn(account_id, name))
    }

    fn layer_version_response(&self, host: &str, l: &LayerVersion) -> LayerVersionResponse {
        let sha = hex::decode(&l.code_sha256).unwrap_or_default();
        LayerVersionResponse {
            content: LayerVersionContentOutput {
                location: self.blob_url(host, &l.account_id, &l.code_sha256),
                code_sha256: base64::engine::general_purpose::STANDARD.encode(sha),
                code_size: l.code_size,
            },
            layer_arn: self.layer_arn(&l.account_id, &l.layer_name),
            layer_version_arn: self.layer_version_arn(&l.account_id, &l.layer_name, l.version),
            description: l.description.clone(),
            created_date: aws_time(l.created),
            version: l.version,
            compatible_runtimes: l.compatible_runtimes.clone(),
            compatible_architectures: l.compatible_architectures.clone(),
            license_info: l.license_info.clone(),
        }
    }

    fn list_item(&self, l: &LayerVersion) -> LayerVersionsListItem {
        LayerVersionsListItem {
            layer_version_arn: self.layer_version_arn(&l.account_id, &l.layer_name, l.version),
            version: l.version,
            description: l.description.clone(),
            created_date: aws_time(l.created),
            compatible_runtimes: l.compatible_runtimes.clone(),
            compatible_architectures: l.compatible_architectures.clone(),
            license_info: l.license_info.clone(),
        }
    }

    /// Resolves a function's `Layers` for `caller`: each ARN a layer version the caller may use
    /// (its own, or shared with it), at most [`MAX_LAYERS`], no layer twice. A version the
    /// function already uses (`held`) stays usable even once deleted, as in Lambda.
    pub(crate) async fn resolve_layers(
        &self,
        caller: &Caller,
        arns: &[String],
        held: &[FunctionLayer],
    ) -> Result<Vec<FunctionLayer>, ApiError> {
        if arns.len() > MAX_LAYERS {
            return Err(ApiError::InvalidParameter(format!(
                "Cannot reference more than {MAX_LAYERS} layers."
            )));
        }
        let mut out: Vec<FunctionLayer> = Vec::with_capacity(arns.len());
        let mut seen = std::collections::HashSet::new();
        for arn in arns {
            let (region, owner, name, version) = layer_version_arn(arn)?;
            if !seen.insert((owner.clone(), name.clone())) {
                return Err(ApiError::InvalidParameter(format!(
                    "Two different versions of the same layer are not allowed to be referenced \
                     in the same function. {} is referenced more than once.",
                    self.layer_arn(&owner, &name)
                )));
            }
            let canonical = self.layer_version_arn(&owner, &name, version);
            if let Some(kept) = held
                .iter()
                .find(|h| h.arn == canonical && region == *self.region)
            {
                out.push(kept.clone());
                continue;
            }
            let found = if region == *self.region {
                self.usable(caller, &owner, &name, version).await?
            } else {
                None
            };
            let layer = found.ok_or_else(|| {
                ApiError::InvalidParameter(format!(
                    "Layer version {arn} does not exist. Or the caller is not allowed to use it."
                ))
            })?;
            out.push(FunctionLayer {
                arn: canonical,
                sha256: layer.code_sha256,
                code_size: layer.code_size,
                unzipped_size: layer.unzipped_size,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
