//! Event invoke config (Lambda's `FunctionEventInvokeConfig`): per function and qualifier, the
//! retries and maximum age of its `Event` invocations and the destinations of their outcome.
//!
//! The store keeps what it is given: `ember-api` validates the ranges and the destinations
//! before they get here, and the executor's Event worker reads a config when it settles an
//! event. A config goes with its function (`ON DELETE CASCADE`), and with its version or alias
//! through [`delete_qualifier`], which [`Store::delete_version`] and [`Store::delete_alias`]
//! call in their transactions.

use sqlx::Row;

use crate::{now_ms, Result, Store, StoreError};

/// What a config sets; `None` leaves a setting to the server's default (two retries, the
/// server's maximum event age, no destination).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventConfigSettings {
    /// Retries of an event whose run ended in a function error: 0, 1 or 2.
    pub maximum_retry_attempts: Option<u32>,
    /// The age in seconds (60 to 21,600) past which a queued event is given up.
    pub maximum_event_age_s: Option<u32>,
    /// The ARN of the function invoked with the record of an event that succeeded.
    pub on_success: Option<String>,
    /// The ARN of the function invoked with the record of an event given up on.
    pub on_failure: Option<String>,
}

/// A partial update of [`EventConfigSettings`]: `None` leaves a setting as it is, `Some`
/// replaces it (`Some(None)` clears it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventConfigPatch {
    /// Replaces [`EventConfigSettings::maximum_retry_attempts`].
    pub maximum_retry_attempts: Option<Option<u32>>,
    /// Replaces [`EventConfigSettings::maximum_event_age_s`].
    pub maximum_event_age_s: Option<Option<u32>>,
    /// Replaces [`EventConfigSettings::on_success`].
    pub on_success: Option<Option<String>>,
    /// Replaces [`EventConfigSettings::on_failure`].
    pub on_failure: Option<Option<String>>,
}

impl EventConfigPatch {
    fn apply(self, settings: &mut EventConfigSettings) {
        if let Some(v) = self.maximum_retry_attempts {
            settings.maximum_retry_attempts = v;
        }
        if let Some(v) = self.maximum_event_age_s {
            settings.maximum_event_age_s = v;
        }
        if let Some(v) = self.on_success {
            settings.on_success = v;
        }
        if let Some(v) = self.on_failure {
            settings.on_failure = v;
        }
    }
}

/// A stored event invoke config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventInvokeConfig {
    /// `$LATEST`, a version number or an alias name.
    pub qualifier: String,
    /// What it sets.
    pub settings: EventConfigSettings,
    /// When it was last put or updated, in epoch milliseconds.
    pub last_modified_ms: i64,
}

const COLUMNS: &str = "qualifier, maximum_retry_attempts, maximum_event_age_s, on_success, \
                       on_failure, last_modified";

impl Store {
    /// Puts a function's config for `qualifier`, replacing any it had. Fails with
    /// [`StoreError::NotFound`] for an unknown function.
    pub async fn put_event_invoke_config(
        &self,
        account_id: &str,
        function_name: &str,
        qualifier: &str,
        settings: &EventConfigSettings,
    ) -> Result<EventInvokeConfig> {
        let mut tx = self.write_transaction().await?;
        function_exists(&mut tx, account_id, function_name).await?;
        let config = EventInvokeConfig {
            qualifier: qualifier.to_owned(),
            settings: settings.clone(),
            last_modified_ms: now_ms(),
        };
        write(&mut tx, account_id, function_name, &config).await?;
        tx.commit().await?;
        Ok(config)
    }

    /// Changes the settings `patch` names in a function's config for `qualifier`, leaving the
    /// others. Fails with [`StoreError::NotFound`] if the function has no config there.
    pub async fn update_event_invoke_config(
        &self,
        account_id: &str,
        function_name: &str,
        qualifier: &str,
        patch: EventConfigPatch,
    ) -> Result<EventInvokeConfig> {
        let mut tx = self.write_transaction().await?;
        let Some(mut config) = read(&mut *tx, account_id, function_name, qualifier).await? else {
            return Err(StoreError::NotFound(format!(
                "event invoke config of {function_name}:{qualifier}"
            )));
        };
        patch.apply(&mut config.settings);
        config.last_modified_ms = now_ms();
        write(&mut tx, account_id, function_name, &config).await?;
        tx.commit().await?;
        Ok(config)
    }

    /// A function's config for `qualifier`, if it has one. Read by the Event worker for every
    /// event it settles.
    pub async fn event_invoke_config(
        &self,
        account_id: &str,
        function_name: &str,
        qualifier: &str,
    ) -> Result<Option<EventInvokeConfig>> {
        read(&self.pool, account_id, function_name, qualifier).await
    }

    /// Deletes a function's config for `qualifier`. Fails with [`StoreError::NotFound`] if it
    /// has none.
    pub async fn delete_event_invoke_config(
        &self,
        account_id: &str,
        function_name: &str,
        qualifier: &str,
    ) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        if delete_qualifier(&mut conn, account_id, function_name, qualifier).await? == 0 {
            return Err(StoreError::NotFound(format!(
                "event invoke config of {function_name}:{qualifier}"
            )));
        }
        Ok(())
    }

    /// A function's configs in qualifier order, after the qualifier `after`, at most `limit`.
    pub async fn list_event_invoke_configs(
        &self,
        account_id: &str,
        function_name: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EventInvokeConfig>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM event_invoke_configs \
             WHERE account_id = $1 AND function_name = $2 AND qualifier > $3 \
             ORDER BY qualifier LIMIT $4"
        ))
        .bind(account_id)
        .bind(function_name)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }
}

/// Deletes the config of one qualifier of a function in the caller's connection or
/// transaction, returning how many rows went (0 or 1). For the delete of a published version or
/// an alias, so that its config goes in the same transaction.
pub(crate) async fn delete_qualifier(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    function_name: &str,
    qualifier: &str,
) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM event_invoke_configs \
         WHERE account_id = $1 AND function_name = $2 AND qualifier = $3",
    )
    .bind(account_id)
    .bind(function_name)
    .bind(qualifier)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

async fn function_exists(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    function_name: &str,
) -> Result<()> {
    let found = sqlx::query("SELECT 1 FROM functions WHERE account_id = $1 AND name = $2")
        .bind(account_id)
        .bind(function_name)
        .fetch_optional(conn)
        .await?;
    match found {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound(format!("function {function_name}"))),
    }
}

async fn read<'e, E>(
    executor: E,
    account_id: &str,
    function_name: &str,
    qualifier: &str,
) -> Result<Option<EventInvokeConfig>>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM event_invoke_configs \
         WHERE account_id = $1 AND function_name = $2 AND qualifier = $3"
    ))
    .bind(account_id)
    .bind(function_name)
    .bind(qualifier)
    .fetch_optional(executor)
    .await?;
    row.as_ref().map(from_row).transpose()
}

async fn write(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    function_name: &str,
    config: &EventInvokeConfig,
) -> Result<()> {
    let s = &config.settings;
    sqlx::query(
        "INSERT INTO event_invoke_configs (account_id, function_name, qualifier, \
         maximum_retry_attempts, maximum_event_age_s, on_success, on_failure, last_modified) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (account_id, function_name, qualifier) DO UPDATE SET \
         maximum_retry_attempts = excluded.maximum_retry_attempts, \
         maximum_event_age_s = excluded.maximum_event_age_s, \
         on_success = excluded.on_success, on_failure = excluded.on_failure, \
         last_modified = excluded.last_modified",
    )
    .bind(account_id)
    .bind(function_name)
    .bind(&config.qualifier)
    .bind(s.maximum_retry_attempts.map(i64::from))
    .bind(s.maximum_event_age_s.map(i64::from))
    .bind(&s.on_success)
    .bind(&s.on_failure)
    .bind(config.last_modified_ms)
    .execute(conn)
    .await?;
    Ok(())
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<EventInvokeConfig> {
    let int = |col: &str| -> Result<Option<u32>> {
        let v: Option<i64> = row.try_get(col)?;
        v.map(|v| u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{col} = {v}"))))
            .transpose()
    };
    Ok(EventInvokeConfig {
        qualifier: row.try_get("qualifier")?,
        settings: EventConfigSettings {
            maximum_retry_attempts: int("maximum_retry_attempts")?,
            maximum_event_age_s: int("maximum_event_age_s")?,
            on_success: row.try_get("on_success")?,
            on_failure: row.try_get("on_failure")?,
        },
        last_modified_ms: row.try_get("last_modified")?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::tests::store_with_function;

    fn retries(n: u32) -> EventConfigSettings {
        EventConfigSettings {
            maximum_retry_attempts: Some(n),
            ..Default::default()
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn put_replaces_and_update_merges() {
            let (_dir, store, account) = store_with_function().await;
            let full = EventConfigSettings {
                maximum_retry_attempts: Some(1),
                maximum_event_age_s: Some(600),
                on_success: Some("arn:s".into()),
                on_failure: Some("arn:f".into()),
            };
            store
                .put_event_invoke_config(&account, "f", "$LATEST", &full)
                .await
                .unwrap();
            // A put replaces every setting: those it does not name are unset.
            let put = store
                .put_event_invoke_config(&account, "f", "$LATEST", &retries(0))
                .await
                .unwrap();
            assert_eq!(put.settings, retries(0));
            let read = store
                .event_invoke_config(&account, "f", "$LATEST")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(read, put);

            // An update changes what it names and keeps the rest.
            let updated = store
                .update_event_invoke_config(
                    &account,
                    "f",
                    "$LATEST",
                    EventConfigPatch {
                        on_failure: Some(Some("arn:g".into())),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            assert_eq!(
                updated.settings,
                EventConfigSettings {
                    maximum_retry_attempts: Some(0),
                    on_failure: Some("arn:g".into()),
                    ..Default::default()
                }
            );
            assert!(updated.last_modified_ms >= put.last_modified_ms);
            // Clearing a setting.
            let cleared = store
                .update_event_invoke_config(
                    &account,
                    "f",
                    "$LATEST",
                    EventConfigPatch {
                        maximum_retry_attempts: Some(None),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            assert_eq!(cleared.settings.maximum_retry_attempts, None);
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn missing_functions_and_configs_are_not_found_and_change_nothing() {
            let (_dir, store, account) = store_with_function().await;
            let err = store
                .put_event_invoke_config(&account, "nope", "$LATEST", &retries(1))
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
            let err = store
                .update_event_invoke_config(&account, "f", "$LATEST", EventConfigPatch::default())
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
            let err = store
                .delete_event_invoke_config(&account, "f", "$LATEST")
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
            assert!(store
                .list_event_invoke_configs(&account, "f", None, 50)
                .await
                .unwrap()
                .is_empty());
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn configs_are_per_qualifier_listed_in_order_and_deleted_with_the_function() {
            let (_dir, store, account) = store_with_function().await;
            for (q, n) in [("$LATEST", 0), ("live", 1), ("2", 2)] {
                store
                    .put_event_invoke_config(&account, "f", q, &retries(n))
                    .await
                    .unwrap();
            }
            let listed = store
                .list_event_invoke_configs(&account, "f", None, 2)
                .await
                .unwrap();
            let names: Vec<_> = listed.iter().map(|c| c.qualifier.as_str()).collect();
            assert_eq!(names, ["$LATEST", "2"]);
            let rest = store
                .list_event_invoke_configs(&account, "f", Some("2"), 2)
                .await
                .unwrap();
            assert_eq!(rest.len(), 1);
            assert_eq!(rest[0].qualifier, "live");
            assert_eq!(rest[0].settings, retries(1));

            store
                .delete_event_invoke_config(&account, "f", "live")
                .await
                .unwrap();
            assert!(store
                .event_invoke_config(&account, "f", "live")
                .await
                .unwrap()
                .is_none());

            store.delete_function(&account, "f").await.unwrap();
            let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM event_invoke_configs")
                .fetch_one(&store.pool)
                .await
                .unwrap();
            assert_eq!(left, 0, "a deleted function's configs stayed");
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn a_settlement_queues_its_destinations_invocation_with_it() {
            let (_dir, store, account) = store_with_function().await;
            store
                .enqueue_event("e1", &account, "f", b"{}", 1_000)
                .await
                .unwrap();
            let claimed = store.claim_due_events(1_000, 10).await.unwrap();
            assert_eq!(claimed[0].qualifier, "$LATEST");
            assert_eq!(claimed[0].chain_depth, 0);
            let then = crate::NewEvent {
                event_id: "d1",
                account_id: &account,
                function_name: "f",
                qualifier: "live",
                function_version: None,
                payload: b"{\"version\":\"1.0\"}",
                chain_depth: 1,
                now_ms: 2_000,
            };
            let settled = store
                .settle_event_then(&claimed[0].claim, crate::EventSettlement::Done, None, Some(&then))
                .await
                .unwrap();
            assert_eq!(settled, crate::Settled::Stored);
            let next = store.claim_due_events(2_000, 10).await.unwrap();
            assert_eq!(
                next.len(),
                1,
                "the source left, its destination's invocation came"
            );
            assert_eq!(next[0].event_id, "d1");
            assert_eq!(next[0].qualifier, "live");
            assert_eq!(next[0].chain_depth, 1);
            assert_eq!(next[0].payload, b"{\"version\":\"1.0\"}");

            // A settlement that fails (its destination's id is taken) changes nothing: the source
            // stays queued, claimed, to be settled again.
            store
                .enqueue_event("e2", &account, "f", b"{}", 3_000)
                .await
                .unwrap();
            let e2 = store.claim_due_events(3_000, 10).await.unwrap();
            let clash = crate::NewEvent {
                event_id: "d1",
                ..then
            };
            assert!(store
                .settle_event_then(&e2[0].claim, crate::EventSettlement::Done, None, Some(&clash))
                .await
                .is_err());
            assert_eq!(store.queued_events().await.unwrap(), 2);
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn a_deleted_version_or_alias_takes_its_config() {
            let (_dir, store, account) = store_with_function().await;
            let version = store
                .publish_version(
                    &account,
                    "f",
                    crate::Publish {
                        code_sha256: None,
                        revision_id: None,
                        description: None,
                    },
                )
                .await
                .unwrap();
            store
                .create_alias(
                    &account,
                    "f",
                    "live",
                    &crate::AliasSpec {
                        function_version: version.version.clone(),
                        description: String::new(),
                        routing: Default::default(),
                    },
                )
                .await
                .unwrap();
            for q in ["$LATEST", &version.version, "live"] {
                store
                    .put_event_invoke_config(&account, "f", q, &retries(1))
                    .await
                    .unwrap();
            }
            store.delete_alias(&account, "f", "live").await.unwrap();
            let number: u64 = version.version.parse().unwrap();
            store.delete_version(&account, "f", number).await.unwrap();
            let left: Vec<_> = store
                .list_event_invoke_configs(&account, "f", None, 50)
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.qualifier)
                .collect();
            assert_eq!(left, ["$LATEST"]);
        }
    }
}
