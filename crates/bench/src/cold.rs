//! `ember bench invoke`'s cold-start table: per runtime (provided, Python, Node.js when the
//! server offers one) and memory size, the cold starts of a no-op function (a new container in
//! a running VM of the account), end to end over HTTP: the client's latency of the invocation
//! and the REPORT line's Init Duration, as p50, p90 and max.
//!
//! Each sample changes the function's configuration (so no warm container fits, and the stale
//! one is retired) and times the next invoke, which makes a new container in the account's
//! running VM. A sample that needed a VM boot or found a warm container (the `X-Ember-Start`
//! header says) is not a cold container start: it is left out and another one taken, up to
//! twice the samples asked for.

use std::time::Instant;

use base64::Engine as _;
use reqwest::Method;
use serde_json::{json, Value};

use ember_client::{Client, ClientError};

use crate::floor::Spread;
use crate::invoke::{create_function, zip_of};

/// The Node.js runtimes tried, newest first: the first the server accepts is measured.
const NODE_RUNTIMES: &[&str] = &["nodejs24.x", "nodejs22.x", "nodejs20.x", "nodejs18.x"];

/// A no-op Node.js handler (CommonJS), `index.handler`.
const NODE_NOOP: &str = "exports.handler = async () => ({});\n";

/// The measured functions' (and the probe's) timeout, in seconds.
const TIMEOUT_S: u32 = 30;

/// A no-op Python handler, `app.handler`.
const PY_NOOP: &str = "def handler(event, context):\n    return {}\n";

/// Which kind of runtime a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Provided,
    Python,
    Node,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Provided => "provided",
            Kind::Python => "python",
            Kind::Node => "node",
        }
    }

    /// Parses `--runtimes`' names.
    pub(crate) fn parse(name: &str) -> Result<Self, String> {
        match name {
            "provided" => Ok(Kind::Provided),
            "python" => Ok(Kind::Python),
            "node" | "nodejs" => Ok(Kind::Node),
            other => Err(format!(
                "unknown runtime kind {other:?} (provided, python, node)"
            )),
        }
    }
}

/// A function to measure: its runtime and package, or why there is none.
#[derive(Debug, Clone)]
pub(crate) struct Subject {
    pub(crate) kind: Kind,
    /// The Lambda runtime (`provided.al2023`, `python3.11`, `nodejs20.x`), or why the server has
    /// none of this kind.
    pub(crate) runtime: Result<String, String>,
    handler: &'static str,
    zip: Vec<u8>,
}

impl Subject {
    pub(crate) fn provided(zip: Vec<u8>) -> Self {
        Self {
            kind: Kind::Provided,
            runtime: Ok("provided.al2023".into()),
            handler: "bootstrap",
            zip,
        }
    }

    pub(crate) fn python(runtime: &str) -> anyhow::Result<Self> {
        Ok(Self {
            kind: Kind::Python,
            runtime: Ok(runtime.to_owned()),
            handler: "app.handler",
            zip: zip_of("app.py", PY_NOOP)?,
        })
    }

    /// The newest Node.js runtime the server accepts, found by creating a function of each in
    /// turn; "not available", with the server's answer, when it accepts none.
    pub(crate) async fn node(client: &Client) -> anyhow::Result<Self> {
        let zip = zip_of("index.js", NODE_NOOP)?;
        let probe = "bench-node-probe";
        let mut runtime = Err(String::new());
        for candidate in NODE_RUNTIMES {
            // A server takes any `nodejsN.x` it knows of; whether this host has that Node.js
            // shows at the first invoke (`InvalidRuntimeException`), so the probe runs once.
            let created = create_function(
                client,
                probe,
                candidate,
                "index.handler",
                &zip,
                128,
                TIMEOUT_S,
            )
            .await;
            let refusal = match created {
                Ok(()) => match invoke(client, probe).await {
                    Ok(_) => {
                        runtime = Ok((*candidate).to_owned());
                        break;
                    }
                    Err(err) => format!("{err:#}"),
                },
                // An unknown runtime, or one it cannot provision.
                Err(ClientError::Aws { error_type, .. }) => error_type,
                Err(err) => return Err(err.into()),
            };
            let _ = delete(client, probe).await;
            // The first refusal says why.
            if let Err(why) = &mut runtime {
                if why.is_empty() {
                    *why = refusal;
                }
            }
        }
        let _ = delete(client, probe).await;
        Ok(Self {
            kind: Kind::Node,
            runtime: runtime.map_err(|why| {
                format!(
                    "the server accepts none of {} ({why})",
                    NODE_RUNTIMES.join(", ")
                )
            }),
            handler: "index.handler",
            zip,
        })
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) kind: Kind,
    pub(crate) memory_mb: u32,
    pub(crate) result: Result<Measured, String>,
}

/// A row's measurement.
#[derive(Debug, Clone)]
pub(crate) struct Measured {
    pub(crate) runtime: String,
    /// The client's latency of each cold invocation.
    pub(crate) client: Spread,
    /// The REPORT lines' Init Duration (`None` if no REPORT had one).
    pub(crate) init: Option<Spread>,
    /// Invocations that were not a new container in a running VM, left out.
    pub(crate) left_out: usize,
}

impl Row {
    pub(crate) fn to_json(&self) -> Value {
        match &self.result {
            Ok(m) => json!({
                "kind": self.kind.name(), "runtime": m.runtime, "memory_mb": self.memory_mb,
                "available": true, "client": m.client.to_json(),
                "init_duration": m.init.map(Spread::to_json), "left_out": m.left_out,
            }),
            Err(why) => json!({
                "kind": self.kind.name(), "memory_mb": self.memory_mb, "available": false,
                "reason": why,
            }),
        }
    }

    /// The client's p50, if measured.
    pub(crate) fn p50(&self) -> Option<f64> {
        self.result.as_ref().ok().map(|m| m.client.p50)
    }
}

/// Measures every subject at every memory size, `samples` cold starts each.
pub(crate) async fn measure(
    client: &Client,
    subjects: &[Subject],
    memories: &[u32],
    samples: usize,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for subject in subjects {
        for &memory_mb in memories {
            let result = match &subject.runtime {
                Ok(runtime) => Ok(measure_one(client, subject, runtime, memory_mb, samples).await?),
                Err(why) => Err(why.clone()),
            };
            rows.push(Row {
                kind: subject.kind,
                memory_mb,
                result,
            });
        }
    }
    Ok(rows)
}

async fn measure_one(
    client: &Client,
    subject: &Subject,
    runtime: &str,
    memory_mb: u32,
    samples: usize,
) -> anyhow::Result<Measured> {
    let name = format!("bench-cold-{}-{memory_mb}", subject.kind.name());
    let _ = delete(client, &name).await;
    create_function(
        client,
        &name,
        runtime,
        subject.handler,
        &subject.zip,
        memory_mb,
        TIMEOUT_S,
    )
    .await
    .map_err(|err| anyhow::anyhow!("cannot create {name}: {err}"))?;
    // The first invocation may boot the account's VM (and provision the runtime): not measured.
    invoke(client, &name).await?;
    let configuration = format!("/2015-03-31/functions/{name}/configuration");
    let (mut walls, mut inits, mut left_out) = (Vec::new(), Vec::new(), 0);
    for i in 0..samples.saturating_mul(2) {
        if walls.len() == samples {
            break;
        }
        let body = json!({"Environment": {"Variables": {"EMBER_BENCH_SAMPLE": i.to_string()}}});
        client.json(Method::PUT, &configuration, Some(body)).await?;
        let started = Instant::now();
        let cold = invoke(client, &name).await?;
        let wall = started.elapsed().as_secs_f64() * 1e3;
        if cold.start != "cold_container" {
            left_out += 1;
            continue;
        }
        walls.push(wall);
        inits.extend(cold.init_ms);
    }
    let _ = delete(client, &name).await;
    let client = Spread::of(&walls).ok_or_else(|| {
        anyhow::anyhow!(
            "{name}: none of {left_out} invocations started a new container in a running VM"
        )
    })?;
    Ok(Measured {
        runtime: runtime.to_owned(),
        client,
        init: Spread::of(&inits),
        left_out,
    })
}

/// What an invocation's answer says about its start.
pub(crate) struct Invoked {
    /// `X-Ember-Start`: `warm`, `cold_container` or `cold_vm`.
    pub(crate) start: String,
    /// The REPORT line's Init Duration.
    pub(crate) init_ms: Option<f64>,
}

pub(crate) async fn invoke(client: &Client, name: &str) -> anyhow::Result<Invoked> {
    let path = format!("/2015-03-31/functions/{name}/invocations");
    let reply = client
        .call(
            Method::POST,
            &path,
            &[("x-amz-log-type", "Tail".to_owned())],
            b"{}".to_vec(),
        )
        .await?;
    anyhow::ensure!(
        reply.headers.get("x-amz-function-error").is_none(),
        "{name} failed: {}",
        String::from_utf8_lossy(&reply.body)
    );
    let header = |name: &str| {
        reply
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let log = base64::engine::general_purpose::STANDARD
        .decode(header("x-amz-log-result"))
        .unwrap_or_default();
    Ok(Invoked {
        start: header("x-ember-start"),
        init_ms: init_duration(&String::from_utf8_lossy(&log)),
    })
}

/// The REPORT line's `Init Duration`, in ms.
pub(crate) fn init_duration(log: &str) -> Option<f64> {
    let rest = log.split("Init Duration: ").nth(1)?;
    rest.split(' ').next()?.parse().ok()
}

pub(crate) async fn delete(client: &Client, name: &str) -> Result<(), ClientError> {
    let path = format!("/2015-03-31/functions/{name}");
    client.json(Method::DELETE, &path, None).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_duration_comes_from_the_report_line() {
        let log = "START RequestId: x\nREPORT RequestId: x\tDuration: 1.20 ms\tBilled Duration: 2 ms\tMemory Size: 128 MB\tMax Memory Used: 20 MB\tInit Duration: 41.57 ms\t\n";
        assert_eq!(init_duration(log), Some(41.57));
        assert_eq!(
            init_duration("REPORT RequestId: x\tDuration: 1.20 ms\t"),
            None
        );
    }

    #[test]
    fn runtime_kinds_parse() {
        assert_eq!(Kind::parse("node"), Ok(Kind::Node));
        assert_eq!(Kind::parse("python"), Ok(Kind::Python));
        assert_eq!(Kind::parse("provided"), Ok(Kind::Provided));
        assert!(Kind::parse("java").is_err());
    }
}
