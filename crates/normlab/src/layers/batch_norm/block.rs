//! Batch norm, sigmoid and 2x2 average pooling in one layer: the chapter's
//! `BatchNorm2d -> Sigmoid -> AvgPool2d(2, 2)` after each convolution, in
//! two passes over the input each way (statistics, then the output; the
//! gradient's sums, then the gradient) instead of three layers' worth, with
//! the batch split by images across threads like the convolutions around it.
//! It computes exactly what the three layers compute (same formulas; it
//! occupies their three slots of the `nn.Sequential`, so state names match
//! PyTorch), and exists only for speed; `bn_lenet_scratch` keeps them apart.
//!
//! ```text
//! forward, per element:  h = (z - mean)·scale + beta,  s = sigmoid(h)
//!                        y[oh][ow] = (1/4) Σ_{2x2 window} s
//! backward:              dh = (dy[h/2][w/2] / 4) · s · (1 - s)
//!                        then batch norm's backward on dh (see fused.rs)
//! ```
//!
//! `s` is not kept: the backward pass recomputes it from `z` and the saved
//! statistics (bitwise the same values), which costs less than writing and
//! re-reading a tensor the size of `z` through memory.

use rayon::prelude::*;

use super::{BatchNorm, BnImpl, BnParts};
use crate::kernels::avg_pool_2x2;
use crate::kernels::batch_norm::{ChannelOut, PAR_MIN};
use crate::kernels::sigmoid::{self, PooledPlane};
use crate::kernels::stats::{Ncs, ShiftedSums};
use crate::layers::{check_forward_ran, check_grad, Layer, Mode, StateMut, StateName};
use crate::real::Real;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// `BatchNorm2d(C) -> Sigmoid -> AvgPool2d(2, 2)` in one layer (three
/// `nn.Sequential` entries), fused batch norm only; see the module docs.
pub struct BnSigmoidPool<T: Real = f32> {
    pub(super) bn: BatchNorm<T>,
    /// (C, H, W) of the input.
    dims: (usize, usize, usize),
    y: Tensor<T>,
    dz: Tensor<T>,
}

impl<T: Real> BnSigmoidPool<T> {
    /// The block made of a built fused full batch norm over `(C, H, W)`
    /// with even H and W; `bn` back otherwise.
    pub(crate) fn from_built(bn: Box<BatchNorm<T>>) -> std::result::Result<Self, Box<BatchNorm<T>>> {
        let fits = bn.imp == BnImpl::Fused && bn.config.parts == BnParts::Full;
        match bn.example[..] {
            [c, h, w] if fits && h > 0 && w > 0 && h % 2 == 0 && w % 2 == 0 => {
                Ok(BnSigmoidPool { bn: *bn, dims: (c, h, w), y: Tensor::default(), dz: Tensor::default() })
            }
            _ => Err(bn),
        }
    }

    /// `(mean, scale, shift)` of channel `ch` as the last forward pass used
    /// them: `h = (z - mean)·scale + shift`.
    pub(super) fn coef(&self, ch: usize) -> (T, T, T) {
        let bn = &self.bn;
        (bn.saved.center[ch], bn.gamma_at(ch) * bn.saved.inv_std[ch], bn.beta_at(ch))
    }
}

/// One plane: `s = sigmoid((z - mean)·scale + shift)`.
#[inline]
fn sigmoid_plane<T: Real>(z: &[T], coef: (T, T, T), s: &mut [T]) {
    sigmoid::sigmoid_affine_fast(z, coef, s);
}

/// One plane: [`sigmoid_plane`] into `s`, then `y` = the 2x2 means of `s`
/// (`w` is the plane's width).
#[inline]
fn sigmoid_pool_plane<T: Real>(z: &[T], coef: (T, T, T), w: usize, s: &mut [T], y: &mut [T]) {
    sigmoid_plane(z, coef, s);
    avg_pool_2x2(s, w, y);
}

/// Images per task when a pass splits the batch: a fixed number, so the
/// partial sums, and so the results, do not depend on the thread count.
const IMAGES_PER_GROUP: usize = 8;

/// `f(images)` for consecutive groups of [`IMAGES_PER_GROUP`] images, in
/// parallel when the tensor (`total` values) is large; results in order.
fn by_image_groups<R: Send>(n: usize, total: usize, f: impl Fn(std::ops::Range<usize>) -> R + Sync + Send) -> Vec<R> {
    let groups = n.div_ceil(IMAGES_PER_GROUP);
    let images = |g: usize| g * IMAGES_PER_GROUP..((g + 1) * IMAGES_PER_GROUP).min(n);
    if total >= PAR_MIN && groups > 1 {
        (0..groups).into_par_iter().map(|g| f(images(g))).collect()
    } else {
        (0..groups).map(|g| f(images(g))).collect()
    }
}

/// Batch norm's backward from the block's per-channel sums `(Σ dh,
/// Σ dh·(z - mean))` over `m` values each: sets gamma's and beta's
/// gradients and returns per channel `(a, b, k)` of
/// `dz = a·dh + b·(z - mean) + k` (`b = k = 0` with running statistics).
pub(super) fn finish_backward<T: Real>(bn: &mut BatchNorm<T>, sums: &[(f64, f64)], m: f64) -> Vec<(T, T, T)> {
    let (inv_std, batch) = (&bn.saved.inv_std, bn.saved.batch_stats);
    let apply = sums
        .iter()
        .enumerate()
        .map(|(ch, &(sum_dh, sum_dh_xmu))| {
            let a = (bn.gamma_at(ch) * inv_std[ch]).as_f64();
            let is = inv_std[ch].as_f64();
            let (b, k) = if batch { (-a * is * is * sum_dh_xmu / m, -a * sum_dh / m) } else { (0.0, 0.0) };
            (T::from_f64(a), T::from_f64(b), T::from_f64(k))
        })
        .collect();
    let dbeta: Vec<f64> = sums.iter().map(|s| s.0).collect();
    let dgamma: Vec<f64> = sums.iter().zip(inv_std).map(|(s, is)| s.1 * is.as_f64()).collect();
    bn.set_affine_grads(&dgamma, &dbeta);
    apply
}

impl<T: Real> Layer<T> for BnSigmoidPool<T> {
    fn kind(&self) -> String {
        "BatchNorm2d+Sigmoid+AvgPool2d".into()
    }

    fn slots(&self) -> usize {
        3
    }

    fn build(&mut self, input: &[usize], rng: &mut Rng) -> Result<Vec<usize>> {
        if input.len() != 3
            || !input[1].is_multiple_of(2)
            || !input[2].is_multiple_of(2)
            || input[1] == 0
            || input[2] == 0
        {
            return Err(Error::shape(
                "BatchNorm2d+Sigmoid+AvgPool2d",
                format!("expected (N, C, H, W) with even H and W, got one example of shape {input:?}"),
            ));
        }
        self.bn.build(input, rng)?;
        self.dims = (input[0], input[1], input[2]);
        Ok(vec![input[0], input[1] / 2, input[2] / 2])
    }

    fn forward(&mut self, z: &Tensor<T>, mode: Mode) -> Result<&Tensor<T>> {
        let (_, h, w) = self.dims;
        let (ho, wo) = (h / 2, w / 2);
        let (hw, pooled) = (h * w, ho * wo);
        let zd = z.data();
        let Ncs { n, c, .. } = self.bn.view(z)?;
        self.y.resize(&[n, c, ho, wo]);
        // Training: the statistics from per-group partial sums, then (below)
        // sigmoid and pooling. Both passes split the batch by images, as the
        // convolutions before and after do, so each core reads the planes
        // it wrote itself (split by channels, half of every channel had to
        // come over from the other core: 0.24 against 0.17 ms at
        // (128,6,24,24), 2 threads).
        self.bn.prepare_using(z, mode, |_, Ncs { n, c, s: sp }| {
            // called only for n·sp ≥ 1 (see prepare_with_shape), so there
            // is a first image to index and a first group of partial sums
            let shifts: Vec<T> = (0..c).map(|ch| zd[ch * sp]).collect();
            let partials = by_image_groups(n, zd.len(), |images| {
                let mut sums: Vec<ShiftedSums> = shifts.iter().map(|&k| ShiftedSums::new(k)).collect();
                for i in images {
                    for (ch, sums) in sums.iter_mut().enumerate() {
                        sums.add(&zd[(i * c + ch) * sp..][..sp]);
                    }
                }
                sums
            });
            let mut total = partials[0].clone();
            for group in &partials[1..] {
                total.iter_mut().zip(group).for_each(|(t, g)| t.absorb(g));
            }
            (total.iter().map(ShiftedSums::mean_var).unzip(), false)
        })?;
        // with the batch's statistics in training, the running ones in evaluation
        let coef: Vec<(T, T, T)> = (0..c).map(|ch| self.coef(ch)).collect();
        let work = |s: &mut Vec<T>, (plane, y): (usize, &mut [T])| {
            sigmoid_pool_plane(&zd[plane * hw..][..hw], coef[plane % c], w, s, y);
        };
        let y = self.y.data_mut();
        if zd.len() >= PAR_MIN {
            y.par_chunks_mut(pooled).enumerate().for_each_init(|| vec![T::zero(); hw], work);
        } else {
            let mut s = vec![T::zero(); hw];
            y.chunks_mut(pooled).enumerate().for_each(|p| work(&mut s, p));
        }
        Ok(&self.y)
    }

    fn backward(&mut self, z: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        let Ncs { n, c, s: sp } = self.bn.view(z)?;
        let (_, h, w) = self.dims;
        let (ho, wo) = (h / 2, w / 2);
        // the statistics come from the forward pass
        check_forward_ran(&self.kind(), &self.bn.saved.shape, z.shape())?;
        check_grad(&self.kind(), dy, &[n, c, ho, wo])?;
        let (hw, pooled) = (h * w, ho * wo);
        let (zd, dyd) = (z.data(), dy.data());
        let coefs: Vec<(T, T, T)> = (0..c).map(|ch| self.coef(ch)).collect();
        let mean = self.bn.saved.mean.clone();
        let m = (n * sp) as f64;
        if need_dx {
            self.dz.resize(z.shape());
        }
        // Two passes split by images, as in the forward pass: dh (kept in
        // dz's planes) with per-group partial sums of dh and dh·(z - mean);
        // then dz = a·dh + b·(z - mean) + k from the totals.
        let dz_out = ChannelOut::new(self.dz.data_mut());
        let partials = by_image_groups(n, zd.len(), |images| {
            let mut scratch = vec![T::zero(); if need_dx { 0 } else { hw }];
            let mut spread = vec![T::zero(); 2 * w];
            let mut sums = vec![(0.0f64, 0.0f64); c];
            for plane in images.start * c..images.end * c {
                let (ch, zp) = (plane % c, &zd[plane * hw..][..hw]);
                // SAFETY: the planes of this group's images belong to this task alone
                let dh = if need_dx { unsafe { dz_out.run(plane * hw, hw) } } else { &mut scratch[..] };
                let g = &dyd[plane * pooled..][..pooled];
                let inputs = PooledPlane { z: zp, g, width: w, coef: coefs[ch], mu: mean[ch] };
                let (a, b) = sigmoid::pooled_sigmoid_grad_fast(&inputs, dh, &mut spread);
                sums[ch].0 += a;
                sums[ch].1 += b;
            }
            sums
        });
        let mut sums = vec![(0.0f64, 0.0f64); c];
        for group in &partials {
            for (total, part) in sums.iter_mut().zip(group) {
                total.0 += part.0;
                total.1 += part.1;
            }
        }
        let apply = finish_backward(&mut self.bn, &sums, m);
        if need_dx {
            by_image_groups(n, zd.len(), |images| {
                for plane in images.start * c..images.end * c {
                    let ((a, b, k), mu) = (apply[plane % c], mean[plane % c]);
                    // SAFETY: as above
                    let out = unsafe { dz_out.run(plane * hw, hw) };
                    for (d, &x) in out.iter_mut().zip(&zd[plane * hw..][..hw]) {
                        *d = a * *d + b * (x - mu) + k;
                    }
                }
            });
        }
        Ok(&self.dz)
    }

    fn output(&self) -> &Tensor<T> {
        &self.y
    }
    fn grad_input(&self) -> &Tensor<T> {
        &self.dz
    }
    fn state_mut(&mut self) -> Vec<(StateName, StateMut<'_, T>)> {
        self.bn.state_mut()
    }
    fn as_batch_norm_mut(&mut self) -> Option<&mut BatchNorm<T>> {
        Some(&mut self.bn)
    }
}
