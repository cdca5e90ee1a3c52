//! The Lambda Runtime API that the agent serves to each container: a per-container state machine
//! ([`RuntimeApi`]) and its HTTP face ([`RuntimeApiServer`]).
//!
//! The state machine knows nothing of HTTP. An invocation is *queued* by [`RuntimeApi::invoke`],
//! *delivered* to the runtime's long poll on `/invocation/next`, and *answered* by the runtime's
//! `/response` or `/error`, by an `/init/error`, or by the agent through [`RuntimeApi::abort`] when
//! it decides the invocation timed out or the runtime died: those verdicts belong to whoever owns
//! the process, not to this module.

mod http;
mod quickack;
mod stream;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ember_protocol::{ExitStatus, Invocation, InvokeOutcome, INIT_TIMEOUT};
use serde_json::json;
use tokio::sync::{oneshot, Notify};
use tracing::{debug, debug_span, Instrument};

pub use http::{router, RuntimeApiServer};
pub use stream::{Credit, ResponseSink, SinkClosed, MAX_STREAMED_RESPONSE_BYTES};

/// The largest response or error document a runtime may post (6 MB).
pub const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;

/// The error type AWS reports when a runtime posts a response over [`MAX_RESPONSE_BYTES`].
pub const RESPONSE_TOO_LARGE_ERROR_TYPE: &str = "Function.ResponseSizeTooLarge";

/// Errors of the Runtime API. Each maps to the status code and AWS error type a runtime would get
/// from Lambda (see the `IntoResponse` impl).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeApiError {
    #[error("invalid request ID {0:?}")]
    InvalidRequestId(String),
    #[error("payload of {size} bytes exceeds the maximum of {limit} bytes")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("invalid state transition: {0}")]
    InvalidStateTransition(&'static str),
    #[error("cannot read the request body")]
    Body(#[source] axum::Error),
    #[error("the Runtime API is shutting down")]
    Closed,
    #[error("cannot bind the Runtime API listener")]
    Bind(#[source] std::io::Error),
}

/// Why the owner of a runtime process fails its in-flight invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    Timeout,
    OutOfMemory,
    Exited(ExitStatus),
}

impl From<Abort> for InvokeOutcome {
    fn from(abort: Abort) -> Self {
        match abort {
            Abort::Timeout => InvokeOutcome::Timeout,
            Abort::OutOfMemory => InvokeOutcome::OutOfMemory,
            Abort::Exited(status) => InvokeOutcome::ExitError(status),
        }
    }
}

/// Where a container's current invocation stands, as [`RuntimeApi::current`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Current {
    /// Queued by [`RuntimeApi::invoke`], waiting for the runtime's next poll of `/next`.
    Queued(String),
    /// Handed to the runtime by `/next`, not answered yet.
    Delivered(String),
}

/// The Runtime API state of one container. Cheap to clone; clones share the state.
#[derive(Debug, Clone)]
pub struct RuntimeApi {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    container_id: String,
    state: Mutex<State>,
    /// Wakes `/next` pollers: an invocation was queued, or the API closed.
    queued: Notify,
    /// Wakes [`RuntimeApi::initialized`] waiters: the init ended (done or failed).
    init_ended: Notify,
    /// Held by `invoke` for the life of an invocation: a container runs one at a time.
    turn: tokio::sync::Mutex<()>,
    /// Called once when the init ends (see [`RuntimeApi::on_init_end`]).
    init_end_hook: Mutex<Option<InitEndHook>>,
    /// What `/restore/next` answers (SnapStart).
    restore: Mutex<Restore>,
    /// Wakes a template's `/restore/next` pollers when the API closes.
    closed: Notify,
}

/// What a container is to SnapStart, for the Runtime API's `/restore/next`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Restore {
    /// An ordinary container: it was never snapshotted, so there is nothing to restore
    /// (`/restore/next` is refused).
    #[default]
    None,
    /// A SnapStart template: its runtime is the snapshot, restored only in the environments
    /// forked from it (`/restore/next` waits until the container ends).
    Template,
    /// An environment forked from a template: `/restore/next` answers at once.
    Restored,
}

/// What [`RuntimeApi::on_init_end`] runs.
struct InitEndHook(Box<dyn FnOnce(InitEnd) + Send>);

impl std::fmt::Debug for InitEndHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InitEndHook")
    }
}

/// How a runtime's init ended, as the init-end hook is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitEnd {
    /// Its first poll of `/next`.
    Polled,
    /// An `/init/error`, or [`RuntimeApi::fail_init`].
    Failed,
}

#[derive(Debug, Default)]
struct State {
    init: Init,
    in_flight: Option<InFlight>,
    closed: bool,
}

#[derive(Debug, Default)]
enum Init {
    /// The runtime has not polled `/next` yet.
    #[default]
    InProgress,
    /// Since its first poll of `/next`.
    Done(Instant),
    Failed {
        error_type: String,
        payload: Bytes,
    },
}

#[derive(Debug)]
struct InFlight {
    request_id: String,
    /// The event, until the runtime's `/next` takes it.
    event: Option<Invocation>,
    /// When it was queued: if the runtime was still in its init then, the event's deadline
    /// moves on by the time the init took (up to [`INIT_TIMEOUT`]) when it is handed out.
    queued_at: Instant,
    reply: oneshot::Sender<InvokeOutcome>,
    /// Where a streamed response goes, for an invocation the host streams, until the runtime's
    /// streamed `/response` takes it.
    sink: Option<ResponseSink>,
    /// A streamed `/response` is under way: no other answer is accepted but its end.
    streaming: bool,
}

impl InFlight {
    /// Whether the runtime is working on this invocation as `request_id`: delivered, unanswered.
    fn is_current(&self, request_id: &str) -> bool {
        self.request_id == request_id && self.event.is_none()
    }
}

impl RuntimeApi {
    pub fn new(container_id: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                container_id: container_id.into(),
                state: Mutex::default(),
                queued: Notify::new(),
                init_ended: Notify::new(),
                turn: tokio::sync::Mutex::new(()),
                init_end_hook: Mutex::new(None),
                restore: Mutex::new(Restore::None),
                closed: Notify::new(),
            }),
        }
    }

    pub fn container_id(&self) -> &str {
        &self.inner.container_id
    }

    /// Sets what the container is to SnapStart (see [`Restore`]).
    pub fn set_restore(&self, restore: Restore) {
        *self
            .inner
            .restore
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = restore;
    }

    /// `/restore/next`: a restored environment's runtime asks whether it may go on after its
    /// restore (awslambdaric, after the before-snapshot hooks and before the after-restore
    /// ones). Resolves at once in a restored environment; in a template, only when the API
    /// closes; refused anywhere else.
    pub async fn restore_next(&self) -> Result<(), RuntimeApiError> {
        let restore = *self
            .inner
            .restore
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match restore {
            Restore::Restored => Ok(()),
            Restore::None => Err(RuntimeApiError::InvalidStateTransition(
                "restore/next outside a SnapStart environment",
            )),
            Restore::Template => loop {
                let closed = self.inner.closed.notified();
                tokio::pin!(closed);
                closed.as_mut().enable();
                if self.lock().closed {
                    return Err(RuntimeApiError::Closed);
                }
                closed.await;
            },
        }
    }

    /// `/restore/error`: an after-restore hook failed; the environment's init fails with it.
    pub fn restore_failed(
        &self,
        error_type: Option<&str>,
        body: Bytes,
    ) -> Result<(), RuntimeApiError> {
        let restore = *self
            .inner
            .restore
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if restore != Restore::Restored {
            return Err(RuntimeApiError::InvalidStateTransition(
                "restore/error outside a restored SnapStart environment",
            ));
        }
        self.init_failed(error_type, body)
    }

    /// Runs `hook` once, when the runtime's init ends: on its first poll of `/next`, before any
    /// event is handed out on that poll and before [`initialized`](Self::initialized) waiters
    /// wake; or when the init fails. At once if the init has ended already. Replaces a hook set
    /// before that has not run.
    pub fn on_init_end(&self, hook: impl FnOnce(InitEnd) + Send + 'static) {
        let state = self.lock();
        let ended = match state.init {
            Init::InProgress => {
                // Set under the state's lock: an end after it finds the hook.
                *self.hook_slot() = Some(InitEndHook(Box::new(hook)));
                return;
            }
            Init::Done(_) => InitEnd::Polled,
            Init::Failed { .. } => InitEnd::Failed,
        };
        drop(state);
        hook(ended);
    }

    /// Runs the init-end hook, if one is set and has not run.
    fn init_ended(&self, end: InitEnd) {
        let hook = self.hook_slot().take();
        if let Some(InitEndHook(hook)) = hook {
            hook(end);
        }
        self.inner.init_ended.notify_waiters();
    }

    fn hook_slot(&self) -> MutexGuard<'_, Option<InitEndHook>> {
        // Taken or set whole: a panicking holder cannot tear it.
        self.inner
            .init_end_hook
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// When the runtime first polled `/next`, i.e. finished its init.
    pub fn initialized_at(&self) -> Option<Instant> {
        match self.lock().init {
            Init::Done(at) => Some(at),
            Init::InProgress | Init::Failed { .. } => None,
        }
    }

    /// Resolves once the runtime's init has ended, done or failed (at once if it has).
    pub async fn initialized(&self) {
        loop {
            let ended = self.inner.init_ended.notified();
            tokio::pin!(ended);
            // Register before looking, so an end between the look and the await is kept.
            ended.as_mut().enable();
            if !matches!(self.lock().init, Init::InProgress) {
                return;
            }
            ended.await;
        }
    }

    /// The error the runtime's init failed with, if it did: `(error_type, payload)`.
    pub fn init_error(&self) -> Option<(String, Bytes)> {
        match &self.lock().init {
            Init::Failed {
                error_type,
                payload,
            } => Some((error_type.clone(), payload.clone())),
            Init::InProgress | Init::Done(_) => None,
        }
    }

    /// The invocation in flight, by request id, if any (an invocation waiting for its turn
    /// behind it is not in flight yet).
    pub fn current(&self) -> Option<Current> {
        self.lock().in_flight.as_ref().map(|f| match f.event {
            Some(_) => Current::Queued(f.request_id.clone()),
            None => Current::Delivered(f.request_id.clone()),
        })
    }

    /// Fails the runtime's init on its behalf, as when its process could not even be started:
    /// every invocation then resolves with this [`InvokeOutcome::InitError`]. Returns `false`
    /// (and changes nothing) when the init already ended.
    pub fn fail_init(&self, error_type: &str, payload: Bytes) -> bool {
        self.init_failed(Some(error_type), payload).is_ok()
    }

    /// Runs one invocation: queues it for the runtime's next poll and resolves when the runtime
    /// answers, reports an init error, or [`abort`](Self::abort) is called.
    ///
    /// Invocations on one container run one after the other. Dropping the future (say, on a
    /// deadline) withdraws the invocation; a late answer from the runtime then gets a 400. Once the
    /// runtime has failed its init, every invocation resolves at once with that init error. Once
    /// the API is [closed](Self::close), with an [`InvokeOutcome::ExitError`].
    pub async fn invoke(&self, invocation: Invocation) -> InvokeOutcome {
        self.invoke_with(invocation, None).await
    }

    /// [`RuntimeApi::invoke`], with a response the runtime streams forwarded to `sink` as it
    /// comes (then the outcome's `Ok` payload is empty); without a sink, a streamed response is
    /// buffered like any other.
    pub async fn invoke_with(
        &self,
        invocation: Invocation,
        sink: Option<ResponseSink>,
    ) -> InvokeOutcome {
        let span = debug_span!(
            "invoke",
            container_id = %self.inner.container_id,
            request_id = %invocation.request_id
        );
        async move {
            let _turn = self.inner.turn.lock().await;
            let request_id = invocation.request_id.clone();
            let (reply, outcome) = oneshot::channel();
            {
                let mut state = self.lock();
                if let Init::Failed {
                    error_type,
                    payload,
                } = &state.init
                {
                    return InvokeOutcome::InitError {
                        error_type: error_type.clone(),
                        payload: payload.clone(),
                    };
                }
                if state.closed {
                    return InvokeOutcome::ExitError(ExitStatus::default());
                }
                state.in_flight = Some(InFlight {
                    request_id: request_id.clone(),
                    event: Some(invocation),
                    queued_at: Instant::now(),
                    reply,
                    sink,
                    streaming: false,
                });
            }
            self.inner.queued.notify_waiters();
            debug!("queued");
            let _withdraw = WithdrawOnDrop {
                api: self,
                request_id: &request_id,
            };
            // The sender is only dropped unanswered when the API closes.
            outcome
                .await
                .unwrap_or(InvokeOutcome::ExitError(ExitStatus::default()))
        }
        .instrument(span)
        .await
    }

    /// Fails the in-flight invocation, if any. Returns whether there was one.
    pub fn abort(&self, reason: Abort) -> bool {
        let in_flight = self.lock().in_flight.take();
        match in_flight {
            Some(in_flight) => {
                debug!(
                    container_id = %self.inner.container_id,
                    request_id = %in_flight.request_id,
                    ?reason,
                    "invocation aborted"
                );
                let _ = in_flight.reply.send(reason.into());
                true
            }
            None => false,
        }
    }

    /// Stops serving: pending and later `/next` polls fail, the in-flight invocation (if any) is
    /// withdrawn.
    pub fn close(&self) {
        {
            let mut state = self.lock();
            state.closed = true;
            state.in_flight = None;
        }
        self.inner.queued.notify_waiters();
        self.inner.closed.notify_waiters();
    }

    /// `GET /invocation/next`: waits, without limit, for an invocation and hands it out.
    async fn next_invocation(&self) -> Result<Invocation, RuntimeApiError> {
        loop {
            let queued = self.inner.queued.notified();
            tokio::pin!(queued);
            // Register before looking, so a notification between the look and the await is kept.
            queued.as_mut().enable();
            let (event, init_ended) = {
                let mut state = self.lock();
                if state.closed {
                    return Err(RuntimeApiError::Closed);
                }
                let mut init_spent = Duration::ZERO;
                let mut init_ended = false;
                if let Init::InProgress = state.init {
                    let now = Instant::now();
                    state.init = Init::Done(now);
                    init_ended = true;
                    debug!(container_id = %self.inner.container_id, "runtime initialized");
                    if let Some(in_flight) = &state.in_flight {
                        init_spent = now.saturating_duration_since(in_flight.queued_at);
                    }
                }
                let event = match &mut state.in_flight {
                    Some(in_flight) => {
                        let event = in_flight.event.take().map(|mut event| {
                            // The init's time was not the function's: see
                            // `Invocation::deadline_ms`.
                            event.deadline_ms += millis(init_spent.min(INIT_TIMEOUT));
                            event
                        });
                        Some(event.ok_or(RuntimeApiError::InvalidStateTransition(
                            "polling /next before answering the current invocation",
                        )))
                    }
                    None => None,
                };
                (event, init_ended)
            };
            // Outside the lock, and before the event leaves: the hook may write to the kernel,
            // and what it changes must hold for the whole invocation.
            if init_ended {
                self.init_ended(InitEnd::Polled);
            }
            if let Some(event) = event {
                return event;
            }
            queued.await;
        }
    }

    /// Checks that `request_id` names the invocation the runtime is working on (and is not
    /// streaming its response).
    fn check_current(&self, request_id: &str) -> Result<(), RuntimeApiError> {
        if matches!(&self.lock().in_flight, Some(f) if f.is_current(request_id) && !f.streaming) {
            Ok(())
        } else {
            Err(RuntimeApiError::InvalidRequestId(request_id.to_owned()))
        }
    }

    /// Resolves the current invocation, which must be `request_id`.
    fn answer(&self, request_id: &str, outcome: InvokeOutcome) -> Result<(), RuntimeApiError> {
        let in_flight = self
            .lock()
            .in_flight
            .take_if(|f| f.is_current(request_id))
            .ok_or_else(|| RuntimeApiError::InvalidRequestId(request_id.to_owned()))?;
        debug!(
            container_id = %self.inner.container_id,
            request_id,
            outcome = outcome_name(&outcome),
            "runtime answered"
        );
        // The invoker may have given up (deadline); the runtime's answer was still valid.
        let _ = in_flight.reply.send(outcome);
        Ok(())
    }

    /// A streamed `/response` of `request_id` begins: the invocation's sink, if the host streams
    /// it (else the response is buffered).
    fn begin_stream(&self, request_id: &str) -> Result<Option<ResponseSink>, RuntimeApiError> {
        let mut state = self.lock();
        match &mut state.in_flight {
            Some(f) if f.is_current(request_id) && !f.streaming => {
                f.streaming = true;
                Ok(f.sink.take())
            }
            _ => Err(RuntimeApiError::InvalidRequestId(request_id.to_owned())),
        }
    }

    /// `POST /invocation/{id}/response`.
    fn respond(&self, request_id: &str, payload: Bytes) -> Result<(), RuntimeApiError> {
        self.answer(request_id, InvokeOutcome::Ok { payload })
    }

    /// `POST /invocation/{id}/error`.
    fn fail(
        &self,
        request_id: &str,
        error_type: Option<&str>,
        body: Bytes,
    ) -> Result<(), RuntimeApiError> {
        let (error_type, payload) = error_document(error_type, body, "Unhandled");
        self.answer(
            request_id,
            InvokeOutcome::FunctionError {
                error_type,
                payload,
            },
        )
    }

    /// A response or error document over the limit: AWS fails the invocation with a function error
    /// of its own, then tells the runtime 413.
    fn reject_oversize(&self, request_id: &str, size: usize) -> RuntimeApiError {
        self.reject_oversize_of(request_id, size, MAX_RESPONSE_BYTES)
    }

    /// [`RuntimeApi::reject_oversize`] against `limit` (a streamed response's is larger); for a
    /// streamed response, `size` is what was read when it went past the limit.
    fn reject_oversize_of(&self, request_id: &str, size: usize, limit: usize) -> RuntimeApiError {
        let message = format!(
            "Response payload size ({size} bytes) exceeded maximum allowed payload size \
             ({limit} bytes)."
        );
        let payload = json!({
            "errorMessage": message,
            "errorType": RESPONSE_TOO_LARGE_ERROR_TYPE,
        });
        let outcome = InvokeOutcome::FunctionError {
            error_type: RESPONSE_TOO_LARGE_ERROR_TYPE.to_owned(),
            payload: Bytes::from(payload.to_string()),
        };
        match self.answer(request_id, outcome) {
            Ok(()) => RuntimeApiError::PayloadTooLarge { size, limit },
            Err(err) => err,
        }
    }

    /// `POST /init/error`: accepted once, before the runtime's first `/next`.
    fn init_failed(&self, error_type: Option<&str>, body: Bytes) -> Result<(), RuntimeApiError> {
        let (error_type, payload) = error_document(error_type, body, "Runtime.Unknown");
        let mut state = self.lock();
        if !matches!(state.init, Init::InProgress) {
            return Err(RuntimeApiError::InvalidStateTransition(
                "reporting an init error after init",
            ));
        }
        debug!(container_id = %self.inner.container_id, %error_type, "runtime init failed");
        if let Some(in_flight) = state.in_flight.take() {
            let _ = in_flight.reply.send(InvokeOutcome::InitError {
                error_type: error_type.clone(),
                payload: payload.clone(),
            });
        }
        state.init = Init::Failed {
            error_type,
            payload,
        };
        drop(state);
        self.init_ended(InitEnd::Failed);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves `State` consistent; a panic inside one cannot tear it.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Withdraws an invocation whose `invoke` future ended, so that a late answer is refused.
struct WithdrawOnDrop<'a> {
    api: &'a RuntimeApi,
    request_id: &'a str,
}

impl Drop for WithdrawOnDrop<'_> {
    fn drop(&mut self) {
        let mut state = self.api.lock();
        if matches!(&state.in_flight, Some(f) if f.request_id == self.request_id) {
            state.in_flight = None;
            debug!("invocation withdrawn");
        }
    }
}

/// Turns what a runtime posted to an error endpoint into an error type and an error document.
///
/// The type is the `Lambda-Runtime-Function-Error-Type` header, else the body's `errorType`, else
/// `default`. An empty body becomes `{"errorMessage": "", "errorType": <type>}`, as Lambda builds
/// one from the header when the runtime sends none.
fn error_document(header: Option<&str>, body: Bytes, default: &str) -> (String, Bytes) {
    let from_body = || {
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()?
            .get("errorType")?
            .as_str()
            .map(str::to_owned)
    };
    let error_type = header
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .or_else(from_body)
        .unwrap_or_else(|| default.to_owned());
    let payload = if body.is_empty() {
        Bytes::from(json!({"errorMessage": "", "errorType": error_type}).to_string())
    } else {
        body
    };
    (error_type, payload)
}

fn outcome_name(outcome: &InvokeOutcome) -> &'static str {
    match outcome {
        InvokeOutcome::Ok { .. } => "ok",
        InvokeOutcome::FunctionError { .. } => "function_error",
        InvokeOutcome::InitError { .. } => "init_error",
        InvokeOutcome::Timeout => "timeout",
        InvokeOutcome::OutOfMemory => "out_of_memory",
        InvokeOutcome::ExitError(_) => "exit_error",
    }
}

/// Whole milliseconds of `duration`, saturating.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn invocation(request_id: &str) -> Invocation {
        Invocation {
            request_id: request_id.into(),
            payload: Bytes::from_static(b"{}"),
            deadline_ms: 0,
            invoked_function_arn: "arn".into(),
            trace_id: None,
            client_context: None,
            cognito_identity: None,
        }
    }

    #[test]
    fn error_documents() {
        let cases: [(Option<&str>, &str, &str, &str); 5] = [
            (
                Some("Unhandled"),
                r#"{"errorType":"ValueError"}"#,
                "Unhandled",
                r#"{"errorType":"ValueError"}"#,
            ),
            (
                None,
                r#"{"errorType":"ValueError"}"#,
                "ValueError",
                r#"{"errorType":"ValueError"}"#,
            ),
            (Some(""), "not json", "Dflt", "not json"),
            (None, r#"{"errorType":7}"#, "Dflt", r#"{"errorType":7}"#),
            (
                Some("Runtime.X"),
                "",
                "Runtime.X",
                r#"{"errorMessage":"","errorType":"Runtime.X"}"#,
            ),
        ];
        for (header, body, want_type, want_payload) in cases {
            let (error_type, payload) = error_document(header, Bytes::from(body), "Dflt");
            assert_eq!(
                (error_type.as_str(), &payload[..]),
                (want_type, want_payload.as_bytes())
            );
        }
    }

    #[tokio::test]
    async fn abort_fails_the_invocation_and_refuses_late_answers() {
        let api = RuntimeApi::new("c1");
        let invoke = tokio::spawn({
            let api = api.clone();
            async move { api.invoke(invocation("r1")).await }
        });
        let event = api.next_invocation().await.unwrap();
        assert_eq!(event.request_id, "r1");
        assert!(api.abort(Abort::OutOfMemory));
        assert_eq!(invoke.await.unwrap(), InvokeOutcome::OutOfMemory);
        assert!(matches!(
            api.respond("r1", Bytes::new()),
            Err(RuntimeApiError::InvalidRequestId(_))
        ));
        assert!(!api.abort(Abort::Timeout), "nothing left to abort");
    }

    #[tokio::test]
    async fn an_event_that_waited_for_the_init_gets_that_time_back() {
        let api = RuntimeApi::new("c1");
        let at = |request_id, deadline_ms| Invocation {
            deadline_ms,
            ..invocation(request_id)
        };
        let first = tokio::spawn({
            let api = api.clone();
            async move { api.invoke(at("r1", 1_000)).await }
        });
        // The runtime is still in its init for a while after the event is queued.
        tokio::time::sleep(Duration::from_millis(60)).await;
        let event = api.next_invocation().await.unwrap();
        assert!(
            (1_060..1_000 + 5_000).contains(&event.deadline_ms),
            "moved on by the init's time: {}",
            event.deadline_ms
        );
        api.respond("r1", Bytes::new()).unwrap();
        first.await.unwrap();
        // Once initialized, an event's deadline is the host's, however long it was queued.
        let second = tokio::spawn({
            let api = api.clone();
            async move { api.invoke(at("r2", 2_000)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(api.next_invocation().await.unwrap().deadline_ms, 2_000);
        api.respond("r2", Bytes::new()).unwrap();
        second.await.unwrap();
    }

    #[tokio::test]
    async fn initialized_waits_for_the_first_poll_or_an_init_error() {
        let polled = RuntimeApi::new("c1");
        let waiter = tokio::spawn({
            let api = polled.clone();
            async move { api.initialized().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the init has not ended");
        let _ = tokio::time::timeout(Duration::from_millis(10), polled.next_invocation()).await;
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the first poll ends the init")
            .unwrap();

        let failed = RuntimeApi::new("c2");
        let waiter = tokio::spawn({
            let api = failed.clone();
            async move { api.initialized().await }
        });
        failed.init_failed(None, Bytes::new()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("an init error ends the init")
            .unwrap();
        // Already ended: resolves at once.
        tokio::time::timeout(Duration::from_millis(100), failed.initialized())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_init_end_hook_runs_once_before_the_first_event_leaves() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let api = RuntimeApi::new("c1");
        let runs = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(None));
        api.on_init_end({
            let (api, runs, seen) = (api.clone(), runs.clone(), seen.clone());
            move |end| {
                runs.fetch_add(1, Ordering::SeqCst);
                // Not yet returned to the runtime: the hook runs before the poll is answered.
                *seen.lock().unwrap() = Some((end, api.current()));
            }
        });
        let invoke = tokio::spawn({
            let api = api.clone();
            async move { api.invoke(invocation("r1")).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 0, "the init has not ended");
        let event = api.next_invocation().await.unwrap();
        assert_eq!(event.request_id, "r1");
        assert_eq!(
            *seen.lock().unwrap(),
            Some((InitEnd::Polled, Some(Current::Delivered("r1".into()))))
        );
        api.respond("r1", Bytes::new()).unwrap();
        invoke.await.unwrap();
        let _ = tokio::time::timeout(Duration::from_millis(10), api.next_invocation()).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "once");
        // Set after the init ended: it runs at once.
        let late = Arc::new(Mutex::new(None));
        api.on_init_end({
            let late = late.clone();
            move |end| *late.lock().unwrap() = Some(end)
        });
        assert_eq!(*late.lock().unwrap(), Some(InitEnd::Polled));

        let failed = RuntimeApi::new("c2");
        let ended = Arc::new(Mutex::new(None));
        failed.on_init_end({
            let ended = ended.clone();
            move |end| *ended.lock().unwrap() = Some(end)
        });
        failed.init_failed(None, Bytes::new()).unwrap();
        assert_eq!(*ended.lock().unwrap(), Some(InitEnd::Failed));
    }

    #[tokio::test]
    async fn a_dropped_invoke_withdraws_its_invocation() {
        let api = RuntimeApi::new("c1");
        let timed_out =
            tokio::time::timeout(Duration::from_millis(20), api.invoke(invocation("r1"))).await;
        assert!(timed_out.is_err());
        // Nothing is left for the runtime to pick up, and the id is no longer valid.
        assert!(api.lock().in_flight.is_none());
        assert!(api.check_current("r1").is_err());
    }

    #[tokio::test]
    async fn polling_next_with_an_unanswered_invocation_is_refused() {
        let api = RuntimeApi::new("c1");
        let _invoke = tokio::spawn({
            let api = api.clone();
            async move { api.invoke(invocation("r1")).await }
        });
        api.next_invocation().await.unwrap();
        assert!(matches!(
            api.next_invocation().await,
            Err(RuntimeApiError::InvalidStateTransition(_))
        ));
    }

    #[tokio::test]
    async fn close_ends_polls_and_invocations() {
        let api = RuntimeApi::new("c1");
        let poll = tokio::spawn({
            let api = api.clone();
            async move { api.next_invocation().await }
        });
        tokio::task::yield_now().await;
        api.close();
        assert!(matches!(poll.await.unwrap(), Err(RuntimeApiError::Closed)));
        assert_eq!(
            api.invoke(invocation("r1")).await,
            InvokeOutcome::ExitError(ExitStatus::default())
        );
    }
}
