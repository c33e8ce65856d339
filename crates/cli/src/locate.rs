//! Finding Fashion-MNIST on this machine, or downloading it: the policy of
//! the command line (search order, cache directory, mirror). The library's
//! `normlab::data` reads a directory once it is known.
//!
//! ```no_run
//! use normlab_cli::locate::{load, DataSource};
//!
//! let data = load(&DataSource::default())?; // searches, downloads if needed
//! println!("{} training images", data.train.len());
//! # Ok::<(), normlab::Error>(())
//! ```

use std::path::{Path, PathBuf};

use normlab::data::{find_files, load_dir, FashionMnist, STEMS};
use normlab::{Error, Result};

use crate::download::{self, CANONICAL_BASE_URL, MIRROR_ENV};

/// Where Debian and Ubuntu's `dataset-fashion-mnist` package installs the files.
pub const SYSTEM_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// Environment variable naming a directory that holds the four files.
pub const DATA_ENV: &str = "NORMLAB_DATA";

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
                    let problem = if let Some(why) = not_a_directory(dir) {
                        why
                    } else if missing.len() == STEMS.len() {
                        "holds none of the Fashion-MNIST files".to_string()
                    } else {
                        format!("lacks {}", missing.join(", "))
                    };
                    Err(Error::data(
                        dir,
                        format!(
                            "this path, {how}, {problem}; it must be a directory holding all four ({}), \
                             gzip-compressed or not; fix the path, or leave it unset to use \
                             {SYSTEM_DIR} or download the data",
                            all_names()
                        ),
                    ))
                }
            };
        }
    }

    if let Some(cache) = &paths.cache_dir {
        // what downloads killed midway left there
        download::remove_stale_temporaries(cache);
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

/// Why `dir` is not a directory that can be searched ("does not exist",
/// "is a file", "is a symbolic link loop"), or `None` when it is one.
fn not_a_directory(dir: &Path) -> Option<String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => None,
        Ok(m) if m.is_file() => Some("is a file, not a directory".to_string()),
        Ok(_) => Some("is not a directory (a device, FIFO or socket)".to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(if dir.symlink_metadata().is_ok() {
            "is a symbolic link to nothing".to_string()
        } else {
            "does not exist".to_string()
        }),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Some("is a symbolic link loop".to_string()),
        Err(e) => Some(format!("cannot be read ({e})")),
    }
}

fn describe_missing(dir: &Path, missing: &[String]) -> String {
    if let Some(why) = not_a_directory(dir) {
        format!("{} ({why})", dir.display())
    } else {
        format!("{} (missing {})", dir.display(), missing.join(", "))
    }
}

/// Locates (downloading if needed and allowed) and loads the data.
pub fn load(src: &DataSource) -> Result<FashionMnist> {
    load_dir(&locate(src)?)
}
