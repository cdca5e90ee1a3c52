"""SeBS's HTTP trigger against Ember: the deployment calls the SeBS benchmark suite
(spcl/serverless-benchmarks) makes for an AWS function with a function URL, through boto3 with the
same operations and members, and its invocation through pycurl exactly as SeBS sends it, against a
function shaped like SeBS's AWS Python handler wrapper, asserting what SeBS's trigger reads back.

What SeBS does, from its source:
- sebs/aws/aws.py `create_function`: CreateFunction (FunctionName, Role, MemorySize, Timeout,
  Architectures, PackageType=Zip, Code.ZipFile, Runtime, Handler=handler.handler), the
  `function_active_v2` waiter, then `update_function_configuration`: GetFunctionConfiguration,
  UpdateFunctionConfiguration (Timeout, MemorySize, Environment) and the `function_updated_v2`
  waiter.
- sebs/aws/config.py `AWSResources.function_url` (`use_function_url` is the default):
  GetFunctionUrlConfig, and on ResourceNotFoundException CreateFunctionUrlConfig(FunctionName,
  AuthType=NONE) (on ResourceConflictException it reads the existing config), then
  AddPermission(StatementId=FunctionURLAllowPublicAccess, Action=lambda:InvokeFunctionUrl,
  Principal=*, FunctionUrlAuthType=NONE), taking a ResourceConflictException there as "already
  allowed". `delete_function_url`: DeleteFunctionUrlConfig, then RemovePermission of that
  statement, ResourceNotFoundException meaning "no URL".
- sebs/faas/function.py `Trigger._http_invoke`: pycurl, POST, one header `Content-Type:
  application/json`, the payload as `json.dumps` POSTFIELDS; it reads RESPONSE_CODE (must be 200),
  PRETRANSFER_TIME and STARTTRANSFER_TIME, parses the body as JSON (unwrapping a `body` member if
  one is there), and needs `request_id`, `is_cold`, `begin` and `end` (floats as strings).
- benchmarks/wrappers/aws/python/handler.py: the event's `body` is JSON text holding the payload;
  the wrapper returns {statusCode: 200, body: JSON text of begin, end, results_time, is_cold,
  result, request_id, cold_start_var, container_id}, coldness from a marker file in /tmp.
"""

from __future__ import annotations

import json
import uuid
from io import BytesIO

import pycurl
import pytest

from ember_e2e import ROLE, make_zip

# Ember's own function in the shape of SeBS's wrapper: handler.py calls function/function.py.
WRAPPER = r'''
import datetime
import json
import os
import uuid


def handler(event, context):
    arrived = datetime.datetime.now().timestamp()
    if "body" in event:
        event = json.loads(event["body"])
    event["request-id"] = context.aws_request_id
    event["income-timestamp"] = arrived
    begin = datetime.datetime.now()
    from function import function
    result = function.handler(event)
    end = datetime.datetime.now()

    marker = "/tmp/cold_run"
    cold = not os.path.exists(marker)
    if cold:
        container = uuid.uuid4().hex[:8]
        with open(marker, "w") as f:
            f.write(container)
    else:
        with open(marker) as f:
            container = f.read()

    return {
        "statusCode": 200,
        "body": json.dumps({
            "begin": begin.strftime("%s.%f"),
            "end": end.strftime("%s.%f"),
            "results_time": 0,
            "is_cold": cold,
            "result": result,
            "request_id": context.aws_request_id,
            "cold_start_var": os.environ.get("cold_start", ""),
            "container_id": container,
        }),
    }
'''

BENCHMARK = r'''
def handler(event):
    words = event["text"].split()
    return {"output": {"words": len(words), "longest": max(words, key=len),
                       "request": event["request-id"]}}
'''

PUBLIC = "FunctionURLAllowPublicAccess"


def deploy(lam, name: str) -> None:
    """sebs/aws/aws.py create_function, then update_function_configuration."""
    created = lam.create_function(
        FunctionName=name, Role=ROLE, MemorySize=256, Timeout=10, Architectures=["x86_64"],
        PackageType="Zip",
        Code={"ZipFile": make_zip({"handler.py": WRAPPER, "function/__init__.py": "",
                                   "function/function.py": BENCHMARK})},
        Runtime="python3.11", Handler="handler.handler")
    assert created["FunctionArn"].endswith(f":function:{name}")
    lam.get_waiter("function_active_v2").wait(FunctionName=name)
    envs = {"cold_start": "1"}
    response = lam.get_function_configuration(FunctionName=name)
    if "Environment" in response:
        envs = {**response["Environment"]["Variables"], **envs}
    lam.update_function_configuration(FunctionName=name, Timeout=10, MemorySize=256,
                                      Environment={"Variables": envs})
    lam.get_waiter("function_updated_v2").wait(FunctionName=name)


def function_url(lam, name: str) -> tuple[str, str, bool]:
    """sebs/aws/config.py AWSResources.function_url with auth type NONE, without SeBS's local
    cache: the URL, its auth type, and whether the public statement was already there."""
    try:
        response = lam.get_function_url_config(FunctionName=name)
        url, auth_type = response["FunctionUrl"], response["AuthType"]
    except lam.exceptions.ResourceNotFoundException:
        auth_type = "NONE"
        try:
            response = lam.create_function_url_config(FunctionName=name, AuthType=auth_type)
        except lam.exceptions.ResourceConflictException:
            response = lam.get_function_url_config(FunctionName=name)
        url = response["FunctionUrl"]
    already = False
    if auth_type == "NONE":
        try:
            lam.add_permission(FunctionName=name, StatementId=PUBLIC,
                               Action="lambda:InvokeFunctionUrl", Principal="*",
                               FunctionUrlAuthType="NONE")
        except lam.exceptions.ResourceConflictException:
            already = True
    return url, auth_type, already


def delete_function_url(lam, name: str) -> bool:
    """sebs/aws/config.py AWSResources.delete_function_url."""
    try:
        lam.delete_function_url_config(FunctionName=name)
        try:
            lam.remove_permission(FunctionName=name, StatementId=PUBLIC)
        except lam.exceptions.ResourceNotFoundException:
            pass
    except lam.exceptions.ResourceNotFoundException:
        return False
    return True


def http_invoke(url: str, payload: dict) -> tuple[int, bytes, float, float]:
    """sebs/faas/function.py Trigger._http_invoke's request, option for option."""
    c = pycurl.Curl()
    c.setopt(pycurl.HTTPHEADER, ["Content-Type: application/json"])
    c.setopt(pycurl.POST, 1)
    c.setopt(pycurl.URL, url)
    data = BytesIO()
    c.setopt(pycurl.WRITEFUNCTION, data.write)
    c.setopt(pycurl.POSTFIELDS, json.dumps(payload))
    c.perform()
    status = c.getinfo(pycurl.RESPONSE_CODE)
    conn_time = c.getinfo(pycurl.PRETRANSFER_TIME)
    receive_time = c.getinfo(pycurl.STARTTRANSFER_TIME)
    c.close()
    return status, data.getvalue(), conn_time, receive_time


def sebs_output(body: bytes) -> dict:
    """What Trigger._http_invoke and ExecutionResult.parse_benchmark_output read."""
    output = json.loads(body)
    if "body" in output:
        output = output["body"] if isinstance(output["body"], dict) else json.loads(output["body"])
    assert "request_id" in output, output
    assert "is_cold" in output, output
    assert float(output["end"]) >= float(output["begin"]) > 0
    return output


def test_sebs_deploys_a_function_url_and_its_http_trigger_invokes_it(server, admin):
    name = "sebs-110-dynamic-html-python-3-11"
    deploy(admin, name)
    url, auth_type, already = function_url(admin, name)
    assert auth_type == "NONE"
    assert not already, "a new function has no public statement yet"
    assert url.startswith("http://") and ".lambda-url." in url and url.endswith("/")
    policy = json.loads(admin.get_policy(FunctionName=name)["Policy"])
    [statement] = [s for s in policy["Statement"] if s["Sid"] == PUBLIC]
    assert statement["Action"] == "lambda:InvokeFunctionUrl"
    assert statement["Condition"] == {"StringEquals": {"lambda:FunctionUrlAuthType": "NONE"}}

    # SeBS posts to the URL exactly as CreateFunctionUrlConfig returned it: libcurl resolves the
    # *.localhost host name to the loopback address itself.
    payload = {"text": "the quick brown fox jumps", "random_len": 10}
    status, body, conn_time, receive_time = http_invoke(url, payload)
    assert status == 200, body
    assert 0 < conn_time <= receive_time
    assert "body" not in json.loads(body), "the URL maps the wrapper's statusCode/body to HTTP"
    first = sebs_output(body)
    assert first["is_cold"] is True
    assert str(uuid.UUID(first["request_id"])) == first["request_id"]
    assert first["result"] == {"output": {"words": 5, "longest": "quick",
                                          "request": first["request_id"]}}
    assert first["cold_start_var"] == "1", "UpdateFunctionConfiguration's Environment applies"

    status, body, _, _ = http_invoke(url, {"text": "a benchmark again"})
    assert status == 200, body
    second = sebs_output(body)
    assert second["is_cold"] is False, "a warm container serves the next request"
    assert second["container_id"] == first["container_id"]
    assert second["request_id"] != first["request_id"]
    assert second["result"]["output"]["words"] == 3

    # A new SeBS process (no local cache) finds the URL, and takes AddPermission's conflict as
    # "already allowed".
    assert function_url(admin, name) == (url, "NONE", True)
    status, body, _, _ = http_invoke(url, {"text": "still here"})
    assert status == 200, body
    assert sebs_output(body)["result"]["output"]["words"] == 2


def test_sebs_cleanup_removes_the_url_and_its_permission(server, admin):
    name = "sebs-cleanup-python-3-11"
    deploy(admin, name)
    url, _, _ = function_url(admin, name)
    status, body, _, _ = http_invoke(url, {"text": "here"})
    assert status == 200, body

    assert delete_function_url(admin, name) is True
    with pytest.raises(admin.exceptions.ResourceNotFoundException):
        admin.get_policy(FunctionName=name)  # the only statement went with the URL
    status, _, _, _ = http_invoke(url, {"text": "gone"})
    assert status == 404
    assert delete_function_url(admin, name) is False, "no URL: ResourceNotFoundException"
