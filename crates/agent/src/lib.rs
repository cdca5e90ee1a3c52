//! The Ember agent: the first process inside each VM. It talks to the host over the
//! [`protocol`], creates containers, and serves each one the Lambda [`runtime_api`] and the
//! environment ([`mod@env`]) Lambda would give it.
#![forbid(unsafe_code)]

pub mod agent;
pub mod env;
pub mod protocol;
pub mod runtime_api;

/// This agent's version, sent to the host in its Hello.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
