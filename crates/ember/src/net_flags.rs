//! `ember serve`'s egress and DNS flags (issue 19): `--egress allow|deny`, `--egress-allow
//! CIDR[:PORTS]`, `--egress-deny CIDR[:PORTS]` and `--dns IP`, validated as they are parsed (a
//! bad value stops the server before it starts, saying why), and turned into the
//! [`EgressPolicy`] and the DNS forwarder's upstreams the serve wiring starts the network with.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use ember_executor::Egress;
use ember_net::policy::{EgressPolicy, EgressRule};

/// Where the host's resolvers are read from when no `--dns` is given.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

#[derive(Debug, Clone, clap::Args)]
pub struct NetworkArgs {
    /// What functions' outbound connections may reach when no rule names the destination:
    /// allow (anything but the always-denied ranges: the host, loopback, link-local, the VMs'
    /// pool, the host's own and private networks) or deny (nothing but Ember's API and DNS). A
    /// function's own egress (`ember fn update-config NAME --egress deny`) overrides it.
    #[arg(long, env = "EMBER_EGRESS", value_enum, default_value_t = EgressArg::Allow)]
    egress: EgressArg,
    /// Allow outbound connections to CIDR (TCP and UDP), on PORTS only if given (`443`,
    /// `80,443`, `8000-9000`; IPv6 as `[2001:db8::/32]:443`); repeatable; space-separated in
    /// the environment. The most specific rule wins (see README's "Network").
    #[arg(
        long = "egress-allow",
        env = "EMBER_EGRESS_ALLOW",
        value_name = "CIDR[:PORTS]",
        value_delimiter = ' ',
        value_parser = parse_rule
    )]
    egress_allow: Vec<EgressRule>,
    /// Deny outbound connections to CIDR, on PORTS only if given; repeatable; space-separated
    /// in the environment.
    #[arg(
        long = "egress-deny",
        env = "EMBER_EGRESS_DENY",
        value_name = "CIDR[:PORTS]",
        value_delimiter = ' ',
        value_parser = parse_rule
    )]
    egress_deny: Vec<EgressRule>,
    /// A DNS resolver functions' lookups are relayed to (IP, or IP:PORT), tried in order;
    /// repeatable; comma-separated in the environment [default: the host's, from
    /// /etc/resolv.conf].
    #[arg(
        long = "dns",
        env = "EMBER_DNS",
        value_name = "IP",
        value_delimiter = ',',
        value_parser = parse_resolver
    )]
    dns: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EgressArg {
    Allow,
    Deny,
}

fn parse_rule(text: &str) -> Result<EgressRule, String> {
    text.parse()
        .map_err(|e: ember_net::policy::PolicyError| e.to_string())
}

/// `IP` (port 53), `IP:PORT` or `[IPV6]:PORT`.
fn parse_resolver(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, ember_net::dns::DNS_PORT));
    }
    match text.parse::<SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Ok(addr),
        Ok(_) => Err(format!("{text:?}: port 0 is no resolver's")),
        Err(_) => Err(format!(
            "{text:?} is not an IP address (e.g. 192.0.2.53, 2001:db8::53, or with a port 192.0.2.53:5353)"
        )),
    }
}

impl NetworkArgs {
    /// The default egress of functions without their own.
    pub fn default_egress(&self) -> Egress {
        match self.egress {
            EgressArg::Allow => Egress::Allow,
            EgressArg::Deny => Egress::Deny,
        }
    }
}

/// The server's egress policy, and the DNS forwarder's upstreams: `--dns`, else the host's
/// (`/etc/resolv.conf`; none found: an empty list, which the forwarder refuses to start with).
pub fn network_settings(args: &NetworkArgs) -> (EgressPolicy, Vec<SocketAddr>) {
    network_settings_with(args, Path::new(RESOLV_CONF))
}

fn network_settings_with(
    args: &NetworkArgs,
    resolv_conf: &Path,
) -> (EgressPolicy, Vec<SocketAddr>) {
    let policy = EgressPolicy {
        default: args.default_egress(),
        allow: args.egress_allow.clone(),
        deny: args.egress_deny.clone(),
    };
    let upstreams = if args.dns.is_empty() {
        ember_net::dns::system_resolvers(resolv_conf)
    } else {
        args.dns.clone()
    };
    (policy, upstreams)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        network: NetworkArgs,
    }

    fn parse(args: &[&str]) -> Result<NetworkArgs, String> {
        Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
            .map(|c| c.network)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn flags_become_the_policy_and_upstreams() {
        let args = parse(&[
            "--egress",
            "deny",
            "--egress-allow",
            "203.0.113.0/24:443",
            "--egress-allow",
            "[2001:db8::/32]:80,443",
            "--egress-deny",
            "203.0.113.7",
            "--dns",
            "192.0.2.53",
            "--dns",
            "[2001:db8::53]:5353",
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (policy, upstreams) = network_settings_with(&args, &dir.path().join("none"));
        assert_eq!(policy.default, Egress::Deny);
        assert_eq!(
            policy.allow,
            vec![
                "203.0.113.0/24:443".parse().unwrap(),
                "[2001:db8::/32]:80,443".parse().unwrap()
            ]
        );
        assert_eq!(policy.deny, vec!["203.0.113.7/32".parse().unwrap()]);
        assert_eq!(
            upstreams,
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::53]:5353".parse().unwrap()
            ]
        );
    }

    #[test]
    fn without_flags_egress_is_allowed_and_dns_is_the_hosts() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.default_egress(), Egress::Allow);
        let dir = tempfile::tempdir().unwrap();
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(&resolv, "nameserver 10.255.255.53\n").unwrap();
        let (policy, upstreams) = network_settings_with(&args, &resolv);
        assert_eq!(policy, EgressPolicy::default());
        assert_eq!(upstreams, vec!["10.255.255.53:53".parse().unwrap()]);
    }

    #[test]
    fn bad_values_stop_the_parse_with_a_reason() {
        let cases: &[(&[&str], &str)] = &[
            (&["--egress", "open"], "invalid value 'open' for '--egress"),
            (
                &["--egress-allow", "10.0.0.1/8"],
                "did you mean 10.0.0.0/8?",
            ),
            (
                &["--egress-allow", "example.com"],
                "not an IP address or CIDR",
            ),
            (&["--egress-deny", "10.0.0.0/8:99999"], "not a port list"),
            (&["--egress-deny", "2001:db8::/32:443"], "in brackets"),
            (&["--dns", "dns.example"], "is not an IP address"),
            (&["--dns", "192.0.2.53:0"], "port 0"),
        ];
        for (args, want) in cases {
            let err = parse(args).unwrap_err();
            assert!(err.contains(want), "{args:?}: {err:?} lacks {want:?}");
        }
    }
}
