"""Accounts and SigV4: accounts are invisible to each other, and requests that are unsigned,
badly signed, signed with an unknown key or with a skewed clock are refused with AWS's errors."""

from __future__ import annotations

import datetime
import json
import uuid

import boto3
import pytest
from botocore.config import Config

from ember_e2e import (
    REGION,
    ROLE,
    client_error,
    config_of,
    download,
    handler_zip,
    one_line,
    send,
    sign,
    skewed_clock,
)

LIST_PATH = "/2015-03-31/functions/"


@pytest.fixture(scope="module")
def a(server):
    return server.make_account("alice")


@pytest.fixture(scope="module")
def b(server):
    return server.make_account("bob")


@pytest.fixture(scope="module")
def lam_a(server, a):
    lam = server.lambda_client(a)
    for name in ("shared-name", "a-only"):
        lam.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                            Handler="app.handler", Code={"ZipFile": handler_zip(f"a/{name}")},
                            Environment={"Variables": {"OWNER": "alice"}})
    lam.put_function_concurrency(FunctionName="a-only", ReservedConcurrentExecutions=3)
    return lam


@pytest.fixture(scope="module")
def lam_b(server, b):
    lam = server.lambda_client(b)
    for name in ("shared-name", "b-only"):
        lam.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                            Handler="app.handler", Code={"ZipFile": handler_zip(f"b/{name}")},
                            Environment={"Variables": {"OWNER": "bob"}})
    return lam


def arn(account, name):
    return f"arn:aws:lambda:{REGION}:{account['AccountId']}:function:{name}"


def fresh_account(server, prefix: str, functions: tuple[str, ...] = ()):
    """A new account (its name unique to this call) holding exactly `functions`: listings of it
    depend on no other test. Its keys and a boto3 client of it."""
    keys = server.make_account(f"{prefix}-{uuid.uuid4().hex[:8]}")
    lam = server.lambda_client(keys)
    for name in functions:
        lam.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                            Handler="app.handler",
                            Code={"ZipFile": handler_zip(f"{keys['AccountId']}/{name}")})
    return keys, lam


def snapshot(lam, name):
    got = lam.get_function(FunctionName=name)
    return got["Configuration"], got.get("Concurrency"), download(got["Code"]["Location"])


# ---- isolation --------------------------------------------------------------------------------

CROSS_ACCOUNT_CALLS = {
    "GetFunction": lambda lam, ref: lam.get_function(FunctionName=ref),
    "GetFunctionConfiguration": lambda lam, ref: lam.get_function_configuration(FunctionName=ref),
    "UpdateFunctionCode": lambda lam, ref: lam.update_function_code(FunctionName=ref, ZipFile=handler_zip("hijack")),
    "UpdateFunctionConfiguration": lambda lam, ref: lam.update_function_configuration(
        FunctionName=ref, Environment={"Variables": {"OWNER": "mallory"}}),
    "DeleteFunction": lambda lam, ref: lam.delete_function(FunctionName=ref),
    "Invoke": lambda lam, ref: lam.invoke(FunctionName=ref, InvocationType="DryRun"),
    "PutFunctionConcurrency": lambda lam, ref: lam.put_function_concurrency(FunctionName=ref, ReservedConcurrentExecutions=1),
    "GetFunctionConcurrency": lambda lam, ref: lam.get_function_concurrency(FunctionName=ref),
    "DeleteFunctionConcurrency": lambda lam, ref: lam.delete_function_concurrency(FunctionName=ref),
}


def refusal(lam, operation: str, ref: str) -> tuple[str, int, str]:
    """(error code, HTTP status, message) of `operation` on `ref`, which must be a 404."""
    with pytest.raises(lam.exceptions.ResourceNotFoundException) as excinfo:
        CROSS_ACCOUNT_CALLS[operation](lam, ref)
    code, status, _ = client_error(excinfo)
    return code, status, excinfo.value.response["Error"]["Message"]


@pytest.mark.parametrize("form", ["name", "full ARN", "partial ARN"])
@pytest.mark.parametrize("operation", CROSS_ACCOUNT_CALLS)
def test_an_account_cannot_touch_another_accounts_function(lam_a, lam_b, a, operation, form):
    def ref(name):
        return {"name": name, "full ARN": arn(a, name),
                "partial ARN": f"{a['AccountId']}:function:{name}"}[form]

    before = snapshot(lam_a, "a-only")
    code, status, message = refusal(lam_b, operation, ref("a-only"))
    assert (code, status) == ("ResourceNotFoundException", 404)
    assert snapshot(lam_a, "a-only") == before
    # Not even the message gives the function away as existing: it is the one a function that
    # exists in no account gets, but for the name.
    with pytest.raises(lam_a.exceptions.ResourceNotFoundException):
        lam_a.get_function(FunctionName="a-none")
    missing = refusal(lam_b, operation, ref("a-none"))
    assert (code, status, message) == (missing[0], missing[1], missing[2].replace("a-none", "a-only"))


@pytest.mark.parametrize("operation", CROSS_ACCOUNT_CALLS)
def test_another_accounts_arn_never_resolves_to_the_callers_own_function(lam_a, lam_b, a, operation):
    # Both accounts have "shared-name"; Bob naming Alice's ARN must reach neither.
    before_a, before_b = snapshot(lam_a, "shared-name"), snapshot(lam_b, "shared-name")
    with pytest.raises(lam_b.exceptions.ResourceNotFoundException):
        CROSS_ACCOUNT_CALLS[operation](lam_b, arn(a, "shared-name"))
    assert snapshot(lam_a, "shared-name") == before_a
    assert snapshot(lam_b, "shared-name") == before_b


def test_each_account_lists_only_its_own_functions(server, lam_a, lam_b):
    # Two accounts of this test's own, among the module's (whose functions share names with
    # theirs): each lists exactly what it created.
    x, lam_x = fresh_account(server, "lister-x", ("shared-name", "x-only", "a-only"))
    y, lam_y = fresh_account(server, "lister-y", ("shared-name", "y-only"))
    listed_x = [f for p in lam_x.get_paginator("list_functions").paginate() for f in p["Functions"]]
    listed_y = [f for p in lam_y.get_paginator("list_functions").paginate() for f in p["Functions"]]
    assert [f["FunctionName"] for f in listed_x] == ["a-only", "shared-name", "x-only"]
    assert [f["FunctionName"] for f in listed_y] == ["shared-name", "y-only"]
    assert all(f["FunctionArn"] == arn(x, f["FunctionName"]) for f in listed_x)
    assert all(f["FunctionArn"] == arn(y, f["FunctionName"]) for f in listed_y)


def test_same_name_in_two_accounts_are_two_functions(lam_a, lam_b, a, b):
    ca = config_of(lam_a.get_function_configuration(FunctionName="shared-name"))
    cb = config_of(lam_b.get_function_configuration(FunctionName="shared-name"))
    assert a["AccountId"] != b["AccountId"]
    assert (ca["FunctionArn"], cb["FunctionArn"]) == (arn(a, "shared-name"), arn(b, "shared-name"))
    assert ca["CodeSha256"] != cb["CodeSha256"]
    assert (ca["Environment"], cb["Environment"]) == (
        {"Variables": {"OWNER": "alice"}}, {"Variables": {"OWNER": "bob"}})
    # Deleting one leaves the other.
    lam_b.create_function(FunctionName="short-lived", Runtime="python3.11", Role=ROLE,
                          Handler="app.handler", Code={"ZipFile": handler_zip("b/short")})
    lam_a.create_function(FunctionName="short-lived", Runtime="python3.11", Role=ROLE,
                          Handler="app.handler", Code={"ZipFile": handler_zip("a/short")})
    lam_b.delete_function(FunctionName="short-lived")
    assert lam_a.get_function_configuration(FunctionName="short-lived")["FunctionArn"] == arn(a, "short-lived")
    lam_a.delete_function(FunctionName="short-lived")


def test_an_account_can_use_its_own_arn(lam_b, b):
    c = lam_b.get_function_configuration(FunctionName=arn(b, "b-only"))
    assert c["FunctionName"] == "b-only"


# ---- signatures -------------------------------------------------------------------------------


def expect_403(resp, error_type: str) -> None:
    assert resp.status == 403, (resp.status, resp.body)
    assert resp.headers.get("x-amzn-ErrorType", "").split(":")[0] == error_type, dict(resp.headers)
    assert resp.headers.get("x-amzn-RequestId")
    body = resp.json()
    assert body.get("message") or body.get("Message"), body


def signed_get(server, keys, path=LIST_PATH, **sign_kwargs):
    url = server.endpoint + path
    return send("GET", url, headers=sign("GET", url, b"", keys, **sign_kwargs))


def test_a_correctly_signed_raw_request_is_accepted(server):
    keys, _ = fresh_account(server, "raw", ("raw-one", "raw-two"))
    resp = signed_get(server, keys)
    assert resp.status == 200, resp.body
    assert resp.headers.get("x-amzn-RequestId")
    assert [f["FunctionName"] for f in resp.json()["Functions"]] == ["raw-one", "raw-two"]


def test_unsigned_request_is_unrecognized_client(server):
    expect_403(send("GET", server.endpoint + LIST_PATH), "UnrecognizedClientException")


def test_wrong_secret_is_invalid_signature(server, a):
    keys = dict(a, SecretAccessKey=a["SecretAccessKey"][:-1] + ("A" if a["SecretAccessKey"][-1] != "A" else "B"))
    expect_403(signed_get(server, keys), "InvalidSignatureException")


def test_unknown_access_key_is_unrecognized_client(server, a):
    keys = dict(a, AccessKeyId="AKIAUNKNOWNKEY000000")
    expect_403(signed_get(server, keys), "UnrecognizedClientException")


def test_unknown_access_key_through_boto3(server):
    lam = server.lambda_client({"AccessKeyId": "AKIAUNKNOWNKEY000000", "SecretAccessKey": "x" * 40})
    with pytest.raises(Exception) as excinfo:
        lam.list_functions()
    assert client_error(excinfo)[:2] == ("UnrecognizedClientException", 403)


def test_signature_for_another_service_is_invalid(server, a):
    expect_403(signed_get(server, a, service="s3"), "InvalidSignatureException")


def test_signature_for_another_region_is_invalid_and_names_the_servers(server, a, lam_a):
    """boto3 configured for eu-west-1, against this us-east-1 server: a correct signature, but
    for the wrong region's scope. Nothing is created."""
    assert REGION == "us-east-1"
    elsewhere = boto3.client(
        "lambda", endpoint_url=server.endpoint, region_name="eu-west-1",
        aws_access_key_id=a["AccessKeyId"], aws_secret_access_key=a["SecretAccessKey"],
        config=Config(retries={"max_attempts": 1, "mode": "standard"}))
    with pytest.raises(elsewhere.exceptions.ClientError) as excinfo:
        elsewhere.create_function(FunctionName="from-eu", Runtime="python3.11", Role=ROLE,
                                  Handler="app.handler", Code={"ZipFile": handler_zip("eu")})
    assert client_error(excinfo)[:2] == ("InvalidSignatureException", 403)
    message = excinfo.value.response["Error"]["Message"]
    assert "not 'eu-west-1'" in message and "'us-east-1'" in message, message
    names = {f["FunctionName"] for f in lam_a.list_functions()["Functions"]}
    assert "from-eu" not in names
    # The raw request too, signed by botocore's own signer.
    expect_403(signed_get(server, a, region="eu-west-1"), "InvalidSignatureException")


def signed_at(server, keys, skew: datetime.timedelta):
    url = server.endpoint + LIST_PATH
    with skewed_clock(skew):
        headers = sign("GET", url, b"", keys)
    # The patch took: the request claims the skewed time.
    claimed = datetime.datetime.strptime(headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(
        tzinfo=datetime.timezone.utc)
    actual = datetime.datetime.now(datetime.timezone.utc)
    assert abs((claimed - actual) - skew) < datetime.timedelta(seconds=30), headers["X-Amz-Date"]
    return send("GET", url, headers=headers)


@pytest.mark.parametrize("minutes", [20, -20])
def test_clock_skew_over_15_minutes_is_invalid_signature(server, a, minutes):
    expect_403(signed_at(server, a, datetime.timedelta(minutes=minutes)), "InvalidSignatureException")


@pytest.mark.parametrize("minutes", [5, -5])
def test_clock_skew_of_5_minutes_is_accepted(server, a, minutes):
    resp = signed_at(server, a, datetime.timedelta(minutes=minutes))
    assert resp.status == 200, resp.body


def test_body_tampered_after_signing_is_invalid_signature(server, a, lam_a):
    before = config_of(lam_a.get_function_configuration(FunctionName="a-only"))
    url = f"{server.endpoint}/2015-03-31/functions/a-only/configuration"
    signed_body = json.dumps({"Description": "honest"}).encode()
    tampered = json.dumps({"Description": "forged"}).encode()
    assert len(signed_body) == len(tampered)
    headers = sign("PUT", url, signed_body, a)
    expect_403(send("PUT", url, tampered, headers), "InvalidSignatureException")
    assert config_of(lam_a.get_function_configuration(FunctionName="a-only")) == before
    # The same signature with the body it was made for is fine.
    resp = send("PUT", url, signed_body, headers)
    assert resp.status == 200, resp.body
    assert resp.json()["Description"] == "honest"


def test_path_tampered_after_signing_is_invalid_signature(server, a, lam_a):
    signed_url = f"{server.endpoint}/2015-03-31/functions/a-only"
    headers = sign("GET", signed_url, b"", a)
    expect_403(send("GET", f"{server.endpoint}/2015-03-31/functions/shared-name", headers=headers),
               "InvalidSignatureException")


# ---- accounts ---------------------------------------------------------------------------------


def test_accounts_create_prints_keys_that_work(server):
    account = server.make_account("carol")
    lam = server.lambda_client(account)
    assert lam.list_functions()["Functions"] == []
    c = lam.create_function(FunctionName="carols", Runtime="python3.11", Role=ROLE,
                            Handler="app.handler", Code={"ZipFile": handler_zip("carol")})
    assert c["FunctionArn"] == arn(account, "carols")


def test_accounts_create_twice_with_one_name_fails_with_one_line(server):
    server.make_account("dave")
    r = server.run_ember("accounts", "create", "dave", "--json", "--data-dir", str(server.data_dir))
    assert r.returncode != 0
    assert r.stdout == ""
    assert one_line(r.stderr), r.stderr
    assert r.stderr.startswith("error:") and "dave" in r.stderr, r.stderr
