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
use crate::kernels::activation::Activation;
use crate::kernels::batch_norm as k;
use crate::kernels::stats::Ncs;
use crate::real::Real;

/// Per-channel values kept from the forward pass: the mean and the value
/// subtracted (the mean, or 0 when only scaling) in two terms each (see
/// `kernels::batch_norm::split_mean`).
pub(super) struct Saved<'a, T> {
    pub mean: k::TwoTerm<'a, T>,
    pub center: k::TwoTerm<'a, T>,
    pub inv_std: &'a [T],
}

/// `y = act(((x - center) - center_lo)·scale + beta)`, `scale = gamma·inv_std`.
pub(super) fn forward<T: Real, A: Activation<T>>(
    x: &[T],
    (c, s): (usize, usize),
    saved: &Saved<'_, T>,
    (gamma, beta): (&[T], &[T]),
    act: A,
    y: &mut [T],
) {
    let scale = scale(gamma, saved.inv_std);
    k::normalize(x, y, c, s, k::Affine { center: saved.center, scale: &scale, shift: beta }, act);
}

/// `gamma·inv_std` per channel: the forward pass's scale.
pub(super) fn scale<T: Real>(gamma: &[T], inv_std: &[T]) -> Vec<T> {
    gamma.iter().zip(inv_std).map(|(&g, &i)| g * i).collect()
}

/// The coefficients of `dx = a·dy + b·(x - mean) + k` for channel `ch`
/// from its sums `Σ dy` and `Σ dy·(x - mean)` over the `N·S` values, and
/// `Σ dy·(x - c)` (see [`backward`]).
fn grad_coefs<T: Real>(
    saved: &Saved<'_, T>,
    batch_parts: Option<BnParts>,
    gamma: &[T],
    ncs: Ncs,
    (ch, sum_dy, sum_dy_xmu): (usize, f64, f64),
) -> (T, T, T, f64) {
    let m = (ncs.n * ncs.s) as f64;
    // Σ dy·(x - c) = Σ dy·(x - mean) + (mean - c)·Σ dy
    let ((m_hi, m_lo), (c_hi, c_lo)) = (saved.mean.at(ch), saved.center.at(ch));
    let sum_dy_xc = sum_dy_xmu + ((m_hi - c_hi).as_f64() + (m_lo - c_lo).as_f64()) * sum_dy;
    let a = gamma[ch] * saved.inv_std[ch];
    let (af, is) = (a.as_f64(), saved.inv_std[ch].as_f64());
    let (b, k) = match batch_parts {
        Some(parts) => (
            if parts != BnParts::CenterOnly { -af * is * is * sum_dy_xc / m } else { 0.0 },
            if parts != BnParts::ScaleOnly { -af * sum_dy / m } else { 0.0 },
        ),
        None => (0.0, 0.0),
    };
    (a, T::from_f64(b), T::from_f64(k), sum_dy_xc)
}

/// `batch_parts` is `Some(parts)` when the statistics came from the batch
/// (so they depend on x), `None` when they were fixed running statistics.
/// `ep` turns `dy` into the gradient at batch norm's output (identity for
/// batch norm alone). Returns `(dgamma, dbeta)`.
pub(super) fn backward<T: Real, A: Activation<T>>(
    (x, dy): (&[T], &[T]),
    ncs @ Ncs { c, s, .. }: Ncs,
    saved: Saved<'_, T>,
    batch_parts: Option<BnParts>,
    gamma: &[T],
    ep: k::Epilogue<'_, T, A>,
    dx: Option<&mut [T]>,
) -> (Vec<f64>, Vec<f64>) {
    if s > 1 {
        return backward_by_channel((x, &k::Dense(dy)), ncs, saved, batch_parts, gamma, ep, dx);
    }
    let coef =
        |ch: usize, sum_dy: f64, sum_dy_xmu: f64| grad_coefs(&saved, batch_parts, gamma, ncs, (ch, sum_dy, sum_dy_xmu));
    let sums = k::backward_sums(x, dy, ncs, saved.mean, ep);
    if let Some(dx) = dx {
        let (mut a, mut b, mut kk) = (Vec::with_capacity(c), Vec::with_capacity(c), Vec::with_capacity(c));
        for ch in 0..c {
            let (ac, bc, kc, _) = coef(ch, sums.0[ch], sums.1[ch]);
            a.push(ac);
            b.push(bc);
            kk.push(kc);
        }
        k::backward_apply(x, dy, dx, ncs, saved.mean, k::GradCoefs { a: &a, b: &b, k: &kk }, ep);
    }
    affine_grads(&saved, coef, sums)
}

/// `(dgamma, dbeta)` from the per-channel sums `(Σ dy, Σ dy·(x - mean))`:
/// `dgamma = inv_std·Σ dy·(x - c)` (`coef`'s last value), `dbeta = Σ dy`.
fn affine_grads<T: Real>(
    saved: &Saved<'_, T>,
    coef: impl Fn(usize, f64, f64) -> (T, T, T, f64),
    (dbeta, sum_dy_xmu): (Vec<f64>, Vec<f64>),
) -> (Vec<f64>, Vec<f64>) {
    let dgamma =
        (0..dbeta.len()).map(|ch| coef(ch, dbeta[ch], sum_dy_xmu[ch]).3 * saved.inv_std[ch].as_f64()).collect();
    (dgamma, dbeta)
}

/// [`backward`] of image-shaped input (`S > 1`), the gradient at the output
/// read through `grads`: the sums, and dx, per channel in one sweep while
/// the channel is in cache.
pub(super) fn backward_by_channel<T: Real, A: Activation<T>, G: k::GradRuns<T>>(
    (x, grads): (&[T], &G),
    ncs: Ncs,
    saved: Saved<'_, T>,
    batch_parts: Option<BnParts>,
    gamma: &[T],
    ep: k::Epilogue<'_, T, A>,
    dx: Option<&mut [T]>,
) -> (Vec<f64>, Vec<f64>) {
    let coef =
        |ch: usize, sum_dy: f64, sum_dy_xmu: f64| grad_coefs(&saved, batch_parts, gamma, ncs, (ch, sum_dy, sum_dy_xmu));
    let sums = match dx {
        Some(dx) => k::backward_fused((x, grads), dx, ncs, saved.mean, ep, |ch, a, b| {
            let (a, b, k, _) = coef(ch, a, b);
            (a, b, k)
        }),
        None => k::backward_sums_by_channel(x, grads, ncs, saved.mean, ep),
    };
    affine_grads(&saved, coef, sums)
}
