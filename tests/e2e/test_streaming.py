"""Response streaming, end to end: functions that stream (the Rust `lambda_runtime` crate's
`streaming` module; a `provided` runtime that posts a chunked response with error trailers by
hand) and one that does not (awslambdaric), read through boto3's `invoke_with_response_stream`,
which decodes AWS's event stream (`PayloadChunk` events, then `InvokeComplete`)."""

from __future__ import annotations

import base64
import io
import json
import re
import time
import zipfile
from pathlib import Path

import botocore.exceptions
import pytest

from ember_e2e import ROLE, client_error

pytestmark = pytest.mark.needs_root  # VMs need root; without it the tests fail (conftest.py)

PROVIDED_PY = Path(__file__).resolve().parents[1] / "functions" / "provided-py" / "bootstrap"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def lam(server):
    return server.lambda_client(server.admin_keys())


@pytest.fixture(scope="module")
def rust_fn(lam, rust_hello_zip):
    lam.create_function(FunctionName="rust-stream", Runtime="provided.al2023", Role=ROLE,
                        Handler="bootstrap", Code={"ZipFile": rust_hello_zip}, Timeout=60,
                        MemorySize=256)
    return "rust-stream"


@pytest.fixture(scope="module")
def provided_fn(lam):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("bootstrap", date_time=(2024, 1, 1, 0, 0, 0))
        info.external_attr = 0o100755 << 16
        zf.writestr(info, PROVIDED_PY.read_bytes())
    lam.create_function(FunctionName="provided-stream", Runtime="provided.al2023", Role=ROLE,
                        Handler="bootstrap", Code={"ZipFile": buf.getvalue()}, Timeout=30)
    return "provided-stream"


@pytest.fixture(scope="module")
def py_fn(lam, python_app_zip):
    lam.create_function(FunctionName="py-stream", Runtime="python3.11", Role=ROLE,
                        Handler="app.handler", Code={"ZipFile": python_app_zip}, Timeout=30,
                        MemorySize=512)
    return "py-stream"


def stream(lam, name, event, **kwargs):
    """Invokes with a streamed response; returns the response, the chunks with the time each
    arrived, and the InvokeComplete event."""
    r = lam.invoke_with_response_stream(FunctionName=name, Payload=json.dumps(event).encode(),
                                        **kwargs)
    chunks, complete = [], None
    for event in r["EventStream"]:
        if "PayloadChunk" in event:
            assert complete is None, "a chunk after InvokeComplete"
            chunks.append((time.time(), event["PayloadChunk"]["Payload"]))
        elif "InvokeComplete" in event:
            complete = event["InvokeComplete"]
    assert complete is not None, "the stream ended without InvokeComplete"
    return r, chunks, complete


def body_of(chunks) -> bytes:
    return b"".join(data for _, data in chunks)


def without_prelude(body: bytes) -> bytes:
    """lambda_runtime streams the HTTP integration's metadata prelude (JSON, then 8 NUL bytes)
    ahead of the body, as it does on Lambda; InvokeWithResponseStream passes it through."""
    prelude, sep, rest = body.partition(b"\0" * 8)
    assert sep, body[:200]
    assert json.loads(prelude)["headers"]["content-type"] == "application/octet-stream"
    return rest


def test_chunks_reach_the_client_as_the_function_writes_them(lam, rust_fn):
    stream(lam, rust_fn, {"stream": {"chunks": 1, "bytes": 8}})  # warm, so no init in the timing
    r, chunks, complete = stream(lam, rust_fn,
                                 {"stream": {"chunks": 10, "bytes": 64, "interval_ms": 100}})
    assert r["StatusCode"] == 200
    assert r["ExecutedVersion"] == "$LATEST"
    assert r["ResponseStreamContentType"] == "application/vnd.amazon.eventstream"
    assert complete.get("ErrorCode") is None, complete
    # Which arrival carried each chunk, and when the function wrote it.
    arrived, written, seen = {}, {}, b""
    for at, data in chunks:
        seen += data
        for m in re.finditer(rb"(\d+) (\d+)\n", seen):
            i = int(m.group(1))
            arrived.setdefault(i, at)
            written[i] = int(m.group(2)) / 1e6
    assert sorted(arrived) == list(range(10)), arrived
    assert len(without_prelude(body_of(chunks))) == 10 * 64
    # Streamed, not buffered: the first chunk was read long before the last was written...
    assert arrived[0] < written[9] - 0.5, (arrived[0], written[9])
    # ...and each one soon after it was written (a loose bound: this is not the benchmark).
    for i in range(10):
        assert arrived[i] - written[i] < 0.5, (i, arrived[i] - written[i])
    assert len(chunks) >= 5, "ten chunks 100 ms apart came in a few events"


def test_a_20_mib_stream_arrives_whole(lam, rust_fn):
    # 20 MiB with the prelude, the most a stream may carry.
    size = MiB - 16
    r, chunks, complete = stream(lam, rust_fn,
                                 {"stream": {"chunks": 20, "bytes": size}}, LogType="Tail")
    assert complete.get("ErrorCode") is None, complete
    body = without_prelude(body_of(chunks))
    assert len(body) == 20 * size
    for i in range(20):
        assert body[i * size:].startswith(b"%d " % i), i
    assert b"REPORT RequestId:" in base64.b64decode(complete["LogResult"])


def test_a_stream_past_20_mib_fails_with_what_was_streamed_delivered(lam, rust_fn):
    _, chunks, complete = stream(lam, rust_fn, {"stream": {"chunks": 21, "bytes": MiB}})
    assert complete["ErrorCode"] == "Function.ResponseSizeTooLarge", complete
    assert "20971520" in complete["ErrorDetails"]
    assert 19 * MiB < len(body_of(chunks)) <= 20 * MiB
    # The runtime got its 413 once it had sent its whole body: the environment serves on.
    _, _, complete = stream(lam, rust_fn, {"stream": {"chunks": 2, "bytes": 10}})
    assert complete.get("ErrorCode") is None, complete


def test_a_function_error_mid_stream_reaches_invoke_complete(lam, provided_fn):
    _, chunks, complete = stream(lam, provided_fn,
                                 {"stream": {"chunks": 3, "interval_ms": 50, "error": "boom"}})
    assert body_of(chunks) == b"chunk 0\nchunk 1\nchunk 2\n"
    assert complete["ErrorCode"] == "HelloFailure"
    assert json.loads(complete["ErrorDetails"]) == {"errorMessage": "boom",
                                                   "errorType": "HelloFailure"}
    # A stream that ends well, by the same runtime, reports no error.
    _, chunks, complete = stream(lam, provided_fn, {"stream": {"chunks": 2}})
    assert body_of(chunks) == b"chunk 0\nchunk 1\n"
    assert complete.get("ErrorCode") is None


def test_a_buffered_error_reaches_invoke_complete(lam, rust_fn):
    _, chunks, complete = stream(lam, rust_fn, {"fail": "no stream"})
    assert chunks == []
    # The type the runtime posted (lambda_runtime's `Lambda-Runtime-Function-Error-Type`), and
    # its error document.
    assert complete["ErrorCode"] == "unhandled"
    details = json.loads(complete["ErrorDetails"])
    assert details == {"errorType": "HelloFailure", "errorMessage": "no stream"}


def test_a_python_functions_response_arrives_as_one_chunk(lam, py_fn):
    value = "x" * 100_000
    r, chunks, complete = stream(lam, py_fn, {"echo": value})
    assert r["StatusCode"] == 200
    assert len(chunks) == 1
    assert json.loads(chunks[0][1])["echo"] == value
    assert complete.get("ErrorCode") is None


def test_plain_invoke_of_a_streaming_function_buffers_its_response(lam, rust_fn):
    r = lam.invoke(FunctionName=rust_fn,
                   Payload=json.dumps({"stream": {"chunks": 3, "bytes": 10}}).encode())
    assert "FunctionError" not in r
    assert without_prelude(r["Payload"].read()).count(b"\n") == 3


def test_dry_run_and_bad_requests(lam, rust_fn):
    r = lam.invoke_with_response_stream(FunctionName=rust_fn, InvocationType="DryRun")
    assert r["StatusCode"] == 204
    with pytest.raises(botocore.exceptions.ClientError) as e:
        lam.invoke_with_response_stream(FunctionName="nope", Payload=b"{}")
    assert client_error(e)[:2] == ("ResourceNotFoundException", 404)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        lam.invoke_with_response_stream(FunctionName=rust_fn, Payload=b"not json")
    assert client_error(e)[:2] == ("InvalidRequestContentException", 400)
