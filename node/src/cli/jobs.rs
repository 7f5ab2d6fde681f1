//! `peergrid jobs`: the jobs this node submitted. Also the job summary and job-id
//! lookup that `submit`, `status`, `results` and `cancel` share.

use std::process::ExitCode;

use anyhow::bail;

use super::GlobalOpts;
use super::client::ApiClient;
use super::untrusted::peer_text;
use crate::config::DataDir;
use crate::scheduler::{JobState, JobStatus};

/// List the jobs this node submitted.
#[derive(Debug, clap::Args)]
pub struct JobsCmd {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl JobsCmd {
    pub(super) fn execute(self, global: &GlobalOpts) -> anyhow::Result<ExitCode> {
        let client = ApiClient::connect(&DataDir::resolve(global.data_dir.clone()))?;
        let jobs: Vec<JobStatus> = client.get("/v1/jobs")?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&jobs)?);
            return Ok(ExitCode::SUCCESS);
        }
        if jobs.is_empty() {
            println!("no jobs yet (submit one with: peergrid submit primes --wait)");
        }
        for j in &jobs {
            println!(
                "{}  {:<10} {:<14} {:>6}/{:<6} chunks  {:>7.1} s",
                j.id,
                format!("{:?}", j.state).to_lowercase(),
                j.name,
                j.chunks_verified,
                j.chunks_total,
                j.elapsed_s
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Finds a job by its id or a unique prefix of it.
pub(super) fn resolve_job(client: &ApiClient, arg: &str) -> anyhow::Result<String> {
    let arg = arg.trim().to_ascii_lowercase();
    if arg.len() == 32 {
        return Ok(arg);
    }
    let jobs: Vec<JobStatus> = client.get("/v1/jobs")?;
    let matches: Vec<&JobStatus> = jobs.iter().filter(|j| j.id.starts_with(&arg)).collect();
    match matches.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => bail!("no job starting with '{arg}' on this node (see `peergrid jobs`)"),
        _ => bail!(
            "'{arg}' matches {} jobs; give more of the id",
            matches.len()
        ),
    }
}

/// Prints a job's status for people.
pub(super) fn print_job(s: &JobStatus) {
    println!("job       {} ({})", s.id, s.name);
    println!(
        "state     {}{}",
        format!("{:?}", s.state).to_lowercase(),
        if s.state.is_final() {
            format!(" after {:.1} s", s.elapsed_s)
        } else {
            format!(" for {:.1} s", s.elapsed_s)
        }
    );
    println!(
        "chunks    {} verified, {} failed, {} pending, of {}",
        s.chunks_verified,
        s.chunks_failed,
        s.chunks_total - s.chunks_verified - s.chunks_failed,
        s.chunks_total
    );
    println!(
        "replicas  {} issued, {} results, {} chunks with disagreement, {} reissued",
        s.replicas_issued, s.results, s.disagreements, s.reissues
    );
    let t = &s.trust;
    if s.replication == crate::scheduler::Replication::Adaptive {
        println!(
            "trust     adaptive: {} chunks on one trusted peer's word, {} witnessed here, {} spot checks, {} plants, {} re-verified, {} peers caught",
            t.unreplicated, t.witness_runs, t.spot_checks, t.plants, t.reverified, t.caught
        );
    }
    if t.bad_signatures > 0 {
        println!(
            "refused   {} results whose signature was not their sender's",
            t.bad_signatures
        );
    }
    if s.disagreements > 0 {
        println!(
            "evidence  peergrid status {} --evidence",
            &s.id[..12.min(s.id.len())]
        );
    }
    if let Some(why) = &s.why {
        println!("why       {why}");
    }
    for p in &s.peers {
        println!(
            "peer      {}  {} agreed, {} outvoted, {} in flight{}",
            &p.peer[p.peer.len().saturating_sub(16)..],
            p.agreed,
            p.disagreed,
            p.in_flight,
            match p.standing {
                _ if p.excluded => "  (excluded by reputation)",
                Some(crate::scheduler::Standing::Trusted) => "  (trusted)",
                Some(crate::scheduler::Standing::Probation) => "  (on probation)",
                _ => "",
            }
        );
    }
    for f in &s.failures {
        println!("failed    chunk {}: {}", f.chunk, peer_text(&f.reason));
        for (peer, said) in &f.evidence {
            println!(
                "            {} said {}",
                &peer[peer.len().saturating_sub(16)..],
                peer_text(said)
            );
        }
    }
    if let Some(error) = &s.error {
        println!("error     {}", peer_text(error));
    }
    if s.state == JobState::Done {
        println!("result    peergrid results {}", &s.id[..12]);
    }
}
