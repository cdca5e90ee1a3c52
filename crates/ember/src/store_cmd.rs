//! `ember store migrate|check` and the `--store` flag that `ember serve` and `ember accounts`
//! share: where the metadata lives (`sqlite://PATH`, or `postgres://USER@HOST/DB` for several
//! hosts sharing one database); the embedded default is `ember.db` in the data dir.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ember_store::{SchemaStatus, Store, StoreUrl};

/// The store's location, as `ember serve`, `ember accounts` and `ember store` take it.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Where the metadata lives: sqlite://PATH, or postgres://USER[:PASSWORD]@HOST[:PORT]/DB
    /// shared by several hosts [default: sqlite://<data-dir>/ember.db].
    #[arg(long, env = "EMBER_STORE", value_name = "URL")]
    pub store: Option<StoreUrl>,
}

impl StoreArgs {
    /// The URL, or the embedded default in `data_dir`.
    pub fn url(&self, data_dir: &Path) -> StoreUrl {
        self.store
            .clone()
            .unwrap_or_else(|| StoreUrl::in_data_dir(data_dir))
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum StoreCommand {
    /// Apply the migrations the database has not had yet (`ember serve` also does at start);
    /// safe to run while servers are up, and from several hosts at once.
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, env = "EMBER_DATA_DIR", default_value = "./.ember")]
        data_dir: PathBuf,
    },
    /// Check that the database answers and which migrations it has; exits non-zero unless its
    /// schema is the one this Ember serves.
    Check {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, env = "EMBER_DATA_DIR", default_value = "./.ember")]
        data_dir: PathBuf,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(command: StoreCommand) -> anyhow::Result<()> {
    match command {
        StoreCommand::Migrate { store, data_dir } => {
            let url = store.url(&data_dir);
            let status = Store::migrate(&url)
                .await
                .with_context(|| format!("cannot migrate the store at {url}"))?;
            println!(
                "{url}: schema at migration {} (this Ember's newest: {})",
                version(&status),
                status.latest
            );
            ensure_current(&status)
        }
        StoreCommand::Check {
            store,
            data_dir,
            json,
        } => {
            let url = store.url(&data_dir);
            let status = Store::check(&url)
                .await
                .with_context(|| format!("cannot reach the store at {url}"))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "Store": status.backend,
                        "Url": url.to_string(),
                        "SchemaVersion": status.applied,
                        "Latest": status.latest,
                        "Pending": status.pending,
                        "Unknown": status.unknown,
                        "Changed": status.mismatched,
                        "Current": status.is_current(),
                    })
                );
            } else {
                println!("{url}: reachable ({})", status.backend);
                println!(
                    "schema at migration {}, this Ember's newest {}",
                    version(&status),
                    status.latest
                );
            }
            ensure_current(&status)
        }
    }
}

fn version(status: &SchemaStatus) -> String {
    status
        .applied
        .map_or_else(|| "none".to_owned(), |v| v.to_string())
}

/// Fails, saying what to do, unless the schema is the one this Ember serves.
fn ensure_current(status: &SchemaStatus) -> anyhow::Result<()> {
    anyhow::ensure!(
        status.unknown.is_empty(),
        "the database has migrations this Ember does not know ({:?}): it was migrated by a \
         newer Ember; run that one",
        status.unknown
    );
    anyhow::ensure!(
        status.mismatched.is_empty(),
        "migrations {:?} were applied with a different text, or failed half-way",
        status.mismatched
    );
    anyhow::ensure!(
        status.pending.is_empty(),
        "migrations {:?} are pending: run `ember store migrate`",
        status.pending
    );
    Ok(())
}
