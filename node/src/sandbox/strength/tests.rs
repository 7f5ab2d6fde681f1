//! Multiplications by 3, 5 and 9: which are rewritten, that the result is the same
//! for edge and random values of both widths, and what fuel it adds.

use wasmtime::{Config, Engine, Instance, Module, Store, Val};

use super::*;

fn wasm(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).expect("test WAT parses")
}

fn reduce(wasm: &[u8]) -> (Vec<u8>, u64) {
    let (out, sites) = reduce_multiplies(wasm).expect("rewrites");
    wasmparser::Validator::new()
        .validate_all(&out)
        .expect("the rewritten module validates");
    (out, sites)
}

/// Calls `f` (one i64 and one i32 parameter, i64 result); returns the result and
/// the fuel used.
fn call(engine: &Engine, wasm: &[u8], x: i64, y: i32) -> (i64, u64) {
    let module = Module::new(engine, wasm).expect("compiles");
    let mut store = Store::new(engine, ());
    store.set_fuel(1_000_000).expect("fuel is on");
    let instance = Instance::new(&mut store, &module, &[]).expect("instantiates");
    let f = instance.get_func(&mut store, "f").expect("f");
    let mut results = [Val::I64(0)];
    f.call(&mut store, &[Val::I64(x), Val::I32(y)], &mut results)
        .expect("runs");
    let fuel = 1_000_000 - store.get_fuel().expect("fuel is on");
    (results[0].i64().expect("an i64"), fuel)
}

/// Every constant and width, a local of the function's own, a site whose operand is
/// not a local, and one in unreachable code.
const MODULE: &str = r#"(module
  (func (export "f") (param $x i64) (param $y i32) (result i64) (local $k i64)
    (local.set $k (i64.mul (local.get $x) (i64.const 3)))
    (local.set $k (i64.xor (local.get $k) (i64.mul (i64.rotl (local.get $x) (i64.const 7)) (i64.const 5))))
    (local.set $k (i64.add (local.get $k) (i64.mul (local.get $x) (i64.const 9))))
    (local.set $k (i64.add (local.get $k) (i64.mul (local.get $x) (i64.const 7))))
    (local.set $k (i64.add (local.get $k)
      (i64.extend_i32_u (i32.xor (i32.mul (local.get $y) (i32.const 3))
        (i32.xor (i32.mul (local.get $y) (i32.const 5)) (i32.mul (local.get $y) (i32.const 9)))))))
    (block $b
      (br $b)
      (drop (i32.mul (i32.const 1) (i32.const 5))))
    (local.get $k)))"#;

#[test]
fn multiplications_by_3_5_and_9_give_the_same_values_for_three_more_fuel_each() {
    let original = wasm(MODULE);
    let (reduced, sites) = reduce(&original);
    // Six live sites and the unreachable one; `* 7` stays.
    assert_eq!(sites, 7);
    let mut config = Config::new();
    config.consume_fuel(true);
    let engine = Engine::new(&config).expect("engine");
    let mut rng = crate::sandbox::rewrite::testing::Rng(7);
    let edges = [
        0,
        1,
        -1,
        i64::MAX,
        i64::MIN,
        i64::MAX / 3,
        i64::MIN / 5 - 1,
        1 << 61,
    ];
    let randoms: Vec<i64> = (0..200).map(|_| rng.next() as i64).collect();
    for &x in edges.iter().chain(&randoms) {
        let y = x.rotate_left(17) as i32;
        let (want, fuel) = call(&engine, &original, x, y);
        let (got, reduced_fuel) = call(&engine, &reduced, x, y);
        assert_eq!(got, want, "x = {x}, y = {y}");
        assert_eq!(reduced_fuel, fuel + 3 * 6, "x = {x}");
    }
}

#[test]
fn a_module_without_such_a_multiplication_comes_back_byte_for_byte() {
    let other = wasm(
        r#"(module (func (param i32) (result i32)
             (i32.mul (local.get 0) (i32.const 7))
             (i32.const 5) (drop)))"#,
    );
    assert_eq!(reduce(&other), (other, 0));
}

#[test]
fn locals_are_numbered_after_the_parameters_of_the_function_own_type() {
    // Two functions of different types; the second's scratch local comes after its
    // three parameters and two locals.
    let module = wasm(
        r#"(module
          (type $a (func (param i32) (result i32)))
          (type $b (func (param i64 i64 i32) (result i64)))
          (func (type $a) (i32.mul (local.get 0) (i32.const 9)))
          (func (export "g") (type $b) (local i32 i64)
            (i64.mul (i64.add (local.get 0) (local.get 1)) (i64.const 5))))"#,
    );
    let (reduced, sites) = reduce(&module);
    assert_eq!(sites, 2);
    let engine = Engine::default();
    let m = Module::new(&engine, &reduced).expect("compiles");
    let mut store = Store::new(&engine, ());
    let instance = Instance::new(&mut store, &m, &[]).expect("instantiates");
    let g = instance
        .get_typed_func::<(i64, i64, i32), i64>(&mut store, "g")
        .expect("g");
    assert_eq!(g.call(&mut store, (4, 3, 0)).expect("runs"), 35);
}

#[test]
fn broken_modules_give_an_error_not_a_panic() {
    let original = wasm(MODULE);
    for cut in 8..original.len() {
        let _ = reduce_multiplies(&original[..cut]);
    }
    for at in 8..original.len() {
        for byte in [0x00, 0x7f, 0x80, 0xff] {
            let mut bytes = original.clone();
            bytes[at] = byte;
            let _ = reduce_multiplies(&bytes);
        }
    }
}

/// A module of two functions, `f0` and `f1`, each `x * 3` `sites` times over.
fn chains(sites: usize) -> Vec<u8> {
    crate::sandbox::rewrite::testing::chains(
        ValType::I32,
        2,
        sites,
        &[Instruction::I32Const(3), Instruction::I32Mul],
    )
}

/// Runs export `name` on `x`; the result and the fuel used.
fn run(engine: &Engine, module: &Module, name: &str, x: i32) -> (i32, u64) {
    let mut store = Store::new(engine, ());
    store.set_fuel(u64::MAX / 2).expect("fuel is on");
    let instance = Instance::new(&mut store, module, &[]).expect("instantiates");
    let f = instance
        .get_typed_func::<i32, i32>(&mut store, name)
        .expect("an (i32) -> i32 export");
    let got = f.call(&mut store, x).expect("runs");
    (got, u64::MAX / 2 - store.get_fuel().expect("fuel is on"))
}

#[test]
fn growth_stops_at_the_budget_and_later_functions_stay_as_they_are() {
    // Each site grows by 5 bytes: 150 000 of them are 750 KB, so the first function
    // fits the 1 MiB a small module may grow by and the second would pass it.
    let sites = 150_000;
    let original = chains(sites);
    assert!(original.len() < crate::sandbox::rewrite::budget(0));
    let (reduced, rewritten) = reduce(&original);
    assert_eq!(
        rewritten, sites as u64,
        "only the first function is rewritten"
    );
    let grown = reduced.len() - original.len();
    assert!(
        grown <= crate::sandbox::rewrite::budget(original.len()),
        "{grown}"
    );
    let mut config = Config::new();
    config.consume_fuel(true);
    let engine = Engine::new(&config).expect("engine");
    let (original, reduced) = (
        Module::new(&engine, &original).expect("compiles"),
        Module::new(&engine, &reduced).expect("compiles"),
    );
    let want = (0..sites).fold(7i32, |x, _| x.wrapping_mul(3));
    for name in ["f0", "f1"] {
        let (got, fuel) = run(&engine, &reduced, name, 7);
        let (sent, sent_fuel) = run(&engine, &original, name, 7);
        assert_eq!((got, sent), (want, want), "{name}");
        let extra = if name == "f0" { 3 * sites as u64 } else { 0 };
        assert_eq!(fuel, sent_fuel + extra, "{name}");
    }
}
