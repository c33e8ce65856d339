//! A convolution and the fused batch norm + sigmoid + pooling block after
//! it, as one layer: the chapter's `Conv2d -> BatchNorm2d -> Sigmoid ->
//! AvgPool2d(2, 2)`, four entries of the `nn.Sequential` (state names
//! `N.weight`, `N.bias` for the convolution, `N+1.weight`, ... for batch
//! norm, as PyTorch names them).
//!
//! Where `kernels::conv_bn_lanes` applies (f32 on AVX-512, one input
//! channel: LeNet's first stage) the layer runs its four passes there, 16
//! images at a time in vector lanes, and never lays the convolution's
//! output out as planes. Everywhere else it runs a [`Conv2d`] and a
//! [`BnSigmoidPool`] one after the other, which is also what it computes
//! (same formulas; the sums in another order).

use rayon::prelude::*;

use super::block::{finish_backward, BnSigmoidPool};
use super::BatchNorm;
use crate::aligned::AlignedVec;
use crate::kernels::conv::ConvGeometry;
use crate::kernels::conv_bn_lanes::{self, DzOut};
use crate::kernels::conv_lanes::IMAGES;
use crate::kernels::stats::{Ncs, ShiftedSums};
use crate::layers::{check_forward_ran, check_grad, check_input, not_built, Conv2d, Layer, Mode, StateMut, StateName};
use crate::real::{as_f32, as_f32_mut, Real};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::Result;

/// `Conv2d -> BatchNorm2d -> Sigmoid -> AvgPool2d(2, 2)` in one layer (four
/// `nn.Sequential` entries): a [`Conv2d`] and a [`BnSigmoidPool`], or one
/// pass in vector lanes where that applies; see the module docs.
pub struct ConvBnSigmoidPool<T: Real = f32> {
    conv: Conv2d<T>,
    block: BnSigmoidPool<T>,
    /// Whether the passes run in lanes (decided at build).
    lanes: bool,
    /// Whether the last forward pass ran in lanes (prediction on a few
    /// images runs the layers instead: see `forward`).
    lanes_last: bool,
    /// In lanes: per group of 16 images, what the passes keep.
    groups: AlignedVec<f32>,
    /// The shape of the input of the last forward pass that completed
    /// (`[0]` before any, or after one that failed).
    forward_input: Vec<usize>,
    /// In lanes: the pooled output, and the convolution's output gradient
    /// when the input gradient is asked for.
    y: Tensor<T>,
    dz: Tensor<T>,
}

impl<T: Real> ConvBnSigmoidPool<T> {
    /// The layer made of a built convolution and the built block after it.
    pub(crate) fn from_built(conv: Conv2d<T>, block: BnSigmoidPool<T>) -> Result<Self> {
        let mut layer = ConvBnSigmoidPool {
            conv,
            block,
            lanes: false,
            lanes_last: false,
            groups: AlignedVec::new(),
            forward_input: vec![0],
            y: Tensor::default(),
            dz: Tensor::default(),
        };
        let (g, c, _, _) = layer.geometry()?;
        layer.lanes = conv_bn_lanes::applies::<T>(&g, c);
        Ok(layer)
    }

    /// The convolution's input geometry, its output channels, height and
    /// width; an error before build.
    fn geometry(&self) -> Result<(ConvGeometry, usize, usize, usize)> {
        let not_built = || not_built("Conv2d+BatchNorm2d+Sigmoid+AvgPool2d");
        let g = self.conv.geometry().ok_or_else(not_built)?;
        // the convolution's build sets the geometry only once its output size is known
        let (ho, wo) = g.output_hw().ok_or_else(not_built)?;
        Ok((g, self.conv.out_channels(), ho, wo))
    }

    /// The block's `(mean, scale, shift)` per channel, as f32.
    fn coefs(&self, c: usize) -> Vec<(f32, f32, f32)> {
        let f = |v: T| v.as_f64() as f32;
        (0..c).map(|ch| self.block.coef(ch)).map(|(a, b, s)| (f(a), f(b), f(s))).collect()
    }

    fn forward_lanes(&mut self, x: &Tensor<T>, mode: Mode) -> Result<&Tensor<T>> {
        let (g, c, ho, wo) = self.geometry()?;
        let n = check_input("Conv2d", x, &[g.channels, g.height, g.width])?;
        let (plane, p, pooled) = (g.height * g.width, ho * wo, ho * wo / 4);
        let len = conv_bn_lanes::group_len(&g, c);
        self.groups.resize(n.div_ceil(IMAGES) * len, 0.0);
        // as BatchNorm decides: the batch's statistics, or the running ones
        let batch_stats = mode == Mode::Train || !self.block.bn.config().track_running_stats;
        let (xs, weight) = (as_f32(x.data()), as_f32(self.conv.weight().data()));
        let bias = self.conv.bias_values().map(|b| as_f32(b.data()));
        // the sums are shifted by the first image's first output of each
        // channel, a value near the channel's mean (see ShiftedSums); 0 with
        // no images (no sums: prepare_with_shape below refuses batch
        // statistics of an empty batch before it reads them)
        let shifts: Vec<f32> = (0..c)
            .map(|co| {
                if n == 0 {
                    return 0.0;
                }
                let taps = &weight[co * 25..][..25];
                let first: f32 = (0..25).map(|t| taps[t] * xs[(t / 5) * g.width + t % 5]).sum();
                first + bias.map_or(0.0, |b| b[co])
            })
            .collect();
        let partials: Vec<Vec<ShiftedSums>> = xs
            .par_chunks(IMAGES * plane)
            .zip(self.groups.as_mut_slice().par_chunks_mut(len))
            .map(|(images, storage)| {
                let mut sums: Vec<ShiftedSums> =
                    if batch_stats { shifts.iter().map(|&k| ShiftedSums::new(k)).collect() } else { Vec::new() };
                conv_bn_lanes::forward_conv(&g, weight, bias, images, storage, &mut sums);
                sums
            })
            .collect();
        self.block.bn.prepare_with_shape(&[n, c, ho, wo], Ncs { n, c, s: p }, mode, |_, _| {
            // called only for n ≥ 1 (see prepare_with_shape): there is a first group
            let mut total = partials[0].clone();
            for group in &partials[1..] {
                total.iter_mut().zip(group).for_each(|(t, s)| t.absorb(s));
            }
            (total.iter().map(ShiftedSums::mean_var).unzip(), false)
        })?;
        let coefs = self.coefs(c);
        self.y.resize(&[n, c, ho / 2, wo / 2]);
        as_f32_mut(self.y.data_mut())
            .par_chunks_mut(IMAGES * c * pooled)
            .zip(self.groups.as_mut_slice().par_chunks_mut(len))
            .for_each(|(y, storage)| conv_bn_lanes::forward_pool(&g, &coefs, storage, y));
        Ok(&self.y)
    }

    fn backward_lanes(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        let (g, c, ho, wo) = self.geometry()?;
        let n = check_input("Conv2d", x, &[g.channels, g.height, g.width])?;
        let (p, pooled) = (ho * wo, ho * wo / 4);
        check_grad(&self.kind(), dy, &[n, c, ho / 2, wo / 2])?;
        let len = conv_bn_lanes::group_len(&g, c);
        let mean: Vec<f32> = self.block.bn.saved.mean.iter().map(|m| m.as_f64() as f32).collect();
        let partials: Vec<Vec<(f64, f64)>> = as_f32(dy.data())
            .par_chunks(IMAGES * c * pooled)
            .zip(self.groups.as_mut_slice().par_chunks_mut(len))
            .map(|(dys, storage)| conv_bn_lanes::backward_sums(&g, &mean, dys, storage))
            .collect();
        let mut sums = vec![(0.0f64, 0.0f64); c];
        for group in &partials {
            for (total, part) in sums.iter_mut().zip(group) {
                total.0 += part.0;
                total.1 += part.1;
            }
        }
        let apply: Vec<(f32, f32, f32)> = finish_backward(&mut self.block.bn, &sums, (n * p) as f64)
            .into_iter()
            .map(|(a, b, k)| (a.as_f64() as f32, b.as_f64() as f32, k.as_f64() as f32))
            .collect();
        let images = |gi: usize| (n - gi * IMAGES).min(IMAGES);
        if need_dx {
            // the convolution's output gradient as planes, for Conv2d's own
            // backward pass (weight, bias and input gradients)
            self.dz.resize(&[n, c, ho, wo]);
            as_f32_mut(self.dz.data_mut())
                .par_chunks_mut(IMAGES * c * p)
                .zip(self.groups.as_mut_slice().par_chunks_mut(len))
                .enumerate()
                .for_each(|(gi, (dz, storage))| {
                    conv_bn_lanes::backward_dz(&g, &apply, &mean, images(gi), storage, DzOut::Planes(dz))
                });
            return self.conv.backward(x, &self.dz, true);
        }
        let partials: Vec<(Vec<f32>, Vec<f64>)> = self
            .groups
            .as_mut_slice()
            .par_chunks_mut(len)
            .take(n.div_ceil(IMAGES))
            .enumerate()
            .map(|(gi, storage)| {
                let (mut dw, mut db) = (vec![0.0f32; c * 25], vec![0.0f64; c]);
                let out = DzOut::WeightGrad { dw: &mut dw, db: &mut db };
                conv_bn_lanes::backward_dz(&g, &apply, &mean, images(gi), storage, out);
                (dw, db)
            })
            .collect();
        let (weight_grad, bias_grad) = self.conv.grads_mut();
        let mut dw = vec![0.0f64; c * 25];
        let mut db = vec![0.0f64; c];
        for (pw, pb) in &partials {
            dw.iter_mut().zip(pw).for_each(|(t, &v)| *t += v as f64);
            db.iter_mut().zip(pb).for_each(|(t, &v)| *t += v);
        }
        weight_grad.data_mut().iter_mut().zip(&dw).for_each(|(t, &v)| *t = T::from_f64(v));
        if let Some(bias_grad) = bias_grad {
            bias_grad.data_mut().iter_mut().zip(&db).for_each(|(t, &v)| *t = T::from_f64(v));
        }
        Ok(self.conv.grad_input())
    }
}

/// Batch norm's state names, moved to the `nn.Sequential` entry after the
/// convolution's (see [`Layer::slots`]).
fn second_slot(name: StateName) -> StateName {
    format!("1.{name}").into()
}

impl<T: Real> Layer<T> for ConvBnSigmoidPool<T> {
    fn kind(&self) -> String {
        "Conv2d+BatchNorm2d+Sigmoid+AvgPool2d".into()
    }

    fn slots(&self) -> usize {
        1 + self.block.slots()
    }

    fn build(&mut self, input: &[usize], rng: &mut Rng) -> Result<Vec<usize>> {
        let z = self.conv.build(input, rng)?;
        let out = self.block.build(&z, rng)?;
        let (g, c, _, _) = self.geometry()?;
        self.lanes = conv_bn_lanes::applies::<T>(&g, c);
        Ok(out)
    }

    fn forward(&mut self, x: &Tensor<T>, mode: Mode) -> Result<&Tensor<T>> {
        self.forward_input = vec![0];
        // in eval mode, a few images would fill a few of the 16 lanes: the
        // convolution's direct kernel and the block do less work
        let few = mode == Mode::Eval && x.shape().first().is_some_and(|&n| n < IMAGES / 2);
        self.lanes_last = self.lanes && !few;
        if self.lanes_last {
            self.forward_lanes(x, mode)?;
        } else {
            let z = self.conv.forward(x, mode)?;
            self.block.forward(z, mode)?;
        }
        self.forward_input = x.shape().to_vec();
        Ok(self.output())
    }

    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        self.geometry()?;
        // what the passes kept (the convolution's output, or in lanes the
        // groups, sized for this input) comes from the forward pass on x
        check_forward_ran(&self.kind(), &self.forward_input, x.shape())?;
        if self.lanes_last {
            return self.backward_lanes(x, dy, need_dx);
        }
        let dz = self.block.backward(self.conv.output(), dy, true)?;
        self.conv.backward(x, dz, need_dx)
    }

    fn output(&self) -> &Tensor<T> {
        if self.lanes_last {
            &self.y
        } else {
            self.block.output()
        }
    }

    fn grad_input(&self) -> &Tensor<T> {
        self.conv.grad_input()
    }

    fn splits_work(&self, _input_len: usize) -> bool {
        true
    }

    fn state_mut(&mut self) -> Vec<(StateName, StateMut<'_, T>)> {
        let mut state = self.conv.state_mut();
        state.extend(self.block.state_mut().into_iter().map(|(name, s)| (second_slot(name), s)));
        state
    }

    fn as_batch_norm_mut(&mut self) -> Option<&mut BatchNorm<T>> {
        self.block.as_batch_norm_mut()
    }

    fn batch_norm_entry(&self) -> usize {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Init;

    fn stage(lanes: bool) -> ConvBnSigmoidPool<f32> {
        let mut conv = Conv2d::new(6, 5).init(Init::XavierUniform);
        let z = conv.build(&[1, 28, 28], &mut crate::rng::seeded(3)).unwrap();
        let mut bn = BatchNorm::new(crate::layers::BatchNormConfig::pytorch());
        bn.build(&z, &mut crate::rng::seeded(3)).unwrap();
        let block = BnSigmoidPool::from_built(Box::new(bn)).unwrap_or_else(|_| panic!("a block over 6x24x24"));
        let mut s = ConvBnSigmoidPool::from_built(conv, block).unwrap();
        if !lanes {
            s.lanes = false;
        }
        s
    }

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 - 1001.0) / 1001.0).collect()
    }

    fn close(what: &str, a: &Tensor<f32>, b: &Tensor<f32>) {
        assert_eq!(a.shape(), b.shape(), "{what}");
        for (i, (&x, &y)) in a.data().iter().zip(b.data()).enumerate() {
            assert!((x - y).abs() <= 2e-4 * (1.0 + y.abs()), "{what}[{i}]: lanes {x} vs planes {y}");
        }
    }

    fn state(s: &mut ConvBnSigmoidPool<f32>) -> Vec<(StateName, Tensor<f32>)> {
        let mut out = Vec::new();
        for (name, st) in s.state_mut() {
            match st {
                StateMut::Param { value, grad } => {
                    out.push((name.clone(), value.clone()));
                    out.push((name, grad.clone()));
                }
                StateMut::Buffer(b) => out.push((name, b.clone())),
                StateMut::Count(_) => {}
            }
        }
        out
    }

    /// In lanes (where this build has them) the stage computes what Conv2d
    /// and BnSigmoidPool compute one after the other: outputs, every
    /// gradient, the running statistics, in both modes, with a full and a
    /// partial group of 16 images and with the input gradient asked for.
    #[test]
    fn lanes_match_the_layers_one_after_the_other() {
        assert_eq!(stage(true).lanes, crate::isa::avx512());
        for (n, need_dx) in [(21, false), (32, false), (5, true)] {
            let (mut lanes, mut planes) = (stage(true), stage(false));
            let x = Tensor::from_vec(&[n, 1, 28, 28], values(n * 784, 1)).unwrap();
            let dy = Tensor::from_vec(&[n, 6, 12, 12], values(n * 864, 2)).unwrap();
            for step in 0..2 {
                let tag = format!("{n} images, step {step}");
                close(
                    &format!("{tag}: y"),
                    lanes.forward(&x, Mode::Train).unwrap(),
                    planes.forward(&x, Mode::Train).unwrap(),
                );
                let dx_lanes = lanes.backward(&x, &dy, need_dx).unwrap().clone();
                let dx_planes = planes.backward(&x, &dy, need_dx).unwrap();
                if need_dx {
                    close(&format!("{tag}: dx"), &dx_lanes, dx_planes);
                }
                for ((name, a), (_, b)) in state(&mut lanes).iter().zip(&state(&mut planes)) {
                    close(&format!("{tag}: {name}"), a, b);
                }
            }
            close(
                &format!("{n} images, eval"),
                lanes.forward(&x, Mode::Eval).unwrap(),
                planes.forward(&x, Mode::Eval).unwrap(),
            );
        }
    }

    #[test]
    fn batch_norm_state_is_named_for_the_second_entry() {
        let names: Vec<StateName> = stage(true).state_mut().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["weight", "bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"]
        );
        assert_eq!(stage(true).slots(), 4);
        assert_eq!(stage(true).batch_norm_entry(), 1);
    }
}
