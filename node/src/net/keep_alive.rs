//! Which connections stay open when idle. libp2p closes a connection once no
//! handler asks to keep it and it has carried no stream for the swarm's idle
//! timeout ([`NetConfig::idle_timeout`](super::NetConfig::idle_timeout), 3 s). No
//! protocol peergrid speaks keeps a connection by itself between messages, so a
//! Kademlia lookup, which connects to every peer it asks, used to leave a connection
//! to each of them open for the idle timeout (then 5 minutes): on 100 processes
//! the nodes formed a full mesh, and each connection costs about 0.1 MB.
//!
//! This behaviour speaks no protocol; its handler only answers libp2p's
//! `connection_keep_alive` with a flag the event loop sets per peer
//! ([`KeepAlive::set_kept`]): the peers an idle node needs (those it subscribes to,
//! its subscribers, those it exchanged work with lately; `event_loop/keep.rs`
//! decides). Relay reservations and hole punching keep their own connections.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::DeniedUpgrade;
use libp2p::swarm::handler::ConnectionEvent;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId,
    FromSwarm, NetworkBehaviour, NotifyHandler, SubstreamProtocol, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// Keeps the connections of the peers in its set open; the others close when idle.
#[derive(Debug, Default)]
pub(crate) struct KeepAlive {
    kept: HashSet<PeerId>,
    /// Open connections per peer (bounded by the connection limit).
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    /// Flags to hand to handlers (at most one per open connection per change).
    pending: VecDeque<ToSwarm<Infallible, bool>>,
}

impl KeepAlive {
    /// Keeps `peer`'s connections open (`true`) or lets them close when idle.
    pub(crate) fn set(&mut self, peer: PeerId, keep: bool) {
        let changed = if keep {
            self.kept.insert(peer)
        } else {
            self.kept.remove(&peer)
        };
        if !changed {
            return;
        }
        for id in self.connections.get(&peer).into_iter().flatten() {
            self.pending.push_back(ToSwarm::NotifyHandler {
                peer_id: peer,
                handler: NotifyHandler::One(*id),
                event: keep,
            });
        }
    }

    /// Makes the kept set exactly `peers`.
    pub(crate) fn set_kept(&mut self, peers: &HashSet<PeerId>) {
        let dropped: Vec<PeerId> = self.kept.difference(peers).copied().collect();
        for peer in dropped {
            self.set(peer, false);
        }
        for peer in peers {
            self.set(*peer, true);
        }
    }

    fn handler(&mut self, peer: PeerId, id: ConnectionId) -> Handler {
        self.connections.entry(peer).or_default().push(id);
        Handler {
            keep: self.kept.contains(&peer),
        }
    }
}

impl NetworkBehaviour for KeepAlive {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        _local: &Multiaddr,
        _remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, id))
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        _addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, id))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id,
            connection_id,
            ..
        }) = event
            && let Some(ids) = self.connections.get_mut(&peer_id)
        {
            ids.retain(|id| *id != connection_id);
            if ids.is_empty() {
                self.connections.remove(&peer_id);
                // A peer with no connection keeps no flag: the set stays bounded by
                // the connections open, and the event loop sets it again if needed.
                self.kept.remove(&peer_id);
            }
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        libp2p::core::util::unreachable(event)
    }

    fn poll(&mut self, _cx: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        match self.pending.pop_front() {
            Some(event) => Poll::Ready(event),
            None => Poll::Pending,
        }
    }
}

/// A connection's flag: kept open while `keep`.
#[derive(Debug)]
pub(crate) struct Handler {
    keep: bool,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = bool;
    type ToBehaviour = Infallible;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn on_behaviour_event(&mut self, keep: bool) {
        self.keep = keep;
    }

    fn connection_keep_alive(&self) -> bool {
        self.keep
    }

    fn poll(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        Poll::Pending
    }

    fn on_connection_event(
        &mut self,
        _event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol>,
    ) {
        // No protocol: nothing is ever negotiated on this handler's behalf.
    }
}
