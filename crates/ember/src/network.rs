//! `ember serve`'s VM network (issue 19): its flag, and what the server starts and stops with
//! it: the host side ([`ember_net::host`]: the instance's block, table and links), the DNS
//! forwarder on the VMs' gateway, and Ember's API on the gateway.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use ember_net::dns::DnsForwarder;
use ember_net::host::{HostConfig, HostNetwork, DEFAULT_LOCK_DIR};
use ember_net::policy::EgressPolicy;

/// The VMs' address pool (the egress and DNS flags are `crate::net_flags`'s).
#[derive(Debug, clap::Args)]
pub struct PoolArgs {
    /// The address pool of the VMs' network: each server takes a free /24 of it (its `.1` is
    /// the gateway where VMs reach Ember's API and DNS; `.2`-`.254` are its VMs). Servers on one
    /// host share the pool; it must not overlap the host's own routes or addresses.
    #[arg(long, env = "EMBER_NETWORK_CIDR", default_value = ember_net::host::DEFAULT_POOL)]
    network_cidr: ipnet::Ipv4Net,
    /// IPv6 egress for the VMs: `auto` gives them IPv6 (source-NATed, under the same policy)
    /// when the host has a global or unique-local IPv6 address and an IPv6 default route, and
    /// turns IPv6 forwarding on for it; `off` never does (VMs get IPv4 only).
    #[arg(long, env = "EMBER_NETWORK_IPV6", value_enum, default_value_t = Ipv6Mode::Auto)]
    network_ipv6: Ipv6Mode,
}

/// `--network-ipv6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ipv6Mode {
    /// Where the host has IPv6.
    Auto,
    /// Never.
    Off,
}

/// The VM network of a running server.
#[derive(Debug)]
pub struct Network {
    host: Arc<HostNetwork>,
    /// Dropped at shutdown, which stops it.
    dns: Option<DnsForwarder>,
    /// Ember's API on the gateway, until it is served.
    gateway_listener: Option<tokio::net::TcpListener>,
}

impl Network {
    /// Sets up the host side (claims a block, sweeps dead servers' leftovers, installs the
    /// table enforcing `policy`), starts the DNS forwarder on the gateway relaying to
    /// `upstreams` and binds Ember's API port on the gateway (unless
    /// `listen` is a wildcard address, which takes the gateway's connections already).
    pub async fn start(
        args: &PoolArgs,
        policy: EgressPolicy,
        upstreams: Vec<SocketAddr>,
        listen: SocketAddr,
    ) -> anyhow::Result<Self> {
        let config = HostConfig {
            pool: args.network_cidr,
            lock_dir: DEFAULT_LOCK_DIR.into(),
            api_port: listen.port(),
            policy,
            ipv6: args.network_ipv6 == Ipv6Mode::Auto,
        };
        let host = tokio::task::spawn_blocking(move || HostNetwork::start(config))
            .await
            .context("the network setup task failed")?
            .map_err(|e| anyhow::anyhow!(ember_stdx::error_chain(&e)))
            .context(
                "cannot set up the VMs' network (it needs root, and a kernel with veth, \
                 nf_tables (inet, ct, nat, masquerade) and conntrack; see README, \"Network\")",
            )?;
        let host = Arc::new(host);
        let gateway = IpAddr::V4(host.gateway());
        let forwarder = ember_net::dns::start(gateway, upstreams)
            .await
            .context("cannot start the VMs' DNS forwarder (give resolvers with --dns)")?;
        let gateway_listener = if listen.ip().is_unspecified() {
            None
        } else {
            let at = SocketAddr::new(gateway, listen.port());
            Some(
                tokio::net::TcpListener::bind(at)
                    .await
                    .with_context(|| format!("cannot listen on the VMs' gateway {at}"))?,
            )
        };
        tracing::info!(
            block = %host.block(),
            block6 = %host.block6().map_or_else(|| "none (IPv4 only)".to_owned(), |b| b.to_string()),
            gateway = %host.gateway(),
            api = %SocketAddr::new(gateway, listen.port()),
            "VMs reach Ember's API and DNS on their gateway"
        );
        Ok(Self {
            host,
            dns: Some(forwarder),
            gateway_listener,
        })
    }

    /// The host side, for the VM driver.
    pub fn host(&self) -> Arc<HostNetwork> {
        self.host.clone()
    }

    /// Ember's API listener on the gateway, to serve (once).
    pub fn take_gateway_listener(&mut self) -> Option<tokio::net::TcpListener> {
        self.gateway_listener.take()
    }

    /// Stops the DNS forwarder and removes the host side (table, gateway, the block's lock).
    /// Every VM should be stopped by then.
    pub fn shutdown(mut self) {
        drop(self.dns.take());
        if let Err(err) = self.host.shutdown() {
            tracing::warn!(error = %ember_stdx::error_chain(&err), "cannot remove all of the VMs' network");
        }
    }
}
