//! `ember fn event-config NAME`: a function's event invoke config (how its `Event` invocations
//! are retried and aged, and where their outcome goes), shown in words or as the JSON of
//! `GetFunctionEventInvokeConfig`. Setting flags change it first: merged into the existing
//! config (`UpdateFunctionEventInvokeConfig`), or a new one put (`PutFunctionEventInvokeConfig`)
//! when there is none; `--delete` deletes it.

use anyhow::Context;
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::client::{Client, ClientError};

#[derive(Debug, clap::Args)]
pub struct EventConfigArgs {
    /// The function: a name, or an ARN.
    name: String,
    /// The version or alias the config is for ($LATEST without one).
    #[arg(long)]
    qualifier: Option<String>,
    /// Set how many times an event whose run fails is retried (0-2).
    #[arg(long)]
    max_retries: Option<i64>,
    /// Set the age in seconds past which a queued event is given up (60-21600).
    #[arg(long)]
    max_age: Option<i64>,
    /// Set the function (a name or an ARN) invoked with the record of each event that
    /// succeeds; "" removes it.
    #[arg(long)]
    on_success: Option<String>,
    /// Set the function (a name or an ARN) invoked with the record of each event given up on;
    /// "" removes it.
    #[arg(long)]
    on_failure: Option<String>,
    /// Delete the config instead.
    #[arg(long, conflicts_with_all = ["max_retries", "max_age", "on_success", "on_failure"])]
    delete: bool,
    /// Print the raw JSON document.
    #[arg(long)]
    json: bool,
}

pub async fn run(client: &Client, args: EventConfigArgs) -> anyhow::Result<()> {
    let mut path = format!(
        "/2019-09-25/functions/{}/event-invoke-config",
        Client::segment(&args.name)
    );
    if let Some(q) = &args.qualifier {
        path.push_str(&format!("?Qualifier={}", Client::segment(q)));
    }
    if args.delete {
        client.json(Method::DELETE, &path, None).await?;
        println!("Deleted the event invoke config of {}", args.name);
        return Ok(());
    }
    let doc = match changes(client, &args).await? {
        None => client.json(Method::GET, &path, None).await,
        Some(body) => {
            match client.json(Method::POST, &path, Some(body.clone())).await {
                Err(ClientError::Aws { status: 404, .. }) if has_function(client, &args).await => {
                    // No config yet: a new one. The function exists, so the 404 was the config's.
                    let mut body = body;
                    if let Some(d) = body.get_mut("DestinationConfig") {
                        strip_empty(d);
                    }
                    client.json(Method::PUT, &path, Some(body)).await
                }
                other => other,
            }
        }
    }?;
    if args.json {
        println!("{doc}");
    } else {
        print!("{}", explain(&doc));
    }
    Ok(())
}

/// The Update body, if any setting flag was given. Destinations named by function name are
/// turned into ARNs (the API takes ARNs only); both destinations are sent whenever one is, the
/// other as it is now, since a DestinationConfig replaces both.
async fn changes(client: &Client, args: &EventConfigArgs) -> anyhow::Result<Option<Value>> {
    let mut body = Map::new();
    if let Some(n) = args.max_retries {
        body.insert("MaximumRetryAttempts".into(), n.into());
    }
    if let Some(s) = args.max_age {
        body.insert("MaximumEventAgeInSeconds".into(), s.into());
    }
    if args.on_success.is_some() || args.on_failure.is_some() {
        let current = current_destinations(client, args).await;
        let mut destinations = Map::new();
        for (key, flag) in [
            ("OnSuccess", &args.on_success),
            ("OnFailure", &args.on_failure),
        ] {
            let arn = match flag {
                Some(f) if f.is_empty() => None,
                Some(f) => Some(function_arn(client, f).await?),
                None => current[key]["Destination"].as_str().map(str::to_owned),
            };
            destinations.insert(
                key.into(),
                match arn {
                    Some(arn) => json!({ "Destination": arn }),
                    None => json!({}),
                },
            );
        }
        body.insert("DestinationConfig".into(), Value::Object(destinations));
    }
    Ok((!body.is_empty()).then_some(Value::Object(body)))
}

/// The config's destinations now (`{}` when it has none, or no config).
async fn current_destinations(client: &Client, args: &EventConfigArgs) -> Value {
    let mut path = format!(
        "/2019-09-25/functions/{}/event-invoke-config",
        Client::segment(&args.name)
    );
    if let Some(q) = &args.qualifier {
        path.push_str(&format!("?Qualifier={}", Client::segment(q)));
    }
    match client.json(Method::GET, &path, None).await {
        Ok(doc) => doc["DestinationConfig"].clone(),
        Err(_) => json!({}),
    }
}

/// A destination's ARN: given, or looked up by the function's name.
async fn function_arn(client: &Client, function: &str) -> anyhow::Result<String> {
    if function.starts_with("arn:") || function.contains("://") {
        return Ok(function.to_owned());
    }
    let path = format!(
        "/2015-03-31/functions/{}/configuration",
        Client::segment(function)
    );
    let config = client
        .json(Method::GET, &path, None)
        .await
        .with_context(|| format!("cannot find the destination function {function}"))?;
    config["FunctionArn"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no FunctionArn for {function}"))
}

async fn has_function(client: &Client, args: &EventConfigArgs) -> bool {
    let path = format!(
        "/2015-03-31/functions/{}/configuration",
        Client::segment(&args.name)
    );
    client.json(Method::GET, &path, None).await.is_ok()
}

/// Drops `{}` destinations from a Put's DestinationConfig (a Put sets only what it names).
fn strip_empty(destinations: &mut Value) {
    if let Some(map) = destinations.as_object_mut() {
        map.retain(|_, d| d.get("Destination").is_some());
    }
}

/// The config, in words.
fn explain(doc: &Value) -> String {
    let setting = |key: &str, default: &str| {
        doc[key]
            .as_u64()
            .map_or_else(|| format!("{default} (default)"), |n| n.to_string())
    };
    let destination = |key: &str| {
        doc["DestinationConfig"][key]["Destination"]
            .as_str()
            .unwrap_or("none")
            .to_owned()
    };
    format!(
        "Event invoke config of {}\n  max retries      {}\n  max age (s)      {}\n  on success       {}\n  on failure       {}\n",
        doc["FunctionArn"].as_str().unwrap_or("?"),
        setting("MaximumRetryAttempts", "2"),
        setting("MaximumEventAgeInSeconds", "21600"),
        destination("OnSuccess"),
        destination("OnFailure"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_set_and_default_settings() {
        let doc = json!({
            "FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:f:$LATEST",
            "MaximumRetryAttempts": 0,
            "DestinationConfig": {"OnSuccess": {}, "OnFailure": {"Destination": "arn:d"}},
        });
        assert_eq!(
            explain(&doc),
            "Event invoke config of arn:aws:lambda:us-east-1:123456789012:function:f:$LATEST\n  \
             max retries      0\n  max age (s)      21600 (default)\n  on success       none\n  \
             on failure       arn:d\n"
        );
    }

    #[test]
    fn a_put_names_only_the_destinations_it_sets() {
        let mut d = json!({"OnSuccess": {}, "OnFailure": {"Destination": "arn:d"}});
        strip_empty(&mut d);
        assert_eq!(d, json!({"OnFailure": {"Destination": "arn:d"}}));
    }
}
