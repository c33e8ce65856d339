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

pub mod checkpoint;
pub mod metrics;

use rayon::prelude::*;
use std::path::Path;
use std::time::Instant;

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

pub use metrics::EpochMetrics;

use crate::data::Split;
use crate::layers::Mode;
use crate::loss::CrossEntropy;
use crate::models::{self, LeNetConfig, ModelKind, Sequential};
use crate::optim::{Sgd, SgdConfig};
use crate::rng::{self, Rng};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Everything that determines a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// A name for the network (`bn-lenet`, or an experiment's variant).
    pub model: String,
    pub network: LeNetConfig,
    pub epochs: usize,
    pub batch_size: usize,
    pub sgd: SgdConfig,
    pub seed: u64,
    /// Use only the first N training / validation examples.
    pub limit_train: Option<usize>,
    pub limit_val: Option<usize>,
    /// Batch size for evaluation (prediction mode; does not change results).
    pub eval_batch_size: usize,
}

impl TrainOptions {
    /// The chapter's recipe: 10 epochs, batch 128, plain SGD with lr 0.1, seed 0.
    pub fn chapter(model: ModelKind) -> Self {
        TrainOptions {
            model: model.name().into(),
            network: model.config(),
            epochs: 10,
            batch_size: 128,
            sgd: SgdConfig::new(0.1),
            seed: 0,
            limit_train: None,
            limit_val: None,
            eval_batch_size: 500,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.sgd.validate()?;
        if self.epochs == 0 {
            return Err(Error::config("epochs", "must be at least 1, e.g. --epochs 10"));
        }
        if self.batch_size == 0 {
            return Err(Error::config("batch size", "must be at least 1, e.g. --batch-size 128"));
        }
        if self.batch_size == 1 && matches!(self.network.norm, models::Norm::Batch { .. }) {
            return Err(Error::config(
                "batch size",
                "batch norm cannot train on batches of 1 (every centred value is 0); use --batch-size 2 or more",
            ));
        }
        if self.eval_batch_size == 0 {
            return Err(Error::config("eval batch size", "must be at least 1"));
        }
        if self.limit_train == Some(0) || self.limit_val == Some(0) {
            return Err(Error::config("limit", "--limit-train and --limit-val must be at least 1"));
        }
        Ok(())
    }
}

/// Called as training goes, for progress bars and logs.
pub trait Observer {
    /// After each training batch: running mean loss and examples per second.
    fn on_batch(&mut self, _epoch: usize, _batch: usize, _batches: usize, _loss: f64, _examples_per_sec: f64) {}
}

pub struct NoObserver;
impl Observer for NoObserver {}

/// Converts images (bytes 0..255) to a `(N, 1, rows, cols)` batch in [0, 1].
pub fn fill_batch(split: &Split, indices: &[usize], x: &mut Tensor<f32>, labels: &mut Vec<usize>) {
    let size = split.image_len();
    x.resize(&[indices.len(), 1, split.rows, split.cols]);
    labels.clear();
    labels.extend(indices.iter().map(|&i| split.labels[i] as usize));
    // Images are read in random order, each from a different page, which the
    // training step in between has pushed out of every cache: read one by
    // one, each waited on memory (0.08 ms per batch of 128). Each task first
    // asks for all of its images at once, so the waits overlap.
    const IMAGES_PER_TASK: usize = 16;
    x.data_mut().par_chunks_mut(size * IMAGES_PER_TASK).zip(indices.par_chunks(IMAGES_PER_TASK)).for_each(
        |(dst, images)| {
            for &i in images {
                crate::kernels::prefetch(split.image(i));
            }
            for (dst, &i) in dst.chunks_exact_mut(size).zip(images) {
                for (d, &p) in dst.iter_mut().zip(split.image(i)) {
                    *d = p as f32 * (1.0 / 255.0);
                }
            }
        },
    );
}

/// The state of a run: model, optimizer, data order and history.
pub struct Trainer {
    pub options: TrainOptions,
    pub net: Sequential<f32>,
    pub sgd: Sgd<f32>,
    /// Shuffles the training set each epoch.
    pub shuffle_rng: Rng,
    pub history: Vec<EpochMetrics>,
    loss: CrossEntropy<f32>,
    x: Tensor<f32>,
    labels: Vec<usize>,
    order: Vec<usize>,
}

impl Trainer {
    pub fn new(options: TrainOptions) -> Result<Self> {
        options.validate()?;
        let mut init_rng = rng::seeded(options.seed);
        let net = models::build_config(&options.network, &mut init_rng)?;
        let shuffle_rng = rng::fork(&mut init_rng);
        let sgd = Sgd::new(options.sgd)?;
        Ok(Trainer {
            options,
            net,
            sgd,
            shuffle_rng,
            history: Vec::new(),
            loss: CrossEntropy::new(),
            x: Tensor::default(),
            labels: Vec::new(),
            order: Vec::new(),
        })
    }

    /// Completed epochs.
    pub fn epoch(&self) -> usize {
        self.history.len()
    }

    /// One pass over the (shuffled) training set in training mode. Returns
    /// (mean loss, accuracy, seconds). Stops with [`Error::Diverged`] at the
    /// first non-finite loss.
    pub fn train_epoch(&mut self, data: &Split, observer: &mut dyn Observer) -> Result<(f64, f64, f64)> {
        let n = self.options.limit_train.map_or(data.len(), |l| l.min(data.len()));
        if n == 0 {
            return Err(Error::config("training data", "the training set is empty"));
        }
        let epoch = self.epoch() + 1;
        let start = Instant::now();
        self.order.clear();
        self.order.extend(0..n);
        self.order.shuffle(&mut self.shuffle_rng);
        self.net.train();
        let bs = self.options.batch_size;
        let batches = n.div_ceil(bs);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0, 0);
        for b in 0..batches {
            let idx = &self.order[b * bs..((b + 1) * bs).min(n)];
            if idx.len() == 1 && b > 0 && matches!(self.options.network.norm, models::Norm::Batch { .. }) {
                // a last batch of one example cannot be batch-normalized (PyTorch
                // raises); it is left out of this epoch
                continue;
            }
            // the whole step with the pool kept awake: its parallel passes
            // follow one another with short one-thread stretches between them
            let (loss, right) = crate::threads::keep_pool_awake(|| -> Result<(f64, usize)> {
                fill_batch(data, idx, &mut self.x, &mut self.labels);
                let logits = self.net.forward(&self.x)?;
                let (loss, right) = self.loss.forward(logits, &self.labels)?;
                if !loss.is_finite() {
                    return Err(Error::Diverged(format!(
                        "training diverged at epoch {epoch}, batch {}/{batches}: the loss is {loss}; \
                         try a smaller learning rate (now --lr {:?})",
                        b + 1,
                        self.options.sgd.lr
                    )));
                }
                self.net.backward(&self.x, self.loss.grad())?;
                self.sgd.step(&mut self.net);
                Ok((loss, right))
            })?;
            loss_sum += loss * idx.len() as f64;
            correct += right;
            seen += idx.len();
            let secs = start.elapsed().as_secs_f64();
            observer.on_batch(epoch, b + 1, batches, loss_sum / seen as f64, seen as f64 / secs.max(1e-9));
        }
        Ok((loss_sum / seen as f64, correct as f64 / seen as f64, start.elapsed().as_secs_f64()))
    }

    /// Trains one epoch, evaluates on `val` in prediction mode, and records
    /// the epoch's metrics.
    pub fn run_epoch(&mut self, train: &Split, val: &Split, observer: &mut dyn Observer) -> Result<EpochMetrics> {
        let (train_loss, train_acc, train_seconds) = self.train_epoch(train, observer)?;
        let epoch = self.epoch() + 1;
        for (name, s) in self.net.state_mut() {
            let finite = match s {
                crate::layers::StateMut::Param { value, .. } | crate::layers::StateMut::Buffer(value) => {
                    value.all_finite()
                }
                crate::layers::StateMut::Count(_) => true,
            };
            if !finite {
                return Err(Error::Diverged(format!(
                    "training diverged in epoch {epoch}: {name} holds NaN or infinite values; \
                     try a smaller learning rate (now --lr {:?})",
                    self.options.sgd.lr
                )));
            }
        }
        let start = Instant::now();
        let eval = evaluate(&mut self.net, val, self.options.eval_batch_size, self.options.limit_val)?;
        let m = EpochMetrics {
            epoch: self.epoch() + 1,
            train_loss,
            train_acc,
            val_loss: eval.loss,
            val_acc: eval.accuracy,
            train_seconds,
            eval_seconds: start.elapsed().as_secs_f64(),
        };
        self.history.push(m.clone());
        Ok(m)
    }
}

/// Metadata keys of a training checkpoint.
const META_OPTIONS: &str = "normlab.train_options";
const META_HISTORY: &str = "normlab.history";
const META_SHUFFLE_RNG: &str = "normlab.shuffle_rng";
const META_LAYER_RNGS: &str = "normlab.layer_rngs";
const MOMENTUM_PREFIX: &str = "optim.momentum_buffer.";

impl Trainer {
    /// Everything needed to continue exactly where this run is: the model's
    /// state, SGD's momentum buffers, the shuffling and dropout random
    /// streams, the options and the metrics so far. Written atomically.
    pub fn save_state(&mut self, path: &Path) -> Result<()> {
        let buffers: Vec<checkpoint::ExtraTensor> = self
            .sgd
            .momentum_buffers()
            .iter()
            .enumerate()
            .map(|(i, b)| (format!("{MOMENTUM_PREFIX}{i:04}"), vec![b.len()], b.clone()))
            .collect();
        let layer_rngs: Vec<Rng> = self.net.layers_mut().iter_mut().filter_map(|l| l.rng_mut().cloned()).collect();
        let meta = [
            ("epoch", self.epoch().to_string()),
            (META_OPTIONS, to_json(&self.options)),
            (META_HISTORY, to_json(&self.history)),
            (META_SHUFFLE_RNG, to_json(&self.shuffle_rng)),
            (META_LAYER_RNGS, to_json(&layer_rngs)),
        ];
        let bytes =
            checkpoint::to_bytes_with(&mut self.net, &self.options.model, &self.options.network, &meta, &buffers)?;
        crate::fsutil::write_atomic(path, &bytes)
    }

    /// Continues a run from [`Trainer::save_state`]'s file.
    pub fn resume(path: &Path) -> Result<Self> {
        let info = checkpoint::info(path)?;
        let get = |key: &str| {
            info.metadata.get(key).ok_or_else(|| {
                Error::checkpoint(path, format!("no '{key}' in the metadata: not a training checkpoint (checkpoint.safetensors) written by `normlab train`"))
            })
        };
        let parse_err =
            |key: &str, e: serde_json::Error| Error::checkpoint(path, format!("metadata '{key}' is damaged: {e}"));
        let options: TrainOptions = serde_json::from_str(get(META_OPTIONS)?).map_err(|e| parse_err(META_OPTIONS, e))?;
        let mut trainer = Trainer::new(options)?;
        let (_, extras) = checkpoint::load_with_extras(&mut trainer.net, path, MOMENTUM_PREFIX)?;
        trainer.history = serde_json::from_str(get(META_HISTORY)?).map_err(|e| parse_err(META_HISTORY, e))?;
        trainer.shuffle_rng =
            serde_json::from_str(get(META_SHUFFLE_RNG)?).map_err(|e| parse_err(META_SHUFFLE_RNG, e))?;
        let rngs: Vec<Rng> = serde_json::from_str(get(META_LAYER_RNGS)?).map_err(|e| parse_err(META_LAYER_RNGS, e))?;
        let mut rngs = rngs.into_iter();
        for layer in trainer.net.layers_mut() {
            if let Some(r) = layer.rng_mut() {
                *r = rngs
                    .next()
                    .ok_or_else(|| Error::checkpoint(path, "fewer dropout random streams than dropout layers"))?;
            }
        }
        let sizes: Vec<usize> = trainer
            .net
            .state_mut()
            .into_iter()
            .filter_map(
                |(_, s)| if let crate::layers::StateMut::Param { value, .. } = s { Some(value.numel()) } else { None },
            )
            .collect();
        if !extras.is_empty() {
            if extras.len() != sizes.len() || extras.iter().zip(&sizes).any(|(e, &n)| e.2.len() != n) {
                return Err(Error::checkpoint(
                    path,
                    "the optimizer's momentum buffers do not match the model's parameters",
                ));
            }
            trainer.sgd.set_momentum_buffers(extras.into_iter().map(|e| e.2).collect());
        }
        Ok(trainer)
    }
}

fn to_json<V: Serialize>(v: &V) -> String {
    serde_json::to_string(v).expect("plain data serializes")
}

/// Loss, accuracy and confusion matrix in prediction mode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub examples: usize,
    pub loss: f64,
    pub accuracy: f64,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

impl Evaluation {
    /// Accuracy of each true class.
    pub fn per_class_accuracy(&self) -> Vec<f64> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let total: u64 = row.iter().sum();
                if total == 0 {
                    f64::NAN
                } else {
                    row[i] as f64 / total as f64
                }
            })
            .collect()
    }
}

/// Evaluates `net` in prediction mode on the first `limit` examples of `data`
/// (all by default) and leaves the network in the mode it was in.
pub fn evaluate(
    net: &mut Sequential<f32>,
    data: &Split,
    batch_size: usize,
    limit: Option<usize>,
) -> Result<Evaluation> {
    let n = limit.map_or(data.len(), |l| l.min(data.len()));
    if n == 0 {
        return Err(Error::config("validation data", "the validation set is empty"));
    }
    let mode = net.mode();
    net.eval();
    let classes = 10;
    let mut confusion = vec![vec![0u64; classes]; classes];
    let (mut x, mut labels) = (Tensor::default(), Vec::new());
    let mut loss_sum = 0.0;
    let indices: Vec<usize> = (0..n).collect();
    let result = (|| {
        for idx in indices.chunks(batch_size) {
            fill_batch(data, idx, &mut x, &mut labels);
            // the pool kept awake through each batch, as in training
            let logits = crate::threads::keep_pool_awake(|| net.forward(&x))?;
            let mut ce = CrossEntropy::new();
            let (loss, _) = ce.forward(logits, &labels)?;
            loss_sum += loss * idx.len() as f64;
            let k = logits.dim(1);
            for (row, &y) in logits.data().chunks_exact(k).zip(&labels) {
                let pred = (0..k).fold(0, |best, j| if row[j] > row[best] { j } else { best });
                confusion[y][pred.min(classes - 1)] += 1;
            }
        }
        Ok(())
    })();
    net.set_mode(mode);
    result?;
    let correct: u64 = (0..classes).map(|i| confusion[i][i]).sum();
    Ok(Evaluation { examples: n, loss: loss_sum / n as f64, accuracy: correct as f64 / n as f64, confusion })
}

/// Recomputes every batch-norm layer's running statistics over `data` as
/// the exact average of the batch statistics (PyTorch's
/// `torch.optim.swa_utils.update_bn`, "precise BN"): running stats reset,
/// momentum set to a cumulative average for the pass, then restored.
/// Returns the number of BN layers updated.
pub fn recompute_bn_stats(net: &mut Sequential<f32>, data: &Split, batch_size: usize) -> Result<usize> {
    let mut saved = Vec::new();
    for layer in net.layers_mut() {
        if let Some(bn) = layer.as_batch_norm_mut() {
            saved.push(bn.config().momentum);
            bn.reset_running_stats();
            bn.set_momentum(crate::layers::Momentum::CumulativeAverage);
        }
    }
    if saved.is_empty() {
        return Ok(0);
    }
    let mode = net.mode();
    net.set_mode(Mode::Train);
    let (mut x, mut labels) = (Tensor::default(), Vec::new());
    let indices: Vec<usize> = (0..data.len()).collect();
    let mut result = Ok(());
    for idx in indices.chunks(batch_size) {
        if idx.len() < 2 {
            continue;
        }
        fill_batch(data, idx, &mut x, &mut labels);
        if let Err(e) = net.forward(&x) {
            result = Err(e);
            break;
        }
    }
    net.set_mode(mode);
    let mut momenta = saved.iter();
    for layer in net.layers_mut() {
        if let Some(bn) = layer.as_batch_norm_mut() {
            bn.set_momentum(*momenta.next().expect("one per BN layer"));
        }
    }
    result.map(|_| saved.len())
}
