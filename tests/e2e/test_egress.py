"""Functions that talk to the world (issue 19), end to end, as a new user would try it.

The world is a network namespace of its own (world.py: an HTTP server on ports 80 and 8080, a UDP
echo on 7007, dnsmasq answering `world.test`), routed from the host; every server here is started
with `--dns <the world's address>`. One Python function, the probe, does what a test asks from
inside its container (fetch a URL, open a TCP connection, send a UDP datagram, resolve a name,
listen on a port, call Ember with boto3) and answers what happened, so each test reads as: this
function could, or could not, do this.

Connections that must fail are given one second: a dropped SYN times out, a rejected one fails at
once; either way the function did not get through, and the assertions say which target it was.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import threading
import time
import urllib.parse

import pytest

from ember_e2e import ROLE, host_node_runtime, make_zip

pytestmark = pytest.mark.needs_root  # VMs, and the world's namespace

PY = "python3.11"
NODE = host_node_runtime()
CONNECTED = "connected"

PROBE = r'''
import concurrent.futures, json, os, socket, threading, urllib.parse, urllib.request

import boto3
import botocore.config
import botocore.exceptions

TIMEOUT = 1.0
LISTENER = None


def gateway():
    return urllib.parse.urlsplit(os.environ["AWS_ENDPOINT_URL_LAMBDA"]).hostname


def my_address():
    """The container's own address: the source of a datagram towards the gateway (a UDP
    connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((gateway(), 53))
        return s.getsockname()[0]


def my_address6():
    """The container's own IPv6 address (the source towards a global address), if it has an
    IPv6 route."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.connect(("2001:db8::1", 53))
            return s.getsockname()[0]
    except OSError:
        return None


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
            return {"status": r.status, "page": json.loads(r.read())}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}


def connect(host, port):
    try:
        socket.create_connection((host, port), timeout=TIMEOUT).close()
        return "connected"
    except Exception as e:
        return f"{type(e).__name__}: {e}"


def udp(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(TIMEOUT)
            s.sendto(b"ping", (host, port))
            return s.recv(200).decode()
    except Exception as e:
        return f"{type(e).__name__}: {e}"


def resolve(name):
    try:
        infos = socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)
        return sorted({info[4][0] for info in infos})
    except Exception as e:
        return f"{type(e).__name__}: {e}"


def listen(port):
    """A TCP server in this container, for the life of the environment."""
    global LISTENER
    if LISTENER is None:
        # IPv4 and IPv6 alike.
        LISTENER = socket.create_server(("::", port), family=socket.AF_INET6,
                                        dualstack_ipv6=True)

        def serve():
            while True:
                conn, _ = LISTENER.accept()
                conn.close()

        threading.Thread(target=serve, daemon=True).start()
    return LISTENER.getsockname()[1]


def invoke(spec):
    """Ember's Invoke with plain boto3: the endpoint and the credentials come from the
    environment Ember gives the function (or the ones given, to play a thief)."""
    keys = spec.get("Credentials") or {}
    client = boto3.client(
        "lambda",
        aws_access_key_id=keys.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=keys.get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=keys.get("AWS_SESSION_TOKEN"),
        config=botocore.config.Config(retries={"total_max_attempts": 1}, connect_timeout=2,
                                      read_timeout=30),
    )
    try:
        r = client.invoke(FunctionName=spec["FunctionName"],
                          Payload=json.dumps(spec.get("Payload", {})).encode())
        return {"status": r["StatusCode"], "payload": json.loads(r["Payload"].read())}
    except botocore.exceptions.ClientError as e:
        return {"error": e.response["Error"]["Code"]}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}


def label(arg):
    if isinstance(arg, str):
        return arg
    host, port = arg
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def handler(event, context):
    out = {
        "address": my_address(),
        "address6": my_address6(),
        "gateway": gateway(),
        "endpoint": os.environ.get("AWS_ENDPOINT_URL_LAMBDA"),
        "resolv_conf": open("/etc/resolv.conf").read(),
        "hosts": open("/etc/hosts").read(),
        "echo": event.get("echo"),
    }
    if event.get("credentials"):
        out["credentials"] = {k: os.environ.get(k) for k in
                              ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
    if "listen" in event:
        port = listen(event["listen"])
        out["listening"] = port
        out["self"] = connect(out["address"], port)
        if out["address6"]:
            out["self6"] = connect(out["address6"], port)
    jobs = {}
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        for key, fn in (("fetch", fetch), ("connect", connect), ("udp", udp),
                        ("resolve", resolve)):
            for arg in event.get(key, []):
                args = [arg] if isinstance(arg, str) else arg
                jobs[(key, label(arg))] = pool.submit(fn, *args)
        if "invoke" in event:
            jobs[("invoke", "")] = pool.submit(invoke, event["invoke"])
    for (key, name), job in jobs.items():
        if key == "invoke":
            out["invoke"] = job.result()
        else:
            out.setdefault(key, {})[name] = job.result()
    return out
'''
PROBE_ZIP = make_zip({"app.py": PROBE})


# ---- servers and helpers ------------------------------------------------------------------------


def serve(factory, world, *flags: str):
    server = factory(None, "--dns", world.ip, *flags)
    return server, server.lambda_client(server.admin_keys())


@pytest.fixture(scope="module")
def open_server(module_server_factory, world):
    """The default policy (`--egress allow`)."""
    return serve(module_server_factory, world)


@pytest.fixture(scope="module")
def wide_server(module_server_factory, world):
    """Everything allowed explicitly: `--egress-allow 0.0.0.0/0` still does not open the host."""
    return serve(module_server_factory, world, "--egress-allow", "0.0.0.0/0")


@pytest.fixture(scope="module")
def port_denied_server(module_server_factory, world):
    """The world's ports 8080 and 7007 denied, TCP and UDP alike, over IPv4 and IPv6."""
    return serve(module_server_factory, world, "--egress-deny", f"{world.cidr}:8080,7007",
                 "--egress-deny", f"[{world.cidr6}]:8080,7007")


@pytest.fixture(scope="module")
def v6_denied_server(module_server_factory, world):
    """The world's IPv6 prefix denied whole; its IPv4 addresses are not."""
    return serve(module_server_factory, world, "--egress-deny", world.cidr6)


@pytest.fixture(scope="module")
def closed_server(module_server_factory, world):
    """`--egress deny`: nothing outside, but Ember's own API."""
    return serve(module_server_factory, world, "--egress", "deny")


def create_probe(lam, name: str) -> None:
    lam.create_function(FunctionName=name, Runtime=PY, Role=ROLE, Handler="app.handler",
                        Code={"ZipFile": PROBE_ZIP}, Timeout=30)


def probe(lam, name: str, **event) -> dict:
    r = lam.invoke(FunctionName=name, Payload=json.dumps(event).encode())
    out = json.loads(r["Payload"].read())
    assert "FunctionError" not in r, out
    return out


def fetched(result: dict) -> dict:
    """The world's page from a fetch's result, asserting it was fetched."""
    assert "page" in result, result
    assert result["status"] == 200 and result["page"]["world"] == "hello from the world", result
    return result["page"]


def blocked(result) -> bool:
    """A fetch, connection or datagram that did not get through."""
    if isinstance(result, dict):
        return "error" in result
    return result != CONNECTED and not result.startswith("ping")


def api_port(server) -> int:
    return int(server.endpoint.rsplit(":", 1)[1])


def vm_addresses(gateway: str) -> set[str]:
    """The VM ends (peers) of the host's links addressed with `gateway`: the VMs of the server
    whose gateway it is."""
    links = json.loads(subprocess.run(["ip", "-j", "addr", "show"], capture_output=True,
                                      text=True, check=True).stdout)
    return {a["address"] for link in links for a in link.get("addr_info", [])
            if a.get("local") == gateway and a.get("address") not in (None, gateway)}


def address6(v4: str) -> str:
    """The IPv6 address Ember pairs with a VM's or gateway's IPv4 one: the block's /64 of
    fd45:6d62:6600::/40, ending in the IPv4 address (ARCHITECTURE.md, "Network")."""
    a, b, c, _ = map(int, v4.split("."))
    prefix = (0xFD456D6266 << 88) | (a << 80) | (b << 72) | (c << 64)
    return str(ipaddress.IPv6Address(prefix | int(ipaddress.IPv4Address(v4))))


def host_link_locals() -> set[str]:
    """The host's link-local IPv6 addresses (fe80::/10), on every link."""
    links = json.loads(subprocess.run(["ip", "-j", "-6", "addr", "show"], capture_output=True,
                                      text=True, check=True).stdout)
    return {a["local"] for link in links for a in link.get("addr_info", [])
            if a.get("scope") == "link"}


class HostServer:
    """A TCP server of the host's own (as a database or an admin port would be), accepting in a
    thread, on `address`."""

    def __init__(self, address: str, family=socket.AF_INET):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.bind((address, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self):
        self.sock.close()


class HostEcho:
    """A UDP echo server of the host's own, on every address (v4 and v6)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.bind(("::", 0))
        self.port = self.sock.getsockname()[1]
        self.received = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            self.received += 1
            self.sock.sendto(data, peer)

    def close(self):
        self.sock.close()


# ---- fetching the world -------------------------------------------------------------------------


def test_a_function_fetches_a_page_by_name_through_the_hosts_nat(open_server, world):
    server, lam = open_server
    create_probe(lam, "egress-fetch")
    out = probe(lam, "egress-fetch", fetch=[world.url(), world.url(8080)],
                resolve=[world.name, "nowhere.invalid"], udp=[[world.ip, world.udp_echo_port]])
    # By name, on both ports: the page the host itself gets.
    for port in world.http_ports:
        page = fetched(out["fetch"][world.url(port)])
        assert page["port"] == port and page["host"].split(":")[0] == world.name
        # The world sees the host's address on its link (source NAT), never a VM's or a
        # container's: its IPv4 one, or its IPv6 one (the name has both, and a container with
        # IPv6 prefers it, as a dual-stack host does).
        assert page["client"] in (world.host_ip, world.host_ip6), page
        assert world.get(port)["client"] == world.host_ip
    assert page["client"] != out["address"]
    assert out["resolve"][world.name] == [world.ip]
    assert isinstance(out["resolve"]["nowhere.invalid"], str), out["resolve"]  # an error
    # UDP too, NATed the same way.
    assert out["udp"][f"{world.ip}:{world.udp_echo_port}"] == f"ping {world.host_ip}"
    # The container resolves through Ember's gateway only, and its /etc/hosts holds only
    # localhost (none of the host's names).
    assert out["resolv_conf"].split() == ["nameserver", out["gateway"]], out["resolv_conf"]
    names = {n for line in out["hosts"].splitlines() if line.split() and not line.startswith("#")
             for n in line.split()[1:]}
    assert names and names <= {"localhost", "localhost.localdomain", "ip6-localhost",
                               "ip6-loopback"}, out["hosts"]


def test_a_function_fetches_a_page_over_ipv6_through_the_hosts_nat(open_server, world):
    server, lam = open_server
    create_probe(lam, "egress-fetch6")
    v6 = f"[{world.ip6}]"
    out = probe(lam, "egress-fetch6", fetch=[world.url(host=v6), world.url(8080, host=v6)],
                udp=[[world.ip6, world.udp_echo_port]])
    # The container has an IPv6 address of its own link, never seen beyond its VM.
    assert out["address6"] and out["address6"].startswith("fd45:6d62:6572:"), out
    for port in world.http_ports:
        page = fetched(out["fetch"][world.url(port, host=v6)])
        assert page["port"] == port
        # The world sees the host's IPv6 address on its link (source NAT), as the host's own
        # request does.
        assert page["client"] == world.host_ip6 == world.get(port, host=v6)["client"], page
    assert out["udp"][f"[{world.ip6}]:{world.udp_echo_port}"] == f"ping {world.host_ip6}"
    # DNS is unchanged: the gateway's IPv4 address.
    assert out["resolv_conf"].split() == ["nameserver", out["gateway"]], out["resolv_conf"]


NODE_APP = r"""
const http = require("node:http");

function get(url) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { timeout: 2000 }, (res) => {
      let body = "";
      res.on("data", (c) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode, page: JSON.parse(body) }));
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", reject);
  });
}

exports.handler = async (event) => {
  const out = {};
  if (event.url) {
    out.fetched = await get(event.url);
  }
  if (event.callee) {
    // Required here, not at the top: a failure to load shows as this call's.
    const { LambdaClient, InvokeCommand } = require("@aws-sdk/client-lambda");
    const r = await new LambdaClient({}).send(new InvokeCommand({
      FunctionName: event.callee, Payload: Buffer.from(JSON.stringify({ echo: "from node" })),
    }));
    out.invoked = JSON.parse(Buffer.from(r.Payload).toString());
  }
  return out;
};
"""


def node_function(lam, name: str) -> None:
    assert NODE is not None, "this test needs Node.js 18+ on PATH (CI has Node.js 20)"
    lam.create_function(FunctionName=name, Runtime=NODE, Role=ROLE, Handler="index.handler",
                        Code={"ZipFile": make_zip({"index.js": NODE_APP})}, Timeout=30)


def test_a_node_function_fetches_a_page_by_name(open_server, world):
    server, lam = open_server
    node_function(lam, "egress-node-fetch")
    r = lam.invoke(FunctionName="egress-node-fetch",
                   Payload=json.dumps({"url": world.url()}).encode())
    out = json.loads(r["Payload"].read())
    assert "FunctionError" not in r, out
    assert fetched(out["fetched"])["client"] in (world.host_ip, world.host_ip6)


def test_a_node_function_calls_another_with_the_sdk_and_no_configuration(open_server):
    server, lam = open_server
    create_probe(lam, "egress-node-callee")
    node_function(lam, "egress-node-caller")
    r = lam.invoke(FunctionName="egress-node-caller",
                   Payload=json.dumps({"callee": "egress-node-callee"}).encode())
    out = json.loads(r["Payload"].read())
    assert "FunctionError" not in r, out
    assert out["invoked"]["echo"] == "from node"


# ---- the operator's policy ----------------------------------------------------------------------


def test_a_denied_cidr_and_port_is_refused_and_the_rest_works(port_denied_server, world):
    server, lam = port_denied_server
    create_probe(lam, "egress-ports")
    v6 = f"[{world.ip6}]"
    out = probe(lam, "egress-ports", fetch=[world.url(), world.url(8080), world.url(host=v6),
                                            world.url(8080, host=v6)],
                udp=[[world.ip, world.udp_echo_port], [world.ip6, world.udp_echo_port]])
    fetched(out["fetch"][world.url()])
    fetched(out["fetch"][world.url(host=v6)])
    assert blocked(out["fetch"][world.url(8080)]), out
    assert blocked(out["fetch"][world.url(8080, host=v6)]), out
    assert blocked(out["udp"][f"{world.ip}:{world.udp_echo_port}"]), out
    assert blocked(out["udp"][f"[{world.ip6}]:{world.udp_echo_port}"]), out
    # The host itself still reaches them: the policy is the functions'.
    assert world.get(8080)["port"] == 8080


def test_a_denied_ipv6_cidr_is_refused_and_ipv4_to_the_same_world_is_not(v6_denied_server,
                                                                          world):
    server, lam = v6_denied_server
    create_probe(lam, "egress-v6-denied")
    v6 = f"[{world.ip6}]"
    out = probe(lam, "egress-v6-denied", fetch=[world.url(host=v6), world.url()],
                connect=[[world.ip6, 8080]], udp=[[world.ip6, world.udp_echo_port]])
    assert blocked(out["fetch"][world.url(host=v6)]), out
    assert blocked(out["connect"][f"[{world.ip6}]:8080"]), out
    assert blocked(out["udp"][f"[{world.ip6}]:{world.udp_echo_port}"]), out
    fetched(out["fetch"][world.url()])
    # The host itself still reaches it: the policy is the functions'.
    assert world.get(host=v6)["port"] == 80


def test_egress_deny_leaves_only_ember_itself(closed_server, world):
    server, lam = closed_server
    create_probe(lam, "egress-closed")
    create_probe(lam, "egress-closed-callee")
    out = probe(lam, "egress-closed", fetch=[world.url(), f"http://{world.ip}:8080/",
                                             world.url(host=f"[{world.ip6}]")],
                connect=[[world.ip, 80], [world.ip, 8080], [world.ip6, 80]],
                udp=[[world.ip, world.udp_echo_port], [world.ip6, world.udp_echo_port]],
                resolve=[world.name],
                invoke={"FunctionName": "egress-closed-callee", "Payload": {"echo": "closed"}})
    for key in ("fetch", "connect", "udp"):
        for target, result in out[key].items():
            assert blocked(result), (key, target, result)
    # Names still resolve (through Ember's gateway), and Ember's API answers.
    assert out["resolve"][world.name] == [world.ip]
    assert out["invoke"]["status"] == 200 and out["invoke"]["payload"]["echo"] == "closed", out


def test_one_functions_egress_is_denied_with_the_cli_and_the_others_is_not(open_server, world):
    server, lam = open_server
    create_probe(lam, "egress-cli-off")
    create_probe(lam, "egress-cli-on")
    for name in ("egress-cli-off", "egress-cli-on"):
        fetched(probe(lam, name, fetch=[world.url()])["fetch"][world.url()])

    def update(setting: str):
        r = server.run_ember("fn", "update-config", "egress-cli-off", "--egress", setting,
                             "--endpoint", server.endpoint, "--data-dir", str(server.data_dir))
        assert r.returncode == 0, r.stderr

    update("deny")
    # Its warm environment was retired: the next invocation runs under the new policy at once.
    out = probe(lam, "egress-cli-off", fetch=[world.url()], invoke={
        "FunctionName": "egress-cli-on", "Payload": {"echo": "still"}})
    assert blocked(out["fetch"][world.url()]), out
    assert out["invoke"]["payload"]["echo"] == "still", out  # Ember is still reachable
    fetched(probe(lam, "egress-cli-on", fetch=[world.url()])["fetch"][world.url()])
    # Back to the server's default.
    update("default")
    fetched(probe(lam, "egress-cli-off", fetch=[world.url()])["fetch"][world.url()])


# ---- what no policy opens -----------------------------------------------------------------------


@pytest.mark.parametrize("which", ["open_server", "wide_server"])
def test_the_hosts_own_services_and_the_metadata_range_stay_unreachable(which, request, world):
    server, lam = request.getfixturevalue(which)
    name = f"egress-host-{which.split('_')[0]}"
    create_probe(lam, name)
    everywhere = HostServer("::", socket.AF_INET6)  # the host's every address, v4 and v6
    loopback = HostServer("127.0.0.1")
    echo = HostEcho()
    try:
        # The host reaches its own services (so a failure below is the policy's doing).
        for address in ("192.0.2.2", world.host_ip):
            socket.create_connection((address, everywhere.port), timeout=2).close()
        gateway = probe(lam, name)["gateway"]
        socket.create_connection((gateway, everywhere.port), timeout=2).close()
        gateway6 = address6(gateway)
        socket.create_connection((gateway6, everywhere.port), timeout=2).close()
        deadline = time.monotonic() + 5
        while everywhere.accepted < 4:  # counted by its thread
            assert time.monotonic() < deadline, everywhere.accepted
            time.sleep(0.01)
        # Over IPv6 too: the host's addresses, the VMs' gateway's, its loopback, and
        # link-local (the host's own fe80:: addresses, tried on the container's link).
        targets = [["192.0.2.2", everywhere.port], ["fd00::2", everywhere.port],
                   [gateway, everywhere.port], [gateway6, everywhere.port],
                   [gateway6, api_port(server)], [gateway6, 53],
                   [world.host_ip, everywhere.port], [world.host_ip6, everywhere.port],
                   ["127.0.0.1", loopback.port], ["::1", everywhere.port],
                   ["169.254.169.254", 80], ["fe80::1%eth0", everywhere.port]]
        targets += [[f"{ll}%eth0", everywhere.port] for ll in host_link_locals()]
        before = everywhere.accepted + loopback.accepted + echo.received
        out = probe(lam, name, connect=targets + [[gateway, api_port(server)], [world.ip, 80],
                                                  [world.ip6, 80]],
                    udp=[[address, echo.port] for address in
                         ("192.0.2.2", "fd00::2", gateway, gateway6, world.host_ip,
                          world.host_ip6, "127.0.0.1", "::1")])
        assert out["address6"], out  # the container has IPv6: the refusals are the policy's
        for target, result in list(out["connect"].items()) + list(out["udp"].items()):
            if target in (f"{gateway}:{api_port(server)}", f"{world.ip}:80",
                          f"[{world.ip6}]:80"):
                # Ember's API on the gateway, and the world: open.
                assert result == CONNECTED, (target, result)
            else:
                assert blocked(result), (target, result)
        assert everywhere.accepted + loopback.accepted + echo.received == before
    finally:
        echo.close()
        everywhere.close()
        loopback.close()


def test_other_containers_and_their_runtime_api_stay_unreachable(open_server, world):
    server, lam = open_server
    other = server.lambda_client(server.make_account("egress-tenant"))
    create_probe(other, "egress-theirs")  # another account: another VM
    create_probe(lam, "egress-neighbour")  # this account: maybe the same VM
    create_probe(lam, "egress-prober")
    theirs = probe(other, "egress-theirs", listen=47001)
    neighbour = probe(lam, "egress-neighbour", listen=47002)
    # Each listens, and reaches its own server, over IPv4 and IPv6.
    for peer in (theirs, neighbour):
        assert peer["self"] == CONNECTED and peer["self6"] == CONNECTED, peer
    me = probe(lam, "egress-prober")
    vms = vm_addresses(me["gateway"])
    assert len(vms) >= 2, f"expected the two accounts' VMs behind {me['gateway']}: {vms}"
    targets = []
    for peer in (theirs, neighbour):
        if peer["address"] != me["address"]:  # the same link-local /30 in another VM is not it
            targets += [[peer["address"], peer["listening"]], [peer["address"], 9001]]
        if peer["address6"] != me["address6"]:  # nor the same /64
            targets += [[peer["address6"], peer["listening"]], [peer["address6"], 9001]]
    for vm in vms:
        targets += [[vm, 47001], [vm, 47002], [vm, 9001]]
        targets += [[address6(vm), 47001], [address6(vm), 47002], [address6(vm), 9001]]
    assert targets
    out = probe(lam, "egress-prober", connect=targets + [["127.0.0.1", 9001]])
    # Its own Runtime API answers on its loopback; nobody else's does, nor any other container
    # or VM.
    assert out["connect"].pop("127.0.0.1:9001") == CONNECTED
    for target, result in out["connect"].items():
        assert blocked(result), (target, result)


# ---- Ember from inside --------------------------------------------------------------------------


def test_a_function_invokes_another_with_plain_boto3(open_server):
    server, lam = open_server
    create_probe(lam, "egress-caller")
    create_probe(lam, "egress-callee")
    out = probe(lam, "egress-caller", invoke={"FunctionName": "egress-callee",
                                              "Payload": {"echo": "hello callee"}})
    assert out["invoke"] == {"status": 200, "payload": out["invoke"]["payload"]}, out
    assert out["invoke"]["payload"]["echo"] == "hello callee"
    # Through the gateway's own address and the server's API port, nothing else.
    endpoint = urllib.parse.urlsplit(out["endpoint"])
    assert (endpoint.scheme, endpoint.hostname, endpoint.port) == (
        "http", out["gateway"], api_port(server)), out["endpoint"]


def test_stolen_session_credentials_stop_working_when_their_environment_ends(open_server):
    server, lam = open_server
    create_probe(lam, "egress-victim")
    create_probe(lam, "egress-thief")
    create_probe(lam, "egress-target")
    stolen = probe(lam, "egress-victim", credentials=True)["credentials"]
    steal = {"FunctionName": "egress-target", "Credentials": stolen, "Payload": {"echo": "x"}}
    # While the victim's environment lives, its credentials work, from anywhere inside.
    assert probe(lam, "egress-thief", invoke=steal)["invoke"]["status"] == 200
    # A new revision retires the victim's environment, and its credentials with it.
    lam.update_function_configuration(FunctionName="egress-victim", Description="v2")
    assert probe(lam, "egress-thief", invoke=steal)["invoke"] == {
        "error": "UnrecognizedClientException"}
