//! Models: a [`Sequential`] container with PyTorch-style names and shape
//! inference, and the LeNet family of the chapter.

mod fold;
mod fusion;
pub mod lenet;
mod residual;
pub mod spec;

pub use spec::{Architecture, LayerSpec, ModelSpec, TrainDefaults};

pub use fold::Folds;
pub use residual::Residual;

pub use lenet::{
    bn_lenet, bn_lenet_scratch, build, build_config, build_config_for, lenet, ln_lenet, Activation, LeNetConfig,
    ModelKind, Norm, NormPlacement, INPUT_SHAPE, NUM_CLASSES,
};

use crate::layers::{Layer, Mode, StateMut};
use crate::real::Real;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::threads;
use crate::{Error, Result};

/// Layers applied in order, like PyTorch's `nn.Sequential`, held in an
/// attribute named `prefix` (default `net`, as in d2l's classes), so state
/// names read `net.0.weight`, `net.1.running_mean`, ...
///
/// ```
/// use normlab::layers::{Linear, ReLU};
/// use normlab::models::Sequential;
/// use normlab::{rng, Tensor};
/// let mut net = Sequential::<f32>::new()
///     .push(Linear::new(16))
///     .push(ReLU::new())
///     .push(Linear::new(3));
/// net.build(&[8], &mut rng::seeded(0)).unwrap(); // in_features inferred: 8
/// let y = net.forward(&Tensor::zeros(&[4, 8])).unwrap();
/// assert_eq!(y.shape(), &[4, 3]);
/// assert_eq!(net.state_names()[0], "net.0.weight");
/// ```
pub struct Sequential<T: Real = f32> {
    prefix: String,
    layers: Vec<Box<dyn Layer<T>>>,
    example_shape: Vec<usize>,
    output_shapes: Vec<Vec<usize>>,
    /// `slots()` as of the last build, for error messages.
    slot_base: Vec<usize>,
    mode: Mode,
    input_grad: bool,
    /// Whether build replaces runs of layers by fused ones (see `fusion.rs`).
    fusion: bool,
    built: bool,
    /// What [`Sequential::grad_input`] returns without layers.
    no_grad: Tensor<T>,
    /// [`Sequential::predict`]'s input chunk and assembled output.
    chunk_in: Tensor<T>,
    predicted: Tensor<T>,
    /// Whether the last pass was a `predict` (which keeps nothing for
    /// backward).
    predicted_last: bool,
}

/// Bytes of the largest activation one thread's share of a prediction
/// chunk may take (see [`Sequential::predict`]): with input and output of a
/// layer both in cache, a little under a 1-2 MB L2.
const PREDICT_CHUNK_BYTES: usize = 3 << 18;

/// Consecutive layers of a [`Sequential`]; see `Sequential::runs`.
struct Run {
    layers: std::ops::Range<usize>,
    serial: bool,
}

impl<T: Real> Default for Sequential<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Real> Sequential<T> {
    /// An empty model in training mode (PyTorch's `nn.Sequential()`).
    pub fn new() -> Self {
        Sequential {
            prefix: "net".into(),
            layers: Vec::new(),
            example_shape: Vec::new(),
            output_shapes: Vec::new(),
            slot_base: Vec::new(),
            mode: Mode::Train,
            input_grad: false,
            fusion: true,
            built: false,
            no_grad: Tensor::default(),
            chunk_in: Tensor::default(),
            predicted: Tensor::default(),
            predicted_last: false,
        }
    }

    /// The model held under `prefix` instead of `net`: its state names
    /// then read `prefix.0.weight`, ...
    pub fn named(mut self, prefix: &str) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Appends a layer (builder style); build the model again afterwards.
    pub fn push(mut self, layer: impl Layer<T> + 'static) -> Self {
        self.layers.push(Box::new(layer));
        self.built = false;
        self
    }

    /// Appends a boxed layer (PyTorch's `append`); build the model again
    /// afterwards.
    pub fn push_boxed(&mut self, layer: Box<dyn Layer<T>>) {
        self.layers.push(layer);
        self.built = false;
    }

    /// Turns the fusion of layers at build on (the default) or off: with
    /// it, runs such as `Conv2d -> BatchNorm2d -> ReLU` become one layer
    /// that computes the same values in fewer sweeps over memory (the table
    /// is in `models/fusion.rs`); [`Self::layers`] then lists the fused
    /// layers. Off, every layer runs as pushed. Takes effect at the next
    /// build; a model built fused stays fused.
    pub fn fusion(mut self, on: bool) -> Self {
        self.fusion = on;
        self
    }

    /// Infers every layer's sizes from one example's shape (e.g. `[1, 28, 28]`)
    /// and initializes parameters from `rng`, in layer order, then fuses
    /// runs of layers (see [`Self::fusion`]). Returns one example's output
    /// shape.
    pub fn build(&mut self, example_shape: &[usize], rng: &mut Rng) -> Result<Vec<usize>> {
        if self.layers.is_empty() {
            return Err(Error::config("model", "a Sequential needs at least one layer"));
        }
        if !self.fusion {
            for layer in self.layers.iter_mut() {
                layer.disable_inner_fusion();
            }
        }
        let mut shape = example_shape.to_vec();
        self.output_shapes.clear();
        let mut slot = 0;
        for layer in self.layers.iter_mut() {
            shape = layer.build(&shape, rng).map_err(|e| match e {
                Error::Shape { layer: l, message } => {
                    Error::Shape { layer: format!("{}.{slot} ({l})", self.prefix), message }
                }
                other => other,
            })?;
            slot += layer.slots();
            self.output_shapes.push(shape.clone());
        }
        if self.fusion {
            let built: Vec<fusion::Built<T>> =
                std::mem::take(&mut self.layers).into_iter().zip(std::mem::take(&mut self.output_shapes)).collect();
            (self.layers, self.output_shapes) = fusion::fuse(example_shape, built)?.into_iter().unzip();
        }
        self.example_shape = example_shape.to_vec();
        self.slot_base = self.slots();
        self.built = true;
        Ok(shape)
    }

    /// Runs the fusion pass of [`Self::build`] on the built model now, in
    /// residual blocks too, and leaves fusion on: for a model built with
    /// fusion off and changed since, such as one whose batch norms
    /// [`Self::fold_batch_norms`] folded (its convolutions and linear
    /// layers then fuse with the activations after them). The outputs do
    /// not change; the weights, state names and mode stay.
    ///
    /// ```
    /// use normlab::layers::{BatchNorm, BatchNormConfig, Conv2d, ReLU};
    /// use normlab::models::Sequential;
    /// use normlab::{rng, Tensor};
    /// let mut net = Sequential::<f32>::new()
    ///     .push(Conv2d::new(4, 3))
    ///     .push(BatchNorm::new(BatchNormConfig::pytorch()))
    ///     .push(ReLU::new())
    ///     .fusion(false);
    /// net.build(&[1, 8, 8], &mut rng::seeded(0)).unwrap();
    /// net.fold_batch_norms().unwrap();
    /// net.fuse().unwrap();
    /// assert_eq!(net.len(), 1); // Conv2d+ReLU
    /// assert_eq!(net.forward(&Tensor::zeros(&[2, 1, 8, 8])).unwrap().shape(), &[2, 4, 6, 6]);
    /// ```
    pub fn fuse(&mut self) -> Result<()> {
        if !self.built {
            return Err(Error::config("model", "call build() with one example's input shape before fuse()"));
        }
        for layer in self.layers.iter_mut() {
            if let Some(block) = (&mut **layer as &mut dyn std::any::Any).downcast_mut::<Residual<T>>() {
                for part in block.parts_mut() {
                    part.fuse()?;
                }
            }
        }
        self.fusion = true;
        let built: Vec<fusion::Built<T>> =
            std::mem::take(&mut self.layers).into_iter().zip(std::mem::take(&mut self.output_shapes)).collect();
        (self.layers, self.output_shapes) = fusion::fuse(&self.example_shape, built)?.into_iter().unzip();
        self.slot_base = self.slots();
        Ok(())
    }

    /// One example's input shape given to the last build (empty before).
    pub fn example_shape(&self) -> &[usize] {
        &self.example_shape
    }

    /// One example's output shape as of the last build (empty before it).
    pub fn output_shape(&self) -> &[usize] {
        self.output_shapes.last().map_or(&[], Vec::as_slice)
    }

    /// Switches to training mode (PyTorch's `model.train()`).
    pub fn train(&mut self) {
        self.mode = Mode::Train;
    }
    /// Switches to evaluation mode (PyTorch's `model.eval()`).
    pub fn eval(&mut self) {
        self.mode = Mode::Eval;
    }
    /// The mode the next forward pass runs in.
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// Switches to `mode`.
    pub fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }

    /// Also compute the gradient with respect to the model's input in
    /// `backward` (off by default: training never needs it).
    pub fn set_input_grad(&mut self, on: bool) {
        self.input_grad = on;
    }

    /// The layers, in order, as they run: after a build with fusion on
    /// (the default), a fused run is one entry (see [`Self::fusion`]).
    pub fn layers(&self) -> &[Box<dyn Layer<T>>] {
        &self.layers
    }
    /// The layers, in order, to change in place.
    pub fn layers_mut(&mut self) -> &mut [Box<dyn Layer<T>>] {
        &mut self.layers
    }
    /// The layers, taken out of the model (PyTorch's `children()`, owned).
    pub fn into_layers(self) -> Vec<Box<dyn Layer<T>>> {
        self.layers
    }
    /// The number of layers (a fused block counts once; see [`Self::slots`]).
    pub fn len(&self) -> usize {
        self.layers.len()
    }
    /// Whether the model has no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Runs every layer in the current mode and returns the last output.
    /// Layers that stay on one thread run with the pool kept awake (see
    /// the hidden `threads` module), so the parallel layer after them starts at once.
    pub fn forward(&mut self, x: &Tensor<T>) -> Result<&Tensor<T>> {
        if !self.built {
            return Err(Error::config("model", "call build() with one example's input shape before forward()"));
        }
        self.predicted_last = false;
        self.forward_in(x, self.mode)
    }

    /// Prediction: the eval-mode forward pass (running statistics, no
    /// dropout) whatever [`Self::mode`] is, for outputs only; it keeps
    /// nothing a `backward` could use. A large batch runs through the whole
    /// network in chunks of examples whose activations stay in the cores'
    /// caches, instead of layer by layer through memory: every example's
    /// output is bitwise what [`Self::forward`] in eval mode gives (each
    /// example is computed on its own; tested), and resnet-bn's batch of
    /// 256 takes about a fifth less time. The layers' own outputs then hold
    /// the last chunk's.
    pub fn predict(&mut self, x: &Tensor<T>) -> Result<&Tensor<T>> {
        if !self.built {
            return Err(Error::config("model", "call build() with one example's input shape before predict()"));
        }
        self.predicted_last = true;
        let batch = batch_size(x);
        let chunk = self.prediction_chunk(rayon::current_num_threads());
        if x.rank() != self.example_shape.len() + 1 || x.shape()[1..] != self.example_shape[..] || batch < 2 * chunk {
            // one pass (the layers report a wrong shape)
            return self.forward_in(x, Mode::Eval);
        }
        let (per_in, per_out) = (x.numel() / batch, self.output_shape().iter().product::<usize>());
        let mut shape = vec![batch];
        shape.extend(self.output_shape());
        let mut out = std::mem::take(&mut self.predicted);
        let mut xc = std::mem::take(&mut self.chunk_in);
        out.resize(&shape);
        // the pool kept awake between chunks too, where this thread copies
        let result = threads::keep_pool_awake(|| {
            for c0 in (0..batch).step_by(chunk) {
                let n = chunk.min(batch - c0);
                shape = x.shape().to_vec();
                shape[0] = n;
                xc.resize(&shape);
                xc.data_mut().copy_from_slice(&x.data()[c0 * per_in..(c0 + n) * per_in]);
                let y = self.forward_in(&xc, Mode::Eval)?;
                out.data_mut()[c0 * per_out..(c0 + n) * per_out].copy_from_slice(y.data());
            }
            Ok(())
        });
        (self.predicted, self.chunk_in) = (out, xc);
        result.map(|()| &self.predicted)
    }

    /// Examples per [`Self::predict`] chunk with `threads` workers (a batch
    /// of fewer than two chunks runs in one pass): the largest power of two
    /// whose largest layer output (or input) fits 0.75 MB per thread, at
    /// least one per thread.
    /// Measured on Zen 4 (resnet-bn, vgg-bn at batch 256): 8 and 4 on one
    /// thread, 16 and 8 on two, each within 5% of the best power of two.
    pub fn prediction_chunk(&self, threads: usize) -> usize {
        let largest = std::iter::once(&self.example_shape)
            .chain(&self.output_shapes)
            .map(|s| s.iter().product::<usize>())
            .max()
            .unwrap_or(1)
            .max(1);
        let fits = PREDICT_CHUNK_BYTES * threads / (largest * std::mem::size_of::<T>());
        let pow2 = if fits == 0 { 1 } else { 1 << fits.ilog2() };
        pow2.max(threads)
    }

    fn forward_in(&mut self, x: &Tensor<T>, mode: Mode) -> Result<&Tensor<T>> {
        for run in self.runs(batch_size(x)) {
            let one = |i: usize, layers: &mut [Box<dyn Layer<T>>]| {
                let (done, rest) = layers.split_at_mut(i);
                let input = if i == 0 { x } else { done[i - 1].output() };
                rest[0]
                    .forward(input, mode)
                    .map(|_| ())
                    .map_err(|e| locate(&self.prefix, self.slot_base.get(i).copied().unwrap_or(i), e))
            };
            let layers = &mut self.layers;
            if run.serial {
                threads::keep_pool_awake(|| run.layers.clone().try_for_each(|i| one(i, layers)))?;
            } else {
                run.layers.clone().try_for_each(|i| one(i, layers))?;
            }
        }
        // built: build refuses a Sequential without layers
        Ok(self.layers[self.layers.len() - 1].output())
    }

    /// The layers in runs, in order: each either one layer that splits its
    /// work across threads, or consecutive layers that do not (`serial`),
    /// which run with the pool kept awake for the layer after them.
    fn runs(&self, batch: usize) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let input_len =
                batch * if i == 0 { &self.example_shape } else { &self.output_shapes[i - 1] }.iter().product::<usize>();
            let serial = !layer.splits_work(input_len);
            match runs.last_mut() {
                Some(run) if run.serial && serial => run.layers.end = i + 1,
                _ => runs.push(Run { layers: i..i + 1, serial }),
            }
        }
        runs
    }

    /// Back-propagates `dy` (the loss gradient with respect to the output of
    /// the last forward on the same `x`), storing every parameter gradient.
    pub fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>) -> Result<()> {
        if !self.built {
            return Err(Error::config("model", "call build() and forward() before backward()"));
        }
        if self.predicted_last {
            return Err(Error::config("model", "predict() keeps nothing for backward(); call forward() first"));
        }
        let n = self.layers.len();
        let input_grad = self.input_grad;
        for run in self.runs(batch_size(x)).into_iter().rev() {
            let one = |i: usize, layers: &mut [Box<dyn Layer<T>>]| {
                let (done, rest) = layers.split_at_mut(i);
                // i < n: the runs cover the layers' indices, so rest has a first
                let (layer, after) = rest.split_first_mut().expect("i < n");
                let input = if i == 0 { x } else { done[i - 1].output() };
                let grad = if i + 1 == n { dy } else { after[0].grad_input() };
                layer
                    .backward(input, grad, i > 0 || input_grad)
                    .map(|_| ())
                    .map_err(|e| locate(&self.prefix, self.slot_base.get(i).copied().unwrap_or(i), e))
            };
            let layers = &mut self.layers;
            if run.serial {
                threads::keep_pool_awake(|| run.layers.clone().rev().try_for_each(|i| one(i, layers)))?;
            } else {
                run.layers.clone().rev().try_for_each(|i| one(i, layers))?;
            }
        }
        Ok(())
    }

    /// The gradient with respect to the input, when `set_input_grad(true)`
    /// (an empty tensor before the first backward, or without layers).
    pub fn grad_input(&self) -> &Tensor<T> {
        self.layers.first().map_or(&self.no_grad, |l| l.grad_input())
    }

    /// Every parameter and buffer, named as in PyTorch's `state_dict`.
    pub fn state_mut(&mut self) -> Vec<(String, StateMut<'_, T>)> {
        let prefix = &self.prefix;
        let slots = self.slots();
        self.layers
            .iter_mut()
            .zip(slots)
            .flat_map(|(l, slot)| {
                l.state_mut().into_iter().map(move |(name, s)| {
                    let (offset, name) = entry_offset(&name);
                    (format!("{prefix}.{}.{name}", slot + offset), s)
                })
            })
            .collect()
    }

    /// The PyTorch `nn.Sequential` index of each layer (a fused block
    /// stands for several entries, so indices can skip).
    pub fn slots(&self) -> Vec<usize> {
        self.layers
            .iter()
            .scan(0, |next, l| {
                let slot = *next;
                *next += l.slots();
                Some(slot)
            })
            .collect()
    }

    /// The state-name prefix of layer `i`'s batch norm, e.g. `net.1` for
    /// the fused first stage, whose convolution is `net.0`. For `i` past
    /// the last layer, the entries go on counting one per index (`i =
    /// len()` is the name the next pushed layer would get).
    pub fn batch_norm_name(&self, i: usize) -> String {
        let slots = self.slots();
        let slot = match (slots.get(i), self.layers.get(i)) {
            (Some(&slot), Some(layer)) => slot + layer.batch_norm_entry(),
            _ => self.layers.iter().map(|l| l.slots()).sum::<usize>() + (i - self.layers.len()),
        };
        format!("{}.{slot}", self.prefix)
    }

    /// The names of [`Self::state_mut`]'s entries, e.g. `net.1.running_mean`.
    pub fn state_names(&mut self) -> Vec<String> {
        self.state_mut().into_iter().map(|(n, _)| n).collect()
    }

    /// Number of learnable scalars.
    pub fn num_params(&mut self) -> usize {
        self.state_mut()
            .into_iter()
            .map(|(_, s)| match s {
                StateMut::Param { value, .. } => value.numel(),
                _ => 0,
            })
            .sum()
    }

    /// A PyTorch-like printout: index, layer, output shape, parameters.
    pub fn summary(&mut self) -> String {
        let shapes = self.output_shapes.clone();
        let mut out = format!("{:<6} {:<14} {:<16} {:>8}\n", "index", "layer", "output", "params");
        let slots = self.slots();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let params: usize = layer
                .state_mut()
                .into_iter()
                .map(|(_, s)| if let StateMut::Param { value, .. } = s { value.numel() } else { 0 })
                .sum();
            let shape = shapes.get(i).map(|s| format!("{s:?}")).unwrap_or_default();
            out += &format!(
                "{:<6} {:<14} {:<16} {:>8}\n",
                format!("{}.{}", self.prefix, slots[i]),
                layer.kind(),
                shape,
                params
            );
        }
        out
    }
}

/// A fused layer names the state of its `k`-th `nn.Sequential` entry
/// `"k.name"` (see `Layer::slots`): `(k, name)`, or `(0, name)` for a plain
/// name.
fn entry_offset(name: &str) -> (usize, &str) {
    name.split_once('.').and_then(|(k, rest)| Some((k.parse().ok()?, rest))).unwrap_or((0, name))
}

/// The batch size of a model's input `x`, for scheduling only (0 for a
/// scalar: the layers check their input themselves).
fn batch_size<T: Real>(x: &Tensor<T>) -> usize {
    x.shape().first().copied().unwrap_or(0)
}

fn locate(prefix: &str, i: usize, e: Error) -> Error {
    match e {
        Error::Shape { layer, message } => Error::Shape { layer: format!("{prefix}.{i} ({layer})"), message },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BNLeNet's layers in runs: the two convolutional stages and the two
    /// larger linear layers (the first fused with the flatten before it)
    /// one by one, what lies between them (BN1d fused with its sigmoid,
    /// the last linear layer) in runs on one thread.
    #[test]
    fn layers_too_small_to_split_form_serial_runs() {
        let net = bn_lenet::<f32>(&mut crate::rng::seeded(0)).unwrap();
        let runs: Vec<(std::ops::Range<usize>, bool)> =
            net.runs(128).into_iter().map(|r| (r.layers, r.serial)).collect();
        let n = net.len();
        let (par, ser) = (false, true);
        let want = [(0..1, par), (1..2, par), (2..3, par), (3..4, ser), (4..5, par), (5..n, ser)];
        assert_eq!(runs, want);
        // a batch of 2: the linear layers fall under the parallel size
        let small = net.runs(2);
        assert_eq!(small.last().unwrap().layers, 2..n);
    }
}
