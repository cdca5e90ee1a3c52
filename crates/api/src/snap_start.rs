//! SnapStart's API side: the `SnapStart` member of CreateFunction and
//! UpdateFunctionConfiguration, the `SnapStartResponse` every FunctionConfiguration carries, and
//! Lambda's rules for where SnapStart may apply. Pure functions, checked before anything is
//! written, so a refused request changes nothing.
//!
//! Ember supports SnapStart on its Python runtimes: each runs the unmodified `awslambdaric`,
//! which implements the snap-start protocol (`AWS_LAMBDA_INITIALIZATION_TYPE=snap-start`,
//! `restore/next`) in every Python version Ember provisions; Lambda itself limits it to
//! python3.12 and newer (and Java and .NET, which Ember does not run). `provided*` has no
//! runtime client to take the snapshot at, and Lambda refuses Node.js too.

use ember_store::{Function, FunctionSpec, SnapStartApplyOn};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;

/// The ephemeral storage, in MB, above which Lambda refuses SnapStart.
pub const MAX_EPHEMERAL_MB: u32 = 512;

/// `SnapStart`, as a request gives it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct SnapStart {
    pub apply_on: Option<String>,
}

/// `SnapStartResponse`: the function's setting and, for the version shown, whether it starts
/// from a snapshot (`On` for a published version whose `ApplyOn` is `PublishedVersions`, `Off`
/// otherwise and always on `$LATEST`, as Lambda shows it).
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct SnapStartResponse {
    pub apply_on: String,
    pub optimization_status: String,
}

impl SnapStartResponse {
    /// What a FunctionConfiguration of `function` (a version or `$LATEST`) shows.
    pub fn of(function: &Function) -> Self {
        let status = if function.snap_start_applies() {
            "On"
        } else {
            "Off"
        };
        Self {
            apply_on: function.spec.snap_start.as_str().to_owned(),
            optimization_status: status.to_owned(),
        }
    }
}

/// The `ApplyOn` a request's `SnapStart` asks for. An absent `ApplyOn` is `None`, Lambda's
/// default; a value outside the model's enum is refused as Lambda's request validation refuses
/// it (`ValidationException`).
pub fn apply_on(snap_start: &SnapStart) -> Result<SnapStartApplyOn, ApiError> {
    let Some(text) = snap_start.apply_on.as_deref() else {
        return Ok(SnapStartApplyOn::None);
    };
    SnapStartApplyOn::parse(text).ok_or_else(|| {
        let allowed: Vec<&str> = SnapStartApplyOn::ALL.iter().map(|v| v.as_str()).collect();
        ApiError::Validation(format!(
            "1 validation error detected: Value '{}' at 'snapStart.applyOn' failed to satisfy \
             constraint: Member must satisfy enum value set: [{}]",
            text.chars().take(100).collect::<String>(),
            allowed.join(", ")
        ))
    })
}

/// Whether Ember can take a SnapStart snapshot of functions on `runtime`: its Python runtimes.
pub fn supports(runtime: &str) -> bool {
    runtime.starts_with("python3.")
}

/// Lambda's rules for a function's settings taken together (as created, or as an update leaves
/// them): SnapStart on `PublishedVersions` needs a runtime that supports it and at most 512 MB
/// of ephemeral storage. `SnapStart: None` is allowed with anything.
pub fn check(spec: &FunctionSpec) -> Result<(), ApiError> {
    if spec.snap_start != SnapStartApplyOn::PublishedVersions {
        return Ok(());
    }
    let runtime = spec
        .runtime
        .as_deref()
        .unwrap_or("A function without a runtime");
    if !supports(runtime) {
        return Err(ApiError::InvalidParameter(format!(
            "{runtime} is not supported for SnapStart enabled functions. Ember supports \
             SnapStart on its Python runtimes (python3.N); set SnapStart ApplyOn to None, or \
             change the runtime."
        )));
    }
    if spec.ephemeral_mb > MAX_EPHEMERAL_MB {
        return Err(ApiError::InvalidParameter(format!(
            "Ephemeral storage greater than {MAX_EPHEMERAL_MB} MB is not supported for SnapStart \
             enabled functions (EphemeralStorage Size {} MB).",
            spec.ephemeral_mb
        )));
    }
    Ok(())
}

/// Lambda's answer to provisioned concurrency on a version SnapStart applies to, directly or
/// through an alias.
pub const PROVISIONED: &str = "Provisioned Concurrency is not supported for SnapStart enabled \
     function versions; publish the version with SnapStart ApplyOn None to provision it.";

/// Refuses provisioned concurrency for `version` (a published version, or the one an alias
/// routes to) when SnapStart applies to it: Lambda does not combine the two on one version.
pub fn check_provisioned(version: &Function) -> Result<(), ApiError> {
    if version.snap_start_applies() {
        return Err(ApiError::InvalidParameter(PROVISIONED.into()));
    }
    Ok(())
}

impl AppState {
    /// Refuses to point `alias`, which has provisioned concurrency, at `version` when SnapStart
    /// applies to that version ([`check_provisioned`]): the alias's environments would follow it
    /// there. Nothing to check for an alias without a config, or a version that does not exist
    /// (the alias's update refuses that itself).
    pub(crate) async fn check_provisioned_snap_start(
        &self,
        caller: &Caller,
        function: &str,
        alias: &str,
        version: &str,
    ) -> Result<(), ApiError> {
        let account = &caller.account_id;
        if self
            .store
            .provisioned_concurrency(account, function, alias)
            .await?
            .is_none()
        {
            return Ok(());
        }
        match self
            .store
            .function_version(account, function, version)
            .await?
        {
            Some(target) => check_provisioned(&target),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
