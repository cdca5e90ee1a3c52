//! Node.js runtime templates: what a `nodejsN.x` template and the runtimes forked from it are
//! (the machinery they share with Python's, the slots, the hand-over and the fallback, is
//! [`super::template`]'s; see ARCHITECTURE.md, "Runtime templates", for the security argument).
//!
//! A Node.js process cannot fork from JavaScript and is never single-threaded, so the fork is
//! done by a small N-API addon ([`ADDON`] in the runtime directory, built by
//! `ember-runtimes` at provisioning from `node_template.c`), which [`SCRIPT`] loads after
//! importing aws-lambda-ric. The template starts with exactly the flags of a fresh start of a
//! function of its memory size ([`template_argv`]); the addon forks only while every other
//! thread is asleep, makes V8's `MADV_DONTFORK` memory inheritable, the runtime gets a loop of
//! its own (`uv_loop_fork`) and, last, once its privileges are dropped, V8's platform worker
//! threads of its own (the template's do not survive the fork).
//!
//! What a forked runtime is, against an exec'd one: the same environment (the bootstrap's
//! exports, [`node_env`]), `process.argv`, `process.execArgv`, pid and `/proc/self/cmdline`,
//! the same heap limits (a template serves one memory size: [`template_env`] holds
//! `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`), the same V8 worker threads (WebAssembly, concurrent
//! garbage collection and compilation as in a fresh start) and libuv pool (started again at
//! once), `Math.random` seeded afresh, `process.uptime()` and `performance`'s time origin
//! counted from its own start. What differs: `SIGUSR1` does not start the inspector, and
//! `performance.nodeTiming`'s milestones are the template's.

use std::collections::BTreeMap;

use super::template::python_minor;

/// The template's program, an ES module (as the fresh start's entry is): embedded here, so it
/// is always the version this agent speaks to, and written as [`SCRIPT_NAME`] into the
/// template's own `/var/task` (functions' containers have their code there instead).
pub const SCRIPT: &str = include_str!("node_template.mjs");

/// [`SCRIPT`]'s file name in the template's `/var/task`.
pub const SCRIPT_NAME: &str = ".ember-runtime-template.mjs";

/// The template's addon in the runtime directory (`ember_runtimes::TEMPLATE_ADDON`; a test in
/// `crates/runtimes` keeps the two equal).
pub const ADDON: &str = "ember-template-2.node";

/// The memory size a template starts for before the VM has run a container of its runtime.
pub const DEFAULT_MEMORY_MB: u32 = 128;

/// Where the interpreter is, in a container and in a template.
const NODE: &str = "/var/lang/bin/node";
/// Lambda's Node.js entry point.
const ENTRY: &str = "/var/runtime/index.mjs";

/// Which kind of runtime a template is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `python3.N`: the minor version.
    Python(u32),
    /// `nodejsN.x`: the major version.
    Node(u32),
}

impl Family {
    /// The family of a runtime that can have a template.
    pub fn of(runtime: &str) -> Option<Self> {
        python_minor(runtime)
            .map(Family::Python)
            .or_else(|| node_major(runtime).map(Family::Node))
    }
}

/// The Node.js major version of a `nodejsN.x` runtime.
pub fn node_major(runtime: &str) -> Option<u32> {
    runtime
        .strip_prefix("nodejs")?
        .strip_suffix(".x")?
        .parse()
        .ok()
}

/// The bootstrap a Node.js runtime's start is modelled on: the one `ember-runtimes` provisions
/// ([`ember_protocol::bootstrap::node`]).
pub fn expected_bootstrap(major: u32) -> String {
    ember_protocol::bootstrap::node(major)
}

/// The environment Node.js gets when [`expected_bootstrap`] is executed with `env` in `cwd`:
/// what the script exports, and the `PWD` the shell (dash) exports.
pub fn node_env(env: &BTreeMap<String, String>, major: u32, cwd: &str) -> BTreeMap<String, String> {
    let mut out = env.clone();
    let nonempty = |key: &str| env.get(key).filter(|v| !v.is_empty()).cloned();
    if nonempty("NODE_PATH").is_none() {
        out.insert(
            "NODE_PATH".into(),
            format!(
                "/opt/nodejs/node{major}/node_modules:/opt/nodejs/node_modules:\
                 /var/runtime/node_modules:/var/runtime:/var/task"
            ),
        );
    }
    for (key, dir) in [
        ("PATH", "/var/lang/bin"),
        ("LD_LIBRARY_PATH", "/var/lang/lib"),
    ] {
        let own = nonempty(key);
        if !own
            .as_deref()
            .is_some_and(|v| v.split(':').any(|p| p == dir))
        {
            let value = match own {
                Some(own) => format!("{dir}:{own}"),
                None => dir.to_owned(),
            };
            out.insert(key.into(), value);
        }
    }
    let execution =
        nonempty("AWS_EXECUTION_ENV").unwrap_or_else(|| format!("AWS_Lambda_nodejs{major}.x"));
    out.insert("AWS_EXECUTION_ENV".into(), execution);
    out.insert("PWD".into(), cwd.to_owned());
    out
}

/// The V8 heap flags the bootstrap derives from `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` (shell
/// arithmetic: integer division); `None` when the value is not a number the shell would take.
pub fn heap_flags(env: &BTreeMap<String, String>) -> Option<Vec<String>> {
    let Some(memory) = env
        .get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        .filter(|v| !v.is_empty())
    else {
        return Some(Vec::new());
    };
    let memory: u64 = memory.parse().ok()?;
    let new_space = memory / 10;
    Some(vec![
        format!("--max-semi-space-size={}", new_space / 2),
        format!("--max-old-space-size={}", memory - new_space),
    ])
}

/// A fresh start's command line: what the bootstrap executes, for the environment `env` it
/// runs with.
pub fn fresh_argv(env: &BTreeMap<String, String>) -> Option<Vec<String>> {
    let mut argv = vec![NODE.to_owned(), "--expose-gc".to_owned()];
    argv.extend(heap_flags(env)?);
    argv.push(ENTRY.to_owned());
    Some(argv)
}

/// The template's command line: a fresh start's flags, exactly (so V8 and its platform are
/// set up as a fresh start's: the same heap limits and worker threads), and [`SCRIPT`] in
/// place of the entry.
pub fn template_argv(env: &BTreeMap<String, String>) -> Option<Vec<String>> {
    let mut argv = fresh_argv(env)?;
    argv.pop();
    argv.push(format!("{}/{SCRIPT_NAME}", crate::env::TASK_ROOT));
    Some(argv)
}

/// Whether a variable can change what Node.js (its flags and module paths, OpenSSL, ICU, the
/// dynamic loader, libc) or aws-lambda-ric's import does before any function code runs: a
/// container whose value differs from the template's cannot be forked from it.
pub fn affects_startup(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "NODE_",
        "UV_",
        "OPENSSL_",
        "SSL_CERT_",
        "LD_",
        "LC_",
        "MALLOC_",
        "GLIBC_",
    ];
    const NAMES: &[&str] = &[
        "LANG",
        "LANGUAGE",
        "TZ",
        "HOME",
        "TMPDIR",
        "ICU_DATA",
        // The heap's limits ([`heap_flags`]).
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        // Read by aws-lambda-ric's modules when imported.
        "AWS_LAMBDA_NODEJS_NO_GLOBAL_AWSLAMBDA",
        "AWS_LAMBDA_RUNTIME_VERBOSE",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name)
}

/// The variables of `env` that [`affect the start`](affects_startup).
pub fn startup_env(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    super::template::vars_where(env, affects_startup)
}

/// The environment a template of nodejs`major`.x for `memory_mb` starts with: the startup
/// variables of a fresh start of a function of that size that sets none of its own.
pub fn template_env(major: u32, memory_mb: u32) -> BTreeMap<String, String> {
    let env = super::template::fresh_container_env(format!("nodejs{major}.x"), memory_mb);
    startup_env(&node_env(&env, major, crate::env::TASK_ROOT))
}

/// Why a container whose Node.js would get `env` cannot be forked from a template that started
/// with `template`: the first startup variable that differs.
pub fn startup_mismatch(
    env: &BTreeMap<String, String>,
    template: &BTreeMap<String, String>,
) -> Option<String> {
    super::template::first_difference(&startup_env(env), template, "Node.js")
}

/// The memory size a container's environment asks for, when it differs from the template's:
/// the template to have instead.
pub fn other_memory(
    env: &BTreeMap<String, String>,
    template: &BTreeMap<String, String>,
) -> Option<u32> {
    const KEY: &str = "AWS_LAMBDA_FUNCTION_MEMORY_SIZE";
    let own = env.get(KEY)?;
    (template.get(KEY) != Some(own))
        .then(|| own.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::super::template::tests::env;
    use super::*;

    fn function_env(memory_mb: u32, own: &[(&str, &str)]) -> BTreeMap<String, String> {
        let spec = ember_protocol::FunctionSpec {
            name: "f".into(),
            arn: "arn".into(),
            version: "1".into(),
            handler: "index.handler".into(),
            runtime: "nodejs20.x".into(),
            region: "eu-west-1".into(),
            environment: env(own),
            memory_mb,
            timeout_ms: 3000,
            ephemeral_storage_mb: 512,
            code: ember_protocol::CodeSource::Directory { path: "/c".into() },
            layers: Vec::new(),
        };
        let base = crate::env::container_env(&spec, "127.0.0.1:9001", "stream");
        node_env(&base, 20, "/var/task")
    }

    #[test]
    fn the_script_loads_this_versions_addon() {
        assert!(SCRIPT.contains(&format!("\"/{ADDON}\"")), "{ADDON}");
        assert_eq!(SCRIPT.matches("ember-template").count(), 1);
    }

    #[test]
    fn families_are_told_by_the_runtime_id() {
        assert_eq!(Family::of("python3.12"), Some(Family::Python(12)));
        assert_eq!(Family::of("nodejs20.x"), Some(Family::Node(20)));
        assert_eq!(Family::of("nodejs18.x"), Some(Family::Node(18)));
        assert_eq!(Family::of("nodejs.x"), None);
        assert_eq!(Family::of("nodejs20"), None);
        assert_eq!(Family::of("provided.al2023"), None);
    }

    #[test]
    fn the_environment_is_what_the_bootstrap_exports() {
        let out = node_env(
            &env(&[("PATH", "/usr/bin"), ("LD_LIBRARY_PATH", "/lib64")]),
            20,
            "/var/task",
        );
        assert_eq!(out["PATH"], "/var/lang/bin:/usr/bin");
        assert_eq!(out["LD_LIBRARY_PATH"], "/var/lang/lib:/lib64");
        assert_eq!(
            out["NODE_PATH"],
            "/opt/nodejs/node20/node_modules:/opt/nodejs/node_modules:/var/runtime/node_modules:/var/runtime:/var/task"
        );
        assert_eq!(out["AWS_EXECUTION_ENV"], "AWS_Lambda_nodejs20.x");
        assert_eq!(out["PWD"], "/var/task");
        // Already there, or the function's own: kept; empty counts as unset, as `${X:-}` reads it.
        let out = node_env(
            &env(&[
                ("PATH", "/x:/var/lang/bin"),
                ("NODE_PATH", "/mine"),
                ("AWS_EXECUTION_ENV", "custom"),
                ("LD_LIBRARY_PATH", ""),
            ]),
            22,
            "/var/task",
        );
        assert_eq!(out["PATH"], "/x:/var/lang/bin");
        assert_eq!(out["NODE_PATH"], "/mine");
        assert_eq!(out["AWS_EXECUTION_ENV"], "custom");
        assert_eq!(out["LD_LIBRARY_PATH"], "/var/lang/lib");
    }

    #[test]
    fn the_command_line_has_the_bootstraps_heap_flags() {
        let argv = fresh_argv(&function_env(128, &[])).unwrap();
        assert_eq!(
            argv,
            [
                "/var/lang/bin/node",
                "--expose-gc",
                "--max-semi-space-size=6",
                "--max-old-space-size=116",
                "/var/runtime/index.mjs"
            ]
        );
        let argv = fresh_argv(&function_env(1769, &[])).unwrap();
        assert_eq!(argv[2], "--max-semi-space-size=88");
        assert_eq!(argv[3], "--max-old-space-size=1593");
        // No memory size: no heap flags, as the bootstrap's `[ -n ... ]`.
        assert_eq!(
            fresh_argv(&BTreeMap::new()).unwrap(),
            [
                "/var/lang/bin/node",
                "--expose-gc",
                "/var/runtime/index.mjs"
            ]
        );
        assert_eq!(
            heap_flags(&env(&[("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "lots")])),
            None
        );
        // The template: the same flags (V8 multithreaded, as a fresh start's), the script
        // instead of the entry.
        let template = template_argv(&function_env(128, &[])).unwrap();
        assert_eq!(template[..4], argv_prefix(128)[..]);
        assert_eq!(template[4..], ["/var/task/.ember-runtime-template.mjs"]);
    }

    fn argv_prefix(memory_mb: u32) -> Vec<String> {
        let mut argv = fresh_argv(&function_env(memory_mb, &[])).unwrap();
        argv.pop();
        argv
    }

    #[test]
    fn a_template_serves_one_memory_size_and_plain_functions() {
        let template = template_env(20, 128);
        assert_eq!(
            template.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                "LD_LIBRARY_PATH",
                "NODE_PATH",
                "TZ"
            ]
        );
        // Secrets and settings Node.js does not read at its start: forked.
        let plain = function_env(128, &[("DB_PASSWORD", "s3cret"), ("PATH", "/x")]);
        assert_eq!(startup_mismatch(&plain, &template), None);
        assert_eq!(other_memory(&plain, &template), None);
        // Another memory size: other heap limits, so another template.
        let big = function_env(1024, &[]);
        assert!(startup_mismatch(&big, &template)
            .is_some_and(|w| w.contains("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")));
        assert_eq!(other_memory(&big, &template), Some(1024));
        assert_eq!(startup_mismatch(&big, &template_env(20, 1024)), None);
        for (name, value) in [
            ("NODE_OPTIONS", "--max-old-space-size=50"),
            ("NODE_PATH", "/mine"),
            ("NODE_EXTRA_CA_CERTS", "/var/task/ca.pem"),
            ("UV_THREADPOOL_SIZE", "16"),
            ("LD_PRELOAD", "/var/task/lib.so"),
            ("LANG", "fr_FR.UTF-8"),
            ("AWS_LAMBDA_NODEJS_NO_GLOBAL_AWSLAMBDA", "1"),
            ("AWS_LAMBDA_RUNTIME_VERBOSE", "3"),
        ] {
            let why = startup_mismatch(&function_env(128, &[(name, value)]), &template);
            assert!(
                why.as_deref().is_some_and(|w| w.contains(name)),
                "{name}: {why:?}"
            );
        }
    }
}
