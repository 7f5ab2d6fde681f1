//! Real `peergrid node` processes on loopback: they find each other through a
//! bootstrap peer, `peergrid peers` shows their capacity, and a node killed with
//! SIGKILL leaves the others' views when its adverts expire.

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
    let started = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peergrid"));
    cmd.arg("--data-dir")
        .arg(dir)
        .args(["node", "--listen", listen, "--no-mdns"])
        .args(["--api", "127.0.0.1:0", "--metrics", "off"])
        .args([
            "--advert-interval",
            "500ms",
            "--advert-ttl",
            "3s",
            "--cpus",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
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
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the node prints its listen address");
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
