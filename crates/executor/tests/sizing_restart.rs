//! Automatic sizing across a restart: the decisions a [`Sizer`] reached, the window of
//! executions since the amount last changed, and the backoff after a revert are all rebuilt
//! from the store by a new `Sizer` on the reopened data dir, as if the server had never stopped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use ember_executor::sizing::{Sizer, SizingReport};
use ember_fleet::sizing::{Condition, Direction, Mode, Outcome, Sample, SizingConfig};
use ember_store::{Function, FunctionSpec, Store};

const REQUESTED_MB: u32 = 1024;
/// A fixed start, in epoch milliseconds; each execution starts 1 s after the one before.
const T0: i64 = 1_800_000_000_000;

fn spec() -> FunctionSpec {
    FunctionSpec {
        runtime: Some("python3.11".into()),
        role: "arn:aws:iam::123456789012:role/r".into(),
        handler: Some("app.handler".into()),
        description: String::new(),
        timeout_s: 3,
        memory_mb: REQUESTED_MB,
        ephemeral_mb: 512,
        environment: BTreeMap::new(),
        architectures: vec!["x86_64".into()],
        package_type: "Zip".into(),
        layers: Vec::new(),
        snap_start: Default::default(),
    }
}

fn sample(memory_mb: u32, peak_mb: u64, outcome: Outcome) -> Sample {
    Sample {
        memory_mb,
        peak_mb,
        cpu_ms: 5.0,
        throttled_ms: 0.0,
        duration_ms: 50.0,
        outcome,
        init_ms: None,
    }
}

/// A sizer in `auto` mode, with the server's default thresholds (5 executions).
fn sizer(store: &Store) -> Sizer {
    Sizer::start(store.clone(), SizingConfig::default(), Mode::Auto)
}

/// Feeds one execution to `sizer` and stores its record, as the executor does.
fn execute(sizer: &Sizer, function: &Function, sample: Sample, at_ms: i64) {
    let record = sizer.observe(function, sample, None, at_ms);
    sizer.record(record);
}

/// Waits until every execution record and decision so far is in the store, and checks that
/// the store holds `count` decisions of `function`.
async fn settled(sizer: &Sizer, store: &Store, function: &Function, count: usize) {
    sizer.flush().await;
    let events = store
        .sizing_events(&function.account_id, &function.name, 100)
        .await
        .unwrap();
    assert_eq!(events.len(), count, "{events:?}");
}

/// Stops a store the way a server does (the pool closed, the handle dropped) and opens the
/// data dir again.
async fn restart(store: Store, old: Sizer, dir: &Path) -> (Store, Sizer) {
    drop(old);
    store.close().await;
    drop(store);
    let store = Store::open(dir).await.unwrap();
    let new = sizer(&store);
    (store, new)
}

/// What a report says of a function's sizing that must not change across a restart.
fn durable(report: &SizingReport) -> impl PartialEq + std::fmt::Debug {
    (
        report.effective_mb,
        report.last.clone(),
        report.window_executions,
        report.backoff_remaining,
        report.executions,
        report
            .history
            .iter()
            .map(|e| (e.from_mb, e.to_mb, e.condition.clone(), e.applied, e.at_ms))
            .collect::<Vec<_>>(),
    )
}

/// A store in `dir` with one function, shrunk by the live sizer.
struct Shrunk {
    store: Store,
    account: String,
    function: Function,
    sizer: Sizer,
    /// The amount it was shrunk to, in MB.
    shrunk: u32,
    /// The clock (epoch ms) after the executions that shrank it.
    at: i64,
}

/// Creates `sized` at `REQUESTED_MB` and runs five executions peaking at a tenth of it: a shrink,
/// applied.
async fn shrunk(dir: &Path) -> Shrunk {
    let store = Store::open(dir).await.unwrap();
    let account = store
        .create_account("alice", false)
        .await
        .unwrap()
        .account_id;
    let function = store
        .create_function(&account, "sized", &spec(), b"zip")
        .await
        .unwrap();
    let sizer = sizer(&store);
    assert_eq!(sizer.effective_mb(&function).await, REQUESTED_MB);
    let mut at = T0;
    for _ in 0..5 {
        execute(
            &sizer,
            &function,
            sample(REQUESTED_MB, 100, Outcome::Ok),
            at,
        );
        at += 1000;
    }
    let shrunk = sizer.effective_mb(&function).await;
    assert!(shrunk < REQUESTED_MB / 2, "{shrunk}");
    Shrunk {
        store,
        account,
        function,
        sizer,
        shrunk,
        at,
    }
}

async fn function_of(store: &Store, account: &str) -> Function {
    store.function(account, "sized").await.unwrap().unwrap()
}

#[tokio::test]
async fn a_decision_and_its_window_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let Shrunk {
        store,
        account,
        function,
        sizer,
        shrunk,
        mut at,
    } = shrunk(dir.path()).await;
    // Three executions at the new amount, peaking near it: the window since the change, short
    // of the five a growth needs.
    let high = u64::from(shrunk) * 95 / 100;
    for _ in 0..3 {
        execute(&sizer, &function, sample(shrunk, high, Outcome::Ok), at);
        at += 1000;
    }
    settled(&sizer, &store, &function, 1).await;
    let before = sizer.report(&function).await.unwrap();
    let decision = before.last.clone().expect("a decision");
    assert_eq!(
        (decision.direction, decision.condition, decision.to_mb),
        (Direction::Down, Condition::OverProvisioned, shrunk)
    );
    assert_eq!(before.window_executions, 3);
    assert_eq!(before.executions, 8);

    let (store, sizer) = restart(store, sizer, dir.path()).await;
    let function = function_of(&store, &account).await;
    assert_eq!(sizer.effective_mb(&function).await, shrunk);
    let after = sizer.report(&function).await.unwrap();
    assert_eq!(durable(&after), durable(&before));
    assert_eq!(after.last.as_ref(), Some(&decision));

    // The window goes on where it was: two more high peaks make the five a growth needs.
    execute(&sizer, &function, sample(shrunk, high, Outcome::Ok), at);
    at += 1000;
    assert_eq!(sizer.effective_mb(&function).await, shrunk);
    execute(&sizer, &function, sample(shrunk, high, Outcome::Ok), at);
    let grown = sizer.effective_mb(&function).await;
    assert!(grown > shrunk, "{grown} after {shrunk}");
    let report = sizer.report(&function).await.unwrap();
    let growth = report.last.unwrap();
    assert_eq!(
        (
            growth.direction,
            growth.condition,
            growth.evidence.executions
        ),
        (Direction::Up, Condition::HighMemory, 5)
    );
}

#[tokio::test]
async fn a_revert_and_its_backoff_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let Shrunk {
        store,
        account,
        function,
        sizer,
        shrunk,
        mut at,
    } = shrunk(dir.path()).await;
    // An OOM kill below the requested amount: back to it at once, and no shrink for a while.
    execute(
        &sizer,
        &function,
        sample(shrunk, u64::from(shrunk), Outcome::OutOfMemory),
        at,
    );
    at += 1000;
    assert_eq!(sizer.effective_mb(&function).await, REQUESTED_MB);
    for _ in 0..4 {
        execute(
            &sizer,
            &function,
            sample(REQUESTED_MB, 100, Outcome::Ok),
            at,
        );
        at += 1000;
    }
    settled(&sizer, &store, &function, 2).await;
    let before = sizer.report(&function).await.unwrap();
    assert_eq!(
        before.last.as_ref().map(|d| d.condition),
        Some(Condition::OutOfMemoryAfterShrink)
    );
    assert!(before.backoff_remaining > 0);
    assert_eq!(before.window_executions, 4);

    let (store, sizer) = restart(store, sizer, dir.path()).await;
    let function = function_of(&store, &account).await;
    assert_eq!(sizer.effective_mb(&function).await, REQUESTED_MB);
    let after = sizer.report(&function).await.unwrap();
    assert_eq!(durable(&after), durable(&before));
}

#[tokio::test]
async fn a_new_revision_started_fresh_is_what_a_restart_finds() {
    let dir = tempfile::tempdir().unwrap();
    let Shrunk {
        store,
        account,
        function,
        sizer,
        shrunk: _,
        mut at,
    } = shrunk(dir.path()).await;
    settled(&sizer, &store, &function, 1).await;
    // A deploy: a new revision, which the executor tells the sizer of (its state then starts
    // without a store query).
    let updated = store
        .update_function(
            &account,
            "sized",
            None,
            ember_store::FunctionChange::Code(b"new zip"),
        )
        .await
        .unwrap();
    assert_ne!(updated.revision_id, function.revision_id);
    sizer.revised(&account, "sized", &updated.revision_id);
    assert_eq!(sizer.effective_mb(&updated).await, REQUESTED_MB);
    // Its own executions shrink it, as they would have from a state loaded from the store.
    for _ in 0..5 {
        execute(&sizer, &updated, sample(REQUESTED_MB, 100, Outcome::Ok), at);
        at += 1000;
    }
    let shrunk_again = sizer.effective_mb(&updated).await;
    assert!(shrunk_again < REQUESTED_MB / 2, "{shrunk_again}");
    settled(&sizer, &store, &updated, 2).await;
    let before = sizer.report(&updated).await.unwrap();
    assert_eq!(before.window_executions, 0);

    let (store, sizer) = restart(store, sizer, dir.path()).await;
    let updated = function_of(&store, &account).await;
    assert_eq!(sizer.effective_mb(&updated).await, shrunk_again);
    let after = sizer.report(&updated).await.unwrap();
    assert_eq!(durable(&after), durable(&before));
}
