//! The seccomp filter every container runs under: a deny list of escape and attack syscalls.
//!
//! Denied calls fail with `EPERM` instead of killing the caller, so programs that probe for a
//! feature carry on without it. `clone3` is the exception: its flags sit in user memory, out of
//! BPF's reach, so it fails with `ENOSYS`, which makes libc fall back to `clone`, whose flags the
//! filter does check. seccompiler gives one action per filter, so the two answers are two
//! programs, installed together by [`apply`].

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the container seccomp filter is written for x86_64 and aarch64");

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter")]
    Build(#[from] BackendError),
    #[error("cannot install the seccomp filter")]
    Install(#[from] seccompiler::Error),
}

/// The compiled container filter, ready to install with [`apply`].
#[derive(Debug, Clone)]
pub struct ContainerFilter {
    /// `EPERM` for the deny list and for namespace-creating `clone`/`unshare`.
    deny: BpfProgram,
    /// `ENOSYS` for `clone3`.
    clone3: BpfProgram,
}

/// Denied whatever their arguments.
const DENIED: &[i64] = &[
    // Mounts and the root filesystem.
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    // Other processes' memory and namespaces.
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_setns,
    // The kernel itself.
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_lookup_dcookie,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_syslog,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_quotactl_fd,
    // io_uring: a large attack surface with a history of escapes; runtimes that probe for it
    // (libuv, for one) fall back to threads.
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    // Kernel keyrings, shared across containers.
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    // File handles bypass path-based confinement.
    libc::SYS_name_to_handle_at,
    libc::SYS_open_by_handle_at,
    // The host's clock.
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    // Raw port I/O.
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
];

/// Namespace flags `clone` and `unshare` must not carry. `CLONE_NEWTIME` is `unshare`-only: on
/// `clone` its bit belongs to the exit signal.
const CLONE_NAMESPACES: &[libc::c_int] = &[
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWCGROUP,
];

/// Builds the filter for the architecture this binary was compiled for.
pub fn container_filter() -> Result<ContainerFilter, SeccompError> {
    build(&[])
}

/// The filter of a SnapStart template (a container whose runtime ran the function's init and
/// then serves forks): the container filter with `setns` allowed, and nothing else relaxed
/// (`unshare` and `clone` with namespace flags, `mount`, `ptrace` stay denied). Its forked
/// child needs `setns` to enter a new environment's namespaces, which it can only do into
/// namespaces whose user namespace its uid owns (see the agent's `container/snap.rs`), and it
/// installs the full [`container_filter`] on top before it runs the function again.
pub fn snap_template_filter() -> Result<ContainerFilter, SeccompError> {
    build(&[libc::SYS_setns])
}

/// The container filter without the syscalls in `allowed`.
fn build(allowed: &[i64]) -> Result<ContainerFilter, SeccompError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)?;

    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED
        .iter()
        .filter(|nr| !allowed.contains(nr))
        .map(|&nr| (nr, Vec::new()))
        .collect();
    let unshare_flags: Vec<libc::c_int> = CLONE_NAMESPACES
        .iter()
        .copied()
        .chain([libc::CLONE_NEWTIME])
        .collect();
    rules.insert(libc::SYS_clone, any_flag(CLONE_NAMESPACES)?);
    rules.insert(libc::SYS_unshare, any_flag(&unshare_flags)?);
    let deny = SeccompFilter::new(rules, SeccompAction::Allow, errno(libc::EPERM), arch)?;

    let clone3 = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    let clone3 = SeccompFilter::new(clone3, SeccompAction::Allow, errno(libc::ENOSYS), arch)?;

    Ok(ContainerFilter {
        deny: deny.try_into()?,
        clone3: clone3.try_into()?,
    })
}

/// Installs `filter` on the calling thread, setting `no_new_privs` as seccomp requires.
///
/// It holds for the thread and everything it later forks or execs, so call it in the container's
/// first process, single-threaded, just before exec. It does not allocate, so it is safe between
/// fork and exec (in `Command::pre_exec`).
pub fn apply(filter: &ContainerFilter) -> Result<(), SeccompError> {
    seccompiler::apply_filter(&filter.deny)?;
    seccompiler::apply_filter(&filter.clone3)?;
    Ok(())
}

impl ContainerFilter {
    /// The programs [`apply`] installs, in its order, as the kernel reads them (`struct
    /// sock_filter`s in native byte order): for a process that installs them itself with
    /// `seccomp(2)` or `prctl(PR_SET_SECCOMP)` (a runtime forked from a template).
    pub fn programs(&self) -> Vec<Vec<u8>> {
        [&self.deny, &self.clone3]
            .into_iter()
            .map(|program| {
                program
                    .iter()
                    .flat_map(|insn| {
                        let mut bytes = Vec::with_capacity(8);
                        bytes.extend_from_slice(&insn.code.to_ne_bytes());
                        bytes.push(insn.jt);
                        bytes.push(insn.jf);
                        bytes.extend_from_slice(&insn.k.to_ne_bytes());
                        bytes
                    })
                    .collect()
            })
            .collect()
    }
}

fn errno(code: libc::c_int) -> SeccompAction {
    // errno values are small positive numbers.
    SeccompAction::Errno(code.unsigned_abs())
}

/// One rule per flag: the first argument has that bit set. Rules of a syscall are OR-ed.
fn any_flag(flags: &[libc::c_int]) -> Result<Vec<SeccompRule>, SeccompError> {
    flags
        .iter()
        .map(|&flag| {
            let bit = u64::from(flag.unsigned_abs());
            // The kernel reads clone's flags as 32 bits; every namespace bit is in the low word.
            let condition = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(bit),
                bit,
            )?;
            Ok(SeccompRule::new(vec![condition])?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_for_this_architecture() {
        let filter = container_filter().unwrap();
        // Every denied syscall costs at least a compare and a jump, plus the namespace rules.
        assert!(
            filter.deny.len() > 2 * DENIED.len(),
            "{}",
            filter.deny.len()
        );
        assert!(!filter.clone3.is_empty());
    }

    #[test]
    fn programs_are_the_installed_instructions() {
        let filter = container_filter().unwrap();
        let programs = filter.programs();
        assert_eq!(programs.len(), 2);
        assert_eq!(programs[0].len(), filter.deny.len() * 8);
        assert_eq!(programs[1].len(), filter.clone3.len() * 8);
        // Each program ends with a BPF_RET (class 0x06).
        for program in &programs {
            let last = &program[program.len() - 8..];
            assert_eq!(u16::from_ne_bytes([last[0], last[1]]) & 0x07, 0x06);
        }
    }

    #[test]
    fn the_snap_template_filter_allows_setns_and_nothing_else() {
        let full = container_filter().unwrap();
        let snap = snap_template_filter().unwrap();
        // Shorter by setns's rule; the clone3 program is the same.
        assert!(snap.deny.len() < full.deny.len());
        assert_eq!(snap.clone3, full.clone3);
        // The same instructions but setns's: every other syscall number is still checked.
        let checked = |program: &BpfProgram, nr: i64| {
            program
                .iter()
                .any(|insn| insn.code & 0x07 == 0x05 && i64::from(insn.k) == nr)
        };
        assert!(checked(&full.deny, libc::SYS_setns));
        assert!(!checked(&snap.deny, libc::SYS_setns));
        for nr in [
            libc::SYS_mount,
            libc::SYS_ptrace,
            libc::SYS_unshare,
            libc::SYS_clone,
        ] {
            assert!(checked(&snap.deny, nr), "{nr}");
        }
    }

    #[test]
    fn deny_list_has_no_duplicates() {
        let mut sorted = DENIED.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), DENIED.len());
        assert!(!DENIED.contains(&libc::SYS_clone));
        assert!(!DENIED.contains(&libc::SYS_unshare));
    }
}
