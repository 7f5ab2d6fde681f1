//! Work this node does itself for its jobs, on blocking threads: merging the
//! verified outputs, running a chunk as a witness or spot check, reading a verified
//! output back. The [actor](super::actor) spawns these with
//! `tokio::task::spawn_blocking`; nothing here runs on the async runtime.

use crate::store::{BlobStore, Db};
use crate::types::{BlobHash, JobId, Payload, WireOutcome};

/// Runs merge over the verified outputs (in chunk order) and stores the result.
/// Without a merge export the job's result is its chunk outputs (`Ok(None)`).
pub(super) fn merge(
    blobs: &BlobStore,
    db: &Db,
    sandbox: &crate::sandbox::Sandbox,
    module_hash: BlobHash,
    job: JobId,
) -> Result<Option<BlobHash>, String> {
    let bytes = blobs
        .get(&module_hash)
        .map_err(|e| e.to_string())?
        .ok_or("the module is no longer in the blob store")?;
    let module = sandbox.load(&bytes).map_err(|e| e.to_string())?;
    if !module.has_merge {
        return Ok(None);
    }
    let data: Vec<Vec<u8>> = db
        .chunk_outputs(job)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|output| read_output(blobs, output))
        .collect::<Result<_, String>>()?;
    let exec = sandbox.merge(&module, &data, &crate::sandbox::Limits::SUBMITTER);
    match exec.outcome {
        crate::sandbox::Outcome::Ok(result) => {
            blobs.put(&result).map(Some).map_err(|e| e.to_string())
        }
        other => Err(other.to_string()),
    }
}

/// Runs one chunk on this node's sandbox (a witness or a spot check): the outcome
/// and output as a worker would report them.
pub(super) fn run_locally(
    blobs: &BlobStore,
    sandbox: &crate::sandbox::Sandbox,
    module_hash: BlobHash,
    input: &Payload,
    limits: &crate::sandbox::Limits,
) -> Result<(WireOutcome, Vec<u8>), String> {
    let bytes = blobs
        .get(&module_hash)
        .map_err(|e| e.to_string())?
        .ok_or("the module is no longer in the blob store")?;
    let module = sandbox.load(&bytes).map_err(|e| e.to_string())?;
    let input = match input {
        Payload::Inline(bytes) => bytes.clone(),
        Payload::Blob { hash, .. } => blobs
            .get(hash)
            .map_err(|e| e.to_string())?
            .ok_or("the chunk's input is no longer in the blob store")?,
    };
    let exec = sandbox.run_chunk(&module, &input, limits);
    crate::worker::wire_outcome(exec.outcome).ok_or_else(|| "the run was cancelled".to_string())
}

/// A verified output's bytes: from the database when kept there, else its blob.
pub(super) fn read_output(
    blobs: &BlobStore,
    (hash, data): (Option<BlobHash>, Option<Vec<u8>>),
) -> Result<Vec<u8>, String> {
    match (data, hash) {
        (Some(bytes), _) => Ok(bytes),
        (None, Some(h)) if h == BlobHash::of(b"") => Ok(Vec::new()),
        (None, Some(h)) => blobs
            .get(&h)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("verified output {h:?} is missing from the blob store")),
        (None, None) => Err("a chunk has no verified output".into()),
    }
}
