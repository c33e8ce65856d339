//! Mutation testing of predict's image decoding (the `image` crate under
//! predict's limits, then grey, then 28x28) over real PNGs and JPEGs, with
//! structure-aware changes to their headers: no panic, hang or allocation
//! beyond predict's 256 MiB budget. The harness, its settings and the long
//! mode are described in `normlab/tests/it/fuzz/mod.rs`.

use crate::common;

use std::io::Cursor;
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;

use crate::fuzz;
use fuzz::{apply, corpus_seeds, extreme, fuzz, mutation, Mutation, Target, Verdict};

use common::images::{jpeg, load_image_like_predict, png_variants, test_images, PREDICT_MAX_ALLOC};

/// A structure-aware change to an image header: PNG's IHDR (with its CRC
/// fixed) or JPEG's SOF.
#[derive(Clone, Debug)]
struct HeaderField(u8, u64);

#[derive(Clone, Debug)]
struct ImageCase {
    seed: Index,
    header: Vec<HeaderField>,
    bytes: Vec<Mutation>,
    /// Recompute every PNG chunk's CRC after the byte mutations, so that
    /// they reach the decoder instead of the checksum test.
    fix_crc: bool,
}

fn fix_png_crcs(b: &mut [u8]) {
    let mut p = 8;
    while p + 12 <= b.len() {
        let n = u32::from_be_bytes(b[p..p + 4].try_into().unwrap()) as usize;
        let Some(end) = (p + 8).checked_add(n).filter(|&e| e + 4 <= b.len()) else { break };
        let mut crc = flate2::Crc::new();
        crc.update(&b[p + 4..end]);
        b[end..end + 4].copy_from_slice(&crc.sum().to_be_bytes());
        p = end + 4;
    }
}

fn set_header_field(b: &mut [u8], HeaderField(field, v): &HeaderField) {
    if b.starts_with(b"\x89PNG") && b.len() >= 33 {
        match field % 5 {
            0 => b[16..20].copy_from_slice(&(*v as u32).to_be_bytes()),
            1 => b[20..24].copy_from_slice(&(*v as u32).to_be_bytes()),
            2 => b[24] = [1, 2, 4, 8, 16, *v as u8][(*v % 6) as usize],
            3 => b[25] = [0, 2, 3, 4, 6, *v as u8][(*v % 6) as usize],
            _ => b[28] = (*v % 3) as u8,
        }
        let mut crc = flate2::Crc::new();
        crc.update(&b[12..29]);
        b[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    } else if let Some(p) = b.windows(2).position(|m| m == [0xFF, 0xC0] || m == [0xFF, 0xC2]) {
        if p + 10 <= b.len() {
            match field % 4 {
                0 => b[p + 7..p + 9].copy_from_slice(&(*v as u16).to_be_bytes()),
                1 => b[p + 5..p + 7].copy_from_slice(&(*v as u16).to_be_bytes()),
                2 => b[p + 4] = *v as u8,
                _ => b[p + 9] = *v as u8,
            }
        }
    }
}

/// "PNG"/"JPEG" with the declared size, rounded to powers of two of
/// megapixels, and the number of JPEG components.
fn describe_image(b: &[u8]) -> String {
    let (kind, w, h, extra) = if b.starts_with(b"\x89PNG") && b.len() >= 26 {
        let w = u32::from_be_bytes(b[16..20].try_into().unwrap()) as u64;
        let h = u32::from_be_bytes(b[20..24].try_into().unwrap()) as u64;
        ("PNG", w, h, format!("colour type {}", b[25]))
    } else if let Some(p) =
        b.windows(2).position(|m| m == [0xFF, 0xC0] || m == [0xFF, 0xC2]).filter(|p| p + 10 <= b.len())
    {
        let h = u16::from_be_bytes([b[p + 5], b[p + 6]]) as u64;
        let w = u16::from_be_bytes([b[p + 7], b[p + 8]]) as u64;
        ("JPEG", w, h, format!("{} components", b[p + 9]))
    } else {
        return "other".into();
    };
    let mpx = (w * h) as f64 / 1e6;
    let bucket =
        if mpx < 1.0 { "< 1 Mpx".to_string() } else { format!(">= {} Mpx", 1u64 << (mpx.log2().floor() as u32)) };
    format!("{kind} declaring {bucket}, {extra}")
}

/// Image seeds: real Fashion-MNIST images as PNG (every flavour) and JPEG
/// (grey, colour, enlarged), and the corpus.
fn image_seeds() -> Vec<Vec<u8>> {
    let imgs = test_images(2);
    let mut seeds: Vec<Vec<u8>> = png_variants(&imgs[0]).into_iter().map(|v| v.1).collect();
    seeds.push(jpeg(&imgs[1], 28, 28, image::ExtendedColorType::L8));
    let rgb: Vec<u8> = imgs[1].iter().enumerate().flat_map(|(i, &v)| [v, (i % 256) as u8, 255 - v]).collect();
    seeds.push(jpeg(&rgb, 28, 28, image::ExtendedColorType::Rgb8));
    let big = image::imageops::resize(
        &image::GrayImage::from_raw(28, 28, imgs[0].clone()).unwrap(),
        160,
        120,
        image::imageops::FilterType::Triangle,
    );
    seeds.push(jpeg(big.as_raw(), 160, 120, image::ExtendedColorType::L8));
    let mut png_big = Cursor::new(Vec::new());
    big.write_to(&mut png_big, image::ImageFormat::Png).unwrap();
    seeds.push(png_big.into_inner());
    seeds.extend(corpus_seeds("image", false));
    seeds
}

#[test]
fn fuzz_image_decoder() {
    let seeds = image_seeds();
    let run = |bytes: &[u8]| match load_image_like_predict(bytes) {
        Ok(v) if v.len() == 784 && v.iter().all(|x| x.is_finite()) => Verdict::Ok,
        Ok(v) => Verdict::Wrong(format!("{} values, finite: {}", v.len(), v.iter().all(|x| x.is_finite()))),
        Err(_) => Verdict::Err,
    };
    let strategy = (
        any::<Index>(),
        prop::collection::vec((0u8..5, extreme()).prop_map(|(f, v)| HeaderField(f, v)), 0..3),
        prop::collection::vec(mutation(), 0..4),
        any::<bool>(),
    )
        .prop_map(|(seed, header, bytes, fix_crc)| ImageCase { seed, header, bytes, fix_crc });
    fuzz(
        Target {
            name: "image",
            // a legitimate 16384 x 16384 image takes seconds; the seeds are
            // small, so anything near that comes from a header that lies
            time_bound: Duration::from_secs(2),
            // predict's own budget for a decoded image
            alloc_bound: &|_| PREDICT_MAX_ALLOC as usize,
            run: &run,
            describe: &describe_image,
        },
        strategy,
        |c: &ImageCase| {
            let mut b = seeds[c.seed.index(seeds.len())].clone();
            for h in &c.header {
                set_header_field(&mut b, h);
            }
            for m in &c.bytes {
                apply(&mut b, m, None);
            }
            if c.fix_crc && b.starts_with(b"\x89PNG") {
                fix_png_crcs(&mut b);
            }
            b
        },
    );
}
