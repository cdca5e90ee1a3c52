//! `ember bench vm --network`: the bench acting as the host's side of a VM's network (issue
//! 19), so that a container's cold start can be measured with the VM side's networking (its
//! link, made ahead for spares; `Deny`'s route taken away at assignment) next to without: a
//! veth pair whose VM end goes into the VM's network namespace as `eth0`, the host's end
//! addressed as the gateway, and `EMBER_VM_NETWORK` for the agent. No host firewall and no
//! forwarding: the benchmark's containers reach nothing but their VM.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ember_protocol::VmNetwork;
use ember_vm::linux::{BeforeStart, LinuxConfig};
use nlink::netlink::addr::{Ipv4Address, Ipv6Address};
use nlink::netlink::link::VethLink;
use nlink::netlink::route::Ipv6Route;
use nlink::netlink::{Connection, Route};

/// Gives every VM of `config` a link as the host would (one VM at a time: each boot's link has
/// the same addresses, and goes with its VM).
pub fn host_side(config: &mut LinuxConfig) -> anyhow::Result<()> {
    let third = (std::process::id() % 250) as u8;
    let gateway = Ipv4Addr::new(10, 211, third, 1);
    let vm = Ipv4Addr::new(10, 211, third, 2);
    let gateway_v6 = Ipv6Addr::new(0xfdee, 0x211, third.into(), 0, 0, 0, 0, 1);
    let vm_v6 = Ipv6Addr::new(0xfdee, 0x211, third.into(), 0, 0, 0, 0, 2);
    let network = VmNetwork {
        interface: "eth0".into(),
        address: vm,
        gateway,
        address_v6: Some(vm_v6),
        gateway_v6: Some(gateway_v6),
        api_port: 9,
    };
    config.agent_env.push((
        ember_protocol::VM_NETWORK_ENV.into(),
        serde_json::to_string(&network)?,
    ));
    let link = format!("ebv{}", std::process::id() % 1_000_000);
    config.before_start = Some(BeforeStart(Arc::new(move |_vm, pid| {
        let link = link.clone();
        let made = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime
                .block_on(async {
                    let host = Connection::<Route>::new()?;
                    // The previous VM's, if its namespace is still being torn down.
                    let _ = host.del_link(link.as_str()).await;
                    host.add_link(VethLink::new(&link, "eth0").peer_netns_pid(pid))
                        .await?;
                    host.set_link_up(link.as_str()).await?;
                    host.add_address(Ipv4Address::new(&link, gateway, 32).peer(vm))
                        .await?;
                    host.add_address(Ipv6Address::new(&link, gateway_v6, 128).peer(vm_v6).nodad())
                        .await?;
                    host.add_route(Ipv6Route::from_addr(vm_v6, 128).dev(&link))
                        .await
                })
                .map_err(std::io::Error::other)
        });
        made.join()
            .map_err(|_| std::io::Error::other("the host-side link's thread panicked"))?
    })));
    Ok(())
}
