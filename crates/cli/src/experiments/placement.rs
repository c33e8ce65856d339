//! `placement`: where batch norm goes. Before the activation (the paper, the
//! chapter) or after it; in every layer, only after the convolutions, only
//! after the fully connected layers, or nowhere.

use normlab::models::{LeNetConfig, NormPlacement};
use normlab::Result;

use super::report::{self, settings_table, standard_plots, train_loss_col, val_acc_col, Col, Report};
use super::runner::{run_settings, NoProbe, Setting};
use super::{bn_lenet, plain_lenet, Context, Experiment, Scale};

pub static EXPERIMENT: Experiment = Experiment {
    name: "placement",
    title: "Where to put batch norm",
    summary: "BN before/after the activation; every layer, conv only, fc only",
    question: "Does BN work better before the activation (as in the paper and the chapter) or after it, and does it need to be in every layer, or only in the convolutional or only in the fully connected part?",
    defaults: Scale { epochs: 5, train: 20_000, val: 10_000 },
    measured_seconds: 31,
    run,
};

fn variant(placement: NormPlacement, conv: bool, fc: bool) -> LeNetConfig {
    let mut c = bn_lenet();
    c.placement = placement;
    c.norm_conv = conv;
    c.norm_fc = fc;
    c
}

fn run(ctx: &Context) -> Result<Report> {
    use NormPlacement::*;
    let settings = vec![
        Setting::new("every layer before act (chapter)", variant(BeforeActivation, true, true)),
        Setting::new("every layer after act", variant(AfterActivation, true, true)),
        Setting::new("conv layers only", variant(BeforeActivation, true, false)),
        Setting::new("fc layers only", variant(BeforeActivation, false, true)),
        Setting::new("no BN", plain_lenet()),
    ];
    let runs = run_settings(ctx, &settings, &mut NoProbe)?;
    let cols = [
        val_acc_col(),
        train_loss_col(),
        Col::new("val acc after epoch 1", 4, |r| r.epochs.first().map(|m| m.val_acc)).higher(),
        Col::new("params", 0, |r| Some(r.params as f64)).plain(),
    ];
    let table = settings_table("Final validation accuracy and training loss", &runs, &cols);
    let files = report::write_csvs(ctx, &runs, &cols)?;
    let plots = standard_plots(&ctx.out, &runs)?;
    let reading = vec![
        report::ranking(&runs, &[0, 1, 2, 3, 4]),
        format!("Before against after the activation: {}", report::versus(&runs, 0, 1)),
        format!("Every layer against the conv layers only: {}", report::versus(&runs, 0, 2)),
        format!("Every layer against the fc layers only: {}", report::versus(&runs, 0, 3)),
        format!("The weakest placement against none: {}", {
            let weakest = (0..4)
                .min_by(|&a, &b| {
                    let f = |s| runs.final_val_acc(s).map_or(f64::NEG_INFINITY, |st| st.mean);
                    f(a).total_cmp(&f(b))
                })
                .unwrap_or(0);
            report::versus(&runs, weakest, 4)
        }),
    ];
    Ok(Report {
        setup: vec![
            ctx.data_line(),
            "Network: LeNet with sigmoid activations; BN (PyTorch defaults) placed as the setting says. \"Conv layers only\": BN after the two convolutions, none after the linear layers; \"fc layers only\": the reverse. Biases are kept everywhere.".into(),
            "Training: the chapter's recipe, plain SGD, lr 0.1, batch 128, for every setting.".into(),
        ],
        tables: vec![table],
        reading,
        plots,
        files,
        ..report::empty()
    })
}
