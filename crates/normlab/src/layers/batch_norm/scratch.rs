//! The chapter's hand-written batch norm, one formula per line, with the
//! chapter's two cases: fully connected `(N, C)` input is reduced over
//! dimension 0, convolutional `(N, C, S)` input over examples and space.
//! Written to be read next to SPEC.md; `x_hat` is kept as a tensor. Sums run
//! in f64 (in eight lanes where a channel's values are contiguous, so they
//! vectorize) so that it agrees with the fused version on hard inputs (a
//! channel with mean 1e4 and std 1e-2). Like the chapter's tensor
//! operations, large tensors are spread over threads.

use rayon::prelude::*;

use crate::kernels::batch_norm::{lane_sum, PAR_MIN};
use crate::real::Real;

/// `Σ f(a, b)` over the values of each channel `ch` of two tensors of the
/// same `(N, C, S)` shape, with `f = term(ch)`.
fn channel_sums<T: Real, F: Fn(f64, f64) -> f64>(
    a: &[T],
    b: &[T],
    (n, c, sp): (usize, usize, usize),
    term: impl Fn(usize) -> F + Sync + Send,
) -> Vec<f64> {
    if sp == 1 {
        // fully connected: one row per example, the channels side by side
        let mut sums = vec![0.0; c];
        for (ra, rb) in a.chunks_exact(c).zip(b.chunks_exact(c)) {
            for ch in 0..c {
                sums[ch] += term(ch)(ra[ch].as_f64(), rb[ch].as_f64());
            }
        }
        return sums;
    }
    // convolutional: channel ch of example i is the S values at (i·C + ch)·S
    let run = |i: usize, ch: usize| (i * c + ch) * sp..(i * c + ch + 1) * sp;
    let channel = |ch: usize| (0..n).map(|i| lane_sum(&a[run(i, ch)], &b[run(i, ch)], term(ch))).sum();
    if a.len() >= PAR_MIN {
        (0..c).into_par_iter().map(channel).collect()
    } else {
        (0..c).map(channel).collect()
    }
}

/// `out[j] = f(x[j], j)` for every element `j`, with `f = term(ch)` for its
/// channel `ch`.
fn map_elements<T: Real, F: Fn(T, usize) -> T>(
    x: &[T],
    out: &mut [T],
    c: usize,
    sp: usize,
    term: impl Fn(usize) -> F + Sync + Send,
) {
    let by_row = |r: usize, (o, xs): (&mut [T], &[T])| {
        if sp == 1 {
            // fully connected: a row holds every channel
            for (ch, (o, &v)) in o.iter_mut().zip(xs).enumerate() {
                *o = term(ch)(v, r * c + ch);
            }
        } else {
            // convolutional: a run of S values of channel r mod C
            let f = term(r % c);
            for (k, (o, &v)) in o.iter_mut().zip(xs).enumerate() {
                *o = f(v, r * sp + k);
            }
        }
    };
    let len = if sp == 1 { c } else { sp };
    if x.len() >= PAR_MIN {
        out.par_chunks_mut(len).zip(x.par_chunks(len)).enumerate().for_each(|(r, p)| by_row(r, p));
    } else {
        out.chunks_mut(len).zip(x.chunks(len)).enumerate().for_each(|(r, p)| by_row(r, p));
    }
}

/// `mean_c = (1/m) Σ x`, `var_c = (1/m) Σ (x - mean_c)²` over batch and space.
pub(super) fn batch_stats<T: Real>(x: &[T], n: usize, c: usize, sp: usize) -> (Vec<f64>, Vec<f64>) {
    let m = (n * sp) as f64;
    let sum = channel_sums(x, x, (n, c, sp), |_| |v, _| v);
    let mean: Vec<f64> = sum.iter().map(|s| s / m).collect();
    let squares = channel_sums(x, x, (n, c, sp), |ch| {
        let mu = mean[ch];
        move |v, _| (v - mu) * (v - mu)
    });
    let var = squares.iter().map(|s| s / m).collect();
    (mean, var)
}

/// `x_hat = (x - mean) / sqrt(var + eps)`, `y = gamma · x_hat + beta`
/// (`inv_std` is `1 / sqrt(var + eps)`).
#[allow(clippy::too_many_arguments)]
pub(super) fn forward<T: Real>(
    x: &[T],
    _n: usize,
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
    map_elements(x, x_hat, c, sp, |ch| {
        let (mu, is) = (mean[ch], inv_std[ch]);
        move |v, _| (v - mu) * is
    });
    map_elements(x_hat, y, c, sp, |ch| {
        let (g, b) = (gamma[ch], beta[ch]);
        move |h, _| g * h + b
    });
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
    let dbeta = channel_sums(dy, dy, (n, c, sp), |_| |g, _| g);
    let dgamma = channel_sums(dy, x_hat, (n, c, sp), |_| |g, h| g * h);
    if let Some(dx) = dx {
        let mean_dy: Vec<T> = dbeta.iter().map(|&s| T::from_f64(s / m)).collect();
        let mean_dy_xhat: Vec<T> = dgamma.iter().map(|&s| T::from_f64(s / m)).collect();
        map_elements(dy, dx, c, sp, |ch| {
            let (scale, mean_dy, mean_dy_xhat) = (gamma[ch] * inv_std[ch], mean_dy[ch], mean_dy_xhat[ch]);
            move |g, j| if batch_stats { scale * (g - mean_dy - x_hat[j] * mean_dy_xhat) } else { scale * g }
        });
    }
    (dgamma, dbeta)
}
