"""Node.js runtime templates, end to end, as root: a Node.js container forked from its VM's
template behaves as one started afresh. Two servers, one with `--runtime-templates true` (Node.js
templates on by default) and one with `false`, run the same probe function; what its runtime
sees is compared field by field, and what needs threads, the event loop, V8's platform workers
and libuv's pool (timers, fs promises, crypto, zlib, DNS, WebAssembly's compilation, a child
process, a worker thread) works in the forked runtime and gives the fresh start's results."""

from __future__ import annotations

import base64
import json
import re
import time

import pytest

from ember_e2e import (ROLE, host_node_runtime, kill_templates_and_check_they_return, make_zip,
                       vm_processes)

pytestmark = pytest.mark.needs_root  # VMs need root; without it the tests fail (conftest.py)

NODE = host_node_runtime()

PROBE = r'''
const fs = require("fs");
const os = require("os");
const crypto = require("crypto");
const { execFile } = require("child_process");
const { Worker } = require("worker_threads");

const zlib = require("zlib");
const dns = require("dns");
const { promisify } = require("util");

// A WebAssembly module: (func (export "add") (param i32 i32) (result i32)), and one of 400
// functions (each "i" returns i * 3 + its argument), big enough for V8 to compile it on its
// platform's worker threads (WebAssembly.compile and instantiate are asynchronous: their
// promises settle only once those threads have run).
const ADD = Uint8Array.from([0, 97, 115, 109, 1, 0, 0, 0, 1, 7, 1, 96, 2, 127, 127, 1, 127, 3, 2,
  1, 0, 7, 7, 1, 3, 97, 100, 100, 0, 0, 10, 9, 1, 7, 0, 32, 0, 32, 1, 106, 11]);
function leb(n) { const out = []; do { let b = n & 0x7f; n >>>= 7; if (n) b |= 0x80; out.push(b); } while (n); return out; }
function section(id, body) { return [id, ...leb(body.length), ...body]; }
function bigModule(n) {
  const types = section(1, [1, 0x60, 1, 0x7f, 1, 0x7f]);
  const funcs = section(3, [...leb(n), ...Array(n).fill(0)]);
  const exports = [];
  const bodies = [];
  for (let i = 0; i < n; i++) {
    const name = [...Buffer.from(String(i))];
    exports.push(name.length, ...name, 0, ...leb(i));
    // local.get 0, i32.const i*3, i32.add, end
    const code = [0, 0x20, 0, 0x41, ...sleb(i * 3), 0x6a, 0x0b];
    bodies.push(...leb(code.length), ...code);
  }
  return Uint8Array.from([0, 97, 115, 109, 1, 0, 0, 0, ...types, ...funcs,
    ...section(7, [...leb(n), ...exports]), ...section(10, [...leb(n), ...bodies])]);
}
function sleb(n) { const out = []; for (;;) { const b = n & 0x7f; n >>= 7;
  if ((n === 0 && !(b & 0x40)) || (n === -1 && (b & 0x40))) { out.push(b); return out; } out.push(b | 0x80); } }

// What V8's platform workers and libuv's pool do, asynchronously: the results, to compare with
// a fresh start's.
async function battery() {
  const out = {};
  out.instantiate = (await WebAssembly.instantiate(ADD)).instance.exports.add(2, 3);
  out.compile = (await WebAssembly.instantiate(await WebAssembly.compile(ADD))).exports.add(4, 5);
  out.sync = new WebAssembly.Instance(new WebAssembly.Module(ADD)).exports.add(6, 7);
  const big = await WebAssembly.instantiate(bigModule(400));
  out.big = big.instance.exports["399"](1);
  const streamed = await WebAssembly.instantiateStreaming(
    new Response(ADD, { headers: { "content-type": "application/wasm" } }));
  out.streaming = streamed.instance.exports.add(20, 22);
  let hot = 0;
  for (let i = 0; i < 1e6; i++) hot = big.instance.exports["1"](hot) | 0;
  out.hot = hot;
  out.pbkdf2 = (await promisify(crypto.pbkdf2)("pw", "salt", 1000, 16, "sha256")).toString("hex");
  out.scrypt = (await promisify(crypto.scrypt)("pw", "salt", 16, { N: 1024 })).toString("hex");
  out.gzip = zlib.gunzipSync(await promisify(zlib.gzip)("hello, ".repeat(1000))).length;
  out.deflate = (await promisify(zlib.deflate)("x".repeat(10000))).toString("base64");
  out.fs = (await fs.promises.readFile("/var/runtime/index.mjs", "utf8")).length;
  out.dns = (await dns.promises.lookup("localhost", { family: 4 })).address;
  out.subtle = Buffer.from(await crypto.subtle.digest("SHA-256", Buffer.from("x"))).toString("hex");
  const key = await crypto.subtle.generateKey({ name: "HMAC", hash: "SHA-256" }, true, ["sign"]);
  out.hmac = (await crypto.subtle.sign("HMAC", key, Buffer.from("x"))).byteLength;
  const garbage = [];
  for (let i = 0; i < 1e5; i++) garbage.push({ i, s: "x" + i });
  global.gc();
  out.gc = garbage.length;
  return out;
}

const read = (path) => { try { return fs.readFileSync(path, "utf8"); } catch (e) { return "error: " + e.code; } };
const atInit = { threads: read("/proc/self/status").match(/Threads:\s+(\d+)/)[1] };

function fds() {
  const out = {};
  for (const name of fs.readdirSync("/proc/self/fd")) {
    try { out[name] = fs.readlinkSync("/proc/self/fd/" + name).replace(/\[\d+\]/, "[N]"); } catch {}
  }
  return out;
}

exports.handler = async (event) => {
  if (event.battery) return { battery: await battery() };
  if (event.exit !== undefined) process.exit(event.exit);
  if (event.alloc_mb) {
    const chunks = [];
    for (let i = 0; i < event.alloc_mb; i++) chunks.push(Buffer.alloc(1 << 20, 1));
    return { allocated: chunks.length };
  }
  const status = {};
  for (const line of read("/proc/self/status").split("\n")) {
    const [key, value] = line.split(":");
    if (["Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs",
         "Seccomp", "Seccomp_filters"].includes(key)) status[key] = value.trim();
  }
  const memoryLimit = fs.existsSync("/sys/fs/cgroup/memory.max")
    ? read("/sys/fs/cgroup/memory.max").trim()
    : read("/sys/fs/cgroup/memory/memory.limit_in_bytes").trim();
  const limits = read("/proc/self/limits").split("\n").filter((l) => /open files|processes/.test(l));
  // What needs the event loop, libuv's pool, other processes and threads.
  const timer = await new Promise((ok) => setTimeout(() => ok("fired"), 5));
  const file = (await fs.promises.readFile("/var/runtime/index.mjs", "utf8")).length > 0;
  const pbkdf2 = await new Promise((ok, fail) =>
    crypto.pbkdf2("secret", "salt", 1000, 16, "sha256", (e, k) => (e ? fail(e) : ok(k.toString("hex")))));
  const child = await new Promise((ok, fail) =>
    execFile("/bin/sh", ["-c", "echo $$ child"], (e, out) => (e ? fail(e) : ok(out.trim().split(" ")[1]))));
  const worker = await new Promise((ok, fail) => {
    const w = new Worker("require('worker_threads').parentPort.postMessage(6 * 7)", { eval: true });
    w.once("message", ok);
    w.once("error", fail);
  });
  const wasm = await WebAssembly.instantiate(new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0]));
  return {
    environ: { ...process.env },
    proc_environ: read("/proc/self/environ").split("\0").filter((x) => x).sort(),
    cmdline: read("/proc/self/cmdline").split("\0"),
    argv: process.argv,
    argv0: process.argv0,
    execArgv: process.execArgv,
    execPath: process.execPath,
    title: process.title,
    cwd: process.cwd(),
    pid: process.pid,
    ppid: process.ppid,
    pids: fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p)).map(Number).sort((a, b) => a - b),
    pid1_comm: read("/proc/1/comm").trim(),
    status,
    fds: fds(),
    limits,
    umask: process.umask(),
    memory_limit: memoryLimit,
    cgroup: read("/proc/self/cgroup"),
    heap_limit_mb: Math.round(require("v8").getHeapStatistics().heap_size_limit / 1048576),
    uptime: process.uptime(),
    perf_now: performance.now(),
    origin_skew_ms: Math.abs(performance.timeOrigin + performance.now() - Date.now()),
    random: Math.random(),
    uuid: crypto.randomUUID(),
    hostname: os.hostname(),
    timer, file, pbkdf2, child, worker, wasm: typeof wasm.instance,
    threads_at_init: atInit.threads,
    // The template's addon is mapped only in a runtime forked from it.
    globals: Object.getOwnPropertyNames(globalThis).sort(),
    forked: /ember-template[-\w]*\.node/.test(read("/proc/self/maps")),
  };
};
'''

PROBE_ZIP = make_zip({"index.js": PROBE})


@pytest.fixture(scope="module")
def servers(module_server_factory):
    """`{True: a server with runtime templates, False: one without}`."""
    assert NODE is not None, "these tests need Node.js 18+ on PATH (CI has Node.js 20)"
    return {
        # Node.js templates are on by default.
        True: module_server_factory(None, "--runtime-templates", "true"),
        False: module_server_factory(None, "--runtime-templates", "false"),
    }


def lam(server):
    return server.lambda_client(server.admin_keys())


def invoke(server, name, event=None):
    """Invokes `name`; returns (payload, REPORT's max memory used in MB, function error)."""
    r = lam(server).invoke(FunctionName=name, Payload=json.dumps(event or {}).encode(),
                           LogType="Tail")
    payload = json.loads(r["Payload"].read())
    tail = base64.b64decode(r.get("LogResult", "")).decode(errors="replace")
    used = re.search(r"Max Memory Used: (\d+) MB", tail)
    return payload, int(used.group(1)) if used else None, r.get("FunctionError")


def probe(server, name, memory=128, **extra):
    lam(server).create_function(
        FunctionName=name, Runtime=NODE, Role=ROLE, Handler="index.handler",
        Code={"ZipFile": PROBE_ZIP}, MemorySize=memory, Timeout=30, **extra)
    payload, used, error = invoke(server, name)
    assert error is None, payload
    return payload, used


def forked_probe(server, name, **extra):
    """Probes new functions on the templates server until one's first container is forked (the
    VM's first container of the runtime starts the ordinary way and asks for the template)."""
    deadline = time.monotonic() + 90
    attempt = 0
    while True:
        payload, used = probe(server, f"{name}-{attempt}", **extra)
        if payload["forked"]:
            return payload, used, f"{name}-{attempt}"
        assert time.monotonic() < deadline, "no container was forked from a template in 90 s"
        attempt += 1
        time.sleep(0.5)


# Per container or per invocation by design, in Lambda as in a fresh start.
PER_CONTAINER = {"AWS_LAMBDA_LOG_STREAM_NAME", "_X_AMZN_TRACE_ID", "AWS_LAMBDA_FUNCTION_NAME",
                 "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN",
                 # Per server (the two compared run on two): its API on its VMs' gateway.
                 "AWS_ENDPOINT_URL_LAMBDA"}
SAME = ["globals", "environ", "proc_environ", "cmdline", "argv", "argv0", "execArgv", "execPath", "title",
        "cwd", "pid", "ppid", "pids", "pid1_comm", "status", "stdio", "limits", "umask",
        "memory_limit", "heap_limit_mb", "hostname", "timer", "file", "pbkdf2", "child", "worker",
        "wasm"]


def kinds(fds):
    """What a runtime's descriptors beyond stdio are (their numbers and count differ: an exec'd
    Node.js also has its V8 worker threads' event loops)."""
    return {target for fd, target in fds.items() if int(fd) > 2}


def comparable(p):
    p = {**p, "stdio": {fd: p["fds"][fd] for fd in "012"}}
    out = {key: p[key] for key in SAME}
    out["environ"] = {k: v for k, v in p["environ"].items() if k not in PER_CONTAINER}
    out["proc_environ"] = [x for x in p["proc_environ"] if x.split("=", 1)[0] not in PER_CONTAINER]
    return out


def test_a_forked_runtime_sees_what_a_fresh_one_sees(servers):
    fresh, _ = probe(servers[False], "same-fresh")
    assert not fresh["forked"], "a server without templates forked a runtime"
    forked, _, _ = forked_probe(servers[True], "same-forked")
    # The environment as Node.js and /proc show it; the command line, argv and execArgv (the
    # fresh start's flags, not the template's); the /proc view (the container's own processes,
    # PID 1 its init, the runtime its child, pid 2); uid/gid with no capabilities,
    # no_new_privs and the seccomp filter; the open descriptors; limits, umask, the cgroup, its
    # memory limit and V8's heap limit; timers, fs promises, crypto on libuv's pool, a child
    # process, a worker thread and WebAssembly all work.
    a, b = comparable(fresh), comparable(forked)
    for key in a:
        assert a[key] == b[key], f"{key} differs:\nfresh:  {a[key]}\nforked: {b[key]}"
    assert forked["ppid"] == 1 and forked["pids"][:2] == [1, forked["pid"]], forked["pids"]
    # Each environment has credentials of its own, forked or not.
    assert fresh["environ"]["AWS_SESSION_TOKEN"] != forked["environ"]["AWS_SESSION_TOKEN"]
    for p in (fresh, forked):
        assert re.fullmatch(r"http://10\.213\.\d+\.1:\d+", p["environ"]["AWS_ENDPOINT_URL_LAMBDA"])
    assert forked["status"]["CapEff"] == "0000000000000000"
    assert forked["status"]["CapBnd"] == "0000000000000000"
    assert forked["status"]["NoNewPrivs"] == "1"
    assert forked["status"]["Seccomp"] == "2"
    assert forked["worker"] == 42 and forked["timer"] == "fired" and forked["file"]
    # No descriptor of the template's: only kinds an exec'd Node.js has too (its event loop's
    # epoll instance, eventfd and pipes, the Runtime API's socket).
    assert kinds(forked["fds"]) <= kinds(fresh["fds"]), (forked["fds"], fresh["fds"])
    # A process of its own age, not the template's: uptime and the time origin are its own.
    assert forked["uptime"] < 5, forked["uptime"]
    assert forked["perf_now"] < 5000, forked["perf_now"]
    assert forked["origin_skew_ms"] < 50, forked["origin_skew_ms"]
    # Threads: V8's platform workers (started again in the runtime) and libuv's pool (started
    # on first use) as in the fresh start; only the inspector's SIGUSR1 thread is missing.
    assert int(forked["threads_at_init"]) == int(fresh["threads_at_init"]) - 1, (
        forked["threads_at_init"], fresh["threads_at_init"])


def test_a_forked_runtime_runs_webassembly_and_libuvs_pool_as_a_fresh_one(servers):
    """WebAssembly compiled asynchronously (on V8's platform workers, which a forked runtime
    starts again), streamed, synchronously, and hot enough to tier up; crypto, zlib, fs and DNS
    on libuv's pool; Web Crypto; a full garbage collection: the same results as a fresh start,
    in a forked runtime (twice: nothing is left waiting)."""
    probe(servers[False], "wasm-fresh")
    fresh, _, error = invoke(servers[False], "wasm-fresh", {"battery": True})
    assert error is None, fresh
    _, _, name = forked_probe(servers[True], "wasm-forked")
    forked, _, error = invoke(servers[True], name, {"battery": True})
    assert error is None, forked
    expected = {
        "instantiate": 5, "compile": 9, "sync": 13, "big": 399 * 3 + 1, "streaming": 42,
        "hot": 1_000_000 * 3, "pbkdf2": "0a38253555ce37f5c72a6b703f996814", "dns": "127.0.0.1",
        "subtle": "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
        "hmac": 32, "gzip": 7000, "gc": 100_000,
    }
    for key, value in expected.items():
        assert forked["battery"][key] == value, (key, forked["battery"])
    assert forked["battery"] == fresh["battery"]
    # Again in the same runtime: nothing was left waiting.
    again, _, error = invoke(servers[True], name, {"battery": True})
    assert error is None, again
    assert again["battery"] == fresh["battery"]


def test_a_forked_runtime_that_exits_ends_as_a_fresh_one(servers):
    """`process.exit` in a forked runtime ends it with a fresh start's `Runtime.ExitError` (on
    its way out Node.js joins V8's platform workers: the runtime's own, restarted ones; the
    template's, which do not exist in it, would be waited for forever)."""
    probe(servers[False], "exit-fresh")
    _, _, name = forked_probe(servers[True], "exit-forked")
    for server, function in ((servers[False], "exit-fresh"), (servers[True], name)):
        started = time.monotonic()
        payload, _, error = invoke(server, function, {"exit": 3})
        assert error == "Unhandled", payload
        assert payload["errorType"] == "Runtime.ExitError", payload
        assert "exit status 3" in payload["errorMessage"], payload
        assert time.monotonic() - started < 10


def test_forked_containers_do_not_share_random_state(servers):
    one, _, _ = forked_probe(servers[True], "random-a")
    two, _, _ = forked_probe(servers[True], "random-b")
    assert one["random"] != two["random"]
    assert one["uuid"] != two["uuid"]


def test_a_template_follows_the_memory_size(servers):
    """A template serves one memory size (V8's heap limits are set when it starts): a container
    of another size starts afresh and has the template started again for it."""
    forked_probe(servers[True], "size-128")
    forked, _, _ = forked_probe(servers[True], "size-1024", memory=1024)
    fresh, _ = probe(servers[False], "size-1024-fresh", memory=1024)
    assert forked["execArgv"] == fresh["execArgv"] == [
        "--expose-gc", "--max-semi-space-size=51", "--max-old-space-size=922"]
    assert forked["heap_limit_mb"] == fresh["heap_limit_mb"]


def test_the_memory_limit_holds_and_the_templates_memory_is_not_counted(servers):
    _, fresh_used = probe(servers[False], "memory-fresh")
    forked, forked_used, name = forked_probe(servers[True], "memory-forked")
    assert forked["memory_limit"] == str(128 << 20)
    assert fresh_used is not None and forked_used is not None
    assert forked_used < fresh_used, (forked_used, fresh_used)
    # Beyond MemorySize: the container's cgroup kills it, as in a fresh start.
    payload, _, error = invoke(servers[True], name, {"alloc_mb": 200})
    assert error is not None and payload["errorType"] == "Runtime.OutOfMemory", payload


def test_a_function_that_changes_nodes_start_starts_afresh(servers):
    forked_probe(servers[True], "plain")
    # Never forked. The agent says why, naming its VM: NODE_OPTIONS, once the container lands
    # on a VM whose template is ready for its memory size (a VM new to the account may have
    # none yet, or one for another size, which it says first): retried with new functions.
    for attempt in range(10):
        payload, _ = probe(servers[True], f"node-options-{attempt}",
                           Environment={"Variables": {"NODE_OPTIONS": "--max-http-header-size=32768"}})
        assert not payload["forked"]
        assert payload["environ"]["NODE_OPTIONS"] == "--max-http-header-size=32768"
        reasons = [line for line in servers[True].log_text().splitlines()
                   if "starts the ordinary way" in line and "NODE_OPTIONS" in line
                   and f"function=node-options-{attempt}" in line]
        if reasons:
            break
        time.sleep(0.5)
    assert reasons and "vm_id=" in reasons[-1], servers[True].log_text()[-2000:]


def template_pids(server) -> dict[int, str]:
    """The server's Node.js templates (`node` running the template's script), each with its VM."""
    return vm_processes(server, lambda argv: argv[0] == b"/var/lang/bin/node"
                        and any(a.endswith(b"/.ember-runtime-template.mjs") for a in argv))


def test_a_dead_template_is_started_again_by_its_vm(servers):
    """A killed template is started again by its VM as soon as it dies; a container created
    meanwhile starts the ordinary way, and works."""
    kill_templates_and_check_they_return(servers[True], template_pids, probe, forked_probe)


def test_no_template_without_the_flag(servers):
    server = servers[False]
    for i in range(2):
        payload, _ = probe(server, f"never-forked-{i}")
        assert not payload["forked"]
    assert template_pids(server) == {}


def test_the_templates_memory_is_published(servers):
    from ember_e2e import send
    forked_probe(servers[True], "rss")
    body = send("GET", f"{servers[True].endpoint}/metrics").body.decode()
    line = next(l for l in body.splitlines()
                if l.startswith(f'ember_runtime_template_rss_mb{{runtime="{NODE}"}}'))
    assert 5 <= float(line.split()[-1]) <= 120, line


def test_node_templates_can_be_turned_off(server_factory):
    """`--node-runtime-templates false` keeps Python templates only: Node.js functions start
    afresh, and no VM runs a Node.js template."""
    server = server_factory(None, "--runtime-templates", "true", "--node-runtime-templates", "false")
    for i in range(3):
        payload, _ = probe(server, f"opt-in-{i}")
        assert not payload["forked"]
        time.sleep(0.5)
    assert template_pids(server) == {}
