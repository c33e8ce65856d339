//! Batch norm, sigmoid and 2x2 average pooling in one layer: the chapter's
//! `BatchNorm2d -> Sigmoid -> AvgPool2d(2, 2)` after each convolution, in
//! one sweep over memory instead of three forward and three backward.
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

use rayon::prelude::*;

use super::{BatchNorm, BatchNormConfig, BnImpl, BnParts};
use crate::kernels::batch_norm::PAR_MIN;
use crate::layers::activation::sigmoid;
use crate::layers::{Layer, Mode, StateMut};
use crate::real::Real;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{Error, Result};

pub struct BnSigmoidPool<T: Real = f32> {
    bn: BatchNorm<T>,
    /// (C, H, W) of the input.
    dims: (usize, usize, usize),
    /// The sigmoid's output, kept for the backward pass.
    s: Vec<T>,
    y: Tensor<T>,
    dz: Tensor<T>,
}

impl<T: Real> BnSigmoidPool<T> {
    /// Only full batch norm: the lite variants run as separate layers.
    pub fn new(config: BatchNormConfig) -> Result<Self> {
        if config.parts != BnParts::Full {
            return Err(Error::config("fused block", "only full batch norm is fused with sigmoid and pooling"));
        }
        Ok(BnSigmoidPool {
            bn: BatchNorm::with_impl(config, BnImpl::Fused),
            dims: (0, 0, 0),
            s: Vec::new(),
            y: Tensor::default(),
            dz: Tensor::default(),
        })
    }
}

/// Applies `f(plane index, plane)` to every `(H·W)`-sized plane, in parallel when large.
fn for_planes<T: Real, F>(data: &mut [T], plane: usize, f: F)
where
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    if data.len() >= PAR_MIN {
        data.par_chunks_mut(plane).enumerate().for_each(|(i, p)| f(i, p));
    } else {
        data.chunks_mut(plane).enumerate().for_each(|(i, p)| f(i, p));
    }
}

impl<T: Real> Layer<T> for BnSigmoidPool<T> {
    fn kind(&self) -> String {
        "BatchNorm2d+Sigmoid+AvgPool2d".into()
    }

    fn slots(&self) -> usize {
        3
    }

    fn build(&mut self, input: &[usize], rng: &mut Rng) -> Result<Vec<usize>> {
        if input.len() != 3 || input[1] % 2 != 0 || input[2] % 2 != 0 || input[1] == 0 || input[2] == 0 {
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
        let (n, c, _) = self.bn.prepare(z, mode)?;
        let (_, h, w) = self.dims;
        let (ho, wo) = (h / 2, w / 2);
        let scale: Vec<T> = (0..c).map(|ch| self.bn.gamma_at(ch) * self.bn.saved.inv_std[ch]).collect();
        let shift: Vec<T> = (0..c).map(|ch| self.bn.beta_at(ch)).collect();
        let center = &self.bn.saved.center;
        self.s.resize(z.numel(), T::zero());
        self.y.resize(&[n, c, ho, wo]);
        let quarter = T::from_f64(0.25);
        let zd = z.data();
        let (s_buf, y_buf) = (&mut self.s, self.y.data_mut());
        let work = |(idx, (sp, yp)): (usize, (&mut [T], &mut [T]))| {
            let ch = idx % c;
            let (m, sc, sh) = (center[ch], scale[ch], shift[ch]);
            let zp = &zd[idx * h * w..(idx + 1) * h * w];
            for (v, &x) in sp.iter_mut().zip(zp) {
                *v = sigmoid((x - m) * sc + sh);
            }
            for (oh, yr) in yp.chunks_exact_mut(wo).enumerate() {
                let (r0, r1) = (&sp[2 * oh * w..][..w], &sp[(2 * oh + 1) * w..][..w]);
                for (ow, o) in yr.iter_mut().enumerate() {
                    *o = ((r0[2 * ow] + r0[2 * ow + 1]) + (r1[2 * ow] + r1[2 * ow + 1])) * quarter;
                }
            }
        };
        if zd.len() >= PAR_MIN {
            s_buf.par_chunks_mut(h * w).zip(y_buf.par_chunks_mut(ho * wo)).enumerate().for_each(work);
        } else {
            s_buf.chunks_mut(h * w).zip(y_buf.chunks_mut(ho * wo)).enumerate().for_each(work);
        }
        Ok(&self.y)
    }

    fn backward(&mut self, z: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        let (n, c, sp) = self.bn.view(z)?;
        let (_, h, w) = self.dims;
        let (ho, wo) = (h / 2, w / 2);
        if dy.shape() != [n, c, ho, wo] {
            return Err(Error::shape(
                self.kind(),
                format!("gradient shape {:?}, expected {:?}", dy.shape(), [n, c, ho, wo]),
            ));
        }
        let (zd, dyd, s) = (z.data(), dy.data(), &self.s);
        let mean = &self.bn.saved.mean;
        let quarter = T::from_f64(0.25);
        // dh for one row of one plane: the pooled gradient spread over its
        // window, times the sigmoid's derivative
        // dh for one whole plane (whole planes keep the loops long enough to
        // vectorize): the pooled gradient spread over its window, times the
        // sigmoid's derivative
        let dh_plane = |plane: usize, out: &mut [T]| {
            for (r, orow) in out.chunks_exact_mut(w).enumerate() {
                let g = &dyd[(plane * ho + r / 2) * wo..][..wo];
                for (pair, &gv) in orow.chunks_exact_mut(2).zip(g) {
                    pair[0] = gv * quarter;
                    pair[1] = gv * quarter;
                }
            }
            for (o, &sv) in out.iter_mut().zip(&s[plane * h * w..(plane + 1) * h * w]) {
                *o = *o * sv * (T::one() - sv);
            }
        };
        // Σ dh and Σ dh·(z - mean) per channel, each channel on one thread in
        // a fixed order
        let sums = |ch: usize| {
            let mu = mean[ch];
            let mut dh = vec![T::zero(); h * w];
            let mut centred = vec![T::zero(); h * w];
            let (mut a, mut b) = (0.0f64, 0.0f64);
            for i in 0..n {
                let plane = i * c + ch;
                dh_plane(plane, &mut dh);
                for ((o, &d), &x) in centred.iter_mut().zip(&dh).zip(&zd[plane * h * w..(plane + 1) * h * w]) {
                    *o = d * (x - mu);
                }
                a += crate::kernels::sum(&dh).as_f64();
                b += crate::kernels::sum(&centred).as_f64();
            }
            (a, b)
        };
        let (dbeta, sum_dh_xmu): (Vec<f64>, Vec<f64>) =
            if zd.len() >= PAR_MIN { (0..c).into_par_iter().map(sums).unzip() } else { (0..c).map(sums).unzip() };
        let inv_std = &self.bn.saved.inv_std;
        let m = (n * sp) as f64;
        let dgamma: Vec<f64> = (0..c).map(|ch| sum_dh_xmu[ch] * inv_std[ch].as_f64()).collect();
        if need_dx {
            let batch = self.bn.saved.batch_stats;
            let coef: Vec<(T, T, T)> = (0..c)
                .map(|ch| {
                    let a = (self.bn.gamma_at(ch) * inv_std[ch]).as_f64();
                    let is = inv_std[ch].as_f64();
                    let (b, k) =
                        if batch { (-a * is * is * sum_dh_xmu[ch] / m, -a * dbeta[ch] / m) } else { (0.0, 0.0) };
                    (T::from_f64(a), T::from_f64(b), T::from_f64(k))
                })
                .collect();
            self.dz.resize(z.shape());
            for_planes(self.dz.data_mut(), h * w, |plane, out| {
                let ch = plane % c;
                let (a, b, k) = coef[ch];
                let mu = mean[ch];
                dh_plane(plane, out);
                for (d, &x) in out.iter_mut().zip(&zd[plane * h * w..(plane + 1) * h * w]) {
                    *d = a * *d + b * (x - mu) + k;
                }
            });
        }
        self.bn.set_affine_grads(&dgamma, &dbeta);
        Ok(&self.dz)
    }

    fn output(&self) -> &Tensor<T> {
        &self.y
    }
    fn grad_input(&self) -> &Tensor<T> {
        &self.dz
    }
    fn state_mut(&mut self) -> Vec<(&'static str, StateMut<'_, T>)> {
        self.bn.state_mut()
    }
    fn as_batch_norm_mut(&mut self) -> Option<&mut BatchNorm<T>> {
        Some(&mut self.bn)
    }
}
