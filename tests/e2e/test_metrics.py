"""Prometheus metrics, end to end: `GET /metrics` without credentials on the main listener (the
default), on a listener of its own (`--metrics-listen`), or not at all (`--no-metrics`); and the
counters, gauges and the VM boot histogram moving when functions run."""

from __future__ import annotations

import json
import os
import re
import time
import uuid

import pytest

from ember_e2e import ROLE, fleet, handler_zip, port_open, send

pytestmark = pytest.mark.needs_root  # VMs need root; without it the tests fail (conftest.py)

PROMETHEUS_TEXT = "text/plain; version=0.0.4"
SAMPLE_RE = re.compile(r"^(?P<series>[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})?) (?P<value>\S+)$")


def scrape(base_url: str):
    """GETs /metrics with no credentials: the response, and its samples (series -> value)."""
    r = send("GET", f"{base_url}/metrics")
    samples = {}
    if r.status == 200:
        for line in r.body.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            m = SAMPLE_RE.match(line)
            assert m, f"not a Prometheus sample line: {line!r}"
            samples[m["series"]] = float(m["value"])
    return r, samples


def wait_for_samples(server, predicate, what: str, timeout: float = 10.0) -> dict[str, float]:
    """Scrapes until `predicate(samples)` holds; fails after `timeout` s with the last scrape."""
    deadline = time.monotonic() + timeout
    while True:
        r, samples = scrape(server.endpoint)
        if predicate(samples):
            return samples
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{r.body.decode()}"
        time.sleep(0.05)


def series_with(samples: dict[str, float], name: str, label: str) -> float:
    """The value of the series `name{...label...}` (0 if absent)."""
    return sum(v for k, v in samples.items()
               if k.startswith(name + "{") and label in k[len(name):])


def invoke_ok(lam, name: str) -> None:
    r = lam.invoke(FunctionName=name, Payload=json.dumps({}).encode())
    assert r["StatusCode"] == 200 and "FunctionError" not in r, r["Payload"].read()


NO_WARMING_POOL = ("--replenish-policy", "fixed", "--replenish-count", "0")


@pytest.fixture(scope="module")
def cold_server(module_server_factory):
    """A server without a warming pool: it boots a VM only when an invocation needs one, so
    every boot it counts is one a test caused."""
    return module_server_factory(None, *NO_WARMING_POOL)


def test_metrics_are_served_on_the_main_listener_without_credentials(server):
    r, samples = scrape(server.endpoint)
    assert r.status == 200, r.body
    assert r.headers["Content-Type"].startswith(PROMETHEUS_TEXT)
    text = r.body.decode()
    for line in [
        "# TYPE ember_invocations_total counter",
        "# TYPE ember_pool_vms gauge",
        "# TYPE ember_replenish_count gauge",
        "# TYPE ember_request_rate gauge",
        "# TYPE ember_idle_vm_seconds_total gauge",
        "# HELP ember_pool_vms ",
        "# HELP ember_invocations_total ",
    ]:
        assert line in text, f"{line!r} missing from:\n{text}"
    assert 'ember_pool_vms{pool="warming"}' in samples, text
    assert 'ember_pool_vms{pool="active"}' in samples, text
    assert "ember_replenish_count" in samples, text


def test_invocations_and_vm_boots_are_counted(cold_server):
    server = cold_server
    # A new account has no VM, and this server keeps none warming: its first invocation must
    # boot one (a cold VM start), its second reuses the container (warm).
    keys = server.make_account(f"metrics-{uuid.uuid4().hex[:8]}")
    lam = server.lambda_client(keys)
    lam.create_function(FunctionName="metrics-counted", Runtime="python3.11", Role=ROLE,
                        Handler="app.handler", Code={"ZipFile": handler_zip("metrics-counted")})
    assert not [vm for vm in fleet(server)["ActivePool"] if vm["AccountId"] == keys["AccountId"]]

    def starts(samples: dict[str, float]) -> dict[str, float]:
        return {start: series_with(samples, "ember_invocations_total", f'start="{start}"')
                for start in ("warm", "cold_container", "cold_vm")}

    def boots(samples: dict[str, float]) -> tuple[float, float]:
        return (samples.get("ember_vm_boot_seconds_count", 0),
                samples.get("ember_vm_boot_seconds_sum", 0))

    _, before = scrape(server.endpoint)
    invoke_ok(lam, "metrics-counted")
    _, booted = scrape(server.endpoint)
    invoke_ok(lam, "metrics-counted")
    r, after = scrape(server.endpoint)
    text = r.body.decode()

    assert starts(booted)["cold_vm"] - starts(before)["cold_vm"] == 1, text
    assert boots(booted)[0] - boots(before)[0] == 1, f"the invocation's VM boot was not counted:\n{text}"
    assert boots(booted)[1] > boots(before)[1], text
    account_vms = [vm for vm in fleet(server)["ActivePool"] if vm["AccountId"] == keys["AccountId"]]
    assert len(account_vms) == 1, account_vms
    # The second invocation: warm, and no boot.
    assert {k: after_v - starts(booted)[k] for k, after_v in starts(after).items()} == \
        {"warm": 1, "cold_container": 0, "cold_vm": 0}, text
    assert boots(after) == boots(booted), text

    assert "# TYPE ember_vm_boot_seconds histogram" in text, text
    assert 'ember_vm_boot_seconds_bucket{le="+Inf"}' in after, text
    assert after['ember_vm_boot_seconds_bucket{le="+Inf"}'] == after["ember_vm_boot_seconds_count"]
    assert 'ember_vm_boot_seconds_bucket{le="0.005"}' in after, text
    # The pool gauges follow the fleet on its clock's tick.
    wait_for_samples(server, lambda samples: series_with(samples, "ember_pool_vms",
                                                         'pool="active"') >= 1,
                     "the active pool's gauge to count the VM")


def test_no_metrics_turns_the_route_off(server_factory):
    server = server_factory(None, "--no-metrics")
    r, _ = scrape(server.endpoint)
    assert r.status != 200
    assert r.headers.get("x-amzn-ErrorType"), "answered like any unknown path, in AWS's shape"
    assert b"ember_" not in r.body
    # The API itself is unaffected.
    assert server.lambda_client().list_functions()["Functions"] == []


def test_metrics_listen_moves_metrics_to_their_own_listener(server_factory):
    # Port 0: the server binds a free port and reports it in <data-dir>/metrics-endpoint.
    server = server_factory(None, "--metrics-listen", "127.0.0.1:0")
    assert server.metrics_endpoint is not None, "no metrics-endpoint file"
    port = int(server.metrics_endpoint.rpartition(":")[2])
    assert port not in (0, server.port), server.metrics_endpoint
    assert f"Metrics are served at {server.metrics_endpoint}/metrics" in server.log_text()
    r, samples = scrape(server.metrics_endpoint)
    assert r.status == 200, r.body
    assert r.headers["Content-Type"].startswith(PROMETHEUS_TEXT)
    assert 'ember_pool_vms{pool="warming"}' in samples

    main, _ = scrape(server.endpoint)
    assert main.status != 200
    assert b"ember_" not in main.body

    assert server.stop() == 0
    assert not port_open(port), "the metrics listener stops with the server"
    assert not server.metrics_endpoint_path.exists(), "the file outlived the listener it names"
