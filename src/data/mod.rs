//! Fashion-MNIST: finding, downloading, validating and loading it.
//!
//! ```no_run
//! use normlab::data::{load, DataSource};
//!
//! let src = DataSource { data_dir: None, allow_download: false, progress: false };
//! let data = load(&src)?;
//! assert_eq!((data.train.rows, data.train.cols), (28, 28));
//! # Ok::<(), normlab::Error>(())
//! ```
//!
//! [`idx`] reads and writes IDX files, [`download`] fetches the files from a
//! plain-HTTP mirror, and the items re-exported here (from `fashion_mnist`)
//! search the usual places and load the two splits as bytes.

pub mod download;
mod fashion_mnist;
pub mod idx;

pub use fashion_mnist::{
    find_files, load, load_dir, load_split, locate, locate_in, DataFiles, DataSource, FashionMnist, SearchPaths, Split,
    CLASS_NAMES, DATA_ENV, IMAGE_SIDE, NUM_CLASSES, SYSTEM_DIR, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS,
};
