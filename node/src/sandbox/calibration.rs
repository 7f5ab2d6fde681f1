//! Fuel calibration: how much fuel one slot burns per second of CPU on this machine.
//! Adverts carry the figure and `--max-fuel auto` derives the worker's fuel maximum
//! from it.
//!
//! # Who talks to it
//! - [`measure`] runs a busy loop in a [`Sandbox`] (compiling it with Cranelift,
//!   which costs a process about 5 MB of code pages it otherwise never touches while
//!   idle: issue 19), so a node does not measure at every start: the figure is kept
//!   in the data dir ([`SpeedFile`], `fuel-speed.json`) under a [`speed_key`] (this
//!   binary and this CPU model), and measured again only when the key changes.
//! - The node (`node/speed.rs`) reads the file at start and, when it holds no figure
//!   for this key, measures in the background: in a child process (`peergrid
//!   calibrate-fuel`, which calls [`measure`] and prints the figure) when it runs
//!   from the peergrid binary, so the node's own memory never holds the compiler's
//!   pages, else on a blocking thread of its own (tests, in-process grids).

use std::path::{Path, PathBuf};

use super::{Entry, Limits, Sandbox, abi_v1};

/// Fuel one measuring run burns: a few tens of milliseconds on current CPUs.
const FUEL: u64 = 20_000_000;

/// The busy loop that is measured: an ABI v1 module whose `run` never returns, so a
/// call burns exactly its fuel.
const WAT: &str = r#"(module
  (import "peergrid" "log" (func (param i32 i32 i32)))
  (memory (export "memory") 1)
  (func (export "peergrid_abi_v1"))
  (func (export "peergrid_alloc") (param i32) (result i32) (i32.const 64))
  (func (export "peergrid_run") (param i32 i32) (result i32)
    (local $x i32)
    (loop $l
      (local.set $x (i32.add (i32.mul (local.get $x) (i32.const 31)) (i32.const 7)))
      (br $l))
    (i32.const 0)))"#;

/// Measures how much fuel one slot burns per second of CPU: a busy loop runs out of
/// [`FUEL`], three times, and the fastest run counts. CPU time of the calling thread,
/// not wall time, so other programs (or this thread's low priority) competing for
/// the core do not lower the figure; where the thread's CPU time cannot be read,
/// wall time. `None` when the module cannot be loaded (the engine did not start).
pub fn measure(sandbox: &Sandbox) -> Option<u64> {
    let module = sandbox.load(WAT.as_bytes()).ok()?;
    let limits = Limits {
        fuel: FUEL,
        ..Limits::CHUNK
    };
    // Straight to `abi_v1::call`: calibration is not a call for the metrics.
    (0..3)
        .map(|_| {
            let cpu = thread_cpu_time();
            let run = abi_v1::call(&sandbox.inner, &module, Entry::Run, b"", &limits, None);
            match (cpu, thread_cpu_time()) {
                (Some(before), Some(after)) if after > before => after - before,
                _ => run.elapsed,
            }
        })
        .min()
        .map(|t| (FUEL as f64 / t.as_secs_f64().max(1e-6)) as u64)
        .filter(|&f| f > 0)
}

/// CPU time used by the calling thread so far.
fn thread_cpu_time() -> Option<std::time::Duration> {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; the call writes only it.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        (rc == 0).then(|| {
            std::time::Duration::new(
                u64::try_from(ts.tv_sec).unwrap_or(0),
                u32::try_from(ts.tv_nsec).unwrap_or(0),
            )
        })
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// What a kept figure is valid for: this build of peergrid (version, and the
/// binary's size and modification time, so a rebuilt binary measures again) and
/// this CPU model. Another key means measure again.
pub fn speed_key() -> String {
    let binary = std::env::current_exe()
        .and_then(std::fs::metadata)
        .map(|m| {
            let modified = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            format!("{}:{modified}", m.len())
        })
        .unwrap_or_default();
    format!(
        "peergrid {} {binary} {} {}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        cpu_model()
    )
}

/// The CPU model's name (`/proc/cpuinfo`), or nothing where it cannot be read.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().chars().take(200).collect())
        })
        .unwrap_or_default()
}

/// The kept figure, in the data dir.
#[derive(Debug, Clone)]
pub struct SpeedFile {
    path: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    key: String,
    fuel_per_sec: u64,
}

impl SpeedFile {
    /// The file at `path` (it need not exist).
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The figure kept for `key`; `None` when there is none, it is for another key,
    /// or the file cannot be read.
    pub fn load(&self, key: &str) -> Option<u64> {
        let bytes = std::fs::read(&self.path).ok()?;
        if bytes.len() > 4096 {
            return None;
        }
        let kept: Kept = serde_json::from_slice(&bytes).ok()?;
        (kept.key == key && kept.fuel_per_sec > 0).then_some(kept.fuel_per_sec)
    }

    /// Keeps `fuel_per_sec` for `key` (atomically).
    pub fn store(&self, key: &str, fuel_per_sec: u64) -> std::io::Result<()> {
        let kept = Kept {
            key: key.to_string(),
            fuel_per_sec,
        };
        let bytes = serde_json::to_vec_pretty(&kept).map_err(std::io::Error::other)?;
        crate::files::write_private_file(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::SandboxConfig;

    #[test]
    fn a_figure_is_kept_for_its_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = SpeedFile::new(dir.path().join("fuel-speed.json"));
        assert_eq!(file.load("k"), None, "nothing kept yet");
        file.store("k", 1_234).unwrap();
        assert_eq!(file.load("k"), Some(1_234));
        assert_eq!(file.load("another binary or CPU"), None);
        std::fs::write(file.path(), b"{ not json").unwrap();
        assert_eq!(file.load("k"), None, "a damaged file is measured again");
    }

    #[test]
    fn the_key_names_this_build_and_cpu() {
        let key = speed_key();
        assert!(key.contains(env!("CARGO_PKG_VERSION")), "{key}");
        assert_eq!(key, speed_key(), "stable within a process");
    }

    #[test]
    fn a_lazy_sandbox_builds_its_engine_only_when_measuring() {
        let sandbox = Sandbox::lazy(SandboxConfig::default(), Default::default());
        assert!(!sandbox.is_built());
        let speed = measure(&sandbox).expect("a figure");
        assert!(sandbox.is_built());
        // Any machine that runs the tests burns more than a million fuel a second.
        assert!(speed > 1_000_000, "{speed}");
    }
}
