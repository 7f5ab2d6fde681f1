//! `peergrid cancel JOB`: cancels a job durably; workers holding its chunks stop.

use std::process::ExitCode;

use super::GlobalOpts;
use super::client::ApiClient;
use super::jobs::resolve_job;
use crate::config::DataDir;

/// Cancel a job.
#[derive(Debug, clap::Args)]
pub struct CancelCmd {
    /// The job id (or a unique prefix).
    pub job: String,
}

impl CancelCmd {
    pub(super) fn execute(self, global: &GlobalOpts) -> anyhow::Result<ExitCode> {
        let client = ApiClient::connect(&DataDir::resolve(global.data_dir.clone()))?;
        let id = resolve_job(&client, &self.job)?;
        let _: serde_json::Value = client.post_json(&format!("/v1/jobs/{id}/cancel"), &())?;
        println!("cancelled {id}");
        Ok(ExitCode::SUCCESS)
    }
}
