//! A function URL's CORS, from its `Cors` settings, as pure functions table-tested below: the
//! answer to a browser's preflight ([`preflight`], answered without invoking the function) and
//! the headers added to every response to an allowed origin ([`response_headers`]), replacing
//! any `Access-Control-*` headers the function set.
//!
//! An origin is allowed when `AllowOrigins` has it (compared without regard to case) or `*`. A
//! request from an origin not allowed gets no CORS header, so the browser refuses the answer.

use axum::http::{HeaderName, HeaderValue, Method};
use ember_store::UrlCors;

/// Whether a request is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`.
pub(crate) fn is_preflight(method: &Method, origin: Option<&str>, request_method: bool) -> bool {
    method == Method::OPTIONS && origin.is_some() && request_method
}

/// The `Access-Control-Allow-Origin` value for `origin`, if it is allowed: `*` when any origin
/// is and credentials are not, else the origin itself.
fn allowed_origin(cors: &UrlCors, origin: Option<&str>) -> Option<String> {
    let origin = origin?;
    let origins = cors.allow_origins.as_deref().unwrap_or_default();
    let any = origins.iter().any(|o| o == "*");
    if any && cors.allow_credentials != Some(true) {
        return Some("*".into());
    }
    (any || origins.iter().any(|o| o.eq_ignore_ascii_case(origin))).then(|| origin.to_owned())
}

fn push(headers: &mut Vec<(HeaderName, HeaderValue)>, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.push((HeaderName::from_static(name), value));
    }
}

fn list(values: Option<&Vec<String>>) -> Option<String> {
    values.filter(|v| !v.is_empty()).map(|v| v.join(","))
}

/// The headers of a preflight's answer (a 200 without a body).
pub(crate) fn preflight(cors: &UrlCors, origin: Option<&str>) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = Vec::new();
    let Some(allowed) = allowed_origin(cors, origin) else {
        return headers;
    };
    push(&mut headers, "access-control-allow-origin", &allowed);
    if let Some(methods) = list(cors.allow_methods.as_ref()) {
        push(&mut headers, "access-control-allow-methods", &methods);
    }
    if let Some(h) = list(cors.allow_headers.as_ref()) {
        push(&mut headers, "access-control-allow-headers", &h);
    }
    if let Some(h) = list(cors.expose_headers.as_ref()) {
        push(&mut headers, "access-control-expose-headers", &h);
    }
    if let Some(age) = cors.max_age {
        push(&mut headers, "access-control-max-age", &age.to_string());
    }
    if cors.allow_credentials == Some(true) {
        push(&mut headers, "access-control-allow-credentials", "true");
    }
    push(&mut headers, "vary", "Origin");
    headers
}

/// The CORS headers of an ordinary response to `origin`.
pub(crate) fn response_headers(
    cors: &UrlCors,
    origin: Option<&str>,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = Vec::new();
    let Some(allowed) = allowed_origin(cors, origin) else {
        return headers;
    };
    push(&mut headers, "access-control-allow-origin", &allowed);
    if let Some(h) = list(cors.expose_headers.as_ref()) {
        push(&mut headers, "access-control-expose-headers", &h);
    }
    if cors.allow_credentials == Some(true) {
        push(&mut headers, "access-control-allow-credentials", "true");
    }
    push(&mut headers, "vary", "Origin");
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(headers: &[(HeaderName, HeaderValue)]) -> Vec<String> {
        headers
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect()
    }

    fn cors(origins: &[&str], credentials: Option<bool>) -> UrlCors {
        UrlCors {
            allow_origins: Some(origins.iter().map(|o| (*o).to_owned()).collect()),
            allow_credentials: credentials,
            allow_methods: Some(vec!["GET".into(), "POST".into()]),
            allow_headers: Some(vec!["content-type".into(), "x-custom".into()]),
            expose_headers: Some(vec!["x-out".into()]),
            max_age: Some(300),
        }
    }

    #[test]
    fn origins_are_allowed_by_list_or_star() {
        // (AllowOrigins, AllowCredentials, request's Origin, Allow-Origin answered)
        type Row<'a> = (
            &'a [&'a str],
            Option<bool>,
            Option<&'a str>,
            Option<&'a str>,
        );
        let table: &[Row<'_>] = &[
            // (AllowOrigins, AllowCredentials, request's Origin, Allow-Origin answered)
            (&["*"], None, Some("https://a.example"), Some("*")),
            (
                &["*"],
                Some(true),
                Some("https://a.example"),
                Some("https://a.example"),
            ),
            (
                &["https://a.example"],
                None,
                Some("https://a.example"),
                Some("https://a.example"),
            ),
            (
                &["https://A.example"],
                None,
                Some("https://a.example"),
                Some("https://a.example"),
            ),
            (
                &["https://a.example"],
                None,
                Some("https://b.example"),
                None,
            ),
            (&[], None, Some("https://a.example"), None),
            (&["*"], None, None, None),
        ];
        for &(origins, credentials, origin, want) in table {
            let c = cors(origins, credentials);
            let got = response_headers(&c, origin);
            let allow = got
                .iter()
                .find(|(n, _)| n == "access-control-allow-origin")
                .map(|(_, v)| v.to_str().unwrap());
            assert_eq!(allow, want, "{origins:?} {origin:?}");
            assert_eq!(got.is_empty(), want.is_none());
        }
    }

    #[test]
    fn a_preflight_answers_every_setting() {
        let c = cors(&["https://a.example"], Some(true));
        assert_eq!(
            names(&preflight(&c, Some("https://a.example"))),
            [
                "access-control-allow-origin: https://a.example",
                "access-control-allow-methods: GET,POST",
                "access-control-allow-headers: content-type,x-custom",
                "access-control-expose-headers: x-out",
                "access-control-max-age: 300",
                "access-control-allow-credentials: true",
                "vary: Origin",
            ]
        );
        assert!(preflight(&c, Some("https://evil.example")).is_empty());
        assert_eq!(
            names(&response_headers(&c, Some("https://a.example"))),
            [
                "access-control-allow-origin: https://a.example",
                "access-control-expose-headers: x-out",
                "access-control-allow-credentials: true",
                "vary: Origin",
            ]
        );
    }

    #[test]
    fn preflights_are_options_with_origin_and_requested_method() {
        assert!(is_preflight(&Method::OPTIONS, Some("o"), true));
        assert!(!is_preflight(&Method::OPTIONS, None, true));
        assert!(!is_preflight(&Method::OPTIONS, Some("o"), false));
        assert!(!is_preflight(&Method::GET, Some("o"), true));
    }
}
