//! wasi-v1 edge cases, with WASI command modules written in WAT.

use super::*;

/// A WASI command whose `_start` body is `body`. Helpers: `$write(fd, ptr, len)`,
/// `$read_all(ptr) -> len` (stdin), `$entry_byte() -> i32` (first byte of argv[1]).
/// Memory: 0..64 scratch, 64..1024 argv, 1024.. free. `extra` adds module fields.
fn wasi_module(body: &str, extra: &str) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_accept" (func $sock_accept (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $fd_prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $read_all (param $ptr i32) (result i32)
    (local $n i32) (local $total i32)
    (loop $more
      (i32.store (i32.const 0) (i32.add (local.get $ptr) (local.get $total)))
      (i32.store (i32.const 4) (i32.const 4096))
      (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $n (i32.load (i32.const 8)))
      (local.set $total (i32.add (local.get $total) (local.get $n)))
      (br_if $more (local.get $n)))
    (local.get $total))
  (func $entry_byte (result i32)
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $args_get (i32.const 64) (i32.const 128)))
    (i32.load8_u (i32.load (i32.const 68))))
  {extra}
  (func (export "_start") {body})
)"#
    )
}

fn sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig::default()).expect("engine builds")
}

fn run(wat: &str, input: &[u8], limits: &Limits) -> Execution {
    let sandbox = sandbox();
    let module = sandbox.load(wat.as_bytes()).expect("module loads");
    assert_eq!(module.abi, Abi::WasiV1);
    sandbox.run_chunk(&module, input, limits)
}

fn ok(exec: &Execution) -> &[u8] {
    match &exec.outcome {
        Outcome::Ok(out) => out,
        other => panic!("expected Ok, got {other:?} (logs {:?})", exec.logs),
    }
}

/// Writes the realtime and monotonic clocks, 16 random bytes, 16 more, the
/// monotonic clock again, then stdin.
const CLOCKS_AND_RANDOM: &str = r#"
    (local $n i32)
    (drop (call $clock (i32.const 0) (i64.const 1) (i32.const 2048)))
    (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 2056)))
    (drop (call $random (i32.const 2064) (i32.const 16)))
    (drop (call $random (i32.const 2080) (i32.const 16)))
    (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 2096)))
    (call $write (i32.const 1) (i32.const 2048) (i32.const 56))
    (local.set $n (call $read_all (i32.const 4096)))
    (call $write (i32.const 1) (i32.const 4096) (local.get $n))"#;

fn u64_at(out: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(out[at..at + 8].try_into().expect("8 bytes"))
}

#[test]
fn clocks_and_random_are_deterministic_and_keyed_by_the_input() {
    let wat = wasi_module(CLOCKS_AND_RANDOM, "");
    let a1 = run(&wat, b"chunk one", &Limits::CHUNK);
    let a2 = run(&wat, b"chunk one", &Limits::CHUNK);
    let b = run(&wat, b"chunk two", &Limits::CHUNK);
    let (a1o, a2o, bo) = (ok(&a1), ok(&a2), ok(&b));
    assert_eq!(a1o, a2o, "same module and input: same bytes");
    assert_eq!(a1.fuel_used, a2.fuel_used);
    assert!(a1o.ends_with(b"chunk one"), "stdin echoed");
    // The wall clock starts at the documented instant and moves with fuel only.
    let wall = u64_at(a1o, 0);
    assert!(
        (WALL_CLOCK_START..WALL_CLOCK_START + 1_000_000).contains(&wall),
        "{wall}"
    );
    let (mono1, mono2) = (u64_at(a1o, 8), u64_at(a1o, 48));
    assert!(
        mono2 > mono1,
        "the monotonic clock advances with fuel: {mono1} {mono2}"
    );
    // Two reads of the stream differ; another input gives another stream.
    assert_ne!(a1o[16..32], a1o[32..48]);
    assert_ne!(
        a1o[16..48],
        bo[16..48],
        "different inputs, different random bytes"
    );
    assert_eq!(
        a1o[..16],
        bo[..16],
        "clocks do not depend on the input here"
    );
}

#[test]
fn files_sockets_and_environment_get_wasi_errors() {
    // Each call's errno is stored as one byte, then the 5 bytes are written out.
    let body = r#"
    (i32.store8 (i32.const 3000)
      (call $path_open (i32.const 3) (i32.const 0) (i32.const 2900) (i32.const 4)
        (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 2990)))
    (i32.store8 (i32.const 3001)
      (call $path_open (i32.const 0) (i32.const 0) (i32.const 2900) (i32.const 4)
        (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 2990)))
    (i32.store8 (i32.const 3002) (call $sock_accept (i32.const 3) (i32.const 0) (i32.const 2990)))
    (i32.store8 (i32.const 3003) (call $fd_prestat_get (i32.const 3) (i32.const 2990)))
    (drop (call $environ_sizes_get (i32.const 2980) (i32.const 2984)))
    (i32.store8 (i32.const 3004)
      (i32.add (i32.load (i32.const 2980)) (i32.load (i32.const 2984))))
    (call $write (i32.const 1) (i32.const 3000) (i32.const 5))"#;
    let exec = run(&wasi_module(body, ""), b"", &Limits::CHUNK);
    // EBADF (no preopens), ENOTDIR (stdin is no directory), EBADF (no sockets),
    // EBADF (no preopened directory), no environment.
    assert_eq!(ok(&exec), [8, 54, 8, 8, 0]);
}

#[test]
fn exit_code_and_stderr_become_a_job_error() {
    let body = r#"
    (i32.store (i32.const 2000) (i32.const 0x6d6f6f62)) ;; "boom"
    (call $write (i32.const 2) (i32.const 2000) (i32.const 4))
    (call $write (i32.const 1) (i32.const 2000) (i32.const 4))
    (call $exit (i32.const 3))
    (unreachable)"#;
    let exec = run(&wasi_module(body, ""), b"", &Limits::CHUNK);
    assert_eq!(
        exec.outcome,
        Outcome::Trap {
            kind: TrapKind::JobError,
            message: "exit code 3: boom".into()
        }
    );
    assert_eq!(exec.logs, vec!["boom".to_string()]);
}

#[test]
fn argv_names_the_entry_and_absent_entries_are_invalid() {
    // Writes argv[1]'s first byte; lists only `run` when asked for entries.
    let body = r#"
    (i32.store8 (i32.const 2000) (call $entry_byte))
    (call $write (i32.const 1) (i32.const 2000) (i32.const 1))"#;
    let sandbox = sandbox();
    let module = sandbox
        .load(wasi_module(body, "").as_bytes())
        .expect("loads");
    // The probe printed "e": neither split nor merge.
    assert!(!module.has_split && !module.has_merge);
    let exec = sandbox.run_chunk(&module, b"", &Limits::CHUNK);
    assert_eq!(exec.outcome, Outcome::Ok(b"r".to_vec()));
    let (exec, _) = sandbox.split(&module, b"{}", &Limits::SUBMITTER);
    assert!(
        matches!(exec.outcome, Outcome::Invalid(_)),
        "{:?}",
        exec.outcome
    );
}

#[test]
fn entries_probe_finds_split_and_merge() {
    // "entries" -> prints "split run merge"; split -> a list of two items "a", "b";
    // merge -> echoes its input.
    let extra = r#"(data (i32.const 2100) "split run merge")
                   (data (i32.const 2200) "\02\01a\01b")"#;
    let body = r#"
    (local $e i32) (local $n i32)
    (local.set $e (call $entry_byte))
    (if (i32.eq (local.get $e) (i32.const 0x65))
      (then (call $write (i32.const 1) (i32.const 2100) (i32.const 15)) (return)))
    (if (i32.eq (local.get $e) (i32.const 0x73))
      (then (call $write (i32.const 1) (i32.const 2200) (i32.const 5)) (return)))
    (local.set $n (call $read_all (i32.const 4096)))
    (call $write (i32.const 1) (i32.const 4096) (local.get $n))"#;
    let sandbox = sandbox();
    let module = sandbox
        .load(wasi_module(body, extra).as_bytes())
        .expect("loads");
    assert!(module.has_split && module.has_merge);
    let (_, inputs) = sandbox.split(&module, b"{}", &Limits::SUBMITTER);
    assert_eq!(inputs, Some(vec![b"a".to_vec(), b"b".to_vec()]));
    let exec = sandbox.merge(&module, &[b"x".as_slice(), b"yz"], &Limits::SUBMITTER);
    assert_eq!(exec.outcome, Outcome::Ok(b"\x02\x01x\x02yz".to_vec()));
}

#[test]
fn stdout_over_the_output_limit_is_output_too_large() {
    let body = r#"(call $write (i32.const 1) (i32.const 0) (i32.const 100))"#;
    let limits = Limits {
        max_output_bytes: 99,
        ..Limits::CHUNK
    };
    let exec = run(&wasi_module(body, ""), b"", &limits);
    assert!(
        matches!(
            exec.outcome,
            Outcome::Trap {
                kind: TrapKind::OutputTooLarge,
                ..
            }
        ),
        "{:?}",
        exec.outcome
    );
    let limits = Limits {
        max_output_bytes: 100,
        ..Limits::CHUNK
    };
    let exec = run(&wasi_module(body, ""), b"", &limits);
    assert_eq!(ok(&exec).len(), 100);
}

#[test]
fn an_infinite_loop_runs_out_of_fuel() {
    let limits = Limits {
        fuel: 1_000_000,
        ..Limits::CHUNK
    };
    let exec = run(&wasi_module("(loop $l (br $l))", ""), b"", &limits);
    assert_eq!(exec.outcome, Outcome::OutOfFuel);
    assert_eq!(exec.fuel_used, 1_000_000);
}

#[test]
fn sleeping_returns_at_once_and_moves_the_clock_on() {
    // One relative monotonic-clock subscription of 5 s (userdata 7), then the clock.
    let body = r#"
    (i64.store (i32.const 2400) (i64.const 7))
    (i32.store8 (i32.const 2408) (i32.const 0))
    (i32.store (i32.const 2416) (i32.const 1))
    (i64.store (i32.const 2424) (i64.const 5000000000))
    (i32.store16 (i32.const 2440) (i32.const 0))
    (drop (call $poll (i32.const 2400) (i32.const 2500) (i32.const 1) (i32.const 2600)))
    (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 2608)))
    (call $write (i32.const 1) (i32.const 2500) (i32.const 8))
    (call $write (i32.const 1) (i32.const 2600) (i32.const 4))
    (call $write (i32.const 1) (i32.const 2608) (i32.const 8))"#;
    let exec = run(&wasi_module(body, ""), b"", &Limits::CHUNK);
    let out = ok(&exec);
    assert_eq!(u64_at(out, 0), 7, "the event names the subscription");
    assert_eq!(out[8..12], 1u32.to_le_bytes(), "one event");
    let now = u64_at(out, 12);
    assert!(
        (5_000_000_000..5_001_000_000).contains(&now),
        "slept 5 s of clock time: {now}"
    );
}

#[test]
fn imports_outside_wasi_are_refused_naming_them() {
    let wat = r#"(module
      (import "env" "now" (func (result i64)))
      (import "wasi_snapshot_preview1" "no_such_call" (func))
      (import "wasi_snapshot_preview1" "fd_write" (func (param i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start")))"#;
    let err = sandbox().load(wat.as_bytes()).unwrap_err();
    let ModuleError::DisallowedWasiImports { imports } = &err else {
        panic!("expected DisallowedWasiImports, got {err}");
    };
    let msg = err.to_string();
    assert!(msg.contains("env.now"), "{msg}");
    assert!(msg.contains("wasi_snapshot_preview1.no_such_call"), "{msg}");
    assert!(msg.contains("fd_write (func (i32) -> (i32)): WASI preview 1 gives it the type func (i32, i32, i32, i32) -> (i32)"), "{msg}");
    assert_eq!(imports.len(), 3, "{imports:?}");
}

#[test]
fn a_reactor_and_a_module_of_neither_abi_say_why() {
    let info = sandbox()
        .inspect(br#"(module (memory (export "memory") 1) (func (export "_initialize")))"#)
        .expect("inspects");
    assert_eq!(info.abi.abi, Some(Abi::WasiV1));
    assert!(!info.abi.ok());
    assert!(
        info.abi.problems.join(" ").contains("reactor"),
        "{:?}",
        info.abi
    );
    let info = sandbox()
        .inspect(br#"(module (memory (export "memory") 1))"#)
        .expect("inspects");
    assert_eq!(info.abi.abi, None);
    assert!(
        info.abi.problems.join(" ").contains("WASI command"),
        "{:?}",
        info.abi
    );
}

#[test]
fn every_wasi_function_is_linked_with_its_preview1_type() {
    let imports: String = wasi::FUNCTIONS
        .iter()
        .map(|(name, _, _)| {
            let sig = wasi::signature(name).expect("listed");
            let (params, results) = sig.split_once(" -> ").expect("arrow");
            let list = |s: &str| s.trim_matches(|c| c == '(' || c == ')').replace(',', "");
            format!(
                "(import \"wasi_snapshot_preview1\" \"{name}\" (func (param {}) (result {})))\n",
                list(params),
                list(results)
            )
        })
        .collect();
    let wat =
        format!("(module {imports} (memory (export \"memory\") 1) (func (export \"_start\")))");
    let sandbox = sandbox();
    let module = sandbox.load(wat.as_bytes()).expect("every function links");
    let exec = sandbox.run_chunk(&module, b"", &Limits::CHUNK);
    assert_eq!(exec.outcome, Outcome::Ok(Vec::new()));
}

#[test]
fn too_many_iovecs_or_pointers_outside_memory_are_errors_not_crashes() {
    let body = r#"
    (i32.store8 (i32.const 3000)
      (call $fd_write (i32.const 1) (i32.const 0) (i32.const 2000) (i32.const 8)))
    (i32.store8 (i32.const 3001)
      (call $fd_write (i32.const 1) (i32.const 0xfffffff0) (i32.const 1) (i32.const 8)))
    (i32.store8 (i32.const 3002) (call $random (i32.const 0x1fff0) (i32.const 64)))
    (call $write (i32.const 1) (i32.const 3000) (i32.const 3))"#;
    let exec = run(&wasi_module(body, ""), b"", &Limits::CHUNK);
    // EINVAL (more than 1 024 iovecs), EFAULT twice (outside the 2 pages).
    assert_eq!(ok(&exec), [28, 21, 21]);
}
