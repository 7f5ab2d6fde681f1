//! `peergrid calibrate-fuel` (hidden): measures this machine's fuel speed and prints
//! it. A node runs it as a child process on its first start, so that the compiler's
//! memory is never its own (`node/speed.rs`); nobody else needs it.

use std::process::ExitCode;

use crate::sandbox::calibration;
use crate::sandbox::{Sandbox, SandboxConfig};

/// Measures at the lowest priority and prints fuel per CPU second of one slot.
pub(super) fn execute() -> anyhow::Result<ExitCode> {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on the calling thread (who = 0) has no memory effects.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    let fuel = calibration::measure(&sandbox)
        .ok_or_else(|| anyhow::anyhow!("the calibration module did not run"))?;
    println!("{fuel}");
    Ok(ExitCode::SUCCESS)
}
