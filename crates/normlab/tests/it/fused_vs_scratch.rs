//! The fused batch norm equals the chapter's scratch one to 1e-5 (relative
//! to max(1, |value|)), on random inputs and on hard ones: a mean of 1e4
//! with a standard deviation of 1e-2, constant channels, and channels of
//! more than a million values.

use normlab::layers::{BatchNorm, BatchNormConfig, BnImpl, Layer, Mode, StateMut};
use normlab::{rng, Tensor};
use rand::Rng as _;

const TOL: f64 = 1e-5;

fn close(what: &str, a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f64;
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        assert!(x.is_finite() && y.is_finite(), "{what}[{i}]: {x} vs {y}");
        worst = worst.max((x as f64 - y as f64).abs() / (y as f64).abs().max(1.0));
    }
    assert!(worst <= TOL, "{what}: fused and scratch differ by {worst:.2e}");
    eprintln!("  {what:<50} {worst:.1e}");
    worst
}

fn state(layer: &mut BatchNorm<f32>) -> Vec<(String, Vec<f32>)> {
    layer
        .state_mut()
        .into_iter()
        .filter_map(|(n, s)| match s {
            StateMut::Param { value, grad } => {
                Some(vec![(n.to_string(), value.data().to_vec()), (format!("{n}.grad"), grad.data().to_vec())])
            }
            StateMut::Buffer(b) => Some(vec![(n.to_string(), b.data().to_vec())]),
            StateMut::Count(_) => None,
        })
        .flatten()
        .collect()
}

/// Runs both implementations on x (twice in training mode, then eval) and compares everything.
fn compare(name: &str, x: &Tensor<f32>) {
    let mut rng = rng::seeded(9);
    let dy = Tensor::from_vec(x.shape(), (0..x.numel()).map(|_| rng.gen::<f32>() - 0.5).collect()).unwrap();
    let mut layers: Vec<BatchNorm<f32>> = [BnImpl::Scratch, BnImpl::Fused]
        .into_iter()
        .map(|imp| {
            let mut l = BatchNorm::with_impl(BatchNormConfig::pytorch(), imp);
            l.build(&x.shape()[1..], &mut rng::seeded(0)).unwrap();
            // gamma and beta away from 1 and 0
            for (n, s) in l.state_mut() {
                if let StateMut::Param { value, .. } = s {
                    let v = if n == "weight" { 1.5 } else { -0.25 };
                    value.fill(v);
                }
            }
            l
        })
        .collect();
    for mode in [Mode::Train, Mode::Train, Mode::Eval] {
        let outs: Vec<(Tensor<f32>, Tensor<f32>)> = layers
            .iter_mut()
            .map(|l| {
                let y = l.forward(x, mode).unwrap().clone();
                let dx = l.backward(x, &dy, true).unwrap().clone();
                (y, dx)
            })
            .collect();
        close(&format!("{name} {mode:?} y"), outs[0].0.data(), outs[1].0.data());
        close(&format!("{name} {mode:?} dx"), outs[0].1.data(), outs[1].1.data());
        let (s0, s1) = (state(&mut layers[0]), state(&mut layers[1]));
        for ((n, a), (_, b)) in s0.iter().zip(&s1) {
            close(&format!("{name} {mode:?} {n}"), a, b);
        }
    }
}

fn tensor(shape: &[usize], f: impl Fn(usize, &mut rand_chacha::ChaCha8Rng) -> f32) -> Tensor<f32> {
    let mut rng = rng::seeded(4);
    let n = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|i| f(i, &mut rng)).collect()).unwrap()
}

#[test]
fn random_inputs() {
    compare("random (32, 6, 24, 24)", &tensor(&[32, 6, 24, 24], |_, r| r.gen::<f32>() * 4.0 - 1.0));
    compare("random (128, 120)", &tensor(&[128, 120], |_, r| r.gen::<f32>() * 4.0 - 1.0));
    compare("random (8, 3, 5)", &tensor(&[8, 3, 5], |_, r| r.gen::<f32>() * 4.0 - 1.0));
}

#[test]
fn mean_1e4_std_1e_minus_2() {
    let gauss = |r: &mut rand_chacha::ChaCha8Rng| {
        // Box-Muller
        let (u, v): (f64, f64) = (r.gen::<f64>().max(1e-12), r.gen());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    };
    compare("mean 1e4 std 1e-2 (16, 4, 12, 12)", &tensor(&[16, 4, 12, 12], |_, r| (1e4 + 1e-2 * gauss(r)) as f32));
    compare("mean 1e4 std 1e-2 (256, 10)", &tensor(&[256, 10], |_, r| (1e4 + 1e-2 * gauss(r)) as f32));
}

#[test]
fn constant_channels() {
    // every channel constant: variance 0, output beta, gradients finite
    compare("constant (8, 3, 6, 6)", &tensor(&[8, 3, 6, 6], |i, _| ((i / 36) % 3) as f32 * 7.0 - 3.0));
    compare("constant (16, 5)", &tensor(&[16, 5], |i, _| (i % 5) as f32 + 0.5));
}

#[test]
fn channels_of_a_million_values() {
    // 2 channels of 16 x 256 x 256 = 1,048,576 values each
    compare("(16, 2, 256, 256)", &tensor(&[16, 2, 256, 256], |_, r| r.gen::<f32>() * 2.0 + 3.0));
}

/// The fused BN + sigmoid + pooling block equals the three layers apart.
#[test]
fn fused_block_equals_the_layers_it_replaces() {
    use normlab::layers::{AvgPool2d, Sigmoid};
    use normlab::models::Sequential;
    let x = tensor(&[16, 6, 24, 24], |_, r| r.gen::<f32>() * 3.0 - 1.0);
    let build = |net: Sequential<f32>| {
        let mut net = net;
        net.build(&[6, 24, 24], &mut rng::seeded(0)).unwrap();
        net.set_input_grad(true);
        net
    };
    let mut apart = build(
        Sequential::new()
            .push(BatchNorm::with_impl(BatchNormConfig::pytorch(), BnImpl::Scratch))
            .push(Sigmoid::new())
            .push(AvgPool2d::new(2, 2)),
    );
    let mut block = build(
        Sequential::new()
            .push(BatchNorm::new(BatchNormConfig::pytorch()))
            .push(Sigmoid::new())
            .push(AvgPool2d::new(2, 2)),
    );
    assert_eq!(block.layers()[0].kind(), "BatchNorm2d+Sigmoid+AvgPool2d", "the model fused the three layers");
    assert_eq!(apart.state_names(), block.state_names(), "same PyTorch names");
    let dy = tensor(&[16, 6, 12, 12], |_, r| r.gen::<f32>() - 0.5);
    for mode in [Mode::Train, Mode::Eval] {
        apart.set_mode(mode);
        block.set_mode(mode);
        let ya = apart.forward(&x).unwrap().clone();
        let yb = block.forward(&x).unwrap().clone();
        close(&format!("block {mode:?} y"), yb.data(), ya.data());
        apart.backward(&x, &dy).unwrap();
        block.backward(&x, &dy).unwrap();
        close(&format!("block {mode:?} dx"), block.grad_input().data(), apart.grad_input().data());
    }
}
