//! The egress policy: which destinations an execution environment's outbound connections may
//! reach. Parsed from `ember serve --egress allow|deny`, `--egress-allow CIDR[:PORTS]` and
//! `--egress-deny CIDR[:PORTS]`, refined per function by its own `egress` setting, and compiled
//! into an ordered list of rules that [`crate::host`] renders into nftables.
