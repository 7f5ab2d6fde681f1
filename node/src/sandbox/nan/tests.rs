//! The NaN rewrite: which sites it canonicalises (hand-written WAT), and that the
//! rewritten module without Cranelift's canonicalisation behaves exactly as the
//! original with it (random float programs, run in both).

use proptest::test_runner::TestCaseError;
use wasmtime::{Config, Engine, Instance, Module, Store, Val};

use super::*;
use crate::sandbox::rewrite::testing::Rng;

fn wasm(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).expect("test WAT parses")
}

fn rewrite(wat: &str) -> Rewritten {
    let rewritten = canonicalise_observable_nans(&wasm(wat)).expect("rewrites");
    wasmparser::Validator::new()
        .validate_all(&rewritten.wasm)
        .expect("the rewritten module validates");
    rewritten
}

/// (scalar sites, scalar sites canonicalised) of a module.
fn counts(wat: &str) -> (u64, u64) {
    let s = rewrite(wat).summary;
    (s.scalar_sites, s.scalar_canonicalised)
}

/// A module with one function `f` (two f32 params, locals `$t` f32 and `$d` f64),
/// a memory, a mutable global and a helper `$h` taking an f32.
fn func(body: &str, result: &str) -> String {
    format!(
        r#"(module
  (memory 1)
  (global $g (mut f32) (f32.const 0))
  (func $h (param f32))
  (func (export "f") (param $a f32) (param $b f32) {result}
    (local $t f32) (local $d f64)
    {body}))"#
    )
}

#[test]
fn a_mandelbrot_loop_whose_floats_only_meet_comparisons_gets_no_canonicalisation() {
    // z = z² + c until |z|² > 4 or max iterations; only the count is stored.
    let wat = r#"(module
  (memory 1)
  (func (export "mandel") (param $cr f64) (param $ci f64) (param $max i32)
    (local $zr f64) (local $zi f64) (local $t f64) (local $n i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $n) (local.get $max)))
        (local.set $t (f64.add (f64.sub (f64.mul (local.get $zr) (local.get $zr))
                                        (f64.mul (local.get $zi) (local.get $zi)))
                               (local.get $cr)))
        (local.set $zi (f64.add (f64.mul (f64.mul (f64.const 2) (local.get $zr))
                                         (local.get $zi))
                                (local.get $ci)))
        (local.set $zr (local.get $t))
        (br_if $done (f64.gt (f64.add (f64.mul (local.get $zr) (local.get $zr))
                                      (f64.mul (local.get $zi) (local.get $zi)))
                             (f64.const 4)))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $next)))
    (i32.store (i32.const 0) (local.get $n))
    (i32.store (i32.const 4) (i32.trunc_sat_f64_s (f64.sqrt (local.get $zr))))))"#;
    let (sites, canonicalised) = counts(wat);
    assert_eq!(sites, 11);
    assert_eq!(canonicalised, 0);
    assert_eq!(
        rewrite(wat).wasm,
        wasm(wat),
        "nothing to canonicalise: the bytes are unchanged"
    );
}

#[test]
fn every_way_a_nan_can_be_seen_gets_its_site_canonicalised() {
    let div = "(f32.div (local.get $a) (local.get $b))";
    let seen = [
        ("a store", format!("(f32.store (i32.const 0) {div})"), ""),
        (
            "a reinterpret",
            format!("(i32.store (i32.const 0) (i32.reinterpret_f32 {div}))"),
            "",
        ),
        (
            "the sign source of copysign",
            format!("(f32.store (i32.const 0) (f32.copysign (f32.const 1) {div}))"),
            "",
        ),
        (
            "the magnitude of copysign, stored",
            format!("(f32.store (i32.const 0) (f32.copysign {div} (f32.const 1)))"),
            "",
        ),
        ("a call argument", format!("(call $h {div})"), ""),
        ("a return value", div.to_string(), "(result f32)"),
        (
            "an explicit return",
            format!("(return {div})"),
            "(result f32)",
        ),
        ("a global", format!("(global.set $g {div})"), ""),
        (
            "a local later stored",
            format!("(local.set $t {div}) (f32.store (i32.const 0) (f32.neg (local.get $t)))"),
            "",
        ),
        (
            "a local later stored through a tee",
            format!("(f32.store (i32.const 0) (local.tee $t {div}))"),
            "",
        ),
        (
            "a block result",
            format!("(drop (f32.lt (block (result f32) {div}) (f32.const 0)))"),
            "",
        ),
        (
            "a branch operand",
            format!(
                "(drop (f32.lt (block (result f32) (drop (br_if 0 {div} (i32.const 1))) \
                 (f32.const 0)) (f32.const 0)))"
            ),
            "",
        ),
        (
            "a select stored",
            format!("(f32.store (i32.const 0) (select {div} (f32.const 1) (i32.const 1)))"),
            "",
        ),
    ];
    for (what, body, result) in seen {
        let wat = func(&body, result);
        let (sites, canonicalised) = counts(&wat);
        assert_eq!((sites, canonicalised), (1, 1), "{what}: {wat}");
    }
}

#[test]
fn a_nan_that_only_meets_insensitive_uses_is_left_alone() {
    let div = "(f32.div (local.get $a) (local.get $b))";
    let unseen = [
        format!("(drop {div})"),
        format!("(drop (f32.eq {div} (f32.const 1)))"),
        format!("(drop (i32.trunc_sat_f32_s {div}))"),
        format!("(drop (i64.trunc_f32_u (f32.abs {div})))"),
        // Through a local, neg and copysign's magnitude into a comparison.
        format!(
            "(local.set $t {div}) \
             (drop (f32.ne (f32.copysign (f32.neg (local.get $t)) (f32.const -1)) (f32.const 0)))"
        ),
        // Into another NaN-producing operator, whose own result is stored: only that
        // one is canonicalised.
        format!("(drop (f32.gt (f32.sqrt {div}) (f32.const 0)))"),
    ];
    for body in unseen {
        let wat = func(&body, "");
        let (sites, canonicalised) = counts(&wat);
        assert_eq!(canonicalised, 0, "{body} ({sites} sites)");
    }
    for outer in ["f32.sqrt", "f64.promote_f32"] {
        let store = if outer == "f32.sqrt" {
            "f32.store"
        } else {
            "f64.store"
        };
        let (sites, canonicalised) = counts(&func(
            &format!("({store} (i32.const 0) ({outer} {div}))"),
            "",
        ));
        assert_eq!((sites, canonicalised), (2, 1), "{outer}");
    }
}

#[test]
fn simd_sites_are_always_canonicalised_and_unreachable_code_does_not_confuse_it() {
    let r = rewrite(
        r#"(module
  (memory 1)
  (func (export "f") (param v128) (result i32)
    (drop (f32x4.add (local.get 0) (local.get 0)))
    (drop (f64x2.relaxed_madd (local.get 0) (local.get 0) (local.get 0)))
    (f32x4.extract_lane 0 (f32x4.pmin (local.get 0) (local.get 0)))
    (drop)
    (i32.const 1)
    (return)
    (f32.add)
    (drop)
    (f64.mul)
    (drop)
    (unreachable)
    (f32.store)
    (select)
    (local.set 0)
    (i32.const 0)))"#,
    );
    assert_eq!(r.summary.simd_sites, 2);
    assert_eq!(r.summary.scalar_sites, 2);
}

#[test]
fn the_rewrite_is_deterministic_and_leaves_float_free_modules_alone() {
    let floats = func(
        "(f32.store (i32.const 0) (f32.add (local.get $a) (local.get $b))) \
         (local.set $d (f64.promote_f32 (local.get $a))) \
         (f64.store (i32.const 8) (f64.mul (local.get $d) (local.get $d)))",
        "",
    );
    let first = canonicalise_observable_nans(&wasm(&floats)).expect("rewrites");
    let second = canonicalise_observable_nans(&wasm(&floats)).expect("rewrites");
    assert_eq!(first.wasm, second.wasm);
    assert_ne!(first.wasm, wasm(&floats));
    // The promotion only feeds a multiplication: not canonicalised.
    assert_eq!(first.summary.scalar_sites, 3);
    assert_eq!(first.summary.scalar_canonicalised, 2);

    let ints = r#"(module $named
  (memory (export "memory") 1)
  (data (i32.const 8) "hello")
  (func $f (export "f") (param i32) (result i32)
    (i32.add (local.get 0) (i32.load (i32.const 8))))
  (@custom "extra" "bytes"))"#;
    assert_eq!(rewrite(ints).wasm, wasm(ints));
}

#[test]
fn other_sections_are_kept_byte_for_byte() {
    // Custom sections before and after the code, a name section, data.
    let wat = r#"(module $m
  (@custom "before" (before code) "x")
  (memory 1)
  (data (i32.const 0) "data")
  (func $f (export "f") (param $a f32) (result f32) (f32.sqrt (local.get $a)))
  (@custom "after" (after code) "y"))"#;
    let original = wasm(wat);
    let rewritten = rewrite(wat).wasm;
    let sections = |bytes: &[u8]| -> Vec<(u8, Vec<u8>)> {
        Parser::new(0)
            .parse_all(bytes)
            .filter_map(|p| p.expect("parses").as_section())
            .map(|(id, range)| (id, bytes[range].to_vec()))
            .collect()
    };
    let (a, b) = (sections(&original), sections(&rewritten));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.0, y.0);
        if x.0 != 10 {
            assert_eq!(x, y, "section {} changed", x.0);
        }
    }
}

#[test]
fn a_module_that_piles_up_its_operand_stack_is_refused_not_followed() {
    // Blocks of 1 000 results each, made from nothing in unreachable code.
    let results = "i32 ".repeat(1000);
    let blocks = "(block (type $t) (unreachable))\n".repeat(MAX_STACK / 1000 + 1);
    let wat = format!("(module (type $t (func (result {results}))) (func {blocks} (unreachable)))");
    let err = canonicalise_observable_nans(&wasm(&wat)).expect_err("too deep");
    assert!(matches!(err, NanRewriteError::TooDeep(_)), "{err}");
}

/// A module of `functions` functions, each `v + v + ...` over `sites` float SIMD
/// additions (each canonicalised).
fn simd_chains(functions: usize, sites: usize) -> Vec<u8> {
    crate::sandbox::rewrite::testing::chains(
        ValType::V128,
        functions,
        sites,
        &[Instruction::LocalGet(0), Instruction::F32x4Add],
    )
}

#[test]
fn a_function_grown_past_wasmtimes_limit_is_refused_with_a_reason() {
    // 5 bytes a site grow to about 34: 250 000 sites (1.25 MB, under the 2 MiB a
    // peer's function may have) pass 7 654 321 bytes once canonicalised.
    let module = simd_chains(1, 250_000);
    let err = canonicalise_observable_nans(&module).expect_err("too large");
    assert!(
        matches!(err, NanRewriteError::FunctionTooLarge { index: 0, bytes } if bytes > 7_654_321),
        "{err}"
    );
    assert!(
        err.to_string().contains("split it into smaller functions"),
        "{err}"
    );
    // Through the sandbox: refused with that reason (not as a peergrid bug), before
    // Cranelift compiles anything.
    let sandbox =
        crate::sandbox::Sandbox::new(crate::sandbox::SandboxConfig::default()).expect("sandbox");
    let err = sandbox.load(&module).expect_err("refused");
    assert!(err.to_string().contains("over wasmtime's limit"), "{err}");
    assert!(!err.to_string().contains("bug"), "{err}");
}

#[test]
fn a_module_grown_past_the_rewrite_ceiling_is_refused_before_it_is_built() {
    // Four functions of 1 000 sites: each grows by some 29 KB. A ceiling of 60 KB
    // more than the module lets two through and refuses at the third.
    let module = simd_chains(4, 1_000);
    let (plans, _) = analyse_module(&module).expect("analyses");
    let all = emit(&module, &plans, usize::MAX).expect("no ceiling");
    let grown = all.len() - module.len();
    assert!(grown > 4 * 25_000, "{grown}");
    let err = emit(&module, &plans, module.len() + grown / 2).expect_err("over the ceiling");
    assert!(matches!(err, NanRewriteError::ModuleTooLarge), "{err}");
    assert!(err.to_string().contains("split the job"), "{err}");
    assert_eq!(
        emit(&module, &plans, all.len()).expect("at the ceiling"),
        all
    );
}

// ---------------------------------------------------------------------------
// Differential: random float programs, original + Cranelift's canonicalisation
// against rewritten + none.

fn engine(every_op: bool) -> Engine {
    let mut c = Config::new();
    c.cranelift_nan_canonicalization(every_op)
        // A guard, should a generated program loop (none should): both sides get the
        // same fuel, and running out shows as a difference.
        .consume_fuel(true)
        .wasm_relaxed_simd(true)
        .relaxed_simd_deterministic(true);
    Engine::new(&c).expect("engine")
}

/// What a run can show: the result's bits or the trap, and the whole memory.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    result: Result<u64, String>,
    memory: Vec<u8>,
}

fn execute(engine: &Engine, wasm: &[u8], input: &[u8]) -> Observed {
    let module = Module::new(engine, wasm).expect("compiles");
    let mut store = Store::new(engine, ());
    store.set_fuel(10_000_000).expect("fuel is on");
    let instance = Instance::new(&mut store, &module, &[]).expect("instantiates");
    let memory = instance.get_memory(&mut store, "m").expect("memory");
    memory.write(&mut store, 0, input).expect("input fits");
    let run = instance.get_func(&mut store, "run").expect("run");
    let mut results = [Val::I32(0)];
    let result = match run.call(&mut store, &[], &mut results) {
        Ok(()) => match results[0] {
            Val::F64(bits) => Ok(bits),
            ref other => Err(format!("unexpected result {other:?}")),
        },
        Err(e) => Err(format!("{:?}", e.downcast_ref::<wasmtime::Trap>())),
    };
    Observed {
        result,
        memory: memory.data(&store)[..4096].to_vec(),
    }
}

const F32_BITS: [u32; 14] = [
    0x7fc0_0000, // canonical NaN
    0xffc0_0000, // x86's default NaN
    0x7f80_0001, // signalling, payload 1
    0xff81_2345, // negative signalling with a payload
    0x7fd2_3456, // quiet with a payload
    0xffff_ffff,
    0x0000_0000,
    0x8000_0000,
    0x3f80_0000,
    0xbf80_0000,
    0x7f80_0000,
    0xff80_0000,
    0x0000_0001,
    0x7f7f_ffff,
];

const F64_BITS: [u64; 12] = [
    0x7ff8_0000_0000_0000,
    0xfff8_0000_0000_0000,
    0x7ff0_0000_0000_0001,
    0xfff4_5678_9abc_def0,
    0x7ffc_0000_0000_1234,
    0x0000_0000_0000_0000,
    0x8000_0000_0000_0000,
    0x3ff0_0000_0000_0000,
    0xc000_0000_0000_0000,
    0x7ff0_0000_0000_0000,
    0xfff0_0000_0000_0000,
    0x0000_0000_0000_0001,
];

fn f32_const(bits: u32) -> String {
    let v = f32::from_bits(bits);
    let sign = if bits >> 31 == 1 { "-" } else { "" };
    if v.is_nan() {
        format!("(f32.const {sign}nan:0x{:x})", bits & 0x7f_ffff)
    } else if v.is_infinite() {
        format!("(f32.const {sign}inf)")
    } else {
        format!("(f32.const {v:e})")
    }
}

fn f64_const(bits: u64) -> String {
    let v = f64::from_bits(bits);
    let sign = if bits >> 63 == 1 { "-" } else { "" };
    if v.is_nan() {
        format!("(f64.const {sign}nan:0x{:x})", bits & 0xf_ffff_ffff_ffff)
    } else if v.is_infinite() {
        format!("(f64.const {sign}inf)")
    } else {
        format!("(f64.const {v:e})")
    }
}

/// Builds one random program: `run` (locals `$a $b` f32, `$x $y` f64, `$i` i32)
/// stores, branches and loops over float expressions of the input at 0..64, calls
/// `$h`, and returns an f64. The output goes to 64..4096.
struct ProgramGen {
    rng: Rng,
    /// In `$h` (params `$p` f32, `$q` f64) rather than `run`.
    in_helper: bool,
}

impl ProgramGen {
    fn f32_local(&mut self) -> &'static str {
        if self.in_helper {
            "$p"
        } else {
            self.rng.pick(&["$a", "$b"])
        }
    }

    fn f64_local(&mut self) -> &'static str {
        if self.in_helper {
            "$q"
        } else {
            self.rng.pick(&["$x", "$y"])
        }
    }

    fn cond(&mut self, depth: u32) -> String {
        match self.rng.below(5) {
            0 => format!(
                "({} {} {})",
                self.rng.pick(&["f32.lt", "f32.ge", "f32.ne", "f32.eq"]),
                self.f32(depth),
                self.f32(depth)
            ),
            1 => format!(
                "({} {} {})",
                self.rng.pick(&["f64.gt", "f64.le", "f64.eq"]),
                self.f64(depth),
                self.f64(depth)
            ),
            2 => format!("(i32.trunc_sat_f64_s {})", self.f64(depth)),
            _ => format!("(i32.load8_u offset={} (i32.const 0))", self.rng.below(64)),
        }
    }

    fn f32(&mut self, depth: u32) -> String {
        let leaf = depth == 0 || self.rng.below(4) == 0;
        if leaf {
            return match self.rng.below(5) {
                0 => f32_const(self.rng.pick(&F32_BITS)),
                1 => format!("(f32.load offset={} (i32.const 0))", 4 * self.rng.below(8)),
                2 => format!(
                    "(f32.reinterpret_i32 (i32.load offset={} (i32.const 0)))",
                    4 * self.rng.below(8)
                ),
                3 => "(f32.convert_i32_s (i32.load8_s offset=3 (i32.const 0)))".to_string(),
                _ => format!("(local.get {})", self.f32_local()),
            };
        }
        let d = depth - 1;
        match self.rng.below(12) {
            0..=2 => format!(
                "({} {} {})",
                self.rng.pick(&[
                    "f32.add", "f32.sub", "f32.mul", "f32.div", "f32.min", "f32.max"
                ]),
                self.f32(d),
                self.f32(d)
            ),
            3 => format!(
                "({} {})",
                self.rng.pick(&[
                    "f32.sqrt",
                    "f32.ceil",
                    "f32.floor",
                    "f32.trunc",
                    "f32.nearest",
                    "f32.neg",
                    "f32.abs"
                ]),
                self.f32(d)
            ),
            4 => format!("(f32.copysign {} {})", self.f32(d), self.f32(d)),
            5 => format!("(select {} {} {})", self.f32(d), self.f32(d), self.cond(d)),
            6 => format!("(f32.demote_f64 {})", self.f64(d)),
            7 => format!("(block (result f32) {})", self.f32(d)),
            8 => format!(
                "(if (result f32) {} (then {}) (else {}))",
                self.cond(d),
                self.f32(d),
                self.f32(d)
            ),
            9 => format!("(local.tee {} {})", self.f32_local(), self.f32(d)),
            10 if !self.in_helper => {
                format!("(f32.demote_f64 (call $h {} {}))", self.f32(d), self.f64(d))
            }
            _ => format!(
                "(block (result f32) (drop (br_if 0 {} {})) {})",
                self.f32(d),
                self.cond(d),
                self.f32(d)
            ),
        }
    }

    fn f64(&mut self, depth: u32) -> String {
        let leaf = depth == 0 || self.rng.below(4) == 0;
        if leaf {
            return match self.rng.below(5) {
                0 => f64_const(self.rng.pick(&F64_BITS)),
                1 => format!(
                    "(f64.load offset={} (i32.const 0))",
                    32 + 8 * self.rng.below(4)
                ),
                2 => format!(
                    "(f64.reinterpret_i64 (i64.load offset={} (i32.const 0)))",
                    32 + 8 * self.rng.below(4)
                ),
                3 if !self.in_helper => "(global.get $g)".to_string(),
                _ => format!("(local.get {})", self.f64_local()),
            };
        }
        let d = depth - 1;
        match self.rng.below(10) {
            0..=2 => format!(
                "({} {} {})",
                self.rng.pick(&[
                    "f64.add", "f64.sub", "f64.mul", "f64.div", "f64.min", "f64.max"
                ]),
                self.f64(d),
                self.f64(d)
            ),
            3 => format!(
                "({} {})",
                self.rng.pick(&[
                    "f64.sqrt",
                    "f64.ceil",
                    "f64.floor",
                    "f64.trunc",
                    "f64.nearest",
                    "f64.neg",
                    "f64.abs"
                ]),
                self.f64(d)
            ),
            4 => format!("(f64.copysign {} {})", self.f64(d), self.f64(d)),
            5 => format!("(select {} {} {})", self.f64(d), self.f64(d), self.cond(d)),
            6 => format!("(f64.promote_f32 {})", self.f32(d)),
            7 => format!("(local.tee {} {})", self.f64_local(), self.f64(d)),
            8 if !self.in_helper => format!("(call $h {} {})", self.f32(d), self.f64(d)),
            _ => format!(
                "(if (result f64) {} (then {}) (else {}))",
                self.cond(d),
                self.f64(d),
                self.f64(d)
            ),
        }
    }

    fn address(&mut self, align: u64) -> u64 {
        64 + align * self.rng.below((4096 - 64) / align)
    }

    fn stmt(&mut self, depth: u32) -> String {
        let d = 3;
        match self.rng.below(if depth == 0 { 10 } else { 12 }) {
            0 => format!(
                "(f32.store offset={} (i32.const 0) {})",
                self.address(4),
                self.f32(d)
            ),
            1 => format!(
                "(f64.store offset={} (i32.const 0) {})",
                self.address(8),
                self.f64(d)
            ),
            2 => format!(
                "(i32.store offset={} (i32.const 0) (i32.reinterpret_f32 {}))",
                self.address(4),
                self.f32(d)
            ),
            3 => format!(
                "(i64.store offset={} (i32.const 0) (i64.reinterpret_f64 {}))",
                self.address(8),
                self.f64(d)
            ),
            4 => format!("(local.set {} {})", self.f32_local(), self.f32(d)),
            5 => format!("(local.set {} {})", self.f64_local(), self.f64(d)),
            6 => format!("(global.set $g {})", self.f64(d)),
            7 => format!("(drop {})", self.f32(d)),
            8 => format!(
                "(i32.store offset={} (i32.const 0) (i32.trunc_sat_f32_u {}))",
                self.address(4),
                self.f32(d)
            ),
            9 if self.rng.below(4) == 0 => format!(
                "(i32.store offset={} (i32.const 0) (i32.trunc_f64_s {}))",
                self.address(4),
                self.f64(d)
            ),
            9 => format!(
                "(i32.store8 offset={} (i32.const 0) {})",
                self.address(1),
                self.cond(d)
            ),
            10 => format!(
                "(if {} (then {}) (else {}))",
                self.cond(d),
                self.stmt(depth - 1),
                self.stmt(depth - 1)
            ),
            _ => {
                // A counter per nesting depth, so that an inner loop never resets an
                // outer one's.
                let i = if depth > 1 { "$i" } else { "$j" };
                format!(
                    "(local.set {i} (i32.const 3)) \
                     (loop $l {} {} (br_if $l (local.tee {i} (i32.sub (local.get {i}) (i32.const 1)))))",
                    self.stmt(depth - 1),
                    self.stmt(depth - 1)
                )
            }
        }
    }

    fn program(&mut self) -> String {
        self.in_helper = true;
        let helper = self.f64(3);
        self.in_helper = false;
        let statements: Vec<String> = (0..2 + self.rng.below(8)).map(|_| self.stmt(2)).collect();
        let epilogue = if self.rng.below(2) == 0 {
            "(f32.store offset=4000 (i32.const 0) (local.get $a)) \
             (f32.store offset=4004 (i32.const 0) (local.get $b)) \
             (f64.store offset=4008 (i32.const 0) (local.get $x)) \
             (f64.store offset=4016 (i32.const 0) (local.get $y)) \
             (f64.store offset=4024 (i32.const 0) (global.get $g))"
        } else {
            ""
        };
        let result = self.f64(3);
        format!(
            r#"(module
  (memory (export "m") 1)
  (global $g (mut f64) (f64.const 0))
  (func $h (param $p f32) (param $q f64) (result f64) {helper})
  (func (export "run") (result f64)
    (local $a f32) (local $b f32) (local $x f64) (local $y f64) (local $i i32) (local $j i32)
    {}
    {epilogue}
    {result}))"#,
            statements.join("\n    ")
        )
    }

    fn input(&mut self) -> Vec<u8> {
        let mut input = Vec::with_capacity(64);
        for _ in 0..8 {
            let bits = if self.rng.below(5) == 0 {
                self.rng.next() as u32
            } else {
                self.rng.pick(&F32_BITS)
            };
            input.extend_from_slice(&bits.to_le_bytes());
        }
        for _ in 0..4 {
            input.extend_from_slice(&self.rng.pick(&F64_BITS).to_le_bytes());
        }
        input
    }
}

#[test]
fn rewritten_without_canonicalisation_behaves_as_the_original_with_it() {
    let (every_op, off) = (engine(true), engine(false));
    let (mut runner, cases) = crate::sandbox::rewrite::testing::runner("NAN_CASES", 300);
    let differed = std::cell::Cell::new(0u32);
    let elided = std::cell::Cell::new(0u64);
    runner
        .run(&proptest::prelude::any::<u64>(), |seed| {
            let mut generator = ProgramGen {
                rng: Rng(seed),
                in_helper: false,
            };
            let wat = generator.program();
            let input = generator.input();
            let original = wasm(&wat);
            let rewritten = canonicalise_observable_nans(&original)
                .map_err(|e| TestCaseError::fail(format!("{e}\n{wat}")))?;
            let s = rewritten.summary;
            elided.set(elided.get() + s.scalar_sites - s.scalar_canonicalised);
            let expected = execute(&every_op, &original, &input);
            let got = execute(&off, &rewritten.wasm, &input);
            if expected != got {
                let at = expected
                    .memory
                    .iter()
                    .zip(&got.memory)
                    .position(|(a, b)| a != b);
                return Err(TestCaseError::fail(format!(
                    "results {:x?} vs {:x?}, first differing byte {at:?}\n{wat}",
                    expected.result, got.result
                )));
            }
            // The test can fail: without any canonicalisation, x86 and Arm show
            // their own NaN bits in some programs.
            if execute(&off, &original, &input) != expected {
                differed.set(differed.get() + 1);
            }
            Ok(())
        })
        .expect("the rewrite keeps every observable NaN bit");
    assert!(
        differed.get() >= cases / 10,
        "only {} of {cases} programs show their NaN bits without canonicalisation",
        differed.get()
    );
    assert!(
        elided.get() > u64::from(cases),
        "the rewrite elides some sites"
    );
}
