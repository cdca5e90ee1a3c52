//! Concurrency limits counted across the servers sharing one store (issue 20 part 2): each
//! server holds blocks of concurrency slots as lease rows (`concurrency_leases`, migration
//! 0016), one per scope it runs executions of (a function's reserved concurrency, or an
//! account's unreserved pool), renewed while the server lives and worthless once expired.
//!
//! A take reads every unexpired row of the scope and adds slots only while the sum stays within
//! the limit, all under the store's write lock (`BEGIN IMMEDIATE`, or the advisory write lock on
//! PostgreSQL): two servers taking at once are serialised, so the slots held across all servers
//! never exceed the limit. Returns and renewals only shrink or extend this server's own rows.
//! The executor decides when to take and return (`ember-executor`'s `hostconc`); the store only
//! keeps the arithmetic honest.

use sqlx::Row;

use crate::{Result, Store};

/// What a block of slots counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseScope {
    /// The account whose executions the slots are for.
    pub account_id: String,
    /// `Some(name)`: that function's reserved concurrency. `None`: the account's pool, which the
    /// executions of functions without reserved concurrency share; its limit counts every
    /// slot of the account, reserved ones included.
    pub function_name: Option<String>,
}

impl LeaseScope {
    /// The `function_name` column of the scope's rows ('' for the account's pool).
    fn column(&self) -> &str {
        self.function_name.as_deref().unwrap_or("")
    }
}

impl Store {
    /// Takes up to `want` slots of `scope` for this server, as many as keep every server's
    /// unexpired slots of the scope within `limit`, and answers how many it took (0: the limit
    /// is reached). The scope's row of this server lasts until `now_ms + ttl_ms` unless
    /// renewed ([`Store::renew_concurrency_leases`]). Rows of every server that expired by
    /// `now_ms` are deleted first: their servers died or lost the store, and their slots are
    /// free. One write transaction.
    pub async fn take_concurrency(
        &self,
        scope: &LeaseScope,
        want: u32,
        limit: u32,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<u32> {
        let mut tx = self.write_transaction().await?;
        sqlx::query("DELETE FROM concurrency_leases WHERE expires_at <= $1")
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        let in_use = match &scope.function_name {
            Some(name) => sqlx::query(
                "SELECT CAST(COALESCE(SUM(slots), 0) AS BIGINT) AS n FROM concurrency_leases \
                 WHERE account_id = $1 AND function_name = $2",
            )
            .bind(&scope.account_id)
            .bind(name)
            .fetch_one(&mut *tx)
            .await?
            .try_get::<i64, _>("n")?,
            None => sqlx::query(
                "SELECT CAST(COALESCE(SUM(slots), 0) AS BIGINT) AS n FROM concurrency_leases \
                 WHERE account_id = $1",
            )
            .bind(&scope.account_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get::<i64, _>("n")?,
        };
        let free = (i64::from(limit) - in_use).max(0);
        let granted = free.min(i64::from(want));
        if granted > 0 {
            sqlx::query(
                "INSERT INTO concurrency_leases \
                 (host_id, account_id, function_name, slots, expires_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (host_id, account_id, function_name) DO UPDATE SET \
                 slots = concurrency_leases.slots + excluded.slots, \
                 expires_at = excluded.expires_at",
            )
            .bind(&*self.host_id)
            .bind(&scope.account_id)
            .bind(scope.column())
            .bind(granted)
            .bind(now_ms.saturating_add(ttl_ms))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        // `granted` is within 0..=want, a u32.
        Ok(u32::try_from(granted).unwrap_or(0))
    }

    /// Gives back `slots` of this server's slots of `scope` (its row goes when none is left).
    /// One write transaction; returning more than the row holds empties it.
    pub async fn return_concurrency(&self, scope: &LeaseScope, slots: u32) -> Result<()> {
        let mut tx = self.write_transaction().await?;
        sqlx::query(
            "UPDATE concurrency_leases SET slots = slots - $4 \
             WHERE host_id = $1 AND account_id = $2 AND function_name = $3",
        )
        .bind(&*self.host_id)
        .bind(&scope.account_id)
        .bind(scope.column())
        .bind(i64::from(slots))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM concurrency_leases \
             WHERE host_id = $1 AND account_id = $2 AND function_name = $3 AND slots <= 0",
        )
        .bind(&*self.host_id)
        .bind(&scope.account_id)
        .bind(scope.column())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Extends every row of this server to `now_ms + ttl_ms`, answering how many there are.
    /// One statement. A row that expired before the renewal (the server could not reach the
    /// store for longer than the lease) may already be gone, its slots taken by others.
    pub async fn renew_concurrency_leases(&self, now_ms: i64, ttl_ms: i64) -> Result<u64> {
        let done = sqlx::query("UPDATE concurrency_leases SET expires_at = $2 WHERE host_id = $1")
            .bind(&*self.host_id)
            .bind(now_ms.saturating_add(ttl_ms))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Deletes every row of this server, answering how many there were: at start (what a
    /// previous run of this data dir held is not running) and at shutdown. Other servers' rows
    /// stay.
    pub async fn release_concurrency_leases(&self) -> Result<u64> {
        let done = sqlx::query("DELETE FROM concurrency_leases WHERE host_id = $1")
            .bind(&*self.host_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// The slots of `scope` held at `now_ms` by every server, unexpired rows only (for the
    /// account's pool: every slot of the account).
    pub async fn concurrency_leased(&self, scope: &LeaseScope, now_ms: i64) -> Result<u32> {
        let row =
            match &scope.function_name {
                Some(name) => sqlx::query(
                    "SELECT CAST(COALESCE(SUM(slots), 0) AS BIGINT) AS n FROM concurrency_leases \
                     WHERE account_id = $1 AND function_name = $2 AND expires_at > $3",
                )
                .bind(&scope.account_id)
                .bind(name)
                .bind(now_ms)
                .fetch_one(&self.pool)
                .await?,
                None => sqlx::query(
                    "SELECT CAST(COALESCE(SUM(slots), 0) AS BIGINT) AS n FROM concurrency_leases \
                     WHERE account_id = $1 AND expires_at > $2",
                )
                .bind(&scope.account_id)
                .bind(now_ms)
                .fetch_one(&self.pool)
                .await?,
            };
        let n: i64 = row.try_get("n")?;
        Ok(u32::try_from(n.max(0)).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::LeaseScope;
    use crate::Store;

    fn reserved(function: &str) -> LeaseScope {
        LeaseScope {
            account_id: "acct".into(),
            function_name: Some(function.into()),
        }
    }

    fn pool() -> LeaseScope {
        LeaseScope {
            account_id: "acct".into(),
            function_name: None,
        }
    }

    /// Two servers (data dirs with their own host ids) on the running backend's one database.
    async fn two_hosts() -> (tempfile::TempDir, Store, tempfile::TempDir, Store) {
        let a_dir = tempfile::tempdir().unwrap();
        let a = crate::test_db::open(a_dir.path()).await;
        let b_dir = tempfile::tempdir().unwrap();
        let url = crate::test_db::url(a_dir.path()).await;
        // One database (on SQLite: a's file) opened from a second data dir, a second host id.
        let b = Store::open_at(&url, b_dir.path()).await.unwrap();
        (a_dir, a, b_dir, b)
    }

    const TTL: i64 = 15_000;

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn takes_stay_within_the_limit_across_two_hosts() {
            let (_a_dir, a, _b_dir, b) = two_hosts().await;
            let f = reserved("f");
            assert_eq!(a.take_concurrency(&f, 1, 1, 1000, TTL).await.unwrap(), 1);
            assert_eq!(b.take_concurrency(&f, 1, 1, 1000, TTL).await.unwrap(), 0);
            // A block is cut to what is free.
            assert_eq!(b.take_concurrency(&f, 4, 3, 1000, TTL).await.unwrap(), 2);
            assert_eq!(a.concurrency_leased(&f, 1000).await.unwrap(), 3);
            // Another function's reservation is its own.
            assert_eq!(b.take_concurrency(&reserved("g"), 1, 1, 1000, TTL).await.unwrap(), 1);
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn a_returned_slot_is_free_for_the_other_host() {
            let (_a_dir, a, _b_dir, b) = two_hosts().await;
            let f = reserved("f");
            assert_eq!(a.take_concurrency(&f, 2, 2, 1000, TTL).await.unwrap(), 2);
            assert_eq!(b.take_concurrency(&f, 1, 2, 1000, TTL).await.unwrap(), 0);
            a.return_concurrency(&f, 1).await.unwrap();
            assert_eq!(b.take_concurrency(&f, 1, 2, 1000, TTL).await.unwrap(), 1);
            a.return_concurrency(&f, 1).await.unwrap();
            assert_eq!(a.concurrency_leased(&f, 1000).await.unwrap(), 1);
            // Returning more than is held empties the row; it never goes negative.
            b.return_concurrency(&f, 5).await.unwrap();
            assert_eq!(a.concurrency_leased(&f, 1000).await.unwrap(), 0);
            assert_eq!(a.take_concurrency(&f, 2, 2, 1000, TTL).await.unwrap(), 2);
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn a_dead_hosts_slots_expire_and_renewed_ones_do_not() {
            let (_a_dir, a, _b_dir, b) = two_hosts().await;
            let f = reserved("f");
            assert_eq!(a.take_concurrency(&f, 1, 1, 1000, TTL).await.unwrap(), 1);
            // Renewed at 10 s: held until 25 s.
            assert_eq!(a.renew_concurrency_leases(10_000, TTL).await.unwrap(), 1);
            assert_eq!(b.take_concurrency(&f, 1, 1, 20_000, TTL).await.unwrap(), 0);
            assert_eq!(a.concurrency_leased(&f, 20_000).await.unwrap(), 1);
            // Host a dies (renews no more): past 25 s its slot counts for nothing.
            assert_eq!(a.concurrency_leased(&f, 25_000).await.unwrap(), 0);
            assert_eq!(b.take_concurrency(&f, 1, 1, 25_000, TTL).await.unwrap(), 1);
            // The expired row was deleted by the take: a's renewal finds none of its own.
            assert_eq!(a.renew_concurrency_leases(26_000, TTL).await.unwrap(), 0);
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn a_restarted_host_releases_only_its_own_slots() {
            let (a_dir, a, _b_dir, b) = two_hosts().await;
            let f = reserved("f");
            assert_eq!(a.take_concurrency(&f, 1, 3, 1000, TTL).await.unwrap(), 1);
            assert_eq!(b.take_concurrency(&f, 1, 3, 1000, TTL).await.unwrap(), 1);
            // The same data dir opened again is the same host.
            let url = crate::test_db::url(a_dir.path()).await;
            let a_again = Store::open_at(&url, a_dir.path()).await.unwrap();
            assert_eq!(a_again.release_concurrency_leases().await.unwrap(), 1);
            assert_eq!(b.concurrency_leased(&f, 1000).await.unwrap(), 1);
            drop(a);
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn the_account_pool_counts_reserved_slots_too() {
            let (_a_dir, a, _b_dir, b) = two_hosts().await;
            assert_eq!(a.take_concurrency(&reserved("f"), 2, 2, 1000, TTL).await.unwrap(), 2);
            assert_eq!(b.take_concurrency(&pool(), 8, 5, 1000, TTL).await.unwrap(), 3);
            assert_eq!(a.take_concurrency(&pool(), 1, 5, 1000, TTL).await.unwrap(), 0);
            assert_eq!(a.concurrency_leased(&pool(), 1000).await.unwrap(), 5);
            // Another account's pool is untouched.
            let other = LeaseScope { account_id: "other".into(), function_name: None };
            assert_eq!(a.take_concurrency(&other, 5, 5, 1000, TTL).await.unwrap(), 5);
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn simultaneous_takes_from_two_hosts_never_exceed_the_limit() {
            let (_a_dir, a, _b_dir, b) = two_hosts().await;
            let f = reserved("f");
            let mut takes = tokio::task::JoinSet::new();
            for i in 0..16 {
                let store = if i % 2 == 0 { a.clone() } else { b.clone() };
                let f = f.clone();
                takes.spawn(async move { store.take_concurrency(&f, 1, 5, 1000, TTL).await });
            }
            let mut granted = 0;
            while let Some(taken) = takes.join_next().await {
                granted += taken.unwrap().unwrap();
            }
            assert_eq!(granted, 5);
            assert_eq!(a.concurrency_leased(&f, 1000).await.unwrap(), 5);
        }
    }
}
