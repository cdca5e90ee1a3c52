//! Deleting a VM's connection-tracking state through ctnetlink, so that an address handed to the
//! next VM inherits no flow (no NAT binding, no "established" verdict) of the last one.
//!
//! The instance's ruleset marks every connection a VM opens with the VM's address
//! (`ct mark set ip saddr`, see [`super::ruleset`]), so one `IPCTNL_MSG_CT_DELETE` carrying
//! `CTA_MARK`/`CTA_MARK_MASK` removes exactly one VM's entries (mask all ones) or a whole
//! block's (mask of the first three bytes): the kernel's filtered flush, no dump needed.

use std::io;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE`.
const CT_DELETE: u16 = (1 << 8) | 2;
/// `CTA_MARK` and `CTA_MARK_MASK` (linux/netfilter/nfnetlink_conntrack.h).
const CTA_MARK: u16 = 8;
const CTA_MARK_MASK: u16 = 21;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
/// `NLMSG_ERROR`: the acknowledgement.
const NLMSG_ERROR: u16 = 2;

/// The request deleting every conntrack entry whose mark, masked with `mask`, is `mark`.
fn delete_request(mark: u32, mask: u32, seq: u32) -> Vec<u8> {
    let mut msg = Vec::with_capacity(36);
    msg.extend_from_slice(&36u32.to_ne_bytes());
    msg.extend_from_slice(&CT_DELETE.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: any family, version 0, resource id 0.
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    for (kind, value) in [(CTA_MARK, mark), (CTA_MARK_MASK, mask)] {
        msg.extend_from_slice(&8u16.to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&value.to_be_bytes());
    }
    msg
}

/// The errno of an `NLMSG_ERROR` answer to `seq` (0: acknowledged), if `data` is one.
fn ack_errno(data: &[u8], seq: u32) -> Option<i32> {
    let kind = u16::from_ne_bytes(data.get(4..6)?.try_into().ok()?);
    let got = u32::from_ne_bytes(data.get(8..12)?.try_into().ok()?);
    if kind != NLMSG_ERROR || got != seq {
        return None;
    }
    let code = i32::from_ne_bytes(data.get(16..20)?.try_into().ok()?);
    Some(-code)
}

/// Deletes every conntrack entry whose mark, masked with `mask`, equals `mark`.
pub fn delete_marked(mark: u32, mask: u32) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let seq = 1;
    socket.send(&delete_request(mark, mask, seq), 0)?;
    loop {
        let (data, _) = socket.recv_from_full()?;
        match ack_errno(&data, seq) {
            Some(0) => return Ok(()),
            Some(errno) => return Err(io::Error::from_raw_os_error(errno)),
            None => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_carries_the_mark_and_mask_in_network_order() {
        let msg = delete_request(0x0a0b_0c0d, 0xffff_ff00, 7);
        assert_eq!(msg.len(), 36);
        assert_eq!(u32::from_ne_bytes(msg[0..4].try_into().unwrap()), 36);
        assert_eq!(u16::from_ne_bytes(msg[4..6].try_into().unwrap()), 0x0102);
        assert_eq!(u32::from_ne_bytes(msg[8..12].try_into().unwrap()), 7);
        assert_eq!(u16::from_ne_bytes(msg[20..22].try_into().unwrap()), 8);
        assert_eq!(
            u16::from_ne_bytes(msg[22..24].try_into().unwrap()),
            CTA_MARK
        );
        assert_eq!(&msg[24..28], &[0x0a, 0x0b, 0x0c, 0x0d]);
        assert_eq!(
            u16::from_ne_bytes(msg[30..32].try_into().unwrap()),
            CTA_MARK_MASK
        );
        assert_eq!(&msg[32..36], &[0xff, 0xff, 0xff, 0x00]);
    }

    #[test]
    fn an_ack_is_told_from_an_error_and_from_other_answers() {
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack[8..12].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(ack_errno(&ack, 3), Some(0));
        assert_eq!(ack_errno(&ack, 4), None);
        ack[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(ack_errno(&ack, 3), Some(libc::EPERM));
        ack[4..6].copy_from_slice(&16u16.to_ne_bytes());
        assert_eq!(ack_errno(&ack, 3), None);
        assert_eq!(ack_errno(&[0; 8], 3), None);
    }
}
