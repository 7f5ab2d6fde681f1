//! Unrolling of small innermost loops: a deterministic rewrite of a module, run by
//! [`rewrite::compile`](super::rewrite::compile) after the NaN rewrite ([`nan`](super::nan))
//! and before Cranelift compiles it.
//!
//! # Why
//! Fuel (and epochs, had we them) puts a check at every loop header: a compare and a
//! branch to an out-of-gas path, on the hot edge of every iteration. In a tight float
//! loop that check costs more than the work (`cargo bench --bench loop_checks`: an
//! escape-time loop is 71 % slower with the check than without, and 10 % slower when
//! its body is repeated eight times per header). Blocks carry no check, so a loop
//! whose body is copied `k` times, each copy running on into the next, pays the check
//! once per `k` iterations.
//!
//! # The contract
//! The rewritten module behaves exactly as the original (same memory, outputs,
//! results, traps and host-call arguments) and uses exactly the same fuel: it runs the
//! same operators, or an inverted comparison in place of one, and adds only `block`
//! and `end`, which cost nothing in wasmtime's table. It is a pure function of the
//! module's bytes ([`UNROLL_VERSION`] names it, in the compile cache's engine
//! fingerprint). A guest still cannot run unmetered: every operator is charged as
//! before, and the loop header (with its check) comes back every `k` iterations. Only
//! where a call runs out of fuel can move, by less than `k` iterations, since the
//! check runs less often; every peer runs the same rewrite, so they agree on it.
//!
//! # How
//! An innermost `loop` (no loop inside it) with the empty block type, whose body
//! ends with an integer comparison and `br_if 0` (how LLVM closes a loop), and holds
//! no operator that names a label other than `br`, `br_if` and `br_table` (no
//! exception handling, no `br_on_*`), becomes
//!
//! ```text
//! block                   ;; $exit
//!   loop                  ;; $L
//!     block               ;; copy 0
//!       BODY'             ;; the body without `cmp; br_if 0`
//!       !cmp              ;; the inverse comparison (`ne` for `eq`, `ge_u` for
//!       br_if 2           ;; `lt_u`, ...): leave by $exit, else run on
//!     end
//!     ...                 ;; copies 1 .. k-2 alike
//!     BODY                ;; copy k-1, as it was: `br_if 0` goes back to $L
//!   end
//! end
//! ```
//!
//! Each copy's block sits where the loop's label was, so a branch back to the loop
//! from inside a copy keeps its depth and goes on to the next copy; a branch to a
//! label outside the loop gains the two labels `$exit` and `$L` (one, `$exit`, in
//! the last copy). The hot path falls from copy to copy, and only the last branches
//! back. (An earlier form that kept each copy's `br_if` and left by a `br` after it
//! made a branch taken per copy and was slower than no unrolling on `primes`'s
//! counting loop; float comparisons have no inverse, as both `lt` and `ge` are false
//! on a NaN, so their loops stay as they are.)
//!
//! `k` is [`MAX_COPIES`] for bodies of up to 80 operators, and fewer (down to 2) for
//! bodies of up to [`UNROLLED_OPS`] / 2; larger loops are left alone (their header is
//! a small part of an iteration).
//!
//! # Bounds
//! The rewrite runs on modules peers send, after [`shape::check`](super::shape) and
//! the NaN rewrite (which validates). Time is linear in the output; memory is the
//! output plus the control stack of the function being read. A module grows by at
//! most [`budget`] bytes in all (loops that would pass it are left alone, in code
//! order), and no function body grows past wasmtime's limit. A module without an
//! eligible loop comes back byte for byte.

use std::borrow::Cow;

use wasm_encoder::{Encode, Instruction};
use wasmparser::{BinaryReader, BlockType, FunctionBody, Operator, OperatorsReader};

use super::rewrite::MAX_FUNCTION_BODY;
pub(crate) use super::rewrite::budget;

/// The version of this rewrite; part of the compile cache's engine fingerprint, so a
/// changed rewrite never loads code compiled from an older one.
pub(crate) const UNROLL_VERSION: u32 = 1;

/// The most copies of a loop body.
pub(crate) const MAX_COPIES: usize = 8;

/// Copies × body operators at most: a body of up to 80 operators gets 8 copies, up to
/// 160 gets 4 or more, up to 320 gets 2 or more.
pub(crate) const UNROLLED_OPS: usize = 640;

/// Why a module could not be rewritten. The rewrite does not validate: a module it
/// cannot follow is one wasmtime's validation refuses too.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UnrollError {
    /// The module does not parse.
    #[error("invalid module: {0}")]
    Invalid(#[from] wasmparser::BinaryReaderError),
    /// An `end` without a block, or a branch to a label that does not exist.
    #[error("malformed control structure at offset {0}")]
    Malformed(usize),
}

/// What the rewrite found and did (for tests and `bench sandbox`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnrollSummary {
    /// Innermost loops that branch back to themselves.
    pub loops: u64,
    /// Those unrolled.
    pub unrolled: u64,
    /// Bytes the module grew by.
    pub bytes_added: u64,
}

/// An unrolled module and what was done to it.
#[derive(Debug, Clone)]
pub(crate) struct Unrolled {
    /// The module to compile (the input itself when nothing was unrolled).
    pub wasm: Vec<u8>,
    pub summary: UnrollSummary,
}

/// Unrolls the small innermost loops of `wasm` (see the module doc).
pub(crate) fn unroll_inner_loops(wasm: &[u8]) -> Result<Unrolled, UnrollError> {
    let mut summary = UnrollSummary::default();
    let mut budget = budget(wasm.len());
    let out = super::rewrite::rewrite_code_section(wasm, |_, body| {
        unroll_function(body, &mut budget, &mut summary)
    })?;
    if summary.unrolled == 0 {
        return Ok(Unrolled {
            wasm: wasm.to_vec(),
            summary,
        });
    }
    summary.bytes_added = out.len().saturating_sub(wasm.len()) as u64;
    Ok(Unrolled { wasm: out, summary })
}

/// A loop to unroll, by byte offsets into its function body.
#[derive(Debug)]
struct Candidate {
    /// The `loop` operator.
    start: usize,
    /// The first operator of the body.
    body: usize,
    /// The loop's `end`.
    end: usize,
    /// Just past the loop's `end`.
    after: usize,
    /// At least 2.
    copies: usize,
    /// The body's closing integer comparison (before its `br_if 0`): its offset,
    /// and the opcode of its inverse.
    tail: (usize, u8),
}

/// One open block, loop, `if` or `try` of the function being read.
#[derive(Debug)]
struct Frame {
    /// `Some((offset, body offset, whether its block type is empty))` for a loop.
    is_loop: Option<(usize, usize, bool)>,
    /// How many operators the function has up to and including the one that opened
    /// this frame.
    first_op: usize,
    /// A loop is somewhere inside.
    has_loop: bool,
    /// An operator the rewrite does not follow is somewhere inside.
    refused: bool,
    /// A branch targets this frame (for a loop: it loops).
    targeted: bool,
}

impl Frame {
    fn new(is_loop: Option<(usize, usize, bool)>, first_op: usize) -> Self {
        Self {
            is_loop,
            first_op,
            has_loop: false,
            refused: false,
            targeted: false,
        }
    }
}

/// The innermost loops of one body that branch back to themselves: how many, and
/// those to unroll (offsets relative to the body's bytes), in code order.
fn find_loops(body: &FunctionBody<'_>, base: usize) -> Result<(u64, Vec<Candidate>), UnrollError> {
    let mut ops = body.get_operators_reader()?;
    let mut frames = vec![Frame::new(None, 0)];
    let mut innermost = 0;
    let mut found = Vec::new();
    let mut count = 0usize;
    // The last operator, if an integer comparison: (offset, its inverse).
    let mut compared: Option<(usize, u8)> = None;
    // Whether the last two operators were such a comparison and `br_if 0`: the same.
    let mut closed: Option<(usize, u8)> = None;
    while !ops.eof() {
        let (op, offset) = ops.read_with_offset()?;
        let at = offset - base;
        let next = ops.original_position() - base;
        let malformed = || UnrollError::Malformed(offset);
        count += 1;
        // What the operators before this one closed with.
        let tail = closed;
        closed = compared.filter(|_| matches!(op, Operator::BrIf { relative_depth: 0 }));
        compared = inverse(&op).map(|inv| (at, inv));
        match op {
            Operator::Loop { blockty } => {
                let empty = blockty == BlockType::Empty;
                frames.push(Frame::new(Some((at, next, empty)), count));
            }
            Operator::Block { .. } | Operator::If { .. } => frames.push(Frame::new(None, count)),
            Operator::Try { .. } | Operator::TryTable { .. } => {
                let mut frame = Frame::new(None, count);
                frame.refused = true;
                frames.push(frame);
            }
            Operator::End | Operator::Delegate { .. } => {
                let frame = frames.pop().ok_or_else(malformed)?;
                if let Some((start, body, empty)) = frame.is_loop
                    && frame.targeted
                    && !frame.has_loop
                {
                    innermost += 1;
                    // Operators after the `loop` and before its `end`.
                    let copies = copies(count.saturating_sub(frame.first_op + 1));
                    if let Some(tail) = tail
                        && empty
                        && !frame.refused
                        && copies >= 2
                    {
                        found.push(Candidate {
                            start,
                            body,
                            end: at,
                            after: next,
                            copies,
                            tail,
                        });
                    }
                }
                if let Some(parent) = frames.last_mut() {
                    parent.has_loop |= frame.has_loop || frame.is_loop.is_some();
                    parent.refused |= frame.refused;
                } else if !ops.eof() {
                    return Err(malformed());
                }
            }
            Operator::Br { relative_depth } | Operator::BrIf { relative_depth } => {
                target(&mut frames, relative_depth).ok_or_else(malformed)?;
            }
            Operator::BrTable { targets } => {
                for depth in targets.targets().chain([Ok(targets.default())]) {
                    target(&mut frames, depth?).ok_or_else(malformed)?;
                }
            }
            Operator::BrOnNull { .. }
            | Operator::BrOnNonNull { .. }
            | Operator::BrOnCast { .. }
            | Operator::BrOnCastFail { .. }
            | Operator::Rethrow { .. } => {
                frames.last_mut().ok_or_else(malformed)?.refused = true;
            }
            _ => {}
        }
    }
    Ok((innermost, found))
}

/// The opcode of the integer comparison that is true exactly when `op` is false.
/// (Float comparisons have none: both `lt` and `ge` are false on a NaN.)
fn inverse(op: &Operator<'_>) -> Option<u8> {
    use Operator as O;
    Some(match op {
        O::I32Eq => 0x47,
        O::I32Ne => 0x46,
        O::I32LtS => 0x4e,
        O::I32GeS => 0x48,
        O::I32LtU => 0x4f,
        O::I32GeU => 0x49,
        O::I32GtS => 0x4c,
        O::I32LeS => 0x4a,
        O::I32GtU => 0x4d,
        O::I32LeU => 0x4b,
        O::I64Eq => 0x52,
        O::I64Ne => 0x51,
        O::I64LtS => 0x59,
        O::I64GeS => 0x53,
        O::I64LtU => 0x5a,
        O::I64GeU => 0x54,
        O::I64GtS => 0x57,
        O::I64LeS => 0x55,
        O::I64GtU => 0x58,
        O::I64LeU => 0x56,
        _ => return None,
    })
}

/// How many copies of a body of `ops` operators to make (1: leave it alone).
fn copies(ops: usize) -> usize {
    MAX_COPIES.min(UNROLLED_OPS / ops.max(1)).max(1)
}

/// Marks the frame `depth` labels out as targeted; `None` if there is none.
fn target(frames: &mut [Frame], depth: u32) -> Option<()> {
    let index = frames.len().checked_sub(1)?.checked_sub(depth as usize)?;
    frames.get_mut(index)?.targeted = true;
    Some(())
}

/// One body with its small innermost loops unrolled, within `budget` bytes of growth;
/// `None` when no loop was.
fn unroll_function(
    body: &FunctionBody<'_>,
    budget: &mut usize,
    summary: &mut UnrollSummary,
) -> Result<Option<Vec<u8>>, UnrollError> {
    let base = body.range().start;
    let bytes = body.as_bytes();
    let (innermost, loops) = find_loops(body, base)?;
    summary.loops += innermost;
    if loops.is_empty() || *budget == 0 {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(bytes.len() * 2);
    let mut copied = 0;
    let mut unrolled = 0;
    for c in &loops {
        out.extend_from_slice(&bytes[copied..c.start]);
        let mark = out.len();
        emit_unrolled(&mut out, bytes, base, c)?;
        let added = (out.len() - mark).saturating_sub(c.after - c.start);
        let projected = out.len() + (bytes.len() - c.after);
        if added <= *budget && projected <= MAX_FUNCTION_BODY {
            *budget -= added;
            unrolled += 1;
        } else {
            out.truncate(mark);
            out.extend_from_slice(&bytes[c.start..c.after]);
        }
        copied = c.after;
    }
    if unrolled == 0 {
        return Ok(None);
    }
    summary.unrolled += unrolled;
    out.extend_from_slice(&bytes[copied..]);
    Ok(Some(out))
}

const BLOCK: u8 = 0x02;
const LOOP: u8 = 0x03;
const END: u8 = 0x0b;
const BR_IF: u8 = 0x0d;
/// The empty block type.
const EMPTY: u8 = 0x40;

/// Writes loop `c` unrolled (see the module doc).
fn emit_unrolled(
    out: &mut Vec<u8>,
    bytes: &[u8],
    base: usize,
    c: &Candidate,
) -> Result<(), UnrollError> {
    let header = &bytes[c.start..c.body];
    if header.first() != Some(&LOOP) {
        return Err(UnrollError::Malformed(base + c.start));
    }
    // `block bt` ($exit), then the loop itself.
    out.push(BLOCK);
    out.extend_from_slice(&header[1..]);
    out.extend_from_slice(header);
    let (cmp, inverse) = c.tail;
    for _ in 1..c.copies {
        // `cmp; br_if $L` becomes `!cmp; br_if $exit`, and the copy runs on into
        // the next.
        out.extend_from_slice(&[BLOCK, EMPTY]);
        copy_body(out, bytes, base, c.body..cmp, 2)?;
        out.extend_from_slice(&[inverse, BR_IF, 2, END]);
    }
    copy_body(out, bytes, base, c.body..c.end, 1)?;
    out.extend_from_slice(&bytes[c.end..c.after]);
    out.push(END);
    Ok(())
}

/// Writes the operators of `range` (of a loop's body), with branches to labels
/// outside the loop moved `extra` labels further out.
fn copy_body(
    out: &mut Vec<u8>,
    bytes: &[u8],
    base: usize,
    range: std::ops::Range<usize>,
    extra: u32,
) -> Result<(), UnrollError> {
    let start = range.start;
    let mut ops = OperatorsReader::new(BinaryReader::new(&bytes[range], base + start));
    // Labels opened inside the body so far: a depth above this leaves the loop.
    let mut inside: u32 = 0;
    while !ops.eof() {
        let (op, offset) = ops.read_with_offset()?;
        let raw = &bytes[offset - base..ops.original_position() - base];
        let shift = |depth: u32| -> Result<u32, UnrollError> {
            if depth > inside {
                depth
                    .checked_add(extra)
                    .ok_or(UnrollError::Malformed(offset))
            } else {
                Ok(depth)
            }
        };
        match op {
            Operator::Block { .. } | Operator::If { .. } => {
                inside += 1;
                out.extend_from_slice(raw);
            }
            Operator::End => {
                inside = inside
                    .checked_sub(1)
                    .ok_or(UnrollError::Malformed(offset))?;
                out.extend_from_slice(raw);
            }
            Operator::Br { relative_depth } => Instruction::Br(shift(relative_depth)?).encode(out),
            Operator::BrIf { relative_depth } => {
                Instruction::BrIf(shift(relative_depth)?).encode(out);
            }
            Operator::BrTable { targets } => {
                let labels = targets
                    .targets()
                    .map(|d| shift(d?))
                    .collect::<Result<Vec<u32>, _>>()?;
                Instruction::BrTable(Cow::Owned(labels), shift(targets.default())?).encode(out);
            }
            _ => out.extend_from_slice(raw),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
