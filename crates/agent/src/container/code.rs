//! Code packages sent by the host ([`PutCode`]), kept extracted under `<state>/code/<sha256>/`
//! until the VM ends.
//!
//! Chunks are appended to `<sha256>.zip.part` at consecutive offsets and hashed on the way. With
//! the last one the whole is checked against its name, extracted with the store's limits into a
//! temporary directory that is then renamed into place (so a directory named after a package is
//! always complete), and the zip is deleted. Uploads of different packages run in parallel;
//! chunks of one package are handled one at a time.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ember_package::{PackageError, PackageLimits};
use ember_protocol::{PutCode, MAX_CODE_CHUNK};
use sha2::{Digest, Sha256};
use tracing::{debug, info};

#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error("{0:?} is not a sha256 in lowercase hex")]
    BadSha(String),
    #[error("a package of {total_len} bytes is outside 1..={max} bytes")]
    BadSize { total_len: u64, max: u64 },
    #[error("a chunk of {len} bytes at offset {offset} does not fit in a package of {total_len} bytes (chunks are at most {MAX_CODE_CHUNK} bytes)")]
    BadChunk {
        offset: u64,
        len: usize,
        total_len: u64,
    },
    #[error("chunk at offset {offset} of package {sha256}, expected offset {expected} (chunks must be consecutive, starting at 0)")]
    OutOfOrder {
        sha256: String,
        offset: u64,
        expected: u64,
    },
    #[error("package {sha256} has sha256 {actual}")]
    Mismatch { sha256: String, actual: String },
    #[error("package {0} cannot be extracted")]
    Extract(String, #[source] PackageError),
    #[error("{what} {}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The packages of this VM.
#[derive(Debug)]
pub struct CodeStore {
    dir: PathBuf,
    limits: PackageLimits,
    uploads: Mutex<HashMap<String, Arc<Mutex<Option<Upload>>>>>,
}

/// A package being received.
#[derive(Debug)]
struct Upload {
    file: File,
    received: u64,
    total_len: u64,
    hasher: Sha256,
}

impl CodeStore {
    /// Packages live under `dir`, created when the first one arrives.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            limits: PackageLimits::default(),
            uploads: Mutex::default(),
        }
    }

    /// The directory packages live under.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the package `sha256` is (or will be) extracted.
    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// Whether the package `sha256` is here, complete and extracted.
    pub fn has(&self, sha256: &str) -> bool {
        valid_sha(sha256) && self.path(sha256).is_dir()
    }

    /// Takes one chunk. Returns whether the package is now complete (verified and extracted).
    /// Blocking: file I/O, hashing and, with the last chunk, extraction.
    pub fn put(&self, chunk: &PutCode) -> Result<bool, CodeError> {
        let sha = chunk.sha256.as_str();
        if !valid_sha(sha) {
            return Err(CodeError::BadSha(chunk.sha256.clone()));
        }
        if self.has(sha) {
            return Ok(true);
        }
        let max = self.limits.max_zipped_bytes;
        if chunk.total_len == 0 || chunk.total_len > max {
            return Err(CodeError::BadSize {
                total_len: chunk.total_len,
                max,
            });
        }
        let len = chunk.chunk.len();
        if len > MAX_CODE_CHUNK
            || chunk.offset.saturating_add(len as u64) > chunk.total_len
            || (len == 0 && chunk.offset < chunk.total_len)
        {
            return Err(CodeError::BadChunk {
                offset: chunk.offset,
                len,
                total_len: chunk.total_len,
            });
        }

        let slot = self
            .lock_uploads()
            .entry(sha.to_owned())
            .or_default()
            .clone();
        let mut upload = slot.lock().unwrap_or_else(PoisonError::into_inner);
        // Another upload of the same package may have finished while this one waited.
        if self.has(sha) {
            return Ok(true);
        }
        if chunk.offset == 0 {
            *upload = Some(self.start(sha, chunk.total_len)?);
        }
        let current = match upload.as_mut() {
            Some(u) if u.received == chunk.offset && u.total_len == chunk.total_len => u,
            other => {
                return Err(CodeError::OutOfOrder {
                    sha256: sha.to_owned(),
                    offset: chunk.offset,
                    expected: other.as_ref().map_or(0, |u| u.received),
                })
            }
        };
        current
            .file
            .write_all(&chunk.chunk)
            .map_err(self.io("cannot write", &self.part(sha)))?;
        current.hasher.update(&chunk.chunk);
        current.received += len as u64;
        if current.received < current.total_len {
            return Ok(false);
        }
        let done = upload.take();
        let result = match done {
            Some(done) => self.finish(sha, done),
            None => Ok(()),
        };
        let _ = fs::remove_file(self.part(sha));
        self.lock_uploads().remove(sha);
        result.map(|()| true)
    }

    fn start(&self, sha: &str, total_len: u64) -> Result<Upload, CodeError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.dir)
            .map_err(self.io("cannot create", &self.dir))?;
        let part = self.part(sha);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&part)
            .map_err(self.io("cannot create", &part))?;
        debug!(sha256 = sha, total_len, "receiving a code package");
        Ok(Upload {
            file,
            received: 0,
            total_len,
            hasher: Sha256::new(),
        })
    }

    /// Verifies, extracts and publishes a complete package.
    fn finish(&self, sha: &str, upload: Upload) -> Result<(), CodeError> {
        let actual = hex::encode(upload.hasher.finalize());
        if actual != sha {
            return Err(CodeError::Mismatch {
                sha256: sha.to_owned(),
                actual,
            });
        }
        drop(upload.file);
        let part = self.part(sha);
        let bytes = fs::read(&part).map_err(self.io("cannot read", &part))?;
        let tmp = self.dir.join(format!(".{sha}.tmp"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(self.io("cannot remove", &tmp))?;
        }
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&tmp)
            .map_err(self.io("cannot create", &tmp))?;
        // The mode is exact whatever the umask: the runtime's user must read the code.
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
            .map_err(self.io("cannot chmod", &tmp))?;
        let extracted = ember_package::extract(&bytes, &tmp, &self.limits)
            .map_err(|e| CodeError::Extract(sha.to_owned(), e))
            .and_then(|_| {
                let dest = self.path(sha);
                fs::rename(&tmp, &dest).map_err(self.io("cannot rename into", &dest))
            });
        if extracted.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        extracted?;
        info!(sha256 = sha, bytes = bytes.len(), "code package stored");
        Ok(())
    }

    fn part(&self, sha: &str) -> PathBuf {
        self.dir.join(format!("{sha}.zip.part"))
    }

    fn io<'a>(
        &self,
        what: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(io::Error) -> CodeError + 'a {
        move |source| CodeError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }

    fn lock_uploads(&self) -> MutexGuard<'_, HashMap<String, Arc<Mutex<Option<Upload>>>>> {
        // The map is consistent between statements; a panicking holder cannot tear it.
        self.uploads.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// 64 lowercase hex digits: safe as a file name, and the form the store names packages by.
pub fn valid_sha(sha: &str) -> bool {
    sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn package(files: &[(&str, &[u8])]) -> (Vec<u8>, String) {
        let src = tempfile::tempdir().unwrap();
        for (name, content) in files {
            let path = src.path().join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, content).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let zip = ember_package::zip_dir(src.path()).unwrap();
        let sha = hex::encode(Sha256::digest(&zip));
        (zip, sha)
    }

    fn chunk(sha: &str, zip: &[u8], offset: usize, len: usize) -> PutCode {
        PutCode {
            sha256: sha.to_owned(),
            offset: offset as u64,
            total_len: zip.len() as u64,
            chunk: Bytes::copy_from_slice(&zip[offset..offset + len]),
        }
    }

    #[test]
    fn assembles_verifies_and_extracts_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = CodeStore::new(dir.path().join("code"));
        let (zip, sha) = package(&[("bootstrap", b"#!/bin/sh\n"), ("lib/a.txt", b"a")]);
        let third = zip.len() / 3;
        assert!(!store.put(&chunk(&sha, &zip, 0, third)).unwrap());
        assert!(!store.put(&chunk(&sha, &zip, third, third)).unwrap());
        assert!(dir.path().join(format!("code/{sha}.zip.part")).is_file());
        assert!(!store.has(&sha));
        let rest = zip.len() - 2 * third;
        assert!(store.put(&chunk(&sha, &zip, 2 * third, rest)).unwrap());

        let root = store.path(&sha);
        assert_eq!(fs::read(root.join("bootstrap")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(fs::read(root.join("lib/a.txt")).unwrap(), b"a");
        let mode = fs::metadata(&root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        let left: Vec<_> = fs::read_dir(dir.path().join("code"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            [std::ffi::OsString::from(&sha)],
            "no zip, no temp dir"
        );

        // Already here: complete at once, whatever the chunk.
        assert!(store.put(&chunk(&sha, &zip, 0, 1)).unwrap());
    }

    #[test]
    fn chunks_must_be_consecutive_and_a_restart_at_zero_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let store = CodeStore::new(dir.path());
        let (zip, sha) = package(&[("bootstrap", b"x")]);
        let err = store.put(&chunk(&sha, &zip, 5, 5)).unwrap_err();
        assert!(
            matches!(err, CodeError::OutOfOrder { expected: 0, .. }),
            "{err}"
        );
        assert!(!store.put(&chunk(&sha, &zip, 0, 10)).unwrap());
        for offset in [5, 11, 20] {
            let err = store.put(&chunk(&sha, &zip, offset, 5)).unwrap_err();
            assert!(
                matches!(err, CodeError::OutOfOrder { expected: 10, .. }),
                "{err}"
            );
        }
        let mut other_total = chunk(&sha, &zip, 10, 5);
        other_total.total_len += 1;
        assert!(store.put(&other_total).is_err());
        // Starting over works.
        assert!(store.put(&chunk(&sha, &zip, 0, zip.len())).unwrap());
    }

    #[test]
    fn a_wrong_digest_or_a_bad_zip_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = CodeStore::new(dir.path());
        let (zip, _) = package(&[("bootstrap", b"x")]);
        let wrong = "0".repeat(64);
        let err = store.put(&chunk(&wrong, &zip, 0, zip.len())).unwrap_err();
        assert!(matches!(err, CodeError::Mismatch { .. }), "{err}");

        let garbage = b"not a zip at all".to_vec();
        let sha = hex::encode(Sha256::digest(&garbage));
        let err = store
            .put(&chunk(&sha, &garbage, 0, garbage.len()))
            .unwrap_err();
        assert!(matches!(err, CodeError::Extract(..)), "{err}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "nothing left");
    }

    #[test]
    fn requests_are_validated_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = CodeStore::new(dir.path());
        let put = |sha: &str, offset: u64, total_len: u64, len: usize| {
            store.put(&PutCode {
                sha256: sha.to_owned(),
                offset,
                total_len,
                chunk: Bytes::from(vec![0u8; len]),
            })
        };
        let sha = "a".repeat(64);
        assert!(matches!(
            put("../../etc", 0, 1, 1),
            Err(CodeError::BadSha(_))
        ));
        assert!(matches!(
            put(&"A".repeat(64), 0, 1, 1),
            Err(CodeError::BadSha(_))
        ));
        assert!(matches!(put(&sha, 0, 0, 0), Err(CodeError::BadSize { .. })));
        assert!(matches!(
            put(&sha, 0, 60_000_000, 1),
            Err(CodeError::BadSize { .. })
        ));
        assert!(matches!(
            put(&sha, 0, 10, 11),
            Err(CodeError::BadChunk { .. })
        ));
        assert!(matches!(
            put(&sha, 9, 10, 2),
            Err(CodeError::BadChunk { .. })
        ));
        assert!(matches!(
            put(&sha, 0, 10, 0),
            Err(CodeError::BadChunk { .. })
        ));
        assert!(matches!(
            put(&sha, 0, 50_000_000, MAX_CODE_CHUNK + 1),
            Err(CodeError::BadChunk { .. })
        ));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
