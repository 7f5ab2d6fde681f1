//! Longest Collatz chain: which start below `limit` takes the most steps to reach 1.
//! A peergrid wasi-v1 job (docs/ABI.md) in plain Rust for `wasm32-wasip1`: argv[1]
//! names the entry, stdin is its input, stdout its output, and no SDK is needed.
//!
//! - `split`: params JSON `{"limit": N, "chunks": C}` -> C ranges `"lo hi"`;
//! - `run`: `"lo hi"` -> `"start steps"` (the longest chain starting in [lo, hi));
//! - `merge`: the chunk outputs -> `{"start": S, "steps": K}`.
//!
//! Known answer: below 1 000 000 the longest chain starts at 837 799 (524 steps).

use std::io::{Read, Write};

fn main() {
    let entry = std::env::args().nth(1).unwrap_or_default();
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        fail(&format!("cannot read stdin: {e}"));
    }
    let output = match entry.as_str() {
        "entries" => Ok(b"split run merge".to_vec()),
        "split" => split(&input),
        "run" => run(&input),
        "merge" => merge(&input),
        other => Err(format!("unknown entry {other:?}")),
    };
    match output {
        Ok(bytes) => {
            if let Err(e) = std::io::stdout().write_all(&bytes) {
                fail(&format!("cannot write stdout: {e}"));
            }
        }
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(1)
}

/// The number after `"key":` in a flat JSON object, or `default`.
fn param(json: &[u8], key: &str, default: u64) -> Result<u64, String> {
    let text = std::str::from_utf8(json).map_err(|_| "params are not UTF-8")?;
    let Some(at) = text.find(&format!("\"{key}\"")) else {
        return Ok(default);
    };
    let rest = text[at + key.len() + 2..].trim_start();
    let rest = rest.strip_prefix(':').ok_or(format!("no value for {key}"))?;
    let digits: String = rest.trim_start().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().map_err(|_| format!("{key} must be a whole number"))
}

fn split(params: &[u8]) -> Result<Vec<u8>, String> {
    let limit = param(params, "limit", 1_000_000)?.max(2);
    let chunks = param(params, "chunks", 16)?.clamp(1, limit - 1);
    let step = (limit - 1).div_ceil(chunks);
    let items: Vec<Vec<u8>> = (0..chunks)
        .map(|i| (1 + i * step, (1 + (i + 1) * step).min(limit)))
        .filter(|(lo, hi)| lo < hi)
        .map(|(lo, hi)| format!("{lo} {hi}").into_bytes())
        .collect();
    Ok(encode_list(&items))
}

fn steps(mut n: u64) -> u32 {
    let mut count = 0;
    while n != 1 {
        n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
        count += 1;
    }
    count
}

fn pair(input: &[u8]) -> Result<(u64, u64), String> {
    let text = std::str::from_utf8(input).map_err(|_| "input is not UTF-8")?;
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    match (it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b))) => Ok((a, b)),
        _ => Err(format!("expected two numbers, got {text:?}")),
    }
}

fn run(input: &[u8]) -> Result<Vec<u8>, String> {
    let (lo, hi) = pair(input)?;
    let best = (lo.max(1)..hi)
        .map(|n| (steps(n), std::cmp::Reverse(n)))
        .max()
        .map_or((0, 0), |(s, std::cmp::Reverse(n))| (n, s));
    Ok(format!("{} {}", best.0, best.1).into_bytes())
}

fn merge(list: &[u8]) -> Result<Vec<u8>, String> {
    let mut best = (0u64, 0u64);
    for item in decode_list(list)? {
        let (start, steps) = pair(item)?;
        if steps > best.1 || (steps == best.1 && start < best.0) {
            best = (start, steps);
        }
    }
    Ok(format!("{{\"start\":{},\"steps\":{}}}", best.0, best.1).into_bytes())
}

// The list encoding of docs/ABI.md: a LEB128 count, then each item as a LEB128
// length and its bytes.

fn put_leb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn get_leb(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or("list ends inside a number")?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("number too long in list".into())
}

fn encode_list(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    put_leb(&mut out, items.len() as u64);
    for item in items {
        put_leb(&mut out, item.len() as u64);
        out.extend_from_slice(item);
    }
    out
}

fn decode_list(bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut at = 0;
    let count = get_leb(bytes, &mut at)?;
    let mut items = Vec::new();
    for _ in 0..count {
        let len = get_leb(bytes, &mut at)? as usize;
        let end = at.checked_add(len).filter(|&e| e <= bytes.len()).ok_or("list item past the end")?;
        items.push(&bytes[at..end]);
        at = end;
    }
    Ok(items)
}
