//! The content-addressed blob directory: `<dir>/<first two hex digits>/<blake3 hex>`.
//!
//! A blob enters only whole and verified: bytes are written to `<dir>/tmp/`, hashed
//! as they arrive, and renamed into place only when their BLAKE3 hash is the name
//! they were fetched under. Readers therefore never see a partial or wrong blob.
//! All methods block (plain file I/O); async callers use `spawn_blocking`.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use crate::net::protocol::BlobHash;

/// The blob directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
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
        Ok(Self { dir })
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
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
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
        let start = offset.min(total);
        let want = (u64::from(len)).min(total - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        let mut buf = vec![0u8; want];
        file.read_exact(&mut buf)?;
        Ok(Some((total, buf)))
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
}
