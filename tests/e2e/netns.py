"""A small LAN of network namespaces for the multi-host end-to-end test (test_multihost.py):
a bridge in the root namespace with the LAN's `.1`, and one namespace per host, each joined to
the bridge by a veth pair (`eth0` inside, with `.2`, `.3`, ... and a default route via `.1`).
Services the hosts share (PostgreSQL, SeaweedFS) listen on `.1`; the tests reach every host from
the root namespace through the bridge. Each host is as its own machine would be: its own
interfaces, routes, nftables tables and conntrack, so Ember's per-host network (blocks, links,
tables) is set up and swept in the host's own namespace.

Set up by shelling out to `ip` (iproute2), as a test's setup may; names carry this process's
pid, and the LAN's /24 is one of 198.18.0.0/15 (RFC 2544's benchmarking range) no interface on
the machine has yet, so that several test processes can run at once."""

from __future__ import annotations

import ipaddress
import os
import subprocess

LAN_RANGE = ipaddress.ip_network("198.18.0.0/15")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _used_subnets() -> set[ipaddress.IPv4Network]:
    listed = ip("-4", "-o", "addr", "show").stdout.split()
    used = set()
    for word in listed:
        if "/" in word:
            try:
                used.add(ipaddress.ip_interface(word).network.supernet(new_prefix=24))
            except ValueError:
                pass
    return used


class Lan:
    """`hosts` namespaces on one bridge; `address(i)` is host i's address, `gateway` the
    bridge's (the root namespace's)."""

    def __init__(self, hosts: int):
        tag = os.getpid()
        self.bridge = f"emh{tag}b"
        self.namespaces = [f"ember-mh-{tag}-{i}" for i in range(hosts)]
        self._root_ends = [f"emh{tag}h{i}" for i in range(hosts)]
        subnets = list(LAN_RANGE.subnets(new_prefix=24))
        used = _used_subnets()
        start = tag % len(subnets)
        self.subnet = next(subnets[(start + k) % len(subnets)] for k in range(len(subnets))
                           if subnets[(start + k) % len(subnets)] not in used)
        self.gateway = str(self.subnet.network_address + 1)
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    def address(self, i: int) -> str:
        return str(self.subnet.network_address + 2 + i)

    def prefix(self, i: int) -> tuple[str, ...]:
        """The command prefix that runs a program in host i's namespace (its network only: the
        mounts, /sys/fs/cgroup among them, stay the machine's, as `ip netns exec` would not
        keep them)."""
        return ("nsenter", f"--net=/run/netns/{self.namespaces[i]}")

    def _create(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for i, (ns, root_end) in enumerate(zip(self.namespaces, self._root_ends)):
            ip("netns", "add", ns)
            ip("link", "add", root_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("link", "set", root_end, "master", self.bridge, "up")
            ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "route", "add", "default", "via", self.gateway)

    def links(self, i: int) -> dict[str, int]:
        """Host i's interfaces: name -> ifindex (a recreated link gets a new index)."""
        out = ip("-n", self.namespaces[i], "-o", "link", "show").stdout
        links = {}
        for line in out.splitlines():
            index, name = line.split(":", 2)[:2]
            links[name.strip().split("@")[0]] = int(index)
        return links

    def close(self) -> None:
        for ns in self.namespaces:
            # Deleting a namespace deletes its links, and so the veth pairs.
            ip("netns", "delete", ns, check=False)
        ip("link", "delete", self.bridge, check=False)
