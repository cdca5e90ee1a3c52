"""Automatic resource sizing, end to end: with `--sizing-mode auto`, a function whose MemorySize
keeps missing the mark gets a better amount in later containers (their cgroup limit,
AWS_LAMBDA_FUNCTION_MEMORY_SIZE and REPORT's Memory Size follow it; the configured MemorySize does
not change); an OOM after a shrink reverts at once and holds off shrinking; `recommend` mode only
reports; `GET`/`PUT /ember/v1/functions/{name}/sizing` and `ember fn sizing` show and change it."""

from __future__ import annotations

import base64
import concurrent.futures
import itertools
import json
import os
import re
import time

import pytest

from ember_e2e import ROLE, send, sign

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="VMs need root")

PY = "python3.11"
THRESHOLD = 3
MB = 1 << 20
MEMORY_SIZE_RE = re.compile(r"REPORT RequestId: \S+\t.*Memory Size: (\d+) MB\t")
THRESHOLD_FIELDS = ("Threshold", "OverProvisionedPercent", "UnderProvisionedPercent",
                    "HeadroomPercent", "MaxSlowdownPercent")
DOCUMENT_FIELDS = {
    "FunctionName", "ConfiguredMemoryMB", "EffectiveMemoryMB", "Mode", "ModeIsDefault",
    "Thresholds", "Overrides", "Condition", "Recommendation", "Evidence", "WindowExecutions",
    "BackoffExecutions", "History", "Executions", "EstimatedGBSecondsSaved",
}
EVIDENCE_FIELDS = {
    "Executions", "MatchingExecutions", "PeakMemoryP50MB", "PeakMemoryHighMB", "PeakMemoryMaxMB",
    "OutOfMemory", "Timeouts", "CpuP90VCpus", "DurationP50Ms",
}


@pytest.fixture(scope="module")
def server(module_server_factory):
    return module_server_factory(None, "--sizing-mode", "auto",
                                 "--sizing-threshold", str(THRESHOLD))


@pytest.fixture(scope="module")
def lam(server):
    return server.lambda_client(server.admin_keys())


def create(lam, name, zip_bytes, memory):
    # A generous timeout: a 128 MB container has 128/1769 of a vCPU to start Python in.
    lam.create_function(FunctionName=name, Runtime=PY, Role=ROLE, Handler="app.handler",
                        Code={"ZipFile": zip_bytes}, MemorySize=memory, Timeout=30)


def invoke(lam, name, event):
    """(response, body, the REPORT line's Memory Size in MB)."""
    r = lam.invoke(FunctionName=name, Payload=json.dumps(event).encode(), LogType="Tail")
    body = r["Payload"].read()
    tail = base64.b64decode(r["LogResult"]).decode()
    m = MEMORY_SIZE_RE.search(tail)
    assert m, tail
    return r, json.loads(body) if body else None, int(m[1])


def container_memory(lam, name) -> int:
    """Runs a small invocation and returns the MB its container got, after checking that the
    cgroup limit, AWS_LAMBDA_FUNCTION_MEMORY_SIZE and REPORT's Memory Size agree."""
    r, body, report_mb = invoke(lam, name, {"cgroup": True})
    assert "FunctionError" not in r, body
    assert body["memory_limit_bytes"] == report_mb * MB, (body, report_mb)
    assert body["memory_size_env"] == str(report_mb), (body, report_mb)
    return report_mb


def sizing_url(server, name):
    return f"{server.endpoint}/ember/v1/functions/{name}/sizing"


def get_sizing(server, name, keys=None):
    url = sizing_url(server, name)
    return send("GET", url, headers=sign("GET", url, b"", keys or server.admin_keys()))


def put_sizing(server, name, body, keys=None):
    url = sizing_url(server, name)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return send("PUT", url, data, headers=sign("PUT", url, data, keys or server.admin_keys()))


def sizing(server, name) -> dict:
    r = get_sizing(server, name)
    assert r.status == 200, r.body
    doc = r.json()
    assert set(doc) == DOCUMENT_FIELDS, doc
    assert set(doc["Thresholds"]) == set(THRESHOLD_FIELDS), doc
    return doc


def sizing_when(server, name, ready, timeout=5.0) -> dict:
    """The sizing document once `ready(doc)` holds (executions and decisions are written to the
    store in the background), or as it is after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        doc = sizing(server, name)
        if ready(doc) or time.monotonic() > deadline:
            return doc
        time.sleep(0.1)


def ember_fn(server, *args):
    return server.run_ember("fn", *args, "--endpoint", server.endpoint,
                            "--data-dir", str(server.data_dir))


def assert_error(r, status, error_type, needle=""):
    assert r.status == status, (r.status, r.body)
    assert r.headers["x-amzn-ErrorType"] == error_type, r.headers
    assert needle in r.json()["message"], r.body


# ---- auto mode: shrink, revert ----------------------------------------------------------------


def idle(lam, name) -> int:
    """An invocation that uses little memory and little CPU for its duration (a sub-millisecond
    one is CPU-bound while it runs, and the policy keeps enough CPU share for it); the MB its
    container had."""
    r, body, report_mb = invoke(lam, name, {"sleep_ms": 100})
    assert "FunctionError" not in r and body == {"slept_ms": 100}, body
    return report_mb


SHRUNK = itertools.count(1)


@pytest.fixture
def shrunk(lam, python_app_zip):
    """A new 1024 MB function that uses little, of this test's own (so no other test's OOM has
    reverted it): `THRESHOLD` idle invocations, then the amounts each container had."""
    name = f"over-{next(SHRUNK)}"
    create(lam, name, python_app_zip, 1024)
    return name, [idle(lam, name) for _ in range(THRESHOLD)]


def test_an_over_provisioned_function_gets_smaller_containers(server, lam, shrunk):
    name, before = shrunk
    assert before == [1024] * THRESHOLD
    # The threshold is met: later containers get the smaller amount.
    assert container_memory(lam, name) == 128
    assert container_memory(lam, name) == 128
    assert lam.get_function_configuration(FunctionName=name)["MemorySize"] == 1024
    doc = sizing_when(server, name,
                      lambda d: d["Executions"] == THRESHOLD + 2 and len(d["History"]) == 1)
    assert doc["FunctionName"] == name
    assert (doc["ConfiguredMemoryMB"], doc["EffectiveMemoryMB"]) == (1024, 128)
    assert (doc["Mode"], doc["ModeIsDefault"]) == ("auto", True)
    assert doc["Thresholds"]["Threshold"] == THRESHOLD
    assert doc["Overrides"] == {}
    assert doc["Condition"] == "OverProvisioned"
    rec = doc["Recommendation"]
    assert {k: rec[k] for k in ("Direction", "FromMB", "ToMB", "Condition", "Applied")} == {
        "Direction": "down", "FromMB": 1024, "ToMB": 128, "Condition": "OverProvisioned",
        "Applied": True,
    }
    assert set(rec["Evidence"]) == EVIDENCE_FIELDS
    assert rec["Evidence"] == doc["Evidence"]
    assert rec["Evidence"]["MatchingExecutions"] == THRESHOLD
    assert 0 < rec["Evidence"]["PeakMemoryMaxMB"] <= 0.4 * 1024
    assert [(h["Direction"], h["FromMB"], h["ToMB"], h["Condition"], h["Applied"])
            for h in doc["History"]] == [("down", 1024, 128, "OverProvisioned", True)]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", doc["History"][0]["Time"])
    assert doc["History"][0]["Evidence"] == rec["Evidence"]
    assert doc["WindowExecutions"] == 2  # the two at 128 MB
    assert doc["Executions"] == THRESHOLD + 2
    assert doc["EstimatedGBSecondsSaved"] > 0

    r = ember_fn(server, "sizing", name)
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first == (f"{name}: configured 1024 MB, containers get 128 MB "
                     "(mode: auto, the server's default)"), r.stdout
    assert "Why: over-provisioned" in r.stdout, r.stdout
    assert "down 1024 → 128 MB  OverProvisioned (applied)" in r.stdout, r.stdout
    r = ember_fn(server, "sizing", name, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["EffectiveMemoryMB"] == 128


def test_an_oom_after_the_shrink_reverts_and_holds_off_shrinking(server, lam, shrunk):
    name, _ = shrunk
    r, body, report_mb = invoke(lam, name, {"alloc_mb": 200})
    assert report_mb == 128
    assert r["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.OutOfMemory", body
    # At once, the next container is back at (at least) the configured amount.
    back = container_memory(lam, name)
    assert back >= 1024
    doc = sizing_when(server, name, lambda d: len(d["History"]) == 2)
    assert doc["EffectiveMemoryMB"] == back
    assert doc["Condition"] == "OutOfMemoryAfterShrink"
    up = doc["History"][-1]
    assert (up["Direction"], up["FromMB"], up["ToMB"], up["Condition"], up["Applied"]) == (
        "up", 128, back, "OutOfMemoryAfterShrink", True)
    assert up["Evidence"]["OutOfMemory"] >= 1
    assert len(doc["History"]) == 2
    assert doc["BackoffExecutions"] > THRESHOLD
    # The backoff holds: idle invocations beyond the threshold do not shrink it again.
    assert [idle(lam, name) for _ in range(THRESHOLD + 1)] == [back] * (THRESHOLD + 1)
    assert container_memory(lam, name) == back
    doc = sizing(server, name)
    assert doc["EffectiveMemoryMB"] == back and len(doc["History"]) == 2
    r = ember_fn(server, "sizing", name)
    assert r.returncode == 0, r.stderr
    assert "Why: out of memory after a shrink" in r.stdout, r.stdout
    assert "No shrink for another" in r.stdout, r.stdout


def test_an_oom_ing_function_is_given_more(server, lam, python_app_zip):
    """After THRESHOLD OOM kills the amount doubles, by 256 MB at least: 128 → 384 MB."""
    create(lam, "oom", python_app_zip, 128)
    for _ in range(THRESHOLD):
        r, body, report_mb = invoke(lam, "oom", {"alloc_mb": 200})
        assert report_mb == 128
        assert r["FunctionError"] == "Unhandled", body
        assert body["errorType"] == "Runtime.OutOfMemory", body
    r, body, report_mb = invoke(lam, "oom", {"alloc_mb": 200})
    assert "FunctionError" not in r, body
    assert body["alloc_mb"] == 200 and report_mb == 384
    assert container_memory(lam, "oom") == 384
    assert lam.get_function_configuration(FunctionName="oom")["MemorySize"] == 128
    doc = sizing_when(server, "oom", lambda d: len(d["History"]) == 1)
    assert (doc["ConfiguredMemoryMB"], doc["EffectiveMemoryMB"]) == (128, 384)
    assert doc["Condition"] == "OutOfMemory"
    assert doc["Recommendation"]["Evidence"]["OutOfMemory"] == THRESHOLD
    assert [(h["Direction"], h["FromMB"], h["ToMB"], h["Condition"], h["Applied"])
            for h in doc["History"]] == [("up", 128, 384, "OutOfMemory", True)]
    assert doc["EstimatedGBSecondsSaved"] == 0
    r = ember_fn(server, "sizing", "oom")
    assert r.returncode == 0, r.stderr
    assert "out of memory" in r.stdout and "up 128 → 384 MB" in r.stdout, r.stdout


def test_an_oom_after_an_oom_driven_growth_grows_again_at_once(server, lam, python_app_zip):
    """The threshold was met at 128 MB; when 384 MB is still too little, one more OOM kill is
    enough to double again."""
    create(lam, "hungry", python_app_zip, 128)
    outcomes = []
    for _ in range(THRESHOLD + 2):
        r, body, report_mb = invoke(lam, "hungry", {"alloc_mb": 450})
        outcomes.append((report_mb, body.get("errorType") if "FunctionError" in r else "ok"))
    assert outcomes == [(128, "Runtime.OutOfMemory")] * THRESHOLD + [
        (384, "Runtime.OutOfMemory"),
        (768, "ok"),
    ], outcomes
    doc = sizing_when(server, "hungry", lambda d: len(d["History"]) == 2)
    assert [(h["FromMB"], h["ToMB"], h["Condition"]) for h in doc["History"]] == [
        (128, 384, "OutOfMemory"),
        (384, 768, "OutOfMemory"),
    ]


def resize_counts(server) -> dict:
    r = send("GET", f"{server.endpoint}/metrics")
    assert r.status == 200, r.body
    return {m[1]: float(m[2]) for m in re.finditer(
        r'^ember_resize_events_total\{direction="(up|down)"\} (\S+)$', r.body.decode(), re.M)}


def test_the_resize_is_counted_in_metrics(server, lam, shrunk):
    name, _ = shrunk
    before = resize_counts(server)
    assert before.get("down", 0) >= 1, before
    # An OOM after the shrink grows it back: one more resize up, counted when it is decided.
    r, body, report_mb = invoke(lam, name, {"alloc_mb": 200})
    assert report_mb == 128 and body["errorType"] == "Runtime.OutOfMemory", body
    sizing_when(server, name, lambda d: len(d["History"]) == 2)
    after = resize_counts(server)
    assert after.get("up", 0) == before.get("up", 0) + 1, (before, after)


# ---- recommend mode ---------------------------------------------------------------------------


def test_recommend_mode_reports_without_applying(server, lam, python_app_zip):
    create(lam, "rec", python_app_zip, 1024)
    r = put_sizing(server, "rec", {"Mode": "recommend"})
    assert r.status == 200, r.body
    doc = r.json()
    assert set(doc) == DOCUMENT_FIELDS
    assert (doc["Mode"], doc["ModeIsDefault"]) == ("recommend", False)
    assert doc["Recommendation"] is None and doc["History"] == []
    # The cgroup check first: a sub-millisecond invocation is CPU-bound while it runs, and only a
    # cold one's CPU is left out of the evidence.
    assert container_memory(lam, "rec") == 1024
    assert [idle(lam, "rec") for _ in range(THRESHOLD + 1)] == [1024] * (THRESHOLD + 1)
    doc = sizing_when(server, "rec", lambda d: len(d["History"]) == 1)
    assert (doc["ConfiguredMemoryMB"], doc["EffectiveMemoryMB"]) == (1024, 1024)
    assert doc["Condition"] == "OverProvisioned"
    rec = doc["Recommendation"]
    assert (rec["Direction"], rec["FromMB"], rec["ToMB"], rec["Applied"]) == (
        "down", 1024, 128, False)
    assert [(h["ToMB"], h["Applied"]) for h in doc["History"]] == [(128, False)]
    assert doc["EstimatedGBSecondsSaved"] == 0
    r = ember_fn(server, "sizing", "rec")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == (
        "rec: configured 1024 MB, containers get 1024 MB (mode: recommend; recommended: 128 MB)"
    ), r.stdout
    assert "OverProvisioned (recommended)" in r.stdout
    # Past the threshold, a new container (the warm one is busy) still gets the configured amount.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        busy = pool.submit(invoke, lam, "rec", {"sleep_ms": 2000})
        time.sleep(0.5)
        r = lam.invoke(FunctionName="rec", Payload=b'{"cgroup": true}', LogType="Tail")
        body = json.loads(r["Payload"].read())
        assert "Init Duration" in base64.b64decode(r["LogResult"]).decode(), "a new container"
        assert body["memory_limit_bytes"] == 1024 * MB and body["memory_size_env"] == "1024", body
        assert busy.result()[2] == 1024


# ---- PUT: validation, overrides, accounts -----------------------------------------------------


@pytest.mark.parametrize("body, needle", [
    ({"Mode": "sometimes"}, "Mode must be one of off, recommend, auto"),
    ({"Mode": None}, "Mode must be one of"),
    ({"Mode": "auto", "Treshold": 3}, "unknown field"),
    ({"Threshold": 0}, "Threshold must be between 1 and 1000"),
    ({"Threshold": -2}, "Could not parse request body"),
    ({"HeadroomPercent": "lots"}, "Could not parse request body"),
    ({"OverProvisionedPercent": 80, "UnderProvisionedPercent": 70},
     "OverProvisionedPercent must be below UnderProvisionedPercent"),
    ({"OverProvisionedPercent": 95}, "the server's default"),
    (b"{not json", "Could not parse request body"),
])
def test_a_bad_put_is_a_400_and_changes_nothing(server, lam, python_app_zip, body, needle):
    if "valid" not in {f["FunctionName"] for f in lam.list_functions()["Functions"]}:
        create(lam, "valid", python_app_zip, 512)
    before = sizing(server, "valid")
    assert_error(put_sizing(server, "valid", body), 400, "InvalidParameterValueException", needle)
    assert sizing(server, "valid") == before


def test_put_sets_and_drops_overrides(server, lam, python_app_zip):
    create(lam, "tuned", python_app_zip, 512)
    r = put_sizing(server, "tuned", {"Threshold": 7, "HeadroomPercent": 50})
    assert r.status == 200, r.body
    doc = r.json()
    assert doc["Overrides"] == {"Threshold": 7, "HeadroomPercent": 50}
    assert doc["Thresholds"] == {"Threshold": 7, "OverProvisionedPercent": 40,
                                 "UnderProvisionedPercent": 90, "HeadroomPercent": 50,
                                 "MaxSlowdownPercent": 10}
    # Thresholds alone leave the mode unset: the function still follows the server's default.
    assert (doc["Mode"], doc["ModeIsDefault"]) == ("auto", True)
    # null drops an override; fields not given keep theirs.
    doc = put_sizing(server, "tuned", {"HeadroomPercent": None, "Mode": "off"}).json()
    assert doc["Overrides"] == {"Threshold": 7}
    assert doc["Thresholds"]["HeadroomPercent"] == 30
    assert (doc["Mode"], doc["ModeIsDefault"]) == ("off", False)
    assert sizing(server, "tuned") == doc
    # The CLI: setting flags PUT, then print the document.
    r = ember_fn(server, "sizing", "tuned", "--mode", "recommend", "--threshold", "4",
                 "--over-percent", "30", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["Mode"] == "recommend"
    assert doc["Overrides"] == {"Threshold": 4, "OverProvisionedPercent": 30}
    # A mode once set is kept by a PUT of thresholds only.
    doc = put_sizing(server, "tuned", {"OverProvisionedPercent": 35}).json()
    assert (doc["Mode"], doc["ModeIsDefault"]) == ("recommend", False)
    doc = put_sizing(server, "tuned", {"OverProvisionedPercent": 30}).json()
    r = ember_fn(server, "sizing", "tuned", "--threshold", "0")
    assert r.returncode != 0
    assert "InvalidParameterValueException" in r.stderr and "Threshold" in r.stderr, r.stderr
    r = ember_fn(server, "sizing", "tuned", "--mode", "sometimes")
    assert r.returncode != 0
    assert sizing(server, "tuned")["Overrides"] == {"Threshold": 4, "OverProvisionedPercent": 30}


def test_another_accounts_function_is_not_found(server, lam, python_app_zip):
    create(lam, "private", python_app_zip, 512)
    other = server.make_account("sizing-other")
    before = sizing(server, "private")
    assert_error(get_sizing(server, "private", other), 404, "ResourceNotFoundException")
    assert_error(put_sizing(server, "private", {"Mode": "off"}, other), 404,
                 "ResourceNotFoundException")
    arn = lam.get_function_configuration(FunctionName="private")["FunctionArn"]
    assert_error(get_sizing(server, arn, other), 404, "ResourceNotFoundException")
    assert sizing(server, "private") == before
    r = send("GET", sizing_url(server, "private"))
    assert r.status == 403, r.body
    assert_error(get_sizing(server, "missing"), 404, "ResourceNotFoundException")
