"""Function URLs end to end: the config operations through boto3 (Create, Get, Update, Delete,
List, on a function and on an alias, with Lambda's errors), and the URLs themselves through plain
HTTP (urllib, as curl would): an HTML page with its status, headers and cookies, a binary body
round trip, query strings, a CORS preflight, AWS_IAM refused unsigned and served signed
(botocore's SigV4Auth), NONE refused without the resource policy statement, Lambda's statuses
for a function error, a timeout, a throttle and bodies over 6 MB, the host form (a Host header
to the API's port), the path form, `--url-listen`, and `ember fn url`."""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.parse

import pytest
from botocore.exceptions import ClientError

from ember_e2e import REGION, ROLE, client_error, make_zip, send, sign

APP = r'''
import base64
import time


def handler(event, context):
    path = event["rawPath"]
    if path == "/page":
        return {
            "statusCode": 201,
            "headers": {"Content-Type": "text/html; charset=utf-8", "X-Custom": "yes"},
            "cookies": ["session=abc; Max-Age=60; HttpOnly", "theme=dark"],
            "body": "<html><body><h1>Hello from Ember</h1></body></html>",
        }
    if path == "/reverse":
        body = event.get("body") or ""
        data = base64.b64decode(body) if event["isBase64Encoded"] else body.encode()
        return {
            "statusCode": 200,
            "headers": {"content-type": "application/octet-stream"},
            "isBase64Encoded": True,
            "body": base64.b64encode(data[::-1]).decode(),
        }
    if path == "/string":
        return "Hello, world!"
    if path == "/fail":
        raise RuntimeError("boom")
    if path == "/slow":
        time.sleep(10)
    if path == "/big":
        return {"statusCode": 200, "body": "x" * (7 * 1024 * 1024)}
    if path == "/unmappable":
        return {"statusCode": "two hundred"}
    if event["requestContext"]["http"]["method"] == "OPTIONS":
        return {"statusCode": 418, "body": "the function was invoked"}
    # Anything else: the event itself, as a 200 JSON body.
    return event
'''


def create_function(lam, name, timeout=5):
    lam.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE, Handler="app.handler",
                        Code={"ZipFile": make_zip({"app.py": APP})}, Timeout=timeout)
    lam.get_waiter("function_active_v2").wait(FunctionName=name)


def allow_public(lam, name, qualifier=None):
    extra = {"Qualifier": qualifier} if qualifier else {}
    lam.add_permission(FunctionName=name, StatementId="FunctionURLAllowPublicAccess",
                       Action="lambda:InvokeFunctionUrl", Principal="*",
                       FunctionUrlAuthType="NONE", **extra)


def url_id(config) -> str:
    host = urllib.parse.urlsplit(config["FunctionUrl"]).hostname
    return host.split(".")[0]


def via_host(server, config, path="/", method="GET", body=b"", headers=None):
    """A request to the URL in its host form, sent to the API's port with that Host header."""
    host = urllib.parse.urlsplit(config["FunctionUrl"]).netloc
    return send(method, f"{server.endpoint}{path}", body, {"Host": host, **(headers or {})})


def via_path(server, config, path="/", method="GET", body=b"", headers=None):
    """A request to the URL in its path form, /ember/v1/urls/<url-id>/…."""
    return send(method, f"{server.endpoint}/ember/v1/urls/{url_id(config)}{path}", body,
                headers or {})


def account_of(lam, function) -> str:
    """The id of the account that owns `function`."""
    return lam.get_function_configuration(FunctionName=function)["FunctionArn"].split(":")[4]


def error_of(call):
    with pytest.raises(ClientError) as excinfo:
        call()
    code, status, _ = client_error(excinfo)
    return code, status, excinfo.value.response["Error"]["Message"]


@pytest.fixture(scope="module")
def public(server, admin):
    """A function with a NONE URL that anyone may call."""
    create_function(admin, "url-public", timeout=3)
    config = admin.create_function_url_config(FunctionName="url-public", AuthType="NONE")
    allow_public(admin, "url-public")
    return config


# ---- configs --------------------------------------------------------------------------------

def test_configs_are_created_read_updated_listed_and_deleted(server, admin):
    create_function(admin, "url-config")
    arn = f"arn:aws:lambda:{REGION}:{account_of(admin, 'url-config')}:function:url-config"
    created = admin.create_function_url_config(
        FunctionName="url-config", AuthType="AWS_IAM",
        Cors={"AllowOrigins": ["https://example.com"], "MaxAge": 60})
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert created["FunctionArn"] == arn
    assert created["AuthType"] == "AWS_IAM"
    assert created["InvokeMode"] == "BUFFERED"
    assert created["Cors"] == {"AllowOrigins": ["https://example.com"], "MaxAge": 60}
    port = urllib.parse.urlsplit(server.endpoint).port
    ident = url_id(created)
    assert len(ident) == 32 and ident.isalnum() and ident == ident.lower()
    assert created["FunctionUrl"] == f"http://{ident}.lambda-url.{REGION}.localhost:{port}/"

    got = admin.get_function_url_config(FunctionName="url-config")
    assert got["FunctionUrl"] == created["FunctionUrl"]
    assert got["CreationTime"] == created["CreationTime"]
    assert got["LastModifiedTime"]

    # One URL per function and qualifier.
    code, status, message = error_of(lambda: admin.create_function_url_config(
        FunctionName="url-config", AuthType="NONE"))
    assert (code, status) == ("ResourceConflictException", 409)
    assert "FunctionUrlConfig exists" in message

    updated = admin.update_function_url_config(FunctionName="url-config", AuthType="NONE",
                                               InvokeMode="RESPONSE_STREAM")
    assert updated["AuthType"] == "NONE"
    assert updated["InvokeMode"] == "RESPONSE_STREAM"
    assert updated["Cors"] == created["Cors"], "what an update does not name stays"
    assert updated["FunctionUrl"] == created["FunctionUrl"], "a URL never changes"
    cleared = admin.update_function_url_config(FunctionName="url-config", Cors={})
    assert "Cors" not in cleared

    # An alias has its own URL; a version or $LATEST cannot have one.
    admin.create_alias(FunctionName="url-config", Name="live", FunctionVersion="$LATEST")
    on_alias = admin.create_function_url_config(FunctionName="url-config", Qualifier="live",
                                                AuthType="NONE")
    assert on_alias["FunctionArn"] == f"{arn}:live"
    assert on_alias["FunctionUrl"] != created["FunctionUrl"]
    raw = server.lambda_client(validate=False)
    for qualifier in ["1", "$LATEST"]:
        code, status, _ = error_of(lambda: raw.create_function_url_config(
            FunctionName="url-config", Qualifier=qualifier, AuthType="NONE"))
        assert status == 400, (qualifier, code)

    listed = admin.list_function_url_configs(FunctionName="url-config")["FunctionUrlConfigs"]
    assert [c["FunctionArn"] for c in listed] == [arn, f"{arn}:live"]
    page = admin.list_function_url_configs(FunctionName="url-config", MaxItems=1)
    assert len(page["FunctionUrlConfigs"]) == 1
    rest = admin.list_function_url_configs(FunctionName="url-config", Marker=page["NextMarker"])
    assert [c["FunctionArn"] for c in rest["FunctionUrlConfigs"]] == [f"{arn}:live"]

    # Deleting the alias deletes its URL.
    admin.delete_alias(FunctionName="url-config", Name="live")
    admin.create_alias(FunctionName="url-config", Name="live", FunctionVersion="$LATEST")
    code, status, _ = error_of(lambda: admin.get_function_url_config(
        FunctionName="url-config", Qualifier="live"))
    assert (code, status) == ("ResourceNotFoundException", 404)
    assert via_path(server, on_alias).status == 404

    deleted = admin.delete_function_url_config(FunctionName="url-config")
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    for call in [lambda: admin.get_function_url_config(FunctionName="url-config"),
                 lambda: admin.delete_function_url_config(FunctionName="url-config"),
                 lambda: admin.update_function_url_config(FunctionName="url-config",
                                                          AuthType="NONE")]:
        assert error_of(call)[:2] == ("ResourceNotFoundException", 404)
    assert via_path(server, created).status == 404
    code, status, _ = error_of(lambda: admin.create_function_url_config(
        FunctionName="url-missing", AuthType="NONE"))
    assert (code, status) == ("ResourceNotFoundException", 404)


def test_bad_configs_are_refused_and_change_nothing(server, admin):
    create_function(admin, "url-bad")
    raw = server.lambda_client(validate=False)
    bad = [
        {"AuthType": "OPEN"},
        {"AuthType": "NONE", "InvokeMode": "STREAMED"},
        {"AuthType": "NONE", "Cors": {"MaxAge": 86401}},
        {"AuthType": "NONE", "Cors": {"AllowMethods": ["GET"] * 7}},
        {"AuthType": "NONE", "Cors": {"AllowMethods": ["FETCH"]}},
        {"AuthType": "NONE", "Cors": {"AllowOrigins": ["*"] * 101}},
    ]
    for request in bad:
        code, status, _ = error_of(
            lambda: raw.create_function_url_config(FunctionName="url-bad", **request))
        assert (code, status) == ("InvalidParameterValueException", 400), request
    assert raw.list_function_url_configs(FunctionName="url-bad")["FunctionUrlConfigs"] == []
    # Another account sees no function there.
    other = server.lambda_client(server.make_account("url-other"))
    target = f"arn:aws:lambda:{REGION}:{account_of(admin, 'url-bad')}:function:url-bad"
    assert error_of(lambda: other.create_function_url_config(
        FunctionName=target, AuthType="NONE"))[:2] == ("ResourceNotFoundException", 404)


# ---- serving --------------------------------------------------------------------------------

@pytest.mark.needs_root
def test_a_page_with_its_status_headers_and_cookies(server, public):
    r = via_host(server, public, "/page")
    assert r.status == 201, r.body
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    assert r.headers["X-Custom"] == "yes"
    assert r.headers.get_all("Set-Cookie") == ["session=abc; Max-Age=60; HttpOnly", "theme=dark"]
    assert r.body == b"<html><body><h1>Hello from Ember</h1></body></html>"
    assert r.headers["x-amzn-RequestId"]
    # Any other JSON value is a 200 JSON body, as returned.
    r = via_host(server, public, "/string")
    assert (r.status, r.headers["Content-Type"], r.body) == (200, "application/json",
                                                             b'"Hello, world!"')


@pytest.mark.needs_root
def test_curl_gets_the_page_at_the_function_url(public):
    # curl resolves *.localhost to loopback itself: the FunctionUrl works as given.
    r = subprocess.run(["curl", "-si", "--max-time", "30", public["FunctionUrl"] + "page"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    head, _, body = r.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    assert lines[0] == "HTTP/1.1 201 Created", head
    lowered = [x.lower() for x in lines]
    assert "set-cookie: session=abc; max-age=60; httponly" in lowered, head
    assert "set-cookie: theme=dark" in lowered, head
    assert "content-type: text/html; charset=utf-8" in lowered, head
    assert "<h1>Hello from Ember</h1>" in body


@pytest.mark.needs_root
def test_the_event_is_lambdas_payload_format_2(server, admin, public):
    r = via_host(server, public, "/some/path?name=Jane&tag=a&tag=b&sp=a%20b", method="POST",
                 body=b'{"k": 1}',
                 headers={"Content-Type": "application/json", "User-Agent": "e2e/1",
                          "Cookie": "c1=v1; c2=v2", "X-Two": "x"})
    assert r.status == 200, r.body
    event = r.json()
    assert event["version"] == "2.0"
    assert event["routeKey"] == "$default"
    assert event["rawPath"] == "/some/path"
    assert event["rawQueryString"] == "name=Jane&tag=a&tag=b&sp=a%20b"
    assert event["queryStringParameters"] == {"name": "Jane", "tag": "a,b", "sp": "a b"}
    assert event["cookies"] == ["c1=v1", "c2=v2"]
    assert event["headers"]["content-type"] == "application/json"
    assert event["headers"]["x-two"] == "x"
    assert "cookie" not in event["headers"]
    assert event["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert event["headers"]["x-forwarded-proto"] == "http"
    assert event["body"] == '{"k": 1}'
    assert event["isBase64Encoded"] is False
    assert "pathParameters" not in event
    ctx = event["requestContext"]
    ident = url_id(public)
    assert ctx["accountId"] == account_of(admin, "url-public")
    assert ctx["apiId"] == ident
    assert ctx["domainName"] == f"{ident}.lambda-url.{REGION}.localhost"
    assert ctx["domainPrefix"] == ident
    assert ctx["http"] == {"method": "POST", "path": "/some/path", "protocol": "HTTP/1.1",
                           "sourceIp": "127.0.0.1", "userAgent": "e2e/1"}
    assert ctx["stage"] == "$default" and ctx["routeKey"] == "$default"
    assert ctx["requestId"] == r.headers["x-amzn-RequestId"]
    assert isinstance(ctx["timeEpoch"], int) and ctx["time"].endswith("+0000")
    assert "authorizer" not in ctx

    # The path form reaches the same function with the path after the URL's prefix.
    r = via_path(server, public, "/p/q?x=1")
    event = r.json()
    assert (event["rawPath"], event["rawQueryString"]) == ("/p/q", "x=1")
    assert "body" not in event
    assert via_path(server, public).json()["rawPath"] == "/"


@pytest.mark.needs_root
def test_a_binary_body_round_trips(server, public):
    data = bytes(range(256)) * 64
    r = via_host(server, public, "/reverse", method="POST", body=data,
                 headers={"Content-Type": "application/octet-stream"})
    assert r.status == 200, r.body
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.body == data[::-1]
    # The event's body was base64: the function saw binary as Lambda sends it.
    r = via_host(server, public, "/echo", method="POST", body=b"\x00\xff",
                 headers={"Content-Type": "image/png"})
    event = r.json()
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\x00\xff"


@pytest.mark.needs_root
def test_failures_answer_lambdas_statuses(server, admin, public):
    assert via_host(server, public, "/fail").status == 502
    assert via_host(server, public, "/unmappable").status == 502
    assert via_host(server, public, "/big").status == 502
    slow = via_host(server, public, "/slow")
    assert slow.status == 502, "a timeout (3 s) is a function error"
    # 6 MB is the most a request may carry.
    r = via_host(server, public, "/echo", method="POST", body=b"x" * (6 * 1024 * 1024 + 1),
                 headers={"Content-Type": "application/octet-stream"})
    assert r.status == 413
    assert r.headers["x-amzn-ErrorType"] == "RequestEntityTooLargeException"
    # A function without concurrency is throttled.
    create_function(admin, "url-throttled")
    config = admin.create_function_url_config(FunctionName="url-throttled", AuthType="NONE")
    allow_public(admin, "url-throttled")
    admin.put_function_concurrency(FunctionName="url-throttled", ReservedConcurrentExecutions=0)
    r = via_host(server, config)
    assert r.status == 429, r.body
    assert r.headers["x-amzn-ErrorType"] == "TooManyRequestsException"
    # An id no URL has, and one that is no id.
    for ident in ["0" * 32, "nope"]:
        r = send("GET", f"{server.endpoint}/ember/v1/urls/{ident}/")
        assert r.status == 404, (ident, r.body)


@pytest.mark.needs_root
def test_none_needs_the_public_statement(server, admin):
    create_function(admin, "url-private")
    config = admin.create_function_url_config(FunctionName="url-private", AuthType="NONE")
    r = via_host(server, config)
    assert r.status == 403
    assert r.json() == {"Message": "Forbidden"}
    # InvokeFunction for everyone is not InvokeFunctionUrl.
    admin.add_permission(FunctionName="url-private", StatementId="all",
                         Action="lambda:InvokeFunction", Principal="*")
    assert via_host(server, config).status == 403
    allow_public(admin, "url-private")
    assert via_host(server, config).status == 200
    admin.remove_permission(FunctionName="url-private", StatementId="FunctionURLAllowPublicAccess")
    assert via_host(server, config).status == 403


@pytest.mark.needs_root
def test_aws_iam_refuses_unsigned_and_serves_signed(server, admin):
    create_function(admin, "url-iam")
    config = admin.create_function_url_config(FunctionName="url-iam", AuthType="AWS_IAM")
    host_url = config["FunctionUrl"] + "whoami?x=1"
    assert via_host(server, config, "/whoami?x=1").status == 403

    def signed(keys, body=b""):
        headers = sign("POST", host_url, body, keys)
        return via_host(server, config, "/whoami?x=1", method="POST", body=body, headers=headers)

    owner = server.admin_keys()
    owner_id = account_of(admin, "url-iam")
    r = signed(owner, b'{"a": 1}')
    assert r.status == 200, r.body
    iam = r.json()["requestContext"]["authorizer"]["iam"]
    assert iam["accountId"] == owner_id
    assert iam["accessKey"] == owner["AccessKeyId"]
    assert iam["userArn"] == f"arn:aws:iam::{owner_id}:root"
    # A signature over something else (the body changed) is refused.
    headers = sign("POST", host_url, b"one", owner)
    assert via_host(server, config, "/whoami?x=1", method="POST", body=b"two",
                    headers=headers).status == 403
    # Another account: refused until the owner grants it InvokeFunctionUrl.
    other = server.make_account("url-iam-caller")
    assert signed(other).status == 403
    admin.add_permission(FunctionName="url-iam", StatementId="other",
                         Action="lambda:InvokeFunctionUrl", Principal=other["AccountId"],
                         FunctionUrlAuthType="AWS_IAM")
    r = signed(other)
    assert r.status == 200, r.body
    assert r.json()["requestContext"]["authorizer"]["iam"]["accountId"] == other["AccountId"]
    assert r.json()["requestContext"]["accountId"] == owner_id, "it ran as the owner's"


@pytest.mark.needs_root
def test_cors_preflights_are_answered_without_invoking(server, admin):
    create_function(admin, "url-cors")
    config = admin.create_function_url_config(
        FunctionName="url-cors", AuthType="NONE",
        Cors={"AllowOrigins": ["https://app.example"], "AllowMethods": ["GET", "POST"],
              "AllowHeaders": ["x-custom"], "ExposeHeaders": ["x-out"], "MaxAge": 300,
              "AllowCredentials": True})
    allow_public(admin, "url-cors")
    r = via_host(server, config, "/", method="OPTIONS",
                 headers={"Origin": "https://app.example",
                          "Access-Control-Request-Method": "POST",
                          "Access-Control-Request-Headers": "x-custom"})
    assert r.status == 200, r.body
    assert r.body == b"", "the function (which answers 418) was not invoked"
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert r.headers["Access-Control-Allow-Methods"] == "GET,POST"
    assert r.headers["Access-Control-Allow-Headers"] == "x-custom"
    assert r.headers["Access-Control-Max-Age"] == "300"
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    # An ordinary request from the origin gets the CORS headers with the function's answer.
    r = via_host(server, config, "/", headers={"Origin": "https://app.example"})
    assert r.status == 200
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert r.headers["Access-Control-Expose-Headers"] == "x-out"
    # Another origin gets none.
    r = via_host(server, config, "/", headers={"Origin": "https://evil.example"})
    assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers
    # Without Cors, an OPTIONS request is the function's.
    create_function(admin, "url-nocors")
    plain = admin.create_function_url_config(FunctionName="url-nocors", AuthType="NONE")
    allow_public(admin, "url-nocors")
    r = via_host(server, plain, "/", method="OPTIONS",
                 headers={"Origin": "https://app.example",
                          "Access-Control-Request-Method": "POST"})
    assert r.status == 418


@pytest.mark.needs_root
def test_an_alias_url_runs_the_aliass_version(server, admin):
    create_function(admin, "url-alias")
    version = admin.publish_version(FunctionName="url-alias")["Version"]
    admin.create_alias(FunctionName="url-alias", Name="prod", FunctionVersion=version)
    config = admin.create_function_url_config(FunctionName="url-alias", Qualifier="prod",
                                              AuthType="NONE")
    # The unqualified function's grant does not open the alias's URL.
    allow_public(admin, "url-alias")
    assert via_host(server, config).status == 403
    allow_public(admin, "url-alias", qualifier="prod")
    r = via_host(server, config, "/x")
    assert r.status == 200, r.body
    assert r.json()["rawPath"] == "/x"


@pytest.mark.needs_root
def test_url_listen_serves_only_urls_on_its_own_port(server_factory):
    srv = server_factory(None, "--url-listen", "127.0.0.1:0", "--url-domain", "ember.test")
    lam = srv.lambda_client()
    create_function(lam, "url-listener")
    config = lam.create_function_url_config(FunctionName="url-listener", AuthType="NONE")
    allow_public(lam, "url-listener")
    parts = urllib.parse.urlsplit(config["FunctionUrl"])
    assert parts.hostname.endswith(f".lambda-url.{REGION}.ember.test")
    api_port = urllib.parse.urlsplit(srv.endpoint).port
    assert parts.port != api_port
    base = f"http://127.0.0.1:{parts.port}"
    r = send("GET", f"{base}/hello", headers={"Host": parts.netloc})
    assert r.status == 200, r.body
    assert r.json()["requestContext"]["domainName"] == parts.hostname
    r = send("GET", f"{base}/ember/v1/urls/{url_id(config)}/there")
    assert r.json()["rawPath"] == "/there"
    # The URL listener is not the Lambda API.
    assert send("GET", f"{base}/2015-03-31/functions/").status == 404


@pytest.mark.needs_root
def test_ember_fn_url_creates_a_public_url(server, admin):
    create_function(admin, "url-cli")

    def ember(*args):
        r = server.run_ember("fn", "url", "url-cli", *args, "--endpoint", server.endpoint,
                             "--data-dir", str(server.data_dir))
        assert r.returncode == 0, r.stderr
        return r.stdout

    out = ember()
    url = out.splitlines()[0]
    config = admin.get_function_url_config(FunctionName="url-cli")
    assert url == config["FunctionUrl"]
    assert f"curl {url}" in out
    assert config["AuthType"] == "NONE"
    policy = json.loads(admin.get_policy(FunctionName="url-cli")["Policy"])
    assert [s["Sid"] for s in policy["Statement"]] == ["FunctionURLAllowPublicAccess"]
    assert via_host(server, config, "/string").status == 200
    # Shown again, unchanged.
    assert ember().splitlines()[0] == url
    # --auth iam turns it private; --stream sets the invoke mode.
    doc = json.loads(ember("--auth", "iam", "--stream", "--json"))
    assert (doc["AuthType"], doc["InvokeMode"]) == ("AWS_IAM", "RESPONSE_STREAM")
    assert via_host(server, config, "/string").status == 403
    ember("--delete")
    assert error_of(lambda: admin.get_function_url_config(FunctionName="url-cli"))[1] == 404
