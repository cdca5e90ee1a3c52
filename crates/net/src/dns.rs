//! The DNS forwarder a VM's containers resolve through: it listens on the VMs' gateway address
//! (UDP and TCP port 53) and relays each query to the host's resolvers (its `/etc/resolv.conf`)
//! or those given with `ember serve --dns IP`.
//!
//! A relay, not a resolver: each query goes to the upstreams as the client sent it (its id,
//! flags, EDNS options), and the upstream's answer comes back unchanged, so the client's
//! resolver library sees exactly what it would have seen asking the upstream itself (a truncated
//! UDP answer included: the client then asks again over TCP, which is relayed over TCP). What the
//! relay adds:
//!
//! - **Fail-over**: an upstream that times out, fails, or answers `SERVFAIL`/`REFUSED` is followed
//!   by the next; the one that answered last is asked first next time. When none answers, the
//!   client gets a `SERVFAIL` (not silence, which would cost it its full retry timeout).
//! - **Bounds**: at most [`MAX_UDP_IN_FLIGHT`] UDP queries and [`MAX_TCP_CONNECTIONS`] TCP
//!   connections at once (beyond that a UDP query is dropped, as a loaded server does, and a TCP
//!   connection is closed); every upstream attempt has a deadline ([`UPSTREAM_TIMEOUT`]), and an
//!   idle TCP client is closed after [`TCP_IDLE_TIMEOUT`].
//! - **Hygiene**: only queries (QR clear, a full header) are relayed; an upstream's reply counts
//!   only if it is a response to the same id from that upstream (each UDP attempt has its own
//!   connected socket on a fresh ephemeral port).
//!
//! The sockets are bound with `IP_FREEBIND`, so the forwarder can listen on the gateway address
//! before the first VM's link carries it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;

/// The port a forwarder serves on.
pub const DNS_PORT: u16 = 53;
/// How long one upstream gets to answer one query.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP client may stay silent between queries.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// UDP queries relayed at once.
pub const MAX_UDP_IN_FLIGHT: usize = 512;
/// TCP clients served at once.
pub const MAX_TCP_CONNECTIONS: usize = 128;

/// The DNS header's length.
const HEADER_LEN: usize = 12;
/// The largest DNS message (TCP's two-byte length; a UDP datagram).
const MAX_MESSAGE: usize = 65_535;

/// Why the forwarder could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// No upstream resolver to relay to.
    #[error("no upstream DNS resolver: give one with --dns IP or in /etc/resolv.conf")]
    NoUpstreams,
    /// An upstream is the forwarder itself.
    #[error("upstream {0} is the forwarder's own address: queries would loop")]
    Loop(SocketAddr),
    /// A socket could not be made or bound.
    #[error("cannot listen for DNS on {addr} ({proto})")]
    Bind {
        /// Where.
        addr: SocketAddr,
        /// `udp` or `tcp`.
        proto: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A running forwarder. Dropping it stops it (its tasks are aborted, its sockets closed).
#[derive(Debug)]
pub struct DnsForwarder {
    udp: SocketAddr,
    tcp: SocketAddr,
    tasks: JoinSet<()>,
}

impl DnsForwarder {
    /// Where it serves UDP.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp
    }

    /// Where it serves TCP.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp
    }
}

impl Drop for DnsForwarder {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Serves DNS on UDP and TCP port 53 of `listen`, relaying to `upstreams` in order (see the
/// module's documentation).
pub async fn start(listen: IpAddr, upstreams: Vec<SocketAddr>) -> Result<DnsForwarder, DnsError> {
    start_at(SocketAddr::new(listen, DNS_PORT), upstreams).await
}

/// [`start`] on any address and port (port 0: one the kernel picks, the same for UDP and TCP
/// only by chance; read them back from the forwarder).
pub async fn start_at(
    listen: SocketAddr,
    upstreams: Vec<SocketAddr>,
) -> Result<DnsForwarder, DnsError> {
    if upstreams.is_empty() {
        return Err(DnsError::NoUpstreams);
    }
    if listen.port() != 0 {
        if let Some(u) = upstreams.iter().find(|u| **u == listen) {
            return Err(DnsError::Loop(*u));
        }
    }
    let udp = bind_udp(listen).map_err(|source| DnsError::Bind {
        addr: listen,
        proto: "udp",
        source,
    })?;
    let tcp = bind_tcp(listen).map_err(|source| DnsError::Bind {
        addr: listen,
        proto: "tcp",
        source,
    })?;
    let local = |r: io::Result<SocketAddr>, proto| {
        r.map_err(|source| DnsError::Bind {
            addr: listen,
            proto,
            source,
        })
    };
    let udp_addr = local(udp.local_addr(), "udp")?;
    let tcp_addr = local(tcp.local_addr(), "tcp")?;
    let upstreams = Arc::new(Upstreams {
        addrs: upstreams,
        preferred: AtomicUsize::new(0),
    });
    let mut tasks = JoinSet::new();
    tasks.spawn(serve_udp(Arc::new(udp), Arc::clone(&upstreams)));
    tasks.spawn(serve_tcp(tcp, upstreams));
    tracing::info!(udp = %udp_addr, tcp = %tcp_addr, "DNS forwarder listening");
    Ok(DnsForwarder {
        udp: udp_addr,
        tcp: tcp_addr,
        tasks,
    })
}

/// The resolvers of a `resolv.conf` (its `nameserver` lines, port 53), in order. Unreadable:
/// none. A link-local IPv6 resolver with a `%zone` is left out (the zone names a host
/// interface; say `--dns` instead).
pub fn system_resolvers(path: impl AsRef<Path>) -> Vec<SocketAddr> {
    let path = path.as_ref();
    match std::fs::read_to_string(path) {
        Ok(text) => parse_resolv_conf(&text),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the system's resolvers");
            Vec::new()
        }
    }
}

fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else { continue };
        match addr.parse::<IpAddr>() {
            Ok(ip) => {
                let a = SocketAddr::new(ip, DNS_PORT);
                if !out.contains(&a) {
                    out.push(a);
                }
            }
            Err(_) => tracing::warn!(nameserver = addr, "resolver left out: not an IP address"),
        }
    }
    out
}

fn socket_for(addr: SocketAddr, kind: rustix::net::SocketType) -> io::Result<OwnedFd> {
    use rustix::net::{sockopt, AddressFamily, SocketFlags};
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket_with(
        family,
        kind,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    // The gateway address may be on no link yet (no VM has booted).
    if addr.is_ipv4() {
        sockopt::set_ip_freebind(&fd, true)?;
    } else {
        sockopt::set_ipv6_freebind(&fd, true)?;
    }
    Ok(fd)
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let fd = socket_for(addr, rustix::net::SocketType::DGRAM)?;
    rustix::net::bind(&fd, &addr)?;
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let fd = socket_for(addr, rustix::net::SocketType::STREAM)?;
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, 1024)?;
    TcpListener::from_std(std::net::TcpListener::from(fd))
}

/// The upstreams, and which one to ask first (the last that answered).
#[derive(Debug)]
struct Upstreams {
    addrs: Vec<SocketAddr>,
    preferred: AtomicUsize,
}

impl Upstreams {
    /// The upstreams in the order to try them.
    fn order(&self) -> impl Iterator<Item = (usize, SocketAddr)> + '_ {
        let n = self.addrs.len();
        let first = self.preferred.load(Ordering::Relaxed) % n.max(1);
        (0..n).map(move |i| {
            let k = (first + i) % n;
            (k, self.addrs[k])
        })
    }

    /// Relays `query` to each upstream in turn until one answers usefully.
    async fn relay(&self, query: &[u8], tcp: bool) -> Vec<u8> {
        let mut fallback = None;
        for (k, upstream) in self.order() {
            let attempt = if tcp {
                timeout(UPSTREAM_TIMEOUT, ask_tcp(upstream, query)).await
            } else {
                timeout(UPSTREAM_TIMEOUT, ask_udp(upstream, query)).await
            };
            match attempt {
                Ok(Ok(answer)) if is_useful(&answer) => {
                    self.preferred.store(k, Ordering::Relaxed);
                    return answer;
                }
                Ok(Ok(answer)) => {
                    tracing::debug!(%upstream, rcode = rcode(&answer), "upstream failed a query");
                    fallback = Some(answer);
                }
                Ok(Err(e)) => tracing::debug!(%upstream, error = %e, "upstream unreachable"),
                Err(_) => tracing::debug!(%upstream, "upstream timed out"),
            }
        }
        fallback.unwrap_or_else(|| servfail(query))
    }
}

/// Whether an answer ends the search: anything but `SERVFAIL` (2) and `REFUSED` (5).
fn is_useful(answer: &[u8]) -> bool {
    !matches!(rcode(answer), 2 | 5)
}

fn rcode(msg: &[u8]) -> u8 {
    msg.get(3).map_or(0, |b| b & 0x0f)
}

/// A message the forwarder relays: a full header, QR clear (a query), opcode QUERY (0).
fn is_query(msg: &[u8]) -> bool {
    msg.len() >= HEADER_LEN && msg[2] & 0x80 == 0 && (msg[2] >> 3) & 0x0f == 0
}

/// A response to `query`: same id, QR set.
fn answers(query: &[u8], msg: &[u8]) -> bool {
    msg.len() >= HEADER_LEN && msg[0..2] == query[0..2] && msg[2] & 0x80 != 0
}

/// The end of the question section, if the query's questions parse (uncompressed names).
fn question_end(msg: &[u8]) -> Option<usize> {
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    let mut at = HEADER_LEN;
    for _ in 0..qdcount {
        loop {
            let len = usize::from(*msg.get(at)?);
            if len == 0 {
                at += 1;
                break;
            }
            if len & 0xc0 != 0 {
                return None;
            }
            at += 1 + len;
        }
        at += 4; // QTYPE, QCLASS
    }
    (at <= msg.len()).then_some(at)
}

/// `SERVFAIL` for `query`: its id, RD, and question; no records.
fn servfail(query: &[u8]) -> Vec<u8> {
    let end = question_end(query);
    let mut out = query[..end.unwrap_or(HEADER_LEN)].to_vec();
    out[2] = 0x80 | (query[2] & 0x01); // QR, opcode QUERY, RD as asked
    out[3] = 0x80 | 2; // RA, SERVFAIL
    if end.is_none() {
        out[4..6].copy_from_slice(&[0, 0]);
    }
    out[6..12].copy_from_slice(&[0; 6]);
    out
}

async fn ask_udp(upstream: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let n = socket.recv(&mut buf).await?;
        if answers(query, &buf[..n]) {
            buf.truncate(n);
            return Ok(buf);
        }
        // A stray datagram (an earlier attempt's late answer cannot reach this fresh port, but
        // anything else can): wait on for the real one.
    }
}

async fn ask_tcp(upstream: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    write_framed(&mut stream, query).await?;
    loop {
        let answer = read_framed(&mut stream)
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "upstream closed"))?;
        if answers(query, &answer) {
            return Ok(answer);
        }
    }
}

async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "DNS message over 64 KiB"))?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    stream.write_all(&framed).await
}

/// One length-prefixed message; `None` at a clean end of stream.
async fn read_framed(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

async fn serve_udp(socket: Arc<UdpSocket>, upstreams: Arc<Upstreams>) {
    let permits = Arc::new(Semaphore::new(MAX_UDP_IN_FLIGHT));
    let mut queries = JoinSet::new();
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        // Reap finished relays so the set does not grow.
        while queries.try_join_next().is_some() {}
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors of earlier sends surface here on some kernels; keep serving,
                // without spinning on an error that repeats.
                tracing::debug!(error = %e, "DNS UDP receive failed");
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let query = buf[..n].to_vec();
        if !is_query(&query) {
            continue;
        }
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::debug!(%client, "DNS forwarder busy: query dropped");
            continue;
        };
        let socket = Arc::clone(&socket);
        let upstreams = Arc::clone(&upstreams);
        queries.spawn(async move {
            let answer = upstreams.relay(&query, false).await;
            if let Err(e) = socket.send_to(&answer, client).await {
                tracing::debug!(%client, error = %e, "DNS answer not sent");
            }
            drop(permit);
        });
    }
}

async fn serve_tcp(listener: TcpListener, upstreams: Arc<Upstreams>) {
    let permits = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut clients = JoinSet::new();
    loop {
        while clients.try_join_next().is_some() {}
        let (stream, client) = match listener.accept().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "DNS TCP accept failed");
                // EMFILE and the like: give the system a moment.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::debug!(%client, "DNS forwarder busy: TCP client closed");
            continue;
        };
        let upstreams = Arc::clone(&upstreams);
        clients.spawn(async move {
            if let Err(e) = serve_tcp_client(stream, &upstreams).await {
                tracing::debug!(%client, error = %e, "DNS TCP client ended");
            }
            drop(permit);
        });
    }
}

async fn serve_tcp_client(mut stream: TcpStream, upstreams: &Upstreams) -> io::Result<()> {
    stream.set_nodelay(true)?;
    loop {
        let Ok(query) = timeout(TCP_IDLE_TIMEOUT, read_framed(&mut stream)).await else {
            return Ok(());
        };
        let Some(query) = query? else { return Ok(()) };
        if !is_query(&query) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a DNS query",
            ));
        }
        let answer = upstreams.relay(&query, true).await;
        write_framed(&mut stream, &answer).await?;
    }
}

#[cfg(test)]
mod tests;
