//! Where the metadata lives: SQLite in a file (the embedded default) or a PostgreSQL database
//! several servers share, chosen by a URL (`sqlite://PATH`, `postgres://USER@HOST/DB`).
//!
//! Both are reached through sqlx's `Any` driver, so every query is written once: the SQL is the
//! subset both dialects agree on (`$N` placeholders, `ON CONFLICT … DO UPDATE`, `TEXT`/`BIGINT`/
//! `BOOLEAN`/`DOUBLE PRECISION` columns), and the few things that differ live here: how a
//! connection is set up, how a write transaction takes the write lock, and how the schema's
//! version is read without changing anything. `Any` reads a SQLite column declared `BOOLEAN` as
//! an error, so booleans are selected through [`bool_sql`] and read as integers.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions as _, Row};

use crate::{Result, StoreError};

/// The embedded database's file name in the data dir.
pub const SQLITE_FILE: &str = "ember.db";

/// The key every write transaction on PostgreSQL locks (`pg_advisory_xact_lock`): Ember's
/// writes are serialised across every server sharing the database, as SQLite's `BEGIN
/// IMMEDIATE` serialises them across the processes sharing a file. ASCII "ember-wr".
const WRITE_LOCK_KEY: i64 = 0x656d_6265_722d_7772;

/// Where a store keeps its metadata, as `ember serve --store` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A SQLite database file (`sqlite://PATH`; a relative PATH is relative to the working
    /// directory). Created with its directory if missing.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?…]`, or
    /// `postgresql://…`), which must exist; its schema is created by the migrations.
    Postgres(String),
}

/// A `--store` URL that names no backend Ember has.
#[derive(Debug, thiserror::Error)]
#[error("unsupported store URL {0:?}: expected sqlite://PATH or postgres://USER@HOST/DB")]
pub struct StoreUrlError(String);

impl FromStr for StoreUrl {
    type Err = StoreUrlError;

    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        if let Some(path) = text.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(StoreUrlError(text.to_owned()));
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        let is_pg = text.starts_with("postgres://") || text.starts_with("postgresql://");
        if is_pg
            && text
                .split_once("://")
                .is_some_and(|(_, rest)| !rest.is_empty())
        {
            return Ok(Self::Postgres(text.to_owned()));
        }
        Err(StoreUrlError(redact(text)))
    }
}

impl std::fmt::Display for StoreUrl {
    /// The URL without its password, fit for logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Self::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

impl StoreUrl {
    /// The embedded default: `ember.db` in the data dir.
    pub fn in_data_dir(data_dir: &Path) -> Self {
        Self::Sqlite(data_dir.join(SQLITE_FILE))
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

/// `url` with the password between `:` and `@` of its authority replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Opens a pool on `url`. On SQLite: the file (and its directory) is created if missing, in
/// WAL mode with `synchronous = FULL`, foreign keys on and a 10 s busy timeout. On PostgreSQL:
/// the connections wait at most 10 s for a lock (`lock_timeout`), as SQLite's busy timeout,
/// and a call at most 5 s for a connection.
pub(crate) async fn connect(url: &StoreUrl) -> Result<AnyPool> {
    sqlx::any::install_default_drivers();
    let options = match url {
        StoreUrl::Sqlite(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            create_sqlite(path).await?;
            let url = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(path)
                .to_url_lossy();
            AnyConnectOptions::from_url(&url)?
        }
        StoreUrl::Postgres(text) => AnyConnectOptions::from_str(text)?,
    };
    let postgres = matches!(url, StoreUrl::Postgres(_));
    // One connection first: a pool that cannot connect retries until its acquire timeout and
    // then reports only that it timed out, not why (refused, unknown database, bad password).
    {
        use sqlx::Connection as _;
        sqlx::AnyConnection::connect_with(&options)
            .await?
            .close()
            .await?;
    }
    let pool = AnyPoolOptions::new()
        .max_connections(8)
        // SQLite: sqlx's default, as before. PostgreSQL: a database that does not answer fails
        // a call within 5 s (and a server's shutdown is not held up for long) rather than
        // leaving requests hanging while a load balancer could send them to another host.
        .acquire_timeout(Duration::from_secs(if postgres { 5 } else { 30 }))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                let setup = if postgres {
                    "SET lock_timeout = '10s'"
                } else {
                    "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
                     PRAGMA busy_timeout = 10000"
                };
                sqlx::Executor::execute(&mut *conn, setup).await?;
                Ok(())
            })
        })
        .after_release(|conn, _| Box::pin(crate::release_if_sound(conn)))
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// Creates the SQLite file if it is missing and turns on WAL mode, which the file keeps.
async fn create_sqlite(path: &Path) -> Result<()> {
    use sqlx::{ConnectOptions as _, Connection as _};
    let conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10))
        .connect()
        .await?;
    conn.close().await?;
    Ok(())
}

/// The data dir's id among the servers sharing a store, made once (a random UUID in the data
/// dir's `host-id`, written whole with a rename) and kept: a restarted server is the same one,
/// and releases its own Event claims.
pub(crate) fn host_id(data_dir: &Path) -> Result<String> {
    let path = data_dir.join("host-id");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let id = uuid::Uuid::new_v4().to_string();
    let mut file = tempfile::NamedTempFile::new_in(data_dir)?;
    std::io::Write::write_all(&mut file, id.as_bytes())?;
    file.as_file().sync_all()?;
    // Another process (`ember accounts`) may have made it meanwhile: the first one stays.
    match file.persist_noclobber(&path) {
        Ok(_) => Ok(id),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(&path)?.trim().to_owned())
        }
        Err(e) => Err(e.error.into()),
    }
}

/// Whether `pool` is on PostgreSQL.
pub(crate) fn is_postgres(pool: &AnyPool) -> bool {
    pool.connect_options()
        .database_url
        .scheme()
        .starts_with("postgres")
}

/// Starts a transaction that writes, holding the store's write lock until it ends: SQLite's
/// `BEGIN IMMEDIATE` (a deferred transaction would start as a reader and fail with "database
/// is locked" if another writer committed before it upgraded), PostgreSQL's transaction-scoped
/// advisory lock on [`WRITE_LOCK_KEY`]. Either way the transaction's reads see every write
/// committed before it got the lock, and no other write transaction runs until it ends, so a
/// read-check-write (a revision precondition, a next number) is never raced, whichever server
/// runs it.
pub(crate) async fn begin_write(pool: &AnyPool) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
    if is_postgres(pool) {
        let mut tx = pool.begin().await?;
        // `pg_advisory_xact_lock` returns `void`, which `Any` cannot read: select a constant.
        sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS locked")
            .bind(WRITE_LOCK_KEY)
            .fetch_one(&mut *tx)
            .await?;
        Ok(tx)
    } else {
        Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// SQL reading boolean `column` as an integer (1, 0, or NULL), which `Any` can read on both
/// backends; read it with [`get_bool`] or [`get_opt_bool`].
pub(crate) fn bool_sql(column: &str) -> String {
    format!("(CASE WHEN {column} IS NULL THEN NULL WHEN {column} THEN 1 ELSE 0 END)")
}

/// Reads a column selected with [`bool_sql`].
pub(crate) fn get_bool<I: sqlx::ColumnIndex<sqlx::any::AnyRow>>(
    row: &sqlx::any::AnyRow,
    index: I,
) -> Result<bool> {
    Ok(row.try_get::<i64, _>(index)? != 0)
}

/// Reads a nullable column selected with [`bool_sql`].
pub(crate) fn get_opt_bool<I: sqlx::ColumnIndex<sqlx::any::AnyRow>>(
    row: &sqlx::any::AnyRow,
    index: I,
) -> Result<Option<bool>> {
    Ok(row.try_get::<Option<i64>, _>(index)?.map(|v| v != 0))
}

/// What [`crate::Store::check`] found: the database answers, and how its schema compares with
/// the migrations this Ember carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// The newest migration applied to the database; `None` for a database never migrated.
    pub applied: Option<i64>,
    /// The newest migration this Ember carries.
    pub latest: i64,
    /// Migrations this Ember carries that the database has not applied yet, in order.
    pub pending: Vec<i64>,
    /// Migrations the database has applied that this Ember does not know: it was migrated by a
    /// newer Ember, which this one must not serve.
    pub unknown: Vec<i64>,
    /// Applied migrations whose text differs from this Ember's (or that failed half-way).
    pub mismatched: Vec<i64>,
}

impl SchemaStatus {
    /// Whether this Ember can serve the database as it is: every migration applied, none
    /// unknown, none changed.
    pub fn is_current(&self) -> bool {
        self.pending.is_empty() && self.unknown.is_empty() && self.mismatched.is_empty()
    }
}

/// The migrations this Ember carries, shared by [`crate::Store`]'s open, migrate and check.
pub(crate) fn migrator() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./migrations")
}

/// Applies every pending migration, each in its own transaction, and answers the schema's
/// status after. Several servers starting at once on one PostgreSQL database are safe: sqlx
/// takes an advisory lock around the run, and a migration applied meanwhile is not applied
/// again.
pub(crate) async fn migrate(pool: &AnyPool) -> Result<()> {
    migrator().run(pool).await?;
    Ok(())
}

/// Reads the schema's status without changing anything (no migrations table is created).
pub(crate) async fn schema_status(pool: &AnyPool) -> Result<SchemaStatus> {
    let postgres = is_postgres(pool);
    let exists_sql = if postgres {
        "SELECT COUNT(*) FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_name = '_sqlx_migrations'"
    } else {
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
    };
    let exists: i64 = sqlx::query(exists_sql).fetch_one(pool).await?.try_get(0)?;
    let mut applied = Vec::new();
    if exists > 0 {
        let rows = sqlx::query(&format!(
            "SELECT version, checksum, {} FROM _sqlx_migrations ORDER BY version",
            bool_sql("success")
        ))
        .fetch_all(pool)
        .await?;
        for row in rows {
            let version: i64 = row.try_get(0)?;
            let checksum: Vec<u8> = row.try_get(1)?;
            applied.push((version, checksum, get_bool(&row, 2)?));
        }
    }
    let migrator = migrator();
    let known: Vec<&sqlx::migrate::Migration> = migrator
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .collect();
    let latest = known.iter().map(|m| m.version).max().unwrap_or(0);
    let pending = known
        .iter()
        .filter(|m| !applied.iter().any(|(v, _, _)| *v == m.version))
        .map(|m| m.version)
        .collect();
    let unknown = applied
        .iter()
        .filter(|(v, _, _)| !known.iter().any(|m| m.version == *v))
        .map(|(v, _, _)| *v)
        .collect();
    let mismatched = applied
        .iter()
        .filter(|(v, checksum, success)| {
            known
                .iter()
                .any(|m| m.version == *v && (!success || *m.checksum != checksum[..]))
        })
        .map(|(v, _, _)| *v)
        .collect();
    Ok(SchemaStatus {
        backend: if postgres { "postgres" } else { "sqlite" },
        applied: applied.iter().map(|(v, _, _)| *v).max(),
        latest,
        pending,
        unknown,
        mismatched,
    })
}

impl From<StoreUrlError> for StoreError {
    fn from(e: StoreUrlError) -> Self {
        Self::Invalid(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_backend_and_hide_passwords() {
        let cases: &[(&str, Option<StoreUrl>)] = &[
            (
                "sqlite:///var/lib/ember/ember.db",
                Some(StoreUrl::Sqlite("/var/lib/ember/ember.db".into())),
            ),
            (
                "sqlite://rel/x.db",
                Some(StoreUrl::Sqlite("rel/x.db".into())),
            ),
            (
                "postgres://ember@db/ember",
                Some(StoreUrl::Postgres("postgres://ember@db/ember".into())),
            ),
            (
                "postgresql://ember:pw@db:5433/ember?sslmode=require",
                Some(StoreUrl::Postgres(
                    "postgresql://ember:pw@db:5433/ember?sslmode=require".into(),
                )),
            ),
            ("sqlite://", None),
            ("postgres://", None),
            ("mysql://root@db/ember", None),
            ("/var/lib/ember/ember.db", None),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<StoreUrl>().ok(), *want, "{text}");
        }
        let url: StoreUrl = "postgres://ember:s3cret@db:5432/ember".parse().unwrap();
        assert_eq!(url.to_string(), "postgres://ember:***@db:5432/ember");
        assert_eq!(url.backend(), "postgres");
        let err = "mysql://root:pw@db/x".parse::<StoreUrl>().unwrap_err();
        assert!(!err.to_string().contains("pw"), "{err}");
    }
}
