//! peergrid's integration tests, one binary with a module per area (STYLE.md 15).

mod examples;
mod grid;
mod limits;
mod monitoring;
mod nat;
mod network;
mod scale;
mod trust;
mod volunteer;
mod wasi;
