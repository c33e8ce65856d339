//! `pit`: exercise 7's "can you apply the probability integral transform?".
//! BN-LeNet with every BN replaced by PIT normalization
//! ([`normlab::layers::PitNorm`]: each value becomes the normal quantile of
//! its rank in the batch, per channel; straight-through backward through
//! BN's standardization; running quantiles in prediction mode), against BN.

use normlab::layers::{Layer, PitNorm};
use normlab::Result;

use super::report::{self, settings_table, standard_plots, train_loss_col, val_acc_col, Col, Report};
use super::research::{
    accuracy_with_batch_statistics, batch_norm, seconds_col, seconds_per_epoch, train_all, NetSetting,
};
use super::runner::Run;
use super::{Context, Experiment, Scale};

pub static EXPERIMENT: Experiment = Experiment {
    name: "pit",
    title: "Research exercise: the probability integral transform as a normalization",
    summary: "exercise 7: rank -> normal quantile (PIT) normalization vs BN",
    question: "If each value is replaced by the standard normal quantile of its rank in the batch (per channel), every channel is exactly Gaussian instead of only centred and scaled. Does BN-LeNet train as well with this PIT normalization as with BN, and at what cost?",
    defaults: Scale { epochs: 5, train: 10_000, val: 10_000 },
    measured_seconds: 63,
    run,
};

fn pit() -> Box<super::research::Insert> {
    Box::new(|_| Ok(vec![Box::new(PitNorm::new()) as Box<dyn Layer<f32>>]))
}

fn run(ctx: &Context) -> Result<Report> {
    let settings = vec![NetSetting::new("BN", batch_norm()), NetSetting::new("PIT (straight-through)", pit())];
    // prediction mode (running quantiles) against training mode (the
    // batch's ranks) on the same validation batches: how well the running
    // quantiles stand in for the ranks
    let mut finish = |_: usize, net: &mut super::research::Net, run: &mut Run| -> Result<()> {
        let acc = accuracy_with_batch_statistics(&mut net.net, &ctx.val, 128)?;
        run.values.push(("val_acc_batch_stats".into(), acc));
        Ok(())
    };
    let runs = train_all(ctx, &settings, &mut finish)?;
    let gap = |r: &Run| Some(r.last()?.val_acc - r.value("val_acc_batch_stats")?);
    let cols = [
        val_acc_col(),
        train_loss_col(),
        Col::new("val acc, batch statistics", 4, |r: &Run| r.value("val_acc_batch_stats")),
        Col::new("running − batch", 4, gap),
        seconds_col(),
    ];
    let mut table = settings_table("Final validation accuracy, training loss and cost", &runs, &cols);
    table.notes.push("\"val acc, batch statistics\": the validation set in batches of 128 in training mode (BN: the batch's mean and variance; PIT: the batch's ranks), running statistics put back afterwards; \"running − batch\" is the final (prediction-mode) accuracy minus it, how much the running statistics (BN) or running quantiles (PIT) lose or gain against the batch's own. \"train s/epoch\" counts the training steps only.".into());
    let files = report::write_csvs(ctx, &runs, &cols)?;
    let plots = standard_plots(&ctx.out, &runs)?;
    let mut reading = vec![format!("PIT against BN: {}", report::versus(&runs, 1, 0))];
    let secs = |s: usize| runs.stat(s, seconds_per_epoch).map(|st| st.mean);
    if let (Some(b), Some(p)) = (secs(0), secs(1)) {
        reading.push(format!(
            "Cost: PIT takes {p:.2} s per epoch against BN's {b:.2} s ({:.1} times), for the sort of each channel's values (73,728 per channel at the first convolution) in every step; the straight-through backward pass costs what BN's does.",
            p / b.max(1e-9)
        ));
    }
    if let (Some(g0), Some(g1)) = (runs.stat(0, gap), runs.stat(1, gap)) {
        reading.push(format!(
            "Prediction mode against the batch's own statistics on the validation set: BN {:+.4}, PIT {:+.4}. {}",
            g0.mean,
            g1.mean,
            if g1.mean.abs() <= g0.mean.abs() + 0.01 {
                "The running quantiles stand in for the ranks about as well as BN's running mean and variance stand in for the batch's."
            } else {
                "The running quantiles stand in for the ranks worse than BN's running statistics do for the batch's mean and variance."
            }
        ));
    }
    Ok(Report {
        setup: vec![
            ctx.data_line(),
            "Network: the chapter's BN-LeNet (sigmoid, average pooling, Xavier-uniform weights), and the same with each of its four BN layers replaced by PIT normalization (after each convolution and hidden linear layer, before the sigmoid), with per-channel gamma and beta as BN.".into(),
            "PIT normalization, training: per channel over the batch (and, after a convolution, all positions), the value of rank r (0-based, ties averaged: the convolutions see many equal values from the blank background) becomes Φ⁻¹((r + 1/2)/m), m the number of values. Backward: ranks are piecewise constant (their gradient is zero almost everywhere), so the gradient is defined straight-through as BN's: that of the standardization (x − mean)/sqrt(var + eps) with the batch's statistics, which equals the PIT for Gaussian values. A smoothed rank (a kernel CDF) would be differentiable but couples every pair of values, O(m²) per channel with m = 73,728 at the first convolution, so only the straight-through gradient is measured.".into(),
            "Prediction: running quantiles: per channel the values at the probabilities Φ(z) of 25 points z from −3 to 3, each batch's quantiles averaged with momentum 0.1 as BN averages its mean and variance; a value maps to z by linear interpolation between them (linear extension beyond the ends).".into(),
            "Training: plain SGD, batch 128, lr 0.1 (the chapter's recipe); the last partial batch of each pass is dropped.".into(),
        ],
        tables: vec![table],
        reading,
        plots,
        files,
        ..report::empty()
    })
}
