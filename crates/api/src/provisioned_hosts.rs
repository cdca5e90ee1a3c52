//! Provisioned concurrency on a store several servers share (PostgreSQL): the N environments a
//! qualifier asks for are the cluster's, split among the live servers, not N on each.
//!
//! Every server runs [`run`]: every [`SYNC_EVERY`] (and at once after a Put, Delete or alias
//! change it served) it renews its membership ([`ember_store::Store::live_hosts`]), reads every
//! config, gives its executor its [`share`] of each (the version the qualifier resolves to now),
//! drops the qualifiers whose config went, and reports what it has
//! ([`ember_store::Store::report_provisioned`]). The API answers Get and List with the sums of
//! the live servers' reports ([`cluster_view`]). Invocations on provisioned environments count
//! against the function's reserved concurrency and the account's limit across servers like any
//! other (`hostconc`), and the Put's limit check counts N once, as for one server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ember_executor::{ProvisionedStatus, ProvisionedView};
use ember_store::HostProvisioned;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;

/// How often a server renews its membership and re-reads the configs: another server's Put,
/// Delete or alias change is acted on within this.
pub const SYNC_EVERY: Duration = Duration::from_secs(2);

/// How long a server's membership and reports last without renewal: a server that died (or
/// lost the store) has its share taken over by the others within this and [`SYNC_EVERY`].
pub const HOST_TTL: Duration = Duration::from_secs(10);

/// This server's share of `requested` environments when it is the `index`th of `hosts` live
/// servers (in id order): an even split, the remainder going to the servers from one the pin
/// picks on, so that many small configs spread over the servers instead of all landing on the
/// first. The shares of all servers sum to `requested`.
pub fn share(requested: u32, hosts: usize, index: usize, pin: &str) -> u32 {
    let hosts = u32::try_from(hosts.max(1)).unwrap_or(u32::MAX);
    let index = u32::try_from(index).unwrap_or(0) % hosts;
    let first = fnv1a(pin.as_bytes()) % hosts;
    let extra = requested % hosts;
    let rank = (index + hosts - first) % hosts;
    requested / hosts + u32::from(rank < extra)
}

/// A stable hash (FNV-1a, 32 bits): every server must pick the same server for a pin.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, b| {
        (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The cluster's view of a qualifier from the live servers' reports: the ready environments
/// summed (at most `requested`), `FAILED` with a server's reason while any server's last
/// attempt failed and the sum falls short, `READY` once the sum is reached. `None` before any
/// server reported.
pub fn cluster_view(reports: &[HostProvisioned], requested: u32) -> Option<ProvisionedView> {
    if reports.is_empty() {
        return None;
    }
    let ready = reports
        .iter()
        .fold(0_u32, |sum, r| sum.saturating_add(r.ready))
        .min(requested);
    let failed = reports.iter().find(|r| r.status == "FAILED");
    let status = if ready >= requested {
        ProvisionedStatus::Ready
    } else if let Some(failed) = failed {
        ProvisionedStatus::Failed(failed.reason.clone().unwrap_or_default())
    } else {
        ProvisionedStatus::InProgress
    };
    Some(ProvisionedView {
        requested,
        available: ready,
        allocated: ready,
        status,
    })
}

/// The view the API answers for a qualifier: the cluster's on a shared store, else this
/// server's executor's.
pub(crate) async fn view(
    state: &AppState,
    account_id: &str,
    function_name: &str,
    qualifier: &str,
    requested: u32,
) -> Result<Option<ProvisionedView>, ApiError> {
    if !state.store.is_shared() {
        return Ok(state
            .executor
            .as_ref()
            .and_then(|e| e.provisioned(account_id, function_name, qualifier)));
    }
    let reports = state
        .store
        .provisioned_on_hosts(account_id, function_name, qualifier, now_ms())
        .await?;
    Ok(cluster_view(&reports, requested))
}

/// Wakes this server's [`run`] (a config or what a qualifier names changed here).
pub(crate) fn wake(state: &AppState) {
    state.provisioned_sync.notify_one();
}

/// Keeps this server's share of every qualifier's provisioned concurrency, until the server
/// stops (the task is dropped); then call [`leave`].
pub async fn run(state: AppState) {
    let mut applied = HashMap::new();
    let mut failing = false;
    loop {
        match sync_once(&state, &mut applied).await {
            Ok(()) => {
                if failing {
                    tracing::info!("provisioned concurrency in step with the other servers again");
                }
                failing = false;
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(error = %err, "cannot share provisioned concurrency with the other servers; keeping the current shares");
                }
                failing = true;
            }
        }
        let _ = tokio::time::timeout(SYNC_EVERY, state.provisioned_sync.notified()).await;
    }
}

/// Forgets this server's membership and reports, so the others take over its share at their
/// next sync: called as the server stops.
pub async fn leave(state: &AppState) {
    // Bounded: a server whose database is gone still stops promptly (its membership then
    // runs out by itself).
    match tokio::time::timeout(LEAVE_TIMEOUT, state.store.leave_hosts()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "cannot leave the servers sharing provisioned concurrency; the others take over once its membership runs out"),
        Err(_) => tracing::warn!("the store did not answer the leave of the servers sharing provisioned concurrency; the others take over once its membership runs out"),
    }
}

/// How long a stopping server tries to leave ([`leave`]).
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);

/// What this server last gave its executor per pin: the version's revision and the share.
type Applied = HashMap<String, (String, u32)>;

async fn sync_once(state: &AppState, applied: &mut Applied) -> Result<(), ApiError> {
    let executor = state.executor()?;
    let ttl_ms = i64::try_from(HOST_TTL.as_millis()).unwrap_or(i64::MAX);
    let hosts = state.store.live_hosts(now_ms(), ttl_ms).await?;
    let index = hosts
        .iter()
        .position(|h| h == state.store.host_id())
        .unwrap_or(0);
    let configs = state.store.all_provisioned_concurrency().await?;
    let mut wanted = HashMap::with_capacity(configs.len());
    let mut reports = Vec::with_capacity(configs.len());
    for config in configs {
        let pin = ember_executor::provisioned::pin(
            &config.account_id,
            &config.function_name,
            &config.qualifier,
        );
        let caller = Caller {
            account_id: config.account_id.clone(),
            is_admin: false,
            session: None,
        };
        let function = match state
            .function(&caller, &config.function_name, Some(&config.qualifier))
            .await
        {
            Ok(function) => function,
            // Deleted meanwhile (its config goes with it), or an alias gone: nothing to keep.
            Err(_) => continue,
        };
        let mine = share(config.requested, hosts.len(), index, &pin);
        let now = (function.revision_id.clone(), mine);
        // The function's egress set through another server: environments made under the old
        // setting are replaced, as that server's own are (there, its handler did it already).
        if let Some(target) = executor.provisioned_function(
            &config.account_id,
            &config.function_name,
            &config.qualifier,
        ) {
            if target.revision_id == function.revision_id && target.egress != function.egress {
                executor.egress_changed(&target, function.egress);
            }
        }
        if applied.get(&pin) != Some(&now) {
            tracing::debug!(
                pin,
                share = mine,
                hosts = hosts.len(),
                "provisioned concurrency: this server's share"
            );
            executor.provision(&function, &config.qualifier, mine);
        }
        let view =
            executor.provisioned(&config.account_id, &config.function_name, &config.qualifier);
        let (ready, status, reason) = match view.map(|v| (v.available, v.status)) {
            Some((ready, ProvisionedStatus::Ready)) => (ready, "READY", None),
            Some((ready, ProvisionedStatus::InProgress)) => (ready, "IN_PROGRESS", None),
            Some((ready, ProvisionedStatus::Failed(reason))) => (ready, "FAILED", Some(reason)),
            None => (0, "IN_PROGRESS", None),
        };
        reports.push(HostProvisioned {
            account_id: config.account_id.clone(),
            function_name: config.function_name.clone(),
            qualifier: config.qualifier.clone(),
            share: mine,
            ready,
            status: status.to_owned(),
            reason,
        });
        wanted.insert(
            pin,
            (
                config.account_id,
                config.function_name,
                config.qualifier,
                now,
            ),
        );
    }
    // Configs gone (deleted here or on another server): their environments go.
    let gone: Vec<String> = applied
        .keys()
        .filter(|pin| !wanted.contains_key(*pin))
        .cloned()
        .collect();
    for pin in gone {
        applied.remove(&pin);
        let mut parts = pin.splitn(3, ':');
        if let (Some(account), Some(function), Some(qualifier)) =
            (parts.next(), parts.next(), parts.next())
        {
            executor.unprovision(account, function, qualifier);
        }
    }
    for (pin, (_, _, _, now)) in wanted {
        applied.insert(pin, now);
    }
    state
        .store
        .report_provisioned(&reports, now_ms(), ttl_ms)
        .await?;
    Ok(())
}

fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Shared with the handlers: the wake-up of [`run`].
pub(crate) type Wake = Arc<tokio::sync::Notify>;

#[cfg(test)]
mod tests {
    use super::{cluster_view, share};
    use ember_executor::ProvisionedStatus;
    use ember_store::HostProvisioned;

    #[test]
    fn shares_split_the_request_and_sum_to_it() {
        // (requested, hosts): every server's share is the even split or one more, and all of
        // them sum to the request.
        for (requested, hosts) in [
            (0, 1),
            (1, 1),
            (7, 1),
            (1, 3),
            (2, 3),
            (3, 3),
            (16, 3),
            (5, 2),
            (100, 7),
        ] {
            for pin in ["a:f:1", "a:f:live", "b:g:2"] {
                let shares: Vec<u32> = (0..hosts)
                    .map(|i| share(requested, hosts, i, pin))
                    .collect();
                assert_eq!(
                    shares.iter().sum::<u32>(),
                    requested,
                    "{requested} over {hosts}: {shares:?}"
                );
                let even = requested / hosts as u32;
                assert!(
                    shares.iter().all(|s| *s == even || *s == even + 1),
                    "{shares:?}"
                );
            }
        }
        // No live server known yet (the first renewal failed): this one keeps all of it.
        assert_eq!(share(4, 0, 0, "a:f:1"), 4);
    }

    #[test]
    fn single_environments_spread_over_the_servers() {
        let holders: std::collections::HashSet<usize> = (0..40)
            .map(|n| {
                let pin = format!("a:f{n}:1");
                (0..3).find(|i| share(1, 3, *i, &pin) == 1).unwrap_or(99)
            })
            .collect();
        assert_eq!(
            holders.len(),
            3,
            "one server holds every config's single environment"
        );
    }

    fn report(ready: u32, status: &str) -> HostProvisioned {
        HostProvisioned {
            account_id: "a".into(),
            function_name: "f".into(),
            qualifier: "1".into(),
            share: 2,
            ready,
            status: status.into(),
            reason: (status == "FAILED").then(|| "no memory for another 128 MB environment".into()),
        }
    }

    #[test]
    fn the_cluster_view_sums_the_servers_reports() {
        assert_eq!(cluster_view(&[], 4), None);
        let cases = [
            (
                vec![report(2, "READY"), report(2, "READY")],
                4,
                4,
                ProvisionedStatus::Ready,
            ),
            (
                vec![report(2, "READY"), report(1, "IN_PROGRESS")],
                4,
                3,
                ProvisionedStatus::InProgress,
            ),
            (
                vec![report(2, "READY"), report(1, "FAILED")],
                4,
                3,
                ProvisionedStatus::Failed("no memory for another 128 MB environment".into()),
            ),
            // A lowered request: surplus environments still being let go count as ready.
            (
                vec![report(2, "READY"), report(2, "READY")],
                3,
                3,
                ProvisionedStatus::Ready,
            ),
        ];
        for (reports, requested, available, status) in cases {
            let view = cluster_view(&reports, requested).unwrap();
            assert_eq!(
                (view.available, view.allocated, view.status),
                (available, available, status)
            );
            assert_eq!(view.requested, requested);
        }
    }
}
