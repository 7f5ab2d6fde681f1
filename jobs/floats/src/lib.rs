//! # floats: float arithmetic whose output holds NaN bits
//!
//! Not an example to learn from: a test of the sandbox's determinism promise for
//! floats (`docs/ABI.md`, Determinism). A NaN's bits (sign and payload) are the one
//! part of IEEE arithmetic that CPUs disagree on — x86 makes `0/0` the negative
//! "default NaN", Arm the positive one, and which input NaN propagates differs too —
//! so this job writes the raw bits of NaN-producing operations into its output, where
//! any difference between peers would show.
//!
//! **Params** (JSON, every field optional):
//! - `values`: the operands, as IEEE-754 `f64` bit patterns (so NaNs with any sign and
//!   payload can be given); default: a mix of zeros, infinities, signed NaNs with
//!   payloads and ordinary numbers.
//! - `chunks`: how many chunks (1 to 64, default 4); chunk `k` uses the values
//!   rotated by `k`.
//!
//! **Run**: for every pair of operands `(a, b)`, in `f64` and in `f32`: `a + b`,
//! `a − b`, `a · b`, `a / b`, `√a`, `min`, `max`, `a.copysign(b)`, `|a|`, `−a`, a
//! fused `a · b + a` and the `f32`→`f64` round trip; then the same sums over whole
//! arrays (a loop the compiler vectorises with `simd128`). Outputs every result's
//! bits, in order.
//!
//! **Merge**: all chunk outputs, concatenated, as raw little-endian bytes.

use std::hint::black_box;

use serde::{Deserialize, Serialize};

/// One line about the job.
pub const ABOUT: &str = "Float arithmetic whose output holds NaN bits; for determinism tests";

/// The default params, as JSON.
pub const DEFAULT_PARAMS: &str = r#"{"chunks": 4}"#;

/// One line per param.
pub const PARAMS_HELP: &str = "\
values: operands as f64 bit patterns (a mix with signed NaN payloads)
chunks: number of chunks, 1 to 64 (4)";

/// The default operands: zeros, infinities, NaNs of both signs with payloads, and
/// ordinary numbers.
pub const DEFAULT_VALUES: [u64; 10] = [
    0x0000_0000_0000_0000, // +0
    0x8000_0000_0000_0000, // −0
    0x7ff0_0000_0000_0000, // +inf
    0xfff0_0000_0000_0000, // −inf
    0x7ff8_0000_0000_0123, // +qNaN, payload 0x123
    0xfff4_0000_0000_0005, // −sNaN, payload
    0x3ff8_0000_0000_0000, // 1.5
    0xc000_0000_0000_0000, // −2
    0x7fef_ffff_ffff_ffff, // f64::MAX
    0x0000_0000_0000_0001, // smallest subnormal
];

/// The job's params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Operands as f64 bit patterns; empty means [`DEFAULT_VALUES`].
    pub values: Vec<u64>,
    /// Number of chunks.
    pub chunks: u32,
}

/// One chunk: the operands, as bit patterns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Input {
    /// Operands.
    pub values: Vec<u64>,
}

/// Makes one input per chunk, rotating the operands.
pub fn split(p: Params) -> Result<Vec<Input>, String> {
    let chunks = if p.chunks == 0 { 4 } else { p.chunks };
    if chunks > 64 {
        return Err(format!("chunks must be at most 64, got {chunks}"));
    }
    let values = if p.values.is_empty() {
        DEFAULT_VALUES.to_vec()
    } else {
        p.values
    };
    if values.len() > 256 {
        return Err(format!("at most 256 values, got {}", values.len()));
    }
    Ok((0..chunks as usize)
        .map(|k| {
            let mut v = values.clone();
            v.rotate_left(k % values.len());
            Input { values: v }
        })
        .collect())
}

fn f64_ops(a: f64, b: f64, out: &mut Vec<u64>) {
    let (a, b) = (black_box(a), black_box(b));
    for r in [
        a + b,
        a - b,
        a * b,
        a / b,
        a.sqrt(),
        a.min(b),
        a.max(b),
        a.copysign(b),
        a.abs(),
        -a,
        a.mul_add(b, a),
        f64::from(a as f32),
    ] {
        out.push(black_box(r).to_bits());
    }
}

fn f32_ops(a: f32, b: f32, out: &mut Vec<u64>) {
    let (a, b) = (black_box(a), black_box(b));
    for r in [
        a + b,
        a - b,
        a * b,
        a / b,
        a.sqrt(),
        a.min(b),
        a.max(b),
        a.copysign(b),
        a.abs(),
        -a,
        a.mul_add(b, a),
    ] {
        out.push(u64::from(black_box(r).to_bits()));
    }
}

/// Every result's bits.
pub fn run(input: Input) -> Result<Vec<u64>, String> {
    let values: Vec<f64> = input.values.iter().map(|&b| f64::from_bits(b)).collect();
    let mut out = Vec::new();
    for &a in &values {
        for &b in &values {
            f64_ops(a, b, &mut out);
            f32_ops(a as f32, b as f32, &mut out);
        }
    }
    // Whole-array arithmetic: vectorised with simd128.
    let n = values.len();
    let sums: Vec<f64> = (0..n)
        .map(|i| values[i] * values[(i + 1) % n] + values[i])
        .collect();
    out.extend(sums.iter().map(|x| x.to_bits()));
    let narrow: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    let quotients: Vec<f32> = (0..n).map(|i| narrow[i] / narrow[(i + 3) % n]).collect();
    out.extend(quotients.iter().map(|x| u64::from(x.to_bits())));
    Ok(out)
}

/// All chunk outputs, concatenated as little-endian bytes.
pub fn merge(outputs: Vec<Vec<u64>>) -> Result<Vec<u8>, String> {
    Ok(outputs
        .iter()
        .flatten()
        .flat_map(|b| b.to_le_bytes())
        .collect())
}

peergrid_sdk::export!(run: run, split: split, merge: merge);
