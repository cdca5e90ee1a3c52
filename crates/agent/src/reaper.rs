//! Exit statuses of the agent's children, collected by one reaper.
//!
//! In a VM the agent is PID 1: every process whose parent dies is re-parented to it, and it must
//! reap them all, or they stay zombies. It does so with `waitpid(-1)` on every `SIGCHLD`, so no
//! other code may wait for a child of its own: a second `waitpid` would race the reaper and lose.
//! Instead, whoever needs an exit status registers the pid here ([`Reaper::watch`], or
//! [`Reaper::spawn`] for a child it starts) and gets it on a oneshot channel.
//!
//! Outside a VM (the agent run by hand, or in tests) the reaper makes the agent a child
//! subreaper, so the containers' first processes are still re-parented to it, and only waits for
//! the pids registered here, leaving any other child of the process to whoever started it.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ember_protocol::ExitStatus;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;
use tracing::debug;

/// The agent's single reaper. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Reaper {
    /// Whether every child is reaped (PID 1), or only the registered ones.
    all: bool,
    waiting: Mutex<HashMap<i32, oneshot::Sender<ExitStatus>>>,
}

impl Reaper {
    /// Starts reaping, on the current tokio runtime, until the runtime ends.
    pub fn start() -> io::Result<Arc<Self>> {
        let all = std::process::id() == 1;
        if !all {
            nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)?;
        }
        // Installed before any child exists, so no SIGCHLD is missed.
        let mut children = signal(SignalKind::child())?;
        let reaper = Arc::new(Self {
            all,
            waiting: Mutex::new(HashMap::new()),
        });
        let task = Arc::downgrade(&reaper);
        tokio::spawn(async move {
            loop {
                match task.upgrade() {
                    Some(reaper) => reaper.reap(),
                    None => break,
                }
                if children.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    /// Spawns `command` and registers the child before the reaper can collect it: the lock is
    /// held across the spawn, which also keeps the reaper from stealing the child that `spawn`
    /// itself reaps when the exec fails.
    pub fn spawn(
        &self,
        command: &mut Command,
    ) -> io::Result<(Child, oneshot::Receiver<ExitStatus>)> {
        let mut waiting = self.lock();
        let child = command.spawn()?;
        let (tx, rx) = oneshot::channel();
        waiting.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    /// Registers `pid`, a child of this process (or one about to be re-parented to it) that has
    /// not exited yet: its status arrives on the returned channel.
    pub fn watch(&self, pid: Pid) -> oneshot::Receiver<ExitStatus> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(pid.as_raw(), tx);
        if !self.all {
            // Its SIGCHLD may have come and gone before it was registered.
            self.reap();
        }
        rx
    }

    /// Collects every exited child, without blocking.
    fn reap(&self) {
        let mut waiting = self.lock();
        if self.all {
            loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => return,
                    Ok(status) => deliver(&mut waiting, status),
                }
            }
        }
        let pids: Vec<i32> = waiting.keys().copied().collect();
        for pid in pids {
            // ECHILD: not (yet) our child, e.g. still waiting to be re-parented.
            if let Ok(status) = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                deliver(&mut waiting, status);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, oneshot::Sender<ExitStatus>>> {
        // The map is consistent between statements; a panicking holder cannot tear it.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn deliver(waiting: &mut HashMap<i32, oneshot::Sender<ExitStatus>>, status: WaitStatus) {
    let (pid, exit) = match status {
        WaitStatus::Exited(pid, code) => (
            pid,
            ExitStatus {
                code: Some(code),
                signal: None,
            },
        ),
        WaitStatus::Signaled(pid, signal, _) => (
            pid,
            ExitStatus {
                code: None,
                signal: Some(signal as i32),
            },
        ),
        // Not asked for (no WUNTRACED, WCONTINUED): nothing ended.
        _ => return,
    };
    match waiting.remove(&pid.as_raw()) {
        // The watcher may have given up; that is its business.
        Some(tx) => {
            let _ = tx.send(exit);
        }
        None => debug!(%pid, ?exit, "reaped a child"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::Duration;

    use super::*;

    async fn status(rx: oneshot::Receiver<ExitStatus>) -> ExitStatus {
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("no exit status within 10 s")
            .expect("the reaper dropped the watch")
    }

    #[tokio::test]
    async fn delivers_exit_codes_signals_and_adopted_orphans() {
        let reaper = Reaper::start().unwrap();
        let (_child, exited) = reaper
            .spawn(Command::new("sh").args(["-c", "exit 7"]))
            .unwrap();
        let (_child, killed) = reaper
            .spawn(Command::new("sh").args(["-c", "kill -9 $$"]))
            .unwrap();
        assert_eq!(
            status(exited).await,
            ExitStatus {
                code: Some(7),
                signal: None
            }
        );
        assert_eq!(
            status(killed).await,
            ExitStatus {
                code: None,
                signal: Some(9)
            }
        );

        // A grandchild whose parent exits is re-parented to this process (a subreaper here, PID
        // 1 in a VM) and can be watched by its pid.
        let (mut child, parent) = reaper
            .spawn(
                Command::new("sh")
                    .args(["-c", "sleep 0.3 & echo $!"])
                    .stdout(Stdio::piped()),
            )
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let orphan = reaper.watch(Pid::from_raw(line.trim().parse().unwrap()));
        assert_eq!(status(parent).await.code, Some(0));
        assert_eq!(status(orphan).await.code, Some(0));
    }
}
