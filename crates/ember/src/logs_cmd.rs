//! `ember logs FN [--follow]`: prints a function's invocation logs (START to REPORT, with the
//! function's own output between), oldest first; `--follow` keeps printing new ones.

use std::time::Duration;

use anyhow::Context;
use reqwest::Method;

use crate::client::Client;

/// How often `--follow` asks for new logs.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The function's name or ARN.
    name: String,
    /// Keep printing logs of new invocations until interrupted.
    #[arg(long, short = 'f')]
    follow: bool,
    /// How many of the newest invocations to print first (1-1000).
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Print each invocation as a JSON line: {"Seq","RequestId","Timestamp","Message"}.
    #[arg(long)]
    json: bool,
}

pub async fn run(client: &Client, args: LogsArgs) -> anyhow::Result<()> {
    let base = format!("/ember/v1/functions/{}/logs", Client::segment(&args.name));
    let mut after = print_page(client, &format!("{base}?Limit={}", args.limit), args.json).await?;
    if !args.follow {
        return Ok(());
    }
    loop {
        tokio::time::sleep(FOLLOW_EVERY).await;
        after = print_page(
            client,
            &format!("{base}?After={after}&Limit=1000"),
            args.json,
        )
        .await?;
    }
}

/// Prints one page of logs and returns the cursor after it.
async fn print_page(client: &Client, path: &str, json: bool) -> anyhow::Result<i64> {
    let page = client.json(Method::GET, path, None).await?;
    let events = page["Events"]
        .as_array()
        .context("Ember sent logs without Events")?;
    for event in events {
        if json {
            println!("{event}");
        } else if let Some(message) = event["Message"].as_str() {
            print!("{message}");
        }
    }
    page["NextAfter"]
        .as_i64()
        .context("Ember sent logs without NextAfter")
}
