//! Module validation against ABI v1 (`docs/ABI.md`), and the description
//! `peergrid inspect` prints.
//!
//! A module must export `memory`, `peergrid_abi_v1`, `peergrid_alloc` and
//! `peergrid_run` with the right types; `peergrid_split` and `peergrid_merge` are
//! optional. The only import allowed is `peergrid.log`. Anything else is refused,
//! naming each offending import or export, before anything runs.

use serde::Serialize;
use wasmtime::{ExternType, FuncType, Module, ValType};

/// Why a module cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    /// The bytes are neither a WebAssembly binary nor WAT text.
    #[error("not a WebAssembly module: {0}")]
    NotWasm(String),
    /// wasmtime could not validate or compile it.
    #[error("the module is not valid WebAssembly for peergrid: {0}")]
    Compile(String),
    /// It imports something other than `peergrid.log`.
    #[error(
        "the module imports {}; the only import a peergrid job may have is peergrid.log (see docs/ABI.md){}",
        .imports.join(", "),
        wasi_hint(.imports)
    )]
    DisallowedImports {
        /// Each offending import as `module.name (kind)`.
        imports: Vec<String>,
    },
    /// It does not meet ABI v1 (missing or mistyped exports).
    #[error("the module does not meet peergrid ABI v1: {}", .problems.join("; "))]
    Abi {
        /// What is wrong, one item per problem.
        problems: Vec<String>,
    },
}

fn wasi_hint(imports: &[String]) -> &'static str {
    if imports.iter().any(|i| i.starts_with("wasi")) {
        "; it looks built for WASI: build jobs for wasm32-unknown-unknown with peergrid-sdk"
    } else {
        ""
    }
}

/// Turns WAT text into a binary; passes binaries through. Refuses anything else
/// with a one-line reason.
pub(crate) fn to_binary(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, ModuleError> {
    if bytes.starts_with(b"\0asm") {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    let looks_like_text = std::str::from_utf8(bytes)
        .map(|s| s.trim_start().starts_with('(') || s.trim_start().starts_with(";;"))
        .unwrap_or(false);
    if !looks_like_text {
        let shown: String = bytes
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        return Err(ModuleError::NotWasm(format!(
            "it starts with bytes [{shown}], not the WebAssembly magic [00 61 73 6d], and is \
             not WAT text; give a .wasm file built for wasm32-unknown-unknown"
        )));
    }
    wat::parse_bytes(bytes)
        .map(|b| std::borrow::Cow::Owned(b.into_owned()))
        .map_err(|e| ModuleError::NotWasm(format!("invalid WAT text: {e}")))
}

/// What ABI v1 checking found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AbiReport {
    /// Problems, empty when the module meets ABI v1.
    pub problems: Vec<String>,
    /// Imports other than `peergrid.log`.
    pub disallowed_imports: Vec<String>,
    /// Whether `peergrid_split` is exported (and well typed).
    pub has_split: bool,
    /// Whether `peergrid_merge` is exported (and well typed).
    pub has_merge: bool,
}

impl AbiReport {
    /// Whether the module meets ABI v1.
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.disallowed_imports.is_empty()
    }

    /// `Ok(self)` when the module meets ABI v1, else the error to show.
    pub fn into_result(self) -> Result<Self, ModuleError> {
        if !self.disallowed_imports.is_empty() {
            return Err(ModuleError::DisallowedImports {
                imports: self.disallowed_imports,
            });
        }
        if !self.problems.is_empty() {
            return Err(ModuleError::Abi {
                problems: self.problems,
            });
        }
        Ok(self)
    }
}

fn func_sig(ty: &FuncType) -> String {
    let list = |it: &mut dyn Iterator<Item = ValType>| {
        it.map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
    };
    format!(
        "({}) -> ({})",
        list(&mut ty.params()),
        list(&mut ty.results())
    )
}

fn extern_desc(ty: &ExternType) -> String {
    match ty {
        ExternType::Func(f) => format!("func {}", func_sig(f)),
        ExternType::Memory(m) => format!(
            "memory (min {} pages{}{})",
            m.minimum(),
            m.maximum()
                .map(|x| format!(", max {x}"))
                .unwrap_or_default(),
            if m.is_shared() { ", shared" } else { "" }
        ),
        ExternType::Table(_) => "table".into(),
        ExternType::Global(_) => "global".into(),
        ExternType::Tag(_) => "tag".into(),
    }
}

const I32: &[&str] = &["i32"];

/// The required and optional function exports of ABI v1: name, params, results.
const ABI_FUNCS: &[(&str, &[&str], &[&str], bool)] = &[
    ("peergrid_abi_v1", &[], &[], true),
    ("peergrid_alloc", I32, I32, true),
    ("peergrid_run", &["i32", "i32"], I32, true),
    ("peergrid_split", &["i32", "i32"], I32, false),
    ("peergrid_merge", &["i32", "i32"], I32, false),
];

/// Checks a compiled module's imports and exports against ABI v1.
pub(crate) fn check_abi(module: &Module) -> AbiReport {
    let mut report = AbiReport::default();
    for import in module.imports() {
        let ty = import.ty();
        let is_log = import.module() == "peergrid"
            && import.name() == "log"
            && matches!(&ty, ExternType::Func(f) if func_sig(f) == "(i32, i32, i32) -> ()");
        if !is_log {
            report.disallowed_imports.push(format!(
                "{}.{} ({})",
                import.module(),
                import.name(),
                extern_desc(&ty)
            ));
        }
    }
    match module.get_export("memory") {
        Some(ExternType::Memory(m)) if m.is_64() => report
            .problems
            .push("`memory` is a 64-bit memory; ABI v1 needs a 32-bit one".into()),
        Some(ExternType::Memory(_)) => {}
        Some(other) => report.problems.push(format!(
            "`memory` is a {}, not a memory",
            extern_desc(&other)
        )),
        None => report
            .problems
            .push("missing export `memory` (the module's linear memory)".into()),
    }
    for (name, params, results, required) in ABI_FUNCS {
        let want = format!("({}) -> ({})", params.join(", "), results.join(", "));
        match module.get_export(name) {
            Some(ExternType::Func(f)) if func_sig(&f) == want => match *name {
                "peergrid_split" => report.has_split = true,
                "peergrid_merge" => report.has_merge = true,
                _ => {}
            },
            Some(other) => report.problems.push(format!(
                "export `{name}` is {}, expected func {want}",
                extern_desc(&other)
            )),
            None if *required => report
                .problems
                .push(format!("missing export `{name}`: func {want}")),
            None => {}
        }
    }
    report
}

/// What `peergrid inspect` shows about a module.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleInfo {
    /// BLAKE3 of the binary, hex.
    pub hash: String,
    /// Size of the binary in bytes.
    pub size: usize,
    /// Every import: `module.name` and its type.
    pub imports: Vec<(String, String)>,
    /// Every export: name and type.
    pub exports: Vec<(String, String)>,
    /// The ABI v1 verdict.
    pub abi: AbiReport,
}

impl ModuleInfo {
    pub(crate) fn describe(hash: String, size: usize, module: &Module) -> Self {
        Self {
            hash,
            size,
            imports: module
                .imports()
                .map(|i| (format!("{}.{}", i.module(), i.name()), extern_desc(&i.ty())))
                .collect(),
            exports: module
                .exports()
                .map(|e| (e.name().to_string(), extern_desc(&e.ty())))
                .collect(),
            abi: check_abi(module),
        }
    }
}
