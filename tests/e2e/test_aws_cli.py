"""The real AWS CLI (`aws lambda ...` with --endpoint-url) against `ember serve`."""

from __future__ import annotations

import pytest

from ember_e2e import ROLE, code_sha256, download, handler_zip


@pytest.fixture(scope="module")
def cli(server, tmp_path_factory):
    """Runs `aws lambda ...` as a fresh account (so listings hold only this module's functions),
    from a directory holding the packages v1.zip and v2.zip."""
    keys = server.make_account("aws-cli")
    workdir = tmp_path_factory.mktemp("aws-cli")
    (workdir / "v1.zip").write_bytes(handler_zip("cli v1"))
    (workdir / "v2.zip").write_bytes(handler_zip("cli v2"))

    def run(*args: str):
        return server.aws("lambda", *args, keys=keys, cwd=workdir)

    run.keys = keys
    return run


def create(cli, name: str, *extra: str):
    rc, out, err = cli("create-function", "--function-name", name, "--runtime", "python3.11",
                       "--role", ROLE, "--handler", "app.handler", "--zip-file", "fileb://v1.zip",
                       *extra)
    assert rc == 0, err
    return out


def test_create_function(cli):
    out = create(cli, "cli-create", "--memory-size", "256", "--timeout", "30",
                 "--environment", "Variables={STAGE=test,COLOR=blue}", "--description", "from the CLI")
    assert out["FunctionName"] == "cli-create"
    assert out["FunctionArn"] == f"arn:aws:lambda:us-east-1:{cli.keys['AccountId']}:function:cli-create"
    assert out["CodeSha256"] == code_sha256(handler_zip("cli v1"))
    assert (out["MemorySize"], out["Timeout"], out["Description"]) == (256, 30, "from the CLI")
    assert out["Environment"] == {"Variables": {"STAGE": "test", "COLOR": "blue"}}
    assert (out["State"], out["Version"]) == ("Active", "$LATEST")


def test_list_functions_paginates(cli):
    names = [f"cli-list-{i}" for i in range(5)]
    for name in names:
        create(cli, name)
    # --page-size: the CLI follows NextMarker itself and prints every function once.
    rc, out, err = cli("list-functions", "--page-size", "2")
    assert rc == 0, err
    listed = [f["FunctionName"] for f in out["Functions"]]
    assert len(listed) == len(set(listed))
    assert set(names) <= set(listed)
    assert listed == sorted(listed)
    # It did so page by page: one ListFunctions request per two functions.
    rc, _, err = cli("list-functions", "--page-size", "2", "--debug")
    assert rc == 0
    requests = err.count("Making request for OperationModel(name=ListFunctions)")
    assert requests == (len(listed) + 1) // 2, err[-2000:]
    # --max-items: a partial listing and a token that resumes it.
    rc, first, err = cli("list-functions", "--page-size", "2", "--max-items", "3")
    assert rc == 0, err
    assert len(first["Functions"]) == 3 and first.get("NextToken"), first
    rc, rest, err = cli("list-functions", "--page-size", "2", "--starting-token", first["NextToken"])
    assert rc == 0, err
    assert [f["FunctionName"] for f in first["Functions"] + rest["Functions"]] == listed


def test_get_function_and_configuration(cli):
    created = create(cli, "cli-get")
    rc, out, err = cli("get-function", "--function-name", "cli-get")
    assert rc == 0, err
    assert out["Configuration"] == created
    assert download(out["Code"]["Location"]) == handler_zip("cli v1")
    rc, out, err = cli("get-function-configuration", "--function-name", created["FunctionArn"])
    assert rc == 0, err
    assert out == created


def test_update_configuration_and_code(cli):
    created = create(cli, "cli-update")
    rc, out, err = cli("update-function-configuration", "--function-name", "cli-update",
                       "--memory-size", "512", "--timeout", "60", "--handler", "app.main",
                       "--environment", "Variables={K1=V1}", "--description", "changed")
    assert rc == 0, err
    assert (out["MemorySize"], out["Timeout"], out["Handler"], out["Description"]) == (512, 60, "app.main", "changed")
    assert out["Environment"] == {"Variables": {"K1": "V1"}}
    assert out["RevisionId"] != created["RevisionId"]
    rc, out2, err = cli("update-function-code", "--function-name", "cli-update", "--zip-file", "fileb://v2.zip")
    assert rc == 0, err
    assert out2["CodeSha256"] == code_sha256(handler_zip("cli v2"))
    assert out2["RevisionId"] != out["RevisionId"]
    assert out2["MemorySize"] == 512
    # A stale --revision-id is refused.
    rc, _, err = cli("update-function-configuration", "--function-name", "cli-update",
                     "--timeout", "9", "--revision-id", created["RevisionId"])
    assert rc != 0 and "PreconditionFailedException" in err, err
    rc, out3, err = cli("get-function-configuration", "--function-name", "cli-update")
    assert rc == 0 and out3 == out2, err


def test_function_concurrency(cli):
    create(cli, "cli-concurrency")
    rc, out, err = cli("put-function-concurrency", "--function-name", "cli-concurrency",
                       "--reserved-concurrent-executions", "4")
    assert rc == 0, err
    assert out == {"ReservedConcurrentExecutions": 4}
    rc, out, err = cli("get-function-concurrency", "--function-name", "cli-concurrency")
    assert rc == 0 and out == {"ReservedConcurrentExecutions": 4}, (out, err)
    rc, out, err = cli("delete-function-concurrency", "--function-name", "cli-concurrency")
    assert rc == 0, err
    rc, out, err = cli("get-function-concurrency", "--function-name", "cli-concurrency")
    assert rc == 0, err
    assert not out or "ReservedConcurrentExecutions" not in out, out


def test_delete_function(cli):
    create(cli, "cli-delete")
    rc, out, err = cli("delete-function", "--function-name", "cli-delete")
    assert rc == 0, err
    rc, out, err = cli("get-function", "--function-name", "cli-delete")
    assert rc != 0
    assert "ResourceNotFoundException" in err, err


def test_get_missing_function_fails(cli):
    rc, out, err = cli("get-function", "--function-name", "cli-never-created")
    assert rc != 0
    assert "ResourceNotFoundException" in err, err


def test_invalid_memory_size_is_refused(cli):
    # The CLI refuses --memory-size below 128 itself (botocore checks the model's minimum), so
    # the server's check is reached with a value over AWS's maximum, which botocore lets through.
    rc, _, err = cli("create-function", "--function-name", "cli-bad-memory", "--runtime", "python3.11",
                     "--role", ROLE, "--handler", "app.handler", "--zip-file", "fileb://v1.zip",
                     "--memory-size", "10241")
    assert rc != 0
    assert "InvalidParameterValueException" in err, err
    rc, _, err = cli("get-function", "--function-name", "cli-bad-memory")
    assert rc != 0 and "ResourceNotFoundException" in err, err


@pytest.mark.parametrize("flags, member", [
    (("--tracing-config", "Mode=Active"), "TracingConfig"),
])
def test_unimplemented_parameters_are_refused_by_name(cli, flags, member):
    name = "cli-refused-" + member.lower()
    rc, _, err = cli("create-function", "--function-name", name, "--runtime", "python3.11",
                     "--role", ROLE, "--handler", "app.handler", "--zip-file", "fileb://v1.zip",
                     *flags)
    assert rc != 0
    assert "InvalidParameterValueException" in err and f"{member} " in err, err
    rc, _, err = cli("get-function", "--function-name", name)
    assert rc != 0 and "ResourceNotFoundException" in err, err
    # On an update too, and the function keeps its tracing mode.
    if member == "TracingConfig":
        create(cli, name)
        rc, _, err = cli("update-function-configuration", "--function-name", name, *flags)
        assert rc != 0 and "InvalidParameterValueException" in err, err
        rc, out, err = cli("get-function-configuration", "--function-name", name)
        assert rc == 0 and out["TracingConfig"] == {"Mode": "PassThrough"}, err


def test_dry_run_invoke(cli, tmp_path):
    create(cli, "cli-invoke")
    rc, out, err = cli("invoke", "--function-name", "cli-invoke", "--invocation-type", "DryRun",
                       str(tmp_path / "out.json"))
    assert rc == 0, err
    assert out["StatusCode"] == 204
