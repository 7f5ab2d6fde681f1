//! The shared vocabulary: ids, hashes, payloads, limits and outcomes, as they travel
//! between peers and as they are stored. It depends on nothing else in the crate, so
//! every subsystem can use it without importing another (see `docs/ARCHITECTURE.md`,
//! "Layering").
//!
//! The wire protocol (`net::protocol`) re-exports what travels; the store keeps these
//! types in its rows; the sandbox takes [`Limits`]; the scheduler and the worker
//! speak in them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Assignments a worker holds per lent slot (one running, the rest queued so no slot
/// idles between a result and the next offer); submitters place at most this many per
/// advertised slot. With short chunks the round trip result → ack → dispatch → offer
/// is what limits throughput: at 2 per slot, 3 workers of 2 slots verified ~1 700
/// no-op chunks/s, at 4 ~2 400 (`bench grid`).
pub const QUEUE_FACTOR: u32 = 4;

/// A BLAKE3 hash naming a blob.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// Lowercase hex, as in file names and the API.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from(self.0).to_hex().to_string()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        blake3::Hash::from_hex(s).ok().map(|h| Self(*h.as_bytes()))
    }
}

impl std::fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl std::fmt::Display for BlobHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A job's identity: chosen by its submitter, random.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub [u8; 16]);

impl std::fmt::Debug for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Bytes carried inline when small, or named by hash and fetched as a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// The bytes themselves.
    Inline(Vec<u8>),
    /// A blob held by the sender.
    Blob {
        /// Its hash.
        hash: BlobHash,
        /// Its size in bytes.
        size: u64,
    },
}

/// Everything a call into a module is limited by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Fuel (roughly, wasm instructions) the call may burn. Deterministic: the same
    /// module and input stop at the same point on every peer.
    pub fuel: u64,
    /// Largest linear memory the module may have, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock guard: a call still running after this is stopped (`Timeout`).
    /// Not deterministic, so it only guards against runaways; fuel decides.
    pub timeout: Duration,
    /// Largest output the call may return, in bytes.
    pub max_output_bytes: u64,
}

impl Limits {
    /// Defaults for one chunk (`run`): 100 G fuel, 256 MiB, 10 min, 16 MiB out.
    pub const CHUNK: Limits = Limits {
        fuel: 100_000_000_000,
        memory_bytes: 256 * 1024 * 1024,
        timeout: Duration::from_secs(600),
        max_output_bytes: 16 * 1024 * 1024,
    };

    /// Defaults for `split` and `merge` on the submitter: more memory and output,
    /// since they see the whole job.
    pub const SUBMITTER: Limits = Limits {
        fuel: 200_000_000_000,
        memory_bytes: 1024 * 1024 * 1024,
        timeout: Duration::from_secs(600),
        max_output_bytes: 256 * 1024 * 1024,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::CHUNK
    }
}

/// How a chunk ended, as reported by a worker. Mirrors the sandbox's outcome without
/// the output bytes (which travel beside it, named by hash).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WireOutcome {
    /// Output produced; its hash is `output_hash`.
    Ok,
    /// A deterministic trap with its kind and message.
    Trap {
        /// Trap kind, as the sandbox's `TrapKind::as_str`.
        kind: String,
        /// The trap message.
        message: String,
    },
    /// Fuel ran out.
    OutOfFuel,
    /// The memory limit was reached.
    MemoryLimit,
    /// The wall guard fired (not deterministic).
    Timeout,
    /// The module could not run.
    Invalid(String),
    /// Not run: the worker's volunteer needed the machine for longer than the
    /// worker's `withdraw-after`. The submitter runs the chunk elsewhere; no fault of
    /// the worker's. Never carries an output.
    Withdrawn,
}

/// Worker -> submitter: one finished chunk replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkResult {
    /// The job.
    pub job_id: JobId,
    /// The chunk.
    pub chunk: u32,
    /// The replica.
    pub attempt: u32,
    /// How it ended.
    pub outcome: WireOutcome,
    /// BLAKE3 of the output (of the empty string when there is none).
    pub output_hash: BlobHash,
    /// The output, inline when small; otherwise a blob the worker holds.
    pub output: Option<Payload>,
    /// Fuel used.
    pub fuel_used: u64,
    /// Wall time of the execution in microseconds.
    pub exec_micros: u64,
    /// The worker's signature (its libp2p identity key) over [`ChunkResult::signed_bytes`]:
    /// binds the answer to the peer that gave it, so it cannot be replayed as another
    /// peer's, and keeps the evidence of a disagreement checkable by anyone.
    pub signature: Vec<u8>,
}

/// Largest signature accepted on a result (ed25519 signatures are 64 bytes).
pub const MAX_SIGNATURE_BYTES: usize = 128;

impl ChunkResult {
    /// What the worker signs: a domain tag, the job, chunk and attempt, and the
    /// agreement key (outcome and output hash together).
    pub fn signed_bytes(&self) -> Vec<u8> {
        result_signed_bytes(
            &self.job_id,
            self.chunk,
            self.attempt,
            &self.outcome,
            &self.output_hash,
        )
    }
}

/// The bytes a worker signs for one result (see [`ChunkResult::signed_bytes`]).
pub fn result_signed_bytes(
    job_id: &JobId,
    chunk: u32,
    attempt: u32,
    outcome: &WireOutcome,
    output_hash: &BlobHash,
) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(96);
    bytes.extend_from_slice(b"peergrid/result/v1\0");
    bytes.extend_from_slice(&job_id.0);
    bytes.extend_from_slice(&chunk.to_le_bytes());
    bytes.extend_from_slice(&attempt.to_le_bytes());
    bytes.extend_from_slice(
        blake3::hash(&postcard::to_allocvec(outcome).unwrap_or_default()).as_bytes(),
    );
    bytes.extend_from_slice(&output_hash.0);
    bytes
}

/// Whether `signature` over these result fields was made by `peer`'s identity key.
/// Peer ids that do not embed their public key (RSA) cannot be checked and fail.
pub fn verify_result_signature(peer: &libp2p::PeerId, signed: &[u8], signature: &[u8]) -> bool {
    if signature.is_empty() || signature.len() > MAX_SIGNATURE_BYTES {
        return false;
    }
    let multihash = peer.as_ref();
    if multihash.code() != 0 {
        return false;
    }
    match libp2p::identity::PublicKey::try_decode_protobuf(multihash.digest()) {
        Ok(key) => key.verify(signed, signature),
        Err(_) => false,
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Chunks are being run and verified.
    Running,
    /// Every chunk verified; merge running.
    Merging,
    /// Done: the result is stored.
    Done,
    /// Ended without a result (a chunk failed or was verified as failing).
    Failed,
    /// Cancelled by its submitter.
    Cancelled,
}

impl JobState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Merging => "merging",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => Self::Running,
            "merging" => Self::Merging,
            "done" => Self::Done,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }
}

/// A chunk's state as stored: the scheduler's `ChunkState` without its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChunkStatus {
    /// Waiting for a verdict.
    Pending,
    /// Verified to an outcome (kept beside it).
    Verified,
    /// Given up (the reason is kept beside it).
    Failed,
}

impl ChunkStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Verified => "verified",
            Self::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "verified" => Self::Verified,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// A replica's state as stored: the scheduler's `ReplicaState` without its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaStatus {
    /// Offered, no answer yet.
    Offered,
    /// Accepted by its worker.
    Issued,
    /// Its result came back.
    Returned,
    /// Not back within the soft timeout (replaced).
    TimedOut,
    /// Refused, withdrawn, unusable or its peer left (replaced).
    Lost,
}

impl ReplicaStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offered => "offered",
            Self::Issued => "issued",
            Self::Returned => "returned",
            Self::TimedOut => "timed_out",
            Self::Lost => "lost",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "offered" => Self::Offered,
            "issued" => Self::Issued,
            "returned" => Self::Returned,
            "timed_out" => Self::TimedOut,
            "lost" => Self::Lost,
            _ => return None,
        })
    }
}
