//! The one place where Ember's failures (its own, the store's, the executor's) become HTTP statuses
//! and AWS error shapes.
//!
//! botocore's rest-json parser reads the error code from the `x-amzn-ErrorType` header and the
//! message from the body's `message` (or `Message`); Lambda's own bodies also carry `Type`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ember_executor::ExecError;
use ember_stdx::error_chain;
use ember_store::StoreError;

/// An error answered to an API caller.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidParameter(String),
    /// A value outside the model's constraints that Lambda's request validation refuses before
    /// its own checks (`1 validation error detected: …`), answered as Lambda answers it.
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    Conflict(String),
    #[error("The Revision Id provided does not match the latest Revision Id. Call the GetFunction/GetAlias API to retrieve the latest Revision Id")]
    PreconditionFailed,
    #[error("The Revision Id provided does not match the latest Revision Id. Call the GetPolicy API to retrieve the latest Revision Id")]
    PolicyPreconditionFailed,
    #[error("{0}")]
    PolicyLengthExceeded(String),
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
    /// A session credential that lapsed (AWS's `ExpiredTokenException`, which botocore treats
    /// as a reason to refresh its credentials).
    #[error("{0}")]
    ExpiredToken(String),
    #[error("Unknown operation {method} {path}")]
    UnknownOperation { method: String, path: String },
    /// An operation of the Lambda API that Ember knows and does not implement (or a form of it
    /// it does not): answered as an unknown operation is, saying why.
    #[error("{operation} is not supported by Ember: {reason}")]
    Unsupported {
        operation: &'static str,
        reason: &'static str,
    },
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
    #[error("{0}")]
    ProvisionedConcurrencyConfigNotFound(String),
    /// A SnapStart version's `after restore` runtime hook failed (`SnapStartException`, 400).
    #[error("{0}")]
    SnapStart(String),
    /// A SnapStart version's snapshot is not taken yet (`SnapStartNotReadyException`, 409).
    #[error("{0}")]
    SnapStartNotReady(String),
    /// A SnapStart version's snapshot was not restored in time (`SnapStartTimeoutException`,
    /// 408).
    #[error("{0}")]
    SnapStartTimeout(String),
}

impl ApiError {
    /// The AWS error type, as `x-amzn-ErrorType` and the body's `Type`-sibling fields carry it.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "ResourceNotFoundException",
            Self::ProvisionedConcurrencyConfigNotFound(_) => {
                "ProvisionedConcurrencyConfigNotFoundException"
            }
            Self::InvalidParameter(_) => "InvalidParameterValueException",
            Self::Validation(_) => "ValidationException",
            Self::Conflict(_) => "ResourceConflictException",
            Self::PreconditionFailed | Self::PolicyPreconditionFailed => {
                "PreconditionFailedException"
            }
            Self::PolicyLengthExceeded(_) => "PolicyLengthExceededException",
            Self::TooLarge(_) => "RequestTooLargeException",
            Self::TooManyRequests { .. } => "TooManyRequestsException",
            Self::UnrecognizedClient(_) => "UnrecognizedClientException",
            Self::InvalidSignature(_) => "InvalidSignatureException",
            Self::AccessDenied(_) => "AccessDeniedException",
            Self::ExpiredToken(_) => "ExpiredTokenException",
            Self::UnknownOperation { .. } | Self::Unsupported { .. } => "UnknownOperationException",
            Self::MethodNotAllowed { .. } => "MethodNotAllowedException",
            Self::RequestEntityTooLarge(_) => "RequestEntityTooLargeException",
            Self::HeadersTooLarge(_) => "RequestHeaderFieldsTooLargeException",
            Self::RequestTimeout(_) => "RequestTimeoutException",
            Self::InvalidRequestContent(_) => "InvalidRequestContentException",
            Self::InvalidRuntime(_) => "InvalidRuntimeException",
            Self::SnapStart(_) => "SnapStartException",
            Self::SnapStartNotReady(_) => "SnapStartNotReadyException",
            Self::SnapStartTimeout(_) => "SnapStartTimeoutException",
            Self::ServiceUnavailable(_) | Self::StorageFull | Self::Service(_) => {
                "ServiceException"
            }
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_)
            | Self::UnknownOperation { .. }
            | Self::Unsupported { .. }
            | Self::ProvisionedConcurrencyConfigNotFound(_) => StatusCode::NOT_FOUND,
            Self::InvalidParameter(_) | Self::Validation(_) | Self::SnapStart(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::SnapStartNotReady(_) => StatusCode::CONFLICT,
            Self::SnapStartTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestEntityTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PreconditionFailed | Self::PolicyPreconditionFailed => {
                StatusCode::PRECONDITION_FAILED
            }
            Self::PolicyLengthExceeded(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UnrecognizedClient(_)
            | Self::InvalidSignature(_)
            | Self::AccessDenied(_)
            | Self::ExpiredToken(_) => StatusCode::FORBIDDEN,
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

    /// A 404 for an alias that does not exist (`arn` is the alias's ARN), as UpdateAlias and
    /// Invoke answer it.
    pub fn alias_not_found(arn: &str) -> Self {
        Self::NotFound(format!("Alias not found: {arn}"))
    }

    /// GetAlias's 404 for an alias that does not exist (Lambda words it differently).
    pub fn alias_not_found_on_get(arn: &str) -> Self {
        Self::NotFound(format!("Cannot find alias arn: {arn}"))
    }

    /// A 409 for an alias name already taken (`arn` is the alias's ARN).
    pub fn alias_exists(arn: &str) -> Self {
        Self::Conflict(format!("Alias already exists: {arn}"))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::RevisionMismatch { .. } => Self::PreconditionFailed,
            StoreError::Conflict(what) => Self::Conflict(format!("{what} already exists")),
            StoreError::NotFound(what) => Self::NotFound(format!("{what} not found")),
            StoreError::LimitExceeded(message) => Self::InvalidParameter(message),
            StoreError::InUse(what) => Self::Conflict(what),
            StoreError::CodeMismatch { expected, current } => Self::InvalidParameter(format!(
                "CodeSHA256 ({}) is different from current CodeSHA256 in $LATEST ({}). Please \
                 try again with the CodeSHA256 in $LATEST.",
                hex_as_base64(&expected),
                hex_as_base64(&current)
            )),
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

/// A hex sha256 as the API shows it (base64), or the text as it is if it is not hex.
fn hex_as_base64(text: &str) -> String {
    use base64::Engine as _;
    match hex::decode(text) {
        Ok(bytes) => base64::engine::general_purpose::STANDARD.encode(bytes),
        Err(_) => text.to_owned(),
    }
}

impl From<ExecError> for ApiError {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::Throttled { reason } => Self::TooManyRequests {
                retry_after_s: 1,
                reason: reason.as_str(),
                message: reason.message(),
            },
            ExecError::RuntimeUnavailable(message) => Self::InvalidRuntime(message),
            ExecError::NoRuntime(_) => Self::InvalidRuntime(e.to_string()),
            ExecError::ShuttingDown => Self::ServiceUnavailable(e.to_string()),
            // A refusal of the VM's agent is a 500 `ServiceException` with the agent's reason, as
            // Lambda answers its own failures to set an environment up: the request passed
            // every check the API makes, so the fault is the service's, not the caller's (no
            // 4xx), and the function never ran (no 200 with `X-Amz-Function-Error`). botocore
            // retries a 500, and the retry finds the VM still in service. The reason is surfaced
            // because on a self-hosted server the caller is often its operator.
            ExecError::AgentRefused(_)
            | ExecError::Code(_)
            | ExecError::Concurrency(_)
            | ExecError::Boot(_)
            | ExecError::Vm(_) => {
                tracing::error!(error = %error_chain(&e), "invocation failed");
                Self::Service(error_chain(&e))
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

/// A function URL's failure, answered to its HTTP client (not a Lambda API caller): the
/// status Lambda documents for function URLs, `x-amzn-ErrorType`, and a `{"Message"}` body.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// No URL has this id.
    #[error("Not Found")]
    NotFound,
    /// The caller may not invoke the URL: an `AWS_IAM` URL's request unsigned, badly signed,
    /// or signed by an account without a grant; a `NONE` URL without the resource policy
    /// statement that makes it public.
    #[error("Forbidden")]
    Forbidden,
    /// The request's body is over Lambda's 6 MB.
    #[error("Request must be smaller than {0} bytes for the InvokeFunctionUrl operation")]
    RequestTooLarge(usize),
    /// The request's body stopped arriving.
    #[error("Request Timeout")]
    RequestTimeout,
    /// The function (or the account) has no concurrency left, or the host no room; the
    /// reason, as Invoke's `Reason` says it, goes to the server's log.
    #[error("Rate Exceeded.")]
    Throttled(&'static str),
    /// The function failed (an error, a timeout, out of memory), or returned what cannot be
    /// an HTTP response, or more than 6 MB.
    #[error("Internal Server Error")]
    BadGateway,
    /// Ember failed to run the function.
    #[error("{0}")]
    Service(String),
    /// The server runs no functions.
    #[error("{0}")]
    Unavailable(String),
}

impl UrlError {
    fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::RequestTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::Service(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_type(&self) -> &'static str {
        match self {
            Self::NotFound => "ResourceNotFoundException",
            Self::Forbidden => "AccessDeniedException",
            Self::RequestTooLarge(_) => "RequestEntityTooLargeException",
            Self::RequestTimeout => "RequestTimeoutException",
            Self::Throttled(_) => "TooManyRequestsException",
            Self::BadGateway => "BadGatewayException",
            Self::Service(_) => "ServiceException",
            Self::Unavailable(_) => "ServiceUnavailableException",
        }
    }
}

impl From<ExecError> for UrlError {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::Throttled { reason } => {
                tracing::debug!(
                    reason = reason.as_str(),
                    "function URL invocation throttled"
                );
                Self::Throttled(reason.as_str())
            }
            ExecError::ShuttingDown => Self::Unavailable(e.to_string()),
            other => {
                tracing::error!(error = %error_chain(&other), "function URL invocation failed");
                Self::Service(error_chain(&other))
            }
        }
    }
}

impl From<StoreError> for UrlError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %error_chain(&e), "function URL: the store failed");
        Self::Service("Ember's store failed".into())
    }
}

impl IntoResponse for UrlError {
    fn into_response(self) -> Response {
        let status = self.status();
        let error_type = self.error_type();
        let body = serde_json::json!({ "Message": self.to_string() });
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert("x-amzn-ErrorType", HeaderValue::from_static(error_type));
        if matches!(self, Self::RequestTooLarge(_) | Self::RequestTimeout) {
            // The rest of the request was not read: the connection cannot carry another one.
            headers.insert("connection", HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use ember_executor::{ThrottleReason, VmError};

    /// What a caller receives for `err`: status, `x-amzn-ErrorType`, the body's `message`.
    async fn answered(err: ExecError) -> (StatusCode, String, String) {
        let response = ApiError::from(err).into_response();
        let status = response.status();
        let error_type = response.headers()["x-amzn-ErrorType"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        (
            status,
            error_type,
            body["message"].as_str().unwrap().to_owned(),
        )
    }

    /// A throttled execution is answered as Lambda answers one: 429, `TooManyRequestsException`,
    /// its reason, Retry-After.
    #[tokio::test]
    async fn a_throttle_is_a_429_too_many_requests_naming_its_reason() {
        let response = ApiError::from(ExecError::Throttled {
            reason: ThrottleReason::ConcurrentInvocationLimitExceeded,
        })
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

    /// Every failure of an execution, as the caller sees it: the status and AWS error type
    /// Lambda answers for its kind, and a message that names the cause.
    #[tokio::test]
    async fn each_execution_failure_has_its_status_and_aws_error_type() {
        let table: Vec<(ExecError, StatusCode, &str, &str)> = vec![
            (
                ExecError::Throttled {
                    reason: ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded,
                },
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequestsException",
                "Rate exceeded",
            ),
            (
                ExecError::Throttled {
                    reason: ThrottleReason::AccountMemoryLimitExceeded,
                },
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequestsException",
                "--account-memory-mb",
            ),
            (
                ExecError::RuntimeUnavailable("python3.12 cannot be provisioned".into()),
                StatusCode::BAD_GATEWAY,
                "InvalidRuntimeException",
                "python3.12 cannot be provisioned",
            ),
            (
                ExecError::NoRuntime("img".into()),
                StatusCode::BAD_GATEWAY,
                "InvalidRuntimeException",
                "function img has no runtime",
            ),
            (
                ExecError::Code(StoreError::NotFound("code package".into())),
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                "cannot read the function's code: code package not found",
            ),
            (
                ExecError::Boot(VmError::InvalidSpec("no memory")),
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                "cannot start a VM: invalid VM spec: no memory",
            ),
            (
                ExecError::Vm("connection closed".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                "the VM running this invocation failed: connection closed",
            ),
            (
                ExecError::AgentRefused("no space left in /tmp".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                "the VM's agent refused the request: no space left in /tmp",
            ),
            (
                ExecError::ShuttingDown,
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceException",
                "shutting down",
            ),
        ];
        for (err, status, error_type, message) in table {
            let case = format!("{err:?}");
            let (got_status, got_type, got_message) = answered(err).await;
            assert_eq!(
                (got_status, got_type.as_str()),
                (status, error_type),
                "{case}"
            );
            assert!(
                got_message.contains(message),
                "{case}: {got_message:?} does not say {message:?}"
            );
        }
    }
}
