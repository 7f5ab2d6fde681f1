//! `peergrid submit JOB`: sends a job to the grid through the local node, and with
//! `--wait` follows it to the end with a live progress bar (server-sent events).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

use super::GlobalOpts;
use super::client::ApiClient;
use super::common::{JobSource, LimitOpts, ParamsOpts};
use super::jobs::print_job;
use crate::config::DataDir;
use crate::scheduler::{JobSpec, JobState, JobStatus, SubmitRequest};

/// Submit a job to the grid.
#[derive(Debug, clap::Args)]
pub struct SubmitCmd {
    /// A .wasm (or .wat) file, or a built-in example: mandelbrot, primes, montecarlo, pow.
    pub job: String,
    #[command(flatten)]
    pub params: ParamsOpts,
    /// Chunk inputs instead of the module's split: a directory (one file per chunk,
    /// in name order) or a .jsonl file (one chunk per non-empty line).
    #[arg(long, value_name = "DIR|FILE.jsonl")]
    pub inputs: Option<PathBuf>,
    /// Replicas issued for each chunk at first.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub redundancy: u32,
    /// Matching results from distinct peers needed to accept a chunk.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub quorum: u32,
    /// Most replicas per chunk before it fails (disagreements issue more).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub max_replicas: u32,
    /// `adaptive`: peers this node trusts run most chunks alone, with spot checks
    /// (see docs/ARCHITECTURE.md); `fixed`: every chunk gets --redundancy replicas.
    #[arg(long, value_enum, default_value = "adaptive")]
    pub replication: ReplicationArg,
    #[command(flatten)]
    pub limits: LimitOpts,
    /// Reissue a replica not returned after this long (soft timeout), e.g. 2m.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = crate::config::parse_duration)]
    pub reissue_after: Duration,
    /// Follow the job with a progress bar until it ends, then print its summary.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: write the result here when the job is done.
    #[arg(long, short, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// Print JSON (the job id; with --wait, the final status).
    #[arg(long)]
    pub json: bool,
}

/// Reads chunk inputs from a directory or a JSON-lines file.
fn read_inputs(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the inputs at {}", path.display()))?;
    let inputs = if meta.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot list the inputs directory {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| std::fs::read(f).with_context(|| format!("cannot read {}", f.display())))
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.as_bytes().to_vec())
            .collect()
    };
    if inputs.is_empty() {
        bail!(
            "{} holds no chunk inputs (an empty directory or file); nothing was sent",
            path.display()
        );
    }
    Ok(inputs)
}

/// `--replication`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ReplicationArg {
    /// Trust earned by agreement cuts replication (the default).
    Adaptive,
    /// Always --redundancy replicas.
    Fixed,
}

impl SubmitCmd {
    pub(super) fn execute(self, global: &GlobalOpts) -> anyhow::Result<ExitCode> {
        let source = JobSource::resolve(&self.job)?;
        let inputs = self.inputs.as_deref().map(read_inputs).transpose()?;
        let params = match inputs {
            Some(_) => None,
            None => Some(serde_json::from_slice::<serde_json::Value>(
                &self.params.resolve(source.default_params)?,
            )?),
        };
        let spec = JobSpec {
            redundancy: self.redundancy,
            quorum: self.quorum,
            max_replicas: self.max_replicas,
            limits: self.limits.chunk_limits(),
            soft_timeout: self.reissue_after,
            replication: match self.replication {
                ReplicationArg::Adaptive => crate::scheduler::Replication::Adaptive,
                ReplicationArg::Fixed => crate::scheduler::Replication::Fixed,
            },
        };
        spec.check().map_err(anyhow::Error::msg)?;
        let client = ApiClient::connect(&DataDir::resolve(global.data_dir.clone()))?;
        #[derive(serde::Deserialize)]
        struct Hash {
            hash: String,
        }
        // Peers take binary modules only: WAT text is compiled here, on this machine.
        let binary = crate::sandbox::validate::to_binary(&source.bytes)?;
        let module: Hash = client.post_bytes("/v1/blobs", &binary)?;
        let inputs = inputs
            .map(|list| {
                list.iter()
                    .map(|bytes| {
                        client
                            .post_bytes::<Hash>("/v1/blobs", bytes)
                            .map(|h| h.hash)
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .transpose()?;
        #[derive(serde::Deserialize)]
        struct Id {
            id: String,
        }
        let id: Id = client
            .post_json(
                "/v1/jobs",
                &SubmitRequest {
                    name: source.name.clone(),
                    module: module.hash,
                    params,
                    inputs,
                    spec: Some(spec),
                },
            )
            .with_context(|| format!("the node refused {}", self.job))?;
        if !self.wait {
            if self.json {
                println!("{}", serde_json::json!({ "id": id.id }));
            } else {
                println!("{}", id.id);
            }
            return Ok(ExitCode::SUCCESS);
        }
        let status = follow(&client, &id.id, self.json)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&status)?);
        } else {
            print_job(&status);
        }
        if status.state == JobState::Done && !self.json {
            super::results::download(&client, &status, self.out.clone(), false)?;
        } else if status.state == JobState::Done && self.out.is_some() {
            super::results::download(&client, &status, self.out.clone(), true)?;
        }
        Ok(if status.state == JobState::Done {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

/// Follows a job's progress stream until it ends; returns its final status.
pub(super) fn follow(client: &ApiClient, id: &str, quiet: bool) -> anyhow::Result<JobStatus> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {prefix} {pos}/{len} chunks {wide_bar} {elapsed} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut last: Option<JobStatus> = None;
    client.follow(&format!("/v1/jobs/{id}/events"), |data| {
        let Ok(status) = serde_json::from_str::<JobStatus>(data) else {
            return true;
        };
        bar.set_prefix(status.name.clone());
        bar.set_length(u64::from(status.chunks_total));
        bar.set_position(u64::from(status.chunks_verified + status.chunks_failed));
        bar.set_message(status.why.clone().unwrap_or_default());
        let done = status.state.is_final();
        last = Some(status);
        !done
    })?;
    bar.finish_and_clear();
    match last {
        Some(status) if status.state.is_final() => Ok(status),
        _ => client.get(&format!("/v1/jobs/{id}")),
    }
}
