//! The store on a full file system: a small tmpfs mounted for the test (it needs root). Writes
//! fail as [`StoreError::StorageFull`] and leave nothing behind, reads keep working, and writes
//! work again as soon as space returns, on the same `Store`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::spec;
use ember_store::{FunctionChange, NewLog, Store, StoreError};

/// Whether a test that needs root may run. As root: yes. Otherwise the test fails loudly, unless
/// `EMBER_TEST_UNPRIVILEGED=1` says skipping is intended (CI runs as root and never sets it).
fn privileged() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap();
    if euid == "0" {
        return true;
    }
    if std::env::var_os("EMBER_TEST_UNPRIVILEGED").is_some_and(|v| v == "1") {
        eprintln!("not root and EMBER_TEST_UNPRIVILEGED=1: skipping this privileged test");
        return false;
    }
    panic!("this test needs root (CI runs as root); set EMBER_TEST_UNPRIVILEGED=1 to skip it");
}

/// A tmpfs of `size` mounted on a temp dir, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "cannot mount a tmpfs");
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the file system holding `path` with a file at `path`, to its last byte.
fn fill(path: &Path) {
    let mut file = fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    // Whatever is left is less than a page: take it too, a byte at a time.
    while file.write(&[0]).is_ok_and(|n| n == 1) {}
}

fn temp_files(data_dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(data_dir.join("blobs").join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[tokio::test]
async fn a_full_disk_fails_writes_cleanly_keeps_reads_and_heals() {
    if !privileged() {
        return;
    }
    let disk = Tmpfs::mount("4m");
    let data_dir = disk.path().join("data");
    let store = Store::open(&data_dir).await.unwrap();
    let alice = store.create_account("alice", false).await.unwrap();
    let id = &alice.account_id;
    let kept = store
        .create_function(id, "kept", &spec(), b"the kept package")
        .await
        .unwrap();
    let ballast = disk.path().join("ballast");
    fill(&ballast);

    // A code upload fails as a full disk and takes its temp file with it.
    let big = vec![7u8; 512 * 1024];
    for _ in 0..3 {
        let err = store
            .create_function(id, "big", &spec(), &big)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::StorageFull(_)), "{err:?}");
        let err = store
            .update_function(id, "kept", None, FunctionChange::Code(&big))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::StorageFull(_)), "{err:?}");
        assert_eq!(temp_files(&data_dir), Vec::<PathBuf>::new());
    }
    // Database writes fail as a full disk (once the write-ahead log has no room left), without
    // changing anything.
    let log = |n: usize| NewLog {
        account_id: id.clone(),
        function_name: "kept".into(),
        request_id: format!("r{n}"),
        started_at_ms: n as i64,
        log: "x".repeat(64 * 1024),
    };
    let mut stored = 0;
    let refused = loop {
        match store.append_logs(&[log(stored)]).await {
            Ok(()) => stored += 1,
            Err(err) => break err,
        }
        assert!(stored < 1000, "a full disk took 64 MB of logs");
    };
    assert!(matches!(refused, StoreError::StorageFull(_)), "{refused:?}");
    for n in 0..20 {
        let err = store.append_logs(&[log(stored + n)]).await.unwrap_err();
        assert!(matches!(err, StoreError::StorageFull(_)), "{err:?}");
    }
    // Reads keep working.
    assert_eq!(store.function(id, "kept").await.unwrap().unwrap(), kept);
    assert_eq!(store.list_functions(id, None, 10).await.unwrap().len(), 1);
    assert_eq!(
        store.code(&kept.code_sha256).await.unwrap(),
        b"the kept package"
    );
    assert_eq!(
        store.logs(id, "kept", Some(0), 1000).await.unwrap().len(),
        stored
    );

    // Space returns: the same store writes again, on every connection of its pool.
    fs::remove_file(&ballast).unwrap();
    for n in 0..20 {
        store.append_logs(&[log(stored + n)]).await.unwrap();
    }
    assert_eq!(
        store.logs(id, "kept", Some(0), 1000).await.unwrap().len(),
        stored + 20
    );
    let big_fn = store
        .create_function(id, "big", &spec(), &big)
        .await
        .unwrap();
    assert_eq!(store.code(&big_fn.code_sha256).await.unwrap(), big);
    assert_eq!(temp_files(&data_dir), Vec::<PathBuf>::new());
    store.close().await;
}
