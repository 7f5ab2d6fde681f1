//! `peergrid bench hostile` keeps working: its cheapest attacks, at small scale,
//! against this (debug) build. The figures are not judged here (a debug build on a
//! shared machine); what is asserted is the harness's report itself: an honest job
//! completes beside each attack, and a flood from one address is reported as such.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the bench, killing it if it has not finished in `limit` (it has its own
/// time limits; this is the test's guarantee that it stops).
fn bench(args: &[&str], limit: Duration) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("out.json");
    let out = std::fs::File::create(&out_path).expect("output file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_peergrid"))
        .args(["bench", "hostile", "--quick", "--json"])
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the binary runs");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bench hostile did not finish in {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "bench hostile failed: {status}");
    let text = std::fs::read_to_string(&out_path).expect("output");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn the_hostile_bench_reports_each_attack_beside_an_honest_job() {
    let report = bench(
        &["--attack", "connection-flood", "--attack", "cancel-flood"],
        Duration::from_secs(400),
    );
    assert!(
        report["baseline"]["job_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{report}"
    );
    let attacks = report["attacks"].as_array().expect("attacks");
    let names: Vec<&str> = attacks
        .iter()
        .filter_map(|a| a["attack"].as_str())
        .collect();
    assert_eq!(names, ["connection-flood", "cancel-flood"]);
    for a in attacks {
        // Every field of the JSON is there, with its type.
        assert!(a["honest_job_done"].is_boolean(), "{a}");
        assert!(a["slowdown"].is_number() || a["slowdown"].is_null(), "{a}");
        assert!(a["peak_rss_mb"].as_f64().unwrap_or(0.0) > 0.0, "{a}");
        assert!(a["disk_growth_mb"].is_number(), "{a}");
        assert!(a["offender_banned"].is_boolean(), "{a}");
        assert!(a["pass"].is_boolean(), "{a}");
        assert_eq!(a["target_alive"], true, "{a}");
        // The honest job completes beside these attacks, with the right answer.
        assert_eq!(a["honest_job_done"], true, "{a}");
        assert!(a["slowdown"].as_f64().unwrap_or(0.0) > 0.0, "{a}");
    }
    // The flood came from one address, and the report says from which and how much.
    let flood = &attacks[0];
    let ip = flood["offender_ip"].as_str().expect("offender_ip");
    assert!(ip.starts_with("127."), "{flood}");
    let detail = flood["detail"].as_str().expect("detail");
    assert!(
        detail.starts_with(&format!("from {ip}: ")) && detail.contains("raw TCP connections"),
        "{detail}"
    );
    assert_eq!(flood["ban_expected"], true, "{flood}");
    // The attacker is a stranger to the target (its own loopback address, not the
    // 127.0.0.1 every local node dials from): its identities get the per-IP
    // connections and no more, and the target refuses or bans the address.
    let connected: usize = detail
        .split("; ")
        .find_map(|part| part.split('/').next()?.parse().ok())
        .unwrap_or(usize::MAX);
    assert!(connected <= 4, "{detail}");
    assert_eq!(flood["offender_banned"], true, "{flood}");
    let cancels = attacks[1]["detail"].as_str().expect("detail");
    assert!(cancels.contains("cancels in flight"), "{cancels}");
}
