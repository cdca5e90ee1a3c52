"""GetAccountSettings with the account's real numbers; the function settings Ember answers without a
feature behind them (code signing: none; runtime management: Auto; recursion: kept); the code
signing operations it refuses clearly; and InvokeAsync, queued as an Event invocation. Through
boto3, the AWS CLI and the AWS SDK for JavaScript v3."""

from __future__ import annotations

import json
import os
import time

import pytest

from ember_e2e import REGION, ROLE, client_error, handler_zip, send, sign
from js_sdk import js_calls

CONCURRENCY = 200
CSC_ARN = "arn:aws:lambda:us-east-1:123456789012:code-signing-config:csc-0123456789abcdef0"


@pytest.fixture(scope="module")
def server(module_server_factory):
    return module_server_factory(None, "--account-concurrency", str(CONCURRENCY))


@pytest.fixture(scope="module")
def account(server):
    return server.make_account("settings")


@pytest.fixture(scope="module")
def lam(server, account):
    return server.lambda_client(account)


@pytest.fixture(scope="module")
def raw(server, account):
    return server.lambda_client(account, validate=False)


def create(lam, name, zip_bytes=None):
    zip_bytes = zip_bytes if zip_bytes is not None else handler_zip(name)
    lam.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE, Handler="app.handler",
                        Code={"ZipFile": zip_bytes})
    return zip_bytes


def arn(account, name):
    return f"arn:aws:lambda:{REGION}:{account['AccountId']}:function:{name}"


def expect_not_supported(excinfo, operation):
    code, status, _ = client_error(excinfo)
    assert (code, status) == ("UnknownOperationException", 404)
    message = excinfo.value.response["Error"]["Message"]
    assert message.startswith(f"{operation} is not supported by Ember: "), message


# ---- GetAccountSettings -----------------------------------------------------------------------


def test_account_settings_count_the_accounts_functions_code_and_reservations(server):
    # A fresh account of its own: the numbers are exactly its functions'.
    keys = server.make_account("settings-counted")
    mine = server.lambda_client(keys)
    r = mine.get_account_settings()
    assert r["AccountUsage"] == {"TotalCodeSize": 0, "FunctionCount": 0}
    assert r["AccountLimit"]["ConcurrentExecutions"] == CONCURRENCY
    assert r["AccountLimit"]["UnreservedConcurrentExecutions"] == CONCURRENCY

    sizes = [len(create(mine, "counted-a")), len(create(mine, "counted-b", handler_zip("b" * 500)))]
    mine.put_function_concurrency(FunctionName="counted-b", ReservedConcurrentExecutions=30)
    r = mine.get_account_settings()
    assert r["AccountUsage"] == {"TotalCodeSize": sum(sizes), "FunctionCount": 2}
    limit = r["AccountLimit"]
    assert limit["ConcurrentExecutions"] == CONCURRENCY
    assert limit["UnreservedConcurrentExecutions"] == CONCURRENCY - 30
    assert limit["CodeSizeZipped"] == 52_428_800
    assert limit["CodeSizeUnzipped"] == 262_144_000
    # No quota of Ember's own: what the account stores plus what the data dir has free.
    st = os.statvfs(server.data_dir)
    free = st.f_bavail * st.f_frsize
    assert abs(limit["TotalCodeSize"] - sum(sizes) - free) < 64 * 1024 * 1024, (limit, free)

    mine.delete_function(FunctionName="counted-a")
    r = mine.get_account_settings()
    assert r["AccountUsage"] == {"TotalCodeSize": sizes[1], "FunctionCount": 1}
    # Another account's functions do not count, nor its reservations.
    other = server.lambda_client(server.make_account("settings-other")).get_account_settings()
    assert other["AccountUsage"] == {"TotalCodeSize": 0, "FunctionCount": 0}
    assert other["AccountLimit"]["UnreservedConcurrentExecutions"] == CONCURRENCY


def test_account_settings_through_the_aws_cli_and_the_js_sdk(server):
    keys = server.make_account("settings-clients")
    create(server.lambda_client(keys), "one")
    rc, out, err = server.aws("lambda", "get-account-settings", keys=keys)
    assert rc == 0, err
    assert out["AccountUsage"]["FunctionCount"] == 1
    assert out["AccountLimit"]["ConcurrentExecutions"] == CONCURRENCY
    (result,) = js_calls(server, [("GetAccountSettings", {})], keys=keys)
    assert result["output"]["AccountUsage"]["FunctionCount"] == 1
    assert result["output"]["AccountLimit"]["UnreservedConcurrentExecutions"] == CONCURRENCY


# ---- code signing -----------------------------------------------------------------------------


def test_code_signing_config_answers_none_and_setting_one_is_refused(lam, account):
    create(lam, "unsigned")
    r = lam.get_function_code_signing_config(FunctionName="unsigned")
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert (r["CodeSigningConfigArn"], r["FunctionName"]) == ("", "unsigned")
    r = lam.get_function_code_signing_config(FunctionName=arn(account, "unsigned"))
    assert r["FunctionName"] == "unsigned"
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function_code_signing_config(FunctionName="no-such-function")

    with pytest.raises(lam.exceptions.ClientError) as e:
        lam.put_function_code_signing_config(FunctionName="unsigned", CodeSigningConfigArn=CSC_ARN)
    expect_not_supported(e, "PutFunctionCodeSigningConfig")
    with pytest.raises(lam.exceptions.ClientError) as e:
        lam.delete_function_code_signing_config(FunctionName="unsigned")
    expect_not_supported(e, "DeleteFunctionCodeSigningConfig")
    assert lam.get_function_code_signing_config(FunctionName="unsigned")["CodeSigningConfigArn"] == ""


@pytest.mark.parametrize("operation, params", [
    ("CreateCodeSigningConfig", {"AllowedPublishers": {"SigningProfileVersionArns": ["arn:aws:signer:us-east-1:123456789012:/signing-profiles/p"]}}),
    ("ListCodeSigningConfigs", {}),
    ("GetCodeSigningConfig", {"CodeSigningConfigArn": CSC_ARN}),
    ("UpdateCodeSigningConfig", {"CodeSigningConfigArn": CSC_ARN, "Description": "d"}),
    ("DeleteCodeSigningConfig", {"CodeSigningConfigArn": CSC_ARN}),
    ("ListFunctionsByCodeSigningConfig", {"CodeSigningConfigArn": CSC_ARN}),
])
def test_code_signing_config_operations_are_refused_clearly(lam, operation, params):
    from botocore import xform_name

    with pytest.raises(lam.exceptions.ClientError) as e:
        getattr(lam, xform_name(operation))(**params)
    expect_not_supported(e, operation)


def test_the_aws_cli_sees_no_code_signing_config(server, lam, account):
    create(lam, "cli-unsigned")
    rc, out, err = server.aws("lambda", "get-function-code-signing-config",
                              "--function-name", "cli-unsigned", keys=account)
    assert rc == 0, err
    assert out == {"CodeSigningConfigArn": "", "FunctionName": "cli-unsigned"}


# ---- runtime management -----------------------------------------------------------------------


def test_runtime_management_is_auto_only(lam, raw, account):
    create(lam, "runtime-auto")
    r = lam.get_runtime_management_config(FunctionName="runtime-auto")
    assert r["UpdateRuntimeOn"] == "Auto"
    assert r["FunctionArn"] == arn(account, "runtime-auto")
    assert "RuntimeVersionArn" not in r
    r = lam.put_runtime_management_config(FunctionName="runtime-auto", UpdateRuntimeOn="Auto")
    assert (r["UpdateRuntimeOn"], r["FunctionArn"]) == ("Auto", arn(account, "runtime-auto"))
    r = lam.get_runtime_management_config(FunctionName="runtime-auto", Qualifier="$LATEST")
    assert r["FunctionArn"] == arn(account, "runtime-auto") + ":$LATEST"

    for mode, says in (("Manual", "UpdateRuntimeOn Manual is not supported by Ember"),
                       ("FunctionUpdate", "UpdateRuntimeOn FunctionUpdate is not supported"),
                       ("Sometimes", "Member must satisfy enum value set")):
        with pytest.raises(raw.exceptions.InvalidParameterValueException) as e:
            raw.put_runtime_management_config(
                FunctionName="runtime-auto", UpdateRuntimeOn=mode,
                RuntimeVersionArn="arn:aws:lambda:us-east-1::runtime:0123456789abcdef0123")
        assert says in e.value.response["Error"]["Message"]
    assert lam.get_runtime_management_config(FunctionName="runtime-auto")["UpdateRuntimeOn"] == "Auto"
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_runtime_management_config(FunctionName="no-such-function")
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.put_runtime_management_config(FunctionName="no-such-function", UpdateRuntimeOn="Auto")


# ---- recursion --------------------------------------------------------------------------------


def test_the_recursion_setting_is_terminate_until_put_and_goes_with_the_function(lam, raw, account):
    create(lam, "recursive")
    assert lam.get_function_recursion_config(FunctionName="recursive")["RecursiveLoop"] == "Terminate"
    r = lam.put_function_recursion_config(FunctionName="recursive", RecursiveLoop="Allow")
    assert r["RecursiveLoop"] == "Allow"
    assert lam.get_function_recursion_config(FunctionName=arn(account, "recursive"))["RecursiveLoop"] == "Allow"

    with pytest.raises(raw.exceptions.InvalidParameterValueException) as e:
        raw.put_function_recursion_config(FunctionName="recursive", RecursiveLoop="Never")
    assert "Member must satisfy enum value set: [Allow, Terminate]" in e.value.response["Error"]["Message"]
    with pytest.raises(raw.exceptions.InvalidParameterValueException) as e:
        raw.put_function_recursion_config(FunctionName="recursive:$LATEST", RecursiveLoop="Terminate")
    assert "not to a version or alias" in e.value.response["Error"]["Message"]
    assert lam.get_function_recursion_config(FunctionName="recursive")["RecursiveLoop"] == "Allow"

    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.put_function_recursion_config(FunctionName="no-such-function", RecursiveLoop="Allow")
    lam.delete_function(FunctionName="recursive")
    create(lam, "recursive")
    assert lam.get_function_recursion_config(FunctionName="recursive")["RecursiveLoop"] == "Terminate"


def test_the_js_sdk_reads_and_puts_the_settings(server, lam, account):
    create(lam, "js-settings")
    got, put, recursion, signing = js_calls(server, [
        ("GetRuntimeManagementConfig", {"FunctionName": "js-settings"}),
        ("PutFunctionRecursionConfig", {"FunctionName": "js-settings", "RecursiveLoop": "Allow"}),
        ("GetFunctionRecursionConfig", {"FunctionName": "js-settings"}),
        ("PutFunctionCodeSigningConfig", {"FunctionName": "js-settings", "CodeSigningConfigArn": CSC_ARN}),
    ], keys=account)
    assert got["output"]["UpdateRuntimeOn"] == "Auto"
    assert put["output"]["RecursiveLoop"] == "Allow"
    assert recursion["output"]["RecursiveLoop"] == "Allow"
    assert signing["error"]["name"] == "UnknownOperationException"
    assert signing["error"]["status"] == 404


# ---- InvokeAsync ------------------------------------------------------------------------------


def logged(server, keys, name, request_id, timeout=30.0) -> str:
    """The log of one invocation, once it has run."""
    url = f"{server.endpoint}/ember/v1/functions/{name}/logs?Limit=1000"
    deadline = time.monotonic() + timeout
    while True:
        r = send("GET", url, headers=sign("GET", url, b"", keys))
        assert r.status == 200, r.body
        for event in r.json()["Events"]:
            if event["RequestId"] == request_id:
                return event["Message"]
        assert time.monotonic() < deadline, f"{request_id} never ran: {r.json()}"
        time.sleep(0.2)


@pytest.mark.needs_root  # the queued invocation runs in a VM
def test_invoke_async_queues_an_event_invocation(server, lam, account, python_app_zip):
    create(lam, "async-app", python_app_zip)
    r = lam.invoke_async(FunctionName="async-app", InvokeArgs=json.dumps({"print": "async-ran"}))
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert r["Status"] == 202
    log = logged(server, account, "async-app", r["ResponseMetadata"]["RequestId"])
    assert "async-ran" in log and "REPORT RequestId" in log

    # The deprecated path with its trailing slash, as older SDKs send it.
    url = f"{server.endpoint}/2014-11-13/functions/async-app/invoke-async/"
    body = json.dumps({"print": "slash-ran"}).encode()
    resp = send("POST", url, body, sign("POST", url, body, account))
    assert resp.status == 202, resp.body
    log = logged(server, account, "async-app", resp.headers["x-amzn-RequestId"])
    assert "slash-ran" in log


def test_invoke_async_checks_what_an_event_invocation_checks(lam):
    create(lam, "async-checked")
    with pytest.raises(lam.exceptions.InvalidRequestContentException):
        lam.invoke_async(FunctionName="async-checked", InvokeArgs=b"not json")
    with pytest.raises(lam.exceptions.RequestTooLargeException):
        lam.invoke_async(FunctionName="async-checked", InvokeArgs=b" " * (256 * 1024 + 1))
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.invoke_async(FunctionName="no-such-function", InvokeArgs=b"{}")
