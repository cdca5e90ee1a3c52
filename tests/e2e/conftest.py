"""Fixtures of Ember's end-to-end tests: the `ember` binary, `ember serve` processes in temporary
data dirs, and the clients that drive them (boto3, the AWS CLI, the ember CLI).

Each test module gets its own server (`server`); tests that stop, kill or restart servers start
their own with `server_factory`. A failing test shows the logs of the servers it used.

Tests marked `needs_root` (VMs, mounts) fail without root, as the Rust ones do, unless
EMBER_TEST_UNPRIVILEGED=1 says that skipping them is intended. pytest.ini gives every test a
deadline (pytest-timeout); scripts/test runs the suite in a random order (pytest-randomly).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import backend  # noqa: E402
from ember_e2e import EmberServer, ServerFactory, wait_runtimes_ready  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# Provisioning every managed runtime into a new runtime dir: about 2 minutes on a quiet 2-core
# machine, Node.js's native build the longest.
RUNTIMES_READY_S = 900


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """A test that needs root fails loudly without it (before its fixtures start a server)."""
    if item.get_closest_marker("needs_root") is None or os.geteuid() == 0:
        return
    if os.environ.get("EMBER_TEST_UNPRIVILEGED") == "1":
        pytest.skip("not root and EMBER_TEST_UNPRIVILEGED=1: skipping this privileged test")
    pytest.fail("this test needs root (CI runs as root); set EMBER_TEST_UNPRIVILEGED=1 to skip it",
                pytrace=False)


@pytest.fixture(scope="session")
def ember_bin() -> Path:
    """The `ember` binary under test: $EMBER_BIN, or the workspace's debug build."""
    path = Path(os.environ.get("EMBER_BIN") or REPO / "target" / "debug" / "ember")
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"ember binary not found at {path}: run `cargo build -p ember` or set EMBER_BIN",
            pytrace=False,
        )
    return path


def pytest_configure(config):
    try:
        backend.choice()  # an unknown EMBER_E2E_BACKEND stops the run before anything starts
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None


def pytest_report_header(config):
    return f"{backend.VARIABLE}={backend.choice()} (tests/e2e/backend.py)"


OWN_BACKEND_REASON = ("starts every server on a store or blob store of its own choosing (--store, "
                      "--blobs): the same run on both passes, so the embedded one covers it")


def pytest_collection_modifyitems(config, items):
    """On a shared backend (EMBER_E2E_BACKEND), deselects the tests marked
    `embedded_only(reason)`, whose subject is the embedded layout (SQLite's file, the blob dir),
    and those marked `own_backend`, which choose their backends themselves and so would run
    exactly as on the embedded pass: named in the terminal summary with their reasons, never
    skipped silently. An `embedded_only` without a reason is an error."""
    kept, dropped = [], []
    for item in items:
        reason = None
        mark = item.get_closest_marker("embedded_only")
        if mark is not None:
            if not (mark.args and isinstance(mark.args[0], str) and mark.args[0].strip()):
                raise pytest.UsageError(f"{item.nodeid}: embedded_only needs a reason: "
                                        "@pytest.mark.embedded_only(\"why\")")
            reason = f"embedded_only: {mark.args[0]}"
        elif item.get_closest_marker("own_backend") is not None:
            reason = f"own_backend: {OWN_BACKEND_REASON}"
        if reason is not None and backend.choice() != "embedded":
            dropped.append((item, reason))
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=[item for item, _ in dropped])
        items[:] = kept
        config._ember_not_on_shared = [(item.nodeid, reason) for item, reason in dropped]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    dropped = getattr(config, "_ember_not_on_shared", [])
    if dropped:
        terminalreporter.section(f"not run on {backend.VARIABLE}={backend.choice()} (README, Tests)")
        for nodeid, reason in dropped:
            terminalreporter.line(f"{nodeid}: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """While a test marked `own_backend` runs (its fixtures too), a server it starts on the
    default backend fails it: the mark must stay true (ember_e2e.EmberServer.start)."""
    marked = item.get_closest_marker("own_backend") and not item.get_closest_marker("embedded_only")
    backend.own_backend_test = item.nodeid if marked else None
    yield
    backend.own_backend_test = None


def pytest_sessionfinish(session, exitstatus):
    backend.stop()


def pytest_sessionstart(session):
    """Provisions the host's managed runtimes (`python3.N` with awslambdaric and boto3,
    `nodejsN.x` with aws-lambda-ric, whose native build takes over a minute, and the AWS SDK for
    JavaScript v3) into the shared runtime dir once, before any test: a server that a test stops
    early would otherwise stop that work with it, and the next one start it again. Here, not in a
    fixture, so that the first test's deadline (pytest-timeout) is not spent on it."""
    if session.config.option.collectonly:
        return
    path = Path(os.environ.get("EMBER_BIN") or REPO / "target" / "debug" / "ember")
    if not (path.is_file() and os.access(path, os.X_OK)):
        return  # every test fails on `ember_bin`, saying why
    try:
        shared = backend.start()
    except BaseException as e:  # noqa: BLE001 - any failure to start them ends the run
        pytest.exit(f"cannot start the shared backend of {backend.VARIABLE}={backend.choice()}: {e}",
                    returncode=1)
    if shared is not None:
        print(f"\n{backend.VARIABLE}={backend.choice()}: every server on {shared.describe()}")
    factory = ServerFactory(path, Path(tempfile.mkdtemp(prefix="ember-provision-")))
    try:
        wait_runtimes_ready(factory(), timeout=RUNTIMES_READY_S)
    except AssertionError as e:
        pytest.exit(f"cannot provision the managed runtimes: {e}", returncode=1)
    finally:
        factory.close()
        shutil.rmtree(factory.tmp_dir, ignore_errors=True)


@pytest.fixture
def server_factory(ember_bin, tmp_path):
    """Starts servers for one test: `server_factory()` in a fresh data dir, or
    `server_factory(data_dir)` on an existing one. All are stopped with SIGTERM at teardown and
    must exit 0 within 10 s."""
    factory = ServerFactory(ember_bin, tmp_path)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def module_server_factory(ember_bin, tmp_path_factory, request):
    factory = ServerFactory(ember_bin, tmp_path_factory.mktemp(request.module.__name__))
    yield factory
    factory.close()


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The stand-in for the outside world (world.py): a network namespace of its own, routed
    from the host, with an HTTP server on ports 80 and 8080 and dnsmasq answering `world.test`.
    Servers reach it by name when started with `--dns <world.ip>`. Removed at the session's end
    (namespace, link, processes)."""
    from world import World

    w = World.create(tmp_path_factory.mktemp("world"))
    yield w
    w.close()


@pytest.fixture(scope="module")
def server(module_server_factory) -> EmberServer:
    """One server shared by the tests of a module; tests use distinct function names."""
    return module_server_factory()


@pytest.fixture(scope="module")
def admin(server):
    """A boto3 Lambda client of the module server's admin account."""
    return server.lambda_client(server.admin_keys())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the output of every server the test used."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    funcargs = getattr(item, "funcargs", {}) or {}
    servers: list[EmberServer] = []
    for value in funcargs.values():
        if isinstance(value, EmberServer):
            servers.append(value)
        elif isinstance(value, ServerFactory):
            servers.extend(value.servers)
    seen = set()
    for s in servers:
        if s.log_path in seen:
            continue
        seen.add(s.log_path)
        text = s.log_text()
        if len(text) > 20_000:
            text = "...\n" + text[-20_000:]
        report.sections.append((f"ember serve log ({s.data_dir})", text))


FUNCTIONS = REPO / "tests" / "functions"


@pytest.fixture(scope="session")
def rust_hello_zip() -> bytes:
    """The Rust test function (built with the real `lambda_runtime` crate) as a Lambda zip:
    $EMBER_RUST_HELLO_ZIP, or built now by tests/functions/rust-hello/build.sh."""
    given = os.environ.get("EMBER_RUST_HELLO_ZIP")
    if given:
        return Path(given).read_bytes()
    out = subprocess.run(
        [str(FUNCTIONS / "rust-hello" / "build.sh")],
        check=True, capture_output=True, text=True, timeout=900,
    ).stdout.strip().splitlines()[-1]
    return Path(out).read_bytes()


@pytest.fixture(scope="session")
def python_app_zip() -> bytes:
    """tests/functions/python as a Lambda zip (handlers `app.handler`, `bad_import.handler`)."""
    from ember_e2e import make_zip

    files = {p.name: p.read_bytes() for p in sorted((FUNCTIONS / "python").glob("*.py"))}
    return make_zip(files)
