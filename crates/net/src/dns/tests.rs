//! The forwarder's message handling: what it relays, what it accepts back, and the `SERVFAIL` it
//! makes when no upstream answers.

use super::*;

/// A query for `name` (type A, class IN) with id `id`, RD set.
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

#[test]
fn only_queries_are_relayed() {
    let q = query(7, "example.com");
    assert!(is_query(&q));
    let mut response = q.clone();
    response[2] |= 0x80;
    assert!(!is_query(&response));
    let mut notify = q.clone();
    notify[2] = 4 << 3; // opcode NOTIFY
    assert!(!is_query(&notify));
    assert!(!is_query(&q[..11]));
    assert!(!is_query(&[]));
}

#[test]
fn replies_count_only_with_the_same_id_and_qr() {
    let q = query(0x1234, "example.com");
    let mut reply = q.clone();
    reply[2] |= 0x80;
    assert!(answers(&q, &reply));
    let mut other = reply.clone();
    other[1] ^= 1;
    assert!(!answers(&q, &other));
    assert!(!answers(&q, &q));
    assert!(!answers(&q, &reply[..11]));
}

#[test]
fn servfail_keeps_the_id_question_and_rd() {
    let q = query(0xbeef, "a.example.com");
    let s = servfail(&q);
    assert_eq!(&s[..2], &[0xbe, 0xef]);
    assert_eq!(s[2], 0x81, "QR and RD");
    assert_eq!(rcode(&s), 2);
    assert_eq!(&s[4..6], &[0, 1], "one question");
    assert_eq!(&s[6..12], &[0; 6], "no records");
    assert_eq!(&s[12..], &q[12..]);
    assert!(!is_useful(&s));
    // A question that does not parse is left out.
    let mut garbage = q[..14].to_vec();
    garbage[12] = 40;
    let s = servfail(&garbage);
    assert_eq!(s.len(), HEADER_LEN);
    assert_eq!(&s[4..6], &[0, 0]);
}

#[test]
fn useful_answers_end_the_search() {
    let mut a = query(1, "x.y");
    a[2] |= 0x80;
    for (code, useful) in [(0, true), (3, true), (2, false), (5, false), (4, true)] {
        a[3] = 0x80 | code;
        assert_eq!(is_useful(&a), useful, "rcode {code}");
    }
}

#[test]
fn resolv_conf_lines() {
    let text = "\
# a comment
search example.internal
nameserver 10.255.255.53
nameserver 127.0.0.53 # systemd-resolved
nameserver   2001:db8::53
nameserver fe80::1%eth0
nameserver not-an-address
;nameserver 192.0.2.9
options edns0 trust-ad
nameserver 10.255.255.53
nameserver
";
    let got = parse_resolv_conf(text);
    let want: Vec<SocketAddr> = ["10.255.255.53:53", "127.0.0.53:53", "[2001:db8::53]:53"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(got, want);
}
