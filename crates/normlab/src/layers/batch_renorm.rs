//! Batch renormalization (Ioffe, 2017): batch norm whose training output is
//! corrected towards what the running statistics would give, so training
//! and prediction compute the same function in expectation and small or
//! non-i.i.d. batches hurt less.
//!
//! Per channel, over the batch's m = N·S values, with the running
//! statistics mu and sigma = sqrt(running_var + eps):
//!
//! ```text
//! mu_B, var_B (biased)          sigma_B = sqrt(var_B + eps)
//! r = clip(sigma_B / sigma, 1/rmax, rmax)      d = clip((mu_B - mu) / sigma, -dmax, dmax)
//! x_hat = (x - mu_B) / sigma_B · r + d,        y = gamma · x_hat + beta
//! running_mean = (1 - w)·running_mean + w·mu_B
//! running_var  = (1 - w)·running_var  + w·var_B·m/(m - 1)        (w = momentum, 0.1)
//! prediction mode: (x - mu) / sigma, as batch norm.
//! backward: r and d are constants (the paper's stop_gradient); with
//! x_n = (x - mu_B)/sigma_B and g = dy·gamma·r,
//! dx = (1/sigma_B)·(g - mean(g) - x_n·mean(g·x_n))
//! dgamma = Σ dy·x_hat      dbeta = Σ dy
//! ```
//!
//! The clipping limits follow the paper's schedule ([`RenormSchedule`]):
//! rmax = 1 and dmax = 0 (plain batch norm) for the first `warmup_steps`
//! training steps, then each rises linearly to its final value (rmax 3,
//! dmax 5), reached at `rmax_steps` and `dmax_steps`. The paper's values:
//! warm-up 5000 steps, rmax = 3 at 40k steps, dmax = 5 at 25k steps. The
//! step is the number of training batches seen before this one
//! (`num_batches_tracked`, saved in checkpoints, so a resumed run continues
//! the schedule).

use super::ghost_batch_norm::{
    check_build_options, chunk_backward, chunk_forward, chunk_stats, BnChannels, ChunkStats,
};
use super::{check_built, check_forward_ran, check_grad, Layer, Mode, StateMut, StateName};
use crate::kernels::stats::Ncs;
use crate::real::Real;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// When batch renormalization's clipping limits relax, in training steps.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RenormSchedule {
    /// The final rmax (3 in the paper).
    pub rmax: f64,
    /// The final dmax (5 in the paper).
    pub dmax: f64,
    /// Steps with rmax = 1, dmax = 0 (5000 in the paper).
    pub warmup_steps: u64,
    /// The step by which rmax reaches its final value (40k in the paper).
    pub rmax_steps: u64,
    /// The step by which dmax reaches its final value (25k in the paper).
    pub dmax_steps: u64,
}

impl RenormSchedule {
    /// The paper's schedule: warm-up 5000 steps, rmax 3 at 40k steps, dmax
    /// 5 at 25k steps.
    pub fn paper() -> Self {
        RenormSchedule { rmax: 3.0, dmax: 5.0, warmup_steps: 5000, rmax_steps: 40_000, dmax_steps: 25_000 }
    }

    /// The paper's step counts as fractions of a 100k-step run (warm-up
    /// 5 %, dmax final at 25 %, rmax final at 40 %), for a run of
    /// `total_steps` steps.
    pub fn scaled_to(total_steps: u64) -> Self {
        let at = |f: f64| (f * total_steps as f64).round() as u64;
        RenormSchedule { warmup_steps: at(0.05), rmax_steps: at(0.40), dmax_steps: at(0.25), ..Self::paper() }
    }

    /// `(rmax, dmax)` at training step `step` (counted from 0).
    pub fn limits(&self, step: u64) -> (f64, f64) {
        let ramp = |end: u64, final_value: f64, start_value: f64| {
            if step < self.warmup_steps {
                start_value
            } else if step >= end {
                final_value
            } else {
                let f = (step - self.warmup_steps) as f64 / (end - self.warmup_steps) as f64;
                start_value + f * (final_value - start_value)
            }
        };
        (ramp(self.rmax_steps, self.rmax, 1.0), ramp(self.dmax_steps, self.dmax, 0.0))
    }

    /// Errors unless rmax ≥ 1, dmax ≥ 0 (both finite) and the ramps end at or
    /// after the warm-up.
    pub fn validate(&self) -> Result<()> {
        if !(self.rmax >= 1.0 && self.rmax.is_finite()) {
            return Err(Error::config(
                "batch-renorm rmax",
                format!("is {}; it must be at least 1 (paper: 3)", self.rmax),
            ));
        }
        if !(self.dmax >= 0.0 && self.dmax.is_finite()) {
            return Err(Error::config(
                "batch-renorm dmax",
                format!("is {}; it must be at least 0 (paper: 5)", self.dmax),
            ));
        }
        if self.rmax_steps < self.warmup_steps || self.dmax_steps < self.warmup_steps {
            return Err(Error::config(
                "batch-renorm schedule",
                format!(
                    "rmax_steps {} and dmax_steps {} must not come before warmup_steps {} (paper: 40000, 25000, 5000)",
                    self.rmax_steps, self.dmax_steps, self.warmup_steps
                ),
            ));
        }
        Ok(())
    }
}

/// Batch renormalization over dimension 1 of an `(N, C, *)` input; the
/// formulas are in the module docs.
pub struct BatchRenorm<T: Real = f32> {
    schedule: RenormSchedule,
    eps: f64,
    momentum: f64,
    example: Vec<usize>,
    /// gamma, beta, their gradients and the running statistics.
    ch: BnChannels<T>,
    /// The last forward's statistics and correction, per channel.
    mean: Vec<f64>,
    inv_std: Vec<f64>,
    r: Vec<f64>,
    d: Vec<f64>,
    batch_stats: bool,
    y: Tensor<T>,
    dx: Tensor<T>,
}

impl<T: Real> BatchRenorm<T> {
    /// Batch renormalization with `schedule`; eps 1e-5, momentum 0.1
    /// (PyTorch's convention), learnable gamma and beta.
    pub fn new(schedule: RenormSchedule) -> Self {
        BatchRenorm {
            schedule,
            eps: 1e-5,
            momentum: 0.1,
            example: Vec::new(),
            ch: BnChannels::default(),
            mean: Vec::new(),
            inv_std: Vec::new(),
            r: Vec::new(),
            d: Vec::new(),
            batch_stats: false,
            y: Tensor::default(),
            dx: Tensor::default(),
        }
    }
    /// Added to the variances (1e-5).
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
    /// The weight of the NEW statistic in the running averages (0.1).
    pub fn momentum(mut self, momentum: f64) -> Self {
        self.momentum = momentum;
        self
    }
    /// The clipping schedule.
    pub fn schedule(&self) -> &RenormSchedule {
        &self.schedule
    }
    /// The last training forward's corrections `(r, d)` per channel.
    pub fn corrections(&self) -> (&[f64], &[f64]) {
        (&self.r, &self.d)
    }
    /// The prediction-mode map per channel, `(scale, shift)` in f64 (for
    /// folding); `None` before build.
    pub fn eval_affine(&self) -> Option<(Vec<f64>, Vec<f64>)> {
        self.ch.eval_affine(&self.example, self.eps)
    }
    /// The number of channels; 0 before build.
    pub fn num_features(&self) -> usize {
        self.example.first().copied().unwrap_or(0)
    }
}

impl<T: Real> Layer<T> for BatchRenorm<T> {
    fn kind(&self) -> String {
        "BatchRenorm".into()
    }

    fn build(&mut self, input: &[usize], _rng: &mut Rng) -> Result<Vec<usize>> {
        check_build_options("BatchRenorm", input, self.eps, self.momentum)?;
        self.schedule.validate()?;
        let c = input[0];
        self.example = input.to_vec();
        self.ch = BnChannels::new(c);
        Ok(input.to_vec())
    }

    fn forward(&mut self, x: &Tensor<T>, mode: Mode) -> Result<&Tensor<T>> {
        check_built("BatchRenorm", !self.example.is_empty())?;
        super::check_input("BatchRenorm", x, &self.example)?;
        let ncs = Ncs::of(x.shape());
        let c = ncs.c;
        self.batch_stats = mode == Mode::Train;
        let (run_mean, run_var) = (self.ch.running_mean.to_f64_vec(), self.ch.running_var.to_f64_vec());
        let run_sigma: Vec<f64> = run_var.iter().map(|v| (v + self.eps).sqrt()).collect();
        if self.batch_stats {
            let m = ncs.per_channel();
            if m <= 1 {
                return Err(Error::shape(
                    "BatchRenorm",
                    format!(
                        "expected more than 1 value per channel when training, got input of shape {:?}; train with a batch of 2 or more",
                        x.shape()
                    ),
                ));
            }
            let (mean, var) = chunk_stats(x.data(), ncs);
            let (rmax, dmax) = self.schedule.limits(self.ch.num_batches_tracked.max(0) as u64);
            self.r.clear();
            self.d.clear();
            for ch in 0..c {
                let sigma_b = (var[ch] + self.eps).sqrt();
                self.r.push((sigma_b / run_sigma[ch]).clamp(1.0 / rmax, rmax));
                self.d.push(((mean[ch] - run_mean[ch]) / run_sigma[ch]).clamp(-dmax, dmax));
            }
            self.inv_std = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
            let unbias = m as f64 / (m as f64 - 1.0);
            let var_unbiased: Vec<f64> = var.iter().map(|v| v * unbias).collect();
            self.ch.track(&mean, &var_unbiased, self.momentum);
            self.mean = mean;
        } else {
            self.mean = run_mean;
            self.inv_std = run_sigma.iter().map(|s| 1.0 / s).collect();
            self.r = vec![1.0; c];
            self.d = vec![0.0; c];
        }
        let gamma_beta: Vec<(f64, f64)> = self.ch.affine();
        self.y.resize(x.shape());
        let st = ChunkStats { mean: &self.mean, inv_std: &self.inv_std, r: &self.r, d: &self.d };
        chunk_forward(x.data(), self.y.data_mut(), ncs, &st, &gamma_beta);
        Ok(&self.y)
    }

    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        check_built("BatchRenorm", !self.example.is_empty())?;
        super::check_input("BatchRenorm", x, &self.example)?;
        check_forward_ran("BatchRenorm", self.y.shape(), x.shape())?;
        check_grad("BatchRenorm", dy, x.shape())?;
        let ncs = Ncs::of(x.shape());
        let gamma = self.ch.weight.to_f64_vec();
        let (mut dgamma, mut dbeta) = (vec![0.0f64; ncs.c], vec![0.0f64; ncs.c]);
        if need_dx {
            self.dx.resize(x.shape());
        }
        let st = ChunkStats { mean: &self.mean, inv_std: &self.inv_std, r: &self.r, d: &self.d };
        let dx = need_dx.then(|| self.dx.data_mut());
        chunk_backward((x.data(), dy.data()), ncs, &st, &gamma, self.batch_stats, (&mut dgamma, &mut dbeta), dx);
        super::ghost_batch_norm::store(&mut self.ch.weight_grad, &dgamma);
        super::ghost_batch_norm::store(&mut self.ch.bias_grad, &dbeta);
        Ok(&self.dx)
    }

    fn output(&self) -> &Tensor<T> {
        &self.y
    }
    fn grad_input(&self) -> &Tensor<T> {
        &self.dx
    }

    fn state_mut(&mut self) -> Vec<(StateName, StateMut<'_, T>)> {
        self.ch.state_mut()
    }
}
