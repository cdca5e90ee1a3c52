// Ember's Node.js runtime template: a Node.js with aws-lambda-ric imported, forked into new
// containers. Run by the agent (`ember-agent runtime-template`) as root, in a mount namespace
// laid out like a container's runtime view, with its control socket as fd 3:
//   /var/lang/bin/node <the fresh start's flags> /var/task/.ember-runtime-template.mjs
// (a module file, as the fresh start's entry is: `-e` would leave globals and options behind).
// It runs no function code. The forking is the addon's (in /var/runtime,
// built at provisioning); see the agent's container/node_template.rs and ARCHITECTURE.md
// ("Runtime templates") for the design and its security argument. The protocol on fd 3 is
// template.py's: a header with the container's descriptors, a launch spec read by the child
// only, one JSON answer line.
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import v8 from "node:v8";

const CONTROL = 3;
const RUNTIME_DIR = "/var/runtime";
const ENTRY = RUNTIME_DIR + "/index.mjs";
// <linux/sched.h>; the order of setns: mnt last, pid before the forks that enter it.
const NAMESPACES = [
  ["cgroup", 0x02000000],
  ["ipc", 0x08000000],
  ["uts", 0x04000000],
  ["net", 0x40000000],
  ["pid", 0x20000000],
  ["mnt", 0x00020000],
];
// <sys/resource.h>
const RLIMITS = { RLIMIT_NOFILE: 7, RLIMIT_NPROC: 6, RLIMIT_CORE: 4, RLIMIT_STACK: 3 };

const runtimeRequire = createRequire(ENTRY);
const addon = runtimeRequire(RUNTIME_DIR + "/ember-template-2.node");

// Everything a function's runtime loads at its start, loaded once here, under the URLs the
// entry's own `import "aws-lambda-ric"` resolves to (so the entry finds them loaded): the
// client and its native part.
const ric = runtimeRequire.resolve("aws-lambda-ric");
await import(pathToFileURL(ric).href);
for (const native of ["rapid-client.node", "../build/Release/rapid-client.node"]) {
  try {
    createRequire(ric)(native);
    break;
  } catch {
    // Not at this place in this version of the client.
  }
}

// Returns in each forked child, never in the template.
const child = addon.serve(CONTROL, JSON.stringify({ ready: true, modules: [] }) + "\n");
let spec;
let pid;
try {
  spec = JSON.parse(child.spec);
  const fds = {};
  child.roles.forEach((role, i) => {
    if (role !== "procs") fds[role] = child.fds[i];
  });
  const namespaces = NAMESPACES.map(([name, type]) => {
    if (fds[name] === undefined) throw new Error(`no ${name} namespace`);
    return [type, fds[name]];
  });
  if (fds.log === undefined) throw new Error("no log pipe");
  const rlimits = Object.entries(spec.rlimits).map(([name, [soft, hard]]) => {
    if (RLIMITS[name] === undefined) throw new Error(`unknown limit ${name}`);
    return [RLIMITS[name], soft, hard];
  });
  pid = addon.enter(child.pipe, namespaces, {
    uid: spec.uid,
    gid: spec.gid,
    cwd: spec.cwd,
    argv: spec.argv,
    env: Object.entries(spec.env).map(([k, v]) => `${k}=${v}`),
    rlimits,
    seccomp: spec.seccomp.map((hex) => Buffer.from(hex, "hex")),
    log: fds.log,
  });
} catch (e) {
  addon.fail(child.pipe, String((e && e.stack) || e));
}

// The runtime: the container's, re-parented to its PID 1, its privileges dropped and its
// seccomp filter installed. The process's state, as `node <flags> /var/runtime/index.mjs`
// would have it: the environment (set by the addon), its pid, cwd, argv and execArgv.
Object.defineProperty(process, "pid", {
  value: pid,
  writable: false,
  enumerable: true,
  configurable: true,
});
// (process.cwd() is cached: the addon's chdir is made again here, so the cache is the spec's.)
process.chdir(spec.cwd);
process.argv.splice(0, process.argv.length, process.execPath, ENTRY);
process.execArgv.splice(0, process.execArgv.length, ...spec.argv.slice(1, -1));
// Math.random's state is per process, seeded on its first use; the template never used it,
// so each runtime seeds its own here, from the kernel's generator (through the addon: Node.js's
// crypto would be loaded for it, which a fresh start does not do).
v8.setFlagsFromString(`--random-seed=${addon.seed()}`);
Math.random();
v8.setFlagsFromString("--random-seed=0");
spec = undefined;
await import(pathToFileURL(ENTRY).href);
