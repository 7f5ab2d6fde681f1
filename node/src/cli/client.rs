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
            .timeout_global(Some(Duration::from_secs(300)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self {
            base: format!("http://{}", info.addr),
            token: token.trim().to_string(),
            agent,
            data_dir: data_dir.clone(),
        })
    }

    /// Sends an authorised GET.
    fn get_response(&self, path: &str) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
        self.call(
            path,
            self.agent
                .get(self.url(path))
                .header("Authorization", self.auth())
                .call(),
        )
    }

    /// GETs a JSON resource.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let mut r = self.get_response(path)?;
        r.body_mut()
            .read_json()
            .with_context(|| format!("reading the node's answer to {path}"))
    }

    /// GETs raw bytes.
    pub fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let mut r = self.get_response(path)?;
        r.body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .with_context(|| format!("reading {path}"))
    }

    /// POSTs JSON, expects JSON back.
    pub fn post_json<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send_json(path, self.agent.post(self.url(path)), body)
    }

    /// PUTs JSON, expects JSON back.
    pub fn put_json<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send_json(path, self.agent.put(self.url(path)), body)
    }

    /// Sends `body` as JSON with the token on `request`, expects JSON back.
    fn send_json<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        request: ureq::RequestBuilder<ureq::typestate::WithBody>,
        body: &B,
    ) -> anyhow::Result<T> {
        let mut r = self.call(
            path,
            request.header("Authorization", self.auth()).send_json(body),
        )?;
        r.body_mut()
            .read_json()
            .with_context(|| format!("reading the node's answer to {path}"))
    }

    /// POSTs raw bytes, expects JSON back.
    pub fn post_bytes<T: DeserializeOwned>(&self, path: &str, body: &[u8]) -> anyhow::Result<T> {
        let mut r = self.call(
            path,
            self.agent
                .post(self.url(path))
                .header("Authorization", self.auth())
                .header("Content-Type", "application/octet-stream")
                .send(body),
        )?;
        r.body_mut()
            .read_json()
            .with_context(|| format!("reading the node's answer to {path}"))
    }

    /// Follows a server-sent event stream, calling `on_event` with each event's data
    /// until it returns `false` or the stream ends.
    pub fn follow(&self, path: &str, mut on_event: impl FnMut(&str) -> bool) -> anyhow::Result<()> {
        use std::io::BufRead;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(None)
            .http_status_as_error(false)
            .build()
            .into();
        let r = self.call(
            path,
            agent
                .get(self.url(path))
                .header("Authorization", self.auth())
                .call(),
        )?;
        let reader = std::io::BufReader::new(r.into_body().into_reader());
        for line in reader.lines() {
            let line = line.context("reading the progress stream")?;
            if let Some(data) = line.strip_prefix("data:")
                && !on_event(data.trim())
            {
                break;
            }
        }
        Ok(())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// Turns a transport result into a response or an error a user can act on.
    fn call(
        &self,
        path: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
        match response {
            Ok(mut r) if !r.status().is_success() => {
                let code = r.status().as_u16();
                let message = r
                    .body_mut()
                    .read_json::<serde_json::Value>()
                    .ok()
                    .and_then(|v| v["error"].as_str().map(String::from))
                    .unwrap_or_else(|| format!("HTTP {code}"));
                if code == 401 {
                    bail!(
                        "the node refused the API token in {} (was the data dir copied from another node?)",
                        self.data_dir.api_token().display()
                    )
                }
                bail!("{message}")
            }
            Ok(r) => Ok(r),
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
