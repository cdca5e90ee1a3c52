//! Dropping a process for good: an unprivileged uid and gid, no capabilities, `no_new_privs`.

use caps::errors::CapsError;
use caps::CapSet;
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
use tracing::debug;

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot clear the {0:?} capability set")]
    Capabilities(CapSet, #[source] CapsError),
    #[error("cannot clear the supplementary groups")]
    Groups(#[source] nix::Error),
    #[error("cannot switch to gid {0}")]
    Gid(Gid, #[source] nix::Error),
    #[error("cannot switch to uid {0}")]
    Uid(Uid, #[source] nix::Error),
    #[error("cannot set no_new_privs")]
    NoNewPrivs(#[source] nix::Error),
}

/// Switches the calling process to `uid`/`gid` (real, effective and saved), with no
/// supplementary groups, every capability set empty (bounding and ambient included) and
/// `no_new_privs` set, so that not even a setuid binary can win anything back.
///
/// Capability sets belong to the thread: call this in a single-threaded process, such as a
/// freshly forked container init before exec. It allocates, which glibc's fork makes safe.
pub fn drop_to(uid: Uid, gid: Gid) -> Result<(), PrivilegeError> {
    // Shrinking the bounding set needs CAP_SETPCAP, which the uid switch takes away: it goes
    // first. Ambient capabilities would survive exec, so they go too.
    clear(CapSet::Bounding)?;
    clear(CapSet::Ambient)?;
    setgroups(&[]).map_err(PrivilegeError::Groups)?;
    setresgid(gid, gid, gid).map_err(|e| PrivilegeError::Gid(gid, e))?;
    setresuid(uid, uid, uid).map_err(|e| PrivilegeError::Uid(uid, e))?;
    // Leaving uid 0 already empties the permitted and effective sets, but not for a target of
    // uid 0, and never the inheritable set. Effective must stay within permitted at each step.
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        clear(set)?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(PrivilegeError::NoNewPrivs)?;
    debug!(%uid, %gid, "dropped privileges");
    Ok(())
}

fn clear(set: CapSet) -> Result<(), PrivilegeError> {
    caps::clear(None, set).map_err(|e| PrivilegeError::Capabilities(set, e))
}
