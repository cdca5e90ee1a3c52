//! `GetAccountSettings` (`GET /2016-08-19/account-settings`): the caller's account's limits, as
//! Ember enforces them, and its usage, from the store.

use axum::extract::State;
use axum::{Extension, Json};
use ember_store::package::PackageLimits;
use ember_store::AccountUsage;
use serde::Serialize;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct GetAccountSettingsResponse {
    pub account_limit: AccountLimit,
    pub account_usage: AccountUsageShape,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct AccountLimit {
    pub total_code_size: u64,
    pub code_size_unzipped: u64,
    pub code_size_zipped: u64,
    pub concurrent_executions: u64,
    pub unreserved_concurrent_executions: u64,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct AccountUsageShape {
    pub total_code_size: u64,
    pub function_count: u64,
}

/// The settings of an account that uses `usage`, on a server giving each account
/// `concurrency` concurrent executions, with `code_storage_available` bytes free for code.
pub fn settings(
    usage: &AccountUsage,
    concurrency: u32,
    code_storage_available: u64,
    packages: &PackageLimits,
) -> GetAccountSettingsResponse {
    GetAccountSettingsResponse {
        account_limit: AccountLimit {
            // Ember has no code storage quota: an account may store code until the data dir's
            // file system is full, so its limit is what it stores plus what is free.
            total_code_size: usage.total_code_size.saturating_add(code_storage_available),
            code_size_unzipped: packages.max_unzipped_bytes,
            code_size_zipped: packages.max_zipped_bytes,
            concurrent_executions: u64::from(concurrency),
            unreserved_concurrent_executions: u64::from(concurrency)
                .saturating_sub(usage.reserved_concurrency),
        },
        account_usage: AccountUsageShape {
            total_code_size: usage.total_code_size,
            function_count: usage.function_count,
        },
    }
}

pub async fn get_account_settings(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<GetAccountSettingsResponse>, ApiError> {
    let usage = state.store.account_usage(&caller.account_id).await?;
    let available = state.store.code_storage_available().await?;
    Ok(Json(settings(
        &usage,
        state.account_concurrency,
        available,
        &PackageLimits::default(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_has_the_models_shape_and_ember_s_numbers() {
        let usage = AccountUsage {
            function_count: 3,
            total_code_size: 1_000,
            reserved_concurrency: 150,
        };
        let answer = settings(&usage, 1000, 5_000, &PackageLimits::default());
        assert_eq!(
            serde_json::to_value(&answer).unwrap(),
            serde_json::json!({
                "AccountLimit": {
                    "TotalCodeSize": 6_000,
                    "CodeSizeUnzipped": 262_144_000,
                    "CodeSizeZipped": 52_428_800,
                    "ConcurrentExecutions": 1000,
                    "UnreservedConcurrentExecutions": 850,
                },
                "AccountUsage": {"TotalCodeSize": 1_000, "FunctionCount": 3},
            })
        );
    }
}
