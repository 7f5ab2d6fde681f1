//! The module rewrites run before Cranelift compiles a job, and the frame they
//! share. [`compile`] (called by `Sandbox::compile` on a compile-cache miss) runs
//! [`nan`](super::nan), [`unroll`](super::unroll) and [`strength`](super::strength)
//! in that order and compiles the result; each rewrite rebuilds a module's code
//! section function by function through [`rewrite_code_section`], every other byte
//! kept as it was.
//!
//! A rewrite hands [`rewrite_code_section`] a function that sees each body in
//! code-section order and returns either a new raw body (locals and operators, as
//! `wasm_encoder::Function::into_raw_body` gives it) or `None` to keep the body byte
//! for byte. Rewrites that need scratch locals build a body's locals with
//! [`declared_locals`] and [`add_scratch`].

use std::borrow::Cow;

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{Encode, ValType};
use wasmparser::{BinaryReaderError, FunctionBody, Parser, Payload};
use wasmtime::Engine;

use super::{ModuleError, NanMode, SandboxConfig, nan, strength, unroll};

/// Compiles `binary` after the rewrites the configuration asks for (all of them
/// in production): [`nan::canonicalise_observable_nans`], then
/// [`unroll::unroll_inner_loops`], then [`strength::reduce_multiplies`].
///
/// A module a rewrite cannot follow, or whose rewritten form wasmtime refuses, is
/// compiled as it was sent, so that the error is wasmtime's, as for every other
/// invalid module. Should wasmtime accept it, the rewrite's error stands (the
/// module never runs without its rewrites). Other refusals (a stack too deep to
/// follow) stand at once.
pub(super) fn compile(
    engine: &Engine,
    config: &SandboxConfig,
    binary: &[u8],
) -> Result<wasmtime::Module, ModuleError> {
    let compile = |code: &[u8]| {
        wasmtime::Module::from_binary(engine, code)
            .map_err(|e| ModuleError::Compile(format!("{e:#}")))
    };
    // wasmtime's error on the module as sent, if it has one; else the rewrite's.
    let refused = |e: String| {
        compile(binary)?;
        Err(ModuleError::Compile(e))
    };
    let canonical = match config.nan {
        NanMode::Observable => match nan::canonicalise_observable_nans(binary) {
            Ok(rewritten) => Cow::Owned(rewritten.wasm),
            Err(e @ nan::NanRewriteError::Invalid(_)) => return refused(e.to_string()),
            Err(e) => return Err(ModuleError::Compile(e.to_string())),
        },
        NanMode::EveryOp | NanMode::Off => Cow::Borrowed(binary),
    };
    // The other rewrites do not validate: a module they cannot follow, or whose
    // rewritten form wasmtime refuses, is refused so too.
    let unrolled = if config.unroll_loops {
        match unroll::unroll_inner_loops(&canonical) {
            Ok(unrolled) => Cow::Owned(unrolled.wasm),
            Err(e) => return refused(e.to_string()),
        }
    } else {
        canonical
    };
    let reduced = if config.reduce_multiplies {
        match strength::reduce_multiplies(&unrolled) {
            Ok((wasm, _)) => Cow::Owned(wasm),
            Err(e) => return refused(e.to_string()),
        }
    } else {
        unrolled
    };
    compile(&reduced).or_else(|e| {
        refused(format!(
            "a module rewrite made a module wasmtime refuses (a bug in peergrid: \
             please report it with the module): {e}"
        ))
    })
}

/// wasmtime's limit on a function body's size, in bytes: no rewrite makes a body
/// larger.
pub(crate) const MAX_FUNCTION_BODY: usize = 7_654_321;

/// The least growth a rewrite may give a module, in bytes (see [`budget`]).
const MIN_BUDGET: usize = 1 << 20;

/// The largest module the rewrites make, in bytes: 4× the largest module a peer may
/// send (`shape::ModuleCaps::max_bytes`). The NaN rewrite refuses a module it would
/// make larger; [`budget`] keeps the others under it.
pub(crate) const MAX_REWRITTEN: usize = 256 << 20;

/// How many bytes one rewrite may add to a module of `len` bytes: as many again, or
/// 1 MiB for small modules, and never past [`MAX_REWRITTEN`]. [`unroll`] and
/// [`strength`] each leave what would pass it as it is, in code order, so a peer's
/// module reaches Cranelift at most about four times as large as the NaN rewrite
/// left it (plus 2 MiB), and never over 256 MiB.
pub(crate) fn budget(len: usize) -> usize {
    len.max(MIN_BUDGET).min(MAX_REWRITTEN.saturating_sub(len))
}

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
            // ends inside it, and reading it gives wasmparser's own error.
            let section = wasmparser::BinaryReader::new(
                wasm.get(range.start..).unwrap_or_default(),
                range.start,
            )
            .read_bytes(range.len())?;
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

/// A body's declared locals, re-encoded for `wasm_encoder::Function::new`, and how
/// many there are. `encode` wraps a re-encoding error.
pub(crate) fn declared_locals<E: From<BinaryReaderError>>(
    body: &FunctionBody<'_>,
    encode: impl Fn(String) -> E,
) -> Result<(Vec<(u32, ValType)>, u64), E> {
    let mut re = RoundtripReencoder;
    let mut locals = Vec::new();
    let mut declared = 0u64;
    for pair in body.get_locals_reader()? {
        let (count, ty) = pair?;
        declared += u64::from(count);
        locals.push((count, re.val_type(ty).map_err(|e| encode(e.to_string()))?));
    }
    Ok((locals, declared))
}

/// Appends one scratch local to `locals` for each type of `wanted` marked used, the
/// first numbered `first` (the function's parameters plus its declared locals);
/// returns their indices, `None` where unused.
pub(crate) fn add_scratch<const N: usize>(
    locals: &mut Vec<(u32, ValType)>,
    first: u32,
    wanted: [(ValType, bool); N],
) -> [Option<u32>; N] {
    let mut next = first;
    wanted.map(|(ty, used)| {
        used.then(|| {
            locals.push((1, ty));
            let index = next;
            next = next.saturating_add(1);
            index
        })
    })
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

    /// A module of `functions` functions of type `ty -> ty`, exported as `f0`, `f1`,
    /// ..., each `local.get 0` followed by `site` `sites` times (a site consumes and
    /// leaves one value). Built directly: a WAT text of the sizes the budget tests
    /// need would dominate their time.
    pub(crate) fn chains(
        ty: wasm_encoder::ValType,
        functions: usize,
        sites: usize,
        site: &[wasm_encoder::Instruction<'_>],
    ) -> Vec<u8> {
        use wasm_encoder::{
            CodeSection, ExportKind, ExportSection, Function, FunctionSection, Instruction, Module,
            TypeSection,
        };
        let mut types = TypeSection::new();
        types.ty().function([ty], [ty]);
        let mut declared = FunctionSection::new();
        let mut exports = ExportSection::new();
        let mut code = CodeSection::new();
        for index in 0..functions {
            declared.function(0);
            let index = u32::try_from(index).expect("a test's function count");
            exports.export(&format!("f{index}"), ExportKind::Func, index);
            let mut f = Function::new([]);
            f.instruction(&Instruction::LocalGet(0));
            for _ in 0..sites {
                for op in site {
                    f.instruction(op);
                }
            }
            f.instruction(&Instruction::End);
            code.function(&f);
        }
        let mut module = Module::new();
        module
            .section(&types)
            .section(&declared)
            .section(&exports)
            .section(&code);
        module.finish()
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
