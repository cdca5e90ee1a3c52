"""Freezing between invocations, end to end, as root: a Python handler starts a thread that spins
for ever and returns. With `--freeze-idle true` (the default) its container is frozen until the
next invocation, so the thread uses no CPU in between (seen from the host, in the container's
cgroup, and from inside, in the process's CPU time); with `--freeze-idle false` it keeps running.
A frozen container is still reclaimed after the keep-alive and still killed at a timeout."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from pathlib import Path

import pytest

from ember_e2e import ROLE, make_zip

pytestmark = pytest.mark.needs_root  # VMs need root; without it the tests fail (conftest.py)

SPINNER = """\
import threading, time, uuid

INSTANCE = str(uuid.uuid4())
spun = [0]
thread = []

def spin():
    while True:
        spun[0] += 1

def handler(event, context):
    if not thread:
        thread.append(threading.Thread(target=spin, daemon=True))
        thread[0].start()
    # The thread runs while this one sleeps (and lets go of the GIL).
    time.sleep(event.get("sleep", 0.05))
    return {"spun": spun[0], "cpu": time.process_time(), "instance": INSTANCE}
"""

# One vCPU (1769 MB), so that the spinner is not held back by its container's CPU quota.
MEMORY_SIZE = 1769
IDLE_S = 3.0


def host_is_v1() -> bool:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[2] == "cgroup" and "memory" in fields[3].split(","):
            return True
    return False


V1 = host_is_v1()


def server_groups(data_dir: Path) -> Path:
    """Where the server on `data_dir` keeps its VMs' cgroups (the freezer's, on v1)."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return Path("/sys/fs/cgroup") / ("freezer" if V1 else "") / "ember" / digest


def containers(data_dir: Path) -> list[Path]:
    """The container cgroups of the server on `data_dir` (`<VM>/c-<id>`), as the host sees them."""
    return sorted(server_groups(data_dir).glob("*/c-*"))


def frozen_and_cpu(group: Path) -> tuple[bool, float]:
    """Whether a container's cgroup is frozen, and its CPU time in seconds, read from the host."""
    if V1:
        frozen = (group / "freezer.state").read_text().strip() == "FROZEN"
        cpuacct = Path("/sys/fs/cgroup/cpuacct") / group.relative_to(Path("/sys/fs/cgroup/freezer"))
        return frozen, int((cpuacct / "cpuacct.usage").read_text()) / 1e9
    events = dict(line.split() for line in (group / "cgroup.events").read_text().splitlines())
    stat = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines())
    return events["frozen"] == "1", int(stat["usage_usec"]) / 1e6


def only_container(data_dir: Path) -> Path:
    found = containers(data_dir)
    assert len(found) == 1, found
    return found[0]


def wait_frozen(group: Path) -> None:
    deadline = time.monotonic() + 5
    while not frozen_and_cpu(group)[0]:
        assert time.monotonic() < deadline, f"{group} was never frozen"
        time.sleep(0.02)


def make_spinner(lam, **extra) -> str:
    name = f"spinner-{uuid.uuid4().hex[:8]}"
    lam.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                        Handler="app.handler", MemorySize=MEMORY_SIZE,
                        Code={"ZipFile": make_zip({"app.py": SPINNER})}, **extra)
    return name


def invoke(lam, name, event=None, **kwargs):
    r = lam.invoke(FunctionName=name, Payload=json.dumps(event or {}).encode(), **kwargs)
    return r, json.loads(r["Payload"].read())


def run(lam, name, event=None):
    r, body = invoke(lam, name, event)
    assert "FunctionError" not in r, body
    return body


@pytest.fixture
def frozen_server(server_factory):
    return server_factory(None, "--replenish-policy", "fixed", "--replenish-count", "0")


def test_a_thread_left_spinning_uses_no_cpu_between_invocations(frozen_server):
    lam = frozen_server.lambda_client(frozen_server.admin_keys())
    name = make_spinner(lam)
    first = run(lam, name)
    group = only_container(frozen_server.data_dir)
    wait_frozen(group)
    _, cpu_before = frozen_and_cpu(group)
    time.sleep(IDLE_S)
    frozen, cpu_after = frozen_and_cpu(group)
    assert frozen
    assert cpu_after == cpu_before, f"the frozen container used {cpu_after - cpu_before:.3f} s"

    second = run(lam, name)
    assert second["instance"] == first["instance"], "the same, warm container"
    assert second["spun"] > first["spun"], "the thread runs again once thawed"
    used = second["cpu"] - first["cpu"]
    assert used < 0.5, f"the process used {used:.2f} s of CPU in {IDLE_S} s of idle time"
    wait_frozen(group)


def test_with_freeze_idle_false_the_thread_keeps_running(server_factory):
    server = server_factory(None, "--freeze-idle", "false",
                            "--replenish-policy", "fixed", "--replenish-count", "0")
    lam = server.lambda_client(server.admin_keys())
    name = make_spinner(lam)
    first = run(lam, name)
    group = only_container(server.data_dir)
    _, cpu_before = frozen_and_cpu(group)
    time.sleep(IDLE_S)
    frozen, cpu_after = frozen_and_cpu(group)
    assert not frozen
    assert cpu_after - cpu_before > 0.6, f"only {cpu_after - cpu_before:.3f} s in {IDLE_S} s"
    second = run(lam, name)
    assert second["cpu"] - first["cpu"] > 0.6, (first, second)


def test_a_frozen_container_is_reclaimed_after_the_keep_alive(server_factory):
    server = server_factory(None, "--container-keep-alive", "1",
                            "--replenish-policy", "fixed", "--replenish-count", "0")
    lam = server.lambda_client(server.admin_keys())
    name = make_spinner(lam)
    first = run(lam, name)
    group = only_container(server.data_dir)
    wait_frozen(group)
    deadline = time.monotonic() + 10
    while group.exists():
        assert time.monotonic() < deadline, f"{group} was not reclaimed"
        time.sleep(0.1)
    assert containers(server.data_dir) == []
    later = run(lam, name)
    assert later["instance"] != first["instance"], "a new container served"


def test_a_frozen_container_times_out_and_is_replaced(frozen_server):
    lam = frozen_server.lambda_client(frozen_server.admin_keys())
    name = make_spinner(lam, Timeout=1)
    first = run(lam, name)
    group = only_container(frozen_server.data_dir)
    wait_frozen(group)

    started = time.monotonic()
    r, body = invoke(lam, name, {"sleep": 5}, LogType="Tail")
    assert time.monotonic() - started < 4
    assert r["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Sandbox.Timedout", body
    assert "Status: timeout" in base64.b64decode(r["LogResult"]).decode()
    assert not group.exists(), "the timed-out container was destroyed"

    again = run(lam, name)
    assert again["instance"] != first["instance"]
