//! Tests of the SnapStart setting: its spelling, its round trip through SQLite (read back by a
//! fresh `Store`, so no cache answers), patches, and publishing, which copies it into the version.

use super::*;
use crate::tests::{spec, store};
use crate::{FunctionChange, FunctionSpec, Publish, SpecPatch};

fn snap_spec() -> FunctionSpec {
    FunctionSpec {
        snap_start: SnapStartApplyOn::PublishedVersions,
        ..spec()
    }
}

fn set(value: SnapStartApplyOn) -> FunctionChange<'static> {
    FunctionChange::Spec(SpecPatch {
        snap_start: Some(value),
        ..SpecPatch::default()
    })
}

#[test]
fn values_round_trip_in_lambdas_spelling_and_nothing_else_parses() {
    for value in SnapStartApplyOn::ALL {
        assert_eq!(SnapStartApplyOn::parse(value.as_str()), Some(value));
        assert_eq!(value.to_string(), value.as_str());
    }
    assert_eq!(SnapStartApplyOn::default(), SnapStartApplyOn::None);
    assert_eq!(
        SnapStartApplyOn::parse("PublishedVersions"),
        Some(SnapStartApplyOn::PublishedVersions)
    );
    for bad in [
        "",
        "none",
        "NONE",
        "publishedversions",
        "PublishedVersions ",
        "All",
    ] {
        assert_eq!(SnapStartApplyOn::parse(bad), None, "{bad:?}");
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn the_setting_is_stored_and_read_back_by_another_store() {
        let (dir, store, alice) = store().await;
        let id = &alice.account_id;
        let on = store
            .create_function(id, "on", &snap_spec(), b"zip")
            .await
            .unwrap();
        assert_eq!(on.spec.snap_start, SnapStartApplyOn::PublishedVersions);
        store
            .create_function(id, "off", &spec(), b"zip")
            .await
            .unwrap();

        let fresh = crate::test_db::open(dir.path()).await;
        let on = fresh.function(id, "on").await.unwrap().unwrap();
        assert_eq!(on.spec, snap_spec());
        assert!(!on.snap_start_applies(), "never on $LATEST");
        let off = fresh.function(id, "off").await.unwrap().unwrap();
        assert_eq!(off.spec.snap_start, SnapStartApplyOn::None);
        let listed: Vec<_> = fresh
            .list_functions(id, None, 50)
            .await
            .unwrap()
            .into_iter()
            .map(|f| (f.name, f.spec.snap_start))
            .collect();
        assert_eq!(
            listed,
            [
                ("off".to_owned(), SnapStartApplyOn::None),
                ("on".to_owned(), SnapStartApplyOn::PublishedVersions),
            ]
        );
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn a_patch_changes_the_setting_only_when_it_names_it() {
        let (dir, store, alice) = store().await;
        let id = &alice.account_id;
        let created = store
            .create_function(id, "f", &spec(), b"zip")
            .await
            .unwrap();
        let on = store
            .update_function(id, "f", None, set(SnapStartApplyOn::PublishedVersions))
            .await
            .unwrap();
        assert_eq!(on.spec.snap_start, SnapStartApplyOn::PublishedVersions);
        assert_ne!(on.revision_id, created.revision_id, "a settings change");
        let other = store
            .update_function(
                id,
                "f",
                None,
                FunctionChange::Spec(SpecPatch {
                    timeout_s: Some(9),
                    ..SpecPatch::default()
                }),
            )
            .await
            .unwrap();
        assert_eq!(other.spec.snap_start, SnapStartApplyOn::PublishedVersions);
        assert_eq!(
            crate::test_db::open(dir.path())
                .await
                .function(id, "f")
                .await
                .unwrap()
                .unwrap()
                .spec
                .snap_start,
            SnapStartApplyOn::PublishedVersions
        );
        let off = store
            .update_function(id, "f", None, set(SnapStartApplyOn::None))
            .await
            .unwrap();
        assert_eq!(off.spec.snap_start, SnapStartApplyOn::None);
        assert_eq!(off.spec.timeout_s, 9);
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn a_version_keeps_the_setting_it_was_published_with() {
        let (dir, store, alice) = store().await;
        let id = &alice.account_id;
        store
            .create_function(id, "f", &snap_spec(), b"zip")
            .await
            .unwrap();
        let v1 = store
            .publish_version(id, "f", Publish::default())
            .await
            .unwrap();
        assert_eq!(v1.spec.snap_start, SnapStartApplyOn::PublishedVersions);
        assert!(v1.snap_start_applies());
        // Turning it off on $LATEST is a change: the next publish is a new version, without it.
        store
            .update_function(id, "f", None, set(SnapStartApplyOn::None))
            .await
            .unwrap();
        let v2 = store
            .publish_version(id, "f", Publish::default())
            .await
            .unwrap();
        assert_eq!(v2.version, "2");
        assert_eq!(v2.spec.snap_start, SnapStartApplyOn::None);
        assert!(!v2.snap_start_applies());

        let fresh = crate::test_db::open(dir.path()).await;
        let v1 = fresh.function_version(id, "f", "1").await.unwrap().unwrap();
        assert_eq!(v1.spec.snap_start, SnapStartApplyOn::PublishedVersions);
        assert!(v1.snap_start_applies());
        let all: Vec<_> = fresh
            .list_function_versions(id, None, 50)
            .await
            .unwrap()
            .into_iter()
            .map(|f| (f.snap_start_applies(), f.spec.snap_start, f.version))
            .collect();
        assert_eq!(
            all,
            [
                (false, SnapStartApplyOn::None, "$LATEST".to_owned()),
                (true, SnapStartApplyOn::PublishedVersions, "1".to_owned()),
                (false, SnapStartApplyOn::None, "2".to_owned()),
            ]
        );
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn the_column_refuses_a_value_lambda_does_not_spell() {
        let (_dir, store, alice) = store().await;
        store
            .create_function(&alice.account_id, "f", &spec(), b"zip")
            .await
            .unwrap();
        let refused = sqlx::query("UPDATE functions SET snap_start = 'publishedversions'")
            .execute(&store.pool)
            .await;
        assert!(refused.is_err(), "the CHECK constraint holds");
        let read = store
            .function(&alice.account_id, "f")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.spec.snap_start, SnapStartApplyOn::None);
    }
}
