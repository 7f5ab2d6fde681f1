//! How CLI commands reach a running node: `api.json` and `api-token` in the data dir
//! give the address and the token of its control API.

use std::time::Duration;

use anyhow::{Context, bail};
use serde::de::DeserializeOwned;

use crate::api::ApiInfo;
use crate::config::DataDir;

/// A blocking client for the control API.
#[derive(Debug)]
pub struct ApiClient {
    base: String,
    token: String,
    agent: ureq::Agent,
    data_dir: DataDir,
}

impl ApiClient {
    /// Finds the node running with `data_dir`, or says how to start one.
    pub fn connect(data_dir: &DataDir) -> anyhow::Result<Self> {
        let not_running = || {
            format!(
                "no peergrid node is running with data dir {} (start one with: peergrid node --data-dir {})",
                data_dir.root().display(),
                data_dir.root().display()
            )
        };
        let info: ApiInfo = match std::fs::read(data_dir.api_info()) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is corrupt", data_dir.api_info().display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(not_running()),
            Err(e) => return Err(e).context(format!("reading {}", data_dir.api_info().display())),
        };
        let token = std::fs::read_to_string(data_dir.api_token())
            .with_context(|| format!("reading the API token {}", data_dir.api_token().display()))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Ok(Self {
            base: format!("http://{}", info.addr),
            token: token.trim().to_string(),
            agent,
            data_dir: data_dir.clone(),
        })
    }

    /// GETs a JSON resource.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let response = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call();
        match response {
            Ok(mut r) => r
                .body_mut()
                .read_json()
                .with_context(|| format!("reading the node's answer to {path}")),
            Err(ureq::Error::StatusCode(401)) => bail!(
                "the node refused the API token in {} (was the data dir copied from another node?)",
                self.data_dir.api_token().display()
            ),
            Err(ureq::Error::StatusCode(code)) => {
                bail!("the node answered {path} with HTTP {code}")
            }
            Err(ureq::Error::Io(_)) | Err(ureq::Error::ConnectionFailed) => bail!(
                "no peergrid node is answering for data dir {} (it may have stopped; start one with: peergrid node --data-dir {})",
                self.data_dir.root().display(),
                self.data_dir.root().display()
            ),
            Err(e) => Err(e).with_context(|| format!("asking the node for {path}")),
        }
    }
}
