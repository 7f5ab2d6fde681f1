//! # pow: proof-of-work nonce search
//!
//! Finds the smallest nonce `n < max_nonce` such that
//! `blake3(data ‖ n as 8 little-endian bytes)` starts with at least `difficulty` zero
//! bits (counting from the most significant bit of the first hash byte).
//!
//! **Params** (JSON, every field optional):
//! - `data`: the string to prove work for, at most 1024 bytes of UTF-8 (default
//!   `"peergrid"`).
//! - `difficulty`: leading zero bits required, `1 ..= 40` (default `20`; about
//!   `2^difficulty` hashes are expected).
//! - `max_nonce`: search the nonces `0 .. max_nonce`, `1 ..= 2^40` (default `16777216`,
//!   2^24).
//! - `chunk_size`: nonces per chunk, at least 1 and such that there are at most 100000
//!   chunks (default `65536`, 2^16).
//!
//! **Split**: `0..max_nonce` into consecutive ranges of `chunk_size` nonces (the last one
//! may be shorter); one [`Input`] per range, carrying the data and difficulty.
//!
//! **Run**: hashes the range's nonces in increasing order and stops at the first one
//! meeting the difficulty. Outputs an [`Output`]: the range, and [`Found`] (the nonce
//! and its 32-byte hash) or nothing.
//!
//! **Merge**: checks the ranges tile `0..max_nonce` in order with the same data and
//! difficulty, takes the first range that found a nonce (so the smallest nonce
//! overall), re-hashes it to verify it, and returns [`Summary`] as JSON:
//! `{"data", "difficulty", "max_nonce", "found": true, "nonce", "hash": "<64 hex digits>",
//! "leading_zero_bits"}`, or `"found": false` with `nonce`, `hash` and
//! `leading_zero_bits` null and a `note` saying no nonce below `max_nonce` qualifies.

use peergrid_sdk::Json;
use serde::{Deserialize, Serialize};

/// One line about the job.
pub const ABOUT: &str = "Proof of work: finds the smallest nonce whose BLAKE3 hash with the data has enough leading zero bits";

/// The default params, as JSON.
pub const DEFAULT_PARAMS: &str =
    r#"{"data": "peergrid", "difficulty": 20, "max_nonce": 16777216, "chunk_size": 65536}"#;

/// One line per param: `name: meaning (default)`.
pub const PARAMS_HELP: &str = "\
data: the string hashed before each nonce, at most 1024 bytes (\"peergrid\")
difficulty: leading zero bits the hash needs, 1 to 40 (20)
max_nonce: search the nonces 0 to max_nonce - 1, at most 2^40 (16777216)
chunk_size: nonces per chunk, at most 100000 chunks in all (65536)";

/// The most bytes of `data`.
pub const MAX_DATA_BYTES: usize = 1024;

/// The largest difficulty accepted.
pub const MAX_DIFFICULTY: u32 = 40;

/// The largest `max_nonce` accepted (2^40).
pub const MAX_NONCE: u64 = 1 << 40;

/// The most chunks a job may be split into.
pub const MAX_CHUNKS: u64 = 100_000;

/// The job's params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// The string hashed before each nonce.
    pub data: String,
    /// Leading zero bits the hash needs.
    pub difficulty: u32,
    /// Search the nonces `0 .. max_nonce`.
    pub max_nonce: u64,
    /// Nonces per chunk.
    pub chunk_size: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            data: "peergrid".to_string(),
            difficulty: 20,
            max_nonce: 1 << 24,
            chunk_size: 1 << 16,
        }
    }
}

/// One chunk: search the nonces `start .. end`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    /// The string hashed before each nonce.
    pub data: String,
    /// Leading zero bits the hash needs.
    pub difficulty: u32,
    /// First nonce to try.
    pub start: u64,
    /// One past the last nonce to try.
    pub end: u64,
}

/// A nonce meeting the difficulty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Found {
    /// The nonce.
    pub nonce: u64,
    /// `blake3(data ‖ nonce.to_le_bytes())`.
    pub hash: [u8; 32],
}

/// What one chunk found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// The string hashed before each nonce.
    pub data: String,
    /// Leading zero bits the hash needed.
    pub difficulty: u32,
    /// First nonce tried.
    pub start: u64,
    /// One past the last nonce of the range.
    pub end: u64,
    /// The smallest nonce of the range meeting the difficulty, if any.
    pub found: Option<Found>,
}

/// The job's result (written as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The string hashed before each nonce.
    pub data: String,
    /// Leading zero bits required.
    pub difficulty: u32,
    /// The nonces searched were `0 .. max_nonce`.
    pub max_nonce: u64,
    /// Whether a nonce was found.
    pub found: bool,
    /// The smallest nonce meeting the difficulty.
    pub nonce: Option<u64>,
    /// Its hash, as 64 lowercase hex digits.
    pub hash: Option<String>,
    /// The number of leading zero bits of that hash (at least `difficulty`).
    pub leading_zero_bits: Option<u32>,
    /// Says why nothing was found, when nothing was.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub note: Option<String>,
}

/// `blake3(data ‖ nonce.to_le_bytes())`.
pub fn pow_hash(data: &[u8], nonce: u64) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(data);
    hasher.update(&nonce.to_le_bytes());
    *hasher.finalize().as_bytes()
}

/// The number of leading zero bits of a hash (up to 256).
pub fn leading_zero_bits(hash: &[u8; 32]) -> u32 {
    let mut bits = 0;
    for &b in hash {
        bits += b.leading_zeros();
        if b != 0 {
            break;
        }
    }
    bits
}

/// The first 8 bytes of a hash as a big-endian u64: its leading zero bits, up to 64.
fn head(hash: &[u8; 32]) -> u64 {
    let [a, b, c, d, e, f, g, h, ..] = *hash;
    u64::from_be_bytes([a, b, c, d, e, f, g, h])
}

fn check_data_and_difficulty(data: &str, difficulty: u32) -> Result<(), String> {
    if data.len() > MAX_DATA_BYTES {
        return Err(format!(
            "data must be at most {MAX_DATA_BYTES} bytes, got {}",
            data.len()
        ));
    }
    if !(1..=MAX_DIFFICULTY).contains(&difficulty) {
        return Err(format!(
            "difficulty must be at least 1 and at most {MAX_DIFFICULTY}, got {difficulty}"
        ));
    }
    Ok(())
}

/// Splits `0..max_nonce` into ranges of `chunk_size` nonces.
pub fn split(p: Params) -> Result<Vec<Input>, String> {
    check_data_and_difficulty(&p.data, p.difficulty)?;
    if !(1..=MAX_NONCE).contains(&p.max_nonce) {
        return Err(format!(
            "max_nonce must be at least 1 and at most 2^40 ({MAX_NONCE}), got {}",
            p.max_nonce
        ));
    }
    if p.chunk_size == 0 {
        return Err("chunk_size must be at least 1, got 0".to_string());
    }
    let chunks = p.max_nonce.div_ceil(p.chunk_size);
    if chunks > MAX_CHUNKS {
        return Err(format!(
            "max_nonce {} with chunk_size {} makes {chunks} chunks, at most {MAX_CHUNKS} \
             are allowed: raise chunk_size to at least {}",
            p.max_nonce,
            p.chunk_size,
            p.max_nonce.div_ceil(MAX_CHUNKS)
        ));
    }
    Ok((0..chunks)
        .map(|k| {
            // k * chunk_size < max_nonce <= 2^40: no overflow.
            let start = k * p.chunk_size;
            Input {
                data: p.data.clone(),
                difficulty: p.difficulty,
                start,
                end: p.max_nonce.min(start.saturating_add(p.chunk_size)),
            }
        })
        .collect())
}

/// Searches `start .. end` for the first nonce meeting the difficulty.
pub fn run(i: Input) -> Result<Output, String> {
    check_data_and_difficulty(&i.data, i.difficulty)?;
    if i.start >= i.end || i.end > MAX_NONCE {
        return Err(format!(
            "invalid nonce range [{}, {}): need start < end <= 2^40",
            i.start, i.end
        ));
    }
    // data ‖ nonce in one buffer; only the last 8 bytes change between hashes.
    // Inputs of at most 1024 bytes are a single BLAKE3 chunk: one `hash` call is the
    // cheapest way to hash them (no incremental-hasher state to copy).
    let n = i.data.len();
    let mut buf = Vec::with_capacity(n + 8);
    buf.extend_from_slice(i.data.as_bytes());
    buf.extend_from_slice(&[0; 8]);
    let threshold_shift = 64 - i.difficulty; // difficulty in 1..=40
    let mut found = None;
    for nonce in i.start..i.end {
        if let Some(tail) = buf.get_mut(n..) {
            tail.copy_from_slice(&nonce.to_le_bytes());
        }
        let hash = *blake3::hash(&buf).as_bytes();
        if head(&hash) >> threshold_shift == 0 {
            found = Some(Found { nonce, hash });
            break;
        }
    }
    Ok(Output {
        data: i.data,
        difficulty: i.difficulty,
        start: i.start,
        end: i.end,
        found,
    })
}

/// Takes the smallest nonce found, after checking the ranges and the nonce's hash.
pub fn merge(outputs: Vec<Output>) -> Result<Json<Summary>, String> {
    let Some(first) = outputs.first() else {
        return Err("no chunk outputs to merge".to_string());
    };
    let (data, difficulty) = (first.data.clone(), first.difficulty);
    check_data_and_difficulty(&data, difficulty)?;
    let mut next = 0u64;
    let mut winner: Option<Found> = None;
    for (k, o) in outputs.iter().enumerate() {
        if o.data != data || o.difficulty != difficulty {
            return Err(format!(
                "chunk {k} searched for other data or difficulty than chunk 0"
            ));
        }
        if o.start != next || o.end <= o.start || o.end > MAX_NONCE {
            return Err(format!(
                "chunk {k} covers nonces [{}, {}) but the next range should start at \
                 {next}: ranges are missing, overlapping or out of order",
                o.start, o.end
            ));
        }
        if let Some(f) = o.found {
            if !(o.start..o.end).contains(&f.nonce) {
                return Err(format!(
                    "chunk {k} reports nonce {} outside its range [{}, {})",
                    f.nonce, o.start, o.end
                ));
            }
            if winner.is_none() {
                winner = Some(f);
            }
        }
        next = o.end;
    }
    let max_nonce = next;
    let Some(Found { nonce, hash }) = winner else {
        return Ok(Json(Summary {
            data,
            difficulty,
            max_nonce,
            found: false,
            nonce: None,
            hash: None,
            leading_zero_bits: None,
            note: Some(format!(
                "no nonce below max_nonce {max_nonce} has {difficulty} leading zero bits"
            )),
        }));
    };
    // Don't trust the worker: recompute the hash.
    let actual = pow_hash(data.as_bytes(), nonce);
    if actual != hash {
        return Err(format!(
            "the hash reported for nonce {nonce} is wrong (a worker misbehaved)"
        ));
    }
    let bits = leading_zero_bits(&actual);
    if bits < difficulty {
        return Err(format!(
            "nonce {nonce} reported as a solution has only {bits} leading zero bits"
        ));
    }
    Ok(Json(Summary {
        data,
        difficulty,
        max_nonce,
        found: true,
        nonce: Some(nonce),
        hash: Some(blake3::Hash::from_bytes(actual).to_hex().to_string()),
        leading_zero_bits: Some(bits),
        note: None,
    }))
}

peergrid_sdk::export!(run: run, split: split, merge: merge);

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest nonce for the default params (`"peergrid"`, 20 bits), computed once
    /// with this job and checked by [`brute_force`] in `default_params_answer`.
    const DEFAULT_NONCE: u64 = 104_507;
    const DEFAULT_HASH: &str = "0000081ba3dabf988a864fbbced33a27533f54b8ec53618a2c9b93bcda7355f7";

    /// Runs the job exactly as the sandbox does: JSON params -> split -> run each chunk
    /// over postcard bytes -> merge -> JSON result bytes.
    fn run_job(params: &str) -> Result<serde_json::Value, String> {
        let result = PEERGRID_JOB.run_all(params.as_bytes())?;
        Ok(serde_json::from_slice(&result).unwrap())
    }

    /// The obvious search, written independently of `run`: incremental hasher, bit
    /// counting over the whole hash.
    fn brute_force(data: &str, difficulty: u32, limit: u64) -> Option<u64> {
        (0..limit).find(|&n| leading_zero_bits(&pow_hash(data.as_bytes(), n)) >= difficulty)
    }

    #[test]
    fn defaults_match() {
        let parsed: Params = serde_json::from_str(DEFAULT_PARAMS).unwrap();
        assert_eq!(parsed, Params::default());
        let empty: Params = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, Params::default());
        assert_eq!(PARAMS_HELP.lines().count(), 4);
    }

    #[test]
    fn leading_zero_bits_counts_across_bytes() {
        let mut h = [0u8; 32];
        assert_eq!(leading_zero_bits(&h), 256);
        h[2] = 0b0001_0000;
        assert_eq!(leading_zero_bits(&h), 19);
        h[0] = 0x80;
        assert_eq!(leading_zero_bits(&h), 0);
    }

    #[test]
    fn hash_is_data_then_little_endian_nonce() {
        let mut input = b"peergrid".to_vec();
        input.extend_from_slice(&[0x01, 0x02, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            &pow_hash(b"peergrid", 0x0201),
            blake3::hash(&input).as_bytes()
        );
    }

    #[test]
    fn small_difficulty_matches_brute_force() {
        for (data, difficulty) in [("peergrid", 8), ("", 8), ("hello world", 10), ("x", 1)] {
            let expected = brute_force(data, difficulty, 1 << 16).unwrap();
            let params = serde_json::json!({
                "data": data, "difficulty": difficulty, "max_nonce": 1 << 16, "chunk_size": 997
            });
            let v = run_job(&params.to_string()).unwrap();
            assert_eq!(v["found"], true);
            assert_eq!(v["nonce"], expected, "{data:?} at {difficulty} bits");
            assert_eq!(v["data"], data);
            assert_eq!(v["difficulty"], difficulty);
            assert_eq!(v["max_nonce"], 1 << 16);
            let hex = blake3::Hash::from_bytes(pow_hash(data.as_bytes(), expected)).to_hex();
            assert_eq!(v["hash"], hex.as_str());
            assert!(v["leading_zero_bits"].as_u64().unwrap() >= u64::from(difficulty));
        }
    }

    #[test]
    fn default_params_answer() {
        // Running all 256 default chunks is slow in a debug build; the answer is the
        // smallest qualifying nonce, so any max_nonce past it gives the same result.
        let p = Params::default();
        let chunk_end = (DEFAULT_NONCE / p.chunk_size + 1) * p.chunk_size;
        let v = run_job(&format!(r#"{{"max_nonce": {chunk_end}}}"#)).unwrap();
        assert_eq!(v["nonce"], DEFAULT_NONCE);
        assert_eq!(v["hash"], DEFAULT_HASH);
        assert_eq!(brute_force("peergrid", 20, chunk_end), Some(DEFAULT_NONCE));
        // And the chunk of the full default split that holds it finds it.
        let inputs = split(p).unwrap();
        assert_eq!(inputs.len(), 256);
        let k = (DEFAULT_NONCE / (1 << 16)) as usize;
        let out = run(inputs[k].clone()).unwrap();
        assert_eq!(out.found.map(|f| f.nonce), Some(DEFAULT_NONCE));
        assert!(inputs[..k].iter().all(|i| i.end <= DEFAULT_NONCE));
    }

    #[test]
    fn nothing_found_is_reported() {
        // 2^-40 per nonce: 100 nonces will not do.
        let v = run_job(r#"{"difficulty": 40, "max_nonce": 100, "chunk_size": 30}"#).unwrap();
        assert_eq!(v["found"], false);
        assert!(v["nonce"].is_null());
        assert!(v["hash"].is_null());
        assert_eq!(v["max_nonce"], 100);
        assert!(
            v["note"]
                .as_str()
                .unwrap()
                .contains("no nonce below max_nonce 100")
        );
    }

    #[test]
    fn bad_params_are_rejected() {
        let err = run_job(r#"{"difficulty": 41}"#).unwrap_err();
        assert_eq!(err, "difficulty must be at least 1 and at most 40, got 41");
        assert!(run_job(r#"{"difficulty": 0}"#).is_err());
        assert!(run_job(r#"{"max_nonce": 0}"#).is_err());
        assert!(run_job(r#"{"max_nonce": 1099511627777}"#).is_err());
        assert!(run_job(r#"{"chunk_size": 0}"#).is_err());
        let err = run_job(r#"{"chunk_size": 1}"#).unwrap_err();
        assert!(err.contains("raise chunk_size to at least 168"), "{err}");
        let long = "x".repeat(MAX_DATA_BYTES + 1);
        assert!(
            run_job(&format!(r#"{{"data": "{long}"}}"#))
                .unwrap_err()
                .contains("data")
        );
        assert!(
            run_job(r#"{"data": 5}"#)
                .unwrap_err()
                .contains("invalid params")
        );
        assert!(
            run_job(r#"{"nonce": 5}"#)
                .unwrap_err()
                .contains("unknown field")
        );
        // The extremes are accepted.
        let inputs = split(Params {
            max_nonce: MAX_NONCE,
            chunk_size: u64::MAX,
            ..Params::default()
        })
        .unwrap();
        assert_eq!((inputs.len(), inputs[0].end), (1, MAX_NONCE));
        let inputs = split(Params {
            max_nonce: MAX_NONCE,
            chunk_size: MAX_NONCE.div_ceil(MAX_CHUNKS),
            ..Params::default()
        })
        .unwrap();
        assert_eq!(inputs.len() as u64, MAX_CHUNKS);
        assert_eq!(inputs.last().unwrap().end, MAX_NONCE);
    }

    #[test]
    fn bad_inputs_and_outputs_are_rejected() {
        let input = Input {
            data: "a".into(),
            difficulty: 8,
            start: 10,
            end: 10,
        };
        assert!(run(input.clone()).is_err());
        assert!(
            run(Input {
                end: u64::MAX,
                ..input.clone()
            })
            .is_err()
        );
        assert!(
            run(Input {
                difficulty: 99,
                end: 11,
                ..input.clone()
            })
            .is_err()
        );
        assert!((PEERGRID_JOB.run)(&[9, 9, 9]).is_err());

        let a = run(Input {
            start: 0,
            end: 1000,
            ..input.clone()
        })
        .unwrap();
        let b = run(Input {
            start: 1000,
            end: 2000,
            ..input.clone()
        })
        .unwrap();
        assert!(a.found.is_some());
        assert!(merge(vec![a.clone(), b.clone()]).is_ok());
        assert!(merge(vec![]).is_err());
        assert!(merge(vec![b.clone()]).is_err()); // [0, 1000) missing
        assert!(merge(vec![a.clone(), a.clone()]).is_err()); // overlap
        let mut forged = a.clone();
        if let Some(f) = forged.found.as_mut() {
            f.nonce += 1;
        }
        assert!(
            merge(vec![forged, b.clone()])
                .unwrap_err()
                .contains("wrong")
        );
        let mut other = b.clone();
        other.data = "b".into();
        assert!(merge(vec![a, other]).is_err());
    }
}
