//! A container's output: its runtime's stdout and stderr, one pipe read by the agent and kept
//! for the invocation it belongs to.
//!
//! Both streams share one pipe, so their lines keep the order the runtime wrote them in, as in a
//! Lambda log stream. What arrives belongs to the current invocation (what the runtime printed
//! during its init goes to the first one); [`LogPipe::take`] ends the invocation's share, after
//! reading whatever the pipe holds, so output written before the runtime posted its answer is
//! never left behind for the next invocation.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, PoisonError};

use nix::errno::Errno;
use tokio::net::unix::pipe;

/// The most output kept for one invocation: its last 64 KiB.
pub const MAX_LOG_BYTES: usize = 64 * 1024;

/// The last [`MAX_LOG_BYTES`] of some output.
#[derive(Debug, Default)]
pub struct LogTail {
    bytes: Vec<u8>,
    /// Whether bytes were dropped from the front.
    truncated: bool,
}

impl LogTail {
    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.len() >= MAX_LOG_BYTES {
            self.bytes.clear();
            self.bytes
                .extend_from_slice(&bytes[bytes.len() - MAX_LOG_BYTES..]);
            self.truncated = true;
            return;
        }
        self.bytes.extend_from_slice(bytes);
        if self.bytes.len() > MAX_LOG_BYTES {
            let excess = self.bytes.len() - MAX_LOG_BYTES;
            self.bytes.drain(..excess);
            self.truncated = true;
        }
    }

    /// Takes the text kept so far. A character cut in two by the truncation is left out; other
    /// invalid UTF-8 becomes U+FFFD.
    pub fn take(&mut self) -> String {
        let bytes = std::mem::take(&mut self.bytes);
        let start = if std::mem::take(&mut self.truncated) {
            // Continuation bytes (10xxxxxx) cannot start a character.
            bytes
                .iter()
                .take(3)
                .take_while(|b| **b & 0xC0 == 0x80)
                .count()
        } else {
            0
        };
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }
}

/// The read end of a container's log pipe and what was read from it.
#[derive(Debug)]
pub struct LogPipe {
    pipe: pipe::Receiver,
    tail: Mutex<LogTail>,
}

impl LogPipe {
    pub fn new(read_end: OwnedFd) -> io::Result<Self> {
        Ok(Self {
            pipe: pipe::Receiver::from_owned_fd(read_end)?,
            tail: Mutex::new(LogTail::default()),
        })
    }

    /// Reads the pipe until every writer has closed it (the container's processes are gone).
    pub async fn run(&self) {
        loop {
            if self.pipe.readable().await.is_err() {
                return;
            }
            let mut tail = self.lock();
            // Through `try_io`, so that running dry clears tokio's readiness.
            let read = self.pipe.try_io(|| match self.read_available(&mut tail) {
                Ok(false) => Err(io::ErrorKind::WouldBlock.into()),
                other => other,
            });
            match read {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                _ => return,
            }
        }
    }

    /// Reads what the pipe holds now with read(2) itself: tokio's readiness may not have caught
    /// up with bytes written a moment ago. Returns whether the pipe reached its end.
    fn read_available(&self, tail: &mut LogTail) -> io::Result<bool> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match nix::unistd::read(self.pipe.as_raw_fd(), &mut buf) {
                Ok(0) => return Ok(true),
                Ok(n) => tail.push(&buf[..n]),
                Err(Errno::EAGAIN) => return Ok(false),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Ends the current invocation's share of the output and returns it.
    pub fn take(&self) -> String {
        let mut tail = self.lock();
        // The lock is held across the reads, so the reader task cannot reorder bytes.
        let _ = self.read_available(&mut tail);
        tail.take()
    }

    fn lock(&self) -> MutexGuard<'_, LogTail> {
        // LogTail is consistent between statements; a panicking holder cannot tear it.
        self.tail.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn keeps_the_last_64_kib() {
        let mut tail = LogTail::default();
        tail.push(b"hello\n");
        assert_eq!(tail.take(), "hello\n");
        assert_eq!(tail.take(), "", "taken");

        for _ in 0..100 {
            tail.push(&[b'a'; 1000]);
        }
        tail.push(b"end\n");
        let text = tail.take();
        assert_eq!(text.len(), MAX_LOG_BYTES);
        assert!(text.ends_with("aaaend\n"));

        tail.push(&vec![b'b'; 3 * MAX_LOG_BYTES]);
        assert_eq!(tail.take().len(), MAX_LOG_BYTES);
    }

    #[test]
    fn a_character_cut_by_truncation_is_dropped() {
        let mut tail = LogTail::default();
        // "é" is two bytes; one byte too many drops its first, leaving half a character.
        let mut input = "é".as_bytes().to_vec();
        input.extend_from_slice(&vec![b'x'; MAX_LOG_BYTES - 2]);
        input.push(b'y');
        tail.push(&input[..2]);
        tail.push(&input[2..]);
        let text = tail.take();
        assert!(!text.contains('\u{FFFD}'), "no replacement character");
        assert_eq!(text.len(), MAX_LOG_BYTES - 1);
        assert!(text.ends_with("xxy"));
    }

    #[tokio::test]
    async fn reads_until_every_writer_is_gone_and_take_drains_first() {
        let (read, write) = nix::unistd::pipe().unwrap();
        let logs = std::sync::Arc::new(LogPipe::new(read).unwrap());
        let mut writer = std::fs::File::from(write);
        writer.write_all(b"init\n").unwrap();
        // Written before the take: part of this invocation even if the reader has not run.
        assert_eq!(logs.take(), "init\n");
        writer.write_all(b"second\n").unwrap();
        let reader = tokio::spawn({
            let logs = logs.clone();
            async move { logs.run().await }
        });
        drop(writer);
        tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(logs.take(), "second\n");
    }
}
