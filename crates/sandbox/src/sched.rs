//! The scheduling policy of Ember's processes: `sched_setscheduler(2)` with the fair scheduler's
//! two policies for ordinary work.
//!
//! Both share the CPU by the same weights (nice values, cgroup shares and quotas apply as ever);
//! they differ in one thing: whether a task that wakes up may preempt the one running.
//! `SCHED_BATCH` never does; the woken task runs when the running one blocks or at the next
//! scheduler tick. An invocation is a chain of hand-offs between processes (server, agent,
//! runtime and back), each of which blocks within microseconds of waking the next: without
//! wake-up preemption each finishes its turn instead of being switched out and back in.

// nix has no wrapper for sched_setscheduler.
#![allow(unsafe_code)]

use nix::errno::Errno;

/// A fair-scheduler policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Policy {
    /// `SCHED_OTHER`, the kernel's default: a task that wakes may preempt the one running.
    #[default]
    Other,
    /// `SCHED_BATCH`: a task that wakes does not preempt the one running.
    Batch,
}

impl Policy {
    /// The policy's number, as `sched_setscheduler(2)` takes it and `/proc/<pid>/stat` shows it.
    pub fn as_raw(self) -> i32 {
        match self {
            Self::Other => libc::SCHED_OTHER,
            Self::Batch => libc::SCHED_BATCH,
        }
    }
}

/// Gives the calling thread `policy`; the threads and processes it creates afterwards inherit
/// it. Needs no privilege. Async-signal-safe (one system call, nothing allocated), so a child
/// between `clone` and `exec` may call it.
pub fn set_policy(policy: Policy) -> nix::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler only reads `param`, which lives across the call; pid 0 is the
    // calling thread. Both policies take a static priority of 0.
    let done = unsafe { libc::sched_setscheduler(0, policy.as_raw(), &param) };
    Errno::result(done).map(drop)
}

/// The policy number of a task, from its `/proc/<pid>/stat` (or `/proc/thread-self/stat`): the
/// 41st field, counted after the parenthesised command name, which may hold spaces.
pub fn policy_in_stat(stat: &str) -> Option<i32> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name; 41 is 38 further on.
    after_comm.split_whitespace().nth(38)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_policy() -> i32 {
        policy_in_stat(&std::fs::read_to_string("/proc/thread-self/stat").unwrap()).unwrap()
    }

    #[test]
    fn a_thread_takes_a_policy_and_its_new_threads_inherit_it() {
        // A thread of its own, so the test harness's threads keep theirs.
        std::thread::spawn(|| {
            set_policy(Policy::Batch).unwrap();
            assert_eq!(own_policy(), libc::SCHED_BATCH);
            let inherited = std::thread::spawn(own_policy).join().unwrap();
            assert_eq!(inherited, libc::SCHED_BATCH);
            set_policy(Policy::Other).unwrap();
            assert_eq!(own_policy(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_policy_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        let mut stat = format!("42 (a (b) c) S {}", fields[1..].join(" "));
        assert_eq!(policy_in_stat(&stat), Some(41));
        stat.truncate(stat.find(" 40 ").unwrap());
        assert_eq!(policy_in_stat(&stat), None, "too few fields");
        assert_eq!(policy_in_stat("42 no-parenthesis S 1 2"), None);
    }
}
