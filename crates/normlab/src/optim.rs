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
