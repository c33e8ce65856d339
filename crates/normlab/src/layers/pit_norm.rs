//! Normalization by the probability integral transform (the chapter's
//! exercise 7): per channel, each value is replaced by the standard normal
//! quantile of its rank in the batch, so every channel leaves the layer
//! exactly "Gaussianized" whatever its distribution (BN only fixes the first
//! two moments).
//!
//! Training, per channel c over its m values (m = N · spatial size; spatial
//! positions count as examples, as in BN), 0-based ranks with ties averaged:
//!
//! ```text
//! r_i = (first + last position of x_i's value in the sorted channel) / 2
//! z_i = Φ⁻¹((r_i + 1/2) / m)            (Φ⁻¹: the standard normal quantile)
//! y_i = gamma_c · z_i + beta_c
//! ```
//!
//! The ranks are piecewise constant in x, so the true gradient is zero
//! almost everywhere. The backward pass is straight-through: it is BN's
//! backward pass, as if z were the standardization
//! `x_hat = (x - mu)/sqrt(var + eps)` with the batch's mean and biased
//! variance (the two agree for Gaussian inputs):
//!
//! ```text
//! g = gamma_c · dy,   x_hat = (x - mu_c) · inv_std_c
//! dx = inv_std_c · (g - mean(g) - x_hat · mean(g · x_hat))
//! dgamma_c = Σ dy · z      dbeta_c = Σ dy      (exact: y is affine in gamma, beta)
//! ```
//!
//! A smoothed rank (a kernel CDF, `F(x_i) = (1/m) Σ_j Φ((x_i - x_j)/h)`)
//! would give a true gradient, but it couples every pair of values: O(m²)
//! per channel, and m is 73,728 at LeNet's first convolution with batch 128
//! (5.4·10⁹ kernel terms per channel per step), so it is not offered here.
//!
//! Evaluation uses running quantiles: per channel, the values `q_k` at the
//! [`LEVELS`] probabilities `Φ(z_k)` of a fixed grid `z_k` from -3 to 3,
//! each batch's quantile (linear interpolation between order statistics at
//! position `Φ(z_k)·m - 1/2`, the inverse of the training map) averaged as
//! BN averages its statistics (`q = (1 - m)·q + m·q_batch`, momentum 0.1;
//! they start at `q_k = z_k`, the standard normal, as BN's running mean 0
//! and variance 1). A value maps to z by linear interpolation between the
//! points `(q_k, z_k)`, extended linearly beyond the ends with the slopes
//! of the outer segments; the backward pass in evaluation is that map's
//! derivative (its slope), exact away from the knots.

use super::whitening::{gather_block, scatter_block, ChannelAffine};
use super::{check_built, check_forward_ran, check_grad, Layer, Mode, StateMut, StateName};
use crate::kernels::batch_norm::per_channel;
use crate::real::Real;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Points of the running-quantile grid, `z_k = -3 + 6k/(LEVELS - 1)`.
pub const LEVELS: usize = 25;

/// The grid's normal quantiles z_k.
pub fn z_grid() -> Vec<f64> {
    (0..LEVELS).map(|k| -3.0 + 6.0 * k as f64 / (LEVELS - 1) as f64).collect()
}

/// The standard normal CDF.
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
}

/// The standard normal quantile Φ⁻¹(p) for p in (0, 1): Acklam's rational
/// approximation (relative error 1.2e-9) refined by one Halley step on
/// `Φ(z) - p` with libm's erfc, to about double precision.
pub fn normal_quantile(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] =
        [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    let z = if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    };
    let e = normal_cdf(z) - p;
    let u = e * (2.0 * std::f64::consts::PI).sqrt() * (z * z / 2.0).exp();
    z - u / (1.0 + z * u / 2.0)
}

/// A key whose unsigned order is the order of the f64 values.
fn order_key(v: f64) -> u64 {
    let b = v.to_bits();
    if b >> 63 == 1 {
        !b
    } else {
        b | (1 << 63)
    }
}

/// The PIT of one channel's values: z per value (input order), and the
/// values sorted (for the batch quantiles).
pub fn pit(values: &[f64]) -> (Vec<f64>, Vec<f64>) {
    pit_with(values, &rank_quantiles(values.len()))
}

/// `Φ⁻¹((r + 1/2)/m)` for the integer ranks r of m values.
pub fn rank_quantiles(m: usize) -> Vec<f64> {
    (0..m).map(|r| normal_quantile((r as f64 + 0.5) / m as f64)).collect()
}

/// [`pit`] with the quantiles of the integer ranks given (a tie group of
/// even size has a half-integer rank, computed on the spot).
pub fn pit_with(values: &[f64], table: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let m = values.len();
    debug_assert_eq!(table.len(), m);
    let mut keyed: Vec<(u64, u32)> = values.iter().enumerate().map(|(i, &v)| (order_key(v), i as u32)).collect();
    keyed.sort_unstable();
    let mut z = vec![0.0; m];
    let mut start = 0;
    while start < m {
        let mut end = start;
        while end + 1 < m && keyed[end + 1].0 == keyed[start].0 {
            end += 1;
        }
        let q = if (start + end) % 2 == 0 {
            table[(start + end) / 2]
        } else {
            normal_quantile(((start + end) as f64 / 2.0 + 0.5) / m as f64)
        };
        for &(_, i) in &keyed[start..=end] {
            z[i as usize] = q;
        }
        start = end + 1;
    }
    let sorted = keyed.iter().map(|&(_, i)| values[i as usize]).collect();
    (z, sorted)
}

/// The batch quantile of sorted values at probability p (the inverse of
/// the training map: position p·m - 1/2, interpolated).
pub fn batch_quantile(sorted: &[f64], p: f64) -> f64 {
    let m = sorted.len();
    let t = (p * m as f64 - 0.5).clamp(0.0, (m - 1) as f64);
    let i = t.floor() as usize;
    let f = t - i as f64;
    if i + 1 < m {
        sorted[i] * (1.0 - f) + sorted[i + 1] * f
    } else {
        sorted[i]
    }
}

/// The evaluation map of one channel: z and dz/dx of value `x` through
/// the points (q_k, z_k) (module docs).
pub fn through_quantiles(q: &[f64], z: &[f64], x: f64) -> (f64, f64) {
    let n = q.len();
    let widths = |k: usize| q[k + 1] - q[k];
    let first = (0..n - 1).find(|&k| widths(k) > 0.0);
    let last = (0..n - 1).rev().find(|&k| widths(k) > 0.0);
    let (Some(first), Some(last)) = (first, last) else {
        // every quantile equal: a channel that was constant
        return (
            if x < q[0] {
                z[0]
            } else if x > q[0] {
                z[n - 1]
            } else {
                0.0
            },
            0.0,
        );
    };
    let j = q.partition_point(|&v| v <= x);
    let k = if j == 0 {
        first
    } else if j >= n {
        last
    } else {
        j - 1
    };
    let slope = (z[k + 1] - z[k]) / widths(k);
    (z[k] + (x - q[k]) * slope, slope)
}

/// PIT normalization (module docs): Gaussianized ranks per channel.
pub struct PitNorm<T: Real = f32> {
    eps: f64,
    momentum: f64,
    affine: ChannelAffine<T>,
    example: Vec<usize>,
    channels: usize,
    spatial: usize,
    /// [C, LEVELS]: each channel's running quantiles at Φ(z_k).
    running_quantiles: Tensor<T>,
    /// The last forward's z (input layout).
    z: Vec<f64>,
    /// Training: per channel (mean, inv_std) of the batch; evaluation unused.
    stats: Vec<(f64, f64)>,
    /// Evaluation: dz/dx per value.
    slope: Vec<f64>,
    /// [`rank_quantiles`] of the last training batch's size.
    table: Vec<f64>,
    forward_mode: Mode,
    y: Tensor<T>,
    dx: Tensor<T>,
}

impl<T: Real> Default for PitNorm<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Real> PitNorm<T> {
    /// PIT normalization with gamma and beta, eps 1e-5 (in the
    /// straight-through standardization), momentum 0.1.
    pub fn new() -> Self {
        PitNorm {
            eps: 1e-5,
            momentum: 0.1,
            affine: ChannelAffine::new(true),
            example: Vec::new(),
            channels: 0,
            spatial: 0,
            running_quantiles: Tensor::default(),
            z: Vec::new(),
            stats: Vec::new(),
            slope: Vec::new(),
            table: Vec::new(),
            forward_mode: Mode::Train,
            y: Tensor::default(),
            dx: Tensor::default(),
        }
    }
    /// Learnable per-channel gamma and beta (on).
    pub fn affine(mut self, on: bool) -> Self {
        self.affine.on = on;
        self
    }
}

impl<T: Real> Layer<T> for PitNorm<T> {
    fn kind(&self) -> String {
        "PitNorm".into()
    }

    fn build(&mut self, input: &[usize], _rng: &mut Rng) -> Result<Vec<usize>> {
        if input.is_empty() || input[0] == 0 || input.iter().product::<usize>() == 0 {
            return Err(Error::shape(
                "PitNorm",
                format!("expected input (N, C, *) with channels, got one example of shape {input:?}"),
            ));
        }
        let c = input[0];
        self.example = input.to_vec();
        self.channels = c;
        self.spatial = input[1..].iter().product();
        self.affine.build(c);
        let grid = z_grid();
        let q: Vec<f64> = (0..c).flat_map(|_| grid.iter().copied()).collect();
        self.running_quantiles = Tensor::from_f64(&[c, LEVELS], &q)?;
        Ok(input.to_vec())
    }

    fn forward(&mut self, x: &Tensor<T>, mode: Mode) -> Result<&Tensor<T>> {
        check_built("PitNorm", self.channels > 0)?;
        let n = super::check_input("PitNorm", x, &self.example)?;
        let (c, sp) = (self.channels, self.spatial);
        let m = n * sp;
        if mode == Mode::Train && m < 2 {
            return Err(Error::shape(
                "PitNorm",
                "training needs more than one value per channel (a batch of one example without spatial positions)",
            ));
        }
        if !x.all_finite() {
            return Err(Error::Diverged("PitNorm: a non-finite input value has no rank".into()));
        }
        self.forward_mode = mode;
        self.z.resize(x.numel(), 0.0);
        let grid = z_grid();
        let xd = x.data();
        if mode == Mode::Train {
            let eps = self.eps;
            if self.table.len() != m {
                self.table = rank_quantiles(m);
            }
            let table = &self.table;
            // per channel: z, (mean, inv_std) and the batch quantiles
            #[allow(clippy::type_complexity)]
            let per: Vec<(Vec<f64>, (f64, f64), Vec<f64>)> = per_channel(c, x.numel(), |ch| {
                let v = gather_block(xd, c, sp, (ch, 1));
                let mean = v.iter().sum::<f64>() / m as f64;
                let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / m as f64;
                let (z, sorted) = pit_with(&v, table);
                let q = grid.iter().map(|&zk| batch_quantile(&sorted, normal_cdf(zk))).collect();
                (z, (mean, 1.0 / (var + eps).sqrt()), q)
            });
            self.stats.clear();
            let mo = self.momentum;
            for (ch, (z, st, q)) in per.into_iter().enumerate() {
                scatter_block(&mut self.z, c, sp, (ch, 1), &z, |_, v| v);
                self.stats.push(st);
                for (r, qb) in self.running_quantiles.data_mut()[ch * LEVELS..(ch + 1) * LEVELS].iter_mut().zip(q) {
                    *r = T::from_f64((1.0 - mo) * r.as_f64() + mo * qb);
                }
            }
        } else {
            self.slope.resize(x.numel(), 0.0);
            let rq = self.running_quantiles.to_f64_vec();
            for (i, &xv) in xd.iter().enumerate() {
                let ch = (i / sp) % c;
                let (z, s) = through_quantiles(&rq[ch * LEVELS..(ch + 1) * LEVELS], &grid, xv.as_f64());
                self.z[i] = z;
                self.slope[i] = s;
            }
        }
        self.y.resize(x.shape());
        self.affine.apply(self.y.data_mut(), &self.z, c, sp);
        Ok(&self.y)
    }

    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        check_built("PitNorm", self.channels > 0)?;
        super::check_input("PitNorm", x, &self.example)?;
        check_forward_ran("PitNorm", self.y.shape(), x.shape())?;
        check_grad("PitNorm", dy, x.shape())?;
        let (c, sp) = (self.channels, self.spatial);
        self.affine.backward(dy.data(), &self.z, c, sp)?;
        if !need_dx {
            return Ok(&self.dx);
        }
        self.dx.resize(x.shape());
        let gamma = self.affine.gamma(c);
        if self.forward_mode == Mode::Eval {
            for (i, ((d, &g), &s)) in self.dx.data_mut().iter_mut().zip(dy.data()).zip(&self.slope).enumerate() {
                *d = T::from_f64(gamma[(i / sp) % c] * g.as_f64() * s);
            }
            return Ok(&self.dx);
        }
        let m = x.numel() / c;
        let (xd, dyd, stats) = (x.data(), dy.data(), &self.stats);
        let per: Vec<Vec<f64>> = per_channel(c, x.numel(), |ch| {
            let (mean, inv_std) = stats[ch];
            let xv = gather_block(xd, c, sp, (ch, 1));
            let g: Vec<f64> = gather_block(dyd, c, sp, (ch, 1)).iter().map(|v| v * gamma[ch]).collect();
            let mg = g.iter().sum::<f64>() / m as f64;
            let mgx = g.iter().zip(&xv).map(|(g, x)| g * (x - mean) * inv_std).sum::<f64>() / m as f64;
            g.iter().zip(&xv).map(|(g, x)| inv_std * (g - mg - (x - mean) * inv_std * mgx)).collect()
        });
        for (ch, d) in per.iter().enumerate() {
            scatter_block(self.dx.data_mut(), c, sp, (ch, 1), d, |_, v| T::from_f64(v));
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
        let mut s = self.affine.state();
        s.push(("running_quantiles".into(), StateMut::Buffer(&mut self.running_quantiles)));
        s
    }
}
