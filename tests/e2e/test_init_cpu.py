"""CPU for init: a new execution environment's init (the runtime's start and the function's
import) runs with the VM's CPUs, not its memory-proportional share, so a 128 MB Python function's
Init Duration is about what it is at 1024 MB; the invocation itself runs at its share (128/1769
of a vCPU), as a warm one does. Timings are compared as ratios against the quota's own floor,
with margins a loaded 2-core machine keeps inside."""

from __future__ import annotations

import base64
import json
import re

import pytest

from ember_e2e import ROLE

pytestmark = pytest.mark.needs_root  # VMs need root; without it the tests fail (conftest.py)

PY = "python3.11"
# CPU time the function uses at import and in its handler.
BURN_MS = 150
# The quota of 128 MB: 128/1769 of a vCPU.
SHARE_128 = 128 / 1769
REPORT_RE = re.compile(
    r"REPORT RequestId: [0-9a-f-]+\tDuration: (?P<duration>[\d.]+) ms\t.*?"
    r"(Init Duration: (?P<init>[\d.]+) ms\t)?$",
    re.M,
)


@pytest.fixture(scope="module")
def lam(server):
    return server.lambda_client(server.make_account("initcpu"))


def report(r) -> dict:
    tail = base64.b64decode(r["LogResult"]).decode()
    found = REPORT_RE.search(tail)
    assert found, tail
    return {"duration": float(found["duration"]),
            "init": float(found["init"]) if found["init"] else None}


def invoke(lam, name, event):
    r = lam.invoke(FunctionName=name, Payload=json.dumps(event).encode(), LogType="Tail")
    body = json.loads(r["Payload"].read())
    assert "FunctionError" not in r, body
    return report(r)


def test_the_init_runs_with_the_vms_cpu_and_the_handler_at_its_share(lam, python_app_zip):
    inits, warm = {}, {}
    for memory in (1024, 128):
        name = f"burn-{memory}"
        lam.create_function(
            FunctionName=name, Runtime=PY, Role=ROLE, Handler="app.handler",
            Code={"ZipFile": python_app_zip}, MemorySize=memory, Timeout=30,
            Environment={"Variables": {"INIT_BURN_MS": str(BURN_MS)}},
        )
        cold = invoke(lam, name, {"noop": True})
        assert cold["init"] is not None, cold
        inits[memory] = cold["init"]
        # The same work in the handler, in the now warm container.
        warm[memory] = invoke(lam, name, {"burn_ms": BURN_MS})
        assert warm[memory]["init"] is None, warm[memory]
    # At its share the init's CPU work alone would take BURN_MS / SHARE_128 (2.1 s); with the
    # VM's CPU it takes about what it takes at 1024 MB.
    floor_128 = BURN_MS / SHARE_128
    assert inits[128] < floor_128 / 2, inits
    assert inits[128] < 2.5 * inits[1024] + 100, inits
    # In the handler, the share holds: no load makes the quota's floor shorter.
    assert warm[128]["duration"] > 0.8 * floor_128, warm
    assert warm[128]["duration"] > 2.5 * warm[1024]["duration"], warm
