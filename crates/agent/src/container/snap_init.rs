//! `container-init` for a SnapStart environment ([`SnapRole::Restored`]): a container whose
//! namespaces a template's forked child can enter without any privilege of its own. See
//! [`super::snap`] for the design, and ARCHITECTURE.md ("SnapStart") for why it is safe.
//!
//! # Process model
//!
//! 1. **init** (`P`, root in the VM's user namespace, already in the container's cgroup) makes
//!    itself non-dumpable, sets its children's PID namespace to the template's
//!    (`setns(CLONE_NEWPID)`: the new environment's PID namespace must be a descendant of the
//!    template's, or the template's child could not enter it) and forks `C`.
//! 2. **`C`** (root in the VM's user namespace, in the template's PID namespace) unshares a
//!    mount and a cgroup namespace, both the VM user namespace's, and builds the container's
//!    root there exactly as an ordinary container's PID 1 does (the mounts, the pivot, the
//!    read-only `/`). Then it sets its effective uid to the function's, keeping its
//!    capabilities (`SECBIT_NO_SETUID_FIXUP`), unshares a user namespace `U` (so `U`'s owner is
//!    the function's uid), waits while `P` writes its maps ([`id_map`]: the function's ids and
//!    PID 1's own, each to itself, and nothing else) and unshares mount, IPC, UTS, network,
//!    cgroup and PID namespaces, all owned by `U`. The mount namespace is a copy of the one built before, made from a more privileged
//!    user namespace: every mount in it is locked (its read-only, `nosuid`, `nodev`, `noexec`
//!    flags cannot be cleared, no mount can be taken off to reveal what is under it), so no
//!    holder of `U`'s capabilities can make the container's binds of VM directories writable.
//!    It brings the loopback up, binds the Runtime API's socket and sends it to `P`, then
//!    clones the container's PID 1 with `CLONE_PARENT`, so that PID 1 is `P`'s child (in the
//!    VM's PID namespace) and is re-parented to the agent when `P` exits, exactly as an ordinary
//!    container's is; `C` exits.
//! 3. **PID 1** tells `P` it exists (one byte; `P`'s socket has `SO_PASSCRED`, so the kernel
//!    says which pid that is in the VM's PID namespace) and goes on as any container's PID 1
//!    ([`init::first_process`]), except that its root is built: it mounts its PID namespace's
//!    `/proc` (the kernel lets a user namespace mount `proc` only where one is fully visible
//!    already: the one `C` mounted, of the template's PID namespace, stays locked under it) and
//!    sets the hostname and the open-file limit ([`finish_root`]).
//! 4. `P` reports [`Report::Started`] with PID 1's pid and the socket, and exits.

// fork(2), clone(2) with CLONE_PARENT, and prctl(PR_SET_SECUREBITS).
#![allow(unsafe_code)]

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use ember_sandbox::seccomp::ContainerFilter;
use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::libc;
use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::stat::Mode;
use nix::sys::wait::waitpid;
use nix::unistd::{fork, setresuid, ForkResult, Pid, Uid};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use super::init::{self, failed, Failure};
use super::plan::{InitPlan, Mount, Report, INIT_GID, INIT_UID};

/// `<linux/securebits.h>`: a change of uid leaves the capability sets as they are.
const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
/// A user namespace map of `ids`, each to itself: the environment's processes keep the ids a
/// fresh start gives them (the function's, PID 1's [`INIT_UID`]), and no other id exists in
/// it. Capabilities in a user namespace apply to files only where the file's owner and group
/// are mapped there, so `U`'s capabilities (which the template's forked child holds for a
/// moment) give no access to any file of root's, or of any id but these. (The cost: in a
/// SnapStart environment, files of other owners, root's included, show the overflow id 65534.)
pub fn id_map(ids: &[u32]) -> String {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids.iter().map(|id| format!("{id} {id} 1\n")).collect()
}

/// `P`; see the module docs.
pub(super) fn start_restored(
    plan: &InitPlan,
    filter: &ContainerFilter,
    template_pid: i32,
    owner: u32,
) -> Result<(), Failure> {
    let maps = [
        ("uid_map", id_map(&[owner, INIT_UID])),
        ("gid_map", id_map(&[plan.gid, INIT_GID])),
    ];
    // Nothing of the template may look into this process or its children (their memory,
    // descriptors, `/proc` links) once they are in its PID namespace and in a user namespace
    // it owns: non-dumpable, with the VM's user namespace as their memory's, they are out of
    // its reach whatever capabilities it has in `U`.
    nix::sys::prctl::set_dumpable(false).map_err(failed("non-dumpable"))?;
    let path = format!("/proc/{template_pid}/ns/pid");
    let template_pidns = open(
        path.as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(failed(format!("opening {path}")))?;
    let template_pidns = init::owned(template_pidns);
    setns(template_pidns.as_fd(), CloneFlags::CLONE_NEWPID)
        .map_err(failed("entering the template's PID namespace"))?;
    drop(template_pidns);
    let (mine, theirs) = UnixStream::pair().map_err(|e| Failure {
        stage: "creating the sync socket".into(),
        error: e.to_string(),
    })?;
    rustix::net::sockopt::set_socket_passcred(&mine, true).map_err(|e| Failure {
        stage: "SO_PASSCRED".into(),
        error: e.to_string(),
    })?;
    // SAFETY: this process is single-threaded (this mode of the binary starts no thread), so
    // the child is a complete copy of it and may run any code.
    match unsafe { fork() }.map_err(failed("fork the namespaces' maker"))? {
        ForkResult::Child => {
            drop(mine);
            match make_namespaces(plan, filter, owner, &theirs) {
                Ok(never) => match never {},
                Err(failure) => {
                    init::send(&Report::SetupFailed {
                        stage: failure.stage,
                        error: failure.error,
                    });
                    init::exit(1)
                }
            }
        }
        ForkResult::Parent { child } => {
            drop(theirs);
            let result = parent(&mine, child, &maps);
            let _ = waitpid(child, None);
            result
        }
    }
}

/// `P`'s part once `C` runs: maps `C`'s user namespace, then reports PID 1.
fn parent(sync: &UnixStream, child: Pid, maps: &[(&str, String)]) -> Result<(), Failure> {
    let (byte, _, _) = receive(sync)?;
    if byte != b'u' {
        // `C` failed and said so on the control socket.
        return Err(Failure {
            stage: "making the namespaces".into(),
            error: "the maker ended".into(),
        });
    }
    for (map, lines) in maps {
        let path = format!("/proc/{child}/{map}");
        std::fs::write(&path, lines).map_err(|e| Failure {
            stage: format!("writing {path}"),
            error: e.to_string(),
        })?;
    }
    (&*sync).write_all(b"g").map_err(|e| Failure {
        stage: "waking the namespaces' maker".into(),
        error: e.to_string(),
    })?;
    let (byte, listener, _) = receive(sync)?;
    let Some(listener) = listener.filter(|_| byte == b'l') else {
        return Err(Failure {
            stage: "making the namespaces".into(),
            error: "the maker ended without the Runtime API's socket".into(),
        });
    };
    let (byte, _, pid) = receive(sync)?;
    let Some(pid) = pid.filter(|_| byte == b'1') else {
        return Err(Failure {
            stage: "making the namespaces".into(),
            error: "the container's first process did not say its pid".into(),
        });
    };
    init::send_with(&Report::Started { pid }, Some(listener.as_fd()));
    Ok(())
}

/// Receives one byte, with the descriptor and the sender's pid (in this process's PID
/// namespace) that came with it; a 0 byte when the other end is gone.
fn receive(sync: &UnixStream) -> Result<(u8, Option<OwnedFd>, Option<i32>), Failure> {
    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1), ScmCredentials(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match rustix::net::recvmsg(
            sync,
            &mut [IoSliceMut::new(&mut byte)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(msg) => break msg.bytes,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                return Err(Failure {
                    stage: "reading the sync socket".into(),
                    error: e.to_string(),
                })
            }
        }
    };
    let (mut fd, mut pid) = (None, None);
    for message in control.drain() {
        match message {
            RecvAncillaryMessage::ScmRights(mut rights) => fd = rights.next(),
            RecvAncillaryMessage::ScmCredentials(creds) => {
                pid = Some(creds.pid.as_raw_nonzero().get())
            }
            _ => {}
        }
    }
    Ok((if got == 0 { 0 } else { byte[0] }, fd, pid))
}

/// `C`; see the module docs. Never returns on success (it exits once PID 1 exists).
fn make_namespaces(
    plan: &InitPlan,
    filter: &ContainerFilter,
    owner: u32,
    sync: &UnixStream,
) -> Result<std::convert::Infallible, Failure> {
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWCGROUP)
        .map_err(failed("unshare the building namespaces"))?;
    init::pivot_into_root(&plan.root, &plan.mounts, "the container's root")?;
    // SAFETY: PR_SET_SECUREBITS takes its value as an integer argument; nothing is read or
    // written through a pointer.
    Errno::result(unsafe { libc::prctl(libc::PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0, 0, 0) })
        .map_err(failed("keeping capabilities across the uid change"))?;
    let keep = Uid::from_raw(u32::MAX);
    setresuid(keep, Uid::from_raw(owner), keep)
        .map_err(failed(format!("taking uid {owner} as the effective one")))?;
    unshare(CloneFlags::CLONE_NEWUSER).map_err(failed("unshare the user namespace"))?;
    let mut sync_w = sync;
    sync_w.write_all(b"u").map_err(|e| Failure {
        stage: "asking for the user namespace's maps".into(),
        error: e.to_string(),
    })?;
    let mut go = [0u8; 1];
    let mut sync_r = sync;
    sync_r.read_exact(&mut go).map_err(|e| Failure {
        stage: "waiting for the user namespace's maps".into(),
        error: e.to_string(),
    })?;
    // Its capabilities in `U` are whole (it made `U`); its real and saved uid, root's, are not
    // mapped there, and none of its ids changes again until PID 1 drops to its own.
    // SAFETY: as above.
    Errno::result(unsafe { libc::prctl(libc::PR_SET_SECUREBITS, 0 as libc::c_ulong, 0, 0, 0) })
        .map_err(failed("resetting the securebits"))?;
    let listener = init::namespaces(plan.runtime_api)?;
    send_byte(sync, b'l', Some(&listener))?;
    // SAFETY: a raw clone(2) without CLONE_VM is a fork whose child's parent is this process's
    // parent (`P`): the child gets a copy of this single-threaded process, stack included, and
    // runs on it. The flags and zero pointers are what clone(2) documents for that; the libc
    // wrapper would need a separate stack, fork(2) cannot take CLONE_PARENT.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match pid {
        0 => {
            drop(listener);
            // The kernel adds this process's pid, as `P` sees it, to the byte.
            if send_byte(sync, b'1', None).is_err() {
                init::exit(1);
            }
            init::first_process(plan, filter, None)
        }
        pid if pid > 0 => init::exit(0),
        _ => Err(failed("clone the container's first process")(Errno::last())),
    }
}

fn send_byte(sync: &UnixStream, byte: u8, fd: Option<&TcpListener>) -> Result<(), Failure> {
    let fds: Vec<_> = fd.map(|f| f.as_fd()).into_iter().collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    rustix::net::sendmsg(
        sync,
        &[IoSlice::new(&[byte])],
        &mut control,
        SendFlags::empty(),
    )
    .map(drop)
    .map_err(|e| Failure {
        stage: "writing the sync socket".into(),
        error: e.to_string(),
    })
}

/// PID 1's part of a SnapStart environment's root: its own `/proc`, the hostname, Lambda's
/// open-file limit. Returns `/dev/null`.
pub(super) fn finish_root(plan: &InitPlan) -> Result<OwnedFd, Failure> {
    let none: Option<&str> = None;
    for step in &plan.mounts {
        if let Mount::Proc { path } = step {
            let at = Path::new("/").join(path);
            mount(
                Some("proc"),
                &at,
                Some("proc"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                none,
            )
            .map_err(failed(format!("mount proc on {}", at.display())))?;
        }
    }
    init::settle(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_namespace_maps_only_the_ids_its_processes_use() {
        assert_eq!(id_map(&[993, INIT_UID]), "993 993 1\n65534 65534 1\n");
        // One line per id, even when the two are the same.
        assert_eq!(id_map(&[65534, 65534]), "65534 65534 1\n");
        assert!(!id_map(&[993, INIT_UID]).starts_with("0 "));
    }
}
