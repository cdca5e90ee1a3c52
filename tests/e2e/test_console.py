"""The web console, end to end: its assets as `ember serve` serves them (precompressed, cached,
under a Content Security Policy), `--no-console` and `--console-listen`, the committed bundle
being the build of console/src, and the console driven in a real browser (Debian's Chromium
through playwright-core, console/console.mjs): sign in, invoke and see the result, watch a log
line arrive, see the fleet page move after an invocation, and another account's function
nowhere. Screenshots are kept in target/e2e-artifacts/console/ (README shows two)."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ember_e2e import REPO, ROLE, make_zip

pytestmark = pytest.mark.needs_root  # the invocations run in VMs

HERE = Path(__file__).resolve().parent
ARTIFACTS = REPO / "target" / "e2e-artifacts" / "console"
ECHO_PY = (
    "import json\n"
    "def handler(event, context):\n"
    "    print('event', json.dumps(event))\n"
    "    if event.get('fail'):\n"
    "        raise ValueError('asked to fail')\n"
    "    return {'echo': event}\n"
)


SIZING_THRESHOLD = 3


@pytest.fixture(scope="module")
def server(module_server_factory):
    """The module's server, sizing in `auto` mode after a few executions, so that the sizing
    page has a decision to show."""
    return module_server_factory(None, "--sizing-mode", "auto",
                                 "--sizing-threshold", str(SIZING_THRESHOLD))


def get(url: str, headers: dict[str, str] | None = None):
    """(status, headers, body) of a GET, without following redirects."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with opener.open(request, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def install() -> None:
    r = subprocess.run([str(HERE / "console" / "install.sh")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"installing playwright-core and the console's tools failed:\n{r.stderr}"


def test_assets_are_precompressed_cached_and_under_a_policy(server):
    status, headers, body = get(f"{server.endpoint}/console")
    assert status == 308 and headers["Location"] == "/console/"
    status, headers, shell = get(f"{server.endpoint}/console/")
    assert status == 200, shell
    assert headers["Content-Type"].startswith("text/html")
    assert headers["Cache-Control"] == "no-cache"
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe" not in csp and "frame-ancestors 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    html = shell.decode()
    assert "<script>" not in html, "no inline script"
    names = re.findall(r'(?:src|href)="/console/([^"]+)"', html)
    assert len(names) == 2, html
    for name in names:
        assert re.fullmatch(r"app\.[0-9a-f]{10}\.(js|css)", name), name
        status, headers, plain = get(f"{server.endpoint}/console/{name}")
        assert status == 200 and "Content-Encoding" not in headers
        assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
        status, headers, gz = get(f"{server.endpoint}/console/{name}",
                                  {"Accept-Encoding": "gzip"})
        assert headers["Content-Encoding"] == "gzip" and gzip.decompress(gz) == plain
        status, headers, br = get(f"{server.endpoint}/console/{name}",
                                  {"Accept-Encoding": "gzip, deflate, br"})
        assert headers["Content-Encoding"] == "br" and len(br) < len(gz)
        assert headers["Vary"] == "Accept-Encoding"
    status, _, _ = get(f"{server.endpoint}/console/app.0000000000.js")
    assert status == 404
    status, headers, body = get(f"{server.endpoint}/console/config.json")
    assert status == 200 and json.loads(body) == {"Region": "us-east-1"}


def test_the_console_routes_need_a_signature(server):
    status, _, body = get(f"{server.endpoint}/ember/v1/console/whoami")
    assert status == 403 and b"Missing Authentication Token" in body


def signed_get(server, path: str, keys: dict[str, str]):
    from ember_e2e import sign

    url = f"{server.endpoint}{path}"
    return get(url, sign("GET", url, b"", keys))


def test_the_fleet_history_is_sampled_for_the_admin_only(server):
    admin = server.admin_keys()
    deadline = time.monotonic() + 15
    while True:
        status, _, body = signed_get(server, "/ember/v1/console/fleet-history", admin)
        assert status == 200, body
        history = json.loads(body)
        if len(history["Samples"]) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert history["IntervalSeconds"] == 2
    first, second = history["Samples"][:2]
    assert 1500 <= second["Time"] - first["Time"] <= 4000, history["Samples"][:2]
    assert set(first) == {"Time", "RequestRatePerSecond", "ReplenishCount", "WarmingVms",
                          "ActiveVms", "RetiringVms", "HostMemoryMB", "ReservedMemoryMB",
                          "Starts"}
    assert first["HostMemoryMB"] > 0 and set(first["Starts"]) == {"Warm", "ColdContainer", "ColdVm"}
    other = server.make_account("console-history")
    status, headers, body = signed_get(server, "/ember/v1/console/fleet-history", other)
    assert status == 403 and headers["x-amzn-ErrorType"].startswith("AccessDeniedException"), body


def test_no_console_turns_it_off_and_console_listen_moves_it(server_factory, tmp_path):
    off = server_factory(None, "--no-console")
    # An unknown path to the API then, answered as any other unsigned request.
    status, _, body = get(f"{off.endpoint}/console/")
    assert status == 403 and b"Missing Authentication Token" in body
    assert "The web console is at" not in off.log_text()
    assert get(f"{off.endpoint}/ember/v1/health")[0] == 200, "the API is unchanged"

    moved = server_factory(None, "--console-listen", "127.0.0.1:0")
    match = None
    deadline = time.monotonic() + 10
    while match is None and time.monotonic() < deadline:
        match = re.search(r"The web console is at (http://127\.0\.0\.1:\d+)/console/",
                          moved.log_text())
        time.sleep(0.05)
    assert match, moved.log_text()
    console = match.group(1)
    assert console != moved.endpoint
    assert get(f"{console}/console/")[0] == 200
    assert get(f"{moved.endpoint}/console/")[0] == 403, "not on the API's listener any more"
    # The API the console calls is on its listener too (the same origin).
    status, _, body = get(f"{console}/ember/v1/console/whoami")
    assert status == 403 and b"Missing Authentication Token" in body


def test_the_committed_bundle_is_the_build_of_console_src():
    install()
    r = subprocess.run(["node", str(REPO / "console" / "build.mjs"), "--check"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_in_a_browser(server, tmp_path):
    install()
    admin = server.admin_keys()
    other = server.make_account("console-other")
    lam = server.lambda_client(admin)
    theirs = server.lambda_client(other)
    code = make_zip({"app.py": ECHO_PY})
    for client, name in ((lam, "console-echo"), (theirs, "console-theirs")):
        client.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                               Handler="app.handler", Code={"ZipFile": code}, MemorySize=256)
    # Over-provisioned (a few MB used of 256): sizing shrinks it after the threshold.
    for i in range(SIZING_THRESHOLD + 1):
        r = lam.invoke(FunctionName="console-echo", Payload=json.dumps({"warmup": i}).encode())
        assert "FunctionError" not in r, r["Payload"].read()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    env = dict(os.environ, EMBER_URL=server.endpoint, EMBER_ADMIN=json.dumps(admin),
               EMBER_OTHER=json.dumps(other), EMBER_FN="console-echo",
               EMBER_OTHER_FN="console-theirs", EMBER_SHOTS=str(shots))
    r = subprocess.run(["node", str(HERE / "console" / "console.mjs")], env=env,
                       capture_output=True, text=True, timeout=300)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for png in shots.glob("*.png"):
        shutil.copy(png, ARTIFACTS / png.name)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n--- server log ---\n{server.log_text()[-4000:]}"
    for name in ("functions", "function", "logs", "fleet", "sizing"):
        png = (shots / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000, name


SIGN_JS = """
import { sign, signingKey, canonicalQuery } from %s;
const c = JSON.parse(process.argv[1]);
const date = c.amz.slice(0, 8);
const now = new Date(Date.UTC(+c.amz.slice(0, 4), +c.amz.slice(4, 6) - 1, +c.amz.slice(6, 8),
  +c.amz.slice(9, 11), +c.amz.slice(11, 13), +c.amz.slice(13, 15)));
const creds = { accessKeyId: c.id, region: 'us-east-1', date, key: signingKey(c.secret, date, 'us-east-1') };
const headers = sign({ method: c.method, host: c.host, path: c.path,
  query: canonicalQuery(c.query), body: new TextEncoder().encode(c.body) }, creds, now);
console.log(headers.Authorization);
"""


@pytest.mark.parametrize("method,path,query,body", [
    ("GET", "/2015-03-31/functions", [["MaxItems", "50"], ["Marker", "a b/c+d=="]], ""),
    ("POST", "/2015-03-31/functions/echo/invocations", [], '{"marker": "\u00e9t\u00e9 \u2603"}'),
    ("GET", "/ember/v1/functions/echo/logs", [["Limit", "1000"], ["After", "42"]], ""),
    ("GET", "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Aecho",
     [["Qualifier", "$LATEST"]], ""),
])
def test_the_browser_signs_as_botocore_does(method, path, query, body):
    """The console's SigV4 (console/src/sigv4.js) and botocore's give the same Authorization for
    the same request: what the server verifies for boto3 it verifies for the browser."""
    import urllib.parse

    import botocore.auth
    import botocore.awsrequest
    import botocore.credentials

    install()
    keys = {"AccessKeyId": "AKIDEXAMPLE", "SecretAccessKey": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}
    qs = urllib.parse.urlencode([tuple(p) for p in query], quote_via=urllib.parse.quote)
    url = f"http://127.0.0.1:8900{path}" + (f"?{qs}" if qs else "")
    request = botocore.awsrequest.AWSRequest(method=method, url=url, data=body.encode())
    creds = botocore.credentials.Credentials(keys["AccessKeyId"], keys["SecretAccessKey"])
    botocore.auth.SigV4Auth(creds, "lambda", "us-east-1").add_auth(request)
    expected = request.headers["Authorization"]
    assert "SignedHeaders=host;x-amz-date," in expected, expected
    case = {"id": keys["AccessKeyId"], "secret": keys["SecretAccessKey"], "method": method,
            "host": "127.0.0.1:8900", "path": path, "query": query, "body": body,
            "amz": request.headers["X-Amz-Date"]}
    module = json.dumps((REPO / "console" / "src" / "sigv4.js").as_uri())
    r = subprocess.run(["node", "--input-type=module", "-e", SIGN_JS % module, json.dumps(case)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expected
