//! The host's side of the VMs' network: the instance's address block, each VM's link, the
//! nftables table enforcing [`crate::policy`] with source NAT, and the sweep of a killed run's
//! leftovers.
//!
//! [`HostNetwork::start`] claims a free /24 of the pool (`--network-cidr`, an flock on
//! `/run/ember/net/<block>.lock` held for the server's life), sweeps what dead instances left
//! (their tables, links, gateway addresses and conntrack state, for every block whose lock is
//! free), turns IPv4 forwarding on, puts the gateway `G` (the block's `.1`) on `lo` (so that
//! Ember's API and the DNS forwarder can listen on it before any VM exists) and installs the
//! table `ember_<tag>` ([`ruleset`]). Per VM, [`Lease`] picks an address `V` (`.2`–`.254`)
//! and [`Lease::attach`] makes the veth pair: `em<tag>v<n>` on the host (`G` peer `V`, so the
//! kernel routes `V/32` through it; strict reverse-path filtering; with IPv6 ([`v6`]) `G6`
//! and a route to `V6`, without it no IPv6 at all) and `eth0` in the VM's network namespace,
//! down and unconfigured: the agent configures it from the [`VmNetwork`] it is given.
//! IPv6 is given where the host has it (checked at start, said in the log either way), with
//! IPv6 forwarding turned on without costing the host its router advertisements. [`VmLink::release`] removes the link, the VM's conntrack entries
//! and gives the address back. [`HostNetwork::shutdown`] removes the table and the gateway
//! address and releases the block.
//!
//! Everything is done through netlink (rtnetlink for links and addresses, nf_tables through
//! nlink, ctnetlink for conntrack); nothing is shelled out.

mod block;
mod conntrack;
mod rtnl;
pub mod ruleset;
pub mod v6;

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ember_protocol::VmNetwork;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tracing::{debug, info, warn};

pub use block::{is_gateway_label, is_vm_link, Allocator, Block, BlockLock, BLOCK_PREFIX};

use crate::policy::{always_denied, EgressPolicy, HostAddresses};

/// The default pool, `--network-cidr`.
pub const DEFAULT_POOL: &str = "10.213.0.0/16";

/// Where instances' block locks live.
pub const DEFAULT_LOCK_DIR: &str = "/run/ember/net";

/// The name of a VM's end of its link, inside the VM.
pub const VM_INTERFACE: &str = "eth0";

/// A VM's `/etc/hosts`: localhost only (no name of the host or of anything else leaks in).
pub const VM_HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// A VM's `/etc/resolv.conf`: its gateway, where the DNS forwarder listens.
pub fn vm_resolv_conf(network: &VmNetwork) -> String {
    format!("nameserver {}\n", network.gateway)
}

/// What can go wrong on the host's side of the network.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The pool (`--network-cidr`) is unusable as given.
    #[error("{0}")]
    Pool(String),
    /// The pool overlaps address space the host uses.
    #[error(
        "--network-cidr {pool} overlaps the host's own routes or addresses ({overlaps}); \
         choose a range the host does not use"
    )]
    Overlap {
        /// The pool.
        pool: Ipv4Net,
        /// What it overlaps.
        overlaps: String,
    },
    /// Every block of the pool is held by a live instance.
    #[error("every /24 block of --network-cidr {0} is held by another running ember server")]
    Exhausted(Ipv4Net),
    /// The block has no free VM address.
    #[error("all 253 VM addresses of block {0} are in use: no more VMs fit this server's block")]
    NoAddress(Ipv4Net),
    /// A system call or netlink request failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// nf_tables refused a request.
    #[error("{0}")]
    Nftables(String),
    /// Removing a block's table, links, gateway or conntrack entries failed (each failure
    /// listed); what could be removed was.
    #[error("{0}")]
    Cleanup(String),
}

impl HostError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// How the host side is set up.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The pool instances take their /24 blocks from (`--network-cidr`).
    pub pool: Ipv4Net,
    /// Where the blocks' lock files are ([`DEFAULT_LOCK_DIR`]). Every ember on the host must
    /// use the same: a block whose lock is free there is taken for a dead instance's and swept.
    pub lock_dir: PathBuf,
    /// Ember's API port, which VMs reach on their gateway.
    pub api_port: u16,
    /// The egress policy the table enforces.
    pub policy: EgressPolicy,
    /// Whether VMs get IPv6 where the host has it (`--ipv6 auto`, the default) or never
    /// (`--ipv6 off`).
    pub ipv6: bool,
}

impl HostConfig {
    /// The defaults for `api_port`: the default pool and lock directory, allow-all policy.
    pub fn new(api_port: u16) -> Self {
        Self {
            // A constant that parses.
            pool: DEFAULT_POOL.parse().unwrap_or_default(),
            lock_dir: PathBuf::from(DEFAULT_LOCK_DIR),
            api_port,
            policy: EgressPolicy::default(),
            ipv6: true,
        }
    }
}

/// What [`sweep`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// The blocks of dead instances that had something left.
    pub blocks: Vec<Ipv4Net>,
    /// Their nftables tables.
    pub tables: usize,
    /// Their host-side links.
    pub links: usize,
    /// Their gateway addresses on `lo`.
    pub addresses: usize,
}

/// The host side of one instance's VM network. See the module docs.
pub struct HostNetwork {
    block: Block,
    api_port: u16,
    lock_dir: PathBuf,
    addresses: Mutex<Allocator>,
    /// Whether VMs get IPv6 ([`v6`]): the host has it, and forwarding is on.
    ipv6: bool,
    /// Held until [`HostNetwork::shutdown`] (or drop).
    lock: Mutex<Option<BlockLock>>,
}

impl fmt::Debug for HostNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostNetwork")
            .field("block", &self.block.net())
            .field("api_port", &self.api_port)
            .finish_non_exhaustive()
    }
}

fn rtnl() -> Result<rtnl::Rtnl, HostError> {
    rtnl::Rtnl::open().map_err(|e| HostError::io("cannot open a route netlink socket", e))
}

impl HostNetwork {
    /// Claims a block, sweeps dead instances' leftovers, turns IPv4 forwarding on, puts the
    /// gateway on `lo` and installs the instance's table. Needs root (CAP_NET_ADMIN).
    pub fn start(config: HostConfig) -> Result<Self, HostError> {
        let pool = config.pool;
        let blocks = block::blocks(pool)?;
        let mut nl = rtnl()?;
        let host = HostView::read(&mut nl)?;
        let overlaps = block::overlapping(pool, &host.routes);
        if !overlaps.is_empty() {
            let overlaps: Vec<String> = overlaps.iter().map(ToString::to_string).collect();
            return Err(HostError::Overlap {
                pool,
                overlaps: overlaps.join(", "),
            });
        }
        let mut claimed = None;
        for block in blocks {
            if let Some(lock) = BlockLock::claim(&config.lock_dir, &block)? {
                claimed = Some((block, lock));
                break;
            }
        }
        let (block, lock) = claimed.ok_or(HostError::Exhausted(pool))?;
        let report = sweep_blocks(&config.lock_dir, Some(&block))?;
        if !report.blocks.is_empty() {
            warn!(
                ?report,
                "removed the network leftovers of ember servers that died"
            );
        }

        enable_ipv4_forwarding()?;
        let host = HostView::read(&mut nl)?;
        let ipv6 = start_ipv6(config.ipv6, &host)?;
        let mut denied = always_denied(&host.addresses, pool);
        if ipv6 {
            // Every instance's VMs, as the IPv4 pool is.
            denied.push(IpNet::V6(v6::PREFIX_V6));
        }
        let egress = config.policy.compile(&denied);
        let lo_index = nl
            .link_index("lo")
            .map_err(|e| HostError::io("cannot find lo", e))?;
        let network = Self {
            block,
            api_port: config.api_port,
            lock_dir: config.lock_dir,
            addresses: Mutex::new(Allocator::default()),
            ipv6,
            lock: Mutex::new(Some(lock)),
        };
        nl.add_address_v4(lo_index, block.gateway(), None, Some(&block.lo_label()))
            .map_err(|e| {
                HostError::io(
                    format!("cannot add the gateway {} to lo", block.gateway()),
                    e,
                )
            })?;
        ruleset::install(&ruleset::TableSpec {
            name: block.table(),
            link_prefix: block.link_prefix(),
            block: block.net(),
            gateway: block.gateway(),
            api_port: config.api_port,
            egress,
            sources: (block::FIRST_VM..=block::LAST_VM)
                .map(|octet| {
                    let address = block.host(octet);
                    (block.link_name(address), address)
                })
                .collect(),
            block6: ipv6.then(|| block.net6()),
        })
        .map_err(|e| match e {
            HostError::Nftables(m) => HostError::Nftables(format!(
                "{m} (the kernel needs nf_tables with the inet family, ct, nat and masquerade)"
            )),
            other => other,
        })?;
        info!(block = %block.net(), gateway = %block.gateway(), table = %block.table(), ipv6 = %if ipv6 { block.net6().to_string() } else { "off".into() }, "VM network ready");
        Ok(network)
    }

    /// The instance's block.
    pub fn block(&self) -> Ipv4Net {
        self.block.net()
    }

    /// The gateway, where VMs reach Ember's API and the DNS forwarder.
    pub fn gateway(&self) -> Ipv4Addr {
        self.block.gateway()
    }

    /// The instance's IPv6 /64, when VMs get IPv6 ([`v6`]).
    pub fn block6(&self) -> Option<Ipv6Net> {
        self.ipv6.then(|| self.block.net6())
    }

    /// The instance's tag (its block as 8 hex digits), in its table's and links' names.
    pub fn tag(&self) -> String {
        self.block.tag()
    }

    /// The instance's nftables table.
    pub fn table(&self) -> String {
        self.block.table()
    }

    /// Ember's API port on the gateway.
    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    /// How many VM addresses are in use.
    pub fn in_use(&self) -> usize {
        self.allocator().in_use()
    }

    fn allocator(&self) -> MutexGuard<'_, Allocator> {
        // The allocator's state stays consistent whatever a panicking holder did.
        self.addresses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a VM address. Fails when all 253 are in use.
    pub fn lease(self: &Arc<Self>) -> Result<Lease, HostError> {
        let octet = self
            .allocator()
            .allocate()
            .ok_or(HostError::NoAddress(self.block.net()))?;
        Ok(Lease {
            network: self.clone(),
            address: self.block.host(octet),
        })
    }

    /// Removes the table, the gateway address and the block's conntrack state, and releases
    /// the block. Every VM's link should be gone by then; a link still there goes too.
    /// Idempotent.
    pub fn shutdown(&self) -> Result<(), HostError> {
        let Some(lock) = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return Ok(());
        };
        let result = remove_block(&self.block);
        drop(lock);
        info!(block = %self.block.net(), "VM network removed");
        result.map(drop)
    }

    /// The lock directory (for [`sweep`] from the same configuration).
    pub fn lock_dir(&self) -> &Path {
        &self.lock_dir
    }
}

impl Drop for HostNetwork {
    fn drop(&mut self) {
        if let Err(err) = self.shutdown() {
            warn!(error = %err, "VM network teardown incomplete");
        }
    }
}

/// A VM address, taken from the instance's block until dropped or attached.
#[derive(Debug)]
pub struct Lease {
    network: Arc<HostNetwork>,
    address: Ipv4Addr,
}

impl Lease {
    /// The VM's address.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The VM's IPv6 address, when VMs get IPv6.
    pub fn address_v6(&self) -> Option<Ipv6Addr> {
        self.network.ipv6.then(|| v6::address_v6(self.address))
    }

    /// What the VM's agent is told: `eth0`, its addresses, its gateways, Ember's API port.
    pub fn vm_network(&self) -> VmNetwork {
        VmNetwork {
            interface: VM_INTERFACE.to_owned(),
            address: self.address,
            gateway: self.network.gateway(),
            address_v6: self.address_v6(),
            gateway_v6: self.network.ipv6.then(|| self.network.block.gateway6()),
            api_port: self.network.api_port,
        }
    }

    /// The host-side link's name.
    pub fn link_name(&self) -> String {
        self.network.block.link_name(self.address)
    }

    /// Makes the VM's link: a veth pair whose host end (`em<tag>v<n>`, `G` peer `V`, up) stays
    /// here and whose other end is `eth0` in the network namespace of process `pid`, down and
    /// unconfigured. Blocks briefly (three netlink requests, two sysctl writes).
    pub fn attach(self, pid: u32) -> Result<VmLink, HostError> {
        let name = self.link_name();
        let mut nl = rtnl()?;
        let created = match nl.add_veth(&name, VM_INTERFACE, pid) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                // A link a failed teardown left under this address's name: it is stale.
                warn!(link = %name, "replacing a stale VM link");
                nl.del_link(&name)
                    .and_then(|_| nl.add_veth(&name, VM_INTERFACE, pid))
            }
            other => other,
        };
        created.map_err(|e| HostError::io(format!("cannot create the VM link {name}"), e))?;
        // From here on the link is the VmLink's to remove, whatever fails next.
        let link = VmLink {
            lease: Some(self),
            name,
        };
        link.configure(&mut nl)?;
        Ok(link)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let octet = self.address.octets()[3];
        self.network.allocator().release(octet);
    }
}

/// A VM's link on the host. [`VmLink::release`] (or drop) removes it, the VM's conntrack
/// entries, and gives its address back.
#[derive(Debug)]
pub struct VmLink {
    lease: Option<Lease>,
    name: String,
}

impl VmLink {
    /// The host-side link's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The VM's address.
    pub fn address(&self) -> Option<Ipv4Addr> {
        self.lease.as_ref().map(Lease::address)
    }

    /// What the VM's agent is told.
    pub fn vm_network(&self) -> Option<VmNetwork> {
        self.lease.as_ref().map(Lease::vm_network)
    }

    fn configure(&self, nl: &mut rtnl::Rtnl) -> Result<(), HostError> {
        let Some(lease) = &self.lease else {
            return Ok(());
        };
        let name = &self.name;
        let io = |what: &str| {
            let context = format!("cannot {what} VM link {name}");
            move |e| HostError::io(context, e)
        };
        // Strict reverse-path filtering: the only source the link takes is V (whose route it
        // is).
        write_sysctl(&format!("net/ipv4/conf/{name}/rp_filter"), "1")
            .map_err(io("set rp_filter on"))?;
        let v6 = lease.address_v6();
        if v6.is_some() {
            // A VM never gives the host a route (the table drops its advertisements too); and
            // IPv6 is on for the link even where the host's `default` has it off.
            write_sysctl(&format!("net/ipv6/conf/{name}/accept_ra"), "0")
                .map_err(io("stop router advertisements on"))?;
            write_sysctl(&format!("net/ipv6/conf/{name}/disable_ipv6"), "0")
                .map_err(io("turn IPv6 on for"))?;
        } else {
            // No IPv6 on the host end: no link-local address a VM could talk to.
            let off = format!("net/ipv6/conf/{name}/disable_ipv6");
            if Path::new("/proc/sys").join(&off).exists() {
                write_sysctl(&off, "1").map_err(io("turn IPv6 off on"))?;
            }
        }
        let index = nl.link_index(name).map_err(io("find"))?;
        nl.add_address_v4(index, lease.network.gateway(), Some(lease.address), None)
            .map_err(io("address"))?;
        if v6.is_some() {
            nl.add_address_v6(index, lease.network.block.gateway6())
                .map_err(io("give an IPv6 address to"))?;
        }
        nl.set_up(index).map_err(io("bring up"))?;
        if let Some(v6) = v6 {
            // Once up: the kernel routes through no link that is down.
            nl.add_route_v6(index, v6)
                .map_err(io("route the VM's IPv6 address through"))?;
        }
        debug!(link = %name, address = %lease.address, "VM link up");
        Ok(())
    }

    /// Removes the link (gone already if the VM's namespace went first: its veth pair goes
    /// with it), deletes the VM's conntrack entries and releases its address, which is
    /// released even if a step fails.
    pub fn release(mut self) -> Result<(), HostError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), HostError> {
        let Some(lease) = self.lease.take() else {
            return Ok(());
        };
        let removed = rtnl().and_then(|mut nl| {
            nl.del_link(&self.name)
                .map_err(|e| HostError::io(format!("cannot remove VM link {}", self.name), e))
        });
        let flushed = conntrack::delete_marked(Block::mark(lease.address), u32::MAX).map_err(|e| {
            HostError::io(
                format!("cannot delete the conntrack entries of {}", lease.address),
                e,
            )
        });
        drop(lease);
        removed?;
        flushed
    }
}

impl Drop for VmLink {
    fn drop(&mut self) {
        if let Err(err) = self.teardown() {
            warn!(link = %self.name, error = %err, "VM link teardown incomplete");
        }
    }
}

/// What the host's routing looks like to the pool check and the policy: its IPv4 routes, its
/// IPv6 routes and its addresses, leaving out what ember instances made (VM links, gateways on
/// `lo`).
struct HostView {
    routes: Vec<IpNet>,
    routes6: Vec<IpNet>,
    addresses: HostAddresses,
}

impl HostView {
    fn read(nl: &mut rtnl::Rtnl) -> Result<Self, HostError> {
        let links = nl
            .links()
            .map_err(|e| HostError::io("cannot list the host's links", e))?;
        let mut routes = nl
            .routes_v4()
            .map_err(|e| HostError::io("cannot list the host's routes", e))?;
        routes.extend(
            nl.routes_v6()
                .map_err(|e| HostError::io("cannot list the host's IPv6 routes", e))?,
        );
        let addresses = nl
            .addresses()
            .map_err(|e| HostError::io("cannot list the host's addresses", e))?;
        // And again: a VM link another server made meanwhile is known by its name too, so its
        // routes and addresses are not taken for the host's.
        let mut links = links;
        links.extend(
            nl.links()
                .map_err(|e| HostError::io("cannot list the host's links", e))?,
        );
        Ok(Self::of(&links, &routes, &addresses))
    }

    /// The view of the host's `links`, `routes` and `addresses`, leaving out any ember
    /// instance's VM links (their routes and addresses) and gateways on `lo`: they lie in the
    /// pool by design, and must neither make a second server's pool overlap nor count as host
    /// addresses.
    fn of(links: &[rtnl::Link], routes: &[rtnl::Route], addresses: &[rtnl::Address]) -> Self {
        let ember_links: BTreeSet<u32> = links
            .iter()
            .filter(|l| is_vm_link(&l.name))
            .map(|l| l.index)
            .collect();
        let (routes6, routes) = routes
            .iter()
            .filter(|r| !r.oif.is_some_and(|i| ember_links.contains(&i)))
            .map(|r| r.destination)
            .partition(|r| matches!(r, IpNet::V6(_)));
        let mut view = Self {
            routes,
            routes6,
            addresses: HostAddresses::default(),
        };
        for a in addresses {
            if ember_links.contains(&a.index) || a.label.as_deref().is_some_and(is_gateway_label) {
                continue;
            }
            view.addresses.addresses.push(a.address);
            if let Ok(net) = IpNet::new(a.address, a.prefix_len) {
                let net = net.trunc();
                view.addresses.networks.push(net);
                if matches!(net, IpNet::V4(_)) {
                    view.routes.push(net);
                }
            }
        }
        view
    }
}

fn write_sysctl(key: &str, value: &str) -> io::Result<()> {
    std::fs::write(Path::new("/proc/sys").join(key), value)
}

/// Whether VMs get IPv6 (`wanted`, and the host has it: [`v6::availability`]); if so, IPv6
/// forwarding is turned on ([`v6::enable_forwarding`]). Says which, and why, in the log.
fn start_ipv6(wanted: bool, host: &HostView) -> Result<bool, HostError> {
    let conf = Path::new("/proc/sys/net/ipv6/conf");
    let available = if !wanted {
        Err(v6::NoIpv6::Off)
    } else if !conf.exists() {
        Err(v6::NoIpv6::Kernel)
    } else {
        v6::availability(&host.addresses.addresses, &host.routes6)
    };
    if let Err(why) = available {
        info!("VMs get IPv4 only: no IPv6 egress, because {why}");
        return Ok(false);
    }
    let done = v6::enable_forwarding(conf)
        .map_err(|e| HostError::io("cannot turn IPv6 forwarding on", e))?;
    if done.turned_on {
        info!(
            accept_ra_2 = ?done.accept_ra,
            "turned IPv6 forwarding on (net.ipv6.conf.all.forwarding = 1) for the VMs' traffic, \
             after accept_ra = 2 on the interfaces that took router advertisements, so they keep \
             their routes"
        );
    }
    Ok(true)
}

/// Turns IPv4 forwarding on (host-wide: `net.ipv4.ip_forward`), unless it is. Left on at
/// shutdown: other software on the host may rely on it by then.
fn enable_ipv4_forwarding() -> Result<(), HostError> {
    let key = "net/ipv4/ip_forward";
    let now = std::fs::read_to_string(Path::new("/proc/sys").join(key))
        .map_err(|e| HostError::io("cannot read net.ipv4.ip_forward", e))?;
    if now.trim() != "1" {
        write_sysctl(key, "1").map_err(|e| HostError::io("cannot turn IPv4 forwarding on", e))?;
        info!("turned IPv4 forwarding on (net.ipv4.ip_forward = 1) for the VMs' traffic");
    }
    Ok(())
}

/// Removes everything of `block` from the host: its table, its VM links, its gateway on `lo`
/// and its conntrack entries. Returns (tables, links, addresses) removed.
fn remove_block(block: &Block) -> Result<(usize, usize, usize), HostError> {
    let mut failures = Vec::new();
    let had_table = match ruleset::tables() {
        Ok(tables) => tables.contains(&block.table()),
        Err(e) => {
            failures.push(e.to_string());
            true
        }
    };
    let mut tables = 0;
    if had_table {
        match ruleset::remove(&block.table()) {
            Ok(()) => tables += 1,
            Err(e) => failures.push(e.to_string()),
        }
    }
    let mut links = 0;
    let mut addresses = 0;
    match rtnl() {
        Err(e) => failures.push(e.to_string()),
        Ok(mut nl) => {
            let prefix = block.link_prefix();
            match nl.links() {
                Err(e) => failures.push(format!("cannot list links: {e}")),
                Ok(all) => {
                    for link in all.iter().filter(|l| l.name.starts_with(&prefix)) {
                        match nl.del_link(&link.name) {
                            Ok(true) => links += 1,
                            Ok(false) => {}
                            Err(e) => failures.push(format!("cannot remove {}: {e}", link.name)),
                        }
                    }
                }
            }
            match nl.link_index("lo") {
                Err(e) => failures.push(format!("cannot find lo: {e}")),
                Ok(lo) => match nl.del_address_v4(lo, block.gateway()) {
                    Ok(true) => addresses += 1,
                    Ok(false) => {}
                    Err(e) => {
                        failures.push(format!("cannot remove {} from lo: {e}", block.gateway()))
                    }
                },
            }
        }
    }
    if let Err(e) = conntrack::delete_marked(Block::mark(block.net().network()), Block::mark_mask())
    {
        failures.push(format!("cannot delete conntrack entries: {e}"));
    }
    if failures.is_empty() {
        Ok((tables, links, addresses))
    } else {
        Err(HostError::Cleanup(format!(
            "cannot remove everything of block {}: {}",
            block.net(),
            failures.join("; ")
        )))
    }
}

/// Removes what dead instances left on this host: for every block that has a table, a VM link
/// or a gateway address here and whose lock (in `lock_dir`) is free, everything of that block
/// ([`remove_block`]). Blocks of live instances are left alone. Run by
/// [`HostNetwork::start`]; public for tests and tools.
pub fn sweep(lock_dir: &Path) -> Result<SweepReport, HostError> {
    sweep_blocks(lock_dir, None)
}

/// [`sweep`], where `own` is a block this process holds the lock of (swept too: a dead
/// predecessor may have held it).
fn sweep_blocks(lock_dir: &Path, own: Option<&Block>) -> Result<SweepReport, HostError> {
    let mut tags = BTreeSet::new();
    for table in ruleset::tables()? {
        if let Some(tag) = table.strip_prefix("ember_").filter(|t| is_tag(t)) {
            tags.insert(tag.to_owned());
        }
    }
    let mut nl = rtnl()?;
    for link in nl
        .links()
        .map_err(|e| HostError::io("cannot list the host's links", e))?
    {
        if is_vm_link(&link.name) {
            tags.insert(link.name[2..10].to_owned());
        }
    }
    for a in nl
        .addresses()
        .map_err(|e| HostError::io("cannot list the host's addresses", e))?
    {
        if let Some(label) = a.label.filter(|l| is_gateway_label(l)) {
            tags.insert(label["lo:em".len()..].to_owned());
        }
    }
    if let Some(own) = own {
        tags.insert(own.tag());
    }
    let mut report = SweepReport::default();
    for tag in tags {
        let Some(block) = block_of_tag(&tag) else {
            continue;
        };
        let lock = if Some(&block) == own {
            None
        } else {
            match BlockLock::claim(lock_dir, &block)? {
                // A live instance's.
                None => continue,
                Some(lock) => Some(lock),
            }
        };
        let removed = remove_block(&block);
        drop(lock);
        let (tables, links, addresses) = match removed {
            Ok(counts) => counts,
            // Our own block must be clean before we use it.
            Err(e) if Some(&block) == own => return Err(e),
            // Another dead server's leftovers must not keep this one from starting.
            Err(e) => {
                warn!(block = %block.net(), error = %e, "cannot remove a dead server's network");
                continue;
            }
        };
        if tables + links + addresses > 0 {
            report.blocks.push(block.net());
            report.tables += tables;
            report.links += links;
            report.addresses += addresses;
        }
    }
    Ok(report)
}

fn is_tag(s: &str) -> bool {
    s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The block a tag names (`0ad50500` → `10.213.5.0/24`).
fn block_of_tag(tag: &str) -> Option<Block> {
    let value = u32::from_str_radix(tag, 16).ok()?;
    let net = Ipv4Net::new(Ipv4Addr::from(value), BLOCK_PREFIX).ok()?;
    if net.network() != Ipv4Addr::from(value) {
        return None;
    }
    Block::new(net).ok()
}

/// The host's addresses as the policy sees them (for diagnostics): every address but those
/// ember instances made.
pub fn host_addresses() -> Result<HostAddresses, HostError> {
    let mut nl = rtnl()?;
    Ok(HostView::read(&mut nl)?.addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_names_its_block_and_nothing_else() {
        let block = block_of_tag("0ad50500").unwrap();
        assert_eq!(block.net(), "10.213.5.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(block.tag(), "0ad50500");
        assert!(block_of_tag("0ad50501").is_none());
        assert!(block_of_tag("zzzzzzzz").is_none());
        assert!(is_tag("deadbeef"));
        assert!(!is_tag("deadbee"));
    }

    #[test]
    fn ember_links_and_gateways_are_not_the_hosts_routes_or_addresses() {
        let link = |index, name: &str| rtnl::Link {
            index,
            name: name.into(),
        };
        let links = [
            link(1, "lo"),
            link(2, "eth0"),
            link(7, "em0ad50000v2"),
            link(8, "em1"),
        ];
        let route = |dest: &str, oif| rtnl::Route {
            destination: dest.parse().unwrap(),
            oif: Some(oif),
        };
        let routes = [
            route("0.0.0.0/0", 2),
            route("192.0.2.0/24", 2),
            route("10.213.0.2/32", 7),
            route("10.9.0.0/16", 8),
        ];
        let address = |index, address: &str, prefix_len, label: Option<&str>| rtnl::Address {
            index,
            address: address.parse().unwrap(),
            prefix_len,
            label: label.map(Into::into),
        };
        let addresses = [
            address(1, "127.0.0.1", 8, Some("lo")),
            address(1, "10.213.0.1", 32, Some("lo:em0ad50000")),
            address(2, "192.0.2.2", 24, Some("eth0")),
            address(7, "10.213.0.1", 32, None),
            address(8, "10.9.0.1", 16, Some("em1")),
        ];
        let view = HostView::of(&links, &routes, &addresses);
        let nets = |v: &[&str]| {
            v.iter()
                .map(|n| n.parse::<IpNet>().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            view.routes,
            nets(&[
                "0.0.0.0/0",
                "192.0.2.0/24",
                "10.9.0.0/16",
                "127.0.0.0/8",
                "192.0.2.0/24",
                "10.9.0.0/16"
            ])
        );
        // A second server's pool is not overlapped by the first one's VM routes and gateway.
        assert!(block::overlapping("10.213.0.0/16".parse().unwrap(), &view.routes).is_empty());
        let ips: Vec<String> = view
            .addresses
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(ips, ["127.0.0.1", "192.0.2.2", "10.9.0.1"]);
    }

    #[test]
    fn a_vm_gets_its_own_resolver_and_hosts_with_localhost_only() {
        let network = VmNetwork {
            interface: VM_INTERFACE.into(),
            address: Ipv4Addr::new(10, 213, 5, 2),
            gateway: Ipv4Addr::new(10, 213, 5, 1),
            address_v6: None,
            gateway_v6: None,
            api_port: 9000,
        };
        assert_eq!(vm_resolv_conf(&network), "nameserver 10.213.5.1\n");
        for line in VM_HOSTS.lines() {
            assert!(line.contains("localhost"), "{line}");
        }
    }
}
