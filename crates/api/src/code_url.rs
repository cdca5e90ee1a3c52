//! Presigned download URLs for code packages, GetFunction's `Code.Location`: like S3's
//! presigned URLs, they work without credentials until they expire, for that one package.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use serde::Deserialize;
use sha2::Sha256;
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::AppState;

/// How long a code URL stays valid, as Lambda's (10 minutes).
const URL_LIFETIME_S: i64 = 600;

/// The clock code URLs are dated and checked by: the system's, or one a test controls
/// ([`crate::AppState::with_code_url_clock`]).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> OffsetDateTime + Send + Sync>);

impl Clock {
    /// A clock that reads `now`.
    pub fn new(now: impl Fn() -> OffsetDateTime + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    /// The system's wall clock.
    pub fn system() -> Self {
        Self::new(OffsetDateTime::now_utc)
    }

    fn unix_now(&self) -> i64 {
        (self.0)().unix_timestamp()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Clock").finish_non_exhaustive()
    }
}

pub fn new_key() -> String {
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    hex::encode(key)
}

fn signature(key: &[u8], account: &str, sha: &str, expires: i64) -> String {
    // HMAC accepts keys of any length, so new_from_slice cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(format!("{account}/{sha}/{expires}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

impl AppState {
    pub(crate) fn code_url(&self, host: &str, f: &ember_store::Function) -> String {
        self.blob_url(host, &f.account_id, &f.code_sha256)
    }

    /// The download URL of any package of `account`'s by its hex sha256: a function's code, or
    /// a layer version's content (GetLayerVersion's `Content.Location`).
    pub(crate) fn blob_url(&self, host: &str, account: &str, sha: &str) -> String {
        let expires = self.code_url_clock.unix_now() + URL_LIFETIME_S;
        let sig = signature(&self.code_url_key, account, sha, expires);
        format!("http://{host}/ember/v1/code/{account}/{sha}?Expires={expires}&Signature={sig}")
    }
}

/// The query of a code URL. Both members are optional here so that a URL without them (or with
/// a malformed one) is refused as a presigned URL is, with a 403, rather than as a bad query.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Presigned {
    expires: Option<String>,
    signature: Option<String>,
}

pub async fn download(
    State(state): State<AppState>,
    Path((account, sha)): Path<(String, String)>,
    Query(q): Query<Presigned>,
) -> Result<Response, ApiError> {
    let (Some(expires), Some(given)) = (q.expires.and_then(|e| e.parse::<i64>().ok()), q.signature)
    else {
        return Err(ApiError::AccessDenied(
            "A code URL needs its Expires (a Unix time) and Signature query parameters, as \
             GetFunction gave them"
                .into(),
        ));
    };
    let expected = signature(&state.code_url_key, &account, &sha, expires);
    let valid = expected.len() == given.len()
        && expected
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !valid {
        return Err(ApiError::AccessDenied(
            "The code URL's signature is not valid".into(),
        ));
    }
    if state.code_url_clock.unix_now() > expires {
        return Err(ApiError::AccessDenied("The code URL has expired".into()));
    }
    let bytes = state
        .store
        .code(&sha)
        .await
        .map_err(|_| ApiError::NotFound("The code package no longer exists".into()))?;
    Ok((
        [(header::CONTENT_TYPE, "application/zip")],
        Body::from(bytes),
    )
        .into_response())
}
