//! `peergrid peers`: every peer the local node knows, with its latency, its last
//! capacity advert, and whether it is reached directly or through a relay (`--json`:
//! `path` is `direct` or `relayed`, `via` the relay).

use std::process::ExitCode;

use super::GlobalOpts;
use super::client::ApiClient;
use super::untrusted::{peer_text, shown};
use crate::config::DataDir;
use crate::net::PeerInfo;

/// List the peers the local node knows and what they lend.
#[derive(Debug, clap::Args)]
pub struct PeersCmd {
    /// Print JSON (a list of peers).
    #[arg(long)]
    pub json: bool,
}

impl PeersCmd {
    pub(super) fn execute(self, global: &GlobalOpts) -> anyhow::Result<ExitCode> {
        let client = ApiClient::connect(&DataDir::resolve(global.data_dir.clone()))?;
        let peers: Vec<PeerInfo> = client.get("/v1/peers")?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&peers)?);
            return Ok(ExitCode::SUCCESS);
        }
        if peers.is_empty() {
            println!("no peers known yet (give --bootstrap, or wait for mDNS on the LAN)");
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "{:<16} {:>4} {:>8} {:>8} {:>7} {:>5} {:>9} {:>7}  address (agent)",
            "peer", "conn", "path", "rtt ms", "slots", "cores", "Gfuel/s", "advert"
        );
        for p in &peers {
            let short = &p.peer_id[p.peer_id.len().saturating_sub(16)..];
            let (slots, cores, fuel) = match &p.advert {
                Some(a) => (
                    format!("{}/{}", a.slots_free, a.slots_total),
                    a.cores.to_string(),
                    format!("{:.2}", a.fuel_per_sec as f64 / 1e9),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            println!(
                "{:<16} {:>4} {:>8} {:>8} {:>7} {:>5} {:>9} {:>7}  {}",
                short,
                if p.connected { "yes" } else { "no" },
                p.path.as_deref().unwrap_or("-"),
                p.rtt_ms.map_or("-".into(), |r| format!("{r:.1}")),
                slots,
                cores,
                fuel,
                p.advert_age_s.map_or("-".into(), |a| format!("{a:.0}s")),
                p.foreign_version
                    .as_ref()
                    .map(|v| {
                        format!(
                            "(refused: speaks {}, not {})",
                            peer_text(v),
                            crate::net::protocol::IDENTIFY_PROTOCOL
                        )
                    })
                    .unwrap_or_else(|| {
                        let addr = match &p.via {
                            Some(relay) => format!(
                                "via relay {}",
                                peer_text(&relay[relay.len().saturating_sub(16)..])
                            ),
                            None => peer_text(p.addrs.first().map_or("", String::as_str)),
                        };
                        match &p.agent {
                            Some(agent) => format!("{addr} ({})", shown(agent, 64)),
                            None => addr,
                        }
                    })
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}
