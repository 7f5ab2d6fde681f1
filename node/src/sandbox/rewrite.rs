//! The frame shared by the module rewrites run before Cranelift compiles a job
//! ([`nan`](super::nan) and [`unroll`](super::unroll)): a module's code section
//! rebuilt function by function, every other byte kept as it was.
//!
//! A rewrite hands [`rewrite_code_section`] a function that sees each body in
//! code-section order and returns either a new raw body (locals and operators, as
//! `wasm_encoder::Function::into_raw_body` gives it) or `None` to keep the body byte
//! for byte.

use wasm_encoder::Encode;
use wasmparser::{BinaryReaderError, FunctionBody, Parser, Payload};

/// `wasm` with each function body replaced by what `body` returns for it (`None`:
/// unchanged). A module without a code section comes back as it is.
pub(crate) fn rewrite_code_section<E: From<BinaryReaderError>>(
    wasm: &[u8],
    mut body: impl FnMut(usize, &FunctionBody<'_>) -> Result<Option<Vec<u8>>, E>,
) -> Result<Vec<u8>, E> {
    // Where the previous section's contents end: the next section's header starts.
    let mut previous_end = 0;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        if let Payload::Version { range, .. } = &payload {
            previous_end = range.end;
            continue;
        }
        if let Payload::CodeSectionStart { range, .. } = &payload {
            // The parser announces a section before reading it: a truncated module
            // ends inside it.
            let Some(section) = wasm.get(range.clone()) else {
                return Err(truncated(range.start).into());
            };
            let mut out = Vec::with_capacity(wasm.len() + wasm.len() / 4);
            out.extend_from_slice(&wasm[..previous_end]);
            let reader = wasmparser::CodeSectionReader::new(wasmparser::BinaryReader::new(
                section,
                range.start,
            ))?;
            let mut code = wasm_encoder::CodeSection::new();
            for (i, function) in reader.into_iter().enumerate() {
                let function = function?;
                match body(i, &function)? {
                    None => code.raw(function.as_bytes()),
                    Some(new) => code.raw(&new),
                };
            }
            out.push(wasm_encoder::SectionId::Code as u8);
            code.encode(&mut out);
            out.extend_from_slice(&wasm[range.end..]);
            return Ok(out);
        }
        if let Some((_, range)) = payload.as_section() {
            previous_end = range.end;
        }
    }
    Ok(wasm.to_vec())
}

/// wasmparser's own error for a module that ends at `offset`, inside a section.
fn truncated(offset: usize) -> BinaryReaderError {
    match wasmparser::BinaryReader::new(&[], offset).read_u8() {
        Err(e) => e,
        Ok(_) => unreachable!("an empty reader has no byte to read"),
    }
}

/// What the rewrites' random-program tests share.
#[cfg(test)]
pub(crate) mod testing {
    use proptest::test_runner::{Config, TestRunner};

    /// A proptest runner for `cases` random programs, or as many as the environment
    /// variable `var` says; and that number.
    pub(crate) fn runner(var: &str, cases: u32) -> (TestRunner, u32) {
        let cases = std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases);
        let runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        (runner, cases)
    }

    /// SplitMix64: the generator's own randomness, from proptest's seed.
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len() as u64) as usize]
        }
    }
}
