"""Versions and aliases, end to end with boto3 and the AWS CLI: publish versions with different
code, point a weighted alias over two of them and see both run in proportion, invoke by version,
alias and qualified ARN (the runtime sees the version and the ARN as Lambda gives them), and find
a published version immutable and a warm container serving only its version."""

from __future__ import annotations

import json
import math
import time

import pytest

from ember_e2e import ROLE, client_error, code_sha256, download, make_zip

PY = "python3.11"

# The function reports which code ran (TAG is baked into each package), the version the runtime
# was started for, and the ARN it was invoked by.
HANDLER = """import os

TAG = {tag!r}

def handler(event, context):
    return {{
        "tag": TAG,
        "version": os.environ["AWS_LAMBDA_FUNCTION_VERSION"],
        "arn": context.invoked_function_arn,
        "description": os.environ.get("WHO", ""),
    }}
"""


def message(excinfo) -> str:
    return excinfo.value.response["Error"]["Message"]


def package(tag: str) -> bytes:
    return make_zip({"app.py": HANDLER.format(tag=tag)})


@pytest.fixture(scope="module")
def lam(server):
    return server.lambda_client(server.admin_keys())


@pytest.fixture(scope="module")
def account(two_versions) -> str:
    """The admin's account id, as ARNs carry it."""
    return two_versions[0]["FunctionArn"].split(":")[4]


def create(lam, name, tag, **extra):
    return lam.create_function(FunctionName=name, Runtime=PY, Role=ROLE, Handler="app.handler",
                               Code={"ZipFile": package(tag)}, Timeout=10, **extra)


def invoke(lam, **kwargs):
    r = lam.invoke(Payload=b"{}", **kwargs)
    assert "FunctionError" not in r, r["Payload"].read()
    return r, json.loads(r["Payload"].read())


@pytest.fixture(scope="module")
def two_versions(lam):
    """`ver`: version 1 runs package "one", version 2 package "two", $LATEST package "three"."""
    create(lam, "ver", "one")
    v1 = lam.publish_version(FunctionName="ver", Description="first")
    lam.update_function_code(FunctionName="ver", ZipFile=package("two"))
    v2 = lam.publish_version(FunctionName="ver")
    lam.update_function_code(FunctionName="ver", ZipFile=package("three"))
    return v1, v2


def test_publishing_snapshots_each_version(lam, account, two_versions):
    v1, v2 = two_versions
    assert (v1["Version"], v2["Version"]) == ("1", "2")
    assert v1["ResponseMetadata"]["HTTPStatusCode"] == 201
    arn = f"arn:aws:lambda:us-east-1:{account}:function:ver"
    assert v1["FunctionArn"] == f"{arn}:1"
    assert v1["Description"] == "first"
    assert v1["CodeSha256"] == code_sha256(package("one"))
    assert v2["CodeSha256"] == code_sha256(package("two"))
    assert v1["RevisionId"] != v2["RevisionId"]
    listed = lam.list_versions_by_function(FunctionName="ver")["Versions"]
    assert [v["Version"] for v in listed] == ["$LATEST", "1", "2"]
    assert listed[0]["FunctionArn"] == f"{arn}:$LATEST"
    assert listed[0]["CodeSha256"] == code_sha256(package("three"))
    # One entry a page, followed by its markers.
    seen, marker = [], None
    while True:
        page = lam.list_versions_by_function(FunctionName="ver", MaxItems=1,
                                             **({"Marker": marker} if marker else {}))
        seen += [v["Version"] for v in page["Versions"]]
        marker = page.get("NextMarker")
        if not marker:
            break
    assert seen == ["$LATEST", "1", "2"]
    every = lam.list_functions(FunctionVersion="ALL")["Functions"]
    assert {(f["FunctionName"], f["Version"]) for f in every} >= {
        ("ver", "$LATEST"), ("ver", "1"), ("ver", "2")}


def test_each_version_runs_its_own_code_by_number_name_and_arn(lam, account, two_versions):
    arn = f"arn:aws:lambda:us-east-1:{account}:function:ver"
    for how, expected in [
        ({"FunctionName": "ver", "Qualifier": "1"}, ("one", "1", f"{arn}:1")),
        ({"FunctionName": "ver:2"}, ("two", "2", f"{arn}:2")),
        ({"FunctionName": f"{arn}:1"}, ("one", "1", f"{arn}:1")),
        ({"FunctionName": "ver"}, ("three", "$LATEST", arn)),
        ({"FunctionName": "ver", "Qualifier": "$LATEST"}, ("three", "$LATEST", f"{arn}:$LATEST")),
    ]:
        r, out = invoke(lam, **how)
        assert (out["tag"], out["version"], out["arn"]) == expected, how
        assert r["ExecutedVersion"] == expected[1], how
    config = lam.get_function_configuration(FunctionName="ver", Qualifier="2")
    assert (config["Version"], config["FunctionArn"]) == ("2", f"{arn}:2")
    got = lam.get_function(FunctionName=f"{arn}:1")
    assert got["Configuration"]["Version"] == "1"
    assert download(got["Code"]["Location"]) == package("one")


def test_a_published_version_does_not_change(lam):
    create(lam, "imm", "one", Publish=True)
    before = lam.get_function_configuration(FunctionName="imm", Qualifier="1")
    lam.update_function_code(FunctionName="imm", ZipFile=package("four"))
    lam.update_function_configuration(FunctionName="imm", Description="changed",
                                      Environment={"Variables": {"WHO": "latest"}}, Timeout=20)
    after = lam.get_function_configuration(FunctionName="imm", Qualifier="1")
    before.pop("ResponseMetadata")
    after.pop("ResponseMetadata")
    assert after == before
    _, out = invoke(lam, FunctionName="imm", Qualifier="1")
    assert (out["tag"], out["description"]) == ("one", "")
    _, out = invoke(lam, FunctionName="imm")
    assert (out["tag"], out["description"]) == ("four", "latest")
    # Writes to a version are refused, and change nothing.
    for write in (
        lambda: lam.update_function_configuration(FunctionName="imm:1", Description="no"),
        lambda: lam.update_function_code(FunctionName="imm:1", ZipFile=package("no")),
    ):
        with pytest.raises(lam.exceptions.InvalidParameterValueException):
            write()
    again = lam.get_function_configuration(FunctionName="imm", Qualifier="1")
    again.pop("ResponseMetadata")
    assert again == before


def test_a_weighted_alias_runs_both_versions_in_proportion(lam, account, two_versions):
    alias = lam.create_alias(FunctionName="ver", Name="live", FunctionVersion="1",
                             Description="canary", RoutingConfig={"AdditionalVersionWeights": {"2": 0.1}})
    assert alias["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert alias["AliasArn"] == f"arn:aws:lambda:us-east-1:{account}:function:ver:live"
    assert alias["RoutingConfig"] == {"AdditionalVersionWeights": {"2": 0.1}}
    assert lam.get_alias(FunctionName="ver", Name="live")["RevisionId"] == alias["RevisionId"]
    n, weight = 400, 0.1
    ran = {"1": 0, "2": 0}
    for _ in range(n):
        r, out = invoke(lam, FunctionName="ver", Qualifier="live")
        executed = r["ExecutedVersion"]
        # What ran is the version ExecutedVersion names, invoked by the alias's ARN.
        assert (out["version"], out["tag"]) == (executed, {"1": "one", "2": "two"}[executed])
        assert out["arn"] == alias["AliasArn"]
        ran[executed] += 1
    share = ran["2"] / n
    sigma = math.sqrt(weight * (1 - weight) / n)
    assert abs(share - weight) < 4 * sigma, ran
    # Moving the alias wholly to version 2.
    moved = lam.update_alias(FunctionName="ver", Name="live", FunctionVersion="2",
                             RoutingConfig={"AdditionalVersionWeights": {}},
                             RevisionId=alias["RevisionId"])
    assert "RoutingConfig" not in moved and moved["FunctionVersion"] == "2"
    for _ in range(5):
        r, out = invoke(lam, FunctionName=alias["AliasArn"])
        assert (r["ExecutedVersion"], out["tag"]) == ("2", "two")
    assert [a["Name"] for a in lam.list_aliases(FunctionName="ver", FunctionVersion="2")["Aliases"]] == ["live"]
    assert lam.list_aliases(FunctionName="ver", FunctionVersion="1")["Aliases"] == []


def test_a_warm_container_serves_only_its_version(lam):
    create(lam, "warm-ver", "a")
    lam.publish_version(FunctionName="warm-ver")
    lam.update_function_code(FunctionName="warm-ver", ZipFile=package("b"))
    lam.publish_version(FunctionName="warm-ver")

    def start(**how):
        r, out = invoke(lam, FunctionName="warm-ver", **how)
        return r["ResponseMetadata"]["HTTPHeaders"]["x-ember-start"], out["tag"]

    assert start(Qualifier="1")[0] != "warm"
    assert start(Qualifier="1") == ("warm", "a")
    # Version 2's first run cannot reuse version 1's idle container.
    first_v2 = start(Qualifier="2")
    assert first_v2[0] != "warm" and first_v2[1] == "b"
    assert start(Qualifier="2") == ("warm", "b")
    # And updating $LATEST leaves the versions' containers warm.
    lam.update_function_code(FunctionName="warm-ver", ZipFile=package("c"))
    assert start(Qualifier="1") == ("warm", "a")


def test_publish_answers_the_newest_version_when_nothing_changed_and_checks_conditions(lam):
    created = create(lam, "pub", "x", Publish=True)
    assert (created["Version"], created["FunctionArn"].rsplit(":", 1)[1]) == ("1", "1")
    again = lam.publish_version(FunctionName="pub", Description="ignored")
    assert again["Version"] == "1" and again["RevisionId"] == created["RevisionId"]
    updated = lam.update_function_code(FunctionName="pub", ZipFile=package("y"), Publish=True)
    assert updated["Version"] == "2"
    assert updated["CodeSha256"] == code_sha256(package("y"))
    lam.update_function_configuration(FunctionName="pub", Description="third")
    latest = lam.get_function_configuration(FunctionName="pub")
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as e:
        lam.publish_version(FunctionName="pub", CodeSha256=code_sha256(package("x")))
    assert "is different from current CodeSHA256 in $LATEST" in message(e)
    with pytest.raises(lam.exceptions.PreconditionFailedException) as e:
        lam.publish_version(FunctionName="pub", RevisionId=created["RevisionId"])
    assert client_error(e)[1] == 412
    assert [v["Version"] for v in lam.list_versions_by_function(FunctionName="pub")["Versions"]] == [
        "$LATEST", "1", "2"]
    third = lam.publish_version(FunctionName="pub", CodeSha256=latest["CodeSha256"],
                                RevisionId=latest["RevisionId"])
    assert (third["Version"], third["Description"]) == ("3", "third")


def test_errors_are_lambdas(lam, account):
    create(lam, "err", "e", Publish=True)
    arn = f"arn:aws:lambda:us-east-1:{account}:function:err"
    for call in (
        lambda: lam.get_function(FunctionName="err", Qualifier="9"),
        lambda: lam.get_function_configuration(FunctionName="err:nope"),
        lambda: lam.invoke(FunctionName="err", Qualifier="9", Payload=b"{}"),
        lambda: lam.delete_function(FunctionName="err", Qualifier="9"),
    ):
        with pytest.raises(lam.exceptions.ResourceNotFoundException) as e:
            call()
        assert client_error(e)[1] == 404
        assert message(e).startswith(f"Function not found: {arn}:"), message(e)
    with pytest.raises(lam.exceptions.ResourceNotFoundException) as e:
        lam.get_alias(FunctionName="err", Name="nope")
    assert message(e) == f"Cannot find alias arn: {arn}:nope"
    with pytest.raises(lam.exceptions.ResourceNotFoundException) as e:
        lam.update_alias(FunctionName="err", Name="nope", Description="d")
    assert message(e) == f"Alias not found: {arn}:nope"
    # Deleting an alias that is not there succeeds, as in Lambda; the function must exist.
    assert lam.delete_alias(FunctionName="err", Name="nope")["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.delete_alias(FunctionName="err-never", Name="nope")
    # An alias name cannot look like a version; bad routing is refused.
    for bad in (
        dict(Name="123", FunctionVersion="1"),
        dict(Name="w", FunctionVersion="$LATEST", RoutingConfig={"AdditionalVersionWeights": {"1": 0.5}}),
        dict(Name="w", FunctionVersion="1", RoutingConfig={"AdditionalVersionWeights": {"1": 0.5}}),
        dict(Name="w", FunctionVersion="1", RoutingConfig={"AdditionalVersionWeights": {"2": 0.1, "3": 0.1}}),
    ):
        with pytest.raises(lam.exceptions.InvalidParameterValueException) as e:
            lam.create_alias(FunctionName="err", **bad)
        assert client_error(e)[1] == 400
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.create_alias(FunctionName="err", Name="w", FunctionVersion="7")
    alias = lam.create_alias(FunctionName="err", Name="prod", FunctionVersion="1")
    with pytest.raises(lam.exceptions.ResourceConflictException) as e:
        lam.create_alias(FunctionName="err", Name="prod", FunctionVersion="1")
    assert client_error(e)[1] == 409
    # A version an alias points at cannot be deleted.
    with pytest.raises(lam.exceptions.ResourceConflictException) as e:
        lam.delete_function(FunctionName="err", Qualifier="1")
    assert client_error(e)[1] == 409 and "prod" in message(e)
    # A stale RevisionId changes nothing.
    lam.update_alias(FunctionName="err", Name="prod", Description="moved")
    with pytest.raises(lam.exceptions.PreconditionFailedException) as e:
        lam.update_alias(FunctionName="err", Name="prod", Description="stale",
                         RevisionId=alias["RevisionId"])
    assert client_error(e)[1] == 412
    assert lam.get_alias(FunctionName="err", Name="prod")["Description"] == "moved"
    with pytest.raises(lam.exceptions.InvalidParameterValueException):
        lam.delete_function(FunctionName="err", Qualifier="$LATEST")
    # Once the alias goes, so can the version; then the whole function with what is left.
    lam.delete_alias(FunctionName="err", Name="prod")
    lam.delete_function(FunctionName="err", Qualifier="1")
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function(FunctionName="err:1")
    lam.get_function(FunctionName="err")
    lam.publish_version(FunctionName="err")
    lam.create_alias(FunctionName="err", Name="again", FunctionVersion="2")
    lam.delete_function(FunctionName="err")
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.list_versions_by_function(FunctionName="err")
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.list_aliases(FunctionName="err")


def test_an_event_invocation_of_an_alias_runs_its_version(server, lam):
    create(lam, "ev", "first", Publish=True)
    lam.update_function_code(FunctionName="ev", ZipFile=package("second"))
    lam.create_alias(FunctionName="ev", Name="stable", FunctionVersion="1")
    r = lam.invoke(FunctionName="ev", Qualifier="stable", InvocationType="Event", Payload=b"{}")
    assert r["StatusCode"] == 202
    request_id = r["ResponseMetadata"]["RequestId"]
    deadline = time.monotonic() + 30
    while True:
        out = server.run_ember("logs", "ev", "--json", "--limit", "100",
                               "--endpoint", server.endpoint, "--data-dir", str(server.data_dir))
        assert out.returncode == 0, out.stderr
        events = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        logs = [e["Message"] for e in events if e["RequestId"] == request_id]
        if logs:
            break
        assert time.monotonic() < deadline, events
        time.sleep(0.3)
    assert f"START RequestId: {request_id} Version: 1" in logs[0]


def test_the_aws_cli_publishes_and_routes(server, tmp_path):
    keys = server.make_account("versions-cli")
    (tmp_path / "one.zip").write_bytes(package("cli-one"))
    (tmp_path / "two.zip").write_bytes(package("cli-two"))

    def aws(*args):
        rc, out, err = server.aws("lambda", *args, keys=keys, cwd=tmp_path)
        assert rc == 0, err
        return out

    aws("create-function", "--function-name", "cli-ver", "--runtime", PY, "--role", ROLE,
        "--handler", "app.handler", "--zip-file", "fileb://one.zip", "--publish")
    aws("update-function-code", "--function-name", "cli-ver", "--zip-file", "fileb://two.zip")
    v2 = aws("publish-version", "--function-name", "cli-ver", "--description", "two")
    assert v2["Version"] == "2"
    alias = aws("create-alias", "--function-name", "cli-ver", "--name", "live",
                "--function-version", "1", "--routing-config", '{"AdditionalVersionWeights": {"2": 1.0}}')
    assert alias["RoutingConfig"]["AdditionalVersionWeights"] == {"2": 1.0}
    out = aws("invoke", "--function-name", "cli-ver", "--qualifier", "live", "out.json")
    assert out["ExecutedVersion"] == "2"
    assert json.loads((tmp_path / "out.json").read_text())["tag"] == "cli-two"
    versions = aws("list-versions-by-function", "--function-name", "cli-ver")["Versions"]
    assert [v["Version"] for v in versions] == ["$LATEST", "1", "2"]
    aliases = aws("list-aliases", "--function-name", "cli-ver")["Aliases"]
    assert [(a["Name"], a["FunctionVersion"]) for a in aliases] == [("live", "1")]
    aws("delete-alias", "--function-name", "cli-ver", "--name", "live")
    aws("delete-function", "--function-name", "cli-ver", "--qualifier", "1")
    versions = aws("list-versions-by-function", "--function-name", "cli-ver")["Versions"]
    assert [v["Version"] for v in versions] == ["$LATEST", "2"]


def test_the_ember_cli_publishes_lists_and_routes(server, lam):
    create(lam, "cli-alias", "first")

    def ember(*args):
        r = server.run_ember("fn", *args, "--endpoint", server.endpoint,
                             "--data-dir", str(server.data_dir))
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert json.loads(ember("publish", "cli-alias", "--description", "one", "--json"))["Version"] == "1"
    lam.update_function_code(FunctionName="cli-alias", ZipFile=package("second"))
    assert "Version 2 of cli-alias" in ember("publish", "cli-alias")
    listed = json.loads(ember("versions", "cli-alias", "--json"))["Versions"]
    assert [(v["Version"], v["Description"]) for v in listed] == [("$LATEST", ""), ("1", "one"), ("2", "")]
    table = ember("versions", "cli-alias")
    assert table.splitlines()[0].startswith("VERSION") and "one" in table
    created = json.loads(ember("alias", "create", "cli-alias", "live", "--version", "1",
                               "--weight", "2=1.0", "--json"))
    assert created["RoutingConfig"] == {"AdditionalVersionWeights": {"2": 1.0}}
    out = json.loads(ember("invoke", "cli-alias:live", "--json"))
    assert out["ExecutedVersion"] == "2" and json.loads(out["Payload"])["tag"] == "second"
    updated = json.loads(ember("alias", "update", "cli-alias", "live", "--no-weights",
                               "--description", "all on 1", "--json"))
    assert "RoutingConfig" not in updated and updated["Description"] == "all on 1"
    assert "weights" not in ember("alias", "get", "cli-alias", "live")
    assert json.loads(ember("invoke", "cli-alias:live", "--json"))["ExecutedVersion"] == "1"
    listed = json.loads(ember("alias", "list", "cli-alias", "--version", "1", "--json"))["Aliases"]
    assert [a["Name"] for a in listed] == ["live"]
    ember("alias", "delete", "cli-alias", "live")
    assert json.loads(ember("alias", "list", "cli-alias", "--json"))["Aliases"] == []
