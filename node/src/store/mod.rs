//! Durable state.
//!
//! - [`blobs`]: the content-addressed blob directory (modules, inputs, outputs),
//!   shared by the network (serving and fetching pieces), the worker and the scheduler.
//! - [`db`]: SQLite (WAL) with migrations (`schema`): jobs, chunks, replicas and
//!   reputation for the scheduler; the outbox for the worker. The row types and the
//!   [`Write`]s are in `rows` (re-exported by [`db`]), and how each lands in SQL in
//!   `apply`. Async code writes through [`Db::write`] (a small batch commits inline
//!   when the connection is free, anything else on a blocking thread) and reads
//!   through [`Db::run`], on a blocking thread. The outbox's own reads (keyset pages,
//!   usage per submitter, expiry) are in `outbox`.

mod apply;
pub mod blobs;
pub mod db;
pub mod metrics;
mod outbox;
mod rows;
mod schema;

pub use blobs::BlobStore;
pub use db::{Db, DbError, Write};
pub use outbox::{OutboxKey, OutboxUsage};
