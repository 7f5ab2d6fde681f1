//! The peergrid wire protocol: names, versions, size limits and message types.
//!
//! Every message is postcard-encoded. Every inbound message is untrusted: the codec
//! bounds its size before decoding, decoding never panics, and the receiver checks
//! the contents (see `docs/PROTOCOL.md`). Protocol names carry the major version; a
//! peer speaking another major version fails stream negotiation (request-response)
//! or has its adverts ignored (capacity), never an offence.

use serde::{Deserialize, Serialize};

pub use crate::types::{
    BlobHash, ChunkResult, JobId, Limits, MAX_SIGNATURE_BYTES, Payload, ResultContext, WireOutcome,
    result_signed_bytes, verify_result_signature,
};

/// Major version of the peergrid protocol family. Version 3: a result's signature
/// covers the submitter, the module and the input too ([`ResultContext`]), a
/// `Cancel` is obeyed only from the job's submitter, and capacity travels on request
/// and to subscribers instead of gossip to everyone (see `docs/PROTOCOL.md`).
/// Version 4: a worker refuses limits over its own maxima with
/// [`RejectReason::LimitsTooHigh`] carrying them, and a submitter whose undelivered
/// results fill its share of the outbox with [`RejectReason::OutboxFull`].
/// Version 5: the sandbox canonicalises NaNs by rewriting the module (only where a
/// NaN's bits can be seen, see `docs/ABI.md`), so a float module uses other fuel
/// than on a version-4 peer; outputs are unchanged, but fuel decides outcomes and
/// credit, so the two must not verify each other's results.
/// Version 6: the sandbox rewrites multiplications by 3, 5 and 9 into a shift and an
/// add (`docs/ABI.md`), +3 fuel each, so such a module uses other fuel than on a
/// version-5 peer (unrolling loops changes no fuel).
pub const PROTOCOL_VERSION: u16 = 6;
/// identify's protocol version string; peers with another one are not added to the DHT.
pub const IDENTIFY_PROTOCOL: &str = "/peergrid/6.0.0";
/// The Kademlia protocol: peergrid's own DHT, never the public IPFS one.
pub const KAD_PROTOCOL: &str = "/peergrid/kad/6.0.0";
/// Submitter <-> worker: capacity queries, subscriptions and pushed updates.
pub const CAPACITY_PROTOCOL: &str = "/peergrid/capacity/6";
/// The name capacity messages are counted under in metrics (the protocol itself;
/// adverts no longer travel on a gossip topic).
pub const CAPACITY_TOPIC: &str = CAPACITY_PROTOCOL;
/// Submitter -> worker: offers of chunks, cancels.
pub const TASK_PROTOCOL: &str = "/peergrid/task/6";
/// Worker -> submitter: chunk results.
pub const RESULT_PROTOCOL: &str = "/peergrid/result/6";
/// Anyone -> holder: blob pieces by BLAKE3 hash.
pub const BLOB_PROTOCOL: &str = "/peergrid/blob/6";

/// Splits `items`, in order, into batches of at most `max_items` items whose
/// `size`s sum to at most `max_bytes`, so that each batch fits one message; an item
/// larger than `max_bytes` goes alone in a batch of its own. Offers (submitter) and
/// result batches (worker) are both cut this way.
pub fn split_by_size<T>(
    items: Vec<T>,
    max_items: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut bytes = 0usize;
    for item in items {
        let n = size(&item);
        match out.last_mut() {
            Some(batch) if batch.len() < max_items && bytes.saturating_add(n) <= max_bytes => {
                bytes += n;
                batch.push(item);
            }
            _ => {
                bytes = n;
                out.push(vec![item]);
            }
        }
    }
    out
}

/// Why a peer of another protocol version is refused, for logs and `peergrid peers`.
pub fn foreign_version_reason(theirs: &str) -> String {
    format!(
        "speaks {theirs}, this node speaks {IDENTIFY_PROTOCOL}: refused (it counts fuel or \
         encodes messages differently; upgrade that node)"
    )
}

/// Largest capacity advert accepted, in bytes.
pub const MAX_ADVERT_BYTES: usize = 4 * 1024;
/// Largest task request (a batch of offers) accepted, in bytes.
pub const MAX_TASK_BYTES: usize = 8 * 1024 * 1024;
/// Largest result request (a batch of results) accepted, in bytes.
pub const MAX_RESULT_BYTES: usize = 8 * 1024 * 1024;
/// Largest blob piece served or accepted, in bytes.
pub const BLOB_PIECE_BYTES: u32 = 1024 * 1024;
/// Largest blob reply on the wire (a piece plus its header).
pub const MAX_BLOB_REPLY_BYTES: usize = BLOB_PIECE_BYTES as usize + 1024;
/// Largest small request (blob request, acks), in bytes.
pub const MAX_SMALL_BYTES: usize = 64 * 1024;
/// Largest blob a peer will fetch (modules, inputs, outputs).
pub const MAX_BLOB_BYTES: u64 = 1024 * 1024 * 1024;
/// Most feature strings in an advert.
pub const MAX_FEATURES: usize = 16;
/// Most slots an advert may claim. Far above any real machine; it keeps a peer's
/// numbers out of overflow in the scheduler's arithmetic (`slots * QUEUE_FACTOR`).
pub const MAX_ADVERT_SLOTS: u32 = 1 << 16;

/// What a worker lends: the answer to a [`CapacityRequest::Query`], and pushed as a
/// [`CapacityRequest::Update`] to the peers subscribed to it, on change and every
/// advert interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityAdvert {
    /// The sender's [`PROTOCOL_VERSION`]; adverts of another major version are ignored.
    pub version: u16,
    /// Increases with every advert from this peer; older ones are ignored.
    pub seq: u64,
    /// Chunk slots lent in total.
    pub slots_total: u32,
    /// Slots free now.
    pub slots_free: u32,
    /// CPU cores lent.
    pub cores: u32,
    /// Largest memory per chunk, in bytes.
    pub memory_limit: u64,
    /// Measured fuel per CPU second of one slot (measured once per binary and CPU,
    /// kept in the data dir; 0 when it could not be measured).
    pub fuel_per_sec: u64,
    /// Optional capabilities (bounded list of short strings).
    pub features: Vec<String>,
}

impl CapacityAdvert {
    /// Checks what decoding cannot: bounded lists, consistent numbers.
    pub fn check(&self) -> Result<(), String> {
        if self.features.len() > MAX_FEATURES || self.features.iter().any(|f| f.len() > 64) {
            return Err("too many or too long features".into());
        }
        if self.slots_total > MAX_ADVERT_SLOTS {
            return Err(format!(
                "{} slots (at most {MAX_ADVERT_SLOTS})",
                self.slots_total
            ));
        }
        if self.slots_free > self.slots_total {
            return Err(format!(
                "{} free slots of {} total",
                self.slots_free, self.slots_total
            ));
        }
        Ok(())
    }
}

/// Requests on [`CAPACITY_PROTOCOL`] (since version 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CapacityRequest {
    /// "What do you lend?" With `subscribe`, the asker also wants this peer's
    /// updates pushed to it for a while (see `docs/PROTOCOL.md`, *Discovery*).
    Query {
        /// Push updates to the asker until the subscription expires.
        subscribe: bool,
    },
    /// A subscribed-to peer's new advert. Accepted only from a peer the receiver
    /// subscribed to; anything else is ignored (never steers placement).
    Update(CapacityAdvert),
}

/// Replies on [`CAPACITY_PROTOCOL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CapacityReply {
    /// The answer to a query: the peer's advert, `None` when it lends nothing yet.
    Advert(Option<CapacityAdvert>),
    /// An update was received.
    Ack,
}

/// Largest capacity request or reply on the wire, in bytes.
pub const MAX_CAPACITY_BYTES: usize = MAX_ADVERT_BYTES + 64;

/// One chunk replica offered to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Chunk index within the job.
    pub chunk: u32,
    /// Which replica of the chunk this is (distinct per peer).
    pub attempt: u32,
    /// The module, a blob held by the submitter.
    pub module: BlobHash,
    /// The chunk input.
    pub input: Payload,
    /// Limits the chunk runs under.
    pub limits: Limits,
    /// Soft deadline in milliseconds: after it the submitter may reissue.
    pub soft_deadline_ms: u64,
}

/// Submitter -> worker requests on [`TASK_PROTOCOL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskRequest {
    /// A batch of chunks to run.
    Offer {
        /// The job.
        job_id: JobId,
        /// The chunks.
        assignments: Vec<Assignment>,
    },
    /// Stop running (and drop results of) these chunks of a job; all when empty.
    Cancel {
        /// The job.
        job_id: JobId,
        /// The chunks, or every chunk of the job when empty.
        chunks: Vec<u32>,
    },
}

/// Why a worker refused an assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// No free slot.
    NoFreeSlots,
    /// Asked for more fuel, memory, time or output than the worker lends: carries the
    /// worker's maxima, so the submitter can say why and place the job elsewhere.
    LimitsTooHigh(Limits),
    /// The worker is paused or outside its active hours.
    Suspended,
    /// The worker is not accepting work at all.
    NotAccepting,
    /// The module could not be fetched or is invalid.
    BadModule(String),
    /// The worker holds as many undelivered results for this submitter as it keeps
    /// (its outbox quota per submitter): the submitter should take them first.
    OutboxFull {
        /// The submitter's results waiting in the outbox.
        rows: u64,
        /// Their size in bytes (large outputs included).
        bytes: u64,
    },
}

/// Worker -> submitter reply to a [`TaskRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskReply {
    /// Which assignments were taken and which refused, by (chunk, attempt).
    Offer {
        /// Taken.
        accepted: Vec<(u32, u32)>,
        /// Refused, with the reason.
        rejected: Vec<(u32, u32, RejectReason)>,
    },
    /// The cancel was applied.
    Cancelled,
}

/// Worker -> submitter requests on [`RESULT_PROTOCOL`]: a batch of results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultBatch {
    /// The results.
    pub results: Vec<ChunkResult>,
}

/// Submitter -> worker: which results were stored (and may be dropped from the outbox).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultAck {
    /// (job, chunk, attempt) of each stored result.
    pub stored: Vec<(JobId, u32, u32)>,
}

/// A request for one piece of a blob on [`BLOB_PROTOCOL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRequest {
    /// The blob.
    pub hash: BlobHash,
    /// Offset of the piece.
    pub offset: u64,
    /// Length wanted; the holder serves at most [`BLOB_PIECE_BYTES`].
    pub len: u32,
}

/// The holder's answer to a [`BlobRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobReply {
    /// A piece of the blob.
    Piece {
        /// The blob's total size.
        total: u64,
        /// Where this piece starts.
        offset: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// This peer does not hold the blob.
    NotFound,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_through_hex() {
        let h = BlobHash::of(b"peergrid");
        assert_eq!(BlobHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(BlobHash::from_hex("nope"), None);
    }

    #[test]
    fn a_result_signature_binds_submitter_module_and_input() {
        use libp2p::identity::Keypair;
        let worker = Keypair::ed25519_from_bytes([1; 32]).unwrap();
        let peer = |n: u8| {
            Keypair::ed25519_from_bytes([n; 32])
                .unwrap()
                .public()
                .to_peer_id()
        };
        let ctx = ResultContext {
            submitter: peer(2),
            module: BlobHash::of(b"module"),
            input: BlobHash::of(b"input"),
        };
        let mut r = ChunkResult {
            job_id: JobId([3; 16]),
            chunk: 1,
            attempt: 0,
            outcome: WireOutcome::Ok,
            output_hash: BlobHash::of(b"out"),
            output: None,
            fuel_used: 1,
            exec_micros: 1,
            signature: vec![],
        };
        r.signature = worker.sign(&r.signed_bytes(&ctx)).unwrap();
        let id = worker.public().to_peer_id();
        assert!(verify_result_signature(
            &id,
            &r.signed_bytes(&ctx),
            &r.signature
        ));
        for other in [
            ResultContext {
                submitter: peer(4),
                ..ctx
            },
            ResultContext {
                module: BlobHash::of(b"another module"),
                ..ctx
            },
            ResultContext {
                input: BlobHash::of(b"another input"),
                ..ctx
            },
        ] {
            assert!(
                !verify_result_signature(&id, &r.signed_bytes(&other), &r.signature),
                "{other:?}"
            );
        }
        assert!(foreign_version_reason("/peergrid/4.0.0").contains("/peergrid/6.0.0"));
    }

    #[test]
    fn adverts_are_checked() {
        let mut a = CapacityAdvert {
            version: PROTOCOL_VERSION,
            seq: 1,
            slots_total: 2,
            slots_free: 3,
            cores: 2,
            memory_limit: 1,
            fuel_per_sec: 1,
            features: vec![],
        };
        assert!(a.check().is_err());
        a.slots_free = 1;
        assert!(a.check().is_ok());
        a.features = vec!["x".into(); 100];
        assert!(a.check().is_err());
    }
}
