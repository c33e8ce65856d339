//! Tests of `normlab::data`: the IDX reader on good and damaged files and
//! the Fashion-MNIST loader.
//!
//! The committed subset (tests/data/fashion-mnist-subset) is the first 2,000
//! training and 1,000 test examples of Fashion-MNIST. Its provenance (a
//! prefix of the full data) is checked by normlab-cli's `download` tests.

use std::path::Path;
use std::time::{Duration, Instant};

use normlab::data::idx;
use normlab::data::{self, Split, CLASS_NAMES};

use crate::data_files;
use crate::largest_alloc;
use data_files::*;
use largest_alloc::largest_allocation;

// ---------------------------------------------------------------------------
// The committed subset

#[test]
fn subset_loads_with_right_counts_and_labels() {
    let data = data::load_dir(&subset_dir()).expect("the committed subset loads");
    assert_eq!(data.train.len(), 2000);
    assert_eq!(data.test.len(), 1000);
    assert_eq!(data.dir, subset_dir());
    for (name, split) in [("train", &data.train), ("test", &data.test)] {
        assert_eq!((split.rows, split.cols), (28, 28), "{name}");
        assert_eq!(split.images.len(), split.len() * 784, "{name}");
        assert!(split.labels.iter().all(|&l| l < 10), "{name}: label out of range");
        // The first examples of Fashion-MNIST contain every class.
        let mut seen = [false; 10];
        for &l in &split.labels {
            seen[usize::from(l)] = true;
        }
        assert!(seen.iter().all(|&s| s), "{name}: some class never appears");
        // Real images, not zeros: the average pixel is far from 0 and 255.
        let mean = split.images.iter().map(|&p| f64::from(p)).sum::<f64>() / split.images.len() as f64;
        assert!((20.0..120.0).contains(&mean), "{name}: mean pixel {mean}");
    }
    // Known facts about the real data: the first training image is an
    // ankle boot (label 9) and the first test image an ankle boot too.
    assert_eq!(data.train.labels[0], 9);
    assert_eq!(data.test.labels[0], 9);
    assert_eq!(CLASS_NAMES[9], "Ankle boot");
    assert_eq!(CLASS_NAMES[0], "T-shirt/top");
}

#[test]
fn split_image_and_truncate() {
    let mut split = Split {
        images: (0..6 * 4).map(|i| i as u8).collect(),
        labels: vec![0, 1, 2, 3, 4, 5],
        channels: 1,
        rows: 2,
        cols: 2,
    };
    assert_eq!(split.len(), 6);
    assert!(!split.is_empty());
    assert_eq!(split.image(1), &[4, 5, 6, 7]);
    assert_eq!(split.image(5), &[20, 21, 22, 23]);
    split.truncate(10); // more than there are: no change
    assert_eq!(split.len(), 6);
    split.truncate(2);
    assert_eq!(split.len(), 2);
    assert_eq!(split.images, vec![0, 1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(split.labels, vec![0, 1]);
    split.truncate(0);
    assert!(split.is_empty());
    assert!(split.images.is_empty());
}

// ---------------------------------------------------------------------------
// The IDX reader on damaged input

#[test]
fn idx_round_trip_raw_and_gzip() {
    let raw = images_idx(3, 5, 7);
    let from_raw = idx::parse_images(&raw, Path::new("x")).expect("raw parses");
    let from_gz = idx::parse_images(&gzip(&raw), Path::new("x")).expect("gzip parses");
    assert_eq!(from_raw, from_gz);
    assert_eq!((from_raw.n, from_raw.rows, from_raw.cols), (3, 5, 7));
    assert_eq!(from_raw.bytes, raw[16..]);
    let labels = idx::parse_labels(&gzip(&idx::encode_labels(&[1, 2, 3])), Path::new("y")).expect("labels");
    assert_eq!(labels, vec![1, 2, 3]);

    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("raw-images");
    std::fs::write(&p, &raw).expect("write");
    assert_eq!(idx::read_images(&p).expect("read raw file"), from_raw);
    let p = dir.path().join("l.gz");
    idx::write_labels(&p, &[9, 0]).expect("write labels");
    assert_eq!(idx::read_labels(&p).expect("read"), vec![9, 0]);
    assert_eq!(std::fs::read(&p).expect("read")[..2], [0x1f, 0x8b], "written gzip-compressed");
}

#[test]
fn idx_wrong_magic() {
    let p = Path::new("dir/bad-magic-images");
    let mut bytes = images_idx(2, 28, 28);
    bytes[..4].copy_from_slice(b"PK\x03\x04");
    assert_err_contains(idx::parse_images(&bytes, p), &["bad-magic-images", "magic", "not an IDX file"]);
    // A labels file given where images are expected.
    let labels = idx::encode_labels(&[1, 2]);
    assert_err_contains(idx::parse_images(&labels, p), &["bad-magic-images", "magic", "0x00000801", "labels"]);
    // And the other way round, compressed.
    let q = Path::new("swapped-labels.gz");
    assert_err_contains(idx::parse_labels(&gzip(&bytes_ok()), q), &["swapped-labels.gz", "magic", "0x00000803"]);
}

fn bytes_ok() -> Vec<u8> {
    images_idx(2, 28, 28)
}

#[test]
fn idx_wrong_element_type() {
    let mut bytes = bytes_ok();
    bytes[2] = 0x0D; // f32
    let msg = assert_err_contains(
        idx::parse_images(&bytes, Path::new("float-images")),
        &["float-images", "element type 0x0d", "0x08"],
    );
    assert!(msg.contains("f32"), "{msg}");
    let mut labels = idx::encode_labels(&[1]);
    labels[2] = 0x0C;
    assert_err_contains(idx::parse_labels(&labels, Path::new("i32-labels")), &["i32-labels", "element type"]);
}

#[test]
fn idx_truncated_data_header_and_trailing_bytes() {
    let bytes = bytes_ok();
    let cut = &bytes[..bytes.len() - 10];
    assert_err_contains(
        idx::parse_images(cut, Path::new("short-images")),
        &["short-images", "truncated data", "2 images of 28x28", "1558 bytes"],
    );
    assert_err_contains(
        idx::parse_images(&bytes[..10], Path::new("tiny")),
        &["tiny", "truncated header", "after 10 bytes"],
    );
    assert_err_contains(idx::parse_images(&[], Path::new("empty")), &["empty", "truncated header", "after 0 bytes"]);
    let mut long = bytes.clone();
    long.extend_from_slice(b"garbage");
    assert_err_contains(idx::parse_images(&long, Path::new("long-images")), &["long-images", "trailing data"]);
    let mut labels = idx::encode_labels(&[1, 2, 3]);
    labels.pop();
    assert_err_contains(
        idx::parse_labels(&labels, Path::new("short-labels")),
        &["short-labels", "truncated data", "3 labels"],
    );
    // The same checks apply to the decompressed content of a gzip file.
    assert_err_contains(idx::parse_images(&gzip(cut), Path::new("short.gz")), &["short.gz", "truncated data"]);
    assert_err_contains(idx::parse_images(&gzip(&long), Path::new("long.gz")), &["long.gz", "trailing data"]);
}

#[test]
fn idx_truncated_gzip() {
    let gz = gzip(&bytes_ok());
    for keep in [gz.len() - 4, gz.len() / 2, 12] {
        let path = format!("cut-{keep}.gz");
        let msg = assert_err_contains(idx::parse_images(&gz[..keep], Path::new(&path)), &[&path, "truncated"]);
        assert!(msg.contains("re-download"), "{msg}");
    }
    // And from a file on disk.
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("cut-images.gz");
    std::fs::write(&p, &gz[..gz.len() / 2]).expect("write");
    assert_err_contains(idx::read_images(&p), &["cut-images.gz", "truncated"]);
}

#[test]
fn idx_corrupt_gzip() {
    let gz = gzip(&bytes_ok());
    // A wrong CRC in the trailer: the content decodes but does not check out.
    let mut bad_crc = gz.clone();
    let n = bad_crc.len();
    bad_crc[n - 8] ^= 0xFF;
    assert_err_contains(idx::parse_images(&bad_crc, Path::new("bad-crc.gz")), &["bad-crc.gz", "corrupt gzip"]);
    // Garbage in the middle of the deflate stream.
    let mut garbled = gz.clone();
    for b in &mut garbled[12..40] {
        *b = 0xFF;
    }
    assert_err_contains(idx::parse_images(&garbled, Path::new("garbled.gz")), &["garbled.gz", "gzip"]);
    // A gzip header announcing an unknown compression method.
    let mut bad_method = gz;
    bad_method[2] = 7;
    assert_err_contains(idx::parse_images(&bad_method, Path::new("method.gz")), &["method.gz", "gzip"]);
}

#[test]
fn idx_huge_header_is_rejected_without_allocating() {
    let mut header = Vec::new();
    header.extend_from_slice(&idx::IMAGES_MAGIC.to_be_bytes());
    header.extend_from_slice(&4_000_000_000u32.to_be_bytes());
    header.extend_from_slice(&28u32.to_be_bytes());
    header.extend_from_slice(&28u32.to_be_bytes());
    header.extend_from_slice(&[0u8; 64]); // a little data, far from what is claimed
    let start = Instant::now();
    let (result, largest) = largest_allocation(|| idx::parse_images(&header, Path::new("huge-images")));
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
    assert_err_contains(result, &["huge-images", "1 GiB", "4000000000 x 28 x 28"]);
    assert!(largest < 1 << 20, "allocated {largest} bytes in one go for a hostile header");

    // Same through gzip and for labels (u32::MAX labels = 4 GiB).
    let (result, largest) = largest_allocation(|| idx::parse_images(&gzip(&header), Path::new("huge.gz")));
    assert_err_contains(result, &["huge.gz", "1 GiB"]);
    assert!(largest < 1 << 20, "allocated {largest} bytes");
    let mut labels = idx::LABELS_MAGIC.to_be_bytes().to_vec();
    labels.extend_from_slice(&u32::MAX.to_be_bytes());
    let (result, largest) = largest_allocation(|| idx::parse_labels(&labels, Path::new("huge-labels")));
    assert_err_contains(result, &["huge-labels", "1 GiB"]);
    assert!(largest < 1 << 20, "allocated {largest} bytes");

    // Under the limit but far beyond the data: read what is there, fail, and
    // never reserve the claimed 700 MB.
    let mut big = idx::IMAGES_MAGIC.to_be_bytes().to_vec();
    for d in [1_000_000u32, 28, 28] {
        big.extend_from_slice(&d.to_be_bytes());
    }
    big.extend_from_slice(&[0u8; 1000]);
    let (result, largest) = largest_allocation(|| idx::parse_images(&big, Path::new("big-claim")));
    assert_err_contains(result, &["big-claim", "truncated data", "only 1000 bytes"]);
    assert!(largest < 1 << 20, "allocated {largest} bytes from the header's claim");
}

// ---------------------------------------------------------------------------
// The loader's own checks (through load_dir)

#[test]
fn load_dir_accepts_a_tiny_set_compressed_or_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_tiny_set(dir.path(), 12, 5);
    // Decompress one file: a directory may mix both forms.
    let gz = dir.path().join(NAMES[3]);
    let raw = gunzip(&std::fs::read(&gz).expect("read"));
    std::fs::remove_file(&gz).expect("rm");
    std::fs::write(dir.path().join("t10k-labels-idx1-ubyte"), raw).expect("write");
    let data = data::load_dir(dir.path()).expect("loads");
    assert_eq!((data.train.len(), data.test.len()), (12, 5));
    assert_eq!(data.test.labels, vec![0, 1, 2, 3, 4]);
}

#[test]
fn load_dir_missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_tiny_set(dir.path(), 3, 3);
    std::fs::remove_file(dir.path().join(NAMES[1])).expect("rm");
    let dir_name = dir.path().display().to_string();
    assert_err_contains(
        data::load_dir(dir.path()),
        &[&dir_name, "missing", "train-labels-idx1-ubyte.gz", "--data-dir"],
    );
}

#[test]
fn load_dir_count_mismatch_names_both_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_tiny_set(dir.path(), 5, 3);
    idx::write_labels(&dir.path().join(NAMES[1]), &[1, 2, 3, 4]).expect("write");
    assert_err_contains(data::load_dir(dir.path()), &[NAMES[0], NAMES[1], "5 images", "4 labels"]);
}

#[test]
fn load_dir_label_out_of_range_names_the_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_tiny_set(dir.path(), 5, 6);
    idx::write_labels(&dir.path().join(NAMES[3]), &[0, 1, 2, 10, 4, 200]).expect("write");
    assert_err_contains(data::load_dir(dir.path()), &[NAMES[3], "label 10 at index 3", "0 to 9"]);
}

#[test]
fn load_dir_rejects_images_that_are_not_28x28() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_tiny_set(dir.path(), 4, 4);
    idx::write_images(&dir.path().join(NAMES[2]), &vec![0u8; 4 * 14 * 56], 4, 14, 56).expect("write");
    assert_err_contains(data::load_dir(dir.path()), &[NAMES[2], "14x56", "28x28"]);
}

#[test]
fn load_dir_reports_a_damaged_file_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_tiny_set(dir.path(), 4, 4);
    let p = dir.path().join(NAMES[0]);
    let gz = std::fs::read(&p).expect("read");
    std::fs::write(&p, &gz[..gz.len() / 2]).expect("write");
    assert_err_contains(data::load_dir(dir.path()), &[NAMES[0], "truncated", "re-download"]);
}
