//! Images for `predict`: PNGs written by hand in every flavour, JPEGs,
//! test images of the subset, and predict's image loading replicated step
//! by step (for the mutation tests, which cannot call the binary's code).

use std::io::{Cursor, Write};

use flate2::write::ZlibEncoder;
use flate2::Compression;

use super::subset;

/// The limits of `normlab predict` (src/cli/predict.rs, `load_image`, which
/// lives in the binary and cannot be called from here).
pub const PREDICT_MAX_SIDE: u32 = 16_384;
pub const PREDICT_MAX_ALLOC: u64 = 256 << 20;

pub fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

pub fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

/// A PNG written by hand: IHDR with these fields, the `extra` chunks, one
/// IDAT holding `scanlines` (each row already prefixed with its filter
/// byte) compressed, IEND.
pub fn png(width: u32, height: u32, depth: u8, color: u8, extra: &[(&[u8; 4], Vec<u8>)], scanlines: &[u8]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[depth, color, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    for (kind, data) in extra {
        png_chunk(&mut out, kind, data);
    }
    png_chunk(&mut out, b"IDAT", &zlib(scanlines));
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// Rows of `w` pixels, each pixel given as its bytes, behind filter byte 0.
pub fn rows(pixels: &[Vec<u8>], w: usize) -> Vec<u8> {
    pixels.chunks(w).flat_map(|row| std::iter::once(0u8).chain(row.iter().flatten().copied())).collect()
}

/// 4-bit samples packed two to a byte, behind filter byte 0.
pub fn rows4(samples: &[u8], w: usize) -> Vec<u8> {
    samples
        .chunks(w)
        .flat_map(|row| {
            let packed: Vec<u8> = row.chunks(2).map(|p| p[0] << 4 | p.get(1).copied().unwrap_or(0)).collect();
            std::iter::once(0u8).chain(packed)
        })
        .collect()
}

pub fn jpeg(pixels: &[u8], w: u32, h: u32, color: image::ExtendedColorType) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode(pixels, w, h, color).unwrap();
    out
}

/// Overwrites the height and width of a JPEG's first SOF0/SOF2 segment.
pub fn set_jpeg_size(bytes: &mut [u8], w: u16, h: u16) -> bool {
    let Some(p) = bytes.windows(2).position(|m| m == [0xFF, 0xC0] || m == [0xFF, 0xC2]) else { return false };
    if p + 9 > bytes.len() {
        return false;
    }
    bytes[p + 5..p + 7].copy_from_slice(&h.to_be_bytes());
    bytes[p + 7..p + 9].copy_from_slice(&w.to_be_bytes());
    true
}

/// The first `n` test images of the subset (28x28 grey bytes).
pub fn test_images(n: usize) -> Vec<Vec<u8>> {
    let fm = normlab::data::load_dir(&subset()).expect("the subset loads");
    (0..n).map(|i| fm.test.image(i).to_vec()).collect()
}

/// One grey image in every PNG flavour `predict` must accept. The bool says
/// whether the decoded grey levels equal the 8-bit original's exactly (so
/// the prediction must be the same).
pub fn png_variants(g: &[u8]) -> Vec<(&'static str, Vec<u8>, bool)> {
    let px = |f: &dyn Fn(u8) -> Vec<u8>| -> Vec<Vec<u8>> { g.iter().map(|&v| f(v)).collect() };
    // a palette whose entries are shuffled (167 is odd: a bijection of 0..256)
    let perm: Vec<u8> = (0..256u32).map(|k| ((k * 167 + 13) % 256) as u8).collect();
    let mut inv = [0u8; 256];
    for (k, &p) in perm.iter().enumerate() {
        inv[p as usize] = k as u8;
    }
    let plte: Vec<u8> = perm.iter().flat_map(|&p| [p, p, p]).collect();
    let trns: Vec<u8> = (0..256).map(|k| (255 - k / 2) as u8).collect();
    let plte16: Vec<u8> = (0..16u8).flat_map(|k| [k * 17; 3]).collect();
    let quant: Vec<u8> = g.iter().map(|&v| v >> 4).collect();
    vec![
        ("grey8", png(28, 28, 8, 0, &[], &rows(&px(&|v| vec![v]), 28)), true),
        ("grey16", png(28, 28, 16, 0, &[], &rows(&px(&|v| (v as u16 * 257).to_be_bytes().to_vec()), 28)), true),
        ("palette8", png(28, 28, 8, 3, &[(b"PLTE", plte.clone())], &rows(&px(&|v| vec![inv[v as usize]]), 28)), true),
        (
            "palette8-trns",
            png(28, 28, 8, 3, &[(b"PLTE", plte), (b"tRNS", trns)], &rows(&px(&|v| vec![inv[v as usize]]), 28)),
            true,
        ),
        ("palette4", png(28, 28, 4, 3, &[(b"PLTE", plte16)], &rows4(&quant, 28)), false),
        ("grey-alpha8", png(28, 28, 8, 4, &[], &rows(&px(&|v| vec![v, 255 - v]), 28)), true),
        (
            "grey-alpha16",
            png(28, 28, 16, 4, &[], &rows(&px(&|v| [(v as u16 * 257).to_be_bytes(), [0x80, 0]].concat()), 28)),
            true,
        ),
        ("rgba8", png(28, 28, 8, 6, &[], &rows(&px(&|v| vec![v, v, v, v / 2]), 28)), true),
        ("rgb16", png(28, 28, 16, 2, &[], &rows(&px(&|v| (v as u16 * 257).to_be_bytes().repeat(3)), 28)), true),
        (
            "rgba16",
            png(
                28,
                28,
                16,
                6,
                &[],
                &rows(&px(&|v| [(v as u16 * 257).to_be_bytes().repeat(3), vec![0xFF, 0xFF]].concat()), 28),
            ),
            true,
        ),
    ]
}

/// `load_image` of src/cli/predict.rs, step by step: guess the format,
/// decode under predict's limits, convert to grey f32, resize to 28x28.
pub fn load_image_like_predict(bytes: &[u8]) -> Result<Vec<f32>, String> {
    let mut reader = image::ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        return Err("not a PNG or JPEG image".into());
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(PREDICT_MAX_SIDE);
    limits.max_image_height = Some(PREDICT_MAX_SIDE);
    limits.max_alloc = Some(PREDICT_MAX_ALLOC);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| e.to_string())?;
    let grey = img.to_luma32f();
    let small = image::imageops::resize(&grey, 28, 28, image::imageops::FilterType::Triangle);
    Ok(small.pixels().map(|p| p.0[0].clamp(0.0, 1.0)).collect())
}
