//! What a container is made of, decided by the agent and carried out by `container-init`: the
//! mounts of its root, its limits and the process it runs; and what `container-init` reports back.
//!
//! Everything here is pure: the agent computes an [`InitPlan`] from a `CreateContainer` request
//! and what the VM holds (checked under an injected root, so tests use fixture directories), and
//! the init process only walks it.

use std::path::{Path, PathBuf};

use ember_sandbox::cgroup::CpuQuota;
use serde::{Deserialize, Serialize};

/// The CFS period used when the VM's group has no quota to take one from.
pub const DEFAULT_CPU_PERIOD_US: u64 = 100_000;
/// The smallest CFS quota the kernel accepts.
pub const MIN_CPU_QUOTA_US: u64 = 1_000;
/// The fewest tasks a container can start with: its init, its reaper and the runtime.
pub const MIN_PIDS: u32 = 3;
/// System directories a container sees read-only, as they are in the VM (directories or links).
pub const SYSTEM_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];
/// Device nodes bound from the VM's `/dev`.
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];
/// Size of the container's `/dev/shm`.
pub const SHM_MB: u32 = 16;

/// Everything `container-init` needs, sent to it as JSON on its control socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitPlan {
    pub container_id: String,
    /// An empty directory of the VM on which the container's root tmpfs is mounted.
    pub root: PathBuf,
    pub hostname: String,
    /// Built in order under `root`, before the pivot.
    pub mounts: Vec<Mount>,
    pub uid: u32,
    pub gid: u32,
    pub cwd: PathBuf,
    /// The runtime's executable, as seen in the container.
    pub exe: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// One step of building a container's root. Every `path` is relative to the root; every
/// `source` is a path of the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mount {
    Dir {
        path: PathBuf,
    },
    Symlink {
        path: PathBuf,
        target: PathBuf,
    },
    /// A recursive bind, then made read-only, `nosuid` and `nodev` (submounts keep their own
    /// flags, which in a VM are read-only too).
    BindReadOnly {
        source: PathBuf,
        path: PathBuf,
    },
    /// A device node bound onto an empty file.
    Device {
        source: PathBuf,
        path: PathBuf,
    },
    Tmpfs {
        path: PathBuf,
        /// Mount data, e.g. `mode=1777,size=512m`.
        options: String,
        noexec: bool,
    },
    /// A `proc` of the container's PID namespace.
    Proc {
        path: PathBuf,
    },
}

/// What `container-init` and the container's first process tell the agent, one JSON object per
/// line on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    /// The container's first process exists (`pid` as the VM sees it) and waits for the agent's
    /// go, so that the agent can watch for its exit before it can exit.
    Started { pid: i32 },
    /// Setting up failed at `stage`; nothing of the container runs any more.
    SetupFailed { stage: String, error: String },
    /// The runtime was executed.
    Running,
    /// The runtime could not be executed: `error` is what failed (`exec /var/task/bootstrap: No
    /// such file or directory`).
    ExecFailed { error: String },
    /// The runtime ended; the container ends with it.
    RuntimeExited {
        code: Option<i32>,
        signal: Option<i32>,
    },
}

/// Where a container's pieces come from in the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The VM's root: `/` in a VM, a fixture directory in tests. The paths below are absolute
    /// paths of the VM, looked up under this root.
    pub vm_root: PathBuf,
    /// Holds one directory per language runtime (`python3.12`), shown at `/var/lang`.
    pub lang_dir: PathBuf,
    /// Holds one directory per Lambda runtime (its `bootstrap`), shown at `/var/runtime`.
    pub runtimes_dir: PathBuf,
}

impl Layout {
    /// `path` (absolute, in the VM) as the agent reaches it.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.vm_root.join(path.strip_prefix("/").unwrap_or(path))
    }
}

/// The mounts of a container's root, in order. `code` is the function's extracted code (a VM
/// path); `runtime` a validated runtime name ([`valid_name`]).
///
/// The root is a fresh tmpfs, read-only once built: the VM's system directories (as directories
/// or links), its `/etc`; `/var/task` (the code), `/var/lang` and `/var/runtime` when the VM has
/// them for this runtime, all read-only; an empty `/opt`; a `/tmp` of `tmp_mb` MB; a fresh
/// `/proc`; a minimal `/dev` with a small `/dev/shm`.
pub fn mounts(layout: &Layout, runtime: &str, code: &Path, tmp_mb: u32) -> Vec<Mount> {
    let mut mounts = Vec::new();
    let rel = |path: &str| PathBuf::from(path);
    for dir in SYSTEM_DIRS {
        let vm_path = layout.vm_root.join(dir);
        let Ok(meta) = std::fs::symlink_metadata(&vm_path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            if let Ok(target) = std::fs::read_link(&vm_path) {
                mounts.push(Mount::Symlink {
                    path: rel(dir),
                    target,
                });
            }
        } else if meta.is_dir() {
            mounts.push(Mount::Dir { path: rel(dir) });
            mounts.push(Mount::BindReadOnly {
                source: vm_path,
                path: rel(dir),
            });
        }
    }
    mounts.push(Mount::Dir { path: rel("etc") });
    mounts.push(Mount::BindReadOnly {
        source: layout.vm_root.join("etc"),
        path: rel("etc"),
    });
    mounts.push(Mount::Dir { path: rel("var") });
    mounts.push(Mount::Dir {
        path: rel("var/task"),
    });
    mounts.push(Mount::BindReadOnly {
        source: code.to_path_buf(),
        path: rel("var/task"),
    });
    for (dir, at) in [
        (&layout.lang_dir, "var/lang"),
        (&layout.runtimes_dir, "var/runtime"),
    ] {
        let source = layout.resolve(dir).join(runtime);
        if source.is_dir() {
            mounts.push(Mount::Dir { path: rel(at) });
            mounts.push(Mount::BindReadOnly {
                source,
                path: rel(at),
            });
        }
    }
    mounts.push(Mount::Dir { path: rel("opt") });
    mounts.push(Mount::Dir { path: rel("tmp") });
    mounts.push(Mount::Tmpfs {
        path: rel("tmp"),
        options: format!("mode=1777,size={tmp_mb}m"),
        noexec: false,
    });
    mounts.push(Mount::Dir { path: rel("proc") });
    mounts.push(Mount::Proc { path: rel("proc") });
    mounts.push(Mount::Dir { path: rel("dev") });
    mounts.push(Mount::Tmpfs {
        path: rel("dev"),
        options: "mode=0755,size=64k".into(),
        noexec: true,
    });
    for device in DEVICES {
        mounts.push(Mount::Device {
            source: layout.vm_root.join("dev").join(device),
            path: rel("dev").join(device),
        });
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        mounts.push(Mount::Symlink {
            path: rel("dev").join(link),
            target: rel(target),
        });
    }
    mounts.push(Mount::Dir {
        path: rel("dev/shm"),
    });
    mounts.push(Mount::Tmpfs {
        path: rel("dev/shm"),
        options: format!("mode=1777,size={SHM_MB}m"),
        noexec: true,
    });
    mounts
}

/// The runtime's executable: the function's own `bootstrap` for OS-only runtimes (`provided*`),
/// else the runtime's, from `/var/runtime`.
pub fn bootstrap(runtime: &str) -> PathBuf {
    if runtime.starts_with("provided") {
        PathBuf::from("/var/task/bootstrap")
    } else {
        PathBuf::from("/var/runtime/bootstrap")
    }
}

/// The container's CFS quota: `cpu_millis` thousandths of a CPU, in the VM's period, at least
/// the kernel's minimum and at most the VM's own quota (v1 refuses a child above its parent).
pub fn cpu_quota(cpu_millis: u32, vm: Option<CpuQuota>) -> CpuQuota {
    let period_us = vm.map_or(DEFAULT_CPU_PERIOD_US, |q| q.period_us);
    let wanted = (u64::from(cpu_millis) * period_us / 1000).max(MIN_CPU_QUOTA_US);
    let quota_us = match vm {
        Some(vm) => wanted.min(vm.quota_us.max(MIN_CPU_QUOTA_US)),
        None => wanted,
    };
    CpuQuota {
        quota_us,
        period_us,
    }
}

/// The container's memory limit in MB: what the function asked for, but no more than the VM has.
pub fn memory_mb(requested: u32, vm_bytes: Option<u64>) -> u32 {
    match vm_bytes {
        Some(bytes) => {
            let vm_mb = u32::try_from(bytes >> 20).unwrap_or(u32::MAX);
            requested.min(vm_mb)
        }
        None => requested,
    }
}

/// Whether `name` can name a directory: `[A-Za-z0-9._-]`, 1 to 128 bytes, not starting with a dot
/// (container ids, runtime names).
pub fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// A VM root with a merged /usr (links for /bin, /lib, /lib64, /sbin), as on this host.
    fn vm_root(langs: &[&str], runtimes: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["usr/bin", "usr/lib", "usr/lib64", "usr/sbin", "etc", "dev"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for (link, target) in [
            ("bin", "usr/bin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
            ("sbin", "usr/sbin"),
        ] {
            std::os::unix::fs::symlink(target, root.join(link)).unwrap();
        }
        for lang in langs {
            fs::create_dir_all(root.join("opt/ember/lang").join(lang)).unwrap();
        }
        for runtime in runtimes {
            fs::create_dir_all(root.join("opt/ember/runtimes").join(runtime)).unwrap();
        }
        dir
    }

    fn layout(root: &Path) -> Layout {
        Layout {
            vm_root: root.to_path_buf(),
            lang_dir: "/opt/ember/lang".into(),
            runtimes_dir: "/opt/ember/runtimes".into(),
        }
    }

    #[test]
    fn a_provided_runtime_gets_the_system_its_code_and_nothing_else() {
        let dir = vm_root(&["python3.12"], &["python3.12"]);
        let root = dir.path();
        let mounts = mounts(
            &layout(root),
            "provided.al2023",
            Path::new("/run/ember/code/abc"),
            512,
        );
        let link = |path: &str, target: &str| Mount::Symlink {
            path: path.into(),
            target: target.into(),
        };
        let bind = |source: PathBuf, path: &str| Mount::BindReadOnly {
            source,
            path: path.into(),
        };
        let dir_ = |path: &str| Mount::Dir { path: path.into() };
        let expected_head = [
            dir_("usr"),
            bind(root.join("usr"), "usr"),
            link("bin", "usr/bin"),
            link("sbin", "usr/sbin"),
            link("lib", "usr/lib"),
            link("lib64", "usr/lib64"),
            dir_("etc"),
            bind(root.join("etc"), "etc"),
            dir_("var"),
            dir_("var/task"),
            bind("/run/ember/code/abc".into(), "var/task"),
            dir_("opt"),
            dir_("tmp"),
            Mount::Tmpfs {
                path: "tmp".into(),
                options: "mode=1777,size=512m".into(),
                noexec: false,
            },
            dir_("proc"),
            Mount::Proc {
                path: "proc".into(),
            },
        ];
        assert_eq!(mounts[..expected_head.len()], expected_head);
        let rest = &mounts[expected_head.len()..];
        let devices: Vec<&Path> = rest
            .iter()
            .filter_map(|m| match m {
                Mount::Device { path, source } => {
                    assert_eq!(*source, root.join(path));
                    Some(path.as_path())
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            devices,
            [
                "dev/null",
                "dev/zero",
                "dev/full",
                "dev/random",
                "dev/urandom"
            ]
            .map(Path::new)
        );
        assert!(rest.contains(&link("dev/fd", "/proc/self/fd")));
        assert!(rest.contains(&link("dev/stderr", "/proc/self/fd/2")));
        assert_eq!(
            rest.last(),
            Some(&Mount::Tmpfs {
                path: "dev/shm".into(),
                options: "mode=1777,size=16m".into(),
                noexec: true,
            })
        );
        let lang = |m: &Mount| matches!(m, Mount::BindReadOnly { path, .. } if path.starts_with("var/lang") || path.starts_with("var/runtime"));
        assert!(!mounts.iter().any(lang), "no language for provided");
    }

    #[test]
    fn a_managed_runtime_gets_its_language_and_runtime_when_the_vm_has_them() {
        let cases: &[(&[&str], &[&str], &[&str])] = &[
            (
                &["python3.12"],
                &["python3.12"],
                &["var/lang", "var/runtime"],
            ),
            (&["python3.12"], &[], &["var/lang"]),
            (&[], &["python3.12"], &["var/runtime"]),
            (&["python3.11"], &["nodejs20.x"], &[]),
        ];
        for (langs, runtimes, want) in cases {
            let dir = vm_root(langs, runtimes);
            let mounts = mounts(&layout(dir.path()), "python3.12", Path::new("/code"), 64);
            let got: Vec<&Path> = mounts
                .iter()
                .filter_map(|m| match m {
                    Mount::BindReadOnly { path, source }
                        if path.starts_with("var/") && *path != Path::new("var/task") =>
                    {
                        assert!(source.ends_with("python3.12"), "{source:?}");
                        Some(path.as_path())
                    }
                    _ => None,
                })
                .collect();
            let want: Vec<&Path> = want.iter().map(Path::new).collect();
            assert_eq!(got, want, "langs {langs:?}, runtimes {runtimes:?}");
        }
    }

    #[test]
    fn directories_of_the_vm_stay_directories() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("usr")).unwrap();
        fs::create_dir_all(dir.path().join("lib64")).unwrap();
        let mounts = mounts(&layout(dir.path()), "provided", Path::new("/c"), 1);
        assert_eq!(
            mounts[..4],
            [
                Mount::Dir { path: "usr".into() },
                Mount::BindReadOnly {
                    source: dir.path().join("usr"),
                    path: "usr".into()
                },
                Mount::Dir {
                    path: "lib64".into()
                },
                Mount::BindReadOnly {
                    source: dir.path().join("lib64"),
                    path: "lib64".into()
                },
            ]
        );
    }

    #[test]
    fn bootstraps() {
        let cases = [
            ("provided.al2023", "/var/task/bootstrap"),
            ("provided.al2", "/var/task/bootstrap"),
            ("provided", "/var/task/bootstrap"),
            ("python3.12", "/var/runtime/bootstrap"),
            ("nodejs20.x", "/var/runtime/bootstrap"),
        ];
        for (runtime, want) in cases {
            assert_eq!(bootstrap(runtime), Path::new(want), "{runtime}");
        }
    }

    #[test]
    fn cpu_quotas() {
        let vm = |quota_us, period_us| {
            Some(CpuQuota {
                quota_us,
                period_us,
            })
        };
        // (cpu_millis, the VM's quota, quota_us, period_us)
        let cases = [
            (1000, vm(200_000, 100_000), 100_000, 100_000),
            (72, vm(200_000, 100_000), 7_200, 100_000),
            (1769, vm(100_000, 100_000), 100_000, 100_000),
            (3000, vm(200_000, 100_000), 200_000, 100_000),
            (1, vm(100_000, 100_000), 1_000, 100_000),
            (0, vm(100_000, 100_000), 1_000, 100_000),
            (500, vm(50_000, 50_000), 25_000, 50_000),
            (2500, None, 250_000, 100_000),
            (5, vm(500, 100_000), 1_000, 100_000),
        ];
        for (millis, vm, quota_us, period_us) in cases {
            assert_eq!(
                cpu_quota(millis, vm),
                CpuQuota {
                    quota_us,
                    period_us
                },
                "{millis} millis in {vm:?}"
            );
        }
    }

    #[test]
    fn memory_is_capped_at_the_vm() {
        assert_eq!(memory_mb(128, Some(512 << 20)), 128);
        assert_eq!(memory_mb(1024, Some(512 << 20)), 512);
        assert_eq!(memory_mb(1024, Some((512 << 20) + 4095)), 512);
        assert_eq!(memory_mb(1024, None), 1024);
    }

    #[test]
    fn names() {
        for good in [
            "c-1",
            "c-0123456789abcdef",
            "python3.12",
            "provided.al2023",
            "A_b",
        ] {
            assert!(valid_name(good), "{good}");
        }
        let long = "a".repeat(129);
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "../x",
            "a b",
            "é",
            long.as_str(),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn reports_and_plans_are_json_lines() {
        let reports = [
            Report::Started { pid: 42 },
            Report::SetupFailed {
                stage: "mount".into(),
                error: "EPERM".into(),
            },
            Report::Running,
            Report::ExecFailed {
                error: "exec /var/task/bootstrap: ENOENT".into(),
            },
            Report::RuntimeExited {
                code: None,
                signal: Some(9),
            },
        ];
        for report in reports {
            let line = serde_json::to_string(&report).unwrap();
            assert!(!line.contains('\n'));
            assert_eq!(serde_json::from_str::<Report>(&line).unwrap(), report);
        }
    }
}
