//! The host side of the VM network on the real kernel, as root: block claims between instances,
//! the instance's nftables table installed and removed, one link per VM made and removed, the
//! sweep of what a killed run left, and a VM's traffic through the table (what it reaches on
//! the host, and the egress policy on its way out).
//!
//! Each test uses a pool of its own (none overlaps the host's routes or the default pool), and
//! the real lock directory: liveness is host-wide, so a test must never judge another
//! instance's block dead by looking elsewhere.

// Helpers outside #[test] functions fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;

use ember_net::host::ruleset;
use ember_net::host::{sweep, HostConfig, HostError, HostNetwork, DEFAULT_LOCK_DIR};
use ipnet::Ipv4Net;

fn config(pool: &str) -> HostConfig {
    HostConfig {
        pool: pool.parse().unwrap(),
        ..HostConfig::new(9999)
    }
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn lo_has(address: Ipv4Addr) -> bool {
    // /proc/net/fib_trie lists local addresses; `ip` is not needed.
    let trie = std::fs::read_to_string("/proc/net/fib_trie").unwrap();
    trie.lines()
        .collect::<Vec<_>>()
        .windows(2)
        .any(|w| w[0].trim().ends_with(&address.to_string()) && w[1].contains("/32 host LOCAL"))
}

fn table_exists(name: &str) -> bool {
    ruleset::tables().unwrap().iter().any(|t| t == name)
}

/// A process in a network namespace of its own, standing in for a VM.
struct FakeVm(Child);

impl FakeVm {
    fn start() -> Self {
        let mut child = Command::new("unshare")
            .args(["--net", "sleep", "60"])
            .spawn()
            .unwrap();
        // Until unshare has exec'd sleep in the new namespace.
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        for _ in 0..200 {
            let ns = std::fs::read_link(format!("/proc/{}/ns/net", child.id()));
            let exe = std::fs::read_link(format!("/proc/{}/exe", child.id()));
            if ns.is_ok_and(|ns| ns != own) && exe.is_ok_and(|e| e.ends_with("sleep")) {
                return Self(child);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("unshare did not start");
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// The interfaces of its namespace.
    fn interfaces(&self) -> Vec<String> {
        let dev = std::fs::read_to_string(format!("/proc/{}/net/dev", self.pid())).unwrap();
        dev.lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(|n| n.trim().to_owned())
            .collect()
    }
}

impl Drop for FakeVm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn two_instances_take_different_blocks_and_a_full_pool_refuses_a_third() {
    let a = HostNetwork::start(config("10.241.0.0/23")).unwrap();
    let b = HostNetwork::start(config("10.241.0.0/23")).unwrap();
    assert_ne!(a.block(), b.block());
    assert_ne!(a.table(), b.table());
    assert_ne!(a.gateway(), b.gateway());
    for net in [&a, &b] {
        assert!("10.241.0.0/23"
            .parse::<Ipv4Net>()
            .unwrap()
            .contains(&net.block()));
        assert!(table_exists(&net.table()));
        assert!(Path::new(DEFAULT_LOCK_DIR)
            .join(format!("{}-24.lock", net.block().network()))
            .exists());
    }
    match HostNetwork::start(config("10.241.0.0/23")) {
        Err(HostError::Exhausted(pool)) => assert_eq!(pool.to_string(), "10.241.0.0/23"),
        other => panic!("a third instance got {other:?}"),
    }
    // A block released is free for the next instance, and not swept from under the live one.
    let freed = a.block();
    a.shutdown().unwrap();
    drop(a);
    let c = HostNetwork::start(config("10.241.0.0/23")).unwrap();
    assert_eq!(c.block(), freed);
    assert!(table_exists(&b.table()));
}

#[test]
fn the_table_and_gateway_exist_while_the_instance_runs_and_go_at_shutdown() {
    let net = HostNetwork::start(config("10.242.0.0/24")).unwrap();
    assert_eq!(net.table(), format!("ember_{}", net.tag()));
    assert_eq!(net.gateway(), Ipv4Addr::new(10, 242, 0, 1));
    assert!(table_exists(&net.table()));
    assert!(lo_has(net.gateway()), "the gateway is not a local address");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "1"
    );
    let table = net.table();
    net.shutdown().unwrap();
    assert!(!table_exists(&table));
    assert!(!lo_has(Ipv4Addr::new(10, 242, 0, 1)));
    // Idempotent, and drop after shutdown does nothing more.
    net.shutdown().unwrap();
}

#[test]
fn a_pool_overlapping_a_host_route_is_refused() {
    // The host's own network (192.0.2.0/24 here, whatever it is elsewhere: read from the
    // kernel) is in use; a pool covering it is refused before anything is claimed.
    let addresses = ember_net::host::host_addresses().unwrap();
    let network = addresses
        .networks
        .iter()
        .find_map(|n| match n {
            ipnet::IpNet::V4(n) if !n.network().is_loopback() => Some(*n),
            _ => None,
        })
        .expect("the host has an IPv4 network");
    let pool = Ipv4Net::new(network.network(), network.prefix_len().min(24))
        .unwrap()
        .trunc();
    match HostNetwork::start(HostConfig {
        pool,
        ..HostConfig::new(9999)
    }) {
        Err(HostError::Overlap { overlaps, .. }) => {
            assert!(overlaps.contains(&network.to_string()), "{overlaps}")
        }
        other => panic!("an overlapping pool got {other:?}"),
    }
}

#[test]
fn each_vm_gets_a_link_that_goes_with_it() {
    let net = Arc::new(HostNetwork::start(config("10.243.0.0/24")).unwrap());
    let vm = FakeVm::start();
    let lease = net.lease().unwrap();
    let address = lease.address();
    assert_eq!(address, Ipv4Addr::new(10, 243, 0, 2));
    let network = lease.vm_network();
    assert_eq!(network.gateway, net.gateway());
    assert_eq!(network.interface, "eth0");
    assert_eq!(network.api_port, 9999);
    let link = lease.attach(vm.pid()).unwrap();
    let name = link.name().to_owned();
    assert_eq!(name, format!("em{}v2", net.tag()));
    assert!(link_exists(&name));
    assert!(vm.interfaces().contains(&"eth0".to_owned()));
    // The host end is up with G, and V is routed through it.
    let flags = std::fs::read_to_string(format!("/sys/class/net/{name}/flags")).unwrap();
    assert_eq!(
        u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap() & 1,
        1
    );
    let routes = std::fs::read_to_string("/proc/net/route").unwrap();
    let v_hex = format!("{:08X}", u32::from_ne_bytes(address.octets()));
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with(&format!("{name}\t{v_hex}"))),
        "no route to {address} through {name}:\n{routes}"
    );
    assert_eq!(
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"))
            .unwrap()
            .trim(),
        "1"
    );
    assert_eq!(net.in_use(), 1);

    // A second VM gets the next address and a link of its own.
    let vm2 = FakeVm::start();
    let link2 = net.lease().unwrap().attach(vm2.pid()).unwrap();
    assert_eq!(link2.address(), Some(Ipv4Addr::new(10, 243, 0, 3)));

    link.release().unwrap();
    assert!(!link_exists(&name));
    assert!(!vm.interfaces().contains(&"eth0".to_owned()));
    assert_eq!(net.in_use(), 1);

    // A VM whose namespace went first: its link went with it, and the release still succeeds.
    let name2 = link2.name().to_owned();
    drop(vm2);
    for _ in 0..200 {
        if !link_exists(&name2) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    link2.release().unwrap();
    assert!(!link_exists(&name2));
    assert_eq!(net.in_use(), 0);
    net.shutdown().unwrap();
}

#[test]
fn a_lease_not_attached_gives_its_address_back() {
    let net = Arc::new(HostNetwork::start(config("10.244.0.0/24")).unwrap());
    let lease = net.lease().unwrap();
    assert_eq!(net.in_use(), 1);
    drop(lease);
    assert_eq!(net.in_use(), 0);
    // Attaching to a process that does not exist fails cleanly, leaving nothing.
    let lease = net.lease().unwrap();
    let name = lease.link_name();
    assert!(lease.attach(u32::MAX / 2).is_err());
    assert!(!link_exists(&name));
    assert_eq!(net.in_use(), 0);
}

/// Set in the child process [`a_restart_sweeps_what_a_killed_run_left_and_spares_live_instances`]
/// starts to play the server that gets SIGKILLed.
const KILLED_RUN: &str = "EMBER_NET_TEST_KILLED_RUN";

#[test]
fn a_restart_sweeps_what_a_killed_run_left_and_spares_live_instances() {
    if std::env::var_os(KILLED_RUN).is_some() {
        // The child: a server with a VM, killed while it runs.
        let net = Arc::new(HostNetwork::start(config("10.245.3.0/24")).unwrap());
        let vm = FakeVm::start();
        let link = net.lease().unwrap().attach(vm.pid()).unwrap();
        println!("ready {} {} {}", net.table(), link.name(), vm.pid());
        std::mem::forget((link, vm));
        std::thread::sleep(std::time::Duration::from_secs(60));
        return;
    }
    let live = HostNetwork::start(config("10.245.4.0/24")).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_restart_sweeps_what_a_killed_run_left_and_spares_live_instances",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(KILLED_RUN, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "the killed run ended before it was ready"
        );
        // After the harness's `test <name> ... `, on the same line.
        if let Some(at) = line.find("ready ember_") {
            line.drain(..at);
            break;
        }
    }
    let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    let (table, link, vm_pid) = (&words[1], &words[2], &words[3]);
    child.kill().unwrap();
    child.wait().unwrap();
    // What the killed run left: its table, its VM's link (the VM outlives the server until the
    // driver's own sweep kills it) and its gateway on lo.
    assert!(table_exists(table));
    assert!(link_exists(link));
    assert!(lo_has(Ipv4Addr::new(10, 245, 3, 1)));
    // With IPv6 (this host has it), the link's route to the VM's IPv6 address too.
    let v6_route = {
        let v6 = ember_net::host::v6::address_v6(Ipv4Addr::new(10, 245, 3, 2));
        let hex: String = v6.octets().iter().map(|b| format!("{b:02x}")).collect();
        move || {
            std::fs::read_to_string("/proc/net/ipv6_route")
                .unwrap()
                .contains(&hex)
        }
    };
    assert!(v6_route(), "the killed run's VM had no IPv6 route");

    let report = sweep(Path::new(DEFAULT_LOCK_DIR)).unwrap();
    let dead: Ipv4Net = "10.245.3.0/24".parse().unwrap();
    assert!(report.blocks.contains(&dead), "{report:?}");
    assert!(!table_exists(table));
    assert!(!link_exists(link));
    assert!(!lo_has(Ipv4Addr::new(10, 245, 3, 1)));
    assert!(!v6_route());
    // The live instance keeps everything.
    assert!(!report.blocks.contains(&live.block()));
    assert!(table_exists(&live.table()));
    assert!(lo_has(live.gateway()));
    let _ = Command::new("kill").args(["-9", vm_pid]).status();
    live.shutdown().unwrap();
}

/// What the VM's agent does with its VmNetwork: `v` on its eth0, routed through `g`.
fn configure_vm(pid: u32, v: Ipv4Addr, g: Ipv4Addr) {
    for args in [
        vec!["link", "set", "lo", "up"],
        vec!["link", "set", "eth0", "up"],
        vec!["addr", "add", &format!("{v}/32"), "dev", "eth0"],
        vec!["route", "add", &format!("{g}/32"), "dev", "eth0"],
        vec![
            "route",
            "add",
            "default",
            "via",
            &g.to_string(),
            "dev",
            "eth0",
        ],
    ] {
        let args: Vec<&str> = args.iter().map(|a| &**a).collect();
        assert!(in_netns(pid, "ip", &args), "ip {args:?}");
    }
}

/// Runs `program` with `args` in the network namespace of `pid`; its success.
fn in_netns(pid: u32, program: &str, args: &[&str]) -> bool {
    Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", program])
        .args(args)
        .status()
        .unwrap()
        .success()
}

/// Whether a TCP connection from the namespace of `pid` to `target` succeeds within 1 s.
fn connects(pid: u32, target: std::net::SocketAddr) -> bool {
    let code = format!(
        "import socket; socket.create_connection(('{}', {}), timeout=1).close()",
        target.ip(),
        target.port()
    );
    in_netns(pid, "python3", &["-c", &code])
}

#[test]
fn from_a_vm_only_the_gateways_api_port_and_dns_are_reachable_on_the_host() {
    use std::net::{SocketAddr, TcpListener, UdpSocket};
    // The API stand-in listens on every address of the host, so that only the table can keep
    // a VM from the host's other addresses.
    let api = TcpListener::bind("0.0.0.0:0").unwrap();
    let other = TcpListener::bind("0.0.0.0:0").unwrap();
    let api_port = api.local_addr().unwrap().port();
    let net = Arc::new(
        HostNetwork::start(HostConfig {
            pool: "10.248.0.0/24".parse().unwrap(),
            ..HostConfig::new(api_port)
        })
        .unwrap(),
    );
    let g = net.gateway();
    let dns_udp = UdpSocket::bind((g, 53)).unwrap();
    dns_udp
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let dns_tcp = TcpListener::bind((g, 53)).unwrap();

    let vm = FakeVm::start();
    let link = net.lease().unwrap().attach(vm.pid()).unwrap();
    let v = link.address().unwrap();
    let pid = vm.pid();
    configure_vm(pid, v, g);

    assert!(
        connects(pid, SocketAddr::new(g.into(), api_port)),
        "the API on the gateway"
    );
    assert!(connects(pid, SocketAddr::new(g.into(), 53)), "DNS over TCP");
    let code = format!(
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
         s.sendto(b'query', ('{g}', 53))"
    );
    assert!(in_netns(pid, "python3", &["-c", &code]));
    let mut buf = [0; 16];
    let (n, from) = dns_udp.recv_from(&mut buf).unwrap();
    assert_eq!(
        (&buf[..n], from.ip()),
        (&b"query"[..], std::net::IpAddr::from(v))
    );
    drop(dns_tcp);

    // Nothing else of the host: another port of the gateway, the same port on the host's
    // other addresses (its uplink, its loopback), another instance's gateway.
    let other_port = other.local_addr().unwrap().port();
    assert!(!connects(pid, SocketAddr::new(g.into(), other_port)));
    for address in ember_net::host::host_addresses().unwrap().addresses {
        if address.is_ipv4() && !address.is_loopback() {
            assert!(
                !connects(pid, SocketAddr::new(address, api_port)),
                "the VM reached the host's {address}:{api_port}"
            );
        }
    }
    assert!(!connects(
        pid,
        SocketAddr::new([127, 0, 0, 1].into(), api_port)
    ));
    // A source address other than its own is dropped: by the table itself, even with the
    // host's reverse-path filtering off (systemd's default is loose for every interface).
    std::fs::write(
        format!("/proc/sys/net/ipv4/conf/{}/rp_filter", link.name()),
        "0",
    )
    .unwrap();
    let spoofed = Ipv4Addr::new(10, 248, 0, 77);
    assert!(in_netns(
        pid,
        "ip",
        &["addr", "add", &format!("{spoofed}/32"), "dev", "eth0"]
    ));
    let code = format!(
        "import socket; s = socket.socket(); s.settimeout(1); s.bind(('{spoofed}', 0)); \
         s.connect(('{g}', {api_port}))"
    );
    assert!(
        !in_netns(pid, "python3", &["-c", &code]),
        "a spoofed source got through"
    );
    drop((link, vm));
    net.shutdown().unwrap();
}

#[test]
fn a_vms_traffic_to_the_world_goes_through_the_egress_policy() {
    use ember_net::policy::EgressPolicy;
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;
    let world_ip = Ipv4Addr::new(198, 51, 100, 2);
    let net = Arc::new(
        HostNetwork::start(HostConfig {
            pool: "10.249.0.0/24".parse().unwrap(),
            policy: EgressPolicy {
                default: ember_protocol::Egress::Deny,
                allow: vec![format!("{world_ip}/32:80").parse().unwrap()],
                deny: vec![],
            },
            ..HostConfig::new(9999)
        })
        .unwrap(),
    );
    // "The world": a namespace behind a veth of the host's (made after the start, so not
    // among the host's own networks), listening on ports 80 and 81.
    let world = FakeVm::start();
    let uplink = format!("ewt{}", std::process::id());
    let host = |args: &[&str]| {
        assert!(
            Command::new("ip").args(args).status().unwrap().success(),
            "ip {args:?}"
        )
    };
    let world_pid = world.pid().to_string();
    host(&[
        "link", "add", &uplink, "type", "veth", "peer", "name", "eth0", "netns", &world_pid,
    ]);
    host(&["addr", "add", "198.51.100.1/30", "dev", &uplink]);
    host(&["link", "set", &uplink, "up"]);
    for args in [
        vec!["link", "set", "eth0", "up"],
        vec!["addr", "add", "198.51.100.2/30", "dev", "eth0"],
    ] {
        assert!(in_netns(world.pid(), "ip", &args), "ip {args:?}");
    }
    let mut listener = Command::new("nsenter")
        .args(["-t", &world_pid, "-n", "python3", "-c"])
        .arg(
            "import socket, time\n\
             ss = [socket.create_server(('0.0.0.0', p)) for p in (80, 81)]\n\
             time.sleep(60)",
        )
        .spawn()
        .unwrap();
    let listening = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        [80, 81].iter().all(|port| {
            let to = SocketAddr::new(world_ip.into(), *port);
            TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_ok()
        })
    });
    assert!(listening, "the world's listeners did not start");

    let vm = FakeVm::start();
    let link = net.lease().unwrap().attach(vm.pid()).unwrap();
    configure_vm(vm.pid(), link.address().unwrap(), net.gateway());
    assert!(
        connects(vm.pid(), SocketAddr::new(world_ip.into(), 80)),
        "the allowed port"
    );
    assert!(
        !connects(vm.pid(), SocketAddr::new(world_ip.into(), 81)),
        "the VM reached a port the policy denies"
    );
    let _ = listener.kill();
    let _ = listener.wait();
    drop((link, vm, world));
    net.shutdown().unwrap();
}

/// What the VM's agent does with the IPv6 half of its VmNetwork: `v6` on its eth0, routed
/// through `g6`.
fn configure_vm_v6(pid: u32, v6: Ipv6Addr, g6: Ipv6Addr) {
    for args in [
        vec![
            "-6",
            "addr",
            "add",
            &format!("{v6}/128"),
            "dev",
            "eth0",
            "nodad",
        ],
        vec!["-6", "route", "add", &format!("{g6}/128"), "dev", "eth0"],
        vec![
            "-6",
            "route",
            "add",
            "default",
            "via",
            &g6.to_string(),
            "dev",
            "eth0",
        ],
    ] {
        let args: Vec<&str> = args.iter().map(|a| &**a).collect();
        assert!(in_netns(pid, "ip", &args), "ip {args:?}");
    }
}

/// What a TCP connection from the namespace of `pid` to `target` reads within 1 s (the
/// world's servers answer with the peer address they see), or `None` if it fails.
fn read_from(pid: u32, target: std::net::SocketAddr) -> Option<String> {
    let code = format!(
        "import socket; s = socket.create_connection(('{}', {}), timeout=1); \
         print(s.recv(100).decode())",
        target.ip(),
        target.port()
    );
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "python3", "-c", &code])
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The IPv6 conntrack entries whose mark is `mark`.
fn conntrack_v6_marked(mark: u32) -> usize {
    std::fs::read_to_string("/proc/net/nf_conntrack")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("ipv6") && l.contains(&format!(" mark={mark} ")))
        .count()
}

#[test]
fn a_vms_ipv6_leaves_nated_under_the_policy_and_reaches_nothing_of_the_host() {
    use ember_net::policy::EgressPolicy;
    use std::net::{SocketAddr, TcpListener};
    let world_ip: Ipv6Addr = "2001:db8:77::2".parse().unwrap();
    let uplink_ip: Ipv6Addr = "2001:db8:77::1".parse().unwrap();
    let net = Arc::new(
        HostNetwork::start(HostConfig {
            pool: "10.250.0.0/24".parse().unwrap(),
            policy: EgressPolicy {
                default: ember_protocol::Egress::Allow,
                allow: vec![],
                deny: vec![format!("[{world_ip}/128]:81").parse().unwrap()],
            },
            ..HostConfig::new(9999)
        })
        .unwrap(),
    );
    let block6 = net
        .block6()
        .expect("this host has IPv6 (a ULA or global address and a default route)");
    assert_eq!(block6.to_string(), "fd45:6d62:660a:fa00::/64");
    // Forwarding is on (the host's router advertisements: see
    // turning_ipv6_forwarding_on_keeps_a_router_advertised_default_route).
    let sysctl = |key: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{key}"))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(sysctl("all/forwarding"), "1");

    // The world: a namespace behind a veth of the host's, answering on ports 80 and 81 with
    // the address it sees.
    let world = FakeVm::start();
    let uplink = format!("ewu{}", std::process::id());
    let host = |args: &[&str]| {
        assert!(
            Command::new("ip").args(args).status().unwrap().success(),
            "ip {args:?}"
        )
    };
    let world_pid = world.pid().to_string();
    host(&[
        "link", "add", &uplink, "type", "veth", "peer", "name", "eth0", "netns", &world_pid,
    ]);
    host(&[
        "-6",
        "addr",
        "add",
        &format!("{uplink_ip}/64"),
        "dev",
        &uplink,
        "nodad",
    ]);
    host(&["link", "set", &uplink, "up"]);
    for args in [
        vec!["link", "set", "lo", "up"],
        vec!["link", "set", "eth0", "up"],
        vec![
            "-6",
            "addr",
            "add",
            "2001:db8:77::2/64",
            "dev",
            "eth0",
            "nodad",
        ],
        vec!["-6", "route", "add", "default", "via", "2001:db8:77::1"],
    ] {
        assert!(in_netns(world.pid(), "ip", &args), "ip {args:?}");
    }
    let listener = Command::new("nsenter")
        .args(["-t", &world_pid, "-n", "python3", "-c"])
        .arg(
            "import socket, threading\n\
             def serve(port):\n\
             \x20   s = socket.create_server(('::', port), family=socket.AF_INET6)\n\
             \x20   while True:\n\
             \x20       c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()\n\
             threading.Thread(target=serve, args=(81,), daemon=True).start()\n\
             serve(80)",
        )
        .spawn()
        .unwrap();
    // Killed however the test ends: it keeps the world's namespace (and the uplink) alive.
    let listener = FakeVm(listener);
    let listening = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        [80, 81].iter().all(|port| {
            let to = SocketAddr::new(world_ip.into(), *port);
            std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(1)).is_ok()
        })
    });
    assert!(listening, "the world's listeners did not start");
    // A service of the host's own, on every address.
    let host_service = TcpListener::bind("[::]:0").unwrap();
    let host_port = host_service.local_addr().unwrap().port();

    let vm = FakeVm::start();
    let lease = net.lease().unwrap();
    let told = lease.vm_network();
    let (v6, g6) = (told.address_v6.unwrap(), told.gateway_v6.unwrap());
    assert_eq!(v6.to_string(), "fd45:6d62:660a:fa00::afa:2");
    assert_eq!(g6.to_string(), "fd45:6d62:660a:fa00::afa:1");
    let link = lease.attach(vm.pid()).unwrap();
    configure_vm(vm.pid(), link.address().unwrap(), net.gateway());
    configure_vm_v6(vm.pid(), v6, g6);
    // The host end takes no router advertisement from the VM.
    assert_eq!(sysctl(&format!("{}/accept_ra", link.name())), "0");

    // Out, masqueraded to the host's address on the uplink; the denied port is not.
    let seen = read_from(vm.pid(), SocketAddr::new(world_ip.into(), 80));
    assert_eq!(
        seen,
        Some(uplink_ip.to_string()),
        "the VM's IPv6 did not get out NATed"
    );
    assert!(!connects(vm.pid(), SocketAddr::new(world_ip.into(), 81)));
    // Its connection is marked as its IPv4 ones are, and the mark's entries go with the VM.
    let mark = u32::from_ne_bytes(link.address().unwrap().octets());
    assert!(conntrack_v6_marked(mark) > 0, "no IPv6 entry marked {mark}");

    // Nothing of the host over IPv6: its addresses, the gateway's, link-local, loopback.
    let mut targets: Vec<std::net::IpAddr> = ember_net::host::host_addresses()
        .unwrap()
        .addresses
        .into_iter()
        .filter(|a| a.is_ipv6() && !a.is_loopback())
        .filter(|a| !matches!(a, std::net::IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80))
        .collect();
    assert!(!targets.is_empty(), "the host has an IPv6 address to try");
    targets.push(g6.into());
    targets.push(uplink_ip.into());
    for address in targets {
        assert!(
            !connects(vm.pid(), SocketAddr::new(address, host_port)),
            "the VM reached the host's [{address}]:{host_port}"
        );
    }
    let code = format!(
        "import socket; socket.create_connection(('fe80::1%eth0', {host_port}), timeout=1)"
    );
    assert!(!in_netns(vm.pid(), "python3", &["-c", &code]), "link-local");
    let link_name = link.name().to_owned();
    let code = format!("import socket; socket.create_connection(('::1', {host_port}), timeout=1)");
    assert!(!in_netns(vm.pid(), "python3", &["-c", &code]), "loopback");
    // The host end's own link-local address, from the VM's side.
    let host_ll = std::fs::read_to_string("/proc/net/if_inet6")
        .unwrap()
        .lines()
        .find(|l| l.ends_with(&format!(" {link_name}")) && l.starts_with("fe80"))
        .map(|l| {
            let hex = l.split_whitespace().next().unwrap();
            let bytes: Vec<u16> = (0..8)
                .map(|i| u16::from_str_radix(&hex[i * 4..i * 4 + 4], 16).unwrap())
                .collect();
            Ipv6Addr::new(
                bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
            )
        });
    if let Some(ll) = host_ll {
        let code = format!(
            "import socket; socket.create_connection(('{ll}%eth0', {host_port}), timeout=1)"
        );
        assert!(
            !in_netns(vm.pid(), "python3", &["-c", &code]),
            "the host end's link-local {ll}"
        );
    }

    // A spoofed IPv6 source is dropped, even one of the instance's /64.
    let spoofed = ember_net::host::v6::address_v6(Ipv4Addr::new(10, 250, 0, 77));
    assert!(in_netns(
        vm.pid(),
        "ip",
        &[
            "-6",
            "addr",
            "add",
            &format!("{spoofed}/128"),
            "dev",
            "eth0",
            "nodad"
        ]
    ));
    let code = format!(
        "import socket; s = socket.socket(socket.AF_INET6); s.settimeout(1); \
         s.bind(('{spoofed}', 0)); s.connect(('{world_ip}', 80))"
    );
    assert!(
        !in_netns(vm.pid(), "python3", &["-c", &code]),
        "a spoofed IPv6 source got through"
    );

    // The VM gone: its link, the route to its address and its IPv6 conntrack entries too.
    link.release().unwrap();
    assert!(!link_exists(&link_name));
    let routes = std::fs::read_to_string("/proc/net/ipv6_route").unwrap();
    let v6_hex: String = v6.octets().iter().map(|b| format!("{b:02x}")).collect();
    assert!(!routes.contains(&v6_hex), "a route to {v6} is left");
    assert_eq!(conntrack_v6_marked(mark), 0);
    drop((vm, listener, world, host_service));
    net.shutdown().unwrap();
}

/// Set in the child process [`turning_ipv6_forwarding_on_keeps_a_router_advertised_default_route`]
/// runs in a network namespace of its own, to play a host whose default route came from a
/// router advertisement.
const RA_HOST: &str = "EMBER_NET_TEST_RA_HOST";

/// Sends one router advertisement (router lifetime 1800 s) out of `eth0`, from the namespace
/// of `pid`; whether it could (not before `eth0` has its link-local address).
fn advertise_router(pid: u32) -> bool {
    let code = "import socket, struct\n\
                s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)\n\
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)\n\
                ra = struct.pack('!BBHBBHII', 134, 0, 0, 64, 0, 1800, 0, 0)\n\
                s.sendto(ra, ('ff02::1', 0, 0, socket.if_nametoindex('eth0')))";
    Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "python3", "-c", code])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Whether this namespace has an IPv6 default route through `link`, learned from an
/// advertisement.
fn ra_default_route(link: &str) -> bool {
    let out = Command::new("ip")
        .args(["-6", "route", "show", "default", "dev", link])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("proto ra")
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..300 {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{what}");
}

#[test]
fn turning_ipv6_forwarding_on_keeps_a_router_advertised_default_route() {
    use ember_net::host::v6;
    if std::env::var_os(RA_HOST).is_some() {
        // The child, in a namespace of its own: a host taking router advertisements on
        // `ra0`, from a router (a process in another namespace) on its other end.
        let conf = Path::new("/proc/sys/net/ipv6/conf");
        let sysctl = |key: &str| {
            std::fs::read_to_string(conf.join(key))
                .unwrap()
                .trim()
                .to_owned()
        };
        let ip = |args: &[&str]| {
            assert!(
                Command::new("ip").args(args).status().unwrap().success(),
                "ip {args:?}"
            )
        };
        let router = FakeVm::start();
        let pid = router.pid().to_string();
        ip(&["link", "set", "lo", "up"]);
        ip(&[
            "link", "add", "ra0", "type", "veth", "peer", "name", "eth0", "netns", &pid,
        ]);
        ip(&["link", "set", "ra0", "up"]);
        assert!(in_netns(router.pid(), "ip", &["link", "set", "eth0", "up"]));
        assert_eq!(sysctl("ra0/accept_ra"), "1");
        assert_eq!(sysctl("all/forwarding"), "0");
        // Until both ends have their link-local addresses, an advertisement has no source.
        wait_for("the router's advertisement was not taken", || {
            advertise_router(router.pid()) && {
                std::thread::sleep(std::time::Duration::from_millis(50));
                ra_default_route("ra0")
            }
        });

        let done = v6::enable_forwarding(conf).unwrap();
        assert!(done.turned_on);
        assert_eq!(done.accept_ra, ["default", "ra0"]);
        assert_eq!(sysctl("all/forwarding"), "1");
        assert_eq!(sysctl("ra0/accept_ra"), "2");
        // The route the kernel would have purged (accept_ra = 1) is still there, and the next
        // advertisement is still taken: the route is refreshed, not lost.
        assert!(
            ra_default_route("ra0"),
            "forwarding cost the host its default route"
        );
        ip(&["-6", "route", "flush", "default", "dev", "ra0"]);
        assert!(!ra_default_route("ra0"));
        wait_for("an advertisement after forwarding was not taken", || {
            advertise_router(router.pid()) && {
                std::thread::sleep(std::time::Duration::from_millis(50));
                ra_default_route("ra0")
            }
        });
        println!("RA host: ok");
        return;
    }
    let out = Command::new("unshare")
        .arg("--net")
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "turning_ipv6_forwarding_on_keeps_a_router_advertised_default_route",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(RA_HOST, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("RA host: ok"),
        "the host in its own namespace failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn with_ipv6_off_a_vm_gets_ipv4_only_and_its_link_no_ipv6() {
    let net = Arc::new(
        HostNetwork::start(HostConfig {
            ipv6: false,
            ..config("10.251.0.0/24")
        })
        .unwrap(),
    );
    assert_eq!(net.block6(), None);
    let vm = FakeVm::start();
    let lease = net.lease().unwrap();
    let told = lease.vm_network();
    assert_eq!((told.address_v6, told.gateway_v6), (None, None));
    let link = lease.attach(vm.pid()).unwrap();
    assert_eq!(
        std::fs::read_to_string(format!(
            "/proc/sys/net/ipv6/conf/{}/disable_ipv6",
            link.name()
        ))
        .unwrap()
        .trim(),
        "1"
    );
    drop((link, vm));
    net.shutdown().unwrap();
}
