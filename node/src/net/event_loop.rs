//! The one task that owns the `Swarm`.
//!
//! It takes [`Command`]s from [`NetClient`](super::NetClient)s (each with a `oneshot`
//! for the reply, kept in `pending_*` maps keyed by request id), turns swarm events
//! into replies, into [`NetEvent`]s for the node (inbound requests, carrying their
//! response channel) and into the [`PeerBook`]. It makes no decisions about work: what
//! to accept, run or send is decided above it.
//!
//! It performs [`Discovery`]'s decisions: it answers capacity queries and pushes
//! this node's advert to its subscribers, subscribes to the peers it is connected
//! to, and while there is demand walks the DHT towards random keys to sample more.
//!
//! It records the network's [`NetMetrics`] as it handles events: connections,
//! pings, adverts, request outcomes, offences and bans, and (every tick) the size of
//! the peer book and the capacity view.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad, mdns, ping, request_response};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::behaviour::{Behaviour, BehaviourEvent};
use super::codec::Inbound;
use super::discovery::Discovery;
use super::held::{Budget, Held, Weigh};
use super::metrics::NetMetrics;
use super::offences::AddressOffences;
use super::peers::{NetStatus, PeerBook, PeerInfo};
use super::protocol::*;
use super::{NetConfig, NetEvent, RequestError};

mod bans;
mod capacity;
mod keep;
mod nat;

/// How often a node connected to nobody dials its bootstrap peers again.
const BOOTSTRAP_RETRY: Duration = Duration::from_secs(10);

type Reply<T> = oneshot::Sender<Result<T, RequestError>>;
type PendingMap<T> = HashMap<request_response::OutboundRequestId, Reply<T>>;

/// What a [`NetClient`](super::NetClient) asks of the event loop.
pub(crate) enum Command {
    Dial(Multiaddr, oneshot::Sender<Result<(), String>>),
    PublishAdvert(CapacityAdvert),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    Status(oneshot::Sender<NetStatus>),
    SendTask(PeerId, TaskRequest, Reply<TaskReply>),
    SendResults(PeerId, ResultBatch, Reply<ResultAck>),
    GetBlobPiece(PeerId, BlobRequest, Reply<BlobReply>),
    RespondTask(request_response::ResponseChannel<TaskReply>, TaskReply),
    RespondResults(request_response::ResponseChannel<ResultAck>, ResultAck),
    RespondBlob(request_response::ResponseChannel<BlobReply>, BlobReply),
    Penalize(PeerId, String),
}

pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    shutdown: CancellationToken,
    config: NetConfig,
    book: PeerBook,
    discovery: Discovery,
    /// This node's random walks in flight (the DHT's own bootstrap is not one).
    walks: HashSet<kad::QueryId>,
    /// Unsubscribing queries in flight (`Query { subscribe: false }`), whose
    /// answers are not subscriptions. Bounded by the query budget.
    unsubscribing: HashSet<request_response::OutboundRequestId>,
    /// Peers known before the current walks, to count what a walk found new.
    walk_new: usize,
    /// When each connected peer last exchanged work with this node (`keep.rs`).
    work: HashMap<PeerId, Instant>,
    /// Connections closed since the heap was last trimmed, and when (`keep.rs`).
    closed_since_trim: usize,
    last_trim: Instant,
    own_advert: Option<CapacityAdvert>,
    pending_dial: HashMap<PeerId, Vec<oneshot::Sender<Result<(), String>>>>,
    pending_task: PendingMap<TaskReply>,
    pending_result: PendingMap<ResultAck>,
    pending_blob: PendingMap<BlobReply>,
    bans: HashMap<PeerId, Instant>,
    /// Offences and bans by IP address (whatever identities it used).
    address_offences: AddressOffences,
    bootstrapped: bool,
    last_bootstrap: Instant,
    last_refresh: Instant,
    dropped_inbound: u64,
    /// The byte bound on inbound requests held by the node.
    held: Budget,
    metrics: NetMetrics,
    /// Reachability, relays, connection paths (`nat.rs`).
    nat: nat::NatState,
}

/// Checks an advert a peer sent (a query's answer or a pushed update): `Ok(Some)`
/// for a valid advert, `Ok(None)` for one of another protocol version (ignored, not
/// punished), `Err` for one that breaks the rules: its kind (one of
/// [`DECODE_KINDS`]) and what was wrong. Pure, so it can be fed arbitrary adverts
/// (see the property tests below).
///
/// [`DECODE_KINDS`]: super::metrics::DECODE_KINDS
pub(crate) fn check_advert(
    advert: CapacityAdvert,
) -> Result<Option<CapacityAdvert>, (&'static str, String)> {
    if advert.version != PROTOCOL_VERSION {
        return Ok(None);
    }
    advert.check().map_err(|e| ("invalid", e))?;
    Ok(Some(advert))
}

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<NetEvent>,
        shutdown: CancellationToken,
        config: NetConfig,
        metrics: NetMetrics,
        held: Budget,
    ) -> Self {
        let nat = nat::NatState::new(&config.nat);
        Self {
            swarm,
            commands,
            events,
            shutdown,
            book: PeerBook::new(config.advert_ttl),
            discovery: Discovery::new(config.discovery.clone()),
            walks: HashSet::new(),
            unsubscribing: HashSet::new(),
            walk_new: 0,
            work: HashMap::new(),
            closed_since_trim: 0,
            last_trim: Instant::now(),
            config,
            own_advert: None,
            pending_dial: HashMap::new(),
            pending_task: HashMap::new(),
            pending_result: HashMap::new(),
            pending_blob: HashMap::new(),
            bans: HashMap::new(),
            address_offences: AddressOffences::default(),
            bootstrapped: false,
            last_bootstrap: Instant::now(),
            last_refresh: Instant::now(),
            dropped_inbound: 0,
            held,
            metrics,
            nat,
        }
    }

    /// Runs until the shutdown token fires. Local work (commands, i.e. replies to
    /// requests already accepted) is served before new network events.
    pub(crate) async fn run(mut self) {
        self.nat_start();
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                event = self.swarm.select_next_some() => {
                    self.on_swarm_event(event);
                    self.nat_bootstrap(started);
                }
                _ = tick.tick() => {
                    self.nat_bootstrap(started);
                    self.on_tick();
                }
            }
        }
        tracing::debug!("network event loop stopped");
    }

    fn on_tick(&mut self) {
        self.book.expire_adverts();
        self.redial_bootstrap();
        self.refresh_routing();
        self.discover();
        self.nat_tick();
        self.expire_bans(Instant::now());
        self.sweep_kept(Instant::now());
        self.record_gauges();
    }

    /// Sets the gauges that describe the peer book and the capacity view.
    fn record_gauges(&self) {
        let m = &self.metrics;
        m.known_peers.set(self.book.len() as i64);
        m.view_peers.set(self.book.advert_count() as i64);
        let (total, free) = self.book.advertised_slots();
        m.view_slots.with_label_values(&["total"]).set(total as i64);
        m.view_slots.with_label_values(&["free"]).set(free as i64);
        m.banned_peers.set(self.bans.len() as i64);
        m.inbound_held_bytes.set(self.held.used() as i64);
        m.connected_peers
            .set(self.swarm.connected_peers().count() as i64);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Dial(addr, reply) => self.dial_addr(addr, Some(reply)),
            Command::PublishAdvert(advert) => self.publish(advert),
            Command::Peers(reply) => {
                // Asking for candidates is demand: sample more while it lasts.
                self.discovery.demand(Instant::now());
                self.discover();
                let mut peers = self.book.snapshot();
                self.annotate_paths(&mut peers);
                let _ = reply.send(peers);
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::SendTask(peer, req, reply) => {
                let id = self.swarm.behaviour_mut().task.send_request(&peer, Ok(req));
                self.pending_task.insert(id, reply);
            }
            Command::SendResults(peer, req, reply) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .result
                    .send_request(&peer, Ok(req));
                self.pending_result.insert(id, reply);
            }
            Command::GetBlobPiece(peer, req, reply) => self.send_blob_piece(peer, req, reply),
            Command::RespondTask(channel, reply) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .task
                    .send_response(channel, reply);
            }
            Command::RespondResults(channel, ack) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .result
                    .send_response(channel, ack);
            }
            Command::RespondBlob(channel, reply) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .blob
                    .send_response(channel, reply);
            }
            Command::Penalize(peer, reason) => self.penalize(peer, &reason),
        }
    }

    fn status(&self) -> NetStatus {
        NetStatus {
            peer_id: self.swarm.local_peer_id().to_string(),
            listen_addrs: self.swarm.listeners().map(ToString::to_string).collect(),
            connected_peers: self.swarm.connected_peers().count(),
            known_peers: self.book.len(),
            adverts: self.book.advert_count(),
            subscribers: self.discovery.subscriber_count(Instant::now()),
            own_advert: self.own_advert.clone(),
            offences: self.book.total_offences(),
            banned_peers: self.bans.len(),
            banned_addresses: self.address_offences.banned(),
            dropped_inbound: self.dropped_inbound,
            reachability: Some(self.reachability()),
        }
    }

    fn dial_addr(&mut self, addr: Multiaddr, reply: Option<oneshot::Sender<Result<(), String>>>) {
        let peer = addr.iter().find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(id) => Some(id),
            _ => None,
        });
        if let Some(peer) = peer {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
        }
        match self.swarm.dial(addr.clone()) {
            Ok(()) => {
                if let Some(reply) = reply {
                    match peer {
                        Some(peer) => self.pending_dial.entry(peer).or_default().push(reply),
                        None => {
                            let _ = reply.send(Ok(()));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "could not dial");
                if let Some(reply) = reply {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
    }

    /// Hands an inbound request to the node with its share of the byte budget; when
    /// the node is overloaded (the queue is full, or the requests it holds weigh
    /// [`MAX_HELD_BYTES`](super::held::MAX_HELD_BYTES)) the request is dropped (the peer sees its stream closed)
    /// rather than queued without bound.
    fn deliver(&mut self, weight: usize, event: impl FnOnce(Held) -> NetEvent) {
        let sent = match self.held.take(weight) {
            Some(held) => self.events.try_send(event(held)).is_ok(),
            None => false,
        };
        if !sent {
            self.dropped_inbound += 1;
            self.metrics.inbound_dropped.inc();
            tracing::debug!(
                held = self.held.used(),
                "node busy: dropped an inbound request"
            );
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                self.nat_connected(peer_id, connection_id, &endpoint);
                let source = match &endpoint {
                    libp2p::core::ConnectedPoint::Listener { .. } => "inbound",
                    libp2p::core::ConnectedPoint::Dialer { address, .. }
                        if self.config.bootstrap.iter().any(|b| {
                            b.iter()
                                .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
                                .eq(address
                                    .iter()
                                    .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_))))
                        }) =>
                    {
                        "bootstrap"
                    }
                    libp2p::core::ConnectedPoint::Dialer { .. } => "dialed",
                };
                self.book
                    .connected(peer_id, endpoint.get_remote_address().clone(), source);
                for reply in self.pending_dial.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(Ok(()));
                }
                self.discovery.connected(Instant::now());
                if !self.bootstrapped {
                    self.bootstrapped = self.swarm.behaviour_mut().kad.bootstrap().is_ok();
                }
                // A peer dialled for a walk is queried once identify says it speaks
                // this version (see `on_identify`).
                self.metrics
                    .connected_peers
                    .set(self.swarm.connected_peers().count() as i64);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.nat_closed(peer_id, connection_id);
                self.closed_since_trim += 1;
                if num_established > 0 {
                    return;
                }
                self.book.disconnected(&peer_id);
                self.work.remove(&peer_id);
                self.metrics
                    .connected_peers
                    .set(self.swarm.connected_peers().count() as i64);
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } if !matches!(error, DialError::DialPeerConditionFalse(_)) => {
                for reply in self.pending_dial.remove(&peer).unwrap_or_default() {
                    let _ = reply.send(Err(error.to_string()));
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => self.on_incoming_error(&send_back_addr, &error),
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            other => self.on_nat_swarm_event(other),
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                connection_id,
            }) => {
                let info = self.nat_filter_identify(peer_id, connection_id, info);
                self.nat_identified(peer_id, &info);
                self.on_identify(peer_id, info)
            }
            BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => {
                self.metrics.ping_rtt.observe(rtt.as_secs_f64());
                self.book.rtt(peer, rtt);
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer, addresses, ..
            }) if !self.swarm.is_connected(&peer)
                && self.wants_dial()
                && !self.bans.contains_key(&peer) =>
            {
                self.book.discovered(peer, "dht");
                let opts = DialOpts::peer_id(peer)
                    .addresses(addresses.into_vec())
                    .build();
                let _ = self.swarm.dial(opts);
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    self.book.discovered(peer, "mdns");
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetClosestPeers(result),
                step,
                ..
            }) if self.walks.contains(&id) => {
                let peers = match result {
                    Ok(ok) => ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                self.on_walk(peers);
                if step.last {
                    self.walks.remove(&id);
                    let found = self.book.len().saturating_sub(self.walk_new);
                    self.walk_new = self.book.len();
                    self.discovery.walk_done(found);
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::Bootstrap(_),
                ..
            }) => self.discovery.lookup_settled(),
            BehaviourEvent::Capacity(event) => self.on_capacity(event),
            BehaviourEvent::Task(event) => self.on_request_response(
                event,
                TASK_PROTOCOL,
                |s| &mut s.pending_task,
                |peer, request, channel, held| NetEvent::Task {
                    peer,
                    request,
                    channel,
                    held,
                },
            ),
            BehaviourEvent::Result(event) => self.on_request_response(
                event,
                RESULT_PROTOCOL,
                |s| &mut s.pending_result,
                |peer, request, channel, held| NetEvent::Results {
                    peer,
                    request,
                    channel,
                    held,
                },
            ),
            BehaviourEvent::Blob(event) => self.on_request_response(
                event,
                BLOB_PROTOCOL,
                |s| &mut s.pending_blob,
                |peer, request, channel, held| NetEvent::Blob {
                    peer,
                    request,
                    channel,
                    held,
                },
            ),
            BehaviourEvent::Guard(super::guard::GuardEvent::Flooding(ip)) => {
                self.on_flooding(ip);
            }
            other => self.on_nat_behaviour_event(other),
        }
    }

    fn on_identify(&mut self, peer: PeerId, info: identify::Info) {
        if info.protocol_version != IDENTIFY_PROTOCOL {
            // Another major version (or another network): refused politely, and said
            // why once per connection (a version-2 peer cannot sign what version 3
            // checks).
            tracing::info!(%peer, "{}", super::protocol::foreign_version_reason(&info.protocol_version));
            self.book.foreign(peer, info.protocol_version);
            return;
        }
        let addrs: Vec<Multiaddr> = info.listen_addrs.into_iter().take(16).collect();
        for addr in &addrs {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
        }
        self.book.identified(peer, addrs, info.agent_version);
        let now = Instant::now();
        // Without demand a new subscription waits for the next discovery round,
        // which picks the nearest peers (`Discovery::nearest`), not the first met.
        let room = self.view_room(now) > 0 && self.discovery.has_demand(now);
        let ttl = self.discovery.config().subscription_ttl;
        if self
            .book
            .query_due(&peer, now, ttl, self.config.advert_ttl / 2, room)
        {
            self.query_capacity(peer, now);
        }
    }

    /// One request-response protocol's events: inbound requests go up to the node,
    /// responses and failures to the waiting `oneshot`, wire offences are counted.
    fn on_request_response<Req, Resp>(
        &mut self,
        event: request_response::Event<Inbound<Req>, Resp>,
        protocol: &'static str,
        pending: fn(&mut Self) -> &mut PendingMap<Resp>,
        inbound: fn(PeerId, Req, request_response::ResponseChannel<Resp>, Held) -> NetEvent,
    ) where
        Req: Weigh,
    {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => match request {
                    Ok(request) => {
                        self.worked_with(peer, Instant::now());
                        let weight = request.weight();
                        self.deliver(weight, |held| inbound(peer, request, channel, held))
                    }
                    // Dropping the channel closes the stream unanswered.
                    Err(offence) => self.on_offence(peer, &offence),
                },
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    self.metrics.request(protocol, Ok(()));
                    self.worked_with(peer, Instant::now());
                    if let Some(reply) = pending(self).remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let request_response::OutboundFailure::Io(e) = &error {
                    self.on_failure(peer, e);
                }
                let error = RequestError::from(error);
                self.metrics.request(protocol, Err(&error));
                if let Some(reply) = pending(self).remove(&request_id) {
                    let _ = reply.send(Err(error));
                }
            }
            request_response::Event::InboundFailure {
                peer,
                error: request_response::InboundFailure::Io(e),
                ..
            } => self.on_failure(peer, &e),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    //! Property tests of what a capacity update goes through (the codec's size limit
    //! and decoder, then [`check_advert`]): arbitrary bytes never panic, valid
    //! adverts round-trip, other versions are ignored rather than punished.

    use proptest::prelude::*;

    use super::*;
    use crate::net::codec;

    /// The bytes of a pushed update, as the codec and the event loop take them.
    fn decode_advert(data: &[u8]) -> Result<Option<CapacityAdvert>, (&'static str, String)> {
        if data.len() > MAX_CAPACITY_BYTES {
            return Err(("oversized", format!("{} bytes", data.len())));
        }
        match codec::decode::<CapacityRequest>(data, CAPACITY_PROTOCOL) {
            Ok(CapacityRequest::Update(advert)) => check_advert(advert),
            Ok(CapacityRequest::Query { .. }) => Ok(None),
            Err(e) => Err(("garbled", e.to_string())),
        }
    }

    fn update(advert: &CapacityAdvert) -> Vec<u8> {
        codec::encode(&CapacityRequest::Update(advert.clone()), MAX_CAPACITY_BYTES)
            .expect("a valid advert fits")
    }

    fn advert() -> impl Strategy<Value = CapacityAdvert> {
        (
            any::<u64>(),
            0..=MAX_ADVERT_SLOTS,
            0..=MAX_ADVERT_SLOTS,
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec("[a-z0-9-]{0,64}", 0..=MAX_FEATURES),
        )
            .prop_map(|(seq, total, free, cores, memory, fuel, features)| {
                let slots_total = total.max(free);
                CapacityAdvert {
                    version: PROTOCOL_VERSION,
                    seq,
                    slots_total,
                    slots_free: free.min(slots_total),
                    cores,
                    memory_limit: memory,
                    fuel_per_sec: fuel,
                    features,
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2 * MAX_CAPACITY_BYTES)) {
            match decode_advert(&data) {
                Ok(Some(advert)) => {
                    prop_assert_eq!(advert.version, PROTOCOL_VERSION);
                    prop_assert!(advert.check().is_ok());
                    // The scheduler multiplies a peer's slots by the queue factor.
                    prop_assert!(advert.slots_total.checked_mul(crate::types::QUEUE_FACTOR).is_some());
                }
                Ok(None) => {}
                Err((kind, _)) => {
                    prop_assert!(crate::net::metrics::DECODE_KINDS.contains(&kind), "{kind}");
                    prop_assert_eq!(kind == "oversized", data.len() > MAX_CAPACITY_BYTES);
                }
            }
        }

        #[test]
        fn valid_adverts_round_trip(advert in advert()) {
            prop_assert_eq!(decode_advert(&update(&advert)), Ok(Some(advert)));
        }

        #[test]
        fn mutated_adverts_never_panic(
            advert in advert(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
            cut in any::<prop::sample::Index>(),
            tail in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = update(&advert);
            for (at, x) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= x;
            }
            let _ = decode_advert(&bytes);
            let _ = decode_advert(&bytes[..cut.index(bytes.len() + 1)]);
            bytes.extend_from_slice(&tail);
            let _ = decode_advert(&bytes);
        }

        #[test]
        fn other_versions_are_ignored_not_punished(
            version in any::<u16>().prop_filter("another version", |v| *v != PROTOCOL_VERSION),
            mut advert in advert(),
        ) {
            advert.version = version;
            prop_assert_eq!(decode_advert(&update(&advert)), Ok(None));
        }
    }

    #[test]
    fn adverts_that_break_the_rules_are_invalid_not_garbled() {
        let mut advert = CapacityAdvert {
            version: PROTOCOL_VERSION,
            seq: 1,
            slots_total: 1,
            slots_free: 2,
            cores: 1,
            memory_limit: 1,
            fuel_per_sec: 1,
            features: vec![],
        };
        assert_eq!(decode_advert(&update(&advert)).unwrap_err().0, "invalid");
        // Found by these tests' reading: u32::MAX slots overflowed
        // `slots_total * QUEUE_FACTOR` in the scheduler (a panic in debug builds).
        advert.slots_free = 0;
        advert.slots_total = u32::MAX;
        assert_eq!(decode_advert(&update(&advert)).unwrap_err().0, "invalid");
        advert.slots_total = 1;
        advert.features = vec!["f".into(); MAX_FEATURES + 1];
        assert_eq!(decode_advert(&update(&advert)).unwrap_err().0, "invalid");
        assert_eq!(
            decode_advert(&vec![1u8; MAX_CAPACITY_BYTES + 1])
                .unwrap_err()
                .0,
            "oversized"
        );
    }
}
