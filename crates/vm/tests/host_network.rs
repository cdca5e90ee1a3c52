//! A Linux VM with the host's network on the real kernel, as root: its link, what its agent is
//! told (`EMBER_VM_NETWORK`), its own `/etc/resolv.conf` and `/etc/hosts`, and that the link and
//! the address go with the VM, whether it is stopped or dropped.

// Helpers outside #[test] functions fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

mod common;

use common::*;
use ember_net::host::{HostConfig, HostNetwork, VM_HOSTS};
use ember_protocol::{VmNetwork, VM_NETWORK_ENV};
use ember_vm::linux::LinuxDriver;
use ember_vm::VmDriver;

fn interfaces(pid: u32) -> Vec<String> {
    read(format!("/proc/{pid}/net/dev"))
        .lines()
        .skip(2)
        .map(|l| l.split(':').next().unwrap().trim().to_owned())
        .collect()
}

fn agent_env(pid: u32, key: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    environ
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_owned))
}

#[tokio::test]
async fn a_vm_gets_a_link_its_own_resolver_and_hosts_and_they_go_with_it() {
    if !privileged() {
        return;
    }
    let network = Arc::new(
        HostNetwork::start(HostConfig {
            pool: "10.247.0.0/24".parse().unwrap(),
            ..HostConfig::new(9876)
        })
        .unwrap(),
    );
    let scratch = Scratch::new("hostnet");
    let mut config = Scratch::config(&scratch.prefix, scratch.state.path());
    config.network = Some(network.clone());
    let driver = LinuxDriver::new(config).unwrap();

    let vm = driver.boot(spec("net1")).await.unwrap();
    let pid = vm.host_pid().unwrap();
    // The VM's end is eth0 in its own namespace; the host's end is em<tag>v2.
    assert!(
        interfaces(pid).contains(&"eth0".to_owned()),
        "{:?}",
        interfaces(pid)
    );
    let host_link = format!("em{}v2", network.tag());
    assert!(Path::new("/sys/class/net").join(&host_link).exists());
    // The agent is told its address, gateway and Ember's API port.
    let told: VmNetwork =
        serde_json::from_str(&agent_env(pid, VM_NETWORK_ENV).expect("no EMBER_VM_NETWORK"))
            .unwrap();
    assert_eq!(told.interface, "eth0");
    assert_eq!(told.address.to_string(), "10.247.0.2");
    assert_eq!(told.gateway, network.gateway());
    assert_eq!(told.api_port, 9876);
    // And, as this host has IPv6, the IPv6 pair of each: the block's /64, ending in the IPv4
    // address.
    let block6 = network.block6().expect("this host has IPv6");
    assert_eq!(
        told.address_v6.map(|a| a.to_string()).as_deref(),
        Some("fd45:6d62:660a:f700::af7:2")
    );
    assert!(block6.contains(&told.address_v6.unwrap()));
    assert_eq!(
        told.gateway_v6.map(|a| a.to_string()).as_deref(),
        Some("fd45:6d62:660a:f700::af7:1")
    );
    // The host routes the VM's IPv6 address through its link.
    let route = std::fs::read_to_string("/proc/net/ipv6_route").unwrap();
    let v6_hex: String = told
        .address_v6
        .unwrap()
        .octets()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        route
            .lines()
            .any(|l| l.starts_with(&v6_hex) && l.trim_end().ends_with(&host_link)),
        "no route to the VM's IPv6 address through {host_link}"
    );
    // Its own /etc: the gateway resolves, only localhost has a name. The host's /etc is as
    // it was.
    let root = format!("/proc/{pid}/root");
    assert_eq!(
        read(format!("{root}/etc/resolv.conf")) + "\n",
        "nameserver 10.247.0.1\n"
    );
    assert_eq!(read(format!("{root}/etc/hosts")) + "\n", VM_HOSTS);
    assert_ne!(std::fs::read_to_string("/etc/hosts").unwrap(), VM_HOSTS);

    // A second VM: the next address.
    let vm2 = driver.boot(spec("net2")).await.unwrap();
    let pid2 = vm2.host_pid().unwrap();
    let told2: VmNetwork = serde_json::from_str(&agent_env(pid2, VM_NETWORK_ENV).unwrap()).unwrap();
    assert_eq!(told2.address.to_string(), "10.247.0.3");
    assert_eq!(network.in_use(), 2);

    // Stopped: link and address gone.
    vm.shutdown().await.unwrap();
    assert!(!Path::new("/sys/class/net").join(&host_link).exists());
    assert_eq!(network.in_use(), 1);
    // Dropped (killed): the same.
    drop(vm2);
    assert!(!Path::new("/sys/class/net")
        .join(format!("em{}v3", network.tag()))
        .exists());
    assert_eq!(network.in_use(), 0);
    drop(driver);
    network.shutdown().unwrap();
}
