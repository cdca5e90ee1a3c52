# Ember's Python runtime template: an interpreter with awslambdaric imported, forked into new
# containers. Run by the agent (`ember-agent runtime-template`) as `python3.N -c <enter.py, then
# this file> <exec env names>` (enter.py: the steps of entering a container it shares with the
# SnapStart template), root, in a mount namespace laid out like a container's runtime view, with
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
# (enter.py's `serve_forks` and `enter_and_fork`.)
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
import sys
import traceback
import types

CONTROL = 3
# The order of setns: mnt last (it changes the root the others' fds need not), pid before the
# fork that enters it.
SETNS_ORDER = ("cgroup", "ipc", "uts", "net", "pid", "mnt")
PR_SET_NO_NEW_PRIVS = 38
PR_SET_MM = 35
PR_SET_MM_MAP = 14

# What the interpreter's own start added to the environment it was executed with (PEP 538's
# LC_CTYPE coercion): a fresh start of the same runtime adds the same, since the variables that
# decide it are equal (the agent forks only then).
EXEC_ENV = set(json.loads(sys.argv[1]))
ADDED_AT_START = {k: v for k, v in os.environ.items() if k not in EXEC_ENV}



def drop_privileges(uid, gid):
    """As ember_sandbox::privileges::drop_to: bounding and ambient sets, groups, gid, uid, the
    remaining sets, no_new_privs."""
    drop_bounding_and_ambient()
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    clear_capabilities()
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    # Changing uid cleared the dumpable flag, which an exec would set again: without it the
    # runtime could not read its own /proc/self/{environ,fd,...}.
    check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")


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
    # Every other descriptor goes: the template's control socket, the namespaces, the cgroup.
    take_descriptors(fds, pipe)
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
    """The first child (enter.py's `enter_and_fork`), with the runtime as `runtime`. Never
    returns."""
    fds, procs = split_roles(roles, fds_list)
    enter_and_fork(CONTROL, fds, procs, pipe, SETNS_ORDER, runtime)


def serve():
    control = socket.socket(fileno=CONTROL)
    # The top-level modules it holds: a function whose code or layers hold one of them would
    # import its own in a fresh start, so the agent does not fork it from here.
    modules = sorted({name.split(".")[0] for name in sys.modules})
    os.write(CONTROL, (json.dumps({"ready": True, "modules": modules}) + "\n").encode())
    # Returns when the agent closes the channel, or when the stream is out of step (the agent
    # then starts a new template); the runtimes it forks never return.
    serve_forks(control, CONTROL, enter)


def source_says(module, test):
    """`test(tree)` on a module's parsed source. False for a module with no `.py` source;
    conservative, True, for one whose source cannot be read or parsed."""
    path = getattr(module, "__file__", None) or ""
    if not path.endswith(".py"):
        return False
    try:
        with open(path) as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return True
    return test(tree)


def reads_env_at_import(module):
    """Whether a module's import-time code (anything outside function bodies) names the
    environment. Conservative: a module whose source cannot be read counts."""
    return source_says(module, names_environment_at_import)


def names_environment_at_import(tree):
    """Whether a parsed module's import-time code names the environment."""
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
    """Whether `module` binds names from one of `targets` (`from .x import y`). Conservative: a
    module whose source cannot be read counts."""
    package = module.__name__.rpartition(".")[0] if not hasattr(module, "__path__") else module.__name__
    return source_says(module, lambda tree: binds_from(tree, package, targets))


def binds_from(tree, package, targets):
    """Whether a parsed module of `package` binds names from one of `targets`."""
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
