//! What the network knows about other peers: addresses, latency, connections, the
//! latest capacity advert and offences. Owned by the event loop; others get
//! snapshots ([`PeerInfo`], [`NetStatus`]). Bounded: at most [`MAX_PEERS`] entries,
//! each with at most [`MAX_ADDRS`] addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use super::protocol::CapacityAdvert;

/// Most peers remembered.
pub const MAX_PEERS: usize = 4096;
/// Most addresses remembered per peer.
pub const MAX_ADDRS: usize = 8;

#[derive(Debug, Default)]
struct Entry {
    addrs: Vec<Multiaddr>,
    connected: bool,
    rtt: Option<Duration>,
    agent: Option<String>,
    foreign_version: Option<String>,
    advert: Option<(CapacityAdvert, Instant)>,
    last_seq: u64,
    offences: u32,
    /// The remote IP of the latest connection (what the network saw, not a claim).
    observed: Option<IpAddr>,
    /// The addresses it says it listens on (identify).
    listen: Vec<Multiaddr>,
    /// How it was first found.
    source: Option<&'static str>,
    /// It said (identify) that it speaks this protocol version.
    ours: bool,
    /// When this node last asked it for its advert (and subscribed).
    queried: Option<Instant>,
    /// When it last answered such a query: the subscription's start.
    subscribed: Option<Instant>,
}

/// The IP in an address, if it has one.
pub(crate) fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl Entry {
    /// The address placement groups the peer by: the observed one, except on
    /// loopback, where every connection's source is 127.0.0.1 and the loopback
    /// address the peer listens on is what tells two local peers apart.
    fn ip(&self) -> Option<IpAddr> {
        let observed = self.observed?;
        if !observed.is_loopback() {
            return Some(observed);
        }
        self.listen
            .iter()
            .filter_map(ip_of)
            .find(|ip| ip.is_loopback() && ip.is_ipv4() == observed.is_ipv4())
            .or(Some(observed))
    }
}

/// A snapshot of one known peer, as `peergrid peers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The peer's id.
    pub peer_id: String,
    /// Addresses it listens on (or we reached it at).
    pub addrs: Vec<String>,
    /// Whether a connection is open.
    pub connected: bool,
    /// Round-trip time of the last ping, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Its software version.
    pub agent: Option<String>,
    /// Set when it speaks another protocol version (it is ignored).
    pub foreign_version: Option<String>,
    /// Its latest capacity advert, while fresh.
    pub advert: Option<CapacityAdvert>,
    /// Seconds since that advert arrived.
    pub advert_age_s: Option<f64>,
    /// Offences counted against it.
    pub offences: u32,
    /// The IP its connections come from (placement groups peers by its network).
    #[serde(default)]
    pub ip: Option<String>,
    /// How it was found: `bootstrap`, `mdns`, `dht`, `inbound` or `dialed`.
    #[serde(default)]
    pub discovered: Option<String>,
    /// How this node reaches it: `direct`, or `relayed` (through `via`).
    #[serde(default)]
    pub path: Option<String>,
    /// The relay's peer id, when `path` is `relayed`.
    #[serde(default)]
    pub via: Option<String>,
}

/// The network side of `peergrid status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetStatus {
    /// This node's id.
    pub peer_id: String,
    /// Addresses it listens on.
    pub listen_addrs: Vec<String>,
    /// Peers with an open connection.
    pub connected_peers: usize,
    /// Peers remembered.
    pub known_peers: usize,
    /// Fresh capacity adverts in the view.
    pub adverts: usize,
    /// Peers subscribed to this node's advert (it pushes its changes to them).
    #[serde(default)]
    pub subscribers: usize,
    /// The advert this node last published.
    pub own_advert: Option<CapacityAdvert>,
    /// Offences counted against all peers.
    pub offences: u64,
    /// Peers banned now.
    pub banned_peers: usize,
    /// Inbound requests dropped because the node was busy.
    pub dropped_inbound: u64,
    /// IP addresses banned now (offences from them under any identities).
    #[serde(default)]
    pub banned_addresses: usize,
    /// Whether other peers can reach this node, and how.
    #[serde(default)]
    pub reachability: Option<super::reachability::ReachabilityStatus>,
}

/// The table itself.
#[derive(Debug)]
pub(crate) struct PeerBook {
    peers: HashMap<PeerId, Entry>,
    advert_ttl: Duration,
    total_offences: u64,
}

impl PeerBook {
    pub(crate) fn new(advert_ttl: Duration) -> Self {
        Self {
            peers: HashMap::new(),
            advert_ttl,
            total_offences: 0,
        }
    }

    fn entry(&mut self, peer: PeerId) -> &mut Entry {
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_PEERS {
            self.prune();
        }
        self.peers.entry(peer).or_default()
    }

    /// Makes room: drops the least useful eighth of the book. A peer with a fresh
    /// advert is never dropped while another can be (so a crowd of unidentified or
    /// merely discovered identities cannot push honest advertisers out of the
    /// view); then connected peers of this version, connected others, peers with
    /// offences (remembered towards a ban), and first of all the rest.
    fn prune(&mut self) {
        fn rank(e: &Entry) -> u8 {
            match e {
                e if e.advert.is_some() => 4,
                e if e.connected && e.ours => 3,
                e if e.connected => 2,
                e if e.offences > 0 => 1,
                _ => 0,
            }
        }
        let mut victims: Vec<(u8, Option<Instant>, PeerId)> = self
            .peers
            .iter()
            .map(|(p, e)| (rank(e), e.advert.as_ref().map(|(_, at)| *at), *p))
            .collect();
        // Lowest rank first; among adverts, the oldest first.
        victims.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        for (_, _, p) in victims.into_iter().take(MAX_PEERS / 8) {
            self.peers.remove(&p);
        }
    }

    fn add_addr(entry: &mut Entry, addr: Multiaddr) {
        if !entry.addrs.contains(&addr) {
            if entry.addrs.len() >= MAX_ADDRS {
                entry.addrs.remove(0);
            }
            entry.addrs.push(addr);
        }
    }

    pub(crate) fn connected(&mut self, peer: PeerId, addr: Multiaddr, source: &'static str) {
        let entry = self.entry(peer);
        entry.connected = true;
        // A relayed connection's address is the relay's: it says nothing of the
        // peer's network (placement groups it once a direct connection exists).
        if !super::reachability::is_relayed(&addr) {
            entry.observed = ip_of(&addr).or(entry.observed);
        }
        entry.source.get_or_insert(source);
        Self::add_addr(entry, addr);
    }

    /// Records how a peer was found, unless it was found before.
    pub(crate) fn discovered(&mut self, peer: PeerId, source: &'static str) {
        self.entry(peer).source.get_or_insert(source);
    }

    pub(crate) fn disconnected(&mut self, peer: &PeerId) {
        if let Some(e) = self.peers.get_mut(peer) {
            e.connected = false;
        }
    }

    pub(crate) fn identified(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, agent: String) {
        let entry = self.entry(peer);
        entry.agent = Some(agent.chars().take(64).collect());
        entry.foreign_version = None;
        entry.ours = true;
        entry.listen = addrs.iter().take(MAX_ADDRS).cloned().collect();
        for addr in addrs {
            Self::add_addr(entry, addr);
        }
    }

    pub(crate) fn foreign(&mut self, peer: PeerId, version: String) {
        let entry = self.entry(peer);
        entry.foreign_version = Some(version.chars().take(64).collect());
        entry.ours = false;
    }

    /// Whether `peer` completed identify and speaks this protocol version: only
    /// such a peer's adverts are taken.
    pub(crate) fn is_ours(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|e| e.ours)
    }

    /// Records that this node asked `peer` for its advert and subscribed.
    pub(crate) fn queried(&mut self, peer: PeerId, now: Instant) {
        self.entry(peer).queried = Some(now);
    }

    /// Records that `peer` answered a query: this node is subscribed to it.
    pub(crate) fn subscribed(&mut self, peer: PeerId, now: Instant) {
        self.entry(peer).subscribed = Some(now);
    }

    /// This node told `peer` it no longer subscribes: its advert leaves the view,
    /// and it is not asked again before a query is due (see `query_due`).
    pub(crate) fn unsubscribed(&mut self, peer: &PeerId, now: Instant) {
        if let Some(e) = self.peers.get_mut(peer) {
            e.subscribed = None;
            e.advert = None;
            e.queried = Some(now);
        }
    }

    /// The peers this node is subscribed to (answered a subscribing query within
    /// `ttl`).
    pub(crate) fn subscriptions(&self, now: Instant, ttl: Duration) -> Vec<PeerId> {
        self.peers
            .iter()
            .filter(|(_, e)| {
                e.subscribed
                    .is_some_and(|at| now.saturating_duration_since(at) < ttl)
            })
            .map(|(p, _)| *p)
            .collect()
    }

    /// Whether `peer` answered a subscribing query within `ttl`: only such a peer's
    /// pushed updates are taken.
    pub(crate) fn subscribed_to(&self, peer: &PeerId, now: Instant, ttl: Duration) -> bool {
        self.peers
            .get(peer)
            .and_then(|e| e.subscribed)
            .is_some_and(|at| now.saturating_duration_since(at) < ttl)
    }

    /// Whether `peer` is due a capacity query now: it is connected and speaks this
    /// version, and either this node never subscribed to it (taken only while the
    /// view has `room`), or the subscription is half over, or its advert went
    /// missing for `stale` (the worker dropped this subscriber, or lost an update).
    pub(crate) fn query_due(
        &self,
        peer: &PeerId,
        now: Instant,
        ttl: Duration,
        stale: Duration,
        room: bool,
    ) -> bool {
        let Some(e) = self.peers.get(peer) else {
            return false;
        };
        if !e.connected || !e.ours || e.offences > 0 {
            return false;
        }
        let since = |at: Instant| now.saturating_duration_since(at);
        match e.queried {
            None => room,
            Some(at) if since(at) >= ttl / 2 => room || e.advert.is_some(),
            Some(at) => {
                since(at) >= stale
                    && e.advert
                        .as_ref()
                        .is_none_or(|(_, got)| since(*got) >= stale)
            }
        }
    }

    /// The connected peers of this version, for [`PeerBook::query_due`].
    pub(crate) fn connected_peers(&self) -> impl Iterator<Item = &PeerId> {
        self.peers
            .iter()
            .filter(|(_, e)| e.connected && e.ours)
            .map(|(p, _)| p)
    }

    pub(crate) fn rtt(&mut self, peer: PeerId, rtt: Duration) {
        if let Some(e) = self.peers.get_mut(&peer) {
            e.rtt = Some(rtt);
        }
    }

    /// Whether `seq` is newer than the last advert seen from `peer`.
    pub(crate) fn is_newer(&self, peer: &PeerId, seq: u64) -> bool {
        self.peers.get(peer).is_none_or(|e| seq > e.last_seq)
    }

    pub(crate) fn advert(&mut self, peer: PeerId, advert: CapacityAdvert) {
        let entry = self.entry(peer);
        entry.last_seq = advert.seq;
        entry.advert = Some((advert, Instant::now()));
    }

    pub(crate) fn forget_advert(&mut self, peer: &PeerId) {
        if let Some(e) = self.peers.get_mut(peer) {
            e.advert = None;
        }
    }

    /// Drops adverts older than the TTL: a peer that stopped advertising (killed,
    /// cut off) leaves the capacity view.
    pub(crate) fn expire_adverts(&mut self) {
        let ttl = self.advert_ttl;
        for entry in self.peers.values_mut() {
            if entry
                .advert
                .as_ref()
                .is_some_and(|(_, at)| at.elapsed() > ttl)
            {
                entry.advert = None;
            }
        }
    }

    /// Counts an offence and returns the peer's total.
    pub(crate) fn offence(&mut self, peer: PeerId) -> u32 {
        self.total_offences += 1;
        let entry = self.entry(peer);
        entry.offences += 1;
        entry.offences
    }

    /// The IP `peer`'s latest connection came from (what the network saw).
    pub(crate) fn observed_ip(&self, peer: &PeerId) -> Option<IpAddr> {
        self.peers.get(peer).and_then(|e| e.observed)
    }

    /// The peers whose latest connection came from `ip`.
    pub(crate) fn peers_at(&self, ip: IpAddr) -> Vec<PeerId> {
        self.peers
            .iter()
            .filter(|(_, e)| e.observed.map(super::guard::canonical) == Some(ip))
            .map(|(p, _)| *p)
            .collect()
    }

    /// Clears a peer's offences when its ban ends.
    pub(crate) fn forgive(&mut self, peer: &PeerId) {
        if let Some(e) = self.peers.get_mut(peer) {
            e.offences = 0;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.peers.len()
    }

    /// Slots (total, free) in the fresh adverts.
    pub(crate) fn advertised_slots(&self) -> (u64, u64) {
        self.peers.values().filter_map(|e| e.advert.as_ref()).fold(
            (0, 0),
            |(total, free), (a, _)| {
                (
                    total + u64::from(a.slots_total),
                    free + u64::from(a.slots_free),
                )
            },
        )
    }

    /// Whether `peer` takes a place in the view: its advert is held, or this node
    /// is subscribed to it (a worker that had nothing to say yet pushes its first
    /// advert to its subscribers).
    pub(crate) fn in_view(&self, peer: &PeerId, now: Instant, ttl: Duration) -> bool {
        self.peers.get(peer).is_some_and(|e| {
            e.advert.is_some()
                || e.subscribed
                    .is_some_and(|at| now.saturating_duration_since(at) < ttl)
        })
    }

    /// How many peers take a place in the view ([`in_view`](Self::in_view)).
    pub(crate) fn view_len(&self, now: Instant, ttl: Duration) -> usize {
        self.peers
            .keys()
            .filter(|p| self.in_view(p, now, ttl))
            .count()
    }

    pub(crate) fn advert_count(&self) -> usize {
        self.peers.values().filter(|e| e.advert.is_some()).count()
    }

    /// Candidates: fresh adverts that lend at least one slot.
    pub(crate) fn candidate_count(&self) -> usize {
        self.peers
            .values()
            .filter(|e| e.advert.as_ref().is_some_and(|(a, _)| a.slots_total > 0))
            .count()
    }

    pub(crate) fn total_offences(&self) -> u64 {
        self.total_offences
    }

    /// Peers with a fresh advert, for choosing workers.
    pub(crate) fn snapshot(&self) -> Vec<PeerInfo> {
        let mut out: Vec<PeerInfo> = self
            .peers
            .iter()
            .map(|(peer, e)| PeerInfo {
                peer_id: peer.to_string(),
                addrs: e.addrs.iter().map(ToString::to_string).collect(),
                connected: e.connected,
                rtt_ms: e.rtt.map(|d| d.as_secs_f64() * 1000.0),
                agent: e.agent.clone(),
                foreign_version: e.foreign_version.clone(),
                advert: e.advert.as_ref().map(|(a, _)| a.clone()),
                advert_age_s: e.advert.as_ref().map(|(_, at)| at.elapsed().as_secs_f64()),
                offences: e.offences,
                ip: e.ip().map(|ip| ip.to_string()),
                discovered: e.source.map(str::to_string),
                path: None,
                via: None,
            })
            .collect();
        out.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::protocol::PROTOCOL_VERSION;

    fn advert(seq: u64) -> CapacityAdvert {
        CapacityAdvert {
            version: PROTOCOL_VERSION,
            seq,
            slots_total: 2,
            slots_free: 2,
            cores: 2,
            memory_limit: 1 << 28,
            fuel_per_sec: 1_000_000_000,
            features: vec![],
        }
    }

    #[test]
    fn adverts_expire_and_stale_ones_are_not_newer() {
        let mut book = PeerBook::new(Duration::from_millis(20));
        let peer = PeerId::random();
        assert!(book.is_newer(&peer, 1));
        book.advert(peer, advert(5));
        assert!(!book.is_newer(&peer, 5));
        assert!(book.is_newer(&peer, 6));
        assert_eq!(book.advert_count(), 1);
        std::thread::sleep(Duration::from_millis(30));
        book.expire_adverts();
        assert_eq!(book.advert_count(), 0);
        assert!(!book.is_newer(&peer, 5), "seq is remembered after expiry");
    }

    #[test]
    fn queries_are_due_once_then_on_renewal_or_when_adverts_stop() {
        let mut book = PeerBook::new(Duration::from_secs(10));
        let (ttl, stale) = (Duration::from_secs(600), Duration::from_secs(5));
        let peer = PeerId::random();
        let t0 = Instant::now();
        let due = |book: &PeerBook, at: Duration, room: bool| {
            book.query_due(&peer, t0 + at, ttl, stale, room)
        };
        assert!(
            !due(&book, Duration::ZERO, true),
            "unknown peers are not asked"
        );
        book.connected(peer, "/ip4/127.0.0.1/tcp/1".parse().unwrap(), "inbound");
        assert!(
            !due(&book, Duration::ZERO, true),
            "nor peers of unknown version"
        );
        book.identified(peer, vec![], "peergrid".into());
        assert!(due(&book, Duration::ZERO, true));
        assert!(
            !due(&book, Duration::ZERO, false),
            "a full view asks no one new"
        );
        book.queried(peer, t0);
        assert!(!book.subscribed_to(&peer, t0, ttl), "not before it answers");
        book.subscribed(peer, t0);
        book.advert(peer, advert(1));
        assert!(book.subscribed_to(&peer, t0, ttl));
        assert!(!due(&book, Duration::from_secs(1), true), "asked already");
        // Adverts stop coming (the advert is `now`-stamped: far enough ahead it is stale).
        assert!(due(&book, stale * 2, true));
        // Renewal when half the subscription is over, even with a full view.
        assert!(due(&book, ttl / 2, false));
        assert!(
            !book.subscribed_to(&peer, t0 + ttl, ttl),
            "subscriptions end"
        );
        book.disconnected(&peer);
        assert!(!due(&book, ttl / 2, true), "only connected peers are asked");
        book.foreign(peer, "/peergrid/9.0.0".into());
        book.connected(peer, "/ip4/127.0.0.1/tcp/1".parse().unwrap(), "inbound");
        assert!(!due(&book, ttl / 2, true), "nor peers of another version");
    }

    #[test]
    fn the_book_is_bounded() {
        let mut book = PeerBook::new(Duration::from_secs(10));
        for _ in 0..MAX_PEERS + 100 {
            book.rtt(PeerId::random(), Duration::from_millis(1));
            book.foreign(PeerId::random(), "x".into());
        }
        assert!(book.len() <= MAX_PEERS);
        let peer = PeerId::random();
        for i in 0..100u16 {
            let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", 1000 + i).parse().unwrap();
            book.connected(peer, addr, "inbound");
        }
        let info = book.snapshot();
        let me = info.iter().find(|p| p.peer_id == peer.to_string()).unwrap();
        assert_eq!(me.addrs.len(), MAX_ADDRS);
    }

    #[test]
    fn filling_the_book_never_evicts_fresh_advertisers_for_unidentified_peers() {
        let mut book = PeerBook::new(Duration::from_secs(60));
        let honest: Vec<PeerId> = (0..200).map(|_| PeerId::random()).collect();
        for (i, peer) in honest.iter().enumerate() {
            book.connected(*peer, "/ip4/198.51.100.1/tcp/1".parse().unwrap(), "dialed");
            book.identified(*peer, vec![], "peergrid".into());
            book.advert(*peer, advert(1));
            if i % 2 == 0 {
                book.disconnected(peer);
            }
        }
        // A flood of identities: connected but never identified, found in the DHT,
        // or of another version, several times the book's size.
        for i in 0..4 * MAX_PEERS {
            let peer = PeerId::random();
            match i % 3 {
                0 => book.connected(peer, "/ip4/203.0.113.9/tcp/1".parse().unwrap(), "inbound"),
                1 => book.discovered(peer, "dht"),
                _ => book.foreign(peer, "/other/1".into()),
            }
        }
        assert!(book.len() <= MAX_PEERS);
        assert_eq!(book.advert_count(), honest.len(), "every advertiser kept");
        let snapshot = book.snapshot();
        for peer in &honest {
            assert!(
                snapshot
                    .iter()
                    .any(|p| p.peer_id == peer.to_string() && p.advert.is_some())
            );
        }
        assert!(!book.is_ours(&PeerId::random()));
        assert!(book.is_ours(&honest[0]));
    }

    #[test]
    fn loopback_peers_are_told_apart_by_their_listen_address_others_by_the_observed_one() {
        let mut book = PeerBook::new(Duration::from_secs(10));
        let (local, remote) = (PeerId::random(), PeerId::random());
        book.connected(local, "/ip4/127.0.0.1/tcp/5000".parse().unwrap(), "inbound");
        book.identified(
            local,
            vec!["/ip4/127.0.7.1/tcp/4000".parse().unwrap()],
            "peergrid".into(),
        );
        book.connected(
            remote,
            "/ip4/198.51.100.4/tcp/5000".parse().unwrap(),
            "dialed",
        );
        book.identified(
            remote,
            vec!["/ip4/203.0.113.1/tcp/4000".parse().unwrap()],
            "peergrid".into(),
        );
        book.discovered(remote, "dht");
        let info = book.snapshot();
        let get = |p: PeerId| info.iter().find(|i| i.peer_id == p.to_string()).unwrap();
        assert_eq!(get(local).ip.as_deref(), Some("127.0.7.1"));
        assert_eq!(
            get(remote).ip.as_deref(),
            Some("198.51.100.4"),
            "a claim is not an address"
        );
        assert_eq!(get(local).discovered.as_deref(), Some("inbound"));
        assert_eq!(
            get(remote).discovered.as_deref(),
            Some("dialed"),
            "the first way wins"
        );
    }
}
