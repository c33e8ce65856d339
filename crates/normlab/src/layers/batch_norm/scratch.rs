//! The chapter's hand-written batch norm ([`super::BnImpl::Scratch`]): plain
//! nested loops, one formula per line, to be read next to
//! docs/spec.md, "Batch normalization". The fast code is in `fused.rs`; this
//! one is serial, so its results do not depend on the number of threads, and
//! every sum runs in an f64 accumulator.
//!
//! The input is viewed as `(N, C, S)`: `(N, C)` fully connected input has
//! `S = 1`; `(N, C, H, W)` convolutional input has `S = H·W`. Value `k` of
//! channel `c` of example `i` sits at `j = (i·C + c)·S + k`, and each channel
//! is reduced over its `m = N·S` values.
//!
//! ```text
//! Forward, training mode (the batch's statistics):
//!   mean_c = (1/m) Σ_{i,k} x                                    batch_stats
//!   var_c  = (1/m) Σ_{i,k} (x - mean_c)²          (biased)      batch_stats
//!   x_hat  = (x - mean_c) / sqrt(var_c + eps)                   forward
//!   y      = gamma_c · x_hat + beta_c                           forward
//!   and, with track_running_stats (PyTorch's convention, w = the weight of
//!   the NEW statistic, see Momentum):
//!   num_batches_tracked += 1
//!   running_mean_c = (1 - w)·running_mean_c + w·mean_c
//!   running_var_c  = (1 - w)·running_var_c  + w·var_c·m/(m - 1)  (unbiased;
//!                                           RunningVar::Biased: w·var_c)
//!   w = p for Momentum::NewStatWeight(p)      (PyTorch momentum=p, 0.1)
//!   w = 1 - d for Momentum::OldStatWeight(d)  (Keras/Flax momentum=d, 0.99)
//!   w = 1 / num_batches_tracked for Momentum::CumulativeAverage
//!                                           (PyTorch momentum=None)
//!
//! Forward, prediction mode: the same x_hat and y with mean_c = running_mean_c
//!   and var_c = running_var_c; nothing is updated. With
//!   track_running_stats = false there are no running statistics, and
//!   prediction mode uses the batch's statistics as training does.
//!
//! affine = false: gamma_c = 1 and beta_c = 0, not learned (y = x_hat).
//!
//! Backward, with the batch's statistics (they depend on x):
//!   dbeta_c  = Σ_{i,k} dy
//!   dgamma_c = Σ_{i,k} dy · x_hat
//!   dx       = gamma_c / sqrt(var_c + eps) · (dy - dbeta_c/m - x_hat · dgamma_c/m)
//! Backward, with the running statistics (constants):
//!   dx       = gamma_c / sqrt(var_c + eps) · dy
//! ```
//!
//! Choosing the statistics and updating the running ones is shared with the
//! fused implementation, in `BatchNorm::prepare_with_shape` and
//! `BatchNorm::update_running_stats` (`mod.rs`); the functions here compute
//! the rest, with `inv_std_c = 1 / sqrt(var_c + eps)` passed in.

use crate::kernels::batch_norm::TwoTerm;
use crate::kernels::stats::Ncs;
use crate::real::Real;

/// `(mean_c, var_c)` of every channel of `x`, viewed as `(n, c, s)`: the
/// batch's mean and biased variance, summed in f64.
pub(super) fn batch_stats<T: Real>(x: &[T], Ncs { n, c, s }: Ncs) -> (Vec<f64>, Vec<f64>) {
    let m = (n * s) as f64;
    let mut mean = vec![0.0f64; c];
    let mut var = vec![0.0f64; c];
    for ch in 0..c {
        let mut sum = 0.0f64;
        for i in 0..n {
            for k in 0..s {
                sum += x[(i * c + ch) * s + k].as_f64();
            }
        }
        mean[ch] = sum / m;
        let mut sum_sq = 0.0f64;
        for i in 0..n {
            for k in 0..s {
                let d = x[(i * c + ch) * s + k].as_f64() - mean[ch];
                sum_sq += d * d;
            }
        }
        var[ch] = sum_sq / m;
    }
    (mean, var)
}

/// The per-channel values the forward pass applies (`mean_c`,
/// `inv_std_c = 1 / sqrt(var_c + eps)`, `gamma_c`, `beta_c`), each `C` long;
/// the mean in two terms, `hi + lo`, so that `x - mean_c` is exact to the
/// rounding of the result even when the mean is far larger than the spread
/// (see `kernels::batch_norm::split_mean`).
pub(super) struct Coefs<'a, T> {
    pub mean: TwoTerm<'a, T>,
    pub inv_std: &'a [T],
    pub gamma: &'a [T],
    pub beta: &'a [T],
}

/// `x_hat = ((x - mean_hi_c) - mean_lo_c) · inv_std_c` into `x_hat` (resized to `x`'s
/// length, kept for the backward pass) and `y = gamma_c · x_hat + beta_c`
/// into `y`, for `x` viewed as `(n, c, s)`.
pub(super) fn forward<T: Real>(x: &[T], Ncs { n, c, s }: Ncs, coefs: Coefs<'_, T>, x_hat: &mut Vec<T>, y: &mut [T]) {
    x_hat.resize(x.len(), T::zero());
    for i in 0..n {
        for ch in 0..c {
            for k in 0..s {
                let j = (i * c + ch) * s + k;
                x_hat[j] = ((x[j] - coefs.mean.hi[ch]) - coefs.mean.lo[ch]) * coefs.inv_std[ch];
                y[j] = coefs.gamma[ch] * x_hat[j] + coefs.beta[ch];
            }
        }
    }
}

/// `(dgamma_c, dbeta_c)` per channel, summed in f64, and, when `dx` is
/// given, the input gradient written into it (see the formulas at the top;
/// `batch_stats` says whether the forward pass used the batch's statistics).
pub(super) fn backward<T: Real>(
    dy: &[T],
    Ncs { n, c, s }: Ncs,
    x_hat: &[T],
    inv_std: &[T],
    batch_stats: bool,
    gamma: &[T],
    dx: Option<&mut [T]>,
) -> (Vec<f64>, Vec<f64>) {
    let m = (n * s) as f64;
    let mut dbeta = vec![0.0f64; c];
    let mut dgamma = vec![0.0f64; c];
    for ch in 0..c {
        let mut sum_dy = 0.0f64;
        let mut sum_dy_xhat = 0.0f64;
        for i in 0..n {
            for k in 0..s {
                let j = (i * c + ch) * s + k;
                sum_dy += dy[j].as_f64();
                sum_dy_xhat += dy[j].as_f64() * x_hat[j].as_f64();
            }
        }
        dbeta[ch] = sum_dy;
        dgamma[ch] = sum_dy_xhat;
    }
    if let Some(dx) = dx {
        for ch in 0..c {
            let scale = gamma[ch] * inv_std[ch];
            let mean_dy = T::from_f64(dbeta[ch] / m);
            let mean_dy_xhat = T::from_f64(dgamma[ch] / m);
            for i in 0..n {
                for k in 0..s {
                    let j = (i * c + ch) * s + k;
                    dx[j] =
                        if batch_stats { scale * (dy[j] - mean_dy - x_hat[j] * mean_dy_xhat) } else { scale * dy[j] };
                }
            }
        }
    }
    (dgamma, dbeta)
}
