//! Finding Fashion-MNIST (or MNIST, KMNIST: [`IdxSet`]) on this machine, or
//! downloading it: the policy of the command line (search order, cache
//! directory, mirror). The library's `normlab::data` reads a directory once
//! it is known.
//!
//! ```no_run
//! use normlab_cli::locate::{load, DataSource};
//!
//! let data = load(&DataSource::default())?; // searches, downloads if needed
//! println!("{} training images", data.train.len());
//! # Ok::<(), normlab::Error>(())
//! ```

use std::path::{Path, PathBuf};

use normlab::data::{find_files, load_idx_dir, FashionMnist, STEMS};
use normlab::{Error, Result};

use crate::download::{self, IdxSet, MIRROR_ENV};

/// Where Debian and Ubuntu's `dataset-fashion-mnist` package installs the files.
pub const SYSTEM_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// Environment variable naming a directory that holds the four files.
pub const DATA_ENV: &str = "NORMLAB_DATA";

/// Where to look for the data and whether it may be downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSource {
    /// Which data set (the four files have the same names in each).
    pub set: IdxSet,
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
        DataSource { set: IdxSet::FashionMnist, data_dir: None, allow_download: true, progress: true }
    }
}

/// The places [`locate`] searches, read from the environment by
/// [`SearchPaths::from_env`]; tests build their own to stay hermetic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPaths {
    /// `$NORMLAB_DATA`, if set; like `data_dir`, it must hold the files.
    /// Fashion-MNIST's only: the other sets' files have the same names, so a
    /// directory meant for one would silently serve another.
    pub env_dir: Option<PathBuf>,
    /// [`SYSTEM_DIR`] for Fashion-MNIST (Debian packages no other set).
    pub system_dir: PathBuf,
    /// `$XDG_CACHE_HOME/normlab/NAME` or `~/.cache/normlab/NAME`, NAME being
    /// the set's ([`IdxSet::name`]); `None` when neither variable is usable
    /// (no download then).
    pub cache_dir: Option<PathBuf>,
    /// `$NORMLAB_MIRROR` or the set's own mirror ([`IdxSet::base_url`]).
    pub mirror: String,
}

impl SearchPaths {
    /// Fashion-MNIST's places.
    pub fn from_env() -> Self {
        Self::from_env_for(IdxSet::FashionMnist)
    }

    /// The places of `set`.
    pub fn from_env_for(set: IdxSet) -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let cache_root = var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            // The XDG spec says relative values are invalid and must be ignored.
            .filter(|p| p.is_absolute())
            .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")));
        let fashion = set == IdxSet::FashionMnist;
        SearchPaths {
            env_dir: var(DATA_ENV).filter(|_| fashion).map(PathBuf::from),
            system_dir: PathBuf::from(if fashion {
                SYSTEM_DIR.to_string()
            } else {
                format!("/usr/share/datasets/{}", set.name())
            }),
            cache_dir: cache_root.map(|c| c.join("normlab").join(set.name())),
            mirror: std::env::var(MIRROR_ENV)
                .ok()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| set.base_url().to_string()),
        }
    }
}

/// Finds a directory holding the four files, searching in order: `data_dir`,
/// `$NORMLAB_DATA`, [`SYSTEM_DIR`], the cache directory; if none has them,
/// downloads them into the cache directory (when allowed).
pub fn locate(src: &DataSource) -> Result<PathBuf> {
    locate_in(src, &SearchPaths::from_env_for(src.set))
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
                        format!("holds none of the {} files", src.set.title())
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
    let mut looked = vec![format!(
        "{DATA_ENV} (not set{})",
        if src.set == IdxSet::FashionMnist { "" } else { " or not used: Fashion-MNIST only" }
    )];
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
        (Some(cache), true) => match download::download_set(src.set, &paths.mirror, cache, src.progress) {
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
        None => format!("($XDG_CACHE_HOME or ~/.cache)/normlab/{}", src.set.name()),
    };
    let title = src.set.title();
    let env_note = if src.set == IdxSet::FashionMnist { format!(" (or set {DATA_ENV}=DIR)") } else { String::new() };
    let apt = if src.set == IdxSet::FashionMnist {
        format!("on Debian/Ubuntu: apt-get install dataset-fashion-mnist (installs them in {SYSTEM_DIR})")
    } else {
        format!("copy the four {title} files into {cache_text}")
    };
    let message = format!(
        "{title} not found: no directory holds all four files ({}).\n\
         Looked in: {}.\n\
         {download_outcome}.\n\
         Provide the data in one of three ways:\n  \
         1. pass --data-dir DIR{env_note} naming a directory that holds the four files;\n  \
         2. {apt};\n  \
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

/// Locates (downloading if needed and allowed) and loads the data, with
/// the set's class names.
pub fn load(src: &DataSource) -> Result<FashionMnist> {
    load_idx_dir(&locate(src)?, src.set.class_names())
}

/// The data a command reads: a set of the MNIST family, found or downloaded,
/// or an image-folder tree ([`crate::folder`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataChoice {
    Idx(IdxSet),
    ImageFolder,
}

impl DataChoice {
    /// The name given to `--dataset`.
    pub fn name(self) -> &'static str {
        match self {
            DataChoice::Idx(set) => set.name(),
            DataChoice::ImageFolder => "image-folder",
        }
    }

    /// The choice called `name`; the error lists the names.
    pub fn parse(name: &str) -> Result<Self> {
        if name == "image-folder" {
            return Ok(DataChoice::ImageFolder);
        }
        IdxSet::parse(name).map(DataChoice::Idx).ok_or_else(|| {
            Error::config(
                "--dataset",
                format!("unknown data set '{name}'; choose one of fashion-mnist, mnist, kmnist, image-folder"),
            )
        })
    }

    /// For messages and plot titles: `MNIST`, `the image folder DIR`.
    pub fn title(self) -> &'static str {
        match self {
            DataChoice::Idx(set) => set.title(),
            DataChoice::ImageFolder => "an image folder",
        }
    }
}

/// Loads the data `choice` names: an IDX set as [`load`] does (with
/// `data_dir` as `--data-dir`), or the image folder `data_dir`, which must
/// then be given, read with `folder`'s options.
pub fn load_choice(
    choice: DataChoice,
    data_dir: Option<&Path>,
    progress: bool,
    folder: &crate::folder::FolderOptions,
) -> Result<FashionMnist> {
    match choice {
        DataChoice::Idx(set) => {
            load(&DataSource { set, data_dir: data_dir.map(Path::to_path_buf), progress, ..Default::default() })
        }
        DataChoice::ImageFolder => {
            let dir = data_dir.ok_or_else(|| {
                Error::config(
                    "--data-dir",
                    "--dataset image-folder reads the folder --data-dir names: give --data-dir DIR, DIR holding \
                     train/<class>/*.png|jpg and test/<class>/*.png|jpg",
                )
            })?;
            crate::folder::load_folder(dir, folder)
        }
    }
}
