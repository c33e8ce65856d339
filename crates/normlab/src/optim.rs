//! Stochastic gradient descent with PyTorch's `torch.optim.SGD` semantics:
//!
//! ```text
//! g = grad + weight_decay · p
//! b = g                              (first step)
//! b = momentum · b + (1 - dampening) · g   (later steps)
//! g = nesterov ? g + momentum · b : b      (when momentum ≠ 0)
//! p = p - lr · g
//! ```
//!
//! Weight decay applies to every parameter, BN's gamma and beta included,
//! as PyTorch does when all parameters are passed as one group.

use crate::layers::StateMut;
use crate::models::Sequential;
use crate::real::Real;
use crate::{Error, Result};

/// The hyperparameters of [`Sgd`], named and defaulted as in
/// `torch.optim.SGD(params, lr, momentum=0, dampening=0, weight_decay=0,
/// nesterov=False)`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SgdConfig {
    /// Learning rate, `lr` (the chapter uses 0.1).
    pub lr: f64,
    /// Momentum factor in `[0, 1)`; 0 is plain SGD.
    pub momentum: f64,
    /// Dampening of the gradient added to the momentum buffer.
    pub dampening: f64,
    /// L2 penalty: `weight_decay · p` added to each gradient.
    pub weight_decay: f64,
    /// Nesterov momentum (needs `momentum > 0` and `dampening == 0`).
    pub nesterov: bool,
}

impl SgdConfig {
    /// Plain SGD with learning rate `lr` and every other setting at PyTorch's default.
    pub fn new(lr: f64) -> Self {
        SgdConfig { lr, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false }
    }
    /// Checks each setting: `lr` finite and > 0, `momentum` in `[0, 1)`,
    /// `weight_decay` finite and >= 0, `nesterov` only with momentum and no
    /// dampening (stricter than PyTorch, which accepts `lr = 0` and momentum
    /// of 1 or more); the error names the setting.
    pub fn validate(&self) -> Result<()> {
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::config(
                "learning rate",
                format!("{} must be a positive number, e.g. --lr 0.1", self.lr),
            ));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::config("momentum", format!("{} must be in [0, 1)", self.momentum)));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::config("weight decay", format!("{} must be >= 0", self.weight_decay)));
        }
        if self.nesterov && (self.momentum == 0.0 || self.dampening != 0.0) {
            return Err(Error::config("nesterov", "needs momentum > 0 and zero dampening"));
        }
        Ok(())
    }
}

/// Stochastic gradient descent over every parameter of a
/// [`Sequential`], with its momentum buffers: `torch.optim.SGD`.
pub struct Sgd<T: Real = f32> {
    /// The hyperparameters; may be changed between steps (a learning-rate schedule).
    pub config: SgdConfig,
    /// One momentum buffer per parameter, in model order; empty until the first step.
    momentum_buffers: Vec<Vec<T>>,
}

impl<T: Real> Sgd<T> {
    /// An optimizer with no momentum buffers yet; fails if
    /// [`SgdConfig::validate`] does.
    pub fn new(config: SgdConfig) -> Result<Self> {
        config.validate()?;
        Ok(Sgd { config, momentum_buffers: Vec::new() })
    }

    /// One update of every parameter of `model` from the gradients its last
    /// backward pass left (`optimizer.step()`); does not clear them.
    pub fn step(&mut self, model: &mut Sequential<T>) {
        let c = self.config;
        let (lr, wd, mom, damp) =
            (T::from_f64(c.lr), T::from_f64(c.weight_decay), T::from_f64(c.momentum), T::from_f64(1.0 - c.dampening));
        let first = self.momentum_buffers.is_empty();
        let mut index = 0;
        for (_, entry) in model.state_mut() {
            let StateMut::Param { value, grad } = entry else {
                continue;
            };
            if c.momentum != 0.0 && first {
                self.momentum_buffers.push(vec![T::zero(); value.numel()]);
            }
            let buf = if c.momentum != 0.0 { Some(&mut self.momentum_buffers[index]) } else { None };
            let (p, g) = (value.data_mut(), grad.data());
            match buf {
                None => {
                    for (p, &g) in p.iter_mut().zip(g) {
                        *p -= lr * (g + wd * *p);
                    }
                }
                Some(b) => {
                    for ((p, &g), b) in p.iter_mut().zip(g).zip(b.iter_mut()) {
                        let g = g + wd * *p;
                        *b = if first { g } else { mom * *b + damp * g };
                        let step = if c.nesterov { g + mom * *b } else { *b };
                        *p -= lr * step;
                    }
                }
            }
            index += 1;
        }
    }

    /// Momentum buffers, for checkpoints.
    pub fn momentum_buffers(&self) -> &[Vec<T>] {
        &self.momentum_buffers
    }
    /// Replaces the momentum buffers (from a checkpoint): one per
    /// parameter in model order, or none to start afresh.
    pub fn set_momentum_buffers(&mut self, buffers: Vec<Vec<T>>) {
        self.momentum_buffers = buffers;
    }
}

/// The hyperparameters of [`AdamW`], named and defaulted as in
/// `torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
/// weight_decay=1e-2)`:
///
/// ```text
/// p = p · (1 - lr · weight_decay)          (decoupled weight decay)
/// m = beta1 · m + (1 - beta1) · g
/// v = beta2 · v + (1 - beta2) · g²
/// p = p - lr / (1 - beta1^t) · m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
/// ```
///
/// with `t` the step, counted from 1 (bias correction).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// Learning rate, `lr`.
    pub lr: f64,
    /// Decay of the running mean of the gradient, `betas[0]`, in `[0, 1)`.
    pub beta1: f64,
    /// Decay of the running mean of the squared gradient, `betas[1]`, in `[0, 1)`.
    pub beta2: f64,
    /// Added to the denominator, `eps` (> 0).
    pub eps: f64,
    /// Decoupled weight decay: each step scales every parameter by `1 - lr · weight_decay`.
    pub weight_decay: f64,
}

/// PyTorch's default betas and eps of `torch.optim.AdamW`.
pub const ADAMW_BETA1: f64 = 0.9;
/// See [`ADAMW_BETA1`].
pub const ADAMW_BETA2: f64 = 0.999;
/// See [`ADAMW_BETA1`].
pub const ADAMW_EPS: f64 = 1e-8;
/// PyTorch's default `weight_decay` of `torch.optim.AdamW` (SGD's is 0).
pub const ADAMW_WEIGHT_DECAY: f64 = 1e-2;

impl AdamWConfig {
    /// AdamW with learning rate `lr` and every other setting at PyTorch's default.
    pub fn new(lr: f64) -> Self {
        AdamWConfig { lr, beta1: ADAMW_BETA1, beta2: ADAMW_BETA2, eps: ADAMW_EPS, weight_decay: ADAMW_WEIGHT_DECAY }
    }

    /// Checks each setting: `lr` finite and > 0, each beta in `[0, 1)`,
    /// `eps` finite and > 0, `weight_decay` finite and >= 0; the error
    /// names the command-line option.
    pub fn validate(&self) -> Result<()> {
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::config(
                "learning rate",
                format!("{} must be a positive number, e.g. --lr 1e-3", self.lr),
            ));
        }
        for (name, beta, example) in [("--beta1", self.beta1, "0.9"), ("--beta2", self.beta2, "0.999")] {
            if !(0.0..1.0).contains(&beta) {
                return Err(Error::config(name, format!("{beta} must be in [0, 1), e.g. {name} {example}")));
            }
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(Error::config("--adam-eps", format!("{} must be a positive number, e.g. 1e-8", self.eps)));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::config("weight decay", format!("{} must be >= 0", self.weight_decay)));
        }
        Ok(())
    }
}

/// AdamW (`torch.optim.AdamW`) over every parameter of a [`Sequential`],
/// with its two running means per parameter and its step count.
pub struct AdamW<T: Real = f32> {
    /// The hyperparameters; `lr` may change between steps (a schedule).
    pub config: AdamWConfig,
    /// Steps taken, `t` of the bias correction.
    steps: u64,
    /// `m`, one per parameter in model order; empty until the first step.
    exp_avg: Vec<Vec<T>>,
    /// `v`, likewise.
    exp_avg_sq: Vec<Vec<T>>,
}

impl<T: Real> AdamW<T> {
    /// An optimizer that has taken no step; fails if
    /// [`AdamWConfig::validate`] does.
    pub fn new(config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        Ok(AdamW { config, steps: 0, exp_avg: Vec::new(), exp_avg_sq: Vec::new() })
    }

    /// One update of every parameter of `model` from the gradients its
    /// last backward pass left (`optimizer.step()`).
    pub fn step(&mut self, model: &mut Sequential<T>) {
        let c = self.config;
        self.steps += 1;
        let t = self.steps.min(i32::MAX as u64) as i32;
        // bias corrections in f64, then the per-element arithmetic in T as
        // PyTorch does it in the parameter's dtype
        let step_size = T::from_f64(c.lr / (1.0 - c.beta1.powi(t)));
        let bias_correction2_sqrt = T::from_f64((1.0 - c.beta2.powi(t)).sqrt());
        let decay = T::from_f64(1.0 - c.lr * c.weight_decay);
        let (b1, one_minus_b1) = (T::from_f64(c.beta1), T::from_f64(1.0 - c.beta1));
        let (b2, one_minus_b2) = (T::from_f64(c.beta2), T::from_f64(1.0 - c.beta2));
        let eps = T::from_f64(c.eps);
        let first = self.exp_avg.is_empty();
        let mut index = 0;
        for (_, entry) in model.state_mut() {
            let StateMut::Param { value, grad } = entry else {
                continue;
            };
            if first {
                self.exp_avg.push(vec![T::zero(); value.numel()]);
                self.exp_avg_sq.push(vec![T::zero(); value.numel()]);
            }
            let (m, v) = (&mut self.exp_avg[index], &mut self.exp_avg_sq[index]);
            for (((p, &g), m), v) in value.data_mut().iter_mut().zip(grad.data()).zip(m.iter_mut()).zip(v.iter_mut()) {
                *p *= decay;
                *m = b1 * *m + one_minus_b1 * g;
                *v = b2 * *v + one_minus_b2 * g * g;
                let denom = v.sqrt() / bias_correction2_sqrt + eps;
                *p -= step_size * *m / denom;
            }
            index += 1;
        }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }
    /// The running means `m` and `v` (PyTorch's `exp_avg`, `exp_avg_sq`),
    /// one per parameter in model order; empty before the first step.
    pub fn moments(&self) -> (&[Vec<T>], &[Vec<T>]) {
        (&self.exp_avg, &self.exp_avg_sq)
    }
    /// Restores the state (from a checkpoint): the step count and both
    /// running means, one per parameter in model order.
    pub fn set_state(&mut self, steps: u64, exp_avg: Vec<Vec<T>>, exp_avg_sq: Vec<Vec<T>>) {
        (self.steps, self.exp_avg, self.exp_avg_sq) = (steps, exp_avg, exp_avg_sq);
    }
}

/// Which optimizer a run uses, with the settings that are its own (the
/// learning rate and weight decay are shared, in [`SgdConfig`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OptimizerKind {
    /// `torch.optim.SGD`.
    #[default]
    Sgd,
    /// `torch.optim.AdamW` with these betas and eps.
    AdamW {
        /// `betas[0]`.
        beta1: f64,
        /// `betas[1]`.
        beta2: f64,
        /// `eps`.
        eps: f64,
    },
}

impl OptimizerKind {
    /// AdamW with PyTorch's betas and eps.
    pub fn adamw() -> Self {
        OptimizerKind::AdamW { beta1: ADAMW_BETA1, beta2: ADAMW_BETA2, eps: ADAMW_EPS }
    }
    /// `sgd` or `adamw`.
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::AdamW { .. } => "adamw",
        }
    }
}

/// An optimizer of either kind, stepped and scheduled the same way.
pub enum Optimizer<T: Real = f32> {
    /// Stochastic gradient descent.
    Sgd(Sgd<T>),
    /// AdamW.
    AdamW(AdamW<T>),
}

impl<T: Real> Optimizer<T> {
    /// The optimizer `kind` with the learning rate, momentum (SGD only) and
    /// weight decay of `shared`; checks them all. AdamW refuses a momentum,
    /// which it does not have.
    pub fn new(kind: OptimizerKind, shared: SgdConfig) -> Result<Self> {
        match kind {
            OptimizerKind::Sgd => Ok(Optimizer::Sgd(Sgd::new(shared)?)),
            OptimizerKind::AdamW { beta1, beta2, eps } => {
                if shared.momentum != 0.0 || shared.nesterov || shared.dampening != 0.0 {
                    return Err(Error::config(
                        "--momentum",
                        "is SGD's; AdamW's momentum is --beta1 (leave --momentum out)",
                    ));
                }
                let config = AdamWConfig { lr: shared.lr, beta1, beta2, eps, weight_decay: shared.weight_decay };
                Ok(Optimizer::AdamW(AdamW::new(config)?))
            }
        }
    }

    /// One update of every parameter of `model`.
    pub fn step(&mut self, model: &mut Sequential<T>) {
        match self {
            Optimizer::Sgd(o) => o.step(model),
            Optimizer::AdamW(o) => o.step(model),
        }
    }

    /// The learning rate of the next step.
    pub fn lr(&self) -> f64 {
        match self {
            Optimizer::Sgd(o) => o.config.lr,
            Optimizer::AdamW(o) => o.config.lr,
        }
    }

    /// Sets the learning rate of the next steps (a schedule's value).
    pub fn set_lr(&mut self, lr: f64) {
        match self {
            Optimizer::Sgd(o) => o.config.lr = lr,
            Optimizer::AdamW(o) => o.config.lr = lr,
        }
    }
}
