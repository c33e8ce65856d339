//! Folding batch norm into the layer before it, for inference.
//!
//! In eval mode a batch norm is a fixed affine map per channel,
//! `y = s·z + t` with `s = gamma / sqrt(running_var + eps)` and
//! `t = beta - s·running_mean` ([`BatchNorm::eval_affine`]). When `z` comes
//! from a convolution or linear layer, `z = W·x + b`, the two compose into
//! one layer of the same kind:
//!
//! ```text
//! y = s·(W·x + b) + t = (s·W)·x + (s·b + t)
//! W' = s[o] · W[o, ...]    (every weight that makes output channel o)
//! b' = s·b + t             (b = 0 for a layer built without a bias)
//! ```
//!
//! Layers that neither mix channels nor change values in eval mode may sit
//! between the two: dropout (the identity in eval mode), and a flatten as
//! long as the batch norm's channels are still the producer's outputs (a
//! convolution with a 1x1 output, or a linear layer); the channel count is
//! checked. A batch norm after anything else (an activation, a pooling
//! layer, the model's input) keeps its place. Frozen batch norm, ghost
//! batch norm and batch renormalization are the same per-channel map in
//! eval mode and fold the same way; every other layer (RMS norm, instance
//! norm, ...) keeps its place. Folding changes the model's
//! training behaviour (the batch statistics are gone), so it leaves the
//! model in eval mode.

use std::any::Any;

use super::spec::{LayerSpec, ModelSpec};
use super::{Residual, Sequential};
use crate::layers::{BatchNorm, BatchRenorm, Conv2d, Dropout, Flatten, FrozenBatchNorm, GhostBatchNorm, Layer, Linear};
use crate::real::Real;
use crate::{Error, Result};

/// The layer a following batch norm can fold into, and its number of
/// output channels.
enum Producer {
    Conv(usize),
    Linear(usize),
}

impl Producer {
    fn of<T: Real>(layer: &dyn Layer<T>) -> Option<Producer> {
        let any = layer as &dyn Any;
        if let Some(conv) = any.downcast_ref::<Conv2d<T>>() {
            return Some(Producer::Conv(conv.out_channels()));
        }
        any.downcast_ref::<Linear<T>>().map(|l| Producer::Linear(l.out_features()))
    }

    fn channels(&self) -> usize {
        match *self {
            Producer::Conv(c) | Producer::Linear(c) => c,
        }
    }

    fn absorb<T: Real>(&self, layer: &mut dyn Layer<T>, scale: &[f64], shift: &[f64]) -> Result<()> {
        let any = layer as &mut dyn Any;
        match self {
            Producer::Conv(_) => any.downcast_mut::<Conv2d<T>>().map(|c| c.absorb_channel_affine(scale, shift)),
            Producer::Linear(_) => any.downcast_mut::<Linear<T>>().map(|l| l.absorb_channel_affine(scale, shift)),
        }
        .unwrap_or_else(|| unreachable!("the producer's type was checked when it was recorded"))
    }
}

/// For a layer that is a per-channel affine map in eval mode (batch norm
/// with running statistics, frozen batch norm, ghost batch norm, batch
/// renormalization): its channels and that map, `None` in place of the map
/// when eval mode depends on the batch; `None` for any other layer.
#[allow(clippy::type_complexity)]
fn eval_channel_affine<T: Real>(any: &dyn Any) -> Option<(usize, Option<(Vec<f64>, Vec<f64>)>)> {
    if let Some(bn) = any.downcast_ref::<BatchNorm<T>>() {
        return Some((bn.num_features(), bn.eval_affine()));
    }
    if let Some(f) = any.downcast_ref::<FrozenBatchNorm<T>>() {
        return Some((f.num_features(), f.channel_affine()));
    }
    if let Some(g) = any.downcast_ref::<GhostBatchNorm<T>>() {
        return Some((g.num_features(), g.eval_affine()));
    }
    any.downcast_ref::<BatchRenorm<T>>().map(|r| (r.num_features(), r.eval_affine()))
}

/// Whether `layer` passes its input through unchanged in eval mode, channel
/// for channel (so a batch norm after it still sees the producer's outputs).
fn transparent<T: Real>(layer: &dyn Layer<T>) -> bool {
    let any = layer as &dyn Any;
    any.is::<Dropout<T>>() || any.is::<Flatten<T>>()
}

impl<T: Real> Sequential<T> {
    /// Folds every eval-mode batch norm that follows a convolution or a
    /// linear layer (with at most dropout and flatten between them) into
    /// that layer's weight and bias, removes it, and returns how many were
    /// folded; inside residual blocks too. The model's eval-mode outputs do
    /// not change (up to rounding); a batch norm with nothing to fold into,
    /// or without running statistics, stays. The model is left in eval mode:
    /// see the module docs of `models/fold.rs` for the formulas.
    ///
    /// The model must be built, and built with [`Self::fusion`] off: a fused
    /// layer hides its batch norm.
    ///
    /// ```
    /// use normlab::layers::{BatchNorm, BatchNormConfig, Conv2d, ReLU};
    /// use normlab::models::Sequential;
    /// use normlab::{rng, Tensor};
    /// let mut net = Sequential::<f32>::new()
    ///     .push(Conv2d::new(4, 3).bias(false))
    ///     .push(BatchNorm::new(BatchNormConfig::pytorch()))
    ///     .push(ReLU::new())
    ///     .fusion(false);
    /// net.build(&[1, 8, 8], &mut rng::seeded(0)).unwrap();
    /// net.eval();
    /// let x = Tensor::full(&[2, 1, 8, 8], 0.5);
    /// let before = net.forward(&x).unwrap().clone();
    /// assert_eq!(net.fold_batch_norms().unwrap(), 1);
    /// assert_eq!(net.len(), 2); // Conv2d (with a bias now), ReLU
    /// let after = net.forward(&x).unwrap();
    /// assert!(before.data().iter().zip(after.data()).all(|(a, b)| (a - b).abs() < 1e-6));
    /// ```
    pub fn fold_batch_norms(&mut self) -> Result<usize> {
        self.fold_batch_norms_traced().map(|f| f.count())
    }

    /// [`Self::fold_batch_norms`], saying which layers it removed and which
    /// it changed, so that a description of the model can follow
    /// ([`Folds::apply`]).
    pub fn fold_batch_norms_traced(&mut self) -> Result<Folds> {
        if !self.built {
            return Err(Error::config("model", "call build() with one example's input shape before folding"));
        }
        let layers = std::mem::take(&mut self.layers);
        let shapes = std::mem::take(&mut self.output_shapes);
        let mut kept: Vec<Box<dyn Layer<T>>> = Vec::with_capacity(layers.len());
        let mut kept_shapes = Vec::with_capacity(layers.len());
        // the index in `kept` of the layer a batch norm here would fold into
        let mut producer: Option<(usize, Producer)> = None;
        // the index before folding of each layer in `kept`
        let mut origin: Vec<usize> = Vec::with_capacity(layers.len());
        let mut folds = Folds::default();
        let mut failure = None;
        for (index, (mut layer, shape)) in layers.into_iter().zip(shapes).enumerate() {
            if failure.is_some() {
                kept.push(layer);
                kept_shapes.push(shape);
                origin.push(index);
                continue;
            }
            let any = &mut *layer as &mut dyn Any;
            if let Some((channels, affine)) = eval_channel_affine::<T>(any) {
                let fold = match (&producer, affine) {
                    (Some((at, p)), Some((scale, shift))) if p.channels() == channels => Some((*at, scale, shift)),
                    _ => None,
                };
                if let Some((at, scale, shift)) = fold {
                    let p = producer.as_ref().map(|(_, p)| p).expect("matched above");
                    match p.absorb(&mut *kept[at], &scale, &shift) {
                        Ok(()) => {
                            folds.removed.push(index);
                            folds.biased.push(origin[at]);
                            // the producer's output is now the batch norm's:
                            // a second batch norm folds as well
                            continue;
                        }
                        Err(e) => failure = Some(e),
                    }
                }
                producer = None;
            } else if let Some(block) = any.downcast_mut::<Residual<T>>() {
                let mut parts = Vec::new();
                for part in block.parts_mut() {
                    match part.fold_batch_norms_traced() {
                        Ok(f) => parts.push(f),
                        Err(e) => failure = Some(e),
                    }
                }
                folds.blocks.push((index, parts));
                producer = None;
            } else if !layer.batch_norms_mut().is_empty() {
                failure = Some(Error::config(
                    "model",
                    format!(
                        "layer {} ({}) is a fused block with a batch norm inside, which cannot be folded: \
                         build the model with .fusion(false) before folding",
                        kept.len(),
                        layer.kind()
                    ),
                ));
            } else if let Some(p) = Producer::of(&*layer) {
                producer = Some((kept.len(), p));
            } else if !transparent(&*layer) {
                producer = None;
            }
            kept.push(layer);
            kept_shapes.push(shape);
            origin.push(index);
        }
        self.layers = kept;
        self.output_shapes = kept_shapes;
        self.slot_base = self.slots();
        self.mode = crate::layers::Mode::Eval;
        match failure {
            Some(e) => Err(e),
            None => Ok(folds),
        }
    }
}

/// What [`Sequential::fold_batch_norms_traced`] did, by the indices of the
/// layers before folding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Folds {
    /// The batch norms folded and removed.
    pub removed: Vec<usize>,
    /// The convolution or linear layer each went into (in the same order),
    /// which now has a bias.
    pub biased: Vec<usize>,
    /// For each residual block, the folds in its body and its shortcut.
    pub blocks: Vec<(usize, Vec<Folds>)>,
}

impl Folds {
    /// How many batch norms were folded, in blocks too.
    pub fn count(&self) -> usize {
        self.removed.len() + self.blocks.iter().flat_map(|(_, parts)| parts).map(Folds::count).sum::<usize>()
    }

    /// The description of the folded model, from that of the model before
    /// (built from `spec`, one layer per entry): the folded batch norms
    /// left out and a bias on the layers they went into.
    pub fn apply(&self, spec: &ModelSpec) -> Result<ModelSpec> {
        Ok(ModelSpec { input: spec.input.clone(), layers: self.apply_to(&spec.layers)? })
    }

    fn apply_to(&self, layers: &[LayerSpec]) -> Result<Vec<LayerSpec>> {
        let mismatch = || {
            Error::config("model", "the description does not match the folded network (one entry per layer expected)")
        };
        let mut out = Vec::with_capacity(layers.len());
        for (i, layer) in layers.iter().enumerate() {
            if self.removed.contains(&i) {
                if !matches!(
                    layer,
                    LayerSpec::BatchNorm { .. }
                        | LayerSpec::FrozenBatchNorm { .. }
                        | LayerSpec::GhostBatchNorm { .. }
                        | LayerSpec::BatchRenorm { .. }
                ) {
                    return Err(mismatch());
                }
                continue;
            }
            let mut layer = layer.clone();
            if self.biased.contains(&i) {
                match &mut layer {
                    LayerSpec::Conv2d { bias, .. } | LayerSpec::Linear { bias, .. } => *bias = true,
                    _ => return Err(mismatch()),
                }
            }
            if let Some((_, parts)) = self.blocks.iter().find(|(b, _)| *b == i) {
                let LayerSpec::Residual { body, shortcut } = &mut layer else { return Err(mismatch()) };
                *body = parts.first().ok_or_else(mismatch)?.apply_to(body)?;
                if let Some(s) = shortcut {
                    *s = parts.get(1).ok_or_else(mismatch)?.apply_to(s)?;
                }
            }
            out.push(layer);
        }
        Ok(out)
    }
}
