//! Function resource policies: AddPermission, RemovePermission and GetPolicy (owner-only), the
//! policy document in Lambda's JSON form, and [`AppState::resolve_granted`], the one way an
//! operation may reach another account's function (Invoke, GetFunction,
//! GetFunctionConfiguration), judged by [`evaluate::allows`].

pub(crate) mod evaluate;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ember_store::{Function, PolicyStatement};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::functions::parse_json;
use crate::shapes::Unknown;
use crate::validate::{self, FunctionRef};
use crate::AppState;

/// Lambda's limit on a function policy's size, in bytes of its JSON document.
const MAX_POLICY_BYTES: usize = 20 * 1024;

/// The IAM actions AddPermission accepts besides `lambda:*` and `*`: Lambda's operations, with
/// `Invoke`'s action (`InvokeFunction`, which also covers `InvokeWithResponseStream`) and
/// `InvokeFunctionUrl` for function URLs. Compared without regard to case, as IAM does.
const ACTIONS: &[&str] = &[
    "AddLayerVersionPermission",
    "AddPermission",
    "CreateAlias",
    "CreateCodeSigningConfig",
    "CreateEventSourceMapping",
    "CreateFunction",
    "CreateFunctionUrlConfig",
    "DeleteAlias",
    "DeleteCodeSigningConfig",
    "DeleteEventSourceMapping",
    "DeleteFunction",
    "DeleteFunctionCodeSigningConfig",
    "DeleteFunctionConcurrency",
    "DeleteFunctionEventInvokeConfig",
    "DeleteFunctionUrlConfig",
    "DeleteLayerVersion",
    "DeleteProvisionedConcurrencyConfig",
    "GetAccountSettings",
    "GetAlias",
    "GetCodeSigningConfig",
    "GetEventSourceMapping",
    "GetFunction",
    "GetFunctionCodeSigningConfig",
    "GetFunctionConcurrency",
    "GetFunctionConfiguration",
    "GetFunctionEventInvokeConfig",
    "GetFunctionRecursionConfig",
    "GetFunctionUrlConfig",
    "GetLayerVersion",
    "GetLayerVersionPolicy",
    "GetPolicy",
    "GetProvisionedConcurrencyConfig",
    "GetRuntimeManagementConfig",
    "InvokeAsync",
    "InvokeFunction",
    "InvokeFunctionUrl",
    "ListAliases",
    "ListCodeSigningConfigs",
    "ListEventSourceMappings",
    "ListFunctionEventInvokeConfigs",
    "ListFunctionUrlConfigs",
    "ListFunctions",
    "ListFunctionsByCodeSigningConfig",
    "ListLayerVersions",
    "ListLayers",
    "ListProvisionedConcurrencyConfigs",
    "ListTags",
    "ListVersionsByFunction",
    "PublishLayerVersion",
    "PublishVersion",
    "PutFunctionCodeSigningConfig",
    "PutFunctionConcurrency",
    "PutFunctionEventInvokeConfig",
    "PutFunctionRecursionConfig",
    "PutProvisionedConcurrencyConfig",
    "PutRuntimeManagementConfig",
    "RemoveLayerVersionPermission",
    "RemovePermission",
    "TagResource",
    "UntagResource",
    "UpdateAlias",
    "UpdateCodeSigningConfig",
    "UpdateEventSourceMapping",
    "UpdateFunctionCode",
    "UpdateFunctionConfiguration",
    "UpdateFunctionEventInvokeConfig",
    "UpdateFunctionUrlConfig",
];

/// The operations another account may be granted (each by its IAM action); every other
/// operation on a function is its owner's alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Granted {
    Invoke,
    GetFunction,
    GetFunctionConfiguration,
}

impl Granted {
    fn action(self) -> &'static str {
        match self {
            Self::Invoke => "lambda:InvokeFunction",
            Self::GetFunction => "lambda:GetFunction",
            Self::GetFunctionConfiguration => "lambda:GetFunctionConfiguration",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AddPermissionRequest {
    pub statement_id: Option<String>,
    pub action: Option<String>,
    pub principal: Option<String>,
    pub source_arn: Option<String>,
    pub source_account: Option<String>,
    pub event_source_token: Option<String>,
    pub revision_id: Option<String>,
    #[serde(rename = "PrincipalOrgID")]
    pub principal_org_id: Option<String>,
    pub function_url_auth_type: Option<String>,
    pub invoked_via_function_url: Option<bool>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AddPermissionResponse {
    /// The statement added, as a JSON document in a string.
    pub statement: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetPolicyResponse {
    /// The policy, as a JSON document in a string.
    pub policy: String,
    pub revision_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PolicyQuery {
    pub qualifier: Option<String>,
    pub revision_id: Option<String>,
}

pub async fn add_permission(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<PolicyQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: AddPermissionRequest = parse_json(&body)?;
    validate::unknown(&req.unknown, "AddPermission")?;
    let statement = statement(&req)?;
    let (function, qualifier) = state.policy_target(&caller, &name, q.qualifier).await?;
    if qualifier.as_deref() == Some("$LATEST") {
        return Err(ApiError::InvalidParameter(
            "We currently do not support adding policies for $LATEST.".into(),
        ));
    }
    let resource = resource_arn(&state, &function, qualifier.as_deref());
    // The document must stay within Lambda's limit with the statement added. Checked before the
    // store's transaction: two adds racing may together pass it, by at most one statement.
    let current = state
        .store
        .policy(&function.account_id, &function.name, qualifier.as_deref())
        .await?;
    let mut statements = current.map(|p| p.statements).unwrap_or_default();
    statements.push(statement.clone());
    let size = document(&resource, &statements).len();
    if size > MAX_POLICY_BYTES {
        return Err(ApiError::PolicyLengthExceeded(format!(
            "The final policy size ({size}) is bigger than the limit ({MAX_POLICY_BYTES})."
        )));
    }
    state
        .store
        .add_permission(
            &function.account_id,
            &function.name,
            qualifier.as_deref(),
            &statement,
            req.revision_id.as_deref(),
        )
        .await
        .map_err(|e| policy_error(&state, e, &function, qualifier.as_deref()))?;
    tracing::info!(function = %function.name, qualifier = ?qualifier,
        statement = %statement.statement_id, "permission added");
    let body = AddPermissionResponse {
        statement: statement_json(&resource, &statement),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn remove_permission(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, statement_id)): Path<(String, String)>,
    Query(q): Query<PolicyQuery>,
) -> Result<StatusCode, ApiError> {
    namespaced_statement_id(&statement_id)?;
    let (function, qualifier) = state.policy_target(&caller, &name, q.qualifier).await?;
    let qualifier = qualifier.filter(|q| q != "$LATEST");
    state
        .store
        .remove_permission(
            &function.account_id,
            &function.name,
            qualifier.as_deref(),
            &statement_id,
            q.revision_id.as_deref(),
        )
        .await
        .map_err(|e| match e {
            ember_store::StoreError::NotFound(_) => ApiError::NotFound(format!(
                "Statement {statement_id} is not found in resource policy."
            )),
            other => policy_error(&state, other, &function, qualifier.as_deref()),
        })?;
    tracing::info!(function = %function.name, qualifier = ?qualifier,
        statement = %statement_id, "permission removed");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn get_policy(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<PolicyQuery>,
) -> Result<Json<GetPolicyResponse>, ApiError> {
    let (function, qualifier) = state.policy_target(&caller, &name, q.qualifier).await?;
    let qualifier = qualifier.filter(|q| q != "$LATEST");
    let policy = state
        .store
        .policy(&function.account_id, &function.name, qualifier.as_deref())
        .await?
        .ok_or_else(|| ApiError::NotFound("The resource you requested does not exist.".into()))?;
    let resource = resource_arn(&state, &function, qualifier.as_deref());
    Ok(Json(GetPolicyResponse {
        policy: document(&resource, &policy.statements),
        revision_id: policy.revision_id,
    }))
}

impl AppState {
    /// The caller's own function (and the qualifier named, in the ARN or `Qualifier`) whose
    /// policy an operation reads or changes: a 404 if it, or the version or alias named, does
    /// not exist, or belongs to another account.
    async fn policy_target(
        &self,
        caller: &Caller,
        name: &str,
        qualifier: Option<String>,
    ) -> Result<(Function, Option<String>), ApiError> {
        let target = self.resolve(caller, name, qualifier.as_deref())?;
        let function = self.function(caller, name, qualifier.as_deref()).await?;
        Ok((function, target.qualifier))
    }

    /// The version an Invoke (or InvokeWithResponseStream) of `name` and `qualifier` by
    /// `caller` runs: resolved through [`AppState::resolve_granted`] (another account's function
    /// only with its owner's grant, loaded as the owner's, so it runs in the owner's VMs), an
    /// alias with weights routed by a fresh draw ([`AppState::invoked`]); with the reference
    /// as resolved (its qualifier, from the ARN or the query).
    pub(crate) async fn invoked_as_granted(
        &self,
        caller: &Caller,
        name: &str,
        qualifier: Option<&str>,
    ) -> Result<(FunctionRef, Function), ApiError> {
        let (owner, target) = self
            .resolve_granted(caller, name, qualifier, Granted::Invoke)
            .await?;
        let draw = rand::Rng::gen::<f64>(&mut rand::thread_rng());
        let function = self.invoked(&owner, &target, draw).await?;
        Ok((target, function))
    }

    /// Resolves `name` and `qualifier` for an operation another account may be granted, as
    /// [`AppState::resolve`] does, and says whose function it is: the caller's own, or, for
    /// another account's ARN, that owner's if the owner's policy on the qualifier called allows
    /// the caller `operation`. Without such a grant it answers exactly the 404 `resolve`
    /// answers for another account's function, whether that function exists or not.
    ///
    /// The handler then loads the function *as the answered account* (e.g.
    /// `state.function(&owner, …)`): an invocation gets the owner's function, so it runs in the
    /// owner's VMs and counts against the owner's concurrency. A grant implies the function
    /// exists: policies are deleted with their function, version or alias.
    pub(crate) async fn resolve_granted(
        &self,
        caller: &Caller,
        name: &str,
        qualifier: Option<&str>,
        operation: Granted,
    ) -> Result<(Caller, FunctionRef), ApiError> {
        let owner = match validate::function_ref(name)?.account_id {
            Some(owner) if owner != caller.account_id => owner,
            _ => return Ok((caller.clone(), self.resolve(caller, name, qualifier)?)),
        };
        // Resolved as the owner would (the qualifier checks are the same for everyone).
        let as_owner = Caller {
            account_id: owner,
            is_admin: false,
            session: None,
        };
        let target = self.resolve(&as_owner, name, qualifier)?;
        let policies = self
            .store
            .policies(&as_owner.account_id, &target.name)
            .await?;
        let call = evaluate::Call {
            caller_account: &caller.account_id,
            action: operation.action(),
            qualifier: target.qualifier.as_deref(),
            url_auth: None,
        };
        if !evaluate::allows(&policies, &call) {
            // The 404 `resolve` answers for another account's ARN, word for word.
            return Err(ApiError::function_not_found(
                &self.arn(&as_owner.account_id, &target.name),
            ));
        }
        tracing::debug!(function = %target.name, owner = %as_owner.account_id,
            caller = %caller.account_id, action = call.action, "granted by the function's policy");
        Ok((as_owner, target))
    }
}

/// Validates AddPermission's members and builds the statement to store.
fn statement(req: &AddPermissionRequest) -> Result<PolicyStatement, ApiError> {
    let statement_id = required(req.statement_id.as_deref(), "StatementId")?;
    if statement_id.len() > 100
        || !statement_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(pattern(statement_id, "statementId", "([a-zA-Z0-9-_]+)"));
    }
    let action = required(req.action.as_deref(), "Action")?;
    action_name(action)?;
    let principal = required(req.principal.as_deref(), "Principal")?;
    principal_name(principal)?;
    if let Some(account) = &req.source_account {
        if !is_account_id(account) {
            return Err(pattern(account, "sourceAccount", "\\d{12}"));
        }
    }
    if let Some(arn) = &req.source_arn {
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        if arn.len() > 10_000
            || parts.len() != 6
            || parts[0] != "arn"
            || !parts[1].starts_with("aws")
            || parts[2].is_empty()
        {
            return Err(pattern(
                arn,
                "sourceArn",
                "arn:(aws[a-zA-Z0-9-]*):([a-zA-Z0-9\\-])+:([a-z]{2}(-gov)?-[a-z]+-\\d{1})?:(\\d{12})?:(.*)",
            ));
        }
    }
    if let Some(token) = &req.event_source_token {
        if token.is_empty()
            || token.len() > 256
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(pattern(token, "eventSourceToken", "[a-zA-Z0-9._\\-]+"));
        }
    }
    if let Some(org) = &req.principal_org_id {
        let id = org.strip_prefix("o-").unwrap_or_default();
        if !(10..=32).contains(&id.len())
            || !id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(pattern(org, "principalOrgID", "o-[a-z0-9]{10,32}"));
        }
    }
    if let Some(auth) = &req.function_url_auth_type {
        if auth != "NONE" && auth != "AWS_IAM" {
            return Err(ApiError::InvalidParameter(format!(
                "1 validation error detected: Value '{auth}' at 'functionUrlAuthType' failed to \
                 satisfy constraint: Member must satisfy enum value set: [NONE, AWS_IAM]"
            )));
        }
    }
    Ok(PolicyStatement {
        statement_id: statement_id.to_owned(),
        action: action.to_owned(),
        principal: principal.to_owned(),
        source_arn: req.source_arn.clone(),
        source_account: req.source_account.clone(),
        principal_org_id: req.principal_org_id.clone(),
        event_source_token: req.event_source_token.clone(),
        function_url_auth_type: req.function_url_auth_type.clone(),
        invoked_via_function_url: req.invoked_via_function_url,
    })
}

fn required<'a>(value: Option<&'a str>, member: &str) -> Result<&'a str, ApiError> {
    value.ok_or_else(|| ApiError::InvalidParameter(format!("{member} is a required parameter")))
}

fn pattern(value: &str, member: &str, regex: &str) -> ApiError {
    ApiError::InvalidParameter(format!(
        "1 validation error detected: Value '{}' at '{member}' failed to satisfy constraint: \
         Member must satisfy regular expression pattern: {regex}",
        value.chars().take(256).collect::<String>()
    ))
}

/// RemovePermission's `StatementId` (`NamespacedStatementId`: dots allowed too).
fn namespaced_statement_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty()
        || id.len() > 100
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(pattern(id, "statementId", "([a-zA-Z0-9-_.]+)"));
    }
    Ok(())
}

fn action_name(action: &str) -> Result<(), ApiError> {
    let known = action == "*"
        || action == "lambda:*"
        || action
            .strip_prefix("lambda:")
            .is_some_and(|a| ACTIONS.iter().any(|known| known.eq_ignore_ascii_case(a)));
    if known {
        return Ok(());
    }
    let shaped = action == "*"
        || action.strip_prefix("lambda:").is_some_and(|a| {
            a == "*" || (!a.is_empty() && a.bytes().all(|b| b.is_ascii_alphabetic()))
        });
    if !shaped {
        return Err(pattern(
            action,
            "action",
            "(lambda:[*]|lambda:[a-zA-Z]+|[*])",
        ));
    }
    Err(ApiError::InvalidParameter(format!(
        "{action} is not a Lambda action; use lambda:InvokeFunction, lambda:GetFunction, \
         lambda:GetFunctionConfiguration, lambda:InvokeFunctionUrl, another Lambda operation's \
         action, or lambda:*"
    )))
}

/// The principals Ember accepts: an account id, an account's root ARN, `*`, or a service
/// principal (`s3.amazonaws.com`: kept and answered, though no Ember service calls functions).
fn principal_name(principal: &str) -> Result<(), ApiError> {
    let root_account = principal
        .strip_prefix("arn:aws:iam::")
        .and_then(|rest| rest.strip_suffix(":root"));
    let service = principal.strip_suffix(".amazonaws.com").is_some_and(|s| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
    });
    if principal == "*" || is_account_id(principal) || root_account.is_some_and(is_account_id) {
        return Ok(());
    }
    if service {
        return Ok(());
    }
    Err(ApiError::InvalidParameter(
        "The provided principal was invalid. Please check the principal and try again.".into(),
    ))
}

fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

fn resource_arn(state: &AppState, function: &Function, qualifier: Option<&str>) -> String {
    let arn = state.arn(&function.account_id, &function.name);
    match qualifier.filter(|q| *q != "$LATEST") {
        Some(q) => format!("{arn}:{q}"),
        None => arn,
    }
}

/// The store's refusals of a policy change, in the words Lambda uses for policies.
fn policy_error(
    state: &AppState,
    e: ember_store::StoreError,
    function: &Function,
    qualifier: Option<&str>,
) -> ApiError {
    match e {
        ember_store::StoreError::Conflict(_) => ApiError::Conflict(
            "The statement id (sid) provided already exists. Please choose a new statement id, \
             or remove the existing statement."
                .into(),
        ),
        ember_store::StoreError::RevisionMismatch { .. } => ApiError::PolicyPreconditionFailed,
        // The function was deleted meanwhile.
        ember_store::StoreError::NotFound(_) => {
            ApiError::function_not_found(&resource_arn(state, function, qualifier))
        }
        other => other.into(),
    }
}

/// A policy statement, with its members in the order Lambda writes them.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct StatementDocument<'a> {
    sid: &'a str,
    effect: &'static str,
    principal: PrincipalDocument<'a>,
    action: &'a str,
    resource: &'a str,
    #[serde(skip_serializing_if = "Condition::is_empty")]
    condition: Condition<'a>,
}

/// `"*"`, `{"AWS": "arn:aws:iam::ACCOUNT:root"}` or `{"Service": "s3.amazonaws.com"}`.
#[derive(Debug)]
enum PrincipalDocument<'a> {
    Anyone,
    Account(String),
    Service(&'a str),
}

impl Serialize for PrincipalDocument<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Anyone => serializer.serialize_str("*"),
            Self::Account(arn) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("AWS", arn)?;
                map.end()
            }
            Self::Service(service) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("Service", service)?;
                map.end()
            }
        }
    }
}

/// Condition operators and their keys, in the order Lambda writes them.
#[derive(Debug, Default)]
struct Condition<'a>(Vec<(&'static str, Vec<(&'static str, &'a str)>)>);

impl Condition<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Condition<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Keys<'k>(&'k [(&'static str, &'k str)]);
        impl Serialize for Keys<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(self.0.len()))?;
                for (key, value) in self.0 {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (operator, keys) in &self.0 {
            map.serialize_entry(operator, &Keys(keys))?;
        }
        map.end()
    }
}

fn statement_document<'a>(resource: &'a str, s: &'a PolicyStatement) -> StatementDocument<'a> {
    let principal = if s.principal == "*" {
        PrincipalDocument::Anyone
    } else if is_account_id(&s.principal) {
        PrincipalDocument::Account(format!("arn:aws:iam::{}:root", s.principal))
    } else if s.principal.starts_with("arn:") {
        PrincipalDocument::Account(s.principal.clone())
    } else {
        PrincipalDocument::Service(&s.principal)
    };
    let mut string_equals = Vec::new();
    if let Some(a) = &s.source_account {
        string_equals.push(("AWS:SourceAccount", a.as_str()));
    }
    if let Some(org) = &s.principal_org_id {
        string_equals.push(("aws:PrincipalOrgID", org.as_str()));
    }
    if let Some(token) = &s.event_source_token {
        string_equals.push(("lambda:EventSourceToken", token.as_str()));
    }
    if let Some(auth) = &s.function_url_auth_type {
        string_equals.push(("lambda:FunctionUrlAuthType", auth.as_str()));
    }
    let mut condition = Condition::default();
    if !string_equals.is_empty() {
        condition.0.push(("StringEquals", string_equals));
    }
    if let Some(arn) = &s.source_arn {
        condition
            .0
            .push(("ArnLike", vec![("AWS:SourceArn", arn.as_str())]));
    }
    if let Some(via) = s.invoked_via_function_url {
        let via = if via { "true" } else { "false" };
        condition
            .0
            .push(("Bool", vec![("lambda:InvokedViaFunctionUrl", via)]));
    }
    StatementDocument {
        sid: &s.statement_id,
        effect: "Allow",
        principal,
        action: &s.action,
        resource,
        condition,
    }
}

/// AddPermission's `Statement`: one statement as a JSON document.
fn statement_json(resource: &str, s: &PolicyStatement) -> String {
    to_json(&statement_document(resource, s))
}

/// GetPolicy's `Policy`: the whole policy as a JSON document.
fn document(resource: &str, statements: &[PolicyStatement]) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct PolicyDocument<'a> {
        version: &'static str,
        id: &'static str,
        statement: Vec<StatementDocument<'a>>,
    }
    to_json(&PolicyDocument {
        version: "2012-10-17",
        id: "default",
        statement: statements
            .iter()
            .map(|s| statement_document(resource, s))
            .collect(),
    })
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Structs of strings, with string keys: serialising them cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_store::Policy;

    const RESOURCE: &str = "arn:aws:lambda:us-east-1:111111111111:function:f";

    fn request(json: serde_json::Value) -> AddPermissionRequest {
        serde_json::from_value(json).unwrap()
    }

    /// AddPermission's `Statement`, byte for byte, for each principal form.
    #[test]
    fn statement_documents_are_lambdas_json() {
        let table = [
            (
                "222222222222",
                r#"{"Sid":"s","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::222222222222:root"},"Action":"lambda:InvokeFunction","Resource":"arn:aws:lambda:us-east-1:111111111111:function:f"}"#,
            ),
            (
                "arn:aws:iam::222222222222:root",
                r#"{"Sid":"s","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::222222222222:root"},"Action":"lambda:InvokeFunction","Resource":"arn:aws:lambda:us-east-1:111111111111:function:f"}"#,
            ),
            (
                "*",
                r#"{"Sid":"s","Effect":"Allow","Principal":"*","Action":"lambda:InvokeFunction","Resource":"arn:aws:lambda:us-east-1:111111111111:function:f"}"#,
            ),
            (
                "s3.amazonaws.com",
                r#"{"Sid":"s","Effect":"Allow","Principal":{"Service":"s3.amazonaws.com"},"Action":"lambda:InvokeFunction","Resource":"arn:aws:lambda:us-east-1:111111111111:function:f"}"#,
            ),
        ];
        for (principal, want) in table {
            let s = statement(&request(serde_json::json!({
                "StatementId": "s", "Action": "lambda:InvokeFunction", "Principal": principal,
            })))
            .unwrap();
            assert_eq!(statement_json(RESOURCE, &s), want, "{principal}");
        }
    }

    /// Every condition, in Lambda's operators and keys, in Lambda's order.
    #[test]
    fn conditions_are_written_as_lambda_writes_them() {
        let s = statement(&request(serde_json::json!({
            "StatementId": "s3", "Action": "lambda:InvokeFunction", "Principal": "s3.amazonaws.com",
            "SourceArn": "arn:aws:s3:::bucket", "SourceAccount": "222222222222",
            "PrincipalOrgID": "o-abcdefghij", "EventSourceToken": "tok.en-1",
            "FunctionUrlAuthType": "NONE", "InvokedViaFunctionUrl": true,
        })))
        .unwrap();
        assert_eq!(
            statement_json(&format!("{RESOURCE}:live"), &s),
            r#"{"Sid":"s3","Effect":"Allow","Principal":{"Service":"s3.amazonaws.com"},"Action":"lambda:InvokeFunction","Resource":"arn:aws:lambda:us-east-1:111111111111:function:f:live","Condition":{"StringEquals":{"AWS:SourceAccount":"222222222222","aws:PrincipalOrgID":"o-abcdefghij","lambda:EventSourceToken":"tok.en-1","lambda:FunctionUrlAuthType":"NONE"},"ArnLike":{"AWS:SourceArn":"arn:aws:s3:::bucket"},"Bool":{"lambda:InvokedViaFunctionUrl":"true"}}}"#
        );
    }

    /// GetPolicy's `Policy`: Version, Id, then the statements in the order added.
    #[test]
    fn policy_documents_are_lambdas_json() {
        let policy = Policy {
            qualifier: None,
            revision_id: "r".into(),
            statements: vec![
                PolicyStatement {
                    statement_id: "b".into(),
                    action: "lambda:GetFunction".into(),
                    principal: "222222222222".into(),
                    ..Default::default()
                },
                PolicyStatement {
                    statement_id: "a".into(),
                    action: "lambda:*".into(),
                    principal: "*".into(),
                    source_account: Some("333333333333".into()),
                    ..Default::default()
                },
            ],
        };
        assert_eq!(
            document(RESOURCE, &policy.statements),
            r#"{"Version":"2012-10-17","Id":"default","Statement":[{"Sid":"b","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::222222222222:root"},"Action":"lambda:GetFunction","Resource":"arn:aws:lambda:us-east-1:111111111111:function:f"},{"Sid":"a","Effect":"Allow","Principal":"*","Action":"lambda:*","Resource":"arn:aws:lambda:us-east-1:111111111111:function:f","Condition":{"StringEquals":{"AWS:SourceAccount":"333333333333"}}}]}"#
        );
        let answer = GetPolicyResponse {
            policy: "{}".into(),
            revision_id: "r".into(),
        };
        assert_eq!(
            serde_json::to_string(&answer).unwrap(),
            r#"{"Policy":"{}","RevisionId":"r"}"#
        );
        let added = AddPermissionResponse {
            statement: "{}".into(),
        };
        assert_eq!(
            serde_json::to_string(&added).unwrap(),
            r#"{"Statement":"{}"}"#
        );
    }

    /// What AddPermission refuses, and which member it names.
    #[test]
    fn bad_statements_are_refused_naming_the_member() {
        let ok = serde_json::json!({
            "StatementId": "s", "Action": "lambda:InvokeFunction", "Principal": "222222222222",
        });
        let table: &[(&str, serde_json::Value, &str)] = &[
            (
                "StatementId",
                serde_json::Value::Null,
                "StatementId is a required",
            ),
            ("StatementId", "a b".into(), "statementId"),
            ("StatementId", "a.b".into(), "statementId"),
            ("StatementId", "x".repeat(101).into(), "statementId"),
            ("Action", serde_json::Value::Null, "Action is a required"),
            ("Action", "lambda:Invoke Function".into(), "action"),
            ("Action", "s3:GetObject".into(), "action"),
            ("Action", "lambda:Frobnicate".into(), "not a Lambda action"),
            (
                "Principal",
                serde_json::Value::Null,
                "Principal is a required",
            ),
            ("Principal", "alice".into(), "principal was invalid"),
            ("Principal", "12345".into(), "principal was invalid"),
            (
                "Principal",
                "arn:aws:iam::222222222222:user/bob".into(),
                "principal was invalid",
            ),
            ("SourceAccount", "1234".into(), "sourceAccount"),
            ("SourceArn", "bucket".into(), "sourceArn"),
            ("PrincipalOrgID", "o-short".into(), "principalOrgID"),
            ("EventSourceToken", "a b".into(), "eventSourceToken"),
            ("FunctionUrlAuthType", "OPEN".into(), "functionUrlAuthType"),
        ];
        for (member, value, says) in table {
            let mut json = ok.clone();
            if value.is_null() {
                json.as_object_mut().unwrap().remove(*member);
            } else {
                json[*member] = value.clone();
            }
            let err = statement(&request(json)).unwrap_err();
            assert!(
                matches!(err, ApiError::InvalidParameter(_)),
                "{member}={value}: {err:?}"
            );
            assert!(
                err.to_string().contains(says),
                "{member}={value}: {err} does not say {says:?}"
            );
        }
        for action in [
            "lambda:InvokeFunction",
            "lambda:invokefunction",
            "lambda:*",
            "*",
            "lambda:GetFunction",
            "lambda:GetFunctionConfiguration",
            "lambda:InvokeFunctionUrl",
        ] {
            let mut json = ok.clone();
            json["Action"] = action.into();
            assert!(statement(&request(json)).is_ok(), "{action}");
        }
    }
}
