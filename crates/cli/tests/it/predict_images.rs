//! `predict` on unusual images: 16-bit, palette and alpha PNGs are
//! predicted like the 8-bit grey original, and decompression bombs (PNG and
//! JPEG headers declaring huge sizes) are refused quickly, within predict's
//! memory limits, with exit code 2.
//!
//! One test keeps fixed a bug that hostile testing found here (its doc
//! comment starts with "Regression"): a JPEG bomb inside predict's limits.

use crate::common;

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use flate2::read::ZlibDecoder;
use normlab::data::CLASS_NAMES;
use serde_json::Value;

use common::checkpoints::trained;
use common::images::{jpeg, png, png_variants, rows, set_jpeg_size, test_images, zlib, PREDICT_MAX_ALLOC};
use common::{normlab, s};

#[test]
fn sixteen_bit_palette_and_alpha_pngs_are_predicted() {
    let model = &trained().bn;
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, g) in test_images(3).iter().enumerate() {
        for (label, bytes, exact) in png_variants(g) {
            // every file decodes with the image crate as the expected kind
            let img = image::load_from_memory(&bytes).unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!((img.width(), img.height()), (28, 28), "{label}");
            let path = dir.path().join(format!("{i}-{label}.png"));
            std::fs::write(&path, &bytes).unwrap();
            files.push((i, label, exact, path));
        }
    }
    let mut args = vec!["predict", "--checkpoint", s(model), "--json"];
    args.extend(files.iter().map(|f| s(&f.3)));
    let r = normlab(&args).ok();
    let lines: Vec<Value> = r.stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), files.len(), "one line per image: {}", r.ctx());
    let top = |v: &Value| -> Vec<(String, f64)> {
        v["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["name"].as_str().unwrap().to_string(), t["probability"].as_f64().unwrap()))
            .collect()
    };
    for ((i, label, exact, _), line) in files.iter().zip(&lines) {
        let got = top(line);
        assert_eq!(got.len(), 3, "{label}: {line}");
        assert!(got.iter().all(|(n, p)| CLASS_NAMES.contains(&n.as_str()) && p.is_finite()), "{label}: {line}");
        if *exact {
            // the same grey levels as the 8-bit original of image i
            let base = top(&lines[files.iter().position(|f| f.0 == *i && f.1 == "grey8").unwrap()]);
            assert_eq!(got[0].0, base[0].0, "image {i} {label}: {line}");
            for ((_, p), (_, q)) in got.iter().zip(&base) {
                assert!((p - q).abs() < 1e-3, "image {i} {label}: {got:?} vs 8-bit grey {base:?}");
            }
        }
    }
    // the plain output prints class names too
    let mut args = vec!["predict", "--checkpoint", s(model)];
    args.extend(files.iter().filter(|f| f.0 == 0).map(|f| s(&f.3)));
    let r = normlab(&args).ok();
    assert_eq!(r.stdout.lines().count(), files.len() / 3);
    for line in r.stdout.lines() {
        assert!(CLASS_NAMES.iter().any(|c| line.contains(c)), "no class name in {line:?}");
    }
}

/// Peak RSS of `predict` on an ordinary 28x28 PNG, the yardstick for bombs.
fn predict_baseline_rss_kb(dir: &Path) -> i64 {
    let g = &test_images(1)[0];
    let path = dir.join("ordinary.png");
    std::fs::write(&path, &png_variants(g)[0].1).unwrap();
    normlab(&["predict", "--checkpoint", s(&trained().bn), s(&path)]).ok().max_rss_kb
}

#[test]
fn a_png_declaring_100000_by_100000_pixels_is_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let baseline = predict_baseline_rss_kb(dir.path());
    // a correct IHDR for 100000 x 100000 grey, then the start of one row
    let bomb = png(100_000, 100_000, 8, 0, &[], &vec![0u8; 100_001]);
    assert!(bomb.len() < 1000, "{} bytes", bomb.len());
    let path = dir.path().join("bomb.png");
    std::fs::write(&path, &bomb).unwrap();
    let r = normlab(&["predict", "--checkpoint", s(&trained().bn), s(&path)]);
    r.user_error(&["bomb.png", "too large"]);
    assert!(r.wall < Duration::from_secs(2), "{}", r.ctx());
    assert!(r.max_rss_kb < baseline + 32 * 1024, "baseline {baseline} kB: {}", r.ctx());
    eprintln!("bomb.png: {:.3?}, peak RSS {} kB (ordinary image {baseline} kB)", r.wall, r.max_rss_kb);

    // the same for a JPEG header at the format's maximum, 65535 x 65535
    let mut jpg = jpeg(&[128; 16 * 16], 16, 16, image::ExtendedColorType::L8);
    assert!(set_jpeg_size(&mut jpg, 65535, 65535));
    let path = dir.path().join("bomb.jpg");
    std::fs::write(&path, &jpg).unwrap();
    let r = normlab(&["predict", "--checkpoint", s(&trained().bn), s(&path)]);
    r.user_error(&["bomb.jpg", "too large"]);
    assert!(r.wall < Duration::from_secs(2) && r.max_rss_kb < baseline + 32 * 1024, "{}", r.ctx());
}

/// Regression: a 333-byte JPEG whose SOF header declares 8192 x 8192 grey
/// pixels (the scan holds 16 x 16) is inside predict's limits
/// (16384 a side, 256 MiB decoded), so zune-jpeg "decoded" it, filling the
/// missing data, and `load_image` converted it with `to_luma32f`: 4 bytes a
/// pixel, outside the 256 MiB budget. predict succeeded on a damaged file
/// after ~1.5 s and ~330 MB; at 16384 x 16384 it took 5.5 s and 1.3 GB.
/// Correct: refused with exit code 2 (the scan is truncated), fast, with
/// memory within the documented limit.
#[test]
fn a_tiny_jpeg_declaring_a_huge_size_inside_the_limits_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let baseline = predict_baseline_rss_kb(dir.path());
    let mut jpg = jpeg(&[128; 16 * 16], 16, 16, image::ExtendedColorType::L8);
    assert!(set_jpeg_size(&mut jpg, 8192, 8192));
    let path = dir.path().join("small-bomb.jpg");
    std::fs::write(&path, &jpg).unwrap();
    let r = normlab(&["predict", "--checkpoint", s(&trained().bn), s(&path)]);
    eprintln!(
        "small-bomb.jpg ({} bytes): exit {} in {:.2?}, peak RSS {} MB (ordinary image {} MB)",
        jpg.len(),
        r.code,
        r.wall,
        r.max_rss_kb / 1024,
        baseline / 1024
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.ctx());
    assert!(
        r.max_rss_kb < baseline + (PREDICT_MAX_ALLOC / 1024) as i64,
        "a {}-byte file costs more memory than predict's 256 MiB decoding limit: {}",
        jpg.len(),
        r.ctx()
    );
    assert!(r.wall < Duration::from_secs(2), "{}", r.ctx());
    r.user_error(&["small-bomb.jpg"]);
}
// A `zlib` round trip keeps the PNG helper honest.
#[test]
fn png_helper_writes_what_the_image_crate_reads() {
    let g: Vec<u8> = (0..28 * 28).map(|i| (i % 251) as u8).collect();
    let img =
        image::load_from_memory(&png(28, 28, 8, 0, &[], &rows(&g.iter().map(|&v| vec![v]).collect::<Vec<_>>(), 28)))
            .unwrap()
            .to_luma8();
    assert_eq!(img.as_raw(), &g);
    let mut back = Vec::new();
    ZlibDecoder::new(&zlib(b"abc")[..]).read_to_end(&mut back).unwrap();
    assert_eq!(back, b"abc");
}

/// `predict` on a directory and files together: images batched through
/// the network give what one at a time gives, `--top K` lists K classes,
/// `--json` one object per line, and a bad file among good ones is named,
/// skipped, and makes the exit status 2 after every good image's line.
#[test]
fn predict_reads_folders_batches_images_and_skips_bad_files_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("imgs");
    std::fs::create_dir(&folder).unwrap();
    let images = common::images::test_images(5);
    for (i, g) in images.iter().enumerate() {
        image::GrayImage::from_raw(28, 28, g.clone()).unwrap().save(folder.join(format!("{i}.png"))).unwrap();
    }
    std::fs::write(folder.join("notes.txt"), "not an image").unwrap();
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\n truncated").unwrap();
    let ck = common::checkpoints::trained().bn.clone();
    let (ck, folder_s, bad_s) =
        (common::s(&ck).to_string(), common::s(&folder).to_string(), common::s(&bad).to_string());
    let one_by_one =
        common::normlab(&["predict", "--checkpoint", &ck, "--json", "--top", "10", "--batch-size", "1", &folder_s])
            .ok();
    let batched =
        common::normlab(&["predict", "--checkpoint", &ck, "--json", "--top", "10", "--batch-size", "4", &folder_s])
            .ok();
    let lines: Vec<serde_json::Value> = batched.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5, "{}", batched.ctx());
    for (a, b) in one_by_one.stdout.lines().zip(batched.stdout.lines()) {
        let (a, b): (serde_json::Value, serde_json::Value) =
            (serde_json::from_str(a).unwrap(), serde_json::from_str(b).unwrap());
        assert_eq!(a["top"].as_array().unwrap().len(), 10);
        for (x, y) in a["top"].as_array().unwrap().iter().zip(b["top"].as_array().unwrap()) {
            assert_eq!(x["class"], y["class"]);
            assert!((x["probability"].as_f64().unwrap() - y["probability"].as_f64().unwrap()).abs() < 1e-6);
        }
    }
    let out = common::normlab(&["predict", "--checkpoint", &ck, "--top", "2", &bad_s, &folder_s]);
    assert_eq!(out.code, 2, "{}", out.ctx());
    assert_eq!(out.stdout.lines().count(), 5, "{}", out.ctx());
    assert!(out.stdout.lines().all(|l| l.matches(", ").count() == 1), "two classes per line: {}", out.ctx());
    assert!(out.stderr.contains("broken.png") && out.stderr.contains("1 of 6 images"), "{}", out.ctx());
    assert!(!out.stderr.contains("panicked"));
}
