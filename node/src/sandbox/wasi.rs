//! ABI "wasi-v1" (see `docs/ABI.md`): a WASI preview 1 *command* module run as a job,
//! with hand-written, deterministic `wasi_snapshot_preview1` imports.
//!
//! One call is one fresh instance running `_start` with `argv = ["job", ENTRY]`: the
//! input is stdin, stdout is the output, exit code 0 means success and any other code
//! is the job's error (stderr, capped, is the message; its lines are the call's log).
//! The call runs on the same per-call path as ABI v1 ([`exec::run_guarded`]), so fuel,
//! memory, time limits, pause and cancel behave exactly as for ABI v1.
//!
//! # Why hand-written imports, not `wasmtime-wasi`
//! `wasmtime-wasi` brings the component model, `cap-std`, its own async runtime glue
//! and a few dozen crates (minutes on every cold CI build on two cores), and its
//! context gives a sandbox a real clock, real randomness and real files unless each
//! is replaced. Here every function is a few lines that read only the call's own
//! state (the input, the entry, the module hash, the fuel used), so determinism can
//! be checked by reading this file: no import touches the host's clock, randomness,
//! files, environment or network, and none blocks.
//!
//! # The deterministic world
//! - Clocks: every clock reads `fuel used + time slept` nanoseconds (1 fuel = 1 ns);
//!   the realtime clock adds [`WALL_CLOCK_START`]. `poll_oneoff` returns at once,
//!   moving the clock on by the time slept; `sched_yield` does nothing.
//! - `random_get`: one BLAKE3 output stream per call, keyed by the module hash, the
//!   entry and the input: replicas of a chunk agree, different chunks differ.
//! - No environment variables, no preopened directories, no sockets: file, path and
//!   socket functions return the WASI error (`EBADF`, `ENOTDIR`, `ENOTSOCK`, ...).
//! - Host work is charged in fuel (1 per 8 bytes moved, 1 per iovec or subscription),
//!   so a guest cannot make the host work without bound for free.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::Store;

use super::abi_v1::Entry;
use super::exec::{self, HostState, MAX_MESSAGE, truncate};
use super::limits::{ChunkControl, Limits};
use super::outcome::{Execution, Outcome, TrapKind};
use super::{Inner, JobModule};

mod imports;
pub(crate) use imports::add_to_linker;

/// The import module every wasi-v1 import comes from.
pub(super) const WASI_MODULE: &str = "wasi_snapshot_preview1";

/// The realtime clock's reading at the start of every call: 2024-01-01T00:00:00Z, in
/// nanoseconds since the Unix epoch. It advances like the monotonic clock.
pub const WALL_CLOCK_START: u64 = 1_704_067_200 * 1_000_000_000;

/// Most bytes of stderr kept per call (the rest is counted and dropped).
const MAX_STDERR: usize = 64 * 1024;

/// Host work charged per byte moved (`fd_read`, `fd_write`, `random_get`, args):
/// one fuel per this many bytes.
const BYTES_PER_FUEL: u64 = 8;

/// Most iovecs one `fd_read`/`fd_write` takes (POSIX's `IOV_MAX`); more is `EINVAL`.
/// Bounds the host memory a call's bookkeeping can take.
const MAX_IOVS: u32 = 1024;

/// Most subscriptions one `poll_oneoff` takes; more is `EINVAL`.
const MAX_SUBSCRIPTIONS: u32 = 4096;

/// The probe that asks a module which optional entries it has.
const PROBE_ENTRY: &str = "entries";

/// WASI errno values used here.
mod errno {
    pub(super) const SUCCESS: i32 = 0;
    pub(super) const BADF: i32 = 8;
    pub(super) const FAULT: i32 = 21;
    pub(super) const INVAL: i32 = 28;
    pub(super) const NOSYS: i32 = 52;
    pub(super) const NOTDIR: i32 = 54;
    pub(super) const NOTSOCK: i32 = 57;
    pub(super) const NOTSUP: i32 = 58;
    pub(super) const SPIPE: i32 = 70;
}

/// Every function of `wasi_snapshot_preview1`: name, parameter types (`i` = i32,
/// `I` = i64) and whether it returns an errno (all but `proc_exit`).
pub(crate) const FUNCTIONS: &[(&str, &str, bool)] = &[
    ("args_get", "ii", true),
    ("args_sizes_get", "ii", true),
    ("environ_get", "ii", true),
    ("environ_sizes_get", "ii", true),
    ("clock_res_get", "ii", true),
    ("clock_time_get", "iIi", true),
    ("fd_advise", "iIIi", true),
    ("fd_allocate", "iII", true),
    ("fd_close", "i", true),
    ("fd_datasync", "i", true),
    ("fd_fdstat_get", "ii", true),
    ("fd_fdstat_set_flags", "ii", true),
    ("fd_fdstat_set_rights", "iII", true),
    ("fd_filestat_get", "ii", true),
    ("fd_filestat_set_size", "iI", true),
    ("fd_filestat_set_times", "iIIi", true),
    ("fd_pread", "iiiIi", true),
    ("fd_prestat_get", "ii", true),
    ("fd_prestat_dir_name", "iii", true),
    ("fd_pwrite", "iiiIi", true),
    ("fd_read", "iiii", true),
    ("fd_readdir", "iiiIi", true),
    ("fd_renumber", "ii", true),
    ("fd_seek", "iIii", true),
    ("fd_sync", "i", true),
    ("fd_tell", "ii", true),
    ("fd_write", "iiii", true),
    ("path_create_directory", "iii", true),
    ("path_filestat_get", "iiiii", true),
    ("path_filestat_set_times", "iiiiIIi", true),
    ("path_link", "iiiiiii", true),
    ("path_open", "iiiiiIIii", true),
    ("path_readlink", "iiiiii", true),
    ("path_remove_directory", "iii", true),
    ("path_rename", "iiiiii", true),
    ("path_symlink", "iiiii", true),
    ("path_unlink_file", "iii", true),
    ("poll_oneoff", "iiii", true),
    ("proc_exit", "i", false),
    ("proc_raise", "i", true),
    ("sched_yield", "", true),
    ("random_get", "ii", true),
    ("sock_accept", "iii", true),
    ("sock_recv", "iiiiii", true),
    ("sock_send", "iiiii", true),
    ("sock_shutdown", "ii", true),
];

/// The wasm type of a WASI function, as `validate` prints types.
pub(crate) fn signature(name: &str) -> Option<String> {
    let (_, params, errno) = FUNCTIONS.iter().find(|(n, _, _)| *n == name)?;
    let params: Vec<&str> = params
        .chars()
        .map(|c| if c == 'I' { "i64" } else { "i32" })
        .collect();
    Some(format!(
        "({}) -> ({})",
        params.join(", "),
        if *errno { "i32" } else { "" }
    ))
}

/// How a guest ended its call from inside a host function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WasiStop {
    /// `proc_exit(code)`.
    #[error("the job exited with code {0}")]
    Exit(u32),
    /// A write to stdout would pass the output limit.
    #[error("the job wrote more than {0} bytes to stdout")]
    StdoutFull(u64),
}

/// The per-call WASI state (inside [`HostState`]).
pub(crate) struct WasiState {
    argv: Vec<Vec<u8>>,
    stdin: Vec<u8>,
    stdin_pos: usize,
    stdout: Vec<u8>,
    max_stdout: u64,
    stderr: Vec<u8>,
    stderr_dropped: usize,
    random: blake3::OutputReader,
    fuel_limit: u64,
    slept_ns: u64,
}

impl std::fmt::Debug for WasiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasiState").finish_non_exhaustive()
    }
}

impl WasiState {
    fn new(module_hash: &str, entry: &str, input: &[u8], limits: &Limits) -> Self {
        Self {
            argv: vec![b"job".to_vec(), entry.as_bytes().to_vec()],
            stdin: input.to_vec(),
            stdin_pos: 0,
            stdout: Vec::new(),
            max_stdout: limits.max_output_bytes,
            stderr: Vec::new(),
            stderr_dropped: 0,
            random: random_stream(module_hash, entry, input),
            fuel_limit: limits.fuel,
            slept_ns: 0,
        }
    }
}

/// The `random_get` stream of one call: BLAKE3 in key-derivation mode over the module
/// hash, the entry and the input (each length-prefixed), read as an output stream.
pub(crate) fn random_stream(module_hash: &str, entry: &str, input: &[u8]) -> blake3::OutputReader {
    let mut hasher = blake3::Hasher::new_derive_key("peergrid wasi-v1 random_get");
    for part in [module_hash.as_bytes(), entry.as_bytes(), input] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize_xof()
}

// ---------------------------------------------------------------------------------
// The call sequence.

impl Entry {
    /// The name a wasi-v1 module sees as `argv[1]`.
    pub fn wasi_name(self) -> &'static str {
        match self {
            Self::Run => "run",
            Self::Split => "split",
            Self::Merge => "merge",
        }
    }
}

/// How a wasi-v1 call ended, before it becomes an outcome.
enum Ended {
    /// `_start` returned (code 0) or the guest called `proc_exit`.
    Exit {
        code: u32,
        stdout: Vec<u8>,
        stderr: String,
    },
    /// A write to stdout would have passed the output limit.
    StdoutFull(WasiStop),
}

/// Runs one entry of a wasi-v1 module and classifies how it ended.
pub(crate) fn call(
    inner: &Inner,
    module: &JobModule,
    entry: Entry,
    input: &[u8],
    limits: &Limits,
    control: Option<Arc<ChunkControl>>,
) -> Execution {
    let started = Instant::now();
    let present = match entry {
        Entry::Run => true,
        Entry::Split => module.has_split,
        Entry::Merge => module.has_merge,
    };
    if !present {
        return Execution {
            outcome: Outcome::Invalid(format!(
                "the module does not list `{}` among its entries (argv[1] = \"entries\")",
                entry.wasi_name()
            )),
            fuel_used: 0,
            elapsed: started.elapsed(),
            logs: Vec::new(),
        };
    }
    run_entry(
        inner,
        module,
        entry.wasi_name(),
        input,
        limits,
        control,
        started,
    )
}

fn run_entry(
    inner: &Inner,
    module: &JobModule,
    entry: &str,
    input: &[u8],
    limits: &Limits,
    control: Option<Arc<ChunkControl>>,
    started: Instant,
) -> Execution {
    let ran = exec::run_guarded(inner, limits, control, async |store| {
        store.data_mut().wasi = Some(Box::new(WasiState::new(&module.hash, entry, input, limits)));
        let result = start(store, module).await;
        // stderr becomes the call's log (and a trap's or an error's message).
        let state = store.data_mut();
        let wasi = state.wasi.take();
        let stderr = wasi.as_ref().map(|w| stderr_text(w)).unwrap_or_default();
        for line in stderr.lines().filter(|l| !l.is_empty()) {
            state.record_log(1, line.to_string());
        }
        match result {
            Ok(code) => Ok(Ended::Exit {
                code,
                stdout: wasi.map(|w| w.stdout).unwrap_or_default(),
                stderr,
            }),
            Err(e) => {
                if let Some(stop @ WasiStop::StdoutFull(_)) = e.downcast_ref::<WasiStop>() {
                    return Ok(Ended::StdoutFull(*stop));
                }
                // A trap after the guest wrote to stderr (a Rust panic, C's abort):
                // stderr is the trap's message.
                if !stderr.is_empty()
                    && e.downcast_ref::<wasmtime::Trap>()
                        == Some(&wasmtime::Trap::UnreachableCodeReached)
                {
                    state.panic = Some(truncate(stderr.trim_end().to_string(), MAX_MESSAGE));
                }
                Err(e)
            }
        }
    });
    exec::execution(started, ran, |ended| match ended {
        Ended::Exit {
            code: 0, stdout, ..
        } => Outcome::Ok(stdout),
        Ended::Exit { code, stderr, .. } => Outcome::Trap {
            kind: TrapKind::JobError,
            message: match stderr.trim() {
                "" => format!("exit code {code}"),
                text => truncate(format!("exit code {code}: {text}"), MAX_MESSAGE),
            },
        },
        Ended::StdoutFull(stop) => Outcome::Trap {
            kind: TrapKind::OutputTooLarge,
            message: stop.to_string(),
        },
    })
}

/// stderr as text, with a note of the bytes dropped.
fn stderr_text(wasi: &WasiState) -> String {
    let mut text = String::from_utf8_lossy(&wasi.stderr).into_owned();
    if wasi.stderr_dropped > 0 {
        text.push_str(&format!(
            "\n({} more bytes of stderr dropped)",
            wasi.stderr_dropped
        ));
    }
    text
}

/// Instantiates and runs `_start`; returns the exit code.
async fn start(store: &mut Store<HostState>, module: &JobModule) -> wasmtime::Result<u32> {
    let instance = module.pre.instantiate_async(&mut *store).await?;
    let start = instance.get_typed_func::<(), ()>(&mut *store, "_start")?;
    match start.call_async(&mut *store, ()).await {
        Ok(()) => Ok(0),
        Err(e) => match e.downcast_ref::<WasiStop>() {
            Some(WasiStop::Exit(code)) => Ok(*code),
            _ => Err(e),
        },
    }
}

/// Asks a module which optional entries it has: runs it with `argv[1] = "entries"`
/// and empty stdin under small limits. Its stdout lists entries separated by
/// whitespace or commas; a module that fails the probe has `run` only.
pub(crate) fn probe_entries(inner: &Inner, module: &JobModule) -> (bool, bool) {
    let limits = Limits {
        fuel: 2_000_000_000,
        memory_bytes: 256 * 1024 * 1024,
        timeout: Duration::from_secs(30),
        max_output_bytes: 4096,
    };
    let exec = run_entry(
        inner,
        module,
        PROBE_ENTRY,
        b"",
        &limits,
        None,
        Instant::now(),
    );
    match exec.outcome {
        Outcome::Ok(out) => {
            let text = String::from_utf8_lossy(&out);
            let words: Vec<&str> = text
                .split(|c: char| c.is_whitespace() || c == ',')
                .collect();
            (words.contains(&"split"), words.contains(&"merge"))
        }
        _ => (false, false),
    }
}
