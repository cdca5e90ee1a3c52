"""Coverage of botocore's Lambda model: every operation in the installed botocore's
`lambda/2015-03-31` model is called on Ember through boto3 with a minimal valid request (its
required members, generated from the model, naming a function that exists), and must answer
either its proper output (botocore parses it; the required output members are present; every
member Ember sends is one the model has, at every depth; the model's status code) or, for an
operation Ember does not support, the clear not-supported error: `UnknownOperationException`
(404) with a message. Never a silent 2xx.

`SUPPORTED` is the one list of the operations Ember implements; exactly those must succeed, and
README.md's supported-operations table is generated from it (the README test prints the table to
paste when they differ). To support an operation, add it here: its README note, and, if the
generated request is not enough (a resource that must exist first, a value the server checks),
`params`, a function of the `Fixtures` that returns the members to set.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import botocore.exceptions
import botocore.session
import pytest

from ember_e2e import REGION, ROLE, handler_zip

pytestmark = pytest.mark.needs_root  # Invoke runs the function in a VM (conftest.py)

README = Path(__file__).resolve().parents[2] / "README.md"
TABLE_START = "<!-- supported-operations: generated from SUPPORTED in tests/e2e/test_api_coverage.py -->"
TABLE_END = "<!-- end of supported-operations -->"

NOT_SUPPORTED = ("UnknownOperationException", 404)


class Fixtures:
    """What a request may need: the function every operation names, and helpers that create
    more (each once)."""

    FUNCTION = "coverage"

    def __init__(self, lam, account_id: str):
        self.lam = lam
        self.account_id = account_id
        self.created: set[str] = set()
        self.made: dict = {}
        self.function = self.fresh(self.FUNCTION)

    def arn(self, name: str | None = None) -> str:
        return f"arn:aws:lambda:{REGION}:{self.account_id}:function:{name or self.function}"

    def create_params(self, name: str) -> dict:
        return dict(FunctionName=name, Runtime="python3.11", Role=ROLE, Handler="app.handler",
                    Code={"ZipFile": handler_zip(name)})

    def fresh(self, name: str) -> str:
        """A function of that name, created now (for an operation that consumes one)."""
        if name not in self.created:
            self.lam.create_function(**self.create_params(name))
            self.created.add(name)
        return name

    # Resources of the operations issue 16 adds, each made once on first use, for their entries
    # in SUPPORTED (e.g. `"GetAlias": Supported("…", lambda fx: {"Name": fx.alias()})`; an
    # operation that consumes its resource takes a fresh one: `fx.alias("coverage-doomed")`).

    def once(self, key, make):
        if key not in self.made:
            self.made[key] = make()
        return self.made[key]

    def version(self, function: str | None = None) -> str:
        """A published version of the function (`FunctionVersion`, `Qualifier`)."""
        function = function or self.function
        return self.once(("version", function), lambda: self.lam.publish_version(
            FunctionName=function)["Version"])

    def alias(self, name: str = "coverage-live", function: str | None = None) -> str:
        """An alias of the function, on its published version."""
        function = function or self.function
        return self.once(("alias", function, name), lambda: self.lam.create_alias(
            FunctionName=function, Name=name, FunctionVersion=self.version(function))["Name"])

    def layer(self, name: str = "coverage-layer") -> dict:
        """`{"LayerName", "VersionNumber"}` of a published layer version."""
        def make():
            r = self.lam.publish_layer_version(
                LayerName=name, Content={"ZipFile": handler_zip(f"layer {name}")},
                CompatibleRuntimes=["python3.11"])
            return {"LayerName": name, "VersionNumber": r["Version"],
                    "Arn": r["LayerVersionArn"]}
        return self.once(("layer", name), make)

    def layer_version(self, name: str = "coverage-layer") -> dict:
        """`{"LayerName", "VersionNumber"}` of a published layer version."""
        layer = self.layer(name)
        return {"LayerName": layer["LayerName"], "VersionNumber": layer["VersionNumber"]}

    def granted_layer_version(self) -> dict:
        """The fixture layer version, once its policy has a statement."""
        self.layer_permission()
        return self.layer_version()

    def layer_permission(self, statement: str = "coverage-layer-grant") -> str:
        """A statement of the layer's policy (`StatementId`)."""
        layer = self.layer()

        def make():
            self.lam.add_layer_version_permission(
                LayerName=layer["LayerName"], VersionNumber=layer["VersionNumber"],
                StatementId=statement, Action="lambda:GetLayerVersion", Principal="*")
            return statement
        return self.once(("layer-permission", statement), make)

    def permission(self, statement: str = "coverage-grant", function: str | None = None) -> str:
        """A statement of the function's resource policy (`StatementId`)."""
        function = function or self.function

        def make():
            self.lam.add_permission(FunctionName=function, StatementId=statement,
                                    Action="lambda:InvokeFunction", Principal="123456789012")
            return statement
        return self.once(("permission", function, statement), make)

    def event_invoke_config(self, function: str | None = None) -> str:
        """A function with an event invoke config (its name)."""
        function = function or self.function

        def make():
            self.lam.put_function_event_invoke_config(FunctionName=function,
                                                      MaximumRetryAttempts=1)
            return function
        return self.once(("event-invoke-config", function), make)

    def provisioned(self, function: str | None = None) -> dict:
        """`{"FunctionName", "Qualifier"}` of a version with provisioned concurrency."""
        function = function or self.function
        def make():
            qualifier = self.version(function)
            self.lam.put_provisioned_concurrency_config(
                FunctionName=function, Qualifier=qualifier, ProvisionedConcurrentExecutions=1)
            return {"FunctionName": function, "Qualifier": qualifier}
        return self.once(("provisioned", function), make)

    def function_url(self, function: str = "coverage-url") -> str:
        """A function with a URL (its name)."""
        function = self.fresh(function)

        def make():
            self.lam.create_function_url_config(FunctionName=function, AuthType="NONE")
            return function
        return self.once(("function-url", function), make)


@dataclass(frozen=True)
class Supported:
    """An operation Ember implements: README's note on it, and the members its request needs
    beyond the generated ones."""

    note: str
    params: Callable[[Fixtures], dict] | None = None


# The operations Ember implements, in the model's names. README's table is generated from this.
SUPPORTED: dict[str, Supported] = {
    # functions
    "CreateFunction": Supported(
        "Zip packages (`Code.ZipFile`), `Tags`, `SnapStart` (Python runtimes); members Ember "
        "lacks are refused by name",
        lambda fx: fx.create_params("coverage-created")),
    "GetFunction": Supported("with `Code.Location` (a presigned download URL), `Concurrency`, `Tags`"),
    "GetFunctionConfiguration": Supported(""),
    "ListFunctions": Supported("paginated (`Marker`, `MaxItems`)"),
    "UpdateFunctionCode": Supported(
        "`ZipFile`, `RevisionId`, `DryRun`",
        lambda fx: {"ZipFile": handler_zip("coverage-v2")}),
    "UpdateFunctionConfiguration": Supported(
        "`RevisionId`, `SnapStart`; members Ember lacks are refused by name"),
    "DeleteFunction": Supported(
        "its tags, logs and settings go with it",
        lambda fx: {"FunctionName": fx.fresh("coverage-doomed")}),
    # versions and aliases
    "PublishVersion": Supported(
        "`CodeSha256`, `RevisionId`, `Description`; nothing changed since the newest version "
        "answers that version"),
    "ListVersionsByFunction": Supported("`$LATEST` first; paginated"),
    "CreateAlias": Supported(
        "`RoutingConfig.AdditionalVersionWeights`: one more published version, weight 0–1",
        lambda fx: {"Name": "coverage-created", "FunctionVersion": fx.version()}),
    "GetAlias": Supported("", lambda fx: {"Name": fx.alias()}),
    "UpdateAlias": Supported("`RevisionId`", lambda fx: {"Name": fx.alias(),
                                                       "Description": "updated"}),
    "DeleteAlias": Supported("", lambda fx: {"Name": fx.alias("coverage-doomed")}),
    "ListAliases": Supported("filtered by `FunctionVersion`; paginated"),
    # concurrency
    "PutFunctionConcurrency": Supported(
        "enforced (429 past it; across all hosts on a shared PostgreSQL store); 10% of the "
        "account's concurrency (at most 100) stays unreserved",
        lambda fx: {"ReservedConcurrentExecutions": 5}),
    "GetFunctionConcurrency": Supported(""),
    "DeleteFunctionConcurrency": Supported(""),
    # provisioned concurrency
    "PutProvisionedConcurrencyConfig": Supported(
        "on a published version or an alias: N environments kept initialized, their invocations "
        "warm; the account's and the function's concurrency limits",
        lambda fx: {"Qualifier": fx.version(), "ProvisionedConcurrentExecutions": 1}),
    "GetProvisionedConcurrencyConfig": Supported(
        "`Status` `IN_PROGRESS`, `READY` or `FAILED` with `StatusReason`",
        lambda fx: fx.provisioned()),
    "ListProvisionedConcurrencyConfigs": Supported(
        "paginated", lambda fx: {"FunctionName": fx.provisioned()["FunctionName"]}),
    "DeleteProvisionedConcurrencyConfig": Supported(
        "releases the environments",
        lambda fx: fx.provisioned(fx.fresh("coverage-pc-doomed"))),
    # invocation
    "Invoke": Supported("`RequestResponse`, `Event` (durable queue, two retries), `DryRun`; `Tail` logs"),
    "InvokeAsync": Supported("deprecated; queued as an `Event` invocation (202)"),
    "InvokeWithResponseStream": Supported(
        "`RequestResponse`, `DryRun`; `PayloadChunk` events as the function writes them (custom "
        "runtimes, `lambda_runtime::streaming`; a Python function's response is one chunk), up to "
        "20 MiB; `InvokeComplete` with `ErrorCode`, `ErrorDetails`, `LogResult`"),
    # tags
    "TagResource": Supported(
        "on a function's unqualified ARN; at most 50 tags, AWS's key and value rules",
        lambda fx: {"Tags": {"coverage": "yes"}}),
    "UntagResource": Supported("", lambda fx: {"TagKeys": ["coverage"]}),
    "ListTags": Supported(""),
    # layers
    "PublishLayerVersion": Supported(
        "`Content.ZipFile`, `CompatibleRuntimes`, `CompatibleArchitectures`, `Description`, "
        "`LicenseInfo`; content from S3 is refused",
        lambda fx: {"LayerName": "coverage-published",
                    "Content": {"ZipFile": handler_zip("coverage layer")}}),
    "GetLayerVersion": Supported("`Content.Location` a presigned download URL",
                                 lambda fx: fx.layer_version()),
    "GetLayerVersionByArn": Supported("", lambda fx: {"Arn": fx.layer()["Arn"]}),
    "ListLayers": Supported("filtered by `CompatibleRuntime`, `CompatibleArchitecture`; paginated"),
    "ListLayerVersions": Supported("", lambda fx: {"LayerName": fx.layer()["LayerName"]}),
    "DeleteLayerVersion": Supported(
        "functions that use the version keep it",
        lambda fx: fx.layer_version("coverage-doomed-layer")),
    "AddLayerVersionPermission": Supported(
        "an account or `*`; organization grants are refused",
        lambda fx: {**fx.layer_version(), "StatementId": "coverage-added",
                    "Action": "lambda:GetLayerVersion", "Principal": "*"}),
    "GetLayerVersionPolicy": Supported("", lambda fx: fx.granted_layer_version()),
    "RemoveLayerVersionPermission": Supported(
        "", lambda fx: {**fx.layer_version(),
                        "StatementId": fx.layer_permission("coverage-layer-doomed")}),
    # event invoke config
    "PutFunctionEventInvokeConfig": Supported(
        "`MaximumRetryAttempts`, `MaximumEventAgeInSeconds`; destinations: Ember functions only",
        lambda fx: {"MaximumRetryAttempts": 1}),
    "UpdateFunctionEventInvokeConfig": Supported(
        "merges into the stored config", lambda fx: {
            "FunctionName": fx.event_invoke_config(), "MaximumEventAgeInSeconds": 600}),
    "GetFunctionEventInvokeConfig": Supported(
        "", lambda fx: {"FunctionName": fx.event_invoke_config()}),
    "ListFunctionEventInvokeConfigs": Supported(
        "paginated", lambda fx: {"FunctionName": fx.event_invoke_config()}),
    "DeleteFunctionEventInvokeConfig": Supported(
        "", lambda fx: {"FunctionName": fx.event_invoke_config(fx.fresh("coverage-eic-doomed"))}),
    # permissions
    "AddPermission": Supported(
        "to an account, `*` or a service principal; lets another account invoke (in the owner's "
        "VMs) or read the function; `Qualifier`, `RevisionId`",
        lambda fx: {"StatementId": "coverage-added", "Action": "lambda:InvokeFunction",
                    "Principal": "123456789012"}),
    "GetPolicy": Supported("Lambda's policy document", lambda fx: fx.permission() and {}),
    "RemovePermission": Supported(
        "`RevisionId`", lambda fx: {"StatementId": fx.permission("coverage-doomed-grant")}),
    # function URLs
    "CreateFunctionUrlConfig": Supported(
        "on a function or an alias: `AuthType` `NONE` (with the resource policy statement) or "
        "`AWS_IAM`, `Cors`, `InvokeMode` (`RESPONSE_STREAM` streamed as the function writes "
        "it); served by host and by path",
        lambda fx: {"FunctionName": fx.fresh("coverage-url-created")}),
    "GetFunctionUrlConfig": Supported("", lambda fx: {"FunctionName": fx.function_url()}),
    "UpdateFunctionUrlConfig": Supported(
        "", lambda fx: {"FunctionName": fx.function_url(), "AuthType": "AWS_IAM"}),
    "ListFunctionUrlConfigs": Supported(
        "paginated", lambda fx: {"FunctionName": fx.function_url()}),
    "DeleteFunctionUrlConfig": Supported(
        "", lambda fx: {"FunctionName": fx.function_url("coverage-url-doomed")}),
    # account
    "GetAccountSettings": Supported(
        "Ember's limits (code storage: what the data dir has free) and the account's usage"),
    # function settings Ember answers without a feature behind them
    "GetFunctionCodeSigningConfig": Supported(
        "answers that none is set (Ember verifies no signatures; setting one is refused)"),
    "GetRuntimeManagementConfig": Supported("`Auto`"),
    "PutRuntimeManagementConfig": Supported("`Auto` only; `Manual` and `FunctionUpdate` are refused"),
    "GetFunctionRecursionConfig": Supported("`Terminate` unless `Allow` was put"),
    "PutFunctionRecursionConfig": Supported(
        "kept; Ember's functions have no network, so no loop can form"),
}

# Statuses Lambda answers that its model does not say (the model's `responseCode` is 200).
STATUS = {"DeleteFunction": 204}


@pytest.fixture(scope="module")
def account(server):
    return server.make_account("coverage")


@pytest.fixture(scope="module")
def lam(server, account):
    return server.lambda_client(account)


def model():
    """The installed botocore's Lambda model (boto3's clients use the same)."""
    return botocore.session.get_session().get_service_model("lambda")


# ---- requests generated from the model --------------------------------------------------------


def minimal(shape, name: str, fx: Fixtures):
    """The smallest value of `shape` the model allows; a member named `FunctionName` or
    `Resource` names the fixture function."""
    if name == "FunctionName":
        return fx.function
    if name == "Resource":
        return fx.arn()
    kind = shape.type_name
    meta = shape.metadata
    if kind == "structure":
        return {m: minimal(shape.members[m], m, fx) for m in shape.required_members}
    if kind == "string":
        if shape.enum:
            return shape.enum[0]
        return "x" * max(meta.get("min", 1), 1)
    if kind in ("integer", "long"):
        return max(meta.get("min", 1), 1)
    if kind in ("float", "double"):
        return float(max(meta.get("min", 1), 1))
    if kind == "boolean":
        return False
    if kind == "list":
        return [minimal(shape.member, name, fx) for _ in range(meta.get("min", 0))]
    if kind == "map":
        return {}
    if kind == "blob":
        return b"{}"
    if kind == "timestamp":
        return datetime.datetime.now(datetime.timezone.utc)
    raise AssertionError(f"no minimal value for {name}: {kind}")


def request(operation, fx: Fixtures) -> dict:
    params = minimal(operation.input_shape, "", fx) if operation.input_shape else {}
    supported = SUPPORTED.get(operation.name)
    if supported and supported.params:
        params.update(supported.params(fx))
    return params


# ---- what an answer must be -------------------------------------------------------------------


def unknown_members(value, shape, where: str) -> list[str]:
    """The members of a JSON body that `shape` does not have, at any depth."""
    kind = shape.type_name
    found: list[str] = []
    if kind == "structure" and isinstance(value, dict):
        names = {m.serialization.get("name", n): m for n, m in shape.members.items()}
        for key, inner in value.items():
            if key not in names:
                found.append(f"{where}.{key}")
            else:
                found += unknown_members(inner, names[key], f"{where}.{key}")
    elif kind == "list" and isinstance(value, list):
        for i, inner in enumerate(value):
            found += unknown_members(inner, shape.member, f"{where}[{i}]")
    elif kind == "map" and isinstance(value, dict):
        for key, inner in value.items():
            found += unknown_members(inner, shape.value, f"{where}[{key!r}]")
    return found


def check_success(operation, parsed: dict, raw: dict) -> list[str]:
    problems = []
    expected = STATUS.get(operation.name, operation.http.get("responseCode", 200))
    if raw["status"] != expected:
        problems.append(f"answered {raw['status']}, the model says {expected}")
    shape = operation.output_shape
    if shape is None:
        return problems
    for member in shape.required_members:
        if member not in parsed:
            problems.append(f"required output member {member} is missing")
    if shape.serialization.get("payload") is None and raw["body"].strip():
        try:
            body = json.loads(raw["body"])
        except ValueError:
            return problems + [f"a body that is not JSON: {raw['body'][:200]!r}"]
        problems += [f"member {m} is not in the model" for m in unknown_members(body, shape, "")]
    return problems


def test_every_operation_answers_its_shape_or_a_clear_not_supported_error(lam, account, capsys):
    fx = Fixtures(lam, account["AccountId"])
    raw: dict = {}

    def capture(http_response, **_):
        raw["status"] = http_response.status_code
        raw["body"] = http_response.content

    lam.meta.events.register("after-call.lambda", capture)
    service = model()
    succeeded, refused, failures = [], [], []
    for name in service.operation_names:
        operation = service.operation_model(name)
        raw.clear()
        try:
            parsed = getattr(lam, botocore_method(name))(**request(operation, fx))
        except botocore.exceptions.ClientError as e:
            code = e.response["Error"]["Code"]
            status = e.response["ResponseMetadata"]["HTTPStatusCode"]
            message = e.response["Error"].get("Message", "")
            if name in SUPPORTED:
                failures.append(f"{name} (supported) failed: {code} ({status}) {message}")
            elif (code, status) != NOT_SUPPORTED or not message:
                failures.append(f"{name} answered {code} ({status}) {message!r}, not the "
                                f"not-supported error {NOT_SUPPORTED}")
            else:
                refused.append(name)
            continue
        if name not in SUPPORTED:
            failures.append(f"{name} is not in SUPPORTED but answered {raw.get('status')}: "
                            "add it, or make it refuse")
            continue
        problems = check_success(operation, parsed, raw)
        failures += [f"{name}: {p}" for p in problems]
        succeeded.append(name)
    with capsys.disabled():
        print(f"\nEmber supports {len(succeeded)} of {len(service.operation_names)} operations of "
              f"botocore's Lambda model; {len(refused)} answer UnknownOperationException")
    assert not failures, "\n".join(failures)
    assert sorted(succeeded) == sorted(SUPPORTED)


def botocore_method(operation: str) -> str:
    """boto3's method name of an operation (`GetFunctionURLConfig` -> `get_function_url_config`)."""
    from botocore import xform_name

    return xform_name(operation)


def test_supported_names_operations_of_the_model():
    assert set(SUPPORTED) - set(model().operation_names) == set()


# ---- README -----------------------------------------------------------------------------------


def readme_table() -> str:
    lines = ["| operation | notes |", "|---|---|"]
    for name, supported in SUPPORTED.items():
        lines.append(f"| `{name}` | {supported.note} |".replace(" |  |", " | |"))
    return "\n".join(lines)


def test_readme_lists_exactly_the_supported_operations():
    text = README.read_text()
    match = re.search(re.escape(TABLE_START) + r"\n(.*?)\n" + re.escape(TABLE_END), text, re.S)
    assert match, f"README.md has no table between {TABLE_START!r} and {TABLE_END!r}"
    expected = readme_table()
    assert match.group(1) == expected, (
        "README.md's supported-operations table differs from SUPPORTED; paste this between the "
        f"markers:\n{expected}")
