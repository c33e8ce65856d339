//! Ghost batch normalization (Hoffer, Hubara & Soudry, 2017): batch norm
//! whose training statistics come from "virtual" batches of G consecutive
//! examples inside the batch, so a large batch is normalized with the
//! noise of small ones.
//!
//! The batch of N examples is cut into k = max(1, ⌊N/G⌋) virtual batches:
//! examples [jG, (j+1)G) for j < k - 1, and the last one takes the rest
//! (G to 2G - 1 examples), so no virtual batch is smaller than G (or N when
//! N < G). Per virtual batch v and channel c over its m_v = |v|·S values:
//!
//! ```text
//! mean_vc, var_vc                      (biased, as batch norm)
//! x_hat = (x - mean_vc) / sqrt(var_vc + eps),      y = gamma_c · x_hat + beta_c
//! running stats, once per training step (w = momentum, 0.1):
//! running_mean_c = (1 - w)·running_mean_c + w·mean_v(mean_vc)
//! running_var_c  = (1 - w)·running_var_c  + w·mean_v(var_vc · m_v/(m_v - 1))
//! prediction mode: the running statistics, as batch norm.
//! backward, per virtual batch (batch norm's formula on its m_v values):
//! dx = gamma_c · inv_std_vc · (dy - mean_v(dy) - x_hat · mean_v(dy · x_hat))
//! dgamma_c = Σ dy · x_hat      dbeta_c = Σ dy       (over the whole batch)
//! ```
//!
//! G ≥ N is plain batch norm. The per-chunk passes here (`chunk_forward`,
//! `chunk_backward`) also serve batch renormalization, whose correction
//! (r, d) they take as constants.

use std::ops::Range;

use super::{check_built, check_forward_ran, check_grad, Layer, Mode, StateMut, StateName};
use crate::kernels::stats::{channel_mean_var, Ncs};
use crate::real::Real;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// The statistics one chunk of examples (a virtual batch, or the whole
/// batch) is normalized with, per channel, and the correction applied
/// after: `x_hat = (x - mean)·inv_std·r + d` (r = 1, d = 0 but for batch
/// renormalization).
pub(crate) struct ChunkStats<'a> {
    pub mean: &'a [f64],
    pub inv_std: &'a [f64],
    pub r: &'a [f64],
    pub d: &'a [f64],
}

/// `y = gamma·x_hat + beta` for a chunk `x` viewed as `(n, c, s)`.
pub(crate) fn chunk_forward<T: Real>(x: &[T], y: &mut [T], ncs: Ncs, st: &ChunkStats<'_>, gamma_beta: &[(f64, f64)]) {
    for i in 0..ncs.n {
        for (ch, &(g, b)) in gamma_beta.iter().enumerate().take(ncs.c) {
            let run = ncs.run(i, ch);
            let (m, is, r, d) = (st.mean[ch], st.inv_std[ch], st.r[ch], st.d[ch]);
            for (o, &v) in y[run.clone()].iter_mut().zip(&x[run]) {
                *o = T::from_f64(g * ((v.as_f64() - m) * is * r + d) + b);
            }
        }
    }
}

/// The backward pass of [`chunk_forward`], r and d held constant: adds the
/// chunk's `Σ dy·x_hat` and `Σ dy` into `dgamma`, `dbeta`, and writes dx
/// (see the module docs; with `batch_stats` false the statistics are
/// constants too, and `dx = gamma·inv_std·dy`).
#[allow(clippy::too_many_arguments)] // one chunk's data, its statistics and the sums it feeds
pub(crate) fn chunk_backward<T: Real>(
    (x, dy): (&[T], &[T]),
    ncs: Ncs,
    st: &ChunkStats<'_>,
    gamma: &[f64],
    batch_stats: bool,
    (dgamma, dbeta): (&mut [f64], &mut [f64]),
    dx: Option<&mut [T]>,
) {
    let m = ncs.per_channel() as f64;
    let (mut sum_dy, mut sum_dy_xn) = (vec![0.0f64; ncs.c], vec![0.0f64; ncs.c]);
    for i in 0..ncs.n {
        for ch in 0..ncs.c {
            let run = ncs.run(i, ch);
            let (mu, is) = (st.mean[ch], st.inv_std[ch]);
            for (&v, &g) in x[run.clone()].iter().zip(&dy[run]) {
                sum_dy[ch] += g.as_f64();
                sum_dy_xn[ch] += g.as_f64() * (v.as_f64() - mu) * is;
            }
        }
    }
    for ch in 0..ncs.c {
        dgamma[ch] += st.r[ch] * sum_dy_xn[ch] + st.d[ch] * sum_dy[ch];
        dbeta[ch] += sum_dy[ch];
    }
    let Some(dx) = dx else { return };
    for i in 0..ncs.n {
        for ch in 0..ncs.c {
            let run = ncs.run(i, ch);
            let (mu, is) = (st.mean[ch], st.inv_std[ch]);
            let scale = gamma[ch] * st.r[ch] * is;
            let (mg, mgx) = (sum_dy[ch] / m, sum_dy_xn[ch] / m);
            for ((o, &v), &g) in dx[run.clone()].iter_mut().zip(&x[run.clone()]).zip(&dy[run]) {
                let g = g.as_f64();
                *o = T::from_f64(if batch_stats { scale * (g - mg - (v.as_f64() - mu) * is * mgx) } else { scale * g });
            }
        }
    }
}

/// Writes f64 gradients into a parameter's gradient tensor (overwriting).
pub(crate) fn store<T: Real>(grad: &mut Tensor<T>, values: &[f64]) {
    for (g, &v) in grad.data_mut().iter_mut().zip(values) {
        *g = T::from_f64(v);
    }
}

/// Per-channel mean and biased variance of a chunk `x` viewed as `(n, c, s)`.
pub(crate) fn chunk_stats<T: Real>(x: &[T], ncs: Ncs) -> (Vec<f64>, Vec<f64>) {
    (0..ncs.c).map(|ch| channel_mean_var(x, ncs, ch)).unzip()
}

/// `running = (1 - w)·running + w·batch` for every channel.
pub(crate) fn follow<T: Real>(running: &mut Tensor<T>, batch: &[f64], w: f64) {
    for (r, &b) in running.data_mut().iter_mut().zip(batch) {
        *r = T::from_f64((1.0 - w) * r.as_f64() + w * b);
    }
}

/// The per-channel tensors a batch-norm-like layer holds, as PyTorch's
/// `BatchNorm` does: gamma and beta with their gradients, the running mean
/// and variance, and the count of batches tracked (shared by Ghost BN and
/// batch renormalization).
#[derive(Default)]
pub(crate) struct BnChannels<T: Real> {
    pub weight: Tensor<T>,
    pub bias: Tensor<T>,
    pub weight_grad: Tensor<T>,
    pub bias_grad: Tensor<T>,
    pub running_mean: Tensor<T>,
    pub running_var: Tensor<T>,
    pub num_batches_tracked: i64,
}

impl<T: Real> BnChannels<T> {
    /// `c` channels at PyTorch's initial values: gamma 1, beta 0, running
    /// mean 0 and variance 1.
    pub fn new(c: usize) -> Self {
        BnChannels {
            weight: Tensor::full(&[c], T::one()),
            bias: Tensor::zeros(&[c]),
            weight_grad: Tensor::zeros(&[c]),
            bias_grad: Tensor::zeros(&[c]),
            running_mean: Tensor::zeros(&[c]),
            running_var: Tensor::full(&[c], T::one()),
            num_batches_tracked: 0,
        }
    }

    /// One training batch's statistics into the running ones (`var` as it
    /// should be tracked, PyTorch: unbiased), with momentum `w`.
    pub fn track(&mut self, mean: &[f64], var: &[f64], w: f64) {
        self.num_batches_tracked += 1;
        follow(&mut self.running_mean, mean, w);
        follow(&mut self.running_var, var, w);
    }

    /// `(gamma, beta)` per channel in f64.
    pub fn affine(&self) -> Vec<(f64, f64)> {
        self.weight.data().iter().zip(self.bias.data()).map(|(g, b)| (g.as_f64(), b.as_f64())).collect()
    }

    /// [`eval_affine`] of these tensors.
    pub fn eval_affine(&self, example: &[usize], eps: f64) -> Option<(Vec<f64>, Vec<f64>)> {
        eval_affine(example, eps, [&self.weight, &self.bias, &self.running_mean, &self.running_var])
    }

    /// [`batch_norm_state`] of these tensors.
    pub fn state_mut(&mut self) -> Vec<(StateName, StateMut<'_, T>)> {
        let params = [(&mut self.weight, &mut self.weight_grad), (&mut self.bias, &mut self.bias_grad)];
        batch_norm_state(params, [&mut self.running_mean, &mut self.running_var], &mut self.num_batches_tracked)
    }
}

/// Ghost batch normalization over dimension 1 of an `(N, C, *)` input with
/// virtual batches of G examples; the formulas are in the module docs.
pub struct GhostBatchNorm<T: Real = f32> {
    virtual_batch: usize,
    eps: f64,
    momentum: f64,
    example: Vec<usize>,
    /// gamma, beta, their gradients and the running statistics.
    ch: BnChannels<T>,
    /// Example ranges of the last forward's virtual batches, and their
    /// statistics (chunk-major, C per chunk).
    chunks: Vec<Range<usize>>,
    mean: Vec<f64>,
    inv_std: Vec<f64>,
    batch_stats: bool,
    y: Tensor<T>,
    dx: Tensor<T>,
}

impl<T: Real> GhostBatchNorm<T> {
    /// Virtual batches of `virtual_batch` examples; eps 1e-5, momentum 0.1
    /// (PyTorch's convention), learnable gamma and beta.
    pub fn new(virtual_batch: usize) -> Self {
        GhostBatchNorm {
            virtual_batch,
            eps: 1e-5,
            momentum: 0.1,
            example: Vec::new(),
            ch: BnChannels::default(),
            chunks: Vec::new(),
            mean: Vec::new(),
            inv_std: Vec::new(),
            batch_stats: false,
            y: Tensor::default(),
            dx: Tensor::default(),
        }
    }
    /// Added to the variance (1e-5).
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
    /// The weight of the NEW statistic in the running averages (0.1).
    pub fn momentum(mut self, momentum: f64) -> Self {
        self.momentum = momentum;
        self
    }
    /// The virtual batch size G.
    pub fn virtual_batch(&self) -> usize {
        self.virtual_batch
    }
    /// The running mean and variance per channel (empty before build).
    pub fn running_stats(&self) -> (&Tensor<T>, &Tensor<T>) {
        (&self.ch.running_mean, &self.ch.running_var)
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

    /// The virtual batches of a batch of `n` examples (see the module docs).
    pub fn virtual_batches(&self, n: usize) -> Vec<Range<usize>> {
        let g = self.virtual_batch.max(1);
        let k = (n / g).max(1);
        (0..k).map(|j| j * g..if j + 1 == k { n } else { (j + 1) * g }).collect()
    }
}

/// `scale = gamma / sqrt(running_var + eps)`, `shift = beta - scale·running_mean`
/// from `[gamma, beta, running_mean, running_var]`; `None` before build.
pub(crate) fn eval_affine<T: Real>(
    example: &[usize],
    eps: f64,
    [w, b, m, v]: [&Tensor<T>; 4],
) -> Option<(Vec<f64>, Vec<f64>)> {
    if example.is_empty() {
        return None;
    }
    let (w, b, m, v) = (w.to_f64_vec(), b.to_f64_vec(), m.to_f64_vec(), v.to_f64_vec());
    let scale: Vec<f64> = w.iter().zip(&v).map(|(w, v)| w / (v + eps).sqrt()).collect();
    let shift = b.iter().zip(&m).zip(&scale).map(|((b, m), s)| b - m * s).collect();
    Some((scale, shift))
}

/// PyTorch's batch-norm state, in its order: `weight`, `bias` (learned),
/// `running_mean`, `running_var`, `num_batches_tracked`.
#[allow(clippy::type_complexity)]
pub(crate) fn batch_norm_state<'a, T: Real>(
    [(w, wg), (b, bg)]: [(&'a mut Tensor<T>, &'a mut Tensor<T>); 2],
    [mean, var]: [&'a mut Tensor<T>; 2],
    count: &'a mut i64,
) -> Vec<(StateName, StateMut<'a, T>)> {
    vec![
        ("weight".into(), StateMut::Param { value: w, grad: wg }),
        ("bias".into(), StateMut::Param { value: b, grad: bg }),
        ("running_mean".into(), StateMut::Buffer(mean)),
        ("running_var".into(), StateMut::Buffer(var)),
        ("num_batches_tracked".into(), StateMut::Count(count)),
    ]
}

/// Checks a batch-statistics layer's options and input at build.
pub(crate) fn check_build_options(layer: &str, input: &[usize], eps: f64, momentum: f64) -> Result<()> {
    if input.is_empty() || input.contains(&0) {
        return Err(Error::shape(layer, format!("expected input (N, C, ...), got one example of shape {input:?}")));
    }
    if !(eps > 0.0 && eps.is_finite()) {
        return Err(Error::config(format!("{layer} eps"), format!("{eps} must be a positive number")));
    }
    if !(0.0..=1.0).contains(&momentum) {
        return Err(Error::config(
            format!("{layer} momentum"),
            format!("{momentum}: the weight of the new statistic must be in [0, 1] (PyTorch's 0.1)"),
        ));
    }
    Ok(())
}

impl<T: Real> Layer<T> for GhostBatchNorm<T> {
    fn kind(&self) -> String {
        "GhostBatchNorm".into()
    }

    fn build(&mut self, input: &[usize], _rng: &mut Rng) -> Result<Vec<usize>> {
        check_build_options("GhostBatchNorm", input, self.eps, self.momentum)?;
        if self.virtual_batch == 0 {
            return Err(Error::config("ghost-batch-norm virtual_batch", "is 0; give the virtual batch size, e.g. 16"));
        }
        let c = input[0];
        self.example = input.to_vec();
        self.ch = BnChannels::new(c);
        Ok(input.to_vec())
    }

    fn forward(&mut self, x: &Tensor<T>, mode: Mode) -> Result<&Tensor<T>> {
        check_built("GhostBatchNorm", !self.example.is_empty())?;
        super::check_input("GhostBatchNorm", x, &self.example)?;
        let all = Ncs::of(x.shape());
        let (c, s) = (all.c, all.s);
        self.batch_stats = mode == Mode::Train;
        // prediction mode: the whole batch as one chunk, with the running statistics
        self.chunks = if self.batch_stats { self.virtual_batches(all.n) } else { std::iter::once(0..all.n).collect() };
        if self.batch_stats && self.chunks.iter().any(|r| r.len() * s <= 1) {
            return Err(Error::shape(
                "GhostBatchNorm",
                format!(
                    "expected more than 1 value per channel when training, got input of shape {:?}; train with a batch of 2 or more",
                    x.shape()
                ),
            ));
        }
        self.mean.clear();
        self.inv_std.clear();
        let (mut batch_mean, mut batch_var) = (vec![0.0f64; c], vec![0.0f64; c]);
        for range in &self.chunks {
            let ncs = Ncs { n: range.len(), c, s };
            let (mean, var) = if self.batch_stats {
                chunk_stats(&x.data()[range.start * c * s..range.end * c * s], ncs)
            } else {
                (self.ch.running_mean.to_f64_vec(), self.ch.running_var.to_f64_vec())
            };
            let m = ncs.per_channel() as f64;
            for ch in 0..c {
                batch_mean[ch] += mean[ch] / self.chunks.len() as f64;
                batch_var[ch] += var[ch] * m / (m - 1.0).max(1.0) / self.chunks.len() as f64;
            }
            self.inv_std.extend(var.iter().map(|v| 1.0 / (v + self.eps).sqrt()));
            self.mean.extend(mean);
        }
        if self.batch_stats {
            self.ch.track(&batch_mean, &batch_var, self.momentum);
        }
        let gamma_beta: Vec<(f64, f64)> = self.ch.affine();
        let (ones, zeros) = (vec![1.0; c], vec![0.0; c]);
        self.y.resize(x.shape());
        for (j, range) in self.chunks.iter().enumerate() {
            let span = range.start * c * s..range.end * c * s;
            let st = ChunkStats {
                mean: &self.mean[j * c..(j + 1) * c],
                inv_std: &self.inv_std[j * c..(j + 1) * c],
                r: &ones,
                d: &zeros,
            };
            let ncs = Ncs { n: range.len(), c, s };
            chunk_forward(&x.data()[span.clone()], &mut self.y.data_mut()[span], ncs, &st, &gamma_beta);
        }
        Ok(&self.y)
    }

    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        check_built("GhostBatchNorm", !self.example.is_empty())?;
        super::check_input("GhostBatchNorm", x, &self.example)?;
        check_forward_ran("GhostBatchNorm", self.y.shape(), x.shape())?;
        check_grad("GhostBatchNorm", dy, x.shape())?;
        let Ncs { c, s, .. } = Ncs::of(x.shape());
        let gamma: Vec<f64> = self.ch.weight.to_f64_vec();
        let (mut dgamma, mut dbeta) = (vec![0.0f64; c], vec![0.0f64; c]);
        let (ones, zeros) = (vec![1.0; c], vec![0.0; c]);
        if need_dx {
            self.dx.resize(x.shape());
        }
        for (j, range) in self.chunks.iter().enumerate() {
            let span = range.start * c * s..range.end * c * s;
            let st = ChunkStats {
                mean: &self.mean[j * c..(j + 1) * c],
                inv_std: &self.inv_std[j * c..(j + 1) * c],
                r: &ones,
                d: &zeros,
            };
            let dx = need_dx.then(|| &mut self.dx.data_mut()[span.clone()]);
            chunk_backward(
                (&x.data()[span.clone()], &dy.data()[span]),
                Ncs { n: range.len(), c, s },
                &st,
                &gamma,
                self.batch_stats,
                (&mut dgamma, &mut dbeta),
                dx,
            );
        }
        store(&mut self.ch.weight_grad, &dgamma);
        store(&mut self.ch.bias_grad, &dbeta);
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
