//! The `file://` backend: one file per sha256 under a directory, written atomically.
//!
//! Layout under the store's root: `sha256/<first two hex digits>/<64 hex digits>` for blobs and
//! `tmp/` for writes in progress. A blob becomes visible only by `rename(2)` after its bytes and
//! its directory entry are fsynced, so a crash leaves either the whole blob or a temp file that
//! the next start deletes ([`BlobStore::remove_temp_files`]). A write that fails removes its temp
//! file at once.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The blob files of one data dir.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Opens (creating if needed) the blob store at `root`.
    pub fn open(root: &Path) -> io::Result<Self> {
        fs::create_dir_all(root.join("sha256"))?;
        fs::create_dir_all(root.join("tmp"))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Deletes temp files abandoned by writes that never finished. Only the process that owns
    /// the data dir may call it: another process's write in progress would be lost.
    pub fn remove_temp_files(&self) -> io::Result<()> {
        for entry in fs::read_dir(self.root.join("tmp"))? {
            fs::remove_file(entry?.path())?;
        }
        Ok(())
    }

    /// Stores `bytes` and returns their sha256 in hex. Storing the same bytes twice is a no-op.
    pub fn put(&self, bytes: &[u8]) -> io::Result<String> {
        let sha = hex::encode(Sha256::digest(bytes));
        let dest = self.path_of(&sha);
        if dest.exists() {
            return Ok(sha);
        }
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir)?;
        // Removed when dropped: a write that fails (a full disk, say) takes its temp file with it
        // at once, rather than leaving it for the next start.
        let mut tmp = tempfile::Builder::new()
            .prefix("")
            .suffix(".part")
            .tempfile_in(self.root.join("tmp"))?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&dest).map_err(|e| e.error)?;
        fs::File::open(&dir)?.sync_all()?;
        Ok(sha)
    }

    /// Reads the blob with the given hex sha256.
    pub fn get(&self, sha: &str) -> io::Result<Vec<u8>> {
        if !is_sha256_hex(sha) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "not a sha256"));
        }
        fs::read(self.path_of(sha))
    }

    /// The directory the blobs live in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path a blob lives at (whether or not it exists).
    pub fn path_of(&self, sha: &str) -> PathBuf {
        let prefix = sha.get(..2).unwrap_or("00");
        self.root.join("sha256").join(prefix).join(sha)
    }

    /// Every stored blob's sha256.
    pub fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for prefix in fs::read_dir(self.root.join("sha256"))? {
            let prefix = prefix?;
            if !prefix.file_type()?.is_dir() {
                continue;
            }
            for blob in fs::read_dir(prefix.path())? {
                let name = blob?.file_name();
                if let Some(name) = name.to_str().filter(|n| is_sha256_hex(n)) {
                    out.push(name.to_owned());
                }
            }
        }
        Ok(out)
    }

    /// Deletes a blob; a missing blob is not an error.
    pub fn remove(&self, sha: &str) -> io::Result<()> {
        match fs::remove_file(self.path_of(sha)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_is_content_addressed_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let a = store.put(b"hello").unwrap();
        assert_eq!(
            a,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(store.put(b"hello").unwrap(), a);
        assert_eq!(store.get(&a).unwrap(), b"hello");
        assert_eq!(store.list().unwrap(), vec![a.clone()]);
        store.remove(&a).unwrap();
        assert!(store.list().unwrap().is_empty());
        store.remove(&a).unwrap();
    }

    #[test]
    fn abandoned_temp_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let path = dir.path().join("tmp").join("abandoned.part");
        fs::write(&path, b"half a package").unwrap();
        drop(store);
        let store = BlobStore::open(dir.path()).unwrap();
        assert!(
            path.exists(),
            "opening alone must not touch another writer's files"
        );
        store.remove_temp_files().unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn get_refuses_paths_that_are_not_digests() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        assert!(store.get("../../etc/passwd").is_err());
    }
}
