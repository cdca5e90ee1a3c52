"""Versions and aliases through the AWS SDK for JavaScript v3 (`@aws-sdk/client-lambda`, run in
Node.js by js_sdk.py): publish two versions, put a weighted alias over them, invoke it and by
version, and see Lambda's errors as the SDK names them."""

from __future__ import annotations

import json

import pytest

from ember_e2e import REGION, ROLE, make_zip
from js_sdk import js_bytes, js_calls, js_unbytes

HANDLER = """import os

def handler(event, context):
    return {{"tag": {tag!r}, "version": os.environ["AWS_LAMBDA_FUNCTION_VERSION"],
             "arn": context.invoked_function_arn}}
"""


def package(tag: str) -> bytes:
    return make_zip({"app.py": HANDLER.format(tag=tag)})


@pytest.mark.needs_root  # the invocations run in VMs
def test_the_js_sdk_publishes_versions_and_routes_an_alias(server):
    keys = server.make_account("js-versions")
    arn = f"arn:aws:lambda:{REGION}:{keys['AccountId']}:function:js-ver"
    payload = js_bytes(b"{}")
    results = js_calls(server, [
        ("CreateFunction", {
            "FunctionName": "js-ver", "Runtime": "python3.11", "Role": ROLE,
            "Handler": "app.handler", "Code": {"ZipFile": js_bytes(package("one"))},
            "Publish": True,
        }),
        ("UpdateFunctionCode", {"FunctionName": "js-ver", "ZipFile": js_bytes(package("two"))}),
        ("PublishVersion", {"FunctionName": "js-ver", "Description": "second"}),
        ("CreateAlias", {
            "FunctionName": "js-ver", "Name": "live", "FunctionVersion": "1",
            "RoutingConfig": {"AdditionalVersionWeights": {"2": 1.0}},
        }),
        ("Invoke", {"FunctionName": "js-ver", "Qualifier": "live", "Payload": payload}),
        ("UpdateAlias", {
            "FunctionName": "js-ver", "Name": "live",
            "RoutingConfig": {"AdditionalVersionWeights": {}},
        }),
        ("Invoke", {"FunctionName": f"{arn}:live", "Payload": payload}),
        ("Invoke", {"FunctionName": "js-ver:2", "Payload": payload}),
        ("ListVersionsByFunction", {"FunctionName": "js-ver"}),
        ("ListAliases", {"FunctionName": "js-ver"}),
        ("GetFunctionConfiguration", {"FunctionName": "js-ver", "Qualifier": "7"}),
        ("DeleteFunction", {"FunctionName": "js-ver", "Qualifier": "1"}),
        ("CreateAlias", {"FunctionName": "js-ver", "Name": "42", "FunctionVersion": "1"}),
    ], keys=keys)
    errors = [r["error"] for r in results[:10] if "error" in r]
    assert not errors, errors
    (created, _, v2, alias, routed, updated, by_alias, by_version, versions, aliases,
     missing, in_use, bad_name) = results

    assert (created["output"]["Version"], created["output"]["FunctionArn"]) == ("1", f"{arn}:1")
    assert (v2["output"]["Version"], v2["output"]["Description"]) == ("2", "second")
    assert v2["output"]["$metadata"]["httpStatusCode"] == 201
    assert alias["output"]["AliasArn"] == f"{arn}:live"
    assert alias["output"]["RoutingConfig"] == {"AdditionalVersionWeights": {"2": 1.0}}

    # All of the weighted alias's invocations go to version 2 (weight 1.0).
    out = routed["output"]
    assert out["ExecutedVersion"] == "2"
    assert json.loads(js_unbytes(out["Payload"])) == {
        "tag": "two", "version": "2", "arn": f"{arn}:live"}
    # Without routing, the alias runs its own version 1, invoked by its ARN.
    assert "RoutingConfig" not in updated["output"]
    out = by_alias["output"]
    assert out["ExecutedVersion"] == "1"
    assert json.loads(js_unbytes(out["Payload"]))["tag"] == "one"
    out = by_version["output"]
    assert out["ExecutedVersion"] == "2"
    assert json.loads(js_unbytes(out["Payload"]))["arn"] == f"{arn}:2"

    assert [v["Version"] for v in versions["output"]["Versions"]] == ["$LATEST", "1", "2"]
    assert [(a["Name"], a["FunctionVersion"]) for a in aliases["output"]["Aliases"]] == [
        ("live", "1")]

    assert (missing["error"]["name"], missing["error"]["status"]) == (
        "ResourceNotFoundException", 404)
    assert missing["error"]["message"] == f"Function not found: {arn}:7"
    assert (in_use["error"]["name"], in_use["error"]["status"]) == (
        "ResourceConflictException", 409)
    assert (bad_name["error"]["name"], bad_name["error"]["status"]) == (
        "InvalidParameterValueException", 400)
