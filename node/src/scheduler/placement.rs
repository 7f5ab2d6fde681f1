//! Placement against collusion: which peers may hold replicas of the same chunk, and
//! which of the candidates a chunk's new replicas go to.
//!
//! Peers that share a network (by default the same IPv4 /24 or IPv6 /48) are likely
//! one owner, or one attacker's Sybils, so two replicas of one chunk never go to the
//! same network group; optionally, never to two peers found the same way (mDNS,
//! bootstrap, DHT, inbound). The network is the one the connection came from, as the
//! [peer book](crate::net::peers) saw it, not what the peer claims (on loopback,
//! where the kernel gives every connection the same source, it is the loopback address
//! the peer listens on). The [actor](super::actor) asks [`PlacementPolicy::group`]
//! for every `Candidate`; this node itself is never constrained. `choose` is the
//! choice for one chunk (pure, called by the dispatch plan): eligible
//! peers, most room first, no two in one network or source, and in an adaptive job
//! a trusted peer for the last replica when none holds one yet.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::trust::Standing;
use crate::net::PeerInfo;
use crate::types::JobId;

/// Offers being built: per (job, peer), the (chunk, attempt) pairs.
/// (Ordered: offers go out in the same order every time.)
pub(super) type Offers = BTreeMap<(JobId, PeerId), Vec<(u32, u32)>>;

/// A worker that may take replicas in this dispatch.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Candidate {
    /// The peer.
    pub peer: PeerId,
    /// Memory it gives a chunk.
    pub memory: u64,
    /// Replicas it can still take (slots x queue factor, less those in flight).
    pub room: i64,
    /// Its reputation score (higher first among equal room).
    pub score: f64,
    /// Its standing with this submitter.
    pub standing: Standing,
    /// Its network group.
    pub group: Option<String>,
    /// How it was discovered, when that rule is on.
    pub source: Option<String>,
}

/// What one chunk asks of placement.
#[derive(Debug, Default)]
pub(super) struct Need<'a> {
    /// Replicas wanted.
    pub n: u32,
    /// Only trusted peers (a witness for peers on probation).
    pub witness: bool,
    /// Memory a chunk needs.
    pub memory: u64,
    /// Peers that already hold a replica of the chunk.
    pub used: HashSet<PeerId>,
    /// Their network groups (live or returned replicas).
    pub used_groups: HashSet<&'a str>,
    /// Their discovery sources.
    pub used_sources: HashSet<&'a str>,
    /// In an adaptive job whose chunk holds no trusted peer yet: let a trusted peer
    /// hold the last replica.
    pub want_trusted: bool,
}

/// Chooses up to `need.n` candidates (indexes into `candidates`) for one chunk.
pub(super) fn choose(candidates: &[Candidate], need: &Need<'_>) -> Vec<usize> {
    let mut choices: Vec<usize> = (0..candidates.len())
        .filter(|&i| {
            let c = &candidates[i];
            c.room > 0
                && c.memory >= need.memory
                && !need.used.contains(&c.peer)
                && c.group
                    .as_deref()
                    .is_none_or(|g| !need.used_groups.contains(g))
                && c.source
                    .as_deref()
                    .is_none_or(|s| !need.used_sources.contains(s))
                && (!need.witness || c.standing == Standing::Trusted)
        })
        .collect();
    // Most room first, then the best standing.
    choices.sort_by(|&a, &b| {
        let (a, b) = (&candidates[a], &candidates[b]);
        b.room.cmp(&a.room).then(b.score.total_cmp(&a.score))
    });
    let mut picks: Vec<usize> = Vec::new();
    for &i in &choices {
        if picks.len() as u32 == need.n {
            break;
        }
        // Two picks may not share a network or source either.
        let c = &candidates[i];
        let clash = picks.iter().any(|&j| {
            let o = &candidates[j];
            (c.group.is_some() && c.group == o.group)
                || (c.source.is_some() && c.source == o.source)
        });
        if !clash {
            picks.push(i);
        }
    }
    if need.want_trusted && !need.witness {
        // Peers on probation cannot verify each other: if a trusted peer fits, let it
        // hold the last replica of the quorum.
        let has_trusted = picks
            .iter()
            .any(|&i| candidates[i].standing == Standing::Trusted);
        if !has_trusted
            && let Some(&last) = picks.last()
            && let Some(&t) = choices.iter().find(|&&i| {
                let c = &candidates[i];
                c.standing == Standing::Trusted
                    && !picks.contains(&i)
                    && picks.iter().filter(|&&j| j != last).all(|&j| {
                        let o = &candidates[j];
                        !(c.group.is_some() && c.group == o.group)
                    })
            })
            && let Some(slot) = picks.last_mut()
        {
            *slot = t;
        }
    }
    picks
}

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

    fn cand(n: u8, room: i64, standing: Standing, group: &str) -> Candidate {
        Candidate {
            peer: peer(n),
            memory: 1 << 30,
            room,
            score: 0.5,
            standing,
            group: (!group.is_empty()).then(|| group.to_string()),
            source: None,
        }
    }

    /// A fixed peer id per number (tests must not depend on random ids).
    fn peer(n: u8) -> PeerId {
        libp2p::identity::Keypair::ed25519_from_bytes([n.max(1); 32])
            .expect("a valid key")
            .public()
            .to_peer_id()
    }

    #[test]
    fn choose_follows_the_placement_rules() {
        use Standing::{Probation as P, Trusted as T};
        struct Case {
            name: &'static str,
            candidates: Vec<Candidate>,
            n: u32,
            witness: bool,
            used: Vec<u8>,
            used_groups: Vec<&'static str>,
            want_trusted: bool,
            picked: Vec<u8>,
        }
        let case = |name, candidates, n, picked| Case {
            name,
            candidates,
            n,
            witness: false,
            used: vec![],
            used_groups: vec![],
            want_trusted: false,
            picked,
        };
        let cases = vec![
            case(
                "most room first",
                vec![cand(1, 1, P, "a"), cand(2, 3, P, "b"), cand(3, 2, P, "c")],
                2,
                vec![2, 3],
            ),
            case(
                "subnet clash: two picks never share a network",
                vec![cand(1, 3, P, "a"), cand(2, 3, P, "a"), cand(3, 1, P, "b")],
                2,
                vec![1, 3],
            ),
            Case {
                used_groups: vec!["a"],
                ..case(
                    "subnet clash with the chunk's other replicas",
                    vec![cand(1, 3, P, "a"), cand(2, 1, P, "b")],
                    2,
                    vec![2],
                )
            },
            Case {
                used: vec![1],
                ..case(
                    "never a peer twice",
                    vec![cand(1, 3, P, "a"), cand(2, 1, P, "b")],
                    1,
                    vec![2],
                )
            },
            case(
                "no room, no pick",
                vec![cand(1, 0, P, "a"), cand(2, -1, P, "b")],
                1,
                vec![],
            ),
            Case {
                witness: true,
                ..case(
                    "witness choice: only a trusted peer",
                    vec![cand(1, 9, P, "a"), cand(2, 1, T, "b"), cand(3, 5, P, "c")],
                    1,
                    vec![2],
                )
            },
            Case {
                witness: true,
                ..case(
                    "witness choice: none trusted, none chosen",
                    vec![cand(1, 9, P, "a")],
                    1,
                    vec![],
                )
            },
            Case {
                want_trusted: true,
                ..case(
                    "the trusted peer takes the last replica",
                    vec![cand(1, 9, P, "a"), cand(2, 8, P, "b"), cand(3, 1, T, "c")],
                    2,
                    vec![1, 3],
                )
            },
            Case {
                want_trusted: true,
                ..case(
                    "unless it shares a network with another pick",
                    vec![cand(1, 9, P, "a"), cand(2, 8, P, "b"), cand(3, 1, T, "a")],
                    2,
                    vec![1, 2],
                )
            },
        ];
        for c in cases {
            let need = Need {
                n: c.n,
                witness: c.witness,
                memory: 1,
                used: c.used.iter().map(|&n| peer(n)).collect(),
                used_groups: c.used_groups.iter().copied().collect(),
                used_sources: HashSet::new(),
                want_trusted: c.want_trusted,
            };
            let picked: Vec<PeerId> = choose(&c.candidates, &need)
                .into_iter()
                .map(|i| c.candidates[i].peer)
                .collect();
            let want: Vec<PeerId> = c.picked.iter().map(|&n| peer(n)).collect();
            assert_eq!(picked, want, "{}", c.name);
        }
    }

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
