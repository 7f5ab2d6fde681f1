//! The local control API: JSON over HTTP on 127.0.0.1, for the `peergrid` CLI.
//!
//! Every request must carry `Authorization: Bearer <token>`, the token being the
//! contents of `api-token` in the data dir (owner-only, created once); without it the
//! answer is 401. When it starts, the server writes `api.json` (its address, pid and
//! peer id) into the data dir, which is how the CLI finds it; the node removes it at
//! shutdown. Handlers only read [`NodeState`] and ask the [`NetClient`](crate::net::NetClient).
//!
//! Endpoints (all GET, JSON): `/v1/status` ([`Status`]), `/v1/peers` ([`PeerInfo`] list).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{DataDir, random_bytes, write_private_file};
use crate::net::PeerInfo;
use crate::net::protocol::CapacityAdvert;
use crate::node::NodeState;

/// What `api.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiInfo {
    /// Where the API listens.
    pub addr: SocketAddr,
    /// The node's process id.
    pub pid: u32,
    /// The node's peer id.
    pub peer_id: String,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The node's peer id.
    pub peer_id: String,
    /// peergrid version.
    pub version: String,
    /// Seconds since start.
    pub uptime_s: f64,
    /// Addresses it listens on.
    pub listen_addrs: Vec<String>,
    /// Peers connected now.
    pub connected_peers: usize,
    /// Peers known.
    pub known_peers: usize,
    /// Fresh adverts in the capacity view.
    pub adverts_in_view: usize,
    /// Slots lent in total.
    pub slots_total: u32,
    /// Slots free now.
    pub slots_free: u32,
    /// Most memory per chunk, in bytes.
    pub memory_per_chunk: u64,
    /// Measured fuel per second of one slot.
    pub fuel_per_sec: u64,
    /// The advert last published.
    pub advert: Option<CapacityAdvert>,
    /// Offences counted against peers.
    pub offences: u64,
    /// Peers banned now.
    pub banned_peers: usize,
    /// Inbound requests dropped because the node was busy.
    pub dropped_inbound: u64,
}

/// Reads the token, creating it (random, owner-only) the first time.
pub fn load_or_create_token(data_dir: &DataDir) -> std::io::Result<String> {
    let path = data_dir.api_token();
    match std::fs::read_to_string(&path) {
        Ok(token) if token.trim().len() >= 32 => return Ok(token.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token: String = random_bytes::<32>()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    write_private_file(&path, token.as_bytes())?;
    Ok(token)
}

/// Binds the API, writes `api.json`, and serves until `shutdown` fires. Returns the
/// bound address (useful with port 0) and the server task.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<NodeState>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let data_dir = state.config.data_dir.clone();
    let token = Arc::new(load_or_create_token(&data_dir)?);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let info = ApiInfo {
        addr: bound,
        pid: std::process::id(),
        peer_id: state.net.local_peer_id().to_string(),
    };
    let json = serde_json::to_vec_pretty(&info).map_err(std::io::Error::other)?;
    write_private_file(&data_dir.api_info(), &json)?;

    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .layer(middleware::from_fn_with_state(token, require_token))
        .with_state(state);
    let task = tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(e) = server.await {
            tracing::error!(error = %e, "control API stopped");
        }
    });
    tracing::info!(%bound, "control API listening");
    Ok((bound, task))
}

async fn require_token(State(token): State<Arc<String>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare hashes: constant time, whatever the lengths.
    if blake3::hash(given.as_bytes()) != blake3::hash(token.as_bytes()) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({"error": "missing or wrong token (see api-token in the data dir)"})),
        )
            .into_response();
    }
    next.run(request).await
}

async fn status(State(state): State<Arc<NodeState>>) -> Result<Json<Status>, StatusCode> {
    let net = state
        .net
        .status()
        .await
        .ok_or(StatusCode::SERVICE_UNAVAILABLE)?;
    Ok(Json(Status {
        peer_id: net.peer_id,
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: state.started.elapsed().as_secs_f64(),
        listen_addrs: net.listen_addrs,
        connected_peers: net.connected_peers,
        known_peers: net.known_peers,
        adverts_in_view: net.adverts,
        slots_total: state.config.cpus,
        slots_free: net
            .own_advert
            .as_ref()
            .map_or(state.config.cpus, |a| a.slots_free),
        memory_per_chunk: state.config.memory_per_chunk,
        fuel_per_sec: state.fuel_per_sec,
        advert: net.own_advert,
        offences: net.offences,
        banned_peers: net.banned_peers,
        dropped_inbound: net.dropped_inbound,
    }))
}

async fn peers(State(state): State<Arc<NodeState>>) -> Json<Vec<PeerInfo>> {
    Json(state.net.peers().await)
}
