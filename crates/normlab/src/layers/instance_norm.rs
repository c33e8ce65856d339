//! Instance normalization (Ulyanov et al., 2016), as
//! `nn.InstanceNorm1d/2d(C, eps=1e-5, momentum=0.1, affine=False,
//! track_running_stats=False)`: each channel of each example normalized
//! over its own S spatial values.
//!
//! Per (example n, channel c) row of S values:
//!
//! ```text
//! mean_nc = (1/S) Σ x        var_nc = (1/S) Σ (x - mean_nc)²        (biased)
//! x_hat   = (x - mean_nc) / sqrt(var_nc + eps),    y = gamma_c · x_hat + beta_c
//! with track_running_stats, in training (PyTorch's update; w = momentum):
//! running_mean_c = (1 - w)·running_mean_c + w·mean_n(mean_nc)
//! running_var_c  = (1 - w)·running_var_c  + w·mean_n(var_nc · S/(S-1))
//! and in prediction mode mean_nc, var_nc are running_mean_c, running_var_c.
//! backward, instance statistics, per row with g = dy · gamma_c:
//! dx      = inv_std_nc · (g - mean(g) - x_hat · mean(g · x_hat))
//! backward, running statistics (constants):  dx = gamma_c · inv_std_c · dy
//! dgamma_c = Σ_{n, spatial} dy · x_hat      dbeta_c = Σ_{n, spatial} dy
//! ```
//!
//! Without running statistics training and prediction behave the same
//! (PyTorch's default). As PyTorch, training on one value per channel
//! (S = 1) is refused: its variance is 0 and x_hat is 0.

use super::{check_built, check_forward_ran, check_grad, Layer, Mode, StateMut, StateName};
use crate::kernels::stats::row_mean_var;
use crate::real::Real;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Instance normalization over an `(N, C, *)` input (at least one spatial
/// dimension), as `nn.InstanceNorm1d/2d(C)` with PyTorch's defaults; the
/// formulas are in the module docs.
pub struct InstanceNorm<T: Real = f32> {
    eps: f64,
    momentum: f64,
    affine: bool,
    track_running_stats: bool,
    example: Vec<usize>,
    channels: usize,
    spatial: usize,
    weight: Tensor<T>,
    bias: Tensor<T>,
    weight_grad: Tensor<T>,
    bias_grad: Tensor<T>,
    running_mean: Tensor<T>,
    running_var: Tensor<T>,
    num_batches_tracked: i64,
    /// Per (n, c) row: the mean and `1/sqrt(var + eps)` applied.
    mean: Vec<f64>,
    inv_std: Vec<f64>,
    /// Whether the last forward used the instances' own statistics.
    instance_stats: bool,
    y: Tensor<T>,
    dx: Tensor<T>,
}

impl<T: Real> Default for InstanceNorm<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Real> InstanceNorm<T> {
    /// `nn.InstanceNorm2d(C)`: eps 1e-5, momentum 0.1, no affine
    /// parameters, no running statistics (C is taken from the input).
    pub fn new() -> Self {
        InstanceNorm {
            eps: 1e-5,
            momentum: 0.1,
            affine: false,
            track_running_stats: false,
            example: Vec::new(),
            channels: 0,
            spatial: 0,
            weight: Tensor::default(),
            bias: Tensor::default(),
            weight_grad: Tensor::default(),
            bias_grad: Tensor::default(),
            running_mean: Tensor::default(),
            running_var: Tensor::default(),
            num_batches_tracked: 0,
            mean: Vec::new(),
            inv_std: Vec::new(),
            instance_stats: true,
            y: Tensor::default(),
            dx: Tensor::default(),
        }
    }
    /// Added to the variance (PyTorch's `eps`, 1e-5).
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
    /// The weight of the NEW statistic in the running averages (PyTorch's
    /// `momentum`, 0.1).
    pub fn momentum(mut self, momentum: f64) -> Self {
        self.momentum = momentum;
        self
    }
    /// Learnable per-channel gamma and beta (PyTorch's `affine`, off).
    pub fn affine(mut self, on: bool) -> Self {
        self.affine = on;
        self
    }
    /// Keep running statistics and use them in prediction mode (PyTorch's
    /// `track_running_stats`, off).
    pub fn track_running_stats(mut self, on: bool) -> Self {
        self.track_running_stats = on;
        self
    }
    /// The running mean per channel; `None` without running statistics.
    pub fn running_mean(&self) -> Option<&Tensor<T>> {
        self.track_running_stats.then_some(&self.running_mean)
    }
    /// The running variance per channel; `None` without running statistics.
    pub fn running_var(&self) -> Option<&Tensor<T>> {
        self.track_running_stats.then_some(&self.running_var)
    }

    fn gamma(&self, c: usize) -> f64 {
        if self.affine {
            self.weight.data()[c].as_f64()
        } else {
            1.0
        }
    }
    fn beta(&self, c: usize) -> f64 {
        if self.affine {
            self.bias.data()[c].as_f64()
        } else {
            0.0
        }
    }

    /// The statistics for this forward pass, per (n, c) row, and the
    /// running-statistics update in training.
    fn statistics(&mut self, x: &Tensor<T>, mode: Mode) -> Result<()> {
        let (c, s) = (self.channels, self.spatial);
        let rows = x.numel() / s;
        self.instance_stats = mode == Mode::Train || !self.track_running_stats;
        self.mean.resize(rows, 0.0);
        self.inv_std.resize(rows, 0.0);
        if !self.instance_stats {
            let (rm, rv) = (self.running_mean.data(), self.running_var.data());
            for r in 0..rows {
                self.mean[r] = rm[r % c].as_f64();
                self.inv_std[r] = 1.0 / (rv[r % c].as_f64() + self.eps).sqrt();
            }
            return Ok(());
        }
        if mode == Mode::Train && s <= 1 {
            return Err(Error::shape(
                self.kind(),
                format!(
                    "expected more than 1 spatial value per channel when training, got input of shape {:?}; \
                     instance norm needs an image (or a sequence), not one value per channel",
                    x.shape()
                ),
            ));
        }
        let mut vars = vec![0.0f64; rows];
        for (r, xr) in x.data().chunks(s).enumerate() {
            let (m, v) = row_mean_var(xr);
            self.mean[r] = m;
            vars[r] = v;
            self.inv_std[r] = 1.0 / (v + self.eps).sqrt();
        }
        if mode == Mode::Train && self.track_running_stats {
            let n = (rows / c) as f64;
            let w = self.momentum;
            let unbias = s as f64 / (s as f64 - 1.0);
            self.num_batches_tracked += 1;
            for ch in 0..c {
                let bm: f64 = (ch..rows).step_by(c).map(|r| self.mean[r]).sum::<f64>() / n;
                let bv: f64 = (ch..rows).step_by(c).map(|r| vars[r] * unbias).sum::<f64>() / n;
                let rm = &mut self.running_mean.data_mut()[ch];
                *rm = T::from_f64((1.0 - w) * rm.as_f64() + w * bm);
                let rv = &mut self.running_var.data_mut()[ch];
                *rv = T::from_f64((1.0 - w) * rv.as_f64() + w * bv);
            }
        }
        Ok(())
    }
}

impl<T: Real> Layer<T> for InstanceNorm<T> {
    fn kind(&self) -> String {
        match self.example.len() {
            2 => "InstanceNorm1d".into(),
            4 => "InstanceNorm3d".into(),
            _ => "InstanceNorm2d".into(),
        }
    }

    fn build(&mut self, input: &[usize], _rng: &mut Rng) -> Result<Vec<usize>> {
        if input.len() < 2 || input.contains(&0) {
            return Err(Error::shape(
                "InstanceNorm",
                format!("expected one example (C, L) or (C, H, W) with every size at least 1, got {input:?}; instance norm needs spatial values to normalize over"),
            ));
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(Error::config("instance-norm eps", format!("{} must be a positive number", self.eps)));
        }
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(Error::config(
                "instance-norm momentum",
                format!("{}: the weight of the new statistic must be in [0, 1] (PyTorch's 0.1)", self.momentum),
            ));
        }
        let c = input[0];
        self.example = input.to_vec();
        self.channels = c;
        self.spatial = input[1..].iter().product();
        if self.affine {
            self.weight = Tensor::full(&[c], T::one());
            self.bias = Tensor::zeros(&[c]);
            self.weight_grad = Tensor::zeros(&[c]);
            self.bias_grad = Tensor::zeros(&[c]);
        }
        if self.track_running_stats {
            self.running_mean = Tensor::zeros(&[c]);
            self.running_var = Tensor::full(&[c], T::one());
            self.num_batches_tracked = 0;
        }
        Ok(input.to_vec())
    }

    fn forward(&mut self, x: &Tensor<T>, mode: Mode) -> Result<&Tensor<T>> {
        check_built("InstanceNorm", self.channels > 0)?;
        super::check_input(&self.kind(), x, &self.example)?;
        self.statistics(x, mode)?;
        let (c, s) = (self.channels, self.spatial);
        self.y.resize(x.shape());
        let coef: Vec<(f64, f64)> = (0..c).map(|ch| (self.gamma(ch), self.beta(ch))).collect();
        for (r, (yr, xr)) in self.y.data_mut().chunks_mut(s).zip(x.data().chunks(s)).enumerate() {
            let (m, is) = (self.mean[r], self.inv_std[r]);
            let (g, b) = coef[r % c];
            for (o, &v) in yr.iter_mut().zip(xr) {
                *o = T::from_f64(g * ((v.as_f64() - m) * is) + b);
            }
        }
        Ok(&self.y)
    }

    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        check_built("InstanceNorm", self.channels > 0)?;
        super::check_input(&self.kind(), x, &self.example)?;
        check_forward_ran(&self.kind(), self.y.shape(), x.shape())?;
        check_grad(&self.kind(), dy, x.shape())?;
        let (c, s) = (self.channels, self.spatial);
        let (mut dgamma, mut dbeta) = (vec![0.0f64; c], vec![0.0f64; c]);
        if need_dx {
            self.dx.resize(x.shape());
        }
        let gammas: Vec<f64> = (0..c).map(|ch| self.gamma(ch)).collect();
        let dx = self.dx.data_mut();
        for (r, (xr, gr)) in x.data().chunks(s).zip(dy.data().chunks(s)).enumerate() {
            let (m, is, gam) = (self.mean[r], self.inv_std[r], gammas[r % c]);
            let (mut sg, mut sgx) = (0.0f64, 0.0f64);
            for (&v, &g) in xr.iter().zip(gr) {
                sg += g.as_f64();
                sgx += g.as_f64() * (v.as_f64() - m) * is;
            }
            dbeta[r % c] += sg;
            dgamma[r % c] += sgx;
            if need_dx {
                let out = &mut dx[r * s..(r + 1) * s];
                let (mg, mgx) = (gam * sg / s as f64, gam * sgx / s as f64);
                for ((o, &v), &g) in out.iter_mut().zip(xr).zip(gr) {
                    let gv = gam * g.as_f64();
                    *o = T::from_f64(if self.instance_stats {
                        is * (gv - mg - (v.as_f64() - m) * is * mgx)
                    } else {
                        is * gv
                    });
                }
            }
        }
        if self.affine {
            for (o, v) in self.weight_grad.data_mut().iter_mut().zip(dgamma) {
                *o = T::from_f64(v);
            }
            for (o, v) in self.bias_grad.data_mut().iter_mut().zip(dbeta) {
                *o = T::from_f64(v);
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
        let mut s = Vec::new();
        if self.affine {
            s.push(("weight".into(), StateMut::Param { value: &mut self.weight, grad: &mut self.weight_grad }));
            s.push(("bias".into(), StateMut::Param { value: &mut self.bias, grad: &mut self.bias_grad }));
        }
        if self.track_running_stats {
            s.push(("running_mean".into(), StateMut::Buffer(&mut self.running_mean)));
            s.push(("running_var".into(), StateMut::Buffer(&mut self.running_var)));
            s.push(("num_batches_tracked".into(), StateMut::Count(&mut self.num_batches_tracked)));
        }
        s
    }
}
