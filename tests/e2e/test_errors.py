"""AWS errors through boto3: exact error code and HTTP status, the headers botocore reads, and
the promise that a rejected request changes nothing.

The client runs with botocore's parameter validation off, so that values botocore would refuse
itself (MemorySize 127, Timeout 0) reach the server and what is tested is Ember's validation.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import struct
import time
import warnings
import zipfile

import pytest

from botocore.exceptions import ClientError

from ember_e2e import (
    HANDLER_PY,
    ROLE,
    client_error,
    config_of,
    download,
    handler_zip,
    make_zip,
    send,
    sign,
)

MB = 1024 * 1024


@pytest.fixture(scope="module")
def account(server):
    return server.make_account("errors")


@pytest.fixture(scope="module")
def lam(server, account):
    return server.lambda_client(account, validate=False)


def expect_error(excinfo, code: str, status: int) -> None:
    got_code, got_status, headers = client_error(excinfo)
    assert (got_code, got_status) == (code, status)
    assert headers.get("x-amzn-requestid"), headers
    assert headers.get("x-amzn-errortype", "").split(":")[0] == code
    assert excinfo.value.response["Error"]["Message"], "error without a message"


def create_params(name: str, **overrides) -> dict:
    params = dict(
        FunctionName=name,
        Runtime="python3.11",
        Role=ROLE,
        Handler="app.handler",
        Code={"ZipFile": handler_zip(name)},
    )
    params.update(overrides)
    return params


def assert_absent(lam, name: str) -> None:
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function_configuration(FunctionName=name)


# ---- hostile and oversized packages, built once per session --------------------------------


def zip_with_names(*names: str) -> bytes:
    # make_zip writes names exactly as given (zipfile.ZipInfo does not sanitise them).
    z = make_zip({**{n: b"evil" for n in names}, "app.py": "def handler(e, c): pass\n"})
    with zipfile.ZipFile(io.BytesIO(z)) as zf:
        assert set(names) <= set(zf.namelist()), "zipfile rewrote an entry name"
    return z


def zip_with_entries(*entries: tuple[str, bytes]) -> bytes:
    """A zip of exactly these (name, content) entries, repeated names included (zipfile warns
    about a duplicate name but writes it: `unzip -l` lists both)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, content in entries:
                zf.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), content)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        assert [i.filename for i in zf.infolist()] == [n for n, _ in entries]
    return buf.getvalue()


def duplicate_app_py() -> bytes:
    """Two entries named app.py: a server that kept the second would run the second handler."""
    return zip_with_entries(("app.py", HANDLER_PY), ("app.py", "def handler(e, c): return 'second'\n"))


def zeros_entry(zf: zipfile.ZipFile, name: str, size: int) -> None:
    chunk = bytes(MB)
    with zf.open(name, "w") as f:
        for _ in range(size // MB):
            f.write(chunk)


@pytest.fixture(scope="session")
def bomb_one_entry() -> bytes:
    """One entry of 260 MB of zeros: about 250 KB zipped, over the 250 MB unzipped limit."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("app.py", "def handler(e, c): pass\n")
        zeros_entry(zf, "zeros.bin", 260 * MB)
    assert len(buf.getvalue()) < MB
    return buf.getvalue()


@pytest.fixture(scope="session")
def bomb_many_entries() -> bytes:
    """Three entries of 90 MB each: each under the limit, together over it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("app.py", "def handler(e, c): pass\n")
        for i in range(3):
            zeros_entry(zf, f"part{i}.bin", 90 * MB)
    return buf.getvalue()


@pytest.fixture(scope="session")
def bomb_lying_sizes(bomb_one_entry) -> bytes:
    """The 260 MB entry again, but its headers declare 1,000 bytes: only decompressing can tell."""
    data = bytearray(bomb_one_entry)
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo("zeros.bin")
    local = info.header_offset
    assert data[local:local + 4] == b"PK\x03\x04"
    struct.pack_into("<I", data, local + 22, 1000)
    eocd = data.rfind(b"PK\x05\x06")
    (cd_offset,) = struct.unpack_from("<I", data, eocd + 16)
    pos = cd_offset
    while data[pos:pos + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, pos + 28)
        if data[pos + 46:pos + 46 + name_len] == b"zeros.bin":
            struct.pack_into("<I", data, pos + 24, 1000)
        pos += 46 + name_len + extra_len + comment_len
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        assert zf.getinfo("zeros.bin").file_size == 1000
    return bytes(data)


def stored_zip_of_random_bytes(size: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("app.py", "def handler(e, c): pass\n")
        zf.writestr("blob.bin", os.urandom(size))
    return buf.getvalue()


@pytest.fixture(scope="session")
def oversized_zip() -> bytes:
    """50 MB + 1 KB of random (incompressible) bytes in a stored zip: over the 50 MB zip limit
    (its base64 still fits in the largest request body AWS accepts)."""
    z = stored_zip_of_random_bytes(50 * MB + 1024)
    assert len(z) > 50 * MB
    return z


@pytest.fixture(scope="session")
def huge_zip() -> bytes:
    """60 MB: its base64 is over the largest request body AWS accepts (70,167,211 bytes)."""
    return stored_zip_of_random_bytes(60 * MB)


BAD_PACKAGES = {
    "dot-dot entry": lambda r: zip_with_names("../evil"),
    "nested dot-dot entry": lambda r: zip_with_names("lib/../../evil"),
    "absolute path entry": lambda r: zip_with_names("/etc/evil"),
    "two entries of one name": lambda r: duplicate_app_py(),
    "names equal once normalised": lambda r: zip_with_entries(("app.py", HANDLER_PY), ("./app.py", HANDLER_PY)),
    "file and directory of one name": lambda r: zip_with_entries(("app.py", HANDLER_PY), ("lib", b"x"), ("lib/", b"")),
    "not a zip": lambda r: b"this is not a zip file at all" * 10,
    "empty upload": lambda r: b"",
    "zip bomb, one entry": lambda r: r.getfixturevalue("bomb_one_entry"),
    "zip bomb, many entries": lambda r: r.getfixturevalue("bomb_many_entries"),
    "zip bomb, lying sizes": lambda r: r.getfixturevalue("bomb_lying_sizes"),
}


# ---- 404 --------------------------------------------------------------------------------------


MISSING_CALLS = {
    "GetFunction": lambda lam: lam.get_function(FunctionName="missing"),
    "GetFunctionConfiguration": lambda lam: lam.get_function_configuration(FunctionName="missing"),
    "UpdateFunctionCode": lambda lam: lam.update_function_code(FunctionName="missing", ZipFile=handler_zip()),
    "UpdateFunctionConfiguration": lambda lam: lam.update_function_configuration(FunctionName="missing", Timeout=5),
    "DeleteFunction": lambda lam: lam.delete_function(FunctionName="missing"),
    "PutFunctionConcurrency": lambda lam: lam.put_function_concurrency(FunctionName="missing", ReservedConcurrentExecutions=1),
    "GetFunctionConcurrency": lambda lam: lam.get_function_concurrency(FunctionName="missing"),
    "DeleteFunctionConcurrency": lambda lam: lam.delete_function_concurrency(FunctionName="missing"),
    "Invoke": lambda lam: lam.invoke(FunctionName="missing", InvocationType="DryRun"),
}


@pytest.mark.parametrize("operation", MISSING_CALLS)
def test_missing_function_is_resource_not_found(lam, account, operation):
    with pytest.raises(lam.exceptions.ResourceNotFoundException) as excinfo:
        MISSING_CALLS[operation](lam)
    expect_error(excinfo, "ResourceNotFoundException", 404)
    # Named by its full ARN, account id included, whatever the operation.
    arn = f"arn:aws:lambda:us-east-1:{account['AccountId']}:function:missing"
    assert excinfo.value.response["Error"]["Message"] == f"Function not found: {arn}"
    assert_absent(lam, "missing")


# ---- 409 --------------------------------------------------------------------------------------


def test_creating_an_existing_function_is_a_conflict_and_changes_nothing(lam):
    original = config_of(lam.create_function(**create_params("twice", Description="first")))
    with pytest.raises(lam.exceptions.ResourceConflictException) as excinfo:
        lam.create_function(**create_params("twice", Description="second", MemorySize=256,
                                            Code={"ZipFile": handler_zip("other code")}))
    expect_error(excinfo, "ResourceConflictException", 409)
    got = lam.get_function(FunctionName="twice")
    assert got["Configuration"] == original
    assert download(got["Code"]["Location"]) == handler_zip("twice")


# ---- 400 on create ----------------------------------------------------------------------------

ENV_OVER_4KB = {"Variables": {"BIG": "x" * 4090}}
ENV_BIG_BUT_FINE = {"Variables": {"BIG": "x" * 4000}}

BAD_CREATE = {
    "MemorySize 127": {"MemorySize": 127},
    "MemorySize 10241": {"MemorySize": 10241},
    "Timeout 0": {"Timeout": 0},
    "Timeout 901": {"Timeout": 901},
    "env over 4 KB": {"Environment": ENV_OVER_4KB},
    "env many vars over 4 KB": {"Environment": {"Variables": {f"VAR_{i:03d}": "v" * 40 for i in range(100)}}},
    "reserved env key AWS_REGION": {"Environment": {"Variables": {"AWS_REGION": "eu-west-1"}}},
    "reserved env key AWS_LAMBDA_FUNCTION_NAME": {"Environment": {"Variables": {"AWS_LAMBDA_FUNCTION_NAME": "x"}}},
    "malformed env key": {"Environment": {"Variables": {"1BAD": "x"}}},
    "unknown Runtime": {"Runtime": "nodejs16.x"},
    "python Handler without a dot": {"Handler": "nodot"},
    "Handler with a space": {"Handler": "app handler"},
    "bad Role": {"Role": "lambda-role"},
    "Role that is a user": {"Role": "arn:aws:iam::123456789012:user/bob"},
    "no Code": {"Code": {}},
    "Description over 256": {"Description": "d" * 257},
}


@pytest.mark.parametrize("case", BAD_CREATE)
def test_invalid_create_is_rejected_and_creates_nothing(lam, case):
    name = "bad-create-" + "".join(c if c.isalnum() else "-" for c in case)[:40]
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as excinfo:
        lam.create_function(**create_params(name, **BAD_CREATE[case]))
    expect_error(excinfo, "InvalidParameterValueException", 400)
    assert_absent(lam, name)


def test_invalid_function_name_is_rejected(lam):
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as excinfo:
        lam.create_function(**create_params("bad.name!"))
    expect_error(excinfo, "InvalidParameterValueException", 400)


def test_limits_are_inclusive(lam):
    c = config_of(lam.create_function(**create_params(
        "at-the-limits", MemorySize=10240, Timeout=900, Environment=ENV_BIG_BUT_FINE)))
    assert (c["MemorySize"], c["Timeout"]) == (10240, 900)
    c = config_of(lam.update_function_configuration(FunctionName="at-the-limits", MemorySize=128, Timeout=1))
    assert (c["MemorySize"], c["Timeout"]) == (128, 1)


@pytest.mark.parametrize("case", BAD_PACKAGES)
def test_bad_package_on_create_is_rejected_and_creates_nothing(lam, request, case):
    name = "bad-zip-" + "".join(c if c.isalnum() else "-" for c in case)[:40]
    zip_bytes = BAD_PACKAGES[case](request)
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as excinfo:
        lam.create_function(**create_params(name, Code={"ZipFile": zip_bytes}))
    expect_error(excinfo, "InvalidParameterValueException", 400)
    assert_absent(lam, name)


def blob_files(server) -> list[str]:
    return sorted(server.stored_blobs())


def test_zip_with_a_repeated_entry_name_is_refused_naming_it_and_stores_nothing(server, lam):
    blobs = blob_files(server)
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as excinfo:
        lam.create_function(**create_params("dup-entry", Code={"ZipFile": duplicate_app_py()}))
    expect_error(excinfo, "InvalidParameterValueException", 400)
    assert "app.py" in excinfo.value.response["Error"]["Message"]
    assert_absent(lam, "dup-entry")
    assert blob_files(server) == blobs


def test_zip_over_50_mb_on_create_is_request_too_large(lam, oversized_zip):
    with pytest.raises(lam.exceptions.RequestTooLargeException) as excinfo:
        lam.create_function(**create_params("too-large", Code={"ZipFile": oversized_zip}))
    expect_error(excinfo, "RequestTooLargeException", 413)
    assert_absent(lam, "too-large")


def test_request_body_over_aws_limit_is_request_entity_too_large(lam, huge_zip):
    # As AWS answers a body over its limit: RequestEntityTooLargeException, which botocore's
    # model does not list, so boto3 raises a plain ClientError carrying the code.
    with pytest.raises(ClientError) as excinfo:
        lam.create_function(**create_params("huge", Code={"ZipFile": huge_zip}))
    expect_error(excinfo, "RequestEntityTooLargeException", 413)
    assert "70167211" in excinfo.value.response["Error"]["Message"]
    assert_absent(lam, "huge")


def test_zip_just_under_50_mb_is_accepted(lam):
    zip_bytes = stored_zip_of_random_bytes(50 * MB - 4096)
    assert 50 * MB - 4096 < len(zip_bytes) <= 50 * MB
    c = config_of(lam.create_function(**create_params("just-under-limit", Code={"ZipFile": zip_bytes})))
    assert c["CodeSize"] == len(zip_bytes)
    lam.delete_function(FunctionName="just-under-limit")


# ---- 400 and 413 on update: nothing changes ---------------------------------------------------


@pytest.fixture(scope="module")
def victim(lam):
    """A function that rejected updates must leave exactly as it is."""
    zip_bytes = handler_zip("victim")
    lam.create_function(**create_params(
        "victim", Code={"ZipFile": zip_bytes}, MemorySize=256, Timeout=10,
        Description="keep me", Environment={"Variables": {"KEEP": "1"}}))
    return zip_bytes


def assert_victim_unchanged(lam, before: dict, zip_bytes: bytes) -> None:
    got = lam.get_function(FunctionName="victim")
    assert got["Configuration"] == before
    assert download(got["Code"]["Location"]) == zip_bytes


# Every invalid configuration value of CreateFunction is invalid in an update too.
BAD_UPDATE = {k: v for k, v in BAD_CREATE.items() if k != "no Code"}


@pytest.mark.parametrize("case", BAD_UPDATE)
def test_invalid_configuration_update_changes_nothing(lam, victim, case):
    before = config_of(lam.get_function_configuration(FunctionName="victim"))
    # A valid change alongside the invalid one must not be applied either.
    params = {"FunctionName": "victim", "Description": "changed?", **BAD_UPDATE[case]}
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as excinfo:
        lam.update_function_configuration(**params)
    expect_error(excinfo, "InvalidParameterValueException", 400)
    assert_victim_unchanged(lam, before, victim)


@pytest.mark.parametrize("case", BAD_PACKAGES)
def test_bad_package_on_update_changes_nothing(lam, victim, request, case):
    before = config_of(lam.get_function_configuration(FunctionName="victim"))
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as excinfo:
        lam.update_function_code(FunctionName="victim", ZipFile=BAD_PACKAGES[case](request))
    expect_error(excinfo, "InvalidParameterValueException", 400)
    assert_victim_unchanged(lam, before, victim)


def test_zip_over_50_mb_on_update_is_request_too_large_and_changes_nothing(lam, victim, oversized_zip):
    before = config_of(lam.get_function_configuration(FunctionName="victim"))
    with pytest.raises(lam.exceptions.RequestTooLargeException) as excinfo:
        lam.update_function_code(FunctionName="victim", ZipFile=oversized_zip)
    expect_error(excinfo, "RequestTooLargeException", 413)
    assert_victim_unchanged(lam, before, victim)


def test_invalid_concurrency_is_rejected_and_changes_nothing(lam, victim):
    lam.put_function_concurrency(FunctionName="victim", ReservedConcurrentExecutions=2)
    for bad in (-1, 100_000):
        with pytest.raises(lam.exceptions.InvalidParameterValueException) as excinfo:
            lam.put_function_concurrency(FunctionName="victim", ReservedConcurrentExecutions=bad)
        expect_error(excinfo, "InvalidParameterValueException", 400)
    assert lam.get_function_concurrency(FunctionName="victim")["ReservedConcurrentExecutions"] == 2
    lam.delete_function_concurrency(FunctionName="victim")


# ---- parameters Ember does not implement: refused by name, never dropped ----------------------

KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"

# Every member of UpdateFunctionConfiguration's request that Ember does not implement, with a
# value that would do something in AWS. CreateFunction refuses them too, and more (below).
REFUSED_BOTH = {
    "VpcConfig": {"SubnetIds": ["subnet-0123456789abcdef0"], "SecurityGroupIds": ["sg-0123456789abcdef0"]},
    "DeadLetterConfig": {"TargetArn": "arn:aws:sqs:us-east-1:123456789012:dead-letters"},
    "KMSKeyArn": KEY_ARN,
    "TracingConfig": {"Mode": "Active"},
    "FileSystemConfigs": [{"Arn": "arn:aws:elasticfilesystem:us-east-1:123456789012:access-point/fsap-0123456789abcdef0",
                           "LocalMountPath": "/mnt/efs"}],
    "ImageConfig": {"Command": ["app.handler"]},
    "LoggingConfig": {"LogFormat": "JSON", "ApplicationLogLevel": "DEBUG"},
    "CapacityProviderConfig": {"LambdaManagedInstancesCapacityProviderConfig": {
        "CapacityProviderArn": "arn:aws:lambda:us-east-1:123456789012:capacity-provider:cp"}},
    "DurableConfig": {"RetentionPeriodInDays": 7},
    "RuntimeConfig": {"RuntimeArn": "arn:aws:lambda:us-east-1:123456789012:runtime/r", "RuntimeAlias": "a"},
    "AcceleratorConfig": {"AcceleratorMemorySize": 16},
}
REFUSED_CREATE = {
    **REFUSED_BOTH,
    "PublishTo": "LATEST_PUBLISHED",
    "CodeSigningConfigArn": "arn:aws:lambda:us-east-1:123456789012:code-signing-config:csc-0123456789abcdef0",
    "TenancyConfig": {"TenantIsolationMode": "PER_TENANT"},
    "PackageType": "Image",
}
# What Ember implements (PackageType: Zip only; SnapStart: tests/e2e/test_snapstart_api.py).
HONOURED_CREATE = {"FunctionName", "Runtime", "Role", "Handler", "Code", "Description", "Timeout",
                   "MemorySize", "Environment", "Architectures", "EphemeralStorage", "PackageType",
                   "Publish", "Layers", "Tags", "SnapStart"}
HONOURED_UPDATE = {"FunctionName", "Role", "Handler", "Description", "Timeout", "MemorySize",
                   "Environment", "Runtime", "RevisionId", "EphemeralStorage", "Layers",
                   "SnapStart"}
# Values that change nothing in AWS either: accepted.
NO_OPS = {
    "Publish": False,
    "Tags": {},
    "TracingConfig": {"Mode": "PassThrough"},
    "DeadLetterConfig": {"TargetArn": ""},
    "KMSKeyArn": "",
    "SnapStart": {"ApplyOn": "None"},
    "LoggingConfig": {"LogFormat": "Text"},
    "VpcConfig": {"SubnetIds": [], "SecurityGroupIds": []},
    "Layers": [],
    "FileSystemConfigs": [],
    "ImageConfig": {},
}


def request_members(lam, operation: str) -> set[str]:
    return set(lam.meta.service_model.operation_model(operation).input_shape.members)


def test_every_member_of_the_model_is_honoured_or_refused(lam):
    """A member botocore's model gains must be decided on here, not dropped."""
    assert request_members(lam, "CreateFunction") == HONOURED_CREATE | set(REFUSED_CREATE)
    assert request_members(lam, "UpdateFunctionConfiguration") == HONOURED_UPDATE | set(REFUSED_BOTH)


def expect_refused(excinfo, member: str) -> None:
    expect_error(excinfo, "InvalidParameterValueException", 400)
    message = excinfo.value.response["Error"]["Message"]
    assert message.startswith(member + " "), message
    assert "Ember" in message, message


@pytest.mark.parametrize("member", REFUSED_CREATE)
def test_unimplemented_create_parameter_is_refused_by_name_and_creates_nothing(lam, member):
    name = "refused-" + member.lower()
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as excinfo:
        lam.create_function(**create_params(name, **{member: REFUSED_CREATE[member]}))
    expect_refused(excinfo, member)
    assert_absent(lam, name)


@pytest.mark.parametrize("member", REFUSED_BOTH)
def test_unimplemented_update_parameter_is_refused_by_name_and_changes_nothing(lam, victim, member):
    before = config_of(lam.get_function_configuration(FunctionName="victim"))
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as excinfo:
        lam.update_function_configuration(FunctionName="victim", Description="changed?",
                                          **{member: REFUSED_BOTH[member]})
    expect_refused(excinfo, member)
    assert_victim_unchanged(lam, before, victim)


def test_publish_to_on_code_update_is_refused_and_changes_nothing(lam, victim):
    before = config_of(lam.get_function_configuration(FunctionName="victim"))
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as excinfo:
        lam.update_function_code(FunctionName="victim", ZipFile=handler_zip("published?"),
                                 PublishTo="LATEST_PUBLISHED")
    expect_refused(excinfo, "PublishTo")
    assert_victim_unchanged(lam, before, victim)


def test_no_op_values_of_unimplemented_parameters_are_accepted(lam):
    c = config_of(lam.create_function(**create_params("no-ops", **NO_OPS)))
    assert c["TracingConfig"] == {"Mode": "PassThrough"}
    assert c["Version"] == "$LATEST"
    update = {k: v for k, v in NO_OPS.items() if k in REFUSED_BOTH}
    c = config_of(lam.update_function_configuration(FunctionName="no-ops", Timeout=7, **update))
    assert c["Timeout"] == 7
    lam.delete_function(FunctionName="no-ops")


def test_unknown_body_members_are_refused_by_name(server, lam):
    """Members no version of the API has (a typo, a raw client's guess) are not ignored."""
    keys = server.admin_keys()
    url = f"{server.endpoint}/2015-03-31/functions"
    body = json.dumps({**{k: v for k, v in create_params("typo").items() if k != "Code"},
                       "Code": {"ZipFile": base64.b64encode(handler_zip("typo")).decode()},
                       "Tracingconfig": {"Mode": "Active"}}).encode()
    resp = send("POST", url, body, sign("POST", url, body, keys))
    assert resp.status == 400, resp.body
    assert resp.headers["x-amzn-ErrorType"] == "InvalidParameterValueException"
    assert resp.json()["message"].startswith("Tracingconfig is not a parameter of CreateFunction")
    with pytest.raises(ClientError):
        server.lambda_client(keys).get_function(FunctionName="typo")


# ---- Invoke -----------------------------------------------------------------------------------


def test_invoke_payload_limits(lam, victim):
    # DryRun checks the request as a real invocation would: payloads up to 6 MB are fine...
    at_limit = b'"' + b"x" * (6 * MB - 2) + b'"'
    assert len(at_limit) == 6 * MB
    r = lam.invoke(FunctionName="victim", InvocationType="DryRun", Payload=at_limit)
    assert r["StatusCode"] == 204
    # ...and one byte over is RequestTooLargeException.
    with pytest.raises(lam.exceptions.RequestTooLargeException) as excinfo:
        lam.invoke(FunctionName="victim", InvocationType="DryRun", Payload=at_limit + b" ")
    expect_error(excinfo, "RequestTooLargeException", 413)


# Invoke requests refused before anything runs: (parameters, error code, HTTP status).
REFUSED_INVOKES = {
    "payload not JSON": ({"Payload": b"{not json"}, "InvalidRequestContentException", 400),
    "payload one byte over 6 MB": ({"Payload": b'"' + b"x" * (6 * MB - 1) + b'"'},
                                   "RequestTooLargeException", 413),
    "unknown InvocationType": ({"InvocationType": "Sometimes"}, "InvalidParameterValueException", 400),
    "unknown LogType": ({"LogType": "Everything"}, "InvalidParameterValueException", 400),
    "ClientContext not base64": ({"ClientContext": "not base64!"}, "InvalidParameterValueException", 400),
}


def invocation_logs(server, keys, name: str) -> list[dict]:
    url = f"{server.endpoint}/ember/v1/functions/{name}/logs?Limit=1000"
    resp = send("GET", url, headers=sign("GET", url, b"", keys))
    assert resp.status == 200, resp.body
    return resp.json()["Events"]


@pytest.mark.parametrize("case", REFUSED_INVOKES)
def test_a_refused_invocation_is_an_aws_error_and_runs_nothing(server, lam, account, case):
    name = "refused-invoke-" + "".join(c if c.isalnum() else "-" for c in case)[:40]
    lam.create_function(**create_params(name))
    params, code, status = REFUSED_INVOKES[case]
    with pytest.raises(ClientError) as excinfo:
        lam.invoke(FunctionName=name, **{"Payload": b"{}", **params})
    expect_error(excinfo, code, status)
    # The function runs when asked properly; its log holds that invocation alone.
    r = lam.invoke(FunctionName=name, Payload=b"{}")
    assert (r["StatusCode"], json.loads(r["Payload"].read())) == (200, {"ok": True})
    ran = r["ResponseMetadata"]["RequestId"]
    deadline = time.monotonic() + 30
    while True:
        logged = [e["RequestId"] for e in invocation_logs(server, account, name)]
        if ran in logged or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert logged == [ran], f"logged {logged}, ran {ran} only"


# ---- errors made outside a handler, through raw sockets: every one AWS-shaped ------------------


def raw_http(server, method: str, path: str, body: bytes = b"", headers: dict | None = None,
             keys: dict | None = None):
    """One request with http.client (signed with `keys` if given): (status, headers, body)."""
    headers = dict(headers or {})
    if keys is not None:
        headers.update(sign(method, server.endpoint + path, body, keys))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body or None, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def assert_aws_shaped(answer, status: int, error_type: str) -> dict:
    """What botocore needs to raise a ClientError with a code and a message."""
    got_status, headers, body = answer
    assert got_status == status, (got_status, headers, body)
    assert headers.get("x-amzn-errortype") == error_type, headers
    assert headers.get("x-amzn-requestid"), headers
    assert headers.get("content-type") == "application/json", headers
    parsed = json.loads(body)
    assert parsed["Type"] in ("User", "Service") and parsed["message"], parsed
    return parsed


def test_unknown_path_is_unknown_operation(server, account):
    parsed = assert_aws_shaped(raw_http(server, "GET", "/2015-03-31/nothing-here", keys=account),
                               404, "UnknownOperationException")
    assert "/2015-03-31/nothing-here" in parsed["message"]
    # Unsigned, the signature is what is missing, as in AWS.
    assert_aws_shaped(raw_http(server, "GET", "/2015-03-31/nothing-here"), 403,
                      "UnrecognizedClientException")


def test_wrong_method_is_an_aws_shaped_405_with_allow(server, account, victim):
    status, headers, body = answer = raw_http(server, "PATCH", "/2015-03-31/functions/victim",
                                              keys=account)
    parsed = assert_aws_shaped(answer, 405, "MethodNotAllowedException")
    assert "PATCH" in parsed["message"]
    assert {m.strip() for m in headers["allow"].split(",")} >= {"GET", "DELETE"}, headers


def test_headers_over_64_kib_are_an_aws_shaped_431(server):
    parsed = assert_aws_shaped(raw_http(server, "GET", "/2015-03-31/functions/",
                                        headers={"X-Big": "x" * (100 * 1024)}),
                               431, "RequestHeaderFieldsTooLargeException")
    assert "65536" in parsed["message"]
    many = {f"X-Header-{i}": "v" for i in range(120)}
    assert_aws_shaped(raw_http(server, "GET", "/2015-03-31/functions/", headers=many),
                      431, "RequestHeaderFieldsTooLargeException")


def test_headers_over_hypers_buffer_get_its_bare_431_and_the_server_serves_on(server, lam):
    """Documented limit: over 256 KiB hyper itself answers (no AWS shape) and closes."""
    request = (b"GET /2015-03-31/functions/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"x" * (300 * 1024)
               + b"\r\n\r\n")
    answer = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        try:
            s.sendall(request)
            while chunk := s.recv(65536):
                answer += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while we were still sending: also a refusal
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:200]
    lam.list_functions()  # still serving


def test_invalid_utf8_and_bad_percent_encoding_in_a_path_are_aws_shaped_400s(server, account):
    for path in ("/2015-03-31/functions/%FF%FE/configuration",
                 "/2015-03-31/functions/%zz/configuration",
                 "/2015-03-31/functions/%/configuration"):
        assert_aws_shaped(raw_http(server, "GET", path, keys=account), 400,
                          "InvalidParameterValueException")


def test_unparsable_query_strings_are_aws_shaped(server, account, victim):
    parsed = assert_aws_shaped(raw_http(server, "GET", "/ember/v1/functions/victim/logs?Limit=abc",
                                        keys=account), 400, "InvalidParameterValueException")
    assert "Limit" in parsed["message"]
    parsed = assert_aws_shaped(raw_http(server, "GET", "/2015-03-31/functions/?MaxItems=abc",
                                        keys=account), 400, "InvalidParameterValueException")
    assert "MaxItems" in parsed["message"]


def test_a_code_url_without_its_query_is_access_denied(server, lam, victim):
    location = lam.get_function(FunctionName="victim")["Code"]["Location"]
    path = location.split(str(server.port), 1)[1]
    assert download(location) == victim
    bare = path.split("?", 1)[0]
    for query in ("", "?Expires=soon&Signature=00", "?Signature=00"):
        parsed = assert_aws_shaped(raw_http(server, "GET", bare + query), 403, "AccessDeniedException")
        assert "Expires" in parsed["message"]


@pytest.fixture(scope="module")
def impatient(module_server_factory):
    """A server that waits 1 s for a request's head or the next piece of its body."""
    return module_server_factory(None, "--read-timeout", "1")


def read_until_closed(s: socket.socket, limit_s: float) -> tuple[bytes, float]:
    started = time.monotonic()
    s.settimeout(limit_s)
    answer = b""
    try:
        while chunk := s.recv(65536):
            answer += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return answer, time.monotonic() - started


def test_a_body_that_never_arrives_is_an_aws_shaped_408_and_nothing_is_created(impatient):
    keys = impatient.admin_keys()
    body = json.dumps(create_params("never-arrives")
                      | {"Code": {"ZipFile": base64.b64encode(handler_zip()).decode()}}).encode()
    headers = sign("POST", impatient.endpoint + "/2015-03-31/functions", body, keys)
    head = "POST /2015-03-31/functions HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + f"Content-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=10) as s:
        s.sendall(head.encode() + body[: len(body) // 2])
        answer, took = read_until_closed(s, 20)
    assert 0.9 < took < 10, took  # about the read timeout, then closed by the server
    head_text, _, payload = answer.partition(b"\r\n\r\n")
    lines = head_text.decode().split("\r\n")
    assert lines[0].startswith("HTTP/1.1 408"), answer
    fields = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    assert fields["x-amzn-errortype"] == "RequestTimeoutException", fields
    assert fields["connection"] == "close", fields
    assert fields.get("x-amzn-requestid")
    assert json.loads(payload)["message"]
    with pytest.raises(ClientError):
        impatient.lambda_client(keys).get_function(FunctionName="never-arrives")


def test_a_head_that_never_completes_is_closed_after_the_read_timeout(impatient):
    """Documented limit: hyper closes the connection without an answer."""
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=10) as s:
        s.sendall(b"GET /2015-03-31/functions/ HTTP/1.1\r\nHost: x\r\n")
        answer, took = read_until_closed(s, 20)
    assert answer == b""
    assert 0.9 < took < 10, took
    impatient.lambda_client().list_functions()  # still serving
