//! Tests of the sizing tables: round trips, the bounded history, settings, decisions, and rows
//! going with their function.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use sqlx::Row;

use super::*;
use crate::tests::{spec, store};
use crate::{FunctionChange, SpecPatch};

fn execution(
    account_id: &str,
    function_name: &str,
    revision_id: &str,
    requested_mb: u32,
    started_at_ms: i64,
) -> ExecutionRecord {
    ExecutionRecord {
        account_id: account_id.into(),
        function_name: function_name.into(),
        revision_id: revision_id.into(),
        requested_mb,
        memory_mb: requested_mb,
        peak_mb: 40,
        cpu_ms: 1.5,
        throttled_ms: 0.0,
        duration_ms: 2.25,
        init_ms: None,
        outcome: ExecutionOutcome::Ok,
        started_at_ms,
    }
}

fn event(account_id: &str, function_name: &str, to_mb: u32, at_ms: i64) -> SizingEvent {
    SizingEvent {
        seq: 0,
        account_id: account_id.into(),
        function_name: function_name.into(),
        revision_id: "r1".into(),
        requested_mb: 128,
        from_mb: 128,
        to_mb,
        direction: if to_mb > 128 { "up" } else { "down" }.into(),
        condition: "oom".into(),
        evidence_json: r#"{"ooms":2,"window":20}"#.into(),
        applied: to_mb >= 512,
        at_ms,
    }
}

fn settings(mode: &str, updated_at_ms: i64) -> SizingSettings {
    SizingSettings {
        mode: Some(mode.into()),
        overrides_json: r#"{"down_headroom":0.3}"#.into(),
        updated_at_ms,
    }
}

fn started(records: &[ExecutionRecord]) -> Vec<i64> {
    records.iter().map(|r| r.started_at_ms).collect()
}

/// Creates functions `names` in account `id`, each with its name as its code.
async fn create_functions(store: &Store, id: &str, names: &[&str]) {
    for name in names {
        store
            .create_function(id, name, &spec(), name.as_bytes())
            .await
            .unwrap();
    }
}

/// When the executions kept for a function version and amount started, oldest first.
async fn starts_kept(store: &Store, id: &str, name: &str, revision: &str, mb: u32) -> Vec<i64> {
    started(
        &store
            .recent_executions(id, name, revision, mb, 100)
            .await
            .unwrap(),
    )
}

/// Rows of `table` left for an account, whatever their function.
async fn count(store: &Store, table: &str, account_id: &str) -> i64 {
    sqlx::query(&format!(
        "SELECT COUNT(*) AS n FROM {table} WHERE account_id = $1"
    ))
    .bind(account_id)
    .fetch_one(&store.pool)
    .await
    .unwrap()
    .get("n")
}

#[test]
fn outcomes_round_trip_through_their_names() {
    for outcome in ExecutionOutcome::ALL {
        assert_eq!(
            outcome.as_str().parse::<ExecutionOutcome>().unwrap(),
            outcome
        );
        assert_eq!(outcome.to_string(), outcome.as_str());
    }
    let names: Vec<_> = ExecutionOutcome::ALL.iter().map(|o| o.as_str()).collect();
    assert_eq!(names, ["ok", "error", "timeout", "oom"]);
    for bad in ["", "OK", "out_of_memory", "oom "] {
        assert!(matches!(
            bad.parse::<ExecutionOutcome>(),
            Err(StoreError::Invalid(_))
        ));
    }
}

crate::test_db::backend_tests! {
    /// One record at a time, with and without an init time, as settled Event invocations are:
    /// each is stored (on PostgreSQL a statement once run with a NULL init time took no number
    /// there afterwards: sqlx's `Any` binds a NULL `f64` as `real`).
    #[tokio::test]
    async fn executions_with_and_without_an_init_time_are_stored_one_by_one() {
        let (_dir, store, alice) = store().await;
        let id = &alice.account_id;
        store.create_function(id, "f", &spec(), b"f").await.unwrap();
        let mut recorded = Vec::new();
        // Which records have an init time: an irregular pattern, so that whichever order the
        // pool hands out its connections in, some connection runs the statement with a NULL
        // init time and then with a number.
        let mut bits: u32 = 0x9e37_79b9;
        for t in 1..=40 {
            bits ^= bits << 13;
            bits ^= bits >> 17;
            bits ^= bits << 5;
            let mut record = execution(id, "f", "r1", 128, t);
            record.init_ms = bits.is_multiple_of(2).then_some(100.25 * t as f64);
            store.record_executions(std::slice::from_ref(&record), 100).await.unwrap();
            recorded.push(record);
        }
        let kept = store.recent_executions(id, "f", "r1", 128, 100).await.unwrap();
        assert_eq!(kept, recorded);
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn executions_round_trip_and_read_newest_oldest_first() {
        let (_dir, store, alice) = store().await;
        let id = &alice.account_id;
        store.create_function(id, "f", &spec(), b"f").await.unwrap();
        let mut records: Vec<_> = (1..=5).map(|t| execution(id, "f", "r1", 128, t)).collect();
        records[0].init_ms = Some(812.5);
        records[1].outcome = ExecutionOutcome::OutOfMemory;
        records[1].peak_mb = u64::from(u32::MAX) + 7;
        records[2].outcome = ExecutionOutcome::Timeout;
        records[2].memory_mb = 192;
        records[3].outcome = ExecutionOutcome::Error;
        records[3].cpu_ms = 0.125;
        records[3].throttled_ms = 33.0;
        // Recorded out of start order: reads follow `started_at_ms`.
        records.swap(0, 4);
        store.record_executions(&records, 100).await.unwrap();
        records.swap(0, 4);

        let all = store
            .recent_executions(id, "f", "r1", 128, 100)
            .await
            .unwrap();
        assert_eq!(all, records);
        let newest = store
            .recent_executions(id, "f", "r1", 128, 2)
            .await
            .unwrap();
        assert_eq!(newest, records[3..]);
        assert!(store
            .recent_executions(id, "f", "r1", 256, 100)
            .await
            .unwrap()
            .is_empty());
        assert!(store
            .recent_executions(id, "f", "r2", 128, 100)
            .await
            .unwrap()
            .is_empty());
        store.record_executions(&[], 0).await.unwrap();
        assert_eq!(count(&store, "executions", id).await, 5);
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn bounded_history_keeps_the_newest_per_key_and_leaves_other_keys_alone() {
        let (_dir, store, alice) = store().await;
        let id = &alice.account_id;
        create_functions(&store, id, &["f", "g"]).await;
        let batch: Vec<_> = (1..=6)
            .flat_map(|t| {
                [
                    execution(id, "f", "r1", 128, t),
                    execution(id, "f", "r1", 256, t),
                    execution(id, "f", "r2", 128, t),
                    execution(id, "g", "r1", 128, t),
                ]
            })
            .collect();
        store.record_executions(&batch, 10).await.unwrap();
        assert_eq!(count(&store, "executions", id).await, 24);

        // Only the key touched is pruned, though the others hold more than `keep`.
        store
            .record_executions(&[execution(id, "f", "r1", 128, 7)], 3)
            .await
            .unwrap();
        assert_eq!(starts_kept(&store, id, "f", "r1", 128).await, [5, 6, 7]);
        assert_eq!(
            starts_kept(&store, id, "f", "r1", 256).await,
            [1, 2, 3, 4, 5, 6]
        );
        assert_eq!(
            starts_kept(&store, id, "f", "r2", 128).await,
            [1, 2, 3, 4, 5, 6]
        );
        assert_eq!(
            starts_kept(&store, id, "g", "r1", 128).await,
            [1, 2, 3, 4, 5, 6]
        );

        // A late record with an old start is pruned at once; ties go to the later record.
        let mut tie = execution(id, "f", "r1", 128, 7);
        tie.duration_ms = 99.0;
        store
            .record_executions(&[execution(id, "f", "r1", 128, 2), tie.clone()], 2)
            .await
            .unwrap();
        let kept = store
            .recent_executions(id, "f", "r1", 128, 100)
            .await
            .unwrap();
        assert_eq!(started(&kept), [7, 7]);
        assert_eq!(kept[1], tie, "the later of two equal starts reads as newer");

        // keep = 0 empties the keys touched.
        store
            .record_executions(&[execution(id, "g", "r1", 128, 8)], 0)
            .await
            .unwrap();
        assert!(starts_kept(&store, id, "g", "r1", 128).await.is_empty());
        assert_eq!(count(&store, "executions", id).await, 2 + 6 + 6);
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn executions_of_a_missing_function_are_dropped_not_failed() {
        let (_dir, store, alice) = store().await;
        let id = &alice.account_id;
        store.create_function(id, "f", &spec(), b"f").await.unwrap();
        store
            .record_executions(
                &[
                    execution(id, "gone", "r1", 128, 1),
                    execution(id, "f", "r1", 128, 2),
                    execution("000000000000", "f", "r1", 128, 3),
                    execution(id, "gone", "r1", 128, 4),
                ],
                10,
            )
            .await
            .unwrap();
        assert_eq!(count(&store, "executions", id).await, 1);
        assert_eq!(count(&store, "executions", "000000000000").await, 0);
        assert_eq!(
            started(
                &store
                    .recent_executions(id, "f", "r1", 128, 10)
                    .await
                    .unwrap()
            ),
            [2]
        );
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn a_batch_with_a_measurement_that_is_not_a_number_is_refused_whole() {
        let (_dir, store, alice) = store().await;
        let id = &alice.account_id;
        store.create_function(id, "f", &spec(), b"f").await.unwrap();
        for poison in [
            |r: &mut ExecutionRecord| r.cpu_ms = f64::NAN,
            |r: &mut ExecutionRecord| r.duration_ms = f64::INFINITY,
            |r: &mut ExecutionRecord| r.init_ms = Some(f64::NAN),
        ] {
            let mut bad = execution(id, "f", "r1", 128, 2);
            poison(&mut bad);
            let err = store
                .record_executions(&[execution(id, "f", "r1", 128, 1), bad], 10)
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
        }
        assert_eq!(count(&store, "executions", id).await, 0);
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn settings_are_upserted_and_need_the_function() {
        let (_dir, store, alice) = store().await;
        let bob = store.create_account("bob", false).await.unwrap();
        let id = &alice.account_id;
        store.create_function(id, "f", &spec(), b"f").await.unwrap();
        assert_eq!(store.sizing_settings(id, "f").await.unwrap(), None);

        store
            .put_sizing_settings(id, "f", &settings("recommend", 10))
            .await
            .unwrap();
        assert_eq!(
            store.sizing_settings(id, "f").await.unwrap(),
            Some(settings("recommend", 10))
        );
        let replaced = SizingSettings {
            overrides_json: "{}".into(),
            ..settings("auto", 20)
        };
        store.put_sizing_settings(id, "f", &replaced).await.unwrap();
        assert_eq!(
            store.sizing_settings(id, "f").await.unwrap(),
            Some(replaced)
        );
        assert_eq!(count(&store, "function_sizing", id).await, 1);
        assert_eq!(
            store.sizing_settings(&bob.account_id, "f").await.unwrap(),
            None,
            "another account's function of the same name is another function"
        );

        for (account, name) in [(id.as_str(), "g"), (bob.account_id.as_str(), "f")] {
            assert!(matches!(
                store
                    .put_sizing_settings(account, name, &settings("off", 30))
                    .await,
                Err(StoreError::NotFound(_))
            ));
        }
        let bad_mode = store
            .put_sizing_settings(id, "f", &settings("always", 30))
            .await;
        assert!(matches!(bad_mode, Err(StoreError::Invalid(_))));
        let bad_json = SizingSettings {
            overrides_json: "{not json".into(),
            ..settings("off", 30)
        };
        assert!(matches!(
            store.put_sizing_settings(id, "f", &bad_json).await,
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(
            store.sizing_settings(id, "f").await.unwrap().unwrap().mode,
            Some("auto".into()),
            "a refused update changes nothing"
        );
        // No mode: the function follows the server's default.
        let follows = SizingSettings {
            mode: None,
            ..settings("off", 40)
        };
        store.put_sizing_settings(id, "f", &follows).await.unwrap();
        assert_eq!(store.sizing_settings(id, "f").await.unwrap(), Some(follows));
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn events_are_numbered_per_function_and_read_newest_oldest_first() {
        let (_dir, store, alice) = store().await;
        let id = &alice.account_id;
        create_functions(&store, id, &["f", "g"]).await;
        let sent: Vec<_> = [256, 64, 512, 1024]
            .into_iter()
            .zip(1..)
            .map(|(to, at)| event(id, "f", to, at))
            .collect();
        for (e, want) in sent.iter().zip(1..) {
            assert_eq!(store.add_sizing_event(e).await.unwrap(), want);
        }
        assert_eq!(
            store
                .add_sizing_event(&event(id, "g", 256, 9))
                .await
                .unwrap(),
            1
        );

        let stored = store.sizing_events(id, "f", 100).await.unwrap();
        let expected: Vec<_> = sent
            .iter()
            .zip(1..)
            .map(|(e, seq)| SizingEvent { seq, ..e.clone() })
            .collect();
        assert_eq!(stored, expected);
        assert_eq!(
            store.sizing_events(id, "f", 2).await.unwrap(),
            expected[2..]
        );
        assert!(!stored[1].applied && stored[2].applied);
        assert_eq!(stored[1].direction, "down");

        assert!(matches!(
            store.add_sizing_event(&event(id, "h", 256, 1)).await,
            Err(StoreError::NotFound(_))
        ));
        let sideways = SizingEvent {
            direction: "sideways".into(),
            ..event(id, "f", 256, 1)
        };
        assert!(matches!(
            store.add_sizing_event(&sideways).await,
            Err(StoreError::Invalid(_))
        ));
        let no_json = SizingEvent {
            evidence_json: String::new(),
            ..event(id, "f", 256, 1)
        };
        assert!(matches!(
            store.add_sizing_event(&no_json).await,
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(store.sizing_events(id, "f", 100).await.unwrap().len(), 4);
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn deleting_a_function_deletes_its_sizing_data() {
        let (_dir, store, alice) = store().await;
        let id = &alice.account_id;
        for name in ["f", "g"] {
            store
                .create_function(id, name, &spec(), name.as_bytes())
                .await
                .unwrap();
            store
                .record_executions(&[execution(id, name, "r1", 128, 1)], 10)
                .await
                .unwrap();
            store
                .put_sizing_settings(id, name, &settings("auto", 1))
                .await
                .unwrap();
            store
                .add_sizing_event(&event(id, name, 256, 1))
                .await
                .unwrap();
        }
        store.delete_function(id, "f").await.unwrap();
        for table in ["executions", "function_sizing", "sizing_events"] {
            assert_eq!(count(&store, table, id).await, 1, "{table}: g's row only");
        }
        assert_eq!(store.sizing_settings(id, "f").await.unwrap(), None);
        assert!(store.sizing_events(id, "f", 10).await.unwrap().is_empty());
        assert_eq!(store.sizing_events(id, "g", 10).await.unwrap().len(), 1);

        // A function created again under the name starts with nothing, numbered from 1.
        store
            .create_function(id, "f", &spec(), b"f2")
            .await
            .unwrap();
        assert!(store
            .recent_executions(id, "f", "r1", 128, 10)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(store.sizing_settings(id, "f").await.unwrap(), None);
        assert_eq!(
            store
                .add_sizing_event(&event(id, "f", 256, 2))
                .await
                .unwrap(),
            1
        );
    }
}

crate::test_db::backend_tests! {
    /// Ember cannot delete an account yet; whoever adds it deletes the account's functions first
    /// (their key to `accounts` does not cascade), and that takes the sizing rows along.
    #[tokio::test]
    async fn an_accounts_sizing_data_goes_with_its_functions() {
        let (_dir, store, alice) = store().await;
        let bob = store.create_account("bob", false).await.unwrap();
        for account in [&alice.account_id, &bob.account_id] {
            store
                .create_function(account, "f", &spec(), account.as_bytes())
                .await
                .unwrap();
            store
                .record_executions(&[execution(account, "f", "r1", 128, 1)], 10)
                .await
                .unwrap();
            store
                .put_sizing_settings(account, "f", &settings("off", 1))
                .await
                .unwrap();
            store
                .add_sizing_event(&event(account, "f", 64, 1))
                .await
                .unwrap();
        }
        let mut tx = store.write_transaction().await.unwrap();
        for sql in [
            "DELETE FROM functions WHERE account_id = $1",
            "DELETE FROM accounts WHERE account_id = $1",
        ] {
            sqlx::query(sql)
                .bind(&alice.account_id)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        for table in ["executions", "function_sizing", "sizing_events"] {
            assert_eq!(count(&store, table, &alice.account_id).await, 0, "{table}");
            assert_eq!(count(&store, table, &bob.account_id).await, 1, "{table}");
        }
    }
}

/// The keys the property test writes to: (function, revision, requested MB). `gone` is never
/// created, so its records are dropped.
const KEYS: [(&str, &str, u32); 5] = [
    ("f", "r1", 128),
    ("f", "r1", 256),
    ("f", "r2", 128),
    ("g", "r1", 128),
    ("gone", "r1", 128),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever the batches and their `keep`, each key holds exactly the newest `keep` of what
    /// was recorded for it (by start, then recording order) as of the last batch touching it.
    #[test]
    fn recording_keeps_exactly_the_newest_per_key(
        batches in prop::collection::vec(
            (prop::collection::vec((0..KEYS.len(), 0_i64..8), 0..12), 0_u32..5),
            1..6,
        )
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (_dir, store, alice) = store().await;
            let id = &alice.account_id;
            for name in ["f", "g"] {
                store.create_function(id, name, &spec(), name.as_bytes()).await.unwrap();
            }
            // Per key: (start, recording order, record), and the `keep` last applied to it.
            let mut model: BTreeMap<usize, Vec<(i64, usize, ExecutionRecord)>> = BTreeMap::new();
            let mut last_keep: BTreeMap<usize, u32> = BTreeMap::new();
            let mut order = 0_usize;
            for (batch, keep) in &batches {
                let mut records = Vec::new();
                let mut touched = BTreeSet::new();
                for &(key, start) in batch {
                    let (name, revision, mb) = KEYS[key];
                    order += 1;
                    let mut record = execution(id, name, revision, mb, start);
                    // Tells apart records of one key and start.
                    record.duration_ms = order as f64;
                    records.push(record.clone());
                    if name != "gone" {
                        model.entry(key).or_default().push((start, order, record));
                        touched.insert(key);
                    }
                }
                store.record_executions(&records, *keep).await.unwrap();
                for key in touched {
                    let kept = model.entry(key).or_default();
                    kept.sort_by_key(|(start, order, _)| (*start, *order));
                    let excess = kept.len().saturating_sub(*keep as usize);
                    kept.drain(..excess);
                    last_keep.insert(key, *keep);
                }
                for (key, (name, revision, mb)) in KEYS.iter().enumerate() {
                    let stored = store.recent_executions(id, name, revision, *mb, 1_000).await.unwrap();
                    let expected: Vec<_> = model
                        .get(&key)
                        .map(|kept| kept.iter().map(|(_, _, r)| r.clone()).collect())
                        .unwrap_or_default();
                    prop_assert!(stored.len() <= last_keep.get(&key).copied().unwrap_or(0) as usize);
                    prop_assert_eq!(stored, expected, "key {:?}", KEYS[key]);
                }
            }
            Ok(())
        })?;
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn a_batch_larger_than_one_insert_keeps_every_execution_in_order() {
        let (_dir, store, alice) = store().await;
        let id = &alice.account_id;
        store.create_function(id, "f", &spec(), b"f").await.unwrap();
        store.create_function(id, "g", &spec(), b"g").await.unwrap();
        let total = crate::ROWS_PER_INSERT * 2 + 7;
        let records: Vec<_> = (0..total)
            .map(|n| {
                let function = if n % 3 == 0 { "g" } else { "f" };
                execution(id, function, "r1", 128, n as i64)
            })
            .collect();
        store.record_executions(&records, 10_000).await.unwrap();
        for function in ["f", "g"] {
            let want: Vec<_> = records
                .iter()
                .filter(|r| r.function_name == function)
                .cloned()
                .collect();
            let got = store
                .recent_executions(id, function, "r1", 128, 10_000)
                .await
                .unwrap();
            assert_eq!(got, want, "{function}");
        }
    }
}

#[tokio::test]
async fn settings_stored_before_migration_4_survive_it() {
    // A data dir as a server before 0004 left it, with a function whose mode was set.
    let dir = tempfile::tempdir().unwrap();
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("ember.db"))
            .create_if_missing(true)
            .foreign_keys(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        let mut before = sqlx::migrate!("./migrations");
        before.migrations = before
            .migrations
            .iter()
            .filter(|m| m.version < 4)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        before.run(&pool).await.unwrap();
        for statement in [
            "INSERT INTO accounts (account_id, name, is_admin, created_at) \
             VALUES ('111122223333', 'old', FALSE, '2026-11-01T00:00:00Z')",
            "INSERT INTO functions (account_id, name, runtime, role, handler, description, \
             timeout_s, memory_mb, ephemeral_mb, environment, architectures, package_type, \
             code_sha256, code_size, revision_id, last_modified) \
             VALUES ('111122223333', 'f', 'python3.11', 'r', 'app.handler', '', 3, 512, 512, \
             '{}', '[\"x86_64\"]', 'Zip', 'abc', 1, 'rev1', '2026-11-01T00:00:00Z')",
            "INSERT INTO function_sizing (account_id, function_name, mode, overrides, updated_at) \
             VALUES ('111122223333', 'f', 'auto', '{\"threshold\":7}', 5)",
        ] {
            sqlx::query(statement).execute(&pool).await.unwrap();
        }
        pool.close().await;
    }
    let store = crate::test_db::open(dir.path()).await;
    assert_eq!(
        store.sizing_settings("111122223333", "f").await.unwrap(),
        Some(SizingSettings {
            mode: Some("auto".into()),
            overrides_json: r#"{"threshold":7}"#.into(),
            updated_at_ms: 5,
        })
    );
    // Now a mode may be left unset, and the rows still go with their function.
    let follows = SizingSettings {
        mode: None,
        overrides_json: "{}".into(),
        updated_at_ms: 6,
    };
    store
        .put_sizing_settings("111122223333", "f", &follows)
        .await
        .unwrap();
    assert_eq!(
        store.sizing_settings("111122223333", "f").await.unwrap(),
        Some(follows)
    );
    store.delete_function("111122223333", "f").await.unwrap();
    assert_eq!(count(&store, "function_sizing", "111122223333").await, 0);
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn a_new_revision_drops_the_executions_of_earlier_ones() {
        let (_dir, store, alice) = store().await;
        let id = &alice.account_id;
        let f = store.create_function(id, "f", &spec(), b"f").await.unwrap();
        let g = store.create_function(id, "g", &spec(), b"g").await.unwrap();
        let a = f.revision_id.clone();
        let batch: Vec<_> = (1..=3)
            .flat_map(|t| {
                [
                    execution(id, "f", &a, 128, t),
                    execution(id, "g", &g.revision_id, 128, t),
                ]
            })
            .collect();
        store.record_executions(&batch, 100).await.unwrap();

        // An update that fails on its revision check changes nothing.
        let stale = store
            .update_function(
                id,
                "f",
                Some("not-the-revision"),
                FunctionChange::Code(b"f2"),
            )
            .await
            .unwrap_err();
        assert!(matches!(stale, StoreError::RevisionMismatch { .. }));
        assert_eq!(count(&store, "executions", id).await, 6);

        let patch = SpecPatch {
            memory_mb: Some(256),
            ..SpecPatch::default()
        };
        let b = store
            .update_function(id, "f", Some(&a), FunctionChange::Spec(patch))
            .await
            .unwrap()
            .revision_id;
        assert!(starts_kept(&store, id, "f", &a, 128).await.is_empty());
        assert_eq!(
            starts_kept(&store, id, "g", &g.revision_id, 128).await,
            [1, 2, 3],
            "another function's executions stay"
        );

        // The new revision's executions are kept; one of the old revision that was still in flight
        // is recorded, and goes at the next change.
        store
            .record_executions(
                &[
                    execution(id, "f", &b, 256, 4),
                    execution(id, "f", &a, 128, 5),
                ],
                100,
            )
            .await
            .unwrap();
        assert_eq!(starts_kept(&store, id, "f", &b, 256).await, [4]);
        assert_eq!(starts_kept(&store, id, "f", &a, 128).await, [5]);
        let c = store
            .update_function(id, "f", None, FunctionChange::Code(b"f3"))
            .await
            .unwrap()
            .revision_id;
        assert!(starts_kept(&store, id, "f", &a, 128).await.is_empty());
        assert!(starts_kept(&store, id, "f", &b, 256).await.is_empty());
        store
            .record_executions(&[execution(id, "f", &c, 256, 6)], 100)
            .await
            .unwrap();
        assert_eq!(starts_kept(&store, id, "f", &c, 256).await, [6]);
        assert_eq!(count(&store, "executions", id).await, 3 + 1);
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn a_function_keeps_its_newest_sizing_decisions() {
        let (_dir, store, alice) = store().await;
        let id = &alice.account_id;
        create_functions(&store, id, &["f", "g"]).await;
        store
            .add_sizing_event_keeping(&event(id, "g", 256, 1), 3)
            .await
            .unwrap();
        for at in 1..=5 {
            let seq = store
                .add_sizing_event_keeping(&event(id, "f", 256, at), 3)
                .await
                .unwrap();
            assert_eq!(seq, at, "numbering goes on past the pruned decisions");
        }
        let kept: Vec<_> = store
            .sizing_events(id, "f", 100)
            .await
            .unwrap()
            .iter()
            .map(|e| (e.seq, e.at_ms))
            .collect();
        assert_eq!(kept, [(3, 3), (4, 4), (5, 5)]);
        assert_eq!(
            store.sizing_events(id, "g", 100).await.unwrap().len(),
            1,
            "another function's history stays"
        );
    }
}
