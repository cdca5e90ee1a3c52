//! Validation of Lambda API input, with AWS's limits and wording. Pure functions: a request is
//! checked completely before anything is stored, so a rejected request changes nothing.

use std::collections::BTreeMap;

use crate::error::ApiError;
use crate::shapes::{
    CreateFunctionRequest, Environment, LoggingConfig, Unimplemented, Unknown,
    UpdateFunctionCodeRequest, UpdateFunctionConfigurationRequest,
};

/// Runtimes Ember accepts, besides any newer `nodejsN.x` ([`is_node_runtime`]). Whether a Python
/// or Node.js version is installed is checked when it runs.
pub const RUNTIMES: &[&str] = &[
    "provided",
    "provided.al2",
    "provided.al2023",
    "python3.9",
    "python3.10",
    "python3.11",
    "python3.12",
    "python3.13",
    "nodejs18.x",
    "nodejs20.x",
    "nodejs22.x",
    "nodejs24.x",
];

/// Whether `value` is `nodejsN.x` for a Node.js major `N` of 18 or more.
pub fn is_node_runtime(value: &str) -> bool {
    value
        .strip_prefix("nodejs")
        .and_then(|rest| rest.strip_suffix(".x"))
        .filter(|n| !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| n >= 18)
}

pub const MEMORY_MB: (i64, i64) = (128, 10_240);
pub const TIMEOUT_S: (i64, i64) = (1, 900);
pub const EPHEMERAL_MB: (u32, u32) = (512, 10_240);
pub const ENV_MAX_BYTES: usize = 4096;
pub const DEFAULT_MEMORY_MB: u32 = 128;
pub const DEFAULT_TIMEOUT_S: u32 = 3;
pub const DEFAULT_EPHEMERAL_MB: u32 = 512;

/// Environment variable names Lambda reserves for itself.
const RESERVED_ENV: &[&str] = &[
    "_HANDLER",
    "_X_AMZN_TRACE_ID",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_LAMBDA_RUNTIME_API",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
];

/// A function name, as given in a path or body, resolved against the caller's account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRef {
    pub name: String,
    /// The account id written in the ARN, if one was.
    pub account_id: Option<String>,
    pub qualifier: Option<String>,
}

/// Parses a function name, a partial ARN (`123456789012:function:name`) or a full ARN
/// (`arn:aws:lambda:region:123456789012:function:name[:qualifier]`).
pub fn function_ref(input: &str) -> Result<FunctionRef, ApiError> {
    let invalid = || {
        ApiError::InvalidParameter(format!(
            "1 validation error detected: Value '{input}' at 'functionName' failed to satisfy \
             constraint: Member must satisfy regular expression pattern: \
             (arn:(aws[a-zA-Z-]*)?:lambda:)?([a-z]{{2}}((-gov)|(-iso([a-z]?)))?-[a-z]+-\\d{{1}}:)?\
             (\\d{{12}}:)?(function:)?([a-zA-Z0-9-_]+)(:(\\$LATEST|[a-zA-Z0-9-_]+))?"
        ))
    };
    if input.is_empty() || input.len() > 170 {
        return Err(invalid());
    }
    let parts: Vec<&str> = input.split(':').collect();
    let (account_id, name, qualifier) = match parts.as_slice() {
        [name] => (None, *name, None),
        [name, qualifier] => (None, *name, Some(*qualifier)),
        [account, "function", name] => (Some(*account), *name, None),
        [account, "function", name, qualifier] => (Some(*account), *name, Some(*qualifier)),
        ["arn", partition, "lambda", region, account, "function", name, rest @ ..]
            if partition.starts_with("aws") && is_region(region) && rest.len() <= 1 =>
        {
            (Some(*account), *name, rest.first().copied())
        }
        _ => return Err(invalid()),
    };
    if let Some(account) = account_id {
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
    }
    if !is_name(name) || name.len() > 64 {
        return Err(invalid());
    }
    if let Some(q) = qualifier {
        if q != "$LATEST" && !is_name(q) {
            return Err(invalid());
        }
    }
    Ok(FunctionRef {
        name: name.to_owned(),
        account_id: account_id.map(str::to_owned),
        qualifier: qualifier.map(str::to_owned),
    })
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()))
        && parts
            .last()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

/// A list operation's page size from its `MaxItems` query parameter: `page` when absent,
/// else a whole number in AWS's range `1..=most`, of which at most `page` are answered (Lambda
/// pages ListFunctions by 50 whatever larger number, up to 10,000, is asked for).
pub fn max_items(value: Option<&str>, most: u32, page: u32) -> Result<u32, ApiError> {
    let Some(text) = value else {
        return Ok(page);
    };
    let n: i64 = text.parse().map_err(|_| {
        ApiError::InvalidParameter(format!("MaxItems must be an integer, not '{text}'"))
    })?;
    Ok(range("maxItems", n, (1, i64::from(most)))?.min(page))
}

/// Checks a field's value against AWS's inclusive range, in AWS's validation wording.
pub fn range(field: &str, value: i64, (min, max): (i64, i64)) -> Result<u32, ApiError> {
    if value < min {
        return Err(ApiError::InvalidParameter(format!(
            "1 validation error detected: Value '{value}' at '{field}' failed to satisfy \
             constraint: Member must have value greater than or equal to {min}"
        )));
    }
    if value > max {
        return Err(ApiError::InvalidParameter(format!(
            "1 validation error detected: Value '{value}' at '{field}' failed to satisfy \
             constraint: Member must have value less than or equal to {max}"
        )));
    }
    u32::try_from(value).map_err(|_| ApiError::InvalidParameter(format!("{field} is out of range")))
}

pub fn runtime(value: &str) -> Result<String, ApiError> {
    if RUNTIMES.contains(&value) || is_node_runtime(value) {
        Ok(value.to_owned())
    } else {
        Err(ApiError::InvalidParameter(format!(
            "Value {value} at 'runtime' failed to satisfy constraint: Member must satisfy enum \
             value set: [{}] or be a valid ARN",
            RUNTIMES.join(", ")
        )))
    }
}

pub fn handler(value: &str) -> Result<String, ApiError> {
    if value.is_empty() || value.len() > 128 || value.chars().any(char::is_whitespace) {
        return Err(ApiError::InvalidParameter(format!(
            "1 validation error detected: Value '{value}' at 'handler' failed to satisfy \
             constraint: Member must satisfy regular expression pattern: [^\\s]+ and have \
             length at most 128"
        )));
    }
    Ok(value.to_owned())
}

/// A Python handler must name a module and a function: `module.function`; a Node.js handler a
/// file (its path under the task root, without extension) and an export: `index.handler`,
/// `src/app.handler`.
pub fn handler_for_runtime(runtime: Option<&str>, handler: Option<&str>) -> Result<(), ApiError> {
    if let (Some(rt), Some(h)) = (runtime, handler) {
        if rt.starts_with("python") {
            let ok = h
                .rsplit_once('.')
                .is_some_and(|(module, func)| !module.is_empty() && !func.is_empty());
            if !ok {
                return Err(ApiError::InvalidParameter(format!(
                    "Handler '{h}' must have the form module.function for runtime {rt}"
                )));
            }
        } else if rt.starts_with("nodejs") {
            // The file is everything up to the first '.' after the last '/'.
            let (dir, name) = h.rsplit_once('/').unwrap_or(("", h));
            let ok = !dir.starts_with('/')
                && name
                    .split_once('.')
                    .is_some_and(|(file, export)| !file.is_empty() && !export.is_empty());
            if !ok {
                return Err(ApiError::InvalidParameter(format!(
                    "Handler '{h}' must have the form file.export for runtime {rt}"
                )));
            }
        }
    }
    Ok(())
}

pub fn role(value: &str) -> Result<String, ApiError> {
    let ok = value
        .strip_prefix("arn:")
        .and_then(|rest| rest.split_once(":iam::"))
        .and_then(|(partition, rest)| {
            (partition.is_empty() || partition.starts_with("aws")).then_some(rest)
        })
        .and_then(|rest| rest.split_once(":role/"))
        .is_some_and(|(account, role)| {
            account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && !role.is_empty()
                && role
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+=,.@-_/".contains(&b))
        });
    if ok {
        Ok(value.to_owned())
    } else {
        Err(ApiError::InvalidParameter(format!(
            "1 validation error detected: Value '{value}' at 'role' failed to satisfy \
             constraint: Member must satisfy regular expression pattern: \
             arn:(aws[a-zA-Z-]*)?:iam::\\d{{12}}:role/?[a-zA-Z_0-9+=,.@\\-_/]+"
        )))
    }
}

pub fn description(value: &str) -> Result<String, ApiError> {
    if value.chars().count() > 256 {
        return Err(ApiError::InvalidParameter(
            "1 validation error detected: Value at 'description' failed to satisfy constraint: \
             Member must have length less than or equal to 256"
                .into(),
        ));
    }
    Ok(value.to_owned())
}

pub fn environment(env: &Environment) -> Result<BTreeMap<String, String>, ApiError> {
    let vars = &env.variables;
    for key in vars.keys() {
        let mut chars = key.chars();
        let well_formed = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && key.len() >= 2;
        if !well_formed {
            return Err(ApiError::InvalidParameter(format!(
                "1 validation error detected: Value at 'environment.variables' failed to satisfy \
                 constraint: Map keys must satisfy constraint: [Member must satisfy regular \
                 expression pattern: [a-zA-Z]([a-zA-Z0-9_])+] (key '{key}')"
            )));
        }
    }
    let reserved: Vec<&str> = vars
        .keys()
        .map(String::as_str)
        .filter(|k| RESERVED_ENV.contains(k))
        .collect();
    if !reserved.is_empty() {
        return Err(ApiError::InvalidParameter(format!(
            "Lambda was unable to configure your environment variables because the environment \
             variables you have provided contains reserved keys that are currently not supported \
             for modification. Reserved keys used in this request: {}",
            reserved.join(", ")
        )));
    }
    let measured = serde_json::to_string(vars).unwrap_or_default();
    if measured.len() > ENV_MAX_BYTES {
        return Err(ApiError::InvalidParameter(format!(
            "Lambda was unable to configure your environment variables because the environment \
             variables you have provided exceeded the 4KB limit. String measured: {} bytes",
            measured.len()
        )));
    }
    Ok(vars.clone())
}

pub fn ephemeral(size: u32) -> Result<u32, ApiError> {
    range(
        "ephemeralStorage.size",
        i64::from(size),
        (i64::from(EPHEMERAL_MB.0), i64::from(EPHEMERAL_MB.1)),
    )
}

/// The host's architecture in Lambda's spelling.
pub fn host_architecture() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "x86_64"
    }
}

pub fn architectures(value: Option<&[String]>) -> Result<Vec<String>, ApiError> {
    match value {
        None => Ok(vec![host_architecture().to_owned()]),
        Some([one]) if one == host_architecture() => Ok(vec![one.clone()]),
        Some([one]) if one == "x86_64" || one == "arm64" => {
            Err(ApiError::InvalidParameter(format!(
                "Architecture {one} is not supported by this Ember host; it runs {}",
                host_architecture()
            )))
        }
        Some(_) => Err(ApiError::InvalidParameter(
            "1 validation error detected: Value at 'architectures' failed to satisfy constraint: \
             Member must have length 1 and satisfy enum value set: [x86_64, arm64]"
                .into(),
        )),
    }
}

/// A member of the Lambda API that Ember does not implement, refused by name.
fn refuse(member: &str, detail: &str) -> ApiError {
    ApiError::InvalidParameter(format!("{member} {detail}"))
}

/// Checks a value of one of the model's enums, in AWS's validation wording.
pub(crate) fn enum_value(field: &str, value: &str, allowed: &[&str]) -> Result<(), ApiError> {
    if allowed.contains(&value) {
        return Ok(());
    }
    Err(ApiError::InvalidParameter(format!(
        "1 validation error detected: Value '{}' at '{field}' failed to satisfy constraint: \
         Member must satisfy enum value set: [{}]",
        value.chars().take(100).collect::<String>(),
        allowed.join(", ")
    )))
}

/// `PackageType`: only `Zip` is implemented.
pub fn package_type(value: Option<&str>) -> Result<(), ApiError> {
    let Some(value) = value else { return Ok(()) };
    enum_value("packageType", value, &["Zip", "Image"])?;
    if value == "Image" {
        return Err(refuse(
            "PackageType",
            "Image is not supported by Ember (no container images); upload a .zip file archive",
        ));
    }
    Ok(())
}

/// Refuses members no version of the Lambda API has in `operation`'s request.
pub fn unknown(members: &Unknown, operation: &str) -> Result<(), ApiError> {
    match members.keys().next() {
        None => Ok(()),
        Some(name) => Err(ApiError::InvalidParameter(format!(
            "{} is not a parameter of {operation}; Ember refuses parameters it does not know \
             rather than ignoring them",
            name.chars().take(100).collect::<String>()
        ))),
    }
}

/// The members of CreateFunction and UpdateFunctionConfiguration that Ember does not
/// implement: each is accepted only at its no-op value (absent, empty, or the default, e.g.
/// `TracingConfig: {Mode: PassThrough}`), anything else is refused, naming the member.
/// `function` is the function's name (its default log group is `/aws/lambda/<function>`).
pub fn unimplemented(u: &Unimplemented, function: &str) -> Result<(), ApiError> {
    if let Some(vpc) = &u.vpc_config {
        if !vpc.subnet_ids.is_empty()
            || !vpc.security_group_ids.is_empty()
            || vpc.ipv6_allowed_for_dual_stack == Some(true)
        {
            return Err(refuse(
                "VpcConfig",
                "is not supported by Ember (a function has no network beyond its own loopback); \
                 omit it or send empty SubnetIds and SecurityGroupIds",
            ));
        }
    }
    let dead_letter = u.dead_letter_config.as_ref();
    if dead_letter
        .and_then(|d| d.target_arn.as_deref())
        .is_some_and(|arn| !arn.is_empty())
    {
        return Err(refuse(
            "DeadLetterConfig",
            "is not supported by Ember (a failed Event invocation is retried twice, then \
             dropped); omit it or send an empty TargetArn",
        ));
    }
    if u.kms_key_arn.as_deref().is_some_and(|k| !k.is_empty()) {
        return Err(refuse(
            "KMSKeyArn",
            "is not supported by Ember (no customer-managed keys); omit it or send an empty one",
        ));
    }
    if let Some(mode) = u.tracing_config.as_ref().and_then(|t| t.mode.as_deref()) {
        enum_value("tracingConfig.mode", mode, &["Active", "PassThrough"])?;
        if mode != "PassThrough" {
            return Err(refuse(
                "TracingConfig",
                "Mode Active is not supported by Ember (no X-Ray tracing); omit it or use \
                 PassThrough",
            ));
        }
    }
    if u.file_system_configs
        .as_ref()
        .is_some_and(|f| !f.is_empty())
    {
        return Err(refuse(
            "FileSystemConfigs",
            "are not supported by Ember (no file system mounts)",
        ));
    }
    if let Some(image) = &u.image_config {
        let empty = image.entry_point.as_deref().unwrap_or_default().is_empty()
            && image.command.as_deref().unwrap_or_default().is_empty()
            && image
                .working_directory
                .as_deref()
                .unwrap_or_default()
                .is_empty();
        if !empty {
            return Err(refuse(
                "ImageConfig",
                "is not supported by Ember (no container images)",
            ));
        }
    }
    if let Some(logging) = &u.logging_config {
        logging_config(logging, function)?;
    }
    for (member, value) in [
        ("CapacityProviderConfig", &u.capacity_provider_config),
        ("DurableConfig", &u.durable_config),
        ("RuntimeConfig", &u.runtime_config),
        ("AcceleratorConfig", &u.accelerator_config),
    ] {
        if value.is_some() {
            return Err(refuse(member, "is not supported by Ember"));
        }
    }
    Ok(())
}

/// `LoggingConfig`: Ember keeps a function's logs as text, unfiltered, under its own name, so
/// only `LogFormat: Text` and the default log group `/aws/lambda/<function>` are accepted.
fn logging_config(logging: &LoggingConfig, function: &str) -> Result<(), ApiError> {
    if let Some(format) = logging.log_format.as_deref() {
        enum_value("loggingConfig.logFormat", format, &["JSON", "Text"])?;
        if format != "Text" {
            return Err(refuse(
                "LoggingConfig",
                "LogFormat JSON is not supported by Ember (logs are kept as text); omit it or use \
                 Text",
            ));
        }
    }
    let levels = [
        ("ApplicationLogLevel", &logging.application_log_level),
        ("SystemLogLevel", &logging.system_log_level),
    ];
    for (member, level) in levels {
        if level.is_some() {
            return Err(refuse(
                "LoggingConfig",
                &format!("{member} is not supported by Ember (logs are kept whole, as text)"),
            ));
        }
    }
    let default_group = format!("/aws/lambda/{function}");
    if logging
        .log_group
        .as_deref()
        .is_some_and(|g| g != default_group)
    {
        return Err(refuse(
            "LoggingConfig",
            &format!(
                "LogGroup is not supported by Ember other than the function's own, \
                 {default_group}"
            ),
        ));
    }
    Ok(())
}

/// Refuses the members of CreateFunction beyond [`unimplemented`]'s that Ember does not
/// implement (`PublishTo`, a code signing config, …). `Publish` is honoured (see
/// `crate::versions`) and `Tags` are checked by `crate::tags::tags`.
pub fn create_unimplemented(req: &CreateFunctionRequest, function: &str) -> Result<(), ApiError> {
    unknown(&req.unknown, "CreateFunction")?;
    publish(req.publish, req.publish_to.as_deref())?;
    if req.code_signing_config_arn.is_some() {
        return Err(refuse(
            "CodeSigningConfigArn",
            "is not supported by Ember (no code signing)",
        ));
    }
    if req.tenancy_config.is_some() {
        return Err(refuse("TenancyConfig", "is not supported by Ember"));
    }
    package_type(req.package_type.as_deref())?;
    if let Some(code) = &req.code {
        source_kms_key("Code.SourceKMSKeyArn", code.source_kms_key_arn.as_deref())?;
    }
    unimplemented(&req.unimplemented, function)
}

/// The members of UpdateFunctionConfiguration that Ember does not implement.
pub fn update_unimplemented(
    req: &UpdateFunctionConfigurationRequest,
    function: &str,
) -> Result<(), ApiError> {
    unknown(&req.unknown, "UpdateFunctionConfiguration")?;
    unimplemented(&req.unimplemented, function)
}

/// The members of UpdateFunctionCode that Ember does not implement.
pub fn code_update_unimplemented(req: &UpdateFunctionCodeRequest) -> Result<(), ApiError> {
    unknown(&req.unknown, "UpdateFunctionCode")?;
    publish(req.publish, req.publish_to.as_deref())?;
    source_kms_key("SourceKMSKeyArn", req.source_kms_key_arn.as_deref())
}

/// `Publish: true` publishes a version (the handler does); `PublishTo` (publishing to
/// `$LATEST.PUBLISHED`, for capacity providers) is not implemented.
fn publish(_publish: Option<bool>, publish_to: Option<&str>) -> Result<(), ApiError> {
    if publish_to.is_some() {
        return Err(refuse(
            "PublishTo",
            "is not supported by Ember (no capacity providers); use Publish or PublishVersion",
        ));
    }
    Ok(())
}

fn source_kms_key(member: &str, value: Option<&str>) -> Result<(), ApiError> {
    if value.is_some_and(|k| !k.is_empty()) {
        return Err(refuse(
            member,
            "is not supported by Ember (no customer-managed keys); omit it or send an empty one",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// A CreateFunction body: a valid one with `extra`'s members added.
    fn create_request(extra: Value) -> CreateFunctionRequest {
        let mut body = json!({
            "FunctionName": "f",
            "Runtime": "python3.11",
            "Role": "arn:aws:iam::123456789012:role/r",
            "Handler": "app.handler",
            "Code": {"ZipFile": "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="},
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        serde_json::from_value(body).unwrap()
    }

    /// The member an error names first, or "" when the request is accepted.
    fn refused_member(result: Result<(), ApiError>) -> String {
        match result {
            Ok(()) => String::new(),
            Err(ApiError::InvalidParameter(m)) => m,
            Err(other) => panic!("not an InvalidParameterValueException: {other:?}"),
        }
    }

    /// Members common to CreateFunction and UpdateFunctionConfiguration: (members, the start of
    /// the error message; "" when the value is a no-op and accepted).
    fn common_cases() -> Vec<(Value, &'static str)> {
        vec![
            (json!({}), ""),
            (json!({"VpcConfig": {}}), ""),
            (
                json!({"VpcConfig": {"SubnetIds": [], "SecurityGroupIds": []}}),
                "",
            ),
            (
                json!({"VpcConfig": {"SubnetIds": ["subnet-1"]}}),
                "VpcConfig ",
            ),
            (
                json!({"VpcConfig": {"SecurityGroupIds": ["sg-1"]}}),
                "VpcConfig ",
            ),
            (
                json!({"VpcConfig": {"Ipv6AllowedForDualStack": true}}),
                "VpcConfig ",
            ),
            (json!({"DeadLetterConfig": {}}), ""),
            (json!({"DeadLetterConfig": {"TargetArn": ""}}), ""),
            (
                json!({"DeadLetterConfig": {"TargetArn": "arn:aws:sqs:us-east-1:123456789012:q"}}),
                "DeadLetterConfig ",
            ),
            (json!({"KMSKeyArn": ""}), ""),
            (
                json!({"KMSKeyArn": "arn:aws:kms:us-east-1:123456789012:key/k"}),
                "KMSKeyArn ",
            ),
            (json!({"TracingConfig": {}}), ""),
            (json!({"TracingConfig": {"Mode": "PassThrough"}}), ""),
            (
                json!({"TracingConfig": {"Mode": "Active"}}),
                "TracingConfig Mode Active",
            ),
            (
                json!({"TracingConfig": {"Mode": "Loud"}}),
                "1 validation error detected: Value 'Loud' at 'tracingConfig.mode'",
            ),
            (json!({"FileSystemConfigs": []}), ""),
            (
                json!({"FileSystemConfigs": [{"Arn": "arn:aws:elasticfilesystem:us-east-1:123456789012:access-point/fsap-0123456789abcdef0", "LocalMountPath": "/mnt/efs"}]}),
                "FileSystemConfigs ",
            ),
            (json!({"ImageConfig": {}}), ""),
            (
                json!({"ImageConfig": {"Command": [], "EntryPoint": [], "WorkingDirectory": ""}}),
                "",
            ),
            (
                json!({"ImageConfig": {"Command": ["app.handler"]}}),
                "ImageConfig ",
            ),
            (json!({"LoggingConfig": {"LogFormat": "Text"}}), ""),
            (
                json!({"LoggingConfig": {"LogFormat": "Text", "LogGroup": "/aws/lambda/f"}}),
                "",
            ),
            (
                json!({"LoggingConfig": {"LogFormat": "JSON"}}),
                "LoggingConfig LogFormat JSON",
            ),
            (
                json!({"LoggingConfig": {"LogFormat": "XML"}}),
                "1 validation error detected: Value 'XML' at 'loggingConfig.logFormat'",
            ),
            (
                json!({"LoggingConfig": {"ApplicationLogLevel": "DEBUG"}}),
                "LoggingConfig ApplicationLogLevel",
            ),
            (
                json!({"LoggingConfig": {"SystemLogLevel": "WARN"}}),
                "LoggingConfig SystemLogLevel",
            ),
            (
                json!({"LoggingConfig": {"LogGroup": "/custom/group"}}),
                "LoggingConfig LogGroup",
            ),
            (
                json!({"CapacityProviderConfig": {"LambdaManagedInstancesCapacityProviderConfig": {}}}),
                "CapacityProviderConfig ",
            ),
            (
                json!({"DurableConfig": {"RetentionPeriodInDays": 1}}),
                "DurableConfig ",
            ),
            (
                json!({"RuntimeConfig": {"RuntimeArn": "x", "RuntimeAlias": "y"}}),
                "RuntimeConfig ",
            ),
            (
                json!({"AcceleratorConfig": {"AcceleratorMemorySize": 1}}),
                "AcceleratorConfig ",
            ),
            (
                json!({"NotAParameter": 1}),
                "NotAParameter is not a parameter of ",
            ),
            (
                json!({"tracingconfig": {"Mode": "Active"}}),
                "tracingconfig is not a parameter of ",
            ),
        ]
    }

    #[test]
    fn max_items_pages_within_aws_range() {
        let cases: [(Option<&str>, u32, Result<u32, &str>); 6] = [
            (None, 10_000, Ok(50)),
            (Some("7"), 50, Ok(7)),
            (Some("10000"), 10_000, Ok(50)),
            (Some("51"), 50, Err("less than or equal to 50")),
            (Some("0"), 50, Err("greater than or equal to 1")),
            (
                Some("many"),
                50,
                Err("MaxItems must be an integer, not 'many'"),
            ),
        ];
        for (value, most, want) in cases {
            match (max_items(value, most, 50), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{value:?}"),
                (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{value:?}: {e}"),
                (got, want) => panic!("{value:?}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn create_refuses_what_it_does_not_implement_by_name() {
        let mut cases = common_cases();
        cases.extend([
            (json!({"Publish": false}), ""),
            (json!({"Publish": true}), ""),
            (json!({"PublishTo": "LATEST_PUBLISHED"}), "PublishTo "),
            (json!({"Tags": {}}), ""),
            (json!({"Tags": {"team": "a"}}), ""),
            (
                json!({"CodeSigningConfigArn": "arn:aws:lambda:us-east-1:123456789012:code-signing-config:csc-1"}),
                "CodeSigningConfigArn ",
            ),
            (json!({"TenancyConfig": {"TenantIsolationMode": "PER_TENANT"}}), "TenancyConfig "),
            (json!({"PackageType": "Zip"}), ""),
            (json!({"PackageType": "Image"}), "PackageType Image"),
            (json!({"PackageType": "Tarball"}), "1 validation error detected: Value 'Tarball' at 'packageType'"),
            (json!({"Code": {"ZipFile": "", "SourceKMSKeyArn": ""}}), ""),
            (json!({"Code": {"ZipFile": "", "SourceKMSKeyArn": "arn:aws:kms:us-east-1:123456789012:key/k"}}), "Code.SourceKMSKeyArn "),
            (json!({"RevisionId": "r"}), "RevisionId is not a parameter of CreateFunction"),
        ]);
        for (extra, refused) in cases {
            let req = create_request(extra.clone());
            let message = refused_member(create_unimplemented(&req, "f"));
            assert!(message.starts_with(refused), "{extra}: {message:?}");
            assert_eq!(
                message.is_empty(),
                refused.is_empty(),
                "{extra}: {message:?}"
            );
        }
    }

    #[test]
    fn configuration_update_refuses_what_it_does_not_implement_by_name() {
        let mut cases = common_cases();
        cases.extend([
            (json!({"RevisionId": "r"}), ""),
            // Members of CreateFunction only: not parameters of an update.
            (
                json!({"Publish": false}),
                "Publish is not a parameter of UpdateFunctionConfiguration",
            ),
            (
                json!({"Tags": {}}),
                "Tags is not a parameter of UpdateFunctionConfiguration",
            ),
            (
                json!({"FunctionName": "f"}),
                "FunctionName is not a parameter of ",
            ),
        ]);
        for (extra, refused) in cases {
            let req: UpdateFunctionConfigurationRequest =
                serde_json::from_value(extra.clone()).unwrap();
            let message = refused_member(update_unimplemented(&req, "f"));
            assert!(message.starts_with(refused), "{extra}: {message:?}");
            assert_eq!(
                message.is_empty(),
                refused.is_empty(),
                "{extra}: {message:?}"
            );
        }
    }

    #[test]
    fn code_update_refuses_what_it_does_not_implement_by_name() {
        let cases = [
            (json!({"ZipFile": ""}), ""),
            (
                json!({"ZipFile": "", "Publish": false, "DryRun": true, "RevisionId": "r"}),
                "",
            ),
            (json!({"ZipFile": "", "Publish": true}), ""),
            (
                json!({"ZipFile": "", "PublishTo": "LATEST_PUBLISHED"}),
                "PublishTo ",
            ),
            (json!({"ZipFile": "", "SourceKMSKeyArn": ""}), ""),
            (
                json!({"ZipFile": "", "SourceKMSKeyArn": "arn:aws:kms:us-east-1:123456789012:key/k"}),
                "SourceKMSKeyArn ",
            ),
            (
                json!({"ZipFile": "", "Zipfile": ""}),
                "Zipfile is not a parameter of UpdateFunctionCode",
            ),
        ];
        for (body, refused) in cases {
            let req: UpdateFunctionCodeRequest = serde_json::from_value(body.clone()).unwrap();
            let message = refused_member(code_update_unimplemented(&req));
            assert!(message.starts_with(refused), "{body}: {message:?}");
            assert_eq!(
                message.is_empty(),
                refused.is_empty(),
                "{body}: {message:?}"
            );
        }
    }

    #[test]
    fn nested_members_and_types_are_checked_when_parsed() {
        // Unknown members inside a known structure, and values of the wrong type, do not parse.
        for extra in [
            json!({"TracingConfig": {"Mode": "PassThrough", "Sampling": 1}}),
            json!({"Environment": {"Variables": {}, "Secrets": {}}}),
            json!({"Code": {"ZipFile": "", "Url": "http://x"}}),
            json!({"Tags": ["a"]}),
            json!({"Publish": "yes"}),
            json!({"DeadLetterConfig": "arn"}),
        ] {
            let mut body = json!({"FunctionName": "f"});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            assert!(
                serde_json::from_value::<CreateFunctionRequest>(body).is_err(),
                "{extra}"
            );
        }
    }

    #[test]
    fn function_names_in_every_accepted_form() {
        let cases: &[(&str, &str, Option<&str>, Option<&str>)] = &[
            ("my-fn_1", "my-fn_1", None, None),
            ("my-fn:$LATEST", "my-fn", None, Some("$LATEST")),
            ("123456789012:function:f", "f", Some("123456789012"), None),
            (
                "arn:aws:lambda:us-east-1:123456789012:function:f",
                "f",
                Some("123456789012"),
                None,
            ),
            (
                "arn:aws:lambda:eu-west-2:123456789012:function:f:prod",
                "f",
                Some("123456789012"),
                Some("prod"),
            ),
        ];
        for (input, name, account, qualifier) in cases {
            let r = function_ref(input).unwrap();
            assert_eq!(r.name, *name, "{input}");
            assert_eq!(r.account_id.as_deref(), *account, "{input}");
            assert_eq!(r.qualifier.as_deref(), *qualifier, "{input}");
        }
    }

    #[test]
    fn malformed_function_names_are_rejected() {
        for input in [
            "",
            "has space",
            "a/b",
            "x".repeat(65).as_str(),
            "12345:function:f",
            "arn:aws:lambda:nowhere:123456789012:function:f",
            "arn:aws:s3:us-east-1:123456789012:function:f",
            "arn:aws:lambda:us-east-1:123456789012:function:f:v:extra",
            "f:bad qualifier",
        ] {
            assert!(function_ref(input).is_err(), "{input:?} must be rejected");
        }
    }

    #[test]
    fn ranges_follow_aws_bounds() {
        assert_eq!(range("memorySize", 128, MEMORY_MB).unwrap(), 128);
        assert_eq!(range("memorySize", 10_240, MEMORY_MB).unwrap(), 10_240);
        assert!(range("memorySize", 127, MEMORY_MB).is_err());
        assert!(range("memorySize", 10_241, MEMORY_MB).is_err());
        assert!(range("timeout", 0, TIMEOUT_S).is_err());
        assert!(range("timeout", 901, TIMEOUT_S).is_err());
    }

    #[test]
    fn environment_limits() {
        let env = |pairs: &[(&str, String)]| Environment {
            variables: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        };
        assert!(environment(&env(&[("GREETING", "hi".into())])).is_ok());
        assert!(environment(&env(&[("AWS_REGION", "x".into())])).is_err());
        assert!(environment(&env(&[("1BAD", "x".into())])).is_err());
        assert!(environment(&env(&[("BIG", "x".repeat(4080))])).is_ok());
        assert!(environment(&env(&[("BIG", "x".repeat(4100))])).is_err());
    }

    #[test]
    fn roles_and_handlers() {
        assert!(role("arn:aws:iam::123456789012:role/lambda-role").is_ok());
        assert!(role("arn:aws:iam::123456789012:user/bob").is_err());
        assert!(role("lambda-role").is_err());
        assert!(handler("app.handler").is_ok());
        assert!(handler("has space").is_err());
        assert!(handler_for_runtime(Some("python3.11"), Some("app.handler")).is_ok());
        assert!(handler_for_runtime(Some("python3.11"), Some("handler")).is_err());
        assert!(handler_for_runtime(Some("provided.al2023"), Some("anything")).is_ok());
        assert!(handler_for_runtime(Some("nodejs20.x"), Some("index.handler")).is_ok());
        assert!(handler_for_runtime(Some("nodejs20.x"), Some("src/app.handler")).is_ok());
        assert!(handler_for_runtime(Some("nodejs22.x"), Some("index.a.b")).is_ok());
        for bad in [
            "index",
            "index.",
            ".handler",
            "src/app",
            "src.d/app",
            "/abs/app.handler",
        ] {
            assert!(
                handler_for_runtime(Some("nodejs20.x"), Some(bad)).is_err(),
                "{bad}"
            );
        }
        for ok in [
            "nodejs18.x",
            "nodejs20.x",
            "nodejs22.x",
            "nodejs24.x",
            "nodejs26.x",
        ] {
            assert_eq!(runtime(ok).unwrap(), ok);
        }
        for bad in [
            "nodejs16.x",
            "nodejs",
            "nodejs20",
            "nodejs.x",
            "nodejs20.y",
            "nodejsx.x",
        ] {
            assert!(runtime(bad).is_err(), "{bad}");
        }
    }
}
