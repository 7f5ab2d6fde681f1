//! The WebAssembly sandbox: where every chunk, split and merge runs.
//!
//! # What it owns
//! One wasmtime [`Engine`] per process, configured for determinism (NaN
//! canonicalisation where a NaN's bits can be seen, by the module rewrite of [`nan`]
//! before compiling; no threads, deterministic relaxed SIMD, fuel metering, a bounded
//! wasm stack) and for speed (a pool of pre-reserved instance slots, copy-on-write
//! memory images, guard regions instead of bounds checks), one [`Linker`] with the
//! host calls a job may import (`peergrid.log` for ABI v1, the deterministic
//! `wasi_snapshot_preview1` functions for wasi-v1), and the compile cache (in memory
//! and on disk, see [`cache`]).
//!
//! # Message flow
//! - Callers (`peergrid run`, the worker, the submitter's scheduler) hand module bytes
//!   to [`Sandbox::load`]; [`validate`] decides which ABI the module speaks (ABI v1 or
//!   wasi-v1) and checks it, [`nan`] canonicalises the NaNs it can see, [`unroll`]
//!   unrolls small innermost loops (so that fuel's loop-header check runs once per
//!   several iterations), [`strength`] turns multiplications by 3, 5 and 9 into a
//!   shift and an add (the three run in order by `rewrite::compile`, on a
//!   compile-cache miss), and the compile cache returns a ready [`JobModule`]
//!   (imports already resolved; a wasi-v1 module's entries probed once).
//! - [`Sandbox::call`] runs one entry point (`run`, `split` or `merge`) through the
//!   per-call path of `exec`: a fresh `Store` with every limit of [`Limits`]
//!   installed in one function, the guest run in fuel slices with the wall-clock
//!   guard, cancellation and the worker's [`Gate`] checked between slices, and the
//!   end classified into an [`Execution`]: one typed [`Outcome`], the fuel used, the
//!   time taken and the guest's log lines. Fuel decides outcomes (so honest peers
//!   agree byte for byte); the checks between slices only stop runaway wall time,
//!   pause and cancel. `abi_v1` is the ABI v1 call sequence run on that path, `wasi`
//!   the wasi-v1 one (a fresh instance running `_start` with stdin/stdout).
//! - `call` blocks the thread (the guest runs on a fiber stack, polled on the calling
//!   thread): async callers run it on a blocking thread.

mod abi_v1;
pub mod cache;
pub mod calibration;
mod exec;
pub mod gate;
mod limits;
pub mod metrics;
mod nan;
mod outcome;
mod rewrite;
pub mod shape;
mod strength;
mod unroll;
pub mod validate;
mod wasi;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, InstancePre, Linker, OptLevel,
    PoolingAllocationConfig,
};

pub use abi_v1::Entry;
pub use gate::Gate;
pub use limits::{ChunkControl, Limits};
pub use nan::NanSummary;
pub use outcome::{Execution, Outcome, TrapKind};
pub use shape::{ModuleCaps, Shape};
pub use unroll::UnrollSummary;
pub use validate::{Abi, AbiReport, ModuleError, ModuleInfo};
pub use wasi::WALL_CLOCK_START;

use self::cache::{CompileCache, ModuleMemo};
use self::exec::{HostState, Slots, Ticker};
use self::metrics::SandboxMetrics;

/// The largest wasm stack a guest may use. Unbounded recursion ends in a
/// `StackOverflow` trap well before the host thread's own stack is at risk.
pub const MAX_WASM_STACK: usize = 1024 * 1024;

/// How a running call is interrupted for the wall-clock guard, pause and cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Fuel is handed out in slices; between two slices the calling thread checks
    /// the guard, cancellation and the gate. One mechanism (fuel) for everything.
    /// Production.
    FuelSlices,
    /// Epoch interruption driven by a ticker thread, on top of fuel (how the sandbox
    /// ran before; kept so that `bench sandbox` can measure what it costs).
    Epochs,
    /// Nothing: a call runs until it returns, traps or runs out of fuel. Benches only.
    Off,
}

/// How NaNs that arithmetic produces get their bits (see `docs/ABI.md`, Determinism).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NanMode {
    /// The module is rewritten (see [`nan`]) so that every NaN-producing result whose
    /// bits can be seen is canonicalised, and compiled with Cranelift's
    /// canonicalisation off: the same behaviour as [`NanMode::EveryOp`], most of the
    /// speed of [`NanMode::Off`]. Production.
    #[default]
    Observable,
    /// Cranelift canonicalises the result of every NaN-producing instruction (how the
    /// sandbox ran before). For benches and the equivalence tests.
    EveryOp,
    /// No canonicalisation: NaN bits depend on the CPU. Benches only.
    Off,
}

/// How the sandbox is set up. Everything but `cache_dir` is for benches and tests:
/// the defaults are what every peer runs.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where compiled modules are cached between runs; `None` keeps them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Fuel metering. Always on for real work (fuel decides outcomes); turned off only
    /// by `peergrid bench sandbox` to measure what metering costs.
    pub fuel: bool,
    /// The interruption mechanism ([`Guard::FuelSlices`] for real work).
    pub guard: Guard,
    /// Fuel per slice with [`Guard::FuelSlices`]: how often (in fuel) a running call
    /// checks the wall-clock guard, cancellation and the gate. The fuel a call uses
    /// does not depend on it.
    pub fuel_slice: u64,
    /// NaN canonicalisation (see `docs/ABI.md`, Determinism): [`NanMode::Observable`]
    /// for real work.
    pub nan: NanMode,
    /// Small innermost loops are unrolled before compiling (see [`unroll`]), so that
    /// fuel's check at every loop header runs once per several iterations. On for
    /// real work; `bench sandbox` turns it off to measure what it saves.
    pub unroll_loops: bool,
    /// Multiplications by 3, 5 and 9 become a shift and an add before compiling (see
    /// [`strength`]; Cranelift uses `imul` for them where `lea` does). On for real
    /// work.
    pub reduce_multiplies: bool,
    /// Instances come from a pool of pre-reserved slots (memory, tables, stacks)
    /// reused between calls, instead of fresh mappings per call.
    pub pooling: bool,
    /// Reserve no address space beyond a memory's size, so that Cranelift must check
    /// every access's bounds explicitly. Off for real work; `bench sandbox` turns it
    /// on (with `pooling` off) to measure what the guard regions save.
    pub explicit_bounds_checks: bool,
    /// Fuel per operator: `None` (real work) is wasmtime's table (one per operator,
    /// block structure free). `bench sandbox` sets one that charges only branches and
    /// calls, to measure what the per-block fuel updates cost; fuel figures under any
    /// other table are not the grid's.
    pub operator_cost: Option<wasmtime::OperatorCost>,
    /// Size and shape caps checked before a module is compiled.
    pub caps: ModuleCaps,
    /// Most bytes of compiled modules kept in `cache_dir`.
    pub cache_bytes: u64,
}

/// Fuel per slice by default: ≈ 1–5 ms of guest work on current CPUs, so pause,
/// cancel and the wall-clock guard act within milliseconds, and the check between
/// slices (well under a microsecond) costs nothing measurable.
pub const FUEL_SLICE: u64 = 4_000_000;

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            fuel: true,
            guard: Guard::FuelSlices,
            fuel_slice: FUEL_SLICE,
            nan: NanMode::Observable,
            unroll_loops: true,
            reduce_multiplies: true,
            pooling: true,
            explicit_bounds_checks: false,
            operator_cost: None,
            caps: ModuleCaps::default(),
            cache_bytes: cache::DEFAULT_COMPILE_CACHE_BYTES,
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
    /// Which ABI the module speaks.
    pub abi: Abi,
    /// Whether the module exports `peergrid_split` (wasi-v1: lists `split` among
    /// its entries).
    pub has_split: bool,
    /// Whether the module exports `peergrid_merge`.
    pub has_merge: bool,
    /// The module with its imports resolved against the linker, ready to instantiate.
    pre: InstancePre<HostState>,
}

impl std::fmt::Debug for JobModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobModule")
            .field("hash", &self.hash)
            .field("size", &self.size)
            .field("abi", &self.abi)
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
    /// The engine and what hangs off it, built by the first call that needs them
    /// (see [`Sandbox::lazy`]); an error is kept, as building again would fail again.
    built: OnceLock<Result<Built, String>>,
    /// What `built` is built from.
    config: SandboxConfig,
    memo: ModuleMemo,
    /// Bounds the calls running at once to the instance pool's size.
    slots: Slots,
    fuel: bool,
    guard: Guard,
    fuel_slice: u64,
    caps: ModuleCaps,
    metrics: SandboxMetrics,
}

/// The engine side of the sandbox: what costs memory and start-up time (wasmtime's
/// engine and instance pool, Cranelift when it first compiles, the compile cache's
/// scan of its directory), so a node builds it only when a module first arrives.
struct Built {
    engine: Engine,
    linker: Linker<HostState>,
    disk: Option<CompileCache>,
    /// Only with [`Guard::Epochs`].
    ticker: Option<Ticker>,
}

impl Built {
    fn new(config: &SandboxConfig) -> Result<Self, SandboxError> {
        let engine = Engine::new(&engine_config(config))
            .map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
        let linker = exec::linker(&engine).map_err(|e| SandboxError::Engine(e.to_string()))?;
        let disk = match &config.cache_dir {
            Some(dir) => Some(CompileCache::open(
                dir.clone(),
                &engine,
                cache::Rewrites::of(config),
                config.cache_bytes,
            )?),
            None => None,
        };
        let ticker = (config.guard == Guard::Epochs).then(|| Ticker::start(engine.clone()));
        Ok(Self {
            engine,
            linker,
            disk,
            ticker,
        })
    }
}

impl Inner {
    /// The engine side, built on first use.
    fn built(&self) -> Result<&Built, SandboxError> {
        self.built
            .get_or_init(|| {
                let started = std::time::Instant::now();
                let built = Built::new(&self.config).map_err(|e| e.to_string());
                tracing::debug!(took = ?started.elapsed(), ok = built.is_ok(), "sandbox engine built");
                built
            })
            .as_ref()
            .map_err(|e| SandboxError::Engine(e.clone()))
    }

    /// The ticker, when the engine is built with [`Guard::Epochs`].
    fn ticker(&self) -> Option<&Ticker> {
        self.built.get()?.as_ref().ok()?.ticker.as_ref()
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let disk = self
            .inner
            .built
            .get()
            .and_then(|b| b.as_ref().ok())
            .map(|b| &b.disk);
        f.debug_struct("Sandbox")
            .field("built", &self.inner.built.get().is_some())
            .field("disk_cache", &disk)
            .finish_non_exhaustive()
    }
}

/// The largest linear memory any module may have: all of wasm32's 4 GiB, so that every
/// 32-bit memory sits in a slot of the pool whatever the call's limit (the
/// `ResourceLimiter` enforces the limit itself).
const MAX_MEMORY: usize = 4 << 30;

/// Bytes at the start of each pool slot's memory kept resident between calls: a
/// typical Rust job's stack, data and small heap.
const KEEP_RESIDENT: usize = 4 << 20;

/// The most tables an instance may have (the `ResourceLimiter` says the same).
const MAX_TABLES: u32 = 4;

/// How many instances the pool holds, and so how many calls run at once (more wait
/// for a slot): twice the cores, at least 8. Each slot reserves (does not commit)
/// 4 GiB plus guard pages of address space for its memory.
fn pool_slots() -> u32 {
    let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
    u32::try_from(cores.saturating_mul(2))
        .unwrap_or(u32::MAX)
        .clamp(8, 256)
}

/// The engine configuration every peer uses. Changing it changes cache keys, so it is
/// one function. Fuel figures depend only on the module and the input (fuel counts
/// wasm operators, whatever the machine code), never on these settings.
fn engine_config(config: &SandboxConfig) -> Config {
    let mut c = Config::new();
    c.cranelift_opt_level(OptLevel::Speed)
        // Determinism: every NaN a guest produces has the canonical bit pattern, or
        // (production) every NaN whose bits can be seen, by the rewrite in `nan`.
        .cranelift_nan_canonicalization(config.nan == NanMode::EveryOp)
        // Relaxed SIMD instructions take their deterministic semantics on every CPU.
        .wasm_relaxed_simd(true)
        .relaxed_simd_deterministic(true)
        // Shared memories and atomics stay off (the `threads` crate feature is not
        // built), so a module that declares a shared memory fails validation.
        .wasm_multi_memory(false)
        // Fuel decides outcomes, and carries the wall-clock guard, pause and cancel
        // (see `exec`).
        .consume_fuel(config.fuel)
        .epoch_interruption(config.guard == Guard::Epochs)
        .max_wasm_stack(MAX_WASM_STACK)
        // Calls run on their own fiber stack (so that they can suspend between fuel
        // slices): the wasm stack plus room for host calls.
        .async_stack_size(MAX_WASM_STACK + 512 * 1024);
    // Fuel per operator: wasmtime's table, unless a bench asks for another.
    if let Some(cost) = &config.operator_cost {
        c.operator_cost(cost.clone());
    }
    // Bounds checks: wasmtime's defaults on 64-bit hosts reserve 4 GiB plus a 32 MiB
    // guard region for every 32-bit memory, so Cranelift elides explicit bounds
    // checks (an access out of bounds faults in the guard region and becomes a trap).
    // The pool keeps that: its slots are `MAX_MEMORY` large.
    if config.explicit_bounds_checks {
        c.memory_reservation(0)
            .memory_guard_size(0)
            .memory_reservation_for_growth(0);
    }
    if config.pooling {
        let slots = pool_slots();
        let mut pool = PoolingAllocationConfig::new();
        pool.total_core_instances(slots)
            .total_memories(slots)
            .total_tables(slots * MAX_TABLES)
            .total_stacks(slots)
            .max_memories_per_module(1)
            .max_tables_per_module(MAX_TABLES)
            .table_elements(limits::MAX_TABLE_ELEMENTS)
            .max_memory_size(MAX_MEMORY)
            // Reset the first few MiB of a memory by copying the module's image back
            // instead of unmapping them, so the next call takes no page faults there.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 * 1024)
            // Where the kernel has `PAGEMAP_SCAN` (Linux 6.7+), reset only the pages
            // a call dirtied, instead of the whole start of the memory.
            .pagemap_scan(Enabled::Auto);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    c
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
        let sandbox = Self::lazy(config, metrics);
        sandbox.inner.built()?;
        Ok(sandbox)
    }

    /// A sandbox whose engine, linker and compile cache are built by the first call
    /// that needs them ([`load`](Self::load), [`inspect`](Self::inspect),
    /// [`engine_fingerprint`](Self::engine_fingerprint)), not now: an idle node never
    /// builds them, and so never pays their memory (issue 19). An engine that cannot
    /// be built fails that first load with [`ModuleError::Sandbox`].
    pub fn lazy(config: SandboxConfig, metrics: SandboxMetrics) -> Self {
        let slots = if config.pooling {
            pool_slots() as usize
        } else {
            usize::MAX
        };
        Self {
            inner: Arc::new(Inner {
                built: OnceLock::new(),
                memo: ModuleMemo::default(),
                slots: Slots::new(slots),
                fuel: config.fuel,
                guard: config.guard,
                fuel_slice: config.fuel_slice.max(1),
                caps: config.caps,
                metrics,
                config,
            }),
        }
    }

    /// Whether the engine has been built (a module loaded) in this process.
    pub fn is_built(&self) -> bool {
        self.inner.built.get().is_some()
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
        let pre = self
            .built()?
            .linker
            .instantiate_pre(&module)
            .map_err(|e| ModuleError::Compile(format!("{e:#}")))?;
        let mut job = JobModule {
            hash: hash.clone(),
            size: binary.len(),
            abi: report.abi.unwrap_or(Abi::V1),
            has_split: report.has_split,
            has_merge: report.has_merge,
            pre,
        };
        if job.abi == Abi::WasiV1 {
            (job.has_split, job.has_merge) = wasi::probe_entries(&self.inner, &job);
        }
        self.inner.memo.insert(hash, job.clone());
        Ok(job)
    }

    /// The size and shape caps modules are checked against.
    pub fn caps(&self) -> &ModuleCaps {
        &self.inner.caps
    }

    /// [`load`](Self::load) for a module from the network: a binary only (WAT text
    /// is for the local command line), checked against the caps before compiling.
    pub fn load_from_peer(&self, bytes: &[u8]) -> Result<JobModule, ModuleError> {
        if !bytes.starts_with(b"\0asm") {
            return Err(ModuleError::TextFromPeer);
        }
        self.load(bytes)
    }

    /// Describes a module (hash, size, imports, exports, which ABI it speaks, or why
    /// neither) without requiring it to be valid. A valid wasi-v1 module is loaded
    /// to learn its entries (`split`, `merge`).
    pub fn inspect(&self, bytes: &[u8]) -> Result<ModuleInfo, ModuleError> {
        let binary = validate::to_binary(bytes)?;
        let hash = blake3::hash(&binary).to_hex().to_string();
        let module = self.compile(&hash, &binary)?;
        let mut info = ModuleInfo::describe(hash, binary.len(), &module);
        if info.abi.ok() && info.abi.abi == Some(Abi::WasiV1) {
            let job = self.load(&binary)?;
            info.abi.has_split = job.has_split;
            info.abi.has_merge = job.has_merge;
        }
        Ok(info)
    }

    fn compile(&self, hash: &str, binary: &[u8]) -> Result<wasmtime::Module, ModuleError> {
        // Before the disk cache too: a cap lowered since still applies.
        shape::check(binary, &self.inner.caps)?;
        let built = self.built()?;
        if let Some(disk) = &built.disk
            && let Some(module) = disk.load(&built.engine, hash)
        {
            self.inner.metrics.lookup("disk_hit");
            return Ok(module);
        }
        let started = std::time::Instant::now();
        let module = rewrite::compile(&built.engine, &self.inner.config, binary)?;
        self.inner.metrics.compiled(started.elapsed());
        if let Some(disk) = &built.disk
            && validate::check_abi(&module).ok()
        {
            disk.store(hash, &module);
        }
        Ok(module)
    }

    /// What the loop rewrite finds in `bytes` (a binary module or WAT): how many
    /// innermost loops it has and how many it unrolls. For `bench sandbox` and tests.
    pub fn unroll_summary(bytes: &[u8]) -> Result<UnrollSummary, ModuleError> {
        let binary = validate::to_binary(bytes)?;
        unroll::unroll_inner_loops(&binary)
            .map(|u| u.summary)
            .map_err(|e| ModuleError::Compile(e.to_string()))
    }

    /// What the NaN rewrite finds in `bytes` (a binary module or WAT): how many
    /// NaN-producing operators it has and how many get canonicalised. For `bench
    /// sandbox` and tests.
    pub fn nan_summary(bytes: &[u8]) -> Result<NanSummary, ModuleError> {
        let binary = validate::to_binary(bytes)?;
        nan::canonicalise_observable_nans(&binary)
            .map(|r| r.summary)
            .map_err(|e| ModuleError::Compile(e.to_string()))
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
        let execution = match module.abi {
            Abi::V1 => abi_v1::call(&self.inner, module, entry, input, limits, control),
            Abi::WasiV1 => wasi::call(&self.inner, module, entry, input, limits, control),
        };
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

    /// The engine's compatibility fingerprint (part of every compile-cache key).
    /// Builds the engine if it is not yet.
    pub fn engine_fingerprint(&self) -> Result<String, SandboxError> {
        Ok(cache::engine_fingerprint(
            &self.inner.built()?.engine,
            cache::Rewrites::of(&self.inner.config),
        ))
    }

    fn built(&self) -> Result<&Built, ModuleError> {
        self.inner
            .built()
            .map_err(|e| ModuleError::Sandbox(e.to_string()))
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod wasi_tests;
