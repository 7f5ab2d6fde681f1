//! The `/metrics` listener: Prometheus text format on its own address (default
//! `127.0.0.1:9464`, `--metrics ADDR`, `--metrics off`), apart from the control API.
//!
//! It needs no token: it is read-only, names no job, chunk or peer, and listens on
//! loopback unless the operator chooses otherwise. On each scrape it samples the
//! gauges that are snapshots of state (the worker's slots, queue and outbox; the
//! scheduler's jobs and chunks by state) and encodes the node's registry
//! ([`crate::metrics`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::state::NodeState;
use crate::metrics::Metrics;

/// Binds `addr` and serves `/metrics` until `shutdown` fires. Returns the bound
/// address (useful with port 0) and the server task.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<NodeState>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/", get(index))
        .with_state(state);
    let task = tokio::spawn(tracing::Instrument::in_current_span(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(e) = server.await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    }));
    tracing::info!(%bound, "metrics listening on /metrics");
    Ok((bound, task))
}

async fn metrics(State(state): State<Arc<NodeState>>) -> impl IntoResponse {
    sample(&state).await;
    (
        [(header::CONTENT_TYPE, Metrics::content_type())],
        state.metrics.encode(),
    )
}

async fn index() -> &'static str {
    "peergrid node: Prometheus metrics are at /metrics\n"
}

/// Sets the gauges that are snapshots of the node's state.
pub async fn sample(state: &NodeState) {
    state
        .metrics
        .worker
        .sample(&state.worker.status(), state.fuel_per_sec());
    state
        .metrics
        .worker
        .volunteer(&state.worker.volunteer_status());
    // The job and chunk gauges are kept by the scheduler itself (every tick).
}
