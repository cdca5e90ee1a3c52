"""`ember bench load`: an open-loop load held on a server, its report (latency from each request's
due time, errors, achieved rate) and its samples of the server's and agents' memory and
descriptors; on the module's server, and on a server of its own given pass-through options."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ember_e2e import RUNTIME_DIR

PHASES = ("start", "middle", "end")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def assert_plausible(report: dict, rate: float, seconds: float) -> None:
    scheduled = round(rate * seconds)
    assert report["scheduled"] == scheduled
    assert (report["answered"], report["ok"], report["errors"]) == (scheduled, scheduled, 0), report
    assert report["errors_by_kind"] == {}
    assert report["checks"]["no_errors"] is True
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["p99_9"] <= latency["max"], latency
    # Never early: the last request is due (scheduled - 1) / rate after the start, so the answers
    # cannot come faster than that; a loaded machine may make them slower, not seconds slower.
    assert report["achieved_rate"] <= scheduled / ((scheduled - 1) / rate) + 1e-6, report
    assert report["achieved_rate"] >= rate / 2, report
    assert 0 <= report["send_lag_ms"]["p50"] <= report["send_lag_ms"]["max"]
    assert 0 <= report["waited_for_client"] <= scheduled
    for phase in PHASES:
        sample = report["samples"][phase]
        assert sample["server"]["rss_kb"] > 1024, sample
        assert sample["server"]["open_fds"] > 3, sample
        assert sample["agents"]["count"] >= 1, sample
        assert sample["agents"]["rss_kb"] > 0 and sample["agents"]["open_fds"] > 0, sample
        assert sample["agents"]["max_rss_kb"] <= sample["agents"]["rss_kb"]


def test_load_on_a_running_server(server, rust_hello_zip, tmp_path):
    zip_path = tmp_path / "rust-hello.zip"
    zip_path.write_bytes(rust_hello_zip)
    r = server.run_ember(
        "bench", "load", "--rate", "50", "--seconds", "3", "--warmup", "1",
        "--memory-mb", "128", "--clients", "8", "--rust-zip", str(zip_path), "--json",
        "--endpoint", server.endpoint, "--data-dir", str(server.data_dir), timeout=120,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert_plausible(report, 50, 3)
    assert (report["function"], report["runtime"], report["clients"]) == (
        "native", "provided.al2023", 8)
    # The server found through the data dir's lock is the one serving, and what was sampled is
    # its memory: the same order of magnitude as its RSS now.
    assert report["server"] == {"endpoint": server.endpoint, "pid": server.proc.pid,
                                "started": False, "args": []}
    now = rss_kb(server.proc.pid)
    assert now / 2 <= report["samples"]["end"]["server"]["rss_kb"] <= now * 2


def test_load_on_a_server_of_its_own_with_server_options(ember_bin, rust_hello_zip, tmp_path):
    from ember_e2e import run_ember

    zip_path = tmp_path / "rust-hello.zip"
    zip_path.write_bytes(rust_hello_zip)
    log = tmp_path / "serve.log"
    r = run_ember(
        ember_bin, "bench", "load", "--serve", "--rate", "20", "--seconds", "2", "--warmup", "0",
        "--memory-mb", "128", "--rust-zip", str(zip_path), "--runtime-dir", str(RUNTIME_DIR),
        "--server-log", str(log), "--json", "--", "--scheduling", "other", timeout=180,
    )
    assert r.returncode == 0, r.stderr + log.read_text()
    report = json.loads(r.stdout)
    assert_plausible(report, 20, 2)
    server = report["server"]
    assert (server["started"], server["args"]) == (True, ["--scheduling", "other"])
    # The server it started is gone with it.
    assert not os.path.exists(f"/proc/{server['pid']}"), server

    # The options do reach `ember serve`: one it refuses stops the benchmark, naming the log.
    r = run_ember(
        ember_bin, "bench", "load", "--serve", "--rate", "20", "--seconds", "1",
        "--rust-zip", str(zip_path), "--runtime-dir", str(RUNTIME_DIR), "--server-log", str(log),
        "--", "--scheduling", "bogus", timeout=180,
    )
    assert r.returncode != 0
    assert "the server exited" in r.stderr and str(log) in r.stderr, r.stderr
    assert "invalid value 'bogus' for '--scheduling" in log.read_text()


def test_server_options_need_serve(ember_bin):
    from ember_e2e import run_ember

    r = run_ember(ember_bin, "bench", "load", "--rate", "10", "--seconds", "1", "--",
                  "--scheduling", "other")
    assert r.returncode != 0
    assert "--serve" in r.stderr, r.stderr
