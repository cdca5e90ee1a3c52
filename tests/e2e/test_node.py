"""Node.js functions, end to end: the host's Node.js as `nodejsN.x` under npm's unmodified
aws-lambda-ric, driven by boto3 and the AWS CLI. CommonJS and ES-module handlers, async and
callback handlers, the context object, logs, errors as Lambda reports them, and a function with an
npm dependency in its zip."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from ember_e2e import ROLE, host_node_runtime, make_zip

pytestmark = pytest.mark.needs_root

NODE = host_node_runtime()


@pytest.fixture(scope="module")
def lam(server):
    assert NODE is not None, "these tests need Node.js 18+ on PATH (CI has Node.js 20)"
    return server.lambda_client(server.admin_keys())


def create(lam, name, files, handler="index.handler", **extra):
    return lam.create_function(
        FunctionName=name, Runtime=NODE, Role=ROLE, Handler=handler,
        Code={"ZipFile": make_zip(files)}, **{"Timeout": 30, **extra},
    )


def invoke(lam, name, event=None, **kwargs):
    r = lam.invoke(FunctionName=name, Payload=json.dumps(event or {}).encode(), **kwargs)
    body = r["Payload"].read()
    return r, json.loads(body) if body else None


def tail_of(r) -> str:
    return base64.b64decode(r["LogResult"]).decode()


CONTEXT_JS = """
exports.handler = async (event, context) => {
  console.log("hello from node", JSON.stringify(event));
  return {
    event,
    requestId: context.awsRequestId,
    functionName: context.functionName,
    memory: context.memoryLimitInMB,
    remaining: context.getRemainingTimeInMillis(),
    node: process.version,
    env: {
      AWS_EXECUTION_ENV: process.env.AWS_EXECUTION_ENV,
      NODE_PATH: process.env.NODE_PATH,
      LAMBDA_TASK_ROOT: process.env.LAMBDA_TASK_ROOT,
      PATH: process.env.PATH,
    },
    cwd: process.cwd(),
  };
};
"""


def test_a_commonjs_async_handler_gets_lambdas_context_and_environment(lam):
    create(lam, "node-cjs", {"index.js": CONTEXT_JS})
    r, out = invoke(lam, "node-cjs", {"n": 1}, LogType="Tail")
    assert r["StatusCode"] == 200 and "FunctionError" not in r, out
    major = NODE.removeprefix("nodejs").removesuffix(".x")
    assert out["event"] == {"n": 1}
    assert out["functionName"] == "node-cjs"
    assert out["requestId"] == r["ResponseMetadata"]["RequestId"]
    assert out["memory"] == "128"
    assert 0 < out["remaining"] <= 30_000
    assert out["node"].startswith(f"v{major}.")
    assert out["cwd"] == "/var/task"
    env = out["env"]
    assert env["AWS_EXECUTION_ENV"] == f"AWS_Lambda_{NODE}"
    assert env["NODE_PATH"] == (
        f"/opt/nodejs/node{major}/node_modules:/opt/nodejs/node_modules:"
        "/var/runtime/node_modules:/var/runtime:/var/task"
    )
    assert env["LAMBDA_TASK_ROOT"] == "/var/task"
    assert env["PATH"].startswith("/var/lang/bin:")
    tail = tail_of(r)
    assert 'hello from node {"n":1}' in tail, tail
    assert f"START RequestId: {out['requestId']}" in tail and "REPORT RequestId" in tail, tail


def test_remaining_time_counts_down_from_the_timeout(lam):
    create(lam, "node-remaining", {"index.js": """
exports.handler = async (event, context) => {
  const before = context.getRemainingTimeInMillis();
  await new Promise((resolve) => setTimeout(resolve, 300));
  return { before, after: context.getRemainingTimeInMillis() };
};
"""}, Timeout=5)
    _, out = invoke(lam, "node-remaining")
    assert 3_000 < out["before"] <= 5_000
    assert 250 <= out["before"] - out["after"] < 2_000, out


def test_a_callback_handler_returns_what_it_calls_back_with(lam):
    create(lam, "node-callback", {"index.js": """
exports.handler = (event, context, callback) => {
  setTimeout(() => callback(null, { n: event.n + 1, style: "callback" }), 20);
};
"""})
    _, out = invoke(lam, "node-callback", {"n": 41})
    assert out == {"n": 42, "style": "callback"}
    # A warm container answers the next one too.
    _, out = invoke(lam, "node-callback", {"n": 1})
    assert out == {"n": 2, "style": "callback"}


def test_an_mjs_handler_is_an_es_module(lam):
    create(lam, "node-mjs", {"index.mjs": """
import { basename } from "node:path";
export const handler = async (event) => ({ esm: true, file: basename(new URL(import.meta.url).pathname), event });
"""})
    _, out = invoke(lam, "node-mjs", {"a": "b"})
    assert out == {"esm": True, "file": "index.mjs", "event": {"a": "b"}}


def test_a_js_handler_in_a_type_module_package_is_an_es_module_and_may_live_in_a_folder(lam):
    create(lam, "node-type-module", {
        "package.json": json.dumps({"name": "fn", "type": "module"}),
        "src/app.js": """
export async function handler(event) {
  return { esm: typeof require === "undefined", meta: typeof import.meta.url };
}
""",
    }, handler="src/app.handler")
    _, out = invoke(lam, "node-type-module")
    assert out == {"esm": True, "meta": "string"}


@pytest.mark.parametrize("body, error_type, message", [
    ('exports.handler = async () => { throw new TypeError("bad thing"); };', "TypeError",
     "bad thing"),
    ('exports.handler = () => Promise.reject(new RangeError("rejected"));', "RangeError",
     "rejected"),
    ('exports.handler = (e, c, callback) => callback(new Error("called back"));', "Error",
     "called back"),
])
def test_errors_are_reported_as_lambda_does(lam, body, error_type, message):
    name = f"node-err-{error_type.lower()}"
    create(lam, name, {"index.js": body})
    r, out = invoke(lam, name, LogType="Tail")
    assert r["StatusCode"] == 200
    assert r["FunctionError"] == "Unhandled"
    assert out["errorType"] == error_type
    assert out["errorMessage"] == message
    assert isinstance(out["trace"], list) and out["trace"][0] == f"{error_type}: {message}", out
    assert message in tail_of(r)


@pytest.mark.parametrize("files, handler, error_type", [
    ({"index.js": "exports.other = async () => 1;"}, "index.handler", "Runtime.HandlerNotFound"),
    ({"index.js": "exports.handler = async () => 1;"}, "missing.handler",
     "Runtime.ImportModuleError"),
    ({"index.js": "require('not-installed-anywhere'); exports.handler = async () => 1;"},
     "index.handler", "Runtime.ImportModuleError"),
])
def test_a_missing_handler_or_module_is_reported_by_the_runtime_client(
        lam, files, handler, error_type):
    name = "node-missing-" + error_type.split(".")[1].lower() + str(len(handler))
    create(lam, name, files, handler=handler)
    r, out = invoke(lam, name)
    assert r["FunctionError"] == "Unhandled"
    assert out["errorType"] == error_type, out


def test_a_function_with_an_npm_dependency_runs_through_the_aws_cli(server, lam, tmp_path):
    """A function that `require`s a package installed from npm into its zip, deployed and
    invoked with the AWS CLI, as a new user would."""
    src = tmp_path / "fn"
    src.mkdir()
    (src / "index.js").write_text("""
const isNumber = require("is-number");
exports.handler = async (event) => ({
  checks: event.values.map((v) => isNumber(v)),
  from: require.resolve("is-number"),
});
""")
    npm = shutil.which("npm")
    assert npm, "npm is needed to build the function's zip"
    subprocess.run([npm, "install", "--no-audit", "--no-fund", "--no-package-lock",
                    "--loglevel=error", "is-number@7.0.0"],
                   cwd=src, check=True, capture_output=True, timeout=240)
    zip_path = tmp_path / "fn.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(src).as_posix())
    rc, out, err = server.aws(
        "lambda", "create-function", "--function-name", "node-npm-dep", "--runtime", NODE,
        "--role", ROLE, "--handler", "index.handler", "--timeout", "30",
        "--zip-file", f"fileb://{zip_path}",
    )
    assert rc == 0, err
    assert out["Runtime"] == NODE and out["Handler"] == "index.handler"
    result = tmp_path / "out.json"
    rc, out, err = server.aws(
        "lambda", "invoke", "--function-name", "node-npm-dep",
        "--payload", json.dumps({"values": [1, "2", "x", None]}), str(result),
    )
    assert rc == 0, err
    assert out["StatusCode"] == 200 and "FunctionError" not in out, out
    assert json.loads(result.read_text()) == {
        "checks": [True, True, False, False],
        "from": "/var/task/node_modules/is-number/index.js",
    }


def test_a_node_handler_must_name_a_file_and_an_export(lam):
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as e:
        create(lam, "node-bad-handler", {"index.js": ""}, handler="index")
    assert "file.export" in str(e.value)


def test_a_node_runtime_this_host_lacks_is_refused_at_invoke(lam):
    # nodejs18.x is valid for Lambda; this host has no Node.js 18 (CI has 20).
    other = "nodejs24.x" if NODE != "nodejs24.x" else "nodejs18.x"
    lam.create_function(FunctionName="node-other-major", Runtime=other, Role=ROLE,
                        Handler="index.handler",
                        Code={"ZipFile": make_zip({"index.js": "exports.handler=()=>1"})})
    with pytest.raises(lam.exceptions.InvalidRuntimeException) as e:
        lam.invoke(FunctionName="node-other-major", Payload=b"{}")
    assert f"runtime {other} is not available on this host" in str(e.value)
    assert NODE in str(e.value)


def test_without_build_tools_invoke_says_why_the_runtime_is_unavailable(
        server_factory, tmp_path, monkeypatch):
    """A server whose PATH lacks aws-lambda-ric's build tools (its Node.js and npm are still found
    under /usr) cannot provision the runtime into a new runtime dir: the function is created,
    and Invoke answers InvalidRuntimeException naming what is missing."""
    import ember_e2e

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "node").symlink_to(shutil.which("node"))
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(ember_e2e, "RUNTIME_DIR", tmp_path / "runtimes")
    server = server_factory()
    lam = server.lambda_client(server.admin_keys())
    create(lam, "node-no-tools", {"index.js": CONTEXT_JS})
    with pytest.raises(lam.exceptions.InvalidRuntimeException) as e:
        lam.invoke(FunctionName="node-no-tools", Payload=b"{}")
    message = e.value.response["Error"]["Message"]
    assert f"cannot provision {NODE}: building aws-lambda-ric's native code needs cmake" in message
    assert "apt-get install cmake autoconf automake libtool g++ make" in message
    assert not (tmp_path / "runtimes" / NODE).exists()
