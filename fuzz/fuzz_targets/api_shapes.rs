//! Fuzzes the Lambda JSON request shapes (`ember_api::shapes`) and their validation
//! (`ember_api::validate`, `ember_api::tags`): the input is a request body, read as
//! CreateFunction, UpdateFunctionConfiguration, UpdateFunctionCode and TagResource, and each field
//! goes through the validator the handler applies to it.
//!
//! Invariants: deserializing and validating never panic; a value a validator accepts meets the
//! constraint the validator states (ranges, lengths, patterns, the 4 KB environment limit, a
//! function name that parses again to itself); and every refusal renders as an AWS error: its
//! status, `x-amzn-ErrorType` naming its type, and a JSON body with `Type` and `message`.
#![no_main]

use std::sync::LazyLock;

use base64::Engine as _;
use ember_api::shapes::{
    CreateFunctionRequest, Environment, UpdateFunctionCodeRequest,
    UpdateFunctionConfigurationRequest,
};
use ember_api::tags::TagResourceRequest;
use ember_api::validate::{self, FunctionRef};
use ember_api::ApiError;
use ember_package::{inspect, PackageLimits};
use http_body_util::BodyExt as _;
use libfuzzer_sys::fuzz_target;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
});

fuzz_target!(|data: &[u8]| {
    // An empty body reads as `{}`, as the handlers read it.
    let body = if data.is_empty() {
        b"{}".as_slice()
    } else {
        data
    };
    if let Ok(req) = serde_json::from_slice::<CreateFunctionRequest>(body) {
        create(&req);
    }
    if let Ok(req) = serde_json::from_slice::<UpdateFunctionConfigurationRequest>(body) {
        update_configuration(&req);
    }
    if let Ok(req) = serde_json::from_slice::<UpdateFunctionCodeRequest>(body) {
        check(validate::code_update_unimplemented(&req), |()| {
            assert!(req.unknown.is_empty());
        });
        if let Some(archs) = &req.architectures {
            check(validate::architectures(Some(archs)), |v| {
                assert_eq!(v, [validate::host_architecture()])
            });
        }
        code(req.zip_file.as_deref());
    }
    if let Ok(req) = serde_json::from_slice::<TagResourceRequest>(body) {
        check(validate::unknown(&req.unknown, "TagResource"), |()| {
            assert!(req.unknown.is_empty())
        });
        if let Some(t) = &req.tags {
            tags(t);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        function_name(text);
    }
});

/// A `Tags` map (CreateFunction's, TagResource's): accepted only within AWS's limits.
fn tags(t: &std::collections::BTreeMap<String, String>) {
    check(ember_api::tags::tags(t), |()| {
        assert!(t.len() <= ember_api::tags::MAX_TAGS);
        for (key, value) in t {
            assert!((1..=128).contains(&key.chars().count()), "{key:?}");
            assert!(!key.to_ascii_lowercase().starts_with("aws:"), "{key:?}");
            assert!(value.chars().count() <= 256, "{value:?}");
            assert!(
                key.chars().chain(value.chars()).all(|c| !c.is_control()),
                "{key:?}={value:?}"
            );
        }
    });
}

fn create(req: &CreateFunctionRequest) {
    function_name(&req.function_name);
    // What Ember does not implement is accepted only at its no-op value, never dropped.
    check(
        validate::create_unimplemented(req, &req.function_name),
        |()| {
            let u = &req.unimplemented;
            assert!(req.unknown.is_empty());
            assert!(req.code_signing_config_arn.is_none());
            assert!(u
                .vpc_config
                .as_ref()
                .is_none_or(|v| v.subnet_ids.is_empty()));
            assert!(u.file_system_configs.as_ref().is_none_or(Vec::is_empty));
        },
    );
    if let Some(t) = &req.tags {
        tags(t);
    }
    role(req.role.as_deref().unwrap_or_default());
    if let Some(runtime) = &req.runtime {
        self::runtime(runtime);
    }
    if let Some(handler) = &req.handler {
        self::handler(handler);
    }
    check(
        validate::handler_for_runtime(req.runtime.as_deref(), req.handler.as_deref()),
        |()| {},
    );
    description(req.description.as_deref().unwrap_or_default());
    if let Some(t) = req.timeout {
        range("timeout", t, validate::TIMEOUT_S);
    }
    if let Some(m) = req.memory_size {
        range("memorySize", m, validate::MEMORY_MB);
    }
    if let Some(e) = req.ephemeral_storage {
        check(validate::ephemeral(e.size), |v| {
            assert!((validate::EPHEMERAL_MB.0..=validate::EPHEMERAL_MB.1).contains(&v));
            assert_eq!(v, e.size);
        });
    }
    if let Some(env) = &req.environment {
        environment(env);
    }
    check(validate::architectures(req.architectures.as_deref()), |v| {
        assert_eq!(v, [validate::host_architecture()]);
    });
    code(req.code.as_ref().and_then(|c| c.zip_file.as_deref()));
    if let Some(s) = &req.snap_start {
        snap_start(s);
    }
}

/// A `SnapStart`: only the model's two values are accepted, each as itself (absent: `None`).
fn snap_start(s: &ember_api::snap_start::SnapStart) {
    check(ember_api::snap_start::apply_on(s), |v| {
        assert_eq!(v.as_str(), s.apply_on.as_deref().unwrap_or("None"));
    });
}

fn update_configuration(req: &UpdateFunctionConfigurationRequest) {
    check(validate::update_unimplemented(req, "f"), |()| {
        assert!(req.unknown.is_empty());
    });
    if let Some(role) = &req.role {
        self::role(role);
    }
    if let Some(handler) = &req.handler {
        self::handler(handler);
    }
    if let Some(runtime) = &req.runtime {
        self::runtime(runtime);
    }
    if let Some(s) = &req.snap_start {
        snap_start(s);
    }
    if let Some(description) = &req.description {
        self::description(description);
    }
    if let Some(t) = req.timeout {
        range("timeout", t, validate::TIMEOUT_S);
    }
    if let Some(m) = req.memory_size {
        range("memorySize", m, validate::MEMORY_MB);
    }
    if let Some(env) = &req.environment {
        environment(env);
    }
}

fn function_name(input: &str) {
    check(validate::function_ref(input), |r: FunctionRef| {
        assert!(is_name(&r.name) && r.name.len() <= 64, "{r:?}");
        if let Some(account) = &r.account_id {
            assert!(account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()));
        }
        if let Some(q) = &r.qualifier {
            assert!(q == "$LATEST" || is_name(q), "{r:?}");
        }
        let bare = validate::function_ref(&r.name).expect("an accepted name parses alone");
        assert_eq!(
            (bare.name.as_str(), bare.account_id, bare.qualifier),
            (r.name.as_str(), None, None)
        );
        let account = r
            .account_id
            .clone()
            .unwrap_or_else(|| "123456789012".to_owned());
        let mut arn = format!("arn:aws:lambda:us-east-1:{account}:function:{}", r.name);
        if let Some(q) = &r.qualifier {
            arn = format!("{arn}:{q}");
        }
        if arn.len() <= 170 {
            let again = validate::function_ref(&arn).expect("its full ARN parses");
            assert_eq!(again.name, r.name);
            assert_eq!(again.qualifier, r.qualifier);
            assert_eq!(again.account_id, Some(account));
        }
    });
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn role(value: &str) {
    check(validate::role(value), |v| {
        assert_eq!(v, value);
        assert!(v.starts_with("arn:") && v.contains(":iam::") && v.contains(":role/"));
    });
}

fn runtime(value: &str) {
    check(validate::runtime(value), |v| {
        assert!(validate::RUNTIMES.contains(&v.as_str()));
    });
}

fn handler(value: &str) {
    check(validate::handler(value), |v| {
        assert!(!v.is_empty() && v.len() <= 128);
        assert!(!v.chars().any(char::is_whitespace));
    });
}

fn description(value: &str) {
    check(validate::description(value), |v| {
        assert!(v.chars().count() <= 256);
    });
}

fn range(field: &str, value: i64, (min, max): (i64, i64)) {
    check(validate::range(field, value, (min, max)), |v| {
        assert!((min..=max).contains(&i64::from(v)));
        assert_eq!(i64::from(v), value);
    });
}

fn environment(env: &Environment) {
    check(validate::environment(env), |vars| {
        assert_eq!(vars, env.variables);
        let measured = serde_json::to_string(&vars).expect("a map of strings serializes");
        assert!(measured.len() <= validate::ENV_MAX_BYTES);
        for key in vars.keys() {
            assert!(key.len() >= 2, "{key:?}");
            assert!(
                key.starts_with(|c: char| c.is_ascii_alphabetic()),
                "{key:?}"
            );
            assert!(
                key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{key:?}"
            );
            assert!(!["AWS_REGION", "AWS_LAMBDA_RUNTIME_API", "_HANDLER"].contains(&key.as_str()));
        }
    });
}

/// `Code.ZipFile`: base64 of a zip the package inspector checks (fuzzed on its own by
/// `package_zip`).
fn code(zip_file: Option<&str>) {
    let Some(b64) = zip_file else { return };
    if let Ok(zip) = base64::engine::general_purpose::STANDARD.decode(b64) {
        let _ = inspect(&zip, &PackageLimits::default());
    }
}

/// Runs `accepted` on an accepted value; checks a refusal renders as an AWS error.
fn check<T>(result: Result<T, ApiError>, accepted: impl FnOnce(T)) {
    match result {
        Ok(value) => accepted(value),
        Err(e) => aws_shaped(e),
    }
}

fn aws_shaped(e: ApiError) {
    use axum::response::IntoResponse as _;
    let (status, error_type, message) = (e.status(), e.error_type(), e.to_string());
    let response = e.into_response();
    assert_eq!(response.status(), status);
    assert!(status.is_client_error() || status.is_server_error());
    assert_eq!(
        response
            .headers()
            .get("x-amzn-ErrorType")
            .map(|v| v.as_bytes()),
        Some(error_type.as_bytes())
    );
    let body = RUNTIME
        .block_on(response.into_body().collect())
        .expect("an error body")
        .to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).expect("a JSON error body");
    assert_eq!(body["message"], message.as_str());
    assert!(
        body["Type"] == "User" || body["Type"] == "Service",
        "{body}"
    );
}
