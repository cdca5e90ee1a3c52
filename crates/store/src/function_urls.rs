//! Function URLs (Lambda's `FunctionUrlConfig`): at most one per function and qualifier (the
//! unqualified function or an alias), each with a unique id that names it in its host name.
//!
//! The store keeps what it is given: `ember-api` validates the settings and makes the id. A URL
//! goes with its function (`ON DELETE CASCADE`) and with its alias through [`delete_qualifier`],
//! which [`Store::delete_alias`] calls in its transaction. [`Store::function_url_by_id`] is the
//! read on every request a URL serves.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::{now_ms, Result, Store, StoreError};

/// Who may call a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlAuthType {
    /// Anyone the function's resource policy lets call it unsigned.
    None,
    /// SigV4-signed requests of accounts allowed to invoke it.
    AwsIam,
}

impl UrlAuthType {
    /// `NONE` or `AWS_IAM`, as Lambda writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::AwsIam => "AWS_IAM",
        }
    }

    /// The type Lambda's name says, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "NONE" => Some(Self::None),
            "AWS_IAM" => Some(Self::AwsIam),
            _ => None,
        }
    }
}

/// How a URL answers: the whole response at once, or streamed as the function writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvokeMode {
    /// The response is sent once the function has returned.
    Buffered,
    /// The response is streamed.
    ResponseStream,
}

impl InvokeMode {
    /// `BUFFERED` or `RESPONSE_STREAM`, as Lambda writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Buffered => "BUFFERED",
            Self::ResponseStream => "RESPONSE_STREAM",
        }
    }

    /// The mode Lambda's name says, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "BUFFERED" => Some(Self::Buffered),
            "RESPONSE_STREAM" => Some(Self::ResponseStream),
            _ => None,
        }
    }
}

/// A URL's CORS settings; `None` members are not set. Stored as JSON (a storage format: the
/// API's shape is its own).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UrlCors {
    /// `Access-Control-Allow-Credentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    /// `Access-Control-Allow-Headers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_headers: Option<Vec<String>>,
    /// `Access-Control-Allow-Methods`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_methods: Option<Vec<String>>,
    /// The origins allowed (`*` for any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_origins: Option<Vec<String>>,
    /// `Access-Control-Expose-Headers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose_headers: Option<Vec<String>>,
    /// `Access-Control-Max-Age`, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u32>,
}

/// A stored function URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionUrl {
    /// The function's owner.
    pub account_id: String,
    /// The function.
    pub function_name: String,
    /// The alias it serves; `None` for the unqualified function (`$LATEST`).
    pub qualifier: Option<String>,
    /// 32 lowercase letters and digits, unique.
    pub url_id: String,
    /// Who may call it.
    pub auth_type: UrlAuthType,
    /// How it answers.
    pub invoke_mode: InvokeMode,
    /// Its CORS settings, if it has any.
    pub cors: Option<UrlCors>,
    /// When it was created, in epoch milliseconds.
    pub created_ms: i64,
    /// When it was last created or updated, in epoch milliseconds.
    pub last_modified_ms: i64,
}

/// What a new URL is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFunctionUrl<'a> {
    /// Its id (see [`FunctionUrl::url_id`]).
    pub url_id: &'a str,
    /// Who may call it.
    pub auth_type: UrlAuthType,
    /// How it answers.
    pub invoke_mode: InvokeMode,
    /// Its CORS settings.
    pub cors: Option<UrlCors>,
}

/// An update of a URL: `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionUrlPatch {
    /// Replaces [`FunctionUrl::auth_type`].
    pub auth_type: Option<UrlAuthType>,
    /// Replaces [`FunctionUrl::invoke_mode`].
    pub invoke_mode: Option<InvokeMode>,
    /// Replaces [`FunctionUrl::cors`] (`Some(None)` clears it).
    pub cors: Option<Option<UrlCors>>,
}

const COLUMNS: &str = "account_id, function_name, qualifier, url_id, auth_type, invoke_mode, \
                       cors, created, last_modified";

impl Store {
    /// Creates the URL of a function (`qualifier` `None`) or of one of its aliases. Fails with
    /// [`StoreError::NotFound`] for an unknown function or alias, and with
    /// [`StoreError::Conflict`] if that qualifier has a URL (or, most unlikely, the id is
    /// taken).
    pub async fn create_function_url(
        &self,
        account_id: &str,
        function_name: &str,
        qualifier: Option<&str>,
        new: &NewFunctionUrl<'_>,
    ) -> Result<FunctionUrl> {
        self.cache.invalidate_function(account_id, function_name);
        let _invalidate_after = crate::InvalidateOnDrop(&self.cache, account_id, function_name);
        let mut tx = self.write_transaction().await?;
        let found = sqlx::query("SELECT 1 FROM functions WHERE account_id = $1 AND name = $2")
            .bind(account_id)
            .bind(function_name)
            .fetch_optional(&mut *tx)
            .await?;
        if found.is_none() {
            return Err(StoreError::NotFound(format!("function {function_name}")));
        }
        if let Some(alias) = qualifier {
            let found = sqlx::query(
                "SELECT 1 FROM function_aliases \
                 WHERE account_id = $1 AND function_name = $2 AND name = $3",
            )
            .bind(account_id)
            .bind(function_name)
            .bind(alias)
            .fetch_optional(&mut *tx)
            .await?;
            if found.is_none() {
                return Err(StoreError::NotFound(format!(
                    "alias {function_name}:{alias}"
                )));
            }
        }
        if read(&mut *tx, account_id, function_name, qualifier)
            .await?
            .is_some()
        {
            return Err(StoreError::Conflict(format!(
                "function URL of {function_name}{}",
                qualifier.map(|q| format!(":{q}")).unwrap_or_default()
            )));
        }
        let taken = sqlx::query("SELECT 1 FROM function_urls WHERE url_id = $1")
            .bind(new.url_id)
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(StoreError::Conflict(format!(
                "function URL id {}",
                new.url_id
            )));
        }
        let now = now_ms();
        let url = FunctionUrl {
            account_id: account_id.to_owned(),
            function_name: function_name.to_owned(),
            qualifier: qualifier.map(str::to_owned),
            url_id: new.url_id.to_owned(),
            auth_type: new.auth_type,
            invoke_mode: new.invoke_mode,
            cors: new.cors.clone(),
            created_ms: now,
            last_modified_ms: now,
        };
        sqlx::query(&format!(
            "INSERT INTO function_urls ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(account_id)
        .bind(function_name)
        .bind(qualifier.unwrap_or(""))
        .bind(&url.url_id)
        .bind(url.auth_type.as_str())
        .bind(url.invoke_mode.as_str())
        .bind(cors_json(url.cors.as_ref())?)
        .bind(url.created_ms)
        .bind(url.last_modified_ms)
        .execute(&mut *tx)
        .await?;
        self.notify_function(&mut *tx, account_id, function_name)
            .await?;
        tx.commit().await?;
        Ok(url)
    }

    /// The URL of a function (`qualifier` `None`) or alias, if it has one.
    pub async fn function_url(
        &self,
        account_id: &str,
        function_name: &str,
        qualifier: Option<&str>,
    ) -> Result<Option<FunctionUrl>> {
        read(&self.pool, account_id, function_name, qualifier).await
    }

    /// The URL whose id is `url_id`, if one is: what a request to a URL is served by. Answered
    /// from the store's cache once found; every write of the URL or its function invalidates it.
    pub async fn function_url_by_id(&self, url_id: &str) -> Result<Option<FunctionUrl>> {
        if let Some(hit) = self.cache.url(url_id) {
            return Ok(Some(hit));
        }
        let generation = self.cache.generation();
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM function_urls WHERE url_id = $1"
        ))
        .bind(url_id)
        .fetch_optional(&self.pool)
        .await?;
        let found = row.as_ref().map(from_row).transpose()?;
        if let Some(url) = &found {
            self.cache.put_url(generation, url);
        }
        Ok(found)
    }

    /// Changes what `patch` names in a URL. Fails with [`StoreError::NotFound`] if there is no
    /// URL there.
    pub async fn update_function_url(
        &self,
        account_id: &str,
        function_name: &str,
        qualifier: Option<&str>,
        patch: FunctionUrlPatch,
    ) -> Result<FunctionUrl> {
        self.cache.invalidate_function(account_id, function_name);
        let _invalidate_after = crate::InvalidateOnDrop(&self.cache, account_id, function_name);
        let mut tx = self.write_transaction().await?;
        let Some(mut url) = read(&mut *tx, account_id, function_name, qualifier).await? else {
            return Err(not_found(function_name, qualifier));
        };
        if let Some(auth) = patch.auth_type {
            url.auth_type = auth;
        }
        if let Some(mode) = patch.invoke_mode {
            url.invoke_mode = mode;
        }
        if let Some(cors) = patch.cors {
            url.cors = cors;
        }
        url.last_modified_ms = now_ms().max(url.last_modified_ms);
        sqlx::query(
            "UPDATE function_urls SET auth_type = $4, invoke_mode = $5, cors = $6, \
             last_modified = $7 \
             WHERE account_id = $1 AND function_name = $2 AND qualifier = $3",
        )
        .bind(account_id)
        .bind(function_name)
        .bind(qualifier.unwrap_or(""))
        .bind(url.auth_type.as_str())
        .bind(url.invoke_mode.as_str())
        .bind(cors_json(url.cors.as_ref())?)
        .bind(url.last_modified_ms)
        .execute(&mut *tx)
        .await?;
        self.notify_function(&mut *tx, account_id, function_name)
            .await?;
        tx.commit().await?;
        Ok(url)
    }

    /// Deletes a URL. Fails with [`StoreError::NotFound`] if there is none there.
    pub async fn delete_function_url(
        &self,
        account_id: &str,
        function_name: &str,
        qualifier: Option<&str>,
    ) -> Result<()> {
        self.cache.invalidate_function(account_id, function_name);
        let _invalidate_after = crate::InvalidateOnDrop(&self.cache, account_id, function_name);
        let mut conn = self.pool.acquire().await?;
        let gone = delete_qualifier(
            &mut conn,
            account_id,
            function_name,
            qualifier.unwrap_or(""),
        )
        .await?;
        if gone == 0 {
            return Err(not_found(function_name, qualifier));
        }
        self.notify_function(&mut *conn, account_id, function_name)
            .await
    }

    /// A function's URLs in qualifier order (the unqualified function's first), after the
    /// qualifier `after` (`""` is the unqualified function's), at most `limit`.
    pub async fn list_function_urls(
        &self,
        account_id: &str,
        function_name: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<FunctionUrl>> {
        let mut query = format!(
            "SELECT {COLUMNS} FROM function_urls WHERE account_id = $1 AND function_name = $2"
        );
        if after.is_some() {
            query.push_str(" AND qualifier > $4");
        }
        query.push_str(" ORDER BY qualifier LIMIT $3");
        let rows = sqlx::query(&query)
            .bind(account_id)
            .bind(function_name)
            .bind(i64::from(limit))
            .bind(after.unwrap_or(""))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }
}

/// Deletes the URL of one qualifier (`""`: the unqualified function's) in the caller's
/// connection or transaction, returning how many rows went (0 or 1). For the delete of an alias,
/// so that its URL goes in the same transaction.
pub(crate) async fn delete_qualifier(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    function_name: &str,
    qualifier: &str,
) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM function_urls \
         WHERE account_id = $1 AND function_name = $2 AND qualifier = $3",
    )
    .bind(account_id)
    .bind(function_name)
    .bind(qualifier)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

fn not_found(function_name: &str, qualifier: Option<&str>) -> StoreError {
    StoreError::NotFound(format!(
        "function URL of {function_name}{}",
        qualifier.map(|q| format!(":{q}")).unwrap_or_default()
    ))
}

async fn read<'e, E>(
    executor: E,
    account_id: &str,
    function_name: &str,
    qualifier: Option<&str>,
) -> Result<Option<FunctionUrl>>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM function_urls \
         WHERE account_id = $1 AND function_name = $2 AND qualifier = $3"
    ))
    .bind(account_id)
    .bind(function_name)
    .bind(qualifier.unwrap_or(""))
    .fetch_optional(executor)
    .await?;
    row.as_ref().map(from_row).transpose()
}

fn cors_json(cors: Option<&UrlCors>) -> Result<Option<String>> {
    cors.map(|c| serde_json::to_string(c).map_err(|e| StoreError::Corrupt(format!("cors: {e}"))))
        .transpose()
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<FunctionUrl> {
    let auth: String = row.try_get("auth_type")?;
    let mode: String = row.try_get("invoke_mode")?;
    let cors: Option<String> = row.try_get("cors")?;
    let qualifier: String = row.try_get("qualifier")?;
    Ok(FunctionUrl {
        account_id: row.try_get("account_id")?,
        function_name: row.try_get("function_name")?,
        qualifier: Some(qualifier).filter(|q| !q.is_empty()),
        url_id: row.try_get("url_id")?,
        auth_type: UrlAuthType::parse(&auth)
            .ok_or_else(|| StoreError::Corrupt(format!("auth_type = {auth}")))?,
        invoke_mode: InvokeMode::parse(&mode)
            .ok_or_else(|| StoreError::Corrupt(format!("invoke_mode = {mode}")))?,
        cors: cors
            .map(|c| {
                serde_json::from_str(&c).map_err(|_| StoreError::Corrupt(format!("cors = {c}")))
            })
            .transpose()?,
        created_ms: row.try_get("created")?,
        last_modified_ms: row.try_get("last_modified")?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::tests::store_with_function;

    fn new(id: &str) -> NewFunctionUrl<'_> {
        NewFunctionUrl {
            url_id: id,
            auth_type: UrlAuthType::None,
            invoke_mode: InvokeMode::Buffered,
            cors: None,
        }
    }

    async fn alias(store: &Store, account: &str, name: &str) {
        store
            .create_alias(
                account,
                "f",
                name,
                &crate::AliasSpec {
                    function_version: crate::LATEST.into(),
                    description: String::new(),
                    routing: Default::default(),
                },
            )
            .await
            .unwrap();
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn create_read_update_delete() {
            let (_dir, store, account) = store_with_function().await;
            let cors = UrlCors {
                allow_origins: Some(vec!["*".into()]),
                max_age: Some(60),
                ..Default::default()
            };
            let created = store
                .create_function_url(
                    &account,
                    "f",
                    None,
                    &NewFunctionUrl {
                        cors: Some(cors.clone()),
                        ..new("a".repeat(32).as_str())
                    },
                )
                .await
                .unwrap();
            assert_eq!(created.qualifier, None);
            assert_eq!(created.cors.as_ref(), Some(&cors));
            assert_eq!(
                store.function_url(&account, "f", None).await.unwrap(),
                Some(created.clone())
            );
            assert_eq!(
                store
                    .function_url_by_id(&"a".repeat(32))
                    .await
                    .unwrap()
                    .as_ref(),
                Some(&created)
            );
            assert!(store.function_url_by_id("nope").await.unwrap().is_none());

            // A second URL for the same qualifier is a conflict and changes nothing.
            let err = store
                .create_function_url(&account, "f", None, &new(&"b".repeat(32)))
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
            assert!(store
                .function_url_by_id(&"b".repeat(32))
                .await
                .unwrap()
                .is_none());

            let updated = store
                .update_function_url(
                    &account,
                    "f",
                    None,
                    FunctionUrlPatch {
                        auth_type: Some(UrlAuthType::AwsIam),
                        cors: Some(None),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            assert_eq!(updated.auth_type, UrlAuthType::AwsIam);
            assert_eq!(updated.invoke_mode, InvokeMode::Buffered, "kept");
            assert_eq!(updated.cors, None, "cleared");
            assert_eq!(updated.url_id, created.url_id, "a URL's id never changes");
            assert_eq!(updated.created_ms, created.created_ms);
            assert!(updated.last_modified_ms >= created.last_modified_ms);
            assert_eq!(
                store.function_url(&account, "f", None).await.unwrap(),
                Some(updated)
            );

            store
                .delete_function_url(&account, "f", None)
                .await
                .unwrap();
            let err = store
                .delete_function_url(&account, "f", None)
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
            let err = store
                .update_function_url(&account, "f", None, FunctionUrlPatch::default())
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
        }
    }

    crate::test_db::backend_tests! {
        /// The two reads of a URL request (the URL by id, the function's policies) are cached:
        /// each write that changes what they answer is seen by the next read.
        #[tokio::test]
        async fn cached_url_and_policy_reads_follow_every_write() {
            let (_dir, store, account) = store_with_function().await;
            let id = "d".repeat(32);
            let by_id = |store: &Store| {
                let id = id.clone();
                let store = store.clone();
                async move { store.function_url_by_id(&id).await.unwrap() }
            };
            let statement_ids = |store: &Store| {
                let (store, account) = (store.clone(), account.clone());
                async move {
                    store
                        .policies(&account, "f")
                        .await
                        .unwrap()
                        .iter()
                        .flat_map(|p| p.statements.iter().map(|s| s.statement_id.clone()))
                        .collect::<Vec<_>>()
                }
            };
            assert!(by_id(&store).await.is_none(), "not found is not cached");
            store
                .create_function_url(&account, "f", None, &new(&id))
                .await
                .unwrap();
            assert_eq!(by_id(&store).await.unwrap().auth_type, UrlAuthType::None);
            store
                .update_function_url(
                    &account,
                    "f",
                    None,
                    FunctionUrlPatch {
                        invoke_mode: Some(InvokeMode::ResponseStream),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            assert_eq!(
                by_id(&store).await.unwrap().invoke_mode,
                InvokeMode::ResponseStream
            );

            assert!(statement_ids(&store).await.is_empty());
            let statement = crate::PolicyStatement {
                statement_id: "public".into(),
                action: "lambda:InvokeFunctionUrl".into(),
                principal: "*".into(),
                ..Default::default()
            };
            store
                .add_permission(&account, "f", None, &statement, None)
                .await
                .unwrap();
            assert_eq!(statement_ids(&store).await, ["public"]);
            store
                .remove_permission(&account, "f", None, "public", None)
                .await
                .unwrap();
            assert!(statement_ids(&store).await.is_empty());
            store
                .add_permission(&account, "f", None, &statement, None)
                .await
                .unwrap();
            assert_eq!(statement_ids(&store).await, ["public"]);

            store
                .delete_function_url(&account, "f", None)
                .await
                .unwrap();
            assert!(by_id(&store).await.is_none());

            // An alias's URL goes with the alias; everything goes with the function.
            alias(&store, &account, "live").await;
            store
                .create_function_url(&account, "f", Some("live"), &new(&id))
                .await
                .unwrap();
            assert!(by_id(&store).await.is_some());
            store.delete_alias(&account, "f", "live").await.unwrap();
            assert!(by_id(&store).await.is_none());
            store
                .create_function_url(&account, "f", None, &new(&id))
                .await
                .unwrap();
            assert!(by_id(&store).await.is_some());
            store.delete_function(&account, "f").await.unwrap();
            assert!(by_id(&store).await.is_none());
            assert!(statement_ids(&store).await.is_empty());
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn unknown_functions_and_aliases_are_not_found() {
            let (_dir, store, account) = store_with_function().await;
            for (function, qualifier) in [("nope", None), ("f", Some("live"))] {
                let err = store
                    .create_function_url(&account, function, qualifier, &new(&"c".repeat(32)))
                    .await
                    .unwrap_err();
                assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
            }
            assert!(store
                .list_function_urls(&account, "f", None, 50)
                .await
                .unwrap()
                .is_empty());
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn urls_are_listed_in_order_and_go_with_their_alias_and_function() {
            let (_dir, store, account) = store_with_function().await;
            alias(&store, &account, "live").await;
            alias(&store, &account, "beta").await;
            for (q, id) in [(None, "1"), (Some("live"), "2"), (Some("beta"), "3")] {
                store
                    .create_function_url(&account, "f", q, &new(&id.repeat(32)))
                    .await
                    .unwrap();
            }
            let page = store
                .list_function_urls(&account, "f", None, 2)
                .await
                .unwrap();
            let qualifiers: Vec<_> = page.iter().map(|u| u.qualifier.as_deref()).collect();
            assert_eq!(qualifiers, [None, Some("beta")]);
            let rest = store
                .list_function_urls(&account, "f", Some("beta"), 2)
                .await
                .unwrap();
            assert_eq!(rest.len(), 1);
            assert_eq!(rest[0].qualifier.as_deref(), Some("live"));

            store.delete_alias(&account, "f", "live").await.unwrap();
            assert!(store
                .function_url_by_id(&"2".repeat(32))
                .await
                .unwrap()
                .is_none());
            // An alias made again under the name starts without a URL.
            alias(&store, &account, "live").await;
            assert!(store
                .function_url(&account, "f", Some("live"))
                .await
                .unwrap()
                .is_none());

            store.delete_function(&account, "f").await.unwrap();
            let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM function_urls")
                .fetch_one(&store.pool)
                .await
                .unwrap();
            assert_eq!(left, 0, "a deleted function's URLs stayed");
        }
    }
}
