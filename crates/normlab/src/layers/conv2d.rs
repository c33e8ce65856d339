//! 2-D convolution, as `nn.Conv2d` (input channels inferred at build time,
//! like `nn.LazyConv2d`). Square kernel, one stride and one zero padding for
//! both axes.
//!
//! Forward, per image n (im2col): `y_n[Cout×P] = W[Cout×K] · col(x_n)[K×P] + b`
//! Backward: `dW = Σₙ dy_n · col(x_n)ᵀ`, `db = Σₙ,ₚ dy`,
//!           `dx_n = col2im(Wᵀ · dy_n)`
//!
//! Stride 1 without padding (LeNet) runs the register-blocked direct kernels
//! of `kernels::conv_direct` instead of im2col for the forward pass (and for
//! the weight gradient when `Cin·k·k` is small), and, for 5x5 kernels in f32
//! on AVX2, `kernels::conv_input_grad` for the input gradient. One input
//! channel into at most 8 (LeNet's first layer) in f32 on AVX-512 runs
//! `kernels::conv_lanes`, 16 images at a time in the lanes of a vector.
//!
//! Other stride-1 convolutions in f32 on AVX-512 or AVX2 (3x3 with
//! padding, as in VGG and ResNet blocks) run `kernels::conv_planes`: the
//! forward pass, the input gradient as a forward pass over the padded
//! gradient, and the weight gradient, on zero-padded planes read as flat
//! runs, without im2col, on every plane size (small ones with tiles and
//! groups of images of their own). Where `Cin·k·k >= 128`, the forward
//! pass and the input gradient run `kernels::conv_channels` instead (output
//! channels in the lanes; stride 2 too), and 3x3 stride-1 layers with 8 or
//! more input channels run `kernels::winograd` (F(2x2, 3x3): 2.25x fewer
//! multiply-adds, the rounding of the direct sums); the weight gradient
//! stays on the padded planes, except from 32 input and 32 output channels,
//! where `kernels::winograd_grad` runs it (the same 2.25x).
//!
//! Stride 2 (ResNet's downsampling, 3x3 and 1x1) runs on padded planes
//! too, each split into its four phase planes (`kernels::conv_planes`):
//! the weight gradient, the forward pass where `Cin·k·k < 128` (else
//! `conv_channels`), and the input gradient in phases
//! (`conv_planes::StridedInputGrad`). One thread, batch 64, AVX-512
//! (`dev/examples/conv_layer_parts.rs`): the weight gradient of 16 -> 32
//! at 32x32 5.7 -> 2.3-2.9 ms and of 32 -> 64 at 16x16 4.9 -> 2.7-2.9 ms
//! against im2col and the matrix product; the 1x1 shortcut's 1.5 -> 0.5-0.8.
//!
//! Groups of images run in parallel. The weight gradient is summed per fixed
//! group, then the groups in order, so it is bitwise the same for any number
//! of threads.

use rayon::prelude::*;

use super::{check_grad, init_weights, not_built, Init, Layer, Mode, StateMut, StateName};
use crate::aligned::AlignedVec;
use crate::kernels::batch_norm::ChannelOut;
use crate::kernels::conv::{col2im, im2col, ConvGeometry};
use crate::kernels::conv_channels;
use crate::kernels::conv_direct;
use crate::kernels::conv_input_grad;
use crate::kernels::conv_lanes;
use crate::kernels::conv_planes::{self, Plan, StridedInputGrad};
use crate::kernels::gemm::{gemm, Product};
use crate::kernels::winograd;
use crate::kernels::winograd_grad;
use crate::real::{as_f32, as_f32_mut, from_f32_mut, Real};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// What [`Conv2d::forward_then`] calls on each run of images' outputs.
pub(crate) type Epilogue<'a, T> = dyn Fn(usize, &mut [T]) + Sync + 'a;

/// From this many images on, a convolution that `conv_lanes` handles runs
/// there (16 images to a vector); fewer run the direct kernel, one image
/// at a time (prediction one image at a time).
const LANES_MIN_IMAGES: usize = 6;

/// Images per task, and per partial weight gradient: fixed so the summation
/// order is too. Each task has one im2col buffer, reused image after image.
const GROUP: usize = 8;

/// Outputs narrower than this run the padded-plane weight gradient on
/// groups of [`PLANES_NARROW_GROUP`] images: its sums across vector lanes
/// come once per group, and a 7x7 plane has a fourth of 14x14's positions
/// to spread them over (fixed numbers, so the summation order is fixed).
const PLANES_NARROW: usize = 12;
const PLANES_NARROW_GROUP: usize = 32;

/// A 2-D convolution over NCHW input, as `nn.Conv2d(C_in, C_out, k)`
/// (`C_in` inferred at build, as `nn.LazyConv2d`): square `k×k` kernels,
/// weight `(C_out, C_in, k, k)`, one bias per output channel.
pub struct Conv2d<T: Real = f32> {
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    has_bias: bool,
    init: Init,
    geometry: Option<ConvGeometry>,
    weight: Tensor<T>,
    bias: Tensor<T>,
    weight_grad: Tensor<T>,
    bias_grad: Tensor<T>,
    /// One im2col buffer per group of images (recomputed in backward: cheaper
    /// than keeping every image's columns, which would not stay in cache).
    cols: Vec<T>,
    dcols: Vec<T>,
    partial_grads: Vec<T>,
    /// Weights reordered for the direct kernel (stride 1, no padding).
    packed: conv_direct::PackedWeights<T>,
    /// Weights reordered for the direct input gradient.
    packed_for_dx: Vec<f32>,
    /// Weights reordered for `conv_planes`' forward pass.
    packed_planes: Vec<f32>,
    /// Whether `packed` and `packed_planes` hold the current weights: set
    /// when packed, cleared wherever the weights can change (build,
    /// `state_mut`, folding), so prediction packs once, not per call.
    packed_fresh: bool,
    packed_planes_fresh: bool,
    /// Weights packed for `conv_channels`' forward pass, and whether they
    /// are the current ones.
    packed_channels: Vec<f32>,
    packed_channels_fresh: bool,
    /// Weights transformed for `winograd`'s forward pass, and whether they
    /// are the current ones.
    packed_winograd: Vec<f32>,
    packed_winograd_fresh: bool,
    /// Per group of 16 images, `conv_lanes`' scratch (images in lanes).
    lane_scratch: AlignedVec<f32>,
    y: Tensor<T>,
    dx: Tensor<T>,
}

impl<T: Real> Conv2d<T> {
    /// `out_channels` filters of `kernel × kernel`, stride 1, no padding, with bias.
    pub fn new(out_channels: usize, kernel: usize) -> Self {
        Conv2d {
            out_channels,
            kernel,
            stride: 1,
            padding: 0,
            has_bias: true,
            init: Init::PyTorchDefault,
            geometry: None,
            weight: Tensor::default(),
            bias: Tensor::default(),
            weight_grad: Tensor::default(),
            bias_grad: Tensor::default(),
            cols: Vec::new(),
            dcols: Vec::new(),
            partial_grads: Vec::new(),
            packed: conv_direct::PackedWeights::default(),
            packed_for_dx: Vec::new(),
            packed_planes: Vec::new(),
            packed_fresh: false,
            packed_planes_fresh: false,
            packed_channels: Vec::new(),
            packed_channels_fresh: false,
            packed_winograd: Vec::new(),
            packed_winograd_fresh: false,
            lane_scratch: AlignedVec::new(),
            y: Tensor::default(),
            dx: Tensor::default(),
        }
    }
    /// The step between windows on both axes, in pixels (PyTorch's
    /// `stride`, 1 by default).
    pub fn stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }
    /// Zeros added on every side, in pixels (PyTorch's `padding`, 0 by default).
    pub fn padding(mut self, padding: usize) -> Self {
        self.padding = padding;
        self
    }
    /// Whether the layer has a bias (PyTorch's `bias=True`, the default).
    pub fn bias(mut self, on: bool) -> Self {
        self.has_bias = on;
        self
    }
    /// How the weights are drawn at build ([`Init::PyTorchDefault`] unless set).
    pub fn init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }
    /// The kernels, `(C_out, C_in, k, k)` (PyTorch's `weight`); empty before build.
    pub fn weight(&self) -> &Tensor<T> {
        &self.weight
    }
    /// The bias, when the layer has one.
    pub fn bias_values(&self) -> Option<&Tensor<T>> {
        self.has_bias.then_some(&self.bias)
    }
    /// The number of filters, `C_out` (PyTorch's `out_channels`).
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }
    /// The input geometry, once built.
    pub fn geometry(&self) -> Option<ConvGeometry> {
        self.geometry
    }
    /// Folds `y -> scale·y + shift` per output channel (an eval-mode batch
    /// norm after this layer) into the weight and bias; the layer gains a
    /// bias if it had none. `scale` and `shift` hold one value per channel.
    pub(crate) fn absorb_channel_affine(&mut self, scale: &[f64], shift: &[f64]) -> Result<()> {
        self.weights_change();
        let p = super::RowsAndBias { weight: &mut self.weight, bias: &mut self.bias, bias_grad: &mut self.bias_grad };
        super::fold_affine_into_rows("Conv2d", p, &mut self.has_bias, (scale, shift))
    }
    /// Marks the packed weights stale: the weights may change.
    fn weights_change(&mut self) {
        self.packed_fresh = false;
        self.packed_planes_fresh = false;
        self.packed_channels_fresh = false;
        self.packed_winograd_fresh = false;
    }
    /// The weight and bias gradients, for a layer that computes them itself.
    pub(crate) fn grads_mut(&mut self) -> (&mut Tensor<T>, Option<&mut Tensor<T>>) {
        (&mut self.weight_grad, self.has_bias.then_some(&mut self.bias_grad))
    }

    /// The input geometry and the output's height and width; an error
    /// before build.
    fn dims(&self) -> Result<(ConvGeometry, usize, usize)> {
        let g = self.geometry.ok_or_else(|| not_built("Conv2d"))?;
        // build sets the geometry only once its output size is known
        let (ho, wo) = g.output_hw().ok_or_else(|| not_built("Conv2d"))?;
        Ok((g, ho, wo))
    }

    /// The forward pass, with `epilogue(first, out)` called on each run of
    /// whole images' outputs as soon as the task that computed them is
    /// done (`first`: the index of the run's first image), on that task's
    /// thread, while the values are in its cache: a fused layer applies
    /// the activation (and pooling) after the convolution there.
    pub(crate) fn forward_then(&mut self, x: &Tensor<T>, epilogue: &Epilogue<'_, T>) -> Result<&Tensor<T>> {
        let (g, ho, wo) = self.dims()?;
        let n = super::check_input("Conv2d", x, &[g.channels, g.height, g.width])?;
        let (kdim, p, co) = (g.col_rows(), ho * wo, self.out_channels);
        self.y.resize(&[n, co, ho, wo]);
        let image_len = g.channels * g.height * g.width;
        let bias = self.has_bias.then_some(self.bias.data());
        // a few images fill few of the 16 lanes: the direct kernel does less work
        if conv_lanes::applies::<T>(&g, co) && n >= LANES_MIN_IMAGES {
            let len = conv_lanes::scratch_len(&g, co);
            self.lane_scratch.resize(n.div_ceil(conv_lanes::IMAGES) * len, 0.0);
            let (weight, bias) = (as_f32(self.weight.data()), bias.map(as_f32));
            as_f32(x.data())
                .par_chunks(conv_lanes::IMAGES * image_len)
                .zip(as_f32_mut(self.y.data_mut()).par_chunks_mut(conv_lanes::IMAGES * co * p))
                .zip(self.lane_scratch.as_mut_slice().par_chunks_mut(len))
                .enumerate()
                .for_each(|(i, ((images, out), scratch))| {
                    conv_lanes::forward(&g, co, weight, bias, images, out, scratch);
                    epilogue(i * conv_lanes::IMAGES, from_f32_mut(out));
                });
            return Ok(&self.y);
        }
        if conv_direct::supported(&g) {
            if !self.packed_fresh {
                conv_direct::pack_weights(self.weight.data(), co, g.channels, g.kernel, &mut self.packed);
                self.packed_fresh = true;
            }
            let packed = &self.packed;
            x.data().par_chunks(image_len).zip(self.y.data_mut().par_chunks_mut(co * p)).enumerate().for_each(
                |(i, (image, out))| {
                    conv_direct::forward(&g, co, packed, bias, image, out);
                    epilogue(i, out);
                },
            );
            return Ok(&self.y);
        }
        if winograd::prefer::<T>(&g, co) {
            let plan = winograd::Plan::forward(&g, co);
            if !self.packed_winograd_fresh || self.packed_winograd.len() != plan.packed_len() {
                plan.pack_weights(as_f32(self.weight.data()), &mut self.packed_winograd);
                self.packed_winograd_fresh = true;
            }
            let (x, y) = (as_f32(x.data()), as_f32_mut(self.y.data_mut()));
            per_image(&plan, &self.packed_winograd, bias.map(as_f32), x, y, &|i, out| epilogue(i, from_f32_mut(out)));
            return Ok(&self.y);
        }
        // one image on several threads: only these kernels split an image, and
        // two threads at 0.9x beat one at 1x (resnet-bn's 16-channel 32x32 layers)
        let split_one = n == 1 && rayon::current_num_threads() > 1 && g.col_rows() >= 128;
        if conv_channels::prefer::<T>(&g, co) || (split_one && conv_channels::applies::<T>(&g, co)) {
            let plan = conv_channels::Plan::forward(&g, co);
            if !self.packed_channels_fresh {
                plan.pack_weights(as_f32(self.weight.data()), &mut self.packed_channels);
                self.packed_channels_fresh = true;
            }
            let (x, y) = (as_f32(x.data()), as_f32_mut(self.y.data_mut()));
            per_image(&plan, &self.packed_channels, bias.map(as_f32), x, y, &|i, out| epilogue(i, from_f32_mut(out)));
            return Ok(&self.y);
        }
        if conv_planes::applies::<T>(&g, co) {
            let plan = Plan::forward(&g, co);
            if !self.packed_planes_fresh {
                plan.pack_weights(as_f32(self.weight.data()), &mut self.packed_planes);
                self.packed_planes_fresh = true;
            }
            let bias = bias.map(as_f32);
            let (x, y) = (as_f32(x.data()), as_f32_mut(self.y.data_mut()));
            planes_per_image(&plan, &self.packed_planes, bias, x, y, &|i, out| epilogue(i, from_f32_mut(out)));
            return Ok(&self.y);
        }
        self.cols.resize(n.div_ceil(GROUP) * kdim * p, T::zero());
        let weight = self.weight.data();
        x.data()
            .par_chunks(GROUP * image_len)
            .zip(self.y.data_mut().par_chunks_mut(GROUP * co * p))
            .zip(self.cols.par_chunks_mut(kdim * p))
            .enumerate()
            .for_each(|(i, ((images, outs), col))| {
                for (image, out) in images.chunks_exact(image_len).zip(outs.chunks_exact_mut(co * p)) {
                    im2col(&g, image, col);
                    if let Some(bias) = bias {
                        for (plane, &b) in out.chunks_exact_mut(p).zip(bias) {
                            plane.fill(b);
                        }
                    }
                    let beta = if bias.is_some() { T::one() } else { T::zero() };
                    gemm(Product::nn(co, p, kdim), T::one(), weight, col, beta, out);
                }
                epilogue(i * GROUP, outs);
            });
        Ok(&self.y)
    }
}

impl<T: Real> Layer<T> for Conv2d<T> {
    fn kind(&self) -> String {
        "Conv2d".into()
    }

    /// Groups of images in parallel, always.
    fn splits_work(&self, _input_len: usize) -> bool {
        true
    }

    fn build(&mut self, input: &[usize], rng: &mut Rng) -> Result<Vec<usize>> {
        if input.len() != 3 {
            return Err(Error::shape(
                "Conv2d",
                format!("expected input (N, C, H, W), got one example of shape {input:?}"),
            ));
        }
        if self.out_channels == 0 || self.kernel == 0 || self.stride == 0 {
            return Err(Error::config("Conv2d", "out_channels, kernel_size and stride must be at least 1"));
        }
        if input[0] == 0 {
            return Err(Error::shape(
                "Conv2d",
                format!("expected at least one input channel, got one example of shape {input:?}"),
            ));
        }
        let g = ConvGeometry {
            channels: input[0],
            height: input[1],
            width: input[2],
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        };
        let (ho, wo) = g.output_hw().ok_or_else(|| {
            Error::shape(
                "Conv2d",
                format!(
                    "kernel {} does not fit an input of {}x{} with padding {}",
                    self.kernel, g.height, g.width, self.padding
                ),
            )
        })?;
        self.geometry = Some(g);
        self.weights_change();
        let k = self.kernel;
        let wshape = [self.out_channels, g.channels, k, k];
        self.weight = Tensor::zeros(&wshape);
        self.weight_grad = Tensor::zeros(&wshape);
        if self.has_bias {
            self.bias = Tensor::zeros(&[self.out_channels]);
            self.bias_grad = Tensor::zeros(&[self.out_channels]);
        }
        let bias = if self.has_bias { Some(&mut self.bias) } else { None };
        init_weights(self.init, &mut self.weight, bias, g.channels * k * k, self.out_channels * k * k, rng);
        Ok(vec![self.out_channels, ho, wo])
    }

    fn forward(&mut self, x: &Tensor<T>, _mode: Mode) -> Result<&Tensor<T>> {
        self.forward_then(x, &|_, _| {})
    }

    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        let (g, ho, wo) = self.dims()?;
        let n = super::check_input("Conv2d", x, &[g.channels, g.height, g.width])?;
        let (kdim, p, co) = (g.col_rows(), ho * wo, self.out_channels);
        check_grad("Conv2d", dy, &[n, co, ho, wo])?;
        let dyd = dy.data();

        // Each group of images writes its partial weight gradient, then its
        // partial bias gradient, into its own slot; the slots are added in order.
        let lanes = conv_lanes::applies::<T>(&g, co);
        // LeNet's conv1 (25 taps, 6 channels): the direct kernel; conv2 (150 taps, 16 channels): by
        // channels; 3x3 stride 1 with 32 or more channels in and out: Winograd; other stride-1 kernels of 2
        // to 7 and stride-2 kernels up to 7: on padded planes; the rest: im2col
        let direct = !lanes && conv_direct::weight_grad_supported(&g);
        let by_channels = !lanes && !direct && conv_direct::weight_grad_by_channels_supported(&g, co);
        let winograd_dw = (!lanes && !direct && !by_channels && winograd_grad::prefer::<T>(&g, co))
            .then(|| winograd_grad::Plan::new(&g, co));
        let planes =
            (!lanes && !direct && !by_channels && winograd_dw.is_none() && conv_planes::weight_grad_applies::<T>(&g))
                .then(|| Plan::forward(&g, co));
        let group = if lanes {
            conv_lanes::IMAGES
        } else if (planes.is_some() || winograd_dw.is_some()) && wo < PLANES_NARROW {
            PLANES_NARROW_GROUP
        } else {
            GROUP
        };
        let groups = n.div_ceil(group);
        let slot = co * kdim + co;
        self.partial_grads.resize(groups * slot, T::zero());
        let (xd, image_len, has_bias) = (x.data(), g.channels * g.height * g.width, self.has_bias);
        let bias_grad = |first: usize, last: usize, partial_bias: &mut [T]| {
            if has_bias {
                partial_bias.fill(T::zero());
                for image in dyd[first * co * p..last * co * p].chunks_exact(co * p) {
                    for (d, plane) in partial_bias.iter_mut().zip(image.chunks_exact(p)) {
                        *d += crate::kernels::sum(plane);
                    }
                }
            }
        };
        // The direct input gradient runs in the same task, on the group's dy
        // while it is in cache, without a second round of thread hand-offs.
        let direct_dx = need_dx && !lanes && conv_input_grad::applies::<T>(&g);
        if lanes {
            let len = conv_lanes::scratch_len(&g, co);
            self.lane_scratch.resize(groups * len, 0.0);
            self.partial_grads
                .par_chunks_mut(slot)
                .zip(self.lane_scratch.as_mut_slice().par_chunks_mut(len))
                .enumerate()
                .for_each(|(gi, (partial, scratch))| {
                    let (first, last) = (gi * group, ((gi + 1) * group).min(n));
                    let (partial, partial_bias) = partial.split_at_mut(co * kdim);
                    bias_grad(first, last, partial_bias);
                    let (xs, dys) = (&xd[first * image_len..last * image_len], &dyd[first * co * p..last * co * p]);
                    conv_lanes::weight_grad(&g, co, as_f32(xs), as_f32(dys), as_f32_mut(partial), scratch);
                });
        } else {
            // per group: one image's columns, the group's transposed dy, or its padded inputs and gradients
            let planes_len = planes.map_or(0, |plan| group * (plan.padded_len() + plan.wide_len()));
            let winograd_len = winograd_dw.map_or(0, |plan| plan.scratch_len());
            let scratch = (kdim * p).max(GROUP * 16 * p).max(planes_len).max(winograd_len);
            // one scratch per pool thread, not per group: a thread's groups
            // reuse it while it is in its cache (each group overwrites what
            // it reads, so the sums do not depend on which scratch it gets)
            let threads = rayon::current_num_threads().min(groups).max(1);
            self.cols.resize(threads * scratch, T::zero());
            let scratches: Vec<std::sync::Mutex<&mut [T]>> =
                self.cols.chunks_exact_mut(scratch).map(std::sync::Mutex::new).collect();
            if direct_dx {
                self.dx.resize(x.shape());
                conv_input_grad::pack_weights(as_f32(self.weight.data()), co, g.channels, &mut self.packed_for_dx);
            }
            let packed_for_dx = &self.packed_for_dx;
            let dx_out = ChannelOut::new(if direct_dx { self.dx.data_mut() } else { &mut [] });
            self.partial_grads.par_chunks_mut(slot).enumerate().for_each(|(gi, partial)| {
                let (first, last) = (gi * group, ((gi + 1) * group).min(n));
                // uncontended unless the pool has more threads than groups
                let thread = rayon::current_thread_index().unwrap_or(0) % scratches.len();
                let mut col = scratches[thread].lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let col: &mut [T] = &mut col;
                if direct_dx {
                    // SAFETY: these images' part of dx belongs to this task alone
                    let dxs = as_f32_mut(unsafe { dx_out.run(first * image_len, (last - first) * image_len) });
                    let dys = as_f32(&dyd[first * co * p..last * co * p]);
                    for (dx_n, dy_n) in dxs.chunks_exact_mut(image_len).zip(dys.chunks_exact(co * p)) {
                        conv_input_grad::input_grad(&g, co, packed_for_dx, dy_n, dx_n);
                    }
                }
                let (partial, partial_bias) = partial.split_at_mut(co * kdim);
                bias_grad(first, last, partial_bias);
                let (xs, dys) = (&xd[first * image_len..last * image_len], &dyd[first * co * p..last * co * p]);
                if direct {
                    partial.fill(T::zero());
                    conv_direct::weight_grad(&g, co, xs, dys, partial);
                    return;
                }
                if by_channels {
                    conv_direct::weight_grad_by_channels(&g, co, xs, dys, col, partial);
                    return;
                }
                if let Some(plan) = winograd_dw {
                    let (xs, dys) = (as_f32(xs), as_f32(dys));
                    plan.weight_grad(last - first, xs, dys, as_f32_mut(col), as_f32_mut(partial));
                    return;
                }
                if let Some(plan) = planes {
                    let (padded, wide) = (plan.padded_len(), plan.wide_len());
                    let (xps, dyws) = as_f32_mut(col).split_at_mut(group * padded);
                    let (xs, dys) = (as_f32(xs), as_f32(dys));
                    for (i, (x_n, dy_n)) in xs.chunks_exact(image_len).zip(dys.chunks_exact(co * p)).enumerate() {
                        plan.pad_input(x_n, &mut xps[i * padded..(i + 1) * padded]);
                        plan.widen_grad(dy_n, &mut dyws[i * wide..(i + 1) * wide]);
                    }
                    plan.weight_grad(last - first, xps, dyws, as_f32_mut(partial));
                    return;
                }
                let col = &mut col[..kdim * p];
                for img in first..last {
                    im2col(&g, &xd[img * image_len..(img + 1) * image_len], col);
                    let dy_n = &dyd[img * co * p..(img + 1) * co * p];
                    let beta = if img == first { T::zero() } else { T::one() };
                    gemm(Product::nt(co, kdim, p), T::one(), dy_n, col, beta, partial);
                }
            });
        }
        let (dw, db) = (self.weight_grad.data_mut(), self.bias_grad.data_mut());
        dw.fill(T::zero());
        db.fill(T::zero());
        for partial in self.partial_grads.chunks_exact(slot) {
            let (pw, pb) = partial.split_at(co * kdim);
            for (d, &v) in dw.iter_mut().zip(pw) {
                *d += v;
            }
            if has_bias {
                for (d, &v) in db.iter_mut().zip(pb) {
                    *d += v;
                }
            }
        }

        if need_dx && !direct_dx && winograd::prefer_input_grad::<T>(&g, co) {
            self.dx.resize(x.shape());
            let plan = winograd::Plan::input_grad(&g, co);
            plan.pack_flipped_weights(as_f32(self.weight.data()), &mut self.packed_for_dx);
            let (dyd, dx) = (as_f32(dyd), as_f32_mut(self.dx.data_mut()));
            per_image(&plan, &self.packed_for_dx, None, dyd, dx, &|_, _| {});
        } else if need_dx && !direct_dx && conv_channels::prefer_input_grad::<T>(&g, co) {
            self.dx.resize(x.shape());
            let plan = conv_channels::Plan::input_grad(&g, co).expect("prefer_input_grad checked the stride");
            plan.pack_flipped_weights(as_f32(self.weight.data()), &mut self.packed_for_dx);
            let (dyd, dx) = (as_f32(dyd), as_f32_mut(self.dx.data_mut()));
            per_image(&plan, &self.packed_for_dx, None, dyd, dx, &|_, _| {});
        } else if need_dx && !direct_dx && conv_planes::input_grad_applies::<T>(&g, co) {
            self.dx.resize(x.shape());
            let plan = Plan::input_grad(&g, co).expect("input_grad_applies checked the padding");
            plan.pack_flipped_weights(as_f32(self.weight.data()), &mut self.packed_for_dx);
            let (dyd, dx) = (as_f32(dyd), as_f32_mut(self.dx.data_mut()));
            planes_per_image(&plan, &self.packed_for_dx, None, dyd, dx, &|_, _| {});
        } else if need_dx && !direct_dx && conv_planes::strided_input_grad_applies::<T>(&g) {
            self.dx.resize(x.shape());
            let plan = StridedInputGrad::new(&g, co).expect("strided_input_grad_applies checked the stride");
            plan.pack_weights(as_f32(self.weight.data()), &mut self.packed_for_dx);
            let (dyd, dx) = (as_f32(dyd), as_f32_mut(self.dx.data_mut()));
            strided_grad_per_image(&plan, &self.packed_for_dx, dyd, dx);
        } else if need_dx && !direct_dx {
            self.dx.resize(x.shape());
            self.dcols.resize(n.div_ceil(GROUP) * kdim * p, T::zero());
            let weight = self.weight.data();
            self.dx
                .data_mut()
                .par_chunks_mut(GROUP * image_len)
                .zip(self.dcols.par_chunks_mut(kdim * p))
                .zip(dyd.par_chunks(GROUP * co * p))
                .for_each(|((dxs, dcol), dys)| {
                    for (dx_n, dy_n) in dxs.chunks_exact_mut(image_len).zip(dys.chunks_exact(co * p)) {
                        gemm(Product::tn(kdim, p, co), T::one(), weight, dy_n, T::zero(), dcol);
                        col2im(&g, dcol, dx_n);
                    }
                });
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
        self.weights_change();
        let mut s = vec![("weight".into(), StateMut::Param { value: &mut self.weight, grad: &mut self.weight_grad })];
        if self.has_bias {
            s.push(("bias".into(), StateMut::Param { value: &mut self.bias, grad: &mut self.bias_grad }));
        }
        s
    }
}
/// `plan` run on every image of `x` into `out`, groups of [`GROUP`] images
/// in parallel, each task with its own padded input and output rows.
fn planes_per_image(
    plan: &Plan,
    packed: &[f32],
    bias: Option<&[f32]>,
    x: &[f32],
    out: &mut [f32],
    epilogue: &Epilogue<'_, f32>,
) {
    let (ho, wo) = plan.output_hw();
    let (image_len, out_len) = (plan.cin * plan.h * plan.w, plan.cout * ho * wo);
    x.par_chunks(GROUP * image_len).zip(out.par_chunks_mut(GROUP * out_len)).enumerate().for_each(
        |(i, (images, outs))| {
            with_buffer(&PADDED, plan.padded_len(), |padded| {
                let padded = &mut padded[..plan.padded_len()];
                with_buffer(&ROWS, 0, |rows| {
                    for (image, y) in images.chunks_exact(image_len).zip(outs.chunks_exact_mut(out_len)) {
                        plan.pad_input(image, padded);
                        plan.run(packed, bias, padded, y, rows);
                    }
                })
            });
            epilogue(i * GROUP, outs);
        },
    );
}

/// The input gradient of a strided convolution, image by image: groups of
/// [`GROUP`] images in parallel, each task with its own padded gradient
/// and output rows.
fn strided_grad_per_image(plan: &StridedInputGrad, packed: &[f32], dy: &[f32], dx: &mut [f32]) {
    let n = dx.len() / plan.image_len();
    let dy_len = dy.len() / n.max(1);
    dy.par_chunks(GROUP * dy_len).zip(dx.par_chunks_mut(GROUP * plan.image_len())).for_each(|(dys, dxs)| {
        with_buffer(&PADDED, plan.padded_len(), |padded| {
            let padded = &mut padded[..plan.padded_len()];
            with_buffer(&ROWS, 0, |rows| {
                for (dy_n, dx_n) in dys.chunks_exact(dy_len).zip(dxs.chunks_exact_mut(plan.image_len())) {
                    plan.pad_grad(dy_n, padded);
                    plan.run(packed, padded, dx_n, rows);
                }
            })
        });
    });
}

/// Images per task of [`channels_per_image`]: [`GROUP`], or fewer so that
/// a small batch still gives every thread work (the forward pass has no
/// sum across images, so the grouping does not change a value).
fn images_per_task(n: usize) -> usize {
    GROUP.min(n.div_ceil(rayon::current_num_threads())).max(1)
}

thread_local! {
    /// Each thread's padded input and output rows of the direct kernels,
    /// kept between calls: fresh buffers of these sizes are fresh pages,
    /// and their faults cost more than a small layer (vgg-bn, one image,
    /// 2 threads: 0.70 ms per prediction with fresh buffers, 0.32 ms kept).
    static PADDED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    static ROWS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `work` on this thread's buffer `cell` of at least `len` values (taken
/// out while it runs, so a nested use gets a buffer of its own).
fn with_buffer<R>(
    cell: &'static std::thread::LocalKey<std::cell::Cell<Vec<f32>>>,
    len: usize,
    work: impl FnOnce(&mut Vec<f32>) -> R,
) -> R {
    let mut buffer = cell.take();
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    let result = work(&mut buffer);
    cell.set(buffer);
    result
}

/// A kernel that convolves one padded image, or a part of its output rows
/// (`conv_channels`: rows; `winograd`: rows of 2x2 tiles), every value
/// computed the same way whatever the split.
trait ImageKernel: Sync {
    /// Input channels, height, width; output channels, height, width.
    fn shape(&self) -> ((usize, usize, usize), (usize, usize, usize));
    fn padded_len(&self) -> usize;
    /// Scratch of one run besides the padded input.
    fn scratch_len(&self) -> usize;
    fn pad_input(&self, x: &[f32], xp: &mut [f32]);
    /// The units a run is split by, and the output rows of `units`.
    fn units(&self) -> usize;
    fn output_rows(&self, units: std::ops::Range<usize>) -> usize;
    #[allow(clippy::too_many_arguments)]
    fn run_units(
        &self,
        packed: &[f32],
        bias: Option<&[f32]>,
        xp: &[f32],
        units: std::ops::Range<usize>,
        out: &mut [f32],
        scratch: &mut [f32],
    );
}

/// The [`ImageKernel`] methods both plans have under the same names.
macro_rules! plan_shape_and_padding {
    () => {
        fn shape(&self) -> ((usize, usize, usize), (usize, usize, usize)) {
            let (ho, wo) = self.output_hw();
            ((self.cin, self.h, self.w), (self.cout, ho, wo))
        }
        fn padded_len(&self) -> usize {
            self.padded_len()
        }
        fn pad_input(&self, x: &[f32], xp: &mut [f32]) {
            self.pad_input(x, xp)
        }
    };
}

impl ImageKernel for conv_channels::Plan {
    plan_shape_and_padding!();
    fn scratch_len(&self) -> usize {
        0
    }
    fn units(&self) -> usize {
        self.output_hw().0
    }
    fn output_rows(&self, units: std::ops::Range<usize>) -> usize {
        units.len()
    }
    fn run_units(
        &self,
        packed: &[f32],
        bias: Option<&[f32]>,
        xp: &[f32],
        units: std::ops::Range<usize>,
        out: &mut [f32],
        _: &mut [f32],
    ) {
        self.run_rows(packed, bias, xp, units, out)
    }
}

impl ImageKernel for winograd::Plan {
    plan_shape_and_padding!();
    fn scratch_len(&self) -> usize {
        self.scratch_len()
    }
    fn units(&self) -> usize {
        self.tiles_hw().0
    }
    fn output_rows(&self, units: std::ops::Range<usize>) -> usize {
        let ho = self.output_hw().0;
        (2 * units.end).min(ho) - (2 * units.start).min(ho)
    }
    fn run_units(
        &self,
        packed: &[f32],
        bias: Option<&[f32]>,
        xp: &[f32],
        units: std::ops::Range<usize>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) {
        self.run_rows(packed, bias, xp, units, out, scratch)
    }
}

/// `plan` run on every image of `x` into `out`, tasks of
/// [`images_per_task`] images in parallel, each with its own padded input
/// and scratch; one image alone has its output rows split in two halves,
/// side by side (prediction one image at a time).
fn per_image<K: ImageKernel>(
    plan: &K,
    packed: &[f32],
    bias: Option<&[f32]>,
    x: &[f32],
    out: &mut [f32],
    epilogue: &Epilogue<'_, f32>,
) {
    let ((cin, h, w), (cout, ho, wo)) = plan.shape();
    let (image_len, out_len) = (cin * h * w, cout * ho * wo);
    let (padded_len, scratch_len) = (plan.padded_len(), plan.scratch_len());
    let n = x.len() / image_len;
    let units = plan.units();
    if n == 1 && units >= 2 && rayon::current_num_threads() > 1 {
        let half = units / 2;
        let top_len = plan.output_rows(0..half) * wo;
        let bottom_len = ho * wo - top_len;
        with_buffer(&PADDED, padded_len + out_len, |buffer| {
            let (xp, rows) = buffer.split_at_mut(padded_len);
            let rows = &mut rows[..out_len];
            plan.pad_input(x, xp);
            let (top, bottom) = rows.split_at_mut(cout * top_len);
            let xp = &*xp;
            let run = |units: std::ops::Range<usize>, out: &mut [f32]| {
                with_buffer(&SCRATCH, scratch_len, |scratch| plan.run_units(packed, bias, xp, units, out, scratch))
            };
            rayon::join(|| run(0..half, top), || run(half..units, bottom));
            for ((plane, t), b) in
                out.chunks_exact_mut(ho * wo).zip(top.chunks_exact(top_len)).zip(bottom.chunks_exact(bottom_len))
            {
                let (upper, lower) = plane.split_at_mut(top_len);
                upper.copy_from_slice(t);
                lower.copy_from_slice(b);
            }
        });
        epilogue(0, out);
        return;
    }
    let per_task = images_per_task(n);
    x.par_chunks(per_task * image_len).zip(out.par_chunks_mut(per_task * out_len)).enumerate().for_each(
        |(i, (images, outs))| {
            with_buffer(&PADDED, padded_len + scratch_len, |buffer| {
                let (padded, scratch) = buffer.split_at_mut(padded_len);
                for (image, y) in images.chunks_exact(image_len).zip(outs.chunks_exact_mut(out_len)) {
                    plan.pad_input(image, padded);
                    plan.run_units(packed, bias, padded, 0..units, y, scratch);
                }
            });
            epilogue(i * per_task, outs);
        },
    );
}
