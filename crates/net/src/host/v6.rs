//! IPv6 on the host's side, where the host has it: the instance's /64 and its VMs' addresses
//! (derived from the IPv4 block, so one block names both), whether the host has IPv6 to give
//! (a global or unique-local address and a default route), and IPv6 forwarding turned on
//! without costing the host its router-advertised routes.
//!
//! # The address plan
//!
//! Every instance's /64 lies in [`PREFIX_V6`] (`fd45:6d62:6600::/40`, a unique local prefix of
//! Ember's own), its 24 bits after the /40 being the first three octets of the instance's IPv4
//! block: block `10.213.5.0/24` has `fd45:6d62:660a:d505::/64`. An address of the /64 ends in
//! the IPv4 address it pairs with: the gateway `G6` is `…::a.b.c.1`
//! (`fd45:6d62:660a:d505::ad5:501`), the VM at `V` has `V6` = `…::V`. So
//!
//! - the block names the /64, and a sweep that finds a dead block's links knows its IPv6
//!   addresses without any state;
//! - a VM's IPv6 connections carry the conntrack mark of its IPv4 ones (`ct mark set` the last
//!   four bytes of `ip6 saddr`), and one filtered flush removes both families' entries;
//! - the plan does not meet the containers' own link block inside VMs (`fd45:6d62:6572::/48`,
//!   see `crates/agent/src/net/plan.rs`): `6572` is not in `66xx`.
//!
//! Nothing of [`PREFIX_V6`] is seen beyond the host: VMs' IPv6 traffic is masqueraded to the
//! host's own address on the way out, as IPv4 is.
//!
//! # Forwarding
//!
//! IPv6 forwarding is one switch for the whole host (`net.ipv6.conf.all.forwarding`; the
//! kernel checks it on every forwarded packet, and a reply from the world comes in by the
//! uplink, not by a VM's link). Turning it on makes the kernel a router, which ignores router
//! advertisements on interfaces with `accept_ra = 1` and purges the default routes it learned
//! from them: the host would lose its own IPv6 default route. [`enable_forwarding`] therefore
//! first sets `accept_ra = 2` (accept even when forwarding) on every interface, and on
//! `default` (links made later), whose `accept_ra` is 1, and only then turns forwarding on.
//! Interfaces with `accept_ra = 0` (statically configured, or run by a userspace RA client)
//! are left as they are. VM links are set to `accept_ra = 0` one by one (a VM never gives the
//! host a route).

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::{IpNet, Ipv6Net};

use super::block::{is_vm_link, Block};

/// Where every instance's /64 lies: `fd45:6d62:6600::/40`.
pub const PREFIX_V6: Ipv6Net =
    match Ipv6Net::new(Ipv6Addr::new(0xfd45, 0x6d62, 0x6600, 0, 0, 0, 0, 0), 40) {
        Ok(net) => net,
        Err(_) => panic!("a /40 is a valid IPv6 prefix length"),
    };

/// The IPv6 address of the instance's /64 that pairs with `v4` (see the module's docs).
pub fn address_v6(v4: Ipv4Addr) -> Ipv6Addr {
    let [a, b, c, _] = v4.octets();
    let block = (u128::from(a) << 16) | (u128::from(b) << 8) | u128::from(c);
    Ipv6Addr::from(u128::from(PREFIX_V6.network()) | (block << 64) | u128::from(u32::from(v4)))
}

impl Block {
    /// The instance's IPv6 /64 (see [`super::v6`]).
    pub fn net6(&self) -> Ipv6Net {
        // A /64 is a valid prefix length.
        Ipv6Net::new(address_v6(self.net().network()), 64)
            .unwrap_or_default()
            .trunc()
    }

    /// The gateway's IPv6 address, `…::a.b.c.1`.
    pub fn gateway6(&self) -> Ipv6Addr {
        address_v6(self.gateway())
    }
}

/// Why VMs get no IPv6 here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoIpv6 {
    /// `--ipv6 off`.
    Off,
    /// The kernel has no IPv6 (`/proc/sys/net/ipv6` is missing: `ipv6.disable=1`).
    Kernel,
    /// No interface has a global or unique-local IPv6 address.
    NoAddress,
    /// No IPv6 default route.
    NoDefaultRoute,
    /// The host already uses part of [`PREFIX_V6`].
    Overlap(Vec<IpNet>),
}

impl fmt::Display for NoIpv6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("turned off with --ipv6 off"),
            Self::Kernel => f.write_str("the kernel has no IPv6 (/proc/sys/net/ipv6 is missing)"),
            Self::NoAddress => f.write_str("the host has no global or unique-local IPv6 address"),
            Self::NoDefaultRoute => f.write_str("the host has no IPv6 default route"),
            Self::Overlap(nets) => {
                let nets: Vec<String> = nets.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "the host already uses {} inside Ember's IPv6 prefix {PREFIX_V6}",
                    nets.join(", ")
                )
            }
        }
    }
}

/// Whether the host has IPv6 to give VMs, from its `addresses` and IPv6 `routes` (both
/// without what Ember instances made): a global or unique-local address, a default route, and
/// nothing of [`PREFIX_V6`] in use.
pub fn availability(addresses: &[IpAddr], routes: &[IpNet]) -> Result<(), NoIpv6> {
    let mut overlaps: Vec<IpNet> = routes
        .iter()
        .copied()
        .filter(|r| matches!(r, IpNet::V6(_)) && r.prefix_len() > 0)
        .filter(|r| r.contains(&IpNet::V6(PREFIX_V6)) || IpNet::V6(PREFIX_V6).contains(r))
        .chain(
            addresses
                .iter()
                .filter(|a| IpNet::V6(PREFIX_V6).contains(*a))
                .map(|a| IpNet::from(*a)),
        )
        .collect();
    overlaps.sort();
    overlaps.dedup();
    if !overlaps.is_empty() {
        return Err(NoIpv6::Overlap(overlaps));
    }
    if !addresses.iter().any(|a| match a {
        IpAddr::V6(a) => is_global_or_ula(*a),
        IpAddr::V4(_) => false,
    }) {
        return Err(NoIpv6::NoAddress);
    }
    if !routes
        .iter()
        .any(|r| matches!(r, IpNet::V6(_)) && r.prefix_len() == 0)
    {
        return Err(NoIpv6::NoDefaultRoute);
    }
    Ok(())
}

/// A unicast address with a reach beyond the link: global (`2000::/3`) or unique local
/// (`fc00::/7`); not loopback, link-local, multicast, unspecified or IPv4-mapped.
fn is_global_or_ula(a: Ipv6Addr) -> bool {
    let first = a.segments()[0];
    (first & 0xe000) == 0x2000 || (first & 0xfe00) == 0xfc00
}

/// What [`enable_forwarding`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forwarding {
    /// Forwarding was off and is now on.
    pub turned_on: bool,
    /// The interfaces (and `default`) whose `accept_ra` went from 1 to 2.
    pub accept_ra: Vec<String>,
}

/// Turns IPv6 forwarding on in the namespace whose `conf` directory (`/proc/sys/net/ipv6/conf`)
/// is given, keeping router advertisements (see the module's docs): `accept_ra` 1 → 2 on every
/// interface but `lo`, `all` and VM links, and on `default`, then `all/forwarding` = 1. Nothing
/// is changed if forwarding is on already. Left on at shutdown, as IPv4's is: other software
/// may rely on it by then, and `accept_ra = 2` must stay while it is.
pub fn enable_forwarding(conf: &Path) -> io::Result<Forwarding> {
    let all = conf.join("all").join("forwarding");
    if std::fs::read_to_string(&all)?.trim() == "1" {
        return Ok(Forwarding::default());
    }
    let mut names: Vec<String> = std::fs::read_dir(conf)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "all" && n != "lo" && !is_vm_link(n))
        .collect();
    names.sort();
    // `default` first: a link made meanwhile takes its value.
    if let Some(at) = names.iter().position(|n| n == "default") {
        let name = names.remove(at);
        names.insert(0, name);
    }
    let mut changed = Vec::new();
    for name in names {
        let path = conf.join(&name).join("accept_ra");
        match std::fs::read_to_string(&path) {
            Ok(value) if value.trim() == "1" => {}
            // 0 or 2 already, or gone (a link removed meanwhile).
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        match std::fs::write(&path, "2") {
            Ok(()) => changed.push(name),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    std::fs::write(&all, "1")?;
    Ok(Forwarding {
        turned_on: true,
        accept_ra: changed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(s: &str) -> Block {
        Block::new(s.parse().unwrap()).unwrap()
    }

    #[test]
    fn a_blocks_slash_64_is_named_by_its_first_three_octets_and_pairs_each_v4_address() {
        let b = block("10.213.5.0/24");
        assert_eq!(b.net6().to_string(), "fd45:6d62:660a:d505::/64");
        assert_eq!(b.gateway6().to_string(), "fd45:6d62:660a:d505::ad5:501");
        let vm = address_v6(Ipv4Addr::new(10, 213, 5, 2));
        assert_eq!(vm.to_string(), "fd45:6d62:660a:d505::ad5:502");
        assert!(b.net6().contains(&vm) && b.net6().contains(&b.gateway6()));
        // The low 32 bits are the IPv4 address: the conntrack mark of both families.
        assert_eq!(
            u32::from_ne_bytes(vm.octets()[12..].try_into().unwrap()),
            Block::mark(Ipv4Addr::new(10, 213, 5, 2))
        );
        // Blocks never share a /64, every /64 is in the prefix, and none meets the
        // containers' link block inside VMs.
        let other = block("10.213.6.0/24");
        assert_ne!(b.net6(), other.net6());
        let links: Ipv6Net = "fd45:6d62:6572::/48".parse().unwrap();
        for s in [
            "0.0.0.0/24",
            "114.98.0.0/24",
            "255.255.255.0/24",
            "10.213.5.0/24",
        ] {
            let net6 = block(s).net6();
            assert!(PREFIX_V6.contains(&net6), "{net6}");
            assert!(!links.contains(&net6.network()) && !net6.contains(&links.network()));
        }
        assert!(!PREFIX_V6.contains(&links.network()));
    }

    #[test]
    fn ipv6_is_given_only_with_a_global_or_ula_address_a_default_route_and_a_free_prefix() {
        let ips = |v: &[&str]| {
            v.iter()
                .map(|a| a.parse().unwrap())
                .collect::<Vec<IpAddr>>()
        };
        let nets = |v: &[&str]| v.iter().map(|a| a.parse().unwrap()).collect::<Vec<IpNet>>();
        let default = nets(&["::/0", "fd00::/64", "fe80::/64"]);
        for host in [
            &["192.0.2.2", "fd00::2"][..],
            &["2001:db8::5"],
            &["::1", "2a00::1"],
        ] {
            assert_eq!(availability(&ips(host), &default), Ok(()), "{host:?}");
        }
        for host in [
            &["192.0.2.2", "::1", "fe80::1"][..],
            &["ff02::1", "::", "::ffff:192.0.2.2"],
            &[],
        ] {
            assert_eq!(
                availability(&ips(host), &default),
                Err(NoIpv6::NoAddress),
                "{host:?}"
            );
        }
        assert_eq!(
            availability(&ips(&["fd00::2"]), &nets(&["fd00::/64", "0.0.0.0/0"])),
            Err(NoIpv6::NoDefaultRoute)
        );
        let mut routes = default.clone();
        routes.push("fd45:6d62:6601::/48".parse().unwrap());
        assert_eq!(
            availability(&ips(&["fd00::2"]), &routes),
            Err(NoIpv6::Overlap(nets(&["fd45:6d62:6601::/48"])))
        );
        let err = availability(&ips(&["fd45:6d62:66ff::9", "fd00::2"]), &default).unwrap_err();
        assert!(err.to_string().contains("fd45:6d62:66ff::9/128"), "{err}");
    }

    /// A `conf` directory as `/proc/sys/net/ipv6/conf` has it: (interface, accept_ra).
    fn conf(interfaces: &[(&str, &str)], forwarding: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, accept_ra) in interfaces {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("accept_ra"), accept_ra).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("all")).unwrap();
        std::fs::write(dir.path().join("all/forwarding"), forwarding).unwrap();
        dir
    }

    fn read(dir: &tempfile::TempDir, path: &str) -> String {
        std::fs::read_to_string(dir.path().join(path))
            .unwrap()
            .trim()
            .to_owned()
    }

    #[test]
    fn forwarding_goes_on_after_every_interface_that_takes_router_advertisements_keeps_them() {
        let dir = conf(
            &[
                ("default", "1\n"),
                ("eth0", "1\n"),
                ("eth1", "0\n"),
                ("wlan0", "2\n"),
                ("lo", "1\n"),
                ("em0ad50500v2", "1\n"),
            ],
            "0\n",
        );
        let done = enable_forwarding(dir.path()).unwrap();
        assert_eq!(
            done,
            Forwarding {
                turned_on: true,
                accept_ra: vec!["default".into(), "eth0".into()],
            }
        );
        assert_eq!(read(&dir, "all/forwarding"), "1");
        for (name, accept_ra) in [
            ("default", "2"),
            ("eth0", "2"),
            ("eth1", "0"),
            ("wlan0", "2"),
            ("lo", "1"),
            ("em0ad50500v2", "1"),
        ] {
            assert_eq!(
                read(&dir, &format!("{name}/accept_ra")),
                accept_ra,
                "{name}"
            );
        }
        // On already: the host's own settings are left alone.
        let dir = conf(&[("eth0", "1")], "1");
        assert_eq!(
            enable_forwarding(dir.path()).unwrap(),
            Forwarding::default()
        );
        assert_eq!(read(&dir, "eth0/accept_ra"), "1");
    }
}
