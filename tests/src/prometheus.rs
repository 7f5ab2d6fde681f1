//! A real Prometheus server (and `promtool`) for tests.
//!
//! `.ci/run` installs Debian's `prometheus` package, which brings both programs, and
//! runs the tests that need them, which are `#[ignore]`d so that a plain `cargo test`
//! reports them as not run rather than passing them. Such a test asks
//! [`require_tools`] for them and fails, naming the install command, when they are
//! missing. [`Prometheus::start`]
//! runs the server on a free loopback port with its storage in a temporary directory
//! and kills it when dropped; [`PromClient`] asks its HTTP API (blocking: call it
//! from `spawn_blocking` in async tests).

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where the programs are.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The server.
    pub prometheus: PathBuf,
    /// Its checking tool.
    pub promtool: PathBuf,
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Finds `prometheus` and `promtool` on the `PATH` (or in `/usr/bin`).
pub fn find_tools() -> Option<Tools> {
    Some(Tools {
        prometheus: find_program("prometheus")?,
        promtool: find_program("promtool")?,
    })
}

/// The tools. Panics, naming the install command, when they are missing: a test
/// that needs them is `#[ignore]`d and run by `.ci/run`, which installs them, so it
/// never passes without running.
pub fn require_tools(test: &str) -> Tools {
    find_tools().unwrap_or_else(|| {
        panic!(
            "{test}: prometheus and promtool are not installed: run `apt-get install prometheus` \
             (Debian) or `bash .ci/run`"
        )
    })
}

/// Runs `promtool` with `args`, feeding it `stdin` when given.
pub fn promtool(tools: &Tools, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(&tools.promtool)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    if let (Some(bytes), Some(mut input)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        input.write_all(bytes).expect("feed promtool");
    }
    child.wait_with_output().expect("promtool runs")
}

/// Panics with promtool's output unless it succeeded.
pub fn assert_promtool_ok(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "promtool {what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Makes a Prometheus configuration from an example one (`dashboards/prometheus.yml`):
/// the scrape and evaluation intervals become `interval` and the one `targets:` line
/// lists `targets`. Everything else is kept, so the test runs the shipped file.
pub fn config_from_example(example: &str, targets: &[SocketAddr], interval: &str) -> String {
    let list = targets
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut replaced = (0, 0);
    let lines: Vec<String> = example
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            let indent = &line[..line.len() - trimmed.len()];
            if let Some((key, _)) = trimmed
                .split_once(':')
                .filter(|(k, _)| *k == "scrape_interval" || *k == "evaluation_interval")
            {
                replaced.0 += 1;
                format!("{indent}{key}: {interval}")
            } else if trimmed.starts_with("- targets:") {
                replaced.1 += 1;
                format!("{indent}- targets: [{list}]")
            } else {
                line.to_string()
            }
        })
        .collect();
    assert_eq!(
        replaced,
        (2, 1),
        "the example config has two interval lines and one `- targets:` line"
    );
    lines.join("\n") + "\n"
}

/// A free TCP port on 127.0.0.1 (free when this returns).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A running Prometheus server, killed on drop.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    client: PromClient,
}

impl Prometheus {
    /// Writes `config` (as `prometheus.yml`) and `files` (e.g. rule files it names)
    /// into a temporary directory and starts the server on a free loopback port,
    /// waiting until it is ready.
    pub fn start(tools: &Tools, config: &str, files: &[(&str, &str)]) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write the config");
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents).expect("write a config file");
        }
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(&tools.prometheus)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let prometheus = Prometheus {
            child,
            dir,
            client: PromClient {
                base: format!("http://{addr}"),
            },
        };
        prometheus.wait_ready(Duration::from_secs(60));
        prometheus
    }

    fn wait_ready(&self, timeout: Duration) {
        let started = Instant::now();
        loop {
            if self.client.get("/-/ready").is_ok() {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "prometheus was not ready after {timeout:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A client for its HTTP API.
    pub fn client(&self) -> PromClient {
        self.client.clone()
    }

    /// Its directory (config, rule files, log, storage).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One series of an instant query's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value (may be NaN, e.g. a quantile of nothing).
    pub value: f64,
}

/// A client for Prometheus's HTTP API. Blocking.
#[derive(Debug, Clone)]
pub struct PromClient {
    base: String,
}

impl PromClient {
    fn get(&self, path: &str) -> Result<Value, String> {
        self.get_with(path, &[])
    }

    fn get_with(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let mut request = ureq::get(format!("{}{path}", self.base))
            .config()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build();
        for (k, v) in params {
            request = request.query(*k, *v);
        }
        let mut response = request.call().map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {body}"));
        }
        Ok(serde_json::from_str(&body).unwrap_or(Value::String(body)))
    }

    fn data(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let answer = self.get_with(path, params)?;
        if answer["status"] != "success" {
            return Err(format!("prometheus answered {answer}"));
        }
        Ok(answer["data"].clone())
    }

    /// Evaluates `expr` now (`/api/v1/query`).
    pub fn query(&self, expr: &str) -> Result<Vec<Sample>, String> {
        let data = self.data("/api/v1/query", &[("query", expr)])?;
        let samples = match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|s| Sample {
                    labels: s["metric"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    value: parse_value(&s["value"][1]),
                })
                .collect(),
            Some("scalar") => vec![Sample {
                labels: BTreeMap::new(),
                value: parse_value(&data["result"][1]),
            }],
            other => return Err(format!("unexpected result type {other:?} for {expr}")),
        };
        Ok(samples)
    }

    /// Values of `label` on series matching `matcher` (`/api/v1/label/…/values`).
    pub fn label_values(&self, label: &str, matcher: &str) -> Result<Vec<String>, String> {
        let data = self.data(
            &format!("/api/v1/label/{label}/values"),
            &[("match[]", matcher)],
        )?;
        Ok(data
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect())
    }

    /// The loaded rule groups (`/api/v1/rules`).
    pub fn rules(&self) -> Result<Value, String> {
        self.data("/api/v1/rules", &[])
    }
}

fn parse_value(v: &Value) -> f64 {
    v.as_str()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}
