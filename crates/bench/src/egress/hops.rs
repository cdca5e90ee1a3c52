//! The floors of `ember bench egress`, hop by hop: long-lived processes of the function's own
//! request code ([`super::APP`]'s `serve` mode: one request per line read, its time printed),
//! one on the host and one in each network namespace a container's request crosses (the VM's,
//! the container's), driven between the function's invocations so that every series meets the
//! machine in the same state. The differences between them price each hop of the data path
//! apart from the function's own process (its cgroup, its seccomp filter, the invocation's
//! wake-up).
//!
//! A namespace is found from the function's answer: the inode of its `/proc/self/ns/net`
//! (nsfs inodes are the same seen from any namespace), matched against `/proc/<pid>/ns/net` of
//! the host's processes; the VM's is the first ancestor of that process in another namespace
//! (the agent's). A process is started in a namespace by a short-lived thread that enters it
//! (`setns`) only to spawn it: the child inherits the spawning thread's namespace.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// A process making one request per [`Requester::request`].
pub(super) struct Requester {
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Requester {
    /// `python app HOST serve`, in the network namespace `netns` (the caller's if `None`),
    /// once it made its first request (so a failing path fails here, not in the series).
    pub(super) async fn start(
        python: &Path,
        app: &Path,
        host: &str,
        netns: Option<File>,
    ) -> anyhow::Result<Requester> {
        let mut command = Command::new(python);
        command
            .arg(app)
            .args([host, "serve"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let runtime = tokio::runtime::Handle::current();
        let mut child = std::thread::spawn(move || -> anyhow::Result<Child> {
            // The child's pipes register with the benchmark's runtime.
            let _runtime = runtime.enter();
            if let Some(ns) = &netns {
                // Only this short-lived thread enters the namespace; the child stays in it.
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .context("cannot enter the network namespace")?;
            }
            command.spawn().context("cannot start the floor's requests")
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread starting a floor process panicked"))??;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            anyhow::bail!("the floor's process has no pipes");
        };
        let mut requester = Requester {
            _child: child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
        };
        requester.request().await?;
        Ok(requester)
    }

    /// One request; its time in ms.
    pub(super) async fn request(&mut self) -> anyhow::Result<f64> {
        self.stdin.write_all(b"\n").await?;
        self.stdin.flush().await?;
        let line = self
            .stdout
            .next_line()
            .await?
            .context("the floor's process ended (its request failed)")?;
        let ns: u64 = line
            .trim()
            .parse()
            .with_context(|| format!("the floor's process printed {line:?}, not a time"))?;
        Ok(ns as f64 / 1e6)
    }
}

/// The network namespaces of the function's container (whose `/proc/self/ns/net` has inode
/// `inode`) and of its VM: (the container's, the VM's), open.
pub(super) fn namespaces_of(inode: u64) -> anyhow::Result<(File, File)> {
    let inode_of = |pid: u32| {
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .ok()
            .map(|m| m.ino())
    };
    let pid = std::fs::read_dir("/proc")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| inode_of(*pid) == Some(inode))
        .with_context(|| format!("no process is in the function's network namespace {inode}"))?;
    let mut ancestor = pid;
    let vm = loop {
        let status = std::fs::read_to_string(format!("/proc/{ancestor}/status"))
            .with_context(|| format!("process {ancestor} is gone"))?;
        ancestor = parent(&status).context("no parent in another network namespace")?;
        match inode_of(ancestor) {
            Some(other) if other != inode => break ancestor,
            Some(_) => {}
            None => anyhow::bail!("process {ancestor} is gone"),
        }
    };
    let open = |pid: u32| {
        let path = format!("/proc/{pid}/ns/net");
        File::open(&path).with_context(|| format!("cannot open {path}"))
    };
    Ok((open(pid)?, open(vm)?))
}

/// The parent's pid in a `/proc/<pid>/status` text (`None` for the kernel's own, 0).
fn parent(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("PPid:"))
        .and_then(|pid| pid.trim().parse().ok())
        .filter(|pid| *pid != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_read_from_the_status_text() {
        let status = "Name:\tpython3.11\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\n\
                      Ngid:\t0\nPid:\t42\nPPid:\t7\nTracerPid:\t0\n";
        assert_eq!(parent(status), Some(7));
        assert_eq!(parent("Name:\tinit\nPPid:\t0\n"), None);
        assert_eq!(parent("Name:\tx\n"), None);
    }
}
