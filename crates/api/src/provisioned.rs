//! Provisioned concurrency: `PutProvisionedConcurrencyConfig` (202),
//! `GetProvisionedConcurrencyConfig`, `DeleteProvisionedConcurrencyConfig` (204) and
//! `ListProvisionedConcurrencyConfigs` (`?List=ALL`), all on
//! `/2019-09-30/functions/{FunctionName}/provisioned-concurrency`, in botocore's shapes.
//!
//! The request (how many environments, when set) is the store's; what is ready is the
//! executor's ([`ember_executor::Executor::provisioned`]). Lambda's rules: only a published
//! version or an alias may have provisioned concurrency (not `$LATEST`); a function's
//! qualifiers together stay within its reserved concurrency when it has one; otherwise the
//! account's provisioned concurrency outside reserved functions leaves at least the account's
//! minimum unreserved concurrency (as PutFunctionConcurrency does, [`limit`]).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ember_executor::{ProvisionedStatus, ProvisionedView};
use ember_store::{Function, ProvisionedConfig};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::functions::{aws_time, parse_json};
use crate::paging::{decode_marker, encode_marker, paginate};
use crate::validate;
use crate::AppState;

/// Configs listed per page at most (botocore's `MaxProvisionedConcurrencyConfigListItems`).
const PAGE_SIZE: u32 = 50;

/// Lambda's answer to provisioned concurrency on `$LATEST`.
const UNPUBLISHED: &str =
    "Provisioned Concurrency Configs cannot be applied to unpublished function versions.";

/// Lambda's answer to provisioned concurrency on an alias that splits its traffic.
const WEIGHTED: &str = "Alias with weights can not be used with Provisioned Concurrency";

/// Lambda's answer when a qualifier has no config.
const NO_CONFIG: &str = "No Provisioned Concurrency Config found for this function";

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ProvisionedQuery {
    pub qualifier: Option<String>,
    /// `ALL`: the request is ListProvisionedConcurrencyConfigs.
    pub list: Option<String>,
    pub marker: Option<String>,
    pub max_items: Option<String>,
}

/// PutProvisionedConcurrencyConfig's body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutProvisionedConcurrencyRequest {
    pub provisioned_concurrent_executions: Option<i64>,
    /// Members the model does not have.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// Put's and Get's answer (`PutProvisionedConcurrencyConfigResponse`,
/// `GetProvisionedConcurrencyConfigResponse`).
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ProvisionedConcurrencyConfig {
    pub requested_provisioned_concurrent_executions: u32,
    pub available_provisioned_concurrent_executions: u32,
    pub allocated_provisioned_concurrent_executions: u32,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    pub last_modified: String,
}

/// One of List's `ProvisionedConcurrencyConfigs` (`ProvisionedConcurrencyConfigListItem`).
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ProvisionedConcurrencyConfigListItem {
    pub function_arn: String,
    #[serde(flatten)]
    pub config: ProvisionedConcurrencyConfig,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ListProvisionedConcurrencyConfigsResponse {
    pub provisioned_concurrency_configs: Vec<ProvisionedConcurrencyConfigListItem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

impl ProvisionedConcurrencyConfig {
    /// The answer for a stored config and what the executor has ready (`None`: nothing yet).
    fn new(config: &ProvisionedConfig, view: Option<ProvisionedView>) -> Self {
        let (available, allocated, status, status_reason) = match view {
            Some(view) => {
                let (status, reason) = match view.status {
                    ProvisionedStatus::InProgress => ("IN_PROGRESS", None),
                    ProvisionedStatus::Ready => ("READY", None),
                    ProvisionedStatus::Failed(reason) => ("FAILED", Some(reason)),
                };
                (view.available, view.allocated, status, reason)
            }
            None => (0, 0, "IN_PROGRESS", None),
        };
        Self {
            requested_provisioned_concurrent_executions: config.requested,
            available_provisioned_concurrent_executions: available,
            allocated_provisioned_concurrent_executions: allocated,
            status,
            status_reason,
            last_modified: aws_time(config.last_modified),
        }
    }
}

/// What the account's limits are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The account's concurrency (`--account-concurrency`).
    pub account_concurrency: u32,
    /// Reserved concurrency of all the account's functions.
    pub reserved_total: u32,
}

/// Whether `requested` environments for `qualifier` of `function` fit the limits, given the
/// account's other configs (`configs`; the target's own, if any, is replaced). The reserved
/// function's rule, else the account's: see the module docs.
pub(crate) fn limit(
    requested: u32,
    function: &Function,
    qualifier: &str,
    configs: &[ProvisionedConfig],
    limits: Limits,
) -> Result<(), ApiError> {
    let others = configs
        .iter()
        .filter(|c| !(c.function_name == function.name && c.qualifier == qualifier));
    if let Some(reserved) = function.reserved_concurrency {
        let same: u64 = others
            .filter(|c| c.function_name == function.name)
            .map(|c| u64::from(c.requested))
            .sum();
        if same + u64::from(requested) > u64::from(reserved) {
            return Err(ApiError::InvalidParameter(
                "Requested Provisioned Concurrency should not be greater than the \
                 reservedConcurrentExecution for function"
                    .into(),
            ));
        }
        return Ok(());
    }
    let unreserved_min = (limits.account_concurrency / 10).min(100);
    let unreserved = u64::from(
        limits
            .account_concurrency
            .saturating_sub(limits.reserved_total),
    );
    let provisioned: u64 = others
        .filter(|c| c.function_reserved.is_none())
        .map(|c| u64::from(c.requested))
        .sum();
    if provisioned + u64::from(requested) + u64::from(unreserved_min) > unreserved {
        return Err(ApiError::InvalidParameter(format!(
            "Specified ProvisionedConcurrentExecutions for function decreases account's \
             UnreservedConcurrentExecution below its minimum value of [{unreserved_min}]."
        )));
    }
    Ok(())
}

/// The qualifier a provisioned config names: required, never `$LATEST`.
fn qualifier(
    state: &AppState,
    caller: &Caller,
    name: &str,
    q: &ProvisionedQuery,
) -> Result<(String, String), ApiError> {
    let target = state.resolve(caller, name, q.qualifier.as_deref())?;
    let qualifier = target.qualifier.ok_or_else(|| {
        ApiError::InvalidParameter(
            "1 validation error detected: Value null at 'qualifier' failed to satisfy \
             constraint: Member must not be null"
                .into(),
        )
    })?;
    crate::versions::validate_qualifier(&qualifier)?;
    if qualifier == "$LATEST" {
        return Err(ApiError::InvalidParameter(UNPUBLISHED.into()));
    }
    Ok((target.name, qualifier))
}

/// `PUT …/provisioned-concurrency?Qualifier=…`.
pub async fn put(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<ProvisionedQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: PutProvisionedConcurrencyRequest = parse_json(&body)?;
    if let Some(member) = req.unknown.keys().next() {
        return Err(ApiError::InvalidParameter(format!(
            "Unknown parameter in input: \"{member}\", must be one of: \
             ProvisionedConcurrentExecutions"
        )));
    }
    let requested = req.provisioned_concurrent_executions.ok_or_else(|| {
        ApiError::InvalidParameter("ProvisionedConcurrentExecutions is required".into())
    })?;
    let requested = validate::range(
        "provisionedConcurrentExecutions",
        requested,
        (1, i64::from(state.account_concurrency)),
    )?;
    let (name, qualifier) = qualifier(&state, &caller, &name, &q)?;
    let executor = state.executor()?;
    let function = state.function(&caller, &name, Some(&qualifier)).await?;
    // An alias of $LATEST is no published version either.
    if function.version == ember_store::LATEST {
        return Err(ApiError::InvalidParameter(UNPUBLISHED.into()));
    }
    if !crate::versions::is_version_number(&qualifier) {
        let alias = state
            .store
            .alias(&caller.account_id, &function.name, &qualifier)
            .await?;
        if alias.is_some_and(|a| !a.routing.is_empty()) {
            return Err(ApiError::InvalidParameter(WEIGHTED.into()));
        }
    }
    // Lambda does not combine provisioned concurrency with SnapStart on one version.
    crate::snap_start::check_provisioned(&function)?;
    let configs = state
        .store
        .provisioned_concurrency_of_account(&caller.account_id)
        .await?;
    let limits = Limits {
        account_concurrency: state.account_concurrency,
        reserved_total: state.reserved_by_others(&caller, &function.name).await?
            + function.reserved_concurrency.unwrap_or(0),
    };
    limit(requested, &function, &qualifier, &configs, limits)?;
    let config = state
        .store
        .put_provisioned_concurrency(&caller.account_id, &function.name, &qualifier, requested)
        .await?;
    if state.store.is_shared() {
        // The servers' shares are set by their syncs, this one's at once.
        crate::provisioned_hosts::wake(&state);
    } else {
        executor.provision(&function, &qualifier, requested);
    }
    tracing::info!(function = %function.name, qualifier, requested, "provisioned concurrency set");
    let view = crate::provisioned_hosts::view(
        &state,
        &caller.account_id,
        &function.name,
        &qualifier,
        requested,
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ProvisionedConcurrencyConfig::new(&config, view)),
    )
        .into_response())
}

/// `GET …/provisioned-concurrency`: Get with `?Qualifier=`, List with `?List=ALL`.
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<ProvisionedQuery>,
) -> Result<Response, ApiError> {
    match q.list.as_deref() {
        Some("ALL") => return list(&state, &caller, &name, &q).await,
        Some(other) => {
            return Err(ApiError::InvalidParameter(format!(
                "List must be ALL, not '{other}'"
            )))
        }
        None => {}
    }
    let (name, qualifier) = qualifier(&state, &caller, &name, &q)?;
    let function = state.function(&caller, &name, Some(&qualifier)).await?;
    let config = state
        .store
        .provisioned_concurrency(&caller.account_id, &function.name, &qualifier)
        .await?
        .ok_or_else(|| ApiError::ProvisionedConcurrencyConfigNotFound(NO_CONFIG.into()))?;
    let view = crate::provisioned_hosts::view(
        &state,
        &caller.account_id,
        &function.name,
        &qualifier,
        config.requested,
    )
    .await?;
    Ok(Json(ProvisionedConcurrencyConfig::new(&config, view)).into_response())
}

async fn list(
    state: &AppState,
    caller: &Caller,
    name: &str,
    q: &ProvisionedQuery,
) -> Result<Response, ApiError> {
    let target = state.resolve(caller, name, None)?;
    if target.qualifier.is_some() {
        return Err(ApiError::InvalidParameter(
            "ListProvisionedConcurrencyConfigs takes a function name without a qualifier".into(),
        ));
    }
    let max_items = validate::max_items(q.max_items.as_deref(), PAGE_SIZE, PAGE_SIZE)?;
    let after = q.marker.as_deref().map(decode_marker).transpose()?;
    let function = state.function(caller, &target.name, None).await?;
    let configs = state
        .store
        .provisioned_concurrency_of_function(&caller.account_id, &function.name)
        .await?;
    let page: Vec<&ProvisionedConfig> = configs
        .iter()
        .filter(|c| after.as_deref().is_none_or(|a| c.qualifier.as_str() > a))
        .collect();
    let (page, next_marker) = paginate(page, max_items, |c| encode_marker(&c.qualifier));
    let arn = state.arn(&caller.account_id, &function.name);
    let mut items = Vec::with_capacity(page.len());
    for c in page {
        let view = crate::provisioned_hosts::view(
            state,
            &caller.account_id,
            &function.name,
            &c.qualifier,
            c.requested,
        )
        .await?;
        items.push(ProvisionedConcurrencyConfigListItem {
            function_arn: format!("{arn}:{}", c.qualifier),
            config: ProvisionedConcurrencyConfig::new(c, view),
        });
    }
    Ok(Json(ListProvisionedConcurrencyConfigsResponse {
        provisioned_concurrency_configs: items,
        next_marker,
    })
    .into_response())
}

/// `DELETE …/provisioned-concurrency?Qualifier=…`.
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<ProvisionedQuery>,
) -> Result<StatusCode, ApiError> {
    let (name, qualifier) = qualifier(&state, &caller, &name, &q)?;
    let function = state.function(&caller, &name, Some(&qualifier)).await?;
    let deleted = state
        .store
        .delete_provisioned_concurrency(&caller.account_id, &function.name, &qualifier)
        .await?;
    if !deleted {
        return Err(ApiError::NotFound(NO_CONFIG.into()));
    }
    if let Some(executor) = &state.executor {
        executor.unprovision(&caller.account_id, &function.name, &qualifier);
    }
    crate::provisioned_hosts::wake(&state);
    tracing::info!(function = %function.name, qualifier, "provisioned concurrency deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Sets up the executor's provisioned concurrency from the store, when the server starts.
/// Returns how many configs were restored; a config whose qualifier no longer resolves is
/// skipped (and logged).
pub async fn restore(state: &AppState) -> Result<usize, ApiError> {
    let executor = state.executor()?;
    if state.store.is_shared() {
        // Shared by several servers: `provisioned_hosts::run` gives this one its share.
        return Ok(state.store.all_provisioned_concurrency().await?.len());
    }
    let mut restored = 0;
    for config in state.store.all_provisioned_concurrency().await? {
        let caller = Caller {
            account_id: config.account_id.clone(),
            is_admin: false,
            session: None,
        };
        match state
            .function(&caller, &config.function_name, Some(&config.qualifier))
            .await
        {
            Ok(function) => {
                executor.provision(&function, &config.qualifier, config.requested);
                restored += 1;
            }
            Err(err) => tracing::warn!(
                function = %config.function_name,
                qualifier = %config.qualifier,
                error = %err,
                "provisioned concurrency of a qualifier that no longer resolves; skipped"
            ),
        }
    }
    Ok(restored)
}

/// Points a function's provisioned concurrency at the versions its qualifiers resolve to now:
/// for the handlers that change what a qualifier names (an alias updated or deleted, a version
/// deleted). A qualifier whose version changed gets new environments (the old ones go); one
/// that no longer resolves loses them (its config stays, answered `IN_PROGRESS` with none
/// available, as the store still has it).
pub async fn refresh(
    state: &AppState,
    account_id: &str,
    function_name: &str,
) -> Result<(), ApiError> {
    let Some(executor) = &state.executor else {
        return Ok(());
    };
    if state.store.is_shared() {
        crate::provisioned_hosts::wake(state);
        return Ok(());
    }
    let caller = Caller {
        account_id: account_id.to_owned(),
        is_admin: false,
        session: None,
    };
    let configs = state
        .store
        .provisioned_concurrency_of_function(account_id, function_name)
        .await?;
    for config in configs {
        match state
            .function(&caller, function_name, Some(&config.qualifier))
            .await
        {
            Ok(function) => executor.provision(&function, &config.qualifier, config.requested),
            Err(_) => {
                executor.unprovision(account_id, function_name, &config.qualifier);
            }
        }
    }
    Ok(())
}

/// Drops a qualifier's provisioned concurrency (its config and environments): for the handlers
/// that delete what a qualifier names (an alias, a version).
pub(crate) async fn forget(
    state: &AppState,
    account_id: &str,
    function_name: &str,
    qualifier: &str,
) -> Result<(), ApiError> {
    state
        .store
        .delete_provisioned_concurrency(account_id, function_name, qualifier)
        .await?;
    if let Some(executor) = &state.executor {
        executor.unprovision(account_id, function_name, qualifier);
    }
    crate::provisioned_hosts::wake(state);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn at() -> time::OffsetDateTime {
        time::macros::datetime!(2026-12-06 04:30:01.250 UTC)
    }

    fn config(
        function: &str,
        qualifier: &str,
        requested: u32,
        reserved: Option<u32>,
    ) -> ProvisionedConfig {
        ProvisionedConfig {
            account_id: "123456789012".into(),
            function_name: function.into(),
            qualifier: qualifier.into(),
            requested,
            last_modified: at(),
            function_reserved: reserved,
        }
    }

    fn function(name: &str, reserved: Option<u32>) -> Function {
        Function {
            account_id: "123456789012".into(),
            name: name.into(),
            spec: crate::test_fixtures::spec(),
            code_sha256: "ab".repeat(32),
            code_size: 1,
            revision_id: "r".into(),
            last_modified: at(),
            reserved_concurrency: reserved,
            egress: None,
            version: "1".into(),
        }
    }

    #[test]
    fn shapes_are_botocores() {
        let ready = ProvisionedConcurrencyConfig::new(
            &config("f", "1", 4, None),
            Some(ProvisionedView {
                requested: 4,
                available: 4,
                allocated: 4,
                status: ProvisionedStatus::Ready,
            }),
        );
        assert_eq!(
            serde_json::to_value(&ready).unwrap(),
            json!({
                "RequestedProvisionedConcurrentExecutions": 4,
                "AvailableProvisionedConcurrentExecutions": 4,
                "AllocatedProvisionedConcurrentExecutions": 4,
                "Status": "READY",
                "LastModified": "2026-12-06T04:30:01.250+0000"
            })
        );
        let failed = ProvisionedConcurrencyConfig::new(
            &config("f", "live", 2, None),
            Some(ProvisionedView {
                requested: 2,
                available: 1,
                allocated: 1,
                status: ProvisionedStatus::Failed("the runtime's init failed: boom".into()),
            }),
        );
        let item = ProvisionedConcurrencyConfigListItem {
            function_arn: "arn:aws:lambda:us-east-1:123456789012:function:f:live".into(),
            config: failed,
        };
        let list = ListProvisionedConcurrencyConfigsResponse {
            provisioned_concurrency_configs: vec![item],
            next_marker: Some("bGl2ZQ".into()),
        };
        assert_eq!(
            serde_json::to_value(&list).unwrap(),
            json!({
                "ProvisionedConcurrencyConfigs": [{
                    "FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:f:live",
                    "RequestedProvisionedConcurrentExecutions": 2,
                    "AvailableProvisionedConcurrentExecutions": 1,
                    "AllocatedProvisionedConcurrentExecutions": 1,
                    "Status": "FAILED",
                    "StatusReason": "the runtime's init failed: boom",
                    "LastModified": "2026-12-06T04:30:01.250+0000"
                }],
                "NextMarker": "bGl2ZQ"
            })
        );
        // Nothing ready yet (a server just started): in progress, none available.
        let fresh = ProvisionedConcurrencyConfig::new(&config("f", "1", 3, None), None);
        assert_eq!(fresh.status, "IN_PROGRESS");
        assert_eq!(fresh.available_provisioned_concurrent_executions, 0);
    }

    #[test]
    fn limits_follow_lambdas_rules() {
        let limits = |reserved_total| Limits {
            account_concurrency: 1000,
            reserved_total,
        };
        let others = [
            config("g", "1", 300, None),
            config("r", "1", 50, Some(60)),
            config("f", "2", 5, None),
        ];
        // (function's reserved, qualifier, requested, account's reserved total, allowed)
        let table = [
            // Unreserved: 1000 - 100 minimum - 300 (g) - 5 (f:2) = 595 left.
            (None, "1", 595, 0, true),
            (None, "1", 596, 0, false),
            // Replacing f:2's own config does not count it twice.
            (None, "2", 600, 0, true),
            (None, "2", 601, 0, false),
            // Reserved elsewhere shrinks the unreserved pool (r's 60).
            (None, "1", 535, 60, true),
            (None, "1", 536, 60, false),
            // Reserved: the function's qualifiers together stay within it (f:2 has 5).
            (Some(10), "1", 5, 70, true),
            (Some(10), "1", 6, 70, false),
            (Some(10), "2", 10, 70, true),
        ];
        for (reserved, qualifier, requested, reserved_total, allowed) in table {
            let result = limit(
                requested,
                &function("f", reserved),
                qualifier,
                &others,
                limits(reserved_total),
            );
            assert_eq!(
                result.is_ok(),
                allowed,
                "reserved {reserved:?}, f:{qualifier} = {requested}: {result:?}"
            );
            if let Err(err) = result {
                assert_eq!(err.error_type(), "InvalidParameterValueException");
            }
        }
    }

    #[test]
    fn markers_round_trip() {
        for qualifier in ["1", "live", "a-b_c"] {
            assert_eq!(decode_marker(&encode_marker(qualifier)).unwrap(), qualifier);
        }
        assert!(decode_marker("%%%").is_err());
    }
}
