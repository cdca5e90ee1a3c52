//! Fuzzes SigV4 (`ember_sigv4`): the Authorization header parser, the canonical request and
//! verification against a fixed key, on requests as the API server sees them.
//!
//! The input is an HTTP/1.1 request head and body; it is parsed with httparse and the `http`
//! crate (as hyper parses it for the API), headers that are not visible ASCII are left out (as
//! the API leaves them out). Invariants:
//! - parsing an Authorization header never panics, and a parsed one, rendered again, parses to
//!   the same value;
//! - a canonical request has its method, one line per signed header (sorted, deduplicated), the
//!   signed-header list and the body's hash where the specification puts them;
//! - verifying never panics, and a request that verifies stops verifying when its body or path
//!   changes;
//! - any request (plus a `host` header, which signing requires) signed with `sign` verifies with
//!   the same key at the same time, and fails with another key, another body or 16 minutes later.
#![no_main]

use ember_sigv4::{
    authorization_of, canonical_request, parse_authorization, sign, verify, Authorization,
    Credentials, Request, SigV4Error, DEFAULT_MAX_SKEW,
};
use http::header::{HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

/// The key the seed corpus is signed with (`fuzz/examples/write_seeds.rs`).
pub const ACCESS_KEY_ID: &str = "AKIDFUZZEXAMPLE";
pub const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
/// The clock the seeds were signed at: 2026-01-01T00:00:00Z.
const NOW: i64 = 1_767_225_600;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_parse(text);
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = parsed.parse(data) else {
        return;
    };
    let (Some(method), Some(target)) = (parsed.method, parsed.path) else {
        return;
    };
    let Ok(uri) = target.parse::<http::Uri>() else {
        return;
    };
    if http::Method::from_bytes(method.as_bytes()).is_err() {
        return;
    }
    let mut names = Vec::new();
    for h in parsed.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return; // hyper refuses the request
        };
        if let Ok(value) = value.to_str() {
            names.push((name.as_str().to_owned(), value.to_owned()));
        }
    }
    let headers: Vec<(&str, &str)> = names
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let req = Request {
        method,
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        headers: &headers,
        body: &data[head_len..],
    };
    let now = OffsetDateTime::from_unix_timestamp(NOW).expect("valid time");

    if let Ok(auth) = authorization_of(&req) {
        check_canonical(&req, &auth.signed_headers);
        if verify(&req, &auth, SECRET, now, DEFAULT_MAX_SKEW).is_ok() {
            let mut body = req.body.to_vec();
            body.push(b'!');
            let changed = Request { body: &body, ..req };
            assert!(verify(&changed, &auth, SECRET, now, DEFAULT_MAX_SKEW).is_err());
            let path = format!("{}x", req.path);
            let changed = Request { path: &path, ..req };
            assert!(verify(&changed, &auth, SECRET, now, DEFAULT_MAX_SKEW).is_err());
        }
    }
    check_sign_verify(&req, now);
});

fn check_parse(value: &str) {
    let Ok(auth) = parse_authorization(value) else {
        return;
    };
    let again = parse_authorization(&render(&auth)).expect("a rendered Authorization parses");
    assert_eq!(
        again, auth,
        "render then parse gives the Authorization back"
    );
}

fn render(auth: &Authorization) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={}, Signature={}",
        auth.access_key_id,
        auth.scope(),
        auth.signed_headers.join(";"),
        auth.signature
    )
}

fn check_canonical(req: &Request<'_>, signed: &[String]) {
    let Ok(creq) = canonical_request(req, signed) else {
        return;
    };
    let mut names: Vec<String> = signed
        .iter()
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    names.sort();
    names.dedup();
    let lines: Vec<&str> = creq.split('\n').collect();
    assert_eq!(lines.len(), 6 + names.len(), "{creq:?}");
    assert_eq!(lines[0], req.method.to_ascii_uppercase());
    assert!(lines[1].starts_with('/') || !req.path.starts_with('/'));
    for (line, name) in lines[3..3 + names.len()].iter().zip(&names) {
        assert_eq!(line.split_once(':').map(|(n, _)| n), Some(name.as_str()));
    }
    assert_eq!(lines[3 + names.len()], "");
    assert_eq!(lines[4 + names.len()], names.join(";"));
    assert_eq!(lines[5 + names.len()], hex(&Sha256::digest(req.body)));
}

fn check_sign_verify(req: &Request<'_>, now: OffsetDateTime) {
    let mut headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .filter(|(n, _)| {
            !n.eq_ignore_ascii_case("authorization") && !n.eq_ignore_ascii_case("x-amz-date")
        })
        .copied()
        .collect();
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        headers.push(("host", "127.0.0.1:9000"));
    }
    let creds = Credentials {
        access_key_id: ACCESS_KEY_ID,
        secret_access_key: SECRET,
    };
    let unsigned = Request {
        headers: &headers,
        ..*req
    };
    let added = sign(&unsigned, &creds, "us-east-1", "lambda", now);
    let mut signed_headers = headers.clone();
    signed_headers.extend(added.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let signed = Request {
        headers: &signed_headers,
        ..*req
    };

    let auth = authorization_of(&signed).expect("sign writes a parsable Authorization");
    assert_eq!(auth.access_key_id, ACCESS_KEY_ID);
    assert_eq!(
        (auth.region.as_str(), auth.service.as_str()),
        ("us-east-1", "lambda")
    );
    check_canonical(&signed, &auth.signed_headers);
    let verdict = verify(&signed, &auth, SECRET, now, DEFAULT_MAX_SKEW);
    assert_eq!(verdict, Ok(()), "a signed request verifies: {signed:?}");
    assert_eq!(
        verify(&signed, &auth, "another secret", now, DEFAULT_MAX_SKEW),
        Err(SigV4Error::SignatureMismatch)
    );
    let mut body = req.body.to_vec();
    body.push(b'!');
    let changed = Request {
        body: &body,
        ..signed
    };
    assert_eq!(
        verify(&changed, &auth, SECRET, now, DEFAULT_MAX_SKEW),
        Err(SigV4Error::SignatureMismatch)
    );
    let later = now + Duration::minutes(16);
    assert!(matches!(
        verify(&signed, &auth, SECRET, later, DEFAULT_MAX_SKEW),
        Err(SigV4Error::Expired { .. })
    ));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
