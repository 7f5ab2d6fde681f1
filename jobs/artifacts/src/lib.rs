//! The built-in example jobs, compiled to WebAssembly by this crate's `build.rs`.
//!
//! Each [`Example`] carries its module bytes (what the sandbox runs), its default
//! parameters and help, and its [`NativeJob`] (the same job compiled natively, used by
//! `peergrid bench sandbox` and by tests that compare native and sandboxed answers).
//! The node's CLI (`run`, `examples`, `demo`, `bench`) and the integration tests read
//! them from here.

use peergrid_sdk::NativeJob;

/// One built-in example job.
#[derive(Debug)]
pub struct Example {
    /// Short name used on the command line (`peergrid run mandelbrot`).
    pub name: &'static str,
    /// One line saying what it computes.
    pub about: &'static str,
    /// Parameters used when none are given (a JSON object).
    pub default_params: &'static str,
    /// One line per parameter: `name: meaning (default)`.
    pub params_help: &'static str,
    /// The ABI v1 module.
    pub wasm: &'static [u8],
    /// The same job compiled natively.
    pub native: NativeJob,
}

macro_rules! example {
    ($name:literal, $krate:ident) => {
        Example {
            name: $name,
            about: $krate::ABOUT,
            default_params: $krate::DEFAULT_PARAMS,
            params_help: $krate::PARAMS_HELP,
            wasm: include_bytes!(concat!(env!("OUT_DIR"), "/job_", $name, ".wasm")),
            native: $krate::PEERGRID_JOB,
        }
    };
}

/// Every built-in example, in the order `peergrid examples` lists them.
pub static EXAMPLES: [Example; 4] = [
    example!("mandelbrot", job_mandelbrot),
    example!("primes", job_primes),
    example!("montecarlo", job_montecarlo),
    example!("pow", job_pow),
];

/// A job that misbehaves on purpose (panics, errors, loops, memory bombs) or does
/// nothing, for tests and benchmarks. Runnable by name, not listed with the examples.
pub static FAULTS: Example = example!("faults", job_faults);

/// A job whose outputs hold the bits of NaNs that float arithmetic produced, for
/// determinism tests. Runnable by name, not listed with the examples.
pub static FLOATS: Example = example!("floats", job_floats);

/// How many operands `floats` uses with its default params.
pub const FLOATS_VALUES: usize = job_floats::DEFAULT_VALUES.len();

/// One built-in wasi-v1 example (docs/ABI.md): a WASI command written in another
/// language, committed as a built `.wasm` beside its source and the script that
/// rebuilds it (`jobs/wasi/<dir>/build.sh`), so nothing but cargo is needed to run it.
#[derive(Debug)]
pub struct WasiExample {
    /// Short name used on the command line (`peergrid run nqueens`).
    pub name: &'static str,
    /// The source language.
    pub lang: &'static str,
    /// One line saying what it computes.
    pub about: &'static str,
    /// Parameters used when none are given (a JSON object).
    pub default_params: &'static str,
    /// The result (merge's output) for the default params.
    pub default_result: &'static str,
    /// Smaller params for quick tests, and their result.
    pub test_params: &'static str,
    /// The result for `test_params`.
    pub test_result: &'static str,
    /// The directory of its source, build script and module, under `jobs/wasi/`.
    pub dir: &'static str,
    /// The module.
    pub wasm: &'static [u8],
}

macro_rules! wasi_example {
    ($dir:literal, $file:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../wasi/",
            $dir,
            "/",
            $file
        ))
    };
}

/// The wasi-v1 examples, one per language.
pub static WASI_EXAMPLES: [WasiExample; 4] = [
    WasiExample {
        name: "collatz",
        lang: "rust",
        about: "longest Collatz chain below a limit (Rust, wasm32-wasip1, no SDK)",
        default_params: r#"{"limit": 1000000, "chunks": 16}"#,
        default_result: r#"{"start":837799,"steps":524}"#,
        test_params: r#"{"limit": 100000, "chunks": 5}"#,
        test_result: r#"{"start":77031,"steps":350}"#,
        dir: "rust-collatz",
        wasm: wasi_example!("rust-collatz", "collatz.wasm"),
    },
    WasiExample {
        name: "nqueens",
        lang: "c",
        about: "solutions of the N-queens puzzle (C, zig cc, peergrid_wasi.h)",
        default_params: r#"{"n": 12}"#,
        default_result: r#"{"n":12,"solutions":14200}"#,
        test_params: r#"{"n": 8}"#,
        test_result: r#"{"n":8,"solutions":92}"#,
        dir: "c-nqueens",
        wasm: wasi_example!("c-nqueens", "nqueens.wasm"),
    },
    WasiExample {
        name: "amicable",
        lang: "go",
        about: "sum of the amicable numbers below a limit (Go, GOOS=wasip1)",
        default_params: r#"{"limit": 100000, "chunks": 16}"#,
        default_result: r#"{"limit":100000,"sum":852810}"#,
        test_params: r#"{"limit": 10000, "chunks": 4}"#,
        test_result: r#"{"limit":10000,"sum":31626}"#,
        dir: "go-amicable",
        wasm: wasi_example!("go-amicable", "amicable.wasm"),
    },
    WasiExample {
        name: "totient",
        lang: "assemblyscript",
        about: "Euler's totient summed up to N (AssemblyScript)",
        default_params: r#"{"n": 100000, "chunks": 16}"#,
        default_result: r#"{"n":100000,"sum":3039650754}"#,
        test_params: r#"{"n": 1000, "chunks": 3}"#,
        test_result: r#"{"n":1000,"sum":304192}"#,
        dir: "as-totient",
        wasm: wasi_example!("as-totient", "totient.wasm"),
    },
];

/// Finds a wasi-v1 example by name.
pub fn find_wasi(name: &str) -> Option<&'static WasiExample> {
    WASI_EXAMPLES.iter().find(|e| e.name == name)
}

/// Finds a built-in job by name (the examples, `faults` and `floats`).
pub fn find(name: &str) -> Option<&'static Example> {
    EXAMPLES
        .iter()
        .chain([&FAULTS, &FLOATS])
        .find(|e| e.name == name)
}

/// The names of all built-in examples (ABI v1, then wasi-v1), for error messages.
pub fn names() -> Vec<&'static str> {
    EXAMPLES
        .iter()
        .map(|e| e.name)
        .chain(WASI_EXAMPLES.iter().map(|e| e.name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_is_a_wasm_module_with_valid_default_params() {
        for e in &EXAMPLES {
            assert_eq!(&e.wasm[..4], b"\0asm", "{} is not wasm", e.name);
            let split = e.native.split.expect("every example splits");
            let inputs = split(e.default_params.as_bytes()).expect(e.name);
            assert!(
                !peergrid_sdk::bytes::decode_list(&inputs)
                    .unwrap()
                    .is_empty()
            );
        }
        assert!(find("primes").is_some());
        assert!(find("nope").is_none());
    }
}
