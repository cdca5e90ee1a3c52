//! Unit tests of discovery and provisioning with fake interpreters: shell scripts that answer the
//! version query and act as `python -m pip`, counting their runs. No network.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::*;

/// A fake interpreter at `<root>/<name>/bin/python3.<minor>`, whose prefix is `<root>/<name>`.
///
/// As `-I -c …` it prints `<implementation>`, `<version>`, its prefix and itself. As
/// `-I -m pip install … --target DIR …` it appends a line to `<prefix>/pip-runs` and does what
/// `<prefix>/pip-mode` says: `ok` (after 300 ms, installs a fake awslambdaric 9.9.9), `fail`,
/// `nopip` or `hang`.
struct FakePython {
    prefix: PathBuf,
    exe: PathBuf,
}

impl FakePython {
    fn new(root: &Path, name: &str, implementation: &str, version: &str) -> Self {
        let minor = version.split('.').nth(1).unwrap();
        let prefix = root.join(name);
        let exe = prefix.join("bin").join(format!("python3.{minor}"));
        std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
        let script = format!(
            r#"#!/bin/sh
prefix="$(cd "$(dirname "$0")/.." && pwd)"
if [ "$1 $2" = "-I -c" ]; then
  printf '%s\n%s\n%s\n%s\n' '{implementation}' '{version}' "$prefix" "$0"
  exit 0
fi
if [ "$1 $2 $3 $4" = "-I -m pip install" ]; then
  echo "$*" >> "$prefix/pip-runs"
  target=""; prev=""
  for a in "$@"; do [ "$prev" = "--target" ] && target="$a"; prev="$a"; done
  case "$(cat "$prefix/pip-mode" 2>/dev/null || echo ok)" in
    ok)
      sleep 0.3
      mkdir -p "$target/awslambdaric" "$target/awslambdaric-9.9.9.dist-info"
      echo 'print("fake")' > "$target/awslambdaric/__init__.py"
      chmod 600 "$target/awslambdaric/__init__.py"
      echo "Successfully installed awslambdaric-9.9.9"
      exit 0 ;;
    fail)
      echo "Collecting awslambdaric" >&2
      echo "ERROR: Could not find a version that satisfies the requirement awslambdaric" >&2
      echo "ERROR: No matching distribution found for awslambdaric" >&2
      exit 1 ;;
    nopip)
      echo "$0: No module named pip" >&2
      exit 1 ;;
    hang)
      exec sleep 30 ;;
    empty)
      exit 0 ;;
  esac
fi
echo "unexpected arguments: $*" >&2
exit 2
"#
        );
        std::fs::write(&exe, script).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let prefix = prefix.canonicalize().unwrap();
        let exe = exe.canonicalize().unwrap();
        Self { prefix, exe }
    }

    fn set_mode(&self, mode: &str) {
        std::fs::write(self.prefix.join("pip-mode"), mode).unwrap();
    }

    fn pip_runs(&self) -> usize {
        std::fs::read_to_string(self.prefix.join("pip-runs"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

fn config(runtime_dir: &Path, pythons: &[&FakePython]) -> RuntimesConfig {
    RuntimesConfig {
        extra_pythons: pythons.iter().map(|p| p.exe.clone()).collect(),
        search: SearchPaths::none(),
        ..RuntimesConfig::new(runtime_dir)
    }
}

#[tokio::test]
async fn discovery_keeps_cpython_3_9_and_up_one_per_minor() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let py311 = FakePython::new(root, "a", "cpython", "3.11.7");
    let py311b = FakePython::new(root, "b", "cpython", "3.11.9");
    let py38 = FakePython::new(root, "old", "cpython", "3.8.18");
    let pypy = FakePython::new(root, "pypy", "pypy", "3.10.13");
    let py313 = FakePython::new(root, "new", "cpython", "3.13.0");
    let broken = root.join("broken/bin/python3.12");
    std::fs::create_dir_all(broken.parent().unwrap()).unwrap();
    std::fs::write(&broken, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut config = config(
        &root.join("runtimes"),
        &[&py313, &py311, &py311b, &py38, &pypy],
    );
    config.extra_pythons.push(broken);
    config.extra_pythons.push(root.join("missing/python3.12"));
    let runtimes = Runtimes::discover(config).await.unwrap();

    let found: Vec<(&str, &str, &Path)> = runtimes
        .python_versions()
        .iter()
        .map(|p| {
            (
                p.runtime.as_str(),
                p.version.as_str(),
                p.executable.as_path(),
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            ("python3.11", "3.11.7", py311.exe.as_path()),
            ("python3.13", "3.13.0", py313.exe.as_path()),
        ]
    );
    assert_eq!(runtimes.python("python3.11").unwrap().prefix, py311.prefix);

    for (runtime, supported) in [
        ("provided", true),
        ("provided.al2", true),
        ("provided.al2023", true),
        ("python3.11", true),
        ("python3.13", true),
        ("python3.12", false),
        ("python3.8", false),
        ("nodejs20.x", false),
    ] {
        assert_eq!(runtimes.supports(runtime), supported, "{runtime}");
    }
    assert_eq!(
        runtimes.available(),
        [
            "provided",
            "provided.al2",
            "provided.al2023",
            "python3.11",
            "python3.13"
        ]
    );

    let runtime_dir = root.join("runtimes").canonicalize().unwrap();
    assert_eq!(runtimes.runtime_dir(), runtime_dir);
    assert_eq!(
        runtimes.vm_binds(),
        [
            (runtime_dir.clone(), PathBuf::from("/opt/ember/runtimes")),
            (
                py311.prefix.clone(),
                PathBuf::from("/opt/ember/lang/python3.11")
            ),
            (
                py313.prefix.clone(),
                PathBuf::from("/opt/ember/lang/python3.13")
            ),
        ]
    );
    let line = runtimes.describe();
    assert!(line.contains("provided.al2023"), "{line}");
    assert!(
        line.contains(&format!(
            "python3.11 (3.11.7 at {})",
            py311.prefix.display()
        )),
        "{line}"
    );
    assert!(line.contains(&runtime_dir.display().to_string()), "{line}");
}

#[tokio::test]
async fn no_python_still_runs_provided() {
    let tmp = tempfile::tempdir().unwrap();
    let runtimes = Runtimes::discover(config(tmp.path(), &[])).await.unwrap();
    assert!(runtimes.python_versions().is_empty());
    assert!(runtimes.describe().contains("no CPython 3.9+ found"));
    runtimes.ensure("provided.al2023").await.unwrap();
    runtimes.ensure("provided.al2").await.unwrap();
    assert_eq!(runtimes.vm_binds().len(), 1);
}

#[tokio::test]
async fn an_unavailable_runtime_says_what_is_available() {
    let tmp = tempfile::tempdir().unwrap();
    let py = FakePython::new(tmp.path(), "p", "cpython", "3.11.7");
    let runtimes = Runtimes::discover(config(&tmp.path().join("rt"), &[&py]))
        .await
        .unwrap();
    let err = runtimes.ensure("python3.14").await.unwrap_err();
    assert!(matches!(err, RuntimeError::Unavailable { .. }));
    assert_eq!(
        err.to_string(),
        "runtime python3.14 is not available on this host \
         (available: provided, provided.al2, provided.al2023, python3.11)"
    );
    assert_eq!(py.pip_runs(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ensures_provision_once() {
    let tmp = tempfile::tempdir().unwrap();
    let py = FakePython::new(tmp.path(), "p", "cpython", "3.11.7");
    let runtime_dir = tmp.path().join("rt");
    // Two "servers" sharing one runtime directory, each with several callers.
    let a = Arc::new(
        Runtimes::discover(config(&runtime_dir, &[&py]))
            .await
            .unwrap(),
    );
    let b = Arc::new(
        Runtimes::discover(config(&runtime_dir, &[&py]))
            .await
            .unwrap(),
    );
    let mut set = tokio::task::JoinSet::new();
    for i in 0..10 {
        let runtimes = Arc::clone(if i % 3 == 0 { &b } else { &a });
        set.spawn(async move { runtimes.ensure("python3.11").await });
    }
    while let Some(result) = set.join_next().await {
        result.unwrap().unwrap();
    }
    assert_eq!(
        py.pip_runs(),
        1,
        "pip ran once for all callers of both servers"
    );

    let dir = runtime_dir.join("python3.11");
    let marker = provision::complete(&dir, &default_python_requirements(11)).expect("complete");
    assert_eq!(marker.awslambdaric, "9.9.9");
    assert_eq!(marker.python, py.exe);
    assert_eq!(marker.python_version, "3.11.7");
    assert_eq!(marker.runtime, "python3.11");

    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join("bootstrap")), 0o755);
    assert_eq!(mode(&dir), 0o755, "readable by the container's uid");
    assert_eq!(mode(&dir.join("awslambdaric/__init__.py")), 0o644);
    assert_eq!(
        std::fs::read_to_string(dir.join("bootstrap")).unwrap(),
        bootstrap_script(11)
    );
    // pip was asked for the requirement, into a temporary directory beside the final one.
    let args = std::fs::read_to_string(py.prefix.join("pip-runs")).unwrap();
    assert!(
        args.contains("--no-input --disable-pip-version-check"),
        "{args}"
    );
    assert!(
        args.contains(&format!(
            "--target {}/.python3.11.tmp-",
            runtime_dir.canonicalize().unwrap().display()
        )),
        "{args}"
    );
    assert!(
        args.trim_end()
            .ends_with("awslambdaric>=3,<5 boto3==1.44.18"),
        "{args}"
    );
    // Nothing is left behind but the runtime and its lock file.
    let mut names: Vec<String> = std::fs::read_dir(&runtime_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [".python3.11.lock", "python3.11"]);

    // A later server finds it complete and runs nothing.
    let c = Runtimes::discover(config(&runtime_dir, &[&py]))
        .await
        .unwrap();
    c.ensure("python3.11").await.unwrap();
    Arc::new(c).provision_all_in_background().await.unwrap();
    assert_eq!(py.pip_runs(), 1);
}

#[tokio::test]
async fn a_pip_failure_is_reported_remembered_and_retried_later() {
    let tmp = tempfile::tempdir().unwrap();
    let py = FakePython::new(tmp.path(), "p", "cpython", "3.12.1");
    py.set_mode("fail");
    let mut config = config(&tmp.path().join("rt"), &[&py]);
    config.retry_after = Duration::from_millis(1500);
    let runtimes = Runtimes::discover(config).await.unwrap();

    let err = runtimes.ensure("python3.12").await.unwrap_err();
    assert!(matches!(err, RuntimeError::Provision { .. }));
    assert_eq!(
        err.to_string(),
        "cannot provision python3.12: `pip install awslambdaric` failed: Collecting awslambdaric | \
         ERROR: Could not find a version that satisfies the requirement awslambdaric | \
         ERROR: No matching distribution found for awslambdaric"
    );
    // Remembered: the same answer without running pip again.
    py.set_mode("ok");
    let again = runtimes.ensure("python3.12").await.unwrap_err();
    assert_eq!(again.to_string(), err.to_string());
    assert_eq!(py.pip_runs(), 1);
    // No leftovers from the failed attempt.
    assert!(!tmp.path().join("rt/python3.12").exists());
    let leftovers = std::fs::read_dir(tmp.path().join("rt"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".tmp-")
        })
        .count();
    assert_eq!(leftovers, 0);

    tokio::time::sleep(Duration::from_millis(1600)).await;
    runtimes.ensure("python3.12").await.unwrap();
    assert_eq!(py.pip_runs(), 2);
}

#[tokio::test]
async fn missing_pip_empty_installs_and_timeouts_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    let py = FakePython::new(tmp.path(), "p", "cpython", "3.10.13");
    let mut config = config(&tmp.path().join("rt"), &[&py]);
    config.retry_after = Duration::ZERO;
    let runtimes = Runtimes::discover(config.clone()).await.unwrap();

    py.set_mode("nopip");
    let err = runtimes.ensure("python3.10").await.unwrap_err().to_string();
    let exe = py.exe.display();
    assert_eq!(
        err,
        format!(
            "cannot provision python3.10: pip is not installed for {exe} \
             ({exe}: No module named pip)"
        )
    );

    py.set_mode("empty");
    let err = runtimes.ensure("python3.10").await.unwrap_err().to_string();
    assert_eq!(
        err,
        "cannot provision python3.10: `pip install awslambdaric` succeeded but installed no \
         awslambdaric"
    );

    py.set_mode("hang");
    config.pip_timeout = Duration::from_millis(300);
    let runtimes = Runtimes::discover(config).await.unwrap();
    let started = std::time::Instant::now();
    let err = runtimes.ensure("python3.10").await.unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        err,
        "cannot provision python3.10: `pip install awslambdaric` did not finish within 300ms"
    );
}

#[tokio::test]
async fn a_complete_directory_is_used_and_an_outdated_one_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let py = FakePython::new(tmp.path(), "p", "cpython", "3.11.7");
    let runtime_dir = tmp.path().join("rt");
    let dir = runtime_dir.join("python3.11");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bootstrap"), "#!/bin/sh\n").unwrap();
    let marker = Marker {
        format: 2,
        runtime: "python3.11".into(),
        awslambdaric: "4.0.0".into(),
        boto3: Some(boto3_version(11).into()),
        requirements: default_python_requirements(11),
        python: "/somewhere/python3.11".into(),
        python_version: "3.11.1".into(),
        provisioned_at: 0,
    };
    std::fs::write(dir.join(MARKER), serde_json::to_vec(&marker).unwrap()).unwrap();

    let runtimes = Runtimes::discover(config(&runtime_dir, &[&py]))
        .await
        .unwrap();
    runtimes.ensure("python3.11").await.unwrap();
    assert_eq!(py.pip_runs(), 0, "complete: nothing to do");

    // Another requirement makes the directory outdated: provisioned again, replacing it.
    let mut config = config(&runtime_dir, &[&py]);
    config.python_requirements = |_| vec!["awslambdaric==9.9.9".into()];
    let runtimes = Runtimes::discover(config).await.unwrap();
    runtimes.ensure("python3.11").await.unwrap();
    assert_eq!(py.pip_runs(), 1);
    let marker = provision::complete(&dir, &["awslambdaric==9.9.9".into()]).unwrap();
    assert_eq!(marker.awslambdaric, "9.9.9");
    let names: Vec<String> = std::fs::read_dir(&runtime_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".old-") || n.contains(".tmp-"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[tokio::test]
async fn discovery_removes_stale_attempts_unless_one_is_in_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let runtime_dir = tmp.path().join("rt");
    for stale in [
        ".python3.11.tmp-abc/awslambdaric",
        ".python3.11.old-x",
        ".python3.12.tmp-def",
    ] {
        std::fs::create_dir_all(runtime_dir.join(stale)).unwrap();
    }
    std::fs::create_dir_all(runtime_dir.join("python3.11")).unwrap();
    // Another process is provisioning python3.12.
    let held = provision::try_lock(&provision::lock_path(&runtime_dir, "python3.12"))
        .unwrap()
        .unwrap();

    Runtimes::discover(config(&runtime_dir, &[])).await.unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&runtime_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".python3.11.lock",
            ".python3.12.lock",
            ".python3.12.tmp-def",
            "python3.11"
        ]
    );
    drop(held);
}

#[tokio::test]
async fn the_runtime_dir_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    let runtime_dir = tmp.path().join("a/b/c");
    let runtimes = Runtimes::discover(config(&runtime_dir, &[])).await.unwrap();
    assert!(runtime_dir.is_dir());
    assert!(runtimes.runtime_dir().is_absolute());

    std::fs::write(tmp.path().join("file"), "").unwrap();
    let err = Runtimes::discover(config(&tmp.path().join("file/x"), &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::RuntimeDir { .. }), "{err}");
}

/// A fake Node.js at `<root>/<name>/bin/node` with an npm beside it.
///
/// `node -e …` prints `node`, `<version>` and itself. `npm install …` appends its arguments to
/// `<prefix>/npm-runs` and does what `<prefix>/npm-mode` says: `ok` (after 300 ms, installs every
/// dependency of `./package.json` at its version, aws-lambda-ric with a built `.node` addon),
/// `nobuild` (the same without the addon), `fail`.
struct FakeNode {
    prefix: PathBuf,
    exe: PathBuf,
}

impl FakeNode {
    fn new(root: &Path, name: &str, version: &str) -> Self {
        let prefix = root.join(name);
        let bin = prefix.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let node = format!(
            "#!/bin/sh\n[ \"$1\" = \"-e\" ] || exit 2\nprintf 'node\\n%s\\n%s\\n' '{version}' \"$0\"\n"
        );
        let npm = r#"#!/bin/sh
prefix="$(cd "$(dirname "$0")/.." && pwd)"
echo "$*" >> "$prefix/npm-runs"
mode="$(cat "$prefix/npm-mode" 2>/dev/null || echo ok)"
if [ "$mode" = fail ]; then
  echo "npm error code E404" >&2
  echo "npm error 404 Not Found - GET aws-lambda-ric" >&2
  exit 1
fi
sleep 0.3
sed -n 's/^ *"\([^"]*\)": "\([0-9][^"]*\)",\{0,1\}$/\1 \2/p' package.json | while read -r name version; do
  mkdir -p "node_modules/$name"
  printf '{"name": "%s", "version": "%s"}\n' "$name" "$version" > "node_modules/$name/package.json"
done
if [ "$mode" = ok ]; then
  mkdir -p node_modules/aws-lambda-ric/build/Release
  echo addon > node_modules/aws-lambda-ric/build/Release/rapid-client.node
  chmod 600 node_modules/aws-lambda-ric/build/Release/rapid-client.node
fi
"#;
        for (file, text) in [("node", node.as_str()), ("npm", npm)] {
            std::fs::write(bin.join(file), text).unwrap();
            std::fs::set_permissions(bin.join(file), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        Self {
            prefix: prefix.canonicalize().unwrap(),
            exe: bin.join("node").canonicalize().unwrap(),
        }
    }

    fn set_mode(&self, mode: &str) {
        std::fs::write(self.prefix.join("npm-mode"), mode).unwrap();
    }

    fn npm_runs(&self) -> usize {
        std::fs::read_to_string(self.prefix.join("npm-runs"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

/// A `PATH` with executables named like the build tools aws-lambda-ric needs first, then the
/// system's (for the fake npm's `sed`, `mkdir`, …).
fn build_tools(root: &Path) -> std::ffi::OsString {
    let bin = root.join("tools");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["cmake", "autoconf", "automake", "libtoolize", "make"] {
        let path = bin.join(tool);
        std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // The compiler records its arguments and writes what `-o` names.
    let gxx = bin.join("g++");
    std::fs::write(
        &gxx,
        "#!/bin/sh\necho \"$*\" >> \"$(dirname \"$0\")/g++-runs\"\nwhile [ $# -gt 0 ]; do\n  if [ \"$1\" = -o ]; then echo built > \"$2\"; fi\n  shift\ndone\n",
    )
    .unwrap();
    std::fs::set_permissions(&gxx, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("{}:/usr/bin:/bin", bin.display()).into()
}

fn node_config(
    runtime_dir: &Path,
    nodes: &[&FakeNode],
    tools: std::ffi::OsString,
) -> RuntimesConfig {
    RuntimesConfig {
        extra_nodes: nodes.iter().map(|n| n.exe.clone()).collect(),
        tool_path: Some(tools),
        ..config(runtime_dir, &[])
    }
}

#[tokio::test]
async fn node_discovery_keeps_18_and_up_one_per_major() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let n20 = FakeNode::new(root, "a", "20.20.2");
    let n20b = FakeNode::new(root, "b", "20.11.0");
    let n16 = FakeNode::new(root, "old", "16.20.2");
    let n22 = FakeNode::new(root, "new", "22.11.0");
    let tools = build_tools(root);
    let runtimes = Runtimes::discover(node_config(
        &root.join("rt"),
        &[&n22, &n20, &n20b, &n16],
        tools,
    ))
    .await
    .unwrap();
    let found: Vec<(&str, &str)> = runtimes
        .node_versions()
        .iter()
        .map(|n| (n.runtime.as_str(), n.version.as_str()))
        .collect();
    assert_eq!(
        found,
        [("nodejs20.x", "20.20.2"), ("nodejs22.x", "22.11.0")]
    );
    assert!(runtimes.supports("nodejs20.x"));
    assert!(!runtimes.supports("nodejs18.x"));
    assert!(!runtimes.supports("nodejs16.x"));
    assert_eq!(
        runtimes.available(),
        [
            "provided",
            "provided.al2",
            "provided.al2023",
            "nodejs20.x",
            "nodejs22.x"
        ]
    );
    let binds = runtimes.vm_binds();
    assert!(binds.contains(&(
        n20.prefix.clone(),
        PathBuf::from("/opt/ember/lang/nodejs20.x")
    )));
    assert!(binds.contains(&(
        n22.prefix.clone(),
        PathBuf::from("/opt/ember/lang/nodejs22.x")
    )));
    let line = runtimes.describe();
    assert!(line.contains("nodejs22.x (22.11.0 at"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_runtime_is_provisioned_once_with_its_pinned_packages() {
    let tmp = tempfile::tempdir().unwrap();
    let node = FakeNode::new(tmp.path(), "n", "20.20.2");
    // Its headers: the runtime template's addon is built against them.
    std::fs::create_dir_all(node.prefix.join("include/node")).unwrap();
    std::fs::write(node.prefix.join("include/node/node_api.h"), "").unwrap();
    let tools = build_tools(tmp.path());
    let runtime_dir = tmp.path().join("rt");
    let a = Arc::new(
        Runtimes::discover(node_config(&runtime_dir, &[&node], tools.clone()))
            .await
            .unwrap(),
    );
    let b = Arc::new(
        Runtimes::discover(node_config(&runtime_dir, &[&node], tools.clone()))
            .await
            .unwrap(),
    );
    let mut set = tokio::task::JoinSet::new();
    for i in 0..6 {
        let runtimes = Arc::clone(if i % 2 == 0 { &a } else { &b });
        set.spawn(async move { runtimes.ensure("nodejs20.x").await });
    }
    while let Some(result) = set.join_next().await {
        result.unwrap().unwrap();
    }
    assert_eq!(
        node.npm_runs(),
        1,
        "npm ran once for all callers of both servers"
    );

    let dir = runtime_dir.join("nodejs20.x");
    let marker = node_complete(&dir, &default_node_packages(20)).expect("complete");
    assert_eq!(marker.packages["aws-lambda-ric"], "3.3.0");
    assert_eq!(marker.packages["@aws-sdk/client-s3"], "3.1178.0");
    assert_eq!(marker.node, node.exe);
    assert_eq!(marker.node_version, "20.20.2");
    assert_eq!(
        std::fs::read_to_string(dir.join("bootstrap")).unwrap(),
        node_bootstrap_script(20)
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join("bootstrap")), 0o755);
    // The template's addon: compiled once, as C, against this Node.js's headers.
    assert_eq!(mode(&dir.join(TEMPLATE_ADDON)), 0o644);
    let compiles = std::fs::read_to_string(tmp.path().join("tools/g++-runs")).unwrap();
    assert_eq!(compiles.lines().count(), 1, "{compiles}");
    assert!(compiles.starts_with("-x c "), "{compiles}");
    assert!(
        compiles.contains(&format!("-I{}", node.prefix.join("include/node").display())),
        "{compiles}"
    );
    assert_eq!(
        mode(&dir.join("node_modules/aws-lambda-ric/build/Release/rapid-client.node")),
        0o644,
        "readable by the container's uid"
    );
    let args = std::fs::read_to_string(node.prefix.join("npm-runs")).unwrap();
    assert!(args.starts_with("install --omit=dev"), "{args}");
    let mut names: Vec<String> = std::fs::read_dir(&runtime_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [".nodejs20.x.lock", "nodejs20.x"]);

    // Provisioned by an older Ember (its older addon only): this version's addon is built into
    // it, the older one removed, nothing installed again.
    std::fs::rename(dir.join(TEMPLATE_ADDON), dir.join("ember-template.node")).unwrap();
    let c = Runtimes::discover(node_config(&runtime_dir, &[&node], tools.clone()))
        .await
        .unwrap();
    c.ensure("nodejs20.x").await.unwrap();
    assert_eq!(node.npm_runs(), 1);
    assert_eq!(mode(&dir.join(TEMPLATE_ADDON)), 0o644);
    assert!(!dir.join("ember-template.node").exists());
    let compiles = std::fs::read_to_string(tmp.path().join("tools/g++-runs")).unwrap();
    assert_eq!(compiles.lines().count(), 2, "{compiles}");

    // Other pinned versions make it outdated: provisioned again.
    let mut config = node_config(&runtime_dir, &[&node], tools);
    config.node_packages = |_| [("aws-lambda-ric".to_owned(), "9.9.9".to_owned())].into();
    let c = Runtimes::discover(config).await.unwrap();
    c.ensure("nodejs20.x").await.unwrap();
    assert_eq!(node.npm_runs(), 2);
    assert_eq!(
        node_complete(
            &dir,
            &[("aws-lambda-ric".to_owned(), "9.9.9".to_owned())].into()
        )
        .unwrap()
        .packages
        .len(),
        1
    );
}

#[tokio::test]
async fn node_provisioning_failures_say_why() {
    let tmp = tempfile::tempdir().unwrap();
    let node = FakeNode::new(tmp.path(), "n", "22.3.0");
    let runtime_dir = tmp.path().join("rt");
    let mut config = node_config(&runtime_dir, &[&node], build_tools(tmp.path()));
    config.retry_after = Duration::ZERO;

    node.set_mode("fail");
    let runtimes = Runtimes::discover(config.clone()).await.unwrap();
    let err = runtimes.ensure("nodejs22.x").await.unwrap_err();
    assert!(matches!(err, RuntimeError::Provision { .. }));
    assert_eq!(
        err.to_string(),
        "cannot provision nodejs22.x: `npm install aws-lambda-ric` failed: npm error code E404 | \
         npm error 404 Not Found - GET aws-lambda-ric"
    );

    node.set_mode("nobuild");
    let err = runtimes.ensure("nodejs22.x").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot provision nodejs22.x: `npm install` succeeded but aws-lambda-ric's native part \
         was not built"
    );

    // Without the build tools npm is not even run.
    let runs = node.npm_runs();
    config.tool_path = Some(tmp.path().join("empty").into_os_string());
    let runtimes = Runtimes::discover(config).await.unwrap();
    let err = runtimes.ensure("nodejs22.x").await.unwrap_err().to_string();
    assert_eq!(
        err,
        "cannot provision nodejs22.x: building aws-lambda-ric's native code needs cmake, \
         autoconf, automake, libtool, g++, make (missing on the server's PATH; on Debian: \
         apt-get install cmake autoconf automake libtool g++ make)"
    );
    assert_eq!(node.npm_runs(), runs);
    assert!(!runtime_dir.join("nodejs22.x").exists());
}
