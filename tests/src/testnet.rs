//! `TestNet`: N real peergrid nodes in this process, real libp2p on loopback, each
//! with its own temporary data dir; node 0 is the bootstrap of every other. Waiting
//! is done with [`wait_for`] and a timeout, never a bare sleep.

use std::future::Future;
use std::time::{Duration, Instant};

use peergrid_node::config::{DataDir, NodeOptions};
use peergrid_node::net::protocol::JobId;
use peergrid_node::scheduler::{JobSpec, JobStatus, SubmitError, SubmitRequest};
use peergrid_node::settings::{NodeConfig, Resolve};
use peergrid_node::{Node, NodeError, Seams};

/// Installs a test log subscriber once (`RUST_LOG` to see node logs).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// The config of a test node: [`NodeOptions::loopback`] with the API on a free port.
pub fn test_config(dir: &std::path::Path, bootstrap: &[String]) -> NodeConfig {
    NodeOptions {
        api: Some("127.0.0.1:0".into()),
        ..NodeOptions::loopback(bootstrap.to_vec(), 2)
    }
    .resolve(DataDir::resolve(Some(dir.to_path_buf())))
    .expect("test config resolves")
}

/// A node of the test net with its data dir.
#[derive(Debug)]
pub struct TestNode {
    /// The node.
    pub node: Node,
    /// Its data dir (deleted when the test net is dropped).
    pub dir: tempfile::TempDir,
}

/// N in-process nodes.
#[derive(Debug)]
pub struct TestNet {
    /// The nodes; index 0 is everyone's bootstrap.
    pub nodes: Vec<TestNode>,
}

impl TestNet {
    /// Spawns `n` nodes: node 0, then the others bootstrapped from it.
    pub async fn spawn(n: usize) -> TestNet {
        Self::spawn_with(n, |_, _| {}).await
    }

    /// Like [`spawn`](Self::spawn), letting the caller adjust each node's config.
    pub async fn spawn_with(n: usize, adjust: impl Fn(usize, &mut NodeConfig)) -> TestNet {
        Self::spawn_full(n, adjust, |_| Seams::default()).await
    }

    /// Like [`spawn_with`](Self::spawn_with), with seams (e.g. a lying executor) per node.
    pub async fn spawn_full(
        n: usize,
        adjust: impl Fn(usize, &mut NodeConfig),
        seams: impl Fn(usize) -> Seams,
    ) -> TestNet {
        init_logging();
        let mut nodes: Vec<TestNode> = Vec::with_capacity(n);
        let mut bootstrap = Vec::new();
        for i in 0..n {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut config = test_config(dir.path(), &bootstrap);
            adjust(i, &mut config);
            let node = Node::spawn_with(config, seams(i))
                .await
                .expect("node starts");
            if i == 0 {
                bootstrap = node
                    .listen_addrs()
                    .await
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                assert!(!bootstrap.is_empty(), "node 0 listens");
            }
            nodes.push(TestNode { node, dir });
        }
        TestNet { nodes }
    }

    /// Adds a node bootstrapped from node 0.
    pub async fn add_node(&mut self) -> usize {
        let bootstrap: Vec<String> = self
            .node(0)
            .listen_addrs()
            .await
            .iter()
            .map(ToString::to_string)
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let node = Node::spawn(test_config(dir.path(), &bootstrap))
            .await
            .expect("node starts");
        self.nodes.push(TestNode { node, dir });
        self.nodes.len() - 1
    }

    /// Waits until node `i` sees `n` capacity adverts.
    pub async fn wait_for_adverts(&self, i: usize, n: usize) {
        wait_for(
            &format!("node {i} to see {n} adverts"),
            // Adverts go out every 500 ms on a test net; nothing blocks the runtime's
            // threads (database and blob work run on blocking threads), so even with
            // every test's nodes starting at once on two cores this is ample.
            Duration::from_secs(20),
            || async {
                let seen = self.node(i).net().advert_count().await;
                (seen >= n).then_some(())
            },
        )
        .await;
    }

    /// Submits a built-in job (by name) through node `i`'s scheduler.
    pub async fn submit(
        &self,
        i: usize,
        job: &str,
        params: &str,
        spec: JobSpec,
    ) -> Result<JobId, SubmitError> {
        let wasm = peergrid_jobs::find(job).expect("a built-in job").wasm;
        self.submit_module(i, job, wasm, Some(params), None, spec)
            .await
    }

    /// Submits any module through node `i`'s scheduler.
    pub async fn submit_module(
        &self,
        i: usize,
        name: &str,
        wasm: &[u8],
        params: Option<&str>,
        inputs: Option<Vec<Vec<u8>>>,
        spec: JobSpec,
    ) -> Result<JobId, SubmitError> {
        let state = self.node(i).state();
        let module = state.blobs().put(wasm).expect("module stored");
        let inputs = inputs.map(|list| {
            list.iter()
                .map(|b| state.blobs().put(b).expect("input stored").to_hex())
                .collect()
        });
        state
            .scheduler()
            .submit(SubmitRequest {
                name: name.into(),
                module: module.to_hex(),
                params: params.map(|p| serde_json::from_str(p).expect("params are JSON")),
                inputs,
                spec: Some(spec),
            })
            .await
    }

    /// The status of a job on node `i`.
    pub async fn status(&self, i: usize, id: JobId) -> JobStatus {
        self.node(i)
            .state()
            .scheduler()
            .status(Some(id))
            .await
            .pop()
            .expect("the job exists")
    }

    /// Waits until at least `n` chunks of a job on node `i` are verified.
    pub async fn wait_verified(&self, i: usize, id: JobId, n: u32) {
        wait_for("chunks to be verified", Duration::from_secs(60), || async {
            (self.status(i, id).await.chunks_verified >= n).then_some(())
        })
        .await;
    }

    /// Waits until a job on node `i` ends; returns its final status.
    pub async fn wait_job(&self, i: usize, id: JobId, timeout: Duration) -> JobStatus {
        let started = Instant::now();
        loop {
            let s = self.status(i, id).await;
            if s.state.is_final() {
                return s;
            }
            // On a timeout, say where the job stood (and why it waited).
            assert!(
                started.elapsed() < timeout,
                "timed out after {timeout:?} waiting for the job to end; it stood at {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The merged result bytes of a done job on node `i`.
    pub fn result(&self, i: usize, status: &JobStatus) -> Vec<u8> {
        let hash = status
            .result
            .as_deref()
            .and_then(peergrid_node::net::protocol::BlobHash::from_hex)
            .expect("a done job has a result");
        self.node(i)
            .state()
            .blobs()
            .get(&hash)
            .expect("read")
            .expect("the result blob is stored")
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i].node
    }

    /// Stops node `i` and starts it again on the same data dir and config (same
    /// identity, new port).
    pub async fn restart(&mut self, i: usize) -> Result<(), NodeError> {
        let TestNode { node, dir } = self.nodes.remove(i);
        let config = node.state().config().clone();
        node.shutdown().await;
        let node = Node::spawn(config).await?;
        self.nodes.insert(i, TestNode { node, dir });
        Ok(())
    }

    /// Shuts every node down in order.
    pub async fn shutdown(self) {
        for n in self.nodes {
            n.node.shutdown().await;
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics naming `what` after
/// `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
