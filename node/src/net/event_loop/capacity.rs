//! The capacity side of the event loop: this node's advert (kept, pushed to
//! subscribers), capacity queries and subscriptions, the adverts peers send, and the
//! DHT upkeep that finds candidates (random walks, routing refresh, bootstrap redial).
//! It carries out [`Discovery`](super::super::discovery::Discovery)'s decisions; the
//! loop in `event_loop.rs` calls these methods from its tick and its event handlers.

use std::time::Instant;

use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{PeerId, kad, request_response};

use super::super::RequestError;
use super::super::codec::Inbound;
use super::super::protocol::*;
use super::{BOOTSTRAP_RETRY, EventLoop, check_advert};

impl EventLoop {
    /// Keeps this node's advert (the answer to queries) and pushes it to the
    /// connected subscribers: at most `max_subscribers` messages, whatever the size
    /// of the grid. A subscriber that is not connected is not dialled; its view
    /// entry expires and it asks again when it needs candidates.
    pub(super) fn publish(&mut self, advert: CapacityAdvert) {
        self.own_advert = Some(advert.clone());
        for peer in self.discovery.subscribers(Instant::now()) {
            if self.swarm.is_connected(&peer) {
                self.swarm
                    .behaviour_mut()
                    .capacity
                    .send_request(&peer, Ok(CapacityRequest::Update(advert.clone())));
            }
        }
    }

    /// One round of discovery: renew or start subscriptions to connected peers
    /// (bounded by the query budget), and start a random walk when there is demand
    /// and too few candidates.
    pub(super) fn discover(&mut self) {
        let now = Instant::now();
        let ttl = self.discovery.config().subscription_ttl;
        let stale = self.config.advert_ttl / 2;
        // Renewals are due whatever the room; new subscriptions only while the view
        // (adverts held, subscriptions live, queries unanswered) is under its cap,
        // so a node that connects to many peers at once (a bootstrap node, a
        // start-up burst) still subscribes to a bounded number.
        let mut room = self.view_room(now);
        // Without demand, subscriptions beyond the idle view (taken while a job
        // looked for candidates) are not renewed: they lapse, and the connections
        // they kept close, until the idle view's number is left.
        let demand = self.discovery.has_demand(now);
        let renew = demand || self.book.view_len(now, ttl) <= self.discovery.config().idle_view;
        let (held, new): (Vec<PeerId>, Vec<PeerId>) = self
            .book
            .connected_peers()
            .filter(|p| self.book.query_due(p, now, ttl, stale, true))
            .copied()
            .partition(|p| self.book.in_view(p, now, ttl));
        // Idle: new subscriptions only once the first lookup has settled, and to the
        // nearest peers (see `discovery::nearest`); with demand, to everyone
        // connected, as fast as the budget allows.
        let settled = !demand && self.discovery.is_settled(now);
        if settled && room == 0 {
            self.move_nearer(&new, now, ttl);
        }
        let new = if demand {
            new
        } else if room > 0 && settled {
            let local = *self.swarm.local_peer_id();
            crate::net::discovery::nearest(&local, new, room)
        } else {
            Vec::new()
        };
        let held = if renew { held } else { Vec::new() };
        for (peer, is_new) in held
            .into_iter()
            .map(|p| (p, false))
            .chain(new.into_iter().map(|p| (p, true)))
        {
            if is_new && room == 0 {
                break;
            }
            if !self.query_capacity(peer, now) {
                break;
            }
            if is_new {
                room -= 1;
            }
        }
        if self.discovery.should_walk(now, self.book.candidate_count()) {
            self.discovery.walk_started(now);
            if self.walks.is_empty() {
                self.walk_new = self.book.len();
            }
            let id = self
                .swarm
                .behaviour_mut()
                .kad
                .get_closest_peers(PeerId::random());
            self.walks.insert(id);
        }
    }

    /// An idle node with a full view moves one subscription to a connected peer
    /// nearer than its farthest one (`discovery::swap`): it tells the farthest it
    /// no longer subscribes (`Query { subscribe: false }`, so that peer stops
    /// pushing and lets the connection close) and subscribes to the nearer. One move
    /// a round; the subscriptions settle on the nearest peers met.
    fn move_nearer(&mut self, candidates: &[PeerId], now: Instant, ttl: std::time::Duration) {
        let subscribed = self.book.subscriptions(now, ttl);
        let local = *self.swarm.local_peer_id();
        let Some((drop, take)) = crate::net::discovery::swap(&local, &subscribed, candidates)
        else {
            return;
        };
        if !self.discovery.may_query() {
            return;
        }
        self.book.unsubscribed(&drop, now);
        self.metrics.view_peers.set(self.book.advert_count() as i64);
        if self.swarm.is_connected(&drop) {
            self.discovery.query_started();
            let id = self
                .swarm
                .behaviour_mut()
                .capacity
                .send_request(&drop, Ok(CapacityRequest::Query { subscribe: false }));
            self.unsubscribing.insert(id);
        }
        self.query_capacity(take, now);
    }

    /// Every `random_walk_interval`, two lookups keep the routing table fresh: one
    /// towards this node's own id (its neighbourhood) and one towards a random key.
    /// A fixed number, so the upkeep grows only as the length of a lookup (log N).
    pub(super) fn refresh_routing(&mut self) {
        if !self.bootstrapped || self.last_refresh.elapsed() < self.config.random_walk_interval {
            return;
        }
        self.last_refresh = Instant::now();
        let local = *self.swarm.local_peer_id();
        let kad = &mut self.swarm.behaviour_mut().kad;
        kad.get_closest_peers(local);
        kad.get_closest_peers(PeerId::random());
    }

    /// A node connected to nobody dials its bootstrap peers again, at most every
    /// [`BOOTSTRAP_RETRY`] (a bootstrap peer that was busy or not up yet at start).
    pub(super) fn redial_bootstrap(&mut self) {
        if self.config.bootstrap.is_empty()
            || self.swarm.connected_peers().next().is_some()
            || self.last_bootstrap.elapsed() < BOOTSTRAP_RETRY
        {
            return;
        }
        self.last_bootstrap = Instant::now();
        for addr in self.config.bootstrap.clone() {
            self.dial_addr(addr, None);
        }
    }

    /// Whether a peer the DHT just found should be dialled: below `dial_target`
    /// connections always; with demand and too few candidates, up to the connection
    /// limit, so candidates arrive while a walk runs, not only when it ends.
    pub(super) fn wants_dial(&self) -> bool {
        let connected = self.swarm.connected_peers().count();
        let config = self.discovery.config();
        connected < config.dial_target
            || (self.discovery.has_demand(Instant::now())
                && self.book.candidate_count() < config.want
                && connected + 8 < self.config.max_connections as usize)
    }

    /// How many more peers the view takes (new subscriptions): up to `idle_view`
    /// when idle (so an idle node's subscriptions, and the connections they keep
    /// open, stay few), up to `max_view` while there is demand; counting peers
    /// subscribed to that have not answered with an advert yet, and queries in
    /// flight.
    pub(super) fn view_room(&self, now: Instant) -> usize {
        let config = self.discovery.config();
        let cap = if self.discovery.has_demand(now) {
            config.max_view
        } else {
            config.idle_view
        };
        let ttl = config.subscription_ttl;
        cap.saturating_sub(self.book.view_len(now, ttl) + self.discovery.queries_in_flight())
    }

    /// Asks a connected peer for its advert and subscribes to its updates; false
    /// when the query budget is spent.
    pub(super) fn query_capacity(&mut self, peer: PeerId, now: Instant) -> bool {
        if !self.discovery.may_query() {
            return false;
        }
        self.discovery.query_started();
        self.book.queried(peer, now);
        self.swarm
            .behaviour_mut()
            .capacity
            .send_request(&peer, Ok(CapacityRequest::Query { subscribe: true }));
        true
    }

    /// The peers a random walk found: query the connected ones, dial (a bounded
    /// number of) the others; they are queried once identified.
    pub(super) fn on_walk(&mut self, peers: Vec<kad::PeerInfo>) {
        let now = Instant::now();
        let local = *self.swarm.local_peer_id();
        let room = self.swarm.connected_peers().count() + 8 < self.config.max_connections as usize;
        let mut dials = 0;
        for info in peers {
            let peer = info.peer_id;
            if peer == local || self.bans.contains_key(&peer) {
                continue;
            }
            if self.swarm.is_connected(&peer) {
                let ttl = self.discovery.config().subscription_ttl;
                if self.book.is_ours(&peer) && !self.book.subscribed_to(&peer, now, ttl) {
                    self.query_capacity(peer, now);
                }
                continue;
            }
            if !room || dials >= self.discovery.config().dials_per_walk {
                continue;
            }
            dials += 1;
            self.book.discovered(peer, "dht");
            let opts = DialOpts::peer_id(peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .addresses(info.addrs)
                .build();
            let _ = self.swarm.dial(opts);
        }
    }

    /// The capacity protocol: queries are answered here (with this node's advert;
    /// the asker becomes a subscriber), updates and answers go into the view once
    /// checked. An update from a peer this node did not subscribe to is ignored: what
    /// a peer volunteers never steers placement.
    pub(super) fn on_capacity(
        &mut self,
        event: request_response::Event<Inbound<CapacityRequest>, CapacityReply>,
    ) {
        let now = Instant::now();
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let reply = match request {
                        Ok(CapacityRequest::Query { subscribe }) => {
                            if subscribe && !self.bans.contains_key(&peer) {
                                self.discovery.subscribe(peer, now);
                                self.keep(peer);
                            } else if !subscribe {
                                // "What do you lend? And stop pushing to me": a
                                // subscriber that moved to a nearer peer.
                                self.discovery.unsubscribe(&peer);
                            }
                            CapacityReply::Advert(self.own_advert.clone())
                        }
                        Ok(CapacityRequest::Update(advert)) => {
                            let ttl = self.discovery.config().subscription_ttl;
                            if self.book.subscribed_to(&peer, now, ttl) {
                                self.take_advert(peer, advert);
                            }
                            CapacityReply::Ack
                        }
                        // Dropping the channel closes the stream unanswered.
                        Err(offence) => return self.on_offence(peer, &offence),
                    };
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .capacity
                        .send_response(channel, reply);
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    self.metrics.request(CAPACITY_PROTOCOL, Ok(()));
                    if self.unsubscribing.remove(&request_id) {
                        // The answer to "stop pushing to me": not a subscription.
                        self.discovery.query_done();
                        return;
                    }
                    if let CapacityReply::Advert(advert) = response {
                        self.discovery.query_done();
                        self.book.subscribed(peer, now);
                        self.keep(peer);
                        if let Some(advert) = advert {
                            self.take_advert(peer, advert);
                        }
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                error,
                request_id,
                ..
            } => {
                self.unsubscribing.remove(&request_id);
                // Queries and updates are not told apart here: the budget is a
                // bound, and an update that failed releases nothing.
                self.discovery.query_done();
                if let request_response::OutboundFailure::Io(e) = &error {
                    self.on_failure(peer, e);
                }
                let error = RequestError::from(error);
                self.metrics.request(CAPACITY_PROTOCOL, Err(&error));
            }
            request_response::Event::InboundFailure {
                peer,
                error: request_response::InboundFailure::Io(e),
                ..
            } => self.on_failure(peer, &e),
            _ => {}
        }
    }

    /// Puts a peer's advert into the view when the peer is identified as speaking
    /// this version and the advert is valid and newer; an advert that breaks the
    /// rules is an offence.
    pub(super) fn take_advert(&mut self, peer: PeerId, advert: CapacityAdvert) {
        // Only from a peer that completed identify with this protocol version: a
        // connection alone (a fresh key) steers no placement and takes no room.
        if !self.book.is_ours(&peer) || self.bans.contains_key(&peer) {
            return;
        }
        match check_advert(advert) {
            Ok(Some(advert)) if self.book.is_newer(&peer, advert.seq) => {
                self.book.advert(peer, advert);
                self.metrics.view_peers.set(self.book.advert_count() as i64);
            }
            Ok(_) => {}
            Err((kind, offence)) => {
                self.metrics.decode_error(CAPACITY_PROTOCOL, kind);
                self.penalize(peer, &offence);
            }
        }
    }
}
