//! Mini-batches for a training loop of your own: the examples of a data set
//! in batches of indices, reshuffled every epoch from a seed, and a
//! [`Batch`] that turns one batch of indices into an image tensor and
//! labels.
//!
//! ```
//! use normlab::data::{Batches, LastBatch};
//!
//! let mut batches = Batches::new(10, 4, LastBatch::Keep)?.shuffled(0);
//! for epoch in 0..2 {
//!     let sizes: Vec<usize> = batches.epoch().map(|idx| idx.len()).collect();
//!     assert_eq!(sizes, [4, 4, 2]); // every index once, in a new order each epoch
//! }
//! # Ok::<(), normlab::Error>(())
//! ```
//!
//! The order is the [`crate::train::Trainer`]'s: each epoch starts from
//! `0..len` and shuffles it with `rand`'s `SliceRandom::shuffle` drawing
//! from a [`crate::rng::Rng`] that carries on from epoch to epoch. Given the
//! trainer's stream ([`Batches::shuffled_with`]) a loop sees the same
//! batches.

use rand::seq::SliceRandom;

use crate::data::Split;
use crate::rng::{self, Rng};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// What to do with the last batch of an epoch when the batch size does not
/// divide the number of examples (PyTorch's `DataLoader(drop_last=...)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastBatch {
    /// Yield the shorter last batch, so every example is seen each epoch.
    /// Batch norm cannot train on a batch of one: with BN, pick a batch
    /// size that does not leave one example over, or [`LastBatch::Drop`].
    Keep,
    /// Leave the remainder out; every batch has exactly the batch size.
    Drop,
}

/// The indices `0..len` in batches, in order or reshuffled every epoch.
#[derive(Clone, Debug)]
pub struct Batches {
    len: usize,
    batch_size: usize,
    last: LastBatch,
    rng: Option<Rng>,
    order: Vec<usize>,
    epochs: usize,
}

impl Batches {
    /// Batches of `batch_size` indices over `len` examples, in order (call
    /// [`Batches::shuffled`] to shuffle). Errors if `batch_size` or `len` is
    /// 0, or if dropping the last batch would leave no batch at all.
    pub fn new(len: usize, batch_size: usize, last: LastBatch) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::config("batch size", "must be at least 1, e.g. 128"));
        }
        if len == 0 {
            return Err(Error::config("data", "the data set is empty: there is nothing to batch"));
        }
        if last == LastBatch::Drop && len < batch_size {
            return Err(Error::config(
                "batch size",
                format!(
                    "{batch_size} is more than the {len} examples, and LastBatch::Drop would leave no batch; \
                     use a batch size of at most {len} or LastBatch::Keep"
                ),
            ));
        }
        Ok(Batches { len, batch_size, last, rng: None, order: Vec::with_capacity(len), epochs: 0 })
    }

    /// Reshuffles at the start of every epoch, from a generator seeded with
    /// `seed`: the same seed gives the same orders.
    pub fn shuffled(self, seed: u64) -> Self {
        self.shuffled_with(rng::seeded(seed))
    }

    /// Reshuffles at the start of every epoch, drawing from `rng`. To see
    /// the batches a [`crate::train::Trainer`] sees, pass a clone of its
    /// `shuffle_rng` before its first epoch.
    pub fn shuffled_with(mut self, rng: Rng) -> Self {
        self.rng = Some(rng);
        self
    }

    /// The next epoch's batches: each index of `0..len` once (but for a
    /// dropped remainder), in a new order when shuffled.
    pub fn epoch(&mut self) -> std::slice::Chunks<'_, usize> {
        self.order.clear();
        self.order.extend(0..self.len);
        if let Some(rng) = &mut self.rng {
            self.order.shuffle(rng);
        }
        self.epochs += 1;
        let used = match self.last {
            LastBatch::Keep => self.len,
            LastBatch::Drop => self.len - self.len % self.batch_size,
        };
        self.order[..used].chunks(self.batch_size)
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        match self.last {
            LastBatch::Keep => self.len.div_ceil(self.batch_size),
            LastBatch::Drop => self.len / self.batch_size,
        }
    }

    /// Epochs started so far (calls to [`Batches::epoch`]).
    pub fn epochs(&self) -> usize {
        self.epochs
    }

    /// The number of examples batched.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: an empty data set is refused by [`Batches::new`].
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The batch size.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }
}

/// One batch as a network takes it: `x`, a `(N, channels, rows, cols)` tensor of
/// pixels scaled to [0, 1], and the `N` labels. Reused from batch to batch.
///
/// ```
/// use normlab::data::{Batch, Split};
/// let split = Split { images: vec![0, 255, 51, 102], labels: vec![3], channels: 1, rows: 2, cols: 2 };
/// let mut batch = Batch::default();
/// batch.fill(&split, &[0])?;
/// assert_eq!(batch.x.shape(), &[1, 1, 2, 2]);
/// let want = [0.0, 1.0, 0.2, 0.4]; // each byte times 1/255 in f32: 51 gives 0.20000002
/// assert!(batch.x.data().iter().zip(want).all(|(v, w)| (v - w).abs() < 1e-6));
/// assert_eq!(batch.labels, [3]);
/// # Ok::<(), normlab::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// The images, `(N, channels, rows, cols)`, in [0, 1].
    pub x: Tensor<f32>,
    /// The class of each image.
    pub labels: Vec<usize>,
}

impl Batch {
    /// Loads the examples `indices` of `split` (with
    /// [`crate::train::fill_batch`], as the trainer does). Errors if an
    /// index is out of range.
    pub fn fill(&mut self, split: &Split, indices: &[usize]) -> Result<()> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= split.len()) {
            return Err(Error::config(
                "batch",
                format!("index {bad} is out of range for a split of {} examples", split.len()),
            ));
        }
        crate::train::fill_batch(split, indices, &mut self.x, &mut self.labels);
        Ok(())
    }

    /// The number of examples in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch holds no example.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(b: &mut Batches) -> Vec<Vec<usize>> {
        b.epoch().map(|c| c.to_vec()).collect()
    }

    #[test]
    fn every_index_once_per_epoch() {
        let mut b = Batches::new(103, 10, LastBatch::Keep).unwrap().shuffled(7);
        assert_eq!(b.num_batches(), 11);
        for _ in 0..3 {
            let batches = epoch(&mut b);
            assert_eq!(batches.len(), 11);
            assert!(batches[..10].iter().all(|c| c.len() == 10));
            assert_eq!(batches[10].len(), 3);
            let mut all: Vec<usize> = batches.concat();
            all.sort_unstable();
            assert_eq!(all, (0..103).collect::<Vec<_>>());
        }
        assert_eq!(b.epochs(), 3);
    }

    #[test]
    fn unshuffled_batches_are_in_order() {
        let mut b = Batches::new(5, 2, LastBatch::Keep).unwrap();
        assert_eq!(epoch(&mut b), [vec![0, 1], vec![2, 3], vec![4]]);
        assert_eq!(epoch(&mut b), [vec![0, 1], vec![2, 3], vec![4]]);
    }

    #[test]
    fn order_changes_with_epoch_and_seed_not_otherwise() {
        let mut a = Batches::new(200, 32, LastBatch::Keep).unwrap().shuffled(1);
        let mut same = Batches::new(200, 32, LastBatch::Keep).unwrap().shuffled(1);
        let mut other = Batches::new(200, 32, LastBatch::Keep).unwrap().shuffled(2);
        let (a1, a2) = (epoch(&mut a), epoch(&mut a));
        assert_ne!(a1, a2, "a new order each epoch");
        assert_eq!((a1.clone(), a2.clone()), (epoch(&mut same), epoch(&mut same)), "same seed, same orders");
        assert_ne!(a1, epoch(&mut other), "another seed, another order");
        assert_ne!(a1.concat(), (0..200).collect::<Vec<_>>(), "shuffled at all");
    }

    /// The trainer's loop: `0..n` shuffled with `SliceRandom` each epoch
    /// from one stream, batches cut in order.
    #[test]
    fn same_order_as_the_trainers_shuffle() {
        let mut rng = rng::seeded(42);
        let _ = rng::fork(&mut rng); // any stream, as the trainer's after building the model
        let mut b = Batches::new(50, 16, LastBatch::Keep).unwrap().shuffled_with(rng.clone());
        let mut order = Vec::new();
        for _ in 0..3 {
            order.clear();
            order.extend(0..50);
            order.shuffle(&mut rng);
            let expected: Vec<Vec<usize>> = order.chunks(16).map(|c| c.to_vec()).collect();
            assert_eq!(epoch(&mut b), expected);
        }
        let seeded = Batches::new(50, 16, LastBatch::Keep).unwrap().shuffled(9);
        let with = Batches::new(50, 16, LastBatch::Keep).unwrap().shuffled_with(rng::seeded(9));
        assert_eq!(epoch(&mut seeded.clone()), epoch(&mut with.clone()));
    }

    #[test]
    fn drop_last_leaves_out_the_remainder() {
        let mut b = Batches::new(103, 10, LastBatch::Drop).unwrap().shuffled(3);
        assert_eq!(b.num_batches(), 10);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            let batches = epoch(&mut b);
            assert_eq!(batches.len(), 10);
            assert!(batches.iter().all(|c| c.len() == 10));
            let all = batches.concat();
            let distinct: std::collections::HashSet<_> = all.iter().copied().collect();
            assert_eq!(distinct.len(), 100, "no index twice in an epoch");
            seen.extend(all);
        }
        assert!(seen.len() > 100, "a different remainder is dropped in different epochs");
        // an exact multiple drops nothing
        let mut exact = Batches::new(30, 10, LastBatch::Drop).unwrap();
        assert_eq!(epoch(&mut exact).concat(), (0..30).collect::<Vec<_>>());
    }

    #[test]
    fn bad_sizes_are_errors_not_panics() {
        let e = Batches::new(10, 0, LastBatch::Keep).unwrap_err().to_string();
        assert!(e.contains("batch size") && e.contains("at least 1"), "{e}");
        let e = Batches::new(0, 4, LastBatch::Keep).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = Batches::new(3, 4, LastBatch::Drop).unwrap_err().to_string();
        assert!(e.contains("LastBatch::Keep"), "{e}");
        assert_eq!(Batches::new(3, 4, LastBatch::Keep).unwrap().num_batches(), 1);
    }

    #[test]
    fn batch_fill_loads_images_and_labels_and_checks_indices() {
        let split =
            Split { images: (0..12).map(|v| v * 20).collect(), labels: vec![5, 6, 7], channels: 1, rows: 2, cols: 2 };
        let mut batch = Batch::default();
        batch.fill(&split, &[2, 0]).unwrap();
        assert_eq!(batch.x.shape(), &[2, 1, 2, 2]);
        assert_eq!(batch.labels, [7, 5]);
        assert_eq!(batch.x.data()[0], 160.0 / 255.0);
        assert_eq!(batch.x.data()[4], 0.0);
        assert_eq!(batch.len(), 2);
        let e = batch.fill(&split, &[1, 3]).unwrap_err().to_string();
        assert!(e.contains("index 3") && e.contains("3 examples"), "{e}");
    }
}
