//! Module validation against the two job ABIs (`docs/ABI.md`), and the description
//! `peergrid inspect` prints.
//!
//! Which ABI a module means is read from its exports and imports: the
//! `peergrid_abi_v1` marker means ABI v1; otherwise a `_start` export or any
//! `wasi_snapshot_preview1` import means wasi-v1; a module with neither is checked
//! (and refused) as ABI v1, with a note that it is no WASI command either.
//!
//! ABI v1: the module must export `memory`, `peergrid_abi_v1`, `peergrid_alloc` and
//! `peergrid_run` with the right types; `peergrid_split` and `peergrid_merge` are
//! optional. The only import allowed is `peergrid.log`.
//!
//! wasi-v1: the module must export `memory` (32-bit) and `_start: func () -> ()`, and
//! import only functions of `wasi_snapshot_preview1`, each with its preview 1 type.
//!
//! Anything else is refused, naming each offending import or export, before anything
//! runs.

use serde::Serialize;
use wasmtime::{ExternType, FuncType, Module, ValType};

/// Why a module cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    /// The bytes are neither a WebAssembly binary nor WAT text.
    #[error("not a WebAssembly module: {0}")]
    NotWasm(String),
    /// It is over a size or shape cap (checked before compiling; see `shape.rs`).
    #[error("the module is too large to run here: {0}")]
    TooLarge(String),
    /// WAT text from a peer: only the local CLI may hand over text.
    #[error(
        "the module is WAT text: peers take binary modules only (peergrid submit and peergrid run \
         compile a .wat file themselves; elsewhere, compile it with wat2wasm)"
    )]
    TextFromPeer,
    /// wasmtime could not validate or compile it.
    #[error("the module is not valid WebAssembly for peergrid: {0}")]
    Compile(String),
    /// It imports something other than `peergrid.log`.
    #[error(
        "the module imports {}; the only import an ABI v1 job may have is peergrid.log (see docs/ABI.md){}",
        .imports.join(", "),
        wasi_hint(.imports)
    )]
    DisallowedImports {
        /// Each offending import as `module.name (kind)`.
        imports: Vec<String>,
    },
    /// A wasi-v1 module imports something other than `wasi_snapshot_preview1`
    /// functions with their preview 1 types.
    #[error(
        "the WASI module imports {}; a wasi-v1 job may import only wasi_snapshot_preview1 functions (see docs/ABI.md)",
        .imports.join(", ")
    )]
    DisallowedWasiImports {
        /// Each offending import as `module.name (kind)`, with why.
        imports: Vec<String>,
    },
    /// It does not meet wasi-v1 (missing or mistyped exports).
    #[error("the WASI module does not meet peergrid ABI wasi-v1: {}", .problems.join("; "))]
    Wasi {
        /// What is wrong, one item per problem.
        problems: Vec<String>,
    },
    /// It does not meet ABI v1 (missing or mistyped exports).
    #[error("the module does not meet peergrid ABI v1: {}", .problems.join("; "))]
    Abi {
        /// What is wrong, one item per problem.
        problems: Vec<String>,
    },
    /// This node's engine could not be built (built on the first module, see
    /// `Sandbox::lazy`): not the module's fault.
    #[error("this node's WebAssembly engine could not start: {0}")]
    Sandbox(String),
}

fn wasi_hint(imports: &[String]) -> &'static str {
    if imports.iter().any(|i| i.starts_with("wasi")) {
        "; it exports peergrid_abi_v1 but imports WASI: a module speaks one ABI (drop the \
         marker to run it as a wasi-v1 command)"
    } else {
        ""
    }
}

/// Which job ABI a module speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Abi {
    /// ABI v1: `peergrid_*` exports, data through linear memory.
    #[serde(rename = "v1")]
    V1,
    /// wasi-v1: a WASI preview 1 command; argv names the entry, stdin/stdout carry data.
    #[serde(rename = "wasi-v1")]
    WasiV1,
}

impl Abi {
    /// The name `docs/ABI.md` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::WasiV1 => "wasi-v1",
        }
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
             not WAT text; give a .wasm file (built for wasm32-unknown-unknown with peergrid-sdk, or a WASI command for wasm32-wasip1)"
        )));
    }
    wat::parse_bytes(bytes)
        .map(|b| std::borrow::Cow::Owned(b.into_owned()))
        .map_err(|e| ModuleError::NotWasm(format!("invalid WAT text: {e}")))
}

/// What ABI checking found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AbiReport {
    /// The ABI the module was checked against (the one it means to speak); `None`
    /// when it shows signs of neither (it was checked as ABI v1).
    pub abi: Option<Abi>,
    /// Problems, empty when the module meets its ABI.
    pub problems: Vec<String>,
    /// Imports that ABI does not allow.
    pub disallowed_imports: Vec<String>,
    /// Whether `peergrid_split` is exported (and well typed).
    pub has_split: bool,
    /// Whether `peergrid_merge` is exported (and well typed).
    pub has_merge: bool,
}

impl AbiReport {
    /// Whether the module meets its ABI.
    pub fn ok(&self) -> bool {
        self.abi.is_some() && self.problems.is_empty() && self.disallowed_imports.is_empty()
    }

    /// `Ok(self)` when the module meets its ABI, else the error to show.
    pub fn into_result(self) -> Result<Self, ModuleError> {
        if self.abi == Some(Abi::WasiV1) {
            if !self.disallowed_imports.is_empty() {
                return Err(ModuleError::DisallowedWasiImports {
                    imports: self.disallowed_imports,
                });
            }
            if !self.problems.is_empty() {
                return Err(ModuleError::Wasi {
                    problems: self.problems,
                });
            }
            return Ok(self);
        }
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

/// Checks a compiled module's imports and exports against the ABI it means to speak.
pub(crate) fn check_abi(module: &Module) -> AbiReport {
    let v1_marker = module.get_export("peergrid_abi_v1").is_some();
    let wasi_signs = module.get_export("_start").is_some()
        || module.get_export("_initialize").is_some()
        || module
            .imports()
            .any(|i| i.module() == super::wasi::WASI_MODULE);
    if !v1_marker && wasi_signs {
        return check_wasi(module);
    }
    let mut report = check_v1(module);
    if v1_marker || report.ok_v1() {
        report.abi = Some(Abi::V1);
    } else {
        report.problems.push(
            "nor is it a WASI command (wasi-v1): it exports no `_start` and imports nothing \
             from wasi_snapshot_preview1"
                .into(),
        );
    }
    report
}

impl AbiReport {
    fn ok_v1(&self) -> bool {
        self.problems.is_empty() && self.disallowed_imports.is_empty()
    }
}

/// Checks a module against wasi-v1.
fn check_wasi(module: &Module) -> AbiReport {
    let mut report = AbiReport {
        abi: Some(Abi::WasiV1),
        ..AbiReport::default()
    };
    for import in module.imports() {
        let ty = import.ty();
        let shown = format!(
            "{}.{} ({})",
            import.module(),
            import.name(),
            extern_desc(&ty)
        );
        if import.module() != super::wasi::WASI_MODULE {
            report.disallowed_imports.push(shown);
            continue;
        }
        match (super::wasi::signature(import.name()), &ty) {
            (None, _) => report
                .disallowed_imports
                .push(format!("{shown}: not a WASI preview 1 function")),
            (Some(want), ExternType::Func(f)) if func_sig(f) == want => {}
            (Some(want), _) => report.disallowed_imports.push(format!(
                "{shown}: WASI preview 1 gives it the type func {want}"
            )),
        }
    }
    check_memory(module, "wasi-v1", &mut report);
    match module.get_export("_start") {
        Some(ExternType::Func(f)) if func_sig(&f) == "() -> ()" => {}
        Some(other) => report.problems.push(format!(
            "export `_start` is {}, expected func () -> ()",
            extern_desc(&other)
        )),
        None if module.get_export("_initialize").is_some() => report.problems.push(
            "it is a WASI reactor (exports `_initialize`, no `_start`); build a command \
             (a program with a main function)"
                .into(),
        ),
        None => report
            .problems
            .push("missing export `_start` (a WASI command's main)".into()),
    }
    report
}

/// The one linear memory both ABIs need, exported as `memory`, 32-bit.
fn check_memory(module: &Module, abi: &str, report: &mut AbiReport) {
    match module.get_export("memory") {
        Some(ExternType::Memory(m)) if m.is_64() => report.problems.push(format!(
            "`memory` is a 64-bit memory; {abi} needs a 32-bit one"
        )),
        Some(ExternType::Memory(_)) => {}
        Some(other) => report.problems.push(format!(
            "`memory` is a {}, not a memory",
            extern_desc(&other)
        )),
        None => report
            .problems
            .push("missing export `memory` (the module's linear memory)".into()),
    }
}

/// Checks a compiled module's imports and exports against ABI v1.
fn check_v1(module: &Module) -> AbiReport {
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
    check_memory(module, "ABI v1", &mut report);
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
    /// The ABI verdict.
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
