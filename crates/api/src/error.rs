//! The one place where Ember's failures become HTTP statuses and AWS error shapes.
//!
//! botocore's rest-json parser reads the error code from the `x-amzn-ErrorType` header and the
//! message from the body's `message` (or `Message`); Lambda's own bodies also carry `Type`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ember_stdx::error_chain;
use ember_store::StoreError;

/// An error answered to an API caller.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("{0}")]
    Conflict(String),
    #[error("The Revision Id provided does not match the latest Revision Id. Call the GetFunction/GetAlias API to retrieve the latest Revision Id")]
    PreconditionFailed,
    #[error("{0}")]
    TooLarge(String),
    #[error("{message}")]
    TooManyRequests {
        retry_after_s: u32,
        reason: &'static str,
        message: &'static str,
    },
    #[error("{0}")]
    UnrecognizedClient(String),
    #[error("{0}")]
    InvalidSignature(String),
    #[error("{0}")]
    AccessDenied(String),
    #[error("Unknown operation {method} {path}")]
    UnknownOperation { method: String, path: String },
    #[error("Method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("{0}")]
    RequestEntityTooLarge(String),
    #[error("{0}")]
    HeadersTooLarge(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    InvalidRequestContent(String),
    #[error("{0}")]
    InvalidRuntime(String),
    #[error("{0}")]
    ServiceUnavailable(String),
    #[error(
        "Ember's storage is full: the data dir's file system has no space left for this write, \
         and nothing was changed. Reads and invocations still work; retry once space is freed."
    )]
    StorageFull,
    #[error("{0}")]
    Service(String),
}

impl ApiError {
    /// The AWS error type, as `x-amzn-ErrorType` and the body's `Type`-sibling fields carry it.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "ResourceNotFoundException",
            Self::InvalidParameter(_) => "InvalidParameterValueException",
            Self::Conflict(_) => "ResourceConflictException",
            Self::PreconditionFailed => "PreconditionFailedException",
            Self::TooLarge(_) => "RequestTooLargeException",
            Self::TooManyRequests { .. } => "TooManyRequestsException",
            Self::UnrecognizedClient(_) => "UnrecognizedClientException",
            Self::InvalidSignature(_) => "InvalidSignatureException",
            Self::AccessDenied(_) => "AccessDeniedException",
            Self::UnknownOperation { .. } => "UnknownOperationException",
            Self::MethodNotAllowed { .. } => "MethodNotAllowedException",
            Self::RequestEntityTooLarge(_) => "RequestEntityTooLargeException",
            Self::HeadersTooLarge(_) => "RequestHeaderFieldsTooLargeException",
            Self::RequestTimeout(_) => "RequestTimeoutException",
            Self::InvalidRequestContent(_) => "InvalidRequestContentException",
            Self::InvalidRuntime(_) => "InvalidRuntimeException",
            Self::ServiceUnavailable(_) | Self::StorageFull | Self::Service(_) => {
                "ServiceException"
            }
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) | Self::UnknownOperation { .. } => StatusCode::NOT_FOUND,
            Self::InvalidParameter(_) => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestEntityTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UnrecognizedClient(_) | Self::InvalidSignature(_) | Self::AccessDenied(_) => {
                StatusCode::FORBIDDEN
            }
            Self::InvalidRequestContent(_) => StatusCode::BAD_REQUEST,
            Self::InvalidRuntime(_) => StatusCode::BAD_GATEWAY,
            Self::ServiceUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            // 503: the server cannot take the write now, and may later. botocore retries a 503
            // with backoff (legacy mode's `service_unavailable` policy, standard mode's transient
            // statuses), which is safe since the failed write changed nothing, and lets a client
            // ride out a disk that is freed meanwhile. Not 507 (Insufficient Storage): botocore
            // does not retry it, and Lambda never answers it; not a 4xx: the request is fine.
            Self::StorageFull => StatusCode::SERVICE_UNAVAILABLE,
            Self::Service(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A 404 for a function the caller cannot see, named as Lambda names it.
    pub fn function_not_found(arn: &str) -> Self {
        Self::NotFound(format!("Function not found: {arn}"))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::RevisionMismatch { .. } => Self::PreconditionFailed,
            StoreError::Conflict(what) => Self::Conflict(format!("{what} already exists")),
            StoreError::NotFound(what) => Self::NotFound(format!("{what} not found")),
            StoreError::StorageFull(source) => {
                tracing::warn!(error = %error_chain(source.as_ref()), "a write found the data dir full");
                Self::StorageFull
            }
            other => {
                tracing::error!(error = %error_chain(&other), "store failure");
                Self::Service("Ember's data store failed; see the server log".into())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let error_type = self.error_type();
        let message = self.to_string();
        let kind = if status.is_server_error() {
            "Service"
        } else {
            "User"
        };
        let mut body = serde_json::json!({ "Type": kind, "message": message });
        let mut retry_after = None;
        if let Self::TooManyRequests {
            retry_after_s,
            reason,
            ..
        } = &self
        {
            body["Reason"] = reason.to_string().into();
            retry_after = Some(retry_after_s.to_string());
        }
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert("x-amzn-ErrorType", HeaderValue::from_static(error_type));
        if matches!(
            self,
            Self::RequestTimeout(_) | Self::RequestEntityTooLarge(_) | Self::HeadersTooLarge(_)
        ) {
            // The rest of the request was not read: the connection cannot carry another one.
            headers.insert("connection", HeaderValue::from_static("close"));
        }
        if let Some(after) = retry_after.and_then(|s| HeaderValue::from_str(&s).ok()) {
            headers.insert("Retry-After", after);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throttled execution (`ember_executor::ExecError::Throttled`, mapped in `invoke.rs`) is
    /// answered as Lambda answers one: 429, `TooManyRequestsException`, its reason, Retry-After.
    #[tokio::test]
    async fn a_throttle_is_a_429_too_many_requests_naming_its_reason() {
        let response = ApiError::TooManyRequests {
            retry_after_s: 1,
            reason: "ConcurrentInvocationLimitExceeded",
            message: "Rate exceeded",
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let header = |name| response.headers()[name].to_str().unwrap().to_owned();
        assert_eq!(header("x-amzn-ErrorType"), "TooManyRequestsException");
        assert_eq!(header("Retry-After"), "1");
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["Reason"], "ConcurrentInvocationLimitExceeded");
        assert_eq!(body["message"], "Rate exceeded");
    }
}
