"""The scheduling policy (`ember serve --scheduling`): the server's threads, its VMs and the
functions in them run SCHED_BATCH by default, and the kernel's default with `other`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ember_e2e import ROLE

pytestmark = pytest.mark.needs_root  # VMs need root; without it the tests fail (conftest.py)


def stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat from its 3rd field on: what follows the parenthesised command name."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2:].split()


def policy_of(pid: int) -> int:
    return int(stat_fields(pid)[41 - 3])


def thread_policies(pid: int) -> set[int]:
    return {policy_of(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def function_policy(server, python_app_zip) -> int:
    lam = server.lambda_client(server.admin_keys())
    lam.create_function(FunctionName="sched", Runtime="python3.11", Role=ROLE,
                        Handler="app.handler", Code={"ZipFile": python_app_zip})
    r = lam.invoke(FunctionName="sched", Payload=json.dumps({"sched": True}).encode())
    assert "FunctionError" not in r
    return json.loads(r["Payload"].read())["policy"]


@pytest.mark.parametrize("flag, expected", [
    ((), os.SCHED_BATCH),
    (("--scheduling", "batch"), os.SCHED_BATCH),
    (("--scheduling", "other"), os.SCHED_OTHER),
])
def test_the_server_its_vms_and_functions_share_the_policy(server_factory, python_app_zip,
                                                           flag, expected):
    server = server_factory(None, *flag)
    assert function_policy(server, python_app_zip) == expected
    assert thread_policies(server.proc.pid) == {expected}
    agents = [pid for pid in _processes_named("ember-agent") if _under(pid, server.proc.pid)]
    assert agents, "no VM agent found under the server"
    for agent in agents:
        assert thread_policies(agent) == {expected}


def _processes_named(comm: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and Path(f"/proc/{entry}/comm").read_text().strip() == comm:
                found.append(int(entry))
        except FileNotFoundError:  # gone meanwhile
            pass
    return found


def _under(pid: int, ancestor: int) -> bool:
    """Whether `ancestor` is `pid`'s parent, grandparent, ..."""
    while pid > 1:
        pid = int(stat_fields(pid)[4 - 3])  # the parent's pid
        if pid == ancestor:
            return True
    return False
