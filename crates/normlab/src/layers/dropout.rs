//! Inverted dropout, as `nn.Dropout(p)`.
//!
//! Training: `y = x · mask / (1 - p)` with `mask ~ Bernoulli(1 - p)`;
//! backward `dx = dy · mask / (1 - p)`. Evaluation: `y = x`.

use rand::Rng as _;

use super::{check_forward_ran, check_grad, Layer, Mode};
use crate::real::Real;
use crate::rng::{self, Rng};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Inverted dropout, as `nn.Dropout(p)`: zeroes each element with
/// probability `p` in training mode and scales the rest by `1/(1 - p)`;
/// the identity in evaluation mode.
pub struct Dropout<T: Real = f32> {
    p: f64,
    rng: Rng,
    /// `mask / (1 - p)` from the last training forward; all ones in eval.
    scaled_mask: Vec<T>,
    y: Tensor<T>,
    dx: Tensor<T>,
}

impl<T: Real> Dropout<T> {
    /// `p` is the probability of zeroing an element, as in PyTorch.
    pub fn new(p: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::config("dropout p", format!("{p} is not in [0, 1)")));
        }
        Ok(Dropout { p, rng: rng::seeded(0), scaled_mask: Vec::new(), y: Tensor::default(), dx: Tensor::default() })
    }
}

impl<T: Real> Layer<T> for Dropout<T> {
    fn kind(&self) -> String {
        "Dropout".into()
    }
    fn rng_mut(&mut self) -> Option<&mut Rng> {
        Some(&mut self.rng)
    }
    fn build(&mut self, input: &[usize], rng: &mut Rng) -> Result<Vec<usize>> {
        self.rng = rng::fork(rng);
        Ok(input.to_vec())
    }
    fn forward(&mut self, x: &Tensor<T>, mode: Mode) -> Result<&Tensor<T>> {
        self.y.resize(x.shape());
        self.scaled_mask.resize(x.numel(), T::one());
        if mode == Mode::Train && self.p > 0.0 {
            let keep = T::from_f64(1.0 / (1.0 - self.p));
            for m in self.scaled_mask.iter_mut() {
                *m = if self.rng.gen::<f64>() < self.p { T::zero() } else { keep };
            }
        } else {
            self.scaled_mask.iter_mut().for_each(|m| *m = T::one());
        }
        for ((y, &x), &m) in self.y.data_mut().iter_mut().zip(x.data()).zip(&self.scaled_mask) {
            *y = x * m;
        }
        Ok(&self.y)
    }
    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        check_forward_ran("Dropout", self.y.shape(), x.shape())?;
        check_grad("Dropout", dy, x.shape())?;
        if need_dx {
            self.dx.resize(dy.shape());
            for ((dx, &dy), &m) in self.dx.data_mut().iter_mut().zip(dy.data()).zip(&self.scaled_mask) {
                *dx = dy * m;
            }
        }
        Ok(&self.dx)
    }
    fn output(&self) -> &Tensor<T> {
        &self.y
    }
    fn grad_input(&self) -> &Tensor<T> {
        &self.dx
    }
}
