//! Every instruction set computes what the portable code computes: layers
//! whose kernels are the same code compiled three ways give bitwise the
//! same values at every level this CPU has; whole BN-LeNet training steps,
//! where AVX2 and AVX-512 add kernels of their own (another summation
//! order), agree to 1e-5 and give the same bits on 1 and 2 threads.
//!
//! One test, because the level is chosen for the whole process
//! (`isa::set_cap`); a level this CPU lacks is reported as skipped.

use normlab::isa::{self, Isa};
use normlab::layers::{
    BatchNorm, BatchNormConfig, BnImpl, Conv2d, Layer, LayerNorm, LeakyReLU, Linear, MaxPool2d, Mode, ReLU, SiLU,
    Sigmoid, StateMut, Tanh, GELU,
};
use normlab::loss::CrossEntropy;
use normlab::models;
use normlab::optim::{Sgd, SgdConfig};
use normlab::{rng, Tensor};

fn values(shape: &[usize], seed: usize) -> Tensor<f32> {
    let n: usize = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 - 1001.0) / 400.0).collect())
        .unwrap()
}

fn bits(t: &Tensor<f32>) -> Vec<u32> {
    t.data().iter().map(|v| v.to_bits()).collect()
}

/// Forward (training, then prediction mode) and backward of a freshly built
/// layer: every output and parameter gradient as bits (the input gradient
/// empty where `need_dx` is false).
fn run_layer(mut layer: Box<dyn Layer<f32>>, shape: &[usize], need_dx: bool) -> Vec<Vec<u32>> {
    layer.build(&shape[1..], &mut rng::seeded(3)).unwrap();
    let x = values(shape, 1);
    let y = bits(layer.forward(&x, Mode::Train).unwrap());
    let dy = values(layer.output().shape(), 2);
    let dx = layer.backward(&x, &dy, need_dx).unwrap();
    let dx = if need_dx { bits(dx) } else { Vec::new() };
    let mut grads = Vec::new();
    for (_, state) in layer.state_mut() {
        if let StateMut::Param { grad, .. } = state {
            grads.extend(bits(grad));
        }
    }
    let y_eval = bits(layer.forward(&x, Mode::Eval).unwrap());
    vec![y, dx, grads, y_eval]
}

/// The layers whose kernels do not depend on the level.
fn same_code_layers() -> Vec<(String, Vec<Vec<u32>>)> {
    let bn = |imp| Box::new(BatchNorm::with_impl(BatchNormConfig::pytorch(), imp)) as Box<dyn Layer<f32>>;
    type Case = (&'static str, Box<dyn Layer<f32>>, Vec<usize>);
    // the input gradient of each case but the last: the last's is a kernel of
    // each level's own (see hand_written_kernels)
    let no_dx = "conv 3x3 8 -> 8, no dx";
    let cases: Vec<Case> = vec![
        ("sigmoid", Box::new(Sigmoid::new()), vec![64, 120]),
        ("relu", Box::new(ReLU::new()), vec![64, 120]),
        ("leaky relu", Box::new(LeakyReLU::new(0.01)), vec![64, 120]),
        ("tanh", Box::new(Tanh::new()), vec![64, 120]),
        ("silu", Box::new(SiLU::new()), vec![64, 120]),
        ("gelu", Box::new(GELU::new(false)), vec![64, 120]),
        ("gelu tanh", Box::new(GELU::new(true)), vec![64, 120]),
        ("bn fused (N,C)", bn(BnImpl::Fused), vec![32, 20]),
        ("bn fused (N,C,H,W)", bn(BnImpl::Fused), vec![8, 6, 10, 10]),
        ("bn fused large", bn(BnImpl::Fused), vec![16, 8, 24, 24]),
        ("bn scratch", bn(BnImpl::Scratch), vec![8, 6, 10, 10]),
        ("layer norm", Box::new(LayerNorm::new(&[50])), vec![4, 50]),
        // the direct kernels: tiles of other shapes at each level (5 and 6
        // channels: 4x2, 3x3 at AVX2, 6x3 at AVX-512 and portable), weight
        // gradients by taps (3 -> 5, 2 -> 6) and by channels (8 -> 8)
        ("conv 3x3", Box::new(Conv2d::new(5, 3)), vec![4, 3, 12, 12]),
        ("conv 3x3 2 -> 6", Box::new(Conv2d::new(6, 3)), vec![4, 2, 14, 20]),
        ("max pool 2x2", Box::new(MaxPool2d::new(2, 2)), vec![4, 3, 9, 10]),
        // the packed kernel at AVX2 and AVX-512, gemm at portable
        ("linear", Box::new(Linear::new(70)), vec![13, 784]),
        ("linear 100 -> 10", Box::new(Linear::new(10)), vec![37, 100]),
        (no_dx, Box::new(Conv2d::new(8, 3)), vec![3, 8, 12, 16]),
    ];
    cases.into_iter().map(|(name, layer, shape)| (name.to_string(), run_layer(layer, &shape, name != no_dx))).collect()
}

/// The kernels with a hand-written version per level: the sigmoid forms
/// (bitwise the portable ones, as their code claims), LeNet's second
/// convolution (5x5, 6 -> 16 channels, 12x12: the wide AVX-512 tile, the
/// AVX2 and AVX-512 input-gradient kernels, or im2col and col2im) and a
/// padded 3x3 one, whose values the caller compares to 1e-5, and padded
/// ones on small planes, whose values it compares to 1e-4 (their weight
/// gradients sum 2,000 products in another order).
fn hand_written_kernels() -> (Vec<u32>, Vec<f32>, Vec<f32>) {
    use normlab::kernels::sigmoid::{pooled_sigmoid_grad_f32, sigmoid_affine_f32, PooledPlane};
    let mut exact = Vec::new();
    let z = values(&[24 * 24 + 7], 7);
    let mut out = vec![0.0f32; z.numel()];
    sigmoid_affine_f32(z.data(), (0.3, 1.7, -0.4), &mut out);
    exact.extend(out.iter().map(|v| v.to_bits()));
    let (z, g) = (values(&[24 * 24], 8), values(&[12 * 12], 9));
    let (mut dh, mut spread) = (vec![0.0f32; 24 * 24], vec![0.0f32; 48]);
    let plane = PooledPlane { z: z.data(), g: g.data(), width: 24, coef: (0.3, 1.7, -0.4), mu: 0.25 };
    let (a, b) = pooled_sigmoid_grad_f32(&plane, &mut dh, &mut spread);
    exact.extend(dh.iter().map(|v| v.to_bits()));
    exact.extend([a.to_bits() as u32, (a.to_bits() >> 32) as u32, b.to_bits() as u32, (b.to_bits() >> 32) as u32]);

    // and a padded 3x3 one, 8 -> 16 channels at 14x14 (AVX-512: the
    // padded-plane kernels for the forward pass and the input gradient),
    // and padded ones on small planes (7x7, 4x4, 8x8; 3x3 and 5x5 kernels:
    // the padded-plane kernels with the tiles for small planes, and the
    // weight gradient over groups of 32 images, so 40 images make a whole
    // group and a part of one), and strided ones (the phase planes)
    let (mut close, mut long_sums) = (Vec::new(), Vec::new());
    for (mut conv, input, images) in [
        (Conv2d::new(16, 5), [6, 12, 12], 8),
        (Conv2d::new(16, 3).padding(1), [8, 14, 14], 8),
        (Conv2d::new(64, 3).padding(1).bias(false), [32, 7, 7], 40),
        (Conv2d::new(16, 5).padding(2), [33, 4, 4], 40),
        (Conv2d::new(33, 3).padding(1), [16, 8, 8], 40),
        // stride 2: ResNet's downsampling, on phase planes (3x3 and the 1x1
        // shortcut); their 8x8 outputs are small planes too
        (Conv2d::new(32, 3).stride(2).padding(1).bias(false), [16, 15, 16], 40),
        (Conv2d::new(32, 1).stride(2).bias(false), [16, 16, 16], 40),
    ] {
        conv.build(&input, &mut rng::seeded(4)).unwrap();
        let small = images > 8;
        let close = if small { &mut long_sums } else { &mut close };
        // on small planes, inputs and gradients >= 0 (as after a ReLU): the
        // weight gradient's 2,000 signed products would cancel to values
        // 1e-4 of their size, where f32 rounding in another order shows
        let magnitude = |mut t: Tensor<f32>| {
            if small {
                t.data_mut().iter_mut().for_each(|v| *v = v.abs());
            }
            t
        };
        let x = magnitude(values(&[images, input[0], input[1], input[2]], 10));
        close.extend_from_slice(conv.forward(&x, Mode::Train).unwrap().data());
        let dy = magnitude(values(conv.output().shape(), 11));
        close.extend_from_slice(conv.backward(&x, &dy, true).unwrap().data());
        for (_, state) in conv.state_mut() {
            if let StateMut::Param { grad, .. } = state {
                close.extend_from_slice(grad.data());
            }
        }
    }
    (exact, close, long_sums)
}

/// Two SGD steps of BN-LeNet on a batch of 32: the losses and the weights.
fn lenet_steps(threads: usize) -> (Vec<f64>, Vec<f32>) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let mut net = models::bn_lenet::<f32>(&mut rng::seeded(0)).unwrap();
        let mut sgd = Sgd::new(SgdConfig::new(0.1)).unwrap();
        let mut ce = CrossEntropy::new();
        let x = values(&[32, 1, 28, 28], 5);
        let labels: Vec<usize> = (0..32).map(|i| i % 10).collect();
        let mut losses = Vec::new();
        for _ in 0..2 {
            let (loss, _) = ce.forward(net.forward(&x).unwrap(), &labels).unwrap();
            net.backward(&x, ce.grad()).unwrap();
            sgd.step(&mut net);
            losses.push(loss);
        }
        let mut weights = Vec::new();
        for (_, state) in net.state_mut() {
            if let StateMut::Param { value, .. } | StateMut::Buffer(value) = state {
                weights.extend_from_slice(value.data());
            }
        }
        (losses, weights)
    })
}

#[test]
fn every_level_computes_what_the_portable_code_computes() {
    let detected = isa::detected();
    assert_eq!(isa::set_cap(Isa::Portable), Isa::Portable);
    let portable = same_code_layers();
    let (portable_kernels, portable_conv, portable_long) = hand_written_kernels();
    let (portable_losses, portable_weights) = lenet_steps(1);
    let mut ran = 0;
    for level in [Isa::Avx2, Isa::Avx512] {
        if level > detected {
            println!("skipped {level}: this CPU's best level is {detected}");
            continue;
        }
        assert_eq!(isa::set_cap(level), level);
        for ((name, got), (_, want)) in same_code_layers().iter().zip(&portable) {
            let passes = ["forward", "input gradient", "parameter gradients", "eval forward"];
            for (pass, (g, w)) in passes.iter().zip(got.iter().zip(want)) {
                assert!(g == w, "{name} {pass}: {level} differs from the portable code");
            }
        }
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let (kernels, conv, long_sums) = one.install(hand_written_kernels);
        assert!(kernels == portable_kernels, "the sigmoid kernels at {level} differ from the portable code");
        assert_eq!(conv.len(), portable_conv.len());
        for (k, (a, b)) in conv.iter().zip(&portable_conv).enumerate() {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "convolution value {k} at {level}: {a} vs {b}");
        }
        assert_eq!(long_sums.len(), portable_long.len());
        for (k, (a, b)) in long_sums.iter().zip(&portable_long).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "small-plane convolution value {k} at {level}: {a} vs {b}"
            );
        }
        let two = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let (_, conv_two, long_two) = two.install(hand_written_kernels);
        let same_bits = |a: &[f32], b: &[f32]| a.iter().map(|v| v.to_bits()).eq(b.iter().map(|v| v.to_bits()));
        assert!(
            same_bits(&conv, &conv_two) && same_bits(&long_sums, &long_two),
            "convolutions at {level}: 1 and 2 threads differ"
        );
        let (losses, weights) = lenet_steps(1);
        for (a, b) in losses.iter().zip(&portable_losses) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "BN-LeNet loss at {level}: {a} vs portable {b}");
        }
        for (a, b) in weights.iter().zip(&portable_weights) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "BN-LeNet weight at {level}: {a} vs portable {b}");
        }
        let two = lenet_steps(2);
        assert!(two.0 == losses && two.1 == weights, "BN-LeNet at {level}: 1 and 2 threads differ");
        println!(
            "{level}: bitwise the portable code's layers; BN-LeNet and the convolutions close to it, 1 = 2 threads"
        );
        ran += 1;
    }
    isa::set_cap(Isa::Portable);
    let two = lenet_steps(2);
    isa::set_cap(Isa::Avx512);
    assert!(two.0 == portable_losses && two.1 == portable_weights, "portable: 1 and 2 threads differ");
    println!("checked {ran} level(s) besides portable");
}
