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

use super::{JobModule, SandboxError};

/// How many compiled modules stay in memory.
const MEMO_CAPACITY: usize = 64;
const MAC_LEN: usize = 32;

/// A fingerprint of everything that makes compiled code compatible: the engine's
/// configuration and wasmtime's version.
pub fn engine_fingerprint(engine: &Engine) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// The on-disk cache of compiled modules.
pub struct CompileCache {
    dir: PathBuf,
    key: [u8; 32],
    fingerprint: String,
}

impl std::fmt::Debug for CompileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompileCache")
            .field("dir", &self.dir)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl CompileCache {
    /// Opens (creating if needed) the cache in `dir`, with its MAC key.
    pub fn open(dir: PathBuf, engine: &Engine) -> Result<Self, SandboxError> {
        let err = |source| SandboxError::Cache {
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(err)?;
        let key = load_or_create_key(&dir.join("key")).map_err(err)?;
        Ok(Self {
            fingerprint: engine_fingerprint(engine),
            dir,
            key,
        })
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
