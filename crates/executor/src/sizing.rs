//! Automatic resource sizing, live: the [`Sizer`] keeps each function's sizing state (loaded
//! from the store on first use), feeds it every execution's measurements, applies or records
//! what [`ember_fleet::sizing`] decides, and writes executions and decisions to the store.
//!
//! The amount a container gets is the *effective* amount of its function version and requested
//! amount: the requested one, unless sizing in `auto` mode changed it. Requests keep naming the
//! requested amount; the function's configured MemorySize never changes.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use ember_fleet::sizing::{
    Condition, Decision, Direction, Evidence, Mode, Outcome, Sample, SizingConfig, SizingState,
};
use ember_store::{
    ExecutionOutcome, ExecutionRecord, Function, SizingEvent, SizingSettings, Store, StoreError,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::batch::{Batcher, Dropped};
use crate::lock;

/// Executions kept per function version and requested amount.
pub const HISTORY: u32 = 1000;

/// Per-function threshold overrides. The serde derives are the stored JSON (the settings'
/// `overrides_json`), not an HTTP shape: `api` has its own and converts by hand.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Overrides {
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

impl Overrides {
    /// `config` with these overrides applied.
    pub fn apply(&self, config: &SizingConfig) -> SizingConfig {
        SizingConfig {
            threshold: self.threshold.unwrap_or(config.threshold),
            over_percent: self.over_provisioned_percent.unwrap_or(config.over_percent),
            under_percent: self
                .under_provisioned_percent
                .unwrap_or(config.under_percent),
            headroom_percent: self.headroom_percent.unwrap_or(config.headroom_percent),
            max_slowdown_percent: self
                .max_slowdown_percent
                .unwrap_or(config.max_slowdown_percent),
            ..config.clone()
        }
    }

    /// Why these overrides are not acceptable, if they are not.
    pub fn validate(&self) -> Result<(), String> {
        let percent = |name: &str, v: Option<f64>, max: f64| match v {
            Some(v) if !(v.is_finite() && v > 0.0 && v <= max) => {
                Err(format!("{name} must be above 0 and at most {max}"))
            }
            _ => Ok(()),
        };
        if matches!(self.threshold, Some(t) if !(1..=1000).contains(&t)) {
            return Err("Threshold must be between 1 and 1000".into());
        }
        percent(
            "OverProvisionedPercent",
            self.over_provisioned_percent,
            100.0,
        )?;
        percent(
            "UnderProvisionedPercent",
            self.under_provisioned_percent,
            100.0,
        )?;
        percent("HeadroomPercent", self.headroom_percent, 1000.0)?;
        percent("MaxSlowdownPercent", self.max_slowdown_percent, 1000.0)?;
        let over = self.over_provisioned_percent.unwrap_or(0.0);
        let under = self.under_provisioned_percent.unwrap_or(100.0);
        if over >= under {
            return Err("OverProvisionedPercent must be below UnderProvisionedPercent".into());
        }
        Ok(())
    }
}

/// A function's sizing, for `GET /ember/v1/functions/{name}/sizing`.
#[derive(Debug, Clone)]
pub struct SizingReport {
    pub configured_mb: u32,
    pub effective_mb: u32,
    pub mode: Mode,
    /// Whether the mode is the server's default (never set for this function).
    pub mode_is_default: bool,
    /// The thresholds in force (server defaults with the function's overrides).
    pub config: SizingConfig,
    pub overrides: Overrides,
    /// The latest decision about the current version, applied or recommended.
    pub last: Option<Decision>,
    /// Executions in the current window (since the amount last changed).
    pub window_executions: u32,
    /// Executions to go before another shrink may be tried.
    pub backoff_remaining: u32,
    /// Decisions, oldest first.
    pub history: Vec<SizingEvent>,
    /// Executions recorded for the current version at the requested amount.
    pub executions: u32,
    /// Memory not reserved thanks to smaller containers, over those executions.
    pub gb_seconds_saved: f64,
}

impl FunctionSizing {
    /// The amount a new container gets: the decided one only in `auto` mode.
    fn container_mb(&self, state: &SizingState) -> u32 {
        if self.mode == Mode::Auto {
            state.effective_mb
        } else {
            state.requested_mb
        }
    }
}

#[derive(Debug)]
struct FunctionSizing {
    mode: Mode,
    mode_is_default: bool,
    overrides: Overrides,
    config: SizingConfig,
    /// By (revision, requested amount).
    states: HashMap<(String, u32), SizingState>,
    /// Revisions made since this was loaded ([`Sizer::revised`]): new ids, so the store holds
    /// no decision or execution of theirs, and their state starts fresh without a store query
    /// (a cold start after a deploy does not wait for one).
    fresh: HashSet<String>,
}

/// The live sizing of every function invoked since start.
#[derive(Debug)]
pub struct Sizer {
    store: Store,
    defaults: SizingConfig,
    default_mode: Mode,
    functions: Mutex<HashMap<(String, String), FunctionSizing>>,
    records: Batcher<ExecutionRecord>,
    /// Decisions, written one after another in the order they were taken: a restart takes the
    /// last one stored as the function's amount.
    events: Batcher<SizingEvent>,
}

impl Sizer {
    /// A sizer with server-wide defaults; starts the writer of execution records.
    pub fn start(store: Store, defaults: SizingConfig, default_mode: Mode) -> Self {
        Self {
            records: record_writer(store.clone()),
            events: event_writer(store.clone()),
            store,
            defaults,
            default_mode,
            functions: Mutex::new(HashMap::new()),
        }
    }

    /// The amount a new container of `function` gets.
    pub async fn effective_mb(&self, function: &Function) -> u32 {
        let requested = function.spec.memory_mb;
        let key = (function.account_id.clone(), function.name.clone());
        let state_key = (function.revision_id.clone(), requested);
        {
            let mut functions = lock(&self.functions);
            if let Some(f) = functions.get_mut(&key) {
                if let Some(state) = f.states.get(&state_key) {
                    return f.container_mb(state);
                }
                if f.fresh.contains(&function.revision_id) {
                    // What `load` would find: no decision, no execution of this revision.
                    let state = SizingState::new(requested);
                    let mb = f.container_mb(&state);
                    f.states.insert(state_key, state);
                    return mb;
                }
            }
        }
        match self.load(function).await {
            Ok(mb) => mb,
            Err(err) => {
                warn!(function = %function.name, error = %err, "cannot load sizing state; using the requested amount");
                requested
            }
        }
    }

    /// Loads a function's settings and the state of its current version from the store.
    async fn load(&self, function: &Function) -> Result<u32, StoreError> {
        let requested = function.spec.memory_mb;
        let key = (function.account_id.clone(), function.name.clone());
        let settings = self
            .store
            .sizing_settings(&function.account_id, &function.name)
            .await?;
        let events = self
            .store
            .sizing_events(&function.account_id, &function.name, HISTORY)
            .await?;
        let recent = self.recent(function).await?;
        let (mode, mode_is_default, overrides) =
            parse_settings(settings.as_ref(), self.default_mode);
        let config = overrides.apply(&self.defaults);
        let mut state = SizingState::new(requested);
        // The amount and backoff the last applied decision of this version left.
        let mine =
            |e: &&SizingEvent| e.revision_id == function.revision_id && e.requested_mb == requested;
        if let Some(last) = events.iter().rev().filter(mine).find(|e| e.applied) {
            let decision = decision_of(last);
            let reverts = events
                .iter()
                .filter(mine)
                .filter(|e| e.applied && e.condition == Condition::OutOfMemoryAfterShrink.as_str())
                .count() as u32;
            state.reverts = reverts.saturating_sub(1);
            state.apply(&config, &decision);
            // The executions since the decision, not counting the one that led to it (its
            // count went to the backoff the decision replaced).
            let since = recent
                .iter()
                .filter(|r| r.started_at_ms >= last.at_ms)
                .count()
                .saturating_sub(1) as u32;
            state.backoff_remaining = state.backoff_remaining.saturating_sub(since);
            state.last = Some(decision);
        } else if let Some(last) = events.iter().rev().find(mine) {
            state.last = Some(decision_of(last));
        }
        // Replay the window since the last change, so a restart loses no evidence.
        let changed_at = events
            .iter()
            .rev()
            .filter(mine)
            .find(|e| e.applied)
            .map_or(i64::MIN, |e| e.at_ms);
        for r in recent.iter().filter(|r| r.started_at_ms >= changed_at) {
            state.remember(sample_of(r));
        }
        let mut functions = lock(&self.functions);
        let entry = functions.entry(key).or_insert_with(|| FunctionSizing {
            mode,
            mode_is_default,
            overrides,
            config,
            states: HashMap::new(),
            fresh: HashSet::new(),
        });
        let auto = entry.mode == Mode::Auto;
        let state = entry
            .states
            .entry((function.revision_id.clone(), requested))
            .or_insert(state);
        Ok(if auto {
            state.effective_mb
        } else {
            state.requested_mb
        })
    }

    /// The recorded executions of a function's current version at its requested amount.
    async fn recent(&self, function: &Function) -> Result<Vec<ExecutionRecord>, StoreError> {
        self.store
            .recent_executions(
                &function.account_id,
                &function.name,
                &function.revision_id,
                function.spec.memory_mb,
                HISTORY,
            )
            .await
    }

    /// Counts an execution of `function`, deciding (and applying in `auto` mode) what its
    /// measurements call for. Returns its record, for the caller to store: through
    /// [`Sizer::record`], or with the settlement of the event that ran it.
    pub fn observe(
        &self,
        function: &Function,
        sample: Sample,
        init_ms: Option<f64>,
        started_at_ms: i64,
    ) -> ExecutionRecord {
        let record = ExecutionRecord {
            account_id: function.account_id.clone(),
            function_name: function.name.clone(),
            revision_id: function.revision_id.clone(),
            requested_mb: function.spec.memory_mb,
            memory_mb: sample.memory_mb,
            peak_mb: sample.peak_mb,
            cpu_ms: sample.cpu_ms,
            throttled_ms: sample.throttled_ms,
            duration_ms: sample.duration_ms,
            init_ms,
            outcome: match sample.outcome {
                Outcome::Ok => ExecutionOutcome::Ok,
                Outcome::Error => ExecutionOutcome::Error,
                Outcome::Timeout => ExecutionOutcome::Timeout,
                Outcome::OutOfMemory => ExecutionOutcome::OutOfMemory,
            },
            started_at_ms,
        };
        self.decide(function, sample, started_at_ms);
        record
    }

    /// Stores an execution's record in the next batch.
    pub fn record(&self, record: ExecutionRecord) {
        self.records.send(record);
    }

    /// Feeds an execution to its function's sizing state and acts on the decision it leads to.
    fn decide(&self, function: &Function, sample: Sample, started_at_ms: i64) {
        let requested = function.spec.memory_mb;
        let key = (function.account_id.clone(), function.name.clone());
        let mut functions = lock(&self.functions);
        let Some(f) = functions.get_mut(&key) else {
            return;
        };
        let (mode, config) = (f.mode, f.config.clone());
        let state = f
            .states
            .entry((function.revision_id.clone(), requested))
            .or_insert_with(|| SizingState::new(requested));
        let Some(decision) = state.observe(&config, mode, sample) else {
            return;
        };
        let applied = mode == Mode::Auto;
        if applied {
            metrics::counter!("ember_resize_events_total", "direction" => decision.direction.as_str())
                .increment(1);
            info!(
                function = %function.name,
                from_mb = decision.from_mb,
                to_mb = decision.to_mb,
                condition = %decision.condition,
                "new containers get a new memory amount"
            );
        }
        // Queued under the lock, so decisions are stored in the order they were taken.
        self.events.send(SizingEvent {
            seq: 0,
            account_id: function.account_id.clone(),
            function_name: function.name.clone(),
            revision_id: function.revision_id.clone(),
            requested_mb: requested,
            from_mb: decision.from_mb,
            to_mb: decision.to_mb,
            direction: decision.direction.as_str().into(),
            condition: decision.condition.as_str().into(),
            evidence_json: evidence_json(&decision.evidence),
            applied,
            at_ms: started_at_ms,
        });
        drop(functions);
    }

    /// Returns once every execution recorded and every decision taken so far is in the store.
    pub async fn flush(&self) {
        self.records.flush().await;
        self.events.flush().await;
    }

    /// Forgets a function's cached state (its settings changed, or it was updated or deleted):
    /// the next execution loads it again.
    pub fn forget(&self, account_id: &str, function_name: &str) {
        lock(&self.functions).remove(&(account_id.to_owned(), function_name.to_owned()));
    }

    /// A function's `$LATEST` became the new revision `current`: the states of its other
    /// revisions are dropped, as [`Sizer::forget`] dropped them (a published version that runs
    /// again loads its own from the store), its settings are kept (only [`Sizer::set`] changes
    /// them, and forgets them), and `current`, a new id with nothing stored for it, starts fresh
    /// when first invoked, without a store query.
    pub fn revised(&self, account_id: &str, function_name: &str, current: &str) {
        let mut functions = lock(&self.functions);
        let key = (account_id.to_owned(), function_name.to_owned());
        if let Some(f) = functions.get_mut(&key) {
            f.states.retain(|(revision, _), _| revision == current);
            f.fresh.clear();
            f.fresh.insert(current.to_owned());
        }
    }

    /// The sizing of a function's current version, for the API.
    pub async fn report(&self, function: &Function) -> Result<SizingReport, StoreError> {
        let effective = self.effective_mb(function).await;
        let requested = function.spec.memory_mb;
        let history = self
            .store
            .sizing_events(&function.account_id, &function.name, 100)
            .await?;
        let recent = self.recent(function).await?;
        let gb_seconds_saved = recent
            .iter()
            .map(|r| {
                f64::from(requested.saturating_sub(r.memory_mb)) / 1024.0 * r.duration_ms / 1000.0
            })
            .sum();
        let functions = lock(&self.functions);
        let key = (function.account_id.clone(), function.name.clone());
        let f = functions.get(&key);
        let state = f.and_then(|f| f.states.get(&(function.revision_id.clone(), requested)));
        Ok(SizingReport {
            configured_mb: requested,
            effective_mb: effective,
            mode: f.map_or(self.default_mode, |f| f.mode),
            mode_is_default: f.is_none_or(|f| f.mode_is_default),
            config: f.map_or_else(|| self.defaults.clone(), |f| f.config.clone()),
            overrides: f.map(|f| f.overrides.clone()).unwrap_or_default(),
            last: state.and_then(|s| s.last.clone()),
            window_executions: state.map_or(0, |s| s.window().len() as u32),
            backoff_remaining: state.map_or(0, |s| s.backoff_remaining),
            history,
            executions: recent.len() as u32,
            gb_seconds_saved,
        })
    }

    /// Stores a function's mode and overrides; later executions follow them.
    pub async fn set(
        &self,
        function: &Function,
        mode: Option<Mode>,
        overrides: Option<Overrides>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let current = self
            .store
            .sizing_settings(&function.account_id, &function.name)
            .await?;
        let (old_mode, old_is_default, old_overrides) =
            parse_settings(current.as_ref(), self.default_mode);
        // Without a mode, the function keeps the one it had: its own, or the server's default
        // (it goes on following `--sizing-mode` when only its thresholds are set).
        let mode = match mode {
            Some(mode) => Some(mode),
            None if old_is_default => None,
            None => Some(old_mode),
        };
        let settings = SizingSettings {
            mode: mode.map(|m| m.as_str().into()),
            overrides_json: serde_json::to_string(&overrides.unwrap_or(old_overrides))
                .unwrap_or_else(|_| "{}".into()),
            updated_at_ms: now_ms,
        };
        self.store
            .put_sizing_settings(&function.account_id, &function.name, &settings)
            .await?;
        self.forget(&function.account_id, &function.name);
        Ok(())
    }
}

fn parse_settings(
    settings: Option<&SizingSettings>,
    default_mode: Mode,
) -> (Mode, bool, Overrides) {
    let overrides = settings
        .and_then(|s| serde_json::from_str(&s.overrides_json).ok())
        .unwrap_or_default();
    match settings
        .and_then(|s| s.mode.as_deref())
        .and_then(Mode::parse)
    {
        Some(mode) => (mode, false, overrides),
        None => (default_mode, true, overrides),
    }
}

/// The sample of an execution record.
fn sample_of(r: &ExecutionRecord) -> Sample {
    Sample {
        memory_mb: r.memory_mb,
        peak_mb: r.peak_mb,
        cpu_ms: r.cpu_ms,
        throttled_ms: r.throttled_ms,
        duration_ms: r.duration_ms,
        outcome: match r.outcome {
            ExecutionOutcome::Ok => Outcome::Ok,
            ExecutionOutcome::Error => Outcome::Error,
            ExecutionOutcome::Timeout => Outcome::Timeout,
            ExecutionOutcome::OutOfMemory => Outcome::OutOfMemory,
        },
        init_ms: r.init_ms,
    }
}

/// A stored decision, back as a decision.
fn decision_of(e: &SizingEvent) -> Decision {
    Decision {
        direction: if e.direction == "up" {
            Direction::Up
        } else {
            Direction::Down
        },
        from_mb: e.from_mb,
        to_mb: e.to_mb,
        condition: Condition::parse(&e.condition).unwrap_or(Condition::OverProvisioned),
        evidence: stored_evidence(e).unwrap_or_default(),
    }
}

/// A stored decision's evidence, read back; `None` if what was stored cannot be read.
pub fn stored_evidence(e: &SizingEvent) -> Option<Evidence> {
    serde_json::from_str::<StoredEvidence>(&e.evidence_json)
        .ok()
        .map(Evidence::from)
}

/// The evidence of a decision, as stored (a sizing event's `evidence_json`). Not an HTTP shape:
/// `api` has its own and converts by hand.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct StoredEvidence {
    executions: u32,
    matching_executions: u32,
    #[serde(rename = "PeakMemoryP50MB")]
    peak_p50_mb: u64,
    #[serde(rename = "PeakMemoryHighMB")]
    peak_high_mb: u64,
    #[serde(rename = "PeakMemoryMaxMB")]
    peak_max_mb: u64,
    out_of_memory: u32,
    timeouts: u32,
    #[serde(rename = "CpuP90VCpus")]
    cpu_cores_p90: f64,
    duration_p50_ms: f64,
}

impl From<&Evidence> for StoredEvidence {
    fn from(e: &Evidence) -> Self {
        Self {
            executions: e.executions,
            matching_executions: e.matching,
            peak_p50_mb: e.peak_p50_mb,
            peak_high_mb: e.peak_high_mb,
            peak_max_mb: e.peak_max_mb,
            out_of_memory: e.out_of_memory,
            timeouts: e.timeouts,
            cpu_cores_p90: e.cpu_cores_p90,
            duration_p50_ms: e.duration_p50_ms,
        }
    }
}

impl From<StoredEvidence> for Evidence {
    fn from(e: StoredEvidence) -> Self {
        Self {
            executions: e.executions,
            matching: e.matching_executions,
            peak_p50_mb: e.peak_p50_mb,
            peak_high_mb: e.peak_high_mb,
            peak_max_mb: e.peak_max_mb,
            out_of_memory: e.out_of_memory,
            timeouts: e.timeouts,
            cpu_cores_p90: e.cpu_cores_p90,
            duration_p50_ms: e.duration_p50_ms,
        }
    }
}

fn evidence_json(e: &Evidence) -> String {
    serde_json::to_string(&StoredEvidence::from(e)).unwrap_or_else(|_| "{}".into())
}

/// Longest an execution record waits before it is written: records are only read back when a
/// function's state is loaded, and each batch prunes the history of the keys it touches, so
/// fewer, larger batches are cheaper.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
/// Most records written in one transaction.
const BATCH: usize = 2048;

/// A writer of sizing decisions, each stored as soon as it is taken, in order.
fn event_writer(store: Store) -> Batcher<SizingEvent> {
    Batcher::start(
        std::time::Duration::ZERO,
        64,
        move |batch: Vec<SizingEvent>| {
            let store = store.clone();
            async move {
                for event in batch {
                    if let Err(err) = store.add_sizing_event(&event).await {
                        warn!(error = %err, "cannot record a sizing decision");
                    }
                }
            }
        },
    )
}

/// A writer of execution records, in batches. A batch the store refuses (its disk full, say) is
/// dropped and counted: sizing then decides on fewer executions after a restart.
fn record_writer(store: Store) -> Batcher<ExecutionRecord> {
    let dropped = std::sync::Arc::new(Dropped::new("execution"));
    Batcher::start(FLUSH_EVERY, BATCH, move |batch: Vec<ExecutionRecord>| {
        let store = store.clone();
        let dropped = dropped.clone();
        async move {
            if let Err(err) = store.record_executions(&batch, HISTORY).await {
                dropped.report(batch.len(), &err);
            }
        }
    })
}
