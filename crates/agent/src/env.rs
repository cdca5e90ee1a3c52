//! The environment of a container's runtime process, as Lambda sets it.

use std::collections::BTreeMap;

use ember_protocol::{FunctionSpec, SessionCredentials};
use time::Date;
use uuid::Uuid;

/// Where the function code is mounted.
pub const TASK_ROOT: &str = "/var/task";
/// Where the runtime's own components live (awslambdaric, bootstrap scripts).
pub const RUNTIME_DIR: &str = "/var/runtime";

const PATH: &str = "/usr/local/bin:/usr/bin/:/bin:/opt/bin";
const LD_LIBRARY_PATH: &str =
    "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib";

/// Keys a function's own environment cannot set. AWS refuses them when the function is created;
/// should one reach the agent anyway, the agent's value wins and the others are left unset.
///
/// `AWS_LAMBDA_MAX_CONCURRENCY` is among them: runtime clients read it to poll `/next` from many
/// threads at once, which an Ember container (one invocation at a time) does not support.
pub const RESERVED: &[&str] = &[
    "_HANDLER",
    "_X_AMZN_TRACE_ID",
    "AWS_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_DEFAULT_REGION",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_LAMBDA_MAX_CONCURRENCY",
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_REGION",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "LAMBDA_RUNTIME_DIR",
    "LAMBDA_TASK_ROOT",
    "TZ",
];

pub fn is_reserved(key: &str) -> bool {
    RESERVED.contains(&key)
}

/// The environment of a function's runtime process.
///
/// `runtime_api` is the container's Runtime API address (`host:port`); `log_stream` its log stream
/// name (see [`log_stream_name`]). The function's own variables may override `PATH` and
/// `LD_LIBRARY_PATH`, as on Lambda, but not the [`RESERVED`] ones.
pub fn container_env(
    function: &FunctionSpec,
    runtime_api: &str,
    log_stream: &str,
) -> BTreeMap<String, String> {
    let defaults = [("PATH", PATH), ("LD_LIBRARY_PATH", LD_LIBRARY_PATH)]
        .map(|(key, value)| (key.to_owned(), value.to_owned()));
    let own = function
        .environment
        .iter()
        .filter(|(key, _)| !is_reserved(key))
        .map(|(key, value)| (key.clone(), value.clone()));
    let reserved = [
        ("_HANDLER", function.handler.clone()),
        ("LAMBDA_TASK_ROOT", TASK_ROOT.to_owned()),
        ("LAMBDA_RUNTIME_DIR", RUNTIME_DIR.to_owned()),
        ("AWS_LAMBDA_FUNCTION_NAME", function.name.clone()),
        (
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            function.memory_mb.to_string(),
        ),
        ("AWS_LAMBDA_FUNCTION_VERSION", function.version.clone()),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{}", function.name),
        ),
        ("AWS_LAMBDA_LOG_STREAM_NAME", log_stream.to_owned()),
        ("AWS_LAMBDA_RUNTIME_API", runtime_api.to_owned()),
        ("AWS_REGION", function.region.clone()),
        ("AWS_DEFAULT_REGION", function.region.clone()),
        ("TZ", ":UTC".to_owned()),
    ]
    .map(|(key, value)| (key.to_owned(), value));

    defaults.into_iter().chain(own).chain(reserved).collect()
}

/// `env` with the execution environment's own credentials under Lambda's names
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`). They are [`RESERVED`]:
/// [`container_env`] dropped whatever the function set under them, so these are the only ones.
pub fn with_credentials(
    mut env: BTreeMap<String, String>,
    credentials: Option<&SessionCredentials>,
) -> BTreeMap<String, String> {
    if let Some(credentials) = credentials {
        env.insert(
            "AWS_ACCESS_KEY_ID".into(),
            credentials.access_key_id.clone(),
        );
        env.insert(
            "AWS_SECRET_ACCESS_KEY".into(),
            credentials.secret_access_key.clone(),
        );
        env.insert(
            "AWS_SESSION_TOKEN".into(),
            credentials.session_token.clone(),
        );
    }
    env
}

/// `env` with `AWS_ENDPOINT_URL_LAMBDA` at `url` (Ember's API as the container reaches it), so
/// that the AWS SDKs' Lambda clients call Ember with no configuration of the function's own.
/// Not reserved: a function that sets it keeps its own, as on Lambda.
pub fn with_endpoint(mut env: BTreeMap<String, String>, url: &str) -> BTreeMap<String, String> {
    env.entry(crate::net::plan::ENDPOINT_ENV.into())
        .or_insert_with(|| url.to_owned());
    env
}

/// A log stream name in Lambda's format: `YYYY/MM/DD/[VERSION]` and 32 hex digits naming the
/// execution environment.
pub fn log_stream_name(date: Date, version: &str, environment: Uuid) -> String {
    format!(
        "{:04}/{:02}/{:02}/[{version}]{}",
        date.year(),
        u8::from(date.month()),
        date.day(),
        environment.simple()
    )
}

/// A log stream name for a new execution environment, dated today (UTC).
pub fn new_log_stream_name(version: &str) -> String {
    log_stream_name(
        time::OffsetDateTime::now_utc().date(),
        version,
        Uuid::new_v4(),
    )
}

#[cfg(test)]
mod tests {
    use time::macros::date;

    use super::*;
    use ember_protocol::CodeSource;

    fn function(environment: &[(&str, &str)]) -> FunctionSpec {
        FunctionSpec {
            name: "hello".into(),
            arn: "arn:aws:lambda:eu-west-1:123456789012:function:hello".into(),
            version: "$LATEST".into(),
            handler: "app.handler".into(),
            runtime: "python3.12".into(),
            region: "eu-west-1".into(),
            environment: environment
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            memory_mb: 256,
            timeout_ms: 3_000,
            ephemeral_storage_mb: 512,
            code: CodeSource::Directory {
                path: "/code".into(),
            },
            layers: Vec::new(),
        }
    }

    #[test]
    fn the_endpoint_is_embers_unless_the_function_sets_its_own() {
        let url = "http://10.213.0.1:9001";
        let env = with_endpoint(container_env(&function(&[]), "127.0.0.1:9001", "s"), url);
        assert_eq!(env["AWS_ENDPOINT_URL_LAMBDA"], url);
        let own = function(&[("AWS_ENDPOINT_URL_LAMBDA", "https://lambda.example")]);
        let env = with_endpoint(container_env(&own, "127.0.0.1:9001", "s"), url);
        assert_eq!(env["AWS_ENDPOINT_URL_LAMBDA"], "https://lambda.example");
    }

    #[test]
    fn the_environment_is_lambdas() {
        let stream = "2024/01/02/[$LATEST]0123456789abcdef0123456789abcdef";
        let env = container_env(
            &function(&[
                ("GREETING", "hi"),
                ("PATH", "/custom/bin"),
                ("AWS_REGION", "mars-1"),
                ("_HANDLER", "evil.handler"),
                ("TZ", "Europe/Paris"),
                ("AWS_LAMBDA_MAX_CONCURRENCY", "8"),
                ("AWS_ACCESS_KEY_ID", "AKIA"),
                ("AWS_LAMBDA_RUNTIME_API", "10.0.0.1:80"),
            ]),
            "127.0.0.1:9001",
            stream,
        );

        let expected: &[(&str, Option<&str>)] = &[
            ("_HANDLER", Some("app.handler")),
            ("LAMBDA_TASK_ROOT", Some("/var/task")),
            ("LAMBDA_RUNTIME_DIR", Some("/var/runtime")),
            ("AWS_LAMBDA_FUNCTION_NAME", Some("hello")),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", Some("256")),
            ("AWS_LAMBDA_FUNCTION_VERSION", Some("$LATEST")),
            ("AWS_LAMBDA_LOG_GROUP_NAME", Some("/aws/lambda/hello")),
            ("AWS_LAMBDA_LOG_STREAM_NAME", Some(stream)),
            ("AWS_LAMBDA_RUNTIME_API", Some("127.0.0.1:9001")),
            ("AWS_REGION", Some("eu-west-1")),
            ("AWS_DEFAULT_REGION", Some("eu-west-1")),
            ("TZ", Some(":UTC")),
            // Not reserved: the function's value wins.
            ("PATH", Some("/custom/bin")),
            ("LD_LIBRARY_PATH", Some(LD_LIBRARY_PATH)),
            ("GREETING", Some("hi")),
            // Reserved and not set by Lambda: dropped.
            ("AWS_LAMBDA_MAX_CONCURRENCY", None),
            ("AWS_ACCESS_KEY_ID", None),
        ];
        for (key, value) in expected {
            assert_eq!(env.get(*key).map(String::as_str), *value, "{key}");
        }
        let listed = expected.iter().filter(|(_, v)| v.is_some()).count();
        assert_eq!(env.len(), listed, "no other variable: {env:#?}");
    }

    #[test]
    fn defaults_apply_without_function_variables() {
        let env = container_env(&function(&[]), "127.0.0.1:1", "s");
        assert_eq!(env["PATH"], "/usr/local/bin:/usr/bin/:/bin:/opt/bin");
        assert_eq!(
            env["LD_LIBRARY_PATH"],
            "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib"
        );
        assert!(!env.contains_key("AWS_LAMBDA_MAX_CONCURRENCY"));
    }

    #[test]
    fn the_environments_credentials_win_over_the_functions_own() {
        let env = container_env(
            &function(&[
                ("AWS_ACCESS_KEY_ID", "AKIAFUNCTIONSOWNKEY1"),
                ("AWS_SECRET_ACCESS_KEY", "own"),
                ("AWS_SESSION_TOKEN", "own"),
            ]),
            "127.0.0.1:9001",
            "s",
        );
        // Without credentials, none of the three is set, not even the function's.
        let without = with_credentials(env.clone(), None);
        for key in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
        ] {
            assert!(!without.contains_key(key), "{key}");
        }
        let credentials = SessionCredentials {
            access_key_id: "ASIAQWERTYUIOPASDFGH".into(),
            secret_access_key: "secret".into(),
            session_token: "token".into(),
        };
        let with = with_credentials(env.clone(), Some(&credentials));
        assert_eq!(with["AWS_ACCESS_KEY_ID"], "ASIAQWERTYUIOPASDFGH");
        assert_eq!(with["AWS_SECRET_ACCESS_KEY"], "secret");
        assert_eq!(with["AWS_SESSION_TOKEN"], "token");
        assert_eq!(with.len(), env.len() + 3);
    }

    #[test]
    fn log_stream_names() {
        let id = Uuid::from_u128(0x0123456789abcdef0123456789abcdef);
        let cases = [
            (
                date!(2024 - 01 - 02),
                "$LATEST",
                "2024/01/02/[$LATEST]0123456789abcdef0123456789abcdef",
            ),
            (
                date!(2025 - 12 - 31),
                "7",
                "2025/12/31/[7]0123456789abcdef0123456789abcdef",
            ),
        ];
        for (date, version, want) in cases {
            assert_eq!(log_stream_name(date, version, id), want);
        }
    }

    #[test]
    fn new_log_stream_names_have_lambdas_shape() {
        let name = new_log_stream_name("$LATEST");
        let (date, rest) = name.split_at(11);
        assert!(date.chars().enumerate().all(|(i, c)| match i {
            4 | 7 | 10 => c == '/',
            _ => c.is_ascii_digit(),
        }));
        let hex = rest.strip_prefix("[$LATEST]").unwrap();
        assert_eq!(hex.len(), 32);
        assert!(hex
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
