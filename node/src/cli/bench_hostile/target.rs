//! The two sides `bench hostile` measures: the *target* (a real `peergrid node`
//! process of this binary, with its own data dir, on a loopback address of its own,
//! lending one slot, API and `/metrics` on), and the *honest grid* beside it (a
//! submitter and a worker in this process) with the honest job they run through it.
//!
//! The target is measured from outside, as an operator would: its peak resident
//! memory from `/proc/PID/status`, its data dir's size, its `/metrics` and its log.
//! It is killed when dropped, however the bench ends.

use std::collections::HashSet;
use std::io::BufRead;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use libp2p::{Multiaddr, PeerId};

use crate::Node;
use crate::config::{DataDir, NodeOptions, next_loopback_ip};
use crate::net::protocol::{BlobHash, JobId};
use crate::scheduler::{JobSpec, JobState, Replication, SubmitRequest, WaitError};
use crate::settings::Resolve;

/// The honest job: an example, its params, and what a local run answers.
#[derive(Debug, Clone)]
pub(super) struct HonestJob {
    pub(super) name: &'static str,
    pub(super) params: &'static str,
    pub(super) wasm: &'static [u8],
    /// The merged result a local run gives.
    pub(super) expected: Vec<u8>,
}

impl HonestJob {
    /// Primes with a few chunks; the answer is computed here first.
    pub(super) fn primes(quick: bool) -> anyhow::Result<Self> {
        let params = if quick {
            r#"{"limit": 400000, "chunks": 4}"#
        } else {
            // A few seconds of one core per worker (release build, idle machine):
            // long enough that the ratio is not noise (a fixed second of an attack's
            // cost is not a 2x slowdown), short enough on a loaded machine. Chunks
            // of the size they had when the whole job took 1 s with the scheduler
            // of the time (it takes 1.3 s now).
            r#"{"limit": 3000000000, "chunks": 18}"#
        };
        let wasm = peergrid_jobs::find("primes")
            .context("the primes example")?
            .wasm;
        let sandbox = crate::sandbox::Sandbox::new(Default::default())?;
        let module = sandbox.load(wasm)?;
        let local = crate::local::run_job(
            &sandbox,
            &module,
            params.as_bytes(),
            &crate::local::LocalOptions::default(),
            &|_| {},
            &|| {},
        )?;
        let expected = local
            .result()
            .context("the local run has a result")?
            .to_vec();
        Ok(Self {
            name: "primes",
            params,
            wasm,
            expected,
        })
    }

    /// The module's hash.
    pub(super) fn module(&self) -> BlobHash {
        BlobHash::of(self.wasm)
    }
}

/// How the honest job went.
#[derive(Debug, Clone)]
pub(super) struct JobRun {
    /// Done, with the answer a local run gives.
    pub(super) done: bool,
    /// Seconds from submit to done (or to giving up).
    pub(super) secs: f64,
    /// Why it is not done.
    pub(super) error: Option<String>,
}

/// A submitter (lends nothing) and a worker (one slot) in this process, fresh for
/// every round.
#[derive(Debug)]
pub(super) struct HonestGrid {
    pub(super) submitter: Node,
    pub(super) worker: Node,
    _dirs: [tempfile::TempDir; 2],
}

impl HonestGrid {
    pub(super) async fn start() -> anyhow::Result<Self> {
        let spawn = |bootstrap: Vec<String>, cpus: u32| async move {
            let dir = tempfile::tempdir().context("creating a temporary data dir")?;
            // Default advert timing, as the target has (a 60 s refresh, 180 s to
            // expire): what a volunteer's node sees.
            let config = NodeOptions {
                advert_interval: None,
                advert_ttl: None,
                listen: vec![honest_listen_addr()?],
                ..NodeOptions::loopback(bootstrap, cpus)
            }
            .resolve(DataDir::resolve(Some(dir.path().to_path_buf())))?;
            anyhow::Ok((Node::spawn(config).await?, dir))
        };
        let (submitter, d1) = spawn(Vec::new(), 0).await?;
        let bootstrap = submitter
            .listen_addrs()
            .await
            .iter()
            .map(ToString::to_string)
            .collect();
        let (worker, d2) = spawn(bootstrap, 1).await?;
        Ok(Self {
            submitter,
            worker,
            _dirs: [d1, d2],
        })
    }

    /// Connects both honest nodes to the target and waits until the submitter holds
    /// the target's advert (the target is then a candidate for the job).
    pub(super) async fn join(&self, target: &Target, within: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        for node in [&self.submitter, &self.worker] {
            tokio::time::timeout(within, node.net().dial(target.addr.clone()))
                .await
                .map_err(|_| anyhow::anyhow!("could not connect to the target in {within:?}"))?
                .map_err(|e| anyhow::anyhow!("could not connect to the target: {e}"))?;
        }
        let id = target.peer.to_string();
        loop {
            let peers = self.submitter.net().peers().await;
            let ready =
                |p: &crate::net::PeerInfo| p.advert.as_ref().is_some_and(|a| a.slots_total > 0);
            let has_target = peers.iter().any(|p| p.peer_id == id && ready(p));
            let has_worker = peers
                .iter()
                .any(|p| p.peer_id == self.worker.peer_id().to_string() && ready(p));
            if has_target && has_worker {
                return Ok(());
            }
            if started.elapsed() > within {
                bail!(
                    "the submitter did not see the target's capacity in {within:?} (target: {has_target}, worker: {has_worker})"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Submits the honest job (fixed replication, two replicas: one is the
    /// target's, one the honest worker's) and waits for it, at most `limit`.
    /// `submitted` gets the job's id as soon as it has one.
    pub(super) async fn run_job(
        &self,
        target: PeerId,
        job: &HonestJob,
        limit: Duration,
        submitted: &tokio::sync::watch::Sender<Option<JobId>>,
    ) -> JobRun {
        let started = Instant::now();
        let result = self
            .try_run_job(target, job, limit, submitted, started)
            .await;
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(()) => JobRun {
                done: true,
                secs,
                error: None,
            },
            Err(e) => JobRun {
                done: false,
                secs,
                error: Some(format!("{e:#}")),
            },
        }
    }

    async fn try_run_job(
        &self,
        target: PeerId,
        job: &HonestJob,
        limit: Duration,
        submitted: &tokio::sync::watch::Sender<Option<JobId>>,
        started: Instant,
    ) -> anyhow::Result<()> {
        let state = self.submitter.state();
        let module = state.blobs().put(job.wasm)?;
        let id = state
            .scheduler()
            .submit(SubmitRequest {
                name: job.name.into(),
                module: module.to_hex(),
                params: Some(serde_json::from_str(job.params)?),
                inputs: None,
                spec: Some(JobSpec {
                    replication: Replication::Fixed,
                    // Longer than any round: a timed-out replica keeps its peer
                    // counted, and with two workers the chunk would have nowhere
                    // left to go (a loaded machine queues chunks for long).
                    soft_timeout: Duration::from_secs(600),
                    ..JobSpec::default()
                }),
            })
            .await?;
        let _ = submitted.send(Some(id));
        let status = match state
            .scheduler()
            .wait_final(id, limit.saturating_sub(started.elapsed()))
            .await
        {
            Ok(status) => status,
            Err(WaitError::TimedOut(status)) => {
                let _ = state.scheduler().cancel(id).await;
                let target = target.to_string();
                let who = |p: &str| if p == target { "target" } else { "worker" };
                let peers: Vec<String> = status
                    .peers
                    .iter()
                    .map(|p| {
                        format!(
                            "{}: {} agreed, {} disagreed, {} in flight{}",
                            who(&p.peer),
                            p.agreed,
                            p.disagreed,
                            p.in_flight,
                            if p.excluded { ", EXCLUDED" } else { "" }
                        )
                    })
                    .collect();
                bail!(
                    "not done in {limit:.0?} ({} of {} chunks verified, {} replicas issued, {} results, {} reissued; {}{})",
                    status.chunks_verified,
                    status.chunks_total,
                    status.replicas_issued,
                    status.results,
                    status.reissues,
                    peers.join("; "),
                    status.why.map(|w| format!("; {w}")).unwrap_or_default()
                );
            }
            Err(e) => bail!("{e}"),
        };
        if status.state != JobState::Done {
            bail!("the job ended {:?}: {:?}", status.state, status.error);
        }
        let hash = status
            .result
            .as_deref()
            .and_then(BlobHash::from_hex)
            .context("a done job has a result")?;
        let got = state.blobs().get(&hash)?.context("the result blob")?;
        if got[..] != job.expected[..] {
            bail!("done with a WRONG answer");
        }
        Ok(())
    }

    pub(super) async fn shutdown(self) {
        self.worker.shutdown().await;
        self.submitter.shutdown().await;
    }
}

/// A `peergrid node` process under attack; killed when dropped.
#[derive(Debug)]
pub(super) struct Target {
    child: Child,
    pub(super) pid: u32,
    pub(super) peer: PeerId,
    /// Its peer address, with `/p2p/`.
    pub(super) addr: Multiaddr,
    /// Its TCP address (for raw floods).
    pub(super) sock: SocketAddrV4,
    pub(super) data_dir: PathBuf,
    pub(super) log: PathBuf,
    pub(super) metrics_port: u16,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A listen address for an honest node: a loopback address of its own /24, on a
/// port free on *every* address. libp2p dials from its listening port, bound to
/// 0.0.0.0 (port reuse); a port the kernel chose as free on the node's own address
/// may be taken on another loopback address (the attacker's sockets, bound to its
/// own address, or their TIME_WAIT remains), and the honest node's dial to the
/// target then failed with "Address already in use".
fn honest_listen_addr() -> anyhow::Result<String> {
    let port = free_port(Ipv4Addr::UNSPECIFIED)?;
    Ok(format!("/ip4/{}/tcp/{port}", next_loopback_ip()))
}

fn free_port(ip: Ipv4Addr) -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind((ip, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

impl Target {
    /// Starts `binary node` in `dir` (data dir `dir/data`, log `dir/node.log`) on a
    /// loopback address of its own, and waits until it listens.
    pub(super) fn start(binary: &Path, dir: &Path) -> anyhow::Result<Self> {
        let ip = next_loopback_ip();
        // Free on every address, as the honest nodes' (`honest_listen_addr`).
        let port = free_port(Ipv4Addr::UNSPECIFIED)?;
        let metrics_port = free_port(Ipv4Addr::LOCALHOST)?;
        let api_port = free_port(Ipv4Addr::LOCALHOST)?;
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir)?;
        let log = dir.join("node.log");
        let log_file = std::fs::File::create(&log).context("creating the target's log")?;
        let mut command = std::process::Command::new(binary);
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe and touches no memory of the
            // parent's; it runs in the child between fork and exec. It makes the
            // kernel kill the target when the thread that started it (a runtime
            // worker, alive until the bench ends) dies, even if the bench is
            // killed before it can drop the target.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let mut child = command
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["node", "--listen", &format!("/ip4/{ip}/tcp/{port}")])
            .args(["--no-mdns", "--cpus", "1", "--lend-when-busy"])
            .args(["--api", &format!("127.0.0.1:{api_port}")])
            .args(["--metrics", &format!("127.0.0.1:{metrics_port}")])
            // The node's own default (what a volunteer's log shows).
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id();
        let stdout = child.stdout.take().context("the target's stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // The first line names the peer; the rest is drained so the node never
            // blocks on a full pipe.
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(id) = line.strip_prefix("peergrid node ") {
                    let _ = tx.send(id.trim().to_string());
                }
            }
        });
        let mut target = Self {
            child,
            pid,
            peer: PeerId::random(),
            addr: Multiaddr::empty(),
            sock: SocketAddrV4::new(ip, port),
            data_dir,
            log,
            metrics_port,
        };
        let id = rx
            .recv_timeout(Duration::from_secs(120))
            .context("the target did not start within 120 s (see its log)")?;
        target.peer = id.parse().context("the target's peer id")?;
        target.addr = format!("/ip4/{ip}/tcp/{port}/p2p/{id}").parse()?;
        Ok(target)
    }

    /// Whether the process still runs (`Err` with its exit status when not).
    pub(super) fn alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(status.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Peak resident memory since it started, MB.
    pub(super) fn peak_rss_mb(&self) -> Option<f64> {
        proc_status_mb(self.pid, "VmHWM:")
    }

    /// Size of its data dir, MB.
    pub(super) fn disk_mb(&self) -> f64 {
        dir_bytes(&self.data_dir) as f64 / 1e6
    }

    /// Sum of the values of `/metrics` lines whose name `pick` accepts.
    pub(super) fn metric_sum(&self, pick: impl Fn(&str) -> bool) -> Option<f64> {
        metric_sum(self.metrics_port, pick)
    }

    /// Log lines at WARN or above that name the address or one of the peer ids.
    pub(super) fn log_mentions(&self, ip: Ipv4Addr, peers: &HashSet<String>) -> usize {
        let Ok(file) = std::fs::File::open(&self.log) else {
            return 0;
        };
        let ip = ip.to_string();
        std::io::BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .filter(|l| {
                l.contains(&ip)
                    || l.split(|c: char| !c.is_ascii_alphanumeric())
                        .any(|w| peers.contains(w))
            })
            .count()
    }
}

/// Sum of the values of the `/metrics` lines (on 127.0.0.1:`port`) whose name
/// `pick` accepts; blocking, at most 10 s.
pub(super) fn metric_sum(port: u16, pick: impl Fn(&str) -> bool) -> Option<f64> {
    let body = ureq::get(format!("http://127.0.0.1:{port}/metrics"))
        .config()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    Some(
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let name = l.split(['{', ' ']).next()?;
                pick(name).then(|| l.rsplit(' ').next()?.parse::<f64>().ok())?
            })
            .sum(),
    )
}

fn proc_status_mb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Bytes of the files under `dir` (not following links).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Runs this binary with `args` (a CLI command against the target), at most
/// `limit`; returns its stdout and stderr, or why it did not finish.
pub(super) fn run_cli(
    binary: &Path,
    data_dir: &Path,
    args: &[&str],
    limit: Duration,
) -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out_path = dir.path().join("out");
    let out = std::fs::File::create(&out_path).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(binary)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`peergrid {}` did not finish in {limit:?}",
                    args.join(" ")
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(e.to_string()),
        }
    }
    std::fs::read(&out_path).map_err(|e| e.to_string())
}
