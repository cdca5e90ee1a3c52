//! An in-memory cache of the two reads on every Invoke's path: an access key's credential and a
//! function's record (of `$LATEST` or of a published version). Without it each Invoke costs two SQLite round trips through sqlx's worker
//! threads, which dominate the warm path. Function URL requests add two more, cached the same
//! way: the URL by its id, and the function's resource policies (who may call it).
//!
//! Correctness rests on the data dir's single writer: functions change only through this
//! process's `Store` (other processes, like `ember accounts`, never write them), and every
//! writer invalidates the entry. A function's URLs and policies are its own: a write of any of
//! them (a URL's create, update or delete, a permission added or removed) invalidates the
//! function, and invalidating a function forgets them too (its deletion, an alias's, a
//! version's). A `generation` counter, bumped by every function write, keeps a
//! read that raced a write from caching what it read before the write committed. Credentials
//! are cached only once found: keys are added by other processes but never removed.
//!
//! On a store several servers share (PostgreSQL), another server's write is announced by a
//! notification (`notify.rs`: `NOTIFY` in the writing transaction, delivered once it commits),
//! which drops that function's entries here as this process's own writes do. While this server
//! is not listening (before its listener is connected, after it lost the connection) it might
//! miss one, so it caches nothing ([`Cache::set_listening`]), and starts empty once listening
//! again. As a last safety net, URL and policy entries are all forgotten once they are
//! [`SHARED_MAX_AGE`] old, and each function entry is answered only while the read that fetched
//! it began less than [`SHARED_MAX_AGE`] ago. A function entry past half that age is still
//! answered, as [`Lookup::Stale`]: its caller refreshes it in the background (`refresh.rs`, one
//! refresh per entry at a time), so a function invoked steadily never waits for the database
//! when the safety net lapses, and the entries of all functions do not all lapse at once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::{Credential, Function, FunctionUrl, Policy};

/// A function's cached versions: version -> record, and when the read that fetched it began.
type Versions = HashMap<String, (Function, Instant)>;

/// More entries than this and a map is emptied before the next insert: a bound, not an LRU.
const MAX_ENTRIES: usize = 65_536;

/// On a store several servers share, how old a cached function, URL or policy may get at
/// most: a safety net under the notifications, which invalidate entries within milliseconds.
pub const SHARED_MAX_AGE: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub(crate) struct Cache {
    /// `Some` on a shared store: when the function, URL and policy entries were last all
    /// forgotten, and how old they may get.
    expiry: Option<(Mutex<Instant>, Duration)>,
    /// (account, function name) -> version -> record, and when the read that fetched it
    /// began: a function's write forgets all its versions at once.
    functions: Mutex<HashMap<(String, String), Versions>>,
    /// (account, function name, version) of the function entries being refreshed in the
    /// background (`refresh.rs`).
    refreshing: Mutex<HashSet<(String, String, String)>>,
    credentials: Mutex<HashMap<String, Credential>>,
    /// URL id -> URL (found ones only: an unknown id is not cached).
    urls: Mutex<HashMap<String, FunctionUrl>>,
    /// (account, function name) -> every policy of the function (empty: none).
    policies: Mutex<HashMap<(String, String), Vec<Policy>>>,
    generation: AtomicU64,
    /// Whether entries may be cached: always on one server; on a shared store, only while this
    /// server hears other servers' writes (`notify.rs`).
    listening: AtomicBool,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            expiry: None,
            functions: Mutex::default(),
            refreshing: Mutex::default(),
            credentials: Mutex::default(),
            urls: Mutex::default(),
            policies: Mutex::default(),
            generation: AtomicU64::new(0),
            listening: AtomicBool::new(true),
        }
    }
}

impl Cache {
    /// A cache whose entries of functions, URLs and policies live at most `max_age` (for a
    /// store other servers write too); [`Cache::default`] keeps them until this process
    /// invalidates them.
    pub(crate) fn expiring(max_age: Duration) -> Self {
        Self {
            expiry: Some((Mutex::new(Instant::now()), max_age)),
            ..Self::default()
        }
    }

    /// Turns caching of functions, URLs and policies on or off, forgetting what is cached
    /// either way: off when this server may miss another's change (its listener lost its
    /// connection), on once it hears every change again (what it kept meanwhile may be stale).
    /// The generation is bumped too, so a read that began before is not cached.
    pub(crate) fn set_listening(&self, listening: bool) {
        if !listening {
            self.listening.store(false, Ordering::SeqCst);
        }
        self.clear();
        if listening {
            self.listening.store(true, Ordering::SeqCst);
        }
    }

    fn may_cache(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
    }

    /// Forgets every function, URL and policy once they are `max_age` old.
    fn expire(&self) {
        let Some((flushed, max_age)) = &self.expiry else {
            return;
        };
        let mut flushed = lock(flushed);
        if flushed.elapsed() < *max_age {
            return;
        }
        *flushed = Instant::now();
        drop(flushed);
        // Function entries lapse one by one (`function`); a bumped generation keeps a URL or
        // policy read that raced this flush from caching what it read before it.
        self.generation.fetch_add(1, Ordering::SeqCst);
        lock(&self.urls).clear();
        lock(&self.policies).clear();
    }

    /// Forgets every function, URL and policy (not credentials: keys are never changed nor
    /// removed), bumping the generation first.
    pub(crate) fn clear(&self) {
        {
            let mut map = lock(&self.functions);
            self.generation.fetch_add(1, Ordering::SeqCst);
            map.clear();
        }
        lock(&self.urls).clear();
        lock(&self.policies).clear();
    }

    /// A function's entry: fresh, stale (answer it, and refresh it: see [`Lookup::Stale`]), or
    /// missing (or too old to answer).
    pub(crate) fn function(&self, account_id: &str, name: &str, version: &str) -> Lookup {
        self.expire();
        let map = lock(&self.functions);
        let Some((function, fetched)) = map
            .get(&(account_id.to_owned(), name.to_owned()))
            .and_then(|versions| versions.get(version))
        else {
            return Lookup::Miss;
        };
        let Some((_, max_age)) = &self.expiry else {
            return Lookup::Fresh(function.clone());
        };
        let age = fetched.elapsed();
        if age >= *max_age {
            Lookup::Miss
        } else if age < *max_age / 2 {
            Lookup::Fresh(function.clone())
        } else {
            let function = function.clone();
            drop(map);
            let key = (account_id.to_owned(), name.to_owned(), version.to_owned());
            let first = lock(&self.refreshing).insert(key);
            Lookup::Stale {
                function,
                refresh: first,
            }
        }
    }

    /// The background refresh of a function entry ended (whatever it found): the next stale
    /// read may start another.
    pub(crate) fn refreshed(&self, account_id: &str, name: &str, version: &str) {
        lock(&self.refreshing).remove(&(
            account_id.to_owned(),
            name.to_owned(),
            version.to_owned(),
        ));
    }

    /// The generation to pass to [`Cache::put_function`] for a read starting now.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Caches what a read that began at `generation`, at `began`, found, unless a write
    /// happened since.
    pub(crate) fn put_function(&self, generation: u64, began: Instant, function: &Function) {
        let mut map = lock(&self.functions);
        if self.generation.load(Ordering::SeqCst) != generation || !self.may_cache() {
            return;
        }
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.entry((function.account_id.clone(), function.name.clone()))
            .or_default()
            .insert(function.version.clone(), (function.clone(), began));
    }

    /// Forgets a function, all its versions, its URLs and its policies; called before and after
    /// every write of any of them. The generation is bumped before anything is removed, so a
    /// read that raced the write either finds its entry removed or is refused by `put_*`.
    pub(crate) fn invalidate_function(&self, account_id: &str, name: &str) {
        let key = (account_id.to_owned(), name.to_owned());
        {
            let mut map = lock(&self.functions);
            self.generation.fetch_add(1, Ordering::SeqCst);
            map.remove(&key);
        }
        // A scan, but of URLs only, and on a function's writes only (not on any read).
        lock(&self.urls).retain(|_, url| url.account_id != key.0 || url.function_name != key.1);
        lock(&self.policies).remove(&key);
    }

    pub(crate) fn url(&self, url_id: &str) -> Option<FunctionUrl> {
        self.expire();
        lock(&self.urls).get(url_id).cloned()
    }

    /// Caches what a read that began at `generation` found, unless a write happened since.
    pub(crate) fn put_url(&self, generation: u64, url: &FunctionUrl) {
        let mut map = lock(&self.urls);
        if self.generation.load(Ordering::SeqCst) != generation || !self.may_cache() {
            return;
        }
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(url.url_id.clone(), url.clone());
    }

    pub(crate) fn policies(&self, account_id: &str, name: &str) -> Option<Vec<Policy>> {
        self.expire();
        lock(&self.policies)
            .get(&(account_id.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Caches what a read that began at `generation` found, unless a write happened since.
    pub(crate) fn put_policies(
        &self,
        generation: u64,
        account_id: &str,
        name: &str,
        policies: &[Policy],
    ) {
        let mut map = lock(&self.policies);
        if self.generation.load(Ordering::SeqCst) != generation || !self.may_cache() {
            return;
        }
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert((account_id.to_owned(), name.to_owned()), policies.to_vec());
    }

    pub(crate) fn credential(&self, access_key_id: &str) -> Option<Credential> {
        lock(&self.credentials).get(access_key_id).cloned()
    }

    pub(crate) fn put_credential(&self, access_key_id: &str, credential: &Credential) {
        let mut map = lock(&self.credentials);
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(access_key_id.to_owned(), credential.clone());
    }
}

/// What the cache holds of a function.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// Fetched less than half the maximum age ago (always, on a store of one server).
    Fresh(Function),
    /// Fetched between half the maximum age and the maximum age ago: answer it; `refresh` is
    /// true for the one caller (until [`Cache::refreshed`]) that should fetch it again, in the
    /// background.
    Stale { function: Function, refresh: bool },
    /// Not cached, or too old to answer: fetch it.
    Miss,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain maps: a panicking holder cannot leave them torn.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
