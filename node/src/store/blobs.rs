//! The content-addressed blob directory: `<dir>/<first two hex digits>/<blake3 hex>`.
//!
//! A blob enters only whole and verified: bytes are written to `<dir>/tmp/`, hashed
//! as they arrive, and renamed into place only when their BLAKE3 hash is the name
//! they were fetched under. Readers therefore never see a partial or wrong blob.
//!
//! The store can be kept under a disk limit ([`BlobStore::evict`], run by the node
//! every minute when `--blob-cache` is set): least recently used blobs go first, where
//! "used" is the file's modification time, which reads refresh. Blobs the caller
//! pins (everything the node's own jobs and outbox refer to) and blobs used within a
//! grace period (work in flight) are never evicted.
//! All methods block (plain file I/O); async callers use `spawn_blocking`.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use crate::types::BlobHash;

/// The blob directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
    /// Fetches refuse to leave less free disk than this.
    min_free: u64,
    /// Fetches into this store at once (`net::fetch` holds one per fetch).
    fetches: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Blob fetches into one store at once, by default.
pub const FETCH_CONCURRENCY: usize = 8;
/// Free disk a fetch never goes below, by default.
pub const DEFAULT_MIN_FREE: u64 = 1024 * 1024 * 1024;
/// The share of free disk the blob cache may use by default, in percent...
pub const AUTO_CACHE_PERCENT: u64 = 10;
/// ...and never more than this.
pub const AUTO_CACHE_MAX: u64 = 4 * 1024 * 1024 * 1024;

fn human(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}

/// The blob cache's default limit: [`AUTO_CACHE_PERCENT`] of the disk it could use
/// (what is free plus what it already holds), at most [`AUTO_CACHE_MAX`].
pub fn auto_cache_limit(free: u64, held: u64) -> u64 {
    let usable = u128::from(free.saturating_add(held));
    u64::try_from(usable * u128::from(AUTO_CACHE_PERCENT) / 100)
        .unwrap_or(u64::MAX)
        .min(AUTO_CACHE_MAX)
}

/// Why a blob could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The bytes do not hash to the expected name.
    #[error("blob bytes hash to {actual}, not {expected}")]
    HashMismatch {
        /// What was asked for.
        expected: BlobHash,
        /// What arrived.
        actual: BlobHash,
    },
    /// More or fewer bytes than announced.
    #[error("blob {hash} announced {expected} bytes but {actual} arrived")]
    SizeMismatch {
        /// The blob.
        hash: BlobHash,
        /// Announced size.
        expected: u64,
        /// Received size.
        actual: u64,
    },
    /// File system trouble (full disk, permissions).
    #[error("blob store I/O: {0}")]
    Io(#[from] io::Error),
}

impl BlobStore {
    /// Opens (creating) the store in `dir`, clearing leftovers of interrupted writes.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        let tmp = dir.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        Ok(Self {
            dir,
            min_free: DEFAULT_MIN_FREE,
            fetches: std::sync::Arc::new(tokio::sync::Semaphore::new(FETCH_CONCURRENCY)),
        })
    }

    /// Fetches into this store leave at least `bytes` of disk free.
    pub fn with_min_free(mut self, bytes: u64) -> Self {
        self.min_free = bytes;
        self
    }

    /// Waits for one of the store's fetch slots (held for the whole fetch).
    pub async fn fetch_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.fetches.clone().acquire_owned().await.ok()
    }

    /// Free disk where the blobs live, in bytes (`None` where it cannot be told).
    pub fn free_space(&self) -> Option<u64> {
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let path = std::ffi::CString::new(self.dir.as_os_str().as_bytes()).ok()?;
            // SAFETY: a zeroed statvfs is a valid value of a plain C struct, and
            // `statvfs` only writes into it; `path` is a NUL-terminated string that
            // outlives the call.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: see above.
            if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
                return None;
            }
            #[allow(clippy::unnecessary_cast)]
            Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
        }
        #[cfg(not(unix))]
        {
            None
        }
    }

    /// Whether `bytes` more fit on the disk above the free-space floor; the error
    /// says how much is free, for the log. Blocks (a `statvfs`).
    pub fn room_for(&self, bytes: u64) -> Result<(), String> {
        let Some(free) = self.free_space() else {
            return Ok(());
        };
        if free < bytes.saturating_add(self.min_free) {
            return Err(format!(
                "the disk is nearly full: {} free in {}, and {} more would leave less than \
                 the {} kept free (--min-free-disk); free some space or lower --blob-cache",
                human(free),
                self.dir.display(),
                human(bytes),
                human(self.min_free),
            ));
        }
        Ok(())
    }

    /// Bytes the blobs hold now.
    pub fn held(&self) -> io::Result<u64> {
        self.evict(
            u64::MAX,
            &std::collections::HashSet::new(),
            std::time::Duration::ZERO,
        )
        .map(|(held, _)| held)
    }

    /// Where a blob lives (whether or not it is there).
    pub fn path(&self, hash: &BlobHash) -> PathBuf {
        let hex = hash.to_hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// Whether the blob is stored.
    pub fn contains(&self, hash: &BlobHash) -> bool {
        self.path(hash).is_file()
    }

    /// The blob's size, when stored.
    pub fn size(&self, hash: &BlobHash) -> Option<u64> {
        fs::metadata(self.path(hash)).ok().map(|m| m.len())
    }

    /// Stores bytes under their hash and returns it.
    pub fn put(&self, bytes: &[u8]) -> Result<BlobHash, BlobError> {
        let hash = BlobHash::of(bytes);
        if !self.contains(&hash) {
            let mut writer = self.writer(hash, bytes.len() as u64)?;
            writer.write(bytes)?;
            writer.finish()?;
        }
        Ok(hash)
    }

    /// Reads a whole blob.
    pub fn get(&self, hash: &BlobHash) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path(hash)) {
            Ok(bytes) => {
                self.touch(hash);
                Ok(Some(bytes))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes a blob (nothing if it is not there).
    pub fn remove(&self, hash: &BlobHash) -> io::Result<()> {
        match fs::remove_file(self.path(hash)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Reads at most `len` bytes at `offset`; returns the blob's total size too.
    pub fn read_piece(
        &self,
        hash: &BlobHash,
        offset: u64,
        len: u32,
    ) -> io::Result<Option<(u64, Vec<u8>)>> {
        let mut file = match File::open(self.path(hash)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let total = file.metadata()?.len();
        if offset == 0 {
            self.touch(hash);
        }
        let start = offset.min(total);
        let want = (u64::from(len)).min(total - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        let mut buf = vec![0u8; want];
        file.read_exact(&mut buf)?;
        Ok(Some((total, buf)))
    }

    /// Marks a blob as used now (for least-recently-used eviction).
    fn touch(&self, hash: &BlobHash) {
        if let Ok(file) = File::options().write(true).open(self.path(hash)) {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
    }

    /// Evicts least recently used blobs until the store holds at most `limit` bytes,
    /// never one in `pinned` nor one used within `grace`. Returns (bytes held after,
    /// blobs evicted).
    pub fn evict(
        &self,
        limit: u64,
        pinned: &std::collections::HashSet<BlobHash>,
        grace: std::time::Duration,
    ) -> io::Result<(u64, usize)> {
        let mut blobs = Vec::new();
        let mut total = 0u64;
        for shard in fs::read_dir(&self.dir)? {
            let shard = shard?;
            if shard.file_name() == "tmp" || !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(shard.path())? {
                let entry = entry?;
                let Ok(meta) = entry.metadata() else {
                    continue;
                };
                total += meta.len();
                let hash = entry.file_name().to_str().and_then(BlobHash::from_hex);
                if let Some(hash) = hash.filter(|h| !pinned.contains(h)) {
                    let used = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                    blobs.push((used, hash, meta.len()));
                }
            }
        }
        if total <= limit {
            return Ok((total, 0));
        }
        blobs.sort();
        let now = std::time::SystemTime::now();
        let mut evicted = 0;
        for (used, hash, len) in blobs {
            if total <= limit {
                break;
            }
            if now.duration_since(used).unwrap_or_default() < grace {
                continue;
            }
            if fs::remove_file(self.path(&hash)).is_ok() {
                total -= len;
                evicted += 1;
            }
        }
        Ok((total, evicted))
    }

    /// Starts writing a blob that should hash to `hash` and be `total` bytes long.
    pub fn writer(&self, hash: BlobHash, total: u64) -> io::Result<BlobWriter> {
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).map_err(io::Error::other)?;
        let tmp = self.dir.join("tmp").join(format!(
            "{}-{:016x}",
            hash.to_hex(),
            u64::from_le_bytes(suffix)
        ));
        let file = File::create(&tmp)?;
        Ok(BlobWriter {
            final_path: self.path(&hash),
            tmp,
            file: Some(file),
            hasher: blake3::Hasher::new(),
            expected: hash,
            total,
            written: 0,
        })
    }
}

/// A blob being written. Dropped unfinished, it leaves nothing behind.
#[derive(Debug)]
pub struct BlobWriter {
    final_path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    hasher: blake3::Hasher,
    expected: BlobHash,
    total: u64,
    written: u64,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends bytes; refuses to go past the announced size.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        let after = self.written + bytes.len() as u64;
        if after > self.total {
            return Err(BlobError::SizeMismatch {
                hash: self.expected,
                expected: self.total,
                actual: after,
            });
        }
        if let Some(file) = self.file.as_mut() {
            file.write_all(bytes)?;
        }
        self.hasher.update(bytes);
        self.written = after;
        Ok(())
    }

    /// Checks size and hash, then moves the blob into place.
    pub fn finish(mut self) -> Result<(), BlobError> {
        if self.written != self.total {
            return Err(BlobError::SizeMismatch {
                hash: self.expected,
                expected: self.total,
                actual: self.written,
            });
        }
        let actual = BlobHash(*self.hasher.finalize().as_bytes());
        if actual != self.expected {
            return Err(BlobError::HashMismatch {
                expected: self.expected,
                actual,
            });
        }
        if let Some(file) = self.file.take() {
            file.sync_all()?;
        }
        if let Some(parent) = self.final_path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::rename(&self.tmp, &self.final_path)?;
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.tmp.exists() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_drops_the_least_recently_used_unpinned_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let day = std::time::Duration::from_secs(86_400);
        let blob = |i: u8, age_days: u32| {
            let hash = store.put(&[i; 1000]).unwrap();
            let file = File::options().write(true).open(store.path(&hash)).unwrap();
            file.set_modified(std::time::SystemTime::now() - day * age_days)
                .unwrap();
            hash
        };
        let (oldest, pinned, old, new) = (blob(1, 9), blob(2, 8), blob(3, 7), blob(4, 0));
        let pins: std::collections::HashSet<_> = [pinned].into();
        // Under the limit: nothing goes.
        assert_eq!(store.evict(4000, &pins, day).unwrap(), (4000, 0));
        // Reading a blob makes it recent; recent blobs (work in flight) stay.
        store.get(&oldest).unwrap();
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(store.evict(2500, &pins, hour).unwrap(), (3000, 1));
        assert!(
            !store.contains(&old),
            "the least recently used unpinned blob went"
        );
        assert!(store.contains(&oldest) && store.contains(&new));
        // Without a grace period the next least recently used goes; the pin holds.
        assert_eq!(
            store.evict(2500, &pins, std::time::Duration::ZERO).unwrap(),
            (2000, 1)
        );
        assert!(store.contains(&pinned));
    }

    #[test]
    fn put_get_and_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let hash = store.put(&data).unwrap();
        assert!(store.contains(&hash));
        assert_eq!(store.get(&hash).unwrap().unwrap(), data);
        assert_eq!(store.size(&hash), Some(5000));
        let (total, piece) = store.read_piece(&hash, 4000, 2000).unwrap().unwrap();
        assert_eq!((total, piece.as_slice()), (5000, &data[4000..]));
        let (_, past) = store.read_piece(&hash, 9999, 10).unwrap().unwrap();
        assert!(past.is_empty());
        assert!(
            store
                .read_piece(&BlobHash::of(b"no"), 0, 1)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn wrong_bytes_never_enter_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let hash = BlobHash::of(b"right");
        let mut w = store.writer(hash, 5).unwrap();
        w.write(b"wrong").unwrap();
        assert!(matches!(w.finish(), Err(BlobError::HashMismatch { .. })));
        assert!(!store.contains(&hash));
        let mut w = store.writer(hash, 5).unwrap();
        assert!(matches!(
            w.write(b"too long"),
            Err(BlobError::SizeMismatch { .. })
        ));
        drop(w);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn the_default_cache_is_a_tenth_of_the_usable_disk_at_most_4_gib() {
        const GIB: u64 = 1 << 30;
        let table = [
            // (free, held by the cache, limit)
            (0, 0, 0),
            (10 * GIB, 0, GIB),
            (9 * GIB, GIB, GIB),
            (1000 * GIB, 0, 4 * GIB),
            (u64::MAX, u64::MAX, 4 * GIB),
        ];
        for (free, held, limit) in table {
            assert_eq!(auto_cache_limit(free, held), limit, "{free} {held}");
        }
    }

    #[test]
    fn nothing_is_fetched_below_the_free_space_floor() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let free = store.free_space().expect("statvfs works here");
        assert!(free > 0);
        assert!(store.room_for(0).is_ok() || free < DEFAULT_MIN_FREE);
        let floor = BlobStore::open(dir.path())
            .unwrap()
            .with_min_free(free.saturating_add(1 << 40));
        let why = floor.room_for(0).unwrap_err();
        assert!(
            why.contains("nearly full") && why.contains("--min-free-disk"),
            "{why}"
        );
        let none = BlobStore::open(dir.path()).unwrap().with_min_free(0);
        assert!(none.room_for(1).is_ok());
        assert!(
            none.room_for(u64::MAX).is_err(),
            "a blob larger than the disk"
        );
    }
}
