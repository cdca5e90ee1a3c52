//! Where code packages live, behind one seam: [`Blobs`], a `file://` directory on this host
//! ([`BlobStore`]) or an `s3://` bucket shared by hosts ([`S3Blobs`], with a per-host
//! [`DiskCache`]). Both are content-addressed by sha256 with the same key layout
//! (`sha256/<2 hex>/<64 hex>`), and both keep the store's rule: a blob is durable before the row
//! naming it commits. They differ in collection: the directory belongs to one server, which
//! deletes an unreferenced blob at once under the store's GC lock; a bucket is shared, so a blob
//! goes only after a grace period (see `s3.rs`).

mod cache;
mod file;
mod s3;
mod url;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

pub use cache::DiskCache;
pub use file::BlobStore;
pub use s3::{
    ProfileKeys, S3Blobs, S3Config, SharedProfile, DEFAULT_COLLECT_INTERVAL, DEFAULT_GRACE,
};
pub use url::{BlobUrl, BlobUrlError, S3Location};

use crate::{Store, StoreError};

/// Errors of the blob stores.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A local file (a `file://` blob, or the cache) could not be read or written.
    #[error("blob file I/O failed")]
    Io(#[from] std::io::Error),
    /// No package has this sha256 (or it is not one).
    #[error("no code package {0}")]
    NotFound(String),
    /// A request to the object store failed: it could not be reached, refused the credentials,
    /// has no such bucket, or failed itself. The source says which.
    #[error("{op} {key} in {store} failed")]
    ObjectStore {
        /// `configure`, `list`, `head`, `get`, `put` or `delete`.
        op: &'static str,
        /// The object's key (empty for `configure`).
        key: String,
        /// The bucket, prefix and endpoint.
        store: String,
        /// What `object_store` said.
        #[source]
        source: RemoteError,
    },
    /// [`Blobs::check`]'s listing failed: the store cannot be reached, refused the
    /// credentials, or has no such bucket. Says where the credentials came from.
    #[error("{store} does not answer (credentials from {credentials})")]
    Unreachable {
        /// The bucket, prefix and endpoint.
        store: String,
        /// Which source of the AWS chain gave the credentials.
        credentials: String,
        /// What `object_store` said.
        #[source]
        source: RemoteError,
    },
    /// The object store returned bytes that are not the package asked for.
    #[error("the object store's copy of code package {sha} has sha256 {actual}")]
    Corrupt {
        /// The sha256 asked for.
        sha: String,
        /// The sha256 of what came back.
        actual: String,
    },
}

/// What `object_store` said about a failed request, on one line: S3 answers errors in XML over
/// several, and a log line or `ember serve`'s one-line error must stay one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RemoteError(String);

impl From<object_store::Error> for RemoteError {
    fn from(e: object_store::Error) -> Self {
        // Its text already carries its sources' (object_store repeats them in each level).
        Self(
            e.to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        )
    }
}

impl From<BlobError> for StoreError {
    fn from(e: BlobError) -> Self {
        match e {
            // Through `From<io::Error>`: a full disk is `StorageFull`.
            BlobError::Io(io) => io.into(),
            BlobError::NotFound(sha) => StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no code package {sha}"),
            )),
            other => StoreError::Blob(other),
        }
    }
}

/// The blob store of a [`Store`]: cheap to clone.
#[derive(Debug, Clone)]
pub enum Blobs {
    /// `file://DIR`: this host's directory.
    File(BlobStore),
    /// `s3://BUCKET/PREFIX`: a bucket, shared by every host that names it.
    S3(Arc<S3Blobs>),
}

impl Blobs {
    /// A `file://` store at `dir` (created if missing).
    pub fn file(dir: &Path) -> Result<Self, BlobError> {
        Ok(Self::File(BlobStore::open(dir)?))
    }

    /// An `s3://` store (no request made; see [`Blobs::check`]).
    pub fn s3(config: S3Config) -> Result<Self, BlobError> {
        Ok(Self::S3(Arc::new(S3Blobs::open(config)?)))
    }

    /// Whether the store answers: for `s3://`, one listing (endpoint, bucket, credentials).
    pub async fn check(&self) -> Result<(), BlobError> {
        match self {
            Self::File(_) => Ok(()),
            Self::S3(s3) => s3.check().await,
        }
    }

    /// `file://DIR` or `s3://BUCKET/PREFIX at ENDPOINT`, for logs.
    pub fn describe(&self) -> String {
        match self {
            Self::File(store) => format!("file://{}", store.root().display()),
            Self::S3(s3) => s3.location().to_string(),
        }
    }

    /// Stores a package, durably, and returns its hex sha256.
    pub(crate) async fn put(&self, bytes: &[u8]) -> Result<String, BlobError> {
        match self {
            Self::File(store) => {
                let store = store.clone();
                let bytes = bytes.to_vec();
                join(tokio::task::spawn_blocking(move || store.put(&bytes)).await)
            }
            Self::S3(s3) => s3.put(bytes.to_vec()).await,
        }
    }

    /// A package by hex sha256, whole.
    pub(crate) async fn get(&self, sha: &str) -> Result<Vec<u8>, BlobError> {
        match self {
            Self::File(store) => {
                let store = store.clone();
                let sha = sha.to_owned();
                join(tokio::task::spawn_blocking(move || store.get(&sha)).await)
            }
            Self::S3(s3) => s3.get(sha).await,
        }
    }

    /// Deletes what a crash of this server left half-written (temp files of its directory, or
    /// of its cache, which [`DiskCache::open`] already cleared).
    pub(crate) async fn remove_temp_files(&self) -> Result<(), BlobError> {
        match self {
            Self::File(store) => {
                let store = store.clone();
                join(tokio::task::spawn_blocking(move || store.remove_temp_files()).await)
            }
            Self::S3(_) => Ok(()),
        }
    }

    /// Deletes the blobs `live` does not name (read from the database just before), as the
    /// backend's rule allows; returns how many.
    pub(crate) async fn collect(&self, live: HashSet<String>) -> Result<usize, BlobError> {
        match self {
            Self::File(store) => {
                let store = store.clone();
                join(
                    tokio::task::spawn_blocking(move || -> std::io::Result<usize> {
                        let mut removed = 0;
                        for sha in store.list()? {
                            if !live.contains(&sha) {
                                store.remove(&sha)?;
                                removed += 1;
                            }
                        }
                        Ok(removed)
                    })
                    .await,
                )
            }
            Self::S3(s3) => s3.collect(&live).await,
        }
    }
}

impl Store {
    /// This store with its code packages in `blobs` instead of the data dir's `blobs/`
    /// (`ember serve --blobs`). Call before any write.
    pub fn with_blobs(mut self, blobs: Blobs) -> Self {
        self.blobs = blobs;
        self
    }

    /// The store's blob backend.
    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    /// Runs a collection of unreferenced blobs now (`ember serve` calls it periodically for an
    /// `s3://` store, where a blob outlives its last reference by the grace period).
    pub async fn collect_blobs(&self) -> Result<(), StoreError> {
        self.collect_garbage().await
    }
}

fn join<T>(joined: Result<std::io::Result<T>, tokio::task::JoinError>) -> Result<T, BlobError> {
    Ok(joined.map_err(|e| BlobError::Io(std::io::Error::other(e)))??)
}

/// An error and its sources on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
