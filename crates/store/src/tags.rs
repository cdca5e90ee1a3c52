//! A function's tags: key-value pairs that belong to the function itself (its unqualified name,
//! never a version or alias, as in Lambda), set with the function or later, and deleted with it
//! (`ON DELETE CASCADE`, `migrations/0006_tags.sql`).
//!
//! The store keeps what it is given: `ember-api` checks keys and values (lengths, characters,
//! the reserved `aws:` prefix) before they get here. The one limit that needs the stored tags,
//! how many a function may have, is checked here, in the transaction that writes them.

use std::collections::BTreeMap;

use sqlx::Row;

use crate::{Function, FunctionSpec, Result, Store, StoreError};

/// A function's tags, by key.
pub type Tags = BTreeMap<String, String>;

impl Store {
    /// [`Store::create_function`], with the function's first tags written in the same
    /// transaction as its row: either both are stored, or neither.
    pub async fn create_function_with_tags(
        &self,
        account_id: &str,
        name: &str,
        spec: &FunctionSpec,
        zip: &[u8],
        tags: &Tags,
    ) -> Result<Function> {
        self.cache.invalidate_function(account_id, name);
        let created = self
            .try_create_function(account_id, name, spec, zip, tags)
            .await;
        self.cache.invalidate_function(account_id, name);
        if created.is_err() {
            // The package may have been written for a row that never committed.
            self.collect_garbage().await?;
        }
        created
    }

    /// A function's tags. Fails with [`StoreError::NotFound`] for an unknown function (a
    /// function without tags has an empty map).
    pub async fn tags(&self, account_id: &str, name: &str) -> Result<Tags> {
        let mut tx = self.pool.begin().await?;
        exists(&mut tx, account_id, name).await?;
        let rows = sqlx::query(
            "SELECT tag_key, tag_value FROM function_tags \
             WHERE account_id = $1 AND function_name = $2",
        )
        .bind(account_id)
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Adds `tags` to a function's, replacing the values of keys it has already. Fails with
    /// [`StoreError::NotFound`] for an unknown function, and with
    /// [`StoreError::LimitExceeded`] if the function would then have more than `max_tags`;
    /// either way nothing is written.
    pub async fn tag_function(
        &self,
        account_id: &str,
        name: &str,
        tags: &Tags,
        max_tags: usize,
    ) -> Result<()> {
        let mut tx = self.write_transaction().await?;
        exists(&mut tx, account_id, name).await?;
        let rows = sqlx::query(
            "SELECT tag_key FROM function_tags WHERE account_id = $1 AND function_name = $2",
        )
        .bind(account_id)
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
        let mut keys = rows
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<std::result::Result<std::collections::BTreeSet<_>, _>>()?;
        let before = keys.len();
        keys.extend(tags.keys().cloned());
        if keys.len() > max_tags {
            return Err(StoreError::LimitExceeded(format!(
                "A function may have at most {max_tags} tags: {name} has {before}, and {} new \
                 keys would make {}",
                keys.len() - before,
                keys.len()
            )));
        }
        insert(&mut tx, account_id, name, tags).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes the tags of `keys` from a function; a key it does not have is no error. Fails
    /// with [`StoreError::NotFound`] for an unknown function.
    pub async fn untag_function(
        &self,
        account_id: &str,
        name: &str,
        keys: &[String],
    ) -> Result<()> {
        let mut tx = self.write_transaction().await?;
        exists(&mut tx, account_id, name).await?;
        for key in keys {
            sqlx::query(
                "DELETE FROM function_tags \
                 WHERE account_id = $1 AND function_name = $2 AND tag_key = $3",
            )
            .bind(account_id)
            .bind(name)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Fails with [`StoreError::NotFound`] unless the account has a function of that name.
pub(crate) async fn exists(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    name: &str,
) -> Result<()> {
    sqlx::query("SELECT 1 FROM functions WHERE account_id = $1 AND name = $2")
        .bind(account_id)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?
        .map(|_| ())
        .ok_or_else(|| StoreError::NotFound(format!("function {name}")))
}

/// Writes `tags` for a function, replacing the values of keys it has (at most a few dozen rows:
/// one statement each).
pub(crate) async fn insert(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    name: &str,
    tags: &Tags,
) -> Result<()> {
    for (key, value) in tags {
        sqlx::query(
            "INSERT INTO function_tags (account_id, function_name, tag_key, tag_value) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (account_id, function_name, tag_key) DO UPDATE SET tag_value = excluded.tag_value",
        )
        .bind(account_id)
        .bind(name)
        .bind(key)
        .bind(value)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{spec, store};

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The store keeps packages as given (the API validates zips).
    fn zip() -> Vec<u8> {
        b"zip".to_vec()
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn tags_are_created_with_the_function_added_replaced_and_removed() {
            let (_dir, store, alice) = store().await;
            let a = &alice.account_id;
            store
                .create_function_with_tags(a, "f", &spec(), &zip(), &tags(&[("team", "a")]))
                .await
                .unwrap();
            assert_eq!(store.tags(a, "f").await.unwrap(), tags(&[("team", "a")]));

            store
                .tag_function(a, "f", &tags(&[("team", "b"), ("env", "")]), 50)
                .await
                .unwrap();
            assert_eq!(
                store.tags(a, "f").await.unwrap(),
                tags(&[("env", ""), ("team", "b")])
            );

            store
                .untag_function(a, "f", &["team".into(), "absent".into()])
                .await
                .unwrap();
            assert_eq!(store.tags(a, "f").await.unwrap(), tags(&[("env", "")]));
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn the_limit_counts_the_stored_keys_and_a_refused_write_changes_nothing() {
            let (_dir, store, alice) = store().await;
            let a = &alice.account_id;
            store
                .create_function(a, "f", &spec(), &zip())
                .await
                .unwrap();
            store
                .tag_function(a, "f", &tags(&[("k1", "1"), ("k2", "2")]), 3)
                .await
                .unwrap();
            // Replacing a stored key adds none: still within 3.
            store
                .tag_function(a, "f", &tags(&[("k2", "two"), ("k3", "3")]), 3)
                .await
                .unwrap();
            let err = store
                .tag_function(a, "f", &tags(&[("k1", "one"), ("k4", "4")]), 3)
                .await
                .unwrap_err();
            assert!(
                matches!(err, StoreError::LimitExceeded(ref m) if m.contains("at most 3")),
                "{err}"
            );
            assert_eq!(
                store.tags(a, "f").await.unwrap(),
                tags(&[("k1", "1"), ("k2", "two"), ("k3", "3")])
            );
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn tags_of_a_missing_function_are_not_found_and_go_with_a_deleted_one() {
            let (_dir, store, alice) = store().await;
            let a = &alice.account_id;
            for result in [
                store.tags(a, "nope").await.map(|_| ()),
                store
                    .tag_function(a, "nope", &tags(&[("k", "v")]), 50)
                    .await,
                store.untag_function(a, "nope", &["k".into()]).await,
            ] {
                assert!(matches!(result, Err(StoreError::NotFound(_))), "{result:?}");
            }
            store
                .create_function_with_tags(a, "f", &spec(), &zip(), &tags(&[("k", "v")]))
                .await
                .unwrap();
            store.delete_function(a, "f").await.unwrap();
            store
                .create_function(a, "f", &spec(), &zip())
                .await
                .unwrap();
            assert_eq!(store.tags(a, "f").await.unwrap(), Tags::new());
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn a_create_that_fails_stores_no_tags() {
            let (_dir, store, alice) = store().await;
            let a = &alice.account_id;
            store
                .create_function_with_tags(a, "f", &spec(), &zip(), &tags(&[("first", "1")]))
                .await
                .unwrap();
            let again = store
                .create_function_with_tags(a, "f", &spec(), &zip(), &tags(&[("second", "2")]))
                .await;
            assert!(matches!(again, Err(StoreError::Conflict(_))));
            assert_eq!(store.tags(a, "f").await.unwrap(), tags(&[("first", "1")]));
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn accounts_do_not_share_tags() {
            let (_dir, store, alice) = store().await;
            let bob = store.create_account("bob", false).await.unwrap();
            store
                .create_function_with_tags(
                    &alice.account_id,
                    "f",
                    &spec(),
                    &zip(),
                    &tags(&[("o", "a")]),
                )
                .await
                .unwrap();
            store
                .create_function_with_tags(&bob.account_id, "f", &spec(), &zip(), &tags(&[("o", "b")]))
                .await
                .unwrap();
            store
                .untag_function(&bob.account_id, "f", &["o".into()])
                .await
                .unwrap();
            assert_eq!(
                store.tags(&alice.account_id, "f").await.unwrap(),
                tags(&[("o", "a")])
            );
        }
    }
}
