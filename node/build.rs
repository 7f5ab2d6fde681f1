//! Link options for the `peergrid` binary.
//!
//! **Packed relative relocations** (`-z pack-relative-relocs`, DT_RELR). The binary is
//! position independent, so the loader rebases every pointer in its read-only data at
//! start: about 62 000 of them. As classic RELA entries that table is 1.4 MB, and the
//! loader reads all of it, so it stayed resident in every node: 1.4 MB of an idle
//! node's 27-29 MB (`peergrid bench scale` shows it). RELR packs the same relocations
//! into a bitmap of a few kilobytes. It needs binutils 2.38 and glibc 2.36 (Debian 12,
//! Ubuntu 22.10 and later): the flag is added only when this machine's C compiler
//! links a test program with it that then runs, so an older system builds as before.
//!
//! Nothing else is configured here; `cargo` reruns this only when it changes.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    // Only for a native GNU/Linux build: the probe runs what it links.
    if target != host || !target.ends_with("-linux-gnu") {
        return;
    }
    if packs_relative_relocations() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    } else {
        println!(
            "cargo:warning=the linker or libc does not support packed relative relocations \
             (binutils 2.38 / glibc 2.36): each node keeps about 1.4 MB more resident"
        );
    }
}

/// Whether `cc` links a position-independent program with packed relative relocations
/// and the result runs. A `ld` older than 2.38 ignores the option with a warning (the
/// binary is then linked as before, which is harmless); a glibc older than 2.36
/// refuses to start a program linked with it, which the run catches.
fn packs_relative_relocations() -> bool {
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        return false;
    };
    let source = out.join("relr_probe.c");
    let program = out.join("relr_probe");
    // A table of pointers: relative relocations that the loader must apply.
    let probe = "static const char *const words[] = {\"relr\", \"probe\"};\n\
                 int main(void) { return words[1][0] == 'p' ? 0 : 1; }\n";
    if std::fs::write(&source, probe).is_err() {
        return false;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let linked = Command::new(cc)
        .args(["-fPIE", "-pie", "-Wl,-z,pack-relative-relocs"])
        .arg(&source)
        .arg("-o")
        .arg(&program)
        .output()
        .is_ok_and(|o| o.status.success());
    linked && Command::new(&program).status().is_ok_and(|s| s.success())
}
