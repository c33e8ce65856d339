//! Criterion benchmarks of the kernels at the chapter's shapes:
//! `cargo bench --bench kernels`. `normlab bench` prints the same kernels
//! with the machine's limits beside them.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use normlab::layers::{BatchNorm, BatchNormConfig, BnImpl, Conv2d, Layer, LayerNorm, Mode};
use normlab::loss::CrossEntropy;
use normlab::models::ModelKind;
use normlab::optim::{Sgd, SgdConfig};
use normlab::{rng, Tensor};

/// The shapes `normlab bench` times (normlab-cli's `bench::BN_SHAPES` and
/// `LN_SHAPES`): LeNet's four BN layers and two large ones; LayerNorm at a
/// transformer's and at LeNet's width.
const BN_SHAPES: [&[usize]; 6] =
    [&[128, 6, 24, 24], &[128, 16, 8, 8], &[128, 120], &[128, 84], &[64, 64, 56, 56], &[32, 256, 14, 14]];
const LN_SHAPES: [&[usize]; 2] = [&[4096, 768], &[128, 120]];

fn input(shape: &[usize]) -> Tensor<f32> {
    let n: usize = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect()).unwrap()
}

fn batch_norm(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_norm_forward_backward");
    for shape in BN_SHAPES {
        let x = input(shape);
        group.throughput(Throughput::Bytes(5 * 4 * x.numel() as u64));
        for imp in [BnImpl::Fused, BnImpl::Scratch] {
            let mut bn = BatchNorm::with_impl(BatchNormConfig::pytorch(), imp);
            bn.build(&shape[1..], &mut rng::seeded(0)).unwrap();
            let dy = x.clone();
            group.bench_with_input(BenchmarkId::new(format!("{imp:?}"), format!("{shape:?}")), &x, |b, x| {
                b.iter(|| {
                    bn.forward(x, Mode::Train).unwrap();
                    bn.backward(x, &dy, true).unwrap();
                })
            });
        }
    }
    group.finish();
}

fn layer_norm(c: &mut Criterion) {
    let mut group = c.benchmark_group("layer_norm_forward_backward");
    for shape in LN_SHAPES {
        let x = input(shape);
        let mut ln = LayerNorm::trailing(1);
        ln.build(&shape[1..], &mut rng::seeded(0)).unwrap();
        let dy = x.clone();
        group.throughput(Throughput::Bytes(5 * 4 * x.numel() as u64));
        group.bench_function(format!("{shape:?}"), |b| {
            b.iter(|| {
                ln.forward(&x, Mode::Train).unwrap();
                ln.backward(&x, &dy, true).unwrap();
            })
        });
    }
    group.finish();
}

fn convolutions(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv2d_forward_backward");
    for (shape, cout, need_dx) in [([128usize, 1, 28, 28], 6usize, false), ([128, 6, 12, 12], 16, true)] {
        let x = input(&shape);
        let mut conv = Conv2d::new(cout, 5);
        conv.build(&shape[1..], &mut rng::seeded(0)).unwrap();
        let dy = conv.forward(&x, Mode::Train).unwrap().clone();
        group.bench_function(format!("{shape:?}->{cout}"), |b| {
            b.iter(|| {
                conv.forward(&x, Mode::Train).unwrap();
                conv.backward(&x, &dy, need_dx).unwrap();
            })
        });
    }
    group.finish();
}

fn train_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("bnlenet_train_step");
    group.throughput(Throughput::Elements(128));
    for kind in [ModelKind::BnLenet, ModelKind::BnLenetScratch] {
        let mut net = normlab::models::build::<f32>(kind, &mut rng::seeded(0)).unwrap();
        let x =
            Tensor::from_vec(&[128, 1, 28, 28], input(&[128, 784]).data().iter().map(|v| v.abs()).collect()).unwrap();
        let labels: Vec<usize> = (0..128).map(|i| i % 10).collect();
        let mut loss = CrossEntropy::new();
        let mut sgd = Sgd::new(SgdConfig::new(0.01)).unwrap();
        group.bench_function(kind.name(), |b| {
            b.iter(|| {
                let logits = net.forward(&x).unwrap();
                loss.forward(logits, &labels).unwrap();
                net.backward(&x, loss.grad()).unwrap();
                sgd.step(&mut net);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, batch_norm, layer_norm, convolutions, train_step);
criterion_main!(benches);
