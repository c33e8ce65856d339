//! Layer normalization, as `nn.LayerNorm(normalized_shape, eps=1e-5,
//! elementwise_affine=True)`: each example is normalized over its trailing
//! `normalized_shape` values, with a per-element gamma and beta.
//!
//! Per row r of D = prod(normalized_shape) values:
//!
//! ```text
//! mean_r = (1/D) Σ x      var_r = (1/D) Σ (x - mean_r)²
//! x_hat  = (x - mean_r) / sqrt(var_r + eps),      y = gamma ⊙ x_hat + beta
//! backward, with g = dy ⊙ gamma:
//! dx     = inv_std_r · (g - mean(g) - x_hat · mean(g ⊙ x_hat))
//! dgamma = Σ_rows dy ⊙ x_hat      dbeta = Σ_rows dy
//! ```
//!
//! No running statistics: training and prediction behave the same.

use rayon::prelude::*;

use super::{check_built, Layer, Mode, StateMut, PAR_MIN};
use crate::kernels::batch_norm::lane_sum;
use crate::real::Real;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Which trailing dimensions to normalize over.
#[derive(Clone, Debug)]
enum Normalized {
    Shape(Vec<usize>),
    /// The last k dimensions of whatever comes in (lazy, like the chapter's lazy layers).
    Trailing(usize),
    /// Every non-batch dimension.
    All,
}

pub struct LayerNorm<T: Real = f32> {
    normalized: Normalized,
    eps: f64,
    affine: bool,
    example: Vec<usize>,
    /// Values per row (D).
    row: usize,
    weight: Tensor<T>,
    bias: Tensor<T>,
    weight_grad: Tensor<T>,
    bias_grad: Tensor<T>,
    mean: Vec<T>,
    inv_std: Vec<T>,
    /// Per-block partial dgamma/dbeta.
    partials: Vec<T>,
    y: Tensor<T>,
    dx: Tensor<T>,
}

impl<T: Real> LayerNorm<T> {
    fn with(normalized: Normalized) -> Self {
        LayerNorm {
            normalized,
            eps: 1e-5,
            affine: true,
            example: Vec::new(),
            row: 0,
            weight: Tensor::default(),
            bias: Tensor::default(),
            weight_grad: Tensor::default(),
            bias_grad: Tensor::default(),
            mean: Vec::new(),
            inv_std: Vec::new(),
            partials: Vec::new(),
            y: Tensor::default(),
            dx: Tensor::default(),
        }
    }
    /// `nn.LayerNorm(normalized_shape)`: the input must end in these dimensions.
    pub fn new(normalized_shape: &[usize]) -> Self {
        Self::with(Normalized::Shape(normalized_shape.to_vec()))
    }
    /// Normalize over the last `k` dimensions, sizes taken from the input.
    pub fn trailing(k: usize) -> Self {
        Self::with(Normalized::Trailing(k))
    }
    /// Normalize each example over all its values (sizes from the input).
    pub fn per_example() -> Self {
        Self::with(Normalized::All)
    }
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
    pub fn elementwise_affine(mut self, on: bool) -> Self {
        self.affine = on;
        self
    }
}

/// Mean and `1/sqrt(var + eps)` of one row, in f64.
fn row_stats<T: Real>(x: &[T], eps: f64) -> (T, T) {
    let d = x.len() as f64;
    let mean = lane_sum(x, x, |v, _| v) / d;
    let var = lane_sum(x, x, |v, _| (v - mean) * (v - mean)) / d;
    (T::from_f64(mean), T::from_f64(1.0 / (var + eps).sqrt()))
}

/// Rows per partial sum of dgamma/dbeta: a fixed split, so the sums do not
/// depend on the number of threads.
const ROWS_PER_PARTIAL: usize = 64;

impl<T: Real> Layer<T> for LayerNorm<T> {
    fn kind(&self) -> String {
        "LayerNorm".into()
    }

    fn build(&mut self, input: &[usize], _rng: &mut Rng) -> Result<Vec<usize>> {
        let shape = match &self.normalized {
            Normalized::Shape(s) => s.clone(),
            Normalized::Trailing(k) if *k <= input.len() && *k > 0 => input[input.len() - k..].to_vec(),
            Normalized::Trailing(k) => {
                return Err(Error::shape(
                    "LayerNorm",
                    format!("cannot normalize over the last {k} dimensions of {input:?}"),
                ))
            }
            Normalized::All => input.to_vec(),
        };
        if shape.is_empty() || shape.len() > input.len() || input[input.len() - shape.len()..] != shape[..] {
            return Err(Error::shape(
                "LayerNorm",
                format!("normalized_shape {shape:?} must be the trailing dimensions of the input, got one example of shape {input:?}"),
            ));
        }
        if !(self.eps > 0.0) {
            return Err(Error::config("layer-norm eps", "must be positive"));
        }
        self.normalized = Normalized::Shape(shape.clone());
        self.example = input.to_vec();
        self.row = shape.iter().product();
        if self.affine {
            self.weight = Tensor::full(&shape, T::one());
            self.bias = Tensor::zeros(&shape);
            self.weight_grad = Tensor::zeros(&shape);
            self.bias_grad = Tensor::zeros(&shape);
        }
        Ok(input.to_vec())
    }

    fn forward(&mut self, x: &Tensor<T>, _mode: Mode) -> Result<&Tensor<T>> {
        check_built("LayerNorm", self.row > 0)?;
        super::check_input("LayerNorm", x, &self.example)?;
        let d = self.row;
        let rows = x.numel() / d;
        self.y.resize(x.shape());
        self.mean.resize(rows, T::zero());
        self.inv_std.resize(rows, T::zero());
        let (eps, affine) = (self.eps, self.affine);
        let (gamma, beta) = (self.weight.data(), self.bias.data());
        let body = |((yr, xr), (mu, is)): ((&mut [T], &[T]), (&mut T, &mut T))| {
            let (m, i) = row_stats(xr, eps);
            *mu = m;
            *is = i;
            // zipped iterators, not indices: no bounds checks, so the loop vectorizes
            if affine {
                for (((y, &v), &g), &b) in yr.iter_mut().zip(xr).zip(gamma).zip(beta) {
                    *y = g * ((v - m) * i) + b;
                }
            } else {
                for (y, &v) in yr.iter_mut().zip(xr) {
                    *y = (v - m) * i;
                }
            }
        };
        let (y, mean, inv_std) = (self.y.data_mut(), &mut self.mean, &mut self.inv_std);
        if x.numel() >= PAR_MIN {
            y.par_chunks_mut(d)
                .zip(x.data().par_chunks(d))
                .zip(mean.par_iter_mut().zip(inv_std.par_iter_mut()))
                .for_each(body);
        } else {
            y.chunks_mut(d).zip(x.data().chunks(d)).zip(mean.iter_mut().zip(inv_std.iter_mut())).for_each(body);
        }
        Ok(&self.y)
    }

    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        let d = self.row;
        if dy.shape() != x.shape() {
            return Err(Error::shape(
                "LayerNorm",
                format!("gradient shape {:?} differs from input {:?}", dy.shape(), x.shape()),
            ));
        }
        let (mean, inv_std) = (&self.mean, &self.inv_std);
        if self.affine {
            // partial sums over fixed blocks of rows (in parallel), then the
            // blocks in order: the same result for any thread count
            let blocks = (x.numel() / d).div_ceil(ROWS_PER_PARTIAL);
            self.partials.resize(blocks * 2 * d, T::zero());
            let block = |(bi, part): (usize, &mut [T])| {
                let (pg, pb) = part.split_at_mut(d);
                pg.fill(T::zero());
                pb.fill(T::zero());
                let rows = bi * ROWS_PER_PARTIAL..((bi + 1) * ROWS_PER_PARTIAL).min(mean.len());
                for r in rows {
                    let (xr, gr) = (&x.data()[r * d..(r + 1) * d], &dy.data()[r * d..(r + 1) * d]);
                    let (m, is) = (mean[r], inv_std[r]);
                    for (((g, b), &dyv), &v) in pg.iter_mut().zip(pb.iter_mut()).zip(gr).zip(xr) {
                        *g += dyv * ((v - m) * is);
                        *b += dyv;
                    }
                }
            };
            if x.numel() >= PAR_MIN {
                self.partials.par_chunks_mut(2 * d).enumerate().for_each(block);
            } else {
                self.partials.chunks_mut(2 * d).enumerate().for_each(block);
            }
            let (dg, db) = (self.weight_grad.data_mut(), self.bias_grad.data_mut());
            dg.fill(T::zero());
            db.fill(T::zero());
            for part in self.partials.chunks(2 * d) {
                let (pg, pb) = part.split_at(d);
                for (g, &v) in dg.iter_mut().zip(pg) {
                    *g += v;
                }
                for (b, &v) in db.iter_mut().zip(pb) {
                    *b += v;
                }
            }
        }
        if need_dx {
            self.dx.resize(x.shape());
            let (affine, gamma) = (self.affine, self.weight.data());
            let body = |(r, (dxr, (xr, gr))): (usize, (&mut [T], (&[T], &[T])))| {
                let (m, is) = (mean[r], inv_std[r]);
                // g = dy·gamma, kept in dx's row while the sums are taken
                if affine {
                    for ((o, &g), &w) in dxr.iter_mut().zip(gr).zip(gamma) {
                        *o = g * w;
                    }
                } else {
                    dxr.copy_from_slice(gr);
                }
                let (mf, isf) = (m.as_f64(), is.as_f64());
                let sg = lane_sum(dxr, dxr, |g, _| g);
                let sgx = lane_sum(dxr, xr, |g, v| g * (v - mf) * isf);
                let (mg, mgx) = (T::from_f64(sg / d as f64), T::from_f64(sgx / d as f64));
                for (o, &v) in dxr.iter_mut().zip(xr) {
                    *o = is * (*o - mg - (v - m) * is * mgx);
                }
            };
            let dxd = self.dx.data_mut();
            if x.numel() >= PAR_MIN {
                dxd.par_chunks_mut(d)
                    .zip(x.data().par_chunks(d).zip(dy.data().par_chunks(d)))
                    .enumerate()
                    .for_each(body);
            } else {
                dxd.chunks_mut(d).zip(x.data().chunks(d).zip(dy.data().chunks(d))).enumerate().for_each(body);
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

    fn state_mut(&mut self) -> Vec<(&'static str, StateMut<'_, T>)> {
        if !self.affine {
            return Vec::new();
        }
        vec![
            ("weight", StateMut::Param { value: &mut self.weight, grad: &mut self.weight_grad }),
            ("bias", StateMut::Param { value: &mut self.bias, grad: &mut self.bias_grad }),
        ]
    }
}
