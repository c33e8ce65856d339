//! Root-mean-square normalization (Zhang & Sennrich, 2019), as
//! `nn.RMSNorm(normalized_shape, eps=None, elementwise_affine=True)`: each
//! example is scaled by the root mean square of its trailing values, with
//! no centring and no shift.
//!
//! Per row r of D = prod(normalized_shape) values:
//!
//! ```text
//! ms_r  = (1/D) Σ x²          inv_r = 1 / sqrt(ms_r + eps)
//! x_hat = x · inv_r,          y = gamma ⊙ x_hat
//! backward, with g = dy ⊙ gamma:
//! dx     = inv_r · (g - x_hat · mean(g ⊙ x_hat))
//! dgamma = Σ_rows dy ⊙ x_hat
//! ```
//!
//! PyTorch's `eps=None` means the machine epsilon of the input's type
//! (`torch.finfo(x.dtype).eps`: 2^-23 for f32, 2^-52 for f64); that is the
//! default here too. No running statistics: training and prediction behave
//! the same.

use rayon::prelude::*;

use super::{check_built, check_forward_ran, check_grad, Layer, Mode, StateMut, StateName, PAR_MIN};
use crate::kernels::stats::row_mean_var;
use crate::real::Real;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// RMS normalization over an example's last `k` dimensions (all of them by
/// default), as `nn.RMSNorm`; the formulas are in the module docs.
pub struct RmsNorm<T: Real = f32> {
    /// Trailing dimensions normalized together; `None`: all of one example's.
    dims: Option<usize>,
    /// `None`: the machine epsilon of `T`, as PyTorch's `eps=None`.
    eps: Option<f64>,
    affine: bool,
    example: Vec<usize>,
    /// Values per row (D).
    row: usize,
    weight: Tensor<T>,
    weight_grad: Tensor<T>,
    /// `1/sqrt(ms + eps)` per row, from the last forward.
    inv_rms: Vec<f64>,
    y: Tensor<T>,
    dx: Tensor<T>,
}

impl<T: Real> RmsNorm<T> {
    fn with(dims: Option<usize>) -> Self {
        RmsNorm {
            dims,
            eps: None,
            affine: true,
            example: Vec::new(),
            row: 0,
            weight: Tensor::default(),
            weight_grad: Tensor::default(),
            inv_rms: Vec::new(),
            y: Tensor::default(),
            dx: Tensor::default(),
        }
    }
    /// Normalize over the last `k` dimensions of one example (PyTorch's
    /// `normalized_shape` is those sizes, taken from the input at build).
    pub fn trailing(k: usize) -> Self {
        Self::with(Some(k))
    }
    /// Normalize each example over all its values.
    pub fn per_example() -> Self {
        Self::with(None)
    }
    /// Added to the mean square (PyTorch's `eps`); `None` (the default):
    /// the machine epsilon of the element type.
    pub fn eps(mut self, eps: Option<f64>) -> Self {
        self.eps = eps;
        self
    }
    /// A learned per-element scale gamma (PyTorch's `elementwise_affine`, on).
    pub fn elementwise_affine(mut self, on: bool) -> Self {
        self.affine = on;
        self
    }
    /// The eps in use: the given one, or the machine epsilon of `T`.
    pub fn epsilon(&self) -> f64 {
        self.eps.unwrap_or_else(machine_eps::<T>)
    }
}

/// `torch.finfo(dtype).eps`: 2^-23 for f32, 2^-52 for f64.
fn machine_eps<T: Real>() -> f64 {
    if T::DTYPE_NAME == "F32" {
        f32::EPSILON as f64
    } else {
        f64::EPSILON
    }
}

impl<T: Real> Layer<T> for RmsNorm<T> {
    fn kind(&self) -> String {
        "RMSNorm".into()
    }

    fn build(&mut self, input: &[usize], _rng: &mut Rng) -> Result<Vec<usize>> {
        let k = self.dims.unwrap_or(input.len());
        if k == 0 || k > input.len() {
            return Err(Error::shape(
                "RMSNorm",
                format!("cannot normalize over the last {k} dimensions of one example of shape {input:?}"),
            ));
        }
        let eps = self.epsilon();
        if !(eps > 0.0 && eps.is_finite()) {
            return Err(Error::config("rms-norm eps", format!("{eps} must be a positive number")));
        }
        let shape = input[input.len() - k..].to_vec();
        self.row = shape.iter().product();
        if self.row == 0 {
            return Err(Error::shape("RMSNorm", format!("normalized shape {shape:?} has no values")));
        }
        self.example = input.to_vec();
        if self.affine {
            self.weight = Tensor::full(&shape, T::one());
            self.weight_grad = Tensor::zeros(&shape);
        }
        Ok(input.to_vec())
    }

    fn forward(&mut self, x: &Tensor<T>, _mode: Mode) -> Result<&Tensor<T>> {
        check_built("RMSNorm", self.row > 0)?;
        super::check_input("RMSNorm", x, &self.example)?;
        let d = self.row;
        let eps = self.epsilon();
        self.y.resize(x.shape());
        self.inv_rms.resize(x.numel() / d, 0.0);
        let (affine, gamma) = (self.affine, self.weight.data());
        let body = |((yr, xr), inv): ((&mut [T], &[T]), &mut f64)| {
            // mean square = var + mean², both from the shared one-pass sums
            let (mean, var) = row_mean_var(xr);
            *inv = 1.0 / (var + mean * mean + eps).sqrt();
            let i = T::from_f64(*inv);
            for (k, (y, &v)) in yr.iter_mut().zip(xr).enumerate() {
                *y = if affine { gamma[k] * (v * i) } else { v * i };
            }
        };
        let (y, inv_rms) = (self.y.data_mut(), &mut self.inv_rms);
        if x.numel() >= PAR_MIN {
            y.par_chunks_mut(d).zip(x.data().par_chunks(d)).zip(inv_rms.par_iter_mut()).for_each(body);
        } else {
            y.chunks_mut(d).zip(x.data().chunks(d)).zip(inv_rms.iter_mut()).for_each(body);
        }
        Ok(&self.y)
    }

    #[allow(clippy::type_complexity)] // the zipped chunk iterators
    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        check_built("RMSNorm", self.row > 0)?;
        super::check_input("RMSNorm", x, &self.example)?;
        check_forward_ran("RMSNorm", self.y.shape(), x.shape())?;
        check_grad("RMSNorm", dy, x.shape())?;
        let d = self.row;
        let inv_rms = &self.inv_rms;
        if self.affine {
            // rows in order, in f64: the same sums for any thread count
            let mut dg = vec![0.0f64; d];
            for ((xr, gr), &inv) in x.data().chunks(d).zip(dy.data().chunks(d)).zip(inv_rms) {
                for ((s, &v), &g) in dg.iter_mut().zip(xr).zip(gr) {
                    *s += g.as_f64() * v.as_f64() * inv;
                }
            }
            for (w, s) in self.weight_grad.data_mut().iter_mut().zip(dg) {
                *w = T::from_f64(s);
            }
        }
        if need_dx {
            self.dx.resize(x.shape());
            let (affine, gamma) = (self.affine, self.weight.data());
            let body = |((dxr, (xr, gr)), &inv): ((&mut [T], (&[T], &[T])), &f64)| {
                let g = |k: usize, v: T| if affine { (v * gamma[k]).as_f64() } else { v.as_f64() };
                let sgx: f64 = xr.iter().zip(gr).enumerate().map(|(k, (&v, &dv))| g(k, dv) * v.as_f64() * inv).sum();
                let mgx = sgx / d as f64;
                for (k, ((o, &v), &dv)) in dxr.iter_mut().zip(xr).zip(gr).enumerate() {
                    *o = T::from_f64(inv * (g(k, dv) - v.as_f64() * inv * mgx));
                }
            };
            let dxd = self.dx.data_mut();
            if x.numel() >= PAR_MIN {
                dxd.par_chunks_mut(d)
                    .zip(x.data().par_chunks(d).zip(dy.data().par_chunks(d)))
                    .zip(inv_rms.par_iter())
                    .for_each(body);
            } else {
                dxd.chunks_mut(d).zip(x.data().chunks(d).zip(dy.data().chunks(d))).zip(inv_rms.iter()).for_each(body);
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
        if !self.affine {
            return Vec::new();
        }
        vec![("weight".into(), StateMut::Param { value: &mut self.weight, grad: &mut self.weight_grad })]
    }
}
