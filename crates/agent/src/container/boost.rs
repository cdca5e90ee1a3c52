//! CPU for init: a new container's runtime runs its init with the VM's whole CPU quota, and its
//! own memory-proportional share from its first invocation on.
//!
//! A container's cgroup is created with the VM's quota ([`init_quota`]) instead of its own
//! (`CreateContainer::cpu_millis`), so that a 128 MB function's interpreter start and imports
//! are not held to 128/1769 of a vCPU, as Lambda runs the Init phase. Whatever else runs in the
//! VM still shares its CPUs with the init through the kernel's fair scheduler. The boost ends
//! ([`CpuBoost::end`], the container's own quota written back) at the first of:
//!
//! - the runtime's first `GET …/invocation/next` (the end of its init), before that request is
//!   answered: the Runtime API calls its init-end hook before it hands out an event, so no
//!   invocation ever runs boosted;
//! - an `/init/error` (or a runtime that cannot be executed), through the same hook;
//! - the init's deadline ([`ember_protocol::INIT_TIMEOUT`] after the container started, or
//!   the longer one an `AwaitInit` asks for, [`CpuBoost::hold_until`]): a runtime that never
//!   finishes its init is held to its share again then, whether or not the container lives on
//!   until its invocation times out.
//!
//! A container that dies or is destroyed during its init needs no restore: its cgroup goes
//! with it ([`CpuBoost::cancel`], so that nothing writes to the removed group).

use std::sync::{Arc, Mutex, PoisonError};

use ember_sandbox::cgroup::{Cgroup, CpuQuota, Limits};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

/// The quota a new container's init runs with, given its own and the VM's: the VM's, when it is
/// larger than the container's own; `None` (no boost) when it is not, or when the VM has no
/// quota to lend (then the container's own quota is not capped by the VM's either).
pub fn init_quota(own: CpuQuota, vm: Option<CpuQuota>) -> Option<CpuQuota> {
    let vm = vm?;
    // Compared per period: both are in the VM's period, but a different one cannot mislead.
    let more = u128::from(vm.quota_us) * u128::from(own.period_us)
        > u128::from(own.quota_us) * u128::from(vm.period_us);
    more.then_some(vm)
}

/// One container's boosted init; see the module docs.
#[derive(Debug)]
pub struct CpuBoost {
    container_id: String,
    cgroup: Arc<dyn Cgroup>,
    /// The container's own quota, written back when the boost ends.
    own: CpuQuota,
    /// Until when the boost may last; `None` once it has ended (or was cancelled).
    until: watch::Sender<Option<Instant>>,
    /// Serialises `end` and `cancel`, so that a restore never follows a cancel.
    ended: Mutex<bool>,
}

impl CpuBoost {
    /// The boost of a container whose cgroup was created with its [`init_quota`], lasting at
    /// most until `until`. Spawns its watchdog: call within a tokio runtime.
    pub fn start(
        container_id: &str,
        cgroup: Arc<dyn Cgroup>,
        own: CpuQuota,
        until: Instant,
    ) -> Arc<Self> {
        let boost = Arc::new(Self {
            container_id: container_id.to_owned(),
            cgroup,
            own,
            until: watch::Sender::new(Some(until)),
            ended: Mutex::new(false),
        });
        tokio::spawn(boost.clone().watchdog());
        boost
    }

    /// Lets the boost last until `until` instead (an `AwaitInit` waits for the init longer than
    /// an invocation does); no effect once it has ended.
    pub fn hold_until(&self, until: Instant) {
        self.until.send_if_modified(|current| match current {
            Some(at) if *at != until => {
                *at = until;
                true
            }
            _ => false,
        });
    }

    /// Whether the boost is still on.
    #[cfg(test)]
    pub fn active(&self) -> bool {
        !*self.lock()
    }

    /// Ends the boost: writes the container's own quota back. Idempotent; a write that fails
    /// is logged (the container then keeps the VM's quota: the kernel refused the lower one,
    /// which happens only if its group is gone).
    pub fn end(&self, why: &str) {
        let mut ended = self.lock();
        if *ended {
            return;
        }
        *ended = true;
        self.until.send_replace(None);
        let own = Limits {
            cpu: Some(self.own),
            ..Limits::default()
        };
        match self.cgroup.apply(&own) {
            Ok(()) => debug!(container_id = %self.container_id, why, "init CPU boost ended"),
            Err(err) => warn!(
                container_id = %self.container_id,
                error = %ember_stdx::error_chain(&err),
                "cannot restore the container's CPU quota after its init"
            ),
        }
    }

    /// Ends the boost without a write: the container is being torn down, its group removed.
    pub fn cancel(&self) {
        let mut ended = self.lock();
        *ended = true;
        self.until.send_replace(None);
    }

    /// Ends the boost at its deadline, unless it ends before.
    async fn watchdog(self: Arc<Self>) {
        let mut until = self.until.subscribe();
        loop {
            let Some(deadline) = *until.borrow_and_update() else {
                return;
            };
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    self.end("the init outlasted its deadline");
                    return;
                }
                changed = until.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        // A plain flag: a panicking holder cannot tear it.
        self.ended.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;
    use std::time::Duration;

    use ember_sandbox::cgroup::{CgroupVersion, Hierarchy};

    use super::*;

    fn quota(quota_us: u64) -> CpuQuota {
        CpuQuota {
            quota_us,
            period_us: 100_000,
        }
    }

    #[test]
    fn the_init_gets_the_vms_quota_when_it_is_more() {
        // (own, the VM's, the init's)
        let cases = [
            (quota(7_200), Some(quota(200_000)), Some(quota(200_000))),
            (quota(57_800), Some(quota(100_000)), Some(quota(100_000))),
            // Already the VM's whole quota: nothing to raise.
            (quota(100_000), Some(quota(100_000)), None),
            // No VM quota: nothing to lend.
            (quota(7_200), None, None),
            // Another period: compared per period (100 ms of 50 ms periods is 2 CPUs).
            (
                quota(150_000),
                Some(CpuQuota {
                    quota_us: 100_000,
                    period_us: 50_000,
                }),
                Some(CpuQuota {
                    quota_us: 100_000,
                    period_us: 50_000,
                }),
            ),
        ];
        for (own, vm, want) in cases {
            assert_eq!(init_quota(own, vm), want, "{own:?} in {vm:?}");
        }
    }

    /// A container group `c-1` in a fixture hierarchy of `version`, created with `limits`.
    fn group(version: CgroupVersion, limits: &Limits) -> (tempfile::TempDir, Arc<dyn Cgroup>) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let files: &[&str] = match version {
            CgroupVersion::V1 => {
                fs::create_dir_all(root.join("cpu/c-1")).unwrap();
                fs::write(root.join("cpu/cgroup.procs"), "").unwrap();
                &["cpu/c-1/cpu.cfs_quota_us", "cpu/c-1/cpu.cfs_period_us"]
            }
            CgroupVersion::V2 => {
                fs::write(root.join("cgroup.controllers"), "cpu memory pids").unwrap();
                fs::write(root.join("cgroup.subtree_control"), "").unwrap();
                fs::write(root.join("cgroup.procs"), "").unwrap();
                fs::create_dir_all(root.join("c-1")).unwrap();
                &["c-1/cpu.max"]
            }
        };
        for file in files {
            fs::write(root.join(file), "").unwrap();
        }
        let hierarchy = Hierarchy::new(root, version);
        let cgroup: Arc<dyn Cgroup> = Arc::from(hierarchy.create("c-1").unwrap());
        cgroup.apply(limits).unwrap();
        (dir, cgroup)
    }

    fn seen(version: CgroupVersion, root: &Path) -> String {
        match version {
            CgroupVersion::V1 => fs::read_to_string(root.join("cpu/c-1/cpu.cfs_quota_us")),
            CgroupVersion::V2 => fs::read_to_string(root.join("c-1/cpu.max")),
        }
        .unwrap()
        .trim()
        .to_owned()
    }

    fn boosted() -> Limits {
        Limits {
            cpu: Some(quota(200_000)),
            ..Limits::default()
        }
    }

    #[tokio::test]
    async fn ending_writes_the_own_quota_back_once_on_v1_and_v2() {
        for (version, vm, own) in [
            (CgroupVersion::V1, "200000", "7200"),
            (CgroupVersion::V2, "200000 100000", "7200 100000"),
        ] {
            let (dir, cgroup) = group(version, &boosted());
            assert_eq!(seen(version, dir.path()), vm);
            let far = Instant::now() + Duration::from_secs(60);
            let boost = CpuBoost::start("c-1", cgroup, quota(7_200), far);
            assert!(boost.active());
            boost.end("first poll");
            assert_eq!(seen(version, dir.path()), own, "{version:?}");
            assert!(!boost.active());
            // Once only: a later end writes nothing (a raised quota would stay raised).
            fs::write(
                dir.path().join(match version {
                    CgroupVersion::V1 => "cpu/c-1/cpu.cfs_quota_us",
                    CgroupVersion::V2 => "c-1/cpu.max",
                }),
                "sentinel",
            )
            .unwrap();
            boost.end("again");
            assert_eq!(seen(version, dir.path()), "sentinel");
        }
    }

    #[tokio::test]
    async fn an_init_that_outlasts_its_deadline_loses_the_boost() {
        let version = CgroupVersion::V1;
        let (dir, cgroup) = group(version, &boosted());
        let boost = CpuBoost::start(
            "c-1",
            cgroup,
            quota(7_200),
            Instant::now() + Duration::from_millis(50),
        );
        // An AwaitInit holds it longer; the deadline moves, and is kept then.
        boost.hold_until(Instant::now() + Duration::from_millis(300));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(boost.active(), "held past the first deadline");
        assert_eq!(seen(version, dir.path()), "200000");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while boost.active() {
            assert!(std::time::Instant::now() < deadline, "never ended");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(seen(version, dir.path()), "7200");
    }

    #[tokio::test]
    async fn a_cancelled_boost_writes_nothing() {
        let version = CgroupVersion::V2;
        let (dir, cgroup) = group(version, &boosted());
        let boost = CpuBoost::start(
            "c-1",
            cgroup,
            quota(7_200),
            Instant::now() + Duration::from_millis(20),
        );
        boost.cancel();
        tokio::time::sleep(Duration::from_millis(80)).await;
        boost.end("late");
        assert_eq!(seen(version, dir.path()), "200000 100000");
    }
}
