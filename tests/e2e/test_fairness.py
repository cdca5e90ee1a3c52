"""Fairness under overload, end to end: one account's flood does not take another account's
capacity (its warm function is not evicted, its invocations get no 429 and keep their latency),
the flood's excess is refused with a 429 after the placement wait, and `--account-memory-mb`
caps what one account holds."""

from __future__ import annotations

import concurrent.futures
import json
import os
import statistics
import time

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from ember_e2e import REGION, ROLE, fleet, run_ember, wait_fleet

pytestmark = pytest.mark.needs_root  # VMs need root; without it the tests fail (conftest.py)

NATIVE = "provided.al2023"


def client(server, keys, pool=32):
    """A boto3 Lambda client that makes exactly one attempt, with room for `pool` concurrent
    requests."""
    return boto3.client(
        "lambda", endpoint_url=server.endpoint, region_name=REGION,
        aws_access_key_id=keys["AccessKeyId"], aws_secret_access_key=keys["SecretAccessKey"],
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=60,
                      max_pool_connections=pool),
    )


def account_of(f: dict, account_id: str) -> dict | None:
    return next((a for a in f["Accounts"] if a["AccountId"] == account_id), None)


def create(lam, name, zip_bytes, memory):
    lam.create_function(FunctionName=name, Runtime=NATIVE, Role=ROLE, Handler="bootstrap",
                        Code={"ZipFile": zip_bytes}, MemorySize=memory, Timeout=30)


def timed_invoke(lam, name, event):
    """(outcome, seconds, start kind): outcome is "ran" or the error code with its Reason."""
    started = time.monotonic()
    try:
        r = lam.invoke(FunctionName=name, Payload=json.dumps(event).encode())
        body = r["Payload"].read()
        assert "FunctionError" not in r, body
        start = r["ResponseMetadata"]["HTTPHeaders"].get("x-ember-start")
        return "ran", time.monotonic() - started, start
    except botocore.exceptions.ClientError as err:
        # botocore puts the modeled error's members (Lambda's `Reason`) beside `Error`.
        outcome = (err.response["Error"]["Code"], err.response.get("Reason"),
                   err.response["Error"]["Message"])
        return outcome, time.monotonic() - started, None


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


def warm_latencies(lam, name, count) -> list[float]:
    """`count` sequential invocations of a warm function: each must run warm."""
    took = []
    for _ in range(count):
        outcome, seconds, start = timed_invoke(lam, name, {"noop": True})
        assert (outcome, start) == ("ran", "warm"), (outcome, start)
        took.append(seconds)
    return took


def test_a_flood_does_not_take_another_accounts_capacity(server_factory, rust_hello_zip):
    """The issue's case, scaled down: the host holds 4 VMs of 2048 MB. B's warm 128 MB function
    idles in a VM of B's own; A sends 16 concurrent 10-second invocations of 1024 MB, of which the
    3 VMs left hold 6. B's VM is never evicted for A: B's invocations during the flood all run
    warm, none gets a 429, and B's p99 stays within 2× (+20 ms) of its p99 alone (measured
    before and after the flood). A's 10 excess invocations are refused with a 429 after the
    placement wait."""
    wait_s = 6.0
    server = server_factory(None, "--capacity-mb", "8192", "--vm-memory-mb", "2048",
                            "--placement-wait", str(wait_s), "--replenish-policy", "fixed",
                            "--replenish-count", "0")
    a_keys, b_keys = server.make_account("flooder"), server.make_account("bystander")
    lam_a, lam_b = client(server, a_keys), client(server, b_keys)
    create(lam_a, "flood", rust_hello_zip, 1024)
    create(lam_b, "small", rust_hello_zip, 128)
    assert timed_invoke(lam_b, "small", {"noop": True})[0] == "ran"

    warm_latencies(lam_b, "small", 20)  # settle
    alone = warm_latencies(lam_b, "small", 200)

    flood_size, runs = 16, 6
    pool = concurrent.futures.ThreadPoolExecutor(flood_size)
    flood = [pool.submit(timed_invoke, lam_a, "flood", {"sleep_ms": 10_000})
             for _ in range(flood_size)]
    # Then the boots and container starts of the flood are over: only waiting is left.
    f = wait_fleet(
        server,
        lambda f: (a := account_of(f, a_keys["AccountId"])) is not None and a["Waiting"] > 0
        and sum(c["State"] == "busy" for vm in f["ActivePool"]
                if vm["AccountId"] == a_keys["AccountId"] for c in vm["Containers"]) >= runs
        and not any(vm["Booting"] or vm["PendingContainers"] for vm in f["ActivePool"]),
        timeout=30.0, what="A's flood to fill the host and queue")
    # A holds the 3 VMs B does not: B's VM was not taken.
    assert account_of(f, a_keys["AccountId"])["HeldMemoryMB"] == 3 * 2048, f["Accounts"]
    b_view = account_of(f, b_keys["AccountId"])
    assert b_view == {"AccountId": b_keys["AccountId"], "Weight": 1, "HeldMemoryMB": 2048,
                      "FairShareMB": 4096, "Waiting": 0}, f["Accounts"]

    during = warm_latencies(lam_b, "small", 200)
    f = fleet(server)
    assert account_of(f, a_keys["AccountId"])["Waiting"] > 0, (
        "the flood was still queued while B was measured", f["Accounts"])
    (b_vm,) = [vm for vm in f["ActivePool"] if vm["AccountId"] == b_keys["AccountId"]]
    assert [c["FunctionName"] for c in b_vm["Containers"]] == ["small"], b_vm

    results = [fu.result(timeout=60) for fu in flood]
    pool.shutdown()
    # B alone again, once A's invocations are over: the baseline spans the flood, so that a
    # change in the (shared) machine's load during the test is not taken for the flood's doing.
    alone += warm_latencies(lam_b, "small", 200)
    p99_alone, p99_during = p99(alone), p99(during)
    print(f"B's p99 alone {p99_alone * 1e3:.2f} ms, during A's flood {p99_during * 1e3:.2f} ms; "
          f"p50 {statistics.median(alone) * 1e3:.2f} / {statistics.median(during) * 1e3:.2f} ms")
    # Within 2× of alone, with 20 ms of slack: on 2 cores the flood's refusals and this test's own
    # 16 client threads share the CPU with B's calls, and a 5 ms p99 once measured 19 ms. What
    # matters is that B never waits on A: queued, B would wait the placement wait (6 s); evicted,
    # a cold start (hundreds of ms).
    assert p99_during <= 2 * p99_alone + 0.020, (p99_alone, p99_during)
    ran = [r for r in results if r[0] == "ran"]
    refused = [r for r in results if r[0] != "ran"]
    assert len(ran) == runs, results
    for (code, reason, _), took, _ in refused:
        assert (code, reason) == ("TooManyRequestsException", "ServiceCapacityExhausted")
        assert wait_s - 0.5 <= took < wait_s + 3, took


def test_a_waiting_account_within_its_share_goes_before_a_flood(server_factory,
                                                                 rust_hello_zip):
    """B has no VM and the host is full of A's 3-second invocations, with 30 more of A's
    queued. A's waiters do not take the containers A's invocations leave: B, within its share,
    goes first, and runs as soon as one of A's VMs is idle, long before the placement wait
    (which A's queue alone would outlast)."""
    wait_s = 8.0
    server = server_factory(None, "--capacity-mb", "6144", "--vm-memory-mb", "2048",
                            "--placement-wait", str(wait_s), "--replenish-policy", "fixed",
                            "--replenish-count", "0")
    a_keys, b_keys = server.make_account("flooder"), server.make_account("latecomer")
    lam_a, lam_b = client(server, a_keys, pool=40), client(server, b_keys)
    create(lam_a, "flood", rust_hello_zip, 1024)
    create(lam_b, "small", rust_hello_zip, 128)

    pool = concurrent.futures.ThreadPoolExecutor(36)
    flood = [pool.submit(timed_invoke, lam_a, "flood", {"sleep_ms": 3000}) for _ in range(36)]
    wait_fleet(server, lambda f: (a := account_of(f, a_keys["AccountId"])) is not None
               and a["Waiting"] == 30 and a["HeldMemoryMB"] == 6144,
               timeout=30.0, what="A to fill the host and queue 30")
    outcome, took, start = timed_invoke(lam_b, "small", {"noop": True})
    assert (outcome, start) == ("ran", "cold_vm"), (outcome, start)
    # B ran while A's queue (30 × 3 s over 6 slots, longer than the placement wait) was still
    # there: it did not wait for A's waiters. (An order, not a time: B's took includes a boot.)
    a_now = account_of(fleet(server), a_keys["AccountId"])
    assert a_now is not None and a_now["Waiting"] > 0, (
        f"B waited {took:.1f}s, until A's queue was gone: A's waiters went first", a_now)
    results = [fu.result(timeout=60) for fu in flood]
    pool.shutdown()
    assert sum(r[0] == "ran" for r in results) >= 6, results


def test_account_memory_mb_caps_one_account(server_factory, rust_hello_zip):
    """With --account-memory-mb 2048, an account's VMs hold at most 2048 MB: of three
    concurrent 1024 MB invocations two run, the third waits and gets a 429 naming the ceiling,
    while another account still runs on the host's free capacity; a function larger than the
    ceiling gets its 429 at once."""
    wait_s = 2.0
    server = server_factory(None, "--capacity-mb", "8192", "--vm-memory-mb", "2048",
                            "--account-memory-mb", "2048", "--placement-wait", str(wait_s),
                            "--replenish-policy", "fixed", "--replenish-count", "0")
    a_keys, b_keys = server.make_account("capped"), server.make_account("other")
    lam_a, lam_b = client(server, a_keys), client(server, b_keys)
    create(lam_a, "big", rust_hello_zip, 1024)
    create(lam_b, "big", rust_hello_zip, 1024)

    pool = concurrent.futures.ThreadPoolExecutor(3)
    first = [pool.submit(timed_invoke, lam_a, "big", {"sleep_ms": 6000}) for _ in range(2)]
    f = wait_fleet(server, lambda f: sum(c["State"] == "busy" for vm in f["ActivePool"]
                                         for c in vm["Containers"]) == 2,
                   timeout=30.0, what="A's two invocations to run")
    assert f["AccountMemoryMB"] == 2048, f
    assert account_of(f, a_keys["AccountId"])["HeldMemoryMB"] == 2048, f["Accounts"]

    third = pool.submit(timed_invoke, lam_a, "big", {"sleep_ms": 10})
    assert timed_invoke(lam_b, "big", {"noop": True})[0] == "ran", "B is not capped by A"
    (code, reason, message), took, _ = third.result(timeout=30)
    assert (code, reason) == ("TooManyRequestsException", "AccountMemoryLimitExceeded")
    assert "--account-memory-mb" in message, message
    assert wait_s - 0.5 <= took < wait_s + 3, took
    for fu in first:
        assert fu.result(timeout=30)[0] == "ran"
    pool.shutdown()
    # A function larger than the ceiling could never run: refused at once.
    create(lam_a, "huge", rust_hello_zip, 3072)
    (code, reason, _), took, _ = timed_invoke(lam_a, "huge", {"noop": True})
    assert (code, reason, took < 1.0) == ("TooManyRequestsException",
                                          "AccountMemoryLimitExceeded", True), took
    f = fleet(server)
    assert account_of(f, a_keys["AccountId"])["HeldMemoryMB"] <= 2048, f["Accounts"]


def test_weights_divide_the_capacity(server_factory, rust_hello_zip):
    """--account-weight A=3 gives A three quarters of the host against B, as the fleet shows."""
    first = server_factory(None, "--replenish-policy", "fixed", "--replenish-count", "0")
    a_keys, b_keys = first.make_account("heavy"), first.make_account("light")
    assert first.stop() == 0
    server = server_factory(first.data_dir, "--capacity-mb", "8192", "--replenish-policy",
                            "fixed", "--replenish-count", "0",
                            "--account-weight", f"{a_keys['AccountId']}=3")
    for keys in (a_keys, b_keys):
        lam = client(server, keys)
        create(lam, "f", rust_hello_zip, 128)
        assert timed_invoke(lam, "f", {"noop": True})[0] == "ran"
    shares = {a["AccountId"]: (a["Weight"], a["HeldMemoryMB"], a["FairShareMB"])
              for a in fleet(server)["Accounts"]}
    assert shares == {a_keys["AccountId"]: (3, 2048, 6144),
                      b_keys["AccountId"]: (1, 2048, 2048)}, shares


def test_weights_and_the_ceiling_are_checked_at_start(ember_bin, tmp_path):
    """A bad --account-weight or --account-memory-mb stops `ember serve` with a clear error."""
    for args, says in [
        (["--account-weight", "12345=2"], "12-digit account id"),
        (["--account-weight", "123456789012=0"], "at least 1"),
        (["--account-memory-mb", "64"], "--account-memory-mb"),
    ]:
        r = run_ember(ember_bin, "serve", "--data-dir", str(tmp_path / "d"),
                      "--listen", "127.0.0.1:0", *args, timeout=30)
        assert r.returncode != 0 and says in r.stderr, (args, r.returncode, r.stderr)
