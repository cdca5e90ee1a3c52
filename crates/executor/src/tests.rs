//! The executor's promises, on the fake VM driver of [`crate::testing`]: concurrency
//! admission, the waiting queue and `--placement-wait`, VM failures, the Event worker and the
//! sizing hook. No root, no real VM.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ember_store::{Function, FunctionChange};

use crate::testing::{config, invoke_payload, script, until, Answer, Harness, ManualClock};
use crate::{ExecError, Executor, InvokeRequest, InvokeResponse, StartKind, ThrottleReason};

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

type Running = tokio::task::JoinHandle<Result<InvokeResponse, ExecError>>;

fn spawn(executor: &Executor, function: &Function, payload: &'static [u8]) -> Running {
    let (executor, request) = (executor.clone(), request(function, payload));
    tokio::spawn(async move { executor.invoke(request).await })
}

async fn succeeds(running: Running, payload: &[u8]) -> InvokeResponse {
    let response = running.await.unwrap().unwrap();
    assert_eq!(response.payload.as_ref(), payload);
    response
}

fn is_throttled(result: &Result<InvokeResponse, ExecError>, why: ThrottleReason) -> bool {
    matches!(result, Err(ExecError::Throttled { reason }) if *reason == why)
}

/// Executions of `function`'s account waiting for capacity.
fn waiting(executor: &Executor, function: &Function) -> usize {
    executor
        .fleet()
        .accounts
        .iter()
        .find(|a| a.account_id == function.account_id)
        .map_or(0, |a| a.waiting)
}

/// Invocations are handed to the test; everything else is served.
fn ask_invocations() -> crate::testing::Script {
    script(|r| invoke_payload(r).map(|_| Answer::Ask))
}

// ---- runtime templates ----------------------------------------------------------------------

#[tokio::test]
async fn a_vms_python_template_is_asked_for_once_and_its_memory_is_not_given_to_containers() {
    let h = Harness::start(config(2, 1024), script(|_| None)).await;
    let account = h.store.create_account("a", false).await.unwrap();
    let f = h
        .function_of(&account.account_id, "py", 128, "python3.12")
        .await;
    h.executor.invoke(request(&f, b"1")).await.unwrap();
    until("the template is asked for", || {
        !h.driver.seen().templates.is_empty()
    })
    .await;
    let vm_id = h.driver.seen().templates[0].0.clone();
    assert_eq!(h.driver.seen().templates[0].1, "python3.12");
    // The fake agent measures 20 MB: 1024 MB less the container's 128 and the template's 20.
    until("the template's memory is counted", || {
        h.executor
            .fleet()
            .vms
            .iter()
            .any(|vm| vm.vm_id == vm_id && vm.free_memory_mb == 1024 - 128 - 20)
    })
    .await;
    // Another container of the runtime in the VM: no second template.
    h.executor.invoke(request(&f, b"2")).await.unwrap();
    let g = h
        .function_of(&account.account_id, "native", 128, "provided.al2023")
        .await;
    h.executor.invoke(request(&g, b"3")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        h.driver.seen().templates.len(),
        1,
        "{:?}",
        h.driver.seen().templates
    );
}

#[tokio::test]
async fn no_template_is_asked_for_when_templates_are_off() {
    let mut config = config(2, 1024);
    config.runtime_templates = false;
    let h = Harness::start(config, script(|_| None)).await;
    let account = h.store.create_account("a", false).await.unwrap();
    let f = h
        .function_of(&account.account_id, "py", 128, "python3.12")
        .await;
    h.executor.invoke(request(&f, b"1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(h.driver.seen().templates.is_empty());
    let vm = &h.executor.fleet().vms[0];
    assert_eq!(vm.free_memory_mb, 1024 - 128);
}

#[tokio::test]
async fn a_node_template_is_asked_for_only_with_node_templates_on() {
    for node_templates in [false, true] {
        let mut config = config(2, 1024);
        config.node_runtime_templates = node_templates;
        let h = Harness::start(config, script(|_| None)).await;
        let account = h.store.create_account("a", false).await.unwrap();
        let f = h
            .function_of(&account.account_id, "js", 128, "nodejs20.x")
            .await;
        h.executor.invoke(request(&f, b"1")).await.unwrap();
        if node_templates {
            until("the template is asked for", || {
                !h.driver.seen().templates.is_empty()
            })
            .await;
            assert_eq!(h.driver.seen().templates[0].1, "nodejs20.x");
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(h.driver.seen().templates.is_empty());
        }
    }
}

// ---- concurrency admission ------------------------------------------------------------------

#[tokio::test]
async fn account_concurrency_throttles_the_invocation_past_the_limit() {
    let mut config = config(4, 512);
    config.account_concurrency = 2;
    let h = Harness::start(config, ask_invocations()).await;
    let f = h.function("a", 128).await;
    let first = spawn(&h.executor, &f, b"1");
    let second = spawn(&h.executor, &f, b"2");
    let mut calls = [h.driver.next_call().await, h.driver.next_call().await];
    calls.sort_by(|a, b| a.payload().cmp(b.payload()));
    let [c1, c2] = calls;

    let third = h.executor.invoke(request(&f, b"3")).await;
    assert!(
        is_throttled(&third, ThrottleReason::ConcurrentInvocationLimitExceeded),
        "{third:?}"
    );
    assert_eq!(h.driver.seen().invoked.len(), 2, "the third reached a VM");

    // Another account is not limited by this one's executions.
    let g = h.function("b", 128).await;
    let other = spawn(&h.executor, &g, b"other");
    h.driver.next_call().await.answer(Answer::Serve);
    succeeds(other, b"other").await;

    // A finished execution gives its unit back.
    c1.answer(Answer::Serve);
    succeeds(first, b"1").await;
    let fourth = spawn(&h.executor, &f, b"4");
    h.driver.next_call().await.answer(Answer::Serve);
    succeeds(fourth, b"4").await;
    c2.answer(Answer::Serve);
    succeeds(second, b"2").await;
}

#[tokio::test]
async fn reserved_concurrency_throttles_the_function_past_it() {
    let h = Harness::start(config(4, 512), ask_invocations()).await;
    let f = h.function("a", 128).await;
    h.store
        .set_reserved_concurrency(&f.account_id, &f.name, Some(1))
        .await
        .unwrap();
    let f = h
        .store
        .function(&f.account_id, &f.name)
        .await
        .unwrap()
        .unwrap();
    let first = spawn(&h.executor, &f, b"1");
    let call = h.driver.next_call().await;

    let second = h.executor.invoke(request(&f, b"2")).await;
    assert!(
        is_throttled(
            &second,
            ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded
        ),
        "{second:?}"
    );
    call.answer(Answer::Serve);
    succeeds(first, b"1").await;
    let third = spawn(&h.executor, &f, b"3");
    h.driver.next_call().await.answer(Answer::Serve);
    succeeds(third, b"3").await;
}

// ---- the waiting queue and --placement-wait -------------------------------------------------

#[tokio::test]
async fn a_waiting_execution_is_placed_when_capacity_frees() {
    // Room for one 512 MB container: the second execution must wait for the first's.
    let h = Harness::start(config(1, 512), ask_invocations()).await;
    let f = h.function("a", 512).await;
    let first = spawn(&h.executor, &f, b"1");
    let c1 = h.driver.next_call().await;
    let second = spawn(&h.executor, &f, b"2");
    until("the second execution waits", || {
        waiting(&h.executor, &f) == 1
    })
    .await;
    assert!(!second.is_finished());

    let container = |call: &crate::testing::Call| match &call.request {
        ember_protocol::Request::Invoke(invoke) => invoke.container_id.clone(),
        other => panic!("not an invocation: {other:?}"),
    };
    let freed = container(&c1);
    c1.answer(Answer::Serve);
    succeeds(first, b"1").await;
    let c2 = h.driver.next_call().await;
    assert_eq!(container(&c2), freed, "placed on the freed container");
    assert_eq!(waiting(&h.executor, &f), 0);
    c2.answer(Answer::Serve);
    let response = succeeds(second, b"2").await;
    assert_eq!(
        response.start,
        StartKind::Warm,
        "placed on the freed container"
    );
    assert_eq!(h.driver.seen().boots.len(), 1);
}

#[tokio::test]
async fn a_waiting_execution_is_refused_after_the_placement_wait() {
    let mut config = config(1, 512);
    config.placement_wait = Duration::from_millis(300);
    let h = Harness::start(config, ask_invocations()).await;
    let f = h.function("a", 512).await;
    let first = spawn(&h.executor, &f, b"1");
    let c1 = h.driver.next_call().await;

    let asked = Instant::now();
    let second = h.executor.invoke(request(&f, b"2")).await;
    assert!(
        is_throttled(&second, ThrottleReason::CapacityExhausted),
        "{second:?}"
    );
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "refused before the placement wait: {:?}",
        asked.elapsed()
    );
    assert_eq!(
        waiting(&h.executor, &f),
        0,
        "the refused execution left the queue"
    );
    assert_eq!(h.driver.seen().invoked.len(), 1);
    c1.answer(Answer::Serve);
    succeeds(first, b"1").await;
}

#[tokio::test]
async fn the_waiting_queue_never_exceeds_max_waiting() {
    let mut config = config(1, 512);
    config.fleet.max_waiting = 2;
    let h = Harness::start(config, ask_invocations()).await;
    let f = h.function("a", 512).await;
    let first = spawn(&h.executor, &f, b"1");
    let c1 = h.driver.next_call().await;
    let waiters = [spawn(&h.executor, &f, b"w"), spawn(&h.executor, &f, b"w")];
    until("two executions wait", || waiting(&h.executor, &f) == 2).await;

    // The queue is full: the next is refused at once, not after the 60 s placement wait.
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        h.executor.invoke(request(&f, b"3")),
    )
    .await
    .expect("refused at once");
    assert!(
        is_throttled(&refused, ThrottleReason::CapacityExhausted),
        "{refused:?}"
    );
    assert_eq!(waiting(&h.executor, &f), 2);
    assert!(waiters.iter().all(|w| !w.is_finished()));

    c1.answer(Answer::Serve);
    succeeds(first, b"1").await;
    for _ in 0..2 {
        h.driver.next_call().await.answer(Answer::Serve);
    }
    for waiter in waiters {
        succeeds(waiter, b"w").await;
    }
}

// ---- VM failures ----------------------------------------------------------------------------

/// The VM an invocation with `payload` was sent to.
fn vm_of(h: &Harness, payload: &[u8]) -> String {
    let seen = h.driver.seen();
    let (vm_id, _) = seen
        .invoked
        .iter()
        .find(|(_, i)| i.invocation.payload.as_ref() == payload)
        .expect("the invocation reached an agent");
    vm_id.clone()
}

/// Waits until `vm_id` was stopped and the fleet no longer has it.
async fn until_out_of_service(h: &Harness, vm_id: &str) {
    until("the VM leaves service", || {
        h.driver.seen().stopped.iter().any(|s| s == vm_id)
            && !h.executor.fleet().vms.iter().any(|v| v.vm_id == vm_id)
    })
    .await;
}

#[tokio::test]
async fn an_agent_that_dies_fails_only_its_invocations_and_its_vm_leaves_service() {
    let h = Harness::start(
        config(2, 512),
        script(|r| {
            invoke_payload(r).map(|p| match p {
                b"die" => Answer::Die,
                _ => Answer::Ask,
            })
        }),
    )
    .await;
    let (a, b) = (h.function("a", 256).await, h.function("b", 256).await);
    let other = spawn(&h.executor, &b, b"b");
    let held = h.driver.next_call().await;

    let died = h.executor.invoke(request(&a, b"die")).await;
    assert!(matches!(died, Err(ExecError::Vm(_))), "{died:?}");
    let dead = vm_of(&h, b"die");
    assert_ne!(dead, held.vm_id, "two accounts shared a VM");
    until_out_of_service(&h, &dead).await;

    // The other account's VM and invocation are untouched.
    held.answer(Answer::Serve);
    succeeds(other, b"b").await;
    // The account's next invocation gets a new VM.
    let again = spawn(&h.executor, &a, b"again");
    let call = h.driver.next_call().await;
    assert_ne!(call.vm_id, dead);
    call.answer(Answer::Serve);
    assert_eq!(succeeds(again, b"again").await.start, StartKind::ColdVm);
}

#[tokio::test]
async fn an_idle_vm_whose_agent_dies_leaves_service() {
    let h = Harness::start(config(2, 512), script(|_| None)).await;
    let f = h.function("a", 256).await;
    h.executor.invoke(request(&f, b"1")).await.unwrap();
    let dead = vm_of(&h, b"1");
    h.driver.kill_agent(&dead);
    until_out_of_service(&h, &dead).await;

    let again = h.executor.invoke(request(&f, b"2")).await.unwrap();
    assert_eq!(
        again.start,
        StartKind::ColdVm,
        "placed on the dead VM's container"
    );
    assert_ne!(vm_of(&h, b"2"), dead);
}

#[tokio::test]
async fn an_agent_that_hangs_in_an_invocation_is_removed_from_service() {
    let mut config = config(2, 512);
    config.agent_grace = Duration::from_millis(1000);
    let h = Harness::start(
        config,
        script(|r| {
            invoke_payload(r).map(|p| match p {
                b"hang" => Answer::Hang,
                _ => Answer::After(Duration::from_millis(600), Box::new(Answer::Serve)),
            })
        }),
    )
    .await;
    let f = h.function("a", 256).await;
    // A short function timeout: the host waits it out, plus the grace.
    let mut spec = f.spec.clone();
    spec.timeout_s = 1;
    let f = Function { spec, ..f };

    // A slow answer within the deadline is no failure: the VM stays in service.
    let slow = h.executor.invoke(request(&f, b"slow")).await.unwrap();
    assert_eq!(slow.payload.as_ref(), b"slow");
    let slow_vm = vm_of(&h, b"slow");

    let asked = Instant::now();
    let hung = tokio::time::timeout(
        Duration::from_secs(30),
        h.executor.invoke(request(&f, b"hang")),
    )
    .await
    .expect("the host gave up on the hung agent");
    assert!(matches!(hung, Err(ExecError::Vm(_))), "{hung:?}");
    assert!(
        asked.elapsed() >= Duration::from_millis(2000),
        "gave up before the deadline and the grace: {:?}",
        asked.elapsed()
    );
    let hung_vm = vm_of(&h, b"hang");
    assert_eq!(hung_vm, slow_vm, "the hang was not on the warm VM");
    until_out_of_service(&h, &hung_vm).await;

    let again = h.executor.invoke(request(&f, b"again")).await.unwrap();
    assert_eq!(again.start, StartKind::ColdVm);
    assert_ne!(vm_of(&h, b"again"), hung_vm);
}

/// An agent that hangs in its first request of the kind `hangs` picks, and serves the rest.
async fn hang_before_invoking(hangs: fn(&ember_protocol::Request) -> bool) {
    let mut config = config(2, 512);
    config.agent_grace = Duration::from_millis(500);
    let hang_first = std::sync::atomic::AtomicBool::new(true);
    let h = Harness::start(
        config,
        script(move |r| {
            (hangs(r) && hang_first.swap(false, std::sync::atomic::Ordering::SeqCst))
                .then_some(Answer::Hang)
        }),
    )
    .await;
    let f = h.function("a", 256).await;

    let hung = tokio::time::timeout(
        Duration::from_secs(30),
        h.executor.invoke(request(&f, b"1")),
    )
    .await
    .expect("the host gave up on the hung agent");
    assert!(matches!(hung, Err(ExecError::Vm(_))), "{hung:?}");
    assert!(h.driver.seen().invoked.is_empty());
    let hung_vm = h.driver.seen().boots[0].id.clone();
    until_out_of_service(&h, &hung_vm).await;

    let again = h.executor.invoke(request(&f, b"2")).await.unwrap();
    assert_eq!(again.payload.as_ref(), b"2");
    assert_ne!(vm_of(&h, b"2"), hung_vm);
}

#[tokio::test]
async fn an_agent_that_hangs_creating_a_container_is_removed_from_service() {
    hang_before_invoking(|r| matches!(r, ember_protocol::Request::CreateContainer(_))).await;
}

#[tokio::test]
async fn an_agent_that_hangs_storing_code_is_removed_from_service() {
    hang_before_invoking(|r| matches!(r, ember_protocol::Request::PutCode(_))).await;
}

/// Picks the requests an agent acts up in.
type Pick = fn(&ember_protocol::Request) -> bool;

fn put_code(r: &ember_protocol::Request) -> bool {
    matches!(r, ember_protocol::Request::PutCode(_))
}

fn create_container(r: &ember_protocol::Request) -> bool {
    matches!(r, ember_protocol::Request::CreateContainer(_))
}

fn invocation(r: &ember_protocol::Request) -> bool {
    matches!(r, ember_protocol::Request::Invoke(_))
}

/// A script whose agents answer the first request `pick` picks with `answer`, and serve the rest.
fn first(pick: Pick, answer: fn() -> Answer) -> crate::testing::Script {
    let armed = std::sync::atomic::AtomicBool::new(true);
    script(move |r| {
        (pick(r) && armed.swap(false, std::sync::atomic::Ordering::SeqCst)).then(answer)
    })
}

/// An agent that refuses its first request of the kind `refuses` picks: that invocation fails
/// with the agent's reason, and the VM, whose agent still answers, stays in service and runs the
/// account's next invocation (in a new container: no VM is booted for it).
async fn refused_once(refuses: Pick) {
    let h = Harness::start(
        config(2, 512),
        first(refuses, || Answer::Refuse("no room for it".into())),
    )
    .await;
    let f = h.function("a", 256).await;

    let refused = h.executor.invoke(request(&f, b"1")).await;
    assert!(
        matches!(&refused, Err(ExecError::AgentRefused(reason)) if reason == "no room for it"),
        "{refused:?}"
    );
    let vm = h.driver.seen().boots[0].id.clone();

    let again = h.executor.invoke(request(&f, b"2")).await.unwrap();
    assert_eq!(again.payload.as_ref(), b"2");
    assert_eq!(again.start, StartKind::ColdContainer, "not in the same VM");
    assert_eq!(vm_of(&h, b"2"), vm);
    assert_eq!(h.driver.seen().boots.len(), 1, "a VM was booted");
    assert!(h.driver.seen().stopped.is_empty(), "a VM was stopped");
}

#[tokio::test]
async fn an_agent_that_refuses_to_store_code_fails_the_request_and_its_vm_serves_on() {
    refused_once(put_code).await;
}

#[tokio::test]
async fn an_agent_that_refuses_to_create_a_container_fails_the_request_and_its_vm_serves_on() {
    refused_once(create_container).await;
}

#[tokio::test]
async fn an_agent_that_refuses_an_invocation_fails_it_and_its_vm_serves_on() {
    refused_once(invocation).await;
}

/// An agent whose connection dies in its first request of the kind `dies` picks, before any
/// invocation reaches it: the invocation fails, the VM leaves service, the next gets a new VM.
async fn dies_before_invoking(dies: Pick) {
    let h = Harness::start(config(2, 512), first(dies, || Answer::Die)).await;
    let f = h.function("a", 256).await;

    let died = h.executor.invoke(request(&f, b"1")).await;
    assert!(matches!(died, Err(ExecError::Vm(_))), "{died:?}");
    assert!(h.driver.seen().invoked.is_empty());
    let dead = h.driver.seen().boots[0].id.clone();
    until_out_of_service(&h, &dead).await;

    let again = h.executor.invoke(request(&f, b"2")).await.unwrap();
    assert_eq!(again.start, StartKind::ColdVm);
    assert_ne!(vm_of(&h, b"2"), dead);
}

#[tokio::test]
async fn an_agent_that_dies_storing_code_leaves_service() {
    dies_before_invoking(put_code).await;
}

#[tokio::test]
async fn an_agent_that_dies_creating_a_container_leaves_service() {
    dies_before_invoking(create_container).await;
}

// ---- the Event worker -----------------------------------------------------------------------

const T0: i64 = 1_800_000_000_000;

/// Lets the event worker look at the queue again (as a newly queued event would).
fn poke(h: &Harness) {
    h.executor.inner.events_queued.notify_one();
}

async fn next_due(h: &Harness) -> Option<i64> {
    h.store.next_event_due().await.unwrap()
}

/// Waits until the store's queue says `ready`.
async fn until_queue(h: &Harness, what: &str, ready: impl Fn(Option<i64>, u64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let due = next_due(h).await;
        let queued = h.store.queued_events().await.unwrap();
        if ready(due, queued) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what} (due {due:?}, queued {queued})"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn a_failed_event_is_retried_twice_the_delay_doubling_then_dropped() {
    let clock = ManualClock::at(T0);
    let mut config = config(2, 512);
    config.event_retry_base = Duration::from_secs(60);
    let h = Harness::start_with_clock(
        config,
        script(|r| invoke_payload(r).map(|_| Answer::function_error())),
        clock.clone(),
    )
    .await;
    let f = h.function("a", 128).await;
    h.executor.enqueue(&f, "event-1", b"{}").await.unwrap();
    let attempts = || h.driver.seen().invoked.len();

    // Attempt 1 at T0 fails: the next is due 60 s later.
    until_queue(&h, "a retry after 60 s", |due, _| due == Some(T0 + 60_000)).await;
    assert_eq!(attempts(), 1);
    // Attempt 2 at T0 + 60 s fails: the next is due 120 s later.
    clock.set(T0 + 60_000);
    poke(&h);
    until_queue(&h, "a retry after 120 s", |due, _| {
        due == Some(T0 + 60_000 + 120_000)
    })
    .await;
    assert_eq!(attempts(), 2);
    // Attempt 3 fails: the event was tried three times and is dropped; none is left to run.
    clock.set(T0 + 180_000);
    poke(&h);
    until_queue(&h, "the event dropped", |due, queued| {
        due.is_none() && queued == 0
    })
    .await;
    assert_eq!(attempts(), 3);
    let logs = h
        .store
        .logs(&f.account_id, &f.name, None, 10)
        .await
        .unwrap();
    assert_eq!(logs.len(), 3, "one log per attempt");
}

#[tokio::test]
async fn a_throttled_event_is_retried_until_six_hours_old_then_dropped() {
    let clock = ManualClock::at(T0);
    let h = Harness::start_with_clock(config(2, 512), script(|_| None), clock.clone()).await;
    let f = h.function("a", 128).await;
    // Reserved concurrency 0: every execution of the function is throttled.
    h.store
        .set_reserved_concurrency(&f.account_id, &f.name, Some(0))
        .await
        .unwrap();
    h.executor.enqueue(&f, "event-1", b"{}").await.unwrap();
    until_queue(&h, "a throttled retry", |due, _| due == Some(T0 + 1_000)).await;

    const SIX_HOURS: i64 = 6 * 3600 * 1000;
    // Six hours old exactly: still retried.
    clock.set(T0 + SIX_HOURS);
    poke(&h);
    until_queue(&h, "a retry at six hours", |due, _| {
        due == Some(T0 + SIX_HOURS + 1_000)
    })
    .await;
    // Older: dropped.
    clock.set(T0 + SIX_HOURS + 1_000);
    poke(&h);
    until_queue(&h, "the event dropped", |due, queued| {
        due.is_none() && queued == 0
    })
    .await;
    assert!(h.driver.seen().invoked.is_empty(), "a throttled event ran");
}

#[tokio::test]
async fn throttled_tries_of_an_event_do_not_count_as_attempts() {
    let clock = ManualClock::at(T0);
    let h = Harness::start_with_clock(
        config(2, 512),
        script(|r| invoke_payload(r).map(|_| Answer::function_error())),
        clock.clone(),
    )
    .await;
    let f = h.function("a", 128).await;
    let reserve = |n| h.store.set_reserved_concurrency(&f.account_id, &f.name, n);
    reserve(Some(0)).await.unwrap();
    h.executor.enqueue(&f, "event-1", b"{}").await.unwrap();
    until_queue(&h, "a throttled retry", |due, _| due == Some(T0 + 1_000)).await;
    clock.set(T0 + 1_000);
    poke(&h);
    until_queue(&h, "another throttled retry", |due, _| {
        due == Some(T0 + 2_000)
    })
    .await;

    // Runnable again: it still has its three attempts.
    reserve(None).await.unwrap();
    let mut now = T0 + 2_000;
    for delay in [60_000, 120_000] {
        clock.set(now);
        poke(&h);
        until_queue(&h, "a retry", |due, _| due == Some(now + delay)).await;
        now += delay;
    }
    clock.set(now);
    poke(&h);
    until_queue(&h, "the event dropped", |_, queued| queued == 0).await;
    assert_eq!(h.driver.seen().invoked.len(), 3);
}

// ---- event invoke config and destinations ----------------------------------------------------

/// Invocations of functions whose name starts with `fail` end in a function error; those of
/// `quiet…` and `dest` answer `"done"`; the rest echo their payload.
fn failing_by_name() -> crate::testing::Script {
    script(|r| {
        let ember_protocol::Request::Invoke(invoke) = r else {
            return None;
        };
        let arn = &invoke.invocation.invoked_function_arn;
        // arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]
        let name = arn.split(':').nth(6).unwrap_or_default();
        if name.starts_with("fail") {
            Some(Answer::function_error())
        } else if name.starts_with("quiet") || name == "dest" {
            Some(Answer::Outcome {
                outcome: ember_protocol::InvokeOutcome::Ok {
                    payload: Bytes::from_static(br#""done""#),
                },
                peak_mb: 64,
            })
        } else {
            None
        }
    })
}

/// The payloads `function` was invoked with, in order.
fn invocations_of(h: &Harness, function: &Function) -> Vec<serde_json::Value> {
    let arn = h.executor.function_arn(function);
    h.driver
        .seen()
        .invoked
        .iter()
        .filter(|(_, i)| i.invocation.invoked_function_arn == arn)
        .map(|(_, i)| {
            serde_json::from_slice(&i.invocation.payload)
                .unwrap_or_else(|_| String::from_utf8_lossy(&i.invocation.payload).into())
        })
        .collect()
}

/// A function named `name` and a destination function `dest`, in one account, with `name`'s
/// config set to `settings` built from `dest`'s ARN.
async fn with_destination(
    h: &Harness,
    name: &str,
    settings: impl FnOnce(String) -> ember_store::EventConfigSettings,
) -> (Function, Function) {
    let source = h.function(name, 128).await;
    let dest = h.function_in(&source.account_id, "dest", 128).await;
    let settings = settings(h.executor.function_arn(&dest));
    h.store
        .put_event_invoke_config(&source.account_id, &source.name, "$LATEST", &settings)
        .await
        .unwrap();
    (source, dest)
}

async fn until_invoked(h: &Harness, function: &Function, n: usize) -> Vec<serde_json::Value> {
    until("the destination invoked", || {
        invocations_of(h, function).len() >= n
    })
    .await;
    invocations_of(h, function)
}

#[tokio::test]
async fn no_retries_sends_the_failure_record_to_on_failure_after_one_attempt() {
    let clock = ManualClock::at(T0);
    let h = Harness::start_with_clock(config(2, 512), failing_by_name(), clock.clone()).await;
    let (source, dest) = with_destination(&h, "fail-a", |arn| ember_store::EventConfigSettings {
        maximum_retry_attempts: Some(0),
        on_failure: Some(arn),
        ..Default::default()
    })
    .await;
    h.executor
        .enqueue(&source, "event-1", br#"{"n": 1}"#)
        .await
        .unwrap();

    let records = until_invoked(&h, &dest, 1).await;
    let record = &records[0];
    assert_eq!(record["version"], "1.0");
    assert_eq!(
        record["requestContext"],
        serde_json::json!({
            "requestId": "event-1",
            "functionArn": format!("{}:$LATEST", h.executor.function_arn(&source)),
            "condition": "RetriesExhausted",
            "approximateInvokeCount": 1,
        })
    );
    assert_eq!(record["requestPayload"], serde_json::json!({"n": 1}));
    assert_eq!(
        record["responseContext"],
        serde_json::json!({"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"})
    );
    assert_eq!(
        record["responsePayload"],
        serde_json::json!({"errorMessage": "no"})
    );
    assert_eq!(record["timestamp"], "2027-01-15T08:00:00.000Z");
    until_queue(&h, "both events done", |_, queued| queued == 0).await;
    assert_eq!(
        invocations_of(&h, &source).len(),
        1,
        "retried despite 0 retries"
    );
    assert_eq!(invocations_of(&h, &dest).len(), 1);
}

#[tokio::test]
async fn the_config_of_the_qualifier_invoked_applies() {
    let clock = ManualClock::at(T0);
    let h = Harness::start_with_clock(config(2, 512), failing_by_name(), clock.clone()).await;
    let source = h.function("fail-a", 128).await;
    let dest = h.function_in(&source.account_id, "dest", 128).await;
    let version = h
        .store
        .publish_version(&source.account_id, &source.name, Default::default())
        .await
        .unwrap();
    // Version 1 retries nothing and reports to `dest`; $LATEST keeps the defaults.
    let settings = ember_store::EventConfigSettings {
        maximum_retry_attempts: Some(0),
        on_failure: Some(h.executor.function_arn(&dest)),
        ..Default::default()
    };
    h.store
        .put_event_invoke_config(
            &source.account_id,
            &source.name,
            &version.version,
            &settings,
        )
        .await
        .unwrap();
    h.executor
        .enqueue_qualified(&version, &version.version, "event-1", b"{}")
        .await
        .unwrap();
    let records = until_invoked(&h, &dest, 1).await;
    assert_eq!(
        records[0]["requestContext"]["functionArn"],
        format!("{}:{}", h.executor.function_arn(&source), version.version)
    );
    assert_eq!(records[0]["requestContext"]["approximateInvokeCount"], 1);

    // The same function invoked as $LATEST: two retries, and no record.
    h.executor.enqueue(&source, "event-2", b"{}").await.unwrap();
    until_queue(&h, "a retry after 60 s", |due, _| due == Some(T0 + 60_000)).await;
    assert_eq!(invocations_of(&h, &dest).len(), 1);
}

#[tokio::test]
async fn one_retry_is_made_a_minute_later_then_the_record_counts_two() {
    let clock = ManualClock::at(T0);
    let h = Harness::start_with_clock(config(2, 512), failing_by_name(), clock.clone()).await;
    let (source, dest) = with_destination(&h, "fail-a", |arn| ember_store::EventConfigSettings {
        maximum_retry_attempts: Some(1),
        on_failure: Some(arn),
        ..Default::default()
    })
    .await;
    h.executor.enqueue(&source, "event-1", b"{}").await.unwrap();
    until_queue(&h, "a retry after 60 s", |due, _| due == Some(T0 + 60_000)).await;
    assert!(
        invocations_of(&h, &dest).is_empty(),
        "a record before the last attempt"
    );
    clock.set(T0 + 60_000);
    poke(&h);
    let records = until_invoked(&h, &dest, 1).await;
    assert_eq!(
        records[0]["requestContext"]["condition"],
        "RetriesExhausted"
    );
    assert_eq!(records[0]["requestContext"]["approximateInvokeCount"], 2);
    assert_eq!(invocations_of(&h, &source).len(), 2);
}

#[tokio::test]
async fn success_sends_the_functions_response_to_on_success() {
    let clock = ManualClock::at(T0);
    let h = Harness::start_with_clock(config(2, 512), failing_by_name(), clock.clone()).await;
    let (source, dest) = with_destination(&h, "ok-a", |arn| ember_store::EventConfigSettings {
        on_success: Some(arn.clone()),
        on_failure: Some(format!("{arn}-not-this-one")),
        ..Default::default()
    })
    .await;
    h.executor
        .enqueue(&source, "event-1", br#"{"hello":"world"}"#)
        .await
        .unwrap();
    let records = until_invoked(&h, &dest, 1).await;
    let record = &records[0];
    assert_eq!(record["requestContext"]["condition"], "Success");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 1);
    assert_eq!(
        record["requestPayload"],
        serde_json::json!({"hello": "world"})
    );
    // The fake agent echoes the payload.
    assert_eq!(
        record["responsePayload"],
        serde_json::json!({"hello": "world"})
    );
    assert_eq!(
        record["responseContext"],
        serde_json::json!({"statusCode": 200, "executedVersion": "$LATEST"})
    );
}

#[tokio::test]
async fn a_retry_past_the_maximum_age_sends_event_age_exceeded_with_the_last_response() {
    let clock = ManualClock::at(T0);
    let h = Harness::start_with_clock(config(2, 512), failing_by_name(), clock.clone()).await;
    let (source, dest) = with_destination(&h, "fail-a", |arn| ember_store::EventConfigSettings {
        maximum_event_age_s: Some(60),
        on_failure: Some(arn),
        ..Default::default()
    })
    .await;
    h.executor.enqueue(&source, "event-1", b"{}").await.unwrap();
    // The first retry falls at exactly 60 s: still within the age.
    until_queue(&h, "a retry after 60 s", |due, _| due == Some(T0 + 60_000)).await;
    clock.set(T0 + 60_000);
    poke(&h);
    // The second would fall at 180 s: given up at once.
    let records = until_invoked(&h, &dest, 1).await;
    assert_eq!(
        records[0]["requestContext"]["condition"],
        "EventAgeExceeded"
    );
    assert_eq!(records[0]["requestContext"]["approximateInvokeCount"], 2);
    assert_eq!(records[0]["responseContext"]["functionError"], "Unhandled");
    assert_eq!(invocations_of(&h, &source).len(), 2);
}

#[tokio::test]
async fn an_event_that_never_ran_before_its_maximum_age_sends_a_record_without_a_response() {
    let clock = ManualClock::at(T0);
    let h = Harness::start_with_clock(config(2, 512), failing_by_name(), clock.clone()).await;
    let (source, dest) = with_destination(&h, "ok-a", |arn| ember_store::EventConfigSettings {
        maximum_event_age_s: Some(60),
        on_failure: Some(arn),
        ..Default::default()
    })
    .await;
    // Every execution of the source is throttled.
    h.store
        .set_reserved_concurrency(&source.account_id, &source.name, Some(0))
        .await
        .unwrap();
    h.executor
        .enqueue(&source, "event-1", b"[1]")
        .await
        .unwrap();
    until_queue(&h, "a throttled retry", |due, _| due == Some(T0 + 1_000)).await;
    clock.set(T0 + 60_001);
    poke(&h);
    let records = until_invoked(&h, &dest, 1).await;
    let record = &records[0];
    assert_eq!(record["requestContext"]["condition"], "EventAgeExceeded");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 0);
    assert_eq!(record["requestPayload"], serde_json::json!([1]));
    assert!(record.get("responseContext").is_none(), "{record}");
    assert!(invocations_of(&h, &source).is_empty());
}

#[tokio::test]
async fn a_loop_of_destinations_stops_at_its_bound() {
    let clock = ManualClock::at(T0);
    let h = Harness::start_with_clock(config(2, 512), failing_by_name(), clock.clone()).await;
    let (a, b) = with_destination(&h, "quiet-a", |arn| ember_store::EventConfigSettings {
        on_success: Some(arn),
        ..Default::default()
    })
    .await;
    let back = ember_store::EventConfigSettings {
        on_success: Some(h.executor.function_arn(&a)),
        ..Default::default()
    };
    h.store
        .put_event_invoke_config(&b.account_id, &b.name, "$LATEST", &back)
        .await
        .unwrap();
    h.executor.enqueue(&a, "event-1", b"{}").await.unwrap();
    let bound = crate::events::MAX_CHAIN_DEPTH as usize;
    until("the chain to stop", || {
        invocations_of(&h, &a).len() + invocations_of(&h, &b).len() > bound
    })
    .await;
    until_queue(&h, "the queue empty", |_, queued| queued == 0).await;
    // The client's event, then one destination invocation per link up to the bound.
    assert_eq!(
        invocations_of(&h, &a).len() + invocations_of(&h, &b).len(),
        bound + 1
    );
    // Each link's record carries the one before it.
    let last_b = invocations_of(&h, &b).pop().unwrap();
    assert_eq!(last_b["requestContext"]["condition"], "Success");
    assert_eq!(
        last_b["requestPayload"]["requestContext"]["condition"],
        "Success"
    );
}

#[tokio::test]
async fn a_record_over_the_asynchronous_payload_limit_is_not_sent() {
    let clock = ManualClock::at(T0);
    let h = Harness::start_with_clock(config(2, 512), failing_by_name(), clock.clone()).await;
    let (source, dest) = with_destination(&h, "ok-a", |arn| ember_store::EventConfigSettings {
        on_success: Some(arn),
        ..Default::default()
    })
    .await;
    // 150 KB, echoed: the record holds it twice, over 256 KB.
    let big = format!("\"{}\"", "x".repeat(150 * 1024));
    let big: &'static [u8] = Box::leak(big.into_bytes().into_boxed_slice());
    h.executor.enqueue(&source, "event-1", big).await.unwrap();
    until("the source invoked", || {
        invocations_of(&h, &source).len() == 1
    })
    .await;
    until_queue(&h, "the queue empty", |_, queued| queued == 0).await;
    assert!(invocations_of(&h, &dest).is_empty());
}

// ---- the sizing hook ------------------------------------------------------------------------

#[tokio::test]
async fn after_the_threshold_of_misses_the_next_container_gets_the_new_size() {
    let mut config = config(2, 2048);
    config.sizing_mode = crate::SizingMode::Auto;
    let threshold = config.sizing.threshold as usize;
    // Every execution peaks at 100 MB of 1024: over-provisioned.
    let h = Harness::start(
        config,
        script(|r| {
            invoke_payload(r).map(|p| Answer::Outcome {
                outcome: ember_protocol::InvokeOutcome::Ok {
                    payload: Bytes::copy_from_slice(p),
                },
                peak_mb: 100,
            })
        }),
    )
    .await;
    let f = h.function("a", 1024).await;
    let sized = |h: &Harness| {
        let seen = h.driver.seen();
        seen.created
            .iter()
            .map(|(_, c)| c.function.memory_mb)
            .collect::<Vec<_>>()
    };
    for _ in 0..threshold - 1 {
        h.executor.invoke(request(&f, b"x")).await.unwrap();
    }
    assert_eq!(h.executor.sizing(&f).await.unwrap().effective_mb, 1024);
    assert_eq!(sized(&h), [1024], "resized before the threshold");

    // The threshold-th miss decides; the container it ran in had the old size.
    h.executor.invoke(request(&f, b"x")).await.unwrap();
    let new_mb = h.executor.sizing(&f).await.unwrap().effective_mb;
    assert!(
        new_mb < 1024,
        "no shrink after {threshold} misses: {new_mb}"
    );
    assert_eq!(sized(&h), [1024]);

    let next = h.executor.invoke(request(&f, b"x")).await.unwrap();
    assert_eq!(
        next.start,
        StartKind::ColdContainer,
        "an old container was reused"
    );
    assert_eq!(sized(&h), [1024, new_mb]);
    assert_eq!(next.result.memory_limit_mb, new_mb);
}

// ---- published versions -----------------------------------------------------------------------

#[tokio::test]
async fn a_version_runs_in_containers_of_its_own_and_says_which_ran() {
    let h = Harness::start(config(2, 512), script(|_| None)).await;
    let latest = h.function("a", 128).await;
    let account = latest.account_id.clone();
    let v1 = h
        .store
        .publish_version(&account, "a", ember_store::Publish::default())
        .await
        .unwrap();
    let run = |function: &Function, qualifier: Option<&str>| {
        let request = InvokeRequest {
            qualifier: qualifier.map(str::to_owned),
            ..request(function, b"{}")
        };
        let executor = h.executor.clone();
        async move { executor.invoke(request).await.unwrap() }
    };

    let first = run(&v1, Some("1")).await;
    assert_eq!(first.executed_version, "1");
    assert_ne!(first.start, StartKind::Warm);
    assert!(first.log.starts_with("START RequestId: "), "{}", first.log);
    assert!(first.log.lines().next().unwrap().ends_with("Version: 1"));
    assert_eq!(run(&v1, Some("1")).await.start, StartKind::Warm);
    // $LATEST has the same code, and still cannot use version 1's idle container.
    let on_latest = run(&latest, None).await;
    assert_eq!(on_latest.executed_version, "$LATEST");
    assert_ne!(on_latest.start, StartKind::Warm);
    {
        let seen = h.driver.seen();
        let versions: Vec<&str> = seen
            .created
            .iter()
            .map(|(_, c)| c.function.version.as_str())
            .collect();
        assert_eq!(versions, ["1", "$LATEST"]);
        let arns: Vec<&str> = seen
            .invoked
            .iter()
            .map(|(_, i)| i.invocation.invoked_function_arn.as_str())
            .collect();
        let arn = format!("arn:aws:lambda:us-east-1:{account}:function:a");
        assert_eq!(arns, [format!("{arn}:1"), format!("{arn}:1"), arn.clone()]);
    }

    // An update of $LATEST retires $LATEST's idle containers, not version 1's.
    let updated = h
        .store
        .update_function(&account, "a", None, FunctionChange::Code(b"PK new"))
        .await
        .unwrap();
    h.executor
        .function_changed(&account, "a", Some(&updated.revision_id));
    assert_eq!(run(&v1, Some("1")).await.start, StartKind::Warm);
    assert_ne!(run(&updated, None).await.start, StartKind::Warm);
    // Deleting version 1 retires its idle container.
    h.executor.version_deleted(&account, "a", "1");
    assert_ne!(run(&v1, Some("1")).await.start, StartKind::Warm);
}

/// A run whose lease was taken meanwhile (this server cut off from the store past its lease,
/// and another server claimed the event) ends without storing a second outcome: no log, and
/// the event stays the other claim's, which settles it.
#[tokio::test]
async fn an_event_whose_claim_was_taken_meanwhile_stores_no_second_outcome() {
    let clock = ManualClock::at(T0);
    let h = Harness::start_with_clock(
        config(2, 512),
        script(|r| invoke_payload(r).map(|_| Answer::Ask)),
        clock.clone(),
    )
    .await;
    let f = h.function("a", 128).await;
    h.executor.enqueue(&f, "event-1", b"{}").await.unwrap();
    let call = h.driver.next_call().await;
    // Another server on the same store (a data dir of its own) claims the event once the lease
    // has run out.
    let other_dir = tempfile::tempdir().unwrap();
    let other = ember_store::Store::open_at(h.store.url(), other_dir.path())
        .await
        .unwrap();
    let later = T0 + 3_600_000;
    let taken = other.claim_due_events(later, 10).await.unwrap();
    assert_eq!(taken.len(), 1);
    call.answer(Answer::Serve);
    // The run ends: its container goes back idle, and its settlement is refused.
    until("the run's container idle", || {
        h.executor
            .fleet()
            .vms
            .iter()
            .flat_map(|vm| vm.containers.iter())
            .any(|c| !c.busy)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = h
        .store
        .logs(&f.account_id, &f.name, None, 10)
        .await
        .unwrap();
    assert!(logs.is_empty(), "a second outcome was stored: {logs:?}");
    assert_eq!(h.store.queued_events().await.unwrap(), 1);
    let settled = other
        .settle_event(&taken[0].claim, ember_store::EventSettlement::Done, None)
        .await
        .unwrap();
    assert_eq!(settled, ember_store::Settled::Stored);
    assert_eq!(h.store.queued_events().await.unwrap(), 0);
    other.close().await;
}
