"""RESPONSE_STREAM function URLs, end to end: the Rust `lambda_runtime` function's streamed
response reaches `curl -N` and a raw socket reader chunk by chunk as the function writes it; its
HTTP integration prelude (status, headers, cookies) becomes the HTTP response's head; a function
that fails before its response begins is a 502, one that fails after has its body cut; a runtime
that does not stream (awslambdaric) is answered as a buffered URL would be; and a BUFFERED URL of
the same streaming function still buffers."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import time
import urllib.parse
import zipfile
from pathlib import Path

import pytest

from ember_e2e import ROLE, make_zip, send

pytestmark = pytest.mark.needs_root  # VMs need root; without it the tests fail (conftest.py)

PROVIDED_PY = Path(__file__).resolve().parents[1] / "functions" / "provided-py" / "bootstrap"
TEN_CHUNKS = {"stream": {"chunks": 10, "interval_ms": 100}}


def public_url(lam, name, mode, **extra):
    config = lam.create_function_url_config(FunctionName=name, AuthType="NONE", InvokeMode=mode,
                                            **extra)
    lam.add_permission(FunctionName=name, StatementId=f"public-{mode}",
                       Action="lambda:InvokeFunctionUrl", Principal="*",
                       FunctionUrlAuthType="NONE")
    return config


def path_url(server, config, path="/") -> str:
    """The URL's path form on the API's port."""
    url_id = urllib.parse.urlsplit(config["FunctionUrl"]).hostname.split(".")[0]
    return f"{server.endpoint}/ember/v1/urls/{url_id}{path}"


@pytest.fixture(scope="module")
def rust_fn(admin, rust_hello_zip):
    admin.create_function(FunctionName="url-rust", Runtime="provided.al2023", Role=ROLE,
                          Handler="bootstrap", Code={"ZipFile": rust_hello_zip}, Timeout=30)
    admin.get_waiter("function_active_v2").wait(FunctionName="url-rust")
    return "url-rust"


@pytest.fixture(scope="module")
def streamed(server, admin, rust_fn):
    """The Rust function's RESPONSE_STREAM URL (with CORS), warmed."""
    config = public_url(admin, rust_fn, "RESPONSE_STREAM", Cors={"AllowOrigins": ["*"]})
    url = path_url(server, config)
    assert send("POST", url, json.dumps({"stream": {"chunks": 1}}).encode(),
                {"Content-Type": "application/json"}).status == 200
    return url


@pytest.fixture(scope="module")
def provided_url(server, admin):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("bootstrap", date_time=(2024, 1, 1, 0, 0, 0))
        info.external_attr = 0o100755 << 16
        zf.writestr(info, PROVIDED_PY.read_bytes())
    admin.create_function(FunctionName="url-provided", Runtime="provided.al2023", Role=ROLE,
                          Handler="bootstrap", Code={"ZipFile": buf.getvalue()}, Timeout=30)
    admin.get_waiter("function_active_v2").wait(FunctionName="url-provided")
    return path_url(server, public_url(admin, "url-provided", "RESPONSE_STREAM"))


def written_at(line: bytes) -> float:
    """When rust-hello wrote a chunk: its line is `<index> <epoch µs>`."""
    return int(line.split()[1]) / 1e6


def test_curl_prints_the_chunks_as_the_function_writes_them(streamed):
    curl = subprocess.Popen(
        ["curl", "-sSN", "-D", "-", "-X", "POST", "-H", "Content-Type: application/json",
         "-H", "Origin: https://example.com", "--data-binary", json.dumps(TEN_CHUNKS), streamed],
        stdout=subprocess.PIPE)
    head = []
    while (line := curl.stdout.readline()) not in (b"\r\n", b""):
        head.append(line.decode().strip())
    lines = []
    for line in curl.stdout:
        lines.append((time.time(), line))
    assert curl.wait(timeout=30) == 0
    assert head[0].split()[1] == "200", head
    fields = {h.split(":", 1)[0].lower(): h.split(":", 1)[1].strip() for h in head[1:]}
    assert fields["content-type"] == "application/octet-stream"
    assert fields["transfer-encoding"] == "chunked"
    assert fields["access-control-allow-origin"] == "*", "Cors' headers on a streamed answer"
    assert "content-length" not in fields
    assert [line.split()[0] for _, line in lines] == [b"%d" % i for i in range(10)]
    arrived = [t for t, _ in lines]
    written = [written_at(line) for _, line in lines]
    # Streamed: curl printed the first chunk long before the function wrote the last...
    assert arrived[0] < written[9] - 0.5, (arrived[0], written[9])
    # ...and each soon after it was written (a loose bound: the benchmark measures it).
    for i in range(10):
        assert arrived[i] - written[i] < 0.5, (i, arrived[i] - written[i])


def read_streamed(url: str, event: dict):
    """POSTs `event` over a raw socket; returns the status line, the header lines, and the
    body's chunks (chunked encoding decoded) with the time each arrived."""
    parts = urllib.parse.urlsplit(url)
    body = json.dumps(event).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                     "Connection: close\r\n\r\n".encode() + body)
        reader = sock.makefile("rb")
        status = reader.readline().decode().strip()
        headers = []
        while (line := reader.readline()) not in (b"\r\n", b""):
            headers.append(line.decode().strip())
        chunks = []
        while True:
            size = int(reader.readline().strip(), 16)
            if size == 0:
                break
            data = reader.read(size)
            chunks.append((time.time(), data))
            assert reader.read(2) == b"\r\n"
    return status, headers, chunks


def test_a_streamed_prelude_is_the_responses_status_and_headers(streamed):
    event = {"stream": {"chunks": 10, "interval_ms": 100, "status": 201,
                        "headers": {"content-type": "text/plain", "x-custom": "yes"},
                        "cookies": ["a=1; HttpOnly", "b=2"]}}
    status, headers, chunks = read_streamed(streamed, event)
    assert status.split()[1] == "201", status
    lower = [h.lower() for h in headers]
    assert "content-type: text/plain" in lower
    assert "x-custom: yes" in lower
    assert [h for h in lower if h.startswith("set-cookie")] == [
        "set-cookie: a=1; httponly", "set-cookie: b=2"]
    body = b"".join(data for _, data in chunks)
    assert b"\0" not in body, "the prelude is not part of the body"
    lines = body.splitlines()
    assert [line.split()[0] for line in lines] == [b"%d" % i for i in range(10)]
    # The first chunk was read from the socket well before the last was written.
    assert chunks[0][0] < written_at(lines[9]) - 0.5


def test_failures_before_the_head_are_502s_and_after_it_cut_the_body(streamed, provided_url):
    fail = json.dumps({"fail": "before anything"}).encode()
    r = send("POST", streamed, fail, {"Content-Type": "application/json"})
    assert r.status == 502, r.body
    # Streamed, then failed (error trailers) before any byte: still a 502.
    early = json.dumps({"stream": {"chunks": 0, "error": "no bytes"}}).encode()
    r = send("POST", provided_url, early, {"Content-Type": "application/json"})
    assert r.status == 502, r.body
    # Failed after two chunks: the 200 went out, so the body is cut, not ended cleanly.
    late = json.dumps({"stream": {"chunks": 2, "error": "midway"}})
    curl = subprocess.run(["curl", "-sSN", "-X", "POST", "-H", "Content-Type: application/json",
                           "--data-binary", late, "-w", "\n%{http_code}", provided_url],
                          capture_output=True, timeout=30)
    assert curl.returncode != 0, "a cut body must not look complete to curl"
    assert curl.stdout.startswith(b"chunk 0\nchunk 1\n"), curl.stdout
    assert curl.stdout.endswith(b"200"), curl.stdout


PY_APP = """
import json


def handler(event, context):
    if event["rawPath"] == "/fail":
        raise RuntimeError("boom")
    return {"statusCode": 202, "headers": {"x-py": "yes"}, "body": json.dumps(event["body"])}
"""


def test_a_runtime_that_does_not_stream_is_answered_as_buffered(server, admin):
    admin.create_function(FunctionName="url-py", Runtime="python3.11", Role=ROLE,
                          Handler="app.handler", Code={"ZipFile": make_zip({"app.py": PY_APP})},
                          Timeout=30)
    admin.get_waiter("function_active_v2").wait(FunctionName="url-py")
    url = path_url(server, public_url(admin, "url-py", "RESPONSE_STREAM"))
    r = send("POST", url, b"hi", {"Content-Type": "text/plain"})
    assert (r.status, r.headers["x-py"], json.loads(r.body)) == (202, "yes", "hi")
    assert send("GET", url.rstrip("/") + "/fail").status == 502


def test_a_buffered_url_of_the_streaming_function_still_buffers(server, admin, rust_fn, streamed):
    # A function has one URL per qualifier: the buffered one is on a version's alias.
    version = admin.publish_version(FunctionName=rust_fn)["Version"]
    admin.create_alias(FunctionName=rust_fn, Name="buffered", FunctionVersion=version)
    config = admin.create_function_url_config(FunctionName=rust_fn, Qualifier="buffered",
                                              AuthType="NONE", InvokeMode="BUFFERED")
    admin.add_permission(FunctionName=rust_fn, Qualifier="buffered", StatementId="public-alias",
                         Action="lambda:InvokeFunctionUrl", Principal="*",
                         FunctionUrlAuthType="NONE")
    status, headers, chunks = read_streamed_or_whole(path_url(server, config), TEN_CHUNKS)
    assert status.split()[1] == "200", status
    # The function's bytes as it streamed them (a buffered URL reads no prelude).
    _, _, body = b"".join(data for _, data in chunks).partition(b"\0" * 8)
    lines = body.splitlines()
    assert [line.split()[0] for line in lines] == [b"%d" % i for i in range(10)]
    # Buffered: nothing arrived before the function wrote its last chunk.
    assert chunks[0][0] >= written_at(lines[-1]), (chunks[0][0], written_at(lines[-1]))
    assert any(h.lower().startswith("content-length:") for h in headers), headers


def read_streamed_or_whole(url: str, event: dict):
    """Like read_streamed, for a response with a Content-Length (one piece) or chunked."""
    parts = urllib.parse.urlsplit(url)
    body = json.dumps(event).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                     "Connection: close\r\n\r\n".encode() + body)
        reader = sock.makefile("rb")
        status = reader.readline().decode().strip()
        headers = []
        while (line := reader.readline()) not in (b"\r\n", b""):
            headers.append(line.decode().strip())
        length = next((int(h.split(":", 1)[1]) for h in headers
                       if h.lower().startswith("content-length:")), None)
        if length is None:
            raise AssertionError(f"not one piece: {headers}")
        data = reader.read(length)
        return status, headers, [(time.time(), data)]
