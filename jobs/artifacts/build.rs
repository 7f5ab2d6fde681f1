//! Builds the example jobs to `wasm32-unknown-unknown` with a nested cargo, so the
//! node can embed them (`peergrid run mandelbrot`, `peergrid demo`) and tests can run
//! them in the sandbox.
//!
//! The nested cargo gets its own target directory under `OUT_DIR` (sharing the outer
//! one would deadlock on cargo's build lock), none of the outer build's flags, and the
//! workspace's `wasm-job` profile (LTO, `panic = "abort"`, stripped).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";
const JOBS: &[&str] = &[
    "mandelbrot",
    "primes",
    "montecarlo",
    "pow",
    "faults",
    "floats",
];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .ancestors()
        .nth(2)
        .expect("jobs/artifacts lives two levels below the workspace root")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));

    for job in JOBS {
        rerun_if_changed(&root.join("jobs").join(job));
    }
    rerun_if_changed(&root.join("sdk"));
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.toml").display()
    );

    ensure_target();

    let target_dir = out_dir.join("wasm-target");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--target", TARGET, "--profile", "wasm-job"])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    for job in JOBS {
        cmd.args(["-p", &format!("job-{job}")]);
    }
    // The outer build's flags are for the host (and may name a wrapper such as
    // clippy-driver); the job modules are built plainly.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    // No `simd128`: measured with `peergrid bench sandbox` (issue 18), it made
    // montecarlo 5-7x slower (the SLP vectoriser packs its serial RNG into vectors with
    // lane shuffles), gave pow 25 % (with SLP) or nothing (without), and cost primes
    // more fuel checks; plain scalar builds are the best overall.
    let output = cmd.output().unwrap_or_else(|e| {
        panic!("could not start cargo to build the example jobs: {e}");
    });
    if !output.status.success() {
        panic!(
            "building the example jobs for {TARGET} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let built = target_dir.join(TARGET).join("wasm-job");
    for job in JOBS {
        let file = format!("job_{job}.wasm");
        let from = built.join(&file);
        std::fs::copy(&from, out_dir.join(&file))
            .unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
    }
}

fn rerun_if_changed(dir: &Path) {
    println!(
        "cargo:rerun-if-changed={}",
        dir.join("Cargo.toml").display()
    );
    println!("cargo:rerun-if-changed={}", dir.join("src").display());
}

/// Makes sure the wasm32 standard library is installed: installs it with rustup when
/// it is missing, and otherwise stops with the exact command to run.
fn ensure_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = |root: &Path| root.join("lib/rustlib").join(TARGET).join("lib").is_dir();
    if sysroot.as_deref().is_some_and(installed) {
        return;
    }
    println!("cargo:warning=the {TARGET} target is missing; installing it with rustup");
    let mut add = Command::new("rustup");
    add.args(["target", "add", TARGET]);
    if let Ok(toolchain) = env::var("RUSTUP_TOOLCHAIN") {
        add.args(["--toolchain", &toolchain]);
    }
    let ok = add.status().map(|s| s.success()).unwrap_or(false);
    if !ok || !sysroot.as_deref().is_some_and(installed) {
        panic!(
            "\n\nThe example jobs are WebAssembly and need the {TARGET} target, which is not \
             installed and could not be installed automatically.\nRun:\n\n    rustup target add \
             {TARGET}\n\nthen build again.\n"
        );
    }
}
