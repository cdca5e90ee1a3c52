//! Verification failure modes: clock skew, scope date, malformed or missing pieces, wrong secret.

use ember_sigv4::{
    authorization_of, parse_authorization, sign, verify, Credentials, Request, SigV4Error,
    DEFAULT_MAX_SKEW,
};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const CREDS: Credentials<'static> = Credentials {
    access_key_id: "AKIDEXAMPLE",
    secret_access_key: SECRET,
};
const SIGNED_AT: OffsetDateTime = datetime!(2024-03-01 10:00:00 UTC);

/// Headers of a Lambda ListFunctions request signed at `at`, with the signing headers appended.
fn signed_headers(at: OffsetDateTime) -> Vec<(String, String)> {
    let base = [
        ("Host", "ember.local:9000"),
        ("Content-Type", "application/json"),
    ];
    let mut headers: Vec<(String, String)> = base
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    headers.extend(sign(&request(&base), &CREDS, "us-east-1", "lambda", at));
    headers
}

fn request<'a>(headers: &'a [(&'a str, &'a str)]) -> Request<'a> {
    Request {
        method: "GET",
        path: "/2015-03-31/functions/",
        query: "MaxItems=10",
        headers,
        body: b"",
    }
}

fn check(headers: &[(String, String)], now: OffsetDateTime) -> Result<(), SigV4Error> {
    let borrowed: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let req = request(&borrowed);
    let auth = authorization_of(&req)?;
    verify(&req, &auth, SECRET, now, DEFAULT_MAX_SKEW)
}

fn replace(headers: &mut [(String, String)], name: &str, value: &str) {
    for (k, v) in headers.iter_mut() {
        if k.eq_ignore_ascii_case(name) {
            *v = value.to_owned();
        }
    }
}

#[test]
fn skew_of_14_minutes_passes_and_16_fails_both_ways() {
    let headers = signed_headers(SIGNED_AT);
    assert_eq!(check(&headers, SIGNED_AT), Ok(()));
    for minutes in [14, -14] {
        assert_eq!(
            check(&headers, SIGNED_AT + Duration::minutes(minutes)),
            Ok(()),
            "{minutes}"
        );
    }
    for minutes in [16, -16] {
        let err = check(&headers, SIGNED_AT + Duration::minutes(minutes)).unwrap_err();
        assert!(
            matches!(err, SigV4Error::Expired { .. }),
            "{minutes}: {err:?}"
        );
        assert_eq!(err.code(), "InvalidSignatureException");
    }
}

/// "Within `max_skew`" includes the bound itself: exactly 15 minutes either way passes, one
/// second more fails.
#[test]
fn skew_of_exactly_15_minutes_passes_and_a_second_more_fails() {
    let headers = signed_headers(SIGNED_AT);
    for sign in [1, -1] {
        let bound = DEFAULT_MAX_SKEW * sign;
        assert_eq!(check(&headers, SIGNED_AT + bound), Ok(()), "{bound}");
        let past = bound + Duration::seconds(sign.into());
        assert!(
            matches!(
                check(&headers, SIGNED_AT + past),
                Err(SigV4Error::Expired { .. })
            ),
            "{past}"
        );
    }
}

#[test]
fn scope_date_must_match_request_date() {
    let mut headers = signed_headers(SIGNED_AT);
    let (_, auth) = headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .unwrap()
        .clone();
    replace(
        &mut headers,
        "authorization",
        &auth.replace("/20240301/", "/20240302/"),
    );
    assert_eq!(
        check(&headers, SIGNED_AT),
        Err(SigV4Error::ScopeMismatch("20240302".into()))
    );
}

/// A request correctly signed for `region` and `service` (so only the scope check can refuse it).
fn auth_signed_for(region: &str, service: &str) -> ember_sigv4::Authorization {
    let base = [("Host", "ember.local:9000")];
    let signed = sign(&request(&base), &CREDS, region, service, SIGNED_AT);
    let mut headers: Vec<(&str, &str)> = base.to_vec();
    headers.extend(signed.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let req = request(&headers);
    let auth = authorization_of(&req).unwrap_or_else(|e| panic!("{e}"));
    // The signature itself is good: what is refused below is the scope alone.
    assert_eq!(
        verify(&req, &auth, SECRET, SIGNED_AT, DEFAULT_MAX_SKEW),
        Ok(())
    );
    auth
}

#[test]
fn scope_region_and_service_must_be_the_servers() {
    assert_eq!(
        auth_signed_for("us-east-1", "lambda").check_scope("us-east-1", "lambda"),
        Ok(())
    );
    let err = auth_signed_for("eu-west-1", "lambda")
        .check_scope("us-east-1", "lambda")
        .unwrap_err();
    assert_eq!(
        err,
        SigV4Error::WrongRegion {
            expected: "us-east-1".into(),
            got: "eu-west-1".into()
        }
    );
    assert_eq!(err.code(), "InvalidSignatureException");
    let message = err.to_string();
    assert!(
        message.starts_with("Credential should be scoped to a valid region, not 'eu-west-1'.")
            && message.contains("'us-east-1'"),
        "{message}"
    );

    let err = auth_signed_for("us-east-1", "s3")
        .check_scope("us-east-1", "lambda")
        .unwrap_err();
    assert_eq!(
        err,
        SigV4Error::WrongService {
            expected: "lambda".into(),
            got: "s3".into()
        }
    );
    assert_eq!(err.code(), "InvalidSignatureException");
    // Region names are compared exactly, as AWS does.
    assert!(auth_signed_for("US-EAST-1", "lambda")
        .check_scope("us-east-1", "lambda")
        .is_err());
}

#[test]
fn scope_terminator_must_be_aws4_request() {
    let good = "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/lambda/aws4_request, \
                SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
    let err = parse_authorization(&good.replace("/aws4_request", "/aws5_request")).unwrap_err();
    assert_eq!(err, SigV4Error::WrongTerminator("aws5_request".into()));
    assert_eq!(err.code(), "InvalidSignatureException");
    assert_eq!(
        err.to_string(),
        "Credential should be scoped with a valid terminator: 'aws4_request', not 'aws5_request'."
    );
}

#[test]
fn moving_x_amz_date_within_the_window_breaks_the_signature() {
    let mut headers = signed_headers(SIGNED_AT);
    replace(&mut headers, "x-amz-date", "20240301T100100Z");
    assert_eq!(
        check(&headers, SIGNED_AT),
        Err(SigV4Error::SignatureMismatch)
    );
}

#[test]
fn wrong_secret_is_a_signature_mismatch_with_the_aws_message() {
    let headers = signed_headers(SIGNED_AT);
    let borrowed: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let req = request(&borrowed);
    let auth = authorization_of(&req).unwrap();
    let err = verify(&req, &auth, "not-the-secret", SIGNED_AT, DEFAULT_MAX_SKEW).unwrap_err();
    assert_eq!(err, SigV4Error::SignatureMismatch);
    assert_eq!(
        err.to_string(),
        "The request signature we calculated does not match the signature you provided. \
         Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
    );
}

#[test]
fn x_amz_content_sha256_is_only_a_signed_header() {
    // A client claiming UNSIGNED-PAYLOAD still has to have signed the real body hash.
    let base = [("Host", "h"), ("x-amz-content-sha256", "UNSIGNED-PAYLOAD")];
    let mut headers: Vec<(&str, &str)> = base.to_vec();
    let req = Request {
        method: "POST",
        path: "/",
        query: "",
        headers: &base,
        body: b"payload",
    };
    let added = sign(&req, &CREDS, "us-east-1", "lambda", SIGNED_AT);
    headers.extend(added.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let wire = Request {
        headers: &headers,
        ..req
    };
    let auth = authorization_of(&wire).unwrap();
    assert!(auth
        .signed_headers
        .contains(&"x-amz-content-sha256".to_owned()));
    assert_eq!(
        verify(&wire, &auth, SECRET, SIGNED_AT, DEFAULT_MAX_SKEW),
        Ok(())
    );
    let other_body = Request {
        body: b"PAYLOAD",
        ..wire
    };
    assert_eq!(
        verify(&other_body, &auth, SECRET, SIGNED_AT, DEFAULT_MAX_SKEW),
        Err(SigV4Error::SignatureMismatch)
    );
}

#[test]
fn sign_skips_unsignable_and_stale_headers() {
    let base = [
        ("Host", "h"),
        ("User-Agent", "ember/0.1"),
        ("Authorization", "stale"),
        ("X-Amz-Date", "19990101T000000Z"),
        ("Connection", "keep-alive"),
        ("X-Custom", "v"),
    ];
    let req = Request {
        method: "GET",
        path: "/",
        query: "",
        headers: &base,
        body: b"",
    };
    let added = sign(&req, &CREDS, "us-east-1", "lambda", SIGNED_AT);
    assert_eq!(
        added[0],
        ("x-amz-date".to_owned(), "20240301T100000Z".to_owned())
    );
    let auth = parse_authorization(&added[1].1).unwrap();
    assert_eq!(auth.signed_headers, ["host", "x-amz-date", "x-custom"]);
    assert_eq!(
        (
            auth.date.as_str(),
            auth.region.as_str(),
            auth.service.as_str()
        ),
        ("20240301", "us-east-1", "lambda")
    );
}

#[test]
fn missing_and_malformed_requests() {
    let none = request(&[("Host", "h")]);
    assert_eq!(authorization_of(&none), Err(SigV4Error::Missing));
    assert_eq!(
        SigV4Error::Missing.code(),
        "MissingAuthenticationTokenException"
    );

    let two = [
        ("Host", "h"),
        ("authorization", "x"),
        ("Authorization", "y"),
    ];
    assert!(matches!(
        authorization_of(&request(&two)),
        Err(SigV4Error::Malformed(_))
    ));

    // No date header at all.
    let mut headers = signed_headers(SIGNED_AT);
    headers.retain(|(k, _)| k != "x-amz-date");
    assert_eq!(check(&headers, SIGNED_AT), Err(SigV4Error::MissingDate));

    // Unparseable date.
    let mut headers = signed_headers(SIGNED_AT);
    replace(&mut headers, "x-amz-date", "yesterday");
    assert!(matches!(
        check(&headers, SIGNED_AT),
        Err(SigV4Error::InvalidDate(_))
    ));

    // A signed header that is not in the request.
    let mut headers = signed_headers(SIGNED_AT);
    headers.retain(|(k, _)| k != "Content-Type");
    assert!(matches!(
        check(&headers, SIGNED_AT),
        Err(SigV4Error::Malformed(_))
    ));
}

#[test]
fn rfc1123_date_header_is_accepted_without_x_amz_date() {
    // Signature computed independently (Python hmac/hashlib) over
    // "GET\n/2015-03-31/functions/\nMaxItems=10\ndate:Fri, 01 Mar 2024 10:00:00 GMT\nhost:h\n\ndate;host\n{sha256('')}"
    // with the string-to-sign timestamp 20240301T100000Z.
    let headers: Vec<(String, String)> = vec![
        ("Host".into(), "h".into()),
        ("Date".into(), "Fri, 01 Mar 2024 10:00:00 GMT".into()),
        (
            "Authorization".into(),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240301/us-east-1/lambda/aws4_request, SignedHeaders=date;host, \
             Signature=27fbafd4af7e5afb5c62c6a1b5812bc0c7eefed0d1658ab94657bf6aa1af7d4e"
                .into(),
        ),
    ];
    assert_eq!(check(&headers, SIGNED_AT + Duration::minutes(5)), Ok(()));
    assert!(matches!(
        check(&headers, SIGNED_AT + Duration::hours(1)),
        Err(SigV4Error::Expired { .. })
    ));
    // The Date header's time is what was signed: another second breaks the signature.
    let mut moved = headers.clone();
    replace(&mut moved, "date", "Fri, 01 Mar 2024 10:00:01 GMT");
    assert_eq!(check(&moved, SIGNED_AT), Err(SigV4Error::SignatureMismatch));
}

#[test]
fn parse_authorization_rejects_bad_values() {
    let good = "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/lambda/aws4_request, \
                SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
    let auth = parse_authorization(good).unwrap();
    assert_eq!(auth.access_key_id, "AKID");
    assert_eq!(auth.scope(), "20150830/us-east-1/lambda/aws4_request");
    // Commas without spaces are fine too.
    assert_eq!(parse_authorization(&good.replace(", ", ",")).unwrap(), auth);

    assert_eq!(
        parse_authorization("AWS AKID:c2lnbmF0dXJl"),
        Err(SigV4Error::UnsupportedAlgorithm("AWS".into()))
    );
    for bad in [
        "",
        "AWS4-HMAC-SHA256",
        &good.replace("20150830", "2015083"),
        &good.replace("host;x-amz-date", "x-amz-date"),
        &good.replace("host;", "host;;"),
        &good.replace("Signature=5fa0", "Signature=5FA0"),
        &good.replace("Signature=5fa0", "Signature=5fa"),
        &good.replace("SignedHeaders", "Signed"),
        &format!("{good}, Signature=00"),
        &good.replace("AKID/", ""),
        // Each field of the scope must be there, not only the right number of them.
        &good.replace("AKID/", "/"),
        &good.replace("/us-east-1/", "//"),
        &good.replace("/lambda/", "//"),
    ] {
        assert!(
            matches!(parse_authorization(bad), Err(SigV4Error::Malformed(_))),
            "{bad:?}"
        );
    }
}
