"""The fleet, end to end: the warming pool a server keeps, the active pool of per-account VMs, the
replenish count N following a burst of requests and falling back, `GET /ember/v1/fleet` and
`ember fleet`, and a VM whose agent is killed mid-invocation being replaced."""

from __future__ import annotations

import concurrent.futures
import datetime
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from ember_e2e import FLEET_PATH, REGION, ROLE, clean_env, fleet, fleet_response, send, sign, wait_fleet

pytestmark = pytest.mark.needs_root  # VMs need root; without it the tests fail (conftest.py)

PY = "python3.11"


# ---- helpers --------------------------------------------------------------------------------


def booted_warming(f: dict) -> list[dict]:
    return [vm for vm in f["WarmingPool"] if not vm["Booting"]]


def create(lam, name, zip_bytes, **extra):
    lam.create_function(FunctionName=name, Runtime=PY, Role=ROLE, Handler="app.handler",
                        Code={"ZipFile": zip_bytes}, **extra)


def invoke(lam, name, event):
    r = lam.invoke(FunctionName=name, Payload=json.dumps(event).encode())
    body = r["Payload"].read()
    assert "FunctionError" not in r, body
    return r, json.loads(body)


def no_retry_client(server, keys):
    """A boto3 Lambda client that makes exactly one attempt (botocore's `max_attempts` counts
    retries, so the fixture's clients retry a 5xx once)."""
    return boto3.client(
        "lambda", endpoint_url=server.endpoint, region_name=REGION,
        aws_access_key_id=keys["AccessKeyId"], aws_secret_access_key=keys["SecretAccessKey"],
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=60),
    )


def start_kind(r) -> str:
    return r["ResponseMetadata"]["HTTPHeaders"]["x-ember-start"]


def parse_since(text: str) -> datetime.datetime:
    assert text.endswith("Z") and len(text) == len("2024-05-01T12:34:56.789Z"), text
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc)


def ember_fleet(server, *args, **kwargs):
    return server.run_ember("fleet", *args, "--endpoint", server.endpoint,
                            "--data-dir", str(server.data_dir), **kwargs)


# ---- GET /ember/v1/fleet ----------------------------------------------------------------------


def test_a_fresh_server_keeps_one_warming_vm(server_factory):
    server = server_factory()
    started = datetime.datetime.now(datetime.timezone.utc)
    f = wait_fleet(server, lambda f: len(booted_warming(f)) == 1, what="one booted warming VM")
    assert len(f["WarmingPool"]) == 1, f
    assert f["ActivePool"] == [] and f["Retiring"] == [], f
    vm = f["WarmingPool"][0]
    assert set(vm) >= {"VmId", "MemoryMB", "VCpus", "Runtime", "Since", "Booting"}, vm
    assert vm["MemoryMB"] == 2048 and vm["VCpus"] == 2, vm
    since = parse_since(vm["Since"])
    assert started - datetime.timedelta(seconds=30) < since < started + datetime.timedelta(seconds=30)
    assert f["ReplenishCount"] == 1, f
    assert f["ReplenishReason"], f
    assert f["RequestRatePerSecond"] == 0, f
    assert f["VmBootSeconds"] > 0 and f["IdleVmSeconds"] >= 0, f
    host = f["HostCapacity"]
    assert host["MemoryMB"] >= 1024 and host["VCpus"] >= 1, host
    assert host["ReservedMemoryMB"] == 2048, host
    assert host["FreeMemoryMB"] == host["MemoryMB"] - host["ReservedMemoryMB"], host


def test_only_the_admin_may_view_the_fleet(server_factory):
    server = server_factory()
    other = server.make_account("fleet-nosy")
    resp = fleet_response(server, other)
    assert resp.status == 403, (resp.status, resp.body)
    assert resp.headers.get("x-amzn-ErrorType", "").split(":")[0] == "AccessDeniedException"
    assert "admin" in resp.json()["message"], resp.body
    unsigned = send("GET", server.endpoint + FLEET_PATH)
    assert unsigned.status == 403, (unsigned.status, unsigned.body)
    assert unsigned.headers.get("x-amzn-ErrorType"), dict(unsigned.headers)


def test_each_account_gets_a_vm_of_its_own_from_the_warming_pool(server_factory, python_app_zip):
    server = server_factory()
    accounts = [server.make_account(f"fleet-{x}") for x in "ab"]
    clients = [server.lambda_client(a) for a in accounts]
    for lam in clients:
        create(lam, "fleet-fn", python_app_zip, Timeout=20)
    for account, lam in zip(accounts, clients):
        # A booted warming VM is waiting: taking it is a cold container, not a cold VM.
        wait_fleet(server, lambda f: booted_warming(f), what="a booted warming VM")
        r, out = invoke(lam, "fleet-fn", {"echo": account["AccountId"]})
        assert out["echo"] == account["AccountId"]
        assert start_kind(r) == "cold_container", r["ResponseMetadata"]["HTTPHeaders"]
        r, _ = invoke(lam, "fleet-fn", {"echo": 2})
        assert start_kind(r) == "warm"

    f = wait_fleet(server, lambda f: len(f["WarmingPool"]) >= 1 and len(f["ActivePool"]) == 2,
                   what="two active VMs and a refilled warming pool")
    by_account = {vm["AccountId"]: vm for vm in f["ActivePool"]}
    assert set(by_account) == {a["AccountId"] for a in accounts}, f
    assert len({vm["VmId"] for vm in f["ActivePool"]}) == 2, "two accounts never share a VM"
    warming_ids = {vm["VmId"] for vm in f["WarmingPool"]}
    assert not warming_ids & set(vm["VmId"] for vm in f["ActivePool"]), f
    for vm in f["ActivePool"]:
        assert vm["MemoryMB"] == 2048 and vm["VCpus"] == 2, vm
        assert [c["FunctionName"] for c in vm["Containers"]] == ["fleet-fn"], vm
        container = vm["Containers"][0]
        assert container["MemoryMB"] == 128 and container["State"] == "idle", vm
        assert container["ContainerId"], vm
        # A Python runtime's template (on by default) takes its memory from the containers'.
        assert 0 <= vm["TemplateMemoryMB"] <= 30, vm
        assert vm["FreeMemoryMB"] == 2048 - 128 - vm["TemplateMemoryMB"], vm
        parse_since(vm["Since"])
    assert f["RequestRatePerSecond"] > 0, f
    assert PY in f["RuntimeRequestRates"], f
    host = f["HostCapacity"]
    assert host["ReservedMemoryMB"] >= 3 * 2048, host


def test_n_rises_with_a_burst_and_falls_back(server_factory, python_app_zip):
    server = server_factory(None, "--rate-window", "0.5", "--warm-ttl", "1",
                            "--replenish-max", "6")
    lam = server.lambda_client()
    create(lam, "burst", python_app_zip, Timeout=20)
    invoke(lam, "burst", {"noop": True})

    threads = 16
    total = 200
    clients = [server.lambda_client() for _ in range(threads)]
    counter = iter(range(total))
    lock = threading.Lock()
    failures: list[str] = []

    def worker(lam):
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            try:
                r = lam.invoke(FunctionName="burst", Payload=b'{"noop": true}')
                r["Payload"].read()
                if "FunctionError" in r:
                    failures.append("function error")
            except botocore.exceptions.ClientError as e:
                # A 429 while the host makes room is allowed; other failures are not.
                if e.response["Error"]["Code"] != "TooManyRequestsException":
                    failures.append(str(e))

    began = time.monotonic()
    counts = []
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(worker, c) for c in clients]
        while not all(fu.done() for fu in futures):
            counts.append(fleet(server)["ReplenishCount"])
            time.sleep(0.05)
        for fu in futures:
            fu.result()
    took = time.monotonic() - began
    counts.append(fleet(server)["ReplenishCount"])
    assert not failures, failures[:5]
    assert max(counts) > 1, (
        f"N never rose during {total} invocations in {took:.1f}s: {counts}; "
        f"{json.dumps(fleet(server), indent=1)}")
    assert max(counts) <= 6, counts

    f = wait_fleet(
        server,
        lambda f: f["ReplenishCount"] == 1 and "fell below" in f["ReplenishReason"]
        and len(booted_warming(f)) <= 1,
        timeout=15, what="N back to 1 and the extra warming VMs retired")
    assert len(f["WarmingPool"]) <= 2, f  # one kept, and at most one more still booting


# ---- ember fleet ------------------------------------------------------------------------------


def test_ember_fleet_shows_the_pools(server_factory, python_app_zip, tmp_path):
    server = server_factory()
    lam = server.lambda_client()
    create(lam, "cli-fleet", python_app_zip, Timeout=20)
    invoke(lam, "cli-fleet", {"noop": True})
    f = wait_fleet(server, lambda f: f["ActivePool"] and booted_warming(f),
                   what="an active and a warming VM")

    r = ember_fleet(server, "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert {vm["VmId"] for vm in got["ActivePool"]} == {vm["VmId"] for vm in f["ActivePool"]}
    assert got["WarmingPool"], got

    r = ember_fleet(server)
    assert r.returncode == 0, r.stderr
    active = f["ActivePool"][0]
    assert "WARMING POOL" in r.stdout and "ACTIVE POOL" in r.stdout, r.stdout
    assert f"N = {f['ReplenishCount']}" in r.stdout, r.stdout
    line = next(l for l in r.stdout.splitlines() if active["VmId"] in l)
    assert active["AccountId"] in line and "1 busy / 0 idle" not in line, line
    assert "0 busy / 1 idle" in line, line
    for vm in got["WarmingPool"]:
        assert vm["VmId"] in r.stdout, r.stdout

    # Another account is refused with the server's message and exit code 1.
    nosy = server.make_account("fleet-cli-nosy")
    empty = tmp_path / "no-credentials"
    empty.mkdir()
    r = server.run_ember("fleet", "--endpoint", server.endpoint, "--data-dir", str(empty),
                         env={"AWS_ACCESS_KEY_ID": nosy["AccessKeyId"],
                              "AWS_SECRET_ACCESS_KEY": nosy["SecretAccessKey"]})
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "AccessDeniedException" in r.stderr and "admin" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_ember_fleet_watch_redraws(server_factory):
    server = server_factory()
    watch = subprocess.Popen(
        [str(server.ember_bin), "fleet", "--watch", "--interval", "0.2",
         "--endpoint", server.endpoint, "--data-dir", str(server.data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
    )
    out_lines: list[str] = []

    def pump():
        for line in watch.stdout:
            out_lines.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        # Two frames drawn (the second starts a redraw), with a deadline.
        deadline = time.monotonic() + 30
        while sum("WARMING POOL" in line for line in out_lines) < 2:
            assert watch.poll() is None, f"ember fleet --watch exited: {''.join(out_lines)}"
            assert time.monotonic() < deadline, f"no redraw: {''.join(out_lines)}"
            time.sleep(0.05)
    finally:
        watch.send_signal(signal.SIGINT)
        try:
            watch.wait(timeout=5)
        except subprocess.TimeoutExpired:
            watch.kill()
            watch.wait()
        reader.join(5)
        err = watch.stderr.read()
    out = "".join(out_lines)
    assert watch.returncode == 0, err
    frames = out.split("\n\n" + "requests ")
    assert out.count("WARMING POOL") >= 2, out
    assert len(frames) >= 2, out
    assert "\x1b[" not in out, "no screen clearing when stdout is not a terminal"


# ---- a VM failing -----------------------------------------------------------------------------


def cgroup_prefix(data_dir: Path) -> str:
    return "ember/" + hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]


def agent_pid(server, vm_id: str) -> int:
    """The pid (on the host) of the agent of VM `vm_id`: PID 1 of the VM's PID namespace, in
    the VM's cgroup."""
    marker = f"/{cgroup_prefix(server.data_dir)}/{vm_id}"
    in_vm = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cgroups = (proc / "cgroup").read_text()
            status = (proc / "status").read_text()
        except OSError:
            continue
        if any(line.split(":", 2)[-1] == marker or line.split(":", 2)[-1].startswith(marker + "/")
               for line in cgroups.splitlines()):
            fields = dict(l.split(":\t", 1) for l in status.splitlines() if ":\t" in l)
            in_vm[int(proc.name)] = fields
    # The agent's parent is the server, outside the VM; it is PID 1 of the VM's PID namespace,
    # one level below the host's (a container's processes are deeper).
    agents = [pid for pid, fields in in_vm.items()
              if int(fields.get("PPid", "0")) not in in_vm
              and fields.get("NSpid", "").split()[1:] == ["1"]]
    assert len(agents) == 1, f"agent of {vm_id} not found: {in_vm} {agents}"
    cmdline = Path(f"/proc/{agents[0]}/cmdline").read_bytes().split(b"\0")[0]
    assert cmdline.endswith(b"ember-agent"), cmdline
    return agents[0]


def test_a_killed_agent_fails_only_its_invocation_and_the_vm_is_replaced(server_factory,
                                                                         python_app_zip):
    server = server_factory()
    slow_account, quick_account = (server.make_account(f"fleet-{x}") for x in ("slow", "quick"))
    slow, quick = no_retry_client(server, slow_account), no_retry_client(server, quick_account)
    create(slow, "slow", python_app_zip, Timeout=20)
    create(quick, "quick", python_app_zip, Timeout=20)
    invoke(slow, "slow", {"noop": True})
    invoke(quick, "quick", {"noop": True})
    f = fleet(server)
    (doomed,) = [vm for vm in f["ActivePool"] if vm["AccountId"] == slow_account["AccountId"]]
    pid = agent_pid(server, doomed["VmId"])

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow_call = pool.submit(slow.invoke, FunctionName="slow", Payload=b'{"sleep_ms": 5000}')
        wait_fleet(server, lambda f: any(
            c["State"] == "busy" for vm in f["ActivePool"] if vm["VmId"] == doomed["VmId"]
            for c in vm["Containers"]), what="the slow invocation to run")
        quick_call = pool.submit(invoke, quick, "quick", {"sleep_ms": 2000})
        # The other account's invocation is running too when the agent is killed.
        wait_fleet(server, lambda f: any(
            c["State"] == "busy" for vm in f["ActivePool"]
            if vm["AccountId"] == quick_account["AccountId"] for c in vm["Containers"]),
            what="the quick invocation to run")
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(botocore.exceptions.ClientError) as excinfo:
            r = slow_call.result(timeout=30)
            raise AssertionError(f"the slow invocation survived its VM: {r['Payload'].read()}")
        _, out = quick_call.result(timeout=30)
    assert out == {"slept_ms": 2000}, "the other account's invocation is untouched"
    error = excinfo.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] >= 500, error
    assert error["Error"]["Code"] == "ServiceException", error
    assert "VM" in error["Error"]["Message"], error

    r, out = invoke(slow, "slow", {"echo": "again"})
    assert out["echo"] == "again"
    f = wait_fleet(server, lambda f: doomed["VmId"] not in json.dumps(f),
                   what=f"{doomed['VmId']} to leave the fleet")
    (replacement,) = [vm for vm in f["ActivePool"]
                      if vm["AccountId"] == slow_account["AccountId"]]
    assert replacement["VmId"] != doomed["VmId"]
    assert [vm for vm in f["ActivePool"] if vm["AccountId"] == quick_account["AccountId"]]


def test_waiting_for_capacity_is_bounded_then_throttled(server_factory, python_app_zip):
    """With the host full, an execution waits up to --placement-wait for room, in a queue of at
    most --max-waiting; one more is throttled at once. Both get TooManyRequestsException."""
    server = server_factory(None, "--capacity-mb", "2048", "--max-waiting", "1",
                            "--placement-wait", "2", "--replenish-policy", "fixed",
                            "--replenish-count", "0")
    lam = no_retry_client(server, server.admin_keys())
    for name in ("hog", "late-1", "late-2"):
        create(lam, name, python_app_zip, MemorySize=2048, Timeout=20)
    hog = concurrent.futures.ThreadPoolExecutor(max_workers=3)
    holding = hog.submit(invoke, lam, "hog", {"sleep_ms": 4000})
    wait_fleet(server, lambda f: any(c["State"] == "busy" for vm in f["ActivePool"]
                                     for c in vm["Containers"]), what="the hog to run")

    def timed(name):
        started = time.monotonic()
        try:
            lam.invoke(FunctionName=name, Payload=b"{}")
            return "ran", time.monotonic() - started
        except botocore.exceptions.ClientError as err:
            return err.response["Error"]["Code"], time.monotonic() - started

    waiting = hog.submit(timed, "late-1")
    wait_fleet(server, lambda f: sum(a["Waiting"] for a in f["Accounts"]) == 1,
               what="late-1 to wait in the queue")
    code, took = timed("late-2")
    assert (code, took < 1.0) == ("TooManyRequestsException", True), (code, took)
    code, took = waiting.result(timeout=10)
    assert code == "TooManyRequestsException" and 1.5 < took < 4.0, (code, took)
    assert holding.result(timeout=10)[1]["slept_ms"] == 4000
    hog.shutdown()
