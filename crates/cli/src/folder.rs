//! Image-folder data sets: `DIR/train/<class>/*.png|jpg` and
//! `DIR/test/<class>/...` (torchvision's `ImageFolder` layout), one folder
//! per class, the same classes in both splits.
//!
//! ```no_run
//! use normlab_cli::folder::{load_folder, FolderOptions};
//!
//! let data = load_folder(std::path::Path::new("my-photos"), &FolderOptions::default())?;
//! println!("{} classes: {:?}", data.num_classes(), data.class_names);
//! # Ok::<(), normlab::Error>(())
//! ```
//!
//! Classes are the folder names in byte order, labels their indices. Every
//! image is resized to the model's input (28x28 by default) and held as
//! bytes, 1 channel (grey) or 3 (RGB): chosen by [`FolderOptions::channels`],
//! else 3 when any image has colour. The headers are read first: the number
//! of bytes the data will take is known, and refused beyond
//! [`FolderOptions::max_bytes`], before any image is decoded.

use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use normlab::data::{Dataset, Split};
use normlab::{Error, Result};

use crate::images;

/// How an image folder is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderOptions {
    /// 1 (grey) or 3 (RGB); `None`: 3 if any image has colour, else 1.
    pub channels: Option<usize>,
    /// The model's input height and width, every image resized to it.
    pub rows: usize,
    pub cols: usize,
    /// The most bytes the resized images may take in memory.
    pub max_bytes: u64,
}

impl Default for FolderOptions {
    fn default() -> Self {
        FolderOptions { channels: None, rows: 28, cols: 28, max_bytes: default_max_bytes() }
    }
}

/// Half the memory the system says is available (`MemAvailable` of
/// /proc/meminfo), else 4 GiB: the data must leave room for training.
pub fn default_max_bytes() -> u64 {
    let available = fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    });
    available.map_or(4 << 30, |b| b / 2)
}

/// The file extensions read as images (any case).
const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Names of the two splits' folders.
const SPLITS: [&str; 2] = ["train", "test"];

fn bad(path: &Path, what: impl Into<String>) -> Error {
    Error::data(path, what.into())
}

/// The entries of a directory, sorted, hidden ones (`.DS_Store`, `.git`)
/// left out.
fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        out.push(entry.path());
    }
    out.sort();
    Ok(out)
}

/// The class folders of one split and their image files.
fn list_split(dir: &Path) -> Result<Vec<(String, Vec<PathBuf>)>> {
    let layout = "the layout is DIR/train/<class>/*.png|jpg and DIR/test/<class>/*.png|jpg";
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad(dir, format!("is not a directory; {layout}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad(dir, format!("does not exist; {layout}")));
        }
        Err(e) => return Err(Error::io(dir, e)),
    }
    let mut classes = Vec::new();
    for class_dir in entries(dir)? {
        if !class_dir.is_dir() {
            return Err(bad(&class_dir, format!("is not a class folder; move it into one ({layout})")));
        }
        let name = class_dir
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| bad(&class_dir, "the folder's name is not UTF-8 and cannot name a class; rename it"))?
            .to_string();
        let mut files = Vec::new();
        for file in entries(&class_dir)? {
            let ext = file.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
            if file.is_dir() {
                return Err(bad(
                    &file,
                    "is a folder inside a class folder; images go directly in their class's folder",
                ));
            }
            if !file.is_file() {
                // a FIFO would block the reader, a device never end
                return Err(bad(&file, "is not a regular file (a device, FIFO, socket or broken link); remove it"));
            }
            if !ext.as_deref().is_some_and(|e| EXTENSIONS.contains(&e)) {
                return Err(bad(&file, "is not a .png or .jpg file; remove it, or convert it to PNG or JPEG"));
            }
            files.push(file);
        }
        if files.is_empty() {
            return Err(bad(
                &class_dir,
                "holds no .png or .jpg image: a class needs images; add some or remove the folder",
            ));
        }
        classes.push((name, files));
    }
    if classes.is_empty() {
        return Err(bad(dir, format!("holds no class folder; {layout}")));
    }
    Ok(classes)
}

/// Loads `dir/train` and `dir/test` as a [`Dataset`]: class names from the
/// folders, images resized to `options.rows` x `options.cols`.
pub fn load_folder(dir: &Path, options: &FolderOptions) -> Result<Dataset> {
    if !dir.is_dir() {
        return Err(bad(
            dir,
            "is not a directory; --data-dir must name a folder holding train/<class>/ and test/<class>/ image folders",
        ));
    }
    if let Some(c) = options.channels.filter(|c| ![1, 3].contains(c)) {
        return Err(Error::config("--channels", format!("{c} channels; images have 1 (grey) or 3 (RGB)")));
    }
    let [train, test] = SPLITS.map(|s| list_split(&dir.join(s)));
    let (train, test) = (train?, test?);
    let train_names: Vec<&str> = train.iter().map(|(n, _)| n.as_str()).collect();
    let test_names: Vec<&str> = test.iter().map(|(n, _)| n.as_str()).collect();
    if train_names != test_names {
        let only = |a: &[&str], b: &[&str]| a.iter().filter(|n| !b.contains(n)).copied().collect::<Vec<_>>().join(", ");
        let (train_only, test_only) = (only(&train_names, &test_names), only(&test_names, &train_names));
        return Err(bad(
            &dir.join("test"),
            format!(
                "its classes differ from train/'s (only in train/: {}; only in test/: {}); both splits need the same class folders",
                if train_only.is_empty() { "none" } else { &train_only },
                if test_only.is_empty() { "none" } else { &test_only }
            ),
        ));
    }
    if train.len() < 2 || train.len() > 256 {
        return Err(bad(
            &dir.join("train"),
            format!("holds {} class folders; normlab trains 2 to 256 classes", train.len()),
        ));
    }
    // the headers first: every file is an image normlab can decode, the
    // channel count is known, and so is the memory, before decoding
    let files: Vec<(&Path, u8, usize)> = [&train, &test]
        .iter()
        .enumerate()
        .flat_map(|(split, classes)| {
            classes
                .iter()
                .enumerate()
                .flat_map(move |(label, (_, files))| files.iter().map(move |f| (f.as_path(), label as u8, split)))
        })
        .collect();
    let headers: Vec<images::Header> =
        files.par_iter().map(|(f, _, _)| images::read_header(f)).collect::<Result<_>>()?;
    let channels = options.channels.unwrap_or(if headers.iter().any(|h| h.colour) { 3 } else { 1 });
    let image_len = channels * options.rows * options.cols;
    let need = files.len() as u64 * image_len as u64;
    if need > options.max_bytes {
        return Err(bad(
            dir,
            format!(
                "its {} images take {} MiB in memory as {channels}x{}x{} bytes each, more than the {} MiB allowed; \
                 use fewer images, or allow more with --max-data-mib",
                files.len(),
                need.div_ceil(1 << 20),
                options.rows,
                options.cols,
                options.max_bytes >> 20
            ),
        ));
    }
    let load = |split: usize| -> Result<Split> {
        let mine: Vec<&(&Path, u8, usize)> = files.iter().filter(|f| f.2 == split).collect();
        let mut images = vec![0u8; mine.len() * image_len];
        images.par_chunks_mut(image_len).zip(mine.par_iter()).try_for_each(|(dst, (path, _, _))| {
            let img = images::decode(path)?;
            dst.copy_from_slice(&images::to_planes(&img, channels, options.rows, options.cols));
            Ok::<(), Error>(())
        })?;
        Ok(Split {
            images,
            labels: mine.iter().map(|f| f.1).collect(),
            channels,
            rows: options.rows,
            cols: options.cols,
        })
    };
    Ok(Dataset {
        train: load(0)?,
        test: load(1)?,
        dir: dir.to_path_buf(),
        class_names: train_names.iter().map(|n| n.to_string()).collect(),
    })
}
