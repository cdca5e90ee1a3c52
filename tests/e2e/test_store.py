"""Store backends (issue 20): `ember serve --store postgres://…` on a real PostgreSQL (a throwaway
cluster on loopback, postgres.py), `ember store migrate` and `ember store check`, readiness at
`GET /ember/v1/health`, and two servers with data dirs of their own sharing one database: the
same accounts, keys and functions on both."""

from __future__ import annotations

import json
import time

import pytest

from ember_e2e import ROLE, handler_zip, send, sign
from postgres import Postgres

pytestmark = [pytest.mark.needs_root, pytest.mark.own_backend]


@pytest.fixture(scope="module")
def postgres():
    pg = Postgres.create()
    yield pg
    pg.close()


def health(server) -> tuple[int, dict]:
    r = send("GET", f"{server.endpoint}/ember/v1/health")
    return r.status, r.json()


def wait_health(server, status: int, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        got, body = health(server)
        if got == status or time.monotonic() > deadline:
            assert got == status, body
            return body
        time.sleep(0.2)


def test_migrate_then_check_on_an_empty_database(postgres, ember_bin, tmp_path):
    from ember_e2e import run_ember

    url = postgres.database()
    args = ("--store", url, "--data-dir", str(tmp_path))
    check = run_ember(ember_bin, "store", "check", *args)
    assert check.returncode != 0, check.stdout
    assert "run `ember store migrate`" in check.stderr, check.stderr
    assert "reachable (postgres)" in check.stdout, check.stdout

    migrate = run_ember(ember_bin, "store", "migrate", *args)
    assert migrate.returncode == 0, migrate.stderr
    again = run_ember(ember_bin, "store", "migrate", *args)
    assert again.returncode == 0, again.stderr

    status = run_ember(ember_bin, "store", "check", "--json", *args)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["Store"] == "postgres" and report["Current"] is True, report
    assert report["SchemaVersion"] == report["Latest"] and report["Pending"] == [], report
    tables = postgres.psql("SELECT count(*) FROM information_schema.tables "
                           "WHERE table_name IN ('functions', 'accounts', 'event_invocations')",
                           db=url.rsplit("/", 1)[1]).stdout.strip()
    assert tables == "3"

    unreachable = run_ember(ember_bin, "store", "check", "--store",
                            f"postgres://postgres@127.0.0.1:{postgres.port}/no_such_db",
                            "--data-dir", str(tmp_path))
    assert unreachable.returncode != 0
    assert "no_such_db" in unreachable.stderr, unreachable.stderr


def test_an_unsupported_store_url_is_refused(ember_bin, tmp_path):
    from ember_e2e import run_ember

    r = run_ember(ember_bin, "store", "check", "--store", "mysql://root@db/ember",
                  "--data-dir", str(tmp_path))
    assert r.returncode != 0
    assert "expected sqlite://PATH or postgres://USER@HOST/DB" in r.stderr, r.stderr


@pytest.mark.embedded_only("its subject is the embedded default itself (SQLite, with no --store)")
def test_the_embedded_default_is_healthy(server_factory):
    server = server_factory()
    status, body = health(server)
    assert (status, body["Status"], body["Store"]) == (200, "ok", "sqlite"), body
    assert isinstance(body["SchemaVersion"], int) and body["SchemaVersion"] >= 14, body


def test_two_servers_on_one_database_share_accounts_keys_and_functions(postgres, server_factory):
    url = postgres.database()
    first = server_factory(None, "--store", url)
    second = server_factory(None, "--store", url)
    assert first.data_dir != second.data_dir

    for server in (first, second):
        status, body = health(server)
        assert (status, body["Status"], body["Store"]) == (200, "ok", "postgres"), body

    # One admin account, made by the first; the second got a key of it.
    one, two = first.admin_keys(), second.admin_keys()
    assert one["AccessKeyId"] != two["AccessKeyId"]
    admins = postgres.psql("SELECT count(*) FROM accounts WHERE is_admin",
                           db=url.rsplit("/", 1)[1]).stdout.strip()
    assert admins == "1"

    # An account made once against the shared store works on both hosts.
    made = first.run_ember("accounts", "create", "shared-team", "--json", "--store", url,
                           "--data-dir", str(first.data_dir))
    assert made.returncode == 0, made.stderr
    team = json.loads(made.stdout)

    on_first = first.lambda_client(team)
    on_first.create_function(FunctionName="made-on-first", Runtime="python3.12", Role=ROLE,
                             Handler="app.handler", Code={"ZipFile": handler_zip("shared")})
    on_second = second.lambda_client(team)
    names = [f["FunctionName"] for f in on_second.list_functions()["Functions"]]
    assert names == ["made-on-first"]
    # A conditional update from one host, then a stale one from the other: the second loses.
    revision = on_second.get_function(FunctionName="made-on-first")["Configuration"]["RevisionId"]
    on_second.update_function_configuration(FunctionName="made-on-first", Description="second",
                                            RevisionId=revision)
    with pytest.raises(on_first.exceptions.PreconditionFailedException):
        on_first.update_function_configuration(FunctionName="made-on-first",
                                               Description="first", RevisionId=revision)
    # Create-vs-create of one name across hosts: exactly one exists.
    with pytest.raises(on_second.exceptions.ResourceConflictException):
        on_second.create_function(FunctionName="made-on-first", Runtime="python3.12", Role=ROLE,
                                  Handler="app.handler", Code={"ZipFile": handler_zip("again")})
    config = on_first.get_function_configuration(FunctionName="made-on-first")
    assert config["Description"] == "second"

    # Logs are shared: an invocation run by the first host is in the second host's logs.
    ran = on_first.invoke(FunctionName="made-on-first", Payload=b"{}")
    assert ran["StatusCode"] == 200 and "FunctionError" not in ran, ran
    request_id = ran["ResponseMetadata"]["RequestId"]
    url = f"{second.endpoint}/ember/v1/functions/made-on-first/logs?Limit=1000"
    deadline = time.monotonic() + 20
    while True:
        resp = send("GET", url, headers=sign("GET", url, b"", team))
        assert resp.status == 200, resp.body
        if any(e["RequestId"] == request_id for e in resp.json()["Events"]):
            break
        assert time.monotonic() < deadline, resp.json()
        time.sleep(0.2)


def test_health_is_503_while_the_database_is_down(server_factory):
    pg = Postgres.create()
    try:
        server = server_factory(None, "--store", pg.database())
        assert health(server)[0] == 200
        pg.stop()
        body = wait_health(server, 503)
        assert "postgres store: the store does not answer" in body["message"], body
        pg.start()
        wait_health(server, 200)
        # A server whose database is gone still stops promptly (within the harness's 10 s),
        # and cleanly.
        pg.stop()
        assert server.stop() == 0
    finally:
        pg.close()


@pytest.mark.embedded_only("its subject is the embedded default itself (ember.db in the data dir, with no --store)")
def test_check_creates_no_sqlite_database_and_migrate_makes_one(ember_bin, tmp_path):
    from ember_e2e import run_ember

    data = tmp_path / "data"
    missing = run_ember(ember_bin, "store", "check", "--data-dir", str(data))
    assert missing.returncode != 0
    assert "ember.db not found" in missing.stderr, missing.stderr
    assert not (data / "ember.db").exists()
    made = run_ember(ember_bin, "store", "migrate", "--data-dir", str(data))
    assert made.returncode == 0, made.stderr
    report = json.loads(run_ember(ember_bin, "store", "check", "--json", "--data-dir",
                                  str(data)).stdout)
    assert (report["Store"], report["Current"]) == ("sqlite", True), report
