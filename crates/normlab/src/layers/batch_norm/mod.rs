//! Batch normalization for any input `(N, C, *)`: PyTorch's `BatchNorm1d`,
//! `BatchNorm2d` and `BatchNorm3d` in one layer, with PyTorch's defaults.
//!
//! Training mode, per channel c over the m = N·(spatial size) values:
//!
//! ```text
//! mean_c = (1/m) Σ x          var_c = (1/m) Σ (x - mean_c)²      (biased)
//! x_hat  = (x - mean_c) / sqrt(var_c + eps)
//! y      = gamma_c · x_hat + beta_c
//! running_mean = (1 - w)·running_mean + w·mean_c                (w: see Momentum)
//! running_var  = (1 - w)·running_var  + w·var_c·m/(m-1)         (PyTorch: unbiased)
//! ```
//!
//! Prediction ("eval") mode uses `running_mean`/`running_var` and updates
//! nothing. Backward (training mode):
//!
//! ```text
//! dbeta  = Σ dy      dgamma = Σ dy·x_hat
//! dx     = gamma / sqrt(var + eps) · (dy - dbeta/m - x_hat·dgamma/m)
//! ```
//!
//! Two implementations compute the same thing: [`BnImpl::Scratch`]
//! (`scratch.rs`: the chapter's hand-written layer, one formula per line) and
//! [`BnImpl::Fused`] (`fused.rs`: precomputed per-channel coefficients, two
//! sweeps each way, channels in parallel).
//!
//! # Momentum: which weight is it?
//!
//! PyTorch's `momentum=0.1` is the weight of the NEW batch statistic. Keras'
//! and Flax's `momentum=0.99` is the weight of the OLD running value. Both
//! are common, and swapping them silently ruins a model, so normlab has no
//! bare `momentum` number:
//!
//! ```
//! use normlab::layers::{BatchNormConfig, Momentum};
//! let torch = BatchNormConfig::pytorch();                          // Momentum::NewStatWeight(0.1)
//! let keras = BatchNormConfig::pytorch().momentum(Momentum::OldStatWeight(0.99));
//! assert_eq!(keras.momentum.new_stat_weight(1), Some(0.010000000000000009));
//! assert_eq!(torch.momentum.new_stat_weight(1), Some(0.1));
//! ```

mod activation;
mod block;
mod conv_block;
mod fused;
mod max_pool_block;
mod scratch;

pub(crate) use activation::BnActivation;
pub(crate) use block::BnSigmoidPool;
pub(crate) use conv_block::ConvBnSigmoidPool;
pub(crate) use max_pool_block::BnReluMaxPool;

use super::{check_built, check_forward_ran, check_grad, Layer, Mode, StateMut, StateName};
use crate::kernels::activation::{Activation, Identity};
use crate::kernels::batch_norm::{split_mean, stats_and_normalize, Affine, Epilogue, TwoTerm};
use crate::kernels::stats::Ncs;
use crate::real::Real;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// How the running statistics follow the batch statistics.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Momentum {
    /// PyTorch's `momentum`: `running = (1 - w)·running + w·batch`.
    NewStatWeight(f64),
    /// Keras/Flax `momentum` (decay): `running = d·running + (1 - d)·batch`.
    OldStatWeight(f64),
    /// PyTorch's `momentum=None`: the plain average of every batch so far,
    /// `w = 1 / num_batches_tracked`.
    CumulativeAverage,
}

impl Momentum {
    /// The weight of the new batch statistic at the `num_batches_tracked`-th
    /// update (counted from 1); `None` if the value is out of range.
    pub fn new_stat_weight(&self, num_batches_tracked: i64) -> Option<f64> {
        let w = match *self {
            Momentum::NewStatWeight(w) => w,
            Momentum::OldStatWeight(d) => 1.0 - d,
            Momentum::CumulativeAverage => 1.0 / num_batches_tracked.max(1) as f64,
        };
        (0.0..=1.0).contains(&w).then_some(w)
    }
}

/// Which variance goes into `running_var`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RunningVar {
    /// PyTorch: the unbiased batch variance (divide by m - 1).
    Unbiased,
    /// The chapter's scratch code: the biased variance used to normalize.
    Biased,
}

/// Batch-norm options; defaults are PyTorch's.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchNormConfig {
    /// Added to the variance before the square root (PyTorch's `eps`, 1e-5).
    pub eps: f64,
    /// How the running statistics follow the batch's (PyTorch's
    /// `momentum=0.1` is `Momentum::NewStatWeight(0.1)`).
    pub momentum: Momentum,
    /// Learnable `gamma` (`weight`) and `beta` (`bias`).
    pub affine: bool,
    /// Keep running statistics; without them eval mode uses batch statistics.
    pub track_running_stats: bool,
    /// Which batch variance updates `running_var` (PyTorch: unbiased).
    pub running_var: RunningVar,
    /// Which half of the normalization to apply (the chapter's "lite" BN
    /// exercise); [`BnParts::Full`] is standard batch norm.
    #[serde(default)]
    pub parts: BnParts,
    /// Whether gamma and beta are learned; `false` keeps them at 1 and 0
    /// (saved as buffers, skipped by the optimizer).
    #[serde(default = "yes")]
    pub learn_affine: bool,
}

fn yes() -> bool {
    true
}

/// Which parts of the normalization a batch-norm layer applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BnParts {
    /// `(x - mean) / sqrt(var + eps)`
    #[default]
    Full,
    /// `x - mean` only
    CenterOnly,
    /// `x / sqrt(var + eps)` only (the variance still taken about the mean)
    ScaleOnly,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        Self::pytorch()
    }
}

impl BatchNormConfig {
    /// `nn.BatchNorm2d(C)`: eps 1e-5, momentum 0.1 (new-statistic weight),
    /// affine, running statistics with the unbiased variance.
    pub fn pytorch() -> Self {
        BatchNormConfig {
            eps: 1e-5,
            momentum: Momentum::NewStatWeight(0.1),
            affine: true,
            track_running_stats: true,
            running_var: RunningVar::Unbiased,
            parts: BnParts::Full,
            learn_affine: true,
        }
    }
    /// The chapter's scratch `batch_norm`: as PyTorch, but `moving_var`
    /// follows the biased variance.
    pub fn d2l() -> Self {
        BatchNormConfig { running_var: RunningVar::Biased, ..Self::pytorch() }
    }
    /// Sets [`Self::eps`] (PyTorch's `eps`).
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
    /// Sets [`Self::momentum`], with its convention spelled out.
    pub fn momentum(mut self, momentum: Momentum) -> Self {
        self.momentum = momentum;
        self
    }
    /// Sets [`Self::affine`] (PyTorch's `affine`).
    pub fn affine(mut self, on: bool) -> Self {
        self.affine = on;
        self
    }
    /// Sets [`Self::track_running_stats`] (PyTorch's `track_running_stats`).
    pub fn track_running_stats(mut self, on: bool) -> Self {
        self.track_running_stats = on;
        self
    }
    /// Sets [`Self::parts`] (full, centring-only or scaling-only BN).
    pub fn parts(mut self, parts: BnParts) -> Self {
        self.parts = parts;
        self
    }
    /// Sets [`Self::learn_affine`] (`false`: gamma and beta frozen at 1 and 0).
    pub fn learn_affine(mut self, on: bool) -> Self {
        self.learn_affine = on;
        self
    }
    /// Errors unless eps is positive and finite and the momentum's weight
    /// is in [0, 1] (the error names both momentum conventions).
    pub fn validate(&self) -> Result<()> {
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(Error::config("batch-norm eps", format!("{} must be a positive number", self.eps)));
        }
        if self.momentum.new_stat_weight(1).is_none() {
            return Err(Error::config(
                "batch-norm momentum",
                format!("{:?}: the weight must be in [0, 1] (PyTorch's 0.1 is NewStatWeight(0.1); Keras' 0.99 is OldStatWeight(0.99))", self.momentum),
            ));
        }
        Ok(())
    }
}

/// Which implementation computes the layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BnImpl {
    /// The chapter's hand-written layer (`scratch.rs`): plain nested loops
    /// with f64 sums, on one thread; keeps `x_hat`, a buffer the size of the
    /// input, for the backward pass, and allocates its per-channel sums on
    /// every call.
    Scratch,
    /// The fast one (`fused.rs`): fewer passes over the data, channels (or
    /// images) in parallel on large tensors, nothing the size of the input
    /// kept besides the output; still allocates a few per-channel vectors
    /// on every call.
    Fused,
}

/// What the backward pass needs from the forward pass.
struct Saved<T> {
    /// The statistics' mean, the value subtracted (the mean, or 0 when only
    /// scaling) and the factor applied (`1/sqrt(var + eps)`, or 1 when only
    /// centring), per channel; the mean and the value subtracted carry a
    /// second term, what rounding them lost (`kernels::batch_norm::split_mean`).
    mean: Vec<T>,
    mean_lo: Vec<T>,
    center: Vec<T>,
    center_lo: Vec<T>,
    inv_std: Vec<T>,
    /// Whether the statistics came from the batch (so they depend on x).
    batch_stats: bool,
    /// `x_hat`, kept by the scratch implementation only.
    x_hat: Vec<T>,
    /// The shape of the input these values came from (`[0]` before any
    /// forward pass).
    shape: Vec<usize>,
}

impl<T: Real> Saved<T> {
    /// The view the fused implementation reads.
    fn fused(&self) -> fused::Saved<'_, T> {
        fused::Saved {
            mean: TwoTerm { hi: &self.mean, lo: &self.mean_lo },
            center: TwoTerm { hi: &self.center, lo: &self.center_lo },
            inv_std: &self.inv_std,
        }
    }
}

/// Batch normalization over dimension 1 of an `(N, C, *)` input, as
/// PyTorch's `nn.BatchNorm1d`/`2d`/`3d(C)` (which one follows from the rank
/// at build, see [`Layer::kind`]); the formulas are in the module docs.
pub struct BatchNorm<T: Real = f32> {
    config: BatchNormConfig,
    imp: BnImpl,
    example: Vec<usize>,
    weight: Tensor<T>,
    bias: Tensor<T>,
    weight_grad: Tensor<T>,
    bias_grad: Tensor<T>,
    running_mean: Tensor<T>,
    running_var: Tensor<T>,
    num_batches_tracked: i64,
    saved: Saved<T>,
    y: Tensor<T>,
    dx: Tensor<T>,
}

impl<T: Real> BatchNorm<T> {
    /// A fused batch-norm layer; the number of channels is inferred at build.
    pub fn new(config: BatchNormConfig) -> Self {
        Self::with_impl(config, BnImpl::Fused)
    }
    /// A batch-norm layer computed by `imp`; the number of channels is
    /// inferred at build.
    pub fn with_impl(config: BatchNormConfig, imp: BnImpl) -> Self {
        BatchNorm {
            config,
            imp,
            example: Vec::new(),
            weight: Tensor::default(),
            bias: Tensor::default(),
            weight_grad: Tensor::default(),
            bias_grad: Tensor::default(),
            running_mean: Tensor::default(),
            running_var: Tensor::default(),
            num_batches_tracked: 0,
            saved: Saved {
                mean: Vec::new(),
                mean_lo: Vec::new(),
                center: Vec::new(),
                center_lo: Vec::new(),
                inv_std: Vec::new(),
                batch_stats: false,
                x_hat: Vec::new(),
                shape: vec![0],
            },
            y: Tensor::default(),
            dx: Tensor::default(),
        }
    }
    /// The options the layer was made with.
    pub fn config(&self) -> &BatchNormConfig {
        &self.config
    }
    /// Which implementation computes the layer.
    pub fn implementation(&self) -> BnImpl {
        self.imp
    }
    /// The number of channels C (PyTorch's `num_features`); 0 before build.
    pub fn num_features(&self) -> usize {
        self.example.first().copied().unwrap_or(0)
    }
    /// One example's input shape as built, channels first (`[C]` for
    /// `BatchNorm1d` on `(N, C)`, `[C, H, W]` for `BatchNorm2d`); empty
    /// before build.
    pub fn example_shape(&self) -> &[usize] {
        &self.example
    }
    /// The scale gamma, one per channel (PyTorch's `weight`); `None`
    /// without affine parameters.
    pub fn gamma(&self) -> Option<&Tensor<T>> {
        self.config.affine.then_some(&self.weight)
    }
    /// The shift beta, one per channel (PyTorch's `bias`); `None` without
    /// affine parameters.
    pub fn beta(&self) -> Option<&Tensor<T>> {
        self.config.affine.then_some(&self.bias)
    }
    /// The running mean per channel (PyTorch's `running_mean`); `None`
    /// without running statistics.
    pub fn running_mean(&self) -> Option<&Tensor<T>> {
        self.config.track_running_stats.then_some(&self.running_mean)
    }
    /// The running variance per channel (PyTorch's `running_var`); `None`
    /// without running statistics.
    pub fn running_var(&self) -> Option<&Tensor<T>> {
        self.config.track_running_stats.then_some(&self.running_var)
    }
    /// Training batches counted into the running statistics since build or
    /// the last reset (PyTorch's `num_batches_tracked`).
    pub fn num_batches_tracked(&self) -> i64 {
        self.num_batches_tracked
    }

    /// What this layer computes in eval mode, as one affine map per channel
    /// `y = scale·x + shift`, in f64: `scale = gamma / sqrt(running_var +
    /// eps)` and `shift = beta - scale·running_mean` (for the centring-only
    /// and scaling-only variants, the factor or the mean left out). `None`
    /// when eval mode depends on the batch (no running statistics) or the
    /// layer is not built. Folding and ONNX export use it.
    pub fn eval_affine(&self) -> Option<(Vec<f64>, Vec<f64>)> {
        if !self.config.track_running_stats || self.example.is_empty() {
            return None;
        }
        let c = self.num_features();
        let (mean, var) = (self.running_mean.to_f64_vec(), self.running_var.to_f64_vec());
        let (mut scale, mut shift) = (Vec::with_capacity(c), Vec::with_capacity(c));
        for ch in 0..c {
            let inv_std = match self.config.parts {
                BnParts::CenterOnly => 1.0,
                _ => 1.0 / (var[ch] + self.config.eps).sqrt(),
            };
            let center = match self.config.parts {
                BnParts::ScaleOnly => 0.0,
                _ => mean[ch],
            };
            let s = self.gamma_at(ch).as_f64() * inv_std;
            scale.push(s);
            shift.push(self.beta_at(ch).as_f64() - s * center);
        }
        Some((scale, shift))
    }

    fn gamma_at(&self, ch: usize) -> T {
        if self.config.affine {
            self.weight.data()[ch]
        } else {
            T::one()
        }
    }
    fn beta_at(&self, ch: usize) -> T {
        if self.config.affine {
            self.bias.data()[ch]
        } else {
            T::zero()
        }
    }
    fn set_affine_grads(&mut self, dgamma: &[f64], dbeta: &[f64]) {
        if self.config.affine && self.config.learn_affine {
            for (g, &v) in self.weight_grad.data_mut().iter_mut().zip(dgamma) {
                *g = T::from_f64(v);
            }
            for (g, &v) in self.bias_grad.data_mut().iter_mut().zip(dbeta) {
                *g = T::from_f64(v);
            }
        }
    }

    /// Running mean 0, running variance 1, no batches tracked (PyTorch's
    /// `reset_running_stats`).
    pub fn reset_running_stats(&mut self) {
        if self.config.track_running_stats {
            self.running_mean.fill(T::zero());
            self.running_var.fill(T::one());
            self.num_batches_tracked = 0;
        }
    }

    /// Changes how the running statistics follow the batch's from the
    /// next training batch on (e.g. [`Momentum::CumulativeAverage`] to
    /// recompute them over a whole data set, "precise BN").
    pub fn set_momentum(&mut self, momentum: Momentum) {
        self.config.momentum = momentum;
    }

    fn name(&self) -> String {
        match self.example.len() {
            0..=2 => "BatchNorm1d".into(),
            3 => "BatchNorm2d".into(),
            _ => "BatchNorm3d".into(),
        }
    }

    /// (N, C, S) view of the input, checked.
    fn view(&self, x: &Tensor<T>) -> Result<Ncs> {
        check_built("BatchNorm", !self.example.is_empty())?;
        let c = self.example[0];
        if x.rank() < 2 || x.dim(1) != c || x.rank() != self.example.len() + 1 || x.shape()[2..] != self.example[1..] {
            let hint = if x.rank() >= 2 && x.dim(1) != c {
                format!("expected {c} channels at dimension 1, got {}", x.dim(1))
            } else {
                format!("expected input of rank {} (N, {c}, ...), got shape {:?}", self.example.len() + 1, x.shape())
            };
            return Err(Error::shape(self.name(), format!("{hint}; input shape {:?}", x.shape())));
        }
        Ok(Ncs::of(x.shape()))
    }

    /// The first half of the forward pass: statistics (batch or running),
    /// the running-statistics update in training mode, and the per-channel
    /// values kept for the backward pass; with `write_y`, the fused
    /// implementation may also write the output in the same sweep (returns
    /// the `(N, C, S)` view and whether it did).
    fn prepare_and_maybe_normalize<A: Activation<T>>(
        &mut self,
        x: &Tensor<T>,
        mode: Mode,
        act: A,
    ) -> Result<(Ncs, bool)> {
        self.prepare_using(x, mode, |bn, ncs| {
            let Ncs { c, s, .. } = ncs;
            let one_sweep = bn.imp == BnImpl::Fused && bn.config.parts == BnParts::Full && s > 1;
            match bn.imp {
                BnImpl::Scratch => (scratch::batch_stats(x.data(), ncs), false),
                BnImpl::Fused if one_sweep => {
                    let (gamma, beta) = affine_or_identity(bn.config.affine, &bn.weight, &bn.bias, c);
                    bn.y.resize(x.shape());
                    let y = bn.y.data_mut();
                    let eps = bn.config.eps;
                    let stats = stats_and_normalize(x.data(), y, ncs, (&gamma, &beta), eps, act);
                    (stats, true)
                }
                BnImpl::Fused => (crate::kernels::batch_norm::channel_stats(x.data(), ncs), false),
            }
        })
    }

    /// [`Self::prepare_and_maybe_normalize`] with the batch statistics (mean, biased variance per
    /// channel) computed by `batch_stats`, which may also write the layer's
    /// output while the data is in cache and says whether it did. Called only
    /// when batch statistics are used: in training, or without running ones.
    pub(super) fn prepare_using<F>(&mut self, x: &Tensor<T>, mode: Mode, batch_stats_of: F) -> Result<(Ncs, bool)>
    where
        F: FnOnce(&mut Self, Ncs) -> ((Vec<f64>, Vec<f64>), bool),
    {
        let dims = self.view(x)?;
        let normalized = self.prepare_with_shape(x.shape(), dims, mode, batch_stats_of)?;
        Ok((dims, normalized))
    }

    /// [`Self::prepare_using`] for an input of `shape`, `(n, c, s)` (batch,
    /// channels, values per channel per example), not held as one tensor.
    pub(super) fn prepare_with_shape<F>(
        &mut self,
        shape: &[usize],
        ncs: Ncs,
        mode: Mode,
        batch_stats_of: F,
    ) -> Result<bool>
    where
        F: FnOnce(&mut Self, Ncs) -> ((Vec<f64>, Vec<f64>), bool),
    {
        let Ncs { n, c, s } = ncs;
        let mut normalized = false;
        let batch_stats = mode == Mode::Train || !self.config.track_running_stats;
        let (mean, var): (Vec<f64>, Vec<f64>) = if batch_stats {
            if mode == Mode::Train && n * s <= 1 {
                return Err(Error::shape(
                    self.name(),
                    format!(
                        "expected more than 1 value per channel when training, got input of shape {shape:?}; \
                         train with a batch of 2 or more, or use eval mode for single examples"
                    ),
                ));
            }
            if n * s == 0 {
                return Err(Error::shape(
                    self.name(),
                    format!("batch statistics of an empty input of shape {shape:?}: give it at least one example"),
                ));
            }
            let (stats, wrote) = batch_stats_of(self, ncs);
            normalized = wrote;
            if mode == Mode::Train && self.config.track_running_stats {
                self.update_running_stats(&stats.0, &stats.1, n * s)?;
            }
            stats
        } else {
            (self.running_mean.to_f64_vec(), self.running_var.to_f64_vec())
        };
        let eps = self.config.eps;
        let parts = self.config.parts;
        self.saved.shape = shape.to_vec();
        self.saved.batch_stats = batch_stats;
        let inv_std: Vec<f64> = var
            .iter()
            .map(|&v| match parts {
                BnParts::CenterOnly => 1.0,
                _ => 1.0 / (v + eps).sqrt(),
            })
            .collect();
        // the split stats_and_normalize makes: the same hi and lo
        (self.saved.mean, self.saved.mean_lo) =
            mean.iter().zip(&inv_std).map(|(&m, &is)| split_mean::<T>(m, is)).unzip();
        (self.saved.center, self.saved.center_lo) = match parts {
            BnParts::ScaleOnly => (vec![T::zero(); c], vec![T::zero(); c]),
            _ => (self.saved.mean.clone(), self.saved.mean_lo.clone()),
        };
        self.saved.inv_std = inv_std.iter().map(|&is| T::from_f64(is)).collect();
        Ok(normalized)
    }

    /// The forward pass, with `act` applied to the output (only the fused
    /// implementation takes an activation other than [`Identity`]).
    pub(super) fn forward_with<A: Activation<T>>(&mut self, x: &Tensor<T>, mode: Mode, act: A) -> Result<&Tensor<T>> {
        debug_assert!(A::IDENTITY || self.imp == BnImpl::Fused, "an activation fused into scratch BN");
        let (ncs, normalized) = self.prepare_and_maybe_normalize(x, mode, act)?;
        let Ncs { c, s, .. } = ncs;
        if normalized {
            return Ok(&self.y);
        }
        self.y.resize(x.shape());
        let (gamma, beta) = affine_or_identity(self.config.affine, &self.weight, &self.bias, c);
        match self.imp {
            BnImpl::Scratch => {
                let saved = &mut self.saved;
                let mean = TwoTerm { hi: &saved.mean, lo: &saved.mean_lo };
                let coefs = scratch::Coefs { mean, inv_std: &saved.inv_std, gamma: &gamma, beta: &beta };
                scratch::forward(x.data(), ncs, coefs, &mut saved.x_hat, self.y.data_mut());
            }
            BnImpl::Fused => {
                let sv = &self.saved;
                fused::forward(x.data(), (c, s), &sv.fused(), (&gamma, &beta), act, self.y.data_mut())
            }
        }
        Ok(&self.y)
    }

    /// The backward pass of [`Self::forward_with`] with the same `act`:
    /// `dy` is the gradient at the activation's output.
    pub(super) fn backward_with<A: Activation<T>>(
        &mut self,
        x: &Tensor<T>,
        dy: &Tensor<T>,
        need_dx: bool,
        act: A,
    ) -> Result<&Tensor<T>> {
        let ncs = self.view(x)?;
        let c = ncs.c;
        check_forward_ran(&self.name(), &self.saved.shape, x.shape())?;
        check_grad(&self.name(), dy, x.shape())?;
        let (gamma, beta) = affine_or_identity(self.config.affine, &self.weight, &self.bias, c);
        if need_dx {
            self.dx.resize(x.shape());
        }
        let (dgamma, dbeta) = match self.imp {
            BnImpl::Scratch => {
                let sv = &self.saved;
                let dx = need_dx.then_some(self.dx.data_mut());
                scratch::backward(dy.data(), ncs, &sv.x_hat, &sv.inv_std, sv.batch_stats, &gamma, dx)
            }
            BnImpl::Fused => {
                let sv = &self.saved;
                let dx = need_dx.then_some(self.dx.data_mut());
                let scale = fused::scale(&gamma, &sv.inv_std);
                let affine = Affine { center: sv.fused().center, scale: &scale, shift: &beta };
                fused::backward(
                    (x.data(), dy.data()),
                    ncs,
                    sv.fused(),
                    sv.batch_stats.then_some(self.config.parts),
                    &gamma,
                    Epilogue { affine, act },
                    dx,
                )
            }
        };
        self.set_affine_grads(&dgamma, &dbeta);
        Ok(&self.dx)
    }

    /// `running = (1 - w)·running + w·batch` after one more tracked batch.
    fn update_running_stats(&mut self, mean: &[f64], var: &[f64], count: usize) -> Result<()> {
        self.num_batches_tracked += 1;
        let w = self.config.momentum.new_stat_weight(self.num_batches_tracked).ok_or_else(|| {
            Error::config("batch-norm momentum", format!("{:?} is out of range", self.config.momentum))
        })?;
        let correction = match self.config.running_var {
            RunningVar::Unbiased => count as f64 / (count as f64 - 1.0),
            RunningVar::Biased => 1.0,
        };
        for (r, &m) in self.running_mean.data_mut().iter_mut().zip(mean) {
            *r = T::from_f64((1.0 - w) * r.as_f64() + w * m);
        }
        for (r, &v) in self.running_var.data_mut().iter_mut().zip(var) {
            *r = T::from_f64((1.0 - w) * r.as_f64() + w * v * correction);
        }
        Ok(())
    }
}

impl<T: Real> Layer<T> for BatchNorm<T> {
    fn kind(&self) -> String {
        self.name()
    }

    fn build(&mut self, input: &[usize], _rng: &mut Rng) -> Result<Vec<usize>> {
        self.config.validate()?;
        if self.imp == BnImpl::Scratch && self.config.parts != BnParts::Full {
            return Err(Error::config(
                "batch-norm parts",
                "the scratch implementation is the chapter's full batch norm; use the fused one for centring- or scaling-only BN",
            ));
        }
        if input.is_empty() || input[0] == 0 {
            return Err(Error::shape(
                "BatchNorm",
                format!("expected input (N, C, ...), got one example of shape {input:?}"),
            ));
        }
        self.example = input.to_vec();
        let c = input[0];
        if self.config.affine {
            self.weight = Tensor::full(&[c], T::one());
            self.bias = Tensor::zeros(&[c]);
            self.weight_grad = Tensor::zeros(&[c]);
            self.bias_grad = Tensor::zeros(&[c]);
        }
        if self.config.track_running_stats {
            self.running_mean = Tensor::zeros(&[c]);
            self.running_var = Tensor::full(&[c], T::one());
            self.num_batches_tracked = 0;
        }
        Ok(input.to_vec())
    }

    fn forward(&mut self, x: &Tensor<T>, mode: Mode) -> Result<&Tensor<T>> {
        self.forward_with(x, mode, Identity)
    }

    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        self.backward_with(x, dy, need_dx, Identity)
    }

    fn output(&self) -> &Tensor<T> {
        &self.y
    }
    fn grad_input(&self) -> &Tensor<T> {
        &self.dx
    }

    fn as_batch_norm_mut(&mut self) -> Option<&mut BatchNorm<T>> {
        Some(self)
    }

    fn state_mut(&mut self) -> Vec<(StateName, StateMut<'_, T>)> {
        let mut s = Vec::new();
        if self.config.affine && self.config.learn_affine {
            s.push(("weight".into(), StateMut::Param { value: &mut self.weight, grad: &mut self.weight_grad }));
            s.push(("bias".into(), StateMut::Param { value: &mut self.bias, grad: &mut self.bias_grad }));
        } else if self.config.affine {
            s.push(("weight".into(), StateMut::Buffer(&mut self.weight)));
            s.push(("bias".into(), StateMut::Buffer(&mut self.bias)));
        }
        if self.config.track_running_stats {
            s.push(("running_mean".into(), StateMut::Buffer(&mut self.running_mean)));
            s.push(("running_var".into(), StateMut::Buffer(&mut self.running_var)));
            s.push(("num_batches_tracked".into(), StateMut::Count(&mut self.num_batches_tracked)));
        }
        s
    }
}

/// `(gamma, beta)` per channel, or `(1, 0)` without affine parameters.
fn affine_or_identity<T: Real>(affine: bool, weight: &Tensor<T>, bias: &Tensor<T>, c: usize) -> (Vec<T>, Vec<T>) {
    if affine {
        (weight.data().to_vec(), bias.data().to_vec())
    } else {
        (vec![T::one(); c], vec![T::zero(); c])
    }
}
