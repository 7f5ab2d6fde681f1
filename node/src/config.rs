//! Configuration shared by every command: where the node keeps its files, and the
//! parsers for human-readable sizes and durations used by flags.
//!
//! Two phases (STYLE.md 8): clap parses raw values; [`DataDir::resolve`] derives the
//! defaults. The daemon's own `peergrid.toml` joins here with the network issue.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The directory a node owns: identity, config, token, store, caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// `--data-dir` / `PEERGRID_DATA_DIR` when given, else the platform's data
    /// directory (`~/.local/share/peergrid` on Linux), else `./.peergrid`.
    pub fn resolve(flag: Option<PathBuf>) -> Self {
        let root = flag
            .or_else(|| dirs::data_dir().map(|d| d.join("peergrid")))
            .unwrap_or_else(|| PathBuf::from(".peergrid"));
        Self { root }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where compiled modules are cached.
    pub fn module_cache(&self) -> PathBuf {
        self.root.join("cache").join("modules")
    }
}

/// Parses a size such as `256MiB`, `1 GB` or `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("'{s}' is not a size such as 256MiB or 1GB: {e}"))
}

/// Parses a duration such as `30s`, `5m` or `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("'{s}' is not a duration such as 30s or 5m: {e}"))
}

/// Parses a fuel amount: a plain number, optionally with a k/M/G/T suffix (`50G`).
pub fn parse_fuel(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1_000),
        Some((i, 'M')) => (&t[..i], 1_000_000),
        Some((i, 'G')) => (&t[..i], 1_000_000_000),
        Some((i, 'T')) => (&t[..i], 1_000_000_000_000u64),
        _ => (t, 1),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("'{s}' is not a fuel amount such as 5000000000 or 50G"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_values() {
        assert_eq!(parse_size("256MiB"), Ok(256 * 1024 * 1024));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_fuel("50G"), Ok(50_000_000_000));
        assert_eq!(parse_fuel("123"), Ok(123));
        assert!(parse_fuel("G").is_err());
        assert!(parse_fuel("99999999999999T").is_err());
    }

    #[test]
    fn data_dir_flag_wins() {
        let d = DataDir::resolve(Some("/tmp/x".into()));
        assert_eq!(d.root(), Path::new("/tmp/x"));
        assert!(d.module_cache().starts_with("/tmp/x"));
    }
}
