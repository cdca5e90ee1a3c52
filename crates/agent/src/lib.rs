//! The Ember agent: the first process inside each VM. It talks to the host over the protocol
//! ([`ember_protocol`]), creates [`container`]s, and serves each one the Lambda [`runtime_api`]
//! and the environment ([`mod@env`]) Lambda would give it.
//!
//! `unsafe` is denied everywhere but in [`container::init`], the one module that forks.
#![deny(unsafe_code)]

pub mod agent;
pub mod container;
pub mod env;
pub mod net;
pub mod reaper;
pub mod runtime_api;
pub mod util;

/// This agent's version, sent to the host in its Hello.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
