//! The modules hostile submitters offer, written as WAT here and sent as binary
//! (except the WAT bomb, which is sent as text on purpose).

/// The ABI v1 exports every module below shares, except `peergrid_run`.
const ABI: &str = r#"
  (import "peergrid" "log" (func (param i32 i32 i32)))
  (memory (export "memory") 1)
  (func (export "peergrid_abi_v1"))
  (func (export "peergrid_alloc") (param i32) (result i32) (i32.const 1024))"#;

fn binary(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).unwrap_or_default()
}

/// A valid ABI v1 module whose output is as long as the little-endian `u32` at the
/// start of its input says, starting with the input itself (so outputs differ).
pub(super) fn sized_output() -> Vec<u8> {
    binary(&format!(
        r#"(module {ABI}
  (func (export "peergrid_run") (param $p i32) (param $l i32) (result i32)
    (local $n i32)
    (local.set $n (i32.load (local.get $p)))
    (drop (memory.grow (i32.add (i32.shr_u (local.get $n) (i32.const 16)) (i32.const 1))))
    (memory.copy (i32.const 65536) (local.get $p) (select (local.get $l) (i32.const 64) (i32.lt_u (local.get $l) (i32.const 64))))
    (i32.store (i32.const 32) (i32.const 0))
    (i32.store (i32.const 36) (i32.const 65536))
    (i32.store (i32.const 40) (local.get $n))
    (i32.const 32)))"#
    ))
}

/// The input that makes [`sized_output`] answer `len` bytes; `salt` makes it unique.
pub(super) fn sized_input(len: u32, salt: u64) -> Vec<u8> {
    let mut input = len.to_le_bytes().to_vec();
    input.extend_from_slice(&salt.to_le_bytes());
    input
}

/// A valid ABI v1 module whose `run` never returns.
pub(super) fn endless() -> Vec<u8> {
    binary(&format!(
        r#"(module {ABI}
  (func (export "peergrid_run") (param i32 i32) (result i32)
    (loop $forever (br $forever))
    (i32.const 0)))"#
    ))
}

/// The bombs: a module with about `bytes` of straight-line code in one function;
/// one nested `depth` blocks deep; one with `functions` functions; and the text of a
/// large module (WAT, which the network must not accept). Each imports a function no
/// peergrid module may import, so a worker that checks before compiling refuses them
/// at once. Salt them with [`salted`] to make every copy a new hash.
pub(super) fn bombs(bytes: usize, depth: usize, functions: usize) -> Vec<(&'static str, Vec<u8>)> {
    // Imports come before any definition in the text format.
    let head = format!(
        r#"(module
  (import "env" "forbidden" (func)) {ABI}"#
    );
    let run_tail = r#"
  (func (export "peergrid_run") (param i32 i32) (result i32) (i32.const 0)))"#;
    let module = |body: &str| format!("{head}\n{body}{run_tail}");
    // `i32.const 1 drop` is 3 bytes of code; flat (unfolded) instructions, so that
    // nesting does not recurse in the parser.
    let huge = module(&format!(
        "(func $big{})",
        " i32.const 1 drop".repeat(bytes / 3)
    ));
    let deep = module(&format!(
        "(func $deep{}{})",
        " block".repeat(depth),
        " end".repeat(depth)
    ));
    let many: String = (0..functions)
        .map(|i| format!("(func $f{i} (result i32) (i32.const {i}))\n"))
        .collect();
    let text = module(&format!(
        "(func $text{})",
        " i32.const 7 drop".repeat(bytes / 16)
    ));
    vec![
        ("huge", binary(&huge)),
        ("deep", binary(&deep)),
        ("many-functions", binary(&module(&many))),
        ("wat-text", text.into_bytes()),
    ]
}

/// A copy of `module` with another hash: a custom section carrying `salt` appended
/// to a binary (custom sections may come anywhere), or a comment appended to text.
pub(super) fn salted(module: &[u8], salt: u64) -> Vec<u8> {
    let mut out = module.to_vec();
    if module.starts_with(b"\0asm") {
        // id 0, section size 13, name length 4, "salt", 8 bytes.
        out.extend_from_slice(&[0, 13, 4]);
        out.extend_from_slice(b"salt");
        out.extend_from_slice(&salt.to_le_bytes());
    } else {
        out.extend_from_slice(format!("\n;; {salt:016x}\n").as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{Limits, Outcome, Sandbox, SandboxConfig};

    #[test]
    fn the_attack_modules_do_what_they_say() {
        let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
        let sized = sandbox.load(&sized_output()).unwrap();
        let exec = sandbox.run_chunk(&sized, &sized_input(100_000, 7), &Limits::CHUNK);
        match exec.outcome {
            Outcome::Ok(out) => {
                assert_eq!(out.len(), 100_000);
                assert_eq!(&out[..4], &100_000u32.to_le_bytes());
            }
            other => panic!("{other:?}"),
        }
        assert!(sandbox.load(&endless()).is_ok());
        for (name, module) in bombs(3000, 100, 100) {
            assert!(!module.is_empty(), "{name}");
            let salted = salted(&module, 9);
            assert_ne!(salted, module);
            let err = sandbox.load(&salted).unwrap_err().to_string();
            assert!(err.contains("forbidden"), "{name}: {err}");
        }
    }
}
