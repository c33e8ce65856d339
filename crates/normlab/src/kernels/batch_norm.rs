//! The fused batch-norm kernels: per-channel statistics with f64
//! accumulators (in [`super::lanes`]), then one sweep that applies
//! `y = (x - mean)·scale + beta` with `scale = gamma / sqrt(var + eps)`
//! precomputed per channel; backward in two sweeps (one reduction, one
//! apply).
//!
//! Data is viewed as `(N, C, S)`: S = 1 for `(N, C)` input, `H·W` for images.
//! Each channel's reduction runs on one thread in a fixed order, so results
//! are bitwise the same for any thread count.
//!
//! `x - mean` is taken before scaling, never `x·scale + shift`: for a channel
//! with mean 1e4 and std 1e-2 the latter cancels away every significant digit.
//! And the mean is held as two f32 terms ([`TwoTerm`], [`split_mean`]):
//! rounded to one f32 (spacing 2^-10 at 1e4) it would move every centred
//! value of that channel by up to 5e-4, 5% of a standard deviation, where
//! `(x - hi) - lo` is exact to f32 rounding of the result.

use rayon::prelude::*;

use super::activation::{Activation, Identity, ReluAct};
use super::lanes::{sums2, F64x8};
use super::pool::{max_pool_2x2, max_pool_2x2_backward, max_pool_2x2_values};
use super::stats::{channel_mean_var, Ncs};
use super::stream::{self, MapF32};
use crate::real::{as_f32, as_f32_mut, Real};

/// Channels are reduced in parallel above this many elements in total.
pub const PAR_MIN: usize = 1 << 15;

/// Runs `per_channel(c)` for every channel, in parallel when the tensor is
/// large, and collects the results in channel order.
pub fn per_channel<R: Send>(c: usize, total: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    if total >= PAR_MIN && c > 1 {
        (0..c).into_par_iter().map(f).collect()
    } else {
        (0..c).map(f).collect()
    }
}

multiversion! {
    /// Batch mean and biased variance of each channel in f64: two passes for
    /// `(N, C)` input (short columns), one shifted pass per channel for images
    /// ([`channel_mean_var`]).
    pub fn channel_stats<T: Real>(x: &[T], ncs: Ncs) -> (Vec<f64>, Vec<f64>) {
        let Ncs { n, c, s } = ncs;
        let m = (n * s) as f64;
        if s == 1 {
            // (N, C): accumulate whole rows, vectorized across channels
            let mut sum = vec![0.0f64; c];
            for row in x.chunks_exact(c) {
                for (a, &v) in sum.iter_mut().zip(row) {
                    *a += v.as_f64();
                }
            }
            let mean: Vec<f64> = sum.iter().map(|v| v / m).collect();
            let mut sq = vec![0.0f64; c];
            for row in x.chunks_exact(c) {
                for ((a, &v), &mu) in sq.iter_mut().zip(row).zip(&mean) {
                    let d = v.as_f64() - mu;
                    *a += d * d;
                }
            }
            return (mean, sq.iter().map(|v| v / m).collect());
        }
        per_channel(c, x.len(), |ch| channel_mean_var(x, ncs, ch)).into_iter().unzip()
    }
}

/// The mean of a channel as `hi + lo`: `hi` the f64 mean rounded to `T`,
/// `lo` the rest rounded, kept only where it moves a normalized value by
/// 2^-20 or more (`|lo|·inv_std ≥ 2^-20`). Below that it is within the
/// rounding of the result, and a zero `lo` leaves the arithmetic of
/// well-conditioned channels bitwise what it was with one term (`(x - hi) -
/// 0` is `x - hi`).
pub fn split_mean<T: Real>(mean: f64, inv_std: f64) -> (T, T) {
    let hi = T::from_f64(mean);
    let lo = mean - hi.as_f64();
    if (lo * inv_std).abs() >= 1.0 / (1u64 << 20) as f64 {
        (hi, T::from_f64(lo))
    } else {
        (hi, T::zero())
    }
}

/// Per-channel values held as two terms, `hi + lo` (see [`split_mean`]).
#[derive(Clone, Copy, Debug)]
pub struct TwoTerm<'a, T> {
    /// The values rounded.
    pub hi: &'a [T],
    /// What rounding lost (or 0), as long as `hi`.
    pub lo: &'a [T],
}

impl<T: Real> TwoTerm<'_, T> {
    /// Channel `ch`'s `(hi, lo)`.
    #[inline(always)]
    pub fn at(&self, ch: usize) -> (T, T) {
        (self.hi[ch], self.lo[ch])
    }
}

/// Batch norm's output map per channel, `h = ((x - center) - center_lo)·scale + shift`.
#[derive(Clone, Copy, Debug)]
pub struct Affine<'a, T> {
    /// What is subtracted: the mean (0 when only scaling), in two terms.
    pub center: TwoTerm<'a, T>,
    /// `gamma / sqrt(var + eps)` (gamma when only centring).
    pub scale: &'a [T],
    /// beta.
    pub shift: &'a [T],
}

impl<T: Real> Affine<'_, T> {
    /// Channel `ch`'s `((center, center_lo), scale, shift)`.
    #[inline(always)]
    pub fn at(&self, ch: usize) -> ((T, T), T, T) {
        (self.center.at(ch), self.scale[ch], self.shift[ch])
    }
}

/// What a backward sweep takes as the gradient at batch norm's output:
/// `dy` itself ([`Epilogue::none`]), or, for batch norm fused with an
/// activation, `dh = act.grad(h, dy)` with `h` recomputed from `x` by
/// `affine` (the forward pass keeps no `h`).
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a, T, A> {
    /// The forward pass's output map.
    pub affine: Affine<'a, T>,
    /// The activation after it.
    pub act: A,
}

impl<T: Real> Epilogue<'static, T, Identity> {
    /// Plain batch norm: `dy` is the gradient at its output.
    pub fn none() -> Self {
        let center = TwoTerm { hi: &[], lo: &[] };
        Epilogue { affine: Affine { center, scale: &[], shift: &[] }, act: Identity }
    }
}

impl<T: Real, A: Activation<T>> Epilogue<'_, T, A> {
    /// The gradient at batch norm's output for one run of channel `ch`: `dy`
    /// itself, or `dh` written into `scratch` (at least as long as the run).
    #[inline(always)]
    fn dh<'s>(&self, x: &[T], dy: &'s [T], ch: usize, scratch: &'s mut [T]) -> &'s [T] {
        if A::IDENTITY {
            return dy;
        }
        let ((c, c_lo), sc, sh) = self.affine.at(ch);
        let out = &mut scratch[..dy.len()];
        for ((o, &v), &g) in out.iter_mut().zip(x).zip(dy) {
            *o = self.act.grad(((v - c) - c_lo) * sc + sh, g);
        }
        out
    }

    /// [`Self::dh`] over `dy`, in place.
    #[inline(always)]
    fn dh_in_place<'s>(&self, x: &[T], dy: &'s mut [T], ch: usize) -> &'s [T] {
        if !A::IDENTITY {
            let ((c, c_lo), sc, sh) = self.affine.at(ch);
            for (g, &v) in dy.iter_mut().zip(x) {
                *g = self.act.grad(((v - c) - c_lo) * sc + sh, *g);
            }
        }
        dy
    }

    /// One value's gradient at batch norm's output (`x` of channel `ch`).
    #[inline(always)]
    fn dh_at(&self, x: T, dy: T, ch: usize) -> T {
        if A::IDENTITY {
            return dy;
        }
        let ((c, c_lo), sc, sh) = self.affine.at(ch);
        self.act.grad(((x - c) - c_lo) * sc + sh, dy)
    }
}

multiversion! {
    /// `y = act(((x - center[c]) - center_lo[c])·scale[c] + shift[c])`.
    pub fn normalize<T: Real, A: Activation<T>>(x: &[T], y: &mut [T], c: usize, s: usize, affine: Affine<'_, T>, act: A) {
        if s == 1 {
            for (yr, xr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
                for i in 0..c {
                    let ((c, c_lo), sc, sh) = affine.at(i);
                    yr[i] = act.value(((xr[i] - c) - c_lo) * sc + sh);
                }
            }
            return;
        }
        let plane = |(idx, (yp, xp)): (usize, (&mut [T], &[T]))| {
            let ((mu, mu_lo), sc, sh) = affine.at(idx % c);
            for (o, &v) in yp.iter_mut().zip(xp) {
                *o = act.value(((v - mu) - mu_lo) * sc + sh);
            }
        };
        if y.len() >= PAR_MIN {
            y.par_chunks_mut(s).zip(x.par_chunks(s)).enumerate().for_each(plane);
        } else {
            y.chunks_mut(s).zip(x.chunks(s)).enumerate().for_each(plane);
        }
    }
}

multiversion! {
    /// Per channel: `(Σ dh, Σ dh·(x - mean))`, in f64, where `dh` is `dy`
    /// or what `ep` makes of it.
    pub fn backward_sums<T: Real, A: Activation<T>>(x: &[T], dy: &[T], ncs: Ncs, mean: TwoTerm<'_, T>, ep: Epilogue<'_, T, A>) -> (Vec<f64>, Vec<f64>) {
        let Ncs { c, s, .. } = ncs;
        if s == 1 {
            let (mut sdy, mut sdyx) = (vec![0.0f64; c], vec![0.0f64; c]);
            for (xr, gr) in x.chunks_exact(c).zip(dy.chunks_exact(c)) {
                for i in 0..c {
                    let g = ep.dh_at(xr[i], gr[i], i).as_f64();
                    sdy[i] += g;
                    sdyx[i] += g * ((xr[i] - mean.hi[i]).as_f64() - mean.lo[i].as_f64());
                }
            }
            return (sdy, sdyx);
        }
        backward_sums_by_channel(x, &Dense(dy), ncs, mean, ep)
    }
}

/// The coefficients of `dx = a·dh + b·(x - mean) + k`, per channel.
#[derive(Clone, Copy, Debug)]
pub struct GradCoefs<'a, T> {
    /// `a`: gamma·s.
    pub a: &'a [T],
    /// `b`: the term through the variance.
    pub b: &'a [T],
    /// `k`: the term through the mean.
    pub k: &'a [T],
}

multiversion! {
    /// `dx = a[c]·dh + b[c]·(x - mean[c]) + k[c]`, `dh` as in [`backward_sums`].
    pub fn backward_apply<T: Real, A: Activation<T>>(
        x: &[T],
        dy: &[T],
        dx: &mut [T],
        ncs: Ncs,
        mean: TwoTerm<'_, T>,
        coefs: GradCoefs<'_, T>,
        ep: Epilogue<'_, T, A>,
    ) {
        let Ncs { c, s, .. } = ncs;
        let GradCoefs { a, b, k } = coefs;
        if s == 1 {
            for ((dr, xr), gr) in dx.chunks_exact_mut(c).zip(x.chunks_exact(c)).zip(dy.chunks_exact(c)) {
                for i in 0..c {
                    dr[i] = a[i] * ep.dh_at(xr[i], gr[i], i) + b[i] * ((xr[i] - mean.hi[i]) - mean.lo[i]) + k[i];
                }
            }
            return;
        }
        // one (N, C) plane: its index, dx's run, and x's and dy's runs
        type Plane<'a, T> = (usize, (&'a mut [T], (&'a [T], &'a [T])));
        let plane = |scratch: &mut Vec<T>, (idx, (dp, (xp, gp))): Plane<'_, T>| {
            let ch = idx % c;
            let ((mu, mu_lo), a, b, k) = (mean.at(ch), a[ch], b[ch], k[ch]);
            let gp = ep.dh(xp, gp, ch, scratch);
            for ((o, &v), &g) in dp.iter_mut().zip(xp).zip(gp) {
                *o = a * g + b * ((v - mu) - mu_lo) + k;
            }
        };
        let scratch = || vec![T::zero(); if A::IDENTITY { 0 } else { s }];
        if dx.len() >= PAR_MIN {
            dx.par_chunks_mut(s).zip(x.par_chunks(s).zip(dy.par_chunks(s))).enumerate().for_each_init(scratch, plane);
        } else {
            let mut buffer = scratch();
            dx.chunks_mut(s).zip(x.chunks(s).zip(dy.chunks(s))).enumerate().for_each(|p| plane(&mut buffer, p));
        }
    }
}

/// Shares one output buffer between tasks that write disjoint runs (in NCHW
/// a channel's values are `N` runs, interleaved with the other channels', so
/// the buffer cannot be split with `chunks_mut`; the fused block's tasks
/// take groups of images through the same type).
pub struct ChannelOut<'a, T> {
    ptr: *mut T,
    len: usize,
    _buffer: std::marker::PhantomData<&'a mut [T]>,
}
// SAFETY: a ChannelOut is a `&mut [T]` in all but type; sending it to
// another thread is sending that borrow, sound for T: Send.
unsafe impl<T: Send> Send for ChannelOut<'_, T> {}
// SAFETY: shared between tasks, it hands out slices only through the unsafe
// `run`, whose callers promise disjoint runs (each task writes only the runs
// of its own channel), so no value is reached from two threads at once.
unsafe impl<T: Send> Sync for ChannelOut<'_, T> {}

impl<'a, T> ChannelOut<'a, T> {
    pub fn new(buffer: &'a mut [T]) -> Self {
        ChannelOut { ptr: buffer.as_mut_ptr(), len: buffer.len(), _buffer: std::marker::PhantomData }
    }

    /// The run of `len` values at `start`.
    ///
    /// # Safety
    /// No other task touches `start..start + len` while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn run(&self, start: usize, len: usize) -> &mut [T] {
        assert!(start + len <= self.len, "run {start}+{len} outside a buffer of {}", self.len);
        // SAFETY: start..start + len lies inside the borrowed buffer (asserted),
        // which lives for 'a; no other slice of it is alive (the caller's promise)
        std::slice::from_raw_parts_mut(self.ptr.add(start), len)
    }
}

/// For `(N, C, S)` input with `S > 1`: each channel's statistics and its
/// normalized output in one task, while the channel's values are still in
/// cache, so a large tensor is read from memory once and written once
/// (instead of three reads for statistics then normalization). Returns the
/// mean and biased variance; `y = (x - mean)·gamma/sqrt(var + eps) + beta`
/// with exactly the arithmetic of [`channel_stats`] followed by [`normalize`]
/// (then `act` applied to each value).
pub fn stats_and_normalize<T: Real, A: Activation<T>>(
    x: &[T],
    y: &mut [T],
    ncs: Ncs,
    (gamma, beta): (&[T], &[T]),
    eps: f64,
    act: A,
) -> (Vec<f64>, Vec<f64>) {
    let Ncs { n, c, s } = ncs;
    assert!(x.len() == n * c * s && y.len() == x.len() && s > 1, "stats_and_normalize: shapes");
    assert!(
        gamma.len() == c && beta.len() == c,
        "stats_and_normalize: {c} channels, gamma/beta of {}/{}",
        gamma.len(),
        beta.len()
    );
    let out = ChannelOut::new(y);
    per_channel(c, x.len(), |ch| {
        let (mean, var) = channel_mean_var(x, ncs, ch);
        let ((mu, mu_lo), scale, shift) = channel_affine(mean, var, eps, gamma[ch], beta[ch]);
        let stream = stream::applies::<T>(std::mem::size_of_val(x));
        for r in (0..n).map(|i| (i * c + ch) * s) {
            // SAFETY: run r belongs to channel ch alone and lies inside y (asserted sizes)
            let yr = unsafe { out.run(r, s) };
            // the streaming sweep subtracts one term
            if A::IDENTITY
                && stream
                && mu_lo == T::zero()
                && stream::affine(as_f32(&x[r..r + s]), as_f32_mut(yr), (mu, scale, shift).map_f32())
            {
                continue;
            }
            affine_run(&x[r..r + s], yr, ((mu, mu_lo), scale, shift), act);
        }
        stream::fence(stream);
        (mean, var)
    })
    .into_iter()
    .unzip()
}

/// For `(N, C, S)` input with `S > 1`: per channel, in one task while its
/// values are in cache, `(Σ dy, Σ dy·(x - mean))` and then
/// `dx = a·dy + b·(x - mean) + k` with the coefficients that `coef` computes from
/// those sums (`dh` in place of `dy` as `ep` says; `dy` as `grads` gives it, run
/// by run). Returns the sums. Same arithmetic as [`backward_sums`] then
/// [`backward_apply`].
pub fn backward_fused<T: Real, A: Activation<T>, G: GradRuns<T>>(
    (x, grads): (&[T], &G),
    dx: &mut [T],
    ncs: Ncs,
    mean: TwoTerm<'_, T>,
    ep: Epilogue<'_, T, A>,
    coef: impl Fn(usize, f64, f64) -> (T, T, T) + Sync + Send,
) -> (Vec<f64>, Vec<f64>) {
    let Ncs { n, c, s } = ncs;
    assert!(x.len() == n * c * s && grads.fits(ncs) && dx.len() == x.len() && s > 1, "backward_fused: shapes");
    let out = ChannelOut::new(dx);
    // where dh costs more to recompute than to keep, the first sweep leaves it in dx
    let keep = G::KEEP.then_some(&out);
    per_channel(c, x.len(), |ch| {
        let (sdy, sdyx) = channel_backward_sums(x, grads, ncs, ch, mean.at(ch), ep, keep);
        let (a, b, k) = coef(ch, sdy, sdyx);
        channel_backward_apply(x, grads, &out, ncs, (ch, mean.at(ch)), (a, b, k), ep);
        (sdy, sdyx)
    })
    .into_iter()
    .unzip()
}

/// [`backward_fused`] without `dx`: the per-channel sums only, for `S > 1`.
pub fn backward_sums_by_channel<T: Real, A: Activation<T>, G: GradRuns<T>>(
    x: &[T],
    grads: &G,
    ncs: Ncs,
    mean: TwoTerm<'_, T>,
    ep: Epilogue<'_, T, A>,
) -> (Vec<f64>, Vec<f64>) {
    assert!(x.len() == ncs.len() && grads.fits(ncs) && ncs.s > 1, "backward_sums_by_channel: shapes");
    per_channel(ncs.c, x.len(), |ch| channel_backward_sums(x, grads, ncs, ch, mean.at(ch), ep, None))
        .into_iter()
        .unzip()
}

/// Where the backward sweeps read the gradient at the output of batch
/// norm (or of its activation), one `(image, channel)` run at a time:
/// a tensor of x's shape ([`Dense`]), or the gradient of a 2x2 max
/// pooling after it ([`ReluMaxPooled`]), spread back onto each run.
pub trait GradRuns<T: Real>: Sync {
    /// Whether [`backward_fused`] keeps `dh` in dx's runs between its two
    /// sweeps rather than computing it twice.
    const KEEP: bool;
    /// What [`Self::run`] computes in, one per task.
    type Scratch;
    /// A scratch for runs of `s` values.
    fn scratch(&self, s: usize) -> Self::Scratch;
    /// Whether the gradient fits an input of shape `ncs`.
    fn fits(&self, ncs: Ncs) -> bool;
    /// The gradient over run `plane` (`i·C + ch`), whose input values are `x`.
    fn run<'s>(&'s self, plane: usize, ch: usize, x: &[T], scratch: &'s mut Self::Scratch) -> &'s [T];
    /// [`Self::run`] written into `out`.
    fn run_into(&self, plane: usize, ch: usize, x: &[T], scratch: &mut Self::Scratch, out: &mut [T]) {
        out.copy_from_slice(self.run(plane, ch, x, scratch));
    }
    /// Asks for run `plane`'s gradient to be brought into cache.
    fn prefetch(&self, plane: usize, s: usize);
}

/// The gradient as a tensor of x's shape.
pub struct Dense<'a, T>(pub &'a [T]);

impl<T: Real> GradRuns<T> for Dense<'_, T> {
    const KEEP: bool = false;
    type Scratch = ();
    fn scratch(&self, _s: usize) {}
    fn fits(&self, ncs: Ncs) -> bool {
        self.0.len() == ncs.len()
    }
    #[inline(always)]
    fn run<'s>(&'s self, plane: usize, _ch: usize, x: &[T], _scratch: &'s mut ()) -> &'s [T] {
        &self.0[plane * x.len()..][..x.len()]
    }
    fn prefetch(&self, plane: usize, s: usize) {
        super::prefetch(&self.0[plane * s..][..s]);
    }
}

/// The gradient at batch norm's output `h` when ReLU and 2x2 max pooling
/// with stride 2 over `h×w` planes follow it, given the gradient `dy` at
/// the pooling's output: per run, `relu(h)` recomputed from x (`affine`,
/// as the forward pass computed it), its window maxima found as
/// `MaxPool2d` finds them, and each window's gradient put at its maximum
/// ([`max_pool_2x2_backward`]) where that maximum is positive (ReLU passes
/// the gradient where `h > 0`, and at a window's maximum `h > 0` exactly
/// when `relu(h) > 0`). Bitwise the gradient that `MaxPool2d` then `ReLU`
/// hand back to batch norm.
pub struct ReluMaxPooled<'a, T> {
    pub dy: &'a [T],
    pub hw: (usize, usize),
    pub affine: Affine<'a, T>,
}

/// [`ReluMaxPooled`]'s scratch: a run's activated values, their window
/// maxima and positions, the gradient at the maxima, and the spread one.
pub struct PoolScratch<T> {
    values: Vec<T>,
    pooled: Vec<T>,
    at: Vec<u32>,
    masked: Vec<T>,
    grad: Vec<T>,
}

impl<T: Real> ReluMaxPooled<'_, T> {
    fn pooled_len(&self) -> usize {
        (self.hw.0 / 2) * (self.hw.1 / 2)
    }

    /// dh over run `plane` (channel `ch`, input `x`) into `dh`.
    #[inline(always)]
    fn spread(&self, plane: usize, ch: usize, x: &[T], scratch: &mut PoolScratch<T>, dh: &mut [T]) {
        let pooled = self.pooled_len();
        let PoolScratch { values, pooled: maxima, at, masked, .. } = scratch;
        affine_run(x, values, self.affine.at(ch), ReluAct);
        max_pool_2x2(values, self.hw, maxima, at);
        for ((m, &g), &v) in masked.iter_mut().zip(&self.dy[plane * pooled..][..pooled]).zip(maxima.iter()) {
            *m = ReluAct.grad(v, g);
        }
        max_pool_2x2_backward(masked, at, self.hw, dh);
    }
}

impl<T: Real> GradRuns<T> for ReluMaxPooled<'_, T> {
    // four sweeps over a run to recompute dh (the activation, the maxima, the mask, the spread)
    // against one to read it back from dx
    const KEEP: bool = true;
    type Scratch = PoolScratch<T>;
    fn scratch(&self, s: usize) -> PoolScratch<T> {
        let p = self.pooled_len();
        let zeros = |len| vec![T::zero(); len];
        PoolScratch { values: zeros(s), pooled: zeros(p), at: vec![0; p], masked: zeros(p), grad: zeros(s) }
    }
    fn fits(&self, ncs: Ncs) -> bool {
        self.hw.0 * self.hw.1 == ncs.s && self.dy.len() == ncs.n * ncs.c * self.pooled_len()
    }
    #[inline(always)]
    fn run<'s>(&'s self, plane: usize, ch: usize, x: &[T], scratch: &'s mut PoolScratch<T>) -> &'s [T] {
        let mut grad = std::mem::take(&mut scratch.grad);
        self.spread(plane, ch, x, scratch, &mut grad);
        scratch.grad = grad;
        &scratch.grad
    }
    #[inline(always)]
    fn run_into(&self, plane: usize, ch: usize, x: &[T], scratch: &mut PoolScratch<T>, dh: &mut [T]) {
        self.spread(plane, ch, x, scratch, dh);
    }
    fn prefetch(&self, plane: usize, _s: usize) {
        let pooled = self.pooled_len();
        super::prefetch(&self.dy[plane * pooled..][..pooled]);
    }
}

/// The affine map of one channel of [`stats_and_normalize`] from its
/// statistics: `((mu, mu_lo), scale, shift)`.
fn channel_affine<T: Real>(mean: f64, var: f64, eps: f64, gamma: T, beta: T) -> ((T, T), T, T) {
    let inv_std = 1.0 / (var + eps).sqrt();
    (split_mean::<T>(mean, inv_std), gamma * T::from_f64(inv_std), beta)
}

/// [`stats_and_normalize`] followed by 2x2 max pooling with stride 2 of its
/// output over `h×w` planes, writing only the pooled output `y` (a run's
/// activated values stay in a scratch in L1): bitwise batch norm, `act`
/// and `MaxPool2d(2, 2)` run one after the other.
pub fn stats_normalize_max_pool<T: Real, A: Activation<T>>(
    x: &[T],
    y: &mut [T],
    (ncs, hw): (Ncs, (usize, usize)),
    (gamma, beta): (&[T], &[T]),
    eps: f64,
    act: A,
) -> (Vec<f64>, Vec<f64>) {
    let Ncs { n, c, s } = ncs;
    let pooled = (hw.0 / 2) * (hw.1 / 2);
    assert!(x.len() == ncs.len() && hw.0 * hw.1 == s && y.len() == n * c * pooled, "stats_normalize_max_pool: shapes");
    assert!(gamma.len() == c && beta.len() == c, "stats_normalize_max_pool: {c} channels");
    let out = ChannelOut::new(y);
    per_channel(c, x.len(), |ch| {
        let (mean, var) = channel_mean_var(x, ncs, ch);
        let coef = channel_affine(mean, var, eps, gamma[ch], beta[ch]);
        let mut values = vec![T::zero(); s];
        for i in 0..n {
            let plane = i * c + ch;
            affine_run(&x[plane * s..][..s], &mut values, coef, act);
            // SAFETY: the pooled run of plane (i, ch) belongs to channel ch alone and lies inside y (asserted sizes)
            max_pool_2x2_values(&values, hw, unsafe { out.run(plane * pooled, pooled) });
        }
        (mean, var)
    })
    .into_iter()
    .unzip()
}

/// [`normalize`] followed by 2x2 max pooling with stride 2 over `h×w`
/// planes, writing only the pooled output (eval mode, or statistics
/// computed apart).
pub fn normalize_max_pool<T: Real, A: Activation<T>>(
    x: &[T],
    y: &mut [T],
    (ncs, hw): (Ncs, (usize, usize)),
    affine: Affine<'_, T>,
    act: A,
) {
    let Ncs { n, c, s } = ncs;
    let pooled = (hw.0 / 2) * (hw.1 / 2);
    assert!(x.len() == ncs.len() && hw.0 * hw.1 == s && y.len() == n * c * pooled, "normalize_max_pool: shapes");
    let plane = |values: &mut Vec<T>, (idx, (yp, xp)): (usize, (&mut [T], &[T]))| {
        affine_run(xp, values, affine.at(idx % c), act);
        max_pool_2x2_values(values, hw, yp);
    };
    if x.len() >= PAR_MIN {
        y.par_chunks_mut(pooled).zip(x.par_chunks(s)).enumerate().for_each_init(|| vec![T::zero(); s], plane);
    } else {
        let mut values = vec![T::zero(); s];
        y.chunks_mut(pooled).zip(x.chunks(s)).enumerate().for_each(|p| plane(&mut values, p));
    }
}

multiversion! {
    /// `y = act(((x - mu) - mu_lo)·scale + shift)` over one run.
    fn affine_run<T: Real, A: Activation<T>>(x: &[T], y: &mut [T], coef: ((T, T), T, T), act: A) {
        let ((mu, mu_lo), scale, shift) = coef;
        for (o, &v) in y.iter_mut().zip(x) {
            *o = act.value(((v - mu) - mu_lo) * scale + shift);
        }
    }
}

multiversion! {
    /// `(Σ dh, Σ dh·(x - mu))` over channel `ch` (`dh` as `ep` says), with
    /// `dh` left in `keep`'s runs when given.
    #[inline]
    fn channel_backward_sums<T: Real, A: Activation<T>, G: GradRuns<T>>(x: &[T], grads: &G, ncs: Ncs, ch: usize, mu: (T, T), ep: Epilogue<'_, T, A>, keep: Option<&ChannelOut<'_, T>>) -> (f64, f64) {
        let Ncs { n, c, s } = ncs;
        // hi + lo in f64 (exactly hi where lo is 0)
        let muv = F64x8::splat(mu.0.as_f64() + mu.1.as_f64());
        let run = |i: usize| (i * c + ch) * s..(i * c + ch + 1) * s;
        let prefetch = std::mem::size_of_val(x) >= super::PREFETCH_MIN_BYTES;
        let (mut sdy, mut sdyx) = (0.0, 0.0);
        let mut scratch = vec![T::zero(); if A::IDENTITY { 0 } else { s }];
        let mut grad_scratch = grads.scratch(s);
        for i in 0..n {
            if prefetch && i + 1 < n {
                super::prefetch(&x[run(i + 1)]);
                grads.prefetch(i * c + c + ch, s);
            }
            let r = run(i);
            let dh = match keep {
                Some(out) => {
                    // SAFETY: run r belongs to channel ch alone, whose task this is
                    let dh = unsafe { out.run(r.start, s) };
                    grads.run_into(i * c + ch, ch, &x[r.clone()], &mut grad_scratch, dh);
                    ep.dh_in_place(&x[r.clone()], dh, ch)
                }
                None => ep.dh(&x[r.clone()], grads.run(i * c + ch, ch, &x[r.clone()], &mut grad_scratch), ch, &mut scratch),
            };
            let (a, b) = sums2(dh, &x[r], |g, v| (g, g * (v - muv)));
            sdy += a;
            sdyx += b;
        }
        (sdy, sdyx)
    }
}

multiversion! {
    /// `dx = a·dh + b·(x - mu) + k` over channel `ch` (`dh` as `ep` says, or
    /// already in dx's runs where `G::KEEP`).
    #[inline]
    fn channel_backward_apply<T: Real, A: Activation<T>, G: GradRuns<T>>(
        x: &[T],
        grads: &G,
        out: &ChannelOut<'_, T>,
        ncs: Ncs,
        channel: (usize, (T, T)),
        abk: (T, T, T),
        ep: Epilogue<'_, T, A>,
    ) {
        let (Ncs { n, c, s }, (ch, (mu, mu_lo)), (a, b, k)) = (ncs, channel, abk);
        let mut scratch = vec![T::zero(); if A::IDENTITY { 0 } else { s }];
        let mut grad_scratch = grads.scratch(s);
        // Backwards: a channel of a large tensor (1.6 MB of x and dy at
        // (64,64,56,56)) does not fit in L2, and a forward second pass would
        // find every run evicted; backwards it starts with the runs just read.
        let stream = stream::applies::<T>(std::mem::size_of_val(x));
        for i in (0..n).rev() {
            let r = (i * c + ch) * s;
            // SAFETY: run r belongs to channel ch alone, whose task this is
            let dr = unsafe { out.run(r, s) };
            let xr = &x[r..r + s];
            if G::KEEP {
                for (o, &v) in dr.iter_mut().zip(xr) {
                    *o = a * *o + b * ((v - mu) - mu_lo) + k;
                }
                continue;
            }
            let dy = grads.run(i * c + ch, ch, xr, &mut grad_scratch);
            let dyr = ep.dh(xr, dy, ch, &mut scratch);
            // the streaming sweep subtracts one term
            if stream
                && mu_lo == T::zero()
                && stream::bn_gradient(as_f32(xr), as_f32(dyr), as_f32_mut(dr), (a, b, k, mu).map_f32())
            {
                continue;
            }
            for ((o, &v), &g) in dr.iter_mut().zip(xr).zip(dyr) {
                *o = a * g + b * ((v - mu) - mu_lo) + k;
            }
        }
        stream::fence(stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aligned::AlignedVec;

    /// Past 32 MiB the output sweeps use streaming stores where a run is
    /// whole aligned vectors: the same values, bit for bit, as the plain
    /// loops, on runs that stream (2^20 values) and runs that cannot (3 more).
    #[test]
    fn streaming_sweeps_write_what_the_plain_loops_write() {
        for s in [1 << 20, (1 << 20) + 3] {
            let ncs = Ncs { n: 4, c: 2, s };
            let (c, len) = (ncs.c, ncs.len());
            assert!(super::super::stream::applies::<f32>(len * 4) == crate::isa::avx512());
            let values = |seed: usize| -> Vec<f32> {
                (0..len).map(|i| (((i * 7919 + seed) % 1000) as f32) / 500.0 - 1.0).collect()
            };
            let (x, dy) = (AlignedVec::from_slice(&values(1)), AlignedVec::from_slice(&values(2)));
            let (x, dy) = (x.as_slice(), dy.as_slice());
            let (gamma, beta) = ([1.5f32, 0.5], [0.25f32, -1.0]);
            let mut y = AlignedVec::from_elem(f32::NAN, len);
            let (mean, var) = stats_and_normalize(x, y.as_mut_slice(), ncs, (&gamma, &beta), 1e-5, Identity);
            let (mu, mu_lo): (Vec<f32>, Vec<f32>) =
                mean.iter().zip(&var).map(|(&m, &v)| split_mean::<f32>(m, 1.0 / (v + 1e-5).sqrt())).unzip();
            let mean2 = TwoTerm { hi: &mu, lo: &mu_lo };
            let scale: Vec<f32> = (0..c).map(|ch| gamma[ch] * (1.0 / (var[ch] + 1e-5).sqrt()) as f32).collect();
            let mut want = vec![f32::NAN; len];
            normalize(x, &mut want, c, s, Affine { center: mean2, scale: &scale, shift: &beta }, Identity);
            assert!(y.as_slice().iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "forward, runs of {s}");

            let coef = |ch: usize, sum_dy: f64, sum_dyx: f64| {
                (0.5 + ch as f32, (sum_dyx * 1e-7) as f32, (sum_dy * 1e-7) as f32)
            };
            let mut dx = AlignedVec::from_elem(f32::NAN, len);
            let (sdy, sdyx) = backward_fused((x, &Dense(dy)), dx.as_mut_slice(), ncs, mean2, Epilogue::none(), coef);
            let coefs: Vec<(f32, f32, f32)> = (0..c).map(|ch| coef(ch, sdy[ch], sdyx[ch])).collect();
            let part = |f: fn(&(f32, f32, f32)) -> f32| coefs.iter().map(f).collect::<Vec<f32>>();
            let (a, b, k) = (part(|t| t.0), part(|t| t.1), part(|t| t.2));
            let mut want = vec![f32::NAN; len];
            backward_apply(x, dy, &mut want, ncs, mean2, GradCoefs { a: &a, b: &b, k: &k }, Epilogue::none());
            assert!(dx.as_slice().iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "backward, runs of {s}");
        }
    }
}
