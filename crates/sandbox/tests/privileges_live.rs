//! `drop_to` on the real kernel: a forked child that dropped to nobody keeps nothing of root.

// fork(2).
#![allow(unsafe_code)]

mod common;

use std::fs::{self, File, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ember_sandbox::privileges::drop_to;
use nix::unistd::{setuid, Gid, Uid};

const NOBODY: u32 = 65534;

fn probe(secret: &Path, public: &Path) -> Result<(), String> {
    drop_to(Uid::from_raw(NOBODY), Gid::from_raw(NOBODY)).map_err(|e| format!("drop_to: {e}"))?;

    match File::open(secret) {
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {}
        other => return Err(format!("0600 root file: {other:?}")),
    }
    // The control: files meant for everyone still open, so the denial above is about rights.
    match fs::read_to_string(public) {
        Ok(s) if s == "public" => {}
        other => return Err(format!("0644 file: {other:?}")),
    }
    if setuid(Uid::from_raw(0)).is_ok() {
        return Err("setuid(0) succeeded".into());
    }

    let status = fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let want = [
        ("Uid", "65534 65534 65534 65534"),
        ("Gid", "65534 65534 65534 65534"),
        ("Groups", ""),
        ("CapInh", "0000000000000000"),
        ("CapPrm", "0000000000000000"),
        ("CapEff", "0000000000000000"),
        ("CapBnd", "0000000000000000"),
        ("CapAmb", "0000000000000000"),
        ("NoNewPrivs", "1"),
    ];
    for (name, value) in want {
        if field(name) != value {
            return Err(format!("{name}: {:?}, want {value:?}", field(name)));
        }
    }
    Ok(())
}

#[test]
fn dropped_child_cannot_read_root_files_and_has_no_capabilities() {
    if !common::privileged() {
        return;
    }
    // A directory anyone may enter, holding one file only root may read and one anyone may.
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), Permissions::from_mode(0o755)).unwrap();
    let (secret, public) = (dir.path().join("secret"), dir.path().join("public"));
    fs::write(&secret, "secret").unwrap();
    fs::set_permissions(&secret, Permissions::from_mode(0o600)).unwrap();
    fs::write(&public, "public").unwrap();
    fs::set_permissions(&public, Permissions::from_mode(0o644)).unwrap();

    common::in_forked_child(|| probe(&secret, &public));
}
