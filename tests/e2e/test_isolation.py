"""Isolation and cleanup, end to end, as root: what a function can reach from inside its
container, and what is left on the host after `ember serve` stops or is killed."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from ember_e2e import ROLE

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="VMs need root")


def create(lam, name, zip_bytes, **extra):
    lam.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                        Handler="app.handler", Code={"ZipFile": zip_bytes}, **extra)


def run(lam, name, event):
    r = lam.invoke(FunctionName=name, Payload=json.dumps(event).encode())
    assert "FunctionError" not in r, r["Payload"].read()
    return json.loads(r["Payload"].read())


@pytest.fixture(scope="module")
def lam(server):
    return server.lambda_client(server.admin_keys())


@pytest.fixture(scope="module")
def probe(lam, python_app_zip):
    create(lam, "probe", python_app_zip, Timeout=20)
    return lambda event: run(lam, "probe", event)


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


def test_cannot_reach_the_network(server, probe):
    assert probe({"connect": f"127.0.0.1:{server.port}"})["ok"] is False, "the host's loopback"
    assert probe({"connect": "1.1.1.1:53"})["ok"] is False


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


# ---- nothing leaks ------------------------------------------------------------------------------


def cgroup_prefix(data_dir: Path) -> str:
    return "ember/" + hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]


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


def test_nothing_is_left_after_sigterm(server_factory, python_app_zip):
    server, lam = busy_server(server_factory, python_app_zip)
    assert server.stop() == 0
    assert leftovers(server.data_dir) == []


def test_restart_after_sigkill_cleans_up(server_factory, python_app_zip):
    server, lam = busy_server(server_factory, python_app_zip)
    server.kill()
    # Without a warming pool the restarted server runs no VM until asked to, so whatever is
    # found is the killed server's.
    restarted = server_factory(server.data_dir, *NO_WARMING_POOL)
    deadline = time.monotonic() + 10
    while leftovers(server.data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers(server.data_dir) == [], "the restarted server cleaned up what was killed"
    lam = restarted.lambda_client(restarted.admin_keys())
    assert run(lam, "leaky", {"echo": 2})["echo"] == 2, "the function survived the kill"
    assert restarted.stop() == 0
    assert leftovers(server.data_dir) == []
