//! Function aliases: a name per function that points at one of its versions (`$LATEST` or a
//! published one), optionally sending a share of invocations to a second, published version.
//!
//! The store checks what needs its transaction: that every version an alias names exists when
//! the alias is written (and [`Store::delete_version`] refuses a version an alias names). The
//! API's rules on weights and names are checked before the store is called.

use std::collections::BTreeMap;

use sqlx::Row;

use crate::versions::{version_number, LATEST};
use crate::{
    fetch_function, from_json, is_unique_violation, to_json, InvalidateOnDrop, Result, Store,
    StoreError,
};

/// A stored alias.
#[derive(Debug, Clone, PartialEq)]
pub struct Alias {
    /// The owning account.
    pub account_id: String,
    /// The function the alias belongs to.
    pub function_name: String,
    /// Unique among the function's aliases.
    pub name: String,
    /// The version invocations of the alias run: [`LATEST`] or a published version's number.
    pub function_version: String,
    /// Free text, answered back as given.
    pub description: String,
    /// Another published version's number -> the share of invocations (0.0 to 1.0) it runs
    /// instead of [`Alias::function_version`]. Lambda allows at most one entry.
    pub routing: BTreeMap<String, f64>,
    /// A fresh UUID at every create and update: the `RevisionId` a conditional update names.
    pub revision_id: String,
}

/// A new alias's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AliasSpec {
    /// See [`Alias::function_version`].
    pub function_version: String,
    /// See [`Alias::description`].
    pub description: String,
    /// See [`Alias::routing`].
    pub routing: BTreeMap<String, f64>,
}

/// A partial update of an alias: `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AliasPatch {
    /// Replaces [`Alias::function_version`].
    pub function_version: Option<String>,
    /// Replaces [`Alias::description`].
    pub description: Option<String>,
    /// Replaces the whole [`Alias::routing`] (an empty map removes the routing).
    pub routing: Option<BTreeMap<String, f64>>,
}

const ALIAS_COLUMNS: &str =
    "account_id, function_name, name, function_version, description, routing, revision_id";

impl Store {
    /// Creates an alias of a function. Fails with [`StoreError::NotFound`] for an unknown
    /// function or a version it names that does not exist (the text names it, `function
    /// NAME:VERSION`), and with [`StoreError::Conflict`] if the function has an alias of that
    /// name.
    pub async fn create_alias(
        &self,
        account_id: &str,
        function_name: &str,
        name: &str,
        spec: &AliasSpec,
    ) -> Result<Alias> {
        self.cache.invalidate_function(account_id, function_name);
        let _invalidate_after = InvalidateOnDrop(&self.cache, account_id, function_name);
        let mut tx = self.write_transaction().await?;
        check_versions(
            &mut tx,
            account_id,
            function_name,
            &spec.function_version,
            &spec.routing,
        )
        .await?;
        let alias = Alias {
            account_id: account_id.to_owned(),
            function_name: function_name.to_owned(),
            name: name.to_owned(),
            function_version: spec.function_version.clone(),
            description: spec.description.clone(),
            routing: spec.routing.clone(),
            revision_id: uuid::Uuid::new_v4().to_string(),
        };
        let inserted = sqlx::query(&format!(
            "INSERT INTO function_aliases ({ALIAS_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(account_id)
        .bind(function_name)
        .bind(name)
        .bind(&alias.function_version)
        .bind(&alias.description)
        .bind(to_json(&alias.routing))
        .bind(&alias.revision_id)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "alias {function_name}:{name}"
                )))
            }
            Err(e) => return Err(e.into()),
        }
        self.notify_function(&mut *tx, account_id, function_name)
            .await?;
        tx.commit().await?;
        Ok(alias)
    }

    /// Reads one alias of a function; `None` if the function or the alias does not exist.
    pub async fn alias(
        &self,
        account_id: &str,
        function_name: &str,
        name: &str,
    ) -> Result<Option<Alias>> {
        let row = sqlx::query(&format!(
            "SELECT {ALIAS_COLUMNS} FROM function_aliases \
             WHERE account_id = $1 AND function_name = $2 AND name = $3"
        ))
        .bind(account_id)
        .bind(function_name)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(alias_from_row).transpose()
    }

    /// Applies `patch` to an alias if its revision is still `expected_revision` (when given),
    /// giving it a new revision id. Fails with [`StoreError::NotFound`] for an unknown function,
    /// alias (`alias FUNCTION:NAME`) or version the patched alias would name, and with
    /// [`StoreError::RevisionMismatch`] if the revision moved; the checks and the write are one
    /// transaction.
    pub async fn update_alias(
        &self,
        account_id: &str,
        function_name: &str,
        name: &str,
        expected_revision: Option<&str>,
        patch: AliasPatch,
    ) -> Result<Alias> {
        self.cache.invalidate_function(account_id, function_name);
        let _invalidate_after = InvalidateOnDrop(&self.cache, account_id, function_name);
        let mut tx = self.write_transaction().await?;
        if fetch_function(&mut *tx, account_id, function_name)
            .await?
            .is_none()
        {
            return Err(StoreError::NotFound(format!("function {function_name}")));
        }
        let row = sqlx::query(&format!(
            "SELECT {ALIAS_COLUMNS} FROM function_aliases \
             WHERE account_id = $1 AND function_name = $2 AND name = $3"
        ))
        .bind(account_id)
        .bind(function_name)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(mut alias) = row.as_ref().map(alias_from_row).transpose()? else {
            return Err(StoreError::NotFound(format!(
                "alias {function_name}:{name}"
            )));
        };
        if let Some(expected) = expected_revision {
            if expected != alias.revision_id {
                return Err(StoreError::RevisionMismatch {
                    expected: expected.to_owned(),
                });
            }
        }
        if let Some(v) = patch.function_version {
            alias.function_version = v;
        }
        if let Some(v) = patch.description {
            alias.description = v;
        }
        if let Some(v) = patch.routing {
            alias.routing = v;
        }
        check_versions(
            &mut tx,
            account_id,
            function_name,
            &alias.function_version,
            &alias.routing,
        )
        .await?;
        alias.revision_id = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "UPDATE function_aliases SET function_version = $4, description = $5, \
             routing = $6, revision_id = $7 \
             WHERE account_id = $1 AND function_name = $2 AND name = $3",
        )
        .bind(account_id)
        .bind(function_name)
        .bind(name)
        .bind(&alias.function_version)
        .bind(&alias.description)
        .bind(to_json(&alias.routing))
        .bind(&alias.revision_id)
        .execute(&mut *tx)
        .await?;
        self.notify_function(&mut *tx, account_id, function_name)
            .await?;
        tx.commit().await?;
        Ok(alias)
    }

    /// Deletes an alias. Fails with [`StoreError::NotFound`] for an unknown function or alias.
    pub async fn delete_alias(
        &self,
        account_id: &str,
        function_name: &str,
        name: &str,
    ) -> Result<()> {
        self.cache.invalidate_function(account_id, function_name);
        let _invalidate_after = InvalidateOnDrop(&self.cache, account_id, function_name);
        let mut tx = self.write_transaction().await?;
        if fetch_function(&mut *tx, account_id, function_name)
            .await?
            .is_none()
        {
            return Err(StoreError::NotFound(format!("function {function_name}")));
        }
        let done = sqlx::query(
            "DELETE FROM function_aliases \
             WHERE account_id = $1 AND function_name = $2 AND name = $3",
        )
        .bind(account_id)
        .bind(function_name)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "alias {function_name}:{name}"
            )));
        }
        // Its event invoke config goes with it.
        crate::event_config::delete_qualifier(&mut tx, account_id, function_name, name).await?;
        // An alias created again under this name starts without this one's grants.
        crate::policy::delete_policy_in(&mut tx, account_id, function_name, name).await?;
        // So does its function URL.
        crate::function_urls::delete_qualifier(&mut tx, account_id, function_name, name).await?;
        self.notify_function(&mut *tx, account_id, function_name)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Lists a function's aliases in name order, those after `after` (the last name of the
    /// previous page), at most `limit`; with `function_version`, only the aliases whose
    /// [`Alias::function_version`] it is. Empty for an unknown function.
    pub async fn list_aliases(
        &self,
        account_id: &str,
        function_name: &str,
        function_version: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Alias>> {
        // Two statements rather than `$4 IS NULL OR ...`, whose parameter PostgreSQL cannot type.
        let filter = if function_version.is_some() {
            "AND function_version = $5"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {ALIAS_COLUMNS} FROM function_aliases \
             WHERE account_id = $1 AND function_name = $2 AND name > $3 {filter} \
             ORDER BY name LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(account_id)
            .bind(function_name)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit));
        let rows = match function_version {
            Some(version) => rows.bind(version),
            None => rows,
        }
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(alias_from_row).collect()
    }
}

/// Checks, in the write's transaction, that the function exists, and every version an alias
/// would name: the primary ([`LATEST`] or published) and the routing's (published).
async fn check_versions(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    account_id: &str,
    function_name: &str,
    primary: &str,
    routing: &BTreeMap<String, f64>,
) -> Result<()> {
    if fetch_function(&mut **tx, account_id, function_name)
        .await?
        .is_none()
    {
        return Err(StoreError::NotFound(format!("function {function_name}")));
    }
    for version in std::iter::once(primary).chain(routing.keys().map(String::as_str)) {
        if version == LATEST && version == primary {
            continue;
        }
        let exists = match version_number(version) {
            None => false,
            Some(number) => sqlx::query(
                "SELECT 1 FROM function_versions \
                 WHERE account_id = $1 AND function_name = $2 AND version = $3",
            )
            .bind(account_id)
            .bind(function_name)
            .bind(number)
            .fetch_optional(&mut **tx)
            .await?
            .is_some(),
        };
        if !exists {
            return Err(StoreError::NotFound(format!(
                "function {function_name}:{version}"
            )));
        }
    }
    Ok(())
}

fn alias_from_row(row: &sqlx::any::AnyRow) -> Result<Alias> {
    Ok(Alias {
        account_id: row.try_get("account_id")?,
        function_name: row.try_get("function_name")?,
        name: row.try_get("name")?,
        function_version: row.try_get("function_version")?,
        description: row.try_get("description")?,
        routing: from_json(&row.try_get::<String, _>("routing")?)?,
        revision_id: row.try_get("revision_id")?,
    })
}
