//! The Lambda REST API's JSON shapes, named and cased as botocore's `lambda/2015-03-31` service
//! model has them. Requests know every member of the model: those Ember implements, those it
//! accepts only at their no-op value ([`Unimplemented`] and a few others), and collect any other
//! member (`unknown`) so that it is refused by name rather than ignored.
//!
//! Also Ember's own sizing shapes (`/ember/v1/functions/{name}/sizing`, documented in
//! `sizing.rs`). The types below `api` are never serialized into an HTTP body: each shape here
//! is converted by hand from them, so that a change of what is stored cannot change the API.

use std::collections::BTreeMap;

use ember_executor::sizing::{stored_evidence, Overrides};
use ember_fleet::sizing::{Evidence, SizingConfig};
use ember_store::SizingEvent;
use serde::{Deserialize, Deserializer, Serialize};

use crate::fleet::rfc3339_ms;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct FunctionCode {
    pub zip_file: Option<String>,
    #[serde(rename = "S3Bucket")]
    pub s3_bucket: Option<String>,
    #[serde(rename = "S3Key")]
    pub s3_key: Option<String>,
    #[serde(rename = "S3ObjectVersion")]
    pub s3_object_version: Option<String>,
    #[serde(rename = "S3ObjectStorageMode")]
    pub s3_object_storage_mode: Option<String>,
    pub image_uri: Option<String>,
    #[serde(rename = "SourceKMSKeyArn")]
    pub source_kms_key_arn: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Environment {
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct EphemeralStorage {
    pub size: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct VpcConfig {
    #[serde(default)]
    pub subnet_ids: Vec<String>,
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    pub ipv6_allowed_for_dual_stack: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DeadLetterConfig {
    pub target_arn: Option<String>,
}

/// `TracingConfig` as a request gives it (the response's is [`TracingConfig`]).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TracingConfigInput {
    pub mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ImageConfig {
    pub entry_point: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    pub working_directory: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LoggingConfig {
    pub log_format: Option<String>,
    pub application_log_level: Option<String>,
    pub system_log_level: Option<String>,
    pub log_group: Option<String>,
}

/// Members of CreateFunction's and UpdateFunctionConfiguration's requests that Ember does not
/// implement. `validate::unimplemented` accepts each only at its no-op value (absent, empty, or
/// the default) and refuses anything else, naming it: nothing is silently dropped.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Unimplemented {
    pub vpc_config: Option<VpcConfig>,
    pub dead_letter_config: Option<DeadLetterConfig>,
    #[serde(rename = "KMSKeyArn")]
    pub kms_key_arn: Option<String>,
    pub tracing_config: Option<TracingConfigInput>,
    pub file_system_configs: Option<Vec<serde_json::Value>>,
    pub image_config: Option<ImageConfig>,
    pub logging_config: Option<LoggingConfig>,
    pub capacity_provider_config: Option<serde_json::Value>,
    pub durable_config: Option<serde_json::Value>,
    pub runtime_config: Option<serde_json::Value>,
    pub accelerator_config: Option<serde_json::Value>,
}

/// Members no version of the Lambda API has (AWS ignores them; Ember refuses them, naming them,
/// so a misspelt or newer parameter is never dropped without a word).
pub type Unknown = BTreeMap<String, serde_json::Value>;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateFunctionRequest {
    pub function_name: String,
    pub runtime: Option<String>,
    pub role: Option<String>,
    pub handler: Option<String>,
    pub code: Option<FunctionCode>,
    pub description: Option<String>,
    pub timeout: Option<i64>,
    pub memory_size: Option<i64>,
    pub package_type: Option<String>,
    pub environment: Option<Environment>,
    pub architectures: Option<Vec<String>>,
    pub ephemeral_storage: Option<EphemeralStorage>,
    pub publish: Option<bool>,
    pub publish_to: Option<String>,
    pub tags: Option<BTreeMap<String, String>>,
    pub code_signing_config_arn: Option<String>,
    pub tenancy_config: Option<serde_json::Value>,
    /// Layer version ARNs, in order (`crates/api/src/layers.rs`).
    pub layers: Option<Vec<String>>,
    /// `SnapStart` (`crates/api/src/snap_start.rs`).
    pub snap_start: Option<crate::snap_start::SnapStart>,
    #[serde(flatten)]
    pub unimplemented: Unimplemented,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateFunctionCodeRequest {
    pub zip_file: Option<String>,
    #[serde(rename = "S3Bucket")]
    pub s3_bucket: Option<String>,
    #[serde(rename = "S3Key")]
    pub s3_key: Option<String>,
    #[serde(rename = "S3ObjectVersion")]
    pub s3_object_version: Option<String>,
    #[serde(rename = "S3ObjectStorageMode")]
    pub s3_object_storage_mode: Option<String>,
    pub image_uri: Option<String>,
    pub architectures: Option<Vec<String>>,
    pub revision_id: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
    pub publish: Option<bool>,
    pub publish_to: Option<String>,
    #[serde(rename = "SourceKMSKeyArn")]
    pub source_kms_key_arn: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateFunctionConfigurationRequest {
    pub role: Option<String>,
    pub handler: Option<String>,
    pub description: Option<String>,
    pub timeout: Option<i64>,
    pub memory_size: Option<i64>,
    pub environment: Option<Environment>,
    pub runtime: Option<String>,
    pub revision_id: Option<String>,
    pub ephemeral_storage: Option<EphemeralStorage>,
    /// Layer version ARNs, in order, replacing the function's (`crates/api/src/layers.rs`).
    pub layers: Option<Vec<String>>,
    /// `SnapStart` (`crates/api/src/snap_start.rs`).
    pub snap_start: Option<crate::snap_start::SnapStart>,
    #[serde(flatten)]
    pub unimplemented: Unimplemented,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Concurrency {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved_concurrent_executions: Option<i64>,
}

/// `FunctionConfiguration`, the body of most responses.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionConfiguration {
    pub function_name: String,
    pub function_arn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    pub role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    pub code_size: u64,
    pub description: String,
    pub timeout: u32,
    pub memory_size: u32,
    pub last_modified: String,
    pub code_sha256: String,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    pub tracing_config: TracingConfig,
    pub revision_id: String,
    pub state: String,
    pub last_update_status: String,
    pub package_type: String,
    pub architectures: Vec<String>,
    pub ephemeral_storage: EphemeralStorage,
    /// The function's layers (`Layers: [{Arn, CodeSize}]`), absent when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<crate::layers::Layer>>,
    /// `SnapStart`, shown for every function and version, as Lambda shows it.
    pub snap_start: crate::snap_start::SnapStartResponse,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct TracingConfig {
    pub mode: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionCodeLocation {
    pub repository_type: &'static str,
    pub location: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetFunctionResponse {
    pub configuration: FunctionConfiguration,
    pub code: FunctionCodeLocation,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// The function's tags; absent when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListFunctionsResponse {
    pub functions: Vec<FunctionConfiguration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

/// The answer of `GET` and `PUT /ember/v1/functions/{name}/sizing`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SizingResponse {
    pub function_name: String,
    #[serde(rename = "ConfiguredMemoryMB")]
    pub configured_memory_mb: u32,
    #[serde(rename = "EffectiveMemoryMB")]
    pub effective_memory_mb: u32,
    pub mode: &'static str,
    pub mode_is_default: bool,
    pub thresholds: SizingThresholds,
    pub overrides: SizingOverrides,
    pub condition: Option<&'static str>,
    pub recommendation: Option<SizingRecommendation>,
    pub evidence: Option<SizingEvidence>,
    pub window_executions: u32,
    pub backoff_executions: u32,
    pub history: Vec<SizingHistoryEntry>,
    pub executions: u32,
    #[serde(rename = "EstimatedGBSecondsSaved")]
    pub estimated_gb_seconds_saved: f64,
}

/// The thresholds in force: the server's defaults with the function's overrides.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SizingThresholds {
    pub threshold: u32,
    pub over_provisioned_percent: f64,
    pub under_provisioned_percent: f64,
    pub headroom_percent: f64,
    pub max_slowdown_percent: f64,
}

impl From<&SizingConfig> for SizingThresholds {
    fn from(c: &SizingConfig) -> Self {
        Self {
            threshold: c.threshold,
            over_provisioned_percent: c.over_percent,
            under_provisioned_percent: c.under_percent,
            headroom_percent: c.headroom_percent,
            max_slowdown_percent: c.max_slowdown_percent,
        }
    }
}

/// Only the function's own thresholds; one not set is absent.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SizingOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub over_provisioned_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub under_provisioned_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headroom_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_slowdown_percent: Option<f64>,
}

impl From<&Overrides> for SizingOverrides {
    fn from(o: &Overrides) -> Self {
        Self {
            threshold: o.threshold,
            over_provisioned_percent: o.over_provisioned_percent,
            under_provisioned_percent: o.under_provisioned_percent,
            headroom_percent: o.headroom_percent,
            max_slowdown_percent: o.max_slowdown_percent,
        }
    }
}

/// The latest decision about the function's current version.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SizingRecommendation {
    pub direction: &'static str,
    #[serde(rename = "FromMB")]
    pub from_mb: u32,
    #[serde(rename = "ToMB")]
    pub to_mb: u32,
    pub condition: &'static str,
    /// Whether the mode was `auto` when the decision was made.
    pub applied: bool,
    pub evidence: SizingEvidence,
}

/// A stored decision.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SizingHistoryEntry {
    pub time: String,
    pub revision_id: String,
    pub direction: String,
    #[serde(rename = "FromMB")]
    pub from_mb: u32,
    #[serde(rename = "ToMB")]
    pub to_mb: u32,
    pub condition: String,
    pub applied: bool,
    /// `null` if what was stored cannot be read back.
    pub evidence: Option<SizingEvidence>,
}

impl From<&SizingEvent> for SizingHistoryEntry {
    fn from(e: &SizingEvent) -> Self {
        let time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(e.at_ms) * 1_000_000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        Self {
            time: rfc3339_ms(time),
            revision_id: e.revision_id.clone(),
            direction: e.direction.clone(),
            from_mb: e.from_mb,
            to_mb: e.to_mb,
            condition: e.condition.clone(),
            applied: e.applied,
            evidence: stored_evidence(e).as_ref().map(SizingEvidence::from),
        }
    }
}

/// What a decision was based on.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SizingEvidence {
    pub executions: u32,
    pub matching_executions: u32,
    #[serde(rename = "PeakMemoryP50MB")]
    pub peak_memory_p50_mb: u64,
    #[serde(rename = "PeakMemoryHighMB")]
    pub peak_memory_high_mb: u64,
    #[serde(rename = "PeakMemoryMaxMB")]
    pub peak_memory_max_mb: u64,
    pub out_of_memory: u32,
    pub timeouts: u32,
    #[serde(rename = "CpuP90VCpus")]
    pub cpu_p90_vcpus: f64,
    pub duration_p50_ms: f64,
}

impl From<&Evidence> for SizingEvidence {
    fn from(e: &Evidence) -> Self {
        Self {
            executions: e.executions,
            matching_executions: e.matching,
            peak_memory_p50_mb: e.peak_p50_mb,
            peak_memory_high_mb: e.peak_high_mb,
            peak_memory_max_mb: e.peak_max_mb,
            out_of_memory: e.out_of_memory,
            timeouts: e.timeouts,
            cpu_p90_vcpus: e.cpu_cores_p90,
            duration_p50_ms: e.duration_p50_ms,
        }
    }
}

/// The body of `PUT /ember/v1/functions/{name}/sizing`. Each field: absent (`None`), `null`
/// (`Some(None)`: drop the function's own value) or a value.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct PutSizingRequest {
    #[serde(default, deserialize_with = "present")]
    pub mode: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub threshold: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    pub over_provisioned_percent: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    pub under_provisioned_percent: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    pub headroom_percent: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    pub max_slowdown_percent: Option<Option<f64>>,
}

/// A field that is present, possibly `null` (serde maps an absent one to the `default`).
fn present<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    // The JSON of each sizing shape, byte for byte, from a core value with a distinct value in
    // every field. A field renamed below `api` changes a conversion above, never this JSON.

    #[test]
    fn sizing_evidence_json_is_pinned() {
        let evidence = Evidence {
            executions: 11,
            matching: 7,
            peak_p50_mb: 30,
            peak_high_mb: 35,
            peak_max_mb: 40,
            out_of_memory: 1,
            timeouts: 2,
            cpu_cores_p90: 0.25,
            duration_p50_ms: 12.5,
        };
        assert_eq!(
            serde_json::to_string(&SizingEvidence::from(&evidence)).unwrap(),
            concat!(
                r#"{"Executions":11,"MatchingExecutions":7,"PeakMemoryP50MB":30,"#,
                r#""PeakMemoryHighMB":35,"PeakMemoryMaxMB":40,"OutOfMemory":1,"Timeouts":2,"#,
                r#""CpuP90VCpus":0.25,"DurationP50Ms":12.5}"#
            )
        );
    }

    #[test]
    fn sizing_overrides_json_is_pinned() {
        let all = Overrides {
            threshold: Some(3),
            over_provisioned_percent: Some(20.0),
            under_provisioned_percent: Some(80.5),
            headroom_percent: Some(25.0),
            max_slowdown_percent: Some(15.0),
        };
        assert_eq!(
            serde_json::to_string(&SizingOverrides::from(&all)).unwrap(),
            concat!(
                r#"{"Threshold":3,"OverProvisionedPercent":20.0,"UnderProvisionedPercent":80.5,"#,
                r#""HeadroomPercent":25.0,"MaxSlowdownPercent":15.0}"#
            )
        );
        let none = Overrides::default();
        assert_eq!(
            serde_json::to_string(&SizingOverrides::from(&none)).unwrap(),
            "{}"
        );
    }

    #[test]
    fn sizing_thresholds_json_is_pinned() {
        let config = SizingConfig {
            threshold: 4,
            over_percent: 35.0,
            under_percent: 85.5,
            headroom_percent: 20.0,
            max_slowdown_percent: 12.0,
            ..SizingConfig::default()
        };
        assert_eq!(
            serde_json::to_string(&SizingThresholds::from(&config)).unwrap(),
            concat!(
                r#"{"Threshold":4,"OverProvisionedPercent":35.0,"UnderProvisionedPercent":85.5,"#,
                r#""HeadroomPercent":20.0,"MaxSlowdownPercent":12.0}"#
            )
        );
    }
}
