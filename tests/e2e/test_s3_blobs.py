"""`ember serve --blobs s3://BUCKET/PREFIX?endpoint=URL&region=R` against SeaweedFS
(seaweed.py): code packages live in the bucket, content-addressed as on disk, with the
host's bounded cache under the data dir; boto3 creates and invokes functions as with the
default store; a host that lost its cache fetches the code from the bucket again; wrong
credentials or an unknown bucket stop `ember serve` at start with one clear line.

Several hosts sharing one bucket need a shared database too (`--store postgres://`, built in
parallel by another branch): the cross-host tests belong with it."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from ember_e2e import ROLE, EmberServer, download, handler_zip, make_zip, sha256_hex
from seaweed import Seaweed

pytestmark = [pytest.mark.needs_root, pytest.mark.own_backend]  # Invoke runs the function in a VM (conftest.py)


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    store = Seaweed(tmp_path_factory.mktemp("seaweed"))
    yield store
    store.close()


def s3_server(factory, seaweed: Seaweed, prefix: str, *extra: str, data_dir=None, secret=None):
    """A server of `factory` with its code in `prefix` of the SeaweedFS bucket."""
    n = len(factory.servers)
    server = EmberServer(factory.ember_bin, data_dir or factory.tmp_dir / f"data{n}",
                         factory.tmp_dir / f"serve{n}.log",
                         ("--blobs", seaweed.url(prefix), *extra))
    server.extra_env = seaweed.env(secret) if secret else seaweed.env()
    factory.servers.append(server)
    return server.start()


def blob_key(prefix: str, zip_bytes: bytes) -> str:
    sha = sha256_hex(zip_bytes)
    return f"{prefix}/sha256/{sha[:2]}/{sha}"


def test_functions_run_with_their_code_in_the_bucket(server_factory, seaweed):
    server = s3_server(server_factory, seaweed, "run")
    lam = server.lambda_client()
    code = make_zip({"app.py": "def handler(event, context):\n    return {'got': event}\n"})
    lam.create_function(FunctionName="in-s3", Runtime="python3.11", Role=ROLE,
                        Handler="app.handler", Code={"ZipFile": code})
    lam.get_waiter("function_active_v2").wait(FunctionName="in-s3")
    # In the bucket, content-addressed as on disk; nothing in the data dir's own blob dir.
    assert blob_key("run", code) in seaweed.keys("run")
    stored = seaweed.s3.get_object(Bucket="ember-e2e", Key=blob_key("run", code))["Body"].read()
    assert stored == code
    assert not list((server.data_dir / "blobs" / "sha256").glob("*/*"))

    r = lam.invoke(FunctionName="in-s3", Payload=json.dumps({"n": 1}))
    assert r["StatusCode"] == 200 and "FunctionError" not in r, r
    assert json.loads(r["Payload"].read()) == {"got": {"n": 1}}
    # GetFunction's Code.Location serves the package from the bucket (or this host's cache).
    location = lam.get_function(FunctionName="in-s3")["Code"]["Location"]
    assert download(location) == code

    # New code: uploaded next to the old one, which stays for the grace period (another host
    # may be about to name it) before a collection removes it.
    code2 = make_zip({"app.py": "def handler(event, context):\n    return 'v2'\n"})
    lam.update_function_code(FunctionName="in-s3", ZipFile=code2)
    lam.get_waiter("function_updated_v2").wait(FunctionName="in-s3")
    assert {blob_key("run", code), blob_key("run", code2)} <= set(seaweed.keys("run"))
    r = lam.invoke(FunctionName="in-s3", Payload=b"{}")
    assert json.loads(r["Payload"].read()) == "v2"


def test_a_host_without_its_cache_fetches_the_code_from_the_bucket(server_factory, seaweed):
    first = s3_server(server_factory, seaweed, "refetch")
    lam = first.lambda_client()
    code = handler_zip("fetched again")
    lam.create_function(FunctionName="refetched", Runtime="python3.11", Role=ROLE,
                        Handler="app.handler", Code={"ZipFile": code})
    lam.get_waiter("function_active_v2").wait(FunctionName="refetched")
    cache = first.data_dir / "blob-cache" / "sha256"
    sha = sha256_hex(code)
    assert (cache / sha[:2] / sha).read_bytes() == code, "the uploading host caches it"
    keys = first.admin_keys()
    assert first.stop() == 0

    # The same host, its cache lost (a new disk, say): the code comes from the bucket.
    shutil.rmtree(first.data_dir / "blob-cache")
    second = s3_server(server_factory, seaweed, "refetch", data_dir=first.data_dir)
    lam = second.lambda_client(keys)
    r = lam.invoke(FunctionName="refetched", Payload=b"{}")
    assert r["StatusCode"] == 200 and "FunctionError" not in r, r
    assert (second.data_dir / "blob-cache" / "sha256" / sha[:2] / sha).read_bytes() == code
    assert hashlib.sha256((cache / sha[:2] / sha).read_bytes()).hexdigest() == sha


def failed_start(server_factory, seaweed, url: str, secret: str | None = None) -> str:
    n = len(list(server_factory.tmp_dir.glob("bad*.log")))
    server = EmberServer(server_factory.ember_bin, server_factory.tmp_dir / f"bad{n}",
                         server_factory.tmp_dir / f"bad{n}.log", ("--blobs", url))
    server.extra_env = seaweed.env(secret) if secret else seaweed.env()
    with pytest.raises(AssertionError, match=r"exited with \d+ while starting"):
        server.start()
    errors = [line for line in server.log_text().splitlines() if line.startswith("error:")]
    assert len(errors) == 1, server.log_text()
    return errors[0]


def test_wrong_credentials_or_bucket_stop_the_server_at_start(server_factory, seaweed):
    line = failed_start(server_factory, seaweed, seaweed.url("bad"), secret="not-the-secret")
    assert "cannot use the blob store (--blobs)" in line
    assert f"s3://ember-e2e/bad at {seaweed.endpoint}" in line
    assert "credentials from AWS_ACCESS_KEY_ID" in line
    assert "SignatureDoesNotMatch" in line

    url = seaweed.url("bad").replace("s3://ember-e2e/", "s3://no-such-bucket/")
    line = failed_start(server_factory, seaweed, url)
    assert "NoSuchBucket" in line

    line = failed_start(server_factory, seaweed, "s3://ember-e2e/bad?endpoint=http://x&acl=private")
    assert 'unknown parameter "acl"' in line


def test_a_file_store_elsewhere_holds_the_packages(server_factory, tmp_path):
    blobs = tmp_path / "elsewhere"
    server = server_factory(None, "--blobs", f"file://{blobs}")
    lam = server.lambda_client()
    code = handler_zip("elsewhere")
    lam.create_function(FunctionName="on-disk", Runtime="python3.11", Role=ROLE,
                        Handler="app.handler", Code={"ZipFile": code})
    sha = sha256_hex(code)
    assert (blobs / "sha256" / sha[:2] / sha).read_bytes() == code
    assert not list((server.data_dir / "blobs" / "sha256").glob("*/*"))

    refused = EmberServer(server_factory.ember_bin, tmp_path / "d", tmp_path / "d.log",
                          ("--blobs", f"file://{blobs}", "--blob-cache-mb", "10"))
    with pytest.raises(AssertionError, match="exited with 1 while starting"):
        refused.start()
    assert "--blob-cache-mb applies to an s3:// blob store only" in refused.log_text()
