//! Provisioned concurrency's I/O: keeps the environments [`ember_fleet::provisioned`] calls for.
//!
//! A target is one qualifier of one function (`account:name:qualifier`, the fleet's *pin*),
//! resolved by the caller to the function version it runs. [`Executor::provision`] sets it and
//! [`Executor::unprovision`] drops it; on every tick of the fleet's clock (and at once after a
//! change) the fleet's plan says which environments to create, and each is made like an
//! on-demand container (placed in the account's VMs, taking or booting VMs as needed), then
//! initialized ahead of any invocation (`AwaitInit`: the runtime started and polled `/next`)
//! and pinned. A pinned environment serves invocations of its version before any other (warm,
//! no init), is never reclaimed by keep-alive nor evicted, and when it dies the next plan
//! re-creates it. Failures (an init that fails, no memory on the host or under the account's
//! ceiling) are reported to the fleet, which holds the target back for a growing delay and
//! reports `FAILED` with the reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ember_fleet::{FnKey, Placement};
use ember_store::Function;
use tracing::{debug, warn};

use crate::{lock, Executor, Inner, StartKind};

pub use ember_fleet::ProvisionedStatus;

/// The shortest time a provisioned environment's init may take (Lambda's Init phase limit); a
/// function with a longer timeout gets its timeout.
const MIN_INIT_TIMEOUT: Duration = ember_protocol::INIT_TIMEOUT;

/// How many placements a creation tries before it gives up (a VM may vanish under it).
const PLACEMENT_ATTEMPTS: usize = 4;

/// The targets' function versions, by pin.
#[derive(Debug, Default)]
pub(crate) struct Targets(pub(crate) Mutex<HashMap<String, Function>>);

/// A target's state, for the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionedView {
    pub requested: u32,
    /// Environments initialized and ready for invocations.
    pub available: u32,
    /// Environments allocated to the target: Ember allocates an environment when it is ready.
    pub allocated: u32,
    pub status: ProvisionedStatus,
}

/// The fleet's name of a target.
pub fn pin(account_id: &str, function_name: &str, qualifier: &str) -> String {
    format!("{account_id}:{function_name}:{qualifier}")
}

impl Executor {
    /// Keeps `requested` initialized environments of `function` (the version `qualifier`
    /// resolves to) ready for its invocations, replacing any earlier request for the qualifier.
    pub fn provision(&self, function: &Function, qualifier: &str, requested: u32) {
        let pin = pin(&function.account_id, &function.name, qualifier);
        let replaced = lock(&self.inner.provisioned.0).insert(pin.clone(), function.clone());
        let gone = {
            let mut fleet = lock(&self.inner.fleet);
            // Another version for the same qualifier (an alias moved): its environments go.
            let gone = match replaced {
                Some(old) if old.revision_id != function.revision_id => {
                    fleet.unprovision(&pin, Instant::now())
                }
                _ => ember_fleet::Expired::default(),
            };
            fleet.provision(&pin, requested);
            gone
        };
        debug!(pin, requested, "provisioned concurrency set");
        self.inner.destroy(gone);
        self.inner.provision();
    }

    /// Drops a qualifier's provisioned concurrency: its idle environments are destroyed now,
    /// busy ones end as on-demand containers do. Returns whether it had any.
    pub fn unprovision(&self, account_id: &str, function_name: &str, qualifier: &str) -> bool {
        let pin = pin(account_id, function_name, qualifier);
        let known = lock(&self.inner.provisioned.0).remove(&pin).is_some();
        let gone = lock(&self.inner.fleet).unprovision(&pin, Instant::now());
        if !gone.is_empty() {
            debug!(pin, ?gone, "releasing provisioned environments");
            self.inner.freed.notify_waiters();
            self.inner.destroy(gone);
        }
        known
    }

    /// Drops the provisioned concurrency of every qualifier of a function (it was deleted).
    pub fn unprovision_function(&self, account_id: &str, function_name: &str) {
        let prefix = pin(account_id, function_name, "");
        let qualifiers: Vec<String> = lock(&self.inner.provisioned.0)
            .keys()
            .filter_map(|pin| pin.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        for qualifier in qualifiers {
            self.unprovision(account_id, function_name, &qualifier);
        }
    }

    /// The function version a qualifier's provisioned environments are made of (with the
    /// egress they are made under), if it has a target.
    pub fn provisioned_function(
        &self,
        account_id: &str,
        function_name: &str,
        qualifier: &str,
    ) -> Option<Function> {
        lock(&self.inner.provisioned.0)
            .get(&pin(account_id, function_name, qualifier))
            .cloned()
    }

    /// A qualifier's provisioned concurrency, if set.
    pub fn provisioned(
        &self,
        account_id: &str,
        function_name: &str,
        qualifier: &str,
    ) -> Option<ProvisionedView> {
        let view =
            lock(&self.inner.fleet).provisioned(&pin(account_id, function_name, qualifier))?;
        Some(ProvisionedView {
            requested: view.requested,
            available: view.ready,
            allocated: view.ready,
            status: view.status,
        })
    }
}

impl Inner {
    /// Carries out the fleet's provisioning plan: lets surplus environments go, and starts
    /// creating the missing ones in the background.
    pub(crate) fn provision(self: &Arc<Self>) {
        if self.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let plan = lock(&self.fleet).provision_plan(Instant::now());
        if !plan.release.is_empty() {
            self.freed.notify_waiters();
            self.destroy(plan.release);
        }
        for pin in plan.create {
            tokio::spawn(provision_one(Arc::downgrade(self), pin));
        }
    }
}

/// Creates one environment for `pin`, and reports the outcome to the fleet.
async fn provision_one(inner: Weak<Inner>, pin: String) {
    let Some(inner) = inner.upgrade() else { return };
    let function = lock(&inner.provisioned.0).get(&pin).cloned();
    let Some(function) = function else {
        lock(&inner.fleet)
            .provisioner()
            .failed(&pin, "dropped", Instant::now());
        return;
    };
    let executor = Executor {
        inner: inner.clone(),
    };
    let started = Instant::now();
    match create(&executor, &function).await {
        Ok((vm_id, container_id, init_ms)) => {
            let now = Instant::now();
            let current = lock(&inner.provisioned.0).get(&pin).is_some_and(|f| {
                f.revision_id == function.revision_id && f.egress == function.egress
            });
            {
                let mut fleet = lock(&inner.fleet);
                if current {
                    fleet.pool().pin(&container_id, &pin);
                    fleet.provisioner().created(&pin);
                } else {
                    fleet.provisioner().failed(&pin, "replaced", now);
                }
                // Pinned, it waits for its version's invocations; else it is an on-demand
                // container like any other, reclaimed when it idles.
                fleet.pool().release(&container_id, true, now);
            }
            inner.freed.notify_waiters();
            debug!(
                pin,
                vm_id,
                container_id,
                init_ms,
                took_ms = started.elapsed().as_secs_f64() * 1e3,
                "provisioned environment ready"
            );
        }
        Err(reason) => {
            warn!(pin, %reason, "cannot create a provisioned environment");
            lock(&inner.fleet)
                .provisioner()
                .failed(&pin, &reason, Instant::now());
        }
    }
}

/// Places, creates and initializes one container of `function`; returns its VM, its id and
/// its init duration in ms, or why it could not. On success the container is in the pool,
/// busy; the caller releases it.
async fn create(executor: &Executor, function: &Function) -> Result<(String, String, f64), String> {
    let inner = &executor.inner;
    let container_mb = inner.sizer.effective_mb(function).await;
    let key = FnKey {
        account_id: function.account_id.clone(),
        function_name: function.name.clone(),
        version: function.version.clone(),
        revision_id: function.revision_id.clone(),
        memory_mb: container_mb,
        egress_denied: executor.egress_of(function) == ember_protocol::Egress::Deny,
    };
    let memory_mb = u64::from(container_mb);
    let runtime = function.spec.runtime.as_deref().unwrap_or_default();
    let mut lease = None;
    for _ in 0..PLACEMENT_ATTEMPTS {
        let placement = lock(&inner.fleet).place_new(&key, memory_mb, runtime, Instant::now());
        let made = match placement {
            Placement::NewContainer { vm_id } | Placement::TakeWarming { vm_id } => {
                inner.replenish();
                let Some(vm) = executor.vm(&vm_id) else {
                    lock(&inner.fleet).pool().remove_vm(&vm_id, Instant::now());
                    continue;
                };
                executor
                    .new_container(vm, &key, function, memory_mb, StartKind::ColdContainer)
                    .await
            }
            Placement::BootVm {
                vm_id,
                memory_mb: vm_mb,
            } => match inner.boot(&vm_id, vm_mb).await {
                Ok(vm) => {
                    executor
                        .new_container(vm, &key, function, memory_mb, StartKind::ColdVm)
                        .await
                }
                Err(err) => Err(err),
            },
            Placement::Warm { container_id, .. } => {
                // `place_new` reuses nothing; should it, the container goes back idle.
                lock(&inner.fleet)
                    .pool()
                    .release(&container_id, true, Instant::now());
                continue;
            }
            Placement::Wait => {
                let evicted = lock(&inner.fleet)
                    .pool()
                    .evict_for(&key, memory_mb, Instant::now());
                match evicted {
                    Some(evicted) => {
                        inner.destroy(evicted);
                        continue;
                    }
                    None => {
                        return Err(format!(
                            "no memory for another {memory_mb} MB environment on this host \
                             (its capacity, or the account's --account-memory-mb)"
                        ))
                    }
                }
            }
        };
        lease = Some(made.map_err(|err| ember_stdx::error_chain(&err))?);
        break;
    }
    let Some(lease) = lease else {
        return Err("the VMs placed on went away".into());
    };
    let init_timeout =
        MIN_INIT_TIMEOUT.max(Duration::from_secs(u64::from(function.spec.timeout_s)));
    let bound = init_timeout + inner.config.agent_grace;
    let init = tokio::time::timeout(
        bound,
        lease.vm.connection().await_init(
            &lease.container_id,
            u64::try_from(init_timeout.as_millis()).unwrap_or(u64::MAX),
        ),
    )
    .await;
    let failure = match init {
        Ok(Ok(init_ms)) => return Ok((lease.vm.id.clone(), lease.container_id, init_ms)),
        Ok(Err(err)) => crate::agent_error(&err),
        Err(_) => crate::ExecError::Vm(format!(
            "the VM's agent did not answer within {:?} of the init's deadline",
            inner.config.agent_grace
        )),
    };
    // The agent destroyed the container when the init failed; forget it, and ask again in
    // case it is still there.
    lock(&inner.fleet)
        .pool()
        .release(&lease.container_id, false, Instant::now());
    inner.freed.notify_waiters();
    match &failure {
        crate::ExecError::AgentRefused(_) => inner.destroy(ember_fleet::Expired {
            containers: vec![(lease.vm.id.clone(), lease.container_id.clone())],
            vms: Vec::new(),
        }),
        _ => inner.retire_vm(&lease.vm.id),
    }
    Err(match failure {
        crate::ExecError::AgentRefused(message) => message,
        other => ember_stdx::error_chain(&other),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use ember_protocol::{InvokeOutcome, Request};
    use ember_store::Function;

    use super::ProvisionedStatus;
    use crate::testing::{config, script, until, Answer, Harness};
    use crate::{Executor, InvokeRequest, StartKind};

    fn request(function: &Function) -> InvokeRequest {
        InvokeRequest {
            function: function.clone(),
            qualifier: None,
            request_id: uuid::Uuid::new_v4().to_string(),
            payload: Bytes::from_static(b"{}"),
            client_context: None,
            cognito_identity: None,
        }
    }

    /// The containers pinned to a target, by id.
    fn pinned(executor: &Executor, function: &Function, qualifier: &str) -> Vec<String> {
        let pin = super::pin(&function.account_id, &function.name, qualifier);
        let mut ids: Vec<String> = executor
            .fleet()
            .vms
            .iter()
            .flat_map(|vm| vm.containers.iter())
            .filter(|c| c.provisioned.as_deref() == Some(pin.as_str()))
            .map(|c| c.container_id.clone())
            .collect();
        ids.sort();
        ids
    }

    fn status(executor: &Executor, function: &Function) -> Option<ProvisionedStatus> {
        executor
            .provisioned(&function.account_id, &function.name, "1")
            .map(|v| v.status)
    }

    fn created(h: &Harness) -> usize {
        h.driver
            .seen()
            .created
            .iter()
            .filter(|(_, c)| c.function.name.starts_with('p'))
            .count()
    }

    #[tokio::test]
    async fn provisioned_environments_are_initialized_pinned_and_serve_warm() {
        let mut config = config(2, 1024);
        // Keep-alive would reclaim an idle on-demand container within a tick.
        config.fleet.container_keep_alive = Duration::from_millis(1);
        let h = Harness::start(config, script(|_| None)).await;
        let f = h.function("p", 128).await;
        h.executor.provision(&f, "1", 3);
        until("three READY", || {
            status(&h.executor, &f) == Some(ProvisionedStatus::Ready)
        })
        .await;
        let view = h.executor.provisioned(&f.account_id, "p", "1").unwrap();
        assert_eq!((view.requested, view.available, view.allocated), (3, 3, 3));
        let ready = pinned(&h.executor, &f, "1");
        assert_eq!(ready.len(), 3);
        assert_eq!(created(&h), 3);

        // Three at once: each on a provisioned environment, warm; nothing new created.
        let runs: Vec<_> = (0..3)
            .map(|_| {
                let (executor, request) = (h.executor.clone(), request(&f));
                tokio::spawn(async move { executor.invoke(request).await })
            })
            .collect();
        for run in runs {
            let response = run.await.unwrap().unwrap();
            assert_eq!(response.start, StartKind::Warm);
            assert!(!response.log.contains("Init Duration"), "{}", response.log);
        }
        assert_eq!(created(&h), 3, "an invocation made a container");

        // Several ticks past the keep-alive: still there, the same ones.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(pinned(&h.executor, &f, "1"), ready);
        assert_eq!(status(&h.executor, &f), Some(ProvisionedStatus::Ready));
    }

    #[tokio::test]
    async fn an_environment_that_dies_is_re_created() {
        let h = Harness::start(
            config(2, 1024),
            script(|r| match r {
                Request::Invoke(i) if i.invocation.payload.as_ref() == b"die" => {
                    Some(Answer::Outcome {
                        outcome: InvokeOutcome::Timeout,
                        peak_mb: 64,
                    })
                }
                _ => None,
            }),
        )
        .await;
        let f = h.function("p", 128).await;
        h.executor.provision(&f, "1", 2);
        until("READY", || {
            status(&h.executor, &f) == Some(ProvisionedStatus::Ready)
        })
        .await;
        let before = pinned(&h.executor, &f, "1");
        let mut dying = request(&f);
        dying.payload = Bytes::from_static(b"die");
        let response = h.executor.invoke(dying).await.unwrap();
        assert_eq!(response.start, StartKind::Warm);
        until("a replacement", || {
            let now = pinned(&h.executor, &f, "1");
            now.len() == 2 && now != before
        })
        .await;
        assert_eq!(created(&h), 3);
        assert_eq!(status(&h.executor, &f), Some(ProvisionedStatus::Ready));
    }

    #[tokio::test]
    async fn a_failed_init_is_reported_and_nothing_is_pinned() {
        let h = Harness::start(
            config(2, 1024),
            script(|r| {
                matches!(r, Request::AwaitInit { .. }).then(|| {
                    Answer::Refuse(
                        "the runtime's init failed: Runtime.ImportModuleError: no module 'app'"
                            .into(),
                    )
                })
            }),
        )
        .await;
        let f = h.function("p", 128).await;
        h.executor.provision(&f, "1", 2);
        until("FAILED", || {
            matches!(status(&h.executor, &f), Some(ProvisionedStatus::Failed(_)))
        })
        .await;
        let Some(ProvisionedStatus::Failed(reason)) = status(&h.executor, &f) else {
            unreachable!()
        };
        assert!(reason.contains("Runtime.ImportModuleError"), "{reason}");
        assert!(pinned(&h.executor, &f, "1").is_empty());
        // The failed environments' memory is free again.
        until("no containers", || {
            h.executor
                .fleet()
                .vms
                .iter()
                .all(|vm| vm.containers.is_empty() && vm.reserved == 0)
        })
        .await;
    }

    #[tokio::test]
    async fn no_room_fails_with_a_reason() {
        // One VM of 512 MB: two environments of 384 MB cannot both fit.
        let h = Harness::start(config(1, 512), script(|_| None)).await;
        let f = h.function("p", 384).await;
        h.executor.provision(&f, "1", 2);
        until("FAILED", || {
            matches!(status(&h.executor, &f), Some(ProvisionedStatus::Failed(_)))
        })
        .await;
        let Some(ProvisionedStatus::Failed(reason)) = status(&h.executor, &f) else {
            unreachable!()
        };
        assert!(reason.contains("no memory"), "{reason}");
        assert_eq!(
            pinned(&h.executor, &f, "1").len(),
            1,
            "the one that fits stays"
        );
    }

    #[tokio::test]
    async fn a_qualifier_moved_to_another_version_gets_new_environments() {
        let h = Harness::start(config(2, 1024), script(|_| None)).await;
        let f = h.function("p", 128).await;
        h.executor.provision(&f, "1", 2);
        until("READY", || {
            status(&h.executor, &f) == Some(ProvisionedStatus::Ready)
        })
        .await;
        let before = pinned(&h.executor, &f, "1");
        // The same qualifier (an alias, say) now names another version.
        let mut moved = f.clone();
        moved.revision_id = "another".into();
        h.executor.provision(&moved, "1", 2);
        until("READY again, with others", || {
            let now = pinned(&h.executor, &f, "1");
            status(&h.executor, &f) == Some(ProvisionedStatus::Ready)
                && now.len() == 2
                && now.iter().all(|c| !before.contains(c))
        })
        .await;
        // Invocations of the new version are warm on them; the old version's are not.
        let response = h.executor.invoke(request(&moved)).await.unwrap();
        assert_eq!(response.start, StartKind::Warm);
        let old = h.executor.invoke(request(&f)).await.unwrap();
        assert_ne!(old.start, StartKind::Warm);
    }

    #[tokio::test]
    async fn unprovisioning_releases_the_environments() {
        let h = Harness::start(config(2, 1024), script(|_| None)).await;
        let f = h.function("p", 128).await;
        h.executor.provision(&f, "1", 3);
        until("READY", || {
            status(&h.executor, &f) == Some(ProvisionedStatus::Ready)
        })
        .await;
        // Lowered: one goes.
        h.executor.provision(&f, "1", 2);
        until("two", || pinned(&h.executor, &f, "1").len() == 2).await;
        assert!(h.executor.unprovision(&f.account_id, "p", "1"));
        assert!(pinned(&h.executor, &f, "1").is_empty());
        assert!(status(&h.executor, &f).is_none());
        until("no containers", || {
            h.executor
                .fleet()
                .vms
                .iter()
                .all(|vm| vm.containers.is_empty())
        })
        .await;
        assert!(!h.executor.unprovision(&f.account_id, "p", "1"));

        // Deleting the function drops its targets too.
        h.executor.provision(&f, "1", 1);
        until("READY", || {
            status(&h.executor, &f) == Some(ProvisionedStatus::Ready)
        })
        .await;
        h.executor.function_changed(&f.account_id, "p", None);
        assert!(status(&h.executor, &f).is_none());
        assert!(pinned(&h.executor, &f, "1").is_empty());
    }
}
