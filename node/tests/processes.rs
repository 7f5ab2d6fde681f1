//! Real `peergrid node` processes on loopback: they find each other through a
//! bootstrap peer, `peergrid peers` shows their capacity, and a node killed with
//! SIGKILL leaves the others' views when its adverts expire; a submitter killed
//! mid-job resumes. Volunteer controls as a volunteer meets them: a CPU hog next to
//! a working node suspends it (its chunks pause, its advert lends nothing) and the job
//! still completes after the hog ends; `--cpu-time-percent` measured from the OS;
//! `pause` / `resume` / `prefs` across restarts.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A node process, killed when dropped so the test always stops by itself.
struct NodeProcess {
    child: Child,
    addr: String,
    started_in: Duration,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node(dir: &Path, bootstrap: Option<&str>) -> NodeProcess {
    // Each node on a loopback address of its own /24: placement never gives two
    // replicas of a chunk to one network.
    start_node_on(
        dir,
        bootstrap,
        &format!("/ip4/{}/tcp/0", peergrid_node::config::next_loopback_ip()),
    )
}

fn start_node_on(dir: &Path, bootstrap: Option<&str>, listen: &str) -> NodeProcess {
    // These tests are about the network: lend both slots whatever else the
    // (shared, noisy) machine runs.
    start_node_with(dir, bootstrap, listen, &["--cpus", "2", "--lend-when-busy"])
}

/// A submitter that lends nothing and one worker started with `worker_args`, each on
/// its own loopback /24, with their data dirs.
fn submitter_and_worker(
    worker_args: &[&str],
) -> (Vec<tempfile::TempDir>, NodeProcess, NodeProcess) {
    let dirs: Vec<_> = (0..2)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let submitter = start_node_with(dirs[0].path(), None, LOOPBACK, &["--cpus", "0"]);
    let worker = start_node_with(dirs[1].path(), Some(&submitter.addr), LOOPBACK, worker_args);
    (dirs, submitter, worker)
}

fn start_node_with(
    dir: &Path,
    bootstrap: Option<&str>,
    listen: &str,
    extra: &[&str],
) -> NodeProcess {
    let started = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peergrid"));
    cmd.arg("--data-dir")
        .arg(dir)
        .args(["node", "--listen", listen, "--no-mdns", "--no-upnp"])
        .args(["--api", "127.0.0.1:0", "--metrics", "off"])
        .args(["--advert-interval", "500ms", "--advert-ttl", "3s"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(stderr_file(dir));
    if let Some(b) = bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    let mut child = cmd.spawn().expect("peergrid node starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.trim().strip_prefix("listening on ") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => addr,
        Err(e) => panic!(
            "the node prints its listen address: {e}; its log ends:\n{}",
            stderr_tail(dir)
        ),
    };
    NodeProcess {
        child,
        addr,
        started_in: started.elapsed(),
    }
}

fn peers_json(dir: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_peergrid"))
        .arg("--data-dir")
        .arg(dir)
        .args(["peers", "--json"])
        .output()
        .expect("peergrid peers runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON list")
}

fn with_capacity(peers: &[serde_json::Value]) -> Vec<String> {
    peers
        .iter()
        .filter(|p| p["advert"]["slots_total"].as_u64() == Some(2))
        .filter_map(|p| p["peer_id"].as_str().map(String::from))
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[test]
fn three_processes_find_each_other_and_a_killed_one_expires() {
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let first = start_node(dirs[0].path(), None);
    let mut second = start_node(dirs[1].path(), Some(&first.addr));
    let third = start_node(dirs[2].path(), Some(&first.addr));
    let id = |n: &NodeProcess| n.addr.rsplit('/').next().unwrap_or_default().to_string();

    wait_until(
        "node 3 to list both others with capacity",
        Duration::from_secs(30),
        || {
            let seen = with_capacity(&peers_json(dirs[2].path()));
            seen.contains(&id(&first)) && seen.contains(&id(&second))
        },
    );

    std::thread::sleep(Duration::from_secs(2));
    println!(
        "start to listening: {:?} / {:?} / {:?}; idle resident memory of node 1: {} KiB",
        first.started_in,
        second.started_in,
        third.started_in,
        rss_kib(first.child.id()).unwrap_or(0)
    );

    // SIGKILL node 2: no goodbye. Its advert must leave node 3's view.
    second.child.kill().expect("kill");
    let _ = second.child.wait();
    let killed = Instant::now();
    wait_until(
        "node 2's advert to expire at node 3",
        Duration::from_secs(30),
        || !with_capacity(&peers_json(dirs[2].path())).contains(&id(&second)),
    );
    println!("killed node left the view after {:?}", killed.elapsed());
    assert!(with_capacity(&peers_json(dirs[2].path())).contains(&id(&first)));
}

#[test]
fn status_without_a_node_says_how_to_start_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_peergrid"))
        .arg("--data-dir")
        .arg(dir.path())
        .arg("status")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no peergrid node is running") && err.contains("peergrid node --data-dir"),
        "{err}"
    );
}

#[test]
fn a_node_restarted_on_its_data_dir_keeps_its_peer_id_and_the_api_wants_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path(), None);
    let first_id = node.addr.rsplit('/').next().unwrap_or_default().to_string();
    // The API refuses requests without the token.
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("api.json")).expect("api.json"))
            .expect("json");
    let url = format!("http://{}/v1/status", info["addr"].as_str().expect("addr"));
    match ureq_get(&url) {
        Err(code) => assert_eq!(code, 401),
        Ok(_) => panic!("the API answered without a token"),
    }
    drop(node);
    let node = start_node(dir.path(), None);
    assert_eq!(node.addr.rsplit('/').next().unwrap_or_default(), first_id);
}

/// Where a node started in `dir` logs: a file in its data dir, shown when it fails
/// to start.
fn stderr_file(dir: &Path) -> Stdio {
    std::fs::File::create(dir.join("node.stderr.log"))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// The last lines a node started in `dir` logged.
fn stderr_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("node.stderr.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A GET without a token; `Err(status)` on an HTTP error.
fn ureq_get(url: &str) -> Result<(), u16> {
    match ureq::get(url).call() {
        Ok(_) => Ok(()),
        Err(ureq::Error::StatusCode(code)) => Err(code),
        Err(_) => Err(0),
    }
}

fn cli(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_peergrid"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("peergrid runs")
}

/// Chunk index -> (state, replica rows) from a stopped submitter's database.
fn chunk_record(dir: &Path) -> Vec<(String, u32)> {
    let db = rusqlite::Connection::open(dir.join("peergrid.sqlite")).expect("db opens");
    let mut stmt = db
        .prepare(
            "SELECT c.state, (SELECT COUNT(*) FROM replicas r WHERE r.job_id = c.job_id AND r.chunk = c.idx)
             FROM chunks c ORDER BY c.idx",
        )
        .expect("query");
    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))
        .expect("rows")
        .map(|r| r.expect("row"))
        .collect()
}

#[test]
fn a_submitter_killed_mid_job_resumes_without_rerunning_verified_chunks() {
    let _heavy = heavy();
    let dirs: Vec<_> = (0..4)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut submitter = start_node(dirs[0].path(), None);
    let _workers: Vec<NodeProcess> = (1..4)
        .map(|i| start_node(dirs[i].path(), Some(&submitter.addr)))
        .collect();
    wait_until(
        "the submitter to see 3 workers",
        Duration::from_secs(30),
        || with_capacity(&peers_json(dirs[0].path())).len() >= 3,
    );
    let out = cli(
        dirs[0].path(),
        &[
            "submit",
            "primes",
            "--params",
            r#"{"limit":6000000000,"chunks":150}"#,
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    wait_until(
        "some chunks to be verified",
        Duration::from_secs(120),
        || {
            let out = cli(dirs[0].path(), &["status", &id, "--json"]);
            let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            s["chunks_verified"].as_u64().unwrap_or(0) >= 20
        },
    );
    // SIGKILL: no graceful shutdown.
    submitter.child.kill().expect("kill");
    let _ = submitter.child.wait();
    let before = chunk_record(dirs[0].path());
    let verified_before: Vec<usize> = (0..before.len())
        .filter(|&i| before[i].0 == "verified")
        .collect();
    assert!(
        !verified_before.is_empty() && verified_before.len() < before.len(),
        "killed mid-job"
    );

    // Restarted where the workers knew it (a node's port is normally fixed).
    let listen = submitter
        .addr
        .rsplit_once("/p2p/")
        .map(|(a, _)| a.to_string())
        .unwrap_or_default();
    submitter = start_node_on(dirs[0].path(), None, &listen);
    let started = Instant::now();
    loop {
        let out = cli(dirs[0].path(), &["status", &id, "--json"]);
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if s["state"] == "done" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the resumed job did not finish: {s} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let out = cli(dirs[0].path(), &["results", &id]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("279545368"),
        "π(6·10^9)"
    );
    drop(submitter);
    let after = chunk_record(dirs[0].path());
    for i in verified_before {
        assert_eq!(after[i], before[i], "verified chunk {i} was run again");
    }
}

// ---- Volunteer controls ----------------------------------------------------------

/// CPU-heavy tests take this, so their figures are not skewed by each other.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

const LOOPBACK: &str = "/ip4/127.0.0.1/tcp/0";

fn status_json(dir: &Path) -> serde_json::Value {
    let out = cli(dir, &["status", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn peer_id(node: &NodeProcess) -> String {
    node.addr.rsplit('/').next().unwrap_or_default().to_string()
}

/// The advert of `peer` in the view of the node at `dir`.
fn advert_of(dir: &Path, peer: &str) -> Option<serde_json::Value> {
    peers_json(dir)
        .into_iter()
        .find(|p| p["peer_id"] == peer)
        .map(|p| p["advert"].clone())
        .filter(|a| !a.is_null())
}

fn submit_json(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["submit"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = cli(dir, &all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string()
}

fn job_json(dir: &Path, id: &str) -> serde_json::Value {
    serde_json::from_slice(&cli(dir, &["status", id, "--json"]).stdout).unwrap_or_default()
}

/// Busy-loop processes, one per core, killed when dropped.
struct Hog(Vec<Child>);

impl Hog {
    fn start() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Hog((0..cores)
            .map(|_| {
                Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .expect("sh starts")
            })
            .collect())
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Needs a quiet machine: the worker steps aside for *any* program over 60 % of the
/// CPU, so a build running beside the test suspends it as surely as the hog does.
/// `.ci/run` runs it on its own after the other tests.
#[test]
#[ignore = "needs a machine no other program keeps busy: run .ci/run"]
fn a_cpu_hog_suspends_the_worker_whose_chunks_pause_and_the_job_still_completes() {
    let _heavy = heavy();
    let (dirs, _submitter, worker) = submitter_and_worker(&[
        "--cpus",
        "2",
        "--suspend-above-percent",
        "60",
        "--cpu-sample-interval",
        "250ms",
    ]);
    let worker_id = peer_id(&worker);
    // The machine is shared: wait until it is spare enough for the worker to lend.
    wait_until(
        "the submitter to see the worker lend 2 slots",
        Duration::from_secs(180),
        || advert_of(dirs[0].path(), &worker_id).is_some_and(|a| a["slots_total"] == 2),
    );
    let id = submit_json(
        dirs[0].path(),
        &[
            "primes",
            "--params",
            r#"{"limit":20000000000,"chunks":40}"#,
            "--redundancy",
            "1",
            "--quorum",
            "1",
            "--replication",
            "fixed",
        ],
    );
    // Computing inside the sandbox (not still fetching or compiling the module).
    wait_until("the worker to run chunks", Duration::from_secs(60), || {
        status_json(dirs[1].path())["worker"]["running"].as_u64() >= Some(1)
    });

    let hog = Hog::start();
    let started = Instant::now();
    wait_until("the worker to suspend", Duration::from_secs(30), || {
        status_json(dirs[1].path())["volunteer"]["state"] == "suspended"
    });
    let suspended_after = started.elapsed();
    wait_until(
        "the running chunks to pause",
        Duration::from_secs(30),
        || status_json(dirs[1].path())["worker"]["paused"].as_u64() >= Some(1),
    );
    let paused_after = started.elapsed();
    wait_until(
        "the submitter to see no slot lent",
        Duration::from_secs(30),
        || {
            advert_of(dirs[0].path(), &worker_id)
                .is_some_and(|a| a["slots_total"] == 0 && a["slots_free"] == 0)
        },
    );
    let advert_after = started.elapsed();
    let said = String::from_utf8_lossy(&cli(dirs[1].path(), &["status"]).stdout).into_owned();
    assert!(
        said.contains("suspended: other processes use") && said.contains("above the 60 % limit"),
        "{said}"
    );
    // Nothing computes while suspended: every chunk the worker holds waits at the
    // gate, and none is computing in the sandbox.
    wait_until(
        "no chunk to compute while suspended",
        Duration::from_secs(30),
        || status_json(dirs[1].path())["worker"]["running"] == 0,
    );
    let verified = job_json(dirs[0].path(), &id)["chunks_verified"]
        .as_u64()
        .unwrap_or(0);
    assert!(verified < 40, "the job ended before the hog could matter");

    drop(hog);
    let ended = Instant::now();
    wait_until("the worker to work again", Duration::from_secs(120), || {
        status_json(dirs[1].path())["volunteer"]["state"] != "suspended"
    });
    let resumed_after = ended.elapsed();
    wait_until("the job to finish", Duration::from_secs(300), || {
        job_json(dirs[0].path(), &id)["state"] == "done"
    });
    let out = cli(dirs[0].path(), &["results", &id]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("882206716"),
        "π(2·10^10): {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let s = status_json(dirs[1].path());
    assert_eq!(s["worker"]["withdrawn"], 0, "nothing was withdrawn: {s}");
    println!(
        "hog started: suspended after {suspended_after:?}, chunks paused after {paused_after:?}, \
         advert without slots at the submitter after {advert_after:?}; hog ended: working \
         again after {resumed_after:?}"
    );
}

/// `--cpu-time-percent 50` is in force while chunks run, work goes on under it, and a
/// change at run time takes effect. (How much of a core that really is, from the OS,
/// is measured by `cargo bench -p peergrid-node --bench duty_cycle`, not asserted
/// here: a shared machine moves it.)
#[test]
fn cpu_time_percent_50_is_in_force_and_work_goes_on() {
    let _heavy = heavy();
    let (dirs, _submitter, worker) = submitter_and_worker(&[
        "--cpus",
        "1",
        "--cpu-time-percent",
        "50",
        "--lend-when-busy",
    ]);
    let worker_id = peer_id(&worker);
    wait_until(
        "the submitter to see the worker",
        Duration::from_secs(60),
        || advert_of(dirs[0].path(), &worker_id).is_some_and(|a| a["slots_total"] == 1),
    );
    let duty = |d: &Path| status_json(d)["volunteer"]["preferences"]["cpu_time_percent"].clone();
    let id = submit_json(
        dirs[0].path(),
        &[
            "primes",
            "--params",
            r#"{"limit":200000000,"chunks":8}"#,
            "--redundancy",
            "1",
            "--quorum",
            "1",
            "--replication",
            "fixed",
        ],
    );
    wait_until("the worker to run a chunk", Duration::from_secs(60), || {
        status_json(dirs[1].path())["worker"]["running"] == 1
    });
    assert_eq!(duty(dirs[1].path()), 50, "the duty cycle in force");
    wait_until(
        "the job to finish at a 50 % duty cycle",
        Duration::from_secs(240),
        || job_json(dirs[0].path(), &id)["state"] == "done",
    );
    let out = cli(dirs[1].path(), &["prefs", "--cpu-time-percent", "100"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "the new duty cycle to be in force",
        Duration::from_secs(30),
        || duty(dirs[1].path()) == 100,
    );
}

#[test]
fn pause_and_resume_by_hand_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = ["--cpus", "1", "--lend-when-busy"];
    let node = start_node_with(dir.path(), None, LOOPBACK, &extra);
    let state = |d: &Path| status_json(d)["volunteer"].clone();
    wait_until("the node to lend", Duration::from_secs(30), || {
        status_json(dir.path())["slots_total"] == 1
    });
    let out = cli(dir.path(), &["pause"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("suspended: paused by hand"));
    let s = status_json(dir.path());
    assert_eq!(s["slots_total"], 0, "{s}");
    assert_eq!(s["volunteer"]["reason"]["kind"], "paused");

    drop(node);
    let node = start_node_with(dir.path(), None, LOOPBACK, &extra);
    let v = state(dir.path());
    assert_eq!(v["state"], "suspended", "still paused after a restart: {v}");
    let said = String::from_utf8_lossy(&cli(dir.path(), &["status"]).stdout).into_owned();
    assert!(said.contains("suspended: paused by hand"), "{said}");

    let out = cli(dir.path(), &["resume"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(state(dir.path())["state"], "idle");
    drop(node);
    let node = start_node_with(dir.path(), None, LOOPBACK, &extra);
    assert_eq!(
        state(dir.path())["state"],
        "idle",
        "still resumed after a restart"
    );

    // A timed pause ends by itself.
    let out = cli(dir.path(), &["pause", "--for", "1s"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("paused by hand for"));
    wait_until("the timed pause to end", Duration::from_secs(30), || {
        state(dir.path())["state"] == "idle"
    });
    // Preferences changed at run time are kept too.
    let out = cli(dir.path(), &["prefs", "--active-hours", "nonsense"]);
    assert!(!out.status.success(), "a bad window is refused");
    let out = cli(dir.path(), &["prefs", "--cpu-time-percent", "40", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(node);
    let _node = start_node_with(dir.path(), None, LOOPBACK, &extra);
    let prefs: serde_json::Value =
        serde_json::from_slice(&cli(dir.path(), &["prefs", "--json"]).stdout).expect("json");
    assert_eq!(prefs["cpu_time_percent"], 40, "{prefs}");
}
