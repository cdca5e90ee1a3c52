//! Ember's durable state: accounts and their keys, function metadata (SQLite through sqlx, with a
//! schema kept portable to PostgreSQL) and code packages (a content-addressed blob store).
//!
//! Crash safety rests on one ordering rule: a package's blob is durable *before* the row that
//! references it commits, and a blob is deleted only when no row references it. Collection runs
//! after every write that can orphan a blob, under [`Store`]'s GC lock so that a blob written
//! for a row that has not committed yet is never collected, and in [`Store::recover`], which
//! only the process holding the data dir's lock (the server) may call.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod aliases;
mod backend;
pub mod blob;
mod cache;
mod concurrency_leases;
mod egress;
mod event_config;
mod function_urls;
mod invocations;
mod layers;
mod notify;
mod policy;
mod provisioned;
mod provisioned_hosts;
mod recursion;
mod refresh;
mod session_credentials;
mod sizing;
mod snap_start;
mod spec_columns;
mod tags;
mod usage;
mod versions;
pub use ember_package as package;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::Rng;
use sqlx::{AnyPool, Row};
use time::OffsetDateTime;
use tokio::sync::RwLock;

pub use aliases::{Alias, AliasPatch, AliasSpec};
pub use backend::{SchemaStatus, StoreUrl, StoreUrlError, SQLITE_FILE};
pub use blob::{BlobError, BlobStore, Blobs};
pub use cache::SHARED_MAX_AGE;
pub use concurrency_leases::LeaseScope;
pub use egress::FunctionEgress;
pub use event_config::{EventConfigPatch, EventConfigSettings, EventInvokeConfig};
pub use function_urls::{
    FunctionUrl, FunctionUrlPatch, InvokeMode, NewFunctionUrl, UrlAuthType, UrlCors,
};
pub use invocations::{
    EventRun, EventSettlement, LogRecord, NewEvent, NewLog, QueuedEvent, Settled, LEASE_MARGIN_MS,
    LEASE_RENEW_EVERY_MS,
};
pub use layers::{FunctionLayer, LayerGrant, LayerPolicy, LayerVersion, NewLayerVersion};
pub use notify::{PING_EVERY, PING_TIMEOUT};
pub use policy::{Policy, PolicyStatement};
pub use provisioned::ProvisionedConfig;
pub use provisioned_hosts::HostProvisioned;
pub use recursion::RecursiveLoop;
pub use session_credentials::{
    SessionCredential, SessionEnvironment, SessionKeys, SESSION_LIFETIME, SESSION_RENEW_BEFORE,
};
pub use sizing::{
    ExecutionOutcome, ExecutionRecord, SizingEvent, SizingSettings, SIZING_EVENTS_KEPT,
};
pub use snap_start::SnapStartApplyOn;
pub use tags::Tags;
pub use usage::AccountUsage;
pub use versions::{Publish, LATEST};

/// Errors of the store. Whatever the variant, a write that fails has changed no row (see
/// [`Store`]'s durability promise).
///
/// [`StoreError::Conflict`], [`StoreError::NotFound`] and [`StoreError::RevisionMismatch`] are
/// the caller's mistakes or races and become client errors in the API (`From<StoreError> for
/// ApiError`, in `ember-api`); [`StoreError::StorageFull`] becomes a 503 the client may retry;
/// the rest are failures of the server, answered as a 500 and logged with their chain.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed: an I/O error under it, a constraint the store did not expect, or the
    /// write lock not obtained within the 10 s busy timeout ("database is locked").
    #[error("database error")]
    Db(#[source] sqlx::Error),
    /// [`Store::open`] could not bring the schema up to date: a migration failed (and was rolled
    /// back), or the database was migrated by a newer Ember than this one.
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The blob store failed to read or write a package file; from [`Store::code`], `NotFound`
    /// for a sha256 no package has.
    #[error("blob store I/O failed")]
    Io(#[source] std::io::Error),
    /// The `s3://` blob store failed: unreachable, credentials refused, no such bucket, or a
    /// package that came back corrupt (`blob/`).
    #[error("code package store failed")]
    Blob(#[source] BlobError),
    /// The data dir's file system has no room for a write (`ENOSPC`, `EDQUOT`, `SQLITE_FULL`).
    /// Nothing was changed: a failed write leaves no partial file and no partial transaction,
    /// and the same write succeeds once space returns.
    #[error("no space left for the data dir")]
    StorageFull(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A create found the name taken; the text names what, e.g. `function my-fn`. The API
    /// answers 409 `ResourceConflictException`.
    #[error("{0} already exists")]
    Conflict(String),
    /// The account or function a call names does not exist; the text names it, e.g.
    /// `function my-fn`. The API answers 404 `ResourceNotFoundException`.
    #[error("{0} not found")]
    NotFound(String),
    /// An update conditioned on a revision ([`Store::update_function`]'s
    /// `expected_revision`, the API's `RevisionId`) found another one: someone changed the
    /// function meanwhile. Nothing was written. The API answers 412 `PreconditionFailed`.
    #[error("revision {expected} does not match the current revision")]
    RevisionMismatch {
        /// The revision the caller expected.
        expected: String,
    },
    /// A publish conditioned on a code package ([`Publish::code_sha256`]) found another one in
    /// `$LATEST`. Nothing was published. The API answers 400 `InvalidParameterValueException`.
    #[error("code sha256 {expected} does not match $LATEST's {current}")]
    CodeMismatch {
        /// The hex sha256 the caller expected.
        expected: String,
        /// `$LATEST`'s hex sha256.
        current: String,
    },
    /// A delete refused because something still uses the thing: a version an alias routes to.
    /// The text says what uses it. The API answers 409 `ResourceConflictException`.
    #[error("{0}")]
    InUse(String),
    /// A stored row could not be read back into its type (an integer out of range, JSON or a
    /// timestamp that does not parse): the database was changed behind the store's back, or a
    /// migration is wrong. The text names the column and value.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A value the store refuses to write: an unknown sizing mode, direction or execution
    /// outcome, text that should be JSON and is not, a measurement that is not a finite number.
    /// A bug of the caller, which should have validated it; nothing was written.
    #[error("invalid {0}")]
    Invalid(String),
    /// A write would take a resource past a limit the caller set (a function's tags beyond
    /// the most it may have); the text says which. Nothing was written. The API answers 400
    /// `InvalidParameterValueException`.
    #[error("{0}")]
    LimitExceeded(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let full = match &e {
            // SQLITE_FULL (13), whatever extended code carries it.
            sqlx::Error::Database(db) => db
                .code()
                .and_then(|code| code.parse::<i32>().ok())
                .is_some_and(|code| code & 0xff == 13),
            sqlx::Error::Io(io) => is_full(io),
            _ => false,
        };
        if full {
            Self::StorageFull(Box::new(e))
        } else {
            Self::Db(e)
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        if is_full(&e) {
            Self::StorageFull(Box::new(e))
        } else {
            Self::Io(e)
        }
    }
}

/// Whether an I/O error says the file system is out of space (or of the user's quota).
fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

type Result<T> = std::result::Result<T, StoreError>;

/// A key pair and the account it belongs to, as handed to a user once (`ember accounts create`,
/// the admin's credentials at `ember serve`'s first start). The store keeps the secret: SigV4
/// needs it to check signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountKeys {
    /// Twelve random decimal digits, as an AWS account id; the account's identity in ARNs and
    /// in every table.
    pub account_id: String,
    /// The account's human name, unique among accounts.
    pub name: String,
    /// `AKIA` and 16 random base-32 characters; unique across accounts.
    pub access_key_id: String,
    /// 30 random bytes in base64 (40 characters): the SigV4 signing secret.
    pub secret_access_key: String,
    /// Whether the account may use the admin API (`/ember/v1/...`).
    pub is_admin: bool,
}

/// What the server needs to authenticate a request made with an access key, from
/// [`Store::credential`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The account the key belongs to: the request acts as it.
    pub account_id: String,
    /// The secret the request's SigV4 signature must be made with.
    pub secret_access_key: String,
    /// Whether the account may use the admin API.
    pub is_admin: bool,
}

/// A function's settings, as the Lambda API's FunctionConfiguration carries them. The store
/// keeps what it is given: `ember-api` validates every field (ranges, names, sizes) before it
/// gets here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSpec {
    /// The Lambda runtime identifier, e.g. `python3.12`; `None` for a function without one
    /// (which cannot run).
    pub runtime: Option<String>,
    /// The execution role's ARN: stored and answered back, never assumed.
    pub role: String,
    /// The handler, e.g. `app.handler`; `None` with `runtime`.
    pub handler: Option<String>,
    /// Free text, answered back as given.
    pub description: String,
    /// How long one invocation may run, in seconds.
    pub timeout_s: u32,
    /// The `MemorySize` asked for, in MB: the container's memory unless sizing changes it.
    pub memory_mb: u32,
    /// The size of the container's writable `/tmp`, in MB (`EphemeralStorage`).
    pub ephemeral_mb: u32,
    /// The environment variables the runtime starts with, by name.
    pub environment: BTreeMap<String, String>,
    /// The instruction set architectures, as the API names them (`x86_64`).
    pub architectures: Vec<String>,
    /// `Zip`, the only package type Ember stores.
    pub package_type: String,
    /// The layers extracted under `/opt`, in order (a later one's files over an earlier one's).
    pub layers: Vec<FunctionLayer>,
    /// Which versions start from a snapshot taken after init (`SnapStart.ApplyOn`); see
    /// [`Function::snap_start_applies`].
    pub snap_start: SnapStartApplyOn,
}

/// A partial update of a [`FunctionSpec`]: `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecPatch {
    /// Replaces [`FunctionSpec::runtime`] (a patch cannot clear it).
    pub runtime: Option<String>,
    /// Replaces [`FunctionSpec::role`].
    pub role: Option<String>,
    /// Replaces [`FunctionSpec::handler`] (a patch cannot clear it).
    pub handler: Option<String>,
    /// Replaces [`FunctionSpec::description`].
    pub description: Option<String>,
    /// Replaces [`FunctionSpec::timeout_s`], in seconds.
    pub timeout_s: Option<u32>,
    /// Replaces [`FunctionSpec::memory_mb`], in MB.
    pub memory_mb: Option<u32>,
    /// Replaces [`FunctionSpec::ephemeral_mb`], in MB.
    pub ephemeral_mb: Option<u32>,
    /// Replaces the whole [`FunctionSpec::environment`]; variables are not merged.
    pub environment: Option<BTreeMap<String, String>>,
    /// Replaces the whole [`FunctionSpec::layers`] list.
    pub layers: Option<Vec<FunctionLayer>>,
    /// Replaces [`FunctionSpec::snap_start`].
    pub snap_start: Option<SnapStartApplyOn>,
}

impl SpecPatch {
    /// Applies the patch to `spec`, as [`Store::update_function`] does to the stored one: the
    /// API checks a patched spec's settings together before it writes.
    pub fn apply(self, spec: &mut FunctionSpec) {
        if let Some(v) = self.runtime {
            spec.runtime = Some(v);
        }
        if let Some(v) = self.role {
            spec.role = v;
        }
        if let Some(v) = self.handler {
            spec.handler = Some(v);
        }
        if let Some(v) = self.description {
            spec.description = v;
        }
        if let Some(v) = self.timeout_s {
            spec.timeout_s = v;
        }
        if let Some(v) = self.memory_mb {
            spec.memory_mb = v;
        }
        if let Some(v) = self.ephemeral_mb {
            spec.ephemeral_mb = v;
        }
        if let Some(v) = self.environment {
            spec.environment = v;
        }
        if let Some(v) = self.layers {
            spec.layers = v;
        }
        if let Some(v) = self.snap_start {
            spec.snap_start = v;
        }
    }
}

/// A stored function: its `$LATEST` version, or one of its published versions (an immutable
/// snapshot of `$LATEST` when it was published, see [`Store::publish_version`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// The owning account; functions are named per account.
    pub account_id: String,
    /// Unique within the account.
    pub name: String,
    /// [`LATEST`] (`$LATEST`), or a published version's number (`"1"`, `"2"`, …).
    pub version: String,
    /// Its settings.
    pub spec: FunctionSpec,
    /// Hex sha256 of the code package: the key to [`Store::code`].
    pub code_sha256: String,
    /// The code package's size, in bytes.
    pub code_size: u64,
    /// A fresh UUID at every create and update of code or settings (not of reserved
    /// concurrency): the `RevisionId` a conditional update names, and the version that sizing
    /// measurements belong to. A published version has its own, fixed when it is published.
    pub revision_id: String,
    /// When the code or settings last changed, UTC, to the millisecond (Lambda's
    /// `LastModified` precision).
    pub last_modified: OffsetDateTime,
    /// Concurrent executions reserved for (and capping) the function, all its versions
    /// together; `None` when none is set. See [`Store::set_reserved_concurrency`].
    pub reserved_concurrency: Option<u32>,
    /// The function's own egress, for all its versions; `None`: the server's default. See
    /// [`Store::set_function_egress`].
    pub egress: Option<FunctionEgress>,
}

/// A change to a stored function, applied atomically with its revision check.
#[derive(Debug)]
pub enum FunctionChange<'a> {
    /// A new code package: the zip's bytes, as uploaded. Its blob is durable before the row
    /// that names it commits; the old package is collected once nothing references it.
    Code(&'a [u8]),
    /// New settings: the fields that are `Some` replace the stored ones.
    Spec(SpecPatch),
}

/// Handle to the data dir's metadata database and blob store. Cheap to clone. **API
/// boundary**: everything Ember keeps goes through its methods; no other crate knows SQL or
/// the data dir's layout.
///
/// # Durability
///
/// The database runs in WAL mode with `synchronous = FULL`: a write that has returned `Ok` is
/// on disk and survives a crash or a power loss. Every write is one transaction (or one
/// statement), so one that fails, or whose future is dropped, has changed no row (a code
/// package written for it is collected, at once or by the next collection). Methods that
/// promise more (several tables at once, a code package with its row) say so.
///
/// Reads see every write that returned before they started; the two reads on every Invoke's
/// path ([`Store::credential`], [`Store::function`]) are served from a cache that this
/// process's writes invalidate, which is why only the server may write functions.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    blobs: Blobs,
    /// Writers that add blobs hold it shared; garbage collection holds it exclusively.
    gc: Arc<RwLock<()>>,
    cache: Arc<cache::Cache>,
    /// Execution environments' credentials in force (`session_credentials.rs`).
    sessions: Arc<session_credentials::Sessions>,
    dir: PathBuf,
    url: StoreUrl,
    /// This data dir's id among the servers sharing the store: the owner of its Event claims.
    host_id: Arc<str>,
    /// On PostgreSQL, the task hearing other servers' writes (`notify.rs`), stopped with the
    /// last handle.
    listener: Option<Arc<notify::ListenerGuard>>,
}

impl Store {
    /// Opens the store in `data_dir` (created if missing), its metadata in the embedded SQLite
    /// database there, and applies migrations. Several processes may open one data dir (the
    /// server, and `ember accounts`).
    pub async fn open(data_dir: &Path) -> Result<Self> {
        Self::open_at(&StoreUrl::in_data_dir(data_dir), data_dir).await
    }

    /// Opens the store with its metadata at `url` (SQLite or PostgreSQL) and its code packages
    /// in `data_dir` (created if missing), and applies pending migrations. Several processes,
    /// on several hosts for PostgreSQL, may open one database.
    pub async fn open_at(url: &StoreUrl, data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let pool = backend::connect(url).await?;
        backend::migrate(&pool).await?;
        let blobs = Blobs::file(&data_dir.join("blobs"))?;
        let host_id: Arc<str> = backend::host_id(data_dir)?.into();
        let cache = Arc::new(match url {
            StoreUrl::Sqlite(_) => cache::Cache::default(),
            StoreUrl::Postgres(_) => cache::Cache::expiring(cache::SHARED_MAX_AGE),
        });
        let listener = match url {
            StoreUrl::Sqlite(_) => None,
            StoreUrl::Postgres(text) => Some(Arc::new(notify::spawn_listener(
                text.clone(),
                pool.clone(),
                &cache,
                Arc::clone(&host_id),
            ))),
        };
        let store = Self {
            host_id: Arc::clone(&host_id),
            listener,
            sessions: Arc::new(session_credentials::Sessions::start(
                pool.clone(),
                Arc::clone(&host_id),
            )),
            pool,
            blobs,
            gc: Arc::new(RwLock::new(())),
            cache,
            dir: data_dir.to_path_buf(),
            url: url.clone(),
        };
        Ok(store)
    }

    /// Applies the migrations the database at `url` has not had yet (`ember store migrate`),
    /// and answers the schema's status after. [`Store::open_at`] does the same.
    pub async fn migrate(url: &StoreUrl) -> Result<SchemaStatus> {
        let pool = backend::connect(url).await?;
        let migrated = backend::migrate(&pool).await;
        let status = match migrated {
            Ok(()) => backend::schema_status(&pool).await,
            Err(e) => Err(e),
        };
        pool.close().await;
        status
    }

    /// Connects to the database at `url` and reads its schema's status, changing nothing
    /// (`ember store check`). Fails with [`StoreError::NotFound`] for a SQLite file that does
    /// not exist (rather than creating it).
    pub async fn check(url: &StoreUrl) -> Result<SchemaStatus> {
        if let StoreUrl::Sqlite(path) = url {
            if !path.exists() {
                return Err(StoreError::NotFound(format!("database {}", path.display())));
            }
        }
        let pool = backend::connect(url).await?;
        let status = backend::schema_status(&pool).await;
        pool.close().await;
        status
    }

    /// Whether the database answers now, within `timeout`, and its schema is the one this
    /// Ember carries: the readiness a load balancer asks for (`GET /ember/v1/health`).
    pub async fn health(&self, timeout: std::time::Duration) -> Result<SchemaStatus> {
        match tokio::time::timeout(timeout, backend::schema_status(&self.pool)).await {
            Ok(status) => status,
            Err(_) => Err(StoreError::Db(sqlx::Error::PoolTimedOut)),
        }
    }

    /// Where the metadata lives.
    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    /// Repairs what a crash can leave: temp files of unfinished writes, and blobs whose row
    /// never committed. Only the data dir's single owner (the server, under its lock) may call
    /// it, since another process's write in flight would look abandoned.
    pub async fn recover(&self) -> Result<()> {
        {
            let _exclusive = self.gc.write().await;
            self.blobs.remove_temp_files().await?;
        }
        self.collect_garbage().await
    }

    /// Starts a transaction that writes. SQLite's default (deferred) transaction starts as a
    /// reader and fails at once with "database is locked" if another writer commits before it
    /// upgrades; `BEGIN IMMEDIATE` takes the write lock first, waiting under the busy timeout.
    /// On PostgreSQL, a transaction-scoped advisory lock plays the same part across every server
    /// sharing the database (`backend::begin_write`).
    async fn write_transaction(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        backend::begin_write(&self.pool).await
    }

    /// Tells the other servers sharing the store that a function changed (its row, versions,
    /// aliases, URLs, policies), so they drop what they cache of it: on `conn`, the write's
    /// transaction before it commits (or the pool, right after a single-statement write).
    /// Nothing on SQLite.
    async fn notify_function<'e, E>(&self, conn: E, account_id: &str, name: &str) -> Result<()>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        notify::function_changed(
            conn,
            self.listener.is_some(),
            &self.host_id,
            account_id,
            name,
        )
        .await
    }

    /// The data dir this store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Closes the connection pool and checkpoints the write-ahead log into `ember.db`: once
    /// closed, `ember.db` alone holds every committed write (the log is gone, or empty), even if
    /// other tasks were still using the store (`tests/close.rs`).
    pub async fn close(&self) {
        if let Some(listener) = &self.listener {
            listener.stop();
        }
        // sqlx's `close` can miss a connection handed back to the pool while it runs (it goes
        // to the idle queue after `close` has emptied it for the last time): close again until
        // none is left. No connection opens once the pool is closed, so this ends.
        while {
            self.pool.close().await;
            self.pool.size() > 0
        } {}
        // SQLite checkpoints and removes the log when its last connection closes, but not when
        // another is still closing on its own thread (as one the pool dropped may be), and then
        // the log can stay behind. One more connection checkpoints all of it and truncates it.
        let StoreUrl::Sqlite(path) = &self.url else {
            return;
        };
        use sqlx::{ConnectOptions as _, Connection as _};
        let last = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .connect()
            .await;
        let checkpointed = async {
            let mut conn = last?;
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&mut conn)
                .await?;
            conn.close().await
        };
        if let Err(err) = checkpointed.await {
            tracing::warn!(error = %err, "cannot checkpoint the database's write-ahead log");
        }
    }

    // ---- accounts -------------------------------------------------------------------------

    /// Creates an account with one fresh key pair, account and key in one transaction. Fails
    /// with [`StoreError::Conflict`] if an account of that name exists. Called by `ember
    /// accounts create`, and by `ember serve` for the admin account when there is none.
    pub async fn create_account(&self, name: &str, is_admin: bool) -> Result<AccountKeys> {
        let keys = AccountKeys {
            account_id: random_account_id(),
            name: name.to_owned(),
            access_key_id: random_access_key_id(),
            secret_access_key: random_secret(),
            is_admin,
        };
        let now = now_text();
        let mut tx = self.write_transaction().await?;
        let inserted = sqlx::query(
            "INSERT INTO accounts (account_id, name, is_admin, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&keys.account_id)
        .bind(name)
        .bind(is_admin)
        .bind(&now)
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            return Err(if is_unique_violation(&e) {
                StoreError::Conflict(format!("account {name}"))
            } else {
                e.into()
            });
        }
        sqlx::query(
            "INSERT INTO access_keys (access_key_id, secret_access_key, account_id, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&keys.access_key_id)
        .bind(&keys.secret_access_key)
        .bind(&keys.account_id)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(keys)
    }

    /// Adds a fresh key pair to an existing account (for example when its credentials file was
    /// lost). The account's other keys stay valid. Fails with [`StoreError::NotFound`] for an
    /// unknown account. The key is usable by a running server at once: a key is looked up on
    /// its first use.
    pub async fn create_access_key(&self, account_id: &str) -> Result<AccountKeys> {
        let row = sqlx::query(
            "SELECT name, CASE WHEN is_admin THEN 1 ELSE 0 END FROM accounts WHERE account_id = $1",
        )
        .bind(account_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("account {account_id}")))?;
        let keys = AccountKeys {
            account_id: account_id.to_owned(),
            name: row.try_get(0)?,
            access_key_id: random_access_key_id(),
            secret_access_key: random_secret(),
            is_admin: backend::get_bool(&row, 1)?,
        };
        sqlx::query(
            "INSERT INTO access_keys (access_key_id, secret_access_key, account_id, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&keys.access_key_id)
        .bind(&keys.secret_access_key)
        .bind(account_id)
        .bind(now_text())
        .execute(&self.pool)
        .await?;
        Ok(keys)
    }

    /// The id of the first admin account (the oldest, ties broken by id), if there is one.
    pub async fn admin_account_id(&self) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT account_id FROM accounts WHERE is_admin ORDER BY created_at, account_id LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.try_get(0)).transpose().map_err(Into::into)
    }

    /// Whether an admin account exists yet.
    pub async fn has_admin(&self) -> Result<bool> {
        let row = sqlx::query("SELECT COUNT(*) FROM accounts WHERE is_admin")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)? > 0)
    }

    /// Looks up the account and secret behind an access key id; `None` for a key that does not
    /// exist. On every request's path: a key once found is cached for the life of the `Store`
    /// (keys are never removed).
    pub async fn credential(&self, access_key_id: &str) -> Result<Option<Credential>> {
        if let Some(hit) = self.cache.credential(access_key_id) {
            return Ok(Some(hit));
        }
        let found = self.read_credential(access_key_id).await?;
        if let Some(credential) = &found {
            self.cache.put_credential(access_key_id, credential);
        }
        Ok(found)
    }

    async fn read_credential(&self, access_key_id: &str) -> Result<Option<Credential>> {
        let row = sqlx::query(
            "SELECT k.secret_access_key, a.account_id, CASE WHEN a.is_admin THEN 1 ELSE 0 END \
             FROM access_keys k JOIN accounts a ON a.account_id = k.account_id \
             WHERE k.access_key_id = $1",
        )
        .bind(access_key_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(Credential {
                secret_access_key: r.try_get(0)?,
                account_id: r.try_get(1)?,
                is_admin: backend::get_bool(&r, 2)?,
            })
        })
        .transpose()
    }

    // ---- functions ------------------------------------------------------------------------

    /// Stores a new function with its code package. Fails with [`StoreError::Conflict`] if the
    /// account already has a function of that name.
    ///
    /// The package's blob is written and fsynced before the row commits; if the row does not
    /// commit, the blob is collected before this returns (unless another function shares it).
    pub async fn create_function(
        &self,
        account_id: &str,
        name: &str,
        spec: &FunctionSpec,
        zip: &[u8],
    ) -> Result<Function> {
        self.create_function_with_tags(account_id, name, spec, zip, &Tags::new())
            .await
    }

    /// Inserts the function's row and its tags in one transaction, once its package is durable.
    async fn try_create_function(
        &self,
        account_id: &str,
        name: &str,
        spec: &FunctionSpec,
        zip: &[u8],
        tags: &Tags,
    ) -> Result<Function> {
        let _writer = self.gc.read().await;
        let sha = self.put_blob(zip).await?;
        let function = Function {
            account_id: account_id.to_owned(),
            name: name.to_owned(),
            version: LATEST.to_owned(),
            spec: spec.clone(),
            code_sha256: sha,
            code_size: zip.len() as u64,
            revision_id: uuid::Uuid::new_v4().to_string(),
            last_modified: now(),
            reserved_concurrency: None,
            egress: None,
        };
        let mut tx = self.write_transaction().await?;
        let statement = spec_columns::insert_statement(
            "functions",
            &["account_id", "name"],
            &[
                "code_sha256",
                "code_size",
                "revision_id",
                "last_modified",
                "reserved_concurrency",
            ],
        );
        let query = sqlx::query(&statement)
            .bind(&function.account_id)
            .bind(&function.name);
        let inserted = spec_columns::bind_spec(query, spec)
            .bind(&function.code_sha256)
            .bind(function.code_size as i64)
            .bind(&function.revision_id)
            .bind(format_time(function.last_modified))
            .bind(None::<i64>)
            .execute(&mut *tx)
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!("function {name}")))
            }
            Err(e) => return Err(e.into()),
        }
        tags::insert(&mut tx, account_id, name, tags).await?;
        self.notify_function(&mut *tx, account_id, name).await?;
        tx.commit().await?;
        Ok(function)
    }

    /// Reads one function of an account; `None` if it does not exist. On every Invoke's path:
    /// answered from a cache that every write of the function invalidates.
    pub async fn function(&self, account_id: &str, name: &str) -> Result<Option<Function>> {
        self.cached_function(account_id, name, LATEST).await
    }

    /// Lists an account's functions in name order, starting after `after`, at most `limit`:
    /// `after` is the last name of the previous page, so a listing is paged without a cursor
    /// of the store's own.
    pub async fn list_functions(
        &self,
        account_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Function>> {
        let rows = sqlx::query(&format!(
            "SELECT {FUNCTION_COLUMNS} FROM functions WHERE account_id = $1 AND name > $2 \
             ORDER BY name LIMIT $3"
        ))
        .bind(account_id)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(function_from_row).collect()
    }

    /// Applies `change` to a function if its revision is still `expected_revision` (when given),
    /// giving it a new revision id and modification time. The executions recorded for sizing of
    /// its earlier revisions go in the same transaction.
    ///
    /// Fails with [`StoreError::NotFound`] for an unknown function and with
    /// [`StoreError::RevisionMismatch`] if the revision moved; the check and the write are one
    /// `BEGIN IMMEDIATE` transaction, so two conditional updates of one revision cannot both
    /// succeed. A new code package is durable before the row commits, and the package no row
    /// references any more (the old one, or the new one if the update failed) is collected
    /// before this returns.
    pub async fn update_function(
        &self,
        account_id: &str,
        name: &str,
        expected_revision: Option<&str>,
        change: FunctionChange<'_>,
    ) -> Result<Function> {
        let is_code = matches!(change, FunctionChange::Code(_));
        self.cache.invalidate_function(account_id, name);
        let updated = self
            .try_update_function(account_id, name, expected_revision, change)
            .await;
        self.cache.invalidate_function(account_id, name);
        // A code change orphans the old package, or, if it failed, possibly the new one.
        if is_code {
            self.collect_garbage().await?;
        }
        updated
    }

    async fn try_update_function(
        &self,
        account_id: &str,
        name: &str,
        expected_revision: Option<&str>,
        change: FunctionChange<'_>,
    ) -> Result<Function> {
        {
            let _writer = self.gc.read().await;
            let new_sha = match &change {
                FunctionChange::Code(zip) => Some(self.put_blob(zip).await?),
                FunctionChange::Spec(_) => None,
            };
            let mut tx = self.write_transaction().await?;
            let Some(mut function) = fetch_function(&mut *tx, account_id, name).await? else {
                return Err(StoreError::NotFound(format!("function {name}")));
            };
            check_revision(&function, expected_revision)?;
            match change {
                FunctionChange::Code(zip) => {
                    function.code_sha256 = new_sha.unwrap_or_default();
                    function.code_size = zip.len() as u64;
                }
                FunctionChange::Spec(patch) => patch.apply(&mut function.spec),
            }
            function.revision_id = uuid::Uuid::new_v4().to_string();
            function.last_modified = now();
            let spec = &function.spec;
            let statement = format!(
                "UPDATE functions SET {} WHERE account_id = $1 AND name = $2",
                spec_columns::assignments(
                    3,
                    &["code_sha256", "code_size", "revision_id", "last_modified"]
                )
            );
            let query = sqlx::query(&statement).bind(account_id).bind(name);
            spec_columns::bind_spec(query, spec)
                .bind(&function.code_sha256)
                .bind(function.code_size as i64)
                .bind(&function.revision_id)
                .bind(format_time(function.last_modified))
                .execute(&mut *tx)
                .await?;
            // Executions measure one revision, and sizing only reads the current ones' (of
            // `$LATEST` and of each published version): without this, every update would leave
            // up to the bounded window's rows behind for good.
            sqlx::query(
                "DELETE FROM executions \
                 WHERE account_id = $1 AND function_name = $2 AND revision_id <> $3 \
                 AND revision_id NOT IN (SELECT revision_id FROM function_versions \
                     WHERE account_id = $1 AND function_name = $2)",
            )
            .bind(account_id)
            .bind(name)
            .bind(&function.revision_id)
            .execute(&mut *tx)
            .await?;
            self.notify_function(&mut *tx, account_id, name).await?;
            tx.commit().await?;
            Ok(function)
        }
    }

    /// Sets or clears a function's reserved concurrency. It does not change the revision, as in
    /// Lambda. Fails with [`StoreError::NotFound`] for an unknown function. The store keeps the
    /// number; the executor enforces it.
    pub async fn set_reserved_concurrency(
        &self,
        account_id: &str,
        name: &str,
        reserved: Option<u32>,
    ) -> Result<()> {
        self.cache.invalidate_function(account_id, name);
        let _invalidate_after = InvalidateOnDrop(&self.cache, account_id, name);
        let done = sqlx::query(
            "UPDATE functions SET reserved_concurrency = $3 WHERE account_id = $1 AND name = $2",
        )
        .bind(account_id)
        .bind(name)
        .bind(reserved.map(i64::from))
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("function {name}")));
        }
        self.notify_function(&self.pool, account_id, name).await
    }

    /// Deletes a function with its published versions, aliases, logs, sizing data (executions,
    /// settings, decisions), tags and recursion setting, in one transaction, and collects its
    /// code packages if nothing else uses them.
    pub async fn delete_function(&self, account_id: &str, name: &str) -> Result<()> {
        self.cache.invalidate_function(account_id, name);
        let _invalidate_after = InvalidateOnDrop(&self.cache, account_id, name);
        let mut tx = self.write_transaction().await?;
        // Its versions, aliases, executions, sizing settings and decisions, tags and recursion
        // setting go with it (ON DELETE CASCADE).
        let done = sqlx::query("DELETE FROM functions WHERE account_id = $1 AND name = $2")
            .bind(account_id)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("function {name}")));
        }
        // A function created later under the same name starts with an empty log.
        sqlx::query("DELETE FROM invocation_logs WHERE account_id = $1 AND function_name = $2")
            .bind(account_id)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        self.notify_function(&mut *tx, account_id, name).await?;
        tx.commit().await?;
        self.collect_garbage().await
    }

    /// Reads a code package by hex sha256, whole: a blob is never seen half-written. Fails with
    /// [`StoreError::Io`] (`NotFound`) for a sha256 no package has, or a string that is not
    /// one. A package of a function deleted meanwhile may be gone.
    pub async fn code(&self, sha256_hex: &str) -> Result<Vec<u8>> {
        Ok(self.blobs.get(sha256_hex).await?)
    }

    // ---- settings -------------------------------------------------------------------------

    /// A server-wide setting, created with `init` the first time it is asked for: the first
    /// value stored wins, even against another process asking at the same time, and every
    /// later call answers it (`init` runs every time, its value is used once).
    pub async fn setting_or_init(
        &self,
        name: &str,
        init: impl FnOnce() -> String,
    ) -> Result<String> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(init())
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    // ---- internals ------------------------------------------------------------------------

    async fn put_blob(&self, bytes: &[u8]) -> Result<String> {
        Ok(self.blobs.put(bytes).await?)
    }

    /// Deletes every blob no function, no published version and no layer version references
    /// (a function's or a version's code, or one of its layers).
    async fn collect_garbage(&self) -> Result<()> {
        let _exclusive = self.gc.write().await;
        // One statement, so one snapshot: a publish copies a package `$LATEST` names in the
        // transaction that reads it, so the package is named in every snapshot. Rows tagged 1
        // are lists of layers (JSON), naming their blobs.
        let rows = sqlx::query(
            "SELECT code_sha256, 0 FROM functions \
             UNION SELECT code_sha256, 0 FROM function_versions \
             UNION SELECT code_sha256, 0 FROM layer_versions \
             UNION SELECT layers, 1 FROM functions WHERE layers <> '[]' \
             UNION SELECT layers, 1 FROM function_versions WHERE layers <> '[]'",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut live = HashSet::new();
        for row in &rows {
            let text: String = row.try_get(0)?;
            if row.try_get::<i64, _>(1)? == 0 {
                live.insert(text);
            } else {
                live.extend(layers::blobs_of(&text)?);
            }
        }
        let removed = self.blobs.collect(live).await?;
        if removed > 0 {
            tracing::debug!(removed, "collected unreferenced code packages");
        }
        Ok(())
    }
}

/// Whether a connection going back to the pool is sound. On some errors (`SQLITE_FULL`,
/// `SQLITE_IOERR`) SQLite rolls the transaction back by itself; sqlx's own `ROLLBACK` then
/// fails, and sqlx goes on believing the connection is in a transaction, so every later `BEGIN`
/// on it would fail too: a full disk would wedge the pool for good, one connection at a time.
/// Such a connection is closed instead (the pool opens a fresh one when needed). A dropped
/// transaction's `ROLLBACK` is queued on the connection: one round trip lets it run first.
async fn release_if_sound(
    conn: &mut sqlx::AnyConnection,
) -> std::result::Result<bool, sqlx::Error> {
    use sqlx::Connection as _;
    if conn.is_in_transaction() {
        conn.ping().await?;
        if conn.is_in_transaction() {
            tracing::warn!("closing a database connection left in a failed transaction");
            return Ok(false);
        }
    }
    Ok(true)
}

/// Rows in one multi-row INSERT: 500 rows of at most 13 columns stay well inside SQLite's
/// (32,766) and PostgreSQL's (65,535) limits on bound parameters.
pub(crate) const ROWS_PER_INSERT: usize = 500;

/// Inserts `rows` with `insert` (`INSERT INTO table (columns) `), [`ROWS_PER_INSERT`] rows per
/// statement: each statement is a round trip to the database, so a batch of rows is not sent
/// one by one. `bind` binds one row's `columns` values, in the order of the columns. The
/// placeholders are `$N` (sqlx's `QueryBuilder` writes `?` for `Any`, which PostgreSQL refuses).
pub(crate) async fn insert_rows<T>(
    conn: &mut sqlx::AnyConnection,
    insert: &str,
    columns: usize,
    rows: &[T],
    mut bind: impl for<'q> FnMut(spec_columns::DbQuery<'q>, &'q T) -> spec_columns::DbQuery<'q>,
) -> Result<()> {
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let statement = multi_row_insert(insert, columns, chunk.len());
        let mut query = sqlx::query(&statement);
        for row in chunk {
            query = bind(query, row);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// `insert` followed by `VALUES ($1, …, $columns), (…)` for `rows` rows.
fn multi_row_insert(insert: &str, columns: usize, rows: usize) -> String {
    let mut statement = String::from(insert);
    statement.push_str("VALUES ");
    for row in 0..rows {
        if row > 0 {
            statement.push_str(", ");
        }
        statement.push('(');
        for column in 0..columns {
            if column > 0 {
                statement.push_str(", ");
            }
            statement.push_str(&format!("${}", row * columns + column + 1));
        }
        statement.push(')');
    }
    statement
}

const FUNCTION_COLUMNS: &str = "account_id, name, runtime, role, handler, description, timeout_s, \
     memory_mb, ephemeral_mb, environment, architectures, package_type, code_sha256, code_size, \
     revision_id, last_modified, reserved_concurrency, layers, snap_start, egress";

/// Reads one function with any executor: the pool, or a transaction that will update it.
async fn fetch_function<'e, E>(
    executor: E,
    account_id: &str,
    name: &str,
) -> Result<Option<Function>>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(&format!(
        "SELECT {FUNCTION_COLUMNS} FROM functions WHERE account_id = $1 AND name = $2"
    ))
    .bind(account_id)
    .bind(name)
    .fetch_optional(executor)
    .await?;
    row.as_ref().map(function_from_row).transpose()
}

fn function_from_row(row: &sqlx::any::AnyRow) -> Result<Function> {
    spec_columns::function_from_row(row, "name", LATEST.to_owned())
}

fn check_revision(function: &Function, expected: Option<&str>) -> Result<()> {
    match expected {
        Some(expected) if expected != function.revision_id => Err(StoreError::RevisionMismatch {
            expected: expected.to_owned(),
        }),
        _ => Ok(()),
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serialising maps of strings and vectors of strings cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

/// Invalidates a cached function when a write of it ends, however it ends.
struct InvalidateOnDrop<'a>(&'a cache::Cache, &'a str, &'a str);

impl Drop for InvalidateOnDrop<'_> {
    fn drop(&mut self) {
        self.0.invalidate_function(self.1, self.2);
    }
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    // Millisecond precision, the precision Lambda's LastModified shows.
    t.replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap_or(t)
}

/// Now, in epoch milliseconds.
fn now_ms() -> i64 {
    let now = OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn now_text() -> String {
    format_time(now())
}

fn format_time(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn parse_time(text: &str) -> Result<OffsetDateTime> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| StoreError::Corrupt(format!("time {text:?}: {e}")))
}

fn random_account_id() -> String {
    let mut rng = rand::thread_rng();
    (0..12)
        .map(|_| char::from(b'0' + rng.gen_range(0..10)))
        .collect()
}

fn random_access_key_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut rng = rand::thread_rng();
    let tail: String = (0..16)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect();
    format!("AKIA{tail}")
}

fn random_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 30] = rand::thread_rng().gen();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod test_db;
#[cfg(test)]
mod tests;
