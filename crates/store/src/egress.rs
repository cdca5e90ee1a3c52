//! A function's own egress setting (`/ember/v1/functions/{name}/network`): whether its execution
//! environments may open connections beyond their VM, over the server's `--egress` default. One
//! value for the function and all its versions, kept in the function's row (migration 0014).

use crate::{InvalidateOnDrop, Result, Store, StoreError};

/// A function's own egress; a function without one follows the server's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FunctionEgress {
    /// Outbound connections follow the server's egress policy.
    Allow,
    /// Only Ember's API and DNS on the VM's gateway are reachable.
    Deny,
}

impl FunctionEgress {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }

    /// The stored spelling read back.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "allow" => Some(Self::Allow),
            "deny" => Some(Self::Deny),
            _ => None,
        }
    }
}

impl Store {
    /// Sets a function's own egress, or clears it (`None`: the server's default), for the
    /// function and all its versions. It does not change the revision (it is Ember's setting,
    /// not Lambda's configuration). Fails with [`StoreError::NotFound`] for an unknown function.
    pub async fn set_function_egress(
        &self,
        account_id: &str,
        name: &str,
        egress: Option<FunctionEgress>,
    ) -> Result<()> {
        self.cache.invalidate_function(account_id, name);
        let _invalidate_after = InvalidateOnDrop(&self.cache, account_id, name);
        let done =
            sqlx::query("UPDATE functions SET egress = $3 WHERE account_id = $1 AND name = $2")
                .bind(account_id)
                .bind(name)
                .bind(egress.map(FunctionEgress::as_str))
                .execute(&self.pool)
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("function {name}")));
        }
        self.notify_function(&self.pool, account_id, name).await
    }
}

#[cfg(test)]
mod tests;
