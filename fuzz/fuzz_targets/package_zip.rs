//! Fuzzes code-package ingestion: `ember_package::inspect`, then `extract` and `zip_dir`.
//!
//! Invariants: `inspect` never panics, and it describes exactly the bytes it was given; whatever
//! it accepts `extract` also accepts, with the same description, writing only inside the
//! destination (no path, and no symlink followed, leaves it), and the files and symlinks written
//! add up to the unzipped size `inspect` reported; `extract` refuses whatever `inspect` refuses;
//! and the extracted tree zips again (`zip_dir`) into a package `inspect` accepts, of the same
//! unzipped size.
#![no_main]

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::LazyLock;

use ember_package::{extract, inspect, zip_dir, PackageLimits};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// Small limits keep each run fast; the checks are the same whatever the limits.
const LIMITS: PackageLimits = PackageLimits {
    max_zipped_bytes: 1 << 20,
    max_unzipped_bytes: 4 << 20,
    max_entries: 256,
};

/// One temp dir for the whole run (made per input, it would cost more than most inputs).
static DIR: LazyLock<TempDir> = LazyLock::new(|| tempfile::tempdir().expect("temp dir"));

fuzz_target!(|data: &[u8]| {
    let inspected = inspect(data, &LIMITS);
    let dest = DIR.path().join("dest");
    if fs::remove_dir(&dest).is_err() && dest.exists() {
        make_removable(&dest);
        fs::remove_dir_all(&dest).expect("empty the destination");
    }
    fs::create_dir(&dest).expect("dest dir");
    let extracted = extract(data, &dest, &LIMITS);
    let info = match (inspected, extracted) {
        (Err(_), Err(_)) => {
            assert_inside_only(DIR.path(), &dest);
            return;
        }
        (Ok(info), Ok(again)) => {
            assert_eq!(info, again, "extract describes the zip as inspect does");
            info
        }
        (Ok(info), Err(e)) => panic!("inspect accepted ({info:?}) but extract refused: {e:?}"),
        (Err(e), Ok(info)) => panic!("inspect refused ({e:?}) but extract accepted: {info:?}"),
    };
    assert_eq!(info.zipped_bytes, data.len() as u64);
    assert_eq!(info.sha256, <[u8; 32]>::from(Sha256::digest(data)));
    assert!(info.entries >= 1 && info.entries <= LIMITS.max_entries);
    assert!(info.unzipped_bytes <= LIMITS.max_unzipped_bytes);
    assert_inside_only(DIR.path(), &dest);

    let root = fs::canonicalize(&dest).expect("canonical dest");
    let mut written = 0u64;
    walk(&root, &root, &mut written);
    assert_eq!(
        written, info.unzipped_bytes,
        "files and symlink targets add up to the unzipped size"
    );

    let rezipped = zip_dir(&dest).expect("an extracted tree zips again");
    let info2 = inspect(&rezipped, &LIMITS).expect("the re-zipped tree is a valid package");
    assert_eq!(info2.unzipped_bytes, info.unzipped_bytes);
});

/// Gives every directory under `dir` rwx for its owner, so a partial tree left by a failed
/// extraction can be removed whatever modes it was given.
fn make_removable(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                make_removable(&path);
            }
        }
    }
}

/// Only `dest` exists in the temp dir: nothing was written beside it.
fn assert_inside_only(tmp: &Path, dest: &Path) {
    let names: Vec<PathBuf> = fs::read_dir(tmp)
        .expect("read temp dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    assert_eq!(
        names,
        vec![dest.to_path_buf()],
        "nothing written outside dest"
    );
}

/// Checks every path under `dir` stays under `root`, following symlinks too, and sums the sizes
/// of regular files and symlink targets.
fn walk(dir: &Path, root: &Path, written: &mut u64) {
    for entry in fs::read_dir(dir).expect("read extracted dir") {
        let path = entry.expect("dir entry").path();
        let meta = fs::symlink_metadata(&path).expect("metadata");
        if meta.is_symlink() {
            let target = fs::read_link(&path).expect("read link");
            *written += target.as_os_str().len() as u64;
            assert!(target.is_relative(), "{path:?} -> {target:?} is absolute");
            let parent = path.parent().expect("a link has a parent");
            let lexical = normalise(&parent.join(&target));
            assert!(
                lexical.starts_with(root),
                "{path:?} -> {target:?} points outside the package"
            );
            // Whatever it resolves to through other links stays inside as well.
            if let Ok(real) = fs::canonicalize(&path) {
                assert!(real.starts_with(root), "{path:?} resolves to {real:?}");
            }
        } else if meta.is_dir() {
            walk(&path, root, written);
        } else {
            assert!(meta.is_file(), "{path:?} is not a regular file");
            *written += meta.len();
        }
    }
}

/// Resolves `.` and `..` without touching the filesystem.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
