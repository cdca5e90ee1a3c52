//! Tests of published versions and aliases: snapshots, no-op publishes, preconditions,
//! immutability, code kept for versions, and everything going with its function.

use std::collections::BTreeMap;

use crate::tests::{spec, store};
use crate::{
    AliasPatch, AliasSpec, ExecutionOutcome, ExecutionRecord, FunctionChange, Publish, SpecPatch,
    StoreError, LATEST,
};

fn alias_to(version: &str, routing: &[(&str, f64)]) -> AliasSpec {
    AliasSpec {
        function_version: version.into(),
        description: String::new(),
        routing: routing.iter().map(|(v, w)| ((*v).to_owned(), *w)).collect(),
    }
}

fn execution(account_id: &str, revision_id: &str) -> ExecutionRecord {
    ExecutionRecord {
        account_id: account_id.into(),
        function_name: "f".into(),
        revision_id: revision_id.into(),
        requested_mb: 128,
        memory_mb: 128,
        peak_mb: 40,
        cpu_ms: 1.0,
        throttled_ms: 0.0,
        duration_ms: 2.0,
        init_ms: None,
        outcome: ExecutionOutcome::Ok,
        started_at_ms: 1,
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn a_published_version_is_a_snapshot_that_later_updates_do_not_change() {
        let (_dir, store, alice) = store().await;
        let id = &alice.account_id;
        let latest = store
            .create_function(id, "f", &spec(), b"code-1")
            .await
            .unwrap();
        assert_eq!(latest.version, LATEST);
        let v1 = store
            .publish_version(id, "f", Publish::default())
            .await
            .unwrap();
        assert_eq!(v1.version, "1");
        assert_eq!(v1.code_sha256, latest.code_sha256);
        assert_eq!(v1.spec, latest.spec);
        assert_ne!(
            v1.revision_id, latest.revision_id,
            "a version has its own revision"
        );
        assert_eq!(
            store.function_version(id, "f", "1").await.unwrap().as_ref(),
            Some(&v1)
        );

        // $LATEST moves on; version 1 does not.
        let updated = store
            .update_function(id, "f", None, FunctionChange::Code(b"code-2"))
            .await
            .unwrap();
        store
            .update_function(
                id,
                "f",
                None,
                FunctionChange::Spec(SpecPatch {
                    timeout_s: Some(30),
                    ..SpecPatch::default()
                }),
            )
            .await
            .unwrap();
        let again = store.function_version(id, "f", "1").await.unwrap().unwrap();
        assert_eq!(again, v1);
        assert_eq!(store.code(&again.code_sha256).await.unwrap(), b"code-1");
        let v2 = store
            .publish_version(
                id,
                "f",
                Publish {
                    description: Some("second"),
                    ..Publish::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(v2.version, "2");
        assert_eq!(v2.code_sha256, updated.code_sha256);
        assert_eq!(v2.spec.timeout_s, 30);
        assert_eq!(v2.spec.description, "second");
        // The description is the version's own: $LATEST keeps its own.
        assert_eq!(
            store
                .function(id, "f")
                .await
                .unwrap()
                .unwrap()
                .spec
                .description,
            ""
        );
        // `$LATEST` through `function_version` is the function itself; nonsense is nothing.
        assert_eq!(
            store
                .function_version(id, "f", LATEST)
                .await
                .unwrap()
                .unwrap()
                .version,
            LATEST
        );
        for absent in ["3", "0", "01", "-1", "live", ""] {
            assert!(
                store
                    .function_version(id, "f", absent)
                    .await
                    .unwrap()
                    .is_none(),
                "{absent}"
            );
        }
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn publishing_an_unchanged_function_answers_the_newest_version() {
        let (_dir, store, alice) = store().await;
        let id = &alice.account_id;
        store
            .create_function(id, "f", &spec(), b"code")
            .await
            .unwrap();
        let v1 = store
            .publish_version(id, "f", Publish::default())
            .await
            .unwrap();
        let same = store
            .publish_version(
                id,
                "f",
                Publish {
                    description: Some("ignored: nothing changed"),
                    ..Publish::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(same, v1);
        assert_eq!(
            store.list_versions(id, "f", None, 50).await.unwrap().len(),
            1
        );
        // Any update of $LATEST, even back to the same bytes, is a change.
        store
            .update_function(id, "f", None, FunctionChange::Code(b"code"))
            .await
            .unwrap();
        let v2 = store
            .publish_version(id, "f", Publish::default())
            .await
            .unwrap();
        assert_eq!(v2.version, "2");
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn a_failed_precondition_publishes_nothing() {
        let (_dir, store, alice) = store().await;
        let id = &alice.account_id;
        let f = store
            .create_function(id, "f", &spec(), b"code")
            .await
            .unwrap();
        let wrong_code = store
            .publish_version(
                id,
                "f",
                Publish {
                    code_sha256: Some("00"),
                    ..Publish::default()
                },
            )
            .await;
        assert!(
            matches!(&wrong_code, Err(StoreError::CodeMismatch { expected, current })
                if expected == "00" && *current == f.code_sha256),
            "{wrong_code:?}"
        );
        let stale = store
            .publish_version(
                id,
                "f",
                Publish {
                    revision_id: Some("stale"),
                    ..Publish::default()
                },
            )
            .await;
        assert!(
            matches!(stale, Err(StoreError::RevisionMismatch { .. })),
            "{stale:?}"
        );
        assert!(store
            .list_versions(id, "f", None, 50)
            .await
            .unwrap()
            .is_empty());
        // Both conditions met: published.
        let v1 = store
            .publish_version(
                id,
                "f",
                Publish {
                    code_sha256: Some(&f.code_sha256),
                    revision_id: Some(&f.revision_id),
                    description: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(v1.version, "1");
        assert!(matches!(
            store.publish_version(id, "nope", Publish::default()).await,
            Err(StoreError::NotFound(_))
        ));
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn version_numbers_are_never_reused_and_pages_follow_them() {
        let (_dir, store, alice) = store().await;
        let id = &alice.account_id;
        store
            .create_function(id, "f", &spec(), b"c0")
            .await
            .unwrap();
        for n in 1..=4u8 {
            store
                .publish_version(id, "f", Publish::default())
                .await
                .unwrap();
            store
                .update_function(id, "f", None, FunctionChange::Code(&[n]))
                .await
                .unwrap();
        }
        store.delete_version(id, "f", 4).await.unwrap();
        assert!(matches!(
            store.delete_version(id, "f", 4).await,
            Err(StoreError::NotFound(_))
        ));
        let v5 = store
            .publish_version(id, "f", Publish::default())
            .await
            .unwrap();
        assert_eq!(
            v5.version, "5",
            "a deleted version's number is not given again"
        );
        let numbers = |page: Vec<crate::Function>| -> Vec<String> {
            page.into_iter().map(|f| f.version).collect()
        };
        assert_eq!(
            numbers(store.list_versions(id, "f", None, 2).await.unwrap()),
            ["1", "2"]
        );
        assert_eq!(
            numbers(store.list_versions(id, "f", Some(2), 10).await.unwrap()),
            ["3", "5"]
        );
        // All versions of all functions, paged anywhere in between.
        store.create_function(id, "g", &spec(), b"g").await.unwrap();
        store
            .publish_version(id, "g", Publish::default())
            .await
            .unwrap();
        let all: Vec<(String, String)> = store
            .list_function_versions(id, None, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|f| (f.name, f.version))
            .collect();
        let expected: Vec<(String, String)> = [
            ("f", LATEST),
            ("f", "1"),
            ("f", "2"),
            ("f", "3"),
            ("f", "5"),
            ("g", LATEST),
            ("g", "1"),
        ]
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
        assert_eq!(all, expected);
        for page_size in 1..=7u32 {
            let mut paged = Vec::new();
            let mut after: Option<(String, String)> = None;
            loop {
                let page = store
                    .list_function_versions(
                        id,
                        after.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
                        page_size,
                    )
                    .await
                    .unwrap();
                assert!(page.len() <= page_size as usize);
                let Some(last) = page.last() else { break };
                after = Some((last.name.clone(), last.version.clone()));
                paged.extend(page.into_iter().map(|f| (f.name, f.version)));
            }
            assert_eq!(paged, expected, "page size {page_size}");
        }
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn a_versions_code_is_kept_until_the_version_goes() {
        let (_dir, store, alice) = store().await;
        let id = &alice.account_id;
        let first = store
            .create_function(id, "f", &spec(), b"first")
            .await
            .unwrap();
        store
            .publish_version(id, "f", Publish::default())
            .await
            .unwrap();
        store
            .update_function(id, "f", None, FunctionChange::Code(b"second"))
            .await
            .unwrap();
        // $LATEST no longer names the first package, version 1 does: it survives collection.
        store.recover().await.unwrap();
        assert_eq!(store.code(&first.code_sha256).await.unwrap(), b"first");
        store.delete_version(id, "f", 1).await.unwrap();
        assert!(store.code(&first.code_sha256).await.is_err());
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn deleting_a_function_deletes_its_versions_and_aliases() {
        let (_dir, store, alice) = store().await;
        let id = &alice.account_id;
        let f = store
            .create_function(id, "f", &spec(), b"old")
            .await
            .unwrap();
        store
            .publish_version(id, "f", Publish::default())
            .await
            .unwrap();
        store
            .create_alias(id, "f", "live", &alias_to("1", &[]))
            .await
            .unwrap();
        store
            .update_function(id, "f", None, FunctionChange::Code(b"new"))
            .await
            .unwrap();
        store.delete_function(id, "f").await.unwrap();
        assert!(
            store.code(&f.code_sha256).await.is_err(),
            "version 1's code went too"
        );
        store
            .create_function(id, "f", &spec(), b"again")
            .await
            .unwrap();
        assert!(store
            .function_version(id, "f", "1")
            .await
            .unwrap()
            .is_none());
        assert!(store.alias(id, "f", "live").await.unwrap().is_none());
        let v = store
            .publish_version(id, "f", Publish::default())
            .await
            .unwrap();
        assert_eq!(v.version, "1", "a new function numbers from 1");
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn aliases_name_existing_versions_and_keep_them() {
        let (_dir, store, alice) = store().await;
        let id = &alice.account_id;
        store.create_function(id, "f", &spec(), b"a").await.unwrap();
        store
            .publish_version(id, "f", Publish::default())
            .await
            .unwrap();
        store
            .update_function(id, "f", None, FunctionChange::Code(b"b"))
            .await
            .unwrap();
        store
            .publish_version(id, "f", Publish::default())
            .await
            .unwrap();

        let live = store
            .create_alias(id, "f", "live", &alias_to("1", &[("2", 0.1)]))
            .await
            .unwrap();
        assert_eq!(live.routing, BTreeMap::from([("2".to_owned(), 0.1)]));
        assert_eq!(
            store.alias(id, "f", "live").await.unwrap(),
            Some(live.clone())
        );
        assert!(matches!(
            store
                .create_alias(id, "f", "live", &alias_to("2", &[]))
                .await,
            Err(StoreError::Conflict(_))
        ));
        for bad in [alias_to("7", &[]), alias_to("1", &[("9", 0.5)])] {
            assert!(matches!(
                store.create_alias(id, "f", "other", &bad).await,
                Err(StoreError::NotFound(what)) if what.starts_with("function f:")
            ));
        }
        assert!(matches!(
            store
                .create_alias(id, "nope", "x", &alias_to(LATEST, &[]))
                .await,
            Err(StoreError::NotFound(_))
        ));
        store
            .create_alias(id, "f", "dev", &alias_to(LATEST, &[]))
            .await
            .unwrap();

        // Both versions the weighted alias names are in use.
        for v in [1, 2] {
            let refused = store.delete_version(id, "f", v).await;
            assert!(
                matches!(&refused, Err(StoreError::InUse(m)) if m.contains("live")),
                "{refused:?}"
            );
        }

        // A stale revision changes nothing; the current one moves the alias.
        let stale = store
            .update_alias(id, "f", "live", Some("stale"), AliasPatch::default())
            .await;
        assert!(matches!(stale, Err(StoreError::RevisionMismatch { .. })));
        let moved = store
            .update_alias(
                id,
                "f",
                "live",
                Some(&live.revision_id),
                AliasPatch {
                    function_version: Some("2".into()),
                    description: Some("all on 2".into()),
                    routing: Some(BTreeMap::new()),
                },
            )
            .await
            .unwrap();
        assert_eq!(moved.function_version, "2");
        assert_eq!(moved.description, "all on 2");
        assert!(moved.routing.is_empty());
        assert_ne!(moved.revision_id, live.revision_id);
        assert!(matches!(
            store
                .update_alias(
                    id,
                    "f",
                    "live",
                    None,
                    AliasPatch {
                        function_version: Some("8".into()),
                        ..AliasPatch::default()
                    }
                )
                .await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store
                .update_alias(id, "f", "gone", None, AliasPatch::default())
                .await,
            Err(StoreError::NotFound(what)) if what == "alias f:gone"
        ));
        // Version 1 is free now.
        store.delete_version(id, "f", 1).await.unwrap();

        let names = |aliases: Vec<crate::Alias>| -> Vec<String> {
            aliases.into_iter().map(|a| a.name).collect()
        };
        assert_eq!(
            names(store.list_aliases(id, "f", None, None, 50).await.unwrap()),
            ["dev", "live"]
        );
        assert_eq!(
            names(
                store
                    .list_aliases(id, "f", Some("2"), None, 50)
                    .await
                    .unwrap()
            ),
            ["live"]
        );
        assert_eq!(
            names(
                store
                    .list_aliases(id, "f", None, Some("dev"), 50)
                    .await
                    .unwrap()
            ),
            ["live"]
        );
        assert_eq!(
            names(store.list_aliases(id, "f", None, None, 1).await.unwrap()),
            ["dev"]
        );
        store.delete_alias(id, "f", "dev").await.unwrap();
        assert!(matches!(
            store.delete_alias(id, "f", "dev").await,
            Err(StoreError::NotFound(_))
        ));
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn a_versions_sizing_measurements_survive_updates_of_latest() {
        let (_dir, store, alice) = store().await;
        let id = &alice.account_id;
        store.create_function(id, "f", &spec(), b"a").await.unwrap();
        let v1 = store
            .publish_version(id, "f", Publish::default())
            .await
            .unwrap();
        let latest = store.function(id, "f").await.unwrap().unwrap();
        store
            .record_executions(
                &[
                    execution(id, &v1.revision_id),
                    execution(id, &latest.revision_id),
                ],
                10,
            )
            .await
            .unwrap();
        store
            .update_function(id, "f", None, FunctionChange::Code(b"b"))
            .await
            .unwrap();
        let kept = |revision: String| {
            let store = store.clone();
            async move {
                store
                    .recent_executions(id, "f", &revision, 128, 10)
                    .await
                    .unwrap()
                    .len()
            }
        };
        assert_eq!(
            kept(v1.revision_id.clone()).await,
            1,
            "version 1 still runs"
        );
        assert_eq!(
            kept(latest.revision_id.clone()).await,
            0,
            "an old $LATEST revision"
        );
        store.delete_version(id, "f", 1).await.unwrap();
        assert_eq!(kept(v1.revision_id).await, 0);
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn an_event_remembers_the_version_it_runs() {
        let (_dir, store, alice) = store().await;
        let id = &alice.account_id;
        store.create_function(id, "f", &spec(), b"a").await.unwrap();
        store
            .enqueue_event("plain", id, "f", b"{}", 1)
            .await
            .unwrap();
        // Invoked through an alias that chose version 3, and a destination's, resolved when it runs.
        for (event_id, function_version, now_ms) in [("pinned", Some("3"), 2), ("later", None, 3)] {
            store
                .enqueue(&crate::NewEvent {
                    event_id,
                    account_id: id,
                    function_name: "f",
                    qualifier: "live",
                    function_version,
                    payload: b"{}",
                    chain_depth: 0,
                    now_ms,
                })
                .await
                .unwrap();
        }
        let claimed = store.claim_due_events(10, 10).await.unwrap();
        let versions: Vec<(&str, &str, Option<&str>)> = claimed
            .iter()
            .map(|e| {
                (
                    e.event_id.as_str(),
                    e.qualifier.as_str(),
                    e.function_version.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            versions,
            [
                ("plain", LATEST, Some(LATEST)),
                ("pinned", "live", Some("3")),
                ("later", "live", None)
            ]
        );
    }
}
