//! Session credentials: the temporary keys of execution environments (`ASIA…` key, secret and
//! session token, as Lambda hands its execution role's to a function), one set per environment,
//! valid while it lives.
//!
//! The server answers from memory: a credential is in force from the moment it is minted
//! ([`Store::mint_session`], on a cold start's path, so it makes no round trip to SQLite) until
//! the moment it is revoked (every `revoke_*` takes it out of memory before it returns: the next
//! request made with it is refused). The table `session_credentials`
//! (`migrations/0013_session_credentials.sql`) mirrors what is in force, written by one
//! background writer in the order things happened, in batches (a cold start adds no fsync);
//! [`Store::revoke_all_sessions`] empties both, awaited, at the server's start (environments do
//! not survive a restart, even after SIGKILL) and at its stop. The mirror is not read back to
//! accept a request: this process is the only one that mints (one server per data dir), so
//! what it holds in memory is the truth, and a row whose delete a full disk delayed grants
//! nothing. A write the store refuses is logged and the writer goes on.
//!
//! A credential expires [`SESSION_LIFETIME`] after it was minted or last renewed; the executor
//! renews those of living environments ([`Store::renew_sessions`]) once less than
//! [`SESSION_RENEW_BEFORE`] is left, so an environment's credential never lapses while it lives,
//! and one the executor stopped renewing (a server wedged for hours) expires by itself.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rand::Rng;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use tokio::sync::{mpsc, oneshot};

use crate::{format_time, Result, Store};

/// How long a credential is valid after it is minted or renewed (the longest session AWS's STS
/// grants a role).
pub const SESSION_LIFETIME: Duration = Duration::hours(12);
/// A credential with less than this left is renewed by [`Store::renew_sessions`].
pub const SESSION_RENEW_BEFORE: Duration = Duration::hours(6);
/// The most writes the mirror's writer commits in one transaction.
const MAX_BATCH: usize = 500;

/// The environment a credential is minted for.
#[derive(Debug, Clone, Copy)]
pub struct SessionEnvironment<'a> {
    /// The function's account: the credential acts as it.
    pub account_id: &'a str,
    /// The function the environment runs.
    pub function_name: &'a str,
    /// The version it runs (`$LATEST` or a number).
    pub version: &'a str,
    /// The VM the environment lives in.
    pub vm_id: &'a str,
    /// The environment's (container's) id, unique on the server.
    pub environment_id: &'a str,
}

/// What an environment is given, once, as `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
/// `AWS_SESSION_TOKEN`. The store keeps the secret (SigV4 needs it) and only a hash of the token.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// `ASIA` and 16 random characters of AWS's base-32 alphabet.
    pub access_key_id: String,
    /// 30 random bytes in base64 (40 characters).
    pub secret_access_key: String,
    /// 120 random bytes in base64 (160 characters), sent as `X-Amz-Security-Token`; no function
    /// of the key or the secret.
    pub session_token: String,
    /// When the credential lapses unless renewed.
    pub expires_at: OffsetDateTime,
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKeys")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A credential in force, as [`Store::session`] finds it to authenticate a request.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionCredential {
    /// The temporary access key id.
    pub access_key_id: String,
    /// The account the request acts as.
    pub account_id: String,
    /// The function whose environment holds it.
    pub function_name: String,
    /// The version that environment runs.
    pub version: String,
    /// The VM of the environment.
    pub vm_id: String,
    /// The environment (container) id.
    pub environment_id: String,
    /// The secret the request's SigV4 signature must be made with.
    pub secret_access_key: String,
    token_sha256: [u8; 32],
    /// When it was minted.
    pub created_at: OffsetDateTime,
    /// When it lapses unless renewed.
    pub expires_at: OffsetDateTime,
}

impl SessionCredential {
    /// Whether `token` is this credential's session token (compared by hash, in constant time).
    pub fn token_matches(&self, token: &str) -> bool {
        let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        given
            .iter()
            .zip(self.token_sha256.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// Whether it has lapsed at `now`.
    pub fn expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at <= now
    }
}

impl fmt::Debug for SessionCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCredential")
            .field("access_key_id", &self.access_key_id)
            .field("account_id", &self.account_id)
            .field("function_name", &self.function_name)
            .field("version", &self.version)
            .field("vm_id", &self.vm_id)
            .field("environment_id", &self.environment_id)
            .field("secret_access_key", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A write of the mirror, in the order it happened.
enum Op {
    Insert(Box<SessionCredential>),
    Delete(Vec<String>),
    Renew(Vec<(String, OffsetDateTime)>),
    Flush(oneshot::Sender<()>),
}

/// The credentials in force, and the queue of their mirror's writer.
#[derive(Debug)]
pub(crate) struct Sessions {
    live: Mutex<HashMap<String, SessionCredential>>,
    writes: mpsc::UnboundedSender<Op>,
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Insert(c) => write!(f, "Insert({})", c.access_key_id),
            Self::Delete(keys) => write!(f, "Delete({})", keys.len()),
            Self::Renew(keys) => write!(f, "Renew({})", keys.len()),
            Self::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl Sessions {
    /// The registry, with its writer running on the current tokio runtime.
    /// Starts the mirror's writer; its rows name `host_id`, the server writing them.
    pub(crate) fn start(pool: sqlx::AnyPool, host_id: std::sync::Arc<str>) -> Self {
        let (writes, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_mirror(pool, host_id, queue));
        Self {
            live: Mutex::new(HashMap::new()),
            writes,
        }
    }

    fn live(&self) -> MutexGuard<'_, HashMap<String, SessionCredential>> {
        // A plain map: a panicking holder cannot leave it torn.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, op: Op) {
        // The writer ends only when the registry is dropped; a send cannot outlive it.
        let _ = self.writes.send(op);
    }
}

impl Store {
    /// Mints the credential of a new execution environment, in force at once, valid for
    /// [`SESSION_LIFETIME`]. Its row is written in the background.
    pub fn mint_session(&self, environment: &SessionEnvironment<'_>) -> SessionKeys {
        self.mint_session_at(environment, OffsetDateTime::now_utc())
    }

    /// [`Store::mint_session`], as if minted at `now`.
    pub fn mint_session_at(
        &self,
        environment: &SessionEnvironment<'_>,
        now: OffsetDateTime,
    ) -> SessionKeys {
        let keys = SessionKeys {
            access_key_id: random_temporary_key_id(),
            secret_access_key: crate::random_secret(),
            session_token: random_token(),
            expires_at: now + SESSION_LIFETIME,
        };
        let credential = SessionCredential {
            access_key_id: keys.access_key_id.clone(),
            account_id: environment.account_id.to_owned(),
            function_name: environment.function_name.to_owned(),
            version: environment.version.to_owned(),
            vm_id: environment.vm_id.to_owned(),
            environment_id: environment.environment_id.to_owned(),
            secret_access_key: keys.secret_access_key.clone(),
            token_sha256: Sha256::digest(keys.session_token.as_bytes()).into(),
            created_at: now,
            expires_at: keys.expires_at,
        };
        // Queued under the lock, as every write is: the writer sees them in the map's order.
        let mut live = self.sessions.live();
        live.insert(keys.access_key_id.clone(), credential.clone());
        self.sessions.send(Op::Insert(Box::new(credential)));
        drop(live);
        keys
    }

    /// The credential in force under a temporary access key id; `None` for one never minted
    /// or revoked. (An expired one is answered: the caller says it expired.)
    pub fn session(&self, access_key_id: &str) -> Option<SessionCredential> {
        self.sessions.live().get(access_key_id).cloned()
    }

    /// Revokes the credentials for which `doomed` holds; answers their environments. They are
    /// refused from the moment this returns.
    pub fn revoke_sessions_where(
        &self,
        mut doomed: impl FnMut(&SessionCredential) -> bool,
    ) -> Vec<String> {
        let mut keys = Vec::new();
        let mut environments = Vec::new();
        let mut live = self.sessions.live();
        live.retain(|key, credential| {
            if doomed(credential) {
                keys.push(key.clone());
                environments.push(credential.environment_id.clone());
                false
            } else {
                true
            }
        });
        if !keys.is_empty() {
            self.sessions.send(Op::Delete(keys));
        }
        drop(live);
        environments
    }

    /// Revokes the credential of an environment that ended.
    pub fn revoke_session_environment(&self, environment_id: &str) -> usize {
        self.revoke_sessions_where(|c| c.environment_id == environment_id)
            .len()
    }

    /// Revokes the credentials of every environment of a VM that ended.
    pub fn revoke_session_vm(&self, vm_id: &str) -> usize {
        self.revoke_sessions_where(|c| c.vm_id == vm_id).len()
    }

    /// Revokes the credentials of a function's environments: of one version, or of all of them
    /// (`None`: the function was deleted).
    pub fn revoke_session_function(
        &self,
        account_id: &str,
        function_name: &str,
        version: Option<&str>,
    ) -> usize {
        self.revoke_sessions_where(|c| {
            c.account_id == account_id
                && c.function_name == function_name
                && version.is_none_or(|v| c.version == v)
        })
        .len()
    }

    /// Revokes every credential of this server, in memory and in the table (the rows a previous
    /// server of this data dir left included), and returns once they are gone from the table:
    /// the server's start and stop. The rows of other servers sharing the store stay.
    pub async fn revoke_all_sessions(&self) -> Result<u64> {
        self.sessions.live().clear();
        // Whatever the writer still holds would be an insert of a credential revoked here.
        self.flush_sessions().await;
        let deleted =
            sqlx::query("DELETE FROM session_credentials WHERE host_id IS NULL OR host_id = $1")
                .bind(&*self.host_id)
                .execute(&self.pool)
                .await?;
        Ok(deleted.rows_affected())
    }

    /// Renews the credentials in force with less than [`SESSION_RENEW_BEFORE`] left at `now`
    /// (for another [`SESSION_LIFETIME`]); answers how many.
    pub fn renew_sessions(&self, now: OffsetDateTime) -> usize {
        let mut renewed = Vec::new();
        let mut live = self.sessions.live();
        for (key, credential) in live.iter_mut() {
            if credential.expires_at - now < SESSION_RENEW_BEFORE {
                credential.expires_at = now + SESSION_LIFETIME;
                renewed.push((key.clone(), credential.expires_at));
            }
        }
        let count = renewed.len();
        if count > 0 {
            self.sessions.send(Op::Renew(renewed));
        }
        drop(live);
        count
    }

    /// The environments holding a credential, with when it was minted.
    pub fn session_environments(&self) -> Vec<(String, OffsetDateTime)> {
        self.sessions
            .live()
            .values()
            .map(|c| (c.environment_id.clone(), c.created_at))
            .collect()
    }

    /// Returns once the table mirrors every mint, renewal and revocation made before the call
    /// (or the writes failed and were logged).
    pub async fn flush_sessions(&self) {
        let (done, flushed) = oneshot::channel();
        self.sessions.send(Op::Flush(done));
        let _ = flushed.await;
    }
}

/// The mirror's writer: applies the writes in their order, as many as are queued (up to
/// [`MAX_BATCH`]) in one transaction.
async fn write_mirror(
    pool: sqlx::AnyPool,
    host_id: std::sync::Arc<str>,
    mut queue: mpsc::UnboundedReceiver<Op>,
) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut flushes = Vec::new();
        let writes: Vec<Op> = batch
            .into_iter()
            .filter_map(|op| match op {
                Op::Flush(done) => {
                    flushes.push(done);
                    None
                }
                other => Some(other),
            })
            .collect();
        if !writes.is_empty() {
            if let Err(err) = apply(&pool, &host_id, &writes).await {
                tracing::warn!(
                    error = %err,
                    writes = writes.len(),
                    "cannot mirror session credentials in the store; the server's own record \
                     (in memory) stays in force, and the next start empties the table"
                );
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

async fn apply(pool: &sqlx::AnyPool, host_id: &str, writes: &[Op]) -> crate::Result<()> {
    let mut tx = crate::backend::begin_write(pool).await?;
    for op in writes {
        match op {
            Op::Insert(c) => {
                sqlx::query(
                    "INSERT INTO session_credentials (access_key_id, secret_access_key, \
                     session_token_sha256, account_id, function_name, function_version, vm_id, \
                     environment_id, created_at, expires_at, host_id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(&c.access_key_id)
                .bind(&c.secret_access_key)
                .bind(hex::encode(c.token_sha256))
                .bind(&c.account_id)
                .bind(&c.function_name)
                .bind(&c.version)
                .bind(&c.vm_id)
                .bind(&c.environment_id)
                .bind(format_time(c.created_at))
                .bind(format_time(c.expires_at))
                .bind(host_id)
                .execute(&mut *tx)
                .await?;
            }
            Op::Delete(keys) => {
                for key in keys {
                    sqlx::query("DELETE FROM session_credentials WHERE access_key_id = $1")
                        .bind(key)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            Op::Renew(keys) => {
                for (key, expires_at) in keys {
                    sqlx::query(
                        "UPDATE session_credentials SET expires_at = $1 WHERE access_key_id = $2",
                    )
                    .bind(format_time(*expires_at))
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            Op::Flush(_) => {}
        }
    }
    tx.commit().await?;
    Ok(())
}

/// `ASIA` and 16 characters of the base-32 alphabet AWS's key ids use.
fn random_temporary_key_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut rng = rand::thread_rng();
    let tail: String = (0..16)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect();
    format!("ASIA{tail}")
}

/// 120 random bytes in base64: as opaque as an STS token, and drawn apart from the key and
/// secret, so no part of the credential says anything about another.
fn random_token() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 120];
    rand::thread_rng().fill(&mut bytes[..]);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row;

    async fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::test_db::open(dir.path()).await;
        (store, dir)
    }

    fn env<'a>(
        function: &'a str,
        version: &'a str,
        vm: &'a str,
        id: &'a str,
    ) -> SessionEnvironment<'a> {
        SessionEnvironment {
            account_id: "111122223333",
            function_name: function,
            version,
            vm_id: vm,
            environment_id: id,
        }
    }

    async fn rows(store: &Store) -> Vec<(String, String, String, String, String)> {
        store.flush_sessions().await;
        let rows = sqlx::query(
            "SELECT access_key_id, secret_access_key, session_token_sha256, environment_id, \
             expires_at FROM session_credentials ORDER BY environment_id",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap();
        rows.into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect()
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn minted_keys_have_aws_temporary_shape_and_are_all_different() {
            let (store, _dir) = store().await;
            let a = store.mint_session(&env("f", "$LATEST", "vm-1", "c-1"));
            let b = store.mint_session(&env("f", "$LATEST", "vm-1", "c-2"));
            for keys in [&a, &b] {
                let tail = keys.access_key_id.strip_prefix("ASIA").unwrap();
                assert_eq!(tail.len(), 16);
                assert!(tail
                    .bytes()
                    .all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c)));
                assert_eq!(keys.secret_access_key.len(), 40);
                assert!(
                    keys.session_token.len() >= 100,
                    "{}",
                    keys.session_token.len()
                );
                assert!(!keys.session_token.contains(&keys.access_key_id));
                assert!(!keys.session_token.contains(&keys.secret_access_key));
            }
            assert_ne!(a.access_key_id, b.access_key_id);
            assert_ne!(a.secret_access_key, b.secret_access_key);
            assert_ne!(a.session_token, b.session_token);
            // Neither the secret nor the token shows in a log line.
            let shown = format!("{a:?} {:?}", store.session(&a.access_key_id).unwrap());
            assert!(!shown.contains(&a.secret_access_key) && !shown.contains(&a.session_token));
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn a_session_is_found_with_its_token_only_and_mirrored_with_a_hash_of_it() {
            let (store, _dir) = store().await;
            let keys = store.mint_session(&env("f", "3", "vm-1", "c-1"));
            let found = store.session(&keys.access_key_id).unwrap();
            assert_eq!(found.account_id, "111122223333");
            assert_eq!(
                (found.function_name.as_str(), found.version.as_str()),
                ("f", "3")
            );
            assert_eq!(found.environment_id, "c-1");
            assert_eq!(found.secret_access_key, keys.secret_access_key);
            assert!(found.token_matches(&keys.session_token));
            assert!(!found.token_matches(""));
            assert!(!found.token_matches(&keys.session_token[1..]));
            assert!(store.session("ASIAAAAAAAAAAAAAAAAA").is_none());

            let rows = rows(&store).await;
            assert_eq!(rows.len(), 1);
            let (key, secret, token_hash, environment, _) = &rows[0];
            assert_eq!(key, &keys.access_key_id);
            assert_eq!(secret, &keys.secret_access_key);
            assert_eq!(
                token_hash,
                &hex::encode(Sha256::digest(keys.session_token.as_bytes()))
            );
            assert_ne!(token_hash, &keys.session_token);
            assert_eq!(environment, "c-1");
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn revocation_is_immediate_and_by_environment_vm_function_or_version() {
            let (store, _dir) = store().await;
            let c1 = store.mint_session(&env("f", "$LATEST", "vm-1", "c-1"));
            let c2 = store.mint_session(&env("f", "1", "vm-1", "c-2"));
            let c3 = store.mint_session(&env("f", "2", "vm-2", "c-3"));
            let c4 = store.mint_session(&env("g", "$LATEST", "vm-2", "c-4"));
            let c5 = store.mint_session(&env("g", "$LATEST", "vm-3", "c-5"));
            let live = |keys: &SessionKeys| store.session(&keys.access_key_id).is_some();

            assert_eq!(store.revoke_session_environment("c-1"), 1);
            assert!(!live(&c1) && live(&c2));
            assert_eq!(
                store.revoke_session_function("111122223333", "f", Some("1")),
                1
            );
            assert!(!live(&c2) && live(&c3));
            assert_eq!(store.revoke_session_vm("vm-2"), 2);
            assert!(!live(&c3) && !live(&c4) && live(&c5));
            // Another account's function of the same name is not touched.
            assert_eq!(store.revoke_session_function("999988887777", "g", None), 0);
            assert_eq!(store.revoke_session_function("111122223333", "g", None), 1);
            assert!(!live(&c5));
            assert_eq!(store.revoke_session_environment("c-1"), 0);
            assert!(rows(&store).await.is_empty());
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn renewal_extends_only_what_nears_its_expiry() {
            let (store, _dir) = store().await;
            let t0 = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
            let old = store.mint_session_at(&env("f", "$LATEST", "vm-1", "c-1"), t0);
            let later = t0 + Duration::hours(5);
            let new = store.mint_session_at(&env("f", "$LATEST", "vm-1", "c-2"), later);
            assert!(!store
                .session(&old.access_key_id)
                .unwrap()
                .expired(t0 + Duration::hours(11)));
            assert!(store
                .session(&old.access_key_id)
                .unwrap()
                .expired(t0 + Duration::hours(12)));

            // At 7 h, the first has 5 h left (renewed), the second 10 h (not).
            let now = t0 + Duration::hours(7);
            assert_eq!(store.renew_sessions(now), 1);
            let renewed = store.session(&old.access_key_id).unwrap();
            assert_eq!(renewed.expires_at, now + SESSION_LIFETIME);
            assert!(!renewed.expired(t0 + Duration::hours(18)));
            assert_eq!(
                store.session(&new.access_key_id).unwrap().expires_at,
                later + SESSION_LIFETIME
            );
            assert_eq!(store.renew_sessions(now), 0);
            let rows = rows(&store).await;
            let expiry = |environment: &str| {
                rows.iter()
                    .find(|r| r.3 == environment)
                    .map(|r| r.4.clone())
                    .unwrap()
            };
            assert_eq!(expiry("c-1"), format_time(now + SESSION_LIFETIME));
            assert_eq!(expiry("c-2"), format_time(later + SESSION_LIFETIME));
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn a_new_store_revokes_what_a_killed_server_left() {
            let dir = tempfile::tempdir().unwrap();
            let keys = {
                let store = crate::test_db::open(dir.path()).await;
                let keys = store.mint_session(&env("f", "$LATEST", "vm-1", "c-1"));
                assert_eq!(rows(&store).await.len(), 1);
                // No revocation, no close: as a SIGKILL leaves it.
                keys
            };
            let store = crate::test_db::open(dir.path()).await;
            assert_eq!(rows(&store).await.len(), 1);
            assert!(store.session(&keys.access_key_id).is_none());
            assert_eq!(store.revoke_all_sessions().await.unwrap(), 1);
            assert!(rows(&store).await.is_empty());
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn revoke_all_empties_memory_and_table_even_with_writes_queued() {
            let (store, _dir) = store().await;
            let minted: Vec<SessionKeys> = (0..50)
                .map(|i| store.mint_session(&env("f", "$LATEST", "vm-1", &format!("c-{i}"))))
                .collect();
            store.revoke_all_sessions().await.unwrap();
            assert!(minted
                .iter()
                .all(|k| store.session(&k.access_key_id).is_none()));
            assert!(store.session_environments().is_empty());
            assert!(rows(&store).await.is_empty());
        }
    }

    crate::test_db::backend_tests! {
        #[tokio::test]
        async fn the_sweep_revokes_what_its_predicate_names() {
            let (store, _dir) = store().await;
            store.mint_session(&env("f", "$LATEST", "vm-1", "c-1"));
            store.mint_session(&env("f", "$LATEST", "vm-1", "c-2"));
            let mut listed: Vec<String> = store
                .session_environments()
                .into_iter()
                .map(|(e, _)| e)
                .collect();
            listed.sort();
            assert_eq!(listed, ["c-1", "c-2"]);
            let gone = store.revoke_sessions_where(|c| c.environment_id != "c-2");
            assert_eq!(gone, ["c-1"]);
            let rows = rows(&store).await;
            assert_eq!(rows.len(), 1);
            assert_eq!(rows[0].3, "c-2");
        }
    }

    crate::test_db::backend_tests! {
        /// Two servers on one store: a server's start and stop delete its own credentials'
        /// rows, not those of the other's environments, which are in force.
        #[tokio::test]
        async fn a_server_revokes_its_own_rows_only() {
            let (a, dir_a) = store().await;
            let dir_b = tempfile::tempdir().unwrap();
            let url = crate::test_db::url(dir_a.path()).await;
            let b = Store::open_at(&url, dir_b.path()).await.unwrap();
            let of_a = a.mint_session(&env("f", "$LATEST", "vm-a", "c-a"));
            let of_b = b.mint_session(&env("f", "$LATEST", "vm-b", "c-b"));
            b.flush_sessions().await;
            assert_eq!(rows(&a).await.len(), 2);
            assert_eq!(a.revoke_all_sessions().await.unwrap(), 1);
            let left = rows(&a).await;
            assert_eq!(left.len(), 1);
            assert_eq!(left[0].0, of_b.access_key_id);
            assert!(a.session(&of_a.access_key_id).is_none());
            assert!(b.session(&of_b.access_key_id).is_some());
            b.close().await;
        }
    }
}
