//! `ember serve`: takes the data dir's lock, opens the store, makes the admin account on first
//! start, and serves the API until SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};

use crate::credentials::{self, Keys};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "EMBER_LISTEN", default_value = crate::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Directory for Ember's state: database, code packages, credentials.
    #[arg(long, env = "EMBER_DATA_DIR", default_value = "./.ember")]
    data_dir: PathBuf,
    /// AWS region written into ARNs.
    #[arg(long, env = "EMBER_REGION", default_value = "us-east-1")]
    region: String,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EMBER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let _lock = lock_data_dir(&args.data_dir)?;

    let store = ember_store::Store::open(&args.data_dir)
        .await
        .with_context(|| format!("cannot open the store in {}", args.data_dir.display()))?;
    store
        .recover()
        .await
        .context("cannot clean up after the previous run")?;
    let first_start = ensure_admin_credentials(&store, &args.data_dir, &args.region).await?;

    let config = ember_api::ApiConfig {
        region: args.region.clone(),
        ..ember_api::ApiConfig::default()
    };
    let state = ember_api::AppState::new(store.clone(), &config).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    print_banner(&args.data_dir, addr, &args.region, first_start);
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "ember is serving");

    ember_api::serve(listener, state, shutdown_signal())
        .await
        .context("the HTTP server failed")?;
    store.close().await;
    tracing::info!("ember stopped");
    Ok(())
}

/// Makes the admin account on first start and writes its keys. If the credentials file is
/// missing later (deleted, or the server died between making the account and writing the
/// file), the admin account gets a fresh key pair and the file is written again. Returns
/// whether the admin account was created now.
async fn ensure_admin_credentials(
    store: &ember_store::Store,
    data_dir: &Path,
    region: &str,
) -> anyhow::Result<bool> {
    let path = credentials::path_in(data_dir);
    let (keys, created) = match store.admin_account_id().await? {
        None => (store.create_account("admin", true).await?, true),
        Some(_) if path.exists() => return Ok(false),
        Some(admin) => {
            tracing::warn!(path = %path.display(), "admin credentials file missing; issuing new admin keys");
            (store.create_access_key(&admin).await?, false)
        }
    };
    let keys = Keys {
        access_key_id: keys.access_key_id,
        secret_access_key: keys.secret_access_key,
    };
    credentials::write(&path, &keys, region)?;
    Ok(created)
}

/// Holds an exclusive lock on `<data-dir>/ember.lock` for the server's lifetime, so that a
/// second server on the same data dir refuses to start. The kernel drops it if we die.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<Flock<std::fs::File>> {
    let path = data_dir.join("ember.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((file, _)) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            drop(file);
            anyhow::bail!(
                "another ember server (pid {}) is already using data dir {}",
                holder.trim(),
                data_dir.display()
            );
        }
    };
    lock.set_len(0)?;
    writeln!(&mut *lock, "{}", std::process::id())?;
    Ok(lock)
}

fn print_banner(data_dir: &Path, addr: SocketAddr, region: &str, first_start: bool) {
    let creds = credentials::path_in(data_dir);
    let creds = creds.canonicalize().unwrap_or(creds);
    if first_start {
        println!(
            "Created the admin account; its keys are in {}",
            creds.display()
        );
    }
    println!(
        "Ember is listening on http://{addr}\n\
         Use it with the AWS CLI or boto3:\n  \
         export AWS_SHARED_CREDENTIALS_FILE={} AWS_DEFAULT_REGION={region}\n  \
         aws lambda list-functions --endpoint-url http://{addr}",
        creds.display()
    );
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop ember with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
