//! What the store keeps for provisioned concurrency: each qualifier's requested number of
//! initialized environments and when it was last set (`migrations/0010_provisioned_concurrency.sql`).
//! The rows go with their function (`ON DELETE CASCADE`); what is ready is not stored (the
//! executor counts it), so a restarted server re-creates the environments from these rows.

use sqlx::Row;
use time::OffsetDateTime;

use crate::{format_time, now, parse_time, Result, Store, StoreError};

/// One qualifier's provisioned concurrency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionedConfig {
    /// The owning account.
    pub account_id: String,
    /// The function's name.
    pub function_name: String,
    /// A version number or an alias name.
    pub qualifier: String,
    /// Environments asked for.
    pub requested: u32,
    /// When the request was last set.
    pub last_modified: OffsetDateTime,
    /// The function's reserved concurrency, if set (for the account's limits).
    pub function_reserved: Option<u32>,
}

const SELECT: &str = "SELECT p.account_id, p.function_name, p.qualifier, p.requested, \
     p.last_modified, f.reserved_concurrency FROM provisioned_concurrency p \
     JOIN functions f ON f.account_id = p.account_id AND f.name = p.function_name";

impl Store {
    /// Sets a qualifier's provisioned concurrency (replacing any earlier request); refused with
    /// [`StoreError::NotFound`] when the function does not exist.
    pub async fn put_provisioned_concurrency(
        &self,
        account_id: &str,
        function_name: &str,
        qualifier: &str,
        requested: u32,
    ) -> Result<ProvisionedConfig> {
        let mut tx = self.write_transaction().await?;
        let function = sqlx::query(
            "SELECT reserved_concurrency FROM functions WHERE account_id = $1 AND name = $2",
        )
        .bind(account_id)
        .bind(function_name)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("function {function_name}")))?;
        let reserved: Option<i64> = function.try_get(0)?;
        let at = now();
        sqlx::query(
            "INSERT INTO provisioned_concurrency \
             (account_id, function_name, qualifier, requested, last_modified) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (account_id, function_name, qualifier) \
             DO UPDATE SET requested = excluded.requested, last_modified = excluded.last_modified",
        )
        .bind(account_id)
        .bind(function_name)
        .bind(qualifier)
        .bind(i64::from(requested))
        .bind(format_time(at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ProvisionedConfig {
            account_id: account_id.to_owned(),
            function_name: function_name.to_owned(),
            qualifier: qualifier.to_owned(),
            requested,
            last_modified: at,
            function_reserved: reserved.map(to_u32).transpose()?,
        })
    }

    /// A qualifier's provisioned concurrency, if set.
    pub async fn provisioned_concurrency(
        &self,
        account_id: &str,
        function_name: &str,
        qualifier: &str,
    ) -> Result<Option<ProvisionedConfig>> {
        let row = sqlx::query(&format!(
            "{SELECT} WHERE p.account_id = $1 AND p.function_name = $2 AND p.qualifier = $3"
        ))
        .bind(account_id)
        .bind(function_name)
        .bind(qualifier)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| config(&r)).transpose()
    }

    /// Drops a qualifier's provisioned concurrency. Returns whether it was set.
    pub async fn delete_provisioned_concurrency(
        &self,
        account_id: &str,
        function_name: &str,
        qualifier: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM provisioned_concurrency \
             WHERE account_id = $1 AND function_name = $2 AND qualifier = $3",
        )
        .bind(account_id)
        .bind(function_name)
        .bind(qualifier)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// A function's provisioned concurrency configs, by qualifier.
    pub async fn provisioned_concurrency_of_function(
        &self,
        account_id: &str,
        function_name: &str,
    ) -> Result<Vec<ProvisionedConfig>> {
        let rows = sqlx::query(&format!(
            "{SELECT} WHERE p.account_id = $1 AND p.function_name = $2 ORDER BY p.qualifier"
        ))
        .bind(account_id)
        .bind(function_name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(config).collect()
    }

    /// An account's provisioned concurrency configs, by function and qualifier.
    pub async fn provisioned_concurrency_of_account(
        &self,
        account_id: &str,
    ) -> Result<Vec<ProvisionedConfig>> {
        let rows = sqlx::query(&format!(
            "{SELECT} WHERE p.account_id = $1 ORDER BY p.function_name, p.qualifier"
        ))
        .bind(account_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(config).collect()
    }

    /// Every account's provisioned concurrency configs (for a server starting).
    pub async fn all_provisioned_concurrency(&self) -> Result<Vec<ProvisionedConfig>> {
        let rows = sqlx::query(&format!(
            "{SELECT} ORDER BY p.account_id, p.function_name, p.qualifier"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(config).collect()
    }
}

fn to_u32(n: i64) -> Result<u32> {
    u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("concurrency {n}")))
}

fn config(row: &sqlx::any::AnyRow) -> Result<ProvisionedConfig> {
    let last_modified: String = row.try_get(4)?;
    let reserved: Option<i64> = row.try_get(5)?;
    Ok(ProvisionedConfig {
        account_id: row.try_get(0)?,
        function_name: row.try_get(1)?,
        qualifier: row.try_get(2)?,
        requested: to_u32(row.try_get(3)?)?,
        last_modified: parse_time(&last_modified)?,
        function_reserved: reserved.map(to_u32).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use crate::tests::spec;
    use crate::StoreError;

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn configs_are_kept_per_qualifier_and_go_with_their_function() {
            let dir = tempfile::tempdir().unwrap();
            let store = crate::test_db::open(dir.path()).await;
            let account = store.create_account("a", false).await.unwrap();
            let a = account.account_id.as_str();
            store
                .create_function(a, "f", &spec(), b"PK f")
                .await
                .unwrap();
            store
                .create_function(a, "g", &spec(), b"PK g")
                .await
                .unwrap();

            let missing = store.put_provisioned_concurrency(a, "nope", "1", 2).await;
            assert!(
                matches!(missing, Err(StoreError::NotFound(_))),
                "{missing:?}"
            );
            assert!(store
                .all_provisioned_concurrency()
                .await
                .unwrap()
                .is_empty());

            let put = store
                .put_provisioned_concurrency(a, "f", "2", 4)
                .await
                .unwrap();
            assert_eq!((put.requested, put.function_reserved), (4, None));
            store
                .put_provisioned_concurrency(a, "f", "1", 2)
                .await
                .unwrap();
            store
                .put_provisioned_concurrency(a, "g", "live", 1)
                .await
                .unwrap();
            // Replaced, not added.
            let again = store
                .put_provisioned_concurrency(a, "f", "2", 5)
                .await
                .unwrap();
            assert!(again.last_modified >= put.last_modified);
            let got = store
                .provisioned_concurrency(a, "f", "2")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.requested, 5);
            assert_eq!(got.last_modified, again.last_modified);

            let of_f = store
                .provisioned_concurrency_of_function(a, "f")
                .await
                .unwrap();
            let qualifiers: Vec<_> = of_f.iter().map(|c| c.qualifier.as_str()).collect();
            assert_eq!(qualifiers, ["1", "2"]);
            assert_eq!(
                store
                    .provisioned_concurrency_of_account(a)
                    .await
                    .unwrap()
                    .len(),
                3
            );

            // The function's reserved concurrency comes along.
            store
                .set_reserved_concurrency(a, "f", Some(7))
                .await
                .unwrap();
            let got = store
                .provisioned_concurrency(a, "f", "1")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.function_reserved, Some(7));

            assert!(store
                .delete_provisioned_concurrency(a, "f", "1")
                .await
                .unwrap());
            assert!(!store
                .delete_provisioned_concurrency(a, "f", "1")
                .await
                .unwrap());
            assert!(store
                .provisioned_concurrency(a, "f", "1")
                .await
                .unwrap()
                .is_none());

            store.delete_function(a, "f").await.unwrap();
            let left = store.all_provisioned_concurrency().await.unwrap();
            assert_eq!(left.len(), 1);
            assert_eq!(
                (left[0].function_name.as_str(), left[0].qualifier.as_str()),
                ("g", "live")
            );
        }
    }
}
