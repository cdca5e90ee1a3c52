//! Lambda layers: named per account, each with immutable versions numbered from 1, whose zip is a
//! content-addressed blob like a function's code; the statements of a version's policy (which
//! other accounts may use it); and who may use a version.
//!
//! A version's blob lives while the version or a function naming it in its
//! [`FunctionSpec::layers`](crate::FunctionSpec::layers) does: deleting a version a function uses
//! takes it out of listings and out of reach of new functions, but the functions that use it keep
//! its content, as in Lambda. Version numbers are never reused, even after a deletion.

use sqlx::Row;
use time::OffsetDateTime;

use crate::{
    format_time, from_json, is_unique_violation, now, parse_time, to_json, Result, Store,
    StoreError,
};

/// A layer version a function uses, as stored in its settings: enough to run it (its blob) and
/// to answer `Layers` in FunctionConfiguration, even once the version itself is deleted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FunctionLayer {
    /// The layer version's ARN (`arn:aws:lambda:REGION:ACCOUNT:layer:NAME:VERSION`).
    pub arn: String,
    /// Hex sha256 of the layer's zip: the key to [`Store::code`].
    pub sha256: String,
    /// The zip's size, in bytes (`CodeSize`).
    pub code_size: u64,
    /// The sum of its entries' uncompressed sizes, in bytes (counted against the 250 MB limit).
    pub unzipped_size: u64,
}

/// One stored layer version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerVersion {
    /// The owning account.
    pub account_id: String,
    /// The layer's name, unique within the account.
    pub layer_name: String,
    /// Its number, from 1.
    pub version: u64,
    /// Free text, as given.
    pub description: String,
    /// `LicenseInfo`, when given.
    pub license_info: Option<String>,
    /// `CompatibleRuntimes`, as given.
    pub compatible_runtimes: Vec<String>,
    /// `CompatibleArchitectures`, as given.
    pub compatible_architectures: Vec<String>,
    /// Hex sha256 of the zip.
    pub code_sha256: String,
    /// The zip's size, in bytes.
    pub code_size: u64,
    /// The sum of its entries' uncompressed sizes, in bytes.
    pub unzipped_size: u64,
    /// When it was published, UTC, to the millisecond.
    pub created: OffsetDateTime,
    /// Its policy's current `RevisionId`.
    pub policy_revision_id: String,
}

/// What PublishLayerVersion stores; `ember-api` has validated it.
#[derive(Debug, Clone)]
pub struct NewLayerVersion<'a> {
    /// See [`LayerVersion::description`].
    pub description: String,
    /// See [`LayerVersion::license_info`].
    pub license_info: Option<String>,
    /// See [`LayerVersion::compatible_runtimes`].
    pub compatible_runtimes: Vec<String>,
    /// See [`LayerVersion::compatible_architectures`].
    pub compatible_architectures: Vec<String>,
    /// The zip's bytes.
    pub zip: &'a [u8],
    /// The sum of the zip's entries' uncompressed sizes, in bytes.
    pub unzipped_size: u64,
}

/// One statement of a layer version's policy: `principal` (an account id, or `*`) may
/// `action` (`lambda:GetLayerVersion`) the version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerGrant {
    /// The statement's id, unique within the version's policy.
    pub statement_id: String,
    /// `lambda:GetLayerVersion`.
    pub action: String,
    /// A twelve-digit account id, or `*`.
    pub principal: String,
}

/// A layer version's policy: its statements, by statement id, and its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPolicy {
    /// The statements.
    pub grants: Vec<LayerGrant>,
    /// Changes with every added or removed statement.
    pub revision_id: String,
}

const LAYER_COLUMNS: &str = "account_id, layer_name, version, description, license_info, \
     compatible_runtimes, compatible_architectures, code_sha256, code_size, unzipped_size, \
     created_date, policy_revision_id";

impl Store {
    /// Publishes a new version of `layer_name` (creating the layer on its first version): the
    /// number after the last one ever given. The zip's blob is durable before the row commits;
    /// a version that does not commit leaves no blob behind.
    pub async fn publish_layer_version(
        &self,
        account_id: &str,
        layer_name: &str,
        new: &NewLayerVersion<'_>,
    ) -> Result<LayerVersion> {
        let published = self.try_publish_layer(account_id, layer_name, new).await;
        if published.is_err() {
            self.collect_garbage().await?;
        }
        published
    }

    async fn try_publish_layer(
        &self,
        account_id: &str,
        layer_name: &str,
        new: &NewLayerVersion<'_>,
    ) -> Result<LayerVersion> {
        let _writer = self.gc.read().await;
        let sha = self.put_blob(new.zip).await?;
        let mut tx = self.write_transaction().await?;
        sqlx::query(
            "INSERT INTO layers (account_id, layer_name, latest_version) VALUES ($1, $2, 0) \
             ON CONFLICT (account_id, layer_name) DO NOTHING",
        )
        .bind(account_id)
        .bind(layer_name)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE layers SET latest_version = latest_version + 1 \
             WHERE account_id = $1 AND layer_name = $2",
        )
        .bind(account_id)
        .bind(layer_name)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "SELECT latest_version FROM layers WHERE account_id = $1 AND layer_name = $2",
        )
        .bind(account_id)
        .bind(layer_name)
        .fetch_one(&mut *tx)
        .await?;
        let version = unsigned(row.try_get("latest_version")?, "latest_version")?;
        let layer = LayerVersion {
            account_id: account_id.to_owned(),
            layer_name: layer_name.to_owned(),
            version,
            description: new.description.clone(),
            license_info: new.license_info.clone(),
            compatible_runtimes: new.compatible_runtimes.clone(),
            compatible_architectures: new.compatible_architectures.clone(),
            code_sha256: sha,
            code_size: new.zip.len() as u64,
            unzipped_size: new.unzipped_size,
            created: now(),
            policy_revision_id: uuid::Uuid::new_v4().to_string(),
        };
        sqlx::query(&format!(
            "INSERT INTO layer_versions ({LAYER_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(&layer.account_id)
        .bind(&layer.layer_name)
        .bind(layer.version as i64)
        .bind(&layer.description)
        .bind(&layer.license_info)
        .bind(to_json(&layer.compatible_runtimes))
        .bind(to_json(&layer.compatible_architectures))
        .bind(&layer.code_sha256)
        .bind(layer.code_size as i64)
        .bind(layer.unzipped_size as i64)
        .bind(format_time(layer.created))
        .bind(&layer.policy_revision_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(layer)
    }

    /// One version of one of `account_id`'s layers; `None` if it does not exist (or was
    /// deleted).
    pub async fn layer_version(
        &self,
        account_id: &str,
        layer_name: &str,
        version: u64,
    ) -> Result<Option<LayerVersion>> {
        let row = sqlx::query(&format!(
            "SELECT {LAYER_COLUMNS} FROM layer_versions \
             WHERE account_id = $1 AND layer_name = $2 AND version = $3"
        ))
        .bind(account_id)
        .bind(layer_name)
        .bind(version as i64)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(layer_from_row).transpose()
    }

    /// The layer version `owner` published, if `caller` may use it: it is `caller`'s own, or its
    /// policy grants `caller` (or every account, `*`). `None` otherwise, whether it does not
    /// exist or is not shared with `caller`: another account's unshared layer is invisible.
    pub async fn usable_layer_version(
        &self,
        caller: &str,
        owner: &str,
        layer_name: &str,
        version: u64,
    ) -> Result<Option<LayerVersion>> {
        let Some(layer) = self.layer_version(owner, layer_name, version).await? else {
            return Ok(None);
        };
        if caller == owner {
            return Ok(Some(layer));
        }
        let row = sqlx::query(
            "SELECT COUNT(*) FROM layer_version_permissions \
             WHERE account_id = $1 AND layer_name = $2 AND version = $3 \
             AND action = 'lambda:GetLayerVersion' AND (principal = $4 OR principal = '*')",
        )
        .bind(owner)
        .bind(layer_name)
        .bind(version as i64)
        .bind(caller)
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get::<i64, _>(0)? > 0).then_some(layer))
    }

    /// The versions of an account's layer matching the filters (a runtime, an architecture, each
    /// in the version's compatible list), newest first, below version `before` when given, at
    /// most `limit`.
    pub async fn list_layer_versions(
        &self,
        account_id: &str,
        layer_name: &str,
        runtime: Option<&str>,
        architecture: Option<&str>,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<LayerVersion>> {
        let rows = sqlx::query(&format!(
            "SELECT {LAYER_COLUMNS} FROM layer_versions \
             WHERE account_id = $1 AND layer_name = $2 AND version < $3 ORDER BY version DESC"
        ))
        .bind(account_id)
        .bind(layer_name)
        .bind(before.map_or(i64::MAX, |b| b as i64))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for row in &rows {
            let layer = layer_from_row(row)?;
            if matches(&layer, runtime, architecture) {
                out.push(layer);
                if out.len() >= limit as usize {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// An account's layers that have a version matching the filters, in name order after
    /// `after`, at most `limit`: each as its newest matching version.
    pub async fn list_layers(
        &self,
        account_id: &str,
        runtime: Option<&str>,
        architecture: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<LayerVersion>> {
        let rows = sqlx::query(&format!(
            "SELECT {LAYER_COLUMNS} FROM layer_versions WHERE account_id = $1 AND layer_name > $2 \
             ORDER BY layer_name, version DESC"
        ))
        .bind(account_id)
        .bind(after.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<LayerVersion> = Vec::new();
        for row in &rows {
            let layer = layer_from_row(row)?;
            let seen = out.last().is_some_and(|l| l.layer_name == layer.layer_name);
            if !seen && matches(&layer, runtime, architecture) {
                if out.len() >= limit as usize {
                    break;
                }
                out.push(layer);
            }
        }
        Ok(out)
    }

    /// Deletes a layer version and its policy; deleting one that does not exist does nothing, as
    /// in Lambda. Functions that use it keep its content (their settings name its blob); its
    /// number is not given again.
    pub async fn delete_layer_version(
        &self,
        account_id: &str,
        layer_name: &str,
        version: u64,
    ) -> Result<()> {
        let mut tx = self.write_transaction().await?;
        // Its statements go with it (ON DELETE CASCADE).
        sqlx::query(
            "DELETE FROM layer_versions WHERE account_id = $1 AND layer_name = $2 AND version = $3",
        )
        .bind(account_id)
        .bind(layer_name)
        .bind(version as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.collect_garbage().await
    }

    /// Adds a statement to a layer version's policy, if its revision is still
    /// `expected_revision` (when given); returns the policy's new revision. Fails with
    /// [`StoreError::NotFound`] for an unknown version, [`StoreError::Conflict`] for a statement
    /// id already in the policy, [`StoreError::RevisionMismatch`] if the revision moved.
    pub async fn add_layer_permission(
        &self,
        account_id: &str,
        layer_name: &str,
        version: u64,
        grant: &LayerGrant,
        expected_revision: Option<&str>,
    ) -> Result<String> {
        let mut tx = self.write_transaction().await?;
        let revision = self
            .next_policy_revision(&mut tx, account_id, layer_name, version, expected_revision)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO layer_version_permissions \
             (account_id, layer_name, version, statement_id, action, principal) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(account_id)
        .bind(layer_name)
        .bind(version as i64)
        .bind(&grant.statement_id)
        .bind(&grant.action)
        .bind(&grant.principal)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "statement {}",
                    grant.statement_id
                )))
            }
            other => other?,
        };
        tx.commit().await?;
        Ok(revision)
    }

    /// Removes a statement from a layer version's policy, if its revision is still
    /// `expected_revision` (when given). Fails with [`StoreError::NotFound`] for an unknown
    /// version or statement, [`StoreError::RevisionMismatch`] if the revision moved.
    pub async fn remove_layer_permission(
        &self,
        account_id: &str,
        layer_name: &str,
        version: u64,
        statement_id: &str,
        expected_revision: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.write_transaction().await?;
        self.next_policy_revision(&mut tx, account_id, layer_name, version, expected_revision)
            .await?;
        let done = sqlx::query(
            "DELETE FROM layer_version_permissions \
             WHERE account_id = $1 AND layer_name = $2 AND version = $3 AND statement_id = $4",
        )
        .bind(account_id)
        .bind(layer_name)
        .bind(version as i64)
        .bind(statement_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("statement {statement_id}")));
        }
        tx.commit().await?;
        Ok(())
    }

    /// A layer version's policy; `None` if the version does not exist.
    pub async fn layer_policy(
        &self,
        account_id: &str,
        layer_name: &str,
        version: u64,
    ) -> Result<Option<LayerPolicy>> {
        let Some(layer) = self.layer_version(account_id, layer_name, version).await? else {
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT statement_id, action, principal FROM layer_version_permissions \
             WHERE account_id = $1 AND layer_name = $2 AND version = $3 ORDER BY statement_id",
        )
        .bind(account_id)
        .bind(layer_name)
        .bind(version as i64)
        .fetch_all(&self.pool)
        .await?;
        let grants = rows
            .iter()
            .map(|r| {
                Ok(LayerGrant {
                    statement_id: r.try_get(0)?,
                    action: r.try_get(1)?,
                    principal: r.try_get(2)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Some(LayerPolicy {
            grants,
            revision_id: layer.policy_revision_id,
        }))
    }

    /// Checks a version's policy revision and gives it a new one, in `tx`.
    async fn next_policy_revision(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        account_id: &str,
        layer_name: &str,
        version: u64,
        expected_revision: Option<&str>,
    ) -> Result<String> {
        let row = sqlx::query(
            "SELECT policy_revision_id FROM layer_versions \
             WHERE account_id = $1 AND layer_name = $2 AND version = $3",
        )
        .bind(account_id)
        .bind(layer_name)
        .bind(version as i64)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("layer version {layer_name}:{version}")))?;
        let current: String = row.try_get(0)?;
        if let Some(expected) = expected_revision.filter(|e| *e != current) {
            return Err(StoreError::RevisionMismatch {
                expected: expected.to_owned(),
            });
        }
        let revision = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "UPDATE layer_versions SET policy_revision_id = $4 \
             WHERE account_id = $1 AND layer_name = $2 AND version = $3",
        )
        .bind(account_id)
        .bind(layer_name)
        .bind(version as i64)
        .bind(&revision)
        .execute(&mut **tx)
        .await?;
        Ok(revision)
    }
}

/// The blobs a function's (or a published version's) stored list of layers names.
pub(crate) fn blobs_of(layers_json: &str) -> Result<Vec<String>> {
    let layers: Vec<FunctionLayer> = from_json(layers_json)?;
    Ok(layers.into_iter().map(|l| l.sha256).collect())
}

/// Whether a version is compatible with the filters that are given.
fn matches(layer: &LayerVersion, runtime: Option<&str>, architecture: Option<&str>) -> bool {
    runtime.is_none_or(|r| layer.compatible_runtimes.iter().any(|c| c == r))
        && architecture.is_none_or(|a| layer.compatible_architectures.iter().any(|c| c == a))
}

fn unsigned(v: i64, col: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{col} = {v}")))
}

fn layer_from_row(row: &sqlx::any::AnyRow) -> Result<LayerVersion> {
    let created: String = row.try_get("created_date")?;
    Ok(LayerVersion {
        account_id: row.try_get("account_id")?,
        layer_name: row.try_get("layer_name")?,
        version: unsigned(row.try_get("version")?, "version")?,
        description: row.try_get("description")?,
        license_info: row.try_get("license_info")?,
        compatible_runtimes: from_json(&row.try_get::<String, _>("compatible_runtimes")?)?,
        compatible_architectures: from_json(
            &row.try_get::<String, _>("compatible_architectures")?,
        )?,
        code_sha256: row.try_get("code_sha256")?,
        code_size: unsigned(row.try_get("code_size")?, "code_size")?,
        unzipped_size: unsigned(row.try_get("unzipped_size")?, "unzipped_size")?,
        created: parse_time(&created)?,
        policy_revision_id: row.try_get("policy_revision_id")?,
    })
}

#[cfg(test)]
mod tests;
