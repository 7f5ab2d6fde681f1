//! Option groups and helpers shared by several subcommands: naming a job (a file or a
//! built-in example), its params, and the limits it runs under.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::{DataDir, parse_duration, parse_fuel, parse_size};
use crate::sandbox::{Limits, Sandbox, SandboxConfig};

/// A job named on the command line: its module bytes and default params.
#[derive(Debug)]
pub struct JobSource {
    /// Name for display: the example's name or the file's stem.
    pub name: String,
    /// The module (binary or WAT text).
    pub bytes: Vec<u8>,
    /// Params used when the user gives none.
    pub default_params: &'static str,
}

impl JobSource {
    /// `job` is a path to a `.wasm`/`.wat` file, or the name of a built-in example.
    pub fn resolve(job: &str) -> anyhow::Result<Self> {
        let path = Path::new(job);
        if path.exists() {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| job.to_string());
            return Ok(Self {
                name,
                bytes,
                default_params: "{}",
            });
        }
        if let Some(example) = peergrid_jobs::find(job) {
            return Ok(Self {
                name: example.name.to_string(),
                bytes: example.wasm.to_vec(),
                default_params: example.default_params,
            });
        }
        if let Some(example) = peergrid_jobs::find_wasi(job) {
            return Ok(Self {
                name: example.name.to_string(),
                bytes: example.wasm.to_vec(),
                default_params: example.default_params,
            });
        }
        bail!(
            "no file '{job}' and no built-in example of that name (built-in: {}); \
             give a path to a .wasm file or one of those names",
            peergrid_jobs::names().join(", ")
        )
    }
}

/// Job parameters: JSON given inline or in a file.
#[derive(Debug, Clone, clap::Args)]
pub struct ParamsOpts {
    /// Job parameters as a JSON object, e.g. '{"limit":10000000}'. Default: the
    /// example's defaults (see `peergrid examples`), or {} for a file.
    #[arg(long, value_name = "JSON", conflicts_with = "params_file")]
    pub params: Option<String>,
    /// Read the job parameters (JSON) from this file.
    #[arg(long, value_name = "FILE")]
    pub params_file: Option<PathBuf>,
}

impl ParamsOpts {
    /// The params bytes to hand to `split`, checked to be JSON first.
    pub fn resolve(&self, default: &str) -> anyhow::Result<Vec<u8>> {
        let text = match (&self.params, &self.params_file) {
            (Some(p), _) => p.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("reading params from {}", f.display()))?,
            (None, None) => default.to_string(),
        };
        serde_json::from_str::<serde_json::Value>(&text)
            .with_context(|| format!("--params is not valid JSON: {text}"))?;
        Ok(text.into_bytes())
    }
}

/// Limits each chunk runs under (the same ones the grid applies).
#[derive(Debug, Clone, clap::Args)]
pub struct LimitOpts {
    /// Fuel per chunk (about one unit per wasm instruction); accepts k/M/G/T suffixes.
    /// A chunk that needs more ends as out-of-fuel. [default: 100G]
    #[arg(long, value_name = "N", value_parser = parse_fuel)]
    pub fuel: Option<u64>,
    /// Memory per chunk, e.g. 256MiB. [default: 256MiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Wall-clock guard per chunk, e.g. 30s or 10m. [default: 10m]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

impl LimitOpts {
    /// The chunk limits with the user's overrides applied.
    pub fn chunk_limits(&self) -> Limits {
        let mut limits = Limits::CHUNK;
        if let Some(fuel) = self.fuel {
            limits.fuel = fuel;
        }
        if let Some(memory) = self.memory {
            limits.memory_bytes = memory;
        }
        if let Some(timeout) = self.timeout {
            limits.timeout = timeout;
        }
        limits
    }
}

/// The sandbox for CLI commands, with the compile cache in the data dir. When the
/// cache cannot be opened (read-only home, say), runs without it and says so.
pub fn open_sandbox(data_dir: &DataDir) -> anyhow::Result<Sandbox> {
    let config = SandboxConfig {
        cache_dir: Some(data_dir.module_cache()),
        ..SandboxConfig::default()
    };
    match Sandbox::new(config) {
        Ok(sandbox) => Ok(sandbox),
        Err(e @ crate::sandbox::SandboxError::Cache { .. }) => {
            tracing::warn!("{e}; compiling without a cache");
            Ok(Sandbox::new(SandboxConfig::default())?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Formats a fuel figure with a unit (`1.23 G`).
pub fn fuel(n: u64) -> String {
    match n {
        0..1_000_000 => n.to_string(),
        1_000_000..1_000_000_000 => format!("{:.2} M", n as f64 / 1e6),
        _ => format!("{:.2} G", n as f64 / 1e9),
    }
}
