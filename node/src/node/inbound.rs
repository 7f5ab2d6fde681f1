//! The inbound dispatcher: every request a peer sends this node (a blob piece, a
//! result batch, a task offer or cancel) arrives here as a [`NetEvent`] from the
//! network's event loop and goes to the part that answers it: the blob store, the
//! [`Scheduler`](crate::scheduler::Scheduler) or the
//! [`Worker`](crate::worker::Worker). Started and stopped by [`Node`](super::Node).
//!
//! No kind of request waits behind another: blob pieces and result batches are
//! handled by tasks with backlogs of their own, offers and cancels are answered at
//! once. No peer takes more than its share ([`fair`]): at most [`BLOB_PER_PEER`] of
//! the blob backlog and [`RESULTS_PER_PEER`] of the result backlog, offers and
//! cancels at a rate per peer; what is over is refused (the channel dropped, the
//! peer sees a failure), and a peer that keeps flooding is penalised. The blob
//! pieces one peer is served are also paced ([`serving`]: bytes a second, pieces at
//! once, and repeats of one piece an offence), so a peer that keeps asking costs
//! this node a bounded share of its CPU and upload, never the chunks it runs.

use std::sync::Arc;

use libp2p::PeerId;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::api::state::NodeState;
use crate::net::NetEvent;
use crate::net::protocol::{BLOB_PIECE_BYTES, BlobReply, BlobRequest, TaskReply, TaskRequest};

mod fair;
mod serving;
use fair::{Allow, Buckets, Shares};

/// Concurrent blob pieces served.
const BLOB_SERVERS: usize = 16;
/// Result batches handled at once.
const RESULT_HANDLERS: usize = 8;

/// Blob requests waiting for a server or being served, at most; beyond it a request
/// is refused (its channel dropped: the requester sees a failure and tries another
/// holder or later). Bounds the memory a stream of requests can hold.
const BLOB_BACKLOG: usize = 256;
/// Result batches waiting or being handled, at most; beyond it a batch is refused
/// the same way (its worker keeps it in its outbox and retries later).
const RESULT_BACKLOG: usize = 64;
/// One peer's most blob requests in the backlog (a fetch asks for 4 pieces of a
/// blob at once; a worker fetches a module and an input per chunk it starts).
const BLOB_PER_PEER: usize = 64;
/// One peer's most result batches in the backlog (an honest worker sends one batch
/// at a time to each submitter).
const RESULTS_PER_PEER: usize = 8;
/// Task offers per second per peer, and the burst (a submitter has one offer per
/// job in flight to a worker, and sends the next when it is answered: with chunks
/// of a few milliseconds, hundreds a second; an offer over the worker's room is
/// refused cheaply, so this bounds a flood's cost, not honest throughput).
const OFFERS: (u32, u32) = (1000, 2000);
/// Cancels per second per peer, and the burst (a submitter sends one per job it
/// cancels to each worker holding its chunks).
const CANCELS: (u32, u32) = (10, 64);

/// Answers inbound requests. It never waits for a permit or for the disk itself:
/// blob pieces and result batches are handled by tasks (at most [`BLOB_SERVERS`]
/// and [`RESULT_HANDLERS`] at once, at most [`BLOB_BACKLOG`] and [`RESULT_BACKLOG`]
/// tracked), and the worker answers offers and cancels at once, so a stream of blob
/// requests delays neither task offers nor results.
pub(super) async fn dispatch(
    state: Arc<NodeState>,
    mut events: tokio::sync::mpsc::Receiver<NetEvent>,
    shutdown: CancellationToken,
) {
    let servers = Arc::new(Semaphore::new(BLOB_SERVERS));
    let handlers = Arc::new(Semaphore::new(RESULT_HANDLERS));
    let mut blob_tasks: JoinSet<PeerId> = JoinSet::new();
    let mut result_tasks: JoinSet<PeerId> = JoinSet::new();
    let mut blob_shares = Shares::new(BLOB_BACKLOG, BLOB_PER_PEER);
    let mut result_shares = Shares::new(RESULT_BACKLOG, RESULTS_PER_PEER);
    let mut offers = Buckets::new(OFFERS.0, OFFERS.1);
    let mut cancels = Buckets::new(CANCELS.0, CANCELS.1);
    let budget = serving::Shared::default();
    let mut pruned = tokio::time::Instant::now();
    loop {
        let event = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(done) = blob_tasks.join_next(), if !blob_tasks.is_empty() => {
                if let Ok(peer) = done {
                    blob_shares.done(peer);
                }
                continue;
            }
            Some(done) = result_tasks.join_next(), if !result_tasks.is_empty() => {
                if let Ok(peer) = done {
                    result_shares.done(peer);
                }
                continue;
            }
            event = events.recv() => match event {
                Some(event) => event,
                None => break,
            },
        };
        match event {
            NetEvent::Blob {
                peer,
                request,
                channel,
                held: _,
            } => {
                let now = tokio::time::Instant::now();
                if now.duration_since(pruned) >= serving::REPEAT_WINDOW {
                    serving::lock(&budget).prune(now);
                    pruned = now;
                }
                let slots = serving::lock(&budget).slots(peer, now);
                let Some(slots) = slots.filter(|_| blob_shares.admit(peer)) else {
                    tracing::debug!(%peer, "refusing a blob request: backlog or the peer's share full");
                    drop(channel);
                    continue;
                };
                let (state, servers, budget) = (state.clone(), servers.clone(), budget.clone());
                blob_tasks.spawn(
                    async move {
                        serve_blob(&state, peer, &slots, &servers, &budget, request, channel).await;
                        peer
                    }
                    .in_current_span(),
                );
            }
            NetEvent::Task {
                peer,
                request,
                channel,
                held: _held,
            } => {
                let (bucket, what) = match &request {
                    TaskRequest::Offer { .. } => (&mut offers, "offers"),
                    TaskRequest::Cancel { .. } => (&mut cancels, "cancels"),
                };
                if let Allow::No { offence } = bucket.allow(peer, tokio::time::Instant::now()) {
                    tracing::debug!(%peer, "refusing {what}: over the peer's rate");
                    drop(channel);
                    if offence {
                        state.net.penalize(peer, format!("a flood of {what}")).await;
                    }
                    continue;
                }
                let reply = match request {
                    TaskRequest::Offer {
                        job_id,
                        assignments,
                    } => state.worker.offer(peer, job_id, assignments),
                    TaskRequest::Cancel { job_id, chunks } => {
                        // Only the job's submitter can cancel it: the worker keys
                        // every chunk by the peer that offered it.
                        state.worker.cancel(peer, job_id, &chunks);
                        TaskReply::Cancelled
                    }
                };
                state.net.respond_task(channel, reply).await;
            }
            NetEvent::Results {
                peer,
                request,
                channel,
                held,
            } => {
                if !result_shares.admit(peer) {
                    tracing::debug!(%peer, "refusing a result batch: backlog or the peer's share full");
                    drop(channel);
                    continue;
                }
                let (state, handlers) = (state.clone(), handlers.clone());
                result_tasks.spawn(
                    async move {
                        if let Ok(_permit) = handlers.acquire_owned().await {
                            let ack = state.scheduler.results(peer, request).await;
                            drop(held);
                            state.net.respond_results(channel, ack).await;
                        }
                        peer
                    }
                    .in_current_span(),
                );
            }
        }
    }
    blob_tasks.shutdown().await;
    result_tasks.shutdown().await;
}

/// Serves one blob piece to `peer` in its turn: one of its [`serving::SERVING_PER_PEER`]
/// places, its bucket out of debt, then a server; reads the piece on a blocking
/// thread, charges the peer for it, and penalises a run of repeats.
async fn serve_blob(
    state: &NodeState,
    peer: PeerId,
    slots: &Arc<Semaphore>,
    servers: &Arc<Semaphore>,
    budget: &serving::Shared,
    request: BlobRequest,
    channel: libp2p::request_response::ResponseChannel<BlobReply>,
) {
    let Ok(_mine) = slots.acquire().await else {
        return;
    };
    loop {
        let turn = serving::lock(budget).turn(peer, tokio::time::Instant::now());
        match turn {
            serving::Turn::Go => break,
            serving::Turn::Wait(d) => tokio::time::sleep(d).await,
        }
    }
    let Ok(_permit) = servers.acquire().await else {
        return;
    };
    let blobs = state.blobs.clone();
    let (hash, offset) = (request.hash, request.offset);
    let piece = tokio::task::spawn_blocking(move || {
        blobs.read_piece(
            &request.hash,
            request.offset,
            request.len.min(BLOB_PIECE_BYTES),
        )
    })
    .await;
    let reply = match piece {
        Ok(Ok(Some((total, bytes)))) => BlobReply::Piece {
            total,
            offset,
            bytes,
        },
        _ => BlobReply::NotFound,
    };
    let sent = match &reply {
        BlobReply::Piece { bytes, .. } => bytes.len() as u64,
        _ => 0,
    };
    let offence =
        serving::lock(budget).charge(peer, hash, offset, sent, tokio::time::Instant::now());
    if offence {
        state
            .net
            .penalize(
                peer,
                format!(
                    "asked for the same blob pieces over and over ({} repeats)",
                    serving::REPEATS_PER_OFFENCE
                ),
            )
            .await;
    }
    state.net.respond_blob(channel, reply).await;
}
