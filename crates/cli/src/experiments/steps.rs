//! A step-by-step training loop for experiments that measure the network
//! between updates (the LeNet trainer has no hook inside an epoch): plain
//! SGD on full minibatches of a hand-built [`Sequential`], with a callback
//! after every update and a validation measurement after every pass.

use std::time::Instant;

use rand::seq::SliceRandom;

use normlab::loss::CrossEntropy;
use normlab::models::Sequential;
use normlab::optim::{Sgd, SgdConfig};
use normlab::rng::Rng;
use normlab::tensor::Tensor;
use normlab::train::{fill_batch, EpochMetrics};
use normlab::{Error, Result};

use super::runner::{failure_threshold, Run, Status};
use super::Context;

/// What an experiment does between steps.
pub trait StepHooks {
    /// After the update of step `step` (1-based) on the batch `x` with its
    /// `labels`; the layers' outputs are still those of that step's
    /// training forward.
    fn after_update(&mut self, net: &mut Sequential<f32>, step: usize, x: &Tensor<f32>, labels: &[usize])
        -> Result<()>;
    /// After each pass over the training images: validation loss and accuracy.
    fn end_of_pass(&mut self, net: &mut Sequential<f32>, step: usize) -> Result<(f64, f64)>;
}

/// How to train: batch size and learning rate of plain SGD.
pub struct StepPlan {
    pub batch: usize,
    pub lr: f64,
}

impl StepPlan {
    /// Updates per pass: the last partial batch is dropped, so every step
    /// sees `batch` images (and a BN layer never a batch of one).
    pub fn steps_per_pass(&self, ctx: &Context) -> usize {
        (ctx.train.len() / self.batch).max(1)
    }
}

/// Trains the built `net` for `ctx.epochs` passes; the run stops early as
/// the shared runner's does (non-finite loss, or a pass whose every batch
/// is above the starting loss). Time spent in the hooks is not training
/// time: it is counted as evaluation.
pub fn train(
    ctx: &Context,
    setting: usize,
    seed: u64,
    net: &mut Sequential<f32>,
    shuffle: &mut Rng,
    plan: &StepPlan,
    hooks: &mut dyn StepHooks,
) -> Result<Run> {
    let started = Instant::now();
    let mut sgd = Sgd::new(SgdConfig::new(plan.lr))?;
    let mut ce = CrossEntropy::new();
    let n = ctx.train.len();
    let per_pass = plan.steps_per_pass(ctx);
    let mut order: Vec<usize> = (0..n).collect();
    let (mut x, mut labels) = (Tensor::default(), Vec::new());
    let mut run = Run::new(setting, seed, net.num_params());
    net.train();
    let mut step = 0;
    'epochs: for epoch in 1..=ctx.epochs {
        let t = Instant::now();
        let mut hook_seconds = 0.0;
        order.shuffle(shuffle);
        let (mut loss_sum, mut correct, mut seen, mut min_batch) = (0.0, 0, 0, f64::INFINITY);
        for b in 0..per_pass {
            let idx = &order[b * plan.batch..((b + 1) * plan.batch).min(n)];
            fill_batch(&ctx.train, idx, &mut x, &mut labels);
            // a layer that finds non-finite values says so (Error::Diverged): the run diverged
            let logits = match net.forward(&x) {
                Err(Error::Diverged(message)) => {
                    run.diverge(epoch, 0, format!("{message} at step {}", step + 1));
                    break 'epochs;
                }
                other => other?,
            };
            let (loss, right) = ce.forward(logits, &labels)?;
            if !loss.is_finite() {
                run.diverge(epoch, 0, format!("loss {loss} at step {}", step + 1));
                break 'epochs;
            }
            if step == 0 {
                run.start_loss = loss;
            } else {
                min_batch = f64::min(min_batch, loss);
            }
            if let Err(e) = net.backward(&x, ce.grad()) {
                match e {
                    Error::Diverged(message) => {
                        run.diverge(epoch, 0, format!("{message} at step {}", step + 1));
                        break 'epochs;
                    }
                    e => return Err(e),
                }
            }
            sgd.step(net);
            loss_sum += loss * idx.len() as f64;
            correct += right;
            seen += idx.len();
            step += 1;
            let h = Instant::now();
            hooks.after_update(net, step, &x, &labels)?;
            hook_seconds += h.elapsed().as_secs_f64();
        }
        let h = Instant::now();
        let (val_loss, val_acc) = hooks.end_of_pass(net, step)?;
        net.train();
        hook_seconds += h.elapsed().as_secs_f64();
        run.epochs.push(EpochMetrics {
            epoch,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            val_loss,
            val_acc,
            train_seconds: t.elapsed().as_secs_f64() - hook_seconds,
            eval_seconds: hook_seconds,
            lr: None,
        });
        run.extra.push(Vec::new());
        if min_batch.is_finite() && min_batch > failure_threshold(run.start_loss) {
            run.status = Status::LossAboveStart { epoch, min_batch_loss: min_batch, start: run.start_loss };
            break;
        }
    }
    run.seconds = started.elapsed().as_secs_f64();
    Ok(run)
}
