//! `ember fn grant`, `ember fn revoke` and `ember fn policy`: a function's resource policy
//! (AddPermission, RemovePermission, GetPolicy), which lets other accounts invoke it.

use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Client;

#[derive(Debug, clap::Args)]
pub struct GrantArgs {
    /// The function (a name, or `name:alias` / `name:version` for one qualifier).
    name: String,
    /// Who: an account id, or `*` for every account.
    #[arg(long)]
    account: String,
    /// The statement's id (default: `account-<ID>`, or `anyone` for `*`).
    #[arg(long)]
    statement_id: Option<String>,
    /// The action allowed: lambda:InvokeFunction, lambda:GetFunction,
    /// lambda:GetFunctionConfiguration or lambda:*.
    #[arg(long, default_value = "lambda:InvokeFunction")]
    action: String,
    /// Print the statement as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// The function (a name, or `name:alias` / `name:version`).
    name: String,
    /// The id of the statement to remove (see `ember fn policy`).
    statement_id: String,
}

#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    /// The function (a name, or `name:alias` / `name:version`).
    name: String,
    /// Print GetPolicy's answer as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn grant(client: &Client, args: GrantArgs) -> anyhow::Result<()> {
    let statement_id = args
        .statement_id
        .unwrap_or_else(|| match args.account.as_str() {
            "*" => "anyone".to_owned(),
            id => format!("account-{id}"),
        });
    let body = json!({
        "StatementId": statement_id,
        "Action": args.action,
        "Principal": args.account,
    });
    let answer = client
        .json(Method::POST, &policy_path(&args.name), Some(body))
        .await?;
    let statement: Value = serde_json::from_str(answer["Statement"].as_str().unwrap_or("{}"))?;
    if args.json {
        println!("{statement}");
    } else {
        println!(
            "Granted {} on {} to {} (statement {statement_id})",
            statement["Action"].as_str().unwrap_or("?"),
            statement["Resource"].as_str().unwrap_or("?"),
            principal(&statement["Principal"]),
        );
    }
    Ok(())
}

pub async fn revoke(client: &Client, args: RevokeArgs) -> anyhow::Result<()> {
    let path = format!(
        "{}/{}",
        policy_path(&args.name),
        Client::segment(&args.statement_id)
    );
    client.json(Method::DELETE, &path, None).await?;
    println!("Revoked statement {} of {}", args.statement_id, args.name);
    Ok(())
}

pub async fn policy(client: &Client, args: PolicyArgs) -> anyhow::Result<()> {
    let answer = client
        .json(Method::GET, &policy_path(&args.name), None)
        .await?;
    let document: Value = serde_json::from_str(answer["Policy"].as_str().unwrap_or("{}"))?;
    if args.json {
        println!("{answer}");
        return Ok(());
    }
    println!("revision {}", answer["RevisionId"].as_str().unwrap_or("?"));
    println!(
        "{:<24} {:<34} {:<32}  CONDITION",
        "STATEMENT", "ACTION", "PRINCIPAL"
    );
    for s in document["Statement"].as_array().into_iter().flatten() {
        let condition = match &s["Condition"] {
            Value::Null => String::new(),
            c => c.to_string(),
        };
        println!(
            "{:<24} {:<34} {:<32}  {condition}",
            s["Sid"].as_str().unwrap_or("?"),
            s["Action"].as_str().unwrap_or("?"),
            principal(&s["Principal"]),
        );
    }
    Ok(())
}

/// `/2015-03-31/functions/NAME/policy`, with `?Qualifier=` for `name:qualifier`.
fn policy_path(name: &str) -> String {
    match name.split_once(':') {
        Some((function, qualifier)) if !function.is_empty() && !qualifier.contains(':') => {
            format!(
                "/2015-03-31/functions/{}/policy?Qualifier={}",
                Client::segment(function),
                Client::segment(qualifier)
            )
        }
        _ => format!("/2015-03-31/functions/{}/policy", Client::segment(name)),
    }
}

/// A statement's principal in words: `account 123456789012`, `anyone`, or the service.
fn principal(p: &Value) -> String {
    if let Some(arn) = p["AWS"].as_str() {
        let account = arn
            .strip_prefix("arn:aws:iam::")
            .and_then(|r| r.strip_suffix(":root"))
            .unwrap_or(arn);
        return format!("account {account}");
    }
    if let Some(service) = p["Service"].as_str() {
        return service.to_owned();
    }
    match p.as_str() {
        Some("*") => "anyone".to_owned(),
        Some(other) => other.to_owned(),
        None => p.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_qualified_name_becomes_the_qualifier_parameter() {
        assert_eq!(policy_path("f"), "/2015-03-31/functions/f/policy");
        assert_eq!(
            policy_path("f:live"),
            "/2015-03-31/functions/f/policy?Qualifier=live"
        );
        let arn = "arn:aws:lambda:us-east-1:111111111111:function:f";
        assert_eq!(
            policy_path(arn),
            format!("/2015-03-31/functions/{}/policy", Client::segment(arn))
        );
    }

    #[test]
    fn principals_are_said_in_words() {
        assert_eq!(
            principal(&json!({"AWS": "arn:aws:iam::222222222222:root"})),
            "account 222222222222"
        );
        assert_eq!(principal(&json!("*")), "anyone");
        assert_eq!(
            principal(&json!({"Service": "s3.amazonaws.com"})),
            "s3.amazonaws.com"
        );
    }
}
