//! The CLI's HTTP client: SigV4-signed requests to the Lambda API, AWS errors as one line.
//! Shared by the `ember` binary's commands and the benchmarks (`ember-bench`).

#![forbid(unsafe_code)]

pub mod credentials;

use std::path::PathBuf;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::credentials::Keys;

/// What can go wrong talking to Ember, or finding the keys to sign with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {endpoint:?}")]
    Endpoint {
        endpoint: String,
        #[source]
        source: url::ParseError,
    },
    #[error("endpoint {0:?} has no host")]
    NoHost(String),
    #[error("cannot reach Ember at {endpoint}")]
    Unreachable {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    /// The answer's body could not be read.
    #[error(transparent)]
    Body(reqwest::Error),
    /// A non-2xx answer, with its AWS error type (`Error` when it has none).
    #[error("{error_type} (HTTP {status}): {message}")]
    Aws {
        error_type: String,
        status: u16,
        message: String,
    },
    #[error(transparent)]
    Encode(serde_json::Error),
    #[error("Ember sent a response that is not JSON")]
    NotJson(#[source] serde_json::Error),
    #[error("cannot write {}", path.display())]
    WriteCredentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}", path.display())]
    ReadCredentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("in {}: profile [{profile}] has no aws_access_key_id and aws_secret_access_key", path.display())]
    NoProfile { path: PathBuf, profile: String },
    #[error(
        "no credentials: {} does not exist and AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not set \
         (start `ember serve` once, or pass --data-dir)",
        path.display()
    )]
    NoCredentials { path: PathBuf },
}

/// Everything but AWS's unreserved characters is percent-encoded in a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The Ember server to talk to.
    #[arg(long, global = true, env = "EMBER_ENDPOINT", default_value = concat!("http://", "127.0.0.1:8900"))]
    endpoint: String,
    /// The data dir whose credentials file holds the keys to sign with.
    #[arg(
        long,
        global = true,
        env = "EMBER_DATA_DIR",
        default_value = "./.ember"
    )]
    data_dir: PathBuf,
    /// Region to sign for.
    #[arg(
        long,
        global = true,
        env = "AWS_DEFAULT_REGION",
        default_value = "us-east-1"
    )]
    region: String,
}

/// A signed client of one Ember server.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    endpoint: String,
    host: String,
    keys: Keys,
    region: String,
}

/// A successful response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl ClientArgs {
    /// The data dir the keys come from (also the server's, when it runs on this machine).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// The server's URL, as given.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The region to sign for.
    pub fn region(&self) -> &str {
        &self.region
    }
}

impl Client {
    pub fn new(args: &ClientArgs) -> Result<Self, ClientError> {
        let keys = credentials::find(&args.data_dir)?;
        Self::with_keys(reqwest::Client::new(), &args.endpoint, keys, &args.region)
    }

    /// A client of `endpoint` signing with `keys`, sending through `http` (so that many clients
    /// can share one connection pool).
    pub fn with_keys(
        http: reqwest::Client,
        endpoint: &str,
        keys: Keys,
        region: &str,
    ) -> Result<Self, ClientError> {
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        let url = match reqwest::Url::parse(&endpoint) {
            Ok(url) => url,
            Err(source) => return Err(ClientError::Endpoint { endpoint, source }),
        };
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            _ => return Err(ClientError::NoHost(endpoint)),
        };
        Ok(Self {
            http,
            endpoint,
            host,
            keys,
            region: region.to_owned(),
        })
    }

    /// Encodes a function name (or ARN) as one path segment.
    pub fn segment(name: &str) -> String {
        utf8_percent_encode(name, SEGMENT).to_string()
    }

    /// Sends a signed request; non-2xx answers become errors carrying the AWS error type.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Reply, ClientError> {
        let reply = self.send(method, path_and_query, headers, body).await?;
        if reply.status >= 300 {
            let (status, body) = (reply.status, &reply.body);
            let error_type = reply
                .headers
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("Error")
                .to_owned();
            let message = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| {
                    v.get("message")
                        .or_else(|| v.get("Message"))
                        .and_then(|m| m.as_str().map(str::to_owned))
                })
                .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
            return Err(ClientError::Aws {
                error_type,
                status,
                message,
            });
        }
        Ok(reply)
    }

    /// Sends a signed request and returns the answer, whatever its status.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Reply, ClientError> {
        let response = self.stream(method, path_and_query, headers, body).await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(ClientError::Body)?.to_vec();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// Sends a signed request and returns the answer as soon as its head arrives, whatever its
    /// status, for the caller to read its body as it comes (a streamed invocation's events).
    pub async fn stream(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<reqwest::Response, ClientError> {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let mut all: Vec<(&str, &str)> = vec![("host", self.host.as_str())];
        all.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
        let request = ember_sigv4::Request {
            method: method.as_str(),
            path,
            query,
            headers: &all,
            body: &body,
        };
        let credentials = ember_sigv4::Credentials {
            access_key_id: &self.keys.access_key_id,
            secret_access_key: &self.keys.secret_access_key,
        };
        let signed = ember_sigv4::sign(
            &request,
            &credentials,
            &self.region,
            "lambda",
            time::OffsetDateTime::now_utc(),
        );
        let mut builder = self
            .http
            .request(method, format!("{}{path_and_query}", self.endpoint))
            .body(body);
        for (k, v) in headers.iter() {
            builder = builder.header(*k, v);
        }
        for (k, v) in signed {
            builder = builder.header(k, v);
        }
        builder
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                endpoint: self.endpoint.clone(),
                source,
            })
    }

    /// Sends a signed JSON request and parses the JSON answer (`null` for an empty body).
    pub async fn json(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let (headers, bytes) = match body {
            Some(b) => (
                vec![("content-type", "application/json".to_owned())],
                serde_json::to_vec(&b).map_err(ClientError::Encode)?,
            ),
            None => (vec![], vec![]),
        };
        let reply = self.call(method, path_and_query, &headers, bytes).await?;
        if reply.body.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&reply.body).map_err(ClientError::NotJson)
    }
}
