//! The fast batch norm: the kernels in `kernels::batch_norm` with the
//! per-channel coefficients folded in advance.
//!
//! Forward:  `y = (x - mean)·scale + beta`,  `scale = gamma·inv_std`
//! Backward: `dbeta = Σ dy`, `dgamma = inv_std · Σ dy·(x - mean)`, and with
//! batch statistics `dx = a·dy + b·(x - mean) + k` where
//! `a = gamma·inv_std`, `b = -a·inv_std·dgamma/m`, `k = -a·dbeta/m`
//! (the chapter's formula with `x_hat = (x - mean)·inv_std` expanded).

use crate::kernels::batch_norm as k;
use crate::real::Real;

#[allow(clippy::too_many_arguments)]
pub(super) fn forward<T: Real>(
    x: &[T],
    c: usize,
    s: usize,
    mean: &[T],
    inv_std: &[T],
    gamma: &[T],
    beta: &[T],
    y: &mut [T],
) {
    let scale: Vec<T> = gamma.iter().zip(inv_std).map(|(&g, &i)| g * i).collect();
    k::normalize(x, y, c, s, mean, &scale, beta);
}

#[allow(clippy::too_many_arguments)]
pub(super) fn backward<T: Real>(
    x: &[T],
    dy: &[T],
    n: usize,
    c: usize,
    s: usize,
    mean: &[T],
    inv_std: &[T],
    batch_stats: bool,
    gamma: &[T],
    dx: Option<&mut [T]>,
) -> (Vec<f64>, Vec<f64>) {
    let m = (n * s) as f64;
    let (dbeta, sum_dy_xmu) = k::backward_sums(x, dy, n, c, s, mean);
    let dgamma: Vec<f64> = sum_dy_xmu
        .iter()
        .zip(inv_std)
        .map(|(&v, &is)| v * is.as_f64())
        .collect();
    if let Some(dx) = dx {
        let a: Vec<T> = gamma.iter().zip(inv_std).map(|(&g, &is)| g * is).collect();
        let (b, kk): (Vec<T>, Vec<T>) = if batch_stats {
            (0..c)
                .map(|ch| {
                    let a = a[ch].as_f64();
                    (
                        T::from_f64(-a * inv_std[ch].as_f64() * dgamma[ch] / m),
                        T::from_f64(-a * dbeta[ch] / m),
                    )
                })
                .unzip()
        } else {
            (vec![T::zero(); c], vec![T::zero(); c])
        };
        k::backward_apply(x, dy, dx, c, s, mean, &a, &b, &kk);
    }
    (dgamma, dbeta)
}
