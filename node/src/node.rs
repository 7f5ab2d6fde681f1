//! The running peer: [`Node::spawn`] starts every subsystem, [`Node::shutdown`] stops
//! them in order.
//!
//! # Start
//! lock the data dir -> load (or create) the identity -> open the blob store, the
//! database and the sandbox (lazy: its engine is built when the first module
//! arrives), read the fuel speed kept in the data dir -> start the network -> wait
//! until it listens -> start the worker and the scheduler (which resumes unfinished
//! jobs) -> start the control API -> start the `/metrics` listener -> start the fuel
//! speed's measurement when none was kept (`node/speed.rs`, in the background), the
//! advertiser (which waits for the speed) and the inbound dispatcher. One metrics registry ([`Metrics`]) is made
//! first; each subsystem is given its own part of it.
//!
//! # Inside
//! - The *advertiser* publishes this node's [`CapacityAdvert`] every advert interval,
//!   and soon after the worker's capacity changes.
//! - The *dispatcher* (`node/inbound.rs`) takes inbound [`NetEvent`](net::NetEvent)s: blob requests are served from the
//!   blob store, result batches go to the [`Scheduler`] (both bounded by
//!   semaphores); task offers and cancels go to the [`Worker`], which answers at once.
//!
//! # Shutdown
//! stop accepting (control API, metrics listener) -> cancel the tasks and wait for
//! them (dispatcher, advertiser, scheduler, worker) -> close the network -> remove
//! `api.json` -> release the lock. Every result was already written before it was
//! acknowledged, so nothing needs flushing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId, identity};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::api;
use crate::api::state::AllMetrics;
pub use crate::api::state::NodeState;
use crate::config::DataDir;
use crate::files::write_private_file;
use crate::net::protocol::CapacityAdvert;
use crate::net::{self, NetClient};
use crate::sandbox::calibration::SpeedFile;
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::scheduler::{Scheduler, SchedulerContext};
use crate::settings::{BlobCacheLimit, NodeConfig};
use crate::store::{BlobStore, Db};
use crate::worker::{Executor, SandboxExecutor, Worker};

mod inbound;
pub(crate) mod speed;
use inbound::dispatch;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Another node holds the data dir.
    #[error(
        "another peergrid node is already running with data dir {0} (stop it, or give this one another --data-dir)"
    )]
    Locked(String),
    /// A file in the data dir could not be read or written.
    #[error("{what} in {path}: {source}")]
    DataDir {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The identity key file is corrupt.
    #[error(
        "the identity key {0} is corrupt; move it away to start with a new identity (the peer id will change)"
    )]
    Identity(String),
    /// The sandbox could not be set up.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// The network could not start.
    #[error(transparent)]
    Net(#[from] net::NetError),
    /// The database could not be opened.
    #[error(transparent)]
    Db(#[from] crate::store::DbError),
    /// The metrics listener could not start.
    #[error(
        "could not serve metrics on {addr}: {source} (is another node using it? pick another with --metrics, or --metrics off)"
    )]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The control API could not start.
    #[error(
        "could not serve the control API on {addr}: {source} (is another node using it? pick another with --api)"
    )]
    Api {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

fn data_dir_error(
    what: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> NodeError {
    let path = path.display().to_string();
    move |source| NodeError::DataDir { what, path, source }
}

/// Loads the node's identity key, creating it (owner-only) the first time, so the
/// peer id stays the same across restarts.
pub fn load_or_create_identity(data_dir: &DataDir) -> Result<identity::Keypair, NodeError> {
    let path = data_dir.identity();
    match std::fs::read(&path) {
        Ok(bytes) => identity::Keypair::from_protobuf_encoding(&bytes)
            .map_err(|_| NodeError::Identity(path.display().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = identity::Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| NodeError::Identity(e.to_string()))?;
            write_private_file(&path, &bytes)
                .map_err(data_dir_error("writing the identity key", &path))?;
            Ok(key)
        }
        Err(e) => Err(data_dir_error("reading the identity key", &path)(e)),
    }
}

/// Makes a node's executor from the node's own sandbox.
pub type ExecutorFactory = Box<dyn FnOnce(&Sandbox) -> Arc<dyn Executor> + Send>;

/// Seams for tests and demos: parts of a node that can be replaced. The release
/// daemon always uses the defaults.
#[derive(Default)]
pub struct Seams {
    /// What runs chunks (default: the sandbox). A `LyingExecutor` makes a dishonest
    /// worker. Given the node's sandbox, whose engine compiled the modules.
    pub executor: Option<ExecutorFactory>,
    /// Sign results with another key than the node's own: a worker that passes off
    /// answers as another peer's (submitters must reject them).
    #[cfg(feature = "test-utils")]
    pub forge_signatures: bool,
    /// Advertise 65 536 slots and take every offer: a peer that inflates its
    /// capacity to win placement (submitters must not reward it).
    #[cfg(feature = "test-utils")]
    pub inflate: bool,
}

impl std::fmt::Debug for Seams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seams")
            .field("executor", &self.executor.as_ref().map(|_| "custom"))
            .finish_non_exhaustive()
    }
}

impl Seams {
    /// A worker that lies on about `probability` of chunks (see `LyingExecutor`).
    #[allow(
        clippy::needless_update,
        reason = "the other fields exist only with the test-utils feature"
    )]
    pub fn liar(probability: f64, salt: u64) -> Self {
        Self {
            executor: Some(Box::new(move |sandbox: &Sandbox| {
                Arc::new(crate::worker::LyingExecutor::new(
                    sandbox.clone(),
                    probability,
                    salt,
                )) as Arc<dyn Executor>
            })),
            ..Self::default()
        }
    }

    /// A worker that answers its first `honest` chunks honestly (earning trust),
    /// then lies on every chunk.
    #[cfg(feature = "test-utils")]
    pub fn patient_liar(honest: u64, salt: u64) -> Self {
        Self {
            executor: Some(Box::new(move |sandbox: &Sandbox| {
                Arc::new(
                    crate::worker::LyingExecutor::new(sandbox.clone(), 1.0, salt)
                        .honest_first(honest),
                ) as Arc<dyn Executor>
            })),
            ..Self::default()
        }
    }

    /// A worker that advertises 65 536 slots and takes every offer.
    #[cfg(feature = "test-utils")]
    pub fn inflater() -> Self {
        Self {
            inflate: true,
            ..Self::default()
        }
    }

    /// A worker whose results are signed with a key that is not its own.
    #[cfg(feature = "test-utils")]
    pub fn forger() -> Self {
        Self {
            forge_signatures: true,
            ..Self::default()
        }
    }
}

/// A running peer.
#[derive(Debug)]
pub struct Node {
    state: Arc<NodeState>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    api: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
    metrics: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
    scheduler_task: tokio::task::JoinHandle<()>,
    net_task: tokio::task::JoinHandle<()>,
    _lock: std::fs::File,
}

impl Node {
    /// Starts a node (see the module docs for the order).
    pub async fn spawn(config: NodeConfig) -> Result<Node, NodeError> {
        Self::spawn_with(config, Seams::default()).await
    }

    /// Starts a node with some parts replaced (tests, demos).
    pub async fn spawn_with(config: NodeConfig, seams: Seams) -> Result<Node, NodeError> {
        let data_dir = config.data_dir.clone();
        let root = data_dir.root().to_path_buf();
        std::fs::create_dir_all(&root).map_err(data_dir_error("creating the data dir", &root))?;
        let lock = wait_for_data_dir_lock(&data_dir).await?;
        let keypair = load_or_create_identity(&data_dir)?;
        // Every task the node starts carries this span (`node = ` the short peer id),
        // so the logs of several nodes in one process (TestNet, demo) can be told apart.
        let peer = keypair.public().to_peer_id().to_string();
        let span = tracing::info_span!("node", node = %&peer[peer.len().saturating_sub(6)..]);
        Self::start(config, seams, lock, keypair)
            .instrument(span)
            .await
    }

    /// Starts the subsystems in order (see the module docs), inside the node's span.
    async fn start(
        config: NodeConfig,
        seams: Seams,
        lock: std::fs::File,
        keypair: identity::Keypair,
    ) -> Result<Node, NodeError> {
        let data_dir = config.data_dir.clone();
        let metrics = AllMetrics::new();
        let blobs = BlobStore::open(data_dir.blobs())
            .map_err(data_dir_error("opening the blob store", &data_dir.blobs()))?
            .with_min_free(config.min_free_disk);
        let db = Arc::new(Db::open(&data_dir.database())?.with_metrics(metrics.store.clone()));
        // Built when the first module arrives: an idle node never compiles (issue 19).
        let sandbox = Sandbox::lazy(
            SandboxConfig {
                cache_dir: Some(data_dir.module_cache()),
                cache_bytes: config.compile_cache,
                ..SandboxConfig::default()
            },
            metrics.sandbox.clone(),
        );
        // The fuel speed kept from an earlier start, else measured in the background
        // (`node/speed.rs`).
        let speed_file = SpeedFile::new(data_dir.fuel_speed());
        // Keyed by this binary and CPU, read once: the measurement stores under it.
        let speed_key = crate::sandbox::calibration::speed_key();
        let kept_speed = speed::kept(&speed_file, &speed_key);
        let (speed_tx, fuel_speed) = tokio::sync::watch::channel(kept_speed);

        let shutdown = CancellationToken::new();
        let network = net::start(
            &keypair,
            config.net.clone(),
            metrics.net.clone(),
            shutdown.child_token(),
        )?;
        let executor = match seams.executor {
            Some(make) => make(&sandbox),
            None => Arc::new(SandboxExecutor::new(sandbox.clone())),
        };
        #[cfg(feature = "test-utils")]
        let worker_net = if seams.forge_signatures {
            network
                .client
                .with_signer(identity::Keypair::generate_ed25519())
        } else {
            network.client.clone()
        };
        #[cfg(not(feature = "test-utils"))]
        let worker_net = network.client.clone();
        let worker = Worker::new(
            worker_net,
            blobs.clone(),
            db.clone(),
            sandbox.clone(),
            executor,
            // `cpus` is the one source of truth for the slots lent (tests change it).
            crate::worker::politeness::VolunteerConfig {
                preferences: crate::worker::politeness::Preferences {
                    cpus: config.cpus,
                    ..config.volunteer.preferences.clone()
                },
                ..config.volunteer.clone()
            },
            config.memory_per_chunk,
            crate::worker::WorkerLimits {
                max_fuel: config.max_fuel.unwrap_or_else(|| {
                    crate::worker::limits::default_max_fuel(kept_speed.unwrap_or(0))
                }),
                ..config.worker_limits
            },
            Some(data_dir.volunteer_state()),
            shutdown.child_token(),
            metrics.worker.clone(),
        );
        #[cfg(feature = "test-utils")]
        if seams.inflate {
            worker.inflate_for_tests();
        }
        let (scheduler, scheduler_task) = Scheduler::start(
            SchedulerContext {
                net: network.client.clone(),
                blobs: blobs.clone(),
                db: db.clone(),
                sandbox: sandbox.clone(),
                metrics: metrics.scheduler.clone(),
                local_worker: Some(worker.clone()),
                trust: config.trust,
                placement: config.placement,
                seed: None,
            },
            shutdown.child_token(),
        );
        {
            let scheduler = scheduler.clone();
            worker.set_local_scheduler(crate::worker::LocalResults(Arc::new(
                move |peer, batch| {
                    let scheduler = scheduler.clone();
                    Box::pin(async move { scheduler.results(peer, batch).await })
                },
            )));
        }
        let state = Arc::new(NodeState {
            net: network.client.clone(),
            blobs,
            db,
            worker,
            scheduler,
            config,
            fuel_speed,
            started: Instant::now(),
            metrics,
        });
        let listen = wait_for_listeners(&state.net, state.config.net.listen.len()).await;
        tracing::info!(
            peer_id = %state.net.local_peer_id(),
            listen = ?listen,
            fuel_per_sec = ?kept_speed,
            "node started"
        );

        let api = match state.config.api {
            Some(addr) => {
                let (bound, task) = api::serve(addr, state.clone(), shutdown.child_token())
                    .await
                    .map_err(|source| NodeError::Api { addr, source })?;
                Some((bound, task))
            }
            None => None,
        };
        let metrics = match state.config.metrics {
            Some(addr) => Some(
                api::metrics::serve(addr, state.clone(), shutdown.child_token())
                    .await
                    .map_err(|source| NodeError::Metrics { addr, source })?,
            ),
            None => None,
        };

        let mut tasks = JoinSet::new();
        if kept_speed.is_none() {
            tasks.spawn(
                speed::measure_and_keep(
                    state.clone(),
                    speed_tx,
                    speed_file,
                    speed_key,
                    sandbox.clone(),
                    state.config.calibrate_with.clone(),
                    shutdown.child_token(),
                )
                .in_current_span(),
            );
        }
        tasks.spawn(advertise(state.clone(), shutdown.child_token()).in_current_span());
        let cache_limit = match state.config.blob_cache {
            BlobCacheLimit::Off => None,
            BlobCacheLimit::Bytes(limit) => Some(limit),
            BlobCacheLimit::Auto => {
                let blobs = state.blobs.clone();
                let measured = tokio::task::spawn_blocking(move || {
                    let held = blobs.held().unwrap_or(0);
                    blobs
                        .free_space()
                        .map(|free| crate::store::blobs::auto_cache_limit(free, held))
                })
                .await
                .ok()
                .flatten();
                if let Some(limit) = measured {
                    tracing::info!(
                        limit_bytes = limit,
                        "blob cache limit (auto: 10 % of the free disk, at most 4 GiB)"
                    );
                }
                measured
            }
        };
        if let Some(limit) = cache_limit {
            tasks.spawn(
                keep_blob_cache(state.clone(), limit, shutdown.child_token()).in_current_span(),
            );
        }
        tasks.spawn(
            dispatch(state.clone(), network.events, shutdown.child_token()).in_current_span(),
        );

        Ok(Node {
            state,
            shutdown,
            tasks,
            api,
            metrics,
            scheduler_task,
            net_task: network.task,
            _lock: lock,
        })
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.state.net.local_peer_id()
    }

    /// The network handle.
    pub fn net(&self) -> &NetClient {
        &self.state.net
    }

    /// Shared state (blob store, sandbox, config).
    pub fn state(&self) -> &Arc<NodeState> {
        &self.state
    }

    /// Where the control API listens, when on.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(|(addr, _)| *addr)
    }

    /// Where `/metrics` is served, when on (the bound address, so port 0 works).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(addr, _)| *addr)
    }

    /// The addresses the node listens on, each with `/p2p/<peer id>` appended, as
    /// other peers would bootstrap from.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        let peer = self.peer_id();
        self.state
            .net
            .status()
            .await
            .map(|s| s.listen_addrs)
            .unwrap_or_default()
            .iter()
            .filter_map(|a| a.parse::<Multiaddr>().ok())
            .map(|a| a.with(libp2p::multiaddr::Protocol::P2p(peer)))
            .collect()
    }

    /// Stops the node in order: the control API, the node's tasks, the network.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some((_, api)) = self.api.take() {
            let _ = api.await;
        }
        if let Some((_, metrics)) = self.metrics.take() {
            let _ = metrics.await;
        }
        while self.tasks.join_next().await.is_some() {}
        let _ = (&mut self.scheduler_task).await;
        self.state.worker.join().await;
        let _ = (&mut self.net_task).await;
        let _ = std::fs::remove_file(self.state.config.data_dir.api_info());
        tracing::info!(peer_id = %self.peer_id(), "node stopped");
    }
}

/// How long a start waits for the data dir's lock before saying another node holds
/// it. A node killed a moment ago can still hold it for a few milliseconds: a child
/// process it was starting (the fuel calibration) shares the lock from its fork until
/// its exec, which a loaded machine can delay. A restart right after a kill then
/// failed with "already running" (seen in the test loop at load 7).
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// [`lock_data_dir`], tried again every 50 ms for [`LOCK_WAIT`] while another
/// process holds the lock.
async fn wait_for_data_dir_lock(data_dir: &DataDir) -> Result<std::fs::File, NodeError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match lock_data_dir(data_dir) {
            Err(NodeError::Locked(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            result => return result,
        }
    }
}

fn lock_data_dir(data_dir: &DataDir) -> Result<std::fs::File, NodeError> {
    let path = data_dir.lock_file();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(data_dir_error("opening the lock file", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(NodeError::Locked(data_dir.root().display().to_string()))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(data_dir_error("locking the data dir", &path)(e))
        }
    }
}

/// Waits (briefly) until every listener has reported an address.
async fn wait_for_listeners(net: &NetClient, listeners: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let addrs = net
            .status()
            .await
            .map(|s| s.listen_addrs)
            .unwrap_or_default();
        if addrs.len() >= listeners || Instant::now() > deadline {
            return addrs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes the capacity advert every interval, with a rising sequence number, and
/// on a capacity change that matters to placement (slots lent now, memory)
/// when the last advert is older than [`ADVERT_MIN_GAP`]: every advert costs every
/// peer a signature check, and submitters count what they have in flight
/// themselves, so a busy worker must not flood the topic.
async fn advertise(state: Arc<NodeState>, shutdown: CancellationToken) {
    // No advert before the fuel speed is known (a first start measures it in the
    // background): queries meanwhile get "nothing published yet", and the askers,
    // subscribed, are pushed the first advert.
    let mut speed = state.fuel_speed.clone();
    tokio::select! {
        _ = shutdown.cancelled() => return,
        known = speed.wait_for(Option::is_some) => if known.is_err() { return },
    }
    let mut tick = tokio::time::interval(state.config.advert_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Sequence numbers start from the clock so a restarted node's adverts are newer
    // than the ones its peers remember.
    let mut seq = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut last = Instant::now();
    // What submitters place work by: an early advert only when this changes.
    // (Free slots change with every chunk; submitters count what they have in
    // flight themselves, so those changes ride on the periodic advert.)
    let placement_key = |a: &CapacityAdvert| (a.slots_total, a.memory_limit);
    let mut published = None;
    // A change that came too soon after the last advert goes out when the gap is
    // over, not at the next tick (a worker that suspends must say so quickly).
    let mut deferred = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until((last + ADVERT_MIN_GAP).into()), if deferred => {
                deferred = false;
                if published == Some(placement_key(&state.advert(seq))) {
                    continue;
                }
            }
            _ = state.worker.capacity_changed() => {
                if published == Some(placement_key(&state.advert(seq))) {
                    continue;
                }
                if last.elapsed() < ADVERT_MIN_GAP {
                    deferred = true;
                    continue;
                }
            }
        }
        deferred = false;
        seq += 1;
        last = Instant::now();
        let advert = state.advert(seq);
        published = Some(placement_key(&advert));
        state.net.publish_advert(advert).await;
    }
}

/// How often the blob cache is brought under its disk limit.
const BLOB_CACHE_EVERY: Duration = Duration::from_secs(60);
/// Blobs used more recently than this are never evicted (work in flight uses them).
const BLOB_CACHE_GRACE: Duration = Duration::from_secs(600);

/// Keeps the blob cache under `limit` bytes: every minute, evicts the least recently
/// used blobs that nothing of this node's own refers to (see `Db::referenced_blobs`).
async fn keep_blob_cache(state: Arc<NodeState>, limit: u64, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(BLOB_CACHE_EVERY) => {}
        }
        let (db, blobs) = (state.db.clone(), state.blobs.clone());
        let evicted = tokio::task::spawn_blocking(move || {
            let pinned = db.referenced_blobs().map_err(|e| e.to_string())?;
            blobs
                .evict(limit, &pinned, BLOB_CACHE_GRACE)
                .map_err(|e| e.to_string())
        })
        .await;
        match evicted {
            Ok(Ok((held, n))) if n > 0 => {
                tracing::info!(evicted = n, held_bytes = held, "blob cache trimmed")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "could not trim the blob cache"),
            _ => {}
        }
    }
}

/// A capacity change is advertised at once only when the last advert is older.
const ADVERT_MIN_GAP: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    /// A lock let go of soon after (a killed node's child finishing its exec) is
    /// waited for; one held on is reported as another node.
    #[tokio::test]
    async fn a_start_waits_briefly_for_a_lock_that_is_being_let_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = DataDir::resolve(Some(dir.path().to_path_buf()));
        let held = lock_data_dir(&data_dir).expect("first lock");
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        let lock = wait_for_data_dir_lock(&data_dir)
            .await
            .expect("taken once let go");
        release.join().expect("released");
        let started = Instant::now();
        let err = wait_for_data_dir_lock(&data_dir).await.expect_err("held");
        assert!(matches!(err, NodeError::Locked(_)), "{err}");
        assert!(started.elapsed() >= LOCK_WAIT, "it waited before saying so");
        drop(lock);
    }
}
