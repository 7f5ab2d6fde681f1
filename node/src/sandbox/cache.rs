//! Compiled-module caches: a small in-memory memo of ready modules, and a disk cache
//! of compiled artifacts so a module is compiled once per machine, not once per run.
//!
//! Disk entries are named `<module-blake3>-<engine-fingerprint>.cwasm`, so a change of
//! engine configuration or wasmtime version never loads a stale artifact. Loading
//! compiled code is `unsafe` in wasmtime (it is trusted machine code), so every file
//! starts with a BLAKE3 MAC keyed by a secret that only this node has (`key`, owner-only
//! permissions); a file that fails the check is deleted and the module recompiled.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use wasmtime::{Engine, Module};

use super::{JobModule, NanMode, SandboxError};

/// How many compiled modules stay in memory.
const MEMO_CAPACITY: usize = 64;
const MAC_LEN: usize = 32;

/// A fingerprint of everything that makes compiled code compatible: the engine's
/// configuration, wasmtime's version, and what is done to a module before it is
/// compiled ([`Rewrites`]).
pub fn engine_fingerprint(engine: &Engine, rewrites: Rewrites) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    if rewrites.nan == NanMode::Observable {
        ("nan-rewrite", super::nan::REWRITE_VERSION).hash(&mut hasher);
    }
    if rewrites.unroll_loops {
        ("unroll", super::unroll::UNROLL_VERSION).hash(&mut hasher);
    }
    if rewrites.reduce_multiplies {
        ("strength", super::strength::STRENGTH_VERSION).hash(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
}

/// What is done to a module's bytes before Cranelift compiles it, as far as it makes
/// compiled code differ (each rewrite's version goes into the fingerprint too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrites {
    /// How NaNs are canonicalised.
    pub nan: NanMode,
    /// Whether small innermost loops are unrolled.
    pub unroll_loops: bool,
    /// Whether multiplications by 3, 5 and 9 become a shift and an add.
    pub reduce_multiplies: bool,
}

impl Rewrites {
    /// The rewrites `config` asks for.
    pub fn of(config: &super::SandboxConfig) -> Self {
        Self {
            nan: config.nan,
            unroll_loops: config.unroll_loops,
            reduce_multiplies: config.reduce_multiplies,
        }
    }
}

/// The on-disk cache of compiled modules, kept under a size: least recently used
/// artifacts go first (a hit refreshes a file's time), and artifacts of another
/// engine fingerprint (an older wasmtime or configuration) go when it opens.
pub struct CompileCache {
    dir: PathBuf,
    key: [u8; 32],
    fingerprint: String,
    max_bytes: u64,
}

/// The compile cache's default size on disk.
pub const DEFAULT_COMPILE_CACHE_BYTES: u64 = 512 * 1024 * 1024;

impl std::fmt::Debug for CompileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompileCache")
            .field("dir", &self.dir)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl CompileCache {
    /// Opens (creating if needed) the cache in `dir`, with its MAC key, holding at
    /// most `max_bytes` of artifacts.
    pub fn open(
        dir: PathBuf,
        engine: &Engine,
        rewrites: Rewrites,
        max_bytes: u64,
    ) -> Result<Self, SandboxError> {
        let err = |source| SandboxError::Cache {
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(err)?;
        let key = load_or_create_key(&dir.join("key")).map_err(err)?;
        let cache = Self {
            fingerprint: engine_fingerprint(engine, rewrites),
            dir,
            key,
            max_bytes,
        };
        cache.trim();
        Ok(cache)
    }

    /// Deletes stale artifacts (another engine's), then the least recently used
    /// ones until the rest hold at most `max_bytes`. Returns the bytes kept.
    pub fn trim(&self) -> u64 {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let suffix = format!("-{}.cwasm", self.fingerprint);
        let mut files = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".cwasm") {
                continue;
            }
            if !name.ends_with(&suffix) {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            if let Ok(meta) = entry.metadata() {
                let used = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                files.push((used, meta.len(), entry.path()));
            }
        }
        let mut held: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, len, path) in files {
            if held <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                held -= len;
            }
        }
        held
    }

    fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}-{}.cwasm", self.fingerprint))
    }

    /// Loads a compiled module, or `None` when it is absent, tampered with or stale.
    pub fn load(&self, engine: &Engine, hash: &str) -> Option<Module> {
        let path = self.path(hash);
        let bytes = std::fs::read(&path).ok()?;
        let valid = bytes.len() > MAC_LEN && {
            let (mac, artifact) = bytes.split_at(MAC_LEN);
            let expected = blake3::keyed_hash(&self.key, artifact);
            // blake3::Hash compares in constant time.
            <[u8; MAC_LEN]>::try_from(mac).is_ok_and(|m| expected == blake3::Hash::from(m))
        };
        if !valid {
            tracing::warn!(path = %path.display(), "compiled module failed its integrity check; recompiling");
            let _ = std::fs::remove_file(&path);
            return None;
        }
        if let Ok(file) = std::fs::File::options().write(true).open(&path) {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
        // SAFETY: the artifact was written by this node (the keyed MAC proves it) from
        // wasmtime's own `Module::serialize`, for an engine with this fingerprint.
        match unsafe { Module::deserialize(engine, &bytes[MAC_LEN..]) } {
            Ok(module) => Some(module),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cached module unusable; recompiling");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores a compiled module. Failures only cost a recompile later, so they are
    /// logged, not returned.
    pub fn store(&self, hash: &str, module: &Module) {
        let result = module
            .serialize()
            .map_err(std::io::Error::other)
            .and_then(|artifact| {
                let mac = blake3::keyed_hash(&self.key, &artifact);
                let mut file = mac.as_bytes().to_vec();
                file.extend_from_slice(&artifact);
                crate::files::write_private_file(&self.path(hash), &file)
            });
        if let Err(e) = result {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not cache a compiled module");
        }
        self.trim();
    }
}

/// Reads the cache's MAC key, creating it (random, owner-only) the first time.
fn load_or_create_key(path: &Path) -> std::io::Result<[u8; 32]> {
    match std::fs::read(path) {
        Ok(bytes) => {
            if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
                return Ok(key);
            }
            tracing::warn!(path = %path.display(), "cache key has the wrong size; replacing it");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let key = crate::files::random_bytes::<32>()?;
    crate::files::write_private_file(path, &key)?;
    Ok(key)
}

/// Recently used modules, ready to instantiate. Bounded; the oldest entry goes first.
#[derive(Default)]
pub(crate) struct ModuleMemo {
    inner: Mutex<(HashMap<String, JobModule>, VecDeque<String>)>,
}

impl ModuleMemo {
    pub(crate) fn get(&self, hash: &str) -> Option<JobModule> {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.get(hash).cloned()
    }

    pub(crate) fn insert(&self, hash: String, module: JobModule) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *guard;
        if map.insert(hash.clone(), module).is_none() {
            order.push_back(hash);
        }
        while order.len() > MEMO_CAPACITY {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRODUCTION: Rewrites = Rewrites {
        nan: NanMode::Observable,
        unroll_loops: true,
        reduce_multiplies: true,
    };

    #[test]
    fn the_disk_cache_keeps_the_most_recently_used_under_its_size_and_drops_stale_files() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let module = |n: usize| {
            let text = format!("(module {})", "(func)".repeat(n));
            Module::new(&engine, text).unwrap()
        };
        let (a, b, c) = (module(10), module(20), module(30));
        let size = |m: &Module| (m.serialize().unwrap().len() + MAC_LEN) as u64;
        // Room for any two of them, not three.
        let max = size(&a) + size(&b) + size(&c) - size(&a).min(size(&b)).min(size(&c)) + 1;
        let stale = dir
            .path()
            .join(format!("{}-0000000000000000.cwasm", "0".repeat(64)));
        std::fs::write(&stale, b"old engine").unwrap();
        let cache = CompileCache::open(dir.path().into(), &engine, PRODUCTION, max).unwrap();
        assert!(!stale.exists(), "another engine's artifact is dropped");
        let set_age = |hash: &str, secs: u64| {
            let file = std::fs::File::options()
                .write(true)
                .open(cache.path(hash))
                .unwrap();
            file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
                .unwrap();
        };
        cache.store("a", &a);
        set_age("a", 1_000);
        cache.store("b", &b);
        set_age("b", 2_000);
        // `a` is used: it becomes the most recent.
        assert!(cache.load(&engine, "a").is_some());
        cache.store("c", &c);
        assert!(cache.path("a").exists(), "used most recently: kept");
        assert!(!cache.path("b").exists(), "least recently used: evicted");
        assert!(cache.path("c").exists(), "just stored: kept");
        assert!(cache.trim() <= max);
    }

    #[test]
    fn code_compiled_from_the_rewritten_module_never_loads_for_the_module_as_sent() {
        // The same engine configuration (Cranelift's canonicalisation off) compiles
        // the rewritten module in production and the module as sent with `Off`.
        let engine = Engine::default();
        let production = engine_fingerprint(&engine, PRODUCTION);
        for other in [
            Rewrites {
                nan: NanMode::Off,
                ..PRODUCTION
            },
            Rewrites {
                unroll_loops: false,
                ..PRODUCTION
            },
            Rewrites {
                reduce_multiplies: false,
                ..PRODUCTION
            },
        ] {
            assert_ne!(production, engine_fingerprint(&engine, other), "{other:?}");
        }
    }
}
