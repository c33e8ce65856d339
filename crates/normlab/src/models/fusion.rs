//! The fusion pass of [`super::Sequential::build`]: runs of layers that one
//! fused layer computes faster are replaced by it, once the layers are built
//! (so their shapes are known). The fused layer occupies the `nn.Sequential`
//! slots of the layers it replaces, so state names do not change.
//!
//! | run of layers (fused batch norm, full)              | fused layer                      |
//! |-----------------------------------------------------|----------------------------------|
//! | `Conv2d -> BatchNorm2d -> Sigmoid -> AvgPool2d(2, 2)` | conv, then the block below; 16 images per vector where `kernels::conv_bn_lanes` applies |
//! | `BatchNorm2d -> Sigmoid -> AvgPool2d(2, 2)`           | two sweeps each way (`BnSigmoidPool`) |
//! | `BatchNorm2d -> ReLU -> MaxPool2d(2, 2)`            | ReLU and pooling inside batch norm's sweeps, only the pooled output written (`BnReluMaxPool`) |
//! | `BatchNorm -> ReLU / Sigmoid / LeakyReLU / Tanh / SiLU / GELU` | the activation inside batch norm's sweeps (`BnActivation`) |
//! | `Conv2d -> ReLU / Sigmoid (-> AvgPool2d(2, 2) / MaxPool2d(2, 2))` | activation and pooling in the convolution's epilogue, eval mode (`AffineActivation`); sigmoid and average pooling 16 images per vector where `kernels::conv_bn_lanes` applies |
//! | `Residual -> ReLU`                                      | the ReLU in the sweep that adds the two branches, and in the one that starts the backward pass (`Residual+ReLU`) |
//! | `Flatten -> Linear`, no activation after it             | the linear layer reads the unflattened input (`FlattenLinear`), no copy either way |
//! | `(Flatten ->) Linear -> ReLU / Sigmoid`                | the activation over the product's output, eval mode (`AffineActivation`); a flatten before it fuses as above |
//!
//! The last two are the runs a network without batch norm has, a LeNet or
//! one whose batch norms were folded (`Sequential::fold_batch_norms`, then
//! `Sequential::fuse`); in training mode they run their layers one after
//! the other.
//!
//! Even H and W are required for the pooled blocks; any other run stays as
//! it is. The scratch batch norm (the chapter's own layer) is never fused.

use std::any::Any;
use std::collections::VecDeque;

use super::Residual;
use crate::kernels::activation::{Activation, ReluAct, SigmoidAct};
use crate::layers::batch_norm::{BnReluMaxPool, BnSigmoidPool, ConvBnSigmoidPool};
use crate::layers::{
    Affine, AffineActivation, AvgPool2d, BatchNorm, BnImpl, BnParts, Conv2d, Flatten, FlattenLinear, Layer, Linear,
    MaxPool2d, Pool, ReLU, Sigmoid,
};
use crate::real::Real;
use crate::Result;

/// A built layer and its output shape for one example.
pub(super) type Built<T> = (Box<dyn Layer<T>>, Vec<usize>);

fn is<L: 'static, T: Real>(layer: Option<&Built<T>>) -> bool {
    layer.is_some_and(|(l, _)| (&**l as &dyn Any).is::<L>())
}

fn fusable_batch_norm<T: Real>(layer: Option<&Built<T>>) -> bool {
    layer.is_some_and(|(l, _)| {
        (&**l as &dyn Any)
            .downcast_ref::<BatchNorm<T>>()
            .is_some_and(|bn| bn.implementation() == BnImpl::Fused && bn.config().parts == BnParts::Full)
    })
}

fn halving_pool<T: Real>(layer: Option<&Built<T>>) -> bool {
    layer.is_some_and(|(l, _)| (&**l as &dyn Any).downcast_ref::<AvgPool2d<T>>().is_some_and(|p| p.window() == (2, 2)))
}

/// Takes the front layer as an `L` (the caller checked its type).
fn take<L: 'static, T: Real>(layers: &mut VecDeque<Built<T>>) -> Box<L> {
    let (layer, _) = layers.pop_front().expect("the caller saw a layer here");
    let any: Box<dyn Any> = layer;
    any.downcast::<L>().unwrap_or_else(|_| unreachable!("the caller checked the type"))
}

/// Whether a batch norm whose output (for one example) is `shape` can feed
/// the pooled block: `(C, H, W)` with even H and W.
fn even_planes(shape: &[usize]) -> bool {
    matches!(shape, [_, h, w] if *h > 0 && *w > 0 && h % 2 == 0 && w % 2 == 0)
}

/// The layers (taking one example of shape `input`) with every run of the
/// table above replaced by its fused layer.
pub(super) fn fuse<T: Real>(input: &[usize], layers: Vec<Built<T>>) -> Result<Vec<Built<T>>> {
    let mut rest: VecDeque<Built<T>> = layers.into();
    let mut out = Vec::with_capacity(rest.len());
    while let Some(front) = rest.front() {
        let conv_first = is::<Conv2d<T>, T>(Some(front));
        let bn_at = usize::from(conv_first);
        let pooled = fusable_batch_norm(rest.get(bn_at))
            && even_planes(&rest[bn_at].1)
            && is::<Sigmoid<T>, T>(rest.get(bn_at + 1))
            && halving_pool(rest.get(bn_at + 2));
        if pooled {
            let conv = conv_first.then(|| take::<Conv2d<T>, T>(&mut rest));
            let bn = take::<BatchNorm<T>, T>(&mut rest);
            let block = BnSigmoidPool::from_built(bn)
                .unwrap_or_else(|_| unreachable!("fused, full, over even planes: checked above"));
            rest.pop_front(); // the sigmoid
            let (_, shape) = rest.pop_front().expect("the pool: checked above");
            let fused: Box<dyn Layer<T>> = match conv {
                Some(conv) => Box::new(ConvBnSigmoidPool::from_built(*conv, block)?),
                None => Box::new(block),
            };
            out.push((fused, shape));
            continue;
        }
        let max_pooled = fusable_batch_norm(Some(front))
            && matches!(&front.1[..], [_, h, w] if *h >= 2 && *w >= 2)
            && is::<ReLU<T>, T>(rest.get(1))
            && halving_max_pool(rest.get(2));
        if max_pooled {
            let bn = take::<BatchNorm<T>, T>(&mut rest);
            rest.pop_front(); // the ReLU
            let (_, shape) = rest.pop_front().expect("the pool: checked above");
            let block =
                BnReluMaxPool::from_built(bn).unwrap_or_else(|_| unreachable!("planes of 2x2 or more: checked above"));
            out.push((Box::new(block), shape));
            continue;
        }
        if fusable_batch_norm(Some(front)) && rest.len() > 1 {
            let (_, bn_shape) = &rest[0];
            let bn_shape = bn_shape.clone();
            let bn = take::<BatchNorm<T>, T>(&mut rest);
            match rest[0].0.fuse_after_batch_norm(bn) {
                Ok(fused) => {
                    let (_, shape) = rest.pop_front().expect("checked: a layer after the batch norm");
                    out.push((fused, shape));
                }
                Err(bn) => out.push((bn, bn_shape)),
            }
            continue;
        }
        if is::<Residual<T>, T>(Some(front)) && is::<ReLU<T>, T>(rest.get(1)) {
            let block = take::<Residual<T>, T>(&mut rest);
            let (_, shape) = rest.pop_front().expect("the ReLU: checked above");
            out.push((Box::new(block.with_relu_after()), shape));
            continue;
        }
        if is::<Flatten<T>, T>(Some(front)) && is::<Linear<T>, T>(rest.get(1)) && activation(rest.get(2)).is_none() {
            let example = match out.last() {
                Some((_, shape)) => shape.clone(),
                None => input.to_vec(),
            };
            rest.pop_front(); // the flatten
            let shape = rest.front().expect("the linear layer: checked above").1.clone();
            let linear = take::<Linear<T>, T>(&mut rest);
            out.push((Box::new(FlattenLinear::from_built(&example, *linear)), shape));
            continue;
        }
        if is::<Flatten<T>, T>(Some(front)) && is::<Linear<T>, T>(rest.get(1)) {
            // an activation follows (else the rule above took the pair)
            let example = match out.last() {
                Some((_, shape)) => shape.clone(),
                None => input.to_vec(),
            };
            let flatten = rest.pop_front().expect("checked above");
            match affine_activation(&mut rest, Some(&example)) {
                Some(fused) => out.push(fused),
                None => out.push(flatten),
            }
            continue;
        }
        if let Some(fused) = affine_activation(&mut rest, None) {
            out.push(fused);
            continue;
        }
        out.push(rest.pop_front().expect("front() was Some"));
    }
    Ok(out)
}

/// The activation of the table's last two rows, if `layer` is one.
enum ActKind {
    Sigmoid,
    Relu,
}

fn activation<T: Real>(layer: Option<&Built<T>>) -> Option<ActKind> {
    if is::<Sigmoid<T>, T>(layer) {
        Some(ActKind::Sigmoid)
    } else if is::<ReLU<T>, T>(layer) {
        Some(ActKind::Relu)
    } else {
        None
    }
}

fn halving_max_pool<T: Real>(layer: Option<&Built<T>>) -> bool {
    layer.is_some_and(|(l, _)| (&**l as &dyn Any).downcast_ref::<MaxPool2d<T>>().is_some_and(|p| p.window() == (2, 2)))
}

/// A 2x2, stride 2 pooling layer that can follow a convolution over
/// planes `shape`: max pooling, or average pooling over even planes.
fn pool_after<T: Real>(layer: Option<&Built<T>>, shape: &[usize]) -> bool {
    halving_max_pool(layer) || (halving_pool(layer) && even_planes(shape))
}

/// `Conv2d -> activation (-> pool)` or `Linear -> activation` at the front
/// of `rest`, taken out and fused; `None` (and `rest` as it was) otherwise.
/// With `flattened`, the `Flatten` before the linear layer (taken out by
/// the caller) is fused too, over examples of that shape.
fn affine_activation<T: Real>(rest: &mut VecDeque<Built<T>>, flattened: Option<&[usize]>) -> Option<Built<T>> {
    let conv = is::<Conv2d<T>, T>(rest.front());
    if !conv && !is::<Linear<T>, T>(rest.front()) {
        return None;
    }
    let act = activation(rest.get(1))?;
    let affine_shape = rest[0].1.clone();
    let pooled = conv && pool_after(rest.get(2), &affine_shape);
    let affine =
        if conv { Affine::Conv(take::<Conv2d<T>, T>(rest)) } else { Affine::Linear(take::<Linear<T>, T>(rest)) };
    let (act_layer, mut shape) = rest.pop_front().expect("the activation: checked above");
    let pool = if pooled {
        let (layer, pool_shape) = rest.pop_front().expect("the pool: checked above");
        shape = pool_shape;
        let any: Box<dyn Any> = layer;
        Some(match any.downcast::<AvgPool2d<T>>() {
            Ok(avg) => Pool::Avg(avg),
            Err(any) => Pool::Max(any.downcast::<MaxPool2d<T>>().unwrap_or_else(|_| unreachable!("checked above"))),
        })
    } else {
        None
    };
    fn fused<T: Real, A: Activation<T> + 'static>(
        affine: Affine<T>,
        shape: &[usize],
        act_layer: Box<dyn Layer<T>>,
        act: A,
        pool: Option<Pool<T>>,
        flattened: Option<&[usize]>,
    ) -> Box<dyn Layer<T>> {
        let layer = AffineActivation::from_built(affine, shape, act_layer, act, pool);
        match flattened {
            Some(example) => Box::new(layer.after_flatten(example)),
            None => Box::new(layer),
        }
    }
    let layer = match act {
        ActKind::Sigmoid => fused(affine, &affine_shape, act_layer, SigmoidAct, pool, flattened),
        ActKind::Relu => fused(affine, &affine_shape, act_layer, ReluAct, pool, flattened),
    };
    Some((layer, shape))
}
