//! {{name}}: a peergrid wasi-v1 job in plain Rust for `wasm32-wasip1` (no SDK):
//! argv[1] names the entry, stdin is its input, stdout its output.

use std::io::{Read, Write};

/// Params (JSON) -> chunk inputs. Here: `{"n": N, "chunks": C}` -> ranges "lo hi".
fn split(params: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let n = param(params, "n", 1000)?;
    let chunks = param(params, "chunks", 10)?.max(1);
    let step = n.div_ceil(chunks).max(1);
    Ok((1..=n)
        .step_by(step as usize)
        .map(|lo| format!("{lo} {}", (lo + step).min(n + 1)).into_bytes())
        .collect())
}

/// One chunk input -> its output. Here: the sum of squares in [lo, hi).
fn run(input: &[u8]) -> Result<Vec<u8>, String> {
    let [lo, hi] = numbers(input)?;
    let sum: u64 = (lo..hi).map(|i| i * i).sum();
    Ok(format!("{sum} {}", hi - 1).into_bytes())
}

/// The chunk outputs, in chunk order -> the result.
fn merge(outputs: Vec<&[u8]>) -> Result<Vec<u8>, String> {
    let (mut sum, mut n) = (0u64, 0u64);
    for output in outputs {
        let [s, last] = numbers(output)?;
        sum += s;
        n = n.max(last);
    }
    Ok(format!("{{\"n\":{n},\"sum_of_squares\":{sum}}}").into_bytes())
}

fn main() {
    let entry = std::env::args().nth(1).unwrap_or_default();
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        fail(&format!("cannot read stdin: {e}"));
    }
    let output = match entry.as_str() {
        "entries" => Ok(b"split run merge".to_vec()),
        "split" => split(&input).map(|items| encode_list(&items)),
        "run" => run(&input),
        "merge" => decode_list(&input).and_then(merge),
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

/// The whole number after `"key":` in a flat JSON object, or `default`.
/// (serde_json works too; this keeps the project free of dependencies.)
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

/// `N` whole numbers separated by spaces, such as "12 34".
fn numbers<const N: usize>(input: &[u8]) -> Result<[u64; N], String> {
    let text = std::str::from_utf8(input).map_err(|_| "input is not UTF-8")?;
    let parsed: Result<Vec<u64>, _> = text.split_whitespace().map(str::parse).collect();
    parsed
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or(format!("expected {N} numbers, got {text:?}"))
}

// The list encoding: a LEB128 count, then each item as a LEB128 length and its bytes.

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
        let end = at
            .checked_add(len)
            .filter(|&e| e <= bytes.len())
            .ok_or("list item past the end")?;
        items.push(&bytes[at..end]);
        at = end;
    }
    Ok(items)
}
