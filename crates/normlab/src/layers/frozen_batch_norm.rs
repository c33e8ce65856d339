//! Frozen batch norm, as torchvision's `FrozenBatchNorm2d(C, eps=1e-5)`:
//! a batch norm whose statistics and affine parameters are fixed buffers
//! (typically copied from a trained model, [`FrozenBatchNorm::from_batch_norm`]),
//! so it is the same per-channel affine map in training and prediction, and
//! does not depend on the batch (detection models fine-tune with batches of
//! one or two images this way).
//!
//! ```text
//! scale_c = weight_c / sqrt(running_var_c + eps)
//! shift_c = bias_c - running_mean_c · scale_c
//! y       = scale_c · x + shift_c
//! backward: dx = scale_c · dy; nothing is learned (every entry is a buffer)
//! ```
//!
//! State, as torchvision: `weight`, `bias`, `running_mean`, `running_var`
//! (no `num_batches_tracked`).

use super::{check_built, check_forward_ran, check_grad, BatchNorm, Layer, Mode, StateMut, StateName};
use crate::real::Real;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// A batch norm with fixed statistics and affine parameters, as
/// torchvision's `FrozenBatchNorm2d`; the formulas are in the module docs.
pub struct FrozenBatchNorm<T: Real = f32> {
    eps: f64,
    example: Vec<usize>,
    weight: Tensor<T>,
    bias: Tensor<T>,
    running_mean: Tensor<T>,
    running_var: Tensor<T>,
    /// Values to copy in at build (from a trained batch norm).
    preset: Option<[Vec<f64>; 4]>,
    y: Tensor<T>,
    dx: Tensor<T>,
}

impl<T: Real> Default for FrozenBatchNorm<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Real> FrozenBatchNorm<T> {
    /// `FrozenBatchNorm2d(C)`: weight 1, bias 0, running mean 0, running
    /// variance 1 (C from the input at build), eps 1e-5.
    pub fn new() -> Self {
        FrozenBatchNorm {
            eps: 1e-5,
            example: Vec::new(),
            weight: Tensor::default(),
            bias: Tensor::default(),
            running_mean: Tensor::default(),
            running_var: Tensor::default(),
            preset: None,
            y: Tensor::default(),
            dx: Tensor::default(),
        }
    }
    /// Added to the running variance (torchvision's `eps`, 1e-5).
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
    /// The frozen copy of a built batch norm with running statistics (its
    /// gamma and beta, 1 and 0 without affine parameters); build it for the
    /// same input shape.
    pub fn from_batch_norm(bn: &BatchNorm<T>) -> Result<Self> {
        let (Some(mean), Some(var)) = (bn.running_mean(), bn.running_var()) else {
            return Err(Error::config(
                "frozen batch norm",
                "the batch norm has no running statistics (track_running_stats = false) or is not built: nothing to freeze",
            ));
        };
        let c = bn.num_features();
        let weight = bn.gamma().map_or(vec![1.0; c], |g| g.to_f64_vec());
        let bias = bn.beta().map_or(vec![0.0; c], |b| b.to_f64_vec());
        let mut frozen = Self::new().eps(bn.config().eps);
        frozen.preset = Some([weight, bias, mean.to_f64_vec(), var.to_f64_vec()]);
        Ok(frozen)
    }

    /// The per-channel map `(scale, shift)` it applies, in f64 (folding
    /// uses it); `None` before build.
    pub fn channel_affine(&self) -> Option<(Vec<f64>, Vec<f64>)> {
        let state = [&self.weight, &self.bias, &self.running_mean, &self.running_var];
        super::ghost_batch_norm::eval_affine(&self.example, self.eps, state)
    }
    /// The number of channels; 0 before build.
    pub fn num_features(&self) -> usize {
        self.example.first().copied().unwrap_or(0)
    }
}

impl<T: Real> Layer<T> for FrozenBatchNorm<T> {
    fn kind(&self) -> String {
        "FrozenBatchNorm2d".into()
    }

    fn build(&mut self, input: &[usize], _rng: &mut Rng) -> Result<Vec<usize>> {
        if input.is_empty() || input.contains(&0) {
            return Err(Error::shape(
                "FrozenBatchNorm2d",
                format!("expected input (N, C, ...), got one example of shape {input:?}"),
            ));
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(Error::config("frozen-batch-norm eps", format!("{} must be a positive number", self.eps)));
        }
        let c = input[0];
        self.example = input.to_vec();
        match self.preset.take() {
            Some([w, b, m, v]) => {
                if w.len() != c {
                    return Err(Error::shape(
                        "FrozenBatchNorm2d",
                        format!("the batch norm it was frozen from has {} channels, the input {c}", w.len()),
                    ));
                }
                self.weight = Tensor::from_f64(&[c], &w)?;
                self.bias = Tensor::from_f64(&[c], &b)?;
                self.running_mean = Tensor::from_f64(&[c], &m)?;
                self.running_var = Tensor::from_f64(&[c], &v)?;
            }
            None => {
                self.weight = Tensor::full(&[c], T::one());
                self.bias = Tensor::zeros(&[c]);
                self.running_mean = Tensor::zeros(&[c]);
                self.running_var = Tensor::full(&[c], T::one());
            }
        }
        Ok(input.to_vec())
    }

    fn forward(&mut self, x: &Tensor<T>, _mode: Mode) -> Result<&Tensor<T>> {
        check_built("FrozenBatchNorm2d", !self.example.is_empty())?;
        super::check_input("FrozenBatchNorm2d", x, &self.example)?;
        let (scale, shift) = self.channel_affine().expect("built");
        let (c, s) = (self.example[0], self.example[1..].iter().product::<usize>());
        self.y.resize(x.shape());
        for (r, (yr, xr)) in self.y.data_mut().chunks_mut(s).zip(x.data().chunks(s)).enumerate() {
            let (a, b) = (scale[r % c], shift[r % c]);
            for (o, &v) in yr.iter_mut().zip(xr) {
                *o = T::from_f64(a * v.as_f64() + b);
            }
        }
        Ok(&self.y)
    }

    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        check_built("FrozenBatchNorm2d", !self.example.is_empty())?;
        super::check_input("FrozenBatchNorm2d", x, &self.example)?;
        check_forward_ran("FrozenBatchNorm2d", self.y.shape(), x.shape())?;
        check_grad("FrozenBatchNorm2d", dy, x.shape())?;
        if need_dx {
            let (scale, _) = self.channel_affine().expect("built");
            let (c, s) = (self.example[0], self.example[1..].iter().product::<usize>());
            self.dx.resize(x.shape());
            for (r, (o, g)) in self.dx.data_mut().chunks_mut(s).zip(dy.data().chunks(s)).enumerate() {
                let a = scale[r % c];
                for (o, &g) in o.iter_mut().zip(g) {
                    *o = T::from_f64(a * g.as_f64());
                }
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

    fn state_mut(&mut self) -> Vec<(StateName, StateMut<'_, T>)> {
        vec![
            ("weight".into(), StateMut::Buffer(&mut self.weight)),
            ("bias".into(), StateMut::Buffer(&mut self.bias)),
            ("running_mean".into(), StateMut::Buffer(&mut self.running_mean)),
            ("running_var".into(), StateMut::Buffer(&mut self.running_var)),
        ]
    }
}
