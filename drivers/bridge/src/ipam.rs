//! Address pools, one per pod CIDR. Allocation is round-robin from the last handed-out address
//! (like CNI's host-local), so a freed address is not reused at once. The pools are in memory;
//! what is allocated is rebuilt at start from the persisted attachments (see `records`), so a
//! restarted driver never hands out an address twice.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why an address could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// No free address is left.
    #[error("no free address left in {0}")]
    Exhausted(IpNet),
    /// A requested address is not in the pool's range.
    #[error(
        "{ip} is not a usable pod address of {subnet} (network, gateway and broadcast addresses are reserved)"
    )]
    OutOfRange {
        /// Requested.
        ip: IpAddr,
        /// Pool.
        subnet: IpNet,
    },
    /// A requested address belongs to somebody else.
    #[error("{ip} is already in use by {owner}")]
    InUse {
        /// Requested.
        ip: IpAddr,
        /// Its holder.
        owner: String,
    },
}

/// One CIDR's addresses.
#[derive(Debug)]
pub struct Pool {
    subnet: IpNet,
    used: HashMap<IpAddr, String>,
    /// Offset of the last address handed out.
    cursor: u128,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

impl Pool {
    /// A pool over `subnet` (host bits clear).
    pub fn new(subnet: IpNet) -> Self {
        Self {
            subnet,
            used: HashMap::new(),
            cursor: 1,
        }
    }

    /// The CIDR.
    pub fn subnet(&self) -> IpNet {
        self.subnet
    }

    fn size(&self) -> u128 {
        let bits = self.subnet.max_prefix_len() - self.subnet.prefix_len();
        if bits >= 128 {
            u128::MAX
        } else {
            1u128 << bits
        }
    }

    /// Offsets handed to pods: 2 ..= last (the network address and the gateway at offset 1
    /// are reserved, and IPv4's broadcast address).
    fn last_offset(&self) -> u128 {
        match self.subnet {
            IpNet::V4(_) => self.size() - 2,
            IpNet::V6(_) => self.size() - 1,
        }
    }

    fn at(&self, offset: u128) -> IpAddr {
        let base = to_u128(self.subnet.network());
        match self.subnet {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from((base + offset) as u32)),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(base + offset)),
        }
    }

    fn offset_of(&self, ip: IpAddr) -> Option<u128> {
        if !self.subnet.contains(&ip) {
            return None;
        }
        let off = to_u128(ip) - to_u128(self.subnet.network());
        (2..=self.last_offset()).contains(&off).then_some(off)
    }

    /// The gateway: the first address after the network address; it lives on the bridge.
    pub fn gateway(&self) -> IpAddr {
        self.at(1)
    }

    /// How many pod addresses the pool has, and how many are taken.
    pub fn usage(&self) -> (u128, usize) {
        (self.last_offset() - 1, self.used.len())
    }

    /// Whether `ip` belongs to this pool's CIDR.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.subnet.contains(&ip)
    }

    /// Takes the next free address for `owner`.
    pub fn allocate(&mut self, owner: &str) -> Result<IpAddr, IpamError> {
        let (capacity, used) = self.usage();
        if used as u128 >= capacity {
            return Err(IpamError::Exhausted(self.subnet));
        }
        let last = self.last_offset();
        let mut off = self.cursor;
        // At most `used + 1` probes find a free one, since fewer than `capacity` are used.
        loop {
            off = if off >= last { 2 } else { off + 1 };
            let ip = self.at(off);
            if let std::collections::hash_map::Entry::Vacant(slot) = self.used.entry(ip) {
                slot.insert(owner.to_string());
                self.cursor = off;
                return Ok(ip);
            }
        }
    }

    /// Takes `ip` for `owner`: a static request, or a restore at start. Taking an address one
    /// already holds is fine.
    pub fn reserve(&mut self, ip: IpAddr, owner: &str) -> Result<(), IpamError> {
        if self.offset_of(ip).is_none() {
            return Err(IpamError::OutOfRange {
                ip,
                subnet: self.subnet,
            });
        }
        match self.used.get(&ip) {
            Some(o) if o != owner => Err(IpamError::InUse {
                ip,
                owner: o.clone(),
            }),
            _ => {
                self.used.insert(ip, owner.to_string());
                Ok(())
            }
        }
    }

    /// Gives `ip` back (only if `owner` holds it).
    pub fn release(&mut self, ip: IpAddr, owner: &str) {
        if self.used.get(&ip).is_some_and(|o| o == owner) {
            self.used.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(s: &str) -> Pool {
        Pool::new(s.parse().unwrap())
    }

    #[test]
    fn v4_skips_network_gateway_broadcast_and_exhausts() {
        let mut p = pool("10.0.0.0/29");
        assert_eq!(p.gateway().to_string(), "10.0.0.1");
        let got: Vec<String> = (0..5)
            .map(|i| p.allocate(&format!("o{i}")).unwrap().to_string())
            .collect();
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        assert_eq!(
            p.allocate("x"),
            Err(IpamError::Exhausted("10.0.0.0/29".parse().unwrap()))
        );
        p.release("10.0.0.4".parse().unwrap(), "o2");
        assert_eq!(p.allocate("y").unwrap().to_string(), "10.0.0.4");
    }

    #[test]
    fn round_robin_does_not_reuse_a_freed_address_at_once() {
        let mut p = pool("10.0.0.0/24");
        let a = p.allocate("a").unwrap();
        p.release(a, "a");
        let b = p.allocate("b").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn v6_uses_the_whole_prefix_after_the_gateway() {
        let mut p = pool("fd00:10:244::/64");
        assert_eq!(p.gateway().to_string(), "fd00:10:244::1");
        assert_eq!(p.allocate("a").unwrap().to_string(), "fd00:10:244::2");
        p.reserve("fd00:10:244::ffff:ffff:ffff:ffff".parse().unwrap(), "b")
            .unwrap();
    }

    #[test]
    fn static_requests_are_honoured_or_refused_with_the_reason() {
        let mut p = pool("10.0.0.0/24");
        p.reserve("10.0.0.9".parse().unwrap(), "a").unwrap();
        p.reserve("10.0.0.9".parse().unwrap(), "a").unwrap();
        let err = p.reserve("10.0.0.9".parse().unwrap(), "b").unwrap_err();
        assert_eq!(err.to_string(), "10.0.0.9 is already in use by a");
        for bad in ["10.0.0.0", "10.0.0.1", "10.0.0.255", "10.0.1.5"] {
            assert!(matches!(
                p.reserve(bad.parse().unwrap(), "b"),
                Err(IpamError::OutOfRange { .. })
            ));
        }
        // Allocation skips the statically held address.
        for _ in 0..7 {
            p.allocate("c").unwrap();
        }
        assert_eq!(p.allocate("c").unwrap().to_string(), "10.0.0.10");
    }
}
