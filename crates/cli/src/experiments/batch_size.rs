//! `batch-size`: BN's dependence on the batch. Batch sizes 16 to 512 with
//! the learning rate scaled linearly (0.1 at 128), BN against layer norm,
//! which normalizes each example on its own.

use crate::plot::{plot_lines, Series};
use normlab::models::ModelKind;
use normlab::Result;

use super::report::{self, settings_table, val_acc_col, Col, Plot, Report};
use super::runner::{run_settings, Setting, TrainSetEval};
use super::{bn_lenet, fmt_lr, Context, Experiment, Scale};

pub static EXPERIMENT: Experiment = Experiment {
    name: "batch-size",
    title: "Batch size: batch norm against layer norm",
    summary: "batch 16..512 with lr scaled linearly, BN vs layer norm",
    question: "The chapter says moderate minibatches (50 to 100) regularize best with BN, and that layer norm does not depend on the batch size. What happens from 16 to 512 with the learning rate scaled linearly?",
    defaults: Scale { epochs: 5, train: 10_000, val: 10_000 },
    measured_seconds: 72,
    run,
};

pub const BATCH_SIZES: [usize; 6] = [16, 32, 64, 128, 256, 512];

fn lr_for(batch: usize) -> f64 {
    0.1 * batch as f64 / 128.0
}

fn run(ctx: &Context) -> Result<Report> {
    let mut settings = Vec::new();
    for (name, net) in [("BN", bn_lenet()), ("LN", ModelKind::LnLenet.config())] {
        for b in BATCH_SIZES {
            settings.push(Setting::new(format!("{name} batch {b}"), net).batch_size(b).lr(lr_for(b)));
        }
    }
    let runs = run_settings(ctx, &settings, &mut TrainSetEval)?;
    let gap = |r: &super::Run| Some(r.value("train_acc_eval")? - r.last()?.val_acc);
    let cols = [
        Col::new("lr", 4, |r| Some(lr_for(BATCH_SIZES[r.setting % BATCH_SIZES.len()]))).plain(),
        val_acc_col(),
        Col::new("train acc (eval mode)", 4, |r| r.value("train_acc_eval")),
        Col::new("gap train − val", 4, gap),
        report::train_loss_col(),
    ];
    let table = settings_table("Final validation accuracy and generalization gap per batch size", &runs, &cols);
    let files = report::write_csvs(ctx, &runs, &cols)?;

    // accuracy and gap against batch size, one line per normalization
    let n = BATCH_SIZES.len();
    let line = |offset: usize, name: &str, f: &dyn Fn(usize) -> f64| {
        Series::new(name, BATCH_SIZES.iter().enumerate().map(|(i, &b)| (b as f64, f(offset + i))).collect())
    };
    let acc = |s: usize| runs.final_val_acc(s).map_or(f64::NAN, |st| st.mean);
    let gap_of = |s: usize| runs.stat(s, gap).map_or(f64::NAN, |st| st.mean);
    plot_lines(
        &[line(0, "BN", &acc), line(n, "LN", &acc)],
        "Final validation accuracy against batch size (lr = 0.1·batch/128)",
        "batch size (log scale)",
        "val accuracy",
        true,
        &ctx.path("acc_vs_batch.svg"),
        &ctx.path("acc_vs_batch.png"),
    )?;
    plot_lines(
        &[line(0, "BN", &gap_of), line(n, "LN", &gap_of)],
        "Generalization gap against batch size",
        "batch size (log scale)",
        "train acc − val acc",
        true,
        &ctx.path("gap_vs_batch.svg"),
        &ctx.path("gap_vs_batch.png"),
    )?;
    let mut plots = vec![
        Plot { stem: "acc_vs_batch".into(), caption: "Final validation accuracy against batch size".into() },
        Plot { stem: "gap_vs_batch".into(), caption: "Generalization gap against batch size".into() },
    ];
    let bn_idx: Vec<usize> = (0..n).collect();
    let ln_idx: Vec<usize> = (n..2 * n).collect();
    plots.push(report::epoch_plot(
        &ctx.out,
        "val_acc_bn",
        "BN: validation accuracy per batch size",
        "val accuracy",
        &runs,
        &bn_idx,
        |m, _| m.val_acc,
    )?);
    plots.push(report::epoch_plot(
        &ctx.out,
        "val_acc_ln",
        "LN: validation accuracy per batch size",
        "val accuracy",
        &runs,
        &ln_idx,
        |m, _| m.val_acc,
    )?);

    let mut reading = Vec::new();
    let summary = |idx: &[usize], name: &str| -> Option<(String, f64)> {
        let vals: Vec<(usize, f64)> =
            idx.iter().filter_map(|&s| runs.final_val_acc(s).map(|st| (s, st.mean))).collect();
        let best = vals.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1))?;
        let worst = vals.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1))?;
        Some((
            format!(
                "{name}: best final validation accuracy {:.4} at batch {}, worst {:.4} at batch {}; range across batch sizes {:.4}.",
                best.1,
                BATCH_SIZES[best.0 % n],
                worst.1,
                BATCH_SIZES[worst.0 % n],
                best.1 - worst.1
            ),
            best.1 - worst.1,
        ))
    };
    let bn = summary(&bn_idx, "BN");
    let ln = summary(&ln_idx, "LN");
    if let Some((s, _)) = &bn {
        reading.push(s.clone());
    }
    if let Some((s, _)) = &ln {
        reading.push(s.clone());
    }
    if let (Some((_, rb)), Some((_, rl))) = (&bn, &ln) {
        reading.push(format!(
            "Across batch sizes BN's accuracy varies {} than LN's ({rb:.4} against {rl:.4}). With the lr scaled linearly and a fixed number of epochs, larger batches also mean fewer updates, so part of both ranges is optimization, not normalization.",
            if rb > rl { "more" } else { "less" }
        ));
    }
    // the moderate-batch claim: where is BN's gap smallest?
    let gaps: Vec<(usize, f64)> =
        bn_idx.iter().filter_map(|&s| runs.stat(s, gap).map(|st| (BATCH_SIZES[s], st.mean))).collect();
    if let Some(&(b, g)) = gaps.iter().min_by(|a, c| a.1.total_cmp(&c.1)) {
        reading.push(format!(
            "BN's generalization gap by batch size: {}. The smallest is at batch {b} ({g:+.4}), {} the chapter's moderate range of 50 to 100 (here 64, and 128 just above it).",
            gaps.iter().map(|(b, g)| format!("{b} {g:+.4}")).collect::<Vec<_>>().join(", "),
            if (50..=128).contains(&b) { "inside" } else { "outside" }
        ));
    }
    Ok(Report {
        setup: vec![
            ctx.data_line(),
            format!(
                "Batch sizes {} with lr = 0.1 × batch / 128 ({}); plain SGD; the same number of epochs for every batch size (so batch 16 takes 32 times as many steps as batch 512).",
                BATCH_SIZES.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", "),
                BATCH_SIZES.iter().map(|&b| fmt_lr(lr_for(b))).collect::<Vec<_>>().join(", ")
            ),
            "BN: the chapter's BNLeNet. LN: the same network with layer norm (each example normalized over all its values of the layer, per-element gamma and beta) in place of every BN layer.".into(),
            "After the last epoch the training images are evaluated in prediction mode; the gap is that accuracy minus the validation accuracy.".into(),
        ],
        tables: vec![table],
        reading,
        plots,
        files,
        ..report::empty()
    })
}
