//! `GET` and `PUT /ember/v1/functions/{name}/network`: a function's own egress (issue 19), for
//! all its versions: whether its execution environments may open connections beyond their VM
//! (`Allow`: as the server's egress policy says; `Deny`: only Ember's API and DNS on the VM's
//! gateway), or `null`: the server's default (`ember serve --egress`).
//!
//! The answer (both methods; `PUT` answers after the change):
//! `{"FunctionName", "Egress": "Allow" | "Deny" | null, "EffectiveEgress": "Allow" | "Deny"}`,
//! `EffectiveEgress` being what new environments get (the function's own, else the server's).
//!
//! The `PUT` body: `{"Egress": "Allow" | "Deny" | null}`. A missing `Egress`, another value, an
//! unknown field, or a qualified name (the setting is the function's, not a version's) is a 400
//! `InvalidParameterValueException`, and nothing changes. A change retires the function's idle
//! environments: the next invocations get new ones under the new setting. Session credentials
//! (a function's own environment) may not call this (`auth::session_may`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use ember_executor::Egress;
use ember_store::{Function, FunctionEgress};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::functions::parse_json;
use crate::AppState;

/// The answer of both methods.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkResponse {
    pub function_name: String,
    /// The function's own setting; `None` (`null`): the server's default.
    pub egress: Option<&'static str>,
    /// What its new environments get.
    pub effective_egress: &'static str,
}

/// The body of `PUT`: `Egress` must be present (`null` clears the function's own setting).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct PutNetworkRequest {
    #[serde(default, deserialize_with = "present")]
    pub egress: Option<Option<String>>,
}

/// A field that is present, possibly `null` (serde maps an absent one to the `default`).
fn present<'de, D>(d: D) -> Result<Option<Option<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Option::<String>::deserialize(d).map(Some)
}

impl PutNetworkRequest {
    /// The setting to store, or why the request is refused.
    fn egress(&self) -> Result<Option<FunctionEgress>, ApiError> {
        match &self.egress {
            None => Err(ApiError::InvalidParameter(
                "Egress is required: \"Allow\", \"Deny\", or null for the server's default".into(),
            )),
            Some(None) => Ok(None),
            Some(Some(text)) => match text.as_str() {
                "Allow" => Ok(Some(FunctionEgress::Allow)),
                "Deny" => Ok(Some(FunctionEgress::Deny)),
                other => Err(ApiError::InvalidParameter(format!(
                    "Egress must be \"Allow\", \"Deny\" or null (got {other:?})"
                ))),
            },
        }
    }
}

fn spelling(egress: FunctionEgress) -> &'static str {
    match egress {
        FunctionEgress::Allow => "Allow",
        FunctionEgress::Deny => "Deny",
    }
}

impl NetworkResponse {
    fn new(function: &Function, effective: Egress) -> Self {
        Self {
            function_name: function.name.clone(),
            egress: function.egress.map(spelling),
            effective_egress: match effective {
                Egress::Allow => "Allow",
                Egress::Deny => "Deny",
            },
        }
    }
}

impl AppState {
    /// `$LATEST` of the function `name` names, refusing a qualifier: the setting is the
    /// function's, for all its versions.
    async fn unqualified_function(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<Function, ApiError> {
        let target = self.resolve(caller, name, None)?;
        if let Some(qualifier) = &target.qualifier {
            return Err(ApiError::InvalidParameter(format!(
                "The network settings are the function's, for all its versions: name the function \
                 without a qualifier (got {qualifier:?})"
            )));
        }
        self.function(caller, name, None).await
    }

    fn effective_egress(&self, function: &Function) -> Egress {
        match (&self.executor, function.egress) {
            (Some(executor), _) => executor.egress_of(function),
            (None, Some(FunctionEgress::Deny)) => Egress::Deny,
            // Without an executor nothing runs; the server's default is allow.
            (None, _) => Egress::Allow,
        }
    }
}

pub async fn get_network(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<NetworkResponse>, ApiError> {
    let function = state.unqualified_function(&caller, &name).await?;
    let effective = state.effective_egress(&function);
    Ok(Json(NetworkResponse::new(&function, effective)))
}

pub async fn put_network(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<NetworkResponse>, ApiError> {
    let req: PutNetworkRequest = parse_json(&body)?;
    let egress = req.egress()?;
    let before = state.unqualified_function(&caller, &name).await?;
    if before.egress != egress {
        state
            .store
            .set_function_egress(&caller.account_id, &before.name, egress)
            .await
            .map_err(|e| state.not_found_as_function(e, &caller, &before.name))?;
        tracing::info!(function = %before.name, egress = ?egress, "egress changed");
        if let Some(executor) = &state.executor {
            executor.egress_changed(&before, egress);
        }
    }
    let after = Function { egress, ..before };
    let effective = state.effective_egress(&after);
    Ok(Json(NetworkResponse::new(&after, effective)))
}

#[cfg(test)]
mod tests;
