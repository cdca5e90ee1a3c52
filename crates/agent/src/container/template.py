# Ember's Python runtime template: an interpreter with awslambdaric imported, forked into new
# containers. Run by the agent (`ember-agent runtime-template`) as `python3.N -c <this file>
# <exec env names>`, root, in a mount namespace laid out like a container's runtime view, with
# its control socket as fd 3. It runs no function code: see the agent's container/template.rs
# and ARCHITECTURE.md ("Runtime templates") for the design and its security argument.
#
# One request at a time on fd 3:
#   agent -> template: u32 length, a JSON header {"fds": [role, ...]} with the descriptors it
#                      names attached (SCM_RIGHTS); then u32 length, the JSON launch spec.
#   The template reads only the header, forks, and lets the child read the spec: the spec (the
#   function's environment) never enters the template's memory, so no later fork inherits it.
#   template -> agent: one JSON line, {"pid": <the runtime's pid in its PID namespace>} or
#                      {"error": "..."}; nothing of the container runs after an error.
import ast
import builtins
import ctypes
import gc
import importlib
import json
import os
import random
import resource
import runpy
import site
import socket
import struct
import sys
import traceback
import types

CONTROL = 3
# <linux/sched.h>
NAMESPACES = {
    "cgroup": 0x02000000,
    "ipc": 0x08000000,
    "uts": 0x04000000,
    "net": 0x40000000,
    "pid": 0x20000000,
    "mnt": 0x00020000,
}
# The order of setns: mnt last (it changes the root the others' fds need not), pid before the
# fork that enters it.
SETNS_ORDER = ("cgroup", "ipc", "uts", "net", "pid", "mnt")
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_MM = 35
PR_SET_MM_MAP = 14
LINUX_CAPABILITY_VERSION_3 = 0x20080522

libc = ctypes.CDLL(None, use_errno=True)

# What the interpreter's own start added to the environment it was executed with (PEP 538's
# LC_CTYPE coercion): a fresh start of the same runtime adds the same, since the variables that
# decide it are equal (the agent forks only then).
EXEC_ENV = set(json.loads(sys.argv[1]))
ADDED_AT_START = {k: v for k, v in os.environ.items() if k not in EXEC_ENV}


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


def drop_privileges(uid, gid):
    """As ember_sandbox::privileges::drop_to: bounding and ambient sets, groups, gid, uid, the
    remaining sets, no_new_privs."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "dropping capability %d" % cap)
    check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "ambient capabilities")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    header = CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (CapData * 2)()
    check(libc.capset(ctypes.byref(header), data), "clearing capabilities")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    # Changing uid cleared the dumpable flag, which an exec would set again: without it the
    # runtime could not read its own /proc/self/{environ,fd,...}.
    check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")


def install_seccomp(programs):
    for program in programs:
        code = bytes.fromhex(program)
        buf = ctypes.create_string_buffer(code, len(code))
        prog = SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
        check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp")


# Kept alive for the process's life: /proc/<pid>/cmdline and environ read them.
_proc_view = []


class PrctlMmMap(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "start_code", "end_code", "start_data", "end_data", "start_brk", "brk", "start_stack",
        "arg_start", "arg_end", "env_start", "env_end")] + [
        ("auxv", ctypes.c_void_p), ("auxv_size", ctypes.c_uint32), ("exe_fd", ctypes.c_uint32)]


def set_proc_view(argv, env):
    """Points /proc/self/cmdline and /proc/self/environ at what a fresh exec would show
    (PR_SET_MM_MAP: every other field as it is, the executable kept)."""
    blobs = []
    for strings in (argv, ["%s=%s" % kv for kv in env.items()]):
        blob = b"".join(s.encode() + b"\0" for s in strings)
        buf = ctypes.create_string_buffer(blob, len(blob))
        _proc_view.append(buf)
        blobs.append((ctypes.addressof(buf), ctypes.addressof(buf) + len(blob)))
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    field = lambda n: int(fields[n - 3])  # noqa: E731 (proc(5) numbers them from 1)
    sbrk = libc.sbrk
    sbrk.restype = ctypes.c_void_p
    m = PrctlMmMap()
    m.start_code, m.end_code, m.start_stack = field(26), field(27), field(28)
    m.start_data, m.end_data, m.start_brk = field(45), field(46), field(47)
    (m.arg_start, m.arg_end), (m.env_start, m.env_end) = blobs
    m.auxv, m.auxv_size, m.exe_fd = None, 0, 0xFFFFFFFF
    size = ctypes.sizeof(m)
    m.brk = sbrk(0)
    check(libc.prctl(PR_SET_MM, PR_SET_MM_MAP, ctypes.byref(m), size, 0), "/proc view")


def runtime(spec, fds, pipe):
    """The container's runtime, re-parented to its PID 1: becomes what the ordinary start's
    exec would have made, then runs awslambdaric. Never returns."""
    os.setsid()
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(fds["log"], 1)
    os.dup2(fds["log"], 2)
    # Every other descriptor goes: the template's control socket, the namespaces, the cgroup.
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != pipe:
            try:
                os.close(fd)
            except OSError:
                pass  # the directory's own descriptor, closed already
    for name, (soft, hard) in spec["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    os.umask(0o022)
    os.chdir(spec["cwd"])
    set_proc_view(spec["argv"], spec["env"])
    drop_privileges(spec["uid"], spec["gid"])
    # Last, as for an exec'd runtime: from here on the filter holds.
    install_seccomp(spec["seccomp"])
    report(pipe, "ok")
    os.close(pipe)

    # The interpreter's state, as `python -m awslambdaric <handler>` would have it.
    env = dict(spec["env"])
    for key, value in ADDED_AT_START.items():
        env.setdefault(key, value)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["-m"] + spec["argv"][3:]
    if hasattr(sys, "orig_argv"):
        sys.orig_argv = list(spec["argv"])
    sys.path[0] = os.getcwd()
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
    site.USER_BASE = None
    site.USER_SITE = None
    site.getusersitepackages()
    # Re-seeded: Python's own at-fork hook does it too; this does not depend on it.
    random.seed()
    # Some of awslambdaric's modules read the environment when imported (the log format and
    # level): those, and those that import names from them, are executed again, in import
    # order, under the function's environment ([`RELOAD`]). `python -m` runs awslambdaric's
    # __main__ afresh below.
    sys.modules.pop("awslambdaric.__main__", None)
    for name in RELOAD:
        importlib.reload(sys.modules[name])
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    main.__annotations__ = {}
    sys.modules["__main__"] = main
    try:
        runpy._run_module_as_main("awslambdaric")
    except SystemExit as e:
        code = e.code
        if code is None:
            os._exit(0)
        if isinstance(code, int):
            os._exit(code)
        print(code, file=sys.stderr)
        os._exit(1)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def enter(roles, fds_list, pipe):
    """The first child: joins the container's cgroup, reads the spec, enters the namespaces and
    forks twice, so that the runtime's parent exits inside the container's PID namespace and the
    runtime is re-parented to the container's PID 1. Never returns."""
    fds = {}
    procs = []
    for role, fd in zip(roles, fds_list):
        if role == "procs":
            procs.append(fd)
        else:
            fds[role] = fd
    # The cgroup first: every page this process touches from here on is the container's.
    for fd in procs:
        os.write(fd, b"0")
    (n,) = struct.unpack(">I", read_exact(CONTROL, 4))
    spec = json.loads(read_exact(CONTROL, n))
    report(pipe, "spec")
    for name in SETNS_ORDER:
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
                runtime(spec, fds, pipe)
            except BaseException as e:
                try:
                    report(pipe, "error " + repr(e))
                finally:
                    os._exit(127)
        report(pipe, "pid %d" % runtime_pid)
        os._exit(0)
    os.waitpid(child, 0)
    # The go-between has exited, so the runtime is its PID 1's child now: only then may the
    # agent tell PID 1 to wait for it (before, PID 1 would find no child at all).
    report(pipe, "parted")
    os._exit(0)


def serve():
    control = socket.socket(fileno=CONTROL)
    # The top-level modules it holds: a function whose code or layers hold one of them would
    # import its own in a fresh start, so the agent does not fork it from here.
    modules = sorted({name.split(".")[0] for name in sys.modules})
    os.write(CONTROL, (json.dumps({"ready": True, "modules": modules}) + "\n").encode())
    while True:
        msg, anc, _flags, _addr = control.recvmsg(4, socket.CMSG_SPACE(64 * 4))
        if not msg:
            return
        fds_list = []
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds_list.extend(struct.unpack("%di" % (len(data) // 4), data[: len(data) - len(data) % 4]))
        if len(msg) < 4:
            msg += read_exact(CONTROL, 4 - len(msg))
        (n,) = struct.unpack(">I", msg)
        header = json.loads(read_exact(CONTROL, n))
        roles = header["fds"]
        sys.stdout.flush()
        sys.stderr.flush()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                if len(roles) != len(fds_list):
                    raise Failed("%d descriptors for %d roles" % (len(fds_list), len(roles)))
                enter(roles, fds_list, w)
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
        os.write(CONTROL, (json.dumps(answer) + "\n").encode())
        while os.read(r, 4096):
            pass
        os.close(r)
        os.waitpid(pid, 0)
        if "spec" not in lines:
            # The spec is still in the socket: the stream is out of step; the agent starts a
            # new template.
            return


def reads_env_at_import(module):
    """Whether a module's import-time code (anything outside function bodies) names the
    environment. Conservative: a module whose source cannot be read counts."""
    path = getattr(module, "__file__", None) or ""
    if not path.endswith(".py"):
        return False
    try:
        with open(path) as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return True
    names = ("environ", "environb", "getenv", "getenvb")
    found = []

    class Visitor(ast.NodeVisitor):
        def visit_FunctionDef(self, node):
            # Decorators and defaults run at import; the body does not.
            for child in node.decorator_list + node.args.defaults + [
                d for d in node.args.kw_defaults if d is not None
            ]:
                self.visit(child)

        visit_AsyncFunctionDef = visit_FunctionDef

        def visit_Lambda(self, node):
            pass

        def visit_Name(self, node):
            if node.id in names:
                found.append(node)

        def visit_Attribute(self, node):
            if node.attr in names:
                found.append(node)
            self.generic_visit(node)

    Visitor().visit(tree)
    return bool(found)


def imports_from(module, targets):
    """Whether `module` binds names from one of `targets` (`from .x import y`)."""
    path = getattr(module, "__file__", None) or ""
    if not path.endswith(".py"):
        return False
    try:
        with open(path) as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return True
    package = module.__name__.rpartition(".")[0] if not hasattr(module, "__path__") else module.__name__
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base in targets or any(base + "." + a.name in targets for a in node.names):
                return True
    return False


# Everything a function's runtime would import at its start, imported once here.
import awslambdaric.bootstrap  # noqa: E402,F401
import awslambdaric.__main__  # noqa: E402,F401

OWN = [m for m in sys.modules if m == "awslambdaric" or m.startswith("awslambdaric.")]
OWN.remove("awslambdaric.__main__")
_reload = {m for m in OWN if reads_env_at_import(sys.modules[m])}
while True:
    more = {m for m in OWN if m not in _reload and imports_from(sys.modules[m], _reload)}
    if not more:
        break
    _reload |= more
# In import order: a module after those it imports from.
RELOAD = [m for m in OWN if m in _reload]

# Everything imported so far is moved out of the collector's reach: a forked runtime's
# collections then do not walk (and so do not copy) the template's objects.
gc.collect()
gc.freeze()

serve()
