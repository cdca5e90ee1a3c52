//! What the store's integration tests share: a function's settings to store.

use std::collections::BTreeMap;

use ember_store::FunctionSpec;

/// A plain Python function's settings, as CreateFunction would store them.
pub fn spec() -> FunctionSpec {
    FunctionSpec {
        runtime: Some("python3.11".into()),
        role: "arn:aws:iam::123456789012:role/r".into(),
        handler: Some("app.handler".into()),
        description: String::new(),
        timeout_s: 3,
        memory_mb: 128,
        ephemeral_mb: 512,
        environment: BTreeMap::new(),
        architectures: vec!["x86_64".into()],
        package_type: "Zip".into(),
        layers: Vec::new(),
        snap_start: Default::default(),
    }
}
