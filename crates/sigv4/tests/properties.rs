//! Property tests: sign/verify round-trips, tamper detection, and no panics on hostile input.

// Helpers outside #[test] functions unwrap too (clippy.toml only covers the tests themselves).
#![allow(clippy::unwrap_used)]

use ember_sigv4::{
    authorization_of, parse_authorization, sign, verify, Credentials, Request, DEFAULT_MAX_SKEW,
};
use proptest::prelude::*;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const CREDS: Credentials<'static> = Credentials {
    access_key_id: "AKIDEXAMPLE",
    secret_access_key: SECRET,
};
const NOW: OffsetDateTime = datetime!(2024-03-01 10:00:00 UTC);

/// An owned request plus the headers `sign` added.
#[derive(Debug, Clone)]
struct Signed {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Signed {
    fn new(
        method: String,
        path: String,
        query: String,
        mut headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Self {
        headers.insert(0, ("Host".into(), "ember.local:9000".into()));
        let mut signed = Signed {
            method,
            path,
            query,
            headers,
            body,
        };
        let added = signed.with(|req| sign(req, &CREDS, "us-east-1", "lambda", NOW));
        signed.headers.extend(added);
        signed
    }

    fn with<T>(&self, f: impl FnOnce(&Request<'_>) -> T) -> T {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        f(&Request {
            method: &self.method,
            path: &self.path,
            query: &self.query,
            headers: &headers,
            body: &self.body,
        })
    }

    fn verifies(&self, now: OffsetDateTime) -> bool {
        self.with(|req| {
            authorization_of(req)
                .and_then(|auth| verify(req, &auth, SECRET, now, DEFAULT_MAX_SKEW))
                .is_ok()
        })
    }
}

/// Header values: printable ASCII, spaces included (they are trimmed/collapsed).
fn header_value() -> impl Strategy<Value = String> {
    "[ -~]{0,16}"
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(("X-E[A-Za-z0-9-]{0,8}", header_value()), 0..4)
}

/// Any request at all: the round trip must hold whatever the path or query hold.
fn any_request() -> impl Strategy<Value = Signed> {
    (
        "[A-Za-z]{1,7}",
        "\\PC{0,24}",
        "\\PC{0,24}",
        headers(),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(m, p, q, h, b)| Signed::new(m, p, q, h, b))
}

/// Requests for tamper tests: ASCII paths without '.', so no byte can vanish into a dot
/// segment ("/x/../a" and "/y/../a" normalise alike), and non-empty bodies.
fn tamperable_request() -> impl Strategy<Value = Signed> {
    (
        "[A-Z]{1,7}",
        "(/[A-Za-z0-9%:~_ -]{0,8}){1,4}",
        "[A-Za-z0-9%=&_-]{0,16}",
        prop::collection::vec(("X-[a-z0-9]{1,8}", "[!-~]{1}[ -~]{0,15}"), 1..4),
        prop::collection::vec(any::<u8>(), 1..64),
    )
        .prop_map(|(m, p, q, h, b)| Signed::new(m, p, q, h, b))
}

/// A printable, non-space ASCII byte different from `old`.
fn other_byte(old: u8, pick: u8) -> u8 {
    let candidate = b'!' + pick % 94;
    if candidate == old {
        if candidate == b'~' {
            b'!'
        } else {
            candidate + 1
        }
    } else {
        candidate
    }
}

fn replace_byte(s: &str, index: prop::sample::Index, pick: u8, forbidden: &[u8]) -> String {
    let mut bytes = s.as_bytes().to_vec();
    let i = index.index(bytes.len());
    let mut new = other_byte(bytes[i], pick);
    while forbidden.contains(&new) || new == bytes[i] {
        new = other_byte(new, 1);
    }
    bytes[i] = new;
    String::from_utf8(bytes).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sign_then_verify_round_trips(req in any_request(), skew in -14 * 60i64..=14 * 60) {
        prop_assert!(req.verifies(NOW));
        prop_assert!(req.verifies(NOW + Duration::seconds(skew)));
    }

    #[test]
    fn changing_a_body_byte_fails(mut req in tamperable_request(), index in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let i = index.index(req.body.len());
        req.body[i] ^= flip;
        prop_assert!(!req.verifies(NOW));
    }

    #[test]
    fn changing_a_path_byte_fails(mut req in tamperable_request(), index in any::<prop::sample::Index>(), pick in any::<u8>()) {
        req.path = replace_byte(&req.path, index, pick, b"./?#");
        prop_assert!(!req.verifies(NOW));
    }

    #[test]
    fn changing_a_signed_header_value_byte_fails(
        mut req in tamperable_request(),
        which in any::<prop::sample::Index>(),
        index in any::<prop::sample::Index>(),
        pick in any::<u8>(),
    ) {
        // Host and the X- headers are signed; the last two are x-amz-date and authorization.
        let signed = req.headers.len() - 2;
        let header = &mut req.headers[which.index(signed)];
        header.1 = replace_byte(&header.1, index, pick, b"");
        prop_assert!(!req.verifies(NOW));
    }

    #[test]
    fn changing_a_signature_byte_fails(req in tamperable_request(), index in any::<prop::sample::Index>(), pick in any::<u8>()) {
        let header = req.headers.iter().find(|(k, _)| k == "authorization").unwrap();
        let auth = parse_authorization(&header.1).unwrap();
        let mut tampered = auth.clone();
        tampered.signature = replace_byte(&auth.signature, index, pick, b"");
        prop_assert!(req.with(|r| verify(r, &tampered, SECRET, NOW, DEFAULT_MAX_SKEW)).is_err());
        // Same through the header.
        let mut wire = req.clone();
        let value = header.1.replace(&auth.signature, &tampered.signature);
        wire.headers.iter_mut().filter(|(k, _)| k == "authorization").for_each(|h| h.1 = value.clone());
        prop_assert!(!wire.verifies(NOW));
    }

    #[test]
    fn parse_authorization_never_panics(s in "\\PC*") {
        let _ = parse_authorization(&s);
    }

    #[test]
    fn parse_authorization_never_panics_on_near_misses(
        s in "AWS4-HMAC-SHA256 (Credential|SignedHeaders|Signature|[a-z]{0,3})=[A-Za-z0-9/;=, _-]{0,80}",
    ) {
        let _ = parse_authorization(&s);
    }

    #[test]
    fn verify_never_panics_on_hostile_headers(
        auth in "AWS4-HMAC-SHA256 Credential=[A-Za-z0-9]{1,4}/2024030[0-9]/r/s/aws4_request, SignedHeaders=[a-z;-]{0,20}, Signature=[0-9a-fA-F]{0,70}",
        date in prop_oneof![Just("20240301T100000Z".to_owned()), "\\PC{0,20}"],
        extra in headers(),
    ) {
        let mut headers: Vec<(&str, &str)> = vec![("Host", "h"), ("X-Amz-Date", &date), ("Authorization", &auth)];
        headers.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let req = Request { method: "GET", path: "/", query: "", headers: &headers, body: b"" };
        if let Ok(parsed) = authorization_of(&req) {
            prop_assert!(verify(&req, &parsed, SECRET, NOW, DEFAULT_MAX_SKEW).is_err());
        }
    }
}
