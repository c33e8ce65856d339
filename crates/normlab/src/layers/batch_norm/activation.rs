//! Batch norm and the activation after it as one layer: `BatchNorm -> ReLU`
//! (or sigmoid, LeakyReLU, tanh, SiLU, GELU), two entries of the
//! `nn.Sequential`. A model makes it where it finds that pair (see
//! `models::Sequential::build`); nobody constructs it by hand.
//!
//! ```text
//! forward:   h = (x - mean)·scale + beta,   y = f(h)         (one sweep after the statistics)
//! backward:  dh = f'(h)·dy  (h recomputed from x),  then batch norm's backward on dh
//! ```
//!
//! Apart, the two layers write `h` and read it back each way; fused, the
//! activation runs inside batch norm's sweeps (`kernels::batch_norm` with an
//! [`Activation`]), so the pair costs what batch norm alone costs. The
//! arithmetic is the two layers', in the same order: the outputs and
//! gradients are bitwise those of the pair run apart (tested below).

use super::BatchNorm;
use crate::kernels::activation::Activation;
use crate::layers::{Layer, Mode, StateMut, StateName};
use crate::real::Real;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::Result;

/// A fused [`BatchNorm`] (full, fused implementation) followed by the
/// activation `A`; see the module docs.
pub(crate) struct BnActivation<T: Real, A: Activation<T>> {
    bn: BatchNorm<T>,
    act: A,
    /// The activation layer's kind, e.g. `ReLU`.
    act_name: String,
}

impl<T: Real, A: Activation<T>> BnActivation<T, A> {
    /// `bn` (built, or built later through this layer) then `act`.
    pub(crate) fn new(bn: BatchNorm<T>, act: A, act_name: String) -> Self {
        BnActivation { bn, act, act_name }
    }
}

impl<T: Real, A: Activation<T> + 'static> Layer<T> for BnActivation<T, A> {
    fn kind(&self) -> String {
        format!("{}+{}", self.bn.kind(), self.act_name)
    }
    fn slots(&self) -> usize {
        2
    }
    fn build(&mut self, input: &[usize], rng: &mut Rng) -> Result<Vec<usize>> {
        self.bn.build(input, rng)
    }
    fn forward(&mut self, x: &Tensor<T>, mode: Mode) -> Result<&Tensor<T>> {
        self.bn.forward_with(x, mode, self.act)
    }
    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        self.bn.backward_with(x, dy, need_dx, self.act)
    }
    fn output(&self) -> &Tensor<T> {
        self.bn.output()
    }
    fn grad_input(&self) -> &Tensor<T> {
        self.bn.grad_input()
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
