//! Placement against collusion: which peers may hold replicas of the same chunk.
//!
//! Peers that share a network (by default the same IPv4 /24 or IPv6 /48) are likely
//! one owner, or one attacker's Sybils, so two replicas of one chunk never go to the
//! same network group; optionally, never to two peers found the same way (mDNS,
//! bootstrap, DHT, inbound). The network is the one the connection came from, as the
//! [peer book](crate::net::peers) saw it, not what the peer claims (on loopback,
//! where the kernel gives every connection the same source, it is the loopback address
//! the peer listens on). The [actor](super::actor) asks [`PlacementPolicy::group`]
//! for every candidate; this node itself is never constrained.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::net::PeerInfo;

/// The placement rules (`--placement-ipv4-prefix`, `--placement-ipv6-prefix`,
/// `--placement-distinct-discovery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementPolicy {
    /// IPv4 prefix length of a network group (0: no IPv4 rule).
    pub ipv4_prefix: u8,
    /// IPv6 prefix length of a network group (0: no IPv6 rule).
    pub ipv6_prefix: u8,
    /// Replicas of a chunk also go to peers discovered in different ways.
    pub distinct_discovery: bool,
}

impl Default for PlacementPolicy {
    fn default() -> Self {
        Self {
            ipv4_prefix: 24,
            ipv6_prefix: 48,
            distinct_discovery: false,
        }
    }
}

impl PlacementPolicy {
    /// The network group of an address, e.g. `127.0.3.0/24`; `None` when the rule
    /// for its family is off.
    pub fn group_of_ip(&self, ip: IpAddr) -> Option<String> {
        match ip {
            IpAddr::V4(v4) if self.ipv4_prefix > 0 => {
                let bits = u32::from(v4);
                let prefix = self.ipv4_prefix.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                Some(format!(
                    "{}/{prefix}",
                    std::net::Ipv4Addr::from(bits & mask)
                ))
            }
            IpAddr::V6(v6) => {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return self.group_of_ip(IpAddr::V4(v4));
                }
                if self.ipv6_prefix == 0 {
                    return None;
                }
                let bits = u128::from(v6);
                let prefix = self.ipv6_prefix.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                Some(format!(
                    "{}/{prefix}",
                    std::net::Ipv6Addr::from(bits & mask)
                ))
            }
            IpAddr::V4(_) => None,
        }
    }

    /// A peer's network group, from the address the peer book attributes to it.
    pub fn group(&self, peer: &PeerInfo) -> Option<String> {
        peer.ip
            .as_deref()
            .and_then(|ip| ip.parse().ok())
            .and_then(|ip| self.group_of_ip(ip))
    }

    /// The discovery source that must differ, when that rule is on.
    pub fn source<'a>(&self, peer: &'a PeerInfo) -> Option<&'a str> {
        if self.distinct_discovery {
            peer.discovered.as_deref()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_slash_24_and_slash_48_by_default_and_can_be_turned_off() {
        let p = PlacementPolicy::default();
        let g = |s: &str| p.group_of_ip(s.parse().unwrap());
        assert_eq!(g("203.0.113.7"), g("203.0.113.200"));
        assert_ne!(g("203.0.113.7"), g("203.0.114.7"));
        assert_eq!(g("127.0.3.1").as_deref(), Some("127.0.3.0/24"));
        assert_eq!(g("2001:db8:1:2::1"), g("2001:db8:1:ffff::9"));
        assert_ne!(g("2001:db8:1::1"), g("2001:db8:2::1"));
        assert_eq!(g("::ffff:203.0.113.7"), g("203.0.113.9"));
        let off = PlacementPolicy {
            ipv4_prefix: 0,
            ipv6_prefix: 0,
            distinct_discovery: false,
        };
        assert_eq!(off.group_of_ip("203.0.113.7".parse().unwrap()), None);
        let host = PlacementPolicy {
            ipv4_prefix: 32,
            ..p
        };
        assert_ne!(
            host.group_of_ip("10.0.0.1".parse().unwrap()),
            host.group_of_ip("10.0.0.2".parse().unwrap())
        );
    }
}
