//! A model fuses runs of layers at build (`Sequential::fusion`): batch norm
//! with the activation after it, and the chapter's BN -> sigmoid -> pool
//! stage. Fused and apart must compute the same thing: bitwise for batch
//! norm + activation (the fused sweeps do the two layers' arithmetic in the
//! same order), to 1e-4 for the pooled block (its sums run in another
//! order, and the gradient of a convolution's bias in front of batch norm
//! is a sum that cancels to about zero, where that order shows: 1.05e-5
//! seen), with the same PyTorch state names either way.

use normlab::layers::{
    AvgPool2d, BatchNorm, BatchNormConfig, BnImpl, Conv2d, Flatten, Layer, LeakyReLU, Linear, MaxPool2d, Mode, ReLU,
    SiLU, Sigmoid, StateMut, Tanh, GELU,
};
use normlab::models::{Residual, Sequential};
use normlab::{rng, Tensor};
use rand::Rng as _;

fn random(shape: &[usize], seed: u64) -> Tensor<f32> {
    let mut r = rng::seeded(seed);
    let n = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|_| r.gen::<f32>() * 2.0 - 1.0).collect()).unwrap()
}

/// Every parameter, gradient and buffer, by name.
fn state(net: &mut Sequential<f32>) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for (name, s) in net.state_mut() {
        match s {
            StateMut::Param { value, grad } => {
                out.push((name.clone(), value.data().to_vec()));
                out.push((format!("{name}.grad"), grad.data().to_vec()));
            }
            StateMut::Buffer(b) => out.push((name, b.data().to_vec())),
            StateMut::Count(c) => out.push((name, vec![*c as f32])),
        }
    }
    out
}

/// `|a - b| / max(1, |b|)` at its largest; 0 means bitwise equal (no NaN
/// passes: a NaN on either side fails the comparison below).
fn worst(what: &str, a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            assert!(x.is_finite() && y.is_finite(), "{what}: {x} vs {y}");
            (x as f64 - y as f64).abs() / (y as f64).abs().max(1.0)
        })
        .fold(0.0, f64::max)
}

/// Builds `make()` fused and apart with the same seed, runs two training
/// steps' passes (forward, backward, a plain SGD update) and an evaluation
/// forward, and checks outputs, input gradients and every state entry
/// agree within `tol` (0: bitwise). Returns the fused model's layer kinds.
fn compare(make: impl Fn() -> Sequential<f32>, example: &[usize], batch: usize, tol: f64) -> Vec<String> {
    let mut nets: Vec<Sequential<f32>> = [true, false]
        .into_iter()
        .map(|fuse| {
            let mut net = make().fusion(fuse);
            net.build(example, &mut rng::seeded(7)).unwrap();
            net.set_input_grad(true);
            net
        })
        .collect();
    let kinds: Vec<String> = nets[0].layers().iter().map(|l| l.kind()).collect();
    assert_eq!(nets[0].state_names(), nets[1].state_names(), "{kinds:?}: the same state names");
    let mut shape = vec![batch];
    shape.extend_from_slice(example);
    let x = random(&shape, 1);
    for step in 0..3 {
        let mode = if step < 2 { Mode::Train } else { Mode::Eval };
        let mut outs = Vec::new();
        for net in nets.iter_mut() {
            net.set_mode(mode);
            let y = net.forward(&x).unwrap().clone();
            let dy = random(y.shape(), 2 + step);
            net.backward(&x, &dy).unwrap();
            outs.push((y, net.grad_input().clone()));
            // a plain SGD step, so the next step starts from moved parameters
            for (_, s) in net.state_mut() {
                if let StateMut::Param { value, grad } = s {
                    value.data_mut().iter_mut().zip(grad.data()).for_each(|(v, g)| *v -= 0.1 * g);
                }
            }
        }
        let tag = format!("{kinds:?} step {step} ({mode:?})");
        let e = worst(&format!("{tag}: y"), outs[0].0.data(), outs[1].0.data());
        assert!(e <= tol, "{tag}: outputs differ by {e:.2e}");
        let e = worst(&format!("{tag}: dx"), outs[0].1.data(), outs[1].1.data());
        assert!(e <= tol, "{tag}: input gradients differ by {e:.2e}");
        let (a, b) = (state(&mut nets[0]), state(&mut nets[1]));
        for ((name, va), (_, vb)) in a.iter().zip(&b) {
            let e = worst(&format!("{tag}: {name}"), va, vb);
            assert!(e <= tol, "{tag}: {name} differs by {e:.2e}");
        }
    }
    kinds
}

fn bn() -> BatchNorm<f32> {
    BatchNorm::new(BatchNormConfig::pytorch())
}

/// Makes a fresh layer.
type MakeLayer = fn() -> Box<dyn Layer<f32>>;

/// Each activation a batch norm can absorb, by the kind its layer reports.
fn activations() -> Vec<(&'static str, MakeLayer)> {
    vec![
        ("ReLU", || Box::new(ReLU::new())),
        ("Sigmoid", || Box::new(Sigmoid::new())),
        ("LeakyReLU", || Box::new(LeakyReLU::new(0.1))),
        ("Tanh", || Box::new(Tanh::new())),
        ("SiLU", || Box::new(SiLU::new())),
        ("GELU", || Box::new(GELU::new(false))),
        ("GELU", || Box::new(GELU::new(true))),
    ]
}

#[test]
fn batch_norm_and_activation_fused_are_bitwise_the_two_layers_apart() {
    for (act, make_act) in activations() {
        // BatchNorm1d after a linear layer: rows of (N, C)
        let kinds = compare(
            || {
                let mut net = Sequential::new().push(Linear::new(12)).push(bn());
                net.push_boxed(make_act());
                net.push(Linear::new(3))
            },
            &[10],
            33,
            0.0,
        );
        assert_eq!(kinds, ["Linear", &format!("BatchNorm1d+{act}"), "Linear"]);
        // BatchNorm2d after a convolution, small (one thread) and large
        // enough to split across threads (8·4·32·32 = 32768 values)
        for (example, batch) in [(vec![2, 7, 9], 5), (vec![3, 34, 34], 8)] {
            let kinds = compare(
                || {
                    let mut net = Sequential::new().push(Conv2d::new(4, 3)).push(bn());
                    net.push_boxed(make_act());
                    net.push(Flatten::new()).push(Linear::new(3))
                },
                &example,
                batch,
                0.0,
            );
            assert_eq!(kinds, ["Conv2d", &format!("BatchNorm2d+{act}"), "Flatten+Linear"]);
        }
    }
}

/// Batch-norm options other than PyTorch's defaults that fusion must keep.
fn bn_options() -> [BatchNormConfig; 3] {
    [
        BatchNormConfig::pytorch().affine(false),
        BatchNormConfig::pytorch().track_running_stats(false),
        BatchNormConfig::d2l(),
    ]
}

#[test]
fn batch_norm_options_fuse_too_and_stay_bitwise() {
    for config in bn_options() {
        let kinds = compare(
            || Sequential::new().push(Conv2d::new(3, 3)).push(BatchNorm::new(config)).push(ReLU::new()),
            &[2, 6, 6],
            4,
            0.0,
        );
        assert_eq!(kinds, ["Conv2d", "BatchNorm2d+ReLU"], "{config:?}");
    }
}

/// `BatchNorm2d -> ReLU -> MaxPool2d(2, 2)`, the VGG-style stage: bitwise
/// the three layers apart, on even and odd planes (an odd last row and
/// column are in no window), one thread's worth and a batch split across
/// threads, with each batch-norm option.
#[test]
fn batch_norm_relu_and_max_pooling_fuse_bitwise() {
    for (example, batch) in [(vec![2, 8, 8], 5), (vec![3, 9, 7], 4), (vec![4, 30, 30], 12)] {
        let kinds = compare(
            || {
                Sequential::new()
                    .push(Conv2d::new(4, 3).padding(1))
                    .push(bn())
                    .push(ReLU::new())
                    .push(MaxPool2d::new(2, 2))
                    .push(Flatten::new())
                    .push(Linear::new(3))
            },
            &example,
            batch,
            0.0,
        );
        assert_eq!(kinds, ["Conv2d", "BatchNorm2d+ReLU+MaxPool2d", "Flatten+Linear"], "{example:?}");
    }
    for config in bn_options() {
        let kinds = compare(
            || {
                Sequential::new()
                    .push(Conv2d::new(3, 3))
                    .push(BatchNorm::new(config))
                    .push(ReLU::new())
                    .push(MaxPool2d::new(2, 2))
            },
            &[2, 8, 8],
            4,
            0.0,
        );
        assert_eq!(kinds, ["Conv2d", "BatchNorm2d+ReLU+MaxPool2d"], "{config:?}");
    }
}

#[test]
fn the_chapter_stage_fuses_into_one_layer_within_1e_4() {
    let kinds = compare(
        || {
            Sequential::new()
                .push(Conv2d::new(6, 5))
                .push(bn())
                .push(Sigmoid::new())
                .push(AvgPool2d::new(2, 2))
                .push(Flatten::new())
                .push(Linear::new(4))
        },
        &[1, 28, 28],
        20,
        1e-4,
    );
    assert_eq!(kinds, ["Conv2d+BatchNorm2d+Sigmoid+AvgPool2d", "Flatten+Linear"]);
    // without a convolution in front: the block alone
    let kinds =
        compare(|| Sequential::new().push(bn()).push(Sigmoid::new()).push(AvgPool2d::new(2, 2)), &[3, 6, 8], 4, 1e-4);
    assert_eq!(kinds, ["BatchNorm2d+Sigmoid+AvgPool2d"]);
}

#[test]
fn runs_that_do_not_fit_stay_apart_or_fuse_only_in_part() {
    // odd planes (27 - 4 = 23): the pooled block needs even ones, so only
    // batch norm and the sigmoid fuse, and the pool runs on its own
    let kinds = compare(
        || Sequential::new().push(Conv2d::new(2, 5)).push(bn()).push(Sigmoid::new()).push(AvgPool2d::new(2, 2)),
        &[1, 27, 27],
        3,
        0.0,
    );
    assert_eq!(kinds, ["Conv2d", "BatchNorm2d+Sigmoid", "AvgPool2d"]);
    // the chapter's scratch batch norm, a max pool after the sigmoid, and
    // an activation before batch norm: nothing to fuse
    let kinds = compare(
        || {
            Sequential::new()
                .push(BatchNorm::with_impl(BatchNormConfig::pytorch(), BnImpl::Scratch))
                .push(ReLU::new())
                .push(Sigmoid::new())
                .push(bn())
        },
        &[3, 4, 4],
        4,
        0.0,
    );
    assert_eq!(kinds, ["BatchNorm2d", "ReLU", "Sigmoid", "BatchNorm2d"]);
    let kinds =
        compare(|| Sequential::new().push(bn()).push(Sigmoid::new()).push(MaxPool2d::new(2, 2)), &[3, 4, 4], 4, 0.0);
    assert_eq!(kinds, ["BatchNorm2d+Sigmoid", "MaxPool2d"]);
}

/// `Flatten -> Linear` reads the unflattened input, bitwise, with an
/// activation after the linear layer too (one layer of three), and a
/// flatten first in the model fuses too.
#[test]
fn flatten_then_linear_fuses_with_or_without_an_activation() {
    let kinds = compare(
        || Sequential::new().push(Flatten::new()).push(Linear::new(5)).push(bn()).push(Linear::new(3)),
        &[2, 3, 4],
        6,
        0.0,
    );
    assert_eq!(kinds, ["Flatten+Linear", "BatchNorm1d", "Linear"]);
    let kinds = compare(
        || Sequential::new().push(Conv2d::new(2, 3)).push(Flatten::new()).push(Linear::new(4)).push(ReLU::new()),
        &[1, 6, 6],
        3,
        0.0,
    );
    assert_eq!(kinds, ["Conv2d", "Flatten+Linear+ReLU"]);
    let kinds = compare(
        || Sequential::new().push(Flatten::new()).push(Linear::new(4)).push(Sigmoid::new()).push(Linear::new(3)),
        &[2, 3, 4],
        6,
        0.0,
    );
    assert_eq!(kinds, ["Flatten+Linear+Sigmoid", "Linear"]);
}

/// A residual block and the ReLU after it: one layer, bitwise the two
/// apart, with an identity shortcut and with a 1x1 strided one (the
/// ResNet basic block), the batch large enough to split across threads.
#[test]
fn a_residual_block_takes_the_relu_after_it() {
    let block = |stride: usize| {
        let conv = |c: usize, k: usize, s: usize| Conv2d::new(c, k).stride(s).padding(k / 2).bias(false);
        let body =
            Sequential::new().push(conv(6, 3, stride)).push(bn()).push(ReLU::new()).push(conv(6, 3, 1)).push(bn());
        if stride == 1 {
            Residual::new(body)
        } else {
            Residual::with_shortcut(body, Sequential::new().push(conv(6, 1, stride)).push(bn()))
        }
    };
    let kinds = compare(
        || {
            Sequential::new()
                .push(Conv2d::new(6, 3).padding(1))
                .push(bn())
                .push(ReLU::new())
                .push(block(1))
                .push(ReLU::new())
                .push(block(2))
                .push(ReLU::new())
                .push(Flatten::new())
                .push(Linear::new(3))
        },
        &[2, 24, 24],
        10,
        0.0,
    );
    assert_eq!(kinds, ["Conv2d", "BatchNorm2d+ReLU", "Residual+ReLU", "Residual+ReLU", "Flatten+Linear"]);
}

#[test]
fn a_model_with_fusion_off_runs_every_layer_as_pushed() {
    let mut net = Sequential::<f32>::new().push(Linear::new(4)).push(bn()).push(ReLU::new()).fusion(false);
    net.build(&[3], &mut rng::seeded(0)).unwrap();
    let kinds: Vec<String> = net.layers().iter().map(|l| l.kind()).collect();
    assert_eq!(kinds, ["Linear", "BatchNorm1d", "ReLU"]);
}
