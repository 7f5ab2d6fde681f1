//! The WebAssembly sandbox: where every chunk, split and merge runs.
//!
//! # What it owns
//! One wasmtime [`Engine`] per process, configured for determinism (NaN
//! canonicalisation, no threads, deterministic relaxed SIMD, fuel metering, epoch
//! interruption as the wall-clock guard, a bounded wasm stack), one [`Linker`] with the
//! only host call a job may import (`peergrid.log`), the compile cache (in memory and on
//! disk, see [`cache`]) and the epoch ticker thread.
//!
//! # Message flow
//! - Callers (`peergrid run`, later the worker and the submitter's scheduler) hand
//!   module bytes to [`Sandbox::load`]; [`validate`] checks the module against ABI v1
//!   and the compile cache returns a ready [`JobModule`].
//! - [`Sandbox::call`] runs one entry point (`run`, `split` or `merge`) in a fresh
//!   `Store` with every limit of [`Limits`] installed by one function
//!   ([`exec::new_store`]), and returns an [`Execution`]: one typed [`Outcome`], the
//!   fuel used, the time taken and the guest's log lines. Fuel decides outcomes (so
//!   honest peers agree byte for byte); epochs only stop runaway wall time and carry
//!   cancellation.
//! - `call` blocks the thread: async callers run it on a blocking thread.

pub mod cache;
mod exec;
pub mod gate;
mod limits;
pub mod metrics;
mod outcome;
pub mod validate;

use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::{Config, Engine, Linker, OptLevel};

pub use exec::Entry;
pub use gate::Gate;
pub use limits::{ChunkControl, Limits};
pub use outcome::{Execution, Outcome, TrapKind};
pub use validate::{AbiReport, ModuleError, ModuleInfo};

use self::cache::{CompileCache, ModuleMemo};
use self::exec::{HostState, Ticker};
use self::metrics::SandboxMetrics;

/// The largest wasm stack a guest may use. Unbounded recursion ends in a
/// `StackOverflow` trap well before the host thread's own stack is at risk.
pub const MAX_WASM_STACK: usize = 1024 * 1024;

/// How the sandbox is set up.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where compiled modules are cached between runs; `None` keeps them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Fuel metering. Always on for real work (fuel decides outcomes); turned off only
    /// by `peergrid bench sandbox` to measure what metering costs.
    pub fuel: bool,
    /// Epoch interruption (wall-clock guard, cancellation). Always on for real work;
    /// turned off only by `peergrid bench sandbox` to measure what it costs.
    pub epochs: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            fuel: true,
            epochs: true,
        }
    }
}

/// Errors setting up the sandbox itself (not a job's fault).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// wasmtime refused the engine configuration.
    #[error("could not create the WebAssembly engine: {0}")]
    Engine(String),
    /// The compile cache directory could not be prepared.
    #[error("could not prepare the compile cache in {dir}: {source}")]
    Cache {
        /// The directory.
        dir: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A module that passed ABI v1 validation, compiled and ready to run.
#[derive(Clone)]
pub struct JobModule {
    /// BLAKE3 hash of the module's binary, lowercase hex.
    pub hash: String,
    /// Size of the module's binary in bytes.
    pub size: usize,
    /// Whether the module exports `peergrid_split`.
    pub has_split: bool,
    /// Whether the module exports `peergrid_merge`.
    pub has_merge: bool,
    module: wasmtime::Module,
}

impl std::fmt::Debug for JobModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobModule")
            .field("hash", &self.hash)
            .field("size", &self.size)
            .field("has_split", &self.has_split)
            .field("has_merge", &self.has_merge)
            .finish_non_exhaustive()
    }
}

/// The sandbox. Cheap to clone; every clone shares the engine and caches.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<HostState>,
    disk: Option<CompileCache>,
    memo: ModuleMemo,
    ticker: Ticker,
    fuel: bool,
    epochs: bool,
    metrics: SandboxMetrics,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("disk_cache", &self.inner.disk)
            .finish_non_exhaustive()
    }
}

/// The engine configuration every peer uses. Changing it changes fuel figures and
/// cache keys, so it is one function.
fn engine_config(fuel: bool, epochs: bool) -> Config {
    let mut config = Config::new();
    config
        .cranelift_opt_level(OptLevel::Speed)
        // Determinism: every NaN a guest produces has the canonical bit pattern.
        .cranelift_nan_canonicalization(true)
        // Relaxed SIMD instructions take their deterministic semantics on every CPU.
        .wasm_relaxed_simd(true)
        .relaxed_simd_deterministic(true)
        // Shared memories and atomics stay off (the `threads` crate feature is not
        // built), so a module that declares a shared memory fails validation.
        .wasm_multi_memory(false)
        // Fuel decides outcomes; epochs guard wall time and carry cancellation.
        .consume_fuel(fuel)
        .epoch_interruption(epochs)
        .max_wasm_stack(MAX_WASM_STACK);
    config
}

impl Sandbox {
    /// Builds the engine, the linker and the caches.
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        Self::with_metrics(config, SandboxMetrics::default())
    }

    /// Like [`new`](Self::new), recording compile-cache lookups, compile times and
    /// calls in `metrics` (a node's).
    pub fn with_metrics(
        config: SandboxConfig,
        metrics: SandboxMetrics,
    ) -> Result<Self, SandboxError> {
        let engine = Engine::new(&engine_config(config.fuel, config.epochs))
            .map_err(|e| SandboxError::Engine(e.to_string()))?;
        let linker = exec::linker(&engine).map_err(|e| SandboxError::Engine(e.to_string()))?;
        let disk = match config.cache_dir {
            Some(dir) => Some(CompileCache::open(dir, &engine)?),
            None => None,
        };
        let ticker = Ticker::start(engine.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                disk,
                memo: ModuleMemo::default(),
                ticker,
                fuel: config.fuel,
                epochs: config.epochs,
                metrics,
            }),
        })
    }

    /// Validates `bytes` (a binary module, or WAT text) against ABI v1 and returns it
    /// compiled, from the cache when it was compiled before.
    pub fn load(&self, bytes: &[u8]) -> Result<JobModule, ModuleError> {
        let binary = validate::to_binary(bytes)?;
        let hash = blake3::hash(&binary).to_hex().to_string();
        if let Some(module) = self.inner.memo.get(&hash) {
            self.inner.metrics.lookup("memory_hit");
            return Ok(module);
        }
        let module = self.compile(&hash, &binary)?;
        let abi = validate::check_abi(&module);
        let report = abi.into_result()?;
        let job = JobModule {
            hash: hash.clone(),
            size: binary.len(),
            has_split: report.has_split,
            has_merge: report.has_merge,
            module,
        };
        self.inner.memo.insert(hash, job.clone());
        Ok(job)
    }

    /// Describes a module (hash, size, imports, exports, ABI v1 verdict) without
    /// requiring it to be valid ABI v1.
    pub fn inspect(&self, bytes: &[u8]) -> Result<ModuleInfo, ModuleError> {
        let binary = validate::to_binary(bytes)?;
        let hash = blake3::hash(&binary).to_hex().to_string();
        let module = self.compile(&hash, &binary)?;
        Ok(ModuleInfo::describe(hash, binary.len(), &module))
    }

    fn compile(&self, hash: &str, binary: &[u8]) -> Result<wasmtime::Module, ModuleError> {
        if let Some(disk) = &self.inner.disk
            && let Some(module) = disk.load(&self.inner.engine, hash)
        {
            self.inner.metrics.lookup("disk_hit");
            return Ok(module);
        }
        let started = std::time::Instant::now();
        let module = wasmtime::Module::from_binary(&self.inner.engine, binary)
            .map_err(|e| ModuleError::Compile(format!("{e:#}")))?;
        self.inner.metrics.compiled(started.elapsed());
        if let Some(disk) = &self.inner.disk
            && validate::check_abi(&module).problems.is_empty()
        {
            disk.store(hash, &module);
        }
        Ok(module)
    }

    /// Runs one entry point of `module` on `input` under `limits`. Blocks the thread
    /// until the guest returns, traps, runs out of fuel or hits the wall guard.
    /// `control` lets another thread cancel the call.
    pub fn call(
        &self,
        module: &JobModule,
        entry: Entry,
        input: &[u8],
        limits: &Limits,
        control: Option<Arc<ChunkControl>>,
    ) -> Execution {
        let execution = exec::call(&self.inner, module, entry, input, limits, control);
        self.inner.metrics.call(entry, &execution);
        execution
    }

    /// Runs `peergrid_run` on one chunk input.
    pub fn run_chunk(&self, module: &JobModule, input: &[u8], limits: &Limits) -> Execution {
        self.call(module, Entry::Run, input, limits, None)
    }

    /// Runs `peergrid_split` on JSON params; on success returns the chunk inputs.
    pub fn split(
        &self,
        module: &JobModule,
        params: &[u8],
        limits: &Limits,
    ) -> (Execution, Option<Vec<Vec<u8>>>) {
        let mut exec = self.call(module, Entry::Split, params, limits, None);
        let inputs = match &exec.outcome {
            Outcome::Ok(list) => match peergrid_sdk::bytes::decode_list(list) {
                Ok(items) => Some(items.into_iter().map(<[u8]>::to_vec).collect()),
                Err(e) => {
                    exec.outcome = Outcome::Trap {
                        kind: TrapKind::AbiViolation,
                        message: format!("split returned a malformed list of inputs: {e}"),
                    };
                    None
                }
            },
            _ => None,
        };
        (exec, inputs)
    }

    /// Runs `peergrid_merge` on the chunk outputs, in chunk order.
    pub fn merge<B: AsRef<[u8]>>(
        &self,
        module: &JobModule,
        outputs: &[B],
        limits: &Limits,
    ) -> Execution {
        let list = peergrid_sdk::bytes::encode_list(outputs);
        self.call(module, Entry::Merge, &list, limits, None)
    }

    /// Measures how much fuel one slot burns per second on this machine: a busy loop
    /// runs out of a fixed amount of fuel, three times, and the fastest run counts.
    /// Takes a few tens of milliseconds; adverts carry the figure.
    pub fn calibrate_fuel_per_sec(&self) -> u64 {
        const FUEL: u64 = 20_000_000;
        const WAT: &str = r#"(module
          (import "peergrid" "log" (func (param i32 i32 i32)))
          (memory (export "memory") 1)
          (func (export "peergrid_abi_v1"))
          (func (export "peergrid_alloc") (param i32) (result i32) (i32.const 64))
          (func (export "peergrid_run") (param i32 i32) (result i32)
            (local $x i32)
            (loop $l
              (local.set $x (i32.add (i32.mul (local.get $x) (i32.const 31)) (i32.const 7)))
              (br $l))
            (i32.const 0)))"#;
        let Ok(module) = self.load(WAT.as_bytes()) else {
            return 0;
        };
        let limits = Limits {
            fuel: FUEL,
            ..Limits::CHUNK
        };
        // Straight to `exec::call`: calibration is not a call for the metrics.
        (0..3)
            .map(|_| exec::call(&self.inner, &module, Entry::Run, b"", &limits, None).elapsed)
            .min()
            .map_or(0, |t| (FUEL as f64 / t.as_secs_f64().max(1e-6)) as u64)
    }

    /// The engine's compatibility fingerprint (part of every compile-cache key).
    pub fn engine_fingerprint(&self) -> String {
        cache::engine_fingerprint(&self.inner.engine)
    }
}

#[cfg(test)]
mod tests;
