//! Batch norm, ReLU and 2x2 max pooling in one layer:
//! `BatchNorm2d -> ReLU -> MaxPool2d(2, 2)`, three entries of the
//! `nn.Sequential`, the stage of most VGG-style networks. A model makes it
//! where it finds that run (see `models::fusion`); nobody constructs it by
//! hand.
//!
//! ```text
//! forward:   h = (x - mean)·scale + beta,   s = relu(h),   y = the first maximum of s in each 2x2 window
//! backward:  dh = dy at each window's maximum where it is > 0, 0 elsewhere   (s and the maxima recomputed from x)
//!            then batch norm's backward on dh
//! ```
//!
//! Apart, the three layers write `s` (the size of `x`) and read it back,
//! then write the pooled gradient spread over a tensor the size of `x` and
//! read that back: four sweeps through memory over the largest tensors of
//! such a network. Fused, a run's `s` and its gradient live in a scratch
//! in L1 (`kernels::batch_norm::ReluMaxPooled`), so the block reads `x`
//! and writes the pooled output, and reads `x` and the pooled gradient and
//! writes `dx` (which holds `dh` between the backward pass's two sweeps
//! over a channel, while the channel is in cache). Every value is computed by the same formulas in the same
//! order as the three layers apart, so outputs and gradients are bitwise
//! theirs (tested in `models::fusion`).

use super::{affine_or_identity, fused, BatchNorm};
use crate::kernels::activation::ReluAct;
use crate::kernels::batch_norm::{normalize_max_pool, stats_normalize_max_pool, Affine, Epilogue, ReluMaxPooled};
use crate::layers::{check_forward_ran, check_grad, Layer, Mode, StateMut, StateName};
use crate::real::Real;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// A fused [`BatchNorm`] (full, fused implementation) over `(C, H, W)`
/// planes, ReLU, then 2x2 max pooling with stride 2; see the module docs.
pub(crate) struct BnReluMaxPool<T: Real> {
    bn: BatchNorm<T>,
    /// (H, W) of the input planes.
    hw: (usize, usize),
    y: Tensor<T>,
    dx: Tensor<T>,
}

impl<T: Real> BnReluMaxPool<T> {
    /// `bn`, built over `(C, H, W)` with H and W at least 2, then ReLU and
    /// the pooling; `bn` back if its input is not such planes.
    pub(crate) fn from_built(bn: Box<BatchNorm<T>>) -> std::result::Result<Self, Box<BatchNorm<T>>> {
        match bn.example[..] {
            [_, h, w] if h >= 2 && w >= 2 => {
                Ok(BnReluMaxPool { bn: *bn, hw: (h, w), y: Tensor::default(), dx: Tensor::default() })
            }
            _ => Err(bn),
        }
    }

    /// Gamma and beta (1 and 0 without affine parameters).
    fn gamma_beta(&self, c: usize) -> (Vec<T>, Vec<T>) {
        affine_or_identity(self.bn.config.affine, &self.bn.weight, &self.bn.bias, c)
    }
}

impl<T: Real> Layer<T> for BnReluMaxPool<T> {
    fn kind(&self) -> String {
        format!("{}+ReLU+MaxPool2d", self.bn.kind())
    }
    fn slots(&self) -> usize {
        3
    }
    fn build(&mut self, input: &[usize], rng: &mut Rng) -> Result<Vec<usize>> {
        match input {
            [c, h, w] if *h >= 2 && *w >= 2 => {
                self.bn.build(input, rng)?;
                self.hw = (*h, *w);
                Ok(vec![*c, h / 2, w / 2])
            }
            _ => Err(Error::shape(
                self.kind(),
                format!("expected (N, C, H, W) with H and W of 2 or more, got one example of shape {input:?}"),
            )),
        }
    }
    fn forward(&mut self, x: &Tensor<T>, mode: Mode) -> Result<&Tensor<T>> {
        let ((h, w), act) = (self.hw, ReluAct);
        let ncs = self.bn.view(x)?;
        self.y.resize(&[ncs.n, ncs.c, h / 2, w / 2]);
        let y = &mut self.y;
        // training: statistics and the pooled output per channel while it is in cache
        let (_, pooled) = self.bn.prepare_using(x, mode, |bn, ncs| {
            let (gamma, beta) = affine_or_identity(bn.config.affine, &bn.weight, &bn.bias, ncs.c);
            let eps = bn.config.eps;
            (stats_normalize_max_pool(x.data(), y.data_mut(), (ncs, (h, w)), (&gamma, &beta), eps, act), true)
        })?;
        if !pooled {
            let (gamma, beta) = self.gamma_beta(ncs.c);
            let saved = self.bn.saved.fused();
            let scale = fused::scale(&gamma, saved.inv_std);
            let affine = Affine { center: saved.center, scale: &scale, shift: &beta };
            normalize_max_pool(x.data(), self.y.data_mut(), (ncs, (h, w)), affine, act);
        }
        Ok(&self.y)
    }
    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        let ncs = self.bn.view(x)?;
        let (h, w) = self.hw;
        // the statistics come from the forward pass
        check_forward_ran(&self.kind(), &self.bn.saved.shape, x.shape())?;
        check_grad(&self.kind(), dy, &[ncs.n, ncs.c, h / 2, w / 2])?;
        let (gamma, beta) = self.gamma_beta(ncs.c);
        if need_dx {
            self.dx.resize(x.shape());
        }
        let saved = self.bn.saved.fused();
        let scale = fused::scale(&gamma, saved.inv_std);
        let affine = Affine { center: saved.center, scale: &scale, shift: &beta };
        // the gradient at batch norm's output, ReLU's included (see ReluMaxPooled)
        let grads = ReluMaxPooled { dy: dy.data(), hw: (h, w), affine };
        let batch_parts = self.bn.saved.batch_stats.then_some(self.bn.config.parts);
        let ep = Epilogue::none();
        let dx = need_dx.then_some(self.dx.data_mut());
        let (dgamma, dbeta) = fused::backward_by_channel((x.data(), &grads), ncs, saved, batch_parts, &gamma, ep, dx);
        self.bn.set_affine_grads(&dgamma, &dbeta);
        Ok(&self.dx)
    }
    fn output(&self) -> &Tensor<T> {
        &self.y
    }
    fn grad_input(&self) -> &Tensor<T> {
        &self.dx
    }
    fn state_mut(&mut self) -> Vec<(StateName, StateMut<'_, T>)> {
        self.bn.state_mut()
    }
    fn splits_work(&self, input_len: usize) -> bool {
        self.bn.splits_work(input_len)
    }
    fn as_batch_norm_mut(&mut self) -> Option<&mut BatchNorm<T>> {
        Some(&mut self.bn)
    }
}
