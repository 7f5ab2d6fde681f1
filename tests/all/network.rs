//! The peer network with real nodes on loopback: discovery and adverts, blob
//! exchange, identity across restarts, and hostile or foreign peers.

use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, request_response};
use peergrid_node::net::fetch::fetch_blob;
use peergrid_node::net::protocol::{
    self, BlobHash, BlobRequest, CapacityAdvert, CapacityReply, CapacityRequest,
};
use peergrid_tests::{TestNet, wait_for};

/// Deterministic pseudo-random bytes.
fn bytes(len: usize, seed: &str) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

async fn adverts_seen(net: &TestNet, i: usize) -> usize {
    net.node(i).net().advert_count().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_each_see_every_other_advert() {
    let started = Instant::now();
    let net = TestNet::spawn(20).await;
    let spawned = started.elapsed();
    wait_for(
        "every node to see 19 adverts",
        Duration::from_secs(90),
        || async {
            for i in 0..20 {
                if adverts_seen(&net, i).await < 19 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    println!(
        "20 nodes: spawned in {:.2} s, full advert view {:.2} s after start",
        spawned.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_peer_id_and_the_data_dir_is_exclusive() {
    let mut net = TestNet::spawn(1).await;
    let id = net.node(0).peer_id();
    // A second node on the same data dir is refused while the first runs.
    let config = net.node(0).state().config().clone();
    let err = peergrid_node::Node::spawn(config).await.unwrap_err();
    assert!(err.to_string().contains("already running"), "{err}");
    net.restart(0).await.expect("restarts");
    assert_eq!(net.node(0).peer_id(), id);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mib_blob_moves_between_two_nodes_verified() {
    let net = TestNet::spawn(2).await;
    let data = bytes(50 * 1024 * 1024, "fifty");
    let hash = net.node(0).state().blobs().put(&data).expect("stored");
    let holder = net.node(0).peer_id();
    wait_for("the nodes to connect", Duration::from_secs(20), || async {
        net.node(1)
            .net()
            .peers()
            .await
            .iter()
            .any(|p| p.connected && p.peer_id == holder.to_string())
            .then_some(())
    })
    .await;
    let started = Instant::now();
    fetch_blob(
        net.node(1).net(),
        net.node(1).state().blobs(),
        hash,
        &[holder],
    )
    .await
    .expect("fetched");
    let secs = started.elapsed().as_secs_f64();
    let got = net
        .node(1)
        .state()
        .blobs()
        .get(&hash)
        .expect("read")
        .expect("present");
    assert!(got == data, "the fetched blob differs");
    println!(
        "50 MiB blob: {secs:.2} s, {:.0} MiB/s on loopback",
        50.0 / secs
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_that_does_not_match_its_hash_is_refused_and_fetched_elsewhere() {
    let net = TestNet::spawn(3).await;
    let data = bytes(3 * 1024 * 1024 + 17, "honest");
    let hash = net.node(2).state().blobs().put(&data).expect("stored");
    // Node 0 "holds" the same hash with other bytes of the same length.
    let liar_path = net.node(0).state().blobs().path(&hash);
    std::fs::create_dir_all(liar_path.parent().expect("parent")).expect("dir");
    std::fs::write(&liar_path, bytes(data.len(), "liar")).expect("write");
    let (liar, honest) = (net.node(0).peer_id(), net.node(2).peer_id());
    // Node 1 knows node 0 (its bootstrap); introduce node 2 rather than wait for the
    // DHT to: this test is about the fetch, not discovery.
    for addr in net.node(2).listen_addrs().await {
        net.node(1).net().dial(addr).await.expect("dial node 2");
    }
    wait_for(
        "node 1 to connect to both holders",
        Duration::from_secs(20),
        || async {
            let peers = net.node(1).net().peers().await;
            let connected = |p: PeerId| {
                peers
                    .iter()
                    .any(|i| i.connected && i.peer_id == p.to_string())
            };
            (connected(liar) && connected(honest)).then_some(())
        },
    )
    .await;
    fetch_blob(
        net.node(1).net(),
        net.node(1).state().blobs(),
        hash,
        &[liar, honest],
    )
    .await
    .expect("fetched from the honest holder");
    assert!(
        net.node(1)
            .state()
            .blobs()
            .get(&hash)
            .expect("read")
            .expect("present")
            == data
    );
    let peers = net.node(1).net().peers().await;
    let liar_info = peers
        .iter()
        .find(|p| p.peer_id == liar.to_string())
        .expect("liar known");
    assert!(liar_info.offences >= 1, "the liar was penalised");

    // Nobody has a blob: a clear error naming what was tried.
    let missing = BlobHash::of(b"nobody has this");
    let err = fetch_blob(
        net.node(1).net(),
        net.node(1).state().blobs(),
        missing,
        &[honest],
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("does not hold it"), "{err}");
    net.shutdown().await;
}

// ---- a raw libp2p peer that speaks peergrid's protocols with arbitrary bytes ----

#[derive(Debug, Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        read_all(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        // A closed stream with nothing on it is the peer refusing to answer.
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
        req: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        write_all(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        write_all(io, &res).await
    }
}

async fn read_all<T: futures::AsyncRead + Unpin + Send>(io: &mut T) -> std::io::Result<Vec<u8>> {
    use futures::AsyncReadExt;
    let mut buf = Vec::new();
    io.take(4 << 20).read_to_end(&mut buf).await?;
    Ok(buf)
}

async fn write_all<T: futures::AsyncWrite + Unpin + Send>(
    io: &mut T,
    bytes: &[u8],
) -> std::io::Result<()> {
    use futures::AsyncWriteExt;
    io.write_all(bytes).await?;
    io.close().await
}

#[derive(NetworkBehaviour)]
struct Raw {
    identify: identify::Behaviour,
    task: request_response::Behaviour<RawCodec>,
    result: request_response::Behaviour<RawCodec>,
    blob: request_response::Behaviour<RawCodec>,
    /// Outbound only: the node's capacity queries to a raw peer fail as
    /// unsupported (no offence), so nothing it sends counts as a subscription's.
    capacity: request_response::Behaviour<RawCodec>,
}

fn raw_rr(protocol: &'static str) -> request_response::Behaviour<RawCodec> {
    request_response::Behaviour::new(
        [(
            StreamProtocol::new(protocol),
            request_response::ProtocolSupport::Full,
        )],
        request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
    )
}

fn raw_peer(identify_version: &str) -> Swarm<Raw> {
    let version = identify_version.to_string();
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|key| Raw {
            identify: identify::Behaviour::new(identify::Config::new(version, key.public())),
            task: raw_rr(protocol::TASK_PROTOCOL),
            result: raw_rr(protocol::RESULT_PROTOCOL),
            blob: raw_rr(protocol::BLOB_PROTOCOL),
            capacity: request_response::Behaviour::new(
                [(
                    StreamProtocol::new(protocol::CAPACITY_PROTOCOL),
                    request_response::ProtocolSupport::Outbound,
                )],
                request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
            ),
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

#[derive(Clone, Copy, Debug)]
enum Proto {
    Task,
    Result,
    Blob,
    Capacity,
}

/// Sends raw bytes on one protocol; `Ok(reply)` or `Err(what failed)`.
async fn raw_request(
    swarm: &mut Swarm<Raw>,
    peer: PeerId,
    proto: Proto,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let behaviour = swarm.behaviour_mut();
    let id = match proto {
        Proto::Task => behaviour.task.send_request(&peer, bytes),
        Proto::Result => behaviour.result.send_request(&peer, bytes),
        Proto::Blob => behaviour.blob.send_request(&peer, bytes),
        Proto::Capacity => behaviour.capacity.send_request(&peer, bytes),
    };
    let wait = async {
        loop {
            let event = match swarm.select_next_some().await {
                SwarmEvent::Behaviour(RawEvent::Task(e))
                | SwarmEvent::Behaviour(RawEvent::Result(e))
                | SwarmEvent::Behaviour(RawEvent::Blob(e))
                | SwarmEvent::Behaviour(RawEvent::Capacity(e)) => e,
                _ => continue,
            };
            match event {
                request_response::Event::Message {
                    message:
                        request_response::Message::Response {
                            request_id,
                            response,
                        },
                    ..
                } if request_id == id => return Ok(response),
                request_response::Event::OutboundFailure {
                    request_id, error, ..
                } if request_id == id => {
                    return Err(error.to_string());
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), wait)
        .await
        .unwrap_or_else(|_| Err("no answer".into()))
}

/// Drives the raw swarm until it is connected to `peer`.
async fn raw_connect(swarm: &mut Swarm<Raw>, addr: Multiaddr, peer: PeerId) {
    swarm.dial(addr).expect("dial");
    let wait = async {
        loop {
            if let SwarmEvent::ConnectionEstablished { peer_id, .. } =
                swarm.select_next_some().await
                && peer_id == peer
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), wait)
        .await
        .expect("raw peer connects");
}

/// Drives the raw swarm for a while (so gossip and identify can flow).
async fn raw_drive(swarm: &mut Swarm<Raw>, for_: Duration) {
    let _ = tokio::time::timeout(for_, async {
        loop {
            swarm.select_next_some().await;
        }
    })
    .await;
}

async fn offences_of(net: &TestNet, i: usize, peer: PeerId) -> u32 {
    net.node(i)
        .net()
        .peers()
        .await
        .iter()
        .find(|p| p.peer_id == peer.to_string())
        .map_or(0, |p| p.offences)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbled_truncated_and_oversized_messages_are_refused_counted_and_punished() {
    let net = TestNet::spawn(2).await;
    let target = net.node(0).peer_id();
    let addr = net.node(0).listen_addrs().await[0].clone();
    let data = bytes(100_000, "still served");
    let hash = net.node(0).state().blobs().put(&data).expect("stored");

    let mut raw = raw_peer(protocol::IDENTIFY_PROTOCOL);
    let raw_id = *raw.local_peer_id();
    raw_connect(&mut raw, addr, target).await;

    // A well-formed request is answered.
    let good = postcard::to_allocvec(&BlobRequest {
        hash,
        offset: 0,
        len: 10,
    })
    .expect("encodes");
    let reply = raw_request(&mut raw, target, Proto::Blob, good.clone())
        .await
        .expect("answered");
    assert!(!reply.is_empty());
    assert_eq!(offences_of(&net, 0, raw_id).await, 0);

    // A stream closed empty is a requester that gave up (its timeout fired after the
    // stream opened, as on a loaded machine), not garbage: no offence, and the peer
    // is still served.
    for _ in 0..6 {
        let empty = raw_request(&mut raw, target, Proto::Capacity, Vec::new()).await;
        assert!(
            empty.is_err(),
            "an empty request is not answered: {empty:?}"
        );
    }
    let reply = raw_request(&mut raw, target, Proto::Blob, good.clone())
        .await
        .expect("still answered");
    assert!(!reply.is_empty());
    assert_eq!(offences_of(&net, 0, raw_id).await, 0);

    // Garbage on each protocol, a truncated message, an oversized one.
    let attacks: Vec<(Proto, Vec<u8>)> = vec![
        (Proto::Blob, vec![0xff; 7]),
        (Proto::Blob, good[..good.len() / 2].to_vec()),
        (Proto::Task, vec![0x17; 64]),
        (
            Proto::Result,
            vec![0x09, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ),
        (Proto::Blob, vec![0u8; protocol::MAX_SMALL_BYTES + 100]),
    ];
    for (i, (proto, bytes)) in attacks.into_iter().enumerate() {
        let result = raw_request(&mut raw, target, proto, bytes).await;
        assert!(
            result.is_err(),
            "attack {i} on {proto:?} must not be answered: {result:?}"
        );
        wait_for(
            "the offence to be counted",
            Duration::from_secs(10),
            || async { (offences_of(&net, 0, raw_id).await as usize > i).then_some(()) },
        )
        .await;
    }
    // Five offences: banned, and disconnected.
    wait_for(
        "the raw peer to be banned",
        Duration::from_secs(10),
        || async {
            let status = net.node(0).net().status().await?;
            (status.banned_peers == 1).then_some(())
        },
    )
    .await;
    let reconnect = raw_request(&mut raw, target, Proto::Blob, good).await;
    assert!(
        reconnect.is_err(),
        "a banned peer is not served: {reconnect:?}"
    );

    // The node still serves well-behaved peers.
    fetch_blob(
        net.node(1).net(),
        net.node(1).state().blobs(),
        hash,
        &[target],
    )
    .await
    .expect("an honest peer is still served");
    net.shutdown().await;
}

fn advert(version: u16) -> CapacityAdvert {
    CapacityAdvert {
        version,
        seq: 1,
        slots_total: 4,
        slots_free: 4,
        cores: 4,
        memory_limit: 1 << 30,
        fuel_per_sec: 1,
        features: vec![],
    }
}

fn update(advert: &CapacityAdvert) -> Vec<u8> {
    postcard::to_allocvec(&CapacityRequest::Update(advert.clone())).expect("encodes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_version_is_ignored_politely_and_garbage_adverts_are_punished() {
    let net = TestNet::spawn(1).await;
    let target = net.node(0).peer_id();
    let addr = net.node(0).listen_addrs().await[0].clone();
    let known = |peers: Vec<peergrid_node::net::PeerInfo>, id: PeerId| {
        peers.into_iter().find(|p| p.peer_id == id.to_string())
    };

    // A peer of protocol version 9: identify says so, its adverts say so.
    let mut future = raw_peer("/peergrid/9.0.0");
    let future_id = *future.local_peer_id();
    raw_connect(&mut future, addr.clone(), target).await;
    raw_drive(&mut future, Duration::from_millis(300)).await;
    let reply = raw_request(&mut future, target, Proto::Capacity, update(&advert(9))).await;
    assert!(reply.is_ok(), "an update is acknowledged: {reply:?}");
    let info = wait_for("identify", Duration::from_secs(10), || async {
        known(net.node(0).net().peers().await, future_id).filter(|p| p.foreign_version.is_some())
    })
    .await;
    assert_eq!(info.foreign_version.as_deref(), Some("/peergrid/9.0.0"));
    assert!(info.advert.is_none(), "its adverts are ignored");
    assert_eq!(info.offences, 0, "speaking another version is no offence");

    // A peer of our version that volunteers an advert nobody asked for (it never
    // answered a query) does not enter the view: what a peer claims unasked never
    // steers placement.
    let mut pusher = raw_peer(protocol::IDENTIFY_PROTOCOL);
    let pusher_id = *pusher.local_peer_id();
    raw_connect(&mut pusher, addr.clone(), target).await;
    for seq in 1..4 {
        let mut a = advert(protocol::PROTOCOL_VERSION);
        a.seq = seq;
        let reply = raw_request(&mut pusher, target, Proto::Capacity, update(&a))
            .await
            .expect("acknowledged");
        assert_eq!(
            postcard::from_bytes::<CapacityReply>(&reply).expect("decodes"),
            CapacityReply::Ack
        );
    }
    let info = known(net.node(0).net().peers().await, pusher_id).expect("known");
    assert!(info.advert.is_none(), "an unsolicited advert is ignored");
    assert_eq!(info.offences, 0);

    // A query is answered with the node's own advert.
    let reply = raw_request(
        &mut pusher,
        target,
        Proto::Capacity,
        postcard::to_allocvec(&CapacityRequest::Query { subscribe: true }).expect("encodes"),
    )
    .await
    .expect("answered");
    match postcard::from_bytes::<CapacityReply>(&reply).expect("decodes") {
        CapacityReply::Advert(Some(a)) => assert_eq!(a.version, protocol::PROTOCOL_VERSION),
        other => panic!("expected the node's advert, got {other:?}"),
    }

    // A peer of our version sending garbage on the capacity protocol is penalised.
    let mut garbler = raw_peer(protocol::IDENTIFY_PROTOCOL);
    let garbler_id = *garbler.local_peer_id();
    raw_connect(&mut garbler, addr, target).await;
    // An update variant, then a sequence number whose varint never ends.
    let mut garbage = vec![1u8];
    garbage.extend_from_slice(&(protocol::PROTOCOL_VERSION as u8).to_le_bytes());
    garbage.extend_from_slice(&[0xff; 10]);
    garbage.push(0x7f);
    let reply = raw_request(&mut garbler, target, Proto::Capacity, garbage).await;
    assert!(reply.is_err(), "garbage is not answered: {reply:?}");
    wait_for(
        "the garbage advert to be punished",
        Duration::from_secs(10),
        || async { (offences_of(&net, 0, garbler_id).await > 0).then_some(()) },
    )
    .await;
    net.shutdown().await;
}

/// Dials `addr` from a raw swarm: true when the node took the connection (it sent
/// its identify info: a connection the node refuses after the handshake is
/// established on the dialler's side first, then closed), false when it is refused.
async fn raw_try_connect(swarm: &mut Swarm<Raw>, addr: Multiaddr) -> bool {
    swarm.dial(addr).expect("dial");
    let wait = async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(RawEvent::Identify(identify::Event::Received { .. })) => {
                    return true;
                }
                SwarmEvent::OutgoingConnectionError { .. }
                | SwarmEvent::ConnectionClosed { .. } => return false,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), wait)
        .await
        .unwrap_or(false)
}

/// One node whose guard treats loopback as it would a stranger's address (loopback
/// is exempt by default): the node, its peer id and its listen address.
async fn guarded_node() -> (TestNet, PeerId, Multiaddr) {
    let net = TestNet::spawn_with(1, |_, config| {
        config.net.guard.exempt_loopback = false;
    })
    .await;
    let target = net.node(0).peer_id();
    let addr = net.node(0).listen_addrs().await[0].clone();
    (net, target, addr)
}

/// Sends node 0 a garbled task request from `raw`, and waits until it has counted
/// more than `before` offences.
async fn offend(net: &TestNet, raw: &mut Swarm<Raw>, target: PeerId, before: usize) {
    let _ = raw_request(raw, target, Proto::Task, vec![0x17; 64]).await;
    wait_for(
        "the offence to be counted",
        Duration::from_secs(10),
        || async {
            let status = net.node(0).net().status().await?;
            (status.offences as usize > before).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_identities_from_one_address_are_limited_and_their_offences_ban_the_address() {
    let (net, target, addr) = guarded_node().await;
    let per_ip = peergrid_node::net::guard::GuardConfig::default().per_ip as usize;
    let mut raws = Vec::new();
    for _ in 0..per_ip + 3 {
        let mut raw = raw_peer(protocol::IDENTIFY_PROTOCOL);
        if raw_try_connect(&mut raw, addr.clone()).await {
            raws.push(raw);
        }
    }
    assert_eq!(
        raws.len(),
        per_ip,
        "one address gets --max-connections-per-ip"
    );

    // Offences under several identities add up to a ban of the address.
    let threshold = 10;
    for i in 0..threshold {
        let raw = &mut raws[i % per_ip];
        offend(&net, raw, target, i).await;
    }
    let status = wait_for(
        "the address to be banned",
        Duration::from_secs(10),
        || async {
            let status = net.node(0).net().status().await?;
            (status.banned_addresses == 1).then_some(status)
        },
    )
    .await;
    assert_eq!(
        status.banned_peers, per_ip,
        "every identity on it is banned"
    );
    // A fresh identity from the banned address is refused at connection.
    let mut fresh = raw_peer(protocol::IDENTIFY_PROTOCOL);
    assert!(!raw_try_connect(&mut fresh, addr).await);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_peer_that_keeps_reconnecting_gets_its_address_banned() {
    let (net, target, addr) = guarded_node().await;
    let mut raw = raw_peer(protocol::IDENTIFY_PROTOCOL);
    assert!(raw_try_connect(&mut raw, addr.clone()).await);
    // Garbage until its identity is banned (5 offences, 5 against its address).
    for i in 0..5 {
        offend(&net, &mut raw, target, i).await;
    }
    wait_for("the peer's ban", Duration::from_secs(10), || async {
        let status = net.node(0).net().status().await?;
        (status.banned_peers == 1).then_some(())
    })
    .await;
    // Each reconnection is a full handshake before the block list denies it: the
    // banned identity dialling again and again gets its address banned, and the
    // address is then refused before any handshake, under any identity.
    let mut tries = 0;
    loop {
        assert!(!raw_try_connect(&mut raw, addr.clone()).await, "banned");
        tries += 1;
        let status = net.node(0).net().status().await.expect("status");
        if status.banned_addresses == 1 {
            break;
        }
        assert!(
            tries < 200,
            "{tries} reconnections of a banned peer, its address not banned"
        );
    }
    let mut fresh = raw_peer(protocol::IDENTIFY_PROTOCOL);
    assert!(!raw_try_connect(&mut fresh, addr).await);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_cancels_from_one_peer_is_cut_to_its_rate_and_others_are_still_answered() {
    use peergrid_node::net::protocol::{JobId, TaskReply, TaskRequest};
    let net = TestNet::spawn(3).await;
    let worker = net.node(0).peer_id();
    let cancel = || TaskRequest::Cancel {
        job_id: JobId([7; 16]),
        chunks: Vec::new(),
    };
    // One at a time, as fast as the worker answers: its burst, then refusals.
    let flooder = net.node(1).net();
    let mut answered = 0;
    for _ in 0..400 {
        if let Ok(TaskReply::Cancelled) = flooder.send_task(worker, cancel()).await {
            answered += 1;
        }
    }
    assert!(
        (64..400).contains(&answered),
        "{answered} of 400 cancels answered: the burst (64) and the rate"
    );
    // Another peer's requests are not held up by the flooder's bucket.
    let reply = net.node(2).net().send_task(worker, cancel()).await;
    assert_eq!(reply, Ok(TaskReply::Cancelled));
    // 256 refusals are an offence.
    wait_for(
        "the flood to count as an offence",
        Duration::from_secs(10),
        || async { (offences_of(&net, 0, net.node(1).peer_id()).await > 0).then_some(()) },
    )
    .await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_connecting_in_cannot_take_the_slots_kept_for_the_nodes_own_dials() {
    // 8 connections in all, 6 of them inbound: 2 are kept for this node's dials.
    let net = TestNet::spawn_with(1, |_, config| {
        config.net.max_connections = 8;
        config.net.max_inbound = 6;
    })
    .await;
    let addr = net.node(0).listen_addrs().await[0].clone();
    let mut strangers = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        let mut raw = raw_peer(protocol::IDENTIFY_PROTOCOL);
        if raw_try_connect(&mut raw, addr.clone()).await {
            strangers.push(raw);
        } else {
            refused += 1;
        }
    }
    assert_eq!(
        (strangers.len(), refused),
        (6, 4),
        "inbound stops at max-inbound"
    );
    // The node can still dial out: a peer it chooses is reached.
    let mut chosen = raw_peer(protocol::IDENTIFY_PROTOCOL);
    chosen
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
        .expect("listens");
    let listen = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = chosen.select_next_some().await {
            break address;
        }
    };
    let target = listen.with(libp2p::multiaddr::Protocol::P2p(*chosen.local_peer_id()));
    let client = net.node(0).net().clone();
    let dial = tokio::spawn(async move { client.dial(target).await });
    let dialled = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            tokio::select! {
                _ = chosen.select_next_some() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    if dial.is_finished() {
                        return dial.await.expect("dial task");
                    }
                }
            }
        }
    })
    .await
    .expect("the dial ends");
    assert_eq!(dialled, Ok(()), "an outbound slot was free");
    drop(strangers);
    net.shutdown().await;
}
