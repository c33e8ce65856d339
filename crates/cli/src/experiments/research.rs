//! Shared pieces of the experiments on the chapter's exercise 7 ("other
//! normalizing transforms": `pit`, `whitening`, `block-whitening`,
//! `structured`, `sparsify`): BN-LeNet with the normalization of each
//! setting in place of BN, built layer by layer (the layers are not in the
//! model-file format), and trained step by step by [`super::steps`].

use std::time::Instant;

use normlab::data::Split;
use normlab::layers::{AvgPool2d, BatchNorm, BatchNormConfig, Conv2d, Flatten, Init, Layer, Linear, Sigmoid};
use normlab::models::{Sequential, INPUT_SHAPE};
use normlab::rng::{self, Rng};
use normlab::tensor::Tensor;
use normlab::train::{evaluate, fill_batch};
use normlab::Result;

use super::report::Col;
use super::runner::{restore_net_buffers, save_net_buffers, Run, Runs, Status};
use super::steps::{self, StepHooks, StepPlan};
use super::Context;

/// LeNet's four normalized stages: name and width (channels or features).
pub const STAGES: [(&str, usize); 4] = [("conv1", 6), ("conv2", 16), ("fc1", 120), ("fc2", 84)];

/// The layers a setting puts at a stage (given its index into [`STAGES`]).
pub type Insert = dyn Fn(usize) -> Result<Vec<Box<dyn Layer<f32>>>>;

/// A network of the experiment: what goes before each sigmoid (in place of
/// BN) and after it, and how it trains.
pub struct NetSetting {
    pub label: String,
    pub norm: Box<Insert>,
    pub after_activation: Option<Box<Insert>>,
    pub plan: StepPlan,
}

impl NetSetting {
    /// `norm` before each sigmoid, batch 128 and lr 0.1 (the chapter's recipe).
    pub fn new(label: impl Into<String>, norm: Box<Insert>) -> Self {
        NetSetting { label: label.into(), norm, after_activation: None, plan: StepPlan { batch: 128, lr: 0.1 } }
    }
    pub fn plan(mut self, batch: usize, lr: f64) -> Self {
        self.plan = StepPlan { batch, lr };
        self
    }
    pub fn after_activation(mut self, layers: Box<Insert>) -> Self {
        self.after_activation = Some(layers);
        self
    }
}

/// The chapter's BN (PyTorch's defaults) at every stage.
pub fn batch_norm() -> Box<Insert> {
    Box::new(|_| Ok(vec![Box::new(BatchNorm::new(BatchNormConfig::pytorch())) as Box<dyn Layer<f32>>]))
}

/// A built network, its shuffling stream, and for each stage the index of
/// the layer that produces the normalization's input (the convolution or
/// linear layer).
pub struct Net {
    pub net: Sequential<f32>,
    pub shuffle: Rng,
    pub affine_at: [usize; 4],
}

/// The chapter's LeNet (sigmoid, average pooling, Xavier-uniform weights,
/// biases kept) with `setting`'s layers at each stage, built for seed `seed`.
pub fn lenet(setting: &NetSetting, seed: u64) -> Result<Net> {
    let mut net = Sequential::new().fusion(false);
    let mut affine_at = [0; 4];
    let mut stage = |net: &mut Sequential<f32>, k: usize, affine: Box<dyn Layer<f32>>| -> Result<()> {
        net.push_boxed(affine);
        affine_at[k] = net.len() - 1;
        for l in (setting.norm)(k)? {
            net.push_boxed(l);
        }
        net.push_boxed(Box::new(Sigmoid::new()));
        if let Some(after) = &setting.after_activation {
            for l in after(k)? {
                net.push_boxed(l);
            }
        }
        Ok(())
    };
    for (k, &(_, width)) in STAGES.iter().enumerate().take(2) {
        stage(&mut net, k, Box::new(Conv2d::new(width, 5).init(Init::XavierUniform)))?;
        net.push_boxed(Box::new(AvgPool2d::new(2, 2)));
    }
    net.push_boxed(Box::new(Flatten::new()));
    for (k, &(_, width)) in STAGES.iter().enumerate().skip(2) {
        stage(&mut net, k, Box::new(Linear::new(width).init(Init::XavierUniform)))?;
    }
    net.push_boxed(Box::new(Linear::new(10).init(Init::XavierUniform)));
    let mut init = rng::seeded(seed);
    net.build(&INPUT_SHAPE, &mut init)?;
    Ok(Net { net, shuffle: rng::fork(&mut init), affine_at })
}

/// Validation after each pass; nothing between steps.
struct Validate<'a> {
    ctx: &'a Context,
}

impl StepHooks for Validate<'_> {
    fn after_update(&mut self, _: &mut Sequential<f32>, _: usize, _: &Tensor<f32>, _: &[usize]) -> Result<()> {
        Ok(())
    }
    fn end_of_pass(&mut self, net: &mut Sequential<f32>, _step: usize) -> Result<(f64, f64)> {
        let e = evaluate(net, &self.ctx.val, 500, None)?;
        Ok((e.loss, e.accuracy))
    }
}

/// Trains every setting for every seed; after each run that trained,
/// `finish(setting, net, run)` may measure the network and add values to
/// the run.
pub fn train_all(
    ctx: &Context,
    settings: &[NetSetting],
    finish: &mut dyn FnMut(usize, &mut Net, &mut Run) -> Result<()>,
) -> Result<Runs> {
    let mut runs =
        Runs { settings: settings.iter().map(|s| s.label.clone()).collect(), columns: Vec::new(), runs: Vec::new() };
    let total = settings.len() * ctx.seeds.len();
    for (si, setting) in settings.iter().enumerate() {
        for &seed in &ctx.seeds {
            let started = Instant::now();
            let mut net = lenet(setting, seed)?;
            let mut hooks = Validate { ctx };
            let mut run = steps::train(ctx, si, seed, &mut net.net, &mut net.shuffle, &setting.plan, &mut hooks)?;
            if run.status.is_ok() {
                finish(si, &mut net, &mut run)?;
            }
            run.seconds = started.elapsed().as_secs_f64();
            let outcome = match (&run.status, run.last()) {
                (Status::Ok, Some(m)) => format!("val acc {:.4}, train loss {:.4}", m.val_acc, m.train_loss),
                (s, _) => format!("FAILED: {}", s.describe()),
            };
            ctx.log(&format!(
                "[{}] {}/{total} {} seed {seed}: {outcome} ({:.1} s)",
                ctx.name,
                runs.runs.len() + 1,
                setting.label,
                run.seconds
            ));
            runs.runs.push(run);
        }
    }
    Ok(runs)
}

/// Mean training seconds per pass over the training images.
pub fn seconds_per_epoch(r: &Run) -> Option<f64> {
    let v: Vec<f64> = r.epochs.iter().map(|m| m.train_seconds).filter(|s| s.is_finite()).collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The "s per epoch" column.
pub fn seconds_col<'a>() -> Col<'a> {
    Col::new("train s/epoch", 2, seconds_per_epoch)
}

/// Runs that diverged (a non-finite loss or layer value) out of all, per setting.
pub fn diverged_count(runs: &Runs, setting: usize) -> (usize, usize) {
    let all: Vec<&Run> = runs.of_setting(setting).collect();
    (all.iter().filter(|r| matches!(r.status, Status::Diverged { .. })).count(), all.len())
}

/// Covariance (biased, over the examples and positions) of a layer output
/// of shape (N, C) or (N, C, H, W), as a C × C row-major matrix in f64.
pub fn channel_covariance(t: &Tensor<f32>) -> Vec<f64> {
    let (n, c) = (t.dim(0), t.dim(1));
    let sp = t.numel() / (n * c).max(1);
    let m = (n * sp) as f64;
    let d = t.data();
    let mut mean = vec![0.0; c];
    for (i, &v) in d.iter().enumerate() {
        mean[(i / sp) % c] += v as f64 / m;
    }
    let mut cov = vec![0.0; c * c];
    let mut col = vec![0.0; c];
    for e in 0..n {
        for s in 0..sp {
            for (ch, v) in col.iter_mut().enumerate() {
                *v = d[(e * c + ch) * sp + s] as f64 - mean[ch];
            }
            for a in 0..c {
                for b in a..c {
                    cov[a * c + b] += col[a] * col[b] / m;
                }
            }
        }
    }
    for a in 0..c {
        for b in 0..a {
            cov[a * c + b] = cov[b * c + a];
        }
    }
    cov
}

/// Seconds per call of `f`, the median of `reps` timed batches of `inner` calls.
pub fn median_seconds(reps: usize, inner: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        for _ in 0..inner {
            f()?;
        }
        times.push(t.elapsed().as_secs_f64() / inner as f64);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Accuracy on `data` in batches of `batch` in training mode (each batch
/// normalized with its own statistics), the running statistics put back
/// afterwards; the network is left in prediction mode.
pub fn accuracy_with_batch_statistics(net: &mut Sequential<f32>, data: &Split, batch: usize) -> Result<f64> {
    let saved = save_net_buffers(net);
    net.train();
    let (mut x, mut labels) = (Tensor::default(), Vec::new());
    let mut correct = 0usize;
    let mut seen = 0usize;
    let indices: Vec<usize> = (0..data.len()).collect();
    let result = (|| -> Result<()> {
        // full batches only: a batch of one has no batch statistics
        for idx in indices.chunks_exact(batch) {
            fill_batch(data, idx, &mut x, &mut labels);
            let logits = net.forward(&x)?;
            let k = logits.dim(1);
            for (row, &y) in logits.data().chunks_exact(k).zip(&labels) {
                let pred = (0..k).fold(0, |best, j| if row[j] > row[best] { j } else { best });
                correct += usize::from(pred == y);
            }
            seen += idx.len();
        }
        Ok(())
    })();
    restore_net_buffers(net, &saved);
    net.eval();
    result?;
    Ok(correct as f64 / seen.max(1) as f64)
}
