//! Monitoring: the Grafana dashboard, the scrape config and the alert rules in
//! `dashboards/`, proven against a real Prometheus scraping real nodes.
//!
//! The big test starts 4 nodes with `/metrics` on loopback (3 honest, 1 that lies
//! about half of its results, so the verification panels have something to show), a
//! real Prometheus (from Debian's `prometheus` package, which `.ci/run` installs)
//! scraping them every second with the shipped scrape config, and keeps jobs flowing
//! through the grid (submitted through two honest nodes). Then it
//! runs every query of every dashboard panel against Prometheus's HTTP API: each must
//! return data, and each must show activity (a finite non-zero value) at some point,
//! except the panels listed in [`MAY_STAY_ZERO`] with the reason. `promtool` checks
//! the config, the rules (and their unit tests) and a real scrape.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use peergrid_node::scheduler::{JobState, SubmitRequest};
use peergrid_node::{Node, NodeError, Seams};
use peergrid_tests::prometheus::{self, Prometheus, assert_promtool_ok, promtool};
use peergrid_tests::testnet::test_config;
use peergrid_tests::{TestNet, wait_for};
use serde_json::Value;

/// Panels (title, query ref) that may rightly show nothing but zero in the test grid
/// (every node stays up, on loopback, one liar), and why. Every query must still
/// return data.
const MAY_STAY_ZERO: &[(&str, &str, &str)] = &[
    ("Nodes down", "A", "every test node stays up"),
    (
        "Worker queue",
        "A",
        "a queue forms only when offers outrun free slots, which a scrape may miss",
    ),
    (
        "Worker outbox",
        "A",
        "results leave the outbox within milliseconds on loopback",
    ),
    (
        "Volunteer controls",
        "B",
        "no test node is suspended, so no chunk pauses",
    ),
    (
        "Volunteer controls",
        "C",
        "no test node is paused, outside its hours or busy",
    ),
    (
        "Other programs' CPU",
        "A",
        "in-process test nodes lend what they are told (no CPU sampling)",
    ),
    (
        "Replicas",
        "B",
        "reissues: no replica times out and no peer leaves",
    ),
    (
        "Penalties and bans",
        "A",
        "the liar lies in well-formed messages: no wire offence",
    ),
    ("Penalties and bans", "B", "no peer commits a wire offence"),
    (
        "Decode errors",
        "A",
        "every peer sends well-formed messages",
    ),
    (
        "Inbound requests dropped",
        "A",
        "the test load never fills the inbound queue",
    ),
    ("Database writes", "B", "failed writes: the disk is fine"),
    // The test grid is on loopback: node 0 is public and relays, the others reserve
    // slots on it, but every connection is direct, so no circuit is ever opened and
    // nothing needs a hole punched. The NAT lab (node/tests/nat_lab.rs) drives these.
    (
        "Hole punching",
        "A",
        "on loopback every connection is direct",
    ),
    (
        "Hole punching",
        "B",
        "on loopback every connection is direct",
    ),
    (
        "Relaying for others",
        "A",
        "on loopback peers connect directly: no circuit",
    ),
    (
        "Relaying for others",
        "B",
        "on loopback peers connect directly: no circuit",
    ),
    (
        "Relaying for others",
        "C",
        "on loopback peers connect directly: no circuit",
    ),
    (
        "Bytes relayed for others",
        "A",
        "on loopback peers connect directly: no circuit",
    ),
    (
        "AutoNAT and reservations",
        "A",
        "an address is tested once, early in its node's life: the 20 s rate may miss it",
    ),
];

/// What Grafana substitutes in the test: all instances, and a rate window a few
/// times the 1 s scrape interval.
const SUBSTITUTIONS: &[(&str, &str)] = &[
    ("${instance}", ".*"),
    ("$instance", ".*"),
    ("$__rate_interval", "20s"),
    ("$__interval", "1s"),
    ("$__range", "5m"),
];

/// Jobs the test keeps flowing, in turn (distinct modules, so each node compiles
/// more than once; montecarlo chunks are long enough to keep slots busy).
const WORKLOAD: &[(&str, &str)] = &[
    (
        "montecarlo",
        r#"{"samples": 150000000, "chunks": 12, "seed": 7}"#,
    ),
    ("primes", r#"{"limit": 5000000, "chunks": 12}"#),
    (
        "mandelbrot",
        r#"{"width": 256, "height": 96, "max_iter": 300, "rows_per_chunk": 8}"#,
    ),
    (
        "pow",
        r#"{"data": "monitoring", "difficulty": 12, "max_nonce": 786432, "chunk_size": 65536}"#,
    ),
];

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

fn read_dashboards(file: &str) -> String {
    let path = repo_root().join("dashboards").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One query of one panel.
#[derive(Debug, Clone)]
struct PanelQuery {
    panel: String,
    ref_id: String,
    expr: String,
}

/// Every panel (rows included, collapsed or not), in order.
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.push(panel.clone());
        if let Some(inner) = panel["panels"].as_array() {
            out.extend(inner.iter().cloned());
        }
    }
    out
}

/// Every query of every panel, with Grafana's variables substituted.
fn dashboard_queries(dashboard: &Value) -> Vec<PanelQuery> {
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("").to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let mut expr = target["expr"].as_str().expect("a PromQL expr").to_string();
            for (var, value) in SUBSTITUTIONS {
                expr = expr.replace(var, value);
            }
            assert!(
                !expr.contains('$'),
                "panel {title:?}: unknown variable in {expr}"
            );
            queries.push(PanelQuery {
                panel: title.clone(),
                ref_id: target["refId"].as_str().unwrap_or("?").to_string(),
                expr,
            });
        }
    }
    queries
}

#[test]
fn the_dashboard_has_its_variables_rows_and_units() {
    let dashboard: Value =
        serde_json::from_str(&read_dashboards("peergrid.json")).expect("the dashboard is JSON");
    let variables: BTreeMap<&str, &Value> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .map(|v| (v["name"].as_str().unwrap_or(""), v))
        .collect();
    assert_eq!(variables["datasource"]["type"], "datasource");
    assert_eq!(variables["datasource"]["query"], "prometheus");
    assert_eq!(variables["instance"]["type"], "query");
    assert_eq!(variables["instance"]["allValue"], ".*");
    assert!(
        dashboard["id"].is_null(),
        "a provisioned dashboard has no id"
    );

    let all = panels(&dashboard);
    let rows: Vec<&str> = all
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    for row in [
        "Fleet capacity",
        "Work flow",
        "Verification and trust",
        "Network",
        "Sandbox",
    ] {
        assert!(rows.contains(&row), "no row {row:?} in {rows:?}");
    }
    let mut ids = std::collections::HashSet::new();
    for panel in all.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(ids.insert(panel["id"].as_u64()), "{title}: duplicate id");
        let unit = panel["fieldConfig"]["defaults"]["unit"]
            .as_str()
            .unwrap_or("");
        assert!(!unit.is_empty(), "panel {title:?} has no unit");
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title}: datasource"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "{title}: datasource"
            );
            let expr = t["expr"].as_str().unwrap_or("");
            assert!(
                expr.contains("peergrid_") || expr.contains("up{"),
                "{title}: {expr}"
            );
            assert!(
                expr.contains(r#"instance=~"$instance""#),
                "{title}: the query ignores the instance variable: {expr}"
            );
        }
    }
    // The rightly-empty list names real panels.
    let queries = dashboard_queries(&dashboard);
    for (panel, ref_id, _) in MAY_STAY_ZERO {
        assert!(
            queries
                .iter()
                .any(|q| q.panel == *panel && q.ref_id == *ref_id),
            "MAY_STAY_ZERO names {panel:?} {ref_id}, which is not in the dashboard"
        );
    }
}

#[test]
#[ignore = "needs prometheus and promtool: run .ci/run"]
fn the_scrape_config_and_alert_rules_pass_promtool() {
    let tools = prometheus::require_tools("the_scrape_config_and_alert_rules_pass_promtool");
    let dir = repo_root().join("dashboards");
    let path = |f: &str| dir.join(f).display().to_string();
    assert_promtool_ok(
        "check config",
        &promtool(&tools, &["check", "config", &path("prometheus.yml")], None),
    );
    assert_promtool_ok(
        "check rules",
        &promtool(&tools, &["check", "rules", &path("alerts.yml")], None),
    );
    // The rules' own unit tests: each alert fires on the series it is meant for.
    assert_promtool_ok(
        "test rules",
        &promtool(&tools, &["test", "rules", &path("alerts_test.yml")], None),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_serves_the_text_format_on_its_own_address() {
    peergrid_tests::testnet::init_logging();
    let (a, b, c) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let mut config = test_config(a.path(), &[]);
    config.metrics = Some("127.0.0.1:0".parse().expect("an address"));
    let node = Node::spawn(config).await.expect("node starts");
    let addr = node.metrics_addr().expect("metrics on");
    assert_ne!(Some(addr), node.api_addr(), "its own listener");
    let url = format!("http://{addr}/metrics");
    let (content_type, body) = tokio::task::spawn_blocking(move || {
        let mut response = ureq::get(&url).call().expect("scrape");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (
            content_type,
            response.body_mut().read_to_string().expect("body"),
        )
    })
    .await
    .expect("scrape task");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    for name in [
        "peergrid_node_info",
        "peergrid_net_connected_peers",
        "peergrid_worker_slots{state=\"free\"} 2",
        "peergrid_worker_advertised_fuel_per_second",
        "peergrid_sandbox_compile_cache_lookups_total",
        "peergrid_scheduler_jobs{state=\"running\"} 0",
        "peergrid_store_write_seconds_count",
    ] {
        assert!(
            body.contains(name),
            "{name} missing from the scrape:\n{body}"
        );
    }

    // An address already taken is a clear error naming the flag.
    let mut taken = test_config(b.path(), &[]);
    taken.metrics = Some(addr);
    let err = Node::spawn(taken).await.expect_err("the address is taken");
    assert!(matches!(err, NodeError::Metrics { .. }), "{err:?}");
    assert!(err.to_string().contains("--metrics"), "{err}");

    // `--metrics off` serves nothing.
    let off = Node::spawn(test_config(c.path(), &[]))
        .await
        .expect("node starts");
    assert_eq!(off.metrics_addr(), None);
    off.shutdown().await;
    node.shutdown().await;
}

/// Nodes in the test grid, and the one that lies.
const NODES: usize = 4;
const LIAR: usize = 3;

/// Submits jobs from the workload in turn (through nodes 0 and 1) until `stop`,
/// each to its end; returns how many ended done.
async fn keep_jobs_flowing(net: Arc<TestNet>, stop: Arc<AtomicBool>) -> usize {
    let mut done = 0;
    for round in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (name, params) = WORKLOAD[round % WORKLOAD.len()];
        let submitter = round % 2;
        let state = net.nodes[submitter].node.state();
        let example = peergrid_jobs::find(name).expect("a built-in job");
        let module = state.blobs().put(example.wasm).expect("module stored");
        let id = state
            .scheduler()
            .submit(SubmitRequest {
                name: name.into(),
                module: module.to_hex(),
                params: Some(serde_json::from_str(params).expect("JSON params")),
                inputs: None,
                spec: None,
            })
            .await
            .expect("submitted");
        let status = wait_for(
            &format!("{name} job to end"),
            Duration::from_secs(240),
            || async {
                state
                    .scheduler()
                    .status(Some(id))
                    .await
                    .pop()
                    .filter(|s| s.state.is_final())
            },
        )
        .await;
        assert_eq!(status.state, JobState::Done, "{status:?}");
        done += 1;
    }
    done
}

/// What was seen of one query while polling.
#[derive(Debug, Default, Clone)]
struct Seen {
    data: bool,
    active: bool,
    last: Option<String>,
}

fn describe(samples: &[prometheus::Sample]) -> String {
    samples
        .iter()
        .take(4)
        .map(|s| format!("{:.4}", s.value))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs prometheus: run .ci/run"]
async fn every_dashboard_panel_returns_data_from_a_real_prometheus() {
    let tools =
        prometheus::require_tools("every_dashboard_panel_returns_data_from_a_real_prometheus");
    let dashboard: Value =
        serde_json::from_str(&read_dashboards("peergrid.json")).expect("the dashboard is JSON");
    let queries = dashboard_queries(&dashboard);

    let net = Arc::new(
        TestNet::spawn_full(
            NODES,
            |i, config| {
                config.metrics = Some("127.0.0.1:0".parse().expect("an address"));
                // Node 0 declares itself public, like a VPS: it relays and tests the
                // others' addresses (AutoNAT), and they reserve slots on it.
                if i == 0 {
                    config.net.nat.external_addrs = config.net.listen.clone();
                }
            },
            |i| {
                if i == LIAR {
                    Seams::liar(0.5, 7)
                } else {
                    Seams::default()
                }
            },
        )
        .await,
    );
    let targets: Vec<SocketAddr> = net
        .nodes
        .iter()
        .map(|n| n.node.metrics_addr().expect("metrics on"))
        .collect();
    for target in &targets {
        assert!(target.ip().is_loopback());
    }
    wait_for(
        "every node to see the others' adverts",
        Duration::from_secs(30),
        || async {
            for n in &net.nodes {
                let seen = n.node.net().advert_count().await;
                if seen < NODES - 1 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;

    let config =
        prometheus::config_from_example(&read_dashboards("prometheus.yml"), &targets, "1s");
    let server = tokio::task::spawn_blocking({
        let tools = tools.clone();
        move || {
            Prometheus::start(
                &tools,
                &config,
                &[("alerts.yml", &read_dashboards("alerts.yml"))],
            )
        }
    })
    .await
    .expect("prometheus starts");
    let client = server.client();
    assert_promtool_ok(
        "check config (generated)",
        &promtool(
            &tools,
            &[
                "check",
                "config",
                &server.dir().join("prometheus.yml").display().to_string(),
            ],
            None,
        ),
    );

    let up = client.clone();
    wait_for(
        "prometheus to scrape every node",
        Duration::from_secs(60),
        || {
            let up = up.clone();
            async move {
                let samples =
                    tokio::task::spawn_blocking(move || up.query(r#"up{job="peergrid"} == 1"#))
                        .await
                        .ok()?
                        .ok()?;
                (samples.len() == NODES).then_some(())
            }
        },
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let work = tokio::spawn(keep_jobs_flowing(net.clone(), stop.clone()));

    // Poll every query each second until each has returned data, and each not
    // listed as rightly zero has shown activity.
    let may_stay_zero = |q: &PanelQuery| {
        MAY_STAY_ZERO
            .iter()
            .any(|(p, r, _)| *p == q.panel && *r == q.ref_id)
    };
    let mut seen: Vec<Seen> = vec![Seen::default(); queries.len()];
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        for (q, seen) in queries.iter().zip(seen.iter_mut()) {
            let (expr, client) = (q.expr.clone(), client.clone());
            let answer = tokio::task::spawn_blocking(move || client.query(&expr))
                .await
                .expect("query task");
            let samples = answer
                .unwrap_or_else(|e| panic!("panel {:?} {}: {e}\n{}", q.panel, q.ref_id, q.expr));
            if !samples.is_empty() {
                seen.data = true;
                seen.last = Some(describe(&samples));
            }
            if samples
                .iter()
                .any(|s| s.value.is_finite() && s.value != 0.0)
            {
                seen.active = true;
            }
        }
        let missing: Vec<String> = queries
            .iter()
            .zip(&seen)
            .filter(|(q, s)| !s.data || (!s.active && !may_stay_zero(q)))
            .map(|(q, s)| {
                format!(
                    "{:?} {} (data: {}, active: {}): {}",
                    q.panel, q.ref_id, s.data, s.active, q.expr
                )
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "after 240 s these dashboard queries still have no data or show no activity:\n{}\nprometheus log:\n{}",
                missing.join("\n"),
                server.log()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);

    // The report the issue asks for: which panels returned data.
    println!(
        "dashboard queries against a real Prometheus ({NODES} nodes, one a liar, 1 s scrapes):"
    );
    for (q, s) in queries.iter().zip(&seen) {
        let note = MAY_STAY_ZERO
            .iter()
            .find(|(p, r, _)| *p == q.panel && *r == q.ref_id)
            .map(|(_, _, why)| format!(" (may stay zero: {why})"))
            .unwrap_or_default();
        println!(
            "  {:<32} {}  data, {}{note}; last [{}]",
            q.panel,
            q.ref_id,
            if s.active { "active" } else { "zero" },
            s.last.as_deref().unwrap_or("")
        );
    }

    // The instance variable's query lists exactly the scraped nodes.
    let variable = client.clone();
    let mut instances = tokio::task::spawn_blocking(move || {
        variable.label_values("instance", "peergrid_node_info")
    })
    .await
    .expect("label task")
    .expect("label values");
    instances.sort();
    let mut expected: Vec<String> = targets.iter().map(ToString::to_string).collect();
    expected.sort();
    assert_eq!(instances, expected);

    // The server loaded the alert rules and evaluates them without errors.
    let rules_client = client.clone();
    let rules = tokio::task::spawn_blocking(move || rules_client.rules())
        .await
        .expect("rules task")
        .expect("rules");
    let loaded: Vec<(String, String)> = rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .map(|r| {
            (
                r["name"].as_str().unwrap_or("").to_string(),
                r["health"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(loaded.len(), 4, "{rules}");
    for (name, health) in &loaded {
        assert!(
            health == "ok" || health == "unknown",
            "rule {name} is {health}: {rules}"
        );
    }

    // promtool lints a real scrape of every node.
    for target in &targets {
        let url = format!("http://{target}/metrics");
        let body = tokio::task::spawn_blocking(move || {
            ureq::get(&url)
                .call()
                .expect("scrape")
                .body_mut()
                .read_to_string()
                .expect("scrape body")
        })
        .await
        .expect("scrape task");
        assert!(body.contains("peergrid_worker_chunks_executed_total"));
        assert_promtool_ok(
            &format!("check metrics ({target})"),
            &promtool(&tools, &["check", "metrics"], Some(body.as_bytes())),
        );
    }

    let jobs = work.await.expect("the workload ran");
    assert!(jobs >= 1, "at least one job ended while polling");
    drop(server);
    Arc::try_unwrap(net)
        .expect("the workload let go of the net")
        .shutdown()
        .await;
}
