//! The `s3://` backend: code packages as objects of an S3-compatible store (AWS S3, MinIO,
//! SeaweedFS, Ceph), keyed `PREFIX/sha256/<2 hex>/<64 hex>` as on disk, through `object_store`,
//! with each host's fetched packages in a bounded [`DiskCache`].
//!
//! A `PUT` is atomic and durable when it returns (what S3 promises), which keeps the store's
//! ordering rule: a blob is durable before the row naming it commits. Collection is safe with
//! several hosts on one bucket and one database by a grace period (ARCHITECTURE.md, "Blobs
//! shared by hosts"): a collector deletes only what no row named in a snapshot taken before it
//! listed, *and* what was last uploaded more than [`S3Config::grace`] ago; a writer re-uploads a
//! blob older than a quarter of the grace rather than reuse it, and so makes it new.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use sha2::{Digest, Sha256};

use super::cache::DiskCache;
use super::file::is_sha256_hex;
use super::{BlobError, S3Location};

/// How long an unreferenced blob is kept after its last upload, by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
/// The least time between two listings of the bucket by one host's collector, by default.
pub const DEFAULT_COLLECT_INTERVAL: Duration = Duration::from_secs(60);
/// [`S3Config::fence`] by default.
pub const DEFAULT_FENCE: Duration = Duration::from_secs(2);

/// What [`S3Blobs::open`] needs.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// The bucket and prefix (and the endpoint and region, if the URL gave them).
    pub location: S3Location,
    /// This host's cache of fetched packages (under the data dir).
    pub cache_dir: PathBuf,
    /// The cache's bound in bytes (0: no cache).
    pub cache_bytes: u64,
    /// An unreferenced blob is deleted only once its last upload is older than this.
    pub grace: Duration,
    /// One host lists the bucket for collection at most this often.
    pub collect_interval: Duration,
    /// A collector's `DELETE` is sent within half this of the `HEAD` that found the blob old,
    /// or not at all; a writer that re-uploaded an old blob checks it is still there this long
    /// after.
    pub fence: Duration,
    /// The environment credentials, region and endpoint are read from (`AWS_*`, `HOME`):
    /// `None` for the process's own.
    pub env: Option<BTreeMap<String, String>>,
}

impl S3Config {
    /// The defaults for a location: [`DEFAULT_GRACE`], [`DEFAULT_COLLECT_INTERVAL`].
    pub fn new(location: S3Location, cache_dir: PathBuf, cache_bytes: u64) -> Self {
        Self {
            location,
            cache_dir,
            cache_bytes,
            grace: DEFAULT_GRACE,
            collect_interval: DEFAULT_COLLECT_INTERVAL,
            fence: DEFAULT_FENCE,
            env: None,
        }
    }
}

/// Code packages in an S3-compatible bucket, and this host's cache of them.
#[derive(Debug)]
pub struct S3Blobs {
    /// Requests of writers and readers: a few retries within 30 s.
    client: AmazonS3,
    /// The collector's `HEAD`s and `DELETE`s: no retry, and a short timeout (the fence).
    collector: AmazonS3,
    location: S3Location,
    cache: Arc<DiskCache>,
    grace: Duration,
    collect_interval: Duration,
    fence: Duration,
    /// Where the credentials come from, for errors.
    credentials: String,
    /// One download per package at a time: VMs that cold-start one new function together wait
    /// for the first download, then read the cache.
    downloads: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    last_collection: Mutex<Option<Instant>>,
}

impl S3Blobs {
    /// Builds the clients (credentials: see [`credentials_from_files`]) and opens the cache.
    /// Does no request; [`S3Blobs::check`] does one.
    pub fn open(config: S3Config) -> Result<Self, BlobError> {
        // reqwest's TLS needs a process-wide provider; a second install (another store in the
        // same process) fails harmlessly, the first one stays. *ring*, not aws-lc-rs (rustls's
        // default, deprecating this one for its lack of post-quantum key exchange): aws-lc-rs
        // builds a C library with cmake, and an object store's TLS is classical anyway.
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let location = config.location;
        let vars: BTreeMap<String, String> = match &config.env {
            Some(vars) => vars.clone(),
            None => std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        };
        let env = |name: &str| vars.get(name).filter(|v| !v.is_empty()).cloned();
        let profile = SharedProfile::load(&|name| env(name));
        let region = location
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| profile.as_ref().and_then(|p| p.region.clone()))
            .unwrap_or_else(|| "us-east-1".to_owned());
        let endpoint = location
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"));
        let build = |retry: RetryConfig, timeout: Duration| {
            // What `AmazonS3Builder::from_env` does, over `vars`: every `AWS_*` setting it
            // knows (web identity, container and instance credentials among them).
            let mut builder = AmazonS3Builder::new();
            for (key, value) in vars.iter().filter(|(k, _)| k.starts_with("AWS_")) {
                if let Ok(config_key) = key.to_ascii_lowercase().parse() {
                    builder = builder.with_config(config_key, value);
                }
            }
            let mut builder = builder
                .with_bucket_name(&location.bucket)
                .with_region(&region)
                .with_retry(retry)
                .with_client_options(
                    ClientOptions::new()
                        .with_connect_timeout(Duration::from_secs(5))
                        .with_timeout(timeout),
                );
            if let Some(endpoint) = &endpoint {
                builder = builder
                    .with_endpoint(endpoint)
                    .with_allow_http(endpoint.starts_with("http://"));
            }
            // The environment's keys win (read above); else the shared files'.
            if env("AWS_ACCESS_KEY_ID").is_none() {
                if let Some(keys) = profile.as_ref().and_then(|p| p.keys.clone()) {
                    builder = builder
                        .with_access_key_id(keys.access_key_id)
                        .with_secret_access_key(keys.secret_access_key);
                    if let Some(token) = keys.session_token {
                        builder = builder.with_token(token);
                    }
                }
            }
            builder.build().map_err(|source| BlobError::ObjectStore {
                op: "configure",
                key: String::new(),
                store: location.to_string(),
                source: source.into(),
            })
        };
        let client = build(
            RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..RetryConfig::default()
            },
            Duration::from_secs(120),
        )?;
        let collector = build(
            RetryConfig {
                max_retries: 0,
                retry_timeout: config.fence / 2,
                ..RetryConfig::default()
            },
            config.fence / 2,
        )?;
        let credentials = if env("AWS_ACCESS_KEY_ID").is_some() {
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".to_owned()
        } else if profile.as_ref().is_some_and(|p| p.keys.is_some()) {
            format!(
                "profile {:?} of the AWS shared files",
                env("AWS_PROFILE").unwrap_or_else(|| "default".to_owned())
            )
        } else if env("AWS_WEB_IDENTITY_TOKEN_FILE").is_some() {
            "AWS_WEB_IDENTITY_TOKEN_FILE".to_owned()
        } else if env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
            || env("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
        {
            "the container credentials endpoint".to_owned()
        } else {
            "the instance metadata service: none in the environment (AWS_ACCESS_KEY_ID) or \
             the AWS shared files (~/.aws/credentials, AWS_PROFILE)"
                .to_owned()
        };
        let cache = DiskCache::open(&config.cache_dir, config.cache_bytes)?;
        Ok(Self {
            client,
            collector,
            location,
            cache: Arc::new(cache),
            grace: config.grace,
            collect_interval: config.collect_interval,
            fence: config.fence,
            credentials,
            downloads: Mutex::default(),
            last_collection: Mutex::new(None),
        })
    }

    /// One listing under the prefix: the bucket exists, the endpoint answers and the
    /// credentials are accepted. `ember serve` calls it at start, so that a wrong endpoint,
    /// bucket or key is refused at once rather than at the first upload.
    pub async fn check(&self) -> Result<(), BlobError> {
        let root = self.root();
        self.client
            .list_with_delimiter(Some(&root))
            .await
            .map(|_| ())
            .map_err(|source| BlobError::Unreachable {
                store: self.location.to_string(),
                credentials: self.credentials.clone(),
                source: source.into(),
            })
    }

    /// Uploads a package unless the bucket holds it from less than a quarter of the grace
    /// ago; returns its sha256. Also caches it: the host that uploads a package usually runs it.
    pub async fn put(&self, bytes: Vec<u8>) -> Result<String, BlobError> {
        let sha = hex::encode(Sha256::digest(&bytes));
        let key = self.key(&sha);
        let existed_old = match self.client.head(&key).await {
            Ok(meta) if age(meta.last_modified.timestamp_millis()) < self.grace / 4 => {
                self.cache_insert(&sha, bytes).await;
                return Ok(sha);
            }
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(source) => return Err(self.failed("head", key.as_ref(), source)),
        };
        let payload = PutPayload::from(bytes.clone());
        self.client
            .put(&key, payload)
            .await
            .map_err(|source| self.failed("put", key.as_ref(), source))?;
        if existed_old {
            // A collector may have found the old upload unreferenced and old just before this
            // one, and its DELETE may land after it: such a DELETE is sent within the fence of
            // its HEAD, so once the fence has passed, what is there stays.
            for _ in 0..3 {
                tokio::time::sleep(self.fence).await;
                match self.client.head(&key).await {
                    Ok(_) => break,
                    Err(object_store::Error::NotFound { .. }) => {
                        tracing::info!(sha256 = %sha, "a collector removed a re-uploaded package; uploading it again");
                        self.client
                            .put(&key, PutPayload::from(bytes.clone()))
                            .await
                            .map_err(|source| self.failed("put", key.as_ref(), source))?;
                    }
                    Err(source) => return Err(self.failed("head", key.as_ref(), source)),
                }
            }
        }
        self.cache_insert(&sha, bytes).await;
        Ok(sha)
    }

    /// A package: from the cache, else from the bucket (its sha256 checked, then cached).
    pub async fn get(&self, sha: &str) -> Result<Vec<u8>, BlobError> {
        if !is_sha256_hex(sha) {
            return Err(BlobError::NotFound(sha.to_owned()));
        }
        if let Some(bytes) = self.cached(sha).await? {
            return Ok(bytes);
        }
        let gate = self.download_gate(sha);
        let _downloading = gate.lock().await;
        if let Some(bytes) = self.cached(sha).await? {
            return Ok(bytes);
        }
        let key = self.key(sha);
        let bytes = match self.client.get(&key).await {
            Ok(found) => found
                .bytes()
                .await
                .map_err(|source| self.failed("get", key.as_ref(), source))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(BlobError::NotFound(sha.to_owned()))
            }
            Err(source) => return Err(self.failed("get", key.as_ref(), source)),
        };
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != sha {
            return Err(BlobError::Corrupt {
                sha: sha.to_owned(),
                actual,
            });
        }
        let bytes = bytes.to_vec();
        self.cache_insert(sha, bytes.clone()).await;
        Ok(bytes)
    }

    async fn cached(&self, sha: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let cache = self.cache.clone();
        let sha = sha.to_owned();
        blocking(move || cache.get(&sha)).await
    }

    fn download_gate(&self, sha: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self
            .downloads
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(gate) = gates.get(sha).and_then(Weak::upgrade) {
            return gate;
        }
        gates.retain(|_, gate| gate.strong_count() > 0);
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        gates.insert(sha.to_owned(), Arc::downgrade(&gate));
        gate
    }

    /// Deletes the blobs `live` (read from the database before this call) does not name and
    /// whose last upload is older than the grace; returns how many. Does nothing if this host
    /// listed the bucket less than the collection interval ago.
    pub async fn collect(&self, live: &HashSet<String>) -> Result<usize, BlobError> {
        let started = Instant::now();
        {
            let mut last = self
                .last_collection
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|at| at.elapsed() < self.collect_interval) {
                return Ok(0);
            }
            *last = Some(started);
        }
        let root = self.root();
        let mut listing = self.client.list(Some(&root));
        let mut candidates = Vec::new();
        while let Some(meta) = listing
            .try_next()
            .await
            .map_err(|source| self.failed("list", root.as_ref(), source))?
        {
            let Some(sha) = meta.location.filename().filter(|n| is_sha256_hex(n)) else {
                continue;
            };
            // Only keys where this store would put them: anything else is not Ember's.
            if meta.location != self.key(sha) {
                continue;
            }
            if !live.contains(sha) && age(meta.last_modified.timestamp_millis()) >= self.grace {
                candidates.push(sha.to_owned());
            }
        }
        let mut removed = 0;
        for sha in candidates {
            // The database snapshot grows stale: a writer commits within a quarter of the
            // grace of its upload, so a collection older than that stops.
            if started.elapsed() >= self.grace / 4 {
                tracing::warn!("blob collection took too long; the rest waits for the next one");
                break;
            }
            let key = self.key(&sha);
            let asked = Instant::now();
            let meta = match self.collector.head(&key).await {
                Ok(meta) => meta,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(source) => return Err(self.failed("head", key.as_ref(), source)),
            };
            if age(meta.last_modified.timestamp_millis()) < self.grace
                || asked.elapsed() >= self.fence / 2
            {
                continue;
            }
            match self.collector.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => return Err(self.failed("delete", key.as_ref(), source)),
            }
            let cache = self.cache.clone();
            blocking(move || cache.remove(&sha)).await?;
            removed += 1;
        }
        Ok(removed)
    }

    /// The bucket, prefix and endpoint, for logs.
    pub fn location(&self) -> &S3Location {
        &self.location
    }

    /// This host's cache of packages.
    pub fn cache(&self) -> &DiskCache {
        &self.cache
    }

    fn root(&self) -> Key {
        if self.location.prefix.is_empty() {
            Key::from("sha256")
        } else {
            Key::from(format!("{}/sha256", self.location.prefix))
        }
    }

    fn key(&self, sha: &str) -> Key {
        let shard = sha.get(..2).unwrap_or("00");
        Key::from(format!("{}/{shard}/{sha}", self.root()))
    }

    async fn cache_insert(&self, sha: &str, bytes: Vec<u8>) {
        let cache = self.cache.clone();
        let sha = sha.to_owned();
        // The cache only saves a download: a full disk or the like is logged, not failed.
        if let Err(e) = blocking(move || cache.insert(&sha, &bytes)).await {
            tracing::warn!(error = %super::chain(&e), "cannot cache a code package");
        }
    }

    fn failed(&self, op: &'static str, key: &str, source: object_store::Error) -> BlobError {
        BlobError::ObjectStore {
            op,
            key: key.to_owned(),
            store: self.location.to_string(),
            source: source.into(),
        }
    }
}

/// How long ago the store says an object was last uploaded (0 if in the future: clocks drift).
fn age(last_modified_ms: i64) -> Duration {
    let millis = last_modified_ms;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Duration::from_millis(now.saturating_sub(millis).max(0) as u64)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, BlobError> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BlobError::Io(std::io::Error::other(e)))??)
}

/// Static keys from a profile of the shared files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileKeys {
    /// `aws_access_key_id`.
    pub access_key_id: String,
    /// `aws_secret_access_key`.
    pub secret_access_key: String,
    /// `aws_session_token`, if any.
    pub session_token: Option<String>,
}

/// What the AWS shared files say for the profile in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedProfile {
    /// The profile's keys, from the credentials file, else the config file.
    pub keys: Option<ProfileKeys>,
    /// The profile's `region` (config file, else credentials file).
    pub region: Option<String>,
}

impl SharedProfile {
    /// The profile `AWS_PROFILE` names (else `default`) from `AWS_SHARED_CREDENTIALS_FILE`
    /// (else `~/.aws/credentials`) and `AWS_CONFIG_FILE` (else `~/.aws/config`, where a profile
    /// is `[profile NAME]`, and `[default]`), as the AWS CLI and SDKs read them; `None` if
    /// neither file has it. Unreadable files count as absent. `env` reads the environment.
    pub fn load(env: &dyn Fn(&str) -> Option<String>) -> Option<Self> {
        let home = env("HOME").map(PathBuf::from);
        let file = |var: &str, name: &str| {
            env(var)
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".aws").join(name)))
        };
        let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".to_owned());
        let credentials = file("AWS_SHARED_CREDENTIALS_FILE", "credentials")
            .and_then(|p| read(&p))
            .and_then(|text| section(&text, &profile));
        let config_header = if profile == "default" {
            "default".to_owned()
        } else {
            format!("profile {profile}")
        };
        let config = file("AWS_CONFIG_FILE", "config")
            .and_then(|p| read(&p))
            .and_then(|text| section(&text, &config_header));
        if credentials.is_none() && config.is_none() {
            return None;
        }
        let keys_of = |pairs: &Vec<(String, String)>| {
            let get = |k: &str| {
                pairs
                    .iter()
                    .rev()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
            };
            Some(ProfileKeys {
                access_key_id: get("aws_access_key_id")?,
                secret_access_key: get("aws_secret_access_key")?,
                session_token: get("aws_session_token"),
            })
        };
        let region_of = |pairs: &Vec<(String, String)>| {
            pairs
                .iter()
                .rev()
                .find(|(k, _)| k == "region")
                .map(|(_, v)| v.clone())
        };
        Some(Self {
            keys: credentials
                .as_ref()
                .and_then(keys_of)
                .or_else(|| config.as_ref().and_then(keys_of)),
            region: config
                .as_ref()
                .and_then(region_of)
                .or_else(|| credentials.as_ref().and_then(region_of)),
        })
    }
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The `key = value` pairs of `[name]` in an INI text (`#` and `;` start comments).
fn section(text: &str, name: &str) -> Option<Vec<(String, String)>> {
    let mut found = None;
    let mut current = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = header.split_whitespace().collect::<Vec<_>>().join(" ") == name;
            if current {
                found.get_or_insert_with(Vec::new);
            }
            continue;
        }
        if current {
            if let Some((key, value)) = line.split_once('=') {
                if let Some(pairs) = found.as_mut() {
                    pairs.push((key.trim().to_ascii_lowercase(), value.trim().to_owned()));
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(vars: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn shared_files_give_the_profiles_keys_and_region() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        let config = dir.path().join("config");
        std::fs::write(
            &creds,
            "# comment\n[default]\naws_access_key_id = AKDEFAULT\naws_secret_access_key = s1\n\n\
             [ci]\naws_access_key_id=AKCI\naws_secret_access_key=s2\naws_session_token = tok\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[default]\nregion = eu-west-1\n[profile ci]\nregion = ap-south-1\n\
             [profile cfgonly]\naws_access_key_id = AKCFG\naws_secret_access_key = s3\n",
        )
        .unwrap();
        let files = |profile: Option<&str>| {
            let mut vars = vec![
                ("AWS_SHARED_CREDENTIALS_FILE", creds.display().to_string()),
                ("AWS_CONFIG_FILE", config.display().to_string()),
            ];
            if let Some(p) = profile {
                vars.push(("AWS_PROFILE", p.to_owned()));
            }
            SharedProfile::load(&env_of(&vars))
        };
        let default = files(None).unwrap();
        assert_eq!(default.keys.as_ref().unwrap().access_key_id, "AKDEFAULT");
        assert_eq!(default.keys.as_ref().unwrap().session_token, None);
        assert_eq!(default.region.as_deref(), Some("eu-west-1"));
        let ci = files(Some("ci")).unwrap();
        assert_eq!(
            ci.keys,
            Some(ProfileKeys {
                access_key_id: "AKCI".into(),
                secret_access_key: "s2".into(),
                session_token: Some("tok".into()),
            })
        );
        assert_eq!(ci.region.as_deref(), Some("ap-south-1"));
        let cfg = files(Some("cfgonly")).unwrap();
        assert_eq!(cfg.keys.unwrap().access_key_id, "AKCFG");
        assert_eq!(files(Some("nobody")), None);
    }

    #[test]
    fn home_is_where_the_files_are_by_default() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".aws")).unwrap();
        std::fs::write(
            dir.path().join(".aws/credentials"),
            "[default]\naws_access_key_id = AKHOME\naws_secret_access_key = s\n",
        )
        .unwrap();
        let found = SharedProfile::load(&env_of(&[("HOME", dir.path().display().to_string())]));
        assert_eq!(found.unwrap().keys.unwrap().access_key_id, "AKHOME");
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            SharedProfile::load(&env_of(&[("HOME", empty.path().display().to_string())])),
            None
        );
    }
}
