//! The VM side's network as data, with no I/O: which addresses a container's link gets, which
//! slots are free, the VM's nftables ruleset (and what it decides for a packet), and the
//! endpoint a container calls Ember's API at. [`super`] applies it through netlink.

use std::net::{Ipv4Addr, Ipv6Addr};

use ember_protocol::VmNetwork;

/// The link-local block the container links' /30s come from: the upper half of 169.254/16.
/// Link-local addresses are never routed beyond a link, so no address of the world is hidden
/// from a container by its own, and the host's policy denies 169.254/16 anyway. The /30 that
/// holds 169.254.169.254 (the cloud metadata address) is never given ([`METADATA_SLOT`]), so a
/// function that tries it reaches nothing rather than itself.
pub const LINK_BLOCK: Ipv4Addr = Ipv4Addr::new(169, 254, 128, 0);

/// The IPv6 block of the container links, when the VM has IPv6: a unique local /48 (RFC 4193)
/// of Ember's own (`fd45:6d62:6572`, "Ember" in ASCII), one /64 per link, the slot's number as
/// the fourth group. It never leaves the VM: whatever a container sends out is NATed to the
/// VM's address, as with IPv4.
pub const LINK_BLOCK_V6: Ipv6Addr = Ipv6Addr::new(0xfd45, 0x6d62, 0x6572, 0, 0, 0, 0, 0);

/// How many /30s [`LINK_BLOCK`] (a /17) holds.
pub const SLOTS: u32 = 1 << 13;

/// The slot whose /30 holds 169.254.169.254: skipped.
pub const METADATA_SLOT: u32 = ((169 - 128) << 6) | (254 >> 2);

/// The interface of the VM's own link to the host, as the host names it in the VM.
pub const VM_INTERFACE: &str = "eth0";

/// The container's end of its link, in the container's network namespace.
pub const CONTAINER_INTERFACE: &str = "eth0";

/// The VM's nftables table (inet: IPv4 and IPv6 alike). The VM's network namespace is its
/// own, so one name serves every VM.
pub const TABLE: &str = "ember_vm";

/// The variable that gives the AWS SDKs the endpoint of the Lambda API.
pub const ENDPOINT_ENV: &str = "AWS_ENDPOINT_URL_LAMBDA";

/// The addresses of one container link: a /30 whose first host address is the VM's end and
/// whose second is the container's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkAddresses {
    /// The VM's end (`c<seq>`): the container's next hop.
    pub vm: Ipv4Addr,
    /// The container's end (`eth0` in its namespace).
    pub container: Ipv4Addr,
    /// The VM's end's IPv6 address (a /64 of [`LINK_BLOCK_V6`]), used when the VM has IPv6.
    pub vm_v6: Ipv6Addr,
    /// The container's end's.
    pub container_v6: Ipv6Addr,
}

/// The /30 of `slot` (below [`SLOTS`]).
pub fn link_addresses(slot: u32) -> LinkAddresses {
    let base = u32::from(LINK_BLOCK) + slot * 4;
    let net_v6 = u128::from(LINK_BLOCK_V6) | (u128::from(slot) << 64);
    LinkAddresses {
        vm: Ipv4Addr::from(base + 1),
        container: Ipv4Addr::from(base + 2),
        vm_v6: Ipv6Addr::from(net_v6 | 1),
        container_v6: Ipv6Addr::from(net_v6 | 2),
    }
}

/// The VM side's name of the link with sequence number `seq`: `c<seq>`. Sequence numbers are
/// never reused in a VM, so a link being deleted never meets a new one of its name.
pub fn link_name(seq: u64) -> String {
    format!("c{seq}")
}

/// `AWS_ENDPOINT_URL_LAMBDA`'s value: Ember's API on the VM's gateway.
pub fn endpoint_url(network: &VmNetwork) -> String {
    format!("http://{}:{}", network.gateway, network.api_port)
}

/// The /30s of [`LINK_BLOCK`] in use, handed out in turn: the next free one after the last
/// taken, so a slot freed by a container's end is taken again only once every other free slot
/// has been. A link goes when its container's network namespace does, which the kernel
/// finishes asynchronously (its batched cleanup, milliseconds later); thousands of creations
/// later, its /30 is long free of it.
#[derive(Debug, Default)]
pub struct Slots {
    used: std::collections::BTreeSet<u32>,
    /// Where the next search starts.
    next: u32,
}

impl Slots {
    /// The next free slot in turn, now taken; `None` when all [`SLOTS`] are (the metadata
    /// address's never is).
    pub fn take(&mut self) -> Option<u32> {
        let slot = (0..SLOTS)
            .map(|i| (self.next + i) % SLOTS)
            .find(|slot| *slot != METADATA_SLOT && !self.used.contains(slot))?;
        self.used.insert(slot);
        self.next = (slot + 1) % SLOTS;
        Some(slot)
    }

    /// Frees `slot` (its container is gone).
    pub fn free(&mut self, slot: u32) {
        self.used.remove(&slot);
    }

    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

/// What a rule matches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// The packet came in on this interface.
    InputInterface(&'static str),
    /// The packet goes out on this interface.
    OutputInterface(&'static str),
    /// The packet belongs to a connection conntrack has seen both ways (or is related to one).
    EstablishedOrRelated,
    /// Conntrack could not place the packet.
    Invalid,
    /// An ICMPv6 message of this type.
    Icmpv6(u8),
}

/// ICMPv6's neighbour solicitation and advertisement (RFC 4861): IPv6's ARP, which a link
/// needs both ways to carry anything. The kernel takes them only with a hop limit of 255, so
/// none comes from further than the link it arrives on.
pub const NEIGHBOUR_SOLICITATION: u8 = 135;
pub const NEIGHBOUR_ADVERTISEMENT: u8 = 136;

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Accept,
    Drop,
    /// Source NAT to the output interface's address.
    Masquerade,
}

/// The hooks the VM's chains sit on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainHook {
    Input,
    Forward,
    Postrouting,
}

/// A base chain: its hook, and what it does with a packet no rule decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    pub name: &'static str,
    pub hook: ChainHook,
    /// A NAT chain (else a filter chain).
    pub nat: bool,
    pub policy: Action,
    /// The rules, in order; the first whose matches all hold decides (an accept, a drop, a
    /// masquerade: each ends the chain).
    pub rules: Vec<(Vec<Match>, Action)>,
}

/// The VM's table: see ARCHITECTURE.md ("The VM's side of the network").
///
/// - **input**: only the VM's loopback and its link to the host reach the VM's own addresses;
///   whatever comes from a container link (new connections, replies, anything) is dropped but
///   IPv6 neighbour discovery (without it a container could not find its next hop; IPv4's ARP
///   is not IP, and no inet table sees it). The agent serves containers on sockets of their own
///   namespaces, never over IP.
/// - **forward**: replies of tracked connections pass; nothing new is forwarded from the host's
///   link; a container link's packets are forwarded only out of the host's link. Between two
///   container links: the policy, drop.
/// - **postrouting** (NAT): what leaves by the host's link takes the VM's address.
pub fn ruleset() -> Vec<ChainSpec> {
    use Match::*;
    vec![
        ChainSpec {
            name: "input",
            hook: ChainHook::Input,
            nat: false,
            policy: Action::Drop,
            rules: vec![
                (vec![InputInterface("lo")], Action::Accept),
                (vec![InputInterface(VM_INTERFACE)], Action::Accept),
                (vec![Icmpv6(NEIGHBOUR_SOLICITATION)], Action::Accept),
                (vec![Icmpv6(NEIGHBOUR_ADVERTISEMENT)], Action::Accept),
            ],
        },
        ChainSpec {
            name: "forward",
            hook: ChainHook::Forward,
            nat: false,
            policy: Action::Drop,
            rules: vec![
                (vec![Invalid], Action::Drop),
                (vec![EstablishedOrRelated], Action::Accept),
                (vec![InputInterface(VM_INTERFACE)], Action::Drop),
                (vec![OutputInterface(VM_INTERFACE)], Action::Accept),
            ],
        },
        ChainSpec {
            name: "postrouting",
            hook: ChainHook::Postrouting,
            nat: true,
            policy: Action::Accept,
            rules: vec![(vec![OutputInterface(VM_INTERFACE)], Action::Masquerade)],
        },
    ]
}

/// A packet as the ruleset sees it (for tests and for reasoning: see [`decide`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    pub input: &'a str,
    pub output: &'a str,
    /// Conntrack's view: a reply (or related) of a connection already let through.
    pub established: bool,
    pub invalid: bool,
    /// Its ICMPv6 type, if it is one.
    pub icmpv6: Option<u8>,
}

/// What `chain` does with `packet`.
pub fn decide(chain: &ChainSpec, packet: &Packet<'_>) -> Action {
    let holds = |m: &Match| match *m {
        Match::InputInterface(name) => packet.input == name,
        Match::OutputInterface(name) => packet.output == name,
        Match::EstablishedOrRelated => packet.established,
        Match::Invalid => packet.invalid,
        Match::Icmpv6(kind) => packet.icmpv6 == Some(kind),
    };
    chain
        .rules
        .iter()
        .find(|(matches, _)| matches.iter().all(holds))
        .map_or(chain.policy, |(_, action)| *action)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(hook: ChainHook) -> ChainSpec {
        ruleset().into_iter().find(|c| c.hook == hook).unwrap()
    }

    fn packet<'a>(input: &'a str, output: &'a str, established: bool) -> Packet<'a> {
        Packet {
            input,
            output,
            established,
            invalid: false,
            icmpv6: None,
        }
    }

    #[test]
    fn link_addresses_are_disjoint_slash_30s_of_the_upper_link_local_half() {
        assert_eq!(
            link_addresses(0),
            LinkAddresses {
                vm: Ipv4Addr::new(169, 254, 128, 1),
                container: Ipv4Addr::new(169, 254, 128, 2),
                vm_v6: "fd45:6d62:6572::1".parse().unwrap(),
                container_v6: "fd45:6d62:6572::2".parse().unwrap(),
            }
        );
        assert_eq!(
            link_addresses(SLOTS - 1).container_v6,
            "fd45:6d62:6572:1fff::2".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(link_addresses(1).vm, Ipv4Addr::new(169, 254, 128, 5));
        assert_eq!(
            link_addresses(64).container,
            Ipv4Addr::new(169, 254, 129, 2)
        );
        let last = link_addresses(SLOTS - 1);
        assert_eq!(last.container, Ipv4Addr::new(169, 254, 255, 254));
        let block = ipnet::Ipv4Net::new(LINK_BLOCK, 17).unwrap();
        let metadata = link_addresses(METADATA_SLOT);
        assert_eq!(metadata.vm, Ipv4Addr::new(169, 254, 169, 253));
        assert_eq!(metadata.container, Ipv4Addr::new(169, 254, 169, 254));
        let mut seen = std::collections::HashSet::new();
        for slot in 0..SLOTS {
            let link = link_addresses(slot);
            assert!(block.contains(&link.vm) && block.contains(&link.container));
            // The /30's network and broadcast addresses are nobody's.
            assert_eq!(u32::from(link.vm) % 4, 1);
            assert!(seen.insert(link.vm) && seen.insert(link.container));
            let ula = ipnet::Ipv6Net::new(LINK_BLOCK_V6, 48).unwrap();
            assert!(ula.contains(&link.vm_v6) && ula.contains(&link.container_v6));
            // One /64 per link: the VM's end and the container's share theirs, and no other.
            assert_eq!(
                u128::from(link.vm_v6) >> 64,
                u128::from(link.container_v6) >> 64
            );
            assert_eq!((u128::from(link.vm_v6) >> 64) & 0xffff, u128::from(slot));
        }
    }

    #[test]
    fn slots_are_taken_in_turn_a_freed_one_last_and_they_run_out() {
        let mut slots = Slots::default();
        assert_eq!(
            (slots.take(), slots.take(), slots.take()),
            (Some(0), Some(1), Some(2))
        );
        slots.free(1);
        slots.free(1);
        assert_eq!(slots.in_use(), 2);
        // A freed slot waits its turn: every other free one comes first.
        assert_eq!(slots.take(), Some(3));
        let mut taken = vec![3];
        while let Some(slot) = slots.take() {
            taken.push(slot);
        }
        assert_eq!(taken.last(), Some(&1), "the freed slot, last of all");
        assert!(!taken.contains(&METADATA_SLOT));
        assert_eq!(
            slots.in_use(),
            SLOTS as usize - 1,
            "8191 links, then a clear refusal"
        );
        assert_eq!(slots.take(), None);
        // Full, one freed: that one, and again none.
        slots.free(4000);
        assert_eq!(slots.take(), Some(4000));
        assert_eq!(slots.take(), None);
        // The turn wraps around the block.
        slots.free(SLOTS - 1);
        slots.free(5);
        assert_eq!((slots.take(), slots.take()), (Some(SLOTS - 1), Some(5)));
    }

    #[test]
    fn names_and_the_endpoint() {
        assert_eq!(link_name(0), "c0");
        assert_eq!(link_name(17), "c17");
        let network = VmNetwork {
            interface: "eth0".into(),
            address: Ipv4Addr::new(10, 213, 7, 2),
            gateway: Ipv4Addr::new(10, 213, 7, 1),
            address_v6: None,
            gateway_v6: None,
            api_port: 9001,
        };
        assert_eq!(endpoint_url(&network), "http://10.213.7.1:9001");
    }

    #[test]
    fn containers_reach_only_the_hosts_link_and_never_each_other_or_the_vm() {
        let forward = chain(ChainHook::Forward);
        let input = chain(ChainHook::Input);
        let cases = [
            // (chain, in, out, established, verdict)
            (&forward, "c0", "eth0", false, Action::Accept),
            (&forward, "eth0", "c0", true, Action::Accept),
            (&forward, "eth0", "c0", false, Action::Drop),
            (&forward, "c0", "c1", false, Action::Drop),
            (&forward, "c1", "c0", false, Action::Drop),
            (&forward, "eth0", "eth0", false, Action::Drop),
            (&input, "c0", "", false, Action::Drop),
            (&input, "c0", "", true, Action::Drop),
            (&input, "eth0", "", false, Action::Accept),
            (&input, "lo", "", false, Action::Accept),
        ];
        for (chain, input, output, established, verdict) in cases {
            assert_eq!(
                decide(chain, &packet(input, output, established)),
                verdict,
                "{} {input} -> {output} (established: {established})",
                chain.name
            );
        }
        // Neighbour discovery on a container's link is answered; no other ICMPv6 (an echo
        // request, 128) reaches the VM.
        for (kind, verdict) in [
            (135, Action::Accept),
            (136, Action::Accept),
            (128, Action::Drop),
        ] {
            let icmp = Packet {
                icmpv6: Some(kind),
                ..packet("c0", "", false)
            };
            assert_eq!(decide(&input, &icmp), verdict, "ICMPv6 type {kind}");
        }
        // A reply between containers cannot exist: no new packet between them passes.
        let invalid = Packet {
            invalid: true,
            ..packet("c0", "eth0", true)
        };
        assert_eq!(decide(&forward, &invalid), Action::Drop);
    }

    #[test]
    fn only_what_leaves_by_the_hosts_link_is_masqueraded() {
        let nat = chain(ChainHook::Postrouting);
        assert!(nat.nat);
        assert_eq!(
            decide(&nat, &packet("c3", "eth0", false)),
            Action::Masquerade
        );
        assert_eq!(decide(&nat, &packet("lo", "c3", false)), Action::Accept);
    }
}
