//! Handlers of the Lambda control plane's function operations. Each parses and validates its
//! input completely, then makes one typed call to the store; none holds policy of its own.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use ember_store::package::{self, PackageLimits};
use ember_store::{Function, FunctionChange, FunctionSpec, SpecPatch};
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::paging::{decode_marker, encode_marker, paginate};
use crate::policy::Granted;
use crate::shapes::*;
use crate::snap_start;
use crate::validate::{self, FunctionRef};
use crate::AppState;

/// Functions listed per page at most, as in Lambda.
const PAGE_SIZE: u32 = 50;

/// How often UpdateFunctionConfiguration re-reads the function when another update changed it
/// between its checks and its write.
const UPDATE_ATTEMPTS: u32 = 5;

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct QualifierQuery {
    pub qualifier: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ListQuery {
    pub marker: Option<String>,
    pub max_items: Option<String>,
    /// ListFunctions' `ALL` (every version); ListAliases' filter.
    pub function_version: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CreateFunctionRequest = parse_json(&body)?;
    let target = state.resolve(&caller, &req.function_name, None)?;
    if target.qualifier.is_some() {
        return Err(ApiError::InvalidParameter(
            "A function name for CreateFunction cannot carry a qualifier".into(),
        ));
    }
    let snap_start = req
        .snap_start
        .as_ref()
        .map(snap_start::apply_on)
        .transpose()?;
    validate::create_unimplemented(&req, &target.name)?;
    let tags = req.tags.clone().unwrap_or_default();
    crate::tags::tags(&tags)?;
    let role = validate::role(req.role.as_deref().unwrap_or_default())?;
    let runtime = validate::runtime(req.runtime.as_deref().ok_or_else(|| {
        ApiError::InvalidParameter("Runtime and Handler are mandatory parameters for functions created with deployment packages.".into())
    })?)?;
    let handler = validate::handler(req.handler.as_deref().ok_or_else(|| {
        ApiError::InvalidParameter("Runtime and Handler are mandatory parameters for functions created with deployment packages.".into())
    })?)?;
    validate::handler_for_runtime(Some(&runtime), Some(&handler))?;
    let layers = match &req.layers {
        Some(arns) => state.resolve_layers(&caller, arns, &[]).await?,
        None => Vec::new(),
    };
    let spec = FunctionSpec {
        runtime: Some(runtime),
        role,
        handler: Some(handler),
        description: validate::description(req.description.as_deref().unwrap_or_default())?,
        timeout_s: match req.timeout {
            Some(t) => validate::range("timeout", t, validate::TIMEOUT_S)?,
            None => validate::DEFAULT_TIMEOUT_S,
        },
        memory_mb: match req.memory_size {
            Some(m) => validate::range("memorySize", m, validate::MEMORY_MB)?,
            None => validate::DEFAULT_MEMORY_MB,
        },
        ephemeral_mb: match req.ephemeral_storage {
            Some(e) => validate::ephemeral(e.size)?,
            None => validate::DEFAULT_EPHEMERAL_MB,
        },
        environment: match &req.environment {
            Some(env) => validate::environment(env)?,
            None => Default::default(),
        },
        architectures: validate::architectures(req.architectures.as_deref())?,
        package_type: "Zip".into(),
        layers,
        snap_start: snap_start.unwrap_or_default(),
    };
    snap_start::check(&spec)?;
    let code = req.code.unwrap_or_default();
    let zip = zip_file(
        code.zip_file.as_deref(),
        code.s3_bucket.is_some()
            || code.s3_key.is_some()
            || code.s3_object_version.is_some()
            || code.s3_object_storage_mode.is_some(),
        code.image_uri.is_some(),
    )?;
    if !spec.layers.is_empty() {
        crate::layers::check_total_size(crate::layers::unzipped_size(&zip)?, &spec.layers)?;
    }
    let function = state
        .store
        .create_function_with_tags(&caller.account_id, &target.name, &spec, &zip, &tags)
        .await
        .map_err(|e| match e {
            ember_store::StoreError::Conflict(_) => {
                ApiError::Conflict(format!("Function already exist: {}", target.name))
            }
            other => other.into(),
        })?;
    tracing::info!(function = %function.name, account = %caller.account_id, "function created");
    let function = state.publish_if(&caller, req.publish, function).await?;
    Ok((StatusCode::CREATED, Json(state.configuration(&function))).into_response())
}

pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
    headers: HeaderMap,
) -> Result<Json<GetFunctionResponse>, ApiError> {
    let (owner, target) = state
        .resolve_granted(&caller, &name, q.qualifier.as_deref(), Granted::GetFunction)
        .await?;
    let function = state.qualified(&owner, &target).await?;
    // Tags belong to the function, whatever version or alias the request names. Another
    // account granted GetFunction gets none: Lambda answers tags only to callers allowed
    // lambda:ListTags, which no grant gives across accounts in Ember.
    let tags = if owner.account_id == caller.account_id {
        state
            .store
            .tags(&caller.account_id, &function.name)
            .await
            .map_err(|e| state.not_found_as_function(e, &caller, &function.name))?
    } else {
        Default::default()
    };
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    Ok(Json(GetFunctionResponse {
        code: FunctionCodeLocation {
            repository_type: "S3",
            location: state.code_url(host, &function),
        },
        concurrency: function.reserved_concurrency.map(|n| Concurrency {
            reserved_concurrent_executions: Some(i64::from(n)),
        }),
        configuration: state.configuration_as(&function, &target),
        tags: (!tags.is_empty()).then_some(tags),
    }))
}

pub async fn get_configuration(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<Json<FunctionConfiguration>, ApiError> {
    let (owner, target) = state
        .resolve_granted(
            &caller,
            &name,
            q.qualifier.as_deref(),
            Granted::GetFunctionConfiguration,
        )
        .await?;
    let function = state.qualified(&owner, &target).await?;
    Ok(Json(state.configuration_as(&function, &target)))
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> Result<Json<ListFunctionsResponse>, ApiError> {
    let max_items = validate::max_items(q.max_items.as_deref(), 10_000, PAGE_SIZE)?;
    if let Some(all) = q.function_version.as_deref() {
        return state
            .list_all_versions(&caller, all, q.marker.as_deref(), max_items)
            .await;
    }
    let after = q.marker.as_deref().map(decode_marker).transpose()?;
    // One extra row tells whether another page follows.
    let page = state
        .store
        .list_functions(&caller.account_id, after.as_deref(), max_items + 1)
        .await?;
    let (page, next_marker) = paginate(page, max_items, |f| encode_marker(&f.name));
    Ok(Json(ListFunctionsResponse {
        functions: page.iter().map(|f| state.configuration(f)).collect(),
        next_marker,
    }))
}

pub async fn update_code(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<FunctionConfiguration>, ApiError> {
    let req: UpdateFunctionCodeRequest = parse_json(&body)?;
    let target = state.resolve(&caller, &name, None)?;
    reject_qualifier(&target)?;
    validate::code_update_unimplemented(&req)?;
    if let Some(archs) = &req.architectures {
        validate::architectures(Some(archs))?;
    }
    let zip = zip_file(
        req.zip_file.as_deref(),
        req.s3_bucket.is_some()
            || req.s3_key.is_some()
            || req.s3_object_version.is_some()
            || req.s3_object_storage_mode.is_some(),
        req.image_uri.is_some(),
    )?;
    // The new code must still fit with the function's layers.
    let current = state.function(&caller, &name, None).await?;
    if !current.spec.layers.is_empty() {
        crate::layers::check_total_size(crate::layers::unzipped_size(&zip)?, &current.spec.layers)?;
    }
    if req.dry_run {
        let function = current;
        let info = package::inspect(&zip, &PackageLimits::default())
            .map_err(|e| ApiError::InvalidParameter(e.to_string()))?;
        let mut config = state.configuration(&function);
        config.code_sha256 = info.sha256_base64();
        config.code_size = info.zipped_bytes;
        return Ok(Json(config));
    }
    let function = state
        .update(
            &caller,
            &target,
            req.revision_id.as_deref(),
            FunctionChange::Code(&zip),
        )
        .await?;
    let function = state.publish_if(&caller, req.publish, function).await?;
    Ok(Json(state.configuration(&function)))
}

pub async fn update_configuration(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<FunctionConfiguration>, ApiError> {
    let req: UpdateFunctionConfigurationRequest = parse_json(&body)?;
    let target = state.resolve(&caller, &name, None)?;
    reject_qualifier(&target)?;
    let snap_start = req
        .snap_start
        .as_ref()
        .map(snap_start::apply_on)
        .transpose()?;
    validate::update_unimplemented(&req, &target.name)?;
    let patch = SpecPatch {
        runtime: req.runtime.as_deref().map(validate::runtime).transpose()?,
        role: req.role.as_deref().map(validate::role).transpose()?,
        handler: req.handler.as_deref().map(validate::handler).transpose()?,
        description: req
            .description
            .as_deref()
            .map(validate::description)
            .transpose()?,
        timeout_s: req
            .timeout
            .map(|t| validate::range("timeout", t, validate::TIMEOUT_S))
            .transpose()?,
        memory_mb: req
            .memory_size
            .map(|m| validate::range("memorySize", m, validate::MEMORY_MB))
            .transpose()?,
        ephemeral_mb: req
            .ephemeral_storage
            .map(|e| validate::ephemeral(e.size))
            .transpose()?,
        environment: req
            .environment
            .as_ref()
            .map(validate::environment)
            .transpose()?,
        layers: None,
        snap_start,
    };
    let mut patch = patch;
    if let Some(arns) = &req.layers {
        // A version the function already uses stays usable, even once deleted.
        let current = state.function(&caller, &name, None).await?;
        let layers = state
            .resolve_layers(&caller, arns, &current.spec.layers)
            .await?;
        if !layers.is_empty() {
            let code = state.store.code(&current.code_sha256).await?;
            crate::layers::check_total_size(crate::layers::unzipped_size(&code)?, &layers)?;
        }
        patch.layers = Some(layers);
    }
    // The settings must make sense together as the patch leaves them (a new handler with the
    // runtime, SnapStart with the runtime and ephemeral storage): check them against the
    // function read, and write only if it is still that revision (retrying if another update
    // came between, unless the caller named the revision).
    let mut attempt = 0;
    let function = loop {
        attempt += 1;
        let current = state.function(&caller, &name, None).await?;
        if patch.runtime.is_some() || patch.handler.is_some() {
            validate::handler_for_runtime(
                patch.runtime.as_deref().or(current.spec.runtime.as_deref()),
                patch.handler.as_deref().or(current.spec.handler.as_deref()),
            )?;
        }
        let mut patched = current.spec.clone();
        patch.clone().apply(&mut patched);
        snap_start::check(&patched)?;
        let revision = req.revision_id.as_deref().unwrap_or(&current.revision_id);
        match state
            .update(
                &caller,
                &target,
                Some(revision),
                FunctionChange::Spec(patch.clone()),
            )
            .await
        {
            Err(ApiError::PreconditionFailed)
                if req.revision_id.is_none() && attempt < UPDATE_ATTEMPTS =>
            {
                continue
            }
            result => break result?,
        }
    };
    Ok(Json(state.configuration(&function)))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<StatusCode, ApiError> {
    let target = state.resolve(&caller, &name, q.qualifier.as_deref())?;
    match target.qualifier.as_deref() {
        None => {}
        Some("$LATEST") => {
            return Err(ApiError::InvalidParameter(
                "$LATEST version cannot be deleted without deleting the function.".into(),
            ))
        }
        Some(version) => return state.delete_version(&caller, &target.name, version).await,
    }
    state
        .store
        .delete_function(&caller.account_id, &target.name)
        .await
        .map_err(|e| state.not_found_as_function(e, &caller, &target.name))?;
    tracing::info!(function = %target.name, account = %caller.account_id, "function deleted");
    if let Some(executor) = &state.executor {
        executor.function_changed(&caller.account_id, &target.name, None);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutConcurrency {
    pub reserved_concurrent_executions: Option<i64>,
}

pub async fn put_concurrency(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Concurrency>, ApiError> {
    let req: PutConcurrency = parse_json(&body)?;
    let requested = req.reserved_concurrent_executions.ok_or_else(|| {
        ApiError::InvalidParameter("ReservedConcurrentExecutions is required".into())
    })?;
    let limit = i64::from(state.account_concurrency);
    let reserved = validate::range("reservedConcurrentExecutions", requested, (0, limit))?;
    let target = state.resolve(&caller, &name, None)?;
    reject_qualifier(&target)?;
    let function = state.function(&caller, &name, None).await?;
    // Lambda keeps at least this much of an account's concurrency unreserved.
    let others = state.reserved_by_others(&caller, &function.name).await?;
    let unreserved_min = (state.account_concurrency / 10).min(100);
    if u64::from(others) + u64::from(reserved) + u64::from(unreserved_min)
        > u64::from(state.account_concurrency)
    {
        return Err(ApiError::InvalidParameter(format!(
            "Specified ReservedConcurrentExecutions for function decreases account's \
             UnreservedConcurrentExecution below its minimum value of [{unreserved_min}]."
        )));
    }
    state
        .store
        .set_reserved_concurrency(&caller.account_id, &function.name, Some(reserved))
        .await?;
    Ok(Json(Concurrency {
        reserved_concurrent_executions: Some(i64::from(reserved)),
    }))
}

pub async fn get_concurrency(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Concurrency>, ApiError> {
    reject_qualifier(&state.resolve(&caller, &name, None)?)?;
    let function = state.function(&caller, &name, None).await?;
    Ok(Json(Concurrency {
        reserved_concurrent_executions: function.reserved_concurrency.map(i64::from),
    }))
}

pub async fn delete_concurrency(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    reject_qualifier(&state.resolve(&caller, &name, None)?)?;
    let function = state.function(&caller, &name, None).await?;
    state
        .store
        .set_reserved_concurrency(&caller.account_id, &function.name, None)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) fn reject_qualifier(target: &FunctionRef) -> Result<(), ApiError> {
    match target.qualifier.as_deref() {
        None | Some("$LATEST") => Ok(()),
        Some(q) => Err(ApiError::InvalidParameter(format!(
            "This operation takes an unqualified function name: it acts on the function \
             ($LATEST), and a published version is immutable; qualifier '{q}' cannot be used here"
        ))),
    }
}

/// Decodes and validates `Code.ZipFile`, refusing the code sources Ember does not support.
fn zip_file(zip_b64: Option<&str>, s3: bool, image: bool) -> Result<Vec<u8>, ApiError> {
    if s3 {
        return Err(ApiError::InvalidParameter(
            "Code from S3 (S3Bucket/S3Key) is not supported by Ember; send Code.ZipFile".into(),
        ));
    }
    if image {
        return Err(ApiError::InvalidParameter(
            "Container images (ImageUri) are not supported by Ember; send Code.ZipFile".into(),
        ));
    }
    let b64 = zip_b64.ok_or_else(|| {
        ApiError::InvalidParameter("Please provide a source for function code (ZipFile).".into())
    })?;
    let zip = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| ApiError::InvalidParameter("ZipFile is not valid base64".into()))?;
    match package::inspect(&zip, &PackageLimits::default()) {
        Ok(_) => Ok(zip),
        Err(e) if e.is_too_large() => Err(ApiError::TooLarge(e.to_string())),
        Err(e) => Err(ApiError::InvalidParameter(e.to_string())),
    }
}

/// Parses a JSON request body, answering malformed input with a 400.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.is_empty() {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidParameter(format!("Could not parse request body: {e}")))
}

impl AppState {
    /// Resolves a function reference for `caller`. Another account's ARN resolves to a 404 as
    /// if the function did not exist: accounts cannot learn of each other's functions.
    pub(crate) fn resolve(
        &self,
        caller: &Caller,
        name: &str,
        qualifier: Option<&str>,
    ) -> Result<FunctionRef, ApiError> {
        let mut target = validate::function_ref(name)?;
        if let Some(q) = qualifier {
            if target.qualifier.as_deref().is_some_and(|t| t != q) {
                return Err(ApiError::InvalidParameter(
                    "The derived qualifier from the function name does not match the specified qualifier.".into(),
                ));
            }
            target.qualifier = Some(q.to_owned());
        }
        if target
            .account_id
            .as_deref()
            .is_some_and(|a| a != caller.account_id)
        {
            return Err(ApiError::function_not_found(&format!(
                "arn:aws:lambda:{}:{}:function:{}",
                self.region,
                target.account_id.as_deref().unwrap_or_default(),
                target.name
            )));
        }
        Ok(target)
    }

    /// Loads the caller's function named by `name` (any accepted form) and `qualifier`:
    /// `$LATEST` (or none), a published version's number, or an alias (which gives the version
    /// it points at; `function.version` says which). Anything else is Lambda's 404.
    pub(crate) async fn function(
        &self,
        caller: &Caller,
        name: &str,
        qualifier: Option<&str>,
    ) -> Result<Function, ApiError> {
        let target = self.resolve(caller, name, qualifier)?;
        self.qualified(caller, &target).await
    }

    async fn update(
        &self,
        caller: &Caller,
        target: &FunctionRef,
        revision: Option<&str>,
        change: FunctionChange<'_>,
    ) -> Result<Function, ApiError> {
        self.store
            .update_function(&caller.account_id, &target.name, revision, change)
            .await
            .map_err(|e| self.not_found_as_function(e, caller, &target.name))
            .inspect(|f| {
                tracing::info!(function = %f.name, revision = %f.revision_id, "function updated");
                if let Some(executor) = &self.executor {
                    executor.function_changed(&f.account_id, &f.name, Some(&f.revision_id));
                }
            })
    }

    /// A store error of an operation on the caller's function `name`, its `NotFound` answered
    /// as Lambda answers a missing function.
    pub(crate) fn not_found_as_function(
        &self,
        e: ember_store::StoreError,
        caller: &Caller,
        name: &str,
    ) -> ApiError {
        match e {
            ember_store::StoreError::NotFound(_) => {
                ApiError::function_not_found(&self.arn(&caller.account_id, name))
            }
            other => other.into(),
        }
    }

    pub(crate) async fn reserved_by_others(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<u32, ApiError> {
        let mut total = 0u32;
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list_functions(&caller.account_id, after.as_deref(), 500)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.name.clone());
            total += page
                .iter()
                .filter(|f| f.name != name)
                .filter_map(|f| f.reserved_concurrency)
                .sum::<u32>();
        }
        Ok(total)
    }

    pub(crate) fn arn(&self, account_id: &str, name: &str) -> String {
        format!(
            "arn:aws:lambda:{}:{account_id}:function:{name}",
            self.region
        )
    }

    /// A function's ARN as its configuration shows it: unqualified for `$LATEST`, qualified
    /// with the number for a published version.
    pub(crate) fn version_arn(&self, f: &Function) -> String {
        let arn = self.arn(&f.account_id, &f.name);
        if f.version == ember_store::LATEST {
            arn
        } else {
            format!("{arn}:{}", f.version)
        }
    }

    /// The FunctionConfiguration of a stored function.
    pub(crate) fn configuration(&self, f: &Function) -> FunctionConfiguration {
        let sha = hex::decode(&f.code_sha256).unwrap_or_default();
        FunctionConfiguration {
            function_name: f.name.clone(),
            function_arn: self.version_arn(f),
            runtime: f.spec.runtime.clone(),
            role: f.spec.role.clone(),
            handler: f.spec.handler.clone(),
            code_size: f.code_size,
            description: f.spec.description.clone(),
            timeout: f.spec.timeout_s,
            memory_size: f.spec.memory_mb,
            last_modified: aws_time(f.last_modified),
            code_sha256: base64::engine::general_purpose::STANDARD.encode(sha),
            version: f.version.clone(),
            environment: (!f.spec.environment.is_empty()).then(|| Environment {
                variables: f.spec.environment.clone(),
            }),
            tracing_config: TracingConfig {
                mode: "PassThrough".into(),
            },
            revision_id: f.revision_id.clone(),
            state: "Active".into(),
            last_update_status: "Successful".into(),
            package_type: f.spec.package_type.clone(),
            architectures: f.spec.architectures.clone(),
            ephemeral_storage: EphemeralStorage {
                size: f.spec.ephemeral_mb,
            },
            layers: crate::layers::function_layers(&f.spec.layers),
            snap_start: snap_start::SnapStartResponse::of(f),
        }
    }
}

/// Lambda's LastModified format: `2024-05-01T12:34:56.789+0000`.
pub fn aws_time(t: time::OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]+0000"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_default()
}
