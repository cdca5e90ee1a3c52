"""SnapStart's API, end to end with boto3, the AWS CLI and the ember CLI: `SnapStart` set on
CreateFunction and UpdateFunctionConfiguration, shown as `SnapStartResponse` by every operation
that answers a FunctionConfiguration, copied into a version when it is published
(`OptimizationStatus` On for a published version that applies it, Off on `$LATEST`), and
Lambda's refusals (a value outside the enum, a runtime without SnapStart, ephemeral storage over
512 MB, provisioned concurrency on a SnapStart version), each of which changes nothing.

The mechanism (a snapshot after init, forked into new environments) is not what these tests
check: a SnapStart version must run, whichever way its environment starts."""

from __future__ import annotations

import json

import pytest

from ember_e2e import ROLE, handler_zip

PY = "python3.12"
ON = {"ApplyOn": "PublishedVersions", "OptimizationStatus": "On"}
SET = {"ApplyOn": "PublishedVersions", "OptimizationStatus": "Off"}
OFF = {"ApplyOn": "None", "OptimizationStatus": "Off"}
BAD_ENUM = ("1 validation error detected: Value 'Always' at 'snapStart.applyOn' failed to satisfy "
            "constraint: Member must satisfy enum value set: [PublishedVersions, None]")


# ---- helpers --------------------------------------------------------------------------------


def create(lam, name, runtime=PY, zip_bytes=None, **extra):
    handler = "index.handler" if runtime.startswith("nodejs") else "app.handler"
    if runtime.startswith("provided"):
        handler = "bootstrap"
    return lam.create_function(FunctionName=name, Runtime=runtime, Role=ROLE, Handler=handler,
                               Code={"ZipFile": zip_bytes or handler_zip(name)}, **extra)


def config(lam, name, qualifier=None) -> dict:
    """GetFunctionConfiguration's answer, without its response metadata."""
    extra = {"Qualifier": qualifier} if qualifier else {}
    got = lam.get_function_configuration(FunctionName=name, **extra)
    got.pop("ResponseMetadata")
    return got


def error_of(excinfo) -> tuple[str, str, int]:
    response = excinfo.value.response
    return (response["Error"]["Code"], response["Error"]["Message"],
            response["ResponseMetadata"]["HTTPStatusCode"])


def assert_absent(lam, name):
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function(FunctionName=name)


def refused(lam, call, code, message_start, **params):
    """Calls `call(**params)` and checks Lambda's refusal: the error code, 400, the message."""
    with pytest.raises(lam.exceptions.ClientError) as excinfo:
        call(**params)
    got_code, message, status = error_of(excinfo)
    assert (got_code, status) == (code, 400), (got_code, status, message)
    assert message.startswith(message_start), message
    return message


# ---- boto3 ----------------------------------------------------------------------------------


def test_snap_start_is_set_shown_published_and_listed(admin):
    lam = admin
    created = create(lam, "ss-life", SnapStart={"ApplyOn": "PublishedVersions"})
    assert created["SnapStart"] == SET, "never On for $LATEST"
    latest = config(lam, "ss-life")
    assert latest["SnapStart"] == SET
    assert lam.get_function(FunctionName="ss-life")["Configuration"] == latest
    listed = {f["FunctionName"]: f for f in lam.list_functions()["Functions"]}
    assert listed["ss-life"]["SnapStart"] == SET

    v1 = lam.publish_version(FunctionName="ss-life", Description="first")
    assert (v1["Version"], v1["SnapStart"]) == ("1", ON)
    assert config(lam, "ss-life", "1")["SnapStart"] == ON
    assert lam.get_function(FunctionName="ss-life:1")["Configuration"]["SnapStart"] == ON
    assert config(lam, "ss-life", "$LATEST")["SnapStart"] == SET

    # A version keeps the setting it was published with; $LATEST moves on.
    off = lam.update_function_configuration(FunctionName="ss-life", SnapStart={"ApplyOn": "None"})
    assert off["SnapStart"] == OFF
    assert off["RevisionId"] != latest["RevisionId"], "a settings change"
    assert config(lam, "ss-life", "1")["SnapStart"] == ON
    v2 = lam.publish_version(FunctionName="ss-life")
    assert (v2["Version"], v2["SnapStart"]) == ("2", OFF)

    versions = lam.list_versions_by_function(FunctionName="ss-life")["Versions"]
    assert [(v["Version"], v["SnapStart"]) for v in versions] == [
        ("$LATEST", OFF), ("1", ON), ("2", OFF)]
    everything = lam.list_functions(FunctionVersion="ALL")["Functions"]
    assert [(f["Version"], f["SnapStart"]) for f in everything
            if f["FunctionName"] == "ss-life"] == [("$LATEST", OFF), ("1", ON), ("2", OFF)]

    # UpdateFunctionCode answers the configuration too, SnapStart included.
    lam.update_function_configuration(FunctionName="ss-life",
                                      SnapStart={"ApplyOn": "PublishedVersions"})
    code = lam.update_function_code(FunctionName="ss-life", ZipFile=handler_zip("ss-life v2"),
                                    Publish=True)
    assert (code["Version"], code["SnapStart"]) == ("3", ON)
    assert config(lam, "ss-life")["SnapStart"] == SET


def test_a_function_without_snap_start_shows_it_off(admin):
    lam = admin
    created = create(lam, "ss-default")
    assert created["SnapStart"] == OFF
    assert lam.publish_version(FunctionName="ss-default")["SnapStart"] == OFF
    assert config(lam, "ss-default", "1")["SnapStart"] == OFF
    # `SnapStart: {}` is Lambda's default, None.
    create(lam, "ss-empty", SnapStart={})
    assert config(lam, "ss-empty")["SnapStart"] == OFF


def test_create_with_publish_answers_the_version_on(admin):
    created = create(admin, "ss-publish", SnapStart={"ApplyOn": "PublishedVersions"}, Publish=True)
    assert (created["Version"], created["SnapStart"]) == ("1", ON)


def test_update_turns_snap_start_on_with_a_new_runtime_in_one_request(admin):
    lam = admin
    create(lam, "ss-node", runtime="nodejs20.x")
    # Checked as the update leaves the function: a Python runtime and SnapStart together.
    both = lam.update_function_configuration(
        FunctionName="ss-node", Runtime=PY, Handler="app.handler",
        SnapStart={"ApplyOn": "PublishedVersions"})
    assert (both["Runtime"], both["SnapStart"]) == (PY, SET)


@pytest.mark.needs_root  # runs the version in a VM
def test_a_snap_start_version_runs(admin, python_app_zip):
    lam = admin
    create(lam, "ss-run", zip_bytes=python_app_zip, SnapStart={"ApplyOn": "PublishedVersions"})
    version = lam.publish_version(FunctionName="ss-run")["Version"]
    for _ in range(2):
        r = lam.invoke(FunctionName="ss-run", Qualifier=version,
                       Payload=json.dumps({"echo": "snap"}).encode())
        assert "FunctionError" not in r, r
        body = json.loads(r["Payload"].read())
        assert body["echo"] == "snap", body
        assert r["ExecutedVersion"] == version


def test_a_value_outside_the_enum_is_a_validation_exception_and_changes_nothing(admin):
    lam = admin
    message = refused(lam, lam.create_function, "ValidationException", BAD_ENUM,
                      FunctionName="ss-bad-enum", Runtime=PY, Role=ROLE, Handler="app.handler",
                      Code={"ZipFile": handler_zip()}, SnapStart={"ApplyOn": "Always"})
    assert message == BAD_ENUM
    assert_absent(lam, "ss-bad-enum")

    create(lam, "ss-bad-enum-update")
    before = config(lam, "ss-bad-enum-update")
    refused(lam, lam.update_function_configuration, "ValidationException", BAD_ENUM,
            FunctionName="ss-bad-enum-update", SnapStart={"ApplyOn": "Always"}, MemorySize=256)
    assert config(lam, "ss-bad-enum-update") == before


@pytest.mark.parametrize("runtime", ["nodejs20.x", "nodejs22.x", "provided.al2023", "provided"])
def test_a_runtime_without_snap_start_is_refused_and_nothing_is_created(admin, runtime):
    lam = admin
    name = "ss-rt-" + runtime.replace(".", "-")
    message = refused(lam, lambda **p: create(lam, **p), "InvalidParameterValueException",
                      f"{runtime} is not supported for SnapStart enabled functions.",
                      name=name, runtime=runtime, SnapStart={"ApplyOn": "PublishedVersions"})
    assert "Python" in message, message
    assert_absent(lam, name)
    # Off is allowed on any runtime.
    assert create(lam, name, runtime=runtime, SnapStart={"ApplyOn": "None"})["SnapStart"] == OFF


def test_ephemeral_storage_over_512_mb_is_refused_with_snap_start(admin):
    lam = admin
    refused(lam, lambda **p: create(lam, **p), "InvalidParameterValueException",
            "Ephemeral storage greater than 512 MB is not supported for SnapStart enabled functions",
            name="ss-tmp", SnapStart={"ApplyOn": "PublishedVersions"},
            EphemeralStorage={"Size": 1024})
    assert_absent(lam, "ss-tmp")
    ok = create(lam, "ss-tmp-512", SnapStart={"ApplyOn": "PublishedVersions"},
                EphemeralStorage={"Size": 512})
    assert ok["SnapStart"] == SET


def test_an_update_that_would_break_snap_start_is_refused_and_changes_nothing(admin):
    lam = admin
    create(lam, "ss-guard", SnapStart={"ApplyOn": "PublishedVersions"})
    before = config(lam, "ss-guard")
    # A runtime without SnapStart.
    refused(lam, lam.update_function_configuration, "InvalidParameterValueException",
            "nodejs22.x is not supported for SnapStart enabled functions.",
            FunctionName="ss-guard", Runtime="nodejs22.x", Handler="index.handler")
    assert config(lam, "ss-guard") == before
    # More ephemeral storage than SnapStart allows, with another change in the same request.
    refused(lam, lam.update_function_configuration, "InvalidParameterValueException",
            "Ephemeral storage greater than 512 MB",
            FunctionName="ss-guard", EphemeralStorage={"Size": 2048}, Timeout=30)
    assert config(lam, "ss-guard") == before
    # Turning SnapStart on where the function's runtime has none.
    create(lam, "ss-guard-node", runtime="nodejs20.x")
    node_before = config(lam, "ss-guard-node")
    refused(lam, lam.update_function_configuration, "InvalidParameterValueException",
            "nodejs20.x is not supported for SnapStart enabled functions.",
            FunctionName="ss-guard-node", SnapStart={"ApplyOn": "PublishedVersions"})
    assert config(lam, "ss-guard-node") == node_before
    # Off first, then the same changes are accepted.
    lam.update_function_configuration(FunctionName="ss-guard", SnapStart={"ApplyOn": "None"})
    moved = lam.update_function_configuration(FunctionName="ss-guard", Runtime="nodejs22.x",
                                              Handler="index.handler",
                                              EphemeralStorage={"Size": 2048})
    assert (moved["Runtime"], moved["EphemeralStorage"], moved["SnapStart"]) == (
        "nodejs22.x", {"Size": 2048}, OFF)


def test_provisioned_concurrency_is_refused_on_a_snap_start_version(admin):
    lam = admin
    create(lam, "ss-pc", SnapStart={"ApplyOn": "PublishedVersions"})
    version = lam.publish_version(FunctionName="ss-pc")["Version"]
    lam.create_alias(FunctionName="ss-pc", Name="live", FunctionVersion=version)
    for qualifier in (version, "live"):
        refused(lam, lam.put_provisioned_concurrency_config, "InvalidParameterValueException",
                "Provisioned Concurrency is not supported for SnapStart enabled function versions",
                FunctionName="ss-pc", Qualifier=qualifier, ProvisionedConcurrentExecutions=1)
        with pytest.raises(lam.exceptions.ProvisionedConcurrencyConfigNotFoundException):
            lam.get_provisioned_concurrency_config(FunctionName="ss-pc", Qualifier=qualifier)
    assert lam.list_provisioned_concurrency_configs(
        FunctionName="ss-pc")["ProvisionedConcurrencyConfigs"] == []


@pytest.mark.needs_root  # provisioned environments run in a VM
def test_an_alias_with_provisioned_concurrency_cannot_move_to_a_snap_start_version(
        admin, python_app_zip):
    lam = admin
    create(lam, "ss-alias", zip_bytes=python_app_zip)
    plain = lam.publish_version(FunctionName="ss-alias")["Version"]
    lam.update_function_configuration(FunctionName="ss-alias",
                                      SnapStart={"ApplyOn": "PublishedVersions"})
    snap = lam.publish_version(FunctionName="ss-alias")["Version"]
    alias = lam.create_alias(FunctionName="ss-alias", Name="live", FunctionVersion=plain)
    lam.put_provisioned_concurrency_config(FunctionName="ss-alias", Qualifier="live",
                                           ProvisionedConcurrentExecutions=1)
    refused(lam, lam.update_alias, "InvalidParameterValueException",
            "Provisioned Concurrency is not supported for SnapStart enabled function versions",
            FunctionName="ss-alias", Name="live", FunctionVersion=snap)
    after = lam.get_alias(FunctionName="ss-alias", Name="live")
    assert (after["FunctionVersion"], after["RevisionId"]) == (plain, alias["RevisionId"])
    lam.delete_provisioned_concurrency_config(FunctionName="ss-alias", Qualifier="live")
    # Without provisioned concurrency the alias may go there.
    assert lam.update_alias(FunctionName="ss-alias", Name="live",
                            FunctionVersion=snap)["FunctionVersion"] == snap


# ---- the AWS CLI ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aws(server, tmp_path_factory):
    """Runs `aws lambda ...` as a fresh account, from a directory holding app.zip."""
    keys = server.make_account("snapstart-cli")
    workdir = tmp_path_factory.mktemp("snapstart-cli")
    (workdir / "app.zip").write_bytes(handler_zip("aws cli"))

    def run(*args: str):
        return server.aws("lambda", *args, keys=keys, cwd=workdir)

    return run


def aws_ok(aws, *args):
    rc, out, err = aws(*args)
    assert rc == 0, err
    return out


def test_the_aws_cli_sets_publishes_and_lists_snap_start(aws):
    created = aws_ok(aws, "create-function", "--function-name", "ss-cli", "--runtime", PY,
                     "--role", ROLE, "--handler", "app.handler", "--zip-file", "fileb://app.zip",
                     "--snap-start", "ApplyOn=PublishedVersions")
    assert created["SnapStart"] == SET
    got = aws_ok(aws, "get-function-configuration", "--function-name", "ss-cli")
    assert got["SnapStart"] == SET
    published = aws_ok(aws, "publish-version", "--function-name", "ss-cli")
    assert (published["Version"], published["SnapStart"]) == ("1", ON)
    version = aws_ok(aws, "get-function", "--function-name", "ss-cli", "--qualifier", "1")
    assert version["Configuration"]["SnapStart"] == ON
    updated = aws_ok(aws, "update-function-configuration", "--function-name", "ss-cli",
                     "--snap-start", "ApplyOn=None")
    assert updated["SnapStart"] == OFF
    versions = aws_ok(aws, "list-versions-by-function", "--function-name", "ss-cli")["Versions"]
    assert [(v["Version"], v["SnapStart"]) for v in versions] == [("$LATEST", OFF), ("1", ON)]
    listed = aws_ok(aws, "list-functions")["Functions"]
    assert [f["SnapStart"] for f in listed if f["FunctionName"] == "ss-cli"] == [OFF]


def test_the_aws_cli_shows_lambdas_refusals_and_nothing_changes(aws):
    rc, _, err = aws("create-function", "--function-name", "ss-cli-bad", "--runtime", PY,
                     "--role", ROLE, "--handler", "app.handler", "--zip-file", "fileb://app.zip",
                     "--snap-start", "ApplyOn=Always")
    assert rc != 0
    assert "(ValidationException)" in err and BAD_ENUM in err, err
    rc, _, err = aws("get-function", "--function-name", "ss-cli-bad")
    assert rc != 0 and "ResourceNotFoundException" in err, err

    before = aws_ok(aws, "create-function", "--function-name", "ss-cli-node",
                    "--runtime", "nodejs20.x", "--role", ROLE, "--handler", "index.handler",
                    "--zip-file", "fileb://app.zip")
    rc, _, err = aws("update-function-configuration", "--function-name", "ss-cli-node",
                     "--snap-start", "ApplyOn=PublishedVersions")
    assert rc != 0
    assert "(InvalidParameterValueException)" in err, err
    assert "nodejs20.x is not supported for SnapStart enabled functions." in err, err
    after = aws_ok(aws, "get-function-configuration", "--function-name", "ss-cli-node")
    assert after == before


# ---- the ember CLI --------------------------------------------------------------------------


def test_the_ember_cli_sets_and_shows_snap_start(server, tmp_path):
    code = tmp_path / "app"
    code.mkdir()
    (code / "app.py").write_text("def handler(event, context):\n    return 'ok'\n")

    def ember(*args):
        r = server.run_ember("fn", *args, "--endpoint", server.endpoint,
                             "--data-dir", str(server.data_dir))
        assert r.returncode == 0, r.stderr
        return r.stdout

    created = json.loads(ember("create", "ss-ember", "--code", str(code), "--runtime", PY,
                               "--handler", "app.handler", "--snap-start", "PublishedVersions",
                               "--json"))
    assert created["SnapStart"] == SET
    shown = ember("get", "ss-ember")
    assert "snap start     PublishedVersions (optimization Off)" in shown, shown
    published = ember("publish", "ss-ember")
    assert "snap start     PublishedVersions (optimization On)" in published, published
    listing = ember("versions", "ss-ember").splitlines()
    assert "SNAPSTART" in listing[0], listing
    assert listing[1].split()[0] == "$LATEST" and " Off " in listing[1], listing
    assert listing[2].split()[0] == "1" and " On " in listing[2], listing
    updated = json.loads(ember("update-config", "ss-ember", "--snap-start", "None", "--json"))
    assert updated["SnapStart"] == OFF

    r = server.run_ember("fn", "update-config", "ss-ember", "--snap-start", "Always",
                         "--endpoint", server.endpoint, "--data-dir", str(server.data_dir))
    assert r.returncode != 0 and "PublishedVersions" in r.stderr, r.stderr
