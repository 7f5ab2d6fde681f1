//! The ABI v1 call sequence (see `docs/ABI.md`), run on the per-call path of
//! [`exec`](super::exec): `peergrid_alloc(len)` returns a buffer the host fills with
//! the input; the entry point takes `(ptr, len)` and returns a pointer to a 12-byte
//! descriptor `[status, ptr, len]` (little-endian u32s); status 0 means the bytes are
//! the output, 1 that they are the job's error message.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::Store;

use super::exec::{self, HostState, MAX_MESSAGE, truncate};
use super::limits::{ChunkControl, Limits};
use super::outcome::{Execution, Outcome, TrapKind};
use super::{Inner, JobModule};

/// Which ABI v1 entry point to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// `peergrid_run`: one chunk.
    Run,
    /// `peergrid_split`: params to chunk inputs.
    Split,
    /// `peergrid_merge`: chunk outputs to the result.
    Merge,
}

impl Entry {
    /// The export's name.
    pub fn export_name(self) -> &'static str {
        match self {
            Self::Run => "peergrid_run",
            Self::Split => "peergrid_split",
            Self::Merge => "peergrid_merge",
        }
    }

    fn present_in(self, module: &JobModule) -> bool {
        match self {
            Self::Run => true,
            Self::Split => module.has_split,
            Self::Merge => module.has_merge,
        }
    }
}

/// Runs one ABI v1 entry point and classifies how it ended.
pub(crate) fn call(
    inner: &Inner,
    module: &JobModule,
    entry: Entry,
    input: &[u8],
    limits: &Limits,
    control: Option<Arc<ChunkControl>>,
) -> Execution {
    let started = Instant::now();
    let invalid = |reason: String| Execution {
        outcome: Outcome::Invalid(reason),
        fuel_used: 0,
        elapsed: started.elapsed(),
        logs: Vec::new(),
    };
    if !entry.present_in(module) {
        return invalid(format!(
            "the module does not export {}",
            entry.export_name()
        ));
    }
    let Ok(len) = u32::try_from(input.len()) else {
        return invalid(format!(
            "input of {} bytes is larger than a 32-bit module can address",
            input.len()
        ));
    };
    let ran = exec::run_guarded(inner, limits, control, async |store| {
        invoke(store, module, entry, input, len, limits).await
    });
    exec::execution(started, ran, |outcome| outcome)
}

fn abi_violation(message: impl Into<String>) -> Outcome {
    Outcome::Trap {
        kind: TrapKind::AbiViolation,
        message: message.into(),
    }
}

/// The call sequence. `Err` is a trap or instantiation error, classified by the
/// caller; ABI violations are returned as outcomes directly.
async fn invoke(
    store: &mut Store<HostState>,
    module: &JobModule,
    entry: Entry,
    input: &[u8],
    len: u32,
    limits: &Limits,
) -> wasmtime::Result<Outcome> {
    let instance = module.pre.instantiate_async(&mut *store).await?;
    let Some(memory) = instance.get_memory(&mut *store, "memory") else {
        return Ok(abi_violation("the module exports no memory"));
    };
    let alloc = instance.get_typed_func::<u32, u32>(&mut *store, "peergrid_alloc")?;
    let func = instance.get_typed_func::<(u32, u32), u32>(&mut *store, entry.export_name())?;

    let ptr = alloc.call_async(&mut *store, len).await?;
    if memory.write(&mut *store, ptr as usize, input).is_err() {
        return Ok(abi_violation(format!(
            "peergrid_alloc({len}) returned {ptr:#x}, outside the module's memory"
        )));
    }
    let descriptor = func.call_async(&mut *store, (ptr, len)).await?;
    let mut words = [0u8; 12];
    if memory
        .read(&*store, descriptor as usize, &mut words)
        .is_err()
    {
        return Ok(abi_violation(format!(
            "{} returned descriptor {descriptor:#x}, outside the module's memory",
            entry.export_name()
        )));
    }
    let word = |i: usize| u32::from_le_bytes([words[i], words[i + 1], words[i + 2], words[i + 3]]);
    let (status, out_ptr, out_len) = (word(0), word(4), word(8));
    if u64::from(out_len) > limits.max_output_bytes {
        return Ok(Outcome::Trap {
            kind: TrapKind::OutputTooLarge,
            message: format!(
                "{} returned {out_len} bytes, over the limit of {} bytes",
                entry.export_name(),
                limits.max_output_bytes
            ),
        });
    }
    let mut out = vec![0u8; out_len as usize];
    if memory.read(&*store, out_ptr as usize, &mut out).is_err() {
        return Ok(abi_violation(format!(
            "{} returned {out_len} bytes at {out_ptr:#x}, outside the module's memory",
            entry.export_name()
        )));
    }
    Ok(match status {
        0 => Outcome::Ok(out),
        1 => Outcome::Trap {
            kind: TrapKind::JobError,
            message: truncate(String::from_utf8_lossy(&out).into_owned(), MAX_MESSAGE),
        },
        other => abi_violation(format!(
            "{} returned status word {other}; ABI v1 knows 0 (ok) and 1 (error)",
            entry.export_name()
        )),
    })
}
