//! A host's on-disk cache of the code packages it fetched from a remote blob store, keyed by
//! sha256 and bounded in bytes (`--blob-cache-mb`): least recently used packages go first.
//!
//! Layout under its directory, as the `file://` backend's: `sha256/<2 hex>/<64 hex>`, and `tmp/`
//! for writes in progress. A package is written to `tmp/`, fsynced and renamed into place, so
//! the cache holds whole packages only; temp files left by a crash are removed at open. The
//! index (size and last use of each package) lives in memory, rebuilt at open from the files
//! (oldest modification first). Entries are never trusted beyond their name: a file that
//! vanished (evicted by a racing insert) is a miss, not an error.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::file::is_sha256_hex;

/// The cache's directory, its bound and its index.
#[derive(Debug)]
pub struct DiskCache {
    root: PathBuf,
    bound: u64,
    index: Mutex<Index>,
}

#[derive(Debug, Default)]
struct Index {
    /// sha256 -> (size in bytes, tick of last use).
    entries: HashMap<String, (u64, u64)>,
    total: u64,
    tick: u64,
}

impl DiskCache {
    /// Opens (creating if needed) the cache at `root`, holding at most `bound` bytes of
    /// packages (0: caches nothing). Temp files are removed, and packages beyond the bound
    /// evicted, oldest first. Only one process may use a cache directory: it lives in the data
    /// dir, under its lock.
    pub fn open(root: &Path, bound: u64) -> io::Result<Self> {
        fs::create_dir_all(root.join("sha256"))?;
        fs::create_dir_all(root.join("tmp"))?;
        for entry in fs::read_dir(root.join("tmp"))? {
            fs::remove_file(entry?.path())?;
        }
        let mut found = Vec::new();
        for prefix in fs::read_dir(root.join("sha256"))? {
            let prefix = prefix?;
            if !prefix.file_type()?.is_dir() {
                continue;
            }
            for file in fs::read_dir(prefix.path())? {
                let file = file?;
                let Some(name) = file.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if !is_sha256_hex(&name) {
                    continue;
                }
                let meta = file.metadata()?;
                found.push((meta.modified()?, name, meta.len()));
            }
        }
        found.sort();
        let cache = Self {
            root: root.to_path_buf(),
            bound,
            index: Mutex::default(),
        };
        {
            let mut index = cache.lock();
            for (_, sha, size) in found {
                index.tick += 1;
                let tick = index.tick;
                index.entries.insert(sha, (size, tick));
                index.total += size;
            }
        }
        cache.evict(None)?;
        Ok(cache)
    }

    /// The package with this sha256, if cached; marks it used.
    pub fn get(&self, sha: &str) -> io::Result<Option<Vec<u8>>> {
        {
            let mut index = self.lock();
            index.tick += 1;
            let tick = index.tick;
            match index.entries.get_mut(sha) {
                Some(entry) => entry.1 = tick,
                None => return Ok(None),
            }
        }
        match fs::read(self.path_of(sha)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(sha);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Caches a package whose sha256 the caller has checked; evicts the least recently used
    /// others to stay within the bound. A package larger than the whole bound is not cached
    /// (`Ok(false)`).
    pub fn insert(&self, sha: &str, bytes: &[u8]) -> io::Result<bool> {
        let size = bytes.len() as u64;
        if size > self.bound || !is_sha256_hex(sha) {
            return Ok(false);
        }
        {
            let mut index = self.lock();
            index.tick += 1;
            let tick = index.tick;
            if let Some(entry) = index.entries.get_mut(sha) {
                entry.1 = tick;
                return Ok(true);
            }
        }
        let dest = self.path_of(sha);
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir)?;
        let mut tmp = tempfile::Builder::new()
            .suffix(".part")
            .tempfile_in(self.root.join("tmp"))?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&dest).map_err(|e| e.error)?;
        {
            let mut index = self.lock();
            index.tick += 1;
            let tick = index.tick;
            if index.entries.insert(sha.to_owned(), (size, tick)).is_none() {
                index.total += size;
            }
        }
        self.evict(Some(sha))?;
        Ok(true)
    }

    /// Drops a package from the cache (its blob was collected from the store).
    pub fn remove(&self, sha: &str) -> io::Result<()> {
        if !is_sha256_hex(sha) {
            return Ok(());
        }
        self.forget(sha);
        match fs::remove_file(self.path_of(sha)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Bytes of packages cached now.
    pub fn total_bytes(&self) -> u64 {
        self.lock().total
    }

    /// Whether a package is cached now.
    pub fn contains(&self, sha: &str) -> bool {
        self.lock().entries.contains_key(sha)
    }

    /// Removes least recently used packages (never `keep`) until the total is within bound.
    fn evict(&self, keep: Option<&str>) -> io::Result<()> {
        let victims = {
            let mut index = self.lock();
            let mut by_age: Vec<(u64, String, u64)> = index
                .entries
                .iter()
                .filter(|(sha, _)| Some(sha.as_str()) != keep)
                .map(|(sha, (size, tick))| (*tick, sha.clone(), *size))
                .collect();
            by_age.sort();
            let mut victims = Vec::new();
            for (_, sha, size) in by_age {
                if index.total <= self.bound {
                    break;
                }
                index.entries.remove(&sha);
                index.total -= size;
                victims.push(sha);
            }
            victims
        };
        for sha in victims {
            match fs::remove_file(self.path_of(&sha)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    fn forget(&self, sha: &str) {
        let mut index = self.lock();
        if let Some((size, _)) = index.entries.remove(sha) {
            index.total -= size;
        }
    }

    fn path_of(&self, sha: &str) -> PathBuf {
        let prefix = sha.get(..2).unwrap_or("00");
        self.root.join("sha256").join(prefix).join(sha)
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // A plain index: a panicking holder cannot leave it torn beyond a wrong total, which
        // the next eviction bounds anyway.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn files_under(root: &Path) -> u64 {
        let mut total = 0;
        for prefix in fs::read_dir(root.join("sha256")).unwrap() {
            for file in fs::read_dir(prefix.unwrap().path()).unwrap() {
                total += file.unwrap().metadata().unwrap().len();
            }
        }
        total
    }

    #[test]
    fn stays_within_its_bound_evicting_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 250).unwrap();
        let a = vec![b'a'; 100];
        let b = vec![b'b'; 100];
        let c = vec![b'c'; 100];
        assert!(cache.insert(&sha(&a), &a).unwrap());
        assert!(cache.insert(&sha(&b), &b).unwrap());
        // `a` is used again, so `b` is now the least recently used.
        assert_eq!(cache.get(&sha(&a)).unwrap().as_deref(), Some(&a[..]));
        assert!(cache.insert(&sha(&c), &c).unwrap());
        assert!(cache.contains(&sha(&a)));
        assert!(!cache.contains(&sha(&b)), "the least recently used goes");
        assert!(cache.contains(&sha(&c)));
        assert_eq!(cache.get(&sha(&b)).unwrap(), None);
        assert_eq!(cache.total_bytes(), 200);
        assert_eq!(files_under(dir.path()), 200, "evicted files are deleted");
    }

    #[test]
    fn a_package_larger_than_the_bound_is_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 50).unwrap();
        let small = vec![1u8; 40];
        let big = vec![2u8; 51];
        assert!(cache.insert(&sha(&small), &small).unwrap());
        assert!(!cache.insert(&sha(&big), &big).unwrap());
        assert!(cache.contains(&sha(&small)), "nothing evicted for it");
        assert_eq!(cache.get(&sha(&big)).unwrap(), None);
    }

    #[test]
    fn a_zero_bound_caches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 0).unwrap();
        assert!(!cache.insert(&sha(b"x"), b"x").unwrap());
        assert_eq!(files_under(dir.path()), 0);
    }

    #[test]
    fn reopening_keeps_packages_and_applies_a_smaller_bound() {
        let dir = tempfile::tempdir().unwrap();
        let a = vec![b'a'; 100];
        let b = vec![b'b'; 100];
        {
            let cache = DiskCache::open(dir.path(), 1000).unwrap();
            cache.insert(&sha(&a), &a).unwrap();
            // Distinct modification times, whatever the file system's granularity.
            let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
            fs::File::options()
                .write(true)
                .open(cache.path_of(&sha(&a)))
                .unwrap()
                .set_modified(old)
                .unwrap();
            cache.insert(&sha(&b), &b).unwrap();
        }
        fs::write(dir.path().join("tmp").join("left.part"), b"half").unwrap();
        let cache = DiskCache::open(dir.path(), 150).unwrap();
        assert!(!dir.path().join("tmp").join("left.part").exists());
        assert!(!cache.contains(&sha(&a)), "the older one is evicted");
        assert_eq!(cache.get(&sha(&b)).unwrap().as_deref(), Some(&b[..]));
        assert_eq!(cache.total_bytes(), 100);
    }

    #[test]
    fn concurrent_inserts_and_reads_stay_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let cache = std::sync::Arc::new(DiskCache::open(dir.path(), 1000).unwrap());
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    for i in 0..50u8 {
                        let package =
                            vec![t.wrapping_mul(50).wrapping_add(i); 90 + usize::from(i % 7)];
                        cache.insert(&sha(&package), &package).unwrap();
                        if let Some(read) = cache.get(&sha(&package)).unwrap() {
                            assert_eq!(read, package, "a cached package is whole");
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(cache.total_bytes() <= 1000);
        assert_eq!(
            files_under(dir.path()),
            cache.total_bytes(),
            "index and disk agree"
        );
    }

    #[test]
    fn a_file_removed_behind_its_back_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1000).unwrap();
        cache.insert(&sha(b"gone"), b"gone").unwrap();
        fs::remove_file(cache.path_of(&sha(b"gone"))).unwrap();
        assert_eq!(cache.get(&sha(b"gone")).unwrap(), None);
        assert_eq!(cache.total_bytes(), 0);
        cache.remove(&sha(b"gone")).unwrap();
    }
}
