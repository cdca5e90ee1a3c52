//! `ember fn tag NAME K=V…`, `ember fn untag NAME K…` and `ember fn tags NAME`: a function's
//! tags, through TagResource, UntagResource and ListTags on the function's ARN (which
//! GetFunctionConfiguration gives: the CLI does not know the account id); and the `KEY=VALUE`
//! parsing `ember fn create --tag` shares.

use anyhow::Context;
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::client::Client;

/// What `ember fn tag|untag|tags` asks for.
#[derive(Debug)]
pub enum TagsAction {
    /// Add these tags (`KEY=VALUE`), replacing the values of keys the function has.
    Tag(Vec<String>),
    /// Remove the tags of these keys.
    Untag(Vec<String>),
    /// Print the tags.
    List { json: bool },
}

pub async fn run(client: &Client, name: &str, action: TagsAction) -> anyhow::Result<()> {
    let config_path = format!(
        "/2015-03-31/functions/{}/configuration",
        Client::segment(name)
    );
    let config = client.json(Method::GET, &config_path, None).await?;
    let arn = config["FunctionArn"]
        .as_str()
        .context("the server's answer has no FunctionArn")?;
    let path = format!("/2017-03-31/tags/{}", Client::segment(arn));
    match action {
        TagsAction::Tag(pairs) => {
            let tags = tag_map(&pairs)?;
            client
                .json(Method::POST, &path, Some(json!({ "Tags": tags })))
                .await?;
            println!("Tagged {name}");
        }
        TagsAction::Untag(keys) => {
            let query: Vec<String> = keys
                .iter()
                .map(|k| format!("tagKeys={}", Client::segment(k)))
                .collect();
            client
                .json(Method::DELETE, &format!("{path}?{}", query.join("&")), None)
                .await?;
            println!("Untagged {name}");
        }
        TagsAction::List { json } => {
            let answer = client.json(Method::GET, &path, None).await?;
            if json {
                println!("{answer}");
            } else if let Some(tags) = answer["Tags"].as_object() {
                for (k, v) in tags {
                    println!("{k}\t{}", v.as_str().unwrap_or_default());
                }
            }
        }
    }
    Ok(())
}

/// `KEY=VALUE` arguments as a `Tags` map (a value may hold `=`).
pub fn tag_map(pairs: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut tags = Map::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("{pair:?} is not KEY=VALUE"))?;
        tags.insert(k.to_owned(), v.into());
    }
    Ok(tags)
}

/// The tags a GetFunction answer shows, one `KEY=VALUE` per line, for `ember fn get`.
pub fn describe(function: &Value) -> Vec<String> {
    function["Tags"]
        .as_object()
        .map(|tags| {
            tags.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}
