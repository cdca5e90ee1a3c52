"""Invoke, end to end: unmodified runtime clients (awslambdaric for Python, the `lambda_runtime`
crate for Rust) run in Ember's containers, driven by boto3, the AWS CLI and the ember CLI, and
every way an invocation can end comes back as Lambda reports it."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import queue
import re
import subprocess
import threading
import time

import pytest

from ember_e2e import ROLE, clean_env, client_error, fleet, make_zip, wait_fleet

PY = "python3.11"
REPORT_RE = re.compile(
    r"REPORT RequestId: (?P<id>[0-9a-f-]+)\tDuration: (?P<duration>[\d.]+) ms\t"
    r"Billed Duration: (?P<billed>\d+) ms\tMemory Size: (?P<memory>\d+) MB\t"
    r"Max Memory Used: (?P<used>\d+) MB\t(Init Duration: (?P<init>[\d.]+) ms\t)?"
)


# Quick retries of failed Event invocations, so the retry test takes seconds, not minutes: the
# first retry comes RETRY_DELAY_S after the first attempt ends, the second twice that after the
# second ends (README: `--event-retry-delay`).
RETRY_DELAY_S = 0.5

# The payload limits of Lambda (and Ember's README): 6 MB for RequestResponse, 256 KB for Event.
SYNC_LIMIT = 6 * 1024 * 1024
EVENT_LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def server(module_server_factory):
    return module_server_factory(None, "--event-retry-delay", str(RETRY_DELAY_S))


@pytest.fixture(scope="module")
def lam(server):
    return server.lambda_client(server.admin_keys())


def create(lam, name, zip_bytes, runtime=PY, handler="app.handler", **extra):
    return lam.create_function(
        FunctionName=name, Runtime=runtime, Role=ROLE, Handler=handler,
        Code={"ZipFile": zip_bytes}, **extra,
    )


def invoke(lam, name, event, **kwargs):
    r = lam.invoke(FunctionName=name, Payload=json.dumps(event).encode(), **kwargs)
    body = r["Payload"].read()
    return r, json.loads(body) if body else None


def ember_cli(server, *args):
    """The ember CLI, as the server's admin."""
    return server.run_ember(*args, "--endpoint", server.endpoint, "--data-dir", str(server.data_dir))


def tail_of(r) -> str:
    return base64.b64decode(r["LogResult"]).decode()


@pytest.fixture(scope="module")
def py_fn(lam, python_app_zip):
    # Its tests check what an invocation does, not how fast: at 128 MB the function has 128/1769
    # of a vCPU, in a VM it shares with the module's other functions, and a 6 MB payload's
    # parse alone has taken over 3 s on a busy machine (timeouts are test_timeout_…'s subject).
    create(lam, "py-app", python_app_zip, Timeout=30)
    return "py-app"


@pytest.fixture(scope="module")
def rust_fn(lam, rust_hello_zip):
    create(lam, "rust-hello", rust_hello_zip, runtime="provided.al2023", handler="bootstrap",
           Timeout=3)
    return "rust-hello"


# ---- the happy path ---------------------------------------------------------------------------


def test_python_function_runs_under_awslambdaric(lam, py_fn):
    r, body = invoke(lam, py_fn, {"echo": [1, "two"]}, LogType="Tail")
    assert r["StatusCode"] == 200
    assert "FunctionError" not in r
    assert r["ExecutedVersion"] == "$LATEST"
    assert body["echo"] == [1, "two"]
    assert body["memory"] == 128
    assert body["function"] == py_fn
    assert body["request_id"] == r["ResponseMetadata"]["RequestId"]
    log = tail_of(r)
    assert f"START RequestId: {body['request_id']} Version: $LATEST" in log
    assert f"END RequestId: {body['request_id']}" in log
    m = REPORT_RE.search(log)
    assert m, log
    assert m["memory"] == "128"
    assert 0 < int(m["used"]) <= 128
    assert int(m["billed"]) >= float(m["duration"])


def test_rust_lambda_runtime_function_runs_unmodified(lam, rust_fn):
    r, body = invoke(lam, rust_fn, {"echo": {"nested": True}}, LogType="Tail")
    assert r["StatusCode"] == 200 and "FunctionError" not in r
    assert body == {
        "echo": {"nested": True},
        "memory": 128,
        "function": rust_fn,
        "request_id": r["ResponseMetadata"]["RequestId"],
    }
    assert REPORT_RE.search(tail_of(r))


def test_cold_start_reports_init_duration_and_warm_start_reuses_the_container(lam, python_app_zip):
    create(lam, "py-warm", python_app_zip)
    first, _ = invoke(lam, "py-warm", {}, LogType="Tail")
    second, _ = invoke(lam, "py-warm", {}, LogType="Tail")
    cold = REPORT_RE.search(tail_of(first))
    warm = REPORT_RE.search(tail_of(second))
    assert cold["init"] is not None, "the first invocation waited for the runtime's init"
    assert warm["init"] is None, "the second one ran in the warm container"


def test_init_time_does_not_count_toward_the_timeout(lam, python_app_zip):
    # Lambda's Init phase has its own limit (10 s): a 1 s function whose init takes 2.5 s runs.
    create(lam, "py-slow-init", python_app_zip, Timeout=1,
           Environment={"Variables": {"INIT_SLEEP_MS": "2500"}})
    r, body = invoke(lam, "py-slow-init", {"remaining": True}, LogType="Tail")
    assert "FunctionError" not in r, body
    report = REPORT_RE.search(tail_of(r))
    assert float(report["init"]) >= 2500, report["init"]
    # The runtime's deadline was moved on by the init too: it still has most of its second.
    assert 500 < body["remaining_ms"] <= 1000, body


def test_configuration_change_gets_a_fresh_environment(lam, python_app_zip):
    create(lam, "py-reconf", python_app_zip, Environment={"Variables": {"COLOR": "red"}})
    _, env = invoke(lam, "py-reconf", {"env": True})
    assert env["COLOR"] == "red"
    lam.update_function_configuration(
        FunctionName="py-reconf", Environment={"Variables": {"COLOR": "blue"}}, MemorySize=256
    )
    _, env = invoke(lam, "py-reconf", {"env": True})
    assert env["COLOR"] == "blue"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"


def test_container_environment_is_lambdas(lam, py_fn):
    _, env = invoke(lam, py_fn, {"env": True})
    assert env["_HANDLER"] == "app.handler"
    assert env["LAMBDA_TASK_ROOT"] == "/var/task"
    assert env["LAMBDA_RUNTIME_DIR"] == "/var/runtime"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == py_fn
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "128"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == f"/aws/lambda/{py_fn}"
    assert env["AWS_LAMBDA_LOG_STREAM_NAME"]
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["TZ"] == ":UTC"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", env["AWS_LAMBDA_RUNTIME_API"])
    assert "PATH" in env and env["LD_LIBRARY_PATH"].startswith("/var/lang/lib")
    assert "AWS_LAMBDA_MAX_CONCURRENCY" not in env


# ---- failures, as Lambda reports them ---------------------------------------------------------


def test_function_error_is_unhandled_with_the_error_document(lam, python_app_zip, rust_fn):
    # A function of its own, so that the container the error ran in is the only one it has.
    create(lam, "py-fail", python_app_zip)
    r, body = invoke(lam, "py-fail", {"fail": "boom"})
    assert r["StatusCode"] == 200
    assert r["FunctionError"] == "Unhandled"
    assert body["errorType"] == "HelloFailure"
    assert body["errorMessage"] == "boom"
    r, body = invoke(lam, rust_fn, {"fail": "boom"})
    assert r["FunctionError"] == "Unhandled"
    assert "boom" in json.dumps(body)
    # The environment survives a function error: the next invocation is warm.
    r, _ = invoke(lam, "py-fail", {}, LogType="Tail")
    assert REPORT_RE.search(tail_of(r))["init"] is None


def test_timeout_kills_the_environment(lam, python_app_zip):
    create(lam, "py-timeout", python_app_zip, Timeout=1)
    invoke(lam, "py-timeout", {})  # warm: the time below has no cold start in it
    started = time.monotonic()
    r, body = invoke(lam, "py-timeout", {"sleep_ms": 5000}, LogType="Tail")
    assert time.monotonic() - started < 5, "answered before the function would have returned"
    assert r["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in body["errorMessage"]
    assert "Status: timeout" in tail_of(r)
    # A fresh environment serves the next invocation.
    r, body = invoke(lam, "py-timeout", {"echo": 1}, LogType="Tail")
    assert body["echo"] == 1
    assert REPORT_RE.search(tail_of(r))["init"] is not None


def test_out_of_memory_is_reported_as_such(lam, python_app_zip, rust_hello_zip):
    # A generous timeout: at 128 MB the container has 128/1769 of a vCPU to touch 400 MB in,
    # which a busy machine can stretch past the default 3 s (then it is a timeout, not an OOM).
    create(lam, "py-oom", python_app_zip, MemorySize=128, Timeout=60)
    create(lam, "rust-oom", rust_hello_zip, runtime="provided.al2023", handler="bootstrap",
           MemorySize=128, Timeout=60)
    r, body = invoke(lam, "py-oom", {"alloc_mb": 400}, LogType="Tail")
    assert r["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.OutOfMemory", body
    assert REPORT_RE.search(tail_of(r))["used"] == "128"
    r, body = invoke(lam, "rust-oom", {"alloc_mb": 400})
    assert body["errorType"] == "Runtime.OutOfMemory", body
    r, body = invoke(lam, "py-oom", {"alloc_mb": 16})
    assert "FunctionError" not in r and body["alloc_mb"] == 16


def test_exit_before_responding_is_an_exit_error(lam, py_fn, rust_fn):
    for name in (py_fn, rust_fn):
        r, body = invoke(lam, name, {"exit": 3})
        assert r["FunctionError"] == "Unhandled"
        assert body["errorType"] == "Runtime.ExitError"
        assert "exit status 3" in body["errorMessage"]


def test_init_failure_has_the_runtimes_error_type(lam, python_app_zip):
    create(lam, "py-bad-import", python_app_zip, handler="bad_import.handler")
    r, body = invoke(lam, "py-bad-import", {})
    assert r["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ImportModuleError", body
    create(lam, "py-no-module", python_app_zip, handler="nothere.handler")
    r, body = invoke(lam, "py-no-module", {})
    assert body["errorType"] == "Runtime.ImportModuleError", body


def test_client_context_reaches_the_function(lam, py_fn):
    context = {"custom": {"user": "ada"}, "env": {"platform": "e2e"}, "client": {}}
    encoded = base64.b64encode(json.dumps(context).encode()).decode()
    _, body = invoke(lam, py_fn, {"client_context": True}, ClientContext=encoded)
    assert body == {"custom": {"user": "ada"}, "env": {"platform": "e2e"}}
    _, body = invoke(lam, py_fn, {"client_context": True})
    assert body == {"custom": None, "env": None}
    with pytest.raises(lam.exceptions.InvalidParameterValueException):
        invoke(lam, py_fn, {}, ClientContext=base64.b64encode(b"[1, 2]").decode())


def test_invalid_json_payload_is_refused(lam, py_fn):
    with pytest.raises(lam.exceptions.InvalidRequestContentException):
        lam.invoke(FunctionName=py_fn, Payload=b"{not json")


# ---- concurrency --------------------------------------------------------------------------------


# Reports which execution environment ran it: an id made at init, the id of the first init that
# wrote a file in /tmp (its own if /tmp is the container's own), its PID namespace, and when the
# handler ran (the host's clock, which containers share).
IDENTITY_PY = """import os, time, uuid

INSTANCE = str(uuid.uuid4())
MARK = "/tmp/ember-e2e-container-id"
try:
    with open(MARK, "x") as f:
        f.write(INSTANCE)
except FileExistsError:
    pass


def handler(event, context):
    started = time.time()
    time.sleep(event.get("sleep_ms", 0) / 1000)
    with open(MARK) as f:
        tmp_id = f.read()
    return {"instance": INSTANCE, "tmp_id": tmp_id, "pid_ns": os.readlink("/proc/self/ns/pid"),
            "started": started, "ended": time.time()}
"""


def containers_of(f: dict, name: str, state: str | None = None) -> list[dict]:
    """The containers of function `name` in a fleet view (in `state`, if given)."""
    return [c for vm in f["ActivePool"] for c in vm["Containers"]
            if c["FunctionName"] == name and state in (None, c["State"])]


def test_concurrent_invocations_get_their_own_containers(server, lam):
    name, n = "py-parallel", 4
    create(lam, name, make_zip({"app.py": IDENTITY_PY}), MemorySize=256, Timeout=30)
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        # Warm n containers first, so that the n invocations below all start at once (cold starts
        # are seconds apart on a busy machine): overlapping invocations need containers of their
        # own, so rounds of n concurrent ones end with n.
        deadline = time.monotonic() + 120
        while len(containers_of(fleet(server), name)) < n:
            assert time.monotonic() < deadline, f"never {n} containers: {fleet(server)}"
            list(pool.map(lambda _: invoke(lam, name, {"sleep_ms": 1000}), range(n)))
        calls = [pool.submit(invoke, lam, name, {"sleep_ms": 3000}) for _ in range(n)]
        wait_fleet(server, lambda f: len(containers_of(f, name, "busy")) == n, timeout=30,
                   what=f"{n} busy containers of {name}")
        results = [call.result(timeout=60) for call in calls]
    bodies = [body for r, body in results if "FunctionError" not in r]
    assert len(bodies) == n, results
    # They ran at the same time: every one started before any one ended.
    assert max(b["started"] for b in bodies) < min(b["ended"] for b in bodies), bodies
    # Each in a container of its own: its own process (id made at init), its own /tmp, its own
    # PID namespace.
    assert len({b["instance"] for b in bodies}) == n, bodies
    assert all(b["tmp_id"] == b["instance"] for b in bodies), bodies
    assert len({b["pid_ns"] for b in bodies}) == n, bodies


def test_reserved_concurrency_throttles_with_429(server, lam, python_app_zip):
    create(lam, "py-reserved", python_app_zip, Timeout=10)
    lam.put_function_concurrency(FunctionName="py-reserved", ReservedConcurrentExecutions=0)
    with pytest.raises(lam.exceptions.TooManyRequestsException) as excinfo:
        invoke(lam, "py-reserved", {})
    code, status, _ = client_error(excinfo)
    assert (code, status) == ("TooManyRequestsException", 429)

    lam.put_function_concurrency(FunctionName="py-reserved", ReservedConcurrentExecutions=1)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(invoke, lam, "py-reserved", {"sleep_ms": 3000})
        wait_fleet(server, lambda f: containers_of(f, "py-reserved", "busy"), timeout=60,
                   what="the slow invocation to run")
        with pytest.raises(lam.exceptions.TooManyRequestsException):
            invoke(lam, "py-reserved", {})
        assert slow.result()[1] == {"slept_ms": 3000}


# ---- Event invocations and logs ------------------------------------------------------------------


def wait_for_logs(server, name, predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        r = ember_cli(server, "logs", name, "--json", "--limit", "1000")
        assert r.returncode == 0, r.stderr
        events = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
        if predicate(events):
            return events
        assert time.monotonic() < deadline, f"logs never matched: {events}"
        time.sleep(0.3)


def wait_for_server_log(server, *needles, timeout=30):
    """Waits for a line with every one of `needles` in the server's log (its ANSI colours taken
    out)."""
    deadline = time.monotonic() + timeout
    while not any(all(n in line for n in needles)
                  for line in re.sub(r"\x1b\[[0-9;]*m", "", server.log_text()).splitlines()):
        assert time.monotonic() < deadline, f"{needles!r} never logged:\n{server.log_text()}"
        time.sleep(0.1)


def test_event_invocation_runs_in_the_background(server, lam, python_app_zip):
    create(lam, "py-event", python_app_zip)
    r = lam.invoke(FunctionName="py-event", InvocationType="Event",
                   Payload=json.dumps({"print": "from-an-event"}).encode())
    assert r["StatusCode"] == 202
    request_id = r["ResponseMetadata"]["RequestId"]
    events = wait_for_logs(server, "py-event", lambda ev: any(e["RequestId"] == request_id for e in ev))
    log = next(e["Message"] for e in events if e["RequestId"] == request_id)
    assert "from-an-event" in log and "REPORT RequestId" in log


def test_failed_event_is_retried_twice(server, lam, python_app_zip):
    """A failed Event invocation is retried twice: the first retry RETRY_DELAY_S after the first
    attempt ends, the second twice that after the second ends; then it is dropped."""
    create(lam, "py-event-fail", python_app_zip)
    invoke(lam, "py-event-fail", {})  # warm: the first attempt starts without a cold start
    r = lam.invoke(FunctionName="py-event-fail", InvocationType="Event",
                   Payload=json.dumps({"fail": "again"}).encode())
    request_id = r["ResponseMetadata"]["RequestId"]

    def attempts(events):
        return [e for e in events if e["RequestId"] == request_id]

    events = wait_for_logs(server, "py-event-fail", lambda ev: len(attempts(ev)) >= 3)
    third = max(e["Timestamp"] for e in attempts(events))
    # The server gives up on it after the third attempt...
    wait_for_server_log(server, request_id, "event failed on every attempt; dropped")
    # ...and indeed no fourth comes: a third retry would wait 4 × RETRY_DELAY_S after the third
    # attempt (which started at `third`, by the server's clock, which is this host's). Watch
    # twice that long.
    quiet_until = third / 1000 + 2 * 4 * RETRY_DELAY_S
    while time.time() < quiet_until:
        events = wait_for_logs(server, "py-event-fail", lambda ev: True)
        assert len(attempts(events)) == 3, attempts(events)
        time.sleep(0.2)
    runs = attempts(wait_for_logs(server, "py-event-fail", lambda ev: True))
    assert len(runs) == 3, runs
    assert all("HelloFailure" in e["Message"] for e in runs), runs
    # Each wait is at least its delay, and the second delay twice the first: from one attempt's
    # start to the next is the run plus the delay (lower bounds only: a busy machine makes runs
    # longer, never delays shorter). Timestamps are whole milliseconds: 1 ms of rounding is
    # allowed.
    starts = sorted(e["Timestamp"] for e in runs)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    base_ms = RETRY_DELAY_S * 1000
    assert gaps[0] >= base_ms - 1, gaps
    assert gaps[1] >= 2 * base_ms - 1, f"the second retry did not wait twice as long: {gaps}"


def padded_payload(size: int) -> bytes:
    """A JSON object of exactly `size` bytes that app.handler answers with {}."""
    head, tail = b'{"pad": "', b'"}'
    payload = head + b"x" * (size - len(head) - len(tail)) + tail
    assert len(payload) == size
    return payload


def test_sync_payload_limit_is_6_mb(lam, py_fn):
    r = lam.invoke(FunctionName=py_fn, Payload=padded_payload(SYNC_LIMIT))
    assert r["StatusCode"] == 200 and "FunctionError" not in r
    assert json.loads(r["Payload"].read()) == {}
    with pytest.raises(lam.exceptions.RequestTooLargeException) as excinfo:
        lam.invoke(FunctionName=py_fn, Payload=padded_payload(SYNC_LIMIT + 1))
    code, status, _ = client_error(excinfo)
    assert (code, status) == ("RequestTooLargeException", 413)
    assert f"limit {SYNC_LIMIT} bytes" in excinfo.value.response["Error"]["Message"]


def test_event_payload_limit_is_256_kb(server, lam, py_fn):
    r = lam.invoke(FunctionName=py_fn, InvocationType="Event", Payload=padded_payload(EVENT_LIMIT))
    assert r["StatusCode"] == 202
    request_id = r["ResponseMetadata"]["RequestId"]
    with pytest.raises(lam.exceptions.RequestTooLargeException) as excinfo:
        lam.invoke(FunctionName=py_fn, InvocationType="Event",
                   Payload=padded_payload(EVENT_LIMIT + 1))
    code, status, _ = client_error(excinfo)
    assert (code, status) == ("RequestTooLargeException", 413)
    assert f"limit {EVENT_LIMIT} bytes" in excinfo.value.response["Error"]["Message"]
    # The one at the limit was accepted and runs.
    events = wait_for_logs(server, py_fn, lambda ev: any(e["RequestId"] == request_id for e in ev))
    assert "REPORT RequestId" in next(e["Message"] for e in events if e["RequestId"] == request_id)


def test_ember_logs_shows_the_functions_output(server, lam, py_fn):
    r, _ = invoke(lam, py_fn, {"print": "hello-logs"})
    request_id = r["ResponseMetadata"]["RequestId"]
    events = wait_for_logs(server, py_fn, lambda ev: any(e["RequestId"] == request_id for e in ev))
    plain = ember_cli(server, "logs", py_fn)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.count("hello-logs") >= 2, "stdout and stderr are both kept"
    assert f"START RequestId: {request_id}" in plain.stdout


# ---- other clients ------------------------------------------------------------------------------


def test_aws_cli_invokes_both_runtimes(server, lam, py_fn, rust_fn, tmp_path):
    for name in (py_fn, rust_fn):
        out = tmp_path / f"{name}.json"
        rc, stdout, stderr = server.aws(
            "lambda", "invoke", "--function-name", name,
            "--payload", json.dumps({"echo": "cli"}), "--log-type", "Tail", str(out),
        )
        assert rc == 0, stderr
        meta = stdout
        assert meta["StatusCode"] == 200
        assert "REPORT RequestId" in base64.b64decode(meta["LogResult"]).decode()
        assert json.loads(out.read_text())["echo"] == "cli"


def test_ember_cli_invokes(server, py_fn):
    r = ember_cli(server, "fn", "invoke", py_fn, "--payload", '{"echo": 5}', "--log", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == {"StatusCode", "ExecutedVersion", "FunctionError", "LogResult", "Payload"}, out
    assert out["StatusCode"] == 200 and out["FunctionError"] is None, out
    assert out["ExecutedVersion"] == "$LATEST", out
    payload = json.loads(out["Payload"])
    assert payload["echo"] == 5 and payload["function"] == py_fn, payload
    request_id = payload["request_id"]
    assert f"START RequestId: {request_id}" in out["LogResult"], out
    assert REPORT_RE.search(out["LogResult"])["id"] == request_id, out

    # Without --json: the payload on stdout, the log tail on stderr.
    r = ember_cli(server, "fn", "invoke", py_fn, "--payload", '{"print": "cli-tail"}', "--log")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"printed": "cli-tail"}
    assert "cli-tail" in r.stderr and "REPORT RequestId" in r.stderr, r.stderr

    # A function error: its document, the error kind, and a non-zero exit.
    r = ember_cli(server, "fn", "invoke", py_fn, "--payload", '{"fail": "cli-boom"}', "--json")
    assert r.returncode != 0
    out = json.loads(r.stdout)
    assert (out["StatusCode"], out["FunctionError"], out["LogResult"]) == (200, "Unhandled", None)
    assert json.loads(out["Payload"])["errorMessage"] == "cli-boom"
    assert "the function failed (Unhandled)" in r.stderr, r.stderr


# ---- durability and reclaim, on servers of their own ---------------------------------------------


def test_queued_event_survives_a_kill_and_runs_after_restart(server_factory, python_app_zip):
    first = server_factory()
    lam = first.lambda_client(first.admin_keys())
    create(lam, "py-durable", python_app_zip)
    # Throttled: the event waits in the queue, retried every second, never running.
    lam.put_function_concurrency(FunctionName="py-durable", ReservedConcurrentExecutions=0)
    r = lam.invoke(FunctionName="py-durable", InvocationType="Event",
                   Payload=json.dumps({"print": "survived"}).encode())
    request_id = r["ResponseMetadata"]["RequestId"]
    # Killed once the queue has tried it (and found it throttled).
    wait_for_server_log(first, "event could not run; will try again")
    first.kill()

    second = server_factory(first.data_dir)
    lam = second.lambda_client(second.admin_keys())
    lam.delete_function_concurrency(FunctionName="py-durable")
    events = wait_for_logs(second, "py-durable",
                           lambda ev: any(e["RequestId"] == request_id for e in ev))
    assert "survived" in next(e["Message"] for e in events if e["RequestId"] == request_id)


def test_idle_containers_are_reclaimed_after_the_keep_alive(server_factory, python_app_zip):
    server = server_factory(None, "--container-keep-alive", "1")
    lam = server.lambda_client(server.admin_keys())
    create(lam, "py-reclaim", python_app_zip)
    _, first = invoke(lam, "py-reclaim", {"instance": True})
    _, again = invoke(lam, "py-reclaim", {"instance": True})
    assert again == first, "reused while warm"
    wait_fleet(server, lambda f: not containers_of(f, "py-reclaim"), timeout=30,
               what="the idle container to be reclaimed")
    _, later = invoke(lam, "py-reclaim", {"instance": True})
    assert later != first, "the idle container was reclaimed; a new one served"


def test_ember_logs_follow_prints_new_invocations(server, lam, python_app_zip):
    py_fn = "py-follow"  # of its own: no other test's invocation comes between
    create(lam, py_fn, python_app_zip)
    # A log already there, printed at once (--limit 1): once it is seen, the follower is running.
    r, _ = invoke(lam, py_fn, {"print": "before-follow"})
    before = r["ResponseMetadata"]["RequestId"]
    wait_for_logs(server, py_fn, lambda ev: any(e["RequestId"] == before for e in ev))
    follow = subprocess.Popen(
        [str(server.ember_bin), "logs", py_fn, "--follow", "--limit", "1",
         "--endpoint", server.endpoint, "--data-dir", str(server.data_dir)],
        stdout=subprocess.PIPE, text=True, env=clean_env(),
    )
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []

    def pump():
        for line in follow.stdout:
            lines.put(line)

    def read_until(needle: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not any(needle in line for line in seen):
            left = deadline - time.monotonic()
            assert left > 0, f"{needle!r} never came: {''.join(seen)}"
            try:
                seen.append(lines.get(timeout=left))
            except queue.Empty:
                pass

    threading.Thread(target=pump, daemon=True).start()
    try:
        read_until(f"REPORT RequestId: {before}")
        r, _ = invoke(lam, py_fn, {"print": "followed-line"})
        request_id = r["ResponseMetadata"]["RequestId"]
        read_until(f"REPORT RequestId: {request_id}")
        text = "".join(seen)
        assert "followed-line" in text and f"START RequestId: {request_id}" in text, text
    finally:
        follow.kill()
        follow.wait()
