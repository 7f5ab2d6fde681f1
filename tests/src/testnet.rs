//! `TestNet`: N real peergrid nodes in this process, real libp2p on loopback, each
//! with its own temporary data dir; node 0 is the bootstrap of every other. Waiting
//! is done with [`wait_for`] and a timeout, never a bare sleep.

use std::future::Future;
use std::time::{Duration, Instant};

use peergrid_node::config::{DataDir, NodeConfig, NodeOptions};
use peergrid_node::{Node, NodeError};

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
        init_logging();
        let mut nodes: Vec<TestNode> = Vec::with_capacity(n);
        let mut bootstrap = Vec::new();
        for i in 0..n {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut config = test_config(dir.path(), &bootstrap);
            adjust(i, &mut config);
            let node = Node::spawn(config).await.expect("node starts");
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

    /// Node `i`.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i].node
    }

    /// Stops node `i` and starts it again on the same data dir and config (same
    /// identity, new port).
    pub async fn restart(&mut self, i: usize) -> Result<(), NodeError> {
        let TestNode { node, dir } = self.nodes.remove(i);
        let config = node.state().config.clone();
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
