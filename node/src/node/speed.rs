//! The node's fuel speed: how much fuel one slot burns per CPU second here. Adverts
//! carry it, `status` and `/metrics` show it, and with `--max-fuel auto` the
//! worker's fuel maximum follows it.
//!
//! [`Node`](super::Node) reads the figure kept in the data dir at start
//! ([`SpeedFile`]); when there is none for this binary and CPU (a first start, an
//! upgrade), [`measure_and_keep`] runs as one of the node's tasks: it measures in the
//! background, never blocking start-up, keeps the figure, and publishes it on the
//! watch channel that [`NodeState`](crate::api::state::NodeState) reads. The
//! advertiser publishes nothing until the figure is known (a query meanwhile gets
//! "nothing published yet" and the asker is pushed the first advert as a
//! subscriber), so no advert claims a speed that was not measured.
//!
//! Measuring compiles a module with Cranelift. From the peergrid binary
//! (`NodeConfig::calibrate_with`) it runs in a child process, `peergrid
//! calibrate-fuel`, at the lowest priority, so the node's own memory never holds the
//! compiler's pages while it is idle (issue 19); elsewhere (tests, in-process
//! grids) on a blocking thread. Both count the CPU time of the measuring thread, so
//! a busy machine or a low priority does not lower the figure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::state::NodeState;
use crate::sandbox::Sandbox;
use crate::sandbox::calibration::{self, SpeedFile};

/// The hidden subcommand that measures in a child process and prints the figure.
pub(crate) const CALIBRATE_COMMAND: &str = "calibrate-fuel";

/// How long the child may take (it needs well under a second).
const CHILD_DEADLINE: Duration = Duration::from_secs(60);

/// The figure kept under `key` (this binary and CPU, [`calibration::speed_key`]), if
/// any.
pub(super) fn kept(file: &SpeedFile, key: &str) -> Option<u64> {
    file.load(key)
}

/// Measures the fuel speed (in a child running `binary`, else in `sandbox`),
/// keeps it in `file` under `key`, publishes it on `speed` and, with `--max-fuel auto`, raises
/// the worker's fuel maximum to match. A measurement that fails publishes 0 (the
/// advert goes out all the same, saying nothing of the speed), with a warning.
pub(super) async fn measure_and_keep(
    state: Arc<NodeState>,
    speed: watch::Sender<Option<u64>>,
    file: SpeedFile,
    key: String,
    sandbox: Sandbox,
    binary: Option<PathBuf>,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    let cancel = shutdown.clone();
    let measuring = tokio::task::spawn_blocking(move || {
        let from_child = binary
            .as_deref()
            .and_then(|binary| measure_in_child(binary, &cancel));
        let how = if from_child.is_some() {
            "child process"
        } else {
            "this process"
        };
        let fuel = from_child.or_else(|| calibration::measure(&sandbox));
        (fuel, how)
    });
    let (fuel, how) = tokio::select! {
        _ = shutdown.cancelled() => return,
        measured = measuring => measured.unwrap_or((None, "this process")),
    };
    let fuel = match fuel {
        Some(fuel) => {
            tracing::info!(fuel_per_sec = fuel, took = ?started.elapsed(), how, "fuel speed measured");
            let file = file.clone();
            let kept = tokio::task::spawn_blocking(move || file.store(&key, fuel)).await;
            if let Ok(Err(e)) = kept {
                tracing::warn!(error = %e, "could not keep the measured fuel speed (it is measured again at the next start)");
            }
            fuel
        }
        None => {
            tracing::warn!(
                "could not measure this machine's fuel speed; adverts say 0 and --max-fuel auto stays at its floor"
            );
            0
        }
    };
    if state.config.max_fuel.is_none() {
        state
            .worker
            .set_max_fuel(crate::worker::limits::default_max_fuel(fuel));
    }
    speed.send_replace(Some(fuel));
}

/// Runs `binary calibrate-fuel` and reads the figure it prints; `None` when it
/// cannot start, fails, says something else, or takes longer than
/// [`CHILD_DEADLINE`] (it is killed) or the node stops meanwhile.
fn measure_in_child(binary: &Path, shutdown: &CancellationToken) -> Option<u64> {
    let mut child = Command::new(binary)
        .arg(CALIBRATE_COMMAND)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| tracing::debug!(error = %e, "could not start the calibration child"))
        .ok()?;
    let deadline = Instant::now() + CHILD_DEADLINE;
    let ok = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.success(),
            Ok(None) if Instant::now() < deadline && !shutdown.is_cancelled() => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
        }
    };
    if !ok {
        return None;
    }
    // At most a line: the child's whole output is one number.
    let mut out = String::new();
    use std::io::Read;
    child
        .stdout
        .take()?
        .take(64)
        .read_to_string(&mut out)
        .ok()?;
    out.trim().parse().ok().filter(|&f: &u64| f > 0)
}
