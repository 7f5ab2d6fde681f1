//! Durable state. [`blobs`]: the content-addressed blob directory (modules, large
//! inputs, outputs), shared by the network (serving and fetching pieces) and, later,
//! the worker and scheduler. The SQLite database joins here with the grid issue.

pub mod blobs;

pub use blobs::BlobStore;
