//! Per-layer forward/backward time (a profiling aid) of a built-in model
//! (default BNLeNet) or of a model file at batch 128, or of a suite network
//! at its own batch:
//! `cargo run --release -p normlab-dev --example layer_times -- model.toml`
//! (or `-- vgg-bn`).
//! With one thread (RAYON_NUM_THREADS=1) it counts the thread's CPU time,
//! which a busy machine disturbs less than wall time.
use normlab::loss::CrossEntropy;
use normlab::models::{self, ModelKind, ModelSpec};
use normlab::threads::keep_pool_awake;
use normlab::{rng, Tensor};
use normlab_cli::bench::suite;
use normlab_dev::probe_clock as now;

fn main() {
    // on a pool thread, as `normlab` runs its commands (see cli/mod.rs)
    rayon::ThreadPoolBuilder::new().build().unwrap().install(profile);
}

fn profile() {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "bn-lenet".into());
    let (mut net, shape) = if arg.ends_with(".toml") {
        let spec = ModelSpec::from_toml_file(std::path::Path::new(&arg), Some(&[1, 28, 28])).unwrap();
        (spec.build::<f32>(Some(&[1, 28, 28]), &mut rng::seeded(0)).unwrap(), vec![128, 1, 28, 28])
    } else if suite::NETWORKS.contains(&arg.as_str()) {
        let (mut net, batch, input, _) = suite::network(&arg).unwrap();
        net.build(&input, &mut rng::seeded(0)).unwrap();
        (net, [vec![batch], input].concat())
    } else {
        (models::build::<f32>(ModelKind::parse(&arg).unwrap(), &mut rng::seeded(0)).unwrap(), vec![128, 1, 28, 28])
    };
    let len: usize = shape.iter().product();
    let x = Tensor::from_vec(&shape, (0..len).map(|i| ((i * 7919) % 256) as f32 / 255.0).collect()).unwrap();
    let labels: Vec<usize> = (0..shape[0]).map(|i| i % 10).collect();
    let mut ce = CrossEntropy::new();
    let n = net.len();
    let (mut fwd, mut bwd) = (vec![0.0; n], vec![0.0; n]);
    let iters: usize = std::env::var("ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    for it in 0..iters + 20 {
        // as the trainer runs a step: the pool kept awake throughout
        keep_pool_awake(|| step(&mut net, &x, &labels, &mut ce, it >= 20, &mut fwd, &mut bwd));
    }
    let mut total = 0.0;
    for (i, l) in net.layers().iter().enumerate() {
        let (f, b) = (fwd[i] / iters as f64 * 1e3, bwd[i] / iters as f64 * 1e3);
        total += f + b;
        println!("{i:>2} {:<24} fwd {f:7.3} ms  bwd {b:7.3} ms", l.kind());
    }
    println!("total {total:.3} ms per step -> {:.2} s per 469-batch epoch", total * 469.0 / 1e3);
}

/// One forward and backward pass, layer by layer, adding each layer's time
/// to `fwd` and `bwd` when `timed`.
fn step(
    net: &mut normlab::models::Sequential<f32>,
    x: &Tensor<f32>,
    labels: &[usize],
    ce: &mut CrossEntropy,
    timed: bool,
    fwd: &mut [f64],
    bwd: &mut [f64],
) {
    let n = net.len();
    {
        let layers = net.layers_mut();
        for i in 0..n {
            let (done, rest) = layers.split_at_mut(i);
            let input = if i == 0 { x } else { done[i - 1].output() };
            let t = now();
            rest[0].forward(input, normlab::layers::Mode::Train).unwrap();
            if timed {
                fwd[i] += now() - t;
            }
        }
        ce.forward(layers[n - 1].output(), labels).unwrap();
        for i in (0..n).rev() {
            let (done, rest) = layers.split_at_mut(i);
            let (layer, after) = rest.split_first_mut().unwrap();
            let input = if i == 0 { x } else { done[i - 1].output() };
            let dy = if i + 1 == n { ce.grad() } else { after[0].grad_input() };
            let t = now();
            layer.backward(input, dy, i > 0).unwrap();
            if timed {
                bwd[i] += now() - t;
            }
        }
    }
}
