//! `peergrid pause [--for DUR]` and `peergrid resume`: stop lending the CPU by hand
//! and go on again. Running chunks pause inside the sandbox (nothing is lost); the
//! pause is kept in the data dir, so it survives a restart of the node.

use std::process::ExitCode;

use super::GlobalOpts;
use super::client::ApiClient;
use crate::api::PauseRequest;
use crate::config::{DataDir, parse_duration};
use crate::worker::politeness::VolunteerStatus;

/// Pause the local node's work for other peers (until `peergrid resume`, or for a
/// while).
#[derive(Debug, clap::Args)]
pub struct PauseCmd {
    /// Pause for this long, e.g. 30m or 2h, then go on by itself.
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
}

impl PauseCmd {
    pub(super) fn execute(self, global: &GlobalOpts) -> anyhow::Result<ExitCode> {
        let client = ApiClient::connect(&DataDir::resolve(global.data_dir.clone()))?;
        let request = PauseRequest {
            duration: self
                .duration
                .map(|d| humantime::format_duration(d).to_string()),
        };
        let status: VolunteerStatus = client.post_json("/v1/pause", &request)?;
        print_state(&status);
        Ok(ExitCode::SUCCESS)
    }
}

/// Resume work paused with `peergrid pause`.
#[derive(Debug, clap::Args)]
pub struct ResumeCmd {}

impl ResumeCmd {
    pub(super) fn execute(self, global: &GlobalOpts) -> anyhow::Result<ExitCode> {
        let client = ApiClient::connect(&DataDir::resolve(global.data_dir.clone()))?;
        let status: VolunteerStatus = client.post_json("/v1/resume", &())?;
        print_state(&status);
        Ok(ExitCode::SUCCESS)
    }
}

/// One line: the state and why.
pub(super) fn print_state(status: &VolunteerStatus) {
    match &status.reason_text {
        Some(reason) => println!("{}: {reason}", status.state),
        None => println!(
            "{}: lending {} slot{}",
            status.state,
            status.slots_allowed,
            if status.slots_allowed == 1 { "" } else { "s" }
        ),
    }
}
