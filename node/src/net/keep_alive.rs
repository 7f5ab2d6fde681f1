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
    DialFailure, FromSwarm, ListenFailure, NetworkBehaviour, NotifyHandler, SubstreamProtocol,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
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
        // A connection this behaviour made a handler for ends closed, or refused by
        // a behaviour asked after this one (the connection limits, the ban list).
        let (peer, connection) = match event {
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                connection_id,
                ..
            }) => (peer_id, connection_id),
            FromSwarm::DialFailure(DialFailure {
                peer_id: Some(peer_id),
                connection_id,
                ..
            })
            | FromSwarm::ListenFailure(ListenFailure {
                peer_id: Some(peer_id),
                connection_id,
                ..
            }) => (peer_id, connection_id),
            _ => return,
        };
        if let Some(ids) = self.connections.get_mut(&peer) {
            ids.retain(|id| *id != connection);
            if ids.is_empty() {
                self.connections.remove(&peer);
                // A peer with no connection keeps no flag: the set stays bounded by
                // the connections open, and the event loop sets it again if needed.
                self.kept.remove(&peer);
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

#[cfg(test)]
mod tests {
    use libp2p::core::ConnectedPoint;

    use super::*;

    fn poll(k: &mut KeepAlive) -> Vec<(ConnectionId, bool)> {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let mut out = Vec::new();
        while let Poll::Ready(ToSwarm::NotifyHandler {
            handler: NotifyHandler::One(id),
            event,
            ..
        }) = k.poll(&mut cx)
        {
            out.push((id, event));
        }
        out
    }

    #[test]
    fn handlers_follow_the_kept_set_and_a_peer_leaves_it_with_its_last_connection() {
        let mut k = KeepAlive::default();
        let (peer, other) = (PeerId::random(), PeerId::random());
        let addr = Multiaddr::empty();
        let (a, b) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        let h = k
            .handle_established_inbound_connection(a, peer, &addr, &addr)
            .expect("accepted");
        assert!(!h.connection_keep_alive(), "not kept unless asked");
        k.set_kept(&HashSet::from([peer]));
        assert_eq!(poll(&mut k), vec![(a, true)], "the open connection is told");
        let h = k
            .handle_established_outbound_connection(b, peer, &addr, Endpoint::Dialer, PortUse::New)
            .expect("accepted");
        assert!(h.connection_keep_alive(), "a new connection starts kept");
        k.set(peer, true);
        assert!(poll(&mut k).is_empty(), "no change, no message");
        // Letting go tells both connections; a peer with none is not told.
        k.set_kept(&HashSet::from([other]));
        let mut told = poll(&mut k);
        told.sort_by_key(|(id, _)| format!("{id:?}"));
        assert_eq!(told, vec![(a, false), (b, false)]);
        // The last connection closing forgets the peer's flag.
        k.set(peer, true);
        poll(&mut k);
        let endpoint = ConnectedPoint::Listener {
            local_addr: addr.clone(),
            send_back_addr: addr.clone(),
        };
        for (id, left) in [(a, 1), (b, 0)] {
            k.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id: peer,
                connection_id: id,
                endpoint: &endpoint,
                cause: None,
                remaining_established: left,
            }));
        }
        assert!(!k.kept.contains(&peer));
        assert!(k.connections.is_empty());
    }
}
