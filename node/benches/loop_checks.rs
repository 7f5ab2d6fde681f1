//! What wasmtime's loop-header checks cost a tight float loop, and whether fewer
//! headers per unit of work (the loop unrolled in the module) buy it back (issue 18).
//! `cargo bench -p peergrid-node --bench loop_checks`.
//!
//! One escape-time loop (mandelbrot's shape: a few dependent float operations and two
//! exits per iteration), written in WAT with its body repeated 1, 2, 4 and 8 times
//! per loop iteration, each copy keeping its own exit test, so every version does the
//! same work and returns the same sum. Each runs with no checks, with fuel (a count
//! at every block, a check at every loop header and function entry) and with epochs
//! alone (the check, no count), on wasmtime as the sandbox builds it, best of a few
//! runs. The figures are ratios within one run; a loaded machine moves them, so they
//! are printed for a person (or a later session) to judge, not asserted.

use std::time::Instant;

use wasmtime::{Config, Engine, Instance, Module, Store};

/// The module, with the escape-time step repeated `copies` times per iteration.
fn module(copies: usize) -> String {
    let step = r#"
          (local.set $t (f64.add (f64.sub (f64.mul (local.get $zr) (local.get $zr))
                                          (f64.mul (local.get $zi) (local.get $zi)))
                                 (local.get $cr)))
          (local.set $zi (f64.add (f64.mul (f64.mul (f64.const 2) (local.get $zr)) (local.get $zi))
                                  (local.get $ci)))
          (local.set $zr (local.get $t))
          (local.set $k (i32.add (local.get $k) (i32.const 1)))
          (br_if $escaped (f64.gt (f64.add (f64.mul (local.get $zr) (local.get $zr))
                                           (f64.mul (local.get $zi) (local.get $zi)))
                                  (f64.const 4)))"#
        .repeat(copies);
    format!(
        r#"(module
  (func (export "run") (param $n i32) (result f64)
    (local $i i32) (local $k i32) (local $cr f64) (local $ci f64)
    (local $zr f64) (local $zi f64) (local $t f64) (local $sum f64)
    (block $done
      (loop $points
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $cr (f64.sub (f64.mul (f64.convert_i32_u (local.get $i)) (f64.const 0.000005))
                                (f64.const 0.75)))
        (local.set $ci (f64.const 0.1))
        (local.set $zr (f64.const 0))
        (local.set $zi (f64.const 0))
        (local.set $k (i32.const 0))
        (block $escaped
          (loop $steps
            {step}
            (br_if $steps (i32.lt_u (local.get $k) (i32.const 1000)))))
        (local.set $sum (f64.add (local.get $sum) (f64.convert_i32_u (local.get $k))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $points)))
    (local.get $sum)))"#
    )
}

/// Best time of `rounds` calls, and the result.
fn time(fuel: bool, epochs: bool, wat: &str, points: i32, rounds: usize) -> (f64, f64) {
    let mut config = Config::new();
    config
        .cranelift_opt_level(wasmtime::OptLevel::Speed)
        .consume_fuel(fuel)
        .epoch_interruption(epochs);
    let engine = Engine::new(&config).expect("engine");
    let module = Module::new(&engine, wat).expect("module");
    let (mut best, mut out) = (f64::INFINITY, 0.0);
    for _ in 0..rounds {
        let mut store = Store::new(&engine, ());
        if fuel {
            store.set_fuel(u64::MAX / 2).expect("fuel");
        }
        if epochs {
            store.set_epoch_deadline(u64::MAX / 2);
        }
        let instance = Instance::new(&mut store, &module, &[]).expect("instance");
        let run = instance
            .get_typed_func::<i32, f64>(&mut store, "run")
            .expect("run");
        let started = Instant::now();
        out = run.call(&mut store, points).expect("call");
        best = best.min(started.elapsed().as_secs_f64());
    }
    (best, out)
}

fn main() {
    // 300 000 points of up to 1 000 steps: about half a second without checks.
    let (points, rounds) = (300_000, 3);
    println!("copies  no checks   fuel    epochs alone");
    for copies in [1, 2, 4, 8] {
        let wat = module(copies);
        let (bare, sum) = time(false, false, &wat, points, rounds);
        let (fuel, with_fuel) = time(true, false, &wat, points, rounds);
        let (epochs, with_epochs) = time(false, true, &wat, points, rounds);
        assert!(
            sum == with_fuel && sum == with_epochs,
            "the versions disagree: {sum}, {with_fuel}, {with_epochs}"
        );
        println!(
            "{copies:>6}  {bare:>7.3} s  {:>+5.0} %  {:>+5.0} %",
            (fuel / bare - 1.0) * 100.0,
            (epochs / bare - 1.0) * 100.0
        );
    }
    println!(
        "\nfuel, epochs alone = time against no checks on the same module; every version \
         does the same work (the same sum of steps)"
    );
}
