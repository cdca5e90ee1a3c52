//! The network of execution environments (issue 19): what a function may reach, and the host's
//! half of each VM's link to the world.
//!
//! - [`policy`]: the egress policy (`--egress`, `--egress-allow`, `--egress-deny`, a function's
//!   own `egress`) parsed, validated and compiled into an ordered rule list. Pure; no root.
//! - [`dns`]: the DNS forwarder containers resolve through, on the VMs' gateway.
//! - [`host`]: the host's side: the instance's address block, one link per VM, the nftables
//!   table that enforces the policy and NATs, and the sweep of what a killed run left.
//!
//! The VM's half (its `eth0`, one link per container, the VM's own isolation and NAT) lives in
//! the agent (`crates/agent/src/net`), so a microVM backend keeps the same seam: the host gives a
//! VM one link and a [`ember_protocol::VmNetwork`]; the VM does the rest.

pub mod dns;
pub mod host;
pub mod policy;
