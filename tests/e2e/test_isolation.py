"""Isolation and cleanup, end to end, as root: what a function can reach from inside its
container, and what is left on the host after `ember serve` stops or is killed."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import socket
import time
import uuid
from pathlib import Path

import pytest

from ember_e2e import ROLE, fleet, make_zip, wait_fleet

pytestmark = pytest.mark.needs_root  # VMs need root; without it the tests fail (conftest.py)


def create(lam, name, zip_bytes, **extra):
    lam.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                        Handler="app.handler", Code={"ZipFile": zip_bytes}, **extra)


def run(lam, name, event):
    r = lam.invoke(FunctionName=name, Payload=json.dumps(event).encode())
    assert "FunctionError" not in r, r["Payload"].read()
    return json.loads(r["Payload"].read())


def wait_until(condition, what: str, timeout: float = 30.0):
    """Polls `condition()` until it returns something true, and returns that; fails after
    `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        got = condition()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def account_of(lam, name: str) -> str:
    return lam.get_function(FunctionName=name)["Configuration"]["FunctionArn"].split(":")[4]


@pytest.fixture(scope="module")
def lam(server):
    return server.lambda_client(server.admin_keys())


@pytest.fixture(scope="module")
def probe(lam, python_app_zip):
    create(lam, "probe", python_app_zip, Timeout=20)
    return lambda event: run(lam, "probe", event)


def cgroup_prefix(data_dir: Path) -> str:
    return "ember/" + hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]


def function_processes(server, name: str) -> dict[int, str]:
    """The host's view of function `name`'s runtime processes on `server`: each pid, with the
    id of the VM whose cgroup (`ember/<data dir hash>/<vm id>/...`) it is in."""
    prefix = "/" + cgroup_prefix(server.data_dir) + "/"
    wanted = f"AWS_LAMBDA_FUNCTION_NAME={name}".encode()
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cgroups = (proc / "cgroup").read_text()
        except OSError:
            continue
        if wanted not in environ:
            continue
        for line in cgroups.splitlines():
            path = line.split(":", 2)[2]
            if path.startswith(prefix):
                found[int(proc.name)] = path[len(prefix):].split("/")[0]
                break
    return found


def in_container(server, name: str, path: str) -> list[Path]:
    """`path` of the containers of function `name`, as the host reaches it (through
    /proc/PID/root of their processes)."""
    return [Path(f"/proc/{pid}/root") / path.lstrip("/")
            for pid in function_processes(server, name)]


# ---- from inside ------------------------------------------------------------------------------


def test_cannot_read_host_files(server, probe):
    for path in ["/etc/shadow", "/root", str(server.data_dir / "ember.db"),
                 str(server.data_dir / "credentials")]:
        out = probe({"read": path})
        assert out["ok"] is False, f"{path} is readable from a function: {out}"
    assert probe({"listdir": "/root"})["ok"] is False
    assert probe({"listdir": str(server.data_dir)})["ok"] is False


def test_runs_unprivileged_and_cannot_mount(probe):
    me = probe({"whoami": True})
    assert me["uid"] != 0 and me["gid"] != 0
    out = probe({"mount": True})
    assert out["rc"] == -1 and out["errno"] == 1, out  # EPERM


def test_has_lambdas_open_file_limit(probe):
    # The VM's agent raises its own limit (it keeps descriptors per container); functions get
    # Lambda's 1024, soft and hard, which they cannot raise.
    assert probe({"nofile": True}) == {"soft": 1024, "hard": 1024, "raised": False}


def test_sees_only_its_own_processes(probe):
    pids = probe({"pids": True})["pids"]
    me = probe({"whoami": True})["pid"]
    assert me in pids
    assert len(pids) <= 3, f"a container sees processes beyond its own: {pids}"


def test_cannot_write_its_code_but_can_write_tmp(probe):
    assert probe({"write": "/var/task/evil.py"})["ok"] is False
    assert probe({"write": "/tmp/scratch"})["ok"] is True


def host_addresses() -> list[str]:
    """The host's own IPv4 addresses, loopback included: the kernel's local routes
    (`/32 host LOCAL` in /proc/net/fib_trie)."""
    found, last = set(), None
    for line in Path("/proc/net/fib_trie").read_text().splitlines():
        words = line.split()
        if len(words) == 2 and words[0].endswith("--"):
            last = words[1]
        elif words[:3] == ["/32", "host", "LOCAL"] and last:
            found.add(last)
    return sorted(found)


def test_cannot_reach_the_network(server, probe):
    """A listener of the test's own on every address of the host (the loopback and, on a host
    with a network, the interfaces' addresses): the host reaches each, the function none."""
    addresses = host_addresses()
    assert "127.0.0.1" in addresses, addresses
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen(64)
        listener.settimeout(5)
        port = listener.getsockname()[1]
        for address in addresses:
            with socket.create_connection((address, port), timeout=5):
                listener.accept()[0].close()
        targets = [f"{a}:{port}" for a in addresses] + [f"127.0.0.1:{server.port}"]
        reached = {target: out for target in targets
                   if (out := probe({"connect": target}))["ok"] is not False}
        assert reached == {}, f"the function reached the host's {sorted(reached)}"
        # Not even a connection the function took for a failure reached the listener.
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_cannot_fork_bomb(lam, python_app_zip):
    # Enough memory for a thousand forked interpreters: this is about the pids limit.
    create(lam, "forker", python_app_zip, Timeout=20, MemorySize=1024)
    out = run(lam, "forker", {"fork_bomb": 5000})
    assert out["error"], f"5000 forks all succeeded: {out}"
    assert out["children"] < 1024
    assert run(lam, "forker", {"echo": "still alive"})["echo"] == "still alive"


def test_cannot_observe_another_account(server, lam, python_app_zip, probe):
    other = server.make_account("isolation-other")
    lam_b = server.lambda_client(other)
    lam_b.create_function(FunctionName="secret-keeper", Runtime="python3.11", Role=ROLE,
                          Handler="app.handler", Timeout=20,
                          Code={"ZipFile": python_app_zip})
    assert run(lam_b, "secret-keeper", {"write": "/tmp/other-account-secret"})["ok"]
    theirs = run(lam_b, "secret-keeper", {"pids": True})["pids"]
    assert probe({"read": "/tmp/other-account-secret"})["ok"] is False
    assert probe({"listdir": "/var/task"})["entries"] == ["app.py", "bad_import.py"]
    mine = probe({"instance": True})["instance"]
    assert run(lam_b, "secret-keeper", {"instance": True})["instance"] != mine
    assert len(theirs) <= 3
    # The two accounts' functions run in VMs of their own. Seen from the host, in the cgroups
    # the kernel has their processes in...
    my_vms = set(function_processes(server, "probe").values())
    their_vms = set(function_processes(server, "secret-keeper").values())
    assert my_vms and their_vms, (my_vms, their_vms)
    assert not my_vms & their_vms, f"two accounts share the VMs {my_vms & their_vms}"
    # ...and in the fleet's view, where each of those VMs is its function's account's.
    owners = {vm["VmId"]: vm["AccountId"] for vm in fleet(server)["ActivePool"]}
    assert {owners.get(vm) for vm in my_vms} == {account_of(lam, "probe")}, owners
    assert {owners.get(vm) for vm in their_vms} == {other["AccountId"]}, owners


# ---- one execution environment, one network ---------------------------------------------------

# Victims stay inside an invocation (their Runtime API waiting on them) until the test releases
# them; the attacker scans every TCP port of every address its container has, with non-blocking
# connects in batches of 256 (a refusal or 0.5 s of silence is a closed port), and tries the
# victims' Runtime API addresses.
NET_APP = r"""
import errno, os, select, socket, time

def addresses():
    # The container's own addresses: the local table's (`/32 host LOCAL` in fib_trie, the line
    # after the address) and IPv6's, not the routes' destinations (its gateway).
    found = {"127.0.0.1"}
    last = None
    for line in open("/proc/net/fib_trie"):
        parts = line.split()
        if len(parts) == 2 and parts[0] == "|--":
            last = parts[1]
        elif last and parts[:3] == ["/32", "host", "LOCAL"]:
            found.add(last)
    if os.path.exists("/proc/net/if_inet6"):
        for line in open("/proc/net/if_inet6"):
            h = line.split()[0]
            found.add(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(h)))
    return sorted(a for a in found if not a.endswith(".0") and not a.endswith(".255")
                  and not a.startswith("ff") and not a.startswith("fe80"))

def scan(host, ports):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    found = []
    for i in range(0, len(ports), 256):
        pending = {}
        for port in ports[i:i + 256]:
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setblocking(False)
            rc = s.connect_ex((host, port))
            if rc == 0:
                pending[s] = port
            elif rc == errno.EINPROGRESS:
                pending[s] = port
            else:
                s.close()
        end = time.monotonic() + 0.5
        while pending and time.monotonic() < end:
            _, ready, _ = select.select([], list(pending), [], max(0, end - time.monotonic()))
            for s in ready:
                port = pending.pop(s)
                # A socket whose own port is the one it dials connects to itself (TCP's
                # simultaneous open): that is no listener.
                if (s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                        and s.getsockname()[1] != port):
                    found.append(port)
                s.close()
        for s in pending:
            s.close()
    return found

def handler(event, context):
    if "hold" in event:
        # Mid-invocation until the host drops the release file into this container's /tmp.
        token = event["hold"]
        open(f"/tmp/holding-{token}", "w").close()
        deadline = time.monotonic() + event["at_most"]
        while not os.path.exists(f"/tmp/release-{token}") and time.monotonic() < deadline:
            time.sleep(0.02)
        return {"me": event["me"], "released": os.path.exists(f"/tmp/release-{token}"),
                "request_id": context.aws_request_id}
    if "api" in event:
        return {"api": os.environ["AWS_LAMBDA_RUNTIME_API"]}
    started = time.monotonic()
    seen = addresses()
    open_ports = {host: scan(host, list(range(1, 65536))) for host in seen}
    tried = {}
    for target in event["targets"]:
        host, port = target.rsplit(":", 1)
        s = socket.socket()
        s.settimeout(1)
        try:
            s.connect((host, int(port)))
            tried[target] = "connected"
        except OSError as e:
            tried[target] = errno.errorcode.get(e.errno, str(e))
        finally:
            s.close()
    return {"interfaces": sorted(n for _, n in socket.if_nameindex()), "addresses": seen,
            "open": open_ports, "tried": tried, "own": os.environ["AWS_LAMBDA_RUNTIME_API"],
            "seconds": time.monotonic() - started}
"""


def test_a_function_reaches_no_runtime_api_but_its_own(server, lam):
    app = make_zip({"app.py": NET_APP})
    create(lam, "net-victim", app, Timeout=60)
    create(lam, "net-attacker", app, Timeout=120, MemorySize=256)
    lam_b = server.lambda_client(server.make_account("net-other"))
    create(lam_b, "net-victim-b", app, Timeout=60)
    victims = [(lam, "net-victim"), (lam_b, "net-victim-b")]
    apis = [run(client, name, {"api": True})["api"] for client, name in victims]
    assert run(lam, "net-attacker", {"api": True})["api"] == "127.0.0.1:9001"
    account = account_of(lam, "net-victim")
    same_vm = [vm for vm in fleet(server)["ActivePool"] if vm["AccountId"] == account]
    assert any({c["FunctionName"] for c in vm["Containers"]} >= {"net-victim", "net-attacker"}
               for vm in same_vm), f"the attacker and its victim do not share a VM: {same_vm}"

    token = uuid.uuid4().hex
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        # Both victims are mid-invocation (and their next polls pending) during the scan: each
        # holds its invocation until the test releases it, after the attack.
        waiting = [pool.submit(run, client, name, {"hold": token, "at_most": 50, "me": name})
                   for client, name in victims]
        for _, name in victims:
            wait_until(lambda: any(p.exists() for p in
                                   in_container(server, name, f"/tmp/holding-{token}")),
                       f"{name} to be mid-invocation")
        try:
            attack = run(lam, "net-attacker", {"targets": apis + ["127.0.0.1:9001"]})
        finally:
            for _, name in victims:
                for path in in_container(server, name, f"/tmp/holding-{token}"):
                    if path.exists():
                        path.with_name(f"release-{token}").touch()
        results = [f.result() for f in waiting]

    # Its loopback, and the link to its VM the server's network gives it (README: Network).
    assert attack["interfaces"] == ["eth0", "lo"], attack
    assert attack["own"] == "127.0.0.1:9001"
    for host, ports in attack["open"].items():
        want = [9001] if host == "127.0.0.1" else []
        assert ports == want, f"{host} has open ports {ports} (only the function's own Runtime " \
                              f"API may answer): {attack}"
    assert "127.0.0.1" in attack["open"] and attack["seconds"] < 100, attack
    # The victims' Runtime API address is the same as the attacker's: in the attacker's
    # namespace, it is the attacker's own.
    assert set(apis) == {"127.0.0.1:9001"}, apis
    assert attack["tried"] == {"127.0.0.1:9001": "connected"}, attack
    for (_, name), result in zip(victims, results):
        # Each victim's invocation is answered by itself, held through the whole attack.
        assert result["me"] == name and result["released"] is True, result
    # A following one works as before.
    assert run(lam, "net-victim", {"api": True}) == {"api": "127.0.0.1:9001"}


# ---- container hygiene ---------------------------------------------------------------------------

HYGIENE_APP = r"""
import os, signal, uuid

INSTANCE = str(uuid.uuid4())

def handler(event, context):
    if event.get("kill_init"):
        out = {}
        for sig in (0, signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(1, sig)
                out[str(int(sig))] = "sent"
            except PermissionError:
                out[str(int(sig))] = "EPERM"
            except OSError as e:
                out[str(int(sig))] = e.errno
        return {"kill": out, "instance": INSTANCE}
    if event.get("mountinfo"):
        return {"mountinfo": open("/proc/self/mountinfo").read(),
                "mounts": open("/proc/self/mounts").read(), "instance": INSTANCE}
    return {"instance": INSTANCE}
"""


@pytest.fixture(scope="module")
def hygiene(lam):
    create(lam, "hygiene", make_zip({"app.py": HYGIENE_APP}), Timeout=20)
    return lambda event: run(lam, "hygiene", event)


def test_a_function_cannot_signal_its_containers_pid_1(hygiene):
    before = hygiene({})["instance"]
    out = hygiene({"kill_init": True})
    assert out["kill"] == {"0": "EPERM", "15": "EPERM", "9": "EPERM"}, out
    # The same container, still working.
    assert out["instance"] == before
    assert hygiene({})["instance"] == before


def test_no_host_path_in_mountinfo(server, hygiene):
    out = hygiene({"mountinfo": True})
    text = out["mountinfo"] + out["mounts"]
    host_only = {str(server.data_dir), str(server.data_dir.resolve())}
    runtime_dir = os.environ.get("EMBER_E2E_RUNTIME_DIR")
    if runtime_dir:
        host_only |= {runtime_dir, str(Path(runtime_dir).resolve())}
    # And any other path of the host but the system directories a container shares.
    # And no other path of the host: every mount shows as its root either its own root or the
    # path it has in the container too (the system directories a container shares with the
    # host, and device nodes), and names in its options only paths of the VM, or (a root a
    # spare pre-built) paths through its first process's descriptors of the VM's directories.
    for line in out["mountinfo"].splitlines():
        fields = line.split()
        root, where, options = fields[3], fields[4], fields[-1]
        assert root in ("/", where) or where.startswith("/dev/"), \
            f"{where} shows the host path {root}: {line}"
        for option in options.split(","):
            if option.startswith("lowerdir="):
                for layer in option.removeprefix("lowerdir=").split(":"):
                    assert layer.startswith(("/run/ember/", "/opt/ember/", "/proc/self/fd/")), \
                        line
    for path in host_only:
        assert path not in text, f"{path} appears in the container's mounts:\n{text}"


# ---- nothing leaks ------------------------------------------------------------------------------


NO_WARMING_POOL = ("--replenish-policy", "fixed", "--replenish-count", "0")


def leftovers(data_dir: Path) -> list[str]:
    """Processes, cgroups and mounts of the server on `data_dir` still on the host."""
    prefix = cgroup_prefix(data_dir)
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cgroups = (proc / "cgroup").read_text()
        except OSError:
            continue
        if f"/{prefix}/" in cgroups or cgroups.rstrip().endswith(prefix):
            found.append(f"process {proc.name}: {cgroups.strip()}")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[3].find(prefix) >= 0 or fields[4].startswith(str(data_dir.resolve())):
            found.append(f"mount {fields[4]}")
        if fields[4].startswith("/sys/fs/cgroup") and Path(fields[4], prefix).exists():
            found.append(f"cgroup {fields[4]}/{prefix}")
    return found


def busy_server(server_factory, python_app_zip, data_dir=None):
    server = server_factory(data_dir)
    lam = server.lambda_client(server.admin_keys())
    create(lam, "leaky", python_app_zip, Timeout=20)
    run(lam, "leaky", {"echo": 1})
    assert leftovers(server.data_dir), "a running server should have VMs to find"
    return server, lam


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_finishes_the_invocation_in_flight_and_leaves_nothing(
        server_factory, python_app_zip, sig):
    """SIGTERM (a service manager's stop) and SIGINT (a terminal's Ctrl-C, which reaches the
    whole process group: the VMs' agents too) stop the server alike, gracefully: the invocation
    running when the signal comes finishes and gets its answer, the store is closed cleanly,
    the endpoint file is removed, and no VM process, cgroup or mount is left on the host."""
    server, lam = busy_server(server_factory, python_app_zip)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(run, lam, "leaky", {"sleep_ms": 5000})
        wait_fleet(server, lambda f: any(c["State"] == "busy" for vm in f["ActivePool"]
                                         for c in vm["Containers"]),
                   timeout=30, what="the invocation to run")
        assert not in_flight.done(), "the invocation ended before the signal was sent"
        assert server.stop(sig, group=True) == 0
        assert in_flight.result(timeout=30) == {"slept_ms": 5000}
    log = server.log_text()
    assert f"{sig}: shutting down" in log and "ember stopped" in log, log
    # A closed store is ember.db alone: its write-ahead log is checkpointed (removed or empty).
    wal = server.data_dir / "ember.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0, "the store was not closed cleanly"
    assert not server.endpoint_path.exists(), "the endpoint file outlived the listener"
    assert leftovers(server.data_dir) == []


def network_leftovers(tag: str) -> list[str]:
    """The host-side VM links of the server whose network tag is `tag`."""
    return [name for name in os.listdir("/sys/class/net") if name.startswith(f"em{tag}v")]


def test_restart_after_sigkill_cleans_up(server_factory, python_app_zip):
    server, lam = busy_server(server_factory, python_app_zip)
    tag = re.search(r"table=ember_([0-9a-f]{8})", server.log_text()).group(1)
    assert network_leftovers(tag), "the busy server's VM has no link"
    server.kill()
    assert network_leftovers(tag), "the killed server's links went by themselves"
    # Without a warming pool the restarted server runs no VM until asked to, so whatever is
    # found is the killed server's.
    restarted = server_factory(server.data_dir, *NO_WARMING_POOL)
    wait_until(lambda: leftovers(server.data_dir) == [],
               "the restarted server to clean up what was killed", timeout=10)
    # The network of the killed server (its block's lock freed with it) is swept at the start
    # of the next server on the host.
    assert network_leftovers(tag) == []
    lam = restarted.lambda_client(restarted.admin_keys())
    assert run(lam, "leaky", {"echo": 2})["echo"] == 2, "the function survived the kill"
    assert restarted.stop() == 0
    assert leftovers(server.data_dir) == []
