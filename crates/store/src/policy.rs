//! Resource policies of functions: the statements AddPermission adds and RemovePermission
//! removes, one policy per function and qualifier (`migrations/0009_permissions.sql`).
//!
//! The store keeps statements as given (the API validates them) and answers them in the order
//! they were added; what a statement allows is decided above it (`ember-api`'s policy
//! evaluation). A policy's `RevisionId` changes at every add and remove, inside the transaction
//! that checks it. A policy goes with its function (`ON DELETE CASCADE`), and with its last
//! statement.

use sqlx::Row;

use crate::{is_unique_violation, Result, Store, StoreError};

/// One statement of a function's resource policy, as AddPermission gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyStatement {
    /// The `StatementId` (the document's `Sid`), unique within its policy.
    pub statement_id: String,
    /// The action allowed, e.g. `lambda:InvokeFunction` or `lambda:*`.
    pub action: String,
    /// Who is allowed: an account id, `arn:aws:iam::ACCOUNT:root`, `*` or a service principal
    /// (`s3.amazonaws.com`).
    pub principal: String,
    /// `SourceArn`: the condition that the call comes from this resource.
    pub source_arn: Option<String>,
    /// `SourceAccount`: the condition that the call comes from this account.
    pub source_account: Option<String>,
    /// `PrincipalOrgID`: the condition that the caller belongs to this organization.
    pub principal_org_id: Option<String>,
    /// `EventSourceToken`: the token an Alexa caller must present.
    pub event_source_token: Option<String>,
    /// `FunctionUrlAuthType`: `NONE` or `AWS_IAM`, for `lambda:InvokeFunctionUrl`.
    pub function_url_auth_type: Option<String>,
    /// `InvokedViaFunctionUrl`: the condition that the call comes through a function URL.
    pub invoked_via_function_url: Option<bool>,
}

/// A function's resource policy for one qualifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `None` for the unqualified function (which `$LATEST` shares), else a version number or
    /// an alias name.
    pub qualifier: Option<String>,
    /// A fresh UUID at every add and remove: the policy's `RevisionId`.
    pub revision_id: String,
    /// Its statements, in the order they were added; never empty.
    pub statements: Vec<PolicyStatement>,
}

/// The key a qualifier is stored under: `''` for the unqualified function.
fn key(qualifier: Option<&str>) -> &str {
    qualifier.unwrap_or("")
}

impl Store {
    /// The function's policy for `qualifier` (`None`: the unqualified function's), if it has
    /// one. Does not say whether the function exists.
    pub async fn policy(
        &self,
        account_id: &str,
        name: &str,
        qualifier: Option<&str>,
    ) -> Result<Option<Policy>> {
        let mut policies = self
            .read_policies(account_id, name, Some(key(qualifier)))
            .await?;
        Ok(policies.pop())
    }

    /// Every policy of the function, the unqualified one's and each version's and alias's
    /// (ordered by qualifier): what a cross-account call and a function URL request are judged
    /// against. Answered from the store's cache, which every write of the function's policies
    /// (and of the function) invalidates.
    pub async fn policies(&self, account_id: &str, name: &str) -> Result<Vec<Policy>> {
        if let Some(hit) = self.cache.policies(account_id, name) {
            return Ok(hit);
        }
        let generation = self.cache.generation();
        let policies = self.read_policies(account_id, name, None).await?;
        self.cache
            .put_policies(generation, account_id, name, &policies);
        Ok(policies)
    }

    async fn read_policies(
        &self,
        account_id: &str,
        name: &str,
        qualifier: Option<&str>,
    ) -> Result<Vec<Policy>> {
        let rows = sqlx::query(
            "SELECT p.qualifier, p.revision_id, s.statement_id, s.action, s.principal, \
             s.source_arn, s.source_account, s.principal_org_id, s.event_source_token, \
             s.function_url_auth_type, \
             CASE WHEN s.invoked_via_function_url IS NULL THEN NULL WHEN s.invoked_via_function_url THEN 1 ELSE 0 END \
             FROM function_policies p JOIN policy_statements s \
               ON s.account_id = p.account_id AND s.function_name = p.function_name \
              AND s.qualifier = p.qualifier \
             WHERE p.account_id = $1 AND p.function_name = $2 \
               AND ($3 IS NULL OR p.qualifier = $3) \
             ORDER BY p.qualifier, s.seq",
        )
        .bind(account_id)
        .bind(name)
        .bind(qualifier)
        .fetch_all(&self.pool)
        .await?;
        let mut policies: Vec<Policy> = Vec::new();
        for row in &rows {
            let qualifier: String = row.try_get(0)?;
            let qualifier = (!qualifier.is_empty()).then_some(qualifier);
            let statement = PolicyStatement {
                statement_id: row.try_get(2)?,
                action: row.try_get(3)?,
                principal: row.try_get(4)?,
                source_arn: row.try_get(5)?,
                source_account: row.try_get(6)?,
                principal_org_id: row.try_get(7)?,
                event_source_token: row.try_get(8)?,
                function_url_auth_type: row.try_get(9)?,
                invoked_via_function_url: crate::backend::get_opt_bool(row, 10)?,
            };
            match policies.last_mut() {
                Some(last) if last.qualifier == qualifier => last.statements.push(statement),
                _ => policies.push(Policy {
                    qualifier,
                    revision_id: row.try_get(1)?,
                    statements: vec![statement],
                }),
            }
        }
        Ok(policies)
    }

    /// Adds a statement to the function's policy for `qualifier` (creating the policy), in one
    /// transaction, and answers the policy as it now is. Fails with [`StoreError::NotFound`] if
    /// the function does not exist, [`StoreError::Conflict`] if the policy has a statement of
    /// that id, and [`StoreError::RevisionMismatch`] if `expected_revision` is given and is not
    /// the policy's (a function without a policy matches no revision). Whether `qualifier`
    /// names a version or alias that exists is the caller's check.
    pub async fn add_permission(
        &self,
        account_id: &str,
        name: &str,
        qualifier: Option<&str>,
        statement: &PolicyStatement,
        expected_revision: Option<&str>,
    ) -> Result<Policy> {
        let qualifier_key = key(qualifier);
        self.cache.invalidate_function(account_id, name);
        let _invalidate_after = crate::InvalidateOnDrop(&self.cache, account_id, name);
        let mut tx = self.write_transaction().await?;
        let function = sqlx::query("SELECT 1 FROM functions WHERE account_id = $1 AND name = $2")
            .bind(account_id)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if function.is_none() {
            return Err(StoreError::NotFound(format!("function {name}")));
        }
        let current = sqlx::query(
            "SELECT revision_id, next_seq FROM function_policies \
             WHERE account_id = $1 AND function_name = $2 AND qualifier = $3",
        )
        .bind(account_id)
        .bind(name)
        .bind(qualifier_key)
        .fetch_optional(&mut *tx)
        .await?;
        let (current_revision, seq) = match &current {
            Some(row) => (
                Some(row.try_get::<String, _>(0)?),
                row.try_get::<i64, _>(1)?,
            ),
            None => (None, 0),
        };
        check_policy_revision(current_revision.as_deref(), expected_revision)?;
        let revision = uuid::Uuid::new_v4().to_string();
        if current.is_some() {
            sqlx::query(
                "UPDATE function_policies SET revision_id = $4, next_seq = $5 \
                 WHERE account_id = $1 AND function_name = $2 AND qualifier = $3",
            )
        } else {
            sqlx::query(
                "INSERT INTO function_policies \
                 (account_id, function_name, qualifier, revision_id, next_seq) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
        }
        .bind(account_id)
        .bind(name)
        .bind(qualifier_key)
        .bind(&revision)
        .bind(seq + 1)
        .execute(&mut *tx)
        .await?;
        let inserted = sqlx::query(
            "INSERT INTO policy_statements (account_id, function_name, qualifier, statement_id, \
             seq, action, principal, source_arn, source_account, principal_org_id, \
             event_source_token, function_url_auth_type, invoked_via_function_url) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(account_id)
        .bind(name)
        .bind(qualifier_key)
        .bind(&statement.statement_id)
        .bind(seq)
        .bind(&statement.action)
        .bind(&statement.principal)
        .bind(&statement.source_arn)
        .bind(&statement.source_account)
        .bind(&statement.principal_org_id)
        .bind(&statement.event_source_token)
        .bind(&statement.function_url_auth_type)
        .bind(statement.invoked_via_function_url)
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            return Err(if is_unique_violation(&e) {
                StoreError::Conflict(format!("statement {}", statement.statement_id))
            } else {
                e.into()
            });
        }
        let mut statements = read_statements(&mut tx, account_id, name, qualifier_key).await?;
        self.notify_function(&mut *tx, account_id, name).await?;
        tx.commit().await?;
        statements.sort_by_key(|(seq, _)| *seq);
        Ok(Policy {
            qualifier: qualifier.map(str::to_owned),
            revision_id: revision,
            statements: statements.into_iter().map(|(_, s)| s).collect(),
        })
    }

    /// Removes a statement from the function's policy for `qualifier`, in one transaction (the
    /// policy goes with its last statement). Fails with [`StoreError::NotFound`] if the policy
    /// has no statement of that id (or the function no policy, or does not exist), and
    /// [`StoreError::RevisionMismatch`] if `expected_revision` is given and is not the
    /// policy's.
    pub async fn remove_permission(
        &self,
        account_id: &str,
        name: &str,
        qualifier: Option<&str>,
        statement_id: &str,
        expected_revision: Option<&str>,
    ) -> Result<()> {
        let qualifier_key = key(qualifier);
        self.cache.invalidate_function(account_id, name);
        let _invalidate_after = crate::InvalidateOnDrop(&self.cache, account_id, name);
        let mut tx = self.write_transaction().await?;
        let current: Option<String> = sqlx::query(
            "SELECT revision_id FROM function_policies \
             WHERE account_id = $1 AND function_name = $2 AND qualifier = $3",
        )
        .bind(account_id)
        .bind(name)
        .bind(qualifier_key)
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| row.try_get(0))
        .transpose()?;
        check_policy_revision(current.as_deref(), expected_revision)?;
        let removed = sqlx::query(
            "DELETE FROM policy_statements WHERE account_id = $1 AND function_name = $2 \
             AND qualifier = $3 AND statement_id = $4",
        )
        .bind(account_id)
        .bind(name)
        .bind(qualifier_key)
        .bind(statement_id)
        .execute(&mut *tx)
        .await?;
        if removed.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("statement {statement_id}")));
        }
        let left = read_statements(&mut tx, account_id, name, qualifier_key).await?;
        if left.is_empty() {
            delete_policy_in(&mut tx, account_id, name, qualifier_key).await?;
        } else {
            // Exactly the placeholders the statement has: PostgreSQL refuses a prepared
            // statement bound with more values than it was first prepared with.
            sqlx::query(
                "UPDATE function_policies SET revision_id = $4 \
                 WHERE account_id = $1 AND function_name = $2 AND qualifier = $3",
            )
            .bind(account_id)
            .bind(name)
            .bind(qualifier_key)
            .bind(uuid::Uuid::new_v4().to_string())
            .execute(&mut *tx)
            .await?;
        }
        self.notify_function(&mut *tx, account_id, name).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Deletes the policy of one version or alias of a function (`qualifier`), if it has one:
/// what deleting that version or alias does in its own transaction (`conn`), so that one
/// created later under the same name starts without a grant.
pub(crate) async fn delete_policy_in(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    name: &str,
    qualifier: &str,
) -> Result<()> {
    sqlx::query(
        "DELETE FROM function_policies \
         WHERE account_id = $1 AND function_name = $2 AND qualifier = $3",
    )
    .bind(account_id)
    .bind(name)
    .bind(qualifier)
    .execute(conn)
    .await?;
    Ok(())
}

/// The statements of one policy with their order, read inside a transaction.
async fn read_statements(
    tx: &mut sqlx::AnyConnection,
    account_id: &str,
    name: &str,
    qualifier_key: &str,
) -> Result<Vec<(i64, PolicyStatement)>> {
    let rows = sqlx::query(
        "SELECT seq, statement_id, action, principal, source_arn, source_account, \
         principal_org_id, event_source_token, function_url_auth_type, \
         CASE WHEN invoked_via_function_url IS NULL THEN NULL WHEN invoked_via_function_url THEN 1 ELSE 0 END \
         FROM policy_statements WHERE account_id = $1 AND function_name = $2 AND qualifier = $3",
    )
    .bind(account_id)
    .bind(name)
    .bind(qualifier_key)
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get(0)?,
                PolicyStatement {
                    statement_id: row.try_get(1)?,
                    action: row.try_get(2)?,
                    principal: row.try_get(3)?,
                    source_arn: row.try_get(4)?,
                    source_account: row.try_get(5)?,
                    principal_org_id: row.try_get(6)?,
                    event_source_token: row.try_get(7)?,
                    function_url_auth_type: row.try_get(8)?,
                    invoked_via_function_url: crate::backend::get_opt_bool(row, 9)?,
                },
            ))
        })
        .collect()
}

fn check_policy_revision(current: Option<&str>, expected: Option<&str>) -> Result<()> {
    match expected {
        Some(expected) if Some(expected) != current => Err(StoreError::RevisionMismatch {
            expected: expected.to_owned(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{spec, store};

    fn grant(sid: &str, principal: &str) -> PolicyStatement {
        PolicyStatement {
            statement_id: sid.into(),
            action: "lambda:InvokeFunction".into(),
            principal: principal.into(),
            ..Default::default()
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn statements_are_kept_per_qualifier_in_order_with_a_new_revision_each_change() {
            let (_dir, store, alice) = store().await;
            let a = &alice.account_id;
            store
                .create_function(a, "f", &spec(), b"zip")
                .await
                .unwrap();
            assert_eq!(store.policy(a, "f", None).await.unwrap(), None);

            let first = store
                .add_permission(a, "f", None, &grant("b", "111111111111"), None)
                .await
                .unwrap();
            let conditioned = PolicyStatement {
                source_account: Some("222222222222".into()),
                source_arn: Some("arn:aws:s3:::bucket".into()),
                invoked_via_function_url: Some(true),
                ..grant("a", "s3.amazonaws.com")
            };
            let second = store
                .add_permission(a, "f", None, &conditioned, Some(&first.revision_id))
                .await
                .unwrap();
            assert_ne!(first.revision_id, second.revision_id);
            let sids: Vec<_> = second.statements.iter().map(|s| &s.statement_id).collect();
            assert_eq!(sids, ["b", "a"], "in the order added, not by id");
            assert_eq!(second.statements[1], conditioned, "stored as given");
            assert_eq!(
                store.policy(a, "f", None).await.unwrap(),
                Some(second.clone())
            );

            let alias = store
                .add_permission(a, "f", Some("live"), &grant("b", "*"), None)
                .await
                .unwrap();
            assert_eq!(alias.qualifier.as_deref(), Some("live"));
            let all = store.policies(a, "f").await.unwrap();
            assert_eq!(all, vec![second.clone(), alias.clone()]);

            store
                .remove_permission(a, "f", None, "b", Some(&second.revision_id))
                .await
                .unwrap();
            let after = store.policy(a, "f", None).await.unwrap().unwrap();
            assert_ne!(after.revision_id, second.revision_id);
            assert_eq!(after.statements, vec![conditioned]);
            store
                .remove_permission(a, "f", None, "a", None)
                .await
                .unwrap();
            assert_eq!(
                store.policy(a, "f", None).await.unwrap(),
                None,
                "the policy goes with its last statement"
            );
            assert_eq!(store.policies(a, "f").await.unwrap(), vec![alias]);
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn refused_changes_change_nothing() {
            let (_dir, store, alice) = store().await;
            let a = &alice.account_id;
            assert!(matches!(
                store
                    .add_permission(a, "nope", None, &grant("s", "*"), None)
                    .await,
                Err(StoreError::NotFound(_))
            ));
            store
                .create_function(a, "f", &spec(), b"zip")
                .await
                .unwrap();
            assert!(
                matches!(
                    store
                        .add_permission(a, "f", None, &grant("s", "*"), Some("stale"))
                        .await,
                    Err(StoreError::RevisionMismatch { .. })
                ),
                "no policy matches no revision"
            );
            let policy = store
                .add_permission(a, "f", None, &grant("s", "*"), None)
                .await
                .unwrap();
            assert!(matches!(
                store
                    .add_permission(a, "f", None, &grant("s", "111111111111"), None)
                    .await,
                Err(StoreError::Conflict(_))
            ));
            assert!(matches!(
                store
                    .add_permission(a, "f", None, &grant("t", "*"), Some("stale"))
                    .await,
                Err(StoreError::RevisionMismatch { .. })
            ));
            assert!(matches!(
                store
                    .remove_permission(a, "f", None, "s", Some("stale"))
                    .await,
                Err(StoreError::RevisionMismatch { .. })
            ));
            assert!(matches!(
                store.remove_permission(a, "f", None, "other", None).await,
                Err(StoreError::NotFound(_))
            ));
            assert!(matches!(
                store.remove_permission(a, "f", Some("1"), "s", None).await,
                Err(StoreError::NotFound(_))
            ));
            assert_eq!(store.policy(a, "f", None).await.unwrap(), Some(policy));
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn policies_go_with_their_function_version_or_alias() {
            let (_dir, store, alice) = store().await;
            let a = &alice.account_id;
            store
                .create_function(a, "f", &spec(), b"zip")
                .await
                .unwrap();
            let publish = crate::Publish {
                code_sha256: None,
                revision_id: None,
                description: None,
            };
            let v1 = store.publish_version(a, "f", publish).await.unwrap();
            assert_eq!(v1.version, "1");
            let alias = crate::AliasSpec {
                function_version: "1".into(),
                description: String::new(),
                routing: Default::default(),
            };
            store.create_alias(a, "f", "live", &alias).await.unwrap();
            for q in [None, Some("1"), Some("live")] {
                store
                    .add_permission(a, "f", q, &grant("s", "*"), None)
                    .await
                    .unwrap();
            }
            let qualifiers = || async {
                let policies = store.policies(a, "f").await.unwrap();
                policies
                    .into_iter()
                    .map(|p| p.qualifier)
                    .collect::<Vec<_>>()
            };

            store.delete_alias(a, "f", "live").await.unwrap();
            assert_eq!(qualifiers().await, [None, Some("1".to_owned())]);
            store.create_alias(a, "f", "live", &alias).await.unwrap();
            assert_eq!(
                store.policy(a, "f", Some("live")).await.unwrap(),
                None,
                "an alias created again under the name starts without a grant"
            );
            store.delete_alias(a, "f", "live").await.unwrap();
            store.delete_version(a, "f", 1).await.unwrap();
            assert_eq!(qualifiers().await, [None]);

            store.delete_function(a, "f").await.unwrap();
            store
                .create_function(a, "f", &spec(), b"zip")
                .await
                .unwrap();
            assert_eq!(
                store.policies(a, "f").await.unwrap(),
                vec![],
                "a function created again under the name starts without a grant"
            );
        }
    }
}
