//! The training loop: one epoch of optimizer steps over the shuffled (and
//! optionally augmented) training set, at the rates of the schedule, then
//! evaluation in prediction mode.

use std::time::Instant;

use rand::seq::SliceRandom;

use super::{evaluate, fill_batch, EpochMetrics, TrainOptions};
use crate::data::Split;
use crate::layers::StateMut;
use crate::loss::CrossEntropy;
use crate::models::Sequential;
use crate::optim::Optimizer;
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
    /// The optimizer (SGD or AdamW), with its state.
    pub optimizer: Optimizer<f32>,
    /// Shuffles the training set each epoch.
    pub shuffle_rng: Rng,
    /// Draws the crops and flips of [`TrainOptions::augment`].
    pub augment_rng: Rng,
    /// The metrics of each completed epoch.
    pub history: Vec<EpochMetrics>,
    loss: CrossEntropy<f32>,
    /// Whether the network has a batch norm (which cannot train on one example).
    has_batch_norm: bool,
    /// Whether `options.network` describes `net` (false for a network
    /// built in code, [`Trainer::with_network`]).
    described: bool,
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
        let net = options.network.build_for(&options.input_shape, options.classes, &mut init_rng)?;
        Self::assemble(options, net, init_rng, true)
    }

    /// A run on any network built in code: `net` must already be built
    /// ([`Sequential::build`], which draws its initial weights) for one
    /// example of `options.input_shape`, with `options.classes` outputs.
    /// `options.network` is not used (it describes the networks that
    /// [`Trainer::new`] builds); the shuffling and augmentation streams
    /// come from `options.seed`. Such a run cannot write a training
    /// checkpoint, which must describe its network: save the weights with
    /// [`super::checkpoint::save_state_dict`].
    ///
    /// ```
    /// use normlab::layers::{Flatten, Linear, ReLU};
    /// use normlab::models::Sequential;
    /// use normlab::train::{NoObserver, TrainOptions, Trainer};
    /// use normlab::{data::Split, models::ModelKind, rng};
    /// let mut net = Sequential::new().push(Flatten::new()).push(Linear::new(16)).push(ReLU::new()).push(Linear::new(3));
    /// net.build(&[1, 4, 4], &mut rng::seeded(0))?;
    /// let mut options = TrainOptions::chapter(ModelKind::Lenet);
    /// (options.input_shape, options.classes, options.batch_size, options.epochs) = ([1, 4, 4], 3, 2, 1);
    /// let data = Split { images: (0..6 * 16).map(|v| (v * 7 % 256) as u8).collect(), labels: vec![0, 1, 2, 0, 1, 2], channels: 1, rows: 4, cols: 4 };
    /// let mut trainer = Trainer::with_network(options, net)?;
    /// let m = trainer.run_epoch(&data, &data, &mut NoObserver)?;
    /// assert!(m.train_loss.is_finite());
    /// # Ok::<(), normlab::Error>(())
    /// ```
    pub fn with_network(options: TrainOptions, mut net: Sequential<f32>) -> Result<Self> {
        options.validate()?;
        if net.example_shape() != options.input_shape {
            return Err(Error::config(
                "network",
                format!(
                    "built for examples of shape {:?}, but TrainOptions::input_shape is {:?}; build it with the data's \
                     shape (Split::example_shape) and set input_shape to the same",
                    net.example_shape(),
                    options.input_shape
                ),
            ));
        }
        if net.output_shape() != [options.classes] {
            return Err(Error::config(
                "network",
                format!(
                    "its output has shape {:?} but TrainOptions::classes is {}; end it with Linear::new({})",
                    net.output_shape(),
                    options.classes,
                    options.classes
                ),
            ));
        }
        let has_batch_norm = net.layers_mut().iter_mut().any(|l| !l.batch_norms_mut().is_empty());
        let mut trainer = Self::assemble(options, net, rng::seeded(0), false)?;
        trainer.has_batch_norm = has_batch_norm;
        let mut streams = rng::seeded(trainer.options.seed);
        trainer.shuffle_rng = rng::fork(&mut streams);
        trainer.augment_rng = rng::fork(&mut streams);
        Ok(trainer)
    }

    /// Whether the options describe the network, so that a training
    /// checkpoint can rebuild it (false for [`Trainer::with_network`]).
    pub fn is_described(&self) -> bool {
        self.described
    }

    fn assemble(options: TrainOptions, net: Sequential<f32>, mut init_rng: Rng, described: bool) -> Result<Self> {
        let has_batch_norm = options.network.has_batch_norm();
        let shuffle_rng = rng::fork(&mut init_rng);
        // forked after the shuffling stream, which stays what it was before
        // augmentation existed
        let augment_rng = rng::fork(&mut init_rng);
        let optimizer = Optimizer::new(options.optimizer, options.sgd)?;
        let loss = CrossEntropy::with_label_smoothing(options.label_smoothing)?;
        Ok(Trainer {
            options,
            net,
            optimizer,
            shuffle_rng,
            augment_rng,
            history: Vec::new(),
            loss,
            has_batch_norm,
            described,
            x: Tensor::default(),
            labels: Vec::new(),
            order: Vec::new(),
        })
    }

    /// Completed epochs.
    pub fn epoch(&self) -> usize {
        self.history.len()
    }

    /// Training steps (batches) per epoch on `data`, the last short one included.
    pub fn steps_per_epoch(&self, data: &Split) -> usize {
        let n = self.options.limit_train.map_or(data.len(), |l| l.min(data.len()));
        n.div_ceil(self.options.batch_size)
    }

    /// The learning rate of step `step` (counted from 0 over the whole
    /// run) with `steps_per_epoch` steps an epoch: the schedule's.
    pub fn lr_at(&self, step: usize, steps_per_epoch: usize) -> f64 {
        let o = &self.options;
        if o.schedule == super::Schedule::constant() {
            // the base rate itself, bit for bit, as before schedules existed
            return o.sgd.lr;
        }
        o.schedule.lr(o.sgd.lr, step, steps_per_epoch, steps_per_epoch * o.epochs)
    }

    /// One pass over the (shuffled) training set in training mode. Returns
    /// (mean loss, accuracy, seconds). Stops with [`Error::Diverged`] at the
    /// first non-finite loss.
    pub fn train_epoch(&mut self, data: &Split, observer: &mut dyn Observer) -> Result<(f64, f64, f64)> {
        let n = self.options.limit_train.map_or(data.len(), |l| l.min(data.len()));
        if n == 0 {
            return Err(Error::config("training data", "the training set is empty"));
        }
        if data.example_shape() != self.options.input_shape {
            return Err(Error::config(
                "training data",
                format!(
                    "examples of shape {:?} (channels, rows, cols), but the network was built for {:?}; \
                     set TrainOptions::input_shape to the data's (Split::example_shape)",
                    data.example_shape(),
                    self.options.input_shape
                ),
            ));
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
        let first_step = (epoch - 1) * batches;
        for b in 0..batches {
            let idx = &self.order[b * bs..((b + 1) * bs).min(n)];
            let lr = self.lr_at(first_step + b, batches);
            self.optimizer.set_lr(lr);
            if idx.len() == 1 && b > 0 && self.has_batch_norm {
                // a last batch of one example cannot be batch-normalized (PyTorch
                // raises); it is left out of this epoch
                continue;
            }
            // the whole step with the pool kept awake: its parallel passes
            // follow one another with short one-thread stretches between them
            let (loss, right) = crate::threads::keep_pool_awake(|| -> Result<(f64, usize)> {
                fill_batch(data, idx, &mut self.x, &mut self.labels);
                self.options.augment.apply(&mut self.x, &mut self.augment_rng);
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
                self.optimizer.step(&mut self.net);
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
        let epoch = self.epoch() + 1;
        let lr = self.lr_at((epoch - 1) * self.steps_per_epoch(train), self.steps_per_epoch(train));
        let (train_loss, train_acc, train_seconds) = self.train_epoch(train, observer)?;
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
            lr: Some(lr),
        };
        self.history.push(m.clone());
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ModelKind;

    /// RGB data for a network built for grey images is refused naming both
    /// shapes; built for it (3 channels, 3 classes), the network trains on
    /// it and evaluates into a 3x3 confusion matrix.
    #[test]
    fn the_network_is_built_for_the_datas_shape_and_classes() {
        let rgb = Split {
            images: (0..4 * 3 * 784).map(|i| i as u8).collect(),
            labels: vec![0, 1, 2, 1],
            channels: 3,
            rows: 28,
            cols: 28,
        };
        let mut grey = Trainer::new(TrainOptions::chapter(ModelKind::BnLenet)).unwrap();
        let e = grey.train_epoch(&rgb, &mut NoObserver).unwrap_err().to_string();
        assert!(e.contains("[3, 28, 28]") && e.contains("[1, 28, 28]") && e.contains("input_shape"), "{e}");

        let mut options = TrainOptions::chapter(ModelKind::BnLenet);
        (options.input_shape, options.classes, options.batch_size) = ([3, 28, 28], 3, 2);
        let mut trainer = Trainer::new(options).unwrap();
        let m = trainer.run_epoch(&rgb, &rgb, &mut NoObserver).unwrap();
        assert!(m.train_loss.is_finite() && m.val_loss.is_finite());
        let e = evaluate(&mut trainer.net, &rgb, 4, None).unwrap();
        assert_eq!((e.confusion.len(), e.confusion[0].len()), (3, 3));
    }
}
