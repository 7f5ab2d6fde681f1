//! # peergrid-node
//!
//! The peergrid peer: one program that lends spare CPU to others (worker), sends jobs
//! out and verifies their results (submitter), and answers its owner's CLI.
//!
//! # Layout
//! - [`types`]: the shared vocabulary (ids, hashes, payloads, limits, outcomes);
//!   imports nothing from the crate. [`files`]: owner-only writes, OS randomness.
//! - [`sandbox`]: the wasmtime engine, ABI v1 validation, the compile cache, limits
//!   and typed outcomes. Everything that runs guest code goes through it.
//! - [`local_grid`]: a submitter and workers in one process on loopback (demo,
//!   benchmarks).
//! - [`local`]: runs a whole job on this machine (split, every chunk, merge) through
//!   the sandbox: `peergrid run`, `demo` and `bench` use it.
//! - [`config`]: where the node keeps its files (`--data-dir`), the raw options
//!   (flags and `peergrid.toml`), sizes and durations given on the command line.
//!   [`settings`] resolves them into each subsystem's own config.
//! - [`net`]: libp2p. One event loop owns the Swarm; everything else holds a
//!   [`net::NetClient`]. Discovery, capacity adverts, blob exchange, penalties.
//! - [`store`]: the content-addressed blob directory and the SQLite database.
//! - [`worker`]: runs other peers' chunks within the lent slots; durable outbox;
//!   volunteer controls ([`worker::politeness`]: spare CPU, pause, preferences).
//! - [`scheduler`]: the submitter side: plans jobs, places replicas, verifies
//!   results by quorum, keeps reputation.
//! - [`api`]: the local control API (axum, token-guarded) the CLI talks to, the
//!   Prometheus `/metrics` listener ([`api::metrics`]), and [`NodeState`], what the
//!   handlers and the node's tasks share.
//! - [`metrics`]: one Prometheus registry per node; each subsystem defines its own
//!   struct of metrics (`<subsystem>::metrics`) and records where it handles its
//!   events.
//!
//! Lower modules never import higher ones (`docs/ARCHITECTURE.md`, "Layering"):
//! `types`, `files`, `metrics`, `config` < `store`, `sandbox` < `net` < `worker`,
//! `scheduler` < `settings` < `api` < `node` < `cli`.
//! - [`Node`]: starts the subsystems in order and shuts them down in order.
//! - [`cli`]: one file per subcommand; `main.rs` only parses and calls
//!   [`cli::Cli::execute`].

pub mod api;
pub mod cli;
pub mod config;
pub mod files;
pub mod local;
pub mod local_grid;
pub mod metrics;
pub mod net;
mod node;
pub mod sandbox;
pub mod scheduler;
pub mod settings;
pub mod store;
pub mod types;
pub mod worker;

pub use node::{ExecutorFactory, Node, NodeError, NodeState, Seams, load_or_create_identity};
