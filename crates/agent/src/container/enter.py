# Ember's steps of entering a container from a forking template, shared by the runtime template
# (template.py) and the SnapStart template (snap_template.py). Not a module of its own: the agent
# puts this text before each of the two scripts when it embeds them (container/template.rs and
# container/snap.rs, `concat!`), so each runs it as the start of its one `-c` program, with that
# script's own privileges. It holds only what both scripts did alike: nothing here gives either
# more than it had itself.
#
# The fork protocol both serve on their channel (fd 3), one request at a time:
#   agent -> template: u32 length, a JSON header {"fds": [role, ...]} with the descriptors it
#                      names attached (SCM_RIGHTS); then u32 length, the JSON launch spec, read
#                      by the forked child only (so no later fork inherits an environment's
#                      variables).
#   template -> agent: one JSON line, {"pid": <the runtime's pid in its PID namespace>} or
#                      {"error": "..."}; nothing of the container runs after an error.
import ctypes
import json
import os
import socket
import struct
import sys

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


def drop_bounding_and_ambient():
    """Empties the bounding and ambient capability sets."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "dropping capability %d" % cap)
    check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "ambient capabilities")


def clear_capabilities():
    """Empties the effective, permitted and inheritable capability sets."""
    header = CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (CapData * 2)()
    check(libc.capset(ctypes.byref(header), data), "clearing capabilities")


def install_seccomp(programs):
    for program in programs:
        code = bytes.fromhex(program)
        buf = ctypes.create_string_buffer(code, len(code))
        prog = SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
        check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp")


def take_descriptors(fds, pipe):
    """The runtime's session and descriptors: a new session, stdin /dev/null, stdout and stderr
    the container's log; every other descriptor but `pipe` goes."""
    os.setsid()
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(fds["log"], 1)
    os.dup2(fds["log"], 2)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != pipe:
            try:
                os.close(fd)
            except OSError:
                pass  # the directory's own descriptor, closed already


def split_roles(roles, fds_list, known=None):
    """A request's descriptors by role: the `cgroup.procs` files (role "procs"), and the others
    by their role; with `known`, a role neither "procs" nor in it is refused."""
    fds = {}
    procs = []
    for role, fd in zip(roles, fds_list):
        if role == "procs":
            procs.append(fd)
        elif known is None or role in known:
            fds[role] = fd
        else:
            raise Failed("unknown role %r" % role)
    return fds, procs


def enter_and_fork(channel, fds, procs, pipe, setns_order, become):
    """The first child: joins the container's cgroup, reads the spec from `channel`, enters the
    namespaces in `setns_order` and forks twice, so that the runtime's parent exits inside the
    container's PID namespace and the runtime is re-parented to the container's PID 1; the
    runtime calls `become(spec, fds, pipe)`. Returns in the runtime only, if `become` does."""
    # The cgroup first: every page this process touches from here on is the container's.
    for fd in procs:
        os.write(fd, b"0")
    (n,) = struct.unpack(">I", read_exact(channel, 4))
    spec = json.loads(read_exact(channel, n))
    report(pipe, "spec")
    for name in setns_order:
        check(libc.setns(fds[name], NAMESPACES[name]), "setns %s" % name)
    child = os.fork()
    if child == 0:
        # In the container's PID namespace, with a pid past a fresh start's (its PID 1 moved the
        # counter): the runtime gets the pid a fresh start's runtime has.
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
    # The go-between has exited, so the runtime is its PID 1's child now: only then may the
    # agent tell PID 1 to wait for it (before, PID 1 would find no child at all).
    report(pipe, "parted")
    os._exit(0)


# What `serve_forks` returns.
ENDED = "ended"  # the agent closed the channel
OUT_OF_STEP = "out of step"  # a spec was left unread in the channel: the template must go
IN_RUNTIME = "runtime"  # in a forked runtime, whose `become` returned


def serve_forks(control, channel, enter):
    """Serves fork requests on `channel` (`control` is its socket): for each, forks a child that
    runs `enter(roles, fds_list, pipe)` and answers the agent with what the child reports.
    Returns ENDED or OUT_OF_STEP in the template, IN_RUNTIME in a runtime if `enter` returns."""
    while True:
        msg, anc, _flags, _addr = control.recvmsg(4, socket.CMSG_SPACE(64 * 4))
        if not msg:
            return ENDED
        fds_list = []
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds_list.extend(struct.unpack("%di" % (len(data) // 4), data[: len(data) - len(data) % 4]))
        if len(msg) < 4:
            msg += read_exact(channel, 4 - len(msg))
        (n,) = struct.unpack(">I", msg)
        header = json.loads(read_exact(channel, n))
        roles = header["fds"]
        sys.stdout.flush()
        sys.stderr.flush()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            # The socket object lets go of the channel (the runtime closes it with the rest):
            # were it collected later, it would close whatever that descriptor is by then.
            control.detach()
            try:
                if len(roles) != len(fds_list):
                    raise Failed("%d descriptors for %d roles" % (len(fds_list), len(roles)))
                enter(roles, fds_list, w)
                return IN_RUNTIME
            except BaseException as e:
                try:
                    report(w, "error " + repr(e))
                finally:
                    os._exit(1)
        os.close(w)
        for fd in fds_list:
            os.close(fd)
        # Answered once the runtime said "ok" and its go-between parent has exited (or anything
        # failed); the first child's exit is collected after.
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
        os.write(channel, (json.dumps(answer) + "\n").encode())
        while os.read(r, 4096):
            pass
        os.close(r)
        os.waitpid(pid, 0)
        if "spec" not in lines:
            # The spec is still in the socket: the stream is out of step.
            return OUT_OF_STEP
