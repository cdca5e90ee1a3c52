//! Validation of Lambda API input, with AWS's limits and wording. Pure functions: a request is
//! checked completely before anything is stored, so a rejected request changes nothing.

use std::collections::BTreeMap;

use crate::error::ApiError;
use crate::shapes::Environment;

/// Runtimes Ember accepts. Whether a Python version is installed is checked when it runs.
pub const RUNTIMES: &[&str] = &[
    "provided",
    "provided.al2",
    "provided.al2023",
    "python3.9",
    "python3.10",
    "python3.11",
    "python3.12",
    "python3.13",
];

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
    if RUNTIMES.contains(&value) {
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

/// A Python handler must name a module and a function: `module.function`.
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

/// Rejects options that name AWS features Ember does not provide, rather than ignoring them.
pub fn unsupported(
    layers: Option<&[String]>,
    vpc_subnets: Option<&[String]>,
) -> Result<(), ApiError> {
    if layers.is_some_and(|l| !l.is_empty()) {
        return Err(ApiError::InvalidParameter(
            "Layers are not supported by Ember".into(),
        ));
    }
    if vpc_subnets.is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::InvalidParameter(
            "VpcConfig is not supported by Ember".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(runtime("nodejs20.x").is_err());
    }
}
