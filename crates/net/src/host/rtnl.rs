//! A small blocking rtnetlink client: the link, address and route requests the host side makes,
//! each one message and its acknowledgement (or a dump), on a socket of its own.
//!
//! Blocking on purpose: a VM's link is made between the clone of its first process and its
//! start (on the driver's blocking thread), and removed by a VM's teardown, which runs both from
//! async code and from synchronous `kill`. Each request is a few microseconds of kernel work.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// One link of the host: its index and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
}

/// One address of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub address: IpAddr,
    pub prefix_len: u8,
    pub label: Option<String>,
}

/// A route of the main table: its destination and output link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: IpNet,
    pub oif: Option<u32>,
}

/// A route netlink socket.
#[derive(Debug)]
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends `message` and collects the answers: the dumped objects for a dump, nothing for a
    /// request that is acknowledged. A netlink error is the `io::Error` of its errno.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let length = reply.header.length as usize;
                if reply.header.sequence_number != self.seq {
                    offset += length.max(1);
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(err) => {
                        return match err.code {
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                            None => Ok(out),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(inner) => out.push(inner),
                    _ => {}
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }

    fn ack(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.request(message, NLM_F_ACK | flags).map(drop)
    }

    /// Creates a veth pair: `host` in this namespace (down), its peer `peer_name` directly in
    /// the network namespace of process `pid`, down and unconfigured.
    pub fn add_veth(&mut self, host: &str, peer_name: &str, pid: u32) -> io::Result<()> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(peer_name.to_owned()));
        peer.attributes.push(LinkAttribute::NetNsPid(pid));
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::IfName(host.to_owned()));
        link.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.ack(
            RouteNetlinkMessage::NewLink(link),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// The index of the link named `name` (`if_nametoindex`: no link dump to parse).
    pub fn link_index(&mut self, name: &str) -> io::Result<u32> {
        nix::net::if_::if_nametoindex(name).map_err(io::Error::from)
    }

    /// Brings link `index` up.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        self.ack(RouteNetlinkMessage::SetLink(link), 0)
    }

    /// Removes the link named `name` (and, for a veth, its peer). `Ok(false)`: there was none.
    pub fn del_link(&mut self, name: &str) -> io::Result<bool> {
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.ack(RouteNetlinkMessage::DelLink(link), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every link of this namespace (`if_nameindex`).
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let links = nix::net::if_::if_nameindex().map_err(io::Error::from)?;
        Ok(links
            .iter()
            .map(|l| Link {
                index: l.index(),
                name: l.name().to_string_lossy().into_owned(),
            })
            .collect())
    }

    /// Adds `local` (a /32) to link `index`, with `peer` as the other end of a point-to-point
    /// link (the kernel then routes `peer`/32 through the link) and `label` if given.
    pub fn add_address_v4(
        &mut self,
        index: u32,
        local: Ipv4Addr,
        peer: Option<Ipv4Addr>,
        label: Option<&str>,
    ) -> io::Result<()> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = 32;
        message.header.index = index;
        message
            .attributes
            .push(AddressAttribute::Local(IpAddr::V4(local)));
        message
            .attributes
            .push(AddressAttribute::Address(IpAddr::V4(peer.unwrap_or(local))));
        if let Some(label) = label {
            message
                .attributes
                .push(AddressAttribute::Label(label.to_owned()));
        }
        self.ack(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Removes `address` (a /32) from link `index`. `Ok(false)`: it was not there.
    pub fn del_address_v4(&mut self, index: u32, address: Ipv4Addr) -> io::Result<bool> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = 32;
        message.header.index = index;
        message
            .attributes
            .push(AddressAttribute::Local(IpAddr::V4(address)));
        match self.ack(RouteNetlinkMessage::DelAddress(message), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every address of this namespace, IPv4 and IPv6.
    pub fn addresses(&mut self) -> io::Result<Vec<Address>> {
        let replies = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewAddress(a) => {
                    let mut local = None;
                    let mut address = None;
                    let mut label = None;
                    for attr in a.attributes {
                        match attr {
                            AddressAttribute::Local(ip) => local = Some(ip),
                            AddressAttribute::Address(ip) => address = Some(ip),
                            AddressAttribute::Label(l) => label = Some(l),
                            _ => {}
                        }
                    }
                    Some(Address {
                        index: a.header.index,
                        address: local.or(address)?,
                        prefix_len: a.header.prefix_len,
                        label,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Adds `local` (a /128, without duplicate address detection: the link is the host's and
    /// one VM's alone) to link `index`.
    pub fn add_address_v6(&mut self, index: u32, local: Ipv6Addr) -> io::Result<()> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet6;
        message.header.prefix_len = 128;
        message.header.index = index;
        message
            .attributes
            .push(AddressAttribute::Address(IpAddr::V6(local)));
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        self.ack(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Routes `destination` (a /128) through link `index`, at once (a peer address's route
    /// would wait for the link's carrier and the address's DAD).
    pub fn add_route_v6(&mut self, index: u32, destination: Ipv6Addr) -> io::Result<()> {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet6;
        message.header.destination_prefix_length = 128;
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Static;
        message.header.scope = RouteScope::Universe;
        message.header.kind = RouteType::Unicast;
        message
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet6(
                destination,
            )));
        message.attributes.push(RouteAttribute::Oif(index));
        self.ack(
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// The IPv4 routes of the main table.
    pub fn routes_v4(&mut self) -> io::Result<Vec<Route>> {
        self.routes(AddressFamily::Inet)
    }

    /// The IPv6 routes of the main table (none without IPv6 in the kernel).
    pub fn routes_v6(&mut self) -> io::Result<Vec<Route>> {
        match self.routes(AddressFamily::Inet6) {
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => Ok(Vec::new()),
            other => other,
        }
    }

    fn routes(&mut self, family: AddressFamily) -> io::Result<Vec<Route>> {
        let mut message = RouteMessage::default();
        message.header.address_family = family;
        let replies = self.request(RouteNetlinkMessage::GetRoute(message), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewRoute(route) => {
                    let mut table = u32::from(route.header.table);
                    let mut destination = match family {
                        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    };
                    let mut oif = None;
                    for attr in &route.attributes {
                        match attr {
                            RouteAttribute::Table(t) => table = *t,
                            RouteAttribute::Destination(RouteAddress::Inet(d)) => {
                                destination = IpAddr::V4(*d)
                            }
                            RouteAttribute::Destination(RouteAddress::Inet6(d)) => {
                                destination = IpAddr::V6(*d)
                            }
                            RouteAttribute::Oif(i) => oif = Some(*i),
                            _ => {}
                        }
                    }
                    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
                        return None;
                    }
                    let destination =
                        IpNet::new(destination, route.header.destination_prefix_length).ok()?;
                    Some(Route { destination, oif })
                }
                _ => None,
            })
            .collect())
    }
}
