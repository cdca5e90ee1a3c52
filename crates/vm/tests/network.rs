//! A VM's network from the VM's side (issue 19), as root: the test acts as the host, making
//! the VM's link itself (a veth pair whose VM end it moves into the VM's network namespace as
//! `eth0`, its own end addressed as the gateway) and giving the agent `EMBER_VM_NETWORK`, then
//! checks what containers reach, from inside them. No host firewall is installed here: what is
//! refused is refused by the VM (its table, the containers' routes).

// Helpers outside #[test] functions fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use ember_protocol::{
    CodeSource, CreateContainer, Egress, FunctionSpec, Invocation, Invoke, InvokeOutcome, VmNetwork,
};
use ember_vm::linux::{BeforeStart, LinuxConfig, LinuxDriver, ReadOnlyBind};
use ember_vm::{Vm, VmDriver, VmSpec};
use nlink::netlink::addr::{Ipv4Address, Ipv6Address};
use nlink::netlink::link::VethLink;
use nlink::netlink::route::Ipv6Route;
use nlink::netlink::{Connection, Route};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const SANDBOX_ID: u32 = 1000;

/// A `provided` runtime in Python. At its init it listens on port 8080 (so that another
/// container can try it); each event lists `targets` to connect to, and the answer says what
/// each connection gave, with the container's own address and `AWS_ENDPOINT_URL_LAMBDA`.
const BOOTSTRAP: &str = r#"#!/usr/bin/python3
import errno, json, os, socket, struct, threading, urllib.request

base = "http://%s/2018-06-01/runtime" % os.environ["AWS_LAMBDA_RUNTIME_API"]

def serve():
    server = socket.socket(socket.AF_INET6)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    server.bind(("::", 8080))
    server.listen(16)
    while True:
        conn, _ = server.accept()
        conn.sendall(b"container")
        conn.close()

threading.Thread(target=serve, daemon=True).start()

def attempt(host, port):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(0.5)
    try:
        s.connect((host, port))
        return "ok:" + s.recv(100).decode()
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
    finally:
        s.close()

def reroute(via):
    """Asks the kernel (rtnetlink, RTM_NEWROUTE) for a default route via `via`; the errno."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    # rtmsg: IPv4, /0, main table, static, universe scope, unicast.
    body = struct.pack("BBBBBBBBI", socket.AF_INET, 0, 0, 0, 254, 4, 0, 1, 0)
    body += struct.pack("HH", 8, 5) + socket.inet_aton(via)  # RTA_GATEWAY
    flags = 0x1 | 0x4 | 0x400 | 0x100  # REQUEST, ACK, CREATE, REPLACE
    s.send(struct.pack("IHHII", 16 + len(body), 24, flags, 1, 0) + body)  # RTM_NEWROUTE
    answer = s.recv(4096)
    s.close()
    code = -struct.unpack("i", answer[16:20])[0]
    return errno.errorcode.get(code, str(code)) if code else "done"

def own_address(gateway):
    s = socket.socket(socket.AF_INET6 if ":" in gateway else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect((gateway, 9))
        return s.getsockname()[0]
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
    finally:
        s.close()

while True:
    with urllib.request.urlopen(base + "/invocation/next") as r:
        request_id = r.headers["Lambda-Runtime-Aws-Request-Id"]
        event = json.loads(r.read())
    out = {
        "endpoint": os.environ.get("AWS_ENDPOINT_URL_LAMBDA"),
        "address": own_address(event["gateway"]),
        "address6": own_address(event["gateway6"]) if "gateway6" in event else None,
        "results": [attempt(h, p) for h, p in event["targets"]],
        "interfaces": sorted(name for _, name in socket.if_nameindex()),
    }
    if event.get("reroute"):
        out["reroute"] = reroute(event["reroute"])
    body = json.dumps(out).encode()
    urllib.request.urlopen(urllib.request.Request(
        base + "/invocation/%s/response" % request_id, data=body, method="POST")).read()
"#;

/// The addresses of test `n`'s link: the host's end `gateway`, the VM's `vm`, and `other`, a
/// second address of the host's end (a host service that is not the gateway).
#[derive(Debug, Clone, Copy)]
struct Addresses {
    gateway: Ipv4Addr,
    vm: Ipv4Addr,
    other: Ipv4Addr,
    gateway_v6: Ipv6Addr,
    vm_v6: Ipv6Addr,
    other_v6: Ipv6Addr,
}

impl Addresses {
    fn of(n: u8) -> Self {
        // Per test process and test, so that runs side by side never meet.
        let third = (std::process::id() % 250) as u8;
        let base = n * 8;
        let v6 = |host: u16| Ipv6Addr::new(0xfdee, 0x212, third.into(), n.into(), 0, 0, 0, host);
        Self {
            gateway: Ipv4Addr::new(10, 212, third, base + 1),
            vm: Ipv4Addr::new(10, 212, third, base + 2),
            other: Ipv4Addr::new(10, 212, third, base + 3),
            gateway_v6: v6(1),
            vm_v6: v6(2),
            other_v6: v6(3),
        }
    }
}

/// Runs `f` on a thread of its own with a runtime of its own (the driver's hook is called from
/// a blocking part of the boot).
fn netlink<T: Send + 'static>(
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
    .join()
    .unwrap()
}

struct Fixture {
    _scratch: Scratch,
    vm: Vm,
    /// The host's end of the VM's link.
    host_link: String,
    addresses: Addresses,
    api_port: u16,
}

impl Fixture {
    /// A VM whose link the test makes as the host would (`n` picks its addresses).
    async fn new(test: &str, n: u8) -> Self {
        Self::with(test, n, |_| ()).await
    }

    /// [`Fixture::new`], with the driver's config changed by `configure` first.
    async fn with(test: &str, n: u8, configure: impl FnOnce(&mut LinuxConfig)) -> Self {
        let scratch = Scratch::new(test);
        let addresses = Addresses::of(n);
        let host_link = format!("evt{}n{n}", std::process::id() % 1_000_000);
        let api_port = 9000 + u16::from(n);
        let network = VmNetwork {
            interface: "eth0".into(),
            address: addresses.vm,
            gateway: addresses.gateway,
            address_v6: Some(addresses.vm_v6),
            gateway_v6: Some(addresses.gateway_v6),
            api_port,
        };
        let mut config = Scratch::config(&scratch.prefix, scratch.state.path());
        config.agent_env = vec![(
            ember_protocol::VM_NETWORK_ENV.into(),
            serde_json::to_string(&network).unwrap(),
        )];
        let link = host_link.clone();
        config.before_start = Some(BeforeStart(Arc::new(move |_vm, pid| {
            let link = link.clone();
            netlink(move || {
                Box::pin(async move {
                    let host = Connection::<Route>::new()?;
                    host.add_link(VethLink::new(&link, "eth0").peer_netns_pid(pid))
                        .await?;
                    host.add_address(
                        Ipv4Address::new(&link, addresses.gateway, 32).peer(addresses.vm),
                    )
                    .await?;
                    host.add_address(Ipv4Address::new(&link, addresses.other, 32))
                        .await?;
                    host.add_address(
                        Ipv6Address::new(&link, addresses.gateway_v6, 128)
                            .peer(addresses.vm_v6)
                            .nodad(),
                    )
                    .await?;
                    host.add_address(Ipv6Address::new(&link, addresses.other_v6, 128).nodad())
                        .await?;
                    host.set_link_up(link.as_str()).await?;
                    // An IPv6 address's peer gets its route only once the address is past DAD
                    // on a link with carrier, which this one has not until the VM brings its
                    // end up: the route to the VM is made here, as the host's must be.
                    host.add_route(Ipv6Route::from_addr(addresses.vm_v6, 128).dev(&link))
                        .await
                })
            })
            .map_err(std::io::Error::other)
        })));
        configure(&mut config);
        let driver = LinuxDriver::new(config).unwrap();
        let vm = driver.boot(vm_spec()).await.unwrap();
        Self {
            _scratch: scratch,
            vm,
            host_link,
            addresses,
            api_port,
        }
    }

    async fn upload(&self) -> String {
        let (zip, sha) = package();
        self.vm
            .connection()
            .put_code(&sha, &Bytes::from(zip))
            .await
            .unwrap();
        sha
    }

    async fn create(&self, id: &str, sha: &str, egress: Egress) {
        self.vm
            .connection()
            .create_container(request(id, sha, egress))
            .await
            .unwrap();
    }

    /// Has container `id` try each of `targets`; its answer.
    async fn probe(&self, id: &str, targets: &[(IpAddr, u16)], reroute: Option<Ipv4Addr>) -> Value {
        let mut event = json!({
            "gateway": self.addresses.gateway.to_string(),
            "gateway6": self.addresses.gateway_v6.to_string(),
            "targets": targets.iter().map(|(h, p)| json!([h.to_string(), p])).collect::<Vec<_>>(),
        });
        if let Some(via) = reroute {
            event["reroute"] = json!(via.to_string());
        }
        let result = self
            .vm
            .connection()
            .invoke(invoke(id, &event.to_string()))
            .await
            .unwrap();
        match &result.outcome {
            InvokeOutcome::Ok { payload } => serde_json::from_slice(payload).unwrap(),
            other => panic!("expected a response, got {other:?}; logs:\n{}", result.logs),
        }
    }

    /// The VM's links, by name, with their IPv4 addresses.
    fn vm_links(&self) -> BTreeMap<String, Vec<Ipv4Addr>> {
        let pid = self.vm.host_pid().unwrap();
        netlink(move || {
            Box::pin(async move {
                let vm = Connection::<Route>::new_in_namespace_path(format!("/proc/{pid}/ns/net"))
                    .unwrap();
                let mut links: BTreeMap<u32, (String, Vec<Ipv4Addr>)> = vm
                    .get_links()
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|l| (l.ifindex(), (l.name_or("?").to_owned(), Vec::new())))
                    .collect();
                for address in vm.get_addresses().await.unwrap() {
                    if let (Some(link), Some(std::net::IpAddr::V4(ip))) =
                        (links.get_mut(&address.ifindex()), address.address())
                    {
                        link.1.push(*ip);
                    }
                }
                links.into_values().collect()
            })
        })
    }

    /// The VM-side link of the container whose address is `container`: the /30's other host.
    fn link_of(&self, container: Ipv4Addr) -> String {
        let vm_end = Ipv4Addr::from(u32::from(container) - 1);
        self.vm_links()
            .into_iter()
            .find(|(_, addresses)| addresses.contains(&vm_end))
            .map(|(name, _)| name)
            .unwrap_or_else(|| panic!("no VM link holds {vm_end}: {:?}", self.vm_links()))
    }

    async fn wait_gone(&self, link: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.vm_links().contains_key(link) {
            assert!(Instant::now() < deadline, "{link} outlived its container");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Whether the host has a link named `name`.
fn host_has_link(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// A server on the host at `address` that answers each connection with the peer's address.
fn peer_echo(address: impl Into<IpAddr>) -> u16 {
    let address = address.into();
    let listener = TcpListener::bind((address, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let peer = conn.peer_addr().unwrap().ip();
            let _ = conn.write_all(format!("peer {peer}").as_bytes());
        }
    });
    port
}

fn vm_spec() -> VmSpec {
    VmSpec {
        id: "vm".into(),
        memory_mb: 1024,
        vcpus: 2,
        pids_max: 256,
    }
}

fn package() -> (Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bootstrap");
    std::fs::write(&path, BOOTSTRAP).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let zip = ember_package::zip_dir(dir.path()).unwrap();
    let sha = hex::encode(Sha256::digest(&zip));
    (zip, sha)
}

fn request(id: &str, sha: &str, egress: Egress) -> CreateContainer {
    CreateContainer {
        container_id: id.into(),
        function: FunctionSpec {
            name: "net".into(),
            arn: "arn:aws:lambda:us-east-1:000000000000:function:net".into(),
            version: "$LATEST".into(),
            handler: "probe".into(),
            runtime: "provided.al2023".into(),
            region: "us-east-1".into(),
            environment: BTreeMap::new(),
            memory_mb: 128,
            timeout_ms: 10_000,
            ephemeral_storage_mb: 8,
            code: CodeSource::Stored {
                sha256: sha.to_owned(),
            },
            layers: Vec::new(),
        },
        uid: SANDBOX_ID,
        gid: SANDBOX_ID,
        cpu_millis: 1000,
        pids_max: 64,
        freeze_idle: false,
        snap_start: false,
        credentials: None,
        egress,
    }
}

fn invoke(container: &str, payload: &str) -> Invoke {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    Invoke {
        container_id: container.into(),
        invocation: Invocation {
            request_id: uuid::Uuid::new_v4().to_string(),
            payload: Bytes::from(payload.to_owned()),
            deadline_ms: (now + Duration::from_secs(10)).as_millis() as u64,
            invoked_function_arn: "arn:aws:lambda:us-east-1:000000000000:function:net".into(),
            trace_id: None,
            client_context: None,
            cognito_identity: None,
        },
    }
}

fn address(answer: &Value) -> Ipv4Addr {
    answer["address"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn containers_reach_the_host_through_nat_never_each_other_and_deny_reaches_only_the_gateway()
{
    if !privileged() {
        return;
    }
    let fx = Fixture::new("net", 0).await;
    let Addresses {
        gateway,
        vm,
        other,
        gateway_v6,
        vm_v6,
        other_v6,
    } = fx.addresses;
    let ip = |a: Ipv4Addr| IpAddr::V4(a);
    let ip6 = |a: Ipv6Addr| IpAddr::V6(a);
    let at_gateway = peer_echo(gateway);
    let at_other = peer_echo(other);
    let at_gateway_v6 = peer_echo(gateway_v6);
    let at_other_v6 = peer_echo(other_v6);
    let sha = fx.upload().await;
    fx.create("a", &sha, Egress::Allow).await;
    fx.create("b", &sha, Egress::Allow).await;
    fx.create("d", &sha, Egress::Deny).await;

    // Out through the VM, NATed to the VM's address (IPv4 and IPv6); the endpoint is Ember's
    // API on the gateway.
    let a = fx
        .probe(
            "a",
            &[
                (ip(gateway), at_gateway),
                (ip(other), at_other),
                (ip6(gateway_v6), at_gateway_v6),
                (ip6(other_v6), at_other_v6),
            ],
            None,
        )
        .await;
    let masqueraded = format!("ok:peer {vm}");
    let masqueraded_v6 = format!("ok:peer {vm_v6}");
    assert_eq!(
        a["results"],
        json!([masqueraded, masqueraded, masqueraded_v6, masqueraded_v6]),
        "{a}"
    );
    assert_eq!(
        a["endpoint"],
        json!(format!("http://{gateway}:{}", fx.api_port))
    );
    assert_eq!(a["interfaces"], json!(["eth0", "lo"]));
    let a_address = address(&a);
    assert!(
        ipnet_contains(Ipv4Addr::new(169, 254, 128, 0), 17, a_address),
        "{a}"
    );

    // Another container: a's addresses, a's VM-side addresses and the VM's own are
    // unreachable, over IPv4 and IPv6; the gateway is not.
    let a_vm_end = Ipv4Addr::from(u32::from(a_address) - 1);
    let a_address6: Ipv6Addr = a["address6"].as_str().unwrap().parse().unwrap();
    assert!(
        a_address6.segments()[..3] == [0xfd45, 0x6d62, 0x6572],
        "a container's IPv6 address is of its link's /64: {a}"
    );
    let a_vm_end6 = Ipv6Addr::from(u128::from(a_address6) - 1);
    let b = fx
        .probe(
            "b",
            &[
                (ip(a_address), 8080),
                (ip(a_vm_end), 8080),
                (ip(vm), 8080),
                (ip6(vm_v6), 8080),
                (ip6(a_address6), 8080),
                (ip6(a_vm_end6), 8080),
                (ip(gateway), at_gateway),
            ],
            None,
        )
        .await;
    assert_eq!(
        b["results"],
        json!([
            "timeout",
            "timeout",
            "timeout",
            "timeout",
            "timeout",
            "timeout",
            masqueraded
        ]),
        "{b}"
    );
    assert_ne!(b["address6"], a["address6"]);
    assert_ne!(address(&b), a_address);

    // Deny: the gateway only; no route anywhere else, and no capability to make one.
    let d = fx
        .probe(
            "d",
            &[
                (ip(gateway), at_gateway),
                (ip6(gateway_v6), at_gateway_v6),
                (ip(other), at_other),
                (ip6(other_v6), at_other_v6),
                (ip(a_address), 8080),
            ],
            Some(a_vm_end),
        )
        .await;
    assert_eq!(
        d["results"],
        json!([
            masqueraded,
            masqueraded_v6,
            "ENETUNREACH",
            "ENETUNREACH",
            "ENETUNREACH"
        ]),
        "{d}"
    );
    assert_eq!(d["reroute"], json!("EPERM"), "{d}");

    // Links go with their containers; the VM keeps one per container and per spare.
    let a_link = fx.link_of(a_address);
    assert!(a_link.starts_with('c'), "{a_link}");
    fx.vm.connection().destroy_container("a").await.unwrap();
    fx.wait_gone(&a_link).await;
    let c_links = |links: &BTreeMap<String, Vec<Ipv4Addr>>| {
        links.keys().filter(|name| name.starts_with('c')).count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while c_links(&fx.vm_links()) != 4 {
        assert!(
            Instant::now() < deadline,
            "b, d and two spares: {:?}",
            fx.vm_links()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The VM's end goes with the VM's network namespace, and the host's with it.
    assert!(host_has_link(&fx.host_link));
    let host_link = fx.host_link.clone();
    fx.vm.shutdown().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while host_has_link(&host_link) {
        assert!(Instant::now() < deadline, "{host_link} outlived its VM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn without_a_network_a_container_has_only_its_loopback() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new("nonet");
    let vm = scratch.driver.boot(vm_spec()).await.unwrap();
    let (zip, sha) = package();
    vm.connection()
        .put_code(&sha, &Bytes::from(zip))
        .await
        .unwrap();
    vm.connection()
        .create_container(request("a", &sha, Egress::Allow))
        .await
        .unwrap();
    let event = json!({"gateway": "192.0.2.1", "targets": [["192.0.2.1", 80]]});
    let result = vm
        .connection()
        .invoke(invoke("a", &event.to_string()))
        .await
        .unwrap();
    let answer: Value = match &result.outcome {
        InvokeOutcome::Ok { payload } => serde_json::from_slice(payload).unwrap(),
        other => panic!("{other:?}: {}", result.logs),
    };
    assert_eq!(answer["interfaces"], json!(["lo"]));
    assert_eq!(answer["endpoint"], Value::Null);
    assert_eq!(answer["results"], json!(["ENETUNREACH"]));
    vm.shutdown().await.unwrap();
}

fn ipnet_contains(network: Ipv4Addr, prefix: u32, address: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - prefix);
    u32::from(network) & mask == u32::from(address) & mask
}

/// A Python function: its handler tries `targets` and says whether its runtime was forked from
/// the VM's runtime template (which imports `ctypes`; the handler does not).
const APP: &str = r#"
import errno, os, socket, sys

def attempt(host, port):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(0.5)
    try:
        s.connect((host, port))
        return "ok:" + s.recv(100).decode()
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
    finally:
        s.close()

def handler(event, context):
    return {
        "forked": "ctypes" in sys.modules,
        "init_type": os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE"),
        "endpoint": os.environ.get("AWS_ENDPOINT_URL_LAMBDA"),
        "results": [attempt(h, p) for h, p in event["targets"]],
    }
"#;

const PYTHON: &str = "python3.11";

#[tokio::test]
async fn python_runtimes_have_their_network_started_afresh_forked_or_restored() {
    if !privileged() {
        return;
    }
    let dir = std::env::var_os("EMBER_E2E_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/e2e-runtimes")
        });
    let runtimes = ember_runtimes::Runtimes::discover(ember_runtimes::RuntimesConfig::new(dir))
        .await
        .unwrap();
    runtimes.ensure(PYTHON).await.unwrap();
    let fx = Fixture::with("netpy", 1, |config| {
        config.read_only_binds = runtimes
            .vm_binds()
            .into_iter()
            .map(|(source, target)| ReadOnlyBind { source, target })
            .collect();
    })
    .await;
    let Addresses {
        gateway, vm, other, ..
    } = fx.addresses;
    let at_gateway = peer_echo(gateway);
    let at_other = peer_echo(other);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.py"), APP).unwrap();
    let zip = ember_package::zip_dir(dir.path()).unwrap();
    let sha = hex::encode(Sha256::digest(&zip));
    fx.vm
        .connection()
        .put_code(&sha, &Bytes::from(zip))
        .await
        .unwrap();
    let python = |id: &str, snap_start: bool, egress: Egress| {
        let mut request = request(id, &sha, egress);
        request.function.runtime = PYTHON.into();
        request.function.handler = "app.handler".into();
        request.function.memory_mb = 256;
        // SnapStart applies to published versions.
        request.function.version = "1".into();
        request.snap_start = snap_start;
        request
    };
    let event =
        json!({"targets": [[gateway.to_string(), at_gateway], [other.to_string(), at_other]]})
            .to_string();
    let run = |id: &'static str, request: CreateContainer| {
        let event = event.clone();
        let fx = &fx;
        async move {
            fx.vm.connection().create_container(request).await.unwrap();
            let result = fx.vm.connection().invoke(invoke(id, &event)).await.unwrap();
            match &result.outcome {
                InvokeOutcome::Ok { payload } => (
                    result.restored,
                    serde_json::from_slice::<Value>(payload).unwrap(),
                ),
                other => panic!("{id}: {other:?}; logs:\n{}", result.logs),
            }
        }
    };
    let endpoint = json!(format!("http://{gateway}:{}", fx.api_port));
    let masqueraded = format!("ok:peer {vm}");

    // Afresh (no template yet), then forked from the VM's runtime template: the same network,
    // the same endpoint.
    let (_, fresh) = run("fresh", python("fresh", false, Egress::Allow)).await;
    assert_eq!(fresh["forked"], json!(false), "{fresh}");
    fx.vm.connection().prepare_template(PYTHON).await.unwrap();
    let (_, forked) = run("forked", python("forked", false, Egress::Allow)).await;
    assert_eq!(forked["forked"], json!(true), "{forked}");
    for out in [&fresh, &forked] {
        assert_eq!(out["endpoint"], endpoint, "{out}");
        assert_eq!(out["results"], json!([masqueraded, masqueraded]), "{out}");
    }

    // Restored from the version's SnapStart template, in namespaces its user namespace owns:
    // its link too, and a Deny applied as anywhere else.
    let (restored, snap) = run("snap", python("snap", true, Egress::Deny)).await;
    assert!(restored, "{snap}");
    assert_eq!(snap["init_type"], json!("snap-start"), "{snap}");
    assert_eq!(snap["endpoint"], endpoint, "{snap}");
    assert_eq!(
        snap["results"],
        json!([masqueraded, "ENETUNREACH"]),
        "{snap}"
    );
    fx.vm.shutdown().await.unwrap();
}
