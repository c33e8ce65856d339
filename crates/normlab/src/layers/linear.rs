//! Fully connected layer, as `nn.Linear` (or `nn.LazyLinear`: the input size
//! is inferred at build time).
//!
//! Forward:  `y[N×out] = x[N×in] · Wᵀ + b`
//! Backward: `dW = dyᵀ · x`, `db = Σₙ dy`, `dx = dy · W`

use rayon::prelude::*;

use super::{check_built, check_grad, init_weights, Init, Layer, Mode, StateMut, StateName};
use crate::kernels::gemm::{gemm, rows_times_weights, Product};
use crate::kernels::linear_packed::{self, PackedWeights};
use crate::real::{as_f32, as_f32_mut, Real};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// A fully connected layer, as `nn.Linear(in_features, out_features)` (or
/// `nn.LazyLinear(out_features)`): `y = x·Wᵀ + b`, `W` of shape
/// `(out_features, in_features)`.
pub struct Linear<T: Real = f32> {
    in_features: usize,
    out_features: usize,
    has_bias: bool,
    init: Init,
    weight: Tensor<T>,
    bias: Tensor<T>,
    weight_grad: Tensor<T>,
    bias_grad: Tensor<T>,
    /// The weights in the panels of `linear_packed`'s kernel (f32 with
    /// AVX2 or AVX-512).
    packed: PackedWeights,
    /// Whether `packed` holds the current weights: set when packed, cleared
    /// wherever the weights can change (build, `state_mut`, folding), so
    /// prediction packs once, not per call.
    packed_fresh: bool,
    /// One example's input shape when a [`FlattenLinear`] feeds this layer
    /// its input unflattened (empty otherwise).
    flat_input: Vec<usize>,
    y: Tensor<T>,
    dx: Tensor<T>,
}

impl<T: Real> Linear<T> {
    /// A linear layer with `out_features` outputs and a bias, PyTorch's init.
    pub fn new(out_features: usize) -> Self {
        Linear {
            in_features: 0,
            out_features,
            has_bias: true,
            init: Init::PyTorchDefault,
            weight: Tensor::default(),
            bias: Tensor::default(),
            weight_grad: Tensor::default(),
            bias_grad: Tensor::default(),
            packed: PackedWeights::new(),
            packed_fresh: false,
            flat_input: Vec::new(),
            y: Tensor::default(),
            dx: Tensor::default(),
        }
    }
    /// Whether the layer has a bias `b` (PyTorch's `bias=True`, the default).
    pub fn bias(mut self, on: bool) -> Self {
        self.has_bias = on;
        self
    }
    /// How the weights are drawn at build ([`Init::PyTorchDefault`] unless set).
    pub fn init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }
    /// The weight `W`, `(out_features, in_features)` (PyTorch's `weight`);
    /// empty before build.
    pub fn weight(&self) -> &Tensor<T> {
        &self.weight
    }
    /// The bias `b`, when the layer has one.
    pub fn bias_values(&self) -> Option<&Tensor<T>> {
        self.has_bias.then_some(&self.bias)
    }
    /// The number of outputs (PyTorch's `out_features`).
    pub fn out_features(&self) -> usize {
        self.out_features
    }
    /// Reads its input as `(N, ...example)` and flattens it in place (a
    /// fused `Flatten` in front: see [`FlattenLinear`]); call after build.
    pub(crate) fn read_flattened(&mut self, example: &[usize]) {
        debug_assert_eq!(example.iter().product::<usize>(), self.in_features);
        self.flat_input = example.to_vec();
    }

    /// The output of the last forward, for a fused layer that applies its
    /// activation in place.
    pub(crate) fn output_mut(&mut self) -> &mut Tensor<T> {
        &mut self.y
    }
    /// The batch size of `x`, checked: `(N, in_features)`, or `(N, ...)` of
    /// the shape a [`FlattenLinear`] flattens.
    fn rows(&self, x: &Tensor<T>) -> Result<usize> {
        check_built("Linear", self.in_features > 0)?;
        if self.flat_input.is_empty() {
            super::check_input("Linear", x, &[self.in_features])
        } else {
            super::check_input("Flatten+Linear", x, &self.flat_input)
        }
    }

    /// Folds `y -> scale·y + shift` per output (an eval-mode batch norm
    /// after this layer) into the weight and bias; the layer gains a bias if
    /// it had none.
    pub(crate) fn absorb_channel_affine(&mut self, scale: &[f64], shift: &[f64]) -> Result<()> {
        self.packed_fresh = false;
        let p = super::RowsAndBias { weight: &mut self.weight, bias: &mut self.bias, bias_grad: &mut self.bias_grad };
        super::fold_affine_into_rows("Linear", p, &mut self.has_bias, (scale, shift))
    }
}

/// Where the packed kernel does not run (f64, a CPU without AVX2, one row
/// at AVX2: see `linear_packed::applies`), batches up to this size run the
/// forward pass as dot products (`kernels::gemm::rows_times_weights`),
/// which need no packing of the weights: prediction one image at a time.
/// Training batches are larger.
const DOT_MAX_ROWS: usize = 4;

/// Multiply-adds from which a pass splits across two threads (the batch's
/// halves forward; the weight and input gradients side by side backward):
/// BNLeNet's first two layers (3.9 M and 1.3 M at batch 128), not its last.
const SPLIT_MIN: usize = 1 << 20;

/// Whether a pass over `n` examples splits (see [`SPLIT_MIN`]).
fn splits(n: usize, in_features: usize, out_features: usize) -> bool {
    n * in_features * out_features >= SPLIT_MIN
}

impl<T: Real> Layer<T> for Linear<T> {
    fn kind(&self) -> String {
        "Linear".into()
    }

    fn splits_work(&self, input_len: usize) -> bool {
        splits(input_len, 1, self.out_features)
    }

    fn build(&mut self, input: &[usize], rng: &mut Rng) -> Result<Vec<usize>> {
        if input.len() != 1 {
            return Err(Error::shape(
                "Linear",
                format!("expected input (N, in_features), got one example of shape {input:?}; put a Flatten before it"),
            ));
        }
        if self.out_features == 0 {
            return Err(Error::config("Linear out_features", "must be at least 1"));
        }
        if input[0] == 0 {
            return Err(Error::shape("Linear", "expected at least one input feature, got 0"));
        }
        self.in_features = input[0];
        self.packed_fresh = false;
        self.weight = Tensor::zeros(&[self.out_features, self.in_features]);
        self.weight_grad = Tensor::zeros(&[self.out_features, self.in_features]);
        if self.has_bias {
            self.bias = Tensor::zeros(&[self.out_features]);
            self.bias_grad = Tensor::zeros(&[self.out_features]);
        }
        let bias = if self.has_bias { Some(&mut self.bias) } else { None };
        init_weights(self.init, &mut self.weight, bias, self.in_features, self.out_features, rng);
        Ok(vec![self.out_features])
    }

    fn forward(&mut self, x: &Tensor<T>, _mode: Mode) -> Result<&Tensor<T>> {
        let n = self.rows(x)?;
        let (fi, fo) = (self.in_features, self.out_features);
        self.y.resize(&[n, fo]);
        // f32 at AVX2 or AVX-512: the weights packed once; the sums in the
        // gemm path's order, so the values are those of the gemm path below
        if linear_packed::applies::<T>(n) {
            if !self.packed_fresh || !self.packed.current() {
                self.packed.pack(as_f32(self.weight.data()), fo, fi);
                self.packed_fresh = true;
            }
            let (packed, bias) = (&self.packed, self.has_bias.then(|| as_f32(self.bias.data())));
            let (x, y) = (as_f32(x.data()), as_f32_mut(self.y.data_mut()));
            if splits(n, fi, fo) {
                // fixed halves of the batch, whatever the number of threads
                let half = n.div_ceil(2);
                x.par_chunks(half * fi)
                    .zip(y.par_chunks_mut(half * fo))
                    .for_each(|(xs, ys)| packed.forward(xs, bias, ys));
            } else {
                packed.forward(x, bias, y);
            }
            return Ok(&self.y);
        }
        let y = self.y.data_mut();
        if self.has_bias {
            for row in y.chunks_exact_mut(fo) {
                row.copy_from_slice(self.bias.data());
            }
        }
        let beta = if self.has_bias { T::one() } else { T::zero() };
        let w = self.weight.data();
        if n <= DOT_MAX_ROWS {
            rows_times_weights(x.data(), w, fi, self.has_bias, y);
        } else if splits(n, fi, fo) {
            // fixed halves of the batch, whatever the number of threads
            let half = n.div_ceil(2);
            x.data().par_chunks(half * fi).zip(y.par_chunks_mut(half * fo)).for_each(|(xs, ys)| {
                gemm(Product::nt(xs.len() / fi, fo, fi), T::one(), xs, w, beta, ys);
            });
        } else {
            gemm(Product::nt(n, fo, fi), T::one(), x.data(), w, beta, y);
        }
        Ok(&self.y)
    }

    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        let n = self.rows(x)?;
        let (fi, fo) = (self.in_features, self.out_features);
        check_grad("Linear", dy, &[n, fo])?;
        let (dyd, xd, w) = (dy.data(), x.data(), self.weight.data());
        let (dw, db, has_bias) = (self.weight_grad.data_mut(), self.bias_grad.data_mut(), self.has_bias);
        let mut param_grads = || {
            gemm(Product::tn(fo, fi, n), T::one(), dyd, xd, T::zero(), dw);
            if has_bias {
                db.fill(T::zero());
                for row in dyd.chunks_exact(fo) {
                    for (d, &g) in db.iter_mut().zip(row) {
                        *d += g;
                    }
                }
            }
        };
        if !need_dx {
            param_grads();
            return Ok(&self.dx);
        }
        // (N, in_features), or the unflattened shape for a FlattenLinear
        self.dx.resize(x.shape());
        let dx = self.dx.data_mut();
        let mut input_grad = || gemm(Product::nn(n, fi, fo), T::one(), dyd, w, T::zero(), dx);
        // the two products are independent
        if splits(n, fi, fo) {
            rayon::join(param_grads, input_grad);
        } else {
            param_grads();
            input_grad();
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
        // the caller may change the weights through these (an optimizer step, a checkpoint)
        self.packed_fresh = false;
        let mut s = vec![("weight".into(), StateMut::Param { value: &mut self.weight, grad: &mut self.weight_grad })];
        if self.has_bias {
            s.push(("bias".into(), StateMut::Param { value: &mut self.bias, grad: &mut self.bias_grad }));
        }
        s
    }
}

/// `Flatten -> Linear` as one layer (two `nn.Sequential` entries): the
/// linear layer reads the `(N, C, H, W)` input as the `(N, C·H·W)` rows it
/// is, and hands back its input gradient in that shape, so neither pass
/// copies the tensor to change its shape (0.3 ms of a 16 ms training step
/// of the fast preset, 128 x 3136 values each way). A model makes it where
/// it finds that pair and no activation follows the linear layer (that run
/// fuses as `Linear -> activation` instead); nobody constructs it by hand.
pub(crate) struct FlattenLinear<T: Real> {
    linear: Linear<T>,
}

impl<T: Real> FlattenLinear<T> {
    /// `linear`, built on the flattening of one example of shape `example`.
    pub(crate) fn from_built(example: &[usize], mut linear: Linear<T>) -> Self {
        linear.read_flattened(example);
        FlattenLinear { linear }
    }
}

impl<T: Real> Layer<T> for FlattenLinear<T> {
    fn kind(&self) -> String {
        "Flatten+Linear".into()
    }
    fn slots(&self) -> usize {
        2
    }
    fn splits_work(&self, input_len: usize) -> bool {
        self.linear.splits_work(input_len)
    }
    fn build(&mut self, input: &[usize], rng: &mut Rng) -> Result<Vec<usize>> {
        let features = input.iter().product::<usize>();
        let out = self.linear.build(&[features], rng)?;
        self.linear.read_flattened(input);
        Ok(out)
    }
    fn forward(&mut self, x: &Tensor<T>, mode: Mode) -> Result<&Tensor<T>> {
        self.linear.forward(x, mode)
    }
    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        self.linear.backward(x, dy, need_dx)
    }
    fn output(&self) -> &Tensor<T> {
        self.linear.output()
    }
    fn grad_input(&self) -> &Tensor<T> {
        self.linear.grad_input()
    }
    /// The linear layer's state, named in the second entry (`1.weight`).
    fn state_mut(&mut self) -> Vec<(StateName, StateMut<'_, T>)> {
        self.linear.state_mut().into_iter().map(|(name, s)| (format!("1.{name}").into(), s)).collect()
    }
}
