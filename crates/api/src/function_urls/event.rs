//! The event a function URL request becomes: Lambda's payload format version 2.0, as a pure
//! function of the request and its context ([`event`]), table-tested below.
//!
//! As Lambda builds it: header names lowercased, a header sent several times joined with commas,
//! `cookie` headers moved to `cookies` (split on `;`), `queryStringParameters` decoded (a
//! parameter given several times joined with commas) and absent without a query string, `body`
//! absent without a body, and base64-encoded (`isBase64Encoded: true`) unless its content type is
//! text: `text/*`, `application/json`, `application/xml` or `application/javascript` (everything
//! else, `application/x-www-form-urlencoded` and a body without a content type included, is
//! binary to Lambda). As Lambda's front end does, Ember adds `x-forwarded-for` (the client's
//! address, after any the request carried) and `x-forwarded-proto` (`http`: Ember serves plain
//! HTTP). `pathParameters`, `stageVariables` and `requestContext.authentication` are
//! absent; `requestContext.authorizer` is there only for an `AWS_IAM` URL.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Serialize;

/// The HTTP request, as the URL received it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UrlRequest<'a> {
    /// `GET`, `POST`, …
    pub method: &'a str,
    /// The path as sent (percent-encoded), `/` at least; for the path form
    /// (`/ember/v1/urls/<id>/…`), what follows the URL's prefix.
    pub raw_path: &'a str,
    /// The query string as sent, without `?` (`""` for none).
    pub raw_query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// `HTTP/1.1`, …
    pub protocol: &'a str,
    /// The address of the TCP connection's peer.
    pub source_ip: &'a str,
}

/// What Lambda adds about the URL and the call.
#[derive(Debug, Clone)]
pub(crate) struct UrlContext<'a> {
    /// The function's owner.
    pub account_id: &'a str,
    pub url_id: &'a str,
    /// `<url-id>.lambda-url.<region>.<domain>`.
    pub domain_name: &'a str,
    pub request_id: &'a str,
    /// When the request arrived.
    pub time: time::OffsetDateTime,
    /// The signer of an `AWS_IAM` URL's request.
    pub iam: Option<IamCaller<'a>>,
}

/// Who signed an `AWS_IAM` URL's request. Ember's callers are accounts (no IAM users or roles),
/// so the user is the account's root.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IamCaller<'a> {
    pub access_key: &'a str,
    pub account_id: &'a str,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Event {
    pub version: &'static str,
    pub route_key: &'static str,
    pub raw_path: String,
    pub raw_query_string: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookies: Option<Vec<String>>,
    pub headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_string_parameters: Option<BTreeMap<String, String>>,
    pub request_context: RequestContext,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    pub is_base64_encoded: bool,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RequestContext {
    pub account_id: String,
    pub api_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorizer: Option<Authorizer>,
    pub domain_name: String,
    pub domain_prefix: String,
    pub http: Http,
    pub request_id: String,
    pub route_key: &'static str,
    pub stage: &'static str,
    pub time: String,
    pub time_epoch: i64,
}

#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct Authorizer {
    pub iam: Iam,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Iam {
    pub access_key: String,
    pub account_id: String,
    pub caller_id: String,
    pub cognito_identity: Option<()>,
    pub principal_org_id: Option<()>,
    pub user_arn: String,
    pub user_id: String,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Http {
    pub method: String,
    pub path: String,
    pub protocol: String,
    pub source_ip: String,
    pub user_agent: String,
}

/// The event of `req` to the URL `ctx` describes.
pub(crate) fn event(req: &UrlRequest<'_>, ctx: &UrlContext<'_>) -> Event {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut cookies: Vec<String> = Vec::new();
    for (name, value) in req.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        if name == axum::http::header::COOKIE {
            cookies.extend(
                value
                    .split(';')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned),
            );
            continue;
        }
        // `HeaderName`s are lowercase already.
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    headers
        .entry("x-forwarded-for".into())
        .and_modify(|v| {
            v.push_str(", ");
            v.push_str(req.source_ip);
        })
        .or_insert_with(|| req.source_ip.to_owned());
    headers.insert("x-forwarded-proto".into(), "http".into());
    let user_agent = headers.get("user-agent").cloned().unwrap_or_default();
    let (body, is_base64_encoded) = body(req.body, headers.get("content-type"));
    let raw_path = if req.raw_path.is_empty() {
        "/".to_owned()
    } else {
        req.raw_path.to_owned()
    };
    let time = ctx.time.to_offset(time::UtcOffset::UTC);
    let clf = time::macros::format_description!(
        "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
    );
    let domain_prefix = ctx
        .domain_name
        .split('.')
        .next()
        .unwrap_or(ctx.url_id)
        .to_owned();
    Event {
        version: "2.0",
        route_key: "$default",
        raw_path: raw_path.clone(),
        raw_query_string: req.raw_query.to_owned(),
        cookies: Some(cookies).filter(|c| !c.is_empty()),
        headers,
        query_string_parameters: query_parameters(req.raw_query),
        request_context: RequestContext {
            account_id: ctx.account_id.to_owned(),
            api_id: ctx.url_id.to_owned(),
            authorizer: ctx.iam.map(|iam| Authorizer {
                iam: Iam {
                    access_key: iam.access_key.to_owned(),
                    account_id: iam.account_id.to_owned(),
                    caller_id: iam.account_id.to_owned(),
                    cognito_identity: None,
                    principal_org_id: None,
                    user_arn: format!("arn:aws:iam::{}:root", iam.account_id),
                    user_id: iam.account_id.to_owned(),
                },
            }),
            domain_name: ctx.domain_name.to_owned(),
            domain_prefix,
            http: Http {
                method: req.method.to_owned(),
                path: raw_path,
                protocol: req.protocol.to_owned(),
                source_ip: req.source_ip.to_owned(),
                user_agent,
            },
            request_id: ctx.request_id.to_owned(),
            route_key: "$default",
            stage: "$default",
            time: time.format(&clf).unwrap_or_default(),
            time_epoch: i64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX),
        },
        body,
        is_base64_encoded,
    }
}

/// Whether a body of this content type reaches the function as text (else base64).
pub(crate) fn is_text(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence.starts_with("text/")
        || matches!(
            essence.as_str(),
            "application/json" | "application/xml" | "application/javascript"
        )
}

/// `body` and `isBase64Encoded`: none for an empty body; text as it is (if it is UTF-8);
/// anything else base64-encoded.
fn body(bytes: &[u8], content_type: Option<&String>) -> (Option<String>, bool) {
    if bytes.is_empty() {
        return (None, false);
    }
    if is_text(content_type.map(String::as_str)) {
        if let Ok(text) = std::str::from_utf8(bytes) {
            return (Some(text.to_owned()), false);
        }
    }
    (Some(STANDARD.encode(bytes)), true)
}

/// `queryStringParameters`: each parameter decoded (`+` is a space), repeated ones joined with
/// commas; `None` without a query string.
fn query_parameters(raw: &str) -> Option<BTreeMap<String, String>> {
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            let s = s.replace('+', " ");
            percent_encoding::percent_decode_str(&s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let value = decode(value);
        params
            .entry(decode(name))
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    Some(params).filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderName, HeaderValue};
    use serde_json::json;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn context(iam: Option<IamCaller<'static>>) -> UrlContext<'static> {
        UrlContext {
            account_id: "111111111111",
            url_id: "abcdefghijklmnopqrstuvwxyz012345",
            domain_name: "abcdefghijklmnopqrstuvwxyz012345.lambda-url.us-east-1.localhost",
            request_id: "r-1",
            // 2020-03-12T19:03:58.390Z
            time: time::OffsetDateTime::from_unix_timestamp_nanos(1_584_039_838_390_000_000)
                .unwrap(),
            iam,
        }
    }

    /// The whole event of a request, golden: member names, order and values.
    #[test]
    fn a_post_becomes_lambdas_event_byte_for_byte() {
        let h = headers(&[
            ("Content-Type", "application/json"),
            ("User-Agent", "curl/8"),
            ("X-Multi", "a"),
            ("x-multi", "b"),
            ("Cookie", "c1=v1; c2=v2"),
            ("cookie", "c3=v3"),
            ("X-Forwarded-For", "10.1.1.1"),
        ]);
        let req = UrlRequest {
            method: "POST",
            raw_path: "/my/path%20x",
            raw_query: "p1=v1&p1=v2&p2=a+b%26c&flag",
            headers: &h,
            body: br#"{"k":1}"#,
            protocol: "HTTP/1.1",
            source_ip: "127.0.0.1",
        };
        let got = event(&req, &context(None));
        let text = serde_json::to_string(&got).unwrap();
        assert!(
            text.starts_with(r#"{"version":"2.0","routeKey":"$default","rawPath":"/my/path%20x","rawQueryString":"#),
            "{text}"
        );
        let want = json!({
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": "/my/path%20x",
            "rawQueryString": "p1=v1&p1=v2&p2=a+b%26c&flag",
            "cookies": ["c1=v1", "c2=v2", "c3=v3"],
            "headers": {
                "content-type": "application/json", "user-agent": "curl/8", "x-multi": "a,b",
                "x-forwarded-for": "10.1.1.1, 127.0.0.1", "x-forwarded-proto": "http"
            },
            "queryStringParameters": {"flag": "", "p1": "v1,v2", "p2": "a b&c"},
            "requestContext": {
                "accountId": "111111111111",
                "apiId": "abcdefghijklmnopqrstuvwxyz012345",
                "domainName": "abcdefghijklmnopqrstuvwxyz012345.lambda-url.us-east-1.localhost",
                "domainPrefix": "abcdefghijklmnopqrstuvwxyz012345",
                "http": {
                    "method": "POST", "path": "/my/path%20x", "protocol": "HTTP/1.1",
                    "sourceIp": "127.0.0.1", "userAgent": "curl/8"
                },
                "requestId": "r-1",
                "routeKey": "$default",
                "stage": "$default",
                "time": "12/Mar/2020:19:03:58 +0000",
                "timeEpoch": 1_584_039_838_390_i64
            },
            "body": "{\"k\":1}",
            "isBase64Encoded": false
        });
        assert_eq!(serde_json::to_value(&got).unwrap(), want);
    }

    /// A GET without query, body or cookies: those members are absent, the path is `/`.
    #[test]
    fn a_bare_get_has_no_body_query_or_cookies() {
        let h = HeaderMap::new();
        let req = UrlRequest {
            method: "GET",
            raw_path: "",
            raw_query: "",
            headers: &h,
            body: b"",
            protocol: "HTTP/1.1",
            source_ip: "10.0.0.1",
        };
        let value = serde_json::to_value(event(&req, &context(None))).unwrap();
        assert_eq!(value["rawPath"], "/");
        assert_eq!(value["rawQueryString"], "");
        assert_eq!(value["isBase64Encoded"], false);
        for absent in ["body", "cookies", "queryStringParameters", "pathParameters"] {
            assert!(value.get(absent).is_none(), "{absent} present: {value}");
        }
        assert!(value["requestContext"].get("authorizer").is_none());
        assert_eq!(value["requestContext"]["http"]["userAgent"], "");
    }

    /// Which bodies are text and which base64, by content type.
    #[test]
    fn bodies_are_text_or_base64_by_content_type() {
        // (content type, body, event's body, isBase64Encoded)
        type Row<'a> = (Option<&'a str>, &'a [u8], Option<&'a str>, bool);
        let table: &[Row<'_>] = &[
            (Some("text/plain"), b"hi", Some("hi"), false),
            (Some("text/html; charset=utf-8"), b"<p>", Some("<p>"), false),
            (Some("Application/JSON"), b"{}", Some("{}"), false),
            (Some("application/xml"), b"<a/>", Some("<a/>"), false),
            (Some("application/javascript"), b"x()", Some("x()"), false),
            (
                Some("application/octet-stream"),
                b"\x00\x01",
                Some("AAE="),
                true,
            ),
            (Some("image/png"), b"hi", Some("aGk="), true),
            (
                Some("application/x-www-form-urlencoded"),
                b"a=b",
                Some("YT1i"),
                true,
            ),
            (None, b"hi", Some("aGk="), true),
            // Text that is not UTF-8 is sent as binary.
            (Some("text/plain"), b"\xff", Some("/w=="), true),
            (Some("image/png"), b"", None, false),
        ];
        for &(content_type, bytes, body, base64) in table {
            let h = match content_type {
                Some(ct) => headers(&[("content-type", ct)]),
                None => HeaderMap::new(),
            };
            let req = UrlRequest {
                method: "POST",
                raw_path: "/",
                raw_query: "",
                headers: &h,
                body: bytes,
                protocol: "HTTP/1.1",
                source_ip: "127.0.0.1",
            };
            let e = event(&req, &context(None));
            assert_eq!(e.body.as_deref(), body, "{content_type:?}");
            assert_eq!(e.is_base64_encoded, base64, "{content_type:?}");
        }
    }

    /// An `AWS_IAM` URL's event says who signed it.
    #[test]
    fn an_iam_callers_identity_is_in_the_authorizer() {
        let h = HeaderMap::new();
        let req = UrlRequest {
            method: "GET",
            raw_path: "/",
            raw_query: "",
            headers: &h,
            body: b"",
            protocol: "HTTP/1.1",
            source_ip: "127.0.0.1",
        };
        let iam = IamCaller {
            access_key: "AKIAEXAMPLE",
            account_id: "222222222222",
        };
        let value = serde_json::to_value(event(&req, &context(Some(iam)))).unwrap();
        assert_eq!(
            value["requestContext"]["authorizer"],
            json!({"iam": {
                "accessKey": "AKIAEXAMPLE", "accountId": "222222222222",
                "callerId": "222222222222", "cognitoIdentity": null, "principalOrgId": null,
                "userArn": "arn:aws:iam::222222222222:root", "userId": "222222222222"
            }})
        );
    }

    proptest::proptest! {
        /// Parameters written with form encoding come back decoded, whatever they hold.
        #[test]
        fn query_parameters_round_trip(
            params in proptest::collection::btree_map("[a-z]{1,8}", ".{0,16}", 0..5)
        ) {
            let raw: Vec<String> = params
                .iter()
                .map(|(k, v)| {
                    let v: String = percent_encoding::utf8_percent_encode(
                        v, percent_encoding::NON_ALPHANUMERIC).collect();
                    format!("{k}={v}")
                })
                .collect();
            let raw = raw.join("&");
            let got = query_parameters(&raw).unwrap_or_default();
            proptest::prop_assert_eq!(got, params);
        }

        /// Any query string and body make an event, never a panic; a binary body survives.
        #[test]
        fn any_request_makes_an_event(
            query in ".{0,64}",
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let h = headers(&[("content-type", "application/octet-stream")]);
            let req = UrlRequest {
                method: "POST",
                raw_path: "/",
                raw_query: &query,
                headers: &h,
                body: &body,
                protocol: "HTTP/1.1",
                source_ip: "127.0.0.1",
            };
            let e = event(&req, &context(None));
            let decoded = e.body.map(|b| STANDARD.decode(b).unwrap()).unwrap_or_default();
            proptest::prop_assert_eq!(decoded, body);
        }
    }
}
