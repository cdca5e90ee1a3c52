"""The `ember fn` CLI: every subcommand through the signed API, its ways of finding the server
and the keys, and its one-line errors; and how `ember serve` tells where it listens."""

from __future__ import annotations

import io
import json
import socket
import zipfile
from contextlib import contextmanager

import pytest

from ember_e2e import REGION, code_sha256, download, handler_zip, one_line


@pytest.fixture(scope="module")
def ember(server):
    """Runs `ember fn ...` with --endpoint and --data-dir flags, as the admin account."""

    def run(*args: str, env: dict[str, str] | None = None):
        return server.run_ember("fn", *args, "--endpoint", server.endpoint,
                                "--data-dir", str(server.data_dir), env=env)

    return run


def ok_json(r):
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@contextmanager
def refused_endpoint():
    """The URL of a port that refuses connections: bound by this test but not listening, so no
    other process can take it meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def assert_one_line_error(r, *needles: str):
    assert r.returncode != 0, r.stdout
    assert one_line(r.stderr), r.stderr
    assert r.stderr.startswith("error:"), r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr


@pytest.fixture
def code_dir(tmp_path):
    d = tmp_path / "src"
    (d / "lib").mkdir(parents=True)
    (d / "app.py").write_text("def handler(event, context):\n    return 'from a dir'\n")
    (d / "lib" / "helper.py").write_text("VALUE = 42\n")
    return d


def test_create_from_a_directory_zips_it(ember, server, code_dir):
    f = ok_json(ember("create", "cli-dir", "--code", str(code_dir), "--runtime", "python3.11",
                      "--handler", "app.handler", "--json"))
    assert f["FunctionName"] == "cli-dir"
    assert (f["Runtime"], f["Handler"]) == ("python3.11", "app.handler")
    location = server.lambda_client().get_function(FunctionName="cli-dir")["Code"]["Location"]
    with zipfile.ZipFile(io.BytesIO(download(location))) as zf:
        assert zf.read("app.py").decode() == (code_dir / "app.py").read_text()
        assert zf.read("lib/helper.py").decode() == "VALUE = 42\n"


def test_create_from_a_zip_uploads_it_as_is(ember, tmp_path):
    zip_path = tmp_path / "pkg.zip"
    zip_path.write_bytes(handler_zip("ember cli"))
    f = ok_json(ember("create", "cli-zip", "--code", str(zip_path), "--runtime", "python3.11",
                      "--handler", "app.handler", "--memory", "256", "--timeout", "20",
                      "--env", "AA=1", "--env", "BB=two=2", "--json"))
    assert f["CodeSha256"] == code_sha256(handler_zip("ember cli"))
    assert f["CodeSize"] == len(handler_zip("ember cli"))
    assert (f["MemorySize"], f["Timeout"]) == (256, 20)
    assert f["Environment"] == {"Variables": {"AA": "1", "BB": "two=2"}}


def test_list_get_update_delete(ember, server, tmp_path):
    zip_path = tmp_path / "v1.zip"
    zip_path.write_bytes(handler_zip("lifecycle v1"))
    created = ok_json(ember("create", "cli-life", "--code", str(zip_path), "--runtime", "python3.11",
                            "--handler", "app.handler", "--json"))

    listed = ok_json(ember("list", "--json"))["Functions"]
    assert "cli-life" in [f["FunctionName"] for f in listed]

    got = ok_json(ember("get", "cli-life", "--json"))
    assert got["Configuration"] == created
    assert download(got["Code"]["Location"]) == handler_zip("lifecycle v1")

    zip_path.write_bytes(handler_zip("lifecycle v2"))
    updated = ok_json(ember("update-code", "cli-life", "--code", str(zip_path), "--json"))
    assert updated["CodeSha256"] == code_sha256(handler_zip("lifecycle v2"))
    assert updated["RevisionId"] != created["RevisionId"]

    configured = ok_json(ember("update-config", "cli-life", "--memory", "256", "--env", "K1=V1", "--json"))
    assert configured["MemorySize"] == 256
    assert configured["Environment"] == {"Variables": {"K1": "V1"}}
    assert configured["CodeSha256"] == updated["CodeSha256"]
    assert server.lambda_client().get_function_configuration(FunctionName="cli-life")["MemorySize"] == 256

    # A stale --revision-id is refused with one line.
    stale = ember("update-config", "cli-life", "--timeout", "9", "--revision-id", created["RevisionId"])
    assert_one_line_error(stale, "PreconditionFailedException")

    r = ember("delete", "cli-life")
    assert r.returncode == 0, r.stderr
    assert "cli-life" in r.stdout
    assert_one_line_error(ember("get", "cli-life"), "ResourceNotFoundException")


def test_human_output(ember, tmp_path):
    zip_path = tmp_path / "h.zip"
    zip_path.write_bytes(handler_zip("human"))
    r = ember("create", "cli-human", "--code", str(zip_path), "--runtime", "python3.11", "--handler", "app.handler")
    assert r.returncode == 0, r.stderr
    assert ":function:cli-human" in r.stdout
    r = ember("list")
    assert r.returncode == 0, r.stderr
    assert any(line.split()[:2] == ["cli-human", "python3.11"] for line in r.stdout.splitlines()), r.stdout
    r = ember("get", "cli-human")
    assert r.returncode == 0, r.stderr
    assert code_sha256(handler_zip("human")) in r.stdout


def test_list_follows_every_page(server, tmp_path):
    # More functions than one page of ListFunctions (50) holds, in a fresh account.
    account = server.make_account("many")
    lam = server.lambda_client(account)
    names = sorted(f"many-{i:02d}" for i in range(57))
    for name in names:
        lam.create_function(FunctionName=name, Runtime="python3.11", Role="arn:aws:iam::123456789012:role/r",
                            Handler="app.handler", Code={"ZipFile": handler_zip()})
    empty = tmp_path / "no-credentials"
    empty.mkdir()
    r = server.run_ember("fn", "list", "--json", "--endpoint", server.endpoint, "--data-dir", str(empty),
                         env={"AWS_ACCESS_KEY_ID": account["AccessKeyId"],
                              "AWS_SECRET_ACCESS_KEY": account["SecretAccessKey"]})
    assert [f["FunctionName"] for f in ok_json(r)["Functions"]] == names


def test_invoke_dry_run(ember, tmp_path):
    zip_path = tmp_path / "i.zip"
    zip_path.write_bytes(handler_zip("invoke"))
    ok_json(ember("create", "cli-invoke", "--code", str(zip_path), "--runtime", "python3.11",
                  "--handler", "app.handler", "--json"))
    r = ember("invoke", "cli-invoke", "--type", "DryRun", "--json")
    assert ok_json(r)["StatusCode"] == 204
    r = ember("invoke", "cli-invoke", "--type", "DryRun")
    assert r.returncode == 0, r.stderr
    assert_one_line_error(ember("invoke", "cli-never-created", "--type", "DryRun"), "ResourceNotFoundException")


def test_errors_are_one_line(ember, server, tmp_path, code_dir):
    assert_one_line_error(ember("get", "cli-missing"), "ResourceNotFoundException", "404")
    assert_one_line_error(ember("create", "cli-bad-mem", "--code", str(code_dir), "--runtime", "python3.11",
                                "--handler", "app.handler", "--memory", "64"),
                          "InvalidParameterValueException")
    assert_one_line_error(ember("create", "cli-no-code", "--code", str(tmp_path / "nowhere.zip"),
                                "--runtime", "python3.11", "--handler", "app.handler"))
    assert_one_line_error(ember("update-config", "cli-missing", "--env", "NOEQUALS"), "NOEQUALS")
    # No server at the endpoint.
    with refused_endpoint() as nobody:
        closed = server.run_ember("fn", "list", "--endpoint", nobody, "--data-dir", str(server.data_dir))
    assert_one_line_error(closed)
    # No keys anywhere.
    empty = tmp_path / "empty"
    empty.mkdir()
    no_keys = server.run_ember("fn", "list", "--endpoint", server.endpoint, "--data-dir", str(empty))
    assert_one_line_error(no_keys, "credentials")


def test_environment_variables_instead_of_flags(server, tmp_path):
    zip_path = tmp_path / "e.zip"
    zip_path.write_bytes(handler_zip("env"))
    env = {"EMBER_ENDPOINT": server.endpoint, "EMBER_DATA_DIR": str(server.data_dir)}
    r = server.run_ember("fn", "create", "cli-env", "--code", str(zip_path), "--runtime", "python3.11",
                         "--handler", "app.handler", "--json", env=env)
    assert ok_json(r)["FunctionName"] == "cli-env"
    r = server.run_ember("fn", "get", "cli-env", "--json", env=env)
    assert ok_json(r)["Configuration"]["CodeSha256"] == code_sha256(handler_zip("env"))
    # The same command without them looks for a server and keys that are not there.
    r = server.run_ember("fn", "get", "cli-env", "--json", cwd=tmp_path)
    assert_one_line_error(r)


def test_aws_environment_keys_act_as_their_account(server, tmp_path):
    account = server.make_account("env-keys")
    empty = tmp_path / "empty-data-dir"
    empty.mkdir()
    zip_path = tmp_path / "k.zip"
    zip_path.write_bytes(handler_zip("env keys"))
    env = {
        "EMBER_ENDPOINT": server.endpoint,
        "EMBER_DATA_DIR": str(empty),
        "AWS_ACCESS_KEY_ID": account["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": account["SecretAccessKey"],
    }
    r = server.run_ember("fn", "create", "env-keyed", "--code", str(zip_path), "--runtime", "python3.11",
                         "--handler", "app.handler", "--json", env=env)
    f = ok_json(r)
    assert f["FunctionArn"] == f"arn:aws:lambda:{REGION}:{account['AccountId']}:function:env-keyed"
    # It is that account's function: visible to it, invisible to the admin.
    assert server.lambda_client(account).get_function(FunctionName="env-keyed")
    admin = server.lambda_client()
    with pytest.raises(admin.exceptions.ResourceNotFoundException):
        admin.get_function(FunctionName="env-keyed")
    listed = ok_json(server.run_ember("fn", "list", "--json", env=env))["Functions"]
    assert [x["FunctionName"] for x in listed] == ["env-keyed"]
    # A credentials file in the data dir wins over the environment.
    r = server.run_ember("fn", "get", "env-keyed", "--json", env=dict(env, EMBER_DATA_DIR=str(server.data_dir)))
    assert_one_line_error(r, "ResourceNotFoundException")


def test_serve_on_port_0_tells_which_port_it_bound(server_factory):
    # The harness starts every server with `--listen 127.0.0.1:0` and finds it through the file.
    s = server_factory()
    assert s.port != 0
    banner = [line for line in s.log_text().splitlines() if line.startswith("Ember is listening on ")]
    assert banner == [f"Ember is listening on {s.endpoint}"], s.log_text()
    assert s.endpoint_path.read_text() == s.endpoint + "\n"
    assert not s.metrics_endpoint_path.exists(), "no --metrics-listen, no metrics-endpoint"
    # What a script does: take the endpoint from the file.
    env = {"EMBER_ENDPOINT": s.endpoint_path.read_text().strip(), "EMBER_DATA_DIR": str(s.data_dir)}
    assert ok_json(s.run_ember("fn", "list", "--json", env=env)) == {"Functions": []}
    # The file exists while the server listens, and no longer.
    assert s.stop() == 0
    assert not s.endpoint_path.exists()
