//! `ember fn sizing NAME`: a function's automatic resource sizing, explained in words (or the
//! raw JSON of `GET /ember/v1/functions/{name}/sizing`); with a setting flag, changes its mode or
//! thresholds first (`PUT` on the same path).

use std::fmt::Write as _;

use reqwest::Method;
use serde_json::{Map, Value};

use crate::client::Client;

#[derive(Debug, clap::Args)]
pub struct SizingArgs {
    name: String,
    /// Set the function's sizing mode: off, recommend (decide and report only) or auto (apply).
    #[arg(long, value_parser = ["off", "recommend", "auto"])]
    mode: Option<String>,
    /// Set the executions a condition must hold for.
    #[arg(long)]
    threshold: Option<u32>,
    /// Set over-provisioned: peaks at or below this percentage of the amount.
    #[arg(long)]
    over_percent: Option<f64>,
    /// Set under-provisioned: peaks at or above this percentage of the amount.
    #[arg(long)]
    under_percent: Option<f64>,
    /// Set the memory added above the 95th percentile of peaks, in percent.
    #[arg(long)]
    headroom_percent: Option<f64>,
    /// Set how much a shrink may slow a CPU-hungry function down, in percent.
    #[arg(long)]
    max_slowdown_percent: Option<f64>,
    /// Print the raw JSON document.
    #[arg(long)]
    json: bool,
}

impl SizingArgs {
    /// The `PUT` body, if any setting flag was given.
    fn changes(&self) -> Option<Value> {
        let mut body = Map::new();
        if let Some(m) = &self.mode {
            body.insert("Mode".into(), m.clone().into());
        }
        if let Some(t) = self.threshold {
            body.insert("Threshold".into(), t.into());
        }
        for (key, value) in [
            ("OverProvisionedPercent", self.over_percent),
            ("UnderProvisionedPercent", self.under_percent),
            ("HeadroomPercent", self.headroom_percent),
            ("MaxSlowdownPercent", self.max_slowdown_percent),
        ] {
            if let Some(v) = value {
                body.insert(key.into(), v.into());
            }
        }
        (!body.is_empty()).then_some(Value::Object(body))
    }
}

pub async fn run(client: &Client, args: SizingArgs) -> anyhow::Result<()> {
    let path = format!("/ember/v1/functions/{}/sizing", Client::segment(&args.name));
    let doc = match args.changes() {
        Some(body) => client.json(Method::PUT, &path, Some(body)).await?,
        None => client.json(Method::GET, &path, None).await?,
    };
    if args.json {
        println!("{doc}");
    } else {
        print!("{}", explain(&doc));
    }
    Ok(())
}

/// The sizing document, in words.
fn explain(doc: &Value) -> String {
    let mut out = String::new();
    let name = doc["FunctionName"].as_str().unwrap_or("?");
    let configured = doc["ConfiguredMemoryMB"].as_u64().unwrap_or(0);
    let effective = doc["EffectiveMemoryMB"].as_u64().unwrap_or(configured);
    let mode = doc["Mode"].as_str().unwrap_or("?");
    let rec = &doc["Recommendation"];
    let mut mode_note = format!("mode: {mode}");
    if doc["ModeIsDefault"].as_bool() == Some(true) {
        mode_note.push_str(", the server's default");
    }
    // A decision made in `recommend` mode stays a recommendation, whatever the mode is now.
    if rec["Applied"].as_bool() == Some(false) && rec["ToMB"].as_u64() != Some(effective) {
        let _ = write!(mode_note, "; recommended: {} MB", rec["ToMB"]);
    }
    let _ = writeln!(
        out,
        "{name}: configured {configured} MB, containers get {effective} MB ({mode_note})"
    );
    let _ = writeln!(out, "Why: {}", why(doc));
    if let Some(n) = doc["BackoffExecutions"].as_u64().filter(|&n| n > 0) {
        let _ = writeln!(
            out,
            "No shrink for another {n} executions (the backoff after an out-of-memory revert)."
        );
    }
    let t = &doc["Thresholds"];
    let _ = write!(
        out,
        "Thresholds: {} executions; over-provisioned at ≤ {}%, under-provisioned at ≥ {}%; \
         headroom {}%; max slowdown {}%",
        num(&t["Threshold"]),
        num(&t["OverProvisionedPercent"]),
        num(&t["UnderProvisionedPercent"]),
        num(&t["HeadroomPercent"]),
        num(&t["MaxSlowdownPercent"]),
    );
    match doc["Overrides"].as_object().filter(|o| !o.is_empty()) {
        Some(o) => {
            let names: Vec<&str> = o.keys().map(String::as_str).collect();
            let _ = writeln!(out, " (this function's own: {})", names.join(", "));
        }
        None => out.push('\n'),
    }
    let _ = writeln!(
        out,
        "Estimated savings: {:.2} GB-s over {} executions.",
        doc["EstimatedGBSecondsSaved"].as_f64().unwrap_or(0.0),
        num(&doc["Executions"]),
    );
    match doc["History"].as_array().filter(|h| !h.is_empty()) {
        None => out.push_str("History: no decisions yet.\n"),
        Some(history) => {
            out.push_str("History:\n");
            for e in history {
                let _ = writeln!(
                    out,
                    "  {}  {} {} → {} MB  {} ({})",
                    seconds(e["Time"].as_str().unwrap_or("?")),
                    e["Direction"].as_str().unwrap_or("?"),
                    e["FromMB"],
                    e["ToMB"],
                    e["Condition"].as_str().unwrap_or("?"),
                    if e["Applied"].as_bool() == Some(true) {
                        "applied"
                    } else {
                        "recommended"
                    },
                );
            }
        }
    }
    out
}

/// Why the function has the amount it has: the latest decision and its evidence.
fn why(doc: &Value) -> String {
    let rec = &doc["Recommendation"];
    let t = &doc["Thresholds"];
    if !rec.is_object() {
        if doc["Mode"].as_str() == Some("off") {
            return "sizing is off for this function: nothing is decided.".into();
        }
        return format!(
            "nothing to change so far ({} executions observed at {} MB; a condition must hold \
             for {} executions).",
            num(&doc["WindowExecutions"]),
            num(&doc["EffectiveMemoryMB"]),
            num(&t["Threshold"]),
        );
    }
    let ev = &rec["Evidence"];
    let (from, to) = (num(&rec["FromMB"]), num(&rec["ToMB"]));
    let peaks = format!(
        "p50 {} MB, p95 {} MB, max {} MB",
        num(&ev["PeakMemoryP50MB"]),
        num(&ev["PeakMemoryHighMB"]),
        num(&ev["PeakMemoryMaxMB"]),
    );
    let headroom = 1.0 + t["HeadroomPercent"].as_f64().unwrap_or(0.0) / 100.0;
    let cpu = ev["CpuP90VCpus"].as_f64().unwrap_or(0.0);
    let executions = num(&ev["Executions"]);
    match rec["Condition"].as_str().unwrap_or("") {
        "OverProvisioned" => format!(
            "over-provisioned — the last {} executions peaked at ≤ {}% of {from} MB ({peaks}; \
             {cpu:.2} vCPU at p90); new amount = p95 × {headroom:.2}, rounded to 64 MB, at least \
             the largest peak and enough CPU share to slow it down by at most {}%.",
            num(&ev["MatchingExecutions"]),
            num(&t["OverProvisionedPercent"]),
            num(&t["MaxSlowdownPercent"]),
        ),
        "OutOfMemory" => format!(
            "under-provisioned (out of memory) — {} of the last {executions} executions at \
             {from} MB were killed for lack of memory ({peaks}); new amount = twice that, at least \
             p95 × {headroom:.2}: {to} MB.",
            num(&ev["OutOfMemory"]),
        ),
        "HighMemory" => format!(
            "under-provisioned (high memory) — {} of the last {executions} executions peaked at \
             ≥ {}% of {from} MB ({peaks}); new amount = p95 × {headroom:.2}, rounded to 64 MB: \
             {to} MB.",
            num(&ev["MatchingExecutions"]),
            num(&t["UnderProvisionedPercent"]),
        ),
        "CpuStarved" => format!(
            "CPU-starved — {} of the last {executions} executions at {from} MB timed out while \
             throttled by the CPU quota ({cpu:.2} vCPU at p90; CPU follows memory, 1769 MB per \
             vCPU); new amount = twice that: {to} MB.",
            num(&ev["Timeouts"]),
        ),
        "OutOfMemoryAfterShrink" => format!(
            "out of memory after a shrink — an execution was killed for lack of memory at {from} \
             MB, below the configured {} MB; reverted at once to {to} MB ({peaks}).",
            num(&doc["ConfiguredMemoryMB"]),
        ),
        other => format!("{other}: {from} → {to} MB ({peaks})."),
    }
}

/// A JSON number as a person writes it: `40`, not `40.0`.
fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if v.is_f64() && x.fract() == 0.0 && x.abs() < 1e15 => format!("{x:.0}"),
        Some(_) => v.to_string(),
        None => "?".into(),
    }
}

/// `2024-05-01T12:34:56.789Z` as `2024-05-01T12:34:56Z`.
fn seconds(time: &str) -> String {
    match (time.find('.'), time.strip_suffix('Z')) {
        (Some(dot), Some(_)) => format!("{}Z", &time[..dot]),
        _ => time.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc(mode: &str, effective: u64, applied: bool) -> Value {
        let evidence = json!({"Executions": 5, "MatchingExecutions": 5, "PeakMemoryP50MB": 61,
            "PeakMemoryHighMB": 62, "PeakMemoryMaxMB": 62, "OutOfMemory": 0, "Timeouts": 0,
            "CpuP90VCpus": 0.02, "DurationP50Ms": 3.5});
        json!({
            "FunctionName": "my-fn", "ConfiguredMemoryMB": 1024, "EffectiveMemoryMB": effective,
            "Mode": mode, "ModeIsDefault": false,
            "Thresholds": {"Threshold": 5, "OverProvisionedPercent": 40.0,
                           "UnderProvisionedPercent": 90.0, "HeadroomPercent": 30.0,
                           "MaxSlowdownPercent": 10.0},
            "Overrides": {},
            "Condition": "OverProvisioned",
            "Recommendation": {"Direction": "down", "FromMB": 1024, "ToMB": 128,
                               "Condition": "OverProvisioned", "Applied": applied,
                               "Evidence": evidence},
            "Evidence": evidence,
            "WindowExecutions": 3, "BackoffExecutions": 0,
            "History": [{"Time": "2026-11-24T17:40:01.123Z", "RevisionId": "r",
                         "Direction": "down", "FromMB": 1024, "ToMB": 128,
                         "Condition": "OverProvisioned", "Applied": applied,
                         "Evidence": evidence}],
            "Executions": 42, "EstimatedGBSecondsSaved": 1.25,
        })
    }

    #[test]
    fn explains_an_applied_shrink() {
        let text = explain(&doc("auto", 128, true));
        assert_eq!(
            text,
            "my-fn: configured 1024 MB, containers get 128 MB (mode: auto)\n\
             Why: over-provisioned — the last 5 executions peaked at ≤ 40% of 1024 MB (p50 61 \
             MB, p95 62 MB, max 62 MB; 0.02 vCPU at p90); new amount = p95 × 1.30, rounded to 64 \
             MB, at least the largest peak and enough CPU share to slow it down by at most 10%.\n\
             Thresholds: 5 executions; over-provisioned at ≤ 40%, under-provisioned at ≥ 90%; \
             headroom 30%; max slowdown 10%\n\
             Estimated savings: 1.25 GB-s over 42 executions.\n\
             History:\n  \
             2026-11-24T17:40:01Z  down 1024 → 128 MB  OverProvisioned (applied)\n"
        );
    }

    #[test]
    fn explains_a_recommendation() {
        let text = explain(&doc("recommend", 1024, false));
        assert!(text.starts_with(
            "my-fn: configured 1024 MB, containers get 1024 MB (mode: recommend; recommended: \
             128 MB)\n"
        ));
        assert!(text.contains("OverProvisioned (recommended)"), "{text}");
    }

    #[test]
    fn explains_no_decision_overrides_and_backoff() {
        let mut d = doc("auto", 1024, false);
        d["Recommendation"] = Value::Null;
        d["History"] = json!([]);
        d["BackoffExecutions"] = 17.into();
        d["Overrides"] = json!({"Threshold": 3});
        let text = explain(&d);
        assert!(text.contains("Why: nothing to change so far (3 executions observed at 1024 MB"));
        assert!(text.contains("No shrink for another 17 executions"));
        assert!(text.contains("(this function's own: Threshold)"));
        assert!(text.contains("History: no decisions yet."));
    }

    #[test]
    fn a_setting_flag_makes_a_put() {
        let mut args = SizingArgs {
            name: "f".into(),
            mode: None,
            threshold: None,
            over_percent: None,
            under_percent: None,
            headroom_percent: None,
            max_slowdown_percent: None,
            json: false,
        };
        assert_eq!(args.changes(), None);
        args.mode = Some("auto".into());
        args.headroom_percent = Some(25.0);
        assert_eq!(
            args.changes(),
            Some(json!({"Mode": "auto", "HeadroomPercent": 25.0}))
        );
    }
}
