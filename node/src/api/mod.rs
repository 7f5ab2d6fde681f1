//! The local control API: JSON over HTTP on 127.0.0.1, for the `peergrid` CLI.
//!
//! Every request must carry `Authorization: Bearer <token>`, the token being the
//! contents of `api-token` in the data dir (owner-only, created once); without it the
//! answer is 401. When it starts, the server writes `api.json` (its address, pid and
//! peer id) into the data dir, which is how the CLI finds it; the node removes it at
//! shutdown. Handlers only read [`NodeState`] and ask the [`NetClient`](crate::net::NetClient).
//!
//! Endpoints:
//!
//! | method, path | what |
//! |---|---|
//! | `GET /v1/status` | the node ([`Status`]) |
//! | `GET /v1/peers` | known peers ([`PeerInfo`] list) |
//! | `POST /v1/blobs` | store the body as a blob; `{"hash"}` |
//! | `POST /v1/jobs` | submit ([`SubmitRequest`]); `{"id"}`, or 400 with `{"error"}` |
//! | `GET /v1/jobs`, `GET /v1/jobs/{id}` | [`JobStatus`] |
//! | `GET /v1/jobs/{id}/events` | server-sent events, one [`JobStatus`] per change, until it ends |
//! | `GET /v1/jobs/{id}/evidence` | every disagreement: each peer's signed answer ([`ChunkEvidence`](crate::scheduler::ChunkEvidence) list) |
//! | `GET /v1/jobs/{id}/result` | the merged result's bytes |
//! | `GET /v1/jobs/{id}/chunks/{n}` | one chunk's verified output |
//! | `POST /v1/jobs/{id}/cancel` | cancel |
//! | `GET /v1/preferences` | the volunteer's preferences in force ([`Preferences`]) |
//! | `PUT /v1/preferences` | change some ([`PreferenceChanges`]; `?reset=true` first drops earlier changes); the new [`Preferences`], or 400 |
//! | `POST /v1/pause` | pause the worker ([`PauseRequest`]: `{"for": "30m"}`, or `{}` until resumed) |
//! | `POST /v1/resume` | end a pause |

pub mod metrics;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use self::state::NodeState;
use crate::config::{DataDir, random_bytes, write_private_file};
use crate::net::PeerInfo;
use crate::net::protocol::CapacityAdvert;
use crate::scheduler::{JobStatus, SubmitRequest, parse_job_id};
use crate::worker::WorkerStatus;
use crate::worker::politeness::{PreferenceChanges, PreferenceError, Preferences, VolunteerStatus};

/// Largest upload (a module or an input file).
const MAX_UPLOAD: usize = 1024 * 1024 * 1024;

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
    /// Slots lent now (fewer than `--cpus` when the machine is busy, 0 while
    /// suspended).
    pub slots_total: u32,
    /// Slots free now.
    pub slots_free: u32,
    /// Most memory per chunk, in bytes.
    pub memory_per_chunk: u64,
    /// Measured fuel per CPU second of one slot (0 in the first second or so after
    /// a node's first start, while it is measured).
    pub fuel_per_sec: u64,
    /// The advert last published.
    pub advert: Option<CapacityAdvert>,
    /// Offences counted against peers.
    pub offences: u64,
    /// Peers banned now.
    pub banned_peers: usize,
    /// IP addresses banned now (offences under any identities).
    #[serde(default)]
    pub banned_addresses: usize,
    /// Inbound requests dropped because the node was busy.
    pub dropped_inbound: u64,
    /// The worker side.
    pub worker: WorkerStatus,
    /// The volunteer controls: working or not, and why.
    pub volunteer: VolunteerStatus,
    /// Jobs this node submitted that are still running.
    pub jobs_running: usize,
    /// Whether peers can reach this node (public, behind NAT through a relay, …).
    #[serde(default)]
    pub reachability: Option<crate::net::reachability::ReachabilityStatus>,
    /// The volunteer's bandwidth caps and the bytes sent and fetched under them.
    #[serde(default)]
    pub bandwidth: Option<crate::net::bandwidth::BandwidthStatus>,
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
        .route("/v1/blobs", post(put_blob))
        .route("/v1/jobs", post(submit).get(jobs))
        .route("/v1/jobs/{id}", get(job))
        .route("/v1/jobs/{id}/events", get(job_events))
        .route("/v1/jobs/{id}/evidence", get(job_evidence))
        .route("/v1/jobs/{id}/result", get(job_result))
        .route("/v1/jobs/{id}/chunks/{chunk}", get(chunk_output))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/preferences", get(get_preferences).put(put_preferences))
        .route("/v1/pause", post(pause))
        .route("/v1/resume", post(resume))
        .layer(DefaultBodyLimit::max(MAX_UPLOAD))
        .layer(middleware::from_fn_with_state(token, require_token))
        .with_state(state);
    let task = tokio::spawn(tracing::Instrument::in_current_span(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(e) = server.await {
            tracing::error!(error = %e, "control API stopped");
        }
    }));
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
    let worker = state.worker.status();
    Ok(Json(Status {
        peer_id: net.peer_id,
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: state.started.elapsed().as_secs_f64(),
        listen_addrs: net.listen_addrs,
        connected_peers: net.connected_peers,
        known_peers: net.known_peers,
        adverts_in_view: net.adverts,
        slots_total: worker.slots_total,
        slots_free: worker.slots_free,
        memory_per_chunk: state.config.memory_per_chunk,
        fuel_per_sec: state.fuel_per_sec(),
        advert: net.own_advert,
        offences: net.offences,
        banned_peers: net.banned_peers,
        banned_addresses: net.banned_addresses,
        dropped_inbound: net.dropped_inbound,
        worker,
        volunteer: state.worker.volunteer_status(),
        reachability: net.reachability,
        bandwidth: Some(state.net.bandwidth()),
        jobs_running: state
            .scheduler
            .counts()
            .await
            .iter()
            .filter(|(s, _)| !s.is_final())
            .map(|(_, n)| *n as usize)
            .sum(),
    }))
}

async fn peers(State(state): State<Arc<NodeState>>) -> Json<Vec<PeerInfo>> {
    Json(state.net.peers().await)
}

/// An error answer: status and `{"error": message}`.
fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// An error answer the handlers return with `?`.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

fn job_id(id: &str) -> Result<crate::net::protocol::JobId, ApiError> {
    parse_job_id(id).ok_or_else(|| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("'{id}' is not a job id (32 hex digits, see `peergrid jobs`)"),
        )
    })
}

async fn put_blob(State(state): State<Arc<NodeState>>, body: axum::body::Bytes) -> Response {
    let blobs = state.blobs.clone();
    match tokio::task::spawn_blocking(move || blobs.put(&body)).await {
        Ok(Ok(hash)) => Json(serde_json::json!({ "hash": hash.to_hex() })).into_response(),
        Ok(Err(e)) => error(StatusCode::INSUFFICIENT_STORAGE, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn submit(State(state): State<Arc<NodeState>>, Json(req): Json<SubmitRequest>) -> Response {
    match state.scheduler.submit(req).await {
        Ok(id) => {
            Json(serde_json::json!({ "id": crate::scheduler::job_id_hex(&id) })).into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn jobs(State(state): State<Arc<NodeState>>) -> Json<Vec<JobStatus>> {
    Json(state.scheduler.status(None).await)
}

fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such job on this node".into())
}

async fn job(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    let id = job_id(&id)?;
    let mut status = state
        .scheduler
        .status(Some(id))
        .await
        .pop()
        .ok_or_else(not_found)?;
    // A job waiting for peers may wait because nobody outside this node's network
    // can reach it: say so beside the scheduler's reason.
    if let Some(why) = status.why.as_mut()
        && let Some(reach) = state.net.status().await.and_then(|n| n.reachability)
        && reach.verdict == crate::net::reachability::Verdict::Private
    {
        why.push_str("; this node is ");
        why.push_str(&reach.text);
    }
    Ok(Json(status))
}

async fn job_evidence(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
) -> Result<Json<Vec<crate::scheduler::ChunkEvidence>>, ApiError> {
    let id = job_id(&id)?;
    state
        .scheduler
        .evidence(id)
        .await
        .map(Json)
        .ok_or_else(not_found)
}

async fn job_events(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let mut rx = state.scheduler.subscribe(id).await.ok_or_else(not_found)?;
    let stream = async_stream(move |tx| async move {
        loop {
            let status = rx.borrow_and_update().clone();
            let done = status.state.is_final();
            let Ok(event) = Event::default().json_data(&status) else {
                break;
            };
            if tx
                .send(Ok::<_, std::convert::Infallible>(event))
                .await
                .is_err()
                || done
            {
                break;
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// A stream fed by a task through a small bounded channel.
fn async_stream<T, F, Fut>(f: F) -> impl futures::Stream<Item = T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

async fn blob_response(state: &NodeState, hash: crate::net::protocol::BlobHash) -> Response {
    let blobs = state.blobs.clone();
    match tokio::task::spawn_blocking(move || blobs.get(&hash)).await {
        Ok(Ok(Some(bytes))) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
        }
        _ => error(StatusCode::NOT_FOUND, "the blob is missing from the store"),
    }
}

async fn job_result(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let status = state
        .scheduler
        .status(Some(id))
        .await
        .pop()
        .ok_or_else(not_found)?;
    let hash = status
        .result
        .as_deref()
        .and_then(crate::net::protocol::BlobHash::from_hex)
        .ok_or_else(|| {
            ApiError(
                StatusCode::CONFLICT,
                format!(
                    "job {} has no merged result (state: {:?})",
                    status.id, status.state
                ),
            )
        })?;
    Ok(blob_response(&state, hash).await)
}

async fn chunk_output(
    State(state): State<Arc<NodeState>>,
    Path((id, chunk)): Path<(String, u32)>,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    match state.scheduler.chunk_output(id, chunk).await {
        Some(bytes) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
        }
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            "that chunk has no verified output".into(),
        )),
    }
}

async fn cancel(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = job_id(&id)?;
    state
        .scheduler
        .cancel(id)
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .ok_or_else(not_found)?;
    Ok(Json(serde_json::json!({ "cancelled": true })))
}

/// `POST /v1/pause`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {
    /// How long, e.g. `30m`; absent: until `POST /v1/resume`.
    #[serde(default, rename = "for")]
    pub duration: Option<String>,
}

/// `PUT /v1/preferences` query.
#[derive(Debug, Clone, Default, Deserialize)]
struct PreferencesQuery {
    #[serde(default)]
    reset: bool,
}

async fn get_preferences(State(state): State<Arc<NodeState>>) -> Json<Preferences> {
    Json(state.worker.preferences())
}

async fn put_preferences(
    State(state): State<Arc<NodeState>>,
    axum::extract::Query(query): axum::extract::Query<PreferencesQuery>,
    Json(changes): Json<PreferenceChanges>,
) -> Result<Json<Preferences>, ApiError> {
    state
        .worker
        .set_preferences(&changes, query.reset)
        .await
        .map(Json)
        .map_err(|e| match e {
            PreferenceError::Invalid(m) => ApiError(StatusCode::BAD_REQUEST, m),
            e @ PreferenceError::Io(_) => {
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        })
}

async fn pause(
    State(state): State<Arc<NodeState>>,
    Json(req): Json<PauseRequest>,
) -> Result<Json<VolunteerStatus>, ApiError> {
    let duration = req
        .duration
        .as_deref()
        .map(crate::config::parse_duration)
        .transpose()
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    state.worker.pause(duration).await.map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not keep the pause in the data dir: {e}"),
        )
    })?;
    Ok(Json(state.worker.volunteer_status()))
}

async fn resume(State(state): State<Arc<NodeState>>) -> Result<Json<VolunteerStatus>, ApiError> {
    state.worker.resume().await.map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not keep the resume in the data dir: {e}"),
        )
    })?;
    Ok(Json(state.worker.volunteer_status()))
}
