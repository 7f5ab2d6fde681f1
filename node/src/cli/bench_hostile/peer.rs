//! The hostile peer of `bench hostile`: a raw libp2p swarm (TCP from the
//! attacker's own loopback address, `transport.rs`, + Noise + Yamux,
//! identify, and peergrid's four request-response protocols) that sends whatever
//! bytes an attack chooses, at the pace it chooses, and answers the target the way an
//! attack wants (serves blobs, answers capacity queries, hands task offers to the
//! attack, acknowledges results or not).
//!
//! One task owns the swarm; the attack holds a [`HostilePeer`] and sends it commands
//! (dial, request) with a `oneshot` for the answer, as the node's own `NetClient`
//! does. Dropping the handle stops the task and closes its connections.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt, StreamExt};
use libp2p::core::Transport as _;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, identity};
use tokio::sync::{mpsc, oneshot};

use crate::net::protocol::{
    self, Assignment, BLOB_PIECE_BYTES, BlobHash, BlobReply, BlobRequest, CapacityAdvert,
    CapacityReply, CapacityRequest, JobId, RejectReason, ResultAck, ResultBatch, TaskReply,
    TaskRequest,
};

/// Most bytes the hostile peer reads of one inbound message or answer.
const MAX_READ: u64 = 16 << 20;
/// How long the hostile peer's own requests may take: long, so that a stalled or
/// trickled request stays open until the target gives up on it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// Concurrent streams the hostile peer allows itself per protocol and connection.
const MAX_STREAMS: usize = 10_000;

/// One of peergrid's request-response protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Proto {
    Task,
    Result,
    Blob,
    Capacity,
}

impl Proto {
    pub(super) const ALL: [Proto; 4] = [Proto::Task, Proto::Result, Proto::Blob, Proto::Capacity];
}

/// How the bytes of a request are written.
#[derive(Debug, Clone, Copy)]
pub(super) enum Pace {
    /// All at once, then the stream is closed (a complete message).
    Whole,
    /// All at once, then the stream is held open without closing it.
    Stall,
    /// One byte every interval, never closing the stream.
    Trickle(Duration),
}

/// A request's bytes and how to write them. The bytes are shared, so a flood of
/// identical large messages costs the attacker one copy.
#[derive(Debug, Clone)]
pub(super) struct Msg {
    pub(super) bytes: Arc<Vec<u8>>,
    pub(super) pace: Pace,
}

impl Msg {
    /// A complete message.
    pub(super) fn whole(bytes: Vec<u8>) -> Self {
        Self {
            bytes: Arc::new(bytes),
            pace: Pace::Whole,
        }
    }

    /// A message encoded with postcard, complete.
    pub(super) fn encode<T: serde::Serialize>(value: &T) -> Self {
        Self::whole(postcard::to_allocvec(value).unwrap_or_default())
    }
}

#[derive(Debug, Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Msg;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Msg>
    where
        T: AsyncRead + Unpin + Send,
    {
        Ok(Msg::whole(read_all(io).await?))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        // A closed stream with nothing on it is the target refusing to answer.
        let bytes = read_all(io).await?;
        if bytes.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(bytes)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Msg,
    ) -> std::io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req.pace {
            Pace::Whole => {
                io.write_all(&req.bytes).await?;
                io.close().await
            }
            Pace::Stall => {
                io.write_all(&req.bytes).await?;
                io.flush().await?;
                futures::future::pending().await
            }
            Pace::Trickle(every) => {
                for byte in req.bytes.iter() {
                    io.write_all(&[*byte]).await?;
                    io.flush().await?;
                    tokio::time::sleep(every).await;
                }
                futures::future::pending().await
            }
        }
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&res).await?;
        io.close().await
    }
}

async fn read_all<T: AsyncRead + Unpin + Send>(io: &mut T) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(MAX_READ).read_to_end(&mut buf).await?;
    Ok(buf)
}

#[derive(NetworkBehaviour)]
struct Hostile {
    identify: identify::Behaviour,
    task: request_response::Behaviour<RawCodec>,
    result: request_response::Behaviour<RawCodec>,
    blob: request_response::Behaviour<RawCodec>,
    capacity: request_response::Behaviour<RawCodec>,
}

impl Hostile {
    fn rr(&mut self, proto: Proto) -> &mut request_response::Behaviour<RawCodec> {
        match proto {
            Proto::Task => &mut self.task,
            Proto::Result => &mut self.result,
            Proto::Blob => &mut self.blob,
            Proto::Capacity => &mut self.capacity,
        }
    }
}

fn rr(name: &'static str) -> request_response::Behaviour<RawCodec> {
    request_response::Behaviour::new(
        [(
            StreamProtocol::new(name),
            request_response::ProtocolSupport::Full,
        )],
        request_response::Config::default()
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_max_concurrent_streams(MAX_STREAMS),
    )
}

/// Blobs the hostile peer serves, by hash (modules and inputs of its offers).
pub(super) type Blobs = Arc<Mutex<HashMap<BlobHash, Arc<Vec<u8>>>>>;

/// Adds a blob to `blobs`; returns its hash.
pub(super) fn serve(blobs: &Blobs, bytes: Vec<u8>) -> BlobHash {
    let hash = BlobHash::of(&bytes);
    blobs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(hash, Arc::new(bytes));
    hash
}

/// A task offer the target sent the hostile peer (it plays a worker); the attack
/// answers through `reply`.
#[derive(Debug)]
pub(super) struct Offer {
    /// Who sent it.
    pub(super) from: PeerId,
    pub(super) job_id: JobId,
    pub(super) assignments: Vec<Assignment>,
    pub(super) reply: oneshot::Sender<TaskReply>,
}

/// How the hostile peer answers result batches (it plays a submitter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Acks {
    /// Acknowledge every result, as an honest submitter does.
    All,
    /// Answer with an empty acknowledgement: nothing was stored, keep it.
    Never,
}

/// What the hostile peer is and how it answers.
#[derive(Debug)]
pub(super) struct PeerSetup {
    /// The attacker's loopback address: it listens there and dials from there.
    pub(super) ip: Ipv4Addr,
    /// identify's protocol version.
    pub(super) identify_version: String,
    /// identify's agent string.
    pub(super) agent: String,
    /// Extra addresses identify tells the target about.
    pub(super) external: Vec<Multiaddr>,
    /// The advert it answers capacity queries with.
    pub(super) advert: Option<CapacityAdvert>,
    /// What it serves on the blob protocol.
    pub(super) blobs: Blobs,
    /// How it acknowledges results.
    pub(super) acks: Acks,
    /// Where task offers go (else they are refused).
    pub(super) offers: Option<mpsc::Sender<Offer>>,
}

impl PeerSetup {
    /// A peer of this protocol version listening on `ip`, serving nothing.
    pub(super) fn on(ip: Ipv4Addr) -> Self {
        Self {
            ip,
            identify_version: protocol::IDENTIFY_PROTOCOL.into(),
            agent: "peergrid/0.0.0".into(),
            external: Vec::new(),
            advert: None,
            blobs: Blobs::default(),
            acks: Acks::All,
            offers: None,
        }
    }
}

/// What the hostile peer saw, for the attack's report.
#[derive(Debug, Default)]
pub(super) struct PeerStats {
    /// Connections established in total.
    pub(super) connections: AtomicU64,
    /// Connections closed (by either side).
    pub(super) closed: AtomicU64,
    /// Results received (it played a submitter).
    pub(super) results: AtomicU64,
    /// Result bytes received.
    pub(super) result_bytes: AtomicU64,
    /// Blob bytes served.
    pub(super) blob_bytes: AtomicU64,
}

impl PeerStats {
    /// Connections open now.
    pub(super) fn open(&self) -> u64 {
        self.connections
            .load(Ordering::Relaxed)
            .saturating_sub(self.closed.load(Ordering::Relaxed))
    }
}

enum Command {
    Dial(Multiaddr, PeerId, oneshot::Sender<Result<(), String>>),
    Request(PeerId, Proto, Msg, Answer),
}

/// A running hostile peer; its swarm stops when this is dropped.
#[derive(Debug)]
pub(super) struct HostilePeer {
    pub(super) id: PeerId,
    pub(super) key: identity::Keypair,
    pub(super) stats: Arc<PeerStats>,
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HostilePeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HostilePeer {
    /// Builds the swarm (a fresh identity) and starts its task.
    pub(super) fn spawn(setup: PeerSetup) -> anyhow::Result<Self> {
        let key = identity::Keypair::generate_ed25519();
        let identify_version = setup.identify_version.clone();
        let agent = setup.agent.clone();
        let ip = setup.ip;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
            .with_tokio()
            .with_other_transport(|key| {
                let noise = libp2p::noise::Config::new(key)
                    .map_err(|e| Box::<dyn std::error::Error + Send + Sync>::from(e.to_string()))?;
                Ok(super::transport::BoundTcp::new(ip)
                    .upgrade(libp2p::core::upgrade::Version::V1)
                    .authenticate(noise)
                    .multiplex(libp2p::yamux::Config::default()))
            })
            .map_err(|e| anyhow::anyhow!("building the hostile peer's transport: {e}"))?
            .with_behaviour(|key| Hostile {
                identify: identify::Behaviour::new(
                    identify::Config::new(identify_version, key.public()).with_agent_version(agent),
                ),
                task: rr(protocol::TASK_PROTOCOL),
                result: rr(protocol::RESULT_PROTOCOL),
                blob: rr(protocol::BLOB_PROTOCOL),
                capacity: rr(protocol::CAPACITY_PROTOCOL),
            })
            .map_err(|e| anyhow::anyhow!("building the hostile peer: {e}"))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(REQUEST_TIMEOUT))
            .build();
        swarm.listen_on(format!("/ip4/{ip}/tcp/0").parse()?)?;
        for addr in &setup.external {
            swarm.add_external_address(addr.clone());
        }
        let id = *swarm.local_peer_id();
        let stats = Arc::new(PeerStats::default());
        let (commands, rx) = mpsc::channel(1024);
        let task = tokio::spawn(
            Driver {
                swarm,
                setup,
                stats: stats.clone(),
                pending: HashMap::new(),
                dials: HashMap::new(),
                replies: FuturesUnordered::new(),
                advert_seq: 0,
            }
            .run(rx),
        );
        Ok(Self {
            id,
            key,
            stats,
            commands,
            task,
        })
    }

    /// Dials the target; resolves when connected (at most 20 s).
    pub(super) async fn connect(&self, addr: &Multiaddr, peer: PeerId) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Dial(addr.clone(), peer, tx))
            .await
            .map_err(|_| "the hostile peer stopped".to_string())?;
        match tokio::time::timeout(Duration::from_secs(20), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the hostile peer stopped".into()),
            Err(_) => Err("no connection in 20 s".into()),
        }
    }

    /// Sends a request and waits for its answer (or its failure).
    pub(super) async fn request(
        &self,
        peer: PeerId,
        proto: Proto,
        msg: Msg,
    ) -> Result<Vec<u8>, String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Request(peer, proto, msg, tx))
            .await
            .map_err(|_| "the hostile peer stopped".to_string())?;
        rx.await
            .unwrap_or_else(|_| Err("the hostile peer stopped".into()))
    }
}

/// Where the answer to one of the hostile peer's requests goes.
type Answer = oneshot::Sender<Result<Vec<u8>, String>>;

type Reply = BoxFuture<'static, (ResponseChannel<Vec<u8>>, Option<Vec<u8>>)>;

/// The task that owns the hostile swarm.
struct Driver {
    swarm: Swarm<Hostile>,
    setup: PeerSetup,
    stats: Arc<PeerStats>,
    /// Requests in flight; ids are per protocol.
    pending: HashMap<(Proto, OutboundRequestId), Answer>,
    dials: HashMap<PeerId, Vec<oneshot::Sender<Result<(), String>>>>,
    /// Task offers handed to the attack, waiting for its answer.
    replies: FuturesUnordered<Reply>,
    advert_seq: u64,
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            tokio::select! {
                command = rx.recv() => match command {
                    Some(command) => self.command(command),
                    None => return,
                },
                Some((channel, reply)) = self.replies.next(), if !self.replies.is_empty() => {
                    if let Some(bytes) = reply {
                        let _ = self.swarm.behaviour_mut().task.send_response(channel, bytes);
                    }
                }
                event = self.swarm.select_next_some() => self.event(event),
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Dial(addr, peer, tx) => {
                if self.swarm.is_connected(&peer) {
                    let _ = tx.send(Ok(()));
                    return;
                }
                match self.swarm.dial(addr) {
                    Ok(()) => self.dials.entry(peer).or_default().push(tx),
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            }
            Command::Request(peer, proto, msg, tx) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .rr(proto)
                    .send_request(&peer, msg);
                self.pending.insert((proto, id), tx);
            }
        }
    }

    fn event(&mut self, event: SwarmEvent<HostileEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                self.stats.connections.fetch_add(1, Ordering::Relaxed);
                for tx in self.dials.remove(&peer_id).unwrap_or_default() {
                    let _ = tx.send(Ok(()));
                }
            }
            SwarmEvent::ConnectionClosed { .. } => {
                self.stats.closed.fetch_add(1, Ordering::Relaxed);
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                for tx in self.dials.remove(&peer).unwrap_or_default() {
                    let _ = tx.send(Err(error.to_string()));
                }
            }
            SwarmEvent::Behaviour(HostileEvent::Task(e)) => self.rr_event(Proto::Task, e),
            SwarmEvent::Behaviour(HostileEvent::Result(e)) => self.rr_event(Proto::Result, e),
            SwarmEvent::Behaviour(HostileEvent::Blob(e)) => self.rr_event(Proto::Blob, e),
            SwarmEvent::Behaviour(HostileEvent::Capacity(e)) => self.rr_event(Proto::Capacity, e),
            _ => {}
        }
    }

    fn rr_event(&mut self, proto: Proto, event: request_response::Event<Msg, Vec<u8>>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(tx) = self.pending.remove(&(proto, request_id)) {
                    let _ = tx.send(Ok(response));
                }
            }
            Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(tx) = self.pending.remove(&(proto, request_id)) {
                    let _ = tx.send(Err(error.to_string()));
                }
            }
            Event::Message {
                message:
                    Message::Request {
                        request, channel, ..
                    },
                peer,
                ..
            } => self.answer(peer, proto, &request.bytes, channel),
            _ => {}
        }
    }

    /// Answers a request from the target, as the attack's role wants.
    fn answer(
        &mut self,
        from: PeerId,
        proto: Proto,
        bytes: &[u8],
        channel: ResponseChannel<Vec<u8>>,
    ) {
        let reply = match proto {
            Proto::Blob => postcard::from_bytes::<BlobRequest>(bytes)
                .ok()
                .map(|r| self.blob_piece(r)),
            Proto::Capacity => match postcard::from_bytes::<CapacityRequest>(bytes) {
                Ok(CapacityRequest::Query { .. }) => {
                    self.advert_seq += 1;
                    let advert = self.setup.advert.clone().map(|mut a| {
                        a.seq = self.advert_seq;
                        a
                    });
                    Some(CapacityReply::Advert(advert))
                }
                Ok(CapacityRequest::Update(_)) => Some(CapacityReply::Ack),
                Err(_) => None,
            }
            .map(|r| postcard::to_allocvec(&r).unwrap_or_default()),
            Proto::Result => postcard::from_bytes::<ResultBatch>(bytes).ok().map(|b| {
                self.stats
                    .results
                    .fetch_add(b.results.len() as u64, Ordering::Relaxed);
                self.stats
                    .result_bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                let stored = match self.setup.acks {
                    Acks::All => b
                        .results
                        .iter()
                        .map(|r| (r.job_id, r.chunk, r.attempt))
                        .collect(),
                    Acks::Never => Vec::new(),
                };
                postcard::to_allocvec(&ResultAck { stored }).unwrap_or_default()
            }),
            Proto::Task => match postcard::from_bytes::<TaskRequest>(bytes) {
                Ok(TaskRequest::Offer {
                    job_id,
                    assignments,
                }) => {
                    let refusal = TaskReply::Offer {
                        accepted: Vec::new(),
                        rejected: assignments
                            .iter()
                            .map(|a| (a.chunk, a.attempt, RejectReason::NotAccepting))
                            .collect(),
                    };
                    if let Some(offers) = &self.setup.offers {
                        let (tx, rx) = oneshot::channel();
                        let offer = Offer {
                            from,
                            job_id,
                            assignments,
                            reply: tx,
                        };
                        if offers.try_send(offer).is_ok() {
                            self.replies.push(
                                async move {
                                    let reply = rx.await.unwrap_or(refusal);
                                    (
                                        channel,
                                        Some(postcard::to_allocvec(&reply).unwrap_or_default()),
                                    )
                                }
                                .boxed(),
                            );
                            return;
                        }
                    }
                    Some(postcard::to_allocvec(&refusal).unwrap_or_default())
                }
                Ok(TaskRequest::Cancel { .. }) => {
                    Some(postcard::to_allocvec(&TaskReply::Cancelled).unwrap_or_default())
                }
                Err(_) => None,
            },
        };
        if let Some(bytes) = reply {
            let _ = self
                .swarm
                .behaviour_mut()
                .rr(proto)
                .send_response(channel, bytes);
        }
    }

    fn blob_piece(&self, r: BlobRequest) -> Vec<u8> {
        let blob = self
            .setup
            .blobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&r.hash)
            .cloned();
        let reply = match blob {
            Some(bytes) => {
                let start = (r.offset as usize).min(bytes.len());
                let len = (r.len.min(BLOB_PIECE_BYTES) as usize).min(bytes.len() - start);
                self.stats
                    .blob_bytes
                    .fetch_add(len as u64, Ordering::Relaxed);
                BlobReply::Piece {
                    total: bytes.len() as u64,
                    offset: start as u64,
                    bytes: bytes[start..start + len].to_vec(),
                }
            }
            None => BlobReply::NotFound,
        };
        postcard::to_allocvec(&reply).unwrap_or_default()
    }
}
