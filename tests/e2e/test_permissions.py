"""Function resource policies and cross-account invoke, end to end, with boto3 and the AWS CLI:
AddPermission, RemovePermission and GetPolicy, and what a grant lets another account do (invoke
by ARN, in the owner's VMs) and not do (anything else)."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from ember_e2e import REGION, ROLE, client_error, fleet

INVOKE = "lambda:InvokeFunction"


@pytest.fixture(scope="module")
def accounts(server):
    """Three accounts of one server: A owns functions, B and C are others."""
    keys = {x: server.make_account(f"perms-{x.lower()}") for x in "ABC"}
    return {x: (k, server.lambda_client(k)) for x, k in keys.items()}


def ids(accounts) -> dict[str, str]:
    return {x: k["AccountId"] for x, (k, _) in accounts.items()}


def create(lam, name, zip_bytes):
    return lam.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                               Handler="app.handler", Code={"ZipFile": zip_bytes}, Timeout=20)


def arn(account_id: str, name: str) -> str:
    return f"arn:aws:lambda:{REGION}:{account_id}:function:{name}"


def invoke(lam, function, event):
    r = lam.invoke(FunctionName=function, Payload=json.dumps(event).encode())
    assert "FunctionError" not in r, r["Payload"].read()
    return json.loads(r["Payload"].read())


def error_of(call) -> tuple[str, int, str]:
    """(error code, HTTP status, message) of a call that must fail."""
    with pytest.raises(ClientError) as excinfo:
        call()
    code, status, _ = client_error(excinfo)
    return code, status, excinfo.value.response["Error"]["Message"]


def not_found(call, function_arn: str):
    """The call fails exactly as for a function that does not exist."""
    assert error_of(call) == ("ResourceNotFoundException", 404,
                              f"Function not found: {function_arn}")


def hidden(lam, owner: str, name: str):
    """Every operation of `lam`'s account on the owner's function answers the 404 of a missing
    function, word for word the same as for a name the owner does not have."""
    target = arn(owner, name)
    not_found(lambda: lam.invoke(FunctionName=target, Payload=b"{}"), target)
    not_found(lambda: lam.get_function(FunctionName=target), target)
    not_found(lambda: lam.get_function_configuration(FunctionName=target), target)
    not_found(lambda: lam.update_function_configuration(FunctionName=target, Timeout=5), target)
    not_found(lambda: lam.delete_function(FunctionName=target), target)
    not_found(lambda: lam.get_policy(FunctionName=target), target)
    not_found(lambda: lam.add_permission(FunctionName=target, StatementId="x", Action=INVOKE,
                                         Principal="*"), target)
    missing = arn(owner, name + "-missing")
    not_found(lambda: lam.invoke(FunctionName=missing, Payload=b"{}"), missing)


def grant(lam, name, sid, principal, **extra):
    r = lam.add_permission(FunctionName=name, StatementId=sid, Action=extra.pop("Action", INVOKE),
                           Principal=principal, **extra)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 201, r
    return json.loads(r["Statement"])


def owned_vms(server, name: str) -> set[str]:
    """The accounts of the active VMs holding a container of function `name`."""
    return {vm["AccountId"] for vm in fleet(server)["ActivePool"]
            if any(c["FunctionName"] == name for c in vm["Containers"])}


@pytest.mark.needs_root
def test_a_grant_lets_another_account_invoke_in_the_owners_vm_and_nothing_else(
        server, accounts, python_app_zip):
    (_, a), (_, b), (_, c) = accounts["A"], accounts["B"], accounts["C"]
    acct = ids(accounts)
    create(a, "shared", python_app_zip)
    target = arn(acct["A"], "shared")

    hidden(b, acct["A"], "shared")
    not_found(lambda: b.invoke(FunctionName="shared", Payload=b"{}"), arn(acct["B"], "shared"))

    statement = grant(a, "shared", "let-b", acct["B"])
    assert statement == {
        "Sid": "let-b", "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{acct['B']}:root"},
        "Action": INVOKE, "Resource": target,
    }

    out = invoke(b, target, {"echo": "from b"})
    assert out["echo"] == "from b" and out["function"] == "shared", out
    # It ran in a VM of A's, and B has no VM at all: B never holds A's code.
    assert owned_vms(server, "shared") == {acct["A"]}
    assert acct["B"] not in {vm["AccountId"] for vm in fleet(server)["ActivePool"]}
    # The execution environment is the owner's function's.
    env = invoke(b, target, {"env": True})
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "shared", env
    # Partial ARNs name it too; asynchronous and dry-run invocations are invocations.
    assert invoke(b, f"{acct['A']}:function:shared", {"echo": 1})["echo"] == 1
    assert b.invoke(FunctionName=target, InvocationType="Event",
                    Payload=b"{}")["StatusCode"] == 202
    assert b.invoke(FunctionName=target, InvocationType="DryRun")["StatusCode"] == 204

    # Nothing but Invoke crosses accounts: every other operation is still a 404 for B, C sees
    # nothing, and B's own namespace has no such function.
    target_ops = [
        lambda: b.get_function(FunctionName=target),
        lambda: b.get_function_configuration(FunctionName=target),
        lambda: b.update_function_configuration(FunctionName=target, Timeout=5),
        lambda: b.delete_function(FunctionName=target),
        lambda: b.get_policy(FunctionName=target),
        lambda: b.remove_permission(FunctionName=target, StatementId="let-b"),
        lambda: b.put_function_concurrency(FunctionName=target,
                                           ReservedConcurrentExecutions=1),
    ]
    for op in target_ops:
        not_found(op, target)
    hidden(c, acct["A"], "shared")
    not_found(lambda: b.invoke(FunctionName="shared", Payload=b"{}"), arn(acct["B"], "shared"))
    assert a.get_function(FunctionName="shared")["Configuration"]["Timeout"] == 20

    # It counts against the owner's concurrency: with A's function reserved to 0, B is throttled.
    a.put_function_concurrency(FunctionName="shared", ReservedConcurrentExecutions=0)
    code, status, _ = error_of(lambda: b.invoke(FunctionName=target, Payload=b"{}"))
    assert (code, status) == ("TooManyRequestsException", 429)
    a.delete_function_concurrency(FunctionName="shared")
    assert invoke(b, target, {"echo": 2})["echo"] == 2

    # Revoked: the same 404 as before the grant.
    a.remove_permission(FunctionName="shared", StatementId="let-b")
    hidden(b, acct["A"], "shared")
    assert owned_vms(server, "shared") == {acct["A"]}


@pytest.mark.needs_root
def test_source_account_and_principal_forms(accounts, python_app_zip):
    (_, a), (_, b), (_, c) = accounts["A"], accounts["B"], accounts["C"]
    acct = ids(accounts)
    create(a, "conditioned", python_app_zip)
    target = arn(acct["A"], "conditioned")

    # Anyone, on condition that the call comes from account B.
    statement = grant(a, "conditioned", "only-b", "*", SourceAccount=acct["B"])
    assert statement["Principal"] == "*"
    assert statement["Condition"] == {"StringEquals": {"AWS:SourceAccount": acct["B"]}}
    assert invoke(b, target, {"echo": "b"})["echo"] == "b"
    hidden(c, acct["A"], "conditioned")

    # A SourceArn condition never holds for a direct call (it comes from no resource), nor does
    # a service principal name an account.
    a.remove_permission(FunctionName="conditioned", StatementId="only-b")
    grant(a, "conditioned", "bucket", acct["C"], SourceArn="arn:aws:s3:::bucket")
    grant(a, "conditioned", "s3", "s3.amazonaws.com")
    hidden(c, acct["A"], "conditioned")

    # C's root ARN is C; and lambda:* covers Invoke.
    grant(a, "conditioned", "c-root", f"arn:aws:iam::{acct['C']}:root", Action="lambda:*")
    assert invoke(c, target, {"echo": "c"})["echo"] == "c"
    hidden(b, acct["A"], "conditioned")


def test_get_function_can_be_granted_alone(accounts, python_app_zip):
    (_, a), (_, b) = accounts["A"], accounts["B"]
    acct = ids(accounts)
    create(a, "readable", python_app_zip)
    target = arn(acct["A"], "readable")
    a.tag_resource(Resource=target, Tags={"team": "a"})
    grant(a, "readable", "read", acct["B"], Action="lambda:GetFunction")
    got = b.get_function(FunctionName=target)
    assert got["Configuration"]["FunctionArn"] == target
    assert got["Configuration"]["FunctionName"] == "readable"
    # Tags only to callers allowed lambda:ListTags, which stays the owner's.
    assert "Tags" not in got and a.get_function(FunctionName="readable")["Tags"] == {"team": "a"}
    # GetFunctionConfiguration and Invoke have actions of their own.
    not_found(lambda: b.get_function_configuration(FunctionName=target), target)
    not_found(lambda: b.invoke(FunctionName=target, Payload=b"{}"), target)
    grant(a, "readable", "config", acct["B"], Action="lambda:GetFunctionConfiguration")
    assert b.get_function_configuration(FunctionName=target)["FunctionArn"] == target
    not_found(lambda: b.update_function_configuration(FunctionName=target, Timeout=5), target)


def test_policy_document_revisions_and_refusals(accounts, python_app_zip):
    (_, a) = accounts["A"]
    acct = ids(accounts)
    create(a, "policied", python_app_zip)
    target = arn(acct["A"], "policied")

    code, status, message = error_of(lambda: a.get_policy(FunctionName="policied"))
    assert (code, status) == ("ResourceNotFoundException", 404), message
    assert error_of(lambda: a.add_permission(
        FunctionName="policied", StatementId="s", Action=INVOKE, Principal=acct["B"],
        RevisionId="00000000-0000-0000-0000-000000000000"))[:2] == (
        "PreconditionFailedException", 412)

    grant(a, "policied", "first", acct["B"])
    first = a.get_policy(FunctionName="policied")
    grant(a, "policied", "second", "s3.amazonaws.com", SourceArn="arn:aws:s3:::bucket",
          SourceAccount=acct["A"], RevisionId=first["RevisionId"])
    second = a.get_policy(FunctionName="policied")
    assert second["RevisionId"] != first["RevisionId"]
    assert json.loads(second["Policy"]) == {
        "Version": "2012-10-17",
        "Id": "default",
        "Statement": [
            {"Sid": "first", "Effect": "Allow",
             "Principal": {"AWS": f"arn:aws:iam::{acct['B']}:root"},
             "Action": INVOKE, "Resource": target},
            {"Sid": "second", "Effect": "Allow", "Principal": {"Service": "s3.amazonaws.com"},
             "Action": INVOKE, "Resource": target,
             "Condition": {"StringEquals": {"AWS:SourceAccount": acct["A"]},
                           "ArnLike": {"AWS:SourceArn": "arn:aws:s3:::bucket"}}},
        ],
    }

    # Refused, and nothing changes: a duplicate StatementId, a stale RevisionId, bad members,
    # $LATEST, a qualifier that does not exist.
    refusals = [
        (lambda: a.add_permission(FunctionName="policied", StatementId="first", Action=INVOKE,
                                  Principal=acct["C"]), "ResourceConflictException", 409),
        (lambda: a.add_permission(FunctionName="policied", StatementId="third", Action=INVOKE,
                                  Principal=acct["C"], RevisionId=first["RevisionId"]),
         "PreconditionFailedException", 412),
        (lambda: a.remove_permission(FunctionName="policied", StatementId="first",
                                     RevisionId=first["RevisionId"]),
         "PreconditionFailedException", 412),
        (lambda: a.remove_permission(FunctionName="policied", StatementId="nope"),
         "ResourceNotFoundException", 404),
        (lambda: a.add_permission(FunctionName="policied", StatementId="third",
                                  Action="lambda:Frobnicate", Principal=acct["C"]),
         "InvalidParameterValueException", 400),
        (lambda: a.add_permission(FunctionName="policied", StatementId="third", Action=INVOKE,
                                  Principal="somebody"),
         "InvalidParameterValueException", 400),
        (lambda: a.add_permission(FunctionName="policied", StatementId="third", Action=INVOKE,
                                  Principal=acct["C"], Qualifier="$LATEST"),
         "InvalidParameterValueException", 400),
        (lambda: a.add_permission(FunctionName="policied", StatementId="third", Action=INVOKE,
                                  Principal=acct["C"], Qualifier="no-such-alias"),
         "ResourceNotFoundException", 404),
        (lambda: a.add_permission(FunctionName="nothing-here", StatementId="third",
                                  Action=INVOKE, Principal=acct["C"]),
         "ResourceNotFoundException", 404),
    ]
    for call, code, status in refusals:
        assert error_of(call)[:2] == (code, status)
    assert a.get_policy(FunctionName="policied")["Policy"] == second["Policy"]
    assert a.get_policy(FunctionName="policied")["RevisionId"] == second["RevisionId"]

    # $LATEST shares the unqualified function's policy.
    assert a.get_policy(FunctionName="policied", Qualifier="$LATEST")["Policy"] == second["Policy"]

    a.remove_permission(FunctionName="policied", StatementId="first",
                        RevisionId=second["RevisionId"])
    left = json.loads(a.get_policy(FunctionName="policied")["Policy"])
    assert [s["Sid"] for s in left["Statement"]] == ["second"]
    a.remove_permission(FunctionName="policied", StatementId="second")
    assert error_of(lambda: a.get_policy(FunctionName="policied"))[:2] == (
        "ResourceNotFoundException", 404)

    # A policy goes with its function.
    grant(a, "policied", "again", acct["B"])
    a.delete_function(FunctionName="policied")
    create(a, "policied", python_app_zip)
    assert error_of(lambda: a.get_policy(FunctionName="policied"))[:2] == (
        "ResourceNotFoundException", 404)


@pytest.mark.needs_root
def test_the_aws_cli_grants_invokes_and_revokes(server, accounts, python_app_zip, tmp_path):
    (a_keys, a), (b_keys, _) = accounts["A"], accounts["B"]
    acct = ids(accounts)
    create(a, "cli-shared", python_app_zip)
    target = arn(acct["A"], "cli-shared")

    rc, out, err = server.aws("lambda", "add-permission", "--function-name", "cli-shared",
                              "--statement-id", "cli-b", "--action", INVOKE,
                              "--principal", acct["B"], keys=a_keys)
    assert rc == 0, err
    assert json.loads(out["Statement"])["Principal"] == {"AWS": f"arn:aws:iam::{acct['B']}:root"}
    rc, out, err = server.aws("lambda", "get-policy", "--function-name", "cli-shared",
                              keys=a_keys)
    assert rc == 0, err
    assert [s["Sid"] for s in json.loads(out["Policy"])["Statement"]] == ["cli-b"]

    payload = tmp_path / "in.json"
    payload.write_text(json.dumps({"echo": "via cli"}))
    answer = tmp_path / "out.json"
    rc, out, err = server.aws("lambda", "invoke", "--function-name", target,
                              "--payload", f"fileb://{payload}", str(answer), keys=b_keys)
    assert rc == 0, err
    assert out["StatusCode"] == 200 and "FunctionError" not in out, out
    assert json.loads(answer.read_text())["echo"] == "via cli"

    rc, out, err = server.aws("lambda", "remove-permission", "--function-name", "cli-shared",
                              "--statement-id", "cli-b", keys=a_keys)
    assert rc == 0, err
    rc, out, err = server.aws("lambda", "invoke", "--function-name", target,
                              "--payload", f"fileb://{payload}", str(answer), keys=b_keys)
    assert rc != 0 and "ResourceNotFoundException" in err, (rc, out, err)


def test_the_ember_cli_grants_shows_and_revokes(server, accounts, python_app_zip):
    admin = server.lambda_client(server.admin_keys())
    (_, b) = accounts["B"]
    acct = ids(accounts)
    owner = admin.create_function(FunctionName="cli-granted", Runtime="python3.11", Role=ROLE,
                                  Handler="app.handler", Code={"ZipFile": python_app_zip})
    target = owner["FunctionArn"]

    def ember(*args: str):
        return server.run_ember("fn", *args, "--endpoint", server.endpoint,
                                "--data-dir", str(server.data_dir))

    not_found(lambda: b.invoke(FunctionName=target, InvocationType="DryRun"), target)
    r = ember("grant", "cli-granted", "--account", acct["B"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (f"Granted lambda:InvokeFunction on {target} to account "
                                f"{acct['B']} (statement account-{acct['B']})"), r.stdout
    assert b.invoke(FunctionName=target, InvocationType="DryRun")["StatusCode"] == 204

    r = ember("grant", "cli-granted", "--account", "*", "--action", "lambda:GetFunction",
              "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["Principal"] == "*"
    r = ember("policy", "cli-granted")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("revision ") and lines[1].split()[:3] == [
        "STATEMENT", "ACTION", "PRINCIPAL"], r.stdout
    assert [line.split()[:2] for line in lines[2:]] == [
        [f"account-{acct['B']}", INVOKE], ["anyone", "lambda:GetFunction"]], r.stdout
    r = ember("policy", "cli-granted", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {k: v for k, v in admin.get_policy(
        FunctionName="cli-granted").items() if k != "ResponseMetadata"}

    r = ember("grant", "cli-granted", "--account", acct["B"])
    assert r.returncode != 0 and "ResourceConflictException" in r.stderr, r.stderr
    r = ember("revoke", "cli-granted", f"account-{acct['B']}")
    assert r.returncode == 0, r.stderr
    not_found(lambda: b.invoke(FunctionName=target, InvocationType="DryRun"), target)
    r = ember("revoke", "cli-granted", f"account-{acct['B']}")
    assert r.returncode != 0 and "ResourceNotFoundException" in r.stderr, r.stderr


@pytest.mark.needs_root
def test_a_grant_applies_to_the_qualifier_it_is_on(accounts, python_app_zip):
    (_, a), (_, b) = accounts["A"], accounts["B"]
    acct = ids(accounts)
    create(a, "aliased", python_app_zip)
    target = arn(acct["A"], "aliased")
    v1 = a.publish_version(FunctionName="aliased")["Version"]
    a.create_alias(FunctionName="aliased", Name="live", FunctionVersion=v1)

    statement = grant(a, "aliased", "b-live", acct["B"], Qualifier="live")
    assert statement["Resource"] == f"{target}:live"
    policy = json.loads(a.get_policy(FunctionName="aliased", Qualifier="live")["Policy"])
    assert [s["Resource"] for s in policy["Statement"]] == [f"{target}:live"]
    assert error_of(lambda: a.get_policy(FunctionName="aliased"))[:2] == (
        "ResourceNotFoundException", 404)

    # Through the alias (in the ARN or as Qualifier), and only through it.
    r = b.invoke(FunctionName=f"{target}:live", Payload=json.dumps({"echo": 1}).encode())
    assert json.loads(r["Payload"].read())["echo"] == 1 and r["ExecutedVersion"] == v1, r
    r = b.invoke(FunctionName=target, Qualifier="live", Payload=b"{}")
    assert r["StatusCode"] == 200 and r["ExecutedVersion"] == v1
    for other in [target, f"{target}:{v1}", f"{target}:$LATEST"]:
        not_found(lambda: b.invoke(FunctionName=other, Payload=b"{}"), target)

    # A grant on the version covers the version; one on the function, unqualified and $LATEST.
    grant(a, "aliased", "b-v1", acct["B"], Qualifier=v1)
    assert b.invoke(FunctionName=f"{target}:{v1}", Payload=b"{}")["ExecutedVersion"] == v1
    not_found(lambda: b.invoke(FunctionName=target, Payload=b"{}"), target)
    grant(a, "aliased", "b-latest", acct["B"])
    for latest in [target, f"{target}:$LATEST"]:
        assert b.invoke(FunctionName=latest, Payload=b"{}")["ExecutedVersion"] == "$LATEST"

    # An alias deleted and made again starts without the old one's grants.
    a.delete_alias(FunctionName="aliased", Name="live")
    a.create_alias(FunctionName="aliased", Name="live", FunctionVersion=v1)
    not_found(lambda: b.invoke(FunctionName=f"{target}:live", Payload=b"{}"), target)
