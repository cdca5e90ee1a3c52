//! The `ember` binary: `ember serve` runs the platform; every other command is a client of its
//! signed API (or, for `accounts`, of the data dir's store).

#![forbid(unsafe_code)]

mod blobs;
mod console_args;
mod endpoints;
mod event_config_cmd;
mod fleet_cmd;
mod fn_cmd;
mod layer_cmd;
mod logs_cmd;
mod metrics;
mod net_flags;
mod network;
mod network_cmd;
mod policy_cmd;
mod serve;
mod sizing_cmd;
mod store_cmd;
mod tags_cmd;
mod url_cmd;
mod versions_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ember_client::{self as client, credentials};

/// mimalloc rather than glibc's malloc: the server allocates and frees many small buffers on every
/// request, and mimalloc serves them with less CPU, for a larger resident size (BENCHMARKS.md,
/// Invoke, "The allocator"). The agent keeps the system allocator: one runs in every VM, where its
/// resident size counts against the VM's memory.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The default listen address, also the CLI's default endpoint.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8900";

#[derive(Debug, Parser)]
#[command(
    name = "ember",
    version,
    about = "Ember: self-hosted, Lambda-compatible serverless compute"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Ember server (control plane and execution) on this machine.
    Serve(serve::ServeArgs),
    /// Manage accounts (writes the store directly: the data dir's, or --store's).
    Accounts {
        #[command(subcommand)]
        command: AccountsCommand,
    },
    /// Migrate or check the store's database (the data dir's, or --store's).
    Store {
        #[command(subcommand)]
        command: store_cmd::StoreCommand,
    },
    /// Manage and invoke functions through the server's signed API.
    #[command(name = "fn")]
    Fn {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: fn_cmd::FnCommand,
    },
    /// Publish, list, share and delete Lambda layers.
    Layer {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: layer_cmd::LayerCommand,
    },
    /// Measure Ember's performance against a running server.
    Bench {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: ember_bench::BenchCommand,
    },
    /// Print a function's invocation logs; --follow keeps printing new ones.
    Logs {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(flatten)]
        args: logs_cmd::LogsArgs,
    },
    /// Show the VM fleet: warming and active pools, request rate, replenish count (admin only).
    Fleet {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(flatten)]
        args: fleet_cmd::FleetArgs,
    },
}

#[derive(Debug, Subcommand)]
enum AccountsCommand {
    /// Create an account and print its keys.
    Create {
        /// A unique name for the account.
        name: String,
        /// Give the account the administrator role.
        #[arg(long)]
        admin: bool,
        /// Print {"AccountId","AccessKeyId","SecretAccessKey"} as JSON.
        #[arg(long)]
        json: bool,
        #[arg(long, env = "EMBER_DATA_DIR", default_value = "./.ember")]
        data_dir: PathBuf,
        #[command(flatten)]
        store: store_cmd::StoreArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Command::Serve(args) = &cli.command {
        builder.worker_threads(args.worker_threads());
        // Before the runtime's threads exist, so that they inherit it.
        if let Err(err) = ember_sandbox::sched::set_policy(args.scheduling()) {
            eprintln!("warning: cannot set the scheduling policy ({err}); keeping the default");
        }
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Accounts {
                command:
                    AccountsCommand::Create {
                        name,
                        admin,
                        json,
                        data_dir,
                        store,
                    },
            } => create_account(&name, admin, json, &data_dir, &store).await,
            Command::Store { command } => store_cmd::run(command).await,
            Command::Fn { client, command } => fn_cmd::run(client, command).await,
            Command::Layer { client, command } => layer_cmd::run(client, command).await,
            Command::Bench { client, command } => ember_bench::run(&client, command).await,
            Command::Logs { client, args } => {
                let client = client::Client::new(&client)?;
                logs_cmd::run(&client, args).await
            }
            Command::Fleet { client, args } => {
                let client = client::Client::new(&client)?;
                fleet_cmd::run(&client, args).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn create_account(
    name: &str,
    admin: bool,
    json: bool,
    data_dir: &std::path::Path,
    store: &store_cmd::StoreArgs,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b)),
        "account names are 1-64 characters of letters, digits and -_.@"
    );
    let store = ember_store::Store::open_at(&store.url(data_dir), data_dir).await?;
    let keys = match store.create_account(name, admin).await {
        Err(ember_store::StoreError::Conflict(_)) => {
            anyhow::bail!("an account named {name:?} already exists")
        }
        other => other?,
    };
    store.close().await;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "AccountId": keys.account_id,
                "AccessKeyId": keys.access_key_id,
                "SecretAccessKey": keys.secret_access_key,
            })
        );
    } else {
        println!("Created account {} ({})", keys.name, keys.account_id);
        println!("  aws_access_key_id = {}", keys.access_key_id);
        println!("  aws_secret_access_key = {}", keys.secret_access_key);
        println!("The secret is shown only now; keep it safe.");
    }
    Ok(())
}
