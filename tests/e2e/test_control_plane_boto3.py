"""The Lambda control plane through boto3: every operation of issue 3 §4, with the shapes botocore
expects."""

from __future__ import annotations

import datetime
import io
import os
import re
import zipfile

import pytest

from ember_e2e import (
    LAST_MODIFIED_RE,
    REGION,
    ROLE,
    client_error,
    code_sha256,
    config_of,
    download,
    handler_zip,
    make_zip,
)

FIELDS = {
    "FunctionName", "FunctionArn", "Runtime", "Role", "Handler", "CodeSize", "CodeSha256",
    "Description", "Timeout", "MemorySize", "EphemeralStorage", "LastModified", "Version",
    "Environment", "RevisionId", "State", "LastUpdateStatus", "PackageType", "Architectures",
}


@pytest.fixture(scope="module")
def account(server):
    return server.make_account("control-plane")


@pytest.fixture(scope="module")
def lam(server, account):
    return server.lambda_client(account)


def create(lam, name, zip_bytes=None, **kwargs):
    params = dict(
        FunctionName=name,
        Runtime="python3.11",
        Role=ROLE,
        Handler="app.handler",
        Code={"ZipFile": zip_bytes if zip_bytes is not None else handler_zip(name)},
    )
    params.update(kwargs)
    return lam.create_function(**params)


def parse_last_modified(value: str) -> datetime.datetime:
    return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z")


def test_create_function_returns_201_and_a_complete_configuration(lam, account):
    zip_bytes = make_zip({"app.py": "def handler(e, c):\n    return 1\n", "lib/util.py": "X = 1\n"})
    r = create(
        lam, "full-shape", zip_bytes,
        Description="all the fields", Timeout=42, MemorySize=512,
        Environment={"Variables": {"GREETING": "hello", "LEVEL": "3"}},
    )
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 201
    c = config_of(r)
    assert FIELDS <= set(c), f"missing fields: {FIELDS - set(c)}"
    assert c["FunctionName"] == "full-shape"
    assert c["FunctionArn"] == f"arn:aws:lambda:{REGION}:{account['AccountId']}:function:full-shape"
    assert c["Runtime"] == "python3.11"
    assert c["Role"] == ROLE
    assert c["Handler"] == "app.handler"
    assert c["CodeSize"] == len(zip_bytes)
    assert c["CodeSha256"] == code_sha256(zip_bytes)
    assert c["Description"] == "all the fields"
    assert c["Timeout"] == 42
    assert c["MemorySize"] == 512
    assert c["EphemeralStorage"] == {"Size": 512}
    assert re.match(LAST_MODIFIED_RE, c["LastModified"]), c["LastModified"]
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs(now - parse_last_modified(c["LastModified"])) < datetime.timedelta(minutes=2)
    assert c["Version"] == "$LATEST"
    assert c["Environment"] == {"Variables": {"GREETING": "hello", "LEVEL": "3"}}
    assert re.fullmatch(r"[0-9a-f-]{36}", c["RevisionId"]), c["RevisionId"]
    assert c["State"] == "Active"
    assert c["LastUpdateStatus"] == "Successful"
    assert c["PackageType"] == "Zip"
    assert c["Architectures"] in (["x86_64"], ["arm64"])


def test_create_applies_lambda_defaults(lam):
    c = config_of(create(lam, "defaults"))
    assert (c["Timeout"], c["MemorySize"], c["Description"]) == (3, 128, "")
    assert c["EphemeralStorage"] == {"Size": 512}
    assert "Environment" not in c or c["Environment"].get("Variables", {}) == {}


def test_get_function_returns_configuration_and_a_downloadable_code_location(lam):
    zip_bytes = handler_zip("download-me")
    created = config_of(create(lam, "get-me", zip_bytes))
    r = lam.get_function(FunctionName="get-me")
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert r["Configuration"] == created
    assert r["Code"]["RepositoryType"] == "S3"
    assert "Concurrency" not in r
    # Like S3 presigned URLs: no credentials needed, and the bytes are exactly what was uploaded.
    assert download(r["Code"]["Location"]) == zip_bytes


def test_code_location_is_bound_to_its_signature(lam):
    create(lam, "url-bound")
    location = lam.get_function(FunctionName="url-bound")["Code"]["Location"]
    tampered = re.sub(r"Signature=([0-9a-f])", lambda m: "Signature=" + ("0" if m[1] != "0" else "1"),
                      location)
    assert tampered != location
    with pytest.raises(Exception) as excinfo:
        download(tampered)
    assert getattr(excinfo.value, "code", None) == 403


def test_get_function_configuration_by_name_partial_arn_and_full_arn(lam, account):
    created = config_of(create(lam, "by-arn"))
    partial = f"{account['AccountId']}:function:by-arn"
    full = f"arn:aws:lambda:{REGION}:{account['AccountId']}:function:by-arn"
    for ref in ("by-arn", partial, full):
        assert config_of(lam.get_function_configuration(FunctionName=ref)) == created, ref
        assert lam.get_function(FunctionName=ref)["Configuration"] == created, ref
    # Named with a qualifier, the function's ARN carries it, as Lambda answers.
    qualified = {**created, "FunctionArn": f"{full}:$LATEST"}
    ref = f"{full}:$LATEST"
    assert config_of(lam.get_function_configuration(FunctionName=ref)) == qualified
    assert lam.get_function(FunctionName=ref)["Configuration"] == qualified


def test_list_functions_is_walked_by_the_boto3_paginator(server):
    # A fresh account, so that the listing holds exactly these functions.
    lam = server.lambda_client(server.make_account("lister"))
    names = [f"list-{i}" for i in (5, 2, 7, 1, 4, 6, 3)]
    for name in names:
        create(lam, name)
    pages = list(lam.get_paginator("list_functions").paginate(PaginationConfig={"PageSize": 3}))
    assert [len(p["Functions"]) for p in pages] == [3, 3, 1]
    assert "NextMarker" in pages[0] and "NextMarker" in pages[1]
    assert "NextMarker" not in pages[2]
    listed = [f["FunctionName"] for p in pages for f in p["Functions"]]
    assert listed == sorted(names)
    # Entries are full FunctionConfigurations, equal to what GetFunctionConfiguration returns.
    first = pages[0]["Functions"][0]
    assert first == config_of(lam.get_function_configuration(FunctionName=first["FunctionName"]))
    # Without a page size, one page holds them all.
    single = lam.list_functions()
    assert [f["FunctionName"] for f in single["Functions"]] == sorted(names)
    assert "NextMarker" not in single


def test_update_function_code_changes_sha_size_and_revision(lam):
    before = config_of(create(lam, "code-update", handler_zip("v1")))
    new_zip = make_zip({"app.py": "def handler(e, c):\n    return 'v2'\n", "data.txt": "x" * 1000})
    r = lam.update_function_code(FunctionName="code-update", ZipFile=new_zip)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    after = config_of(r)
    assert after["CodeSha256"] == code_sha256(new_zip) != before["CodeSha256"]
    assert after["CodeSize"] == len(new_zip)
    assert after["RevisionId"] != before["RevisionId"]
    assert parse_last_modified(after["LastModified"]) >= parse_last_modified(before["LastModified"])
    unchanged = {k for k in before if k not in ("CodeSha256", "CodeSize", "RevisionId", "LastModified")}
    assert {k: after[k] for k in unchanged} == {k: before[k] for k in unchanged}
    got = lam.get_function(FunctionName="code-update")
    assert got["Configuration"] == after
    assert download(got["Code"]["Location"]) == new_zip


def test_update_function_configuration_changes_what_it_names_only(lam):
    before = config_of(create(lam, "config-update", Environment={"Variables": {"OLD": "1"}}))
    r = lam.update_function_configuration(
        FunctionName="config-update",
        MemorySize=1024,
        Timeout=120,
        Environment={"Variables": {"K1": "V1", "K2": "V2"}},
        Description="updated",
        Handler="app.other",
    )
    after = config_of(r)
    assert after["MemorySize"] == 1024
    assert after["Timeout"] == 120
    assert after["Environment"] == {"Variables": {"K1": "V1", "K2": "V2"}}
    assert after["Description"] == "updated"
    assert after["Handler"] == "app.other"
    assert after["RevisionId"] != before["RevisionId"]
    for k in ("CodeSha256", "CodeSize", "Runtime", "Role", "FunctionArn", "EphemeralStorage"):
        assert after[k] == before[k], k
    assert config_of(lam.get_function_configuration(FunctionName="config-update")) == after
    # A field left out stays as it is.
    again = config_of(lam.update_function_configuration(FunctionName="config-update", Timeout=5))
    assert (again["Timeout"], again["MemorySize"], again["Description"]) == (5, 1024, "updated")


def test_revision_id_guards_updates(lam):
    first = config_of(create(lam, "guarded"))
    # The current RevisionId works...
    second = config_of(lam.update_function_configuration(
        FunctionName="guarded", Description="one", RevisionId=first["RevisionId"]))
    assert second["Description"] == "one"
    # ...a stale one is refused with 412 and changes nothing, for configuration and for code.
    with pytest.raises(lam.exceptions.PreconditionFailedException) as excinfo:
        lam.update_function_configuration(
            FunctionName="guarded", Description="two", RevisionId=first["RevisionId"])
    assert client_error(excinfo)[:2] == ("PreconditionFailedException", 412)
    with pytest.raises(lam.exceptions.PreconditionFailedException) as excinfo:
        lam.update_function_code(
            FunctionName="guarded", ZipFile=handler_zip("stale"), RevisionId=first["RevisionId"])
    assert client_error(excinfo)[:2] == ("PreconditionFailedException", 412)
    assert config_of(lam.get_function_configuration(FunctionName="guarded")) == second
    # The current revision works for code too.
    third = config_of(lam.update_function_code(
        FunctionName="guarded", ZipFile=handler_zip("fresh"), RevisionId=second["RevisionId"]))
    assert third["CodeSha256"] == code_sha256(handler_zip("fresh"))


def test_function_concurrency_put_get_delete(lam):
    create(lam, "concurrent")
    assert "ReservedConcurrentExecutions" not in lam.get_function_concurrency(FunctionName="concurrent")
    r = lam.put_function_concurrency(FunctionName="concurrent", ReservedConcurrentExecutions=7)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert r["ReservedConcurrentExecutions"] == 7
    assert lam.get_function_concurrency(FunctionName="concurrent")["ReservedConcurrentExecutions"] == 7
    assert lam.get_function(FunctionName="concurrent")["Concurrency"] == {"ReservedConcurrentExecutions": 7}
    lam.put_function_concurrency(FunctionName="concurrent", ReservedConcurrentExecutions=3)
    assert lam.get_function_concurrency(FunctionName="concurrent")["ReservedConcurrentExecutions"] == 3
    d = lam.delete_function_concurrency(FunctionName="concurrent")
    assert d["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert "ReservedConcurrentExecutions" not in lam.get_function_concurrency(FunctionName="concurrent")
    assert "Concurrency" not in lam.get_function(FunctionName="concurrent")


def test_delete_function_then_it_is_gone(lam):
    create(lam, "doomed")
    r = lam.delete_function(FunctionName="doomed")
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 204
    for call in (lam.get_function, lam.get_function_configuration, lam.delete_function):
        with pytest.raises(lam.exceptions.ResourceNotFoundException) as excinfo:
            call(FunctionName="doomed")
        assert client_error(excinfo)[:2] == ("ResourceNotFoundException", 404)
    names = [f["FunctionName"] for p in lam.get_paginator("list_functions").paginate()
             for f in p["Functions"]]
    assert "doomed" not in names
    # The name is free again.
    assert create(lam, "doomed")["ResponseMetadata"]["HTTPStatusCode"] == 201


def test_delete_function_by_full_arn(lam, account):
    create(lam, "doomed-by-arn")
    lam.delete_function(FunctionName=f"arn:aws:lambda:{REGION}:{account['AccountId']}:function:doomed-by-arn")
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function(FunctionName="doomed-by-arn")


def test_invoke_dry_run(lam):
    create(lam, "dry")
    r = lam.invoke(FunctionName="dry", InvocationType="DryRun")
    assert r["StatusCode"] == 204
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(lam.exceptions.ResourceNotFoundException) as excinfo:
        lam.invoke(FunctionName="no-such-function", InvocationType="DryRun")
    code, status, headers = client_error(excinfo)
    assert (code, status) == ("ResourceNotFoundException", 404)


def unusual_zip() -> bytes:
    """A valid package whose bytes a re-zip would not reproduce: an archive comment, an entry
    comment, stored and deflated entries, a fast compression level, odd timestamps."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.comment = b"made by the round-trip test"
        app = zipfile.ZipInfo("app.py", date_time=(1999, 12, 31, 23, 59, 58))
        app.comment = b"the handler"
        zf.writestr(app, "def handler(e, c):\n    return 1\n", zipfile.ZIP_DEFLATED, 1)
        zf.writestr(zipfile.ZipInfo("pkg/__init__.py", date_time=(2030, 1, 2, 3, 4, 6)), "",
                    zipfile.ZIP_STORED)
        zf.writestr(zipfile.ZipInfo("pkg/data.bin", date_time=(1980, 1, 1, 0, 0, 0)),
                    bytes(range(256)) * 8, zipfile.ZIP_DEFLATED, 9)
    return buf.getvalue()


def test_uploaded_zip_round_trips_byte_for_byte(lam):
    # The package is stored and served as uploaded, not re-zipped or re-encoded.
    zip_bytes = unusual_zip()
    created = config_of(create(lam, "round-trip", zip_bytes))
    got = lam.get_function(FunctionName="round-trip")
    stored = download(got["Code"]["Location"])
    assert stored == zip_bytes, f"{len(stored)} bytes served, {len(zip_bytes)} uploaded"
    assert created["CodeSha256"] == got["Configuration"]["CodeSha256"] == code_sha256(zip_bytes)
    assert created["CodeSize"] == len(zip_bytes)


def test_packages_of_several_megabytes_are_accepted(lam):
    # Well under the 50 MB limit, but larger than web frameworks' default body limits (2 MB).
    big = make_zip({"app.py": "def handler(e, c):\n    return 1\n", "blob.bin": os.urandom(10 * 1024 * 1024)},
                   compression=zipfile.ZIP_STORED)
    c = config_of(create(lam, "big-package", big))
    assert (c["CodeSize"], c["CodeSha256"]) == (len(big), code_sha256(big))
    bigger = make_zip({"app.py": "def handler(e, c):\n    return 2\n", "blob.bin": os.urandom(20 * 1024 * 1024)},
                      compression=zipfile.ZIP_STORED)
    c = config_of(lam.update_function_code(FunctionName="big-package", ZipFile=bigger))
    assert (c["CodeSize"], c["CodeSha256"]) == (len(bigger), code_sha256(bigger))
    assert download(lam.get_function(FunctionName="big-package")["Code"]["Location"]) == bigger
