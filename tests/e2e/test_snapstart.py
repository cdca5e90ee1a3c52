"""SnapStart's mechanism, end to end with boto3: a published version of a function with
`SnapStart={'ApplyOn': 'PublishedVersions'}` runs its init once per VM, in a template, and its
new execution environments are forked from it: a second concurrent environment starts in tens
of milliseconds, not the init's seconds; REPORT says `Restore Duration` instead of `Init
Duration`; Lambda's runtime hooks run (before-snapshot once, in the template; after-restore once
per environment); `random` differs between environments; `$LATEST` starts the ordinary way."""

from __future__ import annotations

import base64
import io
import json
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

from ember_e2e import ROLE, fleet, wait_fleet

PY = "python3.12"

APP = r'''
import os, random, time
from snapshot_restore_py import register_after_restore, register_before_snapshot

time.sleep(1.5)
BEFORE = []
AFTER = []

@register_before_snapshot
def before():
    BEFORE.append(os.getpid())
    print("before-snapshot hook ran")

@register_after_restore
def after():
    AFTER.append(os.getpid())
    print("after-restore hook ran")

def handler(event, context):
    time.sleep(event.get("hold", 0))
    return {
        "init_type": os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE"),
        "log_stream": context.log_stream_name,
        "random": random.random(),
        "before": len(BEFORE),
        "after": len(AFTER),
        "uid": os.getuid(),
        "key": os.environ.get("AWS_ACCESS_KEY_ID"),
    }
'''


def app_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        info = zipfile.ZipInfo("app.py")
        info.external_attr = 0o644 << 16
        z.writestr(info, APP)
    return buf.getvalue()


def invoke(lam, name, qualifier, event=None):
    started = time.monotonic()
    extra = {"Qualifier": qualifier} if qualifier else {}
    got = lam.invoke(FunctionName=name, Payload=json.dumps(event or {}), LogType="Tail", **extra)
    elapsed = time.monotonic() - started
    assert "FunctionError" not in got, got
    log = base64.b64decode(got["LogResult"]).decode()
    report = [line for line in log.splitlines() if line.startswith("REPORT ")][0]
    return json.loads(got["Payload"].read()), report, log, elapsed


def test_a_published_snap_start_version_forks_its_environments_from_a_template(server, admin):
    lam = admin
    lam.create_function(FunctionName="snappy", Runtime=PY, Role=ROLE, Handler="app.handler",
                        Code={"ZipFile": app_zip()}, MemorySize=256, Timeout=30,
                        SnapStart={"ApplyOn": "PublishedVersions"})
    version = lam.publish_version(FunctionName="snappy")["Version"]

    # The first environment: the template's init (1.5 s) runs once, then the environment is
    # forked from it.
    first, report, log, _ = invoke(lam, "snappy", version)
    assert first["init_type"] == "snap-start"
    assert "Restore Duration: " in report and "Billed Restore Duration: " in report, report
    assert "Init Duration" not in report, report
    assert first["before"] == 1 and first["after"] == 1, first
    assert "after-restore hook ran" in log, log

    # Two at once: the second needs an environment of its own, forked in tens of milliseconds.
    with ThreadPoolExecutor(2) as pool:
        busy = pool.submit(invoke, lam, "snappy", version, {"hold": 2})
        time.sleep(0.3)
        second, report, _, elapsed = invoke(lam, "snappy", version)
        held = busy.result()[0]
    assert second["log_stream"] != held["log_stream"], (second, held)
    assert "Restore Duration: " in report and "Init Duration" not in report, report
    restore_ms = float(report.split("Restore Duration: ")[1].split(" ms")[0])
    assert restore_ms < 500, report
    assert elapsed < 1.0, f"a forked environment took {elapsed:.3f} s"
    assert second["before"] == 1 and second["after"] == 1, second
    # Each environment has random state and credentials of its own.
    assert second["random"] != held["random"]
    assert second["key"] and held["key"] and second["key"] != held["key"], (second, held)
    assert len({first["log_stream"], second["log_stream"], held["log_stream"]}) >= 2

    # $LATEST is never SnapStart: its environment runs the init.
    latest, report, _, _ = invoke(lam, "snappy", None)
    assert latest["init_type"] != "snap-start", latest
    assert "Init Duration: " in report and "Restore Duration" not in report, report
    init_ms = float(report.split("Init Duration: ")[1].split(" ms")[0])
    assert init_ms > 1500, report

    # The template's memory (the function's 256 MB) is counted against its VM, and given back
    # when the function is deleted (its idle environments go, then the template).
    def template_mb(view):
        return max((vm["TemplateMemoryMB"] for vm in view["ActivePool"]), default=0)

    assert template_mb(fleet(server)) >= 256, fleet(server)["ActivePool"]
    lam.delete_function(FunctionName="snappy")
    wait_fleet(server, lambda view: template_mb(view) < 256, timeout=20,
               what="the SnapStart template's memory to be given back")
