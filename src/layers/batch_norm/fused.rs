//! The fast batch norm: the kernels in `kernels::batch_norm` with the
//! per-channel coefficients folded in advance.
//!
//! Forward:  `y = (x - c)·scale + beta`, `scale = gamma·s`, where `c` is the
//! mean (or 0 when only scaling) and `s = 1/sqrt(var + eps)` (or 1 when only
//! centring).
//!
//! Backward: `dbeta = Σ dy`, `dgamma = s·Σ dy·(x - c)`, and with batch
//! statistics `dx = a·dy + b·(x - mean) + k` where
//! `a = gamma·s`, `b = -gamma·s³·Σ dy·(x - c)/m` (0 when not scaling),
//! `k = -gamma·s·Σ dy/m` (0 when not centring): for full BN this is the
//! chapter's `gamma·s·(dy - dbeta/m - x_hat·dgamma/m)` expanded.

use super::BnParts;
use crate::kernels::batch_norm as k;
use crate::real::Real;

/// Per-channel values kept from the forward pass.
pub(super) struct Saved<'a, T> {
    pub mean: &'a [T],
    pub center: &'a [T],
    pub inv_std: &'a [T],
}

#[allow(clippy::too_many_arguments)]
pub(super) fn forward<T: Real>(
    x: &[T],
    c: usize,
    s: usize,
    center: &[T],
    inv_std: &[T],
    gamma: &[T],
    beta: &[T],
    y: &mut [T],
) {
    let scale: Vec<T> = gamma.iter().zip(inv_std).map(|(&g, &i)| g * i).collect();
    k::normalize(x, y, c, s, center, &scale, beta);
}

/// `batch_parts` is `Some(parts)` when the statistics came from the batch
/// (so they depend on x), `None` when they were fixed running statistics.
pub(super) fn backward<T: Real>(
    x: &[T],
    dy: &[T],
    (n, c, s): (usize, usize, usize),
    saved: Saved<'_, T>,
    batch_parts: Option<BnParts>,
    gamma: &[T],
    dx: Option<&mut [T]>,
) -> (Vec<f64>, Vec<f64>) {
    let m = (n * s) as f64;
    let (dbeta, sum_dy_xmu) = k::backward_sums(x, dy, n, c, s, saved.mean);
    // Σ dy·(x - c) = Σ dy·(x - mean) + (mean - c)·Σ dy
    let sum_dy_xc: Vec<f64> =
        (0..c).map(|ch| sum_dy_xmu[ch] + (saved.mean[ch] - saved.center[ch]).as_f64() * dbeta[ch]).collect();
    let dgamma: Vec<f64> = (0..c).map(|ch| sum_dy_xc[ch] * saved.inv_std[ch].as_f64()).collect();
    if let Some(dx) = dx {
        let a: Vec<T> = gamma.iter().zip(saved.inv_std).map(|(&g, &is)| g * is).collect();
        let (b, kk): (Vec<T>, Vec<T>) = match batch_parts {
            Some(parts) => (0..c)
                .map(|ch| {
                    let (a, is) = (a[ch].as_f64(), saved.inv_std[ch].as_f64());
                    let scaled = parts != BnParts::CenterOnly;
                    let centred = parts != BnParts::ScaleOnly;
                    let b = if scaled { -a * is * is * sum_dy_xc[ch] / m } else { 0.0 };
                    let k = if centred { -a * dbeta[ch] / m } else { 0.0 };
                    (T::from_f64(b), T::from_f64(k))
                })
                .unzip(),
            None => (vec![T::zero(); c], vec![T::zero(); c]),
        };
        k::backward_apply(x, dy, dx, c, s, saved.mean, &a, &b, &kk);
    }
    (dgamma, dbeta)
}
