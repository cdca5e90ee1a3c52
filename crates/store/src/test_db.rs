//! The store's unit tests run against both backends: [`backend_tests!`] makes each test twice,
//! `NAME::sqlite` and `NAME::postgres`, and [`open`] opens the store the running one names.
//!
//! PostgreSQL is a throwaway cluster this test process starts once, on loopback (`initdb` and
//! `postgres` from Debian's `postgresql` package, run as the `postgres` user when the tests run
//! as root, which PostgreSQL refuses to run as), with one database per test data dir. The
//! cluster stops and its files go when the test process exits (its wrapper shell waits for its
//! stdin, a pipe from this process, to close). `EMBER_TEST_POSTGRES_URL`
//! (`postgres://USER@HOST:PORT`, a role that may create databases) names a running server to use
//! instead.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::Connection as _;

use crate::{Store, StoreUrl};

/// Which backend a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

tokio::task_local! {
    static BACKEND: Backend;
}

/// Runs a test's body with `backend` as the one [`open`] uses.
pub(crate) async fn run(backend: Backend, body: impl std::future::Future<Output = ()>) {
    BACKEND.scope(backend, body).await
}

/// The backend of the running test (SQLite outside [`run`]).
pub(crate) fn backend() -> Backend {
    BACKEND.try_with(|b| *b).unwrap_or(Backend::Sqlite)
}

/// Makes each `#[tokio::test] async fn NAME() { … }` into `NAME::sqlite` and `NAME::postgres`.
macro_rules! backend_tests {
    ($(#[$attr:meta])* async fn $name:ident() $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(#[$attr])*
            async fn sqlite() {
                $crate::test_db::run($crate::test_db::Backend::Sqlite, async move $body).await
            }

            $(#[$attr])*
            async fn postgres() {
                $crate::test_db::run($crate::test_db::Backend::Postgres, async move $body).await
            }
        }
    };
}
pub(crate) use backend_tests;

/// Opens the store of the data dir `dir` on the running test's backend: SQLite in `dir`, or the
/// PostgreSQL database made for `dir` (the same one again when `dir` is opened again, as a
/// restarted server opens its database), with the code packages in `dir` either way.
pub(crate) async fn open(dir: &Path) -> Store {
    Store::open_at(&url(dir).await, dir).await.unwrap()
}

/// The store URL [`open`] uses for `dir`, creating its PostgreSQL database on first use.
pub(crate) async fn url(dir: &Path) -> StoreUrl {
    match backend() {
        Backend::Sqlite => StoreUrl::in_data_dir(dir),
        Backend::Postgres => StoreUrl::Postgres(database_for(dir).await),
    }
}

static DATABASES: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();
static NEXT_DATABASE: AtomicU64 = AtomicU64::new(0);

async fn database_for(dir: &Path) -> String {
    let server = server();
    if let Some(url) = DATABASES
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .get(dir)
    {
        return url.clone();
    }
    let name = format!(
        "ember_test_{}_{}",
        std::process::id(),
        NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .unwrap();
    sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    admin.close().await.unwrap();
    let url = format!("{server}/{name}");
    DATABASES
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .insert(dir.to_path_buf(), url.clone());
    url
}

/// The server's URL without a database (`postgres://USER@HOST:PORT`).
fn server() -> String {
    static SERVER: OnceLock<(String, Option<Mutex<Child>>)> = OnceLock::new();
    SERVER
        .get_or_init(|| match std::env::var("EMBER_TEST_POSTGRES_URL") {
            Ok(url) => (url.trim_end_matches('/').to_owned(), None),
            Err(_) => {
                let (url, child) = start_cluster();
                (url, Some(Mutex::new(child)))
            }
        })
        .0
        .clone()
}

/// The directory of PostgreSQL's programs: `initdb` on `PATH`, or Debian's newest
/// `/usr/lib/postgresql/N/bin`.
fn bin_dir() -> PathBuf {
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
                return dir;
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).expect(
        "the store's tests need PostgreSQL's initdb and postgres (apt-get install -y postgresql, \
         as scripts/test does), or EMBER_TEST_POSTGRES_URL naming a running server",
    )
}

/// Runs `program` as the `postgres` user when this process is root (PostgreSQL refuses to run
/// as root), else as this user.
fn command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        let id = Command::new("id").arg("-u").output().unwrap();
        String::from_utf8_lossy(&id.stdout).trim() == "0"
    })
}

fn start_cluster() -> (String, Child) {
    let bin = bin_dir();
    let dir = tempfile::Builder::new()
        .prefix("ember-test-pg-")
        .tempdir()
        .unwrap()
        .keep();
    if is_root() {
        let owner = Command::new("id")
            .args(["-u", "postgres"])
            .output()
            .unwrap();
        let uid: u32 = String::from_utf8_lossy(&owner.stdout)
            .trim()
            .parse()
            .unwrap();
        std::os::unix::fs::chown(&dir, Some(uid), None).unwrap();
    }
    let data = dir.join("data");
    let init = command(&bin.join("initdb"))
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "-D",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    // A port free now; another process could take it before the server binds, so a failed
    // start tries another.
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut postgres = Command::new(bin.join("postgres"));
        postgres
            .arg("-D")
            .arg(&data)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "max_connections=300", "-c", "log_min_messages=fatal"])
            .arg("-k")
            .arg(&dir)
            .args(["-p", &port.to_string()]);
        // The wrapper (run as the server's user, so that its signal reaches the server itself)
        // stops the server and removes its files when this process's end of its stdin closes,
        // which it does when this process exits, however it exits.
        let script = format!(
            "{} >{dir}/log 2>&1 & pid=$!; read _ignored; kill -INT $pid; wait $pid; rm -rf {dir}",
            shell_words(&postgres),
            dir = dir.display(),
        );
        let child = command(Path::new("sh"))
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let url = format!("postgres://postgres@127.0.0.1:{port}");
        if wait_ready(&format!("{url}/postgres")) {
            return (url, child);
        }
        drop(child);
    }
    panic!(
        "the test PostgreSQL cluster did not start; see {}/log",
        dir.display()
    );
}

/// `command` as one line of shell, each word single-quoted.
fn shell_words(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|w| format!("'{}'", w.to_string_lossy().replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn wait_ready(url: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // On a thread of its own: the caller may be inside a test's runtime, which cannot block on
    // another.
    let url = url.to_owned();
    std::thread::spawn(move || {
        runtime.block_on(async {
            while Instant::now() < deadline {
                if let Ok(conn) = sqlx::PgConnection::connect(&url).await {
                    let _ = conn.close().await;
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        })
    })
    .join()
    .unwrap()
}
