//! Group normalization (Wu & He, 2018), as `nn.GroupNorm(num_groups,
//! num_channels, eps=1e-5, affine=True)`: the research exercise of the
//! chapter that normalizes without the batch.
//!
//! For an input `(N, C, *)` the C channels are split into G groups of C/G
//! consecutive channels. Each example's group, its R = (C/G)·(spatial size)
//! values, is normalized on its own; gamma and beta are per channel:
//!
//! ```text
//! mean_ng = (1/R) Σ x          var_ng = (1/R) Σ (x - mean_ng)²      (biased)
//! x_hat   = (x - mean_ng) / sqrt(var_ng + eps)
//! y       = gamma_c · x_hat + beta_c
//! backward, per (n, g), with g = dy · gamma_c:
//! dx      = inv_std_ng · (g - mean(g) - x_hat · mean(g · x_hat))
//! dgamma_c = Σ_{n, spatial} dy · x_hat      dbeta_c = Σ_{n, spatial} dy
//! ```
//!
//! G = 1 is layer norm with per-channel affine parameters; G = C is instance
//! norm. No running statistics: training and prediction behave the same, and
//! the result for one example does not depend on the others in the batch.

use rayon::prelude::*;

use super::{check_built, check_forward_ran, check_grad, Layer, Mode, StateMut, StateName, PAR_MIN};
use crate::kernels::stats::row_mean_var;
use crate::real::Real;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Group normalization, as `nn.GroupNorm(num_groups, C)` (C inferred at
/// build); the formulas are in the module docs.
pub struct GroupNorm<T: Real = f32> {
    groups: usize,
    eps: f64,
    affine: bool,
    example: Vec<usize>,
    channels: usize,
    /// Values per channel of one example (the spatial size; 1 for `(N, C)`).
    spatial: usize,
    weight: Tensor<T>,
    bias: Tensor<T>,
    weight_grad: Tensor<T>,
    bias_grad: Tensor<T>,
    /// Per (example, group) row: mean and `1/sqrt(var + eps)`.
    mean: Vec<T>,
    inv_std: Vec<T>,
    y: Tensor<T>,
    dx: Tensor<T>,
}

impl<T: Real> GroupNorm<T> {
    /// `nn.GroupNorm(num_groups, C)`; C is taken from the input at build time
    /// and must be a multiple of `num_groups`.
    pub fn new(num_groups: usize) -> Self {
        GroupNorm {
            groups: num_groups,
            eps: 1e-5,
            affine: true,
            example: Vec::new(),
            channels: 0,
            spatial: 0,
            weight: Tensor::default(),
            bias: Tensor::default(),
            weight_grad: Tensor::default(),
            bias_grad: Tensor::default(),
            mean: Vec::new(),
            inv_std: Vec::new(),
            y: Tensor::default(),
            dx: Tensor::default(),
        }
    }
    /// Added to the variance before the square root (PyTorch's `eps`, 1e-5).
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
    /// Learnable per-channel gamma and beta (PyTorch's `affine`, on by default).
    pub fn affine(mut self, on: bool) -> Self {
        self.affine = on;
        self
    }
    /// The number of groups G (PyTorch's `num_groups`).
    pub fn num_groups(&self) -> usize {
        self.groups
    }
    /// Values in one (example, group) row: (C/G)·spatial.
    fn row(&self) -> usize {
        self.channels / self.groups * self.spatial
    }
}

/// Mean and `1/sqrt(var + eps)` of one (example, group) row, in f64, in
/// one pass shifted by the row's first value ([`crate::kernels::stats`],
/// shared with batch norm and layer norm).
fn row_stats<T: Real>(x: &[T], eps: f64) -> (T, T) {
    let (mean, var) = row_mean_var(x);
    (T::from_f64(mean), T::from_f64(1.0 / (var + eps).sqrt()))
}

impl<T: Real> Layer<T> for GroupNorm<T> {
    fn kind(&self) -> String {
        "GroupNorm".into()
    }

    fn build(&mut self, input: &[usize], _rng: &mut Rng) -> Result<Vec<usize>> {
        if input.is_empty() {
            return Err(Error::shape("GroupNorm", "expected input (N, C, *), got one example with no dimensions"));
        }
        let c = input[0];
        if self.groups == 0 || c == 0 || !c.is_multiple_of(self.groups) {
            return Err(Error::shape(
                "GroupNorm",
                format!(
                    "{} groups cannot split {c} channels: the number of channels must be a multiple of the number of groups",
                    self.groups
                ),
            ));
        }
        if self.eps.is_nan() || self.eps <= 0.0 {
            return Err(Error::config("group-norm eps", "must be positive"));
        }
        self.example = input.to_vec();
        self.channels = c;
        self.spatial = input[1..].iter().product();
        if self.spatial == 0 {
            return Err(Error::shape("GroupNorm", format!("empty input {input:?}")));
        }
        if self.affine {
            self.weight = Tensor::full(&[c], T::one());
            self.bias = Tensor::zeros(&[c]);
            self.weight_grad = Tensor::zeros(&[c]);
            self.bias_grad = Tensor::zeros(&[c]);
        }
        Ok(input.to_vec())
    }

    #[allow(clippy::type_complexity)] // the zipped chunk iterators
    fn forward(&mut self, x: &Tensor<T>, _mode: Mode) -> Result<&Tensor<T>> {
        check_built("GroupNorm", self.channels > 0)?;
        super::check_input("GroupNorm", x, &self.example)?;
        let d = self.row();
        let rows = x.numel() / d;
        let (eps, affine, groups, spatial) = (self.eps, self.affine, self.groups, self.spatial);
        let per_group = self.channels / groups;
        self.y.resize(x.shape());
        self.mean.resize(rows, T::zero());
        self.inv_std.resize(rows, T::zero());
        let (gamma, beta) = (self.weight.data(), self.bias.data());
        // row r is example r / G, group r % G; its channels start at (r % G)·(C/G)
        let body = |(r, ((yr, xr), (mu, is))): (usize, ((&mut [T], &[T]), (&mut T, &mut T)))| {
            let (m, i) = row_stats(xr, eps);
            *mu = m;
            *is = i;
            let c0 = (r % groups) * per_group;
            for (k, (yc, xc)) in yr.chunks_mut(spatial).zip(xr.chunks(spatial)).enumerate() {
                let (g, b) = if affine { (gamma[c0 + k], beta[c0 + k]) } else { (T::one(), T::zero()) };
                for (yv, &xv) in yc.iter_mut().zip(xc) {
                    *yv = g * ((xv - m) * i) + b;
                }
            }
        };
        let (y, mean, inv_std) = (self.y.data_mut(), &mut self.mean, &mut self.inv_std);
        if x.numel() >= PAR_MIN {
            y.par_chunks_mut(d)
                .zip(x.data().par_chunks(d))
                .zip(mean.par_iter_mut().zip(inv_std.par_iter_mut()))
                .enumerate()
                .for_each(body);
        } else {
            y.chunks_mut(d)
                .zip(x.data().chunks(d))
                .zip(mean.iter_mut().zip(inv_std.iter_mut()))
                .enumerate()
                .for_each(body);
        }
        Ok(&self.y)
    }

    #[allow(clippy::type_complexity)]
    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        check_built("GroupNorm", self.channels > 0)?;
        super::check_input("GroupNorm", x, &self.example)?;
        // the groups' statistics come from the forward pass
        check_forward_ran("GroupNorm", self.y.shape(), x.shape())?;
        check_grad("GroupNorm", dy, x.shape())?;
        let d = self.row();
        let (groups, spatial, affine) = (self.groups, self.spatial, self.affine);
        let per_group = self.channels / groups;
        let (mean, inv_std) = (&self.mean, &self.inv_std);
        if affine {
            // rows in order: the same sums for any thread count
            let (dg, db) = (self.weight_grad.data_mut(), self.bias_grad.data_mut());
            dg.fill(T::zero());
            db.fill(T::zero());
            for (r, (xr, gr)) in x.data().chunks(d).zip(dy.data().chunks(d)).enumerate() {
                let (m, is) = (mean[r], inv_std[r]);
                let c0 = (r % groups) * per_group;
                for (k, (xc, gc)) in xr.chunks(spatial).zip(gr.chunks(spatial)).enumerate() {
                    let (mut sg, mut sgx) = (T::zero(), T::zero());
                    for (&xv, &gv) in xc.iter().zip(gc) {
                        sg += gv;
                        sgx += gv * ((xv - m) * is);
                    }
                    dg[c0 + k] += sgx;
                    db[c0 + k] += sg;
                }
            }
        }
        if need_dx {
            self.dx.resize(x.shape());
            let gamma = self.weight.data();
            let body = |(r, (dxr, (xr, gr))): (usize, (&mut [T], (&[T], &[T])))| {
                let (m, is) = (mean[r], inv_std[r]);
                let c0 = (r % groups) * per_group;
                let gam = |k: usize| if affine { gamma[c0 + k] } else { T::one() };
                // in f64: groups can be small (two values per group after a
                // linear layer), where f32 sums lose digits
                let (m, is) = (m.as_f64(), is.as_f64());
                let (mut sg, mut sgx) = (0.0f64, 0.0f64);
                for (k, (xc, gc)) in xr.chunks(spatial).zip(gr.chunks(spatial)).enumerate() {
                    let gk = gam(k).as_f64();
                    for (&xv, &gv) in xc.iter().zip(gc) {
                        let g = gv.as_f64() * gk;
                        sg += g;
                        sgx += g * (xv.as_f64() - m) * is;
                    }
                }
                let (mg, mgx) = (sg / d as f64, sgx / d as f64);
                for (k, ((dxc, xc), gc)) in
                    dxr.chunks_mut(spatial).zip(xr.chunks(spatial)).zip(gr.chunks(spatial)).enumerate()
                {
                    let gk = gam(k).as_f64();
                    for ((dv, &xv), &gv) in dxc.iter_mut().zip(xc).zip(gc) {
                        *dv = T::from_f64(is * (gv.as_f64() * gk - mg - (xv.as_f64() - m) * is * mgx));
                    }
                }
            };
            let dxd = self.dx.data_mut();
            if x.numel() >= PAR_MIN {
                dxd.par_chunks_mut(d)
                    .zip(x.data().par_chunks(d).zip(dy.data().par_chunks(d)))
                    .enumerate()
                    .for_each(body);
            } else {
                dxd.chunks_mut(d).zip(x.data().chunks(d).zip(dy.data().chunks(d))).enumerate().for_each(body);
            }
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
        if !self.affine {
            return Vec::new();
        }
        vec![
            ("weight".into(), StateMut::Param { value: &mut self.weight, grad: &mut self.weight_grad }),
            ("bias".into(), StateMut::Param { value: &mut self.bias, grad: &mut self.bias_grad }),
        ]
    }
}
