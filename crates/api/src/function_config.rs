//! A function's settings that Ember answers honestly without a feature behind them:
//!
//! - code signing: `GetFunctionCodeSigningConfig` answers that none is set (botocore's shape:
//!   an empty `CodeSigningConfigArn`); `PutFunctionCodeSigningConfig`,
//!   `DeleteFunctionCodeSigningConfig` and the `CodeSigningConfig` operations are refused, as
//!   Ember verifies no signatures;
//! - runtime management: `Get`/`PutRuntimeManagementConfig`, `Auto` only (a function runs on the
//!   runtime the host has now; there are no runtime versions to pin);
//! - recursive loops: `Get`/`PutFunctionRecursionConfig`, kept per function (`Terminate`, Lambda's
//!   default, unless `Allow` was put). Ember's functions have no network beyond their own
//!   loopback, so they cannot invoke anything, and no loop can form whatever the setting.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use ember_store::RecursiveLoop;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::functions::{parse_json, QualifierQuery};
use crate::shapes::Unknown;
use crate::validate;
use crate::AppState;

const NO_CODE_SIGNING: &str = "Ember does not verify code signatures, so a function cannot \
     have a code signing configuration (GetFunctionCodeSigningConfig answers that none is set)";

// ---- code signing ---------------------------------------------------------------------------

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionCodeSigningConfig {
    pub code_signing_config_arn: String,
    pub function_name: String,
}

pub async fn get_function_code_signing_config(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<FunctionCodeSigningConfig>, ApiError> {
    let function = state.function(&caller, &name, None).await?;
    Ok(Json(FunctionCodeSigningConfig {
        code_signing_config_arn: String::new(),
        function_name: function.name,
    }))
}

pub async fn put_function_code_signing_config() -> ApiError {
    ApiError::Unsupported {
        operation: "PutFunctionCodeSigningConfig",
        reason: NO_CODE_SIGNING,
    }
}

pub async fn delete_function_code_signing_config() -> ApiError {
    ApiError::Unsupported {
        operation: "DeleteFunctionCodeSigningConfig",
        reason: NO_CODE_SIGNING,
    }
}

const NO_CODE_SIGNING_CONFIGS: &str = "Ember does not verify code signatures and keeps no code \
     signing configurations";

pub async fn create_code_signing_config() -> ApiError {
    ApiError::Unsupported {
        operation: "CreateCodeSigningConfig",
        reason: NO_CODE_SIGNING_CONFIGS,
    }
}

pub async fn list_code_signing_configs() -> ApiError {
    ApiError::Unsupported {
        operation: "ListCodeSigningConfigs",
        reason: NO_CODE_SIGNING_CONFIGS,
    }
}

pub async fn get_code_signing_config() -> ApiError {
    ApiError::Unsupported {
        operation: "GetCodeSigningConfig",
        reason: NO_CODE_SIGNING_CONFIGS,
    }
}

pub async fn update_code_signing_config() -> ApiError {
    ApiError::Unsupported {
        operation: "UpdateCodeSigningConfig",
        reason: NO_CODE_SIGNING_CONFIGS,
    }
}

pub async fn delete_code_signing_config() -> ApiError {
    ApiError::Unsupported {
        operation: "DeleteCodeSigningConfig",
        reason: NO_CODE_SIGNING_CONFIGS,
    }
}

pub async fn list_functions_by_code_signing_config() -> ApiError {
    ApiError::Unsupported {
        operation: "ListFunctionsByCodeSigningConfig",
        reason: NO_CODE_SIGNING_CONFIGS,
    }
}

// ---- runtime management ---------------------------------------------------------------------

const UPDATE_RUNTIME_ON: [&str; 3] = ["Auto", "Manual", "FunctionUpdate"];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutRuntimeManagementConfigRequest {
    pub update_runtime_on: Option<String>,
    pub runtime_version_arn: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// Get's and Put's answer. `RuntimeVersionArn` is set only in `Manual` mode, which Ember does
/// not have, so it is never sent.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct RuntimeManagementConfig {
    pub update_runtime_on: &'static str,
    pub function_arn: String,
}

/// Checks a PutRuntimeManagementConfig request: `Auto`, and no runtime version.
pub fn runtime_management(req: &PutRuntimeManagementConfigRequest) -> Result<(), ApiError> {
    validate::unknown(&req.unknown, "PutRuntimeManagementConfig")?;
    let mode = req
        .update_runtime_on
        .as_deref()
        .ok_or_else(|| ApiError::InvalidParameter("UpdateRuntimeOn is required".into()))?;
    validate::enum_value("updateRuntimeOn", mode, &UPDATE_RUNTIME_ON)?;
    if mode != "Auto" {
        return Err(ApiError::InvalidParameter(format!(
            "UpdateRuntimeOn {mode} is not supported by Ember: a function always runs on the \
             runtime the host has now (Auto), there are no runtime versions to pin"
        )));
    }
    if req.runtime_version_arn.is_some() {
        return Err(ApiError::InvalidParameter(
            "RuntimeVersionArn can be given only with UpdateRuntimeOn Manual, which Ember does \
             not support"
                .into(),
        ));
    }
    Ok(())
}

pub async fn get_runtime_management_config(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<Json<RuntimeManagementConfig>, ApiError> {
    let function_arn = state
        .addressed_arn(&caller, &name, q.qualifier.as_deref())
        .await?;
    Ok(Json(RuntimeManagementConfig {
        update_runtime_on: "Auto",
        function_arn,
    }))
}

pub async fn put_runtime_management_config(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
    body: Bytes,
) -> Result<Json<RuntimeManagementConfig>, ApiError> {
    let req: PutRuntimeManagementConfigRequest = parse_json(&body)?;
    runtime_management(&req)?;
    let function_arn = state
        .addressed_arn(&caller, &name, q.qualifier.as_deref())
        .await?;
    Ok(Json(RuntimeManagementConfig {
        update_runtime_on: "Auto",
        function_arn,
    }))
}

// ---- recursion ------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutFunctionRecursionConfigRequest {
    pub recursive_loop: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionRecursionConfig {
    pub recursive_loop: &'static str,
}

/// Checks a PutFunctionRecursionConfig request and gives the setting it asks for.
pub fn recursion(req: &PutFunctionRecursionConfigRequest) -> Result<RecursiveLoop, ApiError> {
    validate::unknown(&req.unknown, "PutFunctionRecursionConfig")?;
    let value = req
        .recursive_loop
        .as_deref()
        .ok_or_else(|| ApiError::InvalidParameter("RecursiveLoop is required".into()))?;
    validate::enum_value("recursiveLoop", value, &["Allow", "Terminate"])?;
    Ok(if value == "Allow" {
        RecursiveLoop::Allow
    } else {
        RecursiveLoop::Terminate
    })
}

pub async fn get_function_recursion_config(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<FunctionRecursionConfig>, ApiError> {
    let name = state.unqualified(&caller, &name)?;
    let setting = state
        .store
        .recursive_loop(&caller.account_id, &name)
        .await
        .map_err(|e| state.not_found_as_function(e, &caller, &name))?;
    Ok(Json(FunctionRecursionConfig {
        recursive_loop: setting.as_str(),
    }))
}

pub async fn put_function_recursion_config(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<FunctionRecursionConfig>, ApiError> {
    let req: PutFunctionRecursionConfigRequest = parse_json(&body)?;
    let setting = recursion(&req)?;
    let name = state.unqualified(&caller, &name)?;
    state
        .store
        .set_recursive_loop(&caller.account_id, &name, setting)
        .await
        .map_err(|e| state.not_found_as_function(e, &caller, &name))?;
    Ok(Json(FunctionRecursionConfig {
        recursive_loop: setting.as_str(),
    }))
}

impl AppState {
    /// The ARN of the caller's function as the request addresses it (with its qualifier, if
    /// any), once the function is known to exist.
    async fn addressed_arn(
        &self,
        caller: &Caller,
        name: &str,
        qualifier: Option<&str>,
    ) -> Result<String, ApiError> {
        let target = self.resolve(caller, name, qualifier)?;
        let function = self.function(caller, name, qualifier).await?;
        let arn = self.arn(&caller.account_id, &function.name);
        Ok(match target.qualifier {
            Some(q) => format!("{arn}:{q}"),
            None => arn,
        })
    }

    /// The name of the caller's function an operation on the unqualified function names.
    fn unqualified(&self, caller: &Caller, name: &str) -> Result<String, ApiError> {
        let target = self.resolve(caller, name, None)?;
        match target.qualifier {
            None => Ok(target.name),
            Some(q) => Err(ApiError::InvalidParameter(format!(
                "This operation applies to the function, not to a version or alias: \
                 qualifier '{q}' cannot be used here"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused<T: std::fmt::Debug>(result: Result<T, ApiError>) -> String {
        match result {
            Ok(_) => String::new(),
            Err(ApiError::InvalidParameter(m)) => m,
            Err(other) => panic!("not an InvalidParameterValueException: {other:?}"),
        }
    }

    #[test]
    fn code_signing_answers_none_in_botocores_shape() {
        let answer = FunctionCodeSigningConfig {
            code_signing_config_arn: String::new(),
            function_name: "f".into(),
        };
        assert_eq!(
            serde_json::to_string(&answer).unwrap(),
            r#"{"CodeSigningConfigArn":"","FunctionName":"f"}"#
        );
        let refusal = ApiError::Unsupported {
            operation: "PutFunctionCodeSigningConfig",
            reason: NO_CODE_SIGNING,
        };
        assert_eq!(refusal.error_type(), "UnknownOperationException");
        assert!(refusal
            .to_string()
            .starts_with("PutFunctionCodeSigningConfig is not supported by Ember: "));
    }

    #[test]
    fn runtime_management_takes_auto_only() {
        let req = |body: serde_json::Value| -> PutRuntimeManagementConfigRequest {
            serde_json::from_value(body).unwrap()
        };
        for (body, refusal) in [
            (serde_json::json!({"UpdateRuntimeOn": "Auto"}), ""),
            (
                serde_json::json!({"UpdateRuntimeOn": "Manual", "RuntimeVersionArn": "arn:aws:lambda:us-east-1::runtime:abc"}),
                "UpdateRuntimeOn Manual is not supported by Ember",
            ),
            (
                serde_json::json!({"UpdateRuntimeOn": "FunctionUpdate"}),
                "UpdateRuntimeOn FunctionUpdate is not supported",
            ),
            (
                serde_json::json!({"UpdateRuntimeOn": "auto"}),
                "1 validation error detected: Value 'auto' at 'updateRuntimeOn'",
            ),
            (serde_json::json!({}), "UpdateRuntimeOn is required"),
            (
                serde_json::json!({"UpdateRuntimeOn": "Auto", "RuntimeVersionArn": "arn:aws:lambda:us-east-1::runtime:abc"}),
                "RuntimeVersionArn can be given only with UpdateRuntimeOn Manual",
            ),
            (
                serde_json::json!({"UpdateRuntimeOn": "Auto", "Qualifier": "1"}),
                "Qualifier is not a parameter of PutRuntimeManagementConfig",
            ),
        ] {
            let message = refused(runtime_management(&req(body.clone())));
            assert!(message.starts_with(refusal), "{body}: {message:?}");
            assert_eq!(
                message.is_empty(),
                refusal.is_empty(),
                "{body}: {message:?}"
            );
        }
        let answer = RuntimeManagementConfig {
            update_runtime_on: "Auto",
            function_arn: "arn:aws:lambda:us-east-1:123456789012:function:f".into(),
        };
        assert_eq!(
            serde_json::to_string(&answer).unwrap(),
            r#"{"UpdateRuntimeOn":"Auto","FunctionArn":"arn:aws:lambda:us-east-1:123456789012:function:f"}"#
        );
    }

    #[test]
    fn recursion_takes_allow_or_terminate() {
        let req = |body: serde_json::Value| -> PutFunctionRecursionConfigRequest {
            serde_json::from_value(body).unwrap()
        };
        assert_eq!(
            recursion(&req(serde_json::json!({"RecursiveLoop": "Allow"}))).unwrap(),
            RecursiveLoop::Allow
        );
        assert_eq!(
            recursion(&req(serde_json::json!({"RecursiveLoop": "Terminate"}))).unwrap(),
            RecursiveLoop::Terminate
        );
        for (body, refusal) in [
            (
                serde_json::json!({"RecursiveLoop": "Stop"}),
                "1 validation error detected: Value 'Stop' at 'recursiveLoop'",
            ),
            (serde_json::json!({}), "RecursiveLoop is required"),
            (
                serde_json::json!({"RecursiveLoop": "Allow", "Loop": 1}),
                "Loop is not a parameter of PutFunctionRecursionConfig",
            ),
        ] {
            let message = refused(recursion(&req(body.clone())));
            assert!(message.starts_with(refusal), "{body}: {message:?}");
        }
        assert_eq!(
            serde_json::to_string(&FunctionRecursionConfig {
                recursive_loop: "Terminate"
            })
            .unwrap(),
            r#"{"RecursiveLoop":"Terminate"}"#
        );
    }
}
