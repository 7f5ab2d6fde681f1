//! The `wasi_snapshot_preview1` functions themselves, and the checked guest-memory
//! access they share. Each reads only the call's own [`WasiState`] and the fuel
//! used, so none can see the host's clock, randomness, files, environment or
//! network (see the parent module's docs for the deterministic world they make).
//! [`add_to_linker`] puts them into the sandbox's one `Linker` (`exec.rs`).

use wasmtime::{Caller, Extern, FuncType, Linker, Val, ValType};

use super::super::exec::HostState;
use super::{
    BYTES_PER_FUEL, FUNCTIONS, MAX_IOVS, MAX_STDERR, MAX_SUBSCRIPTIONS, WALL_CLOCK_START,
    WASI_MODULE, WasiState, WasiStop, errno,
};

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
