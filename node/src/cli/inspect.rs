//! `peergrid inspect JOB`: what a module is (hash, size, imports, exports), which
//! job ABI it speaks (v1 or wasi-v1), and if neither, why it is refused.

use std::process::ExitCode;

use anyhow::Context;

use super::GlobalOpts;
use super::common::{JobSource, open_sandbox};
use crate::config::DataDir;

/// Describe a module and check it against the job ABIs (v1, wasi-v1).
#[derive(Debug, clap::Args)]
pub struct InspectCmd {
    /// A .wasm (or .wat) file, or a built-in example name.
    pub job: String,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl InspectCmd {
    pub(super) fn execute(self, global: &GlobalOpts) -> anyhow::Result<ExitCode> {
        let source = JobSource::resolve(&self.job)?;
        let sandbox = open_sandbox(&DataDir::resolve(global.data_dir.clone()))?;
        let info = sandbox
            .inspect(&source.bytes)
            .with_context(|| format!("cannot inspect {}", self.job))?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&info)?);
        } else {
            println!("module   {}", source.name);
            println!("blake3   {}", info.hash);
            println!("size     {} bytes", info.size);
            println!("imports  {}", info.imports.len());
            for (name, ty) in &info.imports {
                println!("  {name}: {ty}");
            }
            println!("exports  {}", info.exports.len());
            for (name, ty) in &info.exports {
                println!("  {name}: {ty}");
            }
            if info.abi.ok() {
                let mut extras = vec!["run"];
                if info.abi.has_split {
                    extras.push("split");
                }
                if info.abi.has_merge {
                    extras.push("merge");
                }
                let abi = info.abi.abi.map_or("?", |a| a.as_str());
                println!("abi      {abi} ({})", extras.join(", "));
            } else {
                match info.abi.abi {
                    Some(abi) => println!("abi      {} (refused)", abi.as_str()),
                    None => println!("abi      none (refused)"),
                }
                for import in &info.abi.disallowed_imports {
                    println!("  import not allowed: {import}");
                }
                for problem in &info.abi.problems {
                    println!("  {problem}");
                }
            }
        }
        Ok(if info.abi.ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}
