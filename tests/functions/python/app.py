"""Ember's Python test function (handler ``app.handler``), mirroring tests/functions/rust-hello.

The event says what to do (the first key that matches wins): ``{"echo": X}``, ``{"fail": "msg"}``,
``{"sleep_ms": N}``, ``{"alloc_mb": N}``, ``{"exit": code}``, ``{"env": true}``,
``{"read": "/path"}``, ``{"write": "/path"}``, ``{"print": "text"}``, ``{"cgroup": true}``,
``{"nofile": true}``, ``{"sched": true}``, ``{"remaining": true}``, ``{"burn_ms": N}``,
``{"noop": true}`` or ``{}``.

``INIT_SLEEP_MS`` in its environment makes its init (the module's import) take that long;
``INIT_BURN_MS`` makes it use that much CPU time (CPU-bound work, which the CPU quota slows).
"""

import os
import resource
import socket
import sys
import time
import uuid

# Different in every execution environment: tells a warm container from a new one.
INSTANCE = str(uuid.uuid4())

# A slow init, on request: Lambda's Init phase is what runs at import.
time.sleep(int(os.environ.get("INIT_SLEEP_MS", "0")) / 1000)


def burn(ms):
    """CPU-bound work: ``ms`` milliseconds of this process's CPU time."""
    end = time.process_time() + ms / 1000
    while time.process_time() < end:
        pass


burn(int(os.environ.get("INIT_BURN_MS", "0")))


class HelloFailure(Exception):
    """Raised for ``{"fail": ...}``; Lambda reports it as errorType "HelloFailure"."""


def cgroup_memory_limit():
    """The container's memory limit in bytes, from its own cgroup at /sys/fs/cgroup (v1, else
    v2), or None if neither file can be read as a number."""
    for path in ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"):
        try:
            with open(path) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            continue
    return None


def handler(event, context):
    if not isinstance(event, dict):
        event = {}

    if "echo" in event:
        return {
            "echo": event["echo"],
            "memory": int(context.memory_limit_in_mb),
            "function": context.function_name,
            "request_id": context.aws_request_id,
        }
    if "fail" in event:
        raise HelloFailure(str(event["fail"]))
    if "sleep_ms" in event:
        ms = int(event["sleep_ms"])
        time.sleep(ms / 1000)
        return {"slept_ms": ms}
    if "burn_ms" in event:
        burn(int(event["burn_ms"]))
        return {"burned_ms": int(event["burn_ms"])}
    if "alloc_mb" in event:
        mb = int(event["alloc_mb"])
        block = bytearray(mb << 20)
        # Touch every page so the memory is really resident, not just reserved.
        for i in range(0, len(block), 4096):
            block[i] = 1
        return {"alloc_mb": mb, "pages": len(block) // 4096}
    if "exit" in event:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(event["exit"]))
    if event.get("env") is True:
        return dict(os.environ)
    if event.get("remaining") is True:
        return {"remaining_ms": context.get_remaining_time_in_millis()}
    if event.get("sched") is True:
        return {"policy": os.sched_getscheduler(0)}
    if event.get("nofile") is True:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard * 2, hard * 2))
            raised = True
        except (ValueError, OSError):
            raised = False
        return {"soft": soft, "hard": hard, "raised": raised}
    if "read" in event:
        try:
            with open(event["read"], "rb") as f:
                head = f.read(200)
            return {"ok": True, "content": head.decode("utf-8", errors="replace")}
        except OSError as e:
            return {"ok": False, "error": str(e)}
    if "write" in event:
        try:
            with open(event["write"], "w") as f:
                f.write("written by app.py\n")
            return {"ok": True}
        except OSError as e:
            return {"ok": False, "error": str(e)}
    if "print" in event:
        text = str(event["print"])
        print(text)
        print(text, file=sys.stderr)
        return {"printed": text}
    if event.get("client_context") is True:
        cc = context.client_context
        return {"custom": cc.custom if cc else None, "env": cc.env if cc else None}
    if event.get("instance") is True:
        return {"instance": INSTANCE}
    if event.get("whoami") is True:
        return {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid()}
    if event.get("pids") is True:
        return {"pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
    if "listdir" in event:
        try:
            return {"ok": True, "entries": sorted(os.listdir(event["listdir"]))}
        except OSError as e:
            return {"ok": False, "error": str(e)}
    if "connect" in event:
        host, port = event["connect"].rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return {"ok": True}
        except OSError as e:
            return {"ok": False, "error": str(e)}
    if "fork_bomb" in event:
        # Fork until the kernel refuses, then report how many children were made.
        children = []
        error = None
        for _ in range(int(event["fork_bomb"])):
            try:
                pid = os.fork()
            except OSError as e:
                error = str(e)
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        return {"children": len(children), "error": error}
    if event.get("mount") is True:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)
        return {"rc": rc, "errno": ctypes.get_errno()}
    if event.get("cgroup") is True:
        try:
            files = sorted(os.listdir("/sys/fs/cgroup"))
        except OSError:
            files = None
        return {
            "memory_limit_bytes": cgroup_memory_limit(),
            "memory_size_env": os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"),
            "cgroup_files": files,
        }
    # {"noop": true}, {} and anything else.
    return {}
