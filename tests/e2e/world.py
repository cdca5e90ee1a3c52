"""A stand-in for the outside world, for the end-to-end tests of egress (issue 19).

`World.create()` makes a network namespace of its own, linked to the host by a veth pair, with
the world's servers on addresses one router hop beyond the host, as the internet is: the link
is a transit network (198.51.100.0/24, TEST-NET-2, and 2001:db8:eb::/48), and the servers'
addresses are the world's own (203.0.113.0/24, TEST-NET-3, and 2001:db8:ec::/48), routed by the
host through the link. Ember always denies the networks the host is on (its LAN: a router, the
neighbours), so a world on the link's own network would be denied whatever the policy; none of
these prefixes collides with the host's networks or Ember's `--network-cidr`, and none is a
private range. Inside it run:

- an HTTP server on ports 80 and 8080 (and a UDP echo on 7007) that answers every GET with a
  known page naming the client's address and the port asked, so that a test sees the source
  address the world sees (the host's NAT, never a VM's or a container's);
- dnsmasq answering `world.test` (and `www.world.test`) with the world's addresses, nothing else:
  a server started with `--dns <World.ip>` resolves those names for its functions.

Several test sessions may run at once (CI runs groups in parallel): each world claims one of 32
slots (a /29 of each IPv4 range, a /64 of each IPv6 one, netns `emberworld<N>`, host link
`emberw<N>`) by holding an flock on /run/ember-world/<N>.lock for its life. Whoever claims a
slot first removes what a killed predecessor in that slot left behind (its namespace, link and
the processes still running in the namespace), so leftovers never accumulate. `close()` stops the
processes, deletes the namespace (and with it the veth pair) and releases the slot.

Run as a program (`python world.py serve 80 8080 --udp 7007 --udp-address IP...`), this file is the world's HTTP and
UDP server itself; `World` starts it inside the namespace with `ip netns exec`.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# The page every GET gets, in the body's "world" field: a test that fetched it got through.
PAGE = "hello from the world"
NAME = "world.test"
HTTP_PORTS = (80, 8080)
UDP_ECHO_PORT = 7007
SLOTS = 32
LOCK_DIR = Path("/run/ember-world")
READY_TIMEOUT_S = 15


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def dns_query(server: str, name: str, qtype: int = 1, timeout: float = 1.0) -> list[str]:
    """The A (qtype 1) or AAAA (28) records `server`:53 answers for `name` over UDP."""
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    qid = os.getpid() & 0xFFFF
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", qtype, 1)
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(query, (server, 53))
        reply = s.recv(4096)
    _, flags, _, answers, _, _ = struct.unpack(">HHHHHH", reply[:12])
    assert flags & 0xF == 0, f"{server} answered rcode {flags & 0xF} for {name}"
    at = 12 + len(question) + 4
    found = []
    for _ in range(answers):
        if reply[at] & 0xC0 == 0xC0:
            at += 2
        else:
            while reply[at]:
                at += reply[at] + 1
            at += 1
        rtype, _, _, length = struct.unpack(">HHIH", reply[at:at + 10])
        at += 10
        data = reply[at:at + length]
        at += length
        if rtype == 1 and length == 4:
            found.append(socket.inet_ntop(socket.AF_INET, data))
        elif rtype == 28 and length == 16:
            found.append(socket.inet_ntop(socket.AF_INET6, data))
    return found


@dataclass
class World:
    """One world namespace and its servers (see the module's doc)."""

    slot: int
    lock_fd: int
    netns: str
    host_link: str
    # The world's own addresses and the prefixes routed to it (`cidr`, `cidr6`); the host's
    # address on the link (the source the world sees: the host's NAT) and the world's there (the
    # host's next hop).
    ip: str
    cidr: str
    host_ip: str
    hop: str
    ip6: str
    cidr6: str
    host_ip6: str
    hop6: str
    procs: list[subprocess.Popen] = field(default_factory=list)
    log_dir: Path | None = None

    name = NAME
    page = PAGE
    http_ports = HTTP_PORTS
    udp_echo_port = UDP_ECHO_PORT

    # -- lifecycle --

    @classmethod
    def create(cls, log_dir: Path) -> "World":
        assert os.geteuid() == 0, "the world namespace needs root"
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        for slot in range(SLOTS):
            fd = os.open(LOCK_DIR / f"{slot}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            base = 8 * slot
            link6 = ipaddress.ip_network(f"2001:db8:eb:{slot:x}::/64")
            own6 = ipaddress.ip_network(f"2001:db8:ec:{slot:x}::/64")
            world = cls(
                slot=slot, lock_fd=fd, netns=f"emberworld{slot}", host_link=f"emberw{slot}",
                ip=f"203.0.113.{base + 2}", cidr=f"203.0.113.{base}/29",
                host_ip=f"198.51.100.{base + 1}", hop=f"198.51.100.{base + 2}",
                ip6=str(own6[2]), cidr6=str(own6), host_ip6=str(link6[1]), hop6=str(link6[2]),
                log_dir=log_dir,
            )
            try:
                world._sweep()
                world._build()
                world._start_servers()
            except BaseException:
                world.close()
                raise
            return world
        raise AssertionError(f"all {SLOTS} world slots are taken ({LOCK_DIR})")

    def _sweep(self) -> None:
        """Removes what a killed holder of this slot left: processes in its namespace (by pid),
        the namespace, the host's end of the link."""
        pids = _ip("netns", "pids", self.netns, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        _ip("netns", "del", self.netns, check=False)
        _ip("link", "del", self.host_link, check=False)

    def _build(self) -> None:
        ns = self.netns
        _ip("netns", "add", ns)
        _ip("link", "add", self.host_link, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("addr", "add", f"{self.host_ip}/29", "dev", self.host_link)
        _ip("-6", "addr", "add", f"{self.host_ip6}/64", "dev", self.host_link, "nodad")
        _ip("link", "set", self.host_link, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{self.hop}/29", "dev", "eth0")
        _ip("-n", ns, "-6", "addr", "add", f"{self.hop6}/64", "dev", "eth0", "nodad")
        _ip("-n", ns, "addr", "add", f"{self.ip}/32", "dev", "lo")
        _ip("-n", ns, "-6", "addr", "add", f"{self.ip6}/128", "dev", "lo")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "route", "add", "default", "via", self.host_ip)
        _ip("-n", ns, "-6", "route", "add", "default", "via", self.host_ip6)
        # The host's routes to the world's own prefixes, through the link.
        _ip("route", "add", self.cidr, "via", self.hop, "dev", self.host_link)
        _ip("-6", "route", "add", self.cidr6, "via", self.hop6, "dev", self.host_link)

    def _spawn(self, name: str, *argv: str) -> None:
        assert self.log_dir is not None
        log = open(self.log_dir / f"world-{name}.log", "ab")
        self.procs.append(subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *argv],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        ))
        log.close()

    def _start_servers(self) -> None:
        self._spawn("http", sys.executable, str(Path(__file__).resolve()), "serve",
                    *map(str, HTTP_PORTS), "--udp", str(UDP_ECHO_PORT),
                    "--udp-address", self.ip, "--udp-address", self.ip6)
        records = [f"--host-record={n},{self.ip},{self.ip6}" for n in (NAME, f"www.{NAME}")]
        self._spawn("dnsmasq", "dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts",
                    "--conf-file=/dev/null", "--bind-interfaces", "--listen-address", self.ip,
                    "--listen-address", self.ip6, "--port", "53", "--user=root",
                    "--pid-file=", *records)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            for p in self.procs:
                assert p.poll() is None, f"a world server exited with {p.returncode}:\n{self.logs()}"
            try:
                for port in HTTP_PORTS:
                    socket.create_connection((self.ip, port), timeout=0.5).close()
                assert dns_query(self.ip, NAME) == [self.ip]
                return
            except (OSError, AssertionError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"the world's servers are not ready:\n{self.logs()}")
                time.sleep(0.05)

    def close(self) -> None:
        """Stops the world's processes, deletes its namespace and link, releases the slot."""
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        self.procs.clear()
        self._sweep()
        os.close(self.lock_fd)

    def logs(self) -> str:
        if self.log_dir is None:
            return ""
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}"
                         for p in sorted(self.log_dir.glob("world-*.log")))

    # -- for tests --

    def url(self, port: int = 80, host: str = NAME, path: str = "/") -> str:
        return f"http://{host}{'' if port == 80 else f':{port}'}{path}"

    def get(self, port: int = 80, host: str | None = None) -> dict:
        """The page, fetched from the host (the floor every test compares with)."""
        import urllib.request
        with urllib.request.urlopen(self.url(port, host or self.ip), timeout=5) as r:
            return json.loads(r.read())


# ---- the world's servers, when run as a program -------------------------------------------------


class _Page(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (http.server's name)
        client = self.client_address[0].removeprefix("::ffff:")
        body = json.dumps({"world": PAGE, "client": client, "port": self.server.server_port,
                           "path": self.path, "host": self.headers.get("Host")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 (http.server's name)
        sys.stderr.write(f"{self.client_address[0]} {format % args}\n")


class _DualStack(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def _udp_echo(address: str, port: int) -> None:
    """Echoes each datagram with the sender's address appended. Bound to the world's own
    address, so that replies come from it (the kernel would pick the link's address for a socket
    bound to any, and the host's NAT would not recognise the reply)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((address, port))
        while True:
            data, peer = s.recvfrom(4096)
            s.sendto(data + b" " + peer[0].encode(), peer)


def _serve(argv: list[str]) -> None:
    ports, udp, addresses = [], None, []
    it = iter(argv)
    for arg in it:
        if arg == "--udp":
            udp = int(next(it))
        elif arg == "--udp-address":
            addresses.append(next(it))
        else:
            ports.append(int(arg))
    servers = [_DualStack(("::", port), _Page) for port in ports]
    for s in servers[1:]:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    for address in addresses if udp is not None else []:
        threading.Thread(target=_udp_echo, args=(address, udp), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    servers[0].serve_forever()


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        _serve(sys.argv[2:])
    else:
        sys.exit("usage: world.py serve PORT... [--udp PORT --udp-address ADDRESS...]")
