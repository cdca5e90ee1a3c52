//! The outside world of `ember bench egress`: a network namespace of its own, linked to the host
//! by a veth pair and routed from it, with an HTTP server inside that answers every GET with a
//! short page. The same scheme as the end-to-end tests' world (tests/e2e/world.py), and the same
//! slots, so a benchmark and a test session never collide: slot `N` (one of 32, claimed by an
//! flock on `/run/ember-world/N.lock` for the world's life) is the namespace `emberworldN`, the
//! host link `emberwN` on the transit network 198.51.100.(8N)/29 (TEST-NET-2: the host .1, the
//! world .2), and the world's own prefix 203.0.113.(8N)/29 (TEST-NET-3), routed by the host
//! through the link, its server on .(8N+2): one router hop beyond the host, as the internet is
//! (Ember denies the networks the host is on), in ranges that are neither private (denied by
//! default too) nor Ember's own. Whoever claims a slot first removes what a killed holder left.
//!
//! Set up once per run with iproute2's `ip` (never on a measured path). The HTTP server is this
//! process's own: a thread enters the namespace (`setns`) only to bind the listening socket,
//! which stays in the namespace it was made in; the server then runs on the benchmark's runtime.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where the slots' locks live (shared with tests/e2e/world.py).
const LOCK_DIR: &str = "/run/ember-world";
const SLOTS: u8 = 32;
/// The page every GET gets.
pub(crate) const PAGE: &[u8] = b"hello from the world\n";
/// A request head larger than this is refused (the server closes the connection).
const MAX_HEAD: usize = 16 * 1024;

/// The namespace, link and addresses of slot `slot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) netns: String,
    pub(crate) host_link: String,
    /// The host's address on the link (the source the world sees: the host's NAT).
    pub(crate) host_ip: Ipv4Addr,
    /// The world's address on the link: the host's next hop to `ip`.
    pub(crate) hop: Ipv4Addr,
    /// The world's own address, where its server listens.
    pub(crate) ip: Ipv4Addr,
}

impl Slot {
    pub(crate) fn new(slot: u8) -> Slot {
        let base = 8 * slot;
        Slot {
            netns: format!("emberworld{slot}"),
            host_link: format!("emberw{slot}"),
            host_ip: Ipv4Addr::new(198, 51, 100, base + 1),
            hop: Ipv4Addr::new(198, 51, 100, base + 2),
            ip: Ipv4Addr::new(203, 0, 113, base + 2),
        }
    }

    /// The world's own prefix, which the host routes through the link.
    pub(crate) fn routed(&self) -> String {
        let [a, b, c, d] = self.ip.octets();
        format!("{a}.{b}.{c}.{}/29", d & !7)
    }
}

/// A world namespace, removed on drop (its link with it) and its slot released.
#[derive(Debug)]
pub(crate) struct World {
    pub(crate) slot: Slot,
    _lock: File,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run iproute2's `ip`")?;
    anyhow::ensure!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl World {
    /// Claims a free slot, sweeps its leftovers and builds the namespace and its link.
    pub(crate) fn create() -> anyhow::Result<World> {
        std::fs::create_dir_all(LOCK_DIR).with_context(|| format!("cannot create {LOCK_DIR}"))?;
        for n in 0..SLOTS {
            let path = Path::new(LOCK_DIR).join(format!("{n}.lock"));
            let lock = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            if lock.try_lock().is_err() {
                continue;
            }
            let world = World {
                slot: Slot::new(n),
                _lock: lock,
            };
            world.sweep();
            world.build()?;
            return Ok(world);
        }
        anyhow::bail!("all {SLOTS} world slots under {LOCK_DIR} are taken")
    }

    /// Removes what a killed holder of the slot left: processes in the namespace (by pid), the
    /// namespace, the host's end of the link. Best effort: what is not there is fine.
    fn sweep(&self) {
        let s = &self.slot;
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &s.netns])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = ip(&["netns", "del", &s.netns]);
        let _ = ip(&["link", "del", &s.host_link]);
    }

    fn build(&self) -> anyhow::Result<()> {
        let s = &self.slot;
        let (host, hop, own) = (
            format!("{}/29", s.host_ip),
            format!("{}/29", s.hop),
            format!("{}/32", s.ip),
        );
        let (via_host, via_hop) = (s.host_ip.to_string(), s.hop.to_string());
        ip(&["netns", "add", &s.netns])?;
        ip(&[
            "link",
            "add",
            &s.host_link,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &s.netns,
        ])?;
        ip(&["addr", "add", &host, "dev", &s.host_link])?;
        ip(&["link", "set", &s.host_link, "up"])?;
        ip(&["-n", &s.netns, "link", "set", "lo", "up"])?;
        ip(&["-n", &s.netns, "addr", "add", &hop, "dev", "eth0"])?;
        ip(&["-n", &s.netns, "addr", "add", &own, "dev", "lo"])?;
        ip(&["-n", &s.netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &s.netns, "route", "add", "default", "via", &via_host])?;
        ip(&[
            "route",
            "add",
            &s.routed(),
            "via",
            &via_hop,
            "dev",
            &s.host_link,
        ])?;
        Ok(())
    }

    /// A listening TCP socket on the world's address and `port`, made inside its namespace.
    pub(crate) fn listen(&self, port: u16) -> anyhow::Result<std::net::TcpListener> {
        let netns = Path::new("/run/netns").join(&self.slot.netns);
        let addr = (self.slot.ip, port);
        std::thread::spawn(move || -> anyhow::Result<std::net::TcpListener> {
            let ns =
                File::open(&netns).with_context(|| format!("cannot open {}", netns.display()))?;
            // Only this short-lived thread enters the namespace; the socket keeps it.
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .context("cannot enter the world's namespace")?;
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {}:{}", addr.0, addr.1))?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread entering the world's namespace panicked"))?
    }

    /// Serves the page on `listener` (from [`World::listen`]) until the runtime stops.
    pub(crate) fn serve(listener: std::net::TcpListener) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(answer(conn));
            }
        });
        Ok(())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // The namespace's deletion takes its end of the veth pair, and so the host's, with it.
        self.sweep();
    }
}

/// Answers every request of one connection with the page, until the client closes it (or
/// sends a head longer than `MAX_HEAD`).
async fn answer(mut conn: tokio::net::TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let response = [
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            PAGE.len()
        )
        .as_bytes(),
        PAGE,
    ]
    .concat();
    loop {
        while let Some(end) = head_end(&buf) {
            if conn.write_all(&response).await.is_err() {
                return;
            }
            buf.drain(..end);
        }
        if buf.len() > MAX_HEAD {
            return;
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Where the first request head in `buf` ends (after its blank line), if it is complete. The
/// benchmark's requests are GETs without a body.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_get_their_own_names_and_29s_of_test_net_2_and_3() {
        assert_eq!(
            Slot::new(0),
            Slot {
                netns: "emberworld0".into(),
                host_link: "emberw0".into(),
                host_ip: Ipv4Addr::new(198, 51, 100, 1),
                hop: Ipv4Addr::new(198, 51, 100, 2),
                ip: Ipv4Addr::new(203, 0, 113, 2),
            }
        );
        assert_eq!(Slot::new(0).routed(), "203.0.113.0/29");
        assert_eq!(Slot::new(3).routed(), "203.0.113.24/29");
        let last = Slot::new(SLOTS - 1);
        assert_eq!(last.host_ip, Ipv4Addr::new(198, 51, 100, 249));
        assert_eq!(last.ip, Ipv4Addr::new(203, 0, 113, 250));
        assert_eq!(last.host_link, "emberw31");
        assert!(
            last.host_link.len() <= 15,
            "an interface name has 15 bytes at most"
        );
    }

    #[test]
    fn a_head_ends_after_its_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nGET /"), Some(18));
        assert_eq!(head_end(b""), None);
    }

    #[tokio::test]
    async fn answers_each_pipelined_request_with_the_page() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        World::serve(listener).unwrap();
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: w\r\n\r\nGET /x HTTP/1.1\r\nHost: w\r\n\r\n")
            .await
            .unwrap();
        conn.shutdown().await.unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.unwrap();
        let text = String::from_utf8(got).unwrap();
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
        assert!(text.ends_with("hello from the world\n"));
    }
}
