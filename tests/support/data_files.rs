//! Helpers shared by the data tests of both crates (normlab's IDX reader
//! and loader, normlab-cli's downloader and search): the committed subset,
//! gzip, hashes and tiny valid data sets. Declared at the root of both
//! crates' test binaries (`crates/*/tests/it/main.rs`).
#![allow(dead_code)] // each crate's test binary uses a different part

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use normlab::data::idx;
use sha2::{Digest, Sha256};

pub const NAMES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];

pub fn subset_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fashion-mnist-subset")
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).expect("writing to a Vec cannot fail");
    e.finish().expect("writing to a Vec cannot fail")
}

pub fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(bytes).read_to_end(&mut out).expect("test data is valid gzip");
    out
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A small valid images file (raw IDX): `n` images of `rows` x `cols`.
pub fn images_idx(n: usize, rows: usize, cols: usize) -> Vec<u8> {
    let pixels: Vec<u8> = (0..n * rows * cols).map(|i| (i * 7 % 256) as u8).collect();
    idx::encode_images(&pixels, n, rows, cols)
}

/// Asserts that `result` is an error whose message contains every needle.
pub fn assert_err_contains<T: std::fmt::Debug>(result: normlab::Result<T>, needles: &[&str]) -> String {
    let err = result.expect_err("expected an error");
    let msg = err.to_string();
    for needle in needles {
        assert!(msg.contains(needle), "error message lacks {needle:?}:\n{msg}");
    }
    msg
}

/// Writes a complete, valid Fashion-MNIST-shaped directory with tiny splits.
pub fn write_tiny_set(dir: &Path, n_train: usize, n_test: usize) {
    for (images, labels, n) in [(NAMES[0], NAMES[1], n_train), (NAMES[2], NAMES[3], n_test)] {
        let pixels = vec![17u8; n * 28 * 28];
        idx::write_images(&dir.join(images), &pixels, n, 28, 28).expect("write images");
        let labels_v: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        idx::write_labels(&dir.join(labels), &labels_v).expect("write labels");
    }
}

pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
