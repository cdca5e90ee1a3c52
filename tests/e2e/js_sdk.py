"""The AWS SDK for JavaScript v3 as an end-to-end client of Ember.

`js_calls(server, [(op, input), ...])` runs `@aws-sdk/client-lambda` commands (Node.js,
tests/e2e/js/run.mjs) against a running server, signed with its admin's keys or `keys`, and
returns one result per call: `{"output": {...}}` or `{"error": {"name", "message", "status"}}`.
`js_call(server, op, input)` runs one and returns its output, or raises `JsSdkError`.

Bytes (Code.ZipFile, Invoke's Payload) travel as `{"$base64": "..."}` both ways: `js_bytes`
wraps them, `js_unbytes` unwraps them. The SDK's version is pinned by tests/e2e/js/package-lock.json
and installed by tests/e2e/js/install.sh (scripts/test runs it; the first call here runs it too,
so `pytest tests/e2e/test_X.py` works alone; later runs need no network).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

from ember_e2e import REGION, clean_env

JS_DIR = Path(__file__).resolve().parent / "js"
JS_TIMEOUT_S = 120

_installed = False


class JsSdkError(Exception):
    """An error the server answered to a JS SDK command, as the SDK reported it."""

    def __init__(self, name: str, message: str, status: int):
        super().__init__(f"{name} ({status}): {message}")
        self.name = name
        self.message = message
        self.status = status


def _ensure_installed() -> None:
    global _installed
    if _installed:
        return
    assert shutil.which("node"), "Node.js (`node`) is needed for the JS SDK tests"
    r = subprocess.run([str(JS_DIR / "install.sh")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"tests/e2e/js/install.sh failed:\n{r.stderr}"
    _installed = True


def js_bytes(data: bytes) -> dict[str, str]:
    """Bytes as run.mjs takes them (a Uint8Array on the JS side)."""
    return {"$base64": base64.b64encode(data).decode()}


def js_unbytes(value: dict[str, str]) -> bytes:
    """Bytes as run.mjs answers them (a Uint8Array on the JS side)."""
    return base64.b64decode(value["$base64"])


def js_calls(server, calls: list[tuple[str, dict]], keys: dict[str, str] | None = None) -> list[dict]:
    """Runs the commands (`"ListFunctions"` for `ListFunctionsCommand`) in order on one
    LambdaClient (no retries) and returns their results."""
    _ensure_installed()
    keys = keys or server.admin_keys()
    request = {
        "endpoint": server.endpoint,
        "region": REGION,
        "accessKeyId": keys["AccessKeyId"],
        "secretAccessKey": keys["SecretAccessKey"],
        "calls": [{"op": op, "input": given} for op, given in calls],
    }
    r = subprocess.run(
        ["node", str(JS_DIR / "run.mjs")],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=JS_DIR,
        env=clean_env(),
        timeout=JS_TIMEOUT_S,
    )
    assert r.returncode == 0, f"node run.mjs failed ({r.returncode}):\n{r.stderr}"
    results = json.loads(r.stdout)
    assert len(results) == len(calls), results
    return results


def js_call(server, op: str, given: dict | None = None, keys: dict[str, str] | None = None) -> dict:
    """One command's output (with `$metadata`), or `JsSdkError` if the server refused it."""
    (result,) = js_calls(server, [(op, given or {})], keys)
    if "error" in result:
        e = result["error"]
        raise JsSdkError(e["name"], e["message"], e["status"])
    return result["output"]
