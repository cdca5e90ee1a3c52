"""A full disk: the data dir on a small tmpfs, filled. A failed code upload removes what it wrote
at once (small creates still fit); with no space at all, reads and invocations keep working,
writes fail with an AWS-shaped `ServiceException` (503) and change nothing, logs that cannot be
stored are counted; when space returns, the same server takes writes again and settles the
Event invocations it could not settle meanwhile."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import time
import zipfile

import botocore.exceptions
import pytest

from ember_e2e import ROLE, download, make_zip, send, sign

pytestmark = [
    pytest.mark.needs_root,  # mounting a tmpfs and VMs need root; without it the tests fail (conftest.py)
    pytest.mark.embedded_only("its subject is the data dir's own disk filling up: SQLite and the file:// blob "
                              "dir live there; on PostgreSQL and S3 neither does"),
]

ECHO_PY = """import time

def handler(event, context):
    time.sleep(event.get("sleep", 0))
    print(f"MARKER {event.get('id')}")
    return {"echo": event}
"""


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MB tmpfs, unmounted at the end (after the servers on it stop: request this fixture
    before `server_factory`)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path, leave: int = 0) -> None:
    """Writes a file at `path` until its file system has at most `leave` bytes free."""
    chunk = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as f:
        try:
            while free_bytes(path.parent) > leave:
                f.write(chunk[: min(len(chunk), free_bytes(path.parent) - leave)])
            if leave == 0:
                while True:
                    f.write(b"\0")
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    assert free_bytes(path.parent) <= leave


def parts(data_dir) -> list[str]:
    tmp = data_dir / "blobs" / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


def assert_storage_full(err: botocore.exceptions.ClientError) -> None:
    """The error of a write the full disk refused: a 503 `ServiceException` saying so."""
    response = err.response
    status = response["ResponseMetadata"]["HTTPStatusCode"]
    assert (response["Error"]["Code"], status) == ("ServiceException", 503), response
    assert response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"] == "ServiceException"
    message = response["Error"]["Message"]
    assert "storage is full" in message and "nothing was changed" in message, message


def metric(server, series: str) -> float:
    text = send("GET", f"{server.endpoint}/metrics").body.decode()
    m = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(m[1]) if m else 0.0


def busy(server, name: str) -> bool:
    """Whether a container of the function is running an invocation (from the fleet API)."""
    url = f"{server.endpoint}/ember/v1/fleet"
    r = send("GET", url, headers=sign("GET", url, b"", server.admin_keys()))
    assert r.status == 200, r.body
    return any(c["FunctionName"] == name and c["State"] == "busy"
               for vm in r.json()["ActivePool"] for c in vm["Containers"])


def invoke_ok(lam, name: str, payload: dict) -> None:
    r = lam.invoke(FunctionName=name, Payload=json.dumps(payload))
    assert r["StatusCode"] == 200 and "FunctionError" not in r
    assert json.loads(r["Payload"].read()) == {"echo": payload}


def test_a_full_disk_keeps_reads_and_invocations_fails_writes_cleanly_and_heals(
        small_disk, server_factory):
    server = server_factory(small_disk / "data")
    data_dir = server.data_dir
    lam = server.lambda_client()
    code = make_zip({"app.py": ECHO_PY})

    def create(name, zip_bytes=code):
        return lam.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                                   Handler="app.handler", Code={"ZipFile": zip_bytes}, Timeout=10)

    create("warm")
    create("cold")  # not invoked before the disk fills: its first container starts on a full disk
    invoke_ok(lam, "warm", {"n": 0})
    pid = server.proc.pid

    # Less room than a big package needs: its upload fails, and removes its temp file at once,
    # so the small create after it still fits.
    big = make_zip({"app.py": ECHO_PY, "blob.bin": os.urandom(4 << 20)}, compression=zipfile.ZIP_STORED)
    fill(small_disk / "ballast-1", leave=1 << 20)
    with pytest.raises(lam.exceptions.ServiceException) as e:
        create("big", big)
    assert_storage_full(e.value)
    assert parts(data_dir) == []
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function(FunctionName="big")
    create("small")
    # An Event invocation that is accepted now and ends once the disk is full: it cannot be
    # settled (marked done with its log) until space returns.
    lam.invoke(FunctionName="warm", InvocationType="Event",
               Payload=json.dumps({"id": "ev-slow", "sleep": 4}))
    deadline = time.monotonic() + 30
    while not busy(server, "warm") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert busy(server, "warm"), "the Event invocation did not start"

    # No room at all.
    fill(small_disk / "ballast-2")
    assert busy(server, "warm"), "the slow Event invocation ended before the disk was full"
    # Event invocations are accepted while the database's write-ahead log has room, then refused.
    accepted, refused = [], None
    for i in range(40):
        try:
            lam.invoke(FunctionName="warm", InvocationType="Event",
                       Payload=json.dumps({"id": f"ev-{i}", "pad": "x" * 200_000}))
            accepted.append(f"ev-{i}")
        except lam.exceptions.ServiceException as err:
            refused = err
            break
    assert refused is not None, "40 Event invocations of 200 KB fitted on a full disk"
    assert_storage_full(refused)
    # Every other write fails the same way, and changes nothing.
    before = {f["FunctionName"]: f for f in lam.list_functions()["Functions"]}
    for write in [
        lambda: create("new"),
        lambda: lam.update_function_code(FunctionName="small", ZipFile=make_zip({"app.py": ECHO_PY + "#2\n"})),
        lambda: lam.update_function_configuration(FunctionName="small", Description="changed"),
        lambda: lam.invoke(FunctionName="warm", InvocationType="Event", Payload=b"{}"),
        lambda: create("big", big),
    ]:
        with pytest.raises(lam.exceptions.ServiceException) as e:
            write()
        assert_storage_full(e.value)
    assert {f["FunctionName"]: f for f in lam.list_functions()["Functions"]} == before
    assert parts(data_dir) == []

    # Reads and invocations keep working: warm, and a cold start.
    got = lam.get_function(FunctionName="small")
    assert download(got["Code"]["Location"]) == code
    assert lam.get_function_configuration(FunctionName="warm")["FunctionName"] == "warm"
    dropped_before = metric(server, 'ember_records_dropped_total{kind="log"}')
    for n in range(1, 6):
        invoke_ok(lam, "warm", {"n": n})
    invoke_ok(lam, "cold", {"n": 0})
    # Their logs could not be stored: dropped, and counted (the batch writer tries within 50 ms).
    deadline = time.monotonic() + 5
    while (metric(server, 'ember_records_dropped_total{kind="log"}') <= dropped_before
           and time.monotonic() < deadline):
        time.sleep(0.1)
    assert metric(server, 'ember_records_dropped_total{kind="log"}') > dropped_before
    # The slow event ran, and waits to be settled.
    deadline = time.monotonic() + 30
    while "cannot settle an event" not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "cannot settle an event" in server.log_text()
    assert server.running and server.proc.pid == pid

    # Space returns: the same server takes every write again.
    (small_disk / "ballast-1").unlink()
    (small_disk / "ballast-2").unlink()
    create("big", big)
    assert download(lam.get_function(FunctionName="big")["Code"]["Location"]) == big
    lam.update_function_configuration(FunctionName="small", Description="changed")
    lam.invoke(FunctionName="warm", InvocationType="Event", Payload=json.dumps({"id": "ev-after"}))
    invoke_ok(lam, "warm", {"n": 9})
    assert parts(data_dir) == []
    assert server.running and server.proc.pid == pid
    # The Event invocations accepted on the full disk ran; they are settled, with their logs, now
    # that the store takes their settlement.
    want = set(accepted) | {"ev-slow", "ev-after"}
    logged: set[str] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        logged = set(re.findall(r"^MARKER (ev-\S+)$", logs_text(server, "warm"), re.M))
        if want <= logged:
            break
        time.sleep(0.2)
    assert want <= logged, sorted(want - logged)


def logs_text(server, name: str) -> str:
    """A function's stored logs (the newest 1000), through the logs API."""
    url = f"{server.endpoint}/ember/v1/functions/{name}/logs?Limit=1000"
    r = send("GET", url, headers=sign("GET", url, b"", server.admin_keys()))
    assert r.status == 200, r.body
    return "\n".join(e["Message"] for e in r.json()["Events"])
