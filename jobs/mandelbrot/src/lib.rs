//! # mandelbrot: render the Mandelbrot set to a PNG
//!
//! For every pixel `c`, iterates `z ← z² + c` from `z = 0` and records the *escape
//! count*: the first `n` with `|z_n|² > 4`, or `max_iter` when that never happens
//! within `max_iter` iterations (the point is taken to be in the set).
//!
//! **Params** (JSON, every field optional):
//! - `width`, `height`: image size in pixels, each `1 ..= 16384` (default `1024` × `768`).
//! - `max_iter`: iteration budget per pixel, `1 ..= 65535` (default `500`).
//! - `center_x`, `center_y`: the complex number at the centre of the image, each in
//!   `-10 ..= 10` (default `-0.5`, `0.0`).
//! - `scale`: width of the view in complex units, `1e-13 ..= 100` (default `3.0`); the
//!   height follows from the aspect ratio (pixels are square).
//! - `rows_per_chunk`: rows per band (default `16`); at most 4194304 pixels
//!   (`rows_per_chunk × width`) per chunk.
//!
//! Pixel `(px, py)` (row 0 at the top) is the complex number
//! `center_x + (px − (width − 1) / 2) · step` + `i · (center_y − (py − (height − 1) / 2) · step)`
//! with `step = scale / width`: pixel centres, so with odd sizes the middle pixel is the
//! centre exactly.
//!
//! **Split**: the image into bands of `rows_per_chunk` consecutive rows (the last band
//! may be shorter); one [`Input`] per band.
//!
//! **Run**: outputs an [`Output`]: the band's first row and its escape counts, one `u16`
//! per pixel, row by row. Only IEEE `+ − ×` and comparisons are used, so every machine
//! computes the same counts. Two exact shortcuts skip work without changing results
//! beyond rounding at the very edge of the regions: points in the main cardioid or the
//! period-2 bulb are known to be in the set, and an orbit that revisits a previous
//! point *exactly* (checked Brent-style at powers of two) is periodic, so never escapes.
//!
//! **Merge**: checks the bands tile the image exactly (in order, no gap, no overlap,
//! same size and budget), then colours the counts by histogram equalisation (a pixel's
//! colour depends on the fraction of escaping pixels that escaped no later than it,
//! computed in integers) through a blue–white–gold gradient, points in the set black,
//! and returns the PNG bytes (8-bit RGB), encoded row by row.

use std::io::Write;

use serde::{Deserialize, Serialize};

/// One line about the job.
pub const ABOUT: &str = "Renders the Mandelbrot set to a PNG, one band of rows per chunk";

/// The default params, as JSON.
pub const DEFAULT_PARAMS: &str = r#"{"width": 1024, "height": 768, "max_iter": 500, "center_x": -0.5, "center_y": 0.0, "scale": 3.0, "rows_per_chunk": 16}"#;

/// One line per param: `name: meaning (default)`.
pub const PARAMS_HELP: &str = "\
width: image width in pixels, 1 to 16384 (1024)
height: image height in pixels, 1 to 16384 (768)
max_iter: iteration budget per pixel, 1 to 65535 (500)
center_x: real part of the image centre, -10 to 10 (-0.5)
center_y: imaginary part of the image centre, -10 to 10 (0.0)
scale: width of the view in complex units, 1e-13 to 100 (3.0)
rows_per_chunk: rows per chunk, at most 4194304 pixels per chunk (16)";

/// The largest width or height.
pub const MAX_SIDE: u32 = 16384;

/// The largest iteration budget (counts are `u16`).
pub const MAX_ITER: u32 = u16::MAX as u32;

/// The most pixels one chunk computes (8 MiB of counts).
pub const MAX_CHUNK_PIXELS: u64 = 1 << 22;

/// The job's params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Iteration budget per pixel.
    pub max_iter: u32,
    /// Real part of the image centre.
    pub center_x: f64,
    /// Imaginary part of the image centre.
    pub center_y: f64,
    /// Width of the view in complex units.
    pub scale: f64,
    /// Rows per chunk.
    pub rows_per_chunk: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            width: 1024,
            height: 768,
            max_iter: 500,
            center_x: -0.5,
            center_y: 0.0,
            scale: 3.0,
            rows_per_chunk: 16,
        }
    }
}

/// One chunk: the band of rows `row_start .. row_start + rows` of the image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Iteration budget per pixel.
    pub max_iter: u32,
    /// Real part of the image centre.
    pub center_x: f64,
    /// Imaginary part of the image centre.
    pub center_y: f64,
    /// Width of the view in complex units.
    pub scale: f64,
    /// First row of the band (0 is the top).
    pub row_start: u32,
    /// Rows in the band.
    pub rows: u32,
}

/// One band's escape counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Iteration budget per pixel (a count equal to it means "in the set").
    pub max_iter: u32,
    /// First row of the band.
    pub row_start: u32,
    /// Escape counts, row by row, `width` per row: `1 ..= max_iter`.
    pub counts: Vec<u16>,
}

fn check_view(
    width: u32,
    height: u32,
    max_iter: u32,
    center_x: f64,
    center_y: f64,
    scale: f64,
) -> Result<(), String> {
    for (name, v) in [("width", width), ("height", height)] {
        if !(1..=MAX_SIDE).contains(&v) {
            return Err(format!(
                "{name} must be at least 1 and at most {MAX_SIDE}, got {v}"
            ));
        }
    }
    if !(1..=MAX_ITER).contains(&max_iter) {
        return Err(format!(
            "max_iter must be at least 1 and at most {MAX_ITER}, got {max_iter}"
        ));
    }
    for (name, v) in [("center_x", center_x), ("center_y", center_y)] {
        if !(-10.0..=10.0).contains(&v) {
            return Err(format!("{name} must be between -10 and 10, got {v}"));
        }
    }
    if !(1e-13..=100.0).contains(&scale) {
        return Err(format!("scale must be between 1e-13 and 100, got {scale}"));
    }
    Ok(())
}

/// Splits the image into bands of rows.
pub fn split(p: Params) -> Result<Vec<Input>, String> {
    check_view(
        p.width, p.height, p.max_iter, p.center_x, p.center_y, p.scale,
    )?;
    if p.rows_per_chunk == 0 {
        return Err("rows_per_chunk must be at least 1, got 0".to_string());
    }
    let rows = p.rows_per_chunk.min(p.height);
    if u64::from(rows) * u64::from(p.width) > MAX_CHUNK_PIXELS {
        return Err(format!(
            "rows_per_chunk {} with width {} makes chunks of {} pixels, at most \
             {MAX_CHUNK_PIXELS} are allowed: lower rows_per_chunk to at most {}",
            p.rows_per_chunk,
            p.width,
            u64::from(rows) * u64::from(p.width),
            MAX_CHUNK_PIXELS / u64::from(p.width)
        ));
    }
    Ok((0..p.height)
        .step_by(rows as usize)
        .map(|row_start| Input {
            width: p.width,
            height: p.height,
            max_iter: p.max_iter,
            center_x: p.center_x,
            center_y: p.center_y,
            scale: p.scale,
            row_start,
            rows: rows.min(p.height - row_start),
        })
        .collect())
}

/// The escape count of `c = cx + i·cy`: the first `n` with `|z_n|² > 4`, or `max_iter`.
#[inline]
pub fn escape_count(cx: f64, cy: f64, max_iter: u32) -> u32 {
    // Main cardioid: with q = (x − 1/4)² + y², inside when q·(q + x − 1/4) ≤ y²/4.
    let xq = cx - 0.25;
    let q = xq * xq + cy * cy;
    if q * (q + xq) <= 0.25 * (cy * cy) {
        return max_iter;
    }
    // Period-2 bulb: the disc of radius 1/4 around −1.
    let xb = cx + 1.0;
    if xb * xb + cy * cy <= 0.0625 {
        return max_iter;
    }
    let (mut x, mut y, mut x2, mut y2) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    // Brent's cycle detection: remember z at iterations 2^k; an exact repeat means the
    // (deterministic) floating-point orbit cycles forever.
    let (mut saved_x, mut saved_y) = (0.0f64, 0.0f64);
    let mut next_save = 8u32;
    let mut n = 0u32;
    while n < max_iter {
        y = (x + x) * y + cy;
        x = x2 - y2 + cx;
        x2 = x * x;
        y2 = y * y;
        n += 1;
        if x2 + y2 > 4.0 {
            return n;
        }
        if x == saved_x && y == saved_y {
            return max_iter;
        }
        if n == next_save {
            saved_x = x;
            saved_y = y;
            next_save = next_save.saturating_mul(2);
        }
    }
    max_iter
}

/// Computes the escape counts of one band.
pub fn run(i: Input) -> Result<Output, String> {
    check_view(
        i.width, i.height, i.max_iter, i.center_x, i.center_y, i.scale,
    )?;
    let end = u64::from(i.row_start) + u64::from(i.rows);
    if i.rows == 0 || end > u64::from(i.height) {
        return Err(format!(
            "invalid band: rows {}..{end} of an image {} rows high",
            i.row_start, i.height
        ));
    }
    let pixels = u64::from(i.rows) * u64::from(i.width);
    if pixels > MAX_CHUNK_PIXELS {
        return Err(format!(
            "band of {pixels} pixels, at most {MAX_CHUNK_PIXELS} are allowed"
        ));
    }
    let step = i.scale / f64::from(i.width);
    let half_w = (f64::from(i.width) - 1.0) / 2.0;
    let half_h = (f64::from(i.height) - 1.0) / 2.0;
    let xs: Vec<f64> = (0..i.width)
        .map(|px| i.center_x + (f64::from(px) - half_w) * step)
        .collect();
    let mut counts = vec![0u16; pixels as usize];
    for (row, py) in counts.chunks_exact_mut(i.width as usize).zip(i.row_start..) {
        let cy = i.center_y - (f64::from(py) - half_h) * step;
        for (count, &cx) in row.iter_mut().zip(&xs) {
            // max_iter <= 65535, so the count fits.
            *count = escape_count(cx, cy, i.max_iter) as u16;
        }
    }
    Ok(Output {
        width: i.width,
        height: i.height,
        max_iter: i.max_iter,
        row_start: i.row_start,
        counts,
    })
}

/// Gradient stops: position (0 ..= 65536) and colour.
const GRADIENT: [(u32, [u8; 3]); 6] = [
    (0, [0, 7, 100]),
    (13_000, [32, 107, 203]),
    (32_000, [237, 255, 255]),
    (45_000, [255, 170, 0]),
    (56_000, [160, 40, 0]),
    (65_536, [255, 230, 160]),
];

/// The gradient's colour at `t` in `0 ..= 65536`, interpolated linearly in integers.
fn gradient(t: u32) -> [u8; 3] {
    let mut colour = GRADIENT[GRADIENT.len() - 1].1;
    for pair in GRADIENT.windows(2) {
        let [(t0, c0), (t1, c1)] = [pair[0], pair[1]];
        if t <= t1 {
            let (num, den) = (i64::from(t.max(t0) - t0), i64::from(t1 - t0));
            for ((out, &a), &b) in colour.iter_mut().zip(&c0).zip(&c1) {
                let (a, b) = (i64::from(a), i64::from(b));
                *out = (a + (b - a) * num / den) as u8;
            }
            break;
        }
    }
    colour
}

/// Checks the bands tile the image and colours them into a PNG.
pub fn merge(outputs: Vec<Output>) -> Result<Vec<u8>, String> {
    let Some(first) = outputs.first() else {
        return Err("no chunk outputs to merge".to_string());
    };
    let (width, height, max_iter) = (first.width, first.height, first.max_iter);
    check_view(width, height, max_iter, 0.0, 0.0, 1.0)?;

    // Tiling, and the histogram of escape counts of the escaping pixels.
    let mut histogram = vec![0u64; max_iter as usize + 1];
    let mut next_row = 0u64;
    for (k, o) in outputs.iter().enumerate() {
        if (o.width, o.height, o.max_iter) != (width, height, max_iter) {
            return Err(format!(
                "chunk {k} is for a {}x{} image with max_iter {}, chunk 0 for {width}x{height} \
                 with max_iter {max_iter}",
                o.width, o.height, o.max_iter
            ));
        }
        let w = width as usize;
        if o.counts.is_empty() || !o.counts.len().is_multiple_of(w) {
            return Err(format!(
                "chunk {k} has {} counts, not a positive multiple of the width {width}",
                o.counts.len()
            ));
        }
        let rows = (o.counts.len() / w) as u64;
        if u64::from(o.row_start) != next_row || next_row + rows > u64::from(height) {
            return Err(format!(
                "chunk {k} covers rows {}..{} but the next band should start at row \
                 {next_row} of {height}: bands are missing, overlapping or out of order",
                o.row_start,
                u64::from(o.row_start) + rows
            ));
        }
        next_row += rows;
        for &c in &o.counts {
            match histogram.get_mut(usize::from(c)) {
                Some(h) if c != 0 => *h += 1,
                _ => {
                    return Err(format!(
                        "chunk {k} has an escape count {c} outside 1..={max_iter}"
                    ));
                }
            }
        }
    }
    if next_row != u64::from(height) {
        return Err(format!(
            "the bands cover rows 0..{next_row} of {height}: bands are missing at the end"
        ));
    }

    // Colour of each count: histogram equalisation over the escaping pixels.
    let escaped: u64 = histogram.iter().take(max_iter as usize).sum();
    let mut palette = Vec::with_capacity(histogram.len());
    let mut below = 0u64; // escaping pixels with a smaller count
    for (n, &h) in histogram.iter().enumerate() {
        if n == max_iter as usize {
            palette.push([0u8; 3]); // in the set
        } else {
            // The midpoint of this count's share of the distribution, in 0..=65536.
            // below + h <= 2^28 pixels, so the products fit a u64.
            // No escaping pixel at all (only the in-set colour is used): t = 0.
            let t = ((below * 2 + h) * 32_768).checked_div(escaped).unwrap_or(0);
            palette.push(gradient(t as u32));
            below += h;
        }
    }

    let mut png_bytes = Vec::new();
    encode_png(&mut png_bytes, &outputs, &palette, width, height)
        .map_err(|e| format!("encoding PNG: {e}"))?;
    Ok(png_bytes)
}

/// Writes the coloured bands as an 8-bit RGB PNG, one row at a time.
fn encode_png(
    out: &mut Vec<u8>,
    bands: &[Output],
    palette: &[[u8; 3]],
    width: u32,
    height: u32,
) -> Result<(), png::EncodingError> {
    let mut encoder = png::Encoder::new(out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    let mut stream = writer.stream_writer()?;
    let mut line = vec![0u8; width as usize * 3];
    for band in bands {
        for row in band.counts.chunks_exact(width as usize) {
            for (rgb, &c) in line.chunks_exact_mut(3).zip(row) {
                let colour = palette.get(usize::from(c)).copied().unwrap_or_default();
                rgb.copy_from_slice(&colour);
            }
            stream.write_all(&line)?;
        }
    }
    stream.finish()?;
    writer.finish()
}

peergrid_sdk::export!(run: run, split: split, merge: merge);

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the job exactly as the sandbox does: JSON params -> split -> run each chunk
    /// over postcard bytes -> merge -> result bytes.
    fn run_job(params: &str) -> Result<Vec<u8>, String> {
        PEERGRID_JOB.run_all(params.as_bytes())
    }

    /// Decodes a PNG: (width, height, RGB bytes).
    fn decode(png_bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    /// The textbook loop, without shortcuts.
    fn naive(cx: f64, cy: f64, max_iter: u32) -> u32 {
        let (mut x, mut y) = (0.0f64, 0.0f64);
        for n in 1..=max_iter {
            let xt = x * x - y * y + cx;
            y = 2.0 * x * y + cy;
            x = xt;
            if x * x + y * y > 4.0 {
                return n;
            }
        }
        max_iter
    }

    fn small_params(rows_per_chunk: u32) -> String {
        format!(
            r#"{{"width": 41, "height": 31, "max_iter": 200, "scale": 3.2,
                "rows_per_chunk": {rows_per_chunk}}}"#
        )
    }

    #[test]
    fn defaults_match() {
        let parsed: Params = serde_json::from_str(DEFAULT_PARAMS).unwrap();
        assert_eq!(parsed, Params::default());
        let empty: Params = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, Params::default());
        assert_eq!(PARAMS_HELP.lines().count(), 7);
        assert_eq!(split(Params::default()).unwrap().len(), 48);
    }

    #[test]
    fn known_escape_counts() {
        assert_eq!(escape_count(-0.5, 0.0, 500), 500); // main cardioid
        assert_eq!(escape_count(-1.0, 0.0, 500), 500); // period-2 bulb centre
        assert_eq!(escape_count(-2.0, 0.0, 500), 500); // tip: 0, -2, 2, 2, ... never > 2
        assert_eq!(escape_count(-0.1226, 0.7449, 500), 500); // period-3 bulb
        assert_eq!(escape_count(-1.7549, 0.0, 500), 500); // the real period-3 "airship"
        assert_eq!(escape_count(3.0, 0.0, 500), 1); // far outside
        assert_eq!(escape_count(-2.0, 1.125, 500), 1);
        assert_eq!(escape_count(1.0, 0.0, 500), 3); // 1, 2, 5
        assert_eq!(escape_count(0.5, 0.0, 500), 5); // .5, .75, 1.0625, 1.63, 3.15
        assert_eq!(escape_count(0.0, 1.0, 500), 500); // 0 -> i -> -1+i -> -i -> -1+i ...
        assert_eq!(escape_count(0.3, 0.0, 7), 7); // budget exhausted
    }

    #[test]
    fn shortcuts_do_not_change_counts() {
        let mut checked = 0;
        for py in 0..120 {
            for px in 0..160 {
                let cx = -2.2 + f64::from(px) * 0.0185;
                let cy = -1.3 + f64::from(py) * 0.0217;
                assert_eq!(
                    escape_count(cx, cy, 300),
                    naive(cx, cy, 300),
                    "c = {cx} + {cy}i"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 19_200);
    }

    #[test]
    fn band_counts_are_known() {
        let inputs = split(serde_json::from_str(&small_params(5)).unwrap()).unwrap();
        assert_eq!(inputs.len(), 7); // 6 bands of 5 rows and one of 1
        assert_eq!((inputs[6].row_start, inputs[6].rows), (30, 1));
        // The middle pixel (20, 15) is exactly the centre -0.5 + 0i: in the set.
        let middle = run(inputs[3].clone()).unwrap();
        assert_eq!(middle.row_start, 15);
        assert_eq!(middle.counts.len(), 5 * 41);
        assert_eq!(middle.counts[20], 200);
        // The top-left corner (-2.06 + 1.17i) is far outside: escapes at once.
        let top = run(inputs[0].clone()).unwrap();
        assert!(top.counts[0] <= 2);
        assert_eq!(top.counts[0], 1);
        // Pixel (20, 0) is -0.5 + 1.17i: the first iterate is inside |z| <= 2.
        assert!(top.counts[20] > 1);
    }

    #[test]
    fn renders_a_png_with_the_right_size_and_pixels() {
        let png_bytes = run_job(&small_params(4)).unwrap();
        assert_eq!(&png_bytes[..8], b"\x89PNG\r\n\x1a\n");
        let (w, h, rgb) = decode(&png_bytes);
        assert_eq!((w, h), (41, 31));
        assert_eq!(rgb.len(), 41 * 31 * 3);
        let pixel = |x: usize, y: usize| &rgb[(y * 41 + x) * 3..][..3];
        assert_eq!(pixel(20, 15), [0, 0, 0]); // the centre is in the set: black
        assert_ne!(pixel(0, 0), [0, 0, 0]); // the corner escaped: coloured
        // The image is symmetric about the real axis (center_y = 0, odd height).
        for y in 0..31 {
            for x in 0..41 {
                assert_eq!(pixel(x, y), pixel(x, 30 - y));
            }
        }
    }

    #[test]
    fn image_does_not_depend_on_the_split_and_is_deterministic() {
        let one = run_job(&small_params(1)).unwrap();
        assert_eq!(run_job(&small_params(7)).unwrap(), one);
        assert_eq!(run_job(&small_params(10_000)).unwrap(), one);
        assert_eq!(run_job(&small_params(1)).unwrap(), one);
        let other = run_job(r#"{"width": 41, "height": 31, "max_iter": 200, "center_x": 0.3}"#);
        assert_ne!(other.unwrap(), one);
    }

    #[test]
    fn one_pixel_and_all_inside_images() {
        let (w, h, rgb) = decode(&run_job(r#"{"width": 1, "height": 1}"#).unwrap());
        assert_eq!((w, h, rgb), (1, 1, vec![0, 0, 0]));
        // Every pixel in the set: no escaping pixel to equalise over.
        let all_in = run_job(r#"{"width": 8, "height": 8, "scale": 0.01}"#).unwrap();
        assert!(decode(&all_in).2.iter().all(|&b| b == 0));
    }

    #[test]
    fn bad_params_are_rejected() {
        let err = run_job(r#"{"width": 0}"#).unwrap_err();
        assert_eq!(err, "width must be at least 1 and at most 16384, got 0");
        assert!(
            run_job(r#"{"height": 16385}"#)
                .unwrap_err()
                .contains("height")
        );
        assert!(run_job(r#"{"max_iter": 0}"#).is_err());
        assert!(run_job(r#"{"max_iter": 65536}"#).is_err());
        assert!(run_job(r#"{"center_x": 11}"#).is_err());
        assert!(run_job(r#"{"center_y": -1e300}"#).is_err());
        assert!(run_job(r#"{"scale": 0}"#).is_err());
        assert!(run_job(r#"{"scale": -3}"#).is_err());
        assert!(
            run_job(r#"{"scale": 1e999}"#)
                .unwrap_err()
                .contains("invalid params")
        );
        assert!(run_job(r#"{"rows_per_chunk": 0}"#).is_err());
        let err =
            run_job(r#"{"width": 16384, "height": 16384, "rows_per_chunk": 1000}"#).unwrap_err();
        assert!(err.contains("lower rows_per_chunk to at most 256"), "{err}");
        assert!(
            run_job(r#"{"zoom": 2}"#)
                .unwrap_err()
                .contains("unknown field")
        );
        // The largest image splits fine (not rendered here).
        let inputs = split(Params {
            width: MAX_SIDE,
            height: MAX_SIDE,
            rows_per_chunk: 256,
            ..Params::default()
        })
        .unwrap();
        assert_eq!(inputs.len(), 64);
        let tiny_rows = split(Params {
            rows_per_chunk: u32::MAX,
            ..Params::default()
        })
        .unwrap();
        assert_eq!((tiny_rows.len(), tiny_rows[0].rows), (1, 768));
    }

    #[test]
    fn bad_inputs_are_rejected() {
        let good = split(serde_json::from_str(&small_params(5)).unwrap()).unwrap()[0].clone();
        assert!(run(good.clone()).is_ok());
        for bad in [
            Input {
                rows: 0,
                ..good.clone()
            },
            Input {
                row_start: 30,
                ..good.clone()
            },
            Input {
                row_start: u32::MAX,
                ..good.clone()
            },
            Input {
                width: 0,
                ..good.clone()
            },
            Input {
                max_iter: 70_000,
                ..good.clone()
            },
            Input {
                scale: f64::NAN,
                ..good.clone()
            },
            Input {
                center_x: f64::INFINITY,
                ..good.clone()
            },
            Input {
                width: 16384,
                height: 16384,
                rows: 1000,
                ..good.clone()
            },
        ] {
            assert!(run(bad.clone()).is_err(), "{bad:?}");
        }
        assert!((PEERGRID_JOB.run)(&[1, 2, 3]).is_err());
        assert!((PEERGRID_JOB.merge.unwrap())(&[5, 1]).is_err());
    }

    #[test]
    fn merge_rejects_bands_that_do_not_tile() {
        let outputs: Vec<Output> = split(serde_json::from_str(&small_params(10)).unwrap())
            .unwrap()
            .into_iter()
            .map(|i| run(i).unwrap())
            .collect();
        assert_eq!(outputs.len(), 4);
        assert!(merge(outputs.clone()).is_ok());
        assert!(merge(vec![]).is_err());

        let missing_middle = vec![outputs[0].clone(), outputs[2].clone(), outputs[3].clone()];
        assert!(merge(missing_middle).unwrap_err().contains("missing"));
        let missing_end = outputs[..3].to_vec();
        assert!(
            merge(missing_end)
                .unwrap_err()
                .contains("missing at the end")
        );
        let mut overlapping = outputs.clone();
        overlapping.insert(1, outputs[0].clone());
        assert!(merge(overlapping).unwrap_err().contains("overlapping"));
        let mut swapped = outputs.clone();
        swapped.swap(1, 2);
        assert!(merge(swapped).is_err());
        let mut too_many = outputs.clone();
        too_many.push(outputs[3].clone());
        assert!(merge(too_many).is_err());

        let mut ragged = outputs.clone();
        ragged[1].counts.pop();
        assert!(merge(ragged).unwrap_err().contains("multiple of the width"));
        let mut bad_count = outputs.clone();
        bad_count[2].counts[0] = 201;
        assert!(merge(bad_count).unwrap_err().contains("outside"));
        let mut zero_count = outputs.clone();
        zero_count[2].counts[0] = 0;
        assert!(merge(zero_count).is_err());
        let mut other_size = outputs.clone();
        other_size[3].height = 32;
        assert!(merge(other_size).is_err());
        let mut huge = outputs;
        huge[0].width = u32::MAX;
        assert!(merge(huge).is_err());
    }
}
