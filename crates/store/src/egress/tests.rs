//! A function's own egress: set, cleared, read back by a fresh `Store` (so no cache answers), seen
//! by every version whenever it was published, and gone with the function.

use super::*;
use crate::tests::{spec, store_with_function};
use crate::Publish;

#[test]
fn values_round_trip_and_nothing_else_parses() {
    for value in [FunctionEgress::Allow, FunctionEgress::Deny] {
        assert_eq!(FunctionEgress::parse(value.as_str()), Some(value));
    }
    for bad in ["", "Allow", "DENY", "default", "allow "] {
        assert_eq!(FunctionEgress::parse(bad), None, "{bad:?}");
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn set_cleared_and_kept_across_a_reopen_for_all_versions() {
        let (dir, store, a) = store_with_function().await;
        let f = store.function(&a, "f").await.unwrap().unwrap();
        assert_eq!(f.egress, None, "a new function follows the server");
        let v1 = store
            .publish_version(&a, "f", Publish::default())
            .await
            .unwrap();
        assert_eq!(v1.egress, None);

        store
            .set_function_egress(&a, "f", Some(FunctionEgress::Deny))
            .await
            .unwrap();
        let g = store.function(&a, "f").await.unwrap().unwrap();
        assert_eq!(g.egress, Some(FunctionEgress::Deny));
        assert_eq!(g.revision_id, f.revision_id, "not a configuration change");
        let v1 = store.function_version(&a, "f", "1").await.unwrap().unwrap();
        assert_eq!(
            v1.egress,
            Some(FunctionEgress::Deny),
            "versions follow the function"
        );

        store.close().await;
        drop(store);
        let store = crate::test_db::open(dir.path()).await;
        assert_eq!(
            store.function(&a, "f").await.unwrap().unwrap().egress,
            Some(FunctionEgress::Deny)
        );
        store
            .set_function_egress(&a, "f", Some(FunctionEgress::Allow))
            .await
            .unwrap();
        assert_eq!(
            store
                .function_version(&a, "f", "1")
                .await
                .unwrap()
                .unwrap()
                .egress,
            Some(FunctionEgress::Allow)
        );
        store.set_function_egress(&a, "f", None).await.unwrap();
        assert_eq!(store.function(&a, "f").await.unwrap().unwrap().egress, None);
    }
}

crate::test_db::backend_tests! {
    #[tokio::test]
    async fn unknown_functions_are_not_found_and_deletion_forgets_the_setting() {
        let (_dir, store, a) = store_with_function().await;
        let err = store
            .set_function_egress(&a, "nope", Some(FunctionEgress::Deny))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err}");
        // Another account's function of the same name is not this one.
        let other = store.create_account("b", false).await.unwrap();
        let err = store
            .set_function_egress(&other.account_id, "f", Some(FunctionEgress::Deny))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err}");

        store
            .set_function_egress(&a, "f", Some(FunctionEgress::Deny))
            .await
            .unwrap();
        store.delete_function(&a, "f").await.unwrap();
        store
            .create_function(&a, "f", &spec(), b"PK again")
            .await
            .unwrap();
        assert_eq!(store.function(&a, "f").await.unwrap().unwrap().egress, None);
    }
}
