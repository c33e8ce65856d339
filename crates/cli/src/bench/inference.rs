//! `normlab bench --inference`: eval-mode forward passes of the suite
//! networks (see `suite.rs`) at a few batch sizes, as built (batch norm
//! fused with the layers around it) and with every batch norm folded into
//! the convolution or linear layer before it
//! (`Sequential::fold_batch_norms`, then the fusion pass again:
//! `Sequential::fuse`).
//!
//! Each configuration is timed as a user predicts with it,
//! `net.predict(&x)` (the eval-mode forward, large batches in cache-sized
//! chunks) on a fixed batch, after warm-up calls; the two variants of a network take
//! turns (`rounds` alternations), so a stretch of noise from other
//! processes falls on both, and the median over all calls is reported as
//! the latency, `batch / latency` as images per second.
//!
//! With an ONNX directory, the exact networks timed are also written there
//! as `<network>.onnx` and `<network>-folded.onnx`, so that
//! `bench/compare/inference.py` runs ONNX Runtime on the same weights.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use normlab::models::Sequential;
use normlab::rng;
use normlab::tensor::Tensor;
use normlab::{Error, Result};

use super::{random, suite};

/// The batch sizes timed by default.
pub const BATCHES: [usize; 3] = [1, 32, 256];
/// The largest batch accepted: the widest layer of vgg-bn holds 100 KB per
/// image, so this keeps a run under half a gigabyte of activations.
pub const MAX_BATCH: usize = 4096;

/// One network, one variant, one batch size.
#[derive(Clone, Debug, Serialize)]
pub struct InferenceTiming {
    /// The network's name (`bn-lenet`, `vgg-bn`, `resnet-bn`, `mlp-bn`).
    pub network: String,
    /// `unfolded` (batch norm kept, fused with its neighbours) or `folded`.
    pub variant: String,
    /// Images per forward pass.
    pub batch: usize,
    /// One image's shape.
    pub input: Vec<usize>,
    /// The rayon pool's threads.
    pub threads: usize,
    /// The instruction set the kernels ran with.
    pub isa: String,
    /// Layers as they run (a fused block counts once).
    pub layers: usize,
    /// Batch norms folded away (0 for `unfolded`).
    pub batch_norms_folded: usize,
    /// Median milliseconds per forward pass.
    pub latency_ms: f64,
    /// The fastest forward pass, in milliseconds.
    pub min_ms: f64,
    /// `batch / latency`.
    pub images_per_sec: f64,
    /// Timed forward passes.
    pub repeats: usize,
    /// Largest `|folded - unfolded|` over the logits of the timed batch
    /// (0 for `unfolded`).
    pub max_abs_diff: f64,
}

/// Seconds of each call of `f`, for ~`budget` seconds (at least `min` calls).
fn samples(budget: f64, min: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < min || (start.elapsed().as_secs_f64() < budget && times.len() < 100_000) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(times)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One network in both variants (see [`variants`]).
struct Variants {
    unfolded: Sequential<f32>,
    folded: Sequential<f32>,
    /// Batch norms folded.
    count: usize,
    /// One image's shape.
    input: Vec<usize>,
}

/// A network of the suite as built by default (fused), and the same
/// weights with batch norm folded, both in eval mode; the number of batch
/// norms folded. With `onnx_dir`, both are exported there first.
fn variants(name: &str, onnx_dir: Option<&Path>) -> Result<Variants> {
    // the same seed draws the same weights: build fuses after drawing them
    let (mut unfolded, _, input, _) = suite::network(name)?;
    unfolded.build(&input, &mut rng::seeded(0))?;
    unfolded.eval();
    let (plain, _, _, _) = suite::network(name)?;
    let mut folded = plain.fusion(false);
    folded.build(&input, &mut rng::seeded(0))?;
    folded.eval();
    if let Some(dir) = onnx_dir {
        write_onnx(&folded, name, &dir.join(format!("{name}.onnx")), 0)?;
    }
    let count = folded.fold_batch_norms()?;
    if let Some(dir) = onnx_dir {
        write_onnx(&folded, name, &dir.join(format!("{name}-folded.onnx")), count)?;
    }
    folded.fuse()?;
    Ok(Variants { unfolded, folded, count, input })
}

fn write_onnx(net: &Sequential<f32>, name: &str, path: &Path, folded: usize) -> Result<()> {
    let metadata = [("normlab.model", name.to_string()), ("normlab.folded", folded.to_string())];
    let bytes = crate::onnx::export(net, name, &metadata)?;
    normlab::fsutil::write_atomic(path, &bytes)
}

/// Times every network of `networks` at every batch of `batches`, both
/// variants taking turns `rounds` times for `budget` seconds in all per
/// configuration.
pub fn run(
    networks: &[String],
    batches: &[usize],
    budget: f64,
    rounds: usize,
    onnx_dir: Option<&Path>,
) -> Result<Vec<InferenceTiming>> {
    if let Some(dir) = onnx_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let threads = rayon::current_num_threads();
    let isa = normlab::isa::active().name().to_string();
    let mut out = Vec::new();
    for name in networks {
        let Variants { mut unfolded, mut folded, count, input } = variants(name, onnx_dir)?;
        for &batch in batches {
            let mut shape = vec![batch];
            shape.extend(&input);
            let x: Tensor<f32> = random(&shape, &mut rng::seeded(1));
            let reference = unfolded.predict(&x)?.clone();
            let diff = reference
                .data()
                .iter()
                .zip(folded.predict(&x)?.data())
                .map(|(a, b)| f64::from((a - b).abs()))
                .fold(0.0f64, f64::max);
            // warm-up: caches, buffers sized for this batch, the pool awake
            for net in [&mut unfolded, &mut folded] {
                samples(budget / 10.0, 3, || net.predict(&x).map(|_| ()))?;
            }
            let mut times = [Vec::new(), Vec::new()];
            for _ in 0..rounds {
                for (net, t) in [&mut unfolded, &mut folded].into_iter().zip(times.iter_mut()) {
                    t.extend(samples(budget / (2 * rounds) as f64, 3, || net.predict(&x).map(|_| ()))?);
                }
            }
            let [t_unfolded, t_folded] = times;
            for (variant, net, t, folds, diff) in
                [("unfolded", &unfolded, t_unfolded, 0, 0.0), ("folded", &folded, t_folded, count, diff)]
            {
                let min = t.iter().copied().fold(f64::INFINITY, f64::min);
                let repeats = t.len();
                let secs = median(t);
                out.push(InferenceTiming {
                    network: name.clone(),
                    variant: variant.into(),
                    batch,
                    input: input.clone(),
                    threads,
                    isa: isa.clone(),
                    layers: net.len(),
                    batch_norms_folded: folds,
                    latency_ms: secs * 1e3,
                    min_ms: min * 1e3,
                    images_per_sec: batch as f64 / secs,
                    repeats,
                    max_abs_diff: diff,
                });
            }
        }
    }
    Ok(out)
}
