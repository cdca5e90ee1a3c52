//! A function's own egress from the `ember fn` commands: `ember fn create … --egress allow|deny`,
//! `ember fn update-config NAME --egress allow|deny|default` and the line `ember fn get` shows,
//! through `GET`/`PUT /ember/v1/functions/{name}/network`.

use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Client;

/// `--egress` of `ember fn create`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EgressFlag {
    /// Outbound connections as the server's egress policy allows.
    Allow,
    /// Only Ember's API and DNS: no connection leaves the VM.
    Deny,
}

/// `--egress` of `ember fn update-config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EgressSetting {
    /// Outbound connections as the server's egress policy allows.
    Allow,
    /// Only Ember's API and DNS: no connection leaves the VM.
    Deny,
    /// The server's default (`ember serve --egress`).
    Default,
}

impl From<EgressFlag> for EgressSetting {
    fn from(flag: EgressFlag) -> Self {
        match flag {
            EgressFlag::Allow => Self::Allow,
            EgressFlag::Deny => Self::Deny,
        }
    }
}

impl EgressSetting {
    /// The `PUT` body.
    pub fn body(self) -> Value {
        match self {
            Self::Allow => json!({ "Egress": "Allow" }),
            Self::Deny => json!({ "Egress": "Deny" }),
            Self::Default => json!({ "Egress": null }),
        }
    }
}

fn path(name: &str) -> String {
    format!("/ember/v1/functions/{}/network", Client::segment(name))
}

/// Sets a function's own egress; answers the setting as the server now has it.
pub async fn set(client: &Client, name: &str, egress: EgressSetting) -> anyhow::Result<Value> {
    Ok(client
        .json(Method::PUT, &path(name), Some(egress.body()))
        .await?)
}

/// A function's network settings.
pub async fn get(client: &Client, name: &str) -> anyhow::Result<Value> {
    Ok(client.json(Method::GET, &path(name), None).await?)
}

/// How `ember fn` shows the setting: what new environments get, and whose setting it is.
pub fn egress_line(network: &Value) -> String {
    let effective = network["EffectiveEgress"]
        .as_str()
        .unwrap_or("?")
        .to_lowercase();
    match network["Egress"].as_str() {
        Some(_) => format!("{effective} (the function's own)"),
        None => format!("{effective} (the server's default)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_their_put_bodies() {
        assert_eq!(EgressSetting::Allow.body(), json!({"Egress": "Allow"}));
        assert_eq!(EgressSetting::Deny.body(), json!({"Egress": "Deny"}));
        assert_eq!(EgressSetting::Default.body(), json!({"Egress": null}));
        assert_eq!(EgressSetting::from(EgressFlag::Deny), EgressSetting::Deny);
    }

    #[test]
    fn the_line_says_whose_setting_it_is() {
        let own = json!({"Egress": "Deny", "EffectiveEgress": "Deny"});
        assert_eq!(egress_line(&own), "deny (the function's own)");
        let default = json!({"Egress": null, "EffectiveEgress": "Allow"});
        assert_eq!(egress_line(&default), "allow (the server's default)");
    }

    #[test]
    fn only_the_documented_values_parse() {
        use clap::ValueEnum;
        assert!(EgressFlag::from_str("deny", false).is_ok());
        assert!(EgressFlag::from_str("default", false).is_err());
        assert!(EgressSetting::from_str("default", false).is_ok());
        assert!(EgressSetting::from_str("none", false).is_err());
    }
}
