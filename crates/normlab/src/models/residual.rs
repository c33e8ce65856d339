//! A residual block: the skip connection a [`Sequential`] cannot express,
//! as one layer that holds two small models.
//!
//! ```text
//! forward:   y = body(x) + shortcut(x)          (shortcut(x) = x when there is none)
//! backward:  dx = body'(x)ᵀ·dy + shortcut'(x)ᵀ·dy  (= dy through an identity shortcut)
//! ```
//!
//! ResNet's basic block is `Residual(conv-BN-ReLU-conv-BN, shortcut)`
//! followed by a ReLU; where the block changes the shape (a stride of 2,
//! more channels) the shortcut is a 1x1 convolution and BN. State names are
//! those of a PyTorch module with attributes `body` and `shortcut`:
//! `net.3.body.0.weight`, `net.3.shortcut.1.running_mean`.
//!
//! A model fuses the ReLU after the block into it (`Residual+ReLU`, two
//! entries of the `nn.Sequential`): `y = relu(body(x) + shortcut(x))` in the
//! sweep that adds, and backward `ds = dy·[y > 0]` (as ReLU's `[s > 0]`,
//! since `y > 0` exactly where `s > 0`) in one sweep before the two parts,
//! instead of a ReLU layer's two more sweeps over the block's output.

use std::borrow::Cow;

use super::Sequential;
use crate::kernels::activation::{Activation, ReluAct};
use crate::layers::activation::zip_into;
use crate::layers::{BatchNorm, Layer, Mode, StateMut};
use crate::real::Real;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// `y = body(x) + shortcut(x)`, the shortcut the identity when absent; see
/// the module docs.
///
/// ```
/// use normlab::layers::{BatchNorm, BatchNormConfig, Conv2d, Layer, ReLU};
/// use normlab::models::{Residual, Sequential};
/// use normlab::{rng, Tensor};
/// let bn = || BatchNorm::new(BatchNormConfig::pytorch());
/// let body = Sequential::new()
///     .push(Conv2d::new(8, 3).padding(1).bias(false)).push(bn()).push(ReLU::new())
///     .push(Conv2d::new(8, 3).padding(1).bias(false)).push(bn());
/// let mut net = Sequential::<f32>::new().push(Residual::new(body)).push(ReLU::new());
/// net.build(&[8, 6, 6], &mut rng::seeded(0)).unwrap();
/// assert_eq!(net.forward(&Tensor::zeros(&[2, 8, 6, 6])).unwrap().shape(), &[2, 8, 6, 6]);
/// assert_eq!(net.state_names()[0], "net.0.body.0.weight");
/// ```
pub struct Residual<T: Real = f32> {
    body: Sequential<T>,
    shortcut: Option<Sequential<T>>,
    /// Whether the ReLU after the block runs inside it (see the module docs).
    relu_after: bool,
    y: Tensor<T>,
    /// With `relu_after`: the gradient at the sum, `dy·[y > 0]`.
    dsum: Tensor<T>,
    dx: Tensor<T>,
    /// The input shape of the last forward pass (`[0]` before any).
    forward_shape: Vec<usize>,
}

impl<T: Real> Residual<T> {
    /// `x + body(x)`: the body must keep the shape of its input.
    pub fn new(body: Sequential<T>) -> Self {
        Residual {
            body: body.named("body"),
            shortcut: None,
            relu_after: false,
            y: Tensor::default(),
            dsum: Tensor::default(),
            dx: Tensor::default(),
            forward_shape: vec![0],
        }
    }

    /// `shortcut(x) + body(x)`, for a body that changes the shape (both
    /// must give the same output shape).
    pub fn with_shortcut(body: Sequential<T>, shortcut: Sequential<T>) -> Self {
        Residual { shortcut: Some(shortcut.named("shortcut")), ..Residual::new(body) }
    }

    /// The body, `body(x)`.
    pub fn body(&self) -> &Sequential<T> {
        &self.body
    }
    /// The shortcut, when the block has one (else the identity).
    pub fn shortcut(&self) -> Option<&Sequential<T>> {
        self.shortcut.as_ref()
    }

    pub(super) fn parts_mut(&mut self) -> impl Iterator<Item = &mut Sequential<T>> {
        std::iter::once(&mut self.body).chain(self.shortcut.as_mut())
    }

    /// The block with the ReLU after it inside (the fusion pass).
    pub(super) fn with_relu_after(mut self) -> Self {
        self.relu_after = true;
        self
    }
}

impl<T: Real> Layer<T> for Residual<T> {
    fn kind(&self) -> String {
        if self.relu_after { "Residual+ReLU" } else { "Residual" }.into()
    }

    fn slots(&self) -> usize {
        1 + usize::from(self.relu_after)
    }

    fn disable_inner_fusion(&mut self) {
        for part in self.parts_mut() {
            part.fusion = false;
        }
    }

    fn build(&mut self, input: &[usize], rng: &mut Rng) -> Result<Vec<usize>> {
        let body = self.body.build(input, rng)?;
        let other = match &mut self.shortcut {
            Some(s) => s.build(input, rng)?,
            None => input.to_vec(),
        };
        if body != other {
            let what = if self.shortcut.is_some() { "the shortcut's" } else { "its input's (no shortcut)" };
            return Err(Error::shape(
                "Residual",
                format!(
                    "the body's output shape {body:?} differs from {what} {other:?}; \
                     give a shortcut that matches (e.g. a 1x1 convolution with the body's stride and channels)"
                ),
            ));
        }
        // a layer with its own random stream (dropout) would be saved in no
        // checkpoint from in here, and a resumed run would draw other masks
        for part in self.parts_mut() {
            if part.layers_mut().iter_mut().any(|l| l.rng_mut().is_some()) {
                return Err(Error::config(
                    "Residual",
                    "dropout inside a residual block is not supported: put it after the block",
                ));
            }
        }
        for part in self.parts_mut() {
            part.set_input_grad(true);
        }
        Ok(body)
    }

    fn forward(&mut self, x: &Tensor<T>, mode: Mode) -> Result<&Tensor<T>> {
        self.forward_shape = vec![0];
        self.body.set_mode(mode);
        self.body.forward(x)?;
        let other = match &mut self.shortcut {
            Some(s) => {
                s.set_mode(mode);
                s.forward(x)?
            }
            None => x,
        };
        let body = self.body.layers().last().map_or(x, |l| l.output());
        self.y.resize(body.shape());
        // one sweep, in parallel on large tensors: y = body + other (then ReLU)
        if self.relu_after {
            zip_into(body.data(), other.data(), self.y.data_mut(), |b, o| ReluAct.value(b + o));
        } else {
            zip_into(body.data(), other.data(), self.y.data_mut(), |b, o| b + o);
        }
        self.forward_shape = x.shape().to_vec();
        Ok(&self.y)
    }

    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        crate::layers::check_forward_ran("Residual", &self.forward_shape, x.shape())?;
        crate::layers::check_grad("Residual", dy, self.y.shape())?;
        let dy = if self.relu_after {
            self.dsum.resize(dy.shape());
            zip_into(self.y.data(), dy.data(), self.dsum.data_mut(), |y, g| ReluAct.grad(y, g));
            &self.dsum
        } else {
            dy
        };
        self.body.backward(x, dy)?;
        if let Some(s) = &mut self.shortcut {
            s.backward(x, dy)?;
        }
        if need_dx {
            self.dx.resize(x.shape());
            let through = self.shortcut.as_ref().map_or(dy, |s| s.grad_input());
            let (dx, body) = (self.dx.data_mut(), self.body.grad_input().data());
            zip_into(body, through.data(), dx, |b, s| b + s);
        }
        Ok(&self.dx)
    }

    fn output(&self) -> &Tensor<T> {
        &self.y
    }

    fn grad_input(&self) -> &Tensor<T> {
        &self.dx
    }

    fn state_mut(&mut self) -> Vec<(Cow<'static, str>, StateMut<'_, T>)> {
        let mut state = Vec::new();
        for part in self.parts_mut() {
            state.extend(part.state_mut().into_iter().map(|(name, s)| (Cow::Owned(name), s)));
        }
        state
    }

    fn batch_norms_mut(&mut self) -> Vec<&mut BatchNorm<T>> {
        let mut all = Vec::new();
        for part in self.parts_mut() {
            for layer in part.layers_mut() {
                all.extend(layer.batch_norms_mut());
            }
        }
        all
    }
}
