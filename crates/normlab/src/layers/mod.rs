//! Layers: each one a forward and a backward pass side by side, the formula
//! in a comment above each.
//!
//! A layer owns its output and its input-gradient tensors and reuses them from
//! batch to batch. The [`Layer`] trait is public and object safe: code outside
//! this crate can define its own normalization layer and put it in a
//! [`crate::models::Sequential`] (see `examples/centering_norm.rs`).
//!
//! ```
//! use normlab::layers::{BatchNorm, BatchNormConfig, Layer, Mode};
//! use normlab::{rng, Tensor};
//! let mut bn = BatchNorm::<f32>::new(BatchNormConfig::pytorch());
//! bn.build(&[3], &mut rng::seeded(0)).unwrap(); // 3 features; PyTorch's BatchNorm1d(3)
//! let x = Tensor::from_vec(&[2, 3], vec![1., 2., 3., 3., 6., 9.]).unwrap();
//! let y = bn.forward(&x, Mode::Train).unwrap();
//! // each feature is centred and scaled to unit variance over the batch
//! assert!((y.data()[0] + 1.0).abs() < 1e-4 && (y.data()[3] - 1.0).abs() < 1e-4);
//! ```

pub mod activation;
mod affine_activation;
pub mod batch_norm;
pub mod batch_renorm;
pub mod conv2d;
pub mod dropout;
pub mod flatten;
pub mod frozen_batch_norm;
pub mod ghost_batch_norm;
pub mod group_norm;
pub mod instance_norm;
pub mod layer_norm;
pub mod linear;
pub mod pit_norm;
pub mod pool;
pub mod rms_norm;
pub mod shift_noise;
pub mod top_k;
pub mod whitening;

pub use activation::{
    GELUFn, LeakyReLU, LeakyReLUFn, Pointwise, PointwiseFn, ReLU, SiLU, SiLUFn, Sigmoid, Tanh, TanhFn, GELU,
};
pub(crate) use affine_activation::{Affine, AffineActivation, Pool};
pub use batch_norm::{BatchNorm, BatchNormConfig, BnImpl, BnParts, Momentum, RunningVar};
pub use conv2d::Conv2d;
pub use dropout::Dropout;
pub use flatten::Flatten;
pub use group_norm::GroupNorm;
pub use layer_norm::LayerNorm;
pub(crate) use linear::FlattenLinear;
pub use linear::Linear;
pub use pool::{AvgPool2d, MaxPool2d};
pub use shift_noise::ShiftNoise;
// normalizations users ask for (issue 18)
pub use batch_renorm::{BatchRenorm, RenormSchedule};
pub use frozen_batch_norm::FrozenBatchNorm;
pub use ghost_batch_norm::GhostBatchNorm;
pub use instance_norm::InstanceNorm;
pub use rms_norm::RmsNorm;
pub use {pit_norm::PitNorm, top_k::TopK, whitening::Whitening};

use crate::real::Real;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::Result;

/// Training mode uses batch statistics (and updates running ones) and
/// applies dropout; evaluation ("prediction") mode uses running statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Training: batch statistics, running ones updated, dropout on
    /// (PyTorch's `model.train()`).
    Train,
    /// Evaluation ("prediction"): running statistics, nothing updated,
    /// dropout off (PyTorch's `model.eval()`).
    Eval,
}

/// The name of an entry of a layer's state: a fixed name (`"weight"`), or
/// one made at run time by a layer that holds others (`"body.0.weight"`).
pub type StateName = std::borrow::Cow<'static, str>;

/// A mutable view of one named entry of a layer's state, in the order and
/// with the names of PyTorch's `state_dict` (`weight`, `bias`,
/// `running_mean`, `running_var`, `num_batches_tracked`).
pub enum StateMut<'a, T: Copy> {
    /// A learnable parameter and its gradient from the last backward pass.
    Param {
        /// The parameter's values (e.g. `weight`, shaped as in PyTorch).
        value: &'a mut Tensor<T>,
        /// `dLoss/dvalue` from the last backward pass, same shape as `value`.
        grad: &'a mut Tensor<T>,
    },
    /// A float buffer that is saved but not learned (running statistics).
    Buffer(&'a mut Tensor<T>),
    /// An integer counter saved as int64 (`num_batches_tracked`).
    Count(&'a mut i64),
}

/// A layer of a [`crate::models::Sequential`], PyTorch's `nn.Module` with
/// the backward pass written out: `build` once, then `forward` and
/// `backward` on each batch (batch dimension first).
pub trait Layer<T: Real>: Send + std::any::Any {
    /// The PyTorch class this layer corresponds to, e.g. `"BatchNorm2d"`.
    fn kind(&self) -> String;

    /// Infers sizes from one example's input shape (no batch dimension),
    /// creates and initializes parameters, and returns one example's output
    /// shape. Called once by the model, in layer order, before any forward.
    fn build(&mut self, input: &[usize], rng: &mut Rng) -> Result<Vec<usize>>;

    /// Computes the output for a batch `x` (batch dimension first), keeps
    /// what the backward pass needs, and returns the output.
    fn forward(&mut self, x: &Tensor<T>, mode: Mode) -> Result<&Tensor<T>>;

    /// Given the same `x` as the last forward and `dy = dLoss/dy`, stores the
    /// parameter gradients (overwriting, not accumulating) and, when
    /// `need_dx`, computes `dLoss/dx` and returns it.
    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>>;

    /// The output of the last forward.
    fn output(&self) -> &Tensor<T>;

    /// The input gradient of the last backward (empty when not computed).
    fn grad_input(&self) -> &Tensor<T>;

    /// How many entries of PyTorch's `nn.Sequential` this layer stands for
    /// (1; more for a fused block). In [`Layer::state_mut`] a block names
    /// the state of its first entry plainly (`"weight"`) and that of its
    /// `k`-th entry, `k ≥ 1`, with the offset in front (`"1.weight"`).
    fn slots(&self) -> usize {
        1
    }

    /// Parameters and buffers with their PyTorch names; empty by default.
    fn state_mut(&mut self) -> Vec<(StateName, StateMut<'_, T>)> {
        Vec::new()
    }

    /// The layer's own random stream (dropout), saved in training
    /// checkpoints so a resumed run draws the same masks.
    fn rng_mut(&mut self) -> Option<&mut Rng> {
        None
    }

    /// Whether this layer's passes split their work across threads for an
    /// input of `input_len` values. Only a scheduling hint: a model keeps a
    /// pool thread awake through runs of layers that do not (see
    /// the hidden `threads` module). By default, from [`PAR_MIN`] values on, the size
    /// at which the elementwise loops here go parallel.
    fn splits_work(&self, input_len: usize) -> bool {
        input_len >= PAR_MIN
    }

    /// This layer as a [`BatchNorm`], for code that works on BN layers
    /// (population statistics, inspection); `None` for every other layer.
    fn as_batch_norm_mut(&mut self) -> Option<&mut BatchNorm<T>> {
        None
    }

    /// Every batch norm in this layer, for code that works on all of them
    /// (population statistics): [`Layer::as_batch_norm_mut`]'s one, or
    /// those of the layers a block holds.
    fn batch_norms_mut(&mut self) -> Vec<&mut BatchNorm<T>> {
        self.as_batch_norm_mut().into_iter().collect()
    }

    /// Which of this layer's `nn.Sequential` entries (see [`Layer::slots`])
    /// its batch norm is: 0, unless a fused layer puts a convolution first.
    fn batch_norm_entry(&self) -> usize {
        0
    }

    /// Turns off the fusion of layers inside this one (a block holding a
    /// [`crate::models::Sequential`]); called by a model built with
    /// `fusion(false)` so that it is unfused all the way down.
    #[doc(hidden)]
    fn disable_inner_fusion(&mut self) {}

    /// For an activation that batch norm can apply in its own sweeps: the
    /// one layer doing `bn` then this activation; otherwise `bn` back.
    /// Called by [`crate::models::Sequential::build`] on the layer after a
    /// fused batch norm; a layer of one's own keeps the default.
    #[doc(hidden)]
    fn fuse_after_batch_norm(
        &self,
        bn: Box<BatchNorm<T>>,
    ) -> std::result::Result<Box<dyn Layer<T>>, Box<BatchNorm<T>>> {
        Err(bn)
    }
}

/// Checks the non-batch dimensions of `x` against the shape the layer was
/// built for and returns the batch size.
pub(crate) fn check_input<T: Real>(layer: &str, x: &Tensor<T>, example: &[usize]) -> Result<usize> {
    if x.rank() != example.len() + 1 || &x.shape()[1..] != example {
        let mut want = vec!["N".to_string()];
        want.extend(example.iter().map(|d| d.to_string()));
        return Err(crate::Error::shape(
            layer,
            format!("expected input of shape [{}], got {:?}", want.join(", "), x.shape()),
        ));
    }
    Ok(x.dim(0))
}

/// Errors if a layer is used before `build`.
pub(crate) fn check_built(layer: &str, built: bool) -> Result<()> {
    if built {
        Ok(())
    } else {
        Err(not_built(layer))
    }
}

/// The error of a layer used before `build`.
pub(crate) fn not_built(layer: &str) -> crate::Error {
    crate::Error::shape(layer, "layer used before build(): put it in a Sequential and build the model, or call build() with one example's input shape")
}

/// Errors if `backward` gets an input of another shape than the last
/// `forward` saw: the backward pass reads what the forward pass kept.
/// `forward_shape` is that shape as the layer recorded it, `[0]` (the shape
/// of [`Tensor::default`]) before any forward.
pub(crate) fn check_forward_ran(layer: &str, forward_shape: &[usize], x: &[usize]) -> Result<()> {
    if forward_shape == x {
        Ok(())
    } else if forward_shape == [0] {
        Err(crate::Error::shape(layer, "backward() before forward(): run forward() on this input first"))
    } else {
        Err(crate::Error::shape(
            layer,
            format!("backward() on an input of shape {x:?} after a forward() on {forward_shape:?}: run forward() on the same input first"),
        ))
    }
}

/// Errors unless the gradient `dy` has the shape of the layer's output,
/// `want`.
pub(crate) fn check_grad<T: Real>(layer: &str, dy: &Tensor<T>, want: &[usize]) -> Result<()> {
    if dy.shape() == want {
        Ok(())
    } else {
        Err(crate::Error::shape(
            layer,
            format!("gradient of shape {:?}, expected the output's shape {want:?}", dy.shape()),
        ))
    }
}

/// The parameters of a layer `z = W·x + b` with one bias per output row.
pub(crate) struct RowsAndBias<'a, T: Copy> {
    pub weight: &'a mut Tensor<T>,
    pub bias: &'a mut Tensor<T>,
    pub bias_grad: &'a mut Tensor<T>,
}

/// Folds a per-output affine map `z -> scale·z + shift` (an eval-mode batch
/// norm) into the layer `z = W·x + b` in front of it: row `o` of the weight
/// (everything that makes output `o`) is multiplied by `scale[o]`, and the
/// bias becomes `scale·b + shift` (`b = 0` for a layer without one, which
/// gains a bias). Computed in f64, rounded once.
pub(crate) fn fold_affine_into_rows<T: Real>(
    layer: &str,
    p: RowsAndBias<'_, T>,
    has_bias: &mut bool,
    (scale, shift): (&[f64], &[f64]),
) -> Result<()> {
    let rows = scale.len();
    if rows == 0 || shift.len() != rows || !p.weight.numel().is_multiple_of(rows) || p.weight.dim(0) != rows {
        return Err(crate::Error::shape(
            layer,
            format!(
                "cannot fold {} scales and {} shifts into a weight of shape {:?}: one per output is needed",
                rows,
                shift.len(),
                p.weight.shape()
            ),
        ));
    }
    let row_len = p.weight.numel() / rows;
    for (row, &s) in p.weight.data_mut().chunks_exact_mut(row_len).zip(scale) {
        for w in row {
            *w = T::from_f64(w.as_f64() * s);
        }
    }
    let old = if *has_bias { p.bias.to_f64_vec() } else { vec![0.0; rows] };
    let folded: Vec<f64> = (0..rows).map(|o| scale[o] * old[o] + shift[o]).collect();
    *p.bias = Tensor::from_f64(&[rows], &folded)?;
    *p.bias_grad = Tensor::zeros(&[rows]);
    *has_bias = true;
    Ok(())
}

/// Uniform in [-bound, bound], as PyTorch's `nn.init.uniform_`.
pub(crate) fn uniform<T: Real>(t: &mut Tensor<T>, bound: f64, rng: &mut Rng) {
    use rand::Rng as _;
    for v in t.data_mut() {
        *v = T::from_f64(rng.gen_range(-bound..=bound));
    }
}

/// Elementwise loops run on rayon above this many elements; below it the
/// thread hand-off costs more than the work.
pub const PAR_MIN: usize = 1 << 15;

/// How a convolution or linear layer draws its initial weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// PyTorch's default: weight and bias uniform in `±1/sqrt(fan_in)`.
    PyTorchDefault,
    /// Xavier/Glorot uniform weights, `±sqrt(6 / (fan_in + fan_out))` (d2l's
    /// `init_cnn`); the bias keeps PyTorch's default.
    XavierUniform,
}

pub(crate) fn init_weights<T: Real>(
    init: Init,
    weight: &mut Tensor<T>,
    bias: Option<&mut Tensor<T>>,
    fan_in: usize,
    fan_out: usize,
    rng: &mut Rng,
) {
    let bound = match init {
        Init::PyTorchDefault => 1.0 / (fan_in as f64).sqrt(),
        Init::XavierUniform => (6.0 / (fan_in + fan_out) as f64).sqrt(),
    };
    uniform(weight, bound, rng);
    if let Some(b) = bias {
        uniform(b, 1.0 / (fan_in as f64).sqrt(), rng);
    }
}
