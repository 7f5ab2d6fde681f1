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

use wasmtime::{Caller, Extern, FuncType, Linker, Store, Val, ValType};

use super::abi_v1::Entry;
use super::exec::{self, HostState, MAX_MESSAGE, truncate};
use super::limits::{ChunkControl, Limits};
use super::outcome::{Execution, Outcome, TrapKind};
use super::{Inner, JobModule};

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
// Guest memory helpers: every access is checked; out of bounds is `EFAULT`.

fn get<const N: usize>(mem: &[u8], ptr: u32) -> Option<[u8; N]> {
    let start = ptr as usize;
    mem.get(start..start.checked_add(N)?)?.try_into().ok()
}

fn get_u32(mem: &[u8], ptr: u32) -> Option<u32> {
    get::<4>(mem, ptr).map(u32::from_le_bytes)
}

fn get_u64(mem: &[u8], ptr: u32) -> Option<u64> {
    get::<8>(mem, ptr).map(u64::from_le_bytes)
}

fn put(mem: &mut [u8], ptr: u32, bytes: &[u8]) -> Option<()> {
    let start = ptr as usize;
    mem.get_mut(start..start.checked_add(bytes.len())?)?
        .copy_from_slice(bytes);
    Some(())
}

fn range(ptr: u32, len: u32) -> Option<std::ops::Range<usize>> {
    let start = ptr as usize;
    Some(start..start.checked_add(len as usize)?)
}

/// The iovecs at `iovs` (`iovs_len` pairs of `(ptr, len)`), checked against memory.
fn iovecs(mem: &[u8], iovs: u32, iovs_len: u32) -> Option<Vec<std::ops::Range<usize>>> {
    (0..iovs_len.min(MAX_IOVS))
        .map(|i| {
            let at = iovs.checked_add(i.checked_mul(8)?)?;
            let r = range(get_u32(mem, at)?, get_u32(mem, at.checked_add(4)?)?)?;
            (r.end <= mem.len()).then_some(r)
        })
        .collect()
}

/// The guest's memory and the call's state, or `None` when the module has no memory
/// or the call has no WASI state (never for a validated module).
fn parts<'a>(caller: &'a mut Caller<'_, HostState>) -> Option<(&'a mut [u8], &'a mut WasiState)> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return None;
    };
    let (mem, state) = memory.data_and_store_mut(caller);
    Some((mem, state.wasi.as_deref_mut()?))
}

/// Charges host work in fuel (deterministic: a function of the arguments only).
fn charge(caller: &mut Caller<'_, HostState>, units: u64) {
    if units == 0 {
        return;
    }
    if let Ok(left) = caller.get_fuel() {
        // Cannot fail when fuel is on (get_fuel succeeded).
        let _ = caller.set_fuel(left.saturating_sub(units));
    }
}

/// Nanoseconds on the call's clocks: fuel used plus time slept.
fn now_ns(caller: &mut Caller<'_, HostState>) -> u64 {
    let left = caller.get_fuel().ok();
    let Some(wasi) = caller.data().wasi.as_deref() else {
        return 0;
    };
    let used = left.map_or(0, |left| wasi.fuel_limit.saturating_sub(left));
    used.saturating_add(wasi.slept_ns)
}

fn is_stdio(fd: u32) -> bool {
    fd <= 2
}

// ---------------------------------------------------------------------------------
// The imports.

fn args_sizes_get(mut caller: Caller<'_, HostState>, argc: u32, size: u32) -> i32 {
    let Some((mem, wasi)) = parts(&mut caller) else {
        return errno::FAULT;
    };
    let total: usize = wasi.argv.iter().map(|a| a.len() + 1).sum();
    let count = wasi.argv.len() as u32;
    match (
        put(mem, argc, &count.to_le_bytes()),
        put(mem, size, &(total as u32).to_le_bytes()),
    ) {
        (Some(()), Some(())) => errno::SUCCESS,
        _ => errno::FAULT,
    }
}

fn args_get(mut caller: Caller<'_, HostState>, argv: u32, buf: u32) -> i32 {
    let Some((mem, wasi)) = parts(&mut caller) else {
        return errno::FAULT;
    };
    let mut at = buf;
    let mut moved = 0u64;
    for (i, arg) in wasi.argv.iter().enumerate() {
        let slot = argv.wrapping_add(4 * i as u32);
        let mut bytes = arg.clone();
        bytes.push(0);
        if put(mem, slot, &at.to_le_bytes()).is_none() || put(mem, at, &bytes).is_none() {
            return errno::FAULT;
        }
        at = at.wrapping_add(bytes.len() as u32);
        moved += bytes.len() as u64;
    }
    charge(&mut caller, moved / BYTES_PER_FUEL);
    errno::SUCCESS
}

fn environ_sizes_get(mut caller: Caller<'_, HostState>, count: u32, size: u32) -> i32 {
    let Some((mem, _)) = parts(&mut caller) else {
        return errno::FAULT;
    };
    match (put(mem, count, &[0; 4]), put(mem, size, &[0; 4])) {
        (Some(()), Some(())) => errno::SUCCESS,
        _ => errno::FAULT,
    }
}

fn clock_res_get(mut caller: Caller<'_, HostState>, id: u32, res: u32) -> i32 {
    if id > 3 {
        return errno::INVAL;
    }
    let Some((mem, _)) = parts(&mut caller) else {
        return errno::FAULT;
    };
    match put(mem, res, &1u64.to_le_bytes()) {
        Some(()) => errno::SUCCESS,
        None => errno::FAULT,
    }
}

fn clock_time_get(mut caller: Caller<'_, HostState>, id: u32, _precision: u64, out: u32) -> i32 {
    // 0 realtime, 1 monotonic, 2 process CPU time, 3 thread CPU time.
    let now = match id {
        0 => WALL_CLOCK_START.saturating_add(now_ns(&mut caller)),
        1..=3 => now_ns(&mut caller),
        _ => return errno::INVAL,
    };
    let Some((mem, _)) = parts(&mut caller) else {
        return errno::FAULT;
    };
    match put(mem, out, &now.to_le_bytes()) {
        Some(()) => errno::SUCCESS,
        None => errno::FAULT,
    }
}

fn fd_close(_caller: Caller<'_, HostState>, fd: u32) -> i32 {
    // Closing stdio is accepted and changes nothing (the output is still read).
    if is_stdio(fd) {
        errno::SUCCESS
    } else {
        errno::BADF
    }
}

/// Rights reported for stdio: read (stdin) or write (stdout, stderr), and poll.
const RIGHT_FD_READ: u64 = 1 << 1;
const RIGHT_FD_WRITE: u64 = 1 << 6;
const RIGHT_POLL: u64 = 1 << 27;

fn fd_fdstat_get(mut caller: Caller<'_, HostState>, fd: u32, out: u32) -> i32 {
    if !is_stdio(fd) {
        return errno::BADF;
    }
    let Some((mem, _)) = parts(&mut caller) else {
        return errno::FAULT;
    };
    // filetype 0 (unknown: a stream, not a terminal, so C's stdio buffers fully),
    // no flags, rights, no inheriting rights.
    let rights = RIGHT_POLL
        | if fd == 0 {
            RIGHT_FD_READ
        } else {
            RIGHT_FD_WRITE
        };
    let mut stat = [0u8; 24];
    stat[8..16].copy_from_slice(&rights.to_le_bytes());
    match put(mem, out, &stat) {
        Some(()) => errno::SUCCESS,
        None => errno::FAULT,
    }
}

fn fd_fdstat_set_flags(_caller: Caller<'_, HostState>, fd: u32, _flags: u32) -> i32 {
    // Stdio never blocks; accepting a flag change (Go sets non-blocking) changes nothing.
    if is_stdio(fd) {
        errno::SUCCESS
    } else {
        errno::BADF
    }
}

fn fd_filestat_get(mut caller: Caller<'_, HostState>, fd: u32, out: u32) -> i32 {
    if !is_stdio(fd) {
        return errno::BADF;
    }
    let Some((mem, _)) = parts(&mut caller) else {
        return errno::FAULT;
    };
    // All zero: device 0, inode 0, filetype unknown, no links, size 0, times 0.
    match put(mem, out, &[0u8; 64]) {
        Some(()) => errno::SUCCESS,
        None => errno::FAULT,
    }
}

fn fd_prestat_get(_caller: Caller<'_, HostState>, _fd: u32, _out: u32) -> i32 {
    // No preopened directories: the guest's scan for them ends at once.
    errno::BADF
}

fn fd_read(mut caller: Caller<'_, HostState>, fd: u32, iovs: u32, len: u32, nread: u32) -> i32 {
    if fd != 0 {
        return errno::BADF;
    }
    if len > MAX_IOVS {
        return errno::INVAL;
    }
    let Some((mem, wasi)) = parts(&mut caller) else {
        return errno::FAULT;
    };
    let Some(ranges) = iovecs(mem, iovs, len) else {
        return errno::FAULT;
    };
    let mut total = 0usize;
    for r in ranges {
        let rest = &wasi.stdin[wasi.stdin_pos..];
        let n = r.len().min(rest.len());
        mem[r.start..r.start + n].copy_from_slice(&rest[..n]);
        wasi.stdin_pos += n;
        total += n;
        if wasi.stdin_pos == wasi.stdin.len() {
            break;
        }
    }
    if put(mem, nread, &(total as u32).to_le_bytes()).is_none() {
        return errno::FAULT;
    }
    charge(&mut caller, u64::from(len) + total as u64 / BYTES_PER_FUEL);
    errno::SUCCESS
}

fn fd_write(
    mut caller: Caller<'_, HostState>,
    fd: u32,
    iovs: u32,
    len: u32,
    nwritten: u32,
) -> wasmtime::Result<i32> {
    if fd != 1 && fd != 2 {
        return Ok(errno::BADF);
    }
    if len > MAX_IOVS {
        return Ok(errno::INVAL);
    }
    let Some((mem, wasi)) = parts(&mut caller) else {
        return Ok(errno::FAULT);
    };
    let Some(ranges) = iovecs(mem, iovs, len) else {
        return Ok(errno::FAULT);
    };
    let total: usize = ranges.iter().map(|r| r.len()).sum();
    if fd == 1 {
        // The cap is checked before anything is written, so every peer stops at the
        // same write whatever the guest's buffering.
        if (wasi.stdout.len() + total) as u64 > wasi.max_stdout {
            return Err(WasiStop::StdoutFull(wasi.max_stdout).into());
        }
        for r in ranges {
            wasi.stdout.extend_from_slice(&mem[r]);
        }
    } else {
        for r in ranges {
            let room = MAX_STDERR - wasi.stderr.len();
            let n = r.len().min(room);
            wasi.stderr.extend_from_slice(&mem[r.start..r.start + n]);
            wasi.stderr_dropped += r.len() - n;
        }
    }
    if put(mem, nwritten, &(total as u32).to_le_bytes()).is_none() {
        return Ok(errno::FAULT);
    }
    charge(&mut caller, u64::from(len) + total as u64 / BYTES_PER_FUEL);
    Ok(errno::SUCCESS)
}

/// `poll_oneoff`: returns at once. Stdio subscriptions are ready now (stdin with the
/// bytes left, stdout and stderr writable); other descriptors get `EBADF` events. If
/// none is ready, the clocks move on to the earliest timeout, which then fires.
fn poll_oneoff(mut caller: Caller<'_, HostState>, inp: u32, out: u32, n: u32, nevents: u32) -> i32 {
    if n == 0 || n > MAX_SUBSCRIPTIONS {
        return errno::INVAL;
    }
    let now = now_ns(&mut caller);
    let Some((mem, wasi)) = parts(&mut caller) else {
        return errno::FAULT;
    };
    // (userdata, errno, type, nbytes) for fd events; clock subscriptions by timeout.
    let mut fd_events: Vec<(u64, u16, u8, u64)> = Vec::new();
    let mut clocks: Vec<(u64, u64)> = Vec::new();
    for i in 0..n {
        let Some(at) = i.checked_mul(48).and_then(|o| inp.checked_add(o)) else {
            return errno::FAULT;
        };
        let (Some(userdata), Some([tag])) = (get_u64(mem, at), get::<1>(mem, at.wrapping_add(8)))
        else {
            return errno::FAULT;
        };
        match tag {
            0 => {
                let (Some(id), Some(timeout), Some(flags)) = (
                    get_u32(mem, at.wrapping_add(16)),
                    get_u64(mem, at.wrapping_add(24)),
                    get::<2>(mem, at.wrapping_add(40)).map(u16::from_le_bytes),
                ) else {
                    return errno::FAULT;
                };
                let base = if id == 0 { WALL_CLOCK_START } else { 0 } + now;
                let wait = if flags & 1 == 1 {
                    timeout.saturating_sub(base)
                } else {
                    timeout
                };
                clocks.push((userdata, wait));
            }
            1 | 2 => {
                let Some(fd) = get_u32(mem, at.wrapping_add(16)) else {
                    return errno::FAULT;
                };
                let event = match (tag, fd) {
                    (1, 0) => (userdata, 0, tag, (wasi.stdin.len() - wasi.stdin_pos) as u64),
                    (2, 1 | 2) => (userdata, 0, tag, 0),
                    _ => (userdata, errno::BADF as u16, tag, 0),
                };
                fd_events.push(event);
            }
            _ => return errno::INVAL,
        }
    }
    let wait = if fd_events.is_empty() {
        clocks.iter().map(|(_, w)| *w).min().unwrap_or(0)
    } else {
        0
    };
    wasi.slept_ns = wasi.slept_ns.saturating_add(wait);
    let events = fd_events.into_iter().chain(
        clocks
            .into_iter()
            .filter(|(_, w)| *w <= wait)
            .map(|(u, _)| (u, 0, 0, 0)),
    );
    let mut count = 0u32;
    for (i, (userdata, error, kind, nbytes)) in events.enumerate() {
        let mut event = [0u8; 32];
        event[0..8].copy_from_slice(&userdata.to_le_bytes());
        event[8..10].copy_from_slice(&error.to_le_bytes());
        event[10] = kind;
        event[16..24].copy_from_slice(&nbytes.to_le_bytes());
        if put(mem, out.wrapping_add(32 * i as u32), &event).is_none() {
            return errno::FAULT;
        }
        count += 1;
    }
    if put(mem, nevents, &count.to_le_bytes()).is_none() {
        return errno::FAULT;
    }
    charge(&mut caller, u64::from(n));
    errno::SUCCESS
}

fn random_get(mut caller: Caller<'_, HostState>, buf: u32, len: u32) -> i32 {
    let Some((mem, wasi)) = parts(&mut caller) else {
        return errno::FAULT;
    };
    let Some(r) = range(buf, len).filter(|r| r.end <= mem.len()) else {
        return errno::FAULT;
    };
    wasi.random.fill(&mut mem[r]);
    charge(&mut caller, u64::from(len) / BYTES_PER_FUEL);
    errno::SUCCESS
}

/// The errno of a function this sandbox does not provide: about files, paths,
/// sockets or signals. Stdio descriptors get the error for their kind (not seekable,
/// not a directory, not a socket); any other descriptor does not exist (`EBADF`).
fn refusal(name: &str, args: &[Val]) -> i32 {
    let fd_at = match name {
        "path_symlink" => 2,
        "proc_raise" => return errno::NOSYS,
        _ => 0,
    };
    let fd = args.get(fd_at).and_then(Val::i32).unwrap_or(-1);
    if !(0..=2).contains(&fd) {
        return errno::BADF;
    }
    if name.starts_with("path_") || name == "fd_readdir" {
        errno::NOTDIR
    } else if name.starts_with("sock_") {
        errno::NOTSOCK
    } else if matches!(name, "fd_seek" | "fd_tell" | "fd_pread" | "fd_pwrite") {
        errno::SPIPE
    } else {
        errno::NOTSUP
    }
}

/// The functions with their own implementation above; the rest are [`refusal`]s.
const IMPLEMENTED: &[&str] = &[
    "args_get",
    "args_sizes_get",
    "environ_get",
    "environ_sizes_get",
    "clock_res_get",
    "clock_time_get",
    "fd_close",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_filestat_get",
    "fd_prestat_get",
    "fd_read",
    "fd_write",
    "poll_oneoff",
    "proc_exit",
    "sched_yield",
    "random_get",
];

/// Adds every `wasi_snapshot_preview1` function to the linker.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let m = WASI_MODULE;
    linker.func_wrap(m, "args_get", args_get)?;
    linker.func_wrap(m, "args_sizes_get", args_sizes_get)?;
    linker.func_wrap(
        m,
        "environ_get",
        |_: Caller<'_, HostState>, _: u32, _: u32| errno::SUCCESS,
    )?;
    linker.func_wrap(m, "environ_sizes_get", environ_sizes_get)?;
    linker.func_wrap(m, "clock_res_get", clock_res_get)?;
    linker.func_wrap(m, "clock_time_get", clock_time_get)?;
    linker.func_wrap(m, "fd_close", fd_close)?;
    linker.func_wrap(m, "fd_fdstat_get", fd_fdstat_get)?;
    linker.func_wrap(m, "fd_fdstat_set_flags", fd_fdstat_set_flags)?;
    linker.func_wrap(m, "fd_filestat_get", fd_filestat_get)?;
    linker.func_wrap(m, "fd_prestat_get", fd_prestat_get)?;
    linker.func_wrap(m, "fd_read", fd_read)?;
    linker.func_wrap(m, "fd_write", fd_write)?;
    linker.func_wrap(m, "poll_oneoff", poll_oneoff)?;
    linker.func_wrap(
        m,
        "proc_exit",
        |_: Caller<'_, HostState>, code: u32| -> wasmtime::Result<()> {
            Err(WasiStop::Exit(code).into())
        },
    )?;
    linker.func_wrap(m, "sched_yield", |_: Caller<'_, HostState>| errno::SUCCESS)?;
    linker.func_wrap(m, "random_get", random_get)?;
    let engine = linker.engine().clone();
    for (name, _, _) in FUNCTIONS {
        if IMPLEMENTED.contains(name) {
            continue;
        }
        let ty = func_type(&engine, name);
        linker.func_new(m, name, ty, move |_caller, args, results| {
            results[0] = Val::I32(refusal(name, args));
            Ok(())
        })?;
    }
    Ok(())
}

fn func_type(engine: &wasmtime::Engine, name: &str) -> FuncType {
    let (_, params, errno) = FUNCTIONS
        .iter()
        .find(|(n, _, _)| *n == name)
        .copied()
        .unwrap_or((name, "", true));
    let params = params
        .chars()
        .map(|c| if c == 'I' { ValType::I64 } else { ValType::I32 });
    let results = errno.then_some(ValType::I32);
    FuncType::new(engine, params, results)
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
