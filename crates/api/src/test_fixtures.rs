//! Fixtures the crate's unit tests share.

use ember_store::FunctionSpec;

/// An ordinary function's configuration: python3.12, 128 MB, 3 s, 512 MB of `/tmp`, no variables,
/// no layers, SnapStart off. A test that needs another value changes it with struct update syntax.
pub(crate) fn spec() -> FunctionSpec {
    FunctionSpec {
        runtime: Some("python3.12".into()),
        role: "arn:aws:iam::123456789012:role/r".into(),
        handler: Some("app.handler".into()),
        description: String::new(),
        timeout_s: 3,
        memory_mb: 128,
        ephemeral_mb: 512,
        environment: Default::default(),
        architectures: vec!["x86_64".into()],
        package_type: "Zip".into(),
        layers: Vec::new(),
        snap_start: Default::default(),
    }
}
