//! The blob collector raced against the writes that add blobs: functions created, their code
//! replaced, created again under a taken name (and refused), and deleted, all at once, many
//! times over, with packages shared between functions and re-uploaded while the function that
//! held them is deleted, and versions published from them and deleted. After every round, no
//! committed function or published version points at a missing blob.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::spec;
use ember_store::{Function, FunctionChange, Publish, Store, StoreError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Functions in play: each round does one or two things to each, concurrently.
const SLOTS: usize = 8;
/// Rounds of concurrent writes.
const ROUNDS: usize = 100;

#[derive(Debug, Clone)]
enum Op {
    Create(String, Vec<u8>),
    UpdateCode(String, Vec<u8>),
    Delete(String),
    Publish(String),
    DeleteVersion(String, u64),
}

/// Runs one write; the outcomes a race allows (a name taken or gone meanwhile) are fine.
async fn run(store: &Store, account: &str, op: Op) {
    let result = match &op {
        Op::Create(name, zip) => store
            .create_function(account, name, &spec(), zip)
            .await
            .map(drop),
        Op::UpdateCode(name, zip) => store
            .update_function(account, name, None, FunctionChange::Code(zip))
            .await
            .map(drop),
        Op::Delete(name) => store.delete_function(account, name).await,
        Op::Publish(name) => store
            .publish_version(account, name, Publish::default())
            .await
            .map(drop),
        Op::DeleteVersion(name, version) => store.delete_version(account, name, *version).await,
    };
    match result {
        Ok(()) | Err(StoreError::Conflict(_) | StoreError::NotFound(_)) => {}
        Err(e) => panic!("{op:?}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_collector_never_takes_a_blob_whose_row_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let account = store
        .create_account("alice", false)
        .await
        .unwrap()
        .account_id;
    let mut rng = StdRng::seed_from_u64(14);
    let mut fresh = 0u64;
    let mut new_package = move || {
        fresh += 1;
        format!("package {fresh}").into_bytes()
    };
    let mut writes = 0usize;
    for round in 0..ROUNDS {
        let live = store.list_functions(&account, None, 100).await.unwrap();
        // Packages of functions alive now: some are about to be deleted (and their blob
        // collected) while another function is created or updated with the same bytes.
        let mut live_packages = Vec::new();
        for f in &live {
            live_packages.push(store.code(&f.code_sha256).await.unwrap());
        }
        let mut ops = Vec::new();
        for slot in 0..SLOTS {
            let name = format!("f{slot}");
            let exists = live.iter().any(|f| f.name == name);
            let package = |rng: &mut StdRng, fresh: &mut dyn FnMut() -> Vec<u8>| {
                if !live_packages.is_empty() && rng.gen_bool(0.5) {
                    live_packages[rng.gen_range(0..live_packages.len())].clone()
                } else {
                    fresh()
                }
            };
            for _ in 0..rng.gen_range(1..=2) {
                let op = match (exists, rng.gen_range(0..6)) {
                    (false, _) | (true, 0) => {
                        // On a taken name, a refused create whose package must go, unless
                        // another function uses the same bytes.
                        Op::Create(name.clone(), package(&mut rng, &mut new_package))
                    }
                    (true, 1) | (true, 2) => {
                        Op::UpdateCode(name.clone(), package(&mut rng, &mut new_package))
                    }
                    (true, 3) => Op::Publish(name.clone()),
                    (true, 4) => Op::DeleteVersion(name.clone(), rng.gen_range(1..4)),
                    (true, _) => Op::Delete(name.clone()),
                };
                ops.push(op);
            }
        }
        writes += ops.len();
        let tasks: Vec<_> = ops
            .into_iter()
            .map(|op| {
                let store = store.clone();
                let account = account.clone();
                tokio::spawn(async move { run(&store, &account, op).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        for f in all_versions(&store, &account).await {
            match store.code(&f.code_sha256).await {
                Ok(bytes) => assert_eq!(bytes.len() as u64, f.code_size, "round {round}"),
                Err(e) => panic!(
                    "round {round}: function {}:{} points at a missing blob {}: {e}",
                    f.name, f.version, f.code_sha256
                ),
            }
        }
    }
    assert!(writes >= ROUNDS * SLOTS);
    // Nothing unreferenced is left behind either, once the writes are over.
    let live = all_versions(&store, &account).await;
    assert!(
        live.iter().any(|f| f.version != "$LATEST"),
        "some versions were published"
    );
    let blobs = ember_store::BlobStore::open(&dir.path().join("blobs"))
        .unwrap()
        .list()
        .unwrap();
    let mut referenced: Vec<String> = live.iter().map(|f| f.code_sha256.clone()).collect();
    referenced.sort();
    referenced.dedup();
    let mut blobs = blobs;
    blobs.sort();
    assert_eq!(blobs, referenced);
}

/// Every function of the account with all its published versions.
async fn all_versions(store: &Store, account: &str) -> Vec<Function> {
    store
        .list_function_versions(account, None, 10_000)
        .await
        .unwrap()
}
