"""What the managed runtimes contain, as AWS's do: boto3 in every `python3.N`, the AWS SDK for
JavaScript v3 clients in every `nodejsN.x`, read-only under /var/runtime; a function's own copy
(in its zip) wins over the runtime's."""

from __future__ import annotations

import json

import pytest

from ember_e2e import ROLE, host_node_runtime, make_zip

pytestmark = pytest.mark.needs_root

PY = "python3.11"
# The pinned versions (crates/runtimes: `boto3_version`, `sdk_version`; README, Runtimes).
BOTO3 = "1.44.18"
SDK = "3.1178.0"
NODE = host_node_runtime()


@pytest.fixture(scope="module")
def lam(server):
    return server.lambda_client(server.admin_keys())


def create(lam, name, runtime, handler, files):
    lam.create_function(FunctionName=name, Runtime=runtime, Role=ROLE, Handler=handler,
                        Code={"ZipFile": make_zip(files)}, Timeout=30)


def invoke(lam, name):
    r = lam.invoke(FunctionName=name, Payload=b"{}")
    out = json.loads(r["Payload"].read())
    assert "FunctionError" not in r, out
    return out


PY_BOTO3 = """
import boto3

def handler(event, context):
    client = boto3.client("s3", region_name="us-east-1")
    return {"version": boto3.__version__, "file": boto3.__file__,
            "client": type(client).__name__}
"""


def test_a_python_function_imports_the_runtimes_boto3_without_bundling_it(lam):
    create(lam, "sdk-py-boto3", PY, "app.handler", {"app.py": PY_BOTO3})
    out = invoke(lam, "sdk-py-boto3")
    assert out == {"version": BOTO3, "file": "/var/runtime/boto3/__init__.py", "client": "S3"}


def test_a_python_functions_own_boto3_wins(lam):
    create(lam, "sdk-py-bundled", PY, "app.handler", {
        "app.py": "import boto3\n\ndef handler(event, context):\n"
                  "    return {'version': boto3.__version__, 'file': boto3.__file__}\n",
        "boto3/__init__.py": "__version__ = 'bundled'\n",
    })
    out = invoke(lam, "sdk-py-bundled")
    assert out == {"version": "bundled", "file": "/var/task/boto3/__init__.py"}


NODE_SDK = """
const { S3Client } = require("@aws-sdk/client-s3");
const { DynamoDBDocumentClient } = require("@aws-sdk/lib-dynamodb");
const { DynamoDBClient } = require("@aws-sdk/client-dynamodb");
const fs = require("node:fs");

exports.handler = async () => {
  const s3 = new S3Client({ region: "us-east-1" });
  const doc = DynamoDBDocumentClient.from(new DynamoDBClient({ region: "us-east-1" }));
  let write;
  try {
    fs.writeFileSync("/var/runtime/node_modules/x", "x");
    write = "written";
  } catch (e) {
    write = e.code;
  }
  return {
    version: require("@aws-sdk/client-s3/package.json").version,
    from: require.resolve("@aws-sdk/client-s3"),
    region: await s3.config.region(),
    doc: typeof doc.send,
    others: ["client-lambda", "client-sqs", "client-sns", "client-sts"].map(
      (c) => require(`@aws-sdk/${c}/package.json`).version),
    write,
  };
};
"""


def test_a_node_function_uses_the_runtimes_aws_sdk_v3_without_bundling_it(lam):
    assert NODE is not None, "this test needs Node.js 20+ on PATH"
    create(lam, "sdk-node", NODE, "index.handler", {"index.js": NODE_SDK})
    out = invoke(lam, "sdk-node")
    assert out["version"] == SDK
    assert out["from"].startswith("/var/runtime/node_modules/@aws-sdk/client-s3/"), out
    assert out["region"] == "us-east-1"
    assert out["doc"] == "function"
    assert out["others"] == [SDK] * 4
    assert out["write"] == "EROFS", "the runtime's packages are read-only"


def test_a_node_functions_own_sdk_wins(lam):
    assert NODE is not None, "this test needs Node.js 20+ on PATH"
    create(lam, "sdk-node-bundled", NODE, "index.handler", {
        "index.js": "const s3 = require('@aws-sdk/client-s3');\n"
                    "exports.handler = async () => ({ version: s3.VERSION,"
                    " from: require.resolve('@aws-sdk/client-s3') });\n",
        "node_modules/@aws-sdk/client-s3/package.json":
            json.dumps({"name": "@aws-sdk/client-s3", "version": "0.0.1-bundled",
                        "main": "index.js"}),
        "node_modules/@aws-sdk/client-s3/index.js": "exports.VERSION = 'bundled';\n",
    })
    out = invoke(lam, "sdk-node-bundled")
    assert out == {"version": "bundled",
                   "from": "/var/task/node_modules/@aws-sdk/client-s3/index.js"}


def test_an_es_module_imports_the_runtimes_sdk_and_a_layers_package(lam):
    """As Lambda's console's default `index.mjs` does: `import` (which ignores NODE_PATH) finds
    the function's own packages, then its layers' (`/opt/nodejs/node_modules`), then the
    runtime's SDK."""
    assert NODE is not None, "this test needs Node.js 20+ on PATH"
    layer = lam.publish_layer_version(LayerName="sdk-esm-layer", Content={"ZipFile": make_zip({
        "nodejs/node_modules/greeting/package.json":
            json.dumps({"name": "greeting", "version": "1.0.0", "main": "index.js"}),
        "nodejs/node_modules/greeting/index.js": "exports.greet = (n) => `hello ${n}`;\n",
    })})
    lam.create_function(
        FunctionName="sdk-node-esm", Runtime=NODE, Role=ROLE, Handler="index.handler",
        Layers=[layer["LayerVersionArn"]], Timeout=30,
        Code={"ZipFile": make_zip({"index.mjs": """
import { S3Client, ListBucketsCommand } from "@aws-sdk/client-s3";
import { greet } from "greeting";

export const handler = async () => {
  const s3 = new S3Client({ region: "eu-west-1" });
  return {
    region: await s3.config.region(),
    command: typeof ListBucketsCommand,
    greeting: greet("esm"),
    from: import.meta.resolve("@aws-sdk/client-s3"),
  };
};
"""})},
    )
    out = invoke(lam, "sdk-node-esm")
    assert out["region"] == "eu-west-1"
    assert out["command"] == "function"
    assert out["greeting"] == "hello esm"
    assert out["from"].startswith("file:///var/runtime/node_modules/@aws-sdk/client-s3/"), out
