//! Sandbox edge cases, with modules written in WAT.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// An ABI v1 module whose `peergrid_run` body is `run_body` (locals `$ptr`, `$len`;
/// must leave a descriptor pointer on the stack). `extra` adds module fields.
fn abi_module(run_body: &str, extra: &str) -> String {
    format!(
        r#"(module
  (import "peergrid" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "peergrid_abi_v1"))
  (func (export "peergrid_alloc") (param $len i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $len)))
    (local.get $p))
  ;; writes the descriptor [status, ptr, len] at address 0 and returns 0
  (func $ret (param $status i32) (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 0) (local.get $status))
    (i32.store (i32.const 4) (local.get $ptr))
    (i32.store (i32.const 8) (local.get $len))
    (i32.const 0))
  (func (export "peergrid_run") (param $ptr i32) (param $len i32) (result i32)
    {run_body})
  {extra}
)"#
    )
}

fn sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig::default()).expect("engine builds")
}

fn run(sandbox: &Sandbox, wat: &str, input: &[u8], limits: &Limits) -> Execution {
    let module = sandbox.load(wat.as_bytes()).expect("module loads");
    sandbox.run_chunk(&module, input, limits)
}

const ECHO: &str = "(call $ret (i32.const 0) (local.get $ptr) (local.get $len))";

#[test]
fn echo_module_round_trips_input() {
    let exec = run(&sandbox(), &abi_module(ECHO, ""), b"hello", &Limits::CHUNK);
    assert_eq!(exec.outcome, Outcome::Ok(b"hello".to_vec()));
    assert!(exec.fuel_used > 0);
}

#[test]
fn not_wasm_is_refused_with_a_reason() {
    let err = sandbox().load(b"hello, I am a text file").unwrap_err();
    assert!(matches!(err, ModuleError::NotWasm(_)), "{err}");
    assert!(err.to_string().contains("WebAssembly magic"), "{err}");
    // Truncated binary: right magic, garbage after.
    let err = sandbox().load(b"\0asm\x01\0\0\0\xff\xff").unwrap_err();
    assert!(matches!(err, ModuleError::Compile(_)), "{err}");
}

#[test]
fn disallowed_imports_are_listed() {
    let wat = abi_module(ECHO, "").replace(
        "(memory (export",
        r#"(import "env" "now" (func (result i64)))
           (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
           (memory (export"#,
    );
    let err = sandbox().load(wat.as_bytes()).unwrap_err();
    let ModuleError::DisallowedImports { imports } = &err else {
        panic!("expected DisallowedImports, got {err}");
    };
    assert_eq!(imports.len(), 2, "{imports:?}");
    let msg = err.to_string();
    assert!(msg.contains("env.now") && msg.contains("wasi_snapshot_preview1.fd_write"));
    assert!(msg.contains("speaks one ABI"), "WASI hint missing: {msg}");
}

#[test]
fn a_log_import_with_the_wrong_type_is_refused() {
    let wat = r#"(module (import "peergrid" "log" (func (param i32)))
        (memory (export "memory") 1))"#;
    let err = sandbox().load(wat.as_bytes()).unwrap_err();
    assert!(
        err.to_string().contains("peergrid.log (func (i32) -> ())"),
        "{err}"
    );
}

#[test]
fn missing_exports_are_named() {
    let err = sandbox()
        .load(br#"(module (memory (export "memory") 1))"#)
        .unwrap_err();
    let ModuleError::Abi { problems } = &err else {
        panic!("expected Abi, got {err}");
    };
    let all = problems.join("\n");
    for name in ["peergrid_abi_v1", "peergrid_alloc", "peergrid_run"] {
        assert!(all.contains(name), "{name} not named in {all}");
    }
    assert!(!all.contains("peergrid_split"), "split is optional");
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    let limits = Limits {
        fuel: 1_000_000,
        ..Limits::CHUNK
    };
    let exec = run(
        &sandbox(),
        &abi_module("(loop $l (br $l)) (i32.const 0)", ""),
        b"",
        &limits,
    );
    assert_eq!(exec.outcome, Outcome::OutOfFuel);
    assert_eq!(exec.fuel_used, 1_000_000);
}

#[test]
fn memory_bomb_hits_the_memory_limit() {
    // Grows by 16 pages (1 MiB) until refused, then aborts like a Rust allocator.
    let body = r#"(loop $l
        (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
        unreachable"#;
    let limits = Limits {
        memory_bytes: 16 * 1024 * 1024,
        ..Limits::CHUNK
    };
    let exec = run(&sandbox(), &abi_module(body, ""), b"", &limits);
    assert_eq!(exec.outcome, Outcome::MemoryLimit);
}

#[test]
fn a_module_declaring_too_much_memory_hits_the_limit_at_start() {
    let wat = abi_module(ECHO, "").replace(
        "(memory (export \"memory\") 1)",
        "(memory (export \"memory\") 1000)",
    );
    let limits = Limits {
        memory_bytes: 1024 * 1024,
        ..Limits::CHUNK
    };
    assert_eq!(
        run(&sandbox(), &wat, b"", &limits).outcome,
        Outcome::MemoryLimit
    );
}

#[test]
fn unbounded_recursion_is_a_stack_overflow_trap_and_the_host_survives() {
    let sandbox = sandbox();
    let exec = run(
        &sandbox,
        &abi_module("(call $down) (i32.const 0)", "(func $down (call $down))"),
        b"",
        &Limits::CHUNK,
    );
    assert!(
        matches!(
            &exec.outcome,
            Outcome::Trap {
                kind: TrapKind::StackOverflow,
                ..
            }
        ),
        "{:?}",
        exec.outcome
    );
    // The same sandbox keeps working.
    let ok = run(
        &sandbox,
        &abi_module(ECHO, ""),
        b"still here",
        &Limits::CHUNK,
    );
    assert_eq!(ok.outcome, Outcome::Ok(b"still here".to_vec()));
}

#[test]
fn output_over_the_limit_is_refused() {
    let limits = Limits {
        max_output_bytes: 1000,
        ..Limits::CHUNK
    };
    let exec = run(
        &sandbox(),
        &abi_module(
            "(call $ret (i32.const 0) (i32.const 0) (i32.const 60000))",
            "",
        ),
        b"",
        &limits,
    );
    match exec.outcome {
        Outcome::Trap {
            kind: TrapKind::OutputTooLarge,
            message,
        } => assert!(
            message.contains("60000") && message.contains("1000"),
            "{message}"
        ),
        other => panic!("expected OutputTooLarge, got {other:?}"),
    }
}

#[test]
fn descriptor_outside_memory_is_an_abi_violation() {
    let exec = run(
        &sandbox(),
        &abi_module("(i32.const 0x7ffffff0)", ""),
        b"",
        &Limits::CHUNK,
    );
    assert!(
        matches!(
            exec.outcome,
            Outcome::Trap {
                kind: TrapKind::AbiViolation,
                ..
            }
        ),
        "{:?}",
        exec.outcome
    );
}

#[test]
fn guest_panic_is_a_trap_with_the_guests_message() {
    // What the SDK's panic hook does: log at level 255, then abort.
    let body = r#"(call $log (i32.const 255) (i32.const 512) (i32.const 22)) unreachable"#;
    let extra = r#"(data (i32.const 512) "panicked at job.rs: boom")"#;
    let exec = run(&sandbox(), &abi_module(body, extra), b"", &Limits::CHUNK);
    assert_eq!(
        exec.outcome,
        Outcome::Trap {
            kind: TrapKind::Panic,
            message: "panicked at job.rs: bo".into()
        }
    );
}

#[test]
fn job_error_status_carries_the_message() {
    let extra = r#"(data (i32.const 512) "limit must be at least 2")"#;
    let exec = run(
        &sandbox(),
        &abi_module(
            "(call $ret (i32.const 1) (i32.const 512) (i32.const 24))",
            extra,
        ),
        b"",
        &Limits::CHUNK,
    );
    assert_eq!(
        exec.outcome,
        Outcome::Trap {
            kind: TrapKind::JobError,
            message: "limit must be at least 2".into()
        }
    );
}

#[test]
fn logs_are_kept_and_bounded() {
    let body = r#"(local $i i32)
        (loop $l
          (call $log (i32.const 1) (i32.const 512) (i32.const 5))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const 1000))))
        (call $log (i32.const 1) (i32.const 0x7ffffff0) (i32.const 5))
        (call $ret (i32.const 0) (i32.const 0) (i32.const 0))"#;
    let exec = run(
        &sandbox(),
        &abi_module(body, r#"(data (i32.const 512) "hello")"#),
        b"",
        &Limits::CHUNK,
    );
    assert!(matches!(exec.outcome, Outcome::Ok(_)));
    assert_eq!(exec.logs.len(), 65, "64 kept + a note of the dropped ones");
    assert_eq!(exec.logs[0], "hello");
    assert!(
        exec.logs[64].contains("937 more log lines dropped"),
        "{:?}",
        exec.logs[64]
    );
}

#[test]
fn wall_guard_stops_a_runaway_without_fuel() {
    let limits = Limits {
        fuel: u64::MAX,
        timeout: Duration::from_millis(100),
        ..Limits::CHUNK
    };
    let started = Instant::now();
    let exec = run(
        &sandbox(),
        &abi_module("(loop $l (br $l)) (i32.const 0)", ""),
        b"",
        &limits,
    );
    assert_eq!(exec.outcome, Outcome::Timeout);
    assert!(!exec.outcome.is_deterministic());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the guard must fire"
    );
}

#[test]
fn cancel_stops_a_running_chunk() {
    let sandbox = sandbox();
    let module = sandbox
        .load(abi_module("(loop $l (br $l)) (i32.const 0)", "").as_bytes())
        .expect("loads");
    let control = Arc::new(ChunkControl::default());
    let limits = Limits {
        fuel: u64::MAX,
        ..Limits::CHUNK
    };
    let canceller = {
        let control = control.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            control.cancel();
        })
    };
    let exec = sandbox.call(&module, Entry::Run, b"", &limits, Some(control));
    canceller.join().expect("canceller thread");
    assert_eq!(exec.outcome, Outcome::Cancelled);
}

#[test]
fn nans_have_canonical_bits() {
    // 0/0, sqrt(-1), inf-inf and a NaN with a payload through arithmetic; x86 would
    // give the negative default NaN (0xffc00000) for 0/0 without canonicalisation.
    let body = r#"
      (i32.store (i32.const 512) (i32.reinterpret_f32 (f32.div (f32.const 0) (f32.const 0))))
      (i32.store (i32.const 516) (i32.reinterpret_f32 (f32.sqrt (f32.const -1))))
      (i32.store (i32.const 520) (i32.reinterpret_f32 (f32.sub (f32.const inf) (f32.const inf))))
      (i32.store (i32.const 524) (i32.reinterpret_f32 (f32.add (f32.const -nan:0x123) (f32.const 1))))
      (i64.store (i32.const 528) (i64.reinterpret_f64 (f64.div (f64.const 0) (f64.const 0))))
      (i64.store (i32.const 536) (i64.reinterpret_f64 (f64.mul (f64.const -nan:0x5) (f64.const 2))))
      (call $ret (i32.const 0) (i32.const 512) (i32.const 32))"#;
    let exec = run(&sandbox(), &abi_module(body, ""), b"", &Limits::CHUNK);
    let Outcome::Ok(out) = exec.outcome else {
        panic!("{:?}", exec.outcome)
    };
    for i in 0..4 {
        let bits = u32::from_le_bytes(out[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
        assert_eq!(bits, 0x7fc0_0000, "f32 NaN {i}: {bits:#x}");
    }
    for i in 0..2 {
        let at = 16 + i * 8;
        let bits = u64::from_le_bytes(out[at..at + 8].try_into().expect("8 bytes"));
        assert_eq!(bits, 0x7ff8_0000_0000_0000, "f64 NaN {i}: {bits:#x}");
    }
}

#[test]
fn disk_cache_is_used_and_tampering_is_caught() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = SandboxConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..SandboxConfig::default()
    };
    let wat = abi_module(ECHO, "");
    let first = Sandbox::new(config.clone()).expect("sandbox");
    let module = first.load(wat.as_bytes()).expect("loads");
    let cached: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(cached.len(), 1);
    let name = cached[0]
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(name.starts_with(&module.hash) && name.contains(&first.engine_fingerprint().unwrap()));

    // A fresh sandbox (new engine) loads from disk and runs.
    let second = Sandbox::new(config.clone()).expect("sandbox");
    let m2 = second.load(wat.as_bytes()).expect("loads from cache");
    assert_eq!(
        second.run_chunk(&m2, b"x", &Limits::CHUNK).outcome,
        Outcome::Ok(b"x".to_vec())
    );

    // Flip a byte of the artifact: the MAC check fails, the file is replaced by a
    // fresh compile, and the module still runs.
    let mut bytes = std::fs::read(&cached[0]).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&cached[0], &bytes).expect("write");
    let third = Sandbox::new(config).expect("sandbox");
    let m3 = third.load(wat.as_bytes()).expect("recompiles");
    assert_eq!(
        third.run_chunk(&m3, b"y", &Limits::CHUNK).outcome,
        Outcome::Ok(b"y".to_vec())
    );
    assert_ne!(
        std::fs::read(&cached[0]).expect("read"),
        bytes,
        "bad artifact replaced"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "cache key must be owner-only");
    }
}

#[test]
fn inspect_describes_a_non_abi_module() {
    let info = sandbox()
        .inspect(br#"(module (import "env" "f" (func)) (func (export "main")))"#)
        .expect("inspects");
    assert_eq!(
        info.imports,
        vec![("env.f".to_string(), "func () -> ()".to_string())]
    );
    assert_eq!(info.exports[0].0, "main");
    assert!(!info.abi.ok());
    assert_eq!(
        info.abi.disallowed_imports,
        vec!["env.f (func () -> ())".to_string()]
    );
}

#[test]
fn missing_split_is_invalid_not_a_crash() {
    let sandbox = sandbox();
    let module = sandbox
        .load(abi_module(ECHO, "").as_bytes())
        .expect("loads");
    assert!(!module.has_split);
    let (exec, inputs) = sandbox.split(&module, b"{}", &Limits::SUBMITTER);
    assert!(inputs.is_none());
    assert!(matches!(exec.outcome, Outcome::Invalid(_)));
}

/// Counts down from 200 M, then echoes its input: a call that takes a while.
const COUNTDOWN: &str = "(local $i i32)
    (local.set $i (i32.const 200000000))
    (loop $l
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $l (local.get $i)))
    (call $ret (i32.const 0) (local.get $ptr) (local.get $len))";

#[test]
fn a_paused_call_waits_at_the_gate_and_goes_on_where_it_stopped() {
    let sandbox = sandbox();
    let module = sandbox
        .load(abi_module(COUNTDOWN, "").as_bytes())
        .expect("loads");
    let limits = Limits {
        fuel: u64::MAX,
        // Shorter than the pause: paused time must not count.
        timeout: Duration::from_secs(1),
        ..Limits::CHUNK
    };
    let alone = sandbox.call(&module, Entry::Run, b"x", &limits, None);
    assert_eq!(alone.outcome, Outcome::Ok(b"x".to_vec()));

    let gate = Arc::new(Gate::new(1, 100));
    let control = Arc::new(ChunkControl::gated(gate.clone()));
    let pauser = {
        let (gate, control) = (gate.clone(), control.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while gate.running() == 0 && Instant::now() < deadline {
                std::thread::yield_now();
            }
            gate.set(0, 100);
            let paused = Instant::now();
            while gate.waiting() == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            let seen_paused = control.paused_for().is_some();
            std::thread::sleep(Duration::from_millis(1500).saturating_sub(paused.elapsed()));
            gate.set(1, 100);
            seen_paused
        })
    };
    let started = Instant::now();
    let exec = sandbox.call(&module, Entry::Run, b"x", &limits, Some(control));
    let elapsed = started.elapsed();
    let seen_paused = pauser.join().expect("pauser thread");
    assert_eq!(exec.outcome, Outcome::Ok(b"x".to_vec()), "not timed out");
    assert_eq!(
        exec.fuel_used, alone.fuel_used,
        "the same work, not restarted"
    );
    assert!(elapsed >= Duration::from_millis(1500), "{elapsed:?}");
    assert!(seen_paused, "the call showed as paused");
    assert_eq!(gate.running(), 0, "the place was given back");
}

#[test]
fn a_call_waiting_at_a_closed_gate_can_be_cancelled() {
    let sandbox = sandbox();
    let module = sandbox
        .load(abi_module(COUNTDOWN, "").as_bytes())
        .expect("loads");
    let gate = Arc::new(Gate::new(0, 100));
    let control = Arc::new(ChunkControl::gated(gate));
    let canceller = {
        let control = control.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            control.cancel();
        })
    };
    let exec = sandbox.call(&module, Entry::Run, b"x", &Limits::CHUNK, Some(control));
    canceller.join().expect("canceller thread");
    assert_eq!(exec.outcome, Outcome::Cancelled);
    assert_eq!(exec.fuel_used, 0, "it never started");
}

#[test]
fn fuel_used_does_not_depend_on_the_slice_size() {
    let tiny = Sandbox::new(SandboxConfig {
        fuel_slice: 997,
        pooling: false,
        ..SandboxConfig::default()
    })
    .expect("engine builds");
    let unguarded = Sandbox::new(SandboxConfig {
        guard: Guard::Off,
        ..SandboxConfig::default()
    })
    .expect("engine builds");
    let limits = Limits {
        fuel: 5_000_000,
        ..Limits::CHUNK
    };
    // Runs to the end, and runs out of fuel, on three engines.
    let countdown = abi_module(&COUNTDOWN.replace("200000000", "100000"), "");
    let runaway = abi_module("(loop $l (br $l)) (i32.const 0)", "");
    for wat in [&countdown, &runaway] {
        let execs: Vec<Execution> = [&sandbox(), &tiny, &unguarded]
            .into_iter()
            .map(|s| run(s, wat, b"x", &limits))
            .collect();
        for e in &execs[1..] {
            assert_eq!(e.outcome, execs[0].outcome);
            assert_eq!(e.fuel_used, execs[0].fuel_used);
        }
    }
    assert_eq!(run(&tiny, &runaway, b"", &limits).fuel_used, 5_000_000);
}

#[test]
fn more_calls_than_pool_slots_wait_for_a_slot_instead_of_failing() {
    let sandbox = sandbox();
    // Each call counts down from 2 M first, so that calls overlap.
    let module = sandbox
        .load(abi_module(&COUNTDOWN.replace("200000000", "2000000"), "").as_bytes())
        .expect("loads");
    let threads = 4 * pool_slots() as usize;
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (sandbox, module) = (&sandbox, &module);
                s.spawn(move || {
                    sandbox
                        .run_chunk(module, format!("{i}").as_bytes(), &Limits::CHUNK)
                        .outcome
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("joins"))
            .collect()
    });
    for (i, outcome) in outcomes.into_iter().enumerate() {
        assert_eq!(outcome, Outcome::Ok(format!("{i}").into_bytes()));
    }
}
