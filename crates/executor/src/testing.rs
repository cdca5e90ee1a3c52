//! The executor's test seam: a fake [`VmDriver`] whose VMs are in-process fake agents speaking
//! the real host↔agent protocol over an in-memory stream, scriptable per request (answer, refuse,
//! delay, die, hang, or hand the call to the test), and a harness that runs an [`Executor`] on it with
//! a store in a temporary directory. No root, no real VM.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ember_fleet::{FleetConfig, ReplenishConfig};
use ember_protocol::{
    agent_handshake, AgentCodec, AgentMessage, AgentStats, Connection, ContainerCreated,
    CreateContainer, GoneReason, HostMessage, Invoke, InvokeOutcome, InvokeResult, Reply, Request,
    StreamPart,
};
use ember_store::{Function, FunctionSpec, Store};
use ember_vm::{BoxFuture, Vm, VmDriver, VmError, VmInstance, VmSpec};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::codec::Framed;

use crate::{Clock, Executor, ExecutorConfig, RuntimeProvider};

/// What a fake agent does with one request.
#[derive(Debug)]
pub(crate) enum Answer {
    /// What a working agent answers (an `Invoke` succeeds, echoing its payload, peak 64 MB).
    Serve,
    /// Answers an `Invoke` with this outcome and peak memory.
    Outcome {
        outcome: InvokeOutcome,
        peak_mb: u64,
    },
    /// Refuses the request with this message ([`Reply::Error`]), as an agent that cannot carry
    /// it out does; its connection stays open.
    Refuse(String),
    /// Acts on the answer after this long (tokio time).
    After(Duration, Box<Answer>),
    /// Hands the request to the test ([`FakeDriver::next_call`]), which answers it.
    Ask,
    /// The agent closes its connection, as a crashed agent does.
    Die,
    /// The agent never answers this request, and keeps its connection open.
    Hang,
}

impl Answer {
    pub(crate) fn function_error() -> Self {
        Self::Outcome {
            outcome: InvokeOutcome::FunctionError {
                error_type: "Handled".into(),
                payload: Bytes::from_static(br#"{"errorMessage":"no"}"#),
            },
            peak_mb: 64,
        }
    }
}

/// A request a fake agent handed to the test.
#[derive(Debug)]
pub(crate) struct Call {
    pub vm_id: String,
    pub request: Request,
    answer: oneshot::Sender<Answer>,
}

impl Call {
    /// The payload of the invocation handed over (empty for other requests).
    pub(crate) fn payload(&self) -> &[u8] {
        invoke_payload(&self.request).unwrap_or_default()
    }

    pub(crate) fn answer(self, answer: Answer) {
        // The agent may be gone (its VM retired): then nobody needs the answer.
        let _ = self.answer.send(answer);
    }
}

/// Decides, per request, what the fake agents do.
pub(crate) type Script = Arc<dyn Fn(&Request) -> Answer + Send + Sync>;

/// What the fake VMs saw, for assertions.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub boots: Vec<VmSpec>,
    /// VMs whose backend was stopped or killed.
    pub stopped: Vec<String>,
    /// Containers created, with the VM they were created in.
    pub created: Vec<(String, CreateContainer)>,
    /// Invocations that reached an agent, with their VM.
    pub invoked: Vec<(String, Invoke)>,
    /// Runtime templates asked for (`PrepareTemplate`), with their VM.
    pub templates: Vec<(String, String)>,
    /// Containers the host asked to destroy.
    pub destroyed: Vec<String>,
}

/// A [`VmDriver`] whose VMs are fake agents in this process.
pub(crate) struct FakeDriver {
    script: Script,
    seen: Arc<Mutex<Seen>>,
    calls_tx: mpsc::UnboundedSender<Call>,
    calls: tokio::sync::Mutex<mpsc::UnboundedReceiver<Call>>,
    /// Each VM's "kill the agent" switch.
    kills: Mutex<HashMap<String, Arc<Notify>>>,
}

impl std::fmt::Debug for FakeDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeDriver").finish_non_exhaustive()
    }
}

impl FakeDriver {
    pub(crate) fn new(script: Script) -> Arc<Self> {
        let (calls_tx, calls) = mpsc::unbounded_channel();
        Arc::new(Self {
            script,
            seen: Arc::default(),
            calls_tx,
            calls: tokio::sync::Mutex::new(calls),
            kills: Mutex::default(),
        })
    }

    pub(crate) fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }

    /// Kills a VM's agent, whatever it is doing: its connection closes.
    pub(crate) fn kill_agent(&self, vm_id: &str) {
        self.kills.lock().unwrap()[vm_id].notify_one();
    }

    /// The next request an agent handed to the test ([`Answer::Ask`]), within 10 s.
    pub(crate) async fn next_call(&self) -> Call {
        let mut calls = self.calls.lock().await;
        tokio::time::timeout(Duration::from_secs(10), calls.recv())
            .await
            .expect("no call reached the fake agent within 10 s")
            .expect("the driver is gone")
    }
}

impl VmDriver for FakeDriver {
    fn boot(&self, spec: VmSpec) -> BoxFuture<'_, Result<Vm, VmError>> {
        Box::pin(async move {
            spec.validate()?;
            self.seen().boots.push(spec.clone());
            let (host, agent) = tokio::io::duplex(1 << 20);
            let kill = Arc::new(Notify::new());
            self.kills
                .lock()
                .unwrap()
                .insert(spec.id.clone(), kill.clone());
            tokio::spawn(serve(
                agent,
                kill,
                spec.id.clone(),
                self.script.clone(),
                self.seen.clone(),
                self.calls_tx.clone(),
            ));
            let (connection, events) = Connection::handshake(host)
                .await
                .map_err(VmError::Handshake)?;
            let instance = FakeInstance {
                id: spec.id.clone(),
                seen: self.seen.clone(),
                stopped: false,
            };
            Ok(Vm::new(spec.id, connection, events, Box::new(instance)))
        })
    }
}

#[derive(Debug)]
struct FakeInstance {
    id: String,
    seen: Arc<Mutex<Seen>>,
    stopped: bool,
}

impl FakeInstance {
    fn note_stopped(&mut self) {
        if !std::mem::replace(&mut self.stopped, true) {
            self.seen.lock().unwrap().stopped.push(self.id.clone());
        }
    }
}

impl VmInstance for FakeInstance {
    fn host_pid(&self) -> Option<u32> {
        None
    }

    fn stop(&mut self, _grace: Duration) -> BoxFuture<'_, Result<(), VmError>> {
        self.note_stopped();
        Box::pin(async { Ok(()) })
    }

    fn kill(&mut self) {
        self.note_stopped();
    }
}

/// What a request's task tells the agent loop.
enum Out {
    Reply(u64, Reply),
    /// A part of a streamed invocation's response (`Request::InvokeStream`).
    Stream(u64, StreamPart),
    Die,
}

/// The fake agent: the real handshake and framing, then each request as the script says.
async fn serve(
    io: tokio::io::DuplexStream,
    kill: Arc<Notify>,
    vm_id: String,
    script: Script,
    seen: Arc<Mutex<Seen>>,
    calls: mpsc::UnboundedSender<Call>,
) {
    let mut framed = Framed::new(io, AgentCodec::new());
    if agent_handshake(&mut framed, "fake").await.is_err() {
        return;
    }
    let (out_tx, mut out) = mpsc::unbounded_channel::<Out>();
    // Each container's memory limit, which its invocations report.
    let mut limits: HashMap<String, u32> = HashMap::new();
    loop {
        tokio::select! {
            frame = framed.next() => {
                let (id, request) = match frame {
                    Some(Ok(HostMessage::Request { id, request })) => (id, request),
                    // The fake agent streams without a window: credits change nothing.
                    Some(Ok(HostMessage::StreamCredit { .. })) => continue,
                    _ => return,
                };
                match &request {
                    Request::CreateContainer(c) => {
                        limits.insert(c.container_id.clone(), c.function.memory_mb);
                        seen.lock().unwrap().created.push((vm_id.clone(), c.clone()));
                    }
                    Request::Invoke(i) | Request::InvokeStream(i) => {
                        seen.lock().unwrap().invoked.push((vm_id.clone(), i.clone()));
                    }
                    Request::PrepareTemplate { runtime } => {
                        seen.lock().unwrap().templates.push((vm_id.clone(), runtime.clone()));
                    }
                    Request::DestroyContainer { container_id } => {
                        seen.lock().unwrap().destroyed.push(container_id.clone());
                    }
                    _ => {}
                }
                let answer = script(&request);
                let limit = match &request {
                    Request::Invoke(i) | Request::InvokeStream(i) => {
                        limits.get(&i.container_id).copied().unwrap_or(0)
                    }
                    _ => 0,
                };
                let task = act(id, request, answer, limit, vm_id.clone(), calls.clone(), out_tx.clone());
                tokio::spawn(task);
            }
            Some(next) = out.recv() => match next {
                Out::Reply(id, reply) => {
                    let shutdown = matches!(reply, Reply::ShuttingDown);
                    if framed.send(AgentMessage::Reply { id, reply }).await.is_err() || shutdown {
                        return;
                    }
                }
                Out::Stream(id, part) => {
                    if framed.send(AgentMessage::Stream { id, part }).await.is_err() {
                        return;
                    }
                }
                Out::Die => return,
            },
            () = kill.notified() => return,
        }
    }
}

/// Carries out one request's answer.
async fn act(
    id: u64,
    request: Request,
    mut answer: Answer,
    limit_mb: u32,
    vm_id: String,
    calls: mpsc::UnboundedSender<Call>,
    out: mpsc::UnboundedSender<Out>,
) {
    loop {
        answer = match answer {
            Answer::After(delay, then) => {
                tokio::time::sleep(delay).await;
                *then
            }
            Answer::Ask => {
                let (tx, rx) = oneshot::channel();
                let call = Call {
                    vm_id: vm_id.clone(),
                    request: request.clone(),
                    answer: tx,
                };
                if calls.send(call).is_err() {
                    return;
                }
                match rx.await {
                    Ok(answer) => answer,
                    Err(_) => return,
                }
            }
            Answer::Hang => std::future::pending().await,
            Answer::Die => {
                let _ = out.send(Out::Die);
                return;
            }
            Answer::Serve => {
                // A streamed invocation of `stream:a,b,…` streams the chunks `a`, `b`, …
                let streamed = match &request {
                    Request::InvokeStream(i) => i.invocation.payload.strip_prefix(b"stream:"),
                    _ => None,
                };
                let outcome = streamed.map(|chunks| {
                    let head = StreamPart::Head {
                        content_type: Some("text/plain".into()),
                    };
                    let _ = out.send(Out::Stream(id, head));
                    for chunk in chunks.split(|b| *b == b',') {
                        let data = Bytes::copy_from_slice(chunk);
                        let _ = out.send(Out::Stream(id, StreamPart::Chunk { data }));
                    }
                    let payload = Bytes::new();
                    (InvokeOutcome::Ok { payload }, 64)
                });
                let _ = out.send(Out::Reply(id, serve_normally(&request, limit_mb, outcome)));
                return;
            }
            Answer::Refuse(message) => {
                let _ = out.send(Out::Reply(id, Reply::Error { message }));
                return;
            }
            Answer::Outcome { outcome, peak_mb } => {
                let reply = serve_normally(&request, limit_mb, Some((outcome, peak_mb)));
                let _ = out.send(Out::Reply(id, reply));
                return;
            }
        }
    }
}

/// What a working agent answers.
fn serve_normally(
    request: &Request,
    limit_mb: u32,
    outcome: Option<(InvokeOutcome, u64)>,
) -> Reply {
    match request {
        Request::PutCode(put) => Reply::CodeStored {
            sha256: put.sha256.clone(),
            complete: put.offset + put.chunk.len() as u64 == put.total_len,
        },
        Request::CreateContainer(c) => Reply::ContainerCreated(ContainerCreated {
            container_id: c.container_id.clone(),
            runtime_api: "127.0.0.1:9001".into(),
        }),
        Request::AwaitInit { container_id, .. } => Reply::Initialized {
            container_id: container_id.clone(),
            init_duration_ms: 50.0,
        },
        Request::Invoke(invoke) | Request::InvokeStream(invoke) => {
            let (outcome, peak_mb) = outcome.unwrap_or_else(|| {
                let payload = invoke.invocation.payload.clone();
                (InvokeOutcome::Ok { payload }, 64)
            });
            Reply::InvokeResult(InvokeResult {
                request_id: invoke.invocation.request_id.clone(),
                outcome,
                init_duration_ms: None,
                restored: false,
                duration_ms: 2.0,
                memory_limit_mb: limit_mb,
                max_memory_used_mb: peak_mb,
                cpu_time_ms: 1.0,
                cpu_throttled_ms: 0.0,
                logs: String::new(),
            })
        }
        Request::DestroyContainer { container_id } => Reply::ContainerGone {
            container_id: container_id.clone(),
            reason: GoneReason::Destroyed,
        },
        Request::PrepareTemplate { runtime } => Reply::TemplateReady {
            runtime: runtime.clone(),
            rss_mb: 20,
        },
        Request::DropSnapTemplates { .. } => Reply::SnapTemplatesDropped {
            dropped: 0,
            pending: 0,
        },
        Request::Stats => Reply::Stats(AgentStats {
            containers: 0,
            invocations_in_flight: 0,
            memory_used_mb: 0,
        }),
        Request::Shutdown => Reply::ShuttingDown,
    }
}

/// Every runtime is ready.
#[derive(Debug)]
pub(crate) struct AnyRuntime;

impl RuntimeProvider for AnyRuntime {
    fn ensure<'a>(&'a self, _runtime: &'a str) -> crate::BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// A clock the test sets: the event queue's time.
#[derive(Debug)]
pub(crate) struct ManualClock(AtomicI64);

impl ManualClock {
    pub(crate) fn at(ms: i64) -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(ms)))
    }

    pub(crate) fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn epoch_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A config for tests: no warming pool (every VM the tests see was booted on demand), room for
/// `vms` VMs of `vm_mb` MB.
pub(crate) fn config(vms: u64, vm_mb: u64) -> ExecutorConfig {
    ExecutorConfig {
        fleet: FleetConfig {
            capacity_mb: vms * vm_mb,
            vm_memory_mb: vm_mb,
            replenish: ReplenishConfig {
                initial: 0,
                min: 0,
                max: 0,
                adaptive: false,
                ..ReplenishConfig::default()
            },
            ..FleetConfig::default()
        },
        placement_wait: Duration::from_secs(60),
        ..ExecutorConfig::default()
    }
}

/// An executor on a [`FakeDriver`], with its store in a temporary directory.
pub(crate) struct Harness {
    pub executor: Executor,
    pub driver: Arc<FakeDriver>,
    pub store: Store,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub(crate) async fn start(config: ExecutorConfig, script: Script) -> Self {
        Self::start_with_clock(config, script, Arc::new(crate::SystemClock)).await
    }

    pub(crate) async fn start_with_clock(
        config: ExecutorConfig,
        script: Script,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let driver = FakeDriver::new(script);
        let executor = Executor::start_with_clock(
            config,
            driver.clone(),
            store.clone(),
            Arc::new(AnyRuntime),
            clock,
        )
        .await
        .unwrap();
        Self {
            executor,
            driver,
            store,
            _dir: dir,
        }
    }

    /// A new account with one function of `memory_mb`.
    pub(crate) async fn function(&self, name: &str, memory_mb: u32) -> Function {
        let account = self.store.create_account(name, false).await.unwrap();
        self.function_in(&account.account_id, name, memory_mb).await
    }

    /// A function of `memory_mb` in an existing account.
    pub(crate) async fn function_in(
        &self,
        account_id: &str,
        name: &str,
        memory_mb: u32,
    ) -> Function {
        self.function_of(account_id, name, memory_mb, "provided.al2023")
            .await
    }

    /// A function of `memory_mb` and `runtime` in an existing account.
    pub(crate) async fn function_of(
        &self,
        account_id: &str,
        name: &str,
        memory_mb: u32,
        runtime: &str,
    ) -> Function {
        let spec = FunctionSpec {
            runtime: Some(runtime.into()),
            role: "arn:aws:iam::123456789012:role/r".into(),
            handler: Some("bootstrap".into()),
            description: String::new(),
            timeout_s: 3,
            memory_mb,
            ephemeral_mb: 512,
            environment: Default::default(),
            architectures: vec!["x86_64".into()],
            package_type: "Zip".into(),
            layers: Vec::new(),
            snap_start: Default::default(),
        };
        self.store
            .create_function(account_id, name, &spec, b"PK fake package")
            .await
            .unwrap()
    }
}

/// Every request is answered as a working agent would, except those `ask` says to hand over.
pub(crate) fn script(f: impl Fn(&Request) -> Option<Answer> + Send + Sync + 'static) -> Script {
    Arc::new(move |request| f(request).unwrap_or(Answer::Serve))
}

/// The payload of an `Invoke`, if the request is one.
pub(crate) fn invoke_payload(request: &Request) -> Option<&[u8]> {
    match request {
        Request::Invoke(invoke) | Request::InvokeStream(invoke) => Some(&invoke.invocation.payload),
        _ => None,
    }
}

/// Waits, polling, until `ready` holds; panics after 10 s (real time).
pub(crate) async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
