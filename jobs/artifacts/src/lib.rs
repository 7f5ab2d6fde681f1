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

/// Finds a built-in job by name (the examples, `faults` and `floats`).
pub fn find(name: &str) -> Option<&'static Example> {
    EXAMPLES
        .iter()
        .chain([&FAULTS, &FLOATS])
        .find(|e| e.name == name)
}

/// The names of all built-in examples, for error messages.
pub fn names() -> Vec<&'static str> {
    EXAMPLES.iter().map(|e| e.name).collect()
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
