//! Training: the loop over epochs and batches, evaluation in prediction
//! mode, population statistics for BN, checkpoints.
//!
//! ```no_run
//! use normlab::{data, models::ModelKind, train::{NoObserver, TrainOptions, Trainer}};
//! let fm = data::load_dir("/usr/share/datasets/fashion-mnist".as_ref()).unwrap();
//! let mut trainer = Trainer::new(TrainOptions::chapter(ModelKind::BnLenet)).unwrap();
//! for _ in 0..trainer.options.epochs {
//!     let m = trainer.run_epoch(&fm.train, &fm.test, &mut NoObserver).unwrap();
//!     println!("epoch {}: val acc {:.3}", m.epoch, m.val_acc);
//! }
//! ```

mod augment;
mod batch;
mod bn_stats;
pub mod checkpoint;
mod evaluate;
pub mod metrics;
mod options;
mod resume;
mod schedule;
mod trainer;

pub use augment::Augment;
pub use batch::fill_batch;
pub use bn_stats::recompute_bn_stats;
pub use evaluate::{evaluate, Evaluation};
pub use metrics::EpochMetrics;
pub use options::{TrainOptions, CHAPTER_EPOCHS};
pub use schedule::{Schedule, ScheduleKind};
pub use trainer::{NoObserver, Observer, Trainer};
