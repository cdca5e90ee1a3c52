//! Tests of layers: version numbering, listings and their filters, policies and who may use a
//! version, and a deleted version's blob kept for the functions that use it.

use super::*;
use crate::tests::{spec, store};
use crate::{FunctionChange, SpecPatch};

fn new<'a>(zip: &'a [u8], runtimes: &[&str]) -> NewLayerVersion<'a> {
    NewLayerVersion {
        description: "deps".into(),
        license_info: Some("MIT".into()),
        compatible_runtimes: runtimes.iter().map(|r| r.to_string()).collect(),
        compatible_architectures: vec!["x86_64".into()],
        zip,
        unzipped_size: 1000,
    }
}

fn uses(layer: &LayerVersion) -> FunctionLayer {
    FunctionLayer {
        arn: format!(
            "arn:aws:lambda:us-east-1:{}:layer:{}:{}",
            layer.account_id, layer.layer_name, layer.version
        ),
        sha256: layer.code_sha256.clone(),
        code_size: layer.code_size,
        unzipped_size: layer.unzipped_size,
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn versions_are_numbered_from_one_and_never_reused() {
        let (_dir, store, alice) = store().await;
        let a = &alice.account_id;
        let v1 = store
            .publish_layer_version(a, "deps", &new(b"one", &["python3.12"]))
            .await
            .unwrap();
        let v2 = store
            .publish_layer_version(a, "deps", &new(b"two", &[]))
            .await
            .unwrap();
        let other = store
            .publish_layer_version(a, "other", &new(b"one", &[]))
            .await
            .unwrap();
        assert_eq!((v1.version, v2.version, other.version), (1, 2, 1));
        assert_eq!(v1.code_size, 3);
        assert_eq!(v1.license_info.as_deref(), Some("MIT"));
        assert_eq!(
            store.layer_version(a, "deps", 1).await.unwrap(),
            Some(v1.clone())
        );

        store.delete_layer_version(a, "deps", 2).await.unwrap();
        assert_eq!(store.layer_version(a, "deps", 2).await.unwrap(), None);
        // Deleting what is not there is no error, as in Lambda.
        store.delete_layer_version(a, "deps", 9).await.unwrap();
        let v3 = store
            .publish_layer_version(a, "deps", &new(b"three", &[]))
            .await
            .unwrap();
        assert_eq!(v3.version, 3, "2 is not given again");

        // Another account's layers are its own, numbered on their own.
        let bob = store.create_account("bob", false).await.unwrap();
        let b1 = store
            .publish_layer_version(&bob.account_id, "deps", &new(b"b", &[]))
            .await
            .unwrap();
        assert_eq!(b1.version, 1);
        assert_eq!(
            store
                .layer_version(a, "deps", 3)
                .await
                .unwrap()
                .unwrap()
                .code_sha256,
            v3.code_sha256
        );
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn listings_filter_by_runtime_and_architecture_and_page() {
        let (_dir, store, alice) = store().await;
        let a = &alice.account_id;
        store
            .publish_layer_version(a, "a", &new(b"1", &["python3.12"]))
            .await
            .unwrap();
        store
            .publish_layer_version(a, "a", &new(b"2", &["nodejs20.x"]))
            .await
            .unwrap();
        store
            .publish_layer_version(a, "b", &new(b"3", &["python3.12", "python3.11"]))
            .await
            .unwrap();
        store
            .publish_layer_version(a, "c", &new(b"4", &[]))
            .await
            .unwrap();

        let names = |v: &[LayerVersion]| {
            v.iter()
                .map(|l| format!("{}:{}", l.layer_name, l.version))
                .collect::<Vec<_>>()
        };
        let all = store.list_layers(a, None, None, None, 50).await.unwrap();
        assert_eq!(
            names(&all),
            ["a:2", "b:1", "c:1"],
            "each layer as its newest version"
        );
        let python = store
            .list_layers(a, Some("python3.12"), None, None, 50)
            .await
            .unwrap();
        assert_eq!(
            names(&python),
            ["a:1", "b:1"],
            "the newest matching version"
        );
        let arm = store
            .list_layers(a, None, Some("arm64"), None, 50)
            .await
            .unwrap();
        assert!(arm.is_empty());
        let page = store.list_layers(a, None, None, None, 2).await.unwrap();
        assert_eq!(names(&page), ["a:2", "b:1"]);
        let next = store
            .list_layers(a, None, None, Some("b"), 2)
            .await
            .unwrap();
        assert_eq!(names(&next), ["c:1"]);

        let versions = store
            .list_layer_versions(a, "a", None, None, None, 50)
            .await
            .unwrap();
        assert_eq!(names(&versions), ["a:2", "a:1"], "newest first");
        let below = store
            .list_layer_versions(a, "a", None, None, Some(2), 50)
            .await
            .unwrap();
        assert_eq!(names(&below), ["a:1"]);
        let node = store
            .list_layer_versions(a, "a", Some("nodejs20.x"), None, None, 50)
            .await
            .unwrap();
        assert_eq!(names(&node), ["a:2"]);
        let one = store
            .list_layer_versions(a, "a", None, None, None, 1)
            .await
            .unwrap();
        assert_eq!(names(&one), ["a:2"]);
        assert!(store
            .list_layer_versions(a, "nope", None, None, None, 50)
            .await
            .unwrap()
            .is_empty());
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn a_grant_lets_another_account_use_a_version_and_its_removal_stops_it() {
        let (_dir, store, alice) = store().await;
        let bob = store.create_account("bob", false).await.unwrap();
        let carol = store.create_account("carol", false).await.unwrap();
        let (a, b, c) = (&alice.account_id, &bob.account_id, &carol.account_id);
        let v1 = store
            .publish_layer_version(a, "deps", &new(b"x", &[]))
            .await
            .unwrap();
        store
            .publish_layer_version(a, "deps", &new(b"y", &[]))
            .await
            .unwrap();

        assert!(
            store
                .usable_layer_version(a, a, "deps", 1)
                .await
                .unwrap()
                .is_some(),
            "its owner"
        );
        assert!(
            store
                .usable_layer_version(b, a, "deps", 1)
                .await
                .unwrap()
                .is_none(),
            "not shared"
        );
        assert!(
            store
                .usable_layer_version(a, a, "deps", 7)
                .await
                .unwrap()
                .is_none(),
            "no such version"
        );

        let grant = |sid: &str, principal: &str| LayerGrant {
            statement_id: sid.into(),
            action: "lambda:GetLayerVersion".into(),
            principal: principal.into(),
        };
        let r1 = store
            .add_layer_permission(a, "deps", 1, &grant("bob", b), None)
            .await
            .unwrap();
        assert_ne!(r1, v1.policy_revision_id);
        assert_eq!(
            store
                .usable_layer_version(b, a, "deps", 1)
                .await
                .unwrap()
                .map(|l| l.version),
            Some(1)
        );
        assert!(
            store
                .usable_layer_version(c, a, "deps", 1)
                .await
                .unwrap()
                .is_none(),
            "only bob"
        );
        assert!(
            store
                .usable_layer_version(b, a, "deps", 2)
                .await
                .unwrap()
                .is_none(),
            "only version 1"
        );

        // A statement id is unique; a stale revision changes nothing.
        assert!(matches!(
            store
                .add_layer_permission(a, "deps", 1, &grant("bob", c), None)
                .await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store
                .add_layer_permission(a, "deps", 1, &grant("all", "*"), Some("stale"))
                .await,
            Err(StoreError::RevisionMismatch { .. })
        ));
        assert!(matches!(
            store
                .add_layer_permission(a, "deps", 9, &grant("x", "*"), None)
                .await,
            Err(StoreError::NotFound(_))
        ));
        let r2 = store
            .add_layer_permission(a, "deps", 1, &grant("all", "*"), Some(&r1))
            .await
            .unwrap();
        assert!(
            store
                .usable_layer_version(c, a, "deps", 1)
                .await
                .unwrap()
                .is_some(),
            "everyone"
        );
        let policy = store.layer_policy(a, "deps", 1).await.unwrap().unwrap();
        assert_eq!(policy.revision_id, r2);
        assert_eq!(policy.grants, [grant("all", "*"), grant("bob", b)]);

        assert!(matches!(
            store
                .remove_layer_permission(a, "deps", 1, "all", Some(&r1))
                .await,
            Err(StoreError::RevisionMismatch { .. })
        ));
        store
            .remove_layer_permission(a, "deps", 1, "all", None)
            .await
            .unwrap();
        assert!(matches!(
            store
                .remove_layer_permission(a, "deps", 1, "all", None)
                .await,
            Err(StoreError::NotFound(_))
        ));
        assert!(store
            .usable_layer_version(c, a, "deps", 1)
            .await
            .unwrap()
            .is_none());
        assert!(store
            .usable_layer_version(b, a, "deps", 1)
            .await
            .unwrap()
            .is_some());
        assert_eq!(store.layer_policy(a, "deps", 9).await.unwrap(), None);
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn a_deleted_version_keeps_its_blob_while_a_function_uses_it() {
        let (_dir, store, alice) = store().await;
        let a = &alice.account_id;
        let used = store
            .publish_layer_version(a, "deps", &new(b"layer-used", &[]))
            .await
            .unwrap();
        let unused = store
            .publish_layer_version(a, "deps", &new(b"layer-unused", &[]))
            .await
            .unwrap();
        let mut with_layer = spec();
        with_layer.layers = vec![uses(&used)];
        let f = store
            .create_function(a, "f", &with_layer, b"code")
            .await
            .unwrap();
        assert_eq!(f.spec.layers, [uses(&used)]);
        assert_eq!(
            store.function(a, "f").await.unwrap().unwrap().spec.layers,
            [uses(&used)]
        );

        store.delete_layer_version(a, "deps", 1).await.unwrap();
        store.delete_layer_version(a, "deps", 2).await.unwrap();
        assert_eq!(
            store.code(&used.code_sha256).await.unwrap(),
            b"layer-used",
            "kept for f"
        );
        assert!(store.code(&unused.code_sha256).await.is_err(), "collected");
        store.recover().await.unwrap();
        assert_eq!(store.code(&used.code_sha256).await.unwrap(), b"layer-used");

        // Dropping the layer from the function lets its blob go.
        store
            .update_function(
                a,
                "f",
                None,
                FunctionChange::Spec(SpecPatch {
                    layers: Some(vec![]),
                    ..SpecPatch::default()
                }),
            )
            .await
            .unwrap();
        store.recover().await.unwrap();
        assert!(store.code(&used.code_sha256).await.is_err());
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn a_layers_blob_outlives_the_function_while_the_version_exists() {
        let (_dir, store, alice) = store().await;
        let a = &alice.account_id;
        let layer = store
            .publish_layer_version(a, "deps", &new(b"shared", &[]))
            .await
            .unwrap();
        let mut with_layer = spec();
        with_layer.layers = vec![uses(&layer)];
        store
            .create_function(a, "f", &with_layer, b"code")
            .await
            .unwrap();
        store.delete_function(a, "f").await.unwrap();
        assert_eq!(store.code(&layer.code_sha256).await.unwrap(), b"shared");
        // A layer whose zip is also a function's code: both keep it.
        store
            .create_function(a, "g", &spec(), b"shared")
            .await
            .unwrap();
        store.delete_layer_version(a, "deps", 1).await.unwrap();
        assert_eq!(store.code(&layer.code_sha256).await.unwrap(), b"shared");
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn a_published_version_keeps_its_layers_and_their_blobs() {
        let (_dir, store, alice) = store().await;
        let a = &alice.account_id;
        let layer = store
            .publish_layer_version(a, "deps", &new(b"for-v1", &[]))
            .await
            .unwrap();
        let mut with_layer = spec();
        with_layer.layers = vec![uses(&layer)];
        store
            .create_function(a, "f", &with_layer, b"code")
            .await
            .unwrap();
        let v1 = store
            .publish_version(a, "f", crate::Publish::default())
            .await
            .unwrap();
        assert_eq!(v1.spec.layers, [uses(&layer)]);

        // $LATEST drops the layer and the version is deleted: version 1 still runs with it.
        let patch = SpecPatch {
            layers: Some(vec![]),
            ..SpecPatch::default()
        };
        store
            .update_function(a, "f", None, FunctionChange::Spec(patch))
            .await
            .unwrap();
        store.delete_layer_version(a, "deps", 1).await.unwrap();
        store.recover().await.unwrap();
        let kept = store.function_version(a, "f", "1").await.unwrap().unwrap();
        assert_eq!(kept.spec.layers, [uses(&layer)]);
        assert_eq!(store.code(&layer.code_sha256).await.unwrap(), b"for-v1");

        // Once the version goes, so does the blob.
        store.delete_version(a, "f", 1).await.unwrap();
        store.recover().await.unwrap();
        assert!(store.code(&layer.code_sha256).await.is_err());
    }
}
