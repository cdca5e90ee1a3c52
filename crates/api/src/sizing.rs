//! `GET` and `PUT /ember/v1/functions/{name}/sizing`: a function's automatic resource sizing
//! (for `ember fn sizing`): the amount its containers get, why, and the history of decisions;
//! `PUT` sets its mode and threshold overrides.
//!
//! The answer (both methods; `PUT` answers after the change):
//! `{"FunctionName", "ConfiguredMemoryMB", "EffectiveMemoryMB", "Mode", "ModeIsDefault",
//!   "Thresholds": {"Threshold", "OverProvisionedPercent", "UnderProvisionedPercent",
//!                  "HeadroomPercent", "MaxSlowdownPercent"},
//!   "Overrides": {only the function's own thresholds},
//!   "Condition": the latest decision's about the current version, or null,
//!   "Recommendation": {"Direction", "FromMB", "ToMB", "Condition", "Applied", "Evidence"} or null,
//!   "Evidence": the latest decision's, or null,
//!   "WindowExecutions", "BackoffExecutions",
//!   "History": [{"Time", "RevisionId", "Direction", "FromMB", "ToMB", "Condition", "Applied",
//!                "Evidence"}] (oldest first),
//!   "Executions", "EstimatedGBSecondsSaved"}`.
//! `Applied` says whether the mode was `auto` when the decision was made. `Evidence` is
//! `{"Executions", "MatchingExecutions", "PeakMemoryP50MB", "PeakMemoryHighMB",
//! "PeakMemoryMaxMB", "OutOfMemory", "Timeouts", "CpuP90VCpus", "DurationP50Ms"}`.
//!
//! The `PUT` body: `{"Mode": "off" | "recommend" | "auto"}` and/or any of the threshold fields
//! above. A threshold set to `null` drops the function's override (the server's default applies
//! again); a field not given keeps what is set. Unknown fields, a bad mode or a threshold out of
//! range are a 400, and nothing changes.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use ember_executor::sizing::Overrides;
use ember_executor::{SizingConfig, SizingMode, SizingReport};
use ember_fleet::sizing::Decision;
use ember_store::{Function, SizingEvent};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::fleet::finite;
use crate::functions::parse_json;
use crate::shapes::{
    PutSizingRequest, SizingEvidence, SizingHistoryEntry, SizingOverrides, SizingRecommendation,
    SizingResponse, SizingThresholds,
};
use crate::AppState;

pub async fn get_sizing(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<SizingResponse>, ApiError> {
    let executor = state.executor()?;
    let function = state.function(&caller, &name, None).await?;
    let report = executor.sizing(&function).await?;
    Ok(Json(SizingResponse::new(&function, report)))
}

pub async fn put_sizing(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<SizingResponse>, ApiError> {
    let req: PutSizingRequest = parse_json(&body)?;
    let executor = state.executor()?;
    let function = state.function(&caller, &name, None).await?;
    let current = executor.sizing(&function).await?;
    let (mode, overrides) = req.change(&current.overrides, &executor.config().sizing)?;
    if mode.is_some() || overrides.is_some() {
        executor.set_sizing(&function, mode, overrides).await?;
        tracing::info!(function = %function.name, "sizing settings changed");
    }
    let report = executor.sizing(&function).await?;
    Ok(Json(SizingResponse::new(&function, report)))
}

impl PutSizingRequest {
    /// The mode and overrides to store (`None`: keep what is set), given the function's
    /// `current` overrides and the server's `defaults`; or why the request is refused.
    fn change(
        &self,
        current: &Overrides,
        defaults: &SizingConfig,
    ) -> Result<(Option<SizingMode>, Option<Overrides>), ApiError> {
        let mode =
            match &self.mode {
                None => None,
                Some(given) => Some(given.as_deref().and_then(SizingMode::parse).ok_or_else(
                    || {
                        ApiError::InvalidParameter(format!(
                            "Mode must be one of off, recommend, auto (got {})",
                            given.as_deref().map_or("null".into(), |m| format!("{m:?}"))
                        ))
                    },
                )?),
            };
        let thresholds_given = self.threshold.is_some()
            || self.over_provisioned_percent.is_some()
            || self.under_provisioned_percent.is_some()
            || self.headroom_percent.is_some()
            || self.max_slowdown_percent.is_some();
        if !thresholds_given {
            return Ok((mode, None));
        }
        let overrides = Overrides {
            threshold: self.threshold.unwrap_or(current.threshold),
            over_provisioned_percent: self
                .over_provisioned_percent
                .unwrap_or(current.over_provisioned_percent),
            under_provisioned_percent: self
                .under_provisioned_percent
                .unwrap_or(current.under_provisioned_percent),
            headroom_percent: self.headroom_percent.unwrap_or(current.headroom_percent),
            max_slowdown_percent: self
                .max_slowdown_percent
                .unwrap_or(current.max_slowdown_percent),
        };
        overrides.validate().map_err(ApiError::InvalidParameter)?;
        // The overrides may be consistent alone and not with the server's defaults.
        let effective = overrides.apply(defaults);
        if effective.over_percent >= effective.under_percent {
            return Err(ApiError::InvalidParameter(format!(
                "OverProvisionedPercent ({}) must be below UnderProvisionedPercent ({}{})",
                effective.over_percent,
                effective.under_percent,
                if overrides.under_provisioned_percent.is_none() {
                    ", the server's default"
                } else {
                    ""
                }
            )));
        }
        Ok((mode, Some(overrides)))
    }
}

impl SizingResponse {
    fn new(function: &Function, report: SizingReport) -> Self {
        let applied = report.last.as_ref().map(|last| {
            // The stored decision says how it was made; one not stored yet (written in the
            // background) was applied if containers get its amount in `auto` mode.
            latest_event_of(&report.history, function, last).map_or(
                report.mode == SizingMode::Auto && report.effective_mb == last.to_mb,
                |e| e.applied,
            )
        });
        let recommendation = report.last.as_ref().map(|d| SizingRecommendation {
            direction: d.direction.as_str(),
            from_mb: d.from_mb,
            to_mb: d.to_mb,
            condition: d.condition.as_str(),
            applied: applied.unwrap_or(false),
            evidence: SizingEvidence::from(&d.evidence),
        });
        Self {
            function_name: function.name.clone(),
            configured_memory_mb: report.configured_mb,
            effective_memory_mb: report.effective_mb,
            mode: report.mode.as_str(),
            mode_is_default: report.mode_is_default,
            thresholds: SizingThresholds::from(&report.config),
            overrides: SizingOverrides::from(&report.overrides),
            condition: report.last.as_ref().map(|d| d.condition.as_str()),
            evidence: report
                .last
                .as_ref()
                .map(|d| SizingEvidence::from(&d.evidence)),
            recommendation,
            window_executions: report.window_executions,
            backoff_executions: report.backoff_remaining,
            history: report
                .history
                .iter()
                .map(SizingHistoryEntry::from)
                .collect(),
            executions: report.executions,
            estimated_gb_seconds_saved: finite(report.gb_seconds_saved),
        }
    }
}

/// The newest stored event of `decision` (about `function`'s current version and amount).
fn latest_event_of<'a>(
    history: &'a [SizingEvent],
    function: &Function,
    decision: &Decision,
) -> Option<&'a SizingEvent> {
    history.iter().rev().find(|e| {
        e.revision_id == function.revision_id
            && e.requested_mb == function.spec.memory_mb
            && e.from_mb == decision.from_mb
            && e.to_mb == decision.to_mb
            && e.condition == decision.condition.as_str()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use ember_fleet::sizing::{Condition, Direction, Evidence};
    use ember_store::FunctionSpec;
    use serde_json::json;

    use super::*;

    fn put(body: serde_json::Value) -> Result<PutSizingRequest, ApiError> {
        parse_json(body.to_string().as_bytes())
    }

    fn change(
        body: serde_json::Value,
        current: &Overrides,
    ) -> Result<(Option<SizingMode>, Option<Overrides>), ApiError> {
        put(body)?.change(current, &SizingConfig::default())
    }

    fn message(r: Result<impl std::fmt::Debug, ApiError>) -> String {
        match r.unwrap_err() {
            ApiError::InvalidParameter(m) => m,
            other => panic!("not a 400: {other:?}"),
        }
    }

    #[test]
    fn a_mode_alone_keeps_the_overrides() {
        let (mode, overrides) = change(json!({"Mode": "auto"}), &Overrides::default()).unwrap();
        assert_eq!(mode, Some(SizingMode::Auto));
        assert_eq!(overrides, None);
        assert_eq!(
            change(json!({}), &Overrides::default()).unwrap(),
            (None, None)
        );
    }

    #[test]
    fn thresholds_are_patched_onto_the_current_overrides_and_null_drops_one() {
        let current = Overrides {
            threshold: Some(3),
            headroom_percent: Some(50.0),
            ..Default::default()
        };
        let (mode, overrides) = change(
            json!({"HeadroomPercent": null, "OverProvisionedPercent": 25}),
            &current,
        )
        .unwrap();
        assert_eq!(mode, None);
        assert_eq!(
            overrides,
            Some(Overrides {
                threshold: Some(3),
                over_provisioned_percent: Some(25.0),
                ..Default::default()
            })
        );
    }

    #[test]
    fn refuses_what_it_cannot_apply() {
        let none = Overrides::default();
        assert!(message(change(json!({"Mode": "sometimes"}), &none)).contains("Mode must be"));
        assert!(message(change(json!({"Mode": null}), &none)).contains("Mode must be"));
        assert!(message(put(json!({"Treshold": 3}))).contains("unknown field"));
        assert!(message(put(json!({"Threshold": -1}))).contains("Could not parse"));
        assert!(message(change(json!({"Threshold": 0}), &none)).contains("Threshold"));
        assert!(message(change(json!({"HeadroomPercent": 0}), &none)).contains("HeadroomPercent"));
        assert!(message(change(
            json!({"OverProvisionedPercent": 80, "UnderProvisionedPercent": 70}),
            &none
        ))
        .contains("below"));
        // Consistent alone, not with the server's default UnderProvisionedPercent (90).
        let m = message(change(json!({"OverProvisionedPercent": 95}), &none));
        assert!(m.contains("server's default"), "{m}");
    }

    fn function() -> Function {
        Function {
            account_id: "123456789012".into(),
            name: "f".into(),
            version: "$LATEST".into(),
            spec: FunctionSpec {
                runtime: Some("python3.11".into()),
                memory_mb: 1024,
                ..crate::test_fixtures::spec()
            },
            code_sha256: String::new(),
            code_size: 0,
            revision_id: "rev-2".into(),
            last_modified: time::OffsetDateTime::UNIX_EPOCH,
            reserved_concurrency: None,
            egress: None,
        }
    }

    fn event(revision: &str, to_mb: u32, applied: bool) -> SizingEvent {
        SizingEvent {
            seq: 1,
            account_id: "123456789012".into(),
            function_name: "f".into(),
            revision_id: revision.into(),
            requested_mb: 1024,
            from_mb: 1024,
            to_mb,
            direction: "down".into(),
            condition: "OverProvisioned".into(),
            evidence_json: r#"{"Executions":3,"MatchingExecutions":3,"PeakMemoryMaxMB":40}"#.into(),
            applied,
            at_ms: 1_714_566_896_789,
        }
    }

    fn report(history: Vec<SizingEvent>, mode: SizingMode, effective_mb: u32) -> SizingReport {
        SizingReport {
            configured_mb: 1024,
            effective_mb,
            mode,
            mode_is_default: false,
            config: SizingConfig::default(),
            overrides: Overrides {
                threshold: Some(3),
                ..Default::default()
            },
            last: Some(Decision {
                direction: Direction::Down,
                from_mb: 1024,
                to_mb: 128,
                condition: Condition::OverProvisioned,
                evidence: Evidence {
                    executions: 3,
                    matching: 3,
                    peak_max_mb: 40,
                    ..Evidence::default()
                },
            }),
            window_executions: 0,
            backoff_remaining: 0,
            history,
            executions: 3,
            gb_seconds_saved: 0.5,
        }
    }

    #[test]
    fn answers_in_the_documented_shape() {
        let history = vec![event("rev-1", 128, false), event("rev-2", 128, true)];
        let got = serde_json::to_value(SizingResponse::new(
            &function(),
            report(history, SizingMode::Auto, 128),
        ))
        .unwrap();
        let evidence = json!({"Executions": 3, "MatchingExecutions": 3, "PeakMemoryP50MB": 0,
            "PeakMemoryHighMB": 0, "PeakMemoryMaxMB": 40, "OutOfMemory": 0, "Timeouts": 0,
            "CpuP90VCpus": 0.0, "DurationP50Ms": 0.0});
        let entry = |revision: &str, applied: bool| {
            json!({"Time": "2024-05-01T12:34:56.789Z", "RevisionId": revision,
                   "Direction": "down", "FromMB": 1024, "ToMB": 128,
                   "Condition": "OverProvisioned", "Applied": applied, "Evidence": evidence})
        };
        assert_eq!(
            got,
            json!({
                "FunctionName": "f", "ConfiguredMemoryMB": 1024, "EffectiveMemoryMB": 128,
                "Mode": "auto", "ModeIsDefault": false,
                "Thresholds": {"Threshold": 5, "OverProvisionedPercent": 40.0,
                               "UnderProvisionedPercent": 90.0, "HeadroomPercent": 30.0,
                               "MaxSlowdownPercent": 10.0},
                "Overrides": {"Threshold": 3},
                "Condition": "OverProvisioned",
                "Recommendation": {"Direction": "down", "FromMB": 1024, "ToMB": 128,
                                   "Condition": "OverProvisioned", "Applied": true,
                                   "Evidence": evidence},
                "Evidence": evidence,
                "WindowExecutions": 0, "BackoffExecutions": 0,
                "History": [entry("rev-1", false), entry("rev-2", true)],
                "Executions": 3, "EstimatedGBSecondsSaved": 0.5,
            })
        );
    }

    /// The bytes of the answer, field order included: scripts read this JSON, so a change of a
    /// type below `api` (a renamed field, a reordered struct) must not reach it.
    #[test]
    fn the_answer_is_pinned_byte_for_byte() {
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
        let mut stored = event("rev-2", 128, true);
        stored.evidence_json = r#"{"Executions":11,"MatchingExecutions":7,"PeakMemoryP50MB":30,"PeakMemoryHighMB":35,"PeakMemoryMaxMB":40,"OutOfMemory":1,"Timeouts":2,"CpuP90VCpus":0.25,"DurationP50Ms":12.5}"#.into();
        let mut r = report(vec![stored], SizingMode::Auto, 128);
        r.overrides = Overrides {
            threshold: Some(3),
            over_provisioned_percent: Some(20.0),
            under_provisioned_percent: Some(80.5),
            headroom_percent: Some(25.0),
            max_slowdown_percent: Some(15.0),
        };
        r.last.as_mut().unwrap().evidence = evidence;
        r.window_executions = 4;
        r.backoff_remaining = 6;
        let got = serde_json::to_string(&SizingResponse::new(&function(), r)).unwrap();
        let evidence = r#"{"Executions":11,"MatchingExecutions":7,"PeakMemoryP50MB":30,"#
            .to_owned()
            + r#""PeakMemoryHighMB":35,"PeakMemoryMaxMB":40,"OutOfMemory":1,"Timeouts":2,"#
            + r#""CpuP90VCpus":0.25,"DurationP50Ms":12.5}"#;
        let expected = [
            r#"{"FunctionName":"f","ConfiguredMemoryMB":1024,"EffectiveMemoryMB":128,"#,
            r#""Mode":"auto","ModeIsDefault":false,"#,
            r#""Thresholds":{"Threshold":5,"OverProvisionedPercent":40.0,"#,
            r#""UnderProvisionedPercent":90.0,"HeadroomPercent":30.0,"MaxSlowdownPercent":10.0},"#,
            r#""Overrides":{"Threshold":3,"OverProvisionedPercent":20.0,"#,
            r#""UnderProvisionedPercent":80.5,"HeadroomPercent":25.0,"MaxSlowdownPercent":15.0},"#,
            r#""Condition":"OverProvisioned","#,
            r#""Recommendation":{"Direction":"down","FromMB":1024,"ToMB":128,"#,
            r#""Condition":"OverProvisioned","Applied":true,"Evidence":"#,
            &evidence,
            r#"},"Evidence":"#,
            &evidence,
            r#","WindowExecutions":4,"BackoffExecutions":6,"#,
            r#""History":[{"Time":"2024-05-01T12:34:56.789Z","RevisionId":"rev-2","#,
            r#""Direction":"down","FromMB":1024,"ToMB":128,"Condition":"OverProvisioned","#,
            r#""Applied":true,"Evidence":"#,
            &evidence,
            r#"}],"Executions":3,"EstimatedGBSecondsSaved":0.5}"#,
        ]
        .concat();
        assert_eq!(got, expected);
    }

    #[test]
    fn applied_comes_from_the_stored_decision_of_the_current_version() {
        let applied = |history, mode, effective| {
            let r = SizingResponse::new(&function(), report(history, mode, effective));
            r.recommendation.unwrap().applied
        };
        // A recommendation, even if the mode is auto now.
        assert!(!applied(
            vec![event("rev-2", 128, false)],
            SizingMode::Auto,
            1024
        ));
        // Another version's applied decision does not count.
        assert!(!applied(
            vec![event("rev-1", 128, true)],
            SizingMode::Recommend,
            1024
        ));
        // Not stored yet: applied if containers get its amount in auto mode.
        assert!(applied(vec![], SizingMode::Auto, 128));
        assert!(!applied(vec![], SizingMode::Recommend, 1024));
    }

    #[test]
    fn nothing_decided_is_null() {
        let mut r = report(vec![], SizingMode::Recommend, 1024);
        r.last = None;
        let got = serde_json::to_value(SizingResponse::new(&function(), r)).unwrap();
        assert_eq!(got["Condition"], json!(null));
        assert_eq!(got["Recommendation"], json!(null));
        assert_eq!(got["Evidence"], json!(null));
        assert_eq!(got["History"], json!([]));
    }
}
