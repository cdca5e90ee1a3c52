//! Canonical request and string to sign, byte-for-byte as botocore's `SigV4Auth` builds them.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

use crate::{Request, SigV4Error, ALGORITHM};

/// Everything except the SigV4 unreserved set `A-Za-z0-9-_.~` is percent-encoded.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// Path encoding (botocore: `quote(path, safe='/~')`): '/' stays, '%' becomes "%25".
const PATH: &AsciiSet = &UNRESERVED.remove(b'/');
/// Query components keep the client's existing `%XX` escapes (botocore signs the wire
/// query as-is); anything else outside the unreserved set (raw UTF-8, spaces) is encoded.
const QUERY: &AsciiSet = &UNRESERVED.remove(b'%');

/// The canonical request of `req`, covering the headers named in `signed_headers`.
///
/// Header names are matched case-insensitively; repeated headers are joined with ','.
/// Fails with [`SigV4Error::Malformed`] when a signed header is absent from the request.
pub fn canonical_request(
    req: &Request<'_>,
    signed_headers: &[String],
) -> Result<String, SigV4Error> {
    let names = signed_header_names(signed_headers);
    let mut out = String::with_capacity(256);
    out.push_str(&req.method.to_ascii_uppercase());
    out.push('\n');
    out.push_str(&canonical_uri(req.path));
    out.push('\n');
    out.push_str(&canonical_query(req.query));
    out.push('\n');
    for name in &names {
        let mut values = req
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| trim_all(v));
        let first = values.next().ok_or_else(|| {
            SigV4Error::Malformed(format!(
                "signed header '{name}' is missing from the request"
            ))
        })?;
        out.push_str(name);
        out.push(':');
        out.push_str(&first);
        for value in values {
            out.push(',');
            out.push_str(&value);
        }
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&names.join(";"));
    out.push('\n');
    out.push_str(&hex::encode(Sha256::digest(req.body)));
    Ok(out)
}

/// `AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hex(sha256(canonical_request))}`, where
/// `scope` is `yyyymmdd/region/service/aws4_request`.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    let hash = hex::encode(Sha256::digest(canonical_request.as_bytes()));
    format!("{ALGORITHM}\n{amz_date}\n{scope}\n{hash}")
}

/// Lowercased, sorted, de-duplicated header names (botocore: `sorted(set(...))`).
pub(crate) fn signed_header_names(names: &[String]) -> Vec<String> {
    let mut names: Vec<String> = names
        .iter()
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Normalised then encoded path; `%` on the wire is encoded again (non-S3 double encoding).
fn canonical_uri(path: &str) -> String {
    utf8_percent_encode(&normalize_path(path), PATH).to_string()
}

/// botocore's `normalize_url_path`: RFC 3986 dot-segment removal that also collapses
/// empty segments ("//"), keeping a leading and (if anything is left) a trailing '/'.
fn normalize_path(path: &str) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    if path.starts_with('/') {
        out.push('/');
    }
    out.push_str(&segments.join("/"));
    if path.ends_with('/') && !segments.is_empty() {
        out.push('/');
    }
    out
}

/// Pairs split on '&' and the first '=', sorted by (key, value), joined as `k=v`. Like
/// botocore, an empty piece ("a=1&&b=2") is kept as an empty pair and signed as "=".
fn canonical_query(query: &str) -> String {
    if query.is_empty() {
        return String::new();
    }
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                utf8_percent_encode(key, QUERY).to_string(),
                utf8_percent_encode(value, QUERY).to_string(),
            )
        })
        .collect();
    pairs.sort();
    let pairs: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join("&")
}

/// Trims and collapses whitespace runs to one space, like Python's `' '.join(v.split())`.
fn trim_all(value: &str) -> String {
    let words: Vec<&str> = value.split(is_py_space).filter(|w| !w.is_empty()).collect();
    words.join(" ")
}

/// Python's `str.isspace` differs from Rust's only in counting U+001C..=U+001F too.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_matches_botocore() {
        for (input, want) in [
            ("", "/"),
            ("/", "/"),
            ("//", "/"),
            ("/./", "/"),
            ("//example//", "/example/"),
            ("/example/..", "/"),
            ("/a/b/../c/./d/", "/a/c/d/"),
            ("/../a", "/a"),
            ("a/b", "a/b"),
        ] {
            assert_eq!(normalize_path(input), want, "{input:?}");
        }
    }

    #[test]
    fn uri_is_double_encoded() {
        assert_eq!(canonical_uri("/a%3Ab/c d/~x"), "/a%253Ab/c%20d/~x");
    }

    #[test]
    fn query_sorts_by_key_then_value_and_keeps_escapes() {
        assert_eq!(canonical_query(""), "");
        assert_eq!(canonical_query("b=2&a=1&a=0&a-b=3"), "a=0&a=1&a-b=3&b=2");
        assert_eq!(
            canonical_query("flag&x=%24LATEST&&y=a b"),
            "=&flag=&x=%24LATEST&y=a%20b"
        );
    }

    #[test]
    fn trim_all_collapses_every_whitespace_run() {
        assert_eq!(trim_all("  a \t b\n\nc  "), "a b c");
        assert_eq!(trim_all("\u{1f}x\u{a0}y"), "x y");
        assert_eq!(trim_all("   "), "");
    }
}
