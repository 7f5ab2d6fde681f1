//! `peergrid demo`: the first command a newcomer runs.
//!
//! Starts a small grid inside this process (a submitter and four workers, real nodes
//! talking real libp2p on loopback), submits the Mandelbrot example with redundancy 2,
//! shows progress, writes the PNG, and prints what was verified and by whom. With
//! `--liars N` the last N workers return wrong results: the demo shows them outvoted
//! and losing standing.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

use super::GlobalOpts;
use crate::local_grid::LocalGrid;
use crate::scheduler::{JobSpec, JobState, SubmitRequest};

/// Run the Mandelbrot example on a small local grid and write the picture.
#[derive(Debug, clap::Args)]
pub struct DemoCmd {
    /// Where to write the picture.
    #[arg(long, short, value_name = "FILE", default_value = "peergrid-demo.png")]
    pub out: PathBuf,
    /// Workers in the grid (besides the submitter).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub peers: usize,
    /// How many workers lie (return wrong results for every chunk).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub liars: usize,
    /// Mandelbrot params (JSON). Default: the example's (1024×768, 48 chunks).
    #[arg(long, value_name = "JSON")]
    pub params: Option<String>,
}

impl DemoCmd {
    pub(super) fn execute(self, _global: &GlobalOpts) -> anyhow::Result<ExitCode> {
        if self.peers < 2 {
            bail!("--peers must be at least 2: every chunk runs on two distinct peers");
        }
        if self.liars * 2 >= self.peers {
            bail!("--liars must be fewer than half of --peers, or liars could outvote");
        }
        let example = peergrid_jobs::find("mandelbrot").context("the mandelbrot example")?;
        let params: serde_json::Value =
            serde_json::from_str(self.params.as_deref().unwrap_or(example.default_params))
                .context("--params is not valid JSON")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        runtime.block_on(self.run(example.wasm, params))
    }

    async fn run(
        &self,
        wasm: &'static [u8],
        params: serde_json::Value,
    ) -> anyhow::Result<ExitCode> {
        println!(
            "peergrid demo: a submitter and {} workers on loopback{}",
            self.peers,
            if self.liars > 0 {
                format!(", {} of them lying on every chunk", self.liars)
            } else {
                String::new()
            }
        );
        let grid = LocalGrid::start(self.peers, self.liars, 1).await?;
        grid.wait_for_workers(Duration::from_secs(30)).await?;
        println!(
            "all {} workers advertise their capacity; submitting mandelbrot with redundancy 2",
            self.peers
        );

        let submitter = grid.submitter.state();
        let module = submitter.blobs.put(wasm)?;
        let id = submitter
            .scheduler
            .submit(SubmitRequest {
                name: "mandelbrot".into(),
                module: module.to_hex(),
                params: Some(params),
                inputs: None,
                // Fixed quorum 2, so that every chunk shows verification at work
                // (`peergrid submit` defaults to adaptive replication, whose warm-up
                // on a fresh grid this small would be most of the job).
                spec: Some(JobSpec {
                    soft_timeout: Duration::from_secs(30),
                    replication: crate::scheduler::Replication::Fixed,
                    ..JobSpec::default()
                }),
            })
            .await?;
        let mut rx = submitter
            .scheduler
            .subscribe(id)
            .await
            .context("the job vanished")?;
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} verified {pos}/{len} chunks {wide_bar} {elapsed}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let status = loop {
            let status = rx.borrow_and_update().clone();
            bar.set_length(u64::from(status.chunks_total));
            bar.set_position(u64::from(status.chunks_verified + status.chunks_failed));
            if status.state.is_final() {
                break status;
            }
            if tokio::time::timeout(Duration::from_secs(120), rx.changed())
                .await
                .is_err()
            {
                bail!("the demo job made no progress for two minutes");
            }
        };
        bar.finish_and_clear();

        let code = if status.state == JobState::Done {
            let hash = status
                .result
                .as_deref()
                .and_then(crate::net::protocol::BlobHash::from_hex)
                .context("a done job has a result")?;
            let png = submitter.blobs.get(&hash)?.context("the result blob")?;
            std::fs::write(&self.out, &png)
                .with_context(|| format!("writing {}", self.out.display()))?;
            println!(
                "\nverified all {} chunks in {:.1} s: each accepted only when 2 distinct peers returned the same output",
                status.chunks_total, status.elapsed_s
            );
            println!(
                "{} replicas issued, {} chunks had a disagreement and got a tie-breaking replica",
                status.replicas_issued, status.disagreements
            );
            ExitCode::SUCCESS
        } else {
            println!(
                "\nthe job ended {:?}: {}",
                status.state,
                status.error.clone().unwrap_or_default()
            );
            ExitCode::FAILURE
        };
        println!(
            "\n{:<18} {:>7} {:>9}  standing",
            "peer", "agreed", "outvoted"
        );
        for p in &status.peers {
            println!(
                "{:<18} {:>7} {:>9}  {}",
                grid.label(&p.peer),
                p.agreed,
                p.disagreed,
                if p.excluded {
                    "excluded: no longer chosen"
                } else {
                    "good"
                }
            );
        }
        if code == ExitCode::SUCCESS {
            println!(
                "\nwrote {} — open it to see the picture",
                self.out.display()
            );
        }
        grid.shutdown().await;
        Ok(code)
    }
}
