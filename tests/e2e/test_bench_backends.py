"""`ember bench invoke --serve --backends embedded,postgres+s3` and `ember bench control`: the
store backends side by side, on servers of the bench's own, with the throwaway PostgreSQL and
SeaweedFS it starts itself; tiny runs that check the reports' shape and that every figure was
measured on every backend, not the numbers."""

from __future__ import annotations

import json

import pytest

from ember_e2e import RUNTIME_DIR, run_ember
from seaweed import weed_binary

pytestmark = pytest.mark.needs_root  # VMs need root (conftest.py)

WRITES = ("CreateFunction", "UpdateFunctionConfiguration", "PublishVersion",
          "PutFunctionConcurrency", "TagResource", "DeleteFunction")


def env() -> dict[str, str]:
    return {"EMBER_WEED": weed_binary()}


def spread_ok(spread: dict, samples: int) -> None:
    assert spread["samples"] == samples, spread
    assert 0 < spread["p50_ms"] <= spread["p90_ms"] <= spread["max_ms"], spread


def control_ok(control: dict, backends: list[str], samples: int) -> None:
    assert [b["backend"] for b in control["backends"]] == backends
    for b in control["backends"]:
        ops = b["operations"]
        assert set(ops) == {"GetFunctionConfiguration", *WRITES}, ops.keys()
        for op in ops.values():
            assert op["samples"] == samples, op
            assert 0 < op["p50_ms"] <= op["p99_ms"], op
    # Each write is checked on PostgreSQL (not the read, not the embedded store).
    checked = [t["target"].split(" ")[0] for t in control["targets"]]
    assert checked == (list(WRITES) if "postgres+s3" in backends else []), control["targets"]
    assert all(isinstance(t["pass"], bool) for t in control["targets"])


def test_invoke_side_by_side_on_the_embedded_store_and_postgres_with_s3(
        ember_bin, rust_hello_zip, tmp_path):
    zip_path = tmp_path / "rust-hello.zip"
    zip_path.write_bytes(rust_hello_zip)
    r = run_ember(
        ember_bin, "bench", "invoke", "--serve", "--backends", "embedded,postgres+s3",
        "--seconds", "0.5", "--rounds", "2", "--rates", "40", "--clients", "2",
        "--spread-functions", "2", "--spread-intervals", "250",
        "--cold-samples", "2", "--cold-memory", "128", "--control-samples", "2",
        "--memory-mb", "128", "--rust-zip", str(zip_path), "--runtime-dir", str(RUNTIME_DIR),
        "--server-log", str(tmp_path / "serve.log"), "--json", env=env(), timeout=400,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    backends = report["backends"]
    assert [b["backend"] for b in backends] == ["embedded", "postgres+s3"]
    assert "PostgreSQL" in backends[1]["services"] and "SeaweedFS" in backends[1]["services"]
    for b in backends:
        assert len(b["rounds"]) == 2
        for one in b["rounds"]:
            assert one["warm_1_client"]["invokes"] > 0 and one["warm_1_client"]["errors"] == 0
            [open_loop] = one["open_loop"]
            assert (open_loop["rate"], open_loop["ok"], open_loop["errors"]) == (40, 20, 0), one
            # Two functions in turn, each every 250 ms, for twice --seconds: 8 invocations.
            [spread] = one["spread"]
            assert (spread["rate"], spread["ok"], spread["errors"]) == (8, 8, 0), one
            assert one["saturated"]["invokes"] > 0 and one["saturated"]["errors"] == 0
        warm = b["warm"]
        assert set(warm) == {
            "warm_1_client_p50_ms", "warm_1_client_p99_ms", "open_loop_40_p50_ms",
            "open_loop_40_p99_ms", "spread_250ms_p50_ms", "spread_250ms_p99_ms",
            "saturated_invokes_per_second", "saturated_p50_ms",
            "saturated_p99_ms"}, warm.keys()
        for figure in warm.values():
            assert figure["median"] > 0, warm
    # The ratio to the embedded store, and its check, on PostgreSQL only.
    for figure in backends[0]["warm"].values():
        assert figure["ratio_to_embedded"] is None and figure["within_10pct"] is None
    for key, figure in backends[1]["warm"].items():
        base = backends[0]["warm"][key]["median"]
        assert figure["ratio_to_embedded"] == pytest.approx(figure["median"] / base), key
        assert isinstance(figure["within_10pct"], bool)

    # Cold starts: a fresh function (its own package) and a configuration change on each; on
    # PostgreSQL also a fresh function first invoked on a second host (its code from the bucket).
    cold = {b["backend"]: [(c["what"], c["memory_mb"]) for c in b["cold"]] for b in backends}
    assert [w for w, _ in cold["embedded"]] == [
        "new function (code from file:// on this host)", "configuration changed (code cached)"]
    assert [w for w, _ in cold["postgres+s3"]] == [
        "new function (code in this host's cache, from its upload)",
        "configuration changed (code cached)",
        "new function created on another host (code from the bucket)"]
    for b in backends:
        for c in b["cold"]:
            assert c["memory_mb"] == 128
            spread_ok(c["client"], 2)

    control_ok(report["control"], ["embedded", "postgres+s3"], 2)


def test_control_plane_writes_alone_and_what_is_refused(ember_bin, tmp_path):
    r = run_ember(
        ember_bin, "bench", "control", "--samples", "3", "--runtime-dir", str(RUNTIME_DIR),
        "--server-log", str(tmp_path / "control.log"), "--json", timeout=200,
    )
    assert r.returncode == 0, r.stderr
    control_ok(json.loads(r.stdout), ["embedded"], 3)

    for args, said in [
        (("bench", "control", "--postgres", "postgres://x@127.0.0.1/db"), "--backends postgres+s3"),
        (("bench", "control", "--backends", "embedded,mysql"), "unknown backend"),
        (("bench", "control", "--backends", "postgres+s3", "--s3", "http://bucket"), "s3://"),
        (("bench", "invoke", "--backends", "embedded"), "--serve"),
        (("bench", "invoke", "--serve", "--rounds", "2"), "for --backends"),
        (("bench", "invoke", "--serve", "--spread-intervals", "500"), "for --backends"),
    ]:
        r = run_ember(ember_bin, *args, timeout=60)
        assert r.returncode != 0 and said in r.stderr, (args, r.stderr)
