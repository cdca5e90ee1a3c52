//! Known-answer tests: the AWS SigV4 test suite and botocore-signed Lambda requests.
//!
//! Suite vectors: credentials AKIDEXAMPLE, 20150830T123600Z, us-east-1, service "service"
//! (aws-sig-v4-test-suite as shipped with botocore and awslabs/aws-c-auth). Excluded: the
//! `*-unnormalized` cases (S3 rules: no dot-segment removal, single encoding) and the
//! session-token cases (Ember has no sessions).

use ember_sigv4::{
    authorization_of, canonical_request, parse_authorization, sign, string_to_sign, verify,
    Credentials, Request, DEFAULT_MAX_SKEW,
};
use time::macros::datetime;
use time::OffsetDateTime;

const AKID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const NOW: OffsetDateTime = datetime!(2015-08-30 12:36:00 UTC);
const HOST: (&str, &str) = ("Host", "example.amazonaws.com");
const DATE: (&str, &str) = ("X-Amz-Date", "20150830T123600Z");
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const CREDS: Credentials<'static> = Credentials {
    access_key_id: AKID,
    secret_access_key: SECRET,
};

struct Vector {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    query: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: &'static [u8],
    /// Expected canonical request, where the suite's copy is consistent with its signature.
    creq: Option<&'static str>,
    /// `SignedHeaders=…, Signature=…` tail of the expected Authorization header.
    authz: &'static str,
}

const SUITE: &[Vector] = &[
    Vector {
        name: "get-vanilla",
        method: "GET",
        path: "/",
        query: "",
        headers: &[HOST, DATE],
        body: b"",
        creq: Some("GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        authz: "SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
    },
    Vector {
        name: "get-vanilla-query-order-key-case",
        method: "GET",
        path: "/",
        query: "Param2=value2&Param1=value1",
        headers: &[HOST, DATE],
        body: b"",
        creq: Some("GET\n/\nParam1=value1&Param2=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        authz: "SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
    },
    Vector {
        name: "get-vanilla-query-order-encoded",
        method: "GET",
        path: "/",
        query: "Param-3=Value3&Param=Value2&%E1%88%B4=Value1",
        headers: &[HOST, DATE],
        body: b"",
        creq: None,
        authz: "SignedHeaders=host;x-amz-date, Signature=371d3713e185cc334048618a97f809c9ffe339c62934c032af5a0e595648fcac",
    },
    Vector {
        name: "get-vanilla-query-unreserved",
        method: "GET",
        path: "/",
        query: "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
        headers: &[HOST, DATE],
        body: b"",
        creq: None,
        authz: "SignedHeaders=host;x-amz-date, Signature=9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197",
    },
    Vector {
        name: "get-vanilla-empty-query-key",
        method: "GET",
        path: "/",
        query: "Param1=value1",
        headers: &[HOST, DATE],
        body: b"",
        creq: None,
        authz: "SignedHeaders=host;x-amz-date, Signature=a67d582fa61cc504c4bae71f336f98b97f1ea3c7a6bfe1b6e45aec72011b9aeb",
    },
    Vector {
        name: "get-vanilla-utf8-query",
        method: "GET",
        path: "/",
        query: "\u{1234}=bar",
        headers: &[HOST, DATE],
        body: b"",
        creq: None,
        authz: "SignedHeaders=host;x-amz-date, Signature=2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04",
    },
    Vector {
        name: "get-header-value-trim",
        method: "GET",
        path: "/",
        query: "",
        headers: &[HOST, ("My-Header1", " value1 "), ("My-Header2", "\"a   b   c\""), DATE],
        body: b"",
        creq: Some("GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1\nmy-header2:\"a b c\"\nx-amz-date:20150830T123600Z\n\nhost;my-header1;my-header2;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        authz: "SignedHeaders=host;my-header1;my-header2;x-amz-date, Signature=acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
    },
    Vector {
        name: "get-header-key-duplicate",
        method: "GET",
        path: "/",
        query: "",
        headers: &[HOST, ("My-Header1", "value2"), ("My-Header1", "value2"), ("My-Header1", "value1"), DATE],
        body: b"",
        creq: Some("GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value2,value2,value1\nx-amz-date:20150830T123600Z\n\nhost;my-header1;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        authz: "SignedHeaders=host;my-header1;x-amz-date, Signature=c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea",
    },
    Vector {
        name: "get-header-value-order",
        method: "GET",
        path: "/",
        query: "",
        headers: &[HOST, ("My-Header1", "value4"), ("My-Header1", "value1"), ("My-Header1", "value3"), ("My-Header1", "value2"), DATE],
        body: b"",
        creq: None,
        authz: "SignedHeaders=host;my-header1;x-amz-date, Signature=08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01",
    },
    Vector {
        name: "get-utf8",
        method: "GET",
        path: "/\u{1234}",
        query: "",
        headers: &[HOST, DATE],
        body: b"",
        creq: Some("GET\n/%E1%88%B4\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        authz: "SignedHeaders=host;x-amz-date, Signature=8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85",
    },
    Vector {
        name: "get-unreserved",
        method: "GET",
        path: "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
        query: "",
        headers: &[HOST, DATE],
        body: b"",
        creq: None,
        authz: "SignedHeaders=host;x-amz-date, Signature=07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f",
    },
    Vector {
        name: "get-space-normalized",
        method: "GET",
        path: "/example space/",
        query: "",
        headers: &[HOST, DATE],
        body: b"",
        creq: None,
        authz: "SignedHeaders=host;x-amz-date, Signature=652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741",
    },
    Vector {
        name: "get-slashes-normalized",
        method: "GET",
        path: "//example//",
        query: "",
        headers: &[HOST, DATE],
        body: b"",
        creq: None,
        authz: "SignedHeaders=host;x-amz-date, Signature=9a624bd73a37c9a373b5312afbebe7a714a789de108f0bdfe846570885f57e84",
    },
    Vector {
        name: "get-slash-pointless-dot-normalized",
        method: "GET",
        path: "/./example",
        query: "",
        headers: &[HOST, DATE],
        body: b"",
        creq: None,
        authz: "SignedHeaders=host;x-amz-date, Signature=ef75d96142cf21edca26f06005da7988e4f8dc83a165a80865db7089db637ec5",
    },
    Vector {
        name: "get-relative-normalized",
        method: "GET",
        path: "/example/..",
        query: "",
        headers: &[HOST, DATE],
        body: b"",
        creq: None,
        authz: "SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
    },
    Vector {
        name: "get-relative-relative-normalized",
        method: "GET",
        path: "/example1/example2/../..",
        query: "",
        headers: &[HOST, DATE],
        body: b"",
        creq: None,
        authz: "SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
    },
    Vector {
        name: "get-slash-dot-slash-normalized",
        method: "GET",
        path: "/./",
        query: "",
        headers: &[HOST, DATE],
        body: b"",
        creq: None,
        authz: "SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
    },
    Vector {
        name: "post-vanilla",
        method: "POST",
        path: "/",
        query: "",
        headers: &[HOST, DATE],
        body: b"",
        creq: Some("POST\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        authz: "SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
    },
    Vector {
        name: "post-header-key-sort",
        method: "POST",
        path: "/",
        query: "",
        headers: &[HOST, ("My-Header1", "value1"), DATE],
        body: b"",
        creq: None,
        authz: "SignedHeaders=host;my-header1;x-amz-date, Signature=c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c",
    },
    Vector {
        name: "post-x-www-form-urlencoded",
        method: "POST",
        path: "/",
        query: "",
        headers: &[("Content-Type", "application/x-www-form-urlencoded"), HOST, DATE],
        body: b"Param1=value1",
        creq: Some("POST\n/\n\ncontent-type:application/x-www-form-urlencoded\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\n9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e"),
        authz: "SignedHeaders=content-type;host;x-amz-date, Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
    },
    Vector {
        name: "post-x-www-form-urlencoded-parameters",
        method: "POST",
        path: "/",
        query: "",
        headers: &[("Content-Type", "application/x-www-form-urlencoded; charset=utf8"), HOST, DATE],
        body: b"Param1=value1",
        creq: None,
        authz: "SignedHeaders=content-type;host;x-amz-date, Signature=1a72ec8f64bd914b0e42e42607c7fbce7fb2c7465f63e3092b3b0d39fa77a6fe",
    },
    Vector {
        // aws-c-auth's revision of the case: x-amz-content-sha256 (equal to the body's hash) is signed.
        name: "post-x-www-form-urlencoded (content-sha256)",
        method: "POST",
        path: "/",
        query: "",
        headers: &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            HOST,
            ("Content-Length", "13"),
            ("x-amz-content-sha256", "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e"),
            DATE,
        ],
        body: b"Param1=value1",
        creq: None,
        authz: "SignedHeaders=content-length;content-type;host;x-amz-content-sha256;x-amz-date, Signature=d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b",
    },
];

fn authz(tail: &str, service: &str) -> String {
    format!("AWS4-HMAC-SHA256 Credential={AKID}/20150830/us-east-1/{service}/aws4_request, {tail}")
}

#[test]
fn aws_suite_vectors_verify_and_sign() {
    for v in SUITE {
        let req = Request {
            method: v.method,
            path: v.path,
            query: v.query,
            headers: v.headers,
            body: v.body,
        };
        let expected = authz(v.authz, "service");
        let auth = parse_authorization(&expected).unwrap();
        let creq = canonical_request(&req, &auth.signed_headers).unwrap();
        if let Some(want) = v.creq {
            assert_eq!(creq, want, "{}: canonical request", v.name);
        }

        let mut wire = v.headers.to_vec();
        wire.push(("Authorization", &expected));
        let wire = Request {
            headers: &wire,
            ..req
        };
        let parsed = authorization_of(&wire).unwrap();
        assert_eq!(parsed, auth, "{}", v.name);
        assert_eq!(
            verify(&wire, &parsed, SECRET, NOW, DEFAULT_MAX_SKEW),
            Ok(()),
            "{}: verify",
            v.name
        );

        let added = sign(&req, &CREDS, "us-east-1", "service", NOW);
        assert_eq!(
            added,
            vec![
                ("x-amz-date".to_owned(), "20150830T123600Z".to_owned()),
                ("authorization".to_owned(), expected.clone()),
            ],
            "{}: sign",
            v.name
        );
    }
}

#[test]
fn get_vanilla_string_to_sign() {
    let creq = SUITE[0].creq.unwrap();
    assert_eq!(
        string_to_sign("20150830T123600Z", "20150830/us-east-1/service/aws4_request", creq),
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
    );
}

/// `aws lambda get-function-configuration --function-name arn:… --qualifier '$LATEST'` as
/// botocore 1.43.11 sends it (endpoint http://localhost:9000). The function name travels
/// percent-encoded and is signed double-encoded (`%3A` -> `%253A`); the canonical request
/// below is written out by hand from the rules and the signature is botocore's.
#[test]
fn lambda_arn_path_is_double_encoded() {
    let path = "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Afoo/configuration";
    let signature = "3e653690b65f7bd69a45280b43efcb9fad1c490f7040251baac48cda8fc7de46";
    let expected = authz(
        &format!("SignedHeaders=host;x-amz-date, Signature={signature}"),
        "lambda",
    );
    let headers = [
        (
            "User-Agent",
            "Boto3/1.43.11 md/Botocore#1.43.11 ua/2.1 os/linux lang/python#3.11.7",
        ),
        ("X-Amz-Date", "20150830T123600Z"),
        ("Authorization", expected.as_str()),
        (
            "amz-sdk-invocation-id",
            "23f1d66d-98ae-424e-9a23-aead823c4f18",
        ),
        ("amz-sdk-request", "attempt=1"),
        ("Host", "localhost:9000"),
    ];
    let req = Request {
        method: "GET",
        path,
        query: "Qualifier=%24LATEST",
        headers: &headers,
        body: b"",
    };
    let auth = authorization_of(&req).unwrap();
    assert_eq!(
        canonical_request(&req, &auth.signed_headers).unwrap(),
        format!(
            "GET\n/2015-03-31/functions/arn%253Aaws%253Alambda%253Aus-east-1%253A123456789012%253Afunction%253Afoo/configuration\n\
             Qualifier=%24LATEST\nhost:localhost:9000\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n{EMPTY_SHA256}"
        )
    );
    assert_eq!(verify(&req, &auth, SECRET, NOW, DEFAULT_MAX_SKEW), Ok(()));

    // Our client, given the same path and only Host, produces botocore's exact header.
    let host = [("Host", "localhost:9000")];
    let added = sign(
        &Request {
            headers: &host,
            ..req
        },
        &CREDS,
        "us-east-1",
        "lambda",
        NOW,
    );
    assert_eq!(added[1].1, expected);

    // Signing the path single-encoded (as S3 would) gives a different signature.
    let decoded =
        "/2015-03-31/functions/arn:aws:lambda:us-east-1:123456789012:function:foo/configuration";
    let single = sign(
        &Request {
            path: decoded,
            headers: &host,
            ..req
        },
        &CREDS,
        "us-east-1",
        "lambda",
        NOW,
    );
    assert_ne!(single[1].1, expected);
}

/// `aws lambda invoke` (botocore 1.43.11), with a body: the payload hash is signed.
#[test]
fn lambda_invoke_with_body() {
    let expected = authz(
        "SignedHeaders=host;x-amz-date, Signature=ad3d66421aa4310dcc05baaa6e360761079a06550f07b1f78cac3a54a0553ff3",
        "lambda",
    );
    let headers = [
        ("X-Amz-Date", "20150830T123600Z"),
        ("Authorization", expected.as_str()),
        ("Content-Length", "12"),
        ("Host", "localhost:9000"),
    ];
    let req = Request {
        method: "POST",
        path: "/2015-03-31/functions/my-func/invocations",
        query: "",
        headers: &headers,
        body: br#"{"k": "v w"}"#,
    };
    let auth = authorization_of(&req).unwrap();
    assert_eq!(verify(&req, &auth, SECRET, NOW, DEFAULT_MAX_SKEW), Ok(()));
    let tampered = Request {
        body: br#"{"k": "v W"}"#,
        ..req
    };
    assert!(verify(&tampered, &auth, SECRET, NOW, DEFAULT_MAX_SKEW).is_err());
}

/// botocore signs with the Date header (RFC 2822, `-0000`) instead of X-Amz-Date when the
/// request already carries one; the string to sign then uses that time in ISO 8601 basic.
#[test]
fn botocore_date_header_request() {
    let expected = authz(
        "SignedHeaders=content-type;date;host, Signature=aa455269b12764ecc5c5e2e17fc74ede2ba0438bf59994d050ad1a1c17ef9bc7",
        "lambda",
    );
    let headers = [
        ("Host", "localhost:9000"),
        ("Content-Type", "application/json"),
        ("Date", "Sun, 30 Aug 2015 12:36:00 -0000"),
        ("Authorization", expected.as_str()),
    ];
    let req = Request {
        method: "POST",
        path: "/2015-03-31/functions/my-func/invocations",
        query: "",
        headers: &headers,
        body: br#"{"k": "v w"}"#,
    };
    let auth = authorization_of(&req).unwrap();
    assert_eq!(
        canonical_request(&req, &auth.signed_headers).unwrap(),
        "POST\n/2015-03-31/functions/my-func/invocations\n\ncontent-type:application/json\n\
         date:Sun, 30 Aug 2015 12:36:00 -0000\nhost:localhost:9000\n\ncontent-type;date;host\n\
         565b01b6bc10313f42affe075ef5de69c1014859714573e248317be740f5c138"
    );
    assert_eq!(verify(&req, &auth, SECRET, NOW, DEFAULT_MAX_SKEW), Ok(()));
}
