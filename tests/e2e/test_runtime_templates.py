"""Runtime templates, end to end, as root: a Python container forked from its VM's template
behaves exactly as one started afresh. Two servers, one with `--runtime-templates true` and one
with `false`, run the same probe function; what its runtime sees is compared."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import pytest

from ember_e2e import ROLE, kill_templates_and_check_they_return, make_zip, vm_processes

pytestmark = pytest.mark.needs_root  # VMs need root; without it the tests fail (conftest.py)

RUNTIME = "python3.11"

PROBE = r'''
import json, os, random, resource, sys


def _read(path, mode="r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError as e:
        error = "error: %s" % e.strerror
        return error.encode() if "b" in mode else error


def _fds():
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink("/proc/self/fd/" + name)
        except OSError:
            continue  # the listing's own descriptor, gone already
        out[name] = re.sub(r"\[\d+\]", "[N]", target)
    return out


import re


def handler(event, context):
    if event.get("log"):
        import logging
        logging.getLogger().warning(event["log"])
        return {"forked": "ctypes" in sys.modules}
    if event.get("alloc_mb"):
        chunks = []
        for _ in range(event["alloc_mb"]):
            chunks.append(bytearray(1 << 20))
        return {"allocated": len(chunks)}
    status = {}
    for line in _read("/proc/self/status").splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
                   "NoNewPrivs", "Seccomp", "Seccomp_filters"):
            status[key] = value.strip()
    if os.path.exists("/sys/fs/cgroup/memory.max"):
        memory_limit = _read("/sys/fs/cgroup/memory.max").strip()
    else:
        memory_limit = _read("/sys/fs/cgroup/memory/memory.limit_in_bytes").strip()
    return {
        "environ": dict(os.environ),
        "proc_environ": sorted(x for x in _read("/proc/self/environ", "rb").decode().split("\0") if x),
        "cmdline": _read("/proc/self/cmdline", "rb").decode().split("\0"),
        "argv": sys.argv,
        "orig_argv": getattr(sys, "orig_argv", None),
        "path": sys.path,
        "main_keys": sorted(vars(sys.modules["__main__"])),
        "cwd": os.getcwd(),
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pid1_comm": _read("/proc/1/comm").strip(),
        "session_leader": os.getsid(0) == os.getpid(),
        "status": status,
        "fds": _fds(),
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "umask": os.umask(0o022),
        "memory_limit": memory_limit,
        "cgroup": _read("/proc/self/cgroup"),
        "random": random.random(),
        "forked": "ctypes" in sys.modules,
    }
'''

PROBE_ZIP = make_zip({"app.py": PROBE})


@pytest.fixture(scope="module")
def servers(module_server_factory):
    """`{True: a server with runtime templates, False: one without}`."""
    return {
        True: module_server_factory(None, "--runtime-templates", "true"),
        False: module_server_factory(None, "--runtime-templates", "false"),
    }


def lam(server):
    return server.lambda_client(server.admin_keys())


def create(server, name, memory=128, runtime=RUNTIME, **extra):
    lam(server).create_function(
        FunctionName=name, Runtime=runtime, Role=ROLE, Handler="app.handler",
        Code={"ZipFile": PROBE_ZIP}, MemorySize=memory, Timeout=30, **extra)


def invoke(server, name, event=None, logs=None):
    """Invokes `name`; returns (payload, REPORT's max memory used in MB, function error); the
    log tail is appended to the list `logs` when given."""
    r = lam(server).invoke(FunctionName=name, Payload=json.dumps(event or {}).encode(),
                           LogType="Tail")
    payload = json.loads(r["Payload"].read())
    tail = base64.b64decode(r.get("LogResult", "")).decode(errors="replace")
    used = re.search(r"Max Memory Used: (\d+) MB", tail)
    if logs is not None:
        logs.append(tail)
    return payload, int(used.group(1)) if used else None, r.get("FunctionError")


def probe(server, name, **extra):
    create(server, name, **extra)
    payload, used, error = invoke(server, name)
    assert error is None, payload
    return payload, used


def forked_probe(server, name, **extra):
    """Probes a new function's first container on the templates server, waiting for the VM's
    template to be ready (the first container of a VM starts the ordinary way and asks for
    it): retried with new functions until one is forked."""
    deadline = time.monotonic() + 60
    attempt = 0
    while True:
        payload, used = probe(server, f"{name}-{attempt}".replace(".", "-"), **extra)
        if payload["forked"]:
            return payload, used, f"{name}-{attempt}"
        assert time.monotonic() < deadline, "no container was forked from a template in 60 s"
        attempt += 1
        time.sleep(0.5)


# Per container or per invocation by design, in Lambda as in a fresh start.
PER_CONTAINER = {"AWS_LAMBDA_LOG_STREAM_NAME", "_X_AMZN_TRACE_ID", "AWS_LAMBDA_FUNCTION_NAME",
                 "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN",
                 # Per server (the two compared run on two): its API on its VMs' gateway.
                 "AWS_ENDPOINT_URL_LAMBDA"}


def comparable(p):
    env = {k: v for k, v in p["environ"].items() if k not in PER_CONTAINER}
    proc_env = [x for x in p["proc_environ"] if x.split("=", 1)[0] not in PER_CONTAINER]
    return {
        "environ": env, "proc_environ": proc_env, "cmdline": p["cmdline"], "argv": p["argv"],
        "orig_argv": p["orig_argv"], "path": p["path"], "main_keys": p["main_keys"],
        "cwd": p["cwd"], "pids": p["pids"], "pid": p["pid"], "ppid": p["ppid"],
        "pid1_comm": p["pid1_comm"], "session_leader": p["session_leader"],
        "status": p["status"], "fds": p["fds"], "nofile": p["nofile"], "umask": p["umask"],
        "memory_limit": p["memory_limit"],
    }


@pytest.mark.parametrize("runtime", ["python3.9", "python3.11", "python3.13"])
def test_a_forked_runtime_sees_what_a_fresh_one_sees(servers, runtime):
    fresh, _ = probe(servers[False], f"same-fresh-{runtime}".replace(".", "-"), runtime=runtime)
    assert not fresh["forked"], "a server without templates forked a runtime"
    forked, _, _ = forked_probe(servers[True], f"same-forked-{runtime}", runtime=runtime)
    # The environment, both as Python sees it and as /proc shows it; the command line; sys.argv
    # and sys.path; the /proc view (the container's own processes only, PID 1 its init, the
    # runtime its child); uid/gid/groups with no capabilities, no_new_privs and the seccomp
    # filter; the open descriptors; limits, umask, the cgroup and its memory limit.
    a, b = comparable(fresh), comparable(forked)
    # Both have credentials of their own (test_session_credentials.py checks what they allow).
    assert fresh["environ"]["AWS_SESSION_TOKEN"] != forked["environ"]["AWS_SESSION_TOKEN"]
    assert forked["environ"]["AWS_ACCESS_KEY_ID"].startswith("ASIA")
    for p in (fresh, forked):
        assert re.fullmatch(r"http://10\.213\.\d+\.1:\d+", p["environ"]["AWS_ENDPOINT_URL_LAMBDA"])
    for key in a:
        assert a[key] == b[key], f"{key} differs:\nfresh:  {a[key]}\nforked: {b[key]}"
    assert forked["ppid"] == 1 and forked["pids"] == [1, forked["pid"]], forked["pids"]
    assert forked["status"]["CapEff"] == "0000000000000000"
    assert forked["status"]["CapBnd"] == "0000000000000000"
    assert forked["status"]["NoNewPrivs"] == "1"
    assert forked["status"]["Seccomp"] == "2"
    # Only what the runtime client itself opened beyond stdio: no descriptor of the template's.
    assert all(forked["fds"][fd] in ("/dev/null", "pipe:[N]") for fd in "012"), forked["fds"]
    assert all(t.startswith("socket:") for fd, t in forked["fds"].items() if fd not in "012")


def test_forked_containers_do_not_share_random_state(servers):
    one, _, _ = forked_probe(servers[True], "random-a")
    two, _, _ = forked_probe(servers[True], "random-b")
    assert one["random"] != two["random"]


def test_the_memory_limit_holds_and_the_templates_memory_is_not_counted(servers):
    _, fresh_used = probe(servers[False], "memory-fresh")
    forked, forked_used, name = forked_probe(servers[True], "memory-forked")
    assert forked["memory_limit"] == str(128 << 20)
    # The interpreter's pages the template holds are not charged to the function.
    assert fresh_used is not None and forked_used is not None
    assert forked_used < fresh_used, (forked_used, fresh_used)
    # Beyond MemorySize: the container's cgroup kills it, as in a fresh start.
    payload, _, error = invoke(servers[True], name, {"alloc_mb": 200})
    assert error is not None and payload["errorType"] == "Runtime.OutOfMemory", payload


def test_a_function_that_changes_the_interpreters_start_starts_afresh(servers):
    # Wait for the template, then a function setting PYTHONHASHSEED is not forked: the template
    # started with another.
    forked_probe(servers[True], "plain")
    payload, _ = probe(servers[True], "hashseed",
                       Environment={"Variables": {"PYTHONHASHSEED": "0"}})
    assert not payload["forked"]
    assert payload["environ"]["PYTHONHASHSEED"] == "0"
    # The agent says why, in the server's log (EMBER_AGENT_LOG), naming its VM.
    reasons = [line for line in servers[True].log_text().splitlines()
               if "starts the ordinary way" in line and "PYTHONHASHSEED" in line]
    assert reasons and "vm_id=" in reasons[-1], servers[True].log_text()[-2000:]


def template_pids(server) -> dict[int, str]:
    """The server's runtime templates (interpreters run with `-c`), each with its VM."""
    return vm_processes(server, lambda argv: len(argv) > 2 and argv[1] == b"-c"
                        and argv[0].startswith(b"/var/lang/bin/python3"))


def test_a_dead_template_is_started_again_by_its_vm(servers):
    """A template killed from outside (out of memory, an operator) is started again by its VM
    as soon as it dies, without waiting for a container to find it dead; a container created
    meanwhile starts the ordinary way, and works."""
    kill_templates_and_check_they_return(servers[True], template_pids, probe, forked_probe)


def test_templates_die_with_their_vms(server_factory):
    server = server_factory(None, "--runtime-templates", "true")
    forked_probe(server, "dies-with-vm")
    pids = template_pids(server)
    assert pids, "no template process found"
    assert server.stop() == 0
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        assert time.monotonic() < deadline, f"templates {pids} outlived their server"
        time.sleep(0.05)


def test_no_template_without_the_flag(servers):
    server = servers[False]
    for i in range(3):
        payload, _ = probe(server, f"never-forked-{i}")
        assert not payload["forked"]
    assert template_pids(server) == {}


def test_the_runtime_client_reads_the_functions_environment(servers):
    """awslambdaric reads its log format when imported: a forked runtime reads the function's,
    not the template's."""
    def logged(server, name):
        create(server, name, Environment={"Variables": {"AWS_LAMBDA_LOG_FORMAT": "JSON"}})
        logs = []
        payload, _, error = invoke(server, name, {"log": "hello from the handler"}, logs)
        assert error is None, payload
        line = next(l for l in logs[0].splitlines() if "hello from the handler" in l)
        return payload, json.loads(line[line.index("{"):])

    forked_probe(servers[True], "log-wait")
    fresh, fresh_record = logged(servers[False], "log-json-fresh")
    forked, forked_record = logged(servers[True], "log-json-forked")
    assert not fresh["forked"] and forked["forked"]
    assert forked_record["message"] == fresh_record["message"] == "hello from the handler"
    assert sorted(forked_record) == sorted(fresh_record)


def test_a_function_shadowing_a_module_the_template_holds_starts_afresh(servers):
    """The template has imported `ast` (for its own use): a fresh start would import the
    function's `ast.py` from /var/task, so a function that ships one is not forked."""
    server = servers[True]
    forked_probe(server, "shadow-wait")
    code = make_zip({
        "app.py": "import sys\n"
                  "def handler(event, context):\n"
                  "    import ast\n"
                  "    return {'ast': ast.__file__, 'mine': getattr(ast, 'MINE', False),\n"
                  "            'forked': 'ctypes' in sys.modules}\n",
        "ast.py": "MINE = True\n",
    })
    lam(server).create_function(FunctionName="shadows-ast", Runtime=RUNTIME, Role=ROLE,
                                Handler="app.handler", Code={"ZipFile": code}, Timeout=30)
    payload, _, error = invoke(server, "shadows-ast")
    assert error is None, payload
    assert payload == {"ast": "/var/task/ast.py", "mine": True, "forked": False}, payload


def test_the_templates_memory_is_published_and_within_its_budget(servers):
    from ember_e2e import send
    forked_probe(servers[True], "rss")
    body = send("GET", f"{servers[True].endpoint}/metrics").body.decode()
    line = next(l for l in body.splitlines()
                if l.startswith(f'ember_runtime_template_rss_mb{{runtime="{RUNTIME}"}}'))
    rss_mb = float(line.split()[-1])
    assert 5 <= rss_mb <= 30, line
