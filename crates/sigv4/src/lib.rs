//! AWS Signature Version 4 (Authorization-header form): server-side verification and client-side signing.
//!
//! Canonicalisation follows botocore's `SigV4Auth` for non-S3 services: the wire path is
//! normalised and encoded again (so `%3A` is signed as `%253A`), the wire query is signed
//! as sent, and every header listed in `SignedHeaders` is covered.
#![forbid(unsafe_code)]

mod canonical;

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::macros::format_description;
use time::{Date, Duration, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

pub use canonical::{canonical_request, string_to_sign};

/// The only signing algorithm supported.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The clock skew AWS tolerates between client and server.
pub const DEFAULT_MAX_SKEW: Duration = Duration::minutes(15);

/// Headers botocore never signs (hop-by-hop, or rewritten by proxies); [`sign`] skips them too.
const UNSIGNED_HEADERS: [&str; 11] = [
    "connection",
    "expect",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "x-amzn-trace-id",
];

type HmacSha256 = Hmac<Sha256>;

/// A request as it arrived on the wire (or as it will be sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// HTTP method, e.g. "GET".
    pub method: &'a str,
    /// Raw path exactly as on the wire, still percent-encoded.
    pub path: &'a str,
    /// Raw query string without '?', possibly empty.
    pub query: &'a str,
    /// Every header (any case), in order; repeated names allowed.
    pub headers: &'a [(&'a str, &'a str)],
    /// The request body.
    pub body: &'a [u8],
}

/// Long-term credentials (no session token).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// The access key id, e.g. "AKIDEXAMPLE".
    pub access_key_id: &'a str,
    /// The secret access key.
    pub secret_access_key: &'a str,
}

impl fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// A parsed `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// Access key id from the credential scope.
    pub access_key_id: String,
    /// Scope date, `yyyymmdd`.
    pub date: String,
    /// Scope region, e.g. "us-east-1".
    pub region: String,
    /// Scope service, e.g. "lambda".
    pub service: String,
    /// Lowercased header names, in the order given.
    pub signed_headers: Vec<String>,
    /// Lowercase hex signature (64 characters).
    pub signature: String,
}

impl Authorization {
    /// Checks the scope's region and service against what the server serves. The scope's date is
    /// checked against the request's time by [`verify`]; its terminator by
    /// [`parse_authorization`]: together they check the whole credential scope.
    pub fn check_scope(&self, region: &str, service: &str) -> Result<(), SigV4Error> {
        if self.service != service {
            return Err(SigV4Error::WrongService {
                expected: service.to_owned(),
                got: self.service.chars().take(64).collect(),
            });
        }
        if self.region != region {
            return Err(SigV4Error::WrongRegion {
                expected: region.to_owned(),
                got: self.region.chars().take(64).collect(),
            });
        }
        Ok(())
    }

    /// The credential scope without the key id: `yyyymmdd/region/service/aws4_request`.
    pub fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

/// Why a request could not be authenticated; messages are fit for an AWS error body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    /// No Authorization header at all.
    #[error("Missing Authentication Token")]
    Missing,
    /// The Authorization header (or a header it names) is not well-formed.
    #[error("Authorization header is malformed: {0}")]
    Malformed(String),
    /// An algorithm other than AWS4-HMAC-SHA256 (e.g. SigV2's "AWS").
    #[error("Unsupported AWS 'algorithm': '{0}'")]
    UnsupportedAlgorithm(String),
    /// Neither X-Amz-Date nor Date is present.
    #[error(
        "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
    )]
    MissingDate,
    /// The X-Amz-Date / Date header cannot be parsed.
    #[error("Date '{0}' must be in ISO 8601 basic format (20150830T123600Z) or RFC 1123 format.")]
    InvalidDate(String),
    /// The request time is too far from the server clock.
    #[error("Signature expired or not yet current: request time {request_time} is too far from server time {server_time}.")]
    Expired {
        /// The request's time, `yyyymmddThhmmssZ`.
        request_time: String,
        /// The server's time, `yyyymmddThhmmssZ`.
        server_time: String,
    },
    /// The credential-scope date differs from the request date; holds the scope date.
    #[error("Credential should be scoped to a valid date: '{0}' does not match the request date.")]
    ScopeMismatch(String),
    /// The credential scope names another region than the one this server serves.
    #[error("Credential should be scoped to a valid region, not '{got}'. This endpoint serves region '{expected}'.")]
    WrongRegion {
        /// The region the server serves.
        expected: String,
        /// The region in the credential scope.
        got: String,
    },
    /// The credential scope names another service.
    #[error("Credential should be scoped to correct service: '{expected}', not '{got}'.")]
    WrongService {
        /// The service the server is.
        expected: String,
        /// The service in the credential scope.
        got: String,
    },
    /// The credential scope does not end in `aws4_request`; holds what it ends in.
    #[error("Credential should be scoped with a valid terminator: 'aws4_request', not '{0}'.")]
    WrongTerminator(String),
    /// The signature does not match.
    #[error("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")]
    SignatureMismatch,
}

impl SigV4Error {
    /// The AWS error type to report (`x-amzn-ErrorType`); HTTP status 403 for all.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "MissingAuthenticationTokenException",
            Self::Malformed(_)
            | Self::UnsupportedAlgorithm(_)
            | Self::MissingDate
            | Self::InvalidDate(_) => "IncompleteSignatureException",
            Self::Expired { .. }
            | Self::ScopeMismatch(_)
            | Self::WrongRegion { .. }
            | Self::WrongService { .. }
            | Self::WrongTerminator(_)
            | Self::SignatureMismatch => "InvalidSignatureException",
        }
    }
}

fn malformed(msg: impl Into<String>) -> SigV4Error {
    SigV4Error::Malformed(msg.into())
}

/// Parses an Authorization header value.
pub fn parse_authorization(value: &str) -> Result<Authorization, SigV4Error> {
    let value = value.trim();
    if value.is_empty() {
        return Err(malformed("empty Authorization header"));
    }
    let (algorithm, rest) = value
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((value, ""));
    if algorithm != ALGORITHM {
        return Err(SigV4Error::UnsupportedAlgorithm(
            algorithm.chars().take(64).collect(),
        ));
    }
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, val) = part
            .split_once('=')
            .ok_or_else(|| malformed("expected Key=Value components"))?;
        let slot = match key.trim() {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => {
                return Err(malformed(
                    "unknown component (expected Credential, SignedHeaders, Signature)",
                ))
            }
        };
        if slot.replace(val.trim()).is_some() {
            return Err(malformed(format!("repeated {} component", key.trim())));
        }
    }
    let credential = credential.ok_or_else(|| malformed("missing Credential"))?;
    let signed_headers = signed_headers.ok_or_else(|| malformed("missing SignedHeaders"))?;
    let signature = signature.ok_or_else(|| malformed("missing Signature"))?;

    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminator] = scope[..] else {
        return Err(malformed(
            "Credential must be AKID/yyyymmdd/region/service/aws4_request",
        ));
    };
    if access_key_id.is_empty() || region.is_empty() || service.is_empty() {
        return Err(malformed("empty field in Credential"));
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed("credential date must be yyyymmdd"));
    }
    if terminator != "aws4_request" {
        return Err(SigV4Error::WrongTerminator(
            terminator.chars().take(64).collect(),
        ));
    }
    let signed_headers: Vec<String> = signed_headers
        .split(';')
        .map(str::to_ascii_lowercase)
        .collect();
    if signed_headers.iter().any(|h| h.is_empty()) {
        return Err(malformed("empty name in SignedHeaders"));
    }
    if !signed_headers.iter().any(|h| h == "host") {
        return Err(malformed("SignedHeaders must include host"));
    }
    if !is_lower_hex_signature(signature) {
        return Err(malformed("Signature must be 64 lowercase hex characters"));
    }
    Ok(Authorization {
        access_key_id: access_key_id.to_owned(),
        date: date.to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
        signed_headers,
        signature: signature.to_owned(),
    })
}

/// Finds and parses the Authorization header of a request; [`SigV4Error::Missing`] when there is none.
pub fn authorization_of(req: &Request<'_>) -> Result<Authorization, SigV4Error> {
    let mut found = header_values(req, "authorization");
    let value = found.next().ok_or(SigV4Error::Missing)?;
    if found.next().is_some() {
        return Err(malformed("more than one Authorization header"));
    }
    parse_authorization(value)
}

/// Verifies `req` against `auth` with the secret that belongs to `auth.access_key_id`.
///
/// The request time comes from X-Amz-Date (or, failing that, an RFC 1123 Date header) and
/// must be within `max_skew` of `now`; the scope date must be that time's date. The caller
/// still checks the scope's region and service against what it serves
/// ([`Authorization::check_scope`]).
pub fn verify(
    req: &Request<'_>,
    auth: &Authorization,
    secret_access_key: &str,
    now: OffsetDateTime,
    max_skew: Duration,
) -> Result<(), SigV4Error> {
    if !auth
        .signed_headers
        .iter()
        .any(|h| h.eq_ignore_ascii_case("host"))
    {
        return Err(malformed("SignedHeaders must include host"));
    }
    let (amz_date, when) = request_time(req)?;
    if (now - when).abs() > max_skew {
        return Err(SigV4Error::Expired {
            request_time: amz_date,
            server_time: format_amz_date(now).1,
        });
    }
    if amz_date.get(..8) != Some(auth.date.as_str()) {
        return Err(SigV4Error::ScopeMismatch(auth.date.clone()));
    }
    let creq = canonical_request(req, &auth.signed_headers)?;
    let sts = string_to_sign(&amz_date, &auth.scope(), &creq);
    if !is_lower_hex_signature(&auth.signature) {
        return Err(SigV4Error::SignatureMismatch);
    }
    let provided = hex::decode(&auth.signature).map_err(|_| SigV4Error::SignatureMismatch)?;
    let key = signing_key(secret_access_key, &auth.date, &auth.region, &auth.service);
    // `verify_slice` compares in constant time.
    mac(&key, sts.as_bytes())
        .verify_slice(&provided)
        .map_err(|_| SigV4Error::SignatureMismatch)
}

/// Signs `req` (which must already carry `host`) and returns the headers to add:
/// `x-amz-date` and `authorization`.
///
/// Every header in `req.headers` is signed, lowercased, except those botocore never signs
/// (`user-agent`, hop-by-hop headers) and any stale `authorization` / `x-amz-date`.
pub fn sign(
    req: &Request<'_>,
    creds: &Credentials<'_>,
    region: &str,
    service: &str,
    now: OffsetDateTime,
) -> Vec<(String, String)> {
    let (date, amz_date) = format_amz_date(now);
    let mut headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .filter(|(name, _)| {
            let name = name.to_ascii_lowercase();
            name != "authorization"
                && name != "x-amz-date"
                && !UNSIGNED_HEADERS.contains(&name.as_str())
        })
        .copied()
        .collect();
    headers.push(("x-amz-date", &amz_date));
    let names: Vec<String> = headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    let names = canonical::signed_header_names(&names);
    let signing = Request {
        headers: &headers,
        ..*req
    };
    // Cannot fail: every signed name was taken from `headers` itself.
    let creq = canonical_request(&signing, &names).unwrap_or_default();
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let sts = string_to_sign(&amz_date, &scope, &creq);
    let key = signing_key(creds.secret_access_key, &date, region, service);
    let signature = hex::encode(mac(&key, sts.as_bytes()).finalize().into_bytes());
    let authorization = format!(
        "{ALGORITHM} Credential={}/{scope}, SignedHeaders={}, Signature={signature}",
        creds.access_key_id,
        names.join(";"),
    );
    vec![
        ("x-amz-date".to_owned(), amz_date),
        ("authorization".to_owned(), authorization),
    ]
}

fn header_values<'r>(req: &'r Request<'_>, name: &'r str) -> impl Iterator<Item = &'r str> + 'r {
    req.headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

fn is_lower_hex_signature(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// HMAC-SHA256 of `data` under `key`.
fn mac(key: &[u8], data: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length (longer ones are hashed first), so this cannot fail.
    #[allow(clippy::expect_used)]
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac
}

/// kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request").
fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in [date, region, service, "aws4_request"] {
        key = mac(&key, part.as_bytes()).finalize().into_bytes().to_vec();
    }
    key
}

/// The request time: X-Amz-Date as sent, or the Date header re-rendered as `yyyymmddThhmmssZ`.
fn request_time(req: &Request<'_>) -> Result<(String, OffsetDateTime), SigV4Error> {
    if let Some(value) = header_values(req, "x-amz-date").next() {
        let value = value.trim();
        let when = parse_amz_date(value)
            .ok_or_else(|| SigV4Error::InvalidDate(value.chars().take(64).collect()))?;
        return Ok((value.to_owned(), when));
    }
    if let Some(value) = header_values(req, "date").next() {
        let value = value.trim();
        let when = parse_http_date(value)
            .ok_or_else(|| SigV4Error::InvalidDate(value.chars().take(64).collect()))?;
        return Ok((format_amz_date(when).1, when));
    }
    Err(SigV4Error::MissingDate)
}

/// Parses exactly `yyyymmddThhmmssZ`.
fn parse_amz_date(s: &str) -> Option<OffsetDateTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u16> {
        let digits = s.get(range)?;
        digits
            .bytes()
            .all(|d| d.is_ascii_digit())
            .then(|| digits.parse().ok())
            .flatten()
    };
    let small = |range| num(range).and_then(|n| u8::try_from(n).ok());
    let month = Month::try_from(small(4..6)?).ok()?;
    let date = Date::from_calendar_date(i32::from(num(0..4)?), month, small(6..8)?).ok()?;
    let time = Time::from_hms(small(9..11)?, small(11..13)?, small(13..15)?).ok()?;
    Some(PrimitiveDateTime::new(date, time).assume_utc())
}

/// Parses an HTTP Date header: RFC 1123 (`… GMT`) or RFC 2822 with a numeric zone
/// (botocore sends `Sun, 30 Aug 2015 12:36:00 -0000`).
fn parse_http_date(s: &str) -> Option<OffsetDateTime> {
    let rfc1123 = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    PrimitiveDateTime::parse(s, rfc1123)
        .map(PrimitiveDateTime::assume_utc)
        .or_else(|_| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc2822))
        .ok()
}

/// `(yyyymmdd, yyyymmddThhmmssZ)` of `t` in UTC.
fn format_amz_date(t: OffsetDateTime) -> (String, String) {
    // Only fails at the very edge of the representable range; then the raw fields are used.
    let t = t.checked_to_offset(UtcOffset::UTC).unwrap_or(t);
    let date = format!("{:04}{:02}{:02}", t.year(), u8::from(t.month()), t.day());
    let stamp = format!("{date}T{:02}{:02}{:02}Z", t.hour(), t.minute(), t.second());
    (date, stamp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn amz_date_round_trips() {
        let t = datetime!(2015-08-30 12:36:00 UTC);
        assert_eq!(
            format_amz_date(t),
            ("20150830".into(), "20150830T123600Z".into())
        );
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(t));
        let shifted = datetime!(2015-08-30 14:36:00 +02:00);
        assert_eq!(format_amz_date(shifted).1, "20150830T123600Z");
        for bad in [
            "20150830T123600",
            "2015083OT123600Z",
            "20151330T123600Z",
            "20150830T246000Z",
            "+0150830T123600Z",
            "20150830T1236000Z",
            // Each separator is checked on its own.
            "20150830X123600Z",
            "20150830T123600X",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn http_dates_in_both_spellings() {
        let t = datetime!(2015-08-30 12:36:00 UTC);
        assert_eq!(parse_http_date("Sun, 30 Aug 2015 12:36:00 GMT"), Some(t));
        assert_eq!(parse_http_date("Sun, 30 Aug 2015 12:36:00 -0000"), Some(t));
        assert_eq!(parse_http_date("Sun, 30 Aug 2015 14:36:00 +0200"), Some(t));
        assert_eq!(parse_http_date("30/08/2015"), None);
    }

    #[test]
    fn signing_key_matches_aws_docs_example() {
        // From the AWS SigV4 documentation ("Examples of how to derive a signing key").
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20120215",
            "us-east-1",
            "iam",
        );
        assert_eq!(
            hex::encode(key),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    #[test]
    fn credentials_debug_hides_the_secret() {
        let creds = Credentials {
            access_key_id: "AKID",
            secret_access_key: "s3cr3t",
        };
        let shown = format!("{creds:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(
            shown.contains("AKID") && shown.contains("<redacted>"),
            "the key id is shown, the secret's place marked: {shown}"
        );
    }
}
