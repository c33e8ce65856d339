//! Loading Fashion-MNIST from a directory that holds its four files.
//!
//! ```no_run
//! use normlab::data::{load_dir, CLASS_NAMES};
//!
//! let data = load_dir(std::path::Path::new("/usr/share/datasets/fashion-mnist"))?;
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

use crate::data::idx;
use crate::{Error, Result};

/// The ten classes, indexed by label.
pub const CLASS_NAMES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// Number of classes (labels are `0..NUM_CLASSES`).
pub const NUM_CLASSES: usize = CLASS_NAMES.len();
/// Fashion-MNIST images are `IMAGE_SIDE` x `IMAGE_SIDE` pixels.
pub const IMAGE_SIDE: usize = 28;

/// The training images' file name without the `.gz` extension; a directory
/// may hold each file compressed (`NAME.gz`, as shipped) or decompressed.
pub const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
/// The training labels' file name, without `.gz`.
pub const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
/// The test images' file name, without `.gz`.
pub const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
/// The test labels' file name, without `.gz`.
pub const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";
/// The four file names in the order of [`DataFiles`]' fields.
pub const STEMS: [&str; 4] = [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS];

/// One split: `len()` images of `channels` x `rows` x `cols` bytes (each
/// channel a row-major plane, PyTorch's CHW order), and their labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The pixels of every image, one after the other, `0` (background) to `255`.
    pub images: Vec<u8>,
    /// One class index per image, below the data set's number of classes
    /// ([`CLASS_NAMES`] for Fashion-MNIST, [`Dataset::class_names`] in general).
    pub labels: Vec<u8>,
    /// Colour channels per image: 1 (grey, every IDX file) or 3 (RGB).
    pub channels: usize,
    /// Image height in pixels (28 once loaded by [`load_split`]).
    pub rows: usize,
    /// Image width in pixels (28 once loaded by [`load_split`]).
    pub cols: usize,
}

impl Split {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split holds no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image (`channels * rows * cols`).
    pub fn image_len(&self) -> usize {
        self.channels * self.rows * self.cols
    }

    /// The shape of one example as a network takes it: `[channels, rows, cols]`.
    pub fn example_shape(&self) -> [usize; 3] {
        [self.channels, self.rows, self.cols]
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

/// A data set: the training and test splits (for Fashion-MNIST 60,000 and
/// 10,000 images; a directory may hold a subset), the name of each class,
/// and the directory they were read from.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The training examples (60,000 in the full Fashion-MNIST).
    pub train: Split,
    /// The test examples (10,000 in the full Fashion-MNIST; the chapter validates on them).
    pub test: Split,
    /// The directory the data was read from.
    pub dir: PathBuf,
    /// The name of each class, indexed by label; its length is the number
    /// of classes (the width of a classifier's output).
    pub class_names: Vec<String>,
}

impl Dataset {
    /// The number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }
}

/// Fashion-MNIST as loaded by [`load_dir`]: a [`Dataset`] with its ten
/// classes ([`CLASS_NAMES`]).
pub type FashionMnist = Dataset;

/// The four files of one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFiles {
    /// The [`TRAIN_IMAGES`] file, `.gz` or not.
    pub train_images: PathBuf,
    /// The [`TRAIN_LABELS`] file, `.gz` or not.
    pub train_labels: PathBuf,
    /// The [`TEST_IMAGES`] file, `.gz` or not.
    pub test_images: PathBuf,
    /// The [`TEST_LABELS`] file, `.gz` or not.
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

/// Loads the four Fashion-MNIST files from `dir`, without searching
/// anywhere else.
pub fn load_dir(dir: &Path) -> Result<FashionMnist> {
    load_idx_dir(dir, &CLASS_NAMES)
}

/// Loads the four files of an IDX data set of the MNIST family (MNIST,
/// Fashion-MNIST, KMNIST: the same file names, 28x28 grey images, ten
/// classes) from `dir`; `class_names` names its classes, and every label
/// must be below their number.
pub fn load_idx_dir(dir: &Path, class_names: &[&str]) -> Result<Dataset> {
    let files = find_files(dir).map_err(|missing| {
        Error::data(
            dir,
            format!(
                "missing data file(s) {}; the directory must hold all four ({}), \
                 gzip-compressed or not; pass --data-dir pointing at a directory that has them",
                missing.join(", "),
                all_names()
            ),
        )
    })?;
    // The two splits are independent; decompressing them side by side
    // saves a noticeable part of the start-up time.
    let (train, test) = std::thread::scope(|s| {
        let test = s.spawn(|| load_split_of(&files.test_images, &files.test_labels, class_names.len()));
        let train = load_split_of(&files.train_images, &files.train_labels, class_names.len());
        let test = test.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (train, test)
    });
    Ok(Dataset {
        train: train?,
        test: test?,
        dir: dir.to_path_buf(),
        class_names: class_names.iter().map(|n| n.to_string()).collect(),
    })
}

/// Reads one images file and its labels file and checks that they fit
/// together and look like Fashion-MNIST.
pub fn load_split(images_path: &Path, labels_path: &Path) -> Result<Split> {
    load_split_of(images_path, labels_path, NUM_CLASSES)
}

/// [`load_split`] for a data set of `classes` classes (every label below it).
fn load_split_of(images_path: &Path, labels_path: &Path, classes: usize) -> Result<Split> {
    let images = idx::read_images(images_path)?;
    if images.rows != IMAGE_SIDE || images.cols != IMAGE_SIDE {
        return Err(Error::data(
            images_path,
            format!(
                "images are {}x{}, the MNIST family's images are {IMAGE_SIDE}x{IMAGE_SIDE}; this is not \
                 a file of the data set, pass --data-dir pointing at its files",
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
    if let Some(i) = labels.iter().position(|&l| usize::from(l) >= classes) {
        return Err(Error::data(
            labels_path,
            format!(
                "label {} at index {i} is out of range, the data set's labels are 0 to {}; the file \
                 is corrupt, re-download it or pass --data-dir pointing at good files",
                labels[i],
                classes - 1
            ),
        ));
    }
    Ok(Split { images: images.bytes, labels, channels: 1, rows: images.rows, cols: images.cols })
}

fn all_names() -> String {
    STEMS.map(|s| format!("{s}.gz")).join(", ")
}
