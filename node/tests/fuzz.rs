//! Property tests with arbitrary input for everything a peer or an API client controls
//! (issue 9, part 4): every wire-message decoder, the postcard codec's read path, and
//! the control API's request parsing.
//!
//! What they hold to:
//! - Decoding arbitrary bytes as any wire message never panics: it is `Ok` or an
//!   [`Offence`].
//! - Decoding allocates in proportion to the bytes actually received, never to a
//!   length the peer *declares* (postcard reads lengths as varints; serde only
//!   pre-allocates `size_hint::cautious`, at most 1 MiB, and postcard gives no hint
//!   at all when the declared length is longer than the bytes left). A counting
//!   global allocator measures the peak on the decoding thread.
//! - The codec reads at most `limit + 1` bytes of a stream, however long the stream.
//! - Valid messages round-trip; mutated (flipped, truncated, extended) encodings
//!   never panic.
//! - The control API answers arbitrary bodies, job ids and chunk numbers with a 4xx,
//!   never a 5xx, and keeps answering (a real node on loopback, driven over HTTP).
//!
//! Every property runs a fixed number of cases, so the whole file stays within a few
//! seconds in a debug build.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io;
use std::time::Duration;

use futures::executor::block_on;
use libp2p::StreamProtocol;
use libp2p::request_response::Codec;
use peergrid_node::net::codec::{self, Offence, PostcardCodec, read_message};
use peergrid_node::net::protocol::*;
use peergrid_node::sandbox::Limits;
use peergrid_node::scheduler::{job_id_hex, parse_job_id};
use peergrid_node::settings::Resolve;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde::Serialize;
use serde::de::DeserializeOwned;

// ---------------------------------------------------------------------------------
// Counting allocator: live and peak bytes, per thread (tests run in parallel).

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    // `try_with`: the allocator may run while a thread's locals are torn down.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to `System` unchanged; the counters are plain
// thread-local cells with const initialisers (no allocation, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its value with the most bytes it had allocated at once on
/// this thread (beyond what was live before it started).
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(before));
    let value = f();
    let peak = PEAK.with(Cell::get) - before;
    (value, peak.max(0) as usize)
}

/// The most a decode of `n` arbitrary bytes may allocate: linear in `n`. The factor
/// covers the in-memory size of the densest message (a `(u32, u32, RejectReason)`
/// is 32 bytes in memory and 3 on the wire), `Vec` doubling, serde's cautious
/// pre-allocation of up to `size_of::<T>()` per byte left, and error strings.
fn decode_budget(n: usize) -> usize {
    256 * n + 16 * 1024
}

// ---------------------------------------------------------------------------------
// Strategies for valid messages.

fn hash() -> impl Strategy<Value = BlobHash> {
    any::<[u8; 32]>().prop_map(BlobHash)
}

fn job_id() -> impl Strategy<Value = JobId> {
    any::<[u8; 16]>().prop_map(JobId)
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        bytes(256).prop_map(Payload::Inline),
        (hash(), any::<u64>()).prop_map(|(hash, size)| Payload::Blob { hash, size }),
    ]
}

fn duration() -> impl Strategy<Value = Duration> {
    (any::<u64>(), 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n))
}

fn limits() -> impl Strategy<Value = Limits> {
    (any::<u64>(), any::<u64>(), duration(), any::<u64>()).prop_map(
        |(fuel, memory_bytes, timeout, max_output_bytes)| Limits {
            fuel,
            memory_bytes,
            timeout,
            max_output_bytes,
        },
    )
}

prop_compose! {
    fn assignment()(
        chunk in any::<u32>(),
        attempt in any::<u32>(),
        module in hash(),
        input in payload(),
        limits in limits(),
        soft_deadline_ms in any::<u64>(),
    ) -> Assignment {
        Assignment { chunk, attempt, module, input, limits, soft_deadline_ms }
    }
}

fn task_request() -> impl Strategy<Value = TaskRequest> {
    prop_oneof![
        (job_id(), prop::collection::vec(assignment(), 0..8)).prop_map(|(job_id, assignments)| {
            TaskRequest::Offer {
                job_id,
                assignments,
            }
        }),
        (job_id(), prop::collection::vec(any::<u32>(), 0..64))
            .prop_map(|(job_id, chunks)| TaskRequest::Cancel { job_id, chunks }),
    ]
}

fn reject_reason() -> impl Strategy<Value = RejectReason> {
    prop_oneof![
        Just(RejectReason::NoFreeSlots),
        limits().prop_map(RejectReason::LimitsTooHigh),
        Just(RejectReason::Suspended),
        Just(RejectReason::NotAccepting),
        ".{0,32}".prop_map(RejectReason::BadModule),
        any::<(u64, u64)>().prop_map(|(rows, bytes)| RejectReason::OutboxFull { rows, bytes }),
    ]
}

fn task_reply() -> impl Strategy<Value = TaskReply> {
    prop_oneof![
        (
            prop::collection::vec(any::<(u32, u32)>(), 0..32),
            prop::collection::vec((any::<u32>(), any::<u32>(), reject_reason()), 0..32),
        )
            .prop_map(|(accepted, rejected)| TaskReply::Offer { accepted, rejected }),
        Just(TaskReply::Cancelled),
    ]
}

fn wire_outcome() -> impl Strategy<Value = WireOutcome> {
    prop_oneof![
        Just(WireOutcome::Ok),
        (".{0,16}", ".{0,64}").prop_map(|(kind, message)| WireOutcome::Trap { kind, message }),
        Just(WireOutcome::OutOfFuel),
        Just(WireOutcome::MemoryLimit),
        Just(WireOutcome::Timeout),
        ".{0,64}".prop_map(WireOutcome::Invalid),
    ]
}

/// The one place this file builds a [`ChunkResult`] (so a new field is added once).
#[allow(clippy::too_many_arguments)]
fn chunk_result(
    job_id: JobId,
    chunk: u32,
    attempt: u32,
    outcome: WireOutcome,
    output_hash: BlobHash,
    output: Option<Payload>,
    fuel_used: u64,
    exec_micros: u64,
) -> ChunkResult {
    ChunkResult {
        job_id,
        chunk,
        attempt,
        outcome,
        output_hash,
        output,
        fuel_used,
        exec_micros,
        // Not checked by decoding; an ed25519 signature's length.
        signature: vec![0xa5; 64],
    }
}

fn result() -> impl Strategy<Value = ChunkResult> {
    (
        job_id(),
        any::<(u32, u32)>(),
        wire_outcome(),
        hash(),
        prop::option::of(payload()),
        any::<(u64, u64)>(),
    )
        .prop_map(
            |(job, (chunk, attempt), outcome, h, output, (fuel, micros))| {
                chunk_result(job, chunk, attempt, outcome, h, output, fuel, micros)
            },
        )
}

fn result_batch() -> impl Strategy<Value = ResultBatch> {
    prop::collection::vec(result(), 0..8).prop_map(|results| ResultBatch { results })
}

fn result_ack() -> impl Strategy<Value = ResultAck> {
    prop::collection::vec((job_id(), any::<u32>(), any::<u32>()), 0..32)
        .prop_map(|stored| ResultAck { stored })
}

fn blob_request() -> impl Strategy<Value = BlobRequest> {
    (hash(), any::<u64>(), any::<u32>()).prop_map(|(hash, offset, len)| BlobRequest {
        hash,
        offset,
        len,
    })
}

fn blob_reply() -> impl Strategy<Value = BlobReply> {
    prop_oneof![
        (any::<u64>(), any::<u64>(), bytes(512)).prop_map(|(total, offset, bytes)| {
            BlobReply::Piece {
                total,
                offset,
                bytes,
            }
        }),
        Just(BlobReply::NotFound),
    ]
}

fn advert() -> impl Strategy<Value = CapacityAdvert> {
    (
        any::<u16>(),
        any::<u64>(),
        any::<(u32, u32, u32)>(),
        any::<(u64, u64)>(),
        prop::collection::vec(".{0,70}", 0..20),
    )
        .prop_map(
            |(version, seq, (slots_total, slots_free, cores), (memory, fuel), features)| {
                CapacityAdvert {
                    version,
                    seq,
                    slots_total,
                    slots_free,
                    cores,
                    memory_limit: memory,
                    fuel_per_sec: fuel,
                    features,
                }
            },
        )
}

// ---------------------------------------------------------------------------------
// Properties every message type must have.

/// Arbitrary bytes decode to `Ok` or a `Garbled` offence, within the budget.
fn decodes_safely<T: DeserializeOwned>(data: &[u8]) -> Result<(), TestCaseError> {
    let (result, peak) = peak_during(|| codec::decode::<T>(data, "/fuzz/1"));
    if let Err(e) = &result {
        prop_assert!(
            matches!(Offence::from_io(e), Some(Offence::Garbled { .. })),
            "not a garbled offence: {e}"
        );
    }
    drop(result);
    prop_assert!(
        peak <= decode_budget(data.len()),
        "decoding {} bytes as {} allocated {peak} bytes at once",
        data.len(),
        std::any::type_name::<T>()
    );
    Ok(())
}

/// Flipped, truncated and extended versions of an encoding never panic.
fn survives_mutation<T: DeserializeOwned>(
    mut bytes: Vec<u8>,
    flips: &[(prop::sample::Index, u8)],
    cut: prop::sample::Index,
    tail: &[u8],
) -> Result<(), TestCaseError> {
    decodes_safely::<T>(&bytes[..cut.index(bytes.len() + 1)])?;
    if !bytes.is_empty() {
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
    }
    decodes_safely::<T>(&bytes)?;
    bytes.extend_from_slice(tail);
    decodes_safely::<T>(&bytes)
}

/// A valid message encodes within `limit` (when it fits), decodes equal, and
/// survives mutation.
fn round_trips<T>(
    value: &T,
    limit: usize,
    flips: &[(prop::sample::Index, u8)],
    cut: prop::sample::Index,
    tail: &[u8],
) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = match codec::encode(value, limit) {
        Ok(bytes) => bytes,
        Err(_) => {
            // Refused to send: only ever because it is over the limit.
            let len = postcard::to_allocvec(value).expect("encodes").len();
            prop_assert!(len > limit);
            return Ok(());
        }
    };
    let back: T = codec::decode(&bytes, "/fuzz/1").expect("own encoding decodes");
    prop_assert_eq!(&back, value);
    let read: T = block_on(read_message(&mut &bytes[..], limit, "/fuzz/1")).expect("reads");
    prop_assert_eq!(&read, value);
    survives_mutation::<T>(bytes, flips, cut, tail)
}

/// Bytes to flip (where, by what), where to cut, and what to append.
type Mutation = (Vec<(prop::sample::Index, u8)>, prop::sample::Index, Vec<u8>);

fn mutation() -> impl Strategy<Value = Mutation> {
    (
        prop::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 0..6),
        any::<prop::sample::Index>(),
        bytes(32),
    )
}

macro_rules! decoder_properties {
    ($($name:ident: $ty:ty = $strategy:expr, limit $limit:expr;)*) => {
        $(
            mod $name {
                use super::*;

                proptest! {
                    #![proptest_config(ProptestConfig::with_cases(256))]

                    #[test]
                    fn arbitrary_bytes_never_panic(data in bytes(2048)) {
                        decodes_safely::<$ty>(&data)?;
                    }

                    #[test]
                    fn valid_messages_round_trip_and_survive_mutation(
                        value in $strategy,
                        (flips, cut, tail) in mutation(),
                    ) {
                        round_trips(&value, $limit, &flips, cut, &tail)?;
                    }
                }
            }
        )*
    };
}

fn capacity_request() -> impl Strategy<Value = CapacityRequest> {
    prop_oneof![
        any::<bool>().prop_map(|subscribe| CapacityRequest::Query { subscribe }),
        advert().prop_map(CapacityRequest::Update),
    ]
}

fn capacity_reply() -> impl Strategy<Value = CapacityReply> {
    prop_oneof![
        Just(CapacityReply::Ack),
        prop::option::of(advert()).prop_map(CapacityReply::Advert),
    ]
}

decoder_properties! {
    capacity_advert: CapacityAdvert = advert(), limit MAX_ADVERT_BYTES;
    capacity_request: CapacityRequest = capacity_request(), limit MAX_CAPACITY_BYTES;
    capacity_reply: CapacityReply = capacity_reply(), limit MAX_CAPACITY_BYTES;
    task_request: TaskRequest = task_request(), limit MAX_TASK_BYTES;
    task_reply: TaskReply = task_reply(), limit MAX_SMALL_BYTES;
    chunk_result: ChunkResult = result(), limit MAX_RESULT_BYTES;
    result_batch: ResultBatch = result_batch(), limit MAX_RESULT_BYTES;
    result_ack: ResultAck = result_ack(), limit MAX_SMALL_BYTES;
    blob_request: BlobRequest = blob_request(), limit MAX_SMALL_BYTES;
    blob_reply: BlobReply = blob_reply(), limit MAX_BLOB_REPLY_BYTES;
    assignment: Assignment = assignment(), limit MAX_TASK_BYTES;
    wire_outcome: WireOutcome = wire_outcome(), limit MAX_SMALL_BYTES;
    payload: Payload = payload(), limit MAX_SMALL_BYTES;
    reject_reason: RejectReason = reject_reason(), limit MAX_SMALL_BYTES;
}

// ---------------------------------------------------------------------------------
// Declared lengths: a peer says "4 GiB follow" and sends a few bytes.

/// postcard's varint encoding of `n`.
fn varint(n: u64) -> Vec<u8> {
    postcard::to_allocvec(&n).expect("encodes")
}

/// Whether bytes are refused as some message type.
type Refused = fn(&[u8]) -> bool;

/// A prefix of each message type that ends just before a length-prefixed field.
fn length_prefixed_fields() -> [(&'static str, Vec<u8>, Refused); 9] {
    fn is_err<T: DeserializeOwned>(bytes: &[u8]) -> bool {
        codec::decode::<T>(bytes, "/fuzz/1").is_err()
    }
    let job = [7u8; 16];
    let hash = [9u8; 32];
    let mut offer = vec![0u8]; // TaskRequest::Offer
    offer.extend_from_slice(&job);
    let mut cancel = vec![1u8]; // TaskRequest::Cancel
    cancel.extend_from_slice(&job);
    let mut inline = vec![0u8, 1, 1]; // TaskRequest::Offer, 1 assignment, chunk 1
    inline.splice(1..1, job);
    inline.extend_from_slice(&[1]); // attempt
    inline.extend_from_slice(&hash); // module
    inline.push(0); // Payload::Inline
    let piece = vec![0u8, 1, 0]; // BlobReply::Piece, total 1, offset 0
    let mut trap = job.to_vec(); // ChunkResult: job, chunk, attempt, Trap
    trap.extend_from_slice(&[0, 0, 1]);
    [
        ("ResultBatch.results", vec![], is_err::<ResultBatch>),
        ("ResultAck.stored", vec![], is_err::<ResultAck>),
        (
            "TaskRequest::Offer.assignments",
            offer,
            is_err::<TaskRequest>,
        ),
        ("TaskRequest::Cancel.chunks", cancel, is_err::<TaskRequest>),
        ("Assignment.input (Inline)", inline, is_err::<TaskRequest>),
        ("TaskReply::Offer.accepted", vec![0u8], is_err::<TaskReply>),
        ("BlobReply::Piece.bytes", piece, is_err::<BlobReply>),
        ("WireOutcome::Trap.kind", trap, is_err::<ChunkResult>),
        (
            "CapacityAdvert.features",
            vec![1, 0, 0, 0, 0, 0, 0],
            is_err::<CapacityAdvert>,
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any declared length, up to `u64::MAX`, followed by a short tail: refused (or,
    /// when the length is honest, decoded) without allocating what was declared.
    #[test]
    fn declared_lengths_are_not_preallocated(
        declared in prop_oneof![
            Just(u64::MAX),
            Just(1u64 << 32),
            Just(10_000_000u64),
            any::<u64>(),
            0..4096u64,
        ],
        tail in bytes(64),
    ) {
        for (field, prefix, is_err) in length_prefixed_fields() {
            let mut data = prefix;
            data.extend_from_slice(&varint(declared));
            data.extend_from_slice(&tail);
            let (refused, peak) = peak_during(|| is_err(&data));
            if declared > data.len() as u64 {
                prop_assert!(refused, "{field}: {declared} declared, {} bytes given", data.len());
            }
            prop_assert!(
                peak <= decode_budget(data.len()),
                "{field}: declared {declared}, {} bytes given, {peak} bytes allocated",
                data.len()
            );
        }
    }
}

#[test]
fn a_4_gib_length_allocates_nothing_like_it() {
    for (field, prefix, is_err) in length_prefixed_fields() {
        let mut data = prefix;
        data.extend_from_slice(&varint(4 << 30));
        data.extend_from_slice(&[0u8; 16]);
        let (refused, peak) = peak_during(|| is_err(&data));
        assert!(refused, "{field}");
        assert!(peak < 16 * 1024, "{field}: {peak} bytes allocated");
    }
}

// ---------------------------------------------------------------------------------
// The codec's read path: streams of any length, through the request-response codec.

/// A stream of `prefix` then `pattern` repeated until `len` bytes in all.
struct Endless {
    prefix: Vec<u8>,
    pattern: Vec<u8>,
    pos: u64,
    len: u64,
}

impl io::Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() && self.pos < self.len {
            let p = self.pos as usize;
            buf[n] = if p < self.prefix.len() {
                self.prefix[p]
            } else {
                self.pattern[(p - self.prefix.len()) % self.pattern.len()]
            };
            n += 1;
            self.pos += 1;
        }
        Ok(n)
    }
}

fn stream(prefix: Vec<u8>, pattern: Vec<u8>, len: u64) -> futures::io::AllowStdIo<Endless> {
    futures::io::AllowStdIo::new(Endless {
        prefix,
        pattern,
        pos: 0,
        len,
    })
}

fn task_codec() -> PostcardCodec<TaskRequest, TaskReply> {
    PostcardCodec::new(MAX_TASK_BYTES, MAX_SMALL_BYTES)
}

fn result_codec() -> PostcardCodec<ResultBatch, ResultAck> {
    PostcardCodec::new(MAX_RESULT_BYTES, MAX_SMALL_BYTES)
}

fn blob_codec() -> PostcardCodec<BlobRequest, BlobReply> {
    PostcardCodec::new(MAX_SMALL_BYTES, MAX_BLOB_REPLY_BYTES)
}

/// Reads a request and a response of arbitrary bytes through a codec: an inbound
/// request is delivered as `Ok(Ok)` or `Ok(Err(offence))`, a response as `Ok` or an
/// `InvalidData` error carrying the offence; an empty stream, either way, is an
/// `UnexpectedEof` with no offence (a peer that gave up or refused). Never anything
/// else, never a panic.
fn read_both<Req, Resp>(
    mut codec: PostcardCodec<Req, Resp>,
    protocol: &'static str,
    data: &[u8],
) -> Result<(), TestCaseError>
where
    Req: Serialize + DeserializeOwned + Send + 'static,
    Resp: Serialize + DeserializeOwned + Send + 'static,
{
    let protocol = StreamProtocol::new(protocol);
    let (request, peak) = peak_during(|| {
        block_on(codec.read_request(&protocol, &mut futures::io::Cursor::new(data)))
    });
    match &request {
        Ok(_) => {}
        // A stream closed with nothing on it: the requester gave up (its request
        // timed out as the stream opened), no offence (see `codec::receive`).
        Err(e) if data.is_empty() => {
            prop_assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
            prop_assert!(Offence::from_io(e).is_none());
        }
        Err(e) => prop_assert!(false, "an in-memory read failed: {e}"),
    }
    prop_assert!(
        peak <= decode_budget(data.len()),
        "{peak} bytes for {}",
        data.len()
    );
    let (response, peak) = peak_during(|| {
        block_on(codec.read_response(&protocol, &mut futures::io::Cursor::new(data)))
    });
    if let Err(e) = &response {
        if data.is_empty() {
            // A stream closed unanswered: the peer refused (busy), no offence.
            prop_assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
            prop_assert!(Offence::from_io(e).is_none());
        } else {
            prop_assert!(Offence::from_io(e).is_some(), "not an offence: {e}");
        }
    }
    prop_assert!(
        peak <= decode_budget(data.len()),
        "{peak} bytes for {}",
        data.len()
    );
    Ok(())
}

/// The empty stream, which random bytes of up to 4 KiB reach only by chance (one
/// case in 4 096): read on every run.
#[test]
fn the_codec_reads_an_empty_stream_as_a_refusal() {
    read_both(task_codec(), TASK_PROTOCOL, &[]).unwrap();
    read_both(result_codec(), RESULT_PROTOCOL, &[]).unwrap();
    read_both(blob_codec(), BLOB_PROTOCOL, &[]).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_codec_reads_arbitrary_streams_safely(data in bytes(4096)) {
        read_both(task_codec(), TASK_PROTOCOL, &data)?;
        read_both(result_codec(), RESULT_PROTOCOL, &data)?;
        read_both(blob_codec(), BLOB_PROTOCOL, &data)?;
    }

    #[test]
    fn streams_over_the_limit_are_oversized(limit in 0usize..2048, extra in 1usize..64) {
        let data = vec![0u8; limit + extra];
        let err = block_on(read_message::<TaskRequest, _>(&mut &data[..], limit, "/t/1"))
            .expect_err("over the limit");
        let oversized = matches!(Offence::from_io(&err), Some(Offence::Oversized { .. }));
        prop_assert!(oversized, "{err}");
    }
}

/// A peer that never stops sending: the codec stops reading after `limit + 1`
/// bytes, and what it allocated is bounded by the limit, not by the stream.
#[test]
fn an_endless_stream_is_cut_at_the_limit() {
    let protocol = StreamProtocol::new(BLOB_PROTOCOL);
    let mut io = stream(Vec::new(), vec![0xff], u64::MAX);
    let (request, peak) = peak_during(|| block_on(blob_codec().read_request(&protocol, &mut io)));
    assert!(matches!(
        request.expect("read"),
        Err(Offence::Oversized { .. })
    ));
    assert_eq!(
        io.get_ref().pos,
        MAX_SMALL_BYTES as u64 + 1,
        "read past the limit"
    );
    assert!(peak <= 2 * MAX_SMALL_BYTES + 4096, "{peak} bytes");
}

/// The smallest encoding of a `ChunkResult`: 55 bytes (with an empty signature).
fn minimal_result() -> Vec<u8> {
    let mut r = chunk_result(
        JobId([0; 16]),
        0,
        0,
        WireOutcome::Ok,
        BlobHash([0; 32]),
        None,
        0,
        0,
    );
    r.signature = Vec::new();
    postcard::to_allocvec(&r).expect("encodes")
}

/// A `ResultBatch` of 10 million results cannot reach the scheduler: no count bound
/// is needed beyond the byte cap, because each result takes at least 55 bytes on the
/// wire, so [`MAX_RESULT_BYTES`] (8 MiB) holds at most ~152 000 of them (and the
/// actor's work per result is a lookup in that result's own chunk). Sent anyway, the
/// stream is refused at 8 MiB + 1 bytes read, having allocated about twice that.
#[test]
fn a_batch_of_ten_million_results_is_refused_by_the_byte_cap() {
    let one = minimal_result();
    let at_most = MAX_RESULT_BYTES / one.len();
    assert!(at_most < 200_000, "{at_most} results fit in one batch");
    assert!(10_000_000 * one.len() > MAX_RESULT_BYTES);

    let protocol = StreamProtocol::new(RESULT_PROTOCOL);
    let total = 4 + 10_000_000 * one.len() as u64;
    let mut io = stream(varint(10_000_000), one, total);
    let (request, peak) = peak_during(|| block_on(result_codec().read_request(&protocol, &mut io)));
    assert!(matches!(
        request.expect("read"),
        Err(Offence::Oversized { .. })
    ));
    assert_eq!(io.get_ref().pos, MAX_RESULT_BYTES as u64 + 1);
    assert!(peak <= 2 * MAX_RESULT_BYTES + 4096, "{peak} bytes");
}

/// The fullest batch that does fit decodes, and what it takes in memory is a small
/// multiple of its bytes.
#[test]
fn the_fullest_result_batch_decodes_within_a_small_multiple() {
    let one = minimal_result();
    let count = MAX_RESULT_BYTES / one.len() - 1;
    let mut data = varint(count as u64);
    for _ in 0..count {
        data.extend_from_slice(&one);
    }
    assert!(data.len() <= MAX_RESULT_BYTES);
    let (batch, peak) = peak_during(|| {
        block_on(result_codec().read_request(
            &StreamProtocol::new(RESULT_PROTOCOL),
            &mut futures::io::Cursor::new(&data),
        ))
    });
    let batch = batch.expect("read").expect("a valid batch");
    assert_eq!(batch.results.len(), count);
    assert!(
        peak <= 16 * data.len(),
        "{peak} bytes to decode a {}-byte batch",
        data.len()
    );
}

// ---------------------------------------------------------------------------------
// Job ids as the API and the CLI parse them.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn job_ids_parse_only_from_32_hex_digits(s in ".{0,40}|[0-9a-fA-F]{32}| [0-9a-f]{32} ") {
        let parsed = parse_job_id(&s);
        let t = s.trim();
        let valid = t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit());
        prop_assert_eq!(parsed.is_some(), valid);
        if let Some(id) = parsed {
            prop_assert_eq!(job_id_hex(&id), t.to_ascii_lowercase());
        }
    }

    #[test]
    fn job_ids_round_trip(id in job_id()) {
        prop_assert_eq!(parse_job_id(&job_id_hex(&id)), Some(id));
    }
}

// ---------------------------------------------------------------------------------
// The control API of a real node, over HTTP.

mod api {
    use std::net::SocketAddr;

    use peergrid_node::Node;
    use peergrid_node::config::{DataDir, NodeOptions};
    use serde_json::{Value, json};

    use super::*;

    struct Api {
        base: String,
        token: String,
        agent: ureq::Agent,
    }

    impl Api {
        fn new(addr: SocketAddr, token: String) -> Self {
            let agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(30)))
                .http_status_as_error(false)
                .build()
                .into();
            Self {
                base: format!("http://{addr}"),
                token,
                agent,
            }
        }

        fn auth(&self) -> String {
            format!("Bearer {}", self.token)
        }

        fn get(&self, path: &str) -> u16 {
            let r = self
                .agent
                .get(format!("{}{path}", self.base))
                .header("Authorization", self.auth())
                .call()
                .expect("the API answers");
            r.status().as_u16()
        }

        fn post(&self, path: &str, content_type: Option<&str>, body: &[u8]) -> u16 {
            let mut req = self
                .agent
                .post(format!("{}{path}", self.base))
                .header("Authorization", self.auth());
            if let Some(ct) = content_type {
                req = req.header("Content-Type", ct);
            }
            req.send(body).expect("the API answers").status().as_u16()
        }

        fn put(&self, path: &str, content_type: Option<&str>, body: &[u8]) -> u16 {
            let mut req = self
                .agent
                .put(format!("{}{path}", self.base))
                .header("Authorization", self.auth());
            if let Some(ct) = content_type {
                req = req.header("Content-Type", ct);
            }
            req.send(body).expect("the API answers").status().as_u16()
        }

        fn upload(&self, bytes: &[u8]) -> String {
            let mut r = self
                .agent
                .post(format!("{}/v1/blobs", self.base))
                .header("Authorization", self.auth())
                .send(bytes)
                .expect("the API answers");
            assert_eq!(r.status().as_u16(), 200);
            let v: Value = r.body_mut().read_json().expect("json");
            v["hash"].as_str().expect("a hash").to_string()
        }
    }

    /// Percent-encodes every byte outside the unreserved set, so any string is one
    /// path segment.
    fn segment(s: &str) -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,16}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn number() -> impl Strategy<Value = Value> {
        prop_oneof![
            (0u64..20).prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            json_value(),
        ]
    }

    fn duration_json() -> impl Strategy<Value = Value> {
        prop_oneof![
            (number(), number()).prop_map(|(secs, nanos)| json!({"secs": secs, "nanos": nanos})),
            json_value(),
        ]
    }

    /// A `spec` shaped like `JobSpec`, with arbitrary numbers (or anything at all).
    fn spec() -> impl Strategy<Value = Value> {
        prop_oneof![
            (
                (number(), number(), number()),
                (number(), number(), duration_json(), number()),
                duration_json(),
            )
                .prop_map(
                    |((redundancy, quorum, max_replicas), (fuel, mem, timeout, out), soft)| {
                        json!({
                            "redundancy": redundancy,
                            "quorum": quorum,
                            "max_replicas": max_replicas,
                            "limits": {
                                "fuel": fuel,
                                "memory_bytes": mem,
                                "timeout": timeout,
                                "max_output_bytes": out,
                            },
                            "soft_timeout": soft,
                        })
                    }
                ),
            json_value(),
        ]
    }

    /// A submission shaped like `SubmitRequest` that can never be accepted: either
    /// its module is not a valid uploaded module, or it names a real module with
    /// inputs that were never uploaded (so no job ever runs).
    fn strings() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(prop_oneof!["[0-9a-f]{64}", ".{0,70}"], 0..4)
    }

    fn name() -> impl Strategy<Value = Value> {
        prop_oneof![".{0,200}".prop_map(Value::from), json_value()]
    }

    fn submission(real_module: String, not_wasm: String) -> impl Strategy<Value = Value> {
        let bad_module = prop_oneof![
            "[0-9a-f]{64}".prop_map(Value::from),
            ".{0,70}".prop_map(Value::from),
            Just(Value::from(not_wasm)),
            json_value(),
        ];
        prop_oneof![
            (
                name(),
                bad_module,
                prop::option::of(json_value()),
                prop::option::of(strings()),
                prop::option::of(spec()),
            )
                .prop_map(|(name, module, params, inputs, spec)| {
                    json!({"name": name, "module": module, "params": params,
                           "inputs": inputs, "spec": spec})
                }),
            (name(), strings(), prop::option::of(spec())).prop_map(move |(name, inputs, spec)| {
                json!({"name": name, "module": real_module, "inputs": inputs, "spec": spec})
            }),
        ]
    }

    fn check_4xx(what: &str, status: u16) -> Result<(), TestCaseError> {
        prop_assert!(
            (400..500).contains(&status),
            "{what}: answered {status}, not a 4xx"
        );
        Ok(())
    }

    fn run<S: Strategy>(
        name: &str,
        cases: u32,
        strategy: S,
        test: impl Fn(S::Value) -> Result<(), TestCaseError>,
    ) where
        S::Value: std::fmt::Debug,
    {
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        if let Err(e) = runner.run(&strategy, test) {
            panic!("{name}: {e}");
        }
    }

    /// One node, every endpoint that parses client input, arbitrary input: a 4xx
    /// each time (a 5xx or a dropped connection fails the test), and the node still
    /// answers afterwards.
    #[test]
    fn the_control_api_answers_arbitrary_requests_with_4xx() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = NodeOptions {
            api: Some("127.0.0.1:0".into()),
            ..NodeOptions::loopback(Vec::new(), 1)
        }
        .resolve(DataDir::resolve(Some(dir.path().to_path_buf())))
        .expect("config resolves");
        let token_path = config.data_dir.api_token();
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let node = rt.block_on(Node::spawn(config)).expect("node starts");
        let addr = node.api_addr().expect("the API is on");
        let token = std::fs::read_to_string(token_path).expect("token");
        let api = Api::new(addr, token.trim().to_string());

        let primes = peergrid_jobs::find("primes").expect("the primes example");
        let real_module = api.upload(primes.wasm);
        let not_wasm = api.upload(b"not a module");

        run(
            "arbitrary bodies for POST /v1/jobs",
            128,
            (
                bytes(1024),
                prop_oneof![
                    Just(Some("application/json")),
                    Just(Some("text/plain")),
                    Just(None)
                ],
            ),
            |(body, content_type)| {
                check_4xx("POST /v1/jobs", api.post("/v1/jobs", content_type, &body))
            },
        );

        run(
            "JSON shaped like a submission",
            128,
            submission(real_module, not_wasm),
            |value| {
                let body = serde_json::to_vec(&value).expect("json");
                check_4xx(
                    &format!("POST /v1/jobs {value}"),
                    api.post("/v1/jobs", Some("application/json"), &body),
                )
            },
        );

        run(
            "arbitrary job ids",
            128,
            prop_oneof![".{1,40}", "[0-9a-f]{32}", "[0-9a-fA-F ]{30,34}"],
            |id| {
                let id = segment(&id);
                for path in [
                    format!("/v1/jobs/{id}"),
                    format!("/v1/jobs/{id}/events"),
                    format!("/v1/jobs/{id}/result"),
                    format!("/v1/jobs/{id}/chunks/0"),
                ] {
                    check_4xx(&format!("GET {path}"), api.get(&path))?;
                }
                let path = format!("/v1/jobs/{id}/cancel");
                check_4xx(&format!("POST {path}"), api.post(&path, None, b""))
            },
        );

        run(
            "arbitrary chunk numbers",
            128,
            (
                prop_oneof![".{1,24}", "[0-9]{1,12}", "-[0-9]{1,4}"],
                "[0-9a-f]{32}",
            ),
            |(chunk, id)| {
                let path = format!("/v1/jobs/{id}/chunks/{}", segment(&chunk));
                check_4xx(&format!("GET {path}"), api.get(&path))
            },
        );

        run(
            "arbitrary bodies for POST /v1/pause and PUT /v1/preferences",
            128,
            (
                bytes(256),
                prop_oneof![Just(Some("application/json")), Just(None)],
            ),
            |(body, content_type)| {
                check_4xx("POST /v1/pause", api.post("/v1/pause", content_type, &body))?;
                check_4xx(
                    "PUT /v1/preferences",
                    api.put("/v1/preferences", content_type, &body),
                )
            },
        );

        run(
            "preferences out of range",
            64,
            (
                prop_oneof![Just("cpu-time-percent"), Just("max-cpu-percent")],
                prop_oneof![Just(0i64), 101i64..100_000, -1000i64..0],
            ),
            |(key, value)| {
                let body = serde_json::to_vec(&serde_json::json!({ key: value })).expect("json");
                check_4xx(
                    &format!("PUT /v1/preferences {key}={value}"),
                    api.put("/v1/preferences", Some("application/json"), &body),
                )
            },
        );

        run("arbitrary tokens", 32, "[ -~]{0,80}", |token| {
            let status = api
                .agent
                .get(format!("{}/v1/jobs", api.base))
                .header("Authorization", format!("Bearer {token}"))
                .call()
                .expect("the API answers")
                .status()
                .as_u16();
            prop_assert_eq!(status, 401);
            Ok(())
        });

        // Still alive and well, with no job created by any of the above.
        assert_eq!(api.get("/v1/status"), 200);
        let mut r = api
            .agent
            .get(format!("{}/v1/status", api.base))
            .header("Authorization", api.auth())
            .call()
            .expect("the API answers");
        let status: Value = r.body_mut().read_json().expect("json");
        assert_ne!(
            status["volunteer"]["state"], "suspended",
            "nothing above paused the node: {status}"
        );
        let mut r = api
            .agent
            .get(format!("{}/v1/jobs", api.base))
            .header("Authorization", api.auth())
            .call()
            .expect("the API answers");
        let jobs: Vec<Value> = r.body_mut().read_json().expect("json");
        assert!(jobs.is_empty(), "{jobs:?}");
        rt.block_on(node.shutdown());
    }
}
