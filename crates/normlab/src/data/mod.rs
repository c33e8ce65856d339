//! Fashion-MNIST from a directory: IDX files read, validated and kept as
//! bytes.
//!
//! ```no_run
//! use normlab::data::load_dir;
//!
//! let data = load_dir(std::path::Path::new("/usr/share/datasets/fashion-mnist"))?;
//! assert_eq!((data.train.rows, data.train.cols), (28, 28));
//! # Ok::<(), normlab::Error>(())
//! ```
//!
//! [`idx`] reads and writes IDX files; [`load_dir`], [`find_files`] and
//! [`load_split`] find the four files in a directory and load the two
//! splits; [`Batches`] and [`Batch`] cut a split into shuffled mini-batches
//! for a training loop of one's own. Searching the usual places and
//! downloading are the command line's (`normlab-cli`).

mod batches;
mod fashion_mnist;
pub mod idx;

pub use batches::{Batch, Batches, LastBatch};
pub use fashion_mnist::{
    find_files, load_dir, load_idx_dir, load_split, DataFiles, Dataset, FashionMnist, Split, CLASS_NAMES, IMAGE_SIDE,
    NUM_CLASSES, STEMS, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS,
};
