//! The egress policy's parser and compiler, as tables of what operators write and properties
//! every compiled list keeps.

use super::*;
use proptest::prelude::*;

fn rule(s: &str) -> EgressRule {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// The test machine's shape: 192.0.2.2/24 and fd00::2/64 on eth0, the default pool.
fn host() -> HostAddresses {
    HostAddresses {
        addresses: vec![ip("192.0.2.2"), ip("fd00::2")],
        networks: vec![net("192.0.2.0/24"), net("fd00::/64")],
    }
}

fn pool() -> Ipv4Net {
    "10.213.0.0/16".parse().unwrap()
}

fn policy(default: Egress, allow: &[&str], deny: &[&str]) -> EgressPolicy {
    EgressPolicy {
        default,
        allow: allow.iter().map(|s| rule(s)).collect(),
        deny: deny.iter().map(|s| rule(s)).collect(),
    }
}

fn verdict_of(p: &EgressPolicy, dest: &str, port: u16) -> Verdict {
    evaluate(&p.compile(&always_denied(&host(), pool())), ip(dest), port)
}

#[test]
fn rules_parse() {
    type Case<'a> = (&'a str, &'a str, &'a [(u16, u16)]);
    let cases: &[Case<'_>] = &[
        ("10.0.0.0/8", "10.0.0.0/8", &[]),
        ("  10.0.0.0/8 ", "10.0.0.0/8", &[]),
        ("203.0.113.7", "203.0.113.7/32", &[]),
        ("0.0.0.0/0:443", "0.0.0.0/0", &[(443, 443)]),
        ("10.0.0.0/8:80,443", "10.0.0.0/8", &[(80, 80), (443, 443)]),
        ("10.0.0.0/8:443,80", "10.0.0.0/8", &[(80, 80), (443, 443)]),
        ("10.0.0.0/8:8000-9000", "10.0.0.0/8", &[(8000, 9000)]),
        ("10.0.0.0/8:1-65535", "10.0.0.0/8", &[(1, 65535)]),
        // Overlapping and touching ranges merge.
        ("10.0.0.0/8:80-90,85-100,101", "10.0.0.0/8", &[(80, 101)]),
        ("10.0.0.0/8:443,443", "10.0.0.0/8", &[(443, 443)]),
        ("203.0.113.7:53", "203.0.113.7/32", &[(53, 53)]),
        ("2001:db8::/32", "2001:db8::/32", &[]),
        ("::/0", "::/0", &[]),
        ("2001:db8::1", "2001:db8::1/128", &[]),
        ("[2001:db8::/32]", "2001:db8::/32", &[]),
        ("[2001:db8::/32]:443", "2001:db8::/32", &[(443, 443)]),
        (
            "[2001:db8::1]:80,443",
            "2001:db8::1/128",
            &[(80, 80), (443, 443)],
        ),
        ("[::/0]:1000-2000", "::/0", &[(1000, 2000)]),
    ];
    for (text, want_net, want_ports) in cases {
        let r: EgressRule = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(r.net, net(want_net), "{text}");
        let ports: Vec<(u16, u16)> = r.ports.iter().map(|p| (*p.start(), *p.end())).collect();
        assert_eq!(&ports, want_ports, "{text}");
    }
}

#[test]
fn bad_rules_are_refused_with_a_reason() {
    let cases: &[(&str, &str)] = &[
        ("", "empty rule"),
        ("   ", "empty rule"),
        ("10.0.0.0/33", "not an IP address or CIDR"),
        ("10.0.0/8", "not an IP address or CIDR"),
        ("example.com", "not an IP address or CIDR"),
        ("example.com:443", "not an IP address or CIDR"),
        (
            "10.0.0.1/8",
            "host bits set past its prefix length; did you mean 10.0.0.0/8?",
        ),
        ("[2001:db8::1/32]:443", "did you mean 2001:db8::/32?"),
        ("10.0.0.0/8:", "not a port list"),
        ("10.0.0.0/8:0", "not a port list"),
        ("10.0.0.0/8:65536", "not a port list"),
        ("10.0.0.0/8:http", "not a port list"),
        ("10.0.0.0/8:+80", "not a port list"),
        ("10.0.0.0/8:80,", "not a port list"),
        ("10.0.0.0/8:80-", "not a port list"),
        ("10.0.0.0/8:-80", "not a port list"),
        ("10.0.0.0/8:9000-8000", "port range `9000-8000` is empty"),
        (
            "2001:db8::/32:443",
            "write an IPv6 prefix with ports in brackets",
        ),
        ("[2001:db8::/32", "expected [IPV6-CIDR]"),
        ("[2001:db8::/32]443", "expected [IPV6-CIDR]"),
        ("[10.0.0.0/8]:443", "expected [IPV6-CIDR]"),
        ("2001:db8::zz/32", "not an IP address or CIDR"),
    ];
    for (text, want) in cases {
        let err = text.parse::<EgressRule>().unwrap_err().to_string();
        assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
    }
}

#[test]
fn rules_print_as_they_parse() {
    for text in [
        "10.0.0.0/8",
        "203.0.113.7/32:53",
        "10.0.0.0/8:80,443,8000-9000",
        "2001:db8::/32",
        "[2001:db8::/32]:443",
    ] {
        assert_eq!(rule(text).to_string(), text);
    }
}

#[test]
fn always_denied_covers_the_host_loopback_link_local_pool_and_private_nets() {
    let host = HostAddresses {
        addresses: vec![ip("10.1.2.3"), ip("198.51.100.9"), ip("2001:db8::9")],
        networks: vec![
            net("10.1.2.0/24"),
            net("198.51.100.0/24"),
            net("2001:db8::/64"),
            net("0.0.0.0/0"),
        ],
    };
    let denied = always_denied(&host, pool());
    for want in [
        "10.1.2.3/32",
        "198.51.100.9/32",
        "2001:db8::9/128",
        "127.0.0.0/8",
        "::1/128",
        "169.254.0.0/16",
        "fe80::/10",
        "10.213.0.0/16",
        "10.1.2.0/24",
        "10.0.0.0/8",
        "198.51.100.0/24",
        "2001:db8::/64",
    ] {
        assert!(
            denied.contains(&net(want)),
            "{want} missing from {denied:?}"
        );
    }
    // A public network is denied at its own prefix only; a default route is no network.
    assert!(!denied.contains(&net("0.0.0.0/0")));
    assert!(!denied.contains(&net("172.16.0.0/12")));
    assert!(!denied.contains(&net("fc00::/7")));
    let ula = HostAddresses {
        addresses: vec![ip("fd00::2")],
        networks: vec![net("fd00::/64"), net("172.17.0.0/16"), net("100.64.1.0/24")],
    };
    let denied = always_denied(&ula, pool());
    for want in ["fc00::/7", "172.16.0.0/12", "100.64.0.0/10"] {
        assert!(
            denied.contains(&net(want)),
            "{want} missing from {denied:?}"
        );
    }
    // The VMs' own links (in the pool, here another instance's) are covered by the pool and
    // do not deny the private prefix around it.
    let links = HostAddresses {
        addresses: vec![ip("10.213.7.1")],
        networks: vec![net("10.213.7.1/32"), net("10.213.7.0/24")],
    };
    let denied = always_denied(&links, pool());
    assert!(denied.contains(&net("10.213.0.0/16")));
    assert!(denied.contains(&net("10.213.7.1/32")));
    assert!(!denied.contains(&net("10.0.0.0/8")), "{denied:?}");
    assert!(!denied.contains(&net("10.213.7.0/24")), "{denied:?}");
    let mut sorted = denied.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, denied);
}

#[test]
fn verdicts_as_operators_expect_them() {
    use Egress::{Allow, Deny};
    use Verdict::{Accept, Drop};
    // (default, allow, deny, destination, port, verdict)
    type Case<'a> = (Egress, &'a [&'a str], &'a [&'a str], &'a str, u16, Verdict);
    let cases: &[Case<'_>] = &[
        // The default alone.
        (Allow, &[], &[], "203.0.113.7", 443, Accept),
        (Allow, &[], &[], "2001:db8::7", 443, Accept),
        (Deny, &[], &[], "203.0.113.7", 443, Drop),
        (Deny, &[], &[], "2001:db8::7", 443, Drop),
        // Always denied whatever the default.
        (Allow, &[], &[], "192.0.2.2", 80, Drop),
        (Allow, &[], &[], "fd00::2", 80, Drop),
        (Allow, &[], &[], "192.0.2.1", 80, Drop),
        (Allow, &[], &[], "fd00::1", 80, Drop),
        (Allow, &[], &[], "fd12::1", 80, Drop),
        (Allow, &[], &[], "127.0.0.1", 8080, Drop),
        (Allow, &[], &[], "::1", 8080, Drop),
        (Allow, &[], &[], "169.254.169.254", 80, Drop),
        (Allow, &[], &[], "fe80::1", 80, Drop),
        (Allow, &[], &[], "10.213.4.2", 9000, Drop),
        // Opening the world opens neither the host nor its network.
        (Deny, &["0.0.0.0/0"], &[], "203.0.113.7", 443, Accept),
        (Deny, &["0.0.0.0/0"], &[], "192.0.2.2", 443, Drop),
        (Deny, &["0.0.0.0/0"], &[], "192.0.2.1", 443, Drop),
        (Allow, &["0.0.0.0/0", "::/0"], &[], "fd00::2", 443, Drop),
        (Allow, &["0.0.0.0/0:443"], &[], "192.0.2.2", 443, Drop),
        // Naming the host's network opens it, but not the host.
        (Allow, &["192.0.2.0/24"], &[], "192.0.2.1", 80, Accept),
        (Allow, &["192.0.2.0/24"], &[], "192.0.2.2", 80, Drop),
        (Deny, &["192.0.2.0/24:80"], &[], "192.0.2.1", 80, Accept),
        (Deny, &["192.0.2.0/24:80"], &[], "192.0.2.1", 81, Drop),
        (Allow, &["[fd00::/64]:443"], &[], "fd00::1", 443, Accept),
        // A host service, named exactly.
        (
            Allow,
            &["192.0.2.2/32:5432"],
            &[],
            "192.0.2.2",
            5432,
            Accept,
        ),
        (Allow, &["192.0.2.2/32:5432"], &[], "192.0.2.2", 22, Drop),
        (Allow, &["192.0.2.2"], &[], "192.0.2.2", 22, Accept),
        // A more specific allow inside a denied private range.
        (Allow, &["fd00::1"], &[], "fd00::1", 22, Accept),
        (
            Allow,
            &["169.254.169.254/32:80"],
            &[],
            "169.254.169.254",
            80,
            Accept,
        ),
        (
            Allow,
            &["169.254.169.254/32:80"],
            &[],
            "169.254.170.2",
            80,
            Drop,
        ),
        // Deny a port of an allowed net; reopen one address.
        (Allow, &[], &["203.0.113.0/24:25"], "203.0.113.7", 25, Drop),
        (
            Allow,
            &[],
            &["203.0.113.0/24:25"],
            "203.0.113.7",
            587,
            Accept,
        ),
        (
            Allow,
            &[],
            &["203.0.113.0/24:25"],
            "198.51.100.7",
            25,
            Accept,
        ),
        (
            Allow,
            &["203.0.113.7"],
            &["203.0.113.0/24:25"],
            "203.0.113.7",
            25,
            Accept,
        ),
        (
            Allow,
            &["203.0.113.7"],
            &["203.0.113.0/24:25"],
            "203.0.113.8",
            25,
            Drop,
        ),
        (
            Deny,
            &["203.0.113.0/24"],
            &["203.0.113.0/24:25"],
            "203.0.113.9",
            25,
            Drop,
        ),
        (
            Deny,
            &["203.0.113.0/24"],
            &["203.0.113.0/24:25"],
            "203.0.113.9",
            26,
            Accept,
        ),
        // Port-specific beats port-less at an equal prefix, both ways.
        (
            Deny,
            &["203.0.113.0/24:443"],
            &["203.0.113.0/24"],
            "203.0.113.9",
            443,
            Accept,
        ),
        (
            Deny,
            &["203.0.113.0/24:443"],
            &["203.0.113.0/24"],
            "203.0.113.9",
            80,
            Drop,
        ),
        (
            Allow,
            &["0.0.0.0/0:53"],
            &["0.0.0.0/0"],
            "203.0.113.9",
            53,
            Accept,
        ),
        (
            Allow,
            &["0.0.0.0/0:53"],
            &["0.0.0.0/0"],
            "203.0.113.9",
            54,
            Drop,
        ),
        // A full tie: deny wins.
        (
            Allow,
            &["203.0.113.0/24"],
            &["203.0.113.0/24"],
            "203.0.113.9",
            80,
            Drop,
        ),
        (
            Allow,
            &["203.0.113.0/24:80"],
            &["203.0.113.0/24:80-81"],
            "203.0.113.9",
            80,
            Drop,
        ),
        (
            Allow,
            &["0.0.0.0/0"],
            &["0.0.0.0/0"],
            "203.0.113.9",
            80,
            Drop,
        ),
        // Operator rules at /0 beat the default.
        (Deny, &["0.0.0.0/0"], &[], "198.51.100.1", 1, Accept),
        (Allow, &[], &["0.0.0.0/0"], "198.51.100.1", 1, Drop),
        (Allow, &[], &["0.0.0.0/0"], "2001:db8::1", 1, Accept),
        (Allow, &[], &["::/0"], "2001:db8::1", 1, Drop),
        // Longest prefix wins however the rules were listed.
        (
            Deny,
            &["198.51.100.0/24", "198.51.0.0/16"],
            &["198.51.100.128/25"],
            "198.51.100.200",
            1,
            Drop,
        ),
        (
            Deny,
            &["198.51.100.0/24", "198.51.0.0/16"],
            &["198.51.100.128/25"],
            "198.51.100.100",
            1,
            Accept,
        ),
        (
            Deny,
            &["198.51.100.0/24", "198.51.0.0/16"],
            &["198.51.100.128/25"],
            "198.51.7.1",
            1,
            Accept,
        ),
    ];
    for (default, allow, deny, dest, port, want) in cases {
        let p = policy(*default, allow, deny);
        assert_eq!(
            verdict_of(&p, dest, *port),
            *want,
            "{default:?} allow {allow:?} deny {deny:?}: {dest}:{port}\n{}",
            p.compile(&always_denied(&host(), pool()))
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn the_defaults_are_the_last_two_rules() {
    for default in [Egress::Allow, Egress::Deny] {
        let p = policy(default, &["0.0.0.0/0", "::/0"], &["10.0.0.0/8"]);
        let rules = p.compile(&always_denied(&host(), pool()));
        let n = rules.len();
        let want = if default == Egress::Allow {
            Verdict::Accept
        } else {
            Verdict::Drop
        };
        assert_eq!(rules[n - 2].net, net("0.0.0.0/0"));
        assert_eq!(rules[n - 1].net, net("::/0"));
        for r in &rules[n - 2..] {
            assert!(r.ports.is_empty());
            assert_eq!(r.verdict, want);
        }
        // The operator's own /0 rules come before them.
        assert_eq!(rules[n - 4].net, net("0.0.0.0/0"));
        assert_eq!(rules[n - 4].verdict, Verdict::Accept);
    }
}

#[test]
fn compiled_lists_hold_each_rule_once() {
    let p = policy(
        Egress::Allow,
        &["203.0.113.0/24", "203.0.113.0/24"],
        &["127.0.0.0/8", "10.213.0.0/16"],
    );
    let rules = p.compile(&always_denied(&host(), pool()));
    for (i, r) in rules.iter().enumerate() {
        assert!(!rules[i + 1..].contains(r), "{r} twice");
    }
}

fn arb_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        // Prefixes near the test host's, so rules overlap it often.
        (
            prop_oneof![
                Just([192u8, 0, 2, 0]),
                Just([203, 0, 113, 0]),
                any::<[u8; 4]>()
            ],
            0u8..=32
        )
            .prop_map(|(a, l)| IpNet::V4(Ipv4Net::new(a.into(), l).unwrap().trunc())),
        (any::<u128>(), 0u8..=128).prop_map(|(a, l)| {
            let a = if a % 2 == 0 {
                a
            } else {
                0xfd00u128 << 112 | a >> 64
            };
            IpNet::V6(Ipv6Net::new(a.into(), l).unwrap().trunc())
        }),
    ]
}

fn arb_ports() -> impl Strategy<Value = Vec<RangeInclusive<u16>>> {
    prop_oneof![
        Just(Vec::new()),
        proptest::collection::vec((1u16..=65535, 0u16..=100), 1..3).prop_map(|v| {
            merge_ports(
                v.into_iter()
                    .map(|(lo, w)| lo..=lo.saturating_add(w))
                    .collect(),
            )
        }),
    ]
}

fn arb_rule() -> impl Strategy<Value = EgressRule> {
    (arb_net(), arb_ports()).prop_map(|(net, ports)| EgressRule { net, ports })
}

fn arb_policy() -> impl Strategy<Value = EgressPolicy> {
    (
        prop_oneof![Just(Egress::Allow), Just(Egress::Deny)],
        proptest::collection::vec(arb_rule(), 0..6),
        proptest::collection::vec(arb_rule(), 0..6),
    )
        .prop_map(|(default, allow, deny)| EgressPolicy {
            default,
            allow,
            deny,
        })
}

fn arb_dest() -> impl Strategy<Value = (IpAddr, u16)> {
    (
        prop_oneof![
            Just(ip("192.0.2.2")),
            Just(ip("192.0.2.1")),
            Just(ip("fd00::2")),
            Just(ip("127.0.0.1")),
            Just(ip("169.254.169.254")),
            Just(ip("10.213.0.5")),
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<u128>().prop_map(|a| IpAddr::from(std::net::Ipv6Addr::from(a))),
        ],
        prop_oneof![Just(443u16), Just(53), any::<u16>()],
    )
}

/// The reference semantics, written independently of the sort: among the rules that match,
/// the most specific decides (longer prefix; then the operator's over always-denied; then
/// port-specific; then deny); nothing of the operator's or always-denied: the default.
fn reference(p: &EgressPolicy, denied: &[IpNet], dest: IpAddr, port: u16) -> Verdict {
    let matches = |r: &EgressRule| {
        r.net.contains(&dest) && (r.ports.is_empty() || r.ports.iter().any(|x| x.contains(&port)))
    };
    let mut best: Option<((u8, u8, bool, bool), Verdict)> = None;
    let mut consider = |key: (u8, u8, bool, bool), v: Verdict| {
        if best.is_none_or(|(k, _)| key > k) {
            best = Some((key, v));
        }
    };
    for r in p.allow.iter().filter(|r| matches(r)) {
        consider(
            (r.net.prefix_len(), 2, !r.ports.is_empty(), false),
            Verdict::Accept,
        );
    }
    for r in p.deny.iter().filter(|r| matches(r)) {
        consider(
            (r.net.prefix_len(), 2, !r.ports.is_empty(), true),
            Verdict::Drop,
        );
    }
    for n in denied.iter().filter(|n| n.contains(&dest)) {
        consider((n.prefix_len(), 1, false, true), Verdict::Drop);
    }
    match best {
        Some((_, v)) => v,
        None if p.default == Egress::Allow => Verdict::Accept,
        None => Verdict::Drop,
    }
}

proptest! {
    #[test]
    fn first_match_is_the_most_specific_rule(p in arb_policy(), (dest, port) in arb_dest()) {
        let denied = always_denied(&host(), pool());
        let rules = p.compile(&denied);
        prop_assert_eq!(evaluate(&rules, dest, port), reference(&p, &denied, dest, port));
    }

    #[test]
    fn rules_broader_than_an_address_never_open_the_host(
        p in arb_policy(),
        port in any::<u16>(),
    ) {
        // Drop every operator rule naming a host address exactly: those open it on purpose.
        let host = host();
        let mut p = p;
        p.allow.retain(|r| !host.addresses.iter().any(|a| r.net == IpNet::from(*a)));
        let rules = p.compile(&always_denied(&host, pool()));
        for a in &host.addresses {
            prop_assert_eq!(evaluate(&rules, *a, port), Verdict::Drop, "{}:{}", a, port);
        }
        for a in ["127.0.0.1", "::1", "10.213.0.2"] {
            // Rules broader than a /8 cannot open the pool, loopback or anything in them.
            let broad = p.allow.iter().all(|r| r.net.prefix_len() < 8);
            if broad {
                prop_assert_eq!(evaluate(&rules, ip(a), port), Verdict::Drop, "{}", a);
            }
        }
    }

    #[test]
    fn every_destination_meets_a_rule(p in arb_policy(), (dest, port) in arb_dest()) {
        let rules = p.compile(&always_denied(&host(), pool()));
        prop_assert!(rules.iter().any(|r| r.matches(dest, port)));
        let n = rules.len();
        prop_assert_eq!(rules[n - 2].net, net("0.0.0.0/0"));
        prop_assert_eq!(rules[n - 1].net, net("::/0"));
    }

    #[test]
    fn printed_rules_parse_back(r in arb_rule()) {
        prop_assert_eq!(r.to_string().parse::<EgressRule>().unwrap(), r);
    }

    #[test]
    fn the_parser_never_panics(s in "\\PC{0,40}") {
        let _ = s.parse::<EgressRule>();
    }
}
