"""Durability: functions survive SIGTERM and SIGKILL restarts, Event invocations and their logs
survive a SIGKILL mid-stream, the data dir is locked against a second server, its credentials
stay private and stable, and unreferenced code is collected."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import stat
import subprocess
import threading
import time
import zipfile

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from backend import store_scalar
from ember_e2e import (
    REGION,
    ROLE,
    clean_env,
    code_sha256,
    download,
    handler_zip,
    make_zip,
    send,
    sha256_hex,
    sign,
)


def populate(lam) -> dict[str, bytes]:
    """Functions of every shape: env, concurrency, updated code, updated config. Returns the
    code each should have."""
    codes = {}
    specs = {
        "plain": {},
        "with-env": {"Environment": {"Variables": {"DB_URL": "postgres://x", "FLAG": "on"}},
                     "MemorySize": 1024, "Timeout": 300, "Description": "env and sizes"},
        "with-concurrency": {},
        "updated-code": {},
        "updated-config": {},
    }
    for name, extra in specs.items():
        codes[name] = handler_zip(f"durable {name}")
        lam.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE, Handler="app.handler",
                            Code={"ZipFile": codes[name]}, **extra)
    lam.put_function_concurrency(FunctionName="with-concurrency", ReservedConcurrentExecutions=11)
    codes["updated-code"] = make_zip({"app.py": "def handler(e, c):\n    return 'v2'\n"})
    lam.update_function_code(FunctionName="updated-code", ZipFile=codes["updated-code"])
    lam.update_function_configuration(FunctionName="updated-config", Environment={"Variables": {"NEW": "1"}},
                                      Handler="app.other")
    return codes


def snapshot(lam) -> dict[str, tuple]:
    """Every function's configuration, concurrency and code bytes."""
    out = {}
    for page in lam.get_paginator("list_functions").paginate():
        for f in page["Functions"]:
            got = lam.get_function(FunctionName=f["FunctionName"])
            assert got["Configuration"] == f
            out[f["FunctionName"]] = (got["Configuration"], got.get("Concurrency"),
                                      download(got["Code"]["Location"]))
    return out


def blob_files(data_dir) -> set[str]:
    root = data_dir / "blobs" / "sha256"
    return {p.name for p in root.rglob("*") if p.is_file()}


def assert_intact(before: dict, after: dict, codes: dict[str, bytes]) -> None:
    assert sorted(after) == sorted(before)
    for name, (config, concurrency, code) in before.items():
        assert after[name][0] == config, name
        assert after[name][1] == concurrency, name
        assert after[name][2] == code == codes[name], name
        assert config["CodeSha256"] == code_sha256(code)


def test_functions_survive_a_graceful_restart(server_factory):
    first = server_factory()
    lam = first.lambda_client()
    codes = populate(lam)
    before = snapshot(lam)
    credentials = first.credentials_path.read_text()
    assert first.stop() == 0

    second = server_factory(first.data_dir)
    lam = second.lambda_client(first.admin_keys())
    after = snapshot(lam)
    assert_intact(before, after, codes)
    assert after["with-concurrency"][1] == {"ReservedConcurrentExecutions": 11}
    assert after["with-env"][0]["Environment"] == {"Variables": {"DB_URL": "postgres://x", "FLAG": "on"}}
    # The admin account is the same one: same keys, and no new admin was made.
    assert second.credentials_path.read_text() == credentials
    assert stat.S_IMODE(second.credentials_path.stat().st_mode) == 0o600
    assert "Created the admin account" not in second.log_text()
    # The restarted server is fully usable: revision guards hold across the restart.
    rev = before["updated-config"][0]["RevisionId"]
    c = lam.update_function_configuration(FunctionName="updated-config", Timeout=7, RevisionId=rev)
    assert c["Timeout"] == 7


def test_functions_survive_sigkill(server_factory):
    first = server_factory()
    lam = first.lambda_client()
    account = first.make_account("survivor")
    lam_b = first.lambda_client(account)
    codes = populate(lam)
    codes_b = {"b-fn": handler_zip("account b")}
    lam_b.create_function(FunctionName="b-fn", Runtime="python3.11", Role=ROLE, Handler="app.handler",
                          Code={"ZipFile": codes_b["b-fn"]})
    before, before_b = snapshot(lam), snapshot(lam_b)
    first.kill()

    second = server_factory(first.data_dir)
    assert_intact(before, snapshot(second.lambda_client(first.admin_keys())), codes)
    assert_intact(before_b, snapshot(second.lambda_client(account)), codes_b)
    # Killed again straight after a write, then restarted once more.
    second.lambda_client().update_function_configuration(FunctionName="plain", Description="last write")
    second.kill()
    third = server_factory(first.data_dir)
    assert third.lambda_client().get_function_configuration(FunctionName="plain")["Description"] == "last write"


def start_create_function(server, name: str, zip_bytes: bytes):
    """Sends a signed CreateFunction of `zip_bytes` in a thread; returns (thread, outcome), where
    outcome gets "response" (the HTTP status) or "error" (what the connection raised) once the
    request ends."""
    body = json.dumps({"FunctionName": name, "Runtime": "python3.11", "Role": ROLE,
                       "Handler": "app.handler",
                       "Code": {"ZipFile": base64.b64encode(zip_bytes).decode()}}).encode()
    path = "/2015-03-31/functions"
    headers = sign("POST", server.endpoint + path, body, server.admin_keys())
    outcome: dict[str, object] = {}

    def run():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        try:
            conn.request("POST", path, body, headers)
            outcome["sent"] = len(body)
            outcome["response"] = conn.getresponse().status
        except (OSError, http.client.HTTPException) as e:
            outcome["error"] = e
        finally:
            conn.close()

    t = threading.Thread(target=run)
    t.start()
    return t, outcome


@pytest.mark.embedded_only("its subject is the file:// blob dir's temp files; an S3 PUT is atomic, and a "
                            "package the kill orphaned in a bucket stays for the hour's grace by design (README)")
def test_sigkill_during_an_upload_leaves_no_half_written_package(server_factory):
    """The server is SIGKILLed while it writes an uploaded package (its temp file is there and
    the client has had no answer); after a restart the function does not exist and neither the
    temp file nor the blob is left."""
    big = make_zip({"app.py": "def handler(e, c): pass\n", "blob.bin": os.urandom(30 * 1024 * 1024)},
                   compression=zipfile.ZIP_STORED)
    server = server_factory()
    data_dir = server.data_dir
    server.lambda_client().create_function(
        FunctionName="steady", Runtime="python3.11", Role=ROLE, Handler="app.handler",
        Code={"ZipFile": handler_zip("steady")})
    tmp = data_dir / "blobs" / "tmp"
    caught = None
    completed = []  # uploads the kill came too late for
    for attempt in range(5):
        name = f"in-flight-{attempt}"
        if attempt:
            server = server_factory(data_dir)
        t, outcome = start_create_function(server, name, big)
        # The package is written (to a temp file, then renamed) only once the whole body is in.
        deadline = time.monotonic() + 60
        while t.is_alive() and time.monotonic() < deadline and not any(tmp.glob("*.part")):
            time.sleep(0.001)
        server.kill()
        t.join(60)
        assert not t.is_alive()
        left = list(tmp.glob("*.part"))
        if left:
            caught = (name, outcome, left)
            break
        completed.append((name, outcome))
    assert caught, f"the kill never landed while a package was being written: {completed}"
    name, outcome, left = caught
    print(f"killed mid-write of {name} on attempt {len(completed) + 1}: {outcome}, left {left}")
    # The kill landed mid-write: the whole body had been sent (the server writes the package only
    # after reading it), no answer came back, and the temp file was left behind.
    assert outcome.get("sent"), outcome
    assert "response" not in outcome and isinstance(outcome.get("error"), (
        ConnectionError, http.client.RemoteDisconnected)), outcome

    second = server_factory(data_dir)
    lam = second.lambda_client()
    names = {f["FunctionName"] for f in lam.list_functions()["Functions"]}
    assert name not in names, "the upload the kill cut off was not committed"
    assert names == {"steady"} | {n for n, _ in completed}, names
    for n, _ in completed:  # the uploads that finished before their kill are whole
        got = lam.get_function(FunctionName=n)
        assert got["Configuration"]["CodeSha256"] == code_sha256(big)
        assert download(got["Code"]["Location"]) == big
    # No temp file or unreferenced blob is left behind.
    live = {sha256_hex(download(lam.get_function(FunctionName=n)["Code"]["Location"])) for n in names}
    assert blob_files(data_dir) == live
    assert not tmp.exists() or not any(tmp.iterdir())


def test_credentials_file_is_private(server_factory):
    s = server_factory()
    mode = stat.S_IMODE(s.credentials_path.stat().st_mode)
    assert mode == 0o600, oct(mode)
    text = s.credentials_path.read_text()
    assert "[default]" in text
    keys = s.admin_keys()
    assert s.lambda_client(keys).list_functions()["Functions"] == []


def test_lost_credentials_file_is_reissued_on_restart(server_factory):
    first = server_factory()
    old_keys = first.admin_keys()
    first.lambda_client(old_keys).create_function(
        FunctionName="owned", Runtime="python3.11", Role=ROLE, Handler="app.handler",
        Code={"ZipFile": handler_zip("owned")})
    assert first.stop() == 0
    first.credentials_path.unlink()
    second = server_factory(first.data_dir)
    new_keys = second.admin_keys()
    assert new_keys["AccessKeyId"] != old_keys["AccessKeyId"]
    assert stat.S_IMODE(second.credentials_path.stat().st_mode) == 0o600
    # The new keys belong to the same admin account, and the old ones still work.
    for keys in (new_keys, old_keys):
        names = [f["FunctionName"] for f in second.lambda_client(keys).list_functions()["Functions"]]
        assert names == ["owned"]


def test_second_server_on_the_same_data_dir_refuses_to_start(server_factory, ember_bin):
    first = server_factory()
    lam = first.lambda_client()
    lam.create_function(FunctionName="kept", Runtime="python3.11", Role=ROLE, Handler="app.handler",
                        Code={"ZipFile": handler_zip("kept")})
    credentials = first.credentials_path.read_text()
    started = time.monotonic()
    r = subprocess.run(
        [str(ember_bin), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(first.data_dir)],
        capture_output=True, text=True, timeout=10, env=clean_env(),
    )
    assert time.monotonic() - started < 5
    assert r.returncode != 0
    # One line that names the data dir and the pid of the server holding it (README).
    assert r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert str(first.data_dir) in r.stderr, r.stderr
    assert f"(pid {first.proc.pid})" in r.stderr, r.stderr
    # The first server is untouched and still serving where it said it would; the credentials
    # were not rewritten.
    assert first.running
    assert first.endpoint_path.read_text().strip() == first.endpoint
    assert [f["FunctionName"] for f in lam.list_functions()["Functions"]] == ["kept"]
    assert first.credentials_path.read_text() == credentials


@pytest.mark.embedded_only("file:// deletes an unreferenced package at once; in a bucket it stays for an hour "
                            "after its last upload (another host may name it), by design (README); "
                            "crates/store's S3 tests cover that collection")
def test_unreferenced_blobs_are_collected(server_factory):
    s = server_factory()
    lam = s.lambda_client()
    za, zb, zc = handler_zip("A"), handler_zip("B"), handler_zip("C")

    def create(name, z):
        lam.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE, Handler="app.handler",
                            Code={"ZipFile": z})

    assert blob_files(s.data_dir) == set()
    create("f1", za)
    create("f2", zb)
    create("f3", za)  # shares f1's package
    assert blob_files(s.data_dir) == {sha256_hex(za), sha256_hex(zb)}
    lam.update_function_code(FunctionName="f1", ZipFile=zc)  # A is still f3's
    assert blob_files(s.data_dir) == {sha256_hex(za), sha256_hex(zb), sha256_hex(zc)}
    lam.delete_function(FunctionName="f3")  # now A is nobody's
    assert blob_files(s.data_dir) == {sha256_hex(zb), sha256_hex(zc)}
    lam.update_function_code(FunctionName="f2", ZipFile=zc)
    assert blob_files(s.data_dir) == {sha256_hex(zc)}
    # Rejected writes leave nothing behind: a bad package, a stale revision, a name conflict.
    with pytest.raises(lam.exceptions.InvalidParameterValueException):
        lam.update_function_code(FunctionName="f2", ZipFile=make_zip({"../evil": "x"}))
    stale = lam.get_function_configuration(FunctionName="f2")["RevisionId"]
    lam.update_function_configuration(FunctionName="f2", Description="new revision")
    with pytest.raises(lam.exceptions.PreconditionFailedException):
        lam.update_function_code(FunctionName="f2", ZipFile=handler_zip("D"), RevisionId=stale)
    with pytest.raises(lam.exceptions.ResourceConflictException):
        create("f2", handler_zip("E"))
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.update_function_code(FunctionName="nobody", ZipFile=handler_zip("F"))
    assert blob_files(s.data_dir) == {sha256_hex(zc)}
    # Other accounts' references count too: same bytes in another account survive a delete here.
    other = s.lambda_client(s.make_account("other"))
    other.create_function(FunctionName="g", Runtime="python3.11", Role=ROLE, Handler="app.handler",
                          Code={"ZipFile": zc})
    lam.delete_function(FunctionName="f1")
    lam.delete_function(FunctionName="f2")
    assert blob_files(s.data_dir) == {sha256_hex(zc)}
    assert download(other.get_function(FunctionName="g")["Code"]["Location"]) == zc
    other.delete_function(FunctionName="g")
    assert blob_files(s.data_dir) == set()
    # And the collection holds across a restart.
    assert s.stop() == 0
    s2 = server_factory(s.data_dir)
    assert blob_files(s2.data_dir) == set()


MARKER_PY = """import time

def handler(event, context):
    print(f"MARKER {event['id']}")
    time.sleep(0.3)
    return event['id']
"""


def stored_logs(server, name: str) -> list[dict]:
    """Every stored invocation log of a function, oldest first, through the logs API."""
    events, after = [], 0
    while True:
        url = f"{server.endpoint}/ember/v1/functions/{name}/logs?After={after}&Limit=1000"
        r = send("GET", url, headers=sign("GET", url, b"", server.admin_keys()))
        assert r.status == 200, r.body
        page = r.json()
        events += page["Events"]
        if not page["Events"]:
            return events
        after = page["NextAfter"]


def queued_events(data_dir) -> int:
    """Event invocations still in the server's queue (read from its database, read-only)."""
    return int(store_scalar(data_dir, "SELECT COUNT(*) FROM event_invocations"))


def markers(logs: list[dict]) -> dict[str, list[str]]:
    """The request ids of the stored runs of each event id its function printed."""
    runs: dict[str, list[str]] = {}
    for log in logs:
        for event_id in re.findall(r"^MARKER (ev-\d{3})$", log["Message"], re.M):
            runs.setdefault(event_id, []).append(log["RequestId"])
    return runs


def test_sigkill_during_a_stream_of_events_loses_no_log(server_factory):
    """A stream of 200 Event invocations; the server is SIGKILLed while they stream in and run,
    and restarted on the same data dir, and the stream goes on: every accepted event runs to
    completion, and the store holds its log (and its measurements) exactly once, under the
    request id its 202 carried.

    Exactly once, not at least once, because of what is stored: an event leaves the queue in the
    same transaction that stores its run's log. A run the kill cut short was not settled and
    left no log; it runs again after the restart (at-least-once delivery: the function may have
    run twice), and the store holds the log of the run that settled it. An Invoke the kill cut
    off (its 202 never came back) may or may not have been accepted: its log is there at most
    once. An Invoke refused at connect (the server down) was never sent: it is sent again."""
    first = server_factory()
    lam = first.lambda_client()
    # A timeout no busy machine reaches: a run that timed out would be retried (a second log
    # under the same request id), which is right, but not what this test is about.
    lam.create_function(FunctionName="marker", Runtime="python3.11", Role=ROLE,
                        Handler="app.handler", Code={"ZipFile": make_zip({"app.py": MARKER_PY})},
                        Timeout=120)

    def client(server):
        # No retries: a retried Invoke could have been accepted by the attempt the kill cut off.
        keys = first.admin_keys()
        return boto3.client(
            "lambda", endpoint_url=server.endpoint, region_name=REGION,
            aws_access_key_id=keys["AccessKeyId"], aws_secret_access_key=keys["SecretAccessKey"],
            config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=60))

    target = {"client": client(first)}
    restarted = threading.Event()
    accepted: dict[str, str] = {}  # event id -> the RequestId its 202 carried
    unanswered: list[str] = []  # cut off by the kill: accepted or not
    resent = []

    def stream():
        for i in range(200):
            if i == 180:
                # The last events go to the restarted server: the kill cannot come after the
                # stream, however slowly the events run on a busy machine.
                if not restarted.wait(180):
                    return
            event_id = f"ev-{i:03}"
            while True:
                try:
                    r = target["client"].invoke(FunctionName="marker", InvocationType="Event",
                                                Payload=json.dumps({"id": event_id}))
                    assert r["StatusCode"] == 202
                    accepted[event_id] = r["ResponseMetadata"]["RequestId"]
                except botocore.exceptions.EndpointConnectionError:
                    # Never sent: send it again to the restarted server.
                    resent.append(event_id)
                    if not restarted.wait(60) or len(resent) > 1000:
                        return
                    continue
                except Exception:  # the server died under it
                    unanswered.append(event_id)
                break
            time.sleep(0.01)

    sender = threading.Thread(target=stream, daemon=True)
    sender.start()
    # Kill once some events have run, while others are queued or running.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(markers(stored_logs(first, "marker"))) < 30:
        time.sleep(0.05)
    accepted_at_kill = len(accepted)
    completed_at_kill = len(markers(stored_logs(first, "marker")))
    first.kill()
    # The kill landed mid-stream: some accepted events had completed (their logs stored), others
    # were still queued or running (not settled), and the stream was still sending.
    pending_at_kill = queued_events(first.data_dir)
    assert completed_at_kill >= 30, completed_at_kill
    assert pending_at_kill > 0, "every accepted event had completed before the kill"
    assert sender.is_alive(), "the stream had ended before the kill"

    second = server_factory(first.data_dir)
    target["client"] = client(second)
    restarted.set()
    # Events that were running when the server died are released and run again.
    log = re.sub(r"\x1b\[[0-9;]*m", "", second.log_text())
    assert re.search(r"re-queued Event invocations[^\n]*released=[1-9]", log), \
        "no event was in flight at the kill:\n" + log
    sender.join(120)
    assert not sender.is_alive()
    assert len(accepted) + len(unanswered) == 200
    print(f"accepted before the kill: {accepted_at_kill}, in all: {len(accepted)}; "
          f"sent again after the restart: {len(resent)}, unanswered: {len(unanswered)}")
    assert accepted_at_kill < len(accepted), "the kill came after the stream"

    # Wait for the queue to drain.
    deadline = time.monotonic() + 180
    while queued_events(first.data_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert queued_events(first.data_dir) == 0
    runs = markers(stored_logs(second, "marker"))

    missing = sorted(set(accepted) - set(runs))
    assert not missing, f"accepted events without a log: {missing}"
    for event_id, request_id in accepted.items():
        assert runs[event_id] == [request_id], (event_id, runs[event_id])
    for event_id in unanswered:
        assert len(runs.get(event_id, [])) <= 1, (event_id, runs[event_id])
    assert set(runs) <= set(accepted) | set(unanswered)
    # Each settled run's measurements were stored with its log: as many executions as logs.
    url = f"{second.endpoint}/ember/v1/functions/marker/sizing"
    r = send("GET", url, headers=sign("GET", url, b"", second.admin_keys()))
    assert r.status == 200, r.body
    assert r.json()["Executions"] == sum(len(ids) for ids in runs.values())
