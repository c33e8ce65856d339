//! Downloading Fashion-MNIST, MNIST or KMNIST ([`IdxSet`]) from a
//! plain-HTTP mirror, verified and atomic.
//!
//! ```no_run
//! use std::path::Path;
//! use normlab_cli::download::{download_all, CANONICAL_BASE_URL};
//!
//! download_all(CANONICAL_BASE_URL, Path::new("/tmp/fashion-mnist"), true)?;
//! # Ok::<(), normlab::Error>(())
//! ```
//!
//! Each file goes to a temporary file in the destination directory, is
//! checked (SHA-256 and length of the DECOMPRESSED content: mirrors recompress
//! the files, so the gzip bytes differ while the content does not; for MNIST
//! and KMNIST, whose public hashes are of the published gzip files, the
//! SHA-256 of the file and the length of its content), synced to
//! disk and only then renamed to its final name. A reader of the directory
//! therefore sees either no file or a complete, verified one, and every error
//! path (HTTP error, connection cut, bad hash, panic) removes the temporary.
//! A process killed mid-download (Ctrl-C, SIGKILL) leaves its temporary
//! behind; the next download into the directory, or the next search of the
//! cache, removes it ([`remove_stale_temporaries`]).
//!
//! No response is read past what the file can be: the expected length
//! comes with the SHA-256, and a gzip stream is never much longer than its
//! content ([`max_download_len`]); an endless or oversized response stops
//! there.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use normlab::data::idx;
use normlab::{Error, Result};

/// The canonical Fashion-MNIST mirror (Zalando's S3 website endpoint, which
/// still answers plain HTTP; this build has no TLS).
pub const CANONICAL_BASE_URL: &str = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/";

/// Environment variable that replaces [`CANONICAL_BASE_URL`].
pub const MIRROR_ENV: &str = "NORMLAB_MIRROR";

/// What a downloaded file must be: its decompressed content's length, and
/// a SHA-256 of that content or of the file as served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedFile<'a> {
    /// File name on the mirror and on disk (e.g. `train-images-idx3-ubyte.gz`).
    pub name: &'a str,
    /// SHA-256, lowercase hex, of what [`ExpectedFile::hashed`] says.
    pub sha256: &'a str,
    /// Length of the decompressed content in bytes.
    pub len: u64,
    /// Whether `sha256` is that of the content or of the file's bytes.
    pub hashed: Hashed,
}

/// What an [`ExpectedFile`]'s SHA-256 is taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hashed {
    /// The decompressed content: any mirror's recompression passes.
    Content,
    /// The file exactly as published (the gzip bytes): the hashes public
    /// sources give for MNIST and KMNIST, whose mirrors serve the
    /// original files. The content's length is checked as well.
    File,
}

/// A data set of the MNIST family that normlab can download: the same four
/// file names, 28x28 grey images, ten classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdxSet {
    /// Zalando's Fashion-MNIST, the chapter's data.
    FashionMnist,
    /// LeCun, Cortes and Burges' handwritten digits.
    Mnist,
    /// Kuzushiji-MNIST (Clanuwat et al. 2018): ten cursive hiragana.
    Kmnist,
}

impl IdxSet {
    /// Every downloadable set.
    pub const ALL: [IdxSet; 3] = [IdxSet::FashionMnist, IdxSet::Mnist, IdxSet::Kmnist];

    /// The name on the command line (`--dataset`) and of its cache directory.
    pub fn name(self) -> &'static str {
        match self {
            IdxSet::FashionMnist => "fashion-mnist",
            IdxSet::Mnist => "mnist",
            IdxSet::Kmnist => "kmnist",
        }
    }

    /// The set's own spelling, for messages.
    pub fn title(self) -> &'static str {
        match self {
            IdxSet::FashionMnist => "Fashion-MNIST",
            IdxSet::Mnist => "MNIST",
            IdxSet::Kmnist => "KMNIST",
        }
    }

    /// The set called `name` ([`IdxSet::name`]).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The four files and their hashes.
    pub fn files(self) -> &'static [ExpectedFile<'static>; 4] {
        match self {
            IdxSet::FashionMnist => &FASHION_MNIST_FILES,
            IdxSet::Mnist => &MNIST_FILES,
            IdxSet::Kmnist => &KMNIST_FILES,
        }
    }

    /// The plain-HTTP mirror downloads come from (unless `NORMLAB_MIRROR`).
    pub fn base_url(self) -> &'static str {
        match self {
            IdxSet::FashionMnist => CANONICAL_BASE_URL,
            IdxSet::Mnist => MNIST_BASE_URL,
            IdxSet::Kmnist => KMNIST_BASE_URL,
        }
    }

    /// The name of each class, indexed by label.
    pub fn class_names(self) -> &'static [&'static str; 10] {
        match self {
            IdxSet::FashionMnist => &normlab::data::CLASS_NAMES,
            IdxSet::Mnist => &["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            // KMNIST's kmnist_classmap.csv: the characters U+304A, U+304D,
            // U+3059, U+3064, U+306A, U+306F, U+307E, U+3084, U+308C, U+3092
            IdxSet::Kmnist => &[
                "o (お)",
                "ki (き)",
                "su (す)",
                "tsu (つ)",
                "na (な)",
                "ha (は)",
                "ma (ま)",
                "ya (や)",
                "re (れ)",
                "wo (を)",
            ],
        }
    }
}

/// MNIST's mirror: PyTorch's copy on S3 (torchvision's first mirror since
/// yann.lecun.com stopped serving the files), which also answers plain HTTP.
pub const MNIST_BASE_URL: &str = "http://ossci-datasets.s3.amazonaws.com/mnist/";

/// KMNIST's publisher, the ROIS-DS Center for Open Data in the Humanities
/// (the URL torchvision uses).
pub const KMNIST_BASE_URL: &str = "http://codh.rois.ac.jp/kmnist/dataset/kmnist/";

/// The four MNIST files. The SHA-256 sums are of the gzip files as
/// published (no public source gives those of the decompressed content that
/// a second one confirms), from torchvision's prototype datasets
/// (torchvision/prototype/datasets/_builtin/mnist.py, `_CHECKSUMS`), the same
/// values TensorFlow Datasets and others check; the lengths are the
/// decompressed ones (16- and 8-byte IDX headers plus 784 bytes an image
/// or one a label), which bound the download.
pub const MNIST_FILES: [ExpectedFile<'static>; 4] = [
    ExpectedFile {
        name: "train-images-idx3-ubyte.gz",
        sha256: "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        len: 47_040_016,
        hashed: Hashed::File,
    },
    ExpectedFile {
        name: "train-labels-idx1-ubyte.gz",
        sha256: "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        len: 60_008,
        hashed: Hashed::File,
    },
    ExpectedFile {
        name: "t10k-images-idx3-ubyte.gz",
        sha256: "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        len: 7_840_016,
        hashed: Hashed::File,
    },
    ExpectedFile {
        name: "t10k-labels-idx1-ubyte.gz",
        sha256: "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        len: 10_008,
        hashed: Hashed::File,
    },
];

/// The four KMNIST files: SHA-256 of the gzip files as published, from the
/// same torchvision table as [`MNIST_FILES`] (also in torchvision-ruby's
/// KMNIST); the decompressed lengths are MNIST's (same counts and sizes).
pub const KMNIST_FILES: [ExpectedFile<'static>; 4] = [
    ExpectedFile {
        name: "train-images-idx3-ubyte.gz",
        sha256: "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
        len: 47_040_016,
        hashed: Hashed::File,
    },
    ExpectedFile {
        name: "train-labels-idx1-ubyte.gz",
        sha256: "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
        len: 60_008,
        hashed: Hashed::File,
    },
    ExpectedFile {
        name: "t10k-images-idx3-ubyte.gz",
        sha256: "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
        len: 7_840_016,
        hashed: Hashed::File,
    },
    ExpectedFile {
        name: "t10k-labels-idx1-ubyte.gz",
        sha256: "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
        len: 10_008,
        hashed: Hashed::File,
    },
];

/// The four Fashion-MNIST files with the hashes of docs/spec.md, "Data".
pub const FASHION_MNIST_FILES: [ExpectedFile<'static>; 4] = [
    ExpectedFile {
        name: "train-images-idx3-ubyte.gz",
        sha256: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        len: 47_040_016,
        hashed: Hashed::Content,
    },
    ExpectedFile {
        name: "train-labels-idx1-ubyte.gz",
        sha256: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        len: 60_008,
        hashed: Hashed::Content,
    },
    ExpectedFile {
        name: "t10k-images-idx3-ubyte.gz",
        sha256: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        len: 7_840_016,
        hashed: Hashed::Content,
    },
    ExpectedFile {
        name: "t10k-labels-idx1-ubyte.gz",
        sha256: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        len: 10_008,
        hashed: Hashed::Content,
    },
];

/// Suffix of the temporary files; nothing else in a data directory ends so.
pub const TEMP_SUFFIX: &str = ".normlab-part";

/// Downloads the four files of `set` from `base_url` into `dest_dir`,
/// checking them against its table ([`IdxSet::files`]). Files already there
/// and valid are kept.
pub fn download_set(set: IdxSet, base_url: &str, dest_dir: &Path, progress: bool) -> Result<()> {
    download_all_with(base_url, dest_dir, progress, set.files())
}

/// Downloads the four Fashion-MNIST files from `base_url` into `dest_dir`,
/// checking them against the hashes of docs/spec.md. Files already there and valid are
/// kept, so an interrupted download resumes file by file.
pub fn download_all(base_url: &str, dest_dir: &Path, progress: bool) -> Result<()> {
    download_all_with(base_url, dest_dir, progress, &FASHION_MNIST_FILES)
}

/// [`download_all`] with the list of files and their hashes given (tests
/// serve small files whose hashes are not those of docs/spec.md).
pub fn download_all_with(base_url: &str, dest_dir: &Path, progress: bool, expected: &[ExpectedFile<'_>]) -> Result<()> {
    let base = check_base_url(base_url)?;
    fs::create_dir_all(dest_dir).map_err(|e| Error::io(dest_dir, e))?;
    remove_stale_temporaries(dest_dir);
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(15))
        // Per read, not for the whole body: a slow link may take minutes
        // for the 26 MB file, but a stalled one should not hang forever.
        .timeout_read(Duration::from_secs(60))
        .timeout_write(Duration::from_secs(30))
        .user_agent(concat!("normlab/", env!("CARGO_PKG_VERSION")))
        .build();
    let show = progress && io::stderr().is_terminal();
    for file in expected {
        let dest = dest_dir.join(file.name);
        if dest.exists() && verify_file(&dest, file).is_ok() {
            continue;
        }
        download_one(&agent, &format!("{base}{}", file.name), dest_dir, file, show)?;
    }
    Ok(())
}

/// Checks that `path` decompresses to content of the expected length and
/// SHA-256; the error names the file and both hashes.
pub fn verify_file(path: &Path, expected: &ExpectedFile<'_>) -> Result<()> {
    match content_mismatch(path, expected) {
        Ok(None) => Ok(()),
        Ok(Some(msg)) => Err(Error::data(
            path,
            format!("{msg}; delete it and download again, or pass --data-dir pointing at good files"),
        )),
        Err(e) => Err(e),
    }
}

/// `Ok(Some(description))` when the content is not the expected one.
fn content_mismatch(path: &Path, expected: &ExpectedFile<'_>) -> Result<Option<String>> {
    let (content_hash, len) = content_sha256(path, expected.len)?;
    let len_note =
        if len > expected.len { format!("more than {} bytes", expected.len) } else { format!("{len} bytes") };
    match expected.hashed {
        Hashed::Content => {
            if len == expected.len && content_hash == expected.sha256 {
                return Ok(None);
            }
            Ok(Some(format!(
                "{} is corrupted or not the expected file: its decompressed content has SHA-256 {content_hash} \
                 ({len_note}), expected {} ({} bytes)",
                expected.name, expected.sha256, expected.len
            )))
        }
        Hashed::File => {
            let file_hash = file_sha256(path, max_download_len(expected))?;
            if len == expected.len && file_hash == expected.sha256 {
                return Ok(None);
            }
            Ok(Some(format!(
                "{} is corrupted or not the expected file: it has SHA-256 {file_hash} and decompresses to \
                 {len_note}, expected {} and {} bytes",
                expected.name, expected.sha256, expected.len
            )))
        }
    }
}

/// SHA-256 (lowercase hex) of a file's bytes as they are, reading at most
/// `limit + 1` of them.
fn file_sha256(path: &Path, limit: u64) -> Result<String> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file.take(limit + 1), &mut hasher).map_err(|e| Error::io(path, e))?;
    Ok(hex(&hasher.finalize()))
}

/// SHA-256 (lowercase hex) and length of the decoded (decompressed if gzip)
/// content of a file. Reads at most `limit + 1` decoded bytes, so a
/// decompression bomb costs no more than a file of the right size; a length
/// of `limit + 1` means "longer than `limit`".
pub fn content_sha256(path: &Path, limit: u64) -> Result<(String, u64)> {
    let (reader, gzip) = idx::open_decoded(path)?;
    let mut hasher = Sha256::new();
    let len = io::copy(&mut reader.take(limit + 1), &mut hasher).map_err(|e| {
        if gzip {
            Error::data(path, format!("corrupt or truncated gzip data ({e}); delete it and download again"))
        } else {
            Error::io(path, e)
        }
    })?;
    Ok((hex(&hasher.finalize()), len))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_base_url(base_url: &str) -> Result<String> {
    let lower = base_url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(Error::config(
            "mirror URL",
            format!(
                "{base_url} uses HTTPS, which this build cannot fetch (it has no TLS support); \
                 use a plain-HTTP mirror such as {CANONICAL_BASE_URL} (set {MIRROR_ENV}), or \
                 download the four files yourself and pass --data-dir DIR"
            ),
        ));
    }
    if !lower.starts_with("http://") {
        return Err(Error::config(
            "mirror URL",
            format!("{base_url} is not an http:// URL; set {MIRROR_ENV} to e.g. {CANONICAL_BASE_URL}"),
        ));
    }
    // Names are appended to the base, so make sure it ends with a slash.
    Ok(if base_url.ends_with('/') { base_url.to_string() } else { format!("{base_url}/") })
}

/// The most bytes read for `file`: its decompressed length, plus what gzip
/// can add to incompressible data (5 bytes per 64 KiB stored block, a
/// header and trailer), with a generous margin. A mirror may also serve the
/// file uncompressed, which is within it.
pub fn max_download_len(file: &ExpectedFile<'_>) -> u64 {
    file.len + file.len / 100 + (1 << 20)
}

/// Removes the temporary files that downloads killed before they could
/// clean up (Ctrl-C, SIGKILL, a power cut) left in `dir`: those of
/// processes no longer running, and any older than a day. A running
/// download's own file is left alone. Best effort: errors are ignored.
pub fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(TEMP_SUFFIX)) else { continue };
        // ".NAME.PID.N": the pid of the process that writes it
        let pid: Option<i32> = stem.rsplit('.').nth(1).and_then(|p| p.parse().ok());
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(86_400));
        if old || !pid.is_some_and(process_is_running) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Whether a process with this id exists (it may be another user's).
fn process_is_running(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    if pid as u32 == std::process::id() {
        return true;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes the temporary file when dropped, unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: the error that got us here matters more.
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn temp_path(dest_dir: &Path, name: &str) -> PathBuf {
    // Unique per process and per call, so concurrent downloads (two normlab
    // runs sharing the cache) never write to the same temporary file.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dest_dir.join(format!(".{name}.{}.{n}{TEMP_SUFFIX}", std::process::id()))
}

fn download_one(
    agent: &ureq::Agent,
    url: &str,
    dest_dir: &Path,
    file: &ExpectedFile<'_>,
    show_progress: bool,
) -> Result<()> {
    let dest = dest_dir.join(file.name);
    let fail = |msg: String| Error::data(&dest, format!("download from {url} failed: {msg}"));
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Status(code, r) => fail(format!("the server answered HTTP {code} {}", r.status_text())),
        ureq::Error::Transport(t) => fail(describe_transport(&t)),
    })?;
    let content_length: Option<u64> = response.header("Content-Length").and_then(|v| v.trim().parse().ok());
    let limit = max_download_len(file);
    let too_long = |what: String| {
        fail(format!(
            "{what}, more than {} can be ({limit} bytes at most), so reading stopped; the mirror serves something else, \
             set {MIRROR_ENV} to another mirror or pass --data-dir",
            file.name
        ))
    };
    if let Some(announced) = content_length.filter(|&n| n > limit) {
        return Err(too_long(format!("the server announces {announced} bytes")));
    }

    let mut temp = TempFile { path: temp_path(dest_dir, file.name), armed: false };
    let out = OpenOptions::new().write(true).create_new(true).open(&temp.path).map_err(|e| Error::io(&temp.path, e))?;
    temp.armed = true;

    let bar = progress_bar(content_length, file.name, show_progress);
    let mut body = bar.wrap_read(response.into_reader());
    let mut writer = BufWriter::new(out);
    let copied = copy_body(&mut body, &mut writer, limit).map_err(|e| match e {
        CopyError::Read(e) => fail(format!("{e}; the connection was lost, try again")),
        CopyError::Write(e) => Error::io(&temp.path, e),
        CopyError::TooLong => too_long("the server kept sending".to_string()),
    })?;
    bar.finish_and_clear();
    if let Some(want) = content_length {
        // ureq already fails on a short body; this also catches a server
        // that sends more than it announced.
        if copied != want {
            return Err(fail(format!("received {copied} bytes, the server announced {want}; try again")));
        }
    }
    let out = writer.into_inner().map_err(|e| Error::io(&temp.path, e.into_error()))?;
    out.sync_all().map_err(|e| Error::io(&temp.path, e))?;
    drop(out);

    let bad_file = |what: String| {
        fail(format!(
            "{what}; the mirror served a bad file (nothing was kept), try again later or set \
             {MIRROR_ENV} to another mirror"
        ))
    };
    match content_mismatch(&temp.path, file) {
        Ok(None) => {}
        Ok(Some(msg)) => return Err(bad_file(msg)),
        // Decompression errors name the temporary file, which is gone by the
        // time the user reads this: report the message alone.
        Err(Error::Data { message, .. }) => return Err(bad_file(format!("{}: {message}", file.name))),
        Err(e) => return Err(e),
    }
    fs::rename(&temp.path, &dest).map_err(|e| Error::io(&dest, e))?;
    temp.armed = false;
    sync_dir(dest_dir);
    Ok(())
}

/// ureq's own Display repeats the URL, which our message already names.
fn describe_transport(t: &ureq::Transport) -> String {
    let mut text = t.kind().to_string();
    if let Some(m) = t.message() {
        text = format!("{text}: {m}");
    }
    if let Some(source) = std::error::Error::source(t) {
        text = format!("{text}: {source}");
    }
    text
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
    /// More than the limit arrived; reading stopped there.
    TooLong,
}

/// `io::copy`, but telling read (network) errors from write (disk) errors,
/// and stopping once more than `limit` bytes arrive.
fn copy_body(from: &mut impl Read, to: &mut impl Write, limit: u64) -> std::result::Result<u64, CopyError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let mut from = from.take(limit + 1);
    loop {
        if total > limit {
            return Err(CopyError::TooLong);
        }
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
}

fn progress_bar(len: Option<u64>, name: &str, show: bool) -> ProgressBar {
    let target = if show { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    let bar = match len {
        Some(len) => {
            let bar = ProgressBar::with_draw_target(Some(len), target);
            if let Ok(style) =
                ProgressStyle::with_template("{msg:28} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        }
        None => {
            let bar = ProgressBar::with_draw_target(None, target);
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg:28} {bytes} {bytes_per_sec}") {
                bar.set_style(style);
            }
            bar
        }
    };
    bar.set_message(name.to_string());
    bar
}

/// Makes the rename durable: on Unix a rename is only on disk once the
/// directory itself is synced. Failure is harmless (the file is complete).
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}
