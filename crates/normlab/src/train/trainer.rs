//! The training loop: one epoch of SGD steps over the shuffled training set,
//! then evaluation in prediction mode.

use std::time::Instant;

use rand::seq::SliceRandom;

use super::{evaluate, fill_batch, EpochMetrics, TrainOptions};
use crate::data::Split;
use crate::layers::StateMut;
use crate::loss::CrossEntropy;
use crate::models::Sequential;
use crate::optim::Sgd;
use crate::rng::{self, Rng};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Called as training goes, for progress bars and logs.
pub trait Observer {
    /// After each training batch: running mean loss and examples per second.
    fn on_batch(&mut self, _epoch: usize, _batch: usize, _batches: usize, _loss: f64, _examples_per_sec: f64) {}
}

/// An [`Observer`] that ignores everything.
pub struct NoObserver;
impl Observer for NoObserver {}

/// What to change after a divergence: the weight decay when it alone makes
/// the weights grow (each step multiplies them by `1 - lr · weight_decay`,
/// larger than 1 in size once `lr · weight_decay > 2`), else the learning
/// rate.
fn divergence_fix(sgd: &crate::optim::SgdConfig) -> String {
    if sgd.lr * sgd.weight_decay > 2.0 {
        format!(
            "--weight-decay {:?} is too large for --lr {:?} (each step scales the weights by 1 - lr x weight decay, \
             which must stay within [-1, 1]); use a weight decay below {}, e.g. --weight-decay 5e-4",
            sgd.weight_decay,
            sgd.lr,
            2.0 / sgd.lr
        )
    } else {
        format!("try a smaller learning rate (now --lr {:?})", sgd.lr)
    }
}

/// The state of a run: model, optimizer, data order and history.
pub struct Trainer {
    /// What this run does.
    pub options: TrainOptions,
    /// The network being trained.
    pub net: Sequential<f32>,
    /// The optimizer, with its momentum buffers.
    pub sgd: Sgd<f32>,
    /// Shuffles the training set each epoch.
    pub shuffle_rng: Rng,
    /// The metrics of each completed epoch.
    pub history: Vec<EpochMetrics>,
    loss: CrossEntropy<f32>,
    /// Whether the network has a batch norm (which cannot train on one example).
    has_batch_norm: bool,
    x: Tensor<f32>,
    labels: Vec<usize>,
    order: Vec<usize>,
}

impl Trainer {
    /// A new run: the network built and initialised from `options.seed`,
    /// after checking every option.
    pub fn new(options: TrainOptions) -> Result<Self> {
        options.validate()?;
        let mut init_rng = rng::seeded(options.seed);
        let net = options.network.build(Some(&options.network.input_shape()), &mut init_rng)?;
        let has_batch_norm = options.network.has_batch_norm();
        let shuffle_rng = rng::fork(&mut init_rng);
        let sgd = Sgd::new(options.sgd)?;
        Ok(Trainer {
            options,
            net,
            sgd,
            shuffle_rng,
            history: Vec::new(),
            loss: CrossEntropy::new(),
            has_batch_norm,
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
        if n == 1 && self.has_batch_norm {
            return Err(super::options::one_training_image("a training set of one image"));
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
            if idx.len() == 1 && b > 0 && self.has_batch_norm {
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
                        "training diverged at epoch {epoch}, batch {}/{batches}: the loss is {loss}; {}",
                        b + 1,
                        divergence_fix(&self.options.sgd)
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
                StateMut::Param { value, .. } | StateMut::Buffer(value) => value.all_finite(),
                StateMut::Count(_) => true,
            };
            if !finite {
                return Err(Error::Diverged(format!(
                    "training diverged in epoch {epoch}: {name} holds NaN or infinite values; {}",
                    divergence_fix(&self.options.sgd)
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
