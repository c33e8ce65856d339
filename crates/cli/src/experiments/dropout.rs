//! `dropout`: can BN replace dropout? BN, dropout (p = 0.5 after the fully
//! connected layers), both, and neither.

use normlab::models::LeNetConfig;
use normlab::Result;

use super::report::{self, settings_table, standard_plots, train_loss_col, val_acc_col, Col, Report};
use super::runner::{run_settings, Setting, TrainSetEval};
use super::{bn_lenet, plain_lenet, Context, Experiment, Scale};

pub static EXPERIMENT: Experiment = Experiment {
    name: "dropout",
    title: "Batch norm in place of dropout",
    summary: "BN vs dropout 0.5 vs both vs neither",
    question: "BN is said to regularize like dropout. Does BN alone do as well as dropout, and does adding dropout to BN still help?",
    defaults: Scale { epochs: 5, train: 30_000, val: 10_000 },
    measured_seconds: 41,
    run,
};

/// One learning rate for all four: d2l's rate for the plain LeNet (0.9),
/// rounded. At the chapter's 0.1 the network without BN does not leave the
/// loss of a uniform guess in a few epochs (see the `lr` experiment), which
/// would make the comparison with dropout empty.
pub const LR: f64 = 1.0;

fn with_dropout(mut c: LeNetConfig) -> LeNetConfig {
    c.dropout = Some(0.5);
    c
}

fn run(ctx: &Context) -> Result<Report> {
    let settings = vec![
        Setting::new("neither", plain_lenet()).lr(LR),
        Setting::new("dropout 0.5", with_dropout(plain_lenet())).lr(LR),
        Setting::new("BN", bn_lenet()).lr(LR),
        Setting::new("BN + dropout 0.5", with_dropout(bn_lenet())).lr(LR),
    ];
    let runs = run_settings(ctx, &settings, &mut TrainSetEval)?;
    let gap = |r: &super::Run| Some(r.value("train_acc_eval")? - r.last()?.val_acc);
    let cols = [
        val_acc_col(),
        Col::new("train acc (eval mode)", 4, |r| r.value("train_acc_eval")),
        Col::new("gap train − val", 4, gap),
        train_loss_col(),
    ];
    let table = settings_table("Final validation accuracy, training accuracy and the generalization gap", &runs, &cols);
    let files = report::write_csvs(ctx, &runs, &cols)?;
    let plots = standard_plots(&ctx.out, &runs)?;
    let mut reading = vec![
        report::ranking(&runs, &[0, 1, 2, 3]),
        format!("BN alone against dropout alone: {}", report::versus(&runs, 2, 1)),
        format!("Adding dropout to BN: {}", report::versus(&runs, 3, 2)),
    ];
    let gaps: Vec<String> =
        (0..4).filter_map(|s| runs.stat(s, gap).map(|st| format!("{} {:+.4}", runs.settings[s], st.mean))).collect();
    if !gaps.is_empty() {
        reading.push(format!(
            "Generalization gap (accuracy on the training images in prediction mode minus validation accuracy): {}. A smaller gap means less overfitting; it says nothing on its own about accuracy (a network that learns little has a small gap too).",
            gaps.join(", ")
        ));
    }
    Ok(Report {
        setup: vec![
            ctx.data_line(),
            "Network: LeNet with sigmoid activations, with or without BN before each activation (the chapter's BNLeNet); dropout with p = 0.5 after the activation of each of the two hidden fully connected layers (inverted dropout, off in prediction mode).".into(),
            "Training: plain SGD, batch 128, lr 1 for all four settings (d2l trains the LeNet without BN at 0.9; at the chapter's 0.1 it does not start learning within this budget, see the lr experiment). After the last epoch the training images are evaluated again in prediction mode, so the training accuracy is comparable with the validation accuracy.".into(),
            "Few epochs on a subset: dropout's benefit usually shows late in long training, when the network starts to overfit; read the gap column as well as the accuracy.".into(),
        ],
        tables: vec![table],
        reading,
        plots,
        files,
        ..report::empty()
    })
}
