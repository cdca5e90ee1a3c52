"""Provisioned concurrency, end to end with boto3, the AWS CLI and the ember CLI: environments of
a published version kept initialized and READY, invocations on them warm (no Init Duration), one
that dies re-created, a delete releasing them, a restarted server making them again, and Lambda's
errors ($LATEST refused, the account's and the function's limits, an unknown qualifier)."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import time

import botocore.exceptions
import pytest

from ember_e2e import ROLE, fleet, wait_fleet

pytestmark = pytest.mark.needs_root  # VMs need root; without it the tests fail (conftest.py)

PY = "python3.11"


# ---- helpers --------------------------------------------------------------------------------


def create_version(lam, name, zip_bytes, **extra) -> str:
    """Creates a Python function and publishes its first version; returns the version."""
    lam.create_function(FunctionName=name, Runtime=PY, Role=ROLE, Handler="app.handler",
                        Code={"ZipFile": zip_bytes}, **extra)
    return lam.publish_version(FunctionName=name)["Version"]


def wait_status(lam, name, qualifier, status="READY", timeout=30.0) -> dict:
    """Polls GetProvisionedConcurrencyConfig until its Status is `status`."""
    deadline = time.monotonic() + timeout
    while True:
        got = lam.get_provisioned_concurrency_config(FunctionName=name, Qualifier=qualifier)
        if got["Status"] == status:
            return got
        assert time.monotonic() < deadline, f"never {status}: {got}"
        time.sleep(0.05)


def provisioned_containers(f: dict, name: str) -> list[dict]:
    """The fleet's containers of `name` kept for provisioned concurrency."""
    return [c for vm in f["ActivePool"] for c in vm["Containers"]
            if c["FunctionName"] == name and c["Provisioned"] is not None]


def invoke(lam, name, qualifier, event):
    r = lam.invoke(FunctionName=name, Qualifier=qualifier, LogType="Tail",
                   Payload=json.dumps(event).encode())
    body = json.loads(r["Payload"].read())
    log = base64.b64decode(r["LogResult"]).decode()
    return r, body, log


def error_of(excinfo) -> tuple[str, str]:
    err = excinfo.value.response["Error"]
    return err["Code"], err["Message"]


# ---- tests ----------------------------------------------------------------------------------


def test_provisioned_environments_are_ready_warm_and_released(server, admin, python_app_zip):
    lam = admin
    version = create_version(lam, "pc-warm", python_app_zip)
    put = lam.put_provisioned_concurrency_config(
        FunctionName="pc-warm", Qualifier=version, ProvisionedConcurrentExecutions=4)
    assert put["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert put["RequestedProvisionedConcurrentExecutions"] == 4
    assert put["Status"] in ("IN_PROGRESS", "READY"), put
    assert "LastModified" in put

    ready = wait_status(lam, "pc-warm", version)
    assert ready["RequestedProvisionedConcurrentExecutions"] == 4
    assert ready["AvailableProvisionedConcurrentExecutions"] == 4
    assert ready["AllocatedProvisionedConcurrentExecutions"] == 4
    assert "StatusReason" not in ready
    f = fleet(server)
    kept = provisioned_containers(f, "pc-warm")
    assert len(kept) == 4 and all(c["Provisioned"] == version for c in kept), f
    assert [p for p in f["Provisioned"] if p["FunctionName"] == "pc-warm"] == [{
        "AccountId": f["Provisioned"][0]["AccountId"], "FunctionName": "pc-warm",
        "Qualifier": version, "Requested": 4, "Ready": 4, "Creating": 0, "Status": "READY",
        "StatusReason": None}]

    # Four at once, each long enough to overlap the others: all warm, none initialized.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(
            lambda _: invoke(lam, "pc-warm", version, {"sleep_ms": 300}), range(4)))
    for r, body, log in runs:
        assert r["ResponseMetadata"]["HTTPHeaders"]["x-ember-start"] == "warm", log
        assert body == {"slept_ms": 300}
        assert "REPORT RequestId" in log and "Init Duration" not in log, log
    # Each ran in its own environment, the ones made ahead.
    instances = {invoke(lam, "pc-warm", version, {"instance": True})[1]["instance"]
                 for _ in range(8)}
    assert 1 <= len(instances) <= 4
    assert {c["ContainerId"] for c in provisioned_containers(fleet(server), "pc-warm")} == \
        {c["ContainerId"] for c in kept}

    listed = lam.list_provisioned_concurrency_configs(FunctionName="pc-warm")
    items = listed["ProvisionedConcurrencyConfigs"]
    assert [i["FunctionArn"].rsplit(":", 1)[1] for i in items] == [version]
    assert items[0]["FunctionArn"].startswith("arn:aws:lambda:")
    assert items[0]["Status"] == "READY"
    assert "NextMarker" not in listed

    deleted = lam.delete_provisioned_concurrency_config(FunctionName="pc-warm", Qualifier=version)
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    wait_fleet(server, lambda f: not provisioned_containers(f, "pc-warm")
               and not any(p["FunctionName"] == "pc-warm" for p in f["Provisioned"]),
               what="the provisioned environments to be released")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        lam.get_provisioned_concurrency_config(FunctionName="pc-warm", Qualifier=version)
    assert error_of(e)[0] == "ProvisionedConcurrencyConfigNotFoundException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert lam.list_provisioned_concurrency_configs(
        FunctionName="pc-warm")["ProvisionedConcurrencyConfigs"] == []


def test_an_environment_that_dies_is_re_created(server, admin, python_app_zip):
    lam = admin
    version = create_version(lam, "pc-die", python_app_zip)
    lam.put_provisioned_concurrency_config(
        FunctionName="pc-die", Qualifier=version, ProvisionedConcurrentExecutions=2)
    wait_status(lam, "pc-die", version)
    before = {c["ContainerId"] for c in provisioned_containers(fleet(server), "pc-die")}
    assert len(before) == 2

    # The runtime exits mid-invocation: that environment is gone, and another is made.
    r, body, log = invoke(lam, "pc-die", version, {"exit": 3})
    assert r["FunctionError"] == "Unhandled", body
    assert r["ResponseMetadata"]["HTTPHeaders"]["x-ember-start"] == "warm"
    f = wait_fleet(server, lambda f: len(provisioned_containers(f, "pc-die")) == 2
                   and {c["ContainerId"] for c in provisioned_containers(f, "pc-die")} != before,
                   timeout=30, what="the dead environment to be re-created")
    after = {c["ContainerId"] for c in provisioned_containers(f, "pc-die")}
    assert len(after & before) == 1, (before, after)
    assert wait_status(lam, "pc-die", version)["AvailableProvisionedConcurrentExecutions"] == 2
    r, _, log = invoke(lam, "pc-die", version, {})
    assert r["ResponseMetadata"]["HTTPHeaders"]["x-ember-start"] == "warm"
    assert "Init Duration" not in log, log

    # Deleting the function releases its environments.
    lam.delete_function(FunctionName="pc-die")
    wait_fleet(server, lambda f: not provisioned_containers(f, "pc-die"),
               what="the deleted function's environments to be released")


def test_lambdas_errors(server, admin, python_app_zip):
    lam = admin
    version = create_version(lam, "pc-errors", python_app_zip)

    def refused(qualifier, n, code, words):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            lam.put_provisioned_concurrency_config(
                FunctionName="pc-errors", Qualifier=qualifier, ProvisionedConcurrentExecutions=n)
        got, message = error_of(e)
        assert got == code, message
        assert words in message, message

    refused("$LATEST", 1, "InvalidParameterValueException",
            "cannot be applied to unpublished function versions")
    refused("7", 1, "ResourceNotFoundException", "pc-errors")
    # 1000 for the account by default, of which 100 stay unreserved.
    refused(version, 901, "InvalidParameterValueException",
            "UnreservedConcurrentExecution below its minimum value of [100]")
    lam.put_function_concurrency(FunctionName="pc-errors", ReservedConcurrentExecutions=2)
    refused(version, 3, "InvalidParameterValueException", "reservedConcurrentExecution")
    # Nothing was set by any of them.
    assert lam.list_provisioned_concurrency_configs(
        FunctionName="pc-errors")["ProvisionedConcurrencyConfigs"] == []
    for call in (lam.get_provisioned_concurrency_config, lam.delete_provisioned_concurrency_config):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call(FunctionName="pc-errors", Qualifier=version)
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(botocore.exceptions.ClientError) as e:
        lam.get_provisioned_concurrency_config(FunctionName="pc-errors", Qualifier="$LATEST")
    assert error_of(e)[0] == "InvalidParameterValueException"

    # An init that fails: FAILED, with the reason.
    lam.create_function(FunctionName="pc-bad", Runtime=PY, Role=ROLE,
                        Handler="bad_import.handler", Code={"ZipFile": python_app_zip})
    bad = lam.publish_version(FunctionName="pc-bad")["Version"]
    lam.put_provisioned_concurrency_config(
        FunctionName="pc-bad", Qualifier=bad, ProvisionedConcurrentExecutions=1)
    failed = wait_status(lam, "pc-bad", bad, status="FAILED")
    assert "Runtime.ImportModuleError" in failed["StatusReason"], failed
    assert failed["AvailableProvisionedConcurrentExecutions"] == 0
    lam.delete_provisioned_concurrency_config(FunctionName="pc-bad", Qualifier=bad)


def test_aws_cli_and_ember_cli(server, python_app_zip):
    lam = server.lambda_client()
    version = create_version(lam, "pc-cli", python_app_zip)
    rc, out, err = server.aws("lambda", "put-provisioned-concurrency-config",
                              "--function-name", "pc-cli", "--qualifier", version,
                              "--provisioned-concurrent-executions", "2")
    assert rc == 0, err
    assert out["RequestedProvisionedConcurrentExecutions"] == 2
    wait_status(lam, "pc-cli", version)
    rc, out, err = server.aws("lambda", "list-provisioned-concurrency-configs",
                              "--function-name", "pc-cli")
    assert rc == 0, err
    assert [c["Status"] for c in out["ProvisionedConcurrencyConfigs"]] == ["READY"]

    ember = ("--data-dir", str(server.data_dir), "--endpoint", server.endpoint)
    r = server.run_ember("fn", "provision", "pc-cli", version, *ember)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"pc-cli:{version}  2 requested, 2 ready  READY", r.stdout
    r = server.run_ember("fn", "provision", "pc-cli", version, "3", *ember)
    assert r.returncode == 0, r.stderr
    wait_status(lam, "pc-cli", version)
    r = server.run_ember("fleet", *ember)
    assert r.returncode == 0, r.stderr
    assert "PROVISIONED CONCURRENCY" in r.stdout and f"pc-cli:{version}" in r.stdout, r.stdout
    assert "3 / 3" in r.stdout, r.stdout
    r = server.run_ember("fn", "provision", "pc-cli", "$LATEST", "1", *ember)
    assert r.returncode != 0 and "unpublished" in r.stderr, (r.stdout, r.stderr)
    r = server.run_ember("fn", "provision", "pc-cli", version, "--delete", *ember)
    assert r.returncode == 0, r.stderr

    rc, out, err = server.aws("lambda", "get-provisioned-concurrency-config",
                              "--function-name", "pc-cli", "--qualifier", version)
    assert rc != 0 and "ProvisionedConcurrencyConfigNotFoundException" in err, (out, err)


def test_a_restarted_server_makes_them_again(server_factory, python_app_zip):
    first = server_factory()
    lam = first.lambda_client()
    version = create_version(lam, "pc-restart", python_app_zip)
    lam.put_provisioned_concurrency_config(
        FunctionName="pc-restart", Qualifier=version, ProvisionedConcurrentExecutions=2)
    wait_status(lam, "pc-restart", version)
    assert first.stop() == 0

    again = server_factory(first.data_dir)
    lam = again.lambda_client()
    ready = wait_status(lam, "pc-restart", version)
    assert ready["AvailableProvisionedConcurrentExecutions"] == 2
    r, _, log = invoke(lam, "pc-restart", version, {})
    assert r["ResponseMetadata"]["HTTPHeaders"]["x-ember-start"] == "warm"
    assert "Init Duration" not in log, log


def test_list_is_paginated_by_qualifier(server, admin, python_app_zip):
    lam = admin
    first = create_version(lam, "pc-list", python_app_zip)
    lam.update_function_configuration(FunctionName="pc-list", Description="second")
    second = lam.publish_version(FunctionName="pc-list")["Version"]
    assert second != first
    for version in (first, second):
        lam.put_provisioned_concurrency_config(
            FunctionName="pc-list", Qualifier=version, ProvisionedConcurrentExecutions=1)
    page = lam.list_provisioned_concurrency_configs(FunctionName="pc-list", MaxItems=1)
    assert [c["FunctionArn"].rsplit(":", 1)[1] for c in page["ProvisionedConcurrencyConfigs"]] \
        == [first]
    rest = lam.list_provisioned_concurrency_configs(
        FunctionName="pc-list", MaxItems=1, Marker=page["NextMarker"])
    assert [c["FunctionArn"].rsplit(":", 1)[1] for c in rest["ProvisionedConcurrencyConfigs"]] \
        == [second]
    assert "NextMarker" not in rest
    # Each version's own environments: both READY, then both released with the function.
    for version in (first, second):
        wait_status(lam, "pc-list", version)
    assert len(provisioned_containers(fleet(server), "pc-list")) == 2
    lam.delete_function(FunctionName="pc-list")
    wait_fleet(server, lambda f: not provisioned_containers(f, "pc-list"),
               what="the deleted function's environments to be released")


def test_an_alias_keeps_environments_of_the_version_it_names(server, admin, python_app_zip):
    lam = admin
    first = create_version(lam, "pc-alias", python_app_zip)
    lam.update_function_configuration(FunctionName="pc-alias", Description="second")
    second = lam.publish_version(FunctionName="pc-alias")["Version"]
    lam.create_alias(FunctionName="pc-alias", Name="live", FunctionVersion=first)
    lam.put_provisioned_concurrency_config(
        FunctionName="pc-alias", Qualifier="live", ProvisionedConcurrentExecutions=2)
    wait_status(lam, "pc-alias", "live")
    before = {c["ContainerId"] for c in provisioned_containers(fleet(server), "pc-alias")}
    assert len(before) == 2
    r, _, log = invoke(lam, "pc-alias", "live", {})
    assert r["ResponseMetadata"]["HTTPHeaders"]["x-ember-start"] == "warm"
    assert "Init Duration" not in log, log
    # The version itself is the same environments.
    r, _, _ = invoke(lam, "pc-alias", first, {})
    assert r["ResponseMetadata"]["HTTPHeaders"]["x-ember-start"] == "warm"

    # The alias moves: its environments are made again for the version it names now.
    lam.update_alias(FunctionName="pc-alias", Name="live", FunctionVersion=second)
    f = wait_fleet(server, lambda f: len(provisioned_containers(f, "pc-alias")) == 2 and not (
        {c["ContainerId"] for c in provisioned_containers(f, "pc-alias")} & before),
        timeout=30, what="the alias's environments to follow it")
    wait_status(lam, "pc-alias", "live")
    r, _, log = invoke(lam, "pc-alias", "live", {})
    assert r["ResponseMetadata"]["HTTPHeaders"]["x-ember-start"] == "warm"
    assert r["ExecutedVersion"] == second

    # Lambda's refusals: an alias that splits traffic, an alias of $LATEST.
    lam.create_alias(FunctionName="pc-alias", Name="canary", FunctionVersion=first,
                     RoutingConfig={"AdditionalVersionWeights": {second: 0.1}})
    lam.create_alias(FunctionName="pc-alias", Name="head", FunctionVersion="$LATEST")
    for alias, words in (("canary", "Alias with weights"), ("head", "unpublished")):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            lam.put_provisioned_concurrency_config(
                FunctionName="pc-alias", Qualifier=alias, ProvisionedConcurrentExecutions=1)
        code, message = error_of(e)
        assert code == "InvalidParameterValueException" and words in message, message

    # Deleting the alias deletes its config and releases its environments.
    lam.delete_alias(FunctionName="pc-alias", Name="live")
    wait_fleet(server, lambda f: not provisioned_containers(f, "pc-alias"),
               what="the deleted alias's environments to be released")
    assert lam.list_provisioned_concurrency_configs(
        FunctionName="pc-alias")["ProvisionedConcurrencyConfigs"] == []
