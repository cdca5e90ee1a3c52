//! Published versions: PublishVersion, ListVersionsByFunction, and the resolution of a
//! qualifier (`$LATEST`, a version number, an alias) to the version it names.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use ember_store::{Function, Publish, LATEST};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::functions::{parse_json, reject_qualifier, ListQuery};
use crate::paging::{decode_marker, encode_marker, paginate};
use crate::shapes::{FunctionConfiguration, Unknown};
use crate::validate::{self, FunctionRef};
use crate::AppState;

/// Versions listed per page at most, as in Lambda.
const PAGE_SIZE: u32 = 50;

/// PublishVersion's body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PublishVersionRequest {
    pub code_sha256: Option<String>,
    pub description: Option<String>,
    pub revision_id: Option<String>,
    pub publish_to: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// ListVersionsByFunction's answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListVersionsResponse {
    pub versions: Vec<FunctionConfiguration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

/// `POST /2015-03-31/functions/{name}/versions`: publishes `$LATEST` (201), or answers the
/// newest version if nothing changed since it was published.
pub async fn publish(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: PublishVersionRequest = parse_json(&body)?;
    let target = state.resolve(&caller, &name, None)?;
    reject_qualifier(&target)?;
    validate::unknown(&req.unknown, "PublishVersion")?;
    if req.publish_to.is_some() {
        return Err(ApiError::InvalidParameter(
            "PublishTo is not supported by Ember (no capacity providers); omit it".into(),
        ));
    }
    let description = req
        .description
        .as_deref()
        .map(validate::description)
        .transpose()?;
    let code_sha256 = req.code_sha256.as_deref().map(sha256_hex);
    let version = state
        .publish(
            &caller,
            &target.name,
            Publish {
                code_sha256: code_sha256.as_deref(),
                revision_id: req.revision_id.as_deref(),
                description: description.as_deref(),
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(state.configuration(&version))).into_response())
}

/// `GET /2015-03-31/functions/{name}/versions`: `$LATEST`, then the published versions in
/// ascending order, paged by `Marker` and `MaxItems` (at most 50).
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<ListVersionsResponse>, ApiError> {
    let target = state.resolve(&caller, &name, None)?;
    reject_qualifier(&target)?;
    let max_items = page_size(q.max_items.as_deref())?;
    let latest = state.function(&caller, &target.name, None).await?;
    let account = &caller.account_id;
    // One extra entry tells whether another page follows.
    let page = match q.marker.as_deref().map(decode_marker).transpose()? {
        None => {
            let mut page = vec![latest];
            page.extend(
                state
                    .store
                    .list_versions(account, &target.name, None, max_items)
                    .await?,
            );
            page
        }
        Some(marker) => {
            let after = if marker == LATEST {
                0
            } else {
                marker
                    .parse::<u64>()
                    .map_err(|_| ApiError::InvalidParameter(format!("Invalid Marker: {marker}")))?
            };
            state
                .store
                .list_versions(account, &target.name, Some(after), max_items + 1)
                .await?
        }
    };
    let (page, next_marker) = paginate(page, max_items, |f| encode_marker(&f.version));
    Ok(Json(ListVersionsResponse {
        versions: page.iter().map(|f| state.listed_configuration(f)).collect(),
        next_marker,
    }))
}

/// `MaxItems` of a listing: 1 to 10,000, answered in pages of at most [`PAGE_SIZE`].
pub(crate) fn page_size(max_items: Option<&str>) -> Result<u32, ApiError> {
    validate::max_items(max_items, 10_000, PAGE_SIZE)
}

/// `CodeSha256` as the store names packages: the hex of the base64 the API shows. Text that is
/// not base64 of a sha256 is passed as it is: it matches no package, and the error shows it.
fn sha256_hex(base64: &str) -> String {
    match base64::engine::general_purpose::STANDARD.decode(base64) {
        Ok(bytes) if bytes.len() == 32 => hex::encode(bytes),
        _ => base64.to_owned(),
    }
}

impl AppState {
    /// Publishes a version of the caller's function `name`, answering Lambda's errors.
    pub(crate) async fn publish(
        &self,
        caller: &Caller,
        name: &str,
        publish: Publish<'_>,
    ) -> Result<Function, ApiError> {
        let version = self
            .store
            .publish_version(&caller.account_id, name, publish)
            .await
            .map_err(|e| match e {
                ember_store::StoreError::NotFound(_) => {
                    ApiError::function_not_found(&self.arn(&caller.account_id, name))
                }
                other => other.into(),
            })?;
        tracing::info!(function = %name, version = %version.version, "version published");
        Ok(version)
    }

    /// Publishes `function` (just created or updated, `$LATEST`) when the request said
    /// `Publish: true`, answering the version; else answers `function` as it is. The publish is
    /// conditioned on the revision just written, so it publishes exactly that.
    pub(crate) async fn publish_if(
        &self,
        caller: &Caller,
        publish: Option<bool>,
        function: Function,
    ) -> Result<Function, ApiError> {
        if publish != Some(true) {
            return Ok(function);
        }
        self.publish(
            caller,
            &function.name,
            Publish {
                revision_id: Some(&function.revision_id),
                ..Publish::default()
            },
        )
        .await
    }

    /// DeleteFunction with a qualifier: deletes one published version (never an alias, and
    /// `$LATEST` only with the whole function).
    pub(crate) async fn delete_version(
        &self,
        caller: &Caller,
        name: &str,
        version: &str,
    ) -> Result<StatusCode, ApiError> {
        validate_qualifier(version)?;
        if !is_version_number(version) {
            return Err(ApiError::InvalidParameter(format!(
                "DeleteFunction deletes a function or one of its published versions; '{version}'                  is not a version number (delete an alias with DeleteAlias)"
            )));
        }
        let arn = self.arn(&caller.account_id, name);
        let not_found = || ApiError::function_not_found(&format!("{arn}:{version}"));
        let number = version.parse::<u64>().map_err(|_| not_found())?;
        self.store
            .delete_version(&caller.account_id, name, number)
            .await
            .map_err(|e| match e {
                ember_store::StoreError::NotFound(_) => not_found(),
                other => other.into(),
            })?;
        tracing::info!(function = %name, version, account = %caller.account_id, "version deleted");
        // Its provisioned concurrency goes with it.
        crate::provisioned::forget(self, &caller.account_id, name, version).await?;
        if let Some(executor) = &self.executor {
            executor.version_deleted(&caller.account_id, name, version);
        }
        Ok(StatusCode::NO_CONTENT)
    }

    /// ListFunctions with `FunctionVersion=ALL`: every function with all its versions.
    pub(crate) async fn list_all_versions(
        &self,
        caller: &Caller,
        all: &str,
        marker: Option<&str>,
        max_items: u32,
    ) -> Result<Json<crate::shapes::ListFunctionsResponse>, ApiError> {
        if all != "ALL" {
            return Err(ApiError::InvalidParameter(format!(
                "1 validation error detected: Value '{}' at 'functionVersion' failed to satisfy \
                 constraint: Member must satisfy enum value set: [ALL]",
                all.chars().take(100).collect::<String>()
            )));
        }
        let after = marker.map(decode_marker).transpose()?;
        let after = match &after {
            None => None,
            Some(text) => Some(text.split_once(':').ok_or_else(|| {
                ApiError::InvalidParameter(format!("Invalid Marker: {}", marker.unwrap_or("")))
            })?),
        };
        let page = self
            .store
            .list_function_versions(&caller.account_id, after, max_items + 1)
            .await?;
        let (page, next_marker) = paginate(page, max_items, |f| {
            encode_marker(&format!("{}:{}", f.name, f.version))
        });
        Ok(Json(crate::shapes::ListFunctionsResponse {
            functions: page.iter().map(|f| self.listed_configuration(f)).collect(),
            next_marker,
        }))
    }

    /// A version's configuration as GetFunction and GetFunctionConfiguration answer it: the
    /// ARN carries the qualifier the request named (a version, an alias, `$LATEST`).
    pub(crate) fn configuration_as(
        &self,
        f: &Function,
        target: &FunctionRef,
    ) -> FunctionConfiguration {
        let mut config = self.configuration(f);
        if let Some(qualifier) = &target.qualifier {
            config.function_arn = format!("{}:{qualifier}", self.arn(&f.account_id, &f.name));
        }
        config
    }

    /// A version's configuration as a listing of versions shows it: `$LATEST` too is qualified.
    pub(crate) fn listed_configuration(&self, f: &Function) -> FunctionConfiguration {
        let mut config = self.configuration(f);
        if f.version == LATEST {
            config.function_arn = format!("{}:{LATEST}", config.function_arn);
        }
        config
    }

    /// Loads the version `target` names: `$LATEST` (or no qualifier), a published version, or
    /// the version an alias points at (its primary version: the weighted choice is Invoke's,
    /// [`AppState::invoked`]). Anything else, or an unknown function, is Lambda's 404 naming
    /// the qualified ARN.
    pub(crate) async fn qualified(
        &self,
        caller: &Caller,
        target: &FunctionRef,
    ) -> Result<Function, ApiError> {
        self.load_version(caller, target, None).await
    }

    /// The version an invocation of `target` runs: as [`AppState::qualified`], except that an
    /// alias with routing weights picks one of its two versions by `draw`, a number drawn
    /// uniformly from [0, 1) ([`crate::aliases::route`]).
    pub(crate) async fn invoked(
        &self,
        caller: &Caller,
        target: &FunctionRef,
        draw: f64,
    ) -> Result<Function, ApiError> {
        self.load_version(caller, target, Some(draw)).await
    }

    async fn load_version(
        &self,
        caller: &Caller,
        target: &FunctionRef,
        draw: Option<f64>,
    ) -> Result<Function, ApiError> {
        let account = &caller.account_id;
        let arn = self.arn(account, &target.name);
        let Some(qualifier) = target.qualifier.as_deref() else {
            return self
                .store
                .function(account, &target.name)
                .await?
                .ok_or_else(|| ApiError::function_not_found(&arn));
        };
        validate_qualifier(qualifier)?;
        let not_found = || ApiError::function_not_found(&format!("{arn}:{qualifier}"));
        if qualifier == LATEST || is_version_number(qualifier) {
            return self
                .store
                .function_version(account, &target.name, qualifier)
                .await?
                .ok_or_else(not_found);
        }
        let alias = self
            .store
            .alias(account, &target.name, qualifier)
            .await?
            .ok_or_else(not_found)?;
        let version = match draw {
            Some(draw) => crate::aliases::route(&alias, draw),
            None => &alias.function_version,
        };
        self.store
            .function_version(account, &target.name, version)
            .await?
            .ok_or_else(not_found)
    }
}

/// Whether `text` is a version number as Lambda writes one (`[0-9]+`).
pub(crate) fn is_version_number(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// Checks a `Qualifier` against botocore's constraints (1 to 128 of `[a-zA-Z0-9$_-]`).
pub(crate) fn validate_qualifier(q: &str) -> Result<(), ApiError> {
    if q.is_empty()
        || q.len() > 128
        || !q
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'$' || b == b'_' || b == b'-')
    {
        return Err(ApiError::InvalidParameter(format!(
            "1 validation error detected: Value '{q}' at 'qualifier' failed to satisfy \
             constraint: Member must satisfy regular expression pattern: (|[a-zA-Z0-9$_-]+)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn publish_requests_parse_lambdas_members_and_collect_others() {
        let req: PublishVersionRequest = serde_json::from_value(json!({
            "CodeSha256": "abc", "Description": "d", "RevisionId": "r"
        }))
        .unwrap();
        assert_eq!(
            (
                req.code_sha256.as_deref(),
                req.description.as_deref(),
                req.revision_id.as_deref()
            ),
            (Some("abc"), Some("d"), Some("r"))
        );
        assert!(req.unknown.is_empty());
        let req: PublishVersionRequest =
            serde_json::from_value(json!({"Descripton": "typo"})).unwrap();
        assert!(validate::unknown(&req.unknown, "PublishVersion").is_err());
    }

    #[test]
    fn a_version_listing_has_lambdas_shape() {
        let empty = ListVersionsResponse {
            versions: vec![],
            next_marker: Some("m".into()),
        };
        assert_eq!(
            serde_json::to_value(&empty).unwrap(),
            json!({"Versions": [], "NextMarker": "m"})
        );
        let last = ListVersionsResponse {
            versions: vec![],
            next_marker: None,
        };
        assert_eq!(
            serde_json::to_value(&last).unwrap(),
            json!({"Versions": []})
        );
    }

    #[test]
    fn code_sha256_is_compared_as_the_store_names_packages() {
        let sha = [7u8; 32];
        let b64 = base64::engine::general_purpose::STANDARD.encode(sha);
        assert_eq!(sha256_hex(&b64), hex::encode(sha));
        // Not a sha256 in base64: kept as given, so it matches nothing and the error shows it.
        assert_eq!(sha256_hex("not base64!"), "not base64!");
        assert_eq!(sha256_hex("AAAA"), "AAAA");
    }

    #[test]
    fn qualifiers_and_page_sizes_follow_the_model() {
        for ok in ["$LATEST", "1", "live", "a-b_c"] {
            assert!(validate_qualifier(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a:b", "a.b", &"x".repeat(129)] {
            assert!(validate_qualifier(bad).is_err(), "{bad}");
        }
        assert!(is_version_number("12") && !is_version_number("") && !is_version_number("1a"));
        assert_eq!(page_size(None).unwrap(), 50);
        assert_eq!(page_size(Some("3")).unwrap(), 3);
        assert_eq!(page_size(Some("10000")).unwrap(), 50);
        for bad in ["0", "10001", "x"] {
            assert!(page_size(Some(bad)).is_err(), "{bad}");
        }
    }
}
