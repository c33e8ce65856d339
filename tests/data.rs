//! Tests of `normlab::data`: the IDX reader on good and damaged files, the
//! Fashion-MNIST loader, the search order, and the downloader against a
//! small HTTP server on 127.0.0.1 (no other host is ever contacted).
//!
//! The committed subset (tests/data/fashion-mnist-subset) is the first 2,000
//! training and 1,000 test examples of Fashion-MNIST. To regenerate it from
//! the full data: `NORMLAB_WRITE_SUBSET=1 cargo test --test data subset_`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};

use normlab::data::download::{self, ExpectedFile, TEMP_SUFFIX};
use normlab::data::idx;
use normlab::data::{self, DataSource, SearchPaths, Split, CLASS_NAMES};

// ---------------------------------------------------------------------------
#[path = "support/largest_alloc.rs"]
mod largest_alloc;
use largest_alloc::largest_allocation;

// ---------------------------------------------------------------------------
// Helpers

const NAMES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];

fn subset_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fashion-mnist-subset")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).expect("writing to a Vec cannot fail");
    e.finish().expect("writing to a Vec cannot fail")
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(bytes).read_to_end(&mut out).expect("test data is valid gzip");
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A small valid images file (raw IDX): `n` images of `rows` x `cols`.
fn images_idx(n: usize, rows: usize, cols: usize) -> Vec<u8> {
    let pixels: Vec<u8> = (0..n * rows * cols).map(|i| (i * 7 % 256) as u8).collect();
    idx::encode_images(&pixels, n, rows, cols)
}

/// Asserts that `result` is an error whose message contains every needle.
fn assert_err_contains<T: std::fmt::Debug>(result: normlab::Result<T>, needles: &[&str]) -> String {
    let err = result.expect_err("expected an error");
    let msg = err.to_string();
    for needle in needles {
        assert!(msg.contains(needle), "error message lacks {needle:?}:\n{msg}");
    }
    msg
}

/// Writes a complete, valid Fashion-MNIST-shaped directory with tiny splits.
fn write_tiny_set(dir: &Path, n_train: usize, n_test: usize) {
    for (images, labels, n) in [(NAMES[0], NAMES[1], n_train), (NAMES[2], NAMES[3], n_test)] {
        let pixels = vec![17u8; n * 28 * 28];
        idx::write_images(&dir.join(images), &pixels, n, 28, 28).expect("write images");
        let labels_v: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        idx::write_labels(&dir.join(labels), &labels_v).expect("write labels");
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

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
    let mut split =
        Split { images: (0..6 * 4).map(|i| i as u8).collect(), labels: vec![0, 1, 2, 3, 4, 5], rows: 2, cols: 2 };
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
// The full data set (SPEC.md's hashes) and the subset's provenance

const FULL_DIR: &str = "/usr/share/datasets/fashion-mnist";
const SPEC_HASHES: [(&str, &str, u64); 4] = [
    ("train-images-idx3-ubyte.gz", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 47_040_016),
    ("train-labels-idx1-ubyte.gz", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60_008),
    ("t10k-images-idx3-ubyte.gz", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 7_840_016),
    ("t10k-labels-idx1-ubyte.gz", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10_008),
];

/// True when the full data is there; panics when CI requires it and it is not.
fn full_data_available(test: &str) -> bool {
    if Path::new(FULL_DIR).is_dir() {
        return true;
    }
    if std::env::var("NORMLAB_REQUIRE_FULL_DATA").as_deref() == Ok("1") {
        panic!(
            "{test}: NORMLAB_REQUIRE_FULL_DATA=1 but {FULL_DIR} does not exist; install it with \
             apt-get install dataset-fashion-mnist"
        );
    }
    println!("{test}: skipped, {FULL_DIR} does not exist (set NORMLAB_REQUIRE_FULL_DATA=1 to make this a failure)");
    false
}

#[test]
fn full_data_loads_and_matches_spec_hashes() {
    if !full_data_available("full_data_loads_and_matches_spec_hashes") {
        return;
    }
    // The library's table must be SPEC.md's, value for value.
    let table: Vec<(&str, &str, u64)> =
        download::FASHION_MNIST_FILES.iter().map(|f| (f.name, f.sha256, f.len)).collect();
    assert_eq!(table, SPEC_HASHES.to_vec());
    for (name, sha, len) in SPEC_HASHES {
        let path = Path::new(FULL_DIR).join(name);
        let (hash, got_len) = download::content_sha256(&path, len).expect("hash the full file");
        assert_eq!((hash.as_str(), got_len), (sha, len), "{name}");
        download::verify_file(&path, &ExpectedFile { name, sha256: sha, len }).expect("verify_file");
    }
    let data = data::load_dir(Path::new(FULL_DIR)).expect("the full data set loads");
    assert_eq!(data.train.len(), 60_000);
    assert_eq!(data.test.len(), 10_000);
    assert_eq!(data.train.images.len(), 60_000 * 784);
    // Fashion-MNIST is balanced: 6,000 and 1,000 examples per class.
    for (split, per_class) in [(&data.train, 6000), (&data.test, 1000)] {
        let mut counts = [0usize; 10];
        for &l in &split.labels {
            counts[usize::from(l)] += 1;
        }
        assert_eq!(counts, [per_class; 10]);
    }
}

#[test]
fn subset_is_the_prefix_of_the_full_data() {
    if !full_data_available("subset_is_the_prefix_of_the_full_data") {
        return;
    }
    let mut full = data::load_dir(Path::new(FULL_DIR)).expect("the full data set loads");
    full.train.truncate(2000);
    full.test.truncate(1000);
    let dir = subset_dir();
    if std::env::var("NORMLAB_WRITE_SUBSET").as_deref() == Ok("1") {
        std::fs::create_dir_all(&dir).expect("create the subset directory");
        for (split, images, labels) in [(&full.train, NAMES[0], NAMES[1]), (&full.test, NAMES[2], NAMES[3])] {
            idx::write_images(&dir.join(images), &split.images, split.len(), 28, 28).expect("write");
            idx::write_labels(&dir.join(labels), &split.labels).expect("write");
        }
    }
    let subset = data::load_dir(&dir).expect("the committed subset loads");
    assert!(subset.train == full.train, "the training subset is not the first 2,000 examples");
    assert!(subset.test == full.test, "the test subset is not the first 1,000 examples");
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

// ---------------------------------------------------------------------------
// A tiny HTTP/1.1 server on 127.0.0.1 for the download tests

#[derive(Clone)]
enum Reply {
    /// 200 with this body.
    Body(Vec<u8>),
    /// 200, Content-Length claims more than is sent, then the connection closes.
    Cut(Vec<u8>),
    NotFound,
}

struct Server {
    base_url: String,
    requests: Arc<AtomicUsize>,
}

/// Serves `routes` (path without the leading slash -> reply) until the test
/// process ends; one connection at a time, `Connection: close`.
fn serve(routes: HashMap<String, Reply>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let base_url = format!("http://{}/", listener.local_addr().expect("local addr"));
    let requests = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&requests);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            // Errors only mean the client went away; the test sees its side.
            let _ = answer(stream, &routes);
        }
    });
    Server { base_url, requests }
}

fn answer(mut stream: TcpStream, routes: &HashMap<String, Reply>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Read the headers to the blank line, so closing does not reset the connection.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/');
    let reply = routes.get(path).cloned().unwrap_or(Reply::NotFound);
    let head = |len: usize| {
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
    };
    match reply {
        Reply::Body(body) => {
            stream.write_all(head(body.len()).as_bytes())?;
            stream.write_all(&body)?;
        }
        Reply::Cut(body) => {
            stream.write_all(head(body.len() + 1000).as_bytes())?;
            stream.write_all(&body[..body.len() / 2])?;
        }
        Reply::NotFound => {
            stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found")?;
        }
    }
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Both)
}

/// The subset's four files as served bytes, and the table of their hashes.
/// (file name, SHA-256 hex of the decompressed content, decompressed length)
type HashTable = Vec<(String, String, u64)>;

fn subset_files() -> (HashMap<String, Vec<u8>>, HashTable) {
    let mut files = HashMap::new();
    let mut table = Vec::new();
    for name in NAMES {
        let gz = std::fs::read(subset_dir().join(name)).expect("read the subset");
        let content = gunzip(&gz);
        table.push((name.to_string(), sha256_hex(&content), content.len() as u64));
        files.insert(name.to_string(), gz);
    }
    (files, table)
}

fn expected_of(table: &[(String, String, u64)]) -> Vec<ExpectedFile<'_>> {
    table.iter().map(|(n, h, l)| ExpectedFile { name: n, sha256: h, len: *l }).collect()
}

fn routes_of(files: &HashMap<String, Vec<u8>>) -> HashMap<String, Reply> {
    files.iter().map(|(k, v)| (k.clone(), Reply::Body(v.clone()))).collect()
}

#[test]
fn download_good_files_are_verified_and_put_in_place() {
    let (files, table) = subset_files();
    let server = serve(routes_of(&files));
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("new/sub/dir"); // created on demand
    download::download_all_with(&server.base_url, &dest, false, &expected_of(&table)).expect("download");
    let mut want: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(files_in(&dest), want, "exactly the four files, no temporary left");
    for name in NAMES {
        assert_eq!(std::fs::read(dest.join(name)).expect("read"), files[name], "{name}");
    }
    let data = data::load_dir(&dest).expect("the downloaded files load");
    assert_eq!((data.train.len(), data.test.len()), (2000, 1000));
    assert_eq!(server.requests.load(Ordering::SeqCst), 4);

    // Valid files already there are not fetched again; a damaged one is.
    std::fs::write(dest.join(NAMES[3]), b"junk").expect("write");
    download::download_all_with(&server.base_url, &dest, false, &expected_of(&table)).expect("again");
    assert_eq!(server.requests.load(Ordering::SeqCst), 5);
    assert_eq!(std::fs::read(dest.join(NAMES[3])).expect("read"), files[NAMES[3]]);

    // A base URL without the trailing slash works too.
    let other = dir.path().join("other");
    let base = server.base_url.trim_end_matches('/');
    download::download_all_with(base, &other, false, &expected_of(&table)).expect("no slash");
    assert_eq!(files_in(&other).len(), 4);
}

#[test]
fn download_corrupted_file_is_rejected_and_nothing_is_left() {
    let (files, table) = subset_files();
    let mut routes = routes_of(&files);
    // Valid gzip, wrong content: one pixel changed.
    let mut content = gunzip(&files[NAMES[0]]);
    content[1000] ^= 0x55;
    routes.insert(NAMES[0].to_string(), Reply::Body(gzip(&content)));
    let server = serve(routes);
    let dir = tempfile::tempdir().expect("tempdir");
    let result = download::download_all_with(&server.base_url, dir.path(), false, &expected_of(&table));
    let actual = sha256_hex(&content);
    assert_err_contains(result, &[NAMES[0], &table[0].1, &actual, "corrupted", &server.base_url]);
    assert!(files_in(dir.path()).is_empty(), "left behind: {:?}", files_in(dir.path()));

    // Not gzip at all (an HTML error page served with 200).
    let mut routes = routes_of(&files);
    routes.insert(NAMES[1].to_string(), Reply::Body(b"<html>oops</html>".to_vec()));
    let server = serve(routes);
    let result = download::download_all_with(&server.base_url, dir.path(), false, &expected_of(&table));
    assert_err_contains(result, &[NAMES[1], "corrupted"]);
    // The first file was good and stays; the bad one and any temporary are gone.
    assert_eq!(files_in(dir.path()), vec![NAMES[0].to_string()]);

    // Broken gzip.
    let mut routes = routes_of(&files);
    let gz = &files[NAMES[2]];
    routes.insert(NAMES[2].to_string(), Reply::Body(gz[..gz.len() - 100].to_vec()));
    let server = serve(routes);
    let result = download::download_all_with(&server.base_url, dir.path(), false, &expected_of(&table));
    assert_err_contains(result, &[NAMES[2], "gzip"]);
    let mut want = vec![NAMES[0].to_string(), NAMES[1].to_string()];
    want.sort();
    assert_eq!(files_in(dir.path()), want);
}

#[test]
fn download_connection_cut_leaves_no_partial_file() {
    let (files, table) = subset_files();
    let mut routes = routes_of(&files);
    routes.insert(NAMES[0].to_string(), Reply::Cut(files[NAMES[0]].clone()));
    let server = serve(routes);
    let dir = tempfile::tempdir().expect("tempdir");
    let result = download::download_all_with(&server.base_url, dir.path(), false, &expected_of(&table));
    assert_err_contains(result, &[NAMES[0], &server.base_url, "try again"]);
    let left = files_in(dir.path());
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!left.iter().any(|n| n.ends_with(TEMP_SUFFIX)));

    // Cut in the middle of the set: the files before it stay, nothing else.
    let mut routes = routes_of(&files);
    routes.insert(NAMES[2].to_string(), Reply::Cut(files[NAMES[2]].clone()));
    let server = serve(routes);
    let result = download::download_all_with(&server.base_url, dir.path(), false, &expected_of(&table));
    assert_err_contains(result, &[NAMES[2]]);
    let mut want = vec![NAMES[0].to_string(), NAMES[1].to_string()];
    want.sort();
    assert_eq!(files_in(dir.path()), want);
}

#[test]
fn download_http_error_and_https_are_explained() {
    let server = serve(HashMap::new());
    let dir = tempfile::tempdir().expect("tempdir");
    let result = download::download_all(&server.base_url, dir.path(), false);
    assert_err_contains(result, &["train-images-idx3-ubyte.gz", "404"]);
    assert!(files_in(dir.path()).is_empty());

    let start = Instant::now();
    let result = download::download_all("https://127.0.0.1:9/", dir.path(), false);
    assert_err_contains(result, &["https://127.0.0.1:9/", "HTTPS", "TLS", "http://", "--data-dir"]);
    assert!(start.elapsed() < Duration::from_secs(1), "an https URL must fail before any connection");
    assert_err_contains(download::download_all("ftp://x/", dir.path(), false), &["ftp://x/", "http://"]);
    assert_eq!(download::CANONICAL_BASE_URL, "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/");
}

// ---------------------------------------------------------------------------
// locate: the search order and the one clear error

/// A port on 127.0.0.1 where nothing listens (bound, then released).
fn dead_mirror() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}/")
}

fn paths_in(root: &Path, mirror: String) -> SearchPaths {
    SearchPaths { env_dir: None, system_dir: root.join("system"), cache_dir: Some(root.join("cache")), mirror }
}

fn no_download() -> DataSource {
    DataSource { data_dir: None, allow_download: false, progress: false }
}

#[test]
fn locate_search_order() {
    let root = tempfile::tempdir().expect("tempdir");
    let paths = paths_in(root.path(), dead_mirror());
    for d in ["system", "cache", "given", "env"] {
        std::fs::create_dir_all(root.path().join(d)).expect("mkdir");
        write_tiny_set(&root.path().join(d), 2, 2);
    }
    let with_dir = DataSource { data_dir: Some(root.path().join("given")), ..no_download() };
    let with_env = SearchPaths { env_dir: Some(root.path().join("env")), ..paths.clone() };
    assert_eq!(data::locate_in(&with_dir, &with_env).expect("data_dir"), root.path().join("given"));
    assert_eq!(data::locate_in(&no_download(), &with_env).expect("env"), root.path().join("env"));
    assert_eq!(data::locate_in(&no_download(), &paths).expect("system"), root.path().join("system"));
    std::fs::remove_file(root.path().join("system").join(NAMES[2])).expect("rm");
    assert_eq!(data::locate_in(&no_download(), &paths).expect("cache"), root.path().join("cache"));

    // A directory the user named must hold the files: no silent fallback.
    let wrong = DataSource { data_dir: Some(root.path().join("nowhere")), ..no_download() };
    assert_err_contains(data::locate_in(&wrong, &paths), &["nowhere", "--data-dir", "train-images-idx3-ubyte.gz"]);
    let wrong_env = SearchPaths { env_dir: Some(root.path().join("system")), ..paths.clone() };
    assert_err_contains(data::locate_in(&no_download(), &wrong_env), &["NORMLAB_DATA", "t10k-images-idx3-ubyte.gz"]);
}

#[test]
fn locate_without_data_gives_one_clear_error() {
    let root = tempfile::tempdir().expect("tempdir");
    let mirror = dead_mirror();
    let paths = paths_in(root.path(), mirror.clone());
    let cache = root.path().join("cache").display().to_string();
    let three_ways = ["--data-dir", "NORMLAB_DATA", "apt-get install dataset-fashion-mnist", &mirror, &cache];

    let msg = assert_err_contains(data::locate_in(&no_download(), &paths), &three_ways);
    assert!(msg.contains("turned off"), "{msg}");

    let allow = DataSource { allow_download: true, ..no_download() };
    let msg = assert_err_contains(data::locate_in(&allow, &paths), &three_ways);
    assert!(msg.contains("train-images-idx3-ubyte.gz") && msg.to_lowercase().contains("connect"), "{msg}");
    let left: Vec<String> = files_in(&root.path().join("cache"));
    assert!(left.is_empty(), "left behind: {left:?}");

    let https = SearchPaths { mirror: "https://example.invalid/".to_string(), ..paths.clone() };
    assert_err_contains(data::locate_in(&allow, &https), &["HTTPS", "TLS", "apt-get install dataset-fashion-mnist"]);

    let no_cache = SearchPaths { cache_dir: None, ..paths };
    assert_err_contains(data::locate_in(&allow, &no_cache), &["HOME", "--data-dir", "apt-get"]);
}

#[test]
fn locate_downloads_into_the_cache_when_nothing_is_found() {
    let (files, _) = subset_files();
    let server = serve(routes_of(&files));
    let root = tempfile::tempdir().expect("tempdir");
    let paths = paths_in(root.path(), server.base_url.clone());
    let allow = DataSource { allow_download: true, ..no_download() };
    // The subset does not have SPEC.md's hashes, so load() through the real
    // table must refuse it: this checks that locate verifies what it fetches.
    assert_err_contains(
        data::locate_in(&allow, &paths),
        &["train-images-idx3-ubyte.gz", "c59f468a2f672dc8", "corrupted"],
    );
    assert!(files_in(&root.path().join("cache")).is_empty());

    // With the real files served, locate downloads, verifies and finds them.
    if !full_data_available("locate_downloads_into_the_cache_when_nothing_is_found (full files)") {
        return;
    }
    let routes: HashMap<String, Reply> = NAMES
        .iter()
        .map(|n| (n.to_string(), Reply::Body(std::fs::read(Path::new(FULL_DIR).join(n)).expect("read"))))
        .collect();
    let server = serve(routes);
    let paths = paths_in(root.path(), server.base_url.clone());
    let found = data::locate_in(&allow, &paths).expect("downloaded into the cache");
    assert_eq!(found, root.path().join("cache"));
    let data = data::load_dir(&found).expect("loads");
    assert_eq!((data.train.len(), data.test.len()), (60_000, 10_000));
    // Found in the cache the second time: no new request.
    let before = server.requests.load(Ordering::SeqCst);
    assert_eq!(data::locate_in(&allow, &paths).expect("cached"), found);
    assert_eq!(server.requests.load(Ordering::SeqCst), before);
}
