//! Finding, downloading and loading Fashion-MNIST.
//!
//! ```no_run
//! use normlab::data::{load, DataSource, CLASS_NAMES};
//!
//! let data = load(&DataSource::default())?; // searches, downloads if needed
//! let first = data.train.image(0); // 28 * 28 bytes, 0 = background
//! println!("{} training images, the first is a {}", data.train.len(),
//!          CLASS_NAMES[usize::from(data.train.labels[0])]);
//! # let _ = first;
//! # Ok::<(), normlab::Error>(())
//! ```
//!
//! The images stay bytes: the full training set is 47 MB as `u8` and would
//! be 188 MB as `f32`; the training loop scales each batch to [0, 1] itself.

use std::path::{Path, PathBuf};

use crate::data::download::{self, CANONICAL_BASE_URL, MIRROR_ENV};
use crate::data::idx;
use crate::{Error, Result};

/// The ten classes, indexed by label.
pub const CLASS_NAMES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// Number of classes (labels are `0..NUM_CLASSES`).
pub const NUM_CLASSES: usize = CLASS_NAMES.len();
/// Fashion-MNIST images are `IMAGE_SIDE` x `IMAGE_SIDE` pixels.
pub const IMAGE_SIDE: usize = 28;

/// File names without the `.gz` extension; a directory may hold either the
/// compressed (`.gz`, as shipped) or the decompressed files.
pub const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
pub const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
pub const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
pub const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";
const STEMS: [&str; 4] = [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS];

/// Where Debian and Ubuntu's `dataset-fashion-mnist` package installs the files.
pub const SYSTEM_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// Environment variable naming a directory that holds the four files.
pub const DATA_ENV: &str = "NORMLAB_DATA";

/// One split: `len()` images of `rows` x `cols` bytes, row-major, and their
/// labels (`0..10`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub rows: usize,
    pub cols: usize,
}

impl Split {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image (`rows * cols`).
    pub fn image_len(&self) -> usize {
        self.rows * self.cols
    }

    /// The pixels of example `i`. Panics if `i >= len()`, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let size = self.image_len();
        &self.images[i * size..(i + 1) * size]
    }

    /// Keeps the first `n` examples (all of them if there are fewer).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.images.truncate(n * self.image_len());
            self.labels.truncate(n);
        }
    }
}

/// The training (60,000) and test (10,000) splits, and the directory they
/// were read from.
#[derive(Debug, Clone)]
pub struct FashionMnist {
    pub train: Split,
    pub test: Split,
    pub dir: PathBuf,
}

/// Where to look for the data and whether it may be downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSource {
    /// A directory given by the user (`--data-dir`); when set, it must hold
    /// the four files: a wrong path is reported rather than silently
    /// replaced by data found elsewhere.
    pub data_dir: Option<PathBuf>,
    /// Download into the cache directory when no directory has the files.
    pub allow_download: bool,
    /// Show a progress bar on stderr while downloading (only on a terminal).
    pub progress: bool,
}

impl Default for DataSource {
    fn default() -> Self {
        DataSource { data_dir: None, allow_download: true, progress: true }
    }
}

/// The places [`locate`] searches, read from the environment by
/// [`SearchPaths::from_env`]; tests build their own to stay hermetic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPaths {
    /// `$NORMLAB_DATA`, if set; like `data_dir`, it must hold the files.
    pub env_dir: Option<PathBuf>,
    /// [`SYSTEM_DIR`].
    pub system_dir: PathBuf,
    /// `$XDG_CACHE_HOME/normlab/fashion-mnist` or `~/.cache/normlab/fashion-mnist`;
    /// `None` when neither variable is usable (no download then).
    pub cache_dir: Option<PathBuf>,
    /// `$NORMLAB_MIRROR` or [`CANONICAL_BASE_URL`].
    pub mirror: String,
}

impl SearchPaths {
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let cache_root = var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            // The XDG spec says relative values are invalid and must be ignored.
            .filter(|p| p.is_absolute())
            .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")));
        SearchPaths {
            env_dir: var(DATA_ENV).map(PathBuf::from),
            system_dir: PathBuf::from(SYSTEM_DIR),
            cache_dir: cache_root.map(|c| c.join("normlab").join("fashion-mnist")),
            mirror: std::env::var(MIRROR_ENV)
                .ok()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| CANONICAL_BASE_URL.to_string()),
        }
    }
}

/// The four files of one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFiles {
    pub train_images: PathBuf,
    pub train_labels: PathBuf,
    pub test_images: PathBuf,
    pub test_labels: PathBuf,
}

/// Finds the four files in `dir` (each as `NAME.gz` or `NAME`); on failure,
/// returns the names that are missing.
pub fn find_files(dir: &Path) -> std::result::Result<DataFiles, Vec<String>> {
    let mut found = Vec::with_capacity(4);
    let mut missing = Vec::new();
    for stem in STEMS {
        let gz = dir.join(format!("{stem}.gz"));
        let raw = dir.join(stem);
        if gz.is_file() {
            found.push(gz);
        } else if raw.is_file() {
            found.push(raw);
        } else {
            missing.push(format!("{stem}.gz"));
        }
    }
    match <[PathBuf; 4]>::try_from(found) {
        Ok([train_images, train_labels, test_images, test_labels]) if missing.is_empty() => {
            Ok(DataFiles { train_images, train_labels, test_images, test_labels })
        }
        _ => Err(missing),
    }
}

/// Finds a directory holding the four files, searching in order: `data_dir`,
/// `$NORMLAB_DATA`, [`SYSTEM_DIR`], the cache directory; if none has them,
/// downloads them into the cache directory (when allowed).
pub fn locate(src: &DataSource) -> Result<PathBuf> {
    locate_in(src, &SearchPaths::from_env())
}

/// [`locate`] with explicit search paths instead of the environment.
pub fn locate_in(src: &DataSource, paths: &SearchPaths) -> Result<PathBuf> {
    // A directory the user named must be right: falling back to other data
    // would hide the mistake (and could train on something else entirely).
    let explicit =
        [(src.data_dir.as_ref(), "given with --data-dir"), (paths.env_dir.as_ref(), "named by NORMLAB_DATA")];
    for (dir, how) in explicit {
        if let Some(dir) = dir {
            return match find_files(dir) {
                Ok(_) => Ok(dir.clone()),
                Err(missing) => {
                    let problem = if !dir.is_dir() {
                        "does not exist".to_string()
                    } else if missing.len() == STEMS.len() {
                        "holds none of the Fashion-MNIST files".to_string()
                    } else {
                        format!("lacks {}", missing.join(", "))
                    };
                    Err(Error::data(
                        dir,
                        format!(
                            "this directory, {how}, {problem}; it must hold all four ({}), \
                             gzip-compressed or not; fix the path, or leave it unset to use \
                             {SYSTEM_DIR} or download the data",
                            all_names()
                        ),
                    ))
                }
            };
        }
    }

    let mut looked = vec![format!("{DATA_ENV} (not set)")];
    for dir in std::iter::once(&paths.system_dir).chain(paths.cache_dir.as_ref()) {
        match find_files(dir) {
            Ok(_) => return Ok(dir.clone()),
            Err(missing) => looked.push(describe_missing(dir, &missing)),
        }
    }

    let download_outcome = match (&paths.cache_dir, src.allow_download) {
        (_, false) => "downloading is turned off".to_string(),
        (None, true) => "no download was tried: neither XDG_CACHE_HOME nor HOME is set, so there is no \
             cache directory to download into"
            .to_string(),
        (Some(cache), true) => match download::download_all(&paths.mirror, cache, src.progress) {
            Ok(()) => match find_files(cache) {
                Ok(_) => return Ok(cache.clone()),
                Err(missing) => {
                    format!("the download finished but {} is still missing {}", cache.display(), missing.join(", "))
                }
            },
            Err(e) => format!("Download attempt: {e}"),
        },
    };

    let cache_text = match &paths.cache_dir {
        Some(c) => c.display().to_string(),
        None => "($XDG_CACHE_HOME or ~/.cache)/normlab/fashion-mnist".to_string(),
    };
    let message = format!(
        "Fashion-MNIST not found: no directory holds all four files ({}).\n\
         Looked in: {}.\n\
         {download_outcome}.\n\
         Provide the data in one of three ways:\n  \
         1. pass --data-dir DIR (or set {DATA_ENV}=DIR) naming a directory that holds the four files;\n  \
         2. on Debian/Ubuntu: apt-get install dataset-fashion-mnist (installs them in {SYSTEM_DIR});\n  \
         3. allow network access to {} (or set {MIRROR_ENV} to a plain-HTTP mirror) so that they \
         are downloaded into {cache_text}.",
        all_names(),
        looked.join("; "),
        paths.mirror,
    );
    let path = paths.cache_dir.clone().unwrap_or_else(|| paths.system_dir.clone());
    Err(Error::data(path, message))
}

fn all_names() -> String {
    STEMS.map(|s| format!("{s}.gz")).join(", ")
}

fn describe_missing(dir: &Path, missing: &[String]) -> String {
    if !dir.is_dir() {
        format!("{} (does not exist)", dir.display())
    } else {
        format!("{} (missing {})", dir.display(), missing.join(", "))
    }
}

/// Locates (downloading if needed and allowed) and loads the data.
pub fn load(src: &DataSource) -> Result<FashionMnist> {
    load_dir(&locate(src)?)
}

/// Loads the four files from `dir`, without searching anywhere else.
pub fn load_dir(dir: &Path) -> Result<FashionMnist> {
    let files = find_files(dir).map_err(|missing| {
        Error::data(
            dir,
            format!(
                "missing Fashion-MNIST file(s) {}; the directory must hold all four ({}), \
                 gzip-compressed or not; pass --data-dir pointing at a directory that has them",
                missing.join(", "),
                all_names()
            ),
        )
    })?;
    // The two splits are independent; decompressing them side by side
    // saves a noticeable part of the start-up time.
    let (train, test) = std::thread::scope(|s| {
        let test = s.spawn(|| load_split(&files.test_images, &files.test_labels));
        let train = load_split(&files.train_images, &files.train_labels);
        let test = test.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (train, test)
    });
    Ok(FashionMnist { train: train?, test: test?, dir: dir.to_path_buf() })
}

/// Reads one images file and its labels file and checks that they fit
/// together and look like Fashion-MNIST.
pub fn load_split(images_path: &Path, labels_path: &Path) -> Result<Split> {
    let images = idx::read_images(images_path)?;
    if images.rows != IMAGE_SIDE || images.cols != IMAGE_SIDE {
        return Err(Error::data(
            images_path,
            format!(
                "images are {}x{}, Fashion-MNIST images are {IMAGE_SIDE}x{IMAGE_SIDE}; this is not \
                 a Fashion-MNIST file, pass --data-dir pointing at the Fashion-MNIST files",
                images.rows, images.cols
            ),
        ));
    }
    if images.n == 0 {
        return Err(Error::data(
            images_path,
            "the file holds no images; re-download it or pass --data-dir pointing at good files",
        ));
    }
    let labels = idx::read_labels(labels_path)?;
    if labels.len() != images.n {
        return Err(Error::data(
            images_path,
            format!(
                "holds {} images but {} holds {} labels; the two files must come from the same \
                 set, re-download them or pass --data-dir pointing at matching files",
                images.n,
                labels_path.display(),
                labels.len()
            ),
        ));
    }
    if let Some(i) = labels.iter().position(|&l| usize::from(l) >= NUM_CLASSES) {
        return Err(Error::data(
            labels_path,
            format!(
                "label {} at index {i} is out of range, Fashion-MNIST labels are 0 to {}; the file \
                 is corrupt, re-download it or pass --data-dir pointing at good files",
                labels[i],
                NUM_CLASSES - 1
            ),
        ));
    }
    Ok(Split { images: images.bytes, labels, rows: images.rows, cols: images.cols })
}
