//! `GET /ember/v1/fleet`: a snapshot of the VM fleet (warming pool, active pool, retiring VMs,
//! the measured request rate and the replenish count N), for `ember fleet`. Admin only.
//!
//! The answer:
//! `{"WarmingPool": [{"VmId","MemoryMB","TemplateMemoryMB","VCpus","Runtime","Since","Booting"}],
//!   "ActivePool": [{"VmId","AccountId","MemoryMB","FreeMemoryMB","TemplateMemoryMB","VCpus",
//!                   "Since","Booting",
//!                   "PendingContainers","Containers": [{"ContainerId","FunctionName","MemoryMB",
//!                   "State","Provisioned"}]}],
//!   "Retiring": [{"VmId","MemoryMB","Since"}],
//!   "RequestRatePerSecond", "RuntimeRequestRates", "ReplenishCount", "ReplenishReason",
//!   "VmBootSeconds", "IdleVmSeconds",
//!   "HostCapacity": {"MemoryMB","VCpus","ReservedMemoryMB","FreeMemoryMB"},
//!   "Accounts": [{"AccountId","Weight","HeldMemoryMB","FairShareMB","Waiting"}],
//!   "AccountMemoryMB",
//!   "Provisioned": [{"AccountId","FunctionName","Qualifier","Requested","Ready","Creating",
//!                    "Status","StatusReason"}]}`.
//! `Accounts` lists the accounts holding memory (their active VMs') or waiting for it, with
//! their fair share now; `AccountMemoryMB` is the per-account ceiling, `null` when none.
//! A container's `Provisioned` is the qualifier whose provisioned concurrency it is kept for
//! (`null`: an on-demand container); `Provisioned` lists every provisioned-concurrency target,
//! its environments ready and being created, and its status (`IN_PROGRESS`, `READY`, `FAILED`
//! with `StatusReason`).
//! `Since` is when the VM entered its pool, RFC 3339 in UTC with milliseconds.

use std::collections::BTreeMap;
use std::time::SystemTime;

use axum::extract::State;
use axum::{Extension, Json};
use ember_fleet::{
    AccountView, ContainerView, FleetView, PoolKind, ProvisionedStatus, TargetView, VmView,
};
use serde::Serialize;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct FleetResponse {
    warming_pool: Vec<WarmingVm>,
    active_pool: Vec<ActiveVm>,
    retiring: Vec<RetiringVm>,
    request_rate_per_second: f64,
    runtime_request_rates: BTreeMap<String, f64>,
    replenish_count: u32,
    replenish_reason: String,
    vm_boot_seconds: f64,
    idle_vm_seconds: f64,
    host_capacity: HostCapacity,
    accounts: Vec<Account>,
    #[serde(rename = "AccountMemoryMB")]
    account_memory_mb: Option<u64>,
    provisioned: Vec<Provisioned>,
}

/// One provisioned-concurrency target.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
struct Provisioned {
    account_id: String,
    function_name: String,
    qualifier: String,
    requested: u32,
    ready: u32,
    creating: u32,
    status: &'static str,
    status_reason: Option<String>,
}

impl From<TargetView> for Provisioned {
    fn from(t: TargetView) -> Self {
        let (account_id, function_name, qualifier) = split_pin(&t.pin);
        let (status, status_reason) = match t.status {
            ProvisionedStatus::InProgress => ("IN_PROGRESS", None),
            ProvisionedStatus::Ready => ("READY", None),
            ProvisionedStatus::Failed(reason) => ("FAILED", Some(reason)),
        };
        Self {
            account_id,
            function_name,
            qualifier,
            requested: t.requested,
            ready: t.ready,
            creating: t.creating,
            status,
            status_reason,
        }
    }
}

/// A pin's parts: `account:function:qualifier` (none of them holds a colon).
fn split_pin(pin: &str) -> (String, String, String) {
    let mut parts = pin.splitn(3, ':').map(str::to_owned);
    (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    )
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
struct Account {
    account_id: String,
    weight: u64,
    #[serde(rename = "HeldMemoryMB")]
    held_memory_mb: u64,
    #[serde(rename = "FairShareMB")]
    fair_share_mb: u64,
    /// Its invocations waiting for capacity.
    waiting: usize,
}

impl From<AccountView> for Account {
    fn from(a: AccountView) -> Self {
        Self {
            account_id: a.account_id,
            weight: a.weight,
            held_memory_mb: a.held_mb,
            fair_share_mb: a.share_mb,
            waiting: a.waiting,
        }
    }
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
struct WarmingVm {
    vm_id: String,
    #[serde(rename = "MemoryMB")]
    memory_mb: u64,
    v_cpus: u32,
    /// Memory its runtime templates take from its containers'.
    #[serde(rename = "TemplateMemoryMB")]
    template_memory_mb: u64,
    /// The runtime the VM was readied for; `null` for any.
    runtime: Option<String>,
    since: String,
    booting: bool,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
struct ActiveVm {
    vm_id: String,
    account_id: String,
    #[serde(rename = "MemoryMB")]
    memory_mb: u64,
    #[serde(rename = "FreeMemoryMB")]
    free_memory_mb: u64,
    /// Memory its runtime templates take from its containers'.
    #[serde(rename = "TemplateMemoryMB")]
    template_memory_mb: u64,
    v_cpus: u32,
    since: String,
    booting: bool,
    /// Containers being created, not yet in `Containers`.
    pending_containers: usize,
    containers: Vec<Container>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
struct Container {
    container_id: String,
    function_name: String,
    #[serde(rename = "MemoryMB")]
    memory_mb: u64,
    /// `busy` (running an invocation) or `idle` (warm).
    state: &'static str,
    /// The qualifier it is provisioned for; `null` for an on-demand container.
    provisioned: Option<String>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
struct RetiringVm {
    vm_id: String,
    #[serde(rename = "MemoryMB")]
    memory_mb: u64,
    since: String,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
struct HostCapacity {
    #[serde(rename = "MemoryMB")]
    memory_mb: u64,
    #[serde(rename = "VCpus")]
    v_cpus: u32,
    #[serde(rename = "ReservedMemoryMB")]
    reserved_memory_mb: u64,
    #[serde(rename = "FreeMemoryMB")]
    free_memory_mb: u64,
}

pub async fn get_fleet(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<FleetResponse>, ApiError> {
    if !caller.is_admin {
        return Err(ApiError::AccessDenied(
            "Only the administrator account may view the fleet".into(),
        ));
    }
    let view = state.executor()?.fleet();
    Ok(Json(FleetResponse::new(view, SystemTime::now())))
}

impl FleetResponse {
    /// The answer for `view`, taken at wall-clock time `now`.
    fn new(view: FleetView, now: SystemTime) -> Self {
        let vcpus = view.vm_vcpus;
        let mut warming_pool = Vec::new();
        let mut active_pool = Vec::new();
        let mut retiring = Vec::new();
        for vm in view.vms {
            let since = since(&vm, now);
            match vm.pool {
                PoolKind::Warming => warming_pool.push(WarmingVm {
                    vm_id: vm.vm_id,
                    memory_mb: vm.memory_mb,
                    template_memory_mb: vm.template_memory_mb,
                    v_cpus: vcpus,
                    runtime: vm.runtime,
                    since,
                    booting: vm.booting,
                }),
                PoolKind::Active => active_pool.push(ActiveVm {
                    vm_id: vm.vm_id,
                    account_id: vm.account_id.unwrap_or_default(),
                    memory_mb: vm.memory_mb,
                    free_memory_mb: vm.free_memory_mb,
                    template_memory_mb: vm.template_memory_mb,
                    v_cpus: vcpus,
                    since,
                    booting: vm.booting,
                    pending_containers: vm.reserved,
                    containers: vm.containers.into_iter().map(Container::from).collect(),
                }),
                PoolKind::Retiring => retiring.push(RetiringVm {
                    vm_id: vm.vm_id,
                    memory_mb: vm.memory_mb,
                    since,
                }),
            }
        }
        Self {
            warming_pool,
            active_pool,
            retiring,
            request_rate_per_second: finite(view.request_rate),
            runtime_request_rates: view
                .runtime_rates
                .into_iter()
                .map(|(runtime, rate)| (runtime, finite(rate)))
                .collect(),
            replenish_count: view.replenish_count,
            replenish_reason: view.replenish_reason,
            vm_boot_seconds: finite(view.boot_seconds),
            idle_vm_seconds: finite(view.idle_vm_seconds),
            host_capacity: HostCapacity {
                memory_mb: view.capacity_mb,
                v_cpus: view.host_vcpus,
                reserved_memory_mb: view.reserved_mb,
                free_memory_mb: view.capacity_mb.saturating_sub(view.reserved_mb),
            },
            accounts: view.accounts.into_iter().map(Account::from).collect(),
            account_memory_mb: view.account_memory_mb,
            provisioned: view
                .provisioned
                .into_iter()
                .map(Provisioned::from)
                .collect(),
        }
    }
}

impl From<ContainerView> for Container {
    fn from(c: ContainerView) -> Self {
        Self {
            container_id: c.container_id,
            function_name: c.function_name,
            memory_mb: c.memory_mb,
            state: if c.busy { "busy" } else { "idle" },
            provisioned: c.provisioned.map(|pin| split_pin(&pin).2),
        }
    }
}

/// When `vm` entered its pool, as wall-clock time.
fn since(vm: &VmView, now: SystemTime) -> String {
    let at = now
        .checked_sub(vm.since.elapsed())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    rfc3339_ms(time::OffsetDateTime::from(at))
}

/// RFC 3339 in UTC with milliseconds: `2024-05-01T12:34:56.789Z`.
pub(crate) fn rfc3339_ms(t: time::OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_default()
}

/// JSON has no NaN or infinity; a rate that is not a number is reported as 0.
pub(crate) fn finite(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::{Duration, Instant};

    use serde_json::json;

    use super::*;

    fn vm(id: &str, pool: PoolKind) -> VmView {
        VmView {
            vm_id: id.into(),
            pool,
            account_id: None,
            runtime: None,
            memory_mb: 2048,
            free_memory_mb: 2048,
            template_memory_mb: 0,
            containers: vec![],
            reserved: 0,
            booting: false,
            since: Instant::now(),
        }
    }

    fn view(vms: Vec<VmView>) -> FleetView {
        FleetView {
            vms,
            request_rate: 12.5,
            runtime_rates: BTreeMap::from([("python3.11".to_owned(), 12.5)]),
            replenish_count: 2,
            replenish_reason: "rate rose".into(),
            capacity_mb: 22000,
            host_vcpus: 4,
            reserved_mb: 4096,
            vm_vcpus: 2,
            boot_seconds: 0.004,
            idle_vm_seconds: f64::NAN,
            accounts: vec![AccountView {
                account_id: "123456789012".into(),
                weight: 2,
                held_mb: 2048,
                share_mb: 14666,
                waiting: 3,
            }],
            account_memory_mb: Some(8192),
            provisioned: vec![TargetView {
                pin: "123456789012:hello:live".into(),
                requested: 2,
                ready: 1,
                creating: 0,
                status: ProvisionedStatus::Failed("no memory".into()),
            }],
        }
    }

    #[test]
    fn splits_the_vms_by_pool_in_the_documented_shape() {
        let warming = VmView {
            runtime: Some("python3.11".into()),
            booting: true,
            ..vm("vm-1-t", PoolKind::Warming)
        };
        let active = VmView {
            account_id: Some("123456789012".into()),
            free_memory_mb: 1007,
            template_memory_mb: 17,
            reserved: 1,
            containers: vec![
                ContainerView {
                    container_id: "c-1".into(),
                    account_id: "123456789012".into(),
                    function_name: "hello".into(),
                    memory_mb: 512,
                    busy: true,
                    provisioned: None,
                },
                ContainerView {
                    container_id: "c-2".into(),
                    account_id: "123456789012".into(),
                    function_name: "hello".into(),
                    memory_mb: 512,
                    busy: false,
                    provisioned: Some("123456789012:hello:live".into()),
                },
            ],
            ..vm("vm-2-t", PoolKind::Active)
        };
        let retiring = vm("vm-3-t", PoolKind::Retiring);
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_714_566_896_789);
        let got = serde_json::to_value(FleetResponse::new(
            view(vec![warming, active, retiring]),
            now,
        ))
        .unwrap();
        let since = got["WarmingPool"][0]["Since"].as_str().unwrap().to_owned();
        assert!(
            since.starts_with("2024-05-01T12:34:56.") && since.ends_with('Z'),
            "{since}"
        );
        assert_eq!(since.len(), "2024-05-01T12:34:56.789Z".len());
        let mut without_since = got.clone();
        for pool in ["WarmingPool", "ActivePool", "Retiring"] {
            without_since[pool][0]
                .as_object_mut()
                .unwrap()
                .remove("Since");
        }
        assert_eq!(
            without_since,
            json!({
                "WarmingPool": [{"VmId": "vm-1-t", "MemoryMB": 2048, "TemplateMemoryMB": 0,
                                 "VCpus": 2, "Runtime": "python3.11", "Booting": true}],
                "ActivePool": [{"VmId": "vm-2-t", "AccountId": "123456789012", "MemoryMB": 2048,
                                "FreeMemoryMB": 1007, "TemplateMemoryMB": 17, "VCpus": 2,
                                "Booting": false,
                                "PendingContainers": 1,
                                "Containers": [
                                    {"ContainerId": "c-1", "FunctionName": "hello",
                                     "MemoryMB": 512, "State": "busy", "Provisioned": null},
                                    {"ContainerId": "c-2", "FunctionName": "hello",
                                     "MemoryMB": 512, "State": "idle",
                                     "Provisioned": "live"}]}],
                "Retiring": [{"VmId": "vm-3-t", "MemoryMB": 2048}],
                "RequestRatePerSecond": 12.5,
                "RuntimeRequestRates": {"python3.11": 12.5},
                "ReplenishCount": 2,
                "ReplenishReason": "rate rose",
                "VmBootSeconds": 0.004,
                "IdleVmSeconds": 0.0,
                "HostCapacity": {"MemoryMB": 22000, "VCpus": 4, "ReservedMemoryMB": 4096,
                                 "FreeMemoryMB": 17904},
                "Accounts": [{"AccountId": "123456789012", "Weight": 2, "HeldMemoryMB": 2048,
                              "FairShareMB": 14666, "Waiting": 3}],
                "AccountMemoryMB": 8192,
                "Provisioned": [{"AccountId": "123456789012", "FunctionName": "hello",
                                 "Qualifier": "live", "Requested": 2, "Ready": 1,
                                 "Creating": 0, "Status": "FAILED",
                                 "StatusReason": "no memory"}],
            })
        );
    }

    #[test]
    fn formats_times_as_rfc3339_with_milliseconds_in_utc() {
        let t = time::macros::datetime!(2024-05-01 14:34:56.789 +02:00);
        assert_eq!(rfc3339_ms(t), "2024-05-01T12:34:56.789Z");
    }
}
