//! `ember fn …`: function management and invocation through the signed Lambda API.

use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{Client, ClientArgs};

#[derive(Debug, clap::Subcommand)]
pub enum FnCommand {
    /// Create a function from a directory or a .zip file.
    Create {
        name: String,
        /// A directory (zipped for you) or a .zip file.
        #[arg(long)]
        code: PathBuf,
        /// e.g. python3.11, nodejs20.x, provided.al2023.
        #[arg(long)]
        runtime: String,
        /// e.g. app.handler (Python), index.handler (Node.js) or bootstrap (provided).
        #[arg(long)]
        handler: String,
        #[command(flatten)]
        config: ConfigArgs,
        /// IAM role ARN recorded with the function (Ember does not assume it).
        #[arg(long, default_value = "arn:aws:iam::000000000000:role/ember-function")]
        role: String,
        /// A tag KEY=VALUE; repeat for more.
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// The function's own egress: allow (as the server's policy allows) or deny (only
        /// Ember's API and DNS) [default: the server's `--egress`].
        #[arg(long, value_enum)]
        egress: Option<crate::network_cmd::EgressFlag>,
        #[arg(long)]
        json: bool,
    },
    /// List functions.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a function's configuration.
    Get {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Replace a function's code.
    UpdateCode {
        name: String,
        #[arg(long)]
        code: PathBuf,
        /// Fail unless the function's revision is still this one.
        #[arg(long)]
        revision_id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Change a function's configuration.
    UpdateConfig {
        name: String,
        #[arg(long)]
        runtime: Option<String>,
        #[arg(long)]
        handler: Option<String>,
        #[command(flatten)]
        config: ConfigArgs,
        /// Fail unless the function's revision is still this one.
        #[arg(long)]
        revision_id: Option<String>,
        /// The function's own egress: allow, deny, or default (the server's `--egress`). Its
        /// idle environments are retired; new invocations get new ones.
        #[arg(long, value_enum)]
        egress: Option<crate::network_cmd::EgressSetting>,
        #[arg(long)]
        json: bool,
    },
    /// Delete a function.
    Delete { name: String },
    /// Invoke a function and print its response.
    Invoke {
        name: String,
        /// The event, as JSON.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// RequestResponse, Event or DryRun.
        #[arg(long = "type", default_value = "RequestResponse")]
        invocation_type: String,
        /// Also print the tail of the invocation's log.
        #[arg(long)]
        log: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show a function's automatic resource sizing and why; setting flags change it first.
    Sizing(crate::sizing_cmd::SizingArgs),
    /// Let another account invoke a function (add a statement to its resource policy).
    Grant(crate::policy_cmd::GrantArgs),
    /// Remove a statement from a function's resource policy.
    Revoke(crate::policy_cmd::RevokeArgs),
    /// Show a function's resource policy: who may do what.
    Policy(crate::policy_cmd::PolicyArgs),
    /// Add tags to a function (a key it has gets the new value).
    Tag {
        name: String,
        #[arg(value_name = "KEY=VALUE", required = true)]
        tags: Vec<String>,
    },
    /// Remove tags from a function, by key.
    Untag {
        name: String,
        #[arg(value_name = "KEY", required = true)]
        keys: Vec<String>,
    },
    /// Show a function's tags, one KEY<tab>VALUE per line.
    Tags {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Publish the function's current code and settings ($LATEST) as an immutable version.
    Publish {
        name: String,
        /// The version's description (default: the function's).
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List a function's versions ($LATEST and the published ones).
    Versions {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Show a function's event invoke config (retries, maximum event age, destinations);
    /// setting flags change it first, --delete deletes it.
    EventConfig(crate::event_config_cmd::EventConfigArgs),
    /// Show a function's URL, creating it if it has none (`--auth none` also allows anyone to
    /// call it); --delete deletes it.
    Url(crate::url_cmd::UrlArgs),
    /// Manage a function's aliases (names for versions, with weighted routing).
    Alias {
        #[command(subcommand)]
        command: crate::versions_cmd::AliasCommand,
    },
    /// Keep COUNT initialized environments of a version or alias ready (provisioned
    /// concurrency); without COUNT, show how many are ready; with --delete, release them.
    Provision {
        name: String,
        /// A published version number or an alias name.
        qualifier: String,
        count: Option<u32>,
        #[arg(long, conflicts_with = "count")]
        delete: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Memory in MB (128-10240).
    #[arg(long)]
    memory: Option<i64>,
    /// Timeout in seconds (1-900).
    #[arg(long)]
    timeout: Option<i64>,
    #[arg(long)]
    description: Option<String>,
    /// Environment variable KEY=VALUE; repeat for more. Replaces all variables.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// A layer version ARN, extracted under /opt; repeat for more, in order (at most 5).
    /// Replaces all layers.
    #[arg(long = "layer", value_name = "ARN")]
    layers: Vec<String>,
    /// Remove all the function's layers.
    #[arg(long, conflicts_with = "layers")]
    no_layers: bool,
    /// SnapStart: PublishedVersions starts each published version's new environments from a
    /// snapshot taken after the function's init (Python runtimes); None turns it off.
    #[arg(long, value_name = "APPLY_ON", value_parser = ["PublishedVersions", "None"])]
    snap_start: Option<String>,
}

impl ConfigArgs {
    fn apply(&self, body: &mut Value) -> anyhow::Result<()> {
        if let Some(m) = self.memory {
            body["MemorySize"] = m.into();
        }
        if let Some(t) = self.timeout {
            body["Timeout"] = t.into();
        }
        if let Some(d) = &self.description {
            body["Description"] = d.clone().into();
        }
        if !self.env.is_empty() {
            let mut vars = serde_json::Map::new();
            for pair in &self.env {
                let (k, v) = pair
                    .split_once('=')
                    .with_context(|| format!("--env {pair:?} is not KEY=VALUE"))?;
                vars.insert(k.to_owned(), v.into());
            }
            body["Environment"] = json!({ "Variables": vars });
        }
        if !self.layers.is_empty() || self.no_layers {
            body["Layers"] = self.layers.clone().into();
        }
        if let Some(apply_on) = &self.snap_start {
            body["SnapStart"] = json!({ "ApplyOn": apply_on });
        }
        Ok(())
    }
}

pub async fn run(args: ClientArgs, command: FnCommand) -> anyhow::Result<()> {
    let client = Client::new(&args)?;
    match command {
        FnCommand::Create {
            name,
            code,
            runtime,
            handler,
            config,
            role,
            tags,
            egress,
            json,
        } => {
            let mut body = json!({
                "FunctionName": name,
                "Runtime": runtime,
                "Handler": handler,
                "Role": role,
                "Code": { "ZipFile": zip_b64(&code)? },
            });
            config.apply(&mut body)?;
            if !tags.is_empty() {
                body["Tags"] = crate::tags_cmd::tag_map(&tags)?.into();
            }
            let f = client
                .json(Method::POST, "/2015-03-31/functions", Some(body))
                .await?;
            print_function(&f, json, "Created");
            if let Some(egress) = egress {
                let network = crate::network_cmd::set(&client, &name, egress.into())
                    .await
                    .with_context(|| {
                        format!("{name} was created, but its egress could not be set")
                    })?;
                if !json {
                    println!(
                        "  egress         {}",
                        crate::network_cmd::egress_line(&network)
                    );
                }
            }
        }
        FnCommand::List { json } => {
            let mut all = Vec::new();
            let mut marker: Option<String> = None;
            loop {
                let path = match &marker {
                    Some(m) => format!("/2015-03-31/functions/?Marker={}", Client::segment(m)),
                    None => "/2015-03-31/functions/".to_owned(),
                };
                let page = client.json(Method::GET, &path, None).await?;
                if let Some(fs) = page["Functions"].as_array() {
                    all.extend(fs.iter().cloned());
                }
                match page["NextMarker"].as_str() {
                    Some(m) => marker = Some(m.to_owned()),
                    None => break,
                }
            }
            if json {
                println!("{}", json!({ "Functions": all }));
            } else {
                println!(
                    "{:<40} {:<16} {:>7} {:>7}  LAST MODIFIED",
                    "NAME", "RUNTIME", "MEMORY", "TIMEOUT"
                );
                for f in &all {
                    println!(
                        "{:<40} {:<16} {:>7} {:>7}  {}",
                        f["FunctionName"].as_str().unwrap_or("?"),
                        f["Runtime"].as_str().unwrap_or("-"),
                        f["MemorySize"],
                        f["Timeout"],
                        f["LastModified"].as_str().unwrap_or("")
                    );
                }
            }
        }
        FnCommand::Get { name, json } => {
            let path = format!("/2015-03-31/functions/{}", Client::segment(&name));
            let f = client.json(Method::GET, &path, None).await?;
            if json {
                let mut f = f;
                // Ember's own settings beside Lambda's GetFunction document.
                f["Network"] = crate::network_cmd::get(&client, &name).await?;
                println!("{f}");
            } else {
                print_function(&f["Configuration"], false, "Function");
                let network = crate::network_cmd::get(&client, &name).await?;
                println!(
                    "  egress         {}",
                    crate::network_cmd::egress_line(&network)
                );
                if let Some(n) = f["Concurrency"]["ReservedConcurrentExecutions"].as_i64() {
                    println!("  reserved concurrency: {n}");
                }
                for tag in crate::tags_cmd::describe(&f) {
                    println!("  tag: {tag}");
                }
            }
        }
        FnCommand::UpdateCode {
            name,
            code,
            revision_id,
            json,
        } => {
            let mut body = json!({ "ZipFile": zip_b64(&code)? });
            if let Some(r) = revision_id {
                body["RevisionId"] = r.into();
            }
            let path = format!("/2015-03-31/functions/{}/code", Client::segment(&name));
            let f = client.json(Method::PUT, &path, Some(body)).await?;
            print_function(&f, json, "Updated");
        }
        FnCommand::UpdateConfig {
            name,
            runtime,
            handler,
            config,
            revision_id,
            egress,
            json,
        } => {
            let mut body = json!({});
            config.apply(&mut body)?;
            if let Some(r) = runtime {
                body["Runtime"] = r.into();
            }
            if let Some(h) = handler {
                body["Handler"] = h.into();
            }
            if let Some(r) = revision_id {
                body["RevisionId"] = r.into();
            }
            let only_egress = egress.is_some() && body == json!({});
            if !only_egress {
                let path = format!(
                    "/2015-03-31/functions/{}/configuration",
                    Client::segment(&name)
                );
                let f = client.json(Method::PUT, &path, Some(body)).await?;
                print_function(&f, json, "Updated");
            }
            if let Some(egress) = egress {
                let network = crate::network_cmd::set(&client, &name, egress).await?;
                if json && only_egress {
                    println!("{network}");
                } else if !json {
                    if only_egress {
                        println!("Updated {name}");
                    }
                    println!(
                        "  egress         {}",
                        crate::network_cmd::egress_line(&network)
                    );
                }
            }
        }
        FnCommand::Provision {
            name,
            qualifier,
            count,
            delete,
            json,
        } => {
            let path = format!(
                "/2019-09-30/functions/{}/provisioned-concurrency?Qualifier={}",
                Client::segment(&name),
                Client::segment(&qualifier)
            );
            if delete {
                client.json(Method::DELETE, &path, None).await?;
                println!("Released the provisioned concurrency of {name}:{qualifier}");
                return Ok(());
            }
            let config = match count {
                Some(n) => {
                    let body = json!({ "ProvisionedConcurrentExecutions": n });
                    client.json(Method::PUT, &path, Some(body)).await?
                }
                None => client.json(Method::GET, &path, None).await?,
            };
            if json {
                println!("{config}");
            } else {
                println!("{}", provisioned_line(&name, &qualifier, &config));
            }
        }
        FnCommand::Delete { name } => {
            let path = format!("/2015-03-31/functions/{}", Client::segment(&name));
            client.json(Method::DELETE, &path, None).await?;
            println!("Deleted {name}");
        }
        FnCommand::Invoke {
            name,
            payload,
            invocation_type,
            log,
            json,
        } => invoke(&client, &name, payload, invocation_type, log, json).await?,
        FnCommand::Sizing(args) => crate::sizing_cmd::run(&client, args).await?,
        FnCommand::Grant(args) => crate::policy_cmd::grant(&client, args).await?,
        FnCommand::Revoke(args) => crate::policy_cmd::revoke(&client, args).await?,
        FnCommand::Policy(args) => crate::policy_cmd::policy(&client, args).await?,
        FnCommand::Tag { name, tags } => {
            crate::tags_cmd::run(&client, &name, crate::tags_cmd::TagsAction::Tag(tags)).await?
        }
        FnCommand::Untag { name, keys } => {
            crate::tags_cmd::run(&client, &name, crate::tags_cmd::TagsAction::Untag(keys)).await?
        }
        FnCommand::Tags { name, json } => {
            crate::tags_cmd::run(&client, &name, crate::tags_cmd::TagsAction::List { json }).await?
        }
        FnCommand::EventConfig(args) => crate::event_config_cmd::run(&client, args).await?,
        FnCommand::Url(args) => crate::url_cmd::run(&client, args).await?,
        FnCommand::Publish {
            name,
            description,
            json,
        } => crate::versions_cmd::publish(&client, &name, description, json).await?,
        FnCommand::Versions { name, json } => {
            crate::versions_cmd::versions(&client, &name, json).await?
        }
        FnCommand::Alias { command } => crate::versions_cmd::alias(&client, command).await?,
    }
    Ok(())
}

async fn invoke(
    client: &Client,
    name: &str,
    payload: String,
    invocation_type: String,
    log: bool,
    json: bool,
) -> anyhow::Result<()> {
    serde_json::from_str::<Value>(&payload).context("--payload is not valid JSON")?;
    let path = format!(
        "/2015-03-31/functions/{}/invocations",
        Client::segment(name)
    );
    let mut headers = vec![("x-amz-invocation-type", invocation_type)];
    if log {
        headers.push(("x-amz-log-type", "Tail".to_owned()));
    }
    let reply = client
        .call(Method::POST, &path, &headers, payload.into_bytes())
        .await?;
    let header = |h: &str| {
        reply
            .headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let function_error = header("x-amz-function-error");
    let log_tail = header("x-amz-log-result").and_then(|b64| {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    });
    let body = String::from_utf8_lossy(&reply.body).into_owned();
    if json {
        println!(
            "{}",
            json!({
                "StatusCode": reply.status,
                "ExecutedVersion": header("x-amz-executed-version"),
                "FunctionError": function_error,
                "LogResult": log_tail,
                "Payload": body,
            })
        );
    } else {
        if let Some(tail) = &log_tail {
            eprint!("{tail}");
        }
        println!("{body}");
    }
    if let Some(kind) = function_error {
        anyhow::bail!("the function failed ({kind})");
    }
    Ok(())
}

/// `f:1  4 requested, 2 ready  IN_PROGRESS`, and the reason of a failure.
fn provisioned_line(name: &str, qualifier: &str, config: &Value) -> String {
    let n = |field: &str| config[field].as_u64().unwrap_or(0);
    let mut line = format!(
        "{name}:{qualifier}  {} requested, {} ready  {}",
        n("RequestedProvisionedConcurrentExecutions"),
        n("AvailableProvisionedConcurrentExecutions"),
        config["Status"].as_str().unwrap_or("?")
    );
    if let Some(reason) = config["StatusReason"].as_str() {
        line.push_str(&format!(": {reason}"));
    }
    line
}

fn print_function(f: &Value, json: bool, verb: &str) {
    if json {
        println!("{f}");
        return;
    }
    println!("{verb} {}", f["FunctionArn"].as_str().unwrap_or("?"));
    for (label, key) in [
        ("runtime", "Runtime"),
        ("handler", "Handler"),
        ("memory (MB)", "MemorySize"),
        ("timeout (s)", "Timeout"),
        ("code size", "CodeSize"),
        ("code sha256", "CodeSha256"),
        ("revision", "RevisionId"),
        ("last modified", "LastModified"),
    ] {
        let value = &f[key];
        let text = value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_owned);
        println!("  {label:<14} {text}");
    }
    if let Some(line) = snap_start_line(f) {
        println!("  snap start     {line}");
    }
    for layer in f["Layers"].as_array().into_iter().flatten() {
        println!("  layer          {}", layer["Arn"].as_str().unwrap_or("?"));
    }
    if let Some(vars) = f["Environment"]["Variables"].as_object() {
        for (k, v) in vars {
            println!("  env            {k}={}", v.as_str().unwrap_or(""));
        }
    }
}

/// A configuration's SnapStart as `ember fn` shows it: its `ApplyOn`, and whether this version
/// starts from a snapshot (`OptimizationStatus`).
pub(crate) fn snap_start_line(f: &Value) -> Option<String> {
    let snap_start = f["SnapStart"].as_object()?;
    let apply_on = snap_start.get("ApplyOn")?.as_str()?;
    let status = snap_start
        .get("OptimizationStatus")
        .and_then(Value::as_str)
        .unwrap_or("Off");
    Some(format!("{apply_on} (optimization {status})"))
}

/// Reads a .zip, or zips a directory, and returns it base64-encoded.
pub(crate) fn zip_b64(path: &Path) -> anyhow::Result<String> {
    let bytes = if path.is_dir() {
        ember_store::package::zip_dir(path)
            .with_context(|| format!("cannot zip {}", path.display()))?
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        config: ConfigArgs,
    }

    #[test]
    fn snap_start_goes_into_the_body_in_lambdas_shape_and_only_known_values_parse() {
        for value in ["PublishedVersions", "None"] {
            let cli = Cli::try_parse_from(["ember", "--snap-start", value]).unwrap();
            let mut body = json!({});
            cli.config.apply(&mut body).unwrap();
            assert_eq!(body, json!({ "SnapStart": { "ApplyOn": value } }));
        }
        let none = Cli::try_parse_from(["ember"]).unwrap();
        let mut body = json!({});
        none.config.apply(&mut body).unwrap();
        assert_eq!(body, json!({}), "absent: the function's setting stays");
        assert!(Cli::try_parse_from(["ember", "--snap-start", "Always"]).is_err());
    }

    #[test]
    fn snap_start_is_shown_with_its_optimization_status() {
        let version =
            json!({"SnapStart": {"ApplyOn": "PublishedVersions", "OptimizationStatus": "On"}});
        assert_eq!(
            snap_start_line(&version).as_deref(),
            Some("PublishedVersions (optimization On)")
        );
        let latest = json!({"SnapStart": {"ApplyOn": "None", "OptimizationStatus": "Off"}});
        assert_eq!(
            snap_start_line(&latest).as_deref(),
            Some("None (optimization Off)")
        );
        assert_eq!(snap_start_line(&json!({})), None);
    }
}
