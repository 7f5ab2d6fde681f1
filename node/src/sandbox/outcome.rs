//! How a call ends: one typed [`Outcome`], classified from wasmtime's error so the
//! verifier can tell a bad job (deterministic: every honest peer sees the same) from
//! a bad or unlucky worker (timeouts, cancellation).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What kind of trap ended a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TrapKind {
    /// The guest panicked; the message is the guest's panic message.
    Panic,
    /// The job's function returned `Err`; the message is the job's.
    JobError,
    /// The wasm call stack was exhausted (unbounded recursion).
    StackOverflow,
    /// A load or store outside linear memory.
    MemoryOutOfBounds,
    /// Integer division by zero.
    DivisionByZero,
    /// Integer overflow in a trapping instruction.
    IntegerOverflow,
    /// A float that could not be converted to an integer.
    BadConversion,
    /// `unreachable` executed (an abort without a panic message).
    Unreachable,
    /// A bad indirect call (null, wrong signature, out of table bounds).
    IndirectCall,
    /// The output was larger than the limit.
    OutputTooLarge,
    /// The module broke ABI v1 at run time (bad pointers, bad status word).
    AbiViolation,
    /// Any other trap.
    Other,
}

impl TrapKind {
    /// Maps a wasmtime trap code to a kind.
    pub(crate) fn from_wasmtime(trap: wasmtime::Trap) -> Self {
        use wasmtime::Trap as T;
        match trap {
            T::StackOverflow => Self::StackOverflow,
            T::MemoryOutOfBounds | T::HeapMisaligned => Self::MemoryOutOfBounds,
            T::IntegerDivisionByZero => Self::DivisionByZero,
            T::IntegerOverflow => Self::IntegerOverflow,
            T::BadConversionToInteger => Self::BadConversion,
            T::UnreachableCodeReached => Self::Unreachable,
            T::TableOutOfBounds | T::IndirectCallToNull | T::BadSignature => Self::IndirectCall,
            _ => Self::Other,
        }
    }

    /// A short lowercase name, for summaries and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Panic => "panic",
            Self::JobError => "job_error",
            Self::StackOverflow => "stack_overflow",
            Self::MemoryOutOfBounds => "memory_out_of_bounds",
            Self::DivisionByZero => "division_by_zero",
            Self::IntegerOverflow => "integer_overflow",
            Self::BadConversion => "bad_conversion",
            Self::Unreachable => "unreachable",
            Self::IndirectCall => "indirect_call",
            Self::OutputTooLarge => "output_too_large",
            Self::AbiViolation => "abi_violation",
            Self::Other => "other",
        }
    }
}

/// How one call ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The call returned this output.
    Ok(Vec<u8>),
    /// The call trapped (or the job reported an error).
    Trap {
        /// What kind of trap.
        kind: TrapKind,
        /// A deterministic message (no backtraces, no addresses).
        message: String,
    },
    /// The fuel limit was reached.
    OutOfFuel,
    /// The module wanted more memory than the limit allows.
    MemoryLimit,
    /// The wall-clock guard stopped the call.
    Timeout,
    /// The call was cancelled.
    Cancelled,
    /// The module could not be run at all (invalid, or missing the entry point).
    Invalid(String),
}

impl Outcome {
    /// Whether every honest peer running the same call gets the same outcome, so the
    /// outcome itself can be verified by agreement. Timeouts and cancellations depend
    /// on the machine and are not.
    pub fn is_deterministic(&self) -> bool {
        !matches!(self, Self::Timeout | Self::Cancelled)
    }

    /// A short lowercase name: `ok`, `trap`, `out_of_fuel`, ...
    pub fn label(&self) -> &'static str {
        match self {
            Self::Ok(_) => "ok",
            Self::Trap { .. } => "trap",
            Self::OutOfFuel => "out_of_fuel",
            Self::MemoryLimit => "memory_limit",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::Invalid(_) => "invalid",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ok(out) => write!(f, "ok ({} bytes)", out.len()),
            Self::Trap { kind, message } => write!(f, "trap ({}): {message}", kind.as_str()),
            Self::OutOfFuel => f.write_str("out of fuel (raise --fuel, or split the job finer)"),
            Self::MemoryLimit => {
                f.write_str("memory limit reached (raise --memory, or use less memory per chunk)")
            }
            Self::Timeout => f.write_str("stopped by the wall-clock guard (timeout)"),
            Self::Cancelled => f.write_str("cancelled"),
            Self::Invalid(reason) => write!(f, "invalid module: {reason}"),
        }
    }
}

/// The record of one call: its outcome and what it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    /// How it ended.
    pub outcome: Outcome,
    /// Fuel consumed (deterministic for deterministic outcomes).
    pub fuel_used: u64,
    /// Wall time from instantiation to return.
    pub elapsed: Duration,
    /// Lines the guest logged (bounded; see `docs/ABI.md`).
    pub logs: Vec<String>,
}
