//! Whether other peers can reach this node, and how: the verdict `peergrid status`
//! shows ("public at …", "behind NAT, reachable through relay …", "unknown").
//!
//! The event loop feeds it what the swarm learns: the external addresses confirmed
//! by AutoNAT v2 (a server dialled the address back), by UPnP (the router mapped a
//! port) or declared by the operator (`--external-addr`), the circuit addresses
//! confirmed by relay reservations, and AutoNAT's failed tests (no dial-back: the
//! address is behind a NAT or a firewall). [`Reachability::status`] turns them into a
//! [`ReachabilityStatus`]; the decision is a pure function of that state, tested with
//! tables below.

use std::collections::BTreeSet;
use std::net::IpAddr;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use serde::{Deserialize, Serialize};

use super::peers::ip_of;

/// Most addresses of each kind remembered (the swarm's own lists are bounded too).
const MAX_ADDRS: usize = 16;

/// The verdict, as a word (the `verdict` field and the metric's label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Reachable directly at a global address.
    Public,
    /// Behind NAT, reachable through one or more relays.
    Relayed,
    /// Behind NAT (AutoNAT's tests failed) and no relay reservation.
    Private,
    /// Reachable directly, but only at a private-network address (a LAN).
    Local,
    /// Nothing tested yet.
    Unknown,
}

impl Verdict {
    /// Every verdict, in the order of the metric's labels.
    pub const ALL: [Verdict; 5] = [
        Verdict::Public,
        Verdict::Relayed,
        Verdict::Private,
        Verdict::Local,
        Verdict::Unknown,
    ];

    /// The word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Public => "public",
            Verdict::Relayed => "relayed",
            Verdict::Private => "private",
            Verdict::Local => "local",
            Verdict::Unknown => "unknown",
        }
    }
}

/// The reachability part of `peergrid status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReachabilityStatus {
    /// The verdict.
    pub verdict: Verdict,
    /// In words, for a person.
    pub text: String,
    /// Direct addresses confirmed reachable (AutoNAT, UPnP, or declared).
    pub public_addrs: Vec<String>,
    /// Circuit addresses through relays holding a reservation for this node.
    pub relay_addrs: Vec<String>,
    /// AutoNAT tests that failed (no dial-back reached this node).
    pub failed_tests: u64,
    /// Whether this node relays for others now (only while it is public).
    pub relaying: bool,
}

/// Whether `ip` is on the public internet. `lab` also counts the documentation
/// ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) as global,
/// for NAT labs built from them.
pub fn is_global(ip: IpAddr, lab: bool) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let documentation = matches!(o, [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _]);
            if documentation {
                return lab;
            }
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || v4.is_multicast()
                // 100.64.0.0/10: carrier-grade NAT.
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                // 0.0.0.0/8, 240.0.0.0/4 and 192.0.0.0/24.
                || o[0] == 0
                || o[0] >= 240
                || (o[0] == 192 && o[1] == 0 && o[2] == 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if s[0] == 0x2001 && s[1] == 0x0db8 {
                return lab;
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7 unique local, fe80::/10 link local.
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// Whether an address goes through a relay (`/p2p-circuit`).
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// Whether a direct address is reachable from the internet: a global IP (see
/// [`is_global`]) or a DNS name.
fn is_public_addr(addr: &Multiaddr, lab: bool) -> bool {
    if is_relayed(addr) {
        return false;
    }
    match ip_of(addr) {
        Some(ip) => is_global(ip, lab),
        None => addr
            .iter()
            .any(|p| matches!(p, Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_))),
    }
}

/// How far an address reaches: loopback (0), a private network (1), the internet
/// (2; relayed and DNS addresses too).
fn scope(addr: &Multiaddr, lab: bool) -> u8 {
    if is_relayed(addr) {
        return 2;
    }
    match ip_of(addr) {
        Some(ip) if ip.is_loopback() => 0,
        Some(ip) if !is_global(ip, lab) => 1,
        _ => 2,
    }
}

/// Whether a peer's listen address `addr` is worth dialling (and passing on in the
/// DHT) when this node reaches the peer at `remote`: never an address narrower than
/// the connection's (a home peer's 10.x or 127.0.0.1 is someone else's, or this
/// node's own, anywhere but on that network; dialling it reaches the wrong peer).
pub fn dialable(addr: &Multiaddr, remote: &Multiaddr, lab: bool) -> bool {
    scope(addr, lab) >= scope(remote, lab)
}

/// What the swarm has told the event loop about this node's reachability.
#[derive(Debug, Default)]
pub(crate) struct Reachability {
    /// Declared by the operator: counted as public whatever their range.
    declared: BTreeSet<Multiaddr>,
    /// Confirmed external addresses (AutoNAT, UPnP, relay reservations).
    confirmed: BTreeSet<Multiaddr>,
    failed_tests: u64,
    lab: bool,
}

impl Reachability {
    pub(crate) fn new(declared: &[Multiaddr], lab: bool) -> Self {
        Self {
            declared: declared.iter().take(MAX_ADDRS).cloned().collect(),
            lab,
            ..Self::default()
        }
    }

    /// An external address was confirmed (or a relay reservation accepted).
    pub(crate) fn confirmed(&mut self, addr: Multiaddr) {
        if self.confirmed.len() < MAX_ADDRS {
            self.confirmed.insert(addr);
        }
    }

    /// An external address expired (a reservation or a port mapping ended).
    pub(crate) fn expired(&mut self, addr: &Multiaddr) {
        self.confirmed.remove(addr);
    }

    /// An AutoNAT server could not dial one of this node's addresses back.
    pub(crate) fn test_failed(&mut self) {
        self.failed_tests += 1;
    }

    /// The direct addresses peers can reach this node at.
    fn public_addrs(&self) -> Vec<&Multiaddr> {
        self.declared
            .iter()
            .chain(
                self.confirmed
                    .iter()
                    .filter(|a| is_public_addr(a, self.lab) && !self.declared.contains(*a)),
            )
            .collect()
    }

    /// Whether this node is reachable directly from the internet (it serves as a
    /// relay and an AutoNAT server only then).
    pub(crate) fn is_public(&self) -> bool {
        !self.public_addrs().is_empty()
    }

    /// The verdict and its words.
    pub(crate) fn status(&self, relaying: bool) -> ReachabilityStatus {
        let public: Vec<String> = self.public_addrs().iter().map(|a| a.to_string()).collect();
        let relayed: Vec<String> = self
            .confirmed
            .iter()
            .filter(|a| is_relayed(a))
            .map(ToString::to_string)
            .collect();
        let local: Vec<String> = self
            .confirmed
            .iter()
            .filter(|a| !is_relayed(a) && !is_public_addr(a, self.lab))
            .map(ToString::to_string)
            .collect();
        let (verdict, text) = if !public.is_empty() {
            (Verdict::Public, format!("public at {}", public.join(", ")))
        } else if !relayed.is_empty() {
            (
                Verdict::Relayed,
                format!("behind NAT, reachable through relay {}", relayed.join(", ")),
            )
        } else if self.failed_tests > 0 {
            (
                Verdict::Private,
                "behind NAT, no relay reachable: peers outside this network cannot reach \
                 this node (it reaches public peers itself; add a --bootstrap peer that \
                 relays, or forward a port and give --external-addr)"
                    .to_string(),
            )
        } else if !local.is_empty() {
            (
                Verdict::Local,
                format!(
                    "reachable on the local network at {} (not from the internet)",
                    local.join(", ")
                ),
            )
        } else {
            (
                Verdict::Unknown,
                "unknown: no AutoNAT server has tested this node's addresses yet".to_string(),
            )
        };
        ReachabilityStatus {
            verdict,
            text,
            public_addrs: public,
            relay_addrs: relayed,
            failed_tests: self.failed_tests,
            relaying,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn global_ranges() {
        let cases = [
            ("8.8.8.8", false, true),
            ("10.1.2.3", true, false),
            ("192.168.1.1", true, false),
            ("127.0.0.1", true, false),
            ("100.64.1.1", true, false),
            ("198.51.100.7", false, false),
            ("198.51.100.7", true, true),
            ("203.0.113.9", true, true),
            ("2001:db8::1", false, false),
            ("2001:db8::1", true, true),
            ("2a00:1450::1", false, true),
            ("fd00::1", true, false),
            ("fe80::1", true, false),
        ];
        for (ip, lab, global) in cases {
            assert_eq!(
                is_global(ip.parse().unwrap(), lab),
                global,
                "{ip} lab={lab}"
            );
        }
    }

    #[test]
    fn addresses_narrower_than_the_connection_are_not_dialled() {
        let loopback = addr("/ip4/127.0.0.1/tcp/7946");
        let lan = addr("/ip4/10.2.0.2/tcp/7946");
        let public = addr("/ip4/8.8.8.8/tcp/7946");
        let circuit = addr(
            "/ip4/8.8.8.8/tcp/7946/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit",
        );
        for a in [&loopback, &lan, &public, &circuit] {
            assert!(dialable(a, &loopback, false), "on loopback, every address");
        }
        assert!(!dialable(&loopback, &lan, false));
        assert!(dialable(&lan, &lan, false));
        assert!(dialable(&public, &lan, false));
        for remote in [&public, &circuit] {
            assert!(!dialable(&loopback, remote, false));
            assert!(!dialable(&lan, remote, false));
            assert!(dialable(&public, remote, false));
            assert!(dialable(&circuit, remote, false));
        }
        // In a lab, the documentation ranges are the internet.
        let lab = addr("/ip4/203.0.113.12/tcp/7946");
        assert!(!dialable(&lan, &lab, true));
        assert!(dialable(&lan, &lab, false));
    }

    #[test]
    fn verdicts() {
        let mut r = Reachability::new(&[], false);
        assert_eq!(r.status(false).verdict, Verdict::Unknown);
        r.confirmed(addr("/ip4/192.168.1.5/tcp/7946"));
        assert_eq!(r.status(false).verdict, Verdict::Local);
        r.test_failed();
        let s = r.status(false);
        assert_eq!(s.verdict, Verdict::Private);
        assert!(s.text.contains("no relay"), "{}", s.text);
        let circuit = addr(
            "/ip4/198.51.100.2/tcp/7946/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit",
        );
        r.confirmed(circuit.clone());
        let s = r.status(false);
        assert_eq!(s.verdict, Verdict::Relayed);
        assert!(
            s.text
                .starts_with("behind NAT, reachable through relay /ip4/198.51.100.2")
        );
        assert!(!r.is_public());
        r.confirmed(addr("/ip4/8.8.8.8/udp/7946/quic-v1"));
        let s = r.status(true);
        assert_eq!(s.verdict, Verdict::Public);
        assert_eq!(s.text, "public at /ip4/8.8.8.8/udp/7946/quic-v1");
        assert!(r.is_public());
        r.expired(&addr("/ip4/8.8.8.8/udp/7946/quic-v1"));
        r.expired(&circuit);
        assert_eq!(r.status(false).verdict, Verdict::Private);
    }

    #[test]
    fn declared_addresses_are_public_in_any_range_and_lab_ranges_only_in_a_lab() {
        let r = Reachability::new(&[addr("/ip4/198.51.100.2/tcp/7946")], false);
        assert_eq!(r.status(true).verdict, Verdict::Public);
        let mut r = Reachability::new(&[], false);
        r.confirmed(addr("/ip4/203.0.113.4/tcp/7946"));
        assert_eq!(r.status(false).verdict, Verdict::Local);
        let mut r = Reachability::new(&[], true);
        r.confirmed(addr("/ip4/203.0.113.4/tcp/7946"));
        assert_eq!(r.status(false).verdict, Verdict::Public);
        let mut r = Reachability::new(&[], false);
        r.confirmed(addr("/dns4/grid.example.org/tcp/7946"));
        assert_eq!(r.status(false).verdict, Verdict::Public);
    }
}
