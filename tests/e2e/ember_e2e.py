"""Helpers of Ember's end-to-end tests: a running `ember serve`, clients of it, and code packages.

conftest.py turns these into fixtures; test modules import the plain helpers from here (not from
conftest, which pytest advises against).
"""

from __future__ import annotations

import base64
import configparser
import datetime
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from unittest import mock

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.exceptions
from botocore.config import Config

import backend

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/ember-e2e"
LAST_MODIFIED_RE = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000$"
START_TIMEOUT_S = 20
STOP_TIMEOUT_S = 10
CLI_TIMEOUT_S = 60

REPO = Path(__file__).resolve().parents[2]
# Runtime software (awslambdaric) is provisioned once into this directory and shared by every
# server the tests start.
RUNTIME_DIR = Path(os.environ.get("EMBER_E2E_RUNTIME_DIR") or REPO / "target" / "e2e-runtimes")

# A minimal Python handler, the usual content of the packages the tests upload.
HANDLER_PY = "def handler(event, context):\n    return {'ok': True}\n"


# ---- code packages --------------------------------------------------------------------------


def make_zip(files: dict[str, bytes | str], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip, in memory, of `files` (name -> content). Names are written exactly as given."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, content in files.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = compression
            info.external_attr = 0o100644 << 16
            zf.writestr(info, content)
    return buf.getvalue()


def handler_zip(tag: str = "") -> bytes:
    """A valid Python package; different tags give different bytes (and so different sha256)."""
    return make_zip({"app.py": HANDLER_PY + f"# {tag}\n"})


def code_sha256(zip_bytes: bytes) -> str:
    """CodeSha256 as Lambda reports it: base64 of the zip's raw SHA-256 digest."""
    return base64.b64encode(hashlib.sha256(zip_bytes).digest()).decode()


def sha256_hex(zip_bytes: bytes) -> str:
    return hashlib.sha256(zip_bytes).hexdigest()


# ---- processes ------------------------------------------------------------------------------


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: no AWS_* or EMBER_* settings leak in from the
    developer's shell, and AWS config files are kept out of reach."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_") and not k.startswith("EMBER_")
    }
    env["AWS_CONFIG_FILE"] = os.devnull
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    env.update(extra)
    return env


def one_line(text: str) -> bool:
    return len(text.strip().splitlines()) == 1


class EmberServer:
    """One `ember serve` child process on a data dir, with clients of it."""

    def __init__(self, ember_bin: Path, data_dir: Path, log_path: Path,
                 extra_args: tuple[str, ...] = ()):
        self.ember_bin = ember_bin
        self.extra_args = tuple(extra_args)
        self.data_dir = data_dir
        self.log_path = log_path
        # Set by `start` from what the server reports (`<data-dir>/endpoint`,
        # `<data-dir>/metrics-endpoint`): it binds port 0, and the kernel picks a free port.
        self.endpoint = ""
        self.port = 0
        self.metrics_endpoint: str | None = None
        self.proc: subprocess.Popen | None = None
        self._log = None
        # More environment for `ember serve` (e.g. AWS credentials for `--blobs s3://`).
        self.extra_env: dict[str, str] = {}
        # Where it listens, and what runs it (e.g. `nsenter --net=…`, for a server in a
        # network namespace of its own: tests/e2e/netns.py).
        self.listen_host = "127.0.0.1"
        self.command_prefix: tuple[str, ...] = ()

    # -- lifecycle --

    @property
    def credentials_path(self) -> Path:
        return self.data_dir / "credentials"

    @property
    def endpoint_path(self) -> Path:
        """Where a listening server writes its API's URL (README, Configuration)."""
        return self.data_dir / "endpoint"

    @property
    def metrics_endpoint_path(self) -> Path:
        """Where a server with `--metrics-listen` writes its metrics listener's URL."""
        return self.data_dir / "metrics-endpoint"

    def start(self) -> "EmberServer":
        """Starts `ember serve --listen 127.0.0.1:0` and waits until it has written the URL
        it listens on (after binding, so the port is taken by then: no other process can race
        for it) and its credentials. The server runs in a process group of its own, as a
        daemon would, so a signal meant for pytest never reaches it by accident."""
        assert self.proc is None or self.proc.poll() is not None, "server is already running"
        # A SIGKILLed predecessor's files name a port nobody listens on any more; the server
        # removes them at start, but only once it holds the data dir's lock.
        for path in (self.endpoint_path, self.metrics_endpoint_path):
            path.unlink(missing_ok=True)
        # On a shared backend (EMBER_E2E_BACKEND, backend.py), the data dir's own database and
        # prefix, unless `extra_args` choose a backend.
        backend.check_own_backend(self.extra_args)
        shared_args, shared_env = ((), {}) if backend.shared is None else \
            backend.shared.serve_args(self.data_dir, self.extra_args)
        self._log = open(self.log_path, "ab")
        on = " ".join((str(self.data_dir), *shared_args))
        self._log.write(f"\n===== ember serve on {on} =====\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            [
                *self.command_prefix,
                str(self.ember_bin),
                "serve",
                "--listen",
                f"{self.listen_host}:0",
                "--data-dir",
                str(self.data_dir),
                "--runtime-dir",
                str(RUNTIME_DIR),
                *self.extra_args,
                *shared_args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # The agents' info lines too (why a container did not fork from its template, ...),
            # for the log a failed test prints.
            env=clean_env(EMBER_LOG="info", EMBER_AGENT_LOG="ember_agent=info",
                          **{**shared_env, **self.extra_env}),
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise AssertionError(
                    f"ember serve exited with {rc} while starting:\n{self.log_text()}"
                )
            if self.endpoint_path.exists() and self.credentials_path.exists():
                self.endpoint = self.endpoint_path.read_text().strip()
                host, _, port = self.endpoint.removeprefix("http://").rpartition(":")
                assert host == self.listen_host and port.isdigit(), self.endpoint
                self.port = int(port)
                if self.metrics_endpoint_path.exists():
                    self.metrics_endpoint = self.metrics_endpoint_path.read_text().strip()
                self._log.write(f"===== listening on {self.endpoint} =====\n".encode())
                self._log.flush()
                return self
            time.sleep(0.05)
        self.kill()
        raise AssertionError(
            f"ember serve did not write {self.endpoint_path} within {START_TIMEOUT_S}s:\n"
            f"{self.log_text()}"
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: signal.Signals | str = signal.SIGTERM, group: bool = False) -> int:
        """Sends `sig` (a signal or its name; SIGTERM by default) and returns the exit code;
        fails if the server takes more than 10 s to exit. `group=True` sends it to the server's
        whole process group (its VMs' agents too), as a terminal's Ctrl-C does."""
        assert self.proc is not None
        if isinstance(sig, str):
            sig = signal.Signals[sig]
        if self.proc.poll() is None:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(
                    f"ember serve did not exit within {STOP_TIMEOUT_S}s of {sig.name}:\n"
                    f"{self.log_text()}"
                )
        self._close_log()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would stop it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"

    def stored_blobs(self) -> set[str]:
        """The code packages its blob store holds, as paths under the store's root
        (`sha256/ab/ab…`): files under DATA_DIR/blobs, or keys in the shared bucket (backend.py)."""
        return backend.stored_blobs(self.data_dir, self.extra_args)

    # -- keys and accounts --

    def admin_keys(self) -> dict[str, str]:
        cp = configparser.ConfigParser()
        cp.read(self.credentials_path)
        section = cp["default"]
        return {
            "AccessKeyId": section["aws_access_key_id"],
            "SecretAccessKey": section["aws_secret_access_key"],
        }

    def run_ember(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return run_ember(self.ember_bin, *args, **kwargs)

    def make_account(self, name: str) -> dict[str, str]:
        r = self.run_ember("accounts", "create", name, "--json", "--data-dir", str(self.data_dir))
        assert r.returncode == 0, f"accounts create {name} failed: {r.stderr}"
        account = json.loads(r.stdout)
        assert set(account) == {"AccountId", "AccessKeyId", "SecretAccessKey"}, account
        assert len(account["AccountId"]) == 12 and account["AccountId"].isdigit(), account
        return account

    # -- clients --

    def lambda_client(self, keys: dict[str, str] | None = None, validate: bool = True):
        """A boto3 Lambda client. `validate=False` turns off botocore's client-side parameter
        checks, so that what is tested is the server's validation."""
        keys = keys or self.admin_keys()
        return boto3.client(
            "lambda",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=keys["AccessKeyId"],
            aws_secret_access_key=keys["SecretAccessKey"],
            config=Config(
                retries={"max_attempts": 1, "mode": "standard"},
                parameter_validation=validate,
                connect_timeout=5,
                read_timeout=60,
            ),
        )

    def aws(self, *args: str, keys: dict[str, str] | None = None, cwd: Path | None = None):
        """Runs the real AWS CLI against this server: (rc, stdout as JSON or text, stderr)."""
        keys = keys or self.admin_keys()
        aws_bin = Path(sys.executable).parent / "aws"
        assert aws_bin.exists(), f"the AWS CLI is not installed next to {sys.executable}"
        env = clean_env(
            AWS_ACCESS_KEY_ID=keys["AccessKeyId"],
            AWS_SECRET_ACCESS_KEY=keys["SecretAccessKey"],
            AWS_DEFAULT_REGION=REGION,
            AWS_MAX_ATTEMPTS="1",
            AWS_PAGER="",
        )
        r = subprocess.run(
            [str(aws_bin), *args, "--endpoint-url", self.endpoint],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=CLI_TIMEOUT_S,
        )
        out: object = r.stdout
        if r.stdout.strip():
            try:
                out = json.loads(r.stdout)
            except ValueError:
                pass
        return r.returncode, out, r.stderr


def run_ember(ember_bin: Path, *args: str, env: dict[str, str] | None = None,
              timeout: float = CLI_TIMEOUT_S, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Runs the `ember` CLI with a clean environment plus `env` (on a shared backend, a
    command naming a data dir gets that data dir's store: backend.py)."""
    shared_env = {} if backend.shared is None else backend.shared.cli_env(args)
    return subprocess.run(
        [str(ember_bin), *args],
        capture_output=True,
        text=True,
        env=clean_env(**{**shared_env, **(env or {})}),
        timeout=timeout,
        cwd=cwd,
    )


class ServerFactory:
    """Starts `ember serve` processes in fresh (or given) data dirs and stops them all, each with
    SIGTERM and a clean exit, at teardown."""

    def __init__(self, ember_bin: Path, tmp_dir: Path):
        self.ember_bin = ember_bin
        self.tmp_dir = tmp_dir
        self.servers: list[EmberServer] = []

    def __call__(self, data_dir: Path | None = None, *extra_args: str) -> EmberServer:
        """A server on `data_dir` (a fresh one by default), with `extra_args` for `ember serve`."""
        n = len(self.servers)
        data_dir = data_dir or self.tmp_dir / f"data{n}"
        server = EmberServer(self.ember_bin, data_dir, self.tmp_dir / f"serve{n}.log", extra_args)
        self.servers.append(server)
        return server.start()

    def close(self) -> None:
        failures = []
        for server in self.servers:
            if server.running:
                rc = server.stop()
                if rc != 0:
                    failures.append(f"ember serve on {server.endpoint} exited with {rc} on SIGTERM:"
                                    f"\n{server.log_text()}")
        if backend.shared is not None:
            backend.shared.release(self.tmp_dir)
        assert not failures, "\n".join(failures)


# ---- raw signed requests --------------------------------------------------------------------


@contextmanager
def skewed_clock(skew: datetime.timedelta) -> Iterator[None]:
    """Makes botocore's SigV4 signer believe the time is now + skew.

    botocore.auth reads the clock through `get_current_datetime` (recent releases) or
    `datetime.datetime.utcnow()` (older ones); whichever the installed version uses is patched.
    """
    if hasattr(botocore.auth, "get_current_datetime"):
        real = botocore.auth.get_current_datetime

        def fake(*args, **kwargs):
            return real(*args, **kwargs) + skew

        with mock.patch.object(botocore.auth, "get_current_datetime", fake):
            yield
    else:
        real_datetime = datetime.datetime

        class Skewed(real_datetime):
            @classmethod
            def utcnow(cls):
                return real_datetime.utcnow() + skew

        with mock.patch.object(botocore.auth.datetime, "datetime", Skewed):
            yield


class RawResponse:
    def __init__(self, status: int, headers, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)


def send(method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> RawResponse:
    """Sends one HTTP request with urllib; HTTP errors are returned, not raised."""
    data = body if body or method in ("POST", "PUT") else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return RawResponse(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as e:
        return RawResponse(e.code, e.headers, e.read())


def sign(method: str, url: str, body: bytes, keys: dict[str, str],
         service: str = "lambda", region: str = REGION) -> dict[str, str]:
    """SigV4 headers for a request, made by botocore's own signer."""
    request = botocore.awsrequest.AWSRequest(method=method, url=url, data=body,
                                             headers={"Content-Type": "application/json"})
    creds = botocore.credentials.Credentials(keys["AccessKeyId"], keys["SecretAccessKey"])
    botocore.auth.SigV4Auth(creds, service, region).add_auth(request)
    return dict(request.headers.items())


def client_error(excinfo) -> tuple[str, int, dict]:
    """(error code, HTTP status, response headers) of a botocore ClientError."""
    e = excinfo.value
    assert isinstance(e, botocore.exceptions.ClientError), e
    meta = e.response["ResponseMetadata"]
    return e.response["Error"]["Code"], meta["HTTPStatusCode"], meta["HTTPHeaders"]


def download(url: str) -> bytes:
    """GETs a URL without any credentials."""
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.status == 200
        return resp.read()


def config_of(response: dict) -> dict:
    """A FunctionConfiguration response without boto3's ResponseMetadata."""
    return {k: v for k, v in response.items() if k != "ResponseMetadata"}


FLEET_PATH = "/ember/v1/fleet"


def fleet_response(server, keys=None) -> RawResponse:
    """`GET /ember/v1/fleet`, signed by `keys` (the admin's by default)."""
    url = server.endpoint + FLEET_PATH
    return send("GET", url, headers=sign("GET", url, b"", keys or server.admin_keys()))


def fleet(server) -> dict:
    """The server's fleet view, as the admin sees it."""
    resp = fleet_response(server)
    assert resp.status == 200, (resp.status, resp.body)
    return resp.json()


def wait_fleet(server, predicate, timeout=10.0, what="the fleet to settle") -> dict:
    """Polls the fleet until `predicate(fleet)` holds; fails with the last one seen."""
    deadline = time.monotonic() + timeout
    while True:
        seen = fleet(server)
        if predicate(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {json.dumps(seen, indent=1)}")
        time.sleep(0.05)


# ---- managed runtimes ------------------------------------------------------------------------

def host_node_runtime() -> str | None:
    """`nodejsN.x` of the host's first `node` on PATH (the runtime Ember finds for it), if any."""
    node = shutil.which("node")
    if node is None:
        return None
    version = subprocess.run([node, "--version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    return f"nodejs{version.removeprefix('v').split('.')[0]}.x"


def wait_runtimes_ready(server: "EmberServer", timeout: float) -> list[str]:
    """Waits until `server` has provisioned every managed runtime it found (`python3.N`,
    `nodejsN.x`: its log says `runtime ready` for each) and returns them. Provisioning happens
    once into the shared RUNTIME_DIR (under a lock), so later servers find it done. Fails with
    the server's reason when one cannot be provisioned."""
    deadline = time.monotonic() + timeout
    found: list[str] | None = None
    while time.monotonic() < deadline:
        text = re.sub(r"\x1b\[[0-9;]*m", "", server.log_text())
        if found is None:
            line = re.search(r"runtimes found.*", text)
            if line:
                found = re.findall(r"(python3\.\d+|nodejs\d+\.x) \(", line.group(0))
        if found is not None:
            failed = [l for l in text.splitlines() if "runtime not ready" in l]
            assert not failed, "a managed runtime cannot be provisioned:\n" + "\n".join(failed)
            ready = set(re.findall(r'runtime ready runtime="?([\w.]+)', text))
            if set(found) <= ready:
                return found
        time.sleep(0.5)
    raise AssertionError(
        f"the managed runtimes {found} were not provisioned within {timeout}s:\n{server.log_text()}"
    )


def vm_processes(server: "EmberServer", matches) -> dict[int, str]:
    """The host processes in `server`'s VMs whose command line (a list of bytes) `matches`,
    each with the name of its VM's cgroup (the first directory under the server's own)."""
    prefix = "/ember/" + hashlib.sha256(str(server.data_dir.resolve()).encode()).hexdigest()[:12] + "/"
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            cgroups = (proc / "cgroup").read_text()
        except OSError:
            continue
        if not matches(cmdline):
            continue
        for line in cgroups.splitlines():
            path = line.split(":", 2)[2]
            if path.startswith(prefix):
                found[int(proc.name)] = path[len(prefix):].split("/", 1)[0]
                break
    return found


def wait_templates_replaced(server: "EmberServer", template_pids, killed: dict[int, str],
                            timeout: float = 20.0) -> None:
    """Waits until every VM whose template (of `killed`, pid to VM) was killed runs a new one,
    started by the VM itself: `template_pids(server)` lists the live ones."""
    deadline = time.monotonic() + timeout
    while True:
        back = {vm for pid, vm in template_pids(server).items() if pid not in killed}
        # A VM the fleet retired meanwhile (idle, or its account's last container gone) has no
        # process left and needs no template.
        running = set(vm_processes(server, lambda argv: True).values())
        if set(killed.values()) & running <= back:
            return
        assert time.monotonic() < deadline, \
            f"templates {killed} were not replaced in {timeout} s: {template_pids(server)}"
        time.sleep(0.1)


def kill_templates_and_check_they_return(server: "EmberServer", template_pids, probe,
                                         forked_probe) -> None:
    """Kills every runtime template of `server` (`template_pids(server)`: pid to VM), then
    checks that a container created meanwhile works (`probe(server, name)`), that each VM starts
    its template again by itself, and that containers fork from it again
    (`forked_probe(server, name)`)."""
    forked_probe(server, "before-kill")
    killed = template_pids(server)
    assert killed, "no template process found"
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    payload, _ = probe(server, "after-kill")
    assert "environ" in payload
    wait_templates_replaced(server, template_pids, killed)
    forked_probe(server, "restarted")
