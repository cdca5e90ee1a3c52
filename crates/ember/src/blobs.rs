//! `ember serve --blobs file://DIR|s3://BUCKET/PREFIX?endpoint=URL&region=R` and
//! `--blob-cache-mb`: where the store keeps code packages, checked at start, and the periodic
//! collection an `s3://` store needs (an unreferenced blob outlives its last reference by the
//! grace period, so the collections that follow deletes do not catch it).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use ember_store::blob::{BlobUrl, S3Config};
use ember_store::{Blobs, Store};

/// The flags, flattened into `ember serve`'s.
#[derive(Debug, clap::Args)]
pub struct BlobArgs {
    /// Where code packages live: `file://DIR`, or `s3://BUCKET/PREFIX?endpoint=URL&region=R`
    /// for an S3-compatible store shared by hosts (credentials from the AWS environment
    /// variables or ~/.aws files) [default: file://DATA_DIR/blobs].
    #[arg(long, env = "EMBER_BLOBS")]
    blobs: Option<BlobUrl>,
    /// MB of this host's on-disk cache of code packages fetched from an s3:// store, least
    /// recently used first out; 0 for none [default: 2048].
    #[arg(long, env = "EMBER_BLOB_CACHE_MB")]
    blob_cache_mb: Option<u64>,
}

const DEFAULT_CACHE_MB: u64 = 2048;
/// How often a host collects an `s3://` store's unreferenced blobs.
const COLLECT_EVERY: Duration = Duration::from_secs(600);

/// The store with its code packages where the flags say, once the place answers.
pub async fn attach(store: Store, args: &BlobArgs, data_dir: &Path) -> anyhow::Result<Store> {
    let blobs = match &args.blobs {
        None => return default_only(store, args),
        Some(BlobUrl::File(dir)) => {
            if args.blob_cache_mb.is_some() {
                anyhow::bail!(
                    "--blob-cache-mb applies to an s3:// blob store only: a file:// one is on \
                     this host's disk already"
                );
            }
            Blobs::file(dir)
                .with_context(|| format!("cannot open the blob store {}", dir.display()))?
        }
        Some(BlobUrl::S3(location)) => {
            let mb = args.blob_cache_mb.unwrap_or(DEFAULT_CACHE_MB);
            let bytes = mb
                .checked_mul(1 << 20)
                .context("--blob-cache-mb is too large")?;
            let config = S3Config::new(location.clone(), data_dir.join("blob-cache"), bytes);
            Blobs::s3(config).with_context(|| format!("cannot set up the blob store {location}"))?
        }
    };
    blobs
        .check()
        .await
        .context("cannot use the blob store (--blobs)")?;
    tracing::info!(blobs = %blobs.describe(), "code packages are kept in the blob store");
    Ok(store.with_blobs(blobs))
}

fn default_only(store: Store, args: &BlobArgs) -> anyhow::Result<Store> {
    if args.blob_cache_mb.is_some() {
        anyhow::bail!("--blob-cache-mb applies to an s3:// blob store (--blobs s3://...) only");
    }
    Ok(store)
}

/// For an `s3://` store, a task collecting its unreferenced blobs every 10 minutes (abort it
/// before closing the store); `None` for a `file://` one, collected as its rows change.
pub fn spawn_collector(store: &Store) -> Option<tokio::task::JoinHandle<()>> {
    if !matches!(store.blobs(), Blobs::S3(_)) {
        return None;
    }
    let store = store.clone();
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(COLLECT_EVERY);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if let Err(e) = store.collect_blobs().await {
                tracing::warn!(error = %ember_stdx::error_chain(&e), "cannot collect unreferenced code packages");
            }
        }
    }))
}
