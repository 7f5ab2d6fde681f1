//! `peergrid results JOB`: downloads a finished job's verified result: the merged
//! result as one file (text is printed), or, for a job without merge, one file per
//! chunk.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::GlobalOpts;
use super::client::ApiClient;
use super::jobs::resolve_job;
use super::run::is_text;
use crate::config::DataDir;
use crate::scheduler::{JobState, JobStatus};

/// Download a finished job's verified result.
#[derive(Debug, clap::Args)]
pub struct ResultsCmd {
    /// The job id (or a unique prefix).
    pub job: String,
    /// Where to write it: a file for a merged result, a directory for per-chunk
    /// outputs. Default: print text; otherwise NAME-ID.png / .out, or NAME-ID/.
    #[arg(long, short, value_name = "PATH")]
    pub out: Option<PathBuf>,
}

impl ResultsCmd {
    pub(super) fn execute(self, global: &GlobalOpts) -> anyhow::Result<ExitCode> {
        let client = ApiClient::connect(&DataDir::resolve(global.data_dir.clone()))?;
        let id = resolve_job(&client, &self.job)?;
        let status: JobStatus = client.get(&format!("/v1/jobs/{id}"))?;
        if status.state != JobState::Done {
            bail!(
                "job {} is {:?}, not done: it has no verified result{}",
                &id[..12],
                status.state,
                status.error.map(|e| format!(" ({e})")).unwrap_or_default()
            );
        }
        download(&client, &status, self.out, false)?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Writes (or prints) a done job's result.
pub(super) fn download(
    client: &ApiClient,
    status: &JobStatus,
    out: Option<PathBuf>,
    quiet: bool,
) -> anyhow::Result<()> {
    let stem = format!("{}-{}", status.name, &status.id[..8]);
    if status.result.is_some() {
        let bytes = client.get_bytes(&format!("/v1/jobs/{}/result", status.id))?;
        let path = match out {
            Some(p) => p,
            None if is_text(&bytes) => {
                print!("{}", String::from_utf8_lossy(&bytes));
                return Ok(());
            }
            None if bytes.starts_with(b"\x89PNG") => PathBuf::from(format!("{stem}.png")),
            None => PathBuf::from(format!("{stem}.out")),
        };
        std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        if !quiet {
            println!("wrote {} ({} bytes)", path.display(), bytes.len());
        }
        return Ok(());
    }
    let dir = out.unwrap_or_else(|| PathBuf::from(stem));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for chunk in 0..status.chunks_total {
        let bytes = client.get_bytes(&format!("/v1/jobs/{}/chunks/{chunk}", status.id))?;
        let path = dir.join(format!("chunk-{chunk:06}.bin"));
        std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    if !quiet {
        println!(
            "wrote {} chunk outputs to {}",
            status.chunks_total,
            dir.display()
        );
    }
    Ok(())
}
