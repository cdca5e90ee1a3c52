//! Unit tests of the store against a real SQLite database in a temp dir.

use super::*;

pub(crate) fn spec() -> FunctionSpec {
    FunctionSpec {
        runtime: Some("python3.11".into()),
        role: "arn:aws:iam::123456789012:role/r".into(),
        handler: Some("app.handler".into()),
        description: String::new(),
        timeout_s: 3,
        memory_mb: 128,
        ephemeral_mb: 512,
        environment: BTreeMap::from([("A".into(), "1".into())]),
        architectures: vec!["x86_64".into()],
        package_type: "Zip".into(),
        layers: Vec::new(),
        snap_start: Default::default(),
    }
}

pub(crate) async fn store() -> (tempfile::TempDir, Store, AccountKeys) {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::test_db::open(dir.path()).await;
    let keys = store.create_account("alice", false).await.unwrap();
    (dir, store, keys)
}

/// A store with account `a` and its function `f` (of [`spec`]); the account's id.
pub(crate) async fn store_with_function() -> (tempfile::TempDir, Store, String) {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::test_db::open(dir.path()).await;
    let account = store.create_account("a", false).await.unwrap();
    store
        .create_function(&account.account_id, "f", &spec(), b"PK fake")
        .await
        .unwrap();
    (dir, store, account.account_id)
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn accounts_have_unique_names_and_resolvable_keys() {
        let (_dir, store, alice) = store().await;
        assert_eq!(alice.account_id.len(), 12);
        assert!(alice.access_key_id.starts_with("AKIA"));
        assert!(matches!(
            store.create_account("alice", false).await,
            Err(StoreError::Conflict(_))
        ));
        let cred = store
            .credential(&alice.access_key_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cred.account_id, alice.account_id);
        assert_eq!(cred.secret_access_key, alice.secret_access_key);
        assert!(!cred.is_admin);
        assert!(store.credential("AKIANOPE").await.unwrap().is_none());
        assert!(!store.has_admin().await.unwrap());
        let root = store.create_account("root", true).await.unwrap();
        assert!(store.has_admin().await.unwrap());
        assert_eq!(
            store.admin_account_id().await.unwrap(),
            Some(root.account_id.clone())
        );
        let second = store.create_access_key(&root.account_id).await.unwrap();
        assert_ne!(second.access_key_id, root.access_key_id);
        for key in [&root.access_key_id, &second.access_key_id] {
            let cred = store.credential(key).await.unwrap().unwrap();
            assert_eq!(cred.account_id, root.account_id);
            assert!(cred.is_admin);
        }
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn functions_are_scoped_to_their_account() {
        let (_dir, store, alice) = store().await;
        let bob = store.create_account("bob", false).await.unwrap();
        store
            .create_function(&alice.account_id, "f", &spec(), b"zip-a")
            .await
            .unwrap();
        assert!(store
            .function(&bob.account_id, "f")
            .await
            .unwrap()
            .is_none());
        assert!(store
            .list_functions(&bob.account_id, None, 50)
            .await
            .unwrap()
            .is_empty());
        // Bob may use the same name: names are per account.
        store
            .create_function(&bob.account_id, "f", &spec(), b"zip-b")
            .await
            .unwrap();
        assert!(matches!(
            store
                .create_function(&alice.account_id, "f", &spec(), b"zip-a")
                .await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store.delete_function(&bob.account_id, "g").await,
            Err(StoreError::NotFound(_))
        ));
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn listing_pages_in_name_order() {
        let (_dir, store, alice) = store().await;
        for name in ["c", "a", "b", "d"] {
            store
                .create_function(&alice.account_id, name, &spec(), name.as_bytes())
                .await
                .unwrap();
        }
        let page = store
            .list_functions(&alice.account_id, None, 3)
            .await
            .unwrap();
        let names: Vec<_> = page.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        let rest = store
            .list_functions(&alice.account_id, Some("c"), 3)
            .await
            .unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].name, "d");
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn updates_check_revision_and_collect_replaced_code() {
        let (dir, store, alice) = store().await;
        let f = store
            .create_function(&alice.account_id, "f", &spec(), b"v1")
            .await
            .unwrap();
        let stale = f.revision_id.clone();
        let g = store
            .update_function(
                &alice.account_id,
                "f",
                Some(&stale),
                FunctionChange::Code(b"v2"),
            )
            .await
            .unwrap();
        assert_ne!(g.revision_id, stale);
        assert_eq!(store.code(&g.code_sha256).await.unwrap(), b"v2");
        assert!(
            store.code(&f.code_sha256).await.is_err(),
            "replaced code is collected"
        );
        let err = store
            .update_function(
                &alice.account_id,
                "f",
                Some(&stale),
                FunctionChange::Spec(SpecPatch {
                    memory_mb: Some(256),
                    ..SpecPatch::default()
                }),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::RevisionMismatch { .. }));
        let stale_code = store
            .update_function(
                &alice.account_id,
                "f",
                Some(&stale),
                FunctionChange::Code(b"v3"),
            )
            .await
            .unwrap_err();
        assert!(matches!(stale_code, StoreError::RevisionMismatch { .. }));
        assert_eq!(
            BlobStore::open(&dir.path().join("blobs"))
                .unwrap()
                .list()
                .unwrap(),
            vec![g.code_sha256.clone()],
            "a rejected code update leaves no package behind"
        );
        assert_eq!(
            store
                .function(&alice.account_id, "f")
                .await
                .unwrap()
                .unwrap()
                .spec
                .memory_mb,
            128,
            "a rejected update changes nothing"
        );
        let h = store
            .update_function(
                &alice.account_id,
                "f",
                None,
                FunctionChange::Spec(SpecPatch {
                    memory_mb: Some(256),
                    environment: Some(BTreeMap::new()),
                    ..SpecPatch::default()
                }),
            )
            .await
            .unwrap();
        assert_eq!(h.spec.memory_mb, 256);
        assert!(h.spec.environment.is_empty());
        assert_eq!(h.spec.handler, spec().handler);
        store.delete_function(&alice.account_id, "f").await.unwrap();
        assert!(BlobStore::open(&dir.path().join("blobs"))
            .unwrap()
            .list()
            .unwrap()
            .is_empty());
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn reopening_keeps_everything_and_collects_orphans() {
        let (dir, store, alice) = store().await;
        let f = store
            .create_function(&alice.account_id, "f", &spec(), b"code")
            .await
            .unwrap();
        store
            .set_reserved_concurrency(&alice.account_id, "f", Some(5))
            .await
            .unwrap();
        // A blob written by a create that crashed before its row committed.
        let orphan = BlobStore::open(&dir.path().join("blobs"))
            .unwrap()
            .put(b"orphan")
            .unwrap();
        store.close().await;
        drop(store);

        let store = crate::test_db::open(dir.path()).await;
        assert!(
            store.code(&orphan).await.is_ok(),
            "opening alone collects nothing: another process may own the data dir"
        );
        store.recover().await.unwrap();
        let g = store
            .function(&alice.account_id, "f")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(g.reserved_concurrency, Some(5));
        assert_eq!(
            Function {
                reserved_concurrency: None,
                ..g.clone()
            },
            f
        );
        assert_eq!(store.code(&g.code_sha256).await.unwrap(), b"code");
        assert!(store.code(&orphan).await.is_err());
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn settings_are_created_once() {
        let (_dir, store, _) = store().await;
        let a = store.setting_or_init("k", || "first".into()).await.unwrap();
        let b = store
            .setting_or_init("k", || "second".into())
            .await
            .unwrap();
        assert_eq!((a.as_str(), b.as_str()), ("first", "first"));
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn queued_events_survive_reopening_and_claims_are_released_at_start() {
        let (dir, store, alice) = store().await;
        let id = &alice.account_id;
        store
            .enqueue_event("e1", id, "f", b"{\"n\":1}", 1_000)
            .await
            .unwrap();
        store
            .enqueue_event("e2", id, "f", &[0, 255], 2_000)
            .await
            .unwrap();
        assert!(
            store.claim_due_events(999, 10).await.unwrap().is_empty(),
            "nothing due yet"
        );

        let claimed = store.claim_due_events(1_500, 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].event_id, "e1");
        assert_eq!(claimed[0].payload, b"{\"n\":1}");
        assert!(
            store.claim_due_events(1_500, 10).await.unwrap().is_empty(),
            "a claimed event is not handed out twice"
        );
        store.close().await;

        // A restart: the claim of the dead server is released, nothing is lost.
        let store = crate::test_db::open(dir.path()).await;
        assert_eq!(store.release_event_claims().await.unwrap(), 1);
        let claimed = store.claim_due_events(5_000, 10).await.unwrap();
        let ids: Vec<_> = claimed.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["e1", "e2"]);
        assert_eq!(claimed[1].payload, [0, 255], "binary payloads round-trip");

        store.reschedule_event("e1", 1, 9_000).await.unwrap();
        store.finish_event("e2").await.unwrap();
        assert_eq!(store.next_event_due().await.unwrap(), Some(9_000));
        assert_eq!(store.queued_events().await.unwrap(), 1);
        let again = store.claim_due_events(9_000, 10).await.unwrap();
        assert_eq!(again[0].attempts, 1);
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn an_event_settles_with_its_log_and_execution_or_not_at_all() {
        let (_dir, store, alice) = store().await;
        let id = &alice.account_id;
        store.create_function(id, "f", &spec(), b"f").await.unwrap();
        for e in ["done", "retried", "unsettled"] {
            store.enqueue_event(e, id, "f", b"{}", 1_000).await.unwrap();
        }
        let claimed = store.claim_due_events(1_000, 10).await.unwrap();
        assert_eq!(claimed.len(), 3);
        let claim = |event_id: &str| {
            claimed
                .iter()
                .find(|e| e.event_id == event_id)
                .unwrap()
                .claim
                .clone()
        };
        let log = |request_id: &str| NewLog {
            account_id: id.clone(),
            function_name: "f".into(),
            request_id: request_id.into(),
            started_at_ms: 1_000,
            log: format!("START {request_id}\n"),
        };
        let execution = |started_at_ms| ExecutionRecord {
            account_id: id.clone(),
            function_name: "f".into(),
            revision_id: "r1".into(),
            requested_mb: 128,
            memory_mb: 128,
            peak_mb: 40,
            cpu_ms: 1.0,
            throttled_ms: 0.0,
            duration_ms: 2.0,
            init_ms: None,
            outcome: ExecutionOutcome::Ok,
            started_at_ms,
        };
        let (done_log, done_run) = (log("done"), execution(1));
        let settled = store
            .settle_event(
                &claim("done"),
                EventSettlement::Done,
                Some(EventRun {
                    log: &done_log,
                    execution: &done_run,
                    keep_executions: 10,
                }),
            )
            .await
            .unwrap();
        assert_eq!(settled, Settled::Stored);
        // A retried run's log and measurements are kept too; a measurement that is not a number is
        // left out without keeping the event from settling.
        let (retried_log, mut retried_run) = (log("retried"), execution(2));
        retried_run.duration_ms = f64::NAN;
        let settled = store
            .settle_event(
                &claim("retried"),
                EventSettlement::Retry {
                    attempts: 1,
                    at_ms: 5_000,
                },
                Some(EventRun {
                    log: &retried_log,
                    execution: &retried_run,
                    keep_executions: 10,
                }),
            )
            .await
            .unwrap();
        assert_eq!(settled, Settled::Stored);
        // A settlement that fails (here a trigger refuses the event's delete, after the log was
        // inserted) changes nothing: no log, no measurement, the event still claimed.
        let trigger: &[&str] = match crate::test_db::backend() {
            crate::test_db::Backend::Sqlite => &["CREATE TRIGGER refuse BEFORE DELETE ON \
                 event_invocations BEGIN SELECT RAISE(ABORT, 'refused'); END"],
            crate::test_db::Backend::Postgres => &[
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
                 'BEGIN RAISE EXCEPTION ''refused''; END'",
                "CREATE TRIGGER refuse BEFORE DELETE ON event_invocations \
                 FOR EACH ROW EXECUTE FUNCTION refuse()",
            ],
        };
        for statement in trigger {
            sqlx::query(statement).execute(&store.pool).await.unwrap();
        }
        let unsettled_log = log("unsettled");
        let refused = store
            .settle_event(
                &claim("unsettled"),
                EventSettlement::Done,
                Some(EventRun {
                    log: &unsettled_log,
                    execution: &execution(3),
                    keep_executions: 10,
                }),
            )
            .await;
        assert!(refused.is_err());

        let logs = store.logs(id, "f", Some(0), 100).await.unwrap();
        let ids: Vec<_> = logs.iter().map(|l| l.request_id.as_str()).collect();
        assert_eq!(
            ids,
            ["done", "retried"],
            "the refused settlement wrote no log"
        );
        let runs = store
            .recent_executions(id, "f", "r1", 128, 10)
            .await
            .unwrap();
        assert_eq!(
            runs.iter().map(|r| r.started_at_ms).collect::<Vec<_>>(),
            [1]
        );
        assert_eq!(
            store.queued_events().await.unwrap(),
            2,
            "done left the queue"
        );
        assert!(
            store.claim_due_events(4_999, 10).await.unwrap().is_empty(),
            "the retried event waits, and the unsettled one stays claimed"
        );
        let again = store.claim_due_events(5_000, 10).await.unwrap();
        assert_eq!(
            (again[0].event_id.as_str(), again[0].attempts),
            ("retried", 1)
        );
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn a_batch_of_logs_larger_than_one_insert_is_numbered_without_gaps() {
        let (_dir, store, alice) = store().await;
        let total = crate::ROWS_PER_INSERT as i64 * 2 + 3;
        let logs: Vec<_> = (1..=total)
            .map(|n| NewLog {
                account_id: alice.account_id.clone(),
                function_name: if n % 2 == 0 { "even" } else { "odd" }.into(),
                request_id: format!("r{n}"),
                started_at_ms: n,
                log: format!("line {n}\n"),
            })
            .collect();
        store.append_logs(&logs).await.unwrap();
        for (function, parity) in [("even", 0), ("odd", 1)] {
            let got = store
                .logs(&alice.account_id, function, Some(0), 10_000)
                .await
                .unwrap();
            let want: Vec<_> = (1..=total).filter(|n| n % 2 == parity).collect();
            assert_eq!(
                got.iter().map(|l| l.seq).collect::<Vec<_>>(),
                (1..=want.len() as i64).collect::<Vec<_>>()
            );
            assert_eq!(
                got.iter().map(|l| l.request_id.clone()).collect::<Vec<_>>(),
                want.iter().map(|n| format!("r{n}")).collect::<Vec<_>>()
            );
        }
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn logs_are_numbered_per_function_read_by_cursor_and_pruned() {
        let (_dir, store, alice) = store().await;
        let log = |function: &str, n: i64| NewLog {
            account_id: alice.account_id.clone(),
            function_name: function.into(),
            request_id: format!("r{n}"),
            started_at_ms: n,
            log: format!("line {n}\n"),
        };
        store
            .append_logs(&(1..=5).map(|n| log("f", n)).collect::<Vec<_>>())
            .await
            .unwrap();
        store.append_logs(&[log("g", 9)]).await.unwrap();

        let last_two = store.logs(&alice.account_id, "f", None, 2).await.unwrap();
        assert_eq!(last_two.iter().map(|l| l.seq).collect::<Vec<_>>(), [4, 5]);
        let after = store
            .logs(&alice.account_id, "f", Some(3), 100)
            .await
            .unwrap();
        assert_eq!(
            after
                .iter()
                .map(|l| l.request_id.as_str())
                .collect::<Vec<_>>(),
            ["r4", "r5"]
        );
        assert_eq!(
            store.logs(&alice.account_id, "g", None, 10).await.unwrap()[0].seq,
            1
        );

        assert_eq!(store.prune_logs(2).await.unwrap(), 3);
        let kept = store
            .logs(&alice.account_id, "f", Some(0), 100)
            .await
            .unwrap();
        assert_eq!(kept.iter().map(|l| l.seq).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(
            store
                .logs(&alice.account_id, "g", None, 10)
                .await
                .unwrap()
                .len(),
            1
        );
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn cached_reads_follow_every_write() {
        let (_dir, store, alice) = store().await;
        let id = &alice.account_id;
        assert!(store.function(id, "f").await.unwrap().is_none());
        let created = store
            .create_function(id, "f", &spec(), b"zip-a")
            .await
            .unwrap();
        assert_eq!(
            store.function(id, "f").await.unwrap(),
            Some(created.clone())
        );
        let patch = SpecPatch {
            memory_mb: Some(256),
            ..SpecPatch::default()
        };
        let updated = store
            .update_function(id, "f", None, FunctionChange::Spec(patch))
            .await
            .unwrap();
        assert_eq!(
            store
                .function(id, "f")
                .await
                .unwrap()
                .unwrap()
                .spec
                .memory_mb,
            256
        );
        assert_ne!(updated.revision_id, created.revision_id);
        store
            .set_reserved_concurrency(id, "f", Some(3))
            .await
            .unwrap();
        assert_eq!(
            store
                .function(id, "f")
                .await
                .unwrap()
                .unwrap()
                .reserved_concurrency,
            Some(3)
        );
        store.delete_function(id, "f").await.unwrap();
        assert!(
            store.function(id, "f").await.unwrap().is_none(),
            "a deleted function is not served from the cache"
        );
    }
}

#[tokio::test]
async fn a_transaction_sqlite_rolled_back_by_itself_does_not_wedge_the_pool() {
    let (_dir, store, alice) = store().await;
    let log = |n: i64| NewLog {
        account_id: alice.account_id.clone(),
        function_name: "f".into(),
        request_id: format!("r{n}"),
        started_at_ms: n,
        log: String::new(),
    };
    for n in 0..3 {
        let mut tx = store.write_transaction().await.unwrap();
        // What SQLite does on SQLITE_FULL and SQLITE_IOERR: the transaction ends under sqlx,
        // whose COMMIT and then ROLLBACK fail.
        sqlx::query("ROLLBACK").execute(&mut *tx).await.unwrap();
        assert!(tx.commit().await.is_err());
        // The connection is not handed out again in that state: the next write works.
        store.append_logs(&[log(n)]).await.unwrap();
    }
    let written = store
        .logs(&alice.account_id, "f", Some(0), 10)
        .await
        .unwrap();
    assert_eq!(written.len(), 3);
}

crate::test_db::backend_tests! {
    /// Two servers with data dirs of their own on one store: a claim is leased to the server
    /// that made it; the other neither gets it nor releases it at its start, and runs it once
    /// the lease (the function's timeout and the margin) has run out, as when its server died.
    #[tokio::test]
    async fn a_claim_is_leased_to_its_server_and_runs_elsewhere_once_the_lease_runs_out() {
        let (dir_a, a, alice) = store().await;
        let id = &alice.account_id;
        a.create_function(id, "f", &spec(), b"PK f").await.unwrap(); // a 3 s timeout
        let dir_b = tempfile::tempdir().unwrap();
        let url = crate::test_db::url(dir_a.path()).await;
        let b = Store::open_at(&url, dir_b.path()).await.unwrap();

        a.enqueue_event("e1", id, "f", b"{}", 1_000).await.unwrap();
        a.enqueue_event("gone", id, "deleted-fn", b"{}", 1_000).await.unwrap();
        let claimed = a.claim_due_events(1_000, 10).await.unwrap();
        assert_eq!(claimed.len(), 2);
        assert!(b.claim_due_events(1_000, 10).await.unwrap().is_empty());
        assert_eq!(
            b.release_event_claims().await.unwrap(),
            0,
            "another server's claims stay at a start"
        );
        let lease = 1_000 + 3_000 + LEASE_MARGIN_MS;
        assert_eq!(b.next_event_due().await.unwrap(), Some(lease));
        assert!(b.claim_due_events(lease - 1, 10).await.unwrap().is_empty());
        let taken = b.claim_due_events(lease, 10).await.unwrap();
        let ids: Vec<_> = taken.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["e1"], "the event of a function gone keeps Lambda's longest lease");
        // By then b's own lease on e1 has run out too.
        let later = b
            .claim_due_events(1_000 + 900_000 + LEASE_MARGIN_MS, 10)
            .await
            .unwrap();
        let mut ids: Vec<_> = later.iter().map(|e| e.event_id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["e1", "gone"]);

        // A restart of the first server releases its own claims only: none are left, b has
        // both now.
        assert_eq!(a.release_event_claims().await.unwrap(), 0);
        assert_eq!(b.release_event_claims().await.unwrap(), 2);
        b.close().await;
    }
}

crate::test_db::backend_tests! {
    /// A lease renewed by its server outlives the claim's own lease, so no other server takes
    /// the event; once renewals stop it runs out and another server claims it, and the first
    /// server's late settlement then stores nothing (no second log, no second outcome), as
    /// does a stale claim of the same server.
    #[tokio::test]
    async fn renewed_leases_hold_and_a_lost_claim_settles_nothing() {
        let (dir_a, a, alice) = store().await;
        let id = &alice.account_id;
        a.create_function(id, "f", &spec(), b"PK f").await.unwrap(); // a 3 s timeout
        let dir_b = tempfile::tempdir().unwrap();
        let url = crate::test_db::url(dir_a.path()).await;
        let b = Store::open_at(&url, dir_b.path()).await.unwrap();
        a.enqueue_event("e1", id, "f", b"{}", 1_000).await.unwrap();
        let mine = a.claim_due_events(1_000, 10).await.unwrap();
        assert_eq!(mine.len(), 1);
        let first_lease = 1_000 + 3_000 + LEASE_MARGIN_MS;

        // Renewed late in its lease: it now lasts the margin past the renewal.
        let renewed_at = first_lease - 1_000;
        let lost = a
            .renew_event_leases(std::slice::from_ref(&mine[0].claim), renewed_at)
            .await
            .unwrap();
        assert!(lost.is_empty(), "{lost:?}");
        assert!(
            b.claim_due_events(first_lease, 10).await.unwrap().is_empty(),
            "a renewed lease is not taken when the first one would have run out"
        );
        assert_eq!(
            b.next_event_due().await.unwrap(),
            Some(renewed_at + LEASE_MARGIN_MS)
        );
        // An earlier renewal never shortens it.
        a.renew_event_leases(std::slice::from_ref(&mine[0].claim), 2_000)
            .await
            .unwrap();
        assert_eq!(
            b.next_event_due().await.unwrap(),
            Some(renewed_at + LEASE_MARGIN_MS)
        );

        // No renewal since: b takes it once that lease runs out, and a learns it lost it.
        let theirs = b
            .claim_due_events(renewed_at + LEASE_MARGIN_MS, 10)
            .await
            .unwrap();
        assert_eq!(theirs.len(), 1);
        assert_ne!(theirs[0].claim, mine[0].claim);
        let lost = a
            .renew_event_leases(std::slice::from_ref(&mine[0].claim), renewed_at + 1)
            .await
            .unwrap();
        assert_eq!(lost, [mine[0].claim.clone()]);

        let log = |request_id: &str| NewLog {
            account_id: id.clone(),
            function_name: "f".into(),
            request_id: request_id.into(),
            started_at_ms: 1_000,
            log: format!("START {request_id}\n"),
        };
        let record = ExecutionRecord {
            account_id: id.clone(),
            function_name: "f".into(),
            revision_id: "r1".into(),
            requested_mb: 128,
            memory_mb: 128,
            peak_mb: 40,
            cpu_ms: 1.0,
            throttled_ms: 0.0,
            duration_ms: 2.0,
            init_ms: None,
            outcome: ExecutionOutcome::Ok,
            started_at_ms: 1,
        };
        let (late_log, their_log) = (log("e1-on-a"), log("e1-on-b"));
        let run = |log| EventRun {
            log,
            execution: &record,
            keep_executions: 10,
        };
        // a's run ended after all: its outcome is not stored, the event stays b's.
        let settled = a
            .settle_event(&mine[0].claim, EventSettlement::Done, Some(run(&late_log)))
            .await
            .unwrap();
        assert_eq!(settled, Settled::ClaimLost);
        assert_eq!(a.queued_events().await.unwrap(), 1);
        let settled = b
            .settle_event(&theirs[0].claim, EventSettlement::Done, Some(run(&their_log)))
            .await
            .unwrap();
        assert_eq!(settled, Settled::Stored);
        let logs = a.logs(id, "f", Some(0), 10).await.unwrap();
        let ids: Vec<_> = logs.iter().map(|l| l.request_id.as_str()).collect();
        assert_eq!(ids, ["e1-on-b"], "one run stored, b's");
        assert_eq!(a.queued_events().await.unwrap(), 0);
        // Settled: its claim renews no more, and cannot settle twice.
        let lost = b
            .renew_event_leases(std::slice::from_ref(&theirs[0].claim), renewed_at + 2)
            .await
            .unwrap();
        assert_eq!(lost.len(), 1);
        assert_eq!(
            b.settle_event(&theirs[0].claim, EventSettlement::Done, None)
                .await
                .unwrap(),
            Settled::ClaimLost
        );

        // A server's own stale claim is no better than another's: the event was claimed again.
        a.enqueue_event("e2", id, "f", b"{}", 1_000).await.unwrap();
        let stale = a.claim_due_events(1_000, 10).await.unwrap();
        let fresh = a.claim_due_events(first_lease, 10).await.unwrap();
        assert_eq!((stale.len(), fresh.len()), (1, 1));
        let retry = EventSettlement::Retry {
            attempts: 1,
            at_ms: 9_000_000,
        };
        assert_eq!(
            a.settle_event(&stale[0].claim, retry, None).await.unwrap(),
            Settled::ClaimLost
        );
        assert_eq!(
            a.settle_event(&fresh[0].claim, retry, None).await.unwrap(),
            Settled::Stored
        );
        b.close().await;
    }
}

/// On a store several servers share, a server's cached function follows another server's
/// write as soon as the write's notification arrives, well inside the old 1 s expiry, and
/// still after its listener's connection was killed (PostgreSQL only: one SQLite file has one
/// writing server).
#[tokio::test]
async fn a_cached_function_follows_another_servers_write_at_once_even_after_a_lost_listener() {
    crate::test_db::run(crate::test_db::Backend::Postgres, async {
        use std::time::{Duration, Instant};
        let (dir_a, a, alice) = store().await;
        let id = &alice.account_id;
        a.create_function(id, "f", &spec(), b"PK f").await.unwrap();
        let dir_b = tempfile::tempdir().unwrap();
        let url = crate::test_db::url(dir_a.path()).await;
        let b = Store::open_at(&url, dir_b.path()).await.unwrap();

        // b caches f once it listens, and sees each of a's writes within `bound`.
        async fn cached(b: &Store, id: &str) {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                b.function(id, "f").await.unwrap().unwrap();
                if !matches!(
                    b.cache.function(id, "f", LATEST),
                    crate::cache::Lookup::Miss
                ) {
                    return;
                }
                assert!(Instant::now() < deadline, "b never caches f");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        async fn seen_after_write(a: &Store, b: &Store, id: &str, timeout_s: u32) -> Duration {
            let patch = SpecPatch {
                timeout_s: Some(timeout_s),
                ..SpecPatch::default()
            };
            a.update_function(id, "f", None, FunctionChange::Spec(patch))
                .await
                .unwrap();
            let written = Instant::now();
            while b.function(id, "f").await.unwrap().unwrap().spec.timeout_s != timeout_s {
                assert!(
                    written.elapsed() < Duration::from_secs(1),
                    "b still answers the old function {:?} after the write",
                    written.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            written.elapsed()
        }
        let bound = Duration::from_millis(250);
        cached(&b, id).await;
        let took = seen_after_write(&a, &b, id, 30).await;
        assert!(took < bound, "seen after {took:?}");
        // So are a's other kinds of writes: reserved concurrency, here.
        cached(&b, id).await;
        a.set_reserved_concurrency(id, "f", Some(3)).await.unwrap();
        let written = Instant::now();
        while b
            .function(id, "f")
            .await
            .unwrap()
            .unwrap()
            .reserved_concurrency
            != Some(3)
        {
            assert!(written.elapsed() < bound, "reserved concurrency not seen");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }

        // The listeners' connections are killed: b caches nothing until it listens again,
        // then follows a's writes as before.
        cached(&b, id).await;
        let killed = sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
        )
        .fetch_all(&a.pool)
        .await
        .unwrap();
        assert_eq!(killed.len(), 2, "one listener per store");
        let took = seen_after_write(&a, &b, id, 31).await;
        assert!(
            took < bound,
            "seen after {took:?} once the listener was killed"
        );
        cached(&b, id).await;
        let took = seen_after_write(&a, &b, id, 32).await;
        assert!(took < bound, "seen after {took:?} once listening again");

        // A listening connection that goes silent without closing (its backend frozen, as a
        // host cut off without a reset): b's ping does not come back, and b stops answering
        // from its cache within the ping's bound.
        cached(&b, id).await;
        let listeners: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
        )
        .fetch_all(&a.pool)
        .await
        .unwrap();
        assert_eq!(listeners.len(), 2);
        let signal = |sig: &str| {
            for pid in &listeners {
                let done = std::process::Command::new("kill")
                    .args([sig, &pid.to_string()])
                    .status()
                    .unwrap();
                assert!(done.success());
            }
        };
        signal("-STOP");
        let patch = SpecPatch {
            timeout_s: Some(33),
            ..SpecPatch::default()
        };
        a.update_function(id, "f", None, FunctionChange::Spec(patch))
            .await
            .unwrap();
        let written = Instant::now();
        let silent_bound = crate::PING_EVERY + crate::PING_TIMEOUT + Duration::from_secs(1);
        while b.function(id, "f").await.unwrap().unwrap().spec.timeout_s != 33 {
            if written.elapsed() > silent_bound {
                signal("-CONT");
                panic!(
                    "b still answers from its cache {:?} after the write",
                    written.elapsed()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        signal("-CONT");
        b.close().await;
    })
    .await
}
