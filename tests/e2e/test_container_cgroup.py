"""A function sees its own cgroup, end to end, as root: read-only at /sys/fs/cgroup, rooted at its
container's group (a private cgroup namespace, as Docker gives), with the limit of its MemorySize.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ember_e2e import ROLE

pytestmark = pytest.mark.needs_root  # VMs need root; without it the tests fail (conftest.py)

MEMORY_SIZE = 256


def host_is_v1() -> bool:
    """Whether the host's memory controller is a cgroup v1 hierarchy (as on hybrid hosts), which
    is what Ember uses, and so what its containers see."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[2] == "cgroup" and "memory" in fields[3].split(","):
            return True
    return False


V1 = host_is_v1()
LIMIT_FILE = "/sys/fs/cgroup/memory/memory.limit_in_bytes" if V1 else "/sys/fs/cgroup/memory.max"


def run(lam, name, event):
    r = lam.invoke(FunctionName=name, Payload=json.dumps(event).encode())
    assert "FunctionError" not in r, r["Payload"].read()
    return json.loads(r["Payload"].read())


@pytest.fixture(scope="module")
def sized(admin, python_app_zip):
    admin.create_function(FunctionName="cgroup-256", Runtime="python3.11", Role=ROLE,
                          Handler="app.handler", Timeout=20, MemorySize=MEMORY_SIZE,
                          Code={"ZipFile": python_app_zip})
    return lambda event: run(admin, "cgroup-256", event)


def test_a_function_reports_its_own_memory_limit(sized):
    out = sized({"cgroup": True})
    assert out["memory_limit_bytes"] == MEMORY_SIZE << 20 == 268435456, out
    assert out["memory_size_env"] == "256", out
    files = out["cgroup_files"]
    if V1:
        assert {"memory", "pids"} <= set(files), files
        assert "cpu" in files or "cpu,cpuacct" in files, files
    else:
        assert "memory.max" in files, files


def test_the_cgroup_is_read_only(sized):
    out = sized({"write": LIMIT_FILE})
    assert out["ok"] is False, f"a function wrote its own memory limit: {out}"
    assert sized({"write": "/sys/fs/cgroup/new"})["ok"] is False
    assert sized({"write": "/sys/new"})["ok"] is False
    assert sized({"cgroup": True})["memory_limit_bytes"] == MEMORY_SIZE << 20
    assert sized({"mount": True})["errno"] == 1  # EPERM: the filter still denies mounts


def test_only_its_own_group_is_visible(sized):
    assert sized({"listdir": "/sys"})["entries"] == ["fs"]
    assert sized({"listdir": "/sys/fs"})["entries"] == ["cgroup"]
    # Its group is the root of what it sees: no VM's or host's groups (`ember/...`), no
    # other container's, not even its own (it has none).
    group = "/sys/fs/cgroup/memory" if V1 else "/sys/fs/cgroup"
    entries = sized({"listdir": group})["entries"]
    assert "ember" not in entries, entries
    # Interface files are named `<controller>.<name>`, but for v1's `tasks`, `notify_on_release`
    # and (in a hierarchy's real root only) `release_agent`: anything else is a group.
    groups = [e for e in entries if "." not in e and e not in ("tasks", "notify_on_release")]
    assert groups == [], entries
    own = sized({"read": "/proc/self/cgroup"})["content"]
    for line in own.splitlines():
        if V1 and line.split(":")[1] in ("memory", "pids"):
            assert line.endswith(":/"), own
    if not V1:
        assert own.strip() == "0::/", own
