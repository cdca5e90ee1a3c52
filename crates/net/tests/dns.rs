//! The DNS forwarder against a real upstream stand-in: a small DNS server in this test that
//! answers A records over UDP and TCP (and one that fails, one that never answers), asked by a
//! client over loopback. The last test binds port 53 and so needs root, as `ember serve` does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_net::dns::{self, DnsError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// How an upstream stand-in behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Answers A records from its table (NXDOMAIN for other names).
    Answer,
    /// Answers SERVFAIL to everything.
    ServFail,
    /// Reads queries and never answers.
    Silent,
    /// Answers over UDP with TC set and no records; over TCP, properly.
    Truncate,
}

/// An upstream stand-in on 127.0.0.1 (the same port for UDP and TCP).
struct Upstream {
    addr: SocketAddr,
    /// Queries it received, UDP and TCP.
    queries: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn table() -> Arc<HashMap<String, Ipv4Addr>> {
    Arc::new(HashMap::from([
        ("example.com".to_owned(), Ipv4Addr::new(203, 0, 113, 10)),
        ("api.example.com".to_owned(), Ipv4Addr::new(203, 0, 113, 11)),
    ]))
}

/// The question's name, dotted, and the question's end.
fn question(msg: &[u8]) -> (String, usize) {
    let mut at = 12;
    let mut labels = Vec::new();
    while msg[at] != 0 {
        let len = msg[at] as usize;
        labels.push(String::from_utf8_lossy(&msg[at + 1..at + 1 + len]).to_lowercase());
        at += 1 + len;
    }
    (labels.join("."), at + 5)
}

/// The stand-in's answer to `query`.
fn respond(query: &[u8], mode: Mode, udp: bool, table: &HashMap<String, Ipv4Addr>) -> Vec<u8> {
    let (name, end) = question(query);
    let mut r = query[..end].to_vec();
    r[2] = 0x80 | (query[2] & 0x01) | 0x04; // QR, RD as asked, AA
    r[3] = 0x80;
    r[6..12].copy_from_slice(&[0; 6]);
    if mode == Mode::ServFail {
        r[3] |= 2;
        return r;
    }
    if mode == Mode::Truncate && udp {
        r[2] |= 0x02;
        return r;
    }
    match table.get(&name) {
        Some(ip) => {
            r[7] = 1; // ANCOUNT
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            r.extend_from_slice(&ip.octets());
        }
        None => r[3] |= 3,
    }
    r
}

async fn upstream(mode: Mode) -> Upstream {
    let (udp, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    let queries = Arc::new(AtomicUsize::new(0));
    let table = table();
    let (q, t) = (Arc::clone(&queries), Arc::clone(&table));
    let udp_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let (n, from) = udp.recv_from(&mut buf).await.unwrap();
            q.fetch_add(1, Ordering::SeqCst);
            if mode != Mode::Silent {
                let r = respond(&buf[..n], mode, true, &t);
                udp.send_to(&r, from).await.unwrap();
            }
        }
    });
    let q = Arc::clone(&queries);
    let tcp_task = tokio::spawn(async move {
        loop {
            let (mut s, _) = tcp.accept().await.unwrap();
            let (q, t) = (Arc::clone(&q), Arc::clone(&table));
            tokio::spawn(async move {
                loop {
                    let mut len = [0u8; 2];
                    if s.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut m = vec![0u8; u16::from_be_bytes(len) as usize];
                    s.read_exact(&mut m).await.unwrap();
                    q.fetch_add(1, Ordering::SeqCst);
                    if mode == Mode::Silent {
                        continue;
                    }
                    let r = respond(&m, mode, false, &t);
                    s.write_all(&(r.len() as u16).to_be_bytes()).await.unwrap();
                    s.write_all(&r).await.unwrap();
                }
            });
        }
    });
    Upstream {
        addr,
        queries,
        tasks: vec![udp_task, tcp_task],
    }
}

/// A query for `name`, type A, with id `id`.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m
}

/// What an answer says: its id, rcode, TC, and its A record (if one).
#[derive(Debug, PartialEq)]
struct Answer {
    id: u16,
    rcode: u8,
    truncated: bool,
    a: Option<Ipv4Addr>,
}

fn read_answer(r: &[u8]) -> Answer {
    assert!(r[2] & 0x80 != 0, "not a response: {r:?}");
    let ancount = u16::from_be_bytes([r[6], r[7]]);
    Answer {
        id: u16::from_be_bytes([r[0], r[1]]),
        rcode: r[3] & 0x0f,
        truncated: r[2] & 0x02 != 0,
        a: (ancount == 1).then(|| {
            let n = r.len();
            Ipv4Addr::new(r[n - 4], r[n - 3], r[n - 2], r[n - 1])
        }),
    }
}

async fn ask_udp(server: SocketAddr, id: u16, name: &str) -> Answer {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(&query(id, name), server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, from) = tokio::time::timeout(Duration::from_secs(10), s.recv_from(&mut buf))
        .await
        .expect("the forwarder answers within 10 s")
        .unwrap();
    assert_eq!(from, server);
    read_answer(&buf[..n])
}

async fn ask_tcp(stream: &mut TcpStream, id: u16, name: &str) -> Answer {
    let q = query(id, name);
    stream
        .write_all(&(q.len() as u16).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&q).await.unwrap();
    let mut len = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut len))
        .await
        .expect("the forwarder answers within 10 s")
        .unwrap();
    let mut r = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut r).await.unwrap();
    read_answer(&r)
}

async fn forwarder(upstreams: Vec<SocketAddr>) -> dns::DnsForwarder {
    dns::start_at("127.0.0.1:0".parse().unwrap(), upstreams)
        .await
        .unwrap()
}

fn a(ip: [u8; 4]) -> Option<Ipv4Addr> {
    Some(Ipv4Addr::from(ip))
}

#[tokio::test]
async fn answers_a_records_over_udp_keeping_the_id() {
    let up = upstream(Mode::Answer).await;
    let f = forwarder(vec![up.addr]).await;
    for (id, name, want) in [
        (0x0001, "example.com", a([203, 0, 113, 10])),
        (0xfffe, "api.example.com", a([203, 0, 113, 11])),
        (0x4242, "API.Example.COM", a([203, 0, 113, 11])),
    ] {
        let got = ask_udp(f.udp_addr(), id, name).await;
        assert_eq!(
            got,
            Answer {
                id,
                rcode: 0,
                truncated: false,
                a: want
            }
        );
    }
    let nx = ask_udp(f.udp_addr(), 9, "nowhere.example").await;
    assert_eq!(
        nx,
        Answer {
            id: 9,
            rcode: 3,
            truncated: false,
            a: None
        }
    );
    assert_eq!(up.queries.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn answers_a_records_over_tcp_several_per_connection() {
    let up = upstream(Mode::Answer).await;
    let f = forwarder(vec![up.addr]).await;
    let mut s = TcpStream::connect(f.tcp_addr()).await.unwrap();
    for id in 0..5u16 {
        let got = ask_tcp(&mut s, 1000 + id, "example.com").await;
        assert_eq!(
            got,
            Answer {
                id: 1000 + id,
                rcode: 0,
                truncated: false,
                a: a([203, 0, 113, 10])
            }
        );
    }
    let nx = ask_tcp(&mut s, 77, "nowhere.example").await;
    assert_eq!(nx.rcode, 3);
}

#[tokio::test]
async fn a_truncated_udp_answer_reaches_the_client_which_retries_over_tcp() {
    let up = upstream(Mode::Truncate).await;
    let f = forwarder(vec![up.addr]).await;
    let udp = ask_udp(f.udp_addr(), 5, "example.com").await;
    assert!(udp.truncated);
    assert_eq!(udp.a, None);
    let mut s = TcpStream::connect(f.tcp_addr()).await.unwrap();
    let tcp = ask_tcp(&mut s, 6, "example.com").await;
    assert_eq!(
        tcp,
        Answer {
            id: 6,
            rcode: 0,
            truncated: false,
            a: a([203, 0, 113, 10])
        }
    );
}

#[tokio::test]
async fn fails_over_to_the_next_upstream_and_then_asks_it_first() {
    let silent = upstream(Mode::Silent).await;
    let failing = upstream(Mode::ServFail).await;
    let good = upstream(Mode::Answer).await;
    let f = forwarder(vec![silent.addr, failing.addr, good.addr]).await;
    let started = Instant::now();
    let got = ask_udp(f.udp_addr(), 11, "example.com").await;
    assert_eq!(got.a, a([203, 0, 113, 10]));
    assert!(
        started.elapsed() >= dns::UPSTREAM_TIMEOUT,
        "the silent one was waited for"
    );
    assert_eq!(silent.queries.load(Ordering::SeqCst), 1);
    assert_eq!(failing.queries.load(Ordering::SeqCst), 1);
    // The upstream that answered is asked first from now on: no more waiting.
    let started = Instant::now();
    let mut s = TcpStream::connect(f.tcp_addr()).await.unwrap();
    let got = ask_tcp(&mut s, 12, "api.example.com").await;
    assert_eq!(got.a, a([203, 0, 113, 11]));
    let got = ask_udp(f.udp_addr(), 13, "example.com").await;
    assert_eq!(got.a, a([203, 0, 113, 10]));
    assert!(started.elapsed() < dns::UPSTREAM_TIMEOUT);
    assert_eq!(silent.queries.load(Ordering::SeqCst), 1);
    assert_eq!(good.queries.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn with_no_upstream_answering_the_client_gets_servfail() {
    // One that refuses (nothing listens: ICMP port unreachable, TCP RST), one that fails.
    let closed = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let f = forwarder(vec![closed]).await;
    let got = ask_udp(f.udp_addr(), 21, "example.com").await;
    assert_eq!(
        got,
        Answer {
            id: 21,
            rcode: 2,
            truncated: false,
            a: None
        }
    );
    let mut s = TcpStream::connect(f.tcp_addr()).await.unwrap();
    let got = ask_tcp(&mut s, 22, "example.com").await;
    assert_eq!(
        got,
        Answer {
            id: 22,
            rcode: 2,
            truncated: false,
            a: None
        }
    );

    let failing = upstream(Mode::ServFail).await;
    let f = forwarder(vec![closed, failing.addr]).await;
    let got = ask_udp(f.udp_addr(), 23, "example.com").await;
    assert_eq!(
        got,
        Answer {
            id: 23,
            rcode: 2,
            truncated: false,
            a: None
        }
    );
    assert_eq!(failing.queries.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn what_is_not_a_query_is_not_relayed() {
    let up = upstream(Mode::Answer).await;
    let f = forwarder(vec![up.addr]).await;
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut response = query(1, "example.com");
    response[2] |= 0x80;
    s.send_to(&response, f.udp_addr()).await.unwrap();
    s.send_to(&[1, 2, 3], f.udp_addr()).await.unwrap();
    s.send_to(&query(2, "example.com"), f.udp_addr())
        .await
        .unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = s.recv_from(&mut buf).await.unwrap();
    assert_eq!(read_answer(&buf[..n]).id, 2, "only the query is answered");
    assert_eq!(up.queries.load(Ordering::SeqCst), 1);
    // Over TCP, a connection that sends something else is closed.
    let mut t = TcpStream::connect(f.tcp_addr()).await.unwrap();
    t.write_all(&(response.len() as u16).to_be_bytes())
        .await
        .unwrap();
    t.write_all(&response).await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut rest))
        .await
        .expect("closed, not left hanging")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn many_queries_at_once_are_all_answered() {
    let up = upstream(Mode::Answer).await;
    let f = forwarder(vec![up.addr]).await;
    let server = f.udp_addr();
    let asks: Vec<_> = (0..200u16)
        .map(|id| tokio::spawn(async move { ask_udp(server, id, "example.com").await }))
        .collect();
    for (id, ask) in asks.into_iter().enumerate() {
        let got = ask.await.unwrap();
        assert_eq!(got.id, id as u16);
        assert_eq!(got.a, a([203, 0, 113, 10]));
    }
}

#[tokio::test]
async fn dropping_the_forwarder_stops_it() {
    let up = upstream(Mode::Answer).await;
    let f = forwarder(vec![up.addr]).await;
    let tcp = f.tcp_addr();
    drop(f);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        TcpStream::connect(tcp).await.is_err(),
        "nothing listens any more"
    );
}

#[tokio::test]
async fn refuses_to_start_without_upstreams_or_in_a_loop() {
    let err = dns::start_at("127.0.0.1:0".parse().unwrap(), vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::NoUpstreams), "{err}");
    assert!(err.to_string().contains("--dns"));
    let me: SocketAddr = "127.0.0.1:5353".parse().unwrap();
    let err = dns::start_at(me, vec![me]).await.unwrap_err();
    assert!(matches!(err, DnsError::Loop(_)), "{err}");
}

#[test]
fn system_resolvers_reads_resolv_conf() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resolv.conf");
    std::fs::write(&path, "nameserver 10.255.255.53\nnameserver 127.0.0.53\n").unwrap();
    let got = dns::system_resolvers(&path);
    assert_eq!(
        got,
        vec![
            "10.255.255.53:53".parse().unwrap(),
            "127.0.0.53:53".parse::<SocketAddr>().unwrap()
        ]
    );
    assert!(dns::system_resolvers(dir.path().join("missing")).is_empty());
}

/// `start` itself: port 53 of an address no interface has (a loopback one here, as the
/// gateway address before a VM's link carries it), UDP and TCP. Needs root (port 53).
#[tokio::test]
async fn serves_port_53_of_the_given_address() {
    let up = upstream(Mode::Answer).await;
    // A per-process address, so parallel runs do not collide.
    let pid = std::process::id();
    let listen = IpAddr::V4(Ipv4Addr::new(127, 53, (pid >> 8) as u8, (pid as u8).max(1)));
    let f = dns::start(listen, vec![up.addr]).await.unwrap();
    assert_eq!(f.udp_addr(), SocketAddr::new(listen, 53));
    assert_eq!(f.tcp_addr(), SocketAddr::new(listen, 53));
    let got = ask_udp(f.udp_addr(), 31, "example.com").await;
    assert_eq!(got.a, a([203, 0, 113, 10]));
    let mut s = TcpStream::connect(f.tcp_addr()).await.unwrap();
    assert_eq!(
        ask_tcp(&mut s, 32, "api.example.com").await.a,
        a([203, 0, 113, 11])
    );
}
