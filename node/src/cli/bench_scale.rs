//! `peergrid bench scale`: what an idle node costs as the grid grows, measured on
//! separate `peergrid node` processes on loopback, and simulated for thousands of
//! peers (`--simulate`).
//!
//! For each N it starts N worker processes (this binary, each in a loopback /24 of
//! its own, 127.a.b.1, started `--stagger` apart, each bootstrapped from up to two
//! started before it), then a submitter inside this
//! process, and measures: how long the submitter takes to see `--enough` candidates;
//! after the grid settles, each worker's CPU time (from `/proc/PID/stat`) and
//! capacity-protocol and other application bytes (from its `/metrics`) over the
//! window, and its resident memory; then a 400-chunk job's time to done and whether
//! its result is the one a local run gives. Every process is killed when the run
//! ends, however it ends.

use std::path::PathBuf;
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::config::{DataDir, NodeOptions, next_loopback_ip};
use crate::net::scale_sim::{SimConfig, SimReport, simulate};
use crate::settings::Resolve;

/// Options of `bench scale`.
#[derive(Debug, clap::Args)]
pub struct ScaleBench {
    /// Worker processes in each run, e.g. 10,40,100. [default: 10,40,100]
    #[arg(long, value_name = "N", value_delimiter = ',')]
    pub processes: Vec<usize>,
    /// How long idle use is measured.
    /// CPU time is counted in the kernel's 10 ms ticks: an idle node's 0.1 % of a
    /// core is 6 ticks a minute, so a short window cannot tell 0.07 from 0.17.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::config::parse_duration)]
    pub window: Duration,
    /// How long the grid settles before the window.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = crate::config::parse_duration)]
    pub settle: Duration,
    /// Candidates the submitter must see (at most N): ten times the two replicas
    /// a chunk needs by default.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub enough: usize,
    /// Time between two worker starts: a grid grows node by node, and each node
    /// bootstraps from up to two of those already up (chosen at random), as
    /// volunteers given a list of known peers do. 100 first starts in the same
    /// second (each measuring its fuel speed) on a 2-core machine is no grid anyone
    /// runs.
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = crate::config::parse_duration)]
    pub stagger: Duration,
    /// Skip the 400-chunk job.
    #[arg(long)]
    pub no_job: bool,
    /// The peergrid binary to start (default: this one; use a release build).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Simulate these grid sizes instead (the discrete-event model), e.g.
    /// 1000,2000,5000,10000.
    #[arg(long, value_name = "PEERS", value_delimiter = ',')]
    pub simulate: Vec<usize>,
    /// Seed of the simulation.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print JSON: one object per run.
    #[arg(long)]
    pub json: bool,
}

/// One process run's figures.
#[derive(Debug, Serialize)]
struct ProcessRun {
    processes: usize,
    /// Seconds from the submitter's start until it saw `enough` candidates.
    candidates_s: f64,
    enough: usize,
    /// Per-node idle CPU, percent of one core: min, median, max.
    idle_cpu_pct: [f64; 3],
    /// Per-node application bytes per second (in + out, peergrid's own protocols
    /// from /metrics): min, median, max.
    idle_bytes_per_s: [f64; 3],
    /// Per-node bytes read and written per second by any means (sockets, files;
    /// `/proc/PID/io` rchar + wchar): an upper bound on all network bytes,
    /// libp2p's own (ping, identify, Kademlia, Noise, Yamux) included.
    idle_io_bytes_per_s: [f64; 3],
    /// Per-node resident memory, MB: min, median, max.
    rss_mb: [f64; 3],
    /// Of which anonymous (heap, stacks) and file-backed (the binary's pages
    /// touched, shared with the other nodes): min, median, max.
    rss_anon_mb: [f64; 3],
    rss_file_mb: [f64; 3],
    /// Per-node peak resident memory since start (`VmHWM`), MB: min, median, max.
    rss_peak_mb: [f64; 3],
    /// Per-node connected peers at the end of the window: min, median, max.
    connections: [f64; 3],
    /// Of which kept open when idle (subscriptions either way, recent work).
    kept: [f64; 3],
    /// Per-node peers subscribed to its advert: min, median, max.
    subscribers: [f64; 3],
    /// The machine's load average (1 min) at the start and end of the window.
    load: [f64; 2],
    /// The 400-chunk job: seconds to done, and whether the result is right.
    job_s: Option<f64>,
    job_right: Option<bool>,
}

/// The worker processes; killed when dropped.
struct Procs {
    children: Vec<Child>,
    metrics: Vec<u16>,
    listen: Vec<(std::net::Ipv4Addr, u16)>,
    _dir: tempfile::TempDir,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

fn free_port(ip: std::net::Ipv4Addr) -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind((ip, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// CPU ticks (utime + stime) of a process.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    crate::worker::politeness::cpu::parse_process_ticks(&stat)
}

/// A field of `/proc/PID/status` given in kB (`VmRSS`, `RssAnon`, `RssFile`), in MB.
fn status_mb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Bytes read and written by a process by any means (`rchar` + `wchar`).
fn io_bytes(pid: u32) -> Option<f64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |name: &str| -> Option<f64> {
        io.lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .parse()
            .ok()
    };
    Some(field("rchar:")? + field("wchar:")?)
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A node's /metrics, as text.
fn scrape(port: u16) -> Option<String> {
    ureq::get(format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()
}

/// The sum of the samples of every series whose line starts with `prefix`.
fn metric_sum(body: &str, prefix: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Application bytes (every protocol, both directions) from a node's /metrics.
fn metric_bytes(port: u16) -> Option<f64> {
    Some(metric_sum(
        &scrape(port)?,
        "peergrid_net_message_bytes_total{",
    ))
}

/// Connected peers, those kept open, and subscribers, from a node's /metrics.
fn metric_connections(port: u16) -> Option<(f64, f64, f64)> {
    let body = scrape(port)?;
    Some((
        metric_sum(&body, "peergrid_net_connected_peers "),
        metric_sum(&body, "peergrid_net_kept_peers "),
        metric_sum(&body, "peergrid_net_subscribers "),
    ))
}

/// A process's anonymous memory by kind of mapping (heap, stacks and other
/// anonymous maps, the binary's relocated data), from `/proc/PID/smaps`, and its
/// thread count: where the memory of the node that holds the most goes.
fn anon_by_mapping(pid: u32) -> String {
    let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return String::new();
    };
    let mut kinds: std::collections::BTreeMap<String, u64> = Default::default();
    let mut kind = String::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some(w)
                if w.contains('-') && w.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) =>
            {
                let name = words.nth(4).unwrap_or("[anon]");
                kind = if name.starts_with('/') {
                    "binary and libraries".into()
                } else {
                    name.to_string()
                };
            }
            Some("Anonymous:") => {
                let kb: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                *kinds.entry(kind.clone()).or_default() += kb;
            }
            _ => {}
        }
    }
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    let parts: Vec<String> = kinds
        .iter()
        .filter(|(_, kb)| **kb >= 64)
        .map(|(k, kb)| format!("{k} {:.1} MB", *kb as f64 / 1024.0))
        .collect();
    format!("anonymous: {}; {threads} threads", parts.join(", "))
}

fn spread(mut v: Vec<f64>) -> [f64; 3] {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return [f64::NAN; 3];
    }
    v.sort_by(f64::total_cmp);
    [v[0], v[v.len() / 2], v[v.len() - 1]]
}

const JOB: &str = "mandelbrot";
const JOB_PARAMS: &str = r#"{"width": 64, "height": 400, "max_iter": 200, "rows_per_chunk": 1}"#;

impl ScaleBench {
    pub(super) fn execute(self) -> anyhow::Result<ExitCode> {
        if !self.simulate.is_empty() {
            return self.execute_simulation();
        }
        let counts = if self.processes.is_empty() {
            vec![10, 40, 100]
        } else {
            self.processes.clone()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let mut runs = Vec::new();
        for n in counts {
            let run = runtime.block_on(self.run(n))?;
            if self.json {
                println!("{}", serde_json::to_string(&run)?);
            } else {
                print_run(&run);
            }
            runs.push(run);
        }
        Ok(ExitCode::SUCCESS)
    }

    fn execute_simulation(&self) -> anyhow::Result<ExitCode> {
        if !self.json {
            println!(
                "{:>7} {:>12} {:>10} {:>10} {:>12} {:>10} {:>9} {:>9} {:>9} {:>9}",
                "peers",
                "idle msg/s",
                "(max)",
                "idle B/s",
                "load msg/s",
                "load B/s",
                "lookup",
                "warm s",
                "cold s",
                "(max)"
            );
        }
        for &peers in &self.simulate {
            let r: SimReport = simulate(SimConfig::new(peers, self.seed));
            if self.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{:>7} {:>12.2} {:>10.2} {:>10.0} {:>12.2} {:>10.0} {:>9} {:>9.2} {:>9.2} {:>9.2}",
                    r.peers,
                    r.idle_msgs_per_s,
                    r.idle_msgs_per_s_max,
                    r.idle_bytes_per_s,
                    r.load_msgs_per_s,
                    r.load_bytes_per_s,
                    format!("{:.0}/{:.2}s", r.lookup_msgs, r.lookup_s),
                    r.warm_start_s,
                    r.cold_start_s,
                    r.cold_start_s_max
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    fn start_workers(&self, n: usize) -> anyhow::Result<(Procs, String)> {
        let binary = match &self.binary {
            Some(b) => b.clone(),
            None => std::env::current_exe().context("finding this binary")?,
        };
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let mut procs = Procs {
            children: Vec::new(),
            metrics: Vec::new(),
            listen: Vec::new(),
            _dir: dir,
        };
        let mut bootstrap = String::new();
        let mut rng = StdRng::seed_from_u64(self.seed);
        for i in 0..n {
            let ip = next_loopback_ip();
            let port = free_port(ip)?;
            let metrics = free_port(std::net::Ipv4Addr::LOCALHOST)?;
            let listen = format!("/ip4/{ip}/tcp/{port}");
            let data = procs._dir.path().join(format!("node{i}"));
            let mut cmd = std::process::Command::new(&binary);
            cmd.arg("--data-dir")
                .arg(&data)
                .args([
                    "node",
                    "--listen",
                    &listen,
                    "--no-mdns",
                    "--no-upnp",
                    "--api",
                    "off",
                ])
                .args(["--metrics", &format!("127.0.0.1:{metrics}")])
                .args(["--cpus", "1"])
                // Discovery is measured, not politeness: on a machine shared with
                // builds, a volunteer lends nothing while other programs keep the
                // cores busy (advertising 0 slots, so no candidate), which made the
                // time to candidates depend on the others' load (32 s at load 8).
                .arg("--lend-when-busy")
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // Up to two of the nodes already up (the first is every node's when
            // it is the only one).
            for _ in 0..i.min(2) {
                let (ip, port) = procs.listen[rng.random_range(0..i)];
                cmd.args(["--bootstrap", &format!("/ip4/{ip}/tcp/{port}")]);
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            procs.children.push(child);
            procs.metrics.push(metrics);
            procs.listen.push((ip, port));
            if i == 0 {
                bootstrap = listen;
                // The others dial it: wait until it listens.
                let started = Instant::now();
                while std::net::TcpStream::connect((ip, port)).is_err() {
                    if started.elapsed() > Duration::from_secs(30) {
                        bail!("the first node did not listen within 30 s");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            std::thread::sleep(self.stagger);
        }
        // Every worker is up (listening, and its fuel speed measured: a first start
        // measures it in a child process before the first advert) before the
        // submitter starts, so the time to candidates is discovery's, not the
        // workers' start-up on a busy machine.
        let started = Instant::now();
        for (i, &(ip, port)) in procs.listen.iter().enumerate() {
            let speed =
                DataDir::resolve(Some(procs._dir.path().join(format!("node{i}")))).fuel_speed();
            while std::net::TcpStream::connect((ip, port)).is_err() || !speed.exists() {
                if started.elapsed() > Duration::from_secs(180) {
                    bail!("a worker did not listen and measure its speed within 180 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok((procs, bootstrap))
    }

    async fn run(&self, n: usize) -> anyhow::Result<ProcessRun> {
        let (procs, bootstrap) = self.start_workers(n)?;
        // The submitter, in this process: lends nothing, default advert timing.
        let dir = tempfile::tempdir().context("creating a temporary data dir")?;
        let config = NodeOptions {
            advert_interval: None,
            advert_ttl: None,
            ..NodeOptions::loopback(vec![bootstrap], 0)
        }
        .resolve(DataDir::resolve(Some(dir.path().to_path_buf())))?;
        let started = Instant::now();
        let submitter = crate::Node::spawn(config).await?;
        let enough = self.enough.min(n);
        let candidates_s = loop {
            // Asking for peers is demand, as the scheduler's asking is.
            let seen = submitter
                .net()
                .peers()
                .await
                .iter()
                .filter(|p| p.advert.as_ref().is_some_and(|a| a.slots_total > 0))
                .count();
            if seen >= enough {
                break started.elapsed().as_secs_f64();
            }
            if started.elapsed() > Duration::from_secs(120) {
                submitter.shutdown().await;
                bail!("the submitter saw {seen} of {enough} candidates in 120 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        tokio::time::sleep(self.settle).await;
        // The idle window.
        let pids: Vec<u32> = procs.children.iter().map(Child::id).collect();
        let load0 = load_average();
        let t0: Vec<Option<u64>> = pids.iter().map(|p| cpu_ticks(*p)).collect();
        let b0: Vec<Option<f64>> = procs.metrics.iter().map(|p| metric_bytes(*p)).collect();
        let io0: Vec<Option<f64>> = pids.iter().map(|p| io_bytes(*p)).collect();
        let w0 = Instant::now();
        tokio::time::sleep(self.window).await;
        let wall = w0.elapsed().as_secs_f64();
        let t1: Vec<Option<u64>> = pids.iter().map(|p| cpu_ticks(*p)).collect();
        let b1: Vec<Option<f64>> = procs.metrics.iter().map(|p| metric_bytes(*p)).collect();
        let io1: Vec<Option<f64>> = pids.iter().map(|p| io_bytes(*p)).collect();
        let load1 = load_average();
        let ticks_per_s = 100.0; // USER_HZ on Linux
        let cpu: Vec<f64> = t0
            .iter()
            .zip(&t1)
            .map(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => (b - a) as f64 / ticks_per_s / wall * 100.0,
                _ => f64::NAN,
            })
            .collect();
        let rate = |before: &[Option<f64>], after: &[Option<f64>]| -> Vec<f64> {
            before
                .iter()
                .zip(after)
                .map(|(a, b)| match (a, b) {
                    (Some(a), Some(b)) => (b - a) / wall,
                    _ => f64::NAN,
                })
                .collect()
        };
        let bytes = rate(&b0, &b1);
        let io = rate(&io0, &io1);
        let rss_of = |field: &str| -> Vec<f64> {
            pids.iter()
                .map(|p| status_mb(*p, field).unwrap_or(f64::NAN))
                .collect()
        };
        let (rss, rss_anon, rss_file) = (rss_of("VmRSS"), rss_of("RssAnon"), rss_of("RssFile"));
        let rss_peak = rss_of("VmHWM");
        let scraped: Vec<(f64, f64, f64)> = procs
            .metrics
            .iter()
            .map(|p| metric_connections(*p).unwrap_or((f64::NAN, f64::NAN, f64::NAN)))
            .collect();
        for (i, (c, _, _)) in scraped.iter().enumerate() {
            if *c == 0.0 {
                eprintln!("worker {i} is connected to nobody at the end of the window");
            }
        }
        if let Some((i, (c, k, s))) = scraped
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.0.total_cmp(&b.1.0))
        {
            eprintln!(
                "worker {i} (started {i}th) has the most connections: {c} ({k} kept, {s} subscribers), RSS {:.1} MB",
                rss.get(i).copied().unwrap_or(f64::NAN)
            );
        }
        if let Some((i, r)) = rss.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)) {
            eprintln!(
                "worker {i} has the most memory: RSS {r:.1} MB (anon {:.1}, peak {:.1}), {} connections; {}",
                rss_anon.get(i).copied().unwrap_or(f64::NAN),
                rss_peak.get(i).copied().unwrap_or(f64::NAN),
                scraped.get(i).map_or(f64::NAN, |x| x.0),
                pids.get(i)
                    .map_or_else(String::new, |p| anon_by_mapping(*p))
            );
        }
        let connections: Vec<f64> = scraped.iter().map(|x| x.0).collect();
        let kept: Vec<f64> = scraped.iter().map(|x| x.1).collect();
        let subscribers: Vec<f64> = scraped.iter().map(|x| x.2).collect();
        let (job_s, job_right) = if self.no_job {
            (None, None)
        } else {
            match run_job(&submitter).await {
                Ok((s, right)) => (Some(s), Some(right)),
                Err(e) => {
                    eprintln!("the job failed: {e:#}");
                    (None, Some(false))
                }
            }
        };
        submitter.shutdown().await;
        drop(procs);
        Ok(ProcessRun {
            processes: n,
            candidates_s,
            enough,
            idle_cpu_pct: spread(cpu),
            idle_bytes_per_s: spread(bytes),
            idle_io_bytes_per_s: spread(io),
            rss_mb: spread(rss),
            rss_anon_mb: spread(rss_anon),
            rss_file_mb: spread(rss_file),
            rss_peak_mb: spread(rss_peak),
            connections: spread(connections),
            kept: spread(kept),
            subscribers: spread(subscribers),
            load: [load0, load1],
            job_s,
            job_right,
        })
    }
}

/// Runs the 400-chunk job from the submitter; (seconds to done, result right).
async fn run_job(submitter: &crate::Node) -> anyhow::Result<(f64, bool)> {
    use crate::scheduler::{JobSpec, JobState, SubmitRequest, WaitError};
    let wasm = peergrid_jobs::find(JOB).context("built-in job")?.wasm;
    let state = submitter.state();
    let module = state.blobs().put(wasm)?;
    let started = Instant::now();
    let id = state
        .scheduler()
        .submit(SubmitRequest {
            name: JOB.into(),
            module: module.to_hex(),
            params: Some(serde_json::from_str(JOB_PARAMS)?),
            inputs: None,
            spec: Some(JobSpec::default()),
        })
        .await?;
    let status = match state
        .scheduler()
        .wait_final(id, Duration::from_secs(600))
        .await
    {
        Ok(status) => status,
        Err(WaitError::TimedOut(_)) => bail!("the job was not done in 600 s"),
        Err(e) => bail!("{e}"),
    };
    let took = started.elapsed().as_secs_f64();
    if status.state != JobState::Done {
        bail!("the job ended {:?}: {:?}", status.state, status.error);
    }
    let hash = status
        .result
        .as_deref()
        .and_then(crate::net::protocol::BlobHash::from_hex)
        .context("a done job has a result")?;
    let got = state.blobs().get(&hash)?.context("the result blob")?;
    let sandbox = crate::sandbox::Sandbox::new(Default::default())?;
    let module = sandbox.load(wasm)?;
    let local = crate::local::run_job(
        &sandbox,
        &module,
        JOB_PARAMS.as_bytes(),
        &crate::local::LocalOptions::default(),
        &|_| {},
        &|| {},
    )?;
    let want = local.result().context("the local run has a result")?;
    Ok((took, got[..] == want[..]))
}

fn print_run(r: &ProcessRun) {
    let f = |v: [f64; 3], p: usize| format!("{:.p$}/{:.p$}/{:.p$}", v[0], v[1], v[2]);
    println!(
        "{:>4} nodes: {} candidates in {:.1} s | idle CPU % of a core (min/median/max) {} | app bytes/s {} | all I/O bytes/s {} | RSS MB {} (anon {}, file {}; peak {}) | connections {} (kept {}; subscribers {}) | load {:.1}→{:.1} | job {}",
        r.processes,
        r.enough,
        r.candidates_s,
        f(r.idle_cpu_pct, 2),
        f(r.idle_bytes_per_s, 0),
        f(r.idle_io_bytes_per_s, 0),
        f(r.rss_mb, 1),
        f(r.rss_anon_mb, 1),
        f(r.rss_file_mb, 1),
        f(r.rss_peak_mb, 1),
        f(r.connections, 0),
        f(r.kept, 0),
        f(r.subscribers, 0),
        r.load[0],
        r.load[1],
        match (r.job_s, r.job_right) {
            (Some(s), Some(true)) => format!("400 chunks done in {s:.1} s, right"),
            (Some(s), _) => format!("400 chunks done in {s:.1} s, WRONG"),
            (None, None) => "skipped".into(),
            (None, Some(_)) => "failed".into(),
        }
    );
}
