//! Loop unrolling: which loops it takes (hand-written WAT), the exact fuel it adds,
//! its bounds, and that the unrolled module behaves exactly as the original (random
//! programs with nested loops, blocks, `br_table` and early exits, run in both).

use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use wasmtime::{Config, Engine, Instance, Module, Store, Val};

use super::*;
use crate::sandbox::rewrite::testing::Rng;

fn wasm(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).expect("test WAT parses")
}

fn unroll(wasm: &[u8]) -> Unrolled {
    let unrolled = unroll_inner_loops(wasm).expect("unrolls");
    wasmparser::Validator::new()
        .validate_all(&unrolled.wasm)
        .expect("the unrolled module validates");
    unrolled
}

/// The names of every operator in `wasm`'s code, in order.
fn operators(wasm: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let wasmparser::Payload::CodeSectionEntry(body) = payload.expect("parses") {
            for op in body.get_operators_reader().expect("operators") {
                let op = format!("{:?}", op.expect("operator"));
                names.push(op.split([' ', '{']).next().unwrap_or_default().to_string());
            }
        }
    }
    names
}

fn engine() -> Engine {
    let mut c = Config::new();
    c.consume_fuel(true);
    Engine::new(&c).expect("engine")
}

/// What a run shows: the result or the trap, the memory, and the fuel used.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    result: Result<i32, String>,
    memory: Vec<u8>,
    fuel: u64,
}

const FUEL: u64 = 100_000_000;

fn execute(engine: &Engine, wasm: &[u8], args: &[Val]) -> Observed {
    let module = Module::new(engine, wasm).expect("compiles");
    let mut store = Store::new(engine, ());
    store.set_fuel(FUEL).expect("fuel is on");
    let instance = Instance::new(&mut store, &module, &[]).expect("instantiates");
    let run = instance.get_func(&mut store, "run").expect("run");
    let mut results = [Val::I32(0)];
    let result = match run.call(&mut store, args, &mut results) {
        Ok(()) => results[0].i32().ok_or_else(|| "not an i32".to_string()),
        Err(e) => Err(format!("{:?}", e.downcast_ref::<wasmtime::Trap>())),
    };
    let memory = instance
        .get_memory(&mut store, "m")
        .map(|m| m.data(&store)[..4096].to_vec())
        .unwrap_or_default();
    Observed {
        result,
        memory,
        fuel: FUEL - store.get_fuel().expect("fuel is on"),
    }
}

/// `n` iterations of an 11-operator loop (8 copies).
const COUNTDOWN: &str = r#"(module
  (func (export "run") (param $n i32) (result i32) (local $s i32)
    (loop $l
      (local.set $s (i32.add (local.get $s) (local.get $n)))
      (br_if $l (i32.gt_s (local.tee $n (i32.sub (local.get $n) (i32.const 1))) (i32.const 0))))
    (local.get $s)))"#;

#[test]
fn a_counted_loop_gives_the_same_result_for_the_same_fuel_whichever_copy_it_leaves_from() {
    let original = wasm(COUNTDOWN);
    let unrolled = unroll(&original);
    assert_eq!(
        unrolled.summary,
        UnrollSummary {
            loops: 1,
            unrolled: 1,
            bytes_added: unrolled.wasm.len() as u64 - original.len() as u64,
        }
    );
    let engine = engine();
    for n in 1..=40 {
        let args = [Val::I32(n)];
        let before = execute(&engine, &original, &args);
        let after = execute(&engine, &unrolled.wasm, &args);
        assert_eq!(before.result, Ok(n * (n + 1) / 2));
        assert_eq!(after.result, before.result, "n = {n}");
        assert_eq!(after.fuel, before.fuel, "n = {n}");
    }
    // Each copy but the last ends with the inverse comparison and leaves by $exit.
    let ops = operators(&unrolled.wasm);
    let count = |name: &str| ops.iter().filter(|op| op.as_str() == name).count();
    assert_eq!((count("I32LeS"), count("I32GtS")), (7, 1), "{ops:?}");
    assert_eq!((count("Loop"), count("Block")), (1, 8), "{ops:?}");
}

#[test]
fn the_rewrite_is_deterministic_and_leaves_loop_free_modules_alone() {
    let original = wasm(COUNTDOWN);
    assert_eq!(unroll(&original).wasm, unroll(&original).wasm);
    let straight = wasm(
        r#"(module (memory 1) (data (i32.const 8) "kept")
             (func (export "run") (param i32) (result i32)
               (block $b (br_if $b (local.get 0)))
               (i32.add (local.get 0) (i32.const 1))))"#,
    );
    let same = unroll(&straight);
    assert_eq!(same.wasm, straight);
    assert_eq!(same.summary, UnrollSummary::default());
}

#[test]
fn only_small_innermost_loops_closed_by_an_integer_comparison_are_unrolled() {
    let count = |wat: &str| {
        let s = unroll(&wasm(wat)).summary;
        (s.loops, s.unrolled)
    };
    // Nested: only the inner loop.
    let nested = r#"(module (func (param $n i32) (local $i i32)
        (loop $outer
          (local.set $i (local.get $n))
          (loop $inner (br_if $inner (i32.ne (local.tee $i (i32.sub (local.get $i) (i32.const 1))) (i32.const 0))))
          (br_if $outer (i32.ne (local.tee $n (i32.sub (local.get $n) (i32.const 1))) (i32.const 0))))))"#;
    assert_eq!(count(nested), (1, 1));
    // Closed by a value, a float comparison, or a branch that is not last: left alone.
    for tail in [
        "(br_if $l (local.get $n))",
        "(br_if $l (f32.lt (f32.convert_i32_s (local.get $n)) (f32.const 9)))",
        "(br_if $l (i32.lt_s (local.get $n) (i32.const 9))) (nop)",
        "(if (i32.lt_s (local.get $n) (i32.const 9)) (then (br $l)))",
    ] {
        let wat = format!(
            "(module (func (param $n i32) (loop $l (local.set $n (i32.add (local.get $n) (i32.const 1))) {tail})))"
        );
        assert_eq!(count(&wat), (1, 0), "{tail}");
    }
    // A loop that never branches back is a block: not counted.
    assert_eq!(count("(module (func (loop $l nop)))"), (0, 0));
    // A loop with parameters (a type index): counted, not unrolled.
    let params = r#"(module (type $t (func (param i32) (result i32)))
        (func (param $n i32) (result i32)
          (local.get $n)
          (loop $l (type $t) (i32.sub (i32.const 1)) (local.tee $n) (br_if $l (i32.eqz (i32.eqz (local.get $n)))) (drop) (local.get $n))))"#;
    assert_eq!(count(params), (1, 0));
    // A result type: left alone (the last copy's value would have nowhere to go).
    let with_result = r#"(module (func (param $n i32) (result i32)
        (loop $l (result i32)
          (local.get $n)
          (br_if $l (i32.ne (local.tee $n (i32.sub (local.get $n) (i32.const 1))) (i32.const 0))))))"#;
    assert_eq!(count(with_result), (1, 0));
    // A body of UNROLLED_OPS / 2 operators gets two copies; one more, none.
    for (ops, unrolled) in [(UNROLLED_OPS / 2, 1), (UNROLLED_OPS / 2 + 1, 0)] {
        // 4 operators per statement, 4 to close.
        let statements = (ops - 4) / 4;
        let nops = ops - 4 - 4 * statements;
        let body = "(local.set $n (i32.add (local.get $n) (i32.const 1)))".repeat(statements)
            + &"(nop)".repeat(nops);
        let wat = format!(
            "(module (func (param $n i32) (loop $l {body} (br_if $l (i32.lt_u (local.get $n) (i32.const 9))))))"
        );
        assert_eq!(count(&wat), (1, unrolled), "{ops} operators");
    }
}

#[test]
fn branches_out_of_the_loop_keep_their_targets_in_every_copy() {
    // Leaves by an outer block with a value, by br_table to the loop, to an inner
    // block and to the outer block, and by return; each path marks memory.
    let wat = r#"(module (memory (export "m") 1)
      (func (export "run") (param $n i32) (result i32) (local $i i32)
        (i32.add (i32.const 1000)
          (block $out (result i32)
            (loop $l
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (i32.store (i32.mul (local.get $i) (i32.const 4)) (local.get $i))
              (block $skip
                (br_table $l $skip $skip $skip $l
                  (i32.rem_u (local.get $i) (i32.const 5)))
                ;; i % 5 in 1..=3: falls here.
                )
              (if (i32.eq (local.get $i) (local.get $n)) (then (return (i32.const -1))))
              (drop (br_if $out (i32.mul (local.get $i) (i32.const 3))
                (i32.ge_u (local.get $i) (i32.const 30))))
              (br_if $l (i32.lt_u (local.get $i) (i32.const 25))))
            (i32.const 7)))))"#;
    let original = wasm(wat);
    let unrolled = unroll(&original);
    assert_eq!(unrolled.summary.unrolled, 1);
    let engine = engine();
    let mut results = std::collections::BTreeSet::new();
    for n in [0, 3, 7, 12, 24, 25, 26, 31, 40] {
        let before = execute(&engine, &original, &[Val::I32(n)]);
        let after = execute(&engine, &unrolled.wasm, &[Val::I32(n)]);
        assert_eq!(after.result, before.result, "n = {n}");
        assert_eq!(after.memory, before.memory, "n = {n}");
        assert_eq!(after.fuel, before.fuel, "n = {n}");
        results.insert(before.result.expect("returns"));
    }
    // Every way out was taken: return, br $out, fall-through.
    assert!(
        results.contains(&-1) && results.contains(&1007),
        "{results:?}"
    );
}

#[test]
fn growth_stops_at_the_budget_and_later_loops_stay_as_they_are() {
    // Enough 8-copy loops to pass the 1 MiB floor.
    let loops = r#"(local.set $n (i32.const 9))
        (loop $l (local.set $s (i32.add (local.get $s) (local.get $n)))
          (br_if $l (i32.ne (local.tee $n (i32.sub (local.get $n) (i32.const 1))) (i32.const 0))))"#
        .repeat(10_000);
    let wat = format!(
        r#"(module (func (export "run") (result i32) (local $n i32) (local $s i32) {loops} (local.get $s)))"#
    );
    let original = wasm(&wat);
    let unrolled = unroll(&original);
    let s = unrolled.summary;
    assert_eq!(s.loops, 10_000);
    assert!(s.unrolled > 1000 && s.unrolled < 10_000, "{s:?}");
    assert!(s.bytes_added as usize <= budget(original.len()), "{s:?}");
    assert!(
        s.bytes_added as usize > budget(original.len()) * 9 / 10,
        "{s:?}"
    );
    // The first loops are the ones unrolled.
    let ops = operators(&unrolled.wasm);
    let first_loop = ops.iter().position(|op| op == "Loop").expect("a loop");
    assert_eq!(ops[first_loop - 1], "Block", "the first loop is unrolled");
    let last_loop = ops.iter().rposition(|op| op == "Loop").expect("a loop");
    assert_ne!(ops[last_loop - 1], "Block", "the last loop is not");
}

#[test]
fn broken_modules_give_an_error_not_a_panic() {
    let original = wasm(COUNTDOWN);
    let code = wasmparser::Parser::new(0)
        .parse_all(&original)
        .find_map(|p| match p {
            Ok(wasmparser::Payload::CodeSectionStart { range, .. }) => Some(range),
            _ => None,
        })
        .expect("a code section");
    assert!(unroll_inner_loops(&original[..code.start + 6]).is_err());
    assert!(unroll_inner_loops(b"\0asm\x01\0\0\0\x0a\x05\x01\x03\0\x0b\x0b").is_err());
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 2000,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    runner
        .run(
            &(0..original.len(), proptest::prelude::any::<u8>()),
            |(at, byte)| {
                let mut bytes = original.clone();
                bytes[at] = byte;
                // Either way, no panic; and a module that parses still does once
                // rewritten (bytes after the code section are copied as they are).
                let parses = |wasm: &[u8]| {
                    wasmparser::Parser::new(0)
                        .parse_all(wasm)
                        .all(|payload| payload.is_ok())
                };
                if let Ok(u) = unroll_inner_loops(&bytes)
                    && parses(&bytes)
                    && !parses(&u.wasm)
                {
                    return Err(TestCaseError::fail("unrolled bytes do not parse"));
                }
                Ok(())
            },
        )
        .expect("no panic");
}

/// Builds random programs: `run` (i32 locals `$a $b`, one counter per loop depth)
/// with stores, blocks, `if`s, loops (some with a result) up to three deep, and
/// branches to random labels (`br_if`, `br_table`, `return`). Every branch back to a
/// loop needs its counter above zero, and each iteration counts it down, so every
/// program ends.
struct ProgramGen {
    rng: Rng,
    /// Open labels, innermost last: (name, the counter if a loop).
    labels: Vec<(String, Option<u32>)>,
    loops: u32,
    next_label: u32,
}

impl ProgramGen {
    fn value(&mut self) -> String {
        match self.rng.below(4) {
            0 => format!("(i32.const {})", self.rng.below(100)),
            1 => format!("(local.get {})", self.rng.pick(&["$a", "$b"])),
            2 => format!(
                "(i32.add (local.get $a) (i32.mul (local.get $b) (i32.const {})))",
                self.rng.below(7)
            ),
            _ => format!(
                "(i32.xor (local.get {}) (i32.const {}))",
                self.rng.pick(&["$a", "$b"]),
                self.rng.below(1 << 16)
            ),
        }
    }

    fn cond(&mut self) -> String {
        format!(
            "(i32.eq (i32.and {} (i32.const 3)) (i32.const {}))",
            self.value(),
            self.rng.below(4)
        )
    }

    /// A condition that also requires every loop in `targets` to have iterations
    /// left.
    fn guarded(&mut self, targets: &[usize]) -> String {
        let mut cond = self.cond();
        for &t in targets {
            if let Some(counter) = self.labels[t].1 {
                cond = format!("(i32.and {cond} (i32.gt_s (local.get $c{counter}) (i32.const 0)))");
            }
        }
        cond
    }

    fn label(&mut self, prefix: &str) -> String {
        self.next_label += 1;
        format!("${prefix}{}", self.next_label)
    }

    fn stmts(&mut self, depth: u32) -> String {
        let n = 1 + self.rng.below(4);
        (0..n)
            .map(|_| self.stmt(depth))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn stmt(&mut self, depth: u32) -> String {
        let leaf = depth == 0;
        match self.rng.below(if leaf { 4 } else { 9 }) {
            0 => format!(
                "(local.set {} (i32.add {} {}))",
                self.rng.pick(&["$a", "$b"]),
                self.value(),
                self.value()
            ),
            1 => format!(
                "(i32.store offset={} (i32.const 0) {})",
                4 * self.rng.below(1000),
                self.value()
            ),
            2 | 3 if !self.labels.is_empty() => self.branch(),
            2 | 3 => "(nop)".into(),
            4 => {
                let l = self.label("b");
                self.labels.push((l.clone(), None));
                let body = self.stmts(depth - 1);
                self.labels.pop();
                format!("(block {l} {body})")
            }
            5 => {
                let l = self.label("i");
                let cond = self.cond();
                self.labels.push((l.clone(), None));
                let (then, other) = (self.stmts(depth - 1), self.stmts(depth - 1));
                self.labels.pop();
                format!("(if {l} {cond} (then {then}) (else {other}))")
            }
            _ if self.loops >= 3 => "(local.set $a (i32.const 5))".into(),
            _ => self.a_loop(depth),
        }
    }

    fn a_loop(&mut self, depth: u32) -> String {
        let counter = self.loops;
        self.loops += 1;
        let l = self.label("l");
        self.labels.push((l.clone(), Some(counter)));
        let body = self.stmts(depth - 1);
        self.labels.pop();
        self.loops -= 1;
        let c = format!("$c{counter}");
        let start = 1 + self.rng.below(6);
        let head = format!("(local.set {c} (i32.const {start}))");
        let iterate = format!("(local.set {c} (i32.sub (local.get {c}) (i32.const 1)))");
        let back = format!("(br_if {l} (i32.gt_s (local.get {c}) (i32.const 0)))");
        if self.rng.below(3) == 0 {
            let value = self.value();
            format!(
                "{head} (local.set $b (i32.add (local.get $b) (loop {l} (result i32) {iterate} {body} {back} {value})))"
            )
        } else {
            format!("{head} (loop {l} {iterate} {body} {back})")
        }
    }

    fn branch(&mut self) -> String {
        let n = self.labels.len();
        match self.rng.below(8) {
            0 => format!("(if {} (then (return {})))", self.cond(), self.value()),
            1 | 2 => {
                let targets: Vec<usize> = (0..1 + self.rng.below(4))
                    .map(|_| self.rng.below(n as u64) as usize)
                    .collect();
                let cond = self.guarded(&targets);
                let names: Vec<&str> = targets.iter().map(|&t| self.labels[t].0.as_str()).collect();
                let names = names.join(" ");
                let index = self.value();
                format!("(if {cond} (then (br_table {names} (i32.and {index} (i32.const 3)))))")
            }
            _ => {
                let t = self.rng.below(n as u64) as usize;
                let cond = self.guarded(&[t]);
                format!("(br_if {} {cond})", self.labels[t].0)
            }
        }
    }

    fn program(&mut self) -> String {
        let body = self.stmts(4);
        format!(
            r#"(module
  (memory (export "m") 1)
  (func (export "run") (param $a i32) (result i32)
    (local $b i32) (local $c0 i32) (local $c1 i32) (local $c2 i32)
    {body}
    (i32.add (local.get $a) (i32.mul (local.get $b) (i32.const 31)))))"#
        )
    }
}

#[test]
fn unrolled_programs_behave_as_the_originals_for_the_same_fuel() {
    let engine = engine();
    let (mut runner, cases) = crate::sandbox::rewrite::testing::runner("UNROLL_CASES", 300);
    let unrolled_any = std::cell::Cell::new(0u32);
    runner
        .run(&proptest::prelude::any::<u64>(), |seed| {
            let mut generator = ProgramGen {
                rng: Rng(seed),
                labels: Vec::new(),
                loops: 0,
                next_label: 0,
            };
            let wat = generator.program();
            let arg = generator.rng.below(64) as i32;
            let original = wasm(&wat);
            let unrolled = unroll_inner_loops(&original)
                .map_err(|e| TestCaseError::fail(format!("{e}\n{wat}")))?;
            wasmparser::Validator::new()
                .validate_all(&unrolled.wasm)
                .map_err(|e| TestCaseError::fail(format!("{e}\n{wat}")))?;
            if unrolled.summary.unrolled > 0 {
                unrolled_any.set(unrolled_any.get() + 1);
            }
            let before = execute(&engine, &original, &[Val::I32(arg)]);
            let after = execute(&engine, &unrolled.wasm, &[Val::I32(arg)]);
            let fail =
                |what: &str| TestCaseError::fail(format!("{what}: {before:?} vs {after:?}\n{wat}"));
            if before != after {
                return Err(fail("different behaviour or fuel"));
            }
            Ok(())
        })
        .expect("unrolling changes nothing a program can see");
    assert!(
        unrolled_any.get() >= cases / 3,
        "only {} of {cases} programs had a loop unrolled",
        unrolled_any.get()
    );
}
