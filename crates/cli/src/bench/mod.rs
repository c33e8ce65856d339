//! Measurements behind `normlab bench`: the machine's own limits (an FMA
//! loop and a memory triad), the kernels at the chapter's shapes, and the
//! BNLeNet training step, each as a fraction of the measured limit.
//!
//! Every figure is the median of repeated runs after a warm-up, on the
//! rayon pool the caller configured (`--threads`).

pub mod inference;
pub mod machine;
pub mod suite;

use std::time::Instant;

use serde::Serialize;

use normlab::layers::{BatchNorm, BatchNormConfig, BnImpl, Conv2d, Layer, LayerNorm, Linear, Mode};
use normlab::loss::CrossEntropy;
use normlab::models::{self, ModelKind};
use normlab::optim::{Sgd, SgdConfig};
use normlab::rng::{self, Rng};
use normlab::tensor::Tensor;
use normlab::Result;

/// One timed kernel, in the JSON format shared with the PyTorch scripts in
/// `bench/compare/`.
#[derive(Clone, Debug, Serialize)]
pub struct KernelTiming {
    pub kernel: String,
    #[serde(rename = "impl")]
    pub implementation: String,
    pub pass: String,
    pub shape: Vec<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_channels: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_features: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub ms: f64,
    pub gbs: Option<f64>,
    pub gflops: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub examples_per_sec: Option<f64>,
    /// GB/s over the measured triad bandwidth, or GFLOP/s over the FMA peak.
    pub fraction_of_limit: Option<f64>,
}

/// Median seconds of `f` over enough repetitions to fill ~`budget` seconds
/// (at least 5), after 2 warm-up calls.
pub fn time_median(budget: f64, mut f: impl FnMut()) -> f64 {
    f();
    f();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 5 || (start.elapsed().as_secs_f64() < budget && times.len() < 10_000) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

pub(crate) fn random(shape: &[usize], rng: &mut Rng) -> Tensor<f32> {
    use rand::Rng as _;
    let n = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|_| rng.gen::<f32>() * 2.0 - 1.0).collect()).expect("sizes match")
}

/// Times forward and forward+backward of a built layer on `x`.
fn time_layer(layer: &mut dyn Layer<f32>, x: &Tensor<f32>, need_dx: bool, budget: f64) -> Result<(f64, f64)> {
    let mut rng = rng::seeded(1);
    let y_shape = layer.forward(x, Mode::Train)?.shape().to_vec();
    let dy = random(&y_shape, &mut rng);
    let fwd = time_median(budget, || {
        layer.forward(x, Mode::Train).expect("shape checked above");
    });
    let both = time_median(budget, || {
        layer.forward(x, Mode::Train).expect("shape checked above");
        layer.backward(x, &dy, need_dx).expect("shape checked above");
    });
    Ok((fwd, both))
}

pub const BN_SHAPES: [&[usize]; 6] =
    [&[128, 6, 24, 24], &[128, 16, 8, 8], &[128, 120], &[128, 84], &[64, 64, 56, 56], &[32, 256, 14, 14]];
pub const LN_SHAPES: [&[usize]; 2] = [&[4096, 768], &[128, 120]];

/// Every kernel timing; `limits` turns them into fractions.
pub fn kernels(limits: &machine::Limits, budget: f64) -> Result<Vec<KernelTiming>> {
    let mut out = Vec::new();
    let mut rng = rng::seeded(0);
    let entry = |kernel: &str, imp: &str, pass: &str, shape: &[usize], secs: f64| KernelTiming {
        kernel: kernel.into(),
        implementation: imp.into(),
        pass: pass.into(),
        shape: shape.to_vec(),
        out_channels: None,
        out_features: None,
        model: None,
        ms: secs * 1e3,
        gbs: None,
        gflops: None,
        examples_per_sec: None,
        fraction_of_limit: None,
    };
    let with_bytes = |mut e: KernelTiming, bytes: f64| {
        let gbs = bytes / (e.ms / 1e3) / 1e9;
        e.gbs = Some(gbs);
        e.fraction_of_limit = Some(gbs / limits.triad_gbs);
        e
    };
    let with_flops = |mut e: KernelTiming, flops: f64| {
        let gf = flops / (e.ms / 1e3) / 1e9;
        e.gflops = Some(gf);
        e.fraction_of_limit = Some(gf / limits.fma_gflops);
        e
    };

    for shape in BN_SHAPES {
        let x = random(shape, &mut rng);
        let bytes = 4.0 * x.numel() as f64;
        for (imp, name) in [(BnImpl::Fused, "fused"), (BnImpl::Scratch, "scratch")] {
            let mut bn = BatchNorm::with_impl(BatchNormConfig::pytorch(), imp);
            bn.build(&shape[1..], &mut rng)?;
            let (f, b) = time_layer(&mut bn, &x, true, budget)?;
            // ideal traffic: forward reads x and writes y; backward reads x, dy and writes dx
            out.push(with_bytes(entry("batch_norm", name, "forward", shape, f), 2.0 * bytes));
            out.push(with_bytes(entry("batch_norm", name, "forward_backward", shape, b), 5.0 * bytes));
        }
    }
    for shape in LN_SHAPES {
        let x = random(shape, &mut rng);
        let mut ln = LayerNorm::trailing(1);
        ln.build(&shape[1..], &mut rng)?;
        let (_, b) = time_layer(&mut ln, &x, true, budget)?;
        out.push(with_bytes(
            entry("layer_norm", "normlab", "forward_backward", shape, b),
            5.0 * 4.0 * x.numel() as f64,
        ));
    }
    // BNLeNet's convolutions; the first needs no input gradient in training
    for (shape, cout, need_dx) in [([128usize, 1, 28, 28], 6usize, false), ([128, 6, 12, 12], 16, true)] {
        let x = random(&shape, &mut rng);
        let mut conv = Conv2d::new(cout, 5);
        conv.build(&shape[1..], &mut rng)?;
        let (f, b) = time_layer(&mut conv, &x, need_dx, budget)?;
        let macs = (shape[0] * cout * (shape[2] - 4) * (shape[3] - 4) * shape[1] * 25) as f64;
        let passes = if need_dx { 3.0 } else { 2.0 };
        let mut e = with_flops(entry("conv2d", "normlab", "forward", &shape, f), 2.0 * macs);
        e.out_channels = Some(cout);
        out.push(e);
        let mut e = with_flops(entry("conv2d", "normlab", "forward_backward", &shape, b), 2.0 * macs * passes);
        e.out_channels = Some(cout);
        out.push(e);
    }
    for (fin, fout) in [(256usize, 120usize), (120, 84), (84, 10)] {
        let shape = [128, fin];
        let x = random(&shape, &mut rng);
        let mut lin = Linear::new(fout);
        lin.build(&[fin], &mut rng)?;
        let (f, b) = time_layer(&mut lin, &x, true, budget)?;
        let macs = (128 * fin * fout) as f64;
        let mut e = with_flops(entry("linear", "normlab", "forward", &shape, f), 2.0 * macs);
        e.out_features = Some(fout);
        out.push(e);
        let mut e = with_flops(entry("linear", "normlab", "forward_backward", &shape, b), 6.0 * macs);
        e.out_features = Some(fout);
        out.push(e);
    }
    for kind in [ModelKind::BnLenet, ModelKind::BnLenetScratch] {
        let secs = train_step_seconds(kind, budget)?;
        let mut e = entry("train_step", "normlab", "forward_backward", &[128, 1, 28, 28], secs);
        e.model = Some(kind.name().into());
        e.examples_per_sec = Some(128.0 / secs);
        // about 1.5 MFLOP per image per step (forward 0.28 M multiply-adds, backward twice that)
        e = with_flops(e, 2.0 * 3.0 * 0.2835e6 * 128.0);
        e.examples_per_sec = Some(128.0 / secs);
        out.push(e);
    }
    Ok(out)
}

/// Median wall time of one SGD step at batch 128 on random images.
pub fn train_step_seconds(kind: ModelKind, budget: f64) -> Result<f64> {
    let mut rng = rng::seeded(0);
    let mut net = models::build::<f32>(kind, &mut rng)?;
    let x = random(&[128, 1, 28, 28], &mut rng).cast::<f32>();
    let x = Tensor::from_vec(x.shape(), x.data().iter().map(|v| v.abs()).collect())?;
    let labels: Vec<usize> = (0..128).map(|i| i % 10).collect();
    let mut loss = CrossEntropy::new();
    let mut sgd = Sgd::new(SgdConfig::new(0.01))?;
    // as the trainer runs a step: the pool kept awake throughout
    Ok(time_median(budget, || {
        normlab::threads::keep_pool_awake(|| {
            let logits = net.forward(&x).expect("fixed shapes");
            loss.forward(logits, &labels).expect("fixed shapes");
            net.backward(&x, loss.grad()).expect("fixed shapes");
            sgd.step(&mut net);
        })
    }))
}
