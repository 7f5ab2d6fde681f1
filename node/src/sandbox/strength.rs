//! Multiplications by 3, 5 and 9 become a shift and an add: a deterministic rewrite
//! of a module, run by [`rewrite::compile`](super::rewrite::compile) after
//! [`unroll`](super::unroll) and before Cranelift compiles it.
//!
//! # Why
//! Cranelift 0.135 lowers `imul` by any constant that is not a power of two to an
//! x86 `imul`, where LLVM uses `lea` (`x + 4x` in one instruction, on any port). In a
//! loop bound by the multiplier that is most of the gap to native: `montecarlo`'s
//! xoshiro256** multiplies by 5 and by 9 per sample, so 4 `imul`s a sample against
//! native code's 2, and ran 1.19× native with no checks at all. `x + (x << k)` is
//! lowered to one `lea`.
//!
//! # The contract
//! `iN.const c; iN.mul` with `c` 3, 5 or 9 becomes
//! `local.tee $t; local.get $t; iN.const k; iN.shl; iN.add` (`k` 1, 2 or 3), which
//! is the same value for every `x` (both wrap modulo 2^N). Behaviour is unchanged;
//! fuel grows by 3 for each such multiplication run, the same on every peer, as the
//! rewrite is a pure function of the module's bytes ([`STRENGTH_VERSION`], in the
//! compile cache's engine fingerprint). One scratch local per type used is appended
//! to a function. A module without such a multiplication comes back byte for byte.
//!
//! # Bounds
//! Each site grows by at most 8 bytes from at least 3, so a body at most triples; a
//! function that would pass wasmtime's size limit, or whose locals are at the shape
//! cap's ceiling, is left as it is. A module grows by at most
//! [`budget`](super::rewrite::budget) bytes in all: functions that would pass it are
//! left as they are, in code order (their multiplications cost no extra fuel; still
//! a pure function of the module's bytes). Memory is the output plus one function's
//! sites.

use wasm_encoder::{Function, Instruction, ValType};
use wasmparser::{FunctionBody, Operator, Parser, Payload};

use super::rewrite::MAX_FUNCTION_BODY;

/// The version of this rewrite; part of the compile cache's engine fingerprint.
pub(crate) const STRENGTH_VERSION: u32 = 2;

/// wasmtime's limit on a function's locals (parameters included).
const MAX_LOCALS: u64 = 50_000;

/// Why a module could not be rewritten (it does not parse; wasmtime refuses it too).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StrengthError {
    #[error("invalid module: {0}")]
    Invalid(#[from] wasmparser::BinaryReaderError),
    #[error("could not re-encode the module: {0}")]
    Encode(String),
}

/// The module with its multiplications by 3, 5 and 9 rewritten, and how many there
/// were.
pub(crate) fn reduce_multiplies(wasm: &[u8]) -> Result<(Vec<u8>, u64), StrengthError> {
    let params = params_per_body(wasm)?;
    let mut sites = 0;
    let mut budget = super::rewrite::budget(wasm.len());
    let out = super::rewrite::rewrite_code_section(wasm, |i, body| {
        let Some(&params) = params.get(i) else {
            return Ok::<_, StrengthError>(None);
        };
        let Some((bytes, n)) = rewrite_function(body, params)? else {
            return Ok(None);
        };
        let grown = bytes.len().saturating_sub(body.range().len());
        if grown > budget {
            return Ok(None);
        }
        budget -= grown;
        sites += n;
        Ok(Some(bytes))
    })?;
    if sites == 0 {
        return Ok((wasm.to_vec(), 0));
    }
    Ok((out, sites))
}

/// The number of parameters of each function with a body, in code-section order.
fn params_per_body(wasm: &[u8]) -> Result<Vec<u32>, StrengthError> {
    let mut types = Vec::new();
    let mut params = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        match payload? {
            Payload::TypeSection(reader) => {
                for group in reader {
                    for ty in group?.types() {
                        // A non-function type still takes a type index.
                        types.push(match &ty.composite_type.inner {
                            wasmparser::CompositeInnerType::Func(f) => {
                                u32::try_from(f.params().len()).unwrap_or(u32::MAX)
                            }
                            _ => u32::MAX,
                        });
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                for index in reader {
                    params.push(types.get(index? as usize).copied().unwrap_or(u32::MAX));
                }
            }
            Payload::CodeSectionStart { .. } => break,
            _ => {}
        }
    }
    Ok(params)
}

/// `(shift, is 64-bit)` for `iN.const c` with `c` 3, 5 or 9.
fn site(op: &Operator<'_>) -> Option<(u8, bool)> {
    let (value, wide) = match *op {
        Operator::I32Const { value } => (i64::from(value), false),
        Operator::I64Const { value } => (value, true),
        _ => return None,
    };
    let shift = match value {
        3 => 1,
        5 => 2,
        9 => 3,
        _ => return None,
    };
    Some((shift, wide))
}

/// One body rewritten, with how many sites; `None` if it has none or must stay as it
/// is (see the module doc).
fn rewrite_function(
    body: &FunctionBody<'_>,
    params: u32,
) -> Result<Option<(Vec<u8>, u64)>, StrengthError> {
    // Operator offsets (relative to the body) of `iN.const c` followed by `iN.mul`.
    let base = body.range().start;
    let bytes = body.as_bytes();
    let mut found = Vec::new();
    let mut ops = body.get_operators_reader()?;
    let mut pending: Option<(usize, u8, bool)> = None;
    let first_op = ops.original_position() - base;
    while !ops.eof() {
        let (op, offset) = ops.read_with_offset()?;
        let at = offset - base;
        let next = ops.original_position() - base;
        if let Some((start, shift, wide)) = pending.take() {
            let mul = if wide {
                matches!(op, Operator::I64Mul)
            } else {
                matches!(op, Operator::I32Mul)
            };
            if mul {
                found.push((start, next, shift, wide));
                continue;
            }
        }
        pending = site(&op).map(|(shift, wide)| (at, shift, wide));
    }
    if found.is_empty() {
        return Ok(None);
    }
    let (mut locals, declared) = super::rewrite::declared_locals(body, StrengthError::Encode)?;
    let declared = declared + u64::from(params);
    if declared + 2 > MAX_LOCALS {
        return Ok(None);
    }
    // One scratch local per type used, after every existing one.
    let used = |wide: bool| found.iter().any(|&(.., w)| w == wide);
    let scratch = super::rewrite::add_scratch(
        &mut locals,
        u32::try_from(declared).unwrap_or(u32::MAX),
        [(ValType::I32, used(false)), (ValType::I64, used(true))],
    );
    let mut f = Function::new(locals);
    let mut copied = first_op;
    for &(start, end, shift, wide) in &found {
        f.raw(bytes[copied..start].iter().copied());
        let t = scratch[usize::from(wide)]
            .ok_or_else(|| StrengthError::Encode("no scratch local for a site".into()))?;
        f.instruction(&Instruction::LocalTee(t));
        f.instruction(&Instruction::LocalGet(t));
        if wide {
            f.instruction(&Instruction::I64Const(i64::from(shift)));
            f.instruction(&Instruction::I64Shl);
            f.instruction(&Instruction::I64Add);
        } else {
            f.instruction(&Instruction::I32Const(i32::from(shift)));
            f.instruction(&Instruction::I32Shl);
            f.instruction(&Instruction::I32Add);
        }
        copied = end;
    }
    f.raw(bytes[copied..].iter().copied());
    let out = f.into_raw_body();
    if out.len() > MAX_FUNCTION_BODY {
        return Ok(None);
    }
    Ok(Some((out, found.len() as u64)))
}

#[cfg(test)]
mod tests;
