"""Event invoke config and destinations, end to end: PutFunctionEventInvokeConfig and its
siblings through boto3, the AWS CLI, the AWS SDK for JavaScript v3 and `ember fn event-config`,
and the Event queue honouring them: a failing function with MaximumRetryAttempts 0 sends
Lambda's invocation record to its OnFailure function after one attempt, a succeeding one to
OnSuccess, and an event that cannot run before its MaximumEventAgeInSeconds to OnFailure as
EventAgeExceeded. The destination function prints the record it receives; the test reads it
from the function's log."""

from __future__ import annotations

import datetime
import json
import time

import botocore.exceptions
import pytest

from ember_e2e import ROLE, client_error, make_zip

PY = "python3.11"

# A destination: prints the record it is invoked with on one line, after a marker.
RECORDER = make_zip({
    "recorder.py": (
        "import json\n"
        "def handler(event, context):\n"
        "    print('RECORD ' + json.dumps(event))\n"
        "    return {'recorded': True}\n"
    ),
})


@pytest.fixture(scope="module")
def server(module_server_factory):
    # Quick retries, so that a test of retries takes seconds.
    return module_server_factory(None, "--event-retry-delay", "0.5")


@pytest.fixture(scope="module")
def lam(server):
    return server.lambda_client(server.admin_keys())


def create(lam, name, zip_bytes, handler="app.handler"):
    return lam.create_function(FunctionName=name, Runtime=PY, Role=ROLE, Handler=handler,
                               Code={"ZipFile": zip_bytes}, Timeout=10)


def ember_cli(server, *args):
    return server.run_ember(*args, "--endpoint", server.endpoint, "--data-dir", str(server.data_dir))


def logs(server, name):
    r = ember_cli(server, "logs", name, "--json", "--limit", "1000")
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def records(server, name):
    """The records the recorder `name` received, oldest first."""
    found = []
    for event in logs(server, name):
        for line in event["Message"].splitlines():
            if "RECORD " in line:
                found.append(json.loads(line.split("RECORD ", 1)[1]))
    return found


def wait_records(server, name, n=1, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        got = records(server, name)
        if len(got) >= n:
            return got
        assert time.monotonic() < deadline, f"{name} received {got}, not {n} records"
        time.sleep(0.3)


def fields(config):
    return {k: v for k, v in config.items() if k != "ResponseMetadata"}


@pytest.fixture(scope="module")
def recorder(lam):
    create(lam, "recorder", RECORDER, handler="recorder.handler")
    return lam.get_function_configuration(FunctionName="recorder")["FunctionArn"]


# ---- the operations -----------------------------------------------------------------------------


def test_put_get_update_list_delete(lam, python_app_zip, recorder):
    create(lam, "ops", python_app_zip)
    arn = lam.get_function_configuration(FunctionName="ops")["FunctionArn"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        lam.get_function_event_invoke_config(FunctionName="ops")
    assert client_error(e)[:2] == ("ResourceNotFoundException", 404)
    assert "doesn't have an EventInvokeConfig" in e.value.response["Error"]["Message"]

    before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=5)
    put = fields(lam.put_function_event_invoke_config(
        FunctionName="ops", MaximumRetryAttempts=1,
        DestinationConfig={"OnFailure": {"Destination": recorder}}))
    # LastModified is a timestamp in this shape: botocore parses it into a datetime.
    assert isinstance(put["LastModified"], datetime.datetime)
    assert before <= put["LastModified"] <= before + datetime.timedelta(seconds=65)
    assert put == {
        "LastModified": put["LastModified"],
        "FunctionArn": f"{arn}:$LATEST",
        "MaximumRetryAttempts": 1,
        "DestinationConfig": {"OnSuccess": {}, "OnFailure": {"Destination": recorder}},
    }
    assert fields(lam.get_function_event_invoke_config(FunctionName="ops")) == put
    # A qualifier of $LATEST is the same config.
    assert fields(lam.get_function_event_invoke_config(FunctionName="ops", Qualifier="$LATEST")) == put

    # Update merges: what it names changes, the rest stays.
    updated = fields(lam.update_function_event_invoke_config(FunctionName="ops",
                                                             MaximumEventAgeInSeconds=3600))
    assert updated["MaximumRetryAttempts"] == 1
    assert updated["MaximumEventAgeInSeconds"] == 3600
    assert updated["DestinationConfig"]["OnFailure"] == {"Destination": recorder}
    # Put replaces: what it does not name is unset.
    replaced = fields(lam.put_function_event_invoke_config(FunctionName="ops", MaximumRetryAttempts=0))
    assert "MaximumEventAgeInSeconds" not in replaced
    assert replaced["DestinationConfig"] == {"OnSuccess": {}, "OnFailure": {}}

    listed = lam.list_function_event_invoke_configs(FunctionName="ops")
    assert [fields(c) for c in listed["FunctionEventInvokeConfigs"]] == [replaced]
    assert "NextMarker" not in listed

    lam.delete_function_event_invoke_config(FunctionName="ops")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        lam.delete_function_event_invoke_config(FunctionName="ops")
    assert client_error(e)[:2] == ("ResourceNotFoundException", 404)
    assert lam.list_function_event_invoke_configs(FunctionName="ops")["FunctionEventInvokeConfigs"] == []
    with pytest.raises(botocore.exceptions.ClientError) as e:
        lam.update_function_event_invoke_config(FunctionName="ops", MaximumRetryAttempts=1)
    assert client_error(e)[:2] == ("ResourceNotFoundException", 404)


def test_bad_input_is_refused_and_changes_nothing(server, lam, python_app_zip, recorder):
    create(lam, "bad", python_app_zip)
    lam.put_function_event_invoke_config(FunctionName="bad", MaximumRetryAttempts=2)
    loose = server.lambda_client(server.admin_keys(), validate=False)
    account = recorder.split(":")[4]
    for kwargs, says in [
        ({"MaximumRetryAttempts": 3}, "maximumRetryAttempts"),
        ({"MaximumEventAgeInSeconds": 59}, "maximumEventAgeInSeconds"),
        ({"MaximumEventAgeInSeconds": 21601}, "maximumEventAgeInSeconds"),
        ({}, "at least one of error handling or destination setting"),
        ({"DestinationConfig": {"OnFailure": {
            "Destination": f"arn:aws:sqs:us-east-1:{account}:dlq"}}}, "does not support Amazon SQS"),
        ({"DestinationConfig": {"OnSuccess": {
            "Destination": f"arn:aws:sns:us-east-1:{account}:t"}}}, "does not support Amazon SNS"),
        ({"DestinationConfig": {"OnSuccess": {
            "Destination": f"arn:aws:events:us-east-1:{account}:event-bus/b"}}},
         "does not support Amazon EventBridge"),
        ({"DestinationConfig": {"OnFailure": {"Destination": "arn:aws:s3:::bucket"}}},
         "does not support Amazon S3"),
        ({"DestinationConfig": {"OnFailure": {
            "Destination": f"arn:aws:lambda:us-east-1:{account}:function:nope"}}}, "no such function"),
        ({"DestinationConfig": {"OnFailure": {
            "Destination": "arn:aws:lambda:us-east-1:999999999999:function:recorder"}}},
         "same account"),
        ({"DestinationConfig": {"OnFailure": {
            "Destination": f"arn:aws:lambda:us-east-1:{account}:function:bad"}}},
         "destination for itself"),
    ]:
        for op in (loose.put_function_event_invoke_config, loose.update_function_event_invoke_config):
            with pytest.raises(botocore.exceptions.ClientError) as e:
                op(FunctionName="bad", **kwargs)
            assert client_error(e)[:2] == ("InvalidParameterValueException", 400), kwargs
            assert says in e.value.response["Error"]["Message"], (kwargs, e.value.response)
    config = lam.get_function_event_invoke_config(FunctionName="bad")
    assert config["MaximumRetryAttempts"] == 2 and "MaximumEventAgeInSeconds" not in config
    # A function that does not exist, and a qualifier it does not have, are 404s.
    for kwargs in ({"FunctionName": "nope"}, {"FunctionName": "bad", "Qualifier": "nope"}):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            lam.put_function_event_invoke_config(MaximumRetryAttempts=0, **kwargs)
        assert client_error(e)[:2] == ("ResourceNotFoundException", 404), kwargs


def test_a_deleted_function_takes_its_config(lam, python_app_zip):
    create(lam, "gone", python_app_zip)
    lam.put_function_event_invoke_config(FunctionName="gone", MaximumRetryAttempts=0)
    lam.delete_function(FunctionName="gone")
    create(lam, "gone", python_app_zip)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        lam.get_function_event_invoke_config(FunctionName="gone")
    assert client_error(e)[:2] == ("ResourceNotFoundException", 404)


def test_aws_cli(server, lam, python_app_zip, recorder):
    create(lam, "cli-fn", python_app_zip)
    rc, out, err = server.aws(
        "lambda", "put-function-event-invoke-config", "--function-name", "cli-fn",
        "--maximum-retry-attempts", "0", "--maximum-event-age-in-seconds", "120",
        "--destination-config", json.dumps({"OnSuccess": {"Destination": recorder}}))
    assert rc == 0, err
    assert out["MaximumRetryAttempts"] == 0 and out["MaximumEventAgeInSeconds"] == 120
    assert out["DestinationConfig"]["OnSuccess"] == {"Destination": recorder}
    assert out["FunctionArn"].endswith(":function:cli-fn:$LATEST")
    rc, out, err = server.aws("lambda", "list-function-event-invoke-configs", "--function-name", "cli-fn")
    assert rc == 0, err
    assert [c["MaximumEventAgeInSeconds"] for c in out["FunctionEventInvokeConfigs"]] == [120]
    rc, out, err = server.aws("lambda", "put-function-event-invoke-config", "--function-name",
                              "cli-fn", "--maximum-retry-attempts", "5")
    assert rc != 0 and "maximumRetryAttempts" in err + str(out), (out, err)
    rc, out, err = server.aws("lambda", "delete-function-event-invoke-config", "--function-name", "cli-fn")
    assert rc == 0, err
    rc, out, err = server.aws("lambda", "get-function-event-invoke-config", "--function-name", "cli-fn")
    assert rc != 0 and "ResourceNotFoundException" in err, err


def test_ember_cli(server, lam, python_app_zip, recorder):
    create(lam, "cli-ember", python_app_zip)
    r = ember_cli(server, "fn", "event-config", "cli-ember", "--max-retries", "1",
                  "--on-failure", "recorder")
    assert r.returncode == 0, r.stderr
    assert "max retries      1" in r.stdout and recorder in r.stdout, r.stdout
    # Setting one more thing keeps the rest.
    r = ember_cli(server, "fn", "event-config", "cli-ember", "--max-age", "600", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["MaximumRetryAttempts"] == 1 and doc["MaximumEventAgeInSeconds"] == 600
    assert doc["DestinationConfig"]["OnFailure"] == {"Destination": recorder}
    r = ember_cli(server, "fn", "event-config", "cli-ember", "--on-failure", "")
    assert r.returncode == 0, r.stderr
    assert "on failure       none" in r.stdout, r.stdout
    r = ember_cli(server, "fn", "event-config", "cli-ember", "--max-retries", "3")
    assert r.returncode != 0 and "maximumRetryAttempts" in r.stderr, r.stderr
    r = ember_cli(server, "fn", "event-config", "cli-ember", "--delete")
    assert r.returncode == 0, r.stderr
    r = ember_cli(server, "fn", "event-config", "cli-ember")
    assert r.returncode != 0 and "doesn't have an EventInvokeConfig" in r.stderr, r.stderr


# ---- the queue honours them -----------------------------------------------------------------


def test_a_failing_event_goes_to_on_failure_after_one_attempt(server, lam, python_app_zip, recorder):
    create(lam, "fails", python_app_zip)
    arn = lam.get_function_configuration(FunctionName="fails")["FunctionArn"]
    lam.put_function_event_invoke_config(FunctionName="fails", MaximumRetryAttempts=0,
                                         DestinationConfig={"OnFailure": {"Destination": recorder}})
    payload = {"fail": "boom", "order": 17}
    r = lam.invoke(FunctionName="fails", InvocationType="Event", Payload=json.dumps(payload).encode())
    assert r["StatusCode"] == 202
    request_id = r["ResponseMetadata"]["RequestId"]

    mine = lambda: [x for x in records(server, "recorder")
                    if x["requestContext"]["requestId"] == request_id]
    deadline = time.monotonic() + 60
    while not mine():
        assert time.monotonic() < deadline, records(server, "recorder")
        time.sleep(0.3)
    (record,) = mine()
    assert record["version"] == "1.0"
    assert record["requestContext"] == {
        "requestId": request_id,
        "functionArn": f"{arn}:$LATEST",
        "condition": "RetriesExhausted",
        "approximateInvokeCount": 1,
    }
    assert record["requestPayload"] == payload
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST",
                                         "functionError": "Unhandled"}
    assert record["responsePayload"]["errorType"] == "HelloFailure"
    assert record["responsePayload"]["errorMessage"] == "boom"
    datetime.datetime.strptime(record["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
    # One attempt only: no retry comes (the server's retry delay is 0.5 s).
    time.sleep(2)
    attempts = [e for e in logs(server, "fails") if e["RequestId"] == request_id]
    assert len(attempts) == 1, attempts
    assert len(mine()) == 1


def test_a_succeeding_event_goes_to_on_success(server, lam, python_app_zip, recorder):
    create(lam, "succeeds", python_app_zip)
    lam.put_function_event_invoke_config(FunctionName="succeeds",
                                         DestinationConfig={"OnSuccess": {"Destination": recorder}})
    r = lam.invoke(FunctionName="succeeds", InvocationType="Event",
                   Payload=json.dumps({"echo": "hi"}).encode())
    request_id = r["ResponseMetadata"]["RequestId"]
    deadline = time.monotonic() + 60
    while True:
        mine = [x for x in records(server, "recorder") if x["requestContext"]["requestId"] == request_id]
        if mine:
            break
        assert time.monotonic() < deadline, records(server, "recorder")
        time.sleep(0.3)
    (record,) = mine
    assert record["requestContext"]["condition"] == "Success"
    assert record["requestContext"]["approximateInvokeCount"] == 1
    assert record["requestPayload"] == {"echo": "hi"}
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}
    assert record["responsePayload"]["echo"] == "hi"
    assert record["responsePayload"]["function"] == "succeeds"


def test_an_event_that_cannot_run_before_its_maximum_age_goes_to_on_failure(
        server, lam, python_app_zip, recorder):
    """The smallest maximum age is 60 s: this test waits for it. Reserved concurrency 0 keeps
    every try of the event from starting (a throttle, which is not an attempt)."""
    create(lam, "never-runs", python_app_zip)
    lam.put_function_concurrency(FunctionName="never-runs", ReservedConcurrentExecutions=0)
    lam.put_function_event_invoke_config(FunctionName="never-runs", MaximumEventAgeInSeconds=60,
                                         DestinationConfig={"OnFailure": {"Destination": recorder}})
    sent = time.monotonic()
    r = lam.invoke(FunctionName="never-runs", InvocationType="Event", Payload=b'{"late": true}')
    request_id = r["ResponseMetadata"]["RequestId"]
    deadline = time.monotonic() + 120
    while True:
        mine = [x for x in records(server, "recorder") if x["requestContext"]["requestId"] == request_id]
        if mine:
            break
        assert time.monotonic() < deadline, records(server, "recorder")
        time.sleep(1)
    assert time.monotonic() - sent >= 59, "given up before its maximum age"
    (record,) = mine
    assert record["requestContext"]["condition"] == "EventAgeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 0
    assert record["requestPayload"] == {"late": True}
    assert "responseContext" not in record and "responsePayload" not in record
    assert [e for e in logs(server, "never-runs") if e["RequestId"] == request_id] == []


# ---- the AWS SDK for JavaScript v3 --------------------------------------------------------------


def test_the_js_sdk_routes_a_failing_event_to_on_failure(server, lam, python_app_zip, recorder):
    from js_sdk import js_bytes, js_calls

    create(lam, "js-fails", python_app_zip)
    put, got, invoked = js_calls(server, [
        ("PutFunctionEventInvokeConfig", {
            "FunctionName": "js-fails", "MaximumRetryAttempts": 0,
            "DestinationConfig": {"OnFailure": {"Destination": recorder}},
        }),
        ("GetFunctionEventInvokeConfig", {"FunctionName": "js-fails"}),
        ("Invoke", {"FunctionName": "js-fails", "InvocationType": "Event",
                    "Payload": js_bytes(json.dumps({"fail": "from js"}).encode())}),
    ])
    assert put["output"]["MaximumRetryAttempts"] == 0
    assert put["output"]["DestinationConfig"]["OnFailure"] == {"Destination": recorder}
    # The SDK parses LastModified as a Date (run.mjs answers it in ISO 8601).
    datetime.datetime.fromisoformat(got["output"]["LastModified"].replace("Z", "+00:00"))
    assert got["output"]["FunctionArn"].endswith(":function:js-fails:$LATEST")
    assert invoked["output"]["StatusCode"] == 202
    request_id = invoked["output"]["$metadata"]["requestId"]
    deadline = time.monotonic() + 60
    while True:
        mine = [x for x in records(server, "recorder") if x["requestContext"]["requestId"] == request_id]
        if mine:
            break
        assert time.monotonic() < deadline, records(server, "recorder")
        time.sleep(0.3)
    (record,) = mine
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 1
    assert record["requestPayload"] == {"fail": "from js"}
    assert record["responsePayload"]["errorMessage"] == "from js"
