//! The chapter's LeNet family (docs/spec.md, "The models"): input 1×28×28,
//!
//! ```text
//! conv(6, 5x5) -> norm -> sigmoid -> avgpool(2, 2)      # 24x24 -> 12x12
//! conv(16, 5x5) -> norm -> sigmoid -> avgpool(2, 2)     # 8x8 -> 4x4
//! flatten -> linear(120) -> norm -> sigmoid
//! linear(84) -> norm -> sigmoid -> linear(10)
//! ```
//!
//! Xavier-uniform weights, PyTorch's default biases (d2l's `init_cnn`).

use super::spec::{InitSpec, LayerSpec, ModelSpec};
use super::Sequential;
use crate::layers::{BatchNormConfig, BnImpl};
use crate::real::Real;
use crate::rng::Rng;
use crate::{Error, Result};

/// Which normalization sits in the network.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Norm {
    /// No normalization: the chapter's plain LeNet, the baseline.
    None,
    /// Batch norm (`BatchNorm2d` after a convolution, `BatchNorm1d` after a
    /// linear layer).
    Batch {
        /// Which implementation computes it (the chapter's scratch one or the fused one).
        imp: BnImpl,
        /// Its options (eps, momentum, affine, running statistics, ...).
        config: BatchNormConfig,
    },
    /// LayerNorm over each example's values (C·H·W after a convolution).
    Layer,
    /// GroupNorm with this many groups (must divide every normalized width: 6, 16, 120, 84).
    Group {
        /// The number of groups G (PyTorch's `num_groups`).
        groups: usize,
    },
}

/// Normalization before the activation (the original paper, the chapter)
/// or after it (later practice).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NormPlacement {
    /// `affine -> norm -> activation`: the original paper and the chapter.
    BeforeActivation,
    /// `affine -> activation -> norm`: later practice.
    AfterActivation,
}

/// The nonlinearity after each hidden layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Activation {
    /// The logistic sigmoid, as in the chapter (`nn.Sigmoid`).
    Sigmoid,
    /// The rectifier (`nn.ReLU`).
    ReLU,
}

/// A member of the chapter's LeNet family: which normalization, where, and
/// around which layers; [`LeNetConfig::network`] makes the network.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LeNetConfig {
    /// Which normalization layer the network has.
    pub norm: Norm,
    /// Whether it sits before or after the activation.
    pub placement: NormPlacement,
    /// Normalize after the two convolutions.
    pub norm_conv: bool,
    /// Normalize after the two hidden linear layers.
    pub norm_fc: bool,
    /// Biases on the convolutions and linear layers followed by a norm
    /// (they are redundant in front of BN: its mean subtraction cancels them).
    pub bias_before_norm: bool,
    /// The nonlinearity after each hidden layer.
    pub activation: Activation,
    /// Dropout probability after each hidden linear layer's activation.
    pub dropout: Option<f64>,
}

impl LeNetConfig {
    /// The chapter's network with `norm` before each sigmoid, after all four
    /// hidden layers, biases kept, no dropout.
    pub fn with_norm(norm: Norm) -> Self {
        LeNetConfig {
            norm,
            placement: NormPlacement::BeforeActivation,
            norm_conv: true,
            norm_fc: true,
            bias_before_norm: true,
            activation: Activation::Sigmoid,
            dropout: None,
        }
    }

    /// Builds the (unbuilt) network; call [`Sequential::build`] with `[1, 28, 28]`.
    pub fn network<T: Real>(&self) -> Result<Sequential<T>> {
        self.spec().network()
    }

    /// The network as a [`ModelSpec`] (input [`INPUT_SHAPE`]): the same
    /// layers, built in the same order, so the same seed gives the same
    /// weights and the same state names.
    pub fn spec(&self) -> ModelSpec {
        let mut layers = Vec::new();
        let has_norm = |on: bool| on && self.norm != Norm::None;
        let stage = |layers: &mut Vec<LayerSpec>, affine: LayerSpec, normed: bool| {
            layers.push(affine);
            let act = match self.activation {
                Activation::Sigmoid => LayerSpec::Sigmoid,
                Activation::ReLU => LayerSpec::Relu,
            };
            if normed && self.placement == NormPlacement::BeforeActivation {
                layers.push(self.norm_layer());
            }
            layers.push(act);
            if normed && self.placement == NormPlacement::AfterActivation {
                layers.push(self.norm_layer());
            }
        };
        let conv_bias = self.bias_before_norm || !has_norm(self.norm_conv);
        let fc_bias = self.bias_before_norm || !has_norm(self.norm_fc);
        let init = InitSpec::XavierUniform;
        for out_channels in [6, 16] {
            let conv = LayerSpec::Conv2d { out_channels, kernel: 5, stride: 1, padding: 0, bias: conv_bias, init };
            stage(&mut layers, conv, has_norm(self.norm_conv));
            layers.push(LayerSpec::AvgPool { kernel: 2, stride: Some(2) });
        }
        layers.push(LayerSpec::Flatten);
        for out_features in [120, 84] {
            stage(&mut layers, LayerSpec::Linear { out_features, bias: fc_bias, init }, has_norm(self.norm_fc));
            if let Some(p) = self.dropout {
                layers.push(LayerSpec::Dropout { p });
            }
        }
        layers.push(LayerSpec::Linear { out_features: 10, bias: true, init });
        ModelSpec::new(layers).with_input(&INPUT_SHAPE)
    }

    fn norm_layer(&self) -> LayerSpec {
        match self.norm {
            Norm::Batch { imp, config } => LayerSpec::batch_norm_from(&config, imp),
            Norm::Layer => LayerSpec::LayerNorm { eps: 1e-5, elementwise_affine: true, normalized_dims: None },
            Norm::Group { groups } => LayerSpec::GroupNorm { num_groups: groups, eps: 1e-5, affine: true },
            // spec() calls this only where has_norm(..) holds, i.e. norm != None
            Norm::None => unreachable!("only called when a norm is configured"),
        }
    }
}

/// The ready-made models of the CLI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ModelKind {
    /// LeNet with fused batch norm (the chapter's concise model).
    BnLenet,
    /// LeNet with the chapter's hand-written batch norm.
    BnLenetScratch,
    /// LeNet without normalization (the baseline).
    Lenet,
    /// LeNet with layer norm in place of batch norm.
    LnLenet,
}

impl ModelKind {
    /// Every ready-made model.
    pub const ALL: [ModelKind; 4] =
        [ModelKind::BnLenet, ModelKind::BnLenetScratch, ModelKind::Lenet, ModelKind::LnLenet];

    /// The model's name on the command line, e.g. `bn-lenet-scratch`.
    pub fn name(&self) -> &'static str {
        match self {
            ModelKind::BnLenet => "bn-lenet",
            ModelKind::BnLenetScratch => "bn-lenet-scratch",
            ModelKind::Lenet => "lenet",
            ModelKind::LnLenet => "ln-lenet",
        }
    }

    /// The model called `name` (see [`ModelKind::name`]); the error lists the names.
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|m| m.name()).collect();
            Error::config("model", format!("unknown model '{name}'; choose one of {}", names.join(", ")))
        })
    }

    /// The configuration that makes this model.
    pub fn config(&self) -> LeNetConfig {
        match self {
            ModelKind::BnLenet => {
                LeNetConfig::with_norm(Norm::Batch { imp: BnImpl::Fused, config: BatchNormConfig::pytorch() })
            }
            ModelKind::BnLenetScratch => {
                LeNetConfig::with_norm(Norm::Batch { imp: BnImpl::Scratch, config: BatchNormConfig::pytorch() })
            }
            ModelKind::Lenet => LeNetConfig::with_norm(Norm::None),
            ModelKind::LnLenet => LeNetConfig::with_norm(Norm::Layer),
        }
    }
}

/// One example of Fashion-MNIST.
pub const INPUT_SHAPE: [usize; 3] = [1, 28, 28];

/// Builds and initializes a ready-made model.
pub fn build<T: Real>(kind: ModelKind, rng: &mut Rng) -> Result<Sequential<T>> {
    build_config(&kind.config(), rng)
}

/// Builds and initializes the network `config` describes for Fashion-MNIST
/// input ([`INPUT_SHAPE`]).
pub fn build_config<T: Real>(config: &LeNetConfig, rng: &mut Rng) -> Result<Sequential<T>> {
    let mut net = config.network()?;
    net.build(&INPUT_SHAPE, rng)?;
    Ok(net)
}

/// `bn_lenet`: the chapter's network with the fused batch norm.
pub fn bn_lenet<T: Real>(rng: &mut Rng) -> Result<Sequential<T>> {
    build(ModelKind::BnLenet, rng)
}
/// `bn_lenet_scratch`: the same with the chapter's hand-written batch norm.
pub fn bn_lenet_scratch<T: Real>(rng: &mut Rng) -> Result<Sequential<T>> {
    build(ModelKind::BnLenetScratch, rng)
}
/// `lenet`: the same network without normalization.
pub fn lenet<T: Real>(rng: &mut Rng) -> Result<Sequential<T>> {
    build(ModelKind::Lenet, rng)
}
/// `ln_lenet`: layer norm in place of batch norm.
pub fn ln_lenet<T: Real>(rng: &mut Rng) -> Result<Sequential<T>> {
    build(ModelKind::LnLenet, rng)
}
