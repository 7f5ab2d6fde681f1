//! Runs a whole job on this machine, under exactly the sandbox and limits the grid
//! applies: the module's `split` on the params, every chunk's `run` (in parallel, one
//! fresh store each), then `merge` on the outputs in chunk order.
//!
//! `peergrid run`, `peergrid demo` and `peergrid bench sandbox` call it; it talks only
//! to the [`Sandbox`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::sandbox::{Execution, JobModule, Limits, Outcome, Sandbox};

/// Why a local run could not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The module has no `split`, so there are no chunk inputs.
    #[error(
        "the module exports no peergrid_split, so it cannot make its own chunk inputs; \
         give them as files with `peergrid submit --inputs`"
    )]
    NoSplit,
    /// `split` did not return inputs (bad params, trap, limit).
    #[error("split failed: {0}")]
    Split(Outcome),
    /// `split` returned no chunks at all.
    #[error("split returned no chunks; check the params")]
    NoChunks,
    /// `merge` failed.
    #[error("merge failed: {0}")]
    Merge(Outcome),
}

/// What a local run did.
#[derive(Debug)]
pub struct LocalReport {
    /// The split call.
    pub split: Execution,
    /// Every chunk's execution, in chunk order.
    pub chunks: Vec<Execution>,
    /// The merge call, when the module has one and every chunk succeeded.
    pub merge: Option<Execution>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

impl LocalReport {
    /// Chunks that did not end `Ok`, with their index.
    pub fn failures(&self) -> impl Iterator<Item = (usize, &Execution)> {
        self.chunks
            .iter()
            .enumerate()
            .filter(|(_, e)| !matches!(e.outcome, Outcome::Ok(_)))
    }

    /// Fuel used by all chunks together.
    pub fn chunk_fuel(&self) -> u64 {
        self.chunks.iter().map(|e| e.fuel_used).sum()
    }

    /// The merged result, when there is one.
    pub fn result(&self) -> Option<&[u8]> {
        match self.merge.as_ref().map(|m| &m.outcome) {
            Some(Outcome::Ok(bytes)) => Some(bytes),
            _ => None,
        }
    }

    /// Chunk outputs in order, when every chunk succeeded.
    pub fn outputs(&self) -> Option<Vec<&[u8]>> {
        self.chunks
            .iter()
            .map(|e| match &e.outcome {
                Outcome::Ok(out) => Some(out.as_slice()),
                _ => None,
            })
            .collect()
    }
}

/// Splits the params into chunk inputs with the module's `split`.
pub fn split(
    sandbox: &Sandbox,
    module: &JobModule,
    params: &[u8],
    limits: &Limits,
) -> Result<(Execution, Vec<Vec<u8>>), LocalError> {
    if !module.has_split {
        return Err(LocalError::NoSplit);
    }
    match sandbox.split(module, params, limits) {
        (_, Some(inputs)) if inputs.is_empty() => Err(LocalError::NoChunks),
        (exec, Some(inputs)) => Ok((exec, inputs)),
        (exec, None) => Err(LocalError::Split(exec.outcome)),
    }
}

/// Runs every chunk on up to `threads` threads; `progress` is called after each.
pub fn run_chunks(
    sandbox: &Sandbox,
    module: &JobModule,
    inputs: &[Vec<u8>],
    limits: &Limits,
    threads: usize,
    progress: &(dyn Fn() + Sync),
) -> Vec<Execution> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Execution>>> = Mutex::new(vec![None; inputs.len()]);
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, inputs.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(input) = inputs.get(i) else { break };
                    let exec = sandbox.run_chunk(module, input, limits);
                    results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(exec);
                    progress();
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .map(|e| {
            e.unwrap_or_else(|| Execution {
                outcome: Outcome::Invalid("chunk was not run".into()),
                fuel_used: 0,
                elapsed: Duration::ZERO,
                logs: Vec::new(),
            })
        })
        .collect()
}

/// Options of a local run.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Limits for each chunk.
    pub chunk_limits: Limits,
    /// Limits for split and merge.
    pub submitter_limits: Limits,
    /// How many chunks run at once.
    pub threads: usize,
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            chunk_limits: Limits::CHUNK,
            submitter_limits: Limits::SUBMITTER,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Runs a whole job: split, every chunk, merge (when every chunk succeeded).
/// `on_plan` is told the number of chunks once split is done; `progress` after each.
pub fn run_job(
    sandbox: &Sandbox,
    module: &JobModule,
    params: &[u8],
    options: &LocalOptions,
    on_plan: &dyn Fn(usize),
    progress: &(dyn Fn() + Sync),
) -> Result<LocalReport, LocalError> {
    let started = Instant::now();
    let (split_exec, inputs) = split(sandbox, module, params, &options.submitter_limits)?;
    on_plan(inputs.len());
    let chunks = run_chunks(
        sandbox,
        module,
        &inputs,
        &options.chunk_limits,
        options.threads,
        progress,
    );
    let mut report = LocalReport {
        split: split_exec,
        chunks,
        merge: None,
        elapsed: Duration::ZERO,
    };
    if module.has_merge
        && let Some(outputs) = report.outputs()
    {
        let merge = sandbox.merge(module, &outputs, &options.submitter_limits);
        if !matches!(merge.outcome, Outcome::Ok(_)) {
            return Err(LocalError::Merge(merge.outcome));
        }
        report.merge = Some(merge);
    }
    report.elapsed = started.elapsed();
    Ok(report)
}
