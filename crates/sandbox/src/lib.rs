//! Ember's kernel seam: cgroups (v1 and v2), the container seccomp filter, privilege dropping and
//! the scheduling policy.
//!
//! Each module wraps one kernel interface and nothing more; assembling VMs and containers out of
//! these pieces happens above this layer. Code that touches a filesystem the kernel provides
//! (`/sys/fs/cgroup`) takes its root as a parameter, so unit tests run against fixture
//! directories without root.

pub mod cgroup;
pub mod privileges;
pub mod sched;
pub mod seccomp;
