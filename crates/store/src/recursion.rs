//! A function's recursive loop setting (`PutFunctionRecursionConfig`): `Terminate`, Lambda's
//! default, unless `Allow` was put. Kept per function (`function_recursion`,
//! `migrations/0006_tags.sql`) and deleted with it.

use std::fmt;
use std::str::FromStr;

use sqlx::Row;

use crate::tags::exists;
use crate::{Result, Store, StoreError};

/// What Lambda does with an invocation it finds in a recursive loop. Stored by name
/// ([`Self::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecursiveLoop {
    /// Let it run.
    Allow,
    /// Stop it (Lambda's default).
    #[default]
    Terminate,
}

impl RecursiveLoop {
    /// The name, as the Lambda API and the store spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "Allow",
            Self::Terminate => "Terminate",
        }
    }
}

impl fmt::Display for RecursiveLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RecursiveLoop {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "Allow" => Ok(Self::Allow),
            "Terminate" => Ok(Self::Terminate),
            other => Err(StoreError::Invalid(format!(
                "recursive loop setting {other:?}"
            ))),
        }
    }
}

impl Store {
    /// A function's recursive loop setting (the default if none was put). Fails with
    /// [`StoreError::NotFound`] for an unknown function.
    pub async fn recursive_loop(&self, account_id: &str, name: &str) -> Result<RecursiveLoop> {
        let mut tx = self.pool.begin().await?;
        exists(&mut tx, account_id, name).await?;
        let row = sqlx::query(
            "SELECT recursive_loop FROM function_recursion \
             WHERE account_id = $1 AND function_name = $2",
        )
        .bind(account_id)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        match row {
            None => Ok(RecursiveLoop::default()),
            Some(row) => row
                .try_get::<String, _>(0)?
                .parse()
                .map_err(|_| StoreError::Corrupt("function_recursion.recursive_loop".into())),
        }
    }

    /// Sets a function's recursive loop setting. Fails with [`StoreError::NotFound`] for an
    /// unknown function.
    pub async fn set_recursive_loop(
        &self,
        account_id: &str,
        name: &str,
        setting: RecursiveLoop,
    ) -> Result<()> {
        let mut tx = self.write_transaction().await?;
        exists(&mut tx, account_id, name).await?;
        sqlx::query(
            "INSERT INTO function_recursion (account_id, function_name, recursive_loop) \
             VALUES ($1, $2, $3) \
             ON CONFLICT (account_id, function_name) DO UPDATE SET recursive_loop = excluded.recursive_loop",
        )
        .bind(account_id)
        .bind(name)
        .bind(setting.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{spec, store};

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn the_setting_defaults_to_terminate_is_kept_and_goes_with_the_function() {
            let (_dir, store, alice) = store().await;
            let a = &alice.account_id;
            assert!(matches!(
                store.recursive_loop(a, "f").await,
                Err(StoreError::NotFound(_))
            ));
            assert!(matches!(
                store.set_recursive_loop(a, "f", RecursiveLoop::Allow).await,
                Err(StoreError::NotFound(_))
            ));
            store
                .create_function(a, "f", &spec(), b"zip")
                .await
                .unwrap();
            assert_eq!(
                store.recursive_loop(a, "f").await.unwrap(),
                RecursiveLoop::Terminate
            );
            store
                .set_recursive_loop(a, "f", RecursiveLoop::Allow)
                .await
                .unwrap();
            assert_eq!(
                store.recursive_loop(a, "f").await.unwrap(),
                RecursiveLoop::Allow
            );
            store
                .set_recursive_loop(a, "f", RecursiveLoop::Terminate)
                .await
                .unwrap();
            assert_eq!(
                store.recursive_loop(a, "f").await.unwrap(),
                RecursiveLoop::Terminate
            );
            store
                .set_recursive_loop(a, "f", RecursiveLoop::Allow)
                .await
                .unwrap();

            store.delete_function(a, "f").await.unwrap();
            store
                .create_function(a, "f", &spec(), b"zip")
                .await
                .unwrap();
            assert_eq!(
                store.recursive_loop(a, "f").await.unwrap(),
                RecursiveLoop::Terminate
            );
        }
    }

    #[test]
    fn names_round_trip() {
        for setting in [RecursiveLoop::Allow, RecursiveLoop::Terminate] {
            assert_eq!(setting.as_str().parse::<RecursiveLoop>().unwrap(), setting);
        }
        assert!("allow".parse::<RecursiveLoop>().is_err());
    }
}
