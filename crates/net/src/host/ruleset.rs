//! The instance's nftables table (`ember_<tag>`, inet family): what it holds, as a plain list of
//! rules ([`plan`], pure and unit-tested), and its installation and removal through netlink
//! (nlink: one atomic batch each). The expressions are nlink's [`Expr`], encoded by nlink; the
//! batch is written with nlink's [`MessageBuilder`], since nlink 0.18's `Transaction` carries
//! no set and its `Expr` has no `ct mark set`. Where nlink's numbers are wrong (`NFT_JUMP`,
//! `NFTA_SET_ID`) the kernel's are used, each pinned by a test.
//!
//! ```text
//! prerouting (filter, mangle priority -150)
//!   from a VM link: IPv4 from the link's own VM address (a set lookup of source and
//!   interface) → ct mark set ip saddr, accept; with IPv6: neighbour discovery → accept,
//!   IPv6 from the link's own VM address → ct mark set (its last 4 bytes), accept;
//!   anything else (all IPv6 without it) → drop
//! input (filter, priority 0)
//!   from a VM link: established/related → accept; tcp G:<api>, udp/tcp G:53 → accept;
//!   (with IPv6) neighbour discovery → accept; → drop
//!   from lo → accept; to the block (and its /64) from anywhere else → drop
//! forward (filter, priority 0)
//!   to a VM link: established/related → accept; → drop      (nothing opens a flow to a VM)
//!   from a VM link: established/related → accept; invalid → drop; → jump egress
//! egress: the compiled policy, first match, ending in the default for 0.0.0.0/0 and ::/0
//! postrouting (nat, srcnat priority 100)
//!   from the block (or its /64), out of anything but a VM link → masquerade
//! ```
//!
//! Every chain's policy is accept: the table decides about the instance's own traffic only
//! (matched by its VM links' name prefix and its block) and leaves the host's other traffic to
//! whatever else filters it. A drop here is final for the packet (nftables runs every table's
//! chains at a hook; any drop wins).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nlink::netlink::attr::NLA_HDRLEN;
use nlink::netlink::message::{NlMsgError, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST};
use nlink::netlink::nftables::{
    nft_msg_type, write_expressions, ChainType, CmpOp, CtKey, CtState, Expr, Family, Hook, MetaKey,
    NfGenMsg, PayloadBase, Policy, Priority, Register, Verdict as NftVerdict, NFNL_MSG_BATCH_BEGIN,
    NFNL_MSG_BATCH_END, NFNL_SUBSYS_NFTABLES, NFTA_CHAIN_HOOK, NFTA_CHAIN_NAME, NFTA_CHAIN_POLICY,
    NFTA_CHAIN_TABLE, NFTA_CHAIN_TYPE, NFTA_CT_KEY, NFTA_DATA_VALUE, NFTA_DATA_VERDICT,
    NFTA_EXPR_DATA, NFTA_EXPR_NAME, NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY, NFTA_IMMEDIATE_DATA,
    NFTA_IMMEDIATE_DREG, NFTA_LIST_ELEM, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_TABLE,
    NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_KEY_LEN, NFTA_SET_KEY_TYPE, NFTA_SET_NAME, NFTA_SET_TABLE,
    NFTA_TABLE_NAME, NFTA_VERDICT_CHAIN, NFTA_VERDICT_CODE, NFT_MSG_DELTABLE, NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWRULE, NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM, NFT_MSG_NEWTABLE,
};
use nlink::netlink::{Connection, MessageBuilder, MessageIter, Nftables, NLMSG_HDRLEN};

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
    /// The instance's IPv6 /64 when VMs get IPv6 (`None`: IPv6 from VMs is dropped whole).
    /// Each VM link's one IPv6 source is the address of the /64 that ends in its IPv4 one
    /// ([`super::v6::address_v6`]).
    pub block6: Option<Ipv6Net>,
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
    /// The source address is in this prefix (the family check comes with it).
    Saddr(IpNet),
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
    /// The packet's IPv6 source is the one IPv6 address of the VM link it came in by (the
    /// same set, whose IPv6 keys are the sources' IPv6 pairs).
    OwnSource6,
    /// An ICMPv6 message of this type (an IPv6 packet).
    Icmpv6(u8),
}

/// ICMPv6 neighbour solicitation and advertisement (RFC 4861), without which a VM's link
/// carries no IPv6: the kernel takes them only with a hop limit of 255, so from the link
/// itself.
pub const NEIGHBOUR_DISCOVERY: [u8; 2] = [135, 136];

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Accept,
    Drop,
    /// Continue in the egress chain.
    JumpEgress,
    /// Mark the connection with the packet's IPv4 source address, and accept.
    MarkWithSaddr,
    /// Mark the connection with the last four bytes of the packet's IPv6 source address (its
    /// VM's IPv4 address: the same mark), and accept.
    MarkWithSaddr6,
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
    let nd = || NEIGHBOUR_DISCOVERY.map(Icmpv6);
    let mut rules = match spec.block6 {
        // Without IPv6 for VMs, it is dropped whole (see ARCHITECTURE.md, "Network").
        None => vec![rule(Prerouting, vec![vm(), Ipv6], Drop)],
        Some(_) => nd()
            .into_iter()
            .map(|m| rule(Prerouting, vec![vm(), m], Accept))
            .chain([rule(
                Prerouting,
                vec![vm(), Ipv6, OwnSource6],
                MarkWithSaddr6,
            )])
            .collect(),
    };
    rules.extend([
        // Nor a source other than the link's own VM address (whatever the host's rp_filter
        // says).
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
    ]);
    if spec.block6.is_some() {
        rules.extend(nd().map(|m| rule(Input, vec![vm(), m], Accept)));
    }
    rules.extend([
        rule(Input, vec![vm()], Drop),
        rule(Input, vec![Iif("lo".into())], Accept),
        rule(Input, vec![Daddr(IpNet::V4(spec.block))], Drop),
    ]);
    if let Some(block6) = spec.block6 {
        rules.push(rule(Input, vec![Daddr(IpNet::V6(block6))], Drop));
    }
    rules.extend([
        rule(Forward, vec![to_vm(), Established], Accept),
        rule(Forward, vec![to_vm()], Drop),
        rule(Forward, vec![vm(), Established], Accept),
        rule(Forward, vec![vm(), Invalid], Drop),
        rule(Forward, vec![vm()], JumpEgress),
    ]);
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
            Saddr(IpNet::V4(spec.block)),
            OifNotPrefix(spec.link_prefix.clone()),
        ],
        Masquerade,
    ));
    if let Some(block6) = spec.block6 {
        rules.push(rule(
            Postrouting,
            vec![
                Ipv6,
                Saddr(IpNet::V6(block6)),
                OifNotPrefix(spec.link_prefix.clone()),
            ],
            Masquerade,
        ));
    }
    rules
}

/// A message of a batch: its type, extra flags and attributes after the header (the table's
/// family, inet).
fn message(kind: u8, flags: u16) -> MessageBuilder {
    let mut message = MessageBuilder::new(nft_msg_type(kind), NLM_F_REQUEST | flags);
    message.append(&NfGenMsg::new(Family::Inet));
    message
}

/// `NFT_MSG_NEWTABLE` for `name`: a no-op if the table is there (no `NLM_F_EXCL`).
fn add_table(name: &str) -> MessageBuilder {
    let mut table = message(NFT_MSG_NEWTABLE, NLM_F_CREATE);
    table.append_attr_str(NFTA_TABLE_NAME, name);
    table
}

/// `NFT_MSG_DELTABLE` for `name`: the table, its chains, rules and set.
fn delete_table(name: &str) -> MessageBuilder {
    let mut table = message(NFT_MSG_DELTABLE, 0);
    table.append_attr_str(NFTA_TABLE_NAME, name);
    table
}

/// The chain `name` of `table`: a base chain with its hook, priority, type and accept policy,
/// or the regular chain egress.
fn chain_message(table: &str, name: ChainName) -> MessageBuilder {
    let mut chain = message(NFT_MSG_NEWCHAIN, NLM_F_CREATE);
    chain.append_attr_str(NFTA_CHAIN_TABLE, table);
    chain.append_attr_str(NFTA_CHAIN_NAME, name.as_str());
    let (hook, priority, kind) = match name {
        ChainName::Prerouting => (Hook::Prerouting, Priority::Mangle, ChainType::Filter),
        ChainName::Input => (Hook::Input, Priority::Filter, ChainType::Filter),
        ChainName::Forward => (Hook::Forward, Priority::Filter, ChainType::Filter),
        ChainName::Egress => return chain,
        ChainName::Postrouting => (Hook::Postrouting, Priority::SrcNat, ChainType::Nat),
    };
    let nest = chain.nest_start(NFTA_CHAIN_HOOK);
    chain.append_attr_u32_be(NFTA_HOOK_HOOKNUM, hook.to_u32());
    // The kernel reads the priority as a big-endian s32.
    chain.append_attr_u32_be(NFTA_HOOK_PRIORITY, priority.to_i32() as u32);
    chain.nest_end(nest);
    chain.append_attr_u32_be(NFTA_CHAIN_POLICY, Policy::Accept.to_u32());
    chain.append_attr_str(NFTA_CHAIN_TYPE, kind.as_str());
    chain
}

/// nft's `string` type (5): how userspace labels the opaque 32-byte key of [`SOURCES_SET`]
/// (the kernel only checks the length).
const SOURCES_KEY_TYPE: u32 = 5;
/// The key's length: [`source_key`].
const SOURCES_KEY_LEN: u32 = 32;
/// The set's id within the batch.
const SOURCES_SET_ID: u32 = 1;
/// `NFTA_SET_ID` (10 in the kernel's `enum nft_set_attributes`; nlink 0.18's constant of that
/// name is 16, which is `NFTA_SET_HANDLE`, and the kernel refuses it with ERANGE).
const NFTA_SET_ID: u16 = 10;

/// [`SOURCES_SET`] and its elements, one per VM link and family.
fn sources_messages(
    table: &str,
    sources: &[(String, Ipv4Addr)],
    block6: Option<Ipv6Net>,
) -> [MessageBuilder; 2] {
    let mut set = message(NFT_MSG_NEWSET, NLM_F_CREATE);
    set.append_attr_str(NFTA_SET_TABLE, table);
    set.append_attr_str(NFTA_SET_NAME, SOURCES_SET);
    set.append_attr_u32_be(NFTA_SET_KEY_TYPE, SOURCES_KEY_TYPE);
    set.append_attr_u32_be(NFTA_SET_KEY_LEN, SOURCES_KEY_LEN);
    set.append_attr_u32_be(NFTA_SET_ID, SOURCES_SET_ID);
    let mut elements = message(NFT_MSG_NEWSETELEM, NLM_F_CREATE);
    elements.append_attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
    elements.append_attr_str(NFTA_SET_ELEM_LIST_SET, SOURCES_SET);
    let list = elements.nest_start(NFTA_SET_ELEM_LIST_ELEMENTS);
    let v6 = block6
        .into_iter()
        .flat_map(|_| sources.iter())
        .map(|(link, address)| source_key(link, IpAddr::V6(super::v6::address_v6(*address))));
    let keys = sources
        .iter()
        .map(|(link, address)| source_key(link, IpAddr::V4(*address)))
        .chain(v6);
    for key_bytes in keys {
        let element = elements.nest_start(NFTA_LIST_ELEM);
        let key = elements.nest_start(NFTA_SET_ELEM_KEY);
        elements.append_attr(NFTA_DATA_VALUE, &key_bytes);
        elements.nest_end(key);
        elements.nest_end(element);
    }
    elements.nest_end(list);
    [set, elements]
}

/// The rule `spec` of `table`, appended to its chain.
fn rule_message(table: &str, spec: &RuleSpec) -> MessageBuilder {
    let mut rule = message(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND);
    rule.append_attr_str(NFTA_RULE_TABLE, table);
    rule.append_attr_str(NFTA_RULE_CHAIN, spec.chain.as_str());
    let list = rule.nest_start(NFTA_RULE_EXPRESSIONS);
    rule.append_bytes(&render(spec));
    rule.nest_end(list);
    rule
}

/// Installs the table, replacing one of the same name (a killed predecessor's) in the same
/// atomic batch.
pub fn install(spec: &TableSpec) -> Result<(), HostError> {
    // Add (a no-op if present), delete, add: the table is new, whatever was there.
    let mut batch = vec![
        add_table(&spec.name),
        delete_table(&spec.name),
        add_table(&spec.name),
    ];
    batch.extend(
        [
            ChainName::Prerouting,
            ChainName::Input,
            ChainName::Forward,
            ChainName::Egress,
            ChainName::Postrouting,
        ]
        .map(|name| chain_message(&spec.name, name)),
    );
    batch.extend(sources_messages(&spec.name, &spec.sources, spec.block6));
    batch.extend(plan(spec).iter().map(|rule| rule_message(&spec.name, rule)));
    let name = spec.name.clone();
    block_on(move || send(batch))?
        .map_err(|e| HostError::Nftables(format!("cannot install table {name}: {e}")))
}

/// Removes the table `name`; nothing happens if there is none.
pub fn remove(name: &str) -> Result<(), HostError> {
    let batch = vec![add_table(name), delete_table(name)];
    block_on(move || send(batch))?
        .map_err(|e| HostError::Nftables(format!("cannot remove table {name}: {e}")))
}

/// The names of the nftables tables there are (every family).
pub fn tables() -> Result<Vec<String>, HostError> {
    let tables = block_on(|| async { Connection::<Nftables>::new()?.list_tables().await })?
        .map_err(|e| HostError::Nftables(format!("cannot list tables: {e}")))?;
    Ok(tables.into_iter().map(|t| t.name).collect())
}

/// Runs `op` to completion on a thread and runtime of its own: the host's setup, teardown and
/// sweep are synchronous and are called both from inside a runtime (where blocking on one
/// panics) and outside of any; nlink's sockets need one.
fn block_on<F, Fut>(op: F) -> Result<Fut::Output, HostError>
where
    F: FnOnce() -> Fut + Send,
    Fut: Future,
    Fut::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| HostError::io("cannot start a runtime for nf_tables", e))?;
                Ok(runtime.block_on(op()))
            })
            .join()
            .unwrap_or_else(|_| Err(HostError::Nftables("the nf_tables thread panicked".into())))
    })
}

/// How long the kernel may take to answer a batch.
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `messages` as one nf_tables batch (all applied, or none) and waits for the kernel's
/// answer: its acknowledgement of the batch's end, or the first message it refused.
async fn send(messages: Vec<MessageBuilder>) -> Result<(), nlink::netlink::Error> {
    let nft = Connection::<Nftables>::new()?;
    let socket = nft.socket();
    let control = |kind, flags, seq| {
        let mut message = MessageBuilder::new(kind, NLM_F_REQUEST | flags);
        message.append(&NfGenMsg {
            nfgen_family: 0,
            version: 0,
            res_id: NFNL_SUBSYS_NFTABLES.to_be(),
        });
        message.set_seq(seq);
        message.finish()
    };
    let first_seq = socket.next_seq();
    let mut batch = control(NFNL_MSG_BATCH_BEGIN, 0, first_seq);
    for mut message in messages {
        // Errors are reported without NLM_F_ACK; an acknowledgement of every message would
        // echo each one back, the set's elements too.
        message.set_seq(socket.next_seq());
        batch.extend_from_slice(&message.finish());
    }
    let end_seq = socket.next_seq();
    batch.extend(control(NFNL_MSG_BATCH_END, NLM_F_ACK, end_seq));
    socket.send(&batch).await?;
    let answer = async {
        loop {
            let data = socket.recv_msg().await?;
            for message in MessageIter::new(&data) {
                let (header, payload) = message?;
                if !(first_seq..=end_seq).contains(&header.nlmsg_seq) {
                    continue;
                }
                if header.is_error() {
                    let error = NlMsgError::from_bytes(payload)?;
                    if !error.is_ack() {
                        return Err(error.into_error(payload));
                    }
                    if header.nlmsg_seq == end_seq {
                        return Ok(());
                    }
                }
            }
        }
    };
    tokio::time::timeout(BATCH_TIMEOUT, answer)
        .await
        .map_err(|_| {
            nlink::netlink::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer from nf_tables",
            ))
        })?
}

fn payload(base: PayloadBase, offset: u32, len: u32) -> Expr {
    Expr::Payload {
        dreg: Register::R0,
        base,
        offset,
        len,
    }
}

/// The network-header offset of the destination (or source) address.
fn address_payload(net: IpNet, source: bool) -> Expr {
    match (net, source) {
        (IpNet::V4(_), false) => payload(PayloadBase::Network, 16, 4),
        (IpNet::V4(_), true) => payload(PayloadBase::Network, 12, 4),
        (IpNet::V6(_), false) => payload(PayloadBase::Network, 24, 16),
        (IpNet::V6(_), true) => payload(PayloadBase::Network, 8, 16),
    }
}

fn net_bytes(net: IpNet) -> (Vec<u8>, Vec<u8>) {
    match net {
        IpNet::V4(n) => (n.network().octets().to_vec(), n.netmask().octets().to_vec()),
        IpNet::V6(n) => (n.network().octets().to_vec(), n.netmask().octets().to_vec()),
    }
}

fn meta(key: MetaKey) -> Expr {
    Expr::Meta {
        dreg: Register::R0,
        key,
    }
}

fn cmp(op: CmpOp, data: impl Into<Vec<u8>>) -> Expr {
    Expr::Cmp {
        sreg: Register::R0,
        op,
        data: data.into(),
    }
}

/// `meta nfproto` is `family`.
fn nfproto(exprs: &mut Vec<Expr>, family: i32) {
    exprs.push(meta(MetaKey::NfProto));
    // NFPROTO_IPV4 (2) and NFPROTO_IPV6 (10) fit a byte.
    exprs.push(cmp(CmpOp::Eq, [u8::try_from(family).unwrap_or(0)]));
}

/// Appends the expressions matching `net` (its family too).
fn match_net(exprs: &mut Vec<Expr>, net: IpNet, source: bool) {
    let family = match net {
        IpNet::V4(_) => libc::NFPROTO_IPV4,
        IpNet::V6(_) => libc::NFPROTO_IPV6,
    };
    nfproto(exprs, family);
    let (network, mask) = net_bytes(net);
    exprs.push(address_payload(net, source));
    if net.prefix_len() < net.max_prefix_len() {
        exprs.push(Expr::Bitwise {
            sreg: Register::R0,
            dreg: Register::R0,
            // 4 or 16.
            len: u32::try_from(mask.len()).unwrap_or(16),
            xor: vec![0; mask.len()],
            mask,
        });
    }
    exprs.push(cmp(CmpOp::Eq, network));
}

/// A [`SOURCES_SET`] key, as the [`Match::OwnSource`] (and [`Match::OwnSource6`]) lookup
/// builds it in registers 1 and 2: the address (an IPv4 one followed by 12 zero bytes), the
/// interface name NUL-padded to 16 bytes. An IPv4 key never equals an IPv6 one: an Ember
/// IPv6 source's fifth byte is 0x66 ([`super::v6::PREFIX_V6`]).
fn source_key(link: &str, address: IpAddr) -> [u8; 32] {
    let mut key = [0; 32];
    match address {
        IpAddr::V4(a) => key[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => key[..16].copy_from_slice(&a.octets()),
    }
    for (k, b) in key[16..].iter_mut().zip(link.bytes().take(15)) {
        *k = b;
    }
    key
}

/// The expressions of `exprs`, encoded by nlink, as the elements of a rule's expression list
/// (what follows the list's own attribute header).
fn encode(exprs: &[Expr]) -> Vec<u8> {
    let mut scratch = MessageBuilder::new(0, 0);
    write_expressions(&mut scratch, exprs);
    scratch
        .as_bytes()
        .get(NLMSG_HDRLEN + NLA_HDRLEN..)
        .unwrap_or_default()
        .to_vec()
}

/// `NFTA_CT_SREG`, which nlink names no constant for.
const NFTA_CT_SREG: u16 = 4;
/// `NFT_CT_MARK`.
const NFT_CT_MARK: u32 = 3;
/// `NFT_REG_1`, nlink's [`Register::R0`].
const NFT_REG_1: u32 = 1;
/// `NFT_REG_VERDICT`.
const NFT_REG_VERDICT: u32 = 0;

/// `ct mark set` register 1: the one expression nlink's [`Expr`] cannot say (its `Ct` only
/// loads), encoded as the kernel's `nft_ct_set` reads it.
fn ct_mark_set() -> Vec<u8> {
    let mut scratch = MessageBuilder::new(0, 0);
    let element = scratch.nest_start(NFTA_LIST_ELEM);
    scratch.append_attr_str(NFTA_EXPR_NAME, "ct");
    let data = scratch.nest_start(NFTA_EXPR_DATA);
    scratch.append_attr_u32_be(NFTA_CT_KEY, NFT_CT_MARK);
    scratch.append_attr_u32_be(NFTA_CT_SREG, NFT_REG_1);
    scratch.nest_end(data);
    scratch.nest_end(element);
    scratch
        .as_bytes()
        .get(NLMSG_HDRLEN..)
        .unwrap_or_default()
        .to_vec()
}

/// `NFT_JUMP` (-3 in the kernel's `enum nft_verdicts`; nlink 0.18's constant of that name is
/// -2, which is `NFT_BREAK`: its `Verdict::Jump` would skip the chain it names).
const NFT_JUMP: i32 = -3;

/// `jump chain`: an immediate into the verdict register, encoded as the kernel's
/// `nft_immediate` reads it (nlink's own encoding of a jump is wrong, see [`NFT_JUMP`]).
fn jump(chain: ChainName) -> Vec<u8> {
    let mut scratch = MessageBuilder::new(0, 0);
    let element = scratch.nest_start(NFTA_LIST_ELEM);
    scratch.append_attr_str(NFTA_EXPR_NAME, "immediate");
    let data = scratch.nest_start(NFTA_EXPR_DATA);
    scratch.append_attr_u32_be(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
    let immediate = scratch.nest_start(NFTA_IMMEDIATE_DATA);
    let verdict = scratch.nest_start(NFTA_DATA_VERDICT);
    // The kernel reads the code as a big-endian s32.
    scratch.append_attr_u32_be(NFTA_VERDICT_CODE, NFT_JUMP as u32);
    scratch.append_attr_str(NFTA_VERDICT_CHAIN, chain.as_str());
    scratch.nest_end(verdict);
    scratch.nest_end(immediate);
    scratch.nest_end(data);
    scratch.nest_end(element);
    scratch
        .as_bytes()
        .get(NLMSG_HDRLEN..)
        .unwrap_or_default()
        .to_vec()
}

/// The expressions of the rule `spec`, encoded (see [`encode`]).
fn render(spec: &RuleSpec) -> Vec<u8> {
    let mut exprs = Vec::new();
    for m in &spec.matches {
        match m {
            Match::IifPrefix(prefix) => {
                exprs.push(meta(MetaKey::IifName));
                exprs.push(cmp(CmpOp::Eq, prefix.as_bytes()));
            }
            Match::OifPrefix(prefix) => {
                exprs.push(meta(MetaKey::OifName));
                exprs.push(cmp(CmpOp::Eq, prefix.as_bytes()));
            }
            Match::OifNotPrefix(prefix) => {
                exprs.push(meta(MetaKey::OifName));
                exprs.push(cmp(CmpOp::Neq, prefix.as_bytes()));
            }
            Match::Iif(name) => {
                let mut bytes = name.as_bytes().to_vec();
                bytes.push(0);
                exprs.push(meta(MetaKey::IifName));
                exprs.push(cmp(CmpOp::Eq, bytes));
            }
            Match::Ipv4 => nfproto(&mut exprs, libc::NFPROTO_IPV4),
            Match::Ipv6 => nfproto(&mut exprs, libc::NFPROTO_IPV6),
            Match::Saddr(net) => match_net(&mut exprs, *net, true),
            Match::Daddr(net) => match_net(&mut exprs, *net, false),
            Match::L4(l4) => {
                let proto = match l4 {
                    Proto::Tcp => libc::IPPROTO_TCP,
                    Proto::Udp => libc::IPPROTO_UDP,
                };
                exprs.push(meta(MetaKey::L4Proto));
                // 6 and 17 fit a byte.
                exprs.push(cmp(CmpOp::Eq, [u8::try_from(proto).unwrap_or(0)]));
            }
            Match::Dport(ports) => {
                // TCP's and UDP's destination port: bytes 2-3 of the transport header.
                exprs.push(payload(PayloadBase::Transport, 2, 2));
                if ports.start() == ports.end() {
                    exprs.push(cmp(CmpOp::Eq, ports.start().to_be_bytes()));
                } else {
                    // Network byte order compares as the numbers do (cmp is a memcmp).
                    exprs.push(cmp(CmpOp::Gte, ports.start().to_be_bytes()));
                    exprs.push(cmp(CmpOp::Lte, ports.end().to_be_bytes()));
                }
            }
            Match::OwnSource6 => {
                // Register 1: the 16-byte source; register 2: the input interface's name.
                exprs.push(address_payload(IpNet::V6(Ipv6Net::default()), true));
                exprs.push(Expr::Meta {
                    dreg: Register::R1,
                    key: MetaKey::IifName,
                });
                exprs.push(Expr::Lookup {
                    set: SOURCES_SET.to_owned(),
                    sreg: Register::R0,
                });
            }
            Match::Icmpv6(kind) => {
                nfproto(&mut exprs, libc::NFPROTO_IPV6);
                exprs.push(meta(MetaKey::L4Proto));
                // IPPROTO_ICMPV6 (58) fits a byte.
                exprs.push(cmp(
                    CmpOp::Eq,
                    [u8::try_from(libc::IPPROTO_ICMPV6).unwrap_or(0)],
                ));
                // The type: the transport header's first byte.
                exprs.push(payload(PayloadBase::Transport, 0, 1));
                exprs.push(cmp(CmpOp::Eq, [*kind]));
            }
            Match::OwnSource => {
                // Register 1: the source and 12 zero bytes (registers are not cleared between
                // packets); register 2: the input interface's name.
                exprs.push(Expr::Immediate {
                    dreg: Register::R0,
                    data: vec![0; 16],
                });
                exprs.push(address_payload(IpNet::V4(Ipv4Net::default()), true));
                exprs.push(Expr::Meta {
                    dreg: Register::R1,
                    key: MetaKey::IifName,
                });
                exprs.push(Expr::Lookup {
                    set: SOURCES_SET.to_owned(),
                    sreg: Register::R0,
                });
            }
            Match::Established | Match::Invalid => {
                let states = match m {
                    Match::Established => CtState::ESTABLISHED | CtState::RELATED,
                    _ => CtState::INVALID,
                };
                // The state register is in host order.
                exprs.push(Expr::Ct {
                    dreg: Register::R0,
                    key: CtKey::State,
                });
                exprs.push(Expr::Bitwise {
                    sreg: Register::R0,
                    dreg: Register::R0,
                    len: 4,
                    mask: states.bits().to_ne_bytes().to_vec(),
                    xor: vec![0; 4],
                });
                exprs.push(cmp(CmpOp::Neq, 0u32.to_ne_bytes()));
            }
        }
    }
    let verdict = |verdict| encode(&[Expr::Verdict(verdict)]);
    let tail = match spec.action {
        Action::Accept => verdict(NftVerdict::Accept),
        Action::Drop => verdict(NftVerdict::Drop),
        Action::JumpEgress => jump(ChainName::Egress),
        Action::MarkWithSaddr => {
            exprs.push(address_payload(IpNet::V4(Ipv4Net::default()), true));
            let mut tail = ct_mark_set();
            tail.extend(verdict(NftVerdict::Accept));
            tail
        }
        Action::MarkWithSaddr6 => {
            // The source's last four bytes: offset 8 + 12 of the IPv6 header.
            exprs.push(payload(PayloadBase::Network, 20, 4));
            let mut tail = ct_mark_set();
            tail.extend(verdict(NftVerdict::Accept));
            tail
        }
        Action::Masquerade => {
            exprs.push(Expr::Masquerade);
            vec![]
        }
    };
    let mut bytes = encode(&exprs);
    bytes.extend(tail);
    bytes
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
            block6: None,
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
    fn spec6(egress: Vec<CompiledRule>) -> TableSpec {
        TableSpec {
            block6: Some("fd45:6d62:660a:d505::/64".parse().unwrap()),
            ..spec(egress)
        }
    }

    #[test]
    fn with_ipv6_a_vm_sends_from_its_own_v6_address_and_reaches_only_neighbour_discovery() {
        use Match::*;
        let vm = || IifPrefix("em0ad50500v".into());
        let rules = plan(&spec6(vec![]));
        let chain = |name| -> Vec<(Vec<Match>, Action)> {
            rules
                .iter()
                .filter(|r| r.chain == name)
                .map(|r| (r.matches.clone(), r.action))
                .collect()
        };
        // Neighbour discovery from any source (a link-local one too), then only the link's own
        // IPv6 address, marked like its IPv4 one; the rest (router advertisements, MLD,
        // spoofed sources) dropped.
        assert_eq!(
            chain(ChainName::Prerouting),
            [
                (vec![vm(), Icmpv6(135)], Action::Accept),
                (vec![vm(), Icmpv6(136)], Action::Accept),
                (vec![vm(), Ipv6, OwnSource6], Action::MarkWithSaddr6),
                (vec![vm(), Ipv4, OwnSource], Action::MarkWithSaddr),
                (vec![vm()], Action::Drop),
            ]
        );
        // On the host: the API and DNS over IPv4 as before, neighbour discovery over IPv6,
        // nothing else (the gateway's IPv6 address, the host's, link-local: dropped).
        let input = chain(ChainName::Input);
        let from_vm: Vec<_> = input
            .iter()
            .filter(|(m, _)| m.first() == Some(&vm()))
            .collect();
        let v6_accepted: Vec<_> = from_vm
            .iter()
            .filter(|(m, a)| *a == Action::Accept && m.iter().any(|m| matches!(m, Icmpv6(_))))
            .collect();
        assert_eq!(v6_accepted.len(), 2);
        assert_eq!(from_vm.last().unwrap(), &&(vec![vm()], Action::Drop));
        assert!(input.contains(&(
            vec![Daddr("fd45:6d62:660a:d505::/64".parse().unwrap())],
            Action::Drop
        )));
        // Both families masqueraded out of the uplink.
        assert_eq!(
            chain(ChainName::Postrouting)
                .iter()
                .map(|(m, a)| (m[1].clone(), *a))
                .collect::<Vec<_>>(),
            [
                (Saddr("10.213.5.0/24".parse().unwrap()), Action::Masquerade),
                (
                    Saddr("fd45:6d62:660a:d505::/64".parse().unwrap()),
                    Action::Masquerade
                ),
            ]
        );
        // Forwarding is the same for both: replies only towards a VM, the policy outwards.
        assert_eq!(
            chain(ChainName::Forward),
            chain_of(&plan(&spec(vec![])), ChainName::Forward)
        );
    }

    fn chain_of(rules: &[RuleSpec], name: ChainName) -> Vec<(Vec<Match>, Action)> {
        rules
            .iter()
            .filter(|r| r.chain == name)
            .map(|r| (r.matches.clone(), r.action))
            .collect()
    }

    #[test]
    fn the_policy_decides_ipv6_destinations_as_it_does_ipv4_ones() {
        let rules = plan(&spec6(vec![
            compiled("fd00::2/128", vec![], Verdict::Drop),
            compiled("fe80::/10", vec![], Verdict::Drop),
            compiled("2001:db8:ec::/48", vec![443..=443], Verdict::Drop),
            compiled("fd45:6d62:6600::/40", vec![], Verdict::Drop),
            compiled("0.0.0.0/0", vec![], Verdict::Accept),
            compiled("::/0", vec![], Verdict::Accept),
        ]));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for (to, port, verdict) in [
            ("fd00::2", 22, Action::Drop),
            ("fe80::1", 80, Action::Drop),
            ("fd45:6d62:660a:d506::ad5:602", 80, Action::Drop),
            ("2001:db8:ec::2", 443, Action::Drop),
            ("2001:db8:ec::2", 80, Action::Accept),
            ("2606:4700::1111", 443, Action::Accept),
        ] {
            assert_eq!(
                egress_verdict(&rules, ip(to), port),
                Some(verdict),
                "{to}:{port}"
            );
        }
    }

    #[test]
    fn without_ipv6_every_ipv6_packet_from_a_vm_is_dropped_first() {
        let rules = plan(&spec(vec![]));
        assert_eq!(
            rules[0],
            RuleSpec {
                chain: ChainName::Prerouting,
                matches: vec![Match::IifPrefix("em0ad50500v".into()), Match::Ipv6],
                action: Action::Drop,
            }
        );
        assert!(!rules
            .iter()
            .any(|r| r.matches.iter().any(|m| matches!(m, Match::Icmpv6(_)))));
        assert!(!rules.iter().any(|r| r.action == Action::MarkWithSaddr6));
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;
    use nlink::netlink::AttrIter;

    /// The attributes in `bytes`, by type (the nested flag cleared).
    fn attrs(bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
        AttrIter::new(bytes)
            .map(|(kind, payload)| (kind & 0x7fff, payload.to_vec()))
            .collect()
    }

    fn attr(bytes: &[u8], kind: u16) -> Vec<u8> {
        attrs(bytes)
            .into_iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, payload)| payload)
            .unwrap_or_else(|| panic!("no attribute {kind}"))
    }

    /// Each expression of an encoded rule: its name and its data.
    fn expressions(rule: &RuleSpec) -> Vec<(String, Vec<u8>)> {
        attrs(&render(rule))
            .into_iter()
            .map(|(_, element)| {
                let name = attr(&element, NFTA_EXPR_NAME);
                let name = String::from_utf8(name).unwrap();
                let data = attrs(&element)
                    .into_iter()
                    .find(|(k, _)| *k == NFTA_EXPR_DATA)
                    .map(|(_, d)| d)
                    .unwrap_or_default();
                (name.trim_end_matches('\0').to_owned(), data)
            })
            .collect()
    }

    #[test]
    fn vm_traffic_jumps_to_the_egress_chain_rather_than_skipping_it() {
        let rule = RuleSpec {
            chain: ChainName::Forward,
            matches: vec![Match::IifPrefix("em0ad50500v".into())],
            action: Action::JumpEgress,
        };
        let (name, data) = expressions(&rule).pop().unwrap();
        assert_eq!(name, "immediate");
        assert_eq!(attr(&data, NFTA_IMMEDIATE_DREG), 0u32.to_be_bytes());
        let verdict = attr(&attr(&data, NFTA_IMMEDIATE_DATA), NFTA_DATA_VERDICT);
        // NFT_JUMP, not NFT_BREAK (-2), which would end the rule and let the packet through
        // the forward chain's accept policy without the egress policy.
        assert_eq!(attr(&verdict, NFTA_VERDICT_CODE), (-3i32).to_be_bytes());
        assert_eq!(attr(&verdict, NFTA_VERDICT_CHAIN), b"egress\0");
    }

    #[test]
    fn a_vms_connections_are_marked_with_its_source_address() {
        let rule = RuleSpec {
            chain: ChainName::Prerouting,
            matches: vec![Match::OwnSource],
            action: Action::MarkWithSaddr,
        };
        let exprs = expressions(&rule);
        let names: Vec<_> = exprs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "immediate",
                "payload",
                "meta",
                "lookup",
                "payload",
                "ct",
                "immediate"
            ]
        );
        // `ct mark set` from register 1, where the payload before it loaded `ip saddr`.
        let ct = &exprs[5].1;
        assert_eq!(attr(ct, NFTA_CT_KEY), 3u32.to_be_bytes());
        assert_eq!(attr(ct, NFTA_CT_SREG), 1u32.to_be_bytes());
        let saddr = &exprs[4].1;
        assert_eq!(attr(saddr, NFTA_PAYLOAD_DREG_ATTR), 1u32.to_be_bytes());
        assert_eq!(attr(saddr, NFTA_PAYLOAD_OFFSET_ATTR), 12u32.to_be_bytes());
    }

    /// `NFTA_PAYLOAD_DREG` and `NFTA_PAYLOAD_OFFSET`.
    const NFTA_PAYLOAD_DREG_ATTR: u16 = 1;
    const NFTA_PAYLOAD_OFFSET_ATTR: u16 = 3;

    #[test]
    fn the_sources_set_holds_one_32_byte_key_per_link_under_its_batch_id() {
        let [set, elements] = sources_messages(
            "ember_0ad50500",
            &[
                ("em0ad50500v2".into(), Ipv4Addr::new(10, 213, 5, 2)),
                ("em0ad50500v3".into(), Ipv4Addr::new(10, 213, 5, 3)),
            ],
            None,
        );
        // After the netlink header and nfgenmsg.
        let set = &set.as_bytes()[NLMSG_HDRLEN + 4..];
        assert_eq!(attr(set, NFTA_SET_KEY_LEN), 32u32.to_be_bytes());
        assert_eq!(attr(set, 10), 1u32.to_be_bytes());
        assert!(
            attrs(set).iter().all(|(k, _)| *k != 16),
            "no NFTA_SET_HANDLE"
        );
        let elements = &elements.as_bytes()[NLMSG_HDRLEN + 4..];
        let keys: Vec<_> = attrs(&attr(elements, NFTA_SET_ELEM_LIST_ELEMENTS))
            .into_iter()
            .map(|(_, element)| attr(&attr(&element, NFTA_SET_ELEM_KEY), NFTA_DATA_VALUE))
            .collect();
        assert_eq!(
            keys,
            [
                source_key("em0ad50500v2", Ipv4Addr::new(10, 213, 5, 2).into()).to_vec(),
                source_key("em0ad50500v3", Ipv4Addr::new(10, 213, 5, 3).into()).to_vec(),
            ]
        );
    }

    #[test]
    fn a_vms_ipv6_connections_carry_the_mark_of_its_ipv4_ones() {
        let rule = RuleSpec {
            chain: ChainName::Prerouting,
            matches: vec![Match::OwnSource6],
            action: Action::MarkWithSaddr6,
        };
        let exprs = expressions(&rule);
        let names: Vec<_> = exprs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["payload", "meta", "lookup", "payload", "ct", "immediate"]
        );
        // The lookup's key: the 16-byte source at offset 8, then the interface.
        let saddr = &exprs[0].1;
        assert_eq!(attr(saddr, NFTA_PAYLOAD_OFFSET_ATTR), 8u32.to_be_bytes());
        assert_eq!(attr(saddr, NFTA_PAYLOAD_LEN_ATTR), 16u32.to_be_bytes());
        // The mark: the source's last four bytes (the VM's IPv4 address), from register 1.
        let low = &exprs[3].1;
        assert_eq!(attr(low, NFTA_PAYLOAD_DREG_ATTR), 1u32.to_be_bytes());
        assert_eq!(attr(low, NFTA_PAYLOAD_OFFSET_ATTR), 20u32.to_be_bytes());
        assert_eq!(attr(low, NFTA_PAYLOAD_LEN_ATTR), 4u32.to_be_bytes());
        assert_eq!(attr(&exprs[4].1, NFTA_CT_KEY), 3u32.to_be_bytes());
    }

    #[test]
    fn with_ipv6_the_sources_set_holds_each_links_ipv6_address_too() {
        let sources = [
            ("em0ad50500v2".to_owned(), Ipv4Addr::new(10, 213, 5, 2)),
            ("em0ad50500v3".to_owned(), Ipv4Addr::new(10, 213, 5, 3)),
        ];
        let [_, elements] = sources_messages(
            "ember_0ad50500",
            &sources,
            Some("fd45:6d62:660a:d505::/64".parse().unwrap()),
        );
        let elements = &elements.as_bytes()[NLMSG_HDRLEN + 4..];
        let keys: Vec<_> = attrs(&attr(elements, NFTA_SET_ELEM_LIST_ELEMENTS))
            .into_iter()
            .map(|(_, element)| attr(&attr(&element, NFTA_SET_ELEM_KEY), NFTA_DATA_VALUE))
            .collect();
        assert_eq!(keys.len(), 4);
        let v6: std::net::Ipv6Addr = "fd45:6d62:660a:d505::ad5:503".parse().unwrap();
        assert_eq!(keys[3], source_key("em0ad50500v3", v6.into()).to_vec());
        assert_eq!(&keys[3][..16], &v6.octets());
        assert_eq!(&keys[3][16..28], b"em0ad50500v3");
        // No IPv4 key is an IPv6 one.
        assert!(keys[..2].iter().all(|k| !keys[2..].contains(k)));
    }

    #[test]
    fn an_icmpv6_match_checks_the_family_the_protocol_and_the_type() {
        let rule = RuleSpec {
            chain: ChainName::Input,
            matches: vec![Match::Icmpv6(135)],
            action: Action::Accept,
        };
        let exprs = expressions(&rule);
        let cmps: Vec<_> = exprs
            .iter()
            .filter(|(n, _)| n == "cmp")
            .map(|(_, d)| attr(&attr(d, NFTA_CMP_DATA_ATTR), NFTA_DATA_VALUE))
            .collect();
        assert_eq!(cmps, [vec![10u8], vec![58], vec![135]]);
    }

    /// `NFTA_CMP_DATA` and `NFTA_PAYLOAD_LEN`.
    const NFTA_CMP_DATA_ATTR: u16 = 3;
    const NFTA_PAYLOAD_LEN_ATTR: u16 = 4;

    #[test]
    fn a_source_key_is_the_address_then_the_nul_padded_link_name() {
        let key = source_key("em0ad50500v2", Ipv4Addr::new(10, 213, 5, 2).into());
        assert_eq!(&key[..4], &[10, 213, 5, 2]);
        assert!(key[4..16].iter().all(|b| *b == 0));
        assert_eq!(&key[16..28], b"em0ad50500v2");
        assert!(key[28..].iter().all(|b| *b == 0));
    }
}
