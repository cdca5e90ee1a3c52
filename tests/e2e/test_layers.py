"""Layers, end to end: publish a layer with boto3, the AWS CLI and the ember CLI, use it from a
function (a Python package under `python/`, a `provided` runtime's `bootstrap`), stack layers in
order, share one with another account, and keep a deleted version for the functions that use it."""

from __future__ import annotations

import json

import pytest

from ember_e2e import ROLE, download, make_zip, sha256_hex

PY = "python3.11"

# A handler that imports the modules the event names and reports what it sees of /opt.
PROBE = """\
import importlib, os, sys

def handler(event, context):
    out = {"path": sys.path, "opt": sorted(os.listdir("/opt"))}
    for name in event.get("import", []):
        out[name] = importlib.import_module(name).VALUE
    try:
        with open("/opt/written", "w") as f:
            f.write("x")
        out["opt_writable"] = True
    except OSError:
        out["opt_writable"] = False
    return out
"""


@pytest.fixture(scope="module")
def lam(server):
    return server.lambda_client(server.admin_keys())


def layer_zip(files: dict[str, str]) -> bytes:
    return make_zip(files)


def publish(lam, name, files, **extra):
    return lam.publish_layer_version(LayerName=name, Content={"ZipFile": layer_zip(files)}, **extra)


def create(lam, name, layers, code=None, runtime=PY, handler="probe.handler", **extra):
    return lam.create_function(
        FunctionName=name, Runtime=runtime, Role=ROLE, Handler=handler,
        Code={"ZipFile": code or make_zip({"probe.py": PROBE})}, Layers=layers, **extra,
    )


def invoke(lam, name, event=None):
    r = lam.invoke(FunctionName=name, Payload=json.dumps(event or {}).encode())
    body = json.loads(r["Payload"].read())
    assert "FunctionError" not in r, body
    return body


def test_a_python_layer_is_importable_from_opt_python_read_only(lam):
    files = {"python/mylib.py": "VALUE = 'from the layer'\n"}
    v = publish(lam, "mylib", files, CompatibleRuntimes=[PY], Description="my lib",
                LicenseInfo="MIT", CompatibleArchitectures=["x86_64"])
    assert v["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert v["Version"] == 1
    assert v["LayerVersionArn"] == v["LayerArn"] + ":1"
    assert v["LayerArn"].startswith("arn:aws:lambda:us-east-1:") and v["LayerArn"].endswith(":layer:mylib")
    assert (v["Description"], v["LicenseInfo"], v["CompatibleRuntimes"]) == ("my lib", "MIT", [PY])
    assert v["CompatibleArchitectures"] == ["x86_64"]
    assert v["Content"]["CodeSize"] == len(layer_zip(files))
    # The content downloads without credentials, as GetFunction's code does.
    assert download(v["Content"]["Location"]) == layer_zip(files)

    got = lam.get_layer_version(LayerName="mylib", VersionNumber=1)
    by_arn = lam.get_layer_version_by_arn(Arn=v["LayerVersionArn"])
    for answer in (got, by_arn):
        assert answer["LayerVersionArn"] == v["LayerVersionArn"]
        assert answer["Content"]["CodeSha256"] == v["Content"]["CodeSha256"]
        assert answer["CreatedDate"] == v["CreatedDate"]

    f = create(lam, "uses-mylib", [v["LayerVersionArn"]])
    assert f["Layers"] == [{"Arn": v["LayerVersionArn"], "CodeSize": v["Content"]["CodeSize"]}]
    assert lam.get_function(FunctionName="uses-mylib")["Configuration"]["Layers"] == f["Layers"]
    out = invoke(lam, "uses-mylib", {"import": ["mylib"]})
    assert out["mylib"] == "from the layer"
    assert "/opt/python" in out["path"]
    assert "/opt/python/lib/python3.11/site-packages" in out["path"]
    assert out["opt"] == ["python"], "the layer's files, nothing else"
    assert out["opt_writable"] is False

    # A function without layers has an empty, read-only /opt and no Layers member.
    plain = create(lam, "no-layers", [])
    assert "Layers" not in plain
    out = invoke(lam, "no-layers")
    assert out["opt"] == [] and out["opt_writable"] is False


def test_later_layers_override_earlier_ones_and_reordering_makes_a_new_revision(lam):
    a = publish(lam, "stack-a", {"python/shared.py": "VALUE = 'a'\n", "python/only_a.py": "VALUE = 'only a'\n"})
    b = publish(lam, "stack-b", {"python/shared.py": "VALUE = 'b'\n"})
    f = create(lam, "stacked", [a["LayerVersionArn"], b["LayerVersionArn"]])
    out = invoke(lam, "stacked", {"import": ["shared", "only_a"]})
    assert (out["shared"], out["only_a"]) == ("b", "only a")

    g = lam.update_function_configuration(FunctionName="stacked",
                                          Layers=[b["LayerVersionArn"], a["LayerVersionArn"]])
    assert g["RevisionId"] != f["RevisionId"]
    assert [x["Arn"] for x in g["Layers"]] == [b["LayerVersionArn"], a["LayerVersionArn"]]
    lam.get_waiter("function_updated_v2").wait(FunctionName="stacked")
    out = invoke(lam, "stacked", {"import": ["shared"]})
    assert out["shared"] == "a", "the new order runs"

    # An empty list removes them.
    h = lam.update_function_configuration(FunctionName="stacked", Layers=[])
    assert "Layers" not in h
    assert invoke(lam, "stacked")["opt"] == []


def test_a_provided_function_may_take_its_bootstrap_from_a_layer(lam, rust_hello_zip):
    v = lam.publish_layer_version(LayerName="rust-runtime", Content={"ZipFile": rust_hello_zip},
                                  CompatibleRuntimes=["provided.al2023"])
    lam.create_function(FunctionName="bootstrap-in-layer", Runtime="provided.al2023", Role=ROLE,
                        Handler="bootstrap", Code={"ZipFile": make_zip({"README": "no bootstrap here"})},
                        Layers=[v["LayerVersionArn"]])
    r = lam.invoke(FunctionName="bootstrap-in-layer", Payload=b'{"name": "layer"}')
    assert "FunctionError" not in r, r["Payload"].read()


def test_limits_and_unknown_layers_are_refused_and_change_nothing(lam):
    arns = [publish(lam, f"many-{i}", {f"f{i}": "x"})["LayerVersionArn"] for i in range(6)]
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as e:
        create(lam, "six-layers", arns)
    assert "more than 5 layers" in str(e.value)
    assert create(lam, "five-layers", arns[:5])["Layers"][4]["Arn"] == arns[4]
    with pytest.raises(lam.exceptions.InvalidParameterValueException):
        lam.update_function_configuration(FunctionName="five-layers", Layers=arns)
    assert len(lam.get_function_configuration(FunctionName="five-layers")["Layers"]) == 5

    account = arns[0].split(":")[4]
    unknown = f"arn:aws:lambda:us-east-1:{account}:layer:never-published:1"
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as e:
        create(lam, "unknown-layer", [unknown])
    assert "does not exist" in str(e.value)
    with pytest.raises(lam.exceptions.InvalidParameterValueException):
        create(lam, "same-layer-twice", [arns[0], arns[0]])
    for name in ("six-layers", "unknown-layer", "same-layer-twice"):
        with pytest.raises(lam.exceptions.ResourceNotFoundException):
            lam.get_function(FunctionName=name)
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_layer_version(LayerName="never-published", VersionNumber=1)

    # Each layer is within its own 250 MB, but code and layers together are not.
    big = 130 * 1024 * 1024
    zeros = lambda name: make_zip({name: b"\0" * big})  # noqa: E731
    l1 = lam.publish_layer_version(LayerName="big-1", Content={"ZipFile": zeros("one")})
    l2 = lam.publish_layer_version(LayerName="big-2", Content={"ZipFile": zeros("two")})
    assert create(lam, "one-big", [l1["LayerVersionArn"]])["Layers"]
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as e:
        create(lam, "too-big", [l1["LayerVersionArn"], l2["LayerVersionArn"]])
    assert "262144000 bytes" in str(e.value)
    with pytest.raises(lam.exceptions.InvalidParameterValueException):
        lam.update_function_configuration(FunctionName="one-big",
                                          Layers=[l1["LayerVersionArn"], l2["LayerVersionArn"]])

    # Content from S3 is refused by name, and so is a zip that is not one.
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as e:
        lam.publish_layer_version(LayerName="from-s3", Content={"S3Bucket": "my-bucket", "S3Key": "layer.zip"})
    assert "S3" in str(e.value)
    with pytest.raises(lam.exceptions.InvalidParameterValueException):
        lam.publish_layer_version(LayerName="not-a-zip", Content={"ZipFile": b"nope"})
    assert lam.list_layer_versions(LayerName="from-s3")["LayerVersions"] == []


def test_another_accounts_layer_needs_a_grant(server, lam):
    v = publish(lam, "shared-lib", {"python/sharedlib.py": "VALUE = 'shared'\n"})
    arn = v["LayerVersionArn"]
    bob = server.lambda_client(server.make_account("layer-bob"))
    with pytest.raises(bob.exceptions.InvalidParameterValueException):
        create(bob, "bob-fn", [arn])
    with pytest.raises(bob.exceptions.ResourceNotFoundException):
        bob.get_layer_version_by_arn(Arn=arn)
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_layer_version_policy(LayerName="shared-lib", VersionNumber=1)

    grant = lam.add_layer_version_permission(LayerName="shared-lib", VersionNumber=1,
                                             StatementId="everyone", Action="lambda:GetLayerVersion",
                                             Principal="*")
    assert grant["ResponseMetadata"]["HTTPStatusCode"] == 201
    statement = json.loads(grant["Statement"])
    assert statement == {"Sid": "everyone", "Effect": "Allow", "Principal": "*",
                         "Action": "lambda:GetLayerVersion", "Resource": arn}
    policy = lam.get_layer_version_policy(LayerName="shared-lib", VersionNumber=1)
    assert json.loads(policy["Policy"])["Statement"] == [statement]
    assert policy["RevisionId"] == grant["RevisionId"]
    with pytest.raises(lam.exceptions.ResourceConflictException):
        lam.add_layer_version_permission(LayerName="shared-lib", VersionNumber=1, StatementId="everyone",
                                         Action="lambda:GetLayerVersion", Principal="*")
    with pytest.raises(lam.exceptions.PreconditionFailedException):
        lam.add_layer_version_permission(LayerName="shared-lib", VersionNumber=1, StatementId="other",
                                         Action="lambda:GetLayerVersion", Principal="*",
                                         RevisionId="stale")
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as e:
        lam.add_layer_version_permission(LayerName="shared-lib", VersionNumber=1, StatementId="org",
                                         Action="lambda:GetLayerVersion", Principal="*",
                                         OrganizationId="o-abcdefghij")
    assert "OrganizationId" in str(e.value)

    # Granted: bob reads it, runs it, but does not list it among his layers.
    assert bob.get_layer_version_by_arn(Arn=arn)["LayerVersionArn"] == arn
    create(bob, "bob-fn", [arn])
    assert invoke(bob, "bob-fn", {"import": ["sharedlib"]})["sharedlib"] == "shared"
    assert bob.list_layers()["Layers"] == []
    # Nor may he change it.
    with pytest.raises(bob.exceptions.ResourceNotFoundException):
        bob.delete_layer_version(LayerName=arn.rsplit(":", 1)[0], VersionNumber=1)

    lam.remove_layer_version_permission(LayerName="shared-lib", VersionNumber=1, StatementId="everyone")
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.remove_layer_version_permission(LayerName="shared-lib", VersionNumber=1, StatementId="everyone")
    with pytest.raises(bob.exceptions.InvalidParameterValueException):
        create(bob, "bob-fn-2", [arn])
    # His function keeps the version it uses.
    assert invoke(bob, "bob-fn", {"import": ["sharedlib"]})["sharedlib"] == "shared"


def test_a_grant_to_one_account_is_for_that_account_only(server, lam):
    v = publish(lam, "for-carol", {"python/carollib.py": "VALUE = 'carol'\n"})
    carol_keys = server.make_account("layer-carol")
    dave = server.lambda_client(server.make_account("layer-dave"))
    carol = server.lambda_client(carol_keys)
    lam.add_layer_version_permission(LayerName="for-carol", VersionNumber=1, StatementId="carol",
                                     Action="lambda:GetLayerVersion",
                                     Principal=f"arn:aws:iam::{carol_keys['AccountId']}:root")
    policy = json.loads(lam.get_layer_version_policy(LayerName="for-carol", VersionNumber=1)["Policy"])
    assert policy["Statement"][0]["Principal"] == {"AWS": f"arn:aws:iam::{carol_keys['AccountId']}:root"}
    assert create(carol, "carol-fn", [v["LayerVersionArn"]])["Layers"][0]["Arn"] == v["LayerVersionArn"]
    with pytest.raises(dave.exceptions.InvalidParameterValueException):
        create(dave, "dave-fn", [v["LayerVersionArn"]])


def test_a_deleted_version_in_use_keeps_running(server, lam):
    files = {"python/keptlib.py": "VALUE = 'kept'\n"}
    v = publish(lam, "kept", files)
    create(lam, "uses-kept", [v["LayerVersionArn"]])
    assert invoke(lam, "uses-kept", {"import": ["keptlib"]})["keptlib"] == "kept"

    lam.delete_layer_version(LayerName="kept", VersionNumber=1)
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_layer_version(LayerName="kept", VersionNumber=1)
    assert lam.list_layer_versions(LayerName="kept")["LayerVersions"] == []
    assert "kept" not in [layer["LayerName"] for layer in lam.list_layers()["Layers"]]
    # Deleting it again is no error, as in Lambda.
    lam.delete_layer_version(LayerName="kept", VersionNumber=1)
    # No new function may use it; its number is not given again.
    with pytest.raises(lam.exceptions.InvalidParameterValueException):
        create(lam, "uses-deleted", [v["LayerVersionArn"]])
    assert publish(lam, "kept", files)["Version"] == 2

    # The function still has it: its content stays in the store, and a new container (a new
    # revision) gets it.
    sha = sha256_hex(layer_zip(files))
    assert f"sha256/{sha[:2]}/{sha}" in server.stored_blobs()
    assert lam.get_function_configuration(FunctionName="uses-kept")["Layers"][0]["Arn"] == v["LayerVersionArn"]
    lam.update_function_configuration(FunctionName="uses-kept", Environment={"Variables": {"NEW": "1"}})
    lam.get_waiter("function_updated_v2").wait(FunctionName="uses-kept")
    assert invoke(lam, "uses-kept", {"import": ["keptlib"]})["keptlib"] == "kept"
    # Re-sending the layers it has is accepted (Terraform does), even with the version deleted.
    lam.update_function_configuration(FunctionName="uses-kept", Layers=[v["LayerVersionArn"]])


def test_listings_filter_and_page(server, lam):
    keys = server.make_account("layer-lister")
    mine = server.lambda_client(keys)
    publish(mine, "l-a", {"a": "1"}, CompatibleRuntimes=["python3.12"])
    publish(mine, "l-a", {"a": "2"}, CompatibleRuntimes=["nodejs20.x"])
    publish(mine, "l-b", {"b": "1"}, CompatibleRuntimes=["python3.12", PY])
    publish(mine, "l-c", {"c": "1"})

    listed = mine.list_layers()["Layers"]
    assert [(x["LayerName"], x["LatestMatchingVersion"]["Version"]) for x in listed] == \
        [("l-a", 2), ("l-b", 1), ("l-c", 1)]
    assert listed[0]["LayerArn"] == f"arn:aws:lambda:us-east-1:{keys['AccountId']}:layer:l-a"
    python = mine.list_layers(CompatibleRuntime="python3.12")["Layers"]
    assert [(x["LayerName"], x["LatestMatchingVersion"]["Version"]) for x in python] == [("l-a", 1), ("l-b", 1)]
    page = mine.list_layers(MaxItems=2)
    assert len(page["Layers"]) == 2 and "NextMarker" in page
    rest = mine.list_layers(MaxItems=2, Marker=page["NextMarker"])
    assert [x["LayerName"] for x in rest["Layers"]] == ["l-c"] and "NextMarker" not in rest
    names = [x["LayerName"] for p in mine.get_paginator("list_layers").paginate(PaginationConfig={"PageSize": 1})
             for x in p["Layers"]]
    assert names == ["l-a", "l-b", "l-c"]

    versions = mine.list_layer_versions(LayerName="l-a")["LayerVersions"]
    assert [x["Version"] for x in versions] == [2, 1]
    assert [x["Version"] for x in mine.list_layer_versions(LayerName="l-a", CompatibleRuntime="python3.12")
            ["LayerVersions"]] == [1]
    first = mine.list_layer_versions(LayerName="l-a", MaxItems=1)
    assert [x["Version"] for x in first["LayerVersions"]] == [2]
    second = mine.list_layer_versions(LayerName="l-a", MaxItems=1, Marker=first["NextMarker"])
    assert [x["Version"] for x in second["LayerVersions"]] == [1]
    assert "NextMarker" not in second
    with pytest.raises(mine.exceptions.InvalidParameterValueException):
        mine.list_layers(CompatibleRuntime="cobol")


def test_the_aws_cli_publishes_lists_and_deletes(server, lam, tmp_path):
    path = tmp_path / "cli-layer.zip"
    path.write_bytes(layer_zip({"python/clilib.py": "VALUE = 'cli'\n"}))
    rc, out, err = server.aws("lambda", "publish-layer-version", "--layer-name", "cli-layer",
                              "--zip-file", f"fileb://{path}", "--compatible-runtimes", PY)
    assert rc == 0, err
    assert out["Version"] == 1 and out["CompatibleRuntimes"] == [PY]
    rc, out, err = server.aws("lambda", "get-layer-version-by-arn", "--arn", out["LayerVersionArn"])
    assert rc == 0, err
    assert out["Content"]["CodeSize"] == path.stat().st_size
    rc, out, err = server.aws("lambda", "list-layers", "--compatible-runtime", PY)
    assert rc == 0, err
    assert "cli-layer" in [x["LayerName"] for x in out["Layers"]]
    rc, out, err = server.aws("lambda", "list-layer-versions", "--layer-name", "cli-layer")
    assert rc == 0, err
    assert [x["Version"] for x in out["LayerVersions"]] == [1]
    rc, out, err = server.aws("lambda", "delete-layer-version", "--layer-name", "cli-layer",
                              "--version-number", "1")
    assert rc == 0, err
    rc, out, err = server.aws("lambda", "get-layer-version", "--layer-name", "cli-layer",
                              "--version-number", "1")
    assert rc != 0 and "ResourceNotFoundException" in err


def test_the_ember_cli_publishes_and_attaches_layers(server, lam, tmp_path):
    def ember(*args):
        r = server.run_ember(*args, "--endpoint", server.endpoint, "--data-dir", str(server.data_dir))
        assert r.returncode == 0, r.stderr
        return r.stdout

    layer_dir = tmp_path / "layer" / "python"
    layer_dir.mkdir(parents=True)
    (layer_dir / "emberlib.py").write_text("VALUE = 'ember cli'\n")
    published = json.loads(ember("layer", "publish", "ember-layer", str(tmp_path / "layer"),
                                 "--runtime", PY, "--json"))
    arn = published["LayerVersionArn"]
    assert published["CompatibleRuntimes"] == [PY]
    listed = json.loads(ember("layer", "list", "--json"))
    assert "ember-layer" in [x["LayerName"] for x in listed["Layers"]]
    assert "ember-layer" in ember("layer", "list")
    versions = json.loads(ember("layer", "versions", "ember-layer", "--json"))
    assert [x["Version"] for x in versions["LayerVersions"]] == [1]

    code = tmp_path / "code"
    code.mkdir()
    (code / "probe.py").write_text(PROBE)
    created = json.loads(ember("fn", "create", "cli-layered", "--code", str(code), "--runtime", PY,
                               "--handler", "probe.handler", "--layer", arn, "--json"))
    assert created["Layers"][0]["Arn"] == arn
    assert invoke(lam, "cli-layered", {"import": ["emberlib"]})["emberlib"] == "ember cli"
    assert arn in ember("fn", "get", "cli-layered")
    updated = json.loads(ember("fn", "update-config", "cli-layered", "--no-layers", "--json"))
    assert "Layers" not in updated

    ember("layer", "delete", "ember-layer", "1")
    assert json.loads(ember("layer", "versions", "ember-layer", "--json"))["LayerVersions"] == []
