//! Durable state.
//!
//! - [`blobs`]: the content-addressed blob directory (modules, inputs, outputs),
//!   shared by the network (serving and fetching pieces), the worker and the scheduler.
//! - [`db`]: SQLite (WAL) with migrations: jobs, chunks, replicas and reputation for
//!   the scheduler; the outbox for the worker.

pub mod blobs;
pub mod db;
pub mod metrics;
mod rows;
mod schema;

pub use blobs::BlobStore;
pub use db::{Db, DbError, Write};
