//! The libp2p behaviour: which protocols a peergrid peer speaks, configured once.

use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, allow_block_list, autonat, connection_limits, dcutr, identify, identity, kad,
    mdns, ping, relay, request_response, upnp,
};

use super::NetConfig;
use super::codec::PostcardCodec;
use super::metrics::NetMetrics;
use super::protocol::*;

/// How often libp2p's own (per-bucket) bootstrap of the routing table runs.
const KAD_BOOTSTRAP_INTERVAL: Duration = Duration::from_secs(3600);
/// How often each connection is pinged.
const PING_INTERVAL: Duration = Duration::from_secs(60);
/// A capacity query or update that takes longer than this fails (a peer that slow
/// is no candidate anyway).
const CAPACITY_TIMEOUT: Duration = Duration::from_secs(10);

/// Every protocol a peer speaks. Owned by the event loop's `Swarm` and nothing else.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) task: request_response::Behaviour<PostcardCodec<TaskRequest, TaskReply>>,
    pub(crate) result: request_response::Behaviour<PostcardCodec<ResultBatch, ResultAck>>,
    pub(crate) blob: request_response::Behaviour<PostcardCodec<BlobRequest, BlobReply>>,
    pub(crate) capacity: request_response::Behaviour<PostcardCodec<CapacityRequest, CapacityReply>>,
    /// Behind NAT (see `relay.rs`, `reachability.rs`): the client side of circuit
    /// relay v2 (reserve on a relay, dial through one), everywhere.
    pub(crate) relay_client: relay::client::Behaviour,
    /// The relay server: built unless `--no-relay`; the event loop enables it only
    /// while this node is public.
    pub(crate) relay: Toggle<relay::Behaviour>,
    /// Hole punching over relayed connections.
    pub(crate) dcutr: dcutr::Behaviour,
    /// AutoNAT v2 client: asks servers to dial this node's addresses back.
    pub(crate) autonat: autonat::v2::client::Behaviour,
    /// AutoNAT v2 server: answers only while this node is public (the event loop
    /// opens the gate with the reachability verdict).
    pub(crate) autonat_server: super::gate::Gated<autonat::v2::server::Behaviour>,
    /// Port mapping on the home router (`--no-upnp` turns it off).
    pub(crate) upnp: Toggle<upnp::tokio::Behaviour>,
}

fn request_response<Req, Resp>(
    protocol: &'static str,
    max_request: usize,
    max_response: usize,
    timeout: Duration,
    metrics: &NetMetrics,
) -> request_response::Behaviour<PostcardCodec<Req, Resp>>
where
    Req: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    Resp: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    request_response::Behaviour::with_codec(
        PostcardCodec::new(max_request, max_response).with_metrics(metrics.clone()),
        [(
            StreamProtocol::new(protocol),
            request_response::ProtocolSupport::Full,
        )],
        request_response::Config::default()
            .with_request_timeout(timeout)
            .with_max_concurrent_streams(64),
    )
}

impl Behaviour {
    pub(crate) fn new(
        key: &identity::Keypair,
        config: &NetConfig,
        metrics: &NetMetrics,
        relay_client: relay::client::Behaviour,
    ) -> anyhow::Result<Self> {
        let peer_id = key.public().to_peer_id();

        // Per peer: one connection, a relayed one beside it while hole punching
        // upgrades it to a direct one, and one spare for a simultaneous dial.
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(config.max_connections))
            .with_max_established_per_peer(Some(3))
            .with_max_pending_incoming(Some(64))
            .with_max_pending_outgoing(Some(64));

        let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
        // A walk's peers are used when it ends: a slow peer must not hold it long.
        kad_config.set_query_timeout(Duration::from_secs(10));
        // The event loop refreshes the table itself with a fixed number of lookups
        // every `random_walk_interval`; libp2p's bootstrap (one lookup per bucket: log
        // N of them) runs hourly, and when the routing table is nearly empty.
        kad_config.set_periodic_bootstrap_interval(Some(KAD_BOOTSTRAP_INTERVAL));
        let mut kad =
            kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
        // Peers on private networks or loopback never get an external address
        // confirmed (no AutoNAT yet), so answer DHT queries regardless.
        kad.set_mode(Some(kad::Mode::Server));

        let mdns = if config.mdns {
            Some(mdns::tokio::Behaviour::new(
                mdns::Config::default(),
                peer_id,
            )?)
        } else {
            None
        };

        Ok(Self {
            limits: connection_limits::Behaviour::new(limits),
            blocked: allow_block_list::Behaviour::default(),
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                    .with_agent_version(format!("peergrid/{}", env!("CARGO_PKG_VERSION")))
                    // A relay reservation adds a circuit address after the first
                    // exchange: push it, so peers (and the DHT) learn it.
                    .with_push_listen_addr_updates(true),
            ),
            // A ping per connection per minute: the round trip `peers` shows, at a
            // cost bounded by the connection limit, not by the grid.
            ping: ping::Behaviour::new(ping::Config::new().with_interval(PING_INTERVAL)),
            kad,
            mdns: mdns.into(),
            task: request_response(
                TASK_PROTOCOL,
                MAX_TASK_BYTES,
                MAX_SMALL_BYTES,
                config.request_timeout,
                metrics,
            ),
            result: request_response(
                RESULT_PROTOCOL,
                MAX_RESULT_BYTES,
                MAX_SMALL_BYTES,
                config.request_timeout,
                metrics,
            ),
            blob: request_response(
                BLOB_PROTOCOL,
                MAX_SMALL_BYTES,
                MAX_BLOB_REPLY_BYTES,
                config.request_timeout,
                metrics,
            ),
            capacity: request_response(
                CAPACITY_PROTOCOL,
                MAX_CAPACITY_BYTES,
                MAX_CAPACITY_BYTES,
                config.request_timeout.min(CAPACITY_TIMEOUT),
                metrics,
            ),
            relay_client,
            relay: config
                .nat
                .relay_server
                .then(|| relay::Behaviour::new(peer_id, config.nat.relay.server_config()))
                .into(),
            dcutr: dcutr::Behaviour::new(peer_id),
            autonat: autonat::v2::client::Behaviour::default(),
            autonat_server: super::gate::Gated::new(autonat::v2::server::Behaviour::default()),
            upnp: config.nat.upnp.then(upnp::tokio::Behaviour::default).into(),
        })
    }
}
