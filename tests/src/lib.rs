//! Helpers shared by peergrid's integration tests (`tests/all/`): running example
//! jobs in the sandbox ([`sandbox`]), a multi-node harness ([`testnet`]) and a real
//! Prometheus server ([`prometheus`]).

pub mod prometheus;
pub mod sandbox;
pub mod testnet;

pub use sandbox::{local_result, run_example_in_sandbox, run_example_natively, sandbox};
pub use testnet::{TestNet, wait_for};
