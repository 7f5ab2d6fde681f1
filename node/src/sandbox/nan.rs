//! NaN canonicalisation where a NaN's bits can be seen: a deterministic rewrite of a
//! module, run by [`rewrite::compile`](super::rewrite::compile) after the caps check and
//! before Cranelift compiles it (with Cranelift's own canonicalisation off).
//!
//! # The contract
//! The rewritten module, compiled with Cranelift's NaN canonicalisation **off**,
//! behaves exactly as the original compiled with it **on** (same memory, outputs,
//! results, traps and host-call arguments) on every CPU. Only fuel differs: it counts
//! the operators inserted here, and is the same on every peer because the rewrite is a
//! pure function of the module's bytes ([`REWRITE_VERSION`] names it).
//!
//! # How
//! The NaN-producing operators are those whose Cranelift translation Cranelift's
//! `nan_canonicalization` pass (cranelift-codegen 0.135, wasmtime 48) patches: `add`,
//! `sub`, `mul`, `div`, `min`, `max`, `sqrt`, `ceil`, `floor`, `trunc`, `nearest`,
//! `f32.demote_f64`, `f64.promote_f32`, their `f32x4`/`f64x2` forms,
//! `f64x2.promote_low_f32x4`, `f32x4.demote_f64x2_zero`, and the relaxed SIMD
//! `madd`/`nmadd`/`min`/`max` (fused multiply-add, `fmin`/`fmax` in their
//! deterministic semantics). `pmin`/`pmax` pick one operand bit for bit, as do `neg`,
//! `abs`, `copysign`, `select`, loads and stores.
//!
//! Per function, the operand stack is simulated in step with wasmparser's validator
//! (which gives the stack height after every operator, polymorphic stacks in
//! unreachable code included). Each scalar float value carries the set of scalar
//! NaN-producing *sites* whose bits it may hold, as a node of a graph:
//! - *insensitive* uses, whose result does not depend on a NaN's payload or sign,
//!   drop the set: comparisons, float-to-int truncations (trapping and saturating),
//!   `drop`, and being an operand of another NaN-producing operator (whose own result
//!   is judged on its own);
//! - *forwarding* operators pass it on: `neg`, `abs`, the first operand of `copysign`,
//!   `select`, `local.tee`, and locals (a `local.get` carries everything ever written
//!   to the local, flow-insensitively);
//! - every other use is *sensitive*: stores, `reinterpret`, the second operand of
//!   `copysign` (its sign becomes a non-NaN's sign), `global.set`, call arguments,
//!   function results, values crossing a block boundary (block, loop and `if`
//!   parameters and results, branch operands), and any operator not listed above.
//!
//! A scalar site is canonicalised iff a value it produced may reach a sensitive use
//! (directly, or through a local read by one). Everything a sensitive use can see is
//! therefore canonical, exactly as with canonicalisation after every operator; what an
//! insensitive use sees may differ in payload or sign only, which it cannot observe.
//! A value entering a function (a parameter) or read from a global, memory or a block
//! result was canonicalised where it was made sensitive, so it carries no site.
//! SIMD sites are always canonicalised (a `v128` carries integers too; no elision).
//!
//! After a canonicalised site (its result on top of the stack):
//! `local.tee $t; f32.const nan; local.get $t; local.get $t; f32.eq; select`, and
//! for SIMD `local.tee $v; v128.const nan×lanes; local.get $v; local.get $v;
//! f32x4.eq; v128.bitselect` (`f64` and `f64x2` alike). At most one scratch local
//! per type is appended to a function, only when used.
//!
//! # Bounds
//! The rewrite runs on modules peers send, after [`shape::check`](super::shape):
//! time and memory are linear in the module's size (one graph node and at most two
//! edges per operator, the validator's own state; a function's simulated operand stack
//! is capped at [`MAX_STACK`] values). Each canonicalised site adds six
//! operators (at most 31 bytes), so a body grows at most ≈ 16×. A body that would
//! pass wasmtime's limit (7 654 321 bytes) or a module that would pass
//! [`MAX_REWRITTEN`](super::rewrite::MAX_REWRITTEN) is refused with an error saying
//! so, before the rest is built (a module of nothing but float SIMD operations could
//! otherwise make a node hold a gigabyte before Cranelift refused it). A module
//! without NaN-producing operators comes back byte for byte.

use std::collections::HashMap;

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{Function, Instruction, ValType};
use wasmparser::{
    FuncValidator, FuncValidatorAllocations, FunctionBody, Operator, Parser, Payload, ValidPayload,
    Validator, ValidatorResources, WasmFeatures,
};

/// The most values a function's operand stack may hold here. Blocks with many
/// results can grow the stack by up to 1 000 values per operator; no real module
/// comes near this, and the rewrite's memory stays bounded (8 MiB per function).
pub(crate) const MAX_STACK: usize = 1 << 20;

/// The version of this rewrite; part of the compile cache's engine fingerprint, so a
/// changed rewrite never loads code compiled from an older one.
pub(crate) const REWRITE_VERSION: u32 = 1;

/// Why a module could not be rewritten.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NanRewriteError {
    /// The module does not parse or validate.
    #[error("invalid module: {0}")]
    Invalid(#[from] wasmparser::BinaryReaderError),
    /// Re-encoding an instruction failed.
    #[error("could not re-encode the module: {0}")]
    Encode(String),
    /// The simulated operand stack went out of step with the validator's (a bug
    /// here, reported rather than trusted).
    #[error("NaN rewrite: operand stack out of step at offset {0}")]
    OutOfStep(usize),
    /// A component, not a core module.
    #[error("not a core WebAssembly module")]
    NotAModule,
    /// A function's operand stack grows past [`MAX_STACK`] values.
    #[error("a function's operand stack grows past {MAX_STACK} values (at offset {0})")]
    TooDeep(usize),
    /// Canonicalising a function's NaNs makes it larger than wasmtime compiles.
    #[error(
        "function {index} (in code order) grows to {bytes} bytes once its NaNs are \
         canonicalised, over wasmtime's limit of {max} bytes a function: it has too many \
         float operations whose results can be seen; split it into smaller functions",
        max = super::rewrite::MAX_FUNCTION_BODY
    )]
    FunctionTooLarge { index: usize, bytes: usize },
    /// Canonicalising the module's NaNs makes it larger than
    /// [`MAX_REWRITTEN`](super::rewrite::MAX_REWRITTEN).
    #[error(
        "the module grows past {} MiB once its NaNs are canonicalised (each float \
         operation whose result can be seen, and every float SIMD operation, gets a \
         sequence of its own): use fewer of them, or split the job",
        super::rewrite::MAX_REWRITTEN >> 20
    )]
    ModuleTooLarge,
}

/// The type of a NaN-producing result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    F32,
    F64,
    F32x4,
    F64x2,
}

/// What the rewrite found and did (for tests and `bench sandbox`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NanSummary {
    /// Scalar NaN-producing operators in the module.
    pub scalar_sites: u64,
    /// Those whose result may be seen, so canonicalised.
    pub scalar_canonicalised: u64,
    /// SIMD NaN-producing operators (always canonicalised).
    pub simd_sites: u64,
}

/// A rewritten module and what was done to it.
#[derive(Debug, Clone)]
pub(crate) struct Rewritten {
    /// The module to compile (the input itself when nothing was canonicalised).
    pub wasm: Vec<u8>,
    pub summary: NanSummary,
}

/// Canonicalises the NaNs of `wasm` that can be seen (see the module doc).
pub(crate) fn canonicalise_observable_nans(wasm: &[u8]) -> Result<Rewritten, NanRewriteError> {
    let (plans, summary) = analyse_module(wasm)?;
    if plans.iter().all(|p| p.sites.is_empty()) {
        return Ok(Rewritten {
            wasm: wasm.to_vec(),
            summary,
        });
    }
    Ok(Rewritten {
        wasm: emit(wasm, &plans, super::rewrite::MAX_REWRITTEN)?,
        summary,
    })
}

/// Where one function gets canonicalisation sequences.
#[derive(Debug, Default)]
struct FuncPlan {
    /// (operator index within the body, type), in operator order.
    sites: Vec<(u32, Kind)>,
    /// Parameters plus declared locals: the first scratch local's index.
    locals: u32,
}

/// Validates the module and plans every function body, in code-section order.
fn analyse_module(wasm: &[u8]) -> Result<(Vec<FuncPlan>, NanSummary), NanRewriteError> {
    let mut validator = Validator::new_with_features(WasmFeatures::all());
    let mut allocs = FuncValidatorAllocations::default();
    let mut plans = Vec::new();
    let mut summary = NanSummary::default();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        if let Payload::Version { encoding, .. } = &payload
            && *encoding != wasmparser::Encoding::Module
        {
            return Err(NanRewriteError::NotAModule);
        }
        match validator.payload(&payload)? {
            ValidPayload::Func(func, body) => {
                let mut func = func.into_validator(allocs);
                plans.push(analyse_function(&mut func, &body, &mut summary)?);
                allocs = func.into_allocations();
            }
            ValidPayload::End(_) => break,
            _ => {}
        }
    }
    Ok((plans, summary))
}

/// The NaN-producing operators (see the module doc) and their result types.
fn nan_site(op: &Operator<'_>) -> Option<Kind> {
    use Operator as O;
    Some(match op {
        O::F32Add
        | O::F32Sub
        | O::F32Mul
        | O::F32Div
        | O::F32Min
        | O::F32Max
        | O::F32Sqrt
        | O::F32Ceil
        | O::F32Floor
        | O::F32Trunc
        | O::F32Nearest
        | O::F32DemoteF64 => Kind::F32,
        O::F64Add
        | O::F64Sub
        | O::F64Mul
        | O::F64Div
        | O::F64Min
        | O::F64Max
        | O::F64Sqrt
        | O::F64Ceil
        | O::F64Floor
        | O::F64Trunc
        | O::F64Nearest
        | O::F64PromoteF32 => Kind::F64,
        O::F32x4Add
        | O::F32x4Sub
        | O::F32x4Mul
        | O::F32x4Div
        | O::F32x4Min
        | O::F32x4Max
        | O::F32x4Sqrt
        | O::F32x4Ceil
        | O::F32x4Floor
        | O::F32x4Trunc
        | O::F32x4Nearest
        | O::F32x4DemoteF64x2Zero
        | O::F32x4RelaxedMadd
        | O::F32x4RelaxedNmadd
        | O::F32x4RelaxedMin
        | O::F32x4RelaxedMax => Kind::F32x4,
        O::F64x2Add
        | O::F64x2Sub
        | O::F64x2Mul
        | O::F64x2Div
        | O::F64x2Min
        | O::F64x2Max
        | O::F64x2Sqrt
        | O::F64x2Ceil
        | O::F64x2Floor
        | O::F64x2Trunc
        | O::F64x2Nearest
        | O::F64x2PromoteLowF32x4
        | O::F64x2RelaxedMadd
        | O::F64x2RelaxedNmadd
        | O::F64x2RelaxedMin
        | O::F64x2RelaxedMax => Kind::F64x2,
        _ => return None,
    })
}

/// How an operator treats the sites its operands carry.
enum Flow {
    /// A NaN-producing operator: operands insensitive, the result a new site.
    Site(Kind),
    /// `neg`, `abs`: the result carries the operand's sites.
    Forward,
    /// The first operand forwards, the second (the sign source) is sensitive.
    CopySign,
    /// `select`: the result carries either value operand's sites.
    Select,
    LocalGet(u32),
    LocalSet(u32),
    LocalTee(u32),
    /// The result does not depend on a NaN's payload or sign.
    Insensitive,
    /// Anything else: every operand is a sensitive use.
    Sensitive,
}

fn flow(op: &Operator<'_>) -> Flow {
    use Operator as O;
    if let Some(kind) = nan_site(op) {
        return Flow::Site(kind);
    }
    match op {
        O::F32Neg | O::F32Abs | O::F64Neg | O::F64Abs => Flow::Forward,
        O::F32Copysign | O::F64Copysign => Flow::CopySign,
        O::Select | O::TypedSelect { .. } => Flow::Select,
        O::LocalGet { local_index } => Flow::LocalGet(*local_index),
        O::LocalSet { local_index } => Flow::LocalSet(*local_index),
        O::LocalTee { local_index } => Flow::LocalTee(*local_index),
        O::Drop
        | O::F32Eq
        | O::F32Ne
        | O::F32Lt
        | O::F32Gt
        | O::F32Le
        | O::F32Ge
        | O::F64Eq
        | O::F64Ne
        | O::F64Lt
        | O::F64Gt
        | O::F64Le
        | O::F64Ge
        | O::I32TruncF32S
        | O::I32TruncF32U
        | O::I32TruncF64S
        | O::I32TruncF64U
        | O::I64TruncF32S
        | O::I64TruncF32U
        | O::I64TruncF64S
        | O::I64TruncF64U
        | O::I32TruncSatF32S
        | O::I32TruncSatF32U
        | O::I32TruncSatF64S
        | O::I32TruncSatF64U
        | O::I64TruncSatF32S
        | O::I64TruncSatF32U
        | O::I64TruncSatF64S
        | O::I64TruncSatF64U => Flow::Insensitive,
        _ => Flow::Sensitive,
    }
}

/// The flow graph of one function: an edge `a -> b` means "whatever sees `a` may
/// see the bits of `b`". Nodes are sites, locals and `select` merges.
#[derive(Default)]
struct Graph {
    /// Per node: the index into `sites` plus one, or 0 for a local or a merge.
    nodes: Vec<u32>,
    edges: Vec<(u32, u32)>,
    /// Nodes that reach a sensitive use directly.
    roots: Vec<u32>,
    /// Local index -> its node, created on first use.
    locals: HashMap<u32, u32>,
    /// Every site: (operator index, type, node; `None` for SIMD sites).
    sites: Vec<(u32, Kind, Option<u32>)>,
}

type Value = Option<u32>;

impl Graph {
    fn node(&mut self, site: u32) -> u32 {
        let id = u32::try_from(self.nodes.len()).unwrap_or(u32::MAX);
        self.nodes.push(site);
        id
    }

    fn site(&mut self, at: u32, kind: Kind) -> Value {
        let index = u32::try_from(self.sites.len()).unwrap_or(u32::MAX);
        let scalar = matches!(kind, Kind::F32 | Kind::F64);
        let node = scalar.then(|| self.node(index.saturating_add(1)));
        self.sites.push((at, kind, node));
        node
    }

    fn local(&mut self, index: u32) -> u32 {
        if let Some(&node) = self.locals.get(&index) {
            return node;
        }
        let node = self.node(0);
        self.locals.insert(index, node);
        node
    }

    fn sensitive(&mut self, v: Value) {
        if let Some(v) = v {
            self.roots.push(v);
        }
    }

    fn flows(&mut self, into: u32, v: Value) {
        if let Some(v) = v
            && v != into
        {
            self.edges.push((into, v));
        }
    }

    fn merge(&mut self, a: Value, b: Value) -> Value {
        match (a, b) {
            (None, v) | (v, None) => v,
            (Some(a), Some(b)) if a == b => Some(a),
            (a, b) => {
                let node = self.node(0);
                self.flows(node, a);
                self.flows(node, b);
                Some(node)
            }
        }
    }

    /// Marks every node reachable from a root; returns the marks.
    fn seen(&mut self) -> Vec<bool> {
        let n = self.nodes.len();
        self.edges.sort_unstable();
        // Compressed adjacency: edges of node i are edges[start[i]..start[i + 1]].
        let mut start = vec![0usize; n + 1];
        for &(from, _) in &self.edges {
            start[from as usize + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut seen = vec![false; n];
        let mut todo = std::mem::take(&mut self.roots);
        while let Some(node) = todo.pop() {
            let i = node as usize;
            if seen[i] {
                continue;
            }
            seen[i] = true;
            todo.extend(self.edges[start[i]..start[i + 1]].iter().map(|&(_, to)| to));
        }
        seen
    }
}

/// Validates one function body and plans its canonicalisation.
fn analyse_function(
    func: &mut FuncValidator<ValidatorResources>,
    body: &FunctionBody<'_>,
    summary: &mut NanSummary,
) -> Result<FuncPlan, NanRewriteError> {
    let mut reader = body.get_binary_reader();
    func.read_locals(&mut reader)?;
    let locals = func.len_locals();
    let mut ops = body.get_operators_reader()?;
    let mut graph = Graph::default();
    let mut stack: Vec<Value> = Vec::new();
    let mut operands: Vec<Value> = Vec::new();
    let mut index: u32 = 0;
    while !ops.eof() {
        let (op, offset) = ops.read_with_offset()?;
        let out_of_step = NanRewriteError::OutOfStep(offset);
        // Arity first: it reads the control stack as it is before the operator.
        let arity = op.operator_arity(&*func);
        let before = func.operand_stack_height() as usize;
        func.op(offset, &op)?;
        let after = func.operand_stack_height() as usize;
        let (pops, pushes) = arity.ok_or(NanRewriteError::OutOfStep(offset))?;
        let (pops, pushes) = (pops as usize, pushes as usize);
        // Values the operator removed from the stack: its operands (fewer in
        // unreachable code, where it pops from the polymorphic bottom), and under
        // them whatever a branch, `return` or `unreachable` discards.
        let consumed = (before + pushes)
            .checked_sub(after)
            .filter(|&c| c <= stack.len() && before == stack.len())
            .ok_or(NanRewriteError::OutOfStep(offset))?;
        let taken = pops.min(consumed);
        operands.clear();
        operands.resize(pops - taken, None);
        operands.extend_from_slice(&stack[stack.len() - taken..]);
        stack.truncate(stack.len() - consumed);
        let base = stack.len();
        match flow(&op) {
            Flow::Site(kind) => {
                let v = graph.site(index, kind);
                stack.push(v);
            }
            Flow::Forward if pops == 1 => stack.push(operands[0]),
            Flow::CopySign if pops == 2 => {
                graph.sensitive(operands[1]);
                stack.push(operands[0]);
            }
            Flow::Select if pops == 3 => {
                graph.sensitive(operands[2]);
                let v = graph.merge(operands[0], operands[1]);
                stack.push(v);
            }
            Flow::LocalGet(i) => {
                let node = graph.local(i);
                stack.push(Some(node));
            }
            Flow::LocalSet(i) if pops == 1 => {
                let node = graph.local(i);
                graph.flows(node, operands[0]);
            }
            Flow::LocalTee(i) if pops == 1 => {
                let node = graph.local(i);
                graph.flows(node, operands[0]);
                stack.push(operands[0]);
            }
            Flow::Insensitive => stack.resize(base + pushes, None),
            _ => {
                for &v in &operands {
                    graph.sensitive(v);
                }
                stack.resize(base + pushes, None);
            }
        }
        if stack.len() != after || stack.len() != base + pushes {
            return Err(out_of_step);
        }
        if stack.len() > MAX_STACK {
            return Err(NanRewriteError::TooDeep(offset));
        }
        index = index.saturating_add(1);
    }
    ops.finish()?;

    let seen = graph.seen();
    let mut sites = Vec::new();
    for &(at, kind, node) in &graph.sites {
        let canonicalise = match node {
            None => {
                summary.simd_sites += 1;
                true
            }
            Some(node) => {
                summary.scalar_sites += 1;
                let yes = seen[node as usize];
                summary.scalar_canonicalised += u64::from(yes);
                yes
            }
        };
        if canonicalise {
            sites.push((at, kind));
        }
    }
    Ok(FuncPlan { sites, locals })
}

const CANONICAL_F32: u32 = 0x7fc0_0000;
const CANONICAL_F64: u64 = 0x7ff8_0000_0000_0000;

/// The module with its code section rewritten after `plans`; every other byte as it
/// was.
/// The module with every plan's sequences inserted; `max` bytes at most (a module
/// that would pass it is refused: [`NanRewriteError::ModuleTooLarge`]).
fn emit(wasm: &[u8], plans: &[FuncPlan], max: usize) -> Result<Vec<u8>, NanRewriteError> {
    let mut size = wasm.len();
    super::rewrite::rewrite_code_section(wasm, |index, body| {
        let Some(plan) = plans.get(index).filter(|p| !p.sites.is_empty()) else {
            return Ok(None);
        };
        let bytes = instrument(body, plan)?.into_raw_body();
        if bytes.len() > super::rewrite::MAX_FUNCTION_BODY {
            return Err(NanRewriteError::FunctionTooLarge {
                index,
                bytes: bytes.len(),
            });
        }
        size += bytes.len().saturating_sub(body.range().len());
        if size > max {
            return Err(NanRewriteError::ModuleTooLarge);
        }
        Ok(Some(bytes))
    })
}

/// One function body with the canonicalisation sequences of `plan` inserted.
fn instrument(body: &FunctionBody<'_>, plan: &FuncPlan) -> Result<Function, NanRewriteError> {
    let enc = |e: wasm_encoder::reencode::Error| NanRewriteError::Encode(e.to_string());
    let mut re = RoundtripReencoder;
    let (mut locals, _) = super::rewrite::declared_locals(body, NanRewriteError::Encode)?;
    // Scratch locals, one per type used, after every existing local.
    let used = |slot: usize| {
        plan.sites.iter().any(|&(_, kind)| {
            slot == match kind {
                Kind::F32 => 0,
                Kind::F64 => 1,
                Kind::F32x4 | Kind::F64x2 => 2,
            }
        })
    };
    let scratch = super::rewrite::add_scratch(
        &mut locals,
        plan.locals,
        [
            (ValType::F32, used(0)),
            (ValType::F64, used(1)),
            (ValType::V128, used(2)),
        ],
    );
    let mut f = Function::new(locals);
    let mut ops = body.get_operators_reader()?;
    let mut sites = plan.sites.iter().peekable();
    let mut index: u32 = 0;
    while !ops.eof() {
        f.instruction(&re.parse_instruction(&mut ops).map_err(enc)?);
        while let Some(&&(at, kind)) = sites.peek() {
            if at != index {
                break;
            }
            sites.next();
            let slot = match kind {
                Kind::F32 => 0,
                Kind::F64 => 1,
                Kind::F32x4 | Kind::F64x2 => 2,
            };
            let t = scratch[slot]
                .ok_or_else(|| NanRewriteError::Encode("no scratch local for a site".into()))?;
            f.instruction(&Instruction::LocalTee(t));
            f.instruction(&match kind {
                Kind::F32 => Instruction::F32Const(wasm_encoder::Ieee32::new(CANONICAL_F32)),
                Kind::F64 => Instruction::F64Const(wasm_encoder::Ieee64::new(CANONICAL_F64)),
                Kind::F32x4 => Instruction::V128Const(splat(u128::from(CANONICAL_F32), 32)),
                Kind::F64x2 => Instruction::V128Const(splat(u128::from(CANONICAL_F64), 64)),
            });
            f.instruction(&Instruction::LocalGet(t));
            f.instruction(&Instruction::LocalGet(t));
            match kind {
                Kind::F32 => {
                    f.instruction(&Instruction::F32Eq);
                    f.instruction(&Instruction::Select);
                }
                Kind::F64 => {
                    f.instruction(&Instruction::F64Eq);
                    f.instruction(&Instruction::Select);
                }
                Kind::F32x4 => {
                    f.instruction(&Instruction::F32x4Eq);
                    f.instruction(&Instruction::V128Bitselect);
                }
                Kind::F64x2 => {
                    f.instruction(&Instruction::F64x2Eq);
                    f.instruction(&Instruction::V128Bitselect);
                }
            }
        }
        index = index.saturating_add(1);
    }
    Ok(f)
}

/// `lane` repeated across 128 bits, as `v128.const` takes it.
fn splat(lane: u128, bits: u32) -> i128 {
    let mut v = 0u128;
    let mut at = 0;
    while at < 128 {
        v |= lane << at;
        at += bits;
    }
    v as i128
}

#[cfg(test)]
mod tests;
