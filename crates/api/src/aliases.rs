//! Aliases: CreateAlias, GetAlias, UpdateAlias, DeleteAlias and ListAliases, with Lambda's
//! rules on names and on `RoutingConfig.AdditionalVersionWeights` ([`check_alias`]), and the
//! weighted choice of the version an invocation of an alias runs ([`route`]).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ember_store::{Alias, AliasPatch, AliasSpec, StoreError, LATEST};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::functions::{parse_json, reject_qualifier, ListQuery};
use crate::paging::{decode_marker, encode_marker, paginate};
use crate::shapes::Unknown;
use crate::validate::{self, FunctionRef};
use crate::versions::{is_version_number, page_size};
use crate::AppState;

/// How many times UpdateAlias retries when another update of the alias raced it.
const UPDATE_ATTEMPTS: usize = 3;

/// `RoutingConfig`: another version and the share of invocations it runs.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct RoutingConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additional_version_weights: Option<BTreeMap<String, f64>>,
}

/// CreateAlias's body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateAliasRequest {
    pub name: Option<String>,
    pub function_version: Option<String>,
    pub description: Option<String>,
    pub routing_config: Option<RoutingConfig>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// UpdateAlias's body: what is absent stays as it is.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateAliasRequest {
    pub function_version: Option<String>,
    pub description: Option<String>,
    pub routing_config: Option<RoutingConfig>,
    pub revision_id: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// `AliasConfiguration`, the answer of every alias operation but DeleteAlias.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct AliasConfiguration {
    pub alias_arn: String,
    pub name: String,
    pub function_version: String,
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_config: Option<RoutingConfig>,
    pub revision_id: String,
}

/// ListAliases's answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListAliasesResponse {
    pub aliases: Vec<AliasConfiguration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

/// `POST /2015-03-31/functions/{name}/aliases` (201).
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(function): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CreateAliasRequest = parse_json(&body)?;
    let target = unqualified(&state, &caller, &function)?;
    validate::unknown(&req.unknown, "CreateAlias")?;
    let name = req
        .name
        .ok_or_else(|| ApiError::InvalidParameter("Name is required".into()))?;
    alias_name(&name)?;
    let function_version = req
        .function_version
        .ok_or_else(|| ApiError::InvalidParameter("FunctionVersion is required".into()))?;
    let spec = AliasSpec {
        function_version,
        description: validate::description(req.description.as_deref().unwrap_or_default())?,
        routing: weights(req.routing_config)?,
    };
    check_alias(&spec.function_version, &spec.routing)?;
    let alias = state
        .store
        .create_alias(&caller.account_id, &target.name, &name, &spec)
        .await
        .map_err(|e| state.alias_error(e, &caller, &target.name, &name))?;
    tracing::info!(function = %target.name, alias = %name, version = %alias.function_version, "alias created");
    Ok((StatusCode::CREATED, Json(state.alias_configuration(&alias))).into_response())
}

/// `GET /2015-03-31/functions/{name}/aliases/{alias}`.
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((function, name)): Path<(String, String)>,
) -> Result<Json<AliasConfiguration>, ApiError> {
    let target = unqualified(&state, &caller, &function)?;
    alias_name(&name)?;
    let alias = state
        .load_alias(&caller, &target.name, &name)
        .await?
        .ok_or_else(|| {
            ApiError::alias_not_found_on_get(&state.alias_arn(&caller, &target.name, &name))
        })?;
    Ok(Json(state.alias_configuration(&alias)))
}

/// `PUT /2015-03-31/functions/{name}/aliases/{alias}`.
pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((function, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<AliasConfiguration>, ApiError> {
    let req: UpdateAliasRequest = parse_json(&body)?;
    let target = unqualified(&state, &caller, &function)?;
    alias_name(&name)?;
    validate::unknown(&req.unknown, "UpdateAlias")?;
    let patch = AliasPatch {
        function_version: req.function_version,
        description: req
            .description
            .as_deref()
            .map(validate::description)
            .transpose()?,
        routing: req.routing_config.map(|r| weights(Some(r))).transpose()?,
    };
    if let Some(version) = &patch.function_version {
        version_pattern("functionVersion", version)?;
    }
    // The rules hold for the alias as the patch leaves it: check them against the alias read,
    // and write only if it is still that revision (retrying if another update came between).
    let mut attempt = 0;
    let alias = loop {
        attempt += 1;
        let current = state
            .load_alias(&caller, &target.name, &name)
            .await?
            .ok_or_else(|| {
                ApiError::alias_not_found(&state.alias_arn(&caller, &target.name, &name))
            })?;
        if req
            .revision_id
            .as_deref()
            .is_some_and(|r| r != current.revision_id)
        {
            return Err(ApiError::PreconditionFailed);
        }
        let primary = patch
            .function_version
            .as_deref()
            .unwrap_or(&current.function_version);
        check_alias(primary, patch.routing.as_ref().unwrap_or(&current.routing))?;
        if primary != current.function_version {
            state
                .check_provisioned_snap_start(&caller, &target.name, &name, primary)
                .await?;
        }
        match state
            .store
            .update_alias(
                &caller.account_id,
                &target.name,
                &name,
                Some(&current.revision_id),
                patch.clone(),
            )
            .await
        {
            Err(StoreError::RevisionMismatch { .. })
                if req.revision_id.is_none() && attempt < UPDATE_ATTEMPTS =>
            {
                continue
            }
            result => {
                break result.map_err(|e| state.alias_error(e, &caller, &target.name, &name))?
            }
        }
    };
    tracing::info!(function = %target.name, alias = %name, version = %alias.function_version, "alias updated");
    // Its provisioned concurrency follows it to the version it names now.
    crate::provisioned::refresh(&state, &caller.account_id, &target.name).await?;
    Ok(Json(state.alias_configuration(&alias)))
}

/// `DELETE /2015-03-31/functions/{name}/aliases/{alias}` (204, also for an alias that does not
/// exist, as Lambda answers; a function that does not exist is a 404).
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((function, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let target = unqualified(&state, &caller, &function)?;
    alias_name(&name)?;
    match state
        .store
        .delete_alias(&caller.account_id, &target.name, &name)
        .await
    {
        Ok(()) => {
            tracing::info!(function = %target.name, alias = %name, "alias deleted");
            // Its provisioned concurrency goes with it.
            crate::provisioned::forget(&state, &caller.account_id, &target.name, &name).await?;
        }
        Err(StoreError::NotFound(what)) if what.starts_with("alias ") => {}
        Err(e) => return Err(state.alias_error(e, &caller, &target.name, &name)),
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /2015-03-31/functions/{name}/aliases`, optionally only the aliases of one
/// `FunctionVersion`, paged by `Marker` and `MaxItems`.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(function): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<ListAliasesResponse>, ApiError> {
    let target = unqualified(&state, &caller, &function)?;
    if let Some(version) = q.function_version.as_deref() {
        version_pattern("functionVersion", version)?;
    }
    let max_items = page_size(q.max_items.as_deref())?;
    let after = q.marker.as_deref().map(decode_marker).transpose()?;
    // The function must exist: an unknown one is a 404, not an empty list.
    state.function(&caller, &target.name, None).await?;
    let page = state
        .store
        .list_aliases(
            &caller.account_id,
            &target.name,
            q.function_version.as_deref(),
            after.as_deref(),
            max_items + 1,
        )
        .await?;
    let (page, next_marker) = paginate(page, max_items, |a| encode_marker(&a.name));
    Ok(Json(ListAliasesResponse {
        aliases: page.iter().map(|a| state.alias_configuration(a)).collect(),
        next_marker,
    }))
}

/// The version an invocation of `alias` runs, given `draw`, a number drawn uniformly from
/// [0, 1): an additional version with weight `w` when `draw` falls in its share, else the
/// alias's own version. Pure: the caller brings the randomness.
pub(crate) fn route(alias: &Alias, draw: f64) -> &str {
    let mut below = 0.0;
    for (version, weight) in &alias.routing {
        below += weight;
        if draw < below {
            return version;
        }
    }
    &alias.function_version
}

/// Lambda's rules for what an alias points at: `primary` is `$LATEST` or a version number; at
/// most one additional version, a published one (a number), not `primary`, with a weight in
/// [0.0, 1.0]; and an alias that routes to two versions cannot point at `$LATEST`.
pub(crate) fn check_alias(primary: &str, routing: &BTreeMap<String, f64>) -> Result<(), ApiError> {
    version_pattern("functionVersion", primary)?;
    if routing.len() > 1 {
        return Err(ApiError::InvalidParameter(format!(
            "RoutingConfig.AdditionalVersionWeights can route to at most 1 additional version, \
             not {}",
            routing.len()
        )));
    }
    for (version, weight) in routing {
        if !is_version_number(version) || version.len() > 1024 {
            return Err(ApiError::InvalidParameter(format!(
                "1 validation error detected: Value '{version}' at \
                 'routingConfig.additionalVersionWeights' failed to satisfy constraint: Map keys \
                 must satisfy constraint: [Member must satisfy regular expression pattern: [0-9]+]"
            )));
        }
        if !(0.0..=1.0).contains(weight) {
            return Err(ApiError::InvalidParameter(format!(
                "1 validation error detected: Value '{weight}' at \
                 'routingConfig.additionalVersionWeights' failed to satisfy constraint: Map \
                 value must satisfy constraint: [Member must have value less than or equal to \
                 1.0, Member must have value greater than or equal to 0.0]"
            )));
        }
        if version == primary {
            return Err(ApiError::InvalidParameter(format!(
                "The additional version {version} must be different from the alias's \
                 FunctionVersion"
            )));
        }
        if primary == LATEST {
            return Err(ApiError::InvalidParameter(
                "$LATEST is not supported for an alias pointing to more than 1 version".into(),
            ));
        }
    }
    Ok(())
}

/// An alias name: 1 to 128 of `[a-zA-Z0-9-_]`, and not only digits (that is a version).
pub(crate) fn alias_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > 128 {
        return Err(ApiError::InvalidParameter(format!(
            "1 validation error detected: Value '{}' at 'name' failed to satisfy constraint: \
             Member must have length between 1 and 128",
            name.chars().take(140).collect::<String>()
        )));
    }
    let valid = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid || is_version_number(name) {
        return Err(ApiError::InvalidParameter(format!(
            "1 validation error detected: Value '{name}' at 'name' failed to satisfy constraint: \
             Member must satisfy regular expression pattern: (?!^[0-9]+$)([a-zA-Z0-9-_]+)"
        )));
    }
    Ok(())
}

/// A `FunctionVersion`: `$LATEST` or a version number.
fn version_pattern(field: &str, version: &str) -> Result<(), ApiError> {
    if version == LATEST || (is_version_number(version) && version.len() <= 1024) {
        return Ok(());
    }
    Err(ApiError::InvalidParameter(format!(
        "1 validation error detected: Value '{}' at '{field}' failed to satisfy constraint: \
         Member must satisfy regular expression pattern: (\\$LATEST|[0-9]+)",
        version.chars().take(100).collect::<String>()
    )))
}

/// The weights of a `RoutingConfig` (none when absent).
fn weights(routing: Option<RoutingConfig>) -> Result<BTreeMap<String, f64>, ApiError> {
    Ok(routing
        .and_then(|r| r.additional_version_weights)
        .unwrap_or_default())
}

/// Resolves the function an alias operation names, which must carry no qualifier.
fn unqualified(state: &AppState, caller: &Caller, function: &str) -> Result<FunctionRef, ApiError> {
    let target = state.resolve(caller, function, None)?;
    reject_qualifier(&target)?;
    Ok(target)
}

impl AppState {
    /// Loads an alias of the caller's function (`None` if it has none of that name): Lambda's
    /// 404 for an unknown function.
    pub(crate) async fn load_alias(
        &self,
        caller: &Caller,
        function: &str,
        name: &str,
    ) -> Result<Option<Alias>, ApiError> {
        if self
            .store
            .function(&caller.account_id, function)
            .await?
            .is_none()
        {
            return Err(ApiError::function_not_found(
                &self.arn(&caller.account_id, function),
            ));
        }
        Ok(self.store.alias(&caller.account_id, function, name).await?)
    }

    /// The ARN of an alias of the caller's function.
    fn alias_arn(&self, caller: &Caller, function: &str, name: &str) -> String {
        format!("{}:{name}", self.arn(&caller.account_id, function))
    }

    /// An alias's configuration as the API answers it.
    pub(crate) fn alias_configuration(&self, alias: &Alias) -> AliasConfiguration {
        AliasConfiguration {
            alias_arn: format!(
                "{}:{}",
                self.arn(&alias.account_id, &alias.function_name),
                alias.name
            ),
            name: alias.name.clone(),
            function_version: alias.function_version.clone(),
            description: alias.description.clone(),
            routing_config: (!alias.routing.is_empty()).then(|| RoutingConfig {
                additional_version_weights: Some(alias.routing.clone()),
            }),
            revision_id: alias.revision_id.clone(),
        }
    }

    /// Lambda's answer to the store's refusal of an alias write.
    fn alias_error(&self, e: StoreError, caller: &Caller, function: &str, name: &str) -> ApiError {
        let arn = self.arn(&caller.account_id, function);
        match e {
            // "function NAME" or "function NAME:VERSION": the function or a version it lacks.
            StoreError::NotFound(what) if what.starts_with("function ") => {
                let qualified = what.trim_start_matches("function ");
                ApiError::function_not_found(&self.arn(&caller.account_id, qualified))
            }
            StoreError::NotFound(_) => ApiError::alias_not_found(&format!("{arn}:{name}")),
            StoreError::Conflict(_) => ApiError::alias_exists(&format!("{arn}:{name}")),
            other => other.into(),
        }
    }
}

#[cfg(test)]
mod tests;
