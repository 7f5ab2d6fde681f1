//! `peergrid status [JOB]`: what the local node is doing (its id, addresses,
//! connections, the capacity it lends), or where a job is and, when nothing moves,
//! why. `--follow` streams a job's progress.

use std::process::ExitCode;

use super::GlobalOpts;
use super::client::ApiClient;
use super::common::fuel;
use super::jobs::{print_job, resolve_job};
use super::untrusted::peer_text;
use crate::api::Status;
use crate::config::DataDir;
use crate::scheduler::{ChunkEvidence, JobStatus};

/// Show the local node's state, or a job's.
#[derive(Debug, clap::Args)]
pub struct StatusCmd {
    /// A job id (or a unique prefix); without it, the node itself.
    pub job: Option<String>,
    /// Follow the job's progress until it ends.
    #[arg(long, requires = "job")]
    pub follow: bool,
    /// List every chunk where peers disagreed: each peer's answer and whether its
    /// signature checks out.
    #[arg(long, requires = "job", conflicts_with = "follow")]
    pub evidence: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl StatusCmd {
    pub(super) fn execute(self, global: &GlobalOpts) -> anyhow::Result<ExitCode> {
        let client = ApiClient::connect(&DataDir::resolve(global.data_dir.clone()))?;
        if let Some(job) = &self.job {
            let id = resolve_job(&client, job)?;
            if self.evidence {
                let evidence: Vec<ChunkEvidence> =
                    client.get(&format!("/v1/jobs/{id}/evidence"))?;
                if self.json {
                    println!("{}", serde_json::to_string_pretty(&evidence)?);
                } else {
                    print_evidence(&evidence);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let status: JobStatus = if self.follow {
                super::submit::follow(&client, &id, self.json)?
            } else {
                client.get(&format!("/v1/jobs/{id}"))?
            };
            if self.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_job(&status);
            }
            return Ok(ExitCode::SUCCESS);
        }
        let s: Status = client.get("/v1/status")?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&s)?);
            return Ok(ExitCode::SUCCESS);
        }
        println!("peer      {}", s.peer_id);
        println!("version   {} (up {:.0} s)", s.version, s.uptime_s);
        for addr in &s.listen_addrs {
            println!("listening {addr}");
        }
        println!(
            "peers     {} connected, {} known, {} advertising capacity",
            s.connected_peers, s.known_peers, s.adverts_in_view
        );
        if let Some(r) = &s.reachability {
            println!("reach     {}", r.text);
            if r.relaying {
                println!("relaying  for peers behind NAT (see --no-relay)");
            }
        }
        if let Some(b) = &s.bandwidth {
            let rate = |r: Option<u64>| {
                r.map_or_else(
                    || "no cap".to_string(),
                    |b| format!("at most {}/s", bytesize::ByteSize::b(b).display().iec()),
                )
            };
            let size = |n: u64| bytesize::ByteSize::b(n).display().iec().to_string();
            if b.caps.max_upload.is_some() || b.caps.max_download.is_some() {
                println!(
                    "bandwidth upload {} ({} sent), download {} ({} fetched)",
                    rate(b.caps.max_upload),
                    size(b.uploaded),
                    rate(b.caps.max_download),
                    size(b.downloaded)
                );
            }
        }
        let v = &s.volunteer;
        match &v.reason_text {
            Some(reason) => println!("state     {}: {reason}", v.state),
            None if s.slots_total < s.worker.slots_lent => println!(
                "state     {}: lending {} of {} slots (other programs use {:.0} % CPU)",
                v.state,
                s.slots_total,
                s.worker.slots_lent,
                v.cpu.map_or(0.0, |c| c.other_percent)
            ),
            None => println!("state     {}: lending {} slots", v.state, s.slots_total),
        }
        println!(
            "lends     {}/{} slots free, {} MiB per chunk, {}/s per slot",
            s.slots_free,
            s.slots_total,
            s.memory_per_chunk / (1024 * 1024),
            fuel(s.fuel_per_sec)
        );
        if let Some(cpu) = &v.cpu {
            println!(
                "cpu       other programs {:.0} %, peergrid {:.0} % of the machine",
                cpu.other_percent, cpu.peergrid_percent
            );
        }
        let p = &v.preferences;
        if p.cpu_time_percent < 100 || p.active_hours.is_some() || p.suspend_above_percent > 0 {
            println!(
                "prefs     cpu time {} %, suspend above {}, active hours {} (see `peergrid prefs`)",
                p.cpu_time_percent,
                match p.suspend_above_percent {
                    0 => "never".to_string(),
                    n => format!("{n} %"),
                },
                p.active_hours
                    .map_or_else(|| "always".to_string(), |h| h.to_string())
            );
        }
        println!(
            "working   {} chunks active ({} paused), {} results awaiting acknowledgement, {} executed since start",
            s.worker.active, s.worker.paused, s.worker.outbox, s.worker.executed
        );
        if s.worker.withdrawn > 0 {
            println!(
                "withdrawn {} chunks paused too long (their submitters ran them elsewhere)",
                s.worker.withdrawn
            );
        }
        if s.jobs_running > 0 {
            println!("jobs      {} running (see `peergrid jobs`)", s.jobs_running);
        }
        if s.offences > 0 || s.banned_peers > 0 {
            println!(
                "offences  {} counted, {} peers and {} addresses banned",
                s.offences, s.banned_peers, s.banned_addresses
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn print_evidence(evidence: &[ChunkEvidence]) {
    if evidence.is_empty() {
        println!("no disagreements: every peer that answered agreed");
        return;
    }
    for c in evidence {
        println!(
            "chunk {} ({}{})",
            c.chunk,
            c.state,
            c.accepted
                .as_deref()
                .map(|h| format!(", accepted output {}", &h[..16.min(h.len())]))
                .unwrap_or_default()
        );
        for r in &c.replicas {
            println!(
                "  {}  {:<9} {:<28} {}  {}",
                &r.peer[r.peer.len().saturating_sub(16)..],
                r.state,
                peer_text(r.outcome.as_deref().unwrap_or("-")),
                match r.agrees {
                    Some(true) => "agrees",
                    Some(false) => "DISAGREES",
                    None => "",
                },
                match (&r.signature, r.signature_valid) {
                    (Some(sig), true) => format!("signed {}…", &sig[..16.min(sig.len())]),
                    (Some(_), false) => "signature INVALID".to_string(),
                    (None, _) => "unsigned".to_string(),
                }
            );
        }
    }
}
