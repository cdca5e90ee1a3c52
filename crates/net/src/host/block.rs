//! The instance's address block: which /24 of the `--network-cidr` pool a server claims (an
//! flock on `<lock_dir>/<block>.lock`, held for the server's life), the names derived from it,
//! the overlap check against the host's routes, and the allocation of VM addresses in it.
//!
//! Everything here but [`BlockLock::claim`] is pure and tested without root.

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};
use nix::fcntl::{Flock, FlockArg};

use super::HostError;

/// The length of an instance's block: a /24, `.1` the gateway, `.2`–`.254` its VMs.
pub const BLOCK_PREFIX: u8 = 24;

/// The first and last host octet a VM gets.
pub const FIRST_VM: u8 = 2;
pub const LAST_VM: u8 = 254;

/// One instance's /24 and the names derived from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    net: Ipv4Net,
}

impl Block {
    /// The block `net` (a /24; host bits cleared).
    pub fn new(net: Ipv4Net) -> Result<Self, HostError> {
        if net.prefix_len() != BLOCK_PREFIX {
            return Err(HostError::Pool(format!(
                "{net} is not a /{BLOCK_PREFIX} block"
            )));
        }
        Ok(Self { net: net.trunc() })
    }

    /// The block as a prefix.
    pub fn net(&self) -> Ipv4Net {
        self.net
    }

    /// The gateway, `.1`: the host's end of every VM link of the instance.
    pub fn gateway(&self) -> Ipv4Addr {
        self.host(1)
    }

    /// The address whose last octet is `octet`.
    pub fn host(&self, octet: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.net.network().octets();
        Ipv4Addr::new(a, b, c, octet)
    }

    /// The instance's tag: the block's network address as 8 hex digits (`10.213.5.0` →
    /// `0ad50500`). Unique among live instances (each holds its block's lock), and derivable
    /// from the block alone, so a sweep knows what a dead holder's table and links were named.
    pub fn tag(&self) -> String {
        let [a, b, c, d] = self.net.network().octets();
        format!("{a:02x}{b:02x}{c:02x}{d:02x}")
    }

    /// The instance's nftables table (inet family).
    pub fn table(&self) -> String {
        format!("ember_{}", self.tag())
    }

    /// The prefix every host-side VM link of the instance starts with (`em<tag>v`).
    pub fn link_prefix(&self) -> String {
        format!("em{}v", self.tag())
    }

    /// The host-side link of the VM at `address` (`em<tag>v<last octet>`, at most 14
    /// characters: within IFNAMSIZ).
    pub fn link_name(&self, address: Ipv4Addr) -> String {
        format!("{}{}", self.link_prefix(), address.octets()[3])
    }

    /// The label of the gateway address on `lo` (`lo:em<tag>`), which tells Ember's gateway
    /// addresses apart from the host's own.
    pub fn lo_label(&self) -> String {
        format!("lo:em{}", self.tag())
    }

    /// The lock file's name in the lock directory (`10.213.5.0-24.lock`).
    pub fn lock_name(&self) -> String {
        format!("{}-{}.lock", self.net.network(), BLOCK_PREFIX)
    }

    /// The conntrack mark of connections from `address` (see [`super::conntrack`]): the
    /// address's bytes read in host order, which is what the ruleset's `ct mark set ip saddr`
    /// stores.
    pub fn mark(address: Ipv4Addr) -> u32 {
        u32::from_ne_bytes(address.octets())
    }

    /// The mask that selects a whole block's marks.
    pub fn mark_mask() -> u32 {
        u32::from_ne_bytes([0xff, 0xff, 0xff, 0])
    }
}

/// Whether `name` is a host-side VM link of some instance (`em` + 8 hex digits + `v` + 1-3
/// digits), as opposed to a host interface that happens to start with `em` (`em1`).
pub fn is_vm_link(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("em") else {
        return false;
    };
    let (tag, rest) = rest.split_at_checked(8).unwrap_or(("", ""));
    let Some(octet) = rest.strip_prefix('v') else {
        return false;
    };
    tag.bytes().all(|b| b.is_ascii_hexdigit())
        && tag.len() == 8
        && (1..=3).contains(&octet.len())
        && octet.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `label` is the label of an Ember gateway address on `lo` (`lo:em` + 8 hex digits).
pub fn is_gateway_label(label: &str) -> bool {
    label
        .strip_prefix("lo:em")
        .is_some_and(|tag| tag.len() == 8 && tag.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The /24 blocks of `pool`, in order. The pool must be IPv4 and at least a /24.
pub fn blocks(pool: Ipv4Net) -> Result<impl Iterator<Item = Block>, HostError> {
    if pool.prefix_len() > BLOCK_PREFIX {
        return Err(HostError::Pool(format!(
            "--network-cidr {pool} is smaller than one /{BLOCK_PREFIX} block"
        )));
    }
    if pool != pool.trunc() {
        return Err(HostError::Pool(format!(
            "--network-cidr {pool} has host bits set; did you mean {}?",
            pool.trunc()
        )));
    }
    let subnets = pool
        .subnets(BLOCK_PREFIX)
        .map_err(|e| HostError::Pool(format!("--network-cidr {pool}: {e}")))?;
    Ok(subnets.map(|net| Block { net }))
}

/// The host routes (and addresses' networks) that `pool` overlaps, leaving out default routes
/// and what Ember instances made themselves (their VM links and gateways: the caller filters
/// those by interface name and label). An Ember pool must be address space the host does not
/// otherwise use: a VM would shadow whatever the host reaches there.
pub fn overlapping(pool: Ipv4Net, routes: &[IpNet]) -> Vec<IpNet> {
    let pool = IpNet::V4(pool);
    let mut out: Vec<IpNet> = routes
        .iter()
        .copied()
        .filter(|r| r.prefix_len() > 0)
        .filter(|r| r.contains(&pool) || pool.contains(r))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The VM addresses of a block: `.2`–`.254`, handed out next-fit (the address after the last
/// one given, wrapping), so that an address just released is the last to be reused.
#[derive(Debug, Clone)]
pub struct Allocator {
    used: [bool; 256],
    next: u8,
}

impl Default for Allocator {
    fn default() -> Self {
        Self {
            used: [false; 256],
            next: FIRST_VM,
        }
    }
}

impl Allocator {
    /// A free host octet, now taken; `None` when all 253 are in use.
    pub fn allocate(&mut self) -> Option<u8> {
        let span = usize::from(LAST_VM - FIRST_VM) + 1;
        for step in 0..span {
            let offset = (usize::from(self.next - FIRST_VM) + step) % span;
            // offset < span ≤ 253, so it fits a u8 with FIRST_VM added.
            let octet = FIRST_VM + u8::try_from(offset).unwrap_or(0);
            if !self.used[usize::from(octet)] {
                self.used[usize::from(octet)] = true;
                self.next = if octet == LAST_VM {
                    FIRST_VM
                } else {
                    octet + 1
                };
                return Some(octet);
            }
        }
        None
    }

    /// Gives `octet` back. Releasing one not taken does nothing.
    pub fn release(&mut self, octet: u8) {
        if (FIRST_VM..=LAST_VM).contains(&octet) {
            self.used[usize::from(octet)] = false;
        }
    }

    /// How many addresses are taken.
    pub fn in_use(&self) -> usize {
        self.used.iter().filter(|u| **u).count()
    }
}

/// The flock on a block's lock file, held for the instance's life; the kernel drops it when the
/// process dies, however it dies.
#[derive(Debug)]
pub struct BlockLock {
    _lock: Flock<fs::File>,
    path: PathBuf,
}

impl BlockLock {
    /// Tries to lock `block` in `dir` (created, mode 0700, if missing). `Ok(None)`: another
    /// live instance holds it.
    pub fn claim(dir: &Path, block: &Block) -> Result<Option<Self>, HostError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| HostError::io(format!("cannot create {}", dir.display()), e))?;
        let path = dir.join(block.lock_name());
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| HostError::io(format!("cannot open {}", path.display()), e))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(Self { _lock: lock, path })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(HostError::io(
                format!("cannot lock {}", path.display()),
                errno.into(),
            )),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn a_block_names_its_gateway_tag_table_links_and_lock() {
        let block = Block::new(net("10.213.5.0/24")).unwrap();
        assert_eq!(block.gateway(), Ipv4Addr::new(10, 213, 5, 1));
        assert_eq!(block.tag(), "0ad50500");
        assert_eq!(block.table(), "ember_0ad50500");
        assert_eq!(
            block.link_name(Ipv4Addr::new(10, 213, 5, 254)),
            "em0ad50500v254"
        );
        assert!(block.link_name(Ipv4Addr::new(10, 213, 5, 254)).len() < 16);
        assert_eq!(block.lo_label(), "lo:em0ad50500");
        assert_eq!(block.lock_name(), "10.213.5.0-24.lock");
        assert!(Block::new(net("10.213.0.0/16")).is_err());
    }

    #[test]
    fn a_blocks_mask_selects_exactly_its_addresses_marks() {
        let mask = Block::mark_mask();
        let base = Block::mark(Ipv4Addr::new(10, 213, 5, 0));
        for octet in [0, 1, 2, 200, 255] {
            assert_eq!(Block::mark(Ipv4Addr::new(10, 213, 5, octet)) & mask, base);
        }
        assert_ne!(Block::mark(Ipv4Addr::new(10, 213, 6, 2)) & mask, base);
        assert_ne!(
            Block::mark(Ipv4Addr::new(10, 213, 5, 2)),
            Block::mark(Ipv4Addr::new(10, 213, 5, 3))
        );
    }

    #[test]
    fn vm_links_and_gateway_labels_are_told_from_host_interfaces() {
        for name in ["em0ad50500v2", "em0ad50500v254", "emdeadbeefv7"] {
            assert!(is_vm_link(name), "{name}");
        }
        for name in [
            "em1",
            "eth0",
            "em0ad50500",
            "em0ad50500v",
            "em0ad50500v1234",
            "emxxxxxxxxv2",
        ] {
            assert!(!is_vm_link(name), "{name}");
        }
        assert!(is_gateway_label("lo:em0ad50500"));
        for label in ["lo", "lo:1", "lo:em0ad5", "eth0:em0ad50500"] {
            assert!(!is_gateway_label(label), "{label}");
        }
    }

    #[test]
    fn a_pool_splits_into_its_blocks() {
        let all: Vec<_> = blocks(net("10.213.0.0/16")).unwrap().collect();
        assert_eq!(all.len(), 256);
        assert_eq!(all[0].net(), net("10.213.0.0/24"));
        assert_eq!(all[255].net(), net("10.213.255.0/24"));
        assert_eq!(blocks(net("10.9.9.0/24")).unwrap().count(), 1);
        assert!(blocks(net("10.9.9.0/25")).is_err());
        assert!(blocks(net("10.213.1.0/16")).is_err());
    }

    #[test]
    fn the_pool_must_not_overlap_a_host_route() {
        let routes: Vec<IpNet> = [
            "0.0.0.0/0",
            "192.0.2.0/24",
            "10.0.0.0/8",
            "10.213.7.0/24",
            "::/0",
        ]
        .iter()
        .map(|r| r.parse().unwrap())
        .collect();
        let hit = overlapping(net("10.213.0.0/16"), &routes);
        assert_eq!(
            hit,
            ["10.0.0.0/8", "10.213.7.0/24"]
                .map(|r| r.parse::<IpNet>().unwrap())
                .to_vec()
        );
        assert!(overlapping(net("100.127.0.0/16"), &routes).is_empty());
    }

    #[test]
    fn addresses_are_two_to_254_next_fit_and_run_out() {
        let mut alloc = Allocator::default();
        assert_eq!(alloc.allocate(), Some(2));
        assert_eq!(alloc.allocate(), Some(3));
        alloc.release(2);
        // Next-fit: a released address is not handed out again at once.
        assert_eq!(alloc.allocate(), Some(4));
        let mut got = vec![3, 4];
        while let Some(octet) = alloc.allocate() {
            got.push(octet);
        }
        got.sort();
        assert_eq!(got, (2..=254).collect::<Vec<u8>>());
        assert_eq!(alloc.in_use(), 253);
        assert_eq!(alloc.allocate(), None);
        alloc.release(100);
        assert_eq!(alloc.allocate(), Some(100));
        alloc.release(0);
        alloc.release(255);
        assert_eq!(alloc.in_use(), 253);
    }

    #[test]
    fn two_claims_of_one_block_exclude_each_other_until_the_first_ends() {
        let dir = tempfile::tempdir().unwrap();
        let block = Block::new(net("10.213.9.0/24")).unwrap();
        let first = BlockLock::claim(dir.path(), &block).unwrap().unwrap();
        assert!(BlockLock::claim(dir.path(), &block).unwrap().is_none());
        let other = Block::new(net("10.213.10.0/24")).unwrap();
        assert!(BlockLock::claim(dir.path(), &other).unwrap().is_some());
        drop(first);
        assert!(BlockLock::claim(dir.path(), &block).unwrap().is_some());
    }
}
