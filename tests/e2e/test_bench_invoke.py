"""`ember bench invoke --serve`: the cold-start table per runtime (provided, Python, Node.js when
the server offers it) and memory size, with and without runtime templates when `ember serve` has
them, next to its floors measured in the same run (the interpreter importing its runtime client,
the container's namespaces); a tiny run that checks the report's shape, not its numbers."""

from __future__ import annotations

import json

import pytest

from ember_e2e import RUNTIME_DIR, run_ember

pytestmark = pytest.mark.needs_root  # VMs and the namespaces floor need root (conftest.py)

MEMORIES = (128, 1024)


def spread_ok(spread: dict, samples: int) -> None:
    assert spread["samples"] == samples, spread
    assert 0 < spread["p50_ms"] <= spread["p90_ms"] <= spread["max_ms"], spread


def test_the_cold_start_table_with_its_floors(ember_bin, rust_hello_zip, tmp_path):
    zip_path = tmp_path / "rust-hello.zip"
    zip_path.write_bytes(rust_hello_zip)
    log = tmp_path / "serve.log"
    r = run_ember(
        ember_bin, "bench", "invoke", "--serve", "--seconds", "0", "--vm-boots", "0",
        "--cold-samples", "2", "--floor-samples", "2", "--rust-zip", str(zip_path),
        "--runtime-dir", str(RUNTIME_DIR), "--server-log", str(log), "--json", timeout=280,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    # No warm phase was asked for.
    assert set(report) == {"cold_starts"}, report.keys()
    cold = report["cold_starts"]
    templates = cold["templates_available"]
    assert isinstance(templates, bool)
    passes = cold["passes"]
    assert [p["runtime_templates"] for p in passes] == ([False, True] if templates else [False])

    node_runtime = None
    for one in passes:
        rows = {(row["kind"], row["memory_mb"]): row for row in one["rows"]}
        assert set(rows) == {(k, m) for k in ("provided", "python", "node") for m in MEMORIES}
        for (kind, memory), row in rows.items():
            if kind == "node" and not row["available"]:
                # Refused by name, every candidate tried.
                assert "nodejs20.x" in row["reason"], row
                continue
            assert row["available"] is True, row
            spread_ok(row["client"], 2)
            spread_ok(row["init_duration"], 2)
            # The runtime's init is part of what the client waited for.
            assert row["init_duration"]["p50_ms"] < row["client"]["max_ms"], row
            if kind == "node":
                node_runtime = row["runtime"]
        assert rows[("python", 128)]["runtime"].startswith("python3.")
        assert rows[("provided", 128)]["runtime"] == "provided.al2023"

    floors = {f["floor"].split(":")[0]: f["result"] for f in cold["floors"]}
    python_floor = next(v for k, v in floors.items() if k.startswith("python3."))
    spread_ok(python_floor, 2)
    namespaces = next(v for k, v in floors.items() if k.startswith("namespaces"))
    spread_ok(namespaces, 2)
    node_floor = next(v for k, v in floors.items() if k.startswith("nodejs"))
    if node_runtime is None:
        assert node_floor == {"available": False, "reason": "no Node.js runtime"}, node_floor
    else:
        spread_ok(node_floor, 2)

    # Each target names what it checked; the provided one is checked in every pass.
    targets = cold["targets"]
    assert all(isinstance(t["pass"], bool) and t["measured"] for t in targets), targets
    provided = [t for t in targets if t["target"].startswith("provided cold start p50")]
    assert len(provided) == len(MEMORIES) * len(passes), targets
    assert any("within 1.5x of 1024 MB" in t["target"] for t in targets), targets


def test_on_a_running_server(server, rust_hello_zip, tmp_path):
    zip_path = tmp_path / "rust-hello.zip"
    zip_path.write_bytes(rust_hello_zip)
    r = server.run_ember(
        "bench", "invoke", "--seconds", "0.3", "--clients", "2", "--vm-boots", "0",
        "--cold-samples", "2", "--floor-samples", "0", "--runtimes", "provided",
        "--cold-memory", "256", "--rust-zip", str(zip_path), "--json",
        "--endpoint", server.endpoint, "--data-dir", str(server.data_dir), timeout=280,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    # The warm phases, as before the table.
    for name in ("bench-noop-provided", "bench-noop-python"):
        warm = report[name]["warm"]
        assert warm["invokes"] > 0 and warm["errors"] == 0, report[name]
    # The provided function's URL, next to its Invoke, against issue 18's target.
    url = report["function_url"]
    assert url["function"] == "bench-noop-provided"
    for phase in ("warm_1_client", "warm"):
        assert url[phase]["invokes"] > 0 and url[phase]["errors"] == 0, url
    target = url["target"]
    assert target["target"] == "p50 within 0.2 ms of Invoke's"
    assert target["measured_ms"] == (url["warm_1_client"]["p50_ms"]
                                     - url["invoke_warm_1_client_p50_ms"])
    assert target["pass"] == (target["measured_ms"] <= 0.2)
    cold = report["cold_starts"]
    # Its templates setting is the running server's own: not known, not set.
    assert cold["templates_available"] is None
    [one] = cold["passes"]
    assert one["runtime_templates"] is None
    [row] = one["rows"]
    assert (row["kind"], row["memory_mb"], row["runtime"]) == ("provided", 256, "provided.al2023")
    spread_ok(row["client"], 2)
    assert cold["floors"] == []
    # Only the target that holds whatever the templates: provided's.
    assert [t["target"] for t in cold["targets"]] == [
        "provided cold start p50 at 256 MB as the server runs <= 5 ms"]


def test_server_arguments_need_serve(ember_bin):
    r = run_ember(ember_bin, "bench", "invoke", "--seconds", "0", "--", "--scheduling", "other")
    assert r.returncode != 0
    assert "--serve" in r.stderr, r.stderr


def test_unknown_runtime_kinds_are_refused(ember_bin):
    r = run_ember(ember_bin, "bench", "invoke", "--runtimes", "python,java")
    assert r.returncode != 0
    assert "java" in r.stderr and "provided, python, node" in r.stderr, r.stderr
