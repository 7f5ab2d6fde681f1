//! A small grid inside one process: a submitter and N workers, real nodes talking
//! real libp2p on loopback, each with its own temporary data dir. `peergrid demo`
//! and `peergrid bench` use it; liars are injected through the executor seam.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::config::{DataDir, NodeOptions};
use crate::settings::Resolve;
use crate::{Node, Seams};

/// The running grid.
#[derive(Debug)]
pub struct LocalGrid {
    /// The node jobs are submitted to.
    pub submitter: Node,
    /// The workers; the last `liars` of them lie on every chunk.
    pub workers: Vec<Node>,
    /// How many of the workers lie.
    pub liars: usize,
    _dirs: Vec<tempfile::TempDir>,
}

impl LocalGrid {
    /// Starts a submitter and `workers` workers lending `cpus` slots each; the last
    /// `liars` workers return wrong results for every chunk (each its own wrong
    /// answer, so liars never agree with each other).
    pub async fn start(workers: usize, liars: usize, cpus: u32) -> anyhow::Result<Self> {
        if liars > workers {
            bail!("--liars {liars} is more than the {workers} workers");
        }
        let mut dirs = Vec::new();
        // Every advert costs every peer a signature check and a relay: a large grid in
        // one process advertises less often (500 ms up to 20 peers, then 25 ms a peer).
        let interval_ms = (workers as u64 * 25).max(500);
        let mut spawn = |bootstrap: Vec<String>, seams: Seams, cpus: u32| {
            let dir = tempfile::tempdir().context("creating a temporary data dir")?;
            let config = NodeOptions {
                advert_interval: Some(format!("{interval_ms}ms")),
                advert_ttl: Some(format!("{}ms", interval_ms * 6)),
                ..NodeOptions::loopback(bootstrap, cpus)
            }
            .resolve(DataDir::resolve(Some(dir.path().to_path_buf())))?;
            dirs.push(dir);
            anyhow::Ok(Node::spawn_with(config, seams))
        };
        // The submitter only submits (lends no slots), so every replica crosses the
        // network.
        let submitter = spawn(Vec::new(), Seams::default(), 0)?.await?;
        let bootstrap: Vec<String> = submitter
            .listen_addrs()
            .await
            .iter()
            .map(ToString::to_string)
            .collect();
        let mut nodes = Vec::new();
        for i in 0..workers {
            let seams = if i >= workers - liars {
                Seams::liar(1.0, i as u64 + 1)
            } else {
                Seams::default()
            };
            nodes.push(spawn(bootstrap.clone(), seams, cpus)?.await?);
        }
        Ok(Self {
            submitter,
            workers: nodes,
            liars,
            _dirs: dirs,
        })
    }

    /// Waits until the submitter sees every worker's capacity advert.
    pub async fn wait_for_workers(&self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let seen = self.submitter.net().advert_count().await;
            if seen >= self.workers.len() {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "only {seen} of {} workers advertised within {timeout:?}",
                    self.workers.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A label for a peer id: "worker 3", "worker 4 (liar)", or "submitter".
    pub fn label(&self, peer: &str) -> String {
        if self.submitter.peer_id().to_string() == peer {
            return "submitter".into();
        }
        match self
            .workers
            .iter()
            .position(|w| w.peer_id().to_string() == peer)
        {
            Some(i) if i >= self.workers.len() - self.liars => format!("worker {} (liar)", i + 1),
            Some(i) => format!("worker {}", i + 1),
            None => peer.to_string(),
        }
    }

    /// Stops every node.
    pub async fn shutdown(self) {
        for w in self.workers {
            w.shutdown().await;
        }
        self.submitter.shutdown().await;
    }
}
