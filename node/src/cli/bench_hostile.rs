//! `peergrid bench hostile`: can hostile peers exhaust a node? (issue 15)
//!
//! For each attack it starts a fresh *target* (a `peergrid node` process of this
//! binary: its own data dir, a loopback address of its own, one slot; see
//! `bench_hostile/target.rs`), starts the attack from a hostile peer in this process
//! (a raw libp2p swarm, `bench_hostile/peer.rs`, or plain TCP sockets, on a loopback
//! address of the attacker's own), waits until the attack is under way, then has a
//! fresh honest grid (a submitter and a worker in this process, default advert
//! timing) connect to the target and
//! run the honest job through it (fixed replication, two replicas: the target's and
//! the honest worker's). It reports, per attack: whether the honest job completed
//! with the right answer, its time against the same job on a target under no attack
//! (the baseline, measured first in the same run), the target's peak RSS, its disk
//! growth beyond the baseline's, whether it banned (or refused) and logged the
//! offender, and the attack's own check where it has one (limits refused, output
//! escaped). `pass` applies issue 15's thresholds.
//!
//! Every attack has a time limit, a watchdog stops it when the target's memory
//! passes [`RSS_ABORT_MB`] (so the bench cannot take the machine down), and every
//! process is killed when the bench ends, however it ends.

mod flood;
mod modules;
mod peer;
mod submitter;
mod target;
mod transport;
mod worker;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::future::BoxFuture;
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::target::{HonestGrid, HonestJob, JobRun, Target};
use crate::config::next_loopback_ip;
use crate::net::protocol::{BlobHash, JobId};

/// The thresholds of issue 15.
const MAX_SLOWDOWN: f64 = 3.0;
const MAX_RSS_MB: f64 = 300.0;
const MAX_DISK_MB: f64 = 100.0;
/// The watchdog stops an attack when the target's memory passes this.
const RSS_ABORT_MB: f64 = 2000.0;

/// Options of `bench hostile`.
#[derive(Debug, clap::Args)]
pub struct HostileBench {
    /// Run only these attacks (repeat; default: all).
    #[arg(long, value_name = "NAME")]
    pub attack: Vec<Attack>,
    /// Small attacks and a small honest job (a smoke test; the figures are not the
    /// issue's).
    #[arg(long)]
    pub quick: bool,
    /// The peergrid binary to start as the target (default: this one; use a release
    /// build).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Keep the targets' data dirs and logs here instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Print one JSON object: {"baseline":{…},"attacks":[{"attack","honest_job_done",
    /// "slowdown","peak_rss_mb","disk_growth_mb","offender_banned",…,"pass"}]}.
    #[arg(long)]
    pub json: bool,
}

/// The attacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attack {
    /// Hundreds of identities and raw TCP connections from one address.
    ConnectionFlood,
    /// The most streams a connection allows, each trickling a byte at a time.
    SlowStreams,
    /// Streams that send nearly the largest message and stall, then oversized ones.
    BigMessages,
    /// A submitter that never acknowledges results, with large outputs.
    OutboxFill,
    /// A submitter whose results together far exceed one message.
    OversizedBatches,
    /// Offers with u64::MAX fuel, timeout and output on a module that never ends.
    GreedyLimits,
    /// Huge, deeply nested and many-function modules, and WAT text.
    ModuleBomb,
    /// Large inputs to fetch, and a stream of blob requests.
    BlobFlood,
    /// The same signed result 100 000 times.
    ResultReplay,
    /// Thousands of fresh identities, each pushing adverts.
    AdvertFlood,
    /// A stream of cancels, for the honest job and for random ones.
    CancelFlood,
    /// Escapes and 10 kB strings in an agent, an address and a trap message.
    TerminalEscape,
}

impl Attack {
    const ALL: [Attack; 12] = [
        Attack::ConnectionFlood,
        Attack::SlowStreams,
        Attack::BigMessages,
        Attack::OutboxFill,
        Attack::OversizedBatches,
        Attack::GreedyLimits,
        Attack::ModuleBomb,
        Attack::BlobFlood,
        Attack::ResultReplay,
        Attack::AdvertFlood,
        Attack::CancelFlood,
        Attack::TerminalEscape,
    ];

    fn name(self) -> &'static str {
        match self {
            Attack::ConnectionFlood => "connection-flood",
            Attack::SlowStreams => "slow-streams",
            Attack::BigMessages => "big-messages",
            Attack::OutboxFill => "outbox-fill",
            Attack::OversizedBatches => "oversized-batches",
            Attack::GreedyLimits => "greedy-limits",
            Attack::ModuleBomb => "module-bomb",
            Attack::BlobFlood => "blob-flood",
            Attack::ResultReplay => "result-replay",
            Attack::AdvertFlood => "advert-flood",
            Attack::CancelFlood => "cancel-flood",
            Attack::TerminalEscape => "terminal-escape",
        }
    }

    /// Whether the attack is unambiguous enough that the node must ban (or refuse)
    /// the offender: floods of connections from one address, messages over the
    /// limit, a result replayed by the thousand.
    fn expects_ban(self) -> bool {
        matches!(
            self,
            Attack::ConnectionFlood | Attack::BigMessages | Attack::ResultReplay
        )
    }

    fn run(self, env: Env) -> BoxFuture<'static, anyhow::Result<Findings>> {
        match self {
            Attack::ConnectionFlood => Box::pin(flood::connection_flood(env)),
            Attack::SlowStreams => Box::pin(flood::slow_streams(env)),
            Attack::BigMessages => Box::pin(flood::big_messages(env)),
            Attack::OutboxFill => Box::pin(submitter::outbox_fill(env)),
            Attack::OversizedBatches => Box::pin(submitter::oversized_batches(env)),
            Attack::GreedyLimits => Box::pin(submitter::greedy_limits(env)),
            Attack::ModuleBomb => Box::pin(submitter::module_bomb(env)),
            Attack::BlobFlood => Box::pin(submitter::blob_flood(env)),
            Attack::ResultReplay => Box::pin(worker::result_replay(env)),
            Attack::AdvertFlood => Box::pin(flood::advert_flood(env)),
            Attack::CancelFlood => Box::pin(flood::cancel_flood(env)),
            Attack::TerminalEscape => Box::pin(worker::terminal_escape(env)),
        }
    }
}

/// What an attack is given.
#[derive(Debug, Clone)]
pub(super) struct Env {
    /// The target's peer id, peer address (with `/p2p/`) and TCP address.
    target: PeerId,
    addr: Multiaddr,
    sock: SocketAddrV4,
    /// Its `/metrics` port.
    metrics_port: u16,
    /// The target's data dir (for CLI commands against it) and this binary.
    data_dir: PathBuf,
    binary: PathBuf,
    /// The attacker's own loopback address (a /24 of its own). Raw sockets are
    /// bound to it, hostile libp2p identities listen and dial from it
    /// (`transport.rs`); the honest in-process nodes' dials come from 127.0.0.1, the
    /// one loopback address the target does not count per address (see
    /// `GuardConfig::exempt_loopback`), so the attacker is a stranger to it.
    ip: Ipv4Addr,
    quick: bool,
    /// The honest job's module, and its id once submitted.
    honest_module: BlobHash,
    honest_job: watch::Receiver<Option<JobId>>,
    /// Set by the attack once it is under way; the honest job starts then.
    engaged: Arc<tokio::sync::Notify>,
    /// Fires when the honest job is over (or the watchdog stops the attack): the
    /// attack stops, makes its last checks and returns.
    stop: CancellationToken,
}

impl Env {
    /// `full` normally, `quick` under `--quick`.
    fn n<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }

    /// The target's metric `name` (summed over its labels), read off the runtime.
    async fn metric(&self, name: &'static str) -> Option<f64> {
        let port = self.metrics_port;
        tokio::task::spawn_blocking(move || target::metric_sum(port, |n| n == name))
            .await
            .ok()
            .flatten()
    }

    /// Tells the harness the attack is under way.
    fn engage(&self) {
        self.engaged.notify_one();
    }
}

/// What an attack found, beside what the harness measures.
#[derive(Debug, Default)]
pub(super) struct Findings {
    /// What it did and what the target answered, in one line.
    detail: String,
    /// The identities it used (to find them in the target's log).
    offenders: Vec<PeerId>,
    /// The attack's own check of the bound (limits refused, output escaped, results
    /// delivered), where it has one.
    bound_held: Option<bool>,
}

/// One attack's row.
#[derive(Debug, Serialize)]
struct Row {
    attack: &'static str,
    /// The attacker's loopback address (its raw sockets and libp2p dials come from
    /// it, see `Env::ip`).
    offender_ip: String,
    honest_job_done: bool,
    /// Honest job time / baseline time; `null` when it did not complete.
    slowdown: Option<f64>,
    peak_rss_mb: Option<f64>,
    disk_growth_mb: f64,
    /// The target banned (or refused connections from) the offender.
    offender_banned: bool,
    /// The target logged the offender (a warning naming its address or identity).
    offender_logged: bool,
    /// Whether a ban is required to pass.
    ban_expected: bool,
    /// The attack's own check, where it has one.
    bound_held: Option<bool>,
    /// The target still runs after the attack.
    target_alive: bool,
    job_s: f64,
    /// The honest job alone on a fresh target, measured just before this attack:
    /// what `slowdown` divides by.
    baseline_s: f64,
    bans: f64,
    penalties: f64,
    dropped_inbound: f64,
    /// What the attack did, and what went wrong.
    detail: String,
    failures: Vec<String>,
    pass: bool,
}

#[derive(Debug, Clone, Serialize)]
struct Baseline {
    job: &'static str,
    params: &'static str,
    job_s: f64,
    peak_rss_mb: Option<f64>,
    disk_mb: f64,
}

impl HostileBench {
    pub(super) fn execute(self) -> anyhow::Result<ExitCode> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let report = runtime.block_on(self.run())?;
        // Hostile peers' tasks may still hold sockets: do not wait for them.
        runtime.shutdown_timeout(Duration::from_secs(2));
        let (baseline, rows) = report;
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "baseline": baseline,
                    "thresholds": {
                        "slowdown": MAX_SLOWDOWN,
                        "peak_rss_mb": MAX_RSS_MB,
                        "disk_growth_mb": MAX_DISK_MB,
                    },
                    "attacks": rows,
                }))?
            );
        } else {
            print_table(&baseline, &rows);
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn run(&self) -> anyhow::Result<(Baseline, Vec<Row>)> {
        let binary = match &self.binary {
            Some(b) => b.clone(),
            None => std::env::current_exe().context("finding this binary")?,
        };
        let tmp = tempfile::tempdir().context("creating a temporary directory")?;
        let root = self
            .keep
            .clone()
            .unwrap_or_else(|| tmp.path().to_path_buf());
        let quick = self.quick;
        let job = tokio::task::spawn_blocking(move || HonestJob::primes(quick)).await??;
        let attacks: Vec<Attack> = if self.attack.is_empty() {
            Attack::ALL.to_vec()
        } else {
            self.attack.clone()
        };
        let ctx = Ctx {
            binary,
            root,
            quick,
            job,
        };
        ctx.all(&attacks).await
    }
}

struct Ctx {
    binary: PathBuf,
    root: PathBuf,
    quick: bool,
    job: HonestJob,
}

/// What one round (the baseline, or one attack) measured.
struct Measured {
    /// The attacker's address.
    ip: Ipv4Addr,
    job: JobRun,
    peak_rss_mb: Option<f64>,
    disk_mb: f64,
    alive: Result<(), String>,
    bans: f64,
    penalties: f64,
    dropped: f64,
    logged: usize,
    findings: Result<Findings, String>,
    notes: Vec<String>,
}

impl Ctx {
    async fn all(&self, attacks: &[Attack]) -> anyhow::Result<(Baseline, Vec<Row>)> {
        // The first job in this process pays for warming up (the submitter's module
        // and split, the honest worker's compile): a warm-up round, not counted.
        eprintln!("warm-up: the honest job on a target under no attack…");
        let warm = self.round(None, Duration::from_secs(300)).await?;
        if !warm.job.done {
            anyhow::bail!(
                "the honest job failed without any attack: {}",
                warm.job.error.unwrap_or_default()
            );
        }
        eprintln!("baseline: the honest job on a fresh target under no attack…");
        let base = self.round(None, Duration::from_secs(300)).await?;
        if !base.job.done {
            anyhow::bail!(
                "the honest job failed without any attack: {}",
                base.job.error.unwrap_or_default()
            );
        }
        let baseline = Baseline {
            job: self.job.name,
            params: self.job.params,
            job_s: base.job.secs,
            peak_rss_mb: base.peak_rss_mb,
            disk_mb: base.disk_mb,
        };
        let mut rows = Vec::new();
        for &attack in attacks {
            // Each attack is judged against the honest job measured alone just
            // before it, on a fresh target: a machine whose load drifts over the
            // bench (other programs, a test run) then slows both alike. A baseline
            // round that fails falls back to the first one.
            eprintln!("baseline before {}…", attack.name());
            let fresh = self.round(None, Duration::from_secs(300)).await?;
            let mut before = baseline.clone();
            if fresh.job.done {
                before.job_s = fresh.job.secs;
            }
            // Time enough to tell a slowdown over the threshold, not more: a job not
            // done by then is reported as not done.
            let limit = Duration::from_secs_f64((before.job_s * (MAX_SLOWDOWN + 2.0)).max(20.0));
            eprintln!("{}…", attack.name());
            let m = self.round(Some(attack), limit).await?;
            rows.push(row(attack, &before, m));
        }
        Ok((baseline, rows))
    }

    /// One round on a fresh target: the attack (if any) under way, then the honest
    /// job, then the measurements.
    async fn round(&self, attack: Option<Attack>, limit: Duration) -> anyhow::Result<Measured> {
        let name = attack.map_or("baseline", Attack::name);
        let mut dir = self.root.join(name);
        if dir.exists() {
            dir = self.root.join(format!("{name}-2"));
        }
        std::fs::create_dir_all(&dir)?;
        let mut target = Target::start(&self.binary, &dir)?;
        let (job_tx, job_rx) = watch::channel(None);
        let env = Env {
            target: target.peer,
            addr: target.addr.clone(),
            sock: target.sock,
            metrics_port: target.metrics_port,
            data_dir: target.data_dir.clone(),
            binary: self.binary.clone(),
            ip: next_loopback_ip(),
            quick: self.quick,
            honest_module: self.job.module(),
            honest_job: job_rx,
            engaged: Arc::new(tokio::sync::Notify::new()),
            stop: CancellationToken::new(),
        };
        let mut notes = Vec::new();
        // A node's first seconds are busier (listeners, the DHT, the CPU monitor's
        // first samples): every round lets the target settle first.
        tokio::time::sleep(Duration::from_secs(2)).await;
        // The watchdog: the peak memory seen, and a stop past RSS_ABORT_MB.
        let watchdog = {
            let (pid, stop) = (target.pid, env.stop.clone());
            tokio::spawn(async move {
                loop {
                    let rss = proc_rss_mb(pid).unwrap_or(0.0);
                    if rss > RSS_ABORT_MB {
                        stop.cancel();
                        return true;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return false,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            })
        };
        let attack_task = attack.map(|a| tokio::spawn(a.run(env.clone())));
        if attack_task.is_some() {
            // The attack says when it is under way; a minute at most.
            tokio::select! {
                _ = env.engaged.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(60)) => notes.push("the attack was not under way after 60 s".into()),
                _ = env.stop.cancelled() => {}
            }
        }
        let started = Instant::now();
        // A fresh honest grid too: no view, reputation or cache carries over from
        // one round to the next.
        let grid = HonestGrid::start().await?;
        let job = match grid.join(&target, Duration::from_secs(30)).await {
            Ok(()) if env.stop.is_cancelled() => JobRun {
                done: false,
                secs: 0.0,
                error: Some("stopped by the memory watchdog".into()),
            },
            Ok(()) => {
                let left = limit.saturating_sub(started.elapsed());
                tokio::select! {
                    run = grid.run_job(target.peer, &self.job, left, &job_tx) => run,
                    _ = env.stop.cancelled() => JobRun {
                        done: false,
                        secs: started.elapsed().as_secs_f64(),
                        error: Some("stopped by the memory watchdog".into()),
                    },
                }
            }
            Err(e) => JobRun {
                done: false,
                secs: started.elapsed().as_secs_f64(),
                error: Some(format!("{e:#}")),
            },
        };
        env.stop.cancel();
        if watchdog.await.unwrap_or(false) {
            notes.push(format!(
                "the watchdog stopped the attack: the target passed {RSS_ABORT_MB} MB"
            ));
        }
        let findings = match attack_task {
            None => Ok(Findings::default()),
            Some(mut task) => {
                match tokio::time::timeout(Duration::from_secs(60), &mut task).await {
                    Ok(Ok(Ok(f))) => Ok(f),
                    Ok(Ok(Err(e))) => Err(format!("the attack failed: {e:#}")),
                    Ok(Err(e)) => Err(format!("the attack panicked: {e}")),
                    Err(_) => {
                        task.abort();
                        Err("the attack did not stop within 60 s (aborted)".into())
                    }
                }
            }
        };
        let alive = target.alive();
        let metric = |pick: &dyn Fn(&str) -> bool| target.metric_sum(pick).unwrap_or(f64::NAN);
        let bans = metric(&|n| n.contains("ban") || n.contains("denied"));
        let penalties = metric(&|n| n == "peergrid_net_penalties_total");
        let dropped = metric(&|n| n == "peergrid_net_inbound_dropped_total");
        let offenders: HashSet<String> = findings
            .as_ref()
            .map(|f| f.offenders.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        let logged = target.log_mentions(env.ip, &offenders);
        let (peak_rss_mb, disk_mb) = (target.peak_rss_mb(), target.disk_mb());
        drop(target);
        grid.shutdown().await;
        Ok(Measured {
            ip: env.ip,
            job,
            peak_rss_mb,
            disk_mb,
            alive,
            bans,
            penalties,
            dropped,
            logged,
            findings,
            notes,
        })
    }
}

fn proc_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Judges one attack against the thresholds.
fn row(attack: Attack, baseline: &Baseline, m: Measured) -> Row {
    let offender_ip = m.ip.to_string();
    let slowdown = m.job.done.then(|| m.job.secs / baseline.job_s);
    let disk_growth_mb = (m.disk_mb - baseline.disk_mb).max(0.0);
    let offender_banned = m.bans > 0.0;
    let (detail, bound_held, mut failures) = match m.findings {
        Ok(f) => (f.detail, f.bound_held, Vec::new()),
        Err(e) => (String::new(), None, vec![e]),
    };
    failures.extend(m.notes);
    if !m.job.done {
        failures.push(format!(
            "honest job: {}",
            m.job.error.as_deref().unwrap_or("not done")
        ));
    }
    if let Some(s) = slowdown.filter(|s| *s > MAX_SLOWDOWN) {
        failures.push(format!("slowdown {s:.1}× > {MAX_SLOWDOWN}×"));
    }
    match m.peak_rss_mb {
        Some(r) if r >= MAX_RSS_MB => failures.push(format!("RSS {r:.0} MB ≥ {MAX_RSS_MB} MB")),
        None => failures.push("the target's memory could not be read (it died?)".into()),
        _ => {}
    }
    if disk_growth_mb >= MAX_DISK_MB {
        failures.push(format!("disk +{disk_growth_mb:.0} MB ≥ {MAX_DISK_MB} MB"));
    }
    if attack.expects_ban() && !offender_banned {
        failures.push("the offender was not banned".into());
    }
    if bound_held == Some(false) {
        failures.push("the attack's own check failed (see detail)".into());
    }
    if let Err(e) = &m.alive {
        failures.push(format!("the target DIED: {e}"));
    }
    Row {
        attack: attack.name(),
        offender_ip,
        honest_job_done: m.job.done,
        slowdown,
        peak_rss_mb: m.peak_rss_mb,
        disk_growth_mb,
        offender_banned,
        offender_logged: m.logged > 0,
        ban_expected: attack.expects_ban(),
        bound_held,
        target_alive: m.alive.is_ok(),
        job_s: m.job.secs,
        baseline_s: baseline.job_s,
        bans: m.bans,
        penalties: m.penalties,
        dropped_inbound: m.dropped,
        detail,
        pass: failures.is_empty(),
        failures,
    }
}

fn print_table(baseline: &Baseline, rows: &[Row]) {
    println!(
        "baseline: {} {} done in {:.2} s; target peak RSS {} MB, data dir {:.1} MB (each attack's slowdown is against a baseline measured just before it: base s)\n",
        baseline.job,
        baseline.params,
        baseline.job_s,
        baseline
            .peak_rss_mb
            .map_or("?".into(), |r| format!("{r:.0}")),
        baseline.disk_mb
    );
    println!(
        "{:<18} {:>5} {:>7} {:>6} {:>8} {:>7} {:>8} {:>7} {:>7} {:>6}  pass",
        "attack",
        "done",
        "job s",
        "base s",
        "slowdown",
        "RSS MB",
        "disk MB",
        "banned",
        "logged",
        "bound"
    );
    for r in rows {
        println!(
            "{:<18} {:>5} {:>7.2} {:>6.2} {:>8} {:>7} {:>8.1} {:>7} {:>7} {:>6}  {}",
            r.attack,
            if r.honest_job_done { "yes" } else { "NO" },
            r.job_s,
            r.baseline_s,
            r.slowdown.map_or("-".into(), |s| format!("{s:.2}×")),
            r.peak_rss_mb.map_or("?".into(), |m| format!("{m:.0}")),
            r.disk_growth_mb,
            match (r.offender_banned, r.ban_expected) {
                (true, _) => "yes",
                (false, true) => "NO",
                (false, false) => "no",
            },
            if r.offender_logged { "yes" } else { "no" },
            match r.bound_held {
                Some(true) => "held",
                Some(false) => "BROKE",
                None => "-",
            },
            if r.pass { "PASS" } else { "FAIL" },
        );
    }
    println!();
    for r in rows {
        println!("{}: {}", r.attack, r.detail);
        for f in &r.failures {
            println!("    ✗ {f}");
        }
    }
    println!(
        "\nthresholds (issue 15): the honest job done with the right answer, slowdown ≤ {MAX_SLOWDOWN}×, \
         peak RSS < {MAX_RSS_MB} MB, disk growth < {MAX_DISK_MB} MB beyond the baseline's, and the \
         offender banned where the attack is unambiguous (connection-flood, big-messages, \
         result-replay); slowdown is against the baseline measured in this run, on a \
         machine the attacker shares"
    );
}
