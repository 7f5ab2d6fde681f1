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
//! choice for one chunk (pure, called by the dispatch plan): among the eligible
//! peers, a random draw weighted by what this submitter *measured* of each (its
//! agreed results and its score, [`measured_weight`]), never by what a peer claims
//! (its advertised slots only bound its room, and room is capped by what it has
//! delivered, [`measured_room`], and by what a typical peer offers, [`bound_rooms`]);
//! no two in one network or source; a network that
//! holds its share of the job already ([`network_cap`]) or withdrew too much of it
//! ([`NETWORK_WITHDRAW_BUDGET`]) takes no more; and in an adaptive job a trusted peer
//! for the last replica when none holds one yet.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use libp2p::PeerId;
use rand::RngExt;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::trust::Standing;
use crate::net::PeerInfo;
use crate::store::db::ReputationRow;
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
    /// Replicas it can still take (the least of its advertised slots x queue factor
    /// and [`measured_room`], less those in flight).
    pub room: i64,
    /// How likely it is drawn ([`measured_weight`]).
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
    /// Networks that may take no more of this job (at their cap, or over their
    /// withdrawal budget).
    pub blocked: Option<&'a HashSet<String>>,
}

/// A network group may hold at most this share of a job's live replicas at once...
pub(super) const NETWORK_SHARE: f64 = 0.125;
/// ...and never less than this many.
pub(super) const NETWORK_MIN: u32 = 16;
/// Replicas of one job a network group may withdraw before it gets no more of it.
pub(super) const NETWORK_WITHDRAW_BUDGET: u32 = 32;

/// The most live replicas of one job a network group may hold, given the room of
/// every candidate.
pub(super) fn network_cap(total_room: i64) -> u32 {
    ((total_room.max(0) as f64 * NETWORK_SHARE) as u32).max(NETWORK_MIN)
}

/// How much a peer is drawn: grows with the results it delivered that agreed (the
/// square root, so that newcomers still get work), times its score (which falls
/// with disagreements, errors and timeouts). Never what the peer claims.
pub fn measured_weight(row: Option<&ReputationRow>) -> f64 {
    match row {
        Some(r) => ((1 + r.agreed.min(400)) as f64).sqrt() * super::reputation::score(r),
        None => 0.5,
    }
}

/// The most replicas a peer may hold at once by what it delivered: a newcomer
/// [`NEW_PEER_ROOM`], then one more for every two agreed results. A peer
/// advertising many slots gets no more than it has shown it can return.
pub fn measured_room(row: Option<&ReputationRow>) -> i64 {
    NEW_PEER_ROOM + row.map_or(0, |r| (r.agreed / 2).min(1 << 20) as i64)
}

/// Replicas a peer never seen before may hold at once.
pub const NEW_PEER_ROOM: i64 = 4;

/// Bounds each peer's room (before the replicas it holds are taken off) by what a
/// typical peer offers: at most the larger of the median room and [`NETWORK_SHARE`]
/// of the others' rooms, each of those counted at most at the median.
///
/// Delivered results cannot tell two real slots from two hundred when chunks take
/// microseconds (a round trip, not the CPU, sets how fast either returns them), so a
/// peer that advertises more than it has, and queues, would otherwise grow its room
/// with every result and take the share its honest neighbours leave while they wait
/// for their next offer. In a small grid no peer may hold much more than a typical
/// one; in a large one a big machine keeps its room as long as it stays a small share
/// of the grid. The others count at most at the median so that Sybils cannot lift
/// each other's bound. The cost: a genuinely large machine among a few small ones
/// is used like a typical one.
pub(super) fn bound_rooms(rooms: &mut [i64]) {
    let mut sorted: Vec<i64> = rooms.iter().copied().filter(|&r| r > 0).collect();
    if sorted.len() < 2 {
        return;
    }
    sorted.sort_unstable();
    // The upper median: in a grid of a few peers of two sizes, the larger is typical.
    let median = sorted[sorted.len() / 2];
    let counted: i64 = rooms.iter().map(|&r| r.clamp(0, median)).sum();
    for room in rooms.iter_mut() {
        let others = counted - (*room).clamp(0, median);
        let share = (others as f64 * NETWORK_SHARE) as i64;
        *room = (*room).min(median.max(share));
    }
}

/// Chooses up to `need.n` candidates (indexes into `candidates`) for one chunk: a
/// draw without replacement weighted by [`Candidate::score`] (Efraimidis-Spirakis
/// keys, `ln(u) / w`), so that the same seed gives the same picks.
pub(super) fn choose(candidates: &[Candidate], need: &Need<'_>, rng: &mut StdRng) -> Vec<usize> {
    let mut keyed: Vec<(f64, usize)> = (0..candidates.len())
        .filter(|&i| {
            let c = &candidates[i];
            c.room > 0
                && c.memory >= need.memory
                && !need.used.contains(&c.peer)
                && c.group.as_deref().is_none_or(|g| {
                    !need.used_groups.contains(g) && need.blocked.is_none_or(|b| !b.contains(g))
                })
                && c.source
                    .as_deref()
                    .is_none_or(|s| !need.used_sources.contains(s))
                && (!need.witness || c.standing == Standing::Trusted)
        })
        .map(|i| {
            let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            (u.ln() / candidates[i].score.max(1e-6), i)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let choices: Vec<usize> = keyed.into_iter().map(|(_, i)| i).collect();
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

    fn need(n: u32) -> Need<'static> {
        Need {
            n,
            memory: 1,
            ..Need::default()
        }
    }

    fn picks(candidates: &[Candidate], need: &Need<'_>, seed: u64) -> Vec<u8> {
        use rand::SeedableRng;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut out: Vec<u8> = choose(candidates, need, &mut rng)
            .into_iter()
            .map(|i| {
                (1..=255u8)
                    .find(|&n| peer(n) == candidates[i].peer)
                    .expect("a test peer")
            })
            .collect();
        out.sort_unstable();
        out
    }

    #[test]
    fn choose_follows_the_placement_rules() {
        use Standing::{Probation as P, Trusted as T};
        for seed in 0..20 {
            // Subnet clash: two picks never share a network.
            let c = vec![cand(1, 3, P, "a"), cand(2, 3, P, "a"), cand(3, 1, P, "b")];
            let p = picks(&c, &need(2), seed);
            assert!(p == [1, 3] || p == [2, 3], "{p:?}");
            // ... nor a network of the chunk's other replicas (live or replaced).
            let used: HashSet<&str> = ["a"].into_iter().collect();
            let n = Need {
                used_groups: used,
                ..need(2)
            };
            assert_eq!(picks(&c, &n, seed), [3]);
            // Never a peer twice.
            let n = Need {
                used: [peer(3)].into_iter().collect(),
                ..need(2)
            };
            assert_eq!(picks(&c, &n, seed).len(), 1);
            // No room, no pick.
            let full = vec![cand(1, 0, P, "a"), cand(2, -1, P, "b")];
            assert!(picks(&full, &need(1), seed).is_empty());
            // Witness choice: only a trusted peer, or none.
            let w = vec![cand(1, 9, P, "a"), cand(2, 1, T, "b"), cand(3, 5, P, "c")];
            let n = Need {
                witness: true,
                ..need(1)
            };
            assert_eq!(picks(&w, &n, seed), [2]);
            assert!(picks(&w[..1], &n, seed).is_empty());
            // The trusted peer takes the last replica...
            let n = Need {
                want_trusted: true,
                ..need(2)
            };
            let p = picks(&w, &n, seed);
            assert!(p.contains(&2) && p.len() == 2, "{p:?}");
            // ... unless it shares a network with another pick.
            let clash = vec![cand(1, 9, P, "a"), cand(3, 1, T, "a")];
            assert_eq!(picks(&clash, &n, seed).len(), 1);
            // A blocked network (at its cap for this job) takes nothing.
            let blocked: HashSet<String> = ["b".to_string()].into_iter().collect();
            let n = Need {
                blocked: Some(&blocked),
                ..need(3)
            };
            assert_eq!(picks(&w, &n, seed), [1, 3]);
        }
    }

    #[test]
    fn the_draw_follows_measured_weight_and_never_advertised_room() {
        use rand::SeedableRng;
        // Peer 1 claims a huge room and has delivered nothing; peer 2 has delivered.
        let row = |agreed| ReputationRow {
            agreed,
            consecutive: agreed,
            ..ReputationRow::default()
        };
        let mut inflated = cand(1, 65_536 * 4, Standing::Probation, "a");
        inflated.score = measured_weight(None);
        let mut proven = cand(2, 16, Standing::Trusted, "b");
        proven.score = measured_weight(Some(&row(100)));
        let mut rng = StdRng::seed_from_u64(3);
        let (mut first, mut second) = (0, 0);
        for _ in 0..2_000 {
            match choose(&[inflated.clone(), proven.clone()], &need(1), &mut rng)[..] {
                [0] => first += 1,
                [1] => second += 1,
                ref other => panic!("{other:?}"),
            }
        }
        assert!(second > 5 * first, "{first} vs {second}");
        assert!(first > 0, "a newcomer still gets work");
        // Room follows delivered results, whatever the advert says.
        assert_eq!(measured_room(None), NEW_PEER_ROOM);
        assert_eq!(measured_room(Some(&row(40))), NEW_PEER_ROOM + 20);
        // A network's share of a job.
        assert_eq!(network_cap(0), NETWORK_MIN);
        assert_eq!(network_cap(800), 100);
    }

    #[test]
    fn no_peer_holds_much_more_than_a_typical_one_in_a_small_grid() {
        let bound = |rooms: &[i64]| {
            let mut r = rooms.to_vec();
            bound_rooms(&mut r);
            r
        };
        // Two honest peers with 2 slots (room 8) and one whose advert is inflated and
        // whose delivered results have grown its room to 60: it gets a typical room.
        assert_eq!(bound(&[8, 8, 60]), [8, 8, 8]);
        // Alone, or with nobody else able to take work, nothing to compare with.
        assert_eq!(bound(&[60]), [60]);
        assert_eq!(bound(&[0, 60]), [0, 60]);
        // Smaller rooms are never raised, and in a small grid of two sizes the larger
        // is typical.
        assert_eq!(bound(&[4, 8, 8, 2]), [4, 8, 8, 2]);
        assert_eq!(bound(&[4, 4, 8, 8]), [4, 4, 8, 8]);
        // A big machine in a large grid keeps its room: 100 peers of room 16, one of
        // 160, which is 1/10 of the grid.
        let mut grid = vec![16; 100];
        grid.push(160);
        assert_eq!(bound(&grid)[100], 160);
        // ... but not a room that is a large share of it (1/8 of the others: 200).
        grid[100] = 1_000;
        assert_eq!(bound(&grid)[100], 200);
        // Sybils do not lift each other: ten inflated identities among eleven honest
        // peers count as ten typical ones in each other's bound (1/8 of 20 x 8).
        let mut mixed = vec![8; 11];
        mixed.extend([5_000; 10]);
        let bounded = bound(&mixed);
        assert!(bounded[11..].iter().all(|&r| r == 20), "{bounded:?}");
        assert!(bounded[..11].iter().all(|&r| r == 8), "{bounded:?}");
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
