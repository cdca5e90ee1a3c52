# Ember's SnapStart template launcher: runs awslambdaric exactly as `python -m awslambdaric
# <handler>` would, with AWS_LAMBDA_INITIALIZATION_TYPE=snap-start, after registering one
# before-snapshot hook. Registered first, the hook runs last (awslambdaric pops the hooks from
# the end), after the function's own: it is the snapshot. Run by the agent as the runtime of a
# template container (`python3.N -c <this file> <handler>`), under the function's uid, with no
# capabilities, no_new_privs and the container seccomp filter with setns allowed, and with its
# fork channel to the agent as fd 3. See the agent's container/snap.rs and ARCHITECTURE.md
# ("SnapStart") for the design and its security argument. Everything here runs in a process
# that has run function code: the agent trusts nothing it says and verifies every environment
# from outside.
#
# On fd 3, one request at a time:
#   template -> agent: {"ready": true} once, when the function's init is done.
#   agent -> template: u32 length, a JSON header {"fds": [role, ...]} with the descriptors it
#                      names attached (SCM_RIGHTS); then u32 length, the JSON launch spec, read
#                      by the forked child only (so no later fork inherits an environment's
#                      variables).
#   template -> agent: one JSON line, {"pid": <the runtime's pid in its PID namespace>} or
#                      {"error": "..."}.
import ctypes
import gc
import json
import os
import runpy
import socket
import struct
import sys

import snapshot_restore_py

CHANNEL = 3
# <linux/sched.h>
NAMESPACES = {
    "user": 0x10000000,
    "cgroup": 0x02000000,
    "ipc": 0x08000000,
    "uts": 0x04000000,
    "net": 0x40000000,
    "pid": 0x20000000,
    "mnt": 0x00020000,
}
# The user namespace first: it is what gives the capabilities to enter the others (its owner is
# this process's uid); mnt last.
SETNS_ORDER = ("user", "cgroup", "ipc", "uts", "net", "pid", "mnt")
PR_CAPBSET_DROP = 24
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522

libc = ctypes.CDLL(None, use_errno=True)


class Failed(Exception):
    pass


def check(result, what):
    if result != 0:
        raise Failed("%s: %s" % (what, os.strerror(ctypes.get_errno())))


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def read_exact(fd, n):
    out = b""
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return out


def report(pipe, line):
    os.write(pipe, (line + "\n").encode())


def drop_capabilities():
    """Every capability the user namespace gave: bounding and ambient sets, then the rest. The
    uid, gid and groups stay the template's (the function's)."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "dropping capability %d" % cap)
    check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "ambient capabilities")
    header = CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (CapData * 2)()
    check(libc.capset(ctypes.byref(header), data), "clearing capabilities")
    # Entering the user namespace cleared the dumpable flag; a fresh start's runtime has it.
    check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")


def install_seccomp(programs):
    for program in programs:
        code = bytes.fromhex(program)
        buf = ctypes.create_string_buffer(code, len(code))
        prog = SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
        check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp")


def become(spec, fds, pipe):
    """The new environment's runtime, re-parented to its PID 1: takes its descriptors, drops
    the capabilities the user namespace gave, installs the full container filter, takes its
    environment; then the hook returns, and awslambdaric asks the new environment's Runtime API
    for restore/next."""
    os.setsid()
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(fds["log"], 1)
    os.dup2(fds["log"], 2)
    # Every other descriptor goes: the fork channel, the namespaces, the cgroup, and whatever
    # the function opened during its init (connections are reopened in after-restore hooks).
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != pipe:
            try:
                os.close(fd)
            except OSError:
                pass  # the directory's own descriptor, closed already
    os.chdir(spec["cwd"])
    drop_capabilities()
    # Last: from here on setns is denied again.
    install_seccomp(spec["seccomp"])
    report(pipe, "ok")
    os.close(pipe)
    os.environ.clear()
    os.environ.update(spec["env"])


def enter(roles, fds_list, pipe):
    """The first child: joins the environment's cgroup, reads the spec, enters the namespaces
    and forks twice, so that the runtime's parent exits inside the environment's PID namespace
    and the runtime is re-parented to its PID 1. Returns in the runtime only."""
    fds = {}
    procs = []
    for role, fd in zip(roles, fds_list):
        if role == "procs":
            procs.append(fd)
        elif role in NAMESPACES or role == "log":
            fds[role] = fd
        else:
            raise Failed("unknown role %r" % role)
    for fd in procs:
        os.write(fd, b"0")
    (n,) = struct.unpack(">I", read_exact(CHANNEL, 4))
    spec = json.loads(read_exact(CHANNEL, n))
    report(pipe, "spec")
    for name in SETNS_ORDER:
        check(libc.setns(fds[name], NAMESPACES[name]), "setns %s" % name)
    child = os.fork()
    if child == 0:
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write("1")
        except OSError:
            pass  # best effort: the runtime then has another small pid
        runtime_pid = os.fork()
        if runtime_pid == 0:
            try:
                become(spec, fds, pipe)
            except BaseException as e:
                try:
                    report(pipe, "error " + repr(e))
                finally:
                    os._exit(127)
            return
        report(pipe, "pid %d" % runtime_pid)
        os._exit(0)
    os.waitpid(child, 0)
    report(pipe, "parted")
    os._exit(0)


def serve():
    """The snapshot: tells the agent the init is done, then forks environments on request.
    Returns only in a forked environment's runtime."""
    control = socket.socket(fileno=CHANNEL)
    # Everything the init made is moved out of the collector's reach: an environment's
    # collections then do not walk (and so do not copy) the template's objects.
    gc.collect()
    gc.freeze()
    os.write(CHANNEL, (json.dumps({"ready": True}) + "\n").encode())
    while True:
        msg, anc, _flags, _addr = control.recvmsg(4, socket.CMSG_SPACE(64 * 4))
        if not msg:
            os._exit(0)
        fds_list = []
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds_list.extend(struct.unpack("%di" % (len(data) // 4), data[: len(data) - len(data) % 4]))
        if len(msg) < 4:
            msg += read_exact(CHANNEL, 4 - len(msg))
        (n,) = struct.unpack(">I", msg)
        header = json.loads(read_exact(CHANNEL, n))
        roles = header["fds"]
        sys.stdout.flush()
        sys.stderr.flush()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            # The socket object lets go of fd 3 (the runtime closes it with the rest): were it
            # collected later, it would close whatever fd 3 is by then.
            control.detach()
            try:
                if len(roles) != len(fds_list):
                    raise Failed("%d descriptors for %d roles" % (len(fds_list), len(roles)))
                enter(roles, fds_list, w)
                return
            except BaseException as e:
                try:
                    report(w, "error " + repr(e))
                finally:
                    os._exit(1)
        os.close(w)
        for fd in fds_list:
            os.close(fd)
        out = b""
        while True:
            lines = out.decode(errors="replace").splitlines()
            if ("ok" in lines and "parted" in lines) or any(
                line.startswith("error ") for line in lines
            ):
                break
            chunk = os.read(r, 4096)
            if not chunk:
                break
            out += chunk
        lines = out.decode(errors="replace").splitlines()
        answer = {"error": "the template's child ended without a word"}
        for line in lines:
            if line.startswith("error "):
                answer = {"error": line[6:]}
                break
        else:
            pids = [int(line[4:]) for line in lines if line.startswith("pid ")]
            if pids and "ok" in lines and "parted" in lines:
                answer = {"pid": pids[0]}
        os.write(CHANNEL, (json.dumps(answer) + "\n").encode())
        while os.read(r, 4096):
            pass
        os.close(r)
        os.waitpid(pid, 0)
        if "spec" not in lines:
            # The spec is still in the socket: the stream is out of step; the agent gives this
            # template up.
            os._exit(1)


snapshot_restore_py.register_before_snapshot(serve)
# As `python -m awslambdaric <handler>`: the handler is the argument after the module.
sys.argv = ["awslambdaric"] + sys.argv[1:]
runpy.run_module("awslambdaric", run_name="__main__", alter_sys=True)
