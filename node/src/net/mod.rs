//! The peer network (libp2p).
//!
//! # Who talks to whom
//! - [`start`] builds the `Swarm` (TCP + Noise + Yamux, and QUIC; identify, ping,
//!   Kademlia on `/peergrid/kad/6.0.0`, mDNS, connection limits (in total, inbound,
//!   per IP and per network: [`guard`]), a ban list and four
//!   request-response protocols with a size-capped postcard codec), starts listening
//!   and spawns the [`event_loop`], the only task that touches the Swarm.
//! - Everything else holds a cloneable [`NetClient`]: each call sends a `Command` with
//!   a `oneshot` for its reply over a bounded channel.
//! - Inbound requests (task offers, result batches, blob pieces) come up to the node
//!   as [`NetEvent`]s carrying their response channel, over a bounded channel; when the
//!   node is too busy to take one (the channel is full, or the decoded requests it
//!   holds reach [`held::MAX_HELD_BYTES`]), the request is dropped, not queued.
//! - Capacity adverts are asked for and pushed to subscribers, never broadcast
//!   ([`discovery`]): an idle node's cost is bounded by its connection and subscriber
//!   caps, not by the grid; asking for candidates ([`NetClient::peers`]) is demand,
//!   which samples the DHT at random keys for more. The event loop validates adverts
//!   (size, decode, version, sequence number) and keeps the freshest per peer in its
//!   `PeerBook`, where they expire when a peer stops refreshing them.
//! - [`fetch`] gets a blob from the peers that hold it, piece by piece, verifying the
//!   BLAKE3 hash before the blob enters the store.
//! - A peer whose messages are oversized or garbled is penalised; past
//!   `OFFENCE_THRESHOLD` offences it is disconnected and banned; offences from one
//!   IP address add up whatever identities it uses, and past a threshold the
//!   address is banned too (`offences.rs`, refused at connection by [`guard`]).

pub mod bandwidth;
mod behaviour;
pub mod codec;
pub mod discovery;
pub(crate) mod event_loop;
pub mod fetch;
mod gate;
pub mod guard;
pub mod held;
mod keep_alive;
pub mod metrics;
pub mod nat_metrics;
mod offences;
pub mod peers;
pub mod protocol;
pub mod reachability;
pub mod relay;
pub mod scale_sim;
pub mod sim;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use libp2p::core::Transport as _;
use libp2p::{Multiaddr, PeerId, identity, request_response};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::event_loop::{Command, EventLoop};
pub use self::peers::{NetStatus, PeerInfo};
use self::protocol::*;

/// Network settings, resolved from the node's configuration.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Addresses to listen on (TCP and/or QUIC multiaddrs).
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start (with `/p2p/<id>` when known).
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// Adverts older than this leave the capacity view.
    pub advert_ttl: Duration,
    /// How often the DHT is walked to find more peers.
    pub random_walk_interval: Duration,
    /// How long a request may take before it fails.
    pub request_timeout: Duration,
    /// Close connections idle for this long, unless they carry a subscription
    /// (either way) or recent work (`keep_alive.rs`): Kademlia's lookups connect to
    /// every peer they ask, and those connections close soon after.
    pub idle_timeout: Duration,
    /// Most connections in total (inbound and this node's own dials).
    pub max_connections: u32,
    /// Most inbound connections; the rest of `max_connections` is reserved for this
    /// node's own dials, so strangers connecting in cannot take every slot.
    pub max_inbound: u32,
    /// Inbound limits per IP address and per network, and address bans.
    pub guard: guard::GuardConfig,
    /// New connections are refused while this process's resident memory (chunks
    /// included) is above this many bytes.
    pub max_memory: u64,
    /// Capacity discovery's numbers.
    pub discovery: discovery::DiscoveryConfig,
    /// Behind NAT: reachability, relays, hole punching, port mapping.
    pub nat: relay::NatConfig,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/7946".parse().expect("valid multiaddr"),
                "/ip4/0.0.0.0/udp/7946/quic-v1"
                    .parse()
                    .expect("valid multiaddr"),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            advert_ttl: Duration::from_secs(180),
            random_walk_interval: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(3),
            max_connections: 256,
            max_inbound: 192,
            guard: guard::GuardConfig::default(),
            max_memory: 2 << 30,
            discovery: discovery::DiscoveryConfig::default(),
            nat: relay::NatConfig::default(),
        }
    }
}

/// An inbound request for the node to answer through the [`NetClient`].
#[derive(Debug)]
pub enum NetEvent {
    /// A task offer or cancel from a submitter.
    Task {
        /// Who sent it.
        peer: PeerId,
        /// The request.
        request: TaskRequest,
        /// Where the reply goes.
        channel: request_response::ResponseChannel<TaskReply>,
        /// Its share of the inbound byte budget ([`held`]): drop it (or the
        /// event) when done with the request.
        held: held::Held,
    },
    /// Results from a worker.
    Results {
        /// Who sent them.
        peer: PeerId,
        /// The batch.
        request: ResultBatch,
        /// Where the ack goes.
        channel: request_response::ResponseChannel<ResultAck>,
        /// Its share of the inbound byte budget ([`held`]): drop it (or the
        /// event) when done with the request.
        held: held::Held,
    },
    /// A request for a blob piece.
    Blob {
        /// Who asks.
        peer: PeerId,
        /// What for.
        request: BlobRequest,
        /// Where the piece goes.
        channel: request_response::ResponseChannel<BlobReply>,
        /// Its share of the inbound byte budget ([`held`]): drop it (or the
        /// event) when done with the request.
        held: held::Held,
    },
}

/// Why a request to a peer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The peer could not be reached.
    #[error("could not reach the peer")]
    Unreachable,
    /// No answer in time.
    #[error("the peer did not answer in time")]
    Timeout,
    /// The connection closed before the answer.
    #[error("the connection closed")]
    ConnectionClosed,
    /// The peer does not speak this protocol (version).
    #[error("the peer does not speak this protocol version")]
    Unsupported,
    /// The answer broke the wire rules, or I/O failed.
    #[error("bad answer: {0}")]
    Io(String),
    /// The network task is gone (shutting down).
    #[error("the network is shut down")]
    Shutdown,
}

impl From<request_response::OutboundFailure> for RequestError {
    fn from(f: request_response::OutboundFailure) -> Self {
        use request_response::OutboundFailure as F;
        match f {
            F::DialFailure => Self::Unreachable,
            F::Timeout => Self::Timeout,
            F::ConnectionClosed => Self::ConnectionClosed,
            F::UnsupportedProtocols => Self::Unsupported,
            F::Io(e) => Self::Io(e.to_string()),
        }
    }
}

/// A handle to the network. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NetClient {
    commands: mpsc::Sender<Command>,
    local_peer_id: PeerId,
    /// The key results are signed with: the node's identity (a fault-injection seam
    /// may swap it, see [`NetClient::with_signer`]).
    signer: Arc<identity::Keypair>,
    /// The volunteer's bandwidth caps, taken around blob and result transfers.
    bandwidth: Arc<bandwidth::Bandwidth>,
}

/// Capacity of the command channel. Senders wait when it is full (backpressure).
const COMMAND_QUEUE: usize = 1024;
/// Capacity of the inbound event channel. Requests beyond it are dropped.
const EVENT_QUEUE: usize = 512;

impl NetClient {
    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Signs bytes with this node's identity key (results, see
    /// [`ChunkResult::signed_bytes`](protocol::ChunkResult::signed_bytes)).
    pub fn sign(&self, bytes: &[u8]) -> Vec<u8> {
        self.signer.sign(bytes).unwrap_or_default()
    }

    /// The same client signing with another key: a seam for tests of forged results.
    pub fn with_signer(&self, key: identity::Keypair) -> Self {
        Self {
            signer: Arc::new(key),
            ..self.clone()
        }
    }

    /// A client served by a simulation instead of a swarm (see [`sim`]).
    pub fn simulated(local: &identity::Keypair, peers: impl sim::SimulatedPeers) -> Self {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        tokio::spawn(sim::serve(rx, peers));
        Self {
            commands: tx,
            local_peer_id: local.public().to_peer_id(),
            signer: Arc::new(local.clone()),
            bandwidth: Arc::default(),
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, RequestError>>) -> Command,
    ) -> Result<T, RequestError> {
        self.ask(make).await.unwrap_or(Err(RequestError::Shutdown))
    }

    async fn tell(&self, command: Command) {
        let _ = self.commands.send(command).await;
    }

    /// Dials an address; resolves when connected (or at once when it names no peer id).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), String> {
        self.ask(|tx| Command::Dial(addr, tx))
            .await
            .unwrap_or_else(|| Err("the network is shut down".into()))
    }

    /// Publishes this node's capacity advert.
    pub async fn publish_advert(&self, advert: CapacityAdvert) {
        self.tell(Command::PublishAdvert(advert)).await;
    }

    /// Every known peer. Asking is *demand*: for a while, the network samples the
    /// DHT for more candidates until its view holds enough (see [`discovery`]).
    pub async fn peers(&self) -> Vec<PeerInfo> {
        self.ask(Command::Peers).await.unwrap_or_default()
    }

    /// How many peers have a fresh capacity advert in this node's view. Asking is
    /// demand, as [`NetClient::peers`] is: whoever counts candidates wants them.
    pub async fn advert_count(&self) -> usize {
        self.peers()
            .await
            .iter()
            .filter(|p| p.advert.is_some())
            .count()
    }

    /// The network's view of this node.
    pub async fn status(&self) -> Option<NetStatus> {
        self.ask(Command::Status).await
    }

    /// Sends a task request and waits for the reply.
    pub async fn send_task(
        &self,
        peer: PeerId,
        req: TaskRequest,
    ) -> Result<TaskReply, RequestError> {
        self.request(|tx| Command::SendTask(peer, req, tx)).await
    }

    /// Sends a batch of results and waits for the ack (paced by the upload cap).
    pub async fn send_results(
        &self,
        peer: PeerId,
        batch: ResultBatch,
    ) -> Result<ResultAck, RequestError> {
        let bytes: u64 = batch
            .results
            .iter()
            .map(|r| match &r.output {
                Some(crate::types::Payload::Inline(b)) => b.len() as u64 + 256,
                _ => 256,
            })
            .sum();
        self.bandwidth.upload(bytes).await;
        self.request(|tx| Command::SendResults(peer, batch, tx))
            .await
    }

    /// Asks a peer for one piece of a blob (paced by the download cap).
    pub async fn get_blob_piece(
        &self,
        peer: PeerId,
        req: BlobRequest,
    ) -> Result<BlobReply, RequestError> {
        let reply = self
            .request(|tx| Command::GetBlobPiece(peer, req, tx))
            .await;
        if let Ok(BlobReply::Piece { bytes, .. }) = &reply {
            self.bandwidth.download(bytes.len() as u64).await;
        }
        reply
    }

    /// Changes the volunteer's bandwidth caps.
    pub fn set_bandwidth(&self, caps: bandwidth::BandwidthCaps) {
        self.bandwidth.set(caps);
    }

    /// The bandwidth caps and the bytes counted under them.
    pub fn bandwidth(&self) -> bandwidth::BandwidthStatus {
        self.bandwidth.status()
    }

    /// Answers a task request.
    pub async fn respond_task(
        &self,
        channel: request_response::ResponseChannel<TaskReply>,
        reply: TaskReply,
    ) {
        self.tell(Command::RespondTask(channel, reply)).await;
    }

    /// Acknowledges a result batch.
    pub async fn respond_results(
        &self,
        channel: request_response::ResponseChannel<ResultAck>,
        ack: ResultAck,
    ) {
        self.tell(Command::RespondResults(channel, ack)).await;
    }

    /// Answers a blob request (paced by the upload cap).
    pub async fn respond_blob(
        &self,
        channel: request_response::ResponseChannel<BlobReply>,
        reply: BlobReply,
    ) {
        if let BlobReply::Piece { bytes, .. } = &reply {
            self.bandwidth.upload(bytes.len() as u64).await;
        }
        self.tell(Command::RespondBlob(channel, reply)).await;
    }

    /// Counts an offence against a peer (bad data it sent that the network could not
    /// see, e.g. a blob whose bytes do not match its hash).
    pub async fn penalize(&self, peer: PeerId, reason: impl Into<String>) {
        self.tell(Command::Penalize(peer, reason.into())).await;
    }
}

/// The running network: its client, the inbound requests, and its task.
#[derive(Debug)]
pub struct Network {
    /// The handle.
    pub client: NetClient,
    /// Inbound requests for the node.
    pub events: mpsc::Receiver<NetEvent>,
    /// The event loop's task; ends after `shutdown` fires.
    pub task: JoinHandle<()>,
}

/// Errors starting the network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The transport or behaviour could not be built.
    #[error("could not set up the network: {0}")]
    Setup(String),
    /// An address could not be listened on.
    #[error(
        "could not listen on {addr}: {reason} (is another node using it? pick another with --listen)"
    )]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
}

/// Builds the swarm, listens, and spawns the event loop. It stops when `shutdown`
/// fires. The event loop and the codec record into `metrics`.
pub fn start(
    keypair: &identity::Keypair,
    config: NetConfig,
    metrics: metrics::NetMetrics,
    shutdown: CancellationToken,
) -> Result<Network, NetError> {
    let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
    let behaviour_config = config.clone();
    let budget = held::Budget::new(held::MAX_HELD_BYTES);
    let behaviour_budget = budget.clone();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair.clone())
        .with_tokio()
        .with_quic()
        // TCP as libp2p-tcp, with a fall-back for dials from a taken port.
        .with_other_transport(|key| {
            let noise = libp2p::noise::Config::new(key)
                .map_err(|e| Box::<dyn std::error::Error + Send + Sync>::from(e.to_string()))?;
            Ok(
                transport::Tcp::new(libp2p::tcp::Config::default().nodelay(true))
                    .upgrade(libp2p::core::upgrade::Version::V1)
                    .authenticate(noise)
                    .multiplex(libp2p::yamux::Config::default()),
            )
        })
        .map_err(|e| setup(&e))?
        // `/dns4/…` and `/dns6/…` bootstrap addresses (the system resolver).
        .with_dns()
        .map_err(|e| setup(&e))?
        // Dialling and listening through relays (`/p2p-circuit`).
        .with_relay_client(libp2p::noise::Config::new, libp2p::yamux::Config::default)
        .map_err(|e| setup(&e))?
        .with_behaviour(|key, relay_client| {
            behaviour::Behaviour::new(
                key,
                &behaviour_config,
                &metrics,
                &behaviour_budget,
                relay_client,
            )
            .map_err(|e| Box::<dyn std::error::Error + Send + Sync>::from(e.to_string()))
        })
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_timeout))
        // A dial that gets no answer (a NAT drops what it did not ask for) fails
        // within 5 s: AutoNAT v2 servers give a dial-back 10 s in all, so a dropped
        // dial-back is reported as "unreachable" rather than never answered. The
        // same bound ends an inbound handshake that never finishes (a silent socket
        // holding a pending slot; see `guard.rs`).
        .with_connection_timeout(guard::HANDSHAKE_TIMEOUT)
        .build();
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
    }
    let local_peer_id = *swarm.local_peer_id();
    let (command_tx, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let (event_tx, event_rx) = mpsc::channel(EVENT_QUEUE);
    let event_loop = EventLoop::new(
        swarm, command_rx, event_tx, shutdown, config, metrics, budget,
    );
    let task = tokio::spawn(tracing::Instrument::in_current_span(event_loop.run()));
    Ok(Network {
        client: NetClient {
            commands: command_tx,
            local_peer_id,
            signer: Arc::new(keypair.clone()),
            bandwidth: Arc::default(),
        },
        events: event_rx,
        task,
    })
}
