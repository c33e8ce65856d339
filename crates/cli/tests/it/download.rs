//! Tests of finding and downloading Fashion-MNIST (`normlab_cli::locate`,
//! `normlab_cli::download`): the search order, the SHA-256 table against the
//! full data set, and the downloader against a small HTTP server on
//! 127.0.0.1 (no other host is ever contacted).
//!
//! To regenerate the committed subset from the full data:
//! `NORMLAB_WRITE_SUBSET=1 cargo test -p normlab-cli --test download subset_`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use normlab::data::{self, idx};
use normlab_cli::download::{self, ExpectedFile, Hashed, IdxSet, TEMP_SUFFIX};
use normlab_cli::locate::{self, DataSource, SearchPaths};

use crate::data_files;
use data_files::*;

// ---------------------------------------------------------------------------
// The full data set (the hashes of docs/spec.md, "Data") and the subset's provenance

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
    // The downloader's table must be the one of docs/spec.md, value for value.
    let table: Vec<(&str, &str, u64)> =
        download::FASHION_MNIST_FILES.iter().map(|f| (f.name, f.sha256, f.len)).collect();
    assert_eq!(table, SPEC_HASHES.to_vec());
    for (name, sha, len) in SPEC_HASHES {
        let path = Path::new(FULL_DIR).join(name);
        let (hash, got_len) = download::content_sha256(&path, len).expect("hash the full file");
        assert_eq!((hash.as_str(), got_len), (sha, len), "{name}");
        download::verify_file(&path, &ExpectedFile { name, sha256: sha, len, hashed: Hashed::Content })
            .expect("verify_file");
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
    table.iter().map(|(n, h, l)| ExpectedFile { name: n, sha256: h, len: *l, hashed: Hashed::Content }).collect()
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
    DataSource { set: IdxSet::FashionMnist, data_dir: None, allow_download: false, progress: false }
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
    assert_eq!(locate::locate_in(&with_dir, &with_env).expect("data_dir"), root.path().join("given"));
    assert_eq!(locate::locate_in(&no_download(), &with_env).expect("env"), root.path().join("env"));
    assert_eq!(locate::locate_in(&no_download(), &paths).expect("system"), root.path().join("system"));
    std::fs::remove_file(root.path().join("system").join(NAMES[2])).expect("rm");
    assert_eq!(locate::locate_in(&no_download(), &paths).expect("cache"), root.path().join("cache"));

    // A directory the user named must hold the files: no silent fallback.
    let wrong = DataSource { data_dir: Some(root.path().join("nowhere")), ..no_download() };
    assert_err_contains(locate::locate_in(&wrong, &paths), &["nowhere", "--data-dir", "train-images-idx3-ubyte.gz"]);
    let wrong_env = SearchPaths { env_dir: Some(root.path().join("system")), ..paths.clone() };
    assert_err_contains(locate::locate_in(&no_download(), &wrong_env), &["NORMLAB_DATA", "t10k-images-idx3-ubyte.gz"]);
}

#[test]
fn locate_without_data_gives_one_clear_error() {
    let root = tempfile::tempdir().expect("tempdir");
    let mirror = dead_mirror();
    let paths = paths_in(root.path(), mirror.clone());
    let cache = root.path().join("cache").display().to_string();
    let three_ways = ["--data-dir", "NORMLAB_DATA", "apt-get install dataset-fashion-mnist", &mirror, &cache];

    let msg = assert_err_contains(locate::locate_in(&no_download(), &paths), &three_ways);
    assert!(msg.contains("turned off"), "{msg}");

    let allow = DataSource { allow_download: true, ..no_download() };
    let msg = assert_err_contains(locate::locate_in(&allow, &paths), &three_ways);
    assert!(msg.contains("train-images-idx3-ubyte.gz") && msg.to_lowercase().contains("connect"), "{msg}");
    let left: Vec<String> = files_in(&root.path().join("cache"));
    assert!(left.is_empty(), "left behind: {left:?}");

    let https = SearchPaths { mirror: "https://example.invalid/".to_string(), ..paths.clone() };
    assert_err_contains(locate::locate_in(&allow, &https), &["HTTPS", "TLS", "apt-get install dataset-fashion-mnist"]);

    let no_cache = SearchPaths { cache_dir: None, ..paths };
    assert_err_contains(locate::locate_in(&allow, &no_cache), &["HOME", "--data-dir", "apt-get"]);
}

#[test]
fn locate_downloads_into_the_cache_when_nothing_is_found() {
    let (files, _) = subset_files();
    let server = serve(routes_of(&files));
    let root = tempfile::tempdir().expect("tempdir");
    let paths = paths_in(root.path(), server.base_url.clone());
    let allow = DataSource { allow_download: true, ..no_download() };
    // The subset does not have the hashes of docs/spec.md, so load() through the real
    // table must refuse it: this checks that locate verifies what it fetches.
    assert_err_contains(
        locate::locate_in(&allow, &paths),
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
    let found = locate::locate_in(&allow, &paths).expect("downloaded into the cache");
    assert_eq!(found, root.path().join("cache"));
    let data = data::load_dir(&found).expect("loads");
    assert_eq!((data.train.len(), data.test.len()), (60_000, 10_000));
    // Found in the cache the second time: no new request.
    let before = server.requests.load(Ordering::SeqCst);
    assert_eq!(locate::locate_in(&allow, &paths).expect("cached"), found);
    assert_eq!(server.requests.load(Ordering::SeqCst), before);
}

// ---------------------------------------------------------------------------
// MNIST and KMNIST: hashes of the published gzip files

/// The subset's gzip files served as an MNIST-format set whose table holds
/// the SHA-256 of each file as served (as MNIST's and KMNIST's do): they
/// are put in place; a table whose hash differs by one digit, or a mirror
/// serving the same content recompressed, is refused with both hashes
/// named and nothing left behind.
#[test]
fn file_hashes_are_checked_over_the_served_bytes() {
    let (files, table) = subset_files();
    let server = serve(routes_of(&files));
    let file_table: Vec<(String, String, u64)> =
        table.iter().map(|(n, _, len)| (n.clone(), sha256_hex(&files[n]), *len)).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good");
    download::download_all_with(&server.base_url, &good, false, &file_hashed(&file_table)).expect("download");
    for name in NAMES {
        assert_eq!(std::fs::read(good.join(name)).unwrap(), files[name], "{name} kept as served");
    }
    assert_eq!(data::load_dir(&good).expect("loads").train.len(), 2000);

    // one hex digit off in the labels' hash
    let mut bad_table = file_table.clone();
    let h = &mut bad_table[1].1;
    let flipped = if h.starts_with('0') { '1' } else { '0' };
    h.replace_range(0..1, &flipped.to_string());
    let bad = dir.path().join("bad");
    let err = download::download_all_with(&server.base_url, &bad, false, &file_hashed(&bad_table))
        .expect_err("a wrong hash is refused")
        .to_string();
    for needle in [NAMES[1], &file_table[1].1, &bad_table[1].1] {
        assert!(err.contains(needle), "{needle} not in: {err}");
    }
    assert_eq!(
        files_in(&bad),
        NAMES[..1].to_vec(),
        "the file before it is kept, the bad one and its temporary are not"
    );

    // the same content, recompressed: its file hash is not the published one
    let recompressed: HashMap<String, Vec<u8>> = files.iter().map(|(n, gz)| (n.clone(), gzip(&gunzip(gz)))).collect();
    assert_ne!(recompressed[NAMES[0]], files[NAMES[0]], "the test needs other gzip bytes");
    let other = serve(routes_of(&recompressed));
    let err = download::download_all_with(&other.base_url, &dir.path().join("re"), false, &file_hashed(&file_table))
        .expect_err("other bytes are refused")
        .to_string();
    assert!(err.contains(NAMES[0]) && err.contains(&file_table[0].1), "{err}");
}

/// The tables of MNIST and KMNIST: four files each, named as Fashion-MNIST's,
/// hashes over the published gzip files, the decompressed lengths of
/// 60,000 and 10,000 28x28 images and their labels.
#[test]
fn mnist_and_kmnist_tables_are_complete() {
    for set in [IdxSet::Mnist, IdxSet::Kmnist] {
        let files = set.files();
        let names: Vec<&str> = files.iter().map(|f| f.name).collect();
        assert_eq!(names, NAMES, "{set:?}");
        let lens: Vec<u64> = files.iter().map(|f| f.len).collect();
        assert_eq!(lens, [16 + 60_000 * 784, 8 + 60_000, 16 + 10_000 * 784, 8 + 10_000], "{set:?}");
        for f in files {
            assert_eq!(f.hashed, Hashed::File, "{set:?}");
            assert!(f.sha256.len() == 64 && f.sha256.bytes().all(|b| b.is_ascii_hexdigit()), "{}", f.sha256);
        }
        assert_eq!(set.class_names().len(), 10);
        assert!(set.base_url().starts_with("http://"), "no TLS in this build");
    }
    assert_eq!(IdxSet::Kmnist.class_names()[0], "o (お)");
    assert_eq!(IdxSet::Mnist.class_names()[7], "7");
}

fn file_hashed(t: &[(String, String, u64)]) -> Vec<ExpectedFile<'_>> {
    t.iter().map(|(n, h, l)| ExpectedFile { name: n, sha256: h, len: *l, hashed: Hashed::File }).collect()
}

/// `normlab train --dataset mnist` with nothing in the cache downloads from
/// $NORMLAB_MIRROR into $XDG_CACHE_HOME/normlab/mnist; a mirror serving other
/// files (here Fashion-MNIST's subset) is refused by the real MNIST table:
/// exit 2, one line naming the file and the expected hash, nothing kept.
#[test]
fn cli_mnist_download_refuses_files_with_other_hashes() {
    let (files, _) = subset_files();
    let server = serve(routes_of(&files));
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_normlab"))
        .args(["train", "--dataset", "mnist", "--epochs", "1", "--out"])
        .arg(dir.path().join("run"))
        .env_remove("NORMLAB_DATA")
        .env("XDG_CACHE_HOME", &cache)
        .env("NORMLAB_MIRROR", &server.base_url)
        .output()
        .expect("run normlab");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    for needle in ["MNIST not found", "train-images-idx3-ubyte.gz", download::MNIST_FILES[0].sha256] {
        assert!(stderr.contains(needle), "{needle} not in: {stderr}");
    }
    assert!(server.requests.load(Ordering::SeqCst) >= 1, "the mirror was asked");
    assert_eq!(files_in(&cache.join("normlab/mnist")), Vec::<String>::new(), "nothing kept");
    assert!(!dir.path().join("run").exists(), "no run directory left");
}
