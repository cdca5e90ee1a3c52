# Ember's SnapStart template launcher: runs awslambdaric exactly as `python -m awslambdaric
# <handler>` would, with AWS_LAMBDA_INITIALIZATION_TYPE=snap-start, after registering one
# before-snapshot hook. Registered first, the hook runs last (awslambdaric pops the hooks from
# the end), after the function's own: it is the snapshot. Run by the agent as the runtime of a
# template container (`python3.N -c <enter.py, then this file> <handler>`; enter.py: the steps of
# entering a container it shares with the runtime template), under the function's uid, with no
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
# (enter.py's `serve_forks` and `enter_and_fork`.)
import gc
import json
import os
import runpy
import socket
import sys

import snapshot_restore_py

CHANNEL = 3
# The user namespace first: it is what gives the capabilities to enter the others (its owner is
# this process's uid); mnt last.
SETNS_ORDER = ("user", "cgroup", "ipc", "uts", "net", "pid", "mnt")


def drop_capabilities():
    """Every capability the user namespace gave: bounding and ambient sets, then the rest. The
    uid, gid and groups stay the template's (the function's)."""
    drop_bounding_and_ambient()
    clear_capabilities()
    # Entering the user namespace cleared the dumpable flag; a fresh start's runtime has it.
    check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")


def become(spec, fds, pipe):
    """The new environment's runtime, re-parented to its PID 1: takes its descriptors, drops
    the capabilities the user namespace gave, installs the full container filter, takes its
    environment; then the hook returns, and awslambdaric asks the new environment's Runtime API
    for restore/next."""
    # Every other descriptor goes: the fork channel, the namespaces, the cgroup, and whatever
    # the function opened during its init (connections are reopened in after-restore hooks).
    take_descriptors(fds, pipe)
    os.chdir(spec["cwd"])
    drop_capabilities()
    # Last: from here on setns is denied again.
    install_seccomp(spec["seccomp"])
    report(pipe, "ok")
    os.close(pipe)
    os.environ.clear()
    os.environ.update(spec["env"])


def enter(roles, fds_list, pipe):
    """The first child (enter.py's `enter_and_fork`), with the runtime as `become`; a role
    that is neither a namespace, the log nor "procs" is refused. Returns in the runtime only."""
    fds, procs = split_roles(roles, fds_list, known=set(NAMESPACES) | {"log"})
    enter_and_fork(CHANNEL, fds, procs, pipe, SETNS_ORDER, become)


def serve():
    """The snapshot: tells the agent the init is done, then forks environments on request.
    Returns only in a forked environment's runtime."""
    control = socket.socket(fileno=CHANNEL)
    # Everything the init made is moved out of the collector's reach: an environment's
    # collections then do not walk (and so do not copy) the template's objects.
    gc.collect()
    gc.freeze()
    os.write(CHANNEL, (json.dumps({"ready": True}) + "\n").encode())
    served = serve_forks(control, CHANNEL, enter)
    if served == ENDED:
        os._exit(0)
    if served == OUT_OF_STEP:
        # The agent gives this template up.
        os._exit(1)


snapshot_restore_py.register_before_snapshot(serve)
# As `python -m awslambdaric <handler>`: the handler is the argument after the module.
sys.argv = ["awslambdaric"] + sys.argv[1:]
runpy.run_module("awslambdaric", run_name="__main__", alter_sys=True)
