//! `peergrid node`: the long-running peer. Lends CPU to the grid, finds other peers,
//! and serves this machine's CLI through the control API. Stops in order on Ctrl-C
//! or SIGTERM.

use std::process::ExitCode;

use anyhow::Context;

use super::GlobalOpts;
use crate::Node;
use crate::config::{DataDir, NodeOptions};
use crate::settings::Resolve;

/// Run a peer: lend spare CPU to the grid (options can also be set in
/// DATA_DIR/peergrid.toml; see example.config.toml).
#[derive(Debug, clap::Args)]
pub struct NodeCmd {
    #[command(flatten)]
    pub options: NodeOptions,
}

impl NodeCmd {
    pub(super) fn execute(self, global: &GlobalOpts) -> anyhow::Result<ExitCode> {
        let data_dir = DataDir::resolve(global.data_dir.clone());
        let file = NodeOptions::from_file(&data_dir.config_file())?;
        let mut config = self.options.over(file).resolve(data_dir)?;
        // Measure the fuel speed (first start) in a child process of this binary.
        config.calibrate_with = std::env::current_exe().ok();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("peergrid")
            .build()
            .context("starting the async runtime")?;
        runtime.block_on(async move {
            let node = Node::spawn(config).await?;
            let addrs = node.listen_addrs().await;
            println!("peergrid node {}", node.peer_id());
            for addr in &addrs {
                println!("  listening on {addr}");
            }
            if let Some(api) = node.api_addr() {
                println!("  control API on http://{api} (token in the data dir)");
            }
            wait_for_signal().await;
            println!("stopping…");
            node.shutdown().await;
            anyhow::Ok(ExitCode::SUCCESS)
        })
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
