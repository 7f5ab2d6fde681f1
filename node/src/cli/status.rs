//! `peergrid status`: what the local node is doing: its id, addresses, connections
//! and the capacity it lends.

use std::process::ExitCode;

use super::GlobalOpts;
use super::client::ApiClient;
use super::common::fuel;
use crate::api::Status;
use crate::config::DataDir;

/// Show the local node's state.
#[derive(Debug, clap::Args)]
pub struct StatusCmd {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl StatusCmd {
    pub(super) fn execute(self, global: &GlobalOpts) -> anyhow::Result<ExitCode> {
        let client = ApiClient::connect(&DataDir::resolve(global.data_dir.clone()))?;
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
        println!(
            "lends     {}/{} slots free, {} MiB per chunk, {}/s per slot",
            s.slots_free,
            s.slots_total,
            s.memory_per_chunk / (1024 * 1024),
            fuel(s.fuel_per_sec)
        );
        if s.offences > 0 || s.banned_peers > 0 {
            println!(
                "offences  {} counted, {} peers banned",
                s.offences, s.banned_peers
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}
