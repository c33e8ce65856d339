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

use super::Sequential;
use crate::layers::{
    AvgPool2d, BatchNorm, BatchNormConfig, BnImpl, Conv2d, Dropout, Flatten, Init, Layer, LayerNorm, Linear, ReLU,
    Sigmoid,
};
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

    /// Builds the (unbuilt) network for Fashion-MNIST's ten classes; call
    /// [`Sequential::build`] with `[1, 28, 28]`.
    pub fn network<T: Real>(&self) -> Result<Sequential<T>> {
        self.network_for(NUM_CLASSES)
    }

    /// The (unbuilt) network with `classes` outputs. The first convolution
    /// takes its input channels from the shape given to
    /// [`Sequential::build`] (`[1, 28, 28]` grey, `[3, 28, 28]` RGB).
    pub fn network_for<T: Real>(&self, classes: usize) -> Result<Sequential<T>> {
        if classes < 2 {
            return Err(Error::config(
                "classes",
                format!("{classes} classes: a classifier needs at least 2; the data must have two classes or more"),
            ));
        }
        let mut net = Sequential::new();
        let has_norm = |on: bool| on && self.norm != Norm::None;
        let stage = |net: &mut Sequential<T>, affine: Box<dyn Layer<T>>, normed: bool| -> Result<()> {
            net.push_boxed(affine);
            let act: Box<dyn Layer<T>> = match self.activation {
                Activation::Sigmoid => Box::new(Sigmoid::new()),
                Activation::ReLU => Box::new(ReLU::new()),
            };
            if normed && self.placement == NormPlacement::BeforeActivation {
                net.push_boxed(self.norm_layer());
            }
            net.push_boxed(act);
            if normed && self.placement == NormPlacement::AfterActivation {
                net.push_boxed(self.norm_layer());
            }
            Ok(())
        };
        let conv_bias = self.bias_before_norm || !has_norm(self.norm_conv);
        let fc_bias = self.bias_before_norm || !has_norm(self.norm_fc);
        for channels in [6, 16] {
            let conv = Conv2d::new(channels, 5).bias(conv_bias).init(Init::XavierUniform);
            stage(&mut net, Box::new(conv), has_norm(self.norm_conv))?;
            net.push_boxed(Box::new(AvgPool2d::new(2, 2)));
        }
        net.push_boxed(Box::new(Flatten::new()));
        for width in [120, 84] {
            stage(
                &mut net,
                Box::new(Linear::new(width).bias(fc_bias).init(Init::XavierUniform)),
                has_norm(self.norm_fc),
            )?;
            if let Some(p) = self.dropout {
                net.push_boxed(Box::new(Dropout::new(p)?));
            }
        }
        net.push_boxed(Box::new(Linear::new(classes).init(Init::XavierUniform)));
        Ok(net)
    }

    fn norm_layer<T: Real>(&self) -> Box<dyn Layer<T>> {
        match self.norm {
            Norm::Batch { imp, config } => Box::new(BatchNorm::with_impl(config, imp)),
            Norm::Layer => Box::new(LayerNorm::per_example()),
            Norm::Group { groups } => Box::new(crate::layers::GroupNorm::new(groups)),
            // network() calls this only where has_norm(..) holds, i.e. norm != None
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
/// Fashion-MNIST's number of classes, the chapter's output width.
pub const NUM_CLASSES: usize = 10;

/// Builds and initializes a ready-made model.
pub fn build<T: Real>(kind: ModelKind, rng: &mut Rng) -> Result<Sequential<T>> {
    build_config(&kind.config(), rng)
}

/// Builds and initializes the network `config` describes for Fashion-MNIST
/// input ([`INPUT_SHAPE`]).
pub fn build_config<T: Real>(config: &LeNetConfig, rng: &mut Rng) -> Result<Sequential<T>> {
    build_config_for(config, &INPUT_SHAPE, NUM_CLASSES, rng)
}

/// Builds and initializes the network `config` describes for examples of
/// `input_shape` (`[channels, rows, cols]`) and `classes` classes.
pub fn build_config_for<T: Real>(
    config: &LeNetConfig,
    input_shape: &[usize],
    classes: usize,
    rng: &mut Rng,
) -> Result<Sequential<T>> {
    let mut net = config.network_for(classes)?;
    net.build(input_shape, rng)?;
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
