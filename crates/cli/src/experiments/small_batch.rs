//! `small-batch`: the chapter's point that batch norm depends on the batch,
//! measured. BN, group norm, layer norm, batch renormalization, ghost batch
//! norm and RMS norm in BN-LeNet's four normalization slots, trained at
//! batch 2, 4, 8, 16, 32 and 128 with the learning rate scaled linearly.

use normlab::layers::RenormSchedule;
use normlab::models::spec::{Architecture, LayerSpec, ModelSpec};
use normlab::models::{LeNetConfig, ModelKind};
use normlab::Result;

use crate::plot::{plot_lines, Series};

use super::report::{self, fixed, settings_table, signed, val_acc_col, Col, Plot, Report};
use super::runner::{run_settings, NoProbe, Setting};
use super::{bn_lenet, fmt_lr, Context, Experiment, Scale};

pub static EXPERIMENT: Experiment = Experiment {
    name: "small-batch",
    title: "Small batches: which normalization survives them",
    summary: "BN, GN, LN, batch renorm, ghost BN, RMS norm at batch 2..128, lr scaled",
    question: "Batch norm normalizes with the batch's statistics, so small batches make them noisy (the chapter: BN depends on the batch). From batch 128 down to batch 2, how do BN, group norm, layer norm, batch renormalization, ghost batch norm and RMS norm hold up?",
    defaults: Scale { epochs: 3, train: 5000, val: 5000 },
    measured_seconds: 123,
    run,
};

pub const BATCH_SIZES: [usize; 6] = [2, 4, 8, 16, 32, 128];

/// Examples per virtual batch of ghost BN: batch norm at batches up to 8,
/// virtual batches of 8 inside batches 16, 32 and 128.
pub const GHOST_BATCH: usize = 8;

/// The normalizations compared, in table order.
pub const NORMS: [&str; 6] = ["BN", "GN", "LN", "BRN", "GhostBN", "RMS"];

/// The chapter's recipe scaled linearly: 0.1 at batch 128.
pub fn lr_for(batch: usize) -> f64 {
    0.1 * batch as f64 / 128.0
}

/// BN-LeNet with every batch norm replaced by `layer`.
fn bn_lenet_with(layer: &LayerSpec) -> Architecture {
    let spec = bn_lenet().spec();
    let layers = spec
        .layers
        .iter()
        .map(|l| if matches!(l, LayerSpec::BatchNorm { .. }) { layer.clone() } else { l.clone() })
        .collect();
    Architecture::Spec(ModelSpec { input: spec.input, layers })
}

/// The network of normalization `norm` for training runs of `steps` steps.
fn network(norm: &str, steps: u64) -> Architecture {
    let lenet = |c: LeNetConfig| Architecture::LeNet(c);
    match norm {
        "BN" => lenet(bn_lenet()),
        "GN" => lenet(super::group_norm::gn_lenet()),
        "LN" => lenet(ModelKind::LnLenet.config()),
        "BRN" => {
            let s = RenormSchedule::scaled_to(steps);
            bn_lenet_with(&LayerSpec::BatchRenorm {
                eps: 1e-5,
                momentum: 0.1,
                rmax: s.rmax,
                dmax: s.dmax,
                warmup_steps: s.warmup_steps,
                rmax_steps: s.rmax_steps,
                dmax_steps: s.dmax_steps,
            })
        }
        "GhostBN" => bn_lenet_with(&LayerSpec::GhostBatchNorm { virtual_batch: GHOST_BATCH, eps: 1e-5, momentum: 0.1 }),
        _ => bn_lenet_with(&LayerSpec::RmsNorm { eps: None, elementwise_affine: true, normalized_dims: None }),
    }
}

fn run(ctx: &Context) -> Result<Report> {
    let mut settings = Vec::new();
    for norm in NORMS {
        for b in BATCH_SIZES {
            let steps = (ctx.epochs * ctx.train.len().div_ceil(b)) as u64;
            let mut s = Setting::new(format!("{norm} batch {b}"), bn_lenet()).batch_size(b).lr(lr_for(b));
            s.options.network = network(norm, steps);
            settings.push(s);
        }
    }
    let runs = run_settings(ctx, &settings, &mut NoProbe)?;
    let n = BATCH_SIZES.len();
    let per_epoch =
        |r: &super::Run| Some(r.epochs.iter().map(|m| m.train_seconds).sum::<f64>() / r.epochs.len().max(1) as f64);
    let cols = [
        Col::new("lr", 4, |r| Some(lr_for(BATCH_SIZES[r.setting % n]))).plain(),
        val_acc_col(),
        report::train_loss_col(),
        Col::new("s per epoch", 2, per_epoch),
    ];
    let table = settings_table("Final validation accuracy and cost per normalization and batch size", &runs, &cols);
    let files = report::write_csvs(ctx, &runs, &cols)?;

    // accuracy (and its spread) against batch size, one line per normalization
    let acc = |s: usize| runs.final_val_acc(s);
    let line = |k: usize, f: &dyn Fn(usize) -> f64| {
        Series::new(NORMS[k], BATCH_SIZES.iter().enumerate().map(|(i, &b)| (b as f64, f(k * n + i))).collect())
    };
    let mean_acc = |s: usize| acc(s).map_or(f64::NAN, |st| st.mean);
    let secs = |s: usize| runs.stat(s, per_epoch).map_or(f64::NAN, |st| st.mean);
    plot_lines(
        &(0..NORMS.len()).map(|k| line(k, &mean_acc)).collect::<Vec<_>>(),
        "Final validation accuracy against batch size (lr = 0.1·batch/128)",
        "batch size (log scale)",
        "val accuracy",
        true,
        &ctx.path("acc_vs_batch.svg"),
        &ctx.path("acc_vs_batch.png"),
    )?;
    plot_lines(
        &(0..NORMS.len()).map(|k| line(k, &secs)).collect::<Vec<_>>(),
        "Training seconds per epoch against batch size",
        "batch size (log scale)",
        "s per epoch",
        true,
        &ctx.path("seconds_vs_batch.svg"),
        &ctx.path("seconds_vs_batch.png"),
    )?;
    let plots = vec![
        Plot { stem: "acc_vs_batch".into(), caption: "Final validation accuracy against batch size".into() },
        Plot { stem: "seconds_vs_batch".into(), caption: "Training seconds per epoch against batch size".into() },
    ];

    Ok(Report {
        setup: vec![
            ctx.data_line(),
            "Network: the chapter's BNLeNet (sigmoid, normalization before the activation) with its four batch norms replaced by the setting's normalization. BN: nn.BatchNorm2d/1d. GN: 2 groups, as nn.GroupNorm. LN: each example over all the layer's values, as nn.LayerNorm. RMS: each example over all the layer's values, as nn.RMSNorm (eps the f32 machine epsilon, per-element gamma, no centring). BRN: batch renormalization (Ioffe 2017), momentum 0.1. GhostBN: batch norm over virtual batches of 8 (so BN itself at batches 2 to 8).".into(),
            format!(
                "Batch sizes {} with lr = 0.1 × batch / 128 (linear scaling from the chapter's recipe: {}); plain SGD; the same number of epochs for every batch size, so batch 2 takes 64 times as many steps as batch 128.",
                BATCH_SIZES.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", "),
                BATCH_SIZES.iter().map(|&b| fmt_lr(lr_for(b))).collect::<Vec<_>>().join(", ")
            ),
            "BRN schedule: the paper's (rmax 1 → 3, dmax 0 → 5, plain BN for the first 5000 steps, dmax reaching 5 at 25k steps and rmax 3 at 40k) as fractions of a 100k-step run applied to each run's own length: plain BN for the first 5 % of its steps, dmax at 5 from 25 %, rmax at 3 from 40 %, linear in between.".into(),
            "\"s per epoch\": training time only (not evaluation), on this machine's threads; small batches cost more per example (more steps, less work per step).".into(),
        ],
        tables: vec![table],
        reading: reading(&runs),
        plots,
        files,
        ..report::empty()
    })
}

/// What the numbers show: per normalization the change from batch 128 to
/// batch 2, the best at each end, and BN against the batch-independent ones.
fn reading(runs: &super::Runs) -> Vec<String> {
    let n = BATCH_SIZES.len();
    let at = |k: usize, b: usize| runs.final_val_acc(k * n + BATCH_SIZES.iter().position(|&x| x == b).unwrap_or(0));
    let mut lines = Vec::new();
    let drops: Vec<String> = (0..NORMS.len())
        .map(|k| match (at(k, 128), at(k, 2)) {
            (Some(big), Some(small)) => format!(
                "{} {} → {} ({})",
                NORMS[k],
                fixed(big.mean, 4),
                fixed(small.mean, 4),
                signed(small.mean - big.mean, 4)
            ),
            _ => format!("{} (a setting has no run that trained)", NORMS[k]),
        })
        .collect();
    lines.push(format!("Final validation accuracy from batch 128 to batch 2: {}.", drops.join("; ")));
    for b in [2, 128] {
        let idx: Vec<usize> =
            (0..NORMS.len()).map(|k| k * n + BATCH_SIZES.iter().position(|&x| x == b).unwrap_or(0)).collect();
        lines.push(format!("At batch {b}: {}", report::ranking(runs, &idx)));
    }
    let bn2 = BATCH_SIZES.iter().position(|&x| x == 2).unwrap_or(0);
    for (k, name) in [(1, "group norm"), (2, "layer norm"), (3, "batch renormalization")] {
        lines.push(format!("At batch 2, {name} against BN: {}", report::versus(runs, k * n + bn2, bn2)));
    }
    // where BN falls behind the best batch-independent normalization
    let independent = [1, 2, 5];
    let behind: Vec<usize> = BATCH_SIZES
        .iter()
        .enumerate()
        .filter(|&(i, _)| {
            let bn = runs.final_val_acc(i).map(|s| s.mean);
            let best = independent
                .iter()
                .filter_map(|&k| runs.final_val_acc(k * n + i).map(|s| s.mean))
                .fold(f64::MIN, f64::max);
            bn.is_some_and(|bn| bn < best)
        })
        .map(|(_, &b)| b)
        .collect();
    lines.push(if behind.is_empty() {
        "BN's mean accuracy is at least that of the best batch-independent normalization (GN, LN, RMS) at every batch size here.".into()
    } else {
        format!(
            "BN's mean accuracy is below the best batch-independent normalization (GN, LN, RMS) at batch {} of {}.",
            behind.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", "),
            BATCH_SIZES.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", ")
        )
    });
    lines
}
