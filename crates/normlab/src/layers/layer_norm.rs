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

use super::{check_built, check_forward_ran, check_grad, Layer, Mode, StateMut, StateName, PAR_MIN};
use crate::kernels::lanes::{sums2, F64x8};
use crate::kernels::stats::row_mean_var;
use crate::kernels::stream::{self, MapF32};
use crate::real::{as_f32, as_f32_mut, Real};
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

/// Layer normalization, as `nn.LayerNorm(normalized_shape)`: each example
/// normalized over its trailing dimensions; the formulas are in the module
/// docs.
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
    /// Added to the variance before the square root (PyTorch's `eps`, 1e-5).
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
    /// Whether gamma and beta, one per normalized element, are learned
    /// (PyTorch's `elementwise_affine`, on by default).
    pub fn elementwise_affine(mut self, on: bool) -> Self {
        self.affine = on;
        self
    }
    /// PyTorch's `eps`.
    pub fn epsilon(&self) -> f64 {
        self.eps
    }
    /// How many trailing dimensions of one example are normalized together
    /// (PyTorch's `len(normalized_shape)`); 0 before build.
    pub fn normalized_dims(&self) -> usize {
        match &self.normalized {
            Normalized::Shape(s) if !self.example.is_empty() => s.len(),
            _ => 0,
        }
    }
    /// `gamma` and `beta`, shaped as the normalized dimensions (PyTorch's
    /// `weight` and `bias`); `None` without elementwise affine parameters.
    pub fn affine_params(&self) -> Option<(&Tensor<T>, &Tensor<T>)> {
        self.affine.then_some((&self.weight, &self.bias))
    }
}

/// Mean and `1/sqrt(var + eps)` of one row, in f64, in one pass shifted
/// by the row's first value ([`crate::kernels::stats`]): one pass with four
/// accumulator registers instead of two passes with two was 1.2x faster
/// forward at (4096, 768), 2 threads.
fn row_stats<T: Real>(x: &[T], eps: f64) -> (T, T) {
    let (mean, var) = row_mean_var(x);
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
        if self.eps.is_nan() || self.eps <= 0.0 {
            return Err(Error::config("layer-norm eps", "must be positive"));
        }
        if shape.contains(&0) {
            return Err(Error::shape("LayerNorm", format!("normalized_shape {shape:?} has no values")));
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

    #[allow(clippy::type_complexity)] // the zipped chunk iterators
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
        let stream = affine && stream::applies::<T>(std::mem::size_of_val(x.data()));
        let body = |((yr, xr), (mu, is)): ((&mut [T], &[T]), (&mut T, &mut T))| {
            let (m, i) = row_stats(xr, eps);
            *mu = m;
            *is = i;
            let (m32, i32) = (m.as_f64() as f32, i.as_f64() as f32);
            if stream && stream::layer_norm_row(as_f32(xr), as_f32(gamma), as_f32(beta), as_f32_mut(yr), (m32, i32)) {
                return;
            }
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
            // tasks of many rows: one row per task spends more on scheduling than on the row
            let k = ROWS_PER_PARTIAL;
            y.par_chunks_mut(k * d)
                .zip(x.data().par_chunks(k * d))
                .zip(mean.par_chunks_mut(k).zip(inv_std.par_chunks_mut(k)))
                .for_each(|((ys, xs), (ms, is))| {
                    ys.chunks_mut(d).zip(xs.chunks(d)).zip(ms.iter_mut().zip(is.iter_mut())).for_each(body);
                    stream::fence(stream);
                });
        } else {
            y.chunks_mut(d).zip(x.data().chunks(d)).zip(mean.iter_mut().zip(inv_std.iter_mut())).for_each(body);
        }
        Ok(&self.y)
    }

    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        check_built("LayerNorm", self.row > 0)?;
        super::check_input("LayerNorm", x, &self.example)?;
        // the rows' statistics come from the forward pass
        check_forward_ran("LayerNorm", self.y.shape(), x.shape())?;
        check_grad("LayerNorm", dy, x.shape())?;
        let d = self.row;
        let (mean, inv_std) = (&self.mean, &self.inv_std);
        let rows = x.numel() / d;
        let (affine, gamma) = (self.affine, self.weight.data());
        // One sweep over x and dy: each fixed block of rows adds its rows to
        // its own partial dgamma/dbeta (summed in block order afterwards: the
        // same result for any thread count) and writes their dx while the
        // rows are in cache.
        let blocks = rows.div_ceil(ROWS_PER_PARTIAL);
        self.partials.resize(if affine { blocks * 2 * d } else { 0 }, T::zero());
        if need_dx {
            self.dx.resize(x.shape());
        }
        let stream = need_dx && stream::applies::<T>(std::mem::size_of_val(x.data()));
        let block = |bi: usize, part: &mut [T], dx_block: &mut [T]| {
            let first = bi * ROWS_PER_PARTIAL;
            if affine {
                part.fill(T::zero());
            }
            let mut g_row = vec![T::zero(); if stream { d } else { 0 }];
            for r in first..(first + ROWS_PER_PARTIAL).min(rows) {
                let (xr, gr) = (&x.data()[r * d..(r + 1) * d], &dy.data()[r * d..(r + 1) * d]);
                let (m, is) = (mean[r], inv_std[r]);
                if affine {
                    let (pg, pb) = part.split_at_mut(d);
                    for (((g, b), &dyv), &v) in pg.iter_mut().zip(pb.iter_mut()).zip(gr).zip(xr) {
                        *g += dyv * ((v - m) * is);
                        *b += dyv;
                    }
                }
                if need_dx {
                    let dxr = &mut dx_block[(r - first) * d..][..d];
                    // g = dy·gamma, in dx's row while the sums are taken (in a
                    // scratch row when dx is stored streaming)
                    let target: &mut [T] = if stream { &mut g_row } else { &mut *dxr };
                    if affine {
                        for ((o, &g), &w) in target.iter_mut().zip(gr).zip(gamma) {
                            *o = g * w;
                        }
                    } else {
                        target.copy_from_slice(gr);
                    }
                    let g: &[T] = if stream { &g_row } else { &*dxr };
                    let (mf, isf) = (F64x8::splat(m.as_f64()), F64x8::splat(is.as_f64()));
                    let (sg, sgx) = sums2(g, xr, |g, v| (g, g * (v - mf) * isf));
                    let (mg, mgx) = (T::from_f64(sg / d as f64), T::from_f64(sgx / d as f64));
                    if stream {
                        let coef = (m, is, mg, mgx).map_f32();
                        if stream::layer_norm_gradient(as_f32(xr), as_f32(&g_row), as_f32_mut(dxr), coef) {
                            continue;
                        }
                        dxr.copy_from_slice(&g_row);
                    }
                    for (o, &v) in dxr.iter_mut().zip(xr) {
                        *o = is * (*o - mg - (v - m) * is * mgx);
                    }
                }
            }
            stream::fence(stream);
        };
        // one (partial, dx rows) pair of slices per block; empty where not wanted
        let partials: Vec<&mut [T]> =
            if affine { self.partials.chunks_mut(2 * d).collect() } else { (0..blocks).map(|_| &mut [][..]).collect() };
        let dx_blocks: Vec<&mut [T]> = if need_dx {
            self.dx.data_mut().chunks_mut(ROWS_PER_PARTIAL * d).collect()
        } else {
            (0..blocks).map(|_| &mut [][..]).collect()
        };
        let work = |(bi, (part, dx_block)): (usize, (&mut [T], &mut [T]))| block(bi, part, dx_block);
        if x.numel() >= PAR_MIN {
            partials.into_par_iter().zip(dx_blocks).enumerate().for_each(work);
        } else {
            partials.into_iter().zip(dx_blocks).enumerate().for_each(work);
        }
        if affine {
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
        vec![
            ("weight".into(), StateMut::Param { value: &mut self.weight, grad: &mut self.weight_grad }),
            ("bias".into(), StateMut::Param { value: &mut self.bias, grad: &mut self.bias_grad }),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::row_stats;
    use super::*;

    /// Rows of a tensor past 32 MiB (stored with streaming stores where the
    /// build has them) come out bitwise as the same rows in a small tensor
    /// (plain stores), forward and input gradient.
    #[test]
    fn large_tensors_write_the_rows_small_ones_write() {
        let (rows, d) = (11_000, 768);
        assert!(rows * d * 4 >= crate::kernels::stream::MIN_BYTES);
        let value = |i: usize, seed: usize| (((i * 7919 + seed) % 1000) as f32) / 500.0 - 1.0;
        let run = |rows: usize| {
            let mut ln = LayerNorm::<f32>::new(&[d]);
            ln.build(&[d], &mut crate::rng::seeded(0)).unwrap();
            for (name, st) in ln.state_mut() {
                if let StateMut::Param { value: v, .. } = st {
                    let shift = if name == "weight" { 0.5 } else { -0.25 };
                    v.data_mut().iter_mut().enumerate().for_each(|(j, w)| *w = shift + j as f32 * 1e-3);
                }
            }
            let x = Tensor::from_vec(&[rows, d], (0..rows * d).map(|i| value(i, 1)).collect()).unwrap();
            let dy = Tensor::from_vec(&[rows, d], (0..rows * d).map(|i| value(i, 2)).collect()).unwrap();
            let y = ln.forward(&x, Mode::Train).unwrap().clone();
            let dx = ln.backward(&x, &dy, true).unwrap().clone();
            (y, dx)
        };
        let (big, small) = (run(rows), run(16));
        let bits = |t: &Tensor<f32>| t.data()[..16 * d].iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&big.0), bits(&small.0), "forward");
        assert_eq!(bits(&big.1), bits(&small.1), "input gradient");
    }

    /// The one-pass shifted statistics against the two-pass definition, on
    /// rows where an unshifted one-pass formula loses every digit: a large
    /// mean with a small spread, and a large first value among small ones.
    #[test]
    fn one_pass_statistics_match_two_passes_on_hard_rows() {
        let noise = |i: usize| ((i * 7919 % 1000) as f64 / 1000.0 - 0.5) * 0.02;
        let large_mean: Vec<f32> = (0..768).map(|i| (1e4 + noise(i)) as f32).collect();
        let outlier_first: Vec<f32> = (0..769).map(|i| if i == 0 { 1e6 } else { noise(i) as f32 }).collect();
        let tiny: Vec<f32> = (0..5).map(|i| i as f32).collect();
        for (name, row) in [("large mean", large_mean), ("outlier first", outlier_first), ("short", tiny)] {
            let d = row.len() as f64;
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d;
            let (m, inv_std) = row_stats(&row, 0.0);
            assert!((m as f64 - mean).abs() <= 1e-7 * mean.abs().max(1.0), "{name}: mean {m} vs {mean}");
            let want = 1.0 / var.sqrt();
            assert!((inv_std as f64 - want).abs() <= 1e-5 * want, "{name}: 1/std {inv_std} vs {want}");
        }
    }
}
