//! The instance's nftables table (`ember_<tag>`, inet family): what it holds, as a plain list of
//! rules ([`plan`], pure and unit-tested), and its installation and removal through netlink
//! (rustables: one atomic batch each).
//!
//! ```text
//! prerouting (filter, mangle priority -150)
//!   from a VM link: IPv4 from the link's own VM address (a set lookup of source and
//!   interface) → ct mark set ip saddr, accept; anything else → drop
//! input (filter, priority 0)
//!   from a VM link: established/related → accept; tcp G:<api>, udp/tcp G:53 → accept; → drop
//!   from lo → accept; to the block from anywhere else → drop
//! forward (filter, priority 0)
//!   to a VM link: established/related → accept; → drop      (nothing opens a flow to a VM)
//!   from a VM link: established/related → accept; invalid → drop; → jump egress
//! egress: the compiled policy, first match, ending in the default for 0.0.0.0/0 and ::/0
//! postrouting (nat, srcnat priority 100)
//!   from the block, out of anything but a VM link → masquerade
//! ```
//!
//! Every chain's policy is accept: the table decides about the instance's own traffic only
//! (matched by its VM links' name prefix and its block) and leaves the host's other traffic to
//! whatever else filters it. A drop here is final for the packet (nftables runs every table's
//! chains at a hook; any drop wins).

use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;

use ipnet::{IpNet, Ipv4Net};
use rustables::expr::{
    Bitwise, Cmp, CmpOp, ConnTrackState, Conntrack, ConntrackKey, Immediate, Masquerade, Meta,
    MetaType, Payload, Register, VerdictKind,
};
use rustables::{
    Batch, Chain, ChainPolicy, ChainType, Hook, HookClass, MsgType, ProtocolFamily, Rule, Table,
};

use crate::policy::{CompiledRule, Verdict};

use super::HostError;

/// What the instance's table needs to know.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// `ember_<tag>`.
    pub name: String,
    /// The prefix of the instance's host-side VM links (`em<tag>v`).
    pub link_prefix: String,
    /// The instance's block.
    pub block: Ipv4Net,
    /// The gateway, `.1` of the block.
    pub gateway: Ipv4Addr,
    /// Ember's API port on the gateway.
    pub api_port: u16,
    /// The compiled egress policy, in order.
    pub egress: Vec<CompiledRule>,
    /// Each VM link's name and the one source address it may send from (all 253 of the
    /// block, made at start: nothing changes per VM).
    pub sources: Vec<(String, Ipv4Addr)>,
}

/// The set of (source address, VM link) pairs of the instance.
const SOURCES_SET: &str = "vm_sources";

/// A chain of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainName {
    Prerouting,
    Input,
    Forward,
    Egress,
    Postrouting,
}

impl ChainName {
    fn as_str(self) -> &'static str {
        match self {
            Self::Prerouting => "prerouting",
            Self::Input => "input",
            Self::Forward => "forward",
            Self::Egress => "egress",
            Self::Postrouting => "postrouting",
        }
    }
}

/// Transport protocols a rule can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One condition of a rule; a rule matches when all of its conditions do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// The input interface's name starts with this.
    IifPrefix(String),
    /// The input interface is exactly this.
    Iif(String),
    /// The output interface's name starts with this.
    OifPrefix(String),
    /// The output interface's name does not start with this.
    OifNotPrefix(String),
    /// An IPv4 packet.
    Ipv4,
    /// An IPv6 packet.
    Ipv6,
    /// The source address is in this IPv4 prefix.
    Saddr(Ipv4Net),
    /// The destination address is in this prefix (the family check comes with it).
    Daddr(IpNet),
    /// The transport protocol.
    L4(Proto),
    /// The destination port is in this range (after an [`Match::L4`]).
    Dport(RangeInclusive<u16>),
    /// The connection is established or related.
    Established,
    /// The packet is invalid for connection tracking.
    Invalid,
    /// The packet's IPv4 source is the one address of the VM link it came in by (a lookup
    /// of (source, input interface) in the table's set of [`TableSpec::sources`]).
    OwnSource,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Accept,
    Drop,
    /// Continue in the egress chain.
    JumpEgress,
    /// Mark the connection with the packet's IPv4 source address, and accept.
    MarkWithSaddr,
    Masquerade,
}

/// One rule of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub chain: ChainName,
    pub matches: Vec<Match>,
    pub action: Action,
}

/// Every rule of the table, chain by chain, in order.
pub fn plan(spec: &TableSpec) -> Vec<RuleSpec> {
    use Action::*;
    use ChainName::*;
    use Match::*;
    let vm = || IifPrefix(spec.link_prefix.clone());
    let to_vm = || OifPrefix(spec.link_prefix.clone());
    let gateway = || Daddr(IpNet::V4(Ipv4Net::from(spec.gateway)));
    let rule = |chain, matches: Vec<Match>, action| RuleSpec {
        chain,
        matches,
        action,
    };
    let mut rules = vec![
        // IPv6 is not routed for VMs (see ARCHITECTURE.md, "Network"), nor a source other
        // than the link's own VM address (whatever the host's rp_filter says).
        rule(Prerouting, vec![vm(), Ipv6], Drop),
        rule(Prerouting, vec![vm(), Ipv4, OwnSource], MarkWithSaddr),
        rule(Prerouting, vec![vm()], Drop),
        rule(Input, vec![vm(), Established], Accept),
        rule(
            Input,
            vec![
                vm(),
                gateway(),
                L4(Proto::Tcp),
                Dport(spec.api_port..=spec.api_port),
            ],
            Accept,
        ),
        rule(
            Input,
            vec![vm(), gateway(), L4(Proto::Udp), Dport(53..=53)],
            Accept,
        ),
        rule(
            Input,
            vec![vm(), gateway(), L4(Proto::Tcp), Dport(53..=53)],
            Accept,
        ),
        rule(Input, vec![vm()], Drop),
        rule(Input, vec![Iif("lo".into())], Accept),
        rule(Input, vec![Daddr(IpNet::V4(spec.block))], Drop),
        rule(Forward, vec![to_vm(), Established], Accept),
        rule(Forward, vec![to_vm()], Drop),
        rule(Forward, vec![vm(), Established], Accept),
        rule(Forward, vec![vm(), Invalid], Drop),
        rule(Forward, vec![vm()], JumpEgress),
    ];
    for compiled in &spec.egress {
        let action = match compiled.verdict {
            Verdict::Accept => Accept,
            Verdict::Drop => Drop,
        };
        let family = match compiled.net {
            IpNet::V4(_) => Ipv4,
            IpNet::V6(_) => Ipv6,
        };
        let net = if compiled.net.prefix_len() == 0 {
            family
        } else {
            Daddr(compiled.net)
        };
        if compiled.ports.is_empty() {
            rules.push(rule(Egress, vec![net], action));
            continue;
        }
        for l4 in [Proto::Tcp, Proto::Udp] {
            for ports in &compiled.ports {
                rules.push(rule(
                    Egress,
                    vec![net.clone(), L4(l4), Dport(ports.clone())],
                    action,
                ));
            }
        }
    }
    rules.push(rule(
        Postrouting,
        vec![
            Ipv4,
            Saddr(spec.block),
            OifNotPrefix(spec.link_prefix.clone()),
        ],
        Masquerade,
    ));
    rules
}

fn table(name: &str) -> Table {
    Table::new(ProtocolFamily::Inet).with_name(name)
}

/// Installs the table, replacing one of the same name (a killed predecessor's) in the same
/// atomic batch.
pub fn install(spec: &TableSpec) -> Result<(), HostError> {
    let table = table(&spec.name);
    let mut batch = Batch::new();
    // Add (a no-op if present), delete, add: the table is new, whatever was there.
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    batch.add(&table, MsgType::Add);
    let chain = |name: ChainName| {
        let chain = Chain::new(&table).with_name(name.as_str());
        let base = |chain: Chain, class, priority, kind| {
            chain
                .with_hook(Hook::new(class, priority))
                .with_policy(ChainPolicy::Accept)
                .with_type(kind)
        };
        match name {
            ChainName::Prerouting => base(chain, HookClass::PreRouting, -150, ChainType::Filter),
            ChainName::Input => base(chain, HookClass::In, 0, ChainType::Filter),
            ChainName::Forward => base(chain, HookClass::Forward, 0, ChainType::Filter),
            ChainName::Egress => chain,
            ChainName::Postrouting => base(chain, HookClass::PostRouting, 100, ChainType::Nat),
        }
    };
    let chains = [
        ChainName::Prerouting,
        ChainName::Input,
        ChainName::Forward,
        ChainName::Egress,
        ChainName::Postrouting,
    ]
    .map(|name| (name, chain(name).add_to_batch(&mut batch)));
    let mut sources =
        rustables::set::SetBuilder::<[u8; 32]>::new(SOURCES_SET, &table).map_err(builder)?;
    for (link, address) in &spec.sources {
        sources.add(&source_key(link, *address));
    }
    let (set, elements) = sources.finish();
    // The builder leaves the set's own family unset.
    let mut set = set.with_id(1u32);
    set.family = ProtocolFamily::Inet;
    batch.add(&set, MsgType::Add);
    batch.add(&elements, MsgType::Add);
    for rule in plan(spec) {
        let Some((_, chain)) = chains.iter().find(|(name, _)| *name == rule.chain) else {
            continue;
        };
        render(chain, &rule, &set)?.add_to_batch(&mut batch);
    }
    batch.send().map_err(|e| {
        HostError::Nftables(format!(
            "cannot install table {}: {}",
            spec.name,
            query_error(&e)
        ))
    })
}

/// Removes the table `name`; nothing happens if there is none.
pub fn remove(name: &str) -> Result<(), HostError> {
    let table = table(name);
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    batch.send().map_err(|e| {
        HostError::Nftables(format!("cannot remove table {name}: {}", query_error(&e)))
    })
}

/// The names of the nftables tables there are (every family).
pub fn tables() -> Result<Vec<String>, HostError> {
    let tables = rustables::list_tables()
        .map_err(|e| HostError::Nftables(format!("cannot list tables: {}", query_error(&e))))?;
    Ok(tables
        .into_iter()
        .filter_map(|t| t.get_name().cloned())
        .collect())
}

/// A rustables error with the kernel's errno, when it has one.
fn query_error(err: &rustables::error::QueryError) -> String {
    match err {
        rustables::error::QueryError::NetlinkError(e) => {
            format!(
                "{err}: {}",
                std::io::Error::from_raw_os_error(e.error.abs())
            )
        }
        other => match std::error::Error::source(other) {
            Some(source) => format!("{other}: {source}"),
            None => other.to_string(),
        },
    }
}

/// `NFT_PAYLOAD_NETWORK_HEADER` and `NFT_PAYLOAD_TRANSPORT_HEADER`.
const NETWORK_HEADER: u32 = 1;
const TRANSPORT_HEADER: u32 = 2;

fn payload(base: u32, offset: u32, len: u32) -> Payload {
    Payload::default()
        .with_base(base)
        .with_offset(offset)
        .with_len(len)
        .with_dreg(Register::Reg1)
}

/// The network-header offset of the destination (or source) address.
fn address_payload(net: IpNet, source: bool) -> Payload {
    match (net, source) {
        (IpNet::V4(_), false) => payload(NETWORK_HEADER, 16, 4),
        (IpNet::V4(_), true) => payload(NETWORK_HEADER, 12, 4),
        (IpNet::V6(_), false) => payload(NETWORK_HEADER, 24, 16),
        (IpNet::V6(_), true) => payload(NETWORK_HEADER, 8, 16),
    }
}

fn net_bytes(net: IpNet) -> (Vec<u8>, Vec<u8>) {
    match net {
        IpNet::V4(n) => (n.network().octets().to_vec(), n.netmask().octets().to_vec()),
        IpNet::V6(n) => (n.network().octets().to_vec(), n.netmask().octets().to_vec()),
    }
}

fn nfproto(family: i32) -> [Cmp; 1] {
    // NFPROTO_IPV4 (2) and NFPROTO_IPV6 (10) fit a byte.
    [Cmp::new(CmpOp::Eq, [u8::try_from(family).unwrap_or(0)])]
}

/// Appends the expressions matching `net` (its family too) to `rule`.
fn match_net(mut rule: Rule, net: IpNet, source: bool, op: CmpOp) -> Result<Rule, HostError> {
    let family = match net {
        IpNet::V4(_) => libc::NFPROTO_IPV4,
        IpNet::V6(_) => libc::NFPROTO_IPV6,
    };
    rule = rule.with_expr(Meta::new(MetaType::NfProto));
    for cmp in nfproto(family) {
        rule = rule.with_expr(cmp);
    }
    let (network, mask) = net_bytes(net);
    rule = rule.with_expr(address_payload(net, source));
    if net.prefix_len() < net.max_prefix_len() {
        let zero = vec![0; mask.len()];
        rule = rule.with_expr(Bitwise::new(mask, zero).map_err(builder)?);
    }
    Ok(rule.with_expr(Cmp::new(op, network)))
}

fn builder(err: rustables::error::BuilderError) -> HostError {
    HostError::Nftables(format!("cannot build a rule: {err}"))
}

/// A [`SOURCES_SET`] key, as the [`Match::OwnSource`] lookup builds it in registers 1 and 2:
/// the address, 12 zero bytes, the interface name NUL-padded to 16 bytes.
fn source_key(link: &str, address: Ipv4Addr) -> [u8; 32] {
    let mut key = [0; 32];
    key[..4].copy_from_slice(&address.octets());
    for (k, b) in key[16..].iter_mut().zip(link.bytes().take(15)) {
        *k = b;
    }
    key
}

/// The rustables rule for `spec` in `chain`.
fn render(chain: &Chain, spec: &RuleSpec, sources: &rustables::Set) -> Result<Rule, HostError> {
    let mut rule = Rule::new(chain).map_err(builder)?;
    for m in &spec.matches {
        rule = match m {
            Match::IifPrefix(prefix) => rule
                .with_expr(Meta::new(MetaType::IifName))
                .with_expr(Cmp::new(CmpOp::Eq, prefix.as_bytes())),
            Match::OifPrefix(prefix) => rule
                .with_expr(Meta::new(MetaType::OifName))
                .with_expr(Cmp::new(CmpOp::Eq, prefix.as_bytes())),
            Match::OifNotPrefix(prefix) => rule
                .with_expr(Meta::new(MetaType::OifName))
                .with_expr(Cmp::new(CmpOp::Neq, prefix.as_bytes())),
            Match::Iif(name) => {
                let mut bytes = name.as_bytes().to_vec();
                bytes.push(0);
                rule.with_expr(Meta::new(MetaType::IifName))
                    .with_expr(Cmp::new(CmpOp::Eq, bytes))
            }
            Match::Ipv4 => rule
                .with_expr(Meta::new(MetaType::NfProto))
                .with_expr(nfproto(libc::NFPROTO_IPV4)[0].clone()),
            Match::Ipv6 => rule
                .with_expr(Meta::new(MetaType::NfProto))
                .with_expr(nfproto(libc::NFPROTO_IPV6)[0].clone()),
            Match::Saddr(net) => match_net(rule, IpNet::V4(*net), true, CmpOp::Eq)?,
            Match::Daddr(net) => match_net(rule, *net, false, CmpOp::Eq)?,
            Match::L4(l4) => {
                let proto = match l4 {
                    Proto::Tcp => libc::IPPROTO_TCP,
                    Proto::Udp => libc::IPPROTO_UDP,
                };
                // 6 and 17 fit a byte.
                rule.with_expr(Meta::new(MetaType::L4Proto))
                    .with_expr(Cmp::new(CmpOp::Eq, [u8::try_from(proto).unwrap_or(0)]))
            }
            Match::Dport(ports) => {
                // TCP's and UDP's destination port: bytes 2-3 of the transport header.
                let rule = rule.with_expr(payload(TRANSPORT_HEADER, 2, 2));
                if ports.start() == ports.end() {
                    rule.with_expr(Cmp::new(CmpOp::Eq, ports.start().to_be_bytes()))
                } else {
                    // Network byte order compares as the numbers do (cmp is a memcmp).
                    rule.with_expr(Cmp::new(CmpOp::Gte, ports.start().to_be_bytes()))
                        .with_expr(Cmp::new(CmpOp::Lte, ports.end().to_be_bytes()))
                }
            }
            Match::OwnSource => rule
                // Register 1: the source and 12 zero bytes (registers are not cleared between
                // packets); register 2: the input interface's name.
                .with_expr(Immediate::new_data(vec![0; 16], Register::Reg1))
                .with_expr(address_payload(IpNet::V4(Ipv4Net::default()), true))
                .with_expr(Meta::new(MetaType::IifName).with_dreg(Register::Reg2))
                .with_expr(rustables::expr::Lookup::new(sources).map_err(builder)?),
            Match::Established | Match::Invalid => {
                let states = match m {
                    Match::Established => {
                        ConnTrackState::ESTABLISHED.bits() | ConnTrackState::RELATED.bits()
                    }
                    _ => ConnTrackState::INVALID.bits(),
                };
                // The state register is in host order.
                rule.with_expr(Conntrack::new(ConntrackKey::State))
                    .with_expr(
                        Bitwise::new(states.to_ne_bytes(), 0u32.to_ne_bytes()).map_err(builder)?,
                    )
                    .with_expr(Cmp::new(CmpOp::Neq, 0u32.to_ne_bytes()))
            }
        };
    }
    Ok(match spec.action {
        Action::Accept => rule.with_expr(Immediate::new_verdict(VerdictKind::Accept)),
        Action::Drop => rule.with_expr(Immediate::new_verdict(VerdictKind::Drop)),
        Action::JumpEgress => rule.with_expr(Immediate::new_verdict(VerdictKind::Jump {
            chain: ChainName::Egress.as_str().to_owned(),
        })),
        Action::MarkWithSaddr => rule
            .with_expr(address_payload(IpNet::V4(Ipv4Net::default()), true))
            .with_expr(
                Conntrack::default()
                    .with_key(ConntrackKey::Mark)
                    .with_sreg(Register::Reg1),
            )
            .with_expr(Immediate::new_verdict(VerdictKind::Accept)),
        Action::Masquerade => rule.with_expr(Masquerade::default()),
    })
}

/// Whether `ip` would be let through by the egress part of `rules` on `port` (TCP): the first
/// egress rule that matches decides. For tests and diagnostics.
pub fn egress_verdict(rules: &[RuleSpec], ip: IpAddr, port: u16) -> Option<Action> {
    rules
        .iter()
        .filter(|r| r.chain == ChainName::Egress)
        .find(|r| {
            r.matches.iter().all(|m| match m {
                Match::Ipv4 => ip.is_ipv4(),
                Match::Ipv6 => ip.is_ipv6(),
                Match::Daddr(net) => net.contains(&ip),
                Match::L4(l4) => *l4 == Proto::Tcp,
                Match::Dport(ports) => ports.contains(&port),
                _ => false,
            })
        })
        .map(|r| r.action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Verdict;

    fn spec(egress: Vec<CompiledRule>) -> TableSpec {
        TableSpec {
            name: "ember_0ad50500".into(),
            link_prefix: "em0ad50500v".into(),
            block: "10.213.5.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 213, 5, 1),
            api_port: 9000,
            egress,
            sources: vec![],
        }
    }

    fn compiled(net: &str, ports: Vec<RangeInclusive<u16>>, verdict: Verdict) -> CompiledRule {
        CompiledRule {
            net: net.parse().unwrap(),
            ports,
            verdict,
        }
    }

    #[test]
    fn a_vm_reaches_only_the_api_port_and_dns_on_its_gateway() {
        let rules = plan(&spec(vec![]));
        let from_vm: Vec<_> = rules
            .iter()
            .filter(|r| r.chain == ChainName::Input)
            .filter(|r| r.matches.first() == Some(&Match::IifPrefix("em0ad50500v".into())))
            .collect();
        let accepted: Vec<_> = from_vm
            .iter()
            .filter(|r| r.action == Action::Accept && !r.matches.contains(&Match::Established))
            .map(|r| r.matches[1..].to_vec())
            .collect();
        let g = Match::Daddr("10.213.5.1/32".parse().unwrap());
        assert_eq!(
            accepted,
            [
                vec![g.clone(), Match::L4(Proto::Tcp), Match::Dport(9000..=9000)],
                vec![g.clone(), Match::L4(Proto::Udp), Match::Dport(53..=53)],
                vec![g, Match::L4(Proto::Tcp), Match::Dport(53..=53)],
            ]
        );
        // The VM's last input rule drops everything else, IPv6 included.
        let last = from_vm.last().unwrap();
        assert_eq!((last.matches.len(), last.action), (1, Action::Drop));
        // Nobody but VMs and the host itself reaches the gateway.
        assert_eq!(
            rules.iter().rfind(|r| r.chain == ChainName::Input).unwrap(),
            &RuleSpec {
                chain: ChainName::Input,
                matches: vec![Match::Daddr("10.213.5.0/24".parse().unwrap())],
                action: Action::Drop,
            }
        );
    }

    #[test]
    fn nothing_opens_a_connection_to_a_vm_and_vm_traffic_goes_through_the_policy() {
        let rules = plan(&spec(vec![compiled("0.0.0.0/0", vec![], Verdict::Accept)]));
        let forward: Vec<_> = rules
            .iter()
            .filter(|r| r.chain == ChainName::Forward)
            .collect();
        // To a VM (from the world or from another VM): only replies.
        assert_eq!(forward[0].action, Action::Accept);
        assert!(forward[0].matches.contains(&Match::Established));
        assert_eq!(
            forward[1].matches,
            vec![Match::OifPrefix("em0ad50500v".into())]
        );
        assert_eq!(forward[1].action, Action::Drop);
        assert_eq!(forward.last().unwrap().action, Action::JumpEgress);
        // Spoofed sources and IPv6 never get that far.
        let pre: Vec<_> = rules
            .iter()
            .filter(|r| r.chain == ChainName::Prerouting)
            .map(|r| r.action)
            .collect();
        assert_eq!(pre, [Action::Drop, Action::MarkWithSaddr, Action::Drop]);
        let own = rules
            .iter()
            .find(|r| r.action == Action::MarkWithSaddr)
            .unwrap();
        assert!(own.matches.contains(&Match::OwnSource));
    }

    #[test]
    fn the_policy_is_rendered_in_order_with_tcp_and_udp_per_port_range() {
        let rules = plan(&spec(vec![
            compiled("192.0.2.2/32", vec![], Verdict::Drop),
            compiled("203.0.113.0/24", vec![25..=25, 8000..=9000], Verdict::Drop),
            compiled("0.0.0.0/0", vec![], Verdict::Accept),
            compiled("::/0", vec![], Verdict::Accept),
        ]));
        let egress: Vec<_> = rules
            .iter()
            .filter(|r| r.chain == ChainName::Egress)
            .collect();
        assert_eq!(egress.len(), 1 + 4 + 2);
        assert_eq!(egress[5].matches, vec![Match::Ipv4]);
        assert_eq!(egress[6].matches, vec![Match::Ipv6]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            egress_verdict(&rules, ip("192.0.2.2"), 80),
            Some(Action::Drop)
        );
        assert_eq!(
            egress_verdict(&rules, ip("203.0.113.9"), 25),
            Some(Action::Drop)
        );
        assert_eq!(
            egress_verdict(&rules, ip("203.0.113.9"), 8500),
            Some(Action::Drop)
        );
        assert_eq!(
            egress_verdict(&rules, ip("203.0.113.9"), 443),
            Some(Action::Accept)
        );
        assert_eq!(
            egress_verdict(&rules, ip("2001:db8::1"), 443),
            Some(Action::Accept)
        );
        assert!(
            egress
                .iter()
                .filter(|r| r.matches.contains(&Match::L4(Proto::Udp)))
                .count()
                == 2
        );
    }

    #[test]
    fn only_the_blocks_traffic_leaving_through_the_uplink_is_masqueraded() {
        let rules = plan(&spec(vec![]));
        let post: Vec<_> = rules
            .iter()
            .filter(|r| r.chain == ChainName::Postrouting)
            .collect();
        assert_eq!(post.len(), 1);
        assert_eq!(post[0].action, Action::Masquerade);
        assert!(post[0]
            .matches
            .contains(&Match::Saddr("10.213.5.0/24".parse().unwrap())));
        assert!(post[0]
            .matches
            .contains(&Match::OifNotPrefix("em0ad50500v".into())));
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn a_source_key_is_the_address_then_the_nul_padded_link_name() {
        let key = source_key("em0ad50500v2", Ipv4Addr::new(10, 213, 5, 2));
        assert_eq!(&key[..4], &[10, 213, 5, 2]);
        assert!(key[4..16].iter().all(|b| *b == 0));
        assert_eq!(&key[16..28], b"em0ad50500v2");
        assert!(key[28..].iter().all(|b| *b == 0));
    }
}
