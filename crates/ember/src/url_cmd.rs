//! `ember fn url NAME`: a function's URL (`GetFunctionUrlConfig`), created when it has none
//! (`CreateFunctionUrlConfig`) and changed when `--auth` or `--stream` asks for something else
//! (`UpdateFunctionUrlConfig`). For `--auth none` it also adds, as the AWS console does, the
//! resource policy statement `FunctionURLAllowPublicAccess` that lets anyone call the URL
//! (`lambda:InvokeFunctionUrl` for `*`, with `FunctionUrlAuthType: NONE`); `--delete` deletes
//! the URL (not the statement: `ember fn revoke NAME FunctionURLAllowPublicAccess`).

use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::client::{Client, ClientError};

/// The statement id the AWS console gives the grant that makes a `NONE` URL public.
pub const PUBLIC_STATEMENT: &str = "FunctionURLAllowPublicAccess";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Auth {
    /// Anyone may call the URL (Ember adds the resource policy statement that allows it).
    None,
    /// Only SigV4-signed requests of the owner or of accounts granted
    /// lambda:InvokeFunctionUrl.
    Iam,
}

impl Auth {
    fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Iam => "AWS_IAM",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct UrlArgs {
    /// The function: a name, or an ARN.
    name: String,
    /// The alias the URL is for (the unqualified function without one).
    #[arg(long)]
    qualifier: Option<String>,
    /// Who may call it [default for a new URL: none].
    #[arg(long, value_enum)]
    auth: Option<Auth>,
    /// InvokeMode RESPONSE_STREAM (the response streamed as the function writes it).
    #[arg(long)]
    stream: bool,
    /// Delete the URL instead.
    #[arg(long, conflicts_with_all = ["auth", "stream"])]
    delete: bool,
    /// Print the raw JSON document.
    #[arg(long)]
    json: bool,
}

pub async fn run(client: &Client, args: UrlArgs) -> anyhow::Result<()> {
    let mut path = format!("/2021-10-31/functions/{}/url", Client::segment(&args.name));
    let mut policy_path = format!(
        "/2015-03-31/functions/{}/policy",
        Client::segment(&args.name)
    );
    if let Some(q) = &args.qualifier {
        let query = format!("?Qualifier={}", Client::segment(q));
        path.push_str(&query);
        policy_path.push_str(&query);
    }
    if args.delete {
        client.json(Method::DELETE, &path, None).await?;
        println!("Deleted the function URL of {}", args.name);
        return Ok(());
    }
    let mut created = false;
    let doc = match client.json(Method::GET, &path, None).await {
        Ok(current) => {
            let mut changes = Map::new();
            if let Some(auth) = args.auth {
                if current["AuthType"] != auth.as_str() {
                    changes.insert("AuthType".into(), auth.as_str().into());
                }
            }
            if args.stream && current["InvokeMode"] != "RESPONSE_STREAM" {
                changes.insert("InvokeMode".into(), "RESPONSE_STREAM".into());
            }
            if changes.is_empty() {
                current
            } else {
                client
                    .json(Method::PUT, &path, Some(Value::Object(changes)))
                    .await?
            }
        }
        Err(ClientError::Aws { status: 404, .. }) => {
            // No URL yet (or no function: then Create answers that 404).
            let mut body = json!({ "AuthType": args.auth.unwrap_or(Auth::None).as_str() });
            if args.stream {
                body["InvokeMode"] = "RESPONSE_STREAM".into();
            }
            created = true;
            client.json(Method::POST, &path, Some(body)).await?
        }
        Err(e) => return Err(e.into()),
    };
    // `--auth none`, or a URL created with the default: make it public, as the console does.
    if doc["AuthType"] == "NONE" && (created || args.auth == Some(Auth::None)) {
        allow_public(client, &policy_path).await?;
    }
    if args.json {
        println!("{doc}");
    } else {
        print!("{}", explain(&doc));
    }
    Ok(())
}

/// Adds the statement that lets anyone call a `NONE` URL, unless it is there already.
async fn allow_public(client: &Client, policy_path: &str) -> anyhow::Result<()> {
    let statement = json!({
        "StatementId": PUBLIC_STATEMENT,
        "Action": "lambda:InvokeFunctionUrl",
        "Principal": "*",
        "FunctionUrlAuthType": "NONE",
    });
    match client
        .json(Method::POST, policy_path, Some(statement))
        .await
    {
        Ok(_) => {
            eprintln!("Added {PUBLIC_STATEMENT} to the function's policy: anyone may call the URL");
            Ok(())
        }
        // The statement is there already.
        Err(ClientError::Aws { status: 409, .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The URL in words, with a curl to try it.
fn explain(doc: &Value) -> String {
    let url = doc["FunctionUrl"].as_str().unwrap_or_default();
    let auth = doc["AuthType"].as_str().unwrap_or_default();
    let mode = doc["InvokeMode"].as_str().unwrap_or("BUFFERED");
    let mut out = format!(
        "{url}\n  function: {}\n  auth: {auth}\n  invoke mode: {mode}\n",
        doc["FunctionArn"].as_str().unwrap_or_default()
    );
    if let Some(cors) = doc.get("Cors") {
        out.push_str(&format!("  cors: {cors}\n"));
    }
    if auth == "NONE" {
        out.push_str(&format!("  try: curl {url}\n"));
    } else {
        out.push_str("  requests must be signed with SigV4 (service lambda)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_explained_with_a_curl_when_public() {
        let doc = json!({
            "FunctionUrl": "http://abc.lambda-url.us-east-1.localhost:8900/",
            "FunctionArn": "arn:aws:lambda:us-east-1:111111111111:function:f",
            "AuthType": "NONE", "InvokeMode": "BUFFERED",
        });
        let text = explain(&doc);
        assert!(
            text.starts_with("http://abc.lambda-url.us-east-1.localhost:8900/\n"),
            "{text}"
        );
        assert!(text.contains("try: curl http://abc.lambda-url"), "{text}");
        let iam = json!({"FunctionUrl": "u", "AuthType": "AWS_IAM"});
        assert!(explain(&iam).contains("SigV4"));
    }
}
