//! Size and shape caps on a module, read with wasmparser's payload reader *before*
//! anything is compiled: bytes, functions, locals and body size per function,
//! globals, tables, memories, data and element segments, imports, exports, and the
//! minimum size of memories and tables.
//!
//! Called by [`Sandbox::compile`](super::Sandbox) for every module it compiles (from
//! a peer, from the local CLI, for `inspect`). Cranelift's time and memory grow with
//! these numbers, and wasmtime's own validator accepts modules far larger than any
//! job (a million functions, 50 000 locals each); a module over a cap is refused in
//! one pass over its bytes, without compiling. The caps sit well above every example
//! job, including the Go and C WASI commands (`shape_tests` measures them).

use wasmparser::{Encoding, Parser, Payload, TypeRef};

use super::validate::ModuleError;

/// The caps. [`ModuleCaps::default`] is what a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleCaps {
    /// Largest module, in bytes.
    pub max_bytes: usize,
    /// Most functions (imported and defined).
    pub max_functions: u32,
    /// Most locals in one function (its parameters not included).
    pub max_locals: u32,
    /// Largest function body, in bytes.
    pub max_body_bytes: usize,
    /// Most globals.
    pub max_globals: u32,
    /// Most data segments.
    pub max_data_segments: u32,
    /// Most element segments.
    pub max_element_segments: u32,
    /// Most imports.
    pub max_imports: u32,
    /// Most exports.
    pub max_exports: u32,
    /// Most types.
    pub max_types: u32,
    /// Most memories (imported and defined).
    pub max_memories: u32,
    /// Most tables (imported and defined).
    pub max_tables: u32,
    /// Largest minimum size of a memory, in bytes.
    pub max_memory_min_bytes: u64,
    /// Largest minimum size of a table, in elements.
    pub max_table_min: u64,
}

impl Default for ModuleCaps {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            max_functions: 100_000,
            max_locals: 20_000,
            max_body_bytes: 2 * 1024 * 1024,
            max_globals: 10_000,
            max_data_segments: 100_000,
            max_element_segments: 10_000,
            max_imports: 1_000,
            max_exports: 10_000,
            max_types: 20_000,
            max_memories: 1,
            max_tables: super::MAX_TABLES,
            max_memory_min_bytes: 1024 * 1024 * 1024,
            max_table_min: super::limits::MAX_TABLE_ELEMENTS as u64,
        }
    }
}

/// What [`check`] counted (for tests and `bench hostile`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// Functions, imported and defined.
    pub functions: u32,
    /// The most locals of one function.
    pub max_locals: u32,
    /// The largest function body, in bytes.
    pub max_body_bytes: usize,
    /// Globals.
    pub globals: u32,
    /// Data segments.
    pub data_segments: u32,
}

fn over(what: &str, n: impl std::fmt::Display, cap: impl std::fmt::Display) -> ModuleError {
    ModuleError::TooLarge(format!("{what}: {n} (at most {cap})"))
}

fn cap(what: &str, n: u32, max: u32) -> Result<(), ModuleError> {
    if n > max {
        return Err(over(what, n, max));
    }
    Ok(())
}

/// Checks `binary` against `caps` without compiling it. A module that does not
/// parse is refused too (wasmtime would refuse it anyway).
pub fn check(binary: &[u8], caps: &ModuleCaps) -> Result<Shape, ModuleError> {
    if binary.len() > caps.max_bytes {
        return Err(over("module size in bytes", binary.len(), caps.max_bytes));
    }
    let bad = |e: wasmparser::BinaryReaderError| ModuleError::Compile(e.to_string());
    let mut c = Counts::default();
    for payload in Parser::new(0).parse_all(binary) {
        match payload.map_err(bad)? {
            Payload::Version { encoding, .. } if encoding != Encoding::Module => {
                return Err(ModuleError::Compile(
                    "a component, not a core module: peergrid runs core modules".into(),
                ));
            }
            Payload::TypeSection(r) => cap("types", r.count(), caps.max_types)?,
            Payload::ImportSection(r) => {
                for group in r {
                    match group.map_err(bad)? {
                        wasmparser::Imports::Single(_, import) => c.import(&import.ty, caps)?,
                        wasmparser::Imports::Compact1 { items, .. } => {
                            for item in items {
                                c.import(&item.map_err(bad)?.ty, caps)?;
                            }
                        }
                        wasmparser::Imports::Compact2 { ty, names, .. } => {
                            for name in names {
                                name.map_err(bad)?;
                                c.import(&ty, caps)?;
                            }
                        }
                    }
                }
            }
            Payload::FunctionSection(r) => {
                c.shape.functions = c.shape.functions.saturating_add(r.count());
            }
            Payload::TableSection(r) => {
                for table in r {
                    c.table(&table.map_err(bad)?.ty, caps)?;
                }
            }
            Payload::MemorySection(r) => {
                for memory in r {
                    c.memory(&memory.map_err(bad)?, caps)?;
                }
            }
            Payload::GlobalSection(r) => {
                c.shape.globals = c.shape.globals.saturating_add(r.count())
            }
            Payload::ExportSection(r) => cap("exports", r.count(), caps.max_exports)?,
            Payload::ElementSection(r) => {
                cap("element segments", r.count(), caps.max_element_segments)?
            }
            Payload::DataCountSection { count, .. } => {
                cap("data segments", count, caps.max_data_segments)?
            }
            Payload::DataSection(r) => {
                c.shape.data_segments = r.count();
                cap("data segments", r.count(), caps.max_data_segments)?;
            }
            Payload::CodeSectionStart { count, .. } => {
                cap("function bodies", count, caps.max_functions)?
            }
            Payload::CodeSectionEntry(body) => {
                let size = body.range().len();
                if size > caps.max_body_bytes {
                    return Err(over(
                        "a function body's size in bytes",
                        size,
                        caps.max_body_bytes,
                    ));
                }
                c.shape.max_body_bytes = c.shape.max_body_bytes.max(size);
                let mut locals = 0u32;
                for group in body.get_locals_reader().map_err(bad)? {
                    let (n, _) = group.map_err(bad)?;
                    locals = locals.saturating_add(n);
                    if locals > caps.max_locals {
                        return Err(over("locals in one function", locals, caps.max_locals));
                    }
                }
                c.shape.max_locals = c.shape.max_locals.max(locals);
            }
            _ => {}
        }
        c.totals(caps)?;
    }
    Ok(c.shape)
}

/// Running counts over the sections.
#[derive(Default)]
struct Counts {
    shape: Shape,
    imports: u32,
    memories: u32,
    tables: u32,
}

impl Counts {
    fn import(&mut self, ty: &TypeRef, caps: &ModuleCaps) -> Result<(), ModuleError> {
        self.imports += 1;
        if self.imports > caps.max_imports {
            return Err(over("imports", self.imports, caps.max_imports));
        }
        match ty {
            TypeRef::Func(_) | TypeRef::FuncExact(_) => self.shape.functions += 1,
            TypeRef::Memory(m) => self.memory(m, caps)?,
            TypeRef::Table(t) => self.table(t, caps)?,
            TypeRef::Global(_) => self.shape.globals += 1,
            TypeRef::Tag(_) => {}
        }
        Ok(())
    }

    fn table(&mut self, t: &wasmparser::TableType, caps: &ModuleCaps) -> Result<(), ModuleError> {
        self.tables += 1;
        if t.initial > caps.max_table_min {
            return Err(over(
                "a table's minimum size",
                t.initial,
                caps.max_table_min,
            ));
        }
        Ok(())
    }

    fn memory(&mut self, m: &wasmparser::MemoryType, caps: &ModuleCaps) -> Result<(), ModuleError> {
        self.memories += 1;
        memory_min(m, caps)
    }

    /// The totals so far against their caps.
    fn totals(&self, caps: &ModuleCaps) -> Result<(), ModuleError> {
        if self.memories > caps.max_memories {
            return Err(over("memories", self.memories, caps.max_memories));
        }
        if self.tables > caps.max_tables {
            return Err(over("tables", self.tables, caps.max_tables));
        }
        if self.shape.globals > caps.max_globals {
            return Err(over("globals", self.shape.globals, caps.max_globals));
        }
        if self.shape.functions > caps.max_functions {
            return Err(over("functions", self.shape.functions, caps.max_functions));
        }
        Ok(())
    }
}

fn memory_min(m: &wasmparser::MemoryType, caps: &ModuleCaps) -> Result<(), ModuleError> {
    let page = 1u64 << m.page_size_log2.unwrap_or(16).min(32);
    let bytes = m.initial.saturating_mul(page);
    if bytes > caps.max_memory_min_bytes {
        return Err(over(
            "a memory's minimum size in bytes",
            bytes,
            caps.max_memory_min_bytes,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod shape_tests {
    use super::*;

    fn wat(text: &str) -> Vec<u8> {
        wat::parse_str(text).expect("valid WAT")
    }

    fn refused(binary: &[u8]) -> String {
        match check(binary, &ModuleCaps::default()) {
            Err(ModuleError::TooLarge(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn every_example_job_fits_well_under_the_caps() {
        let caps = ModuleCaps::default();
        let examples = peergrid_jobs::EXAMPLES
            .iter()
            .chain([&peergrid_jobs::FAULTS, &peergrid_jobs::FLOATS])
            .map(|e| (e.name, e.wasm));
        let wasi = peergrid_jobs::WASI_EXAMPLES
            .iter()
            .map(|e| (e.name, e.wasm));
        for (name, wasm) in examples.chain(wasi) {
            let shape = check(wasm, &caps).unwrap_or_else(|e| panic!("{name}: {e}"));
            // A factor of three below every cap at least (Go's runtime: 25 156 data
            // segments, 2 MB; the others are far smaller).
            assert!(
                shape.functions * 3 <= caps.max_functions,
                "{name}: {shape:?}"
            );
            assert!(shape.max_locals * 3 <= caps.max_locals, "{name}: {shape:?}");
            assert!(
                shape.max_body_bytes * 3 <= caps.max_body_bytes,
                "{name}: {shape:?}"
            );
            assert!(shape.globals * 3 <= caps.max_globals, "{name}: {shape:?}");
            assert!(
                shape.data_segments * 3 <= caps.max_data_segments,
                "{name}: {shape:?}"
            );
            assert!(
                wasm.len() * 3 <= caps.max_bytes,
                "{name}: {} bytes",
                wasm.len()
            );
        }
    }

    #[test]
    fn modules_over_a_cap_are_refused_naming_the_cap() {
        let funcs = format!("(module {})", "(func)".repeat(100_001));
        assert!(refused(&wat(&funcs)).starts_with("functions: 100001"));
        let locals = format!("(module (func (local {})))", "i32 ".repeat(20_001));
        assert!(refused(&wat(&locals)).starts_with("locals in one function: 20001"));
        let globals = format!("(module {})", "(global i32 (i32.const 0))".repeat(10_001));
        assert!(refused(&wat(&globals)).starts_with("globals: 10001"));
        let data = format!(
            "(module (memory 1) {})",
            "(data (i32.const 0) \"\")".repeat(100_001)
        );
        assert!(refused(&wat(&data)).starts_with("data segments: 100001"));
        assert!(refused(&wat("(module (memory 16385))")).starts_with("a memory's minimum size"));
        assert!(
            refused(&wat(r#"(module (import "a" "m" (memory 16385)))"#))
                .starts_with("a memory's minimum size")
        );
        assert!(
            refused(&wat("(module (table 65537 funcref))")).starts_with("a table's minimum size")
        );
        assert!(refused(&wat("(module (memory 1) (memory 1))")).starts_with("memories: 2"));
        let imports = format!(
            "(module {})",
            (0..1_001)
                .map(|i| format!("(import \"peergrid\" \"f{i}\" (func))"))
                .collect::<String>()
        );
        assert!(refused(&wat(&imports)).starts_with("imports: 1001"));
        let body = format!("(module (func {}))", "(nop)".repeat(2 * 1024 * 1024 + 1));
        assert!(refused(&wat(&body)).starts_with("a function body's size"));
        let small = ModuleCaps {
            max_bytes: 8,
            ..ModuleCaps::default()
        };
        assert!(matches!(
            check(&wat("(module (func))"), &small),
            Err(ModuleError::TooLarge(why)) if why.starts_with("module size in bytes")
        ));
    }

    #[test]
    fn components_and_garbage_are_refused_and_small_modules_pass() {
        assert!(matches!(
            check(&wat("(component)"), &ModuleCaps::default()),
            Err(ModuleError::Compile(_))
        ));
        assert!(matches!(
            check(b"\0asm\x01\0\0\0\x01\xff", &ModuleCaps::default()),
            Err(ModuleError::Compile(_))
        ));
        let shape = check(
            &wat("(module (memory 16384) (table 65536 funcref) (func (local i32 i64)))"),
            &ModuleCaps::default(),
        )
        .expect("exactly at the caps");
        assert_eq!(shape.functions, 1);
        assert_eq!(shape.max_locals, 2);
    }

    #[test]
    fn peers_send_binaries_only_and_the_caps_apply_to_every_load() {
        use crate::sandbox::{Sandbox, SandboxConfig};
        let text = r#"(module
          (import "peergrid" "log" (func (param i32 i32 i32)))
          (memory (export "memory") 1)
          (func (export "peergrid_abi_v1"))
          (func (export "peergrid_alloc") (param i32) (result i32) (i32.const 1024))
          (func (export "peergrid_run") (param i32 i32) (result i32) (i32.const 0)))"#;
        let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
        assert!(matches!(
            sandbox.load_from_peer(text.as_bytes()),
            Err(ModuleError::TextFromPeer)
        ));
        assert!(
            sandbox.load(text.as_bytes()).is_ok(),
            "text from the local CLI"
        );
        assert!(
            sandbox.load_from_peer(&wat(text)).is_ok(),
            "a binary from a peer"
        );
        let tiny = Sandbox::new(SandboxConfig {
            caps: ModuleCaps {
                max_functions: 3,
                ..ModuleCaps::default()
            },
            ..SandboxConfig::default()
        })
        .unwrap();
        assert!(matches!(
            tiny.load(text.as_bytes()),
            Err(ModuleError::TooLarge(_))
        ));
    }
}
