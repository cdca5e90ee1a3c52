//! Invocations whose response is a stream: [`Executor::invoke_stream`] and [`ResponseStream`],
//! what `InvokeWithResponseStream` and a `RESPONSE_STREAM` function URL consume.
//!
//! The execution is an ordinary one (concurrency, placement, the sizer, START/END/REPORT and
//! the log, the container released as reusable or not), run by a task of its own, which hands
//! the response's chunks on as the agent forwards them (`Request::InvokeStream`). The chunks
//! travel through a channel of [`CHUNKS_QUEUED`] chunks to the consumer, and the agent is
//! credited only for chunks handed on, so a slow consumer slows the function (as in Lambda)
//! and a 20 MiB response never sits whole in the server: at most the agent's window
//! (`ember_protocol::STREAM_WINDOW`) plus this queue, each chunk at most
//! `ember_protocol::MAX_STREAM_CHUNK`.

use std::time::Instant;

use bytes::Bytes;
use ember_protocol::StreamPart;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug_span, Instrument};

use crate::report::Verdict;
use crate::StartKind;
use crate::{agent_error, epoch_ms, ExecError, Executor, FnKey, InvokeRequest, InvokeResponse};

/// Chunks queued between the execution and its consumer.
const CHUNKS_QUEUED: usize = 4;

/// A running invocation's response, as a stream of chunks and then how the invocation ended.
///
/// A runtime that streams its response (`lambda_runtime::streaming`, Node.js's
/// `streamifyResponse`) has its bytes handed on as it writes them; a runtime that answers with a
/// buffered response (awslambdaric) has its whole payload handed on as one chunk at its end.
/// A function error is not a chunk: it is in [`ResponseStream::finish`]'s answer
/// ([`Verdict::Unhandled`], the error document as its payload), after any chunk the function
/// streamed before failing.
///
/// Dropping it before its end is allowed (the client went away): the invocation runs on, its
/// remaining chunks discarded, and ends as any other (log, REPORT, the container reused).
#[derive(Debug)]
pub struct ResponseStream {
    /// How the execution found its container.
    pub start: StartKind,
    /// The version that ran (`X-Amz-Executed-Version`).
    pub executed_version: String,
    /// The `Content-Type` the runtime streamed its response with; `None` for a buffered
    /// response.
    pub content_type: Option<String>,
    /// Whether the runtime streamed its response (else it was buffered: one chunk at the end).
    pub streamed: bool,
    chunks: mpsc::Receiver<Bytes>,
    end: oneshot::Receiver<Result<InvokeResponse, ExecError>>,
}

impl ResponseStream {
    /// The next chunk of the response, as soon as the function has written it; `None` once
    /// the response is over.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        self.chunks.recv().await
    }

    /// How the invocation ended, once every chunk has been read (chunks not read are
    /// discarded): the verdict (a function error's type, the error document as the payload),
    /// the log (START to REPORT) and the agent's measurements. For a response that was
    /// streamed, the payload is empty; for a buffered one, it is the chunk already handed on.
    /// An error is a failure of the environment after the response began (the VM failed).
    pub async fn finish(self) -> Result<InvokeResponse, ExecError> {
        drop(self.chunks);
        self.end.await.unwrap_or(Err(ExecError::ShuttingDown))
    }
}

/// What the consumer learns when the response begins.
struct Began {
    start: StartKind,
    content_type: Option<String>,
    streamed: bool,
}

impl Executor {
    /// Starts an execution whose response is a stream and returns once the response begins (the
    /// runtime's first streamed bytes, or its whole answer when it does not stream): a failure
    /// before that (a throttle, no runtime, a VM that cannot boot) is this call's error, as for
    /// [`Executor::invoke`].
    pub async fn invoke_stream(&self, request: InvokeRequest) -> Result<ResponseStream, ExecError> {
        let (began_tx, began) = oneshot::channel();
        let (chunks_tx, chunks) = mpsc::channel(CHUNKS_QUEUED);
        let (end_tx, end) = oneshot::channel();
        let executed_version = request.function.version.clone();
        let span = debug_span!(
            "invoke",
            function = %request.function.name,
            request_id = %request.request_id
        );
        let this = self.clone();
        tokio::spawn(
            async move {
                let mut began_tx = Some(began_tx);
                let ended = this.run_stream(request, &mut began_tx, chunks_tx).await;
                match (began_tx, ended) {
                    // Failed before the response began: the caller's error.
                    (Some(began_tx), Err(err)) => {
                        let _ = began_tx.send(Err(err));
                    }
                    (_, ended) => {
                        let _ = end_tx.send(ended);
                    }
                }
            }
            .instrument(span),
        );
        let began = began.await.unwrap_or(Err(ExecError::ShuttingDown))?;
        Ok(ResponseStream {
            start: began.start,
            executed_version,
            content_type: began.content_type,
            streamed: began.streamed,
            chunks,
            end,
        })
    }

    /// The execution's task: see the module docs. Tells `began` when the response begins (it is
    /// left `Some` only when the execution failed before).
    async fn run_stream(
        &self,
        request: InvokeRequest,
        began: &mut Option<oneshot::Sender<Result<Began, ExecError>>>,
        chunks: mpsc::Sender<Bytes>,
    ) -> Result<InvokeResponse, ExecError> {
        if self
            .inner
            .shutting_down
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(ExecError::ShuttingDown);
        }
        let function = &request.function;
        let _permit = self.admit(function).await?;
        let container_mb = self.inner.sizer.effective_mb(function).await;
        let key = FnKey {
            account_id: function.account_id.clone(),
            function_name: function.name.clone(),
            version: function.version.clone(),
            revision_id: function.revision_id.clone(),
            memory_mb: container_mb,
            egress_denied: self.egress_of(function) == ember_protocol::Egress::Deny,
        };
        let lease = self
            .acquire(&key, function, u64::from(container_mb))
            .await?;
        let started_at_ms = epoch_ms();
        let (invoke, guard) = self.invocation(&request, &lease, started_at_ms);
        let deadline = tokio::time::Instant::now() + guard;
        let connection = lease.vm.connection();
        let answered = async {
            let mut stream = connection.invoke_stream(invoke).await?;
            // Chunks go to the consumer while it reads them in time; past the deadline, or once
            // it is gone, they are discarded and the invocation is drained to its end.
            let mut consumer = Some(&chunks);
            while let Some(part) = stream.next().await {
                match part {
                    StreamPart::Head { content_type } => {
                        if let Some(began) = began.take() {
                            let _ = began.send(Ok(Began {
                                start: lease.start,
                                content_type,
                                streamed: true,
                            }));
                        }
                    }
                    StreamPart::Chunk { data } => {
                        let Some(to) = consumer else { continue };
                        match tokio::time::timeout_at(deadline, to.send(data)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) | Err(_) => consumer = None,
                        }
                    }
                }
            }
            stream.result().await
        };
        let result = match tokio::time::timeout_at(deadline, answered).await {
            Ok(Ok(result)) => result,
            Ok(Err(err)) => return Err(self.invoke_failed(&lease, &request, agent_error(&err))),
            Err(_) => return Err(self.invoke_failed(&lease, &request, self.silent_agent())),
        };
        let (response, records) = self.conclude(&lease, &request, started_at_ms, result);
        self.inner.logs.send(records.log);
        self.inner.sizer.record(records.execution);
        if let Some(began) = began.take() {
            // Not streamed: the whole answer is here. A payload is one chunk; an error is the
            // end's.
            let _ = began.send(Ok(Began {
                start: lease.start,
                content_type: None,
                streamed: false,
            }));
            if response.verdict == Verdict::Ok && !response.payload.is_empty() {
                let until = tokio::time::Instant::from_std(Instant::now()) + guard;
                let _ = tokio::time::timeout_at(until, chunks.send(response.payload.clone())).await;
            }
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use ember_store::Function;

    use crate::report::Verdict;
    use crate::testing::{config, script, Answer, Harness};
    use crate::{ExecError, InvokeRequest, ThrottleReason};

    fn request(function: &Function, payload: &'static [u8]) -> InvokeRequest {
        InvokeRequest {
            function: function.clone(),
            qualifier: None,
            request_id: uuid::Uuid::new_v4().to_string(),
            payload: Bytes::from_static(payload),
            client_context: None,
            cognito_identity: None,
        }
    }

    /// A function allowed one execution at a time, so a unit left taken would show.
    async fn one_at_a_time(h: &Harness) -> Function {
        let f = h.function("s", 128).await;
        h.store
            .set_reserved_concurrency(&f.account_id, &f.name, Some(1))
            .await
            .unwrap();
        h.store
            .function(&f.account_id, &f.name)
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn a_streamed_response_is_handed_on_chunk_by_chunk_then_ends_as_any_invocation() {
        let h = Harness::start(config(2, 512), script(|_| None)).await;
        let f = one_at_a_time(&h).await;
        let mut stream = h
            .executor
            .invoke_stream(request(&f, b"stream:a,bb,ccc"))
            .await
            .unwrap();
        assert!(stream.streamed);
        assert_eq!(stream.content_type.as_deref(), Some("text/plain"));
        assert_eq!(stream.executed_version, "$LATEST");
        let mut chunks = Vec::new();
        while let Some(chunk) = stream.next_chunk().await {
            chunks.push(chunk);
        }
        assert_eq!(
            chunks,
            ["a", "bb", "ccc"].map(|c| Bytes::from_static(c.as_bytes()))
        );
        let response = stream.finish().await.unwrap();
        assert_eq!(response.verdict, Verdict::Ok);
        assert!(response.payload.is_empty());
        assert!(
            response.log.contains("REPORT RequestId:"),
            "{}",
            response.log
        );
        // Its unit of concurrency and its container came back: the next one runs warm.
        let again = h.executor.invoke(request(&f, b"{}")).await.unwrap();
        assert_eq!(again.start, crate::StartKind::Warm);
    }

    #[tokio::test]
    async fn a_buffered_response_is_one_chunk_and_a_function_error_is_the_end() {
        let h = Harness::start(
            config(2, 512),
            script(|r| {
                (crate::testing::invoke_payload(r) == Some(b"fail")).then(|| Answer::Outcome {
                    outcome: ember_protocol::InvokeOutcome::FunctionError {
                        error_type: "Oops".into(),
                        payload: Bytes::from_static(b"{\"errorType\":\"Oops\"}"),
                    },
                    peak_mb: 10,
                })
            }),
        )
        .await;
        let f = h.function("s", 128).await;
        let mut stream = h
            .executor
            .invoke_stream(request(&f, b"{\"whole\":1}"))
            .await
            .unwrap();
        assert!(!stream.streamed);
        assert_eq!(
            stream.next_chunk().await,
            Some(Bytes::from_static(b"{\"whole\":1}"))
        );
        assert_eq!(stream.next_chunk().await, None);
        assert_eq!(stream.finish().await.unwrap().verdict, Verdict::Ok);

        let mut stream = h
            .executor
            .invoke_stream(request(&f, b"fail"))
            .await
            .unwrap();
        assert_eq!(stream.next_chunk().await, None, "an error is not a chunk");
        let response = stream.finish().await.unwrap();
        assert_eq!(
            response.verdict,
            Verdict::Unhandled {
                error_type: "Oops".into()
            }
        );
        assert_eq!(response.payload.as_ref(), b"{\"errorType\":\"Oops\"}");
    }

    #[tokio::test]
    async fn a_throttle_is_the_calls_error_and_a_dropped_stream_still_ends() {
        // `stream:held` is handed to the test, which answers when it likes.
        let held = |r: &ember_protocol::Request| {
            (crate::testing::invoke_payload(r) == Some(b"stream:held")).then_some(Answer::Ask)
        };
        let h = Harness::start(config(2, 512), script(held)).await;
        let f = one_at_a_time(&h).await;
        let running = {
            let executor = h.executor.clone();
            let request = request(&f, b"stream:held");
            tokio::spawn(async move { executor.invoke_stream(request).await })
        };
        let call = h.driver.next_call().await;
        // While it runs, another is throttled before any response.
        let second = h.executor.invoke_stream(request(&f, b"stream:w")).await;
        assert!(
            matches!(
                second,
                Err(ExecError::Throttled {
                    reason: ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded
                })
            ),
            "{second:?}"
        );
        call.answer(Answer::Serve);
        // The client goes away before reading anything: the execution ends on its own and gives
        // its unit back.
        drop(running.await.unwrap().unwrap());
        let mut next = None;
        for _ in 0..200 {
            match h.executor.invoke_stream(request(&f, b"stream:z")).await {
                Ok(stream) => {
                    next = Some(stream);
                    break;
                }
                Err(ExecError::Throttled { .. }) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await
                }
                Err(err) => panic!("{err}"),
            }
        }
        let mut next = next.expect("the dropped stream's unit came back");
        assert_eq!(next.next_chunk().await, Some(Bytes::from_static(b"z")));
        next.finish().await.unwrap();
    }
}
