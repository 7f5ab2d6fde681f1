//! Fetching a blob by hash from the peers that hold it.
//!
//! The first piece tells the size; the rest are requested a few at a time (a bounded
//! window) and written in order into a [`BlobWriter`](crate::store::blobs::BlobWriter),
//! which hashes as it goes and admits the blob into the store only when the BLAKE3
//! hash matches. A holder that answers with inconsistent pieces or bytes that do not
//! match the hash is penalised, and the next holder is tried.
//!
//! Bounded: at most [`FETCH_CONCURRENCY`](crate::store::blobs::FETCH_CONCURRENCY)
//! fetches into one store at once; nothing is fetched while the disk has less free
//! than the store's floor (`--min-free-disk`), nor a blob that would take it below;
//! a caller may cap the size ([`fetch_blob_max`]: modules).

use futures::stream::{FuturesOrdered, StreamExt};
use libp2p::PeerId;

use super::NetClient;
use super::protocol::{BLOB_PIECE_BYTES, BlobHash, BlobReply, BlobRequest, MAX_BLOB_BYTES};
use crate::store::blobs::{BlobError, BlobStore, BlobWriter};

/// Piece requests in flight per fetch.
const WINDOW: usize = 4;

/// Why a blob could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No holder was given, or none had it.
    #[error("no peer could provide blob {hash}: {}", describe(.tried))]
    Unavailable {
        /// The blob.
        hash: BlobHash,
        /// Each holder tried and what went wrong.
        tried: Vec<(PeerId, String)>,
    },
    /// The blob is larger than the caller accepts (a holder said so in its first
    /// piece; nothing more was fetched).
    #[error("blob {hash} is {size} bytes, more than the {max} accepted here")]
    TooLarge {
        /// The blob.
        hash: BlobHash,
        /// Its size, as the holder announced it.
        size: u64,
        /// The most accepted.
        max: u64,
    },
    /// The disk is nearly full: nothing is fetched (the reason says how full).
    #[error("not fetching blob {hash}: {why}")]
    DiskFull {
        /// The blob.
        hash: BlobHash,
        /// How much is free and what is kept free.
        why: String,
    },
    /// Our own store failed (full disk, permissions).
    #[error("storing blob {hash}: {source}")]
    Store {
        /// The blob.
        hash: BlobHash,
        /// The error.
        source: std::io::Error,
    },
}

fn describe(tried: &[(PeerId, String)]) -> String {
    if tried.is_empty() {
        return "no holders known".into();
    }
    tried
        .iter()
        .map(|(p, e)| format!("{p}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What went wrong with one holder.
enum HolderError {
    /// It does not have the blob, or could not be reached: try the next.
    Missing(String),
    /// It sent something inconsistent or wrong: penalise, try the next.
    Lied(String),
    /// Our side failed: stop.
    Local(std::io::Error),
    /// Larger than the caller accepts: stop.
    TooLarge(u64),
    /// The disk has no room for it: stop.
    DiskFull(String),
}

/// Fetches `hash` into `store` from the first of `holders` that provides it whole and
/// correct. Returns at once when the store already has it.
pub async fn fetch_blob(
    client: &NetClient,
    store: &BlobStore,
    hash: BlobHash,
    holders: &[PeerId],
) -> Result<(), FetchError> {
    fetch_blob_max(client, store, hash, holders, MAX_BLOB_BYTES).await
}

/// [`fetch_blob`] of a blob of at most `max` bytes: a larger one is refused after
/// its first piece (which announces the size).
pub async fn fetch_blob_max(
    client: &NetClient,
    store: &BlobStore,
    hash: BlobHash,
    holders: &[PeerId],
    max: u64,
) -> Result<(), FetchError> {
    if store.contains(&hash) {
        return Ok(());
    }
    // At most a few fetches at once into one store (each holds a window of pieces).
    let _slot = store.fetch_slot().await;
    if store.contains(&hash) {
        return Ok(());
    }
    // Nothing at all while the disk is nearly full; the size is checked again
    // once the first piece tells it.
    room(store, hash, 0).await?;
    let mut tried = Vec::new();
    for &peer in holders {
        match fetch_from(client, store, hash, peer, max).await {
            Ok(()) => return Ok(()),
            Err(HolderError::Missing(why)) => tried.push((peer, why)),
            Err(HolderError::Lied(why)) => {
                client
                    .penalize(peer, format!("bad blob {hash:?}: {why}"))
                    .await;
                tried.push((peer, why));
            }
            Err(HolderError::Local(source)) => return Err(FetchError::Store { hash, source }),
            Err(HolderError::TooLarge(size)) => {
                return Err(FetchError::TooLarge { hash, size, max });
            }
            Err(HolderError::DiskFull(why)) => return Err(FetchError::DiskFull { hash, why }),
        }
    }
    Err(FetchError::Unavailable { hash, tried })
}

/// Whether `bytes` more fit on the store's disk (off the async threads); logs a
/// warning when not.
async fn room(store: &BlobStore, hash: BlobHash, bytes: u64) -> Result<(), FetchError> {
    let probe = store.clone();
    match tokio::task::spawn_blocking(move || probe.room_for(bytes)).await {
        Ok(Err(why)) => {
            tracing::warn!(blob = %hash, "{why}");
            Err(FetchError::DiskFull { hash, why })
        }
        _ => Ok(()),
    }
}

fn request(hash: BlobHash, offset: u64) -> BlobRequest {
    BlobRequest {
        hash,
        offset,
        len: BLOB_PIECE_BYTES,
    }
}

async fn piece(
    client: &NetClient,
    peer: PeerId,
    hash: BlobHash,
    offset: u64,
) -> Result<(u64, Vec<u8>), HolderError> {
    match client.get_blob_piece(peer, request(hash, offset)).await {
        Ok(BlobReply::Piece {
            total,
            offset: got,
            bytes,
        }) => {
            if got != offset {
                return Err(HolderError::Lied(format!(
                    "asked for offset {offset}, got {got}"
                )));
            }
            if bytes.len() > BLOB_PIECE_BYTES as usize
                || total > MAX_BLOB_BYTES
                || offset + bytes.len() as u64 > total
                || (bytes.is_empty() && offset < total)
            {
                return Err(HolderError::Lied(format!(
                    "inconsistent piece ({} bytes at {offset} of {total})",
                    bytes.len()
                )));
            }
            Ok((total, bytes))
        }
        Ok(BlobReply::NotFound) => Err(HolderError::Missing("does not hold it".into())),
        Err(e) => Err(HolderError::Missing(e.to_string())),
    }
}

async fn write(writer: BlobWriter, bytes: Vec<u8>) -> Result<BlobWriter, HolderError> {
    tokio::task::spawn_blocking(move || {
        let mut writer = writer;
        writer.write(&bytes).map(|()| writer)
    })
    .await
    .map_err(|e| HolderError::Local(std::io::Error::other(e)))?
    .map_err(store_error)
}

fn store_error(e: BlobError) -> HolderError {
    match e {
        BlobError::Io(io) => HolderError::Local(io),
        other => HolderError::Lied(other.to_string()),
    }
}

async fn fetch_from(
    client: &NetClient,
    store: &BlobStore,
    hash: BlobHash,
    peer: PeerId,
    max: u64,
) -> Result<(), HolderError> {
    let (total, first) = piece(client, peer, hash, 0).await?;
    if total > max {
        return Err(HolderError::TooLarge(total));
    }
    if let Err(FetchError::DiskFull { why, .. }) = room(store, hash, total).await {
        return Err(HolderError::DiskFull(why));
    }
    let mut writer = store.writer(hash, total).map_err(HolderError::Local)?;
    let mut next = first.len() as u64;
    writer = write(writer, first).await?;
    let mut in_flight = FuturesOrdered::new();
    loop {
        while in_flight.len() < WINDOW && next < total {
            let offset = next;
            in_flight.push_back(async move { (offset, piece(client, peer, hash, offset).await) });
            next = (next + u64::from(BLOB_PIECE_BYTES)).min(total);
        }
        let Some((offset, result)) = in_flight.next().await else {
            break;
        };
        let (piece_total, bytes) = result?;
        if piece_total != total {
            return Err(HolderError::Lied(format!(
                "size changed from {total} to {piece_total}"
            )));
        }
        if offset != writer.written() {
            return Err(HolderError::Lied("pieces out of order".into()));
        }
        let short = (bytes.len() as u64) < u64::from(BLOB_PIECE_BYTES)
            && offset + (bytes.len() as u64) < total;
        writer = write(writer, bytes).await?;
        if short {
            return Err(HolderError::Lied("a short piece before the end".into()));
        }
    }
    tokio::task::spawn_blocking(move || writer.finish())
        .await
        .map_err(|e| HolderError::Local(std::io::Error::other(e)))?
        .map_err(store_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nobody is reachable (and nobody is asked: the disk check comes first).
    struct Nobody;

    impl crate::net::sim::SimulatedPeers for Nobody {
        fn peers(&mut self) -> Vec<crate::net::PeerInfo> {
            Vec::new()
        }

        fn task(
            &mut self,
            _peer: PeerId,
            _request: super::super::protocol::TaskRequest,
        ) -> Result<super::super::protocol::TaskReply, crate::net::RequestError> {
            Err(crate::net::RequestError::Unreachable)
        }
    }

    #[tokio::test]
    async fn a_nearly_full_disk_refuses_a_fetch_before_asking_anyone() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap().with_min_free(u64::MAX);
        let client = NetClient::simulated(&libp2p::identity::Keypair::generate_ed25519(), Nobody);
        let hash = BlobHash::of(b"wanted");
        let err = fetch_blob(&client, &store, hash, &[PeerId::random()])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, FetchError::DiskFull { why, .. } if why.contains("nearly full")),
            "{err}"
        );
        // With room, the same fetch asks the holder (who cannot be reached).
        let store = BlobStore::open(dir.path()).unwrap().with_min_free(0);
        let err = fetch_blob(&client, &store, hash, &[PeerId::random()])
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Unavailable { .. }), "{err}");
    }
}
