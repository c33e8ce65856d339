//! `block-whitening`: exercise 7's block-diagonal covariance, between BN
//! (blocks of one channel) and full whitening (one block): BN-LeNet with
//! each BN replaced by IterNorm whitening in blocks of 1, 2, 4, 8 and 16
//! consecutive channels, and in one block.

use normlab::layers::{Layer, Whitening};
use normlab::Result;

use super::report::{self, settings_table, standard_plots, train_loss_col, val_acc_col, Report};
use super::research::{batch_norm, seconds_col, seconds_per_epoch, train_all, NetSetting, STAGES};
use super::runner::Run;
use super::{Context, Experiment, Scale};

pub static EXPERIMENT: Experiment = Experiment {
    name: "block-whitening",
    title: "Research exercise: block-diagonal whitening, from BN to full whitening",
    summary: "exercise 7: whitening in blocks of 1, 2, 4, 8, 16 channels and full",
    question: "Whitening the channels in blocks of g (a block-diagonal covariance) lies between BN (g = 1) and full whitening (one block). How do accuracy and cost change with the block size on BN-LeNet?",
    defaults: Scale { epochs: 3, train: 10_000, val: 10_000 },
    measured_seconds: 117,
    run,
};

/// Block sizes; `usize::MAX` is one block.
pub const GROUPS: [usize; 6] = [1, 2, 4, 8, 16, usize::MAX];

fn label(g: usize) -> String {
    if g == usize::MAX {
        "one block (full)".into()
    } else {
        format!("blocks of {g}")
    }
}

/// The blocks of each stage, e.g. `6 → 4+2`.
fn layout(g: usize) -> String {
    STAGES
        .iter()
        .map(|&(name, c)| {
            let g = g.min(c);
            let (full, rest) = (c / g, c % g);
            let mut s = format!("{name} {full}×{g}");
            if rest > 0 {
                s += &format!("+{rest}");
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn run(ctx: &Context) -> Result<Report> {
    let mut settings = vec![NetSetting::new("BN", batch_norm())];
    for g in GROUPS {
        settings.push(NetSetting::new(
            label(g),
            Box::new(move |_| Ok(vec![Box::new(Whitening::new(g)) as Box<dyn Layer<f32>>])),
        ));
    }
    let runs = train_all(ctx, &settings, &mut |_, _, _: &mut Run| Ok(()))?;
    let cols = [val_acc_col(), train_loss_col(), seconds_col()];
    let mut table = settings_table("Final validation accuracy, training loss and cost by block size", &runs, &cols);
    table.notes.push(format!(
        "Blocks per stage: {}.",
        GROUPS.iter().map(|&g| format!("{}: {}", label(g), layout(g))).collect::<Vec<_>>().join("; ")
    ));
    table.notes.push("\"blocks of 1\" is BN computed by the whitening layer (the same normalization in training; its running statistic is the average of 1/sqrt(var + eps) rather than of var, so prediction differs slightly).".into());
    let files = report::write_csvs(ctx, &runs, &cols)?;
    let plots = standard_plots(&ctx.out, &runs)?;
    let which: Vec<usize> = (0..settings.len()).collect();
    let mut reading = vec![
        report::ranking(&runs, &which),
        format!("Blocks of 1 against BN (the same normalization): {}", report::versus(&runs, 1, 0)),
        format!("Full whitening against BN: {}", report::versus(&runs, settings.len() - 1, 0)),
    ];
    let acc: Vec<Option<f64>> = (1..settings.len()).map(|s| runs.final_val_acc(s).map(|st| st.mean)).collect();
    if acc.iter().all(Option::is_some) {
        let acc: Vec<f64> = acc.into_iter().flatten().collect();
        let best = (0..acc.len()).fold(0, |b, i| if acc[i] > acc[b] { i } else { b });
        let falling = acc.windows(2).filter(|w| w[1] < w[0]).count();
        reading.push(format!(
            "Across block sizes the best is {} ({:.4}); accuracy falls in {falling} of the {} steps from one block size to the next larger one.",
            label(GROUPS[best]),
            acc[best],
            acc.len() - 1
        ));
    }
    let secs: Vec<String> = (0..settings.len())
        .filter_map(|s| runs.stat(s, seconds_per_epoch).map(|st| format!("{} {:.2} s", runs.settings[s], st.mean)))
        .collect();
    reading.push(format!("Seconds per epoch: {} (timed side by side in this run: the ratios carry over to other machines, the seconds do not).", secs.join(", ")));
    Ok(Report {
        setup: vec![
            ctx.data_line(),
            "Network: the chapter's BN-LeNet with each BN replaced by IterNorm whitening (5 Newton-Schulz iterations, f64, eps 1e-5, per-channel gamma and beta) of blocks of consecutive channels; a block size above a layer's width is one block there, and a width the size does not divide ends with a smaller block.".into(),
            "Training: plain SGD, batch 128, lr 0.1 (the chapter's recipe); the last partial batch of each pass is dropped.".into(),
        ],
        tables: vec![table],
        reading,
        plots,
        files,
        ..report::empty()
    })
}
