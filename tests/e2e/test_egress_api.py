"""A function's own egress (issue 19), end to end through the API, boto3 and the ember CLI:
`GET`/`PUT /ember/v1/functions/{name}/network` (`{"Egress": "Allow" | "Deny" | null}`), `ember fn
create … --egress`, `ember fn update-config NAME --egress allow|deny|default` and what `ember fn
get` shows; kept across a restart, forgotten with the function, refused (changing nothing) for bad
input, other accounts and a function's own session credentials; a change puts the next invocation
in a new environment. `ember serve`'s `--egress`, `--egress-allow`, `--egress-deny` and `--dns`
refuse bad values before the server starts.

Whether packets actually flow under a setting is tests/e2e/test_egress.py's concern."""

from __future__ import annotations

import json
import uuid

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest
from botocore.config import Config

from ember_e2e import REGION, ROLE, make_zip, run_ember, send, sign

PY = "python3.12"
HANDLER = """
import os, uuid

ENVIRONMENT = str(uuid.uuid4())

def handler(event, context):
    seen = {name: os.environ.get(name)
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
    seen["environment"] = ENVIRONMENT
    return seen
"""
ZIP = make_zip({"app.py": HANDLER})
FIELDS = {"FunctionName", "Egress", "EffectiveEgress"}


# ---- helpers --------------------------------------------------------------------------------


def create(lam, name):
    lam.create_function(FunctionName=name, Runtime=PY, Role=ROLE, Handler="app.handler",
                        Code={"ZipFile": ZIP}, Timeout=30)


def call(lam, name) -> dict:
    r = lam.invoke(FunctionName=name, Payload=b"{}")
    body = json.loads(r["Payload"].read())
    assert "FunctionError" not in r, body
    return body


def url(server, name):
    return f"{server.endpoint}/ember/v1/functions/{name}/network"


def get_network(server, name, keys=None):
    u = url(server, name)
    return send("GET", u, headers=sign("GET", u, b"", keys or server.admin_keys()))


def put_network(server, name, body, keys=None):
    u = url(server, name)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return send("PUT", u, data, headers=sign("PUT", u, data, keys or server.admin_keys()))


def network(server, name, keys=None) -> dict:
    r = get_network(server, name, keys)
    assert r.status == 200, (r.status, r.body)
    doc = r.json()
    assert set(doc) == FIELDS, doc
    return doc


def assert_error(r, status, error_type, needle=""):
    assert r.status == status, (r.status, r.body)
    assert r.headers["x-amzn-ErrorType"] == error_type, (r.headers, r.body)
    assert needle in r.json()["message"], r.body


def ember_fn(server, *args):
    return server.run_ember("fn", *args, "--endpoint", server.endpoint,
                            "--data-dir", str(server.data_dir))


@pytest.fixture(scope="module")
def lam(server):
    return server.lambda_client(server.admin_keys())


# ---- the API ---------------------------------------------------------------------------------


def test_a_functions_egress_is_shown_set_and_cleared(server, lam):
    create(lam, "net-set")
    assert network(server, "net-set") == {
        "FunctionName": "net-set", "Egress": None, "EffectiveEgress": "Allow"}
    r = put_network(server, "net-set", {"Egress": "Deny"})
    assert r.status == 200, r.body
    assert r.json() == {"FunctionName": "net-set", "Egress": "Deny", "EffectiveEgress": "Deny"}
    assert network(server, "net-set")["Egress"] == "Deny"
    # By ARN too, and the same answer twice (setting what is set changes nothing).
    arn = lam.get_function(FunctionName="net-set")["Configuration"]["FunctionArn"]
    assert network(server, arn)["Egress"] == "Deny"
    assert put_network(server, "net-set", {"Egress": "Deny"}).json()["Egress"] == "Deny"
    r = put_network(server, "net-set", {"Egress": "Allow"})
    assert r.json() == {"FunctionName": "net-set", "Egress": "Allow", "EffectiveEgress": "Allow"}
    r = put_network(server, "net-set", {"Egress": None})
    assert r.json() == {"FunctionName": "net-set", "Egress": None, "EffectiveEgress": "Allow"}
    assert network(server, "net-set")["Egress"] is None
    # Lambda's own shapes are untouched: no new member in GetFunctionConfiguration.
    config = lam.get_function_configuration(FunctionName="net-set")
    assert "Egress" not in config and "Network" not in config


def test_bad_input_is_refused_and_changes_nothing(server, lam):
    create(lam, "net-bad")
    assert put_network(server, "net-bad", {"Egress": "Deny"}).status == 200
    lam.publish_version(FunctionName="net-bad")
    bad = [
        ({"Egress": "deny"}, 'Egress must be "Allow", "Deny" or null (got "deny")'),
        ({"Egress": "Default"}, 'got "Default"'),
        ({"Egress": ""}, 'got ""'),
        ({"Egress": 1}, "Could not parse request body"),
        ({}, "Egress is required"),
        (b"", "Egress is required"),
        (b"{", "Could not parse request body"),
        ({"Egress": "Allow", "Cidr": "0.0.0.0/0"}, "unknown field `Cidr`"),
    ]
    for body, needle in bad:
        r = put_network(server, "net-bad", body)
        assert_error(r, 400, "InvalidParameterValueException", needle)
    # The setting is the function's, for all its versions: a qualified name is refused.
    for name in ("net-bad:1", "net-bad:$LATEST"):
        assert_error(put_network(server, name, {"Egress": "Allow"}), 400,
                     "InvalidParameterValueException", "without a qualifier")
        assert_error(get_network(server, name), 400, "InvalidParameterValueException",
                     "without a qualifier")
    assert_error(put_network(server, "net-nothere", {"Egress": "Allow"}), 404,
                 "ResourceNotFoundException", "net-nothere")
    assert_error(get_network(server, "net-nothere"), 404, "ResourceNotFoundException")
    assert network(server, "net-bad")["Egress"] == "Deny"


def test_another_account_neither_sees_nor_changes_it(server, lam):
    create(lam, "net-mine")
    other = server.make_account(f"net-other-{uuid.uuid4().hex[:8]}")
    assert_error(get_network(server, "net-mine", other), 404, "ResourceNotFoundException")
    assert_error(put_network(server, "net-mine", {"Egress": "Allow"}, other), 404,
                 "ResourceNotFoundException")
    arn = lam.get_function(FunctionName="net-mine")["Configuration"]["FunctionArn"]
    assert_error(put_network(server, arn, {"Egress": "Allow"}, other), 404,
                 "ResourceNotFoundException")
    assert network(server, "net-mine")["Egress"] is None


# ---- the ember CLI ---------------------------------------------------------------------------


def test_the_cli_creates_updates_and_shows_it(server, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "app.py").write_text(HANDLER)
    r = ember_fn(server, "create", "net-cli", "--code", str(code), "--runtime", PY,
                 "--handler", "app.handler", "--egress", "deny")
    assert r.returncode == 0, r.stderr
    assert "egress         deny (the function's own)" in r.stdout, r.stdout
    assert network(server, "net-cli")["Egress"] == "Deny"

    r = ember_fn(server, "get", "net-cli")
    assert r.returncode == 0, r.stderr
    assert "egress         deny (the function's own)" in r.stdout, r.stdout
    r = ember_fn(server, "get", "net-cli", "--json")
    assert json.loads(r.stdout)["Network"] == {
        "FunctionName": "net-cli", "Egress": "Deny", "EffectiveEgress": "Deny"}

    r = ember_fn(server, "update-config", "net-cli", "--egress", "allow")
    assert r.returncode == 0, r.stderr
    assert "egress         allow (the function's own)" in r.stdout, r.stdout
    revision = json.loads(ember_fn(server, "get", "net-cli", "--json").stdout)[
        "Configuration"]["RevisionId"]
    r = ember_fn(server, "update-config", "net-cli", "--egress", "default", "--timeout", "20")
    assert r.returncode == 0, r.stderr
    assert "egress         allow (the server's default)" in r.stdout, r.stdout
    got = json.loads(ember_fn(server, "get", "net-cli", "--json").stdout)
    assert got["Configuration"]["Timeout"] == 20
    assert got["Network"]["Egress"] is None
    assert got["Configuration"]["RevisionId"] != revision, "the timeout did change"

    # Only allow, deny (and default, for update-config) parse; nothing changes otherwise.
    r = ember_fn(server, "update-config", "net-cli", "--egress", "open")
    assert r.returncode != 0
    assert "invalid value 'open'" in r.stderr and "default" in r.stderr, r.stderr
    r = ember_fn(server, "create", "net-cli2", "--code", str(code), "--runtime", PY,
                 "--handler", "app.handler", "--egress", "default")
    assert r.returncode != 0
    assert "invalid value 'default'" in r.stderr, r.stderr
    assert get_network(server, "net-cli2").status == 404, "nothing was created"
    assert network(server, "net-cli")["Egress"] is None


# ---- environments and credentials -------------------------------------------------------------


@pytest.mark.needs_root  # the function runs in a VM
def test_a_change_puts_the_next_invocation_in_a_new_environment(server, lam):
    create(lam, "net-env")
    first = call(lam, "net-env")["environment"]
    assert call(lam, "net-env")["environment"] == first, "warm reuse while nothing changes"
    assert put_network(server, "net-env", {"Egress": "Deny"}).status == 200
    second = call(lam, "net-env")["environment"]
    assert second != first, "the environment made under allow is retired"
    # Setting what is already in force retires nothing.
    assert put_network(server, "net-env", {"Egress": "Deny"}).status == 200
    assert call(lam, "net-env")["environment"] == second
    # Back to the server's default (allow): new again.
    assert put_network(server, "net-env", {"Egress": None}).status == 200
    third = call(lam, "net-env")["environment"]
    assert third not in (first, second)


@pytest.mark.needs_root  # the function runs in a VM
def test_a_functions_own_credentials_cannot_touch_it(server, lam):
    create(lam, "net-creds")
    seen = call(lam, "net-creds")
    assert seen["AWS_ACCESS_KEY_ID"].startswith("ASIA"), seen
    keys = {"AccessKeyId": seen["AWS_ACCESS_KEY_ID"],
            "SecretAccessKey": seen["AWS_SECRET_ACCESS_KEY"]}
    token = seen["AWS_SESSION_TOKEN"]

    def with_token(method, body):
        """A request signed by botocore's own signer with the session token, as boto3 sends."""
        u = url(server, "net-creds")
        request = botocore.awsrequest.AWSRequest(method=method, url=u, data=body,
                                                 headers={"Content-Type": "application/json"})
        creds = botocore.credentials.Credentials(keys["AccessKeyId"], keys["SecretAccessKey"],
                                                 token)
        botocore.auth.SigV4Auth(creds, "lambda", REGION).add_auth(request)
        headers = dict(request.headers.items())
        return send(method, u, body, headers=headers)

    assert_error(with_token("PUT", json.dumps({"Egress": "Allow"}).encode()), 403,
                 "AccessDeniedException")
    assert_error(with_token("GET", b""), 403, "AccessDeniedException")
    assert network(server, "net-creds")["Egress"] is None
    # The same credentials still invoke (they are valid; only this route is closed to them).
    fn = boto3.client("lambda", endpoint_url=server.endpoint, region_name=REGION,
                      aws_access_key_id=keys["AccessKeyId"],
                      aws_secret_access_key=keys["SecretAccessKey"], aws_session_token=token,
                      config=Config(retries={"total_max_attempts": 1, "mode": "standard"}))
    assert fn.invoke(FunctionName="net-creds", Payload=b"{}")["StatusCode"] == 200


# ---- the server's default, a restart, deletion ------------------------------------------------


def test_kept_across_a_restart_over_the_servers_default_and_forgotten_with_the_function(
        server_factory):
    deny = server_factory(None, "--egress", "deny")
    lam = deny.lambda_client()
    create(lam, "net-keep")
    create(lam, "net-default")
    assert network(deny, "net-default") == {
        "FunctionName": "net-default", "Egress": None, "EffectiveEgress": "Deny"}
    assert put_network(deny, "net-keep", {"Egress": "Allow"}).json()["EffectiveEgress"] == "Allow"
    lam.publish_version(FunctionName="net-keep")
    deny.stop()

    allow = server_factory(deny.data_dir)  # the default: --egress allow
    assert network(allow, "net-keep") == {
        "FunctionName": "net-keep", "Egress": "Allow", "EffectiveEgress": "Allow"}
    assert network(allow, "net-default")["EffectiveEgress"] == "Allow"
    assert put_network(allow, "net-keep", {"Egress": "Deny"}).status == 200
    allow.stop()

    again = server_factory(deny.data_dir, "--egress", "allow")
    assert network(again, "net-keep")["Egress"] == "Deny"
    lam = again.lambda_client()
    lam.delete_function(FunctionName="net-keep")
    assert_error(get_network(again, "net-keep"), 404, "ResourceNotFoundException")
    create(lam, "net-keep")
    assert network(again, "net-keep")["Egress"] is None, "a new function of the same name"


def test_bad_serve_flags_stop_the_server_before_it_starts(ember_bin, tmp_path):
    cases = [
        (["--egress", "open"], "invalid value 'open' for '--egress"),
        (["--egress-allow", "10.0.0.1/8"], "did you mean 10.0.0.0/8?"),
        (["--egress-allow", "example.com:443"], "not an IP address or CIDR"),
        (["--egress-deny", "203.0.113.0/24:0"], "not a port list"),
        (["--egress-deny", "203.0.113.0/24:9000-8000"], "is empty"),
        (["--egress-allow", "2001:db8::/32:443"], "in brackets"),
        (["--dns", "resolver.example"], "is not an IP address"),
    ]
    for args, needle in cases:
        data_dir = tmp_path / uuid.uuid4().hex
        r = run_ember(ember_bin, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir),
                      *args, timeout=30)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert needle in r.stderr, (args, r.stderr)
        assert not data_dir.exists(), "refused before anything was made"
    # The environment variables are read and checked the same way.
    r = run_ember(ember_bin, "serve", "--listen", "127.0.0.1:0", "--data-dir",
                  str(tmp_path / "env"), env={"EMBER_EGRESS_ALLOW": "10.0.0.0/8 10.0.0.1/8"},
                  timeout=30)
    assert r.returncode == 2 and "did you mean 10.0.0.0/8?" in r.stderr, r.stderr
