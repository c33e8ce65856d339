//! `group-norm`: the research exercise. Group normalization (Wu & He, 2018;
//! `layers::GroupNorm`, forward and backward, checked against PyTorch)
//! compared with batch norm, layer norm and no normalization on the
//! chapter's LeNet, at the chapter's batch size and at a small one.
//!
//! Why group norm rather than ZCA whitening or a probability-integral-
//! transform normalization: it answers the question the chapter leaves open
//! (BN depends on the batch: it cannot train on batches of one, and small
//! batches make its statistics noisy), its forward and backward passes are
//! exact and cheap (whitening needs an eigendecomposition of a C×C
//! covariance and its backward pass; a PIT needs a CDF estimate whose ranks
//! have no useful gradient), and PyTorch has it, so it can be checked.

use normlab::models::{LeNetConfig, ModelKind, Norm};
use normlab::tensor::Tensor;
use normlab::train::{fill_batch, Trainer};
use normlab::Result;

use super::report::{self, settings_table, train_loss_col, val_acc_col, Col, Report};
use super::runner::{run_settings, Probe, Setting};
use super::{bn_lenet, plain_lenet, Context, Experiment, Scale};

pub static EXPERIMENT: Experiment = Experiment {
    name: "group-norm",
    title: "Research exercise: group normalization",
    summary: "research exercise: group norm vs BN vs LN, batch 128 and 16",
    question: "Group norm normalizes each example over groups of channels instead of over the batch. On the chapter's LeNet, how does it compare with batch norm and layer norm, at batch 128 and at batch 16?",
    defaults: Scale { epochs: 5, train: 10_000, val: 10_000 },
    measured_seconds: 30,
    run,
};

/// Groups: 2 divides every normalized width of LeNet (6, 16, 120, 84).
pub const GROUPS: usize = 2;

pub fn gn_lenet() -> LeNetConfig {
    LeNetConfig::with_norm(Norm::Group { groups: GROUPS })
}

/// After training, in training mode: the largest change of the first 8
/// examples' logits between a forward pass on them alone and one inside a
/// batch of 64. Zero (up to rounding) when the network's output for an
/// example does not depend on the rest of the batch.
struct BatchDependence;

impl Probe for BatchDependence {
    fn finish(&mut self, trainer: &mut Trainer, ctx: &Context) -> Result<Vec<(String, f64)>> {
        let n = ctx.val.len().min(64);
        let k = n.min(8);
        let (mut x, mut labels) = (Tensor::default(), Vec::new());
        let mode = trainer.net.mode();
        trainer.net.train();
        let idx: Vec<usize> = (0..n).collect();
        fill_batch(&ctx.val, &idx, &mut x, &mut labels);
        let big = trainer.net.forward(&x)?.clone();
        fill_batch(&ctx.val, &idx[..k], &mut x, &mut labels);
        let small = trainer.net.forward(&x)?.clone();
        trainer.net.set_mode(mode);
        let d = small.data().iter().zip(big.data()).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max);
        Ok(vec![("batch_dependence".into(), d)])
    }
}

fn run(ctx: &Context) -> Result<Report> {
    let small = 16;
    let small_lr = 0.1 * small as f64 / 128.0;
    let settings = vec![
        Setting::new("BN", bn_lenet()),
        Setting::new("GN 2 groups", gn_lenet()),
        Setting::new("LN", ModelKind::LnLenet.config()),
        Setting::new("no norm", plain_lenet()),
        Setting::new("BN batch 16", bn_lenet()).batch_size(small).lr(small_lr),
        Setting::new("GN 2 groups batch 16", gn_lenet()).batch_size(small).lr(small_lr),
    ];
    let runs = run_settings(ctx, &settings, &mut BatchDependence)?;
    let cols = [
        val_acc_col(),
        train_loss_col(),
        Col::new("params", 0, |r| Some(r.params as f64)).plain(),
        Col::new("s per epoch", 2, |r| {
            Some(r.epochs.iter().map(|m| m.train_seconds).sum::<f64>() / r.epochs.len().max(1) as f64)
        }),
        Col::new("batch dependence", 6, |r| r.value("batch_dependence")),
    ];
    let mut table = settings_table("Final validation accuracy, training loss, cost and batch dependence", &runs, &cols);
    table.notes.push("\"batch dependence\": the largest change of an example's logits (training mode, after training) between a forward pass on 8 examples and one on the same 8 inside a batch of 64. Group norm, layer norm and no norm give 0 up to float rounding; batch norm does not.".into());
    let files = report::write_csvs(ctx, &runs, &cols)?;
    let plots = report::standard_plots(&ctx.out, &runs)?;
    let reading = vec![
        report::ranking(&runs, &[0, 1, 2, 3]),
        format!("At batch 128: {}", report::versus(&runs, 1, 0)),
        format!("Group norm against layer norm: {}", report::versus(&runs, 1, 2)),
        format!("At batch 16 (lr {small_lr}): {}", report::versus(&runs, 5, 4)),
        {
            let bn_drop = runs.final_val_acc(0).zip(runs.final_val_acc(4)).map(|(a, b)| a.mean - b.mean);
            let gn_drop = runs.final_val_acc(1).zip(runs.final_val_acc(5)).map(|(a, b)| a.mean - b.mean);
            match (bn_drop, gn_drop) {
                (Some(b), Some(g)) => format!(
                    "From batch 128 to batch 16, BN's final accuracy changes by {:+.4} and GN's by {:+.4} (same epochs, lr scaled linearly, 8 times as many steps).",
                    -b, -g
                ),
                _ => "Batch 128 against batch 16: a setting has no run that trained.".into(),
            }
        },
    ];
    Ok(Report {
        setup: vec![
            ctx.data_line(),
            format!("Network: the chapter's LeNet (sigmoid) with each BN layer replaced by the setting's normalization, before the activation. GN: {GROUPS} groups in every layer (2 divides 6, 16, 120 and 84), per-channel gamma and beta, eps 1e-5, as nn.GroupNorm; LN: each example over all the layer's values."),
            "Training: plain SGD, batch 128 with lr 0.1 (the chapter's recipe), and batch 16 with lr 0.0125 (scaled linearly) for BN and GN.".into(),
            "Why group norm: of the three research options it is the one that answers a question the chapter leaves open (BN depends on the batch: no batches of one, noisy statistics in small batches), its forward and backward passes are exact and cheap (ZCA whitening needs an eigendecomposition of the channel covariance and its backward pass; a probability-integral transform needs a CDF estimate whose ranks have no useful gradient), and PyTorch has it, so the layer is checked against nn.GroupNorm (tests/fixtures/group_norm.safetensors) as well as by finite differences.".into(),
        ],
        tables: vec![table],
        reading,
        plots,
        files,
        ..report::empty()
    })
}
