//! `ember fn publish`, `ember fn versions` and `ember fn alias …`: published versions and
//! aliases through the signed Lambda API.

use anyhow::Context;
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::client::Client;

/// `ember fn alias …`.
#[derive(Debug, clap::Subcommand)]
pub enum AliasCommand {
    /// Create an alias pointing at a version, optionally routing a share to a second one.
    Create {
        function: String,
        name: String,
        /// The version it runs: a number, or $LATEST.
        #[arg(long)]
        version: String,
        #[command(flatten)]
        args: AliasArgs,
    },
    /// Point an alias elsewhere, change its description or its weights.
    Update {
        function: String,
        name: String,
        /// The version it runs: a number, or $LATEST.
        #[arg(long)]
        version: Option<String>,
        /// Remove the alias's routing weights: all invocations run --version.
        #[arg(long, conflicts_with = "weight")]
        no_weights: bool,
        /// Fail unless the alias's revision is still this one.
        #[arg(long)]
        revision_id: Option<String>,
        #[command(flatten)]
        args: AliasArgs,
    },
    /// Show an alias.
    Get {
        function: String,
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete an alias.
    Delete { function: String, name: String },
    /// List a function's aliases.
    List {
        function: String,
        /// Only the aliases that run this version.
        #[arg(long)]
        version: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// What creating and updating an alias share.
#[derive(Debug, clap::Args)]
pub struct AliasArgs {
    #[arg(long)]
    description: Option<String>,
    /// Send this share (0.0 to 1.0) of invocations to another published version:
    /// VERSION=WEIGHT, e.g. 2=0.1.
    #[arg(long, value_name = "VERSION=WEIGHT")]
    weight: Vec<String>,
    #[arg(long)]
    json: bool,
}

impl AliasArgs {
    fn apply(&self, body: &mut Value) -> anyhow::Result<()> {
        if let Some(d) = &self.description {
            body["Description"] = d.clone().into();
        }
        if !self.weight.is_empty() {
            let mut weights = Map::new();
            for pair in &self.weight {
                let (version, weight) = pair
                    .split_once('=')
                    .with_context(|| format!("--weight {pair:?} is not VERSION=WEIGHT"))?;
                let weight: f64 = weight
                    .parse()
                    .with_context(|| format!("--weight {pair:?}: {weight:?} is not a number"))?;
                weights.insert(version.to_owned(), weight.into());
            }
            body["RoutingConfig"] = json!({ "AdditionalVersionWeights": weights });
        }
        Ok(())
    }
}

/// `ember fn publish NAME`: publishes `$LATEST` as a version.
pub async fn publish(
    client: &Client,
    name: &str,
    description: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let mut body = json!({});
    if let Some(d) = description {
        body["Description"] = d.into();
    }
    let path = format!("/2015-03-31/functions/{}/versions", Client::segment(name));
    let v = client.json(Method::POST, &path, Some(body)).await?;
    if json {
        println!("{v}");
    } else {
        println!(
            "Version {} of {} ({})",
            text(&v["Version"]),
            name,
            text(&v["FunctionArn"])
        );
        println!("  code sha256    {}", text(&v["CodeSha256"]));
        println!("  revision       {}", text(&v["RevisionId"]));
        if let Some(line) = crate::fn_cmd::snap_start_line(&v) {
            println!("  snap start     {line}");
        }
    }
    Ok(())
}

/// `ember fn versions NAME`: `$LATEST` and every published version.
pub async fn versions(client: &Client, name: &str, json: bool) -> anyhow::Result<()> {
    let path = format!("/2015-03-31/functions/{}/versions", Client::segment(name));
    let all = pages(client, &path, "Versions").await?;
    if json {
        println!("{}", json!({ "Versions": all }));
        return Ok(());
    }
    println!(
        "{:<9} {:<45} {:>7}  {:<29} {:<9} DESCRIPTION",
        "VERSION", "CODE SHA256", "MEMORY", "LAST MODIFIED", "SNAPSTART"
    );
    for v in &all {
        println!(
            "{:<9} {:<45} {:>7}  {:<29} {:<9} {}",
            text(&v["Version"]),
            text(&v["CodeSha256"]),
            v["MemorySize"],
            text(&v["LastModified"]),
            text(&v["SnapStart"]["OptimizationStatus"]),
            text(&v["Description"])
        );
    }
    Ok(())
}

/// `ember fn alias …`.
pub async fn alias(client: &Client, command: AliasCommand) -> anyhow::Result<()> {
    let base = |function: &str| {
        format!(
            "/2015-03-31/functions/{}/aliases",
            Client::segment(function)
        )
    };
    match command {
        AliasCommand::Create {
            function,
            name,
            version,
            args,
        } => {
            let mut body = json!({ "Name": name, "FunctionVersion": version });
            args.apply(&mut body)?;
            let a = client
                .json(Method::POST, &base(&function), Some(body))
                .await?;
            print_alias(&a, args.json, "Created");
        }
        AliasCommand::Update {
            function,
            name,
            version,
            no_weights,
            revision_id,
            args,
        } => {
            let mut body = json!({});
            args.apply(&mut body)?;
            if let Some(v) = version {
                body["FunctionVersion"] = v.into();
            }
            if no_weights {
                body["RoutingConfig"] = json!({ "AdditionalVersionWeights": {} });
            }
            if let Some(r) = revision_id {
                body["RevisionId"] = r.into();
            }
            let path = format!("{}/{}", base(&function), Client::segment(&name));
            let a = client.json(Method::PUT, &path, Some(body)).await?;
            print_alias(&a, args.json, "Updated");
        }
        AliasCommand::Get {
            function,
            name,
            json,
        } => {
            let path = format!("{}/{}", base(&function), Client::segment(&name));
            let a = client.json(Method::GET, &path, None).await?;
            print_alias(&a, json, "Alias");
        }
        AliasCommand::Delete { function, name } => {
            let path = format!("{}/{}", base(&function), Client::segment(&name));
            client.json(Method::DELETE, &path, None).await?;
            println!("Deleted alias {name} of {function}");
        }
        AliasCommand::List {
            function,
            version,
            json,
        } => {
            let path = match &version {
                Some(v) => format!("{}?FunctionVersion={}", base(&function), Client::segment(v)),
                None => base(&function),
            };
            let all = pages(client, &path, "Aliases").await?;
            if json {
                println!("{}", json!({ "Aliases": all }));
                return Ok(());
            }
            println!(
                "{:<30} {:<9} {:<20} DESCRIPTION",
                "NAME", "VERSION", "WEIGHTS"
            );
            for a in &all {
                println!(
                    "{:<30} {:<9} {:<20} {}",
                    text(&a["Name"]),
                    text(&a["FunctionVersion"]),
                    weights(&a["RoutingConfig"]),
                    text(&a["Description"])
                );
            }
        }
    }
    Ok(())
}

/// Every page of a listing at `path` (which may carry a query already), its `key` entries.
async fn pages(client: &Client, path: &str, key: &str) -> anyhow::Result<Vec<Value>> {
    let mut all = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let url = match &marker {
            Some(m) => {
                let join = if path.contains('?') { '&' } else { '?' };
                format!("{path}{join}Marker={}", Client::segment(m))
            }
            None => path.to_owned(),
        };
        let page = client.json(Method::GET, &url, None).await?;
        if let Some(items) = page[key].as_array() {
            all.extend(items.iter().cloned());
        }
        match page["NextMarker"].as_str() {
            Some(m) => marker = Some(m.to_owned()),
            None => return Ok(all),
        }
    }
}

fn print_alias(a: &Value, json: bool, verb: &str) {
    if json {
        println!("{a}");
        return;
    }
    println!("{verb} {}", text(&a["AliasArn"]));
    println!("  version        {}", text(&a["FunctionVersion"]));
    let routed = weights(&a["RoutingConfig"]);
    if !routed.is_empty() {
        println!("  weights        {routed}");
    }
    println!("  description    {}", text(&a["Description"]));
    println!("  revision       {}", text(&a["RevisionId"]));
}

/// `2=0.1` for an alias routing 10% to version 2; empty without routing.
fn weights(routing: &Value) -> String {
    routing["AdditionalVersionWeights"]
        .as_object()
        .map(|w| {
            w.iter()
                .map(|(v, weight)| format!("{v}={weight}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_become_the_routing_config() {
        let args = AliasArgs {
            description: Some("canary".into()),
            weight: vec!["2=0.1".into()],
            json: false,
        };
        let mut body = json!({});
        args.apply(&mut body).unwrap();
        assert_eq!(
            body,
            json!({
                "Description": "canary",
                "RoutingConfig": {"AdditionalVersionWeights": {"2": 0.1}}
            })
        );
        for bad in ["2", "2=ten"] {
            let args = AliasArgs {
                description: None,
                weight: vec![bad.into()],
                json: false,
            };
            assert!(args.apply(&mut json!({})).is_err(), "{bad}");
        }
        assert_eq!(weights(&body["RoutingConfig"]), "2=0.1");
        assert_eq!(weights(&Value::Null), "");
    }
}
