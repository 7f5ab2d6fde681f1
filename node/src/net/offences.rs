//! Offences counted per IP address, beside the per-peer counts in the
//! [`PeerBook`](super::peers::PeerBook): a peer id costs nothing to make, so the
//! offences of every identity that connects from one address add up, and past
//! [`ADDRESS_OFFENCE_THRESHOLD`] the address is banned for [`BAN_TIME`] (the
//! [`ConnectionGuard`](super::guard::ConnectionGuard) then refuses every new
//! connection from it, under any identity, and the event loop closes the open
//! ones). Owned by the event loop; pure (time is passed in), bounded by
//! [`MAX_ADDRESSES`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::guard::canonical;

/// Offences one peer id may commit before it is disconnected and banned.
pub(crate) const OFFENCE_THRESHOLD: u32 = 5;
/// Offences from one IP address, under any identities, before it is banned: twice a
/// peer's, so that one misbehaving peer behind a shared address (a NAT) is banned by
/// its id before its neighbours are.
pub(crate) const ADDRESS_OFFENCE_THRESHOLD: u32 = 2 * OFFENCE_THRESHOLD;
/// How long a ban (of a peer id or an address) lasts.
pub(crate) const BAN_TIME: Duration = Duration::from_secs(600);
/// Most addresses with offences remembered.
pub(crate) const MAX_ADDRESSES: usize = 4096;
/// Connections of banned peer ids from one address (each a full handshake, then
/// denied) that count as one offence against the address: a banned peer that
/// keeps reconnecting gets its address banned, refused before any handshake.
pub(crate) const BANNED_RETRIES_PER_OFFENCE: u32 = 16;
/// Retries of banned peers are counted in windows this long: an honest peer,
/// banned, redials at discovery's pace, a few times a minute at most.
pub(crate) const RETRY_WINDOW: Duration = Duration::from_secs(60);

/// Offences and bans by address.
#[derive(Debug, Default)]
pub(crate) struct AddressOffences {
    counts: HashMap<IpAddr, u32>,
    bans: HashMap<IpAddr, Instant>,
    /// Connections of banned peer ids per address in the current window.
    retries: HashMap<IpAddr, (u32, Instant)>,
}

impl AddressOffences {
    /// Counts an offence from `ip`; true when it bans the address now.
    pub(crate) fn offence(&mut self, ip: IpAddr, now: Instant) -> bool {
        let ip = canonical(ip);
        if self.bans.contains_key(&ip) {
            return false;
        }
        if !self.counts.contains_key(&ip) && self.counts.len() >= MAX_ADDRESSES {
            // Forget the addresses with a single offence, then, if need be, half.
            self.counts.retain(|_, n| *n > 1);
            if self.counts.len() >= MAX_ADDRESSES {
                let mut keep: Vec<(IpAddr, u32)> = self.counts.drain().collect();
                keep.sort_by_key(|k| std::cmp::Reverse(k.1));
                keep.truncate(MAX_ADDRESSES / 2);
                self.counts.extend(keep);
            }
        }
        let n = self.counts.entry(ip).or_default();
        *n += 1;
        if *n < ADDRESS_OFFENCE_THRESHOLD {
            return false;
        }
        self.counts.remove(&ip);
        self.bans.insert(ip, now + BAN_TIME);
        true
    }

    /// A banned peer id connected again from `ip` (and was denied after its
    /// handshake); true when this makes an offence against the address (every
    /// [`BANNED_RETRIES_PER_OFFENCE`] within [`RETRY_WINDOW`]).
    pub(crate) fn banned_retry(&mut self, ip: IpAddr, now: Instant) -> bool {
        let ip = canonical(ip);
        if !self.retries.contains_key(&ip) && self.retries.len() >= MAX_ADDRESSES {
            self.retries
                .retain(|_, (_, since)| now.saturating_duration_since(*since) < RETRY_WINDOW);
            if self.retries.len() >= MAX_ADDRESSES {
                // Counted from the start next time: a flood of fresh addresses
                // each retrying is refused by the connection limits anyway.
                self.retries.clear();
            }
        }
        let (n, since) = self.retries.entry(ip).or_insert((0, now));
        if now.saturating_duration_since(*since) >= RETRY_WINDOW {
            *n = 0;
            *since = now;
        }
        *n += 1;
        n.is_multiple_of(BANNED_RETRIES_PER_OFFENCE)
    }

    /// The bans that ended by `now` (their addresses start afresh).
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<IpAddr> {
        let ended: Vec<IpAddr> = self
            .bans
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(ip, _)| *ip)
            .collect();
        for ip in &ended {
            self.bans.remove(ip);
        }
        self.retries
            .retain(|_, (_, since)| now.saturating_duration_since(*since) < RETRY_WINDOW);
        ended
    }

    /// Whether `ip` is banned now.
    #[cfg(test)]
    pub(crate) fn is_banned(&self, ip: IpAddr) -> bool {
        self.bans.contains_key(&canonical(ip))
    }

    /// Addresses banned now.
    pub(crate) fn banned(&self) -> usize {
        self.bans.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offences_of_many_identities_on_one_address_add_up_to_a_ban_that_ends() {
        let mut o = AddressOffences::default();
        let (ip, other): (IpAddr, IpAddr) = (
            "203.0.113.5".parse().unwrap(),
            "203.0.113.6".parse().unwrap(),
        );
        let t0 = Instant::now();
        // Each offence may come from a fresh peer id: only the address is counted.
        for _ in 1..ADDRESS_OFFENCE_THRESHOLD {
            assert!(!o.offence(ip, t0));
        }
        assert!(!o.offence(other, t0));
        assert!(o.offence(ip, t0), "the threshold bans");
        assert!(o.is_banned(ip) && !o.is_banned(other));
        assert!(
            o.is_banned("::ffff:203.0.113.5".parse().unwrap()),
            "mapped IPv6 is the same address"
        );
        assert!(!o.offence(ip, t0), "banned once");
        assert!(o.expire(t0 + BAN_TIME / 2).is_empty());
        assert_eq!(o.expire(t0 + BAN_TIME), vec![ip]);
        assert!(!o.is_banned(ip));
        assert!(!o.offence(ip, t0 + BAN_TIME), "it starts afresh");
    }

    #[test]
    fn a_banned_peer_reconnecting_again_and_again_is_an_offence_against_its_address() {
        let mut o = AddressOffences::default();
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let t0 = Instant::now();
        let offences = (0..3 * BANNED_RETRIES_PER_OFFENCE)
            .filter(|_| o.banned_retry(ip, t0))
            .count();
        assert_eq!(offences, 3);
        // A peer redialling at discovery's pace never adds up to one.
        let slow: IpAddr = "203.0.113.8".parse().unwrap();
        let mut now = t0;
        for _ in 0..10 * BANNED_RETRIES_PER_OFFENCE {
            now += RETRY_WINDOW / (BANNED_RETRIES_PER_OFFENCE - 1);
            assert!(!o.banned_retry(slow, now));
        }
        o.expire(now + RETRY_WINDOW);
        assert!(o.retries.is_empty(), "forgotten after a quiet window");
    }

    #[test]
    fn the_table_is_bounded_and_keeps_the_worst() {
        let mut o = AddressOffences::default();
        let t0 = Instant::now();
        let worst: IpAddr = "198.51.100.1".parse().unwrap();
        for _ in 0..ADDRESS_OFFENCE_THRESHOLD - 1 {
            o.offence(worst, t0);
        }
        for i in 0..3 * MAX_ADDRESSES as u32 {
            o.offence(IpAddr::V4((0x0a00_0000 + i).into()), t0);
        }
        assert!(o.counts.len() <= MAX_ADDRESSES);
        assert!(o.offence(worst, t0), "the worst offender was kept");
    }
}
