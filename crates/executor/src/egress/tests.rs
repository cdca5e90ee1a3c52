//! A function's egress reaches its containers (its own over the server's default), and a change
//! puts every new invocation in a new environment under the new setting. Fake VMs; no root.

use bytes::Bytes;
use ember_protocol::Egress;
use ember_store::{Function, FunctionEgress};

use crate::testing::{config, invoke_payload, script, until, Answer, Harness};
use crate::{ExecutorConfig, InvokeRequest};

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

/// The egress of each container created so far, in order.
fn created(h: &Harness) -> Vec<(String, Egress)> {
    h.driver
        .seen()
        .created
        .iter()
        .map(|(_, c)| (c.container_id.clone(), c.egress))
        .collect()
}

async fn set(h: &Harness, f: &Function, egress: Option<FunctionEgress>) -> Function {
    h.store
        .set_function_egress(&f.account_id, &f.name, egress)
        .await
        .unwrap();
    h.executor.egress_changed(f, egress);
    h.store
        .function(&f.account_id, &f.name)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn containers_get_the_functions_own_egress_over_the_servers() {
    use Egress::{Allow, Deny};
    // (server default, function's own, container's)
    let cases = [
        (Allow, None, Allow),
        (Deny, None, Deny),
        (Allow, Some(FunctionEgress::Deny), Deny),
        (Deny, Some(FunctionEgress::Allow), Allow),
        (Deny, Some(FunctionEgress::Deny), Deny),
    ];
    for (server, own, want) in cases {
        let h = Harness::start(
            ExecutorConfig {
                egress: server,
                ..config(1, 1024)
            },
            script(|_| None),
        )
        .await;
        let f = h.function("a", 128).await;
        let f = set(&h, &f, own).await;
        assert_eq!(h.executor.egress_of(&f), want);
        h.executor.invoke(request(&f, b"x")).await.unwrap();
        let made = created(&h);
        assert_eq!(made.len(), 1);
        assert_eq!(made[0].1, want, "server {server:?}, function {own:?}");
    }
}

#[tokio::test]
async fn a_change_retires_idle_environments_and_the_next_invocation_gets_a_new_one() {
    let h = Harness::start(config(1, 1024), script(|_| None)).await;
    let f = h.function("a", 128).await;
    h.executor.invoke(request(&f, b"1")).await.unwrap();
    h.executor.invoke(request(&f, b"2")).await.unwrap();
    assert_eq!(created(&h).len(), 1, "warm reuse while nothing changes");
    let first = created(&h)[0].0.clone();

    let f = set(&h, &f, Some(FunctionEgress::Deny)).await;
    until("the idle environment is destroyed", || {
        h.driver.seen().destroyed.contains(&first)
    })
    .await;
    h.executor.invoke(request(&f, b"3")).await.unwrap();
    let made = created(&h);
    assert_eq!(made.len(), 2);
    assert_eq!(made[1].1, Egress::Deny);

    // Back to the server's default (allow): again a new environment.
    let f = set(&h, &f, None).await;
    h.executor.invoke(request(&f, b"4")).await.unwrap();
    let made = created(&h);
    assert_eq!(made.len(), 3);
    assert_eq!(made[2].1, Egress::Allow);
    // Setting what is already in force changes nothing: the server's default is allow.
    let f = set(&h, &f, Some(FunctionEgress::Allow)).await;
    h.executor.invoke(request(&f, b"5")).await.unwrap();
    let f = set(&h, &f, None).await;
    h.executor.invoke(request(&f, b"6")).await.unwrap();
    assert_eq!(created(&h).len(), 3);
}

#[tokio::test]
async fn an_environment_busy_during_a_change_is_never_reused() {
    let h = Harness::start(
        config(1, 1024),
        script(|r| {
            invoke_payload(r)
                .filter(|p| *p == b"slow")
                .map(|_| Answer::Ask)
        }),
    )
    .await;
    let f = h.function("a", 128).await;
    let busy = {
        let (executor, request) = (h.executor.clone(), request(&f, b"slow"));
        tokio::spawn(async move { executor.invoke(request).await })
    };
    let call = h.driver.next_call().await;
    let f = set(&h, &f, Some(FunctionEgress::Deny)).await;
    call.answer(Answer::Serve);
    busy.await.unwrap().unwrap();
    h.executor.invoke(request(&f, b"after")).await.unwrap();
    let made = created(&h);
    assert_eq!(made.len(), 2, "the old environment is not reused: {made:?}");
    assert_eq!(made[1].1, Egress::Deny);
    let invoked = h
        .driver
        .seen()
        .invoked
        .last()
        .unwrap()
        .1
        .container_id
        .clone();
    assert_eq!(invoked, made[1].0);
}

/// The ids of the containers pinned to `function`'s qualifier `1`.
fn pinned(h: &Harness, function: &Function) -> Vec<String> {
    let pin = crate::provisioned::pin(&function.account_id, &function.name, "1");
    let mut ids: Vec<String> = h
        .executor
        .fleet()
        .vms
        .iter()
        .flat_map(|vm| vm.containers.iter())
        .filter(|c| c.provisioned.as_deref() == Some(pin.as_str()))
        .map(|c| c.container_id.clone())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn provisioned_environments_are_replaced_under_the_new_setting() {
    let h = Harness::start(config(2, 1024), script(|_| None)).await;
    let f = h.function("a", 128).await;
    h.executor.provision(&f, "1", 2);
    until("two provisioned", || pinned(&h, &f).len() == 2).await;
    let before = pinned(&h, &f);

    let f = set(&h, &f, Some(FunctionEgress::Deny)).await;
    until("two new provisioned", || {
        let now = pinned(&h, &f);
        now.len() == 2 && now.iter().all(|id| !before.contains(id))
    })
    .await;
    for id in &before {
        assert!(
            h.driver.seen().destroyed.contains(id),
            "{id} was not retired"
        );
    }
    let egress: Vec<Egress> = created(&h)
        .into_iter()
        .filter(|(id, _)| pinned(&h, &f).contains(id))
        .map(|(_, e)| e)
        .collect();
    assert_eq!(egress, vec![Egress::Deny, Egress::Deny]);
    // An invocation under the new setting is served warm by one of them.
    let made = created(&h).len();
    let response = h.executor.invoke(request(&f, b"x")).await.unwrap();
    assert_eq!(response.start, crate::StartKind::Warm);
    assert_eq!(created(&h).len(), made);
    let view = h.executor.provisioned(&f.account_id, &f.name, "1").unwrap();
    assert_eq!(view.requested, 2);
}
