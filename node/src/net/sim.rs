//! A simulated network for the scheduler: a [`NetClient`](super::NetClient) whose
//! commands are answered by a [`SimulatedPeers`] implementation instead of a libp2p
//! swarm. `peergrid bench trust` uses it to run the real scheduler and verification
//! code against thousands of chunks and a population of simulated peers (honest,
//! liars, colluders, lazy) in seconds. Nothing else talks to it; nodes never use it.

use libp2p::PeerId;
use tokio::sync::mpsc;

use super::RequestError;
use super::event_loop::Command;
use super::peers::{NetStatus, PeerInfo};
use super::protocol::{ResultAck, ResultBatch, TaskReply, TaskRequest};

/// The peers a simulated network pretends to reach.
pub trait SimulatedPeers: Send + 'static {
    /// The capacity view (what a real node's peer book would hold); by default empty.
    fn peers(&mut self) -> Vec<PeerInfo> {
        Vec::new()
    }
    /// A task request to one peer, answered at once; by default nobody is reachable.
    fn task(&mut self, _peer: PeerId, _request: TaskRequest) -> Result<TaskReply, RequestError> {
        Err(RequestError::Unreachable)
    }
    /// A batch of results to one peer (a worker's delivery), answered at once; by
    /// default nobody is reachable.
    fn results(&mut self, _peer: PeerId, _batch: ResultBatch) -> Result<ResultAck, RequestError> {
        Err(RequestError::Unreachable)
    }
    /// An offence counted against a peer; by default forgotten.
    fn penalize(&mut self, _peer: PeerId, _reason: String) {}
}

/// Answers commands until every client is dropped.
pub(super) async fn serve(mut commands: mpsc::Receiver<Command>, mut peers: impl SimulatedPeers) {
    while let Some(command) = commands.recv().await {
        match command {
            Command::Peers(reply) => {
                let _ = reply.send(peers.peers());
            }
            Command::SendTask(peer, request, reply) => {
                let _ = reply.send(peers.task(peer, request));
            }
            Command::Status(reply) => {
                let view = peers.peers();
                let _ = reply.send(NetStatus {
                    reachability: None,
                    peer_id: String::new(),
                    listen_addrs: Vec::new(),
                    connected_peers: view.len(),
                    known_peers: view.len(),
                    adverts: view.iter().filter(|p| p.advert.is_some()).count(),
                    subscribers: 0,
                    own_advert: None,
                    offences: 0,
                    banned_peers: 0,
                    dropped_inbound: 0,
                    banned_addresses: 0,
                });
            }
            Command::Dial(_, reply) => {
                let _ = reply.send(Err("a simulated network does not dial".into()));
            }
            Command::SendResults(peer, batch, reply) => {
                let _ = reply.send(peers.results(peer, batch));
            }
            Command::GetBlobPiece(_, _, reply) => {
                let _ = reply.send(Err(RequestError::Unreachable));
            }
            Command::Penalize(peer, reason) => peers.penalize(peer, reason),
            Command::PublishAdvert(_)
            | Command::RespondTask(..)
            | Command::RespondResults(..)
            | Command::RespondBlob(..) => {}
        }
    }
}
