//! `ember layer …`: publish, list, share and delete Lambda layers through the signed Lambda API.

use std::path::PathBuf;

use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{Client, ClientArgs};

#[derive(Debug, clap::Subcommand)]
pub enum LayerCommand {
    /// Publish a new version of a layer from a directory or a .zip file (its files appear under
    /// /opt in the functions that use it; Python packages go in python/).
    Publish {
        name: String,
        /// A directory (zipped for you) or a .zip file.
        zip: PathBuf,
        /// A compatible runtime, e.g. python3.12; repeat for more.
        #[arg(long = "runtime")]
        runtimes: Vec<String>,
        /// A compatible architecture (x86_64, arm64); repeat for more.
        #[arg(long = "architecture")]
        architectures: Vec<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        license: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List your layers, each with its newest version (compatible with --runtime, if given).
    List {
        #[arg(long)]
        runtime: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List a layer's versions, newest first.
    Versions {
        /// The layer's name or ARN.
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Let another account (12 digits) or every account (*) use a layer version.
    Grant {
        name: String,
        version: u64,
        principal: String,
        /// The statement's id in the version's policy.
        #[arg(long, default_value = "ember-grant")]
        statement_id: String,
    },
    /// Delete a layer version (functions that use it keep it).
    Delete { name: String, version: u64 },
}

pub async fn run(args: ClientArgs, command: LayerCommand) -> anyhow::Result<()> {
    let client = Client::new(&args)?;
    match command {
        LayerCommand::Publish {
            name,
            zip,
            runtimes,
            architectures,
            description,
            license,
            json,
        } => {
            let mut body = json!({ "Content": { "ZipFile": crate::fn_cmd::zip_b64(&zip)? } });
            if !runtimes.is_empty() {
                body["CompatibleRuntimes"] = runtimes.into();
            }
            if !architectures.is_empty() {
                body["CompatibleArchitectures"] = architectures.into();
            }
            if let Some(d) = description {
                body["Description"] = d.into();
            }
            if let Some(l) = license {
                body["LicenseInfo"] = l.into();
            }
            let path = format!("/2018-10-31/layers/{}/versions", Client::segment(&name));
            let v = client.json(Method::POST, &path, Some(body)).await?;
            if json {
                println!("{v}");
            } else {
                println!("Published {}", v["LayerVersionArn"].as_str().unwrap_or("?"));
                println!("  code size      {}", v["Content"]["CodeSize"]);
                println!(
                    "  code sha256    {}",
                    v["Content"]["CodeSha256"].as_str().unwrap_or("?")
                );
            }
        }
        LayerCommand::List { runtime, json } => {
            let mut all = Vec::new();
            let mut marker: Option<String> = None;
            loop {
                let mut query = Vec::new();
                if let Some(r) = &runtime {
                    query.push(format!("CompatibleRuntime={}", Client::segment(r)));
                }
                if let Some(m) = &marker {
                    query.push(format!("Marker={}", Client::segment(m)));
                }
                let path = format!("/2018-10-31/layers?{}", query.join("&"));
                let page = client.json(Method::GET, &path, None).await?;
                all.extend(page["Layers"].as_array().cloned().unwrap_or_default());
                match page["NextMarker"].as_str() {
                    Some(m) => marker = Some(m.to_owned()),
                    None => break,
                }
            }
            if json {
                println!("{}", json!({ "Layers": all }));
            } else {
                println!("{:<40} {:>7}  {:<30} CREATED", "NAME", "LATEST", "RUNTIMES");
                for l in &all {
                    let v = &l["LatestMatchingVersion"];
                    println!(
                        "{:<40} {:>7}  {:<30} {}",
                        l["LayerName"].as_str().unwrap_or("?"),
                        v["Version"],
                        runtimes_of(v),
                        v["CreatedDate"].as_str().unwrap_or("")
                    );
                }
            }
        }
        LayerCommand::Versions { name, json } => {
            let mut all = Vec::new();
            let mut marker: Option<String> = None;
            let base = format!("/2018-10-31/layers/{}/versions", Client::segment(&name));
            loop {
                let path = match &marker {
                    Some(m) => format!("{base}?Marker={}", Client::segment(m)),
                    None => base.clone(),
                };
                let page = client.json(Method::GET, &path, None).await?;
                all.extend(
                    page["LayerVersions"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default(),
                );
                match page["NextMarker"].as_str() {
                    Some(m) => marker = Some(m.to_owned()),
                    None => break,
                }
            }
            if json {
                println!("{}", json!({ "LayerVersions": all }));
            } else {
                println!("{:>7}  {:<30} {:<30} ARN", "VERSION", "RUNTIMES", "CREATED");
                for v in &all {
                    println!(
                        "{:>7}  {:<30} {:<30} {}",
                        v["Version"],
                        runtimes_of(v),
                        v["CreatedDate"].as_str().unwrap_or(""),
                        v["LayerVersionArn"].as_str().unwrap_or("?")
                    );
                }
            }
        }
        LayerCommand::Grant {
            name,
            version,
            principal,
            statement_id,
        } => {
            let path = format!(
                "/2018-10-31/layers/{}/versions/{version}/policy",
                Client::segment(&name)
            );
            let body = json!({
                "StatementId": statement_id,
                "Action": "lambda:GetLayerVersion",
                "Principal": principal,
            });
            client.json(Method::POST, &path, Some(body)).await?;
            println!("Granted {principal} the use of {name}:{version}");
        }
        LayerCommand::Delete { name, version } => {
            let path = format!(
                "/2018-10-31/layers/{}/versions/{version}",
                Client::segment(&name)
            );
            client.json(Method::DELETE, &path, None).await?;
            println!("Deleted {name}:{version}");
        }
    }
    Ok(())
}

fn runtimes_of(v: &Value) -> String {
    let list: Vec<&str> = v["CompatibleRuntimes"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if list.is_empty() {
        "-".into()
    } else {
        list.join(",")
    }
}
