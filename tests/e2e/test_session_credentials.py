"""Each execution environment's own temporary credentials (issue 19, part 4), end to end.

A Python function returns the AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN it
sees; boto3 in this test process then uses them as the function's code would. They differ per
environment, are never the account's keys, invoke the account's functions and nothing else, need
their own token, and are refused once their environment is gone (function updated or deleted,
the VM recycled, the server killed and restarted).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import time
from pathlib import Path

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.exceptions
import pytest
from botocore.config import Config

from backend import store_scalar
from ember_e2e import REGION, ROLE, client_error, make_zip, send

pytestmark = pytest.mark.needs_root  # the functions run in VMs (conftest.py)

PY = "python3.11"
NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
TEMPORARY_KEY = re.compile(r"^ASIA[A-Z2-7]{16}$")

HANDLER = """
import json, os, time, uuid

ENVIRONMENT = str(uuid.uuid4())

def handler(event, context):
    time.sleep(event.get("sleep_ms", 0) / 1000)
    seen = {name: os.environ.get(name) for name in %r}
    seen["environment"] = ENVIRONMENT
    seen["ran"] = event.get("mark")
    return seen
""" % (NAMES,)
ZIP = make_zip({"app.py": HANDLER})


def create(lam, name, **extra):
    lam.create_function(FunctionName=name, Runtime=PY, Role=ROLE, Handler="app.handler",
                        Code={"ZipFile": ZIP}, Timeout=30, **extra)


def call(lam, name, event=None, **kwargs) -> dict:
    r = lam.invoke(FunctionName=name, Payload=json.dumps(event or {}).encode(), **kwargs)
    body = json.loads(r["Payload"].read())
    assert "FunctionError" not in r, body
    return body


def session_client(server, seen: dict, token: str | None = "own"):
    """A boto3 Lambda client with the credentials a function saw (`token`: its own session
    token, `None` for none, or another string)."""
    return boto3.client(
        "lambda", endpoint_url=server.endpoint, region_name=REGION,
        aws_access_key_id=seen["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=seen["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=seen["AWS_SESSION_TOKEN"] if token == "own" else token,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=60),
    )


def refused(fn, *args, **kwargs) -> tuple[str, int]:
    with pytest.raises(Exception) as excinfo:
        fn(*args, **kwargs)
    code, status, _ = client_error(excinfo)
    return code, status


def wait_refused(client, name: str, timeout: float = 10.0) -> tuple[str, int]:
    """The error a DryRun Invoke (authenticated, nothing run) with `client` gets once it is
    refused, within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.invoke(FunctionName=name, InvocationType="DryRun")
        except botocore.exceptions.ClientError as e:
            meta = e.response["ResponseMetadata"]
            return e.response["Error"]["Code"], meta["HTTPStatusCode"]
        if time.monotonic() > deadline:
            raise AssertionError(f"credentials still accepted after {timeout}s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def lam(server):
    return server.lambda_client(server.admin_keys())


def test_each_environment_gets_its_own_temporary_credentials(server, lam):
    create(lam, "creds-each")
    # Three at once: three environments, some forked from the VM's runtime template.
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        seen = list(pool.map(lambda _: call(lam, "creds-each", {"sleep_ms": 1500}), range(3)))
    assert len({s["environment"] for s in seen}) == 3, seen
    account = server.admin_keys()
    for s in seen:
        assert TEMPORARY_KEY.match(s["AWS_ACCESS_KEY_ID"]), s
        assert len(s["AWS_SECRET_ACCESS_KEY"]) == 40, s
        assert len(s["AWS_SESSION_TOKEN"]) >= 100, s
        assert s["AWS_ACCESS_KEY_ID"] != account["AccessKeyId"]
        assert s["AWS_SECRET_ACCESS_KEY"] != account["SecretAccessKey"]
        for value in (s["AWS_ACCESS_KEY_ID"], s["AWS_SECRET_ACCESS_KEY"]):
            assert value not in s["AWS_SESSION_TOKEN"]
    for name in NAMES:
        assert len({s[name] for s in seen}) == 3, name
    # A warm invocation of an environment sees that environment's credentials again.
    again = call(lam, "creds-each")
    (same,) = [s for s in seen if s["environment"] == again["environment"]]
    assert {n: again[n] for n in NAMES} == {n: same[n] for n in NAMES}


def test_a_function_may_not_set_them_itself(lam):
    for name in NAMES:
        code, status = refused(create, lam, f"creds-own-{name.lower().replace('_', '-')}",
                               Environment={"Variables": {name: "mine"}})
        assert (code, status) == ("InvalidParameterValueException", 400), name


def test_they_invoke_the_accounts_functions_and_change_nothing(server, lam):
    create(lam, "creds-caller")
    create(lam, "creds-callee")
    seen = call(lam, "creds-caller")
    fn = session_client(server, seen)

    ran = fn.invoke(FunctionName="creds-callee", Payload=json.dumps({"mark": "sync"}).encode())
    assert json.loads(ran["Payload"].read())["ran"] == "sync"
    assert fn.invoke(FunctionName="creds-callee", InvocationType="Event",
                     Payload=b"{}")["StatusCode"] == 202
    assert fn.invoke(FunctionName="creds-callee", InvocationType="DryRun")["StatusCode"] == 204
    streamed = fn.invoke_with_response_stream(FunctionName="creds-callee",
                                              Payload=json.dumps({"mark": "stream"}).encode())
    chunks = b"".join(e["PayloadChunk"]["Payload"] for e in streamed["EventStream"]
                      if "PayloadChunk" in e)
    assert json.loads(chunks)["ran"] == "stream"

    # Nothing that reads or changes functions or accounts, its own account's or another's.
    other = server.make_account("creds-other")
    other_lam = server.lambda_client(other)
    create(other_lam, "creds-theirs")
    theirs = other_lam.get_function_configuration(FunctionName="creds-theirs")["FunctionArn"]
    for target in ("creds-callee", theirs):
        attempts = [
            (fn.create_function, dict(FunctionName=target.split(":")[-1] + "-new", Runtime=PY,
                                      Role=ROLE, Handler="app.handler", Code={"ZipFile": ZIP})),
            (fn.delete_function, dict(FunctionName=target)),
            (fn.update_function_code, dict(FunctionName=target, ZipFile=ZIP)),
            (fn.get_function, dict(FunctionName=target)),
            (fn.add_permission, dict(FunctionName=target, StatementId="s", Principal="*",
                                     Action="lambda:InvokeFunction")),
        ]
        for op, kwargs in attempts:
            assert refused(op, **kwargs) == ("AccessDeniedException", 403), (op, target)
    assert refused(fn.list_functions) == ("AccessDeniedException", 403)
    assert refused(fn.get_account_settings) == ("AccessDeniedException", 403)
    # Another account's function cannot be invoked: as for the account's own keys, it is not
    # found (and does not run).
    assert refused(fn.invoke, FunctionName=theirs, Payload=b"{}") == (
        "ResourceNotFoundException", 404)
    # Everything is still as it was.
    assert lam.get_function(FunctionName="creds-callee")["Configuration"]["State"] == "Active"
    assert other_lam.get_function(FunctionName="creds-theirs")
    names = {f["FunctionName"] for f in lam.list_functions()["Functions"]}
    assert "creds-callee-new" not in names and "creds-theirs-new" not in names


def test_a_function_url_with_aws_iam_takes_them(server, lam):
    create(lam, "creds-url")
    config = lam.create_function_url_config(FunctionName="creds-url", AuthType="AWS_IAM")
    url_id = config["FunctionUrl"].split("//")[1].split(".")[0]
    seen = call(lam, "creds-url")
    url = f"{server.endpoint}/ember/v1/urls/{url_id}/"

    def post(keys: dict, token: str | None):
        """A POST signed by botocore's own signer, with `token` as the session token."""
        request = botocore.awsrequest.AWSRequest(method="POST", url=url, data=b"{}",
                                                 headers={"Content-Type": "application/json"})
        creds = botocore.credentials.Credentials(keys["AccessKeyId"], keys["SecretAccessKey"],
                                                 token)
        botocore.auth.SigV4Auth(creds, "lambda", REGION).add_auth(request)
        return send("POST", url, b"{}", dict(request.headers.items()))

    keys = {"AccessKeyId": seen["AWS_ACCESS_KEY_ID"],
            "SecretAccessKey": seen["AWS_SECRET_ACCESS_KEY"]}
    r = post(keys, seen["AWS_SESSION_TOKEN"])
    assert r.status == 200, r.body
    assert r.json()["AWS_ACCESS_KEY_ID"]  # the function ran, and answered what it sees
    assert post(keys, None).status == 403
    assert post(keys, "not-" + seen["AWS_SESSION_TOKEN"]).status == 403


def test_they_need_their_own_token(server, lam):
    create(lam, "creds-token")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        one, two = pool.map(lambda _: call(lam, "creds-token", {"sleep_ms": 1500}), range(2))
    assert one["environment"] != two["environment"]
    assert session_client(server, one).invoke(FunctionName="creds-token",
                                              Payload=b"{}")["StatusCode"] == 200
    for token in (None, two["AWS_SESSION_TOKEN"], one["AWS_SESSION_TOKEN"][:-4] + "AAAA"):
        client = session_client(server, one, token=token)
        assert refused(client.invoke, FunctionName="creds-token", Payload=b"{}") == (
            "UnrecognizedClientException", 403), token
    # Another environment's key with this one's secret and token: the signature is wrong.
    mixed = dict(one, AWS_ACCESS_KEY_ID=two["AWS_ACCESS_KEY_ID"])
    code, status = refused(session_client(server, mixed).invoke, FunctionName="creds-token",
                           Payload=b"{}")
    assert (code, status) == ("UnrecognizedClientException", 403)
    mixed = dict(two, AWS_SECRET_ACCESS_KEY=one["AWS_SECRET_ACCESS_KEY"])
    code, status = refused(session_client(server, mixed).invoke, FunctionName="creds-token",
                           Payload=b"{}")
    assert (code, status) == ("InvalidSignatureException", 403)


def test_they_end_with_their_environment_when_the_function_changes(server, lam):
    create(lam, "creds-update")
    create(lam, "creds-delete")
    create(lam, "creds-witness")
    before = call(lam, "creds-update")
    updated = session_client(server, before)
    deleted = session_client(server, call(lam, "creds-delete"))
    for client in (updated, deleted):
        assert client.invoke(FunctionName="creds-witness", Payload=b"{}")["StatusCode"] == 200

    # A new revision: the idle environment of the old one is torn down, and its credentials
    # are refused at once.
    lam.update_function_configuration(FunctionName="creds-update", Description="v2")
    assert refused(updated.invoke, FunctionName="creds-witness", Payload=b"{}") == (
        "UnrecognizedClientException", 403)
    # The new revision's environment has credentials of its own, which work.
    fresh = call(lam, "creds-update")
    assert fresh["AWS_ACCESS_KEY_ID"] != before["AWS_ACCESS_KEY_ID"]
    assert session_client(server, fresh).invoke(FunctionName="creds-witness",
                                                Payload=b"{}")["StatusCode"] == 200

    lam.delete_function(FunctionName="creds-delete")
    assert refused(deleted.invoke, FunctionName="creds-witness", Payload=b"{}") == (
        "UnrecognizedClientException", 403)


def test_a_provisioned_environment_has_them_too(server, lam):
    create(lam, "creds-provisioned")
    version = lam.publish_version(FunctionName="creds-provisioned")["Version"]
    lam.put_provisioned_concurrency_config(FunctionName="creds-provisioned", Qualifier=version,
                                           ProvisionedConcurrentExecutions=1)
    deadline = time.monotonic() + 60
    while lam.get_provisioned_concurrency_config(
            FunctionName="creds-provisioned", Qualifier=version)["Status"] != "READY":
        assert time.monotonic() < deadline, "provisioned concurrency never became READY"
        time.sleep(0.2)
    r = lam.invoke(FunctionName="creds-provisioned", Qualifier=version, Payload=b"{}")
    assert r["ResponseMetadata"]["HTTPHeaders"]["x-ember-start"] == "warm"
    seen = json.loads(r["Payload"].read())
    client = session_client(server, seen)
    assert client.invoke(FunctionName="creds-provisioned", Qualifier=version,
                         Payload=b"{}")["StatusCode"] == 200
    # Released, the environment goes, and its credentials with it.
    lam.delete_provisioned_concurrency_config(FunctionName="creds-provisioned",
                                              Qualifier=version)
    assert wait_refused(client, "creds-provisioned") == ("UnrecognizedClientException", 403)


def _agents_of(server) -> list[int]:
    """The pids of the server's VMs' agents (its `ember-agent` children)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if not entry.isdigit() or Path(f"/proc/{entry}/comm").read_text().strip() != \
                    "ember-agent":
                continue
            status = Path(f"/proc/{entry}/status").read_text()
        except FileNotFoundError:
            continue
        ppid = int(re.search(r"^PPid:\s+(\d+)", status, re.M).group(1))
        if ppid == server.proc.pid:
            found.append(int(entry))
    return found


def session_rows(data_dir: Path) -> int:
    return int(store_scalar(data_dir, "SELECT COUNT(*) FROM session_credentials"))


def test_a_recycled_vm_takes_its_credentials_with_it(server_factory):
    server = server_factory()
    lam = server.lambda_client()
    create(lam, "creds-vm")
    create(lam, "creds-vm-witness")
    client = session_client(server, call(lam, "creds-vm"))
    assert client.invoke(FunctionName="creds-vm-witness", Payload=b"{}")["StatusCode"] == 200
    agents = _agents_of(server)
    assert agents
    for pid in agents:
        os.kill(pid, signal.SIGKILL)
    assert wait_refused(client, "creds-vm-witness") == ("UnrecognizedClientException", 403)
    # The next environment, in a new VM, has credentials of its own.
    fresh = session_client(server, call(lam, "creds-vm"))
    assert fresh.invoke(FunctionName="creds-vm-witness", Payload=b"{}")["StatusCode"] == 200


def test_keep_alive_ends_the_environment_and_its_credentials(server_factory):
    server = server_factory(None, "--container-keep-alive", "1")
    lam = server.lambda_client()
    create(lam, "creds-idle")
    client = session_client(server, call(lam, "creds-idle"))
    assert client.invoke(FunctionName="creds-idle", Payload=b"{}")["StatusCode"] == 200
    # Idle past its keep-alive (1 s), the environment is torn down.
    assert wait_refused(client, "creds-idle", timeout=15) == ("UnrecognizedClientException", 403)


def test_a_restart_after_sigkill_revokes_every_credential(server_factory):
    server = server_factory()
    lam = server.lambda_client()
    create(lam, "creds-restart")
    seen = call(lam, "creds-restart")
    client = session_client(server, seen)
    assert client.invoke(FunctionName="creds-restart", Payload=b"{}")["StatusCode"] == 200
    # The store mirrors it (written in the background): the table holds it before the kill.
    deadline = time.monotonic() + 5
    while session_rows(server.data_dir) == 0:
        assert time.monotonic() < deadline, "no session credential row was written"
        time.sleep(0.05)

    server.stop("SIGKILL")
    restarted = server_factory(server.data_dir)
    assert session_rows(restarted.data_dir) == 0
    client = session_client(restarted, seen)
    assert refused(client.invoke, FunctionName="creds-restart", Payload=b"{}") == (
        "UnrecognizedClientException", 403)
    # The function runs again, with new credentials.
    again = call(restarted.lambda_client(), "creds-restart")
    assert again["AWS_ACCESS_KEY_ID"] != seen["AWS_ACCESS_KEY_ID"]
    assert session_client(restarted, again).invoke(FunctionName="creds-restart",
                                                   Payload=b"{}")["StatusCode"] == 200


def test_deleting_the_function_revokes_them_even_while_it_runs(server, lam):
    create(lam, "creds-busy")
    create(lam, "creds-busy-witness")
    seen = call(lam, "creds-busy")
    client = session_client(server, seen)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # The same (warm) environment, busy for 3 s.
        running = pool.submit(call, lam, "creds-busy", {"sleep_ms": 3000})
        time.sleep(0.5)
        assert client.invoke(FunctionName="creds-busy-witness",
                             InvocationType="DryRun")["StatusCode"] == 204
        lam.delete_function(FunctionName="creds-busy")
        assert not running.done()
        assert refused(client.invoke, FunctionName="creds-busy-witness",
                       InvocationType="DryRun") == ("UnrecognizedClientException", 403)
        assert running.result()["environment"] == seen["environment"]
