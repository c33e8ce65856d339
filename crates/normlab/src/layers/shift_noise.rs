//! Santurkar et al. (2018), "How Does Batch Normalization Help
//! Optimization?", Algorithm 1: noise that changes the distribution of each
//! unit's activations at every training step, put after a BN layer to add
//! "internal covariate shift" on purpose.
//!
//! Training, for an input of shape (N, C) or (N, C, H, W), with fresh draws
//! at every forward:
//!
//! ```text
//! per unit c (feature, or channel):      mu_c ~ U(-0.5, 0.5),  sigma_c ~ U(1, 1.25)
//! per element (n, c[, h, w]):            m ~ U(mu_c - 0.1, mu_c + 0.1),  s ~ N(sigma_c, 0.1²)
//! y = s · x + m
//! ```
//!
//! (for convolutions, height and width count as batch: each position of
//! each example gets its own `m` and `s`). Backward: `dx = s · dy`; the
//! layer has no parameters. Evaluation: `y = x` (the noise perturbs
//! training only).

use rand::Rng as _;

use super::{check_forward_ran, check_grad, Layer, Mode};
use crate::real::Real;
use crate::rng::{self, Rng};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Algorithm 1's range of a unit's mean shift: `mu ~ U(-MU, MU)`.
pub const MU: f64 = 0.5;
/// Algorithm 1's range of a unit's mean scale: `sigma ~ U(SIGMA_LO, SIGMA_HI)`.
pub const SIGMA_LO: f64 = 1.0;
/// See [`SIGMA_LO`].
pub const SIGMA_HI: f64 = 1.25;
/// Half-width of the per-element shift's uniform range around `mu`.
pub const SHIFT_SPREAD: f64 = 0.1;
/// Standard deviation of the per-element scale around `sigma`.
pub const SCALE_STD: f64 = 0.1;

/// One draw of N(0, 1) by Box-Muller (the cosine branch).
pub fn standard_normal(rng: &mut Rng) -> f64 {
    let u: f64 = rng.gen_range(f64::EPSILON..1.0);
    let v: f64 = rng.gen();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// Santurkar et al.'s Algorithm 1 noise, the identity in evaluation mode.
pub struct ShiftNoise<T: Real = f32> {
    rng: Rng,
    /// Units (features or channels) and, for (N, C, H, W) inputs, H·W.
    channels: usize,
    spatial: usize,
    /// The per-element scales `s` of the last training forward (ones in eval).
    scale: Vec<T>,
    y: Tensor<T>,
    dx: Tensor<T>,
}

impl<T: Real> Default for ShiftNoise<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Real> ShiftNoise<T> {
    /// A noise layer; its random stream is forked from the model's at build.
    pub fn new() -> Self {
        ShiftNoise {
            rng: rng::seeded(0),
            channels: 0,
            spatial: 0,
            scale: Vec::new(),
            y: Tensor::default(),
            dx: Tensor::default(),
        }
    }
}

impl<T: Real> Layer<T> for ShiftNoise<T> {
    fn kind(&self) -> String {
        "ShiftNoise".into()
    }
    fn rng_mut(&mut self) -> Option<&mut Rng> {
        Some(&mut self.rng)
    }
    fn build(&mut self, input: &[usize], rng: &mut Rng) -> Result<Vec<usize>> {
        match input {
            [c] => (self.channels, self.spatial) = (*c, 1),
            [c, h, w] => (self.channels, self.spatial) = (*c, h * w),
            _ => {
                return Err(Error::shape(
                    "ShiftNoise",
                    format!("one example of shape {input:?}: expected (C) or (C, H, W)"),
                ))
            }
        }
        self.rng = rng::fork(rng);
        Ok(input.to_vec())
    }
    fn forward(&mut self, x: &Tensor<T>, mode: Mode) -> Result<&Tensor<T>> {
        let n = x.shape().first().copied().unwrap_or(0);
        if self.channels == 0
            || x.rank() < 2
            || x.dim(1) != self.channels
            || x.numel() != n * self.channels * self.spatial
        {
            return Err(Error::shape(
                "ShiftNoise",
                format!("input of shape {:?} does not match the built {} units", x.shape(), self.channels),
            ));
        }
        self.y.resize(x.shape());
        self.scale.resize(x.numel(), T::one());
        if mode == Mode::Eval {
            self.scale.iter_mut().for_each(|s| *s = T::one());
            self.y.data_mut().copy_from_slice(x.data());
            return Ok(&self.y);
        }
        let units: Vec<(f64, f64)> =
            (0..self.channels).map(|_| (self.rng.gen_range(-MU..MU), self.rng.gen_range(SIGMA_LO..SIGMA_HI))).collect();
        let per_example = self.channels * self.spatial;
        for (i, ((y, &x), s)) in self.y.data_mut().iter_mut().zip(x.data()).zip(self.scale.iter_mut()).enumerate() {
            let (mu, sigma) = units[(i % per_example) / self.spatial];
            let m = self.rng.gen_range(mu - SHIFT_SPREAD..mu + SHIFT_SPREAD);
            let scale = sigma + SCALE_STD * standard_normal(&mut self.rng);
            *s = T::from_f64(scale);
            *y = T::from_f64(scale * x.as_f64() + m);
        }
        Ok(&self.y)
    }
    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        check_forward_ran("ShiftNoise", self.y.shape(), x.shape())?;
        check_grad("ShiftNoise", dy, x.shape())?;
        if need_dx {
            self.dx.resize(dy.shape());
            for ((dx, &dy), &s) in self.dx.data_mut().iter_mut().zip(dy.data()).zip(&self.scale) {
                *dx = dy * s;
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
