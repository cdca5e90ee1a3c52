//! Provisioned concurrency across the servers sharing one store
//! (`migrations/0018_provisioned_hosts.sql`): which servers are alive (`hosts`, each renewing
//! its row), and what each has made of each qualifier's provisioned concurrency
//! (`provisioned_hosts`: its share, how many are ready, its status), so that the API answers
//! the cluster's numbers and each server makes only its share.

use sqlx::Row;

use crate::{Result, Store};

/// What one server has of one qualifier's provisioned concurrency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProvisioned {
    /// The owning account.
    pub account_id: String,
    /// The function's name.
    pub function_name: String,
    /// A version number or an alias name.
    pub qualifier: String,
    /// The environments this server is to keep: its share of the requested number.
    pub share: u32,
    /// Of those, initialized and ready.
    pub ready: u32,
    /// `IN_PROGRESS`, `READY` or `FAILED`, as the API spells them.
    pub status: String,
    /// Why the last attempt failed, when `FAILED`.
    pub reason: Option<String>,
}

impl Store {
    /// This server's id among those sharing the store (its data dir's `host-id`).
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// Whether several servers may share this store (PostgreSQL), rather than one (SQLite).
    pub fn is_shared(&self) -> bool {
        matches!(self.url, crate::StoreUrl::Postgres(_))
    }

    /// Renews this server's membership until `now_ms + ttl_ms`, forgets servers whose
    /// membership ran out (with what they reported), and answers the live servers' ids in
    /// order (this one among them): one write transaction.
    pub async fn live_hosts(&self, now_ms: i64, ttl_ms: i64) -> Result<Vec<String>> {
        let mut tx = self.write_transaction().await?;
        sqlx::query(
            "INSERT INTO hosts (host_id, expires_at) VALUES ($1, $2) \
             ON CONFLICT (host_id) DO UPDATE SET expires_at = excluded.expires_at",
        )
        .bind(&*self.host_id)
        .bind(now_ms.saturating_add(ttl_ms))
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM hosts WHERE expires_at <= $1")
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM provisioned_hosts WHERE expires_at <= $1")
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query("SELECT host_id FROM hosts ORDER BY host_id")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(Into::into))
            .collect()
    }

    /// Replaces what this server reports of provisioned concurrency with `rows`, valid until
    /// `now_ms + ttl_ms` (one transaction).
    pub async fn report_provisioned(
        &self,
        rows: &[HostProvisioned],
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<()> {
        let expires_at = now_ms.saturating_add(ttl_ms);
        let host_id = self.host_id.to_string();
        let mut tx = self.write_transaction().await?;
        sqlx::query("DELETE FROM provisioned_hosts WHERE host_id = $1")
            .bind(&*self.host_id)
            .execute(&mut *tx)
            .await?;
        crate::insert_rows(
            &mut tx,
            "INSERT INTO provisioned_hosts (host_id, account_id, function_name, qualifier, \
             share, ready, status, reason, expires_at) ",
            9,
            rows,
            |query, row| {
                query
                    .bind(host_id.clone())
                    .bind(&row.account_id)
                    .bind(&row.function_name)
                    .bind(&row.qualifier)
                    .bind(i64::from(row.share))
                    .bind(i64::from(row.ready))
                    .bind(&row.status)
                    .bind(&row.reason)
                    .bind(expires_at)
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// What the live servers report of a qualifier's provisioned concurrency (reports older
    /// than their `ttl_ms` count for nothing).
    pub async fn provisioned_on_hosts(
        &self,
        account_id: &str,
        function_name: &str,
        qualifier: &str,
        now_ms: i64,
    ) -> Result<Vec<HostProvisioned>> {
        let rows = sqlx::query(
            "SELECT share, ready, status, reason FROM provisioned_hosts \
             WHERE account_id = $1 AND function_name = $2 AND qualifier = $3 \
             AND expires_at > $4 ORDER BY host_id",
        )
        .bind(account_id)
        .bind(function_name)
        .bind(qualifier)
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let share: i64 = r.try_get(0)?;
                let ready: i64 = r.try_get(1)?;
                Ok(HostProvisioned {
                    account_id: account_id.to_owned(),
                    function_name: function_name.to_owned(),
                    qualifier: qualifier.to_owned(),
                    share: u32::try_from(share).unwrap_or(u32::MAX),
                    ready: u32::try_from(ready).unwrap_or(u32::MAX),
                    status: r.try_get(2)?,
                    reason: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Forgets this server's membership and reports (it stops): the others take its share at
    /// their next renewal rather than after its membership runs out.
    pub async fn leave_hosts(&self) -> Result<()> {
        let mut tx = self.write_transaction().await?;
        for table in ["hosts", "provisioned_hosts"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE host_id = $1"))
                .bind(&*self.host_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::HostProvisioned;
    use crate::Store;

    fn report(qualifier: &str, share: u32, ready: u32, status: &str) -> HostProvisioned {
        HostProvisioned {
            account_id: "a".into(),
            function_name: "f".into(),
            qualifier: qualifier.into(),
            share,
            ready,
            status: status.into(),
            reason: (status == "FAILED").then(|| "no memory".into()),
        }
    }

    crate::test_db::backend_tests! {
        /// Two servers on one store see each other while they renew, report per server, and
        /// a server that stops renewing (or leaves) drops out with its reports.
        #[tokio::test]
        async fn live_hosts_and_their_reports_expire_with_them() {
            let dir_a = tempfile::tempdir().unwrap();
            let a = crate::test_db::open(dir_a.path()).await;
            let dir_b = tempfile::tempdir().unwrap();
            let url = crate::test_db::url(dir_a.path()).await;
            let b = Store::open_at(&url, dir_b.path()).await.unwrap();
            let mut both = vec![a.host_id().to_owned(), b.host_id().to_owned()];
            both.sort();

            assert_eq!(a.live_hosts(1_000, 10_000).await.unwrap(), [a.host_id()]);
            assert_eq!(b.live_hosts(2_000, 10_000).await.unwrap(), both);
            a.report_provisioned(&[report("1", 2, 2, "READY")], 2_000, 10_000)
                .await
                .unwrap();
            b.report_provisioned(&[report("1", 1, 0, "FAILED"), report("live", 3, 1, "IN_PROGRESS")], 2_000, 10_000)
                .await
                .unwrap();
            let on = a.provisioned_on_hosts("a", "f", "1", 3_000).await.unwrap();
            let mut seen: Vec<(u32, u32, &str)> =
                on.iter().map(|r| (r.share, r.ready, r.status.as_str())).collect();
            seen.sort_unstable();
            assert_eq!(seen, [(1, 0, "FAILED"), (2, 2, "READY")]);
            // A new report replaces the server's earlier one whole.
            b.report_provisioned(&[report("1", 1, 1, "READY")], 3_000, 10_000)
                .await
                .unwrap();
            assert!(a.provisioned_on_hosts("a", "f", "live", 3_000).await.unwrap().is_empty());

            // a stops renewing: past its membership, b no longer counts it nor its report.
            assert_eq!(b.live_hosts(11_000, 10_000).await.unwrap(), [b.host_id()]);
            let on = b.provisioned_on_hosts("a", "f", "1", 12_000).await.unwrap();
            assert_eq!(on.len(), 1);
            assert_eq!((on[0].share, on[0].ready), (1, 1));
            // b leaves: nothing is left of it.
            b.leave_hosts().await.unwrap();
            assert!(b.provisioned_on_hosts("a", "f", "1", 12_000).await.unwrap().is_empty());
            assert_eq!(a.live_hosts(12_000, 10_000).await.unwrap(), [a.host_id()]);
            b.close().await;
        }
    }
}
