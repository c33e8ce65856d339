//! The chapter's hand-written batch norm, one formula per line. Written to
//! be read next to SPEC.md, not to be fast: plain loops over (n, c, s),
//! `x_hat` kept as a tensor. Sums run in f64 so that it agrees with the
//! fused version on hard inputs (a channel with mean 1e4 and std 1e-2).

use crate::real::Real;

/// Position of element (n, c, s) in an `(N, C, S)` tensor.
fn at(n: usize, ch: usize, s: usize, c: usize, sp: usize) -> usize {
    (n * c + ch) * sp + s
}

/// `mean_c = (1/m) Σ x`, `var_c = (1/m) Σ (x - mean_c)²` over batch and space.
pub(super) fn batch_stats<T: Real>(x: &[T], n: usize, c: usize, sp: usize) -> (Vec<f64>, Vec<f64>) {
    let m = (n * sp) as f64;
    let mut mean = vec![0.0; c];
    let mut var = vec![0.0; c];
    for ch in 0..c {
        let mut sum = 0.0;
        for i in 0..n {
            for s in 0..sp {
                sum += x[at(i, ch, s, c, sp)].as_f64();
            }
        }
        mean[ch] = sum / m;
        let mut sq = 0.0;
        for i in 0..n {
            for s in 0..sp {
                let d = x[at(i, ch, s, c, sp)].as_f64() - mean[ch];
                sq += d * d;
            }
        }
        var[ch] = sq / m;
    }
    (mean, var)
}

/// `x_hat = (x - mean) / sqrt(var + eps)`, `y = gamma · x_hat + beta`
/// (`inv_std` is `1 / sqrt(var + eps)`).
#[allow(clippy::too_many_arguments)]
pub(super) fn forward<T: Real>(
    x: &[T],
    n: usize,
    c: usize,
    sp: usize,
    mean: &[T],
    inv_std: &[T],
    gamma: &[T],
    beta: &[T],
    x_hat: &mut Vec<T>,
    y: &mut [T],
) {
    x_hat.resize(x.len(), T::zero());
    for i in 0..n {
        for ch in 0..c {
            for s in 0..sp {
                let j = at(i, ch, s, c, sp);
                x_hat[j] = (x[j] - mean[ch]) * inv_std[ch];
                y[j] = gamma[ch] * x_hat[j] + beta[ch];
            }
        }
    }
}

/// `dbeta = Σ dy`, `dgamma = Σ dy · x_hat`, and
/// `dx = gamma / sqrt(var + eps) · (dy - dbeta/m - x_hat · dgamma/m)` when the
/// statistics came from the batch; `dx = gamma / sqrt(var + eps) · dy` when
/// they were the fixed running statistics.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward<T: Real>(
    dy: &[T],
    n: usize,
    c: usize,
    sp: usize,
    x_hat: &[T],
    inv_std: &[T],
    batch_stats: bool,
    gamma: &[T],
    dx: Option<&mut [T]>,
) -> (Vec<f64>, Vec<f64>) {
    let m = (n * sp) as f64;
    let mut dgamma = vec![0.0; c];
    let mut dbeta = vec![0.0; c];
    for i in 0..n {
        for ch in 0..c {
            for s in 0..sp {
                let j = at(i, ch, s, c, sp);
                dbeta[ch] += dy[j].as_f64();
                dgamma[ch] += (dy[j] * x_hat[j]).as_f64();
            }
        }
    }
    if let Some(dx) = dx {
        for i in 0..n {
            for ch in 0..c {
                let g = gamma[ch] * inv_std[ch];
                let mean_dy = T::from_f64(dbeta[ch] / m);
                let mean_dy_xhat = T::from_f64(dgamma[ch] / m);
                for s in 0..sp {
                    let j = at(i, ch, s, c, sp);
                    dx[j] = if batch_stats { g * (dy[j] - mean_dy - x_hat[j] * mean_dy_xhat) } else { g * dy[j] };
                }
            }
        }
    }
    (dgamma, dbeta)
}
