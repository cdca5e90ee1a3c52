//! Published function versions: immutable snapshots of a function's `$LATEST` (settings, code
//! package, a revision of their own), numbered 1, 2, … per function and never renumbered.
//!
//! No statement updates a row of `function_versions`: a version changes only by being deleted.
//! Its code package is kept while the row exists (the collector reads the table), and the
//! executions recorded for its revision are kept while it does (sizing reads them).

use sqlx::Row;

use crate::Function;
use crate::{
    check_revision, fetch_function, format_time, from_json, now, spec_columns, InvalidateOnDrop,
    Result, Store, StoreError,
};

/// The name of a function's unpublished, mutable version.
pub const LATEST: &str = "$LATEST";

/// What [`Store::publish_version`] publishes and on which conditions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Publish<'a> {
    /// Publish only if `$LATEST`'s code package has this hex sha256 (else
    /// [`StoreError::CodeMismatch`]).
    pub code_sha256: Option<&'a str>,
    /// Publish only if `$LATEST` is at this revision (else [`StoreError::RevisionMismatch`]).
    pub revision_id: Option<&'a str>,
    /// The version's description; `None` takes the function's.
    pub description: Option<&'a str>,
}

const VERSION_COLUMNS: &str = "v.account_id, v.function_name, v.version, v.runtime, v.role, \
     v.handler, v.description, v.timeout_s, v.memory_mb, v.ephemeral_mb, v.environment, \
     v.architectures, v.package_type, v.code_sha256, v.code_size, v.revision_id, \
     v.source_revision_id, v.last_modified, f.reserved_concurrency, v.layers, v.snap_start, f.egress";

impl Store {
    /// Publishes `$LATEST` as a new version: a snapshot of its settings and code package under
    /// the function's next version number, with a fresh revision id. If `$LATEST` has not
    /// changed since the newest version was published from it, nothing is published and that
    /// version is answered, as Lambda does (whatever `publish.description` says).
    ///
    /// Fails with [`StoreError::NotFound`] for an unknown function, and, publishing nothing,
    /// with [`StoreError::CodeMismatch`] or [`StoreError::RevisionMismatch`] when a condition
    /// of `publish` does not hold. The checks and the write are one transaction.
    pub async fn publish_version(
        &self,
        account_id: &str,
        name: &str,
        publish: Publish<'_>,
    ) -> Result<Function> {
        self.cache.invalidate_function(account_id, name);
        let _invalidate_after = InvalidateOnDrop(&self.cache, account_id, name);
        let mut tx = self.write_transaction().await?;
        let Some(latest) = fetch_function(&mut *tx, account_id, name).await? else {
            return Err(StoreError::NotFound(format!("function {name}")));
        };
        if let Some(expected) = publish.code_sha256 {
            if expected != latest.code_sha256 {
                return Err(StoreError::CodeMismatch {
                    expected: expected.to_owned(),
                    current: latest.code_sha256,
                });
            }
        }
        check_revision(&latest, publish.revision_id)?;
        let newest = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM function_versions v JOIN functions f \
             ON f.account_id = v.account_id AND f.name = v.function_name \
             WHERE v.account_id = $1 AND v.function_name = $2 ORDER BY v.version DESC LIMIT 1"
        ))
        .bind(account_id)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = &newest {
            let source: String = row.try_get("source_revision_id")?;
            if source == latest.revision_id {
                return version_from_row(row);
            }
        }
        let next: i64 =
            sqlx::query("SELECT next_version FROM functions WHERE account_id = $1 AND name = $2")
                .bind(account_id)
                .bind(name)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
        let mut version = latest.clone();
        version.version = next.to_string();
        version.revision_id = uuid::Uuid::new_v4().to_string();
        version.last_modified = now();
        if let Some(description) = publish.description {
            version.spec.description = description.to_owned();
        }
        let spec = &version.spec;
        let statement = spec_columns::insert_statement(
            "function_versions",
            &["account_id", "function_name", "version"],
            &[
                "code_sha256",
                "code_size",
                "revision_id",
                "source_revision_id",
                "last_modified",
            ],
        );
        let query = sqlx::query(&statement)
            .bind(account_id)
            .bind(name)
            .bind(next);
        spec_columns::bind_spec(query, spec)
            .bind(&version.code_sha256)
            .bind(version.code_size as i64)
            .bind(&version.revision_id)
            .bind(&latest.revision_id)
            .bind(format_time(version.last_modified))
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE functions SET next_version = $3 WHERE account_id = $1 AND name = $2")
            .bind(account_id)
            .bind(name)
            .bind(next + 1)
            .execute(&mut *tx)
            .await?;
        self.notify_function(&mut *tx, account_id, name).await?;
        tx.commit().await?;
        Ok(version)
    }

    /// Reads one version of a function: [`LATEST`] is the function itself (as
    /// [`Store::function`]), a number a published version; `None` when there is no such
    /// function or version, or `version` is neither. On Invoke's path: cached like
    /// [`Store::function`].
    pub async fn function_version(
        &self,
        account_id: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<Function>> {
        if version == LATEST {
            return self.function(account_id, name).await;
        }
        if version_number(version).is_none() {
            return Ok(None);
        }
        self.cached_function(account_id, name, version).await
    }

    /// A published version's record, from the database (not the cache); `None` when there is
    /// no such version, or `version` is not a number.
    pub(crate) async fn fetch_version(
        &self,
        account_id: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<Function>> {
        let Some(number) = version_number(version) else {
            return Ok(None);
        };
        let row = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM function_versions v JOIN functions f \
             ON f.account_id = v.account_id AND f.name = v.function_name \
             WHERE v.account_id = $1 AND v.function_name = $2 AND v.version = $3"
        ))
        .bind(account_id)
        .bind(name)
        .bind(number)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(version_from_row).transpose()
    }

    /// Lists a function's published versions in ascending order, those numbered above `after`
    /// (the last of the previous page), at most `limit`. Empty for an unknown function.
    pub async fn list_versions(
        &self,
        account_id: &str,
        name: &str,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<Function>> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM function_versions v JOIN functions f \
             ON f.account_id = v.account_id AND f.name = v.function_name \
             WHERE v.account_id = $1 AND v.function_name = $2 AND v.version > $3 \
             ORDER BY v.version LIMIT $4"
        ))
        .bind(account_id)
        .bind(name)
        .bind(after.map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX)))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(version_from_row).collect()
    }

    /// Lists an account's functions with all their versions: each function's `$LATEST` and then
    /// its published versions in ascending order, functions in name order. Starts after
    /// `after` (the function name and version of the previous page's last entry), at most
    /// `limit`.
    pub async fn list_function_versions(
        &self,
        account_id: &str,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<Function>> {
        let room = |out: &Vec<Function>| (limit as usize).saturating_sub(out.len());
        let mut out = Vec::new();
        let mut after_name = None;
        if let Some((name, version)) = after {
            // The rest of the function the previous page ended in.
            let from = if version == LATEST {
                Some(0)
            } else {
                version_number(version).and_then(|n| u64::try_from(n).ok())
            };
            if let Some(from) = from {
                out = self
                    .list_versions(account_id, name, Some(from), limit)
                    .await?;
            }
            after_name = Some(name.to_owned());
        }
        while room(&out) > 0 {
            let functions = self
                .list_functions(account_id, after_name.as_deref(), limit)
                .await?;
            let Some(last) = functions.last() else { break };
            after_name = Some(last.name.clone());
            for function in functions {
                if room(&out) == 0 {
                    break;
                }
                let name = function.name.clone();
                out.push(function);
                let wanted = room(&out) as u32;
                if wanted > 0 {
                    out.extend(self.list_versions(account_id, &name, None, wanted).await?);
                }
            }
        }
        Ok(out)
    }

    /// Deletes a published version, with the executions recorded for its revision, and collects
    /// its code package if nothing else uses it. Fails with [`StoreError::NotFound`] for an
    /// unknown function or version, and with [`StoreError::InUse`] while an alias routes to the
    /// version (naming the aliases).
    pub async fn delete_version(&self, account_id: &str, name: &str, version: u64) -> Result<()> {
        self.cache.invalidate_function(account_id, name);
        let _invalidate_after = InvalidateOnDrop(&self.cache, account_id, name);
        let number = i64::try_from(version)
            .map_err(|_| StoreError::NotFound(format!("function {name}:{version}")))?;
        let mut tx = self.write_transaction().await?;
        if fetch_function(&mut *tx, account_id, name).await?.is_none() {
            return Err(StoreError::NotFound(format!("function {name}")));
        }
        let aliases = sqlx::query(
            "SELECT name, function_version, routing FROM function_aliases \
             WHERE account_id = $1 AND function_name = $2 ORDER BY name",
        )
        .bind(account_id)
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
        let text = version.to_string();
        let mut users = Vec::new();
        for row in &aliases {
            let primary: String = row.try_get("function_version")?;
            let routing: std::collections::BTreeMap<String, f64> =
                from_json(&row.try_get::<String, _>("routing")?)?;
            if primary == text || routing.contains_key(&text) {
                users.push(row.try_get::<String, _>("name")?);
            }
        }
        if !users.is_empty() {
            return Err(StoreError::InUse(format!(
                "Unable to delete version because the following aliases reference it: [{}]",
                users.join(", ")
            )));
        }
        let revision = sqlx::query(
            "SELECT revision_id FROM function_versions \
             WHERE account_id = $1 AND function_name = $2 AND version = $3",
        )
        .bind(account_id)
        .bind(name)
        .bind(number)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(revision) = revision else {
            return Err(StoreError::NotFound(format!("function {name}:{version}")));
        };
        let revision: String = revision.try_get(0)?;
        sqlx::query(
            "DELETE FROM function_versions \
             WHERE account_id = $1 AND function_name = $2 AND version = $3",
        )
        .bind(account_id)
        .bind(name)
        .bind(number)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM executions \
             WHERE account_id = $1 AND function_name = $2 AND revision_id = $3",
        )
        .bind(account_id)
        .bind(name)
        .bind(&revision)
        .execute(&mut *tx)
        .await?;
        // Its event invoke config goes with it.
        crate::event_config::delete_qualifier(&mut tx, account_id, name, &text).await?;
        // Its resource policy goes with it.
        crate::policy::delete_policy_in(&mut tx, account_id, name, &text).await?;
        self.notify_function(&mut *tx, account_id, name).await?;
        tx.commit().await?;
        self.collect_garbage().await
    }
}

/// A published version's number, if `text` is one: decimal digits without a sign or leading
/// zero, from 1.
pub(crate) fn version_number(text: &str) -> Option<i64> {
    if text.is_empty() || text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn version_from_row(row: &sqlx::any::AnyRow) -> Result<Function> {
    let version: i64 = row.try_get("version")?;
    spec_columns::function_from_row(row, "function_name", version.to_string())
}

#[cfg(test)]
mod tests;
