//! `frozen-affine`: does BN need its learnable scale and shift? gamma and
//! beta learned against fixed at 1 and 0.

use normlab::models::Norm;
use normlab::train::Trainer;
use normlab::Result;

use super::report::{self, settings_table, standard_plots, train_loss_col, val_acc_col, Col, Report};
use super::runner::{run_settings, Probe, Setting};
use super::{bn_lenet, plain_lenet, Context, Experiment, Scale};

pub static EXPERIMENT: Experiment = Experiment {
    name: "frozen-affine",
    title: "Learnable or frozen gamma and beta",
    summary: "learnable gamma and beta vs fixed at 1 and 0",
    question: "Does batch norm need its learnable scale gamma and shift beta, or does the normalization alone (gamma = 1, beta = 0, never trained) do as well?",
    defaults: Scale { epochs: 5, train: 20_000, val: 10_000 },
    measured_seconds: 21,
    run,
};

/// After training: how far gamma and beta moved from 1 and 0, over every BN
/// layer (mean |gamma − 1|, mean |beta|, largest |gamma − 1|).
struct AffineProbe;

impl Probe for AffineProbe {
    fn finish(&mut self, trainer: &mut Trainer, _ctx: &Context) -> Result<Vec<(String, f64)>> {
        let (mut g, mut b, mut gmax, mut n) = (0.0, 0.0, 0.0f64, 0usize);
        for layer in trainer.net.layers_mut() {
            if let Some(bn) = layer.as_batch_norm_mut() {
                if let (Some(gamma), Some(beta)) = (bn.gamma(), bn.beta()) {
                    for (&x, &y) in gamma.data().iter().zip(beta.data()) {
                        let d = (x as f64 - 1.0).abs();
                        g += d;
                        gmax = gmax.max(d);
                        b += (y as f64).abs();
                        n += 1;
                    }
                }
            }
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        Ok(vec![
            ("mean_abs_gamma_minus_1".into(), g / n as f64),
            ("mean_abs_beta".into(), b / n as f64),
            ("max_abs_gamma_minus_1".into(), gmax),
        ])
    }
}

fn run(ctx: &Context) -> Result<Report> {
    let mut frozen = bn_lenet();
    if let Norm::Batch { config, .. } = &mut frozen.norm {
        *config = config.learn_affine(false);
    }
    let settings = vec![
        Setting::new("learned (chapter)", bn_lenet()),
        Setting::new("frozen gamma=1 beta=0", frozen),
        Setting::new("no BN", plain_lenet()),
    ];
    let runs = run_settings(ctx, &settings, &mut AffineProbe)?;
    let cols = [
        val_acc_col(),
        train_loss_col(),
        Col::new("params", 0, |r| Some(r.params as f64)).plain(),
        Col::new("mean |gamma-1|", 4, |r| r.value("mean_abs_gamma_minus_1")),
        Col::new("mean |beta|", 4, |r| r.value("mean_abs_beta")),
    ];
    let table =
        settings_table("Final validation accuracy, training loss, and how far gamma and beta moved", &runs, &cols);
    let files = report::write_csvs(ctx, &runs, &cols)?;
    let plots = standard_plots(&ctx.out, &runs)?;
    let mut reading = vec![report::versus(&runs, 0, 1), report::versus(&runs, 1, 2)];
    if let (Some(g), Some(b), Some(gm)) = (
        runs.stat(0, |r| r.value("mean_abs_gamma_minus_1")),
        runs.stat(0, |r| r.value("mean_abs_beta")),
        runs.stat(0, |r| r.value("max_abs_gamma_minus_1")),
    ) {
        reading.push(format!(
            "When they are learned, gamma ends on average {:.3} away from 1 (at most {:.3}) and beta {:.3} away from 0 (mean over BN channels, then over seeds).",
            g.mean, gm.mean, b.mean
        ));
    }
    if let (Some(a), Some(b)) = (runs.stat(0, |r| Some(r.params as f64)), runs.stat(1, |r| Some(r.params as f64))) {
        reading.push(format!("Freezing removes {} learnable parameters ({} → {}).", a.mean - b.mean, a.mean, b.mean));
    }
    Ok(Report {
        setup: vec![
            ctx.data_line(),
            "Network: the chapter's BNLeNet. Frozen: every BN layer keeps gamma = 1 and beta = 0 (saved as buffers, never updated), so it only normalizes; the sigmoid then always sees inputs of mean 0 and variance 1 per channel.".into(),
            "Training: the chapter's recipe, plain SGD, lr 0.1, batch 128.".into(),
        ],
        tables: vec![table],
        reading,
        plots,
        files,
        ..report::empty()
    })
}
