//! The DNS forwarder a VM's containers resolve through: it listens on the VMs' gateway address
//! (UDP and TCP port 53) and relays each query to the host's resolvers (its `/etc/resolv.conf`)
//! or those given with `ember serve --dns IP`.
