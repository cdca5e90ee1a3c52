//! What an account uses (`GetAccountSettings`' `AccountUsage`): its functions, their code, the
//! concurrency they reserve; and the room left for code in the data dir.

use sqlx::Row;

use crate::{Result, Store, StoreError};

/// An account's use of the store, from one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccountUsage {
    /// How many functions it has.
    pub function_count: u64,
    /// The sum of the code package sizes of its functions, their published versions and its
    /// layer versions, in bytes (as uploaded: zipped). A package two functions or versions share
    /// counts twice, as in Lambda.
    pub total_code_size: u64,
    /// The sum of its functions' reserved concurrency.
    pub reserved_concurrency: u64,
}

impl Store {
    /// What `account_id` uses now.
    pub async fn account_usage(&self, account_id: &str) -> Result<AccountUsage> {
        let row = sqlx::query(
            "SELECT COUNT(*), CAST(COALESCE(SUM(code_size), 0) + \
             (SELECT COALESCE(SUM(code_size), 0) FROM function_versions WHERE account_id = $1) + \
             (SELECT COALESCE(SUM(code_size), 0) FROM layer_versions WHERE account_id = $1) \
             AS BIGINT), \
             CAST(COALESCE(SUM(reserved_concurrency), 0) AS BIGINT) \
             FROM functions WHERE account_id = $1",
        )
        .bind(account_id)
        .fetch_one(&self.pool)
        .await?;
        let count = |i: usize| -> Result<u64> {
            let v: i64 = row.try_get(i)?;
            u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("account usage {i} = {v}")))
        };
        Ok(AccountUsage {
            function_count: count(0)?,
            total_code_size: count(1)?,
            reserved_concurrency: count(2)?,
        })
    }

    /// Bytes free for new code packages: what the data dir's file system has available to
    /// Ember's user. Ember sets no code storage quota of its own, so this is the bound a code
    /// upload meets (beyond it, a write fails with [`StoreError::StorageFull`]).
    pub async fn code_storage_available(&self) -> Result<u64> {
        let dir = self.dir.clone();
        let stat = tokio::task::spawn_blocking(move || rustix::fs::statvfs(&dir))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
            .map_err(|e| StoreError::Io(e.into()))?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{spec, store};

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn usage_counts_the_accounts_functions_code_and_reservations() {
            let (_dir, store, alice) = store().await;
            let bob = store.create_account("bob", false).await.unwrap();
            let a = &alice.account_id;
            assert_eq!(
                store.account_usage(a).await.unwrap(),
                AccountUsage::default()
            );
            store
                .create_function(a, "f", &spec(), b"12345")
                .await
                .unwrap();
            store
                .create_function(a, "g", &spec(), b"1234567")
                .await
                .unwrap();
            store
                .create_function(&bob.account_id, "f", &spec(), b"123")
                .await
                .unwrap();
            store
                .set_reserved_concurrency(a, "g", Some(7))
                .await
                .unwrap();
            assert_eq!(
                store.account_usage(a).await.unwrap(),
                AccountUsage {
                    function_count: 2,
                    total_code_size: 12,
                    reserved_concurrency: 7
                }
            );
            // A published version's package counts too.
            store
                .publish_version(a, "g", crate::Publish::default())
                .await
                .unwrap();
            assert_eq!(store.account_usage(a).await.unwrap().total_code_size, 19);
            // So does a layer version's.
            let layer = crate::NewLayerVersion {
                description: String::new(),
                license_info: None,
                compatible_runtimes: Vec::new(),
                compatible_architectures: Vec::new(),
                zip: b"123456789",
                unzipped_size: 9,
            };
            store.publish_layer_version(a, "l", &layer).await.unwrap();
            assert_eq!(store.account_usage(a).await.unwrap().total_code_size, 28);
            store.delete_function(a, "f").await.unwrap();
            assert_eq!(store.account_usage(a).await.unwrap().total_code_size, 23);
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn code_storage_available_is_the_file_systems_free_space() {
            let (dir, store, _alice) = store().await;
            let available = store.code_storage_available().await.unwrap();
            let stat = rustix::fs::statvfs(dir.path()).unwrap();
            let total = stat.f_blocks * stat.f_frsize;
            assert!(
                available > 0 && available <= total,
                "{available} of {total}"
            );
        }
    }
}
