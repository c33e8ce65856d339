//! `sparsify`: exercise 7's "does sparsification compression act as a
//! regularizer?". BN-LeNet with top-k sparsification after the BN of each
//! hidden linear layer ([`normlab::layers::TopK`]: per example the k
//! largest-magnitude normalized values kept, the rest set to zero, the
//! gradient through the kept ones only), k swept as a fraction of the
//! units, against dropout after the same layers.

use normlab::layers::{BatchNorm, BatchNormConfig, Dropout, Layer, TopK};
use normlab::train::evaluate;
use normlab::Result;

use super::report::{self, settings_table, standard_plots, train_loss_col, val_acc_col, Col, Report};
use super::research::{batch_norm, seconds_col, train_all, NetSetting};
use super::runner::Run;
use super::{fmt_lr, Context, Experiment, Scale};

pub static EXPERIMENT: Experiment = Experiment {
    name: "sparsify",
    title: "Research exercise: top-k sparsification after BN as a regularizer",
    summary: "exercise 7: top-k after BN (k swept) vs dropout at matched accuracy",
    question: "If only the k largest-magnitude values of each example survive after BN in the hidden linear layers, does the network generalize better, like with dropout? Swept k, against dropout at matched accuracy.",
    defaults: Scale { epochs: 8, train: 5_000, val: 5_000 },
    measured_seconds: 29,
    run,
};

/// Fractions of the units kept (fc1: 120, fc2: 84).
pub const FRACTIONS: [f64; 4] = [0.5, 0.25, 0.1, 0.05];
/// Dropout probabilities, after the hidden linear layers' activations.
pub const DROPOUT: [f64; 2] = [0.2, 0.5];
/// One rate for all, as in `dropout`: a network that fits its training
/// images within the budget, so that regularization has something to do.
pub const LR: f64 = 1.0;

fn top_k(f: f64) -> Box<super::research::Insert> {
    Box::new(move |k| {
        let mut v: Vec<Box<dyn Layer<f32>>> = vec![Box::new(BatchNorm::new(BatchNormConfig::pytorch()))];
        if k >= 2 {
            v.push(Box::new(TopK::new(f)?));
        }
        Ok(v)
    })
}

fn dropout(p: f64) -> Box<super::research::Insert> {
    Box::new(move |k| Ok(if k >= 2 { vec![Box::new(Dropout::new(p)?) as Box<dyn Layer<f32>>] } else { Vec::new() }))
}

fn run(ctx: &Context) -> Result<Report> {
    let mut settings = vec![NetSetting::new("BN", batch_norm()).plan(128, LR)];
    for f in FRACTIONS {
        settings.push(NetSetting::new(format!("BN + top-{}%", f * 100.0), top_k(f)).plan(128, LR));
    }
    for p in DROPOUT {
        settings.push(
            NetSetting::new(format!("BN + dropout {p}"), batch_norm()).after_activation(dropout(p)).plan(128, LR),
        );
    }
    let mut finish = |_: usize, net: &mut super::research::Net, run: &mut Run| -> Result<()> {
        let e = evaluate(&mut net.net, &ctx.train, 500, None)?;
        run.values.push(("train_acc_eval".into(), e.accuracy));
        Ok(())
    };
    let runs = train_all(ctx, &settings, &mut finish)?;
    let gap = |r: &Run| Some(r.value("train_acc_eval")? - r.last()?.val_acc);
    let cols = [
        val_acc_col(),
        Col::new("train acc (eval mode)", 4, |r: &Run| r.value("train_acc_eval")),
        Col::new("gap train − val", 4, gap),
        train_loss_col(),
        seconds_col(),
    ];
    let mut table =
        settings_table("Final validation accuracy, training accuracy and the generalization gap", &runs, &cols);
    table.notes.push("top-k%: k = round(fraction × units) values kept per example in fc1 (120 units) and fc2 (84 units): 50% keeps 60 and 42, 5% keeps 6 and 4. The gap is the accuracy on the training images (prediction mode) minus the validation accuracy.".into());
    let files = report::write_csvs(ctx, &runs, &cols)?;
    let plots = standard_plots(&ctx.out, &runs)?;
    let which: Vec<usize> = (0..settings.len()).collect();
    let mut reading = vec![report::ranking(&runs, &which)];
    for s in 1..=FRACTIONS.len() {
        reading.push(report::versus(&runs, s, 0));
    }
    let acc = |s: usize| runs.final_val_acc(s).map(|st| st.mean);
    let gap_of = |s: usize| runs.stat(s, gap).map(|st| st.mean);
    for (i, &p) in DROPOUT.iter().enumerate() {
        let d = 1 + FRACTIONS.len() + i;
        let Some(target) = acc(d) else { continue };
        let nearest = (1..=FRACTIONS.len())
            .filter_map(|s| acc(s).map(|a| (s, (a - target).abs())))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        if let (Some((s, diff)), Some(gd), Some(gs)) = (nearest, gap_of(d), nearest.and_then(|n| gap_of(n.0))) {
            reading.push(format!(
                "At matched accuracy: dropout {p} ({target:.4}) is nearest to {} ({:.4}, {diff:.4} apart); their generalization gaps are {gd:+.4} (dropout) and {gs:+.4} (top-k){}.",
                runs.settings[s],
                acc(s).unwrap_or(f64::NAN),
                if gs < gd - 0.005 {
                    ": top-k leaves the smaller gap"
                } else if gd < gs - 0.005 {
                    ": dropout leaves the smaller gap"
                } else {
                    ": about the same"
                }
            ));
        }
    }
    if let (Some(b), Some(bg)) = (acc(0), gap_of(0)) {
        let helped: Vec<String> = (1..=FRACTIONS.len())
            .filter(|&s| gap_of(s).is_some_and(|g| g < bg - 0.005) && acc(s).is_some_and(|a| a >= b - 0.005))
            .map(|s| runs.settings[s].clone())
            .collect();
        reading.push(if helped.is_empty() {
            format!("No top-k setting both narrowed BN's generalization gap ({bg:+.4}) and kept its accuracy ({b:.4}) within 0.005: here sparsification did not act as a useful regularizer.")
        } else {
            format!("Top-k settings that narrowed BN's gap ({bg:+.4}) while keeping its accuracy ({b:.4}) within 0.005: {}: there sparsification acted as a regularizer.", helped.join(", "))
        });
    }
    Ok(Report {
        setup: vec![
            ctx.data_line(),
            "Network: the chapter's BN-LeNet. Top-k: after the BN of each hidden linear layer (fc1, fc2), before the sigmoid: the values kept are the normalized deviations of largest magnitude, the others become 0 (the channel's mean after BN, so the sigmoid gives 0.5 there); the same in prediction mode (a deterministic function, nothing to rescale). Dropout: after the sigmoid of the same layers (inverted, off in prediction mode).".into(),
            format!("Training: plain SGD, batch 128, lr {} for every setting (as in the `dropout` experiment: on a small training subset the network fits its images in the budget, so a regularizer has something to do); the last partial batch of each pass is dropped. After training the training images are evaluated in prediction mode for the gap.", fmt_lr(LR)),
        ],
        tables: vec![table],
        reading,
        plots,
        files,
        ..report::empty()
    })
}
