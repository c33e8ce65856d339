//! `recompute`: the running statistics that BN keeps for prediction, against
//! population statistics recomputed over the whole training set after each
//! epoch ("precise BN", PyTorch's `update_bn`; the chapter's "standard
//! practice").

use normlab::train::{evaluate, recompute_bn_stats, Trainer};
use normlab::Result;

use super::report::{self, settings_table, Col, Report};
use super::runner::{restore_buffers, run_settings, save_buffers, Probe, Setting};
use super::{bn_lenet, Context, Experiment, Scale};

pub static EXPERIMENT: Experiment = Experiment {
    name: "recompute",
    title: "Running statistics or recomputed population statistics",
    summary: "val accuracy per epoch with running vs recomputed statistics",
    question: "In prediction mode BN uses running averages of the batch statistics. How much accuracy does recomputing the statistics over the whole training set gain, epoch by epoch?",
    defaults: Scale { epochs: 5, train: 20_000, val: 10_000 },
    measured_seconds: 33,
    run,
};

/// After each epoch: replaces the running statistics by population
/// statistics over the training subset, evaluates, and puts the running
/// statistics back, so training goes on exactly as without the measurement.
struct RecomputeProbe;

impl Probe for RecomputeProbe {
    fn columns(&self) -> Vec<String> {
        vec!["val_acc_recomputed".into(), "val_loss_recomputed".into()]
    }
    fn after_epoch(&mut self, trainer: &mut Trainer, ctx: &Context) -> Result<Vec<f64>> {
        let saved = save_buffers(trainer);
        recompute_bn_stats(&mut trainer.net, &ctx.train, 500)?;
        let e = evaluate(&mut trainer.net, &ctx.val, 500, None);
        restore_buffers(trainer, &saved);
        let e = e?;
        Ok(vec![e.accuracy, e.loss])
    }
}

fn run(ctx: &Context) -> Result<Report> {
    let settings = vec![
        Setting::new("BN lr 0.1 (chapter)", bn_lenet()),
        Setting::new("BN lr 1", bn_lenet()).lr(1.0),
        Setting::new("BN batch 32 lr 0.025", bn_lenet()).batch_size(32).lr(0.025),
    ];
    let runs = run_settings(ctx, &settings, &mut RecomputeProbe)?;
    let (ra, rl) = (runs.column("val_acc_recomputed"), runs.column("val_loss_recomputed"));
    let cols = [
        Col::new("final val acc", 4, |r| r.last().map(|m| m.val_acc)),
        Col::new("final val acc (recomputed)", 4, move |r| r.last_extra(ra)),
        Col::new("recomputed − running", 4, move |r| Some(r.last_extra(ra)? - r.last()?.val_acc)),
        Col::new("val loss (running)", 4, |r| r.last().map(|m| m.val_loss)),
        Col::new("val loss (recomputed)", 4, move |r| r.last_extra(rl)),
    ];
    let mut table = settings_table("Final validation accuracy and loss with each kind of statistics", &runs, &cols);
    table.notes.push("\"final val acc\" uses the running statistics (what BN keeps during training, the default in prediction mode); \"recomputed\" uses population statistics over the training subset.".into());
    // per epoch: the difference, every setting
    let mut rows = Vec::new();
    let max_epoch = runs.runs.iter().map(|r| r.epochs.len()).max().unwrap_or(0);
    for s in 0..runs.settings.len() {
        let curve = runs.epoch_curve(s, |m, x| x.get(ra).copied().unwrap_or(f64::NAN) - m.val_acc);
        let mut row: Vec<report::Cell> = vec![runs.settings[s].as_str().into()];
        row.extend((0..max_epoch).map(|e| curve.get(e).map_or("".to_string(), |p| format!("{:+.4}", p.1)).into()));
        rows.push(row);
    }
    let mut header = vec!["setting".to_string()];
    header.extend((1..=max_epoch).map(|e| format!("epoch {e}")));
    let per_epoch = report::Table {
        caption: "Recomputed minus running-statistics validation accuracy, after each epoch (mean over seeds)".into(),
        header,
        rows,
        notes: vec![],
    };
    let files = report::write_csvs(ctx, &runs, &cols)?;
    let all: Vec<usize> = (0..runs.settings.len()).collect();
    let plots = vec![
        report::epoch_plot(
            &ctx.out,
            "val_acc_running",
            "Validation accuracy, running statistics",
            "val accuracy",
            &runs,
            &all,
            |m, _| m.val_acc,
        )?,
        report::epoch_plot(
            &ctx.out,
            "val_acc_recomputed",
            "Validation accuracy, recomputed statistics",
            "val accuracy",
            &runs,
            &all,
            move |_, x| x.get(ra).copied().unwrap_or(f64::NAN),
        )?,
        report::epoch_plot(
            &ctx.out,
            "difference",
            "Recomputed minus running: validation accuracy",
            "accuracy difference",
            &runs,
            &all,
            move |m, x| x.get(ra).copied().unwrap_or(f64::NAN) - m.val_acc,
        )?,
    ];
    let mut reading = Vec::new();
    for s in all {
        let d = runs.stat(s, |r| Some(r.last_extra(ra)? - r.last()?.val_acc));
        let curve = runs.epoch_curve(s, |m, x| x.get(ra).copied().unwrap_or(f64::NAN) - m.val_acc);
        let biggest = curve.iter().copied().filter(|p| p.1.is_finite()).max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()));
        if let (Some(d), Some(b)) = (d, biggest) {
            reading.push(format!(
                "{}: after the last epoch recomputing changes the validation accuracy by {}; the largest mean change over the epochs is {}, after epoch {}.",
                runs.settings[s],
                change_with_noise(&d),
                report::signed(b.1, 4),
                b.0
            ));
        }
    }
    Ok(Report {
        setup: vec![
            ctx.data_line(),
            "Network: the chapter's BNLeNet (momentum 0.1 for the running statistics, PyTorch's convention). Three recipes: the chapter's (lr 0.1, batch 128), a large learning rate (lr 1: the weights move faster than the running averages follow), and small batches (32, lr 0.025: noisier batch statistics).".into(),
            "After each epoch the running statistics are replaced by the exact mean of the batch statistics over the training subset (batches of 500, as PyTorch's update_bn), the validation set is evaluated, and the running statistics are put back: training itself is the same as without the measurement.".into(),
        ],
        tables: vec![table, per_epoch],
        reading,
        plots,
        files,
        ..report::empty()
    })
}

/// "+0.0040 ± 0.0012 (beyond the seed-to-seed spread)"; with one seed the
/// change alone and that one seed says nothing about noise (as
/// `report::versus`).
fn change_with_noise(d: &super::Stat) -> String {
    if d.n < 2 {
        return format!("{} (one seed, so no statement about noise)", report::signed(d.mean, 4));
    }
    let noise = if d.mean.abs() > 2.0 * d.sem() { "beyond" } else { "within" };
    format!("{} ± {} ({noise} the seed-to-seed spread)", report::signed(d.mean, 4), report::fixed(d.std, 4))
}

#[cfg(test)]
mod tests {
    use super::super::Stat;

    #[test]
    fn one_seed_says_nothing_about_noise() {
        let one = Stat { mean: 0.424, std: 0.0, n: 1 };
        let text = super::change_with_noise(&one);
        assert_eq!(text, "+0.4240 (one seed, so no statement about noise)");
        let three = Stat { mean: -0.00001, std: 0.002, n: 3 };
        assert_eq!(super::change_with_noise(&three), "+0.0000 ± 0.0020 (within the seed-to-seed spread)");
    }
}
