//! A network described as data: [`ModelSpec`], a list of [`LayerSpec`]s in
//! PyTorch's terms, read from TOML (a model file), kept as JSON in
//! checkpoints, and built into a [`Sequential`] whose state names are
//! those of the same `nn.Sequential` in PyTorch (`net.0.weight`, ...: one
//! index per layer of the list).
//!
//! A model file:
//!
//! ```toml
//! input = [1, 28, 28]          # optional: C, H, W of one example (default: the data's)
//!
//! [[layers]]
//! type = "conv2d"
//! out_channels = 32
//! kernel = 3
//! padding = 1
//! bias = false
//!
//! [[layers]]
//! type = "batch_norm"          # eps = 1e-5, momentum = 0.1 (PyTorch's convention:
//!                              # the weight of the NEW batch statistic)
//! [[layers]]
//! type = "relu"
//!
//! [[layers]]
//! type = "max_pool"
//! kernel = 2
//!
//! [[layers]]
//! type = "flatten"
//!
//! [[layers]]
//! type = "linear"
//! out_features = 10
//! ```
//!
//! An optional `[train]` table gives training defaults, used where the
//! command line does not give the option (see [`TrainDefaults`]):
//!
//! ```toml
//! [train]
//! epochs = 20
//! optimizer = "adamw"
//! lr = 3e-3
//! schedule = "one-cycle"
//! label_smoothing = 0.1
//! augment = "crop"
//! ```
//!
//! Every field has PyTorch's default; the file is checked layer by layer
//! against the input shape before anything is allocated, and an error
//! names the line, the layer and the field.
//!
//! ```
//! use normlab::models::spec::ModelSpec;
//! let spec = ModelSpec::from_toml_str("input = [1, 8, 8]\n\
//!     [[layers]]\ntype = \"conv2d\"\nout_channels = 4\nkernel = 3\npadding = 1\n\
//!     [[layers]]\ntype = \"batch_norm\"\n\
//!     [[layers]]\ntype = \"relu\"\n\
//!     [[layers]]\ntype = \"flatten\"\n\
//!     [[layers]]\ntype = \"linear\"\nout_features = 3\n").unwrap();
//! let mut net = spec.build::<f32>(None, &mut normlab::rng::seeded(0)).unwrap();
//! assert_eq!(net.state_names()[0], "net.0.weight");
//! assert_eq!(net.state_names()[2], "net.1.weight"); // the batch norm's gamma
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Residual, Sequential};
use crate::layers::{
    AvgPool2d, BatchNorm, BatchNormConfig, BatchRenorm, BnImpl, BnParts, Conv2d, Dropout, Flatten, FrozenBatchNorm,
    GhostBatchNorm, GroupNorm, Init, InstanceNorm, Layer, LayerNorm, LeakyReLU, Linear, MaxPool2d, Momentum, ReLU,
    RenormSchedule, RmsNorm, RunningVar, SiLU, Sigmoid, Tanh, GELU,
};
use crate::real::Real;
use crate::rng::Rng;
use crate::{Error, Result};

/// The most learnable scalars a described network may have (4 GiB of
/// f32 weights, gradients and optimizer state would follow): a file that
/// asks for more is refused before anything is allocated.
pub const MAX_PARAMS: u64 = 1 << 28;

/// The most values one example may take at any layer's output (the batch
/// multiplies it; 64 MiB of f32 per example is already far past a CPU's
/// reach).
pub const MAX_ACTIVATION: u64 = 1 << 24;

/// A network: the shape of one example and the layers in order, like
/// PyTorch's `nn.Sequential(*layers)` held as `net`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// One example's shape without the batch dimension, e.g. `[1, 28, 28]`
    /// (C, H, W); `None`: the data's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Vec<usize>>,
    /// The layers, in order: layer `i`'s state is named `net.i.*`.
    pub layers: Vec<LayerSpec>,
}

/// A model file's `[train]` table: training defaults for this network,
/// each used when the command line does not give the option of the same
/// name (`batch_size` is `--batch-size`, ...). Values are checked as the
/// options are; an unknown key is an error naming its line.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainDefaults {
    /// `--epochs`.
    pub epochs: Option<usize>,
    /// `--batch-size`.
    pub batch_size: Option<usize>,
    /// `--lr`.
    pub lr: Option<f64>,
    /// `--momentum` (SGD).
    pub momentum: Option<f64>,
    /// `--weight-decay`.
    pub weight_decay: Option<f64>,
    /// `--nesterov` (SGD).
    pub nesterov: Option<bool>,
    /// `--optimizer`: `"sgd"` or `"adamw"`.
    pub optimizer: Option<String>,
    /// `--beta1` (AdamW).
    pub beta1: Option<f64>,
    /// `--beta2` (AdamW).
    pub beta2: Option<f64>,
    /// `--adam-eps` (AdamW).
    pub adam_eps: Option<f64>,
    /// `--schedule`: `"constant"`, `"step"`, `"cosine"` or `"one-cycle"`.
    pub schedule: Option<String>,
    /// `--warmup-epochs`.
    pub warmup_epochs: Option<f64>,
    /// `--step-size` (step schedule).
    pub step_size: Option<usize>,
    /// `--gamma` (step schedule).
    pub gamma: Option<f64>,
    /// `--label-smoothing`.
    pub label_smoothing: Option<f64>,
    /// `--augment`: `"none"`, `"crop"`, `"flip"` or `"crop,flip"`.
    pub augment: Option<String>,
    /// `--crop-padding`.
    pub crop_padding: Option<usize>,
    /// `--bn-momentum` (PyTorch's convention).
    pub bn_momentum: Option<f64>,
    /// `--bn-eps`.
    pub bn_eps: Option<f64>,
    /// `--seed`.
    pub seed: Option<u64>,
    /// The line of each key in the file, for messages.
    #[serde(skip)]
    pub lines: std::collections::BTreeMap<String, usize>,
}

impl TrainDefaults {
    /// Where `key` is: `line N, [train] key`.
    pub fn place(&self, key: &str) -> String {
        match self.lines.get(key) {
            Some(l) => format!("line {l}, [train] {key}"),
            None => format!("[train] {key}"),
        }
    }

    /// The line of each `key = ...` of the `[train]` table in `text`.
    fn find_lines(&mut self, text: &str) {
        let mut inside = false;
        for (n, line) in text.lines().enumerate() {
            let t = line.trim_start();
            if t.starts_with('[') {
                inside = t.trim_end().trim_end_matches(|c: char| c != ']') == "[train]";
            } else if inside {
                if let Some((key, _)) = t.split_once('=') {
                    self.lines.insert(key.trim().trim_matches('"').to_string(), n + 1);
                }
            }
        }
    }
}

/// A model file as written: the network and its training defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    #[serde(default)]
    input: Option<Vec<usize>>,
    layers: Vec<LayerSpec>,
    #[serde(default)]
    train: Option<TrainDefaults>,
}

/// How a convolution or linear layer draws its initial weights (see
/// [`Init`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitSpec {
    /// PyTorch's default (Kaiming uniform with `a = sqrt(5)`: `±1/sqrt(fan_in)`).
    #[default]
    Pytorch,
    /// Xavier/Glorot uniform weights (d2l's `init_cnn`), PyTorch's default bias.
    XavierUniform,
}

impl From<InitSpec> for Init {
    fn from(i: InitSpec) -> Init {
        match i {
            InitSpec::Pytorch => Init::PyTorchDefault,
            InitSpec::XavierUniform => Init::XavierUniform,
        }
    }
}

/// Which code computes a batch norm (see [`BnImpl`]): both give the same values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BnImplSpec {
    /// The fast one ([`BnImpl::Fused`]).
    #[default]
    Fused,
    /// The chapter's hand-written one ([`BnImpl::Scratch`]).
    Scratch,
}

/// Which batch variance goes into `running_var` (see [`RunningVar`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunningVarSpec {
    /// PyTorch's: the unbiased variance.
    #[default]
    Unbiased,
    /// The chapter's scratch code: the biased one.
    Biased,
}

/// Which half of the normalization a batch norm applies (see [`BnParts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BnPartsSpec {
    /// Standard batch norm.
    #[default]
    Full,
    /// `x - mean` only.
    CenterOnly,
    /// `x / sqrt(var + eps)` only.
    ScaleOnly,
}

/// One layer, in PyTorch's terms and with PyTorch's defaults. In TOML,
/// `type = "conv2d"` and the fields beside it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerSpec {
    /// `nn.Conv2d(in, out_channels, kernel, stride, padding, bias=bias)`;
    /// `in` from the input.
    Conv2d {
        /// Output channels (at least 1).
        out_channels: usize,
        /// Square kernel side.
        kernel: usize,
        /// Step between windows (1).
        #[serde(default = "one")]
        stride: usize,
        /// Zeros added on each side (0).
        #[serde(default)]
        padding: usize,
        /// Learn a bias (true; redundant in front of a batch norm).
        #[serde(default = "yes")]
        bias: bool,
        /// Initial weights (`pytorch`).
        #[serde(default)]
        init: InitSpec,
    },
    /// `nn.Linear(in, out_features, bias=bias)` on a flat input (put a
    /// `flatten` before it).
    Linear {
        /// Output features (at least 1).
        out_features: usize,
        /// Learn a bias (true).
        #[serde(default = "yes")]
        bias: bool,
        /// Initial weights (`pytorch`).
        #[serde(default)]
        init: InitSpec,
    },
    /// `nn.BatchNorm1d`/`nn.BatchNorm2d` (chosen by the input's rank).
    #[serde(alias = "batch_norm2d", alias = "batch_norm1d")]
    BatchNorm {
        /// Added to the variance (1e-5).
        #[serde(default = "eps")]
        eps: f64,
        /// PyTorch's momentum: the weight of the NEW batch statistic in
        /// `running = (1 - momentum)·running + momentum·batch` (0.1; Keras'
        /// 0.99 is PyTorch's 0.01). `"none"`: the cumulative average.
        #[serde(default = "momentum", with = "momentum_field")]
        momentum: Option<f64>,
        /// Learnable gamma and beta (true).
        #[serde(default = "yes")]
        affine: bool,
        /// Keep running statistics for evaluation (true).
        #[serde(default = "yes")]
        track_running_stats: bool,
        /// normlab: which variance updates `running_var` (`unbiased`, PyTorch's).
        #[serde(default)]
        running_var: RunningVarSpec,
        /// normlab: which half of the normalization to apply (`full`).
        #[serde(default)]
        parts: BnPartsSpec,
        /// normlab: false keeps gamma and beta at 1 and 0 (true).
        #[serde(default = "yes")]
        learn_affine: bool,
        /// normlab: which code computes it (`fused`).
        #[serde(default)]
        implementation: BnImplSpec,
    },
    /// `nn.LayerNorm` over each example's values (all of them, or the last
    /// `normalized_dims` dimensions).
    LayerNorm {
        /// Added to the variance (1e-5).
        #[serde(default = "eps")]
        eps: f64,
        /// Learnable per-element gamma and beta (true).
        #[serde(default = "yes")]
        elementwise_affine: bool,
        /// Normalize over the last this-many dimensions (all when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        normalized_dims: Option<usize>,
    },
    /// `nn.GroupNorm(num_groups, C)`.
    GroupNorm {
        /// Groups; must divide the channels.
        num_groups: usize,
        /// Added to the variance (1e-5).
        #[serde(default = "eps")]
        eps: f64,
        /// Learnable per-channel gamma and beta (true).
        #[serde(default = "yes")]
        affine: bool,
    },
    /// `nn.RMSNorm` over each example's values (all of them, or the last
    /// `normalized_dims` dimensions).
    RmsNorm {
        /// Added to the mean square (absent: the machine epsilon of the
        /// element type, as PyTorch's `eps=None`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eps: Option<f64>,
        /// Learnable per-element gamma (true).
        #[serde(default = "yes")]
        elementwise_affine: bool,
        /// Normalize over the last this-many dimensions (all when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        normalized_dims: Option<usize>,
    },
    /// `nn.InstanceNorm2d(C)` (`1d` on `(C, L)` examples).
    InstanceNorm {
        /// Added to the variance (1e-5).
        #[serde(default = "eps")]
        eps: f64,
        /// The weight of the NEW statistic in the running averages (0.1).
        #[serde(default = "momentum_value")]
        momentum: f64,
        /// Learnable per-channel gamma and beta (false, as PyTorch).
        #[serde(default)]
        affine: bool,
        /// Keep running statistics for prediction mode (false, as PyTorch).
        #[serde(default)]
        track_running_stats: bool,
    },
    /// torchvision's `FrozenBatchNorm2d(C)`: fixed statistics and affine
    /// parameters, all buffers (loaded from a checkpoint).
    FrozenBatchNorm {
        /// Added to the running variance (1e-5).
        #[serde(default = "eps")]
        eps: f64,
    },
    /// normlab: ghost batch norm, statistics over virtual batches of
    /// `virtual_batch` examples (no PyTorch class).
    GhostBatchNorm {
        /// Examples per virtual batch (at least 1).
        virtual_batch: usize,
        /// Added to the variance (1e-5).
        #[serde(default = "eps")]
        eps: f64,
        /// The weight of the NEW statistic in the running averages (0.1).
        #[serde(default = "momentum_value")]
        momentum: f64,
    },
    /// normlab: batch renormalization (Ioffe 2017) with the paper's
    /// clipping schedule by default (no PyTorch class).
    BatchRenorm {
        /// Added to the variance (1e-5).
        #[serde(default = "eps")]
        eps: f64,
        /// The weight of the NEW statistic in the running averages (0.1).
        #[serde(default = "momentum_value")]
        momentum: f64,
        /// The final rmax (3).
        #[serde(default = "rmax")]
        rmax: f64,
        /// The final dmax (5).
        #[serde(default = "dmax")]
        dmax: f64,
        /// Steps of plain batch norm (rmax 1, dmax 0) first (5000).
        #[serde(default = "warmup_steps")]
        warmup_steps: u64,
        /// The step rmax reaches its final value at (40000).
        #[serde(default = "rmax_steps")]
        rmax_steps: u64,
        /// The step dmax reaches its final value at (25000).
        #[serde(default = "dmax_steps")]
        dmax_steps: u64,
    },
    /// `nn.ReLU()`.
    Relu,
    /// `nn.LeakyReLU(negative_slope)`.
    LeakyRelu {
        /// Slope for negative inputs (0.01).
        #[serde(default = "slope")]
        negative_slope: f64,
    },
    /// `nn.GELU(approximate)`.
    Gelu {
        /// `"none"` (exact, erf) or `"tanh"`.
        #[serde(default = "none")]
        approximate: String,
    },
    /// `nn.SiLU()`.
    Silu,
    /// `nn.Sigmoid()`.
    Sigmoid,
    /// `nn.Tanh()`.
    Tanh,
    /// `nn.MaxPool2d(kernel, stride)`.
    #[serde(alias = "max_pool2d")]
    MaxPool {
        /// Square window side.
        kernel: usize,
        /// Step between windows (the kernel, as PyTorch).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<usize>,
    },
    /// `nn.AvgPool2d(kernel, stride)`.
    #[serde(alias = "avg_pool2d")]
    AvgPool {
        /// Square window side.
        kernel: usize,
        /// Step between windows (the kernel, as PyTorch).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<usize>,
    },
    /// `nn.Dropout(p)`.
    Dropout {
        /// Probability of zeroing a value in training (0.5).
        #[serde(default = "half")]
        p: f64,
    },
    /// `nn.Flatten()`: each example to one row.
    Flatten,
    /// `body(x) + shortcut(x)` (the identity when there is no shortcut), a
    /// module with attributes `body` and `shortcut`, each an
    /// `nn.Sequential` (see [`Residual`]).
    Residual {
        /// The layers of the main path.
        body: Vec<LayerSpec>,
        /// The layers of the skip path, when the body changes the shape.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shortcut: Option<Vec<LayerSpec>>,
    },
}

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn eps() -> f64 {
    1e-5
}
fn momentum() -> Option<f64> {
    Some(0.1)
}
fn momentum_value() -> f64 {
    0.1
}
fn rmax() -> f64 {
    RenormSchedule::paper().rmax
}
fn dmax() -> f64 {
    RenormSchedule::paper().dmax
}
fn warmup_steps() -> u64 {
    RenormSchedule::paper().warmup_steps
}
fn rmax_steps() -> u64 {
    RenormSchedule::paper().rmax_steps
}
fn dmax_steps() -> u64 {
    RenormSchedule::paper().dmax_steps
}
fn slope() -> f64 {
    0.01
}
fn none() -> String {
    "none".into()
}
fn half() -> f64 {
    0.5
}

/// PyTorch's `momentum=None` written as the string `"none"` (TOML has no null).
mod momentum_field {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match m {
            Some(w) => s.serialize_f64(*w),
            None => s.serialize_str("none"),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(f64),
        Word(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Number(w) => Ok(Some(w)),
            Raw::Word(w) if w == "none" => Ok(None),
            Raw::Word(w) => Err(D::Error::custom(format!(
                "momentum '{w}': give a number in [0, 1] (PyTorch's convention, the weight of the new batch statistic) or \"none\""
            ))),
        }
    }
}

impl LayerSpec {
    /// The name of the layer's `type` in a model file, e.g. `"conv2d"`.
    pub fn type_name(&self) -> &'static str {
        match self {
            LayerSpec::Conv2d { .. } => "conv2d",
            LayerSpec::Linear { .. } => "linear",
            LayerSpec::BatchNorm { .. } => "batch_norm",
            LayerSpec::LayerNorm { .. } => "layer_norm",
            LayerSpec::GroupNorm { .. } => "group_norm",
            LayerSpec::RmsNorm { .. } => "rms_norm",
            LayerSpec::InstanceNorm { .. } => "instance_norm",
            LayerSpec::FrozenBatchNorm { .. } => "frozen_batch_norm",
            LayerSpec::GhostBatchNorm { .. } => "ghost_batch_norm",
            LayerSpec::BatchRenorm { .. } => "batch_renorm",
            LayerSpec::Relu => "relu",
            LayerSpec::LeakyRelu { .. } => "leaky_relu",
            LayerSpec::Gelu { .. } => "gelu",
            LayerSpec::Silu => "silu",
            LayerSpec::Sigmoid => "sigmoid",
            LayerSpec::Tanh => "tanh",
            LayerSpec::MaxPool { .. } => "max_pool",
            LayerSpec::AvgPool { .. } => "avg_pool",
            LayerSpec::Dropout { .. } => "dropout",
            LayerSpec::Flatten => "flatten",
            LayerSpec::Residual { .. } => "residual",
        }
    }

    /// A batch norm with PyTorch's defaults (`nn.BatchNorm2d(C)`).
    pub fn batch_norm() -> Self {
        Self::batch_norm_from(&BatchNormConfig::pytorch(), BnImpl::Fused)
    }

    /// The batch norm `config` describes, computed by `imp`.
    pub fn batch_norm_from(config: &BatchNormConfig, imp: BnImpl) -> Self {
        LayerSpec::BatchNorm {
            eps: config.eps,
            momentum: match config.momentum {
                Momentum::NewStatWeight(w) => Some(w),
                Momentum::OldStatWeight(d) => Some(1.0 - d),
                Momentum::CumulativeAverage => None,
            },
            affine: config.affine,
            track_running_stats: config.track_running_stats,
            running_var: match config.running_var {
                RunningVar::Unbiased => RunningVarSpec::Unbiased,
                RunningVar::Biased => RunningVarSpec::Biased,
            },
            parts: match config.parts {
                BnParts::Full => BnPartsSpec::Full,
                BnParts::CenterOnly => BnPartsSpec::CenterOnly,
                BnParts::ScaleOnly => BnPartsSpec::ScaleOnly,
            },
            learn_affine: config.learn_affine,
            implementation: match imp {
                BnImpl::Fused => BnImplSpec::Fused,
                BnImpl::Scratch => BnImplSpec::Scratch,
            },
        }
    }

    /// The layer, unbuilt.
    fn layer<T: Real>(&self) -> Result<Box<dyn Layer<T>>> {
        Ok(match self {
            LayerSpec::Conv2d { out_channels, kernel, stride, padding, bias, init } => Box::new(
                Conv2d::new(*out_channels, *kernel).stride(*stride).padding(*padding).bias(*bias).init((*init).into()),
            ),
            LayerSpec::Linear { out_features, bias, init } => {
                Box::new(Linear::new(*out_features).bias(*bias).init((*init).into()))
            }
            LayerSpec::BatchNorm {
                eps,
                momentum,
                affine,
                track_running_stats,
                running_var,
                parts,
                learn_affine,
                implementation,
            } => {
                let config = BatchNormConfig {
                    eps: *eps,
                    momentum: momentum.map_or(Momentum::CumulativeAverage, Momentum::NewStatWeight),
                    affine: *affine,
                    track_running_stats: *track_running_stats,
                    running_var: match running_var {
                        RunningVarSpec::Unbiased => RunningVar::Unbiased,
                        RunningVarSpec::Biased => RunningVar::Biased,
                    },
                    parts: match parts {
                        BnPartsSpec::Full => BnParts::Full,
                        BnPartsSpec::CenterOnly => BnParts::CenterOnly,
                        BnPartsSpec::ScaleOnly => BnParts::ScaleOnly,
                    },
                    learn_affine: *learn_affine,
                };
                let imp = match implementation {
                    BnImplSpec::Fused => BnImpl::Fused,
                    BnImplSpec::Scratch => BnImpl::Scratch,
                };
                Box::new(BatchNorm::with_impl(config, imp))
            }
            LayerSpec::LayerNorm { eps, elementwise_affine, normalized_dims } => {
                let ln = match normalized_dims {
                    Some(k) => LayerNorm::trailing(*k),
                    None => LayerNorm::per_example(),
                };
                Box::new(ln.eps(*eps).elementwise_affine(*elementwise_affine))
            }
            LayerSpec::GroupNorm { num_groups, eps, affine } => {
                Box::new(GroupNorm::new(*num_groups).eps(*eps).affine(*affine))
            }
            LayerSpec::RmsNorm { eps, elementwise_affine, normalized_dims } => {
                let rms = match normalized_dims {
                    Some(k) => RmsNorm::trailing(*k),
                    None => RmsNorm::per_example(),
                };
                Box::new(rms.eps(*eps).elementwise_affine(*elementwise_affine))
            }
            LayerSpec::InstanceNorm { eps, momentum, affine, track_running_stats } => Box::new(
                InstanceNorm::new()
                    .eps(*eps)
                    .momentum(*momentum)
                    .affine(*affine)
                    .track_running_stats(*track_running_stats),
            ),
            LayerSpec::FrozenBatchNorm { eps } => Box::new(FrozenBatchNorm::new().eps(*eps)),
            LayerSpec::GhostBatchNorm { virtual_batch, eps, momentum } => {
                Box::new(GhostBatchNorm::new(*virtual_batch).eps(*eps).momentum(*momentum))
            }
            LayerSpec::BatchRenorm { eps, momentum, rmax, dmax, warmup_steps, rmax_steps, dmax_steps } => {
                let schedule = RenormSchedule {
                    rmax: *rmax,
                    dmax: *dmax,
                    warmup_steps: *warmup_steps,
                    rmax_steps: *rmax_steps,
                    dmax_steps: *dmax_steps,
                };
                Box::new(BatchRenorm::new(schedule).eps(*eps).momentum(*momentum))
            }
            LayerSpec::Relu => Box::new(ReLU::new()),
            LayerSpec::LeakyRelu { negative_slope } => Box::new(LeakyReLU::new(*negative_slope)),
            LayerSpec::Gelu { approximate } => Box::new(GELU::new(approximate == "tanh")),
            LayerSpec::Silu => Box::new(SiLU::new()),
            LayerSpec::Sigmoid => Box::new(Sigmoid::new()),
            LayerSpec::Tanh => Box::new(Tanh::new()),
            LayerSpec::MaxPool { kernel, stride } => Box::new(MaxPool2d::new(*kernel, stride.unwrap_or(*kernel))),
            LayerSpec::AvgPool { kernel, stride } => Box::new(AvgPool2d::new(*kernel, stride.unwrap_or(*kernel))),
            LayerSpec::Dropout { p } => Box::new(Dropout::new(*p)?),
            LayerSpec::Flatten => Box::new(Flatten::new()),
            LayerSpec::Residual { body, shortcut } => {
                let body = sequential(body)?;
                match shortcut {
                    Some(s) => Box::new(Residual::with_shortcut(body, sequential(s)?)),
                    None => Box::new(Residual::new(body)),
                }
            }
        })
    }
}

fn sequential<T: Real>(layers: &[LayerSpec]) -> Result<Sequential<T>> {
    let mut net = Sequential::new();
    for l in layers {
        net.push_boxed(l.layer()?);
    }
    Ok(net)
}

/// What is wrong with a described network, and where: the layer (its
/// path, e.g. `layers[3]` or `layers[2].body[0]`), its type, the field.
#[derive(Clone, Debug, PartialEq)]
pub struct SpecError {
    /// Index of the top-level layer (in `layers`) the error is in, if any.
    pub top_layer: Option<usize>,
    /// Where: `layers[3] (conv2d), field kernel`, or `input`.
    pub place: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.place, self.message)
    }
}

/// Shape inference with field-named errors, walking the layers as the
/// build will.
struct Checker {
    params: u64,
}

impl Checker {
    fn layers(
        &mut self,
        layers: &[LayerSpec],
        mut shape: Vec<usize>,
        path: &str,
        top: Option<usize>,
    ) -> std::result::Result<Vec<usize>, SpecError> {
        if layers.is_empty() {
            return Err(SpecError {
                top_layer: top,
                place: if path.is_empty() { "layers".into() } else { path.into() },
                message: "no layers: list at least one ([[layers]] with a type)".into(),
            });
        }
        let name = if path.is_empty() { "layers" } else { path };
        for (i, layer) in layers.iter().enumerate() {
            let here = format!("{name}[{i}]");
            let top = top.or(Some(i));
            shape = self.layer(layer, &shape, &here, top)?;
            let values = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64)).unwrap_or(u64::MAX);
            if values > MAX_ACTIVATION {
                return Err(SpecError {
                    top_layer: top,
                    place: format!("{here} ({})", layer.type_name()),
                    message: format!(
                        "its output {shape:?} holds {values} values per example, more than the {MAX_ACTIVATION} normlab allows; \
                         use fewer channels or more pooling"
                    ),
                });
            }
        }
        Ok(shape)
    }

    fn layer(
        &mut self,
        layer: &LayerSpec,
        input: &[usize],
        here: &str,
        top: Option<usize>,
    ) -> std::result::Result<Vec<usize>, SpecError> {
        let kind = layer.type_name();
        let err = |field: &str, message: String| SpecError {
            top_layer: top,
            place: if field.is_empty() {
                format!("{here} ({kind})")
            } else {
                format!("{here} ({kind}), field {field}")
            },
            message,
        };
        let image = |input: &[usize]| -> std::result::Result<(usize, usize, usize), SpecError> {
            match input {
                &[c, h, w] => Ok((c, h, w)),
                _ => Err(err(
                    "",
                    format!("needs a [C, H, W] input, got {input:?}; it cannot come after a flatten or a linear layer"),
                )),
            }
        };
        let at_least_one = |field: &str, v: usize| {
            if v == 0 {
                Err(err(field, "is 0; it must be at least 1".into()))
            } else {
                Ok(())
            }
        };
        let positive_eps = |eps: f64| {
            if eps.is_finite() && eps > 0.0 {
                Ok(())
            } else {
                Err(err("eps", format!("is {eps}; it must be a positive number (PyTorch's default 1e-5)")))
            }
        };
        let unit_momentum = |m: f64| {
            if (0.0..=1.0).contains(&m) {
                Ok(())
            } else {
                Err(err("momentum", format!("is {m}; the weight of the NEW statistic must be in [0, 1] (default 0.1)")))
            }
        };
        let with_channels = |input: &[usize]| {
            if input.is_empty() || input[0] == 0 {
                Err(err("", format!("needs an input with channels, got {input:?}")))
            } else {
                Ok(())
            }
        };
        let mut add_params = |n: u64| {
            self.params = self.params.saturating_add(n);
            if self.params > MAX_PARAMS {
                Err(err(
                    "",
                    format!("the network reaches {} learnable values here, more than the {MAX_PARAMS} normlab allows; make it smaller", self.params),
                ))
            } else {
                Ok(())
            }
        };
        let window = |kernel: usize, stride: usize, padding: usize, h: usize, w: usize| {
            at_least_one("kernel", kernel)?;
            at_least_one("stride", stride)?;
            let (ph, pw) = (h + 2 * padding, w + 2 * padding);
            if kernel > ph || kernel > pw {
                let pad = if padding > 0 { format!(" with padding {padding} ({ph}x{pw})") } else { String::new() };
                return Err(err(
                    "kernel",
                    format!(
                        "{kernel} is larger than its input {h}x{w}{pad}; use a kernel of at most {} or pad the input",
                        ph.min(pw)
                    ),
                ));
            }
            Ok(vec![(ph - kernel) / stride + 1, (pw - kernel) / stride + 1])
        };
        Ok(match layer {
            LayerSpec::Conv2d { out_channels, kernel, stride, padding, bias, .. } => {
                let (c, h, w) = image(input)?;
                at_least_one("out_channels", *out_channels)?;
                let hw = window(*kernel, *stride, *padding, h, w)?;
                let weights = (*out_channels as u64).saturating_mul(c as u64).saturating_mul((kernel * kernel) as u64);
                add_params(weights + if *bias { *out_channels as u64 } else { 0 })?;
                vec![*out_channels, hw[0], hw[1]]
            }
            LayerSpec::Linear { out_features, bias, .. } => {
                let [features] = input else {
                    return Err(err(
                        "",
                        format!("needs a flat input, got {input:?}; put a layer of type \"flatten\" before it"),
                    ));
                };
                at_least_one("out_features", *out_features)?;
                add_params(
                    (*out_features as u64).saturating_mul(*features as u64)
                        + if *bias { *out_features as u64 } else { 0 },
                )?;
                vec![*out_features]
            }
            LayerSpec::BatchNorm { eps, momentum, affine, .. } => {
                positive_eps(*eps)?;
                if let Some(m) = momentum {
                    if !(0.0..=1.0).contains(m) {
                        return Err(err(
                            "momentum",
                            format!(
                                "is {m}; PyTorch's convention: the weight of the NEW batch statistic, in [0, 1] (default 0.1; \
                                 Keras' momentum 0.99 is 0.01 here)"
                            ),
                        ));
                    }
                }
                if input.is_empty() || input[0] == 0 {
                    return Err(err("", format!("needs an input with channels, got {input:?}")));
                }
                add_params(if *affine { 2 * input[0] as u64 } else { 0 })?;
                input.to_vec()
            }
            LayerSpec::LayerNorm { eps, elementwise_affine, normalized_dims } => {
                positive_eps(*eps)?;
                let k = normalized_dims.unwrap_or(input.len());
                if k == 0 || k > input.len() {
                    return Err(err(
                        "normalized_dims",
                        format!(
                            "is {k}; one example has {} dimensions {input:?}: give 1 to {}",
                            input.len(),
                            input.len()
                        ),
                    ));
                }
                let n: u64 = input[input.len() - k..].iter().map(|&d| d as u64).product();
                add_params(if *elementwise_affine { 2 * n } else { 0 })?;
                input.to_vec()
            }
            LayerSpec::GroupNorm { num_groups, eps, affine } => {
                positive_eps(*eps)?;
                at_least_one("num_groups", *num_groups)?;
                let c = input.first().copied().unwrap_or(0);
                if c % num_groups != 0 {
                    return Err(err(
                        "num_groups",
                        format!("{num_groups} does not divide the {c} channels of its input {input:?}; use a divisor of {c}"),
                    ));
                }
                add_params(if *affine { 2 * c as u64 } else { 0 })?;
                input.to_vec()
            }
            LayerSpec::RmsNorm { eps, elementwise_affine, normalized_dims } => {
                if let Some(eps) = eps {
                    positive_eps(*eps)?;
                }
                let k = normalized_dims.unwrap_or(input.len());
                if k == 0 || k > input.len() {
                    return Err(err(
                        "normalized_dims",
                        format!(
                            "is {k}; one example has {} dimensions {input:?}: give 1 to {}",
                            input.len(),
                            input.len()
                        ),
                    ));
                }
                let n: u64 = input[input.len() - k..].iter().map(|&d| d as u64).product();
                add_params(if *elementwise_affine { n } else { 0 })?;
                input.to_vec()
            }
            LayerSpec::InstanceNorm { eps, momentum, affine, .. } => {
                positive_eps(*eps)?;
                unit_momentum(*momentum)?;
                if input.len() < 2 {
                    return Err(err(
                        "",
                        format!("needs an input with channels and spatial values (C, H, W) or (C, L), got {input:?}; put it before the flatten"),
                    ));
                }
                add_params(if *affine { 2 * input[0] as u64 } else { 0 })?;
                input.to_vec()
            }
            LayerSpec::FrozenBatchNorm { eps } => {
                positive_eps(*eps)?;
                with_channels(input)?;
                input.to_vec()
            }
            LayerSpec::GhostBatchNorm { virtual_batch, eps, momentum } => {
                positive_eps(*eps)?;
                unit_momentum(*momentum)?;
                at_least_one("virtual_batch", *virtual_batch)?;
                with_channels(input)?;
                add_params(2 * input[0] as u64)?;
                input.to_vec()
            }
            LayerSpec::BatchRenorm { eps, momentum, rmax, dmax, warmup_steps, rmax_steps, dmax_steps } => {
                positive_eps(*eps)?;
                unit_momentum(*momentum)?;
                let schedule = RenormSchedule {
                    rmax: *rmax,
                    dmax: *dmax,
                    warmup_steps: *warmup_steps,
                    rmax_steps: *rmax_steps,
                    dmax_steps: *dmax_steps,
                };
                schedule.validate().map_err(|e| err("", e.to_string()))?;
                with_channels(input)?;
                add_params(2 * input[0] as u64)?;
                input.to_vec()
            }
            LayerSpec::LeakyRelu { negative_slope } => {
                if !negative_slope.is_finite() {
                    return Err(err(
                        "negative_slope",
                        format!("is {negative_slope}; give a finite number (default 0.01)"),
                    ));
                }
                input.to_vec()
            }
            LayerSpec::Gelu { approximate } => {
                if approximate != "none" && approximate != "tanh" {
                    return Err(err("approximate", format!("is \"{approximate}\"; give \"none\" (exact) or \"tanh\"")));
                }
                input.to_vec()
            }
            LayerSpec::Relu | LayerSpec::Silu | LayerSpec::Sigmoid | LayerSpec::Tanh => input.to_vec(),
            LayerSpec::MaxPool { kernel, stride } | LayerSpec::AvgPool { kernel, stride } => {
                let (c, h, w) = image(input)?;
                let hw = window(*kernel, stride.unwrap_or(*kernel), 0, h, w)?;
                vec![c, hw[0], hw[1]]
            }
            LayerSpec::Dropout { p } => {
                if !(0.0..1.0).contains(p) {
                    return Err(err("p", format!("is {p}; the probability of dropping must be in [0, 1)")));
                }
                input.to_vec()
            }
            LayerSpec::Flatten => vec![input.iter().product()],
            LayerSpec::Residual { body, shortcut } => {
                if body.iter().chain(shortcut.iter().flatten()).any(|l| matches!(l, LayerSpec::Dropout { .. })) {
                    return Err(err(
                        "body",
                        "dropout inside a residual block is not supported: put it after the block".into(),
                    ));
                }
                let out = self.layers(body, input.to_vec(), &format!("{here}.body"), top)?;
                let other = match shortcut {
                    Some(s) => self.layers(s, input.to_vec(), &format!("{here}.shortcut"), top)?,
                    None => input.to_vec(),
                };
                if out != other {
                    let what = if shortcut.is_some() { "the shortcut's" } else { "its input's (no shortcut)" };
                    return Err(err(
                        if shortcut.is_some() { "shortcut" } else { "body" },
                        format!(
                            "the body's output shape {out:?} differs from {what} {other:?}; give a shortcut that matches \
                             (e.g. a 1x1 conv2d with the body's stride and channels)"
                        ),
                    ));
                }
                out
            }
        })
    }
}

impl ModelSpec {
    /// A network of these layers, its input taken from the data.
    pub fn new(layers: Vec<LayerSpec>) -> Self {
        ModelSpec { input: None, layers }
    }

    /// The same network with every batch norm's momentum (PyTorch's
    /// convention) and eps replaced where given, residual blocks included.
    pub fn with_batch_norm(&self, momentum: Option<f64>, eps: Option<f64>) -> ModelSpec {
        fn walk(layers: &mut [LayerSpec], momentum: Option<f64>, new_eps: Option<f64>) {
            for l in layers {
                match l {
                    LayerSpec::BatchNorm { eps, momentum: m, .. } => {
                        if let Some(w) = momentum {
                            *m = Some(w);
                        }
                        if let Some(e) = new_eps {
                            *eps = e;
                        }
                    }
                    LayerSpec::Residual { body, shortcut } => {
                        walk(body, momentum, new_eps);
                        if let Some(s) = shortcut {
                            walk(s, momentum, new_eps);
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut spec = self.clone();
        walk(&mut spec.layers, momentum, eps);
        spec
    }

    /// The momentum and eps of the first batch norm, if there is one.
    pub fn first_batch_norm(&self) -> Option<(Option<f64>, f64)> {
        fn find(layers: &[LayerSpec]) -> Option<(Option<f64>, f64)> {
            layers.iter().find_map(|l| match l {
                LayerSpec::BatchNorm { eps, momentum, .. } => Some((*momentum, *eps)),
                LayerSpec::Residual { body, shortcut } => find(body).or_else(|| shortcut.as_deref().and_then(find)),
                _ => None,
            })
        }
        find(&self.layers)
    }

    /// The same network with its last layer, when that is linear, giving
    /// `classes` outputs (a recipe's network for any data set).
    pub fn with_classes(mut self, classes: usize) -> Self {
        if let Some(LayerSpec::Linear { out_features, .. }) = self.layers.last_mut() {
            *out_features = classes;
        }
        self
    }

    /// The same network with one example's shape fixed to `input`.
    pub fn with_input(mut self, input: &[usize]) -> Self {
        self.input = Some(input.to_vec());
        self
    }

    /// Reads a model file (see the module docs) and checks it for one
    /// example of shape `data_input` (the data's; the file's own `input`,
    /// when it gives one, must agree). Errors name the file, the line, the
    /// layer and the field.
    pub fn from_toml_file(path: &Path, data_input: Option<&[usize]>) -> Result<Self> {
        Ok(Self::read_model_file(path, data_input)?.0)
    }

    /// [`Self::from_toml_file`], and the file's `[train]` table when it has one.
    pub fn read_model_file(path: &Path, data_input: Option<&[usize]>) -> Result<(Self, Option<TrainDefaults>)> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        // a model file is a few kilobytes; refuse a device or a huge file
        // before reading it
        if !meta.is_file() || meta.len() > 1 << 20 {
            return Err(Error::data(
                path,
                "not a model file (a regular TOML file under 1 MiB); see README, \"Your own network\"",
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::read_model_text(&text, path, data_input)
    }

    /// [`Self::read_model_file`] of a model file's text, which errors name
    /// as `origin` (a path, or e.g. "preset fast" for one built into a program).
    pub fn read_model_text(
        text: &str,
        origin: &Path,
        data_input: Option<&[usize]>,
    ) -> Result<(Self, Option<TrainDefaults>)> {
        let path = origin;
        let (spec, train) = Self::parse_file(text).map_err(|m| Error::data(path, m))?;
        if let (Some(own), Some(data)) = (&spec.input, data_input) {
            if own.as_slice() != data {
                return Err(Error::data(
                    path,
                    format!("field input: the file says {own:?} but the data's examples are {data:?}; remove `input` or fix it"),
                ));
            }
        }
        let input = spec.input.clone().or_else(|| data_input.map(<[usize]>::to_vec));
        spec.check(input.as_deref()).map_err(|e| Error::data(path, located(text, &e)))?;
        Ok((spec, train))
    }

    /// Parses a model file's text and checks it (see [`Self::check`]).
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let spec = Self::parse_toml(text).map_err(|m| Error::config("model file", m))?;
        spec.check(None).map_err(|e| Error::config("model file", located(text, &e)))?;
        Ok(spec)
    }

    fn parse_toml(text: &str) -> std::result::Result<Self, String> {
        Ok(Self::parse_file(text)?.0)
    }

    fn parse_file(text: &str) -> std::result::Result<(Self, Option<TrainDefaults>), String> {
        let file = toml::from_str::<ModelFile>(text).map_err(|e| {
            // the line the error's span starts on (a span at a line's start, as an
            // unknown key's, is on that line, not the one before)
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let message = e.message().trim().replace('\n', " ");
            let message = if message.starts_with("unknown field") && in_train_table(text, line) {
                format!(
                    "{message} in [train]; its keys are the options of `normlab train` with _ for - \
                     (epochs, batch_size, lr, optimizer, schedule, label_smoothing, augment, bn_momentum, ...)"
                )
            } else {
                message
            };
            match line {
                Some(l) if in_train_table(text, Some(l)) => format!("line {l}, [train]: {message}"),
                Some(l) => format!("line {l}{}: {message}", layer_field(text, l).unwrap_or_default()),
                None => message,
            }
        })?;
        let train = file.train.map(|mut t| {
            t.find_lines(text);
            t
        });
        Ok((ModelSpec { input: file.input, layers: file.layers }, train))
    }

    /// The file's text (TOML).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a ModelSpec serializes to TOML")
    }

    /// Checks every layer against one example's shape (`input`, else the
    /// spec's own), and returns one example's output shape. Nothing is
    /// allocated: a described size that would not fit is an error here.
    pub fn check(&self, input: Option<&[usize]>) -> std::result::Result<Vec<usize>, SpecError> {
        let input = match (input, &self.input) {
            (Some(i), _) => i.to_vec(),
            (None, Some(i)) => i.clone(),
            // without a shape the layers are checked for their own values only, on
            // the smallest image every 3x3-or-smaller layer accepts
            (None, None) => return self.check_fields(),
        };
        if input.is_empty() || input.contains(&0) {
            return Err(SpecError {
                top_layer: None,
                place: "input".into(),
                message: format!("{input:?} is not one example's shape; give [C, H, W] with every size at least 1"),
            });
        }
        Checker { params: 0 }.layers(&self.layers, input, "", None)
    }

    /// The checks that need no input shape (0 channels, eps, momentum, ...).
    fn check_fields(&self) -> std::result::Result<Vec<usize>, SpecError> {
        if self.layers.is_empty() {
            return Err(SpecError {
                top_layer: None,
                place: "layers".into(),
                message: "no layers: list at least one ([[layers]] with a type)".into(),
            });
        }
        Ok(Vec::new())
    }

    /// One example's shape: `input` if given, else the spec's; an error
    /// when neither says.
    pub fn input_shape(&self, input: Option<&[usize]>) -> Result<Vec<usize>> {
        input.map(<[usize]>::to_vec).or_else(|| self.input.clone()).ok_or_else(|| {
            Error::config(
                "model input",
                "the model does not say its input shape; give `input = [C, H, W]` or build it for the data",
            )
        })
    }

    /// The unbuilt network ([`Sequential::build`] it with one example's
    /// shape); not checked.
    pub fn network<T: Real>(&self) -> Result<Sequential<T>> {
        sequential(&self.layers)
    }

    /// Checks the spec for one example's shape `input` (else its own
    /// `input`), then builds and initializes the network from `rng`.
    pub fn build<T: Real>(&self, input: Option<&[usize]>, rng: &mut Rng) -> Result<Sequential<T>> {
        let shape = self.input_shape(input)?;
        self.check(Some(&shape)).map_err(|e| Error::config("model", e.to_string()))?;
        let mut net = self.network()?;
        net.build(&shape, rng)?;
        Ok(net)
    }
}

/// For a TOML error at `line` inside a `[[layers]]` table: `, layers[i]
/// (type), field f`, the field found as the one whose removal lets the
/// layer parse (serde reports a bad value in a tagged table without its
/// field).
fn layer_field(text: &str, line: usize) -> Option<String> {
    let headers: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("[[layers]]"))
        .map(|(n, _)| n + 1)
        .collect();
    let index = headers.iter().rposition(|&h| h <= line)?;
    let doc: toml::Table = text.parse().ok()?;
    let table = doc.get("layers")?.as_array()?.get(index)?.as_table()?.clone();
    let kind = table.get("type").and_then(|t| t.as_str()).unwrap_or("?").to_string();
    let parses = |t: &toml::Table| -> std::result::Result<(), String> {
        LayerSpec::deserialize(toml::Value::Table(t.clone())).map(|_| ()).map_err(|e| e.to_string())
    };
    let culprit = table.keys().filter(|k| k.as_str() != "type").find(|k| {
        let mut without = table.clone();
        without.remove(k.as_str());
        match parses(&without) {
            Ok(()) => true,
            Err(m) => m.contains(&format!("missing field `{k}`")),
        }
    });
    Some(match culprit {
        Some(k) => format!(", layers[{index}] ({kind}), field {k}"),
        None => format!(", layers[{index}] ({kind})"),
    })
}

/// Whether `line` lies in the file's `[train]` table (the last table
/// header at or above it is `[train]`).
fn in_train_table(text: &str, line: Option<usize>) -> bool {
    let Some(line) = line else { return false };
    text.lines()
        .take(line)
        .map(str::trim_start)
        .filter(|l| l.starts_with('['))
        .last()
        .is_some_and(|h| h.trim_end().starts_with("[train]"))
}

/// The error with the line of its top-level layer's `[[layers]]` header
/// in `text`, when the file writes layers that way.
fn located(text: &str, e: &SpecError) -> String {
    let line = e.top_layer.and_then(|i| {
        text.lines().enumerate().filter(|(_, l)| l.trim_start().starts_with("[[layers]]")).nth(i).map(|(n, _)| n + 1)
    });
    match line {
        Some(l) => format!("line {l}, {e}"),
        None => e.to_string(),
    }
}

/// What a checkpoint records to rebuild its network: one of the chapter's
/// LeNet family by its configuration (files written before model files
/// existed hold only this), or any network as a [`ModelSpec`]. In JSON, a
/// LeNet is its configuration as before (older run records read back).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Architecture {
    /// A LeNet of the chapter (the built-in models and the experiments').
    LeNet(super::LeNetConfig),
    /// Any network described layer by layer.
    Spec(ModelSpec),
}

impl Architecture {
    /// The network as a [`ModelSpec`] (a LeNet's, see
    /// [`super::LeNetConfig::spec`]).
    pub fn spec(&self) -> ModelSpec {
        match self {
            Architecture::LeNet(c) => c.spec(),
            Architecture::Spec(s) => s.clone(),
        }
    }

    /// One example's shape: the spec's `input`, else Fashion-MNIST's
    /// ([`super::INPUT_SHAPE`]).
    pub fn input_shape(&self) -> Vec<usize> {
        self.spec().input.unwrap_or_else(|| super::INPUT_SHAPE.to_vec())
    }

    /// Builds and initializes the network for one example of shape `input`
    /// (else the description's own).
    pub fn build<T: Real>(&self, input: Option<&[usize]>, rng: &mut Rng) -> Result<Sequential<T>> {
        self.spec().build(input, rng)
    }

    /// Builds and initializes the network for examples of shape `input`
    /// and `classes` classes: a LeNet gets a last layer of `classes`
    /// outputs; a described network must already have them (refused,
    /// saying which layer to change, when its output differs).
    pub fn build_for<T: Real>(&self, input: &[usize], classes: usize, rng: &mut Rng) -> Result<Sequential<T>> {
        match self {
            Architecture::LeNet(c) => c.spec_for(classes)?.build(Some(input), rng),
            Architecture::Spec(s) => {
                let output = s.check(Some(input)).map_err(|e| Error::config("model", e.to_string()))?;
                if output != [classes] {
                    return Err(Error::config(
                        "model",
                        format!(
                            "the network's output has shape {output:?} but the data has {classes} classes; \
                             end the model with a linear layer of out_features = {classes}"
                        ),
                    ));
                }
                s.build(Some(input), rng)
            }
        }
    }

    /// The same network with every batch norm's momentum (PyTorch's
    /// convention: the weight of the new batch statistic) and eps replaced
    /// where given.
    pub fn with_batch_norm(&self, momentum: Option<f64>, eps: Option<f64>) -> Architecture {
        match self {
            Architecture::LeNet(c) => {
                let mut c = *c;
                if let super::Norm::Batch { config, .. } = &mut c.norm {
                    if let Some(m) = momentum {
                        config.momentum = Momentum::NewStatWeight(m);
                    }
                    if let Some(e) = eps {
                        config.eps = e;
                    }
                }
                Architecture::LeNet(c)
            }
            Architecture::Spec(s) => Architecture::Spec(s.with_batch_norm(momentum, eps)),
        }
    }

    /// Whether the network has a batch norm anywhere, or another layer that
    /// normalizes over the batch (ghost batch norm, batch renormalization),
    /// which cannot train on batches of one example.
    pub fn has_batch_norm(&self) -> bool {
        fn any(layers: &[LayerSpec]) -> bool {
            layers.iter().any(|l| match l {
                LayerSpec::BatchNorm { .. } | LayerSpec::GhostBatchNorm { .. } | LayerSpec::BatchRenorm { .. } => true,
                LayerSpec::Residual { body, shortcut } => any(body) || shortcut.as_deref().is_some_and(any),
                _ => false,
            })
        }
        any(&self.spec().layers)
    }
}

impl From<super::LeNetConfig> for Architecture {
    fn from(c: super::LeNetConfig) -> Self {
        Architecture::LeNet(c)
    }
}
impl From<&super::LeNetConfig> for Architecture {
    fn from(c: &super::LeNetConfig) -> Self {
        Architecture::LeNet(*c)
    }
}
impl From<ModelSpec> for Architecture {
    fn from(s: ModelSpec) -> Self {
        Architecture::Spec(s)
    }
}
impl From<&ModelSpec> for Architecture {
    fn from(s: &ModelSpec) -> Self {
        Architecture::Spec(s.clone())
    }
}
impl From<&Architecture> for Architecture {
    fn from(a: &Architecture) -> Self {
        a.clone()
    }
}
