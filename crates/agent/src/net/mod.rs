//! The VM's side of the network (issue 19): the VM's link to the host, its nftables table, and
//! one veth link per container. See ARCHITECTURE.md ("The VM's side of the network") for the
//! design and its invariants, [`plan`] for the addresses and the ruleset as data.
//!
//! Everything goes through netlink (`nlink`: rtnetlink for links, addresses and routes,
//! nf_tables for the table); nothing is executed, as no `ip` or `nft` binary can be assumed in
//! a VM. A container's network namespace is reached through a netlink socket opened in it: the
//! calling thread enters `/proc/<pid>/ns/net` of one of the container's processes for the
//! socket's creation only and comes back at once; nothing of the agent runs there after.

pub mod plan;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ember_protocol::{Egress, VmNetwork};
use nlink::netlink::addr::{Ipv4Address, Ipv6Address};
use nlink::netlink::link::VethLink;
use nlink::netlink::nftables::{Chain, ChainType, CtState, Family, Hook, Policy, Priority, Rule};
use nlink::netlink::route::{Ipv4Route, Ipv6Route};
use nlink::netlink::{Connection, Nftables, Route};
use tracing::{debug, info};

use plan::{Action, ChainHook, Match};

/// What went wrong with the VM's network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0} is not valid JSON for the VM's network")]
    Config(String, #[source] serde_json::Error),
    #[error("{what}")]
    Netlink {
        what: String,
        #[source]
        source: nlink::netlink::Error,
    },
    #[error("the VM's IPv6 address and gateway come together (one without the other: {0})")]
    HalfV6(String),
    #[error("cannot set the VM's forwarding and reverse-path filtering")]
    Forwarding(#[source] std::io::Error),
    #[error("the VM's link is {0}, not {iface}", iface = plan::VM_INTERFACE)]
    Interface(String),
    #[error("the VM has no free address for another container link (at most {} at once)", plan::SLOTS - 1)]
    NoAddress,
}

fn netlink(what: impl Into<String>) -> impl FnOnce(nlink::netlink::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, source }
}

/// The VM's network, once configured (see [`VmNet::start`]).
pub struct VmNet {
    network: VmNetwork,
    /// rtnetlink in the VM's own namespace. One request at a time: netlink answers are matched
    /// by sequence number on one socket.
    route: tokio::sync::Mutex<Connection<Route>>,
    slots: Mutex<plan::Slots>,
    next: AtomicU64,
}

impl std::fmt::Debug for VmNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmNet")
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

impl VmNet {
    /// The VM's network from the agent's environment ([`ember_protocol::VM_NETWORK_ENV`]),
    /// configured; `None` without one (the containers then have only their loopback).
    pub async fn from_env() -> Result<Option<Arc<Self>>, NetError> {
        let Some(json) = std::env::var_os(ember_protocol::VM_NETWORK_ENV) else {
            return Ok(None);
        };
        let json = json.to_string_lossy().into_owned();
        let network: VmNetwork =
            serde_json::from_str(&json).map_err(|e| NetError::Config(json.clone(), e))?;
        Self::start(network).await.map(|net| Some(Arc::new(net)))
    }

    /// Configures the VM's side: loopback and the host's link up, the VM's address (a /32) on
    /// it with a route to the gateway and the default route through it, forwarding on, and the
    /// VM's table ([`plan::ruleset`]).
    pub async fn start(network: VmNetwork) -> Result<Self, NetError> {
        // The ruleset names the link; the host names it so (see `VmNetwork::interface`).
        if network.interface != plan::VM_INTERFACE {
            return Err(NetError::Interface(network.interface));
        }
        v6(&network)?;
        let route = Connection::<Route>::new().map_err(netlink("cannot open rtnetlink"))?;
        let eth = network.interface.as_str();
        route
            .set_link_up("lo")
            .await
            .map_err(netlink("cannot bring the VM's loopback up"))?;
        route
            .add_address(Ipv4Address::new(eth, network.address, 32))
            .await
            .map_err(netlink(format!("cannot give {eth} {}/32", network.address)))?;
        route
            .set_link_up(eth)
            .await
            .map_err(netlink(format!("cannot bring {eth} up")))?;
        route
            .add_route(
                Ipv4Route::from_addr(network.gateway, 32)
                    .dev(eth)
                    .scope(nlink::netlink::types::route::RouteScope::Link),
            )
            .await
            .map_err(netlink(format!(
                "cannot route {} to {eth}",
                network.gateway
            )))?;
        route
            .add_route(Ipv4Route::default_route().gateway(network.gateway).dev(eth))
            .await
            .map_err(netlink(format!("cannot route by {}", network.gateway)))?;
        // This namespace's own switches: /proc/sys/net is the opener's network namespace's.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(NetError::Forwarding)?;
        // Strict reverse-path filtering (`all` is the floor of every link's): a packet whose
        // source would not be routed back out of the link it came in on is dropped, so nothing
        // a container sends can pass as another's (it has no CAP_NET_RAW to try, either).
        std::fs::write("/proc/sys/net/ipv4/conf/all/rp_filter", "1")
            .map_err(NetError::Forwarding)?;
        if let Some((address, gateway)) = v6(&network)? {
            // No duplicate address detection: the link is the VM's and the host's alone, and an
            // address is usable at once rather than after a second of probing.
            route
                .add_address(Ipv6Address::new(eth, address, 128).nodad())
                .await
                .map_err(netlink(format!("cannot give {eth} {address}/128")))?;
            route
                .add_route(Ipv6Route::from_addr(gateway, 128).dev(eth))
                .await
                .map_err(netlink(format!("cannot route {gateway} to {eth}")))?;
            route
                .add_route(Ipv6Route::default_route().gateway(gateway).dev(eth))
                .await
                .map_err(netlink(format!("cannot route by {gateway}")))?;
            std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")
                .map_err(NetError::Forwarding)?;
        }
        install_table().await?;
        info!(address = %network.address, gateway = %network.gateway, "VM network up");
        Ok(Self {
            network,
            route: tokio::sync::Mutex::new(route),
            slots: Mutex::new(plan::Slots::default()),
            next: AtomicU64::new(0),
        })
    }

    /// The VM's network as the host gave it.
    pub fn network(&self) -> &VmNetwork {
        &self.network
    }

    /// `AWS_ENDPOINT_URL_LAMBDA` for this VM's containers.
    pub fn endpoint_url(&self) -> String {
        plan::endpoint_url(&self.network)
    }

    /// Gives the network namespace of process `pid` (a container's, with its loopback up) its
    /// link: a veth pair, `c<seq>` here and `eth0` there, a /30 of [`plan::LINK_BLOCK`], routes
    /// to the gateway and by default through the VM. The container's egress is applied later
    /// ([`ContainerLink::apply`]), when it is known (a spare's link is made before).
    pub async fn link(self: &Arc<Self>, pid: u32) -> Result<ContainerLink, NetError> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or(NetError::NoAddress)?;
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let mut link = ContainerLink {
            net: self.clone(),
            name: plan::link_name(seq),
            slot: Some(slot),
            addresses: plan::link_addresses(slot),
            inside: None,
        };
        // From here on, a failure drops `link`, which frees its addresses; what was made goes
        // with the namespace of the process that failed to become a container.
        let at = std::time::Instant::now();
        link.make(pid).await?;
        debug!(
            link = %link.name,
            make_ms = at.elapsed().as_secs_f64() * 1e3,
            "container link made"
        );
        Ok(link)
    }
}

/// The VM's IPv6 address and gateway, when it has IPv6.
fn v6(network: &VmNetwork) -> Result<Option<(std::net::Ipv6Addr, std::net::Ipv6Addr)>, NetError> {
    match (network.address_v6, network.gateway_v6) {
        (Some(address), Some(gateway)) => Ok(Some((address, gateway))),
        (None, None) => Ok(None),
        (address, gateway) => Err(NetError::HalfV6(format!(
            "address {address:?}, gateway {gateway:?}"
        ))),
    }
}

/// Installs [`plan::ruleset`] as the table [`plan::TABLE`], in one transaction.
async fn install_table() -> Result<(), NetError> {
    let nft = Connection::<Nftables>::new().map_err(netlink("cannot open nf_tables"))?;
    let mut transaction = nft.transaction().add_table(plan::TABLE, Family::Inet);
    for chain in plan::ruleset() {
        let (hook, priority) = match chain.hook {
            ChainHook::Input => (Hook::Input, Priority::Filter),
            ChainHook::Forward => (Hook::Forward, Priority::Filter),
            ChainHook::Postrouting => (Hook::Postrouting, Priority::SrcNat),
        };
        let policy = match chain.policy {
            Action::Drop => Policy::Drop,
            Action::Accept | Action::Masquerade => Policy::Accept,
        };
        let chain_type = if chain.nat {
            ChainType::Nat
        } else {
            ChainType::Filter
        };
        transaction = transaction.add_chain(
            Chain::new(plan::TABLE, chain.name)
                .family(Family::Inet)
                .hook(hook)
                .priority(priority)
                .chain_type(chain_type)
                .policy(policy),
        );
        // nlink's transaction adds a rule without NLM_F_APPEND: the kernel puts it at the head
        // of its chain. Added last to first, the chain holds them first to last.
        for (matches, action) in chain.rules.iter().rev() {
            let mut rule = Rule::new(plan::TABLE, chain.name).family(Family::Inet);
            for m in matches {
                rule = match *m {
                    Match::InputInterface(name) => rule.match_iif(name),
                    Match::OutputInterface(name) => rule.match_oif(name),
                    Match::EstablishedOrRelated => {
                        rule.match_ct_state(CtState(CtState::ESTABLISHED.0 | CtState::RELATED.0))
                    }
                    Match::Invalid => rule.match_ct_state(CtState::INVALID),
                    Match::Icmpv6(kind) => rule.match_icmpv6_type(kind),
                };
            }
            rule = match action {
                Action::Accept => rule.accept(),
                Action::Drop => rule.drop(),
                Action::Masquerade => rule.masquerade(),
            };
            transaction = transaction.add_rule(rule);
        }
    }
    transaction.commit(&nft).await.map_err(netlink(format!(
        "cannot install the VM's table {}",
        plan::TABLE
    )))
}

/// A container's link; dropping it deletes the link (both ends) and frees its addresses.
pub struct ContainerLink {
    net: Arc<VmNet>,
    name: String,
    /// `None` once handed back.
    slot: Option<u32>,
    addresses: plan::LinkAddresses,
    /// rtnetlink in the container's namespace, until its egress is applied (held no longer: a
    /// socket of a namespace keeps the namespace alive).
    inside: Option<Connection<Route>>,
}

impl std::fmt::Debug for ContainerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerLink")
            .field("name", &self.name)
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

impl ContainerLink {
    /// The VM side's name (`c<seq>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addresses(&self) -> plan::LinkAddresses {
        self.addresses
    }

    async fn make(&mut self, pid: u32) -> Result<(), NetError> {
        let name = self.name.clone();
        let inside = Connection::<Route>::new_in_namespace_path(format!("/proc/{pid}/ns/net"))
            .map_err(netlink(format!(
                "cannot open rtnetlink in process {pid}'s namespace"
            )))?;
        {
            let route = self.net.route.lock().await;
            route
                .add_link(VethLink::new(&name, plan::CONTAINER_INTERFACE).peer_netns_pid(pid))
                .await
                .map_err(netlink(format!("cannot make the link {name}")))?;
            route
                .add_address(Ipv4Address::new(&name, self.addresses.vm, 30))
                .await
                .map_err(netlink(format!("cannot address {name}")))?;
            if self.v6().is_some() {
                route
                    .add_address(Ipv6Address::new(&name, self.addresses.vm_v6, 64).nodad())
                    .await
                    .map_err(netlink(format!("cannot give {name} its IPv6 address")))?;
            }
            route
                .set_link_up(name.as_str())
                .await
                .map_err(netlink(format!("cannot bring {name} up")))?;
        }
        let eth = plan::CONTAINER_INTERFACE;
        inside
            .add_address(Ipv4Address::new(eth, self.addresses.container, 30))
            .await
            .map_err(netlink("cannot address the container's eth0"))?;
        inside
            .set_link_up(eth)
            .await
            .map_err(netlink("cannot bring the container's eth0 up"))?;
        inside
            .add_route(
                Ipv4Route::from_addr(self.net.network.gateway, 32)
                    .gateway(self.addresses.vm)
                    .dev(eth),
            )
            .await
            .map_err(netlink("cannot route the container to the gateway"))?;
        inside
            .add_route(
                Ipv4Route::default_route()
                    .gateway(self.addresses.vm)
                    .dev(eth),
            )
            .await
            .map_err(netlink("cannot give the container its default route"))?;
        if let Some(gateway) = self.v6() {
            let via = self.addresses.vm_v6;
            inside
                .add_address(Ipv6Address::new(eth, self.addresses.container_v6, 64).nodad())
                .await
                .map_err(netlink("cannot give the container's eth0 its IPv6 address"))?;
            inside
                .add_route(Ipv6Route::from_addr(gateway, 128).gateway(via).dev(eth))
                .await
                .map_err(netlink("cannot route the container to the IPv6 gateway"))?;
            inside
                .add_route(Ipv6Route::default_route().gateway(via).dev(eth))
                .await
                .map_err(netlink("cannot give the container its IPv6 default route"))?;
        }
        self.inside = Some(inside);
        Ok(())
    }

    /// Applies the container's egress: with [`Egress::Deny`] its default route goes, and only
    /// its route to the gateway (Ember's API, DNS) is left. Once only: the container's socket
    /// is closed after.
    pub async fn apply(&mut self, egress: Egress) -> Result<(), NetError> {
        let Some(inside) = self.inside.take() else {
            return Ok(());
        };
        if egress == Egress::Deny {
            let eth = plan::CONTAINER_INTERFACE;
            inside
                .del_route(
                    Ipv4Route::default_route()
                        .gateway(self.addresses.vm)
                        .dev(eth),
                )
                .await
                .map_err(netlink("cannot take the container's default route away"))?;
            if self.v6().is_some() {
                inside
                    .del_route(
                        Ipv6Route::default_route()
                            .gateway(self.addresses.vm_v6)
                            .dev(eth),
                    )
                    .await
                    .map_err(netlink(
                        "cannot take the container's IPv6 default route away",
                    ))?;
            }
        }
        Ok(())
    }

    /// The VM's IPv6 gateway, when the VM has IPv6 (checked at [`VmNet::start`]).
    fn v6(&self) -> Option<std::net::Ipv6Addr> {
        self.net.network.address_v6.and(self.net.network.gateway_v6)
    }
}

impl Drop for ContainerLink {
    /// Frees the link's addresses. The link itself goes with the container's network namespace
    /// (a veth pair goes as a whole when either end's namespace does): its last process gone and
    /// the agent's sockets in it closed, the kernel's batched namespace cleanup deletes it. Not
    /// deleted here: an explicit `RTM_DELLINK` holds RTNL through RCU grace periods per link
    /// (every other link made meanwhile waited 37 ms p50 on it, against 1.6 ms without; see
    /// BENCHMARKS.md), which the batched cleanup pays once for many; [`plan::Slots`] hands the
    /// /30 out again only after every other free one.
    fn drop(&mut self) {
        self.inside = None;
        if let Some(slot) = self.slot.take() {
            self.net
                .slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .free(slot);
            debug!(link = %self.name, "container link released");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_comes_as_an_address_and_a_gateway_or_not_at_all() {
        let mut network = VmNetwork {
            interface: "eth0".into(),
            address: "10.213.0.2".parse().unwrap(),
            gateway: "10.213.0.1".parse().unwrap(),
            address_v6: None,
            gateway_v6: None,
            api_port: 9001,
        };
        assert!(v6(&network).unwrap().is_none());
        network.address_v6 = Some("fd00:ed::2".parse().unwrap());
        assert!(matches!(v6(&network), Err(NetError::HalfV6(_))));
        network.gateway_v6 = Some("fd00:ed::1".parse().unwrap());
        assert_eq!(
            v6(&network).unwrap(),
            Some(("fd00:ed::2".parse().unwrap(), "fd00:ed::1".parse().unwrap()))
        );
    }
}
