//! The libp2p behaviour: which protocols a peergrid peer speaks, configured once.

use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, allow_block_list, autonat, connection_limits, dcutr, identify, identity, kad,
    mdns, memory_connection_limits, ping, relay, request_response, upnp,
};

use super::NetConfig;
use super::codec::PostcardCodec;
use super::guard::ConnectionGuard;
use super::held::Budget;
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
    pub(crate) guard: ConnectionGuard,
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) memory: memory_connection_limits::Behaviour,
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
    /// Which connections stay open when idle (`keep_alive.rs`). Last, so that a
    /// connection refused by any behaviour above never gets its handler.
    pub(crate) keep_alive: super::keep_alive::KeepAlive,
}

/// The most streams (requests in flight, both ways: requests over it fail at once)
/// per connection on each protocol. request-response's default of 64 let one
/// connection read 64 messages of 8 MiB at once; the bytes being read are bounded
/// by the inbound byte budget (`held.rs`) now, and honest use needs few streams: a
/// submitter has one offer per job in flight to a worker, a worker one result
/// batch at a time per submitter, a blob fetch 4 pieces per blob.
pub(crate) mod streams {
    /// Task offers and cancels (8 MiB requests).
    pub(crate) const TASK: usize = 16;
    /// Result batches (8 MiB requests).
    pub(crate) const RESULT: usize = 8;
    /// Blob pieces (small requests, 1 MiB answers).
    pub(crate) const BLOB: usize = 32;
    /// Capacity queries and updates (4 KiB).
    pub(crate) const CAPACITY: usize = 8;
}

/// One request-response protocol: its name, size limits, timeout and streams.
struct Protocol {
    name: &'static str,
    max_request: usize,
    max_response: usize,
    timeout: Duration,
    streams: usize,
}

fn request_response<Req, Resp>(
    p: Protocol,
    metrics: &NetMetrics,
    budget: &Budget,
) -> request_response::Behaviour<PostcardCodec<Req, Resp>>
where
    Req: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    Resp: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    request_response::Behaviour::with_codec(
        PostcardCodec::new(p.max_request, p.max_response)
            .with_metrics(metrics.clone())
            .with_budget(budget.clone()),
        [(
            StreamProtocol::new(p.name),
            request_response::ProtocolSupport::Full,
        )],
        request_response::Config::default()
            .with_request_timeout(p.timeout)
            .with_max_concurrent_streams(p.streams),
    )
}

impl Behaviour {
    pub(crate) fn new(
        key: &identity::Keypair,
        config: &NetConfig,
        metrics: &NetMetrics,
        budget: &Budget,
        relay_client: relay::client::Behaviour,
    ) -> anyhow::Result<Self> {
        let peer_id = key.public().to_peer_id();

        // Per peer: one connection, a relayed one beside it while hole punching
        // upgrades it to a direct one, and one spare for a simultaneous dial.
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(config.max_connections))
            .with_max_established_incoming(Some(config.max_inbound.min(config.max_connections)))
            .with_max_established_per_peer(Some(3))
            .with_max_pending_incoming(Some(super::guard::MAX_PENDING_INBOUND))
            .with_max_pending_outgoing(Some(64));

        let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
        // A walk's peers are used when it ends: a slow peer must not hold it long.
        kad_config.set_query_timeout(Duration::from_secs(10));
        // The event loop refreshes the table itself with a fixed number of lookups
        // every `random_walk_interval`; libp2p's bootstrap (one lookup per bucket: log
        // N of them) runs hourly, and when the routing table is nearly empty.
        kad_config.set_periodic_bootstrap_interval(Some(KAD_BOOTSTRAP_INTERVAL));
        // peergrid keeps no records in the DHT (it is used to find peers only): a
        // peer's PUT_VALUE or ADD_PROVIDER comes up as an event, which the event loop
        // ignores, and is never stored; the store holds nothing.
        kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
        let store = kad::store::MemoryStore::with_config(
            peer_id,
            kad::store::MemoryStoreConfig {
                max_records: 0,
                max_value_bytes: 0,
                max_providers_per_key: 0,
                max_provided_keys: 0,
            },
        );
        let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
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
            guard: ConnectionGuard::new(config.guard.clone(), metrics.clone()),
            limits: connection_limits::Behaviour::new(limits),
            // New connections (both ways) are refused while the process's resident
            // memory is above the cap; open ones go on.
            memory: memory_connection_limits::Behaviour::with_max_bytes(
                usize::try_from(config.max_memory).unwrap_or(usize::MAX),
            ),
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
                Protocol {
                    name: TASK_PROTOCOL,
                    max_request: MAX_TASK_BYTES,
                    max_response: MAX_SMALL_BYTES,
                    timeout: config.request_timeout,
                    streams: streams::TASK,
                },
                metrics,
                budget,
            ),
            result: request_response(
                Protocol {
                    name: RESULT_PROTOCOL,
                    max_request: MAX_RESULT_BYTES,
                    max_response: MAX_SMALL_BYTES,
                    timeout: config.request_timeout,
                    streams: streams::RESULT,
                },
                metrics,
                budget,
            ),
            blob: request_response(
                Protocol {
                    name: BLOB_PROTOCOL,
                    max_request: MAX_SMALL_BYTES,
                    max_response: MAX_BLOB_REPLY_BYTES,
                    timeout: config.request_timeout,
                    streams: streams::BLOB,
                },
                metrics,
                budget,
            ),
            capacity: request_response(
                Protocol {
                    name: CAPACITY_PROTOCOL,
                    max_request: MAX_CAPACITY_BYTES,
                    max_response: MAX_CAPACITY_BYTES,
                    timeout: config.request_timeout.min(CAPACITY_TIMEOUT),
                    streams: streams::CAPACITY,
                },
                metrics,
                budget,
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
            keep_alive: super::keep_alive::KeepAlive::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use libp2p::PeerId;
    use libp2p::kad::store::RecordStore;

    use super::*;

    #[test]
    fn the_dht_stores_no_records_from_anyone() {
        let key = identity::Keypair::generate_ed25519();
        // No mDNS and no UPnP: both need a running tokio runtime, and this test
        // only builds the behaviour.
        let mut config = NetConfig {
            mdns: false,
            ..NetConfig::default()
        };
        config.nat.upnp = false;
        let (_transport, relay_client) = relay::client::new(key.public().to_peer_id());
        let mut b = Behaviour::new(
            &key,
            &config,
            &NetMetrics::default(),
            &Budget::new(1 << 20),
            relay_client,
        )
        .expect("builds");
        let record = kad::Record::new(kad::RecordKey::new(&b"k"), b"v".to_vec());
        assert!(b.kad.store_mut().put(record).is_err());
        let provider =
            kad::ProviderRecord::new(kad::RecordKey::new(&b"k"), PeerId::random(), Vec::new());
        assert!(b.kad.store_mut().add_provider(provider).is_err());
        assert_eq!(b.kad.store_mut().records().count(), 0);
    }
}
