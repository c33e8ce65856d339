//! A convolution or linear layer, the activation after it and, after a
//! convolution, a 2x2 pooling, as one layer: `Conv2d -> Sigmoid/ReLU
//! (-> AvgPool2d(2, 2) / MaxPool2d(2, 2))` or `(Flatten ->) Linear ->
//! Sigmoid/ReLU` (the linear layer then reads the unflattened input), the
//! runs a network without batch norm has (a LeNet, a network whose batch
//! norms were folded away). A model makes it where it finds such a run
//! (see `models/fusion.rs`); nobody constructs it by hand.
//!
//! ```text
//! eval forward:  z = conv(x) or W·x + b;  a = f(z);  y = pool(a)     (per run of images, while in cache)
//! training:      the layers one after the other, and backward through them
//! ```
//!
//! In eval mode the convolution hands each task's images to the activation
//! and pooling as soon as it has computed them (`Conv2d::forward_then`), so
//! they are read while in cache instead of in two more sweeps over memory
//! (a linear layer's output is small: the activation sweeps it after the
//! product). The arithmetic is the layers' own, in the same order (the
//! convolution's kernels, the activation's `value`, the pooling kernels),
//! so the output is bitwise theirs (tested below). ReLU followed by max
//! pooling is one step of `kernels::pool` over the convolution's output
//! (bitwise the two in turn, without writing the activations back), and
//! the pooling keeps no positions of maxima. LeNet's first stage once
//! folded (`Conv2d -> Sigmoid -> AvgPool2d`, one input channel, f32 on
//! AVX-512) runs in vector lanes as its unfolded fused layer does, with
//! the same values. Training mode, and
//! backward, run the layers themselves; a backward after an eval-mode
//! forward first runs their forward passes, which the fused pass skipped.

use rayon::prelude::*;

use super::{check_input, AvgPool2d, Conv2d, Layer, Linear, MaxPool2d, Mode, StateMut, StateName, PAR_MIN};
use crate::aligned::AlignedVec;
use crate::kernels::activation::{Activation, ReluAct, SigmoidAct};
use crate::kernels::batch_norm::ChannelOut;
use crate::kernels::conv_bn_lanes;
use crate::kernels::conv_lanes::IMAGES;
use crate::kernels::multiversion;
use crate::kernels::pool::{avg_pool_2x2, max_pool_2x2_values, relu_max_pool_2x2};
use crate::real::{as_f32, as_f32_mut, Real};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::Result;

/// The layer in front of the activation.
pub(crate) enum Affine<T: Real> {
    /// A convolution: the activation (and pooling) run in its epilogue.
    Conv(Box<Conv2d<T>>),
    /// A linear layer: the activation sweeps its output.
    Linear(Box<Linear<T>>),
}

/// The 2x2, stride 2 pooling after a convolution's activation.
pub(crate) enum Pool<T: Real> {
    Avg(Box<AvgPool2d<T>>),
    Max(Box<MaxPool2d<T>>),
}

impl<T: Real> Pool<T> {
    fn layer(&mut self) -> &mut dyn Layer<T> {
        match self {
            Pool::Avg(p) => &mut **p,
            Pool::Max(p) => &mut **p,
        }
    }
    fn layer_ref(&self) -> &dyn Layer<T> {
        match self {
            Pool::Avg(p) => &**p,
            Pool::Max(p) => &**p,
        }
    }
}

/// `Conv2d/Linear -> activation (-> 2x2 pooling)` in one layer; see the
/// module docs.
pub(crate) struct AffineActivation<T: Real, A: Activation<T>> {
    affine: Affine<T>,
    /// The activation layer, for training and backward.
    act_layer: Box<dyn Layer<T>>,
    /// The same activation as the fused pass applies it.
    act: A,
    pool: Option<Pool<T>>,
    /// The convolution's output for one image, `(C, H, W)` (the pool's
    /// input); unused for a linear layer.
    dims: (usize, usize, usize),
    /// The pooled output of the fused pass (values only: a backward runs
    /// the layers again).
    y: Tensor<T>,
    /// Whether the last forward was the fused pass (the layers' own state
    /// is then not that of this input).
    fused_last: bool,
    /// Whether a `Flatten` in front was fused too (a linear layer that
    /// reads its input unflattened; the flatten's slot comes first).
    flattened: bool,
    /// Whether the eval-mode pass of `Conv2d -> Sigmoid -> AvgPool2d` runs
    /// in lanes (`forward_lanes`; decided at build).
    sigmoid_lanes: bool,
    /// For it: per group of 16 images, the lane kernels' storage.
    groups: AlignedVec<f32>,
}

multiversion! {
    /// `v[i] = act(v[i])`, on rayon when the run is large.
    fn act_in_place<T: Real, A: Activation<T>>(v: &mut [T], act: A) {
        if v.len() >= PAR_MIN {
            v.par_chunks_mut(PAR_MIN / 4).for_each(|c| c.iter_mut().for_each(|x| *x = act.value(*x)));
        } else {
            v.iter_mut().for_each(|x| *x = act.value(*x));
        }
    }
}

impl<T: Real, A: Activation<T> + 'static> AffineActivation<T, A> {
    /// The fused layer of built layers: `affine` with output shape
    /// `affine_out` (one example), the activation layer `act_layer`
    /// computing `act`, and a pooling layer of 2x2 windows, stride 2 (an
    /// average pool needs even H and W: the caller checks).
    pub(crate) fn from_built(
        affine: Affine<T>,
        affine_out: &[usize],
        act_layer: Box<dyn Layer<T>>,
        act: A,
        pool: Option<Pool<T>>,
    ) -> Self {
        let dims = match affine_out {
            &[c, h, w] => (c, h, w),
            _ => (0, 0, 0),
        };
        AffineActivation {
            affine,
            act_layer,
            act,
            pool,
            dims,
            y: Tensor::default(),
            fused_last: false,
            flattened: false,
            sigmoid_lanes: false,
            groups: AlignedVec::new(),
        }
        .with_lanes_decided()
    }

    fn with_lanes_decided(mut self) -> Self {
        self.decide_lanes();
        self
    }

    /// Sets `sigmoid_lanes` for the layer as built.
    fn decide_lanes(&mut self) {
        let sigmoid = std::any::TypeId::of::<A>() == std::any::TypeId::of::<SigmoidAct>();
        let avg = matches!(self.pool, Some(Pool::Avg(_)));
        self.sigmoid_lanes = match &self.affine {
            Affine::Conv(conv) if sigmoid && avg => conv
                .geometry()
                .filter(|g| g.output_hw().is_some())
                .is_some_and(|g| conv_bn_lanes::applies::<T>(&g, conv.out_channels())),
            _ => false,
        };
    }

    /// The same with the `Flatten` before a linear layer fused in: the
    /// linear layer reads examples of shape `example` as they are.
    pub(crate) fn after_flatten(mut self, example: &[usize]) -> Self {
        if let Affine::Linear(l) = &mut self.affine {
            l.read_flattened(example);
            self.flattened = true;
        }
        self
    }

    fn affine(&mut self) -> &mut dyn Layer<T> {
        match &mut self.affine {
            Affine::Conv(c) => &mut **c,
            Affine::Linear(l) => &mut **l,
        }
    }

    fn affine_ref(&self) -> &dyn Layer<T> {
        match &self.affine {
            Affine::Conv(c) => &**c,
            Affine::Linear(l) => &**l,
        }
    }

    /// The layers one after the other, as unfused.
    fn forward_layers(&mut self, x: &Tensor<T>, mode: Mode) -> Result<()> {
        self.fused_last = false;
        let z = match &mut self.affine {
            Affine::Conv(c) => c.forward(x, mode)?,
            Affine::Linear(l) => l.forward(x, mode)?,
        };
        let a = self.act_layer.forward(z, mode)?;
        if let Some(pool) = &mut self.pool {
            pool.layer().forward(a, mode)?;
        }
        Ok(())
    }

    /// The eval-mode pass of the module docs.
    fn forward_fused(&mut self, x: &Tensor<T>) -> Result<()> {
        self.fused_last = false;
        let act = self.act;
        let (c, h, w) = self.dims;
        let conv = match &mut self.affine {
            Affine::Linear(l) => {
                l.forward(x, Mode::Eval)?;
                act_in_place(l.output_mut().data_mut(), act);
                self.fused_last = true;
                return Ok(());
            }
            Affine::Conv(conv) => conv,
        };
        let Some(pool) = &self.pool else {
            conv.forward_then(x, &|_, out| act_in_place(out, act))?;
            self.fused_last = true;
            return Ok(());
        };
        let (hw, pooled) = (h * w, (h / 2) * (w / 2));
        let n = x.shape().first().copied().unwrap_or(0);
        if matches!(pool, Pool::Avg(_)) && self.sigmoid_lanes && n >= IMAGES / 2 {
            return self.forward_lanes(x);
        }
        self.y.resize(&[n, c, h / 2, w / 2]);
        let max = matches!(pool, Pool::Max(_));
        // ReLU then max pooling in one step, on the convolution's output as
        // it is (relu_max_pool_2x2 is bitwise the two in turn)
        let relu_max = max && std::any::TypeId::of::<A>() == std::any::TypeId::of::<ReluAct>();
        let y = ChannelOut::new(self.y.data_mut());
        conv.forward_then(x, &|first, out| {
            let planes = out.len() / hw;
            // SAFETY: these images' pooled planes belong to this task alone
            let ys = unsafe { y.run(first * c * pooled, planes * pooled) };
            if !relu_max {
                act_in_place(out, act);
            }
            for (plane, y) in out.chunks_exact(hw).zip(ys.chunks_exact_mut(pooled)) {
                match (relu_max, max) {
                    (true, _) => relu_max_pool_2x2(plane, (h, w), y),
                    (false, true) => max_pool_2x2_values(plane, (h, w), y),
                    (false, false) => avg_pool_2x2(plane, w, y),
                }
            }
        })?;
        self.fused_last = true;
        Ok(())
    }

    /// `Conv2d -> Sigmoid -> AvgPool2d(2, 2)` where `kernels::conv_bn_lanes`
    /// applies (LeNet's first stage once its batch norm is folded): the
    /// convolution, sigmoid and pooling of 16 images at a time in vector
    /// lanes, as the unfolded `Conv2d+BatchNorm2d+Sigmoid+AvgPool2d` runs
    /// them, with the batch norm's `(mean, scale, shift)` = `(0, 1, 0)`:
    /// `(z - 0)·1 + 0 = z` exactly, so the values are bitwise those of the
    /// convolution's own kernel (the same lane kernel), the sigmoid and the
    /// pooling in turn, without laying out the convolution's output as
    /// planes.
    fn forward_lanes(&mut self, x: &Tensor<T>) -> Result<()> {
        let Affine::Conv(conv) = &self.affine else { unreachable!("sigmoid_lanes is set for a convolution only") };
        let g = conv.geometry().expect("built: sigmoid_lanes is set at build");
        let (c, h, w) = self.dims;
        let n = check_input("Conv2d", x, &[g.channels, g.height, g.width])?;
        let len = conv_bn_lanes::group_len(&g, c);
        self.groups.resize(n.div_ceil(IMAGES) * len, 0.0);
        let (xs, weight) = (as_f32(x.data()), as_f32(conv.weight().data()));
        let bias = conv.bias_values().map(|b| as_f32(b.data()));
        let identity = vec![(0.0f32, 1.0f32, 0.0f32); c];
        self.y.resize(&[n, c, h / 2, w / 2]);
        let plane = g.height * g.width;
        let pooled = (h / 2) * (w / 2);
        as_f32_mut(self.y.data_mut())
            .par_chunks_mut(IMAGES * c * pooled)
            .zip(xs.par_chunks(IMAGES * plane))
            .zip(self.groups.as_mut_slice().par_chunks_mut(len))
            .for_each(|((y, images), storage)| {
                conv_bn_lanes::forward_conv(&g, weight, bias, images, storage, &mut []);
                conv_bn_lanes::forward_pool(&g, &identity, storage, y);
            });
        self.fused_last = true;
        Ok(())
    }
}

impl<T: Real, A: Activation<T> + 'static> Layer<T> for AffineActivation<T, A> {
    fn kind(&self) -> String {
        let flatten = if self.flattened { "Flatten+" } else { "" };
        let mut kind = format!("{flatten}{}+{}", self.affine_ref().kind(), self.act_layer.kind());
        if let Some(pool) = &self.pool {
            kind = format!("{kind}+{}", pool.layer_ref().kind());
        }
        kind
    }

    fn slots(&self) -> usize {
        2 + usize::from(self.pool.is_some()) + usize::from(self.flattened)
    }

    fn build(&mut self, input: &[usize], rng: &mut Rng) -> Result<Vec<usize>> {
        let z = match &mut self.affine {
            Affine::Linear(l) if self.flattened => {
                let z = l.build(&[input.iter().product::<usize>()], rng)?;
                l.read_flattened(input);
                z
            }
            _ => self.affine().build(input, rng)?,
        };
        if let &[c, h, w] = &z[..] {
            self.dims = (c, h, w);
        }
        self.decide_lanes();
        let a = self.act_layer.build(&z, rng)?;
        match &mut self.pool {
            Some(pool) => pool.layer().build(&a, rng),
            None => Ok(a),
        }
    }

    fn forward(&mut self, x: &Tensor<T>, mode: Mode) -> Result<&Tensor<T>> {
        match mode {
            Mode::Eval => self.forward_fused(x)?,
            Mode::Train => self.forward_layers(x, mode)?,
        }
        Ok(self.output())
    }

    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        if self.fused_last {
            self.forward_layers(x, Mode::Eval)?;
        }
        let grad = match &mut self.pool {
            Some(pool) => {
                let a = self.act_layer.output();
                pool.layer().backward(a, dy, true)?
            }
            None => dy,
        };
        let (affine, act_layer) = (&mut self.affine, &mut self.act_layer);
        match affine {
            Affine::Conv(c) => {
                let dz = act_layer.backward(c.output(), grad, true)?;
                c.backward(x, dz, need_dx)
            }
            Affine::Linear(l) => {
                let dz = act_layer.backward(l.output(), grad, true)?;
                l.backward(x, dz, need_dx)
            }
        }
    }

    fn output(&self) -> &Tensor<T> {
        match (&self.pool, self.fused_last) {
            (Some(_), true) => &self.y,
            (Some(pool), false) => pool.layer_ref().output(),
            (None, _) if self.fused_last => self.affine_ref().output(),
            (None, _) => self.act_layer.output(),
        }
    }

    fn grad_input(&self) -> &Tensor<T> {
        self.affine_ref().grad_input()
    }

    fn splits_work(&self, input_len: usize) -> bool {
        self.affine_ref().splits_work(input_len)
    }

    /// The affine layer's state, in the second entry (`1.weight`) after a
    /// fused flatten.
    fn state_mut(&mut self) -> Vec<(StateName, StateMut<'_, T>)> {
        let flattened = self.flattened;
        let state = self.affine().state_mut();
        if !flattened {
            return state;
        }
        state.into_iter().map(|(name, s)| (format!("1.{name}").into(), s)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::activation::{ReluAct, SigmoidAct};
    use crate::layers::{ReLU, Sigmoid};

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 - 1001.0) / 1001.0).collect()
    }

    /// The fused layer's eval-mode output is bitwise that of the layers
    /// one after the other, for each convolution kernel family (LeNet's
    /// first layer in lanes, its second direct, 3x3 padded planes, im2col
    /// with a stride), with a partial last group of images, each pooling
    /// and activation; and a backward after the fused pass is that of the
    /// layers.
    #[test]
    fn conv_activation_pool_is_bitwise_the_layers() {
        // (input, channels out, kernel, padding, stride)
        let cases: [(&[usize], usize, usize, usize, usize); 4] = [
            (&[1, 28, 28], 6, 5, 0, 1),
            (&[6, 12, 12], 16, 5, 0, 1),
            (&[3, 10, 10], 8, 3, 1, 1),
            (&[2, 9, 9], 4, 3, 1, 2),
        ];
        for (input, cout, k, padding, stride) in cases {
            for pool in [0, 1, 2] {
                for relu in [false, true] {
                    let n = 19;
                    let mut shape = vec![n];
                    shape.extend(input);
                    let x = Tensor::from_vec(&shape, values(shape.iter().product(), 1)).unwrap();
                    let build = || {
                        let mut conv = Conv2d::new(cout, k).padding(padding).stride(stride);
                        let z = conv.build(input, &mut crate::rng::seeded(5)).unwrap();
                        (Box::new(conv), z)
                    };
                    let (conv, z) = build();
                    let (mut plain_conv, _) = build();
                    let even = z[1] % 2 == 0 && z[2] % 2 == 0;
                    if pool == 1 && !even {
                        continue;
                    }
                    let mut plain: Vec<Box<dyn Layer<f32>>> = Vec::new();
                    let (act_layer, act2): (Box<dyn Layer<f32>>, Box<dyn Layer<f32>>) = if relu {
                        (Box::new(ReLU::new()), Box::new(ReLU::new()))
                    } else {
                        (Box::new(Sigmoid::new()), Box::new(Sigmoid::new()))
                    };
                    plain.push(act2);
                    let pool_layer = match pool {
                        1 => {
                            let mut p = AvgPool2d::new(2, 2);
                            p.build(&z, &mut crate::rng::seeded(0)).unwrap();
                            plain.push(Box::new(AvgPool2d::new(2, 2)));
                            Some(Pool::Avg(Box::new(p)))
                        }
                        2 => {
                            let mut p = MaxPool2d::new(2, 2);
                            p.build(&z, &mut crate::rng::seeded(0)).unwrap();
                            plain.push(Box::new(MaxPool2d::new(2, 2)));
                            Some(Pool::Max(Box::new(p)))
                        }
                        _ => None,
                    };
                    let mut fused: Box<dyn Layer<f32>> = if relu {
                        Box::new(AffineActivation::from_built(Affine::Conv(conv), &z, act_layer, ReluAct, pool_layer))
                    } else {
                        Box::new(AffineActivation::from_built(
                            Affine::Conv(conv),
                            &z,
                            act_layer,
                            SigmoidAct,
                            pool_layer,
                        ))
                    };
                    let mut shape_now = z.clone();
                    for l in plain.iter_mut() {
                        shape_now = l.build(&shape_now, &mut crate::rng::seeded(0)).unwrap();
                    }
                    let mut want = plain_conv.forward(&x, Mode::Eval).unwrap().clone();
                    for l in plain.iter_mut() {
                        want = l.forward(&want, Mode::Eval).unwrap().clone();
                    }
                    let got = fused.forward(&x, Mode::Eval).unwrap().clone();
                    let tag = format!("{input:?} k{k} p{padding} s{stride} pool {pool} relu {relu}");
                    assert_eq!(got.shape(), want.shape(), "{tag}");
                    assert!(
                        got.data().iter().zip(want.data()).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{tag}: fused output differs"
                    );
                    // backward after the fused pass: the layers' gradients
                    let dy = Tensor::from_vec(want.shape(), values(want.numel(), 2)).unwrap();
                    let dx = fused.backward(&x, &dy, true).unwrap().clone();
                    let mut inputs = vec![x.clone()];
                    let mut a = plain_conv.output().clone();
                    for l in plain.iter_mut() {
                        inputs.push(a.clone());
                        a = l.output().clone();
                    }
                    let mut g = dy.clone();
                    for (l, input) in plain.iter_mut().zip(&inputs[1..]).rev() {
                        g = l.backward(input, &g, true).unwrap().clone();
                    }
                    let want_dx = plain_conv.backward(&x, &g, true).unwrap();
                    assert!(
                        dx.data().iter().zip(want_dx.data()).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{tag}: dx differs"
                    );
                }
            }
        }
    }

    /// `Linear -> Sigmoid` fused: bitwise the two layers in eval mode.
    #[test]
    fn linear_activation_is_bitwise_the_layers() {
        let build = || {
            let mut l = Linear::new(84);
            l.build(&[120], &mut crate::rng::seeded(2)).unwrap();
            Box::new(l)
        };
        for n in [1, 7, 300] {
            let x = Tensor::from_vec(&[n, 120], values(n * 120, 3)).unwrap();
            let mut fused = AffineActivation::from_built(
                Affine::Linear(build()),
                &[84],
                Box::new(Sigmoid::new()),
                SigmoidAct,
                None,
            );
            let mut plain = build();
            let mut sig = Sigmoid::new();
            let want = sig.forward(plain.forward(&x, Mode::Eval).unwrap(), Mode::Eval).unwrap();
            let got = fused.forward(&x, Mode::Eval).unwrap();
            assert!(got.data().iter().zip(want.data()).all(|(a, b)| a.to_bits() == b.to_bits()), "batch {n}");
            // training mode runs the layers: the same values too
            let got = fused.forward(&x, Mode::Train).unwrap();
            assert!(got.data().iter().zip(want.data()).all(|(a, b)| a.to_bits() == b.to_bits()), "batch {n}");
        }
    }
}
