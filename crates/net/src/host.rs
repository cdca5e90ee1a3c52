//! The host's side of the VMs' network: the instance's address block, each VM's link, the
//! nftables table enforcing [`crate::policy`] with source NAT, and the sweep of a killed run's
//! leftovers.
