//! `peergrid examples`: lists the built-in jobs with their parameters, and writes
//! their `.wasm` files out so users can start from them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// List the built-in example jobs (and optionally export their modules).
#[derive(Debug, clap::Args)]
pub struct ExamplesCmd {
    /// Write each example's module to DIR/NAME.wasm.
    #[arg(long, value_name = "DIR")]
    pub export: Option<PathBuf>,
}

impl ExamplesCmd {
    pub(super) fn execute(self) -> anyhow::Result<ExitCode> {
        for example in &peergrid_jobs::EXAMPLES {
            println!("{:<11} {}", example.name, example.about);
            println!("            defaults: {}", example.default_params.trim());
            for line in example.params_help.lines().filter(|l| !l.trim().is_empty()) {
                println!("              {}", line.trim());
            }
        }
        println!("\nwasi-v1 examples (WASI commands in other languages, source in jobs/wasi/):");
        for example in &peergrid_jobs::WASI_EXAMPLES {
            println!("{:<11} {}", example.name, example.about);
            println!("            defaults: {}", example.default_params);
        }
        if let Some(dir) = self.export {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let modules = peergrid_jobs::EXAMPLES
                .iter()
                .map(|e| (e.name, e.wasm))
                .chain(
                    peergrid_jobs::WASI_EXAMPLES
                        .iter()
                        .map(|e| (e.name, e.wasm)),
                );
            for (name, wasm) in modules {
                let path = dir.join(format!("{name}.wasm"));
                std::fs::write(&path, wasm)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {} ({} bytes)", path.display(), wasm.len());
            }
        } else {
            println!("\nrun one with: peergrid run NAME [--params JSON]");
        }
        Ok(ExitCode::SUCCESS)
    }
}
