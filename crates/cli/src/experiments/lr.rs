//! `lr`: what BN does to the usable learning rate. BNLeNet and the same
//! network without BN over a log grid of learning rates: validation accuracy
//! per epoch for each (the exercise's plot), final accuracy against the
//! learning rate, and the largest learning rate that still trains.

use crate::plot::{plot_lines, Series};
use normlab::Result;

use super::report::{self, settings_table, train_loss_col, val_acc_col, Cell, Plot, Report, Table};
use super::runner::{run_settings, NoProbe, Runs, Setting};
use super::{bn_lenet, fmt_lr, plain_lenet, Context, Experiment, Scale};

pub static EXPERIMENT: Experiment = Experiment {
    name: "lr",
    title: "Learning rate with and without batch norm",
    summary: "BN vs no BN over learning rates 0.01..100; largest lr that trains",
    question: "Does batch norm let the network train with larger learning rates? What is the largest learning rate before optimization fails, with and without BN?",
    defaults: Scale { epochs: 4, train: 30_000, val: 5_000 },
    measured_seconds: 106,
    run,
};

/// Half-decade steps from 0.01 to 100: the exercise's 0.01 to 10, and two
/// steps more, because BNLeNet still trains at 10.
pub const GRID: [f64; 9] = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0];

/// A setting "trains" when none of its runs failed and every run ends at
/// least this accurate (twice chance on 10 classes).
pub const TRAINS_MIN_ACC: f64 = 0.2;

pub fn label(bn: bool, lr: f64) -> String {
    format!("{} lr {}", if bn { "BN" } else { "no BN" }, fmt_lr(lr))
}

/// Every run of the setting trained and reached [`TRAINS_MIN_ACC`].
pub fn trains(runs: &Runs, s: usize) -> bool {
    let mut any = false;
    for r in runs.of_setting(s) {
        any = true;
        if !r.status.is_ok() || r.last().is_none_or(|m| m.val_acc.is_nan() || m.val_acc < TRAINS_MIN_ACC) {
            return false;
        }
    }
    any
}

fn run(ctx: &Context) -> Result<Report> {
    let mut settings = Vec::new();
    for lr in GRID {
        settings.push(Setting::new(label(true, lr), bn_lenet()).lr(lr));
        settings.push(Setting::new(label(false, lr), plain_lenet()).lr(lr));
    }
    let runs = run_settings(ctx, &settings, &mut NoProbe)?;
    let cols = [val_acc_col(), train_loss_col()];
    let mut table = settings_table("Final validation accuracy and training loss per learning rate", &runs, &cols);
    table.header.push("trains".into());
    for (s, row) in table.rows.iter_mut().enumerate() {
        row.push(if trains(&runs, s) { "yes" } else { "no" }.into());
    }
    table.notes.push(format!(
        "\"trains\": no run of the setting failed and every run ends with a validation accuracy of at least {TRAINS_MIN_ACC} (twice chance). A run fails when its loss becomes NaN or infinite, or when every batch of an epoch has a loss more than 2 % above its starting value (the first batch's loss, at least ln 10, the loss of a uniform prediction); it is stopped there and the others go on."
    ));
    let files = report::write_csvs(ctx, &runs, &cols)?;

    let idx = |bn: bool, i: usize| 2 * i + if bn { 0 } else { 1 };
    // the largest (and smallest) learning rate that trains, and the best one
    let mut summary_rows = Vec::new();
    let mut reading = Vec::new();
    let mut largest = [None, None];
    for (k, bn) in [true, false].into_iter().enumerate() {
        let name = if bn { "BN" } else { "no BN" };
        let ok: Vec<usize> = (0..GRID.len()).filter(|&i| trains(&runs, idx(bn, i))).collect();
        let best = (0..GRID.len())
            .filter_map(|i| runs.final_val_acc(idx(bn, i)).map(|st| (i, st)))
            .max_by(|a, b| a.1.mean.total_cmp(&b.1.mean));
        largest[k] = ok.last().copied();
        let failed: Vec<String> = (0..GRID.len())
            .filter(|&i| runs.ok_count(idx(bn, i)).0 < runs.ok_count(idx(bn, i)).1)
            .map(|i| {
                let (ok, all) = runs.ok_count(idx(bn, i));
                format!("{} ({}/{all} failed)", fmt_lr(GRID[i]), all - ok)
            })
            .collect();
        summary_rows.push(vec![
            Cell::from(name),
            ok.last().map_or("none".to_string(), |&i| fmt_lr(GRID[i])).into(),
            ok.first().map_or("none".to_string(), |&i| fmt_lr(GRID[i])).into(),
            best.map_or("none".to_string(), |(i, _)| fmt_lr(GRID[i])).into(),
            best.map_or("–".to_string(), |(_, st)| st.fmt(4)).into(),
            if failed.is_empty() { "none".to_string() } else { failed.join(", ") }.into(),
        ]);
        match (best, ok.last()) {
            (Some((bi, bst)), Some(&li)) => reading.push(format!(
                "{name}: the best final validation accuracy is {:.4} at lr {}; the largest learning rate that trains is {}{}{}.",
                bst.mean,
                fmt_lr(GRID[bi]),
                fmt_lr(GRID[li]),
                if li + 1 == GRID.len() { " (the top of the grid: the limit lies higher)" } else { "" },
                if ok.len() < li - ok[0] + 1 { "; some learning rates below it do not train" } else { "" }
            )),
            (Some((bi, bst)), None) => reading.push(format!(
                "{name}: no learning rate of the grid trains by the rule above; the best final validation accuracy is {:.4} at lr {}.",
                bst.mean,
                fmt_lr(GRID[bi])
            )),
            _ => reading.push(format!("{name}: every run failed.")),
        }
        if let Some(&lo) = ok.first() {
            if lo > 0 {
                reading.push(format!(
                    "{name}: below lr {} the network does not train in {} epochs (it learns too slowly, it does not fail).",
                    fmt_lr(GRID[lo]),
                    ctx.epochs
                ));
            }
        }
        if !failed.is_empty() {
            reading.push(format!("{name}: failed runs at lr {}.", failed.join(", ")));
        }
    }
    if let (Some(b), Some(p)) = (largest[0], largest[1]) {
        let ratio = GRID[b] / GRID[p];
        reading.push(if ratio > 1.0 {
            format!(
                "With BN the largest working learning rate is {ratio:.0}× larger than without ({} against {}).",
                fmt_lr(GRID[b]),
                fmt_lr(GRID[p])
            )
        } else if ratio < 1.0 {
            format!(
                "Without BN the largest working learning rate is larger ({} against {} with BN).",
                fmt_lr(GRID[p]),
                fmt_lr(GRID[b])
            )
        } else {
            format!("Both train up to the same learning rate of the grid ({}).", fmt_lr(GRID[b]))
        });
    }
    let summary = Table {
        caption: "Usable learning rates".into(),
        header: vec![
            "network".into(),
            "largest lr that trains".into(),
            "smallest lr that trains".into(),
            "best lr".into(),
            "best final val acc".into(),
            "failed runs at lr".into(),
        ],
        rows: summary_rows,
        notes: vec![format!("Grid: {}.", GRID.iter().map(|&l| fmt_lr(l)).collect::<Vec<_>>().join(", "))],
    };

    // plots: val acc per epoch for each lr (the exercise's plot), and final accuracy against lr
    let bn_idx: Vec<usize> = (0..GRID.len()).map(|i| idx(true, i)).collect();
    let plain_idx: Vec<usize> = (0..GRID.len()).map(|i| idx(false, i)).collect();
    let mut plots = vec![
        report::epoch_plot(
            &ctx.out,
            "val_acc_bn",
            "With BN: validation accuracy per learning rate",
            "val accuracy",
            &runs,
            &bn_idx,
            |m, _| m.val_acc,
        )?,
        report::epoch_plot(
            &ctx.out,
            "val_acc_no_bn",
            "Without BN: validation accuracy per learning rate",
            "val accuracy",
            &runs,
            &plain_idx,
            |m, _| m.val_acc,
        )?,
    ];
    let line = |bn: bool| {
        Series::new(
            if bn { "BN" } else { "no BN" },
            (0..GRID.len()).map(|i| (GRID[i], runs.final_val_acc(idx(bn, i)).map_or(f64::NAN, |st| st.mean))).collect(),
        )
    };
    plot_lines(
        &[line(true), line(false)],
        "Final validation accuracy against learning rate",
        "learning rate (log scale)",
        "val accuracy",
        true,
        &ctx.path("acc_vs_lr.svg"),
        &ctx.path("acc_vs_lr.png"),
    )?;
    plots.insert(
        0,
        Plot {
            stem: "acc_vs_lr".into(),
            caption: "Final validation accuracy against learning rate (failed settings left out)".into(),
        },
    );
    plots.push(report::epoch_plot_with(
        &ctx.out,
        "train_loss_bn",
        "With BN: training loss per learning rate (runs that trained)",
        "train loss",
        &runs,
        &bn_idx,
        true,
        |m, _| m.train_loss,
    )?);
    plots.push(report::epoch_plot_with(
        &ctx.out,
        "train_loss_no_bn",
        "Without BN: training loss per learning rate (runs that trained)",
        "train loss",
        &runs,
        &plain_idx,
        true,
        |m, _| m.train_loss,
    )?);

    Ok(Report {
        setup: vec![
            ctx.data_line(),
            format!("Learning rates {} (plain SGD, batch 128), for the chapter's BNLeNet and for the same LeNet without BN (sigmoid activations, Xavier-uniform weights, as in d2l). The grid goes past the exercise's 10 because BNLeNet still trains there.", GRID.iter().map(|&l| fmt_lr(l)).collect::<Vec<_>>().join(", ")),
            "30,000 training images and 4 epochs: in a trial at lr 1 the network without BN kept a loss of ln 10 for two epochs of this before it started to learn, so fewer steps would only show that it is slow.".into(),
            "A diverged run (NaN or infinite loss, or every batch of an epoch more than 2 % above the starting loss) is stopped and marked failed; its curve ends where it failed.".into(),
        ],
        tables: vec![table, summary],
        reading,
        plots,
        files,
        ..report::empty()
    })
}
