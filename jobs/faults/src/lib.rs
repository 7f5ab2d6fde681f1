//! # faults: a job that misbehaves on purpose
//!
//! Not an example to learn from: a tool for tests and benchmarks. Each chunk does what
//! its `mode` says, so the sandbox, the verifier and the grid can be tested against a
//! real Rust guest built with the real SDK.
//!
//! **Params** (JSON, every field optional):
//! - `chunks`: how many chunks (1 to 100000, default 4).
//! - `mode`: what the chosen chunks do (default `"ok"`):
//!   `ok` (return the chunk index), `panic` (panic with a message naming the chunk),
//!   `error` (return `Err`), `loop` (spin forever), `alloc` (allocate without bound),
//!   `recurse` (recurse without bound).
//! - `only`: apply `mode` only to this chunk index; the others are `ok` (default: all).
//!
//! **Merge**: the sum of the chunk indices as JSON (`{"chunks": n, "sum": …}`).

use std::hint::black_box;

use peergrid_sdk::Json;
use serde::{Deserialize, Serialize};

/// One line about the job.
pub const ABOUT: &str = "Misbehaves on purpose (panic, error, loop, memory bomb); for tests";

/// The default params, as JSON.
pub const DEFAULT_PARAMS: &str = r#"{"chunks": 4, "mode": "ok"}"#;

/// One line per param.
pub const PARAMS_HELP: &str = "\
chunks: number of chunks, 1 to 100000 (4)
mode: ok | panic | error | loop | alloc | recurse (ok)
only: apply mode to this chunk index only (all)";

/// What a chunk does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Return the chunk index.
    #[default]
    Ok,
    /// Panic with a message naming the chunk.
    Panic,
    /// Return `Err`.
    Error,
    /// Spin forever.
    Loop,
    /// Allocate without bound.
    Alloc,
    /// Recurse without bound.
    Recurse,
}

/// The job's params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Number of chunks.
    pub chunks: u32,
    /// What the chosen chunks do.
    pub mode: Mode,
    /// Only this chunk misbehaves.
    pub only: Option<u32>,
}

/// One chunk.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Input {
    /// The chunk's index.
    pub index: u32,
    /// What it does.
    pub mode: Mode,
}

/// The merged result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Summary {
    /// How many chunks.
    pub chunks: usize,
    /// Sum of their indices.
    pub sum: u64,
}

/// Makes one input per chunk.
pub fn split(p: Params) -> Result<Vec<Input>, String> {
    let chunks = if p.chunks == 0 { 4 } else { p.chunks };
    if chunks > 100_000 {
        return Err(format!("chunks must be at most 100000, got {chunks}"));
    }
    Ok((0..chunks)
        .map(|index| Input {
            index,
            mode: match p.only {
                Some(only) if only != index => Mode::Ok,
                _ => p.mode,
            },
        })
        .collect())
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    // black_box keeps the optimiser from turning this into a loop.
    black_box(recurse(black_box(depth + 1))) + 1
}

/// Does what the chunk's mode says.
pub fn run(input: Input) -> Result<u32, String> {
    match input.mode {
        Mode::Ok => Ok(input.index),
        Mode::Panic => panic!("chunk {} panicked on purpose", input.index),
        Mode::Error => Err(format!("chunk {} failed on purpose", input.index)),
        Mode::Loop => {
            let mut x = 0u64;
            loop {
                x = black_box(x.wrapping_add(1));
            }
        }
        Mode::Alloc => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(black_box(vec![1u8; 1 << 20]));
            }
        }
        Mode::Recurse => Ok(recurse(0) as u32),
    }
}

/// Sums the chunk indices.
pub fn merge(outputs: Vec<u32>) -> Result<Json<Summary>, String> {
    Ok(Json(Summary {
        chunks: outputs.len(),
        sum: outputs.iter().map(|&x| u64::from(x)).sum(),
    }))
}

peergrid_sdk::export!(run: run, split: split, merge: merge);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_chosen_chunk_misbehaves() {
        let inputs = split(Params {
            chunks: 3,
            mode: Mode::Error,
            only: Some(1),
        })
        .unwrap();
        assert_eq!(run(inputs[0]), Ok(0));
        assert_eq!(run(inputs[1]), Err("chunk 1 failed on purpose".into()));
        assert_eq!(merge(vec![0, 1, 2]).unwrap().0.sum, 3);
    }
}
