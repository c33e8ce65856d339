//! What determines a training run, checked before it starts.

use serde::{Deserialize, Serialize};

use super::{Augment, Schedule};
use crate::models::{Architecture, LeNetConfig, ModelKind};
use crate::optim::{OptimizerKind, SgdConfig};
use crate::{Error, Result};

/// The chapter's number of epochs (its `num_epochs = 10`).
pub const CHAPTER_EPOCHS: usize = 10;

/// Everything that determines a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// A name for the network (`bn-lenet`, an experiment's variant, a
    /// model file's name).
    pub model: String,
    /// The network's architecture: a LeNet's configuration or any
    /// [`crate::models::ModelSpec`] (built for its `input`, else
    /// [`crate::models::INPUT_SHAPE`]).
    pub network: Architecture,
    /// Epochs in all.
    pub epochs: usize,
    /// Training examples per SGD step.
    pub batch_size: usize,
    /// Learning rate, momentum and weight decay (PyTorch's `torch.optim.SGD`);
    /// with AdamW, its learning rate and (decoupled) weight decay.
    pub sgd: SgdConfig,
    /// SGD (the chapter's) or AdamW with its betas and eps.
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// How the learning rate changes over the run (constant by default).
    #[serde(default)]
    pub schedule: Schedule,
    /// PyTorch's `CrossEntropyLoss(label_smoothing=...)` for training (0 by default).
    #[serde(default)]
    pub label_smoothing: f64,
    /// Random crops and flips of each training batch (none by default).
    #[serde(default)]
    pub augment: Augment,
    /// Seeds the initial weights, the shuffling and dropout.
    pub seed: u64,
    /// Use only the first N training examples.
    pub limit_train: Option<usize>,
    /// Use only the first N validation examples.
    pub limit_val: Option<usize>,
    /// Batch size for evaluation (prediction mode; does not change results).
    pub eval_batch_size: usize,
    /// One example's shape, `[channels, rows, cols]`: the data's (1 or 3
    /// channels); Fashion-MNIST's `[1, 28, 28]` by default and in runs
    /// recorded before the field existed.
    #[serde(default = "fashion_mnist_shape")]
    pub input_shape: [usize; 3],
    /// The number of classes, the width of the network's output: the
    /// data's; Fashion-MNIST's 10 by default.
    #[serde(default = "fashion_mnist_classes")]
    pub classes: usize,
}

fn fashion_mnist_shape() -> [usize; 3] {
    crate::models::INPUT_SHAPE
}

fn fashion_mnist_classes() -> usize {
    crate::models::NUM_CLASSES
}

/// Batch norm over one training image: every batch holds that image alone.
pub(crate) fn one_training_image(cause: &str) -> Error {
    Error::config(
        "training data",
        format!(
            "{cause} leaves one training image, so every batch holds one image, and batch norm cannot \
             train on a batch of one (every centred value is 0); use --limit-train 2 or more"
        ),
    )
}

impl TrainOptions {
    /// The chapter's recipe for a built-in model: [`CHAPTER_EPOCHS`] epochs,
    /// batch 128, plain SGD with lr 0.1, seed 0.
    pub fn chapter(model: ModelKind) -> Self {
        TrainOptions::chapter_for(model.name(), model.config())
    }

    /// The chapter's recipe for any LeNet-family `network`, named `name`.
    pub fn chapter_for(name: impl Into<String>, network: LeNetConfig) -> Self {
        TrainOptions::chapter_with(name, Architecture::LeNet(network))
    }

    /// The chapter's recipe for any network (e.g. a model file's
    /// [`crate::models::ModelSpec`]), named `name`.
    pub fn chapter_with(name: impl Into<String>, network: impl Into<Architecture>) -> Self {
        TrainOptions {
            model: name.into(),
            network: network.into(),
            epochs: CHAPTER_EPOCHS,
            batch_size: 128,
            sgd: SgdConfig::new(0.1),
            optimizer: OptimizerKind::Sgd,
            schedule: Schedule::constant(),
            label_smoothing: 0.0,
            augment: Augment::none(),
            seed: 0,
            limit_train: None,
            limit_val: None,
            eval_batch_size: 500,
            input_shape: crate::models::INPUT_SHAPE,
            classes: crate::models::NUM_CLASSES,
        }
    }

    /// Checks every option, with an error naming the option and the fix.
    pub fn validate(&self) -> Result<()> {
        crate::optim::Optimizer::<f32>::new(self.optimizer, self.sgd)?;
        self.schedule.validate(self.epochs)?;
        crate::loss::CrossEntropy::<f32>::with_label_smoothing(self.label_smoothing)?;
        self.augment.validate(self.input_shape[1], self.input_shape[2])?;
        if self.epochs == 0 {
            return Err(Error::config("epochs", "must be at least 1, e.g. --epochs 10"));
        }
        if self.batch_size == 0 {
            return Err(Error::config("batch size", "must be at least 1, e.g. --batch-size 128"));
        }
        if self.batch_size == 1 && self.network.has_batch_norm() {
            return Err(Error::config(
                "batch size",
                "batch norm cannot train on batches of 1 (every centred value is 0); use --batch-size 2 or more",
            ));
        }
        if self.classes < 2 || self.classes > 256 {
            return Err(Error::config(
                "classes",
                format!("{} classes: normlab trains 2 to 256 classes (labels are bytes)", self.classes),
            ));
        }
        if self.input_shape.contains(&0) {
            return Err(Error::config("input shape", format!("{:?} has a zero size", self.input_shape)));
        }
        if self.eval_batch_size == 0 {
            return Err(Error::config("eval batch size", "must be at least 1"));
        }
        if self.limit_train == Some(0) || self.limit_val == Some(0) {
            return Err(Error::config("limit", "--limit-train and --limit-val must be at least 1"));
        }
        if self.limit_train == Some(1) && self.network.has_batch_norm() {
            return Err(one_training_image("--limit-train 1"));
        }
        Ok(())
    }
}
