//! The egress policy: which destinations an execution environment's outbound connections may
//! reach. Parsed from `ember serve --egress allow|deny`, `--egress-allow CIDR[:PORTS]` and
//! `--egress-deny CIDR[:PORTS]`, refined per function by its own `egress` setting, and compiled
//! into an ordered list of rules that [`crate::host`] renders into nftables.
//!
//! # Semantics: the most specific rule wins
//!
//! Every rule names a prefix and, optionally, ports; it applies to TCP and UDP alike. Of all the
//! rules a packet matches, the one with the **longest prefix** decides. At an equal prefix the
//! operator's own rules (`--egress-allow`, `--egress-deny`) beat the [always-denied](always_denied)
//! ranges (so naming a denied range exactly opens it: the operator said so, in as many bits);
//! among the operator's rules, one that names ports beats one that does not, and at a full tie,
//! deny wins. Under all of them lies the default (`--egress`), a rule for `0.0.0.0/0` and `::/0`
//! that loses every tie.
//!
//! The always-denied ranges (the host's own addresses, loopback, link-local, the instance's VM
//! pool, the host's own networks and the private prefixes they lie in) are deny rules like any
//! other, so the same order answers every question an operator can ask:
//!
//! - `--egress-allow 0.0.0.0/0` does not open the host: the host's `/32` is more specific.
//! - `--egress-allow 192.0.2.0/24` (the host's own network) opens that network, its router and
//!   neighbours, but still not the host's own address, a `/32`: only
//!   `--egress-allow 192.0.2.2/32:5432` (or the port-less `/32`) opens a host service.
//! - `--egress-deny 203.0.113.0/24:25` closes one port of an otherwise allowed network, and
//!   `--egress-allow 203.0.113.7/32` reopens every port of one address in it.
//!
//! First match over the compiled list is exactly "the most specific matching rule": the list is
//! sorted by the rank (prefix length, class, names ports, deny) from highest to lowest, so the
//! first rule that matches a packet is the highest-ranked of those that match it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::str::FromStr;

use ember_protocol::Egress;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A rule as the operator wrote it: `CIDR[:PORTS]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EgressRule {
    /// The destinations (host bits clear).
    pub net: IpNet,
    /// The destination ports, sorted and merged; empty: all ports.
    pub ports: Vec<RangeInclusive<u16>>,
}

/// Why a `CIDR[:PORTS]` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Nothing was given.
    #[error("empty rule: expected CIDR[:PORTS], e.g. 10.0.0.0/8, 203.0.113.0/24:443 or [2001:db8::/32]:443")]
    Empty,
    /// The address or prefix part does not parse.
    #[error("`{0}` is not an IP address or CIDR prefix (e.g. 10.0.0.0/8, 2001:db8::/32)")]
    BadNet(String),
    /// The prefix has bits set past its length.
    #[error("`{given}` has host bits set past its prefix length; did you mean {network}?")]
    HostBits {
        /// What was given.
        given: String,
        /// The network it lies in.
        network: IpNet,
    },
    /// An IPv6 prefix followed by ports but not bracketed.
    #[error("`{0}`: write an IPv6 prefix with ports in brackets, e.g. [2001:db8::/32]:443")]
    Ipv6NeedsBrackets(String),
    /// A `[` without its `]`, or text between `]` and `:`.
    #[error("`{0}`: expected [IPV6-CIDR] or [IPV6-CIDR]:PORTS")]
    BadBrackets(String),
    /// A port list that does not parse.
    #[error("`{0}` is not a port list: expected PORT, PORT,PORT or LOW-HIGH with ports 1-65535")]
    BadPorts(String),
    /// A range whose low end is above its high end.
    #[error("port range `{0}` is empty: its low end is above its high end")]
    EmptyRange(String),
}

impl FromStr for EgressRule {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(PolicyError::Empty);
        }
        let (net, ports) = if let Some(rest) = s.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| PolicyError::BadBrackets(s.to_owned()))?;
            let ports = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| PolicyError::BadBrackets(s.to_owned()))?,
                ),
            };
            let net = parse_net(inside)?;
            if !matches!(net, IpNet::V6(_)) {
                return Err(PolicyError::BadBrackets(s.to_owned()));
            }
            (net, ports)
        } else if let Ok(net) = parse_net(s) {
            // The whole text is a prefix (IPv6 ones contain colons, so try this first).
            (net, None)
        } else if let Some((net, ports)) = s.rsplit_once(':') {
            if net.contains(':') {
                // `2001:db8::/32:443`, or a malformed IPv6 prefix.
                return match parse_net(net) {
                    Ok(_) => Err(PolicyError::Ipv6NeedsBrackets(s.to_owned())),
                    Err(_) => Err(PolicyError::BadNet(s.to_owned())),
                };
            }
            (parse_net(net)?, Some(ports))
        } else {
            return Err(parse_net(s)
                .err()
                .unwrap_or(PolicyError::BadNet(s.to_owned())));
        };
        let ports = match ports {
            None => Vec::new(),
            Some(p) => parse_ports(p)?,
        };
        Ok(EgressRule { net, ports })
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ports.is_empty() {
            return write!(f, "{}", self.net);
        }
        match self.net {
            IpNet::V4(n) => write!(f, "{n}:")?,
            IpNet::V6(n) => write!(f, "[{n}]:")?,
        }
        write_ports(f, &self.ports)
    }
}

fn write_ports(f: &mut fmt::Formatter<'_>, ports: &[RangeInclusive<u16>]) -> fmt::Result {
    for (i, r) in ports.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        if r.start() == r.end() {
            write!(f, "{}", r.start())?;
        } else {
            write!(f, "{}-{}", r.start(), r.end())?;
        }
    }
    Ok(())
}

/// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a `/32` or `/128`).
fn parse_net(s: &str) -> Result<IpNet, PolicyError> {
    if s.contains('/') {
        let net: IpNet = s.parse().map_err(|_| PolicyError::BadNet(s.to_owned()))?;
        if net.trunc() != net {
            return Err(PolicyError::HostBits {
                given: s.to_owned(),
                network: net.trunc(),
            });
        }
        Ok(net)
    } else {
        let ip: IpAddr = s.parse().map_err(|_| PolicyError::BadNet(s.to_owned()))?;
        Ok(IpNet::from(ip))
    }
}

/// `443`, `80,443`, `8000-9000` (and mixes), sorted and merged.
fn parse_ports(s: &str) -> Result<Vec<RangeInclusive<u16>>, PolicyError> {
    let bad = || PolicyError::BadPorts(s.to_owned());
    let port = |p: &str| -> Result<u16, PolicyError> {
        let p = p.trim();
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(bad()),
            Ok(n) => Ok(n),
        }
    };
    let mut ranges = Vec::new();
    for part in s.split(',') {
        let range = match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (port(lo)?, port(hi)?);
                if lo > hi {
                    return Err(PolicyError::EmptyRange(part.trim().to_owned()));
                }
                lo..=hi
            }
            None => {
                let p = port(part)?;
                p..=p
            }
        };
        ranges.push(range);
    }
    Ok(merge_ports(ranges))
}

/// Sorts ranges and merges those that overlap or touch.
fn merge_ports(mut ranges: Vec<RangeInclusive<u16>>) -> Vec<RangeInclusive<u16>> {
    ranges.sort_by_key(|r| (*r.start(), *r.end()));
    let mut out: Vec<RangeInclusive<u16>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        if let Some(last) = out.last_mut() {
            if u32::from(*r.start()) <= u32::from(*last.end()) + 1 {
                if r.end() > last.end() {
                    *last = *last.start()..=*r.end();
                }
                continue;
            }
        }
        out.push(r);
    }
    out
}

/// The server's egress policy: its default and the operator's exceptions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EgressPolicy {
    /// What a destination no rule names gets (`--egress`).
    pub default: Egress,
    /// `--egress-allow` rules.
    pub allow: Vec<EgressRule>,
    /// `--egress-deny` rules.
    pub deny: Vec<EgressRule>,
}

/// The host's own addresses and the networks its interfaces are on, as [`always_denied`] needs
/// them (every interface's; the VM links among them lie in the pool and add nothing).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostAddresses {
    /// Every address of the host's interfaces.
    pub addresses: Vec<IpAddr>,
    /// The networks of those addresses (e.g. `192.0.2.0/24` for `192.0.2.2/24`).
    pub networks: Vec<IpNet>,
}

/// What an execution environment never reaches unless an operator's rule names it more
/// specifically (see the module's documentation), as deny rules on all ports:
///
/// - every address of the host (a `/32` or `/128` each), so no rule broader than the address
///   itself opens it;
/// - loopback (`127.0.0.0/8`, `::1/128`) and link-local (`169.254.0.0/16`, `fe80::/10`: cloud
///   metadata services live there);
/// - the instance's VM pool `pool` (VMs never reach each other through the host);
/// - each of the host's networks, at its own prefix (its LAN: router, neighbours), but for those
///   inside `pool` (VM links);
/// - the private prefixes those networks lie in (RFC 1918 `10/8`, `172.16/12`, `192.168/16`;
///   CGNAT `100.64/10`; ULA `fc00::/7`), so a host on `10.1.2.0/24` does not expose the rest of
///   its VPC.
///
/// Sorted, without duplicates.
pub fn always_denied(host: &HostAddresses, pool: Ipv4Net) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = vec![
        net4(Ipv4Addr::new(127, 0, 0, 0), 8),
        net6(Ipv6Addr::LOCALHOST, 128),
        net4(Ipv4Addr::new(169, 254, 0, 0), 16),
        net6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
        IpNet::V4(pool.trunc()),
    ];
    out.extend(host.addresses.iter().map(|a| IpNet::from(*a)));
    let pool_net = IpNet::V4(pool.trunc());
    for net in &host.networks {
        let net = net.trunc();
        if net.prefix_len() == 0 || pool_net.contains(&net) {
            // A default route is not a network the host is "on"; the VM links of this and
            // other instances lie in the pool, denied whole (and must not deny the private
            // prefix around it, which the world beyond the host may use).
            continue;
        }
        out.push(net);
        if let Some(private) = private_prefixes().into_iter().find(|p| p.contains(&net)) {
            out.push(private);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The private prefixes whose whole is denied when the host is on part of one.
fn private_prefixes() -> [IpNet; 5] {
    [
        net4(Ipv4Addr::new(10, 0, 0, 0), 8),
        net4(Ipv4Addr::new(172, 16, 0, 0), 12),
        net4(Ipv4Addr::new(192, 168, 0, 0), 16),
        net4(Ipv4Addr::new(100, 64, 0, 0), 10),
        net6(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    ]
}

fn net4(a: Ipv4Addr, len: u8) -> IpNet {
    // The lengths passed are constants ≤ 32.
    IpNet::V4(Ipv4Net::new(a, len).unwrap_or_default().trunc())
}

fn net6(a: Ipv6Addr, len: u8) -> IpNet {
    // The lengths passed are constants ≤ 128.
    IpNet::V6(Ipv6Net::new(a, len).unwrap_or_default().trunc())
}

/// What a compiled rule does with a matching packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// Let it through (and NAT it).
    Accept,
    /// Drop it.
    Drop,
}

/// One rule of the compiled, first-match list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CompiledRule {
    /// The destinations.
    pub net: IpNet,
    /// The destination ports (TCP and UDP); empty: all ports (and protocols).
    pub ports: Vec<RangeInclusive<u16>>,
    /// What a packet matching `net` and `ports` gets.
    pub verdict: Verdict,
}

impl CompiledRule {
    /// Whether a packet to `ip:port` matches this rule.
    pub fn matches(&self, ip: IpAddr, port: u16) -> bool {
        self.net.contains(&ip)
            && (self.ports.is_empty() || self.ports.iter().any(|r| r.contains(&port)))
    }
}

impl fmt::Display for CompiledRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.verdict {
            Verdict::Accept => "accept",
            Verdict::Drop => "drop",
        };
        write!(f, "{} ", self.net)?;
        if self.ports.is_empty() {
            f.write_str("any")?;
        } else {
            write_ports(f, &self.ports)?;
        }
        write!(f, " {verdict}")
    }
}

/// A rule's rank among all that match a packet: rules are compared by prefix length, then class
/// (the operator's rules 2, always-denied 1; the defaults, below all, are appended last), then whether they name ports, then
/// deny over allow; the highest rank decides.
fn rank(net: &IpNet, ports: &[RangeInclusive<u16>], verdict: Verdict, class: u8) -> impl Ord {
    (
        net.prefix_len(),
        class,
        !ports.is_empty(),
        verdict == Verdict::Drop,
    )
}

impl EgressPolicy {
    /// The policy as an ordered first-match rule list: the operator's rules and `always_denied`
    /// (deny, all ports) sorted most specific first (see the module's documentation), then the
    /// default as the last two rules, `0.0.0.0/0` and `::/0`. Identical rules above the defaults
    /// appear once.
    pub fn compile(&self, always_denied: &[IpNet]) -> Vec<CompiledRule> {
        // (rule, class): see `rank`.
        let mut rules: Vec<(CompiledRule, u8)> = Vec::new();
        let explicit = self
            .allow
            .iter()
            .map(|r| (r, Verdict::Accept))
            .chain(self.deny.iter().map(|r| (r, Verdict::Drop)));
        for (rule, verdict) in explicit {
            rules.push((
                CompiledRule {
                    net: rule.net.trunc(),
                    ports: merge_ports(rule.ports.clone()),
                    verdict,
                },
                2,
            ));
        }
        for net in always_denied {
            rules.push((
                CompiledRule {
                    net: net.trunc(),
                    ports: Vec::new(),
                    verdict: Verdict::Drop,
                },
                1,
            ));
        }
        // Highest rank first; rules of equal rank (which no packet can tell apart in effect:
        // disjoint nets or same verdict) in a deterministic order.
        rules.sort_by(|(a, ca), (b, cb)| {
            rank(&b.net, &b.ports, b.verdict, *cb)
                .cmp(&rank(&a.net, &a.ports, a.verdict, *ca))
                .then_with(|| a.net.cmp(&b.net))
                .then_with(|| a.ports_key().cmp(&b.ports_key()))
        });
        let mut out: Vec<CompiledRule> = Vec::with_capacity(rules.len() + 2);
        for (rule, _) in rules {
            if !out.contains(&rule) {
                out.push(rule);
            }
        }
        // The defaults, last (they lose every tie), even where an operator's `/0` shadows them.
        let default = match self.default {
            Egress::Allow => Verdict::Accept,
            Egress::Deny => Verdict::Drop,
        };
        for net in [
            net4(Ipv4Addr::UNSPECIFIED, 0),
            net6(Ipv6Addr::UNSPECIFIED, 0),
        ] {
            out.push(CompiledRule {
                net,
                ports: Vec::new(),
                verdict: default,
            });
        }
        out
    }
}

impl CompiledRule {
    fn ports_key(&self) -> Vec<(u16, u16)> {
        self.ports.iter().map(|r| (*r.start(), *r.end())).collect()
    }
}

/// What a compiled list does with a packet to `ip:port`: its first matching rule's verdict
/// (drop if nothing matches, which [`EgressPolicy::compile`]'s defaults rule out).
pub fn evaluate(rules: &[CompiledRule], ip: IpAddr, port: u16) -> Verdict {
    rules
        .iter()
        .find(|r| r.matches(ip, port))
        .map_or(Verdict::Drop, |r| r.verdict)
}

#[cfg(test)]
mod tests;
