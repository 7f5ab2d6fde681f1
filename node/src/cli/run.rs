//! `peergrid run JOB`: runs a whole job on this machine, under exactly the sandbox and
//! limits the grid applies, and shows what happened.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use super::GlobalOpts;
use super::common::{JobSource, LimitOpts, ParamsOpts, fuel, open_sandbox};
use crate::config::DataDir;
use crate::local::{self, LocalOptions, LocalReport};

/// Run a job locally: split, every chunk in the sandbox, merge.
#[derive(Debug, clap::Args)]
pub struct RunCmd {
    /// A .wasm (or .wat) file, or a built-in example: mandelbrot, primes, montecarlo, pow.
    pub job: String,
    #[command(flatten)]
    pub params: ParamsOpts,
    #[command(flatten)]
    pub limits: LimitOpts,
    /// Write the result here. Default: print it when it is text; otherwise write
    /// JOB.png (pictures) or JOB.out in the current directory.
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// How many chunks run at once. Default: one per CPU core.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
}

impl RunCmd {
    pub(super) fn execute(self, global: &GlobalOpts) -> anyhow::Result<ExitCode> {
        let source = JobSource::resolve(&self.job)?;
        let params = self.params.resolve(source.default_params)?;
        let sandbox = open_sandbox(&DataDir::resolve(global.data_dir.clone()))?;
        let module = sandbox
            .load(&source.bytes)
            .with_context(|| format!("cannot run {}", self.job))?;
        let mut options = LocalOptions {
            chunk_limits: self.limits.chunk_limits(),
            ..LocalOptions::default()
        };
        if let Some(threads) = self.threads {
            options.threads = threads.max(1);
        }

        let bar = if self.json {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0)
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} chunks {pos}/{len} {wide_bar} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let report = local::run_job(
            &sandbox,
            &module,
            &params,
            &options,
            &|n| bar.set_length(n as u64),
            &|| bar.inc(1),
        );
        bar.finish_and_clear();
        let report = report.with_context(|| format!("{} failed", source.name))?;

        let output = self.write_result(&source.name, &report)?;
        let summary = Summary::new(&source.name, &module.hash, &report, output.as_deref());
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&summary.to_json(&report))?
            );
        } else {
            summary.print(&report);
        }
        Ok(if summary.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }

    /// Writes the result (or each chunk's output when there is no merge) where the
    /// user asked, or next to them; returns where it went. Text results with no
    /// `--out` are printed instead.
    fn write_result(&self, name: &str, report: &LocalReport) -> anyhow::Result<Option<PathBuf>> {
        if let Some(result) = report.result() {
            let path = match &self.out {
                Some(path) => path.clone(),
                None if is_text(result) => return Ok(None),
                None if result.starts_with(b"\x89PNG") => PathBuf::from(format!("{name}.png")),
                None => PathBuf::from(format!("{name}.out")),
            };
            write_file(&path, result)?;
            return Ok(Some(path));
        }
        let Some(outputs) = report.outputs() else {
            return Ok(None);
        };
        let dir = self
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{name}-outputs")));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (i, output) in outputs.iter().enumerate() {
            write_file(&dir.join(format!("chunk-{i:06}.bin")), output)?;
        }
        Ok(Some(dir))
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| {
        format!(
            "writing the result to {} (check the directory exists and has space)",
            path.display()
        )
    })
}

/// Whether a result is short UTF-8 text worth printing.
pub(crate) fn is_text(bytes: &[u8]) -> bool {
    bytes.len() <= 64 * 1024 && std::str::from_utf8(bytes).is_ok_and(|s| !s.contains('\0'))
}

/// The figures a run ends with.
struct Summary<'a> {
    name: &'a str,
    hash: &'a str,
    outcomes: BTreeMap<&'static str, usize>,
    failed: usize,
    output: Option<&'a Path>,
}

impl<'a> Summary<'a> {
    fn new(name: &'a str, hash: &'a str, report: &LocalReport, output: Option<&'a Path>) -> Self {
        let mut outcomes = BTreeMap::new();
        for e in &report.chunks {
            *outcomes.entry(e.outcome.label()).or_insert(0) += 1;
        }
        Self {
            name,
            hash,
            outcomes,
            failed: report.failures().count(),
            output,
        }
    }

    fn print(&self, report: &LocalReport) {
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        let cpu: f64 = report.chunks.iter().map(|e| e.elapsed.as_secs_f64()).sum();
        println!("job      {} (module {})", self.name, &self.hash[..16]);
        println!("chunks   {} ({})", report.chunks.len(), outcomes.join(", "));
        println!("fuel     {}", fuel(report.chunk_fuel()));
        println!(
            "time     {:.2} s ({:.2} s of sandbox time across chunks)",
            report.elapsed.as_secs_f64(),
            cpu
        );
        for (i, e) in report.failures().take(5) {
            println!("failed   chunk {i}: {}", e.outcome);
        }
        if self.failed > 5 {
            println!("failed   … and {} more chunks", self.failed - 5);
        }
        match (report.result(), self.output) {
            (_, Some(path)) => println!("output   {}", path.display()),
            (Some(text), None) => {
                println!("result");
                print!("{}", String::from_utf8_lossy(text));
            }
            (None, None) => {}
        }
        if self.failed > 0 {
            println!(
                "{} of {} chunks did not complete; the job has no result",
                self.failed,
                report.chunks.len()
            );
        }
    }

    fn to_json(&self, report: &LocalReport) -> serde_json::Value {
        let result = report.result().and_then(|r| {
            is_text(r).then(|| {
                serde_json::from_slice::<serde_json::Value>(r)
                    .unwrap_or_else(|_| String::from_utf8_lossy(r).into_owned().into())
            })
        });
        let failures: Vec<_> = report
            .failures()
            .map(|(i, e)| serde_json::json!({"chunk": i, "outcome": e.outcome.label(), "detail": e.outcome.to_string()}))
            .collect();
        serde_json::json!({
            "job": self.name,
            "module_hash": self.hash,
            "chunks": report.chunks.len(),
            "outcomes": self.outcomes,
            "failures": failures,
            "fuel": report.chunk_fuel(),
            "seconds": report.elapsed.as_secs_f64(),
            "result": result,
            "output": self.output.map(|p| p.display().to_string()),
        })
    }
}
