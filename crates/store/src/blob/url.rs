//! `--blobs` URLs: `file://DIR` or `s3://BUCKET/PREFIX?endpoint=URL&region=R`, parsed and checked
//! before anything is opened, so that a typo is refused at start with the reason.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where code packages live, as `--blobs` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobUrl {
    /// `file://DIR`: a directory on this host (`file:///var/lib/ember/blobs`; `file://rel/dir`
    /// is relative to the working directory).
    File(PathBuf),
    /// `s3://BUCKET/PREFIX?endpoint=URL&region=R`: a bucket of an S3-compatible store.
    S3(S3Location),
}

/// A bucket and a key prefix in an S3-compatible object store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket's name (S3's rules: 3-63 of `a-z0-9.-`, starting and ending alphanumeric).
    pub bucket: String,
    /// Keys start with this, then `/sha256/...`; empty for the bucket's root. No leading or
    /// trailing `/`, no empty, `.` or `..` segment.
    pub prefix: String,
    /// `endpoint=`: the store's base URL (`http://127.0.0.1:8333`); `None` for AWS itself, or
    /// what `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` say.
    pub endpoint: Option<String>,
    /// `region=`: the region requests are signed for; `None` for `AWS_REGION`,
    /// `AWS_DEFAULT_REGION`, the profile's `region`, or `us-east-1`.
    pub region: Option<String>,
}

/// Why a `--blobs` URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid blob store URL {url:?}: {reason}")]
pub struct BlobUrlError {
    /// The URL as given.
    pub url: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for BlobUrl {
    type Err = BlobUrlError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let refuse = |reason: &str| BlobUrlError {
            url: text.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(dir) = text.strip_prefix("file://") {
            if dir.is_empty() {
                return Err(refuse(
                    "file:// needs a directory, e.g. file:///var/lib/ember/blobs",
                ));
            }
            if dir.contains(['?', '#']) {
                return Err(refuse("a file:// URL takes no query or fragment"));
            }
            return Ok(Self::File(PathBuf::from(dir)));
        }
        if !text.starts_with("s3://") {
            return Err(refuse(
                "expected file://DIR or s3://BUCKET/PREFIX?endpoint=URL&region=R",
            ));
        }
        let url = url::Url::parse(text).map_err(|e| refuse(&e.to_string()))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refuse(
                "credentials do not belong in the URL: they come from the AWS environment \
                 variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or files (~/.aws/credentials)",
            ));
        }
        if url.port().is_some() {
            return Err(refuse(
                "the bucket name takes no port: give the store's address as ?endpoint=URL",
            ));
        }
        if url.fragment().is_some() {
            return Err(refuse("an s3:// URL takes no fragment"));
        }
        let bucket = url.host_str().unwrap_or_default().to_owned();
        check_bucket(&bucket).map_err(|reason| refuse(&reason))?;
        // From the text as given: `Url` would have resolved `..` and `.` away.
        let raw = &text["s3://".len()..];
        let raw = &raw[..raw.find(['?', '#']).unwrap_or(raw.len())];
        let prefix = raw
            .split_once('/')
            .map_or("", |(_, path)| path)
            .trim_matches('/')
            .to_owned();
        if !prefix.is_empty()
            && prefix
                .split('/')
                .any(|segment| segment.is_empty() || segment == "." || segment == "..")
        {
            return Err(refuse("the prefix has an empty, `.` or `..` segment"));
        }
        if prefix.contains('%') {
            return Err(refuse("the prefix may not contain percent-escapes"));
        }
        let mut endpoint = None;
        let mut region = None;
        for (key, value) in url.query_pairs() {
            let slot = match key.as_ref() {
                "endpoint" => &mut endpoint,
                "region" => &mut region,
                other => {
                    return Err(refuse(&format!(
                        "unknown parameter {other:?} (known: endpoint, region)"
                    )))
                }
            };
            if slot.is_some() {
                return Err(refuse(&format!("{key} is given twice")));
            }
            if value.is_empty() {
                return Err(refuse(&format!("{key} is empty")));
            }
            *slot = Some(value.into_owned());
        }
        if let Some(endpoint) = &endpoint {
            check_endpoint(endpoint).map_err(|reason| refuse(&reason))?;
        }
        if let Some(region) = &region {
            if !region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(refuse("a region is letters, digits and `-`"));
            }
        }
        Ok(Self::S3(S3Location {
            bucket,
            prefix,
            endpoint,
            region,
        }))
    }
}

impl fmt::Display for BlobUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(dir) => write!(f, "file://{}", dir.display()),
            Self::S3(location) => location.fmt(f),
        }
    }
}

impl fmt::Display for S3Location {
    /// `s3://bucket/prefix` and the endpoint, for logs and errors (never a credential: the URL
    /// holds none).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)?;
        if let Some(endpoint) = &self.endpoint {
            write!(f, " at {endpoint}")?;
        }
        Ok(())
    }
}

fn check_bucket(bucket: &str) -> Result<(), String> {
    let ends_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !(3..=63).contains(&bucket.len())
        || !bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        || !ends_ok(bucket.bytes().next())
        || !ends_ok(bucket.bytes().last())
        || bucket.contains("..")
    {
        return Err(format!(
            "{bucket:?} is not a bucket name (3-63 of a-z, 0-9, `.` and `-`, starting and \
             ending with a letter or digit)"
        ));
    }
    Ok(())
}

fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let url = url::Url::parse(endpoint).map_err(|e| format!("endpoint {endpoint:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "endpoint {endpoint:?} is not an http:// or https:// URL"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("endpoint {endpoint:?} takes no query or fragment"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(bucket: &str, prefix: &str, endpoint: Option<&str>, region: Option<&str>) -> BlobUrl {
        BlobUrl::S3(S3Location {
            bucket: bucket.into(),
            prefix: prefix.into(),
            endpoint: endpoint.map(Into::into),
            region: region.map(Into::into),
        })
    }

    #[test]
    fn accepted_urls() {
        let table = [
            (
                "file:///var/lib/ember/blobs",
                BlobUrl::File("/var/lib/ember/blobs".into()),
            ),
            ("file://rel/dir", BlobUrl::File("rel/dir".into())),
            ("s3://code", s3("code", "", None, None)),
            ("s3://code/", s3("code", "", None, None)),
            (
                "s3://code/ember/prod/",
                s3("code", "ember/prod", None, None),
            ),
            (
                "s3://my.bucket-1/p?endpoint=http://127.0.0.1:8333&region=eu-west-1",
                s3(
                    "my.bucket-1",
                    "p",
                    Some("http://127.0.0.1:8333"),
                    Some("eu-west-1"),
                ),
            ),
            (
                "s3://b12/p?region=us-east-2&endpoint=https%3A%2F%2Fminio.example%3A9000",
                s3(
                    "b12",
                    "p",
                    Some("https://minio.example:9000"),
                    Some("us-east-2"),
                ),
            ),
        ];
        for (text, want) in table {
            assert_eq!(text.parse::<BlobUrl>(), Ok(want), "{text}");
        }
    }

    #[test]
    fn refused_urls_say_why() {
        let table = [
            ("/var/lib/ember", "expected file://DIR"),
            ("file://", "needs a directory"),
            ("http://bucket/x", "expected file://DIR"),
            ("s3://", "not a bucket name"),
            ("s3://ab/x", "not a bucket name"),
            ("s3://Upper/x", "not a bucket name"),
            ("s3://-dash/x", "not a bucket name"),
            ("s3://a..b/x", "not a bucket name"),
            ("s3://key:secret@bucket/x", "credentials do not belong"),
            ("s3://bucket:9000/x", "takes no port"),
            ("s3://bucket/a//b", "empty, `.` or `..` segment"),
            ("s3://bucket/a/../b", "empty, `.` or `..` segment"),
            (
                "s3://bucket/x?endpoint=ftp://host",
                "not an http:// or https:// URL",
            ),
            (
                "s3://bucket/x?endpoint=localhost:8333",
                "not an http:// or https:// URL",
            ),
            ("s3://bucket/x?endpoint=", "endpoint is empty"),
            ("s3://bucket/x?region=a&region=b", "region is given twice"),
            ("s3://bucket/x?region=us_east", "letters, digits and `-`"),
            ("s3://bucket/x?acl=public", "unknown parameter \"acl\""),
            ("s3://bucket/x#frag", "no fragment"),
        ];
        for (text, reason) in table {
            let err = text.parse::<BlobUrl>().expect_err(text);
            assert!(err.to_string().contains(reason), "{text}: {err}");
            assert_eq!(err.url, text);
        }
    }

    #[test]
    fn display_names_the_place_without_secrets() {
        let url: BlobUrl = "s3://code/ember?endpoint=http://127.0.0.1:8333"
            .parse()
            .unwrap();
        assert_eq!(url.to_string(), "s3://code/ember at http://127.0.0.1:8333");
    }
}
