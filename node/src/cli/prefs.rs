//! `peergrid prefs`: show or change the volunteer's preferences while the node runs
//! (kept in the data dir until `--reset`; `peergrid.toml` and flags set the defaults).

use std::process::ExitCode;

use super::GlobalOpts;
use super::client::ApiClient;
use crate::config::DataDir;
use crate::worker::politeness::{PreferenceChanges, Preferences};

/// Show or change how much of this machine the node lends (no option: show).
#[derive(Debug, clap::Args)]
pub struct PrefsCmd {
    /// CPU cores to lend (one chunk slot per core); 0 lends nothing.
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,
    /// Use at most this share of the machine's cores, in percent (1-100).
    #[arg(long, value_name = "PERCENT")]
    pub max_cpu_percent: Option<u8>,
    /// Compute only this share of the time, in percent (1-100).
    #[arg(long, value_name = "PERCENT")]
    pub cpu_time_percent: Option<u8>,
    /// Suspend while other programs use more than this share of the CPU (0: never).
    #[arg(long, value_name = "PERCENT")]
    pub suspend_above_percent: Option<u8>,
    /// Work only during these hours (local time), e.g. 22:00-07:00, or "always".
    #[arg(long, value_name = "HH:MM-HH:MM")]
    pub active_hours: Option<String>,
    /// Most memory all running chunks may use together, e.g. 2GiB, or "off".
    #[arg(long, value_name = "SIZE")]
    pub memory_total: Option<String>,
    /// Lend every slot even when other programs keep cores busy (true or false).
    #[arg(long, value_name = "BOOL")]
    pub lend_when_busy: Option<bool>,
    /// Most bytes per second sent to peers (blob pieces, results), e.g. 2MiB, or "off".
    #[arg(long, value_name = "RATE")]
    pub max_upload: Option<String>,
    /// Most bytes per second fetched from peers (blob pieces), e.g. 8MiB, or "off".
    #[arg(long, value_name = "RATE")]
    pub max_download: Option<String>,
    /// Forget earlier changes made here (back to peergrid.toml and the flags)
    /// before applying these.
    #[arg(long)]
    pub reset: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl PrefsCmd {
    pub(super) fn execute(self, global: &GlobalOpts) -> anyhow::Result<ExitCode> {
        let client = ApiClient::connect(&DataDir::resolve(global.data_dir.clone()))?;
        let changes = PreferenceChanges {
            cpus: self.cpus,
            max_cpu_percent: self.max_cpu_percent,
            cpu_time_percent: self.cpu_time_percent,
            suspend_above_percent: self.suspend_above_percent,
            active_hours: self.active_hours,
            memory_total: self.memory_total,
            lend_when_busy: self.lend_when_busy,
            max_upload: self.max_upload,
            max_download: self.max_download,
        };
        let prefs: Preferences = if changes == PreferenceChanges::default() && !self.reset {
            client.get("/v1/preferences")?
        } else {
            let path = if self.reset {
                "/v1/preferences?reset=true"
            } else {
                "/v1/preferences"
            };
            client.put_json(path, &changes)?
        };
        if self.json {
            println!("{}", serde_json::to_string_pretty(&prefs)?);
        } else {
            print_prefs(&prefs);
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn print_prefs(p: &Preferences) {
    println!("cpus                  {}", p.cpus);
    println!("max-cpu-percent       {}", p.max_cpu_percent);
    println!("cpu-time-percent      {}", p.cpu_time_percent);
    println!(
        "suspend-above-percent {}",
        match p.suspend_above_percent {
            0 => "never".to_string(),
            n => n.to_string(),
        }
    );
    println!(
        "active-hours          {}",
        p.active_hours
            .map_or_else(|| "always".to_string(), |h| h.to_string())
    );
    println!(
        "memory-total          {}",
        p.memory_total.map_or_else(
            || "off".to_string(),
            |b| bytesize::ByteSize::b(b).display().iec().to_string()
        )
    );
    println!("lend-when-busy        {}", p.lend_when_busy);
    let rate = |r: Option<u64>| {
        r.map_or_else(
            || "off".to_string(),
            |b| format!("{}/s", bytesize::ByteSize::b(b).display().iec()),
        )
    };
    println!("max-upload            {}", rate(p.max_upload));
    println!("max-download          {}", rate(p.max_download));
}
