"""The AWS SDK for JavaScript v3 (`@aws-sdk/client-lambda`, pinned in tests/e2e/js) against
Ember: it signs, sends and parses as it does against AWS (js_sdk.py runs it in Node.js)."""

from __future__ import annotations

import json

import pytest

from ember_e2e import REGION, ROLE, code_sha256, handler_zip
from js_sdk import JsSdkError, js_bytes, js_call, js_calls, js_unbytes


@pytest.fixture
def account(server, request):
    """An account of the test's own: what one test creates is not in another's listings."""
    return server.make_account(f"js-{request.node.name}"[:60])


def test_the_js_sdk_creates_lists_and_gets_a_function(server, account):
    zip_bytes = handler_zip("js-sdk")
    created, listed, got, missing = js_calls(server, [
        ("CreateFunction", {
            "FunctionName": "js-made", "Runtime": "python3.11", "Role": ROLE,
            "Handler": "app.handler", "Code": {"ZipFile": js_bytes(zip_bytes)},
            "Description": "from Node.js",
        }),
        ("ListFunctions", {}),
        ("GetFunction", {"FunctionName": "js-made"}),
        ("GetFunction", {"FunctionName": "js-missing"}),
    ], keys=account)

    arn = f"arn:aws:lambda:{REGION}:{account['AccountId']}:function:js-made"
    assert created["output"]["$metadata"]["httpStatusCode"] == 201
    assert created["output"]["FunctionArn"] == arn
    assert created["output"]["CodeSha256"] == code_sha256(zip_bytes)

    (made,) = [f for f in listed["output"]["Functions"] if f["FunctionName"] == "js-made"]
    assert made["Description"] == "from Node.js"
    assert made["FunctionArn"] == arn

    config = got["output"]["Configuration"]
    assert config["FunctionArn"] == arn
    assert config["CodeSize"] == len(zip_bytes)
    assert config["State"] == "Active"
    assert got["output"]["Code"]["RepositoryType"] == "S3"
    assert got["output"]["Code"]["Location"].startswith(server.endpoint)

    assert missing["error"]["name"] == "ResourceNotFoundException"
    assert missing["error"]["status"] == 404
    assert "js-missing" in missing["error"]["message"]


def test_js_call_raises_the_servers_error(server, account):
    with pytest.raises(JsSdkError) as e:
        js_call(server, "GetFunctionConfiguration", {"FunctionName": "nobody"}, keys=account)
    assert e.value.name == "ResourceNotFoundException" and e.value.status == 404


@pytest.mark.needs_root  # the invocation runs in a VM
def test_the_js_sdk_invokes_a_function(server, account, python_app_zip):
    js_call(server, "CreateFunction", {
        "FunctionName": "js-invoked", "Runtime": "python3.11", "Role": ROLE,
        "Handler": "app.handler", "Code": {"ZipFile": js_bytes(python_app_zip)},
    }, keys=account)
    out = js_call(server, "Invoke", {
        "FunctionName": "js-invoked", "Payload": js_bytes(json.dumps({"echo": "from js"}).encode()),
    }, keys=account)
    assert out["StatusCode"] == 200
    assert out["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in out
    assert json.loads(js_unbytes(out["Payload"]))["echo"] == "from js"
